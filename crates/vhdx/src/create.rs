//! Creating new VHDX images: fixed, dynamic and differencing.

use crate::format::*;
use crate::geometry::Geometry;
use crate::layer::VhdxLayer;
use crate::parse::{checksum_with_zero_field, header_bytes};
use disk_core::guid::{MsGuid, new_uuid};
use disk_core::utf16::{self, Endian};
use disk_core::{CreateSpec, Error, IoResultExt, MeasureSource, Measurement, Options, Result, Storage};
use zerocopy::{FromZeros, IntoBytes};

/// The creator recorded in new images.
const CREATOR: &str = concat!("vdisk ", env!("CARGO_PKG_VERSION"));

/// Parsed creation parameters.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    size: u64,
    fixed: bool,
    block_size: u32,
    log_size: u32,
    logical: u32,
    physical: u32,
    parent: Option<ParentInfo>,
}

#[derive(Debug, Clone)]
pub(crate) struct ParentInfo {
    linkage: uuid::Uuid,
    relative: Option<String>,
    absolute: Option<String>,
}

impl ParentInfo {
    /// The locator for a parent recorded as `recorded` (relative to the child, or absolute),
    /// found at `absolute` on this host, whose DataWriteGuid is `linkage`, for a child at
    /// `child`: `relative_path` as [`disk_core::relative_locator`] makes it, and
    /// `absolute_win32_path` the host path (or, without one, an absolute `recorded`).
    pub(crate) fn new(
        linkage: uuid::Uuid,
        recorded: &str,
        absolute: Option<&std::path::Path>,
        child: Option<&std::path::Path>,
    ) -> Self {
        let relative = disk_core::relative_locator(recorded, absolute, child);
        ParentInfo {
            linkage,
            absolute: absolute
                .map(|a| a.to_string_lossy().into_owned())
                .or_else(|| relative.is_none().then(|| recorded.to_string())),
            relative,
        }
    }
}

fn sector_option(value: Option<u64>, what: &str, default: u32) -> Result<u32> {
    match value {
        None => Ok(default),
        Some(v @ (512 | 4096)) => Ok(v as u32),
        Some(v) => Err(Error::invalid_argument(format!("{what} must be 512 or 4096, not {v}"))),
    }
}

/// Parse the create options (everything but the parent).
fn parse_options(o: &mut Options, size: u64, parent_sector: Option<u32>) -> Result<Params> {
    let fixed = match o.take_str("subformat").as_deref() {
        None | Some("dynamic") => false,
        Some("fixed") => true,
        Some(s) => return Err(Error::invalid_argument(format!("unknown VHDX subformat '{s}'"))),
    };
    let block_size = o.take_size("block_size")?.unwrap_or(32 * MIB);
    if !(u64::from(MIN_BLOCK_SIZE)..=u64::from(MAX_BLOCK_SIZE)).contains(&block_size) || !block_size.is_power_of_two() {
        return Err(Error::invalid_argument(format!(
            "block_size {block_size} must be a power of two from 1M to 256M"
        )));
    }
    let log_size = o.take_size("log_size")?.unwrap_or(MIB);
    if log_size < MIB || log_size % MIB != 0 || log_size > 4096 * MIB {
        return Err(Error::invalid_argument(format!(
            "log_size {log_size} must be a multiple of 1M, at least 1M"
        )));
    }
    let logical = sector_option(
        o.take_size("logical_sector_size")?,
        "logical_sector_size",
        parent_sector.unwrap_or(512),
    )?;
    let physical = sector_option(o.take_size("physical_sector_size")?, "physical_sector_size", 4096)?;
    // Accepted for qemu-img compatibility: new blocks always read as zeros here.
    let _ = o.take_bool("block_state_zero")?;
    std::mem::take(o).finish()?;
    let size = size
        .checked_next_multiple_of(u64::from(logical))
        .filter(|&s| s <= MAX_VIRTUAL_SIZE)
        .ok_or_else(|| Error::invalid_argument("VHDX images are at most 64 TiB"))?;
    Ok(Params {
        size,
        fixed,
        block_size: block_size as u32,
        log_size: log_size as u32,
        logical,
        physical,
        parent: None,
    })
}

fn params(spec: &mut CreateSpec<'_>) -> Result<Params> {
    let parent_sector = spec.backing.as_ref().map(|b| disk_core::Disk::sector_size(b.image));
    let mut p = parse_options(&mut spec.options, spec.size, parent_sector)?;
    let (fixed, logical) = (p.fixed, p.logical);
    p.parent = match &spec.backing {
        None => None,
        Some(b) => {
            if fixed {
                return Err(Error::invalid_argument("a differencing VHDX cannot be fixed"));
            }
            let top = b.image.top();
            let Some(p) = top.as_any().downcast_ref::<VhdxLayer>() else {
                return Err(Error::invalid_argument("the parent of a VHDX must be a VHDX"));
            };
            if top.sector_size() != logical {
                return Err(Error::invalid_argument(format!(
                    "the parent has {}-byte sectors; the child must too",
                    top.sector_size()
                )));
            }
            Some(ParentInfo::new(p.data_write_guid(), &b.recorded, b.absolute, spec.path))
        }
    };
    Ok(p)
}

/// Build the parent locator item.
pub(crate) fn parent_locator(p: &ParentInfo) -> Vec<u8> {
    let mut pairs = vec![("parent_linkage".to_string(), format!("{{{}}}", p.linkage))];
    if let Some(r) = &p.relative {
        pairs.push(("relative_path".into(), r.clone()));
    }
    if let Some(a) = &p.absolute {
        pairs.push(("absolute_win32_path".into(), a.clone()));
    }
    let mut hdr = ParentLocatorHeader::new_zeroed();
    hdr.locator_type = PARENT_LOCATOR_VHDX;
    hdr.key_value_count.set(pairs.len() as u16);
    let mut out = hdr.as_bytes().to_vec();
    let table_end = out.len() + pairs.len() * size_of::<ParentLocatorEntry>();
    let mut strings = Vec::new();
    for (k, v) in &pairs {
        let (k, v) = (utf16::encode(k, Endian::Little), utf16::encode(v, Endian::Little));
        let mut e = ParentLocatorEntry::new_zeroed();
        e.key_offset.set((table_end + strings.len()) as u32);
        e.key_length.set(k.len() as u16);
        strings.extend_from_slice(&k);
        e.value_offset.set((table_end + strings.len()) as u32);
        e.value_length.set(v.len() as u16);
        strings.extend_from_slice(&v);
        out.extend_from_slice(e.as_bytes());
    }
    out.extend_from_slice(&strings);
    out
}

/// Build the metadata region (table and items).
fn metadata_region(p: &Params) -> Vec<u8> {
    let mut region = vec![0u8; MIB as usize];
    let mut items: Vec<(MsGuid, u32, Vec<u8>)> = Vec::new();
    let mut fp = FileParameters::new_zeroed();
    fp.block_size.set(p.block_size);
    fp.flags.set(if p.parent.is_some() {
        HAS_PARENT
    } else if p.fixed {
        LEAVE_BLOCKS_ALLOCATED
    } else {
        0
    });
    items.push((ITEM_FILE_PARAMETERS, META_IS_REQUIRED, fp.as_bytes().to_vec()));
    let vd = META_IS_REQUIRED | META_IS_VIRTUAL_DISK;
    items.push((ITEM_VIRTUAL_DISK_SIZE, vd, p.size.to_le_bytes().to_vec()));
    items.push((ITEM_PAGE83, vd, MsGuid::from_uuid(new_uuid()).0.to_vec()));
    items.push((ITEM_LOGICAL_SECTOR_SIZE, vd, p.logical.to_le_bytes().to_vec()));
    items.push((ITEM_PHYSICAL_SECTOR_SIZE, vd, p.physical.to_le_bytes().to_vec()));
    if let Some(parent) = &p.parent {
        items.push((ITEM_PARENT_LOCATOR, META_IS_REQUIRED, parent_locator(parent)));
    }
    let mut hdr = MetadataTableHeader::new_zeroed();
    hdr.signature = METADATA_SIGNATURE;
    hdr.entry_count.set(items.len() as u16);
    region[..32].copy_from_slice(hdr.as_bytes());
    let mut at = METADATA_TABLE_SIZE;
    for (i, (id, flags, data)) in items.iter().enumerate() {
        let mut e = MetadataTableEntry::new_zeroed();
        e.item_id = *id;
        e.offset.set(at as u32);
        e.length.set(data.len() as u32);
        e.flags.set(*flags);
        region[32 + 32 * i..64 + 32 * i].copy_from_slice(e.as_bytes());
        region[at..at + data.len()].copy_from_slice(data);
        at += data.len().div_ceil(8) * 8;
    }
    region
}

fn region_table(bat: (u64, u64), meta: (u64, u64)) -> Vec<u8> {
    let mut t = vec![0u8; REGION_TABLE_SIZE];
    let mut h = RegionTableHeader::new_zeroed();
    h.signature.set(REGION_SIGNATURE);
    h.entry_count.set(2);
    t[..16].copy_from_slice(h.as_bytes());
    for (i, (guid, (off, len))) in [(BAT_REGION, bat), (METADATA_REGION, meta)].into_iter().enumerate() {
        let mut e = RegionTableEntry::new_zeroed();
        e.guid = guid;
        e.file_offset.set(off);
        e.length.set(len as u32);
        e.flags.set(REGION_REQUIRED);
        t[16 + 32 * i..48 + 32 * i].copy_from_slice(e.as_bytes());
    }
    let crc = checksum_with_zero_field(&t, 4);
    t[4..8].copy_from_slice(&crc.to_le_bytes());
    t
}

/// Where a new image's structures go: header section, log, metadata, BAT, then payload.
struct Layout {
    geo: Geometry,
    log_off: u64,
    meta_off: u64,
    bat_off: u64,
    bat_len: u64,
    data_off: u64,
}

impl Layout {
    fn new(p: &Params) -> Result<Self> {
        let geo = Geometry::new(p.block_size, p.logical, p.size, p.parent.is_some())?;
        let log_off = HEADER_SECTION_SIZE;
        let meta_off = log_off + u64::from(p.log_size);
        let bat_off = meta_off + MIB;
        let bat_len = (geo.total_entries * 8).div_ceil(MIB).max(1) * MIB;
        if bat_len > u64::from(u32::MAX) {
            return Err(Error::invalid_argument("BAT would exceed 4 GiB"));
        }
        Ok(Layout {
            geo,
            log_off,
            meta_off,
            bat_off,
            bat_len,
            data_off: bat_off + bat_len,
        })
    }
}

/// Bytes a new VHDX made with `options` (the `-o` keys of [`VhdxDriver::create`](crate::VhdxDriver))
/// needs to hold `source`: the metadata plus one payload block for every block that holds data.
/// A fixed image is always fully allocated.
pub fn measure(options: &Options, source: &MeasureSource) -> Result<Measurement> {
    let p = parse_options(&mut options.clone(), source.virtual_size, None)?;
    let l = Layout::new(&p)?;
    let g = &l.geo;
    let fully_allocated = l.data_off + g.data_blocks * g.block_size;
    let blocks = source.clusters(g.block_size).min(g.data_blocks);
    let required = if p.fixed {
        fully_allocated
    } else {
        l.data_off + blocks * g.block_size
    };
    Ok(Measurement {
        required,
        fully_allocated,
    })
}

/// Write a new VHDX into `storage`.
pub(crate) fn create(storage: &dyn Storage, mut spec: CreateSpec<'_>) -> Result<()> {
    let p = params(&mut spec)?;
    let Layout {
        geo: g,
        log_off,
        meta_off,
        bat_off,
        bat_len,
        data_off,
    } = Layout::new(&p)?;
    let end = if p.fixed {
        data_off + g.data_blocks * g.block_size
    } else {
        data_off
    };
    let w = |buf: &[u8], off: u64| storage.write_at(buf, off).io_context("writing the new image", off);
    storage.set_len(end).io_context("sizing the new image", 0)?;

    let mut id = FileIdentifier::new_zeroed();
    id.signature = FILE_SIGNATURE;
    for (slot, unit) in id.creator.iter_mut().zip(CREATOR.encode_utf16()) {
        slot.set(unit);
    }
    w(id.as_bytes(), 0)?;

    let mut h = Header::new_zeroed();
    h.signature.set(HEADER_SIGNATURE);
    h.file_write_guid = MsGuid::from_uuid(new_uuid());
    h.data_write_guid = MsGuid::from_uuid(new_uuid());
    h.version.set(1);
    h.log_length.set(p.log_size);
    h.log_offset.set(log_off);
    for (seq, off) in [(0u64, HEADER1_OFFSET), (1, HEADER2_OFFSET)] {
        h.sequence_number.set(seq);
        w(&header_bytes(&h), off)?;
    }
    let rt = region_table((bat_off, bat_len), (meta_off, MIB));
    w(&rt, REGION_TABLE1_OFFSET)?;
    w(&rt, REGION_TABLE2_OFFSET)?;
    w(&metadata_region(&p), meta_off)?;
    if p.fixed {
        // Every payload block present, in order after the BAT (sector bitmap entries stay 0).
        const PER_WRITE: u64 = 1 << 16;
        let mut block = 0;
        while block < g.data_blocks {
            let n = PER_WRITE.min(g.data_blocks - block);
            let first = g.payload_index(block) as u64;
            let last = g.payload_index(block + n - 1) as u64;
            let mut buf = vec![0u8; ((last - first + 1) * 8) as usize];
            for b in block..block + n {
                let i = g.payload_index(b) as u64 - first;
                let e = bat_entry(payload::FULLY_PRESENT, data_off + b * g.block_size);
                buf[(i * 8) as usize..(i * 8 + 8) as usize].copy_from_slice(&e.to_le_bytes());
            }
            w(&buf, bat_off + first * 8)?;
            block += n;
        }
    }
    storage.flush().io_context("flushing the new image", 0)
}
