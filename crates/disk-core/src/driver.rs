//! What a format engine provides to the facade: open a layer from storage, create an image.

use crate::error::{Error, ErrorKind, Result};
use crate::image::Image;
use crate::layer::Layer;
use crate::lock::Locking;
use crate::options::Options;
use crate::probe::Format;
use crate::resolve::{FileKind, FileRequest, Opened, Resolver};
use crate::storage::Storage;
use std::io;
use std::path::Path;
use std::sync::Arc;

/// Everything an engine may use while opening one image.
#[derive(Debug, Clone, Copy)]
pub struct OpenContext<'a> {
    /// The image's own path, for names relative to it (None for in-memory images).
    pub path: Option<&'a Path>,
    /// Whether the image is opened for writing.
    pub writable: bool,
    /// The gate for any other file the image names (VMDK extents).
    pub resolver: &'a dyn Resolver,
    /// Read images with damaged checksums where a format allows it (e.g. from a backup copy).
    pub lenient: bool,
    /// Open writable even when the space map found conflicts (`check -r`): the engine drops or
    /// ignores the conflicting entries and never writes through them.
    pub repair: bool,
    /// How the files the image names are locked ([`OpenContext::open_external`]).
    pub locking: Locking,
}

impl OpenContext<'_> {
    /// Open a file the image names (an extent), through the caller's resolver, and lock it as
    /// [`OpenContext::locking`] says (an extent is used as the image is: written when it is).
    pub fn open_external(&self, recorded: &str, kind: FileKind) -> Result<Opened> {
        let opened = self.resolver.open(&FileRequest {
            referrer: self.path,
            recorded,
            kind,
            writable: self.writable,
        })?;
        self.locking
            .apply(&*opened.storage, self.writable)
            .map_err(|e| e.with_file(&opened.path))?;
        Ok(opened)
    }
}

/// The parent of an image being created.
pub struct BackingSpec<'a> {
    /// The parent name to record in the child (as the user gave it).
    pub recorded: String,
    /// The parent's absolute host path, where known (for absolute locators).
    pub absolute: Option<&'a Path>,
    /// The opened parent chain (size, identity for linkage fields).
    pub image: &'a Image,
}

/// What to create.
pub struct CreateSpec<'a> {
    /// Virtual size in bytes.
    pub size: u64,
    /// Format options (`-o`); the engine takes the keys it knows and refuses the rest.
    pub options: Options,
    /// The parent, for a differencing image.
    pub backing: Option<BackingSpec<'a>>,
    /// Where the new image lives (names of extra files are relative to it).
    pub path: Option<&'a Path>,
    /// Creates the extra files a format needs (VMDK extents) beside the image.
    pub files: &'a dyn FileCreator,
}

/// Creates the additional files of a multi-file image.
pub trait FileCreator: Send + Sync {
    /// Create (or truncate) the file `name`, relative to the image being created.
    fn create_file(&self, name: &str) -> Result<Arc<dyn Storage>>;
}

/// A [`FileCreator`] for formats that need no extra files: every call is refused.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoExtraFiles;

impl FileCreator for NoExtraFiles {
    fn create_file(&self, name: &str) -> Result<Arc<dyn Storage>> {
        Err(Error::new(
            ErrorKind::ExternalFileDenied,
            format!("cannot create extra file '{name}' here"),
        ))
    }
}

/// Opens one image of a given format (the facade dispatches to the right [`Driver`]); used by
/// [`Image::open_chain`] for parents.
pub type LayerOpener<'a> = dyn Fn(Format, Arc<dyn Storage>, &OpenContext<'_>) -> Result<Box<dyn Layer>> + 'a;

/// One option a format's `create` takes (`-o name=value`), as `create -o help` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreateOption {
    /// The key.
    pub name: &'static str,
    /// What the value is: `size` (bytes, K/M/G/T suffixes), `bool` (on/off), `string` or
    /// `number`.
    pub kind: &'static str,
    /// The value used when the option is not given.
    pub default: &'static str,
    /// What it does, and the values it takes.
    pub help: &'static str,
}

/// A format engine.
pub trait Driver: Send + Sync {
    /// The format it handles.
    fn format(&self) -> Format;

    /// Whether `storage` holds an image of this format, from its content: the format's magic and
    /// the checks it needs to tell itself apart (see [`probe_with`](crate::probe_with), which
    /// asks the drivers in a fixed order, so a driver may assume the formats asked before it
    /// said no). `name`, the file's path when known, may only break ties. Cheap: a few reads
    /// at fixed offsets, nothing sized by the content. The default says no.
    fn probe(&self, storage: &dyn Storage, name: Option<&Path>) -> io::Result<bool> {
        let _ = (storage, name);
        Ok(false)
    }

    /// Open one image (one layer; the chain above it is assembled by [`Image::open_chain`]).
    fn open(&self, storage: Arc<dyn Storage>, ctx: &OpenContext<'_>) -> Result<Box<dyn Layer>>;

    /// Write a new image into `storage` (empty, freshly created) according to `spec`.
    fn create(&self, storage: &dyn Storage, spec: CreateSpec<'_>) -> Result<()>;

    /// The options [`Driver::create`] takes (the default: none).
    fn create_options(&self) -> &'static [CreateOption] {
        &[]
    }

    /// Bytes a new image created with `options` needs for `source` (`qemu-img measure`). The
    /// default refuses with [`ErrorKind::Unsupported`].
    fn measure(&self, options: &Options, source: &MeasureSource) -> Result<Measurement> {
        let _ = (options, source);
        Err(Error::unsupported(format!(
            "measuring the size of {} images is not supported",
            self.format()
        )))
    }
}

/// What a new image is measured for: a virtual size and the guest byte ranges that hold data
/// (sorted, not overlapping; empty for `measure --size`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeasureSource {
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// `(start, length)` of every guest range that holds data, in bytes.
    pub data: Vec<(u64, u64)>,
    /// Whether this describes an existing image (`measure SRC`) rather than a size alone.
    pub measured_image: bool,
}

impl MeasureSource {
    /// An empty disk of `virtual_size` bytes.
    pub fn empty(virtual_size: u64) -> Self {
        MeasureSource {
            virtual_size,
            data: Vec::new(),
            measured_image: false,
        }
    }

    /// How many aligned clusters of `cluster` bytes (a power of two or any positive size) hold
    /// some data.
    pub fn clusters(&self, cluster: u64) -> u64 {
        let cluster = cluster.max(1);
        let mut count = 0u64;
        let mut last: Option<u64> = None;
        for &(start, len) in &self.data {
            if len == 0 {
                continue;
            }
            let first = start / cluster;
            let end = (start.saturating_add(len) - 1) / cluster;
            let first = match last {
                Some(l) if l >= first => l + 1,
                _ => first,
            };
            if end >= first {
                count += end - first + 1;
            }
            last = Some(last.map_or(end, |l| l.max(end)));
        }
        count
    }

    /// Bytes that hold data.
    pub fn data_bytes(&self) -> u64 {
        self.data.iter().map(|&(_, l)| l).sum()
    }
}

/// How many bytes a new image needs, as `qemu-img measure` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measurement {
    /// Bytes needed for the given content.
    pub required: u64,
    /// Bytes needed once every block of the disk is written.
    pub fully_allocated: u64,
}
