//! `vdisk commit` and `vdisk rebase`: operations on a child and its parent.

use crate::common::{CmdResult, Ctx, Failure, parse_format_opt};
use std::path::{Path, PathBuf};
use vdisk::{Error, ErrorKind, Format, Image, MissingParent};

/// Arguments of `vdisk commit`.
#[derive(Debug, clap::Args)]
pub struct CommitArgs {
    /// Image format (probed when absent).
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    /// The child image whose data goes into its parent.
    pub file: PathBuf,
}

/// Arguments of `vdisk rebase`.
#[derive(Debug, clap::Args)]
pub struct RebaseArgs {
    /// Image format (probed when absent).
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    /// The new parent (relative to FILE's directory); an empty name makes FILE standalone.
    #[arg(short = 'b', value_name = "NEW_PARENT", required = true)]
    pub backing: String,
    /// Format of the new parent (probed when absent).
    #[arg(short = 'F', value_name = "FMT")]
    pub backing_format: Option<String>,
    /// Unsafe mode: only rewrite the reference, copy no data.
    #[arg(short = 'u')]
    pub unsafe_mode: bool,
    /// The child image.
    pub file: PathBuf,
}

/// Open `file` read-only to learn what it is (a missing parent is fine: nothing is read from it).
fn open_child(ctx: &Ctx, file: &Path, format: Option<&str>) -> Result<Image, Failure> {
    let format = parse_format_opt(format)?;
    ctx.open(file, format, false, MissingParent::Placeholder)
}

/// The error for an image that has no parent to work with.
fn no_backing(file: &Path, format: Format, what: &str) -> Failure {
    let why = if format == Format::Raw {
        "raw images have no backing file"
    } else {
        "the image has no backing file"
    };
    Error::new(ErrorKind::InvalidArgument, format!("cannot {what}: {why}"))
        .with_file(file)
        .into()
}

/// The error for an operation whose engine support comes later.
fn not_yet(file: &Path, format: Format, what: &str) -> Failure {
    Error::new(
        ErrorKind::Unsupported,
        format!("{what} {format} images is not implemented yet"),
    )
    .with_file(file)
    .into()
}

/// Run `vdisk commit`.
pub fn run_commit(ctx: &Ctx, args: &CommitArgs) -> CmdResult {
    let image = open_child(ctx, &args.file, args.format.as_deref())?;
    let format = image.top().format();
    if image.top().parent().is_none() {
        return Err(no_backing(&args.file, format, "commit"));
    }
    Err(not_yet(&args.file, format, "committing"))
}

/// Run `vdisk rebase`.
pub fn run_rebase(ctx: &Ctx, args: &RebaseArgs) -> CmdResult {
    parse_format_opt(args.backing_format.as_deref())?;
    let image = open_child(ctx, &args.file, args.format.as_deref())?;
    let format = image.top().format();
    if format == Format::Raw {
        return Err(no_backing(&args.file, format, "rebase"));
    }
    Err(not_yet(&args.file, format, "rebasing"))
}
