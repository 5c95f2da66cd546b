//! Engine behaviour on in-memory images: headers, log replay (in memory and to the file),
//! option checking, unknown required structures, hostile input.

mod common;

use common::{create_mem, dirty_image, open_layer, open_mem, read_all};
use disk_core::{Disk, Driver, ErrorKind, MemStorage, Options, Storage};
use std::sync::Arc;
use vhdx::{LogState, VhdxDriver, VhdxLayer};

const MIB: u64 = 1 << 20;

fn vhdx(disk: &disk_core::Image) -> &VhdxLayer {
    disk.top().as_any().downcast_ref::<VhdxLayer>().unwrap()
}

#[test]
fn dirty_log_replays_in_memory_when_read_only() {
    let (dirty, expected) = dirty_image(4 * MIB);
    let before = dirty.to_vec();
    let disk = open_mem(&dirty, false).unwrap();
    assert_eq!(vhdx(&disk).log_state(), LogState::ReplayedInMemory(1));
    assert_eq!(disk.top().info().dirty, Some(true));
    assert_eq!(read_all(&disk), expected);
    assert!(!disk.top().check(disk_core::Repair::None).unwrap().is_clean());
    drop(disk);
    assert!(dirty.to_vec() == before, "a read-only open must not change the file");
}

#[test]
fn dirty_log_replays_into_the_file_when_writable() {
    let (dirty, expected) = dirty_image(4 * MIB);
    let disk = open_mem(&dirty, true).unwrap();
    assert_eq!(vhdx(&disk).log_state(), LogState::Replayed(1));
    assert!(vhdx(&disk).header().log_guid.is_nil());
    assert_eq!(read_all(&disk), expected);
    drop(disk);
    let disk = open_mem(&dirty, false).unwrap();
    assert_eq!(vhdx(&disk).log_state(), LogState::Clean);
    assert_eq!(read_all(&disk), expected);
}

#[test]
fn first_write_renews_guids_through_a_header_update() {
    let storage = create_mem(4 * MIB, "").unwrap();
    let disk = open_mem(&storage, true).unwrap();
    let h0 = vhdx(&disk).header();
    let mut buf = vec![0u8; 512];
    disk.read(0, &mut buf).unwrap();
    assert_eq!(
        vhdx(&disk).header().sequence_number.get(),
        h0.sequence_number.get(),
        "reads change nothing"
    );
    disk.write(0, &[1; 512]).unwrap();
    disk.flush().unwrap();
    let h1 = vhdx(&disk).header();
    assert_ne!(h1.data_write_guid, h0.data_write_guid);
    assert_ne!(h1.file_write_guid, h0.file_write_guid);
    assert!(h1.sequence_number.get() > h0.sequence_number.get());
    assert!(h1.log_guid.is_nil(), "flush leaves an empty log");
    drop(disk);
    // Damage the newest header: the other copy is used and the data is still there.
    let disk = open_mem(&storage, false).unwrap();
    let seq = vhdx(&disk).header().sequence_number.get();
    drop(disk);
    for slot_off in [64 * 1024u64, 128 * 1024] {
        let mut b = [0u8; 16];
        storage.read_at(&mut b, slot_off).unwrap();
        if u64::from_le_bytes(b[8..16].try_into().unwrap()) == seq {
            storage.write_at(&[0xff; 4], slot_off + 100).unwrap();
        }
    }
    let disk = open_mem(&storage, false).unwrap();
    assert!(vhdx(&disk).header().sequence_number.get() < seq);
    disk.read(0, &mut buf).unwrap();
    assert_eq!(buf, [1; 512]);
    assert!(!disk.top().check(disk_core::Repair::None).unwrap().is_clean());
}

#[test]
fn create_options_are_checked() {
    for bad in [
        "block_size=3M",
        "block_size=512K",
        "block_size=512M",
        "log_size=1536K",
        "logical_sector_size=1024",
        "physical_sector_size=2048",
        "subformat=sparse",
        "colour=blue",
    ] {
        let e = create_mem(MIB, bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad}");
    }
    assert!(create_mem((64 << 40) + 4096, "").is_err());
    let s = create_mem(64 << 40, "block_size=256M").unwrap();
    let d = open_mem(&s, false).unwrap();
    assert_eq!(d.virtual_size(), 64 << 40);
    let s = create_mem(1000, "logical_sector_size=4096,physical_sector_size=512").unwrap();
    let d = open_mem(&s, false).unwrap();
    assert_eq!(
        (d.virtual_size(), d.sector_size(), d.physical_sector_size()),
        (4096, 4096, 512)
    );
}

#[test]
fn info_describes_the_image() {
    let s = create_mem(10 * MIB, "block_size=2M,log_size=2M").unwrap();
    let d = open_mem(&s, false).unwrap();
    let info = d.top().info();
    assert_eq!(info.cluster_size, Some(2 * MIB));
    assert_eq!(info.dirty, Some(false));
    let get = |k: &str| info.specific.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("subformat"), Some("dynamic".into()));
    assert_eq!(get("log-size"), Some((2 * MIB).into()));
    assert_eq!(get("logical-sector-size"), Some(512u32.into()));
    assert!(matches!(get("creator"), Some(disk_core::InfoValue::Str(c)) if c.starts_with("vdisk")));
    let s = create_mem(10 * MIB, "subformat=fixed").unwrap();
    let d = open_mem(&s, false).unwrap();
    assert_eq!(d.top().info().cluster_size, None);
    assert_eq!(d.block_status(0, 8).unwrap().allocation, disk_core::Allocation::Data);
}

/// Find a metadata table entry and the metadata region offset.
fn metadata_region(storage: &MemStorage) -> u64 {
    let mut rt = vec![0u8; 64 * 1024];
    storage.read_at(&mut rt, 192 * 1024).unwrap();
    for i in 0..2 {
        let e = &rt[16 + 32 * i..48 + 32 * i];
        if e[..16] == vhdx::format::METADATA_REGION.0 {
            return u64::from_le_bytes(e[16..24].try_into().unwrap());
        }
    }
    panic!("no metadata region");
}

#[test]
fn unknown_required_metadata_is_refused_and_optional_ignored() {
    let s = create_mem(4 * MIB, "").unwrap();
    let meta = metadata_region(&s);
    let mut table = [0u8; 64];
    s.read_at(&mut table[..32], meta).unwrap();
    let count = u16::from_le_bytes([table[10], table[11]]);
    let entry_at = meta + 32 + 32 * u64::from(count);
    let mut e = [0u8; 32];
    e[..16].copy_from_slice(&[0x42; 16]);
    s.write_at(&e, entry_at).unwrap();
    s.write_at(&(count + 1).to_le_bytes(), meta + 10).unwrap();
    open_mem(&s, false).expect("an unknown optional item is ignored");
    e[24] = 4; // IsRequired
    s.write_at(&e, entry_at).unwrap();
    let err = open_mem(&s, false).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
}

/// Deterministic pseudo-random numbers.
fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn hostile_images_fail_cleanly() {
    let base = create_mem(8 * MIB, "block_size=1M").unwrap();
    {
        let d = open_mem(&base, true).unwrap();
        d.write(0, &vec![7u8; 3 * MIB as usize]).unwrap();
    }
    let (dirty, _) = dirty_image(4 * MIB);
    let len = base.len().unwrap();
    let mut seed = 0x1234_5678_9abc_def1u64;
    for round in 0..300 {
        let img = if round % 3 == 0 {
            dirty.snapshot()
        } else {
            base.snapshot()
        };
        let img = Arc::new(img);
        // Damage bytes in the structures (first 4 MiB: headers, log, metadata, BAT).
        for _ in 0..1 + rng(&mut seed) % 8 {
            let off = match rng(&mut seed) % 4 {
                0 => rng(&mut seed) % (320 * 1024),
                1 => 3 * MIB + rng(&mut seed) % 4096,
                2 => 2 * MIB + rng(&mut seed) % 512,
                _ => rng(&mut seed) % len.min(4 * MIB),
            };
            let v = rng(&mut seed) as u8;
            img.write_at(&[v], off).unwrap();
        }
        let storage: Arc<dyn Storage> = img.clone();
        if let Ok(layer) = open_layer(storage.clone(), false) {
            let disk = disk_core::Image::single(layer, None);
            let mut buf = vec![0u8; MIB as usize];
            for lba in (0..disk.sector_count()).step_by(2048) {
                let n = (disk.sector_count() - lba).min(2048) as usize * 512;
                let _ = disk.read(lba, &mut buf[..n]);
            }
            let _ = disk.block_status(0, disk.sector_count());
            let _ = disk.top().check(disk_core::Repair::None);
            let _ = disk.top().info();
        }
        if let Ok(layer) = open_layer(storage, true) {
            let disk = disk_core::Image::single(layer, None);
            let _ = disk.write(5, &[1u8; 4096]);
            let _ = disk.discard(0, 2048);
            let _ = disk.flush();
        }
    }
}

#[test]
fn check_repairs_damaged_copies() {
    let s = create_mem(4 * MIB, "").unwrap();
    s.write_at(&[0xee; 8], 128 * 1024 + 200).unwrap(); // header 2
    s.write_at(&[0xee; 8], 192 * 1024 + 300).unwrap(); // region table 1
    let d = open_mem(&s, false).unwrap();
    let report = d.top().check(disk_core::Repair::All).unwrap();
    assert_eq!(report.corruptions.len(), 2, "read-only: only reported: {report:?}");
    drop(d);
    let d = open_mem(&s, true).unwrap();
    let report = d.top().check(disk_core::Repair::All).unwrap();
    assert_eq!((report.corruptions.len(), report.repaired.len()), (0, 2), "{report:?}");
    drop(d);
    let d = open_mem(&s, false).unwrap();
    assert!(d.top().check(disk_core::Repair::None).unwrap().is_clean());
}

/// Rewrite both region tables through `edit`, fixing their checksums.
fn edit_region_tables(s: &MemStorage, edit: impl Fn(&mut [u8])) {
    for off in [192 * 1024u64, 256 * 1024] {
        let mut t = vec![0u8; 64 * 1024];
        s.read_at(&mut t, off).unwrap();
        edit(&mut t);
        t[4..8].fill(0);
        let crc = crc32c::crc32c(&t);
        t[4..8].copy_from_slice(&crc.to_le_bytes());
        s.write_at(&t, off).unwrap();
    }
}

#[test]
fn tables_past_the_end_of_the_file_are_refused() {
    let s = create_mem(4 * MIB, "").unwrap();
    let truncated = Arc::new(s.snapshot());
    truncated.set_len(2 * MIB).unwrap();
    assert_eq!(open_mem(&truncated, false).unwrap_err().kind(), ErrorKind::Corrupt);
    let tiny = Arc::new(MemStorage::from_bytes(b"vhdxfile"));
    assert_eq!(open_mem(&tiny, false).unwrap_err().kind(), ErrorKind::Corrupt);

    let far = Arc::new(s.snapshot());
    edit_region_tables(&far, |t| {
        t[16 + 16..16 + 24].copy_from_slice(&(1u64 << 50).to_le_bytes())
    });
    let e = open_mem(&far, false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");

    let huge = Arc::new(s.snapshot());
    edit_region_tables(&huge, |t| t[8..12].copy_from_slice(&5000u32.to_le_bytes()));
    assert_eq!(open_mem(&huge, false).unwrap_err().kind(), ErrorKind::Corrupt);

    let unknown = Arc::new(s.snapshot());
    edit_region_tables(&unknown, |t| {
        t[8..12].copy_from_slice(&3u32.to_le_bytes());
        let e = 16 + 64;
        t[e..e + 16].copy_from_slice(&[0x77; 16]);
        t[e + 16..e + 24].copy_from_slice(&(64u64 << 20).to_le_bytes());
        t[e + 24..e + 28].copy_from_slice(&(1u32 << 20).to_le_bytes());
        t[e + 28] = 1; // Required
    });
    assert_eq!(open_mem(&unknown, false).unwrap_err().kind(), ErrorKind::Unsupported);
}

#[test]
fn bat_entries_past_the_end_fail_their_reads_and_refuse_writable_opens() {
    let s = create_mem(4 * MIB, "block_size=1M").unwrap();
    {
        let d = open_mem(&s, true).unwrap();
        d.write(0, &[9u8; 512]).unwrap();
        d.write(2 * 2048, &[8u8; 512]).unwrap();
    }
    // Our layout puts the BAT at 3 MiB: point block 2 far past the end of the file.
    s.write_at(&((1u64 << 40) | 6).to_le_bytes(), 3 * MIB + 16).unwrap();
    let e = open_mem(&s, true).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert!(e.to_string().contains("BAT entry 2"), "{e}");
    // Read-only: what is sound still reads; the bad block fails; check reports it.
    let d = open_mem(&s, false).unwrap();
    let report = d.top().check(disk_core::Repair::None).unwrap();
    assert_eq!(report.corruptions.len(), 1, "{report:?}");
    assert!(report.corruptions[0].contains("past the end of the file"), "{report:?}");
    let mut buf = [0u8; 512];
    d.read(0, &mut buf).unwrap();
    assert_eq!(buf, [9u8; 512]);
    assert_eq!(d.read(2 * 2048, &mut buf).unwrap_err().kind(), ErrorKind::Corrupt);
}

#[test]
fn a_block_leaked_by_a_crash_is_reported_and_repaired() {
    let s = create_mem(8 * MIB, "block_size=1M").unwrap();
    {
        let d = open_mem(&s, true).unwrap();
        d.write(0, &[1u8; 512]).unwrap();
    }
    let len = s.len().unwrap();
    // What a crash after a new block's data write (before its BAT update) leaves behind.
    s.write_at(&[2u8; 4096], len + MIB).unwrap();
    s.set_len(len + 2 * MIB).unwrap();
    let d = open_mem(&s, false).unwrap();
    let report = d.top().check(disk_core::Repair::None).unwrap();
    assert_eq!((report.corruptions.len(), report.leaks.len()), (0, 1), "{report:?}");
    drop(d);
    let d = open_mem(&s, true).unwrap();
    let report = d.top().check(disk_core::Repair::Leaks).unwrap();
    assert_eq!(report.repaired.len(), 1, "{report:?}");
    d.write(4096, &[3u8; 512]).unwrap();
    drop(d);
    assert_eq!(s.len().unwrap(), len + MIB, "the next block went where the leak was");
    let d = open_mem(&s, false).unwrap();
    assert!(d.top().check(disk_core::Repair::None).unwrap().is_clean());
    let mut buf = [0u8; 512];
    d.read(4096, &mut buf).unwrap();
    assert_eq!(buf, [3u8; 512]);
}

#[test]
fn measure_matches_what_create_writes() {
    use disk_core::MeasureSource;
    for opts in [
        "",
        "block_size=1M,log_size=4M",
        "subformat=fixed,block_size=2M",
        "logical_sector_size=4096",
    ] {
        let o = Options::parse(opts).unwrap();
        let size = 37 * MIB + 512;
        let m = VhdxDriver.measure(&o, &MeasureSource::empty(size)).unwrap();
        let s = create_mem(size, opts).unwrap();
        assert_eq!(s.len().unwrap(), m.required, "{opts}");
        let all = MeasureSource {
            virtual_size: size,
            data: vec![(0, size)],
            measured_image: true,
        };
        let full = VhdxDriver.measure(&o, &all).unwrap();
        assert_eq!(full.required, full.fully_allocated, "{opts}");
        // Writing every block through the engine needs no more than that.
        let d = open_mem(&s, true).unwrap();
        let ss = u64::from(d.sector_size());
        d.write(0, &vec![1u8; (size / ss * ss) as usize]).unwrap();
        drop(d);
        assert!(s.len().unwrap() <= full.fully_allocated, "{opts}");
    }
    let one = MeasureSource {
        virtual_size: 64 * MIB,
        data: vec![(5 * MIB, 100), (5 * MIB + 4096, 100)],
        measured_image: true,
    };
    let m = vhdx::measure(&Options::parse("block_size=1M").unwrap(), &one).unwrap();
    let empty = vhdx::measure(
        &Options::parse("block_size=1M").unwrap(),
        &MeasureSource::empty(64 * MIB),
    )
    .unwrap();
    assert_eq!(m.required, empty.required + MIB);
    assert!(vhdx::measure(&Options::parse("block_size=3M").unwrap(), &MeasureSource::empty(MIB)).is_err());
}
