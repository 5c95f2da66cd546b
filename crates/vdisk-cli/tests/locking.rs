//! Image locking against the real QEMU, both ways: `qemu-io` holding an image keeps `vdisk`'s
//! writers (and readers without `-U`) out, and an image `vdisk` holds keeps `qemu-io` and
//! `qemu-img` out the same way (skipped with a message when qemu-io or qemu-img is missing).

mod common;

use common::*;
use disk_core::testing::interop::tools_available;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::Arc;
use vdisk::{FsPolicy, FsResolver, OpenOptions};

/// Whether qemu-io and qemu-img are installed (printing why `test` is skipped otherwise).
fn qemu_available(test: &str) -> bool {
    tools_available(test, &["qemu-io", "qemu-img"])
}

/// A `qemu-io` process holding an image open (as a running VM would) until dropped.
struct QemuIo {
    child: Child,
    stdin: ChildStdin,
}

impl QemuIo {
    /// Start `qemu-io -f FMT [ARGS] IMG` with commands on its standard input and wait until it
    /// has the image open (it has answered a read).
    fn hold(format: &str, args: &[&str], image: &Path) -> QemuIo {
        let mut child = Command::new("qemu-io")
            .args(["-f", format])
            .args(args)
            .arg(image)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start qemu-io");
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(b"read 0 512\n").expect("send a command to qemu-io");
        stdin.flush().expect("send a command to qemu-io");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        for line in stdout.lines() {
            let line = line.expect("read qemu-io's output");
            if line.contains("read 512/512 bytes at offset 0") {
                return QemuIo { child, stdin };
            }
        }
        let out = child.wait_with_output().expect("wait for qemu-io");
        panic!("qemu-io could not open {}: {}", image.display(), stderr(&out));
    }
}

impl Drop for QemuIo {
    fn drop(&mut self) {
        let _ = self.stdin.write_all(b"quit\n");
        let _ = self.stdin.flush();
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Run qemu-io with one command on `image`.
fn qemu_io(format: &str, args: &[&str], command: &str, image: &Path) -> Output {
    Command::new("qemu-io")
        .args(["-f", format])
        .args(args)
        .args(["-c", command])
        .arg(image)
        .output()
        .expect("run qemu-io")
}

/// Assert that QEMU refused to open an image with its lock message `what`.
#[track_caller]
fn qemu_refused(out: &Output, what: &str) {
    assert!(
        !out.status.success(),
        "stdout: {}\nstderr: {}",
        stdout(out),
        stderr(out)
    );
    assert!(stderr(out).contains(what), "expected {what:?}, stderr: {}", stderr(out));
}

/// Assert that vdisk failed cleanly with exit status 1 and the lock message `what`.
#[track_caller]
fn vdisk_refused(out: &Output, what: &str) {
    let line = clean_error(out, 1);
    assert!(line.contains(what), "expected {what:?}, got: {line}");
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_qemu_writer_keeps_vdisk_out_except_for_force_shared_reads() {
    if !qemu_available("a_qemu_writer_keeps_vdisk_out_except_for_force_shared_reads") {
        return;
    }
    for (format, qemu_format) in [("vhdx", "vhdx"), ("vhd", "vpc"), ("vmdk", "vmdk")] {
        let (_d, dir) = temp();
        let img = dir.join(format!("disk.{format}"));
        ok(&vdisk(["create", "-f", format, s(&img), "64M"]));
        let _vm = QemuIo::hold(qemu_format, &[], &img);
        let before = fingerprint(&img);

        let write = "Failed to get \"write\" lock";
        vdisk_refused(&vdisk(["io", "-c", "write -P 0x55 0 4096", s(&img)]), write);
        vdisk_refused(&vdisk(["resize", s(&img), "128M"]), write);
        vdisk_refused(&vdisk(["check", "-r", "all", s(&img)]), "Failed to get");
        vdisk_refused(&vdisk(["bench", "-w", "-c", "10", s(&img)]), write);
        vdisk_refused(&vdisk(["create", "-f", format, s(&img), "32M"]), "lock");
        assert_eq!(fingerprint(&img), before, "{format}: nothing changed the image in use");

        // Readers without -U are kept out too; with -U they read beside the writer.
        let shared = "Failed to get shared \"write\" lock";
        vdisk_refused(&vdisk(["info", s(&img)]), shared);
        vdisk_refused(&vdisk(["map", s(&img)]), shared);
        let info = json(&vdisk(["info", "-U", "--output", "json", s(&img)]));
        assert_eq!(info["virtual-size"], 64 << 20, "{format}");
        ok(&vdisk(["map", "-U", s(&img)]));
        ok(&vdisk(["check", "-U", s(&img)]));
        ok(&vdisk(["compare", "-U", s(&img), s(&img)]));
        ok(&vdisk(["measure", "-U", "-O", "raw", s(&img)]));
        ok(&vdisk(["bench", "-U", "-c", "10", s(&img)]));
        ok(&vdisk(["io", "-r", "-U", "-c", "read 0 4096", s(&img)]));
        let copy = dir.join("copy.raw");
        ok(&vdisk(["convert", "-U", "-O", "raw", s(&img), s(&copy)]));

        // -U with a write is refused whoever holds the image, as qemu-img refuses it.
        let force = "force-share=on can only be used with read-only images";
        vdisk_refused(&vdisk(["io", "-U", "-c", "write 0 512", s(&img)]), force);
        vdisk_refused(&vdisk(["check", "-U", "-r", "leaks", s(&img)]), force);
        assert_eq!(fingerprint(&img), before, "{format}");
    }
}

#[test]
fn a_qemu_reader_keeps_vdisk_writers_out_and_readers_in() {
    if !qemu_available("a_qemu_reader_keeps_vdisk_writers_out_and_readers_in") {
        return;
    }
    let (_d, dir) = temp();
    let img = dir.join("disk.vhdx");
    ok(&vdisk(["create", "-f", "vhdx", s(&img), "16M"]));
    let reader = QemuIo::hold("vhdx", &["-r"], &img);
    vdisk_refused(
        &vdisk(["io", "-c", "write 0 512", s(&img)]),
        "Failed to get \"write\" lock",
    );
    ok(&vdisk(["info", s(&img)]));
    ok(&vdisk(["io", "-c", "read 0 512", s(&img)]));
    drop(reader);
    // Once qemu-io has gone, the image is free again.
    ok(&vdisk(["io", "-c", "write 0 512", s(&img)]));
}

#[test]
fn an_image_vdisk_writes_keeps_qemu_out_except_for_force_shared_reads() {
    if !qemu_available("an_image_vdisk_writes_keeps_qemu_out_except_for_force_shared_reads") {
        return;
    }
    let (_d, dir) = temp();
    let base = dir.join("base.vmdk");
    let child = dir.join("child.vmdk");
    ok(&vdisk(["create", "-f", "vmdk", s(&base), "16M"]));
    ok(&vdisk(["create", "-f", "vmdk", "-b", "base.vmdk", s(&child)]));
    let options = OpenOptions::new()
        .writable(true)
        .resolver(Arc::new(FsResolver::new(FsPolicy::SameDirectory)));
    let held = vdisk::open(&child, &options).expect("vdisk opens the child writable");

    // The image written: qemu neither writes nor reads it without -U.
    let out = qemu_io("vmdk", &[], "write 0 512", &child);
    qemu_refused(&out, "Failed to get \"write\" lock");
    qemu_refused(&qemu_img(["info", s(&child)]), "Failed to get shared \"write\" lock");
    let out = qemu_img(["info", "-U", "--output", "json", s(&child)]);
    assert!(ok(&out).contains("\"virtual-size\": 16777216"), "{}", stdout(&out));
    ok(&qemu_io("vmdk", &["-r", "-U"], "read 0 512", &child));

    // Its parent is held read-only: qemu may read it but not write it.
    qemu_refused(
        &qemu_io("vmdk", &[], "write 0 512", &base),
        "Failed to get \"write\" lock",
    );
    ok(&qemu_img(["info", s(&base)]));
    ok(&qemu_io("vmdk", &["-r"], "read 0 512", &base));

    drop(held);
    ok(&qemu_io("vmdk", &[], "write 0 512", &child));
    ok(&qemu_io("vmdk", &[], "write 0 512", &base));
}

#[test]
fn vdisk_and_qemu_readers_coexist() {
    if !qemu_available("vdisk_and_qemu_readers_coexist") {
        return;
    }
    let (_d, dir) = temp();
    let img = dir.join("disk.vhd");
    ok(&vdisk(["create", "-f", "vhd", s(&img), "16M"]));
    let held = vdisk::open(&img, &OpenOptions::new()).expect("vdisk opens the image read-only");
    ok(&qemu_img(["info", s(&img)]));
    ok(&qemu_io("vpc", &["-r"], "read 0 512", &img));
    qemu_refused(
        &qemu_io("vpc", &[], "write 0 512", &img),
        "Failed to get \"write\" lock",
    );
    drop(held);
}

#[test]
fn vmdk_extents_are_locked_with_their_image() {
    if !qemu_available("vmdk_extents_are_locked_with_their_image") {
        return;
    }
    let (_d, dir) = temp();
    let img = dir.join("split.vmdk");
    ok(&vdisk([
        "create",
        "-f",
        "vmdk",
        "-o",
        "subformat=twoGbMaxExtentFlat",
        s(&img),
        "16M",
    ]));
    let extent = dir.join("split-f001.vmdk");
    assert!(extent.exists(), "the flat extent is {}", extent.display());
    let options = OpenOptions::new()
        .writable(true)
        .resolver(Arc::new(FsResolver::new(FsPolicy::SameDirectory)));
    let held = vdisk::open(&img, &options).expect("vdisk opens the split image writable");
    // Writing the extent file directly would go around vdisk: qemu is refused.
    qemu_refused(
        &qemu_io("raw", &[], "write 0 512", &extent),
        "Failed to get \"write\" lock",
    );
    drop(held);
    ok(&qemu_io("raw", &[], "write 0 512", &extent));
}

#[test]
fn commit_and_resize_refuse_a_chain_qemu_uses() {
    if !qemu_available("commit_and_resize_refuse_a_chain_qemu_uses") {
        return;
    }
    let (_d, dir) = temp();
    let base = dir.join("base.vmdk");
    let child = dir.join("child.vmdk");
    ok(&vdisk(["create", "-f", "vmdk", s(&base), "16M"]));
    ok(&vdisk(["create", "-f", "vmdk", "-b", "base.vmdk", s(&child)]));
    ok(&vdisk(["io", "-c", "write -P 0x33 0 65536", s(&child)]));
    let base_before = fingerprint(&base);
    {
        // A VM reading the parent as its backing file: committing into it is refused.
        let _reader = QemuIo::hold("vmdk", &["-r"], &base);
        vdisk_refused(&vdisk(["commit", s(&child)]), "Failed to get \"write\" lock");
        vdisk_refused(&vdisk(["resize", s(&base), "32M"]), "Failed to get \"write\" lock");
    }
    {
        // A VM writing the child: its data cannot be committed under it.
        let _vm = QemuIo::hold("vmdk", &[], &child);
        vdisk_refused(&vdisk(["commit", s(&child)]), "Failed to get shared \"write\" lock");
    }
    assert_eq!(fingerprint(&base), base_before, "the parent is untouched");
    // With nobody using the chain, commit works (it writes the parent beside its own reader).
    ok(&vdisk(["commit", s(&child)]));
    ok(&vdisk(["io", "-c", "read -P 0x33 0 65536", s(&base)]));
}
