//! Helpers shared by the CLI tests: running the binary, checking error output, raw fixtures; and
//! from the workspace's interop helpers, [`qemu_img_available`] (whether a test can use
//! `qemu-img`, printing why it is skipped otherwise).

#![allow(dead_code, unused_imports)]

pub use disk_core::testing::interop::{qemu_img_available, tools_available};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Run `vdisk` with `args`.
pub fn vdisk<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new(env!("CARGO_BIN_EXE_vdisk"))
        .args(args)
        .output()
        .expect("run vdisk")
}

/// Stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Assert success (exit 0) and return stdout.
pub fn ok(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        stdout(out),
        stderr(out)
    );
    stdout(out)
}

/// Assert a clean failure: exit `code`, exactly one stderr line starting `vdisk: error: `, no panic.
/// Returns that line.
pub fn clean_error(out: &Output, code: i32) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "stdout: {}\nstderr: {err}", stdout(out));
    assert!(err.starts_with("vdisk: error: "), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "stderr: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "stderr: {err}"
    );
    err.trim_end().to_string()
}

/// Parse stdout as JSON.
pub fn json(out: &Output) -> serde_json::Value {
    let text = ok(out);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A sparse raw file of `size` bytes with `pieces` of (offset, byte value, length) written.
pub fn sparse_raw(path: &Path, size: u64, pieces: &[(u64, u8, usize)]) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    for &(offset, value, len) in pieces {
        f.write_all_at(&vec![value; len], offset).unwrap();
    }
    f.sync_data().unwrap();
}

/// Bytes allocated on the host for `path`.
pub fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// Run `qemu-img` with `args`.
pub fn qemu_img<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new("qemu-img").args(args).output().expect("run qemu-img")
}

/// A temporary directory and a path in it.
pub fn temp() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    (dir, path)
}

/// Content, length and modification time of a file, to prove a command left it alone.
pub fn fingerprint(path: &Path) -> (Vec<u8>, u64, std::time::SystemTime) {
    let meta = std::fs::metadata(path).unwrap();
    (std::fs::read(path).unwrap(), meta.len(), meta.modified().unwrap())
}

/// A raw copy of the guest view of `img` at `to` (through `vdisk convert -O raw`).
pub fn raw_copy(img: &Path, to: &Path) {
    ok(&vdisk([
        "convert",
        "-O",
        "raw",
        img.to_str().unwrap(),
        to.to_str().unwrap(),
    ]));
}
