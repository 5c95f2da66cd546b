//! `info` and `check` for a VHDX.

use crate::format::*;
use crate::layer::{LogState, VhdxLayer, read_lock};
use disk_core::{CheckReport, Format, InfoValue, IoResultExt, Layer, LayerInfo, Repair, Result};

/// What `vdisk info` shows for a VHDX.
pub(crate) fn info(l: &VhdxLayer) -> LayerInfo {
    let h = l.header();
    let mut info = LayerInfo::new(Format::Vhdx, l.virtual_size());
    if !l.meta.leave_allocated || l.meta.has_parent {
        info.cluster_size = Some(l.geo.block_size);
    }
    if let Some(p) = &l.parent {
        info.backing_filename = Some(p.display.clone());
        info.backing_format = Some(Format::Vhdx);
    }
    let (dirty, log_state, replayed) = match l.log_state {
        LogState::Clean => (false, "clean", 0),
        LogState::Replayed(n) => (false, "replayed", n),
        LogState::ReplayedInMemory(n) => (true, "replayed in memory", n),
    };
    info.dirty = Some(dirty);
    let mut s: Vec<(String, InfoValue)> = vec![
        ("subformat".into(), l.subformat().into()),
        ("block-size".into(), l.geo.block_size.into()),
        ("logical-sector-size".into(), l.meta.logical_sector_size.into()),
        ("physical-sector-size".into(), l.meta.physical_sector_size.into()),
        ("disk-id".into(), l.meta.page83.to_string().into()),
        ("creator".into(), l.creator.clone().into()),
        ("file-write-guid".into(), h.file_write_guid.to_string().into()),
        ("data-write-guid".into(), h.data_write_guid.to_string().into()),
        ("log-guid".into(), h.log_guid.to_string().into()),
        ("log-offset".into(), h.log_offset.get().into()),
        ("log-size".into(), h.log_length.get().into()),
        ("log-state".into(), log_state.into()),
        ("log-entries-replayed".into(), (replayed as u64).into()),
        ("header-sequence".into(), h.sequence_number.get().into()),
    ];
    if l.meta.parent.is_some() {
        let entries = l
            .parent_locator()
            .into_iter()
            .map(|(k, v)| (k, InfoValue::Str(v)))
            .collect();
        s.push(("parent-locator".into(), InfoValue::Map(entries)));
    }
    info.specific = s;
    info
}

/// Verify the metadata of an open VHDX.
pub(crate) fn check(l: &VhdxLayer, repair: Repair) -> Result<CheckReport> {
    let mut r = CheckReport::default();
    let g = &l.geo;
    let fix = repair == Repair::All && l.writable;
    for (slot, ok) in l.headers_valid.iter().enumerate() {
        if *ok {
            continue;
        }
        let what = format!("header {} has a bad signature or checksum", slot + 1);
        if fix {
            // The header update procedure writes the non-current slot: the damaged one.
            l.rewrite_other_header()?;
            r.repaired.push(what);
        } else {
            r.corruptions.push(what);
        }
    }
    for (i, ok) in l.regions.valid.iter().enumerate() {
        if *ok {
            continue;
        }
        let what = format!("region table {} is damaged", i + 1);
        if fix {
            let (good, bad) = if i == 0 {
                (REGION_TABLE2_OFFSET, REGION_TABLE1_OFFSET)
            } else {
                (REGION_TABLE1_OFFSET, REGION_TABLE2_OFFSET)
            };
            let mut buf = vec![0u8; REGION_TABLE_SIZE];
            l.file
                .read_at(&mut buf, good)
                .io_context("reading the region table", good)?;
            l.file
                .write_at(&buf, bad)
                .io_context("repairing the region table", bad)?;
            l.file.flush().io_context("flushing", bad)?;
            r.repaired.push(what);
        } else {
            r.corruptions.push(what);
        }
    }
    r.corruptions.extend(l.bat_problems.iter().cloned());
    match l.log_state {
        LogState::ReplayedInMemory(n) => r.corruptions.push(format!(
            "the log holds {n} entries not yet replayed into the file (replayed in memory; open writable to replay)"
        )),
        LogState::Replayed(n) => r.repaired.push(format!("replayed {n} log entries")),
        LogState::Clean => {}
    }
    // Every stored area: (start, end, what).
    let h = l.header();
    let mut areas: Vec<(u64, u64, String)> = vec![
        (0, HEADER_SECTION_SIZE, "header section".into()),
        (
            l.regions.bat.offset,
            l.regions.bat.offset + l.regions.bat.length,
            "BAT region".into(),
        ),
        (
            l.regions.metadata.offset,
            l.regions.metadata.offset + l.regions.metadata.length,
            "metadata region".into(),
        ),
    ];
    let log_len = u64::from(h.log_length.get());
    if log_len > 0 {
        areas.push((h.log_offset.get(), h.log_offset.get() + log_len, "log".into()));
    }
    let bat = read_lock(&l.bat);
    let mut allocated = 0u64;
    for block in 0..g.data_blocks {
        let e = bat[g.payload_index(block)];
        if matches!(bat_state(e), payload::FULLY_PRESENT | payload::PARTIALLY_PRESENT) {
            allocated += 1;
            let off = bat_offset(e);
            areas.push((off, off + g.block_size, format!("payload block {block}")));
            if bat_state(e) == payload::PARTIALLY_PRESENT
                && bat_state(bat[g.bitmap_index(block / g.chunk_ratio)]) != bitmap::PRESENT
            {
                r.corruptions.push(format!(
                    "payload block {block} is partially present without a sector bitmap"
                ));
            }
        }
    }
    if g.has_parent {
        for chunk in 0..g.bitmap_blocks {
            let e = bat[g.bitmap_index(chunk)];
            if bat_state(e) == bitmap::PRESENT {
                let off = bat_offset(e);
                areas.push((off, off + MIB, format!("sector bitmap block {chunk}")));
            }
        }
    }
    drop(bat);
    areas.sort_by_key(|a| a.0);
    for w in areas.windows(2) {
        if w[1].0 < w[0].1 {
            r.corruptions.push(format!(
                "{} at {:#x} overlaps {} at {:#x}",
                w[1].2, w[1].0, w[0].2, w[0].0
            ));
        }
    }
    let end = areas.iter().map(|a| a.1).max().unwrap_or(0);
    let file_len = l.io.len().io_context("reading the file size", 0)?;
    // Less than 1 MiB of tail is padding (some tools leave a sector); more is a leaked block,
    // e.g. one whose data was written before a crash prevented its BAT update.
    let keep = end.div_ceil(MIB) * MIB;
    if file_len >= keep + MIB {
        let what = format!("{} bytes after the last used block are not referenced", file_len - keep);
        if repair != Repair::None && l.writable {
            l.truncate_unused(keep)?;
            r.repaired.push(what);
        } else {
            r.leaks.push(what);
        }
    }
    r.image_end_offset = Some(end);
    r.allocated_clusters = Some(allocated);
    r.total_clusters = Some(g.data_blocks);
    Ok(r)
}
