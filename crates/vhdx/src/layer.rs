//! An open VHDX: validation on open, log replay, and the read path.

use crate::bat;
use crate::format::*;
use crate::geometry::Geometry;
use crate::log::{self, Overlay};
use crate::parse::{self, Headers, Metadata, Regions};
use disk_core::guid::MsGuid;
use disk_core::mapping::{Claims, IoGate, Mapping, Run, WriteRun};
use disk_core::table::{PAGE_ENTRIES, PagedTable};
use disk_core::{
    Allocation, BlockStatus, CheckReport, Disk, Error, ErrorKind, Findings, Format, IoResultExt, Layer, LayerInfo,
    OpenContext, ParentRef, Repair, Result, SpaceMap, Storage,
};
use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use uuid::Uuid;

/// Largest BAT accepted (64 TiB at 1 MiB blocks needs 512 MiB; it is read in pages).
pub(crate) const MAX_BAT_BYTES: u64 = 640 * MIB;

/// Most sector bitmaps (of partially present blocks) kept in memory at once.
const MAX_CACHED_BITMAPS: usize = 4096;

/// What happened to the log when the image was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogState {
    /// Nothing to replay.
    Clean,
    /// Entries were replayed into the file (writable open).
    Replayed(usize),
    /// Entries were replayed into memory only (read-only open); the file still needs replay.
    ReplayedInMemory(usize),
}

/// Mutable state, changed under a lock by writes.
pub(crate) struct WriteState {
    /// The current header.
    pub header: Header,
    /// Slot of the current header.
    pub slot: usize,
    /// Whether FileWriteGuid/DataWriteGuid were renewed in this session.
    pub session_started: bool,
    /// Next log sequence number.
    pub log_seq: u64,
    /// Log offset for the next entry.
    pub log_pos: u64,
    /// What the file holds where: new blocks are allocated from it.
    pub space: SpaceMap,
    /// Problems found on open (unusable BAT entries, overlapping structures), for `check`.
    pub problems: Findings,
    /// Payload block areas released by discard in this session (zeroed), for reuse.
    pub free: Vec<u64>,
    /// Metadata changes of completed writes, logged at the next flush (after the data is
    /// durable) or when too many wait.
    pub pending: crate::write::Txn,
}

impl WriteState {
    /// Where the space the file uses ends, rounded up to 1 MiB: past everything the space map
    /// records (the header section, log, regions, stored blocks and sector bitmaps, and the
    /// space blocks that are not stored still name). A file longer than this has an unused
    /// tail, which `check -r leaks` and a shrink cut ([`VhdxLayer::truncate_unused`]).
    pub(crate) fn used_end(&self) -> u64 {
        self.space.used_end().checked_next_multiple_of(MIB).unwrap_or(u64::MAX)
    }
}

/// One open VHDX image: a [`Layer`] of a chain.
pub struct VhdxLayer {
    /// The file itself.
    pub(crate) file: Arc<dyn Storage>,
    /// What reads go through: the file, or the file with an in-memory replayed log.
    pub(crate) io: Arc<dyn Storage>,
    pub(crate) writable: bool,
    pub(crate) meta: Metadata,
    pub(crate) geo: Geometry,
    pub(crate) regions: Regions,
    pub(crate) creator: String,
    pub(crate) headers_valid: [bool; 2],
    pub(crate) log_state: LogState,
    /// The BAT, read in pages on demand; entries are checked before use (see [`bat`]).
    pub(crate) bat: PagedTable,
    /// Whether the whole BAT was surveyed on open (otherwise each page is checked when read,
    /// and `check` surveys it).
    pub(crate) surveyed: bool,
    /// Sector bitmap bytes of partially present blocks, by block number.
    pub(crate) bitmaps: RwLock<HashMap<u64, Arc<Vec<u8>>>>,
    pub(crate) state: Mutex<WriteState>,
    /// Sector bitmaps of partially present blocks changed by writes whose metadata is still
    /// pending: newer than the file, so readers look here first.
    pub(crate) pending_bitmaps: RwLock<HashMap<u64, Arc<Vec<u8>>>>,
    /// Blocks being allocated: one writer per block, the others wait for it.
    pub(crate) claims: Claims,
    /// Keeps discarded blocks from being reused while I/O to them is in flight.
    pub(crate) gate: IoGate,
    /// The file's real length: allocations grow it ahead in chunks, flush trims it back.
    pub(crate) grown: Mutex<u64>,
    /// Set once the session's header update is done (lock-free fast path for writes).
    pub(crate) session_started: AtomicBool,
    /// Set when a metadata update failed midway: the file's state is then unknown, so further
    /// changes are refused until the image is reopened (which replays the log).
    pub(crate) poisoned: AtomicBool,
    /// Set when the image's own structures overlap (found on open): changes are refused even
    /// in repair mode, as the log or a table would be written over another structure.
    pub(crate) structural: Option<String>,
    pub(crate) parent: Option<ParentRef>,
}

impl std::fmt::Debug for VhdxLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhdxLayer")
            .field("virtual_size", &self.geo.virtual_size)
            .field("block_size", &self.geo.block_size)
            .field("writable", &self.writable)
            .finish()
    }
}

use disk_core::sync::{lock, read_lock, write_lock};

fn parent_ref(loc: &parse::ParentLocator) -> ParentRef {
    let locators: Vec<String> = ["relative_path", "absolute_win32_path", "volume_path"]
        .iter()
        .filter_map(|k| loc.get(k))
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect();
    // Shown as the user named it: `.\parent.vhdx` (what Hyper-V and vdisk record) as `parent.vhdx`.
    let display = locators.first().map_or("", |l| l.strip_prefix(".\\").unwrap_or(l));
    ParentRef {
        format: Format::Vhdx,
        display: display.to_string(),
        locators,
    }
}

/// The parent DataWriteGuids a locator records (`parent_linkage`, `parent_linkage2`), those
/// that parse.
fn linkages(loc: &parse::ParentLocator) -> Vec<Uuid> {
    ["parent_linkage", "parent_linkage2"]
        .iter()
        .filter_map(|k| loc.get(k).and_then(parse_linkage))
        .collect()
}

/// Parse a `{xxxxxxxx-...}` linkage GUID.
pub(crate) fn parse_linkage(text: &str) -> Option<Uuid> {
    text.trim().trim_start_matches('{').trim_end_matches('}').parse().ok()
}

impl VhdxLayer {
    /// Open the VHDX in `storage`. A dirty log is replayed: into the file when `ctx.writable`,
    /// into memory otherwise. Every structure and stored block is recorded in a space map; blocks
    /// that lie outside the file or on other structures are unusable (their reads fail), and a
    /// writable open of such an image is refused with [`ErrorKind::Corrupt`] unless
    /// `ctx.repair` is set (then they are never written through, and `check` can drop them).
    pub fn open(storage: Arc<dyn Storage>, ctx: &OpenContext<'_>) -> Result<Self> {
        let file_len = storage.len().io_context("reading the file size", 0)?;
        let creator = parse::read_creator(&*storage, file_len)?;
        let Headers { current, slot, valid } = parse::read_headers(&*storage, file_len)?;
        let log_area = (current.log_offset.get(), u64::from(current.log_length.get()));
        let replay = log::find_active(&*storage, file_len, log_area.0, log_area.1, current.log_guid)?;
        // Everything is parsed through the log's changes laid over the file in memory; a writable
        // open applies them to the file only once the image they describe has been checked.
        let view: Arc<dyn Storage> = match &replay {
            Some(r) => Arc::new(Overlay::new(storage.clone(), r.clone()).io_context("reading the file size", 0)?),
            None => storage.clone(),
        };
        let view_len = view.len().io_context("reading the file size", 0)?;
        let regions = parse::read_regions(&*view, view_len)?;
        let meta = parse::read_metadata(&*view, view_len, regions.metadata)?;
        let geo = Geometry::new(
            meta.block_size,
            meta.logical_sector_size,
            meta.virtual_size,
            meta.has_parent,
        )?;
        let bat_bytes = geo.total_entries.saturating_mul(8);
        if bat_bytes > regions.bat.length {
            return Err(Error::corrupt(format!(
                "BAT region of {} bytes cannot hold {} entries",
                regions.bat.length, geo.total_entries
            ))
            .in_structure("BAT")
            .at_offset(regions.bat.offset));
        }
        if bat_bytes > MAX_BAT_BYTES {
            return Err(Error::unsupported("BAT too large").in_structure("BAT"));
        }
        let table = bat::table(view.clone(), view_len, regions.bat.offset, geo.total_entries)?;
        // A writable open needs every block recorded before anything is written; a read-only
        // one surveys only a small BAT (see the `bat` module).
        let surveyed = ctx.writable || bat_bytes <= disk_core::table::EAGER_SURVEY_BYTES;
        let (table, mut survey) = if surveyed {
            let survey = bat::survey(&table, &geo, &meta, &regions, log_area, view_len)?;
            (table, survey)
        } else {
            let (space, problems, structural) = bat::structures(&regions, log_area, view_len);
            let table = table.with_check(bat::entry_check(geo, space.clone()));
            (
                table,
                bat::Survey {
                    space,
                    problems,
                    structural,
                },
            )
        };
        if ctx.writable && !ctx.repair {
            survey.refuse_writes()?;
        }
        let (io, log_state) = match replay {
            Some(r) if ctx.writable => {
                // Grow the file only as far as the structures it holds need.
                let used = survey
                    .space
                    .used_end()
                    .checked_next_multiple_of(MIB)
                    .unwrap_or(u64::MAX);
                log::apply(&*storage, &r, used).io_context("replaying the log", log_area.0)?;
                storage.flush().io_context("flushing the replayed log", 0)?;
                survey
                    .space
                    .set_file_len(storage.len().io_context("reading the file size", 0)?);
                (storage.clone(), LogState::Replayed(r.entries))
            }
            Some(r) => (view, LogState::ReplayedInMemory(r.entries)),
            None => (storage.clone(), LogState::Clean),
        };
        if ctx.writable && regions.valid == [true, true] {
            sync_region_tables(&*storage)?;
        }
        let parent = meta.parent.as_ref().map(parent_ref);
        let layer = VhdxLayer {
            file: storage,
            io: io.clone(),
            writable: ctx.writable,
            geo,
            regions,
            creator,
            headers_valid: valid,
            log_state,
            bat: table.with_storage(io.clone()),
            surveyed,
            bitmaps: RwLock::new(HashMap::new()),
            state: Mutex::new(WriteState {
                header: current,
                slot,
                session_started: false,
                log_seq: 1,
                log_pos: 0,
                space: survey.space,
                problems: survey.problems,
                free: Vec::new(),
                pending: Default::default(),
            }),
            pending_bitmaps: RwLock::new(HashMap::new()),
            claims: Claims::new(),
            gate: IoGate::new(),
            grown: Mutex::new(0),
            session_started: AtomicBool::new(false),
            poisoned: AtomicBool::new(false),
            structural: survey.structural,
            parent,
            meta,
        };
        *lock(&layer.grown) = layer.file.len().io_context("reading the file size", 0)?;
        if ctx.writable && !current.log_guid.is_nil() {
            let mut st = lock(&layer.state);
            layer.update_header(&mut st, |h| h.log_guid = MsGuid::NIL)?;
        }
        Ok(layer)
    }

    /// The current header (a copy).
    pub fn header(&self) -> Header {
        lock(&self.state).header
    }

    /// The DataWriteGuid of the current header (what a child's parent linkage records).
    pub fn data_write_guid(&self) -> Uuid {
        self.header().data_write_guid.to_uuid()
    }

    /// What happened to the log on open.
    pub fn log_state(&self) -> LogState {
        self.log_state
    }

    /// Payload block size in bytes.
    pub fn block_size(&self) -> u64 {
        self.geo.block_size
    }

    /// The parent locator's key-value pairs (differencing disks).
    pub fn parent_locator(&self) -> Vec<(String, String)> {
        self.meta.parent.as_ref().map(|p| p.entries.clone()).unwrap_or_default()
    }

    /// The sector bitmap bytes of payload block `block` (which is partially present).
    pub(crate) fn block_bitmap(&self, block: u64) -> Result<Arc<Vec<u8>>> {
        if let Some(b) = read_lock(&self.pending_bitmaps).get(&block) {
            return Ok(b.clone());
        }
        if let Some(b) = read_lock(&self.bitmaps).get(&block) {
            return Ok(b.clone());
        }
        let chunk = block / self.geo.chunk_ratio;
        let entry = self.bat.get(self.geo.bitmap_index(chunk) as u64)?;
        if bat_state(entry) != bitmap::PRESENT {
            return Err(Error::corrupt(format!(
                "block {block} is partially present but its sector bitmap block is not"
            ))
            .in_structure("BAT"));
        }
        let offset = bat_offset(entry) + self.geo.bitmap_byte_offset(block);
        let mut bits = vec![0u8; self.geo.bitmap_bytes_per_block() as usize];
        self.io
            .read_at(&mut bits, offset)
            .io_context("reading a sector bitmap", offset)
            .map_err(|e| e.in_structure("sector bitmap"))?;
        let bits = Arc::new(bits);
        let mut cache = write_lock(&self.bitmaps);
        if cache.len() >= MAX_CACHED_BITMAPS {
            cache.clear();
        }
        cache.insert(block, bits.clone());
        Ok(bits)
    }

    /// Where the run of sectors at `lba` (at most `max`) lives.
    pub(crate) fn map_run(&self, lba: u64, max: u64) -> Result<Run> {
        let block = lba / self.geo.sectors_per_block;
        self.map_entry(self.bat.get(self.geo.payload_index(block) as u64)?, lba, max)
    }

    /// Where the run of sectors at `lba` (at most `max`) lives, given its block's BAT entry.
    fn map_entry(&self, entry: u64, lba: u64, max: u64) -> Result<Run> {
        let g = &self.geo;
        let block = lba / g.sectors_per_block;
        let within = lba % g.sectors_per_block;
        let n = max.min(g.sectors_per_block - within);
        let mapping = match bat_state(entry) {
            payload::FULLY_PRESENT => Mapping::data(bat_offset(entry) + within * g.sector_size),
            payload::PARTIALLY_PRESENT => {
                let bits = self.block_bitmap(block)?;
                let bit = |i: u64| bits[(i / 8) as usize] >> (i % 8) & 1 == 1;
                let first = bit(within);
                let run = (within..within + n).take_while(|&i| bit(i) == first).count() as u64;
                let mapping = if first {
                    Mapping::data(bat_offset(entry) + within * g.sector_size)
                } else {
                    Mapping::Unallocated
                };
                return Ok(Run { sectors: run, mapping });
            }
            payload::ZERO => Mapping::Zero,
            payload::NOT_PRESENT | payload::UNDEFINED | payload::UNMAPPED if self.meta.has_parent => {
                Mapping::Unallocated
            }
            payload::NOT_PRESENT | payload::UNDEFINED | payload::UNMAPPED => Mapping::Zero,
            _ => {
                return Err(
                    Error::corrupt(format!("BAT entry {} is invalid", g.payload_index(block))).in_structure("BAT"),
                );
            }
        };
        Ok(Run { sectors: n, mapping })
    }

    /// The subformat name.
    pub fn subformat(&self) -> &'static str {
        if self.meta.has_parent {
            "differencing"
        } else if self.meta.leave_allocated {
            "fixed"
        } else {
            "dynamic"
        }
    }
}

/// Make region table 2 equal to region table 1 (the one the parser uses) when both are valid
/// but differ: a resize that moved the BAT was interrupted between the two. Left alone, a later
/// damage to table 1 would bring back the old BAT.
fn sync_region_tables(storage: &dyn Storage) -> Result<()> {
    let mut t1 = vec![0u8; REGION_TABLE_SIZE];
    let mut t2 = vec![0u8; REGION_TABLE_SIZE];
    storage
        .read_at(&mut t1, REGION_TABLE1_OFFSET)
        .io_context("reading the region table", REGION_TABLE1_OFFSET)?;
    storage
        .read_at(&mut t2, REGION_TABLE2_OFFSET)
        .io_context("reading the region table", REGION_TABLE2_OFFSET)?;
    if t1 != t2 {
        storage
            .write_at(&t1, REGION_TABLE2_OFFSET)
            .io_context("writing the region table", REGION_TABLE2_OFFSET)?;
        storage
            .flush()
            .io_context("flushing the region table", REGION_TABLE2_OFFSET)?;
    }
    Ok(())
}

impl Layer for VhdxLayer {
    fn format(&self) -> Format {
        Format::Vhdx
    }
    fn sector_size(&self) -> u32 {
        self.meta.logical_sector_size
    }
    fn physical_sector_size(&self) -> u32 {
        self.meta.physical_sector_size
    }
    fn virtual_size(&self) -> u64 {
        self.geo.virtual_size
    }
    fn disk_id(&self) -> Option<Uuid> {
        Some(self.meta.page83.to_uuid())
    }
    fn is_read_only(&self) -> bool {
        !self.writable
    }
    fn map(&self, lba: u64, count: u64) -> Result<Run> {
        self.map_run(lba, count)
    }
    fn map_for_write(&self, lba: u64, count: u64) -> Result<WriteRun<'_>> {
        self.map_write(lba, count)
    }
    fn host_file(&self, file: usize) -> Option<&Arc<dyn Storage>> {
        (file == 0).then_some(&self.io)
    }
    fn io_gate(&self) -> Option<&IoGate> {
        Some(&self.gate)
    }
    fn write_zeroes(&self, lba: u64, count: u64, below: &dyn Disk) -> Result<()> {
        self.zero_sectors(lba, count, below)
    }
    fn discard(&self, lba: u64, count: u64, below: &dyn Disk) -> Result<()> {
        self.zero_sectors(lba, count, below)
    }
    fn flush(&self) -> Result<()> {
        self.flush_all()
    }
    fn block_status(&self, lba: u64, count: u64) -> Result<BlockStatus> {
        let g = &self.geo;
        // Walk the BAT a block at a time: the block's entry index (one more past each sector
        // bitmap entry) and the page holding it, kept while walking a long range.
        let block = lba / g.sectors_per_block;
        let mut in_chunk = block % g.chunk_ratio;
        let mut i = g.payload_index(block) as u64;
        let mut page = self.bat.page(i / PAGE_ENTRIES)?;
        let mut page_no = i / PAGE_ENTRIES;
        let first_entry = page.get((i % PAGE_ENTRIES) as usize).copied().unwrap_or(0);
        let first = self.map_entry(first_entry, lba, count)?;
        let mut n = first.sectors.clamp(1, count);
        // Blocks whose entry equals the first one map the same way unless they hold data.
        let same_entry_same_run = !payload::STORED.contains(&bat_state(first_entry));
        // Merge following runs of the same kind (contiguous data only).
        let mut block_end = (block + 1) * g.sectors_per_block;
        while n < count {
            // A run ends at its block's end at the latest: step to the next block there.
            if lba + n >= block_end {
                block_end += g.sectors_per_block;
                in_chunk += 1;
                i += 1;
                if in_chunk == g.chunk_ratio {
                    in_chunk = 0;
                    i += 1;
                }
                if i / PAGE_ENTRIES != page_no {
                    page_no = i / PAGE_ENTRIES;
                    page = self.bat.page(page_no)?;
                }
            }
            let e = page.get((i % PAGE_ENTRIES) as usize).copied().unwrap_or(0);
            if same_entry_same_run && e == first_entry {
                n += (count - n).min(block_end - (lba + n));
                continue;
            }
            let next = self.map_entry(e, lba + n, count - n)?;
            let same = match (first.mapping, next.mapping) {
                (Mapping::Data { offset: a, .. }, Mapping::Data { offset: b, .. }) => b == a + n * g.sector_size,
                (a, b) => a == b,
            };
            if !same {
                break;
            }
            n += next.sectors.clamp(1, count - n);
        }
        Ok(match first.mapping {
            Mapping::Data { offset, .. } => BlockStatus::data_at(n, offset),
            Mapping::Zero if bat_state(first_entry) != payload::ZERO => BlockStatus::new(n, Allocation::Unallocated),
            Mapping::Zero => BlockStatus::new(n, Allocation::Zero),
            Mapping::Unallocated | Mapping::Special => BlockStatus::new(n, Allocation::Unallocated),
        })
    }
    fn parent(&self) -> Option<&ParentRef> {
        self.parent.as_ref()
    }
    fn resize(self: Box<Self>, new_size: u64, _files: &dyn disk_core::FileCreator) -> Result<()> {
        self.resize_in_place(new_size)?;
        self.flush()
    }
    fn max_virtual_size(&self) -> Option<u64> {
        Some(self.max_size())
    }
    fn set_parent(self: Box<Self>, parent: Option<&disk_core::NewParent<'_>>) -> Result<()> {
        self.set_parent_in_place(parent)?;
        self.flush()
    }
    fn parent_identity_recorded(&self) -> bool {
        self.meta.parent.as_ref().is_none_or(|loc| !linkages(loc).is_empty())
    }
    fn verify_parent(&self, parent: &dyn Layer) -> Result<()> {
        let Some(loc) = &self.meta.parent else {
            return Ok(());
        };
        let Some(p) = parent.as_any().downcast_ref::<VhdxLayer>() else {
            return Err(Error::new(
                ErrorKind::ParentMismatch,
                "the parent of a VHDX must be a VHDX",
            ));
        };
        let actual = p.data_write_guid();
        let recorded = linkages(loc);
        // Without a recorded linkage any parent is accepted here: `Image::open_chain` refuses
        // such a chain unless the caller opted in (see `parent_identity_recorded`).
        if recorded.is_empty() || recorded.contains(&actual) {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::ParentMismatch,
            format!(
                "parent linkage {} does not match the parent's DataWriteGuid {actual}",
                recorded[0]
            ),
        ))
    }
    fn info(&self) -> LayerInfo {
        crate::report::info(self)
    }
    fn check(&self, repair: Repair) -> Result<CheckReport> {
        crate::report::check(self, repair)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Drop for VhdxLayer {
    fn drop(&mut self) {
        if self.writable {
            let _ = self.flush_all();
        }
    }
}
