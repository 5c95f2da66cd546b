//! The `ops_vhdx` fuzz target: see `vdisk::fuzzing::ops_vhdx`, which the corpus replay test also runs.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vdisk::fuzzing::ops_vhdx(data));
