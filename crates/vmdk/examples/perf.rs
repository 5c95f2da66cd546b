//! Rough throughput numbers (development aid, run with --release):
//! `perf RAW` converts RAW to streamOptimized and monolithicSparse with this engine, then reads
//! the sparse image sequentially and the raw file, printing MB/s.
#[path = "../tests/common/mod.rs"]
mod common;
use disk_core::{Disk, Image, RawLayer, Storage};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

fn main() {
    let raw = std::env::args().nth(1).expect("RAW");
    let raw = Path::new(&raw);
    let dir = raw.parent().unwrap();
    let size = std::fs::metadata(raw).unwrap().len();
    let src = Arc::new(disk_core::FileStorage::open(raw, false).unwrap());
    let src = Image::single(Box::new(RawLayer::open(src, false).unwrap()), None);
    let mb = size as f64 / 1e6;
    for (name, opts) in [("stream", "subformat=streamOptimized"), ("sparse", "")] {
        let out = dir.join(format!("perf-{name}.vmdk"));
        common::create(&out, size, opts, None).unwrap();
        let t = Instant::now();
        let disk = common::open(&out, true).unwrap();
        disk_core::ops::copy(&src, &disk, Default::default()).unwrap();
        disk.flush().unwrap();
        let s = t.elapsed().as_secs_f64();
        println!("convert to {name}: {s:.2} s, {:.0} MB/s", mb / s);
    }
    let read = |disk: &dyn Disk, what: &str| {
        let t = Instant::now();
        let mut buf = vec![0u8; 1 << 20];
        let mut lba = 0;
        while lba < disk.sector_count() {
            let n = (disk.sector_count() - lba).min(2048);
            disk.read(lba, &mut buf[..(n * 512) as usize]).unwrap();
            lba += n;
        }
        let s = t.elapsed().as_secs_f64();
        println!("sequential read {what}: {:.0} MB/s", mb / s);
    };
    let sparse = common::open(&dir.join("perf-sparse.vmdk"), false).unwrap();
    read(&sparse, "monolithicSparse");
    read(&src, "raw");
    let stream = common::open(&dir.join("perf-stream.vmdk"), false).unwrap();
    read(&stream, "streamOptimized");
    let _ = Storage::len(&*Arc::new(disk_core::MemStorage::new()));
}
