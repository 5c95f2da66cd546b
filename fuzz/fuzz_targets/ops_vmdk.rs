//! The `ops_vmdk` fuzz target: see `vdisk::fuzzing::ops_vmdk`, which the corpus replay test also runs.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vdisk::fuzzing::ops_vmdk(data));
