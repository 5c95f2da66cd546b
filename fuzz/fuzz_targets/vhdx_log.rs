//! The `vhdx_log` fuzz target: see `vdisk::fuzzing::vhdx_log`, which the corpus replay test also runs.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vdisk::fuzzing::vhdx_log(data));
