//! Images we create and write pass `qemu-img check` and read identically in QEMU.

mod common;

use common::{assert_same_as_raw, create, open, qemu_check_and_compare, run_tool, tools_available};
use disk_core::{Disk, Image, MemStorage, RawLayer, Storage};
use std::sync::Arc;

const MIB: u64 = 1 << 20;

fn pattern(size: u64) -> Vec<u8> {
    let mut data = vec![0u8; size as usize];
    for (off, len, pat) in [
        (0u64, 4096u64, 0xabu8),
        (200_000, 70_000, 0x11),
        (5 * MIB - 512, 1024, 0x22),
        (size - 4096, 4096, 0x33),
    ] {
        for (i, b) in data[off as usize..(off + len) as usize].iter_mut().enumerate() {
            *b = pat ^ (i as u8);
        }
    }
    data
}

fn write_all(disk: &dyn Disk, data: &[u8]) {
    for (off, len) in [
        (0u64, 4096u64),
        (199_680, 70_656),
        (5 * MIB - 512, 1024),
        (data.len() as u64 - 4096, 4096),
    ] {
        disk_core::bytes::write_bytes(disk, off, &data[off as usize..(off + len) as usize]).unwrap();
    }
    disk.flush().unwrap();
}

#[test]
fn created_subformats_pass_qemu_check_and_compare() {
    let qemu = tools_available(
        "created_subformats_pass_qemu_check_and_compare (qemu-img part)",
        &["qemu-img"],
    );
    if !qemu {
        eprintln!("qemu-img not installed: checking our own reads only");
    }
    let dir = tempfile::tempdir().unwrap();
    let size = 9 * MIB;
    let data = pattern(size);
    let raw = dir.path().join("ref.raw");
    std::fs::write(&raw, &data).unwrap();
    for (i, opts) in [
        "",
        "subformat=monolithicSparse,zeroed_grain=on,adapter_type=lsilogic,hwversion=7",
        "subformat=monolithicFlat",
        "subformat=twoGbMaxExtentSparse",
        "subformat=twoGbMaxExtentFlat",
        "subformat=streamOptimized",
    ]
    .iter()
    .enumerate()
    {
        let img = dir.path().join(format!("ours{i}.vmdk"));
        create(&img, size, opts, None).unwrap();
        {
            let disk = open(&img, true).unwrap();
            if opts.contains("stream") {
                // Written front to back, as convert does.
                let src = Arc::new(MemStorage::new());
                src.write_at(&data, 0).unwrap();
                let src = Image::single(Box::new(RawLayer::open(src, false).unwrap()), None);
                disk_core::ops::copy(&src, &disk, Default::default()).unwrap();
                disk.flush().unwrap();
                let e = disk.write(0, &[0u8; 512]).unwrap_err();
                assert_eq!(e.kind(), disk_core::ErrorKind::Unsupported);
            } else {
                write_all(&disk, &data);
            }
            assert_same_as_raw(&disk, &raw);
        }
        let disk = open(&img, false).unwrap();
        assert_same_as_raw(&disk, &raw);
        if qemu {
            qemu_check_and_compare(&img, "vmdk", &raw);
        }
    }
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for want in ["ours2-flat.vmdk", "ours3-s001.vmdk", "ours4-f001.vmdk"] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
}

#[test]
fn child_over_our_parent_and_discard() {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("parent.vmdk");
    let child = dir.path().join("child.vmdk");
    let size = 4 * MIB;
    create(&parent, size, "", None).unwrap();
    {
        let p = open(&parent, true).unwrap();
        disk_core::bytes::write_bytes(&p, 0, &vec![0x5a; 2 * MIB as usize]).unwrap();
        p.flush().unwrap();
    }
    create(&child, size, "", Some("parent.vmdk")).unwrap();
    let c = open(&child, true).unwrap();
    assert_eq!(c.depth(), 2);
    // Partial grain write copies the rest of the grain from the parent.
    disk_core::bytes::write_bytes(&c, 1000, b"child").unwrap();
    let mut buf = vec![0u8; 65536];
    disk_core::bytes::read_bytes(&c, 0, &mut buf).unwrap();
    assert_eq!(&buf[1000..1005], b"child");
    assert!(buf[..1000].iter().chain(&buf[1005..]).all(|&b| b == 0x5a));
    // Discard hides the parent's data.
    c.discard(256, 512).unwrap();
    disk_core::bytes::read_bytes(&c, 128 * 1024, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0), "discarded range reads as zeros");
    c.flush().unwrap();
    drop(c);
    if tools_available("child_over_our_parent_and_discard (qemu-img part)", &["qemu-img"]) {
        let raw = dir.path().join("child.raw");
        run_tool("qemu-img", ["check", "-f", "vmdk", child.to_str().unwrap()]);
        run_tool(
            "qemu-img",
            ["convert", "-O", "raw", child.to_str().unwrap(), raw.to_str().unwrap()],
        );
        let c = open(&child, false).unwrap();
        assert_same_as_raw(&c, &raw);
    }
}

#[test]
fn first_write_changes_cid_and_breaks_children() {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("p.vmdk");
    let child = dir.path().join("c.vmdk");
    create(&parent, MIB, "subformat=monolithicFlat", None).unwrap();
    create(&child, MIB, "", Some("p.vmdk")).unwrap();
    open(&child, false).unwrap();
    let p = open(&parent, true).unwrap();
    p.write(0, &[1u8; 512]).unwrap();
    p.flush().unwrap();
    drop(p);
    let e = open(&child, false).unwrap_err();
    assert_eq!(e.kind(), disk_core::ErrorKind::ParentMismatch);
    // Overriding the check opens it anyway.
    let options = disk_core::OpenOptions {
        verify_parents: false,
        resolver: Arc::new(disk_core::FsResolver::new(disk_core::FsPolicy::SameDirectory)),
        ..Default::default()
    };
    let c = common::open_with(&child, &options).unwrap();
    let mut b = [0u8; 512];
    c.read(0, &mut b).unwrap();
    assert_eq!(b, [1u8; 512]);
}

#[test]
fn check_finds_damaged_tables() {
    use disk_core::Repair;
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("c.vmdk");
    create(&img, 4 * MIB, "", None).unwrap();
    {
        let d = open(&img, true).unwrap();
        d.write(0, &vec![1u8; 256 * 512]).unwrap();
        d.flush().unwrap();
    }
    let report = open(&img, false).unwrap().top().check(Repair::None).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.allocated_clusters, Some(2));
    // Layout of a 4 MiB image: redundant GT at sector 22, primary GT at sector 27.
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[22 * 512..22 * 512 + 4].copy_from_slice(&0u32.to_le_bytes());
    bytes[27 * 512 + 4..27 * 512 + 8].copy_from_slice(&0x00ff_ffffu32.to_le_bytes());
    std::fs::write(&img, &bytes).unwrap();
    let report = open(&img, false).unwrap().top().check(Repair::None).unwrap();
    let text = report.corruptions.join("\n");
    assert!(text.contains("past the end"), "{text}");
    assert!(text.contains("redundant copy"), "{text}");
    if tools_available("check_finds_damaged_tables (qemu-img part)", &["qemu-img"]) {
        let out = std::process::Command::new("qemu-img")
            .args(["check", img.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success(), "qemu-img check agrees the image is damaged");
    }
}

#[test]
fn writes_allocate_missing_grain_tables() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("g.vmdk");
    create(&img, 4 * MIB, "", None).unwrap();
    // Unlink the preallocated tables (as images whose tables are allocated lazily have them).
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[21 * 512..21 * 512 + 4].fill(0);
    bytes[26 * 512..26 * 512 + 4].fill(0);
    std::fs::write(&img, &bytes).unwrap();
    let data: Vec<u8> = (0..3 * 65536u32).map(|i| (i % 253) as u8).collect();
    {
        let d = open(&img, true).unwrap();
        disk_core::bytes::write_bytes(&d, 65536, &data).unwrap();
        d.flush().unwrap();
    }
    let d = open(&img, false).unwrap();
    let mut back = vec![0u8; data.len()];
    disk_core::bytes::read_bytes(&d, 65536, &mut back).unwrap();
    assert_eq!(back, data);
    let report = disk_core::Layer::check(d.top(), disk_core::Repair::None).unwrap();
    assert!(report.is_clean(), "{report:?}");
    if tools_available("writes_allocate_missing_grain_tables (qemu-img part)", &["qemu-img"]) {
        let raw = dir.path().join("g.raw");
        let mut full = vec![0u8; 4 * MIB as usize];
        full[65536..65536 + data.len()].copy_from_slice(&data);
        std::fs::write(&raw, &full).unwrap();
        qemu_check_and_compare(&img, "vmdk", &raw);
    }
}

#[test]
fn absolute_parent_hint_falls_back_to_the_same_directory() {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("base.vmdk");
    let child = dir.path().join("delta.vmdk");
    create(&parent, MIB, "", None).unwrap();
    create(&child, MIB, "", Some("base.vmdk")).unwrap();
    let text = std::fs::read(&child).unwrap();
    let from = b"parentFileNameHint=\"base.vmdk\"";
    let to = b"parentFileNameHint=\"/vmfs/volumes/ds1/vm/base.vmdk\"";
    let at = text.windows(from.len()).position(|w| w == from).unwrap();
    // Same length overall: the longer hint eats into the descriptor area's NUL padding.
    let nul = 512 + text[512..].iter().position(|&b| b == 0).unwrap();
    let mut patched = text[..at].to_vec();
    patched.extend_from_slice(to);
    patched.extend_from_slice(&text[at + from.len()..nul]);
    patched.extend_from_slice(&text[nul + to.len() - from.len()..]);
    assert_eq!(patched.len(), text.len());
    std::fs::write(&child, &patched).unwrap();
    let options =
        disk_core::OpenOptions::new().resolver(Arc::new(disk_core::FsResolver::new(disk_core::FsPolicy::Any)));
    let c = common::open_with(&child, &options).unwrap();
    assert_eq!(c.depth(), 2);
    assert_eq!(
        c.info().backing_filename.as_deref(),
        Some("/vmfs/volumes/ds1/vm/base.vmdk")
    );
    let mut b = [1u8; 512];
    c.read(0, &mut b).unwrap();
    assert_eq!(b, [0u8; 512]);
}

#[test]
fn stream_spanning_many_grain_tables_with_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("st.vmdk");
    let size = 100 * MIB;
    create(
        &img,
        size,
        "subformat=streamOptimized,adapter_type=lsilogic,hwversion=14",
        None,
    )
    .unwrap();
    let mut full = vec![0u8; size as usize];
    {
        let d = open(&img, true).unwrap();
        for (k, off) in [0u64, 3 * MIB + 512, 33 * MIB, 40 * MIB, 70 * MIB - 1024, size - 8192]
            .iter()
            .enumerate()
        {
            let piece: Vec<u8> = (0..8192u32).map(|i| (i as u8) ^ (k as u8 * 37 + 1)).collect();
            disk_core::bytes::write_bytes(&d, *off, &piece).unwrap();
            full[*off as usize..*off as usize + piece.len()].copy_from_slice(&piece);
            if k % 2 == 1 {
                d.flush().unwrap(); // metadata written, then overwritten by the next grains
            }
        }
        d.flush().unwrap();
        assert_same_as_raw(&d, &{
            let p = dir.path().join("ref.raw");
            std::fs::write(&p, &full).unwrap();
            p
        });
    }
    let raw = dir.path().join("ref.raw");
    let d = open(&img, false).unwrap();
    assert_same_as_raw(&d, &raw);
    if tools_available(
        "stream_spanning_many_grain_tables_with_flushes (qemu-img part)",
        &["qemu-img"],
    ) {
        qemu_check_and_compare(&img, "vmdk", &raw);
    }
    if tools_available(
        "stream_spanning_many_grain_tables_with_flushes (vmdkinfo part)",
        &["vmdkinfo"],
    ) {
        let out = run_tool("vmdkinfo", [img.to_str().unwrap()]);
        assert!(out.contains("Stream optimized"), "{out}");
    }
}
