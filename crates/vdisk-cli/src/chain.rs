//! `vdisk commit` and `vdisk rebase`: operations on a child and its parent.

use crate::common::{CmdResult, Ctx, Failure, parse_format_opt};
use crate::output::emit;
use std::path::{Path, PathBuf};
use vdisk::{AfterCommit, Error, ErrorKind, Format, Image, MissingParent, OpenOptions};

/// Arguments of `vdisk commit`.
#[derive(Debug, clap::Args)]
pub struct CommitArgs {
    /// Image format (probed when absent).
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    /// Afterwards replace the child by an empty one on the same parent (qemu-img's default).
    #[arg(long, conflicts_with = "remove")]
    pub empty: bool,
    /// Afterwards delete the child.
    #[arg(long)]
    pub remove: bool,
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
fn open_child(ctx: &Ctx, file: &Path, format: Option<Format>) -> Result<Image, Failure> {
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

fn open_options(ctx: &Ctx, format: Option<Format>) -> OpenOptions {
    ctx.base_options().format(format)
}

/// Run `vdisk commit`.
pub fn run_commit(ctx: &Ctx, args: &CommitArgs) -> CmdResult {
    let format = parse_format_opt(args.format.as_deref())?;
    {
        let image = open_child(ctx, &args.file, format)?;
        if image.top().parent().is_none() {
            return Err(no_backing(&args.file, image.top().format(), "commit"));
        }
    }
    let after = if args.empty {
        AfterCommit::Empty
    } else if args.remove {
        AfterCommit::Remove
    } else {
        AfterCommit::Keep
    };
    vdisk::commit_then(&args.file, &open_options(ctx, format), after)?;
    emit("Image committed.\n");
    Ok(0)
}

/// Run `vdisk rebase`.
pub fn run_rebase(ctx: &Ctx, args: &RebaseArgs) -> CmdResult {
    let backing_format = parse_format_opt(args.backing_format.as_deref())?;
    let format = parse_format_opt(args.format.as_deref())?;
    {
        let image = open_child(ctx, &args.file, format)?;
        if image.top().format() == Format::Raw {
            return Err(no_backing(&args.file, Format::Raw, "rebase"));
        }
    }
    let backing = Some(args.backing.as_str()).filter(|b| !b.is_empty());
    vdisk::rebase(
        &args.file,
        backing,
        backing_format,
        args.unsafe_mode,
        &open_options(ctx, format),
    )?;
    Ok(0)
}
