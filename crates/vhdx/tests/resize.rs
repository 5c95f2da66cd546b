//! Resizing in place: grow, shrink, fixed disks, limits; QEMU agrees afterwards.

mod common;

use common::{create_mem, open_mem, qemu_check_and_compare, qemu_img_available, read_all};
use disk_core::{Disk, ErrorKind, MemStorage, NoExtraFiles};
use std::sync::Arc;

const MIB: u64 = 1 << 20;

fn resize(s: &Arc<MemStorage>, size: u64) -> disk_core::Result<()> {
    let d = open_mem(s, true)?;
    d.top().resize(size, &NoExtraFiles)
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
    assert!(
        max >= 100 << 30,
        "a 1 MiB BAT region holds about 127 GiB of 1 MiB blocks"
    );
    assert_eq!(
        d.top().resize(max + 512, &NoExtraFiles).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        d.top().resize(1000, &NoExtraFiles).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    d.top().resize(max, &NoExtraFiles).unwrap();
    assert!(d.write(0, &[1u8; 512]).is_err(), "the handle is stale after a resize");
    drop(d);
    let d = open_mem(&s, true).unwrap();
    assert_eq!(d.virtual_size(), max);
    d.write(max / 512 - 1, &[7u8; 512]).unwrap();
    let ro = open_mem(&s, false).unwrap();
    assert!(ro.top().resize(MIB, &NoExtraFiles).is_err());
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
