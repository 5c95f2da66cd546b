//! `vdisk map`: the allocation map of a whole chain, as `qemu-img map` prints it.

use crate::common::{CmdResult, Ctx, in_file, parse_format_opt};
use crate::output::{OutputFormat, emit, json_line};
use serde_json::{Map, Value};
use std::path::PathBuf;
use vdisk::ops::{MapEntry, map};
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
    /// The image.
    pub file: PathBuf,
}

/// The map of `image` with `qemu-img`'s conventions applied: in a raw layer every byte lies at
/// its own offset, so allocated runs there (zero ones too) carry `offset` = `start`.
pub fn entries(image: &Image) -> vdisk::Result<Vec<MapEntry>> {
    let formats: Vec<Format> = image.layers().map(|(l, _)| l.format()).collect();
    let mut entries = map(image)?;
    for e in &mut entries {
        if e.present && e.offset.is_none() && formats.get(e.depth as usize) == Some(&Format::Raw) {
            e.offset = Some(e.start);
        }
    }
    Ok(entries)
}

/// Run `vdisk map`.
pub fn run(ctx: &Ctx, args: &MapArgs) -> CmdResult {
    let format = parse_format_opt(args.format.as_deref())?;
    let image = ctx.open(&args.file, format, false, MissingParent::Fail)?;
    // The file each layer came from: the name as given for the top, the opened path below.
    let names: Vec<String> = image
        .layers()
        .enumerate()
        .map(|(i, (_, path))| match (i, path) {
            (0, _) => args.file.display().to_string(),
            (_, path) => path.map(|p| p.display().to_string()).unwrap_or_default(),
        })
        .collect();
    let entries = entries(&image).map_err(|e| in_file(&args.file, e))?;
    let text = match args.output {
        OutputFormat::Json => json_map(&entries),
        OutputFormat::Human => human_map(&entries, &names),
    };
    emit(&text);
    Ok(0)
}

/// `qemu-img map --output=json`: one object per line, `compressed` always false here.
fn json_map(entries: &[MapEntry]) -> String {
    let lines: Vec<String> = entries
        .iter()
        .map(|e| {
            let mut o = Map::new();
            o.insert("start".into(), e.start.into());
            o.insert("length".into(), e.length.into());
            o.insert("depth".into(), e.depth.into());
            o.insert("present".into(), e.present.into());
            o.insert("zero".into(), e.zero.into());
            o.insert("data".into(), e.data.into());
            o.insert("compressed".into(), false.into());
            if let Some(offset) = e.offset {
                o.insert("offset".into(), Value::from(offset));
            }
            json_line(&o)
        })
        .collect();
    format!("[{}]\n", lines.join(",\n"))
}

/// `printf("%#-16x")`: `0x`-prefixed except for zero, left-aligned in 16 columns.
fn hex16(n: u64) -> String {
    let text = if n == 0 { "0".to_string() } else { format!("{n:#x}") };
    format!("{text:<16}")
}

/// `qemu-img map`'s table: the runs that hold data, with where they lie and in which file.
fn human_map(entries: &[MapEntry], names: &[String]) -> String {
    let mut out = format!("{:<16}{:<16}{:<16}{}\n", "Offset", "Length", "Mapped to", "File");
    for e in entries.iter().filter(|e| e.data && !e.zero) {
        let mapped = match e.offset {
            Some(offset) => hex16(offset),
            None => format!("{:<16}", "-"),
        };
        let file = names.get(e.depth as usize).map(String::as_str).unwrap_or("");
        out.push_str(&format!("{}{}{}{}\n", hex16(e.start), hex16(e.length), mapped, file));
    }
    out
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
