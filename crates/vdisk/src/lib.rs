//! Open, create, convert and compare VHD, VHDX, VMDK and raw disk images.
//!
//! This facade re-exports the workspace's crates and adds format dispatch: [`open`] probes an
//! image's format and assembles it with its parents into one [`Image`] (a [`Disk`]); [`create`]
//! makes a new image of any format; [`convert`] copies any disk into a new image.
//!
//! ```
//! use vdisk::{CreateOptions, Disk, Format, OpenOptions, bytes};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("disk.img");
//! vdisk::create(&path, &CreateOptions::new(Format::Raw, 1 << 20))?;
//!
//! let disk = vdisk::open(&path, &OpenOptions::new().writable(true))?;
//! bytes::write_bytes(&disk, 4096, b"hello")?;
//! disk.flush()?;
//! // The image stays locked for writing while the handle is open (see below).
//! drop(disk);
//!
//! let disk = vdisk::open(&path, &OpenOptions::new())?;
//! let mut buf = [0u8; 5];
//! bytes::read_bytes(&disk, 4096, &mut buf)?;
//! assert_eq!(&buf, b"hello");
//! assert_eq!(disk.info().format, Format::Raw);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Opening locks the image's files as QEMU does ([`OpenOptions::locking`], [`disk_core::lock`]):
//! a writable open keeps every other writer and reader out (QEMU's too) and fails with
//! [`ErrorKind::Locked`] while another open uses the image; read-only opens coexist. The locks
//! belong to the open handle, so two handles in one process exclude each other just as two
//! processes do; [`Locking::ForceShare`] reads beside a writer, as `qemu-img -U`.
//!
//! Images that name other files (parents, VMDK extents) open them only through the resolver in
//! [`OpenOptions::resolver`] (and [`CreateOptions::resolver`] for a new child's backing chain);
//! the default, [`DenyExternal`], refuses, so untrusted images cannot make this library read or
//! write arbitrary host files. [`FsResolver`] with [`FsPolicy::SameDirectory`] allows plain
//! files in the image's own directory (the `vdisk` tool's default); [`FsPolicy::Any`] follows
//! any path, as `qemu-img` does, and is only for a person's own images.
//!
//! # What is exported
//! - At the top level: the operations above, [`probe`] and the engines ([`driver`],
//!   [`drivers`]), and the core types an embedder handles: [`Disk`], [`Image`], [`Layer`],
//!   [`Storage`], [`OpenOptions`] and [`Locking`], the resolvers, [`Error`] and [`ErrorKind`]. [`MemStorage`]
//!   (an in-memory storage: hold an image in memory, open it with [`open_storage`]) is here too.
//! - [`disk_core`] whole: the storage, layer and driver traits, the mapping API for embedders
//!   doing their own data I/O ([`disk_core::mapping`]), [`disk_core::FileStorage`], and
//!   [`MemResolver`](disk_core::MemResolver), which serves names registered beforehand from
//!   memory (a chain or a multi-file VMDK held in memory; mostly tests, fuzzers and benches, so
//!   it is not repeated here); [`ops`] (copy, compare, map, commit and rebase data movement) and
//!   [`bytes`].
//! - The engines [`vhd1`], [`vhdx`], [`vmdk`]: each one's driver and layer type (downcast a
//!   [`Layer`] to it for format-specific details), its on-disk definitions (`format`), and
//!   whatever else an embedder or tool needs (the VMDK descriptor parser, the VHDX log scan).
//!   Their parsers' internals are private.
//! - [`disk_resize`]: size changes ([`SizeChange`](disk_resize::SizeChange),
//!   [`ResizeOptions`](disk_resize::ResizeOptions)), the checks a resize makes, `measure`.
//! - Not API: the fuzz target bodies (`vdisk::fuzzing`, feature `fuzzing`) and the conformance
//!   suite and fault-injecting storages (`disk_core::testing`, disk-core's feature `test-util`).

#![forbid(unsafe_code)]

mod convert;
mod create;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod modify;
mod registry;

pub use convert::{ConvertOptions, convert};
pub use create::{CreateOptions, create};
pub use modify::{
    AfterCommit, commit, commit_into, commit_then, commit_with_progress, flatten, rebase, rebase_with_progress, resize,
};
pub use registry::{driver, drivers, probe};

pub use disk_core::{
    self, Allocation, BlockStatus, CheckReport, DenyExternal, DeviceStatus, DiscardBehavior, Disk, Error, ErrorKind,
    Findings, Format, FsPolicy, FsResolver, Image, InfoValue, Layer, LayerInfo, Locking, MemStorage, MissingParent,
    OpenOptions, Options, Repair, Resolver, Result, Storage, bytes, ops, parse_size,
};
pub use disk_resize;
pub use vhd1;
pub use vhdx;
pub use vmdk;

use disk_core::{FileStorage, ResultExt};
use std::path::Path;
use std::sync::Arc;

/// Open the image at `path` with its parents (as far as `options.resolver` allows), its files
/// locked as [`OpenOptions::locking`] says.
pub fn open(path: impl AsRef<Path>, options: &OpenOptions) -> Result<Image> {
    let path = path.as_ref();
    let storage = open_file(path, options.writable, options.locking)?;
    open_storage(Arc::new(storage), Some(path), options).with_file(path)
}

/// Open the file at `path` (read-write when `writable`) and lock it as `locking` says.
pub(crate) fn open_file(path: &Path, writable: bool, locking: Locking) -> Result<FileStorage> {
    let storage = FileStorage::open(path, writable).map_err(|e| Error::io(e, "cannot open image").with_file(path))?;
    locking.apply(&storage, writable).with_file(path)?;
    Ok(storage)
}

/// Open an image held in any [`Storage`] (e.g. in memory). `name` is its path, for probing
/// tie-breaks and for resolving the relative names it records. The storage is locked as
/// [`OpenOptions::locking`] says before anything is read (a file storage only: memory needs no
/// lock), and so are the parents and extents opened.
pub fn open_storage(storage: Arc<dyn Storage>, name: Option<&Path>, options: &OpenOptions) -> Result<Image> {
    options.locking.apply(&*storage, options.writable)?;
    let format = match options.format {
        Some(f) => f,
        None => probe(&*storage, name).map_err(|e| Error::io(e, "probing the image format"))?,
    };
    let ctx = options.context(name, options.writable);
    let top = driver(format)?.open(storage, &ctx)?;
    Image::open_chain(top, name.map(Path::to_path_buf), options, &|format, storage, ctx| {
        driver(format)?.open(storage, ctx)
    })
}
