//! The allocation map of a disk (a whole chain), as `qemu-img map` prints it.

use crate::disk::{Allocation, Disk};
use crate::error::Result;

/// One run of the map, in bytes of the guest view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapEntry {
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
    /// Which layer holds it (0 = the named image); for unallocated runs, the deepest layer asked.
    pub depth: u32,
    /// Allocated in some layer (data or an explicit zero).
    pub present: bool,
    /// Reads as zeros.
    pub zero: bool,
    /// Backed by stored data.
    pub data: bool,
    /// Where the data lies in its layer's file, when contiguous and uncompressed.
    pub offset: Option<u64>,
    /// Stored compressed (a VMDK stream-optimized grain).
    pub compressed: bool,
}

impl MapEntry {
    /// Whether `next` starts where this run ends and has the same properties (its data, if
    /// any, continuing this run's in the file), so that the two read as one run.
    pub fn extends(&self, next: &MapEntry) -> bool {
        self.start + self.length == next.start
            && (self.depth, self.present, self.zero, self.data, self.compressed)
                == (next.depth, next.present, next.zero, next.data, next.compressed)
            && match (self.offset, next.offset) {
                (None, None) => true,
                (Some(a), Some(b)) => a + self.length == b,
                _ => false,
            }
    }
}

/// The map of the whole disk: adjacent runs with equal properties are merged. Memory grows
/// with the number of runs; for images nobody vetted use [`map_each`], which holds one run.
pub fn map(disk: &dyn Disk) -> Result<Vec<MapEntry>> {
    let mut out = Vec::new();
    map_each(disk, |entry| {
        out.push(entry);
        Ok(())
    })?;
    Ok(out)
}

/// The map of the whole disk, one merged run at a time, in order: `sink` gets each run once
/// it is complete, so memory stays constant whatever the image holds.
pub fn map_each(disk: &dyn Disk, sink: impl FnMut(MapEntry) -> Result<()>) -> Result<()> {
    map_range(disk, 0, u64::MAX, sink)
}

/// [`map_each`] for the guest bytes from `start` on, at most `max_length` of them (qemu-img
/// map's `--start-offset` and `--max-length`): the first and last runs are cut to the range
/// (their `offset` moved with their start), so offsets need no alignment. An empty range is
/// one run of length 0 at `start`, as qemu-img prints it.
pub fn map_range(
    disk: &dyn Disk,
    start: u64,
    max_length: u64,
    mut sink: impl FnMut(MapEntry) -> Result<()>,
) -> Result<()> {
    let ss = u64::from(disk.sector_size());
    let size = disk.virtual_size();
    let begin = start.min(size);
    let end = begin.saturating_add(max_length).min(size);
    if begin >= end {
        // Nothing to map: qemu-img prints one empty run where it was asked to start.
        return sink(MapEntry {
            start,
            length: 0,
            depth: 0,
            present: false,
            zero: false,
            data: false,
            offset: None,
            compressed: false,
        });
    }
    let sectors = end.div_ceil(ss);
    let mut pending: Option<MapEntry> = None;
    let mut lba = begin / ss;
    while lba < sectors {
        let st = disk.block_status(lba, sectors - lba)?;
        let from = (lba * ss).max(begin);
        let to = ((lba + st.sectors.max(1)) * ss).min(end);
        let cut = from - lba * ss;
        let entry = MapEntry {
            start: from,
            length: to.saturating_sub(from),
            depth: st.depth,
            present: st.allocation != Allocation::Unallocated,
            zero: st.allocation != Allocation::Data,
            data: st.allocation == Allocation::Data,
            offset: st.offset.map(|o| o + cut),
            compressed: st.compressed,
        };
        match &mut pending {
            Some(last) if last.extends(&entry) => last.length += entry.length,
            _ => {
                if let Some(done) = pending.replace(entry) {
                    sink(done)?;
                }
            }
        }
        lba += st.sectors.max(1);
    }
    if let Some(done) = pending.filter(|e| e.length > 0) {
        sink(done)?;
    }
    Ok(())
}
