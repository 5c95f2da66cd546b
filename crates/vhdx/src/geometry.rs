//! Block arithmetic: payload blocks, sector bitmap blocks, chunk ratio and BAT indexes.

#![warn(clippy::arithmetic_side_effects)]

use crate::format::{MAX_VIRTUAL_SIZE, MIB, SECTORS_PER_BITMAP_BLOCK};
use disk_core::{Error, Result};

/// The shape of a VHDX's BAT, derived from its metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Payload block size in bytes.
    pub block_size: u64,
    /// Logical sector size in bytes.
    pub sector_size: u64,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// Sectors per payload block.
    pub sectors_per_block: u64,
    /// Payload blocks per sector bitmap block (`ChunkRatio`).
    pub chunk_ratio: u64,
    /// Number of payload blocks.
    pub data_blocks: u64,
    /// Number of sector bitmap blocks.
    pub bitmap_blocks: u64,
    /// Number of BAT entries.
    pub total_entries: u64,
    /// Whether the disk is differencing (BAT sized for every chunk's bitmap entry).
    pub has_parent: bool,
}

// Every value is bounded by `new`'s checks (block size a power of two from 1 MiB, sector size
// 512 or 4096, virtual size at most 64 TiB: at most 2^26 blocks, chunk ratio from 16 to 2^15),
// and block and chunk numbers passed in come from in-range sectors, so nothing overflows.
#[allow(clippy::arithmetic_side_effects)]
impl Geometry {
    /// Compute the geometry; refuses a block size that is not a power of two of at least 1 MiB
    /// (the format's upper limit, 256 MiB, is checked by the parser), a sector size other than
    /// 512 or 4096, and a virtual size over 64 TiB.
    pub fn new(block_size: u32, sector_size: u32, virtual_size: u64, has_parent: bool) -> Result<Self> {
        let block_size = u64::from(block_size);
        let sector_size = u64::from(sector_size);
        if block_size < MIB
            || !block_size.is_power_of_two()
            || !(sector_size == 512 || sector_size == 4096)
            || virtual_size > MAX_VIRTUAL_SIZE
        {
            return Err(Error::invalid_argument("bad block size, sector size or virtual size"));
        }
        let chunk_ratio = SECTORS_PER_BITMAP_BLOCK * sector_size / block_size;
        let data_blocks = virtual_size.div_ceil(block_size);
        let bitmap_blocks = data_blocks.div_ceil(chunk_ratio);
        let total_entries = if has_parent {
            bitmap_blocks * (chunk_ratio + 1)
        } else if data_blocks == 0 {
            0
        } else {
            data_blocks + (data_blocks - 1) / chunk_ratio
        };
        Ok(Geometry {
            block_size,
            sector_size,
            virtual_size,
            sectors_per_block: block_size / sector_size,
            chunk_ratio,
            data_blocks,
            bitmap_blocks,
            total_entries,
            has_parent,
        })
    }

    /// BAT index of payload block `block`.
    pub fn payload_index(&self, block: u64) -> usize {
        (block + block / self.chunk_ratio) as usize
    }

    /// BAT index of the sector bitmap block of chunk `chunk`.
    pub fn bitmap_index(&self, chunk: u64) -> usize {
        (chunk * (self.chunk_ratio + 1) + self.chunk_ratio) as usize
    }

    /// What BAT entry `i` describes.
    pub fn entry_kind(&self, i: u64) -> EntryKind {
        let per_chunk = self.chunk_ratio + 1;
        let (chunk, k) = (i / per_chunk, i % per_chunk);
        if k == self.chunk_ratio {
            EntryKind::Bitmap(chunk)
        } else {
            EntryKind::Payload(chunk * self.chunk_ratio + k)
        }
    }

    /// Bytes of guest data in payload block `block` (the last one may be short).
    pub fn block_bytes(&self, block: u64) -> u64 {
        self.virtual_size
            .saturating_sub(block * self.block_size)
            .min(self.block_size)
    }

    /// Sectors of guest data in payload block `block`.
    pub fn block_sectors(&self, block: u64) -> u64 {
        self.block_bytes(block) / self.sector_size
    }

    /// Byte offset, within a sector bitmap block, of the first bit of payload block `block`.
    pub fn bitmap_byte_offset(&self, block: u64) -> u64 {
        (block % self.chunk_ratio) * self.sectors_per_block / 8
    }

    /// Bytes of sector bitmap per payload block.
    pub fn bitmap_bytes_per_block(&self) -> u64 {
        self.sectors_per_block / 8
    }
}

/// What a BAT entry describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// Payload block number.
    Payload(u64),
    /// The sector bitmap block of chunk number.
    Bitmap(u64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_ratio_and_counts() {
        let g = Geometry::new(32 << 20, 512, 1 << 30, false).unwrap();
        assert_eq!(g.chunk_ratio, 128);
        assert_eq!(g.data_blocks, 32);
        assert_eq!(g.total_entries, 32);
        let g = Geometry::new(1 << 20, 512, 10 << 30, false).unwrap();
        assert_eq!(g.chunk_ratio, 4096);
        assert_eq!(g.total_entries, 10240 + 2);
        assert_eq!(g.payload_index(4096), 4097);
        assert_eq!(g.entry_kind(4097), EntryKind::Payload(4096));
        assert_eq!(g.entry_kind(4096), EntryKind::Bitmap(0));
        assert_eq!(g.entry_kind(5), EntryKind::Payload(5));
        let g = Geometry::new(1 << 20, 4096, 10 << 30, true).unwrap();
        assert_eq!(g.chunk_ratio, 32768);
        assert_eq!(g.total_entries, 32769);
        assert_eq!(g.bitmap_index(0), 32768);
        let g = Geometry::new(32 << 20, 512, 0, false).unwrap();
        assert_eq!(g.total_entries, 0);
    }
}
