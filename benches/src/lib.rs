//! Benchmarks live in `benches/`; this library holds workload code they share with the binaries
//! in `src/bin/`.

pub mod io_scaling;

/// The criterion settings every bench here uses: short runs (10 samples of 2 s after 0.5 s of
/// warm-up); pass criterion's own flags for longer ones.
pub fn criterion_config() -> criterion::Criterion {
    criterion::Criterion::default()
        .sample_size(10)
        .measurement_time(std::time::Duration::from_secs(2))
        .warm_up_time(std::time::Duration::from_millis(500))
}
