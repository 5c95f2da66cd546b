//! Every image in `../shared/testdata` (real images made by Hyper-V, VMware, VirtualBox, QEMU,
//! Disk2vhd, FreeBSD mkimg, ...) meets its manifest entry: probed as the right format, then
//! virtual size and content digest, or a clean refusal. Formats whose engine is not available
//! yet are reported and skipped; the test is skipped when the directory is absent.

mod common;

use common::content_digest;
use std::path::{Path, PathBuf};
use std::process::Command;
use vdisk::{Disk, ErrorKind, Format, FsPolicy, FsResolver, MissingParent, OpenOptions};

fn testdata_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata");
    dir.join("manifest.json").is_file().then_some(dir)
}

struct Entry {
    path: String,
    expect: String,
    virtual_size: Option<u64>,
    digest: Option<String>,
}

fn manifest(dir: &Path) -> Vec<Entry> {
    let text = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json.as_array()
        .unwrap()
        .iter()
        .map(|e| Entry {
            path: e["path"].as_str().unwrap().to_string(),
            expect: e["expect"].as_str().unwrap().to_string(),
            virtual_size: e["virtual_size"].as_u64(),
            digest: e["content_digest"].as_str().map(str::to_string),
        })
        .collect()
}

/// Decompress `name.xz` into `out`, returning the image path.
fn unpack(dir: &Path, entry: &Entry, out: &Path) -> PathBuf {
    let name = Path::new(&entry.path)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_end_matches(".xz")
        .to_string();
    let target = out.join(name);
    let data = Command::new("xz")
        .arg("-dc")
        .arg(dir.join(&entry.path))
        .output()
        .expect("xz is installed");
    assert!(data.status.success(), "xz failed on {}", entry.path);
    std::fs::write(&target, data.stdout).unwrap();
    target
}

/// The format an image's name says it is (the manifest's tools name them so).
fn expected_format(path: &str) -> Format {
    let name = path.trim_end_matches(".xz");
    match Path::new(name).extension().and_then(|e| e.to_str()).unwrap_or("") {
        "vhd" | "vhdf" => Format::Vhd,
        "vhdx" | "avhdx" => Format::Vhdx,
        "vmdk" | "img" => Format::Vmdk,
        other => panic!("unexpected extension {other} in {path}"),
    }
}

#[test]
fn every_shared_image_is_probed_as_its_format() {
    let Some(dir) = testdata_dir() else {
        eprintln!("skipped: ../shared/testdata not present");
        return;
    };
    let out = tempfile::tempdir().unwrap();
    for entry in manifest(&dir) {
        let path = unpack(&dir, &entry, out.path());
        let storage = vdisk::disk_core::FileStorage::open(&path, false).unwrap();
        let format = vdisk::probe(&storage, Some(&path)).unwrap();
        assert_eq!(format, expected_format(&entry.path), "{}", entry.path);
    }
}

#[test]
fn every_shared_image_meets_its_manifest_entry() {
    let Some(dir) = testdata_dir() else {
        eprintln!("skipped: ../shared/testdata not present");
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for entry in manifest(&dir) {
        let format = expected_format(&entry.path);
        if vdisk::driver(format).is_err() {
            eprintln!("skipped {}: no {format} engine yet", entry.path);
            continue;
        }
        let path = unpack(&dir, &entry, out.path());
        let options = OpenOptions::new().resolver(std::sync::Arc::new(FsResolver::new(FsPolicy::SameDirectory)));
        let opened = vdisk::open(&path, &options);
        match entry.expect.as_str() {
            "ok" | "stretch" => {
                let image = match opened {
                    Ok(image) => image,
                    Err(e) if entry.expect == "stretch" && e.kind() == ErrorKind::Unsupported => {
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
                assert_eq!(Some(digest), entry.digest, "{}: content digest", entry.path);
            }
            "error" => {
                // Refused at open, or at the latest when read: never a panic.
                if let Ok(image) = opened {
                    assert!(content_digest(&image).is_err(), "{}: must be refused", entry.path);
                }
            }
            "info" => {
                assert!(
                    opened.is_err(),
                    "{}: parent is missing, full open must fail",
                    entry.path
                );
                let mut options = options.clone();
                options.missing_parent = MissingParent::Placeholder;
                let image = vdisk::open(&path, &options).unwrap_or_else(|e| panic!("{}: {e}", entry.path));
                assert!(
                    image.info().backing_filename.is_some(),
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
            "lenient" => {
                // Either a clean refusal or a readable image.
                if let Ok(image) = opened {
                    let _ = content_digest(&image);
                }
            }
            other => panic!("unknown expectation {other}"),
        }
        checked += 1;
    }
    eprintln!("{checked} shared images checked");
}
