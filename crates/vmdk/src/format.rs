//! On-disk structures of VMDK, as VMware's "Virtual Disk Format 5.0" and QEMU's `vmdk.c` define
//! them: spec definitions only, no logic. All integers are little-endian.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Bytes per VMDK sector (every offset and size in the format counts 512-byte sectors).
pub const SECTOR: u64 = 512;

/// `SparseExtentHeader.magicNumber`: "KDMV" as stored (0x564d444b little-endian).
pub const SPARSE_MAGIC: u32 = 0x564d_444b;
/// COWD (VMDK3 / ESX vmfsSparse) magic: "COWD" as stored.
pub const COWD_MAGIC: u32 = 0x4457_4f43;
/// seSparse constant header magic.
pub const SESPARSE_MAGIC: u64 = 0xcafe_babe;
/// seSparse volatile header magic.
pub const SESPARSE_VOLATILE_MAGIC: u64 = 0xcafe_cafe;

/// `flags` bit 0: the newline-detection characters are valid.
pub const FLAG_VALID_NEWLINE_TEST: u32 = 1 << 0;
/// `flags` bit 1: a redundant grain directory is kept at `rgdOffset`.
pub const FLAG_REDUNDANT_GD: u32 = 1 << 1;
/// `flags` bit 2: grain table entry 1 means "zeroed grain".
pub const FLAG_ZEROED_GRAIN_GTE: u32 = 1 << 2;
/// `flags` bit 16: grains are compressed.
pub const FLAG_COMPRESSED: u32 = 1 << 16;
/// `flags` bit 17: the extent contains markers (stream-optimized).
pub const FLAG_MARKERS: u32 = 1 << 17;

/// `compressAlgorithm` value for deflate (zlib stream).
pub const COMPRESSION_DEFLATE: u16 = 1;
/// `gdOffset` value meaning "the grain directory is found through the footer".
pub const GD_AT_END: u64 = u64::MAX;
/// Grain table entry meaning "zeroed grain" when [`FLAG_ZEROED_GRAIN_GTE`] is set.
pub const GTE_ZEROED: u32 = 1;

/// seSparse grain table entries keep their type in the top four bits (`SESPARSE_GRAIN_TYPE_*`).
pub const SESPARSE_GTE_TYPE_SHIFT: u32 = 60;
/// seSparse entry type: not allocated (the parent's data).
pub const SESPARSE_GTE_UNALLOCATED: u64 = 0;
/// seSparse entry type: unmapped; reads as zeros.
pub const SESPARSE_GTE_FALLBACK: u64 = 1;
/// seSparse entry type: zeroed.
pub const SESPARSE_GTE_ZERO: u64 = 2;
/// seSparse entry type: allocated; the rest of the entry is the grain index.
pub const SESPARSE_GTE_ALLOCATED: u64 = 3;

/// `SparseExtentHeader`: the first sector of a hosted sparse extent (versions 1, 2 and 3).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct SparseExtentHeader {
    /// `magicNumber`: [`SPARSE_MAGIC`].
    pub magic_number: U32,
    /// `version`: 1, 2 (zeroed-grain GTEs) or 3 (stream-optimized).
    pub version: U32,
    /// `flags`: the `FLAG_*` bits.
    pub flags: U32,
    /// `capacity`: the extent's size in sectors.
    pub capacity: U64,
    /// `grainSize`: sectors per grain (a power of two, more than 8).
    pub grain_size: U64,
    /// `descriptorOffset`: sector of the embedded descriptor, 0 if none.
    pub descriptor_offset: U64,
    /// `descriptorSize`: sectors of the embedded descriptor.
    pub descriptor_size: U64,
    /// `numGTEsPerGT`: grain table entries per grain table (512).
    pub num_gtes_per_gt: U32,
    /// `rgdOffset`: sector of the redundant grain directory.
    pub rgd_offset: U64,
    /// `gdOffset`: sector of the grain directory, or [`GD_AT_END`].
    pub gd_offset: U64,
    /// `overHead`: sectors of metadata before the first grain.
    pub over_head: U64,
    /// `uncleanShutdown`: set while the extent is open for writing.
    pub unclean_shutdown: u8,
    /// `singleEndLineChar`: `'\n'`.
    pub single_end_line_char: u8,
    /// `nonEndLineChar`: `' '`.
    pub non_end_line_char: u8,
    /// `doubleEndLineChar1`: `'\r'`.
    pub double_end_line_char1: u8,
    /// `doubleEndLineChar2`: `'\n'`.
    pub double_end_line_char2: u8,
    /// `compressAlgorithm`: 0 none, [`COMPRESSION_DEFLATE`].
    pub compress_algorithm: U16,
    /// `pad`.
    pub pad: [u8; 433],
}
const _: () = assert!(size_of::<SparseExtentHeader>() == 512);

/// `GrainMarker`: precedes each compressed grain when the extent has markers.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct GrainMarker {
    /// `lba`: the first sector (of the extent) the grain holds.
    pub lba: U64,
    /// `size`: bytes of compressed data that follow.
    pub size: U32,
}
const _: () = assert!(size_of::<GrainMarker>() == 12);

/// Marker `type`: end of stream.
pub const MARKER_EOS: u32 = 0;
/// Marker `type`: a grain table follows.
pub const MARKER_GT: u32 = 1;
/// Marker `type`: a grain directory follows.
pub const MARKER_GD: u32 = 2;
/// Marker `type`: the footer (a copy of the header) follows.
pub const MARKER_FOOTER: u32 = 3;

/// `MetaDataMarker`: one sector introducing metadata in a stream-optimized extent.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct MetaDataMarker {
    /// `numSectors`: sectors of metadata that follow (0 for EOS).
    pub num_sectors: U64,
    /// `size`: always 0 (distinguishes it from a grain marker).
    pub size: U32,
    /// `type`: `MARKER_*`.
    pub marker_type: U32,
    /// `pad`.
    pub pad: [u8; 496],
}
const _: () = assert!(size_of::<MetaDataMarker>() == 512);

/// The last three sectors of a stream-optimized extent: footer marker, footer, end-of-stream.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct StreamFooter {
    /// Marker of type [`MARKER_FOOTER`].
    pub footer_marker: MetaDataMarker,
    /// The footer: a header whose `gdOffset` is valid.
    pub footer: SparseExtentHeader,
    /// Marker of type [`MARKER_EOS`].
    pub eos_marker: MetaDataMarker,
}
const _: () = assert!(size_of::<StreamFooter>() == 1536);

/// Grain table entries per COWD grain table (fixed by the format).
pub const COWD_GTES_PER_GT: u32 = 4096;

/// `COWDisk_Header`: ESX vmfsSparse (VMDK version 3) extent header, 4 sectors.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct CowdHeader {
    /// `magicNumber`: [`COWD_MAGIC`].
    pub magic_number: U32,
    /// `version`: 1.
    pub version: U32,
    /// `flags`.
    pub flags: U32,
    /// `numSectors`: capacity in sectors.
    pub num_sectors: U32,
    /// `grainSize`: sectors per grain.
    pub grain_size: U32,
    /// `gdOffset`: sector of the grain directory.
    pub gd_offset: U32,
    /// `numGDEntries`: entries in the grain directory.
    pub num_gd_entries: U32,
    /// `freeSector`: next free sector.
    pub free_sector: U32,
    /// `u`: root geometry (cylinders, heads, sectors) or child parent file name and generation.
    pub u: [u8; 1028],
    /// `generation`.
    pub generation: U32,
    /// `name`.
    pub name: [u8; 60],
    /// `description`.
    pub description: [u8; 512],
    /// `savedGeneration`.
    pub saved_generation: U32,
    /// `reserved`.
    pub reserved: [u8; 8],
    /// `uncleanShutdown`.
    pub unclean_shutdown: U32,
    /// `padding`.
    pub padding: [u8; 396],
}
const _: () = assert!(size_of::<CowdHeader>() == 2048);

/// `VMDKSESparseConstHeader`: first sector of a seSparse extent (offsets and sizes in sectors).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct SeSparseConstHeader {
    /// `magic`: [`SESPARSE_MAGIC`].
    pub magic: U64,
    /// `version`: 0x0000000200000001.
    pub version: U64,
    /// `capacity` in sectors.
    pub capacity: U64,
    /// `grain_size` in sectors (8).
    pub grain_size: U64,
    /// `grain_table_size` in sectors (64).
    pub grain_table_size: U64,
    /// `flags` (0).
    pub flags: U64,
    /// `reserved1..4`.
    pub reserved: [U64; 4],
    /// `volatile_header_offset`.
    pub volatile_header_offset: U64,
    /// `volatile_header_size`.
    pub volatile_header_size: U64,
    /// `journal_header_offset`.
    pub journal_header_offset: U64,
    /// `journal_header_size`.
    pub journal_header_size: U64,
    /// `journal_offset`.
    pub journal_offset: U64,
    /// `journal_size`.
    pub journal_size: U64,
    /// `grain_dir_offset`.
    pub grain_dir_offset: U64,
    /// `grain_dir_size`.
    pub grain_dir_size: U64,
    /// `grain_tables_offset`.
    pub grain_tables_offset: U64,
    /// `grain_tables_size`.
    pub grain_tables_size: U64,
    /// `free_bitmap_offset`.
    pub free_bitmap_offset: U64,
    /// `free_bitmap_size`.
    pub free_bitmap_size: U64,
    /// `backmap_offset`.
    pub backmap_offset: U64,
    /// `backmap_size`.
    pub backmap_size: U64,
    /// `grains_offset`.
    pub grains_offset: U64,
    /// `grains_size`.
    pub grains_size: U64,
    /// `pad`.
    pub pad: [u8; 304],
}
const _: () = assert!(size_of::<SeSparseConstHeader>() == 512);

/// `VMDKSESparseVolatileHeader`.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct SeSparseVolatileHeader {
    /// `magic`: [`SESPARSE_VOLATILE_MAGIC`].
    pub magic: U64,
    /// `free_gt_number`.
    pub free_gt_number: U64,
    /// `next_txn_seq_number`.
    pub next_txn_seq_number: U64,
    /// `replay_journal`: non-zero if the journal must be replayed.
    pub replay_journal: U64,
    /// `pad`.
    pub pad: [u8; 480],
}
const _: () = assert!(size_of::<SeSparseVolatileHeader>() == 512);
