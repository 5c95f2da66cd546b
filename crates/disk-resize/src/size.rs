//! Size arguments: `SIZE`, `+SIZE`, `-SIZE`.

use disk_core::{Error, Result, parse_size};
use std::str::FromStr;

/// A requested size: absolute, or relative to the current size (`+SIZE`, `-SIZE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeChange {
    /// Set the size to exactly this many bytes.
    To(u64),
    /// Add this many bytes.
    Grow(u64),
    /// Remove this many bytes.
    Shrink(u64),
}

impl SizeChange {
    /// The new size for an image now `current` bytes large. Overflow past `u64::MAX` and shrinking
    /// by more than the current size are [`ErrorKind::InvalidArgument`](disk_core::ErrorKind)
    /// errors.
    pub fn apply(self, current: u64) -> Result<u64> {
        match self {
            SizeChange::To(n) => Ok(n),
            SizeChange::Grow(n) => current
                .checked_add(n)
                .ok_or_else(|| Error::invalid_argument(format!("growing {current} bytes by {n} bytes overflows"))),
            SizeChange::Shrink(n) => current.checked_sub(n).ok_or_else(|| {
                Error::invalid_argument(format!("cannot shrink an image of {current} bytes by {n} bytes"))
            }),
        }
    }
}

impl FromStr for SizeChange {
    type Err = Error;

    /// `SIZE`, `+SIZE` or `-SIZE`, where SIZE is what [`parse_size`] accepts.
    fn from_str(text: &str) -> Result<Self> {
        let t = text.trim();
        if let Some(rest) = t.strip_prefix('+') {
            Ok(SizeChange::Grow(parse_size(rest)?))
        } else if let Some(rest) = t.strip_prefix('-') {
            Ok(SizeChange::Shrink(parse_size(rest)?))
        } else {
            Ok(SizeChange::To(parse_size(t)?))
        }
    }
}
