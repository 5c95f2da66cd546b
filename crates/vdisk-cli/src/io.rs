//! `vdisk io`: a small `qemu-io` for tests and debugging.
//!
//! Commands (each given with `-c`): `read [-P PATTERN] OFF LEN`, `write [-P PATTERN | -z] OFF LEN`,
//! `discard OFF LEN`, `flush`. Every command is parsed before the image is opened, and the image
//! is opened for writing only when some command writes.

use crate::common::{CmdResult, Ctx, Failure, ForceShare, parse_format_opt};
use crate::output::{emit, io_size_str};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use vdisk::bytes::{read_bytes, write_bytes, zero_bytes};
use vdisk::{Disk, Error, Image, MissingParent, parse_size};

/// `qemu-io`'s default write pattern.
const DEFAULT_PATTERN: u8 = 0xcd;
/// Bytes moved per request, so a large LEN does not need a buffer that large.
const CHUNK: u64 = 1 << 20;

/// Arguments of `vdisk io`.
#[derive(Debug, clap::Args)]
pub struct IoArgs {
    /// Image format (probed when absent).
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    /// A command: `read [-P PATTERN] OFF LEN`, `write [-P PATTERN | -z] OFF LEN`, `discard OFF LEN`,
    /// `flush` (may be repeated; run in order).
    #[arg(short = 'c', value_name = "CMD", required = true)]
    pub commands: Vec<String>,
    /// Open the image read-only even if a command writes (the write then fails).
    #[arg(short = 'r', long = "read-only")]
    pub read_only: bool,
    /// The image.
    pub file: PathBuf,
    #[command(flatten)]
    pub share: ForceShare,
}

/// What a write stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    /// Every byte is this value.
    Pattern(u8),
    /// Zeros, through the format's zeroing path.
    Zero,
}

/// One parsed command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IoCmd {
    /// Read, optionally verifying that every byte equals the pattern.
    Read { offset: u64, len: u64, pattern: Option<u8> },
    /// Write a pattern or zeros.
    Write { offset: u64, len: u64, fill: Fill },
    /// Discard (reads as zeros afterwards).
    Discard { offset: u64, len: u64 },
    /// Make writes durable.
    Flush,
}

impl IoCmd {
    fn writes(&self) -> bool {
        matches!(self, IoCmd::Write { .. } | IoCmd::Discard { .. })
    }
}

/// A number as `qemu-io` takes it: decimal or `0x` hex, with an optional K/M/G/T suffix.
fn parse_num(text: &str) -> Result<u64, String> {
    let hex = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X"));
    match hex {
        Some(h) => u64::from_str_radix(h, 16).map_err(|_| format!("invalid number '{text}'")),
        None => parse_size(text).map_err(|_| format!("invalid number '{text}'")),
    }
}

/// A pattern byte as `strtol(.., 0)` reads it: decimal, `0x` hex or `0` octal, 0..=255.
fn parse_pattern(text: &str) -> Result<u8, String> {
    let value = if let Some(h) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        u64::from_str_radix(h, 16)
    } else if text.len() > 1 && text.starts_with('0') {
        u64::from_str_radix(&text[1..], 8)
    } else {
        text.parse()
    };
    value
        .ok()
        .and_then(|v| u8::try_from(v).ok())
        .ok_or_else(|| format!("invalid pattern '{text}' (expected 0..255)"))
}

/// Parse one `-c` command.
fn parse_cmd(text: &str) -> Result<IoCmd, String> {
    let mut words = text.split_whitespace();
    let name = words.next().ok_or("empty command")?;
    let mut pattern = None;
    let mut zero = false;
    let mut positional = Vec::new();
    let mut rest = words.peekable();
    while let Some(w) = rest.next() {
        if w == "-P" {
            let p = rest.next().ok_or_else(|| format!("{name}: -P needs a pattern"))?;
            pattern = Some(parse_pattern(p)?);
        } else if let Some(p) = w.strip_prefix("-P") {
            pattern = Some(parse_pattern(p)?);
        } else if w == "-z" {
            zero = true;
        } else if w.starts_with('-') && w.len() > 1 {
            return Err(format!("{name}: unknown option '{w}'"));
        } else {
            positional.push(w);
        }
    }
    let range = |positional: &[&str]| -> Result<(u64, u64), String> {
        match positional {
            [off, len] => Ok((parse_num(off)?, parse_num(len)?)),
            _ => Err(format!("{name}: expected OFFSET LENGTH")),
        }
    };
    let no_flags = |allowed_p: bool, allowed_z: bool| -> Result<(), String> {
        if pattern.is_some() && !allowed_p {
            return Err(format!("{name}: -P is not allowed here"));
        }
        if zero && !allowed_z {
            return Err(format!("{name}: -z is not allowed here"));
        }
        Ok(())
    };
    match name {
        "read" => {
            no_flags(true, false)?;
            let (offset, len) = range(&positional)?;
            Ok(IoCmd::Read { offset, len, pattern })
        }
        "write" => {
            no_flags(true, true)?;
            if zero && pattern.is_some() {
                return Err("write: -z and -P cannot be used together".into());
            }
            let (offset, len) = range(&positional)?;
            let fill = if zero {
                Fill::Zero
            } else {
                Fill::Pattern(pattern.unwrap_or(DEFAULT_PATTERN))
            };
            Ok(IoCmd::Write { offset, len, fill })
        }
        "discard" => {
            no_flags(false, false)?;
            let (offset, len) = range(&positional)?;
            Ok(IoCmd::Discard { offset, len })
        }
        "flush" => {
            no_flags(false, false)?;
            if !positional.is_empty() {
                return Err("flush: takes no arguments".into());
            }
            Ok(IoCmd::Flush)
        }
        other => Err(format!(
            "unknown command '{other}' (expected read, write, discard or flush)"
        )),
    }
}

/// Run `vdisk io`: exit 1 when a command fails or a pattern does not match.
pub fn run(ctx: &Ctx, args: &IoArgs) -> CmdResult {
    let ctx = &ctx.sharing(args.share.force_share);
    let format = parse_format_opt(args.format.as_deref())?;
    let commands = args
        .commands
        .iter()
        .map(|c| parse_cmd(c).map_err(|e| Failure::new(format!("{}: {e}", args.file.display()))))
        .collect::<Result<Vec<_>, _>>()?;
    let writable = !args.read_only && commands.iter().any(IoCmd::writes);
    let image = ctx.open(&args.file, format, writable, MissingParent::Fail)?;
    let mut status = 0;
    for (cmd, text) in commands.iter().zip(&args.commands) {
        let fail = |e: Error| {
            let msg = vdisk::disk_core::display_chain(&e);
            match e.context().file {
                Some(_) => Failure::new(format!("'{}' failed: {msg}", text.trim())),
                None => Failure::new(format!("{}: '{}' failed: {msg}", args.file.display(), text.trim())),
            }
        };
        let start = Instant::now();
        match *cmd {
            IoCmd::Read { offset, len, pattern } => {
                let ok = read(&image, offset, len, pattern).map_err(fail)?;
                if !ok {
                    emit(&format!(
                        "Pattern verification failed at offset {offset}, {len} bytes\n"
                    ));
                    status = 1;
                }
                report("read", offset, len, start.elapsed());
            }
            IoCmd::Write { offset, len, fill } => {
                write(&image, offset, len, fill).map_err(fail)?;
                report("wrote", offset, len, start.elapsed());
            }
            IoCmd::Discard { offset, len } => {
                check_range(&image, offset, len).map_err(fail)?;
                zero_bytes(&image, offset, len, true).map_err(fail)?;
                report("discard", offset, len, start.elapsed());
            }
            IoCmd::Flush => image.flush().map_err(fail)?,
        }
    }
    if writable {
        image.flush().map_err(|e| Failure::from(e.with_file(&args.file)))?;
    }
    Ok(status)
}

/// Refuse a range that does not lie inside the disk before touching any of it.
fn check_range(image: &Image, offset: u64, len: u64) -> vdisk::Result<()> {
    let size = image.virtual_size();
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::out_of_range(format!(
            "bytes {offset}+{len} lie outside the disk of {size} bytes"
        ))),
    }
}

/// Read `len` bytes at `offset`; whether every byte equals `pattern` (true without a pattern).
fn read(image: &Image, offset: u64, len: u64, pattern: Option<u8>) -> vdisk::Result<bool> {
    check_range(image, offset, len)?;
    let mut buf = vec![0u8; CHUNK.min(len) as usize];
    let mut matches = true;
    let mut pos = offset;
    while pos < offset + len {
        let n = CHUNK.min(offset + len - pos) as usize;
        let chunk = &mut buf[..n];
        read_bytes(image, pos, chunk)?;
        if let Some(p) = pattern {
            matches &= chunk.iter().all(|&b| b == p);
        }
        pos += n as u64;
    }
    Ok(matches)
}

/// Write `len` bytes of `fill` at `offset`.
fn write(image: &Image, offset: u64, len: u64, fill: Fill) -> vdisk::Result<()> {
    check_range(image, offset, len)?;
    if image.is_read_only() {
        return Err(Error::read_only());
    }
    match fill {
        Fill::Zero => zero_bytes(image, offset, len, false),
        Fill::Pattern(p) => {
            let buf = vec![p; CHUNK.min(len) as usize];
            let mut pos = offset;
            while pos < offset + len {
                let n = CHUNK.min(offset + len - pos) as usize;
                write_bytes(image, pos, &buf[..n])?;
                pos += n as u64;
            }
            Ok(())
        }
    }
}

/// `qemu-io`'s two report lines.
fn report(op: &str, offset: u64, len: u64, elapsed: Duration) {
    let secs = elapsed.as_secs_f64().max(1e-6);
    emit(&format!(
        "{op} {len}/{len} bytes at offset {offset}\n{}, 1 ops; {:05.2} sec ({}/sec and {:.4} ops/sec)\n",
        io_size_str(len as f64),
        elapsed.as_secs_f64(),
        io_size_str(len as f64 / secs),
        1.0 / secs
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(
            parse_cmd("read -P 0xab 4k 1K").unwrap(),
            IoCmd::Read {
                offset: 4096,
                len: 1024,
                pattern: Some(0xab)
            }
        );
        assert_eq!(
            parse_cmd("read 0 512").unwrap(),
            IoCmd::Read {
                offset: 0,
                len: 512,
                pattern: None
            }
        );
        assert_eq!(
            parse_cmd("write 1M 4k").unwrap(),
            IoCmd::Write {
                offset: 1 << 20,
                len: 4096,
                fill: Fill::Pattern(0xcd)
            }
        );
        assert_eq!(
            parse_cmd("write -z 0x200 512").unwrap(),
            IoCmd::Write {
                offset: 512,
                len: 512,
                fill: Fill::Zero
            }
        );
        assert_eq!(
            parse_cmd("write -P17 0 1").unwrap(),
            IoCmd::Write {
                offset: 0,
                len: 1,
                fill: Fill::Pattern(17)
            }
        );
        assert_eq!(
            parse_cmd("discard 0 64k").unwrap(),
            IoCmd::Discard { offset: 0, len: 65536 }
        );
        assert_eq!(parse_cmd(" flush ").unwrap(), IoCmd::Flush);
        for bad in [
            "",
            "frobnicate 0 1",
            "read 0",
            "read -P 256 0 1",
            "write -z -P 1 0 1",
            "flush 1",
            "read -x 0 1",
            "discard -z 0 1",
            "read 0 1Q",
        ] {
            assert!(parse_cmd(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_pattern("010").unwrap(), 8);
    }
}
