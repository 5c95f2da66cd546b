//! The dynamic disk header and the Block Allocation Table, validated against the file size.

#![deny(clippy::arithmetic_side_effects)]

use crate::format::{
    DynamicHeader, HEADER_CHECKSUM_RANGE, HEADER_COOKIE, HEADER_SIZE, SECTOR_SIZE, bitmap_size, checksum,
};
use disk_core::{Error, IoResultExt, Result, Storage};
use zerocopy::{FromBytes, IntoBytes};

/// Largest block size accepted when opening (the field is 32 bits; only powers of two work).
pub const MAX_BLOCK_SIZE: u32 = 1 << 31;

/// The validated layout of a dynamic or differencing disk.
#[derive(Debug, Clone)]
pub struct Sparse {
    /// The dynamic disk header as read.
    pub header: DynamicHeader,
    /// Where it lies (the footer's "Data Offset").
    pub header_offset: u64,
    /// Whether its checksum matched (only `false` when opened leniently).
    pub header_checksum_ok: bool,
    /// Byte offset of the BAT.
    pub table_offset: u64,
    /// Bytes of data per block.
    pub block_size: u32,
    /// Bytes of the sector bitmap before each block's data.
    pub bitmap_size: u64,
    /// BAT entries the virtual size needs (the ones this engine reads and writes).
    pub blocks: u32,
}

/// Where new blocks' data starts: on a multiple of this many bytes of the file (when the block
/// size is a multiple of it), so that a guest's 4 KiB read touches one host page, not two.
pub(crate) const DATA_ALIGNMENT: u64 = 4096;

/// Where a new block of `block_size` bytes (after a `bitmap`-byte sector bitmap) goes when the
/// file's free space starts at `free`: its bitmap just before a [`DATA_ALIGNMENT`] boundary,
/// so its data starts on one (at most 3.5 KiB of padding, zeros).
pub(crate) fn aligned_block_start(free: u64, block_size: u32, bitmap: u64) -> u64 {
    if !u64::from(block_size).is_multiple_of(DATA_ALIGNMENT) {
        return free;
    }
    free.saturating_add(bitmap)
        .next_multiple_of(DATA_ALIGNMENT)
        .saturating_sub(bitmap)
        .max(free)
}

/// Where `n` new blocks placed one after another from `free` (as [`aligned_block_start`]
/// places them) end.
pub(crate) fn blocks_end(free: u64, n: u64, block_size: u32, bitmap: u64) -> u64 {
    if n == 0 {
        return free;
    }
    let block = u64::from(block_size);
    let first = aligned_block_start(free, block_size, bitmap);
    let stride = aligned_block_start(first.saturating_add(bitmap).saturating_add(block), block_size, bitmap)
        .saturating_sub(first);
    first
        .saturating_add(stride.saturating_mul(n.saturating_sub(1)))
        .saturating_add(bitmap)
        .saturating_add(block)
}

impl Sparse {
    /// Sectors per block.
    pub fn block_sectors(&self) -> u64 {
        u64::from(self.block_size) / SECTOR_SIZE
    }

    /// Bytes a block occupies in the file: bitmap plus data.
    pub fn block_footprint(&self) -> u64 {
        self.bitmap_size.saturating_add(u64::from(self.block_size))
    }

    /// Bytes the BAT occupies, rounded up to whole sectors.
    pub fn bat_bytes(&self) -> u64 {
        // At most 2^32 entries of 4 bytes: no overflow in 64 bits.
        (u64::from(self.header.max_table_entries.get()).saturating_mul(4))
            .div_ceil(SECTOR_SIZE)
            .saturating_mul(SECTOR_SIZE)
    }
}

/// Read and validate the dynamic disk header at `offset` for a disk of `virtual_size` bytes.
pub fn read(storage: &dyn Storage, offset: u64, file_len: u64, virtual_size: u64, lenient: bool) -> Result<Sparse> {
    let corrupt = |msg: String| Error::corrupt(msg).in_structure("dynamic header").at_offset(offset);
    match offset.checked_add(HEADER_SIZE) {
        Some(end) if end <= file_len => {}
        _ => {
            return Err(corrupt(format!(
                "header offset {offset:#x} lies past the end of the file ({file_len} bytes)"
            )));
        }
    }
    let mut buf = [0u8; HEADER_SIZE as usize];
    storage
        .read_at(&mut buf, offset)
        .io_context("reading the dynamic disk header", offset)?;
    let header = DynamicHeader::read_from_bytes(&buf).map_err(|_| corrupt("wrong size".into()))?;
    if header.cookie != HEADER_COOKIE {
        return Err(corrupt("missing 'cxsparse' cookie".into()));
    }
    let header_checksum_ok = checksum(&buf, HEADER_CHECKSUM_RANGE) == header.checksum.get();
    if !header_checksum_ok && !lenient {
        return Err(corrupt("checksum mismatch".into()));
    }
    let block_size = header.block_size.get();
    if !block_size.is_power_of_two() || u64::from(block_size) < SECTOR_SIZE || block_size > MAX_BLOCK_SIZE {
        return Err(corrupt(format!(
            "block size {block_size} is not a power of two of at least 512"
        )));
    }
    let needed = virtual_size.div_ceil(u64::from(block_size));
    let entries = header.max_table_entries.get();
    if u64::from(entries) < needed {
        return Err(corrupt(format!(
            "the BAT has {entries} entries but the disk size needs {needed}"
        )));
    }
    let table_offset = header.table_offset.get();
    let table_end = needed.checked_mul(4).and_then(|len| table_offset.checked_add(len));
    if table_end.is_none_or(|end| end > file_len) {
        return Err(Error::corrupt(format!(
            "BAT of {needed} entries at {table_offset:#x} lies past the end of the file ({file_len} bytes)"
        ))
        .in_structure("BAT")
        .at_offset(table_offset));
    }
    Ok(Sparse {
        header,
        header_offset: offset,
        header_checksum_ok,
        table_offset,
        block_size,
        bitmap_size: bitmap_size(block_size),
        blocks: u32::try_from(needed).map_err(|_| corrupt("too many blocks".into()))?,
    })
}

/// Read the BAT entries the disk uses (already bounded by the file size in [`read`]).
pub fn read_bat(storage: &dyn Storage, sparse: &Sparse) -> Result<Vec<u32>> {
    let mut raw = vec![0u8; (sparse.blocks as usize).saturating_mul(4)];
    storage
        .read_at(&mut raw, sparse.table_offset)
        .io_context("reading the BAT", sparse.table_offset)?;
    Ok(raw
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Recompute and store the header checksum.
pub fn seal(header: &mut DynamicHeader) {
    header.checksum.set(0);
    let sum = checksum(header.as_bytes(), HEADER_CHECKSUM_RANGE);
    header.checksum.set(sum);
}
