//! The BAT on open: read once, straight into its in-memory form, then every entry checked and
//! every structure and stored block recorded in a [`SpaceMap`].
//!
//! A block that lies past the end of the file or on space already recorded (the header section,
//! the log, the metadata region, the BAT, another block) is unusable: its in-memory entry
//! becomes [`INVALID_ENTRY`] (reads of it fail, writes never go through it), the problem is
//! kept for `check`, and a writable open is refused unless the caller asked for repair.

#![warn(clippy::arithmetic_side_effects)]

use crate::format::*;
use crate::geometry::Geometry;
use crate::parse::{Metadata, Regions};
use disk_core::{Error, Findings, IoResultExt, Result, SpaceKind, SpaceMap, Storage};
use zerocopy::IntoBytes;

/// State written into the in-memory copy of a BAT entry found unusable on open: reads of its
/// block fail (the value is a reserved state, never written to the file).
pub(crate) const INVALID_ENTRY: u64 = payload::RESERVED[0] as u64;

/// Read the `entries` BAT entries at `offset` (bounded by the file, one buffer).
pub(crate) fn read_bat(io: &dyn Storage, file_len: u64, offset: u64, entries: u64) -> Result<Vec<u64>> {
    let bytes = entries
        .checked_mul(8)
        .ok_or_else(|| Error::corrupt("BAT too large").in_structure("BAT"))?;
    // Bounds checked before allocating.
    if offset.checked_add(bytes).is_none_or(|end| end > file_len) {
        return Err(Error::corrupt(format!(
            "{bytes} bytes at {offset:#x} lie past the end of the file ({file_len} bytes)"
        ))
        .in_structure("BAT")
        .at_offset(offset));
    }
    let n = usize::try_from(entries).map_err(|_| Error::unsupported("BAT too large").in_structure("BAT"))?;
    let mut bat = vec![0u64; n];
    io.read_at(bat.as_mut_bytes(), offset)
        .io_context("reading the BAT", offset)
        .map_err(|e| e.in_structure("BAT"))?;
    for e in &mut bat {
        *e = u64::from_le(*e);
    }
    Ok(bat)
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

/// Record the space that blocks not stored (zero, unmapped, undefined) still name, where it is
/// free: the specification lets an unmapped block keep its space, which is then not leaked.
/// After every stored block, and never a problem (the engine does not use these offsets).
fn claim_retained(space: &mut SpaceMap, bat: &[u64], g: &Geometry, file_len: u64) {
    for block in 0..g.data_blocks {
        let e = bat[g.payload_index(block)];
        let off = bat_offset(e);
        let retains = matches!(bat_state(e), payload::ZERO | payload::UNMAPPED | payload::UNDEFINED);
        if retains && off >= HEADER_SECTION_SIZE {
            let len = g.block_size.min(file_len.saturating_sub(off));
            let _ = space.claim(off, len, SpaceKind::Data);
        }
    }
}

/// How the message of a problem with one BAT entry starts (other problems are structures that
/// overlap).
pub(crate) const ENTRY_PROBLEM: &str = "BAT entry ";

/// Mark BAT entry `i` unusable, saying why.
fn bad(bat: &mut [u64], problems: &mut Findings, regions: &Regions, i: usize, what: String) {
    let at = (i as u64).saturating_mul(8).saturating_add(regions.bat.offset);
    problems.push(format!("{ENTRY_PROBLEM}{i} (at {at:#x}) {what}"));
    bat[i] = INVALID_ENTRY;
}

/// Record the image's structures and every block its BAT stores in a new space map of a file of
/// `file_len` bytes, marking the entries of blocks that cannot be used [`INVALID_ENTRY`] in
/// `bat`. `log` is the header's log (offset, length).
pub(crate) fn survey(
    bat: &mut [u64],
    g: &Geometry,
    meta: &Metadata,
    regions: &Regions,
    log: (u64, u64),
    file_len: u64,
) -> Survey {
    let mut space = SpaceMap::new(file_len);
    let mut problems = Findings::new();
    let mut structural = None;
    let structures = [
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
    for (start, len, kind) in structures {
        if let Err(c) = space.claim(start, len, kind) {
            problems.push(c.to_string());
            structural.get_or_insert_with(|| c.to_string());
            space.note(c);
        }
    }
    for block in 0..g.data_blocks {
        let i = g.payload_index(block);
        let e = bat[i];
        match bat_state(e) {
            payload::NOT_PRESENT | payload::UNDEFINED | payload::ZERO | payload::UNMAPPED => {}
            s @ (payload::FULLY_PRESENT | payload::PARTIALLY_PRESENT) => {
                if s == payload::PARTIALLY_PRESENT && !meta.has_parent {
                    bad(
                        bat,
                        &mut problems,
                        regions,
                        i,
                        "is partially present in a disk without a parent".into(),
                    );
                    continue;
                }
                let off = bat_offset(e);
                // The whole block when the file holds it; a short last block may end the file.
                let len = if off.checked_add(g.block_size).is_some_and(|end| end <= file_len) {
                    g.block_size
                } else {
                    g.block_bytes(block)
                };
                if let Err(c) = space.claim(off, len, SpaceKind::Data) {
                    bad(bat, &mut problems, regions, i, format!("(payload block {block}): {c}"));
                    space.note(c);
                }
            }
            s => bad(
                bat,
                &mut problems,
                regions,
                i,
                format!("(payload block {block}) has invalid state {s}"),
            ),
        }
    }
    if !meta.has_parent {
        // Sector bitmap entries mean nothing without a parent.
        claim_retained(&mut space, bat, g, file_len);
        return Survey {
            space,
            problems,
            structural,
        };
    }
    for chunk in 0..g.bitmap_blocks {
        let i = g.bitmap_index(chunk);
        let e = bat[i];
        match bat_state(e) {
            bitmap::NOT_PRESENT => {}
            bitmap::PRESENT => {
                if let Err(c) = space.claim(bat_offset(e), MIB, SpaceKind::Bitmap) {
                    bad(
                        bat,
                        &mut problems,
                        regions,
                        i,
                        format!("(sector bitmap block {chunk}): {c}"),
                    );
                    space.note(c);
                }
            }
            s => bad(
                bat,
                &mut problems,
                regions,
                i,
                format!("(sector bitmap block {chunk}) has invalid state {s}"),
            ),
        }
    }
    claim_retained(&mut space, bat, g, file_len);
    for block in 0..g.data_blocks {
        let i = g.payload_index(block);
        let chunk = block.checked_div(g.chunk_ratio).unwrap_or(0);
        if bat_state(bat[i]) == payload::PARTIALLY_PRESENT && bat_state(bat[g.bitmap_index(chunk)]) != bitmap::PRESENT {
            // Its space stays recorded: nothing else may go there until a repair drops it.
            bad(
                bat,
                &mut problems,
                regions,
                i,
                format!("(payload block {block}) is partially present without a usable sector bitmap"),
            );
        }
    }
    Survey {
        space,
        problems,
        structural,
    }
}
