//! The VHDX images in `../shared/testdata` through the VHDX engine itself. Their virtual size,
//! content digest, missing parents and refusals are checked for every format through the facade
//! (`crates/vdisk/tests/shared_testdata.rs`); here what is VHDX-specific: a read-only open never
//! changes the file (not even to replay a dirty log), `check` reports a dirty log and nothing
//! else, a writable open replays the log into the file (then clean, as recorded, accepted by
//! `qemu-img check`), and our writes and discards into images other tools made pass our check,
//! `qemu-img check` and `qemu-img compare`. Skipped, with a message, when the directory or `xz` is
//! missing.

mod common;

use common::{Expect, Manifest, ManifestEntry, content_digest, open_layer};
use disk_core::{Disk, FileStorage, Format, Image};
use std::process::Command;
use std::sync::Arc;

/// Writes through us into an image another tool made; QEMU must then see what we see.
fn write_then_compare_with_qemu(file: &std::path::Path, rel: &str, tmp: &std::path::Path) {
    let disk = common::open_file(file, true).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let size = disk.virtual_size();
    for (k, off) in [0, 3 << 20, size / 2, size - 4096].into_iter().enumerate() {
        let buf = vec![0x40 + k as u8; 4096];
        disk.write(off / 512, &buf).unwrap_or_else(|e| panic!("{rel}: {e}"));
    }
    let discard = (8u64 << 20).min(size / 2);
    disk.discard((size / 4) / 512, discard / 512)
        .unwrap_or_else(|e| panic!("{rel}: {e}"));
    disk.flush().unwrap();
    drop(disk);
    let disk = common::open_file(file, false).unwrap();
    assert!(disk.top().check(disk_core::Repair::None).unwrap().is_clean(), "{rel}");
    if disk.sector_size() != 512
        || !common::tools_available(
            "shared_testdata_vhdx_images_replay_check_and_take_writes (qemu-img part)",
            &["qemu-img"],
        )
    {
        return;
    }
    let raw = tmp.join("ours.raw");
    {
        let out = std::fs::File::create(&raw).unwrap();
        out.set_len(size).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut pos = 0;
        while pos < size {
            let n = (size - pos).min(1 << 20) as usize;
            let st = disk.block_status(pos / 512, n as u64 / 512).unwrap();
            if st.allocation == disk_core::Allocation::Data || st.sectors * 512 < n as u64 {
                disk.read(pos / 512, &mut buf[..n]).unwrap();
                std::os::unix::fs::FileExt::write_all_at(&out, &buf[..n], pos).unwrap();
            }
            pos += n as u64;
        }
    }
    common::qemu_check_and_compare(file, "vhdx", &raw);
    std::fs::remove_file(&raw).unwrap();
}

/// A writable open replays the log into the file; afterwards the image is clean, reads the
/// same, and QEMU (which refuses dirty images read-only) accepts it.
fn replay_into_file(file: &std::path::Path, entry: &ManifestEntry) {
    let rel = &entry.path;
    {
        let disk = common::open_file(file, true).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let layer = disk.top().as_any().downcast_ref::<vhdx::VhdxLayer>().unwrap();
        assert!(
            matches!(layer.log_state(), vhdx::LogState::Replayed(n) if n > 0),
            "{rel}"
        );
    }
    let disk = common::open_file(file, false).unwrap();
    let layer = disk.top().as_any().downcast_ref::<vhdx::VhdxLayer>().unwrap();
    assert_eq!(layer.log_state(), vhdx::LogState::Clean, "{rel}");
    assert_eq!(
        Some(content_digest(&disk).unwrap()),
        entry.content_digest,
        "{rel}: content digest after the replay"
    );
    if common::tools_available(
        "shared_testdata_vhdx_images_replay_check_and_take_writes (qemu-img check part)",
        &["qemu-img"],
    ) {
        common::run(Command::new("qemu-img").args(["check", "-f", "vhdx"]).arg(file));
    }
}

#[test]
fn shared_testdata_vhdx_images_replay_check_and_take_writes() {
    let Some(manifest) = Manifest::shared("shared_testdata_vhdx_images_replay_check_and_take_writes") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for (entry, file) in manifest.images(tmp.path(), |e| e.format == Some(Format::Vhdx)) {
        let rel = entry.path.as_str();
        eprintln!("{rel}: expect {:?}", entry.expect);
        let storage: Arc<dyn disk_core::Storage> = Arc::new(FileStorage::open(&file, false).unwrap());
        let before = std::fs::read(&file).unwrap();
        let unchanged = || {
            assert!(
                std::fs::read(&file).unwrap() == before,
                "{rel}: a read-only open changed the file"
            );
        };
        checked += 1;
        if entry.expect != Expect::Ok {
            // Missing parents, refusals: never a panic, and the file is left alone.
            let r = open_layer(storage, false).map(|l| {
                let disk = Image::single(l, None);
                let _ = content_digest(&disk);
            });
            eprintln!("{rel}: {:?}", r.err().map(|e| e.to_string()));
            unchanged();
            continue;
        }
        let layer = open_layer(storage, false).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let disk = Image::single(layer, Some(file.clone()));
        let report = disk.top().check(disk_core::Repair::None).unwrap();
        assert_eq!(report.corruptions.is_empty(), !entry.replay, "{rel}: {report:?}");
        if entry.replay {
            // Replayed in memory only: reads as recorded, and the file stays as it was.
            assert_eq!(disk.top().info().dirty, Some(true), "{rel}");
            let digest = content_digest(&disk).unwrap_or_else(|e| panic!("{rel}: {e}"));
            assert_eq!(Some(digest), entry.content_digest, "{rel}: content digest");
        }
        drop(disk);
        unchanged();
        if entry.replay {
            replay_into_file(&file, entry);
        } else {
            write_then_compare_with_qemu(&file, rel, file.parent().unwrap());
        }
    }
    assert!(checked >= 9, "only {checked} VHDX images in the manifest");
}
