//! Every image in `../shared/testdata` (real images made by Hyper-V, VMware, VirtualBox, QEMU,
//! Disk2vhd, FreeBSD mkimg, ...) meets its manifest entry: probed as the right format, then
//! virtual size and content digest, or a clean refusal. Formats whose engine is not available
//! yet are reported and skipped; the test is skipped when the directory (or `xz`) is absent.
//! The engines' own tests add what is specific to their format.

mod common;

use common::{Expect, Manifest, content_digest};
use vdisk::{Disk, ErrorKind, FsPolicy, FsResolver, MissingParent, OpenOptions};

#[test]
fn every_shared_image_is_probed_as_its_format() {
    let Some(manifest) = Manifest::shared("every_shared_image_is_probed_as_its_format") else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    for (entry, path) in manifest.images(out.path(), |_| true) {
        let storage = vdisk::disk_core::FileStorage::open(&path, false).unwrap();
        let format = vdisk::probe(&storage, Some(&path)).unwrap();
        assert_eq!(Some(format), entry.format, "{}", entry.path);
    }
}

#[test]
fn every_shared_image_meets_its_manifest_entry() {
    let Some(manifest) = Manifest::shared("every_shared_image_meets_its_manifest_entry") else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let mut checked = 0;
    let has_engine = |entry: &common::ManifestEntry| {
        let format = entry
            .format
            .unwrap_or_else(|| panic!("{}: unexpected extension", entry.path));
        let available = vdisk::driver(format).is_ok();
        if !available {
            eprintln!("skipped {}: no {format} engine yet", entry.path);
        }
        available
    };
    for (entry, path) in manifest.images(out.path(), has_engine) {
        let options = OpenOptions::new().resolver(std::sync::Arc::new(FsResolver::new(FsPolicy::SameDirectory)));
        let opened = vdisk::open(&path, &options);
        match entry.expect {
            Expect::Ok | Expect::Stretch => {
                let image = match opened {
                    Ok(image) => image,
                    Err(e) if entry.expect == Expect::Stretch && e.kind() == ErrorKind::Unsupported => {
                        eprintln!("{}: not supported yet: {e}", entry.path);
                        continue;
                    }
                    Err(e) => panic!("{}: {}", entry.path, vdisk::disk_core::display_chain(&e)),
                };
                assert_eq!(
                    Some(image.virtual_size()),
                    entry.virtual_size,
                    "{}: virtual size",
                    entry.path
                );
                let digest = content_digest(&image).unwrap_or_else(|e| panic!("{}: {e}", entry.path));
                assert_eq!(Some(digest), entry.content_digest, "{}: content digest", entry.path);
            }
            Expect::Error => {
                // Refused at open, or at the latest when read: never a panic.
                if let Ok(image) = opened {
                    assert!(content_digest(&image).is_err(), "{}: must be refused", entry.path);
                }
            }
            Expect::Info => {
                assert!(
                    opened.is_err(),
                    "{}: parent is missing, full open must fail",
                    entry.path
                );
                let mut options = options.clone();
                options.missing_parent = MissingParent::Placeholder;
                let image = vdisk::open(&path, &options).unwrap_or_else(|e| panic!("{}: {e}", entry.path));
                assert!(
                    image.has_missing_parent(),
                    "{}: its parent is not in the test data",
                    entry.path
                );
                assert!(
                    image.info().backing_filename.is_some_and(|name| !name.is_empty()),
                    "{}: shows its parent",
                    entry.path
                );
                assert_eq!(Some(image.virtual_size()), entry.virtual_size, "{}", entry.path);
                assert!(
                    content_digest(&image).is_err(),
                    "{}: reading needs the parent",
                    entry.path
                );
            }
            Expect::Lenient => {
                // Either a clean refusal or a readable image.
                if let Ok(image) = opened {
                    let _ = content_digest(&image);
                }
            }
        }
        checked += 1;
    }
    eprintln!("{checked} shared images checked");
}
