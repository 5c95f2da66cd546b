//! The write path of dynamic and differencing disks: allocating blocks at the end of the file,
//! setting sector bitmap bits, and writing the metadata that makes new data visible only after
//! the data is durable.

use crate::format::{BAT_FREE, DiskType, FOOTER_SIZE, SECTOR_SIZE, bitmap_set};
use crate::layer::{AllocState, MAX_PENDING, SparseState, VhdLayer, lock, read_lock, write_lock};
use disk_core::{Error, IoResultExt, Result};
use std::sync::atomic::Ordering;
use zerocopy::IntoBytes;

impl VhdLayer {
    /// Write `count` sectors from `lba`: `data` (or zeros when `None`, which also releases host
    /// space where it can).
    pub(crate) fn write_sparse(&self, sp: &SparseState, lba: u64, count: u64, data: Option<&[u8]>) -> Result<()> {
        let mut state = lock(&sp.alloc);
        let spb = sp.layout.block_sectors();
        let bitmap_size = sp.layout.bitmap_size;
        let differencing = self.disk_type == DiskType::Differencing;
        // The real length (a failed earlier allocation may have left bytes past what we
        // track), read once, on the first allocation.
        let mut real_len: Option<u64> = None;
        let mut next_free = state.free;
        let mut new_entries: Vec<(u32, u32)> = Vec::new();
        let mut pos = lba;
        let end = lba + count;
        while pos < end {
            let block = pos / spb;
            let within = pos % spb;
            let n = (spb - within).min(end - pos);
            let piece = data.map(|d| {
                let from = ((pos - lba) * SECTOR_SIZE) as usize;
                &d[from..from + (n * SECTOR_SIZE) as usize]
            });
            let index = u32::try_from(block).map_err(|_| Error::out_of_range("sector past the BAT"))?;
            let entry = *read_lock(&sp.bat)
                .get(block as usize)
                .ok_or_else(|| Error::out_of_range(format!("block {block} lies past the BAT")))?;
            let whole_block = within == 0 && (n == spb || pos + n == self.virtual_size / SECTOR_SIZE);
            if entry != BAT_FREE && piece.is_none() && whole_block && !differencing {
                // Discarding a whole block of a dynamic disk frees it: its space is released in
                // the file now and its BAT entry is cleared at the next flush (until then it
                // reads as the zeros it now holds).
                let start = self.check_block(sp, index, entry)?;
                self.put(start + bitmap_size, n * SECTOR_SIZE, None)?;
                write_lock(&sp.bat)[block as usize] = BAT_FREE;
                state.bat_dirty.insert(index, BAT_FREE);
            } else if entry != BAT_FREE {
                let start = self.check_block(sp, index, entry)?;
                let at = start + bitmap_size + within * SECTOR_SIZE;
                self.put(at, n * SECTOR_SIZE, piece)?;
                if differencing {
                    let mut bitmap = self.current_bitmap(sp, index, start)?;
                    let before = bitmap.clone();
                    for s in within..within + n {
                        bitmap_set(&mut bitmap, s as usize);
                    }
                    if bitmap != before {
                        write_lock(&sp.bitmaps).insert(index, bitmap);
                    }
                }
            } else {
                let zero = piece.is_none_or(|p| p.iter().all(|&b| b == 0));
                if !differencing && zero {
                    // An unallocated block of a dynamic disk already reads as zeros.
                    pos += n;
                    continue;
                }
                let start = next_free;
                let new_entry = u32::try_from(start / SECTOR_SIZE)
                    .ok()
                    .filter(|&e| e != BAT_FREE)
                    .ok_or_else(|| Error::unsupported("the image file has grown past what a BAT entry can address"))?;
                next_free = start + sp.layout.block_footprint();
                let file_len = match real_len {
                    Some(l) => l,
                    None => *real_len.insert(self.storage.len().io_context("reading the file size", start)?),
                };
                // Space reused inside the current file may hold stale bytes (an old footer, an
                // allocation that failed): clear what the bitmap write below does not cover.
                let data_start = start + bitmap_size;
                if data_start < file_len {
                    let stale_end = next_free.min(file_len);
                    self.storage
                        .punch_hole(data_start, stale_end - data_start)
                        .io_context("clearing space for a new block", data_start)?;
                }
                // The new block is not referenced by the file's BAT until the next flush, so its
                // bitmap goes straight to the file.
                let mut bitmap = vec![if differencing { 0u8 } else { 0xff }; bitmap_size as usize];
                if differencing {
                    for s in within..within + n {
                        bitmap_set(&mut bitmap, s as usize);
                    }
                }
                self.storage
                    .write_at(&bitmap, start)
                    .io_context("writing a sector bitmap", start)?;
                if let Some(p) = piece.filter(|_| !zero) {
                    let at = start + bitmap_size + within * SECTOR_SIZE;
                    self.storage.write_at(p, at).io_context("writing data", at)?;
                }
                new_entries.push((index, new_entry));
            }
            pos += n;
        }
        if !new_entries.is_empty() {
            // The footer moves to the new end. Readers use the copy at offset 0, so this write
            // needs no ordering.
            let footer_at = next_free;
            self.storage
                .write_at(self.footer.as_bytes(), footer_at)
                .io_context("writing the footer", footer_at)?;
            let new_len = footer_at + FOOTER_SIZE;
            if real_len.is_some_and(|l| l > new_len) {
                self.storage
                    .set_len(new_len)
                    .io_context("trimming the file after the footer", new_len)?;
            }
            sp.file_len.store(new_len, Ordering::Release);
            state.free = next_free;
            let mut bat = write_lock(&sp.bat);
            for &(index, entry) in &new_entries {
                bat[index as usize] = entry;
                state.bat_dirty.insert(index, entry);
            }
        }
        if state.bat_dirty.len() + read_lock(&sp.bitmaps).len() > MAX_PENDING {
            self.flush_locked(sp, &mut state)?;
        }
        Ok(())
    }

    /// Make data durable, then write the pending BAT entries and bitmaps, then flush again.
    pub(crate) fn flush_locked(&self, sp: &SparseState, state: &mut AllocState) -> Result<()> {
        let bitmaps: Vec<(u32, Vec<u8>)> = read_lock(&sp.bitmaps).iter().map(|(k, v)| (*k, v.clone())).collect();
        if state.bat_dirty.is_empty() && bitmaps.is_empty() {
            return self.storage.flush().io_context("flushing the image", 0);
        }
        self.storage.flush().io_context("flushing data before metadata", 0)?;
        let entries: Vec<(u32, u32)> = state.bat_dirty.iter().map(|(k, v)| (*k, *v)).collect();
        self.write_bat_entries(sp, &entries)?;
        for (index, bitmap) in &bitmaps {
            let entry = read_lock(&sp.bat)[*index as usize];
            let start = u64::from(entry) * SECTOR_SIZE;
            self.storage
                .write_at(bitmap, start)
                .io_context("writing a sector bitmap", start)?;
        }
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

    /// Write `len` bytes at `at`: `data`, or zeros (releasing host space) when `None`.
    pub(crate) fn put(&self, at: u64, len: u64, data: Option<&[u8]>) -> Result<()> {
        match data {
            Some(d) => self.storage.write_at(d, at).io_context("writing data", at),
            None => self.storage.punch_hole(at, len).io_context("zeroing data", at),
        }
    }

    /// Write BAT entries to the file, runs of neighbours in one write.
    pub(crate) fn write_bat_entries(&self, sp: &SparseState, entries: &[(u32, u32)]) -> Result<()> {
        let mut i = 0;
        while i < entries.len() {
            let mut j = i + 1;
            while j < entries.len() && entries[j].0 == entries[j - 1].0 + 1 {
                j += 1;
            }
            let bytes: Vec<u8> = entries[i..j].iter().flat_map(|(_, e)| e.to_be_bytes()).collect();
            let at = sp.layout.table_offset + u64::from(entries[i].0) * 4;
            self.storage.write_at(&bytes, at).io_context("writing the BAT", at)?;
            i = j;
        }
        Ok(())
    }

    pub(crate) fn zero(&self, lba: u64, count: u64) -> Result<()> {
        self.writable()?;
        match &self.sparse {
            None => {
                let at = lba * SECTOR_SIZE;
                self.storage
                    .punch_hole(at, count * SECTOR_SIZE)
                    .io_context("zeroing data", at)
            }
            Some(sp) => self.write_sparse(sp, lba, count, None),
        }
    }
}
