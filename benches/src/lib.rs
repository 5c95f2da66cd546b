//! Benchmarks live in `benches/`; this library holds workload code they share with the binaries
//! in `src/bin/`.

pub mod io_scaling;
