//! Copy the guest-visible contents of one disk into another, skipping what reads as zeros.

use super::byte_status;
use crate::bytes::{read_bytes, write_bytes};
use crate::disk::{Allocation, Disk};
use crate::error::Result;

/// How [`copy`] works.
pub struct CopyOptions<'a> {
    /// Called after each chunk with (bytes done, bytes total).
    pub progress: Option<&'a mut dyn FnMut(u64, u64)>,
    /// Bytes read per request.
    pub buffer_size: usize,
    /// Zero detection granularity: an all-zero piece of this many bytes is not written.
    pub zero_granularity: usize,
}

impl Default for CopyOptions<'_> {
    fn default() -> Self {
        CopyOptions {
            progress: None,
            buffer_size: 4 << 20,
            zero_granularity: 64 << 10,
        }
    }
}

/// What [`copy`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Bytes written to the destination.
    pub bytes_written: u64,
    /// Bytes not written because they read as zeros (unallocated, zero, or all-zero data).
    pub bytes_skipped: u64,
}

/// Copy `min(src size, dst size)` bytes of guest data from `src` to `dst`.
///
/// `dst` must read as zeros where nothing is written (a freshly created image): unallocated and
/// zero ranges of `src`, and stored data that is all zeros, are skipped, so the destination stays
/// sparse.
pub fn copy(src: &dyn Disk, dst: &dyn Disk, mut options: CopyOptions<'_>) -> Result<CopyStats> {
    let total = src.virtual_size().min(dst.virtual_size());
    let gran = u64::from(src.sector_size().max(dst.sector_size()));
    let buffer_size = (options.buffer_size as u64).max(gran) / gran * gran;
    let zero_gran = (options.zero_granularity as u64).max(gran) / gran * gran;
    let mut stats = CopyStats::default();
    let mut buf = vec![0u8; buffer_size.min(total) as usize];
    let mut pos = 0u64;
    while pos < total {
        let want = buffer_size.min(total - pos);
        let (allocation, run) = byte_status(src, pos, want)?;
        if allocation != Allocation::Data {
            let skip = if pos + run >= total {
                total - pos
            } else {
                run / gran * gran
            };
            if skip > 0 {
                stats.bytes_skipped += skip;
                pos += skip;
                report(&mut options, pos, total);
                continue;
            }
        }
        let len = if pos + run >= total {
            total - pos
        } else {
            run.div_ceil(gran) * gran
        }
        .min(want);
        let chunk = &mut buf[..len as usize];
        read_bytes(src, pos, chunk)?;
        let mut piece_start = 0usize;
        while piece_start < chunk.len() {
            // Find the next run of non-zero pieces and write it in one request.
            let piece = |i: usize| &chunk[i..(i + zero_gran as usize).min(chunk.len())];
            if is_zero(piece(piece_start)) {
                let n = piece(piece_start).len();
                stats.bytes_skipped += n as u64;
                piece_start += n;
                continue;
            }
            let mut end = piece_start;
            while end < chunk.len() && !is_zero(piece(end)) {
                end += piece(end).len();
            }
            write_bytes(dst, pos + piece_start as u64, &chunk[piece_start..end])?;
            stats.bytes_written += (end - piece_start) as u64;
            piece_start = end;
        }
        pos += len;
        report(&mut options, pos, total);
    }
    Ok(stats)
}

fn report(options: &mut CopyOptions<'_>, done: u64, total: u64) {
    if let Some(progress) = options.progress.as_mut() {
        progress(done, total);
    }
}

/// Whether every byte is zero (compared 16 bytes at a time, which the compiler vectorises).
pub(crate) fn is_zero(buf: &[u8]) -> bool {
    let (blocks, tail) = buf.as_chunks::<16>();
    blocks.iter().all(|b| *b == [0u8; 16]) && tail.iter().all(|&b| b == 0)
}
