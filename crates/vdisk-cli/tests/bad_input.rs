//! Bad input: every failure is one clean `vdisk: error: ` line with a non-zero exit, never a panic.

mod common;

use common::*;

#[test]
fn missing_file() {
    let (_d, dir) = temp();
    let missing = dir.join("nope.vhd");
    let m = missing.to_str().unwrap();
    for args in [
        vec!["info", m],
        vec!["info", "--output", "json", m],
        vec!["map", m],
        vec!["check", m],
        vec!["resize", m, "+1M"],
        vec!["commit", m],
        vec!["rebase", "-b", "x", m],
        vec!["measure", "-O", "raw", m],
        vec!["io", "-c", "read 0 1", m],
        vec!["convert", "-O", "raw", m, "/dev/null/x"],
    ] {
        let e = clean_error(&vdisk(&args), 1);
        assert!(e.contains("nope.vhd"), "{args:?}: {e}");
    }
    assert!(!missing.exists());
}

#[test]
fn directory() {
    let (_d, dir) = temp();
    let d = dir.to_str().unwrap();
    for args in [
        vec!["info", d],
        vec!["map", d],
        vec!["check", d],
        vec!["io", "-c", "write 0 1", d],
        vec!["resize", d, "+1M"],
    ] {
        let e = clean_error(&vdisk(&args), 1);
        assert!(e.contains("directory"), "{args:?}: {e}");
    }
    clean_error(&vdisk(["compare", d, d]), 2);
}

#[test]
fn zero_length_file() {
    let (_d, dir) = temp();
    let img = dir.join("empty.img");
    std::fs::write(&img, b"").unwrap();
    let p = img.to_str().unwrap();
    // A zero-length file is a valid raw image of size 0 ...
    let v = json(&vdisk(["info", "--output", "json", p]));
    assert_eq!(v["virtual-size"], 0);
    assert_eq!(v["format"], "raw");
    // ... with nothing to read ...
    let e = clean_error(&vdisk(["io", "-c", "read 0 512", p]), 1);
    assert!(e.contains("outside the disk"), "{e}");
    // ... and not an image of any other format.
    for fmt in ["vhd", "vpc", "vhdx", "vmdk"] {
        let e = clean_error(&vdisk(["info", "-f", fmt, p]), 1);
        assert!(e.contains("empty.img"), "{fmt}: {e}");
    }
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 0);
}

#[test]
fn unknown_format_name() {
    let (_d, dir) = temp();
    let img = dir.join("a.raw");
    sparse_raw(&img, 1 << 20, &[]);
    let p = img.to_str().unwrap();
    for args in [
        vec!["info", "-f", "qcow2", p],
        vec!["map", "-f", "qcow", p],
        vec!["check", "-f", "", p],
        vec!["io", "-f", "vdi", "-c", "read 0 1", p],
        vec!["convert", "-O", "qcow2", p, "/tmp/never-created.qcow2"],
        vec!["create", "-f", "qcow2", "/tmp/never-created.qcow2", "1M"],
        vec!["measure", "-O", "qcow2", "--size", "1M"],
        vec!["resize", "-f", "qcow2", p, "+1M"],
    ] {
        let e = clean_error(&vdisk(&args), 1);
        assert!(e.contains("unknown format"), "{args:?}: {e}");
    }
    assert!(!std::path::Path::new("/tmp/never-created.qcow2").exists());
}

#[test]
fn usage_errors_are_one_line() {
    clean_error(&vdisk(["frobnicate"]), 1);
    clean_error(&vdisk(["info"]), 1);
    clean_error(&vdisk(["info", "--output", "xml", "x"]), 1);
    clean_error(&vdisk(["info", "--bogus", "x"]), 1);
    clean_error(&vdisk(["compare", "x"]), 2);
    clean_error(&vdisk(["io", "x"]), 1);
    let e = clean_error(&vdisk(Vec::<&str>::new()), 1);
    assert!(e.contains("no command"), "{e}");
    clean_error(&vdisk(["--no-external"]), 1);
}

#[test]
fn write_to_read_only_open() {
    let (_d, dir) = temp();
    let img = dir.join("a.raw");
    sparse_raw(&img, 1 << 20, &[(0, 9, 512)]);
    let p = img.to_str().unwrap();
    let before = fingerprint(&img);
    for cmd in ["write 0 512", "write -z 0 512", "discard 0 512"] {
        let e = clean_error(&vdisk(["io", "--read-only", "-c", cmd, p]), 1);
        assert!(e.contains("read-only") && e.contains("a.raw"), "{cmd}: {e}");
    }
    assert_eq!(fingerprint(&img), before);
}

#[test]
fn closed_stdout_is_not_a_panic() {
    // 800 map lines: more than a pipe buffer, so the write meets the closed pipe.
    use std::process::{Command, Stdio};
    let (_d, dir) = temp();
    let img = dir.join("a.raw");
    let pieces: Vec<(u64, u8, usize)> = (0..400).map(|i| (i * 8192, 1, 512)).collect();
    sparse_raw(&img, 400 * 8192, &pieces);
    let mut child = Command::new(env!("CARGO_BIN_EXE_vdisk"))
        .args(["map", "--output", "json", img.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
}

/// A FIFO or character device named as the image is refused at once (no blocking open, no
/// endless read).
#[test]
fn fifo_or_character_device_as_the_image() {
    let (_d, dir) = temp();
    let fifo = dir.join("pipe.vhd");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        disk_core::testing::interop::report_skip("fifo_or_character_device_as_the_image", "mkfifo is not available");
        return;
    }
    let f = fifo.to_str().unwrap();
    for args in [vec!["info", f], vec!["check", f], vec!["io", "-c", "write 0 1", f]] {
        let e = clean_error(&vdisk(&args), 1);
        assert!(e.contains("not a regular file or block device"), "{args:?}: {e}");
    }
    let e = clean_error(&vdisk(["info", "/dev/zero"]), 1);
    assert!(e.contains("not a regular file or block device"), "{e}");
}
