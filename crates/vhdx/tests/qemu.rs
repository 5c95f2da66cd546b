//! Interop with QEMU: images qemu-img makes read back as qemu sees them; images we make pass
//! `qemu-img check` and `qemu-img compare`. Skipped when qemu-img is not installed.

mod common;

use common::{create_file, open_file, qemu_check_and_compare, qemu_img_available, read_all, run, tools_available};
use disk_core::Disk;
use std::path::Path;
use std::process::Command;

const MIB: u64 = 1 << 20;

fn qemu_raw(image: &Path, raw: &Path) -> Vec<u8> {
    run(Command::new("qemu-img")
        .args(["convert", "-f", "vhdx", "-O", "raw"])
        .arg(image)
        .arg(raw));
    std::fs::read(raw).unwrap()
}

#[test]
fn qemu_made_images_read_identically() {
    if !tools_available("qemu_made_images_read_identically", &["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, u64)] = &[
        ("subformat=fixed", 24 * MIB),
        ("block_size=1M", 40 * MIB + 3 * 512),
        ("block_size=8M", 50 * MIB),
        ("block_size=32M", 70 * MIB + 4096),
        ("block_size=256M", 300 * MIB),
        ("log_size=4M,block_size=1M", 20 * MIB),
        ("block_state_zero=off,block_size=1M", 20 * MIB),
    ];
    for (i, (opts, size)) in cases.iter().enumerate() {
        let img = dir.path().join(format!("q{i}.vhdx"));
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "vhdx", "-o", opts])
            .arg(&img)
            .arg(size.to_string()));
        let writes = [
            (0, 65536),
            (MIB - 512, 4096),
            (3 * MIB + 512, 1536),
            (size / 2 / 512 * 512, 8 * MIB.min(size / 4)),
            (size - 4096, 4096),
        ];
        for (k, (off, len)) in writes.iter().enumerate() {
            let cmd = format!("write -P 0x{:x} {off} {len}", 0xa0 + k);
            run(Command::new("qemu-io").args(["-f", "vhdx", "-c", &cmd]).arg(&img));
        }
        let expected = qemu_raw(&img, &dir.path().join("q.raw"));
        let disk = open_file(&img, false).unwrap_or_else(|e| panic!("{opts}: {e}"));
        assert_eq!(disk.virtual_size(), expected.len() as u64, "{opts}");
        assert!(read_all(&disk) == expected, "{opts}: content differs from qemu's");
        drop(disk);
        // Writable open, more writes through us, then qemu must agree and find no errors.
        let disk = open_file(&img, true).unwrap();
        let mut expected = expected;
        for (off, len, byte) in [
            (5 * MIB + 512, 3 * 512, 0x11u8),
            (0, 512, 0x22),
            (size - MIB, MIB, 0x33),
        ] {
            let buf = vec![byte; len as usize];
            disk.write(off / 512, &buf).unwrap();
            expected[off as usize..(off + len) as usize].copy_from_slice(&buf);
        }
        disk.flush().unwrap();
        drop(disk);
        run(Command::new("qemu-img").args(["check", "-f", "vhdx"]).arg(&img));
        assert!(
            qemu_raw(&img, &dir.path().join("q2.raw")) == expected,
            "{opts}: qemu disagrees after our writes"
        );
        std::fs::remove_file(&img).unwrap();
    }
}

#[test]
fn our_images_pass_qemu_check_and_compare() {
    if !qemu_img_available("our_images_pass_qemu_check_and_compare") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, u64)] = &[
        ("", 100 * MIB),
        ("subformat=fixed,block_size=1M", 9 * MIB + 512),
        ("block_size=1M,log_size=2M", 33 * MIB),
        ("logical_sector_size=4096,block_size=8M", 64 * MIB),
        (
            "logical_sector_size=4096,physical_sector_size=512,subformat=fixed,block_size=2M",
            16 * MIB,
        ),
        ("block_size=256M", 600 * MIB),
    ];
    for (i, (opts, size)) in cases.iter().enumerate() {
        let img = dir.path().join(format!("o{i}.vhdx"));
        create_file(&img, *size, opts, None);
        // QEMU refuses 4 KiB logical sectors: for those only our own read-back is checked.
        let qemu_can = !opts.contains("logical_sector_size=4096");
        if qemu_can {
            run(Command::new("qemu-img").args(["check", "-f", "vhdx"]).arg(&img));
        }
        let disk = open_file(&img, true).unwrap();
        let ss = u64::from(disk.sector_size());
        let mut raw = vec![0u8; *size as usize];
        for (k, (off, len)) in [
            (0, 8192),
            (MIB - ss, 2 * ss),
            (size / 3 / ss * ss, 3 * MIB),
            (size - ss, ss),
        ]
        .into_iter()
        .enumerate()
        {
            let buf: Vec<u8> = (0..len).map(|j| (j as u8) ^ (k as u8 * 37 + 1)).collect();
            disk.write(off / ss, &buf).unwrap();
            raw[off as usize..(off + len) as usize].copy_from_slice(&buf);
        }
        // Discard a whole block and part of another.
        let bs = disk.top().info().cluster_size.unwrap_or(MIB);
        if bs * 2 < *size {
            disk.discard(0, bs / ss).unwrap();
            raw[..bs as usize].fill(0);
        }
        disk.flush().unwrap();
        assert!(read_all(&disk) == raw, "{opts}: our own read-back differs");
        drop(disk);
        let disk = open_file(&img, false).unwrap();
        assert!(read_all(&disk) == raw, "{opts}: read-back after reopen differs");
        drop(disk);
        if !qemu_can {
            continue;
        }
        let raw_path = dir.path().join("o.raw");
        std::fs::write(&raw_path, &raw).unwrap();
        qemu_check_and_compare(&img, "vhdx", &raw_path);
        std::fs::remove_file(&img).unwrap();
    }
}

/// A log we wrote and did not get to mark empty (a crash) is replayed by QEMU as we intended.
#[test]
fn qemu_replays_our_log() {
    if !tools_available("qemu_replays_our_log", &["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut expected = vec![0u8; 8 * MIB as usize];
    for (off, byte) in [(MIB + 1024, 0x5au8), (5 * MIB, 0x6b)] {
        expected[off as usize..off as usize + 4096].fill(byte);
    }
    let (storage, _) = common::dirty_after(8 * MIB, |disk| {
        for (off, byte) in [(MIB + 1024, 0x5au8), (5 * MIB, 0x6b)] {
            disk.write(off / 512, &[byte; 4096]).unwrap();
        }
    });
    // The file as a crash right after the log entry was written would leave it: the log entry
    // durable, the BAT not yet updated (our layout puts the BAT at 3 MiB: blank it).
    let mut bytes = storage.to_vec();
    bytes[3 * MIB as usize..4 * MIB as usize].fill(0);
    let img = dir.path().join("dirty.vhdx");
    std::fs::write(&img, &bytes).unwrap();
    let ours = common::open_file(&img, false).unwrap();
    assert!(
        ours.top().info().dirty == Some(true),
        "the snapshot has a log to replay"
    );
    assert!(read_all(&ours) == expected, "we replay it in memory");
    drop(ours);
    // qemu-io opens read-write and replays the log.
    run(Command::new("qemu-io")
        .args(["-f", "vhdx", "-c", "read -P 0x5a 1049600 4096"])
        .arg(&img));
    let raw = dir.path().join("e.raw");
    std::fs::write(&raw, &expected).unwrap();
    qemu_check_and_compare(&img, "vhdx", &raw);
}
