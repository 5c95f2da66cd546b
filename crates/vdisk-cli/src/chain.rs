//! `vdisk commit` and `vdisk rebase`: operations on a child and its parent.

use crate::common::{CmdResult, Ctx, Failure, parse_format_opt};
use crate::output::emit;
use crate::progress::Progress;
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
    /// Keep the child as it is afterwards: qemu-img's "skip emptying" (vdisk's default).
    #[arg(short = 'd', conflicts_with_all = ["empty", "remove"])]
    pub keep: bool,
    /// Commit into this image of FILE's backing chain instead of the parent (the images in
    /// between no longer read as before; FILE is kept, as `-d`).
    #[arg(short = 'b', value_name = "BASE", conflicts_with_all = ["empty", "remove"])]
    pub base: Option<PathBuf>,
    /// Show progress (a bar on a terminal, qemu-img's `(xx.xx/100%)` lines otherwise).
    #[arg(short = 'p')]
    pub progress: bool,
    /// Cache mode of the images written, as in qemu-img (see `convert -t`; default writeback:
    /// vdisk always flushes what it committed).
    #[arg(short = 't', value_name = "CACHE", value_parser = crate::convert::CACHE_MODES)]
    pub cache: Option<String>,
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
    /// Show progress of the data copied in safe mode (a bar on a terminal, qemu-img's
    /// `(xx.xx/100%)` lines otherwise).
    #[arg(short = 'p')]
    pub progress: bool,
    /// Cache mode of the image written, as in qemu-img (see `convert -t`).
    #[arg(short = 't', value_name = "CACHE", value_parser = crate::convert::CACHE_MODES)]
    pub cache: Option<String>,
    /// Cache mode of the images read, as in qemu-img (accepted; vdisk reads through the page
    /// cache).
    #[arg(short = 'T', value_name = "SRC_CACHE", value_parser = crate::convert::CACHE_MODES)]
    pub source_cache: Option<String>,
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
    let mut progress = Progress::new(args.progress);
    let result = vdisk::commit_into(
        &args.file,
        args.base.as_deref(),
        &open_options(ctx, format),
        after,
        &mut |done, total| progress.update(done, total),
    );
    progress.finish(result.is_ok());
    result?;
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
    let mut progress = Progress::new(args.progress && !args.unsafe_mode);
    let result = vdisk::rebase_with_progress(
        &args.file,
        backing,
        backing_format,
        args.unsafe_mode,
        &open_options(ctx, format),
        &mut |done, total| progress.update(done, total),
    );
    progress.finish(result.is_ok());
    result?;
    Ok(0)
}
