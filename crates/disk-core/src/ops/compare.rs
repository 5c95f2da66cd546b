//! Compare the guest-visible contents of two disks, as `qemu-img compare` does.

use super::byte_status;
use super::copy::is_zero;
use crate::bytes::read_bytes;
use crate::disk::{Allocation, Disk};
use crate::error::Result;

/// The outcome of [`compare`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// Same contents (and, in strict mode, same size and allocation).
    Identical,
    /// Contents differ; `offset` is the start of the first differing 512-byte sector.
    ContentMismatch {
        /// Byte offset.
        offset: u64,
    },
    /// Strict mode: one side is allocated where the other is not.
    AllocationMismatch {
        /// Byte offset.
        offset: u64,
    },
    /// Strict mode: the sizes differ.
    SizeMismatch {
        /// Size of the first disk.
        a: u64,
        /// Size of the second disk.
        b: u64,
    },
}

const CHUNK: u64 = 1 << 20;

/// Compare `a` and `b`. Without `strict`, a size difference is fine when the longer disk's extra
/// part reads as zeros; with it, sizes and allocation must match too.
pub fn compare(a: &dyn Disk, b: &dyn Disk, strict: bool) -> Result<Comparison> {
    compare_with_progress(a, b, strict, &mut |_, _| {})
}

/// [`compare`], calling `progress` with (bytes compared, bytes to compare) as it goes.
pub fn compare_with_progress(
    a: &dyn Disk,
    b: &dyn Disk,
    strict: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Comparison> {
    let (size_a, size_b) = (a.virtual_size(), b.virtual_size());
    if strict && size_a != size_b {
        return Ok(Comparison::SizeMismatch { a: size_a, b: size_b });
    }
    let common = size_a.min(size_b);
    let gran = u64::from(a.sector_size().max(b.sector_size()));
    let mut buf_a = vec![0u8; CHUNK.min(common) as usize];
    let mut buf_b = vec![0u8; CHUNK.min(common) as usize];
    let mut pos = 0u64;
    while pos < common {
        let want = (CHUNK * 64).min(common - pos);
        let (alloc_a, run_a) = byte_status(a, pos, want)?;
        let (alloc_b, run_b) = byte_status(b, pos, want)?;
        let run = run_a.min(run_b);
        if strict && ((alloc_a == Allocation::Unallocated) != (alloc_b == Allocation::Unallocated)) {
            return Ok(Comparison::AllocationMismatch { offset: pos });
        }
        if alloc_a != Allocation::Data && alloc_b != Allocation::Data {
            let skip = if pos + run >= common {
                common - pos
            } else {
                run / gran * gran
            };
            if skip > 0 {
                pos += skip;
                progress(pos, common);
                continue;
            }
        }
        let len = CHUNK.min(common - pos).min(run.div_ceil(gran) * gran);
        let (ca, cb) = (&mut buf_a[..len as usize], &mut buf_b[..len as usize]);
        read_bytes(a, pos, ca)?;
        read_bytes(b, pos, cb)?;
        if ca != cb {
            let first = ca.iter().zip(cb.iter()).position(|(x, y)| x != y).unwrap_or(0) as u64;
            return Ok(Comparison::ContentMismatch {
                offset: (pos + first) / 512 * 512,
            });
        }
        pos += len;
        progress(pos, common);
    }
    let longer = if size_a > size_b { a } else { b };
    match first_nonzero(longer, common)? {
        Some(offset) => Ok(Comparison::ContentMismatch {
            offset: offset / 512 * 512,
        }),
        None => Ok(Comparison::Identical),
    }
}

/// The offset of the first non-zero byte at or after `from`, if any.
fn first_nonzero(disk: &dyn Disk, from: u64) -> Result<Option<u64>> {
    let size = disk.virtual_size();
    let mut buf = vec![0u8; CHUNK.min(size.saturating_sub(from)) as usize];
    let mut pos = from;
    while pos < size {
        let (alloc, run) = byte_status(disk, pos, (CHUNK * 64).min(size - pos))?;
        if alloc != Allocation::Data {
            pos += run;
            continue;
        }
        let len = run.min(CHUNK).min(size - pos);
        let chunk = &mut buf[..len as usize];
        read_bytes(disk, pos, chunk)?;
        if !is_zero(chunk) {
            let first = chunk.iter().position(|&x| x != 0).unwrap_or(0) as u64;
            return Ok(Some(pos + first));
        }
        pos += len;
    }
    Ok(None)
}
