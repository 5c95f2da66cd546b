//! The write path: header updates, block allocation, and metadata changes through the log
//! (write-ahead: data, flush, log entry, flush, apply, flush).

use crate::bat::INVALID_ENTRY;
use crate::format::*;
use crate::geometry::EntryKind;
use crate::layer::{VhdxLayer, WriteState};
use crate::log::{EntryParams, build_entry, entry_len};
use crate::parse::{header_bytes, header_offset};
use disk_core::guid::{MsGuid, new_uuid};
use disk_core::mapping::{Completion, WriteRun, WriteTarget};
use disk_core::sync::{lock, write_lock};
use disk_core::{Error, ErrorKind, IoResultExt, Result, SpaceKind};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// BAT and sector bitmap changes made by one operation, committed through the log at once.
#[derive(Default, Clone)]
pub(crate) struct Txn {
    /// New BAT values by index.
    pub(crate) bat: BTreeMap<usize, u64>,
    /// Sector bitmap bits to set: (payload block, first sector in block, sectors).
    pub(crate) bits: Vec<(u64, u64, u64)>,
    /// Payload blocks whose sector bitmap bits are cleared first (newly partially present).
    pub(crate) clear: Vec<u64>,
    /// Payload block areas to release after the commit.
    pub(crate) release: Vec<u64>,
    /// Other bytes to change (file offset, new bytes), e.g. a metadata item.
    pub(crate) patches: Vec<(u64, Vec<u8>)>,
}

/// Pending metadata changes that make a write commit them at once (bounds memory and the
/// size of one log transaction).
const MAX_PENDING: usize = 1024;

/// Largest file an image may grow to: room for a 64 TiB disk's blocks, sector bitmaps and BAT.
pub(crate) const MAX_FILE_SIZE: u64 = 2 * MAX_VIRTUAL_SIZE;

/// Forget space past `end` after the file was cut there (allocations continue from `end`).
pub(crate) fn forget_past(st: &mut WriteState, end: u64, block_size: u64) {
    st.space.release(end, u64::MAX - end);
    st.space.set_file_len(end);
    st.free.retain(|&off| off.saturating_add(block_size) <= end);
}

/// One piece of an operation: sectors inside one payload block.
struct Piece {
    block: u64,
    within: u64,
    sectors: u64,
}

fn pieces(layer: &VhdxLayer, lba: u64, count: u64) -> Vec<Piece> {
    let g = &layer.geo;
    let mut out = Vec::new();
    let mut done = 0;
    while done < count {
        let l = lba + done;
        let block = l / g.sectors_per_block;
        let within = l % g.sectors_per_block;
        let n = (g.sectors_per_block - within).min(count - done);
        out.push(Piece {
            block,
            within,
            sectors: n,
        });
        done += n;
    }
    out
}

impl VhdxLayer {
    pub(crate) fn check_writable(&self) -> Result<()> {
        if !self.writable {
            return Err(Error::read_only());
        }
        if self.poisoned.load(Ordering::Acquire) {
            return Err(Error::new(
                ErrorKind::Poisoned,
                "an earlier metadata update failed; reopen the image to recover it from its log",
            ));
        }
        if let Some(overlap) = &self.structural {
            return Err(Error::corrupt(format!(
                "{overlap}: the image's structures overlap, so it cannot be changed"
            )));
        }
        Ok(())
    }

    /// Run a metadata update; if it fails, refuse further changes (its state on disk is unknown).
    pub(crate) fn guarded<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let r = f();
        if r.is_err() {
            self.poisoned.store(true, Ordering::Release);
        }
        r
    }

    /// The header update procedure: change a copy of the current header, increment its
    /// sequence number, write it over the non-current slot, flush. It becomes current. A
    /// failure leaves the current header in place (the other slot is the only one written), so
    /// it does not poison the handle: a retry writes the same slot again.
    pub(crate) fn update_header(&self, st: &mut WriteState, change: impl FnOnce(&mut Header)) -> Result<()> {
        let mut h = st.header;
        change(&mut h);
        h.sequence_number.set(h.sequence_number.get().wrapping_add(1));
        let slot = 1 - st.slot;
        let off = header_offset(slot);
        self.file
            .write_at(&header_bytes(&h), off)
            .io_context("writing the header", off)?;
        self.file.flush().io_context("flushing the header", off)?;
        st.header = h;
        st.slot = slot;
        Ok(())
    }

    /// Before the first change of a session: new FileWriteGuid and DataWriteGuid in both headers.
    pub(crate) fn begin(&self, st: &mut WriteState) -> Result<()> {
        if !st.session_started {
            self.update_header(st, |h| {
                h.file_write_guid = MsGuid::from_uuid(new_uuid());
                h.data_write_guid = MsGuid::from_uuid(new_uuid());
            })?;
            // Twice (as QEMU does), so that both copies carry the new GUIDs and a damaged newest
            // header cannot bring back the old ones.
            self.update_header(st, |_| {})?;
            st.session_started = true;
            self.session_started.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Write `pages` (4 KiB of file contents each) through the log.
    ///
    /// A failure before an entry is durable in the log leaves the file as it was (the caller
    /// may retry); a failure while applying a durable entry poisons the handle (reopening
    /// replays the entry).
    fn log_pages(&self, st: &mut WriteState, pages: &[(u64, Vec<u8>)]) -> Result<()> {
        if pages.is_empty() {
            return Ok(());
        }
        let log_len = u64::from(st.header.log_length.get());
        let log_off = st.header.log_offset.get();
        let mut per_entry = (log_len / LOG_SECTOR as u64).saturating_sub(1) as usize;
        while per_entry > 0 && entry_len(per_entry) > log_len {
            per_entry -= 1;
        }
        if per_entry == 0 {
            // No usable log: write in place (not crash-safe, as the image offers no log).
            for (off, page) in pages {
                self.file.write_at(page, *off).io_context("writing metadata", *off)?;
            }
            return self.file.flush().io_context("flushing metadata", 0);
        }
        if log_off < HEADER_SECTION_SIZE || log_off.checked_add(log_len).is_none_or(|e| e > st.space.file_len()) {
            return Err(Error::corrupt(format!("the log at {log_off:#x} lies outside the file")).in_structure("log"));
        }
        if st.header.log_guid.is_nil() {
            self.update_header(st, |h| h.log_guid = MsGuid::from_uuid(new_uuid()))?;
            st.log_seq = 1;
            st.log_pos = 0;
        }
        for chunk in pages.chunks(per_entry) {
            let len = entry_len(chunk.len());
            if st.log_pos + len > log_len {
                st.log_pos = 0;
            }
            let entry = build_entry(
                &EntryParams {
                    guid: st.header.log_guid,
                    seq: st.log_seq,
                    tail: st.log_pos as u32,
                    flushed_file_offset: st.space.file_len(),
                    last_file_offset: st.space.file_len(),
                },
                chunk,
            );
            let at = log_off + st.log_pos;
            self.file.write_at(&entry, at).io_context("writing a log entry", at)?;
            self.file.flush().io_context("flushing the log", at)?;
            self.guarded(|| {
                // Neighbouring pages (a BAT after scattered allocations) go in one write, the
                // rest in parallel.
                disk_core::mover::write_scattered(&*self.file, chunk.to_vec(), "applying a log entry")?;
                self.file.flush().io_context("flushing metadata", 0)
            })?;
            st.log_pos += len;
            st.log_seq += 1;
        }
        Ok(())
    }

    /// A new zeroed area of `size` bytes holding `kind`, 1 MiB aligned: a payload block released
    /// by a discard in this session, or space after everything the space map records (never
    /// on metadata or live data).
    pub(crate) fn allocate(&self, st: &mut WriteState, size: u64, kind: SpaceKind) -> Result<u64> {
        if size == self.geo.block_size
            && kind == SpaceKind::Data
            && let Some(off) = st.free.pop()
        {
            st.space.claim(off, size, kind)?;
            return Ok(off);
        }
        let before = st.space.file_len();
        let off = st.space.allocate(size, MIB, kind, MAX_FILE_SIZE)?;
        let end = off.saturating_add(size);
        if let Err(e) = self.grow_to(end) {
            st.space.release(off, size);
            st.space.set_file_len(before);
            return Err(e);
        }
        Ok(off)
    }

    /// Make the file at least `end` bytes long, growing it ahead by a chunk of blocks so that
    /// most allocations need no `set_len`; [`Self::flush_all`] trims what stayed unused.
    fn grow_to(&self, end: u64) -> Result<()> {
        let mut grown = lock(&self.grown);
        if *grown >= end {
            return Ok(());
        }
        let chunk = (64 * MIB).max(self.geo.block_size);
        let target = end.saturating_add(chunk).min(MAX_FILE_SIZE).max(end);
        // Growing ahead is an optimisation: where the storage refuses the larger size (a
        // quota, a size limit), grow exactly as far as needed.
        let target = match self.file.set_len(target) {
            Ok(()) => target,
            Err(_) => {
                self.file.set_len(end).io_context("extending the file", end)?;
                end
            }
        };
        *grown = target;
        Ok(())
    }

    /// Cut space the file was grown ahead by that no allocation used.
    fn trim_growth(&self, st: &WriteState) -> Result<()> {
        let mut grown = lock(&self.grown);
        let used = st.space.file_len();
        if *grown > used {
            self.file.set_len(used).io_context("trimming unused space", used)?;
            *grown = used;
        }
        Ok(())
    }

    /// Current BAT entry `i`, with pending changes of `txn`.
    pub(crate) fn entry(&self, txn: &Txn, i: usize) -> Result<u64> {
        match txn.bat.get(&i) {
            Some(&e) => Ok(e),
            None => self.bat.get(i as u64),
        }
    }

    /// Make sure the chunk of `block` has a sector bitmap block.
    fn ensure_bitmap(&self, st: &mut WriteState, txn: &mut Txn, block: u64) -> Result<()> {
        let i = self.geo.bitmap_index(block / self.geo.chunk_ratio);
        let state = bat_state(self.entry(txn, i)?);
        if state != bitmap::PRESENT && state != bitmap::NOT_PRESENT {
            return Err(Error::corrupt(format!("BAT entry {i} (sector bitmap) is unusable")).in_structure("BAT"));
        }
        if state != bitmap::PRESENT {
            let off = self.allocate(st, MIB, SpaceKind::Bitmap)?;
            txn.bat.insert(i, bat_entry(bitmap::PRESENT, off));
        }
        Ok(())
    }

    /// Turn `txn` into 4 KiB pages, log and apply them, then update the in-memory copies.
    pub(crate) fn commit(&self, st: &mut WriteState, txn: Txn) -> Result<()> {
        let mut bitmap_pages: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let page = |map: &mut BTreeMap<u64, Vec<u8>>, off: u64| -> Result<()> {
            if let std::collections::btree_map::Entry::Vacant(v) = map.entry(off) {
                let mut buf = vec![0u8; LOG_SECTOR];
                self.file.read_at(&mut buf, off).io_context("reading metadata", off)?;
                v.insert(buf);
            }
            Ok(())
        };
        let g = &self.geo;
        for &block in &txn.clear {
            let e = self.entry(&txn, g.bitmap_index(block / g.chunk_ratio))?;
            let start = bat_offset(e) + g.bitmap_byte_offset(block);
            for off in start..start + g.bitmap_bytes_per_block() {
                let page_off = off / LOG_SECTOR as u64 * LOG_SECTOR as u64;
                page(&mut bitmap_pages, page_off)?;
                let p = bitmap_pages.get_mut(&page_off).expect("page just loaded");
                p[(off - page_off) as usize] = 0;
            }
        }
        for &(block, first, count) in &txn.bits {
            let e = self.entry(&txn, g.bitmap_index(block / g.chunk_ratio))?;
            let base_bit = g.bitmap_byte_offset(block) * 8 + first;
            for bit in base_bit..base_bit + count {
                let off = bat_offset(e) + bit / 8;
                let page_off = off / LOG_SECTOR as u64 * LOG_SECTOR as u64;
                page(&mut bitmap_pages, page_off)?;
                let p = bitmap_pages.get_mut(&page_off).expect("page just loaded");
                p[(off - page_off) as usize] |= 1 << (bit % 8);
            }
        }
        let mut bat_pages: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        for (&i, &value) in &txn.bat {
            let off = self.regions.bat.offset + 8 * i as u64;
            let page_off = off / LOG_SECTOR as u64 * LOG_SECTOR as u64;
            page(&mut bat_pages, page_off)?;
            let p = bat_pages.get_mut(&page_off).expect("page just loaded");
            let at = (off - page_off) as usize;
            p[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
        let mut other_pages: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        for (start, bytes) in &txn.patches {
            for (k, &b) in bytes.iter().enumerate() {
                let off = start + k as u64;
                let page_off = off / LOG_SECTOR as u64 * LOG_SECTOR as u64;
                page(&mut other_pages, page_off)?;
                let p = other_pages.get_mut(&page_off).expect("page just loaded");
                p[(off - page_off) as usize] = b;
            }
        }
        let pages: Vec<(u64, Vec<u8>)> = bitmap_pages.into_iter().chain(bat_pages).chain(other_pages).collect();
        self.log_pages(st, &pages)?;
        {
            // Both under the bitmap cache lock, so no reader pairs a new entry with a cached
            // old bitmap.
            let mut cache = write_lock(&self.bitmaps);
            for (&i, &value) in &txn.bat {
                self.bat.set(i as u64, value)?;
            }
            for &(block, _, _) in &txn.bits {
                cache.remove(&block);
            }
            for &i in txn.bat.keys() {
                let block = (i as u64) - (i as u64) / (g.chunk_ratio + 1);
                cache.remove(&block);
            }
        }
        for off in txn.release {
            self.file
                .punch_hole(off, g.block_size)
                .io_context("releasing a discarded block", off)?;
            st.space.release(off, g.block_size);
            st.free.push(off);
        }
        Ok(())
    }

    /// Where a write of up to `count` sectors from `lba` goes (one payload block at most). A
    /// block that is not stored yet is claimed, reserved under the state lock and published by
    /// the completion; its BAT entry and bitmap bits are logged at the next flush.
    pub(crate) fn map_write(&self, lba: u64, count: u64) -> Result<WriteRun<'_>> {
        self.check_writable()?;
        let g = self.geo;
        if !self.session_started.load(Ordering::Acquire) {
            self.begin(&mut lock(&self.state))?;
        }
        let block = lba / g.sectors_per_block;
        let within = lba % g.sectors_per_block;
        let n = (g.sectors_per_block - within).min(count);
        let i = g.payload_index(block);
        let whole = within == 0 && n >= g.block_sectors(block);
        let e = self.bat.get(i as u64)?;
        let at = |e: u64| bat_offset(e) + within * g.sector_size;
        match bat_state(e) {
            payload::FULLY_PRESENT => return Ok(WriteRun::overwrite(n, at(e))),
            payload::PARTIALLY_PRESENT => {
                // Sectors already the child's need no bitmap change: a plain overwrite.
                let bits = self.block_bitmap(block)?;
                if (within..within + n).all(|s| bits[(s / 8) as usize] >> (s % 8) & 1 == 1) {
                    return Ok(WriteRun::overwrite(n, at(e)));
                }
                return Ok(WriteRun {
                    sectors: n,
                    target: WriteTarget::Host { file: 0, offset: at(e) },
                    completion: Completion::new(move |written| {
                        if written {
                            self.publish(block, None, within, n, whole)?;
                        }
                        Ok(())
                    }),
                });
            }
            s if payload::RESERVED.contains(&s) => {
                return Err(Error::corrupt(format!("BAT entry {i} is invalid")).in_structure("BAT"));
            }
            _ => {}
        }
        let claim = self.claims.claim(block);
        let e = self.bat.get(i as u64)?;
        if payload::STORED.contains(&bat_state(e)) {
            drop(claim);
            return self.map_write(lba, count);
        }
        let state = bat_state(e);
        let (off, new_state) = {
            let mut st = lock(&self.state);
            let off = self.allocate(&mut st, g.block_size, SpaceKind::Data)?;
            let new_state = if !g.has_parent || state == payload::ZERO || whole {
                payload::FULLY_PRESENT
            } else {
                payload::PARTIALLY_PRESENT
            };
            (off, new_state)
        };
        Ok(WriteRun {
            sectors: n,
            target: WriteTarget::Host {
                file: 0,
                offset: off + within * g.sector_size,
            },
            completion: Completion::new(move |written| {
                let _claim = claim;
                if !written {
                    // The reserved block stays unused until `check -r` or a resize reclaims it.
                    return Ok(());
                }
                self.publish(block, Some(bat_entry(new_state, off)), within, n, whole)
            }),
        })
    }

    /// Record a completed write in memory and in the pending transaction: a new BAT entry for
    /// a newly stored block, sector bitmap bits for a partially present one (or the block
    /// becoming fully present when the write covered it all).
    fn publish(&self, block: u64, new_entry: Option<u64>, within: u64, n: u64, whole: bool) -> Result<()> {
        let g = self.geo;
        let i = g.payload_index(block);
        let mut st = lock(&self.state);
        let mut entry = match new_entry {
            Some(e) => e,
            None => self.bat.get(i as u64)?,
        };
        if whole && bat_state(entry) == payload::PARTIALLY_PRESENT {
            // Every sector is now the child's: no need for the bitmap any more.
            entry = bat_entry(payload::FULLY_PRESENT, bat_offset(entry));
        }
        let fresh = new_entry.is_some();
        if bat_state(entry) == payload::PARTIALLY_PRESENT {
            let mut txn = std::mem::take(&mut st.pending);
            let ensured = self.ensure_bitmap(&mut st, &mut txn, block);
            st.pending = txn;
            ensured?;
            let mut bits = if fresh {
                st.pending.clear.push(block);
                vec![0u8; g.bitmap_bytes_per_block() as usize]
            } else {
                (*self.block_bitmap(block)?).clone()
            };
            for s in within..within + n {
                bits[(s / 8) as usize] |= 1 << (s % 8);
            }
            st.pending.bits.push((block, within, n));
            write_lock(&self.pending_bitmaps).insert(block, Arc::new(bits));
            let bi = g.bitmap_index(block / g.chunk_ratio);
            if let Some(&be) = st.pending.bat.get(&bi) {
                self.bat.set(bi as u64, be)?;
            }
        }
        if fresh || whole {
            st.pending.bat.insert(i, entry);
            self.bat.set(i as u64, entry)?;
        }
        if st.pending.bat.len() + st.pending.bits.len() > MAX_PENDING {
            self.commit_pending(&mut st)?;
        }
        Ok(())
    }

    /// Make the data durable, then log and apply the pending metadata.
    pub(crate) fn commit_pending(&self, st: &mut WriteState) -> Result<()> {
        if st.pending.bat.is_empty() && st.pending.bits.is_empty() && st.pending.clear.is_empty() {
            return Ok(());
        }
        self.file.flush().io_context("flushing data", 0)?;
        let txn = std::mem::take(&mut st.pending);
        // On failure the changes stay pending for the next flush (unless the handle is now
        // poisoned, in which case the log holds them).
        let kept = txn.clone();
        if let Err(e) = self.commit(st, txn) {
            st.pending = kept;
            return Err(e);
        }
        write_lock(&self.pending_bitmaps).clear();
        Ok(())
    }

    /// Make sectors read as zeros: whole blocks change state (their space is released),
    /// partial blocks get zeros written.
    pub(crate) fn zero_sectors(&self, lba: u64, count: u64, below: &dyn disk_core::Disk) -> Result<()> {
        self.check_writable()?;
        let g = self.geo;
        // Released blocks may be handed out again: no mapped I/O may be in flight meanwhile.
        let gate = self.gate.exclusive();
        let mut st = lock(&self.state);
        self.begin(&mut st)?;
        self.commit_pending(&mut st)?;
        let mut txn = Txn::default();
        let mut partial = Vec::new();
        for p in pieces(self, lba, count) {
            let i = g.payload_index(p.block);
            let e = self.entry(&txn, i)?;
            let state = bat_state(e);
            let stored = payload::STORED.contains(&state);
            let unstored = matches!(state, payload::NOT_PRESENT | payload::UNDEFINED | payload::UNMAPPED);
            let reads_zero = state == payload::ZERO || (!g.has_parent && unstored);
            if reads_zero {
                continue;
            }
            let whole = p.within == 0 && p.sectors >= g.block_sectors(p.block);
            if self.meta.leave_allocated && !g.has_parent && state == payload::FULLY_PRESENT {
                // Fixed disk: keep the block, zero its bytes.
                let at = bat_offset(e) + p.within * g.sector_size;
                self.file
                    .punch_hole(at, p.sectors * g.sector_size)
                    .io_context("zeroing data", at)?;
            } else if whole {
                let new_state = if g.has_parent {
                    payload::ZERO
                } else {
                    payload::NOT_PRESENT
                };
                txn.bat.insert(i, bat_entry(new_state, 0));
                if stored {
                    txn.release.push(bat_offset(e));
                }
            } else {
                partial.push(p);
            }
        }
        self.commit(&mut st, txn)?;
        drop(st);
        drop(gate);
        for p in partial {
            disk_core::mover::write_zero_data(self, p.block * g.sectors_per_block + p.within, p.sectors, below)?;
        }
        Ok(())
    }

    /// Write the current header over the other slot (repairing a damaged copy).
    pub(crate) fn rewrite_other_header(&self) -> Result<()> {
        self.check_writable()?;
        let mut st = lock(&self.state);
        self.update_header(&mut st, |_| {})
    }

    /// Cut the file at `end` (the end of the last used structure): space past it is unused.
    pub(crate) fn truncate_unused(&self, end: u64) -> Result<()> {
        self.check_writable()?;
        let mut st = lock(&self.state);
        if !st.header.log_guid.is_nil() {
            // Everything logged is applied; an entry left in the log would ask for the longer
            // file back (and call the shorter one data loss) if replayed after a crash.
            self.update_header(&mut st, |h| h.log_guid = MsGuid::NIL)?;
        }
        self.commit_pending(&mut st)?;
        self.file.set_len(end).io_context("truncating unused space", end)?;
        *lock(&self.grown) = end;
        self.file.flush().io_context("flushing", end)?;
        forget_past(&mut st, end, self.geo.block_size);
        Ok(())
    }

    /// Drop every BAT entry the open found unusable (`check -r all`): payload blocks become not
    /// present (zero in a differencing disk, so the parent does not show through), sector bitmap
    /// blocks not present; through the log like every metadata change. Returns how many.
    pub(crate) fn drop_unusable_entries(&self) -> Result<usize> {
        self.check_writable()?;
        let g = self.geo;
        let mut txn = Txn::default();
        self.bat.for_each_page(|first, entries| {
            for (i, &e) in (first..).zip(entries) {
                if e == INVALID_ENTRY {
                    let is_bitmap = matches!(g.entry_kind(i), EntryKind::Bitmap(_));
                    let state = if g.has_parent && !is_bitmap {
                        payload::ZERO
                    } else {
                        payload::NOT_PRESENT
                    };
                    txn.bat.insert(i as usize, bat_entry(state, 0));
                }
            }
            Ok(())
        })?;
        let mut st = lock(&self.state);
        let n = txn.bat.len();
        if n > 0 {
            self.begin(&mut st)?;
            self.commit(&mut st, txn)?;
        }
        st.space.clear_conflicts();
        Ok(n)
    }

    /// Flush the file and, once everything logged is applied, mark the log empty.
    pub(crate) fn flush_all(&self) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        if self.poisoned.load(Ordering::Acquire) {
            return self.check_writable();
        }
        let mut st = lock(&self.state);
        self.trim_growth(&st)?;
        self.commit_pending(&mut st)?;
        self.file.flush().io_context("flushing", 0)?;
        if !st.header.log_guid.is_nil() {
            self.update_header(&mut st, |h| h.log_guid = MsGuid::NIL)?;
        }
        Ok(())
    }
}
