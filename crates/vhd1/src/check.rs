//! Metadata consistency checks: BAT entries past the end of the file, blocks overlapping each
//! other or the metadata, footer copies that disagree, damaged checksums and locators.

use crate::footer::FooterSource;
use crate::format::{BAT_FREE, DiskType, FOOTER_SIZE, HEADER_SIZE, SECTOR_SIZE};
use crate::layer::{VhdLayer, block_used_bytes, first_free_offset};
use disk_core::{CheckReport, IoResultExt, Repair, Result};
use zerocopy::IntoBytes;

/// Check `layer`'s metadata. Repair is limited to rewriting a missing or damaged footer at the
/// end of a dynamic or differencing disk (with [`Repair::All`] on a writable image).
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

    // Metadata regions, then every block, sorted to find overlaps.
    let bat = sp.bat.read().unwrap_or_else(|e| e.into_inner()).clone();
    let mut regions: Vec<(u64, u64, String)> = vec![
        (0, FOOTER_SIZE, "footer copy".into()),
        (
            layout.header_offset,
            layout.header_offset + HEADER_SIZE,
            "dynamic header".into(),
        ),
        (
            layout.table_offset,
            layout.table_offset + u64::from(layout.blocks) * 4,
            "BAT".into(),
        ),
    ];
    for loc in layer.locators.iter().filter(|l| l.problem.is_none() && l.length > 0) {
        regions.push((
            loc.offset,
            loc.offset + u64::from(loc.length),
            format!("parent locator {}", loc.platform),
        ));
    }
    let mut allocated = 0u64;
    for (index, &entry) in bat.iter().enumerate() {
        if entry == BAT_FREE {
            continue;
        }
        allocated += 1;
        let start = u64::from(entry) * SECTOR_SIZE;
        let end = start + layout.bitmap_size + block_used_bytes(layout, index as u32, layer.virtual_size);
        if end > file_len {
            report
                .corruptions
                .push(format!("BAT entry {index} points past end of file (offset {start:#x})"));
            continue;
        }
        regions.push((start, start + layout.block_footprint(), format!("block {index}")));
    }
    regions.sort();
    for pair in regions.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if a.0 < a.1 && b.0 < a.1 {
            report.corruptions.push(format!(
                "{} (offset {:#x}) overlaps {} (offset {:#x})",
                a.2, a.0, b.2, b.0
            ));
        }
    }

    let free = first_free_offset(layout, &bat, &layer.locators, layer.virtual_size, file_len);
    report.image_end_offset = Some(free + FOOTER_SIZE);
    report.allocated_clusters = Some(allocated);
    report.total_clusters = Some(u64::from(layout.blocks));
    if let Some(problem) = footer_problem {
        if repair == Repair::All && !layer.read_only && layer.footer_checksum_ok && layer.disk_type != DiskType::Fixed {
            let _guard = sp.alloc.lock().unwrap_or_else(|e| e.into_inner());
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
            report.repaired.push(problem.to_string());
        } else {
            report.corruptions.push(problem.to_string());
        }
    } else if file_len > free + FOOTER_SIZE {
        report.leaks.push(format!(
            "{} bytes before the footer are not used by any block",
            file_len - free - FOOTER_SIZE
        ));
    }
    Ok(report)
}
