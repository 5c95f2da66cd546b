//! A large BAT is read in pages on demand: opening a multi-TiB image read-only reads almost
//! nothing, reads fetch only the pages they need, each page's entries are checked as it is read,
//! and `check` still surveys the whole BAT.

mod common;

use common::create_mem;
use disk_core::testing::FaultyStorage;
use disk_core::{Disk, Driver, ErrorKind, Image, MemStorage, OpenOptions, Repair, Storage};
use std::sync::Arc;
use vhdx::VhdxDriver;

const MIB: u64 = 1 << 20;
const TIB: u64 = 1 << 40;
const FULLY_PRESENT: u64 = 6;
/// Sectors per 1 MiB block.
const SPB: u64 = 2048;

/// A 4 TiB dynamic VHDX with 1 MiB blocks (a 32 MiB BAT) holding data in blocks 0, 2 TiB / 1 MiB
/// and the last block.
fn big_image() -> (Arc<MemStorage>, [(u64, u8); 3]) {
    let s = create_mem(4 * TIB, "block_size=1M").unwrap();
    let blocks = [(0u64, 0x11u8), (2 * TIB / MIB, 0x22), (4 * TIB / MIB - 1, 0x33)];
    let layer = VhdxDriver
        .open(s.clone(), &OpenOptions::default().context(None, true))
        .unwrap();
    let d = Image::single(layer, None);
    for (block, byte) in blocks {
        d.write(block * SPB, &[byte; MIB as usize]).unwrap();
    }
    d.flush().unwrap();
    (s, blocks)
}

/// BAT index of payload block `block` (1 MiB blocks, 512-byte sectors: 4096 per chunk).
fn payload_index(block: u64) -> u64 {
    block + block / 4096
}

/// The file offset of region `guid`, from region table 1.
fn region(s: &MemStorage, guid: [u8; 16]) -> u64 {
    let mut rt = vec![0u8; 64 * 1024];
    s.read_at(&mut rt, 192 * 1024).unwrap();
    (0..2)
        .map(|i| &rt[16 + 32 * i..48 + 32 * i])
        .find(|e| e[..16] == guid)
        .map(|e| u64::from_le_bytes(e[16..24].try_into().unwrap()))
        .unwrap()
}

fn bat_offset(s: &MemStorage) -> u64 {
    region(s, vhdx::format::BAT_REGION.0)
}

fn set_entry(s: &MemStorage, block: u64, value: u64) {
    s.write_at(&value.to_le_bytes(), bat_offset(s) + 8 * payload_index(block))
        .unwrap();
}

fn entry(s: &MemStorage, block: u64) -> u64 {
    let mut b = [0u8; 8];
    s.read_at(&mut b, bat_offset(s) + 8 * payload_index(block)).unwrap();
    u64::from_le_bytes(b)
}

fn open_read_only(s: &Arc<FaultyStorage<Arc<MemStorage>>>) -> disk_core::Result<Image> {
    let layer = VhdxDriver.open(s.clone(), &OpenOptions::default().context(None, false))?;
    Ok(Image::single(layer, None))
}

#[test]
fn a_large_bat_is_read_on_demand() {
    let (mem, blocks) = big_image();
    let s = Arc::new(FaultyStorage::new(mem.clone()));
    let d = open_read_only(&s).unwrap();
    let _ = d.top().info();
    let opened = s.counts().bytes_read;
    assert!(opened < 2 * MIB, "open and info read {opened} bytes of a 32 MiB BAT");
    for (block, byte) in blocks {
        let mut buf = vec![0u8; 4096];
        d.read(block * SPB + 8, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == byte), "block {block}");
    }
    d.read(3 * TIB / 512, &mut [0u8; 512]).unwrap();
    let read = s.counts().bytes_read - opened;
    assert!(read < 1024 * 1024, "four reads fetched {read} bytes");
    let report = d.top().check(Repair::None).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.allocated_clusters, Some(3));
}

#[test]
fn each_page_is_checked_as_it_is_read_and_check_surveys_all() {
    let (mem, _) = big_image();
    let metadata = region(&mem, vhdx::format::METADATA_REGION.0);
    let file_len = mem.len().unwrap();
    let first = entry(&mem, 0);
    // Block 5 on the image's own structures, block 6 past the end of the file, block 7 on
    // block 0, block 3 TiB / 1 MiB with an invalid state.
    set_entry(&mem, 5, metadata | FULLY_PRESENT);
    set_entry(&mem, 6, (file_len + 16 * MIB) | FULLY_PRESENT);
    set_entry(&mem, 7, first);
    set_entry(&mem, 3 * TIB / MIB, 4);
    let s = Arc::new(FaultyStorage::new(mem.clone()));
    let d = open_read_only(&s).unwrap();
    for block in [5, 6, 3 * TIB / MIB] {
        let e = d.read(block * SPB, &mut [0u8; 512]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt, "block {block}: {e}");
    }
    // Two blocks on each other are inside the image: read-only, block 7 reads block 0's bytes
    // (as QEMU does); `check` and a writable open find the overlap.
    let mut buf = [0u8; 512];
    d.read(7 * SPB, &mut buf).unwrap();
    assert_eq!(buf, [0x11; 512]);
    let report = d.top().check(Repair::None).unwrap();
    let all = report.corruptions.iter().cloned().collect::<Vec<_>>().join("\n");
    assert_eq!(report.corruptions.len(), 4, "{all}");
    for what in [
        "metadata region",
        "past the end of the file",
        "overlaps the data block",
        "invalid state 4",
    ] {
        assert!(all.contains(what), "{what}: {all}");
    }
    drop(d);
    let Err(e) = VhdxDriver.open(mem.clone(), &OpenOptions::default().context(None, true)) else {
        panic!("a writable open of an image with overlapping blocks is refused");
    };
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
}
