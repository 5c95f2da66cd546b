//! One image file (or one VMDK with its extents) as a layer of a chain.
//!
//! Format engines implement [`Layer`]. A layer answers for its own sectors and defers the rest
//! ([`Allocation::Unallocated`](crate::Allocation::Unallocated)) to the layers below it, which it
//! receives on every call as one read-only [`Disk`] (`below`): zeros for a standalone image, the
//! parent chain for a differencing one. [`Image`](crate::Image) stacks layers into a `Disk`.

use crate::disk::{BlockStatus, Disk};
use crate::error::Result;
use crate::mapping::{IoGate, Run, WriteRun};
use crate::probe::Format;
use crate::storage::Storage;
use std::any::Any;
use std::sync::Arc;
use uuid::Uuid;

/// A single image layer: one format engine's view of one image.
pub trait Layer: Send + Sync + Any {
    /// The image format.
    fn format(&self) -> Format;

    /// Logical sector size in bytes.
    fn sector_size(&self) -> u32;

    /// Physical sector size in bytes.
    fn physical_sector_size(&self) -> u32 {
        self.sector_size()
    }

    /// Guest-visible size in bytes.
    fn virtual_size(&self) -> u64;

    /// The disk's unique identifier, where the format records one.
    fn disk_id(&self) -> Option<Uuid> {
        None
    }

    /// Whether this layer refuses writes.
    fn is_read_only(&self) -> bool;

    /// Where the run of this layer's sectors starting at `lba` lives (at most `count` sectors,
    /// range validated). The I/O core reads the data; the engine only looks metadata up.
    fn map(&self, lba: u64, count: u64) -> Result<Run>;

    /// Where a write of up to `count` sectors from `lba` goes (range validated, layer writable):
    /// an allocated host range, or one the engine reserves now and publishes through the
    /// returned [`Completion`](crate::mapping::Completion) after the core wrote the data. No
    /// engine lock may be held when this returns.
    fn map_for_write(&self, lba: u64, count: u64) -> Result<WriteRun<'_>>;

    /// The layer's host file `file` (0 for single-file formats, one per extent for VMDK), as
    /// mappings name it.
    fn host_file(&self, file: usize) -> Option<&Arc<dyn Storage>>;

    /// The gate that keeps space from being reused under in-flight I/O, for engines that reuse
    /// freed space ([`IoGate`]).
    fn io_gate(&self) -> Option<&IoGate> {
        None
    }

    /// Read sectors the layer mapped as [`Mapping::Special`](crate::mapping::Mapping::Special).
    fn read_special(&self, lba: u64, buf: &mut [u8], below: &dyn Disk) -> Result<()> {
        let _ = (lba, buf, below);
        Err(crate::Error::corrupt(
            "the image mapped sectors to a special read it does not provide",
        ))
    }

    /// Write sectors the layer mapped as [`WriteTarget::Engine`](crate::mapping::WriteTarget).
    fn write_special(&self, lba: u64, buf: &[u8], below: &dyn Disk) -> Result<()> {
        let _ = (lba, buf, below);
        Err(crate::Error::unsupported("the image cannot write these sectors"))
    }

    /// Make sectors read as zeros (range validated). Engines that store zeros as data use
    /// [`write_zero_data`](crate::mover::write_zero_data).
    fn write_zeroes(&self, lba: u64, count: u64, below: &dyn Disk) -> Result<()>;

    /// Discard sectors (range validated): afterwards they read as zeros, never as `below`'s data.
    fn discard(&self, lba: u64, count: u64, below: &dyn Disk) -> Result<()>;

    /// Make completed writes durable.
    fn flush(&self) -> Result<()>;

    /// Status of the run starting at `lba` (at most `count` sectors, range validated):
    /// `Unallocated` means "ask the layers below".
    fn block_status(&self, lba: u64, count: u64) -> Result<BlockStatus>;

    /// The parent this layer records, if it is a differencing image.
    fn parent(&self) -> Option<&ParentRef> {
        None
    }

    /// Check that `parent` is the image this layer was made against (UUID, linkage GUID, CID).
    fn verify_parent(&self, parent: &dyn Layer) -> Result<()> {
        let _ = parent;
        Ok(())
    }

    /// Whether this (differencing) layer records an identity its parent must match. `false`
    /// for a VMDK with the wildcard `parentCID=ffffffff` or a VHDX without parent linkage:
    /// [`Image::open_chain`](crate::Image::open_chain) then refuses the parent unless the caller
    /// opted in ([`OpenOptions::trust_unlinked_parent`](crate::OpenOptions)).
    fn parent_identity_recorded(&self) -> bool {
        true
    }

    /// What `vdisk info` shows.
    fn info(&self) -> LayerInfo;

    /// The unit of allocation in bytes (block or grain size), if the format has one: the
    /// alignment that avoids partial allocations.
    fn allocation_unit(&self) -> Option<u64> {
        self.info().cluster_size
    }

    /// Verify metadata consistency, repairing what `repair` allows.
    fn check(&self, repair: Repair) -> Result<CheckReport> {
        let _ = repair;
        Ok(CheckReport::default())
    }

    /// Change the virtual size to `new_size` bytes (a whole number of sectors, different from
    /// the current size, checked by the caller against [`Layer::max_virtual_size`]), in place and
    /// crash-safely: a crash at any write leaves the image opening with its old size and old
    /// data, or its new size with all data of the common prefix. Data past a smaller new end is
    /// dropped (the caller decided that). The handle is consumed (so no view of the old size
    /// can be written through): reopen the image to use it. Formats made of several files (split VMDK) create new ones through `files`.
    /// The default refuses with [`ErrorKind::Unsupported`](crate::ErrorKind).
    fn resize(self: Box<Self>, new_size: u64, files: &dyn crate::FileCreator) -> Result<()> {
        let _ = (new_size, files);
        Err(crate::Error::unsupported(format!(
            "resizing {} images is not supported",
            self.format()
        )))
    }

    /// The largest virtual size this image can have (format and layout limits), if bounded.
    fn max_virtual_size(&self) -> Option<u64> {
        None
    }

    /// Whether this image may be resized on its own while it has a parent. Formats whose
    /// children must keep their parent's size return `false`, and a resize of such a child is
    /// refused; VHD and VMDK children may differ in size from their parents (sectors past the
    /// parent's end read as zeros).
    fn resizable_alone(&self) -> bool {
        true
    }

    /// Record a new parent (`rebase`), or none (`None`: the image becomes standalone, where the
    /// format can express that), updating the identity fields the format keeps (VHD parent
    /// UUID and timestamp, VHDX parent linkage, VMDK `parentCID`), durably. Data is not touched.
    /// The handle is consumed: reopen the image (with its new parent) to use it. The
    /// default refuses with [`ErrorKind::Unsupported`](crate::ErrorKind).
    fn set_parent(self: Box<Self>, parent: Option<&NewParent<'_>>) -> Result<()> {
        let _ = parent;
        Err(crate::Error::unsupported(format!(
            "changing the parent of {} images is not supported",
            self.format()
        )))
    }

    /// For engines that need their concrete type back (parent identity checks).
    fn as_any(&self) -> &dyn Any;
}

/// The parent [`Layer::set_parent`] records.
#[derive(Clone, Copy)]
pub struct NewParent<'a> {
    /// The name to record (relative to the child's directory, or absolute), as the user gave it.
    pub recorded: &'a str,
    /// The parent's absolute host path, where known (absolute locators, timestamps).
    pub absolute: Option<&'a std::path::Path>,
    /// The child's own path, where known (relative locators).
    pub child: Option<&'a std::path::Path>,
    /// The parent image's top layer (identity fields).
    pub layer: &'a dyn Layer,
}

impl std::fmt::Debug for NewParent<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewParent")
            .field("recorded", &self.recorded)
            .field("absolute", &self.absolute)
            .field("format", &self.layer.format())
            .finish()
    }
}

/// A reference from a differencing image to its parent, as recorded in the child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentRef {
    /// The parent's format (always the child's for VHD, VHDX and VMDK).
    pub format: Format,
    /// Recorded paths to try, best first (e.g. VHD W2ru relative, then W2ku absolute).
    pub locators: Vec<String>,
    /// The name to show as `backing-filename`.
    pub display: String,
}

/// A value in the format-specific part of `info` (a small JSON-like tree, so that library crates
/// need no serialisation dependency).
#[derive(Debug, Clone, PartialEq)]
pub enum InfoValue {
    /// Text.
    Str(String),
    /// An unsigned number.
    U64(u64),
    /// A flag.
    Bool(bool),
    /// A list.
    List(Vec<InfoValue>),
    /// Named values, in order.
    Map(Vec<(String, InfoValue)>),
}

impl From<&str> for InfoValue {
    fn from(s: &str) -> Self {
        InfoValue::Str(s.to_string())
    }
}
impl From<String> for InfoValue {
    fn from(s: String) -> Self {
        InfoValue::Str(s)
    }
}
impl From<u64> for InfoValue {
    fn from(n: u64) -> Self {
        InfoValue::U64(n)
    }
}
impl From<u32> for InfoValue {
    fn from(n: u32) -> Self {
        InfoValue::U64(n.into())
    }
}
impl From<bool> for InfoValue {
    fn from(b: bool) -> Self {
        InfoValue::Bool(b)
    }
}

/// What `info` reports for one layer; field names follow `qemu-img info`.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerInfo {
    /// The format.
    pub format: Format,
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
    /// Block or grain size; `None` for fixed and raw images.
    pub cluster_size: Option<u64>,
    /// The recorded parent name, if any.
    pub backing_filename: Option<String>,
    /// The parent's format, if any.
    pub backing_format: Option<Format>,
    /// Whether the image needs log replay (VHDX).
    pub dirty: Option<bool>,
    /// Format-specific details (`format-specific.data`).
    pub specific: Vec<(String, InfoValue)>,
}

impl LayerInfo {
    /// Info with only format and size set.
    pub fn new(format: Format, virtual_size: u64) -> Self {
        LayerInfo {
            format,
            virtual_size,
            cluster_size: None,
            backing_filename: None,
            backing_format: None,
            dirty: None,
            specific: Vec::new(),
        }
    }
}

/// What `check` may repair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Repair {
    /// Only report.
    #[default]
    None,
    /// Repair leaks (space allocated but unused).
    Leaks,
    /// Repair everything repairable.
    All,
}

/// The outcome of a metadata check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Problems that make data wrong or unreadable.
    pub corruptions: Findings,
    /// Space allocated but not referenced.
    pub leaks: Findings,
    /// Problems fixed by repair.
    pub repaired: Findings,
    /// Where the image's used data ends in the file, if known.
    pub image_end_offset: Option<u64>,
    /// Allocated blocks/grains, if the format has them.
    pub allocated_clusters: Option<u64>,
    /// Total blocks/grains the disk addresses, if the format has them.
    pub total_clusters: Option<u64>,
}

impl CheckReport {
    /// Whether nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.corruptions.count() == 0 && self.leaks.count() == 0
    }
}

/// How many messages a [`Findings`] list keeps; further ones are only counted.
pub const MAX_CHECK_DETAILS: usize = 1000;

/// A bounded list of check messages: the first [`MAX_CHECK_DETAILS`] in full and a count of
/// all, so that a hostile image with millions of bad entries costs constant memory. Reads as a
/// slice of the kept messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    details: Vec<String>,
    count: u64,
}

impl Findings {
    /// No findings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add one finding (kept in full while fewer than [`MAX_CHECK_DETAILS`] are).
    pub fn push(&mut self, message: impl Into<String>) {
        self.count = self.count.saturating_add(1);
        if self.details.len() < MAX_CHECK_DETAILS {
            self.details.push(message.into());
        }
    }

    /// Count `n` more findings whose messages the caller did not keep (its own source was
    /// bounded too).
    pub fn add_omitted(&mut self, n: u64) {
        self.count = self.count.saturating_add(n);
    }

    /// How many findings there are in all.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// How many findings have no kept message.
    pub fn omitted(&self) -> u64 {
        self.count.saturating_sub(self.details.len() as u64)
    }
}

impl std::ops::Deref for Findings {
    type Target = [String];
    fn deref(&self) -> &[String] {
        &self.details
    }
}

impl From<Vec<String>> for Findings {
    fn from(details: Vec<String>) -> Self {
        let mut f = Findings::new();
        for d in details {
            f.push(d);
        }
        f
    }
}

impl Extend<String> for Findings {
    fn extend<I: IntoIterator<Item = String>>(&mut self, iter: I) {
        for d in iter {
            self.push(d);
        }
    }
}
