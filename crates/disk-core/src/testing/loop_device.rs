//! Loop devices for tests that need a real block device (Linux, as root, with `losetup`).

use super::interop::report_skip;
use std::path::{Path, PathBuf};

/// A loop device over a file, detached on drop.
#[derive(Debug)]
pub struct LoopDevice(PathBuf);

impl LoopDevice {
    /// Attach a loop device to `file`; `None` (with a note on stderr that shows in plain
    /// `cargo test` output, [`report_skip`]) where this host does not allow it (not root, no
    /// `losetup`, no loop driver).
    pub fn attach(file: &Path) -> Option<LoopDevice> {
        let out = match std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
        {
            Ok(out) => out,
            Err(e) => {
                report_skip("loop device", &format!("cannot run losetup ({e})"));
                return None;
            }
        };
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || dev.is_empty() {
            let why = String::from_utf8_lossy(&out.stderr);
            report_skip("loop device", &format!("cannot attach one here ({})", why.trim()));
            return None;
        }
        Some(LoopDevice(PathBuf::from(dev)))
    }

    /// The device node (`/dev/loopN`).
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}
