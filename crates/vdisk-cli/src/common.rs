//! What every command shares: the failure type, format names, opening images.

use std::path::Path;
use std::sync::Arc;
use vdisk::disk_core::display_chain;
use vdisk::disk_core::{FileRequest, Opened};
use vdisk::{
    DenyExternal, Error, ErrorKind, Format, FsPolicy, FsResolver, Image, Locking, MissingParent, OpenOptions, Resolver,
};

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

/// Which files an image may make `vdisk` open (`--external`): its parents and VMDK extents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum External {
    /// Plain files in the image's own directory only (no links leading out, no devices).
    #[default]
    #[value(name = "same-dir")]
    SameDir,
    /// Any path the image names, as `qemu-img` does: only for images you trust.
    Any,
    /// None at all (`--no-external`): only the file named on the command line.
    None,
}

/// Adds to a refusal how the user can allow the file, if they trust the image.
#[derive(Debug)]
struct Hinting {
    inner: Arc<dyn Resolver>,
    hint: &'static str,
}

impl Resolver for Hinting {
    fn open(&self, request: &FileRequest<'_>) -> vdisk::Result<Opened> {
        self.inner.open(request).map_err(|e| {
            if e.kind() != ErrorKind::ExternalFileDenied {
                return e;
            }
            let hinted = Error::new(e.kind(), format!("{} ({})", e.message(), self.hint));
            match &e.context().file {
                Some(file) => hinted.with_file(file),
                None => hinted,
            }
        })
    }
}

/// Settings shared by every command (global flags).
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The gate for parents and extents, as `--external` says.
    pub resolver: Arc<dyn Resolver>,
    /// `--no-external` / `--external none`: touch no file other than the one named.
    pub no_external: bool,
    /// `--trust-unlinked-parent`: see [`OpenOptions::trust_unlinked_parent`].
    pub trust_unlinked_parent: bool,
    /// `--image-opts`: the image names given are qemu-img option strings (see [`ImageOpts`]).
    pub image_opts: bool,
    /// How images are locked: QEMU's way by default, [`Locking::ForceShare`] with `-U`.
    pub locking: Locking,
}

/// `-U` / `--force-share`, as qemu-img takes it on commands that only read.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct ForceShare {
    /// Open the image even while another process (a running VM) writes it, taking no lock that
    /// keeps writers out (qemu-img's -U); what is read may be changing meanwhile.
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
}

impl Ctx {
    /// The context for the global flags given.
    pub fn new(external: External) -> Self {
        let (inner, hint): (Arc<dyn Resolver>, &'static str) = match external {
            External::SameDir => (
                Arc::new(FsResolver::new(FsPolicy::SameDirectory)),
                "only plain files in the image's own directory are opened; \
                 '--external any' opens any file an image names, for images you trust",
            ),
            External::Any => (
                Arc::new(FsResolver::new(FsPolicy::Any)),
                "only regular files and block devices are opened",
            ),
            External::None => (Arc::new(DenyExternal), "--no-external is in effect"),
        };
        Ctx {
            resolver: Arc::new(Hinting { inner, hint }),
            no_external: external == External::None,
            trust_unlinked_parent: false,
            image_opts: false,
            locking: Locking::Auto,
        }
    }

    /// This context with `-U` applied when `force_share` (read-only opens share everything; a
    /// writable open is then refused, as qemu-img refuses it).
    pub fn sharing(&self, force_share: bool) -> Ctx {
        let mut ctx = self.clone();
        if force_share {
            ctx.locking = Locking::ForceShare;
        }
        ctx
    }

    /// Options with the global flags applied (resolver, parent identity, locking): read-only,
    /// probing.
    pub fn base_options(&self) -> OpenOptions {
        let mut options = OpenOptions::new().resolver(self.resolver.clone()).locking(self.locking);
        options.trust_unlinked_parent = self.trust_unlinked_parent;
        options
    }

    /// Open the image at `path` (with its parents, as the resolver allows).
    pub fn open(
        &self,
        path: &Path,
        format: Option<Format>,
        writable: bool,
        missing: MissingParent,
    ) -> Result<Image, Failure> {
        self.open_with(path, &self.open_options(format, writable, missing))
    }

    /// The options [`Ctx::open`] uses, for commands that need more (e.g. `check -r` sets
    /// [`OpenOptions::repair`]).
    pub fn open_options(&self, format: Option<Format>, writable: bool, missing: MissingParent) -> OpenOptions {
        OpenOptions {
            writable,
            format,
            missing_parent: missing,
            ..self.base_options()
        }
    }

    /// The file an image name given on the command line stands for: the name itself, or with
    /// `--image-opts` its `file.filename` (the name as given when it does not parse).
    pub fn image_path(&self, given: &Path) -> std::path::PathBuf {
        match self.image_opts {
            true => ImageOpts::parse(given, &OpenOptions::default()).map_or_else(|_| given.to_path_buf(), |o| o.path),
            false => given.to_path_buf(),
        }
    }

    /// Open the image at `path` with `options`; an error about another file (a parent, an
    /// extent) still names the image asked for.
    pub fn open_with(&self, path: &Path, options: &OpenOptions) -> Result<Image, Failure> {
        let opts;
        let (path, options) = if self.image_opts {
            opts = ImageOpts::parse(path, options)?;
            (opts.path.as_path(), &opts.options)
        } else {
            (path, options)
        };
        vdisk::open(path, options).map_err(|e| {
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

/// An image named as qemu-img's `--image-opts` takes it: `driver=FMT,file.filename=PATH`
/// (`file.driver=file` and `filename=PATH` are accepted too, `force-share=on|off` as `-U`).
pub struct ImageOpts {
    /// The image file.
    pub path: std::path::PathBuf,
    /// The options to open it with.
    pub options: OpenOptions,
}

impl ImageOpts {
    /// Parse `text` (the name given on the command line) over `options`.
    pub fn parse(text: &Path, options: &OpenOptions) -> Result<Self, Failure> {
        let text = text.to_string_lossy();
        let mut options = options.clone();
        let mut path = None;
        for piece in text.split(',').filter(|p| !p.is_empty()) {
            let (key, value) = piece
                .split_once('=')
                .ok_or_else(|| Failure::new(format!("--image-opts: '{piece}' is not key=value")))?;
            match key {
                "driver" => {
                    let format = parse_format(value)?;
                    if options.format.is_some_and(|f| f != format) {
                        return Err(Failure::new(format!("--image-opts: driver={value} contradicts -f")));
                    }
                    options.format = Some(format);
                }
                "file.filename" | "filename" => path = Some(std::path::PathBuf::from(value)),
                "file.driver" if value == "file" => {}
                "force-share" => {
                    options.locking = match value {
                        "on" => Locking::ForceShare,
                        "off" => options.locking,
                        _ => {
                            return Err(Failure::new(format!(
                                "--image-opts: force-share={value} is not on or off"
                            )));
                        }
                    };
                }
                _ => {
                    return Err(Failure::new(format!(
                        "--image-opts: '{key}' is not supported (driver, file.filename, file.driver=file, force-share)"
                    )));
                }
            }
        }
        let path = path.ok_or_else(|| Failure::new(format!("--image-opts: '{text}' names no file.filename")))?;
        Ok(ImageOpts { path, options })
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

/// Whether the `-o` lists ask for the list of options (`-o help` or `-o ?`, as qemu-img).
pub fn options_help_asked(lists: &[String]) -> bool {
    lists
        .iter()
        .flat_map(|l| l.split(','))
        .any(|piece| piece == "help" || piece == "?")
}

/// The options `format` takes at creation, as `-o help` prints them (qemu-img's layout), with
/// `size`, `backing_file` and `backing_fmt` too when `common` (for `create`).
pub fn options_help(format: vdisk::Format, common: bool) -> Result<String, Failure> {
    let generic = [
        ("size", "size", "", "Virtual disk size"),
        ("backing_file", "str", "", "File name of a base image (-b)"),
        ("backing_fmt", "str", "", "Image format of the base image (-F)"),
    ];
    let mut rows: Vec<(String, String)> = Vec::new();
    for o in vdisk::driver(format)?.create_options() {
        let kind = match o.kind {
            "string" => "str",
            "bool" => "bool (on/off)",
            "number" => "num",
            other => other,
        };
        rows.push((
            format!("{}=<{kind}>", o.name),
            format!("{} (default: {})", o.help, o.default),
        ));
    }
    if common {
        for (name, kind, _, help) in generic {
            rows.push((format!("{name}=<{kind}>"), help.to_string()));
        }
    }
    rows.sort();
    let mut text = format!("Supported options ({format}):\n");
    for (left, help) in rows {
        text.push_str(&format!("  {left:<22} - {help}\n"));
    }
    Ok(text)
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
