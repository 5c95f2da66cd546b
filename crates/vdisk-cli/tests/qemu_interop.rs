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

/// `map --output=json` of vdisk and of qemu-img on `img`, as JSON arrays.
fn both_maps(img: &std::path::Path, format: &str) -> (Value, Value) {
    let p = img.to_str().unwrap();
    let ours = json(&vdisk(["map", "-f", format, "--output=json", p]));
    let theirs = serde_json::from_str(&ok(&qemu_img(["map", "-f", format, "--output=json", p]))).unwrap();
    (ours, theirs)
}

/// Write `writes` (qemu-io commands) into `img` with vdisk.
fn write_with_vdisk(img: &std::path::Path, writes: &[&str]) {
    let mut args = vec!["io"];
    for w in writes {
        args.extend(["-c", w]);
    }
    args.push(img.to_str().unwrap());
    ok(&vdisk(args));
}

#[test]
fn map_json_entries_match_qemu_per_format() {
    if !qemu_img_available("map_json_entries_match_qemu_per_format") {
        return;
    }
    let (_d, dir) = temp();
    let writes = ["write -P 1 0 64k", "write -P 2 6M 1M", "write -z 12M 64k"];
    let path = |name: &str| dir.join(name);
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();

    // Dynamic VHD by qemu-img and by vdisk: an unallocated block is `present: true, zero: true`.
    ok(&qemu_img(["create", "-q", "-f", "vpc", &s(&path("q.vhd")), "16M"]));
    ok(&vdisk(["create", "-f", "vhd", "-o", "block_size=1M", &s(&path("v.vhd")), "16M"]));
    for name in ["q.vhd", "v.vhd"] {
        write_with_vdisk(&path(name), &writes);
        let (ours, theirs) = both_maps(&path(name), "vpc");
        assert_eq!(ours, theirs, "{name}");
        assert!(ours.as_array().unwrap().iter().all(|e| e["present"] == true), "{ours}");
    }

    // Fixed VHD: holes are data that reads as zeros, at their offset (as in a flat VMDK).
    ok(&vdisk(["create", "-f", "vhd", "-o", "subformat=fixed", &s(&path("f.vhd")), "8M"]));
    write_with_vdisk(&path("f.vhd"), &["write -P 1 1M 64k"]);
    let (ours, theirs) = both_maps(&path("f.vhd"), "vpc");
    assert_eq!(ours, theirs);
    assert!(ours.as_array().unwrap().iter().any(|e| e["zero"] == true && e["data"] == true));

    // monolithicSparse VMDK (qemu's and ours), a VMDK chain, monolithicFlat.
    ok(&qemu_img(["create", "-q", "-f", "vmdk", &s(&path("q.vmdk")), "16M"]));
    ok(&vdisk(["create", "-f", "vmdk", &s(&path("v.vmdk")), "16M"]));
    for name in ["q.vmdk", "v.vmdk"] {
        write_with_vdisk(&path(name), &writes);
        let (ours, theirs) = both_maps(&path(name), "vmdk");
        assert_eq!(ours, theirs, "{name}");
    }
    ok(&qemu_img(["create", "-q", "-f", "vmdk", "-b", "q.vmdk", "-F", "vmdk", &s(&path("c.vmdk"))]));
    write_with_vdisk(&path("c.vmdk"), &["write -P 3 32k 64k", "write -z 6M 64k"]);
    let (ours, theirs) = both_maps(&path("c.vmdk"), "vmdk");
    assert_eq!(ours, theirs);
    assert!(ours.as_array().unwrap().iter().any(|e| e["depth"] == 1 && e["present"] == false));
    let flat = path("flat.vmdk");
    ok(&qemu_img(["convert", "-O", "vmdk", "-o", "subformat=monolithicFlat", &s(&path("q.vmdk")), &s(&flat)]));
    let (ours, theirs) = both_maps(&flat, "vmdk");
    assert_eq!(ours, theirs);

    // streamOptimized: grains are `compressed: true`, with no offset; the same from our convert.
    let stream = path("st.vmdk");
    ok(&qemu_img(["convert", "-O", "vmdk", "-o", "subformat=streamOptimized", &s(&path("q.vmdk")), &s(&stream)]));
    let (ours, theirs) = both_maps(&stream, "vmdk");
    assert_eq!(ours, theirs);
    let data: Vec<&Value> = ours.as_array().unwrap().iter().filter(|e| e["data"] == true).collect();
    assert!(!data.is_empty() && data.iter().all(|e| e["compressed"] == true && e.get("offset").is_none()));
    let ours_stream = path("ours-st.vmdk");
    ok(&vdisk(["convert", "-c", "-O", "vmdk", &s(&path("q.vmdk")), &s(&ours_stream)]));
    let (ours, theirs) = both_maps(&ours_stream, "vmdk");
    assert_eq!(ours, theirs);

    // Raw with holes.
    sparse_raw(&path("r.raw"), 8 * MIB, &[(MIB, 9, 4096), (5 * MIB, 9, 65536)]);
    let (ours, theirs) = both_maps(&path("r.raw"), "raw");
    assert_eq!(ours, theirs);

    // VHDX: qemu-img reports the whole disk as data with no offset (its driver answers no block
    // status); ours has the same keys (and `offset` where data lies) and reports data where it
    // is stored (docs/CLI.md).
    ok(&qemu_img(["create", "-q", "-f", "vhdx", "-o", "block_size=1M", &s(&path("q.vhdx")), "16M"]));
    write_with_vdisk(&path("q.vhdx"), &writes);
    let (ours, theirs) = both_maps(&path("q.vhdx"), "vhdx");
    let keys = |v: &Value| -> Vec<String> {
        v[0].as_object().unwrap().keys().filter(|k| *k != "offset").cloned().collect()
    };
    assert_eq!(keys(&ours), keys(&theirs));
    assert_eq!(data_runs(&theirs), [(0, 16 * MIB)]);
    assert_eq!(data_runs(&ours), [(0, MIB), (6 * MIB, MIB)]);
}

/// Differencing VHD and VHDX chains, which qemu-img cannot open: the same conventions as for
/// the formats it does open (an unallocated VHD block is present zeros; VHDX and VMDK report
/// what is absent from the whole chain as not present).
#[test]
fn map_json_of_differencing_vhd_and_vhdx_chains() {
    let (_d, dir) = temp();
    for (fmt, base, child, opts) in [
        ("vhd", "b.vhd", "c.vhd", "block_size=1M"),
        ("vhdx", "b.vhdx", "c.vhdx", "block_size=1M"),
    ] {
        let (b, c) = (dir.join(base), dir.join(child));
        ok(&vdisk(["create", "-f", fmt, "-o", opts, b.to_str().unwrap(), "8M"]));
        write_with_vdisk(&b, &["write -P 1 0 1M"]);
        ok(&vdisk(["create", "-f", fmt, "-b", base, c.to_str().unwrap()]));
        write_with_vdisk(&c, &["write -P 2 3M 64k"]);
        let map = json(&vdisk(["map", "--output=json", c.to_str().unwrap()]));
        let entries = map.as_array().unwrap();
        let fields = |e: &Value| {
            (
                e["start"].as_u64().unwrap(),
                e["depth"].as_u64().unwrap(),
                e["present"].as_bool().unwrap(),
                e["zero"].as_bool().unwrap(),
                e["data"].as_bool().unwrap(),
                e["compressed"].as_bool().unwrap(),
            )
        };
        let got: Vec<_> = entries.iter().map(fields).collect();
        let absent_present = fmt == "vhd";
        assert_eq!(
            got,
            [
                (0, 1, true, false, true, false),
                (MIB, 1, absent_present, true, false, false),
                (3 * MIB, 0, true, false, true, false),
                (3 * MIB + 65536, 1, absent_present, true, false, false),
            ],
            "{fmt}: {map}"
        );
    }
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
