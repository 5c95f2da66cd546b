//! What every command shares: the failure type, format names, opening images.

use std::path::Path;
use std::sync::Arc;
use vdisk::disk_core::display_chain;
use vdisk::{DenyExternal, Error, Format, FsPolicy, FsResolver, Image, MissingParent, OpenOptions, Resolver};

/// A command's failure: the one line printed after `vdisk: error: ` and the exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What went wrong, naming the file.
    pub message: String,
    /// The process exit status.
    pub code: u8,
}

impl Failure {
    /// A failure with exit status 1.
    pub fn new(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            code: 1,
        }
    }

    /// The same failure with another exit status.
    pub fn with_code(mut self, code: u8) -> Self {
        self.code = code;
        self
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::new(display_chain(&e))
    }
}

/// The outcome of a command: its exit status, or a failure.
pub type CmdResult = Result<u8, Failure>;

/// Settings shared by every command (global flags).
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The gate for parents and extents: refuse all with `--no-external`, otherwise any path.
    pub resolver: Arc<dyn Resolver>,
    /// `--no-external`: touch no file other than the one named.
    pub no_external: bool,
}

impl Ctx {
    /// The context for the global flags given.
    pub fn new(no_external: bool) -> Self {
        let resolver: Arc<dyn Resolver> = if no_external {
            Arc::new(DenyExternal)
        } else {
            Arc::new(FsResolver::new(FsPolicy::Any))
        };
        Ctx { resolver, no_external }
    }

    /// Open the image at `path` (with its parents, as the resolver allows).
    pub fn open(
        &self,
        path: &Path,
        format: Option<Format>,
        writable: bool,
        missing: MissingParent,
    ) -> Result<Image, Failure> {
        let options = OpenOptions {
            writable,
            format,
            resolver: self.resolver.clone(),
            missing_parent: missing,
            ..OpenOptions::default()
        };
        vdisk::open(path, &options).map_err(|e| {
            // An error about another file (a parent, an extent) still names the image asked for.
            let about_other = e
                .context()
                .file
                .as_deref()
                .is_some_and(|f| f != path && path.canonicalize().ok().as_deref() != Some(f));
            let failure = Failure::from(e);
            if about_other {
                Failure::new(format!("{}: {}", path.display(), failure.message))
            } else {
                failure
            }
        })
    }
}

/// Parse a format name given with `-f`, `-O` or `-F` (`vpc` is accepted for `vhd`).
pub fn parse_format(name: &str) -> Result<Format, Failure> {
    Ok(name.parse::<Format>()?)
}

/// Parse an optional format name.
pub fn parse_format_opt(name: Option<&str>) -> Result<Option<Format>, Failure> {
    name.map(parse_format).transpose()
}

/// Parse and merge `-o` option lists (later values win).
pub fn parse_options(lists: &[String]) -> Result<vdisk::Options, Failure> {
    let mut all = vdisk::Options::new();
    for list in lists {
        all.extend(&vdisk::Options::parse(list)?);
    }
    Ok(all)
}

/// Attach `path` to an error that does not name a file yet, and turn it into a failure.
pub fn in_file(path: &Path, e: Error) -> Failure {
    Failure::from(e.with_file(path))
}

/// Bytes the file at `path` occupies on the host (allocated blocks), as `du` counts them.
pub fn allocated_bytes(path: &Path) -> Option<u64> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some(meta.blocks() * 512)
    }
    #[cfg(not(unix))]
    {
        Some(meta.len())
    }
}
