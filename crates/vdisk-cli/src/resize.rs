//! `vdisk resize`: change an image's virtual size.

use crate::common::{CmdResult, Ctx, Failure, parse_format_opt};
use crate::output::{emit, warn};
use std::path::PathBuf;
use vdisk::disk_resize::{ResizeOptions, SizeChange};

/// Arguments of `vdisk resize`.
#[derive(Debug, clap::Args)]
pub struct ResizeArgs {
    /// Image format (probed when absent).
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    /// Allow making the image smaller, as in qemu-img: data stored past the new end is cut off,
    /// with a warning naming the smallest size that would keep it.
    #[arg(long)]
    pub shrink: bool,
    /// Accepted for older scripts: --shrink alone now drops data stored past the new end.
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
    // qemu-img's --shrink cuts whatever lies past the new end; --discard-data adds nothing.
    let options = ResizeOptions {
        shrink: args.shrink,
        allow_data_loss: args.shrink,
        format,
    };
    let open = ctx.base_options();
    let resized = vdisk::resize(&args.file, change, &options, &open)?;
    if let Some(safe) = resized.data_cut {
        warn(&format!(
            "{}: shrinking to {} bytes cut off data stored up to byte {safe}; the smallest safe size was {safe} bytes",
            args.file.display(),
            resized.new_size
        ));
    }
    emit("Image resized.\n");
    Ok(0)
}
