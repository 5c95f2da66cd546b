//! `vdisk create` and `vdisk convert`: making new images.

use crate::common::{CmdResult, Ctx, Failure, parse_format, parse_format_opt, parse_options};
use crate::output::{emit, format_name};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use vdisk::{ConvertOptions, CreateOptions, Disk, MissingParent, parse_size};

/// Arguments of `vdisk create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Format of the new image (raw, vhd/vpc, vhdx, vmdk).
    #[arg(short = 'f', value_name = "FMT")]
    pub format: String,
    /// Format options, `key=value,key=value` (may be repeated).
    #[arg(short = 'o', value_name = "OPTS")]
    pub options: Vec<String>,
    /// Make a differencing image over this parent (a relative name is relative to FILE's directory).
    #[arg(short = 'b', value_name = "BACKING")]
    pub backing: Option<String>,
    /// Format of the parent (probed when absent).
    #[arg(short = 'F', value_name = "BACKING_FMT", requires = "backing")]
    pub backing_format: Option<String>,
    /// The new image.
    pub file: PathBuf,
    /// Virtual size (bytes, or with a K/M/G/T suffix); defaults to the parent's size with -b.
    pub size: Option<String>,
}

/// Run `vdisk create`.
pub fn run_create(ctx: &Ctx, args: &CreateArgs) -> CmdResult {
    let format = parse_format(&args.format)?;
    let size = args.size.as_deref().map(parse_size).transpose()?;
    if size.is_none() && args.backing.is_none() {
        return Err(Failure::new(format!(
            "{}: an image size is required (or -b BACKING)",
            args.file.display()
        )));
    }
    let mut options = CreateOptions::new(format, size.unwrap_or(0));
    options.size = size;
    options.options = parse_options(&args.options)?;
    options.backing = args.backing.clone();
    options.backing_format = parse_format_opt(args.backing_format.as_deref())?;
    options.resolver = ctx.resolver.clone();
    vdisk::create(&args.file, &options)?;

    // Report like qemu-img, with the size the image really got (the parent's, with -b alone).
    let created = size.or_else(|| {
        ctx.open(&args.file, Some(format), false, MissingParent::Placeholder)
            .ok()
            .map(|i| i.virtual_size())
    });
    let mut line = format!("Formatting '{}', fmt={}", args.file.display(), format_name(format));
    if let Some(size) = created {
        line.push_str(&format!(" size={size}"));
    }
    if let Some(b) = &args.backing {
        line.push_str(&format!(" backing_file={b}"));
    }
    if let Some(f) = &options.backing_format {
        line.push_str(&format!(" backing_fmt={}", format_name(*f)));
    }
    for list in &args.options {
        for piece in list.split(',').filter(|p| !p.is_empty()) {
            line.push(' ');
            line.push_str(piece);
        }
    }
    line.push('\n');
    emit(&line);
    Ok(0)
}

/// Arguments of `vdisk convert`.
#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    /// Format of SRC (probed when absent).
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    /// Format of DST (raw, vhd/vpc, vhdx, vmdk).
    #[arg(short = 'O', value_name = "FMT")]
    pub output_format: String,
    /// Options of DST's format, `key=value,key=value` (may be repeated).
    #[arg(short = 'o', value_name = "OPTS")]
    pub options: Vec<String>,
    /// Show a progress bar.
    #[arg(short = 'p')]
    pub progress: bool,
    /// Cache mode of DST, as in qemu-img: `unsafe` (default: no flushes, the host writes the data
    /// back in its own time) or `writeback` (flush to stable storage before exiting).
    #[arg(short = 't', value_name = "CACHE", default_value = "unsafe", value_parser = ["unsafe", "writeback"])]
    pub cache: String,
    /// Threads reading (and decompressing) the source, as qemu-img's coroutines (default: one
    /// per core).
    #[arg(short = 'm', value_name = "N", value_parser = clap::value_parser!(u16).range(1..=16))]
    pub workers: Option<u16>,
    /// Allow out-of-order writes to DST (faster, the output's layout follows the reads);
    /// refused with a compressed (stream-optimized) output.
    #[arg(short = 'W')]
    pub out_of_order: bool,
    /// Zero detection: source data that is all zeros in pieces of this size (bytes or with a
    /// K/M suffix, a multiple of 512) is not written; 0 writes every byte of the source's
    /// data. Default 64K.
    #[arg(short = 'S', value_name = "SIZE")]
    pub sparse_size: Option<String>,
    /// Compress the output: for VMDK, the streamOptimized subformat (qemu-img's meaning).
    #[arg(short = 'c')]
    pub compress: bool,
    /// The image to copy (with its whole backing chain).
    pub src: PathBuf,
    /// The new standalone image.
    pub dst: PathBuf,
}

const MIB: u64 = 1 << 20;

/// Run `vdisk convert`.
pub fn run_convert(ctx: &Ctx, args: &ConvertArgs) -> CmdResult {
    let src_format = parse_format_opt(args.format.as_deref())?;
    let dst_format = parse_format(&args.output_format)?;
    let mut options = parse_options(&args.options)?;
    if args.compress {
        if dst_format != vdisk::Format::Vmdk {
            return Err(Failure::new(format!(
                "compression (-c) is supported for VMDK output only (as stream-optimized), not {}",
                format_name(dst_format)
            )));
        }
        match options.get("subformat") {
            None => options.set("subformat", "streamOptimized"),
            Some(s) if s.eq_ignore_ascii_case("streamOptimized") => {}
            Some(s) => {
                return Err(Failure::new(format!(
                    "compression (-c) needs subformat=streamOptimized, not {s}"
                )));
            }
        }
    }
    let zero_granularity = match args.sparse_size.as_deref().map(parse_size).transpose()? {
        Some(n) if n % 512 != 0 => {
            return Err(Failure::new(format!("-S {n}: the size must be a multiple of 512")));
        }
        n => n.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
    };
    let src = ctx.open(&args.src, src_format, false, MissingParent::Fail)?;
    // Replacing a file the source is read from would destroy it (or a child relying on it).
    if let Ok(dst) = args.dst.canonicalize() {
        let top = args.src.canonicalize().ok();
        let in_chain = src.layers().filter_map(|(_, p)| p.and_then(|p| p.canonicalize().ok()));
        if top.into_iter().chain(in_chain).any(|p| p == dst) {
            return Err(Failure::new(format!(
                "{}: the output file is the input file or one of its backing files; convert into a new file",
                args.dst.display()
            )));
        }
    }
    let bar = args.progress.then(|| {
        let bar = ProgressBar::new(src.virtual_size());
        let style = ProgressStyle::with_template("{bar:40} {percent:>3}% {bytes}/{total_bytes} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar
    });
    let mut report = |done: u64, total: u64| {
        if let Some(bar) = &bar {
            bar.set_length(total);
            bar.set_position(done);
        }
    };
    let convert_options = ConvertOptions {
        format: dst_format,
        options,
        progress: if bar.is_some() { Some(&mut report) } else { None },
        durable: args.cache == "writeback",
        workers: args.workers.map_or(0, usize::from),
        out_of_order: args.out_of_order,
        zero_granularity,
    };
    let azure = dst_format == vdisk::Format::Vhd && convert_options.options.get("azure").is_some_and(|v| v == "on");
    let size = src.virtual_size();
    let result = vdisk::convert(&src, &args.dst, convert_options);
    if azure && result.is_ok() && size % MIB != 0 {
        emit(&format!(
            "Note: virtual size rounded up from {size} to {} bytes (Azure needs a whole number of MiB)\n",
            size.div_ceil(MIB) * MIB
        ));
    }
    if let Some(bar) = &bar {
        if result.is_ok() {
            bar.finish();
        } else {
            bar.abandon();
        }
    }
    result?;
    Ok(0)
}
