//! qemu-img's flags that scripts use: `-q`, `-p` on a non-terminal, `map --start-offset
//! --max-length`, `create -o help`, `-o size=`, raw `preallocation`, VMDK `compat6`, and a
//! differencing VHD that QEMU writes keeping its parent locators.

mod common;

use common::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;

fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn quiet_prints_nothing_but_what_the_command_is_for() {
    let (_d, dir) = temp();
    let img = dir.join("q.vhdx");
    let out = vdisk(["create", "-q", "-f", "vhdx", s(&img), "8M"]);
    assert_eq!(ok(&out), "");
    let raw = dir.join("q.raw");
    assert_eq!(ok(&vdisk(["convert", "-q", "-p", "-O", "raw", s(&img), s(&raw)])), "");
    assert_eq!(ok(&vdisk(["compare", "-q", s(&img), s(&raw)])), "");
    let differ = dir.join("d.raw");
    sparse_raw(&differ, 8 * MIB, &[(4096, 1, 512)]);
    let out = vdisk(["compare", "-q", s(&img), s(&differ)]);
    assert_eq!((out.status.code(), stdout(&out).as_str()), (Some(1), ""));
    // `-q` may come before the command too; `info` still prints what it is for.
    assert!(ok(&vdisk(["-q", "info", s(&img)])).contains("file format: vhdx"));
}

#[test]
fn progress_on_a_pipe_is_qemu_img_lines() {
    let (_d, dir) = temp();
    let src = dir.join("p.raw");
    sparse_raw(&src, 64 * MIB, &[(0, 7, MIB as usize), (40 * MIB, 9, MIB as usize)]);
    let text = ok(&vdisk(["convert", "-p", "-O", "vhdx", s(&src), s(&dir.join("p.vhdx"))]));
    assert!(text.starts_with("    (0.00/100%)\r"), "{text:?}");
    assert!(text.ends_with("    (100.00/100%)\r\n"), "{text:?}");
    for line in text.trim_end().split('\r').filter(|l| !l.is_empty()) {
        let pct = line.trim().trim_start_matches('(').trim_end_matches("/100%)");
        let value: f64 = pct.parse().unwrap_or_else(|_| panic!("{line:?} in {text:?}"));
        assert!((0.0..=100.0).contains(&value));
    }
    if qemu_img_available("progress_on_a_pipe_is_qemu_img_lines") {
        let q = qemu_img(["convert", "-p", "-O", "raw", s(&src), s(&dir.join("q.raw"))]);
        let q = stdout(&q);
        assert!(
            q.starts_with("    (0.00/100%)\r") && q.ends_with("    (100.00/100%)\r\n"),
            "{q:?}"
        );
    }
    // compare -p and commit -p draw the same lines; commit -d keeps the child.
    let text = ok(&vdisk(["compare", "-p", s(&src), s(&dir.join("p.vhdx"))]));
    assert!(
        text.contains("(100.00/100%)\r\n") && text.ends_with("Images are identical.\n"),
        "{text:?}"
    );
    let child = dir.join("c.vhdx");
    ok(&vdisk(["create", "-f", "vhdx", "-b", "p.vhdx", s(&child)]));
    ok(&vdisk(["io", "-c", "write -P 3 0 64k", s(&child)]));
    let text = ok(&vdisk(["commit", "-p", "-d", s(&child)]));
    assert!(text.ends_with("(100.00/100%)\r\nImage committed.\n"), "{text:?}");
    assert!(child.exists());
}

#[test]
fn map_range_matches_qemu() {
    if !qemu_img_available("map_range_matches_qemu") {
        return;
    }
    let (_d, dir) = temp();
    let img = dir.join("m.raw");
    sparse_raw(&img, 64 * MIB, &[(MIB, 1, 3 * MIB as usize), (10 * MIB, 2, 512 * 1024)]);
    let runs = |out: &std::process::Output| -> Vec<(u64, u64, bool)> {
        let v: Value = serde_json::from_str(&stdout(out)).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["start"].as_u64().unwrap(),
                    e["length"].as_u64().unwrap(),
                    e["data"].as_bool().unwrap(),
                )
            })
            .collect()
    };
    for range in [
        &["--start-offset", "1536K", "--max-length", "9M"][..],
        &["--start-offset", "513", "--max-length", "1000"],
        &["--start-offset", "60M"],
        &["--max-length", "10M"],
        &["--start-offset", "100M"],
    ] {
        let mut args = vec!["map", "-f", "raw", "--output=json"];
        args.extend_from_slice(range);
        args.push(s(&img));
        let ours = runs(&vdisk(&args));
        args[0] = "map";
        let theirs = runs(&qemu_img(&args));
        assert_eq!(ours, theirs, "{range:?}");
    }
}

#[test]
fn create_options_help_size_and_preallocation() {
    let (_d, dir) = temp();
    for (fmt, keys) in [
        (
            "vhdx",
            &["block_size=<size>", "(default: 32M)", "log_size=<size>", "size=<size>"][..],
        ),
        (
            "vpc",
            &["subformat=<str>", "force_size=<bool (on/off)>", "backing_file=<str>"],
        ),
        (
            "vmdk",
            &[
                "compat6=<bool (on/off)>",
                "adapter_type=<str>",
                "(default: monolithicSparse)",
            ],
        ),
        ("raw", &["preallocation=<str>"]),
    ] {
        for ask in ["help", "?"] {
            let text = ok(&vdisk(["create", "-f", fmt, "-o", ask, s(&dir.join("x"))]));
            assert!(text.starts_with("Supported options"), "{text}");
            for k in keys {
                assert!(text.contains(k), "{fmt}: {k} in {text}");
            }
        }
    }
    let text = ok(&vdisk(["convert", "-O", "vhdx", "-o", "help", "a", "b"]));
    assert!(
        text.contains("block_size=<size>") && !text.contains("\n  size=<size>"),
        "{text}"
    );
    assert!(!dir.join("x").exists());

    // -o size= as qemu-img takes it; twice and different is refused.
    let img = dir.join("s.vhdx");
    ok(&vdisk([
        "create",
        "-f",
        "vhdx",
        "-o",
        "size=10M,block_size=1M",
        s(&img),
    ]));
    assert_eq!(
        json(&vdisk(["info", "--output=json", s(&img)]))["virtual-size"],
        10 * MIB
    );
    clean_error(
        &vdisk(["create", "-f", "vhdx", "-o", "size=10M", s(&dir.join("t.vhdx")), "20M"]),
        1,
    );

    let size = 8 * MIB;
    for (mode, min_alloc) in [("off", 0), ("falloc", size), ("full", size)] {
        let f = dir.join(format!("{mode}.raw"));
        ok(&vdisk([
            "create",
            "-f",
            "raw",
            "-o",
            &format!("preallocation={mode}"),
            s(&f),
            "8M",
        ]));
        let alloc = allocated(&f);
        assert!(alloc >= min_alloc && (mode != "off" || alloc == 0), "{mode}: {alloc}");
        assert_eq!(std::fs::read(&f).unwrap(), vec![0; size as usize]);
    }
    clean_error(
        &vdisk([
            "create",
            "-f",
            "raw",
            "-o",
            "preallocation=metadata",
            s(&dir.join("m.raw")),
            "8M",
        ]),
        1,
    );
}

#[test]
fn vmdk_compat6() {
    let (_d, dir) = temp();
    let img = dir.join("c6.vmdk");
    ok(&vdisk(["create", "-f", "vmdk", "-o", "compat6", s(&img), "16M"]));
    let bytes = std::fs::read(&img).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("ddb.virtualHWVersion = \"6\""));
    let e = clean_error(
        &vdisk([
            "create",
            "-f",
            "vmdk",
            "-o",
            "compat6,hwversion=7",
            s(&dir.join("x.vmdk")),
            "16M",
        ]),
        1,
    );
    assert!(e.contains("compat6 cannot be enabled with hwversion set"), "{e}");
    if qemu_img_available("vmdk_compat6") {
        assert!(qemu_img(["check", s(&img)]).status.success());
    }
}

/// QEMU allocates a VHD's new blocks right after the BAT; a differencing VHD made here keeps
/// its parent locators out of the way, so a child QEMU wrote still finds its parent.
#[test]
fn a_differencing_vhd_qemu_writes_keeps_its_parent() {
    if !tools_available(
        "a_differencing_vhd_qemu_writes_keeps_its_parent",
        &["qemu-img", "qemu-io"],
    ) {
        return;
    }
    let (_d, dir) = temp();
    let base = dir.join("base.vhd");
    let child = dir.join("child.vhd");
    ok(&vdisk(["create", "-f", "vpc", s(&base), "8M"]));
    ok(&vdisk(["create", "-f", "vpc", "-b", "base.vhd", s(&child)]));
    let w = std::process::Command::new("qemu-io")
        .args(["-f", "vpc", "-c", "write -P 3 0 1M", s(&child)])
        .output()
        .unwrap();
    assert!(w.status.success());
    let report = ok(&vdisk(["check", s(&child)]));
    assert!(report.contains("No errors"), "{report}");
    let info = json(&vdisk(["info", "--output=json", s(&child)]));
    assert_eq!(info["backing-filename"], "base.vhd", "{info}");
    ok(&vdisk(["commit", s(&child)]));
    let out = ok(&vdisk(["io", "-c", "read -P 3 0 1M", s(&base)]));
    assert!(out.contains("read 1048576/1048576"), "{out}");
}

/// `convert -n` copies into an existing image: what the source reads as zeros overwrites what
/// the target held; a smaller target is refused and left alone.
#[test]
fn convert_into_an_existing_image() {
    let (_d, dir) = temp();
    let src = dir.join("src.raw");
    sparse_raw(&src, 32 * MIB, &[(MIB, 0x41, 100_000), (20 * MIB, 0, MIB as usize)]);
    for (fmt, workers) in [("vhdx", "1"), ("vmdk", "4"), ("raw", "2")] {
        let target = dir.join(format!("t.{fmt}"));
        ok(&vdisk(["create", "-f", fmt, s(&target), "40M"]));
        ok(&vdisk(["io", "-c", "write -P 238 0 40M", s(&target)]));
        ok(&vdisk([
            "convert",
            "-n",
            "-m",
            workers,
            "-f",
            "raw",
            "-O",
            fmt,
            s(&src),
            s(&target),
        ]));
        let cmp = vdisk(["compare", "-f", "raw", "-F", fmt, s(&src), s(&target)]);
        assert_eq!(
            cmp.status.code(),
            Some(1),
            "{fmt}: the target is larger, its tail keeps its data"
        );
        let out = ok(&vdisk([
            "io",
            "-c",
            "read -P 0 0 1M",
            "-c",
            "read -P 65 1M 100000",
            "-c",
            "read -P 0 20M 12M",
            "-c",
            "read -P 238 32M 8M",
            s(&target),
        ]));
        assert!(!out.contains("failed") && !out.contains("mismatch"), "{fmt}: {out}");
    }
    let small = dir.join("small.vhdx");
    ok(&vdisk(["create", "-f", "vhdx", s(&small), "16M"]));
    let before = std::fs::read(&small).unwrap();
    let e = clean_error(&vdisk(["convert", "-n", "-O", "vhdx", s(&src), s(&small)]), 1);
    assert!(e.contains("smaller than the input"), "{e}");
    assert_eq!(std::fs::read(&small).unwrap(), before);
    clean_error(
        &vdisk(["convert", "-n", "-o", "block_size=1M", "-O", "vhdx", s(&src), s(&small)]),
        1,
    );
}

/// `convert -B` makes a child of the backing file holding only what differs from it: changed
/// data, and zeros where the source is zero but the backing file is not.
#[test]
fn convert_over_a_backing_file() {
    let (_d, dir) = temp();
    let base_raw = dir.join("base.raw");
    sparse_raw(
        &base_raw,
        32 * MIB,
        &[(0, 0x41, 4 * MIB as usize), (10 * MIB, 0x42, MIB as usize)],
    );
    let new_raw = dir.join("new.raw");
    std::fs::copy(&base_raw, &new_raw).unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&new_raw).unwrap();
        f.write_all_at(&[0x43; 4096], 2 * MIB).unwrap();
        f.write_all_at(&vec![0; MIB as usize], 10 * MIB).unwrap();
        f.write_all_at(&[0x44; 512], 20 * MIB).unwrap();
    }
    for fmt in ["vmdk", "vhdx", "vpc"] {
        let base = dir.join(format!("base.{fmt}"));
        let child = dir.join(format!("child.{fmt}"));
        ok(&vdisk(["convert", "-O", fmt, s(&base_raw), s(&base)]));
        let name = base.file_name().unwrap().to_str().unwrap();
        ok(&vdisk([
            "convert",
            "-O",
            fmt,
            "-B",
            name,
            "-F",
            fmt,
            s(&new_raw),
            s(&child),
        ]));
        let info = json(&vdisk(["info", "--output=json", s(&child)]));
        assert_eq!(info["backing-filename"], name, "{info}");
        let out = ok(&vdisk(["compare", s(&new_raw), s(&child)]));
        assert!(out.contains("identical"), "{fmt}: {out}");
        // Only the three changed ranges live in the child.
        let map = json(&vdisk(["map", "--output=json", s(&child)]));
        let own: u64 = map
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["depth"] == 0 && e["present"] == true)
            .map(|e| e["length"].as_u64().unwrap())
            .sum();
        assert!(own <= 2 * MIB + 128 * 1024, "{fmt}: {own} bytes in the child");
        if fmt == "vmdk" && qemu_img_available("convert_over_a_backing_file") {
            let cmp = qemu_img(["compare", "-f", "raw", "-F", "vmdk", s(&new_raw), s(&child)]);
            assert!(cmp.status.success(), "{}", stdout(&cmp));
            assert!(qemu_img(["check", s(&child)]).status.success());
        }
    }
}

/// `commit -b BASE` puts the data of every layer above BASE into it; the top image keeps
/// reading the same, and so does BASE from then on.
#[test]
fn commit_into_a_deeper_base() {
    let (_d, dir) = temp();
    for fmt in ["vmdk", "vhdx", "vpc"] {
        let names: Vec<_> = (0..3).map(|i| dir.join(format!("c{i}.{fmt}"))).collect();
        ok(&vdisk(["create", "-f", fmt, s(&names[0]), "16M"]));
        ok(&vdisk(["io", "-c", "write -P 1 0 16M", s(&names[0])]));
        // Each layer is written before its child is made (writing a parent changes it under
        // its child).
        let writes = [&["write -P 2 1M 1M"][..], &["write -P 3 2M 1M", "write -z 4M 64k"]];
        for i in 1..3 {
            let parent = names[i - 1].file_name().unwrap().to_str().unwrap();
            ok(&vdisk(["create", "-f", fmt, "-b", parent, s(&names[i])]));
            for w in writes[i - 1] {
                ok(&vdisk(["io", "-c", w, s(&names[i])]));
            }
        }
        let want = dir.join(format!("want-{fmt}.raw"));
        ok(&vdisk(["convert", "-O", "raw", s(&names[2]), s(&want)]));
        let out = ok(&vdisk(["commit", "-b", s(&names[0]), s(&names[2])]));
        assert!(out.ends_with("Image committed.\n"), "{out}");
        for image in [&names[2], &names[0]] {
            let out = ok(&vdisk(["compare", s(&want), s(image)]));
            assert!(out.contains("identical"), "{fmt}: {}: {out}", image.display());
        }
        let e = clean_error(&vdisk(["commit", "-b", s(&names[2]), s(&names[2])]), 1);
        assert!(e.contains("not in the backing chain"), "{e}");
    }
}

/// `--image-opts` takes qemu-img's option strings for the images read.
#[test]
fn image_opts_name_the_file_and_driver() {
    let (_d, dir) = temp();
    let img = dir.join("o.vhdx");
    ok(&vdisk(["create", "-f", "vhdx", s(&img), "8M"]));
    let opts = format!("driver=vhdx,file.driver=file,file.filename={}", s(&img));
    assert_eq!(
        ok(&vdisk(["info", "--image-opts", &opts])),
        ok(&vdisk(["info", s(&img)]))
    );
    let j = json(&vdisk(["check", "--output=json", "--image-opts", &opts]));
    assert_eq!(j["filename"], s(&img), "{j}");
    ok(&vdisk([
        "compare",
        "--image-opts",
        &opts,
        &format!("file.filename={}", s(&img)),
    ]));
    let e = clean_error(
        &vdisk([
            "info",
            "--image-opts",
            &format!("driver=vmdk,file.filename={}", s(&img)),
        ]),
        1,
    );
    assert!(!e.is_empty());
    let e = clean_error(
        &vdisk([
            "info",
            "--image-opts",
            &format!("cache.direct=on,file.filename={}", s(&img)),
        ]),
        1,
    );
    assert!(e.contains("'cache.direct' is not supported"), "{e}");
    if qemu_img_available("image_opts_name_the_file_and_driver") {
        let q = qemu_img(["info", "--image-opts", &opts]);
        assert!(q.status.success(), "{}", stderr(&q));
    }
}
