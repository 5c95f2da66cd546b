//! Creating VMDK images: the five subformats `qemu-img` makes, and children of VMDK parents.

use crate::descriptor::{Access, Descriptor, ExtentLine, ExtentType, NO_PARENT_CID};
use crate::format::{self, MetaDataMarker, SECTOR, SparseExtentHeader};
use crate::layer::VmdkLayer;
use crate::stream::le_bytes;
use disk_core::{CreateSpec, Error, IoResultExt, Result, Storage};
use zerocopy::{FromZeros, IntoBytes};

/// Sectors per grain of new sparse extents (64 KiB).
const GRAIN: u64 = 128;
/// Grain table entries per grain table.
const GTES: u64 = 512;
/// Sectors reserved for an embedded descriptor.
const DESC_SECTORS: u64 = 20;
/// Largest extent of the twoGbMaxExtent subformats, in sectors (2 GiB).
pub(crate) const SPLIT_SECTORS: u64 = 4 << 20;
/// Largest virtual size of sparse subformats (grain table entries are 32-bit sector numbers).
pub(crate) const MAX_SIZE: u64 = 1 << 41;

/// The subformats `create` can make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Subformat {
    /// One sparse file with an embedded descriptor.
    MonolithicSparse,
    /// A descriptor and one flat extent.
    MonolithicFlat,
    /// A descriptor and sparse extents of at most 2 GiB.
    TwoGbMaxExtentSparse,
    /// A descriptor and flat extents of at most 2 GiB.
    TwoGbMaxExtentFlat,
    /// One compressed sparse file written sequentially.
    StreamOptimized,
}

impl Subformat {
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "monolithicSparse" => Subformat::MonolithicSparse,
            "monolithicFlat" => Subformat::MonolithicFlat,
            "twoGbMaxExtentSparse" => Subformat::TwoGbMaxExtentSparse,
            "twoGbMaxExtentFlat" => Subformat::TwoGbMaxExtentFlat,
            "streamOptimized" => Subformat::StreamOptimized,
            _ => {
                return Err(Error::invalid_argument(format!(
                    "unknown vmdk subformat '{s}' (expected monolithicSparse, monolithicFlat, \
                     twoGbMaxExtentSparse, twoGbMaxExtentFlat or streamOptimized)"
                )));
            }
        })
    }
    fn name(self) -> &'static str {
        match self {
            Subformat::MonolithicSparse => "monolithicSparse",
            Subformat::MonolithicFlat => "monolithicFlat",
            Subformat::TwoGbMaxExtentSparse => "twoGbMaxExtentSparse",
            Subformat::TwoGbMaxExtentFlat => "twoGbMaxExtentFlat",
            Subformat::StreamOptimized => "streamOptimized",
        }
    }
}

/// A new random CID.
pub(crate) fn new_cid() -> u32 {
    new_cid_other_than(NO_PARENT_CID)
}

/// A new random CID, neither `old` nor [`NO_PARENT_CID`].
pub(crate) fn new_cid_other_than(old: u32) -> u32 {
    loop {
        let [a, b, c, d, ..] = uuid::Uuid::new_v4().into_bytes();
        let cid = u32::from_le_bytes([a, b, c, d]);
        if cid != NO_PARENT_CID && cid != old {
            return cid;
        }
    }
}

fn header(capacity: u64, flags: u32, version: u32) -> SparseExtentHeader {
    let mut h = SparseExtentHeader::new_zeroed();
    h.magic_number.set(format::SPARSE_MAGIC);
    h.version.set(version);
    h.flags.set(flags);
    h.capacity.set(capacity);
    h.grain_size.set(GRAIN);
    h.num_gtes_per_gt.set(GTES as u32);
    h.single_end_line_char = b'\n';
    h.non_end_line_char = b' ';
    h.double_end_line_char1 = b'\r';
    h.double_end_line_char2 = b'\n';
    h
}

/// Write a hosted sparse extent laid out as QEMU does: header, descriptor area, redundant grain
/// directory and its tables, grain directory and its tables, then grains from a 64 KiB boundary.
/// Sectors of metadata (header, descriptor area, both directories and all grain tables,
/// rounded up to a grain) before the first grain of a sparse extent [`write_sparse`] makes.
pub(crate) fn sparse_overhead(capacity: u64) -> u64 {
    let gt_count = capacity.div_ceil(GRAIN).div_ceil(GTES);
    let gt_sectors = (GTES * 4).div_ceil(SECTOR);
    let gd_sectors = (gt_count * 4).div_ceil(SECTOR);
    (1 + DESC_SECTORS + 2 * (gd_sectors + gt_sectors * gt_count)).div_ceil(GRAIN) * GRAIN
}

/// Bytes per grain of new sparse extents.
pub(crate) const GRAIN_BYTES: u64 = GRAIN * SECTOR;

pub(crate) fn write_sparse(
    storage: &dyn Storage,
    capacity: u64,
    zeroed_grain: bool,
    desc: Option<&[u8]>,
) -> Result<()> {
    let grains = capacity.div_ceil(GRAIN);
    let gt_count = grains.div_ceil(GTES);
    let gt_sectors = (GTES * 4).div_ceil(SECTOR);
    let gd_sectors = (gt_count * 4).div_ceil(SECTOR);
    let rgd = 1 + DESC_SECTORS;
    let gd = rgd + gd_sectors + gt_sectors * gt_count;
    let overhead = (gd + gd_sectors + gt_sectors * gt_count).div_ceil(GRAIN) * GRAIN;
    let mut flags = format::FLAG_VALID_NEWLINE_TEST | format::FLAG_REDUNDANT_GD;
    if zeroed_grain {
        flags |= format::FLAG_ZEROED_GRAIN_GTE;
    }
    let mut h = header(capacity, flags, if zeroed_grain { 2 } else { 1 });
    h.descriptor_offset.set(1);
    h.descriptor_size.set(DESC_SECTORS);
    h.rgd_offset.set(rgd);
    h.gd_offset.set(gd);
    h.over_head.set(overhead);
    let mut meta = vec![0u8; (overhead * SECTOR) as usize];
    meta[..512].copy_from_slice(h.as_bytes());
    if let Some(d) = desc {
        if d.len() as u64 > DESC_SECTORS * SECTOR {
            return Err(Error::invalid_argument("the descriptor is too long to embed"));
        }
        meta[512..512 + d.len()].copy_from_slice(d);
    }
    for base in [rgd, gd] {
        let entries: Vec<u32> = (0..gt_count)
            .map(|i| u32::try_from(base + gd_sectors + i * gt_sectors).unwrap_or(0))
            .collect();
        let at = (base * SECTOR) as usize;
        let bytes = le_bytes(&entries);
        meta[at..at + bytes.len()].copy_from_slice(&bytes);
    }
    storage.write_at(&meta, 0).io_context("writing the sparse extent", 0)?;
    storage
        .set_len(meta.len() as u64)
        .io_context("sizing the sparse extent", 0)
}

/// Write an empty stream-optimized extent: header (grain directory through the footer),
/// descriptor, then at 64 KiB an empty grain directory, the footer and end-of-stream.
fn write_stream(storage: &dyn Storage, capacity: u64, desc: &[u8]) -> Result<()> {
    let gt_count = capacity.div_ceil(GRAIN).div_ceil(GTES);
    let gd_sectors = (gt_count * 4).div_ceil(SECTOR);
    let flags = format::FLAG_VALID_NEWLINE_TEST | format::FLAG_COMPRESSED | format::FLAG_MARKERS;
    let mut h = header(capacity, flags, 3);
    h.descriptor_offset.set(1);
    h.descriptor_size.set(DESC_SECTORS);
    h.gd_offset.set(format::GD_AT_END);
    h.over_head.set(GRAIN);
    h.compress_algorithm.set(format::COMPRESSION_DEFLATE);
    if desc.len() as u64 > DESC_SECTORS * SECTOR {
        return Err(Error::invalid_argument("the descriptor is too long to embed"));
    }
    let mut out = vec![0u8; (GRAIN * SECTOR) as usize];
    out[..512].copy_from_slice(h.as_bytes());
    out[512..512 + desc.len()].copy_from_slice(desc);
    let mut m = MetaDataMarker::new_zeroed();
    m.num_sectors.set(gd_sectors);
    m.marker_type.set(format::MARKER_GD);
    out.extend_from_slice(m.as_bytes());
    let gd_at = out.len() as u64 / SECTOR;
    out.resize(out.len() + (gd_sectors * SECTOR) as usize, 0);
    let mut footer = h;
    footer.gd_offset.set(gd_at);
    let mut fm = MetaDataMarker::new_zeroed();
    fm.num_sectors.set(1);
    fm.marker_type.set(format::MARKER_FOOTER);
    out.extend_from_slice(fm.as_bytes());
    out.extend_from_slice(footer.as_bytes());
    out.extend_from_slice(MetaDataMarker::new_zeroed().as_bytes());
    storage.write_at(&out, 0).io_context("writing the stream extent", 0)?;
    storage
        .set_len(out.len() as u64)
        .io_context("sizing the stream extent", 0)
}

/// Create an image as `spec` asks.
pub(crate) fn create(storage: &dyn Storage, mut spec: CreateSpec<'_>) -> Result<()> {
    let sub = Subformat::parse(
        &spec
            .options
            .take_str("subformat")
            .unwrap_or_else(|| "monolithicSparse".into()),
    )?;
    let adapter = spec.options.take_str("adapter_type").unwrap_or_else(|| "ide".into());
    if !["ide", "lsilogic", "buslogic", "legacyESX", "pvscsi"].contains(&adapter.as_str()) {
        return Err(Error::invalid_argument(format!(
            "unknown adapter_type '{adapter}' (expected ide, lsilogic, buslogic, legacyESX or pvscsi)"
        )));
    }
    let compat6 = spec.options.take_bool("compat6")?.unwrap_or(false);
    let hw = match (spec.options.take_str("hwversion"), compat6) {
        (Some(_), true) => {
            return Err(Error::invalid_argument("compat6 cannot be enabled with hwversion set"));
        }
        (Some(hw), false) => hw,
        (None, true) => "6".into(),
        (None, false) => "4".into(),
    };
    if hw.is_empty() || !hw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::invalid_argument(format!("hwversion '{hw}' is not a number")));
    }
    let tools = spec
        .options
        .take_str("toolsversion")
        .unwrap_or_else(|| "2147483647".into());
    let zeroed_grain = spec.options.take_bool("zeroed_grain")?.unwrap_or(false);
    spec.options.clone().finish()?;
    let flat = matches!(sub, Subformat::MonolithicFlat | Subformat::TwoGbMaxExtentFlat);
    if !flat && spec.size > MAX_SIZE {
        return Err(Error::invalid_argument(
            "sparse VMDK images are limited to 2 TiB (grain table entries are 32-bit sector numbers)",
        ));
    }
    // Like qemu-img, a size that is not a whole number of sectors is rounded up.
    let sectors = spec.size.div_ceil(SECTOR);
    let name = spec
        .path
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "disk.vmdk".into());
    let stem = name.strip_suffix(".vmdk").unwrap_or(&name).to_string();

    let (parent_cid, hint) = match &spec.backing {
        Some(b) => {
            let parent = b
                .image
                .top()
                .as_any()
                .downcast_ref::<VmdkLayer>()
                .ok_or_else(|| Error::invalid_argument("a VMDK image can only have a VMDK backing file"))?;
            if sub == Subformat::StreamOptimized {
                return Err(Error::invalid_argument(
                    "streamOptimized images cannot have a backing file",
                ));
            }
            (parent.cid(), Some(b.recorded.clone()))
        }
        None => (NO_PARENT_CID, None),
    };

    let mut desc = Descriptor::new();
    desc.set("version", "1");
    desc.set_cid(new_cid());
    desc.set("parentCID", &format!("{parent_cid:08x}"));
    desc.set("createType", sub.name());
    if let Some(h) = &hint {
        desc.set("parentFileNameHint", h);
    }
    desc.push_comment("");
    desc.push_comment("# Extent description");
    let mut extra = Vec::new();
    match sub {
        Subformat::MonolithicSparse | Subformat::StreamOptimized => {
            desc.push_extent(ExtentLine {
                access: Access::ReadWrite,
                sectors,
                kind: ExtentType::Sparse,
                file: Some(name.clone()),
                offset: 0,
            });
        }
        Subformat::MonolithicFlat => {
            let f = format!("{stem}-flat.vmdk");
            desc.push_extent(ExtentLine {
                access: Access::ReadWrite,
                sectors,
                kind: ExtentType::Flat,
                file: Some(f.clone()),
                offset: 0,
            });
            extra.push((f, sectors));
        }
        Subformat::TwoGbMaxExtentSparse | Subformat::TwoGbMaxExtentFlat => {
            let flat = sub == Subformat::TwoGbMaxExtentFlat;
            if sectors.div_ceil(SPLIT_SECTORS) > crate::descriptor::MAX_EXTENTS as u64 {
                return Err(Error::invalid_argument(format!(
                    "split VMDK images are limited to {} extents of 2 GiB",
                    crate::descriptor::MAX_EXTENTS
                )));
            }
            let mut left = sectors;
            let mut i = 1;
            while left > 0 || i == 1 {
                let n = left.min(SPLIT_SECTORS);
                let f = format!("{stem}-{}{i:03}.vmdk", if flat { 'f' } else { 's' });
                desc.push_extent(ExtentLine {
                    access: Access::ReadWrite,
                    sectors: n,
                    kind: if flat { ExtentType::Flat } else { ExtentType::Sparse },
                    file: Some(f.clone()),
                    offset: 0,
                });
                extra.push((f, n));
                left -= n;
                i += 1;
            }
        }
    }
    desc.push_comment("");
    desc.push_comment("# The Disk Data Base");
    desc.push_comment("#DDB");
    desc.push_comment("");
    let heads: u64 = if adapter == "ide" { 16 } else { 255 };
    desc.set("ddb.virtualHWVersion", &hw);
    desc.set("ddb.geometry.cylinders", &(sectors / (heads * 63)).to_string());
    desc.set("ddb.geometry.heads", &heads.to_string());
    desc.set("ddb.geometry.sectors", "63");
    desc.set("ddb.adapterType", &adapter);
    desc.set("ddb.toolsVersion", &tools);
    // The disk's stable identity (VirtualBox's key; VMware reads it too).
    desc.set("ddb.uuid.image", &uuid::Uuid::new_v4().hyphenated().to_string());
    let text = desc.render().into_bytes();

    match sub {
        Subformat::MonolithicSparse => write_sparse(storage, sectors, zeroed_grain, Some(&text))?,
        Subformat::StreamOptimized => write_stream(storage, sectors, &text)?,
        _ => {
            for (f, n) in &extra {
                let s = spec.files.create_file(f)?;
                if flat {
                    s.set_len(n * SECTOR).io_context("sizing a flat extent", 0)?;
                } else {
                    write_sparse(&*s, *n, zeroed_grain, None)?;
                }
                s.flush().io_context("flushing an extent", 0)?;
            }
            storage.write_at(&text, 0).io_context("writing the descriptor", 0)?;
        }
    }
    storage.flush().io_context("flushing the new image", 0)
}
