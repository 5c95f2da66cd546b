//! Size arithmetic: bytes a new image needs (`qemu-img measure`), and the largest virtual size
//! whose fully allocated image fits a given file size (a host quota).

use disk_core::{Driver, Error, MeasureSource, Measurement, Options, Result};

/// Bytes a new image of `driver`'s format, created with `options` (`-o`), needs for `source`.
pub fn measure(driver: &dyn Driver, options: &Options, source: &MeasureSource) -> Result<Measurement> {
    driver.measure(options, source)
}

/// The largest virtual size (a whole number of `granularity` bytes, e.g. 512 or 1 MiB for
/// Azure) whose image, created with `options`, stays within `file_size` bytes once every block
/// is written: for a host that caps the file. Errors when not even one unit fits.
pub fn fitting_size(driver: &dyn Driver, options: &Options, file_size: u64, granularity: u64) -> Result<u64> {
    let unit = granularity.max(1);
    let needs = |units: u64| -> Result<u64> {
        let m = driver.measure(options, &MeasureSource::empty(units * unit))?;
        Ok(m.fully_allocated)
    };
    if needs(1)? > file_size {
        return Err(Error::invalid_argument(format!(
            "a {} image of {unit} bytes already needs more than {file_size} bytes",
            driver.format()
        )));
    }
    // The file is never smaller than the virtual size it holds, so this bounds the search.
    let (mut lo, mut hi) = (1u64, file_size / unit + 1);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        match needs(mid) {
            Ok(n) if n <= file_size => lo = mid,
            Ok(_) => hi = mid,
            // Past the format's maximum size.
            Err(_) => hi = mid,
        }
    }
    Ok(lo * unit)
}
