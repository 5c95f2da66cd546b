//! Copy the guest-visible contents of one disk into another, skipping what reads as zeros.
//!
//! Workers (one per core by default, [`CopyOptions::workers`]) each take the next chunk of the
//! source: they ask its allocation, read the data (decompressing, for compressed sources) and
//! find the non-zero pieces in parallel. Writes are in order by default: the calling thread
//! writes the chunks as they come due, so the output is laid out as the source is (and
//! sequential-only outputs such as stream-optimized VMDK work). With
//! [`CopyOptions::out_of_order`] the workers write their own chunks as soon as they are read
//! (qemu-img's `-W`). Memory is bounded: each worker and each chunk waiting to be written holds
//! one buffer from a fixed pool.

use super::byte_status;
use crate::bytes::{read_bytes, write_bytes};
use crate::disk::{Allocation, Disk};
use crate::error::Result;
use crate::sync::lock;
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// How [`copy`] works.
pub struct CopyOptions<'a> {
    /// Called after each chunk with (bytes done, bytes total).
    pub progress: Option<&'a mut dyn FnMut(u64, u64)>,
    /// Bytes read per request.
    pub buffer_size: usize,
    /// Zero detection granularity: an all-zero piece of this many bytes is not written. 0
    /// writes every byte of the source's data ranges (ranges it reports as unallocated or zero
    /// are still skipped), as qemu-img's `-S 0`.
    pub zero_granularity: usize,
    /// Threads reading the source (qemu-img's `-m`); 0 means one per available core.
    pub workers: usize,
    /// Let workers write their chunks in any order (qemu-img's `-W`). Only for outputs that
    /// take writes anywhere (not stream-optimized VMDK).
    pub out_of_order: bool,
    /// What the destination reads before the copy.
    pub target: Target,
}

/// What the destination of a [`copy`] reads before anything is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Target {
    /// Zeros (a new image): what the source reads as zeros is skipped.
    #[default]
    Zeroed,
    /// Anything (an existing image, qemu-img's `convert -n`): what the source reads as zeros
    /// is written as zeros ([`Disk::write_zeroes`]).
    Unknown,
    /// Content worth keeping (a new child over a backing file, qemu-img's `convert -B`): the
    /// destination is read first, and only what differs from the source is written (zeros
    /// as [`Disk::write_zeroes`]), so what the backing file already holds stays unallocated.
    Compare,
}

/// Bytes compared at once against a [`Target::Compare`] destination: what differs is written in
/// pieces of this size.
const COMPARE_UNIT: usize = 64 << 10;

impl Default for CopyOptions<'_> {
    fn default() -> Self {
        CopyOptions {
            progress: None,
            buffer_size: 4 << 20,
            zero_granularity: 64 << 10,
            workers: 0,
            out_of_order: false,
            target: Target::Zeroed,
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

/// Most workers [`copy`] starts.
pub const MAX_COPY_WORKERS: usize = 16;

/// Chunks read ahead of the writer, beyond one per worker.
const READ_AHEAD: usize = 2;

/// One unit of work: a range of the source, read (or known to be zeros).
struct Chunk {
    /// Position in the source's order (0, 1, ...).
    seq: u64,
    /// Guest byte offset of `data[0]`.
    pos: u64,
    /// Bytes covered (read or skipped).
    len: u64,
    /// The bytes read (empty for a skipped range).
    data: Vec<u8>,
    /// Non-zero runs within `data`, to be written.
    pieces: Vec<Range<usize>>,
}

impl Chunk {
    /// Write the chunk to `dst` as `target` needs (`gran` bytes per sector); the bytes of data
    /// written.
    fn write(&self, dst: &dyn Disk, target: Target, gran: u64) -> Result<u64> {
        let zeros = |from: u64, to: u64| -> Result<()> {
            if to <= from {
                return Ok(());
            }
            dst.write_zeroes((self.pos + from) / gran, (to - from).div_ceil(gran))
        };
        if target == Target::Compare {
            return self.write_differences(dst, gran);
        }
        let mut written = 0u64;
        let mut done = 0u64;
        for piece in &self.pieces {
            if target == Target::Unknown {
                zeros(done, piece.start as u64)?;
            }
            write_bytes(dst, self.pos + piece.start as u64, &self.data[piece.clone()])?;
            written += piece.len() as u64;
            done = piece.end as u64;
        }
        if target == Target::Unknown {
            zeros(done, self.len)?;
        }
        Ok(written)
    }

    /// Write what differs between the chunk and what `dst` reads there, a
    /// [`COMPARE_UNIT`] at a time: data where the chunk holds data, zeros where it is zero.
    fn write_differences(&self, dst: &dyn Disk, gran: u64) -> Result<u64> {
        let len = usize::try_from(self.len).unwrap_or(usize::MAX);
        let mut current = vec![0u8; len];
        read_bytes(dst, self.pos, &mut current)?;
        let mut written = 0u64;
        let mut at = 0usize;
        while at < len {
            let end = (at + COMPARE_UNIT).min(len);
            let want = self.data.get(at..end);
            let differs = match want {
                Some(want) => want != &current[at..end],
                None => !is_zero(&current[at..end]),
            };
            if differs {
                match want.filter(|w| !is_zero(w)) {
                    Some(want) => {
                        write_bytes(dst, self.pos + at as u64, want)?;
                        written += want.len() as u64;
                    }
                    None => dst.write_zeroes((self.pos + at as u64) / gran, ((end - at) as u64).div_ceil(gran))?,
                }
            }
            at = end;
        }
        Ok(written)
    }
}

/// What a worker hands to the calling thread.
enum Done {
    /// A chunk read, for the calling thread to write (in order).
    Read(Chunk),
    /// A chunk the worker wrote itself (out of order): bytes covered and written, and its
    /// buffer back.
    Written { len: u64, written: u64, data: Vec<u8> },
}

/// Copy `min(src size, dst size)` bytes of guest data from `src` to `dst`.
///
/// `dst` must read as zeros where nothing is written (a freshly created image): unallocated and
/// zero ranges of `src`, and stored data that is all zeros, are skipped, so the destination stays
/// sparse.
pub fn copy(src: &dyn Disk, dst: &dyn Disk, mut options: CopyOptions<'_>) -> Result<CopyStats> {
    let total = src.virtual_size().min(dst.virtual_size());
    let gran = u64::from(src.sector_size().max(dst.sector_size()));
    let workers = match options.workers {
        0 => std::thread::available_parallelism().map_or(2, usize::from),
        n => n,
    }
    .clamp(1, MAX_COPY_WORKERS);
    let plan = Plan {
        total,
        gran,
        buffer_size: (options.buffer_size as u64).max(gran) / gran * gran,
        zero_gran: match options.zero_granularity {
            0 => 0,
            z => ((z as u64).max(gran) / gran * gran) as usize,
        },
        cursor: Mutex::new(Cursor { pos: 0, seq: 0 }),
        target: options.target,
    };
    let buffers = workers + READ_AHEAD;
    let (done_tx, done_rx) = sync_channel::<Result<Done>>(buffers);
    let (spare_tx, spare_rx) = sync_channel::<Vec<u8>>(buffers);
    for _ in 0..buffers {
        let _ = spare_tx.try_send(Vec::new());
    }
    let spares = Mutex::new(spare_rx);
    let out_of_order = options.out_of_order;
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let done = done_tx.clone();
            let (plan, spares) = (&plan, &spares);
            scope.spawn(move || plan.work(src, out_of_order.then_some(dst), &done, spares));
        }
        drop(done_tx);
        let result = collect(&done_rx, &spare_tx, dst, &plan, &mut options);
        // On failure the workers stop: at their next chunk (the cursor is at the end), when
        // they hand a chunk over (nobody receives), or waiting for a buffer (nobody returns
        // them).
        plan.stop();
        drop(done_rx);
        drop(spare_tx);
        result
    })
}

/// Receive the workers' chunks: write them in order (or count what they wrote), hand their
/// buffers back, report progress.
fn collect(
    done: &Receiver<Result<Done>>,
    spares: &SyncSender<Vec<u8>>,
    dst: &dyn Disk,
    plan: &Plan,
    options: &mut CopyOptions<'_>,
) -> Result<CopyStats> {
    let total = plan.total;
    let mut stats = CopyStats::default();
    let mut waiting: BTreeMap<u64, Chunk> = BTreeMap::new();
    let mut next = 0u64;
    let mut progress = 0u64;
    for item in done {
        let mut finished = Vec::new();
        match item? {
            Done::Written { len, written, data } => finished.push((len, written, data)),
            Done::Read(chunk) => {
                waiting.insert(chunk.seq, chunk);
                while let Some(chunk) = waiting.remove(&next) {
                    let written = chunk.write(dst, plan.target, plan.gran)?;
                    finished.push((chunk.len, written, chunk.data));
                    next += 1;
                }
            }
        }
        for (len, written, data) in finished {
            stats.bytes_written += written;
            stats.bytes_skipped += len - written;
            progress += len;
            if let Some(report) = options.progress.as_mut() {
                report(progress.min(total), total);
            }
            // Every buffer fits: the pool has room for all of them.
            let _ = spares.try_send(data);
        }
    }
    Ok(stats)
}

/// Where the next chunk starts.
struct Cursor {
    pos: u64,
    seq: u64,
}

/// The workers' shared parameters and position.
struct Plan {
    total: u64,
    gran: u64,
    buffer_size: u64,
    zero_gran: usize,
    cursor: Mutex<Cursor>,
    /// What the destination reads before the copy.
    target: Target,
}

impl Plan {
    /// Make workers stop at their next chunk.
    fn stop(&self) {
        lock(&self.cursor).pos = self.total;
    }

    /// Take chunks until the source is done (or the calling thread hung up): read each, and
    /// write it too when `dst` is given (out of order).
    fn work(
        &self,
        src: &dyn Disk,
        dst: Option<&dyn Disk>,
        done: &SyncSender<Result<Done>>,
        spares: &Mutex<Receiver<Vec<u8>>>,
    ) {
        loop {
            // A buffer first, then a place in the order: the oldest chunk not yet written
            // always has its buffer, so the writer never waits for a chunk that cannot be read.
            let Ok(buffer) = lock(spares).recv() else {
                return;
            };
            let chunk = match self.next_chunk(src, buffer) {
                Ok(Some(chunk)) => chunk,
                Ok(None) => return,
                Err(e) => {
                    let _ = done.send(Err(e));
                    self.stop();
                    return;
                }
            };
            let item = match dst {
                None => Ok(Done::Read(chunk)),
                Some(dst) => chunk.write(dst, self.target, self.gran).map(|written| Done::Written {
                    len: chunk.len,
                    written,
                    data: chunk.data,
                }),
            };
            let failed = item.is_err();
            if done.send(item).is_err() || failed {
                self.stop();
                return;
            }
        }
    }

    /// Claim the next range of the source and read it into `data` (`None` at the end).
    fn next_chunk(&self, src: &dyn Disk, mut data: Vec<u8>) -> Result<Option<Chunk>> {
        let (seq, pos, len, allocation) = {
            let mut cursor = lock(&self.cursor);
            let pos = cursor.pos;
            if pos >= self.total {
                return Ok(None);
            }
            let want = self.buffer_size.min(self.total - pos);
            let (allocation, run) = byte_status(src, pos, want)?;
            let at_end = pos + run >= self.total;
            let mut len = if at_end {
                self.total - pos
            } else if allocation != Allocation::Data {
                run / self.gran * self.gran
            } else {
                run.div_ceil(self.gran) * self.gran
            }
            .min(want);
            // A zero range shorter than a sector is read with what follows.
            let allocation = if len == 0 {
                len = self.gran.min(self.total - pos);
                Allocation::Data
            } else {
                allocation
            };
            let seq = cursor.seq;
            cursor.seq += 1;
            cursor.pos += len;
            (seq, pos, len, allocation)
        };
        if allocation != Allocation::Data {
            data.clear();
            return Ok(Some(Chunk {
                seq,
                pos,
                len,
                data,
                pieces: Vec::new(),
            }));
        }
        data.resize(len as usize, 0);
        read_bytes(src, pos, &mut data)?;
        let pieces = match self.zero_gran {
            0 => std::iter::once(0..data.len()).collect(),
            z => nonzero_runs(&data, z),
        };
        Ok(Some(Chunk {
            seq,
            pos,
            len,
            data,
            pieces,
        }))
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
