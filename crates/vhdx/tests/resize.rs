//! Resizing in place: grow, shrink, fixed disks, limits; QEMU agrees afterwards.

mod common;

use common::{create_mem, open_mem, qemu_check_and_compare, qemu_img_available, read_all};
use disk_core::{Disk, ErrorKind, MemStorage, NoExtraFiles};
use std::sync::Arc;

const MIB: u64 = 1 << 20;

fn resize(s: &Arc<MemStorage>, size: u64) -> disk_core::Result<()> {
    let d = open_mem(s, true)?;
    d.into_top().resize(size, &NoExtraFiles)
}

#[test]
fn grow_and_shrink_keep_the_common_prefix() {
    for opts in [
        "block_size=1M",
        "subformat=fixed,block_size=1M",
        "block_size=2M,logical_sector_size=4096",
    ] {
        let s = create_mem(10 * MIB, opts).unwrap();
        let mut expected;
        {
            let d = open_mem(&s, true).unwrap();
            let data: Vec<u8> = (0..10 * MIB).map(|i| (i % 251) as u8 | 1).collect();
            d.write(0, &data).unwrap();
            expected = data;
        }
        resize(&s, 30 * MIB).unwrap();
        let d = open_mem(&s, false).unwrap();
        expected.resize(30 * MIB as usize, 0);
        assert_eq!(d.virtual_size(), 30 * MIB, "{opts}");
        assert!(read_all(&d) == expected, "{opts}: after growing");
        if opts.contains("fixed") {
            let st = d.block_status(25 * MIB / 512, 8).unwrap();
            assert_eq!(
                st.allocation,
                disk_core::Allocation::Data,
                "a fixed disk stays fully allocated"
            );
        }
        assert!(d.top().check(disk_core::Repair::None).unwrap().corruptions.is_empty());
        drop(d);
        // Shrink into the middle of a block, then grow again: the dropped part reads as zeros.
        let small = 5 * MIB + 3 * 4096;
        resize(&s, small).unwrap();
        let d = open_mem(&s, false).unwrap();
        assert_eq!(d.virtual_size(), small);
        assert!(read_all(&d) == expected[..small as usize], "{opts}: after shrinking");
        drop(d);
        resize(&s, 12 * MIB).unwrap();
        let d = open_mem(&s, false).unwrap();
        expected.truncate(small as usize);
        expected.resize(12 * MIB as usize, 0);
        assert!(read_all(&d) == expected, "{opts}: no stale data after shrink and grow");
        assert!(d.top().info().dirty == Some(false));
    }
}

#[test]
fn limits_and_stale_handles() {
    let s = create_mem(10 * MIB, "block_size=1M").unwrap();
    let d = open_mem(&s, true).unwrap();
    let max = d.top().max_virtual_size().unwrap();
    assert_eq!(max, 64 << 40, "the specification's limit (the BAT moves when it must)");
    assert_eq!(resize(&s, max + 512).unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert_eq!(resize(&s, 1000).unwrap_err().kind(), ErrorKind::InvalidArgument);
    // Past the ~127 GiB a 1 MiB BAT region holds at 1 MiB blocks. The handle is consumed:
    // nothing can be written through the old view of the size.
    let big = 200 << 30;
    d.into_top().resize(big, &NoExtraFiles).unwrap();
    let d = open_mem(&s, true).unwrap();
    assert_eq!(d.virtual_size(), big);
    d.write(big / 512 - 1, &[7u8; 512]).unwrap();
    let ro = open_mem(&s, false).unwrap();
    assert!(ro.into_top().resize(MIB, &NoExtraFiles).is_err());
}

#[test]
fn qemu_accepts_resized_images() {
    if !qemu_img_available("qemu_accepts_resized_images") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = create_mem(20 * MIB, "block_size=1M").unwrap();
    {
        let d = open_mem(&s, true).unwrap();
        d.write(0, &vec![0x5a; 3 * MIB as usize]).unwrap();
        d.write(19 * MIB / 512, &[0x6b; 512]).unwrap();
    }
    resize(&s, 64 * MIB + 512).unwrap();
    let img = dir.path().join("r.vhdx");
    std::fs::write(&img, s.to_vec()).unwrap();
    let mut raw = vec![0u8; (64 * MIB + 512) as usize];
    raw[..3 * MIB as usize].fill(0x5a);
    raw[19 * MIB as usize..19 * MIB as usize + 512].fill(0x6b);
    let raw_path = dir.path().join("r.raw");
    std::fs::write(&raw_path, &raw).unwrap();
    qemu_check_and_compare(&img, "vhdx", &raw_path);
}

/// A crash at any write of a resize leaves the old size with the old data, or the new size with
/// the common prefix (and zeros past the old end when growing).
#[test]
fn resize_survives_a_crash_at_every_write() {
    use disk_core::testing::{CrashMode, CrashStorage};
    let base = create_mem(10 * MIB, "block_size=1M").unwrap();
    let data: Vec<u8> = (0..10 * MIB).map(|i| (i % 241) as u8 | 1).collect();
    {
        let d = open_mem(&base, true).unwrap();
        d.write(0, &data).unwrap();
    }
    for (old, new) in [(10 * MIB, 23 * MIB + 4096), (10 * MIB, 4 * MIB + 1024)] {
        let dry = Arc::new(CrashStorage::new(&base));
        common::open_layer(dry.clone(), true)
            .unwrap()
            .resize(new, &NoExtraFiles)
            .unwrap();
        let writes = dry.writes();
        for n in 0..writes {
            let cs = Arc::new(CrashStorage::new(&base).crash_at_write(n));
            if let Ok(layer) = common::open_layer(cs.clone(), true) {
                let _ = layer.resize(new, &NoExtraFiles);
            }
            for mode in CrashMode::standard(n, cs.crashing_sectors()) {
                let img = Arc::new(cs.crash_image(mode));
                let d = open_mem(&img, true).unwrap_or_else(|e| panic!("write {n} {mode:?}: {e}"));
                let size = d.virtual_size();
                assert!(size == old || size == new, "write {n} {mode:?}: size {size}");
                let got = read_all(&d);
                let common = old.min(new) as usize;
                assert!(got[..common] == data[..common], "write {n} {mode:?}: prefix changed");
                if size == old {
                    assert!(got == data, "write {n} {mode:?}: old size but not old data");
                } else {
                    assert!(
                        got[common..].iter().all(|&b| b == 0),
                        "write {n} {mode:?}: new space not zero"
                    );
                }
            }
        }
    }
}

/// Bytes at a few places of a disk: (offset, length, fill byte written there).
const SPOTS: &[(u64, usize, u8)] = &[
    (0, 3 << 20, 0x5a),
    (7 << 20, 4096, 0x11),
    ((100 << 30) - 4096, 4096, 0x6b),
];

/// The sector of byte `off`.
fn at(d: &dyn Disk, off: u64) -> u64 {
    off / u64::from(d.sector_size())
}

/// A 100 GiB image of 1 MiB blocks (`opts` adds options) with data at [`SPOTS`].
fn image_with_spots(opts: &str) -> Arc<MemStorage> {
    let s = create_mem(100 << 30, &format!("block_size=1M{opts}")).unwrap();
    let d = open_mem(&s, true).unwrap();
    for &(off, len, b) in SPOTS {
        d.write(at(&d, off), &vec![b; len]).unwrap();
    }
    s
}

/// Whether the disk has the data of [`SPOTS`], reads zeros right after each spot and, past
/// `old`, at a few places of the new space.
fn spots_intact(d: &dyn Disk, old: u64) -> bool {
    let read = |off: u64, len: usize| {
        let mut buf = vec![0u8; len];
        d.read(at(d, off), &mut buf).unwrap();
        buf
    };
    let size = d.virtual_size();
    let spots_ok = SPOTS
        .iter()
        .all(|&(off, len, b)| read(off, len).iter().all(|&x| x == b));
    let after_ok = read(3 << 20, 4096).iter().all(|&x| x == 0);
    let new_ok = [old, old + (1 << 30), (old + size) / 2 / 512 * 512, size - 4096]
        .into_iter()
        .filter(|&off| off >= old && off + 4096 <= size)
        .all(|off| read(off, 4096).iter().all(|&x| x == 0));
    spots_ok && after_ok && new_ok
}

#[test]
fn growing_past_the_bat_region_moves_the_bat() {
    for opts in ["", ",subformat=fixed", ",logical_sector_size=4096"] {
        let s = image_with_spots(opts);
        for new in [(300 << 30) + 4096, 1 << 40] {
            resize(&s, new).unwrap();
            let d = open_mem(&s, true).unwrap();
            assert_eq!(d.virtual_size(), new, "{opts}");
            assert!(spots_intact(&d, 100 << 30), "{opts}: data after moving the BAT");
            let r = d.top().check(disk_core::Repair::None).unwrap();
            assert!(r.corruptions.is_empty() && r.leaks.is_empty(), "{opts}: {r:?}");
            // The new space is writable, and so is the old.
            d.write(at(&d, new - 4096), &[0x77; 4096]).unwrap();
            d.write(at(&d, 200 << 30), &[0x78; 4096]).unwrap();
            drop(d);
            let d = open_mem(&s, false).unwrap();
            let mut buf = [0u8; 4096];
            d.read(at(&d, new - 4096), &mut buf).unwrap();
            assert_eq!(buf, [0x77; 4096], "{opts}");
            d.read(at(&d, 200 << 30), &mut buf).unwrap();
            assert_eq!(buf, [0x78; 4096], "{opts}");
            // Undo the test writes so the spots check holds on the next round.
            drop(d);
            let d = open_mem(&s, true).unwrap();
            d.write(at(&d, new - 4096), &[0; 4096]).unwrap();
            d.write(at(&d, 200 << 30), &[0; 4096]).unwrap();
        }
    }
}

/// A crash at any write or flush of a resize that moves the BAT, in every crash mode, leaves
/// the old size with the old data or the new size with the old data and zeros after it.
#[test]
fn moving_the_bat_survives_a_crash_anywhere() {
    use disk_core::testing::{CrashStorage, for_each_crash};
    for opts in ["", ",subformat=fixed"] {
        let base = image_with_spots(opts);
        let (old, new) = (100u64 << 30, (300u64 << 30) + 4096);
        let resize = |cs: Arc<CrashStorage>| common::open_layer(cs, true)?.resize(new, &NoExtraFiles);
        for_each_crash(&base, 11, resize, |what, image| {
            let img = Arc::new(image);
            let what = format!("{opts} {what}");
            let d = open_mem(&img, true).unwrap_or_else(|e| panic!("{what}: {e}"));
            let size = d.virtual_size();
            assert!(size == old || size == new, "{what}: size {size}");
            assert!(spots_intact(&d, old), "{what}: data");
            let r = d.top().check(disk_core::Repair::None).unwrap();
            assert!(r.corruptions.is_empty(), "{what}: {:?}", r.corruptions);
            // The image stays usable: a second resize completes.
            d.into_top().resize(new + (1 << 30), &NoExtraFiles).unwrap();
            let d = open_mem(&img, false).unwrap();
            assert_eq!(d.virtual_size(), new + (1 << 30), "{what}");
            assert!(spots_intact(&d, old), "{what}: data after a second resize");
        });
    }
}

#[test]
fn shrinking_leaves_no_leaked_space() {
    for opts in ["block_size=1M", "block_size=2M,logical_sector_size=4096"] {
        let s = create_mem(10 * MIB, opts).unwrap();
        {
            let d = open_mem(&s, true).unwrap();
            d.write(0, &vec![0x3c; 10 * MIB as usize]).unwrap();
        }
        resize(&s, 4 * MIB + 4096).unwrap();
        let d = open_mem(&s, true).unwrap();
        let r = d.top().check(disk_core::Repair::None).unwrap();
        assert!(r.leaks.is_empty() && r.corruptions.is_empty(), "{opts}: {r:?}");
        assert_eq!(
            r.image_end_offset,
            Some(disk_core::Storage::len(&*s).unwrap()),
            "{opts}: the file ends at its last block"
        );
        let mut buf = vec![0u8; 4 * MIB as usize + 4096];
        d.read(0, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0x3c), "{opts}");
    }
}

#[test]
fn qemu_agrees_after_moving_the_bat() {
    use std::process::Command;
    if !common::tools_available("qemu_agrees_after_moving_the_bat", &["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("q.vhdx");
    let old: u64 = 120 << 30;
    let new: u64 = 500 << 30;
    common::run(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "vhdx", "-o", "block_size=1M"])
            .arg(&img)
            .arg(old.to_string()),
    );
    for (k, (off, len)) in [(0u64, 65536u64), (5 << 20, 1 << 20), (old - 4096, 4096)]
        .iter()
        .enumerate()
    {
        let cmd = format!("write -P 0x{:x} {off} {len}", 0xa0 + k);
        common::run(Command::new("qemu-io").args(["-f", "vhdx", "-c", &cmd]).arg(&img));
    }
    let before = dir.path().join("before.raw");
    common::run(
        Command::new("qemu-img")
            .args(["convert", "-f", "vhdx", "-O", "raw"])
            .arg(&img)
            .arg(&before),
    );
    {
        let d = common::open_file(&img, true).unwrap();
        assert!(
            d.top().as_any().downcast_ref::<vhdx::VhdxLayer>().unwrap().max_size() >= new,
            "the limit is the specification's"
        );
        d.into_top().resize(new, &NoExtraFiles).unwrap();
    }
    common::run(Command::new("qemu-img").args(["check", "-f", "vhdx"]).arg(&img));
    let info = common::run(
        Command::new("qemu-img")
            .args(["info", "-f", "vhdx", "--output=json"])
            .arg(&img),
    );
    assert!(info.contains(&format!("\"virtual-size\": {new}")), "{info}");
    // The old contents, and zeros after them (qemu-img compare checks the longer image's tail).
    common::run(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "vhdx"])
            .arg(&before)
            .arg(&img),
    );
    let cmd = format!("write -P 0xcd {} 1M", new - (1 << 20));
    common::run(Command::new("qemu-io").args(["-f", "vhdx", "-c", &cmd]).arg(&img));
    let cmd = format!("read -P 0xcd {} 1M", new - (1 << 20));
    common::run(Command::new("qemu-io").args(["-f", "vhdx", "-c", &cmd]).arg(&img));
    common::run(Command::new("qemu-img").args(["check", "-f", "vhdx"]).arg(&img));
    let d = common::open_file(&img, false).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    d.read((new - (1 << 20)) / 512, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0xcd));
    d.read(5 << 11, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0xa1));
}

/// After a crash between the two region table writes of a BAT move, a writable open makes the
/// second copy equal to the first, so a later damage to the first cannot bring back the old BAT.
#[test]
fn a_writable_open_completes_an_interrupted_region_table_switch() {
    use disk_core::Storage;
    const RT2: u64 = 256 << 10;
    let s = image_with_spots("");
    let mut old_rt2 = vec![0u8; 64 << 10];
    s.read_at(&mut old_rt2, RT2).unwrap();
    let new = 300u64 << 30;
    resize(&s, new).unwrap();
    // As if the crash came before region table 2 was written.
    s.write_at(&old_rt2, RT2).unwrap();
    drop(open_mem(&s, true).unwrap());
    // Damage region table 1: the second copy must now describe the moved BAT.
    s.write_at(&[0xff; 64], 192 << 10).unwrap();
    let d = open_mem(&s, false).unwrap();
    assert_eq!(d.virtual_size(), new);
    assert!(spots_intact(&d, 100 << 30));
}
