//! The VMDKs in `../shared/testdata` through the VMDK engine itself. That every image meets its
//! manifest entry (virtual size, content digest, refusals) is checked for every format through the
//! facade (`crates/vdisk/tests/shared_testdata.rs`); here what is VMDK-specific: a seSparse extent
//! reads the same through a descriptor naming it, as QEMU opens it, and the images to refuse fail
//! within their first 64 MiB without a panic. Skipped, with a message, when the directory or `xz`
//! is missing.

mod common;

use common::{Expect, Manifest, content_digest, open};
use disk_core::{Disk, Format};

#[test]
fn shared_testdata_vmdks_sesparse_and_refusals() {
    let Some(manifest) = Manifest::shared("shared_testdata_vmdks_sesparse_and_refusals") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (mut sesparse, mut refused) = (0, 0);
    let wanted = |e: &common::ManifestEntry| {
        e.format == Some(Format::Vmdk) && (e.expect == Expect::Error || e.name().contains("sesparse"))
    };
    for (entry, file) in manifest.images(tmp.path(), wanted) {
        let path = &entry.path;
        let result = std::panic::catch_unwind(|| open(&file, false));
        let result = result.unwrap_or_else(|_| panic!("{path}: open panicked"));
        if entry.expect == Expect::Error {
            // Either refused at open or when reading; never a panic or a huge allocation.
            if let Ok(disk) = result {
                let read_all = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let mut buf = vec![0u8; 1 << 20];
                    let mut pos = 0;
                    while pos < disk.virtual_size().min(64 << 20) {
                        let n = (1u64 << 20).min(disk.virtual_size() - pos) as usize;
                        disk_core::bytes::read_bytes(&disk, pos, &mut buf[..n])?;
                        pos += n as u64;
                    }
                    Ok::<_, disk_core::Error>(())
                }));
                assert!(
                    matches!(read_all, Ok(Err(_))),
                    "{path}: expected a clean error, got {:?}",
                    read_all.map(|r| r.map(|_| ()))
                );
            }
            refused += 1;
            continue;
        }
        sesparse += 1;
        if let Err(e) = result {
            assert_eq!(entry.expect, Expect::Stretch, "{path}: {e}");
            eprintln!("{path}: stretch goal not met: {e}");
            continue;
        }
        // Also as QEMU reads it: through a descriptor naming it as a SESPARSE extent.
        let size = entry.virtual_size.expect("a virtual size");
        let desc = file.with_file_name("sesparse-desc.vmdk");
        let extent = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = format!(
            "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"seSparse\"\n\nRW {} SESPARSE \"{extent}\"\n",
            size / 512
        );
        std::fs::write(&desc, text).unwrap();
        let via = open(&desc, false).unwrap_or_else(|e| panic!("{path} through a descriptor: {e}"));
        assert_eq!(via.virtual_size(), size, "{path} through a descriptor");
        assert_eq!(
            Some(content_digest(&via).unwrap_or_else(|e| panic!("{path}: {e}"))),
            entry.content_digest,
            "{path} through a descriptor"
        );
    }
    assert!(
        sesparse >= 1 && refused >= 2,
        "{sesparse} seSparse and {refused} refused VMDKs in the manifest"
    );
}
