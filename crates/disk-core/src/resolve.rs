//! The gate through which an image may open other files (parents, extents).
//!
//! A hostile image can name any path: a VMDK flat extent pointing at `/etc/shadow` or a block
//! device would otherwise let whoever converts the image read host files (OpenStack
//! CVE-2024-32498). So engines never open files themselves: they ask a [`Resolver`] the caller
//! chose. The library default, [`DenyExternal`], refuses everything.

use crate::error::{Error, ErrorKind, Result};
use crate::storage::{FileStorage, MemStorage, Storage};
use crate::sync::lock;
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
    /// Only regular files directly in the referring image's directory: a plain name (`x.vmdk`,
    /// `.\x.vhd`), or an absolute path whose directory is that same directory (same device and
    /// inode). Never symbolic links, hard-linked files (a second name may lead out of the
    /// directory), devices, FIFOs, sockets or sub-directories. On Unix the file is opened
    /// relative to a descriptor of the directory without following links and checked on the
    /// opened descriptor, so nothing can be swapped in between the check and the open.
    SameDirectory,
    /// Any path the image names, relative (to the image's directory) or absolute, regular file
    /// or block device, following symbolic links: what `qemu-img` does for a person's own images.
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

/// Whether a recorded name is a Windows drive path (`C:\x.vhd`, `C:x`) or a UNC path (`\\srv\x`).
fn is_windows_absolute(name: &str) -> bool {
    let bytes = name.as_bytes();
    (bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':') || name.starts_with("\\\\")
}

/// Turn a name recorded in an image (possibly Windows-style: `.\dir\x.vhd`, `C:\x.vhd`) into a
/// host path relative to `referrer`'s directory. Returns `None` for names that cannot denote a
/// host file here (a Windows drive path on a non-Windows host, an empty name).
pub fn recorded_to_path(recorded: &str, referrer: Option<&Path>) -> Option<PathBuf> {
    let name = recorded.trim_end_matches('\0');
    if name.is_empty() {
        return None;
    }
    let path = if cfg!(windows) {
        PathBuf::from(name)
    } else {
        if is_windows_absolute(name) {
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

/// The relative parent locator a new differencing image records (VHD `W2ru`, VHDX
/// `relative_path`): the parent's path relative to the child's directory, Windows style and
/// starting with `.\` or `..\` (`.\parent.vhdx`, `..\base\base.vhd`), as Hyper-V and Windows
/// write it. [`recorded_to_path`] reads it back.
///
/// It is the name the user gave (`recorded`) when that is relative (it is relative to the
/// child's directory already). For an absolute name (a Unix path, or anything with a drive
/// colon or a leading `\`) it is the parent's host path `absolute` relative to the directory of
/// `child` (the new image's path) when the parent lies in or below that directory, and `None`
/// otherwise: the image then records only the absolute path.
pub fn relative_locator(recorded: &str, absolute: Option<&Path>, child: Option<&Path>) -> Option<String> {
    let is_absolute = Path::new(recorded).is_absolute() || recorded.contains(':') || recorded.starts_with('\\');
    let relative = if is_absolute {
        let dir = child?.parent()?;
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        absolute?.strip_prefix(&dir).ok()?.to_string_lossy().into_owned()
    } else {
        recorded.to_string()
    };
    let windows = relative.replace('/', "\\");
    if windows.starts_with(".\\") || windows.starts_with("..\\") {
        Some(windows)
    } else {
        Some(format!(".\\{windows}"))
    }
}

/// The directory holding `referrer` (`.` for a bare name or no referrer).
fn referrer_dir(referrer: Option<&Path>) -> &Path {
    referrer
        .and_then(Path::parent)
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// The error for a file the policy refuses. It names only what the image recorded: nothing about
/// the host file (whether it exists, what it is) leaks to whoever supplied the image.
fn denied(request: &FileRequest<'_>, why: &str) -> Error {
    Error::new(
        ErrorKind::ExternalFileDenied,
        format!("{} file '{}' refused: {why}", request.kind, request.recorded),
    )
}

/// The error for a name that denotes no file on this host.
fn not_on_this_host(request: &FileRequest<'_>) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!(
            "{} file '{}' cannot be found on this host",
            request.kind, request.recorded
        ),
    )
}

impl Resolver for FsResolver {
    fn open(&self, request: &FileRequest<'_>) -> Result<Opened> {
        let (file, path) = match self.policy {
            FsPolicy::SameDirectory => host::open_same_directory(request)?,
            FsPolicy::Any => host::open_any(request)?,
        };
        let mut storage = FileStorage::from_file(file, &path)
            .map_err(|e| Error::io(e, format!("opening {} file", request.kind)).with_file(&path))?;
        if !self.durable {
            storage = storage.without_sync();
        }
        Ok(Opened {
            storage: Arc::new(storage),
            path,
        })
    }
}

/// The single file name a [`FsPolicy::SameDirectory`] request may name, and the directory whose
/// device and inode its directory must have when it was recorded as an absolute path.
enum SameDirName {
    /// A plain name (after dropping `.` components and turning `\` into `/`).
    Plain(std::ffi::OsString),
    /// An absolute path: its directory and file name.
    Absolute(PathBuf, std::ffi::OsString),
}

/// Check the shape of a name under [`FsPolicy::SameDirectory`] without touching the file system.
fn same_dir_name(request: &FileRequest<'_>) -> Result<SameDirName> {
    let name = request.recorded.trim_end_matches('\0');
    if name.is_empty() || (!cfg!(windows) && is_windows_absolute(name)) {
        return Err(not_on_this_host(request));
    }
    let unix = if cfg!(windows) {
        name.to_string()
    } else {
        name.replace('\\', "/")
    };
    let path = Path::new(&unix);
    let outside = || denied(request, "it lies outside the image's directory");
    if path.is_absolute() {
        return match (path.parent(), path.file_name()) {
            (Some(dir), Some(file)) if !path.ends_with("..") => {
                Ok(SameDirName::Absolute(dir.to_path_buf(), file.to_os_string()))
            }
            _ => Err(outside()),
        };
    }
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(part) => parts.push(part.to_os_string()),
            _ => return Err(outside()),
        }
    }
    match <[_; 1]>::try_from(parts) {
        Ok([one]) => Ok(SameDirName::Plain(one)),
        Err(parts) if parts.is_empty() => Err(not_on_this_host(request)),
        Err(_) => Err(denied(
            request,
            "only files directly in the image's directory may be opened, not in sub-directories",
        )),
    }
}

#[cfg(unix)]
mod host {
    //! Descriptor-based opening: no check-then-open race, no FIFO that blocks the open.
    use super::*;
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    use rustix::io::Errno;
    use std::fs::File;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    /// A directory descriptor good enough for `openat` and `fstat` (no read permission needed).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    const DIR_ACCESS: OFlags = OFlags::PATH;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    const DIR_ACCESS: OFlags = OFlags::RDONLY;

    fn dir_flags() -> OFlags {
        DIR_ACCESS | OFlags::DIRECTORY | OFlags::CLOEXEC
    }

    /// Flags for a file named inside an image: never wait (a FIFO would block a plain open
    /// until a writer appears) and never become a controlling terminal.
    fn file_flags(writable: bool, follow: bool) -> OFlags {
        let access = if writable { OFlags::RDWR } else { OFlags::RDONLY };
        let flags = access | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        if follow { flags } else { flags | OFlags::NOFOLLOW }
    }

    /// Back to blocking I/O once the descriptor is known to be a regular file or block device.
    fn make_blocking(file: &File) -> std::io::Result<()> {
        let flags = rustix::fs::fcntl_getfl(file)?;
        rustix::fs::fcntl_setfl(file, flags - OFlags::NONBLOCK)?;
        Ok(())
    }

    fn same_inode(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
        a.dev() == b.dev() && a.ino() == b.ino()
    }

    pub(super) fn open_same_directory(request: &FileRequest<'_>) -> Result<(File, PathBuf)> {
        let shape = same_dir_name(request)?;
        let dir_path = referrer_dir(request.referrer);
        let dir = File::from(
            rustix::fs::open(dir_path, dir_flags(), Mode::empty())
                .map_err(|e| Error::io(e.into(), "opening the image's directory").with_file(dir_path))?,
        );
        let dir_meta = dir
            .metadata()
            .map_err(|e| Error::io(e, "reading the image's directory").with_file(dir_path))?;
        let name = match shape {
            SameDirName::Plain(name) => name,
            SameDirName::Absolute(recorded_dir, name) => {
                // The recorded directory must be the image's own directory. Whether it exists,
                // or is some other directory, gives the same answer.
                let same = rustix::fs::open(&recorded_dir, dir_flags(), Mode::empty())
                    .ok()
                    .map(File::from)
                    .and_then(|d| d.metadata().ok())
                    .is_some_and(|m| same_inode(&m, &dir_meta));
                if !same {
                    return Err(denied(request, "it lies outside the image's directory"));
                }
                name
            }
        };
        let path = std::fs::canonicalize(dir_path)
            .unwrap_or_else(|_| dir_path.to_path_buf())
            .join(&name);
        let not_plain = "it is not a plain file (a symbolic link, device, FIFO, socket or directory)";
        let hard_linked = "the file has other hard links, which may lead outside the image's directory";
        // Look before opening, without following links, so that devices and FIFOs are not even
        // opened (opening some devices has effects); the checks that count are made below on
        // the opened descriptor.
        match rustix::fs::statat(&dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile => {
                return Err(denied(request, not_plain));
            }
            Ok(_) => {}
            Err(Errno::NOENT) => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "{} file '{}' not found in the image's directory",
                        request.kind, request.recorded
                    ),
                )
                .with_file(&path));
            }
            Err(e) => {
                return Err(Error::io(e.into(), format!("looking up {} file", request.kind)).with_file(&path));
            }
        }
        let fd = rustix::fs::openat(
            &dir,
            name.as_os_str(),
            file_flags(request.writable, false),
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::LOOP | Errno::NXIO | Errno::NOTDIR => denied(request, not_plain),
            e => Error::io(e.into(), format!("opening {} file", request.kind)).with_file(&path),
        })?;
        let file = File::from(fd);
        let meta = file
            .metadata()
            .map_err(|e| Error::io(e, format!("reading {} file metadata", request.kind)).with_file(&path))?;
        if !meta.file_type().is_file() {
            return Err(denied(request, not_plain));
        }
        if meta.nlink() != 1 {
            return Err(denied(request, hard_linked));
        }
        make_blocking(&file).map_err(|e| Error::io(e, format!("opening {} file", request.kind)).with_file(&path))?;
        Ok((file, path))
    }

    pub(super) fn open_any(request: &FileRequest<'_>) -> Result<(File, PathBuf)> {
        let Some(path) = recorded_to_path(request.recorded, request.referrer) else {
            return Err(not_on_this_host(request));
        };
        let what = format!("opening {} file '{}'", request.kind, request.recorded);
        let fd = rustix::fs::open(&path, file_flags(request.writable, true), Mode::empty())
            .map_err(|e| Error::io(e.into(), what.clone()).with_file(&path))?;
        let file = File::from(fd);
        let meta = file
            .metadata()
            .map_err(|e| Error::io(e, what.clone()).with_file(&path))?;
        if !meta.file_type().is_file() && !meta.file_type().is_block_device() {
            return Err(denied(request, "not a regular file or block device"));
        }
        make_blocking(&file).map_err(|e| Error::io(e, what).with_file(&path))?;
        let canonical = path.canonicalize().unwrap_or(path);
        Ok((file, canonical))
    }
}

#[cfg(not(unix))]
mod host {
    //! Path-based fallback: the checks and the open are separate steps here.
    use super::*;
    use std::fs::File;

    fn open_file(path: &Path, writable: bool, what: &str) -> Result<File> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|e| Error::io(e, what.to_string()).with_file(path))
    }

    pub(super) fn open_same_directory(request: &FileRequest<'_>) -> Result<(File, PathBuf)> {
        let dir = referrer_dir(request.referrer)
            .canonicalize()
            .map_err(|e| Error::io(e, "resolving the image's directory"))?;
        let name = match same_dir_name(request)? {
            SameDirName::Plain(name) => name,
            SameDirName::Absolute(recorded_dir, name) => {
                if recorded_dir.canonicalize().ok().as_deref() != Some(dir.as_path()) {
                    return Err(denied(request, "it lies outside the image's directory"));
                }
                name
            }
        };
        let path = dir.join(&name);
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|e| Error::io(e, format!("opening {} file", request.kind)).with_file(&path))?;
        if !meta.file_type().is_file() {
            return Err(denied(request, "it is not a plain file"));
        }
        let file = open_file(&path, request.writable, &format!("opening {} file", request.kind))?;
        Ok((file, path))
    }

    pub(super) fn open_any(request: &FileRequest<'_>) -> Result<(File, PathBuf)> {
        let Some(path) = recorded_to_path(request.recorded, request.referrer) else {
            return Err(not_on_this_host(request));
        };
        let file = open_file(&path, request.writable, &format!("opening {} file", request.kind))?;
        let canonical = path.canonicalize().unwrap_or(path);
        Ok((file, canonical))
    }
}

/// Resolves names to in-memory files registered beforehand: for tests, fuzzers and benches.
/// Names are compared as the file-system resolvers read them: `\` as `/`, with `.` components
/// dropped, so a locator recorded as `.\parent.vhdx` finds the file registered as `parent.vhdx`.
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
        lock(&self.files).insert(mem_key(name), storage);
    }
}

/// The key a [`MemResolver`] keeps `name` under (see there).
fn mem_key(name: &str) -> String {
    let name = name.trim_end_matches('\0').replace('\\', "/");
    let parts: Vec<&str> = name.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    let root = if name.starts_with('/') { "/" } else { "" };
    format!("{root}{}", parts.join("/"))
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
        let files = lock(&self.files);
        match files.get(&mem_key(request.recorded)) {
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

    #[test]
    fn mem_resolver_reads_names_as_paths() {
        let r = MemResolver::new();
        r.insert("parent.vhdx", Arc::new(MemStorage::from_bytes(b"p")));
        r.insert("/abs/x", Arc::new(MemStorage::from_bytes(b"x")));
        let open = |name: &str| r.open(&req(Path::new("child"), name)).map(|o| o.storage.len().unwrap());
        for name in [
            "parent.vhdx",
            ".\\parent.vhdx",
            "./parent.vhdx",
            "parent.vhdx\0",
            "/abs/x",
            "/abs/./x",
        ] {
            assert_eq!(open(name).unwrap(), 1, "{name}");
        }
        for name in ["other", "abs/x", "..\\parent.vhdx", ""] {
            assert_eq!(open(name).unwrap_err().kind(), ErrorKind::NotFound, "{name}");
        }
    }

    #[test]
    fn relative_locators() {
        assert_eq!(relative_locator("p.vhd", None, None).unwrap(), ".\\p.vhd");
        assert_eq!(relative_locator(".\\p.vhd", None, None).unwrap(), ".\\p.vhd");
        assert_eq!(relative_locator("d/p.vhd", None, None).unwrap(), ".\\d\\p.vhd");
        assert_eq!(relative_locator("../p.vhd", None, None).unwrap(), "..\\p.vhd");
        assert_eq!(relative_locator("/x/p.vhd", Some(Path::new("/x/p.vhd")), None), None);
        assert_eq!(relative_locator("C:\\x\\p.vhd", None, None), None);
        assert_eq!(relative_locator("\\\\srv\\p.vhd", None, None), None);
        let child = Some(Path::new("/x/c.vhd"));
        assert_eq!(
            relative_locator("/x/p.vhd", Some(Path::new("/x/p.vhd")), child).unwrap(),
            ".\\p.vhd"
        );
        assert_eq!(
            relative_locator("/x/d/p.vhd", Some(Path::new("/x/d/p.vhd")), child).unwrap(),
            ".\\d\\p.vhd"
        );
        assert_eq!(relative_locator("/y/p.vhd", Some(Path::new("/y/p.vhd")), child), None);
    }

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
        std::fs::create_dir(sub.join("deeper")).unwrap();
        std::fs::write(sub.join("ok.bin"), b"x").unwrap();
        std::fs::write(sub.join("deeper/x.bin"), b"x").unwrap();
        std::fs::write(dir.path().join("outside.bin"), b"y").unwrap();
        let me = sub.join("disk.vmdk");
        let r = FsResolver::new(FsPolicy::SameDirectory);
        assert!(r.open(&req(&me, "ok.bin")).is_ok());
        assert!(r.open(&req(&me, ".\\ok.bin")).is_ok());
        assert!(r.open(&req(&me, "./ok.bin")).is_ok());
        // An absolute name of a file in the image's own directory (what qemu-img records).
        let absolute = sub.join("ok.bin");
        let opened = r.open(&req(&me, absolute.to_str().unwrap())).unwrap();
        assert_eq!(opened.path, sub.canonicalize().unwrap().join("ok.bin"));
        for bad in [
            "../outside.bin",
            "/etc/passwd",
            "/dev/null",
            "deeper/x.bin",
            "img/../../outside.bin",
        ] {
            let e = r.open(&req(&me, bad)).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ExternalFileDenied, "{bad}");
        }
        // Names that cannot be a file here are "not found", so other locators are still tried.
        for absent in ["C:\\x.vhd", "\\\\server\\share\\x.vhd", "", "missing.bin"] {
            assert_eq!(
                r.open(&req(&me, absent)).unwrap_err().kind(),
                ErrorKind::NotFound,
                "{absent}"
            );
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

    /// A directory `img` holding the image `disk.vmdk`, beside a file `outside.bin`.
    #[cfg(unix)]
    fn image_dir() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("img");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(dir.path().join("outside.bin"), b"secret").unwrap();
        (dir, sub.join("disk.vmdk"))
    }

    #[cfg(unix)]
    #[test]
    fn hard_link_leading_out_is_refused() {
        let (dir, me) = image_dir();
        let img = me.parent().unwrap();
        std::fs::hard_link(dir.path().join("outside.bin"), img.join("link.bin")).unwrap();
        let r = FsResolver::new(FsPolicy::SameDirectory);
        for writable in [false, true] {
            let e = r
                .open(&FileRequest {
                    writable,
                    ..req(&me, "link.bin")
                })
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ExternalFileDenied);
            let text = crate::error::display_chain(&e);
            assert!(
                !text.contains(dir.path().to_str().unwrap()) && !text.contains("secret"),
                "{text}"
            );
        }
        // The caller may opt into following it.
        assert!(FsResolver::new(FsPolicy::Any).open(&req(&me, "link.bin")).is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn refusals_do_not_tell_what_lies_outside() {
        let (dir, me) = image_dir();
        let img = me.parent().unwrap();
        let r = FsResolver::new(FsPolicy::SameDirectory);
        // A link to an existing file and a dangling one look the same.
        std::os::unix::fs::symlink(dir.path().join("outside.bin"), img.join("a.bin")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("no-such-file"), img.join("b.bin")).unwrap();
        let a = r.open(&req(&me, "a.bin")).unwrap_err();
        let b = r.open(&req(&me, "b.bin")).unwrap_err();
        assert_eq!(a.kind(), ErrorKind::ExternalFileDenied);
        assert_eq!(b.kind(), ErrorKind::ExternalFileDenied);
        let text = |e: &Error| crate::error::display_chain(e);
        assert_eq!(text(&a).replace("a.bin", "X"), text(&b).replace("b.bin", "X"));
        assert!(
            a.context().file.is_none() && !text(&a).contains("outside"),
            "{}",
            text(&a)
        );
        // An absolute name outside: the same answer whether it exists or not.
        let existing = dir.path().join("outside.bin");
        let existing = existing.to_str().unwrap();
        let missing = dir.path().join("nothing/here.bin");
        let missing = missing.to_str().unwrap();
        let e1 = r.open(&req(&me, existing)).unwrap_err();
        let e2 = r.open(&req(&me, missing)).unwrap_err();
        assert_eq!(e1.kind(), ErrorKind::ExternalFileDenied);
        assert_eq!(text(&e1).replace(existing, "X"), text(&e2).replace(missing, "X"));
        assert!(e1.context().file.is_none() && e2.context().file.is_none());
        assert!(!text(&e1).contains("secret"));
    }

    #[cfg(unix)]
    #[test]
    fn fifos_are_refused_without_hanging() {
        let (_dir, me) = image_dir();
        let img = me.parent().unwrap().to_path_buf();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            img.join("fifo.bin"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let me = img.join("disk.vmdk");
            let mut kinds = Vec::new();
            for policy in [FsPolicy::SameDirectory, FsPolicy::Any] {
                for writable in [false, true] {
                    let request = FileRequest {
                        writable,
                        ..req(&me, "fifo.bin")
                    };
                    kinds.push(FsResolver::new(policy).open(&request).map(|_| ()).unwrap_err().kind());
                }
            }
            let _ = tx.send(kinds);
        });
        let kinds = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("opening a FIFO must not block");
        // Any: opening for writing with no reader fails (ENXIO), reading opens and is refused.
        assert!(
            kinds
                .iter()
                .all(|k| matches!(k, ErrorKind::ExternalFileDenied | ErrorKind::Io)),
            "{kinds:?}"
        );
        assert_eq!(kinds[..2], [ErrorKind::ExternalFileDenied; 2]);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn devices_are_refused_in_the_image_directory() {
        let (_dir, me) = image_dir();
        let img = me.parent().unwrap();
        for (name, kind, major, minor) in [
            ("null.bin", rustix::fs::FileType::CharacterDevice, 1, 3),
            ("loop.bin", rustix::fs::FileType::BlockDevice, 7, 0),
        ] {
            let node = rustix::fs::mknodat(
                rustix::fs::CWD,
                img.join(name),
                kind,
                rustix::fs::Mode::from_raw_mode(0o600),
                rustix::fs::makedev(major, minor),
            );
            if node.is_err() {
                crate::testing::interop::report_skip(name, "cannot make device nodes here");
                continue;
            }
            let e = FsResolver::new(FsPolicy::SameDirectory)
                .open(&FileRequest {
                    writable: true,
                    ..req(me.as_path(), name)
                })
                .map(|_| ())
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ExternalFileDenied, "{name}");
        }
        // The system's own devices, by absolute name, too.
        for dev in ["/dev/zero", "/dev/null"] {
            let e = FsResolver::new(FsPolicy::SameDirectory)
                .open(&req(&me, dev))
                .map(|_| ())
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ExternalFileDenied, "{dev}");
        }
        let e = FsResolver::new(FsPolicy::Any)
            .open(&req(&me, "/dev/zero"))
            .map(|_| ())
            .unwrap_err();
        assert_eq!(
            e.kind(),
            ErrorKind::ExternalFileDenied,
            "character devices are never opened"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn any_opens_block_devices_with_their_size() {
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("backing");
        std::fs::write(&backing, vec![7u8; 1 << 20]).unwrap();
        let Some(dev) = crate::testing::LoopDevice::attach(&backing) else {
            return;
        };
        let me = dir.path().join("disk.vmdk");
        let name = dev.path().to_str().unwrap();
        let opened = FsResolver::new(FsPolicy::Any).open(&req(&me, name)).unwrap();
        assert_eq!(opened.storage.len().unwrap(), 1 << 20);
        let e = FsResolver::new(FsPolicy::SameDirectory)
            .open(&req(&me, name))
            .map(|_| ())
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ExternalFileDenied);
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
