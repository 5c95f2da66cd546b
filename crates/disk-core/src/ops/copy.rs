//! Copy the guest-visible contents of one disk into another, skipping what reads as zeros.
//!
//! A reader thread walks the source's allocation, reads data runs and finds the non-zero pieces
//! while the calling thread writes the previous chunk, so reading and writing overlap.

use super::byte_status;
use crate::bytes::{read_bytes, write_bytes};
use crate::disk::{Allocation, Disk};
use crate::error::Result;
use std::ops::Range;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

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

/// Chunks read ahead of the writer.
const READ_AHEAD: usize = 3;

/// One unit of work handed from the reader to the writer.
struct Chunk {
    /// Guest byte offset of `data[0]`.
    pos: u64,
    /// Bytes covered (read or skipped).
    len: u64,
    /// The bytes read (empty for a skipped range).
    data: Vec<u8>,
    /// Non-zero runs within `data`, to be written.
    pieces: Vec<Range<usize>>,
}

/// Copy `min(src size, dst size)` bytes of guest data from `src` to `dst`.
///
/// `dst` must read as zeros where nothing is written (a freshly created image): unallocated and
/// zero ranges of `src`, and stored data that is all zeros, are skipped, so the destination stays
/// sparse.
pub fn copy(src: &dyn Disk, dst: &dyn Disk, mut options: CopyOptions<'_>) -> Result<CopyStats> {
    let total = src.virtual_size().min(dst.virtual_size());
    let gran = u64::from(src.sector_size().max(dst.sector_size()));
    let plan = Plan {
        total,
        gran,
        buffer_size: (options.buffer_size as u64).max(gran) / gran * gran,
        zero_gran: ((options.zero_granularity as u64).max(gran) / gran * gran) as usize,
    };
    let (chunk_tx, chunk_rx) = sync_channel::<Result<Chunk>>(READ_AHEAD);
    let (spare_tx, spare_rx) = sync_channel::<Vec<u8>>(READ_AHEAD + 2);
    std::thread::scope(|scope| {
        scope.spawn(move || plan.read_all(src, &chunk_tx, &spare_rx));
        let mut stats = CopyStats::default();
        for chunk in chunk_rx {
            let chunk = chunk?;
            let mut written = 0u64;
            for piece in &chunk.pieces {
                write_bytes(dst, chunk.pos + piece.start as u64, &chunk.data[piece.clone()])?;
                written += piece.len() as u64;
            }
            stats.bytes_written += written;
            stats.bytes_skipped += chunk.len - written;
            if let Some(progress) = options.progress.as_mut() {
                progress(chunk.pos + chunk.len, total);
            }
            // The reader may have finished; then the buffer is simply dropped.
            let _ = spare_tx.try_send(chunk.data);
        }
        Ok(stats)
    })
}

/// The reader's parameters.
#[derive(Clone, Copy)]
struct Plan {
    total: u64,
    gran: u64,
    buffer_size: u64,
    zero_gran: usize,
}

impl Plan {
    /// Read the whole source in chunks and send them; stops early when the writer hangs up.
    fn read_all(self, src: &dyn Disk, out: &SyncSender<Result<Chunk>>, spares: &Receiver<Vec<u8>>) {
        let mut pos = 0u64;
        while pos < self.total {
            let chunk = self.next_chunk(src, pos, spares);
            let stop = chunk.is_err();
            if let Ok(c) = &chunk {
                pos += c.len;
            }
            if out.send(chunk).is_err() || stop {
                return;
            }
        }
    }

    fn next_chunk(&self, src: &dyn Disk, pos: u64, spares: &Receiver<Vec<u8>>) -> Result<Chunk> {
        let want = self.buffer_size.min(self.total - pos);
        let (allocation, run) = byte_status(src, pos, want)?;
        let at_end = pos + run >= self.total;
        if allocation != Allocation::Data {
            let skip = if at_end {
                self.total - pos
            } else {
                run / self.gran * self.gran
            };
            if skip > 0 {
                return Ok(Chunk {
                    pos,
                    len: skip,
                    data: Vec::new(),
                    pieces: Vec::new(),
                });
            }
        }
        let len = if at_end {
            self.total - pos
        } else {
            run.div_ceil(self.gran) * self.gran
        }
        .min(want);
        let mut data = spares.try_recv().unwrap_or_default();
        data.resize(len as usize, 0);
        read_bytes(src, pos, &mut data)?;
        let pieces = nonzero_runs(&data, self.zero_gran);
        Ok(Chunk { pos, len, data, pieces })
    }
}

/// The runs of `data` made of `granularity`-sized pieces that are not all zeros, merged.
fn nonzero_runs(data: &[u8], granularity: usize) -> Vec<Range<usize>> {
    let mut runs: Vec<Range<usize>> = Vec::new();
    for (i, piece) in data.chunks(granularity).enumerate() {
        if is_zero(piece) {
            continue;
        }
        let start = i * granularity;
        let end = start + piece.len();
        match runs.last_mut() {
            Some(last) if last.end == start => last.end = end,
            _ => runs.push(start..end),
        }
    }
    runs
}

pub(crate) use crate::mover::is_zero;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonzero_runs_merge_adjacent_pieces() {
        let mut d = vec![0u8; 10];
        d[2] = 1;
        d[4] = 1;
        d[9] = 1;
        assert_eq!(nonzero_runs(&d, 2), vec![2..6, 8..10]);
        assert!(nonzero_runs(&[0; 7], 3).is_empty());
    }
}
