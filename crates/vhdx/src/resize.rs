//! Changing the virtual size in place, crash-safely.
//!
//! - **Grow within the BAT region's room**: first (invisible at the old size) stale BAT entries
//!   past the old end are cleared, the tail of a partial last block past the old end is zeroed,
//!   and a fixed disk gets its new blocks; then one log entry records the new Virtual Disk Size.
//! - **Grow beyond the room**: the BAT moves. A new, larger 1 MiB-aligned BAT region is
//!   appended to the file holding a copy of the current entries (and a fixed disk's new
//!   blocks) and flushed; then region table 1 is rewritten to point at it and flushed, then
//!   region table 2 likewise; only then one log entry records the new size. The region table is
//!   not logged, but every state in between is consistent: the parser uses the first valid
//!   table, a torn copy is skipped, and either BAT holds the same entries for the old size, so
//!   until the size entry is durable the image opens at the old size with the old data. The old
//!   BAT region's space is then zeroed and left unused.
//! - **Shrink**: one log entry records the new size together with clearing the BAT entries past
//!   the new end (atomic); then the tail of the new last block is zeroed, the dropped blocks'
//!   space released, and, once the log is empty again, the file is cut after its last used
//!   structure ([`WriteState::used_end`], as `check` finds it).
//!
//! A crash therefore leaves the old size with the old data or the new size with the data of the
//! common prefix.

use crate::format::*;
use crate::geometry::Geometry;
use crate::layer::{MAX_BAT_BYTES, VhdxLayer, WriteState};
use crate::parse::checksum_with_zero_field;
use crate::write::{MAX_FILE_SIZE, Txn};
use disk_core::sync::lock;
use disk_core::{Error, IoResultExt, Result, SpaceKind};
use zerocopy::FromBytes;

impl VhdxLayer {
    /// The largest virtual size this image can be resized to: 64 TiB (the specification's
    /// limit) in whole sectors. Beyond the BAT region's room the BAT is moved.
    pub fn max_size(&self) -> u64 {
        let g = &self.geo;
        MAX_VIRTUAL_SIZE / g.sector_size * g.sector_size
    }

    /// Zero the bytes of payload block `block` from guest byte `from` (within the block) on.
    fn zero_block_tail(&self, block: u64, from: u64) -> Result<()> {
        let g = &self.geo;
        let e = self.bat.get(g.payload_index(block) as u64)?;
        if from < g.block_size && payload::STORED.contains(&bat_state(e)) {
            let at = bat_offset(e) + from;
            self.file
                .punch_hole(at, g.block_size - from)
                .io_context("zeroing past the end of the disk", at)?;
        }
        Ok(())
    }

    /// Change the virtual size to `new_size` (see the module docs). The handle is stale
    /// afterwards: further changes are refused until the image is reopened.
    pub(crate) fn resize_in_place(&self, new_size: u64) -> Result<()> {
        self.check_writable()?;
        let old = self.geo;
        if new_size == 0 || !crate::parse::aligned(new_size, old.sector_size) || new_size > self.max_size() {
            return Err(Error::invalid_argument(format!(
                "this VHDX can have a size of whole {}-byte sectors up to {} bytes, not {new_size}",
                old.sector_size,
                self.max_size()
            )));
        }
        if new_size == old.virtual_size {
            return Ok(());
        }
        let new = Geometry::new(
            self.meta.block_size,
            self.meta.logical_sector_size,
            new_size,
            old.has_parent,
        )?;
        let mut st = lock(&self.state);
        self.begin(&mut st)?;
        let size_patch = (self.meta.size_item_offset, new_size.to_le_bytes().to_vec());
        let relocate = new.total_entries * 8 > self.regions.bat.length;
        if relocate && new.total_entries * 8 > MAX_BAT_BYTES {
            return Err(Error::unsupported(format!(
                "a BAT of {} entries is too large",
                new.total_entries
            )));
        }
        if relocate {
            let last = old.data_blocks.saturating_sub(1);
            if old.block_bytes(last) < old.block_size && old.data_blocks > 0 {
                self.zero_block_tail(last, old.block_bytes(last))?;
            }
            self.guarded(|| self.move_bat(&mut st, &old, &new))?;
            let mut size = Txn::default();
            size.patches.push(size_patch);
            self.commit(&mut st, size)?;
        } else if new_size > old.virtual_size {
            // Bring the BAT entries the new size adds into memory, as the file has them (stale
            // entries from an earlier, larger size are cleared below).
            if new.total_entries > self.bat.len() {
                self.bat.set_len(new.total_entries)?;
            }
            let mut clean = Txn::default();
            let last = old.data_blocks.saturating_sub(1);
            if old.block_bytes(last) < old.block_size && old.data_blocks > 0 {
                self.zero_block_tail(last, old.block_bytes(last))?;
            }
            for block in old.data_blocks..new.data_blocks {
                let i = new.payload_index(block);
                let e = self.entry(&clean, i)?;
                let fixed = self.meta.leave_allocated && !old.has_parent;
                if fixed {
                    let off = self.allocate(&mut st, old.block_size, SpaceKind::Data)?;
                    clean.bat.insert(i, bat_entry(payload::FULLY_PRESENT, off));
                } else if e != 0 {
                    clean.bat.insert(i, 0);
                }
            }
            self.file.flush().io_context("flushing", 0)?;
            self.commit(&mut st, clean)?;
            let mut size = Txn::default();
            size.patches.push(size_patch);
            self.commit(&mut st, size)?;
        } else {
            let mut txn = Txn::default();
            txn.patches.push(size_patch);
            for block in new.data_blocks..old.data_blocks {
                let i = old.payload_index(block);
                let e = self.entry(&txn, i)?;
                if e != 0 {
                    txn.bat.insert(i, 0);
                    if payload::STORED.contains(&bat_state(e)) {
                        txn.release.push(bat_offset(e));
                    }
                }
            }
            let mut dropped_bitmaps = Vec::new();
            if old.has_parent {
                // Sector bitmap blocks of chunks wholly past the new end are dropped too (their
                // space is not reused: it is cut below when it lies at the end of the file).
                for chunk in new.bitmap_blocks..old.bitmap_blocks {
                    let i = old.bitmap_index(chunk);
                    let e = if i < old.total_entries as usize {
                        self.entry(&txn, i)?
                    } else {
                        0
                    };
                    if e != 0 {
                        txn.bat.insert(i, 0);
                        if bat_state(e) == bitmap::PRESENT {
                            dropped_bitmaps.push(bat_offset(e));
                        }
                    }
                }
            }
            self.commit(&mut st, txn)?;
            for off in dropped_bitmaps {
                st.space.release(off, MIB);
            }
            let last = new.data_blocks - 1;
            self.zero_block_tail(last, new.block_bytes(last))?;
            self.file.flush().io_context("flushing", 0)?;
        }
        if !st.header.log_guid.is_nil() {
            self.update_header(&mut st, |h| h.log_guid = disk_core::guid::MsGuid::NIL)?;
        }
        let end = st.used_end();
        drop(st);
        // The log is empty now, so no replay can ask for the old file length back.
        if new_size < old.virtual_size && self.file.len().io_context("reading the file size", 0)? > end {
            self.truncate_unused(end)?;
        }
        Ok(())
    }

    /// Move the BAT to a new region at the end of the file, large enough for `new` (see the
    /// module docs): copy, flush, then switch region table 1 and region table 2 in turn.
    fn move_bat(&self, st: &mut WriteState, old: &Geometry, new: &Geometry) -> Result<()> {
        let length = (new.total_entries * 8).div_ceil(MIB) * MIB;
        let length32 =
            u32::try_from(length).map_err(|_| Error::unsupported(format!("a BAT region of {length} bytes")))?;
        // A fixed disk's new blocks follow the region, allocated with it in one extension (from
        // the space map, never a reused payload block: the region must be one piece).
        let fixed = self.meta.leave_allocated && !old.has_parent;
        let new_blocks = if fixed { new.data_blocks - old.data_blocks } else { 0 };
        let blocks_len = new_blocks
            .checked_mul(old.block_size)
            .ok_or_else(|| Error::unsupported("file would exceed 2^64 bytes"))?;
        let offset = st.space.allocate(length, MIB, SpaceKind::Bat, MAX_FILE_SIZE)?;
        if blocks_len > 0 {
            st.space.allocate(blocks_len, MIB, SpaceKind::Data, MAX_FILE_SIZE)?;
        }
        let end = st.space.file_len();
        self.file
            .set_len(end)
            .io_context("extending the file for the BAT", offset)?;
        // The current entries, as the file has them (the log is applied).
        let mut bytes = vec![0u8; (old.total_entries * 8) as usize];
        let at = self.regions.bat.offset;
        self.file.read_at(&mut bytes, at).io_context("reading the BAT", at)?;
        bytes.resize((new.total_entries * 8) as usize, 0);
        for (k, block) in (old.data_blocks..old.data_blocks + new_blocks).enumerate() {
            let off = offset + length + k as u64 * old.block_size;
            let i = new.payload_index(block) * 8;
            bytes[i..i + 8].copy_from_slice(&bat_entry(payload::FULLY_PRESENT, off).to_le_bytes());
        }
        for (k, chunk) in bytes.chunks(MIB as usize).enumerate() {
            let at = offset + k as u64 * MIB;
            self.file.write_at(chunk, at).io_context("writing the new BAT", at)?;
        }
        self.file.flush().io_context("flushing the new BAT", offset)?;
        // The region table: from the copy the parser used, with the BAT entry changed.
        let src = if self.regions.valid[0] {
            REGION_TABLE1_OFFSET
        } else {
            REGION_TABLE2_OFFSET
        };
        let mut table = vec![0u8; REGION_TABLE_SIZE];
        self.file
            .read_at(&mut table, src)
            .io_context("reading the region table", src)?;
        let bad = || Error::corrupt("region table changed under an open image").in_structure("region table");
        let (hdr, rest) = RegionTableHeader::mut_from_prefix(&mut table).map_err(|_| bad())?;
        let count = hdr.entry_count.get().min(MAX_REGION_ENTRIES) as usize;
        let (entries, _) = <[RegionTableEntry]>::mut_from_prefix_with_elems(rest, count).map_err(|_| bad())?;
        let entry = entries.iter_mut().find(|e| e.guid == BAT_REGION).ok_or_else(bad)?;
        entry.file_offset.set(offset);
        entry.length.set(length32);
        table[4..8].fill(0);
        let crc = checksum_with_zero_field(&table, 4);
        table[4..8].copy_from_slice(&crc.to_le_bytes());
        for at in [REGION_TABLE1_OFFSET, REGION_TABLE2_OFFSET] {
            self.file
                .write_at(&table, at)
                .io_context("writing the region table", at)?;
            self.file.flush().io_context("flushing the region table", at)?;
        }
        // Both tables name the new BAT: the old region is never read again. Zero it, so that
        // its stale entries do not read as leaked data (a crash before this leaves them: a
        // harmless leak that `check` reports).
        let old_region = self.regions.bat;
        self.file
            .punch_hole(old_region.offset, old_region.length)
            .io_context("releasing the old BAT region", old_region.offset)?;
        st.space.release(old_region.offset, old_region.length);
        Ok(())
    }
}
