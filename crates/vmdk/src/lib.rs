//! VMDK images: sparse, flat, split, streamOptimized, COWD and seSparse.
//!
//! [`VmdkDriver`] opens every subformat VMware and QEMU write (hosted sparse with or without an
//! embedded descriptor, flat and split extents, compressed stream-optimized images, ESX COWD and
//! seSparse extents, read-only for the last two) and creates the five `qemu-img` subformats.
//! Extent files are opened only through the caller's [`disk_core::Resolver`].
//!
//! - [`descriptor`]: the text descriptor, parsed into lines so a rewrite (new CID) keeps
//!   everything else; [`mod@format`]: the on-disk structures.
//! - Reads map each extent's sectors to data, zeros or "below" (the parent), with grain tables in
//!   a bounded cache and one decompressed grain kept for small sequential reads.
//! - Every table-based extent file is mapped on open (header, descriptor, directories, tables,
//!   grains: a [`disk_core::SpaceMap`]); an entry pointing past the end of the file or onto
//!   other structures or grains cannot be read or written through, a writable open of such an
//!   image is refused unless the caller is repairing it, and `check` reports (and with
//!   `Repair::All` drops) every such entry and leaked space. Work and memory are bounded by
//!   the file, not by the capacity the header claims.
//! - Writes to hosted sparse extents allocate grains at the end of the file: grain data, a flush,
//!   then the primary and redundant grain table entries (new tables: written whole, flushed, then
//!   linked from both directories). A crash leaves old or new data, never garbage.
//! - A stream-optimized image this crate created is filled front to back (as `convert` does):
//!   grains are compressed on all cores, each grain table follows its grains, and every flush
//!   (and dropping the image unflushed) writes directory, footer and end-of-stream marker.
//!   Other stream images refuse writes.
//! - The first write of a session gives the image a new CID; children record their parent's CID
//!   and [`disk_core::Layer::verify_parent`] checks it.
//! - Resizing ([`disk_core::Layer::resize`]): a sparse extent's header is the atomic switch
//!   (grain directories get room at the end of the file first); flat extents grow; split images
//!   gain or lose 2 GiB extents; stream-optimized images are refused. `set_parent` (rebase)
//!   rewrites `parentFileNameHint` and `parentCID`. `measure` sizes every subformat.
//!
//! ```
//! use disk_core::{CreateSpec, Disk, DenyExternal, Driver, Image, MemStorage, NoExtraFiles, OpenContext, Options};
//! use std::sync::Arc;
//! use vmdk::VmdkDriver;
//!
//! let storage = Arc::new(MemStorage::new());
//! let spec = CreateSpec { size: 1 << 20, options: Options::parse("zeroed_grain=on")?, backing: None, path: None, files: &NoExtraFiles };
//! VmdkDriver.create(&*storage, spec)?;
//! let ctx = OpenContext { path: None, writable: true, resolver: &DenyExternal, lenient: false, repair: false, locking: disk_core::Locking::Auto };
//! let disk = Image::single(VmdkDriver.open(storage, &ctx)?, None);
//! disk.write(8, &[0x5a; 512])?;
//! let mut back = [0u8; 512];
//! disk.read(8, &mut back)?;
//! assert_eq!(back, [0x5a; 512]);
//! # Ok::<(), disk_core::Error>(())
//! ```

#![forbid(unsafe_code)]

mod create;
pub mod descriptor;
pub mod format;
mod layer;
mod measure;
mod open;
mod parallel;
mod probe;
mod sparse;
mod stream;

pub use layer::VmdkLayer;

use disk_core::{CreateOption, CreateSpec, Driver, Format, Layer, OpenContext, Result, Storage};
use std::sync::Arc;

/// The VMDK format's [`Driver`].
#[derive(Debug, Clone, Copy, Default)]
pub struct VmdkDriver;

impl Driver for VmdkDriver {
    fn create_options(&self) -> &'static [CreateOption] {
        &[
            CreateOption {
                name: "subformat",
                kind: "string",
                default: "monolithicSparse",
                help: "monolithicSparse, monolithicFlat, twoGbMaxExtentSparse, twoGbMaxExtentFlat or streamOptimized",
            },
            CreateOption {
                name: "adapter_type",
                kind: "string",
                default: "ide",
                help: "ide, lsilogic, buslogic, legacyESX or pvscsi",
            },
            CreateOption {
                name: "hwversion",
                kind: "string",
                default: "4",
                help: "the virtual hardware version recorded",
            },
            CreateOption {
                name: "compat6",
                kind: "bool",
                default: "off",
                help: "a VMDK version 6 image (hwversion 6; not with hwversion)",
            },
            CreateOption {
                name: "toolsversion",
                kind: "string",
                default: "2147483647",
                help: "the VMware Tools version recorded",
            },
            CreateOption {
                name: "zeroed_grain",
                kind: "bool",
                default: "off",
                help: "sparse: grain table entries may mark grains as zero",
            },
        ]
    }

    fn format(&self) -> Format {
        Format::Vmdk
    }

    fn probe(&self, storage: &dyn Storage, _name: Option<&std::path::Path>) -> std::io::Result<bool> {
        probe::probe(storage)
    }

    fn open(&self, storage: Arc<dyn Storage>, ctx: &OpenContext<'_>) -> Result<Box<dyn Layer>> {
        let layer = open::open_layer(storage, ctx)?;
        Ok(Box::new(layer))
    }

    fn create(&self, storage: &dyn Storage, spec: CreateSpec<'_>) -> Result<()> {
        create::create(storage, spec)
    }

    fn measure(
        &self,
        options: &disk_core::Options,
        source: &disk_core::MeasureSource,
    ) -> Result<disk_core::Measurement> {
        measure::measure(options, source)
    }
}

impl VmdkLayer {
    /// Open one VMDK image (not its parents) from `storage`.
    pub fn open(storage: Arc<dyn Storage>, ctx: &OpenContext<'_>) -> Result<Self> {
        open::open_layer(storage, ctx)
    }
}
