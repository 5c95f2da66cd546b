//! `vdisk resize`, `commit`, `rebase` and `measure` on VHD and VMDK images: the guest view
//! compared with raw copies made before, and (when `qemu-img` is installed) `qemu-img info`,
//! `check` and `compare` on the results.

mod common;

use common::*;
use std::path::Path;

const MIB: u64 = 1 << 20;

/// Same guest data (a larger one may have extra zeros).
fn same(a: &Path, b: &Path) {
    assert!(
        ok(&vdisk(["compare", a.to_str().unwrap(), b.to_str().unwrap()])).ends_with("Images are identical.\n"),
        "{} vs {}",
        a.display(),
        b.display()
    );
}

fn virtual_size(img: &Path) -> u64 {
    json(&vdisk(["info", "--output", "json", img.to_str().unwrap()]))["virtual-size"]
        .as_u64()
        .unwrap()
}

/// libyal's view (vhdiinfo reads VHD and VHDX, vmdkinfo VMDK) of the size, when the tool is installed.
fn libyal_agrees(img: &Path, format: &str, size: u64) {
    let tool = match format {
        "vhd" => "vhdiinfo",
        "vhdx" => "vhdiinfo",
        _ => "vmdkinfo",
    };
    if !disk_core::testing::interop::tools_available("libyal_agrees", &[tool]) {
        return;
    }
    let out = std::process::Command::new(tool).arg(img).output().expect(tool);
    let text = stdout(&out);
    assert!(out.status.success(), "{tool} {}: {text}{}", img.display(), stderr(&out));
    assert!(
        text.contains(&format!("({size} bytes)")),
        "{tool} {}: {text}",
        img.display()
    );
}

/// qemu-img's view after a resize: the new size, a clean check where it has one, the old data.
fn qemu_agrees(img: &Path, qemu_format: &str, size: u64, before: &Path) {
    let i = img.to_str().unwrap();
    let f = qemu_format;
    let info: serde_json::Value = serde_json::from_str(&ok(&qemu_img(["info", "-f", f, "--output=json", i]))).unwrap();
    assert_eq!(info["virtual-size"], size, "qemu-img info {i}");
    let check = qemu_img(["check", "-f", f, i]);
    let text = stdout(&check) + &stderr(&check);
    assert!(
        check.status.success() || text.contains("does not support checks"),
        "qemu-img check {i}: {text}"
    );
    // On the common prefix (a size mismatch is fine when the extra part reads as zeros).
    let cmp = qemu_img(["compare", "-f", "raw", "-F", f, before.to_str().unwrap(), i]);
    assert!(
        stdout(&cmp).ends_with("Images are identical.\n"),
        "qemu-img compare {i}: {}",
        stdout(&cmp)
    );
}

#[test]
fn resize_every_subformat_like_qemu_sees_it() {
    let (_d, dir) = temp();
    let qemu = qemu_img_available("resize_every_subformat_like_qemu_sees_it");
    let cases: &[(&str, &str)] = &[
        ("vhd", "subformat=fixed"),
        ("vhd", "subformat=dynamic,block_size=64K"),
        ("vmdk", "subformat=monolithicSparse"),
        ("vmdk", "subformat=monolithicFlat"),
        ("vmdk", "subformat=twoGbMaxExtentSparse"),
        ("vmdk", "subformat=twoGbMaxExtentFlat"),
    ];
    for (n, (format, opts)) in cases.iter().enumerate() {
        let img = dir.join(format!("r{n}.{format}"));
        let i = img.to_str().unwrap();
        let qf = if *format == "vhd" { "vpc" } else { format };
        ok(&vdisk(["create", "-f", format, "-o", opts, i, "6M"]));
        ok(&vdisk([
            "io",
            "-c",
            "write -P 0x61 0 64k",
            "-c",
            "write -P 0x62 5M 1M",
            i,
        ]));
        let before = dir.join(format!("r{n}.raw"));
        raw_copy(&img, &before);
        // Grow past the BAT's sector / the grain directory's room, past 2 GiB for split images.
        for (step, size) in [(0, 8 * MIB), (1, 2200 * MIB)] {
            assert_eq!(
                ok(&vdisk(["resize", i, &size.to_string()])),
                "Image resized.\n",
                "{opts} {step}"
            );
            assert_eq!(virtual_size(&img), size, "{opts}");
            ok(&vdisk(["check", i]));
            same(&before, &img);
            if qemu {
                qemu_agrees(&img, qf, size, &before);
            }
            libyal_agrees(&img, format, size);
        }
        // New space reads as zeros; writing there works, for us and for QEMU.
        ok(&vdisk([
            "io",
            "-c",
            "read -P 0 6M 2M",
            "-c",
            "write -P 0x63 2100M 64k",
            i,
        ]));
        if qemu {
            let out = std::process::Command::new("qemu-io")
                .args(["-f", qf, "-c", "write -P 0x64 2150M 64k", i])
                .output();
            if let Ok(out) = out {
                assert!(
                    out.status.success() && !stdout(&out).contains("failed"),
                    "qemu-io {opts}: {}",
                    stdout(&out)
                );
                ok(&vdisk(["io", "-c", "read -P 0x64 2150M 64k", i]));
                ok(&vdisk(["check", i]));
            }
        }
        // Shrinking: refused without --shrink; with it, the data written past 2 GiB is cut off
        // with a warning (--discard-data is still accepted, and adds nothing).
        let e = clean_error(&vdisk(["resize", i, "3M"]), 1);
        assert!(e.contains("--shrink"), "{opts}: {e}");
        let out = vdisk(["resize", "--shrink", "--discard-data", i, "6M"]);
        ok(&out);
        assert!(
            stderr(&out).starts_with("vdisk: warning: ") && stderr(&out).contains("the smallest safe size was"),
            "{opts}: {}",
            stderr(&out)
        );
        assert_eq!(virtual_size(&img), 6 * MIB);
        ok(&vdisk(["check", i]));
        same(&before, &img);
        if qemu {
            qemu_agrees(&img, qf, 6 * MIB, &before);
        }
        // Growing again shows zeros, not what was dropped.
        ok(&vdisk(["resize", i, "+3000M"]));
        ok(&vdisk(["io", "-c", "read -P 0 2100M 64k", i]));
        same(&before, &img);
    }
}

#[test]
fn resize_refusals_change_nothing() {
    let (_d, dir) = temp();
    let vhd = dir.join("a.vhd");
    let v = vhd.to_str().unwrap();
    ok(&vdisk(["create", "-f", "vhd", v, "8M"]));
    let before = fingerprint(&vhd);
    let e = clean_error(&vdisk(["resize", v, "2041G"]), 1);
    assert!(e.contains("largest size"), "{e}");
    let e = clean_error(&vdisk(["resize", v, "+1000"]), 1);
    assert!(e.contains("512-byte sectors"), "{e}");
    clean_error(&vdisk(["resize", v, "0"]), 1);
    clean_error(&vdisk(["resize", v, "4M"]), 1);
    assert_eq!(fingerprint(&vhd), before);

    let vmdk = dir.join("a.vmdk");
    let m = vmdk.to_str().unwrap();
    ok(&vdisk(["create", "-f", "vmdk", m, "8M"]));
    let e = clean_error(&vdisk(["resize", m, "3T"]), 1);
    assert!(e.contains("largest size"), "{e}");
    // A descriptor-file image: a refusal names it and leaves no temporary copy behind.
    let split = dir.join("split.vmdk");
    let sp = split.to_str().unwrap();
    ok(&vdisk([
        "create",
        "-f",
        "vmdk",
        "-o",
        "subformat=twoGbMaxExtentSparse",
        sp,
        "8M",
    ]));
    ok(&vdisk(["io", "-c", "write 7M 4k", sp]));
    let before = fingerprint(&split);
    let e = clean_error(&vdisk(["resize", sp, "1M"]), 1);
    assert!(e.contains(&format!("{sp}: ")) && e.contains("--shrink"), "{e}");
    assert_eq!(fingerprint(&split).0, before.0);
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("vdisk-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let stream = dir.join("s.vmdk");
    let s = stream.to_str().unwrap();
    ok(&vdisk([
        "create",
        "-f",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        s,
        "8M",
    ]));
    let before = fingerprint(&stream);
    let e = clean_error(&vdisk(["resize", s, "+1M"]), 1);
    assert!(e.contains("streamOptimized"), "{e}");
    assert_eq!(fingerprint(&stream), before);
}

/// The formats with differencing images: VHD, VMDK, and VHDX when its engine can create images
/// here (skipped with a message otherwise).
fn chain_formats() -> Vec<&'static str> {
    let (_d, dir) = temp();
    let probe = dir.join("probe.vhdx");
    let out = vdisk(["create", "-f", "vhdx", probe.to_str().unwrap(), "1M"]);
    if out.status.success() {
        vec!["vhd", "vhdx", "vmdk"]
    } else {
        eprintln!(
            "vhdx skipped: the engine cannot create images yet: {}",
            stderr(&out).trim()
        );
        vec!["vhd", "vmdk"]
    }
}

/// A base with data, a child with its own data and a zeroed range, and a raw copy of the child.
fn chain(dir: &Path, format: &str) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let base = dir.join(format!("base.{format}"));
    let child = dir.join(format!("child.{format}"));
    let view = dir.join(format!("child-{format}.raw"));
    ok(&vdisk(["create", "-f", format, base.to_str().unwrap(), "16M"]));
    ok(&vdisk([
        "io",
        "-c",
        "write -P 0x11 0 3M",
        "-c",
        "write -P 0x12 12M 1M",
        base.to_str().unwrap(),
    ]));
    ok(&vdisk([
        "create",
        "-f",
        format,
        "-b",
        &format!("base.{format}"),
        child.to_str().unwrap(),
    ]));
    ok(&vdisk([
        "io",
        "-c",
        "write -P 0x21 1M 2M",
        "-c",
        "write -z 12M 64k",
        "-c",
        "write -P 0x22 9M 4k",
        child.to_str().unwrap(),
    ]));
    raw_copy(&child, &view);
    (base, child, view)
}

#[test]
fn commit_merges_into_the_parent() {
    for format in chain_formats() {
        let (_d, dir) = temp();
        let (base, child, view) = chain(&dir, format);
        assert_eq!(ok(&vdisk(["commit", child.to_str().unwrap()])), "Image committed.\n");
        // The parent now reads as the child did; the child still does.
        same(&view, &base);
        same(&view, &child);
        ok(&vdisk(["check", base.to_str().unwrap()]));
        ok(&vdisk(["check", child.to_str().unwrap()]));
        if qemu_img_available("commit_merges_into_the_parent") {
            // qemu reads the committed parent as the child read (it cannot open VHD children).
            let qf = if format == "vhd" { "vpc" } else { format };
            let out = qemu_img([
                "compare",
                "-f",
                "raw",
                "-F",
                qf,
                view.to_str().unwrap(),
                base.to_str().unwrap(),
            ]);
            assert_eq!(stdout(&out), "Images are identical.\n", "{format}");
        }
        if format == "vmdk" && qemu_img_available("commit_merges_into_the_parent") {
            let out = qemu_img(["compare", "-f", "raw", view.to_str().unwrap(), child.to_str().unwrap()]);
            assert_eq!(stdout(&out), "Images are identical.\n");
            ok(&qemu_img(["check", child.to_str().unwrap()]));
        }
        // Commit of an image without a parent: refused, nothing changed.
        let before = fingerprint(&base);
        let e = clean_error(&vdisk(["commit", base.to_str().unwrap()]), 1);
        assert!(e.contains("no backing file"), "{e}");
        assert_eq!(fingerprint(&base), before);
    }
}

#[test]
fn commit_then_empty_or_remove_the_child() {
    for format in chain_formats() {
        let (_d, dir) = temp();
        let (base, child, view) = chain(&dir, format);
        let c = child.to_str().unwrap();
        clean_error(&vdisk(["commit", "--empty", "--remove", c]), 1);
        ok(&vdisk(["commit", "--empty", c]));
        same(&view, &base);
        same(&view, &child);
        let map = json(&vdisk(["map", "--output", "json", c]));
        assert!(
            map.as_array()
                .unwrap()
                .iter()
                .all(|e| e["depth"] != 0 || e["data"] == false),
            "{format}: the emptied child holds no data: {map}"
        );
        ok(&vdisk(["check", c]));
        ok(&vdisk(["io", "-c", "write -P 0x77 0 4k", c]));
        ok(&vdisk(["commit", "--remove", c]));
        assert!(!child.exists());
        ok(&vdisk(["io", "-c", "read -P 0x77 0 4k", base.to_str().unwrap()]));
    }
}

#[test]
fn commit_grows_a_smaller_parent() {
    let (_d, dir) = temp();
    let (base, child, _) = chain(&dir, "vhd");
    ok(&vdisk(["resize", child.to_str().unwrap(), "20M"]));
    ok(&vdisk(["io", "-c", "write -P 0x33 19M 1M", child.to_str().unwrap()]));
    let view = dir.join("grown.raw");
    raw_copy(&child, &view);
    ok(&vdisk(["commit", child.to_str().unwrap()]));
    assert_eq!(virtual_size(&base), 20 * MIB);
    same(&view, &base);
    same(&view, &child);
}

#[test]
fn rebase_safe_unsafe_and_standalone() {
    for format in chain_formats() {
        let (_d, dir) = temp();
        let (_base, child, view) = chain(&dir, format);
        let c = child.to_str().unwrap();
        let other = dir.join(format!("other.{format}"));
        ok(&vdisk(["create", "-f", format, other.to_str().unwrap(), "8M"]));
        ok(&vdisk(["io", "-c", "write -P 0x44 2M 2M", other.to_str().unwrap()]));
        // Safe: the guest view does not change, the reference does.
        ok(&vdisk(["rebase", "-b", &format!("other.{format}"), c]));
        same(&view, &child);
        let info = json(&vdisk(["info", "--output", "json", c]));
        assert_eq!(info["backing-filename"], format!("other.{format}"));
        ok(&vdisk(["check", c]));
        if format == "vmdk" && qemu_img_available("rebase_safe_unsafe_and_standalone") {
            let out = qemu_img(["compare", "-f", "raw", view.to_str().unwrap(), c]);
            assert_eq!(stdout(&out), "Images are identical.\n");
        }
        // Unsafe back to the base: only the reference changes, and the data copied in stays.
        ok(&vdisk(["rebase", "-u", "-b", &format!("base.{format}"), c]));
        let info = json(&vdisk(["info", "--output", "json", c]));
        assert_eq!(info["backing-filename"], format!("base.{format}"));
        same(&view, &child);
        // A parent of another format is refused before anything is copied.
        let raw = dir.join("p.raw");
        sparse_raw(&raw, 16 * MIB, &[(0, 9, 4096)]);
        let before = fingerprint(&child);
        let e = clean_error(&vdisk(["rebase", "-b", "p.raw", "-F", "raw", c]), 1);
        assert!(e.contains("parent"), "{e}");
        assert_eq!(fingerprint(&child).0, before.0);
        // A loop is refused.
        let e = clean_error(&vdisk(["rebase", "-u", "-b", &format!("child.{format}"), c]), 1);
        assert!(e.contains("loop"), "{e}");
        // Standalone: the whole view in the child.
        ok(&vdisk(["rebase", "-b", "", c]));
        let info = json(&vdisk(["info", "--output", "json", c]));
        assert!(info.get("backing-filename").is_none(), "{info}");
        same(&view, &child);
        ok(&vdisk(["check", c]));
    }
}

#[test]
fn measure_matches_what_convert_writes() {
    let (_d, dir) = temp();
    let src = dir.join("src.raw");
    sparse_raw(
        &src,
        64 * MIB,
        &[(0, 1, 4096), (10 * MIB, 2, 3 * MIB as usize), (64 * MIB - 512, 3, 512)],
    );
    let s = src.to_str().unwrap();
    for (format, opts) in [
        ("vhd", "subformat=dynamic"),
        ("vhd", "subformat=fixed"),
        ("vmdk", "subformat=monolithicSparse"),
        ("vmdk", "subformat=twoGbMaxExtentSparse"),
    ] {
        let out = dir.join(format!("m.{format}"));
        let o = out.to_str().unwrap();
        let m = json(&vdisk(["measure", "-O", format, "-o", opts, "--output", "json", s]));
        ok(&vdisk(["convert", "-O", format, "-o", opts, s, o]));
        let total: u64 = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name().unwrap().to_string_lossy().starts_with("m") && p.extension().is_some_and(|x| x == format)
            })
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum();
        // Exact, but for the extent names a split descriptor records (measure cannot know them).
        let required = m["required"].as_u64().unwrap();
        let slack = if opts.contains("twoGb") { 64 } else { 0 };
        assert!(
            required.abs_diff(total) <= slack,
            "{format} {opts}: {required} vs {total}"
        );
        assert!(m["fully-allocated"].as_u64().unwrap() >= total);
        for p in std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()) {
            if p.file_name().unwrap().to_string_lossy().starts_with("m") {
                std::fs::remove_file(p).unwrap();
            }
        }
    }
}

#[test]
fn azure_vhd_rounds_up_to_whole_mib() {
    let (_d, dir) = temp();
    let src = dir.join("odd.raw");
    sparse_raw(&src, 1_000_448, &[(0, 7, 4096)]);
    let out = dir.join("azure.vhd");
    let o = out.to_str().unwrap();
    ok(&vdisk([
        "convert",
        "-O",
        "vhd",
        "-o",
        "azure=on",
        src.to_str().unwrap(),
        o,
    ]));
    assert_eq!(virtual_size(&out), MIB);
    assert_eq!(std::fs::metadata(&out).unwrap().len(), MIB + 512);
    same(&src, &out);
    let m = json(&vdisk([
        "measure", "-O", "vhd", "-o", "azure=on", "--output", "json", "--size", "1000448",
    ]));
    assert_eq!(m["required"], MIB + 512);
    if qemu_img_available("azure_vhd_rounds_up_to_whole_mib") {
        let info: serde_json::Value =
            serde_json::from_str(&ok(&qemu_img(["info", "-f", "vpc", "--output=json", o]))).unwrap();
        assert_eq!(info["virtual-size"], MIB);
    }
}

#[test]
fn measure_fit_inverts_measure() {
    let v = json(&vdisk([
        "measure",
        "-O",
        "vhd",
        "-o",
        "subformat=fixed",
        "--fit",
        "10M",
        "--output",
        "json",
    ]));
    assert_eq!(v["virtual-size"], 10 * MIB - 512);
    let text = ok(&vdisk(["measure", "-O", "vhd", "--fit", "100M"]));
    let size: u64 = text
        .trim()
        .strip_prefix("largest virtual size: ")
        .unwrap()
        .parse()
        .unwrap();
    let m = json(&vdisk([
        "measure",
        "-O",
        "vhd",
        "--output",
        "json",
        "--size",
        &size.to_string(),
    ]));
    assert!(m["fully-allocated"].as_u64().unwrap() <= 100 * MIB);
    let m = json(&vdisk([
        "measure",
        "-O",
        "vhd",
        "--output",
        "json",
        "--size",
        &(size + 2 * MIB).to_string(),
    ]));
    assert!(m["fully-allocated"].as_u64().unwrap() > 100 * MIB);
    clean_error(&vdisk(["measure", "-O", "vhd", "--fit", "100", "--size", "1M"]), 1);
    clean_error(&vdisk(["measure", "-O", "vhd", "--fit", "100"]), 1);
}

#[test]
fn a_parent_with_a_new_identity_says_how_to_accept_it() {
    for fmt in ["vhd", "vhdx"] {
        let (_d, dir) = temp();
        let (base, child, other) = (
            dir.join(format!("b.{fmt}")),
            dir.join(format!("c.{fmt}")),
            dir.join(format!("o.{fmt}")),
        );
        let (b, c, o) = (base.to_str().unwrap(), child.to_str().unwrap(), other.to_str().unwrap());
        ok(&vdisk(["create", "-f", fmt, b, "8M"]));
        ok(&vdisk(["create", "-f", fmt, "-b", &format!("b.{fmt}"), c]));
        // Another tool writes the same (empty) content anew: a new unique id / DataWriteGuid.
        ok(&vdisk(["create", "-f", fmt, o, "8M"]));
        std::fs::rename(&other, &base).unwrap();
        let e = clean_error(&vdisk(["map", c]), 1);
        let fix = format!("run `vdisk rebase -u -b b.{fmt} {c}` to accept it");
        assert!(e.contains(&fix), "{fmt}: {e}");
        ok(&vdisk(["rebase", "-u", "-b", &format!("b.{fmt}"), c]));
        ok(&vdisk(["map", c]));
        ok(&vdisk(["check", c]));
    }
}

#[test]
fn shrink_alone_cuts_data_and_warns_with_the_smallest_safe_size() {
    let (_d, dir) = temp();
    for (fmt, opts) in [
        ("vhd", "block_size=1M"),
        ("vhdx", "block_size=1M"),
        ("vmdk", "subformat=monolithicSparse"),
        ("vmdk", "subformat=twoGbMaxExtentSparse"),
        ("raw", ""),
    ] {
        let img = dir.join(format!("s-{}.{fmt}", opts.replace(['=', ','], "-")));
        let i = img.to_str().unwrap();
        let mut create = vec!["create", "-f", fmt];
        if !opts.is_empty() {
            create.extend(["-o", opts]);
        }
        create.extend([i, "8M"]);
        ok(&vdisk(create));
        ok(&vdisk(["io", "-c", "write -P 7 1M 64k", "-c", "write -P 9 5M 64k", i]));
        // The end of the last stored block (1 MiB) or grain (64 KiB) or file extent.
        let safe = if fmt.starts_with("vhd") {
            6 * MIB
        } else {
            5 * MIB + 65536
        };
        // Refused without --shrink, the image unchanged.
        let before = fingerprint(&img);
        let e = clean_error(&vdisk(["resize", i, "2M"]), 1);
        assert!(e.contains("--shrink"), "{fmt}: {e}");
        assert_eq!(fingerprint(&img).0, before.0);
        // --shrink alone cuts, and names the size that would have kept everything.
        let out = vdisk(["resize", "--shrink", i, "2M"]);
        assert_eq!(ok(&out), "Image resized.\n");
        let warning = stderr(&out);
        assert!(
            warning.starts_with("vdisk: warning: ")
                && warning.contains(&format!("smallest safe size was {safe} bytes")),
            "{fmt} {opts}: {warning}"
        );
        assert_eq!(warning.lines().count(), 1, "{warning}");
        ok(&vdisk(["io", "-c", "read -P 7 1M 64k", i]));
        if fmt != "raw" {
            ok(&vdisk(["check", i]));
        }
        // Growing again shows zeros where the cut data was.
        ok(&vdisk(["resize", i, "8M"]));
        ok(&vdisk(["io", "-c", "read -P 0 5M 64k", i]));
    }
}
