//! `vdisk`: a `qemu-img`-like tool for VHD, VHDX, VMDK and raw images.
//!
//! The command line is a public contract (`docs/CLI.md`): sub-commands, flags and JSON
//! keys follow `qemu-img`. Every failure prints exactly one line `vdisk: error: ...` on stderr
//! and exits non-zero; nothing panics on bad input.

#![forbid(unsafe_code)]

mod bench;
mod chain;
mod check;
mod common;
mod compare;
mod convert;
mod info;
mod io;
mod map;
mod measure;
mod output;
mod progress;
mod resize;

use clap::{Parser, Subcommand};
use common::{CmdResult, Ctx, External, Failure};
use std::io::Write;
use std::process::ExitCode;

/// Inspect, create, convert and check VHD, VHDX, VMDK and raw disk images.
#[derive(Debug, Parser)]
#[command(name = "vdisk", version, about, max_term_width = 100)]
struct Cli {
    /// Which files an image may make vdisk open (parents, VMDK extents); default same-dir.
    #[arg(long, global = true, value_enum, value_name = "POLICY")]
    external: Option<External>,

    /// Refuse to open any file other than the one named (parents, extents): `--external none`.
    #[arg(long, global = true, conflicts_with = "external")]
    no_external: bool,

    /// Accept a parent the child records no identity for (VMDK `parentCID=ffffffff`, a VHDX child
    /// without parent linkage): any file the parent's name reaches would be taken as the parent.
    #[arg(long, global = true)]
    trust_unlinked_parent: bool,

    /// The images named are qemu-img option strings (`driver=FMT,file.filename=PATH`), as
    /// qemu-img's `--image-opts`.
    #[arg(long, global = true)]
    image_opts: bool,

    /// Quiet: print nothing but errors and what the command is for (`info`, `map` and
    /// `measure` output), as qemu-img's `-q`.
    #[arg(short = 'q', long, global = true)]
    quiet: bool,

    #[command(subcommand)]
    command: Command,
}

/// The sub-commands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Describe an image.
    Info(info::InfoArgs),
    /// Create a new image (with -b, a differencing image over BACKING).
    Create(convert::CreateArgs),
    /// Copy the guest-visible contents of SRC (whole chain) into a new standalone image.
    Convert(convert::ConvertArgs),
    /// Compare the guest-visible contents of two images (exit 0 same, 1 different, 2 error).
    Compare(compare::CompareArgs),
    /// Verify metadata consistency (exit 0 clean, 2 corruptions, 3 only leaks, 1 could not check).
    Check(check::CheckArgs),
    /// Print the allocation map of the whole chain.
    Map(map::MapArgs),
    /// Change the virtual size.
    Resize(resize::ResizeArgs),
    /// Merge a child's data into its parent.
    Commit(chain::CommitArgs),
    /// Bytes a new image needs.
    Measure(measure::MeasureArgs),
    /// Run qemu-io-like commands (read, write, discard, flush) on an image.
    Io(io::IoArgs),
    /// Point a child at another parent.
    Rebase(chain::RebaseArgs),
    /// Time COUNT reads or writes of BUFFER_SIZE bytes, DEPTH at once, like qemu-img bench.
    Bench(bench::BenchArgs),
}

fn run(cli: Cli) -> CmdResult {
    let external = if cli.no_external {
        External::None
    } else {
        cli.external.unwrap_or_default()
    };
    progress::set_quiet(cli.quiet);
    let mut ctx = Ctx::new(external);
    ctx.trust_unlinked_parent = cli.trust_unlinked_parent;
    ctx.image_opts = cli.image_opts;
    match cli.command {
        Command::Info(args) => info::run(&ctx, &args),
        Command::Create(args) => convert::run_create(&ctx, &args),
        Command::Convert(args) => convert::run_convert(&ctx, &args),
        Command::Compare(args) => compare::run(&ctx, &args),
        Command::Check(args) => check::run(&ctx, &args),
        Command::Map(args) => map::run(&ctx, &args),
        Command::Resize(args) => resize::run(&ctx, &args),
        Command::Commit(args) => chain::run_commit(&ctx, &args),
        Command::Measure(args) => measure::run(&ctx, &args),
        Command::Io(args) => io::run(&ctx, &args),
        Command::Rebase(args) => chain::run_rebase(&ctx, &args),
        Command::Bench(args) => bench::run(&ctx, &args),
    }
}

/// The exit status of a usage error: 2 for `compare` (its "error" status), 1 otherwise.
fn usage_error_code(args: &[std::ffi::OsString]) -> u8 {
    let command = args.iter().skip(1).find(|a| !a.to_string_lossy().starts_with('-'));
    if command.is_some_and(|c| c == "compare") { 2 } else { 1 }
}

/// Print the one error line (newlines folded so it stays one line).
fn report(failure: &Failure) -> ExitCode {
    let message = failure.message.replace(['\n', '\r'], " ");
    let _ = writeln!(std::io::stderr(), "vdisk: error: {message}");
    ExitCode::from(failure.code.max(1))
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind as K;
            if matches!(e.kind(), K::DisplayHelp | K::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            if e.kind() == K::DisplayHelpOnMissingArgumentOrSubcommand {
                let failure = Failure::new("no command given (try 'vdisk --help')").with_code(usage_error_code(&args));
                return report(&failure);
            }
            // clap's first paragraph says what is wrong (sometimes over several lines).
            let text = e.render().to_string();
            let what: Vec<&str> = text.lines().map(str::trim).take_while(|l| !l.is_empty()).collect();
            let what = what.join(" ");
            let what = what.strip_prefix("error: ").unwrap_or(&what);
            let failure = Failure::new(format!("{what} (try 'vdisk --help')")).with_code(usage_error_code(&args));
            return report(&failure);
        }
    };
    let status = run(cli);
    // Output may go to a closed pipe; that is not worth a panic.
    let _ = std::io::stdout().flush();
    match status {
        Ok(code) => ExitCode::from(code),
        Err(failure) => report(&failure),
    }
}
