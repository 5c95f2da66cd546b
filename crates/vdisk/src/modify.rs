//! Changing images in place: resize, commit, rebase, flatten, with files found and opened the
//! way [`open`] does.

use crate::{ConvertOptions, Disk, Format, Image, OpenOptions, convert, driver, open};
use disk_core::files::{Overwrite, SiblingFiles, parent_dir, temp_beside};
use disk_core::ops::{Moved, commit_data_above, rebase_data};
use disk_core::{Error, ErrorKind, FileStorage, Locking, NewParent, Options, Result, ResultExt, recorded_to_path};
use disk_resize::{ResizeOptions, Resized, SizeChange};
use std::path::Path;
use std::sync::Arc;

/// Change the virtual size of the image at `path` (only it: parents are not opened).
///
/// The file is opened writable once and its format probed once (unless
/// [`ResizeOptions::format`] names it); the engine opens it once, the request is checked on that
/// handle ([`disk_resize::plan`]: it only reads) and the layer is resized
/// ([`Layer::resize`](crate::Layer::resize), which consumes it). A refused request (shrinking
/// without [`ResizeOptions::shrink`], data past a smaller end, a zero size, a size past the
/// format's maximum, an engine that cannot resize) changes nothing. A VMDK whose descriptor is
/// a file of its own is resized through a copy of the descriptor, flushed and renamed over it,
/// so the switch is atomic however long the descriptor is (extents change in place, invisibly
/// to the old descriptor when growing).
///
/// After a shrink the image is reopened once: the space the dropped data left unused at the
/// end of the file is cut (what `check -r leaks` does), and extent files the shrink left out of
/// a multi-file image (split VMDK) are deleted (plain `*.vmdk` names in the image's directory
/// only), and only once the reopened image has shown not to use them: a file it still names
/// (under any spelling) is never deleted, and when it cannot be reopened nothing is deleted and
/// the error is returned.
pub fn resize(
    path: impl AsRef<Path>,
    change: SizeChange,
    options: &ResizeOptions,
    open: &OpenOptions,
) -> Result<Resized> {
    let path = path.as_ref();
    let storage = crate::open_file(path, true, open.locking)?;
    let format = match options.format {
        Some(f) => f,
        None => crate::probe(&storage, Some(path))
            .map_err(|e| Error::io(e, "probing the image format"))
            .with_file(path)?,
    };
    let options = ResizeOptions {
        format: Some(format),
        ..*options
    };
    let engine = driver(format).with_file(path)?;
    let (resized, before) = if format == Format::Vmdk && own_descriptor(&storage) {
        // The descriptor stays open (and locked) while its copy is changed and renamed over it.
        let done = through_copy(path, |temp| {
            let copy = crate::open_file(temp, true, open.locking)?;
            resize_opened(Arc::new(copy), temp, engine, change, &options, open)
        })?;
        drop(storage);
        done
    } else {
        resize_opened(Arc::new(storage), path, engine, change, &options, open)?
    };
    if resized.new_size < resized.old_size {
        after_shrink(path, resized.format, &before, open)?;
    }
    Ok(resized)
}

/// Open the image in `storage` (the file at `at`) writable with `engine`, check the request on
/// that handle and resize it (the layer is consumed). Also returns, for a shrink, the extent
/// files it named before.
fn resize_opened(
    storage: Arc<FileStorage>,
    at: &Path,
    engine: &dyn crate::disk_core::Driver,
    change: SizeChange,
    options: &ResizeOptions,
    open: &OpenOptions,
) -> Result<(Resized, Vec<String>)> {
    let layer = engine.open(storage, &open.context(Some(at), true)).with_file(at)?;
    let planned = disk_resize::plan(&*layer, layer.parent().is_some(), change, options).with_file(at)?;
    let before = if planned.new_size < planned.old_size {
        extent_names(&layer.info())
    } else {
        Vec::new()
    };
    if planned.new_size != planned.old_size {
        layer
            .resize(planned.new_size, &SiblingFiles::beside(at, Overwrite::Never))
            .with_file(at)?;
    }
    Ok((planned, before))
}

/// After a shrink: reopen the image once, cut the space the dropped data left unused at the end
/// of the file (so that shrinking gives the space back), then delete the extent files of
/// `before` it no longer names.
fn after_shrink(path: &Path, format: Format, before: &[String], open: &OpenOptions) -> Result<()> {
    let image = open_single(path, Some(format), true, open).map_err(|e| {
        if before.is_empty() {
            return e;
        }
        Error::new(
            e.kind(),
            format!(
                "the image was resized but cannot be reopened, so no extent file was deleted: {}",
                e.message()
            ),
        )
        .with_file(path)
    })?;
    image.top().check(crate::Repair::Leaks).with_file(path)?;
    image.top().flush().with_file(path)?;
    if before.is_empty() {
        return Ok(());
    }
    let after = extent_names(&image.info());
    drop(image);
    let canonical = |f: &str| recorded_to_path(f, Some(path)).and_then(|p| p.canonicalize().ok());
    let mut kept: Vec<_> = after.iter().filter_map(|f| canonical(f)).collect();
    kept.extend(path.canonicalize().ok());
    // Only plain `*.vmdk` names beside the image: a descriptor naming other host files never
    // gets them deleted.
    let plain = |f: &&String| !f.contains(['/', '\\', ':']) && f.ends_with(".vmdk") && !f.starts_with('.');
    for dropped in before.iter().filter(|f| !after.contains(f)).filter(plain) {
        if let Some(p) = canonical(dropped)
            && !kept.contains(&p)
        {
            let _ = std::fs::remove_file(p);
        }
    }
    Ok(())
}

/// Whether the file in `storage` is a VMDK text descriptor (its extents are other files), not a
/// sparse extent with its descriptor inside; the format is known to be VMDK.
fn own_descriptor(storage: &FileStorage) -> bool {
    let mut magic = [0u8; 4];
    disk_core::Storage::read_at(storage, &mut magic, 0).is_ok() && &magic != b"KDMV" && &magic != b"COWD"
}

/// Whether `path` is a VMDK text descriptor (its extents are other files).
fn is_descriptor_file(path: &Path, format: Option<Format>) -> bool {
    if format.is_some_and(|f| f != Format::Vmdk) {
        return false;
    }
    let Ok(storage) = FileStorage::open(path, false) else {
        return false;
    };
    let probed = format.map_or_else(|| crate::probe(&storage, Some(path)).ok(), Some);
    probed == Some(Format::Vmdk) && own_descriptor(&storage)
}

/// Run `change` on a copy of the file at `path` beside it, then flush the copy and rename it
/// over `path`. On failure the copy is removed and `path` is untouched.
fn through_copy<T>(path: &Path, change: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let dir = parent_dir(path);
    let temp = temp_beside(path, "update");
    std::fs::copy(path, &temp).map_err(|e| Error::io(e, "copying the descriptor").with_file(&temp))?;
    let result = (|| {
        let out = change(&temp)?;
        FileStorage::open(&temp, true)
            .and_then(|s| s.file().sync_all())
            .map_err(|e| Error::io(e, "flushing the new descriptor").with_file(&temp))?;
        std::fs::rename(&temp, path)
            .map_err(|e| Error::io(e, "renaming the new descriptor into place").with_file(path))?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(out)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result.map_err(|e: Error| {
        if e.context().file.as_deref() == Some(temp.as_path()) {
            strip_temp(e, path)
        } else {
            e
        }
    })
}

/// An error about the temporary copy, reported against the image.
fn strip_temp(e: Error, path: &Path) -> Error {
    let mut text = e.message().to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        text = format!("{text}: {c}");
        cause = c.source();
    }
    Error::new(e.kind(), text).with_file(path)
}

/// The extent file names in an image's `info` (none for single-file formats).
fn extent_names(info: &crate::LayerInfo) -> Vec<String> {
    let mut out = Vec::new();
    for (key, value) in &info.specific {
        if key != "extents" {
            continue;
        }
        if let crate::InfoValue::List(items) = value {
            for item in items {
                if let crate::InfoValue::Map(fields) = item {
                    for (k, v) in fields {
                        if let (true, crate::InfoValue::Str(name)) = (k == "filename", v) {
                            out.push(name.clone());
                        }
                    }
                }
            }
        }
    }
    out
}

/// Open only the image at `path` (no parents), writable or not.
fn open_single(path: &Path, format: Option<Format>, writable: bool, options: &OpenOptions) -> Result<Image> {
    let storage = crate::open_file(path, writable, options.locking)?;
    let format = match format {
        Some(f) => f,
        None => crate::probe(&storage, Some(path))
            .map_err(|e| Error::io(e, "probing the image format"))
            .with_file(path)?,
    };
    let layer = driver(format)?
        .open(Arc::new(storage), &options.context(Some(path), writable))
        .with_file(path)?;
    Ok(Image::single(layer, Some(path.to_path_buf())))
}

/// Create options that give a new single-file image the layout of `top` (block size, sector
/// sizes); multi-file and stream VMDK images are refused (`what` says what was attempted).
fn same_layout(top: &dyn crate::Layer, what: &str) -> Result<Options> {
    let mut out = Options::new();
    let cluster = top.info().cluster_size;
    match top.format() {
        Format::Vhd => {
            if let Some(bs) = cluster {
                out.set("block_size", &bs.to_string());
            }
        }
        Format::Vhdx => {
            if let Some(bs) = cluster {
                out.set("block_size", &bs.to_string());
            }
            out.set("logical_sector_size", &top.sector_size().to_string());
            out.set("physical_sector_size", &top.physical_sector_size().to_string());
        }
        Format::Vmdk => {
            let single = top
                .as_any()
                .downcast_ref::<crate::vmdk::VmdkLayer>()
                .is_some_and(|v| v.create_type() == "monolithicSparse");
            if !single {
                return Err(Error::unsupported(format!(
                    "only monolithicSparse VMDK images can be {what} (convert the others)"
                )));
            }
        }
        other => return Err(Error::unsupported(format!("{other} images cannot be {what}"))),
    }
    Ok(out)
}

fn with_format(options: &OpenOptions, format: Option<Format>, writable: bool) -> OpenOptions {
    let mut o = options.clone();
    o.format = format;
    o.writable = writable;
    o
}

/// Merge the data of the image at `path` into its parent (`qemu-img commit`). The parent is
/// written and flushed first (grown first if it is smaller); the child is left as it was, still
/// reading the same, and only its record of the parent's identity is refreshed where the format
/// ties it to the parent's content (VMDK `parentCID`). `options` gives the resolver and the
/// child's format.
pub fn commit(path: impl AsRef<Path>, options: &OpenOptions) -> Result<Moved> {
    commit_then(path, options, AfterCommit::Keep)
}

/// What happens to the child once its data is in the parent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AfterCommit {
    /// Keep it as it is (it reads the same as before).
    #[default]
    Keep,
    /// Replace it by an empty child of the parent (same format, size and block size), written
    /// beside it and renamed over it: `qemu-img commit`'s default.
    Empty,
    /// Delete it.
    Remove,
}

/// [`commit`], then do `after` with the child.
pub fn commit_then(path: impl AsRef<Path>, options: &OpenOptions, after: AfterCommit) -> Result<Moved> {
    commit_with_progress(path, options, after, &mut |_, _| {})
}

/// [`commit_then`], calling `progress` with (bytes done, bytes in all) while data is copied.
pub fn commit_with_progress(
    path: impl AsRef<Path>,
    options: &OpenOptions,
    after: AfterCommit,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Moved> {
    commit_into(path, None, options, after, progress)
}

/// [`commit_with_progress`] into `base`, an image of the child's backing chain (qemu-img
/// commit's `-b`; `None`: the parent). With a base below the parent, the data of every layer
/// above it goes into it; the layers in between are left as they are, and no longer read as
/// they did (as with qemu-img), while the child does.
pub fn commit_into(
    path: impl AsRef<Path>,
    base: Option<&Path>,
    options: &OpenOptions,
    after: AfterCommit,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Moved> {
    let path = path.as_ref();
    let moved = commit_data_into_parent(path, base, options, progress)?;
    match after {
        AfterCommit::Keep => {}
        AfterCommit::Remove => {
            std::fs::remove_file(path).map_err(|e| Error::io(e, "removing the committed image").with_file(path))?;
        }
        AfterCommit::Empty => empty_child(path, options)?,
    }
    Ok(moved)
}

/// Replace the child at `path` by an empty one on the same parent.
fn empty_child(path: &Path, options: &OpenOptions) -> Result<()> {
    let child = open(path, &with_format(options, options.format, false))?;
    let top = child.top();
    let format = top.format();
    let (_, parent_path) = child.layers().nth(1).ok_or_else(|| Error::corrupt("no parent layer"))?;
    let parent_path = parent_path.ok_or_else(|| Error::unsupported("the parent is not a file"))?;
    let parent_format = child.layers().nth(1).map(|(l, _)| l.format());
    let same_dir = path
        .parent()
        .and_then(|d| d.canonicalize().ok())
        .zip(parent_path.parent())
        .is_some_and(|(a, b)| a == b);
    let recorded = if same_dir {
        parent_path.file_name().map(|n| n.to_string_lossy().into_owned())
    } else {
        None
    }
    .unwrap_or_else(|| parent_path.to_string_lossy().into_owned());
    let mut create = crate::CreateOptions::new(format, child.virtual_size());
    create.backing = Some(recorded);
    create.backing_format = parent_format;
    create.resolver = options.resolver.clone();
    create.options = same_layout(top, "emptied in place").with_file(path)?;
    drop(child);
    crate::create(path, &create)
}

fn commit_data_into_parent(
    path: &Path,
    base: Option<&Path>,
    options: &OpenOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Moved> {
    // The layer written (`depth` in the chain), the one above it (which records it) and how.
    let (depth, above_path, above_format, parent_path, parent_format, child_size, parent_ref) = {
        let child = open(path, &with_format(options, options.format, false))?;
        if child.top().parent().is_none() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "cannot commit: the image has no backing file",
            )
            .with_file(path));
        }
        let depth = match base {
            None => 1,
            Some(base) => {
                let want = base
                    .canonicalize()
                    .map_err(|e| Error::io(e, "cannot find the base").with_file(base))?;
                child
                    .layers()
                    .position(|(_, p)| p.and_then(|p| p.canonicalize().ok()).as_deref() == Some(want.as_path()))
                    .filter(|&d| d > 0)
                    .ok_or_else(|| {
                        Error::invalid_argument(format!(
                            "'{}' is not in the backing chain of the image",
                            base.display()
                        ))
                        .with_file(path)
                    })?
            }
        };
        let (above, above_path) = child
            .layers()
            .nth(depth - 1)
            .ok_or_else(|| Error::corrupt("no layer above"))?;
        let parent_ref = above
            .parent()
            .cloned()
            .ok_or_else(|| Error::corrupt("no parent recorded"))?;
        let above_path = above_path
            .ok_or_else(|| Error::unsupported("cannot commit through an image that is not a file"))?
            .to_path_buf();
        let (layer, parent_path) = child
            .layers()
            .nth(depth)
            .ok_or_else(|| Error::corrupt("no parent layer"))?;
        let parent_path = parent_path
            .ok_or_else(|| Error::unsupported("cannot commit into a parent that is not a file"))?
            .to_path_buf();
        let above_format = above.format();
        (
            depth,
            above_path,
            above_format,
            parent_path,
            layer.format(),
            child.virtual_size(),
            parent_ref,
        )
    };
    let parent_opts = with_format(options, Some(parent_format), true);
    {
        let parent = open_single(&parent_path, Some(parent_format), false, options)?;
        if parent.virtual_size() < child_size {
            drop(parent);
            resize(
                &parent_path,
                SizeChange::To(child_size),
                &ResizeOptions {
                    format: Some(parent_format),
                    ..ResizeOptions::default()
                },
                options,
            )?;
        }
    }
    let moved = {
        // The child's file is locked for reading on its own; the chain read through it shares
        // every permission, so that its view of the parent coexists with the writer below.
        let _child_lock = crate::open_file(path, false, options.locking)?;
        let mut reading = with_format(options, options.format, false);
        if reading.locking == Locking::Auto {
            reading.locking = Locking::ForceShare;
        }
        let child = open(path, &reading)?;
        // The parent is opened for writing through the resolver again (its policy checks the
        // opened file itself), never by the path found earlier, which could have been swapped.
        let opened = Image::resolve_parent(
            &*options.resolver,
            Some(&above_path),
            &parent_ref,
            true,
            options.locking,
        )
        .with_file(&above_path)?;
        if opened.path != parent_path {
            return Err(Error::new(
                ErrorKind::ParentMismatch,
                "the parent changed while committing; nothing was written",
            )
            .with_file(path));
        }
        let parent = crate::open_storage(opened.storage, Some(&opened.path), &parent_opts).with_file(&parent_path)?;
        commit_data_above(&child, depth, &parent, progress).with_file(&parent_path)?
    };
    // The image above the one written still reads the same (the child, or with a deeper base
    // the layer the child's data went through); refresh its record of it where that changed.
    let above = open_single(&above_path, Some(above_format), false, options)?;
    let parent = open_single(&parent_path, Some(parent_format), false, options)?;
    if above.top().verify_parent(parent.top()).is_err() {
        drop(above);
        let above = open_single(&above_path, Some(above_format), true, options)?;
        above
            .into_top()
            .set_parent(Some(&NewParent {
                recorded: &parent_ref.display,
                absolute: Some(&parent_path),
                child: Some(&above_path),
                layer: parent.top(),
            }))
            .with_file(&above_path)?;
    }
    Ok(moved)
}

/// Point the image at `path` at another parent (`qemu-img rebase`). `backing` is the name to
/// record (relative to the image's directory; `None`: no parent). Safe mode (`unsafe_mode`
/// false) first copies into the child whatever differs between the old and the new parent, so
/// the guest view does not change; unsafe mode only rewrites the reference and identity fields.
pub fn rebase(
    path: impl AsRef<Path>,
    backing: Option<&str>,
    backing_format: Option<Format>,
    unsafe_mode: bool,
    options: &OpenOptions,
) -> Result<Moved> {
    rebase_with_progress(path, backing, backing_format, unsafe_mode, options, &mut |_, _| {})
}

/// [`rebase`], calling `progress` with (bytes done, bytes in all) while data is copied.
pub fn rebase_with_progress(
    path: impl AsRef<Path>,
    backing: Option<&str>,
    backing_format: Option<Format>,
    unsafe_mode: bool,
    options: &OpenOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Moved> {
    let path = path.as_ref();
    let backing = backing.filter(|b| !b.is_empty());
    let new_parent = match backing {
        Some(recorded) => {
            let p = recorded_to_path(recorded, Some(path))
                .ok_or_else(|| Error::invalid_argument(format!("backing file '{recorded}' is not a usable path")))?;
            let image = open(&p, &with_format(options, backing_format, false))?;
            let me = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
            if image
                .layers()
                .any(|(_, lp)| lp.is_some_and(|lp| lp.canonicalize().ok().as_deref() == Some(&me)))
            {
                return Err(Error::invalid_argument(format!(
                    "'{recorded}' is (or is based on) the image itself: the chain would loop"
                ))
                .with_file(path));
            }
            Some((recorded, p.canonicalize().unwrap_or(p), image))
        }
        None => None,
    };
    let format = open_single(path, options.format, false, options)?.top().format();
    if format == Format::Raw {
        return Err(Error::invalid_argument("cannot rebase: raw images have no backing file").with_file(path));
    }
    if let Some((_, _, image)) = &new_parent
        && image.top().format() != format
    {
        return Err(Error::unsupported(format!(
            "a {format} image needs a {format} parent, not {}",
            image.top().format()
        ))
        .with_file(path));
    }
    let mut moved = Moved::default();
    if !unsafe_mode {
        if new_parent.is_none() && format != Format::Vmdk {
            // VHD and VHDX children cannot drop their parent in place: make a standalone copy.
            flatten(path, options)?;
            return Ok(moved);
        }
        let child = open(path, &with_format(options, Some(format), true))?;
        moved = rebase_data(&child, new_parent.as_ref().map(|(_, _, i)| i as &dyn Disk), progress).with_file(path)?;
    }
    let record = new_parent.as_ref().map(|(recorded, absolute, image)| NewParent {
        recorded,
        absolute: Some(absolute.as_path()),
        child: Some(path),
        layer: image.top(),
    });
    let set = |at: &Path| -> Result<()> {
        let child = open_single(at, Some(format), true, options)?;
        child.into_top().set_parent(record.as_ref())
    };
    if is_descriptor_file(path, Some(format)) {
        // A descriptor of its own: rewritten in a copy renamed over it (atomic).
        through_copy(path, |temp| set(temp))?;
    } else {
        set(path).with_file(path)?;
    }
    Ok(moved)
}

/// Turn the image at `path` into a standalone image holding its whole chain's data, in place
/// and safely: a complete copy is written to a temporary file beside it, flushed, and renamed
/// over it. Single-file images only (VHD, monolithicSparse VMDK); standalone images are left as
/// they are.
pub fn flatten(path: impl AsRef<Path>, options: &OpenOptions) -> Result<()> {
    let path = path.as_ref();
    let image = open(path, &with_format(options, options.format, false))?;
    let top = image.top();
    if top.parent().is_none() {
        return Ok(());
    }
    let format = top.format();
    let out = same_layout(top, "flattened in place").with_file(path)?;
    let dir = parent_dir(path);
    let temp = temp_beside(path, "flatten");
    let result = (|| {
        convert(
            &image,
            &temp,
            ConvertOptions {
                options: out,
                ..ConvertOptions::new(format)
            },
        )?;
        FileStorage::open(&temp, true)
            .and_then(|s| s.file().sync_all())
            .map_err(|e| Error::io(e, "flushing the flattened copy").with_file(&temp))?;
        drop(image);
        std::fs::rename(&temp, path)
            .map_err(|e| Error::io(e, "renaming the flattened copy into place").with_file(path))?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}
