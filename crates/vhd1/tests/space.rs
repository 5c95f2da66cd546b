//! Hostile BAT entries against the space map: entries pointing at the footer copy, the dynamic
//! header, the BAT itself or another block are never written through, refuse a writable open,
//! are reported by `check` (every one) and freed by `check -r all`.

use disk_core::{
    CreateSpec, Disk, Driver, ErrorKind, Image, MemStorage, NoExtraFiles, OpenOptions, Options, Repair, Storage,
};
use std::sync::Arc;
use vhd1::VhdDriver;

/// BAT offset of images this crate creates.
const BAT: u64 = 1536;
const BLOCK: u64 = 2 << 20;

/// A dynamic 8 MiB disk with blocks 1 and 2 written (so the file is large enough for an entry
/// pointing near its start to pass a plain "inside the file" check).
fn image() -> Arc<MemStorage> {
    let storage = Arc::new(MemStorage::new());
    VhdDriver
        .create(
            &*storage,
            CreateSpec {
                size: 8 << 20,
                options: Options::new(),
                backing: None,
                path: None,
                files: &NoExtraFiles,
            },
        )
        .unwrap();
    let disk = open(storage.clone(), true, false).unwrap();
    disk.write(BLOCK / 512, &[0x11; 4096]).unwrap();
    disk.write(2 * BLOCK / 512, &[0x22; 4096]).unwrap();
    disk.flush().unwrap();
    storage
}

fn open(storage: Arc<MemStorage>, writable: bool, repair: bool) -> disk_core::Result<Image> {
    let mut options = OpenOptions::new().writable(writable);
    options.repair = repair;
    let layer = VhdDriver.open(storage, &options.context(None, writable))?;
    Ok(Image::single(layer, None))
}

fn set_entry(s: &MemStorage, index: u64, entry: u32) {
    s.write_at(&entry.to_be_bytes(), BAT + index * 4).unwrap();
}

fn read(disk: &Image, lba: u64) -> disk_core::Result<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    disk.read(lba, &mut buf)?;
    Ok(buf)
}

/// The whole scenario for one hostile entry value of block 0.
fn hostile_entry_is_contained(entry: u32, overlaps: &str) {
    hostile_block_is_contained(image(), 0, entry, overlaps);
}

/// The whole scenario for block `index` (0 or 3, unallocated in [`image`]) set to `entry`.
fn hostile_block_is_contained(s: Arc<MemStorage>, index: u64, entry: u32, overlaps: &str) {
    let lba = index * BLOCK / 512;
    set_entry(&s, index, entry);
    let before = s.to_vec();
    // Writable open refused, naming the structure and what it overlaps; the file is untouched.
    let err = open(s.clone(), true, false).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(err.to_string().contains(overlaps), "{err}");
    assert_eq!(s.to_vec(), before);
    // Read-only: the sound blocks read, the hostile one fails.
    let disk = open(s.clone(), false, false).unwrap();
    assert_eq!(read(&disk, BLOCK / 512).unwrap(), vec![0x11; 4096]);
    assert_eq!(read(&disk, lba).unwrap_err().kind(), ErrorKind::Corrupt);
    let report = disk.top().check(Repair::None).unwrap();
    let name = format!("BAT entry {index}");
    assert!(
        report
            .corruptions
            .iter()
            .any(|c| c.contains(&name) && c.contains(overlaps)),
        "{report:?}"
    );
    drop(disk);
    // Repair: the entry is freed; everything else is kept.
    let disk = open(s.clone(), true, true).unwrap();
    assert_eq!(disk.write(lba, &[0x33; 512]).unwrap_err().kind(), ErrorKind::Corrupt);
    let report = disk.top().check(Repair::All).unwrap();
    assert!(report.repaired.iter().any(|r| r.contains(&name)), "{report:?}");
    assert_eq!(report.corruptions.count(), 0, "{report:?}");
    drop(disk);
    let disk = open(s.clone(), true, false).unwrap();
    assert!(disk.top().check(Repair::None).unwrap().is_clean());
    assert_eq!(read(&disk, lba).unwrap(), vec![0; 4096]);
    disk.write(lba, &[0x44; 4096]).unwrap();
    disk.flush().unwrap();
    drop(disk);
    let disk = open(s, false, false).unwrap();
    assert_eq!(read(&disk, lba).unwrap(), vec![0x44; 4096]);
    assert_eq!(read(&disk, BLOCK / 512).unwrap(), vec![0x11; 4096]);
    assert_eq!(read(&disk, 2 * BLOCK / 512).unwrap(), vec![0x22; 4096]);
    assert!(disk.top().check(Repair::None).unwrap().is_clean());
}

#[test]
fn zeroed_bat_entry_points_at_the_footer_copy() {
    hostile_entry_is_contained(0, "footer");
}

#[test]
fn bat_entry_on_the_dynamic_header() {
    hostile_entry_is_contained(2, "header");
}

#[test]
fn bat_entry_on_the_bat() {
    hostile_entry_is_contained((BAT / 512) as u32, "BAT");
}

#[test]
fn bat_entry_on_another_block() {
    let s = image();
    let mut e = [0u8; 4];
    s.read_at(&mut e, BAT + 4).unwrap();
    // Block 3 shares block 1's space: writing block 3 would overwrite block 1.
    hostile_block_is_contained(s, 3, u32::from_be_bytes(e), "overlaps the data block");
}

#[test]
fn bat_entry_into_the_trailing_footer() {
    let s = image();
    let len = s.len().unwrap();
    // Block 3 ends inside the footer at the end of the file.
    let entry = ((len - 512 - 512 - 4096) / 512) as u32;
    set_entry(&s, 3, entry);
    assert_eq!(open(s.clone(), true, false).unwrap_err().kind(), ErrorKind::Corrupt);
}

#[test]
fn check_reports_every_overlap_not_only_neighbours() {
    let s = image();
    let mut e = [0u8; 4];
    s.read_at(&mut e, BAT + 4).unwrap();
    // Blocks 0 and 3 both point at block 1 (the sorted neighbours of block 1 are 0 and 3, and
    // the same start offset twice); block 2's entry is also moved 1 sector into block 1.
    set_entry(&s, 0, u32::from_be_bytes(e));
    set_entry(&s, 3, u32::from_be_bytes(e));
    let disk = open(s, false, false).unwrap();
    let report = disk.top().check(Repair::None).unwrap();
    let blocks: Vec<_> = report
        .corruptions
        .iter()
        .filter(|c| c.starts_with("BAT entry"))
        .collect();
    assert_eq!(blocks.len(), 2, "{report:?}");
}
