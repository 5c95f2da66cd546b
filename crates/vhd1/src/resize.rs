//! Changing the virtual size of a VHD in place, crash-safely.
//!
//! - **Fixed**: the footer moves. Growing writes the new footer past the new end first, then
//!   clears the old one (now inside the guest's new space); shrinking writes the new footer
//!   inside the old data, then cuts the file after it.
//! - **Dynamic and differencing**: the part of the grown disk that the old size did not show is
//!   cleaned first (stale BAT entries freed, the tail of a partial last block zeroed), the BAT
//!   gets room for the new blocks in place (data blocks in the way are copied to the end of the
//!   file, each copy flushed before its BAT entry points at it; when parent locators are in the
//!   way the BAT is copied to the end of the file instead), then the header's first sector (one atomic sector write: table offset,
//!   entry count and checksum) and last the footers, the copy at offset 0 (the one readers use)
//!   after the one at the end. Every step is flushed before the next, so a crash leaves either
//!   the old size or the new one, with the old data on the common prefix.

use crate::footer;
use crate::format::{BAT_FREE, DiskType, FOOTER_SIZE, Footer, MAX_DISK_SIZE, SECTOR_SIZE, bitmap_get};
use crate::header;
use crate::layer::{SparseState, VhdLayer, block_used_bytes, first_free_offset};
use disk_core::geometry::Chs;
use disk_core::sync::{lock, read_lock, write_lock};
use disk_core::{Error, IoResultExt, Result};
use std::sync::atomic::Ordering;
use zerocopy::IntoBytes;

/// Largest BAT a resize writes (16 Mi entries: 2040 GiB in blocks of 128 KiB or more).
const MAX_BAT_BYTES: u64 = 64 << 20;

impl VhdLayer {
    /// The footer recording `new_size`: exact size (current and original: readers differ in which
    /// one they take) and the geometry for it. A footer whose size
    /// readers take from its geometry (creators `vpc `/`qemu`) gets our creator, so that the exact
    /// size is what every reader sees.
    fn resized_footer(&self, new_size: u64) -> Footer {
        let mut f = self.footer;
        if footer::uses_chs(&f) {
            f.creator_application = footer::CREATOR_APP;
            f.creator_version.set(footer::CREATOR_VERSION);
        }
        f.current_size.set(new_size);
        // libvhdi takes the disk size from "Original Size": keep both equal.
        f.original_size.set(new_size);
        let chs = Chs::for_sectors(new_size / SECTOR_SIZE);
        f.cylinders.set(chs.cylinders);
        f.heads = chs.heads;
        f.sectors_per_track = chs.sectors_per_track;
        footer::seal(&mut f);
        f
    }

    fn flush_storage(&self, what: &str) -> Result<()> {
        self.storage.flush().io_context(what, 0)
    }

    /// Resize (see the module docs). `new_size` is a whole number of sectors.
    pub(crate) fn resize_in_place(&self, new_size: u64) -> Result<()> {
        self.writable()?;
        if new_size == 0 || !new_size.is_multiple_of(SECTOR_SIZE) || new_size > MAX_DISK_SIZE {
            return Err(Error::invalid_argument(format!(
                "a VHD cannot be {new_size} bytes: the size must be a positive number of 512-byte sectors up to 2040 GiB"
            )));
        }
        if new_size == self.virtual_size {
            return Ok(());
        }
        let new_footer = self.resized_footer(new_size);
        match &self.sparse {
            None => self.resize_fixed(new_size, &new_footer),
            Some(sp) => self.resize_sparse(sp, new_size, &new_footer),
        }
    }

    fn resize_fixed(&self, new_size: u64, new_footer: &Footer) -> Result<()> {
        let old = self.virtual_size;
        let file_len = self.storage.len().io_context("reading the file size", 0)?;
        self.storage
            .write_at(new_footer.as_bytes(), new_size)
            .io_context("writing the footer", new_size)?;
        self.flush_storage("flushing the new footer")?;
        if new_size > old {
            // The old footer now lies inside the new space: clear it.
            let end = file_len.min(new_size);
            if end > old {
                self.storage
                    .punch_hole(old, end - old)
                    .io_context("clearing the old footer", old)?;
            }
        } else {
            self.storage
                .set_len(new_size + FOOTER_SIZE)
                .io_context("cutting the file after the new footer", new_size)?;
        }
        self.flush_storage("flushing the resized image")
    }

    fn resize_sparse(&self, sp: &SparseState, new_size: u64, new_footer: &Footer) -> Result<()> {
        let mut state = lock(&sp.alloc);
        // Nothing may wait in memory: the BAT is rewritten below.
        self.flush_locked(sp, &mut state)?;
        let layout = &sp.layout;
        let block_size = u64::from(layout.block_size);
        let old_size = self.virtual_size;
        let needed = new_size.div_ceil(block_size);
        let needed_u32 = u32::try_from(needed)
            .ok()
            .filter(|&n| u64::from(n) * 4 <= MAX_BAT_BYTES)
            .ok_or_else(|| {
                Error::unsupported(format!(
                    "{new_size} bytes in blocks of {block_size} bytes needs a BAT of more than {} MiB",
                    MAX_BAT_BYTES >> 20
                ))
            })?;
        let file_len = self.storage.len().io_context("reading the file size", 0)?;
        let mut bat = read_lock(&sp.bat).clone();

        if new_size > old_size {
            self.clean_new_space(sp, &mut bat, old_size, new_size)?;
        }
        let old_entries = layout.header.max_table_entries.get();
        let mut free = state.free;
        let mut hdr = layout.header;
        if needed_u32 > old_entries {
            let padded_len = (needed * 4).div_ceil(SECTOR_SIZE) * SECTOR_SIZE;
            let mut in_place = self.bat_room(sp, &bat) >= needed;
            if !in_place && self.move_blocks_out(sp, &mut bat, layout.table_offset + padded_len, &mut free)? {
                in_place = self.bat_room(sp, &bat) >= needed;
            }
            // Entries the file's BAT holds past the ones we read: all must read as free.
            let full: Vec<u32> = {
                let mut v = bat.clone();
                v.resize(needed as usize, BAT_FREE);
                v
            };
            let table_offset = if in_place { layout.table_offset } else { free };
            let mut bytes: Vec<u8> = full.iter().flat_map(|e| e.to_be_bytes()).collect();
            bytes.resize(padded_len as usize, 0xff);
            let bat_end = table_offset + padded_len;
            if bat_end > free {
                // Keep a valid (old) footer at the end of the file, past the BAT's new space.
                self.storage
                    .write_at(self.footer.as_bytes(), bat_end)
                    .io_context("writing the footer", bat_end)?;
                self.flush_storage("flushing the footer")?;
                free = bat_end;
            }
            let from = if in_place { bat.len() * 4 } else { 0 };
            let at = table_offset + from as u64;
            self.storage
                .write_at(&bytes[from..], at)
                .io_context("writing the BAT", at)?;
            self.flush_storage("flushing the BAT")?;
            hdr.table_offset.set(table_offset);
            hdr.max_table_entries.set(needed_u32);
            header::seal(&mut hdr);
            // Only the first sector changes (offsets, count, checksum): one atomic write.
            let at = layout.header_offset;
            self.storage
                .write_at(&hdr.as_bytes()[..SECTOR_SIZE as usize], at)
                .io_context("writing the dynamic header", at)?;
            self.flush_storage("flushing the dynamic header")?;
        }
        // The footers: the one at the end, then the copy at offset 0 that readers use.
        self.storage
            .write_at(new_footer.as_bytes(), free)
            .io_context("writing the footer", free)?;
        self.flush_storage("flushing the footer")?;
        self.storage
            .write_at(new_footer.as_bytes(), 0)
            .io_context("writing the footer copy", 0)?;
        self.flush_storage("flushing the footer copy")?;

        if new_size < old_size {
            // Blocks past the new end are no longer referenced; trailing space is released.
            let keep = needed as usize;
            let dropped: Vec<(u32, u32)> = (keep..bat.len())
                .filter(|&i| bat[i] != BAT_FREE)
                .map(|i| (i as u32, BAT_FREE))
                .collect();
            if !dropped.is_empty() {
                self.write_bat_entries(sp, &dropped)?;
                self.flush_storage("flushing the BAT")?;
            }
            bat.truncate(keep);
            let mut shrunk = layout.clone();
            shrunk.blocks = needed_u32;
            let new_free = first_free_offset(&shrunk, &bat, &self.locators, new_size, file_len);
            if new_free < free {
                self.storage
                    .write_at(new_footer.as_bytes(), new_free)
                    .io_context("writing the footer", new_free)?;
                self.flush_storage("flushing the footer")?;
                self.storage
                    .set_len(new_free + FOOTER_SIZE)
                    .io_context("cutting the file after the footer", new_free)?;
                self.flush_storage("flushing the resized image")?;
                free = new_free;
            }
        }
        state.free = free;
        state.chunk_end = free;
        sp.file_len.store(free + FOOTER_SIZE, Ordering::Release);
        *write_lock(&sp.bat) = bat;
        Ok(())
    }

    /// Before growing: make what the old size did not show read as it should once shown. BAT
    /// entries past the old end (left by an earlier shrink) are freed, and the tail of a partly
    /// used last block is zeroed (differencing: its bitmap bits cleared too).
    fn clean_new_space(&self, sp: &SparseState, bat: &mut [u32], old_size: u64, new_size: u64) -> Result<()> {
        let layout = &sp.layout;
        let block_size = u64::from(layout.block_size);
        let first_hidden = old_size.div_ceil(block_size) as usize;
        let stale: Vec<(u32, u32)> = (first_hidden..bat.len())
            .filter(|&i| bat[i] != BAT_FREE)
            .map(|i| (i as u32, BAT_FREE))
            .collect();
        // Entries the file holds past the ones read (up to the header's count) are cleared when
        // the BAT grows; those we read are cleared here.
        for &(i, _) in &stale {
            bat[i as usize] = BAT_FREE;
        }
        let mut changed = !stale.is_empty();
        if !stale.is_empty() {
            self.write_bat_entries(sp, &stale)?;
        }
        // Entries the file holds past the ones read (up to the header's count) are not known
        // here: clear those the new size will use (when the BAT grows it is rewritten anyway).
        let held = layout.header.max_table_entries.get() as usize;
        let upto = (new_size.div_ceil(block_size) as usize).min(held);
        if upto > bat.len() {
            let hidden: Vec<(u32, u32)> = (bat.len()..upto).map(|i| (i as u32, BAT_FREE)).collect();
            self.write_bat_entries(sp, &hidden)?;
            changed = true;
        }
        let within = old_size % block_size;
        let last = (old_size / block_size) as usize;
        if within != 0
            && let Some(&entry) = bat.get(last)
            && entry != BAT_FREE
        {
            let start = self.check_block(sp, last as u32, entry)?;
            let data = start + layout.bitmap_size;
            let file_len = self.storage.len().io_context("reading the file size", 0)?;
            let tail_start = data + within;
            let tail_end = (data + block_size).min(file_len.saturating_sub(FOOTER_SIZE));
            if tail_end > tail_start {
                self.storage
                    .punch_hole(tail_start, tail_end - tail_start)
                    .io_context("zeroing the tail of the last block", tail_start)?;
                changed = true;
            }
            if self.disk_type == DiskType::Differencing {
                let mut bitmap = self.current_bitmap(sp, last as u32, start)?;
                let first_sector = (within / SECTOR_SIZE) as usize;
                let sectors = (block_size / SECTOR_SIZE) as usize;
                if (first_sector..sectors).any(|s| bitmap_get(&bitmap, s)) {
                    for s in first_sector..sectors {
                        bitmap[s / 8] &= !(0x80u8 >> (s % 8));
                    }
                    self.storage
                        .write_at(&bitmap, start)
                        .io_context("writing a sector bitmap", start)?;
                    changed = true;
                }
            }
        }
        if changed {
            self.flush_storage("flushing the cleared space")?;
        }
        Ok(())
    }

    /// Make room for the BAT to grow in place up to byte `until`: the data blocks in the way are
    /// copied to the end of the file (each copy flushed before its BAT entry, one atomic sector
    /// write, points at it). Returns `false`, moving nothing, when metadata (the header, parent
    /// locators) is in the way: the BAT then moves instead.
    fn move_blocks_out(&self, sp: &SparseState, bat: &mut [u32], until: u64, free: &mut u64) -> Result<bool> {
        let layout = &sp.layout;
        let from = layout.table_offset;
        let in_way = |offset: u64| offset >= from && offset < until;
        if in_way(layout.header_offset)
            || self
                .locators
                .iter()
                .any(|l| (l.length > 0 || l.space > 0) && in_way(l.offset))
        {
            return Ok(false);
        }
        let mut blockers: Vec<(usize, u64)> = bat
            .iter()
            .enumerate()
            .filter(|&(_, &e)| e != BAT_FREE)
            .map(|(i, &e)| (i, u64::from(e) * SECTOR_SIZE))
            .filter(|&(_, start)| in_way(start))
            .collect();
        blockers.sort_by_key(|&(_, start)| start);
        let footprint = layout.block_footprint();
        if !blockers.is_empty() {
            // Copies go past the BAT's new end (a small file's end may lie before it).
            *free = (*free).max(until);
        }
        for (index, _) in blockers {
            let start = self.check_block(sp, index as u32, bat[index])?;
            let to = *free;
            let entry = u32::try_from(to / SECTOR_SIZE)
                .ok()
                .filter(|&e| e != BAT_FREE)
                .ok_or_else(|| Error::unsupported("the image file has grown past what a BAT entry can address"))?;
            // A valid footer past the copy first, then the copy, flushed, then the entry.
            self.storage
                .write_at(self.footer.as_bytes(), to + footprint)
                .io_context("writing the footer", to + footprint)?;
            let len = layout.bitmap_size + block_used_bytes(layout, index as u32, self.virtual_size);
            let mut buf = vec![0u8; (1u64 << 20).min(len) as usize];
            let mut done = 0;
            while done < len {
                let n = (len - done).min(buf.len() as u64) as usize;
                self.storage
                    .read_at(&mut buf[..n], start + done)
                    .io_context("reading a block to move", start + done)?;
                self.storage
                    .write_at(&buf[..n], to + done)
                    .io_context("writing a moved block", to + done)?;
                done += n as u64;
            }
            self.flush_storage("flushing a moved block")?;
            self.write_bat_entries(sp, &[(index as u32, entry)])?;
            self.flush_storage("flushing the BAT")?;
            bat[index] = entry;
            *free = to + footprint;
        }
        Ok(true)
    }

    /// How many BAT entries fit at the BAT's place before the next structure in the file.
    fn bat_room(&self, sp: &SparseState, bat: &[u32]) -> u64 {
        let layout = &sp.layout;
        let start = layout.table_offset;
        let mut limit = u64::MAX;
        let mut consider = |offset: u64| {
            if offset >= start {
                limit = limit.min(offset);
            }
        };
        consider(layout.header_offset);
        for loc in &self.locators {
            if loc.length > 0 || loc.space > 0 {
                consider(loc.offset);
            }
        }
        for &e in bat {
            if e != BAT_FREE {
                consider(u64::from(e) * SECTOR_SIZE);
            }
        }
        limit.saturating_sub(start) / 4
    }
}

impl VhdLayer {
    /// Record `parent` in this differencing disk (`rebase`): its unique id and timestamp, its
    /// name and fresh W2ku/W2ru locators. A new dynamic header and the locator data are appended
    /// to the file and flushed; then the footer copy at offset 0 (one atomic sector, the copy
    /// readers use) switches its "Data Offset" to the new header, and last the footer at the end
    /// follows. A crash leaves the old parent or the new one. The handle is stale afterwards.
    pub(crate) fn set_parent_in_place(&self, parent: Option<&disk_core::NewParent<'_>>) -> Result<()> {
        self.writable()?;
        let (Some(sp), DiskType::Differencing) = (&self.sparse, self.disk_type) else {
            return Err(Error::unsupported(
                "only a VHD differencing disk records a parent (this one is standalone)",
            ));
        };
        let Some(parent) = parent else {
            return Err(Error::unsupported(
                "a VHD differencing disk cannot drop its parent without copying its data (rebase without -u)",
            ));
        };
        let Some(vhd) = parent.layer.as_any().downcast_ref::<VhdLayer>() else {
            return Err(Error::unsupported(format!(
                "the parent of a VHD must be a VHD, not {}",
                parent.layer.format()
            )));
        };
        let mut state = lock(&sp.alloc);
        self.flush_locked(sp, &mut state)?;
        let layout = &sp.layout;
        let mut hdr = layout.header;
        hdr.parent_unique_id = vhd.footer().unique_id;
        hdr.parent_timestamp.set(
            parent
                .absolute
                .and_then(crate::create::mtime_timestamp)
                .unwrap_or_else(|| vhd.footer().timestamp.get()),
        );
        // The new header first, then its locators, all past the current end.
        let header_at = state.free;
        let locators = crate::parent::record_parent(
            &mut hdr,
            parent.recorded,
            parent.absolute,
            parent.child,
            header_at + crate::format::HEADER_SIZE,
        )?;
        for (at, data) in &locators.pieces {
            self.storage
                .write_at(data, *at)
                .io_context("writing a parent locator", *at)?;
        }
        let free = locators.end;
        header::seal(&mut hdr);
        self.storage
            .write_at(hdr.as_bytes(), header_at)
            .io_context("writing the dynamic header", header_at)?;
        // Keep a valid (old) footer at the end meanwhile.
        self.storage
            .write_at(self.footer.as_bytes(), free)
            .io_context("writing the footer", free)?;
        self.flush_storage("flushing the new dynamic header")?;
        let mut new_footer = self.footer;
        new_footer.data_offset.set(header_at);
        footer::seal(&mut new_footer);
        self.storage
            .write_at(new_footer.as_bytes(), 0)
            .io_context("writing the footer copy", 0)?;
        self.flush_storage("flushing the footer copy")?;
        self.storage
            .write_at(new_footer.as_bytes(), free)
            .io_context("writing the footer", free)?;
        self.flush_storage("flushing the footer")?;
        state.free = free;
        state.chunk_end = free;
        sp.file_len.store(free + FOOTER_SIZE, Ordering::Release);
        Ok(())
    }
}
