//! An open VHDX: validation on open, log replay, and the read path.

use crate::format::*;
use crate::geometry::Geometry;
use crate::log::{self, Overlay};
use crate::parse::{self, Headers, Metadata, Regions};
use disk_core::guid::MsGuid;
use disk_core::mapping::{Mapping, Run, read_mapped};
use disk_core::{
    Allocation, BlockStatus, CheckReport, Disk, Error, ErrorKind, Format, IoResultExt, Layer, LayerInfo, OpenContext,
    ParentRef, Repair, Result, Storage,
};
use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use uuid::Uuid;

/// Largest BAT kept in memory (64 TiB at 1 MiB blocks needs 512 MiB).
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
    /// Current file length (everything below is allocated).
    pub file_end: u64,
    /// Payload block areas released by discard in this session (zeroed), for reuse.
    pub free: Vec<u64>,
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
    /// BAT entries a lenient open found invalid (their reads fail).
    pub(crate) bat_problems: Vec<String>,
    pub(crate) log_state: LogState,
    /// The whole BAT.
    pub(crate) bat: RwLock<Vec<u64>>,
    /// Sector bitmap bytes of partially present blocks, by block number.
    pub(crate) bitmaps: RwLock<HashMap<u64, Arc<Vec<u8>>>>,
    pub(crate) state: Mutex<WriteState>,
    /// Set once the session's header update is done (lock-free fast path for writes).
    pub(crate) session_started: AtomicBool,
    /// Set when a metadata update failed midway: the file's state is then unknown, so further
    /// changes are refused until the image is reopened (which replays the log).
    pub(crate) poisoned: AtomicBool,
    /// Set after a resize: this handle's geometry is out of date; reopen the image.
    pub(crate) stale: AtomicBool,
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

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn read_lock<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn write_lock<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

fn parent_ref(loc: &parse::ParentLocator) -> ParentRef {
    let locators: Vec<String> = ["relative_path", "absolute_win32_path", "volume_path"]
        .iter()
        .filter_map(|k| loc.get(k))
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect();
    ParentRef {
        format: Format::Vhdx,
        display: locators.first().cloned().unwrap_or_default(),
        locators,
    }
}

/// Parse a `{xxxxxxxx-...}` linkage GUID.
pub(crate) fn parse_linkage(text: &str) -> Option<Uuid> {
    text.trim().trim_start_matches('{').trim_end_matches('}').parse().ok()
}

impl VhdxLayer {
    /// Open the VHDX in `storage`. A dirty log is replayed: into the file when `ctx.writable`,
    /// into memory otherwise.
    pub fn open(storage: Arc<dyn Storage>, ctx: &OpenContext<'_>) -> Result<Self> {
        let file_len = storage.len().io_context("reading the file size", 0)?;
        let creator = parse::read_creator(&*storage, file_len)?;
        let Headers { current, slot, valid } = parse::read_headers(&*storage, file_len)?;
        let replay = log::find_active(
            &*storage,
            file_len,
            current.log_offset.get(),
            u64::from(current.log_length.get()),
            current.log_guid,
        )?;
        let mut log_state = LogState::Clean;
        let io: Arc<dyn Storage> = match replay {
            Some(r) if ctx.writable => {
                log_state = LogState::Replayed(r.entries);
                log::apply(&*storage, &r).io_context("replaying the log", current.log_offset.get())?;
                storage.flush().io_context("flushing the replayed log", 0)?;
                storage.clone()
            }
            Some(r) => {
                log_state = LogState::ReplayedInMemory(r.entries);
                Arc::new(Overlay::new(storage.clone(), r).io_context("reading the file size", 0)?)
            }
            None => storage.clone(),
        };
        let io_len = io.len().io_context("reading the file size", 0)?;
        let regions = parse::read_regions(&*io, io_len)?;
        if ctx.writable && regions.valid == [true, true] {
            sync_region_tables(&*storage)?;
        }
        let meta = parse::read_metadata(&*io, io_len, regions.metadata)?;
        let geo = Geometry::new(
            meta.block_size,
            meta.logical_sector_size,
            meta.virtual_size,
            meta.has_parent,
        )?;
        let bat_bytes = geo.total_entries * 8;
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
        let raw = parse::read_bounded(&*io, io_len, regions.bat.offset, bat_bytes, "BAT")?;
        let mut bat: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        let problems = validate_bat(&bat, &geo, &meta, io_len, regions.bat.offset);
        let mut bat_problems = Vec::new();
        for (i, e) in problems {
            if !ctx.lenient {
                return Err(e);
            }
            // Lenient: open anyway; the block's reads fail and `check` reports it.
            bat[i] = INVALID_ENTRY;
            bat_problems.push(e.to_string());
        }
        let parent = meta.parent.as_ref().map(parent_ref);
        let layer = VhdxLayer {
            file: storage,
            io,
            writable: ctx.writable,
            geo,
            regions,
            creator,
            headers_valid: valid,
            bat_problems,
            log_state,
            bat: RwLock::new(bat),
            bitmaps: RwLock::new(HashMap::new()),
            state: Mutex::new(WriteState {
                header: current,
                slot,
                session_started: false,
                log_seq: 1,
                log_pos: 0,
                file_end: io_len,
                free: Vec::new(),
            }),
            session_started: AtomicBool::new(false),
            poisoned: AtomicBool::new(false),
            stale: AtomicBool::new(false),
            parent,
            meta,
        };
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
    pub(crate) fn block_bitmap(&self, bat: &[u64], block: u64) -> Result<Arc<Vec<u8>>> {
        if let Some(b) = read_lock(&self.bitmaps).get(&block) {
            return Ok(b.clone());
        }
        let chunk = block / self.geo.chunk_ratio;
        let entry = bat.get(self.geo.bitmap_index(chunk)).copied().unwrap_or(0);
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
    pub(crate) fn map(&self, bat: &[u64], lba: u64, max: u64) -> Result<Run> {
        let g = &self.geo;
        let block = lba / g.sectors_per_block;
        let within = lba % g.sectors_per_block;
        let n = max.min(g.sectors_per_block - within);
        let entry = bat[g.payload_index(block)];
        let mapping = match bat_state(entry) {
            payload::FULLY_PRESENT => Mapping::Data(bat_offset(entry) + within * g.sector_size),
            payload::PARTIALLY_PRESENT => {
                let bits = self.block_bitmap(bat, block)?;
                let bit = |i: u64| bits[(i / 8) as usize] >> (i % 8) & 1 == 1;
                let first = bit(within);
                let run = (within..within + n).take_while(|&i| bit(i) == first).count() as u64;
                let mapping = if first {
                    Mapping::Data(bat_offset(entry) + within * g.sector_size)
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

/// State written into the in-memory copy of a BAT entry found invalid by a lenient open: reads
/// of its block fail (the value is a reserved state, never written to the file).
pub(crate) const INVALID_ENTRY: u64 = 4;

/// Check every BAT entry's state and that stored blocks lie inside the file; returns the
/// problems found (entry index and error).
fn validate_bat(
    bat: &[u64],
    g: &Geometry,
    meta: &Metadata,
    file_len: u64,
    bat_offset_in_file: u64,
) -> Vec<(usize, Error)> {
    let bad = |i: usize, m: String| {
        let e = Error::corrupt(format!("BAT entry {i} {m}"))
            .in_structure("BAT")
            .at_offset(bat_offset_in_file + 8 * i as u64);
        (i, e)
    };
    let mut problems = Vec::new();
    for block in 0..g.data_blocks {
        let i = g.payload_index(block);
        let e = bat[i];
        let state = bat_state(e);
        match state {
            payload::NOT_PRESENT | payload::UNDEFINED | payload::ZERO | payload::UNMAPPED => {}
            payload::FULLY_PRESENT | payload::PARTIALLY_PRESENT => {
                let off = bat_offset(e);
                let need = g.block_bytes(block);
                if state == payload::PARTIALLY_PRESENT && !meta.has_parent {
                    problems.push(bad(i, "is partially present in a disk without a parent".into()));
                } else if off < HEADER_SECTION_SIZE || off.checked_add(need).is_none_or(|end| end > file_len) {
                    problems.push(bad(
                        i,
                        format!("points past end of file or into the header (offset {off:#x})"),
                    ));
                }
            }
            s => problems.push(bad(i, format!("has invalid state {s}"))),
        }
    }
    if !meta.has_parent {
        // Sector bitmap entries mean nothing without a parent.
        return problems;
    }
    for chunk in 0..g.bitmap_blocks {
        let i = g.bitmap_index(chunk);
        let e = bat[i];
        match bat_state(e) {
            bitmap::NOT_PRESENT => {}
            bitmap::PRESENT => {
                let off = bat_offset(e);
                if off < HEADER_SECTION_SIZE || off.checked_add(MIB).is_none_or(|end| end > file_len) {
                    problems.push(bad(
                        i,
                        format!("(sector bitmap) points past end of file (offset {off:#x})"),
                    ));
                }
            }
            s => problems.push(bad(i, format!("(sector bitmap) has invalid state {s}"))),
        }
    }
    problems
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
    fn read(&self, lba: u64, buf: &mut [u8], below: &dyn Disk) -> Result<()> {
        let bat = read_lock(&self.bat);
        read_mapped(lba, buf, self.meta.logical_sector_size, &*self.io, below, |lba, max| {
            self.map(&bat, lba, max)
        })
    }
    fn write(&self, lba: u64, buf: &[u8], _below: &dyn Disk) -> Result<()> {
        self.write_sectors(lba, buf)
    }
    fn write_zeroes(&self, lba: u64, count: u64, _below: &dyn Disk) -> Result<()> {
        self.zero_sectors(lba, count)
    }
    fn discard(&self, lba: u64, count: u64, _below: &dyn Disk) -> Result<()> {
        self.zero_sectors(lba, count)
    }
    fn flush(&self) -> Result<()> {
        self.flush_all()
    }
    fn block_status(&self, lba: u64, count: u64) -> Result<BlockStatus> {
        let bat = read_lock(&self.bat);
        let first = self.map(&bat, lba, count)?;
        let mut n = first.sectors.clamp(1, count);
        // Merge following runs of the same kind (contiguous data only).
        while n < count {
            let next = self.map(&bat, lba + n, count - n)?;
            let same = match (first.mapping, next.mapping) {
                (Mapping::Data(a), Mapping::Data(b)) => b == a + n * self.geo.sector_size,
                (a, b) => a == b,
            };
            if !same {
                break;
            }
            n += next.sectors.clamp(1, count - n);
        }
        Ok(match first.mapping {
            Mapping::Data(off) => BlockStatus::data_at(n, off),
            Mapping::Zero
                if bat_state(bat[self.geo.payload_index(lba / self.geo.sectors_per_block)]) != payload::ZERO =>
            {
                BlockStatus::new(n, Allocation::Unallocated)
            }
            Mapping::Zero => BlockStatus::new(n, Allocation::Zero),
            Mapping::Unallocated => BlockStatus::new(n, Allocation::Unallocated),
        })
    }
    fn parent(&self) -> Option<&ParentRef> {
        self.parent.as_ref()
    }
    fn resize(&self, new_size: u64, _files: &dyn disk_core::FileCreator) -> Result<()> {
        self.resize_in_place(new_size)
    }
    fn max_virtual_size(&self) -> Option<u64> {
        Some(self.max_size())
    }
    fn set_parent(&self, parent: Option<&disk_core::NewParent<'_>>) -> Result<()> {
        self.set_parent_in_place(parent)
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
        let recorded: Vec<Uuid> = ["parent_linkage", "parent_linkage2"]
            .iter()
            .filter_map(|k| loc.get(k).and_then(parse_linkage))
            .collect();
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
