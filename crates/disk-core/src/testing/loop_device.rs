//! Loop devices for tests that need a real block device (Linux, as root, with `losetup`).

use std::path::{Path, PathBuf};

/// A loop device over a file, detached on drop.
#[derive(Debug)]
pub struct LoopDevice(PathBuf);

impl LoopDevice {
    /// Attach a loop device to `file`; `None` (with a note on stderr, so the caller can skip)
    /// where this host does not allow it (not root, no `losetup`, no loop driver).
    pub fn attach(file: &Path) -> Option<LoopDevice> {
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .ok()?;
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || dev.is_empty() {
            eprintln!(
                "skipped: cannot attach a loop device here ({})",
                String::from_utf8_lossy(&out.stderr).trim()
            );
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
