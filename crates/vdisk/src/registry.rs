//! Which engine handles which format, and recognising a format by asking each engine.

use disk_core::{Driver, Error, Format, RawDriver, Result, Storage};
use std::io;
use std::path::Path;

/// The engine for `format`, or an [`ErrorKind::Unsupported`](disk_core::ErrorKind::Unsupported)
/// error for a format whose engine is not available yet.
pub fn driver(format: Format) -> Result<&'static dyn Driver> {
    drivers()
        .iter()
        .copied()
        .find(|d| d.format() == format)
        .ok_or_else(|| Error::unsupported(format!("the {format} format is not implemented yet")))
}

/// Every available engine, in probing order (raw last).
pub fn drivers() -> &'static [&'static dyn Driver] {
    &[&vhdx::VhdxDriver, &vmdk::VmdkDriver, &vhd1::VhdDriver, &RawDriver]
}

/// Recognise an image's format from its content: each engine checks its own magic
/// ([`Driver::probe`]), asked in a fixed order (VHDX signature; VMDK sparse, COWD or seSparse
/// magic or a text descriptor; VHD cookie at 0 or footer at the end; otherwise raw). The file
/// name's extension is only a tie-breaker: a VHD footer whose checksum is wrong counts as VHD
/// only when the extension says VHD.
pub fn probe(storage: &dyn Storage, name: Option<&Path>) -> io::Result<Format> {
    disk_core::probe_with(drivers(), storage, name)
}
