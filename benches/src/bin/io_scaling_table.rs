//! Run the I/O-scaling workloads ([`vdisk_benches::io_scaling`]) a fixed number of times and print
//! a Markdown table of IOPS: one row per engine and workload, one column per thread count, and the
//! 16-thread rate over the 1-thread rate.
//!
//! `VDISK_IO_SCALING_IOS` sets the I/Os per cell (default 2000), `VDISK_BENCH_LATENCY_US` the
//! simulated device latency (default 200).
//!
//! ```text
//! cargo run --release -p vdisk-benches --bin io_scaling_table
//! ```

use vdisk_benches::io_scaling::{ENGINES, Runner, THREADS, Workload, iops, latency_from_env};

fn main() {
    let ios = std::env::var("VDISK_IO_SCALING_IOS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(2000);
    let latency = latency_from_env();
    println!(
        "Random 4 KiB I/O, IOPS; {ios} I/Os per cell; simulated device latency {} µs per operation.\n",
        latency.as_micros()
    );
    let columns: Vec<String> = THREADS
        .iter()
        .map(|t| format!("{t} thread{}", if *t == 1 { "" } else { "s" }))
        .collect();
    let last = THREADS[THREADS.len() - 1];
    println!(
        "| engine | workload | {} | {last}/{} |",
        columns.join(" | "),
        THREADS[0]
    );
    println!("|---|---|{}---:|", "---:|".repeat(THREADS.len()));
    for engine in ENGINES {
        let runner = Runner::new(engine, latency);
        for workload in Workload::ALL {
            let rates: Vec<f64> = THREADS
                .iter()
                .map(|&threads| {
                    let rate = iops(ios, runner.time(workload, threads, ios));
                    eprintln!("{} {} {threads}: {rate:.0} IOPS", engine.name, workload.name());
                    rate
                })
                .collect();
            let cells: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
            println!(
                "| {} | {} | {} | {:.2}x |",
                engine.name,
                workload.name(),
                cells.join(" | "),
                rates[rates.len() - 1] / rates[0]
            );
        }
    }
}
