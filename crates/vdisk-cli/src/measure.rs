//! `vdisk measure`: how many bytes a new image needs.

use crate::common::{CmdResult, Ctx, ForceShare, in_file, parse_format, parse_format_opt, parse_options};
use crate::output::{OutputFormat, emit_data, pretty_json};
use serde_json::{Map, Value};
use std::path::PathBuf;
use vdisk::disk_resize::{MeasureSource, fitting_size, measure};
use vdisk::{Disk, MissingParent, parse_size};

/// Arguments of `vdisk measure`.
#[derive(Debug, clap::Args)]
pub struct MeasureArgs {
    /// Format of the image to measure for (raw, vhd/vpc, vhdx, vmdk).
    #[arg(short = 'O', value_name = "FMT")]
    pub output_format: String,
    /// Options of that format, `key=value,key=value` (may be repeated).
    #[arg(short = 'o', value_name = "OPTS")]
    pub options: Vec<String>,
    /// Measure an empty image of this virtual size.
    #[arg(long, value_name = "SIZE", conflicts_with_all = ["src", "format"], required_unless_present_any = ["src", "fit"])]
    pub size: Option<String>,
    /// Instead: the largest virtual size whose image, fully allocated, fits in FILE_SIZE bytes
    /// (for a host quota).
    #[arg(long, value_name = "FILE_SIZE", conflicts_with_all = ["src", "format", "size"])]
    pub fit: Option<String>,
    /// Format of SRC (probed when absent).
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t, value_name = "FMT")]
    pub output: OutputFormat,
    /// Measure a copy of this image (with its whole chain).
    pub src: Option<PathBuf>,
    #[command(flatten)]
    pub share: ForceShare,
}

/// Run `vdisk measure`.
pub fn run(ctx: &Ctx, args: &MeasureArgs) -> CmdResult {
    let ctx = &ctx.sharing(args.share.force_share);
    let target = parse_format(&args.output_format)?;
    let options = parse_options(&args.options)?;
    if let Some(fit) = &args.fit {
        let size = fitting_size(vdisk::driver(target)?, &options, parse_size(fit)?, 512)?;
        let text = match args.output {
            OutputFormat::Json => {
                let mut o = Map::new();
                o.insert("virtual-size".into(), size.into());
                pretty_json(&Value::Object(o))
            }
            OutputFormat::Human => format!("largest virtual size: {size}\n"),
        };
        emit_data(&text);
        return Ok(0);
    }
    let input = match (&args.size, &args.src) {
        (Some(size), _) => MeasureSource::empty(parse_size(size)?),
        (None, Some(src)) => {
            let format = parse_format_opt(args.format.as_deref())?;
            let image = ctx.open(src, format, false, MissingParent::Fail)?;
            // Only data runs are kept, neighbours merged: bounded by the data the files hold.
            let mut data: Vec<(u64, u64)> = Vec::new();
            crate::map::each_entry(&image, 0, u64::MAX, |e| {
                match data.last_mut() {
                    _ if !e.data => {}
                    Some((start, len)) if *start + *len == e.start => *len += e.length,
                    _ => data.push((e.start, e.length)),
                }
                Ok(())
            })
            .map_err(|e| in_file(src, e))?;
            MeasureSource {
                virtual_size: image.virtual_size(),
                data,
                measured_image: true,
            }
        }
        (None, None) => return Err(crate::common::Failure::new("either --size SIZE or SRC is required")),
    };
    let m = measure(vdisk::driver(target)?, &options, &input)?;
    let text = match args.output {
        OutputFormat::Json => {
            let mut o = Map::new();
            o.insert("required".into(), m.required.into());
            o.insert("fully-allocated".into(), m.fully_allocated.into());
            pretty_json(&Value::Object(o))
        }
        OutputFormat::Human => {
            format!(
                "required size: {}\nfully allocated size: {}\n",
                m.required, m.fully_allocated
            )
        }
    };
    emit_data(&text);
    Ok(0)
}
