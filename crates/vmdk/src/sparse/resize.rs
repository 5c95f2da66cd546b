//! Changing the capacity of a hosted sparse (KDMV) extent in place, crash-safely.
//!
//! The header (one sector: capacity, grain directory offsets) is the switch. Growing first
//! cleans what the old capacity did not show (grain table entries left by an earlier shrink,
//! the tail of a partial last grain), allocates zeroed grain tables for the new space at the end
//! of the file (preallocated, as QEMU and VMware lay sparse extents out: QEMU writes only into
//! existing tables), and links them from the directories' padding or, when the directories have
//! no room, from copies of both with room at the end of the file; each step is flushed before
//! the header is written. Shrinking only writes the header: grains past the
//! end stay in the file, unreferenced by the smaller disk, and are cleaned if it grows again.

// Size arithmetic of a resize: the extent was opened writable (its space map has no conflicts),
// capacities are at most 2 TiB (`VmdkLayer::size_limit`, checked by the caller) and directories
// at most 64 MiB, so every offset and count here is far below 2^64.
#![allow(clippy::arithmetic_side_effects)]

use super::{Flavor, GrainLoc, SparseExtent};
use crate::format::{SECTOR, SparseExtentHeader};
use disk_core::sync::{lock, read_lock, write_lock};
use disk_core::{Error, IoResultExt, Result};
use zerocopy::{FromBytes, IntoBytes};

impl SparseExtent {
    fn flush_storage(&self, what: &str) -> Result<()> {
        self.storage.flush().io_context(what, 0)
    }

    fn write_u32s(&self, at: u64, values: &[u32], what: &str) -> Result<()> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.storage.write_at(&bytes, at).io_context(what, at)
    }

    /// Set the capacity to `new_capacity` sectors (see the module docs).
    pub(crate) fn resize(&self, new_capacity: u64) -> Result<()> {
        if !matches!(self.flavor, Flavor::Kdmv { compressed: false, .. }) {
            return Err(Error::unsupported(
                "only hosted sparse extents can be resized (not streamOptimized, COWD or seSparse)",
            ));
        }
        if new_capacity == 0 {
            return Err(Error::invalid_argument("an extent must have at least one sector"));
        }
        let _alloc = lock(&self.alloc);
        let mut raw = [0u8; 512];
        self.storage
            .read_at(&mut raw, 0)
            .io_context("reading the sparse extent header", 0)?;
        let mut header = SparseExtentHeader::read_from_bytes(&raw)
            .map_err(|_| Error::corrupt("short header").in_structure("sparse extent header"))?;
        let old_dirs = [header.gd_offset.get(), header.rgd_offset.get()];
        if new_capacity > self.capacity {
            self.grow_prepare(new_capacity, &mut header)?;
        }
        header.capacity.set(new_capacity);
        self.storage
            .write_at(header.as_bytes(), 0)
            .io_context("writing the sparse extent header", 0)?;
        self.flush_storage("flushing the sparse extent header")?;
        if new_capacity < self.capacity {
            self.zero_dropped_grains(new_capacity)?;
        }
        // Directories the header no longer names are zeroed, so that neither their stale
        // entries nor their space (zeroed space is not a leak) remain.
        let old_bytes = self.capacity.div_ceil(self.grain).div_ceil(self.gtes).saturating_mul(4);
        let new_dirs = [header.gd_offset.get(), header.rgd_offset.get()];
        for old in old_dirs.into_iter().filter(|&d| d != 0 && !new_dirs.contains(&d)) {
            let at = old.saturating_mul(SECTOR);
            self.storage
                .punch_hole(at, old_bytes.div_ceil(SECTOR) * SECTOR)
                .io_context("zeroing an old grain directory", at)?;
        }
        Ok(())
    }

    /// After a shrink (the header already says `new_capacity`): zero the grains past the new
    /// end, which the caller chose to drop, so their data does not linger in the file and their
    /// space does not count as leaked. Walks the tables present (a missing table is skipped at
    /// once), so the work is bounded by the metadata in the file.
    fn zero_dropped_grains(&self, new_capacity: u64) -> Result<()> {
        let first = new_capacity / self.grain;
        let keep_first = (new_capacity % self.grain) * SECTOR;
        let end = self.capacity.div_ceil(self.grain);
        let mut g = first;
        while g < end {
            let (loc, span) = self.lookup_span(g)?;
            if let GrainLoc::Data(at) = loc {
                let keep = if g == first { keep_first } else { 0 };
                let from = at + keep;
                self.storage
                    .punch_hole(from, self.grain_bytes() - keep)
                    .io_context("zeroing a dropped grain", from)?;
            }
            g += span.max(1);
        }
        self.flush_storage("flushing the dropped grains")
    }

    /// Everything before the header switch of a grow: clean, then make directory room.
    fn grow_prepare(&self, new_capacity: u64, header: &mut SparseExtentHeader) -> Result<()> {
        let old_grains = self.capacity.div_ceil(self.grain);
        let new_grains = new_capacity.div_ceil(self.grain);
        let old_tables = old_grains.div_ceil(self.gtes);
        let new_tables = new_grains.div_ceil(self.gtes);
        let gd = self.gd_entries();
        let rgd = read_lock(&self.rgd).clone();
        let mut file_len = self.storage.len().io_context("reading the file size", 0)?;

        // The tail of a partial last grain.
        let within = self.capacity % self.grain;
        if within != 0
            && let GrainLoc::Data(o) = self.lookup(self.capacity / self.grain)?
        {
            let from = o + within * SECTOR;
            let to = (o + self.grain_bytes()).min(file_len);
            if to > from {
                self.storage
                    .punch_hole(from, to - from)
                    .io_context("zeroing the tail of the last grain", from)?;
            }
        }
        // Entries of the last old grain table past the old grains.
        let first_hidden = old_grains % self.gtes;
        if first_hidden != 0 {
            let t = (old_tables - 1) as usize;
            let count = (self.gtes - first_hidden) as usize;
            let zeros = vec![0u32; count];
            for table in [gd.get(t).copied(), rgd.as_ref().and_then(|(r, _)| r.get(t).copied())]
                .into_iter()
                .flatten()
            {
                // Validated against the file: a damaged entry is an error, never a far write.
                let Some(base) = self.gt_offset(table)? else {
                    continue;
                };
                let at = base + first_hidden * 4;
                self.write_u32s(at, &zeros, "clearing grain table entries")?;
            }
            write_lock(&self.cache).clear();
        }
        // Grain tables for the new space, preallocated as at creation (QEMU writes only into
        // existing tables): zeroed space at the end of the file, primary then redundant.
        let added = new_tables - old_tables;
        let gt_span = self.gt_bytes().div_ceil(SECTOR) * SECTOR;
        let mut tables_at = |count: u64| -> Result<Vec<u32>> {
            let base = file_len.div_ceil(SECTOR) * SECTOR;
            let end = base + count * gt_span;
            let sectors = (0..count)
                .map(|i| u32::try_from((base + i * gt_span) / SECTOR))
                .collect::<std::result::Result<Vec<u32>, _>>()
                .map_err(|_| Error::unsupported("the extent is too large for 32-bit grain directory entries"))?;
            file_len = end;
            Ok(sectors)
        };
        let new_gts = tables_at(added)?;
        let new_rgts = if rgd.is_some() { Some(tables_at(added)?) } else { None };
        if added > 0 {
            self.storage
                .set_len(file_len)
                .io_context("allocating grain tables", file_len)?;
        }
        let room = |count: u64| (count * 4).div_ceil(SECTOR) * SECTOR / 4;
        let in_place = room(old_tables);
        if new_tables <= in_place {
            // Directory entries in the directories' sector padding (invisible until the switch).
            self.write_u32s(
                self.gd_offset + old_tables * 4,
                &new_gts,
                "writing grain directory entries",
            )?;
            if let (Some((_, r)), Some(t)) = (&rgd, &new_rgts) {
                self.write_u32s(r + old_tables * 4, t, "writing grain directory entries")?;
            }
        }
        self.flush_storage("flushing the new grain tables")?;

        if new_tables > in_place {
            // New directories with room, at the end of the file.
            let bytes = room(new_tables) * 4;
            let mut place = |entries: &[u64], added: &[u32]| -> Result<u64> {
                let at = file_len.div_ceil(SECTOR) * SECTOR;
                let mut values: Vec<u32> = entries
                    .iter()
                    .take(old_tables as usize)
                    .map(|&e| u32::try_from(e).unwrap_or(0))
                    .collect();
                values.extend_from_slice(added);
                values.resize((bytes / 4) as usize, 0);
                self.write_u32s(at, &values, "writing a grain directory")?;
                file_len = at + bytes;
                Ok(at)
            };
            let new_gd = place(&gd, &new_gts)?;
            let new_rgd = match (&rgd, &new_rgts) {
                (Some((entries, _)), Some(t)) => Some(place(entries, t)?),
                _ => None,
            };
            self.flush_storage("flushing the new grain directories")?;
            header.gd_offset.set(new_gd / SECTOR);
            if let Some(r) = new_rgd {
                header.rgd_offset.set(r / SECTOR);
            }
        }
        Ok(())
    }
}
