//! The VHDs in `../shared/testdata` (Hyper-V, Virtual PC, Disk2vhd, Windows 10, FreeBSD mkimg,
//! dfvfs, plaso) through the VHD engine itself. Their virtual size, content digest, missing
//! parents and refusals are checked for every format through the facade
//! (`crates/vdisk/tests/shared_testdata.rs`); here what is VHD-specific: images to read pass
//! `check`, images to refuse are refused at open, and damaged checksums are refused as corrupt
//! unless the image is opened leniently. Skipped, with a message, when the directory or `xz` is
//! missing.

mod common;

use common::{Expect, Manifest, content_digest};
use disk_core::{
    Disk, ErrorKind, FileStorage, Format, FsPolicy, FsResolver, Image, MissingParent, OpenOptions, Repair,
};
use std::path::Path;
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

#[test]
fn shared_testdata_vhds_check_refuse_and_open_leniently() {
    let Some(manifest) = Manifest::shared("shared_testdata_vhds_check_refuse_and_open_leniently") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for (entry, path) in manifest.images(tmp.path(), |e| e.format == Some(Format::Vhd)) {
        let rel = &entry.path;
        let strict = open(&path, false);
        match entry.expect {
            Expect::Ok => {
                let disk = strict.unwrap_or_else(|e| panic!("{rel}: {}", disk_core::display_chain(&e)));
                assert_eq!(disk.top().format(), Format::Vhd, "{rel}");
                let report = disk.top().check(Repair::None).unwrap();
                assert!(report.corruptions.is_empty(), "{rel}: {report:?}");
                let st = disk.block_status(0, disk.sector_count()).unwrap();
                assert!(st.sectors >= 1, "{rel}");
            }
            Expect::Info => {
                // Opens with its parent missing; what it shows and that reads fail is checked
                // through the facade.
                let disk = strict.unwrap_or_else(|e| panic!("{rel}: {}", disk_core::display_chain(&e)));
                assert!(disk.has_missing_parent(), "{rel}: its parent is not in the test data");
            }
            Expect::Error => {
                assert!(strict.is_err(), "{rel}: must be refused");
            }
            Expect::Lenient => {
                if let Err(e) = &strict {
                    assert_eq!(e.kind(), ErrorKind::Corrupt, "{rel}: {e}");
                    assert!(disk_core::display_chain(e).contains("checksum"), "{rel}: {e}");
                }
                if let Ok(disk) = open(&path, true) {
                    if !disk.has_missing_parent() {
                        let _ = content_digest(&disk);
                    }
                    let _ = disk.top().check(Repair::None).unwrap();
                }
            }
            Expect::Stretch => panic!("{rel}: no VHD is a stretch goal"),
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} VHDs in the manifest");
}
