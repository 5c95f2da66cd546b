//! On-disk structures of MS-VHDX (version 1), as the specification names them.
//!
//! Only definitions: little-endian zerocopy structs, size-asserted, plus constants and the
//! well-known GUIDs. No I/O and no policy; the engine validates every field it uses.

#![warn(clippy::arithmetic_side_effects)]

use disk_core::guid::MsGuid;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// 1 KiB.
pub const KIB: u64 = 1024;
/// 1 MiB: the alignment of regions, the log and payload blocks.
pub const MIB: u64 = 1024 * KIB;

/// File type identifier at offset 0 (`vhdxfile`).
pub const FILE_SIGNATURE: [u8; 8] = *b"vhdxfile";
/// Offset of the first header.
pub const HEADER1_OFFSET: u64 = 64 * KIB;
/// Offset of the second header.
pub const HEADER2_OFFSET: u64 = 128 * KIB;
/// Offset of the first region table.
pub const REGION_TABLE1_OFFSET: u64 = 192 * KIB;
/// Offset of the second region table.
pub const REGION_TABLE2_OFFSET: u64 = 256 * KIB;
/// Size of the header section (file identifier, headers, region tables, reserved).
pub const HEADER_SECTION_SIZE: u64 = MIB;
/// Bytes covered by a header's checksum.
pub const HEADER_SIZE: usize = 4096;
/// Bytes covered by a region table's checksum.
pub const REGION_TABLE_SIZE: usize = 64 * 1024;
/// Bytes of the metadata table at the start of the metadata region.
pub const METADATA_TABLE_SIZE: usize = 64 * 1024;
/// Unit of the log: entries, descriptors' file offsets and data sectors.
pub const LOG_SECTOR: usize = 4096;

/// `head` header signature.
pub const HEADER_SIGNATURE: u32 = 0x6461_6568;
/// `regi` region table signature.
pub const REGION_SIGNATURE: u32 = 0x6967_6572;
/// `loge` log entry signature.
pub const LOG_ENTRY_SIGNATURE: u32 = 0x6567_6f6c;
/// `zero` zero descriptor signature.
pub const ZERO_DESC_SIGNATURE: u32 = 0x6f72_657a;
/// `desc` data descriptor signature.
pub const DATA_DESC_SIGNATURE: u32 = 0x6373_6564;
/// `data` data sector signature.
pub const DATA_SECTOR_SIGNATURE: u32 = 0x6174_6164;
/// `metadata` metadata table signature.
pub const METADATA_SIGNATURE: [u8; 8] = *b"metadata";

/// Most entries a region table may hold.
pub const MAX_REGION_ENTRIES: u32 = 2047;
/// Most entries a metadata table may hold.
pub const MAX_METADATA_ENTRIES: u16 = 2047;
/// Largest virtual disk the specification allows (64 TiB).
pub const MAX_VIRTUAL_SIZE: u64 = 64 * 1024 * 1024 * MIB;
/// Smallest payload block size.
pub const MIN_BLOCK_SIZE: u32 = MIB as u32;
/// Largest payload block size.
pub const MAX_BLOCK_SIZE: u32 = 256 * MIB as u32;
/// Sectors described by one sector bitmap block (2^23 bits in 1 MiB).
pub const SECTORS_PER_BITMAP_BLOCK: u64 = 1 << 23;

/// File type identifier (offset 0, 64 KiB reserved): `Signature` and `Creator`.
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct FileIdentifier {
    /// `Signature`: `vhdxfile`.
    pub signature: [u8; 8],
    /// `Creator`: UTF-16LE name of the writing application, NUL padded.
    pub creator: [U16; 256],
}
const _: () = assert!(size_of::<FileIdentifier>() == 520);

/// The header (two copies, at 64 KiB and 128 KiB; 4 KiB each, checksummed).
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct Header {
    /// `Signature`: `head`.
    pub signature: U32,
    /// `Checksum`: CRC-32C over the 4 KiB header with this field zero.
    pub checksum: U32,
    /// `SequenceNumber`: the valid header with the larger value is current.
    pub sequence_number: U64,
    /// `FileWriteGuid`: changed on the first write to the file after open.
    pub file_write_guid: MsGuid,
    /// `DataWriteGuid`: changed on the first user-visible data change after open.
    pub data_write_guid: MsGuid,
    /// `LogGuid`: nil when the log is empty, else identifies the valid log entries.
    pub log_guid: MsGuid,
    /// `LogVersion`: 0.
    pub log_version: U16,
    /// `Version`: 1.
    pub version: U16,
    /// `LogLength`: bytes, multiple of 1 MiB.
    pub log_length: U32,
    /// `LogOffset`: file offset, multiple of 1 MiB.
    pub log_offset: U64,
    /// Reserved, zero.
    pub reserved: [u8; 4016],
}
const _: () = assert!(size_of::<Header>() == HEADER_SIZE);

/// Region table header (two copies, at 192 KiB and 256 KiB; 64 KiB each, checksummed).
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct RegionTableHeader {
    /// `Signature`: `regi`.
    pub signature: U32,
    /// `Checksum`: CRC-32C over the 64 KiB table with this field zero.
    pub checksum: U32,
    /// `EntryCount`: at most 2047.
    pub entry_count: U32,
    /// Reserved.
    pub reserved: U32,
}
const _: () = assert!(size_of::<RegionTableHeader>() == 16);

/// Region table entry.
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct RegionTableEntry {
    /// `Guid`: which region.
    pub guid: MsGuid,
    /// `FileOffset`: multiple of 1 MiB.
    pub file_offset: U64,
    /// `Length`: multiple of 1 MiB.
    pub length: U32,
    /// Bit 0 `Required`: refuse the file if the region is unknown.
    pub flags: U32,
}
const _: () = assert!(size_of::<RegionTableEntry>() == 32);

/// `Required` bit of [`RegionTableEntry::flags`].
pub const REGION_REQUIRED: u32 = 1;

/// Log entry header (starts a log entry; descriptors follow in the same 4 KiB sectors).
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct LogEntryHeader {
    /// `Signature`: `loge`.
    pub signature: U32,
    /// `Checksum`: CRC-32C over the whole entry (`EntryLength` bytes) with this field zero.
    pub checksum: U32,
    /// `EntryLength`: bytes, multiple of 4 KiB.
    pub entry_length: U32,
    /// `Tail`: log offset of the oldest entry of the active sequence.
    pub tail: U32,
    /// `SequenceNumber`: consecutive within a sequence.
    pub sequence_number: U64,
    /// `DescriptorCount`: zero and data descriptors following this header.
    pub descriptor_count: U32,
    /// Reserved.
    pub reserved: U32,
    /// `LogGuid`: must equal the header's `LogGuid`.
    pub log_guid: MsGuid,
    /// `FlushedFileOffset`: file size known durable when the entry was written.
    pub flushed_file_offset: U64,
    /// `LastFileOffset`: file size the file must have after replay.
    pub last_file_offset: U64,
}
const _: () = assert!(size_of::<LogEntryHeader>() == 64);

/// A log descriptor: zero (`zero`) or data (`desc`); the signature tells which.
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct LogDescriptor {
    /// `ZeroSignature` / `DataSignature`.
    pub signature: U32,
    /// Zero descriptor: reserved. Data descriptor: `TrailingBytes` (last 4 bytes of the sector).
    pub trailing_bytes: [u8; 4],
    /// Zero descriptor: `ZeroLength` (multiple of 4 KiB). Data descriptor: `LeadingBytes`
    /// (first 8 bytes of the sector).
    pub leading_or_length: [u8; 8],
    /// `FileOffset`: where the data or zeros go, multiple of 4 KiB.
    pub file_offset: U64,
    /// `SequenceNumber`: the entry's sequence number.
    pub sequence_number: U64,
}
const _: () = assert!(size_of::<LogDescriptor>() == 32);

/// A log data sector (one per data descriptor, after the descriptor sectors).
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct LogDataSector {
    /// `DataSignature`: `data`.
    pub signature: U32,
    /// `SequenceHigh`: upper 32 bits of the entry's sequence number.
    pub sequence_high: U32,
    /// `Data`: bytes 8..4092 of the 4 KiB sector being logged.
    pub data: [u8; 4084],
    /// `SequenceLow`: lower 32 bits of the entry's sequence number.
    pub sequence_low: U32,
}
const _: () = assert!(size_of::<LogDataSector>() == LOG_SECTOR);

/// BAT entry state bits (0..=2) of a payload block.
pub mod payload {
    /// `PAYLOAD_BLOCK_NOT_PRESENT`: no data; zeros, or the parent's data.
    pub const NOT_PRESENT: u8 = 0;
    /// `PAYLOAD_BLOCK_UNDEFINED`: contents undefined (read as not present).
    pub const UNDEFINED: u8 = 1;
    /// `PAYLOAD_BLOCK_ZERO`: reads as zeros.
    pub const ZERO: u8 = 2;
    /// `PAYLOAD_BLOCK_UNMAPPED`: discarded.
    pub const UNMAPPED: u8 = 3;
    /// States 4 and 5, which the specification reserves: an entry holding one is invalid.
    pub const RESERVED: [u8; 2] = [4, 5];
    /// `PAYLOAD_BLOCK_FULLY_PRESENT`: every sector stored at `FileOffsetMB`.
    pub const FULLY_PRESENT: u8 = 6;
    /// `PAYLOAD_BLOCK_PARTIALLY_PRESENT`: the sector bitmap says which sectors are stored.
    pub const PARTIALLY_PRESENT: u8 = 7;
    /// The states of a block stored in the file at `FileOffsetMB`.
    pub const STORED: [u8; 2] = [FULLY_PRESENT, PARTIALLY_PRESENT];
}

/// BAT entry state bits of a sector bitmap block.
pub mod bitmap {
    /// `SB_BLOCK_NOT_PRESENT`.
    pub const NOT_PRESENT: u8 = 0;
    /// `SB_BLOCK_PRESENT`.
    pub const PRESENT: u8 = 6;
}

/// Mask of the `State` field of a BAT entry.
pub const BAT_STATE_MASK: u64 = 0x7;
/// Shift of the `FileOffsetMB` field of a BAT entry (bits 20..64).
pub const BAT_OFFSET_SHIFT: u32 = 20;

/// The `State` of a BAT entry.
pub fn bat_state(entry: u64) -> u8 {
    (entry & BAT_STATE_MASK) as u8
}

/// The file offset in bytes (`FileOffsetMB` * 1 MiB) of a BAT entry.
pub fn bat_offset(entry: u64) -> u64 {
    (entry >> BAT_OFFSET_SHIFT) << 20
}

/// A BAT entry from a state and a 1 MiB-aligned file offset.
pub fn bat_entry(state: u8, offset: u64) -> u64 {
    (offset & !(MIB - 1)) | u64::from(state)
}

/// Metadata table header (start of the metadata region).
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct MetadataTableHeader {
    /// `Signature`: `metadata`.
    pub signature: [u8; 8],
    /// Reserved.
    pub reserved: U16,
    /// `EntryCount`: at most 2047.
    pub entry_count: U16,
    /// Reserved.
    pub reserved2: [u8; 20],
}
const _: () = assert!(size_of::<MetadataTableHeader>() == 32);

/// Metadata table entry.
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct MetadataTableEntry {
    /// `ItemId`: which item.
    pub item_id: MsGuid,
    /// `Offset`: from the start of the metadata region, at least 64 KiB (0 if `Length` is 0).
    pub offset: U32,
    /// `Length`: bytes, at most 1 MiB.
    pub length: U32,
    /// Bits: 0 `IsUser`, 1 `IsVirtualDisk`, 2 `IsRequired`.
    pub flags: U32,
    /// Reserved.
    pub reserved: U32,
}
const _: () = assert!(size_of::<MetadataTableEntry>() == 32);

/// `IsUser` bit of [`MetadataTableEntry::flags`].
pub const META_IS_USER: u32 = 1;
/// `IsVirtualDisk` bit of [`MetadataTableEntry::flags`].
pub const META_IS_VIRTUAL_DISK: u32 = 2;
/// `IsRequired` bit of [`MetadataTableEntry::flags`].
pub const META_IS_REQUIRED: u32 = 4;

/// File Parameters metadata item.
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct FileParameters {
    /// `BlockSize`: payload block size, 1 MiB..=256 MiB, power of two.
    pub block_size: U32,
    /// Bits: 0 `LeaveBlocksAllocated` (fixed), 1 `HasParent` (differencing).
    pub flags: U32,
}
const _: () = assert!(size_of::<FileParameters>() == 8);

/// `LeaveBlocksAllocated` bit of [`FileParameters::flags`].
pub const LEAVE_BLOCKS_ALLOCATED: u32 = 1;
/// `HasParent` bit of [`FileParameters::flags`].
pub const HAS_PARENT: u32 = 2;

/// Virtual Disk Size metadata item.
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct VirtualDiskSize {
    /// `VirtualDiskSize`: bytes, a multiple of the logical sector size.
    pub size: U64,
}
const _: () = assert!(size_of::<VirtualDiskSize>() == 8);

/// Page 83 Data metadata item (the virtual disk id).
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct Page83Data {
    /// `Page83Data`: a GUID.
    pub page83: MsGuid,
}
const _: () = assert!(size_of::<Page83Data>() == 16);

/// Logical Sector Size or Physical Sector Size metadata item.
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct SectorSize {
    /// `LogicalSectorSize` / `PhysicalSectorSize`: 512 or 4096.
    pub size: U32,
}
const _: () = assert!(size_of::<SectorSize>() == 4);

/// Parent Locator metadata item header; key-value entries follow.
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct ParentLocatorHeader {
    /// `LocatorType`: [`PARENT_LOCATOR_VHDX`] for VHDX parents.
    pub locator_type: MsGuid,
    /// Reserved.
    pub reserved: U16,
    /// `KeyValueCount`.
    pub key_value_count: U16,
}
const _: () = assert!(size_of::<ParentLocatorHeader>() == 20);

/// Parent locator key-value entry; offsets from the start of the locator item, UTF-16LE text.
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct ParentLocatorEntry {
    /// `KeyOffset`.
    pub key_offset: U32,
    /// `ValueOffset`.
    pub value_offset: U32,
    /// `KeyLength`: bytes.
    pub key_length: U16,
    /// `ValueLength`: bytes.
    pub value_length: U16,
}
const _: () = assert!(size_of::<ParentLocatorEntry>() == 12);

/// A GUID from its textual form's fields (`Data1`, `Data2`, `Data3`, `Data4`), stored mixed-endian.
pub const fn guid(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> MsGuid {
    let a = d1.to_le_bytes();
    let b = d2.to_le_bytes();
    let c = d3.to_le_bytes();
    MsGuid([
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4], d4[5], d4[6], d4[7],
    ])
}

/// BAT region `2DC27766-F623-4200-9D64-115E9BFD4A08`.
pub const BAT_REGION: MsGuid = guid(
    0x2DC2_7766,
    0xF623,
    0x4200,
    [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08],
);
/// Metadata region `8B7CA206-4790-4B9A-B8FE-575F050F886E`.
pub const METADATA_REGION: MsGuid = guid(
    0x8B7C_A206,
    0x4790,
    0x4B9A,
    [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E],
);
/// File Parameters item `CAA16737-FA36-4D43-B3B6-33F0AA44E76B`.
pub const ITEM_FILE_PARAMETERS: MsGuid = guid(
    0xCAA1_6737,
    0xFA36,
    0x4D43,
    [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B],
);
/// Virtual Disk Size item `2FA54224-CD1B-4876-B211-5DBED83BF4B8`.
pub const ITEM_VIRTUAL_DISK_SIZE: MsGuid = guid(
    0x2FA5_4224,
    0xCD1B,
    0x4876,
    [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8],
);
/// Page 83 Data item `BECA12AB-B2E6-4523-93EF-C309E000C746`.
pub const ITEM_PAGE83: MsGuid = guid(
    0xBECA_12AB,
    0xB2E6,
    0x4523,
    [0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46],
);
/// Logical Sector Size item `8141BF1D-A96F-4709-BA47-F233A8FAAB5F`.
pub const ITEM_LOGICAL_SECTOR_SIZE: MsGuid = guid(
    0x8141_BF1D,
    0xA96F,
    0x4709,
    [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F],
);
/// Physical Sector Size item `CDA348C7-445D-4471-9CC9-E9885251C556`.
pub const ITEM_PHYSICAL_SECTOR_SIZE: MsGuid = guid(
    0xCDA3_48C7,
    0x445D,
    0x4471,
    [0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56],
);
/// Parent Locator item `A8D35F2D-B30B-454D-ABF7-D3D84834AB0C`.
pub const ITEM_PARENT_LOCATOR: MsGuid = guid(
    0xA8D3_5F2D,
    0xB30B,
    0x454D,
    [0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C],
);
/// VHDX parent locator type `B04AEFB7-D19E-4A81-B789-25B8E9445913`.
pub const PARENT_LOCATOR_VHDX: MsGuid = guid(
    0xB04A_EFB7,
    0xD19E,
    0x4A81,
    [0xB7, 0x89, 0x25, 0xB8, 0xE9, 0x44, 0x59, 0x13],
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_print_as_the_spec_writes_them() {
        assert_eq!(BAT_REGION.to_string(), "2dc27766-f623-4200-9d64-115e9bfd4a08");
        assert_eq!(ITEM_PARENT_LOCATOR.to_string(), "a8d35f2d-b30b-454d-abf7-d3d84834ab0c");
    }

    #[test]
    fn bat_entry_fields() {
        let e = bat_entry(payload::FULLY_PRESENT, 5 * MIB);
        assert_eq!(bat_state(e), 6);
        assert_eq!(bat_offset(e), 5 * MIB);
        assert_eq!(&HEADER_SIGNATURE.to_le_bytes(), b"head");
        assert_eq!(&REGION_SIGNATURE.to_le_bytes(), b"regi");
        assert_eq!(&LOG_ENTRY_SIGNATURE.to_le_bytes(), b"loge");
        assert_eq!(&ZERO_DESC_SIGNATURE.to_le_bytes(), b"zero");
        assert_eq!(&DATA_DESC_SIGNATURE.to_le_bytes(), b"desc");
        assert_eq!(&DATA_SECTOR_SIGNATURE.to_le_bytes(), b"data");
    }
}
