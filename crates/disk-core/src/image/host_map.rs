//! Resolving guest ranges to host file ranges for embedders (the contract is in
//! [`crate::mapping`]).

use super::{Below, Image};
use crate::disk::{Disk, SectorRange};
use crate::error::{Error, Result};
use crate::mapping::{Completion, Mapping, Pin, WriteTarget};
use crate::storage::Storage;
use std::sync::Arc;

/// Where a run of guest sectors is stored, for reading (see [`crate::mapping`]).
#[derive(Debug, Clone)]
pub enum ReadSource {
    /// Stored uncompressed in a host file.
    Host {
        /// Which layer of the chain holds it (0: the image itself).
        depth: usize,
        /// The layer's file number (an extent of a VMDK).
        file: usize,
        /// Byte offset of the run's first sector.
        offset: u64,
        /// The host file.
        storage: Arc<dyn Storage>,
    },
    /// Reads as zeros.
    Zero,
    /// Only the engine can produce the data: read it through [`Disk::read`].
    Engine,
}

/// One run of [`Image::map_read`]: `sectors` sectors from the requested LBA, and where they are.
/// Keeps the space from being released or reused while alive.
#[derive(Debug)]
pub struct ReadMapping<'a> {
    /// Sectors this run covers (at least 1).
    pub sectors: u64,
    /// Where they are.
    pub source: ReadSource,
    _pin: Pin<'a>,
}

/// One run of [`Image::map_write`]: where `sectors` sectors from the requested LBA go.
#[must_use = "a write mapping is completed after the data is written"]
pub struct WriteMapping<'a> {
    /// Sectors this run covers (at least 1).
    pub sectors: u64,
    /// Where the data goes.
    pub target: WriteTarget,
    /// The host file of a `Host` or `Unit` target.
    pub storage: Option<Arc<dyn Storage>>,
    completion: Completion<'a>,
    _pin: Pin<'a>,
}

impl std::fmt::Debug for WriteMapping<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteMapping")
            .field("sectors", &self.sectors)
            .field("target", &self.target)
            .finish()
    }
}

impl WriteMapping<'_> {
    /// The data is written: let the engine publish its metadata (durable at the next flush).
    pub fn complete(self) -> Result<()> {
        self.completion.complete()
    }
}

impl Image {
    /// Where the run of guest sectors starting at `lba` (at most `count`) is stored, resolved
    /// through the chain of parents. See [`crate::mapping`] for the contract.
    pub fn map_read(&self, lba: u64, count: u64) -> Result<ReadMapping<'_>> {
        SectorRange::check(self, lba, count)?;
        if count == 0 {
            return Err(Error::invalid_argument("mapping zero sectors"));
        }
        let ss = u64::from(self.sector_size());
        let mut limit = count;
        for (depth, cl) in self.layers.iter().enumerate() {
            // Sectors past the end of a (smaller) parent read as zeros.
            let own = cl.layer.virtual_size().div_ceil(ss);
            if lba >= own {
                break;
            }
            let pin = Pin::of(cl.layer.io_gate());
            let run = cl.layer.map(lba, limit.min(own - lba));
            let run = match &cl.path {
                Some(p) => run.map_err(|e| e.with_file(p))?,
                None => run?,
            };
            let sectors = run.sectors.clamp(1, limit.min(own - lba));
            let source = match run.mapping {
                Mapping::Data { file, offset } => ReadSource::Host {
                    depth,
                    file,
                    offset,
                    storage: cl.layer.host_file(file).cloned().ok_or_else(|| {
                        Error::corrupt(format!("the image maps data to file {file}, which it does not have"))
                    })?,
                },
                Mapping::Zero => ReadSource::Zero,
                Mapping::Special => ReadSource::Engine,
                Mapping::Unallocated => {
                    limit = sectors;
                    continue;
                }
            };
            return Ok(ReadMapping {
                sectors,
                source,
                _pin: pin,
            });
        }
        Ok(ReadMapping {
            sectors: limit,
            source: ReadSource::Zero,
            _pin: Pin::of(None),
        })
    }

    /// Where a write of the guest sectors starting at `lba` (at most `count`) goes, allocating
    /// where needed. See [`crate::mapping`] for the contract.
    pub fn map_write(&self, lba: u64, count: u64) -> Result<WriteMapping<'_>> {
        SectorRange::check(self, lba, count)?;
        if self.is_read_only() {
            return Err(Error::read_only());
        }
        if count == 0 {
            return Err(Error::invalid_argument("mapping zero sectors"));
        }
        let top = self.top();
        let pin = Pin::of(top.io_gate());
        let run = self.named(top.map_for_write(lba, count))?;
        let storage = match run.target {
            WriteTarget::Host { file, .. } | WriteTarget::Unit { file, .. } => {
                Some(top.host_file(file).cloned().ok_or_else(|| {
                    Error::corrupt(format!("the image maps data to file {file}, which it does not have"))
                })?)
            }
            WriteTarget::Engine => None,
        };
        Ok(WriteMapping {
            sectors: run.sectors.clamp(1, count),
            target: run.target,
            storage,
            completion: run.completion,
            _pin: pin,
        })
    }

    /// Read guest sectors as the layers below the image hold them (its parents; zeros for a
    /// standalone image): what fills a `Fill::Below` unit.
    pub fn read_below(&self, lba: u64, buf: &mut [u8]) -> Result<()> {
        SectorRange::for_buffer(self, lba, buf.len())?;
        Below {
            layers: &self.layers[1..],
            sector_size: self.sector_size(),
            sectors: self.sector_count(),
        }
        .read(lba, buf)
    }
}
