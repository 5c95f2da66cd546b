//! The gate through which an image may open other files (parents, extents).
//!
//! A hostile image can name any path: a VMDK flat extent pointing at `/etc/shadow` or a block
//! device would otherwise let whoever converts the image read host files (OpenStack
//! CVE-2024-32498). So engines never open files themselves: they ask a [`Resolver`] the caller
//! chose. The library default, [`DenyExternal`], refuses everything.

use crate::error::{Error, ErrorKind, Result};
use crate::storage::{FileStorage, MemStorage, Storage};
use std::collections::HashMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Why an image wants another file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// The parent of a differencing image.
    Parent,
    /// A VMDK extent file.
    Extent,
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::Parent => "parent",
            FileKind::Extent => "extent",
        })
    }
}

/// A request to open a file that an image names.
#[derive(Debug, Clone, Copy)]
pub struct FileRequest<'a> {
    /// The image that names the file (relative names are relative to its directory).
    pub referrer: Option<&'a Path>,
    /// The name exactly as recorded in the image.
    pub recorded: &'a str,
    /// Parent or extent.
    pub kind: FileKind,
    /// Whether the file must be opened for writing.
    pub writable: bool,
}

/// A file the resolver opened.
#[derive(Debug, Clone)]
pub struct Opened {
    /// Its contents.
    pub storage: Arc<dyn Storage>,
    /// Its path (canonical for host files), used for cycle detection and relative names.
    pub path: PathBuf,
}

/// Decides whether, and how, files named inside an image are opened.
pub trait Resolver: Send + Sync + fmt::Debug {
    /// Open the requested file or refuse with [`ErrorKind::ExternalFileDenied`] /
    /// [`ErrorKind::NotFound`].
    fn open(&self, request: &FileRequest<'_>) -> Result<Opened>;
}

/// Refuses every external file: the safe default for untrusted images.
#[derive(Debug, Clone, Copy, Default)]
pub struct DenyExternal;

impl Resolver for DenyExternal {
    fn open(&self, request: &FileRequest<'_>) -> Result<Opened> {
        Err(Error::new(
            ErrorKind::ExternalFileDenied,
            format!(
                "image refers to {} file '{}'; opening other files is not allowed by the caller's policy",
                request.kind, request.recorded
            ),
        ))
    }
}

/// Which host files a [`FsResolver`] may open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsPolicy {
    /// Only regular files inside the referring image's directory (or below it), named by a
    /// relative path without `..`; symlinks leading out are refused.
    SameDirectory,
    /// Any path the image names, relative (to the image's directory) or absolute, including
    /// block devices: what `qemu-img` does for a person's own images.
    Any,
}

/// Opens external files from the host file system under a [`FsPolicy`].
#[derive(Debug, Clone, Copy)]
pub struct FsResolver {
    /// The policy.
    pub policy: FsPolicy,
    /// Whether flushes of the files it opens reach stable storage (see
    /// [`FileStorage::without_sync`]).
    pub durable: bool,
}

impl FsResolver {
    /// A resolver with `policy` whose files flush durably.
    pub fn new(policy: FsPolicy) -> Self {
        FsResolver { policy, durable: true }
    }

    /// The same resolver, opening files whose flushes are no-ops.
    pub fn without_sync(mut self) -> Self {
        self.durable = false;
        self
    }
}

/// Turn a name recorded in an image (possibly Windows-style: `.\dir\x.vhd`, `C:\x.vhd`) into a
/// host path relative to `referrer`'s directory. Returns `None` for names that cannot denote a
/// host file here (a Windows drive path on a non-Windows host, an empty name).
pub fn recorded_to_path(recorded: &str, referrer: Option<&Path>) -> Option<PathBuf> {
    let name = recorded.trim_end_matches('\0');
    if name.is_empty() {
        return None;
    }
    let bytes = name.as_bytes();
    let windows_drive = bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':';
    let unc = name.starts_with("\\\\");
    let path = if cfg!(windows) {
        PathBuf::from(name)
    } else {
        if windows_drive || unc {
            return None;
        }
        PathBuf::from(name.replace('\\', "/"))
    };
    if path.is_absolute() {
        return Some(path);
    }
    let base = referrer.and_then(Path::parent).unwrap_or(Path::new(""));
    Some(base.join(path))
}

impl Resolver for FsResolver {
    fn open(&self, request: &FileRequest<'_>) -> Result<Opened> {
        let denied = |why: &str| {
            Error::new(
                ErrorKind::ExternalFileDenied,
                format!("{} file '{}' refused: {why}", request.kind, request.recorded),
            )
        };
        if self.policy == FsPolicy::SameDirectory {
            let recorded = Path::new(request.recorded);
            if recorded.is_absolute() || request.recorded.contains(':') || request.recorded.starts_with('\\') {
                return Err(denied("absolute paths are not allowed"));
            }
            if PathBuf::from(request.recorded.replace('\\', "/"))
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
            {
                return Err(denied("'..' is not allowed"));
            }
        }
        let Some(path) = recorded_to_path(request.recorded, request.referrer) else {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "{} file '{}' cannot be found on this host",
                    request.kind, request.recorded
                ),
            ));
        };
        let canonical = path.canonicalize().map_err(|e| {
            Error::io(e, format!("opening {} file '{}'", request.kind, request.recorded)).with_file(&path)
        })?;
        let meta = std::fs::metadata(&canonical).map_err(|e| Error::io(e, "reading metadata").with_file(&canonical))?;
        let is_block_device = {
            #[cfg(unix)]
            {
                use std::os::unix::fs::FileTypeExt;
                meta.file_type().is_block_device()
            }
            #[cfg(not(unix))]
            {
                false
            }
        };
        match self.policy {
            FsPolicy::SameDirectory => {
                if !meta.is_file() {
                    return Err(denied("not a regular file"));
                }
                let dir = request
                    .referrer
                    .and_then(Path::parent)
                    .map(|d| if d.as_os_str().is_empty() { Path::new(".") } else { d })
                    .unwrap_or(Path::new("."))
                    .canonicalize()
                    .map_err(|e| Error::io(e, "resolving the image's directory"))?;
                if !canonical.starts_with(&dir) {
                    return Err(denied("it lies outside the image's directory"));
                }
            }
            FsPolicy::Any => {
                if !meta.is_file() && !is_block_device {
                    return Err(denied("not a regular file or block device"));
                }
            }
        }
        let mut storage = FileStorage::open(&canonical, request.writable)
            .map_err(|e| Error::io(e, format!("opening {} file", request.kind)).with_file(&canonical))?;
        if !self.durable {
            storage = storage.without_sync();
        }
        Ok(Opened {
            storage: Arc::new(storage),
            path: canonical,
        })
    }
}

/// Resolves names to in-memory files registered beforehand: for tests, fuzzers and benches.
#[derive(Debug, Default)]
pub struct MemResolver {
    files: Mutex<HashMap<String, Arc<MemStorage>>>,
}

impl MemResolver {
    /// An empty resolver (every request is `NotFound`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Make `name` resolve to `storage`.
    pub fn insert(&self, name: &str, storage: Arc<MemStorage>) {
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), storage);
    }
}

/// New files of a multi-file image created in memory are registered under their names.
impl crate::driver::FileCreator for MemResolver {
    fn create_file(&self, name: &str) -> Result<Arc<dyn Storage>> {
        let storage = Arc::new(MemStorage::new());
        self.insert(name, storage.clone());
        Ok(storage)
    }
}

impl Resolver for MemResolver {
    fn open(&self, request: &FileRequest<'_>) -> Result<Opened> {
        let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        match files.get(request.recorded) {
            Some(s) => Ok(Opened {
                storage: s.clone(),
                path: PathBuf::from(request.recorded),
            }),
            None => Err(Error::new(
                ErrorKind::NotFound,
                format!("{} file '{}' not found", request.kind, request.recorded),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(referrer: &'a Path, recorded: &'a str) -> FileRequest<'a> {
        FileRequest {
            referrer: Some(referrer),
            recorded,
            kind: FileKind::Extent,
            writable: false,
        }
    }

    #[test]
    fn deny_is_default_and_typed() {
        let e = DenyExternal.open(&req(Path::new("/x/a.vmdk"), "b.vmdk")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ExternalFileDenied);
    }

    #[test]
    fn same_directory_policy() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("img");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("ok.bin"), b"x").unwrap();
        std::fs::write(dir.path().join("outside.bin"), b"y").unwrap();
        let me = sub.join("disk.vmdk");
        let r = FsResolver::new(FsPolicy::SameDirectory);
        assert!(r.open(&req(&me, "ok.bin")).is_ok());
        assert!(r.open(&req(&me, ".\\ok.bin")).is_ok());
        for bad in ["../outside.bin", "/etc/passwd", "C:\\x.vhd", "/dev/null"] {
            let e = r.open(&req(&me, bad)).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ExternalFileDenied, "{bad}");
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.path().join("outside.bin"), sub.join("link.bin")).unwrap();
            let e = r.open(&req(&me, "link.bin")).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ExternalFileDenied);
        }
        let any = FsResolver::new(FsPolicy::Any);
        assert!(any.open(&req(&me, "../outside.bin")).is_ok());
        assert_eq!(
            any.open(&req(&me, "missing.bin")).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            any.open(&req(&me, "/dev/null")).unwrap_err().kind(),
            ErrorKind::ExternalFileDenied
        );
    }

    #[test]
    fn windows_names() {
        let r = Path::new("/vms/child.vhd");
        assert_eq!(
            recorded_to_path(".\\parent.vhd", Some(r)).unwrap(),
            Path::new("/vms/./parent.vhd")
        );
        assert_eq!(recorded_to_path("C:\\vms\\parent.vhd", Some(r)), None);
        assert_eq!(recorded_to_path("", Some(r)), None);
        assert_eq!(
            recorded_to_path("/abs/p.vhd", Some(r)).unwrap(),
            Path::new("/abs/p.vhd")
        );
    }
}
