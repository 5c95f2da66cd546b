//! The sample images in the repository's `testdata/` (made by qemu-img, see
//! `testdata/generate.sh`) read exactly as QEMU reads them: same virtual size, same content.

mod common;

use common::{Manifest, content_digest};
use std::path::Path;
use vdisk::{Disk, OpenOptions};

#[test]
fn samples_read_as_qemu_reads_them() {
    let manifest = Manifest::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata"));
    let tmp = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for (entry, path) in manifest.images(tmp.path(), |_| true) {
        let name = &entry.path;
        let format = entry.format.unwrap_or_else(|| panic!("{name}: no format"));
        let probed = vdisk::probe(&vdisk::disk_core::FileStorage::open(&path, false).unwrap(), None).unwrap();
        assert_eq!(probed, format, "{name} probes as {format}");
        if vdisk::driver(format).is_err() {
            eprintln!("skipped {name}: no {format} engine yet");
            continue;
        }
        let image = vdisk::open(&path, &OpenOptions::new()).unwrap();
        assert_eq!(Some(image.virtual_size()), entry.virtual_size, "{name}");
        assert_eq!(Some(content_digest(&image).unwrap()), entry.content_digest, "{name}");
        checked += 1;
    }
    assert!(checked > 0, "at least the raw sample is checked");
}
