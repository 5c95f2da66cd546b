//! A chain of layers (an image and its parents) presented as one [`Disk`].

use crate::disk::{Allocation, BlockStatus, DiscardBehavior, Disk, SectorRange};
use crate::driver::{LayerOpener, OpenContext};
use crate::error::{Error, ErrorKind, Result};
use crate::layer::{Layer, LayerInfo, ParentRef};
use crate::lock::Locking;
use crate::mapping::{Run, WriteRun};
use crate::mover::{read_layer, write_layer};
use crate::probe::Format;
use crate::resolve::{DenyExternal, FileKind, FileRequest, Opened, Resolver};
use crate::storage::Storage;
use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use uuid::Uuid;

mod host_map;

pub use host_map::{ReadMapping, ReadSource, WriteMapping};

/// What to do when a parent cannot be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissingParent {
    /// Fail the open.
    #[default]
    Fail,
    /// Open anyway with a placeholder layer: metadata (`info`) works, reading a sector that
    /// would come from the parent fails with the reason the parent could not be opened.
    Placeholder,
}

/// How to open an image.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Open the named image for writing (parents are always opened read-only).
    pub writable: bool,
    /// The format, or `None` to probe.
    pub format: Option<Format>,
    /// The gate for parents and extents (default: refuse all).
    pub resolver: Arc<dyn Resolver>,
    /// The longest parent chain accepted (the named image counts as 1).
    pub max_chain_depth: usize,
    /// Check each parent's identity against what its child recorded.
    pub verify_parents: bool,
    /// What to do when a parent cannot be opened.
    pub missing_parent: MissingParent,
    /// Accept damaged checksums where the format has a way to read anyway.
    pub lenient: bool,
    /// Open writable despite space-map conflicts, for `check -r` (see [`OpenContext::repair`]).
    pub repair: bool,
    /// Accept a parent whose identity the child does not record (VMDK `parentCID=ffffffff`, a
    /// VHDX child without parent linkage; see [`Layer::parent_identity_recorded`]). Off by
    /// default: such a chain is refused with [`ErrorKind::ParentMismatch`], because any image
    /// the locator reaches would be accepted as the parent.
    pub trust_unlinked_parent: bool,
    /// Whether the image's files (the image, its parents, its extents) are locked as QEMU locks
    /// them, so that `vdisk` and QEMU see each other's use of an image (see [`crate::lock`]).
    /// Default [`Locking::Auto`]: a writable open refuses to share writing, a read-only open
    /// refuses to run beside a writer. The locks last as long as the opened image.
    pub locking: Locking,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            writable: false,
            format: None,
            resolver: Arc::new(DenyExternal),
            max_chain_depth: 64,
            verify_parents: true,
            missing_parent: MissingParent::Fail,
            lenient: false,
            repair: false,
            trust_unlinked_parent: false,
            locking: Locking::Auto,
        }
    }
}

impl OpenOptions {
    /// Read-only, probing, refusing external files.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set [`OpenOptions::writable`].
    pub fn writable(mut self, writable: bool) -> Self {
        self.writable = writable;
        self
    }

    /// Set [`OpenOptions::format`].
    pub fn format(mut self, format: Option<Format>) -> Self {
        self.format = format;
        self
    }

    /// Set [`OpenOptions::resolver`].
    pub fn resolver(mut self, resolver: Arc<dyn Resolver>) -> Self {
        self.resolver = resolver;
        self
    }

    /// Set [`OpenOptions::locking`].
    pub fn locking(mut self, locking: Locking) -> Self {
        self.locking = locking;
        self
    }

    /// The context an engine gets for an image at `path`.
    pub fn context<'a>(&'a self, path: Option<&'a Path>, writable: bool) -> OpenContext<'a> {
        OpenContext {
            path,
            writable,
            resolver: &*self.resolver,
            lenient: self.lenient,
            repair: self.repair,
            locking: self.locking,
        }
    }
}

/// One layer of a chain with the path it was opened from.
struct ChainLayer {
    layer: Box<dyn Layer>,
    path: Option<PathBuf>,
}

/// An image with its parents: the top layer first. Implements [`Disk`].
pub struct Image {
    layers: Vec<ChainLayer>,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.layers.iter().map(|l| (l.layer.format(), &l.path)))
            .finish()
    }
}

impl Image {
    /// An image of a single layer (no parent opened, even if the layer names one).
    pub fn single(layer: Box<dyn Layer>, path: Option<PathBuf>) -> Self {
        Image {
            layers: vec![ChainLayer { layer, path }],
        }
    }

    /// Open the parents of `top` (opened from `top_path`) as its records say, through the
    /// options' resolver, with depth and cycle limits and identity checks. `open_layer` opens
    /// one image of a given format (the facade dispatches to the right engine).
    pub fn open_chain(
        top: Box<dyn Layer>,
        top_path: Option<PathBuf>,
        options: &OpenOptions,
        open_layer: &LayerOpener<'_>,
    ) -> Result<Image> {
        let mut image = Image::single(top, top_path);
        let mut seen: Vec<PathBuf> = image.layers[0]
            .path
            .iter()
            .map(|p| p.canonicalize().unwrap_or(p.clone()))
            .collect();
        loop {
            let current = image.layers.last().expect("a chain has a top layer");
            let Some(parent_ref) = current.layer.parent().cloned() else {
                break;
            };
            let child_path = current.path.clone();
            let opened = Self::resolve_parent(
                &*options.resolver,
                child_path.as_deref(),
                &parent_ref,
                false,
                options.locking,
            )
            .and_then(|opened| {
                if image.layers.len() >= options.max_chain_depth {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        format!("backing chain is deeper than {} images", options.max_chain_depth),
                    ));
                }
                if seen.contains(&opened.path) {
                    return Err(Error::corrupt(format!(
                        "backing chain loops back to '{}'",
                        opened.path.display()
                    )));
                }
                let ctx = options.context(Some(&opened.path), false);
                let layer = open_layer(parent_ref.format, opened.storage.clone(), &ctx)
                    .map_err(|e| e.with_file(&opened.path))?;
                let child = &image.layers.last().expect("top").layer;
                if options.verify_parents {
                    if !child.parent_identity_recorded() && !options.trust_unlinked_parent {
                        return Err(Error::new(
                            ErrorKind::ParentMismatch,
                            "the image records no identity for its parent (so any file would be \
                             accepted as the parent); opening it needs an explicit opt-in",
                        ));
                    }
                    child
                        .verify_parent(&*layer)
                        .map_err(|e| rebase_hint(e, &*layer, &**child, &parent_ref, child_path.as_deref()))?;
                }
                if layer.sector_size() != child.sector_size() {
                    return Err(Error::unsupported(format!(
                        "parent has {}-byte sectors but the child has {}-byte sectors",
                        layer.sector_size(),
                        child.sector_size()
                    )));
                }
                Ok((layer, opened.path))
            });
            match opened {
                Ok((layer, path)) => {
                    seen.push(path.clone());
                    image.layers.push(ChainLayer {
                        layer,
                        path: Some(path),
                    });
                }
                Err(e) if options.missing_parent == MissingParent::Placeholder => {
                    let child = &image.layers.last().expect("top").layer;
                    let placeholder = MissingLayer {
                        format: parent_ref.format,
                        sector_size: child.sector_size(),
                        size: child.virtual_size(),
                        kind: e.kind(),
                        reason: crate::error::display_chain(&e),
                    };
                    image.layers.push(ChainLayer {
                        layer: Box::new(placeholder),
                        path: None,
                    });
                    break;
                }
                Err(e) => return Err(e.with_file(child_path.unwrap_or_default())),
            }
        }
        Ok(image)
    }

    /// Open the parent `parent` that the image at `child` records, through `resolver` (each
    /// locator in turn; a refusal stops the search), for writing when `writable` (commit), and
    /// lock the file opened as `locking` says.
    pub fn resolve_parent(
        resolver: &dyn Resolver,
        child: Option<&Path>,
        parent: &ParentRef,
        writable: bool,
        locking: Locking,
    ) -> Result<Opened> {
        let (locators, display) = (&parent.locators, &parent.display);
        let mut first_error = None;
        for recorded in locators {
            match resolver.open(&FileRequest {
                referrer: child,
                recorded,
                kind: FileKind::Parent,
                writable,
            }) {
                Ok(o) => {
                    locking.apply(&*o.storage, writable).map_err(|e| e.with_file(&o.path))?;
                    return Ok(o);
                }
                Err(e) if e.kind() == ErrorKind::ExternalFileDenied => return Err(e),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error
            .unwrap_or_else(|| Error::new(ErrorKind::NotFound, format!("parent '{display}' has no usable locator"))))
    }

    /// The top layer alone, for the operations that consume a handle ([`Layer::resize`],
    /// [`Layer::set_parent`]); the parents are closed.
    pub fn into_top(mut self) -> Box<dyn Layer> {
        self.layers.swap_remove(0).layer
    }

    /// The top layer (the image that was named).
    pub fn top(&self) -> &dyn Layer {
        &*self.layers[0].layer
    }

    /// Number of layers, including a placeholder for a missing parent.
    pub fn depth(&self) -> usize {
        self.layers.len()
    }

    /// Each layer with its path, top first.
    pub fn layers(&self) -> impl Iterator<Item = (&dyn Layer, Option<&Path>)> {
        self.layers.iter().map(|l| (&*l.layer, l.path.as_deref()))
    }

    /// Whether a parent could not be opened (a placeholder stands in for it).
    pub fn has_missing_parent(&self) -> bool {
        self.layers.iter().any(|l| l.layer.as_any().is::<MissingLayer>())
    }

    /// `info` for the top layer.
    pub fn info(&self) -> LayerInfo {
        self.top().info()
    }

    /// Name the top image's file in an error that names no file yet (a parent's errors already
    /// name the parent).
    fn named<T>(&self, result: Result<T>) -> Result<T> {
        match &self.layers[0].path {
            Some(path) => result.map_err(|e| e.with_file(path)),
            None => result,
        }
    }

    fn below_top(&self) -> Below<'_> {
        Below {
            layers: &self.layers[1..],
            sector_size: self.top().sector_size(),
            sectors: self.sector_count(),
        }
    }
}

impl Disk for Image {
    fn sector_size(&self) -> u32 {
        self.top().sector_size()
    }
    fn physical_sector_size(&self) -> u32 {
        self.top().physical_sector_size()
    }
    fn virtual_size(&self) -> u64 {
        self.top().virtual_size()
    }
    fn disk_id(&self) -> Option<Uuid> {
        self.top().disk_id()
    }
    fn is_read_only(&self) -> bool {
        self.top().is_read_only()
    }
    fn read(&self, lba: u64, buf: &mut [u8]) -> Result<()> {
        let range = SectorRange::for_buffer(self, lba, buf.len())?;
        if range.count == 0 {
            return Ok(());
        }
        self.named(read_layer(self.top(), lba, buf, &self.below_top()))
    }
    fn write(&self, lba: u64, buf: &[u8]) -> Result<()> {
        let range = SectorRange::for_buffer(self, lba, buf.len())?;
        if self.is_read_only() {
            return Err(Error::read_only());
        }
        if range.count == 0 {
            return Ok(());
        }
        self.named(write_layer(self.top(), lba, buf, &self.below_top()))
    }
    fn write_zeroes(&self, lba: u64, count: u64) -> Result<()> {
        SectorRange::check(self, lba, count)?;
        if self.is_read_only() {
            return Err(Error::read_only());
        }
        if count == 0 {
            return Ok(());
        }
        self.named(self.top().write_zeroes(lba, count, &self.below_top()))
    }
    fn discard(&self, lba: u64, count: u64) -> Result<()> {
        SectorRange::check(self, lba, count)?;
        if self.is_read_only() {
            return Err(Error::read_only());
        }
        if count == 0 {
            return Ok(());
        }
        self.named(self.top().discard(lba, count, &self.below_top()))
    }
    fn flush(&self) -> Result<()> {
        if self.is_read_only() {
            return Ok(());
        }
        self.named(self.top().flush())
    }
    fn discard_behavior(&self) -> DiscardBehavior {
        DiscardBehavior {
            reads_zeros: true,
            granularity: self.optimal_io_alignment(),
        }
    }
    fn optimal_io_alignment(&self) -> u64 {
        self.top()
            .allocation_unit()
            .unwrap_or(0)
            .max(u64::from(self.physical_sector_size()))
    }
    fn block_status(&self, lba: u64, count: u64) -> Result<BlockStatus> {
        SectorRange::check(self, lba, count)?;
        if count == 0 {
            return Err(Error::invalid_argument("block status of zero sectors"));
        }
        let all = Below {
            layers: &self.layers,
            sector_size: self.sector_size(),
            sectors: self.sector_count(),
        };
        self.named(all.block_status(lba, count))
    }
}

/// Add to a parent identity mismatch how to accept the parent as it is: another tool that
/// rewrites a parent's metadata (a new VMDK CID, VHDX DataWriteGuid or VHD unique id) without
/// changing what the child was made against leaves the child refusing it, and `vdisk rebase -u`
/// (which rewrites only the child's reference) records the parent's new identity.
fn rebase_hint(
    e: Error,
    parent: &dyn Layer,
    child: &dyn Layer,
    parent_ref: &ParentRef,
    child_path: Option<&Path>,
) -> Error {
    if e.kind() != ErrorKind::ParentMismatch || parent.format() != child.format() {
        return e;
    }
    let child_name = child_path
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "CHILD".into());
    e.with_advice(format!(
        "if the parent is unchanged in content (another tool rewrote only its metadata), run \
         `vdisk rebase -u -b {} {child_name}` to accept it",
        parent_ref.display
    ))
}

/// The layers below some layer, as one read-only disk the size of the layer above: sectors past
/// the end of the next layer (a child larger than its parent) read as zeros.
struct Below<'a> {
    layers: &'a [ChainLayer],
    sector_size: u32,
    sectors: u64,
}

impl Disk for Below<'_> {
    fn sector_size(&self) -> u32 {
        self.sector_size
    }
    fn virtual_size(&self) -> u64 {
        self.sectors * u64::from(self.sector_size)
    }
    fn is_read_only(&self) -> bool {
        true
    }
    fn read(&self, lba: u64, buf: &mut [u8]) -> Result<()> {
        let range = SectorRange::for_buffer(self, lba, buf.len())?;
        let Some((next, rest)) = self.layers.split_first() else {
            buf.fill(0);
            return Ok(());
        };
        let own = next.layer.virtual_size().div_ceil(u64::from(self.sector_size));
        let inside = own.saturating_sub(range.lba).min(range.count);
        let split = (inside * u64::from(self.sector_size)) as usize;
        let (head, tail) = buf.split_at_mut(split);
        if inside > 0 {
            let below = Below {
                layers: rest,
                sector_size: self.sector_size,
                sectors: own,
            };
            read_layer(&*next.layer, lba, head, &below).map_err(|e| match &next.path {
                Some(p) => e.with_file(p),
                None => e,
            })?;
        }
        tail.fill(0);
        Ok(())
    }
    fn write(&self, _lba: u64, _buf: &[u8]) -> Result<()> {
        Err(Error::read_only())
    }
    fn discard(&self, _lba: u64, _count: u64) -> Result<()> {
        Err(Error::read_only())
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn block_status(&self, lba: u64, count: u64) -> Result<BlockStatus> {
        let range = SectorRange::check(self, lba, count)?;
        let Some((next, rest)) = self.layers.split_first() else {
            return Ok(BlockStatus::new(range.count, Allocation::Unallocated));
        };
        let own = next.layer.virtual_size().div_ceil(u64::from(self.sector_size));
        if lba >= own {
            return Ok(BlockStatus::new(range.count, Allocation::Unallocated));
        }
        let status = next
            .layer
            .block_status(lba, range.count.min(own - lba))
            .map_err(|e| match &next.path {
                Some(p) => e.with_file(p),
                None => e,
            })?;
        if status.allocation != Allocation::Unallocated || rest.is_empty() {
            return Ok(status);
        }
        let below = Below {
            layers: rest,
            sector_size: self.sector_size,
            sectors: own,
        };
        let mut deeper = below.block_status(lba, status.sectors)?;
        deeper.depth += 1;
        Ok(deeper)
    }
}

/// Stands in for a parent that could not be opened: sizes and metadata work, reads fail.
struct MissingLayer {
    format: Format,
    sector_size: u32,
    size: u64,
    kind: ErrorKind,
    reason: String,
}

impl MissingLayer {
    fn error(&self) -> Error {
        Error::new(self.kind, format!("parent image is not available: {}", self.reason))
    }
}

impl Layer for MissingLayer {
    fn format(&self) -> Format {
        self.format
    }
    fn sector_size(&self) -> u32 {
        self.sector_size
    }
    fn virtual_size(&self) -> u64 {
        self.size
    }
    fn is_read_only(&self) -> bool {
        true
    }
    fn map(&self, _lba: u64, _count: u64) -> Result<Run> {
        Err(self.error())
    }
    fn map_for_write(&self, _lba: u64, _count: u64) -> Result<WriteRun<'_>> {
        Err(Error::read_only())
    }
    fn host_file(&self, _file: usize) -> Option<&Arc<dyn Storage>> {
        None
    }
    fn write_zeroes(&self, _lba: u64, _count: u64, _below: &dyn Disk) -> Result<()> {
        Err(Error::read_only())
    }
    fn discard(&self, _lba: u64, _count: u64, _below: &dyn Disk) -> Result<()> {
        Err(Error::read_only())
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn block_status(&self, _lba: u64, _count: u64) -> Result<BlockStatus> {
        Err(self.error())
    }
    fn info(&self) -> LayerInfo {
        LayerInfo::new(self.format, self.size)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}
