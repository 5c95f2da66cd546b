//! Images made by `qemu-img` / `qemu-io` read back exactly as QEMU sees them.

mod common;

use common::{assert_same_as_raw, open, qemu_img_available, run_tool, tools_available};
use disk_core::{Disk, ErrorKind};
use std::path::Path;

/// (offset, length, pattern) writes: aligned, unaligned, grain-crossing, at the end.
const WRITES: &[(u64, u64, u8)] = &[
    (0, 4096, 0xab),
    (65536 * 3 + 1024, 512, 0x11),
    (1 << 20, 200_000, 0x22),
    ((32 << 20) - 4096, 8192, 0x33),
    ((64 << 20) - 1024, 1024, 0x44),
];

fn qemu_write(img: &Path, writes: &[(u64, u64, u8)]) {
    let mut args = vec!["-f".to_string(), "vmdk".to_string()];
    for (off, len, pat) in writes {
        args.push("-c".into());
        args.push(format!("write -P {pat:#x} {off} {len}"));
    }
    args.push(img.to_str().unwrap().into());
    run_tool("qemu-io", &args);
}

fn qemu_raw(img: &Path, raw: &Path) {
    run_tool(
        "qemu-img",
        ["convert", "-O", "raw", img.to_str().unwrap(), raw.to_str().unwrap()],
    );
}

#[test]
fn qemu_subformats_read_identically() {
    if !tools_available("qemu_subformats_read_identically", &["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (i, opts) in [
        "subformat=monolithicSparse",
        "subformat=monolithicSparse,zeroed_grain=on",
        "subformat=monolithicFlat",
        "subformat=twoGbMaxExtentSparse",
        "subformat=twoGbMaxExtentFlat",
        "subformat=monolithicSparse,adapter_type=lsilogic,hwversion=6",
    ]
    .iter()
    .enumerate()
    {
        let img = dir.path().join(format!("img{i}.vmdk"));
        let raw = dir.path().join(format!("img{i}.raw"));
        run_tool(
            "qemu-img",
            ["create", "-q", "-f", "vmdk", "-o", opts, img.to_str().unwrap(), "64M"],
        );
        qemu_write(&img, WRITES);
        if opts.contains("zeroed_grain") {
            run_tool(
                "qemu-io",
                ["-f", "vmdk", "-c", "write -z 1M 128k", img.to_str().unwrap()],
            );
        }
        qemu_raw(&img, &raw);
        let disk = open(&img, false).unwrap_or_else(|e| panic!("{opts}: {e}"));
        assert_same_as_raw(&disk, &raw);
    }
}

#[test]
fn qemu_stream_optimized_reads_identically() {
    if !qemu_img_available("qemu_stream_optimized_reads_identically") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    let mut data = vec![0u8; 10 << 20];
    for (k, b) in data.iter_mut().enumerate().skip(3 << 20).take(3 << 20) {
        *b = (k * 7 % 251) as u8;
    }
    data[100..200].fill(9);
    data[(10 << 20) - 10..].fill(0xfe);
    std::fs::write(&raw, &data).unwrap();
    let img = dir.path().join("s.vmdk");
    run_tool(
        "qemu-img",
        [
            "convert",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            raw.to_str().unwrap(),
            img.to_str().unwrap(),
        ],
    );
    let disk = open(&img, false).unwrap();
    assert_same_as_raw(&disk, &raw);
    // Random writes into an existing stream image are refused clearly.
    let before = std::fs::read(&img).unwrap();
    drop(disk);
    let disk = open(&img, true).unwrap();
    let e = disk.write(0, &[1u8; 512]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    drop(disk);
    assert!(
        std::fs::read(&img).unwrap() == before,
        "a refused write changes nothing (not even the CID)"
    );
}

#[test]
fn qemu_split_5g_and_child_chain() {
    if !tools_available("qemu_split_5g_and_child_chain", &["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("big.vmdk");
    let p = img.to_str().unwrap();
    run_tool(
        "qemu-img",
        [
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "subformat=twoGbMaxExtentSparse",
            p,
            "5G",
        ],
    );
    let g = 1u64 << 30;
    let writes = [
        (0, 65536, 0x01),
        (2 * g - 4096, 8192, 0x02), // crosses the first extent boundary
        (4 * g + 12345 - 345, 100_000, 0x03),
        (5 * g - 512, 512, 0x04),
    ];
    qemu_write(&img, &writes);
    let disk = open(&img, false).unwrap();
    assert_eq!(disk.virtual_size(), 5 * g);
    let check = |disk: &dyn Disk, writes: &[(u64, u64, u8)]| {
        for &(off, len, _pat) in writes {
            let mut buf = vec![0u8; len as usize + 1024];
            let start = off.saturating_sub(512);
            let end = (start + buf.len() as u64).min(disk.virtual_size());
            let buf = &mut buf[..(end - start) as usize];
            disk_core::bytes::read_bytes(disk, start, buf).unwrap();
            for (i, &b) in buf.iter().enumerate() {
                let at = start + i as u64;
                let want = writes
                    .iter()
                    .rev()
                    .find(|w| at >= w.0 && at < w.0 + w.1)
                    .map_or(0, |w| w.2);
                assert_eq!(b, want, "byte {at}");
            }
        }
    };
    check(&disk, &writes);
    let info = disk.info();
    let extents = info.specific.iter().find(|(k, _)| k == "extents").unwrap();
    assert!(matches!(&extents.1, disk_core::InfoValue::List(l) if l.len() == 3));

    // A child made by qemu-img, written by qemu-io, over a smaller parent.
    let parent = dir.path().join("parent.vmdk");
    let child = dir.path().join("child.vmdk");
    run_tool(
        "qemu-img",
        ["create", "-q", "-f", "vmdk", parent.to_str().unwrap(), "64M"],
    );
    qemu_write(&parent, common_writes());
    run_tool(
        "qemu-img",
        [
            "create",
            "-q",
            "-f",
            "vmdk",
            "-b",
            "parent.vmdk",
            "-F",
            "vmdk",
            child.to_str().unwrap(),
        ],
    );
    qemu_write(
        &child,
        &[(65536 * 3, 700, 0x55), (1 << 20, 4096, 0x66), (40 << 20, 512, 0x77)],
    );
    let raw = dir.path().join("child.raw");
    qemu_raw(&child, &raw);
    let disk = open(&child, false).unwrap();
    assert_eq!(disk.depth(), 2);
    assert_same_as_raw(&disk, &raw);
    let top = disk.top().as_any().downcast_ref::<vmdk::VmdkLayer>().unwrap();
    let (_, parent_layer) = (0, disk.layers().nth(1).unwrap().0);
    let parent_layer = parent_layer.as_any().downcast_ref::<vmdk::VmdkLayer>().unwrap();
    assert_eq!(top.parent_cid(), Some(parent_layer.cid()));
    drop(disk);

    // Writing the parent changes its CID: the child no longer matches.
    qemu_write(&parent, &[(0, 512, 0x99)]);
    let e = open(&child, false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ParentMismatch, "{e}");
}

fn common_writes() -> &'static [(u64, u64, u8)] {
    WRITES
}
