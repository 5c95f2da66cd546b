//! Moving data between a child and its parents: `commit` and the safe mode of `rebase`.
//!
//! Both are generic over the formats: they ask the child's top layer which sectors it holds
//! ([`Layer::block_status`](crate::Layer::block_status)) and move guest data through [`Disk`]
//! reads and writes. Opening the files, growing a parent and recording the new parent are the
//! caller's part (`vdisk::commit`, `vdisk::rebase`).

use crate::disk::{Allocation, Disk};
use crate::error::{Error, Result};
use crate::image::Image;

/// Most bytes moved per read or write.
const CHUNK: u64 = 1 << 20;

/// What a commit or rebase moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    /// Bytes of data written.
    pub data_bytes: u64,
    /// Bytes written as zeros.
    pub zero_bytes: u64,
}

/// Visit the runs of `image` that the layers above `depth` store (`(lba, sectors,
/// allocation)`, at most [`CHUNK`] bytes each; `Unallocated` where only `depth` and below hold
/// anything). Depth 1 asks the top layer alone.
fn runs_above(image: &Image, depth: usize, mut f: impl FnMut(u64, u64, Allocation) -> Result<()>) -> Result<()> {
    let top = image.top();
    let ss = u64::from(top.sector_size());
    let sectors = image.sector_count();
    let per = (CHUNK / ss).max(1);
    let mut lba = 0;
    while lba < sectors {
        let count = (sectors - lba).min(per);
        let status = if depth <= 1 {
            top.block_status(lba, count)?
        } else {
            image.block_status(lba, count)?
        };
        let n = status.sectors.clamp(1, sectors - lba);
        let above = depth <= 1 || usize::try_from(status.depth).is_ok_and(|d| d < depth);
        f(
            lba,
            n,
            if above {
                status.allocation
            } else {
                Allocation::Unallocated
            },
        )?;
        lba += n;
    }
    Ok(())
}

/// Copy every sector the top layer of `child` stores (data, or zeros that hide the parent) into
/// `parent`, the image below it opened writable, then flush `parent`. The guest view of `child`
/// does not change; `parent` then reads as `child` wherever `child` holds data. `parent` must be
/// at least as large as `child`.
pub fn commit_data(child: &Image, parent: &dyn Disk, progress: impl FnMut(u64, u64)) -> Result<Moved> {
    commit_data_above(child, 1, parent, progress)
}

/// [`commit_data`] into the image at `depth` of `child`'s chain (1 is the parent; qemu-img
/// commit's `-b`): every sector the layers above it store, as `child` reads it, is written
/// into `parent` (that image, opened writable), which then reads as `child`. The images
/// between `child` and `parent` are left as they are (their view changes with `parent`).
pub fn commit_data_above(
    child: &Image,
    depth: usize,
    parent: &dyn Disk,
    mut progress: impl FnMut(u64, u64),
) -> Result<Moved> {
    if depth == 0 || depth >= child.layers().count() {
        return Err(Error::invalid_argument(format!(
            "layer {depth} is not below the top of a chain of {}",
            child.layers().count()
        )));
    }
    if parent.sector_size() != child.sector_size() {
        return Err(Error::unsupported("the parent's sector size differs from the child's"));
    }
    if parent.sector_count() < child.sector_count() {
        return Err(Error::invalid_argument(format!(
            "the parent ({} bytes) is smaller than the child ({} bytes)",
            parent.virtual_size(),
            child.virtual_size()
        )));
    }
    let ss = u64::from(child.sector_size());
    let total = child.virtual_size();
    let mut moved = Moved::default();
    let mut buf = Vec::new();
    runs_above(child, depth, |lba, n, allocation| {
        match allocation {
            Allocation::Data => {
                buf.resize((n * ss) as usize, 0);
                child.read(lba, &mut buf)?;
                parent.write(lba, &buf)?;
                moved.data_bytes += n * ss;
            }
            Allocation::Zero => {
                parent.write_zeroes(lba, n)?;
                moved.zero_bytes += n * ss;
            }
            Allocation::Unallocated => {}
        }
        progress((lba + n) * ss, total);
        Ok(())
    })?;
    parent.flush()?;
    Ok(moved)
}

/// Whether all `n` sectors from `lba` of `disk` are known to read as zeros (no stored data).
fn reads_zeros(disk: &dyn Disk, lba: u64, n: u64) -> Result<bool> {
    let mut at = lba;
    while at < lba + n {
        let st = disk.block_status(at, lba + n - at)?;
        if st.allocation == Allocation::Data {
            return Ok(false);
        }
        at += st.sectors.max(1);
    }
    Ok(true)
}

/// Read `buf.len()` bytes of `disk` from `lba`, zeros past its end.
fn read_padded(disk: &dyn Disk, lba: u64, buf: &mut [u8]) -> Result<()> {
    let ss = u64::from(disk.sector_size());
    let inside = disk.sector_count().saturating_sub(lba).min(buf.len() as u64 / ss);
    let (head, tail) = buf.split_at_mut((inside * ss) as usize);
    if inside > 0 {
        disk.read(lba, head)?;
    }
    tail.fill(0);
    Ok(())
}

/// Safe rebase, data part: wherever the top layer of `child` (opened writable, on its old
/// parents) stores nothing and the old parents' view differs from `new_parent`'s (zeros past
/// its end, or everywhere when `None`), write the old view into `child`; then flush `child`.
/// Afterwards `child` reads the same on top of either parent, and the caller records the new one.
pub fn rebase_data(child: &Image, new_parent: Option<&dyn Disk>, mut progress: impl FnMut(u64, u64)) -> Result<Moved> {
    if let Some(p) = new_parent
        && p.sector_size() != child.sector_size()
    {
        return Err(Error::unsupported(
            "the new parent's sector size differs from the child's",
        ));
    }
    let ss = u64::from(child.sector_size());
    let total = child.virtual_size();
    let mut moved = Moved::default();
    let mut old = Vec::new();
    let mut new = Vec::new();
    // Ranges that read as zeros without stored data on both sides need no reading.
    let new_reads_zeros = |lba: u64, n: u64| -> Result<bool> {
        match new_parent {
            None => Ok(true),
            Some(p) => {
                let inside = p.sector_count().saturating_sub(lba).min(n);
                if inside == 0 {
                    return Ok(true);
                }
                reads_zeros(p, lba, inside)
            }
        }
    };
    runs_above(child, 1, |lba, n, allocation| {
        if allocation == Allocation::Unallocated && !(reads_zeros(child, lba, n)? && new_reads_zeros(lba, n)?) {
            old.resize((n * ss) as usize, 0);
            new.resize((n * ss) as usize, 0);
            child.read(lba, &mut old)?;
            match new_parent {
                Some(p) => read_padded(p, lba, &mut new)?,
                None => new.fill(0),
            }
            let differs = |i: u64| {
                let r = (i * ss) as usize..((i + 1) * ss) as usize;
                old[r.clone()] != new[r]
            };
            let mut i = 0;
            while i < n {
                if !differs(i) {
                    i += 1;
                    continue;
                }
                let mut j = i + 1;
                while j < n && differs(j) {
                    j += 1;
                }
                child.write(lba + i, &old[(i * ss) as usize..(j * ss) as usize])?;
                moved.data_bytes += (j - i) * ss;
                i = j;
            }
        }
        progress((lba + n) * ss, total);
        Ok(())
    })?;
    child.flush()?;
    Ok(moved)
}
