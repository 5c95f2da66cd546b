//! The read path shared by format engines: the engine says where each run of sectors lives, this
//! module moves the bytes.

use crate::disk::Disk;
use crate::error::{IoResultExt, Result};
use crate::storage::Storage;

/// Where a run of a layer's sectors lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// Stored uncompressed at this byte offset of the layer's storage.
    Data(u64),
    /// Reads as zeros.
    Zero,
    /// Not in this layer: read from the layers below.
    Unallocated,
}

/// A run of sectors with one [`Mapping`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Number of sectors (values of 0 are treated as 1; values past the request are clipped).
    pub sectors: u64,
    /// Where they live.
    pub mapping: Mapping,
}

/// Fill `buf` (sectors from `lba`, size `sector_size`) by asking `map(lba, max_sectors)` for
/// successive runs: data from `storage`, zeros, or the layers `below`.
pub fn read_mapped(
    lba: u64,
    buf: &mut [u8],
    sector_size: u32,
    storage: &dyn Storage,
    below: &dyn Disk,
    mut map: impl FnMut(u64, u64) -> Result<Run>,
) -> Result<()> {
    let ss = sector_size as usize;
    let total = (buf.len() / ss) as u64;
    let mut done = 0u64;
    while done < total {
        let run = map(lba + done, total - done)?;
        let n = run.sectors.clamp(1, total - done);
        let piece = &mut buf[(done as usize) * ss..((done + n) as usize) * ss];
        match run.mapping {
            Mapping::Data(offset) => storage.read_at(piece, offset).io_context("reading data", offset)?,
            Mapping::Zero => piece.fill(0),
            Mapping::Unallocated => below.read(lba + done, piece)?,
        }
        done += n;
    }
    Ok(())
}
