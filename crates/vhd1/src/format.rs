//! On-disk structures of the VHD format, as Microsoft's "Virtual Hard Disk Image Format
//! Specification" (version 1.0) defines them. Definitions only: every multi-byte field is
//! big-endian, every struct is size-checked at compile time, and nothing here allocates or does
//! I/O, so the module is usable from `no_std` code.

use zerocopy::byteorder::big_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Bytes per sector: VHD addresses everything in 512-byte sectors.
pub const SECTOR_SIZE: u64 = 512;

/// Footer "Cookie": identifies the original creator of the disk.
pub const FOOTER_COOKIE: [u8; 8] = *b"conectix";
/// Dynamic disk header "Cookie".
pub const HEADER_COOKIE: [u8; 8] = *b"cxsparse";

/// Footer "Features" bit: the disk is a candidate for deletion on shutdown.
pub const FEATURE_TEMPORARY: u32 = 0x1;
/// Footer "Features" bit that the specification requires always set.
pub const FEATURE_RESERVED: u32 = 0x2;

/// Footer "File Format Version" and dynamic header "Header Version": 1.0.
pub const VERSION_1_0: u32 = 0x0001_0000;

/// Footer "Data Offset" of a fixed disk (there is no dynamic header).
pub const FIXED_DATA_OFFSET: u64 = u64::MAX;

/// A BAT entry for a block that is not allocated.
pub const BAT_FREE: u32 = u32::MAX;

/// The largest disk the format supports in practice (and that QEMU accepts): 2040 GiB.
pub const MAX_DISK_SIZE: u64 = 2040 << 30;

/// Footer "Creator Host OS" for Windows.
pub const HOST_OS_WINDOWS: [u8; 4] = *b"Wi2k";
/// Footer "Creator Host OS" for Macintosh.
pub const HOST_OS_MAC: [u8; 4] = *b"Mac ";

/// Parent locator "Platform Code": none.
pub const PLATFORM_NONE: [u8; 4] = [0; 4];
/// Parent locator "Platform Code": Windows relative path, UTF-16LE.
pub const PLATFORM_W2RU: [u8; 4] = *b"W2ru";
/// Parent locator "Platform Code": Windows absolute path, UTF-16LE.
pub const PLATFORM_W2KU: [u8; 4] = *b"W2ku";
/// Parent locator "Platform Code": deprecated Windows relative path (ANSI).
pub const PLATFORM_WI2R: [u8; 4] = *b"Wi2r";
/// Parent locator "Platform Code": deprecated Windows absolute path (ANSI).
pub const PLATFORM_WI2K: [u8; 4] = *b"Wi2k";
/// Parent locator "Platform Code": Mac OS alias blob.
pub const PLATFORM_MAC: [u8; 4] = *b"Mac ";
/// Parent locator "Platform Code": Mac OS X file URL (UTF-8).
pub const PLATFORM_MACX: [u8; 4] = *b"MacX";

/// Seconds between the Unix epoch and the VHD epoch (2000-01-01 00:00:00 UTC), the origin of
/// every VHD "Time Stamp" field.
pub const VHD_EPOCH_UNIX: u64 = 946_684_800;

/// Footer "Disk Type".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskType {
    /// 2: the file is the disk followed by the footer.
    Fixed,
    /// 3: blocks allocated on demand through the BAT.
    Dynamic,
    /// 4: a dynamic disk whose unwritten sectors come from a parent.
    Differencing,
}

impl DiskType {
    /// The type for a footer "Disk Type" value, if it is one this format still uses.
    pub fn from_raw(value: u32) -> Option<Self> {
        match value {
            2 => Some(DiskType::Fixed),
            3 => Some(DiskType::Dynamic),
            4 => Some(DiskType::Differencing),
            _ => None,
        }
    }

    /// The footer "Disk Type" value.
    pub fn raw(self) -> u32 {
        match self {
            DiskType::Fixed => 2,
            DiskType::Dynamic => 3,
            DiskType::Differencing => 4,
        }
    }

    /// A lowercase name: `fixed`, `dynamic`, `differencing`.
    pub fn name(self) -> &'static str {
        match self {
            DiskType::Fixed => "fixed",
            DiskType::Dynamic => "dynamic",
            DiskType::Differencing => "differencing",
        }
    }
}

/// The hard disk footer (512 bytes): at the end of every VHD file, and copied to offset 0 of
/// dynamic and differencing disks.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct Footer {
    /// "Cookie": `conectix`.
    pub cookie: [u8; 8],
    /// "Features": [`FEATURE_TEMPORARY`], [`FEATURE_RESERVED`].
    pub features: U32,
    /// "File Format Version": major in the high 16 bits, minor in the low.
    pub file_format_version: U32,
    /// "Data Offset": absolute byte offset of the dynamic disk header, or
    /// [`FIXED_DATA_OFFSET`] for fixed disks.
    pub data_offset: U64,
    /// "Time Stamp": creation time, seconds since 2000-01-01 00:00:00 UTC.
    pub timestamp: U32,
    /// "Creator Application": e.g. `vpc `, `win `, `qemu`, `qem2`, `d2v `.
    pub creator_application: [u8; 4],
    /// "Creator Version": major in the high 16 bits, minor in the low.
    pub creator_version: U32,
    /// "Creator Host OS": [`HOST_OS_WINDOWS`] or [`HOST_OS_MAC`].
    pub creator_host_os: [u8; 4],
    /// "Original Size": the size of the disk at creation, in bytes.
    pub original_size: U64,
    /// "Current Size": the size of the disk now, in bytes.
    pub current_size: U64,
    /// "Disk Geometry": cylinders.
    pub cylinders: U16,
    /// "Disk Geometry": heads.
    pub heads: u8,
    /// "Disk Geometry": sectors per track.
    pub sectors_per_track: u8,
    /// "Disk Type": see [`DiskType`].
    pub disk_type: U32,
    /// "Checksum": ones' complement of the sum of all footer bytes, this field counted as zero.
    pub checksum: U32,
    /// "Unique Id": identifies the disk (a differencing child records its parent's).
    pub unique_id: [u8; 16],
    /// "Saved State": 1 if the disk is in a saved state.
    pub saved_state: u8,
    /// "Reserved": zeros.
    pub reserved: [u8; 427],
}

const _: () = assert!(size_of::<Footer>() == 512);

/// One of the eight "Parent Locator Entries" of the dynamic disk header (24 bytes).
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct ParentLocatorEntry {
    /// "Platform Code": [`PLATFORM_W2RU`], [`PLATFORM_W2KU`], ... or zero for an unused entry.
    pub platform_code: [u8; 4],
    /// "Platform Data Space": space reserved for the locator data. The specification says
    /// sectors; Windows writes bytes.
    pub platform_data_space: U32,
    /// "Platform Data Length": length of the locator data in bytes.
    pub platform_data_length: U32,
    /// "Reserved": zero.
    pub reserved: U32,
    /// "Platform Data Offset": absolute byte offset of the locator data.
    pub platform_data_offset: U64,
}

const _: () = assert!(size_of::<ParentLocatorEntry>() == 24);

/// The dynamic disk header (1024 bytes), at the footer's "Data Offset".
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct DynamicHeader {
    /// "Cookie": `cxsparse`.
    pub cookie: [u8; 8],
    /// "Data Offset": unused, all ones.
    pub data_offset: U64,
    /// "Table Offset": absolute byte offset of the Block Allocation Table.
    pub table_offset: U64,
    /// "Header Version": [`VERSION_1_0`].
    pub header_version: U32,
    /// "Max Table Entries": number of BAT entries.
    pub max_table_entries: U32,
    /// "Block Size": bytes of data per block (not counting its sector bitmap); 2 MiB by default.
    pub block_size: U32,
    /// "Checksum": ones' complement of the sum of all header bytes, this field counted as zero.
    pub checksum: U32,
    /// "Parent Unique ID": the parent's footer "Unique Id" (differencing disks).
    pub parent_unique_id: [u8; 16],
    /// "Parent Time Stamp": the parent's modification time, seconds since 2000-01-01 UTC.
    pub parent_timestamp: U32,
    /// "Reserved": zero.
    pub reserved1: U32,
    /// "Parent Unicode Name": the parent's file name, UTF-16BE, NUL padded.
    pub parent_unicode_name: [u8; 512],
    /// "Parent Locator Entries".
    pub parent_locators: [ParentLocatorEntry; 8],
    /// "Reserved": zeros.
    pub reserved2: [u8; 256],
}

const _: () = assert!(size_of::<DynamicHeader>() == 1024);

/// Size of a [`Footer`] in bytes.
pub const FOOTER_SIZE: u64 = size_of::<Footer>() as u64;
/// Size of a [`DynamicHeader`] in bytes.
pub const HEADER_SIZE: u64 = size_of::<DynamicHeader>() as u64;

/// Byte range of [`Footer::checksum`] within the footer.
pub const FOOTER_CHECKSUM_RANGE: core::ops::Range<usize> = 64..68;
/// Byte range of [`DynamicHeader::checksum`] within the header.
pub const HEADER_CHECKSUM_RANGE: core::ops::Range<usize> = 36..40;

/// The VHD checksum of `bytes`: ones' complement of the byte sum, with the bytes in `skip` (the
/// checksum field itself) counted as zero.
pub fn checksum(bytes: &[u8], skip: core::ops::Range<usize>) -> u32 {
    let sum = bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| !skip.contains(i))
        .fold(0u32, |acc, (_, &b)| acc.wrapping_add(u32::from(b)));
    !sum
}

/// Bytes of the sector bitmap that precedes each block of `block_size` bytes: one bit per
/// sector, rounded up to whole sectors.
pub fn bitmap_size(block_size: u32) -> u64 {
    let sectors = u64::from(block_size) / SECTOR_SIZE;
    sectors.div_ceil(8).div_ceil(SECTOR_SIZE) * SECTOR_SIZE
}

/// Whether bit `sector` of a sector bitmap is set (bit 7 of byte 0 is sector 0).
pub fn bitmap_get(bitmap: &[u8], sector: usize) -> bool {
    bitmap.get(sector / 8).is_some_and(|b| b & (0x80 >> (sector % 8)) != 0)
}

/// Set bit `sector` of a sector bitmap (bit 7 of byte 0 is sector 0).
pub fn bitmap_set(bitmap: &mut [u8], sector: usize) {
    if let Some(b) = bitmap.get_mut(sector / 8) {
        *b |= 0x80 >> (sector % 8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::FromZeros;

    #[test]
    fn field_offsets_follow_the_spec() {
        let mut f = Footer::new_zeroed();
        f.checksum.set(0x0102_0304);
        assert_eq!(&f.as_bytes()[FOOTER_CHECKSUM_RANGE], &[1, 2, 3, 4]);
        f.disk_type.set(3);
        assert_eq!(f.as_bytes()[63], 3);
        f.unique_id[0] = 0xaa;
        assert_eq!(f.as_bytes()[68], 0xaa);
        let mut h = DynamicHeader::new_zeroed();
        h.checksum.set(0x0a0b_0c0d);
        assert_eq!(&h.as_bytes()[HEADER_CHECKSUM_RANGE], &[0xa, 0xb, 0xc, 0xd]);
        h.parent_locators[0].platform_code = PLATFORM_W2KU;
        assert_eq!(&h.as_bytes()[576..580], b"W2ku");
    }

    #[test]
    fn bitmaps() {
        assert_eq!(bitmap_size(2 << 20), 512);
        assert_eq!(bitmap_size(512), 512);
        assert_eq!(bitmap_size(32 << 20), 8192);
        let mut b = [0u8; 2];
        bitmap_set(&mut b, 0);
        bitmap_set(&mut b, 9);
        assert_eq!(b, [0x80, 0x40]);
        assert!(bitmap_get(&b, 0) && bitmap_get(&b, 9) && !bitmap_get(&b, 1));
        assert!(!bitmap_get(&b, 1000));
    }
}
