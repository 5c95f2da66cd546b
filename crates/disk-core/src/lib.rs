//! Shared foundations of the vdisk workspace: the [`Storage`] and [`Disk`] traits, the [`Layer`]
//! trait format engines implement, chains of images ([`Image`]), the one [`Error`] type, format
//! probing (asking each format's [`Driver`]), CHS geometry, GUID helpers, the raw format, and
//! operations generic over any disk (copy, compare, map; commit and rebase data movement).
//!
//! ```
//! use disk_core::{Disk, Image, MemStorage, RawLayer, bytes};
//! use std::sync::Arc;
//!
//! let storage = Arc::new(MemStorage::new());
//! storage.set_len(1 << 20).unwrap();
//! # use disk_core::Storage;
//! let disk = Image::single(Box::new(RawLayer::open(storage, true)?), None);
//! bytes::write_bytes(&disk, 1000, b"hello")?;
//! let mut buf = [0u8; 5];
//! bytes::read_bytes(&disk, 1000, &mut buf)?;
//! assert_eq!(&buf, b"hello");
//! assert_eq!(disk.sector_count(), 2048);
//! # Ok::<(), disk_core::Error>(())
//! ```

#![forbid(unsafe_code)]

pub mod bytes;
mod disk;
mod driver;
mod error;
pub mod files;
pub mod geometry;
pub mod guid;
mod image;
mod layer;
pub mod lock;
pub mod mapping;
pub mod mover;
pub mod ops;
mod options;
mod probe;
mod raw;
mod resolve;
pub mod space;
mod splitmix;
mod storage;
pub mod sync;
pub mod table;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod utf16;

pub use disk::{Allocation, BlockStatus, DiscardBehavior, Disk, SectorRange, write_zero_buffers};
pub use driver::{
    BackingSpec, CreateOption, CreateSpec, Driver, FileCreator, LayerOpener, MeasureSource, Measurement, NoExtraFiles,
    OpenContext,
};
pub use error::{DeviceStatus, Error, ErrorContext, ErrorKind, IoResultExt, Result, ResultExt, display_chain};
pub use image::{Image, MissingParent, OpenOptions, ReadMapping, ReadSource, WriteMapping};
pub use layer::{CheckReport, Findings, InfoValue, Layer, LayerInfo, MAX_CHECK_DETAILS, NewParent, ParentRef, Repair};
pub use lock::Locking;
pub use options::{Options, parse_size};
pub use probe::{Format, extension_is, probe_head, probe_with};
pub use raw::{RawDriver, RawLayer};
pub use resolve::{
    DenyExternal, FileKind, FileRequest, FsPolicy, FsResolver, MemResolver, Opened, Resolver, recorded_to_path,
    relative_locator,
};
pub use space::{Conflict, SpaceKind, SpaceMap, SpaceRange};
pub use splitmix::SplitMix64;
pub use storage::{FileStorage, MemStorage, Storage};
pub use uuid::{self, Uuid};
