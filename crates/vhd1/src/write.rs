//! The write path of dynamic and differencing disks. Writers map a block ([`VhdLayer::map_write`]):
//! an allocated block is written in place; a free one is reserved past the used end under a short
//! lock (claimed per block), the I/O core writes the data, and the completion writes the new
//! block's sector bitmap and publishes its BAT entry in memory. BAT entries and changed bitmaps
//! reach the file at the next flush, after the data is durable (flush, metadata, flush).
//!
//! The file always ends in a valid footer: space for new blocks is reserved in chunks, each
//! with the footer written at its end before a block of it is handed out, and a flush moves the
//! footer back to the end of the last reserved block.

use crate::format::{BAT_FREE, DiskType, FOOTER_SIZE, SECTOR_SIZE, bitmap_get, bitmap_set};
use crate::header::aligned_block_start;
use crate::layer::{AllocState, MAX_PENDING, SparseState, VhdLayer};
use disk_core::mapping::{Completion, WriteRun};
use disk_core::sync::{lock, read_lock, write_lock};
use disk_core::{Error, IoResultExt, Result};
use std::sync::atomic::Ordering;
use zerocopy::IntoBytes;

/// Blocks reserved at once when the file grows (one footer write per chunk; the reserved space
/// is a hole until used, and a flush gives back what stayed unused).
const CHUNK_BLOCKS: u64 = 64;

impl VhdLayer {
    /// Where a write of up to `count` sectors from `lba` of a sparse disk goes: one block's
    /// worth at most.
    pub(crate) fn map_write<'a>(&'a self, sp: &'a SparseState, lba: u64, count: u64) -> Result<WriteRun<'a>> {
        let spb = sp.layout.block_sectors();
        let block = lba / spb;
        let within = lba % spb;
        let n = (spb - within).min(count);
        let index = u32::try_from(block).map_err(|_| Error::out_of_range("sector past the BAT"))?;
        let differencing = self.disk_type == DiskType::Differencing;
        let entry = self.bat_entry(sp, block)?;
        if entry != BAT_FREE {
            let start = self.check_block(sp, index, entry)?;
            let at = start + sp.layout.bitmap_size + within * SECTOR_SIZE;
            if !differencing {
                return Ok(WriteRun::overwrite(n, at));
            }
            let bitmap = self.current_bitmap(sp, index, start)?;
            if (within..within + n).all(|s| bitmap_get(&bitmap, s as usize)) {
                return Ok(WriteRun::overwrite(n, at));
            }
            // The sectors become the child's once the data is there.
            let completion = Completion::new(move |written| {
                if written {
                    self.set_bits(sp, index, start, within, n)?;
                }
                Ok(())
            });
            return Ok(WriteRun {
                sectors: n,
                target: disk_core::mapping::WriteTarget::Host { file: 0, offset: at },
                completion,
            });
        }
        let claim = sp.claims.claim(u64::from(index));
        if self.bat_entry(sp, block)? != BAT_FREE {
            // Another writer allocated the block meanwhile.
            drop(claim);
            return self.map_write(sp, lba, count);
        }
        let start = self.reserve_block(sp)?;
        let new_entry = (start / SECTOR_SIZE) as u32;
        let at = start + sp.layout.bitmap_size + within * SECTOR_SIZE;
        let completion = Completion::new(move |written| {
            let _claim = claim;
            if !written {
                // The reserved space stays unused (a hole inside the file).
                return Ok(());
            }
            // The new block is not referenced by the file's BAT until the next flush, so its
            // bitmap goes straight to the file.
            let mut bitmap = vec![if differencing { 0u8 } else { 0xff }; sp.layout.bitmap_size as usize];
            if differencing {
                for s in within..within + n {
                    bitmap_set(&mut bitmap, s as usize);
                }
            }
            self.storage
                .write_at(&bitmap, start)
                .io_context("writing a sector bitmap", start)?;
            let mut state = lock(&sp.alloc);
            write_lock(&sp.bat)[block as usize] = new_entry;
            state.bat_dirty.insert(index, new_entry);
            if state.bat_dirty.len() > MAX_PENDING {
                self.flush_locked(sp, &mut state)?;
            }
            Ok(())
        });
        Ok(WriteRun {
            sectors: n,
            target: disk_core::mapping::WriteTarget::Host { file: 0, offset: at },
            completion,
        })
    }

    /// BAT entry of `block`, or an error for a block past the BAT.
    fn bat_entry(&self, sp: &SparseState, block: u64) -> Result<u32> {
        read_lock(&sp.bat)
            .get(block as usize)
            .copied()
            .ok_or_else(|| Error::out_of_range(format!("block {block} lies past the BAT")))
    }

    /// Set the sector bitmap bits `within..within + n` of allocated block `index` (at `start`)
    /// in memory; they reach the file at the next flush.
    fn set_bits(&self, sp: &SparseState, index: u32, start: u64, within: u64, n: u64) -> Result<()> {
        let mut bitmap = self.current_bitmap(sp, index, start)?;
        let mut pending = write_lock(&sp.bitmaps);
        // Another writer may have changed the pending copy since it was read.
        if let Some(newer) = pending.get(&index) {
            bitmap.clone_from(newer);
        }
        for s in within..within + n {
            bitmap_set(&mut bitmap, s as usize);
        }
        pending.insert(index, bitmap);
        let too_many = pending.len() > MAX_PENDING;
        drop(pending);
        if too_many {
            self.flush_locked(sp, &mut lock(&sp.alloc))?;
        }
        Ok(())
    }

    /// Reserve the space of one new block: its byte offset. Grows the reserved chunk (writing
    /// the footer at its end first) when the block does not fit in it.
    fn reserve_block(&self, sp: &SparseState) -> Result<u64> {
        let mut state = lock(&sp.alloc);
        let footprint = sp.layout.block_footprint();
        // Data on a 4 KiB boundary; the padding is zeros `check` takes for what it is.
        let start = aligned_block_start(state.free, sp.layout.block_size, sp.layout.bitmap_size);
        u32::try_from(start / SECTOR_SIZE)
            .ok()
            .filter(|&e| e != BAT_FREE)
            .ok_or_else(|| Error::unsupported("the image file has grown past what a BAT entry can address"))?;
        let end = start + footprint;
        if end > state.chunk_end {
            let old_footer = state.chunk_end;
            state.free = start;
            // Reserving ahead is an optimisation: where the storage refuses the larger file
            // (a quota, a size limit), reserve this block alone.
            if self
                .grow_chunk(sp, &mut state, end + footprint * (CHUNK_BLOCKS - 1))
                .is_err()
            {
                self.grow_chunk(sp, &mut state, end)?;
            }
            // The footer was where the chunk ended: in the padding or in this block's data
            // unless the block's bitmap starts there (and covers it). The new footer is
            // written, so the old one goes.
            if old_footer != start {
                self.storage
                    .punch_hole(old_footer, FOOTER_SIZE)
                    .io_context("clearing the old footer", old_footer)?;
            }
        }
        state.free = end;
        Ok(start)
    }

    /// Make `[state.chunk_end, new_end)` reserved space that reads as zeros, with the footer at
    /// `new_end` and nothing after it.
    fn grow_chunk(&self, sp: &SparseState, state: &mut AllocState, new_end: u64) -> Result<()> {
        // A chunk never reaches past where every block of the disk could end.
        let limit = state.free + sp.layout.block_footprint() * u64::from(sp.layout.blocks);
        let new_end = new_end.min(limit).max(state.free + sp.layout.block_footprint());
        let file_len = sp.file_len.load(Ordering::Acquire);
        let from = state.chunk_end;
        // Space inside the current file may hold stale bytes (an old footer, an allocation
        // that failed): clear it before any of it is handed out.
        // Our own footer at `from` needs no clearing: the first new block's bitmap covers it.
        if from.saturating_add(FOOTER_SIZE) < file_len {
            let stale_end = new_end.min(file_len);
            if stale_end > from {
                self.storage
                    .punch_hole(from, stale_end - from)
                    .io_context("clearing space for new blocks", from)?;
            }
        }
        self.storage
            .write_at(self.footer.as_bytes(), new_end)
            .io_context("writing the footer", new_end)?;
        let new_len = new_end + FOOTER_SIZE;
        if file_len > new_len {
            self.storage
                .set_len(new_len)
                .io_context("trimming the file after the footer", new_len)?;
        }
        sp.file_len.store(new_len, Ordering::Release);
        state.chunk_end = new_end;
        Ok(())
    }

    /// Move the footer back to the end of the last reserved block, giving the rest of the
    /// chunk back (at flush and close).
    fn trim_chunk(&self, sp: &SparseState, state: &mut AllocState) -> Result<()> {
        if state.chunk_end <= state.free {
            return Ok(());
        }
        let at = state.free;
        self.storage
            .write_at(self.footer.as_bytes(), at)
            .io_context("writing the footer", at)?;
        self.storage
            .set_len(at + FOOTER_SIZE)
            .io_context("trimming the file after the footer", at)?;
        sp.file_len.store(at + FOOTER_SIZE, Ordering::Release);
        state.chunk_end = at;
        Ok(())
    }

    /// Make data durable, then write the pending BAT entries and bitmaps, then flush again.
    pub(crate) fn flush_locked(&self, sp: &SparseState, state: &mut AllocState) -> Result<()> {
        let bitmaps: Vec<(u32, Vec<u8>)> = read_lock(&sp.bitmaps).iter().map(|(k, v)| (*k, v.clone())).collect();
        if state.bat_dirty.is_empty() && bitmaps.is_empty() {
            self.trim_chunk(sp, state)?;
            return self.storage.flush().io_context("flushing the image", 0);
        }
        self.storage.flush().io_context("flushing data before metadata", 0)?;
        self.write_dirty_bat(sp, state)?;
        for (index, bitmap) in &bitmaps {
            let entry = read_lock(&sp.bat)[*index as usize];
            let start = u64::from(entry) * SECTOR_SIZE;
            self.storage
                .write_at(bitmap, start)
                .io_context("writing a sector bitmap", start)?;
        }
        self.trim_chunk(sp, state)?;
        self.storage.flush().io_context("flushing metadata", 0)?;
        state.bat_dirty.clear();
        let mut pending = write_lock(&sp.bitmaps);
        for (index, bitmap) in bitmaps {
            if pending.get(&index) == Some(&bitmap) {
                pending.remove(&index);
            }
        }
        Ok(())
    }

    /// Write the BAT entries changed in memory (`state.bat_dirty`) to the file: entries less
    /// than 4 KiB apart go in one write of the in-memory table (whose other entries equal the
    /// file's), so a flush after many scattered allocations costs a few writes, not one each.
    fn write_dirty_bat(&self, sp: &SparseState, state: &AllocState) -> Result<()> {
        const GAP: u32 = 1024;
        let bat = read_lock(&sp.bat);
        let mut spans = Vec::new();
        let mut dirty = state.bat_dirty.keys().copied().peekable();
        while let Some(first) = dirty.next() {
            let mut last = first;
            while let Some(&next) = dirty.peek() {
                if next - last > GAP {
                    break;
                }
                last = next;
                dirty.next();
            }
            let span = bat
                .get(first as usize..=last as usize)
                .ok_or_else(|| Error::out_of_range(format!("BAT entry {last} lies past the BAT")))?;
            let bytes: Vec<u8> = span.iter().flat_map(|e| e.to_be_bytes()).collect();
            spans.push((sp.layout.table_offset + u64::from(first) * 4, bytes));
        }
        drop(bat);
        disk_core::mover::write_scattered(&*self.storage, spans, "writing the BAT")
    }

    /// Write BAT entries to the file, runs of neighbours in one write.
    pub(crate) fn write_bat_entries(&self, sp: &SparseState, entries: &[(u32, u32)]) -> Result<()> {
        let pieces = entries
            .iter()
            .map(|&(index, entry)| {
                (
                    sp.layout.table_offset + u64::from(index) * 4,
                    entry.to_be_bytes().to_vec(),
                )
            })
            .collect();
        disk_core::mover::write_scattered(&*self.storage, pieces, "writing the BAT")
    }

    /// Make `count` sectors from `lba` read as zeros, releasing host space where it can: a
    /// whole block of a dynamic disk is freed, other stored sectors are zeroed in place, and a
    /// differencing disk stores zeros where its parent would show through.
    pub(crate) fn zero(&self, lba: u64, count: u64, below: &dyn disk_core::Disk) -> Result<()> {
        self.writable()?;
        let Some(sp) = &self.sparse else {
            let at = lba * SECTOR_SIZE;
            return self
                .storage
                .punch_hole(at, count * SECTOR_SIZE)
                .io_context("zeroing data", at);
        };
        let spb = sp.layout.block_sectors();
        let differencing = self.disk_type == DiskType::Differencing;
        let mut pos = lba;
        let end = lba + count;
        while pos < end {
            let block = pos / spb;
            let within = pos % spb;
            let n = (spb - within).min(end - pos);
            let index = u32::try_from(block).map_err(|_| Error::out_of_range("sector past the BAT"))?;
            let entry = self.bat_entry(sp, block)?;
            let whole_block = within == 0 && (n == spb || pos + n == self.virtual_size / SECTOR_SIZE);
            if entry == BAT_FREE {
                if differencing {
                    disk_core::mover::write_zero_data(self, pos, n, below)?;
                }
            } else {
                let start = self.check_block(sp, index, entry)?;
                let at = start + sp.layout.bitmap_size + within * SECTOR_SIZE;
                self.storage
                    .punch_hole(at, n * SECTOR_SIZE)
                    .io_context("zeroing data", at)?;
                if whole_block && !differencing {
                    // Its space is released now and its BAT entry cleared at the next flush
                    // (until then it reads as the zeros it now holds).
                    let mut state = lock(&sp.alloc);
                    write_lock(&sp.bat)[block as usize] = BAT_FREE;
                    state.bat_dirty.insert(index, BAT_FREE);
                } else if differencing {
                    self.set_bits(sp, index, start, within, n)?;
                }
            }
            pos += n;
        }
        Ok(())
    }
}
