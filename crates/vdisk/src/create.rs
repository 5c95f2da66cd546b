//! Creating images of any format.

use crate::{Format, Image, OpenOptions, driver, open};
use disk_core::files::{Overwrite, SiblingFiles, temp_beside};
use disk_core::lock::LockRequest;
use disk_core::{
    BackingSpec, CreateSpec, DenyExternal, Error, FileStorage, Locking, Options, Resolver, Result, Storage,
    recorded_to_path,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What [`create`] makes.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// The format.
    pub format: Format,
    /// Virtual size in bytes; `None` takes the backing file's size.
    pub size: Option<u64>,
    /// Format options (`-o`).
    pub options: Options,
    /// The parent name to record (relative names are relative to the new image's directory).
    pub backing: Option<String>,
    /// The parent's format (probed when `None`).
    pub backing_format: Option<Format>,
    /// The gate for the files the backing image names (its own parents and extents; the
    /// backing file itself is the caller's choice and always opened). Default: refuse them all
    /// ([`DenyExternal`]), as [`OpenOptions`] does; pass a [`disk_core::FsResolver`] to allow them.
    pub resolver: Arc<dyn Resolver>,
    /// How files are locked (see [`OpenOptions::locking`]): the backing image is opened
    /// read-only with it, the new image is locked for writing while it is written, and an image
    /// already at the path is only replaced if nobody uses it (as `qemu-img create` checks).
    pub locking: Locking,
}

impl CreateOptions {
    /// A standalone image of `format` and `size` bytes with default options.
    pub fn new(format: Format, size: u64) -> Self {
        CreateOptions {
            format,
            size: Some(size),
            options: Options::new(),
            backing: None,
            backing_format: None,
            resolver: Arc::new(DenyExternal),
            locking: Locking::Auto,
        }
    }

    /// Set [`CreateOptions::resolver`].
    pub fn resolver(mut self, resolver: Arc<dyn Resolver>) -> Self {
        self.resolver = resolver;
        self
    }
}

/// Create a new image at `path`, replacing any file there only once the new image is complete
/// (it is written to a temporary name and renamed), so a failed create leaves an existing file
/// untouched.
pub fn create(path: impl AsRef<Path>, options: &CreateOptions) -> Result<()> {
    let path = path.as_ref();
    if path.file_name().is_none() {
        return Err(Error::invalid_argument("the image path has no file name"));
    }

    let parent = match &options.backing {
        Some(recorded) => {
            let parent_path = recorded_to_path(recorded, Some(path))
                .ok_or_else(|| Error::invalid_argument(format!("backing file '{recorded}' is not a usable path")))?;
            let open_opts = OpenOptions::new()
                .format(options.backing_format)
                .resolver(options.resolver.clone())
                .locking(options.locking);
            let image = open(&parent_path, &open_opts)?;
            Some((
                recorded.clone(),
                parent_path.canonicalize().unwrap_or(parent_path),
                image,
            ))
        }
        None => None,
    };
    let size = match (options.size, &parent) {
        (Some(s), _) => s,
        (None, Some((_, _, image))) => disk_core::Disk::virtual_size(image),
        (None, None) => return Err(Error::invalid_argument("an image size is required")),
    };
    let backing = parent
        .as_ref()
        .map(|(recorded, absolute, image): &(String, PathBuf, Image)| BackingSpec {
            recorded: recorded.clone(),
            absolute: Some(absolute.as_path()),
            image,
        });

    let temp = temp_beside(path, "tmp");
    // A stale temporary file or an old extent at one of the names is replaced, never written
    // through (see `Overwrite::Replace`).
    let files = SiblingFiles::beside(path, Overwrite::Replace);
    // An image at the path stays locked (as being rewritten) until the new one replaces it.
    let _replaced = lock_replaced(path, options.locking)?;
    let result = (|| {
        let storage = disk_core::files::create(&temp, Overwrite::Replace)
            .map_err(|e| Error::io(e, "creating image").with_file(&temp))?;
        options.locking.apply(&storage, true)?;
        let spec = CreateSpec {
            size,
            options: options.options.clone(),
            backing,
            path: Some(path),
            files: &files,
        };
        driver(options.format)?.create(&storage, spec)?;
        std::fs::rename(&temp, path).map_err(|e| Error::io(e, "renaming the new image into place").with_file(path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
        files.remove_created();
    }
    result.map_err(|e| e.with_file(path))
}

/// Open the file at `path`, if there is one, and lock it as a file being replaced by a new
/// image (QEMU's `raw_co_create` takes write and resize and refuses to share resize), so that
/// creating over an image some process uses fails. `None` when there is no such file or locking
/// is off.
fn lock_replaced(path: &Path, locking: Locking) -> Result<Option<FileStorage>> {
    if locking == Locking::Off {
        return Ok(None);
    }
    // Only an existing regular file or block device is opened; a missing file needs no lock.
    let Ok(existing) = FileStorage::open(path, false) else {
        return Ok(None);
    };
    existing.lock(LockRequest::CREATE)?;
    Ok(Some(existing))
}
