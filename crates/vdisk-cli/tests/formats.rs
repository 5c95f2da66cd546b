//! The CLI over the VHD, VHDX and VMDK engines: round trips, chains, the not-yet-implemented
//! operations. A format whose engine cannot create an image yet is skipped with a message.

mod common;

use common::*;
use std::path::Path;

const MIB: u64 = 1 << 20;

/// Whether `vdisk create -f FMT` works here; prints why a test is skipped otherwise.
fn engine_available(dir: &Path, format: &str, test: &str) -> bool {
    let probe = dir.join(format!("probe.{format}"));
    let out = vdisk(["create", "-f", format, probe.to_str().unwrap(), "1M"]);
    let _ = std::fs::remove_file(&probe);
    if !out.status.success() {
        eprintln!(
            "{test}: {format} skipped, the engine cannot create images yet: {}",
            stderr(&out).trim()
        );
    }
    out.status.success()
}

#[test]
fn convert_round_trips_through_every_format() {
    let (_d, dir) = temp();
    let src = dir.join("src.raw");
    sparse_raw(
        &src,
        64 * MIB,
        &[
            (5_000_000, 0x61, 3),
            (300 * 65536, 0x5c, 20 * 65536),
            (64 * MIB - 512, 1, 512),
        ],
    );
    let s = src.to_str().unwrap();
    for format in ["vhd", "vhdx", "vmdk"] {
        if !engine_available(&dir, format, "convert_round_trips_through_every_format") {
            continue;
        }
        let img = dir.join(format!("out.{format}"));
        let back = dir.join(format!("back-{format}.raw"));
        let i = img.to_str().unwrap();
        ok(&vdisk(["convert", "-f", "raw", "-O", format, s, i]));
        let v = json(&vdisk(["info", "--output", "json", i]));
        // qemu-img's name for VHD is `vpc`.
        assert_eq!(v["format"], if format == "vhd" { "vpc" } else { format });
        assert_eq!(v["virtual-size"], 64 * MIB);
        assert_eq!(ok(&vdisk(["compare", s, i])), "Images are identical.\n", "{format}");
        ok(&vdisk(["check", i]));
        ok(&vdisk(["convert", "-O", "raw", i, back.to_str().unwrap()]));
        assert_eq!(
            ok(&vdisk(["compare", "-f", "raw", "-F", "raw", s, back.to_str().unwrap()])),
            "Images are identical.\n"
        );
        if qemu_img_available("convert_round_trips_through_every_format") {
            let out = qemu_img(["compare", "-f", "raw", s, i]);
            assert_eq!(
                stdout(&out),
                "Images are identical.\n",
                "qemu-img compare raw vs our {format}"
            );
        }
    }
}

#[test]
fn vmdk_map_matches_qemu() {
    let (_d, dir) = temp();
    if !engine_available(&dir, "vmdk", "vmdk_map_matches_qemu") || !qemu_img_available("vmdk_map_matches_qemu") {
        return;
    }
    let src = dir.join("src.raw");
    sparse_raw(&src, 16 * MIB, &[(MIB, 1, 4096), (9 * MIB, 2, 200_000)]);
    let img = dir.join("a.vmdk");
    let i = img.to_str().unwrap();
    ok(&vdisk(["convert", "-O", "vmdk", src.to_str().unwrap(), i]));
    let ours = json(&vdisk(["map", "--output=json", i]));
    let theirs: serde_json::Value = serde_json::from_str(&ok(&qemu_img(["map", "--output=json", i]))).unwrap();
    assert_eq!(ours, theirs);
}

#[test]
fn vhd_chain_info_map_and_missing_parent() {
    let (_d, dir) = temp();
    if !engine_available(&dir, "vhd", "vhd_chain_info_map_and_missing_parent") {
        return;
    }
    let base = dir.join("base.vhd");
    let child = dir.join("child.vhd");
    let (b, c) = (base.to_str().unwrap(), child.to_str().unwrap());
    ok(&vdisk(["create", "-f", "vpc", b, "16M"]));
    ok(&vdisk(["io", "-c", "write -P 0x11 0 1M", b]));
    // -b relative to the child's directory, size from the parent.
    let text = ok(&vdisk(["create", "-f", "vhd", "-b", "base.vhd", "-F", "vpc", c]));
    assert!(
        text.contains("size=16777216") && text.contains("backing_file=base.vhd"),
        "{text}"
    );
    // qemu-img's name for VHD is `vpc`, in every name it prints.
    assert!(
        text.contains(" fmt=vpc ") && text.contains(" backing_fmt=vpc"),
        "{text}"
    );
    let human = ok(&vdisk(["info", "-f", "vhd", c]));
    assert!(
        human.contains("file format: vpc\n") && human.contains("backing file format: vpc\n"),
        "{human}"
    );
    ok(&vdisk([
        "io",
        "-c",
        "write -P 0x22 4M 64k",
        "-c",
        "read -P 0x11 0 1M",
        c,
    ]));

    let v = json(&vdisk(["info", "--output=json", c]));
    assert_eq!(v["backing-filename"], "base.vhd");
    assert_eq!(v["backing-filename-format"], "vpc");
    let chain = json(&vdisk(["info", "--output=json", "--backing-chain", c]));
    let chain = chain.as_array().unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0]["filename"], c);
    assert_eq!(chain[1]["format"], "vpc");

    let map = json(&vdisk(["map", "--output=json", c]));
    let depth_of = |offset: u64| {
        map.as_array()
            .unwrap()
            .iter()
            .find(|e| {
                e["start"].as_u64().unwrap() <= offset
                    && offset < e["start"].as_u64().unwrap() + e["length"].as_u64().unwrap()
            })
            .map(|e| (e["depth"].as_u64().unwrap(), e["data"] == true))
            .unwrap()
    };
    assert_eq!(depth_of(0), (1, true));
    assert_eq!(depth_of(4 * MIB), (0, true));
    assert!(!depth_of(10 * MIB).1);

    // Converting onto a file of the chain is refused.
    let e = clean_error(&vdisk(["convert", "-O", "raw", c, b]), 1);
    assert!(e.contains("backing files"), "{e}");

    // Bad requests fail cleanly and change nothing (commit and rebase: see resize_chain.rs).
    let before = fingerprint(&child);
    let e = clean_error(&vdisk(["rebase", "-u", "-b", "other.vhd", c]), 1);
    assert!(e.contains("other.vhd"), "{e}");
    let e = clean_error(&vdisk(["commit", b]), 1);
    assert!(e.contains("no backing file"), "{e}");
    assert_eq!(fingerprint(&child), before);

    // --no-external refuses the parent but info of the named image still works.
    let e = clean_error(&vdisk(["--no-external", "map", c]), 1);
    assert!(e.contains("child.vhd") && e.contains("not allowed"), "{e}");
    let v = json(&vdisk(["--no-external", "info", "--output", "json", c]));
    assert_eq!(v["backing-filename"], "base.vhd");

    // With the parent gone: info still works, the chain and the data do not.
    std::fs::rename(&base, dir.join("moved.vhd")).unwrap();
    let text = ok(&vdisk(["info", c]));
    assert!(text.contains("backing file: base.vhd"), "{text}");
    let e = clean_error(&vdisk(["info", "--backing-chain", c]), 1);
    assert!(e.contains("child.vhd") && e.contains("base.vhd"), "{e}");
    clean_error(&vdisk(["map", c]), 1);
    clean_error(&vdisk(["io", "-c", "read 0 512", c]), 1);
    clean_error(&vdisk(["compare", c, c]), 2);
    assert_eq!(fingerprint(&child), before);
}

#[test]
fn every_format_resizes_and_measures() {
    let (_d, dir) = temp();
    for format in ["vhd", "vhdx", "vmdk"] {
        if !engine_available(&dir, format, "every_format_resizes_and_measures") {
            continue;
        }
        let img = dir.join(format!("a.{format}"));
        let i = img.to_str().unwrap();
        ok(&vdisk(["create", "-f", format, i, "4M"]));
        ok(&vdisk(["io", "-c", "write -P 0x5a 3M 1M", i]));
        let out = vdisk(["resize", i, "+1M"]);
        if format == "vhdx" && !out.status.success() {
            eprintln!(
                "every_format_resizes_and_measures: vhdx resize skipped: {}",
                stderr(&out).trim()
            );
            continue;
        }
        assert_eq!(ok(&out), "Image resized.\n");
        assert_eq!(json(&vdisk(["info", "--output", "json", i]))["virtual-size"], 5 * MIB);
        ok(&vdisk(["io", "-c", "read -P 0x5a 3M 1M", "-c", "read -P 0 4M 1M", i]));
        let before = fingerprint(&img);
        // Without --shrink a shrink is refused, as in qemu-img; with it, data is cut off and a
        // warning names the smallest safe size.
        let e = clean_error(&vdisk(["resize", i, "2M"]), 1);
        assert!(e.contains("--shrink"), "{e}");
        assert_eq!(fingerprint(&img), before);
        // Stored data ends with the block holding 3M..4M: a 32 MiB VHDX block holds it all.
        let safe = if format == "vhdx" { 5 * MIB } else { 4 * MIB };
        let out = vdisk(["resize", "--shrink", i, "2M"]);
        assert_eq!(ok(&out), "Image resized.\n");
        assert!(
            stderr(&out).contains("warning:") && stderr(&out).contains(&format!("smallest safe size was {safe} bytes")),
            "{format}: {}",
            stderr(&out)
        );
        assert_eq!(json(&vdisk(["info", "--output", "json", i]))["virtual-size"], 2 * MIB);
        ok(&vdisk(["check", i]));
        let out = vdisk(["measure", "-O", format, "--size", "1G"]);
        if out.status.success() {
            assert!(stdout(&out).starts_with("required size: "), "{}", stdout(&out));
        }
    }
}

#[test]
fn check_exit_codes_on_damaged_vhd() {
    let (_d, dir) = temp();
    if !engine_available(&dir, "vhd", "check_exit_codes_on_damaged_vhd") {
        return;
    }
    let good = dir.join("good.vhd");
    ok(&vdisk(["create", "-f", "vhd", good.to_str().unwrap(), "8M"]));
    ok(&vdisk(["io", "-c", "write 0 4k", good.to_str().unwrap()]));
    assert_eq!(
        json(&vdisk(["check", "--output", "json", good.to_str().unwrap()]))["check-errors"],
        0
    );
    let bytes = std::fs::read(&good).unwrap();
    let (body, footer) = bytes.split_at(bytes.len() - 512);

    // Unused space before the footer: a leak, exit 3.
    let leak = dir.join("leak.vhd");
    std::fs::write(&leak, [body, &[0u8; 4096][..], footer].concat()).unwrap();
    let out = vdisk(["check", "--output", "json", leak.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["leaks"], 1);
    assert!(v.get("corruptions").is_none());
    let out = vdisk(["check", leak.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stdout(&out).contains("leaked clusters were found"), "{}", stdout(&out));

    // A BAT entry pointing past the end of the file: a corruption, exit 2.
    let table = u64::from_be_bytes(bytes[512 + 16..512 + 24].try_into().unwrap()) as usize;
    let mut bad = bytes.clone();
    bad[table + 4..table + 8].copy_from_slice(&0x00ff_ffffu32.to_be_bytes());
    let bad_path = dir.join("bad.vhd");
    std::fs::write(&bad_path, &bad).unwrap();
    let out = vdisk(["check", "--output=json", bad_path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(&keys[..3], ["filename", "format", "check-errors"]);
    assert_eq!(v["format"], "vpc");
    assert_eq!(v["corruptions"], 1);
    let out = vdisk(["check", bad_path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stdout(&out).contains("errors were found on the image"),
        "{}",
        stdout(&out)
    );
    // Reading the damaged block fails, naming the damaged image (not the output, not the other).
    let out_path = dir.join("out.raw");
    let e = clean_error(
        &vdisk([
            "convert",
            "-O",
            "raw",
            bad_path.to_str().unwrap(),
            out_path.to_str().unwrap(),
        ]),
        1,
    );
    assert!(e.starts_with(&format!("vdisk: error: {}: ", bad_path.display())), "{e}");
    assert!(!out_path.exists(), "a failed convert leaves no output");
    let e = clean_error(
        &vdisk(["compare", good.to_str().unwrap(), bad_path.to_str().unwrap()]),
        2,
    );
    assert!(e.starts_with(&format!("vdisk: error: {}: ", bad_path.display())), "{e}");
    assert_eq!(
        std::fs::read(&bad_path).unwrap(),
        bad,
        "reading commands change nothing"
    );
}

#[test]
fn split_vmdk_actual_size_counts_extents() {
    let (_d, dir) = temp();
    if !engine_available(&dir, "vmdk", "split_vmdk_actual_size_counts_extents") {
        return;
    }
    let img = dir.join("split.vmdk");
    let i = img.to_str().unwrap();
    let out = vdisk(["create", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", i, "5G"]);
    if !out.status.success() {
        eprintln!(
            "split_vmdk_actual_size_counts_extents: skipped, {}",
            stderr(&out).trim()
        );
        return;
    }
    ok(&vdisk(["io", "-c", "write 3G 1M", i]));
    let v = json(&vdisk(["info", "--output=json", i]));
    let total: u64 = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "vmdk"))
        .map(|p| allocated(&p))
        .sum();
    assert_eq!(v["actual-size"], total);
    assert!(total > allocated(&img));
    if qemu_img_available("split_vmdk_actual_size_counts_extents") {
        let q: serde_json::Value = serde_json::from_str(&ok(&qemu_img(["info", "--output=json", i]))).unwrap();
        assert_eq!(v["actual-size"], q["actual-size"]);
    }
}
