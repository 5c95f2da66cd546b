//! Which files an image may make `vdisk` open: `--external same-dir` (the default) opens only
//! plain files in the image's own directory, `--external any` whatever the image names (as
//! qemu-img does), `--external none` / `--no-external` nothing but the named file.

mod common;

use common::*;
use std::path::{Path, PathBuf};

/// A monolithicFlat VMDK descriptor `img/d.vmdk` whose one extent of `sectors` sectors is the
/// file recorded as `extent`.
fn flat_vmdk(dir: &Path, extent: &str, sectors: u64) -> PathBuf {
    let img = dir.join("img");
    std::fs::create_dir_all(&img).unwrap();
    let d = img.join("d.vmdk");
    ok(&vdisk([
        "create",
        "-f",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
        d.to_str().unwrap(),
        "1M",
    ]));
    std::fs::remove_file(img.join("d-flat.vmdk")).unwrap();
    let text = std::fs::read_to_string(&d).unwrap();
    let line = "RW 2048 FLAT \"d-flat.vmdk\" 0";
    assert!(text.contains(line), "{text}");
    std::fs::write(&d, text.replace(line, &format!("RW {sectors} FLAT \"{extent}\" 0"))).unwrap();
    d
}

/// A file `outside.bin` beside the image directory, holding 4 KiB that do not read as zeros.
fn outside(dir: &Path) -> (PathBuf, Vec<u8>) {
    let path = dir.join("outside.bin");
    let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8 + 1).collect();
    std::fs::write(&path, &data).unwrap();
    (path, data)
}

/// Convert `src` to raw `dst` under the given global flags.
fn convert(flags: &[&str], src: &Path, dst: &Path) -> std::process::Output {
    let mut args: Vec<&str> = flags.to_vec();
    args.extend(["convert", "-O", "raw", src.to_str().unwrap(), dst.to_str().unwrap()]);
    vdisk(args)
}

fn assert_refused(e: &str, recorded: &str, secret: &[u8]) {
    assert!(e.contains(&format!("'{recorded}' refused")), "{e}");
    assert!(e.contains("--external any"), "the refusal says how to allow it: {e}");
    let shown = String::from_utf8_lossy(&secret[..32]);
    assert!(!e.contains(&*shown), "{e}");
}

#[test]
fn extents_outside_the_directory_are_refused_by_default() {
    let (_d, dir) = temp();
    let (outside_path, data) = outside(&dir);
    let absolute = outside_path.to_str().unwrap().to_string();
    for recorded in [absolute.as_str(), "../outside.bin"] {
        let d = flat_vmdk(&dir, recorded, 8);
        let dst = dir.join("img/out.raw");
        for flags in [&[][..], &["--external", "same-dir"]] {
            let e = clean_error(&convert(flags, &d, &dst), 1);
            assert_refused(&e, recorded, &data);
            assert!(!dst.exists(), "no output is left behind");
        }
        let e = clean_error(&convert(&["--no-external"], &d, &dst), 1);
        assert!(e.contains(recorded) && e.contains("--no-external"), "{e}");
        clean_error(&convert(&["--external", "none"], &d, &dst), 1);
        // Writes through the image are refused too, and the outside file is left alone.
        let e = clean_error(&vdisk(["io", "-c", "write -P 0 0 512", d.to_str().unwrap()]), 1);
        assert_refused(&e, recorded, &data);
        assert_eq!(std::fs::read(&outside_path).unwrap(), data);

        ok(&convert(&["--external", "any"], &d, &dst));
        assert_eq!(std::fs::read(&dst).unwrap(), data, "{recorded}");
        std::fs::remove_file(&dst).unwrap();
    }
}

#[test]
fn etc_passwd_as_a_flat_extent() {
    let Ok(meta) = std::fs::metadata("/etc/passwd") else {
        disk_core::testing::interop::report_skip("etc_passwd_as_a_flat_extent", "no /etc/passwd here");
        return;
    };
    let sectors = meta.len() / 512;
    if sectors == 0 {
        disk_core::testing::interop::report_skip("etc_passwd_as_a_flat_extent", "/etc/passwd is shorter than a sector");
        return;
    }
    let (_d, dir) = temp();
    let d = flat_vmdk(&dir, "/etc/passwd", sectors);
    let dst = dir.join("img/out.raw");
    let e = clean_error(&convert(&[], &d, &dst), 1);
    assert!(e.contains("'/etc/passwd' refused"), "{e}");
    assert!(!e.contains("root:"), "{e}");
    assert!(!dst.exists());
    ok(&convert(&["--external", "any"], &d, &dst));
    let passwd = std::fs::read("/etc/passwd").unwrap();
    assert_eq!(std::fs::read(&dst).unwrap(), passwd[..(sectors * 512) as usize]);
}

#[test]
fn links_leading_out_are_refused_by_default() {
    let (_d, dir) = temp();
    let (outside_path, data) = outside(&dir);
    let d = flat_vmdk(&dir, "link.bin", 8);
    let link = dir.join("img/link.bin");
    let dst = dir.join("img/out.raw");
    // A symbolic link, then a hard link, with the name the descriptor records.
    std::os::unix::fs::symlink(&outside_path, &link).unwrap();
    let e = clean_error(&convert(&[], &d, &dst), 1);
    assert_refused(&e, "link.bin", &data);
    ok(&convert(&["--external", "any"], &d, &dst));
    std::fs::remove_file(&dst).unwrap();
    std::fs::remove_file(&link).unwrap();
    std::fs::hard_link(&outside_path, &link).unwrap();
    let e = clean_error(&convert(&[], &d, &dst), 1);
    assert_refused(&e, "link.bin", &data);
    assert!(e.contains("hard link"), "{e}");
    ok(&convert(&["--external", "any"], &d, &dst));
    assert_eq!(std::fs::read(&dst).unwrap(), data);
    // A plain file of its own in the directory is fine by default.
    std::fs::remove_file(&dst).unwrap();
    std::fs::remove_file(&link).unwrap();
    std::fs::write(&link, &data).unwrap();
    ok(&convert(&[], &d, &dst));
    assert_eq!(std::fs::read(&dst).unwrap(), data);
}

#[test]
fn a_fifo_extent_is_refused_without_hanging() {
    use std::process::{Command, Stdio};
    let (_d, dir) = temp();
    let d = flat_vmdk(&dir, "fifo.bin", 8);
    let status = Command::new("mkfifo").arg(dir.join("img/fifo.bin")).status();
    if !status.is_ok_and(|s| s.success()) {
        disk_core::testing::interop::report_skip("a_fifo_extent_is_refused_without_hanging", "cannot make a FIFO here");
        return;
    }
    for flags in [&[][..], &["--external", "any"]] {
        let mut args: Vec<&str> = flags.to_vec();
        args.extend(["info", d.to_str().unwrap()]);
        let mut child = Command::new(env!("CARGO_BIN_EXE_vdisk"))
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > std::time::Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("vdisk {args:?} hangs on a FIFO extent");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let e = clean_error(&out, 1);
        assert!(e.contains("'fifo.bin' refused"), "{args:?}: {e}");
    }
}

#[test]
fn parents_outside_the_directory_need_external_any() {
    let (_d, dir) = temp();
    std::fs::create_dir(dir.join("base")).unwrap();
    std::fs::create_dir(dir.join("img")).unwrap();
    let base = dir.join("base/base.vhd");
    let child = dir.join("img/child.vhd");
    ok(&vdisk(["create", "-f", "vhd", base.to_str().unwrap(), "1M"]));
    ok(&vdisk(["io", "-c", "write -P 0x5a 0 64K", base.to_str().unwrap()]));
    // The user names the backing file: that is their choice and allowed.
    ok(&vdisk([
        "create",
        "-f",
        "vhd",
        "-b",
        "../base/base.vhd",
        "-F",
        "vpc",
        child.to_str().unwrap(),
    ]));
    let c = child.to_str().unwrap();
    // Reading through the child opens the parent the child names: refused by default.
    let e = clean_error(&vdisk(["map", c]), 1);
    assert!(e.contains("parent file '..\\base\\base.vhd' refused"), "{e}");
    assert!(e.contains("--external any"), "{e}");
    // info still describes the child itself.
    ok(&vdisk(["info", c]));
    let before = fingerprint(&base);
    let e = clean_error(&vdisk(["commit", c]), 1);
    assert!(e.contains("refused"), "{e}");
    assert_eq!(fingerprint(&base), before, "a refused commit leaves the parent alone");
    ok(&vdisk(["--external", "any", "io", "-c", "read -P 0x5a 0 64K", c]));
    ok(&vdisk(["--external", "any", "commit", c]));
}

#[test]
fn parents_in_the_same_directory_open_by_default() {
    let (_d, dir) = temp();
    let base = dir.join("base.vhd");
    let child = dir.join("child.vhd");
    ok(&vdisk(["create", "-f", "vhd", base.to_str().unwrap(), "1M"]));
    ok(&vdisk(["io", "-c", "write -P 0x5a 0 64K", base.to_str().unwrap()]));
    ok(&vdisk([
        "create",
        "-f",
        "vhd",
        "-b",
        "base.vhd",
        child.to_str().unwrap(),
    ]));
    ok(&vdisk(["io", "-c", "read -P 0x5a 0 64K", child.to_str().unwrap()]));
    // Also when the parent is recorded by its absolute name (as qemu-img records it).
    let child2 = dir.join("child2.vhd");
    ok(&vdisk([
        "create",
        "-f",
        "vhd",
        "-b",
        base.to_str().unwrap(),
        child2.to_str().unwrap(),
    ]));
    ok(&vdisk(["io", "-c", "read -P 0x5a 0 64K", child2.to_str().unwrap()]));
}

#[test]
fn external_and_no_external_do_not_combine() {
    let e = clean_error(&vdisk(["--external", "any", "--no-external", "info", "x"]), 1);
    assert!(e.contains("--no-external"), "{e}");
    let e = clean_error(&vdisk(["--external", "anywhere", "info", "x"]), 1);
    assert!(e.contains("same-dir") && e.contains("any") && e.contains("none"), "{e}");
}

use disk_core::testing::LoopDevice;

#[test]
fn images_and_extents_on_block_devices() {
    let (_d, dir) = temp();
    // An image on a block device (an LVM volume, say), named by the user: it opens at its size.
    let vhd = dir.join("disk.vhd");
    ok(&vdisk([
        "create",
        "-f",
        "vhd",
        "-o",
        "subformat=fixed",
        vhd.to_str().unwrap(),
        "2M",
    ]));
    ok(&vdisk(["io", "-c", "write -P 0x42 1M 4K", vhd.to_str().unwrap()]));
    let Some(dev) = LoopDevice::attach(&vhd) else { return };
    let d = dev.path().to_str().unwrap();
    let v = json(&vdisk(["info", "--output", "json", d]));
    assert_eq!(v["format"], "vpc", "{v}");
    assert_eq!(v["virtual-size"], 2 << 20, "{v}");
    ok(&vdisk(["io", "-c", "read -P 0x42 1M 4K", d]));

    // A flat extent naming a block device: refused by default, read with --external any.
    let (_, data) = outside(&dir);
    let raw = dir.join("extent.raw");
    std::fs::write(&raw, &data).unwrap();
    let Some(extent_dev) = LoopDevice::attach(&raw) else {
        return;
    };
    let recorded = extent_dev.path().to_str().unwrap();
    let image = flat_vmdk(&dir, recorded, 8);
    let dst = dir.join("img/out.raw");
    let e = clean_error(&convert(&[], &image, &dst), 1);
    assert_refused(&e, recorded, &data);
    ok(&convert(&["--external", "any"], &image, &dst));
    assert_eq!(std::fs::read(&dst).unwrap(), data, "the device's data, not zeros");
}
