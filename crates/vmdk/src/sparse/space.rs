//! The space map of a table-based extent: what every byte of the file holds, the entries that
//! point where they must not, and `check` (with repair) built on it.
//!
//! On open the header, the embedded descriptor, the stream footer, both grain directories,
//! every grain table (both copies) and every grain are recorded in a [`SpaceMap`]. An entry
//! whose range lies past the end of the file or on something recorded before it (metadata is
//! recorded first, then grains in table order) is marked unusable in [`BadEntries`]: reads of it
//! fail with [`ErrorKind::Corrupt`](disk_core::ErrorKind), writes never go through it, and a
//! writable open is refused unless the caller asked for repair.
//!
//! The work is bounded by the file, not by the capacity the header claims: a directory lies
//! inside the file, only tables that could be recorded (inside the file, not overlapping each
//! other) are read, and each of their entries is looked at once.

#![warn(clippy::arithmetic_side_effects)]

use super::{Flavor, GrainLoc, SparseExtent};
use crate::format::{self, GrainMarker, SECTOR, SparseExtentHeader};
use disk_core::sync::{lock, read_lock, write_lock};
use disk_core::table::EAGER_SURVEY_BYTES;
use disk_core::{Conflict, Error, Findings, IoResultExt, Repair, Result, SpaceKind, SpaceMap, SpaceRange};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use zerocopy::{FromBytes, FromZeros, IntoBytes};

/// Entries found unusable when the extent's file was mapped. Memory is bounded by the file:
/// tables are sets of directory indexes (the directory is in the file), grains are one bit per
/// entry of tables that were read (each such table is in the file and eight times larger).
#[derive(Debug, Clone, Default)]
pub(crate) struct BadEntries {
    /// Directory indexes whose (primary) grain table is unusable.
    pub tables: BTreeSet<u64>,
    /// Directory indexes whose redundant grain table is unusable.
    pub redundant_tables: BTreeSet<u64>,
    /// Per directory index, a bit set of the grain entries that are unusable.
    pub grains: BTreeMap<u64, Vec<u64>>,
    /// The redundant grain directory itself is unusable.
    pub redundant_dir: bool,
}

impl BadEntries {
    /// Whether the primary table of directory entry `index` is unusable.
    pub fn table(&self, index: u64) -> bool {
        self.tables.contains(&index)
    }

    /// Whether grain `g` (tables of `gtes` entries) is unusable.
    pub fn grain(&self, g: u64, gtes: u64) -> bool {
        let (Some(t), Some(i)) = (g.checked_div(gtes), g.checked_rem(gtes)) else {
            return false;
        };
        self.grains.get(&t).is_some_and(|bits| {
            usize::try_from(i / 64)
                .ok()
                .and_then(|w| bits.get(w))
                .is_some_and(|word| word & (1u64 << (i % 64)) != 0)
        })
    }

    fn mark_grain(&mut self, table: u64, index: u64, gtes: u64) {
        let words = usize::try_from(gtes.div_ceil(64)).unwrap_or(0);
        let bits = self.grains.entry(table).or_insert_with(|| vec![0; words]);
        if let Some(word) = usize::try_from(index / 64).ok().and_then(|w| bits.get_mut(w)) {
            *word |= 1u64 << (index % 64);
        }
    }

    /// The unusable grains as (directory index, entry index) pairs.
    fn grain_entries(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.grains.iter().flat_map(|(&t, bits)| {
            bits.iter().enumerate().flat_map(move |(w, &word)| {
                (0..64u64)
                    .filter(move |b| word & (1u64 << b) != 0)
                    .map(move |b| (t, (w as u64).saturating_mul(64).saturating_add(b)))
            })
        })
    }

    /// Whether nothing is unusable.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty() && self.redundant_tables.is_empty() && self.grains.is_empty() && !self.redundant_dir
    }
}

/// The result of mapping an extent file.
#[derive(Debug)]
pub(crate) struct Scan {
    /// Everything recorded, with the conflicts noted.
    pub space: SpaceMap,
    /// Entries that must not be used.
    pub bad: BadEntries,
    /// Grains in use (sound ones).
    pub allocated: u64,
}

/// A conflict for an entry whose offset cannot even be computed (overflow).
fn past_end(start: u64, len: u64, kind: SpaceKind, file_len: u64) -> Conflict {
    Conflict::PastEnd {
        range: SpaceRange { start, len, kind },
        file_len,
    }
}

impl SparseExtent {
    /// Map the file's space on open: all of it (see [`SparseExtent::map_space`]) when the
    /// extent is opened for writing or its grain tables are small; otherwise only its
    /// structures (header, descriptor, directories and the tables they name, none of them
    /// read), and each grain is checked against them when it is looked up. Two grains on each
    /// other are then found only by `check`; reading them reads the extent's own bytes.
    pub(crate) fn map_on_open(&self, writable: bool) -> Result<()> {
        let tables = read_lock(&self.gd).iter().filter(|&&e| e != 0).count() as u64;
        if writable || tables.saturating_mul(self.gt_bytes()) <= EAGER_SURVEY_BYTES {
            let scan = self.map_space(&mut |_| {})?;
            self.install(scan);
        } else {
            let (space, bad, _) = self.map_tables(&mut |_| {});
            let _ = self.structures.set(space.clone());
            self.install(Scan {
                space,
                bad,
                allocated: 0,
            });
        }
        Ok(())
    }

    /// Map the file (see the module docs); `report` hears about every conflict, named.
    pub(crate) fn map_space(&self, report: &mut dyn FnMut(String)) -> Result<Scan> {
        let (mut space, mut bad, sound) = self.map_tables(report);
        let file_len = self.file_len();
        let mut note = |space: &mut SpaceMap, what: &str, c: Conflict| {
            report(format!("{what}: {c}"));
            space.note(c);
        };
        let grains = self.capacity.div_ceil(self.grain);
        let gb = self.grain_bytes();
        let mut allocated = 0u64;
        // Grains stored one after another are recorded as one range (one map operation for a
        // sequentially written table); a run that conflicts is recorded grain by grain.
        let mut run: Vec<(u64, u64)> = Vec::new();
        for (t, off) in sound {
            let table = self.read_entries(off)?;
            for (j, &e) in (0u64..).zip(&table) {
                let Some(g) = t
                    .checked_mul(self.gtes)
                    .and_then(|b| b.checked_add(j))
                    .filter(|&g| g < grains)
                else {
                    break;
                };
                let claimed = match self.decode(g, e) {
                    Ok(GrainLoc::Unallocated | GrainLoc::Zero) => continue,
                    Ok(GrainLoc::Data(o)) => {
                        let follows = run.last().is_some_and(|&(_, last)| last.checked_add(gb) == Some(o));
                        if !follows {
                            self.claim_grains(t, &run, &mut space, &mut bad, &mut note, &mut allocated);
                            run.clear();
                        }
                        run.push((j, o));
                        continue;
                    }
                    Ok(GrainLoc::Compressed(o)) => match self.compressed_len(&space, o) {
                        Ok(len) => space.claim(o, len, SpaceKind::Data),
                        Err(c) => Err(c),
                    },
                    Err(_) => Err(past_end(e.saturating_mul(SECTOR), gb, SpaceKind::Data, file_len)),
                };
                match claimed {
                    Ok(()) => allocated = allocated.saturating_add(1),
                    Err(c) => {
                        note(&mut space, &format!("grain {g} (grain table {t}, entry {j})"), c);
                        bad.mark_grain(t, j, self.gtes);
                    }
                }
            }
            self.claim_grains(t, &run, &mut space, &mut bad, &mut note, &mut allocated);
            run.clear();
        }
        Ok(Scan { space, bad, allocated })
    }

    /// Record the extent's structures: the reserved ranges, both grain directories and the
    /// tables they name (not read). Returns the map, the unusable entries found, and the
    /// sound primary tables (directory index, byte offset).
    fn map_tables(&self, report: &mut dyn FnMut(String)) -> (SpaceMap, BadEntries, Vec<(u64, u64)>) {
        let file_len = self.file_len();
        let mut space = SpaceMap::new(file_len);
        let mut bad = BadEntries::default();
        let mut note = |space: &mut SpaceMap, what: &str, c: Conflict| {
            report(format!("{what}: {c}"));
            space.note(c);
        };
        for &(start, len, kind) in &self.reserved {
            if let Err(c) = space.claim(start, len, kind) {
                note(&mut space, kind.name(), c);
            }
        }
        let gd = self.gd_entries();
        let gd_bytes = (gd.len() as u64).saturating_mul(self.entry_size);
        if let Err(c) = claim_rounded(&mut space, self.gd_offset, gd_bytes, SpaceKind::GrainDirectory) {
            note(&mut space, "grain directory", c);
        }
        let rgd = read_lock(&self.rgd).clone();
        if let Some((_, at)) = &rgd
            && let Err(c) = claim_rounded(&mut space, *at, gd_bytes, SpaceKind::GrainDirectory)
        {
            note(&mut space, "redundant grain directory", c);
            bad.redundant_dir = true;
        }
        let mut sound = Vec::new();
        let mut bad_tables = Vec::new();
        self.claim_tables(&mut space, &gd, &mut |i, off| match off {
            Ok(off) => sound.push((i, off)),
            Err(c) => bad_tables.push((i, c)),
        });
        for (i, c) in bad_tables {
            note(&mut space, &format!("grain table {i}"), c);
            bad.tables.insert(i);
        }
        if let Some((entries, _)) = rgd.as_ref().filter(|_| !bad.redundant_dir) {
            let mut bad_tables = Vec::new();
            self.claim_tables(&mut space, entries, &mut |i, off| {
                if let Err(c) = off {
                    bad_tables.push((i, c));
                }
            });
            for (i, c) in bad_tables {
                note(&mut space, &format!("redundant grain table {i}"), c);
                bad.redundant_tables.insert(i);
            }
        }
        (space, bad, sound)
    }

    /// Record the grain tables directory `entries` name, telling `done` each table's index and
    /// its offset, or why it cannot be recorded. Tables stored one after another (as QEMU and
    /// VMware lay them out) are recorded as one range; a run that conflicts, table by table.
    fn claim_tables(
        &self,
        space: &mut SpaceMap,
        entries: &[u64],
        done: &mut dyn FnMut(u64, std::result::Result<u64, Conflict>),
    ) {
        let file_len = self.file_len();
        let gt_bytes = self.gt_bytes();
        let span = gt_bytes.div_ceil(SECTOR).saturating_mul(SECTOR);
        let mut run: Vec<(u64, u64)> = Vec::new();
        let flush = |space: &mut SpaceMap,
                     run: &mut Vec<(u64, u64)>,
                     done: &mut dyn FnMut(u64, std::result::Result<u64, Conflict>)| {
            let Some(&(_, first)) = run.first() else {
                return;
            };
            let len = span.saturating_mul(run.len() as u64);
            if run.len() > 1 && space.claim(first, len, SpaceKind::GrainTable).is_ok() {
                run.iter().for_each(|&(i, off)| done(i, Ok(off)));
            } else {
                for &(i, off) in run.iter() {
                    done(
                        i,
                        claim_rounded(space, off, gt_bytes, SpaceKind::GrainTable).map(|()| off),
                    );
                }
            }
            run.clear();
        };
        for (i, &e) in (0u64..).zip(entries).filter(|(_, e)| **e != 0) {
            match self.gt_offset(e) {
                Ok(Some(off)) => {
                    if run.last().is_some_and(|&(_, last)| last.checked_add(span) != Some(off)) {
                        flush(space, &mut run, done);
                    }
                    run.push((i, off));
                }
                Ok(None) => {}
                Err(_) => {
                    flush(space, &mut run, done);
                    done(
                        i,
                        Err(past_end(
                            e.saturating_mul(SECTOR),
                            gt_bytes,
                            SpaceKind::GrainTable,
                            file_len,
                        )),
                    );
                }
            }
        }
        flush(space, &mut run, done);
    }

    /// Record uncompressed grains `(entry, offset)` of table `t` stored one after another: as
    /// one range, or grain by grain (noting each conflict) when the whole run cannot be.
    fn claim_grains(
        &self,
        t: u64,
        run: &[(u64, u64)],
        space: &mut SpaceMap,
        bad: &mut BadEntries,
        note: &mut dyn FnMut(&mut SpaceMap, &str, Conflict),
        allocated: &mut u64,
    ) {
        let gb = self.grain_bytes();
        let Some(&(_, first)) = run.first() else {
            return;
        };
        let count = run.len() as u64;
        if space.claim(first, gb.saturating_mul(count), SpaceKind::Data).is_ok() {
            *allocated = allocated.saturating_add(count);
            return;
        }
        for &(j, o) in run {
            match space.claim(o, gb, SpaceKind::Data) {
                Ok(()) => *allocated = allocated.saturating_add(1),
                Err(c) => {
                    let g = t.saturating_mul(self.gtes).saturating_add(j);
                    note(space, &format!("grain {g} (grain table {t}, entry {j})"), c);
                    bad.mark_grain(t, j, self.gtes);
                }
            }
        }
    }

    /// Bytes a compressed grain at `o` occupies (its marker and data, whole sectors), or why
    /// it cannot be recorded. The marker is read only when the start itself is free, so each
    /// read belongs to a distinct sector of the file.
    fn compressed_len(&self, space: &SpaceMap, o: u64) -> std::result::Result<u64, Conflict> {
        space.check(o, SECTOR, SpaceKind::Data)?;
        let Flavor::Kdmv { markers: true, .. } = self.flavor else {
            return Ok(SECTOR);
        };
        let mut marker = GrainMarker::new_zeroed();
        let bad_size = past_end(o, SECTOR, SpaceKind::Data, space.file_len());
        if self.storage.read_at(marker.as_mut_bytes(), o).is_err() {
            return Err(bad_size);
        }
        let size = u64::from(marker.size.get());
        let limit = self.grain_bytes().saturating_mul(2).saturating_add(4096);
        if size == 0 || size > limit {
            return Err(bad_size);
        }
        let marker_len = size_of::<GrainMarker>() as u64;
        Ok(size.saturating_add(marker_len).div_ceil(SECTOR).saturating_mul(SECTOR))
    }

    /// Take the results of [`SparseExtent::map_space`] as the extent's state.
    pub(crate) fn install(&self, scan: Scan) {
        self.any_bad.store(!scan.bad.is_empty(), Ordering::Release);
        *write_lock(&self.bad) = scan.bad;
        lock(&self.alloc).space = scan.space;
        write_lock(&self.cache).clear();
    }

    /// Refuse writing to an extent with conflicts (an [`ErrorKind::Corrupt`](disk_core::ErrorKind)
    /// error naming the structure, its offset and what it overlaps).
    pub(crate) fn refuse_writes_if_conflicted(&self) -> Result<()> {
        lock(&self.alloc).space.refuse_writes_if_conflicted()
    }

    /// Check the extent (named `name` in messages): every conflict, disagreeing redundant
    /// copies and leaked space; `repair` drops bad entries and frees a leaked tail. Returns the
    /// number of allocated grains.
    pub(crate) fn check(
        &self,
        name: &str,
        repair: Repair,
        writable: bool,
        corruptions: &mut Findings,
        leaks: &mut Findings,
        repaired: &mut Findings,
    ) -> Result<u64> {
        let _alloc = lock(&self.alloc);
        let mut found = Vec::new();
        let scan = self.map_space(&mut |m| found.push(m))?;
        drop(_alloc);
        let fixable = writable && self.supports_writes();
        let fix_all = fixable && repair == Repair::All && !scan.bad.is_empty();
        for m in found {
            if fix_all {
                repaired.push(format!("{name}: dropped {m}"));
            } else {
                corruptions.push(format!("{name}: {m}"));
            }
        }
        if fix_all {
            self.drop_bad_entries(&scan.bad)?;
        }
        let compressed = self.compressed();
        let mut allocated = scan.allocated;
        let mut scan = if fix_all {
            let again = self.map_space(&mut |m| corruptions.push(format!("{name}: {m}")))?;
            allocated = again.allocated;
            self.compare_redundant(name, &again.bad, corruptions)?;
            self.install_locked(again)
        } else {
            self.compare_redundant(name, &scan.bad, corruptions)?;
            scan.space
        };
        if !compressed && matches!(self.flavor, Flavor::Kdmv { .. }) {
            let from = self.data_start.min(scan.file_len());
            let gaps: Vec<(u64, u64)> = scan.gaps(from, scan.file_len()).collect();
            let tail = gaps
                .last()
                .filter(|&&(start, len)| start.checked_add(len) == Some(scan.file_len()) && start >= scan.used_end())
                .copied();
            for &(start, len) in &gaps {
                let freed = fixable && repair != Repair::None && Some((start, len)) == tail;
                if freed {
                    self.storage
                        .set_len(start)
                        .io_context("truncating leaked space", start)?;
                    self.storage.flush().io_context("flushing the truncation", start)?;
                    self.file_len.store(start, Ordering::Release);
                    scan.set_file_len(start);
                    repaired.push(format!("{name}: freed {len:#x} leaked bytes at the end ({start:#x})"));
                } else if Some((start, len)) == tail
                    || !self
                        .storage
                        .reads_as_zeros(start, len)
                        .io_context("reading unused space", start)?
                {
                    leaks.push(format!(
                        "{name}: {len:#x} bytes at {start:#x} are not used by any structure"
                    ));
                }
            }
        }
        lock(&self.alloc).space = scan;
        Ok(allocated)
    }

    /// [`SparseExtent::install`] returning the space map (the caller puts it back).
    fn install_locked(&self, scan: Scan) -> SpaceMap {
        self.any_bad.store(!scan.bad.is_empty(), Ordering::Release);
        *write_lock(&self.bad) = scan.bad;
        write_lock(&self.cache).clear();
        scan.space
    }

    /// Report directory and table copies that disagree (sound tables only).
    fn compare_redundant(&self, name: &str, bad: &BadEntries, corruptions: &mut Findings) -> Result<()> {
        let rgd = read_lock(&self.rgd).clone();
        let Some((rgd, _)) = rgd.filter(|_| !bad.redundant_dir) else {
            return Ok(());
        };
        let gd = self.gd_entries();
        for (i, (&a, &b)) in (0u64..).zip(gd.iter().zip(&rgd)) {
            if (a == 0) != (b == 0) {
                corruptions.push(format!(
                    "{name}: grain directory entry {i} ({a:#x}) and its redundant copy ({b:#x}) disagree"
                ));
            } else if a != 0 && !bad.tables.contains(&i) && !bad.redundant_tables.contains(&i) {
                let (Some(p), Some(r)) = (self.gt_offset(a)?, self.gt_offset(b)?) else {
                    continue;
                };
                if self.read_entries(p)? != self.read_entries(r)? {
                    corruptions.push(format!("{name}: grain table {i} differs from its redundant copy"));
                }
            }
        }
        Ok(())
    }

    /// Repair: drop every unusable entry, crash-safely. Entries are zeroed in both table copies
    /// (an unusable table's directory entries in both directories); an unusable redundant table
    /// is replaced by a copy of its primary table at the end of the file; an unusable redundant
    /// directory is switched off in the header. Each step is flushed before the next.
    fn drop_bad_entries(&self, bad: &BadEntries) -> Result<()> {
        let mut alloc = lock(&self.alloc);
        self.storage.flush().io_context("flushing before a repair", 0)?;
        let rgd = read_lock(&self.rgd).clone();
        let rgd = rgd.filter(|_| !bad.redundant_dir);
        let gd = self.gd_entries();
        let entry_at = |base: u64, index: u64| index.checked_mul(self.entry_size).and_then(|o| o.checked_add(base));
        let zero = vec![0u8; usize::try_from(self.entry_size).unwrap_or(4)];
        // Grains: zero the entry in each sound copy of its table.
        for (t, j) in bad.grain_entries() {
            let mut copies = Vec::new();
            if let Some(&e) = usize::try_from(t).ok().and_then(|i| gd.get(i)) {
                copies.extend(self.gt_offset(e).ok().flatten());
            }
            if let Some((r, _)) = &rgd
                && !bad.redundant_tables.contains(&t)
                && let Some(&e) = usize::try_from(t).ok().and_then(|i| r.get(i))
            {
                copies.extend(self.gt_offset(e).ok().flatten());
            }
            for base in copies {
                let at = entry_at(base, j).ok_or_else(|| Error::corrupt("grain table entry offset overflows"))?;
                self.storage
                    .write_at(&zero, at)
                    .io_context("dropping a grain table entry", at)?;
            }
        }
        // Tables: unlink them from both directories.
        for &t in &bad.tables {
            let mut dirs = vec![self.gd_offset];
            if let Some((_, r)) = &rgd {
                dirs.push(*r);
            }
            for base in dirs {
                let at = entry_at(base, t).ok_or_else(|| Error::corrupt("grain directory offset overflows"))?;
                self.storage
                    .write_at(&zero, at)
                    .io_context("dropping a grain directory entry", at)?;
            }
            let index = usize::try_from(t).unwrap_or(usize::MAX);
            if let Some(e) = write_lock(&self.gd).get_mut(index) {
                *e = 0;
            }
            if let Some((r, _)) = write_lock(&self.rgd).as_mut()
                && let Some(e) = r.get_mut(index)
            {
                *e = 0;
            }
        }
        self.storage.flush().io_context("flushing dropped entries", 0)?;
        // Redundant tables on top of something else: a fresh copy of the primary table.
        if let Some((_, rgd_at)) = &rgd {
            let span = self.gt_bytes().div_ceil(SECTOR).saturating_mul(SECTOR);
            for &t in bad.redundant_tables.difference(&bad.tables) {
                let Some(primary) = usize::try_from(t)
                    .ok()
                    .and_then(|i| gd.get(i))
                    .and_then(|&e| self.gt_offset(e).ok().flatten())
                else {
                    continue;
                };
                let mut table = self.read_raw(primary)?;
                // Entries dropped above are dropped in the copy too (already zero on disk).
                table.resize(usize::try_from(span).unwrap_or(0), 0);
                let at = self.write_new_table(&mut alloc.space, &table)?;
                self.storage.flush().io_context("flushing a grain table copy", at)?;
                let sector = u32::try_from(at / SECTOR)
                    .map_err(|_| Error::unsupported("the extent is too large for 32-bit grain directory entries"))?;
                let dir_at = entry_at(*rgd_at, t).ok_or_else(|| Error::corrupt("grain directory offset overflows"))?;
                self.storage
                    .write_at(&sector.to_le_bytes(), dir_at)
                    .io_context("linking a grain table copy", dir_at)?;
                if let Some((r, _)) = write_lock(&self.rgd).as_mut()
                    && let Some(e) = usize::try_from(t).ok().and_then(|i| r.get_mut(i))
                {
                    *e = u64::from(sector);
                }
            }
            self.storage.flush().io_context("flushing grain table copies", 0)?;
        }
        if bad.redundant_dir {
            // No usable redundant directory: the header stops naming one.
            let mut raw = [0u8; 512];
            self.storage.read_at(&mut raw, 0).io_context("reading the header", 0)?;
            let mut h = SparseExtentHeader::read_from_bytes(&raw)
                .map_err(|_| Error::corrupt("short header").in_structure("sparse extent header"))?;
            h.flags.set(h.flags.get() & !format::FLAG_REDUNDANT_GD);
            h.rgd_offset.set(0);
            self.storage
                .write_at(h.as_bytes(), 0)
                .io_context("writing the header", 0)?;
            self.storage.flush().io_context("flushing the header", 0)?;
            *write_lock(&self.rgd) = None;
        }
        write_lock(&self.cache).clear();
        Ok(())
    }

    /// The raw bytes of the grain table at `off`.
    fn read_raw(&self, off: u64) -> Result<Vec<u8>> {
        let mut raw = vec![0u8; usize::try_from(self.gt_bytes()).unwrap_or(0)];
        self.storage
            .read_at(&mut raw, off)
            .io_context("reading a grain table", off)?;
        Ok(raw)
    }
}

/// Claim `len` bytes at `start` rounded up to whole sectors (tables and directories own their
/// sector padding), or exactly `len` when the padding would pass the end of the file.
fn claim_rounded(space: &mut SpaceMap, start: u64, len: u64, kind: SpaceKind) -> std::result::Result<(), Conflict> {
    let rounded = len.div_ceil(SECTOR).saturating_mul(SECTOR);
    match space.claim(start, rounded, kind) {
        Err(Conflict::PastEnd { .. }) if rounded != len => space.claim(start, len, kind),
        other => other,
    }
}
