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
    ok(&vdisk([
        "create",
        "-f",
        "vhd",
        "-o",
        "block_size=1M",
        &s(&path("v.vhd")),
        "16M",
    ]));
    for name in ["q.vhd", "v.vhd"] {
        write_with_vdisk(&path(name), &writes);
        let (ours, theirs) = both_maps(&path(name), "vpc");
        assert_eq!(ours, theirs, "{name}");
        assert!(ours.as_array().unwrap().iter().all(|e| e["present"] == true), "{ours}");
    }

    // Fixed VHD: holes are data that reads as zeros, at their offset (as in a flat VMDK).
    ok(&vdisk([
        "create",
        "-f",
        "vhd",
        "-o",
        "subformat=fixed",
        &s(&path("f.vhd")),
        "8M",
    ]));
    write_with_vdisk(&path("f.vhd"), &["write -P 1 1M 64k"]);
    let (ours, theirs) = both_maps(&path("f.vhd"), "vpc");
    assert_eq!(ours, theirs);
    assert!(
        ours.as_array()
            .unwrap()
            .iter()
            .any(|e| e["zero"] == true && e["data"] == true)
    );

    // monolithicSparse VMDK (qemu's and ours), a VMDK chain, monolithicFlat.
    ok(&qemu_img(["create", "-q", "-f", "vmdk", &s(&path("q.vmdk")), "16M"]));
    ok(&vdisk(["create", "-f", "vmdk", &s(&path("v.vmdk")), "16M"]));
    for name in ["q.vmdk", "v.vmdk"] {
        write_with_vdisk(&path(name), &writes);
        let (ours, theirs) = both_maps(&path(name), "vmdk");
        assert_eq!(ours, theirs, "{name}");
    }
    ok(&qemu_img([
        "create",
        "-q",
        "-f",
        "vmdk",
        "-b",
        "q.vmdk",
        "-F",
        "vmdk",
        &s(&path("c.vmdk")),
    ]));
    write_with_vdisk(&path("c.vmdk"), &["write -P 3 32k 64k", "write -z 6M 64k"]);
    let (ours, theirs) = both_maps(&path("c.vmdk"), "vmdk");
    assert_eq!(ours, theirs);
    assert!(
        ours.as_array()
            .unwrap()
            .iter()
            .any(|e| e["depth"] == 1 && e["present"] == false)
    );
    let flat = path("flat.vmdk");
    ok(&qemu_img([
        "convert",
        "-O",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
        &s(&path("q.vmdk")),
        &s(&flat),
    ]));
    let (ours, theirs) = both_maps(&flat, "vmdk");
    assert_eq!(ours, theirs);

    // streamOptimized: grains are `compressed: true`, with no offset; the same from our convert.
    let stream = path("st.vmdk");
    ok(&qemu_img([
        "convert",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        &s(&path("q.vmdk")),
        &s(&stream),
    ]));
    let (ours, theirs) = both_maps(&stream, "vmdk");
    assert_eq!(ours, theirs);
    let data: Vec<&Value> = ours.as_array().unwrap().iter().filter(|e| e["data"] == true).collect();
    assert!(
        !data.is_empty()
            && data
                .iter()
                .all(|e| e["compressed"] == true && e.get("offset").is_none())
    );
    let ours_stream = path("ours-st.vmdk");
    ok(&vdisk([
        "convert",
        "-c",
        "-O",
        "vmdk",
        &s(&path("q.vmdk")),
        &s(&ours_stream),
    ]));
    let (ours, theirs) = both_maps(&ours_stream, "vmdk");
    assert_eq!(ours, theirs);

    // Raw with holes.
    sparse_raw(&path("r.raw"), 8 * MIB, &[(MIB, 9, 4096), (5 * MIB, 9, 65536)]);
    let (ours, theirs) = both_maps(&path("r.raw"), "raw");
    assert_eq!(ours, theirs);

    // VHDX: qemu-img reports the whole disk as data with no offset (its driver answers no block
    // status); ours has the same keys (and `offset` where data lies) and reports data where it
    // is stored (docs/CLI.md).
    ok(&qemu_img([
        "create",
        "-q",
        "-f",
        "vhdx",
        "-o",
        "block_size=1M",
        &s(&path("q.vhdx")),
        "16M",
    ]));
    write_with_vdisk(&path("q.vhdx"), &writes);
    let (ours, theirs) = both_maps(&path("q.vhdx"), "vhdx");
    let keys = |v: &Value| -> Vec<String> {
        v[0].as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "offset")
            .cloned()
            .collect()
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

/// Where the BAT of the VHDX at `path` starts (from the first region table, at 192 KiB).
fn vhdx_bat_offset(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::FileExt;
    const BAT_GUID_START: [u8; 4] = [0x66, 0x77, 0xc2, 0x2d];
    let mut table = vec![0u8; 64 * 1024];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut table, 192 * 1024)
        .unwrap();
    let count = u32::from_le_bytes(table[8..12].try_into().unwrap()) as usize;
    (0..count)
        .map(|i| &table[16 + i * 32..48 + i * 32])
        .find(|e| e[..4] == BAT_GUID_START)
        .map(|e| u64::from_le_bytes(e[16..24].try_into().unwrap()))
        .unwrap()
}

#[test]
fn fresh_images_of_either_tool_check_clean_and_real_leaks_do_not() {
    if !qemu_img_available("fresh_images_of_either_tool_check_clean_and_real_leaks_do_not") {
        return;
    }
    let (_d, dir) = temp();
    let s = |name: &str| dir.join(name).to_str().unwrap().to_string();
    // qemu-img leaves 4 MiB of zeroed space after the metadata of a VHDX it creates (and sizes a
    // fixed one for all its blocks while recording none); its check calls that clean, so do we.
    let mut images: Vec<(String, &str)> = Vec::new();
    for (i, opts) in [
        "block_size=1M",
        "block_size=8M",
        "block_size=32M",
        "block_size=256M",
        "subformat=fixed",
        "subformat=fixed,block_size=1M",
    ]
    .iter()
    .enumerate()
    {
        for size in ["10M", "1G", "64T"] {
            // 64 TiB (a 513 MiB BAT) once: the reserve is the same whatever the size.
            if size == "64T" && i > 0 {
                continue;
            }
            let name = s(&format!("q{i}-{size}.vhdx"));
            ok(&qemu_img(["create", "-q", "-f", "vhdx", "-o", opts, &name, size]));
            images.push((name, "vhdx"));
        }
    }
    for sub in [
        "monolithicSparse",
        "monolithicFlat",
        "twoGbMaxExtentSparse",
        "streamOptimized",
    ] {
        let (q, v) = (s(&format!("q-{sub}.vmdk")), s(&format!("v-{sub}.vmdk")));
        ok(&qemu_img([
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            &format!("subformat={sub}"),
            &q,
            "3G",
        ]));
        ok(&vdisk([
            "create",
            "-f",
            "vmdk",
            "-o",
            &format!("subformat={sub}"),
            &v,
            "3G",
        ]));
        images.extend([(q, "vmdk"), (v, "vmdk")]);
    }
    for opts in ["block_size=1M", "subformat=fixed"] {
        let v = s(&format!("v-{opts}.vhdx"));
        ok(&vdisk(["create", "-f", "vhdx", "-o", opts, &v, "100M"]));
        images.push((v, "vhdx"));
    }
    // qemu-img does not check vpc (exit 63); ours must be clean all the same.
    let q = s("q.vhd");
    ok(&qemu_img(["create", "-q", "-f", "vpc", &q, "100M"]));
    assert_eq!(
        vdisk(["check", &q]).status.code(),
        Some(0),
        "{}",
        stdout(&vdisk(["check", &q]))
    );
    for (name, fmt) in &images {
        let theirs = qemu_img(["check", "-f", fmt, name]);
        assert_eq!(theirs.status.code(), Some(0), "qemu-img on {name}: {}", stdout(&theirs));
        let ours = vdisk(["check", name]);
        assert_eq!(ours.status.code(), Some(0), "{name}: {}", stdout(&ours));
    }
    // Blocks written by qemu go after the reserved space, which stays clean.
    let written = s("q0-1G.vhdx");
    let io = std::process::Command::new("qemu-io")
        .args(["-f", "vhdx", "-c", "write -P 7 0 1M", &written])
        .output();
    if io.is_ok_and(|o| o.status.success()) {
        assert_eq!(vdisk(["check", &written]).status.code(), Some(0));
    }

    // Real leaks: a MiB of data appended (a block whose BAT update was lost), and zeros appended
    // beyond the space qemu-img reserves.
    let with_data = s("q0-10M.vhdx");
    let mut f = std::fs::OpenOptions::new().append(true).open(&with_data).unwrap();
    std::io::Write::write_all(&mut f, &vec![0x5a; MIB as usize]).unwrap();
    drop(f);
    let out = vdisk(["check", &with_data]);
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    assert!(stdout(&out).contains("after the last used block are not referenced"));
    let padded = s("q1-10M.vhdx");
    let f = std::fs::OpenOptions::new().write(true).open(&padded).unwrap();
    f.set_len(f.metadata().unwrap().len() + 8 * MIB).unwrap();
    drop(f);
    assert_eq!(vdisk(["check", &padded]).status.code(), Some(3));
}

#[test]
fn vhdx_bat_entry_past_the_end_of_the_file_is_a_corruption() {
    if !qemu_img_available("vhdx_bat_entry_past_the_end_of_the_file_is_a_corruption") {
        return;
    }
    use std::os::unix::fs::FileExt;
    let (_d, dir) = temp();
    // A small BAT (checked on open) and a 513 MiB one (checked page by page on a read-only open).
    for size in ["16M", "64T"] {
        let path = dir.join(format!("o-{size}.vhdx"));
        let p = path.to_str().unwrap();
        ok(&qemu_img([
            "create",
            "-q",
            "-f",
            "vhdx",
            "-o",
            "block_size=1M",
            p,
            size,
        ]));
        ok(&vdisk(["io", "-c", "write -P 3 1M 1M", p]));
        // Block 1 is entry 1 (the first sector bitmap entry follows 4096 payload entries).
        let at = vhdx_bat_offset(&path) + 8;
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let mut entry = [0u8; 8];
        f.read_exact_at(&mut entry, at).unwrap();
        let state = u64::from_le_bytes(entry) & 7;
        assert_eq!(state, 6, "block 1 is fully present");
        f.write_all_at(&((1u64 << 40) | state).to_le_bytes(), at).unwrap();
        drop(f);
        let theirs = qemu_img(["check", "-f", "vhdx", p]);
        assert_eq!(theirs.status.code(), Some(2), "{}", stderr(&theirs));
        let out = vdisk(["check", "--output=json", p]);
        assert_eq!(out.status.code(), Some(2), "{}{}", stdout(&out), stderr(&out));
        let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(v["corruptions"], 1, "{v}");
        let detail = v["corruption-details"][0].as_str().unwrap();
        assert!(
            detail.starts_with("BAT entry 1 ") && detail.contains("past the end of the file"),
            "{detail}"
        );
    }
}

#[test]
fn parent_cid_changed_by_qemu_says_how_to_accept_it() {
    if !qemu_img_available("parent_cid_changed_by_qemu_says_how_to_accept_it") {
        return;
    }
    let (_d, dir) = temp();
    let (base, child) = (dir.join("b.vmdk"), dir.join("c.vmdk"));
    let (b, c) = (base.to_str().unwrap(), child.to_str().unwrap());
    ok(&vdisk(["create", "-f", "vmdk", b, "8M"]));
    ok(&vdisk(["io", "-c", "write -P 5 0 64k", b]));
    ok(&vdisk(["create", "-f", "vmdk", "-b", "b.vmdk", c]));
    // qemu writes zeros where zeros are: the content stays, the CID changes.
    let io = std::process::Command::new("qemu-io")
        .args(["-f", "vmdk", "-c", "write -z 1M 64k", b])
        .output();
    if !io.is_ok_and(|o| o.status.success()) {
        eprintln!("skipping parent_cid_changed_by_qemu_says_how_to_accept_it: qemu-io failed");
        return;
    }
    let e = clean_error(&vdisk(["io", "-c", "read -P 5 0 64k", c]), 1);
    let fix = format!("run `vdisk rebase -u -b b.vmdk {c}`");
    assert!(e.contains("parentCID") && e.contains(&fix), "{e}");
    // The advice works.
    ok(&vdisk(["rebase", "-u", "-b", "b.vmdk", c]));
    ok(&vdisk(["io", "-c", "read -P 5 0 64k", c]));
    assert_eq!(qemu_img(["check", "-f", "vmdk", c]).status.code(), Some(0));
}
