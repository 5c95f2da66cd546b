//! Which engine handles which format.

use disk_core::{Driver, Error, Format, RawDriver, Result};

/// The engine for `format`, or an [`ErrorKind::Unsupported`](disk_core::ErrorKind::Unsupported)
/// error for a format whose engine is not available yet.
pub fn driver(format: Format) -> Result<&'static dyn Driver> {
    drivers()
        .iter()
        .copied()
        .find(|d| d.format() == format)
        .ok_or_else(|| Error::unsupported(format!("the {format} format is not implemented yet")))
}

/// Every available engine.
pub fn drivers() -> &'static [&'static dyn Driver] {
    &[&RawDriver, &vhd1::VhdDriver, &vhdx::VhdxDriver, &vmdk::VmdkDriver]
}
