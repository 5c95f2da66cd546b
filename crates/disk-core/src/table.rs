//! Metadata tables read in pages on demand.
//!
//! A [`PagedTable`] is an array of fixed-width entries stored in an image file (a VHDX BAT, say)
//! that is read a page of [`PAGE_ENTRIES`] entries at a time, when an entry of the page is first
//! asked for, and kept in a cache bounded in bytes. Opening an image therefore costs what the
//! metadata it actually uses costs, not what its virtual size implies: a 64 TiB VHDX with a
//! 512 MiB BAT opens without reading it.
//!
//! The table is a read-through cache with in-memory changes: [`PagedTable::set`] changes an
//! entry in memory only (the engine writes its metadata itself, through its log or its own
//! table writes) and pins the page, so a pinned page is never evicted and never read again.
//! An optional check ([`PagedTable::with_check`]) turns every entry read from the file into the
//! value the engine may use (say, a reserved "unusable" value for an entry pointing outside the
//! file), so nothing unchecked ever leaves the table.

use crate::error::{IoResultExt, Result};
use crate::storage::Storage;
use crate::sync::{read_lock, write_lock};
use std::fmt;
use std::sync::{Arc, RwLock};

/// Most bytes of tables a read-only open reads whole to survey an image's space; an image with
/// larger tables is checked as its tables are read instead (the engines document what that
/// leaves to `check`).
#[cfg(not(fuzzing))]
pub const EAGER_SURVEY_BYTES: u64 = 16 << 20;

/// Most bytes of tables a read-only open reads whole: small under the fuzzer, so that its small
/// inputs reach the tables checked as read.
#[cfg(fuzzing)]
pub const EAGER_SURVEY_BYTES: u64 = 4096;

/// Entries per page: 32 KiB of 8-byte entries, 16 KiB of 4-byte ones.
pub const PAGE_ENTRIES: u64 = 4096;

/// How an entry is stored in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryWidth {
    /// 4 bytes, little-endian.
    U32Le,
    /// 4 bytes, big-endian.
    U32Be,
    /// 8 bytes, little-endian.
    U64Le,
}

impl EntryWidth {
    /// Bytes per entry.
    pub fn bytes(self) -> u64 {
        match self {
            EntryWidth::U32Le | EntryWidth::U32Be => 4,
            EntryWidth::U64Le => 8,
        }
    }

    fn decode(self, raw: &[u8]) -> Vec<u64> {
        match self {
            EntryWidth::U32Le => raw
                .as_chunks::<4>()
                .0
                .iter()
                .map(|&c| u64::from(u32::from_le_bytes(c)))
                .collect(),
            EntryWidth::U32Be => raw
                .as_chunks::<4>()
                .0
                .iter()
                .map(|&c| u64::from(u32::from_be_bytes(c)))
                .collect(),
            EntryWidth::U64Le => raw.as_chunks::<8>().0.iter().map(|&c| u64::from_le_bytes(c)).collect(),
        }
    }
}

/// Turns the entries of a page as read from the file (index of the first, raw values) into the
/// values the engine may use, in place.
pub type EntryCheck = Box<dyn Fn(u64, &mut [u64]) + Send + Sync>;

/// One page's entries.
type Page = Arc<Vec<u64>>;

/// The resident pages.
struct Pages {
    /// Entries in the table.
    entries: u64,
    /// One slot per page: its entries when resident.
    slots: Vec<Option<Page>>,
    /// Pages changed in memory (never evicted).
    pinned: Vec<bool>,
    /// Resident pages that are not pinned.
    clean: usize,
    /// Where eviction looks next (a clock hand).
    hand: usize,
}

/// A table of entries in a file, read in pages on demand (see the module docs).
pub struct PagedTable {
    storage: Arc<dyn Storage>,
    offset: u64,
    width: EntryWidth,
    what: &'static str,
    max_clean: usize,
    check: Option<EntryCheck>,
    pages: RwLock<Pages>,
}

impl fmt::Debug for PagedTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PagedTable")
            .field("what", &self.what)
            .field("offset", &self.offset)
            .field("entries", &self.len())
            .finish()
    }
}

/// Pages needed for `entries` entries.
fn page_count(entries: u64) -> usize {
    usize::try_from(entries.div_ceil(PAGE_ENTRIES)).unwrap_or(usize::MAX)
}

impl PagedTable {
    /// A table of `entries` entries of `width` at byte `offset` of `storage`, named `what` in
    /// errors, keeping at most `max_clean_bytes` of unchanged pages in memory (at least one
    /// page). The caller has checked that the table lies inside the file; nothing is read yet.
    pub fn new(
        storage: Arc<dyn Storage>,
        offset: u64,
        entries: u64,
        width: EntryWidth,
        what: &'static str,
        max_clean_bytes: u64,
    ) -> Self {
        let page_bytes = PAGE_ENTRIES.saturating_mul(width.bytes());
        let max_clean = usize::try_from(max_clean_bytes / page_bytes)
            .unwrap_or(usize::MAX)
            .max(1);
        let n = page_count(entries);
        PagedTable {
            storage,
            offset,
            width,
            what,
            max_clean,
            check: None,
            pages: RwLock::new(Pages {
                entries,
                slots: vec![None; n],
                pinned: vec![false; n],
                clean: 0,
                hand: 0,
            }),
        }
    }

    /// Pass every entry read from the file through `check` (see [`EntryCheck`]).
    pub fn with_check(mut self, check: EntryCheck) -> Self {
        self.check = Some(check);
        self
    }

    /// Read further pages from `storage` (which holds the same table), keeping those resident.
    pub fn with_storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = storage;
        self
    }

    /// Entries in the table.
    pub fn len(&self) -> u64 {
        read_lock(&self.pages).entries
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pages in the table (the last may be short).
    pub fn pages(&self) -> u64 {
        self.len().div_ceil(PAGE_ENTRIES)
    }

    /// Bytes of entries held in memory (pinned and cached pages).
    pub fn resident_bytes(&self) -> u64 {
        let pages = read_lock(&self.pages);
        let n = pages.slots.iter().filter(|s| s.is_some()).count() as u64;
        n.saturating_mul(PAGE_ENTRIES).saturating_mul(8)
    }

    /// Entry `i`. An index past the end reads as 0.
    pub fn get(&self, i: u64) -> Result<u64> {
        let p = i / PAGE_ENTRIES;
        let k = usize::try_from(i % PAGE_ENTRIES).unwrap_or(usize::MAX);
        let slot = usize::try_from(p).unwrap_or(usize::MAX);
        // A resident page answers under the read lock, without touching its reference count
        // (which readers on other cores would contend for).
        if let Some(Some(page)) = read_lock(&self.pages).slots.get(slot) {
            return Ok(page.get(k).copied().unwrap_or(0));
        }
        Ok(self.page(p)?.get(k).copied().unwrap_or(0))
    }

    /// The entries of page `p` (entries `p * PAGE_ENTRIES ..`), read if not resident. A page
    /// past the end is empty.
    pub fn page(&self, p: u64) -> Result<Arc<Vec<u64>>> {
        let Ok(slot) = usize::try_from(p) else {
            return Ok(Arc::default());
        };
        let entries = {
            let pages = read_lock(&self.pages);
            match pages.slots.get(slot) {
                Some(Some(page)) => return Ok(page.clone()),
                Some(None) => pages.entries,
                None => return Ok(Arc::default()),
            }
        };
        // Read without the lock held: readers of other pages never wait for this I/O.
        let page = Arc::new(self.read_page(p, entries)?);
        let mut pages = write_lock(&self.pages);
        match pages.slots.get(slot) {
            Some(Some(resident)) => return Ok(resident.clone()),
            Some(None) => {}
            None => return Ok(Arc::default()),
        }
        // The table did not shrink or grow past this page meanwhile (checked above); entries
        // a `set_len` added since are read by the next miss.
        if pages.entries != entries {
            return Ok(page);
        }
        self.make_room(&mut pages);
        pages.slots[slot] = Some(page.clone());
        pages.clean = pages.clean.saturating_add(1);
        Ok(page)
    }

    /// Evict clean pages until there is room for one more.
    fn make_room(&self, pages: &mut Pages) {
        let n = pages.slots.len();
        let mut looked = 0;
        while pages.clean >= self.max_clean && looked < n {
            let h = pages.hand % n.max(1);
            pages.hand = h.saturating_add(1);
            looked += 1;
            if !pages.pinned[h] && pages.slots[h].take().is_some() {
                pages.clean = pages.clean.saturating_sub(1);
            }
        }
    }

    /// Read page `p` of a table of `entries` entries from the file, checked.
    fn read_page(&self, p: u64, entries: u64) -> Result<Vec<u64>> {
        let first = p.saturating_mul(PAGE_ENTRIES);
        let count = entries.saturating_sub(first).min(PAGE_ENTRIES);
        let at = first
            .checked_mul(self.width.bytes())
            .and_then(|b| b.checked_add(self.offset))
            .unwrap_or(u64::MAX);
        let mut raw = vec![0u8; usize::try_from(count.saturating_mul(self.width.bytes())).unwrap_or(0)];
        self.storage
            .read_at(&mut raw, at)
            .io_context("reading a table page", at)
            .map_err(|e| e.in_structure(self.what))?;
        let mut page = self.width.decode(&raw);
        if let Some(check) = &self.check {
            check(first, &mut page);
        }
        Ok(page)
    }

    /// Set entry `i` to `value` in memory (the file is not written) and pin its page. An index
    /// past the end is ignored.
    pub fn set(&self, i: u64, value: u64) -> Result<()> {
        let p = i / PAGE_ENTRIES;
        let Ok(slot) = usize::try_from(p) else {
            return Ok(());
        };
        loop {
            // Make it resident (the copy returned is dropped at once, so the change below
            // does not have to copy the page).
            drop(self.page(p)?);
            let mut pages = write_lock(&self.pages);
            if i >= pages.entries {
                return Ok(());
            }
            // Evicted between the read and the lock: read it again.
            let Some(resident) = pages.slots[slot].as_mut() else {
                continue;
            };
            if let Some(e) = usize::try_from(i % PAGE_ENTRIES)
                .ok()
                .and_then(|k| Arc::make_mut(resident).get_mut(k))
            {
                *e = value;
            }
            if !pages.pinned[slot] {
                pages.pinned[slot] = true;
                pages.clean = pages.clean.saturating_sub(1);
            }
            return Ok(());
        }
    }

    /// Change the number of entries to `entries` (a resize). Entries added are read from the
    /// file when first asked for; the page that held the old last entry is read again unless
    /// it is pinned, in which case the entries it gains are read into it now.
    pub fn set_len(&self, entries: u64) -> Result<()> {
        let old = self.len();
        let last = old.div_ceil(PAGE_ENTRIES);
        // The old last page, completed from the file, when it grows and holds changes.
        let grown_tail = if entries > old && !old.is_multiple_of(PAGE_ENTRIES) {
            let p = old / PAGE_ENTRIES;
            let slot = usize::try_from(p).unwrap_or(usize::MAX);
            let pinned = read_lock(&self.pages).pinned.get(slot).copied().unwrap_or(false);
            if pinned {
                let full = self.read_page(p, entries)?;
                Some((slot, full))
            } else {
                None
            }
        } else {
            None
        };
        let mut pages = write_lock(&self.pages);
        let n = page_count(entries);
        pages.entries = entries;
        pages.slots.resize(n, None);
        pages.pinned.resize(n, false);
        if let Some(tail) = usize::try_from(last.saturating_sub(1)).ok().filter(|&t| t < n)
            && !pages.pinned[tail]
            && pages.slots[tail].take().is_some()
        {
            pages.clean = pages.clean.saturating_sub(1);
        }
        if let Some((slot, full)) = grown_tail
            && let Some(Some(page)) = pages.slots.get_mut(slot)
        {
            let have = page.len();
            Arc::make_mut(page).extend(full.iter().skip(have));
        }
        // Shrinking: entries past the end are dropped from the last page.
        let tail_len = usize::try_from(entries % PAGE_ENTRIES).unwrap_or(0);
        if entries < old
            && tail_len > 0
            && let Some(Some(page)) = pages.slots.get_mut(n.saturating_sub(1))
            && page.len() > tail_len
        {
            Arc::make_mut(page).truncate(tail_len);
        }
        pages.clean = pages
            .slots
            .iter()
            .zip(&pages.pinned)
            .filter(|(s, p)| s.is_some() && !**p)
            .count();
        Ok(())
    }

    /// Call `f` with (index of the first entry, entries) for every page in order: a scan of the
    /// whole table, bounded by its size in the file.
    pub fn for_each_page(&self, mut f: impl FnMut(u64, &[u64]) -> Result<()>) -> Result<()> {
        for p in 0..self.pages() {
            let page = self.page(p)?;
            f(p.saturating_mul(PAGE_ENTRIES), &page)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    fn table(entries: u64, max_clean: u64) -> (Arc<MemStorage>, PagedTable) {
        let mem = Arc::new(MemStorage::new());
        let bytes: Vec<u8> = (0..entries).flat_map(|i| (i * 3).to_le_bytes()).collect();
        mem.write_at(&bytes, 512).unwrap();
        let t = PagedTable::new(mem.clone(), 512, entries, EntryWidth::U64Le, "test table", max_clean);
        (mem, t)
    }

    #[test]
    fn reads_pages_on_demand_within_the_bound() {
        let (_, t) = table(10 * PAGE_ENTRIES + 5, 2 * PAGE_ENTRIES * 8);
        assert_eq!(t.resident_bytes(), 0);
        for i in (0..t.len()).step_by(1000) {
            assert_eq!(t.get(i).unwrap(), i * 3);
        }
        assert_eq!(t.get(t.len() - 1).unwrap(), (t.len() - 1) * 3);
        assert_eq!(t.get(t.len()).unwrap(), 0);
        assert!(t.resident_bytes() <= 2 * PAGE_ENTRIES * 8);
    }

    #[test]
    fn pinned_pages_keep_changes_across_eviction() {
        let (_, t) = table(8 * PAGE_ENTRIES, PAGE_ENTRIES * 8);
        t.set(5, 77).unwrap();
        t.set(3 * PAGE_ENTRIES + 1, 99).unwrap();
        for i in (0..t.len()).step_by(100) {
            t.get(i).unwrap();
        }
        assert_eq!(t.get(5).unwrap(), 77);
        assert_eq!(t.get(3 * PAGE_ENTRIES + 1).unwrap(), 99);
        assert_eq!(t.get(6).unwrap(), 18);
    }

    #[test]
    fn check_sees_every_entry_read() {
        let (_, t) = table(PAGE_ENTRIES + 3, 1 << 20);
        let t = t.with_check(Box::new(|first, page| {
            for (i, e) in (first..).zip(page.iter_mut()) {
                if i % 2 == 1 {
                    *e = u64::MAX;
                }
            }
        }));
        assert_eq!(t.get(2).unwrap(), 6);
        assert_eq!(t.get(PAGE_ENTRIES + 1).unwrap(), u64::MAX);
    }

    #[test]
    fn grows_and_shrinks() {
        let (mem, t) = table(2 * PAGE_ENTRIES + 10, 1 << 20);
        let more: Vec<u8> = (2 * PAGE_ENTRIES + 10..3 * PAGE_ENTRIES)
            .flat_map(|i| (i * 3).to_le_bytes())
            .collect();
        mem.write_at(&more, 512 + (2 * PAGE_ENTRIES + 10) * 8).unwrap();
        t.set(2 * PAGE_ENTRIES + 1, 5).unwrap();
        assert_eq!(t.get(2 * PAGE_ENTRIES + 20).unwrap(), 0);
        t.set_len(3 * PAGE_ENTRIES).unwrap();
        assert_eq!(t.get(2 * PAGE_ENTRIES + 1).unwrap(), 5);
        assert_eq!(t.get(2 * PAGE_ENTRIES + 20).unwrap(), (2 * PAGE_ENTRIES + 20) * 3);
        t.set_len(PAGE_ENTRIES + 1).unwrap();
        assert_eq!(t.get(PAGE_ENTRIES + 1).unwrap(), 0);
        assert_eq!(t.get(PAGE_ENTRIES).unwrap(), PAGE_ENTRIES * 3);
        let mut seen = 0;
        t.for_each_page(|_, p| {
            seen += p.len();
            Ok(())
        })
        .unwrap();
        assert_eq!(seen as u64, PAGE_ENTRIES + 1);
    }

    #[test]
    fn a_read_error_names_the_table() {
        let mem = Arc::new(MemStorage::new());
        let t = PagedTable::new(mem, 0, 10, EntryWidth::U32Be, "BAT", 1 << 20);
        let e = t.get(0).unwrap_err();
        assert!(e.to_string().contains("BAT"), "{e}");
    }
}
