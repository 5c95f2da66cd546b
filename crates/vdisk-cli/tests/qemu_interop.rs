//! Interoperability with the real `qemu-img` (skipped with a message when it is not installed).

mod common;

use common::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// The runs that hold data, from a `map --output=json` array.
fn data_runs(map: &Value) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for e in map.as_array().unwrap().iter().filter(|e| e["data"] == true) {
        let (start, len) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
        match runs.last_mut() {
            Some(last) if last.0 + last.1 == start => last.1 += len,
            _ => runs.push((start, len)),
        }
    }
    runs
}

#[test]
fn qemu_compare_agrees_with_our_convert() {
    if !qemu_img_available("qemu_compare_agrees_with_our_convert") {
        return;
    }
    let (_d, dir) = temp();
    let src = dir.join("src.raw");
    let dst = dir.join("dst.raw");
    sparse_raw(
        &src,
        1 << 30,
        &[
            (0, 0xaa, 512),
            (512 * MIB, 0xbb, 3 * MIB as usize),
            ((1 << 30) - 512, 0xcc, 512),
        ],
    );
    ok(&vdisk([
        "convert",
        "-f",
        "raw",
        "-O",
        "raw",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
    ]));
    let out = qemu_img([
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
    ]);
    assert_eq!(ok(&out), "Images are identical.\n");
    let out = qemu_img([
        "compare",
        "-s",
        "-f",
        "raw",
        "-F",
        "raw",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        allocated(&dst) <= 4 * MIB + 65536,
        "holes kept: {} bytes allocated",
        allocated(&dst)
    );
}

#[test]
fn map_json_matches_qemu() {
    if !qemu_img_available("map_json_matches_qemu") {
        return;
    }
    let (_d, dir) = temp();
    let img = dir.join("a.raw");
    sparse_raw(
        &img,
        64 * MIB,
        &[(65536, 0x55, 4096), (10 * MIB, 1, 1 << 20), (64 * MIB - 4096, 2, 4096)],
    );
    let p = img.to_str().unwrap();
    let ours = json(&vdisk(["map", "--output=json", p]));
    let theirs: Value = serde_json::from_str(&ok(&qemu_img(["map", "-f", "raw", "--output=json", p]))).unwrap();
    assert_eq!(data_runs(&ours), data_runs(&theirs));
    assert_eq!(
        data_runs(&ours),
        [(65536, 4096), (10 * MIB, MIB), (64 * MIB - 4096, 4096)]
    );
    // Same keys in the same order, and for a raw file the very same entries.
    let keys = |v: &Value| -> Vec<String> { v[0].as_object().unwrap().keys().cloned().collect() };
    assert_eq!(keys(&ours), keys(&theirs));
    assert_eq!(ours, theirs);
    // And the text is the same byte for byte.
    let our_text = ok(&vdisk(["map", "--output=json", p]));
    let their_text = ok(&qemu_img(["map", "-f", "raw", "--output=json", p]));
    assert_eq!(our_text.trim_end(), their_text.trim_end());
    // Human form: same table, same file column.
    assert_eq!(ok(&vdisk(["map", p])), ok(&qemu_img(["map", "-f", "raw", p])));
}

#[test]
fn our_compare_agrees_with_qemu_compare() {
    if !qemu_img_available("our_compare_agrees_with_qemu_compare") {
        return;
    }
    let (_d, dir) = temp();
    let a = dir.join("a.raw");
    let b = dir.join("b.raw");
    let c = dir.join("c.raw");
    sparse_raw(&a, 8 * MIB, &[(MIB, 7, 4096)]);
    sparse_raw(&b, 9 * MIB, &[(MIB, 7, 4096)]);
    sparse_raw(&c, 8 * MIB, &[(MIB, 7, 4096), (5 * MIB + 1000, 1, 1)]);
    for (x, y, strict) in [
        (&a, &b, false),
        (&a, &b, true),
        (&a, &c, false),
        (&c, &a, false),
        (&a, &a, true),
    ] {
        let mut args = vec!["compare"];
        if strict {
            args.push("-s");
        }
        args.extend(["-f", "raw", "-F", "raw", x.to_str().unwrap(), y.to_str().unwrap()]);
        let ours = vdisk(&args);
        let theirs = qemu_img(&args);
        assert_eq!(ours.status.code(), theirs.status.code(), "{args:?}");
        assert_eq!(stdout(&ours), stdout(&theirs), "{args:?}");
    }
}

#[test]
fn info_and_measure_match_qemu() {
    if !qemu_img_available("info_and_measure_match_qemu") {
        return;
    }
    let (_d, dir) = temp();
    let img = dir.join("a.raw");
    sparse_raw(&img, 3 * MIB / 2, &[(0, 1, 8192)]);
    let p = img.to_str().unwrap();
    let ours = json(&vdisk(["info", "--output=json", p]));
    let theirs: Value = serde_json::from_str(&ok(&qemu_img(["info", "-f", "raw", "--output=json", p]))).unwrap();
    for key in ["filename", "format", "virtual-size", "actual-size", "dirty-flag"] {
        assert_eq!(ours[key], theirs[key], "{key}");
    }
    // The first four lines of the human form are qemu-img's.
    let ours = ok(&vdisk(["info", p]));
    let theirs = ok(&qemu_img(["info", "-f", "raw", p]));
    let head = |t: &str| t.lines().take(4).map(str::to_string).collect::<Vec<_>>();
    assert_eq!(head(&ours), head(&theirs));
    // measure --size matches qemu-img for raw output.
    let ours = json(&vdisk(["measure", "-O", "raw", "--size", "5G", "--output", "json"]));
    let theirs: Value = serde_json::from_str(&ok(&qemu_img([
        "measure",
        "-O",
        "raw",
        "--size",
        "5G",
        "--output=json",
    ])))
    .unwrap();
    assert_eq!(ours, theirs);
}

#[test]
fn qemu_reads_what_our_io_wrote_and_resize() {
    if !qemu_img_available("qemu_reads_what_our_io_wrote_and_resize") {
        return;
    }
    let (_d, dir) = temp();
    let img = dir.join("a.raw");
    let p = img.to_str().unwrap();
    ok(&vdisk(["create", "-f", "raw", p, "4M"]));
    ok(&vdisk(["io", "-c", "write -P 0x5a 1M 64k", p]));
    ok(&vdisk(["resize", p, "+4M"]));
    let v: Value = serde_json::from_str(&ok(&qemu_img(["info", "-f", "raw", "--output=json", p]))).unwrap();
    assert_eq!(v["virtual-size"], 8 * MIB);
    let theirs: Value = serde_json::from_str(&ok(&qemu_img(["map", "-f", "raw", "--output=json", p]))).unwrap();
    assert_eq!(data_runs(&theirs), [(MIB, 65536)]);
    // qemu-io agrees on the pattern when it is installed.
    if let Ok(out) = std::process::Command::new("qemu-io")
        .args(["-f", "raw", "-c", "read -P 0x5a 1M 64k", p])
        .output()
    {
        assert!(
            out.status.success() && !stdout(&out).contains("Pattern verification failed"),
            "{}",
            stdout(&out)
        );
    }
}

/// `convert -m N -W -S -c` give the same contents as the source, checked by `qemu-img compare`
/// (and `qemu-img check` for the images): every worker count, in and out of order.
#[test]
fn convert_workers_order_zero_detection_and_compression() {
    if !qemu_img_available("convert_workers_order_zero_detection_and_compression") {
        return;
    }
    let (_d, dir) = temp();
    let src = dir.join("src.raw");
    // Data in many 4 MiB chunks, zeros written as data, a hole, a short tail.
    let mut pieces = Vec::new();
    for i in 0..24u64 {
        pieces.push((i * 3 * MIB + 4096 * i, (i as u8).wrapping_mul(37) | 1, 1 << 20));
    }
    pieces.push((80 * MIB, 0, 2 << 20));
    pieces.push((100 * MIB - 512, 0x5a, 512));
    sparse_raw(&src, 100 * MIB, &pieces);
    let cases: &[(&str, &[&str], &str)] = &[
        ("vhdx", &["-m", "1"], "vhdx"),
        ("vhdx", &["-m", "3", "-W"], "vhdx"),
        ("vpc", &["-W", "-S", "0"], "vpc"),
        ("vmdk", &["-m", "4", "-W", "-S", "4k"], "vmdk"),
        ("vmdk", &["-c", "-m", "2"], "vmdk"),
        ("raw", &["-m", "16", "-W"], "raw"),
    ];
    for (i, (fmt, flags, qfmt)) in cases.iter().enumerate() {
        let out = dir.join(format!("out{i}.{fmt}"));
        let mut args = vec!["convert", "-f", "raw", "-O", fmt];
        args.extend_from_slice(flags);
        args.extend([src.to_str().unwrap(), out.to_str().unwrap()]);
        ok(&vdisk(&args));
        let cmp = qemu_img([
            "compare",
            "-f",
            "raw",
            "-F",
            qfmt,
            src.to_str().unwrap(),
            out.to_str().unwrap(),
        ]);
        assert!(
            cmp.status.success(),
            "{fmt} {flags:?}: {}{}",
            stdout(&cmp),
            stderr(&cmp)
        );
        // qemu-img checks neither raw nor vpc (exit 63).
        if !matches!(*fmt, "raw" | "vpc") {
            let check = qemu_img(["check", "-f", qfmt, out.to_str().unwrap()]);
            assert!(check.status.success(), "{fmt} {flags:?}: {}", stdout(&check));
        }
    }
    let info = json(&vdisk([
        "info",
        "--output=json",
        dir.join("out4.vmdk").to_str().unwrap(),
    ]));
    assert_eq!(
        info["format-specific"]["data"]["create-type"], "streamOptimized",
        "{info}"
    );
    // -S 0 writes the zeros the source stores as data; the default skips them.
    ok(&vdisk([
        "convert",
        "-f",
        "raw",
        "-O",
        "raw",
        src.to_str().unwrap(),
        dir.join("dflt.raw").to_str().unwrap(),
    ]));
    ok(&vdisk([
        "convert",
        "-S",
        "0",
        "-f",
        "raw",
        "-O",
        "raw",
        src.to_str().unwrap(),
        dir.join("all.raw").to_str().unwrap(),
    ]));
    assert!(allocated(&dir.join("all.raw")) >= allocated(&dir.join("dflt.raw")) + 2 * MIB);
    // Out-of-order writes and compression exclude each other, as in qemu-img.
    let e = clean_error(
        &vdisk([
            "convert",
            "-W",
            "-c",
            "-f",
            "raw",
            "-O",
            "vmdk",
            src.to_str().unwrap(),
            dir.join("x.vmdk").to_str().unwrap(),
        ]),
        1,
    );
    assert!(e.contains("mutually exclusive"), "{e}");
    assert!(!dir.join("x.vmdk").exists());
}
