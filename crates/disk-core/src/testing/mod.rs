//! Test support for every crate of the workspace (feature `test-util`).
//!
//! - [`FaultyStorage`]: wraps a [`Storage`](crate::Storage), counts operations and fails the Nth
//!   read, write, flush or `set_len` with an I/O error.
//! - [`CrashStorage`]: in-memory storage that loses power at the Nth write or flush and rebuilds
//!   what the medium would hold afterwards ([`CrashMode`]: all unflushed writes lost, all landed,
//!   the crashing write torn, a seeded subset landed).
//! - [`LatencyStorage`]: wraps a [`Storage`](crate::Storage) and sleeps a fixed time before each
//!   I/O, to measure or race engines as if on a slow device while the bytes stay in memory.
//! - The **conformance suite** every format engine runs: implement [`ImageFactory`] (or use
//!   [`DriverFactory`]) and call [`run_conformance`], or expand
//!   [`conformance_tests!`](crate::conformance_tests) for one `#[test]` per check. The model
//!   ([`Model`], [`Op`]) and strategies are public for engines' own property tests.
//! - [`interop`]: for tests against other tools and real images: host tools, the manifests'
//!   content digest, `../shared/testdata` and its `manifest.json`.
//!
//! ```
//! use disk_core::RawDriver;
//! use disk_core::testing::{Capabilities, Config, DriverFactory, run_conformance_with};
//!
//! let raw = DriverFactory::new(RawDriver)
//!     .with_capabilities(Capabilities { discard_frees_space: true, ..Capabilities::default() })
//!     .with_size(256 << 10);
//! run_conformance_with(&raw, &Config { max_crash_points: 8, ..Config::with_cases(2) });
//! ```
//!
//! The number of random cases follows `PROPTEST_CASES` (default 24; the crash test runs an eighth
//! of that, at least 2).

mod checks;
mod conformance;
mod crash;
mod crash_check;
mod faulty;
pub mod interop;
mod latency;
#[cfg(target_os = "linux")]
mod loop_device;
mod model;
mod strategy;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod toy;

pub use checks::{
    check_boundaries, check_concurrent_reads, check_concurrent_writes, check_discard, check_model, check_read_only,
    verify_block_status,
};
pub use conformance::{Capabilities, DEFAULT_SIZE, DriverFactory, ImageFactory, run_conformance, run_conformance_with};
pub use crash::{CrashMode, CrashPoint, CrashStorage, for_each_crash};
pub use crash_check::{check_crash_consistency, check_io_errors};
pub use faulty::{FaultPlan, FaultyStorage, OpCounts};
pub use latency::LatencyStorage;
#[cfg(target_os = "linux")]
pub use loop_device::LoopDevice;
pub use model::{
    Model, Op, SectorContent, compare_read, compare_with_model, decode_sector, fill_pattern, pattern_run, scan_disk,
};
pub use strategy::{Config, fixed_sequence, op_strategy, ops_strategy, range_strategy};
