//! Probe and open arbitrary bytes as an image, then read through it (see
//! `vdisk::fuzzing::probe_open`, which the corpus replay test also runs).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vdisk::fuzzing::probe_open(data));
