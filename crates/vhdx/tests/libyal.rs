//! Images we make read identically through libyal's pyvhdi (children with `set_parent`).
//! Skipped when the Python bindings are not installed.

mod common;

use common::{create_file, open_file, pyvhdi_digest, read_all, sha256_hex};
use disk_core::{BackingSpec, Disk, Driver, FileStorage, Image};
use std::path::Path;

const MIB: u64 = 1 << 20;

/// `(sha256, size)` of the guest view, as pyvhdi reports an image.
fn expected(disk: &dyn Disk) -> (String, u64) {
    (sha256_hex(&read_all(disk)), disk.virtual_size())
}

fn scribble(path: &Path, seed: u8) {
    let disk = open_file(path, true).unwrap();
    let ss = u64::from(disk.sector_size());
    let size = disk.virtual_size();
    for (k, (off, len)) in [(0, 3 * ss), (MIB - ss, 2 * ss), (size / 2, 2 * MIB), (size - ss, ss)]
        .into_iter()
        .enumerate()
    {
        let buf: Vec<u8> = (0..len).map(|i| (i as u8) ^ seed ^ (k as u8 * 61)).collect();
        disk.write(off / ss, &buf).unwrap();
    }
    disk.flush().unwrap();
}

#[test]
fn pyvhdi_reads_our_images() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (opts, size)) in [
        ("block_size=1M", 12 * MIB),
        ("subformat=fixed,block_size=2M", 7 * MIB),
        ("logical_sector_size=4096,block_size=4M", 16 * MIB),
    ]
    .into_iter()
    .enumerate()
    {
        let img = dir.path().join(format!("p{i}.vhdx"));
        create_file(&img, size, opts, None);
        scribble(&img, i as u8);
        let disk = open_file(&img, false).unwrap();
        let Some(theirs) = pyvhdi_digest(&img, None) else {
            common::skip_external(
                "pyvhdi_reads_our_images",
                "python3 pyvhdi (python3-libvhdi) is not installed",
            );
            return;
        };
        assert_eq!(theirs, expected(&disk), "{opts}");
    }
    // A differencing child of the first image, with partial writes of its own.
    let parent = dir.path().join("p0.vhdx");
    let child = dir.path().join("child.vhdx");
    {
        let parent_img = Image::single(
            common::open_layer(std::sync::Arc::new(FileStorage::open(&parent, false).unwrap()), false).unwrap(),
            None,
        );
        create_file(
            &child,
            12 * MIB,
            "block_size=1M",
            Some(BackingSpec {
                recorded: "p0.vhdx".into(),
                absolute: Some(&parent),
                image: &parent_img,
            }),
        );
    }
    let resolver = std::sync::Arc::new(disk_core::FsResolver::new(disk_core::FsPolicy::SameDirectory));
    let open_chain = |writable: bool| {
        let storage = std::sync::Arc::new(FileStorage::open(&child, writable).unwrap());
        let layer = common::open_layer(storage, writable).unwrap();
        let opts = disk_core::OpenOptions::default()
            .resolver(resolver.clone())
            .writable(writable);
        Image::open_chain(layer, Some(child.clone()), &opts, &|_, s, ctx| {
            vhdx::VhdxDriver.open(s, ctx)
        })
        .unwrap()
    };
    {
        let c = open_chain(true);
        c.write(7, &[0xc3; 1024]).unwrap();
        c.write(MIB / 512 + 100, &[0x3c; 512]).unwrap();
        c.flush().unwrap();
    }
    let c = open_chain(false);
    assert_eq!(
        pyvhdi_digest(&child, Some(&parent)),
        Some(expected(&c)),
        "differencing child"
    );
}
