//! Damaged images: a resize fails with a typed error and writes nothing.

use disk_core::{CreateSpec, Driver, ErrorKind, Image, MemStorage, NoExtraFiles, OpenOptions, Options, Storage, bytes};
use disk_resize::{ResizeOptions, SizeChange, resize_storage};
use std::sync::Arc;

fn image(driver: &dyn Driver, options: &str) -> Arc<MemStorage> {
    let s = Arc::new(MemStorage::new());
    driver
        .create(
            &*s,
            CreateSpec {
                size: 1 << 20,
                options: Options::parse(options).unwrap(),
                backing: None,
                path: None,
                files: &NoExtraFiles,
            },
        )
        .unwrap();
    let o = OpenOptions::new();
    let disk = Image::single(driver.open(s.clone(), &o.context(None, true)).unwrap(), None);
    bytes::write_bytes(&disk, 0, &[7u8; 4096]).unwrap();
    disk_core::Disk::flush(&disk).unwrap();
    s
}

fn refused(driver: &dyn Driver, s: Arc<MemStorage>, kind: ErrorKind) {
    let before = s.to_vec();
    let e = resize_storage(
        s.clone(),
        driver,
        None,
        &OpenOptions::new(),
        SizeChange::To(3 << 20),
        &ResizeOptions::default(),
        &NoExtraFiles,
    )
    .unwrap_err();
    assert_eq!(e.kind(), kind, "{e}");
    assert!(s.to_vec() == before, "a refused resize wrote to the image");
}

#[test]
fn vmdk_grain_directory_pointing_past_the_end() {
    let d = vmdk::VmdkDriver;
    let s = image(&d, "");
    // The header's gdOffset (sector) at byte 56: its first entry now names sector 2^31.
    let mut h = [0u8; 8];
    s.read_at(&mut h, 56).unwrap();
    let gd = u64::from_le_bytes(h) * 512;
    s.write_at(&(1u32 << 31).to_le_bytes(), gd).unwrap();
    refused(&d, s, ErrorKind::Corrupt);
}

#[test]
fn vhd_bat_entry_pointing_past_the_end() {
    let d = vhd1::VhdDriver;
    let s = image(&d, "block_size=64K");
    let mut t = [0u8; 8];
    s.read_at(&mut t, 512 + 16).unwrap();
    let table = u64::from_be_bytes(t);
    s.write_at(&0x00ff_ffffu32.to_be_bytes(), table).unwrap();
    refused(&d, s, ErrorKind::Corrupt);
}

#[test]
fn vhd_past_the_maximum_size() {
    let d = vhd1::VhdDriver;
    let s = image(&d, "");
    let before = s.to_vec();
    let e = resize_storage(
        s.clone(),
        &d,
        None,
        &OpenOptions::new(),
        SizeChange::To(2041 << 30),
        &ResizeOptions::default(),
        &NoExtraFiles,
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(s.to_vec() == before);
}
