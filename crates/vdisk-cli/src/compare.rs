//! `vdisk compare`: are two images' guest-visible contents the same?

use crate::common::{CmdResult, Ctx, ForceShare, parse_format_opt};
use crate::output::emit;
use crate::progress::Progress;
use std::path::PathBuf;
use vdisk::ops::{Comparison, compare_with_progress};
use vdisk::{Disk, MissingParent};

/// Exit status when the contents differ.
const DIFFERENT: u8 = 1;
/// Exit status of any error.
const ERROR: u8 = 2;

/// Arguments of `vdisk compare`.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// Format of the first image (probed when absent).
    #[arg(short = 'f', value_name = "FMT")]
    pub format_a: Option<String>,
    /// Format of the second image (probed when absent).
    #[arg(short = 'F', value_name = "FMT")]
    pub format_b: Option<String>,
    /// Strict mode: sizes and allocation must match too.
    #[arg(short = 's')]
    pub strict: bool,
    /// Show progress (a bar on a terminal, qemu-img's `(xx.xx/100%)` lines otherwise).
    #[arg(short = 'p')]
    pub progress: bool,
    /// Cache mode of the images, as in qemu-img (accepted; vdisk reads through the page cache).
    #[arg(short = 'T', value_name = "SRC_CACHE", value_parser = crate::convert::CACHE_MODES)]
    pub source_cache: Option<String>,
    /// The first image.
    pub a: PathBuf,
    /// The second image.
    pub b: PathBuf,
    #[command(flatten)]
    pub share: ForceShare,
}

/// Run `vdisk compare`: exit 0 identical, 1 different, 2 error.
pub fn run(ctx: &Ctx, args: &CompareArgs) -> CmdResult {
    let ctx = &ctx.sharing(args.share.force_share);
    compare_images(ctx, args).map_err(|f| f.with_code(ERROR))
}

fn compare_images(ctx: &Ctx, args: &CompareArgs) -> CmdResult {
    let fa = parse_format_opt(args.format_a.as_deref())?;
    let fb = parse_format_opt(args.format_b.as_deref())?;
    let a = ctx.open(&args.a, fa, false, MissingParent::Fail)?;
    let b = ctx.open(&args.b, fb, false, MissingParent::Fail)?;
    if !args.strict && a.virtual_size() != b.virtual_size() {
        emit("Warning: Image size mismatch!\n");
    }
    let mut progress = Progress::new(args.progress);
    let outcome = compare_with_progress(&a, &b, args.strict, &mut |done, total| progress.update(done, total));
    progress.finish(outcome.is_ok());
    let outcome = outcome?;
    let (text, code) = match outcome {
        Comparison::Identical => ("Images are identical.\n".to_string(), 0),
        Comparison::ContentMismatch { offset } => (format!("Content mismatch at offset {offset}!\n"), DIFFERENT),
        Comparison::AllocationMismatch { offset } => (
            format!("Strict mode: Offset {offset} block status mismatch!\n"),
            DIFFERENT,
        ),
        Comparison::SizeMismatch { .. } => ("Strict mode: Image size mismatch!\n".to_string(), DIFFERENT),
    };
    emit(&text);
    Ok(code)
}
