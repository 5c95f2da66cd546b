//! Grain-directory/grain-table extents: hosted sparse (KDMV, incl. stream-optimized), COWD
//! (vmfsSparse) and seSparse. Reads, grain allocation and the bounded grain-table cache.

#![warn(clippy::arithmetic_side_effects)]

use crate::format::{self, SECTOR};
use disk_core::mapping::{Claims, Completion, Fill, WriteRun, WriteTarget};
use disk_core::sync::{lock, read_lock, write_lock};
use disk_core::{Disk, Error, IoResultExt, Result, SpaceKind, SpaceMap, Storage};
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use zerocopy::{FromZeros, IntoBytes};

mod resize;
mod space;

pub(crate) use space::BadEntries;

/// Bytes of grain tables kept in memory per extent.
const GT_CACHE_BYTES: u64 = 8 << 20;

/// How grain directory and grain table entries are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// Hosted sparse (KDMV) extent.
    Kdmv {
        /// Grains are deflate-compressed.
        compressed: bool,
        /// Grains are preceded by a [`format::GrainMarker`].
        markers: bool,
        /// GTE 1 means "zeroed grain".
        zero_gte: bool,
    },
    /// COWD (vmfsSparse): 32-bit entries, read-only here.
    Cowd,
    /// seSparse: 64-bit typed entries, read-only here.
    SeSparse {
        /// Sector of the first grain table.
        gt_base: u64,
        /// Sector of the first grain.
        grains_base: u64,
    },
}

/// Where one grain lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GrainLoc {
    /// Not in this extent.
    Unallocated,
    /// Reads as zeros.
    Zero,
    /// Uncompressed at this byte offset.
    Data(u64),
    /// Compressed (with or without a marker) at this byte offset.
    Compressed(u64),
}

/// Layout of a table-based extent, as validated by the opener.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// Encoding of entries.
    pub flavor: Flavor,
    /// Capacity in sectors.
    pub capacity: u64,
    /// Sectors per grain.
    pub grain: u64,
    /// Entries per grain table.
    pub gtes: u64,
    /// Bytes per grain table entry (4 or 8).
    pub entry_size: u64,
    /// The grain directory entries.
    pub gd: Vec<u64>,
    /// Byte offset of the grain directory in the file.
    pub gd_offset: u64,
    /// The redundant grain directory entries and its byte offset, if kept.
    pub rgd: Option<(Vec<u64>, u64)>,
    /// Other ranges of the file in use (header, embedded descriptor, stream footer).
    pub reserved: Vec<(u64, u64, SpaceKind)>,
    /// Byte offset where grains may start (`overHead`): unused space before it is not a leak.
    pub data_start: u64,
}

/// Metadata changed under the allocation lock.
#[derive(Debug)]
struct Alloc {
    /// What every byte of the file holds; new grains and tables are allocated from it.
    space: SpaceMap,
}

/// Hashes a grain directory index for the table cache: one multiplication (Fibonacci hashing),
/// not SipHash, since the keys are small integers the image chose and the cache is bounded.
#[derive(Debug, Default, Clone, Copy)]
struct IndexHasher(u64);

impl Hasher for IndexHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A table-based extent.
#[derive(Debug)]
pub(crate) struct SparseExtent {
    pub storage: Arc<dyn Storage>,
    pub flavor: Flavor,
    pub capacity: u64,
    pub grain: u64,
    pub gtes: u64,
    entry_size: u64,
    gd: RwLock<Vec<u64>>,
    gd_offset: u64,
    rgd: RwLock<Option<(Vec<u64>, u64)>>,
    file_len: AtomicU64,
    cache: RwLock<HashMap<u64, Arc<Vec<u64>>, BuildHasherDefault<IndexHasher>>>,
    cache_max: usize,
    last_grain: Mutex<Option<(u64, Arc<Vec<u8>>)>>,
    alloc: Mutex<Alloc>,
    /// Grains being allocated: one writer per grain, the others wait for it.
    claims: Claims,
    /// Odd while grain tables or directories are being changed in the file, bumped before and
    /// after each change (with `alloc` held): readers cache a table only if it did not move.
    table_writes: AtomicU64,
    /// Grain table entries of completed writes not yet in the file (grain -> sector): newer
    /// than the tables, so lookups look here first. Written at the next flush, after the data
    /// is durable.
    pending: RwLock<BTreeMap<u64, u64>>,
    /// Whether `pending` holds anything (kept under its write lock; saves the lock on every
    /// lookup while nothing waits).
    any_pending: AtomicBool,
    /// Entries found unusable when the file was mapped (reads of them fail, writes never go
    /// through them).
    bad: RwLock<BadEntries>,
    /// Whether `bad` holds anything (saves the lock on every lookup).
    any_bad: AtomicBool,
    reserved: Vec<(u64, u64, SpaceKind)>,
    data_start: u64,
    /// Set when the grain tables were not read on open (a read-only open of large tables):
    /// the extent's structures (headers, directories, tables), which every grain is checked
    /// against when it is looked up.
    structures: OnceLock<SpaceMap>,
}

/// Inflate `packed` into a whole grain of `grain_bytes` (a short stream leaves zeros, as QEMU
/// reads it); `offset` and `g` name the grain in errors.
fn decompress_grain(packed: &[u8], grain_bytes: usize, offset: u64, g: u64) -> Result<Vec<u8>> {
    let mut data = vec![0u8; grain_bytes];
    miniz_oxide::inflate::decompress_slice_iter_to_slice(&mut data, std::iter::once(packed), true, false).map_err(
        |status| Error::corrupt(format!("compressed grain {g}: cannot inflate: {status:?}")).at_offset(offset),
    )?;
    Ok(data)
}

/// Pending grain table entries that make a write flush them at once.
const MAX_PENDING: usize = 4096;

fn corrupt(msg: String, offset: u64) -> Error {
    Error::corrupt(msg).in_structure("grain table").at_offset(offset)
}

impl SparseExtent {
    /// Wrap a validated layout (its space is mapped by [`SparseExtent::map_on_open`]).
    pub fn new(storage: Arc<dyn Storage>, layout: Layout, file_len: u64) -> Self {
        let gt_bytes = layout.gtes.saturating_mul(8).max(1);
        let cache_max = usize::try_from(GT_CACHE_BYTES.checked_div(gt_bytes).unwrap_or(0).max(16)).unwrap_or(16);
        SparseExtent {
            storage,
            flavor: layout.flavor,
            capacity: layout.capacity,
            grain: layout.grain,
            gtes: layout.gtes,
            entry_size: layout.entry_size,
            gd: RwLock::new(layout.gd),
            gd_offset: layout.gd_offset,
            rgd: RwLock::new(layout.rgd),
            file_len: AtomicU64::new(file_len),
            cache: RwLock::new(HashMap::default()),
            cache_max,
            last_grain: Mutex::new(None),
            claims: Claims::new(),
            table_writes: AtomicU64::new(0),
            pending: RwLock::new(BTreeMap::new()),
            any_pending: AtomicBool::new(false),
            alloc: Mutex::new(Alloc {
                space: SpaceMap::new(file_len),
            }),
            bad: RwLock::new(BadEntries::default()),
            any_bad: AtomicBool::new(false),
            reserved: layout.reserved,
            data_start: layout.data_start,
            structures: OnceLock::new(),
        }
    }

    /// Byte offset of the grain directory.
    pub fn gd_offset(&self) -> u64 {
        self.gd_offset
    }

    /// A copy of the grain directory entries.
    pub fn gd_entries(&self) -> Vec<u64> {
        read_lock(&self.gd).clone()
    }

    /// Record that the file now extends to at least `end` bytes (stream appends).
    pub fn grew(&self, end: u64) {
        self.file_len.fetch_max(end, Ordering::AcqRel);
    }

    /// Current end of the file (bytes), as far as this extent has written it.
    fn file_len(&self) -> u64 {
        self.file_len.load(Ordering::Acquire)
    }

    /// Bytes per grain.
    pub fn grain_bytes(&self) -> u64 {
        // At most 2^15 sectors (`check_layout`).
        self.grain.saturating_mul(SECTOR)
    }

    /// Whether grains can be written in place and allocated (uncompressed hosted sparse).
    pub fn supports_writes(&self) -> bool {
        matches!(self.flavor, Flavor::Kdmv { compressed: false, .. })
    }

    /// Whether grains are compressed.
    pub fn compressed(&self) -> bool {
        matches!(self.flavor, Flavor::Kdmv { compressed: true, .. })
    }

    fn gt_bytes(&self) -> u64 {
        // At most 2^16 entries of 8 bytes (`check_layout`).
        self.gtes.saturating_mul(self.entry_size)
    }

    /// Byte offset of grain table `i` (from GD entry `entry`), if allocated.
    fn gt_offset(&self, entry: u64) -> Result<Option<u64>> {
        if entry == 0 {
            return Ok(None);
        }
        let sector = match self.flavor {
            Flavor::SeSparse { gt_base, .. } => {
                if entry & 0xffff_ffff_0000_0000 != 0x1000_0000_0000_0000 {
                    return Err(corrupt(format!("bad seSparse grain directory entry {entry:#x}"), 0));
                }
                let per = self.gt_bytes() / SECTOR;
                (entry & 0xffff_ffff)
                    .checked_mul(per)
                    .and_then(|s| s.checked_add(gt_base))
            }
            _ => Some(entry),
        };
        let off = sector.and_then(|s| s.checked_mul(SECTOR));
        match off {
            Some(o) if o.checked_add(self.gt_bytes()).is_some_and(|e| e <= self.file_len()) => Ok(Some(o)),
            _ => Err(corrupt(
                format!("grain table at sector {entry:#x} lies past the end of the file"),
                0,
            )),
        }
    }

    /// Grain table `gd_index`, from the cache or the file. Misses are read without the cache
    /// locked (readers never queue behind another's I/O); a copy read while a writer changed
    /// tables ([`Self::table_writes`] moved or odd) is used but not cached, so the cache never
    /// holds an entry older than the file.
    fn table(&self, gd_index: u64) -> Result<Option<Arc<Vec<u64>>>> {
        if let Some(t) = read_lock(&self.cache).get(&gd_index) {
            return Ok(Some(t.clone()));
        }
        let entry = {
            let gd = read_lock(&self.gd);
            match usize::try_from(gd_index).ok().and_then(|i| gd.get(i)) {
                Some(&e) => e,
                None => return Ok(None),
            }
        };
        if entry != 0 && self.any_bad.load(Ordering::Acquire) && self.bad_entries().table(gd_index) {
            return Err(corrupt(
                format!(
                    "grain table {gd_index} (sector {entry:#x}) lies past the end of the file or on other \
                     structures; its grains cannot be read (check -r all drops it)"
                ),
                entry.saturating_mul(SECTOR),
            ));
        }
        let Some(off) = self.gt_offset(entry)? else {
            return Ok(None);
        };
        let seq = self.table_writes.load(Ordering::Acquire);
        let table = Arc::new(self.read_entries(off)?);
        let mut cache = write_lock(&self.cache);
        if seq.is_multiple_of(2) && self.table_writes.load(Ordering::Acquire) == seq {
            if cache.len() >= self.cache_max {
                cache.clear();
            }
            cache.insert(gd_index, table.clone());
        }
        Ok(Some(table))
    }

    /// The entries of the grain table at byte `off` (inside the file, checked by the caller).
    fn read_entries(&self, off: u64) -> Result<Vec<u64>> {
        let mut raw = vec![0u8; usize::try_from(self.gt_bytes()).unwrap_or(0)];
        self.storage
            .read_at(&mut raw, off)
            .io_context("reading a grain table", off)
            .map_err(|e| e.in_structure("grain table"))?;
        let (small, _) = raw.as_chunks::<4>();
        let (large, _) = raw.as_chunks::<8>();
        Ok(if self.entry_size == 4 {
            small.iter().map(|&c| u64::from(u32::from_le_bytes(c))).collect()
        } else {
            large.iter().map(|&c| u64::from_le_bytes(c)).collect()
        })
    }

    /// The entries found unusable on open.
    fn bad_entries(&self) -> std::sync::RwLockReadGuard<'_, BadEntries> {
        read_lock(&self.bad)
    }

    /// Where grain `g` lives.
    pub fn lookup(&self, g: u64) -> Result<GrainLoc> {
        Ok(self.lookup_span(g)?.0)
    }

    /// Write `table` (a grain table's bytes) at a new place taken from `space`; its offset. The
    /// caller flushes before linking it in.
    pub(crate) fn write_new_table(&self, space: &mut SpaceMap, table: &[u8]) -> Result<u64> {
        let span = self.gt_bytes().div_ceil(SECTOR).saturating_mul(SECTOR);
        let at = space.allocate(span, SECTOR, SpaceKind::GrainTable, MAX_FILE_BYTES)?;
        self.storage
            .write_at(table, at)
            .io_context("writing a grain table", at)?;
        self.file_len.fetch_max(space.file_len(), Ordering::AcqRel);
        Ok(at)
    }

    /// Where grain `g` lives, and for how many grains from `g` the answer is the same without
    /// looking further (a whole missing grain table answers at once; otherwise 1).
    // Sector arithmetic on a validated layout: `lba < capacity` (callers check ranges) and
    // `capacity * 512` fits in 64 bits, grains are at most 2^15 sectors and tables 2^16 entries
    // (`check_layout`), grain offsets come from `decode` (checked) and lie inside the file (space
    // map), and buffer offsets stay below the buffer's length.
    #[allow(clippy::arithmetic_side_effects)]
    pub(crate) fn lookup_span(&self, g: u64) -> Result<(GrainLoc, u64)> {
        let table_end = g - g % self.gtes + self.gtes;
        let next_pending = if !self.any_pending.load(Ordering::Acquire) {
            None
        } else {
            let pending = read_lock(&self.pending);
            match pending.range(g..table_end).next() {
                Some((&k, &v)) if k == g => return Ok((GrainLoc::Data(v * SECTOR), 1)),
                Some((&k, _)) => Some(k),
                None => None,
            }
        };
        let within = usize::try_from(g % self.gtes).unwrap_or(usize::MAX);
        // A cached table answers under the read lock, without touching its reference count.
        let cached = read_lock(&self.cache)
            .get(&(g / self.gtes))
            .map(|t| t.get(within).copied());
        let e = match cached {
            Some(e) => e,
            None => match self.table(g / self.gtes)? {
                Some(table) => table.get(within).copied(),
                None => return Ok((GrainLoc::Unallocated, next_pending.unwrap_or(table_end) - g)),
            },
        };
        if self.any_bad.load(Ordering::Acquire) && self.bad_entries().grain(g, self.gtes) {
            return Err(corrupt(
                format!(
                    "grain {g} points past the end of the file or onto other structures or grains; \
                     it cannot be read (check -r all drops it)"
                ),
                0,
            ));
        }
        let loc = self.decode(g, e.unwrap_or(0))?;
        if let Some(structures) = self.structures.get() {
            let on = match loc {
                GrainLoc::Data(o) => Some((o, self.grain_bytes())),
                GrainLoc::Compressed(o) => Some((o, SECTOR)),
                GrainLoc::Unallocated | GrainLoc::Zero => None,
            };
            if let Some((o, len)) = on
                && let Err(c) = structures.check(o, len, SpaceKind::Data)
            {
                return Err(corrupt(format!("grain {g}: {c}; it cannot be read"), o));
            }
        }
        Ok((loc, 1))
    }

    /// What grain table entry `e` of grain `g` means.
    fn decode(&self, g: u64, e: u64) -> Result<GrainLoc> {
        let sector_to_byte = |s: u64| {
            s.checked_mul(SECTOR)
                .ok_or_else(|| corrupt(format!("grain {g}: entry {s:#x} overflows"), 0))
        };
        match self.flavor {
            Flavor::Kdmv {
                compressed, zero_gte, ..
            } => match e {
                0 => Ok(GrainLoc::Unallocated),
                e if zero_gte && e == u64::from(format::GTE_ZEROED) => Ok(GrainLoc::Zero),
                s if compressed => Ok(GrainLoc::Compressed(sector_to_byte(s)?)),
                s => Ok(GrainLoc::Data(sector_to_byte(s)?)),
            },
            Flavor::Cowd => match e {
                0 => Ok(GrainLoc::Unallocated),
                s => Ok(GrainLoc::Data(sector_to_byte(s)?)),
            },
            Flavor::SeSparse { grains_base, .. } => match e >> format::SESPARSE_GTE_TYPE_SHIFT {
                format::SESPARSE_GTE_UNALLOCATED if e == 0 => Ok(GrainLoc::Unallocated),
                format::SESPARSE_GTE_FALLBACK | format::SESPARSE_GTE_ZERO => Ok(GrainLoc::Zero),
                format::SESPARSE_GTE_ALLOCATED => {
                    let index = ((e & 0x0fff_0000_0000_0000) >> 48) | ((e & 0x0000_ffff_ffff_ffff) << 12);
                    let s = index
                        .checked_mul(self.grain)
                        .and_then(|s| s.checked_add(grains_base))
                        .ok_or_else(|| corrupt(format!("grain {g}: entry {e:#x} overflows"), 0))?;
                    Ok(GrainLoc::Data(sector_to_byte(s)?))
                }
                _ => Err(corrupt(format!("grain {g}: bad seSparse entry {e:#x}"), 0)),
            },
        }
    }

    /// The run starting at extent sector `lba` (at most `max` sectors) with one mapping,
    /// merging grains stored contiguously.
    // Sector arithmetic on a validated layout: `lba < capacity` (callers check ranges) and
    // `capacity * 512` fits in 64 bits, grains are at most 2^15 sectors and tables 2^16 entries
    // (`check_layout`), grain offsets come from `decode` (checked) and lie inside the file (space
    // map), and buffer offsets stay below the buffer's length.
    #[allow(clippy::arithmetic_side_effects)]
    pub fn run(&self, lba: u64, max: u64) -> Result<(GrainLoc, u64)> {
        if lba >= self.capacity {
            return Ok((GrainLoc::Unallocated, max));
        }
        let max = max.min(self.capacity - lba);
        let g = lba / self.grain;
        let within = lba % self.grain;
        let (first, span) = self.lookup_span(g)?;
        let first = match first {
            GrainLoc::Data(o) => GrainLoc::Data(o + within * SECTOR),
            other => other,
        };
        // Grain tables are walked, not sectors: a missing table answers for all its grains.
        let mut n = (span * self.grain - within).min(max);
        let mut next = g + span;
        while n < max {
            let (loc, span) = self.lookup_span(next)?;
            let same = match (first, loc) {
                (GrainLoc::Data(o), GrainLoc::Data(p)) => p == o + n * SECTOR,
                (GrainLoc::Unallocated, GrainLoc::Unallocated) | (GrainLoc::Zero, GrainLoc::Zero) => true,
                _ => false,
            };
            if !same {
                break;
            }
            n = n.saturating_add(span * self.grain).min(max);
            next += span;
        }
        Ok((first, n))
    }

    /// Read extent sectors from `lba` into `buf`; `global` is the disk LBA of `lba` (for `below`).
    // Sector arithmetic on a validated layout: `lba < capacity` (callers check ranges) and
    // `capacity * 512` fits in 64 bits, grains are at most 2^15 sectors and tables 2^16 entries
    // (`check_layout`), grain offsets come from `decode` (checked) and lie inside the file (space
    // map), and buffer offsets stay below the buffer's length.
    #[allow(clippy::arithmetic_side_effects)]
    pub fn read(&self, lba: u64, buf: &mut [u8], global: u64, below: &dyn Disk) -> Result<()> {
        let total = buf.len() as u64 / SECTOR;
        let mut runs = Vec::new();
        let mut done = 0u64;
        while done < total {
            let (loc, n) = self.run(lba + done, total - done)?;
            let n = n.clamp(1, total - done);
            runs.push((done, n, loc));
            done += n;
        }
        // Large reads inflate their grains on all cores.
        let grains: Vec<(u64, u64)> = runs
            .iter()
            .filter_map(|&(d, _, loc)| match loc {
                GrainLoc::Compressed(o) => Some((o, lba.saturating_add(d) / self.grain)),
                _ => None,
            })
            .collect();
        let inflated = self.inflate_many(&grains)?;
        for (d, n, loc) in runs {
            let at = lba + d;
            let piece = &mut buf[(d * SECTOR) as usize..((d + n) * SECTOR) as usize];
            match loc {
                GrainLoc::Unallocated => below.read(global + d, piece)?,
                GrainLoc::Zero => piece.fill(0),
                GrainLoc::Data(o) => self.storage.read_at(piece, o).io_context("reading a grain", o)?,
                GrainLoc::Compressed(o) => {
                    let data = match inflated.iter().find(|(off, _)| *off == o) {
                        Some((_, data)) => data.clone(),
                        None => self.inflate(o, at / self.grain)?,
                    };
                    let start = ((at % self.grain) * SECTOR) as usize;
                    piece.copy_from_slice(&data[start..start + piece.len()]);
                }
            }
        }
        Ok(())
    }

    /// Inflate several grains (offset, index) on the grain worker pool when there are enough to
    /// be worth it: the compressed bytes are read here, only the decompression runs there.
    fn inflate_many(&self, grains: &[(u64, u64)]) -> Result<Vec<(u64, Arc<Vec<u8>>)>> {
        if grains.len() < 4 {
            return Ok(Vec::new());
        }
        let gb = self.grain_bytes() as usize;
        let mut packed = Vec::with_capacity(grains.len());
        for &(offset, g) in grains {
            packed.push((offset, g, gb, self.read_packed(offset, g)?));
        }
        crate::parallel::map_in_order(packed, 4, |(offset, g, gb, bytes)| {
            decompress_grain(&bytes, gb, offset, g).map(|d| (offset, Arc::new(d)))
        })
        .into_iter()
        .collect()
    }

    /// The compressed bytes of the grain stored at byte `offset` (after its marker, if the
    /// extent has markers), bounded by twice the grain size and the file.
    fn read_packed(&self, offset: u64, g: u64) -> Result<Vec<u8>> {
        let gb = self.grain_bytes();
        let limit = gb.saturating_mul(2).saturating_add(4096);
        let markers = matches!(self.flavor, Flavor::Kdmv { markers: true, .. });
        let (start, len) = if markers {
            let mut m = format::GrainMarker::new_zeroed();
            self.storage
                .read_at(m.as_mut_bytes(), offset)
                .io_context("reading a grain marker", offset)?;
            let header = size_of::<format::GrainMarker>() as u64;
            (offset.saturating_add(header), u64::from(m.size.get()))
        } else {
            (offset, limit.min(self.file_len().saturating_sub(offset)))
        };
        if len == 0 || len > limit || start.checked_add(len).is_none_or(|e| e > self.file_len()) {
            return Err(
                Error::corrupt(format!("compressed grain {g}: compressed size {len} is invalid")).at_offset(offset),
            );
        }
        let mut packed = vec![0u8; len as usize];
        self.storage
            .read_at(&mut packed, start)
            .io_context("reading a compressed grain", start)?;
        Ok(packed)
    }

    /// Decompress the grain stored at byte `offset` (one grain is kept decompressed).
    pub fn inflate(&self, offset: u64, g: u64) -> Result<Arc<Vec<u8>>> {
        if let Some((o, data)) = &*lock(&self.last_grain)
            && *o == offset
        {
            return Ok(data.clone());
        }
        let packed = self.read_packed(offset, g)?;
        let data = Arc::new(decompress_grain(&packed, self.grain_bytes() as usize, offset, g)?);
        *lock(&self.last_grain) = Some((offset, data.clone()));
        Ok(data)
    }

    /// Where a write of up to `count` extent sectors from `lba` goes (one grain at most);
    /// `global` is the disk LBA of `lba` and `file` the extent's host file number. A grain not
    /// stored yet is claimed and reserved at the end of the file; the I/O core writes it whole
    /// (the rest from the parent, or zeros) and the completion records its grain table entry
    /// in memory, to be written at the next flush after the data is durable.
    // Sector arithmetic on a validated layout: `lba < capacity` (callers check ranges) and
    // `capacity * 512` fits in 64 bits, grains are at most 2^15 sectors.
    #[allow(clippy::arithmetic_side_effects)]
    pub fn map_write(&self, lba: u64, count: u64, global: u64, file: usize) -> Result<WriteRun<'_>> {
        if !matches!(self.flavor, Flavor::Kdmv { compressed: false, .. }) {
            return Err(Error::unsupported(
                "writing to compressed (streamOptimized), COWD or seSparse extents is not supported",
            ));
        }
        let g = lba / self.grain;
        let within = lba % self.grain;
        let n = (self.grain - within).min(count);
        let loc = self.lookup(g)?;
        match loc {
            GrainLoc::Data(o) => {
                return Ok(WriteRun {
                    sectors: n,
                    target: WriteTarget::Host {
                        file,
                        offset: o + within * SECTOR,
                    },
                    completion: Completion::none(),
                });
            }
            GrainLoc::Compressed(_) => return Err(Error::unsupported("cannot overwrite a compressed grain")),
            GrainLoc::Unallocated | GrainLoc::Zero => {}
        }
        let claim = self.claims.claim(g);
        let loc = self.lookup(g)?;
        if let GrainLoc::Data(_) = loc {
            // Another writer allocated the grain meanwhile.
            drop(claim);
            return self.map_write(lba, count, global, file);
        }
        let off = {
            let mut alloc = lock(&self.alloc);
            alloc
                .space
                .allocate(self.grain_bytes(), SECTOR, SpaceKind::Data, MAX_FILE_BYTES)?
        };
        let value = off / SECTOR;
        u32::try_from(value)
            .map_err(|_| Error::unsupported("the extent is too large for 32-bit grain table entries"))?;
        let target = if n == self.grain {
            WriteTarget::Host { file, offset: off }
        } else {
            WriteTarget::Unit {
                file,
                offset: off,
                lba: global - within,
                sectors: self.grain,
                fill: if loc == GrainLoc::Unallocated {
                    Fill::Below
                } else {
                    Fill::Zeros
                },
            }
        };
        Ok(WriteRun {
            sectors: n,
            target,
            completion: Completion::new(move |written| {
                let _claim = claim;
                if !written {
                    // The reserved grain stays unused (a leak `check -r leaks` can cut).
                    return Ok(());
                }
                self.file_len.fetch_max(off + self.grain_bytes(), Ordering::AcqRel);
                let mut pending = write_lock(&self.pending);
                pending.insert(g, value);
                self.any_pending.store(true, Ordering::Release);
                let too_many = pending.len() > MAX_PENDING;
                drop(pending);
                if too_many {
                    self.flush_pending()?;
                }
                Ok(())
            }),
        })
    }

    /// Make new grains durable, then write their grain table entries, a table at a time:
    /// tables that exist are rewritten whole (primary and redundant copy) with all their new
    /// entries; missing tables are written complete, flushed, and only then linked into the
    /// directories (spans of neighbouring directory entries in one write). A flush after many
    /// scattered allocations thus costs two flushes and a few writes per table touched.
    // Sector arithmetic on a validated layout: grains and tables are bounded (`check_layout`),
    // grain indexes come from in-range LBAs and table offsets from the space map.
    #[allow(clippy::arithmetic_side_effects)]
    pub fn flush_pending(&self) -> Result<()> {
        let mut alloc = lock(&self.alloc);
        let entries: Vec<(u64, u64)> = read_lock(&self.pending).iter().map(|(&g, &v)| (g, v)).collect();
        if entries.is_empty() {
            return Ok(());
        }
        self.storage.flush().io_context("flushing new grains", 0)?;
        self.table_writes.fetch_add(1, Ordering::AcqRel);
        let result = self.write_pending_tables(&mut alloc, &entries);
        self.table_writes.fetch_add(1, Ordering::AcqRel);
        result?;
        let mut pending = write_lock(&self.pending);
        for (g, value) in entries {
            if pending.get(&g) == Some(&value) {
                pending.remove(&g);
            }
        }
        self.any_pending.store(!pending.is_empty(), Ordering::Release);
        Ok(())
    }

    /// The table and directory writes of [`Self::flush_pending`].
    // Sector arithmetic on a validated layout: grains and tables are bounded (`check_layout`),
    // grain indexes come from in-range LBAs and table offsets from the space map.
    #[allow(clippy::arithmetic_side_effects)]
    fn write_pending_tables(&self, alloc: &mut Alloc, entries: &[(u64, u64)]) -> Result<()> {
        // New tables (directory index, bytes, whether a redundant copy is kept): written
        // together below, each set of copies in one contiguous write.
        let mut fresh: Vec<(usize, Vec<u8>, bool)> = Vec::new();
        // Existing tables rewritten whole: (file offset, bytes), and their new contents.
        let mut rewrites: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut updated: Vec<(u64, Vec<u64>)> = Vec::new();
        let mut i = 0;
        while i < entries.len() {
            let gd_index = entries[i].0 / self.gtes;
            let mut j = i;
            while j < entries.len() && entries[j].0 / self.gtes == gd_index {
                j += 1;
            }
            let group = &entries[i..j];
            i = j;
            let idx = usize::try_from(gd_index).map_err(|_| Error::corrupt("grain index overflows"))?;
            let gd_entry = read_lock(&self.gd).get(idx).copied();
            let Some(gd_entry) = gd_entry else {
                return Err(
                    Error::corrupt(format!("grain {} has no grain directory entry", group[0].0))
                        .in_structure("grain directory"),
                );
            };
            let mut table: Vec<u64> = match self.table(gd_index)? {
                Some(t) => t.to_vec(),
                None => vec![0; self.gtes as usize],
            };
            for &(g, value) in group {
                if let Some(slot) = table.get_mut((g % self.gtes) as usize) {
                    *slot = value;
                }
            }
            let mut bytes = Vec::with_capacity(table.len() * 4);
            for &e in &table {
                let e = u32::try_from(e)
                    .map_err(|_| Error::unsupported("the extent is too large for 32-bit grain table entries"))?;
                bytes.extend_from_slice(&e.to_le_bytes());
            }
            let rgd_entry = read_lock(&self.rgd).as_ref().and_then(|(r, _)| r.get(idx).copied());
            let bad = self.bad_entries();
            let redundant_sound = !bad.redundant_dir;
            let redundant_table_sound = !bad.redundant_tables.contains(&gd_index);
            drop(bad);
            if gd_entry == 0 {
                fresh.push((idx, bytes, rgd_entry.is_some() && redundant_sound));
            } else {
                let mut offsets = vec![gd_entry * SECTOR];
                if let Some(r) = rgd_entry.filter(|&r| r != 0 && redundant_sound && redundant_table_sound) {
                    offsets.push(r * SECTOR);
                }
                for at in offsets {
                    rewrites.push((at, bytes.clone()));
                }
                updated.push((gd_index, table));
            }
        }
        // Tables laid out side by side (as created) are rewritten in one write per run, the runs
        // in parallel.
        if let Err(e) = disk_core::mover::write_scattered(&*self.storage, rewrites, "writing grain tables") {
            // Tables may hold some of the entries now: reads follow the file.
            write_lock(&self.cache).clear();
            return Err(e);
        }
        {
            let mut cache = write_lock(&self.cache);
            for (gd_index, table) in updated {
                if let Some(t) = cache.get_mut(&gd_index) {
                    *t = Arc::new(table);
                }
            }
        }
        let linked = self.write_new_tables(&mut alloc.space, &fresh)?;
        if !linked.is_empty() {
            // New tables are complete on disk before any directory points at them.
            self.storage.flush().io_context("flushing grain tables", 0)?;
            let mut gd = write_lock(&self.gd);
            for &(idx, primary, _) in &linked {
                gd[idx] = primary / SECTOR;
            }
            let indexes: Vec<usize> = linked.iter().map(|&(idx, _, _)| idx).collect();
            self.write_directory_spans(&gd, self.gd_offset, &indexes, "writing the grain directory")?;
            drop(gd);
            let mut rgd = write_lock(&self.rgd);
            if let Some((entries, rgd_off)) = rgd.as_mut() {
                let mut indexes = Vec::new();
                for &(idx, _, redundant) in &linked {
                    if let Some(r) = redundant {
                        entries[idx] = r / SECTOR;
                        indexes.push(idx);
                    }
                }
                let rgd_off = *rgd_off;
                self.write_directory_spans(entries, rgd_off, &indexes, "writing the redundant grain directory")?;
            }
        }
        Ok(())
    }

    /// Write new grain tables `(directory index, bytes, keep a redundant copy)` side by side at
    /// the end of the file: the primary copies in one write, then the redundant ones in another.
    /// Returns each index with the offsets of its copies (not yet flushed nor linked).
    // Sizes are bounded: a table is at most 2^16 entries and there are at most as many new
    // tables as directory entries.
    #[allow(clippy::arithmetic_side_effects)]
    fn write_new_tables(
        &self,
        space: &mut SpaceMap,
        fresh: &[(usize, Vec<u8>, bool)],
    ) -> Result<Vec<(usize, u64, Option<u64>)>> {
        if fresh.is_empty() {
            return Ok(Vec::new());
        }
        let span = self.gt_bytes().div_ceil(SECTOR) * SECTOR;
        let mut place = |copies: Vec<&[u8]>| -> Result<u64> {
            let total = span * copies.len() as u64;
            let at = space.allocate(total, SECTOR, SpaceKind::GrainTable, MAX_FILE_BYTES)?;
            let mut buf = vec![0u8; total as usize];
            for (k, bytes) in copies.iter().enumerate() {
                let from = k * span as usize;
                buf[from..from + bytes.len()].copy_from_slice(bytes);
            }
            self.storage.write_at(&buf, at).io_context("writing grain tables", at)?;
            self.file_len.fetch_max(at + total, Ordering::AcqRel);
            Ok(at)
        };
        let primary = place(fresh.iter().map(|(_, b, _)| b.as_slice()).collect())?;
        let redundant: Vec<&[u8]> = fresh.iter().filter(|f| f.2).map(|(_, b, _)| b.as_slice()).collect();
        let redundant_at = if redundant.is_empty() {
            None
        } else {
            Some(place(redundant)?)
        };
        let mut out = Vec::with_capacity(fresh.len());
        let mut r = 0u64;
        for (k, (idx, _, keep)) in fresh.iter().enumerate() {
            let red = match (keep, redundant_at) {
                (true, Some(base)) => {
                    r += 1;
                    Some(base + (r - 1) * span)
                }
                _ => None,
            };
            out.push((*idx, primary + k as u64 * span, red));
        }
        Ok(out)
    }

    /// Write the directory entries `indexes` (sorted) of `dir` (at byte `offset`) to the file,
    /// entries less than 4 KiB apart in one write.
    // Indexes are sorted directory indexes (bounded by the directory's length, checked on open).
    #[allow(clippy::arithmetic_side_effects)]
    fn write_directory_spans(&self, dir: &[u64], offset: u64, indexes: &[usize], what: &str) -> Result<()> {
        const GAP: usize = 1024;
        let mut i = 0;
        while i < indexes.len() {
            let first = indexes[i];
            let mut last = first;
            i += 1;
            while i < indexes.len() && indexes[i] - last <= GAP {
                last = indexes[i];
                i += 1;
            }
            let mut bytes = Vec::with_capacity((last - first + 1) * 4);
            for &e in &dir[first..=last] {
                let e = u32::try_from(e).map_err(|_| Error::unsupported("extent too large"))?;
                bytes.extend_from_slice(&e.to_le_bytes());
            }
            let at = offset + first as u64 * 4;
            self.storage.write_at(&bytes, at).io_context(what, at)?;
        }
        Ok(())
    }

    /// Point grain `g`'s entry at `value` in the primary and redundant grain tables, allocating
    /// the tables if the directory has none for it.
    fn set_entry(&self, alloc: &mut Alloc, g: u64, value: u64) -> Result<()> {
        self.table_writes.fetch_add(1, Ordering::AcqRel);
        let result = self.set_entry_unguarded(alloc, g, value);
        self.table_writes.fetch_add(1, Ordering::AcqRel);
        result
    }

    /// [`Self::set_entry`] without the table-write sequence bumps.
    // Sector arithmetic on a validated layout: `lba < capacity` (callers check ranges) and
    // `capacity * 512` fits in 64 bits, grains are at most 2^15 sectors and tables 2^16 entries
    // (`check_layout`), grain offsets come from `decode` (checked) and lie inside the file (space
    // map), and buffer offsets stay below the buffer's length.
    #[allow(clippy::arithmetic_side_effects)]
    fn set_entry_unguarded(&self, alloc: &mut Alloc, g: u64, value: u64) -> Result<()> {
        let gd_index = g / self.gtes;
        let idx = usize::try_from(gd_index).map_err(|_| Error::corrupt("grain index overflows"))?;
        let in_table = g % self.gtes;
        let entry = u32::try_from(value)
            .map_err(|_| Error::unsupported("the extent is too large for 32-bit grain table entries"))?;
        let gd_entry = read_lock(&self.gd).get(idx).copied();
        let Some(gd_entry) = gd_entry else {
            return Err(
                Error::corrupt(format!("grain {g} has no grain directory entry")).in_structure("grain directory")
            );
        };
        let rgd_entry = read_lock(&self.rgd).as_ref().and_then(|(r, _)| r.get(idx).copied());
        let mut gt_offsets = Vec::new();
        if gd_entry == 0 && value == 0 {
            return Ok(());
        }
        if gd_entry == 0 {
            // New tables: written complete (with the entry), flushed, then linked in.
            let mut table = vec![0u8; self.gt_bytes() as usize];
            let p = (in_table * 4) as usize;
            table[p..p + 4].copy_from_slice(&entry.to_le_bytes());
            let primary = self.write_new_table(&mut alloc.space, &table)?;
            let redundant_sound = rgd_entry.is_some() && !self.bad_entries().redundant_dir;
            let redundant = if redundant_sound {
                Some(self.write_new_table(&mut alloc.space, &table)?)
            } else {
                None
            };
            self.storage.flush().io_context("flushing grain tables", primary)?;
            let p_sector = u32::try_from(primary / SECTOR).map_err(|_| Error::unsupported("extent too large"))?;
            let o = self.gd_offset + gd_index * 4;
            self.storage
                .write_at(&p_sector.to_le_bytes(), o)
                .io_context("writing the grain directory", o)?;
            write_lock(&self.gd)[idx] = u64::from(p_sector);
            if let Some(r) = redundant {
                let r_sector = u32::try_from(r / SECTOR).map_err(|_| Error::unsupported("extent too large"))?;
                let mut rgd = write_lock(&self.rgd);
                if let Some((entries, rgd_off)) = rgd.as_mut() {
                    let o = *rgd_off + gd_index * 4;
                    self.storage
                        .write_at(&r_sector.to_le_bytes(), o)
                        .io_context("writing the redundant grain directory", o)?;
                    entries[idx] = u64::from(r_sector);
                }
            }
        } else {
            gt_offsets.push(gd_entry * SECTOR);
            // A redundant table found unusable on open is never written through.
            let bad = self.bad_entries();
            if let Some(r) =
                rgd_entry.filter(|&r| r != 0 && !bad.redundant_dir && !bad.redundant_tables.contains(&gd_index))
            {
                gt_offsets.push(r * SECTOR);
            }
            drop(bad);
            for base in gt_offsets {
                let o = base + in_table * 4;
                if let Err(e) = self.storage.write_at(&entry.to_le_bytes(), o) {
                    // The primary table may or may not hold the new entry now: forget the cached
                    // copy so reads follow the file.
                    write_lock(&self.cache).remove(&gd_index);
                    return Err(Error::io(e, "writing a grain table entry").at_offset(o));
                }
            }
        }
        if let Some(t) = write_lock(&self.cache).get_mut(&gd_index)
            && let Some(slot) = Arc::make_mut(t).get_mut(in_table as usize)
        {
            *slot = u64::from(entry);
        }
        Ok(())
    }

    /// Make whole grains from `g` (count `n`) read as zeros (`zero`: a zeroed-grain entry) or
    /// fall through (`Unallocated`), without writing data.
    pub fn unmap_grains(&self, g: u64, n: u64, zero: bool) -> Result<()> {
        let mut alloc = lock(&self.alloc);
        let end = g.saturating_add(n);
        let mut i = g;
        while i < end {
            let (loc, span) = self.lookup_span(i)?;
            let want = if zero { GrainLoc::Zero } else { GrainLoc::Unallocated };
            if loc == want || (loc == GrainLoc::Unallocated && !zero) {
                // A missing table is skipped whole when nothing needs writing.
                i = i.saturating_add(span.max(1));
                continue;
            }
            self.set_entry(&mut alloc, i, if zero { u64::from(format::GTE_ZEROED) } else { 0 })?;
            let mut pending = write_lock(&self.pending);
            pending.remove(&i);
            self.any_pending.store(!pending.is_empty(), Ordering::Release);
            drop(pending);
            i = i.saturating_add(1);
        }
        Ok(())
    }

    /// Whether GTE 1 means zeroed grain here.
    pub fn has_zero_gte(&self) -> bool {
        matches!(self.flavor, Flavor::Kdmv { zero_gte: true, .. })
    }
}

/// Largest grain directory read into memory (a 64 TiB seSparse disk needs 32 MiB).
const MAX_DIRECTORY_BYTES: u64 = 64 << 20;

/// Read the little-endian entries of a directory of `count` entries of `size` bytes at `offset`,
/// bounded by `file_len`.
pub(crate) fn read_directory(
    storage: &dyn Storage,
    offset: u64,
    count: u64,
    size: u64,
    file_len: u64,
    what: &'static str,
) -> Result<Vec<u64>> {
    let bytes = count
        .checked_mul(size)
        .filter(|&b| b <= MAX_DIRECTORY_BYTES && offset.checked_add(b).is_some_and(|e| e <= file_len))
        .ok_or_else(|| {
            Error::corrupt(format!(
                "{what} of {count} entries at {offset:#x} does not fit in the file"
            ))
            .in_structure(what)
            .at_offset(offset)
        })?;
    let mut raw = vec![0u8; usize::try_from(bytes).map_err(|_| Error::corrupt("directory too large"))?];
    storage
        .read_at(&mut raw, offset)
        .io_context("reading a grain directory", offset)
        .map_err(|e| e.in_structure(what))?;
    Ok(if size == 4 {
        raw.chunks_exact(4)
            .map(|c| u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect()
    } else {
        raw.chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect()
    })
}

/// Largest grain accepted, in sectors (16 MiB; VMware writes 64 KiB, mkimg 8 KiB).
const MAX_GRAIN_SECTORS: u64 = 1 << 15;
/// Smallest hosted sparse (KDMV) grain accepted, in sectors: VMware's specification requires a
/// power of two of at least 8 sectors (4 KiB); VMware and QEMU write 128. Smaller grains only
/// multiply the work of every table walk.
pub(crate) const MIN_KDMV_GRAIN_SECTORS: u64 = 8;
/// The largest file a 32-bit grain table entry (a sector number) can address.
pub(crate) const MAX_FILE_BYTES: u64 = (u32::MAX as u64) * SECTOR;
/// Most entries per grain table accepted (VMware writes 512, COWD and seSparse 4096).
const MAX_GTES: u64 = 1 << 16;

/// Validate grain and grain table sizes and the capacity; returns the grain directory length.
pub(crate) fn check_layout(capacity: u64, grain: u64, gtes: u64, what: &str) -> Result<u64> {
    if grain == 0 || !grain.is_power_of_two() || grain > MAX_GRAIN_SECTORS || gtes == 0 || gtes > MAX_GTES {
        return Err(Error::corrupt(format!(
            "{what}: grain size {grain} or {gtes} entries per grain table is invalid"
        )));
    }
    if capacity.checked_mul(SECTOR).is_none() {
        return Err(Error::corrupt(format!(
            "{what}: capacity of {capacity} sectors is too large"
        )));
    }
    Ok(capacity.div_ceil(grain).div_ceil(gtes))
}

/// Check bytes of a KDMV header are as the spec writes them.
pub(crate) fn newline_ok(h: &format::SparseExtentHeader) -> bool {
    h.single_end_line_char == b'\n'
        && h.non_end_line_char == b' '
        && h.double_end_line_char1 == b'\r'
        && h.double_end_line_char2 == b'\n'
}
