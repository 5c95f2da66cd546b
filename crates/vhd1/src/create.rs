//! Creating VHDs: fixed (exact size, like Hyper-V and Azure), dynamic, differencing; and turning
//! a raw file into a fixed VHD by appending a footer.

use crate::footer;
use crate::format::{
    DiskType, DynamicHeader, FOOTER_SIZE, Footer, HEADER_COOKIE, HEADER_SIZE, MAX_DISK_SIZE, SECTOR_SIZE, VERSION_1_0,
};
use crate::header;
use crate::layer::VhdLayer;
use crate::parent;
use disk_core::geometry::Chs;
use disk_core::{CreateSpec, Error, IoResultExt, Result, Storage};
use std::path::Path;
use zerocopy::{FromZeros, IntoBytes};

/// Default block size of dynamic and differencing disks: 2 MiB.
pub const DEFAULT_BLOCK_SIZE: u32 = 2 << 20;
/// Largest block size offered when creating.
pub const MAX_CREATE_BLOCK_SIZE: u32 = 256 << 20;

/// Parsed create options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VhdCreateOptions {
    /// Fixed or dynamic (a differencing disk is dynamic with a parent).
    pub fixed: bool,
    /// Block size of dynamic and differencing disks.
    pub block_size: u32,
    /// `force_size`: `None` or `Some(true)` keep the exact size (our default); `Some(false)`
    /// rounds it up to a CHS geometry as QEMU does without `force_size`.
    pub force_size: Option<bool>,
    /// `azure=on`: a fixed disk whose size is rounded up to a whole number of MiB, as Azure
    /// requires of uploaded VHDs.
    pub azure: bool,
}

/// Azure accepts only VHDs whose virtual size is a whole number of MiB.
pub const AZURE_ALIGNMENT: u64 = 1 << 20;

impl VhdCreateOptions {
    /// The virtual size recorded for a requested `size` (rounded up for `azure`).
    pub fn size_for(&self, size: u64) -> Result<u64> {
        if !self.azure {
            return Ok(size);
        }
        size.checked_next_multiple_of(AZURE_ALIGNMENT)
            .ok_or_else(|| Error::invalid_argument(format!("size {size} exceeds the VHD maximum of 2040 GiB")))
    }
}

impl VhdCreateOptions {
    /// Take `subformat`, `block_size` and `force_size` from `options`, refusing anything else.
    pub fn parse(mut options: disk_core::Options) -> Result<Self> {
        let azure = options.take_bool("azure")?.unwrap_or(false);
        let fixed = match options.take_str("subformat").as_deref() {
            None if azure => true,
            Some("dynamic") if azure => {
                return Err(Error::invalid_argument(
                    "azure=on makes a fixed VHD: subformat must be fixed",
                ));
            }
            None | Some("dynamic") => false,
            Some("fixed") => true,
            Some(other) => {
                return Err(Error::invalid_argument(format!(
                    "subformat '{other}' is not dynamic or fixed"
                )));
            }
        };
        let block_size = match options.take_size("block_size")? {
            None => DEFAULT_BLOCK_SIZE,
            Some(b) => u32::try_from(b)
                .ok()
                .filter(|b| b.is_power_of_two() && u64::from(*b) >= SECTOR_SIZE && *b <= MAX_CREATE_BLOCK_SIZE)
                .ok_or_else(|| {
                    Error::invalid_argument(format!(
                        "block_size {b} must be a power of two from 512 bytes to 256 MiB"
                    ))
                })?,
        };
        let force_size = options.take_bool("force_size")?;
        options.finish()?;
        if azure && force_size == Some(false) {
            return Err(Error::invalid_argument(
                "azure=on keeps the exact (MiB-rounded) size: force_size=off does not apply",
            ));
        }
        Ok(VhdCreateOptions {
            fixed,
            block_size,
            force_size,
            azure,
        })
    }
}

/// Bytes a new image of `size` bytes with `options` occupies once `allocated_blocks` of its
/// blocks hold data (ignored for fixed disks): for `vdisk measure` (`required` with the
/// source's allocated blocks at this block size, `fully-allocated` with all of them).
pub fn file_size(size: u64, options: &VhdCreateOptions, allocated_blocks: u64) -> Result<u64> {
    let (size, _) = size_and_geometry(options.size_for(size)?, options.force_size)?;
    if options.fixed {
        return Ok(size + FOOTER_SIZE);
    }
    let block_size = u64::from(options.block_size);
    let blocks = size.div_ceil(block_size);
    let bat = (blocks * 4).div_ceil(SECTOR_SIZE) * SECTOR_SIZE;
    let bitmap = crate::format::bitmap_size(options.block_size);
    let metadata = FOOTER_SIZE + HEADER_SIZE + bat;
    let end = crate::header::blocks_end(metadata, allocated_blocks.min(blocks), options.block_size, bitmap);
    Ok(end + FOOTER_SIZE)
}

/// The size and geometry to record for a requested size.
fn size_and_geometry(size: u64, force_size: Option<bool>) -> Result<(u64, Chs)> {
    let size = size
        .checked_next_multiple_of(SECTOR_SIZE)
        .filter(|&s| s <= MAX_DISK_SIZE)
        .ok_or_else(|| Error::invalid_argument(format!("size {size} exceeds the VHD maximum of 2040 GiB")))?;
    let sectors = size / SECTOR_SIZE;
    if force_size != Some(false) {
        return Ok((size, Chs::for_sectors(sectors)));
    }
    // QEMU without force_size: the smallest geometry that holds the size, and that size.
    let mut extra = 0;
    let mut chs = Chs::for_sectors(sectors);
    while chs.total_sectors() < sectors && chs != Chs::MAX {
        extra += 1;
        chs = Chs::for_sectors(sectors + extra);
    }
    if chs == Chs::MAX {
        return Ok((size, chs));
    }
    Ok((chs.total_sectors() * SECTOR_SIZE, chs))
}

/// Create the image `spec` describes in the empty `storage`.
pub fn create(storage: &dyn Storage, spec: CreateSpec<'_>) -> Result<()> {
    let opts = VhdCreateOptions::parse(spec.options)?;
    let (size, chs) = size_and_geometry(opts.size_for(spec.size)?, opts.force_size)?;
    match (&spec.backing, opts.fixed) {
        (Some(_), true) => Err(Error::invalid_argument(
            "a VHD with a backing file is a differencing disk and cannot be fixed",
        )),
        (None, true) => create_fixed(storage, size, chs),
        (None, false) => create_sparse(storage, size, chs, opts.block_size, None),
        (Some(backing), false) => {
            let Some(parent) = backing.image.top().as_any().downcast_ref::<VhdLayer>() else {
                return Err(Error::unsupported(format!(
                    "a VHD differencing disk needs a VHD parent, not {}",
                    backing.image.top().format()
                )));
            };
            let link = ParentLink {
                id: parent.footer().unique_id,
                timestamp: backing
                    .absolute
                    .and_then(mtime_timestamp)
                    .unwrap_or_else(|| parent.footer().timestamp.get()),
                recorded: &backing.recorded,
                absolute: backing.absolute,
                child: spec.path,
            };
            create_sparse(storage, size, chs, opts.block_size, Some(link))
        }
    }
}

/// A parent file's modification time as a VHD timestamp.
pub(crate) fn mtime_timestamp(path: &Path) -> Option<u32> {
    let unix = std::fs::metadata(path)
        .ok()?
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    u32::try_from(unix.checked_sub(crate::format::VHD_EPOCH_UNIX)?).ok()
}

/// What a differencing disk records about its parent (see [`crate::parent::record_parent`]).
struct ParentLink<'a> {
    id: [u8; 16],
    timestamp: u32,
    recorded: &'a str,
    absolute: Option<&'a Path>,
    child: Option<&'a Path>,
}

fn create_fixed(storage: &dyn Storage, size: u64, chs: Chs) -> Result<()> {
    let footer = footer::build(DiskType::Fixed, size, chs, None);
    storage.set_len(size).io_context("sizing the fixed disk", 0)?;
    storage
        .write_at(footer.as_bytes(), size)
        .io_context("writing the footer", size)?;
    storage.flush().io_context("flushing the new image", 0)
}

/// Turn the raw disk in `storage` (its whole length, a multiple of 512 bytes) into a fixed VHD
/// by appending a footer, as Hyper-V's "convert to fixed" and Azure uploads do.
pub fn append_fixed_footer(storage: &dyn Storage) -> Result<()> {
    let size = storage.len().io_context("reading the file size", 0)?;
    if size % SECTOR_SIZE != 0 || size > MAX_DISK_SIZE {
        return Err(Error::invalid_argument(format!(
            "a raw file of {size} bytes is not a whole number of sectors up to 2040 GiB"
        )));
    }
    let footer = footer::build(DiskType::Fixed, size, Chs::for_sectors(size / SECTOR_SIZE), None);
    storage
        .write_at(footer.as_bytes(), size)
        .io_context("writing the footer", size)?;
    storage.flush().io_context("flushing the image", size)
}

fn create_sparse(
    storage: &dyn Storage,
    size: u64,
    chs: Chs,
    block_size: u32,
    link: Option<ParentLink<'_>>,
) -> Result<()> {
    let disk_type = if link.is_some() {
        DiskType::Differencing
    } else {
        DiskType::Dynamic
    };
    let header_offset = FOOTER_SIZE;
    let entries = u32::try_from(size.div_ceil(u64::from(block_size)))
        .map_err(|_| Error::invalid_argument("too many blocks for a BAT"))?;
    let bat_bytes = (u64::from(entries) * 4).div_ceil(SECTOR_SIZE) * SECTOR_SIZE;

    let mut header = DynamicHeader::new_zeroed();
    header.cookie = HEADER_COOKIE;
    header.data_offset.set(u64::MAX);
    header.header_version.set(VERSION_1_0);
    header.max_table_entries.set(entries);
    header.block_size.set(block_size);

    // Parent locators go between the header and the BAT: QEMU allocates new blocks right after
    // the BAT (it does not look at locators), so a child QEMU writes keeps its locators.
    let mut locator_data: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut table_offset = header_offset + HEADER_SIZE;
    if let Some(link) = &link {
        header.parent_unique_id = link.id;
        header.parent_timestamp.set(link.timestamp);
        let data = parent::record_parent(&mut header, link.recorded, link.absolute, link.child, table_offset)?;
        (locator_data, table_offset) = (data.pieces, data.end.next_multiple_of(SECTOR_SIZE));
    }
    header.table_offset.set(table_offset);
    let next = table_offset + bat_bytes;
    header::seal(&mut header);
    let footer: Footer = footer::build(disk_type, size, chs, Some(header_offset));

    storage
        .write_at(footer.as_bytes(), 0)
        .io_context("writing the footer copy", 0)?;
    storage
        .write_at(header.as_bytes(), header_offset)
        .io_context("writing the dynamic header", header_offset)?;
    let chunk = vec![0xffu8; bat_bytes.min(1 << 20) as usize];
    let mut at = table_offset;
    while at < table_offset + bat_bytes {
        let n = chunk.len().min((table_offset + bat_bytes - at) as usize);
        storage.write_at(&chunk[..n], at).io_context("writing the BAT", at)?;
        at += n as u64;
    }
    for (offset, data) in &locator_data {
        storage
            .write_at(data, *offset)
            .io_context("writing a parent locator", *offset)?;
    }
    storage
        .write_at(footer.as_bytes(), next)
        .io_context("writing the footer", next)?;
    storage.flush().io_context("flushing the new image", 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size_and_geometry(10_000_000, None).unwrap().0, 10_000_384);
        let (s, chs) = size_and_geometry(10_000_000, Some(false)).unwrap();
        assert_eq!(s, 10_027_008);
        assert_eq!(chs.total_sectors() * 512, s);
        assert!(size_and_geometry(MAX_DISK_SIZE + 1, None).is_err());
        assert_eq!(size_and_geometry(MAX_DISK_SIZE, Some(false)).unwrap().0, MAX_DISK_SIZE);
    }

    #[test]
    fn measured_sizes() {
        let dynamic = VhdCreateOptions::parse(disk_core::Options::new()).unwrap();
        assert_eq!(file_size(8 << 20, &dynamic, 0).unwrap(), 512 + 1024 + 512 + 512);
        // Blocks' data on 4 KiB boundaries: the first bitmap at 3584, then one every 2 MiB + 4 KiB.
        assert_eq!(
            file_size(8 << 20, &dynamic, 99).unwrap(),
            3584 + 3 * ((2 << 20) + 4096) + 512 + (2 << 20) + 512
        );
        let fixed = VhdCreateOptions::parse(disk_core::Options::parse("subformat=fixed").unwrap()).unwrap();
        assert_eq!(file_size(1000, &fixed, 0).unwrap(), 1024 + 512);
        let azure = VhdCreateOptions::parse(disk_core::Options::parse("azure=on").unwrap()).unwrap();
        assert!(azure.fixed);
        assert_eq!(file_size(1000, &azure, 0).unwrap(), (1 << 20) + 512);
        assert_eq!(file_size(1 << 20, &azure, 0).unwrap(), (1 << 20) + 512);
        for bad in ["azure=on,subformat=dynamic", "azure=on,force_size=off", "azure=maybe"] {
            assert!(
                VhdCreateOptions::parse(disk_core::Options::parse(bad).unwrap()).is_err(),
                "{bad}"
            );
        }
    }
}
