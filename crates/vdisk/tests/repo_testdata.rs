//! The sample images in the repository's `testdata/` (made by qemu-img, see
//! `testdata/generate.sh`) read exactly as QEMU reads them: same virtual size, same content.

mod common;

use common::content_digest;
use std::path::Path;
use vdisk::{Disk, Format, OpenOptions};

#[test]
fn samples_read_as_qemu_reads_them() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let mut checked = 0;
    for entry in manifest.as_array().unwrap() {
        let name = entry["path"].as_str().unwrap();
        let format: Format = entry["format"].as_str().unwrap().parse().unwrap();
        let probed = vdisk::probe(
            &vdisk::disk_core::FileStorage::open(dir.join(name), false).unwrap(),
            None,
        )
        .unwrap();
        assert_eq!(probed, format, "{name} probes as {format}");
        if vdisk::driver(format).is_err() {
            eprintln!("skipped {name}: no {format} engine yet");
            continue;
        }
        let image = vdisk::open(dir.join(name), &OpenOptions::new()).unwrap();
        assert_eq!(image.virtual_size(), entry["virtual_size"].as_u64().unwrap(), "{name}");
        assert_eq!(
            content_digest(&image).unwrap(),
            entry["content_digest"].as_str().unwrap(),
            "{name}"
        );
        checked += 1;
    }
    assert!(checked > 0, "at least the raw sample is checked");
}
