//! Every command of the CLI contract on raw images: output, JSON shape, exit codes.

mod common;

use common::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;

#[test]
fn info_human_and_json() {
    let (_d, dir) = temp();
    let img = dir.join("a.raw");
    sparse_raw(&img, MIB, &[(65536, 0x55, 4096)]);
    let text = ok(&vdisk(["info".as_ref(), img.as_os_str()]));
    assert!(text.contains(&format!("image: {}\n", img.display())), "{text}");
    assert!(text.contains("file format: raw\n"), "{text}");
    assert!(text.contains("virtual size: 1 MiB (1048576 bytes)\n"), "{text}");
    assert!(text.contains("disk size: "), "{text}");

    let v = json(&vdisk([
        "info".as_ref(),
        "--output".as_ref(),
        "json".as_ref(),
        img.as_os_str(),
    ]));
    let o = v.as_object().unwrap();
    let keys: Vec<&str> = o.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["filename", "format", "virtual-size", "actual-size", "dirty-flag"]
    );
    assert_eq!(o["filename"], img.display().to_string());
    assert_eq!(o["format"], "raw");
    assert_eq!(o["virtual-size"], MIB);
    assert_eq!(o["actual-size"], allocated(&img));
    assert_eq!(o["dirty-flag"], false);

    // `--output=json`, `-f raw`, and the chain form: an array, named image first.
    let v = json(&vdisk([
        "info",
        "-f",
        "raw",
        "--output=json",
        "--backing-chain",
        img.to_str().unwrap(),
    ]));
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 1);
    assert_eq!(arr[0]["format"], "raw");
    // `vpc` is accepted as a format name (the vhd engine may or may not exist yet).
    let out = vdisk(["info", "-f", "vpc", img.to_str().unwrap()]);
    if !out.status.success() {
        clean_error(&out, 1);
    }
}

#[test]
fn create_raw() {
    let (_d, dir) = temp();
    let img = dir.join("new.raw");
    let text = ok(&vdisk(["create", "-f", "raw", img.to_str().unwrap(), "10M"]));
    assert_eq!(text, format!("Formatting '{}', fmt=raw size=10485760\n", img.display()));
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 10 * MIB);
    assert_eq!(allocated(&img), 0);
    // Overwriting an existing file works like qemu-img.
    ok(&vdisk(["create", "-f", "raw", img.to_str().unwrap(), "1.5K"]));
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 1536);

    let e = clean_error(&vdisk(["create", "-f", "raw", dir.join("x.raw").to_str().unwrap()]), 1);
    assert!(e.contains("size is required"), "{e}");
    let e = clean_error(
        &vdisk(["create", "-f", "raw", dir.join("x.raw").to_str().unwrap(), "12Q"]),
        1,
    );
    assert!(e.contains("invalid size '12Q'"), "{e}");
    let e = clean_error(
        &vdisk([
            "create",
            "-f",
            "raw",
            "-o",
            "subformat=fixed",
            dir.join("x.raw").to_str().unwrap(),
            "1M",
        ]),
        1,
    );
    assert!(e.contains("unknown option 'subformat'"), "{e}");
    let e = clean_error(
        &vdisk([
            "create",
            "-f",
            "raw",
            "-b",
            "new.raw",
            "-F",
            "raw",
            dir.join("c.raw").to_str().unwrap(),
        ]),
        1,
    );
    assert!(e.contains("cannot have a backing file"), "{e}");
    let e = clean_error(
        &vdisk(["create", "-f", "qcow2", dir.join("x.qcow2").to_str().unwrap(), "1M"]),
        1,
    );
    assert!(e.contains("unknown format 'qcow2'"), "{e}");
    assert!(!dir.join("x.raw").exists() && !dir.join("c.raw").exists() && !dir.join("x.qcow2").exists());
}

#[test]
fn convert_raw_keeps_holes() {
    let (_d, dir) = temp();
    let src = dir.join("src.raw");
    let dst = dir.join("dst.raw");
    let pieces = [
        (0u64, 0x11u8, 4096usize),
        (300 * MIB + 512, 0x22, 70000),
        ((1 << 30) - 8192, 0x33, 8192),
    ];
    sparse_raw(&src, 1 << 30, &pieces);
    ok(&vdisk([
        "convert",
        "-f",
        "raw",
        "-O",
        "raw",
        "-p",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
    ]));
    assert_eq!(std::fs::metadata(&dst).unwrap().len(), 1 << 30);
    let data: u64 = pieces.iter().map(|p| p.2 as u64).sum();
    let got = allocated(&dst);
    assert!(
        got >= data && got <= data + 4 * MIB,
        "allocated {got} bytes for {data} bytes of data"
    );
    ok(&vdisk(["compare", src.to_str().unwrap(), dst.to_str().unwrap()]));
    // Data reads back exactly.
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(&dst).unwrap();
    for (offset, value, len) in pieces {
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset).unwrap();
        assert!(buf.iter().all(|&b| b == value));
    }
}

#[test]
fn convert_errors() {
    let (_d, dir) = temp();
    let src = dir.join("src.raw");
    sparse_raw(&src, MIB, &[]);
    let e = clean_error(
        &vdisk(["convert", "-O", "raw", src.to_str().unwrap(), src.to_str().unwrap()]),
        1,
    );
    assert!(e.contains("the output file is the input file"), "{e}");
    let e = clean_error(
        &vdisk([
            "convert",
            "-O",
            "qed",
            src.to_str().unwrap(),
            dir.join("o").to_str().unwrap(),
        ]),
        1,
    );
    assert!(e.contains("unknown format 'qed'"), "{e}");
    clean_error(
        &vdisk([
            "convert",
            "-O",
            "raw",
            dir.join("missing").to_str().unwrap(),
            dir.join("o").to_str().unwrap(),
        ]),
        1,
    );
    assert!(!dir.join("o").exists());
}

#[test]
fn compare_exit_codes() {
    let (_d, dir) = temp();
    let a = dir.join("a.raw");
    let b = dir.join("b.raw");
    let c = dir.join("c.raw");
    sparse_raw(&a, MIB, &[(4096, 1, 100)]);
    sparse_raw(&b, 2 * MIB, &[(4096, 1, 100)]);
    sparse_raw(&c, MIB, &[(4096, 1, 100), (700_000, 9, 1)]);
    let (a, b, c) = (a.to_str().unwrap(), b.to_str().unwrap(), c.to_str().unwrap());

    let out = vdisk(["compare", a, a]);
    assert_eq!(ok(&out), "Images are identical.\n");
    // Without -s, extra zeros are fine; with -s the size must match.
    assert_eq!(
        ok(&vdisk(["compare", a, b])),
        "Warning: Image size mismatch!\nImages are identical.\n"
    );
    let out = vdisk(["compare", "-s", a, b]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "Strict mode: Image size mismatch!\n");
    let out = vdisk(["compare", "-f", "raw", "-F", "raw", a, c]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "Content mismatch at offset 699904!\n");
    // Errors are exit 2.
    clean_error(&vdisk(["compare", a, "/nonexistent/x.raw"]), 2);
    clean_error(&vdisk(["compare", "-f", "nope", a, b]), 2);
    clean_error(&vdisk(["compare", a]), 2);
}

#[test]
fn check_raw() {
    let (_d, dir) = temp();
    let img = dir.join("a.raw");
    sparse_raw(&img, MIB, &[(0, 7, 512)]);
    let before = fingerprint(&img);
    assert_eq!(
        ok(&vdisk(["check", img.to_str().unwrap()])),
        "No errors were found on the image.\n"
    );
    let v = json(&vdisk(["check", "--output", "json", img.to_str().unwrap()]));
    let o = v.as_object().unwrap();
    let keys: Vec<&str> = o.keys().map(String::as_str).collect();
    assert_eq!(keys, ["filename", "format", "check-errors"]);
    assert_eq!(o["format"], "raw");
    assert_eq!(o["check-errors"], 0);
    assert_eq!(fingerprint(&img), before);
    ok(&vdisk(["check", "-r", "all", img.to_str().unwrap()]));
    ok(&vdisk(["check", "-r", "leaks", img.to_str().unwrap()]));
    clean_error(&vdisk(["check", "-r", "some", img.to_str().unwrap()]), 1);
    clean_error(&vdisk(["check", dir.join("missing").to_str().unwrap()]), 1);
}

#[test]
fn map_raw() {
    let (_d, dir) = temp();
    let img = dir.join("a.raw");
    sparse_raw(&img, MIB, &[(65536, 0x55, 4096)]);
    let v = json(&vdisk(["map", "--output=json", img.to_str().unwrap()]));
    let arr = v.as_array().unwrap();
    let keys: Vec<&str> = arr[0].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "start",
            "length",
            "depth",
            "present",
            "zero",
            "data",
            "compressed",
            "offset"
        ]
    );
    let data: Vec<(u64, u64)> = arr
        .iter()
        .filter(|e| e["data"] == true)
        .map(|e| (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect();
    assert_eq!(data, [(65536, 4096)]);
    let total: u64 = arr.iter().map(|e| e["length"].as_u64().unwrap()).sum();
    assert_eq!(total, MIB);
    for e in arr {
        assert_eq!(e["offset"], e["start"], "raw data lies at its own offset");
        assert_eq!(e["present"], true);
        assert_eq!(e["zero"], Value::Bool(e["data"] != true));
    }
    let text = ok(&vdisk(["map", img.to_str().unwrap()]));
    assert_eq!(
        text,
        format!(
            "{:<16}{:<16}{:<16}File\n{:<16}{:<16}{:<16}{}\n",
            "Offset",
            "Length",
            "Mapped to",
            "0x10000",
            "0x1000",
            "0x10000",
            img.display()
        )
    );
    // An empty image maps as one empty run, as qemu-img prints it.
    let empty = dir.join("empty.raw");
    sparse_raw(&empty, 0, &[]);
    assert_eq!(
        ok(&vdisk(["map", "--output", "json", empty.to_str().unwrap()])),
        "[{ \"start\": 0, \"length\": 0, \"depth\": 0, \"present\": false, \"zero\": false, \"data\": false, \"compressed\": false}]\n"
    );
}

#[test]
fn resize_raw() {
    let (_d, dir) = temp();
    let img = dir.join("a.raw");
    sparse_raw(&img, MIB, &[(0, 1, 512)]);
    let p = img.to_str().unwrap();
    let len = || std::fs::metadata(&img).unwrap().len();
    assert_eq!(ok(&vdisk(["resize", p, "+1M"])), "Image resized.\n");
    assert_eq!(len(), 2 * MIB);
    assert_eq!(ok(&vdisk(["resize", "-f", "raw", p, "3M"])), "Image resized.\n");
    assert_eq!(len(), 3 * MIB);
    let e = clean_error(&vdisk(["resize", p, "-1M"]), 1);
    assert!(e.contains("--shrink"), "{e}");
    let e = clean_error(&vdisk(["resize", p, "1M"]), 1);
    assert!(e.contains("--shrink"), "{e}");
    assert_eq!(len(), 3 * MIB);
    ok(&vdisk(["resize", "--shrink", p, "-1M"]));
    assert_eq!(len(), 2 * MIB);
    ok(&vdisk(["resize", "--shrink", p, "--", "-512K"]));
    assert_eq!(len(), 1536 * 1024);
    clean_error(&vdisk(["resize", "--shrink", p, "-4M"]), 1);
    clean_error(&vdisk(["resize", "--shrink", p, "0"]), 1);
    clean_error(&vdisk(["resize", p, "+1Q"]), 1);
    assert_eq!(len(), 1536 * 1024);
    // Not a VHD: refused by the VHD engine, nothing changed.
    let e = clean_error(&vdisk(["resize", "-f", "vhd", p, "+1M"]), 1);
    assert!(e.contains("a.raw") && e.contains("footer"), "{e}");
    assert_eq!(len(), 1536 * 1024);
}

#[test]
fn measure_raw() {
    let (_d, dir) = temp();
    let img = dir.join("a.raw");
    sparse_raw(&img, 16 * MIB, &[(MIB, 3, 8192)]);
    let v = json(&vdisk([
        "measure",
        "-O",
        "raw",
        "--output",
        "json",
        img.to_str().unwrap(),
    ]));
    let o = v.as_object().unwrap();
    let keys: Vec<&str> = o.keys().map(String::as_str).collect();
    assert_eq!(keys, ["required", "fully-allocated"]);
    assert_eq!(o["required"], 8192);
    assert_eq!(o["fully-allocated"], 16 * MIB);
    let text = ok(&vdisk(["measure", "-O", "raw", "--size", "1G"]));
    assert_eq!(text, "required size: 1073741824\nfully allocated size: 1073741824\n");
    clean_error(&vdisk(["measure", "-O", "raw"]), 1);
    clean_error(
        &vdisk(["measure", "-O", "raw", "--size", "1G", img.to_str().unwrap()]),
        1,
    );
    clean_error(&vdisk(["measure", "-O", "raw", "-o", "x=1", "--size", "1G"]), 1);
    let text = ok(&vdisk([
        "measure",
        "-O",
        "vhd",
        "-o",
        "subformat=fixed",
        "--size",
        "1G",
    ]));
    assert_eq!(text, "required size: 1073742336\nfully allocated size: 1073742336\n");
}

#[test]
fn io_commands() {
    let (_d, dir) = temp();
    let img = dir.join("a.raw");
    sparse_raw(&img, MIB, &[]);
    let p = img.to_str().unwrap();
    let out = vdisk([
        "io",
        "-c",
        "write -P 0xab 4k 4k",
        "-c",
        "read -P 0xab 4k 4k",
        "-c",
        "write 100 10",
        "-c",
        "flush",
        p,
    ]);
    let text = ok(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "wrote 4096/4096 bytes at offset 4096");
    assert!(lines[1].starts_with("4 KiB, 1 ops; "), "{text}");
    assert_eq!(lines[2], "read 4096/4096 bytes at offset 4096");
    assert_eq!(lines[4], "wrote 10/10 bytes at offset 100");
    let bytes = std::fs::read(&img).unwrap();
    assert!(bytes[4096..8192].iter().all(|&b| b == 0xab));
    assert!(bytes[100..110].iter().all(|&b| b == 0xcd), "default pattern 0xcd");
    assert_eq!(bytes[99], 0);
    assert_eq!(bytes[110], 0);

    // Pattern mismatch: reported, later commands still run, exit 1.
    let out = vdisk(["io", "-c", "read -P 0xab 4096 8192", "-c", "read 0 512", p]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.starts_with("Pattern verification failed at offset 4096, 8192 bytes\n"),
        "{text}"
    );
    assert!(text.contains("read 512/512 bytes at offset 0"), "{text}");

    // Zeroing and discarding, unaligned edges included.
    ok(&vdisk(["io", "-c", "write -z 4000 200", "-c", "discard 5000 3192", p]));
    let bytes = std::fs::read(&img).unwrap();
    assert!(bytes[4000..4200].iter().all(|&b| b == 0));
    assert!(bytes[4200..5000].iter().all(|&b| b == 0xab));
    assert!(bytes[5000..8192].iter().all(|&b| b == 0));
    ok(&vdisk([
        "io",
        "-c",
        "read -P 0 0 100",
        "-c",
        "read -P 0 110 3890",
        "-c",
        "read -P 0 5000 1043576",
        p,
    ]));
}

#[test]
fn io_errors() {
    let (_d, dir) = temp();
    let img = dir.join("a.raw");
    sparse_raw(&img, MIB, &[]);
    let p = img.to_str().unwrap();
    let before = fingerprint(&img);
    let e = clean_error(&vdisk(["io", "-c", "read 1M 1", p]), 1);
    assert!(e.contains("outside the disk"), "{e}");
    let e = clean_error(&vdisk(["io", "-c", "write 1023K 2K", p]), 1);
    assert!(e.contains("outside the disk"), "{e}");
    let e = clean_error(&vdisk(["io", "-c", "write 18446744073709551615 2", p]), 1);
    assert!(e.contains("outside the disk"), "{e}");
    let e = clean_error(&vdisk(["io", "-r", "-c", "write 0 512", p]), 1);
    assert!(e.contains("read-only"), "{e}");
    let e = clean_error(&vdisk(["io", "-c", "frob 0 1", p]), 1);
    assert!(e.contains("unknown command 'frob'"), "{e}");
    // A bad command is refused before anything runs.
    clean_error(&vdisk(["io", "-c", "write 0 512", "-c", "read -P 300 0 1", p]), 1);
    assert_eq!(fingerprint(&img).0, before.0);
    assert_eq!(fingerprint(&img).1, before.1);
}

#[test]
fn commit_and_rebase_on_raw() {
    let (_d, dir) = temp();
    let img = dir.join("a.raw");
    sparse_raw(&img, MIB, &[(0, 1, 512)]);
    let p = img.to_str().unwrap();
    let before = fingerprint(&img);
    let e = clean_error(&vdisk(["commit", p]), 1);
    assert!(e.contains("no backing file"), "{e}");
    let e = clean_error(&vdisk(["commit", "-f", "raw", p]), 1);
    assert!(e.contains("no backing file"), "{e}");
    let e = clean_error(&vdisk(["rebase", "-b", "base.raw", "-F", "raw", "-u", p]), 1);
    assert!(e.contains("no backing file"), "{e}");
    clean_error(&vdisk(["rebase", p]), 1);
    clean_error(&vdisk(["rebase", "-b", "x", "-F", "qcow2", p]), 1);
    assert_eq!(fingerprint(&img), before);
}

#[test]
fn no_external_is_accepted_everywhere() {
    let (_d, dir) = temp();
    let img = dir.join("a.raw");
    sparse_raw(&img, MIB, &[(0, 1, 512)]);
    let p = img.to_str().unwrap();
    let out_path = dir.join("out.raw");
    let o = out_path.to_str().unwrap();
    ok(&vdisk(["--no-external", "info", p]));
    ok(&vdisk(["info", "--no-external", p]));
    ok(&vdisk(["map", p, "--no-external"]));
    ok(&vdisk(["check", "--no-external", p]));
    ok(&vdisk(["compare", "--no-external", p, p]));
    ok(&vdisk(["convert", "--no-external", "-O", "raw", p, o]));
    ok(&vdisk(["create", "--no-external", "-f", "raw", o, "1M"]));
    ok(&vdisk(["measure", "--no-external", "-O", "raw", p]));
    ok(&vdisk(["resize", "--no-external", o, "+1M"]));
    ok(&vdisk(["io", "--no-external", "-c", "read 0 1", p]));
    clean_error(&vdisk(["commit", "--no-external", p]), 1);
    clean_error(&vdisk(["rebase", "--no-external", "-b", "", p]), 1);
}

#[test]
fn reading_commands_leave_the_image_alone() {
    let (_d, dir) = temp();
    let img = dir.join("a.raw");
    sparse_raw(&img, 4 * MIB, &[(0, 1, 512), (3 * MIB, 2, 4096)]);
    let p = img.to_str().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let before = fingerprint(&img);
    ok(&vdisk(["info", "--backing-chain", p]));
    ok(&vdisk(["map", p]));
    ok(&vdisk(["check", p]));
    ok(&vdisk(["compare", p, p]));
    ok(&vdisk(["measure", "-O", "raw", p]));
    ok(&vdisk(["io", "-c", "read 0 4M", p]));
    ok(&vdisk([
        "convert",
        "-O",
        "raw",
        p,
        dir.join("copy.raw").to_str().unwrap(),
    ]));
    assert_eq!(fingerprint(&img), before);
}

#[test]
fn help_and_version() {
    let text = ok(&vdisk(["--help"]));
    for cmd in [
        "info", "create", "convert", "compare", "check", "map", "resize", "commit", "measure", "io", "rebase",
    ] {
        assert!(text.contains(cmd), "{cmd} missing from help");
    }
    assert!(ok(&vdisk(["--version"])).starts_with("vdisk "));
    ok(&vdisk(["io", "--help"]));
}
