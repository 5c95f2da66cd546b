//! The I/O-scaling workloads: random 4 KiB I/O from 1, 4 and 16 threads on one image, to show
//! whether an engine lets I/Os overlap or serialises them.
//!
//! Every image lives in memory ([`MemStorage`]) behind a [`LatencyStorage`] that sleeps before each
//! read, write, flush and `set_len` (`VDISK_BENCH_LATENCY_US`, default 200 µs), like a device with
//! a queue: an engine that holds a lock across its data I/O gets no faster with more threads, one
//! that overlaps I/Os approaches `threads ×` the single-thread rate.
//!
//! Workloads ([`Workload`]):
//! - `overwrite-4k`: random 4 KiB writes to an image of [`PREFILLED_SIZE`] whose every block is
//!   already allocated (written once, untimed);
//! - `allocating-4k`: random 4 KiB writes to a fresh image of [`ALLOCATING_SIZE`], so nearly every
//!   write allocates a block or grain, and one flush at the end (timed);
//! - `read-4k`: random 4 KiB reads of the pre-filled image.
//!
//! Used by the criterion bench `benches/io_scaling.rs` and by the `io_scaling_table` binary.

use disk_core::testing::LatencyStorage;
use disk_core::{CreateSpec, Disk, Format, Image, MemStorage, NoExtraFiles, OpenOptions, Options, Storage};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

/// An engine and the options its images are created with.
#[derive(Debug, Clone, Copy)]
pub struct Engine {
    /// Short name for reports (`vhd-dynamic`).
    pub name: &'static str,
    /// The format.
    pub format: Format,
    /// Create options (`key=value,...`).
    pub options: &'static str,
}

/// The engines measured: VHD dynamic (2 MiB blocks), VHDX dynamic with 1 MiB blocks, VMDK
/// monolithicSparse (64 KiB grains).
pub const ENGINES: [Engine; 3] = [
    Engine {
        name: "vhd-dynamic",
        format: Format::Vhd,
        options: "subformat=dynamic",
    },
    Engine {
        name: "vhdx-dynamic-1m",
        format: Format::Vhdx,
        options: "subformat=dynamic,block_size=1M",
    },
    Engine {
        name: "vmdk-sparse",
        format: Format::Vmdk,
        options: "subformat=monolithicSparse",
    },
];

/// What the threads do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Random 4 KiB writes to allocated blocks.
    Overwrite,
    /// Random 4 KiB writes to a fresh, huge image (nearly all allocate), then one flush.
    Allocating,
    /// Random 4 KiB reads of allocated blocks.
    Read,
}

impl Workload {
    /// Every workload, in report order.
    pub const ALL: [Workload; 3] = [Workload::Overwrite, Workload::Allocating, Workload::Read];

    /// Its name in reports (`overwrite-4k`).
    pub fn name(self) -> &'static str {
        match self {
            Workload::Overwrite => "overwrite-4k",
            Workload::Allocating => "allocating-4k",
            Workload::Read => "read-4k",
        }
    }
}

/// The thread counts measured.
pub const THREADS: [usize; 3] = [1, 4, 16];

/// Size of every I/O.
pub const IO_SIZE: usize = 4 << 10;

/// Virtual size of the pre-filled image (overwrite and read workloads).
pub const PREFILLED_SIZE: u64 = 64 << 20;

/// Virtual size of the fresh images of the allocating workload: big enough that random 4 KiB
/// writes rarely land in a block or grain that is already allocated.
pub const ALLOCATING_SIZE: u64 = 64 << 30;

/// The allocating workload starts a fresh image after this many writes (each allocation costs the
/// in-memory storage up to two 64 KiB chunks, so this bounds memory); every round is timed and
/// ends with its flush.
pub const ALLOCATING_ROUND: u64 = 2048;

/// Simulated device latency when `VDISK_BENCH_LATENCY_US` is not set, in microseconds.
pub const DEFAULT_LATENCY_US: u64 = 200;

/// The simulated device latency: `VDISK_BENCH_LATENCY_US` microseconds, default
/// [`DEFAULT_LATENCY_US`].
pub fn latency_from_env() -> Duration {
    let us = std::env::var("VDISK_BENCH_LATENCY_US")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(DEFAULT_LATENCY_US);
    Duration::from_micros(us)
}

/// Create an empty image of `engine` and `size` bytes in memory (no latency).
fn create_in_memory(engine: &Engine, size: u64) -> Arc<MemStorage> {
    let storage = Arc::new(MemStorage::new());
    let spec = CreateSpec {
        size,
        options: Options::parse(engine.options).expect("engine options parse"),
        backing: None,
        path: None,
        files: &NoExtraFiles,
    };
    vdisk::driver(engine.format)
        .and_then(|d| d.create(&*storage, spec))
        .unwrap_or_else(|e| panic!("creating a {} image: {e}", engine.name));
    storage
}

/// Open the image in `storage` writable.
fn open_writable(engine: &Engine, storage: Arc<dyn Storage>) -> Image {
    let options = OpenOptions::new().writable(true).format(Some(engine.format));
    vdisk::open_storage(storage, None, &options).unwrap_or_else(|e| panic!("opening the {} image: {e}", engine.name))
}

/// Runs the workloads of one engine; the pre-filled image is built on first use and kept.
pub struct Runner {
    engine: Engine,
    latency: Duration,
    prefilled: OnceLock<Image>,
    seed: AtomicU64,
}

impl Runner {
    /// A runner for `engine` on a simulated device with `latency`.
    pub fn new(engine: Engine, latency: Duration) -> Self {
        Runner {
            engine,
            latency,
            prefilled: OnceLock::new(),
            seed: AtomicU64::new(1),
        }
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The image of [`PREFILLED_SIZE`] with every byte written (in 1 MiB writes, without latency),
    /// reopened writable behind the latency.
    fn prefilled(&self) -> &Image {
        self.prefilled.get_or_init(|| {
            let mem = create_in_memory(&self.engine, PREFILLED_SIZE);
            let disk = open_writable(&self.engine, mem.clone());
            let ss = u64::from(disk.sector_size());
            let chunk: Vec<u8> = (0..1usize << 20).map(|i| (i % 251) as u8 + 1).collect();
            for offset in (0..PREFILLED_SIZE).step_by(chunk.len()) {
                let n = (PREFILLED_SIZE - offset).min(chunk.len() as u64) as usize;
                disk.write(offset / ss, &chunk[..n]).expect("pre-filling the image");
            }
            disk.flush().expect("flushing the pre-filled image");
            drop(disk);
            open_writable(&self.engine, Arc::new(LatencyStorage::new(mem, self.latency)))
        })
    }

    /// A fresh image of [`ALLOCATING_SIZE`], opened writable behind the latency.
    fn fresh(&self) -> Image {
        let mem = create_in_memory(&self.engine, ALLOCATING_SIZE);
        open_writable(&self.engine, Arc::new(LatencyStorage::new(mem, self.latency)))
    }

    /// Do `ios` I/Os of `workload` from `threads` threads (spread evenly) and return the time they
    /// took, excluding setup (creating, pre-filling, opening images, starting threads).
    pub fn time(&self, workload: Workload, threads: usize, ios: u64) -> Duration {
        let seed = self.seed.fetch_add(1, Ordering::Relaxed) << 32;
        match workload {
            Workload::Overwrite => run_threads(self.prefilled(), PREFILLED_SIZE, threads, ios, seed, true),
            Workload::Read => run_threads(self.prefilled(), PREFILLED_SIZE, threads, ios, seed, false),
            Workload::Allocating => {
                let mut total = Duration::ZERO;
                let mut left = ios;
                let mut round = 0;
                while left > 0 {
                    let n = left.min(ALLOCATING_ROUND);
                    let disk = self.fresh();
                    total += run_threads(&disk, ALLOCATING_SIZE, threads, n, seed + round, true);
                    let start = Instant::now();
                    disk.flush().expect("flush");
                    total += start.elapsed();
                    left -= n;
                    round += 1;
                }
                total
            }
        }
    }
}

/// Do `ios` random 4 KiB writes (or reads) over the first `size` bytes of `disk` from `threads`
/// threads; time from the moment all threads are ready until the last one is done.
fn run_threads(disk: &Image, size: u64, threads: usize, ios: u64, seed: u64, write: bool) -> Duration {
    let threads = threads.max(1);
    let ss = u64::from(disk.sector_size());
    let slots = size / IO_SIZE as u64;
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads as u64)
            .map(|t| {
                let share = ios / threads as u64 + u64::from(t < ios % threads as u64);
                let barrier = &barrier;
                scope.spawn(move || {
                    let mut rng = disk_core::SplitMix64::new(seed ^ t.wrapping_mul(0xd1b5_4a32_d192_ed03));
                    let mut buf: Vec<u8> = (0..IO_SIZE).map(|i| (i as u64 + t) as u8 | 1).collect();
                    barrier.wait();
                    for _ in 0..share {
                        let lba = rng.next_u64() % slots * IO_SIZE as u64 / ss;
                        if write {
                            disk.write(lba, &buf).expect("write");
                        } else {
                            disk.read(lba, &mut buf).expect("read");
                        }
                    }
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        for h in handles {
            if let Err(panic) = h.join() {
                std::panic::resume_unwind(panic);
            }
        }
        start.elapsed()
    })
}

/// I/Os per second for `ios` I/Os that took `time`.
pub fn iops(ios: u64, time: Duration) -> f64 {
    ios as f64 / time.as_secs_f64().max(f64::MIN_POSITIVE)
}
