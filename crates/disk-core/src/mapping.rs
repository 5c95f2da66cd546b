//! The mapping interface between format engines and the I/O core.
//!
//! An engine never moves guest data itself. For a read it answers [`Layer::map`]: where the next
//! run of sectors lives ([`Mapping`]). For a write it answers [`Layer::map_for_write`]: a host
//! range that is already allocated, or one it has just reserved, plus a [`Completion`] that
//! publishes the metadata once the data is written ([`WriteRun`]). The core
//! ([`read_layer`](crate::mover::read_layer), [`write_layer`](crate::mover::write_layer), and
//! [`Image`](crate::Image) on top of them) moves the bytes with no engine lock held.
//!
//! Engines whose space can be freed and reused while I/O is in flight (VHDX discard) expose an
//! [`IoGate`]: the core holds a [`Pin`] from before it asks for a mapping until the data I/O of
//! that run has finished, and the engine takes the gate exclusively before releasing space.
//!
//! ## For embedders: resolving guest ranges to host file ranges
//!
//! Embedders that move the data themselves (io_uring, `O_DIRECT`, DMA from guest memory) use
//! [`Image::map_read`] and [`Image::map_write`]. The contract, per run:
//!
//! - **Reads**: read `sectors` sectors at `offset` of the returned storage while the
//!   [`ReadMapping`] is alive (it pins the space against reuse). `Zero` runs read as zeros;
//!   `Engine` runs (compressed or streamed data) go through [`Disk::read`].
//! - **Writes**: write the data to the target while the [`WriteMapping`] is alive, then call
//!   [`WriteMapping::complete`]. A `Unit` target is written whole, the sectors outside the write
//!   taken from [`Image::read_below`] (`Fill::Below`) or zeros; an `Engine` target goes through
//!   [`Disk::write`] (drop the mapping first). Dropping a mapping without completing it abandons
//!   the reservation (the space stays unused).
//! - **Durability**: completed writes are visible at once and durable after [`Disk::flush`],
//!   which writes the metadata after flushing the data (docs/ARCHITECTURE.md has the order per
//!   format).
//!
//! A mapping borrows the image and holds a lock guard, so it stays on the thread that made it:
//! an async embedder maps, does the I/O and completes inside one blocking task.
//!
//! [`Image::map_read`]: crate::Image::map_read
//! [`Image::map_write`]: crate::Image::map_write
//! [`Image::read_below`]: crate::Image::read_below
//! [`ReadMapping`]: crate::ReadMapping
//! [`WriteMapping`]: crate::WriteMapping
//! [`WriteMapping::complete`]: crate::WriteMapping::complete
//! [`Disk::read`]: crate::Disk::read
//! [`Disk::write`]: crate::Disk::write
//! [`Disk::flush`]: crate::Disk::flush
//! [`Layer::map`]: crate::Layer::map
//! [`Layer::map_for_write`]: crate::Layer::map_for_write

use crate::error::Result;
use crate::sync::{lock, read_lock, write_lock};
use std::collections::HashSet;
use std::sync::{Condvar, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Where a run of a layer's sectors lives, for reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// Stored uncompressed at byte `offset` of the layer's host file number `file`
    /// ([`Layer::host_file`](crate::Layer::host_file)).
    Data {
        /// Which of the layer's files (0 for single-file formats; the extent for VMDK).
        file: usize,
        /// Byte offset of the run's first sector in that file.
        offset: u64,
    },
    /// Reads as zeros.
    Zero,
    /// Not in this layer: read from the layers below.
    Unallocated,
    /// Stored in a form only the engine can decode (a compressed grain, a partial last sector):
    /// read through [`Layer::read_special`](crate::Layer::read_special).
    Special,
}

impl Mapping {
    /// Data at byte `offset` of the layer's first (usually only) file.
    pub fn data(offset: u64) -> Self {
        Mapping::Data { file: 0, offset }
    }
}

/// A run of sectors with one [`Mapping`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Number of sectors (values of 0 are treated as 1; values past the request are clipped).
    pub sectors: u64,
    /// Where they live.
    pub mapping: Mapping,
}

/// What fills the rest of a newly allocated unit that a write covers only in part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// Zeros.
    Zeros,
    /// The sectors the layers below hold (copy-on-write of a grain).
    Below,
}

/// Where the data of a write goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteTarget {
    /// Write the caller's sectors at byte `offset` of host file `file`; nothing else is needed
    /// for the data (the rest of the block already reads as it should).
    Host {
        /// Which of the layer's files.
        file: usize,
        /// Byte offset of the run's first sector.
        offset: u64,
    },
    /// A newly allocated unit (a VMDK grain) that must be written whole: the caller's sectors
    /// at their place, the others from `fill`.
    Unit {
        /// Which of the layer's files.
        file: usize,
        /// Byte offset of the unit's first sector.
        offset: u64,
        /// Guest LBA of the unit's first sector.
        lba: u64,
        /// Sectors in the unit.
        sectors: u64,
        /// What the sectors outside the write hold.
        fill: Fill,
    },
    /// The engine writes these sectors itself (a streamOptimized VMDK, a partial last sector):
    /// through [`Layer::write_special`](crate::Layer::write_special).
    Engine,
}

/// The answer to [`Layer::map_for_write`](crate::Layer::map_for_write): where the next run of
/// a write goes, and what to do once the data is there.
#[must_use = "a write mapping must be completed after the data is written"]
pub struct WriteRun<'a> {
    /// Sectors from the requested LBA this answer covers (at least 1).
    pub sectors: u64,
    /// Where the data goes.
    pub target: WriteTarget,
    /// Publishes the engine's metadata (BAT entry, bitmap bits, grain table entry) after the
    /// data write succeeded; dropping it instead gives the reservation back.
    pub completion: Completion<'a>,
}

impl std::fmt::Debug for WriteRun<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteRun")
            .field("sectors", &self.sectors)
            .field("target", &self.target)
            .field("completion", &self.completion.0.is_some())
            .finish()
    }
}

impl<'a> WriteRun<'a> {
    /// A run whose data goes to `offset` of file 0 with no metadata to publish afterwards.
    pub fn overwrite(sectors: u64, offset: u64) -> Self {
        WriteRun {
            sectors,
            target: WriteTarget::Host { file: 0, offset },
            completion: Completion::none(),
        }
    }

    /// A run the engine writes itself.
    pub fn engine(sectors: u64) -> Self {
        WriteRun {
            sectors,
            target: WriteTarget::Engine,
            completion: Completion::none(),
        }
    }
}

/// The engine's step after a mapped write: called with `true` once the data is written (the
/// engine publishes the new mapping), or with `false` when the write failed or was abandoned
/// (the engine gives the reservation back). Runs exactly once: [`Completion::complete`], or
/// on drop with `false`.
#[must_use = "dropping a completion abandons the write"]
pub struct Completion<'a>(Option<CompletionFn<'a>>);

/// The boxed step inside a [`Completion`].
type CompletionFn<'a> = Box<dyn FnOnce(bool) -> Result<()> + Send + 'a>;

impl<'a> Completion<'a> {
    /// Nothing to do after the data write.
    pub fn none() -> Self {
        Completion(None)
    }

    /// Run `step` after the data write (`true`) or when it is abandoned (`false`).
    pub fn new(step: impl FnOnce(bool) -> Result<()> + Send + 'a) -> Self {
        Completion(Some(Box::new(step)))
    }

    /// The data is written: publish it.
    pub fn complete(mut self) -> Result<()> {
        match self.0.take() {
            Some(step) => step(true),
            None => Ok(()),
        }
    }
}

impl Drop for Completion<'_> {
    fn drop(&mut self) {
        if let Some(step) = self.0.take() {
            // Abandoning has no one to report to; the engine leaves its metadata as it was.
            let _ = step(false);
        }
    }
}

/// Keeps space from being freed or reused while data I/O to it is in flight: the core holds a
/// [`Pin`] around each mapped I/O, and an engine takes [`IoGate::exclusive`] before it releases
/// space that a later allocation could hand out again.
#[derive(Debug, Default)]
pub struct IoGate(RwLock<()>);

impl IoGate {
    /// A new gate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Share the gate for one mapped I/O. Hold at most one pin per thread at a time.
    pub fn pin(&self) -> Pin<'_> {
        Pin {
            _held: Some(read_lock(&self.0)),
        }
    }

    /// Wait until no pinned I/O is in flight and keep new ones out until the guard is dropped.
    pub fn exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        write_lock(&self.0)
    }
}

/// A shared hold on an [`IoGate`] (or nothing, for layers without one).
#[derive(Debug)]
pub struct Pin<'a> {
    _held: Option<RwLockReadGuard<'a, ()>>,
}

impl<'a> Pin<'a> {
    /// Pin `gate`, if the layer has one.
    pub fn of(gate: Option<&'a IoGate>) -> Self {
        gate.map_or(Pin { _held: None }, IoGate::pin)
    }
}

/// Per-unit serialisation of allocations: one writer allocates a given block or grain while
/// others wanting the same unit wait; writers of different units never wait for each other.
#[derive(Debug, Default)]
pub struct Claims {
    held: Mutex<HashSet<u64>>,
    released: Condvar,
}

impl Claims {
    /// No claims.
    pub fn new() -> Self {
        Self::default()
    }

    /// Claim unit `key`, waiting while another writer holds it. The caller re-reads the unit's
    /// metadata afterwards: the previous holder may have allocated it.
    pub fn claim(&self, key: u64) -> Claim<'_> {
        let mut held = lock(&self.held);
        while held.contains(&key) {
            held = self.released.wait(held).unwrap_or_else(|e| e.into_inner());
        }
        held.insert(key);
        Claim { claims: self, key }
    }
}

/// A held claim on one unit; released on drop.
#[derive(Debug)]
pub struct Claim<'a> {
    claims: &'a Claims,
    key: u64,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut held = lock(&self.claims.held);
        held.remove(&self.key);
        drop(held);
        self.claims.released.notify_all();
    }
}
