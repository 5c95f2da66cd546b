//! `info` and `check` for a VHDX.

#![warn(clippy::arithmetic_side_effects)]

use crate::bat;
use crate::format::*;
use crate::geometry::EntryKind;
use crate::layer::{LogState, VhdxLayer};
use disk_core::sync::lock;
use disk_core::{CheckReport, Findings, Format, InfoValue, IoResultExt, Layer, LayerInfo, Repair, Result, SpaceKind};

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
    // Nothing can be changed in an image whose own structures overlap.
    let changeable = l.writable && l.structural.is_none();
    let fix = repair == Repair::All && changeable;
    for (slot, ok) in l.headers_valid.iter().enumerate() {
        if *ok {
            continue;
        }
        let what = format!("header {} has a bad signature or checksum", slot.saturating_add(1));
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
        let what = format!("region table {} is damaged", i.saturating_add(1));
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
    if !l.surveyed {
        // Opened read-only with a large BAT, checked page by page: survey it whole now, from
        // the file (the entries as stored, not as checked), a page at a time.
        let log = {
            let h = l.header();
            (h.log_offset.get(), u64::from(h.log_length.get()))
        };
        let file_len = l.io.len().io_context("reading the file size", 0)?;
        let raw = bat::table(l.io.clone(), file_len, l.regions.bat.offset, g.total_entries)?;
        let survey = bat::survey(&raw, g, &l.meta, &l.regions, log, file_len)?;
        let mut st = lock(&l.state);
        st.space = survey.space;
        st.problems = survey.problems;
    }
    // Unusable BAT entries and overlapping structures, found by the space map on open.
    let problems = std::mem::take(&mut lock(&l.state).problems);
    if fix && problems.count() > 0 {
        l.drop_unusable_entries()?;
        // Structures that overlap (found first, so never among the omitted) stay: dropping BAT
        // entries cannot fix them.
        let mut remaining = Findings::new();
        for p in problems.iter() {
            if p.starts_with(bat::ENTRY_PROBLEM) {
                r.repaired.push(format!("{p}: entry dropped"));
            } else {
                r.corruptions.push(p.clone());
                remaining.push(p.clone());
            }
        }
        r.repaired.add_omitted(problems.omitted());
        lock(&l.state).problems = remaining;
    } else {
        r.corruptions.extend(problems.iter().cloned());
        r.corruptions.add_omitted(problems.omitted());
        lock(&l.state).problems = problems;
    }
    match l.log_state {
        LogState::ReplayedInMemory(n) => r.corruptions.push(format!(
            "the log holds {n} entries not yet replayed into the file (replayed in memory; open writable to replay)"
        )),
        LogState::Replayed(n) => r.repaired.push(format!("replayed {n} log entries")),
        LogState::Clean => {}
    }
    let mut allocated = 0u64;
    l.bat.for_each_page(|first, entries| {
        for (i, &e) in (first..).zip(entries) {
            if payload::STORED.contains(&bat_state(e)) && matches!(g.entry_kind(i), EntryKind::Payload(_)) {
                allocated = allocated.saturating_add(1);
            }
        }
        Ok(())
    })?;
    let (end, keep, gaps, blocks_last) = {
        let st = lock(&l.state);
        let keep = st.used_end();
        let gaps = st.space.gaps(HEADER_SECTION_SIZE, keep).collect::<Vec<_>>();
        let last = st.space.ranges().last().map(|r| r.kind);
        let blocks_last = matches!(last, Some(SpaceKind::Data | SpaceKind::Bitmap));
        (st.space.used_end(), keep, gaps, blocks_last)
    };
    let file_len = l.io.len().io_context("reading the file size", 0)?;
    for (at, len) in leaked_data(l, &gaps, file_len)? {
        r.leaks.push(format!(
            "{len} bytes at {at:#x} hold data but are not referenced by any structure"
        ));
    }
    // Less than 1 MiB of tail is padding (some tools leave a sector), and so is the zeroed space
    // qemu-img leaves after the structures when it creates an image (`qemu_create_tail`; its
    // blocks go after that space). More, a tail that holds data, or a tail after the last block
    // is leaked: e.g. a block whose data was written before a crash prevented its BAT update, a
    // discarded last block, or space appended to the file.
    let tail = file_len.saturating_sub(keep);
    let padding = tail < MIB
        || (!blocks_last
            && tail <= qemu_create_tail(l)
            && l.io
                .reads_as_zeros(keep, tail)
                .io_context("reading the space after the last used block", keep)?);
    if !padding {
        let what = format!("{tail} bytes after the last used block are not referenced");
        if repair != Repair::None && changeable {
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

/// Zeroed space qemu-img leaves after the last structure of an image it creates, which its own
/// check does not count: 4 MiB "for future expansion" (its first block goes at the BAT's end plus
/// 5 MiB, the metadata region taking 1 MiB of that), and for a fixed image the virtual size too
/// (qemu-img sizes the file for every block but records them as zero blocks, at no offset).
fn qemu_create_tail(l: &VhdxLayer) -> u64 {
    const QEMU_RESERVE: u64 = 4 * MIB;
    if l.meta.leave_allocated && !l.meta.has_parent {
        QEMU_RESERVE.saturating_add(l.virtual_size())
    } else {
        QEMU_RESERVE
    }
}

/// The whole MiBs inside `gaps` (unrecorded space of the file) that hold data, merged into
/// runs: space the image does not refer to. Zeroed space (what a discard leaves behind) is
/// free space the format has no way to record, not a leak. Reads at most the file's length.
fn leaked_data(l: &VhdxLayer, gaps: &[(u64, u64)], file_len: u64) -> Result<Vec<(u64, u64)>> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &(start, len) in gaps {
        let Some(mut at) = start.checked_next_multiple_of(MIB) else {
            continue;
        };
        let end = start.saturating_add(len).min(file_len) & !(MIB - 1);
        while at < end {
            let zero =
                l.io.reads_as_zeros(at, MIB)
                    .io_context("reading unreferenced space", at)?;
            if !zero {
                let full = runs.len() >= disk_core::MAX_CHECK_DETAILS;
                match runs.last_mut() {
                    Some((s, n)) if s.saturating_add(*n) == at => *n = n.saturating_add(MIB),
                    _ if !full => runs.push((at, MIB)),
                    _ => {}
                }
            }
            at = at.saturating_add(MIB);
        }
    }
    Ok(runs)
}
