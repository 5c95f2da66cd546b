//! `vdisk map`: the allocation map of a whole chain, as `qemu-img map` prints it.

use crate::common::{CmdResult, Ctx, ForceShare, in_file, parse_format_opt};
use crate::output::{OutputFormat, json_line};
use serde_json::{Map, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use vdisk::ops::{MapEntry, map_range};
use vdisk::{Format, Image, MissingParent};

/// Arguments of `vdisk map`.
#[derive(Debug, clap::Args)]
pub struct MapArgs {
    /// Image format (probed when absent).
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t, value_name = "FMT")]
    pub output: OutputFormat,
    /// Map from this guest byte offset on (bytes, or with a K/M/G/T suffix).
    #[arg(long, value_name = "OFFSET", value_parser = parse_offset)]
    pub start_offset: Option<u64>,
    /// Map at most this many bytes (bytes, or with a K/M/G/T suffix).
    #[arg(long, value_name = "LENGTH", value_parser = parse_offset)]
    pub max_length: Option<u64>,
    /// The image.
    pub file: PathBuf,
    #[command(flatten)]
    pub share: ForceShare,
}

/// The map of `image`, one run at a time, with `qemu-img`'s conventions applied:
///
/// - in a raw layer every byte lies at its own offset, so allocated runs there (zero ones too)
///   carry `offset` = `start`;
/// - QEMU's `vpc` driver reports a block a VHD leaves unallocated as allocated zeros, so such
///   runs are `present` (a VHD answers for itself; QEMU opens no VHD parent);
/// - QEMU's `vmdk` and `vpc` drivers report a hole of a flat extent or of a fixed VHD as data
///   that reads as zeros, at its place in the file, so such runs are `data` too (a raw file's
///   holes are not);
/// - compressed runs (VMDK stream-optimized grains) are `compressed` and have no `offset`.
///
/// Runs that become equal under these conventions are merged again. Memory stays constant
/// whatever the image holds. Only the guest bytes from `start` on, at most `max_length` of
/// them, are mapped (`--start-offset`, `--max-length`).
pub fn each_entry(
    image: &Image,
    start: u64,
    max_length: u64,
    mut sink: impl FnMut(MapEntry) -> vdisk::Result<()>,
) -> vdisk::Result<()> {
    let formats: Vec<Format> = image.layers().map(|(l, _)| l.format()).collect();
    let mut pending: Option<MapEntry> = None;
    map_range(image, start, max_length, |mut e| {
        let format = formats.get(e.depth as usize);
        if e.present && e.offset.is_none() && format == Some(&Format::Raw) {
            e.offset = Some(e.start);
        }
        if !e.present && format == Some(&Format::Vhd) {
            e.present = true;
        }
        if e.zero && e.offset.is_some() && format.is_some_and(|f| *f != Format::Raw) {
            e.data = true;
        }
        match &mut pending {
            Some(last) if last.extends(&e) => {
                last.length += e.length;
                Ok(())
            }
            _ => match pending.replace(e) {
                Some(done) => sink(done),
                None => Ok(()),
            },
        }
    })?;
    match pending {
        Some(done) => sink(done),
        None => Ok(()),
    }
}

/// Run `vdisk map`: the runs are printed as they are found.
pub fn run(ctx: &Ctx, args: &MapArgs) -> CmdResult {
    let ctx = &ctx.sharing(args.share.force_share);
    let format = parse_format_opt(args.format.as_deref())?;
    let image = ctx.open(&args.file, format, false, MissingParent::Fail)?;
    let names = layer_names(&image, &ctx.image_path(&args.file));
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut first = true;
    let (start, max) = (args.start_offset.unwrap_or(0), args.max_length.unwrap_or(u64::MAX));
    let result = match args.output {
        OutputFormat::Json => {
            let r = each_entry(&image, start, max, |e| {
                let sep = if std::mem::take(&mut first) { "[" } else { ",\n" };
                write_out(&mut out, &format!("{sep}{}", json_entry(&e)))
            });
            let close = if first { "[]\n" } else { "]\n" };
            r.and_then(|()| write_out(&mut out, close))
        }
        OutputFormat::Human => write_out(&mut out, &human_header()).and_then(|()| {
            each_entry(&image, start, max, |e| match human_line(&e, &names) {
                Some(line) => write_out(&mut out, &line),
                None => Ok(()),
            })
        }),
    };
    let flushed = out.flush();
    result.map_err(|e| in_file(&args.file, e))?;
    flushed.map_err(|e| crate::common::Failure::new(format!("writing the map: {e}")))?;
    Ok(0)
}

/// A byte count or offset as `--start-offset` and `--max-length` take it.
fn parse_offset(text: &str) -> Result<u64, String> {
    vdisk::parse_size(text).map_err(|e| e.to_string())
}

/// The name of each layer's file in the `File` column, as `qemu-img` shows it: the name as given
/// for the top, and below it the name the child records, relative to the child's directory as
/// given (QEMU's `path_combine`: `c.vmdk` over `b.vmdk` shows `b.vmdk`). A name QEMU could not
/// have used (a Windows path, none recorded) shows the path the parent was opened from.
fn layer_names(image: &Image, file: &Path) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (i, (_, path)) in image.layers().enumerate() {
        let opened = path.map(|p| p.display().to_string()).unwrap_or_default();
        let name = match names.last() {
            None => file.display().to_string(),
            Some(child_name) => image
                .layers()
                .nth(i - 1)
                .and_then(|(child, _)| child.info().backing_filename)
                .filter(|recorded| !recorded.contains('\\') && !recorded.is_empty())
                .map(|recorded| match child_name.rfind('/') {
                    Some(_) if recorded.starts_with('/') => recorded,
                    Some(slash) => format!("{}{recorded}", &child_name[..=slash]),
                    None => recorded,
                })
                .unwrap_or(opened),
        };
        names.push(name);
    }
    names
}

/// Write `text` to the map's output (a closed pipe ends the map with an error).
fn write_out(out: &mut impl Write, text: &str) -> vdisk::Result<()> {
    out.write_all(text.as_bytes())
        .map_err(|e| vdisk::Error::io(e, "writing the map"))
}

/// One `qemu-img map --output=json` object, on one line.
fn json_entry(e: &MapEntry) -> String {
    let mut o = Map::new();
    o.insert("start".into(), e.start.into());
    o.insert("length".into(), e.length.into());
    o.insert("depth".into(), e.depth.into());
    o.insert("present".into(), e.present.into());
    o.insert("zero".into(), e.zero.into());
    o.insert("data".into(), e.data.into());
    o.insert("compressed".into(), e.compressed.into());
    if let Some(offset) = e.offset {
        o.insert("offset".into(), Value::from(offset));
    }
    json_line(&o)
}

/// `printf("%#-16x")`: `0x`-prefixed except for zero, left-aligned in 16 columns.
fn hex16(n: u64) -> String {
    let text = if n == 0 { "0".to_string() } else { format!("{n:#x}") };
    format!("{text:<16}")
}

/// The header of `qemu-img map`'s table.
fn human_header() -> String {
    format!("{:<16}{:<16}{:<16}{}\n", "Offset", "Length", "Mapped to", "File")
}

/// One line of `qemu-img map`'s table, for runs that hold data (where they lie, in which file).
fn human_line(e: &MapEntry, names: &[String]) -> Option<String> {
    if !e.data || e.zero {
        return None;
    }
    let mapped = match e.offset {
        Some(offset) => hex16(offset),
        None => format!("{:<16}", "-"),
    };
    let file = names.get(e.depth as usize).map(String::as_str).unwrap_or("");
    Some(format!("{}{}{}{}\n", hex16(e.start), hex16(e.length), mapped, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_like_printf() {
        assert_eq!(hex16(0), format!("{:<16}", "0"));
        assert_eq!(hex16(0x10000), format!("{:<16}", "0x10000"));
    }
}
