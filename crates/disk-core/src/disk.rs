//! The sector-level interface every image (and every chain of images) presents.

use crate::error::{Error, Result};
use std::io::{IoSlice, IoSliceMut};
use uuid::Uuid;

/// What a range of sectors holds, as [`Disk::block_status`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// Stored data (which may happen to be zeros).
    Data,
    /// Known to read as zeros without stored data (a zero block, a hole, a ZERO extent).
    Zero,
    /// Not allocated anywhere: reads as zeros, or in a single layer, falls through to its parent.
    Unallocated,
}

/// The status of the run of sectors that starts at the queried LBA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockStatus {
    /// How many sectors (at least 1, at most the count asked for) share this status.
    pub sectors: u64,
    /// What they hold.
    pub allocation: Allocation,
    /// Byte offset in the host file where the run's data starts, when it is stored contiguously
    /// and uncompressed.
    pub offset: Option<u64>,
    /// Which layer of a chain answered: 0 for the image itself, 1 for its parent, and so on.
    pub depth: u32,
    /// The data is stored compressed (a VMDK stream-optimized grain); never with an `offset`.
    pub compressed: bool,
}

impl BlockStatus {
    /// A run of `sectors` with `allocation`, not tied to a host offset, at depth 0.
    pub fn new(sectors: u64, allocation: Allocation) -> Self {
        BlockStatus {
            sectors,
            allocation,
            offset: None,
            depth: 0,
            compressed: false,
        }
    }

    /// A run of stored data at host byte `offset`.
    pub fn data_at(sectors: u64, offset: u64) -> Self {
        BlockStatus {
            sectors,
            allocation: Allocation::Data,
            offset: Some(offset),
            depth: 0,
            compressed: false,
        }
    }

    /// A run of data stored compressed (no host offset to read it from directly).
    pub fn compressed(sectors: u64) -> Self {
        BlockStatus {
            compressed: true,
            ..BlockStatus::new(sectors, Allocation::Data)
        }
    }
}

/// A virtual disk: fixed-size sectors addressed by LBA.
///
/// Every method accepts any `u64` LBA and count: a range outside the disk is an
/// [`ErrorKind::OutOfRange`](crate::ErrorKind::OutOfRange) error, a buffer that is not a whole
/// number of sectors is [`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument), and
/// neither ever panics. Implementations are `Send + Sync`; reads may run concurrently.
pub trait Disk: Send + Sync {
    /// Logical sector size in bytes (512 or 4096): the unit of LBAs and buffers.
    fn sector_size(&self) -> u32;

    /// Physical sector size in bytes, a hint for alignment.
    fn physical_sector_size(&self) -> u32 {
        self.sector_size()
    }

    /// Guest-visible size in bytes. Usually a whole number of sectors; a raw file of odd length
    /// keeps its exact length here and rounds up in [`Disk::sector_count`].
    fn virtual_size(&self) -> u64;

    /// Number of addressable sectors: the virtual size rounded up to whole sectors.
    fn sector_count(&self) -> u64 {
        self.virtual_size().div_ceil(u64::from(self.sector_size()))
    }

    /// The disk's unique identifier, where the format records one.
    fn disk_id(&self) -> Option<Uuid> {
        None
    }

    /// Whether writes are refused.
    fn is_read_only(&self) -> bool;

    /// Read `buf.len() / sector_size` sectors starting at `lba`.
    fn read(&self, lba: u64, buf: &mut [u8]) -> Result<()>;

    /// Write `buf.len() / sector_size` sectors starting at `lba`.
    fn write(&self, lba: u64, buf: &[u8]) -> Result<()>;

    /// Make `count` sectors from `lba` read as zeros. The default writes zero-filled buffers.
    fn write_zeroes(&self, lba: u64, count: u64) -> Result<()> {
        let range = SectorRange::check(self, lba, count)?;
        write_zero_buffers(self, range)
    }

    /// Tell the disk that `count` sectors from `lba` are no longer needed. Afterwards they read
    /// as zeros (never as stale data or as a parent's data); space is released where the format
    /// can release it.
    fn discard(&self, lba: u64, count: u64) -> Result<()>;

    /// Make every completed write durable.
    fn flush(&self) -> Result<()>;

    /// The status of the run of sectors starting at `lba`, looking at no more than `count`.
    fn block_status(&self, lba: u64, count: u64) -> Result<BlockStatus>;

    /// Read consecutive sectors from `lba` into several buffers (a guest's scatter list). The
    /// buffers together must be a whole number of sectors; each may be any length.
    fn read_vectored(&self, lba: u64, bufs: &mut [IoSliceMut<'_>]) -> Result<()> {
        let total = bufs.iter().map(|b| b.len()).sum::<usize>();
        SectorRange::for_buffer(self, lba, total)?;
        let ss = self.sector_size() as usize;
        if bufs.iter().all(|b| b.len().is_multiple_of(ss)) {
            let mut at = lba;
            for b in bufs.iter_mut() {
                self.read(at, b)?;
                at += (b.len() / ss) as u64;
            }
            return Ok(());
        }
        let mut bounce = vec![0u8; total];
        self.read(lba, &mut bounce)?;
        let mut from = 0;
        for b in bufs.iter_mut() {
            let n = b.len();
            b.copy_from_slice(&bounce[from..from + n]);
            from += n;
        }
        Ok(())
    }

    /// Write several buffers (a gather list) as consecutive sectors from `lba`; with `fua`
    /// (force unit access) the data and the metadata that makes it visible are durable when
    /// this returns.
    fn write_vectored(&self, lba: u64, bufs: &[IoSlice<'_>], fua: bool) -> Result<()> {
        let total = bufs.iter().map(|b| b.len()).sum::<usize>();
        SectorRange::for_buffer(self, lba, total)?;
        let ss = self.sector_size() as usize;
        if bufs.iter().all(|b| b.len().is_multiple_of(ss)) {
            let mut at = lba;
            for b in bufs {
                self.write(at, b)?;
                at += (b.len() / ss) as u64;
            }
        } else {
            let bounce: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            self.write(lba, &bounce)?;
        }
        if fua { self.flush() } else { Ok(()) }
    }

    /// Whether `fua` on [`Disk::write_vectored`] is honoured (here by a flush after the write,
    /// which also makes earlier writes durable).
    fn is_fua_respected(&self) -> bool {
        true
    }

    /// Make `count` sectors from `lba` read as zeros; `unmap` allows releasing their space
    /// (NVMe Write Zeroes with DEAC, SCSI WRITE SAME with UNMAP). Without it the engine still
    /// may release space where the format reads released space as zeros.
    fn write_zeroes_unmap(&self, lba: u64, count: u64, unmap: bool) -> Result<()> {
        if unmap {
            self.discard(lba, count)
        } else {
            self.write_zeroes(lba, count)
        }
    }

    /// What [`Disk::discard`] does, for a device that must declare it (SCSI LBPRZ, NVMe DLFEAT).
    fn discard_behavior(&self) -> DiscardBehavior {
        DiscardBehavior {
            reads_zeros: true,
            granularity: u64::from(self.sector_size()),
        }
    }

    /// The I/O size and alignment, in bytes, that avoids read-modify-write and partial
    /// allocation units (a block or grain; the physical sector size otherwise).
    fn optimal_io_alignment(&self) -> u64 {
        u64::from(self.physical_sector_size())
    }
}

/// What [`Disk::discard`] guarantees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscardBehavior {
    /// Discarded sectors read as zeros afterwards (true for every vdisk engine: never stale
    /// data, never a parent's data).
    pub reads_zeros: bool,
    /// Bytes below which a discard releases no space (it still zeroes the sectors).
    pub granularity: u64,
}

/// A validated, in-range run of sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectorRange {
    /// First sector.
    pub lba: u64,
    /// Number of sectors (may be 0).
    pub count: u64,
    /// Sector size in bytes.
    pub sector_size: u32,
}

impl SectorRange {
    /// Check that `count` sectors from `lba` lie inside `disk`.
    pub fn check<D: Disk + ?Sized>(disk: &D, lba: u64, count: u64) -> Result<Self> {
        Self::within(disk.sector_size(), disk.sector_count(), lba, count)
    }

    /// Check a byte buffer for a read or write at `lba`: whole sectors, inside the disk.
    pub fn for_buffer<D: Disk + ?Sized>(disk: &D, lba: u64, len: usize) -> Result<Self> {
        let ss = disk.sector_size();
        if !len.is_multiple_of(ss as usize) {
            return Err(Error::invalid_argument(format!(
                "buffer of {len} bytes is not a whole number of {ss}-byte sectors"
            )));
        }
        Self::within(ss, disk.sector_count(), lba, (len / ss as usize) as u64)
    }

    /// Check `count` sectors from `lba` against a disk of `sector_count` sectors.
    pub fn within(sector_size: u32, sector_count: u64, lba: u64, count: u64) -> Result<Self> {
        match lba.checked_add(count) {
            Some(end) if end <= sector_count => Ok(SectorRange {
                lba,
                count,
                sector_size,
            }),
            _ => Err(Error::out_of_range(format!(
                "sectors {lba}+{count} lie outside the disk of {sector_count} sectors"
            ))),
        }
    }

    /// One past the last sector.
    pub fn end(&self) -> u64 {
        self.lba + self.count
    }

    /// Byte offset of the first sector in the guest view.
    pub fn byte_offset(&self) -> u64 {
        self.lba * u64::from(self.sector_size)
    }

    /// Length in bytes.
    pub fn byte_len(&self) -> u64 {
        self.count * u64::from(self.sector_size)
    }
}

/// Largest buffer used when a default implementation writes zeros.
const ZERO_BUFFER: usize = 1 << 20;

/// Write zero-filled buffers over `range` through [`Disk::write`].
pub fn write_zero_buffers<D: Disk + ?Sized>(disk: &D, range: SectorRange) -> Result<()> {
    for_zero_chunks(range.sector_size, range.lba, range.count, |lba, zeros| {
        disk.write(lba, zeros)
    })
}

/// Call `write(lba, zeros)` over `count` sectors of `sector_size` bytes from `lba`, in chunks of
/// at most 1 MiB of one shared zero buffer (memory never follows the size of the request).
pub(crate) fn for_zero_chunks(
    sector_size: u32,
    lba: u64,
    count: u64,
    mut write: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    static ZEROS: [u8; ZERO_BUFFER] = [0; ZERO_BUFFER];
    let ss = u64::from(sector_size);
    let per = (ZERO_BUFFER as u64 / ss).max(1);
    let end = lba + count;
    let mut pos = lba;
    while pos < end {
        let n = per.min(end - pos);
        write(pos, &ZEROS[..(n * ss) as usize])?;
        pos += n;
    }
    Ok(())
}

/// Implements [`Disk`] for a pointer type by forwarding every method to the pointee.
macro_rules! forward_disk {
    ($($ptr:ty),*) => {$(
        impl<D: Disk + ?Sized> Disk for $ptr {
            fn sector_size(&self) -> u32 {
                (**self).sector_size()
            }
            fn physical_sector_size(&self) -> u32 {
                (**self).physical_sector_size()
            }
            fn virtual_size(&self) -> u64 {
                (**self).virtual_size()
            }
            fn sector_count(&self) -> u64 {
                (**self).sector_count()
            }
            fn disk_id(&self) -> Option<Uuid> {
                (**self).disk_id()
            }
            fn is_read_only(&self) -> bool {
                (**self).is_read_only()
            }
            fn read(&self, lba: u64, buf: &mut [u8]) -> Result<()> {
                (**self).read(lba, buf)
            }
            fn write(&self, lba: u64, buf: &[u8]) -> Result<()> {
                (**self).write(lba, buf)
            }
            fn write_zeroes(&self, lba: u64, count: u64) -> Result<()> {
                (**self).write_zeroes(lba, count)
            }
            fn discard(&self, lba: u64, count: u64) -> Result<()> {
                (**self).discard(lba, count)
            }
            fn flush(&self) -> Result<()> {
                (**self).flush()
            }
            fn block_status(&self, lba: u64, count: u64) -> Result<BlockStatus> {
                (**self).block_status(lba, count)
            }
            fn read_vectored(&self, lba: u64, bufs: &mut [IoSliceMut<'_>]) -> Result<()> {
                (**self).read_vectored(lba, bufs)
            }
            fn write_vectored(&self, lba: u64, bufs: &[IoSlice<'_>], fua: bool) -> Result<()> {
                (**self).write_vectored(lba, bufs, fua)
            }
            fn is_fua_respected(&self) -> bool {
                (**self).is_fua_respected()
            }
            fn write_zeroes_unmap(&self, lba: u64, count: u64, unmap: bool) -> Result<()> {
                (**self).write_zeroes_unmap(lba, count, unmap)
            }
            fn discard_behavior(&self) -> DiscardBehavior {
                (**self).discard_behavior()
            }
            fn optimal_io_alignment(&self) -> u64 {
                (**self).optimal_io_alignment()
            }
        }
    )*};
}

forward_disk!(&D, Box<D>, std::sync::Arc<D>);
