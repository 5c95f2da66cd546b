//! Hostile sparse images: grains pointing at the descriptor, past the end of the file or at
//! other grains, redundant directories on other structures, tiny grains, huge offsets, and the
//! repair that makes such images writable again.

mod common;

use disk_core::{
    Allocation, CreateSpec, Disk, Driver, ErrorKind, Image, MemResolver, MemStorage, NoExtraFiles, OpenContext,
    OpenOptions, Options, Repair, Storage,
};
use std::sync::Arc;
use vmdk::VmdkDriver;

const MIB: u64 = 1 << 20;
const GRAIN: usize = 65536;

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}
fn set_u32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
fn set_u64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

/// Header field offsets (VMware's `SparseExtentHeader`).
const GRAIN_SIZE: usize = 20;
const DESC_OFFSET: usize = 28;
const DESC_SIZE: usize = 36;
const RGD_OFFSET: usize = 48;
const GD_OFFSET: usize = 56;

fn ctx(resolver: &dyn disk_core::Resolver, writable: bool, repair: bool) -> OpenContext<'_> {
    OpenContext {
        path: None,
        writable,
        resolver,
        lenient: false,
        repair,
        locking: disk_core::Locking::Auto,
    }
}

fn open_bytes(bytes: &[u8], writable: bool, repair: bool) -> disk_core::Result<(Image, Arc<MemStorage>)> {
    let storage = Arc::new(MemStorage::from_bytes(bytes));
    let layer = VmdkDriver.open(storage.clone(), &ctx(&disk_core::DenyExternal, writable, repair))?;
    Ok((Image::single(layer, None), storage))
}

/// A `size`-byte monolithicSparse image with grain 0 all 0x11 and grain 2 all 0x22.
fn image(size: u64) -> Vec<u8> {
    let storage = Arc::new(MemStorage::new());
    let spec = CreateSpec {
        size,
        options: Options::parse("").unwrap(),
        backing: None,
        path: None,
        files: &NoExtraFiles,
    };
    VmdkDriver.create(&*storage, spec).unwrap();
    let layer = VmdkDriver
        .open(storage.clone(), &ctx(&disk_core::DenyExternal, true, false))
        .unwrap();
    let disk = Image::single(layer, None);
    disk.write(0, &[0x11; GRAIN]).unwrap();
    disk.write(256, &[0x22; GRAIN]).unwrap();
    disk.flush().unwrap();
    drop(disk);
    storage.to_vec()
}

/// Byte offset of grain `g`'s entry in the primary (or redundant) grain table.
fn gte(b: &[u8], g: usize, redundant: bool) -> usize {
    let dir = u64_at(b, if redundant { RGD_OFFSET } else { GD_OFFSET }) as usize * 512;
    let table = u32_at(b, dir + g / 512 * 4) as usize * 512;
    table + g % 512 * 4
}

/// Point grain `g` at `sector` in both tables.
fn point(b: &mut [u8], g: usize, sector: u32) {
    for r in [false, true] {
        let at = gte(b, g, r);
        set_u32(b, at, sector);
    }
}

fn descriptor(b: &[u8]) -> Vec<u8> {
    let at = u64_at(b, DESC_OFFSET) as usize * 512;
    b[at..at + u64_at(b, DESC_SIZE) as usize * 512].to_vec()
}

fn read_grain(disk: &Image, g: u64) -> disk_core::Result<Vec<u8>> {
    let mut buf = vec![0u8; GRAIN];
    disk.read(g * 128, &mut buf)?;
    Ok(buf)
}

#[test]
fn grain_on_the_descriptor_cannot_be_written_through() {
    let mut b = image(4 * MIB);
    point(&mut b, 1, 1); // sector 1: the embedded descriptor
    let before = descriptor(&b);
    // Read-only: what is sound reads, the bad grain is an error.
    let (disk, _) = open_bytes(&b, false, false).unwrap();
    assert_eq!(read_grain(&disk, 0).unwrap(), vec![0x11; GRAIN]);
    assert_eq!(read_grain(&disk, 2).unwrap(), vec![0x22; GRAIN]);
    assert_eq!(read_grain(&disk, 1).unwrap_err().kind(), ErrorKind::Corrupt);
    let report = disk.top().check(Repair::None).unwrap();
    assert!(
        report
            .corruptions
            .iter()
            .any(|m| m.contains("grain 1") && m.contains("descriptor")),
        "{report:?}"
    );
    // Writable: refused, naming the structure and the overlap; nothing written.
    let Err(e) = open_bytes(&b, true, false) else {
        panic!("writable open refused")
    };
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    let text = e.to_string();
    assert!(text.contains("overlaps the descriptor at 0x200"), "{text}");
    // A guest write through the grain would have rewritten the descriptor (parent hint, CID).
    assert_eq!(descriptor(&b), before);
}

#[test]
fn grain_past_the_end_or_on_another_grain_is_refused_for_writing() {
    let good = image(4 * MIB);
    let end_sector = (good.len() / 512) as u32;
    let g0 = u32_at(&good, gte(&good, 0, false));
    for (what, sector) in [("past the end", end_sector + 8), ("overlaps the data block", g0)] {
        let mut b = good.clone();
        point(&mut b, 1, sector);
        let Err(e) = open_bytes(&b, true, false) else {
            panic!("refused")
        };
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{what}");
        assert!(e.to_string().contains(what), "{what}: {e}");
        let (disk, _) = open_bytes(&b, false, false).unwrap();
        assert_eq!(read_grain(&disk, 0).unwrap(), vec![0x11; GRAIN]);
        assert_eq!(read_grain(&disk, 1).unwrap_err().kind(), ErrorKind::Corrupt, "{what}");
    }
}

#[test]
fn truncated_image_is_read_only() {
    // The last grain is cut short: a write to it would go past the end, and a later new grain
    // (allocated at the end of the file) would overwrite it.
    let mut b = image(4 * MIB);
    b.truncate(b.len() - 4096);
    let Err(e) = open_bytes(&b, true, false) else {
        panic!("refused")
    };
    assert!(e.to_string().contains("past the end"), "{e}");
    let (disk, _) = open_bytes(&b, false, false).unwrap();
    assert_eq!(read_grain(&disk, 0).unwrap(), vec![0x11; GRAIN]);
    assert_eq!(read_grain(&disk, 2).unwrap_err().kind(), ErrorKind::Corrupt);
    assert!(!disk.top().check(Repair::None).unwrap().is_clean());
}

#[test]
fn redundant_directory_on_the_descriptor_is_reported_and_repaired() {
    let mut b = image(4 * MIB);
    set_u64(&mut b, RGD_OFFSET, 1);
    let (disk, _) = open_bytes(&b, false, false).unwrap();
    assert_eq!(read_grain(&disk, 0).unwrap(), vec![0x11; GRAIN]);
    assert_eq!(read_grain(&disk, 2).unwrap(), vec![0x22; GRAIN]);
    let report = disk.top().check(Repair::None).unwrap();
    assert!(
        report
            .corruptions
            .iter()
            .any(|m| m.contains("redundant grain directory")),
        "{report:?}"
    );
    assert!(open_bytes(&b, true, false).is_err());

    let (disk, storage) = open_bytes(&b, true, true).unwrap();
    let report = disk.top().check(Repair::All).unwrap();
    assert!(!report.repaired.is_empty(), "{report:?}");
    drop(disk);
    let fixed = storage.to_vec();
    let (disk, _) = open_bytes(&fixed, true, false).unwrap();
    assert!(disk.top().check(Repair::None).unwrap().is_clean());
    assert_eq!(read_grain(&disk, 2).unwrap(), vec![0x22; GRAIN]);
}

#[test]
fn repair_drops_bad_grains_and_leaves_a_writable_image() {
    let mut b = image(4 * MIB);
    let before = descriptor(&b);
    point(&mut b, 1, 1);
    let g0 = u32_at(&b, gte(&b, 0, false));
    point(&mut b, 3, g0);
    let far = (b.len() / 512) as u32 + 100;
    point(&mut b, 4, far);
    let (disk, storage) = open_bytes(&b, true, true).unwrap();
    let report = disk.top().check(Repair::All).unwrap();
    assert_eq!(report.repaired.len(), 3, "{report:?}");
    assert_eq!(report.corruptions.count(), 0, "{report:?}");
    drop(disk);
    let fixed = storage.to_vec();
    assert_eq!(descriptor(&fixed), before);
    let (disk, storage) = open_bytes(&fixed, true, false).unwrap();
    assert!(disk.top().check(Repair::None).unwrap().is_clean());
    assert_eq!(read_grain(&disk, 0).unwrap(), vec![0x11; GRAIN]);
    assert_eq!(read_grain(&disk, 2).unwrap(), vec![0x22; GRAIN]);
    assert_eq!(read_grain(&disk, 1).unwrap(), vec![0; GRAIN]);
    disk.write(128, &[0x33; GRAIN]).unwrap();
    disk.write(3 * 128, &[0x44; GRAIN]).unwrap();
    disk.flush().unwrap();
    assert_eq!(read_grain(&disk, 0).unwrap(), vec![0x11; GRAIN]);
    assert_eq!(read_grain(&disk, 1).unwrap(), vec![0x33; GRAIN]);
    assert_eq!(read_grain(&disk, 3).unwrap(), vec![0x44; GRAIN]);
    drop(disk);
    let after = storage.to_vec();
    let (disk, _) = open_bytes(&after, false, false).unwrap();
    assert!(disk.top().check(Repair::None).unwrap().is_clean());
    // The descriptor only got a new CID.
    let text = String::from_utf8_lossy(&descriptor(&after)).into_owned();
    assert!(!text.contains("parentFileNameHint"), "{text}");
    if common::qemu_img_available("repair_drops_bad_grains_and_leaves_a_writable_image") {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fixed.vmdk");
        std::fs::write(&path, &after).unwrap();
        common::run_tool("qemu-img", ["check", "-f", "vmdk", path.to_str().unwrap()]);
    }
}

#[test]
fn leaked_tail_is_reported_and_freed() {
    let mut b = image(4 * MIB);
    let len = b.len();
    b.resize(len + 3 * GRAIN, 0xee);
    let (disk, storage) = open_bytes(&b, true, false).unwrap();
    let report = disk.top().check(Repair::None).unwrap();
    assert_eq!(report.leaks.count(), 1, "{report:?}");
    let report = disk.top().check(Repair::Leaks).unwrap();
    assert_eq!(report.repaired.len(), 1, "{report:?}");
    assert_eq!(report.leaks.count(), 0, "{report:?}");
    drop(disk);
    assert_eq!(storage.to_vec().len(), len);
}

#[test]
fn check_findings_stay_bounded() {
    // Two grain tables with every entry past the end of the file.
    let mut b = image(64 * MIB);
    let far = (b.len() / 512) as u32 + 1000;
    for g in 0..1024 {
        let at = gte(&b, g, false);
        set_u32(&mut b, at, far + g as u32 * 128);
    }
    let (disk, _) = open_bytes(&b, false, false).unwrap();
    let report = disk.top().check(Repair::None).unwrap();
    assert!(report.corruptions.count() >= 1024, "{}", report.corruptions.count());
    assert!(report.corruptions.len() <= disk_core::MAX_CHECK_DETAILS);
}

#[test]
fn tiny_and_odd_grain_sizes_are_refused() {
    for grain in [1u64, 4, 24] {
        let mut b = image(4 * MIB);
        set_u64(&mut b, GRAIN_SIZE, grain);
        let Err(e) = open_bytes(&b, false, false) else {
            panic!("refused")
        };
        assert_eq!(e.kind(), ErrorKind::Corrupt, "grain {grain}");
    }
}

/// A bare KDMV header and an empty directory: 2 TiB of 4 KiB grains.
fn huge_empty_extent() -> Vec<u8> {
    let capacity: u64 = 1 << 32;
    let gd_entries = capacity / 8 / 512;
    let mut b = vec![0u8; 512 + (gd_entries * 4) as usize];
    set_u32(&mut b, 0, 0x564d_444b);
    set_u32(&mut b, 4, 1);
    set_u64(&mut b, 12, capacity);
    set_u64(&mut b, GRAIN_SIZE, 8);
    set_u32(&mut b, 44, 512);
    set_u64(&mut b, GD_OFFSET, 1);
    b
}

#[test]
fn block_status_and_check_walk_tables_not_sectors() {
    let b = huge_empty_extent();
    let started = std::time::Instant::now();
    let (disk, _) = open_bytes(&b, false, false).unwrap();
    let st = disk.top().block_status(0, 1 << 32).unwrap();
    assert_eq!((st.sectors, st.allocation), (1 << 32, Allocation::Unallocated));
    let report = disk.top().check(Repair::None).unwrap();
    assert_eq!(report.corruptions.count(), 0, "{report:?}");
    assert!(started.elapsed().as_secs() < 60, "took {:?}", started.elapsed());
}

#[test]
fn wildcard_parent_cid_does_not_identify_the_parent() {
    let parent = image(4 * MIB);
    let mut child = image(4 * MIB);
    let at = u64_at(&child, DESC_OFFSET) as usize * 512;
    let text = String::from_utf8_lossy(&descriptor(&child))
        .trim_end_matches('\0')
        .to_string();
    let with_hint = text.replace(
        "createType=\"monolithicSparse\"",
        "createType=\"monolithicSparse\"\nparentFileNameHint=\"p.vmdk\"",
    );
    assert!(with_hint.contains("parentCID=ffffffff"), "{with_hint}");
    child[at..at + with_hint.len()].copy_from_slice(with_hint.as_bytes());
    let resolver = MemResolver::new();
    resolver.insert("p.vmdk", Arc::new(MemStorage::from_bytes(&parent)));
    let top = VmdkDriver
        .open(Arc::new(MemStorage::from_bytes(&child)), &ctx(&resolver, false, false))
        .unwrap();
    assert!(top.parent().is_some());
    assert!(!top.parent_identity_recorded());
    let mut options = OpenOptions::new().resolver(Arc::new(resolver));
    let opener = |_, s: Arc<dyn Storage>, c: &OpenContext<'_>| VmdkDriver.open(s, c);
    assert!(Image::open_chain(top, None, &options, &opener).is_err());
    options.trust_unlinked_parent = true;
    let top = VmdkDriver
        .open(
            Arc::new(MemStorage::from_bytes(&child)),
            &ctx(&*options.resolver, false, false),
        )
        .unwrap();
    let chain = Image::open_chain(top, None, &options, &opener).unwrap();
    assert_eq!(chain.layers().count(), 2);
}

#[test]
fn redundant_table_on_the_descriptor_is_rebuilt_by_repair() {
    let mut b = image(4 * MIB);
    let rgd = u64_at(&b, RGD_OFFSET) as usize * 512;
    set_u32(&mut b, rgd, 1); // redundant grain table 0 on the descriptor
    let (disk, _) = open_bytes(&b, false, false).unwrap();
    assert_eq!(read_grain(&disk, 0).unwrap(), vec![0x11; GRAIN]);
    let report = disk.top().check(Repair::None).unwrap();
    assert!(
        report.corruptions.iter().any(|m| m.contains("redundant grain table 0")),
        "{report:?}"
    );
    let Err(e) = open_bytes(&b, true, false) else {
        panic!("writable open of an image with a misplaced redundant table");
    };
    assert!(e.to_string().contains("overlaps the descriptor"), "{e}");

    let (disk, storage) = open_bytes(&b, true, true).unwrap();
    let report = disk.top().check(Repair::All).unwrap();
    assert_eq!(report.repaired.len(), 1, "{report:?}");
    drop(disk);
    let fixed = storage.to_vec();
    let (disk, _) = open_bytes(&fixed, true, false).unwrap();
    assert!(disk.top().check(Repair::None).unwrap().is_clean());
    disk.write(5 * 128, &[0x55; GRAIN]).unwrap();
    disk.flush().unwrap();
    assert!(disk.top().check(Repair::None).unwrap().is_clean());
    drop(disk);
    if common::qemu_img_available("redundant_table_on_the_descriptor_is_rebuilt_by_repair") {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fixed.vmdk");
        std::fs::write(&path, &fixed).unwrap();
        common::run_tool("qemu-img", ["check", "-f", "vmdk", path.to_str().unwrap()]);
    }
}

#[test]
fn repair_survives_a_crash_anywhere() {
    use disk_core::testing::{CrashStorage, for_each_crash};
    let mut b = image(4 * MIB);
    point(&mut b, 1, 1);
    let g0 = u32_at(&b, gte(&b, 0, false));
    point(&mut b, 3, g0);
    let rgd = u64_at(&b, RGD_OFFSET) as usize * 512;
    set_u32(&mut b, rgd, 1);
    let base = MemStorage::from_bytes(&b);
    let repair = |s: Arc<CrashStorage>| -> disk_core::Result<()> {
        let layer = VmdkDriver.open(s, &ctx(&disk_core::DenyExternal, true, true))?;
        layer.check(Repair::All)?;
        layer.flush()
    };
    let dry = for_each_crash(&base, 7, repair, |what, image| {
        let bytes = image.to_vec();
        // Either still damaged (refused for writing) or repaired; sound grains intact.
        let disk = match open_bytes(&bytes, true, false) {
            Ok((d, _)) => d,
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Corrupt, "{what}: {e}");
                open_bytes(&bytes, false, false)
                    .unwrap_or_else(|e| panic!("{what}: {e}"))
                    .0
            }
        };
        assert_eq!(read_grain(&disk, 0).unwrap(), vec![0x11; GRAIN], "{what}");
        assert_eq!(read_grain(&disk, 2).unwrap(), vec![0x22; GRAIN], "{what}");
    });
    assert!(dry.writes() >= 4, "{} writes", dry.writes());
}

#[test]
fn large_tables_are_read_on_demand_and_checked_as_read() {
    // 512 GiB: 16384 grain tables of 2 KiB in each copy, more than a read-only open surveys.
    let size = 512u64 << 30;
    let mut b = image(size);
    let g0 = u32_at(&b, gte(&b, 0, false));
    let gd = u64_at(&b, GD_OFFSET) as u32;
    // Grain 5 on the grain directory, grain 6 past the end of the file, grain 7 on grain 0.
    point(&mut b, 5, gd);
    let past_end = (b.len() / 512 + 1000) as u32;
    point(&mut b, 6, past_end);
    point(&mut b, 7, g0);
    let storage = Arc::new(disk_core::testing::FaultyStorage::new(MemStorage::from_bytes(&b)));
    let layer = VmdkDriver
        .open(storage.clone(), &ctx(&disk_core::DenyExternal, false, false))
        .unwrap();
    let disk = Image::single(layer, None);
    let opened = storage.counts().bytes_read;
    assert!(opened < 4 * MIB, "open read {opened} bytes of 64 MiB of tables");
    assert_eq!(read_grain(&disk, 0).unwrap(), vec![0x11; GRAIN]);
    assert_eq!(read_grain(&disk, 2).unwrap(), vec![0x22; GRAIN]);
    assert_eq!(read_grain(&disk, size / GRAIN as u64 - 1).unwrap(), vec![0; GRAIN]);
    for g in [5, 6] {
        let e = read_grain(&disk, g).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt, "grain {g}: {e}");
    }
    // Two grains on each other lie inside the image: read-only, grain 7 reads grain 0's bytes
    // (as QEMU does); `check` and a writable open find the overlap.
    assert_eq!(read_grain(&disk, 7).unwrap(), vec![0x11; GRAIN]);
    let read = storage.counts().bytes_read - opened;
    assert!(read < 4 * MIB, "six grain reads fetched {read} bytes");
    let report = disk.top().check(Repair::None).unwrap();
    let all = report.corruptions.iter().cloned().collect::<Vec<_>>().join("\n");
    for g in ["grain 5 ", "grain 6 ", "grain 7 "] {
        assert!(all.contains(g), "{g}: {all}");
    }
    assert!(
        open_bytes(&b, true, false).is_err(),
        "a writable open surveys and refuses"
    );
}
