//! Changing the virtual size in place, crash-safely, within the room the BAT region has.
//!
//! - **Grow**: first (invisible at the old size) stale BAT entries past the old end are cleared,
//!   the tail of a partial last block past the old end is zeroed, and a fixed disk gets its new
//!   blocks; then one log entry records the new Virtual Disk Size.
//! - **Shrink**: one log entry records the new size together with clearing the BAT entries past
//!   the new end (atomic); then the tail of the new last block is zeroed and the dropped blocks'
//!   space released.
//!
//! A crash therefore leaves the old size with the old data or the new size with the data of the
//! common prefix. A BAT region too small for the new size is refused (see
//! [`VhdxLayer::max_size`]); moving the BAT is not done.

use crate::format::*;
use crate::geometry::Geometry;
use crate::layer::{VhdxLayer, lock, read_lock, write_lock};
use crate::write::Txn;
use disk_core::{Error, IoResultExt, Result};
use std::sync::atomic::Ordering;

impl VhdxLayer {
    /// The largest virtual size whose BAT fits in this image's BAT region (at most 64 TiB).
    pub fn max_size(&self) -> u64 {
        let g = &self.geo;
        let cap = self.regions.bat.length / 8;
        let cr = g.chunk_ratio;
        let blocks = if g.has_parent {
            cap / (cr + 1) * cr
        } else {
            // total = d + (d - 1) / cr <= cap
            let mut d = cap.saturating_mul(cr) / (cr + 1) + 1;
            while d > 0 && d + (d - 1) / cr > cap {
                d -= 1;
            }
            d
        };
        let bytes = blocks.saturating_mul(g.block_size).min(MAX_VIRTUAL_SIZE);
        bytes / g.sector_size * g.sector_size
    }

    /// Zero the bytes of payload block `block` from guest byte `from` (within the block) on.
    fn zero_block_tail(&self, block: u64, from: u64) -> Result<()> {
        let g = &self.geo;
        let e = read_lock(&self.bat)[g.payload_index(block)];
        if from < g.block_size && matches!(bat_state(e), payload::FULLY_PRESENT | payload::PARTIALLY_PRESENT) {
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
        if new_size > old.virtual_size {
            // Bring the BAT entries the new size adds into memory, as the file has them (stale
            // entries from an earlier, larger size are cleared below).
            {
                let mut bat = write_lock(&self.bat);
                let have = bat.len() as u64;
                if new.total_entries > have {
                    let mut raw = vec![0u8; ((new.total_entries - have) * 8) as usize];
                    let at = self.regions.bat.offset + have * 8;
                    self.file.read_at(&mut raw, at).io_context("reading the BAT", at)?;
                    bat.extend(
                        raw.chunks_exact(8)
                            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))),
                    );
                }
            }
            let mut clean = Txn::default();
            let last = old.data_blocks.saturating_sub(1);
            if old.block_bytes(last) < old.block_size && old.data_blocks > 0 {
                self.zero_block_tail(last, old.block_bytes(last))?;
            }
            for block in old.data_blocks..new.data_blocks {
                let i = new.payload_index(block);
                let e = self.entry(&clean, i);
                let fixed = self.meta.leave_allocated && !old.has_parent;
                if fixed {
                    let off = self.allocate(&mut st, old.block_size)?;
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
                let e = self.entry(&txn, i);
                if e != 0 {
                    txn.bat.insert(i, 0);
                    if matches!(bat_state(e), payload::FULLY_PRESENT | payload::PARTIALLY_PRESENT) {
                        txn.release.push(bat_offset(e));
                    }
                }
            }
            self.commit(&mut st, txn)?;
            let last = new.data_blocks - 1;
            self.zero_block_tail(last, new.block_bytes(last))?;
            self.file.flush().io_context("flushing", 0)?;
        }
        if !st.header.log_guid.is_nil() {
            self.update_header(&mut st, |h| h.log_guid = disk_core::guid::MsGuid::NIL)?;
        }
        self.stale.store(true, Ordering::Release);
        Ok(())
    }
}
