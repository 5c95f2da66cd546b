//! Random 4 KiB I/O from 1, 4 and 16 threads on one image: does an engine overlap I/Os or
//! serialise them? Images live in memory behind a simulated device latency
//! (`VDISK_BENCH_LATENCY_US`, default 200 µs per read, write, flush and `set_len`); see
//! [`vdisk_benches::io_scaling`] for the workloads.
//!
//! Groups are `io-scaling/<engine>/<workload>` with one benchmark per thread count; throughput is
//! counted in I/Os, so criterion's `elem/s` reads as IOPS. Runs are short (10 samples, 2 s each).
//!
//! ```text
//! cargo bench -p vdisk-benches --bench io_scaling
//! cargo bench -p vdisk-benches --bench io_scaling -- 'io-scaling/vhdx.*/allocating'
//! ```
//!
//! For one table of all results, run the `io_scaling_table` binary instead.

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use vdisk_benches::io_scaling::{ENGINES, Runner, THREADS, Workload, latency_from_env};

fn io_scaling(c: &mut Criterion) {
    let latency = latency_from_env();
    for engine in ENGINES {
        let runner = Runner::new(engine, latency);
        for workload in Workload::ALL {
            let mut group = c.benchmark_group(format!("io-scaling/{}/{}", engine.name, workload.name()));
            group.throughput(Throughput::Elements(1));
            for threads in THREADS {
                group.bench_function(BenchmarkId::from_parameter(threads), |b| {
                    b.iter_custom(|iters| runner.time(workload, threads, iters))
                });
            }
            group.finish();
        }
    }
}

criterion_group! {
    name = benches;
    config = vdisk_benches::criterion_config();
    targets = io_scaling
}
criterion_main!(benches);
