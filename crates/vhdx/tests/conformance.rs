//! The workspace conformance suite (model, boundaries, read-only, discard, crash at every I/O
//! point, I/O errors) on dynamic, fixed, 4 KiB-sector and differencing VHDX images.
//!
//! The crash test is the slow one: it runs at full strength on the dynamic image and with fewer
//! crash points on the others, to keep CI short.

use disk_core::testing::{self, Capabilities, Config, DriverFactory, ImageFactory};

fn caps(frees: bool) -> Capabilities {
    Capabilities {
        discard_frees_space: frees,
        granularity: 1 << 20,
        ..Capabilities::default()
    }
}

fn light() -> Config {
    Config {
        max_crash_points: 40,
        ..Config::from_env()
    }
}

fn all_but_crash(f: &dyn ImageFactory) {
    testing::check_boundaries(f);
    testing::check_read_only(f);
    testing::check_discard(f);
    testing::check_concurrent_reads(f);
    testing::check_concurrent_writes(f);
    testing::check_model(f, &Config::from_env());
}

fn dynamic() -> DriverFactory {
    DriverFactory::new(vhdx::VhdxDriver)
        .with_options("block_size=1M")
        .with_capabilities(caps(true))
}

fn fixed() -> DriverFactory {
    DriverFactory::new(vhdx::VhdxDriver)
        .with_options("subformat=fixed,block_size=1M")
        .with_capabilities(caps(false))
}

fn sector_4k() -> DriverFactory {
    DriverFactory::new(vhdx::VhdxDriver)
        .with_options("block_size=2M,logical_sector_size=4096")
        .with_capabilities(caps(true))
}

#[test]
fn dynamic_checks() {
    all_but_crash(&dynamic());
}

#[test]
fn dynamic_crash() {
    testing::check_crash_consistency(&dynamic(), &Config::from_env());
}

#[test]
fn dynamic_io_errors() {
    testing::check_io_errors(&dynamic(), &Config::from_env());
}

#[test]
fn fixed_checks() {
    all_but_crash(&fixed());
    testing::check_io_errors(&fixed(), &light());
}

#[test]
fn fixed_crash() {
    testing::check_crash_consistency(&fixed(), &light());
}

#[test]
fn sector_4k_checks() {
    all_but_crash(&sector_4k());
    testing::check_io_errors(&sector_4k(), &light());
}

#[test]
fn sector_4k_crash() {
    testing::check_crash_consistency(&sector_4k(), &light());
}
