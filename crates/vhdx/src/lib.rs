//! VHDX images (MS-VHDX version 1): fixed, dynamic and differencing, 512-byte and 4 KiB logical
//! sectors, with log replay on open (into the file, or in memory for read-only opens) and
//! crash-safe metadata updates through the log.
//!
//! # How it works
//! - **Open** ([`VhdxLayer::open`]): the current header is the valid one (signature and CRC-32C)
//!   with the higher sequence number; the first valid region table is used; unknown *required*
//!   regions and metadata items are refused; every table is bounded by the file size before it
//!   is read. A writable open makes a valid second region table that differs from the first
//!   equal to it (an interrupted BAT move). The whole BAT is kept in memory (read once, into
//!   its final form; reads never go back to it).
//! - **Space map**: the header section, log, metadata region, BAT region and every block the
//!   BAT stores are recorded in a [`disk_core::SpaceMap`]. A block past the end of the file, on
//!   one of those structures or on another block (or an entry with an invalid state) is
//!   unusable: its reads fail with [`ErrorKind::Corrupt`](disk_core::ErrorKind), a read-only
//!   open reads everything else, and a writable open is refused (naming the entry, the
//!   structure, its offset and what it overlaps) unless the caller asks for repair
//!   ([`OpenContext::repair`]), in which case nothing is ever written through such an entry.
//!   New blocks come from the map, after everything it records.
//! - **Log replay**: the active sequence is the valid entry (signature, checksum, LogGuid,
//!   descriptor and data-sector sequence numbers) with the highest sequence number whose tail
//!   leads to it through consecutive entries. The scan checksums each position at most once
//!   and at most a few times the log's length in all (more is refused as a damaged log). A
//!   log that asks to grow the file by more than 1 GiB, or writes past the file length it
//!   records, is refused. The image is parsed with the log laid over the file in memory; a
//!   read-only open stays that way, a writable open then applies it to the file (growing the
//!   file only as far as the space map's structures need), flushes and clears the LogGuid
//!   (header update). [`scan_log`] runs the scan alone.
//! - **Writes**: before the first change of a session, a header update renews FileWriteGuid and
//!   DataWriteGuid. New payload blocks (and sector bitmap blocks) are appended 1 MiB-aligned;
//!   their data is written and flushed first, then the BAT and bitmap sectors go through the log
//!   (entry, flush, apply, flush). Each entry's tail is itself: everything older is already
//!   applied. The LogGuid is set (header update) before the first entry and cleared again on
//!   flush, so a cleanly flushed image has an empty log. If a metadata update fails midway,
//!   further changes are refused until the image is reopened (and its log replayed).
//! - **Differencing**: partial writes into a block the child does not have make it
//!   PARTIALLY_PRESENT and set sector bitmap bits; reads of clear bits fall through to the parent.
//!   The parent locator's relative, absolute and volume paths are offered to the caller's
//!   resolver in that order; the parent's DataWriteGuid must equal `parent_linkage`.
//! - **Discard / write zeroes**: whole blocks become NOT_PRESENT (dynamic) or ZERO
//!   (differencing, so the parent does not show through) with their file offset cleared and their
//!   space released for reuse; fixed disks keep their blocks and zero the bytes; partial blocks
//!   get zeros written.
//! - **Resize** ([`Layer::resize`]) and **rebase** ([`Layer::set_parent`]): both through the
//!   log, so a crash leaves the old or the new state. Growing past the BAT region's room moves
//!   the BAT to a new region at the end of the file (region table 1, then 2, before the logged
//!   size change); shrinking cuts freed space at the end of the file.
//! - **Check** reports damaged header or region table copies, a log still to replay, every
//!   unusable BAT entry and overlapping structure the space map found, space no structure
//!   refers to that holds data (whole MiBs; zeroed space, as a discard leaves it, is free
//!   space the format cannot record), and leaked space at the end of the file.
//!   `Repair::Leaks` cuts the leaked end of the file; `Repair::All` also rewrites damaged
//!   copies and drops the unusable BAT entries through the log (not present; zero in a
//!   differencing disk), on an image opened with `repair`.
//! - **Parent identity**: a child whose locator records no usable `parent_linkage` says so
//!   ([`Layer::parent_identity_recorded`]), and a chain open refuses it unless the caller
//!   opted in.
//!
//! ```
//! use disk_core::{CreateSpec, Disk, Driver, Image, MemStorage, NoExtraFiles, OpenOptions, Options};
//! use std::sync::Arc;
//!
//! let storage = Arc::new(MemStorage::new());
//! vhdx::VhdxDriver.create(&*storage, CreateSpec {
//!     size: 64 << 20,
//!     options: Options::parse("block_size=1M")?,
//!     backing: None,
//!     path: None,
//!     files: &NoExtraFiles,
//! })?;
//! let layer = vhdx::VhdxDriver.open(storage, &OpenOptions::default().context(None, true))?;
//! let disk = Image::single(layer, None);
//! disk.write(8, &[0xab; 512])?;
//! let mut buf = [0u8; 512];
//! disk.read(8, &mut buf)?;
//! assert_eq!(buf, [0xab; 512]);
//! # Ok::<(), disk_core::Error>(())
//! ```

#![forbid(unsafe_code)]

mod bat;
mod create;
pub mod format;
mod geometry;
mod layer;
mod log;
mod parse;
mod probe;
mod rebase;
mod report;
mod resize;
mod write;

pub use create::measure;
pub use layer::{LogState, VhdxLayer};
pub use log::{LogSummary, scan_log};

use disk_core::{
    CreateOption, CreateSpec, Driver, Format, Layer, MeasureSource, Measurement, OpenContext, Options, Result,
    ResultExt, Storage,
};
use std::sync::Arc;

/// The VHDX format's [`Driver`].
#[derive(Debug, Clone, Copy, Default)]
pub struct VhdxDriver;

impl Driver for VhdxDriver {
    fn create_options(&self) -> &'static [CreateOption] {
        &[
            CreateOption {
                name: "subformat",
                kind: "string",
                default: "dynamic",
                help: "dynamic (blocks allocated as written) or fixed (all space allocated)",
            },
            CreateOption {
                name: "block_size",
                kind: "size",
                default: "32M",
                help: "bytes per payload block, a power of two from 1M to 256M",
            },
            CreateOption {
                name: "log_size",
                kind: "size",
                default: "1M",
                help: "bytes of log, a multiple of 1M",
            },
            CreateOption {
                name: "logical_sector_size",
                kind: "size",
                default: "512",
                help: "512 or 4096 (a child takes its parent's)",
            },
            CreateOption {
                name: "physical_sector_size",
                kind: "size",
                default: "4096",
                help: "512 or 4096 (qemu-img records 512)",
            },
            CreateOption {
                name: "block_state_zero",
                kind: "bool",
                default: "on",
                help: "accepted for qemu-img compatibility: new blocks always read as zeros",
            },
        ]
    }

    fn format(&self) -> Format {
        Format::Vhdx
    }

    fn probe(&self, storage: &dyn Storage, _name: Option<&std::path::Path>) -> std::io::Result<bool> {
        probe::probe(storage)
    }

    fn open(&self, storage: Arc<dyn Storage>, ctx: &OpenContext<'_>) -> Result<Box<dyn Layer>> {
        let layer = VhdxLayer::open(storage, ctx);
        let layer = match ctx.path {
            Some(p) => layer.with_file(p),
            None => layer,
        };
        Ok(Box::new(layer?))
    }

    fn create(&self, storage: &dyn Storage, spec: CreateSpec<'_>) -> Result<()> {
        let path = spec.path;
        let r = create::create(storage, spec);
        match path {
            Some(p) => r.with_file(p),
            None => r,
        }
    }

    fn measure(&self, options: &Options, source: &MeasureSource) -> Result<Measurement> {
        create::measure(options, source)
    }
}
