//! Metadata consistency checks: BAT entries past the end of the file, blocks overlapping each
//! other or the metadata, footer copies that disagree, damaged checksums and locators.

use crate::footer::FooterSource;
use crate::format::{BAT_FREE, DiskType, FOOTER_SIZE, SECTOR_SIZE};
use crate::layer::{SparseState, VhdLayer, first_free_offset};
use disk_core::sync::{lock, read_lock, write_lock};
use disk_core::{CheckReport, Conflict, IoResultExt, Repair, Result, SpaceKind};
use std::collections::BTreeMap;
use zerocopy::IntoBytes;

/// Check `layer`'s metadata against its space map (every overlap, every block past the end,
/// whole unused blocks inside the file, unused space before the footer). On a writable image,
/// [`Repair::Leaks`] cuts unused space before the footer; [`Repair::All`] also frees unusable
/// BAT entries and rewrites a missing or damaged footer.
pub fn check(layer: &VhdLayer, repair: Repair) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let storage = &*layer.storage;
    let file_len = storage.len().io_context("reading the file size", 0)?;
    if !layer.footer_checksum_ok {
        report.corruptions.push("footer checksum mismatch");
    }
    let Some(sp) = &layer.sparse else {
        report.image_end_offset = Some(file_len);
        return Ok(report);
    };
    let layout = &sp.layout;
    if !layout.header_checksum_ok {
        report.corruptions.push("dynamic header checksum mismatch");
    }
    for loc in &layer.locators {
        if let Some(problem) = &loc.problem {
            report
                .corruptions
                .push(format!("parent locator {}: {problem}", loc.platform));
        }
    }

    // Footer at the end versus the copy at offset 0.
    let mut end_copy = [0u8; FOOTER_SIZE as usize];
    let end_ok = file_len >= FOOTER_SIZE
        && storage.read_at(&mut end_copy, file_len - FOOTER_SIZE).is_ok()
        && end_copy == layer.footer.as_bytes();
    let mut start_copy = [0u8; FOOTER_SIZE as usize];
    storage
        .read_at(&mut start_copy, 0)
        .io_context("reading the footer copy", 0)?;
    let start_ok = start_copy == layer.footer.as_bytes();
    let footer_problem = match (layer.footer_source, start_ok, end_ok) {
        (_, true, true) => None,
        (FooterSource::Start, _, false) => {
            Some("footer at the end of the file is missing or differs from the copy at offset 0")
        }
        _ => Some("footer copy at offset 0 differs from the footer at the end of the file"),
    };

    // Unusable BAT entries are freed first (with -r all), then every structure and block goes
    // into one space map: every overlap and every block past the end is reported.
    let bad = read_lock(&sp.bad).clone();
    if repair == Repair::All && !layer.read_only && !bad.is_empty() {
        free_bad_entries(layer, sp, &bad, &mut report)?;
    }
    let bat = read_lock(&sp.bat).clone();
    let audit = crate::space::audit(storage, layout, &bat, &layer.locators, layer.virtual_size, file_len)?;
    // Metadata conflicts come first in the map's list (claimed before any block), so all are kept.
    for conflict in audit
        .map
        .conflicts()
        .iter()
        .filter(|c| c.range().kind != SpaceKind::Data)
    {
        report.corruptions.push(conflict.to_string());
    }
    for (index, conflict) in &audit.bad {
        report.corruptions.push(format!("BAT entry {index}: {conflict}"));
    }
    let allocated = bat.iter().filter(|&&e| e != BAT_FREE).count() as u64;
    let free = first_free_offset(layout, &bat, &layer.locators, layer.virtual_size, file_len)
        .max(audit.map.used_end().next_multiple_of(SECTOR_SIZE));
    // Whole blocks' worth of space inside the file that nothing uses (freed blocks); smaller
    // gaps are alignment padding other tools leave.
    for (at, len) in audit.map.gaps(FOOTER_SIZE, free) {
        if len >= layout.block_footprint() {
            report
                .leaks
                .push(format!("{len} bytes at offset {at:#x} are not used by any block"));
        }
    }
    report.image_end_offset = Some(free + FOOTER_SIZE);
    report.allocated_clusters = Some(allocated);
    report.total_clusters = Some(u64::from(layout.blocks));
    if let Some(problem) = footer_problem {
        if repair == Repair::All && !layer.read_only && layer.footer_checksum_ok && layer.disk_type != DiskType::Fixed {
            rewrite_footers(layer, free, file_len)?;
            report.repaired.push(problem.to_string());
        } else {
            report.corruptions.push(problem.to_string());
        }
    } else if file_len > free + FOOTER_SIZE {
        let leak = format!(
            "{} bytes before the footer are not used by any block",
            file_len - free - FOOTER_SIZE
        );
        if repair != Repair::None && !layer.read_only {
            rewrite_footers(layer, free, file_len)?;
            report.repaired.push(leak);
        } else {
            report.leaks.push(leak);
        }
    }
    Ok(report)
}

/// Write both footers for a file whose used space ends at `free`, cutting what lies after.
fn rewrite_footers(layer: &VhdLayer, free: u64, file_len: u64) -> Result<()> {
    let storage = &*layer.storage;
    let Some(sp) = &layer.sparse else {
        return Ok(());
    };
    let _guard = lock(&sp.alloc);
    storage
        .write_at(layer.footer.as_bytes(), 0)
        .io_context("rewriting the footer copy", 0)?;
    storage
        .write_at(layer.footer.as_bytes(), free)
        .io_context("rewriting the footer", free)?;
    if file_len > free + FOOTER_SIZE {
        storage
            .set_len(free + FOOTER_SIZE)
            .io_context("trimming the file", free)?;
    }
    storage.flush().io_context("flushing the repair", 0)?;
    Ok(())
}

/// Set every unusable BAT entry to free in the file (one flushed write per run of entries);
/// the sectors they held then read as zeros (dynamic) or from the parent (differencing).
fn free_bad_entries(
    layer: &VhdLayer,
    sp: &SparseState,
    bad: &BTreeMap<u32, Conflict>,
    report: &mut CheckReport,
) -> Result<()> {
    let _guard = lock(&sp.alloc);
    let entries: Vec<(u32, u32)> = bad.keys().map(|&i| (i, BAT_FREE)).collect();
    layer.write_bat_entries(sp, &entries)?;
    layer.storage.flush().io_context("flushing the repaired BAT", 0)?;
    let mut table = write_lock(&sp.bat);
    let mut unusable = write_lock(&sp.bad);
    for (&index, conflict) in bad {
        if let Some(e) = table.get_mut(index as usize) {
            *e = BAT_FREE;
        }
        unusable.remove(&index);
        report.repaired.push(format!("BAT entry {index} freed: {conflict}"));
    }
    Ok(())
}
