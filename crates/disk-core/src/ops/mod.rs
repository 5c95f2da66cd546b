//! Operations generic over any [`Disk`]: copy, compare, allocation map, and the data movement of
//! chain operations (commit a child into its parent, safe rebase).

mod chain;
mod compare;
mod copy;
mod map;

pub use chain::{Moved, commit_data, commit_data_above, rebase_data};
pub use compare::{Comparison, compare, compare_with_progress};
pub use copy::{CopyOptions, CopyStats, Target, copy};
pub use map::{MapEntry, map, map_each, map_range};

use crate::disk::{Allocation, Disk};
use crate::error::Result;

/// The byte run starting at `offset` (a multiple of the sector size) and its allocation, looking
/// at no more than `max` bytes.
pub(crate) fn byte_status<D: Disk + ?Sized>(disk: &D, offset: u64, max: u64) -> Result<(Allocation, u64)> {
    let ss = u64::from(disk.sector_size());
    let lba = offset / ss;
    let count = max.div_ceil(ss).min(disk.sector_count() - lba).max(1);
    let st = disk.block_status(lba, count)?;
    Ok((st.allocation, (st.sectors * ss).min(max)))
}
