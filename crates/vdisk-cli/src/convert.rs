//! `vdisk create` and `vdisk convert`: making new images.

use crate::common::{
    CmdResult, Ctx, Failure, ForceShare, options_help, options_help_asked, parse_format, parse_format_opt,
    parse_options,
};
use crate::output::{emit, emit_data, format_name};
use crate::progress::Progress;
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
    if options_help_asked(&args.options) {
        emit_data(&options_help(format, true)?);
        return Ok(0);
    }
    let mut format_options = parse_options(&args.options)?;
    // qemu-img takes these as options too.
    let option_size = format_options.take_str("size");
    let backing = args.backing.clone().or(format_options.take_str("backing_file"));
    let backing_format = args.backing_format.clone().or(format_options.take_str("backing_fmt"));
    let size = match (args.size.as_deref(), option_size.as_deref()) {
        (Some(a), Some(o)) if parse_size(a)? != parse_size(o)? => {
            return Err(Failure::new(format!(
                "{}: the size is given twice, differently ({a} and size={o})",
                args.file.display()
            )));
        }
        (a, o) => a.or(o).map(parse_size).transpose()?,
    };
    if size.is_none() && backing.is_none() {
        return Err(Failure::new(format!(
            "{}: an image size is required (or -b BACKING)",
            args.file.display()
        )));
    }
    let mut options = CreateOptions::new(format, size.unwrap_or(0));
    options.size = size;
    options.options = format_options;
    options.backing = backing.clone();
    options.backing_format = parse_format_opt(backing_format.as_deref())?;
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
    if let Some(b) = &backing {
        line.push_str(&format!(" backing_file={b}"));
    }
    if let Some(f) = &options.backing_format {
        line.push_str(&format!(" backing_fmt={}", format_name(*f)));
    }
    for list in &args.options {
        let given_apart = |p: &&str| {
            ["size=", "backing_file=", "backing_fmt="]
                .iter()
                .all(|k| !p.starts_with(k))
        };
        for piece in list.split(',').filter(|p| !p.is_empty()).filter(given_apart) {
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
    /// back in its own time); `writeback`, `writethrough`, `directsync` or `none`: the output
    /// is on stable storage before exiting (vdisk writes through the page cache and flushes;
    /// it does not use O_DIRECT).
    #[arg(short = 't', value_name = "CACHE", default_value = "unsafe", value_parser = CACHE_MODES)]
    pub cache: String,
    /// Cache mode of SRC, as in qemu-img (accepted for compatibility: vdisk reads through the
    /// page cache in every mode).
    #[arg(short = 'T', value_name = "SRC_CACHE", value_parser = CACHE_MODES)]
    pub source_cache: Option<String>,
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
    /// Do not create DST: copy into the existing image (of format -O, at least as large as
    /// SRC); zeros of SRC are written as zeros.
    #[arg(short = 'n', conflicts_with_all = ["options", "compress", "backing"])]
    pub existing: bool,
    /// Make DST a child of this backing file (relative to DST's directory), holding only what
    /// differs from it.
    #[arg(short = 'B', value_name = "BACKING")]
    pub backing: Option<String>,
    /// Format of the backing file (probed when absent).
    #[arg(short = 'F', value_name = "BACKING_FMT", requires = "backing")]
    pub backing_format: Option<String>,
    /// The image to copy (with its whole backing chain).
    pub src: PathBuf,
    /// The new standalone image.
    pub dst: PathBuf,
    #[command(flatten)]
    pub share: ForceShare,
}

const MIB: u64 = 1 << 20;

/// qemu-img's cache modes.
pub const CACHE_MODES: [&str; 5] = ["none", "writeback", "writethrough", "directsync", "unsafe"];

/// Run `vdisk convert`.
pub fn run_convert(ctx: &Ctx, args: &ConvertArgs) -> CmdResult {
    let ctx = &ctx.sharing(args.share.force_share);
    let src_format = parse_format_opt(args.format.as_deref())?;
    let dst_format = parse_format(&args.output_format)?;
    if options_help_asked(&args.options) {
        emit_data(&options_help(dst_format, false)?);
        return Ok(0);
    }
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
    // Writing a file the source is read from would destroy it (or a child relying on it).
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
    let mut progress = Progress::new(args.progress);
    let mut report = |done: u64, total: u64| progress.update(done, total);
    let convert_options = ConvertOptions {
        format: dst_format,
        options,
        progress: Some(&mut report),
        durable: args.cache != "unsafe",
        workers: args.workers.map_or(0, usize::from),
        out_of_order: args.out_of_order,
        zero_granularity,
        existing: args.existing,
        backing: args.backing.clone(),
        backing_format: parse_format_opt(args.backing_format.as_deref())?,
        resolver: Some(ctx.resolver.clone()),
    };
    let azure = dst_format == vdisk::Format::Vhd && convert_options.options.get("azure").is_some_and(|v| v == "on");
    let size = src.virtual_size();
    let result = vdisk::convert(&src, &args.dst, convert_options);
    progress.finish(result.is_ok());
    if azure && result.is_ok() && size % MIB != 0 {
        emit(&format!(
            "Note: virtual size rounded up from {size} to {} bytes (Azure needs a whole number of MiB)\n",
            size.div_ceil(MIB) * MIB
        ));
    }
    result?;
    Ok(0)
}
