//! The space map: which byte ranges of an image file hold what.
//!
//! Every engine fills one [`SpaceMap`] on open from the structures it parsed (headers, tables,
//! data blocks). A range that reaches past the end of the file or lands on a range already
//! recorded is a [`Conflict`]: the engine marks the entry that named it as unusable (reads of it
//! fail, writes never go through it), a writable open is refused unless the caller asked for
//! repair, and `check` reports it. New allocations come from the map ([`SpaceMap::allocate`]),
//! so data can never land on metadata or on live data.
//!
//! Memory is bounded by the file, not by what the image claims: recorded ranges never overlap
//! and lie inside the file, adjacent ranges of the same kind are merged, and at most
//! [`MAX_CONFLICT_DETAILS`] conflicts are kept in detail (the rest are only counted).

#![deny(clippy::arithmetic_side_effects)]

use crate::error::{Error, ErrorKind};
use std::collections::BTreeMap;
use std::fmt;

/// How many conflicts a [`SpaceMap`] keeps in detail; further ones are counted only.
pub const MAX_CONFLICT_DETAILS: usize = 100;

/// What a range of the image file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SpaceKind {
    /// A file header (VHDX file identifier and headers, VMDK sparse header, VHD dynamic header).
    Header,
    /// A footer or a footer copy (VHD), a stream footer (VMDK).
    Footer,
    /// The VHDX region table.
    RegionTable,
    /// The VHDX log.
    Log,
    /// The VHDX metadata region.
    Metadata,
    /// A block allocation table (VHD BAT, VHDX BAT region).
    Bat,
    /// A VMDK grain directory (or its redundant copy).
    GrainDirectory,
    /// A VMDK grain table.
    GrainTable,
    /// A sector bitmap (VHD block bitmap, VHDX sector bitmap block).
    Bitmap,
    /// A data block or grain.
    Data,
    /// The embedded VMDK descriptor.
    Descriptor,
    /// A parent locator's payload (VHD).
    ParentLocator,
}

impl SpaceKind {
    /// The structure's name as messages show it.
    pub fn name(self) -> &'static str {
        match self {
            SpaceKind::Header => "header",
            SpaceKind::Footer => "footer",
            SpaceKind::RegionTable => "region table",
            SpaceKind::Log => "log",
            SpaceKind::Metadata => "metadata region",
            SpaceKind::Bat => "BAT",
            SpaceKind::GrainDirectory => "grain directory",
            SpaceKind::GrainTable => "grain table",
            SpaceKind::Bitmap => "sector bitmap",
            SpaceKind::Data => "data block",
            SpaceKind::Descriptor => "descriptor",
            SpaceKind::ParentLocator => "parent locator",
        }
    }
}

impl fmt::Display for SpaceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One recorded range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpaceRange {
    /// First byte.
    pub start: u64,
    /// Length in bytes (never 0).
    pub len: u64,
    /// What it holds.
    pub kind: SpaceKind,
}

impl SpaceRange {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }
}

/// Why a range could not be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    /// The range reaches past the end of the file (or past `u64::MAX`).
    PastEnd {
        /// The range that was refused.
        range: SpaceRange,
        /// The file's length.
        file_len: u64,
    },
    /// The range overlaps one recorded before.
    Overlap {
        /// The range that was refused.
        range: SpaceRange,
        /// The recorded range it overlaps (the first one, by offset).
        with: SpaceRange,
    },
}

impl Conflict {
    /// The range that was refused.
    pub fn range(&self) -> SpaceRange {
        match *self {
            Conflict::PastEnd { range, .. } | Conflict::Overlap { range, .. } => range,
        }
    }

    /// As an [`ErrorKind::Corrupt`] error naming the structure, its offset and what it overlaps.
    pub fn to_error(&self) -> Error {
        let range = self.range();
        Error::new(ErrorKind::Corrupt, self.to_string())
            .in_structure(range.kind.name())
            .at_offset(range.start)
    }
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Conflict::PastEnd { range, file_len } => write!(
                f,
                "{} at {:#x} (length {:#x}) lies past the end of the file ({:#x})",
                range.kind, range.start, range.len, file_len
            ),
            Conflict::Overlap { range, with } => write!(
                f,
                "{} at {:#x} (length {:#x}) overlaps the {} at {:#x} (length {:#x})",
                range.kind, range.start, range.len, with.kind, with.start, with.len
            ),
        }
    }
}

impl From<Conflict> for Error {
    fn from(c: Conflict) -> Self {
        c.to_error()
    }
}

/// The error a writable open returns for an image with `count` (at least 1) space problems, the
/// first described by `first`: [`ErrorKind::Corrupt`], naming the structure and offset of
/// `conflict` when the first problem is one, and saying how to repair.
pub fn writes_refused(first: &str, count: u64, conflict: Option<&Conflict>) -> Error {
    let more = count.saturating_sub(1);
    let also = if more > 0 {
        format!(" (and {more} more)")
    } else {
        String::new()
    };
    let e = Error::new(ErrorKind::Corrupt, format!("{first}{also}; run check -r all to repair"));
    match conflict {
        Some(c) => e.in_structure(c.range().kind.name()).at_offset(c.range().start),
        None => e,
    }
}

/// The ranges of one image file that are in use, each tagged with what it holds.
#[derive(Debug, Clone)]
pub struct SpaceMap {
    /// The file's length in bytes (grows with [`SpaceMap::allocate`]).
    file_len: u64,
    /// Recorded ranges by start: `start -> (end, kind)`, never overlapping.
    ranges: BTreeMap<u64, (u64, SpaceKind)>,
    /// The first conflicts found by [`SpaceMap::claim_or_note`].
    conflicts: Vec<Conflict>,
    /// How many conflicts were found in all.
    conflict_count: u64,
}

impl SpaceMap {
    /// An empty map of a file of `file_len` bytes.
    pub fn new(file_len: u64) -> Self {
        SpaceMap {
            file_len,
            ranges: BTreeMap::new(),
            conflicts: Vec::new(),
            conflict_count: 0,
        }
    }

    /// The file's length as the map knows it.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Tell the map the file's length changed (e.g. after a truncation the engine did itself).
    pub fn set_file_len(&mut self, len: u64) {
        self.file_len = len;
    }

    /// Whether `[start, start + len)` could be recorded: inside the file and free.
    pub fn check(&self, start: u64, len: u64, kind: SpaceKind) -> Result<(), Conflict> {
        let range = SpaceRange { start, len, kind };
        let end = match start.checked_add(len) {
            Some(end) if end <= self.file_len => end,
            _ => {
                return Err(Conflict::PastEnd {
                    range,
                    file_len: self.file_len,
                });
            }
        };
        if len == 0 {
            return Ok(());
        }
        if let Some(with) = self.first_overlap(start, end) {
            return Err(Conflict::Overlap { range, with });
        }
        Ok(())
    }

    /// The recorded range with the lowest start that overlaps `[start, end)`.
    fn first_overlap(&self, start: u64, end: u64) -> Option<SpaceRange> {
        // A range starting before `start` overlaps if it ends after it.
        if let Some((&s, &(e, kind))) = self.ranges.range(..start).next_back()
            && e > start
        {
            return Some(SpaceRange {
                start: s,
                len: e.saturating_sub(s),
                kind,
            });
        }
        self.ranges.range(start..end).next().map(|(&s, &(e, kind))| SpaceRange {
            start: s,
            len: e.saturating_sub(s),
            kind,
        })
    }

    /// Record `[start, start + len)` as holding `kind`, or say why it cannot be (nothing is
    /// recorded then). Empty ranges are accepted and not recorded.
    pub fn claim(&mut self, start: u64, len: u64, kind: SpaceKind) -> Result<(), Conflict> {
        self.check(start, len, kind)?;
        if len > 0 {
            self.insert(start, start.saturating_add(len), kind);
        }
        Ok(())
    }

    /// [`SpaceMap::claim`], remembering a conflict for [`SpaceMap::conflicts`] instead of
    /// returning it. Returns whether the range was recorded.
    pub fn claim_or_note(&mut self, start: u64, len: u64, kind: SpaceKind) -> bool {
        match self.claim(start, len, kind) {
            Ok(()) => true,
            Err(conflict) => {
                self.note(conflict);
                false
            }
        }
    }

    /// Remember a conflict the engine found itself.
    pub fn note(&mut self, conflict: Conflict) {
        self.conflict_count = self.conflict_count.saturating_add(1);
        if self.conflicts.len() < MAX_CONFLICT_DETAILS {
            self.conflicts.push(conflict);
        }
    }

    /// The first conflicts noted (at most [`MAX_CONFLICT_DETAILS`]).
    pub fn conflicts(&self) -> &[Conflict] {
        &self.conflicts
    }

    /// How many conflicts were noted in all.
    pub fn conflict_count(&self) -> u64 {
        self.conflict_count
    }

    /// Forget the noted conflicts (after a repair dropped the entries that caused them).
    pub fn clear_conflicts(&mut self) {
        self.conflicts.clear();
        self.conflict_count = 0;
    }

    /// Refuse a writable open of an image with conflicts: the first one as an
    /// [`ErrorKind::Corrupt`] error (with the count of the others), unless there are none.
    pub fn refuse_writes_if_conflicted(&self) -> crate::Result<()> {
        match self.conflicts.first() {
            None => Ok(()),
            Some(first) => Err(writes_refused(&first.to_string(), self.conflict_count, Some(first))),
        }
    }

    /// Insert without checks, merging with same-kind neighbours.
    fn insert(&mut self, mut start: u64, mut end: u64, kind: SpaceKind) {
        if let Some((&s, &(e, k))) = self.ranges.range(..start).next_back()
            && e == start
            && k == kind
        {
            self.ranges.remove(&s);
            start = s;
        }
        if let Some(&(e, k)) = self.ranges.get(&end)
            && k == kind
        {
            self.ranges.remove(&end);
            end = e;
        }
        self.ranges.insert(start, (end, kind));
    }

    /// Forget whatever is recorded in `[start, start + len)` (freed blocks, dropped entries).
    pub fn release(&mut self, start: u64, len: u64) {
        let end = start.saturating_add(len);
        if len == 0 {
            return;
        }
        let mut touched: Vec<(u64, u64, SpaceKind)> = Vec::new();
        if let Some((&s, &(e, k))) = self.ranges.range(..start).next_back()
            && e > start
        {
            touched.push((s, e, k));
        }
        touched.extend(self.ranges.range(start..end).map(|(&s, &(e, k))| (s, e, k)));
        for (s, e, k) in touched {
            self.ranges.remove(&s);
            if s < start {
                self.ranges.insert(s, (start, k));
            }
            if e > end {
                self.ranges.insert(end, (e, k));
            }
        }
    }

    /// One past the last recorded byte (0 for an empty map).
    pub fn used_end(&self) -> u64 {
        self.ranges.iter().next_back().map_or(0, |(_, &(e, _))| e)
    }

    /// Allocate `len` bytes at the end of the space in use (after both the file's end and the
    /// last recorded range), aligned to `align` (a power of two, or 1), record them as `kind`
    /// and grow the map's idea of the file length. Returns the offset, or an error when the
    /// file would pass `limit` bytes (the format's or the caller's bound).
    pub fn allocate(&mut self, len: u64, align: u64, kind: SpaceKind, limit: u64) -> crate::Result<u64> {
        let base = self.file_len.max(self.used_end());
        let align = align.max(1);
        let start = base
            .checked_next_multiple_of(align)
            .filter(|s| s.checked_add(len).is_some_and(|e| e <= limit))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Unsupported,
                    format!("allocating {len:#x} bytes after {base:#x} would pass the file size limit {limit:#x}"),
                )
            })?;
        self.file_len = start.saturating_add(len);
        self.insert(start, start.saturating_add(len), kind);
        Ok(start)
    }

    /// The recorded ranges, in file order (adjacent ranges of one kind come merged).
    pub fn ranges(&self) -> impl Iterator<Item = SpaceRange> + '_ {
        self.ranges.iter().map(|(&s, &(e, kind))| SpaceRange {
            start: s,
            len: e.saturating_sub(s),
            kind,
        })
    }

    /// The unrecorded ranges inside `[from, to)`, in file order: leaked space when the map
    /// records everything the image uses.
    pub fn gaps(&self, from: u64, to: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut pos = from;
        let mut iter = self.ranges.range(..to).filter(move |(_, (e, _))| *e > from);
        std::iter::from_fn(move || {
            loop {
                if pos >= to {
                    return None;
                }
                match iter.next() {
                    Some((&s, &(e, _))) => {
                        let gap = (s > pos).then_some((pos, s.min(to).saturating_sub(pos)));
                        pos = pos.max(e);
                        if gap.is_some() {
                            return gap;
                        }
                    }
                    None => {
                        let gap = (pos, to.saturating_sub(pos));
                        pos = to;
                        return Some(gap);
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_overlaps_and_past_end() {
        let mut m = SpaceMap::new(10_000);
        m.claim(0, 512, SpaceKind::Header).unwrap();
        m.claim(512, 1024, SpaceKind::Bat).unwrap();
        m.claim(4096, 4096, SpaceKind::Data).unwrap();
        // Overlap at the start, in the middle, containing, and exact.
        for (s, l) in [(4000, 200), (5000, 10), (3000, 6000), (4096, 4096), (1000, 100)] {
            let c = m.claim(s, l, SpaceKind::Data).unwrap_err();
            assert!(matches!(c, Conflict::Overlap { .. }), "{s} {l}");
        }
        let c = m.claim(9000, 2000, SpaceKind::Data).unwrap_err();
        assert!(matches!(c, Conflict::PastEnd { .. }));
        let c = m.claim(u64::MAX - 1, 4, SpaceKind::Data).unwrap_err();
        assert!(matches!(c, Conflict::PastEnd { .. }));
        let e = m.claim(600, 1, SpaceKind::Data).unwrap_err().to_error();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert!(e.to_string().contains("overlaps the BAT at 0x200"), "{e}");
        m.claim(8192, 512, SpaceKind::Data).unwrap();
        // Merged with its neighbour of the same kind.
        assert_eq!(m.ranges().count(), 3);
    }

    #[test]
    fn gaps_release_and_allocate() {
        let mut m = SpaceMap::new(10_000);
        m.claim(0, 100, SpaceKind::Header).unwrap();
        m.claim(200, 100, SpaceKind::Data).unwrap();
        m.claim(300, 100, SpaceKind::Data).unwrap();
        let gaps: Vec<_> = m.gaps(0, 1000).collect();
        assert_eq!(gaps, vec![(100, 100), (400, 600)]);
        m.release(250, 100);
        let gaps: Vec<_> = m.gaps(0, 1000).collect();
        assert_eq!(gaps, vec![(100, 100), (250, 100), (400, 600)]);
        assert_eq!(m.gaps(150, 260).collect::<Vec<_>>(), vec![(150, 50), (250, 10)]);
        let at = m.allocate(4096, 4096, SpaceKind::Data, u64::MAX).unwrap();
        assert_eq!(at, 12288);
        assert_eq!(m.file_len(), 16384);
        assert!(m.allocate(4096, 4096, SpaceKind::Data, 16384).is_err());
    }

    #[test]
    fn conflicts_are_bounded() {
        let mut m = SpaceMap::new(512);
        for i in 0..1000 {
            assert!(!m.claim_or_note(1024 + i, 1, SpaceKind::Data));
        }
        assert_eq!(m.conflicts().len(), MAX_CONFLICT_DETAILS);
        assert_eq!(m.conflict_count(), 1000);
        let e = m.refuse_writes_if_conflicted().unwrap_err();
        assert!(e.to_string().contains("and 999 more"), "{e}");
    }
}
