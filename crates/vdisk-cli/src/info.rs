//! `vdisk info`: describe an image (and with `--backing-chain`, every image below it).

use crate::common::{CmdResult, Ctx, Failure, ForceShare, allocated_bytes, parse_format_opt};
use crate::output::{OutputFormat, emit_data, format_name, human_info, info_map_to_json, pretty_json, size_to_str};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use vdisk::disk_core::recorded_to_path;
use vdisk::{Disk, InfoValue, LayerInfo, MissingParent};

/// Arguments of `vdisk info`.
#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// Image format (raw, vhd/vpc, vhdx, vmdk); probed from the content when absent.
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t, value_name = "FMT")]
    pub output: OutputFormat,
    /// Describe every image of the backing chain, the named image first.
    #[arg(long)]
    pub backing_chain: bool,
    /// The image.
    pub file: PathBuf,
    #[command(flatten)]
    pub share: ForceShare,
}

/// What `info` shows for one image of a chain.
struct Record {
    /// The name as given (top image) or the path it was opened from (parents).
    filename: String,
    /// The engine's description.
    info: LayerInfo,
    /// Bytes the file occupies on the host.
    actual_size: Option<u64>,
    /// The path the parent was actually opened from, if it was.
    full_backing_filename: Option<String>,
}

impl Record {
    fn to_json(&self) -> Value {
        let info = &self.info;
        let mut o = Map::new();
        o.insert("filename".into(), self.filename.clone().into());
        o.insert("format".into(), format_name(info.format).into());
        o.insert("virtual-size".into(), info.virtual_size.into());
        if let Some(actual) = self.actual_size {
            o.insert("actual-size".into(), actual.into());
        }
        if let Some(cluster) = info.cluster_size {
            o.insert("cluster-size".into(), cluster.into());
        }
        if let Some(backing) = &info.backing_filename {
            o.insert("backing-filename".into(), backing.clone().into());
            if let Some(full) = &self.full_backing_filename {
                o.insert("full-backing-filename".into(), full.clone().into());
            }
        }
        if let Some(fmt) = info.backing_format {
            o.insert("backing-filename-format".into(), format_name(fmt).into());
        }
        o.insert("dirty-flag".into(), info.dirty.unwrap_or(false).into());
        if !info.specific.is_empty() {
            let mut specific = Map::new();
            specific.insert("type".into(), format_name(info.format).into());
            specific.insert("data".into(), Value::Object(info_map_to_json(&info.specific)));
            o.insert("format-specific".into(), Value::Object(specific));
        }
        Value::Object(o)
    }

    fn to_human(&self) -> String {
        let info = &self.info;
        let mut out = format!(
            "image: {}\nfile format: {}\nvirtual size: {} ({} bytes)\n",
            self.filename,
            format_name(info.format),
            size_to_str(info.virtual_size),
            info.virtual_size
        );
        match self.actual_size {
            Some(actual) => out.push_str(&format!("disk size: {}\n", size_to_str(actual))),
            None => out.push_str("disk size: unavailable\n"),
        }
        if let Some(cluster) = info.cluster_size {
            out.push_str(&format!("cluster_size: {cluster}\n"));
        }
        if let Some(backing) = &info.backing_filename {
            out.push_str(&format!("backing file: {backing}"));
            if let Some(full) = self.full_backing_filename.as_ref().filter(|f| *f != backing) {
                out.push_str(&format!(" (actual path: {full})"));
            }
            out.push('\n');
        }
        if let Some(fmt) = info.backing_format {
            out.push_str(&format!("backing file format: {}\n", format_name(fmt)));
        }
        if info.dirty == Some(true) {
            out.push_str("cleanly shut down: no\n");
        }
        if !info.specific.is_empty() {
            out.push_str("Format specific information:\n");
            human_info(&info.specific, 4, &mut out);
        }
        out
    }
}

/// Bytes the image occupies on the host: its file plus the extent files it lists (VMDK), as
/// `qemu-img` counts them. With `--no-external` only the named file is looked at.
fn actual_size(ctx: &Ctx, path: &Path, info: &LayerInfo) -> Option<u64> {
    let mut total = allocated_bytes(path)?;
    if ctx.no_external {
        return Some(total);
    }
    let own = path.canonicalize().ok();
    let extents = info
        .specific
        .iter()
        .filter(|(k, _)| k == "extents")
        .flat_map(|(_, v)| match v {
            InfoValue::List(items) => items.as_slice(),
            _ => &[],
        });
    let mut seen = Vec::new();
    for extent in extents {
        let InfoValue::Map(fields) = extent else { continue };
        let Some(InfoValue::Str(name)) = fields.iter().find(|(k, _)| k == "filename").map(|(_, v)| v) else {
            continue;
        };
        let Some(file) = recorded_to_path(name, Some(path)).and_then(|p| p.canonicalize().ok()) else {
            continue;
        };
        if Some(&file) != own.as_ref() && !seen.contains(&file) {
            total += allocated_bytes(&file).unwrap_or(0);
            seen.push(file);
        }
    }
    Some(total)
}

/// Run `vdisk info`.
pub fn run(ctx: &Ctx, args: &InfoArgs) -> CmdResult {
    let ctx = &ctx.sharing(args.share.force_share);
    let format = parse_format_opt(args.format.as_deref())?;
    let image = ctx.open(&args.file, format, false, MissingParent::Placeholder)?;
    let file = ctx.image_path(&args.file);
    let layers: Vec<(&dyn vdisk::Layer, Option<&Path>)> = image.layers().collect();
    let wanted = if args.backing_chain { layers.len() } else { 1 };
    let mut records = Vec::new();
    for (i, (layer, path)) in layers.iter().enumerate().take(wanted) {
        let path = match (i, path) {
            (0, _) => Some(file.as_path()),
            (_, Some(p)) => Some(*p),
            // A placeholder for a parent that could not be opened: say why.
            (_, None) => {
                let child = if i == 1 {
                    file.as_path()
                } else {
                    layers[i - 1].1.unwrap_or(&file)
                };
                let reason = layer
                    .block_status(0, 1)
                    .err()
                    .map(|e| vdisk::disk_core::display_chain(&e));
                return Err(Failure::new(format!(
                    "{}: {}",
                    child.display(),
                    reason.unwrap_or_else(|| "parent image is not available".to_string())
                )));
            }
        };
        let next = layers.get(i + 1).and_then(|(_, p)| *p);
        let info = layer.info();
        let actual_size = path.and_then(|p| actual_size(ctx, p, &info));
        records.push(Record {
            filename: path.map(|p| p.display().to_string()).unwrap_or_default(),
            info,
            actual_size,
            full_backing_filename: next.map(|p| p.display().to_string()),
        });
    }
    // The top layer's size is the disk's size; keep `info` consistent with `Disk`.
    if let Some(top) = records.first_mut() {
        top.info.virtual_size = image.virtual_size();
    }
    let text = match (args.output, args.backing_chain) {
        (OutputFormat::Json, false) => records.first().map(|r| pretty_json(&r.to_json())).unwrap_or_default(),
        (OutputFormat::Json, true) => pretty_json(&Value::Array(records.iter().map(Record::to_json).collect())),
        (OutputFormat::Human, _) => records.iter().map(Record::to_human).collect::<Vec<_>>().join("\n"),
    };
    emit_data(&text);
    Ok(0)
}
