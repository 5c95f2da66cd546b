//! The space map of a dynamic or differencing disk: the footer copy, dynamic header, BAT,
//! parent locators and every data block, each checked against the file and against the others.
//!
//! A BAT entry whose block lies past the end of the file, or on metadata, or on another block,
//! is *unusable*: reading it fails, writing never goes through it, a writable open is refused
//! (unless the caller asked for repair) and `check -r all` frees it.

#![deny(clippy::arithmetic_side_effects)]

use crate::format::{BAT_FREE, FOOTER_COOKIE, FOOTER_SIZE, HEADER_SIZE, SECTOR_SIZE};
use crate::header::Sparse;
use crate::layer::block_used_bytes;
use crate::parent::Locator;
use disk_core::{Conflict, IoResultExt, Result, SpaceKind, SpaceMap, Storage};
use std::collections::BTreeMap;

/// The space map and the BAT entries that could not be placed in it.
#[derive(Debug)]
pub(crate) struct Audit {
    /// Every structure and sound block.
    pub map: SpaceMap,
    /// Unusable BAT entries: block index -> why.
    pub bad: BTreeMap<u32, Conflict>,
}

/// Where a block's bytes lie in the file: bitmap, then the data inside the virtual disk.
pub(crate) fn block_range(layout: &Sparse, index: u32, entry: u32, virtual_size: u64) -> (u64, u64) {
    // Entries are 32-bit sector numbers and block sizes are capped: neither sum overflows.
    let start = u64::from(entry).saturating_mul(SECTOR_SIZE);
    let len = layout
        .bitmap_size
        .saturating_add(block_used_bytes(layout, index, virtual_size));
    (start, len)
}

/// Whether the file ends with a footer (its last 512 bytes start with the cookie): blocks must
/// then end before it.
fn ends_with_footer(storage: &dyn Storage, file_len: u64) -> Result<bool> {
    let Some(at) = file_len.checked_sub(FOOTER_SIZE).filter(|&at| at >= FOOTER_SIZE) else {
        return Ok(false);
    };
    let mut cookie = [0u8; 8];
    storage
        .read_at(&mut cookie, at)
        .io_context("reading the footer at the end", at)?;
    Ok(cookie == FOOTER_COOKIE)
}

/// Build the space map of a sparse disk from what was parsed. Memory is bounded by the BAT
/// (already read from the file) and by the file: recorded ranges never overlap.
pub(crate) fn audit(
    storage: &dyn Storage,
    layout: &Sparse,
    bat: &[u32],
    locators: &[Locator],
    virtual_size: u64,
    file_len: u64,
) -> Result<Audit> {
    let data_end = if ends_with_footer(storage, file_len)? {
        file_len.saturating_sub(FOOTER_SIZE)
    } else {
        file_len
    };
    let mut map = SpaceMap::new(data_end);
    map.claim_or_note(0, FOOTER_SIZE, SpaceKind::Footer);
    map.claim_or_note(layout.header_offset, HEADER_SIZE, SpaceKind::Header);
    map.claim_or_note(layout.table_offset, layout.bat_bytes(), SpaceKind::Bat);
    for loc in locators.iter().filter(|l| l.problem.is_none() && l.length > 0) {
        map.claim_or_note(loc.offset, u64::from(loc.length), SpaceKind::ParentLocator);
    }
    let mut bad = BTreeMap::new();
    for (index, &entry) in (0u32..).zip(bat) {
        if entry == BAT_FREE {
            continue;
        }
        let (start, len) = block_range(layout, index, entry, virtual_size);
        if let Err(conflict) = map.claim(start, len, SpaceKind::Data) {
            map.note(conflict);
            bad.insert(index, conflict);
        }
    }
    Ok(Audit { map, bad })
}
