//! The BAT: read in pages on demand ([`PagedTable`]), every entry checked before use, and the
//! space map of the image built from it.
//!
//! A writable open (and a read-only open of a BAT of at most [`EAGER_SURVEY_BYTES`](disk_core::table::EAGER_SURVEY_BYTES)) surveys
//! the whole BAT: every structure and stored block is recorded in a [`SpaceMap`], and a block
//! that lies past the end of the file or on space already recorded (the header section, the
//! log, the metadata region, the BAT, another block) is unusable: its in-memory entry becomes
//! [`INVALID_ENTRY`] (reads of it fail, writes never go through it), the problem is kept for
//! `check`, and a writable open is refused unless the caller asked for repair.
//!
//! A read-only open of a larger BAT records only the image's own structures and checks each
//! entry when its page is first read ([`entry_check`]): past the end of the file or on a
//! structure makes it unusable, as above. Two blocks that overlap each other are then found
//! only by `check` (which surveys the whole BAT); reading them reads the image's own bytes.

#![warn(clippy::arithmetic_side_effects)]

use crate::format::*;
use crate::geometry::{EntryKind, Geometry};
use crate::parse::{Metadata, Regions};
use disk_core::table::{EntryCheck, EntryWidth, PagedTable};
use disk_core::{Error, Findings, Result, SpaceKind, SpaceMap, Storage};
use std::sync::Arc;

/// State written into the in-memory copy of a BAT entry found unusable on open: reads of its
/// block fail (the value is a reserved state, never written to the file).
pub(crate) const INVALID_ENTRY: u64 = payload::RESERVED[0] as u64;

/// Bytes of unchanged BAT pages kept in memory.
pub(crate) const BAT_CACHE_BYTES: u64 = 16 * MIB;

/// The `entries` BAT entries at `offset` of a file of `file_len` bytes, as a table read on
/// demand (bounds checked here, nothing read yet).
pub(crate) fn table(io: Arc<dyn Storage>, file_len: u64, offset: u64, entries: u64) -> Result<PagedTable> {
    let bytes = entries
        .checked_mul(8)
        .ok_or_else(|| Error::corrupt("BAT too large").in_structure("BAT"))?;
    if offset.checked_add(bytes).is_none_or(|end| end > file_len) {
        return Err(Error::corrupt(format!(
            "{bytes} bytes at {offset:#x} lie past the end of the file ({file_len} bytes)"
        ))
        .in_structure("BAT")
        .at_offset(offset));
    }
    Ok(PagedTable::new(
        io,
        offset,
        entries,
        EntryWidth::U64Le,
        "BAT",
        BAT_CACHE_BYTES,
    ))
}

/// Bytes payload block `block` stored at `off` occupies in a file of `file_len` bytes: the
/// whole block when the file holds it; a short last block may end the file.
fn stored_len(g: &Geometry, block: u64, off: u64, file_len: u64) -> u64 {
    if off.checked_add(g.block_size).is_some_and(|end| end <= file_len) {
        g.block_size
    } else {
        g.block_bytes(block)
    }
}

/// The block a BAT entry names, as problems name it.
#[derive(Debug, Clone, Copy)]
enum Named {
    Payload(u64),
    Bitmap(u64),
}

impl std::fmt::Display for Named {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Named::Payload(block) => write!(f, "payload block {block}"),
            Named::Bitmap(chunk) => write!(f, "sector bitmap block {chunk}"),
        }
    }
}

/// What BAT entry `i` (`e`) needs of a file of `file_len` bytes: one rule for the survey and
/// for entries checked as their page is read.
enum Need {
    /// Nothing (not stored; a sector bitmap entry of a disk without a parent).
    Nothing,
    /// Its space: a stored payload block or sector bitmap block, at `off` for `len` bytes.
    Space {
        off: u64,
        len: u64,
        kind: SpaceKind,
        named: Named,
    },
    /// Unusable whatever the file holds; why.
    Bad(String),
}

fn need(g: &Geometry, i: u64, e: u64, file_len: u64) -> Need {
    match g.entry_kind(i) {
        EntryKind::Payload(block) => match bat_state(e) {
            payload::NOT_PRESENT | payload::UNDEFINED | payload::ZERO | payload::UNMAPPED => Need::Nothing,
            payload::PARTIALLY_PRESENT if !g.has_parent => {
                Need::Bad("is partially present in a disk without a parent".into())
            }
            payload::FULLY_PRESENT | payload::PARTIALLY_PRESENT => {
                let off = bat_offset(e);
                Need::Space {
                    off,
                    len: stored_len(g, block, off, file_len),
                    kind: SpaceKind::Data,
                    named: Named::Payload(block),
                }
            }
            s => Need::Bad(format!("({}) has invalid state {s}", Named::Payload(block))),
        },
        // Sector bitmap entries mean nothing without a parent.
        EntryKind::Bitmap(_) if !g.has_parent => Need::Nothing,
        EntryKind::Bitmap(chunk) => match bat_state(e) {
            bitmap::NOT_PRESENT => Need::Nothing,
            bitmap::PRESENT => Need::Space {
                off: bat_offset(e),
                len: MIB,
                kind: SpaceKind::Bitmap,
                named: Named::Bitmap(chunk),
            },
            s => Need::Bad(format!("({}) has invalid state {s}", Named::Bitmap(chunk))),
        },
    }
}

/// The check a BAT read page by page applies to every entry (see the module docs): the entry,
/// or [`INVALID_ENTRY`] when its block or sector bitmap lies past the end of the file or on
/// one of the `structures`, or its state is invalid.
pub(crate) fn entry_check(g: Geometry, structures: SpaceMap) -> EntryCheck {
    let file_len = structures.file_len();
    Box::new(move |first, page| {
        for (i, e) in (first..).zip(page.iter_mut()) {
            // Not present (0 for payload and sector bitmap entries alike) is always usable.
            if bat_state(*e) == payload::NOT_PRESENT {
                continue;
            }
            let usable = match need(&g, i, *e, file_len) {
                Need::Nothing => true,
                Need::Bad(_) => false,
                Need::Space { off, len, kind, .. } => structures.check(off, len, kind).is_ok(),
            };
            if !usable {
                *e = INVALID_ENTRY;
            }
        }
    })
}

/// What the space map found on open.
pub(crate) struct Survey {
    /// Every structure and usable block of the image.
    pub space: SpaceMap,
    /// The problems found (entries made unusable, structures overlapping).
    pub problems: Findings,
    /// The first overlap between the image's own structures (header section, log, metadata,
    /// BAT): no repair of BAT entries fixes that, so writes stay refused.
    pub structural: Option<String>,
}

impl Survey {
    /// Refuse writes while there are problems: the first one (which names the BAT entry, the
    /// structure, its offset and what it overlaps), as an [`ErrorKind::Corrupt`] error.
    pub fn refuse_writes(&self) -> Result<()> {
        let Some(first) = self.problems.first() else {
            return Ok(());
        };
        let conflict = self
            .space
            .conflicts()
            .first()
            .filter(|c| first.ends_with(&c.to_string()));
        let e = disk_core::space::writes_refused(first, self.problems.count(), conflict);
        Err(if conflict.is_some() { e } else { e.in_structure("BAT") })
    }
}

/// End of the region tables; the header section's reserved space follows.
const REGION_TABLES_END: u64 = REGION_TABLE2_OFFSET + REGION_TABLE_SIZE as u64;

/// How the message of a problem with one BAT entry starts (other problems are structures that
/// overlap).
pub(crate) const ENTRY_PROBLEM: &str = "BAT entry ";

/// Problems found while surveying, and the entries made unusable.
struct Marker<'a> {
    bat: &'a PagedTable,
    problems: Findings,
    regions: &'a Regions,
}

impl Marker<'_> {
    /// Mark BAT entry `i` unusable, saying why.
    fn bad(&mut self, i: u64, what: String) -> Result<()> {
        let at = i.saturating_mul(8).saturating_add(self.regions.bat.offset);
        self.problems.push(format!("{ENTRY_PROBLEM}{i} (at {at:#x}) {what}"));
        self.bat.set(i, INVALID_ENTRY)
    }
}

/// Every (index, entry) of the BAT, a page at a time (bounded by the BAT's size in the file).
fn scan(bat: &PagedTable, mut f: impl FnMut(u64, u64) -> Result<()>) -> Result<()> {
    bat.for_each_page(|first, entries| {
        for (i, &e) in (first..).zip(entries) {
            f(i, e)?;
        }
        Ok(())
    })
}

/// The image's own structures (header section, region tables, log, metadata region, BAT)
/// recorded in a new space map of a file of `file_len` bytes, with the overlaps among them
/// (problems, and the first one as the structural problem). `log` is the header's log
/// (offset, length).
pub(crate) fn structures(regions: &Regions, log: (u64, u64), file_len: u64) -> (SpaceMap, Findings, Option<String>) {
    let mut space = SpaceMap::new(file_len);
    let mut problems = Findings::new();
    let mut structural = None;
    let list = [
        (0, REGION_TABLE1_OFFSET, SpaceKind::Header),
        (
            REGION_TABLE1_OFFSET,
            REGION_TABLES_END - REGION_TABLE1_OFFSET,
            SpaceKind::RegionTable,
        ),
        (
            REGION_TABLES_END,
            HEADER_SECTION_SIZE - REGION_TABLES_END,
            SpaceKind::Header,
        ),
        (log.0, log.1, SpaceKind::Log),
        (regions.metadata.offset, regions.metadata.length, SpaceKind::Metadata),
        (regions.bat.offset, regions.bat.length, SpaceKind::Bat),
    ];
    for (start, len, kind) in list {
        if let Err(c) = space.claim(start, len, kind) {
            problems.push(c.to_string());
            structural.get_or_insert_with(|| c.to_string());
            space.note(c);
        }
    }
    (space, problems, structural)
}

/// Record the image's structures and every block its BAT stores in a new space map of a file
/// of `file_len` bytes, marking the entries of blocks that cannot be used [`INVALID_ENTRY`] in
/// `bat` (whose entries are read unchecked). `log` is the header's log (offset, length). Reads
/// the whole BAT, a page at a time: a few passes over it, bounded by its size in the file.
pub(crate) fn survey(
    bat: &PagedTable,
    g: &Geometry,
    meta: &Metadata,
    regions: &Regions,
    log: (u64, u64),
    file_len: u64,
) -> Result<Survey> {
    let (mut space, problems, structural) = structures(regions, log, file_len);
    let mut m = Marker { bat, problems, regions };
    // Whether the last pass has anything to do.
    let mut later = false;
    // Payload blocks first, then (with a parent) sector bitmap blocks: when two overlap, the
    // one recorded later is the unusable one.
    for bitmaps in [false, true] {
        if bitmaps && !meta.has_parent {
            break;
        }
        scan(bat, |i, e| {
            // Not present (0 for payload and sector bitmap entries alike) needs nothing.
            if bat_state(e) == payload::NOT_PRESENT || matches!(g.entry_kind(i), EntryKind::Bitmap(_)) != bitmaps {
                return Ok(());
            }
            later |= !bitmaps
                && match bat_state(e) {
                    payload::UNDEFINED | payload::ZERO | payload::UNMAPPED => bat_offset(e) >= HEADER_SECTION_SIZE,
                    s => s == payload::PARTIALLY_PRESENT,
                };
            match need(g, i, e, file_len) {
                Need::Nothing => Ok(()),
                Need::Bad(why) => m.bad(i, why),
                Need::Space { off, len, kind, named } => match space.claim(off, len, kind) {
                    Ok(()) => Ok(()),
                    Err(c) => {
                        space.note(c);
                        m.bad(i, format!("({named}): {c}"))
                    }
                },
            }
        })?;
    }
    // The space that blocks not stored (zero, unmapped, undefined) still name, where it is
    // free: the specification lets an unmapped block keep its space, which is then not leaked.
    // After every stored block, and never a problem (the engine does not use these offsets).
    // Sector bitmap entries mean nothing without a parent; with one, a partially present block
    // needs a usable sector bitmap (its space stays recorded: nothing else may go there until
    // a repair drops it).
    if !later {
        return Ok(Survey {
            space,
            problems: m.problems,
            structural,
        });
    }
    scan(bat, |i, e| {
        let EntryKind::Payload(block) = g.entry_kind(i) else {
            return Ok(());
        };
        let off = bat_offset(e);
        match bat_state(e) {
            payload::ZERO | payload::UNMAPPED | payload::UNDEFINED if off >= HEADER_SECTION_SIZE => {
                let len = g.block_size.min(file_len.saturating_sub(off));
                let _ = space.claim(off, len, SpaceKind::Data);
                Ok(())
            }
            payload::PARTIALLY_PRESENT
                if meta.has_parent
                    && bat_state(bat.get(g.bitmap_index(block.checked_div(g.chunk_ratio).unwrap_or(0)) as u64)?)
                        != bitmap::PRESENT =>
            {
                m.bad(
                    i,
                    format!("(payload block {block}) is partially present without a usable sector bitmap"),
                )
            }
            _ => Ok(()),
        }
    })?;
    Ok(Survey {
        space,
        problems: m.problems,
        structural,
    })
}
