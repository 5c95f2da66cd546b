//! Hostile images built in memory: BAT entries pointing at metadata or at other blocks (the
//! space map refuses writable opens, read-only opens read what is sound, `check -r all` drops
//! the bad entries), a log asking for a huge file, a child without parent linkage, leaks.

mod common;

use common::{create_mem, dirty_image, open_mem, read_all};
use disk_core::{Disk, Driver, ErrorKind, Image, MemStorage, OpenOptions, Repair, Storage};
use std::sync::Arc;
use vhdx::VhdxDriver;

const MIB: u64 = 1 << 20;
const FULLY_PRESENT: u64 = 6;

/// File offsets of the BAT and metadata regions, from region table 1.
fn regions(s: &MemStorage) -> (u64, u64) {
    let mut rt = vec![0u8; 64 * 1024];
    s.read_at(&mut rt, 192 * 1024).unwrap();
    let (mut bat, mut meta) = (0, 0);
    for i in 0..2 {
        let e = &rt[16 + 32 * i..48 + 32 * i];
        let off = u64::from_le_bytes(e[16..24].try_into().unwrap());
        if e[..16] == vhdx::format::BAT_REGION.0 {
            bat = off;
        } else if e[..16] == vhdx::format::METADATA_REGION.0 {
            meta = off;
        }
    }
    (bat, meta)
}

fn bat_entry(s: &MemStorage, i: u64) -> u64 {
    let mut b = [0u8; 8];
    s.read_at(&mut b, regions(s).0 + 8 * i).unwrap();
    u64::from_le_bytes(b)
}

fn set_bat_entry(s: &MemStorage, i: u64, value: u64) {
    s.write_at(&value.to_le_bytes(), regions(s).0 + 8 * i).unwrap();
}

/// A dynamic 8 MiB image with 1 MiB blocks; blocks 0, 1 and 3 hold data, and the contents.
fn image_with_blocks() -> (Arc<MemStorage>, Vec<u8>) {
    let s = create_mem(8 * MIB, "block_size=1M").unwrap();
    let d = open_mem(&s, true).unwrap();
    for (block, byte) in [(0u64, 0x11u8), (1, 0x22), (3, 0x33)] {
        d.write(block * 2048 + 7, &[byte; 4096]).unwrap();
    }
    d.flush().unwrap();
    let contents = read_all(&d);
    (s, contents)
}

fn open_with(s: &Arc<MemStorage>, writable: bool, repair: bool) -> disk_core::Result<Image> {
    let options = OpenOptions {
        repair,
        ..OpenOptions::default()
    };
    let layer = VhdxDriver.open(s.clone(), &options.context(None, writable))?;
    Ok(Image::single(layer, None))
}

/// Sectors of `block` (1 MiB blocks of 512-byte sectors) as `disk` reads them.
fn read_block(disk: &Image, block: u64) -> disk_core::Result<Vec<u8>> {
    let mut buf = vec![0u8; MIB as usize];
    disk.read(block * 2048, &mut buf)?;
    Ok(buf)
}

#[test]
fn a_block_pointing_at_the_metadata_region_is_never_written_through() {
    let (s, contents) = image_with_blocks();
    let (_, meta) = regions(&s);
    // Block 2 "stored" on the metadata region: a guest write there would rewrite the metadata
    // (and could add HAS_PARENT and a parent locator naming any file).
    set_bat_entry(&s, 2, meta | FULLY_PRESENT);
    let before = s.to_vec();
    let e = open_mem(&s, true).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("metadata region") && msg.contains(&format!("{meta:#x}")),
        "{msg}"
    );
    assert!(s.to_vec() == before, "a refused open changes nothing");

    let d = open_mem(&s, false).unwrap();
    for block in [0u64, 1, 3] {
        let b = (block * MIB) as usize;
        assert_eq!(read_block(&d, block).unwrap(), contents[b..b + MIB as usize]);
    }
    assert_eq!(read_block(&d, 2).unwrap_err().kind(), ErrorKind::Corrupt);
    let report = d.top().check(Repair::None).unwrap();
    assert_eq!(report.corruptions.len(), 1, "{report:?}");
    assert!(report.corruptions[0].contains("BAT entry 2"), "{report:?}");
    assert!(report.corruptions[0].contains("metadata region"), "{report:?}");
}

#[test]
fn a_block_on_another_block_is_reported_and_repaired() {
    let (s, contents) = image_with_blocks();
    let block1 = bat_entry(&s, 1);
    // Blocks 2 and 5 share block 1's space (block 5 is not adjacent to it in the BAT).
    set_bat_entry(&s, 2, block1);
    set_bat_entry(&s, 5, block1);
    assert_eq!(open_mem(&s, true).unwrap_err().kind(), ErrorKind::Corrupt);

    let d = open_mem(&s, false).unwrap();
    assert_eq!(read_block(&d, 1).unwrap(), contents[MIB as usize..2 * MIB as usize]);
    assert_eq!(read_block(&d, 2).unwrap_err().kind(), ErrorKind::Corrupt);
    assert_eq!(read_block(&d, 5).unwrap_err().kind(), ErrorKind::Corrupt);
    let report = d.top().check(Repair::All).unwrap();
    assert_eq!(report.corruptions.len(), 2, "read-only: only reported: {report:?}");
    assert!(report.corruptions.iter().all(|c| c.contains("overlaps the data block")));
    drop(d);

    // `check -r all`: open for repair, drop the bad entries through the log.
    let d = open_with(&s, true, true).unwrap();
    assert_eq!(read_block(&d, 2).unwrap_err().kind(), ErrorKind::Corrupt);
    assert!(d.write(2 * 2048, &[1u8; 512]).is_err(), "never written through");
    let report = d.top().check(Repair::All).unwrap();
    assert_eq!((report.corruptions.len(), report.repaired.len()), (0, 2), "{report:?}");
    drop(d);

    let d = open_mem(&s, true).unwrap();
    assert!(d.top().check(Repair::None).unwrap().is_clean());
    let mut expected = contents.clone();
    assert_eq!(
        read_all(&d),
        expected,
        "sound blocks read the same, dropped ones as zeros"
    );
    // New data goes to new space, not onto block 1.
    d.write(2 * 2048, &[0x44; 512]).unwrap();
    expected[2 * MIB as usize..2 * MIB as usize + 512].fill(0x44);
    d.flush().unwrap();
    drop(d);
    let d = open_mem(&s, false).unwrap();
    assert_eq!(read_all(&d), expected);
    assert!(d.top().check(Repair::None).unwrap().is_clean());
}

#[test]
fn unusable_entries_are_dropped_by_check_repair() {
    let (s, contents) = image_with_blocks();
    let (bat, meta) = regions(&s);
    set_bat_entry(&s, 2, meta | FULLY_PRESENT);
    set_bat_entry(&s, 4, bat | FULLY_PRESENT);
    set_bat_entry(&s, 5, 5); // invalid state
    set_bat_entry(&s, 6, (1 << 40) | FULLY_PRESENT);
    let d = open_with(&s, true, true).unwrap();
    let report = d.top().check(Repair::All).unwrap();
    assert_eq!(report.repaired.len(), 4, "{report:?}");
    drop(d);
    let d = open_mem(&s, true).unwrap();
    assert!(d.top().check(Repair::None).unwrap().is_clean());
    assert_eq!(read_all(&d), contents);
    for i in [2, 4, 5, 6] {
        assert_eq!(bat_entry(&s, i), 0, "entry {i}");
    }
    // The metadata region is intact: the image still opens with its size.
    assert_eq!(d.virtual_size(), 8 * MIB);
}

/// The log entry at the start of the log (our images put the log at 1 MiB), with its
/// `LastFileOffset` changed and its checksum fixed.
fn set_last_file_offset(s: &MemStorage, last: u64) {
    let mut h = [0u8; 64];
    s.read_at(&mut h, MIB).unwrap();
    assert_eq!(&h[..4], b"loge");
    let len = u32::from_le_bytes(h[8..12].try_into().unwrap()) as usize;
    let mut e = vec![0u8; len];
    s.read_at(&mut e, MIB).unwrap();
    e[56..64].copy_from_slice(&last.to_le_bytes());
    e[4..8].fill(0);
    let crc = crc32c::crc32c(&e);
    e[4..8].copy_from_slice(&crc.to_le_bytes());
    s.write_at(&e, MIB).unwrap();
}

#[test]
fn log_replay_grows_the_file_only_as_far_as_its_structures_need() {
    let (dirty, expected) = dirty_image(8 * MIB);
    let len = dirty.len().unwrap();
    // 8 TiB: refused, read-only or not, and the file is left alone.
    let huge = Arc::new(dirty.snapshot());
    set_last_file_offset(&huge, 8 << 40);
    for writable in [false, true] {
        let e = open_mem(&huge, writable).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    }
    assert_eq!(huge.len().unwrap(), len);
    // 512 MiB more than the file: within what a log may ask, but nothing uses that space, so
    // the replay does not grow the file, and the next block goes right after the last one.
    set_last_file_offset(&dirty, len + 512 * MIB);
    let d = open_mem(&dirty, true).unwrap();
    assert_eq!(read_all(&d), expected);
    assert_eq!(dirty.len().unwrap(), len);
    d.write(5 * 2048, &[1u8; 512]).unwrap();
    d.flush().unwrap();
    assert_eq!(dirty.len().unwrap(), len + MIB);
    drop(d);
    let d = open_mem(&dirty, false).unwrap();
    assert!(d.top().check(Repair::None).unwrap().is_clean());
}

#[test]
fn a_forged_log_fails_quickly() {
    // A 16 MiB log full of plausible headers claiming 16 MiB entries (wrong checksums).
    let s = create_mem(8 * MIB, "block_size=1M,log_size=16M").unwrap();
    let mut h = vec![0u8; 4096];
    s.read_at(&mut h, 64 * 1024).unwrap();
    let log_offset = u64::from_le_bytes(h[72..80].try_into().unwrap());
    let guid = [0x42u8; 16];
    for i in 0..16 * 256u64 {
        let mut e = [0u8; 64];
        e[..4].copy_from_slice(b"loge");
        e[8..12].copy_from_slice(&(16u32 << 20).to_le_bytes());
        e[16..24].copy_from_slice(&(100 + i).to_le_bytes());
        e[32..48].copy_from_slice(&guid);
        s.write_at(&e, log_offset + i * 4096).unwrap();
    }
    // Set the LogGuid in both headers.
    for off in [64 * 1024u64, 128 * 1024] {
        s.read_at(&mut h, off).unwrap();
        h[48..64].copy_from_slice(&guid);
        h[4..8].fill(0);
        let crc = crc32c::crc32c(&h);
        h[4..8].copy_from_slice(&crc.to_le_bytes());
        s.write_at(&h, off).unwrap();
    }
    let start = std::time::Instant::now();
    let e = open_mem(&s, false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("log too damaged"), "{e}");
    // The bound on work is asserted in the log module's tests (no timed assertion here).
    eprintln!("forged 16 MiB log refused in {:?}", start.elapsed());
}

#[test]
fn interior_space_holding_data_is_a_leak_and_zeroed_space_is_not() {
    let (s, _) = image_with_blocks();
    let block1 = bat_entry(&s, 1) & !(MIB - 1);
    {
        let d = open_mem(&s, true).unwrap();
        d.discard(2048, 2048).unwrap();
        d.flush().unwrap();
    }
    assert_eq!(bat_entry(&s, 1), 0);
    let d = open_mem(&s, false).unwrap();
    assert!(
        d.top().check(Repair::None).unwrap().is_clean(),
        "a discarded block is not a leak"
    );
    drop(d);
    s.write_at(&[7u8; 100], block1 + 5000).unwrap();
    let d = open_mem(&s, false).unwrap();
    let report = d.top().check(Repair::None).unwrap();
    assert_eq!((report.corruptions.len(), report.leaks.len()), (0, 1), "{report:?}");
    assert!(report.leaks[0].contains(&format!("{block1:#x}")), "{report:?}");
}

#[test]
fn cutting_leaked_space_leaves_no_log_asking_for_it_back() {
    let s = create_mem(8 * MIB, "block_size=1M").unwrap();
    let d = open_mem(&s, true).unwrap();
    d.write(0, &[1u8; 512]).unwrap();
    d.write(3 * 2048, &[2u8; 512]).unwrap();
    d.flush().unwrap();
    // Discard the last block of the file: logged, its space now unused at the end.
    d.discard(3 * 2048, 2048).unwrap();
    let report = d.top().check(Repair::Leaks).unwrap();
    assert_eq!(report.repaired.len(), 1, "{report:?}");
    // What a crash right now leaves: the image must open (no log entry recording the longer
    // file as durable, which a replay would call data loss).
    let crashed = Arc::new(s.snapshot());
    drop(d);
    let d = open_mem(&crashed, false).unwrap();
    let mut buf = [0u8; 512];
    d.read(0, &mut buf).unwrap();
    assert_eq!(buf, [1u8; 512]);
    assert!(d.top().check(Repair::None).unwrap().is_clean());
}

/// Rewrite both headers through `edit`, fixing their checksums.
fn edit_headers(s: &MemStorage, edit: impl Fn(&mut [u8])) {
    for off in [64 * 1024u64, 128 * 1024] {
        let mut h = vec![0u8; 4096];
        s.read_at(&mut h, off).unwrap();
        edit(&mut h);
        h[4..8].fill(0);
        let crc = crc32c::crc32c(&h);
        h[4..8].copy_from_slice(&crc.to_le_bytes());
        s.write_at(&h, off).unwrap();
    }
}

#[test]
fn a_log_on_the_metadata_region_refuses_writes_even_after_repair() {
    let (s, contents) = image_with_blocks();
    let (_, meta) = regions(&s);
    // The (empty) log moved onto the metadata region: its next entry would overwrite it.
    edit_headers(&s, |h| h[72..80].copy_from_slice(&meta.to_le_bytes()));
    let e = open_mem(&s, true).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("overlaps the log"), "{e}");
    let d = open_mem(&s, false).unwrap();
    assert_eq!(read_all(&d), contents);
    drop(d);
    // Dropping BAT entries cannot fix it: still reported, still refused.
    let d = open_with(&s, true, true).unwrap();
    let report = d.top().check(Repair::All).unwrap();
    assert_eq!((report.corruptions.len(), report.repaired.len()), (1, 0), "{report:?}");
    let before = s.to_vec();
    assert_eq!(d.write(5 * 2048, &[1u8; 512]).unwrap_err().kind(), ErrorKind::Corrupt);
    assert!(s.to_vec() == before, "nothing written through the overlapping log");
    drop(d);
    assert_eq!(open_mem(&s, true).unwrap_err().kind(), ErrorKind::Corrupt);
}

#[test]
fn an_unmapped_block_keeping_its_space_is_not_a_leak() {
    let (s, _) = image_with_blocks();
    let block3 = bat_entry(&s, 3);
    // Unmapped, its file offset kept (as the specification allows): its old data stays.
    set_bat_entry(&s, 3, (block3 & !7) | 3);
    let d = open_mem(&s, false).unwrap();
    assert!(d.top().check(Repair::None).unwrap().is_clean());
    assert!(read_block(&d, 3).unwrap().iter().all(|&b| b == 0));
    // The same space named by a stored block too: the stored block wins, nothing is reported.
    drop(d);
    set_bat_entry(&s, 6, block3);
    let d = open_mem(&s, false).unwrap();
    let report = d.top().check(Repair::None).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(read_block(&d, 6).unwrap()[7 * 512], 0x33);
}

#[test]
fn dropping_unusable_entries_survives_a_crash_anywhere() {
    use disk_core::testing::{CrashStorage, for_each_crash};
    let (base, contents) = image_with_blocks();
    let (_, meta) = regions(&base);
    set_bat_entry(&base, 2, meta | FULLY_PRESENT);
    set_bat_entry(&base, 5, bat_entry(&base, 1));
    let repair = |s: Arc<CrashStorage>| -> disk_core::Result<()> {
        let options = OpenOptions {
            repair: true,
            ..OpenOptions::default()
        };
        let layer = VhdxDriver.open(s, &options.context(None, true))?;
        layer.check(Repair::All)?;
        layer.flush()
    };
    for_each_crash(&base, 7, repair, |what, image| {
        let img = Arc::new(image);
        // Either still damaged (refused for writing) or repaired; sound blocks intact.
        let d = match open_mem(&img, true) {
            Ok(d) => d,
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Corrupt, "{what}: {e}");
                open_mem(&img, false).unwrap_or_else(|e| panic!("{what}: {e}"))
            }
        };
        for block in [0u64, 1, 3] {
            let b = (block * MIB) as usize;
            let data = read_block(&d, block).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(data == contents[b..b + MIB as usize], "{what}: block {block}");
        }
        assert_eq!(d.virtual_size(), 8 * MIB, "{what}");
    });
}

#[test]
fn the_log_scan_alone_takes_any_bytes() {
    use disk_core::guid::MsGuid;
    let guid = MsGuid([0x42; 16]);
    assert_eq!(vhdx::scan_log(&[], guid, MIB).unwrap(), None);
    assert_eq!(vhdx::scan_log(&[0u8; 4096], MsGuid::NIL, MIB).unwrap(), None);
    // The log of a real dirty image, as the scan sees it: one entry.
    let (dirty, _) = dirty_image(8 * MIB);
    let mut log = vec![0u8; MIB as usize];
    dirty.read_at(&mut log, MIB).unwrap();
    let mut h = vec![0u8; 4096];
    let logged = |h: &[u8]| MsGuid(h[48..64].try_into().unwrap());
    dirty.read_at(&mut h, 64 * 1024).unwrap();
    let mut guid_now = logged(&h);
    dirty.read_at(&mut h, 128 * 1024).unwrap();
    if guid_now.is_nil() {
        guid_now = logged(&h);
    }
    let len = dirty.len().unwrap();
    let summary = vhdx::scan_log(&log, guid_now, len).unwrap().unwrap();
    assert_eq!(summary.entries, 1);
    assert!(summary.changes > 0 && summary.required_len <= len, "{summary:?}");
    // Odd lengths and garbage: never a panic.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for n in [1usize, 4095, 4097, 8192, 65536] {
        let bytes: Vec<u8> = (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let _ = vhdx::scan_log(&bytes, guid, MIB);
    }
}
