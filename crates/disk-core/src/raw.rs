//! The raw format: byte N of the file is byte N of the disk.

use crate::disk::{Allocation, BlockStatus, Disk};
use crate::driver::{CreateOption, CreateSpec, Driver, MeasureSource, Measurement, OpenContext};
use crate::error::{Error, IoResultExt, Result};
use crate::layer::{Layer, LayerInfo};
use crate::mapping::{Mapping, Run, WriteRun};
use crate::options::Options;
use crate::probe::Format;
use crate::storage::Storage;
use std::any::Any;
use std::sync::Arc;

/// Bytes of zeros written at once by `preallocation=full`.
const FULL_CHUNK: usize = 1 << 20;

/// Raw images always present 512-byte sectors.
const SECTOR: u32 = 512;

/// A raw image: the file is the disk.
#[derive(Debug)]
pub struct RawLayer {
    storage: Arc<dyn Storage>,
    size: u64,
    read_only: bool,
}

impl RawLayer {
    /// Wrap `storage`; the virtual size is its current length.
    pub fn open(storage: Arc<dyn Storage>, writable: bool) -> Result<Self> {
        let size = storage.len().io_context("reading the file size", 0)?;
        Ok(RawLayer {
            storage,
            size,
            read_only: !writable,
        })
    }

    /// Bytes of `[offset, offset+len)` that lie inside the file (a raw file of odd length has a
    /// last sector that is partly past its end).
    fn inside(&self, offset: u64, len: usize) -> usize {
        usize::try_from(self.size.saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(len)
    }
}

impl Layer for RawLayer {
    fn format(&self) -> Format {
        Format::Raw
    }
    fn sector_size(&self) -> u32 {
        SECTOR
    }
    fn virtual_size(&self) -> u64 {
        self.size
    }
    fn is_read_only(&self) -> bool {
        self.read_only
    }
    fn map(&self, lba: u64, count: u64) -> Result<Run> {
        let offset = lba * u64::from(SECTOR);
        // Whole sectors map straight to the file; a partial last sector reads zero-padded.
        let whole = self.size.saturating_sub(offset) / u64::from(SECTOR);
        Ok(if whole == 0 {
            Run {
                sectors: 1,
                mapping: Mapping::Special,
            }
        } else {
            Run {
                sectors: whole.min(count),
                mapping: Mapping::data(offset),
            }
        })
    }
    fn map_for_write(&self, lba: u64, count: u64) -> Result<WriteRun<'_>> {
        if self.read_only {
            return Err(Error::read_only());
        }
        let offset = lba * u64::from(SECTOR);
        let whole = self.size.saturating_sub(offset) / u64::from(SECTOR);
        Ok(if whole == 0 {
            WriteRun::engine(1)
        } else {
            WriteRun::overwrite(whole.min(count), offset)
        })
    }
    fn host_file(&self, file: usize) -> Option<&Arc<dyn Storage>> {
        (file == 0).then_some(&self.storage)
    }
    fn read_special(&self, lba: u64, buf: &mut [u8], _below: &dyn Disk) -> Result<()> {
        let offset = lba * u64::from(SECTOR);
        let n = self.inside(offset, buf.len());
        let (head, tail) = buf.split_at_mut(n);
        self.storage
            .read_at(head, offset)
            .io_context("reading raw image", offset)?;
        tail.fill(0);
        Ok(())
    }
    fn write_special(&self, lba: u64, buf: &[u8], _below: &dyn Disk) -> Result<()> {
        let offset = lba * u64::from(SECTOR);
        let n = self.inside(offset, buf.len());
        self.storage
            .write_at(&buf[..n], offset)
            .io_context("writing raw image", offset)
    }
    fn write_zeroes(&self, lba: u64, count: u64, below: &dyn Disk) -> Result<()> {
        self.discard(lba, count, below)
    }
    fn discard(&self, lba: u64, count: u64, _below: &dyn Disk) -> Result<()> {
        if self.read_only {
            return Err(Error::read_only());
        }
        let offset = lba * u64::from(SECTOR);
        let len = (count * u64::from(SECTOR)).min(self.size.saturating_sub(offset));
        self.storage
            .punch_hole(offset, len)
            .io_context("punching a hole", offset)
    }
    fn flush(&self) -> Result<()> {
        self.storage.flush().io_context("flushing raw image", 0)
    }
    fn block_status(&self, lba: u64, count: u64) -> Result<BlockStatus> {
        let ss = u64::from(SECTOR);
        let offset = lba * ss;
        let (data, bytes) = self
            .storage
            .allocation(offset, count * ss)
            .io_context("querying holes", offset)?;
        let sectors = if data { bytes.div_ceil(ss) } else { bytes / ss }.min(count);
        Ok(if data || sectors == 0 {
            BlockStatus::data_at(sectors.max(1), offset)
        } else {
            BlockStatus::new(sectors, Allocation::Zero)
        })
    }
    fn info(&self) -> LayerInfo {
        LayerInfo::new(Format::Raw, self.size)
    }
    fn resize(self: Box<Self>, new_size: u64, _files: &dyn crate::FileCreator) -> Result<()> {
        if self.read_only {
            return Err(Error::read_only());
        }
        self.storage
            .set_len(new_size)
            .io_context("changing the file size", new_size)?;
        self.storage.flush().io_context("flushing the resized image", 0)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The raw format's [`Driver`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RawDriver;

impl Driver for RawDriver {
    fn format(&self) -> Format {
        Format::Raw
    }
    /// Any content is a raw image: probing asks raw last.
    fn probe(&self, _storage: &dyn Storage, _name: Option<&std::path::Path>) -> std::io::Result<bool> {
        Ok(true)
    }
    fn open(&self, storage: Arc<dyn Storage>, ctx: &OpenContext<'_>) -> Result<Box<dyn Layer>> {
        Ok(Box::new(RawLayer::open(storage, ctx.writable)?))
    }
    fn create(&self, storage: &dyn Storage, mut spec: CreateSpec<'_>) -> Result<()> {
        let preallocation = spec.options.take_str("preallocation");
        spec.options.finish()?;
        if spec.backing.is_some() {
            return Err(Error::invalid_argument("raw images cannot have a backing file"));
        }
        storage.set_len(spec.size).io_context("setting the raw image size", 0)?;
        match preallocation.as_deref() {
            None | Some("off") => {}
            Some("falloc") if spec.size > 0 => storage
                .reserve(0, spec.size)
                .io_context("preallocating the raw image (falloc)", 0)?,
            Some("falloc") => {}
            Some("full") => {
                let zeros = vec![0u8; FULL_CHUNK.min(usize::try_from(spec.size).unwrap_or(FULL_CHUNK))];
                let mut pos = 0u64;
                while pos < spec.size {
                    let n = zeros.len().min(usize::try_from(spec.size - pos).unwrap_or(usize::MAX));
                    storage
                        .write_at(&zeros[..n], pos)
                        .io_context("preallocating the raw image (full)", pos)?;
                    pos += n as u64;
                }
            }
            Some(other) => {
                return Err(Error::invalid_argument(format!(
                    "preallocation '{other}' is not off, falloc or full"
                )));
            }
        }
        storage.flush().io_context("flushing the new image", 0)
    }
    fn create_options(&self) -> &'static [CreateOption] {
        &[CreateOption {
            name: "preallocation",
            kind: "string",
            default: "off",
            help: "off (a sparse file), falloc (space reserved, reads zeros) or full (zeros written)",
        }]
    }
    /// `required` is the data a sparse copy stores (the whole size for `measure --size`, as
    /// `qemu-img` counts it), `fully_allocated` the virtual size.
    fn measure(&self, options: &Options, source: &MeasureSource) -> Result<Measurement> {
        options.clone().finish()?;
        let size = source.virtual_size;
        let required = if source.data.is_empty() && source.virtual_size > 0 && !source.measured_image {
            size
        } else {
            source.data_bytes().min(size)
        };
        Ok(Measurement {
            required,
            fully_allocated: size,
        })
    }
}
