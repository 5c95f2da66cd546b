//! VHD v1 ("vpc") images: fixed, dynamic and differencing, as Microsoft's Virtual Hard Disk
//! Image Format Specification defines them, read and written the way Hyper-V and QEMU do.
//!
//! - [`format`](mod@format): the on-disk structures (footer, dynamic header, parent locators, BAT).
//! - [`VhdLayer`]: an open image, a [`disk_core::Layer`]; [`VhdDriver`] plugs it into the
//!   facade.
//! - Sizes follow QEMU's rule: the CHS geometry for creators `vpc ` and `qemu` (unless it is the
//!   65535/16/255 maximum), `current_size` for everyone else; new images record the exact size
//!   asked for (creator `vdsk`), like Hyper-V and Azure.
//! - Allocating writes put the block (bitmap and data) at the end, move the footer, flush, and
//!   only then point the BAT at it: a crash leaves every sector old or new.
//! - Resizing ([`disk_core::Layer::resize`]) moves a fixed disk's footer, or grows a dynamic
//!   disk's BAT in place (moving the data blocks in its way to the end of the file; a
//!   differencing disk whose locators follow the BAT gets a BAT copy at the end instead) before
//!   one atomic header sector and the footers switch to the new size. `set_parent` (rebase)
//!   writes a new dynamic header (parent id, timestamp, locators) that the footer copy at offset
//!   0 switches to atomically.
//!
//! ```
//! use disk_core::{CreateSpec, Disk, Driver, Image, MemStorage, NoExtraFiles, OpenOptions, Options, bytes};
//! use std::sync::Arc;
//!
//! let storage = Arc::new(MemStorage::new());
//! vhd1::VhdDriver.create(&*storage, CreateSpec {
//!     size: 8 << 20,
//!     options: Options::new(),
//!     backing: None,
//!     path: None,
//!     files: &NoExtraFiles,
//! })?;
//! let opts = OpenOptions::new().writable(true);
//! let layer = vhd1::VhdDriver.open(storage, &opts.context(None, true))?;
//! let disk = Image::single(layer, None);
//! bytes::write_bytes(&disk, 3 << 20, b"hello")?;
//! let mut buf = [0u8; 5];
//! bytes::read_bytes(&disk, 3 << 20, &mut buf)?;
//! assert_eq!(&buf, b"hello");
//! assert_eq!(disk.virtual_size(), 8 << 20);
//! # Ok::<(), disk_core::Error>(())
//! ```

#![forbid(unsafe_code)]

mod check;
mod create;
mod footer;
pub mod format;
mod header;
mod info;
mod layer;
mod parent;
mod probe;
mod resize;
mod space;
mod write;

pub use create::{VhdCreateOptions, append_fixed_footer, file_size};
pub use format::DiskType;
pub use layer::VhdLayer;
pub use parent::Locator;

use disk_core::{CreateOption, CreateSpec, Driver, Format, Layer, OpenContext, Result, Storage};
use std::sync::Arc;

/// The VHD format's [`Driver`].
#[derive(Debug, Clone, Copy, Default)]
pub struct VhdDriver;

impl Driver for VhdDriver {
    fn format(&self) -> Format {
        Format::Vhd
    }

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
                default: "2M",
                help: "dynamic disks: bytes per block, a power of two from 512 to 256M",
            },
            CreateOption {
                name: "force_size",
                kind: "bool",
                default: "on",
                help: "on: the exact size asked for; off: rounded to the CHS geometry as qemu-img does by default",
            },
            CreateOption {
                name: "azure",
                kind: "bool",
                default: "off",
                help: "a fixed disk Azure accepts: size rounded up to a whole MiB",
            },
        ]
    }

    fn probe(&self, storage: &dyn Storage, name: Option<&std::path::Path>) -> std::io::Result<bool> {
        probe::probe(storage, name)
    }

    fn open(&self, storage: Arc<dyn Storage>, ctx: &OpenContext<'_>) -> Result<Box<dyn Layer>> {
        Ok(Box::new(VhdLayer::open(storage, ctx)?))
    }

    fn create(&self, storage: &dyn Storage, spec: CreateSpec<'_>) -> Result<()> {
        create::create(storage, spec)
    }

    /// File sizes from [`file_size`]: `required` stores the blocks that hold data (all of a
    /// fixed disk), `fully_allocated` every block.
    fn measure(
        &self,
        options: &disk_core::Options,
        source: &disk_core::MeasureSource,
    ) -> Result<disk_core::Measurement> {
        let opts = VhdCreateOptions::parse(options.clone())?;
        let size = source.virtual_size;
        let used = source.clusters(u64::from(opts.block_size));
        Ok(disk_core::Measurement {
            required: file_size(size, &opts, used)?,
            fully_allocated: file_size(size, &opts, u64::MAX)?,
        })
    }
}
