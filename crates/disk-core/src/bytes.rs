//! Byte-addressed access to a [`Disk`] at any offset and length (read-modify-write at the edges).

use crate::disk::Disk;
use crate::error::{Error, Result};

fn check<D: Disk + ?Sized>(disk: &D, offset: u64, len: usize) -> Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= disk.virtual_size() => Ok(()),
        _ => Err(Error::out_of_range(format!(
            "bytes {offset}+{len} lie outside the disk of {} bytes",
            disk.virtual_size()
        ))),
    }
}

/// Read `buf.len()` bytes at byte `offset` of the guest view.
pub fn read_bytes<D: Disk + ?Sized>(disk: &D, offset: u64, buf: &mut [u8]) -> Result<()> {
    check(disk, offset, buf.len())?;
    let ss = u64::from(disk.sector_size());
    let mut pos = offset;
    let mut done = 0usize;
    let mut bounce = Vec::new();
    while done < buf.len() {
        let within = pos % ss;
        let remaining = (buf.len() - done) as u64;
        if within == 0 && remaining >= ss {
            let n = (remaining / ss * ss) as usize;
            disk.read(pos / ss, &mut buf[done..done + n])?;
            done += n;
            pos += n as u64;
        } else {
            bounce.resize(ss as usize, 0);
            disk.read(pos / ss, &mut bounce)?;
            let n = ((ss - within).min(remaining)) as usize;
            buf[done..done + n].copy_from_slice(&bounce[within as usize..within as usize + n]);
            done += n;
            pos += n as u64;
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
    let ss = u64::from(disk.sector_size());
    let mut pos = offset;
    let mut done = 0usize;
    let mut bounce = Vec::new();
    while done < buf.len() {
        let within = pos % ss;
        let remaining = (buf.len() - done) as u64;
        if within == 0 && remaining >= ss {
            let n = (remaining / ss * ss) as usize;
            disk.write(pos / ss, &buf[done..done + n])?;
            done += n;
            pos += n as u64;
        } else {
            bounce.resize(ss as usize, 0);
            disk.read(pos / ss, &mut bounce)?;
            let n = ((ss - within).min(remaining)) as usize;
            bounce[within as usize..within as usize + n].copy_from_slice(&buf[done..done + n]);
            disk.write(pos / ss, &bounce)?;
            done += n;
            pos += n as u64;
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
