//! copy, compare and map over raw images in memory and on disk.

use disk_core::ops::{self, Comparison, CopyOptions};
use disk_core::{Disk, Image, MemStorage, RawLayer, Storage, bytes};
use std::sync::Arc;

fn raw(storage: Arc<MemStorage>, writable: bool) -> Image {
    Image::single(Box::new(RawLayer::open(storage, writable).unwrap()), None)
}

fn sized(len: u64) -> Arc<MemStorage> {
    let s = Arc::new(MemStorage::new());
    s.set_len(len).unwrap();
    s
}

#[test]
fn copy_skips_holes_and_zero_data() {
    let src_store = sized(8 << 20);
    src_store.write_at(&[0xaa; 5000], 1 << 20).unwrap();
    src_store.write_at(&[0; 128 << 10], 3 << 20).unwrap(); // stored zeros: must not be written
    src_store.write_at(&[0xbb; 1], (8 << 20) - 1).unwrap();
    let src = raw(src_store.clone(), false);
    let dst_store = sized(8 << 20);
    let dst = raw(dst_store.clone(), true);
    let mut calls = 0;
    let mut progress = |done: u64, total: u64| {
        assert!(done <= total);
        calls += 1;
    };
    let stats = ops::copy(
        &src,
        &dst,
        CopyOptions {
            progress: Some(&mut progress),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(calls > 0);
    assert_eq!(stats.bytes_written + stats.bytes_skipped, 8 << 20);
    assert!(
        stats.bytes_written <= 3 * (64 << 10),
        "only the pieces holding data are written: {stats:?}"
    );
    assert_eq!(dst_store.to_vec(), src_store.to_vec());
    assert!(
        !dst_store.allocation(3 << 20, 128 << 10).unwrap().0,
        "zero data left as a hole"
    );
    assert_eq!(ops::compare(&src, &dst, true).unwrap(), Comparison::Identical);
}

#[test]
fn copy_with_many_workers_in_and_out_of_order_and_failing() {
    use disk_core::testing::{FaultPlan, FaultyStorage};
    let src_store = sized(40 << 20);
    let mut rng = disk_core::SplitMix64::new(7);
    for i in 0..200u64 {
        let at = rng.next_u64() % ((40 << 20) - 70_000);
        src_store
            .write_at(&vec![(i as u8) | 1; 1 + (i as usize * 331) % 70_000], at)
            .unwrap();
    }
    let src = raw(src_store.clone(), false);
    for (workers, out_of_order) in [(1, false), (3, false), (8, true), (16, true)] {
        let dst_store = sized(40 << 20);
        let dst = raw(dst_store.clone(), true);
        let mut last = 0;
        let mut progress = |done: u64, total: u64| {
            assert!(done >= last && done <= total);
            last = done;
        };
        let stats = ops::copy(
            &src,
            &dst,
            CopyOptions {
                progress: Some(&mut progress),
                buffer_size: 256 << 10,
                zero_granularity: if out_of_order { 0 } else { 4096 },
                workers,
                out_of_order,
                target: ops::Target::Zeroed,
            },
        )
        .unwrap();
        assert_eq!(stats.bytes_written + stats.bytes_skipped, 40 << 20);
        assert_eq!(last, 40 << 20);
        assert_eq!(dst_store.to_vec(), src_store.to_vec(), "{workers} workers");
    }
    // A read that fails stops every worker and returns the error (no hang), in both modes.
    for out_of_order in [false, true] {
        let failing =
            Arc::new(FaultyStorage::new(src_store.clone()).with_plan(FaultPlan::none().read(30).sticky(true)));
        let src = Image::single(Box::new(RawLayer::open(failing, false).unwrap()), None);
        let dst = raw(sized(40 << 20), true);
        let options = CopyOptions {
            buffer_size: 64 << 10,
            workers: 4,
            out_of_order,
            ..Default::default()
        };
        let e = ops::copy(&src, &dst, options).unwrap_err();
        let chain = disk_core::display_chain(&e);
        assert!(chain.contains("injected fault"), "{chain}");
    }
}

#[test]
fn compare_reports_first_difference_like_qemu() {
    let a_store = sized(1 << 20);
    let b_store = sized(1 << 20);
    a_store.write_at(&[1; 4096], 8192).unwrap();
    b_store.write_at(&[1; 4096], 8192).unwrap();
    b_store.write_at(&[2], 8192 + 1000).unwrap();
    let (a, b) = (raw(a_store, false), raw(b_store, false));
    assert_eq!(
        ops::compare(&a, &b, false).unwrap(),
        Comparison::ContentMismatch { offset: 8192 + 512 }
    );
}

#[test]
fn compare_sizes_strict_and_lenient() {
    let short = raw(sized(1 << 20), false);
    let long_store = sized(2 << 20);
    let long = raw(long_store.clone(), false);
    assert_eq!(ops::compare(&short, &long, false).unwrap(), Comparison::Identical);
    assert_eq!(ops::compare(&long, &short, false).unwrap(), Comparison::Identical);
    assert!(matches!(
        ops::compare(&short, &long, true).unwrap(),
        Comparison::SizeMismatch { .. }
    ));
    long_store.write_at(&[7], (1 << 20) + 700).unwrap();
    assert_eq!(
        ops::compare(&short, &long, false).unwrap(),
        Comparison::ContentMismatch {
            offset: (1 << 20) + 512
        }
    );
}

#[test]
fn map_merges_runs_and_covers_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let file = disk_core::FileStorage::create(dir.path().join("r"), false).unwrap();
    file.set_len(16 << 20).unwrap();
    file.write_at(&[1; 1 << 20], 4 << 20).unwrap();
    let image = Image::single(Box::new(RawLayer::open(Arc::new(file), false).unwrap()), None);
    let map = ops::map(&image).unwrap();
    assert_eq!(map.iter().map(|e| e.length).sum::<u64>(), 16 << 20);
    assert!(map.windows(2).all(|w| w[0].start + w[0].length == w[1].start));
    let data: Vec<_> = map.iter().filter(|e| e.data).collect();
    assert!(
        data.iter()
            .any(|e| e.start <= 4 << 20 && e.start + e.length >= 5 << 20 && e.offset == Some(e.start))
    );
    // Where the file system reports holes, they are zero and not data.
    if map.len() > 1 {
        assert!(map.iter().any(|e| e.zero && !e.data && e.present));
    }
    // Streaming gives the same runs, one at a time, and stops at the sink's first error.
    let mut streamed = Vec::new();
    ops::map_each(&image, |e| {
        streamed.push(e);
        Ok(())
    })
    .unwrap();
    assert_eq!(streamed, map);
    let err = ops::map_each(&image, |_| Err(disk_core::Error::invalid_argument("stop"))).unwrap_err();
    assert_eq!(err.message(), "stop");
}

#[test]
fn raw_of_odd_length_keeps_its_length() {
    let store = Arc::new(MemStorage::from_bytes(&[5u8; 1000]));
    let image = raw(store.clone(), true);
    assert_eq!((image.virtual_size(), image.sector_count()), (1000, 2));
    let mut buf = [9u8; 1024];
    image.read(0, &mut buf).unwrap();
    assert!(buf[..1000].iter().all(|&b| b == 5) && buf[1000..].iter().all(|&b| b == 0));
    image.write(1, &[6u8; 512]).unwrap();
    assert_eq!(
        store.len().unwrap(),
        1000,
        "a write to the partial last sector does not grow the file"
    );
    let mut tail = [0u8; 488];
    bytes::read_bytes(&image, 512, &mut tail).unwrap();
    assert!(tail.iter().all(|&b| b == 6));
    assert!(bytes::read_bytes(&image, 999, &mut [0u8; 2]).is_err());
}

#[test]
fn byte_access_merges_partial_sectors() {
    let store = sized(4096);
    let image = raw(store.clone(), true);
    bytes::write_bytes(&image, 510, &[1, 2, 3, 4]).unwrap();
    assert_eq!(&store.to_vec()[509..515], &[0, 1, 2, 3, 4, 0]);
    bytes::zero_bytes(&image, 511, 1500, true).unwrap();
    assert_eq!(&store.to_vec()[509..513], &[0, 1, 0, 0]);
    let read_only = raw(store, false);
    assert_eq!(
        bytes::write_bytes(&read_only, 0, &[1]).unwrap_err().kind(),
        disk_core::ErrorKind::ReadOnly
    );
}

proptest::proptest! {
    /// Unaligned byte writes and reads agree with a plain byte array (partial sectors at both
    /// ends, whole-sector runs in between).
    #[test]
    fn byte_access_matches_a_byte_array(ops in proptest::collection::vec((0u64..20_000, 1usize..9000, proptest::prelude::any::<u8>()), 1..20)) {
        let size = 32 * 1024u64;
        let store = sized(size);
        let image = raw(store.clone(), true);
        let mut model = vec![0u8; size as usize];
        for (offset, len, byte) in ops {
            let len = len.min((size - offset) as usize);
            bytes::write_bytes(&image, offset, &vec![byte; len]).unwrap();
            model[offset as usize..offset as usize + len].fill(byte);
            let mut back = vec![0u8; len];
            bytes::read_bytes(&image, offset, &mut back).unwrap();
            proptest::prop_assert_eq!(&back[..], &model[offset as usize..offset as usize + len]);
        }
        proptest::prop_assert_eq!(store.to_vec(), model);
    }
}
