//! Sequential-read throughput of a fully allocated dynamic VHD against the raw file baseline.
//!
//! `cargo run --release -p vhd1 --example seqread [DIR] [MiB]` (default: the temp dir, 512 MiB).

use disk_core::{CreateSpec, Disk, Driver, FileStorage, Image, NoExtraFiles, OpenOptions, Options, Storage};
use std::sync::Arc;
use std::time::Instant;
use vhd1::VhdDriver;

fn main() -> disk_core::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let mib: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(512);
    let size = mib << 20;
    let vhd_path = dir.join("seqread-bench.vhd");
    let raw_path = dir.join("seqread-bench.raw");

    let storage = FileStorage::create(&vhd_path, true).unwrap();
    VhdDriver.create(
        &storage,
        CreateSpec {
            size,
            options: Options::new(),
            backing: None,
            path: Some(&vhd_path),
            files: &NoExtraFiles,
        },
    )?;
    drop(storage);
    let opts = OpenOptions::new().writable(true);
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::open(&vhd_path, true).unwrap());
    let disk = Image::single(VhdDriver.open(storage, &opts.context(Some(&vhd_path), true))?, None);
    let raw = FileStorage::create(&raw_path, true).unwrap();
    let chunk = 4usize << 20;
    let mut buf = vec![0u8; chunk];
    let t = Instant::now();
    for (i, off) in (0..size).step_by(chunk).enumerate() {
        buf.fill(i as u8 | 1);
        raw.write_at(&buf, off).unwrap();
    }
    raw.flush().unwrap();
    let raw_fill = t.elapsed();
    let t = Instant::now();
    for (i, off) in (0..size).step_by(chunk).enumerate() {
        buf.fill(i as u8 | 1);
        disk.write(off / 512, &buf)?;
    }
    disk.flush()?;
    println!(
        "allocating writes of {mib} MiB in 4 MiB pieces, then flush: raw {raw_fill:.2?}, vhd dynamic {:.2?}",
        t.elapsed()
    );

    for read_size in [64usize << 10, 1 << 20, 4 << 20] {
        let mut buf = vec![0u8; read_size];
        let mut best_raw = f64::MAX;
        let mut best_vhd = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            for off in (0..size).step_by(read_size) {
                raw.read_at(&mut buf, off).unwrap();
            }
            best_raw = best_raw.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            for off in (0..size).step_by(read_size) {
                disk.read(off / 512, &mut buf)?;
            }
            best_vhd = best_vhd.min(t.elapsed().as_secs_f64());
        }
        let mb = size as f64 / (1 << 20) as f64;
        println!(
            "reads of {:>5} KiB: raw {:>7.0} MiB/s, vhd dynamic {:>7.0} MiB/s, ratio {:.0}%",
            read_size >> 10,
            mb / best_raw,
            mb / best_vhd,
            100.0 * best_raw / best_vhd
        );
    }
    let _ = std::fs::remove_file(&vhd_path);
    let _ = std::fs::remove_file(&raw_path);
    Ok(())
}
