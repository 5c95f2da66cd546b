//! `vdisk check`: verify an image's metadata, optionally repairing it.

use crate::common::{CmdResult, Ctx, ForceShare, in_file, parse_format_opt};
use crate::output::{OutputFormat, emit, format_name, pretty_json};
use serde_json::{Map, Value};
use std::path::PathBuf;
use vdisk::{CheckReport, Findings, MissingParent, Repair};

/// Exit status: corruptions remain.
const CORRUPT: u8 = 2;
/// Exit status: only leaks remain.
const LEAKS: u8 = 3;

/// What `-r` may repair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RepairArg {
    /// Repair leaked space only.
    Leaks,
    /// Repair everything repairable.
    All,
}

/// Arguments of `vdisk check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Image format (probed when absent).
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    /// Repair what is found (the image is opened for writing only with this flag).
    #[arg(short = 'r', value_enum, value_name = "leaks|all")]
    pub repair: Option<RepairArg>,
    /// Output format.
    #[arg(long, value_enum, default_value_t, value_name = "FMT")]
    pub output: OutputFormat,
    /// The image.
    pub file: PathBuf,
    #[command(flatten)]
    pub share: ForceShare,
}

/// Run `vdisk check`: exit 0 clean, 2 corruptions, 3 only leaks, 1 could not check.
pub fn run(ctx: &Ctx, args: &CheckArgs) -> CmdResult {
    let ctx = &ctx.sharing(args.share.force_share);
    let format = parse_format_opt(args.format.as_deref())?;
    let repair = match args.repair {
        None => Repair::None,
        Some(RepairArg::Leaks) => Repair::Leaks,
        Some(RepairArg::All) => Repair::All,
    };
    // Only the named image's metadata is checked, so a missing parent does not matter. With -r
    // the image opens writable in repair mode: entries the space map found unusable are never
    // written through, and the engine's check drops them.
    let mut options = ctx.open_options(format, repair != Repair::None, MissingParent::Placeholder);
    options.repair = repair != Repair::None;
    let image = ctx.open_with(&args.file, &options)?;
    let format = image.top().format();
    let report = image.top().check(repair).map_err(|e| in_file(&args.file, e))?;
    let text = match args.output {
        OutputFormat::Json => pretty_json(&to_json(
            &ctx.image_path(&args.file).display().to_string(),
            format_name(format),
            &report,
        )),
        OutputFormat::Human => to_human(&report),
    };
    emit(&text);
    Ok(if report.corruptions.count() > 0 {
        CORRUPT
    } else if report.leaks.count() > 0 {
        LEAKS
    } else {
        0
    })
}

/// `qemu-img check --output json`'s object: counts are present only when non-zero; the messages
/// themselves are added under `corruption-details`, `leak-details` and `repaired`.
fn to_json(filename: &str, format: &str, r: &CheckReport) -> Value {
    let mut o = Map::new();
    o.insert("filename".into(), filename.into());
    o.insert("format".into(), format.into());
    o.insert("check-errors".into(), 0.into());
    if let Some(end) = r.image_end_offset.filter(|&e| e != 0) {
        o.insert("image-end-offset".into(), end.into());
    }
    if r.corruptions.count() > 0 {
        o.insert("corruptions".into(), r.corruptions.count().into());
    }
    if r.leaks.count() > 0 {
        o.insert("leaks".into(), r.leaks.count().into());
    }
    if let Some(total) = r.total_clusters.filter(|&t| t != 0) {
        o.insert("total-clusters".into(), total.into());
    }
    if let Some(allocated) = r.allocated_clusters.filter(|&a| a != 0) {
        o.insert("allocated-clusters".into(), allocated.into());
    }
    let list = |items: &Findings| {
        let mut out: Vec<Value> = items.iter().map(|s| Value::from(s.as_str())).collect();
        if items.omitted() > 0 {
            out.push(Value::from(format!("and {} more", items.omitted())));
        }
        Value::Array(out)
    };
    if !r.corruptions.is_empty() {
        o.insert("corruption-details".into(), list(&r.corruptions));
    }
    if !r.leaks.is_empty() {
        o.insert("leak-details".into(), list(&r.leaks));
    }
    if !r.repaired.is_empty() {
        o.insert("repaired".into(), list(&r.repaired));
    }
    Value::Object(o)
}

/// `qemu-img check`'s text.
fn to_human(r: &CheckReport) -> String {
    let mut out = String::new();
    for c in r.corruptions.iter() {
        out.push_str(&format!("ERROR {c}\n"));
    }
    if r.corruptions.omitted() > 0 {
        out.push_str(&format!("ERROR and {} more\n", r.corruptions.omitted()));
    }
    for l in r.leaks.iter() {
        out.push_str(&format!("Leaked: {l}\n"));
    }
    if r.leaks.omitted() > 0 {
        out.push_str(&format!("Leaked: and {} more\n", r.leaks.omitted()));
    }
    if !r.repaired.is_empty() {
        out.push_str("The following inconsistencies were found and repaired:\n\n");
        for fixed in r.repaired.iter() {
            out.push_str(&format!("    {fixed}\n"));
        }
        out.push('\n');
    }
    if r.is_clean() {
        out.push_str("No errors were found on the image.\n");
    } else {
        if !r.corruptions.is_empty() {
            out.push_str(&format!(
                "\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n",
                r.corruptions.count()
            ));
        }
        if !r.leaks.is_empty() {
            out.push_str(&format!(
                "\n{} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n",
                r.leaks.count()
            ));
        }
    }
    if let Some((allocated, total)) = r.allocated_clusters.zip(r.total_clusters).filter(|&(_, t)| t > 0) {
        let pct = allocated as f64 * 100.0 / total as f64;
        out.push_str(&format!("{allocated}/{total} = {pct:.2}% allocated clusters\n"));
    }
    if let Some(end) = r.image_end_offset {
        out.push_str(&format!("Image end offset: {end}\n"));
    }
    out
}
