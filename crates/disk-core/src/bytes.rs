//! Byte-addressed access to a [`Disk`] at any offset and length (read-modify-write at the edges).

use crate::disk::Disk;
use crate::error::{Error, Result};
use std::ops::Range;

fn check<D: Disk + ?Sized>(disk: &D, offset: u64, len: usize) -> Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= disk.virtual_size() => Ok(()),
        _ => Err(Error::out_of_range(format!(
            "bytes {offset}+{len} lie outside the disk of {} bytes",
            disk.virtual_size()
        ))),
    }
}

/// One step of a byte-range access: whole sectors, or part of one sector.
enum Piece {
    /// Sectors from `lba` covering `buf` exactly.
    Whole { lba: u64, buf: Range<usize> },
    /// Bytes `within..within + buf.len()` of sector `lba`.
    Part { lba: u64, within: usize, buf: Range<usize> },
}

/// Split `len` bytes at `offset` into whole-sector runs and partial sectors, in order.
fn pieces(offset: u64, len: usize, ss: u64) -> impl Iterator<Item = Piece> {
    let mut done = 0usize;
    std::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let pos = offset + done as u64;
        let within = pos % ss;
        let remaining = (len - done) as u64;
        let start = done;
        Some(if within == 0 && remaining >= ss {
            done += (remaining / ss * ss) as usize;
            Piece::Whole {
                lba: pos / ss,
                buf: start..done,
            }
        } else {
            done += (ss - within).min(remaining) as usize;
            Piece::Part {
                lba: pos / ss,
                within: within as usize,
                buf: start..done,
            }
        })
    })
}

/// Read `buf.len()` bytes at byte `offset` of the guest view.
pub fn read_bytes<D: Disk + ?Sized>(disk: &D, offset: u64, buf: &mut [u8]) -> Result<()> {
    check(disk, offset, buf.len())?;
    let ss = disk.sector_size() as usize;
    let mut bounce = Vec::new();
    for piece in pieces(offset, buf.len(), ss as u64) {
        match piece {
            Piece::Whole { lba, buf: range } => disk.read(lba, &mut buf[range])?,
            Piece::Part {
                lba,
                within,
                buf: range,
            } => {
                bounce.resize(ss, 0);
                disk.read(lba, &mut bounce)?;
                buf[range.clone()].copy_from_slice(&bounce[within..within + range.len()]);
            }
        }
    }
    Ok(())
}

/// Write `buf` at byte `offset` of the guest view, reading and merging partial sectors.
pub fn write_bytes<D: Disk + ?Sized>(disk: &D, offset: u64, buf: &[u8]) -> Result<()> {
    check(disk, offset, buf.len())?;
    if disk.is_read_only() {
        return Err(Error::read_only());
    }
    let ss = disk.sector_size() as usize;
    let mut bounce = Vec::new();
    for piece in pieces(offset, buf.len(), ss as u64) {
        match piece {
            Piece::Whole { lba, buf: range } => disk.write(lba, &buf[range])?,
            Piece::Part {
                lba,
                within,
                buf: range,
            } => {
                bounce.resize(ss, 0);
                disk.read(lba, &mut bounce)?;
                bounce[within..within + range.len()].copy_from_slice(&buf[range]);
                disk.write(lba, &bounce)?;
            }
        }
    }
    Ok(())
}

/// Make `len` bytes at `offset` read as zeros: whole sectors through
/// [`Disk::write_zeroes`] (or [`Disk::discard`] when `unmap`), partial sectors by merging.
pub fn zero_bytes<D: Disk + ?Sized>(disk: &D, offset: u64, len: u64, unmap: bool) -> Result<()> {
    let len_usize = usize::try_from(len).map_err(|_| Error::out_of_range("length too large"))?;
    check(disk, offset, len_usize)?;
    let ss = u64::from(disk.sector_size());
    let end = offset + len;
    let first_full = offset.div_ceil(ss) * ss;
    let last_full = end / ss * ss;
    if first_full >= last_full {
        return write_bytes(disk, offset, &vec![0u8; len_usize]);
    }
    if offset < first_full {
        write_bytes(disk, offset, &vec![0u8; (first_full - offset) as usize])?;
    }
    let (lba, count) = (first_full / ss, (last_full - first_full) / ss);
    if unmap {
        disk.discard(lba, count)?
    } else {
        disk.write_zeroes(lba, count)?
    }
    if last_full < end {
        write_bytes(disk, last_full, &vec![0u8; (end - last_full) as usize])?;
    }
    Ok(())
}
