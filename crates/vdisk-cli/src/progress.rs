//! Progress of long commands (`-p`), and quiet mode (`-q`).
//!
//! On a terminal a bar is drawn; otherwise qemu-img's lines are printed to stdout,
//! `    (12.34/100%)` followed by a carriage return, each time the progress moves by at least 1%,
//! and a newline at the end, so that scripts parsing qemu-img's progress keep working.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set by `-q`: informational output is not printed.
static QUIET: AtomicBool = AtomicBool::new(false);

/// Turn quiet mode on or off (`-q`).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Whether `-q` was given.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// A progress display, or nothing when progress was not asked for (or `-q` was given).
pub struct Progress {
    how: How,
}

enum How {
    Off,
    Bar(ProgressBar),
    /// qemu-img's lines; the last percentage printed (in hundredths).
    Lines(Option<u64>),
}

impl Progress {
    /// Progress for `wanted` (`-p`), drawn as a bar on a terminal and as qemu-img's lines
    /// elsewhere; nothing in quiet mode.
    pub fn new(wanted: bool) -> Self {
        let how = if !wanted || quiet() {
            How::Off
        } else if std::io::stdout().is_terminal() {
            let bar = ProgressBar::new(0);
            let style = ProgressStyle::with_template("{bar:40} {percent:>3}% {bytes}/{total_bytes} ({eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            How::Bar(bar)
        } else {
            print_line(0);
            How::Lines(Some(0))
        };
        Progress { how }
    }

    /// `done` of `total` bytes are done.
    pub fn update(&mut self, done: u64, total: u64) {
        match &mut self.how {
            How::Off => {}
            How::Bar(bar) => {
                bar.set_length(total);
                bar.set_position(done);
            }
            How::Lines(last) => {
                let hundredths = if total == 0 {
                    10_000
                } else {
                    u64::try_from(u128::from(done.min(total)) * 10_000 / u128::from(total)).unwrap_or(10_000)
                };
                if last.is_none_or(|l| hundredths >= l + 100 || (hundredths == 10_000 && l != 10_000)) {
                    *last = Some(hundredths);
                    print_line(hundredths);
                }
            }
        }
    }

    /// The command ended (`ok`: successfully).
    pub fn finish(self, ok: bool) {
        match self.how {
            How::Off => {}
            How::Bar(bar) if ok => bar.finish(),
            How::Bar(bar) => bar.abandon(),
            How::Lines(last) => {
                if ok && last != Some(10_000) {
                    print_line(10_000);
                }
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(b"\n");
                let _ = out.flush();
            }
        }
    }
}

/// One of qemu-img's progress lines: `    (12.34/100%)` and a carriage return.
fn print_line(hundredths: u64) {
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "    ({}.{:02}/100%)\r", hundredths / 100, hundredths % 100);
    let _ = out.flush();
}
