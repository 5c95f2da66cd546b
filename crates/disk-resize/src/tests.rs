use super::*;
use disk_core::{ErrorKind, Format, MemStorage, OpenOptions, Options, RawDriver, Storage};
use std::sync::Arc;

#[test]
fn size_changes_parse_and_apply() {
    assert_eq!("10G".parse::<SizeChange>().unwrap(), SizeChange::To(10 << 30));
    assert_eq!("+1M".parse::<SizeChange>().unwrap(), SizeChange::Grow(1 << 20));
    assert_eq!("-512K".parse::<SizeChange>().unwrap(), SizeChange::Shrink(512 << 10));
    assert!("+".parse::<SizeChange>().is_err());
    assert!("--1".parse::<SizeChange>().is_err());
    assert!("1Q".parse::<SizeChange>().is_err());
    assert_eq!(SizeChange::Grow(5).apply(10).unwrap(), 15);
    assert_eq!(SizeChange::Shrink(5).apply(10).unwrap(), 5);
    assert_eq!(SizeChange::To(3).apply(10).unwrap(), 3);
    assert_eq!(
        SizeChange::Shrink(11).apply(10).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        SizeChange::Grow(u64::MAX).apply(1).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
}

fn raw_resize(s: &Arc<MemStorage>, change: SizeChange, opts: &ResizeOptions) -> disk_core::Result<Resized> {
    resize_storage(
        s.clone(),
        &RawDriver,
        None,
        &OpenOptions::new(),
        change,
        opts,
        &disk_core::NoExtraFiles,
    )
}

#[test]
fn raw_grow_and_shrink() {
    let s = Arc::new(MemStorage::from_bytes(&[7u8; 4096]));
    let opts = ResizeOptions::default();
    let r = raw_resize(&s, SizeChange::Grow(4096), &opts).unwrap();
    assert_eq!((r.old_size, r.new_size, r.format), (4096, 8192, Format::Raw));
    assert_eq!(s.len().unwrap(), 8192);
    let e = raw_resize(&s, SizeChange::To(1024), &opts).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert_eq!(s.len().unwrap(), 8192);
    let shrink = ResizeOptions { shrink: true, ..opts };
    raw_resize(&s, SizeChange::Shrink(7168), &shrink).unwrap();
    assert_eq!(s.to_vec(), vec![7u8; 1024]);
    let e = raw_resize(&s, SizeChange::To(0), &shrink).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
}

#[test]
fn raw_measure_and_fitting_size() {
    let o = Options::new();
    let m = measure(&RawDriver, &o, &MeasureSource::empty(1 << 30)).unwrap();
    assert_eq!((m.required, m.fully_allocated), (1 << 30, 1 << 30));
    let src = MeasureSource {
        virtual_size: 1 << 20,
        data: vec![(0, 4096)],
        measured_image: true,
    };
    let m = measure(&RawDriver, &o, &src).unwrap();
    assert_eq!((m.required, m.fully_allocated), (4096, 1 << 20));
    let bad = Options::parse("subformat=fixed").unwrap();
    assert_eq!(
        measure(&RawDriver, &bad, &MeasureSource::empty(1)).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(fitting_size(&RawDriver, &o, 10_000, 512).unwrap(), 9728);
    assert_eq!(
        fitting_size(&RawDriver, &o, 100, 512).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
}

#[test]
fn clusters_count_overlaps_once() {
    let s = MeasureSource {
        virtual_size: 1 << 20,
        data: vec![(0, 1), (100, 10), (4095, 2), (8192, 4096), (20000, 0)],
        measured_image: true,
    };
    assert_eq!(s.clusters(4096), 3);
    assert_eq!(s.clusters(1 << 20), 1);
    assert_eq!(s.data_bytes(), 4096 + 13);
}

#[test]
fn fitting_size_inverts_measure() {
    let fixed = Options::parse("subformat=fixed").unwrap();
    let vhd = vhd1::VhdDriver;
    // A fixed VHD needs its size plus a 512-byte footer.
    assert_eq!(fitting_size(&vhd, &fixed, 10 << 20, 512).unwrap(), (10 << 20) - 512);
    assert_eq!(fitting_size(&vhd, &fixed, 10 << 20, 1 << 20).unwrap(), 9 << 20);
    // A dynamic one: header, BAT and a bitmap per 2 MiB block as well.
    let dynamic = Options::new();
    let v = fitting_size(&vhd, &dynamic, 100 << 20, 1 << 20).unwrap();
    let m = measure(&vhd, &dynamic, &MeasureSource::empty(v)).unwrap();
    let next = measure(&vhd, &dynamic, &MeasureSource::empty(v + (1 << 20))).unwrap();
    assert!(
        m.fully_allocated <= 100 << 20 && next.fully_allocated > 100 << 20,
        "{v}"
    );
    // Past the format's maximum the search stops at the maximum.
    let huge = fitting_size(&vhd, &fixed, u64::MAX / 2, 1 << 30).unwrap();
    assert_eq!(huge, 2040 << 30);
}

#[test]
fn smallest_safe_size_follows_stored_data() {
    use disk_core::{CreateSpec, Disk, Driver, Image, NoExtraFiles};
    let storage = Arc::new(MemStorage::new());
    let vhd = vhd1::VhdDriver;
    vhd.create(
        &*storage,
        CreateSpec {
            size: 16 << 20,
            options: Options::parse("block_size=1M").unwrap(),
            backing: None,
            path: None,
            files: &NoExtraFiles,
        },
    )
    .unwrap();
    let o = OpenOptions::new();
    let layer = vhd.open(storage.clone(), &o.context(None, true)).unwrap();
    assert_eq!(smallest_safe_size(&*layer).unwrap(), 0);
    let disk = Image::single(layer, None);
    disk.write((5 << 20) / 512, &[1u8; 512]).unwrap();
    disk.flush().unwrap();
    // Block granularity: the whole block holding the sector counts.
    assert_eq!(smallest_safe_size(disk.top()).unwrap(), 6 << 20);
    let shrink = ResizeOptions {
        shrink: true,
        ..ResizeOptions::default()
    };
    let e = plan(disk.top(), false, SizeChange::To(5 << 20), &shrink).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    plan(disk.top(), false, SizeChange::To(6 << 20), &shrink).unwrap();
    let lossy = ResizeOptions {
        allow_data_loss: true,
        ..shrink
    };
    plan(disk.top(), false, SizeChange::To(1 << 20), &lossy).unwrap();
}
