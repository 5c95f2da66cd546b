//! What `vdisk info` shows for a VHD.

use crate::footer::{self, FooterSource};
use crate::format::DiskType;
use crate::layer::VhdLayer;
use crate::parent;
use disk_core::{Format, InfoValue, LayerInfo};
use uuid::Uuid;

/// A four-character code as text, NULs dropped and other control bytes escaped.
pub fn four_cc(code: &[u8; 4]) -> String {
    code.iter()
        .filter(|&&b| b != 0)
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b).to_string()
            } else {
                format!("\\x{b:02x}")
            }
        })
        .collect()
}

/// The layer's info, with VHD specifics under `format-specific.data`.
pub fn info(layer: &VhdLayer) -> LayerInfo {
    let f = &layer.footer;
    let mut info = LayerInfo::new(Format::Vhd, layer.virtual_size);
    let version = f.creator_version.get();
    let chs = footer::geometry(f);
    let mut s: Vec<(String, InfoValue)> = vec![
        ("type".into(), layer.disk_type.name().into()),
        ("disk-id".into(), layer.unique_id().to_string().into()),
        ("creator-application".into(), four_cc(&f.creator_application).into()),
        (
            "creator-version".into(),
            format!("{}.{}", version >> 16, version & 0xffff).into(),
        ),
        ("creator-host-os".into(), four_cc(&f.creator_host_os).into()),
        ("timestamp".into(), footer::timestamp_to_unix(f.timestamp.get()).into()),
        ("current-size".into(), f.current_size.get().into()),
        ("original-size".into(), f.original_size.get().into()),
        ("cylinders".into(), u64::from(chs.cylinders).into()),
        ("heads".into(), u64::from(chs.heads).into()),
        ("sectors-per-track".into(), u64::from(chs.sectors_per_track).into()),
        (
            "size-from".into(),
            if footer::uses_chs(f) { "chs" } else { "current-size" }.into(),
        ),
        ("saved-state".into(), (f.saved_state != 0).into()),
    ];
    if layer.footer_source == FooterSource::End && layer.disk_type != DiskType::Fixed {
        s.push(("footer-from".into(), "end".into()));
    }
    if !layer.footer_checksum_ok {
        s.push(("footer-checksum-ok".into(), false.into()));
    }
    if let Some(sp) = &layer.sparse {
        info.cluster_size = Some(u64::from(sp.layout.block_size));
        s.push(("block-size".into(), sp.layout.block_size.into()));
        s.push(("bat-entries".into(), sp.layout.header.max_table_entries.get().into()));
        if !sp.layout.header_checksum_ok {
            s.push(("header-checksum-ok".into(), false.into()));
        }
        if layer.disk_type == DiskType::Differencing {
            let h = &sp.layout.header;
            s.push((
                "parent-id".into(),
                Uuid::from_bytes(h.parent_unique_id).to_string().into(),
            ));
            s.push((
                "parent-timestamp".into(),
                footer::timestamp_to_unix(h.parent_timestamp.get()).into(),
            ));
            s.push(("parent-name".into(), parent::unicode_name(h).into()));
            let locators = layer
                .locators
                .iter()
                .map(|l| {
                    let mut m = vec![("platform".to_string(), InfoValue::from(l.platform.as_str()))];
                    if let Some(p) = &l.path {
                        m.push(("path".into(), p.as_str().into()));
                    }
                    if let Some(p) = &l.problem {
                        m.push(("problem".into(), p.as_str().into()));
                    }
                    InfoValue::Map(m)
                })
                .collect();
            s.push(("parent-locators".into(), InfoValue::List(locators)));
        }
    }
    if let Some(p) = &layer.parent {
        info.backing_filename = Some(p.display.clone());
        info.backing_format = Some(Format::Vhd);
    }
    info.specific = s;
    info
}
