//! Sequential and random reads and writes of 4 KiB and 64 KiB through [`Disk`], one row per
//! format, next to the same I/O done with `pread`/`pwrite` on a plain file (the `file` row) so a
//! format's overhead reads directly off the report.
//!
//! Every image is a host file in a temporary directory, created through the facade and fully
//! written first (reads hit data, writes overwrite in place). Sizes: `VDISK_BENCH_MIB` (default
//! 256). Runs are kept short (10 samples, 2 s each); pass criterion's own flags for more.
//!
//! ```text
//! cargo bench -p vdisk-benches                      # everything
//! cargo bench -p vdisk-benches -- 'read-rand-4k'    # one group
//! ```

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;
use vdisk::{CreateOptions, Disk, Format, Image, OpenOptions, Options};

/// Creates an image of a format at a path with a virtual size.
type CreateFn = fn(&Path, u64) -> vdisk::Result<()>;

/// The formats benchmarked: adding one is one line (name, how to create it).
const FORMATS: &[(&str, CreateFn)] = &[
    ("raw", |path, size| create(path, size, Format::Raw, "")),
    ("vhd-dynamic", |path, size| {
        create(path, size, Format::Vhd, "subformat=dynamic")
    }),
    ("vhdx-dynamic", |path, size| create(path, size, Format::Vhdx, "")),
    ("vmdk-sparse", |path, size| {
        create(path, size, Format::Vmdk, "subformat=monolithicSparse")
    }),
];

fn create(path: &Path, size: u64, format: Format, options: &str) -> vdisk::Result<()> {
    let mut opts = CreateOptions::new(format, size);
    opts.options = Options::parse(options)?;
    vdisk::create(path, &opts)
}

/// The sizes of the I/Os.
const IO_SIZES: [(&str, usize); 2] = [("4k", 4 << 10), ("64k", 64 << 10)];

/// Distinct, non-zero bytes, so no layer can take a zero shortcut.
fn fill_byte(i: usize) -> u8 {
    (i % 251) as u8 + 1
}

fn image_size() -> u64 {
    std::env::var("VDISK_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(256)
        << 20
}

/// Offsets (in units of `io`) for sequential or random access over `blocks` units.
struct Cursor {
    next: u64,
    blocks: u64,
    random: bool,
}

impl Cursor {
    fn new(blocks: u64, random: bool) -> Self {
        Cursor {
            next: 0,
            blocks,
            random,
        }
    }

    fn advance(&mut self) -> u64 {
        if self.random {
            // A 64-bit LCG (Knuth's MMIX constants), high bits.
            self.next = self
                .next
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.next >> 33) % self.blocks
        } else {
            let n = self.next;
            self.next = (n + 1) % self.blocks;
            n
        }
    }
}

/// One fully written image per format plus the baseline file, all in one temporary directory.
struct Fixture {
    dir: tempfile::TempDir,
    images: Vec<(&'static str, Image)>,
    baseline: File,
    size: u64,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let size = image_size();
    let chunk: Vec<u8> = (0..1 << 20).map(fill_byte).collect();

    let mut images = Vec::new();
    for &(name, create) in FORMATS {
        let path = dir.path().join(format!("bench.{name}"));
        create(&path, size).unwrap_or_else(|e| panic!("creating {name}: {e}"));
        let disk = vdisk::open(&path, &OpenOptions::new().writable(true)).expect("open");
        let ss = u64::from(disk.sector_size());
        for offset in (0..size).step_by(chunk.len()) {
            let n = (size - offset).min(chunk.len() as u64) as usize;
            disk.write(offset / ss, &chunk[..n]).expect("fill");
        }
        disk.flush().expect("flush");
        images.push((name, disk));
    }

    let path = dir.path().join("baseline.bin");
    let baseline = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .expect("baseline");
    for offset in (0..size).step_by(chunk.len()) {
        let n = (size - offset).min(chunk.len() as u64) as usize;
        baseline.write_all_at(&chunk[..n], offset).expect("fill baseline");
    }
    baseline.sync_all().expect("sync baseline");
    Fixture {
        dir,
        images,
        baseline,
        size,
    }
}

fn disk_io(c: &mut Criterion) {
    let fx = fixture();
    for write in [false, true] {
        for random in [false, true] {
            for (io_name, io) in IO_SIZES {
                let group_name = format!(
                    "{}-{}-{io_name}",
                    if write { "write" } else { "read" },
                    if random { "rand" } else { "seq" }
                );
                let mut group = c.benchmark_group(group_name);
                group.throughput(Throughput::Bytes(io as u64));
                let blocks = fx.size / io as u64;
                let mut buf: Vec<u8> = (0..io).map(fill_byte).collect();

                group.bench_function(BenchmarkId::from_parameter("file"), |b| {
                    let mut cursor = Cursor::new(blocks, random);
                    b.iter(|| {
                        let offset = cursor.advance() * io as u64;
                        if write {
                            fx.baseline.write_all_at(&buf, offset).expect("pwrite");
                        } else {
                            fx.baseline.read_exact_at(&mut buf, offset).expect("pread");
                        }
                    })
                });
                for (name, disk) in &fx.images {
                    let ss = u64::from(disk.sector_size());
                    group.bench_function(BenchmarkId::from_parameter(name), |b| {
                        let mut cursor = Cursor::new(blocks, random);
                        b.iter(|| {
                            let lba = cursor.advance() * io as u64 / ss;
                            if write {
                                disk.write(lba, &buf).expect("write");
                            } else {
                                disk.read(lba, &mut buf).expect("read");
                            }
                        })
                    });
                }
                group.finish();
            }
        }
    }

    // Allocating writes: every iteration fills a fresh image front to back (64 KiB writes) and
    // flushes, so each write allocates a block/grain (the raw row is the file system's cost).
    let alloc_size = (image_size() / 4).max(1 << 20);
    let mut group = c.benchmark_group("write-alloc-seq-64k");
    group.throughput(Throughput::Bytes(alloc_size));
    let buf: Vec<u8> = (0..64 << 10).map(fill_byte).collect();
    for &(name, create) in FORMATS {
        let path = fx.dir.path().join(format!("alloc.{name}"));
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    let _ = std::fs::remove_file(&path);
                    create(&path, alloc_size).expect("create");
                    let disk = vdisk::open(&path, &OpenOptions::new().writable(true)).expect("open");
                    let ss = u64::from(disk.sector_size());
                    let start = std::time::Instant::now();
                    for offset in (0..alloc_size).step_by(buf.len()) {
                        disk.write(offset / ss, &buf).expect("write");
                    }
                    disk.flush().expect("flush");
                    total += start.elapsed();
                }
                total
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("open");
    for (name, _) in &fx.images {
        let path = fx.dir.path().join(format!("bench.{name}"));
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| vdisk::open(&path, &OpenOptions::new()).expect("open"))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = vdisk_benches::criterion_config();
    targets = disk_io
}
criterion_main!(benches);
