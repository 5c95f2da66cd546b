//! `vdisk bench`: qemu-img bench's options and output, read and write runs on every format,
//! what a write run leaves in the image, and clean failures on bad arguments.

mod common;

use common::*;
use disk_core::testing::interop::tools_available;
use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;
const FORMATS: [&str; 4] = ["raw", "vhd", "vhdx", "vmdk"];

/// qemu's name for a format.
fn qemu_format(format: &str) -> &str {
    if format == "vhd" { "vpc" } else { format }
}

/// A new empty image of `format` and `size` bytes in `dir`.
fn create(dir: &Path, format: &str, size: u64) -> PathBuf {
    let path = dir.join(format!("disk.{format}"));
    ok(&vdisk([
        "create",
        "-f",
        format,
        path.to_str().unwrap(),
        &size.to_string(),
    ]));
    path
}

/// `vdisk bench ARGS IMAGE`.
fn bench(args: &[&str], image: &Path) -> std::process::Output {
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    all.push(image.to_str().unwrap());
    vdisk(all)
}

/// Check qemu-img's summary around ours: `first` lines first, then `N IOPS, X MiB/s`, then
/// `Run completed in S.SSS seconds.` last.
fn assert_summary(text: &str, first: &[&str]) {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), first.len() + 2, "{text}");
    assert_eq!(&lines[..first.len()], first, "{text}");
    let rate = lines[first.len()];
    let (iops, mib) = rate
        .strip_suffix(" MiB/s")
        .and_then(|r| r.split_once(" IOPS, "))
        .unwrap_or_else(|| panic!("rate line: {text}"));
    assert!(iops.parse::<u64>().is_ok() && mib.parse::<f64>().is_ok(), "{text}");
    assert_run_completed(lines[lines.len() - 1]);
}

/// `Run completed in S.SSS seconds.`, as qemu-img prints it.
fn assert_run_completed(line: &str) {
    let seconds = line
        .strip_prefix("Run completed in ")
        .and_then(|l| l.strip_suffix(" seconds."))
        .unwrap_or_else(|| panic!("last line: {line}"));
    let (_, decimals) = seconds.split_once('.').unwrap();
    assert_eq!(decimals.len(), 3, "{line}");
    assert!(seconds.parse::<f64>().is_ok(), "{line}");
}

/// `vdisk io` commands that must all succeed with every pattern matching.
fn io_ok(image: &Path, commands: &[String]) {
    let mut args = vec!["io".to_string()];
    for c in commands {
        args.push("-c".into());
        args.push(c.clone());
    }
    args.push(image.to_str().unwrap().into());
    let text = ok(&vdisk(&args));
    assert!(!text.contains("Pattern verification failed"), "{commands:?}: {text}");
}

/// The guest view of `image` as bytes (through `vdisk convert -O raw`).
fn guest_bytes(image: &Path) -> Vec<u8> {
    let out = image.with_extension("flat");
    raw_copy(image, &out);
    let bytes = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    bytes
}

/// `vdisk check` (and `qemu-img check` where it is installed and checks the format) find nothing.
fn assert_clean(image: &Path, format: &str) {
    if format == "raw" {
        return;
    }
    ok(&vdisk(["check", image.to_str().unwrap()]));
    // qemu-img checks VHDX and VMDK ("This image format does not support checks" for vpc).
    if format != "vhd" && have_qemu_img() {
        ok(&qemu_img(["check", "-f", qemu_format(format), image.to_str().unwrap()]));
    }
}

fn have_qemu_img() -> bool {
    tools_available("bench tests (qemu-img part)", &["qemu-img"])
}

#[test]
fn reads_on_every_format() {
    let (_d, dir) = temp();
    for format in FORMATS {
        let img = create(&dir, format, 4 * MIB);
        // Some data, the rest unallocated: reads go through both paths.
        io_ok(&img, &["write -P 0x33 1M 512K".into()]);
        let before = fingerprint(&img);
        let text = ok(&bench(&["-c", "500", "-d", "4"], &img));
        assert_summary(
            &text,
            &["Sending 500 read requests, 4096 bytes each, 4 in parallel (starting at offset 0, step size 4096)"],
        );
        // Wrapping past the end, other sizes and steps, random offsets, unaligned requests.
        let text = ok(&bench(
            &["-c", "200", "-d", "3", "-s", "64K", "-S", "192K", "-o", "512"],
            &img,
        ));
        assert_summary(
            &text,
            &["Sending 200 read requests, 65536 bytes each, 3 in parallel (starting at offset 512, step size 196608)"],
        );
        let text = ok(&bench(&["-r", "-c", "300", "-d", "1"], &img));
        assert_summary(
            &text,
            &["Sending 300 read requests, 4096 bytes each, 1 in parallel (random offsets, aligned to 4096)"],
        );
        let text = ok(&bench(&["-c", "100", "-d", "8", "-s", "1000", "-o", "10"], &img));
        assert_summary(
            &text,
            &["Sending 100 read requests, 1000 bytes each, 8 in parallel (starting at offset 10, step size 1000)"],
        );
        // A read test never changes the image.
        assert_eq!(fingerprint(&img), before, "{format}");
        std::fs::remove_file(&img).unwrap();
    }
}

#[test]
fn writes_leave_the_pattern_on_every_format() {
    let (_d, dir) = temp();
    let qemu_io = tools_available("writes_leave_the_pattern_on_every_format (qemu-io part)", &["qemu-io"]);
    for format in FORMATS {
        let img = create(&dir, format, 4 * MIB);
        // 32 requests of 64 KiB from 1 MiB: bytes 1 MiB .. 3 MiB.
        let text = ok(&bench(
            &[
                "-w",
                "--pattern",
                "0xab",
                "-c",
                "32",
                "-d",
                "4",
                "-s",
                "64K",
                "-o",
                "1M",
            ],
            &img,
        ));
        assert_summary(
            &text,
            &[
                "Sending 32 write requests, 65536 bytes each, 4 in parallel (starting at offset 1048576, step size 65536)",
            ],
        );
        let reads = [
            "read -P 0 0 1M".to_string(),
            "read -P 0xab 1M 2M".into(),
            "read -P 0 3M 1M".into(),
        ];
        io_ok(&img, &reads);
        assert_clean(&img, format);
        if qemu_io {
            for read in &reads {
                let out = std::process::Command::new("qemu-io")
                    .args(["-f", qemu_format(format), "-c", read, img.to_str().unwrap()])
                    .output()
                    .unwrap();
                let text = ok(&out);
                assert!(!text.contains("Pattern verification failed"), "{format} {read}: {text}");
            }
        }
        std::fs::remove_file(&img).unwrap();
    }
}

#[test]
fn default_pattern_is_zero_as_in_qemu_img() {
    let (_d, dir) = temp();
    let img = dir.join("full.raw");
    sparse_raw(&img, MIB, &[(0, 0x11, MIB as usize)]);
    ok(&bench(&["-w", "-c", "2", "-d", "1"], &img));
    let bytes = std::fs::read(&img).unwrap();
    assert!(bytes[..8192].iter().all(|&b| b == 0));
    assert!(bytes[8192..].iter().all(|&b| b == 0x11));
}

#[test]
fn sequential_requests_wrap_as_in_qemu_img() {
    // Offsets advance modulo (disk size - buffer size): on a 64 KiB disk with 4 KiB requests
    // the last 4 KiB are reached only when -o names them.
    let (_d, dir) = temp();
    let img = dir.join("small.raw");
    sparse_raw(&img, 65536, &[]);
    ok(&bench(&["-w", "--pattern", "1", "-c", "100", "-d", "2"], &img));
    let bytes = std::fs::read(&img).unwrap();
    assert!(bytes[..61440].iter().all(|&b| b == 1));
    assert!(bytes[61440..].iter().all(|&b| b == 0));
    ok(&bench(
        &["-w", "--pattern", "2", "-c", "2", "-d", "1", "-o", "60K"],
        &img,
    ));
    let bytes = std::fs::read(&img).unwrap();
    assert!(bytes[61440..].iter().all(|&b| b == 2));
    assert!(bytes[..4096].iter().all(|&b| b == 1) && bytes[4096..8192].iter().all(|&b| b == 2));
}

#[test]
fn random_writes_land_on_buffer_boundaries() {
    let (_d, dir) = temp();
    for format in ["vhdx", "vmdk"] {
        let img = create(&dir, format, MIB);
        ok(&bench(
            &[
                "-w",
                "-r",
                "--pattern",
                "0x5a",
                "-c",
                "300",
                "-d",
                "4",
                "-t",
                "writethrough",
            ],
            &img,
        ));
        assert_clean(&img, format);
        let bytes = guest_bytes(&img);
        assert_eq!(bytes.len() as u64, MIB);
        let mut written = 0;
        for block in bytes.chunks(4096) {
            if block.iter().all(|&b| b == 0x5a) {
                written += 1;
            } else {
                assert!(block.iter().all(|&b| b == 0), "{format}: a block partly written");
            }
        }
        // 300 draws over 256 blocks reach about 175 of them.
        assert!((100..=256).contains(&written), "{format}: {written} blocks written");
        std::fs::remove_file(&img).unwrap();
    }
}

#[test]
fn unaligned_requests_like_qemu_img() {
    let (_d, dir) = temp();
    // The case qemu-img was seen to write: bytes 10 .. 3010.
    let img = dir.join("a.raw");
    sparse_raw(&img, MIB, &[]);
    ok(&bench(
        &["-w", "--pattern", "0xab", "-c", "3", "-s", "1000", "-o", "10"],
        &img,
    ));
    let bytes = std::fs::read(&img).unwrap();
    assert!(bytes[..10].iter().all(|&b| b == 0));
    assert!(bytes[10..3010].iter().all(|&b| b == 0xab));
    assert!(bytes[3010..].iter().all(|&b| b == 0));
    if have_qemu_img() {
        let theirs = dir.join("q.raw");
        sparse_raw(&theirs, MIB, &[]);
        ok(&qemu_img([
            "bench",
            "-f",
            "raw",
            "-w",
            "--pattern",
            "0xab",
            "-c",
            "3",
            "-s",
            "1000",
            "-o",
            "10",
            theirs.to_str().unwrap(),
        ]));
        assert!(
            std::fs::read(&theirs).unwrap() == bytes,
            "qemu-img bench wrote other bytes"
        );
    }
    // Many requests sharing sectors, in parallel, on a format with 512-byte sectors: no
    // read-modify-write undoes another.
    let img = create(&dir, "vhdx", MIB);
    ok(&bench(
        &["-w", "--pattern", "0xcd", "-c", "200", "-d", "8", "-s", "1000"],
        &img,
    ));
    io_ok(
        &img,
        &["read -P 0xcd 0 200000".into(), "read -P 0 200000 848576".into()],
    );
    assert_clean(&img, "vhdx");
}

#[test]
fn cache_modes_and_flush_intervals() {
    let (_d, dir) = temp();
    let img = create(&dir, "vhdx", 4 * MIB);
    let runs: [&[&str]; 9] = [
        &["-t", "none"],
        &["-t", "off"],
        &["-t", "directsync"],
        &["-t", "writethrough"],
        &["-t", "writeback", "--flush-interval", "16"],
        &["-t", "writeback", "--flush-interval", "16", "--no-drain"],
        &["-t", "unsafe", "--flush-interval", "40"],
        &["--flush-interval", "0x20", "-d", "32"],
        &["-n", "-i", "io_uring", "-q", "--flush-interval", "5", "-d", "1"],
    ];
    for (n, extra) in runs.iter().enumerate() {
        let pattern = 0x10 + n;
        let pattern_arg = format!("{pattern:#x}");
        let mut args = vec!["-w", "--pattern", &pattern_arg, "-c", "100", "-d", "4", "-S", "8K"];
        args.extend_from_slice(extra);
        // A -d in `extra` overrides the one above: the last wins, as with qemu-img.
        let text = ok(&bench(&args, &img));
        let depth = extra.iter().position(|&a| a == "-d").map_or("4", |i| extra[i + 1]);
        let mut first = vec![format!(
            "Sending 100 write requests, 4096 bytes each, {depth} in parallel (starting at offset 0, step size 8192)"
        )];
        if let Some(i) = extra.iter().position(|&a| a == "--flush-interval") {
            let interval = if extra[i + 1] == "0x20" { "32" } else { extra[i + 1] };
            first.push(format!("Sending flush every {interval} requests"));
        }
        let first: Vec<&str> = first.iter().map(String::as_str).collect();
        assert_summary(&text, &first);
        // Every other 4 KiB from 0 to 800 KiB holds the pattern, the ones between still zeros
        // (or an earlier run's pattern: none, all runs write the same places).
        io_ok(
            &img,
            &[
                format!("read -P {pattern:#x} 0 4K"),
                format!("read -P {pattern:#x} 792K 4K"),
                "read -P 0 4K 4K".into(),
                "read -P 0 800K 3296K".into(),
            ],
        );
        assert_clean(&img, "vhdx");
    }
}

#[test]
fn json_output() {
    let (_d, dir) = temp();
    let img = create(&dir, "vhd", 2 * MIB);
    let v = json(&bench(&["--output", "json", "-c", "64", "-d", "2", "-s", "8K"], &img));
    let o = v.as_object().unwrap();
    let keys: Vec<&str> = o.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "operation",
            "count",
            "depth",
            "size",
            "offset",
            "step",
            "elapsed-seconds",
            "iops",
            "mib-per-s"
        ]
    );
    assert_eq!(o["operation"], "read");
    assert_eq!(o["count"], 64);
    assert_eq!(o["depth"], 2);
    assert_eq!(o["size"], 8192);
    assert_eq!(o["offset"], 0);
    assert_eq!(o["step"], 8192);
    let elapsed = o["elapsed-seconds"].as_f64().unwrap();
    let iops = o["iops"].as_f64().unwrap();
    let mib = o["mib-per-s"].as_f64().unwrap();
    assert!(elapsed > 0.0 && iops > 0.0 && mib > 0.0, "{v}");
    assert!((iops * elapsed - 64.0).abs() < 0.5, "{v}");
    assert!((mib / iops * 1024.0 - 8.0).abs() < 1e-6, "{v}");

    let v = json(&bench(&["--output=json", "-w", "-r", "-c", "10"], &img));
    assert_eq!(v["operation"], "write");
    assert_eq!(v["random"], true);
    assert!(v.get("offset").is_none() && v.get("step").is_none(), "{v}");
}

#[test]
fn summary_matches_qemu_img() {
    if !tools_available("summary_matches_qemu_img", &["qemu-img"]) {
        return;
    }
    let (_d, dir) = temp();
    let img = dir.join("q.raw");
    sparse_raw(&img, 4 * MIB, &[]);
    let cases: [&[&str]; 6] = [
        &["-c", "10"],
        &["-c", "0x20", "-d", "010", "-s", "1.5k", "-S", "0", "-o", "512"],
        &["-c", "100", "-d", "2", "-s", "64K", "-S", "1M", "-o", "1000"],
        &["-w", "-c", "100", "-d", "4", "--flush-interval", "10", "--pattern", "7"],
        &["-w", "-c", "50", "--count", "70", "-t", "unsafe", "--no-drain"],
        &[
            "-U",
            "-q",
            "-n",
            "-i",
            "threads",
            "-t",
            "none",
            "--pattern",
            "1",
            "-c",
            "5",
        ],
    ];
    for args in cases {
        let mut theirs = vec!["bench", "-f", "raw"];
        theirs.extend_from_slice(args);
        theirs.push(img.to_str().unwrap());
        let theirs = ok(&qemu_img(&theirs));
        let ours = ok(&bench(args, &img));
        let their_lines: Vec<&str> = theirs.lines().collect();
        let (their_last, their_first) = their_lines.split_last().unwrap();
        assert_run_completed(their_last);
        assert_summary(&ours, their_first);
    }
}

#[test]
fn bad_arguments_fail_cleanly() {
    let (_d, dir) = temp();
    let img = create(&dir, "vhdx", MIB);
    let before = fingerprint(&img);
    let bad: [&[&str]; 25] = [
        &["-c", "0"],
        &["-c", "x"],
        &["-c", "1k"],
        &["-c", "2147483648"],
        &["-d", "0"],
        &["-d", "-1"],
        &["-s", "0"],
        &["-s", "2G"],
        &["-s", "x"],
        &["-S", "3G"],
        &["-o", "-1"],
        &["-o", "x"],
        &["--pattern", "256"],
        &["--pattern", "x"],
        &["-t", "bogus"],
        &["-i", "bogus"],
        &["-f", "qcow2"],
        &["--flush-interval", "64"],
        &["-w", "--flush-interval", "8"],
        &["-w", "-r", "-o", "4096"],
        &["-w", "-U"],
        &["-r", "-S", "8K"],
        &["-w", "-o", "1M"],
        &["-w", "-o", "1020K", "-s", "8K"],
        &["--image-opts"],
    ];
    for args in bad {
        let out = bench(args, &img);
        clean_error(&out, 1);
        assert!(stdout(&out).is_empty(), "{args:?}: {}", stdout(&out));
    }
    // The refusal of a request outside the disk names the image.
    let err = clean_error(&bench(&["-o", "1M"], &img), 1);
    assert!(err.contains("disk.vhdx") && err.contains("offset 1048576"), "{err}");
    let err = clean_error(&bench(&["-r", "-s", "2M"], &img), 1);
    assert!(err.contains("disk.vhdx"), "{err}");
    // No file, two files, a missing file.
    clean_error(&vdisk(["bench"]), 1);
    clean_error(&vdisk(["bench", img.to_str().unwrap(), img.to_str().unwrap()]), 1);
    let missing = dir.join("missing.vhdx");
    let err = clean_error(&vdisk(["bench", missing.to_str().unwrap()]), 1);
    assert!(err.contains("missing.vhdx"), "{err}");
    assert_eq!(fingerprint(&img), before);
}

#[test]
fn failed_requests_stop_the_run() {
    // A streamOptimized VMDK takes writes only front to back: the run writes at 512 KiB, then
    // 768 KiB, then wraps to 4 KiB, which fails with one error line after the summary's first.
    let (_d, dir) = temp();
    let img = dir.join("s.vmdk");
    ok(&vdisk([
        "create",
        "-f",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        img.to_str().unwrap(),
        "1M",
    ]));
    let out = bench(
        &[
            "-w",
            "--pattern",
            "1",
            "-c",
            "10",
            "-d",
            "1",
            "-o",
            "512K",
            "-S",
            "256K",
        ],
        &img,
    );
    let err = clean_error(&out, 1);
    assert!(
        err.contains("s.vmdk") && err.contains("write of 4096 bytes at offset 4096 failed"),
        "{err}"
    );
    assert_eq!(err.matches("s.vmdk").count(), 1, "{err}");
    let text = stdout(&out);
    assert!(text.starts_with("Sending 10 write requests"), "{text}");
    assert!(!text.contains("Run completed"), "{text}");
}
