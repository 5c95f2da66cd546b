//! The `multi_file` fuzz target: see `vdisk::fuzzing::multi_file`, which the corpus replay test also runs.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vdisk::fuzzing::multi_file(data));
