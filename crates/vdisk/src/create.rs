//! Creating images of any format.

use crate::{Format, Image, OpenOptions, driver, open};
use disk_core::{
    BackingSpec, CreateSpec, DenyExternal, Error, FileCreator, FileStorage, Options, Resolver, Result, Storage,
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
        }
    }

    /// Set [`CreateOptions::resolver`].
    pub fn resolver(mut self, resolver: Arc<dyn Resolver>) -> Self {
        self.resolver = resolver;
        self
    }
}

/// Creates extra files (VMDK extents) beside the image being created.
struct SiblingFiles {
    dir: PathBuf,
    created: std::sync::Mutex<Vec<PathBuf>>,
}

impl FileCreator for SiblingFiles {
    fn create_file(&self, name: &str) -> Result<Arc<dyn Storage>> {
        if name.contains(['/', '\\']) || name == ".." || name.is_empty() {
            return Err(Error::invalid_argument(format!(
                "extra file name '{name}' must be a plain file name"
            )));
        }
        let path = self.dir.join(name);
        let storage = create_fresh(&path).map_err(|e| Error::io(e, "creating file").with_file(&path))?;
        self.created.lock().unwrap_or_else(|e| e.into_inner()).push(path);
        Ok(Arc::new(storage))
    }
}

/// Create a new, empty file at `path`, replacing whatever name was there (a stale temporary file,
/// an old extent) without writing through it: a symbolic link or hard link left at that name
/// (say, by another user of a shared directory) is unlinked, never followed, and the new file is
/// created exclusively, so a link raced in between makes the create fail instead.
fn create_fresh(path: &Path) -> std::io::Result<FileStorage> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    FileStorage::create(path, false)
}

/// The directory holding `path` (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A hidden temporary name beside `path` (`.NAME.vdisk-PURPOSE-PID`): renaming it over `path`
/// later is atomic because both are in one directory.
pub(crate) fn temp_beside(path: &Path, purpose: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    parent_dir(path).join(format!(".{name}.vdisk-{purpose}-{}", std::process::id()))
}

/// Create a new image at `path`, replacing any file there only once the new image is complete
/// (it is written to a temporary name and renamed), so a failed create leaves an existing file
/// untouched.
pub fn create(path: impl AsRef<Path>, options: &CreateOptions) -> Result<()> {
    let path = path.as_ref();
    let dir = parent_dir(path);
    if path.file_name().is_none() {
        return Err(Error::invalid_argument("the image path has no file name"));
    }

    let parent = match &options.backing {
        Some(recorded) => {
            let parent_path = recorded_to_path(recorded, Some(path))
                .ok_or_else(|| Error::invalid_argument(format!("backing file '{recorded}' is not a usable path")))?;
            let open_opts = OpenOptions::new()
                .format(options.backing_format)
                .resolver(options.resolver.clone());
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
    let files = SiblingFiles {
        dir: dir.clone(),
        created: Default::default(),
    };
    let result = (|| {
        let storage = create_fresh(&temp).map_err(|e| Error::io(e, "creating image").with_file(&temp))?;
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
        for extra in files.created.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = std::fs::remove_file(extra);
        }
    }
    result.map_err(|e| e.with_file(path))
}
