//! `vdisk resize`: change an image's virtual size.

use crate::common::{CmdResult, Ctx, Failure, parse_format_opt};
use crate::output::emit;
use std::path::PathBuf;
use vdisk::disk_resize::{ResizeOptions, SizeChange};

/// Arguments of `vdisk resize`.
#[derive(Debug, clap::Args)]
pub struct ResizeArgs {
    /// Image format (probed when absent).
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    /// Allow making the image smaller. Refused when the image stores data past the new end
    /// (raw images: that data is cut off) unless --discard-data is given too.
    #[arg(long)]
    pub shrink: bool,
    /// With --shrink: drop data stored past the new end.
    #[arg(long, requires = "shrink")]
    pub discard_data: bool,
    /// The image.
    pub file: PathBuf,
    /// The new size, or `+SIZE` / `-SIZE` relative to the current one (K/M/G/T suffixes).
    #[arg(allow_hyphen_values = true, value_name = "[+|-]SIZE")]
    pub size: String,
}

/// Run `vdisk resize`.
pub fn run(ctx: &Ctx, args: &ResizeArgs) -> CmdResult {
    let format = parse_format_opt(args.format.as_deref())?;
    let change: SizeChange = args.size.parse().map_err(Failure::from)?;
    let options = ResizeOptions {
        shrink: args.shrink,
        allow_data_loss: args.discard_data,
        format,
    };
    let open = ctx.base_options();
    vdisk::resize(&args.file, change, &options, &open)?;
    emit("Image resized.\n");
    Ok(0)
}
