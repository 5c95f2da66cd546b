//! Engine behaviour on in-memory images: damaged and hostile metadata, check, info, block
//! status, "make fixed".

use disk_core::{
    Allocation, CreateSpec, Disk, Driver, ErrorKind, Image, InfoValue, Layer, MemStorage, NoExtraFiles, OpenOptions,
    Options, Repair, Storage, bytes,
};
use std::sync::Arc;
use vhd1::VhdDriver;

fn create(size: u64, options: &str) -> Arc<MemStorage> {
    let storage = Arc::new(MemStorage::new());
    VhdDriver
        .create(
            &*storage,
            CreateSpec {
                size,
                options: Options::parse(options).unwrap(),
                backing: None,
                path: None,
                files: &NoExtraFiles,
            },
        )
        .unwrap();
    storage
}

fn open(storage: Arc<MemStorage>, writable: bool, lenient: bool) -> disk_core::Result<Image> {
    let mut options = OpenOptions::new().writable(writable);
    options.lenient = lenient;
    let layer = VhdDriver.open(storage, &options.context(None, writable))?;
    Ok(Image::single(layer, None))
}

fn specific<'a>(info: &'a disk_core::LayerInfo, key: &str) -> &'a InfoValue {
    &info.specific.iter().find(|(k, _)| k == key).unwrap().1
}

#[test]
fn layout_of_a_new_dynamic_disk() {
    let s = create(5 << 20, "block_size=1M");
    let bytes = s.to_vec();
    assert_eq!(&bytes[..8], b"conectix");
    assert_eq!(&bytes[512..520], b"cxsparse");
    assert_eq!(bytes[bytes.len() - 512..], bytes[..512], "footer copy equals footer");
    assert_eq!(&bytes[28..32], b"vdsk");
    let disk = open(s.clone(), true, false).unwrap();
    assert_eq!(disk.virtual_size(), 5 << 20);
    let info = disk.info();
    assert_eq!(info.cluster_size, Some(1 << 20));
    assert_eq!(specific(&info, "type"), &InfoValue::from("dynamic"));
    assert_eq!(specific(&info, "creator-application"), &InfoValue::from("vdsk"));
    assert_eq!(specific(&info, "block-size"), &InfoValue::U64(1 << 20));
    assert_eq!(disk.block_status(0, 10240).unwrap().allocation, Allocation::Unallocated);
    assert_eq!(disk.block_status(0, 10240).unwrap().sectors, 10240);

    // One sector written: its block becomes data, the footer moves to the new end.
    bytes::write_bytes(&disk, (2 << 20) + 512, b"x").unwrap();
    disk.flush().unwrap();
    let st = disk.block_status(4096, 10240 - 4096).unwrap();
    assert_eq!((st.allocation, st.sectors), (Allocation::Data, 2048));
    let after = s.to_vec();
    // The block (bitmap and data) and at most 3.5 KiB of padding that puts its data on a
    // 4 KiB boundary.
    let grown = after.len() - bytes.len();
    assert!((512 + (1 << 20)..512 + (1 << 20) + 4096).contains(&grown), "{grown}");
    let st = disk.block_status(4096, 2048).unwrap();
    assert_eq!(st.offset.map(|o| o % 4096), Some(0), "{st:?}");
    assert_eq!(after[after.len() - 512..], after[..512]);
    assert!(disk.top().check(Repair::None).unwrap().is_clean());
    // Zeros written to an unallocated block of a dynamic disk allocate nothing.
    disk.write(0, &[0u8; 4096]).unwrap();
    assert_eq!(s.len().unwrap(), after.len() as u64);
    // Discard reads back as zeros.
    disk.discard(4096, 2048).unwrap();
    let mut buf = [1u8; 1024];
    bytes::read_bytes(&disk, 2 << 20, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    // A whole block discarded is freed.
    assert_eq!(
        disk.block_status(4096, 2048).unwrap().allocation,
        Allocation::Unallocated
    );
    disk.flush().unwrap();
    drop(disk);
    let disk = open(s, false, false).unwrap();
    assert_eq!(
        disk.block_status(4096, 2048).unwrap().allocation,
        Allocation::Unallocated
    );
}

#[test]
fn fixed_disks_and_make_fixed() {
    let s = create(1_000_000, "subformat=fixed");
    assert_eq!(
        s.len().unwrap(),
        1_000_448 + 512,
        "exact size rounded up to a sector, plus the footer"
    );
    let disk = open(s, true, false).unwrap();
    assert_eq!(disk.virtual_size(), 1_000_448);
    assert_eq!(disk.info().cluster_size, None);
    bytes::write_bytes(&disk, 999_000, b"end").unwrap();

    let raw = Arc::new(MemStorage::from_bytes(&[7u8; 8192]));
    vhd1::append_fixed_footer(&*raw).unwrap();
    let disk = open(raw, false, false).unwrap();
    assert_eq!(disk.virtual_size(), 8192);
    let mut buf = [0u8; 512];
    disk.read(15, &mut buf).unwrap();
    assert_eq!(buf, [7u8; 512]);
    assert!(vhd1::append_fixed_footer(&MemStorage::from_bytes(&[1u8; 1000])).is_err());
}

#[test]
fn damaged_footer_checksum() {
    let s = create(4 << 20, "");
    s.write_at(&[0x55], 100).unwrap(); // reserved byte of the copy at offset 0
    let err = open(s.clone(), false, false).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(err.to_string().contains("checksum"), "{err}");
    // Lenient: the intact copy at the end is used.
    let disk = open(s, false, true).unwrap();
    assert_eq!(disk.virtual_size(), 4 << 20);
    let report = disk.top().check(Repair::None).unwrap();
    assert!(!report.corruptions.is_empty());
}

#[test]
fn bat_entry_past_end_of_file() {
    let s = create(4 << 20, "");
    // BAT at 1536: point entry 1 far past the end.
    s.write_at(&0x0010_0000u32.to_be_bytes(), 1536 + 4).unwrap();
    let disk = open(s.clone(), false, false).unwrap();
    let mut buf = vec![0u8; 512];
    disk.read(0, &mut buf).unwrap();
    let err = disk.read(4096, &mut buf).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(err.to_string().contains("BAT entry 1 is unusable"), "{err}");
    assert!(err.to_string().contains("past the end of the file"), "{err}");
    let report = disk.top().check(Repair::None).unwrap();
    assert!(
        report.corruptions.iter().any(|c| c.contains("BAT entry 1")),
        "{report:?}"
    );
    assert_eq!(open(s, true, false).unwrap_err().kind(), ErrorKind::Corrupt);
}

#[test]
fn overlapping_blocks_are_reported() {
    let s = create(4 << 20, "");
    let disk = open(s.clone(), true, false).unwrap();
    disk.write(0, &[1u8; 512]).unwrap();
    disk.write(4096, &[2u8; 512]).unwrap();
    drop(disk);
    let mut entry = [0u8; 4];
    s.read_at(&mut entry, 1536).unwrap();
    s.write_at(&entry, 1540).unwrap();
    let disk = open(s, false, false).unwrap();
    let report = disk.top().check(Repair::None).unwrap();
    assert!(report.corruptions.iter().any(|c| c.contains("overlaps")), "{report:?}");
}

#[test]
fn torn_end_footer_is_reported_and_repaired() {
    let s = create(4 << 20, "");
    let len = s.len().unwrap();
    s.write_at(&[0u8; 512], len - 512).unwrap();
    let disk = open(s.clone(), true, false).unwrap();
    let report = disk.top().check(Repair::None).unwrap();
    assert!(!report.corruptions.is_empty());
    let report = disk.top().check(Repair::All).unwrap();
    assert!(
        !report.repaired.is_empty() && report.corruptions.is_empty(),
        "{report:?}"
    );
    assert!(disk.top().check(Repair::None).unwrap().is_clean());
}

#[test]
fn chs_sized_creators_and_force_size_off() {
    let s = create(10_000_000, "force_size=off");
    let disk = open(s, false, false).unwrap();
    assert_eq!(disk.virtual_size(), 10_027_008, "QEMU's geometry rounding");
}

/// A tiny deterministic generator for the hostile-input loop.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn hostile_metadata_never_panics() {
    let base = create(3 << 20, "block_size=512K");
    {
        let disk = open(base.clone(), true, false).unwrap();
        disk.write(0, &[9u8; 4096]).unwrap();
        disk.write(3000, &[8u8; 4096]).unwrap();
    }
    let pristine = base.to_vec();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for round in 0..400 {
        let mut bytes = pristine.clone();
        let region = match round % 4 {
            0 => 0..512,
            1 => 512..1536,
            2 => 1536..2048,
            _ => bytes.len() - 512..bytes.len(),
        };
        for _ in 0..1 + rng.next() % 4 {
            let at = region.start + (rng.next() as usize) % region.len();
            bytes[at] = rng.next() as u8;
        }
        let s = Arc::new(MemStorage::from_bytes(&bytes));
        // Re-seal nothing: lenient opens accept damaged checksums and meet every other check.
        for lenient in [false, true] {
            if let Ok(disk) = open(s.clone(), false, lenient) {
                let mut buf = vec![0u8; 64 << 10];
                let n = disk.sector_count();
                let mut lba = 0;
                while lba < n {
                    let c = (n - lba).min(128);
                    let _ = disk.read(lba, &mut buf[..(c * 512) as usize]);
                    let _ = disk.block_status(lba, c);
                    lba += c;
                }
                let _ = disk.top().check(Repair::None);
                let _ = disk.info();
            }
        }
    }
}

#[test]
fn absurd_sizes_are_refused_without_allocating() {
    let s = create(1 << 20, "");
    let mut bytes = s.to_vec();
    // max_table_entries = 2^32-1 and a huge size in the footer copy, resealed.
    bytes[512 + 28..512 + 32].copy_from_slice(&u32::MAX.to_be_bytes());
    bytes[48..56].copy_from_slice(&(2000u64 << 30).to_be_bytes());
    for range in [0..512usize, 512..1536] {
        let ck = if range.start == 0 { 64 } else { 512 + 36 };
        bytes[ck..ck + 4].fill(0);
        let sum = bytes[range.clone()]
            .iter()
            .fold(0u32, |a, &b| a.wrapping_add(u32::from(b)));
        bytes[ck..ck + 4].copy_from_slice(&(!sum).to_be_bytes());
    }
    let err = open(Arc::new(MemStorage::from_bytes(&bytes)), false, false).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("BAT"), "{err}");
}

#[test]
fn layer_trait_basics() {
    let s = create(1 << 20, "");
    let disk = open(s, false, false).unwrap();
    let top: &dyn Layer = disk.top();
    assert_eq!(top.format(), disk_core::Format::Vhd);
    assert!(top.disk_id().is_some());
    assert!(top.parent().is_none());
    assert_eq!(disk.write(0, &[0u8; 512]).unwrap_err().kind(), ErrorKind::ReadOnly);
    assert_eq!(
        disk.read(2048, &mut [0u8; 512]).unwrap_err().kind(),
        ErrorKind::OutOfRange
    );
}

#[test]
fn pending_metadata_is_written_by_auto_flush_and_drop() {
    // 512-byte blocks: 8192 BAT entries for 4 MiB, more than the engine keeps pending.
    let s = create(4 << 20, "block_size=512");
    let disk = open(s.clone(), true, false).unwrap();
    let mut chunk = vec![0u8; 1 << 20];
    for (i, lba) in (0..8192u64).step_by(2048).enumerate() {
        chunk.fill(i as u8 + 1);
        disk.write(lba, &chunk).unwrap();
    }
    drop(disk); // no flush: dropping writes what is pending
    let disk = open(s, false, false).unwrap();
    for (i, lba) in (0..8192u64).step_by(2048).enumerate() {
        disk.read(lba, &mut chunk).unwrap();
        assert!(chunk.iter().all(|&b| b == i as u8 + 1), "chunk {i}");
    }
    assert!(disk.top().check(Repair::None).unwrap().is_clean());
}

/// Random writes, discards and zeroes on a differencing disk over a parent full of data,
/// checked against a byte model after every step and after reopening the chain.
#[test]
fn differencing_chain_matches_a_model() {
    use disk_core::{BackingSpec, MemResolver};
    let size = 3u64 << 20;
    let parent = create(size, "block_size=256K");
    let mut model = vec![0u8; size as usize];
    {
        let disk = open(parent.clone(), true, false).unwrap();
        for (i, chunk) in model.chunks_mut(4096).enumerate() {
            chunk.fill((i % 251) as u8 + 1);
        }
        disk.write(0, &model).unwrap();
        disk.flush().unwrap();
    }
    let child = Arc::new(MemStorage::new());
    {
        let parent_image = open(parent.clone(), false, false).unwrap();
        VhdDriver
            .create(
                &*child,
                CreateSpec {
                    size,
                    options: Options::parse("block_size=256K").unwrap(),
                    backing: Some(BackingSpec {
                        recorded: "parent.vhd".into(),
                        absolute: None,
                        image: &parent_image,
                    }),
                    path: None,
                    files: &NoExtraFiles,
                },
            )
            .unwrap();
    }
    let resolver = Arc::new(MemResolver::new());
    resolver.insert(".\\parent.vhd", parent.clone());
    let open_chain = |writable: bool| {
        let options = OpenOptions::new().writable(writable).resolver(resolver.clone());
        let top = VhdDriver.open(child.clone(), &options.context(None, writable)).unwrap();
        Image::open_chain(top, None, &options, &|_, s, c| VhdDriver.open(s, c)).unwrap()
    };
    let mut disk = open_chain(true);
    assert_eq!(disk.depth(), 2);
    let sectors = size / 512;
    let mut rng = Rng(0x0dd_ba11_cafe_f00d);
    let mut got = vec![0u8; size as usize];
    for step in 0..120u32 {
        let lba = rng.next() % sectors;
        let count = 1 + rng.next() % (sectors - lba).min(1200);
        let range = (lba * 512) as usize..((lba + count) * 512) as usize;
        match rng.next() % 6 {
            0 => {
                disk.discard(lba, count).unwrap();
                model[range].fill(0);
            }
            1 => {
                disk.write_zeroes(lba, count).unwrap();
                model[range].fill(0);
            }
            2 if step % 4 == 0 => {
                disk.flush().unwrap();
                drop(disk);
                disk = open_chain(true);
            }
            _ => {
                let byte = (step as u8).wrapping_mul(7) | 0x80;
                let data = vec![byte; range.len()];
                disk.write(lba, &data).unwrap();
                model[range].copy_from_slice(&data);
            }
        }
        if step % 10 == 0 {
            disk.read(0, &mut got).unwrap();
            assert!(got == model, "step {step}: contents differ from the model");
        }
    }
    drop(disk);
    let disk = open_chain(false);
    disk.read(0, &mut got).unwrap();
    assert!(got == model, "after reopening");
    assert!(disk.top().check(Repair::None).unwrap().is_clean());
    // Block status over the chain never reports data where the model has parent bytes from
    // a layer that does not hold them: every run's depth names a layer.
    let mut lba = 0;
    while lba < sectors {
        let st = disk.block_status(lba, sectors - lba).unwrap();
        assert!(st.depth <= 1);
        lba += st.sectors;
    }
}

#[test]
fn measured_size_matches_the_file() {
    for opts in ["", "block_size=512K", "subformat=fixed", "force_size=off"] {
        let size = 5_000_000;
        let s = create(size, opts);
        let options = vhd1::VhdCreateOptions::parse(Options::parse(opts).unwrap()).unwrap();
        assert_eq!(
            s.len().unwrap(),
            vhd1::file_size(size, &options, 0).unwrap(),
            "{opts}: empty"
        );
        let disk = open(s.clone(), true, false).unwrap();
        let data = vec![0x5au8; disk.virtual_size() as usize];
        disk.write(0, &data).unwrap();
        disk.flush().unwrap();
        assert_eq!(
            s.len().unwrap(),
            vhd1::file_size(size, &options, u64::MAX).unwrap(),
            "{opts}: full"
        );
    }
}

#[test]
fn old_virtual_pc_511_byte_footer() {
    let s = create(64 << 10, "subformat=fixed");
    let mut bytes = s.to_vec();
    bytes.pop(); // Virtual PC before 2004 wrote the footer without its last (reserved) byte
    bytes[..512].fill(0x42);
    let disk = open(Arc::new(MemStorage::from_bytes(&bytes)), false, false).unwrap();
    assert_eq!(disk.virtual_size(), 64 << 10);
    let mut buf = [0u8; 512];
    disk.read(0, &mut buf).unwrap();
    assert_eq!(buf, [0x42; 512]);
}
