//! Changing an image's virtual size: the checks every format shares, then the engine's
//! [`Layer::resize`].

use crate::SizeChange;
use disk_core::{Allocation, Driver, Error, FileCreator, Format, Layer, OpenOptions, Result, Storage};
use std::path::Path;
use std::sync::Arc;

/// How a resize may change an image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResizeOptions {
    /// Allow the new size to be smaller than the current one.
    pub shrink: bool,
    /// When shrinking, allow dropping data stored past the new end (otherwise refused: see
    /// [`smallest_safe_size`]). Raw images have no allocation map: shrinking one always drops
    /// what lies past the new end, as `qemu-img resize --shrink` does.
    pub allow_data_loss: bool,
    /// The image format; `None` probes it from the content (`vdisk::resize`; the functions
    /// here are given an engine).
    pub format: Option<Format>,
}

/// What a resize did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resized {
    /// The image's format.
    pub format: Format,
    /// Virtual size before, in bytes.
    pub old_size: u64,
    /// Virtual size after, in bytes.
    pub new_size: u64,
    /// Set when a shrink cut off stored data (allowed by
    /// [`allow_data_loss`](ResizeOptions::allow_data_loss), or a raw image): the smallest size
    /// that would have kept it all ([`smallest_safe_size`]).
    pub data_cut: Option<u64>,
}

/// The smallest virtual size that keeps every sector this image stores data for (Windows'
/// `SmallestSafeVirtualSize`): the end of the last run of stored data, in bytes. Sectors that
/// only fall through to a parent or read as zeros do not count.
pub fn smallest_safe_size(layer: &dyn Layer) -> Result<u64> {
    let ss = u64::from(layer.sector_size());
    let sectors = layer.virtual_size().div_ceil(ss);
    let mut lba = 0;
    let mut end = 0;
    while lba < sectors {
        let status = layer.block_status(lba, sectors - lba)?;
        let n = status.sectors.clamp(1, sectors - lba);
        if status.allocation == Allocation::Data {
            end = lba + n;
        }
        lba += n;
    }
    Ok((end * ss).min(layer.virtual_size()))
}

/// Check a resize of `layer` without changing anything; the outcome it would have.
pub fn plan(layer: &dyn Layer, has_parent: bool, change: SizeChange, options: &ResizeOptions) -> Result<Resized> {
    let format = layer.format();
    let old_size = layer.virtual_size();
    let new_size = change.apply(old_size)?;
    if new_size == 0 {
        return Err(Error::invalid_argument("the new image size must be positive"));
    }
    let ss = u64::from(layer.sector_size());
    if format != Format::Raw && !new_size.is_multiple_of(ss) {
        return Err(Error::invalid_argument(format!(
            "the new size of {new_size} bytes is not a whole number of {ss}-byte sectors"
        )));
    }
    if let Some(max) = layer.max_virtual_size()
        && new_size > max
    {
        return Err(Error::invalid_argument(format!(
            "{new_size} bytes exceeds the largest size this {format} image can have ({max} bytes)"
        )));
    }
    if has_parent && !layer.resizable_alone() {
        return Err(Error::unsupported(format!(
            "a {format} differencing image cannot be resized separately from its parent"
        )));
    }
    let mut data_cut = None;
    if new_size < old_size {
        if !options.shrink {
            return Err(Error::invalid_argument(format!(
                "shrinking from {old_size} to {new_size} bytes deletes the data past the new end; use --shrink to do it"
            )));
        }
        let safe = smallest_safe_size(layer)?;
        if safe > new_size {
            if format != Format::Raw && !options.allow_data_loss {
                return Err(Error::invalid_argument(format!(
                    "the image holds data up to byte {safe}, past the new end at {new_size}; \
                     the smallest safe size is {safe} bytes (allow data loss to shrink anyway)"
                )));
            }
            data_cut = Some(safe);
        }
    }
    Ok(Resized {
        format,
        old_size,
        new_size,
        data_cut,
    })
}

/// Resize one opened, writable layer (its parents, if any, are not needed): [`plan`] on it, then
/// its [`Layer::resize`], which consumes it. New files a multi-file format needs (split VMDK
/// extents) are made through `files`. A refused request changes nothing.
pub fn resize_layer(
    layer: Box<dyn Layer>,
    change: SizeChange,
    options: &ResizeOptions,
    files: &dyn FileCreator,
) -> Result<Resized> {
    if layer.is_read_only() {
        return Err(Error::read_only());
    }
    let planned = plan(&*layer, layer.parent().is_some(), change, options)?;
    if planned.new_size != planned.old_size {
        layer.resize(planned.new_size, files)?;
    }
    Ok(planned)
}

/// Resize the image in `storage` with `driver`: opened writable once, checked on that handle
/// ([`plan`] only reads), then resized. `open` supplies the resolver for extent files.
pub fn resize_storage(
    storage: Arc<dyn Storage>,
    driver: &dyn Driver,
    path: Option<&Path>,
    open: &OpenOptions,
    change: SizeChange,
    options: &ResizeOptions,
    files: &dyn FileCreator,
) -> Result<Resized> {
    let layer = driver.open(storage, &open.context(path, true))?;
    resize_layer(layer, change, options, files)
}
