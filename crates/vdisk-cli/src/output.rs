//! Printing in `qemu-img`'s styles: JSON indented by four spaces, human sizes, map lines.

use serde_json::{Map, Value};
use vdisk::InfoValue;

/// The name `qemu-img` prints for `format` (`vpc` for VHD), in JSON and human output alike, so
/// scripts written for `qemu-img` read the same names. The library's [`vdisk::Format::name`]
/// stays `vhd`; `-f`/`-O`/`-F` accept both.
pub fn format_name(format: vdisk::Format) -> &'static str {
    match format {
        vdisk::Format::Vhd => "vpc",
        other => other.name(),
    }
}

/// `--output human|json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// Text for people, like `qemu-img`'s default.
    #[default]
    Human,
    /// JSON with `qemu-img`'s keys.
    Json,
}

/// Write `text` to stdout, unless `-q` was given (informational output: what a command did).
pub fn emit(text: &str) {
    if !crate::progress::quiet() {
        emit_data(text);
    }
}

/// Write `text` to stdout, even with `-q` (what the command is for: `info`, `map`, `measure`).
/// A closed pipe (`vdisk map img | head`) is not an error worth a panic, so write errors are
/// ignored.
pub fn emit_data(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// Print one warning line `vdisk: warning: TEXT` on stderr (as `qemu-img: warning: ...`); the
/// command goes on. A closed stderr is ignored.
pub fn warn(text: &str) {
    use std::io::Write;
    let text = text.replace(['\n', '\r'], " ");
    let _ = writeln!(std::io::stderr(), "vdisk: warning: {text}");
}

/// `value` as JSON indented by four spaces per level, as `qemu-img` prints it.
pub fn pretty_json(value: &Value) -> String {
    let two = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    // serde_json indents by two spaces; strings never contain a raw newline, so every leading
    // space on a line is indentation.
    let mut out = String::with_capacity(two.len() * 2);
    for line in two.lines() {
        let body = line.trim_start_matches(' ');
        let indent = line.len() - body.len();
        out.extend(std::iter::repeat_n(' ', indent * 2));
        out.push_str(body);
        out.push('\n');
    }
    out
}

/// One JSON object on one line in `qemu-img map`'s style: `{ "key": value, "key": value}`.
pub fn json_line(object: &Map<String, Value>) -> String {
    let fields: Vec<String> = object
        .iter()
        .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), v))
        .collect();
    format!("{{ {}}}", fields.join(", "))
}

/// A format-specific info value as JSON.
pub fn info_to_json(value: &InfoValue) -> Value {
    match value {
        InfoValue::Str(s) => Value::String(s.clone()),
        InfoValue::U64(n) => Value::from(*n),
        InfoValue::Bool(b) => Value::Bool(*b),
        InfoValue::List(items) => Value::Array(items.iter().map(info_to_json).collect()),
        InfoValue::Map(entries) => Value::Object(info_map_to_json(entries)),
    }
}

/// Named info values as a JSON object, in order.
pub fn info_map_to_json(entries: &[(String, InfoValue)]) -> Map<String, Value> {
    entries.iter().map(|(k, v)| (k.clone(), info_to_json(v))).collect()
}

/// Print named info values as `qemu-img info` prints format-specific data: `key: value`, nested
/// maps and lists indented by four more spaces, list items as `[N]:`, `-` in keys shown as spaces.
pub fn human_info(entries: &[(String, InfoValue)], indent: usize, out: &mut String) {
    for (key, value) in entries {
        human_entry(&key.replace('-', " "), value, indent, out);
    }
}

fn human_entry(label: &str, value: &InfoValue, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        InfoValue::Str(s) => out.push_str(&format!("{pad}{label}: {s}\n")),
        InfoValue::U64(n) => out.push_str(&format!("{pad}{label}: {n}\n")),
        InfoValue::Bool(b) => out.push_str(&format!("{pad}{label}: {b}\n")),
        InfoValue::List(items) => {
            out.push_str(&format!("{pad}{label}:\n"));
            for (i, item) in items.iter().enumerate() {
                human_entry(&format!("[{i}]"), item, indent + 4, out);
            }
        }
        InfoValue::Map(entries) => {
            out.push_str(&format!("{pad}{label}:\n"));
            human_info(entries, indent + 4, out);
        }
    }
}

/// A byte count as `qemu-img` shows it: three significant digits and a binary unit
/// (`1 MiB`, `4 KiB`, `1.5 GiB`, `0 B`); the unit switches once the number would reach 1000.
pub fn size_to_str(bytes: u64) -> String {
    const SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    // qemu: frexp(val / (1000.0 / 1024.0), &e); i = (e - 1) / 10.
    let scaled = bytes as f64 * 1.024;
    let exponent = if scaled < 1.0 {
        0
    } else {
        scaled.log2().floor() as i64 + 1
    };
    let i = ((exponent - 1).max(0) / 10).min(6) as usize;
    let unit = (1u64 << (i * 10)) as f64;
    format!("{} {}B", format_g3(bytes as f64 / unit), SUFFIXES[i])
}

/// `printf("%.3g", v)` for a non-negative `v`.
fn format_g3(v: f64) -> String {
    if v == 0.0 {
        return "0".to_string();
    }
    let sci = format!("{v:.2e}");
    let exponent: i32 = sci.split_once('e').and_then(|(_, e)| e.parse().ok()).unwrap_or(0);
    if !(-4..3).contains(&exponent) {
        let (mantissa, _) = sci.split_once('e').unwrap_or((&sci, ""));
        let mantissa = strip_zeros(mantissa);
        let sign = if exponent < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exponent.abs());
    }
    let decimals = (2 - exponent).max(0) as usize;
    strip_zeros(&format!("{v:.decimals$}"))
}

fn strip_zeros(s: &str) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s.to_string()
    }
}

/// `qemu-io`'s byte counts: `512 bytes`, `4 KiB`, `266.800 KiB` (three decimals unless whole).
pub fn io_size_str(value: f64) -> String {
    const UNITS: [(&str, u32); 6] = [
        (" EiB", 60),
        (" PiB", 50),
        (" TiB", 40),
        (" GiB", 30),
        (" MiB", 20),
        (" KiB", 10),
    ];
    let (suffix, scaled) = UNITS
        .iter()
        .find(|(_, shift)| value >= (1u64 << shift) as f64)
        .map(|(s, shift)| (*s, value / (1u64 << shift) as f64))
        .unwrap_or((" bytes", value));
    let text = format!("{scaled:.3}");
    match text.strip_suffix(".000") {
        Some(whole) => format!("{whole}{suffix}"),
        None => format!("{text}{suffix}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_like_qemu() {
        assert_eq!(size_to_str(0), "0 B");
        assert_eq!(size_to_str(512), "512 B");
        assert_eq!(size_to_str(4096), "4 KiB");
        assert_eq!(size_to_str(1 << 20), "1 MiB");
        assert_eq!(size_to_str(3 << 19), "1.5 MiB");
        assert_eq!(size_to_str(10 << 30), "10 GiB");
        assert_eq!(size_to_str(1000 << 10), "0.977 MiB");
        assert_eq!(size_to_str(123_456_789), "118 MiB");
        assert_eq!(size_to_str(999), "999 B");
    }

    #[test]
    fn io_sizes_like_qemu_io() {
        assert_eq!(io_size_str(512.0), "512 bytes");
        assert_eq!(io_size_str(4096.0), "4 KiB");
        assert_eq!(io_size_str(273_203.2), "266.800 KiB");
    }

    #[test]
    fn json_styles() {
        let v: Value = serde_json::json!({"a": 1, "b": {"c": [true]}});
        assert_eq!(
            pretty_json(&v),
            "{\n    \"a\": 1,\n    \"b\": {\n        \"c\": [\n            true\n        ]\n    }\n}\n"
        );
        let Value::Object(m) = serde_json::json!({"start": 0, "zero": true}) else {
            unreachable!()
        };
        assert_eq!(json_line(&m), "{ \"start\": 0, \"zero\": true}");
    }

    #[test]
    fn info_values() {
        let entries = vec![
            ("sub-format".to_string(), InfoValue::from("dynamic")),
            (
                "extents".to_string(),
                InfoValue::List(vec![InfoValue::Map(vec![("size".into(), InfoValue::U64(5))])]),
            ),
        ];
        let mut out = String::new();
        human_info(&entries, 4, &mut out);
        assert_eq!(
            out,
            "    sub format: dynamic\n    extents:\n        [0]:\n            size: 5\n"
        );
        let json = Value::Object(info_map_to_json(&entries));
        assert_eq!(
            json,
            serde_json::json!({"sub-format": "dynamic", "extents": [{"size": 5}]})
        );
    }
}
