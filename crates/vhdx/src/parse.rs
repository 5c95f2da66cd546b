//! Reading and validating the fixed structures: file identifier, headers, region tables,
//! metadata table and items, parent locator. Every read is bounded by the file size first.

#![warn(clippy::arithmetic_side_effects)]

use crate::format::*;
use disk_core::guid::MsGuid;
use disk_core::utf16::{self, Endian};
use disk_core::{Error, IoResultExt, Result, Storage};
use zerocopy::{FromBytes, IntoBytes};

/// Read `len` bytes at `offset`, refusing ranges past `file_len` (no allocation on a lie).
pub(crate) fn read_bounded(
    storage: &dyn Storage,
    file_len: u64,
    offset: u64,
    len: u64,
    structure: &'static str,
) -> Result<Vec<u8>> {
    let end = offset.checked_add(len).filter(|&e| e <= file_len).ok_or_else(|| {
        Error::corrupt(format!(
            "{len} bytes at {offset:#x} lie past the end of the file ({file_len} bytes)"
        ))
        .in_structure(structure)
        .at_offset(offset)
    })?;
    let _ = end;
    let n = usize::try_from(len).map_err(|_| Error::corrupt("structure too large").in_structure(structure))?;
    let mut buf = vec![0u8; n];
    storage
        .read_at(&mut buf, offset)
        .io_context("reading", offset)
        .map_err(|e| e.in_structure(structure))?;
    Ok(buf)
}

/// Whether `x` is a multiple of `align` (a power of two).
pub(crate) fn aligned(x: u64, align: u64) -> bool {
    x.is_multiple_of(align)
}

/// CRC-32C of `bytes` with the 4-byte checksum field at `at` taken as zero.
pub(crate) fn checksum_with_zero_field(bytes: &[u8], at: usize) -> u32 {
    let (head, rest) = bytes.split_at(at.min(bytes.len()));
    let tail = rest.get(4..).unwrap_or(&[]);
    let crc = crc32c::crc32c(head);
    let crc = crc32c::crc32c_append(crc, &[0; 4]);
    crc32c::crc32c_append(crc, tail)
}

/// The creator string of the file identifier (empty if absent or not UTF-16).
pub(crate) fn read_creator(storage: &dyn Storage, file_len: u64) -> Result<String> {
    let buf = read_bounded(
        storage,
        file_len,
        0,
        size_of::<FileIdentifier>() as u64,
        "file identifier",
    )?;
    let id = FileIdentifier::read_from_bytes(&buf).map_err(|_| Error::corrupt("short file identifier"))?;
    if id.signature != FILE_SIGNATURE {
        return Err(Error::corrupt("not a VHDX file (no 'vhdxfile' signature)").in_structure("file identifier"));
    }
    Ok(utf16::decode(utf16::before_nul(id.creator.as_bytes()), Endian::Little).unwrap_or_default())
}

/// Both header slots, parsed.
#[derive(Clone, Copy)]
pub(crate) struct Headers {
    /// The current header.
    pub current: Header,
    /// Slot (0 at 64 KiB, 1 at 128 KiB) of the current header.
    pub slot: usize,
    /// Whether each slot holds a valid header.
    pub valid: [bool; 2],
}

/// The file offset of header slot `slot`.
pub(crate) fn header_offset(slot: usize) -> u64 {
    if slot == 0 { HEADER1_OFFSET } else { HEADER2_OFFSET }
}

fn parse_header(buf: &[u8]) -> Option<Header> {
    let h = Header::read_from_bytes(buf).ok()?;
    if h.signature.get() != HEADER_SIGNATURE || h.checksum.get() != checksum_with_zero_field(buf, 4) {
        return None;
    }
    Some(h)
}

/// Read both headers and choose the current one (valid checksum, highest sequence number).
pub(crate) fn read_headers(storage: &dyn Storage, file_len: u64) -> Result<Headers> {
    let mut parsed = [None, None];
    for (slot, p) in parsed.iter_mut().enumerate() {
        let off = header_offset(slot);
        let buf = read_bounded(storage, file_len, off, HEADER_SIZE as u64, "header")?;
        *p = parse_header(&buf);
    }
    let valid = [parsed[0].is_some(), parsed[1].is_some()];
    let (current, slot) = match (parsed[0], parsed[1]) {
        (Some(a), Some(b)) if b.sequence_number.get() > a.sequence_number.get() => (b, 1),
        (Some(a), _) => (a, 0),
        (None, Some(b)) => (b, 1),
        (None, None) => {
            return Err(Error::corrupt("neither header has a valid signature and checksum")
                .in_structure("header")
                .at_offset(HEADER1_OFFSET));
        }
    };
    let off = header_offset(slot);
    let bad = |m: String| Error::corrupt(m).in_structure("header").at_offset(off);
    if current.version.get() != 1 {
        return Err(
            Error::unsupported(format!("VHDX version {} (only 1 is known)", current.version.get()))
                .in_structure("header"),
        );
    }
    if current.log_version.get() != 0 {
        return Err(Error::unsupported(format!("log version {}", current.log_version.get())).in_structure("header"));
    }
    let (log_off, log_len) = (current.log_offset.get(), u64::from(current.log_length.get()));
    if !aligned(log_off, MIB) || !aligned(log_len, MIB) || (log_len > 0 && log_off < HEADER_SECTION_SIZE) {
        return Err(bad(format!(
            "log at {log_off:#x} of {log_len} bytes is not 1 MiB aligned"
        )));
    }
    if !current.log_guid.is_nil() && log_off.checked_add(log_len).is_none_or(|e| e > file_len) {
        return Err(bad(format!(
            "log at {log_off:#x} of {log_len} bytes lies past the end of the file"
        )));
    }
    Ok(Headers { current, slot, valid })
}

/// Serialize a header with its checksum filled in.
pub(crate) fn header_bytes(h: &Header) -> Vec<u8> {
    let mut h = *h;
    h.checksum.set(0);
    let mut buf = h.as_bytes().to_vec();
    let crc = checksum_with_zero_field(&buf, 4);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    buf
}

/// Offset and length of a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Region {
    /// File offset.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
}

/// The regions a VHDX needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Regions {
    /// The BAT region.
    pub bat: Region,
    /// The metadata region.
    pub metadata: Region,
    /// Whether each region table copy was valid.
    pub valid: [bool; 2],
}

fn parse_region_table(buf: &[u8], file_len: u64, at: u64) -> Result<(Region, Region)> {
    let bad = |m: String| Error::corrupt(m).in_structure("region table").at_offset(at);
    let (hdr, rest) = RegionTableHeader::read_from_prefix(buf).map_err(|_| bad("short".into()))?;
    if hdr.signature.get() != REGION_SIGNATURE {
        return Err(bad("bad signature".into()));
    }
    if hdr.checksum.get() != checksum_with_zero_field(buf, 4) {
        return Err(bad("bad checksum".into()));
    }
    let count = hdr.entry_count.get();
    if count > MAX_REGION_ENTRIES {
        return Err(bad(format!("{count} entries (at most {MAX_REGION_ENTRIES})")));
    }
    let (entries, _) = <[RegionTableEntry]>::ref_from_prefix_with_elems(rest, count as usize)
        .map_err(|_| bad("entries do not fit".into()))?;
    let (mut bat, mut meta) = (None, None);
    let mut seen: Vec<Region> = Vec::new();
    for e in entries {
        let r = Region {
            offset: e.file_offset.get(),
            length: u64::from(e.length.get()),
        };
        let slot = if e.guid == BAT_REGION {
            &mut bat
        } else if e.guid == METADATA_REGION {
            &mut meta
        } else if e.flags.get() & REGION_REQUIRED != 0 {
            return Err(Error::unsupported(format!("unknown required region {}", e.guid)).in_structure("region table"));
        } else {
            continue;
        };
        if slot.is_some() {
            return Err(bad(format!("region {} listed twice", e.guid)));
        }
        if !aligned(r.offset, MIB) || r.offset < HEADER_SECTION_SIZE || r.length == 0 || !aligned(r.length, MIB) {
            return Err(bad(format!(
                "region {} at {:#x} of {} bytes is not 1 MiB aligned",
                e.guid, r.offset, r.length
            )));
        }
        if r.offset.checked_add(r.length).is_none_or(|end| end > file_len) {
            return Err(bad(format!(
                "region {} at {:#x} lies past the end of the file",
                e.guid, r.offset
            )));
        }
        if seen
            .iter()
            .any(|s| r.offset < s.offset.saturating_add(s.length) && s.offset < r.offset.saturating_add(r.length))
        {
            return Err(bad(format!("region {} overlaps another", e.guid)));
        }
        seen.push(r);
        *slot = Some(r);
    }
    match (bat, meta) {
        (Some(b), Some(m)) => Ok((b, m)),
        _ => Err(bad("BAT or metadata region missing".into())),
    }
}

/// Read the region tables: the first valid copy is used.
pub(crate) fn read_regions(storage: &dyn Storage, file_len: u64) -> Result<Regions> {
    let mut results = Vec::new();
    for off in [REGION_TABLE1_OFFSET, REGION_TABLE2_OFFSET] {
        let buf = read_bounded(storage, file_len, off, REGION_TABLE_SIZE as u64, "region table")?;
        results.push(parse_region_table(&buf, file_len, off));
    }
    let valid = [results[0].is_ok(), results[1].is_ok()];
    let mut first_err = None;
    for r in results {
        match r {
            Ok((bat, metadata)) => return Ok(Regions { bat, metadata, valid }),
            Err(e) if e.kind() == disk_core::ErrorKind::Unsupported => return Err(e),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.unwrap_or_else(|| Error::corrupt("no valid region table")))
}

/// Parsed parent locator: key-value pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ParentLocator {
    /// The pairs, in file order.
    pub entries: Vec<(String, String)>,
}

impl ParentLocator {
    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// The metadata items the engine uses.
#[derive(Debug, Clone)]
pub(crate) struct Metadata {
    /// Payload block size.
    pub block_size: u32,
    /// `LeaveBlocksAllocated` (fixed disk).
    pub leave_allocated: bool,
    /// `HasParent` (differencing disk).
    pub has_parent: bool,
    /// Virtual disk size in bytes.
    pub virtual_size: u64,
    /// File offset of the Virtual Disk Size item (for resizing).
    pub size_item_offset: u64,
    /// The disk id.
    pub page83: MsGuid,
    /// Logical sector size.
    pub logical_sector_size: u32,
    /// Physical sector size.
    pub physical_sector_size: u32,
    /// The parent locator of a differencing disk.
    pub parent: Option<ParentLocator>,
}

fn item<'a>(region: &'a [u8], e: &MetadataTableEntry, min: usize) -> Result<&'a [u8]> {
    let off = e.offset.get() as usize;
    let len = e.length.get() as usize;
    if len < min {
        return Err(
            Error::corrupt(format!("metadata item {} is {len} bytes, needs {min}", e.item_id)).in_structure("metadata"),
        );
    }
    region.get(off..off.saturating_add(len)).ok_or_else(|| {
        Error::corrupt(format!("metadata item {} lies outside the region", e.item_id)).in_structure("metadata")
    })
}

fn parse_parent_locator(data: &[u8]) -> Result<ParentLocator> {
    let bad = |m: &str| Error::corrupt(format!("parent locator: {m}")).in_structure("metadata");
    let (hdr, rest) = ParentLocatorHeader::read_from_prefix(data).map_err(|_| bad("too short"))?;
    if hdr.locator_type != PARENT_LOCATOR_VHDX {
        return Err(Error::unsupported(format!("parent locator type {}", hdr.locator_type)).in_structure("metadata"));
    }
    let count = usize::from(hdr.key_value_count.get());
    let (entries, _) =
        <[ParentLocatorEntry]>::ref_from_prefix_with_elems(rest, count).map_err(|_| bad("entries do not fit"))?;
    let mut out = ParentLocator::default();
    for e in entries {
        let text = |off: u32, len: u16| -> Result<String> {
            let off = off as usize;
            let bytes = data
                .get(off..off.saturating_add(usize::from(len)))
                .ok_or_else(|| bad("key or value outside the item"))?;
            utf16::decode(bytes, Endian::Little).ok_or_else(|| bad("text is not UTF-16"))
        };
        let key = text(e.key_offset.get(), e.key_length.get())?;
        let value = text(e.value_offset.get(), e.value_length.get())?;
        out.entries.push((key, value));
    }
    Ok(out)
}

/// Read and validate the metadata region.
pub(crate) fn read_metadata(storage: &dyn Storage, file_len: u64, region: Region) -> Result<Metadata> {
    let bad = |m: String| Error::corrupt(m).in_structure("metadata").at_offset(region.offset);
    let data = read_bounded(
        storage,
        file_len,
        region.offset,
        region.length.min(16 * MIB),
        "metadata",
    )?;
    let (hdr, rest) = MetadataTableHeader::read_from_prefix(&data).map_err(|_| bad("short table".into()))?;
    if hdr.signature != METADATA_SIGNATURE {
        return Err(bad("bad signature".into()));
    }
    let count = hdr.entry_count.get();
    if count > MAX_METADATA_ENTRIES {
        return Err(bad(format!("{count} entries (at most {MAX_METADATA_ENTRIES})")));
    }
    let (entries, _) = <[MetadataTableEntry]>::ref_from_prefix_with_elems(rest, usize::from(count))
        .map_err(|_| bad("entries do not fit".into()))?;
    let mut fp = None;
    let mut size = None;
    let mut size_item_offset = 0;
    let mut page83 = None;
    let mut logical = None;
    let mut physical = None;
    let mut parent = None;
    for e in entries {
        let id = e.item_id;
        if e.length.get() > 0 && (e.offset.get() as usize) < METADATA_TABLE_SIZE {
            return Err(bad(format!("item {id} overlaps the metadata table")));
        }
        if id == ITEM_FILE_PARAMETERS {
            fp = Some(
                FileParameters::read_from_prefix(item(&data, e, 8)?)
                    .map_err(|_| bad("fp".into()))?
                    .0,
            );
        } else if id == ITEM_VIRTUAL_DISK_SIZE {
            // Inside the region (checked by `item`), which lies inside the file.
            size_item_offset = region.offset.saturating_add(u64::from(e.offset.get()));
            size = Some(
                VirtualDiskSize::read_from_prefix(item(&data, e, 8)?)
                    .map_err(|_| bad("size".into()))?
                    .0,
            );
        } else if id == ITEM_PAGE83 {
            page83 = Some(
                Page83Data::read_from_prefix(item(&data, e, 16)?)
                    .map_err(|_| bad("p83".into()))?
                    .0,
            );
        } else if id == ITEM_LOGICAL_SECTOR_SIZE {
            logical = Some(
                SectorSize::read_from_prefix(item(&data, e, 4)?)
                    .map_err(|_| bad("lss".into()))?
                    .0,
            );
        } else if id == ITEM_PHYSICAL_SECTOR_SIZE {
            physical = Some(
                SectorSize::read_from_prefix(item(&data, e, 4)?)
                    .map_err(|_| bad("pss".into()))?
                    .0,
            );
        } else if id == ITEM_PARENT_LOCATOR {
            parent = Some(parse_parent_locator(item(&data, e, 20)?)?);
        } else if e.flags.get() & META_IS_REQUIRED != 0 {
            return Err(Error::unsupported(format!("unknown required metadata item {id}")).in_structure("metadata"));
        }
    }
    let missing = |what: &str| bad(format!("required item '{what}' is missing"));
    let fp = fp.ok_or_else(|| missing("file parameters"))?;
    let block_size = fp.block_size.get();
    if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) || !block_size.is_power_of_two() {
        return Err(bad(format!(
            "block size {block_size} is not a power of two in 1 MiB..256 MiB"
        )));
    }
    let logical = logical.ok_or_else(|| missing("logical sector size"))?.size.get();
    let physical = physical.ok_or_else(|| missing("physical sector size"))?.size.get();
    for (what, v) in [("logical", logical), ("physical", physical)] {
        if v != 512 && v != 4096 {
            return Err(bad(format!("{what} sector size {v} (must be 512 or 4096)")));
        }
    }
    let virtual_size = size.ok_or_else(|| missing("virtual disk size"))?.size.get();
    if virtual_size > MAX_VIRTUAL_SIZE || !virtual_size.is_multiple_of(u64::from(logical)) {
        return Err(bad(format!(
            "virtual disk size {virtual_size} is not a multiple of {logical} up to 64 TiB"
        )));
    }
    let has_parent = fp.flags.get() & HAS_PARENT != 0;
    if has_parent && parent.is_none() {
        return Err(missing("parent locator"));
    }
    Ok(Metadata {
        block_size,
        leave_allocated: fp.flags.get() & LEAVE_BLOCKS_ALLOCATED != 0,
        has_parent,
        virtual_size,
        size_item_offset,
        page83: page83.ok_or_else(|| missing("page 83 data"))?.page83,
        logical_sector_size: logical,
        physical_sector_size: physical,
        parent: if has_parent { parent } else { None },
    })
}
