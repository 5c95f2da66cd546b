//! Parse arbitrary bytes as a VMDK text descriptor and check the render/parse round trip (see
//! `vdisk::fuzzing::vmdk_descriptor`, which the corpus replay test also runs).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vdisk::fuzzing::vmdk_descriptor(data));
