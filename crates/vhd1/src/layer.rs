//! An open VHD: the [`Layer`] implementation for fixed, dynamic and differencing disks.

use crate::footer::{self, FooterSource};
use crate::format::{BAT_FREE, DiskType, FOOTER_SIZE, Footer, HEADER_SIZE, SECTOR_SIZE, bitmap_get};
use crate::header::{self, Sparse};
use crate::parent::{self, Locator};
use disk_core::mapping::{Claims, Mapping, Run, WriteRun};
use disk_core::sync::{lock, read_lock};
use disk_core::{
    Allocation, BlockStatus, Conflict, Disk, Error, ErrorKind, Format, IoResultExt, Layer, LayerInfo, OpenContext,
    ParentRef, Result, Storage,
};
use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use uuid::Uuid;

/// An open VHD image (one layer of a chain).
#[derive(Debug)]
pub struct VhdLayer {
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) footer: Footer,
    pub(crate) footer_source: FooterSource,
    pub(crate) footer_checksum_ok: bool,
    pub(crate) disk_type: DiskType,
    pub(crate) virtual_size: u64,
    pub(crate) read_only: bool,
    pub(crate) sparse: Option<SparseState>,
    pub(crate) parent: Option<ParentRef>,
    pub(crate) locators: Vec<Locator>,
}

/// The mutable state of a dynamic or differencing disk.
#[derive(Debug)]
pub(crate) struct SparseState {
    pub(crate) layout: Sparse,
    /// The BAT entries the disk uses; readers take the lock only to look an entry up.
    pub(crate) bat: RwLock<Vec<u32>>,
    /// The file's length: every block is checked against it before use.
    pub(crate) file_len: AtomicU64,
    /// Serialises reservations and flushes (never held across data I/O); where the next block
    /// goes and what metadata waits.
    pub(crate) alloc: Mutex<AllocState>,
    /// Blocks being allocated: one writer per block, the others wait for it.
    pub(crate) claims: Claims,
    /// Sector bitmaps (differencing) changed in memory and not yet written: newer than the
    /// file, so readers look here first.
    pub(crate) bitmaps: RwLock<HashMap<u32, Vec<u8>>>,
    /// BAT entries found unusable on open (past the end, on metadata, on another block), with
    /// why: never read or written through; `check -r all` frees them.
    pub(crate) bad: RwLock<BTreeMap<u32, Conflict>>,
}

/// Metadata changes that wait for the next flush.
///
/// Data goes to the file at once; the BAT entries and sector bitmaps that make it visible are
/// written only by [`VhdLayer::flush`], after the data is durable (flush, metadata, flush). A
/// crash therefore never leaves metadata pointing at data that did not land, and an allocating
/// write costs no flush of its own.
#[derive(Debug)]
pub(crate) struct AllocState {
    /// Byte offset of the next block.
    pub(crate) free: u64,
    /// End of the space reserved for new blocks, where the footer is (at least `free`).
    pub(crate) chunk_end: u64,
    /// BAT entries set in memory and not yet on disk.
    pub(crate) bat_dirty: BTreeMap<u32, u32>,
}

/// Pending metadata that triggers a flush of its own (bounds memory and lost work).
pub(crate) const MAX_PENDING: usize = 4096;

/// Where a run of a sparse disk's sectors is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loc {
    /// Stored at this byte offset.
    Data(u64),
    /// The block is not allocated.
    Free,
    /// The block is allocated but the sector bitmap says "not here" (differencing).
    Clear,
}

impl VhdLayer {
    /// Open the VHD in `storage`.
    pub fn open(storage: Arc<dyn Storage>, ctx: &OpenContext<'_>) -> Result<Self> {
        let file_len = storage.len().io_context("reading the file size", 0)?;
        let found = footer::find(&*storage, file_len, ctx.lenient)?;
        if ctx.writable && !found.checksum_ok {
            return Err(
                Error::corrupt("footer checksum mismatch: the image can only be opened read-only")
                    .in_structure("footer"),
            );
        }
        let virtual_size = footer::virtual_size(&found.footer)?;
        let mut layer = VhdLayer {
            storage,
            footer: found.footer,
            footer_source: found.source,
            footer_checksum_ok: found.checksum_ok,
            disk_type: found.disk_type,
            virtual_size,
            read_only: !ctx.writable,
            sparse: None,
            parent: None,
            locators: Vec::new(),
        };
        if found.disk_type == DiskType::Fixed {
            if virtual_size > file_len.saturating_sub(511) {
                return Err(Error::corrupt(format!(
                    "fixed disk of {virtual_size} bytes does not fit in a file of {file_len} bytes"
                ))
                .in_structure("footer"));
            }
            return Ok(layer);
        }
        let layout = header::read(
            &*layer.storage,
            found.footer.data_offset.get(),
            file_len,
            virtual_size,
            ctx.lenient,
        )?;
        if ctx.writable && !layout.header_checksum_ok {
            return Err(
                Error::corrupt("checksum mismatch: the image can only be opened read-only")
                    .in_structure("dynamic header"),
            );
        }
        let bat = header::read_bat(&*layer.storage, &layout)?;
        if found.disk_type == DiskType::Differencing {
            layer.locators = parent::read_locators(&*layer.storage, &layout.header, file_len)?;
            let name = parent::unicode_name(&layout.header);
            let candidates = parent::candidates(&layer.locators, &name);
            let display = if name.is_empty() {
                candidates.first().cloned().unwrap_or_default()
            } else {
                name
            };
            layer.parent = Some(ParentRef {
                format: Format::Vhd,
                locators: candidates,
                display,
            });
        }
        let audit = crate::space::audit(&*layer.storage, &layout, &bat, &layer.locators, virtual_size, file_len)?;
        if ctx.writable && !ctx.repair {
            audit.map.refuse_writes_if_conflicted()?;
        }
        let free = first_free_offset(&layout, &bat, &layer.locators, virtual_size, file_len)
            .max(audit.map.used_end().next_multiple_of(SECTOR_SIZE));
        layer.sparse = Some(SparseState {
            layout,
            bat: RwLock::new(bat),
            file_len: AtomicU64::new(file_len),
            alloc: Mutex::new(AllocState {
                free,
                chunk_end: free,
                bat_dirty: BTreeMap::new(),
            }),
            bitmaps: RwLock::new(HashMap::new()),
            bad: RwLock::new(audit.bad),
            claims: Claims::new(),
        });
        Ok(layer)
    }

    /// The disk type.
    pub fn disk_type(&self) -> DiskType {
        self.disk_type
    }

    /// The footer the image was opened with.
    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    /// The footer's "Unique Id".
    pub fn unique_id(&self) -> Uuid {
        Uuid::from_bytes(self.footer.unique_id)
    }

    /// Block size of a dynamic or differencing disk.
    pub fn block_size(&self) -> Option<u32> {
        self.sparse.as_ref().map(|s| s.layout.block_size)
    }

    /// The parent's "Unique Id" recorded by a differencing disk.
    pub fn parent_id(&self) -> Option<Uuid> {
        match (&self.sparse, self.disk_type) {
            (Some(s), DiskType::Differencing) => Some(Uuid::from_bytes(s.layout.header.parent_unique_id)),
            _ => None,
        }
    }

    /// The decoded parent locators of a differencing disk.
    pub fn locators(&self) -> &[Locator] {
        &self.locators
    }

    pub(crate) fn writable(&self) -> Result<()> {
        if self.read_only {
            Err(Error::read_only())
        } else {
            Ok(())
        }
    }

    /// Where `count` sectors from `lba` of a sparse disk live, as one run (at most `max`
    /// sectors, never crossing a block that is allocated).
    fn locate(&self, sp: &SparseState, lba: u64, max: u64, cache: &mut Option<(u32, Vec<u8>)>) -> Result<(Loc, u64)> {
        let spb = sp.layout.block_sectors();
        let block = lba / spb;
        let within = lba % spb;
        let mut n = (spb - within).min(max);
        let bat = read_lock(&sp.bat);
        let index = u32::try_from(block).map_err(|_| Error::out_of_range("sector past the BAT"))?;
        let entry = *bat
            .get(block as usize)
            .ok_or_else(|| Error::out_of_range(format!("block {block} lies past the BAT")))?;
        if entry == BAT_FREE {
            let mut next = block + 1;
            while n < max && bat.get(next as usize) == Some(&BAT_FREE) {
                n = (n + spb).min(max);
                next += 1;
            }
            return Ok((Loc::Free, n));
        }
        drop(bat);
        let start = self.check_block(sp, index, entry)?;
        let data = start + sp.layout.bitmap_size + within * SECTOR_SIZE;
        if self.disk_type != DiskType::Differencing {
            return Ok((Loc::Data(data), n));
        }
        if cache.as_ref().is_none_or(|(b, _)| *b != index) {
            *cache = Some((index, self.current_bitmap(sp, index, start)?));
        }
        let bitmap = &cache.as_ref().expect("just filled").1;
        let first = bitmap_get(bitmap, within as usize);
        let mut run = 1;
        while run < n && bitmap_get(bitmap, (within + run) as usize) == first {
            run += 1;
        }
        Ok((if first { Loc::Data(data) } else { Loc::Clear }, run))
    }

    /// Check that block `index` (BAT entry `entry`) is usable (inside the file, on no other
    /// structure); its byte offset.
    pub(crate) fn check_block(&self, sp: &SparseState, index: u32, entry: u32) -> Result<u64> {
        if let Some(conflict) = read_lock(&sp.bad).get(&index) {
            return Err(Error::corrupt(format!("BAT entry {index} is unusable: {conflict}"))
                .in_structure("BAT")
                .at_offset(conflict.range().start));
        }
        let start = u64::from(entry) * SECTOR_SIZE;
        let used = block_used_bytes(&sp.layout, index, self.virtual_size);
        let end = start + sp.layout.bitmap_size + used;
        let file_len = sp.file_len.load(Ordering::Acquire);
        if end > file_len {
            return Err(
                Error::corrupt(format!("BAT entry {index} points past end of file (offset {start:#x})"))
                    .in_structure("BAT"),
            );
        }
        Ok(start)
    }

    /// Block `index`'s sector bitmap: the pending one if any, else the one in the file.
    pub(crate) fn current_bitmap(&self, sp: &SparseState, index: u32, start: u64) -> Result<Vec<u8>> {
        if let Some(b) = read_lock(&sp.bitmaps).get(&index) {
            return Ok(b.clone());
        }
        self.read_bitmap(sp, start)
    }

    fn read_bitmap(&self, sp: &SparseState, start: u64) -> Result<Vec<u8>> {
        let mut bitmap = vec![0u8; sp.layout.bitmap_size as usize];
        self.storage
            .read_at(&mut bitmap, start)
            .io_context("reading a sector bitmap", start)?;
        Ok(bitmap)
    }
}

/// Bytes of block `index`'s data that lie inside the virtual disk.
pub(crate) fn block_used_bytes(layout: &Sparse, index: u32, virtual_size: u64) -> u64 {
    let block_size = u64::from(layout.block_size);
    virtual_size
        .saturating_sub(u64::from(index) * block_size)
        .min(block_size)
}

/// Where the next block goes: after every piece of metadata and every block that lies inside
/// the file.
pub(crate) fn first_free_offset(
    layout: &Sparse,
    bat: &[u32],
    locators: &[Locator],
    virtual_size: u64,
    file_len: u64,
) -> u64 {
    let mut end = FOOTER_SIZE
        .max(layout.header_offset + HEADER_SIZE)
        .max(layout.table_offset + layout.bat_bytes());
    for loc in locators {
        let loc_end = loc.offset.saturating_add(u64::from(loc.length));
        if loc_end <= file_len {
            end = end.max(loc_end);
        }
    }
    for (index, &entry) in bat.iter().enumerate() {
        if entry == BAT_FREE {
            continue;
        }
        let block_end =
            u64::from(entry) * SECTOR_SIZE + layout.bitmap_size + block_used_bytes(layout, index as u32, virtual_size);
        if block_end <= file_len {
            end = end.max(u64::from(entry) * SECTOR_SIZE + layout.block_footprint());
        }
    }
    end.div_ceil(SECTOR_SIZE) * SECTOR_SIZE
}

impl Drop for VhdLayer {
    /// Write metadata still pending (best effort: an error here has no one to go to; callers
    /// who care call `flush`).
    fn drop(&mut self) {
        if let (Some(sp), false) = (&self.sparse, self.read_only) {
            let mut state = lock(&sp.alloc);
            if !state.bat_dirty.is_empty() || !read_lock(&sp.bitmaps).is_empty() {
                let _ = self.flush_locked(sp, &mut state);
            }
        }
    }
}

impl Layer for VhdLayer {
    fn format(&self) -> Format {
        Format::Vhd
    }

    fn sector_size(&self) -> u32 {
        SECTOR_SIZE as u32
    }

    fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    fn disk_id(&self) -> Option<Uuid> {
        Some(self.unique_id())
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn map(&self, lba: u64, count: u64) -> Result<Run> {
        let Some(sp) = &self.sparse else {
            return Ok(Run {
                sectors: count,
                mapping: Mapping::data(lba * SECTOR_SIZE),
            });
        };
        let (loc, sectors) = self.locate(sp, lba, count, &mut None)?;
        let mapping = match loc {
            Loc::Data(at) => Mapping::data(at),
            Loc::Free if self.disk_type != DiskType::Differencing => Mapping::Zero,
            Loc::Free | Loc::Clear => Mapping::Unallocated,
        };
        Ok(Run { sectors, mapping })
    }

    fn map_for_write(&self, lba: u64, count: u64) -> Result<WriteRun<'_>> {
        self.writable()?;
        match &self.sparse {
            None => Ok(WriteRun::overwrite(count, lba * SECTOR_SIZE)),
            Some(sp) => self.map_write(sp, lba, count),
        }
    }

    fn host_file(&self, file: usize) -> Option<&Arc<dyn Storage>> {
        (file == 0).then_some(&self.storage)
    }

    fn write_zeroes(&self, lba: u64, count: u64, below: &dyn Disk) -> Result<()> {
        self.zero(lba, count, below)
    }

    fn discard(&self, lba: u64, count: u64, below: &dyn Disk) -> Result<()> {
        self.zero(lba, count, below)
    }

    fn flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        match &self.sparse {
            Some(sp) => self.flush_locked(sp, &mut lock(&sp.alloc)),
            None => self.storage.flush().io_context("flushing the image", 0),
        }
    }

    fn block_status(&self, lba: u64, count: u64) -> Result<BlockStatus> {
        let Some(sp) = &self.sparse else {
            let at = lba * SECTOR_SIZE;
            let (data, bytes) = self
                .storage
                .allocation(at, count * SECTOR_SIZE)
                .io_context("querying holes", at)?;
            let sectors = if data {
                bytes.div_ceil(SECTOR_SIZE)
            } else {
                bytes / SECTOR_SIZE
            }
            .min(count);
            return Ok(if data || sectors == 0 {
                BlockStatus::data_at(sectors.max(1), at)
            } else {
                // A hole of a fixed image still lies at its own place in the file.
                BlockStatus {
                    offset: Some(at),
                    ..BlockStatus::new(sectors, Allocation::Zero)
                }
            });
        };
        let (loc, n) = self.locate(sp, lba, count.max(1), &mut None)?;
        Ok(match loc {
            Loc::Data(at) => BlockStatus::data_at(n, at),
            Loc::Free | Loc::Clear => BlockStatus::new(n, Allocation::Unallocated),
        })
    }

    fn parent(&self) -> Option<&ParentRef> {
        self.parent.as_ref()
    }

    fn verify_parent(&self, parent: &dyn Layer) -> Result<()> {
        let Some(expected) = self.parent_id() else {
            return Ok(());
        };
        let Some(vhd) = parent.as_any().downcast_ref::<VhdLayer>() else {
            return Err(Error::new(
                ErrorKind::ParentMismatch,
                format!("the parent of a VHD must be a VHD, not {}", parent.format()),
            ));
        };
        if vhd.unique_id() != expected {
            return Err(Error::new(
                ErrorKind::ParentMismatch,
                format!(
                    "parent has unique id {} but the child was made against {expected}",
                    vhd.unique_id()
                ),
            )
            .in_structure("dynamic header"));
        }
        Ok(())
    }

    fn info(&self) -> LayerInfo {
        crate::info::info(self)
    }

    fn check(&self, repair: disk_core::Repair) -> Result<disk_core::CheckReport> {
        crate::check::check(self, repair)
    }

    fn resize(self: Box<Self>, new_size: u64, _files: &dyn disk_core::FileCreator) -> Result<()> {
        self.resize_in_place(new_size)?;
        self.flush()
    }

    fn max_virtual_size(&self) -> Option<u64> {
        Some(crate::format::MAX_DISK_SIZE)
    }

    fn set_parent(self: Box<Self>, parent: Option<&disk_core::NewParent<'_>>) -> Result<()> {
        self.set_parent_in_place(parent)?;
        self.flush()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
