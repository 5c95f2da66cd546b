//! Image formats, and recognising them from content by asking each format's driver.

use crate::driver::Driver;
use crate::error::{Error, ErrorKind, Result};
use crate::storage::Storage;
use std::fmt;
use std::io;
use std::path::Path;
use std::str::FromStr;

/// A disk image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// A plain file: byte N of the file is byte N of the disk.
    Raw,
    /// VHD version 1 ("vpc" in QEMU): fixed, dynamic, differencing.
    Vhd,
    /// VHDX.
    Vhdx,
    /// VMDK, all subformats.
    Vmdk,
}

impl Format {
    /// Every format, in probing order.
    pub const ALL: [Format; 4] = [Format::Vhdx, Format::Vmdk, Format::Vhd, Format::Raw];

    /// The canonical name: `raw`, `vhd`, `vhdx`, `vmdk`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Vhd => "vhd",
            Format::Vhdx => "vhdx",
            Format::Vmdk => "vmdk",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = Error;

    /// Accepts the canonical names and `vpc` (QEMU's name for VHD), case-insensitively.
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "raw" => Ok(Format::Raw),
            "vhd" | "vpc" => Ok(Format::Vhd),
            "vhdx" => Ok(Format::Vhdx),
            "vmdk" => Ok(Format::Vmdk),
            _ => Err(Error::new(
                ErrorKind::UnknownFormat,
                format!("unknown format '{s}' (expected raw, vhd, vpc, vhdx or vmdk)"),
            )),
        }
    }
}

/// Recognise an image's format from its content by asking the format drivers.
///
/// Each driver's [`Driver::probe`] looks for its own magic and makes its own checks; they are
/// asked in the fixed order of [`Format::ALL`] (VHDX, VMDK, VHD), whatever the order of
/// `drivers`, and the first that recognises the content wins. Raw is asked last and takes
/// anything; content no driver claims is raw too. `name` (the file's path, when known) is only
/// a tie-breaker some drivers use (a VHD footer with a wrong checksum counts as VHD only when the
/// extension says VHD).
pub fn probe_with(drivers: &[&dyn Driver], storage: &dyn Storage, name: Option<&Path>) -> io::Result<Format> {
    for format in Format::ALL {
        for driver in drivers.iter().filter(|d| d.format() == format) {
            if driver.probe(storage, name)? {
                return Ok(format);
            }
        }
    }
    Ok(Format::Raw)
}

/// The first `max` bytes of `storage` (fewer when it is shorter): what probing looks at.
pub fn probe_head(storage: &dyn Storage, max: usize) -> io::Result<Vec<u8>> {
    let len = storage.len()?;
    let mut head = vec![0u8; max.min(usize::try_from(len).unwrap_or(max))];
    storage.read_at(&mut head, 0)?;
    Ok(head)
}

/// Whether `name` has one of the extensions `exts` (compared without case).
pub fn extension_is(name: Option<&Path>, exts: &[&str]) -> bool {
    name.and_then(|n| n.extension())
        .and_then(|e| e.to_str())
        .is_some_and(|e| exts.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::{CreateSpec, OpenContext};
    use crate::layer::Layer;
    use crate::raw::RawDriver;
    use crate::storage::MemStorage;
    use std::sync::Arc;

    /// Claims content that starts with its tag.
    struct Tagged(Format, &'static [u8]);

    impl Driver for Tagged {
        fn format(&self) -> Format {
            self.0
        }
        fn probe(&self, storage: &dyn Storage, _name: Option<&Path>) -> io::Result<bool> {
            Ok(probe_head(storage, 16)?.starts_with(self.1))
        }
        fn open(&self, _: Arc<dyn Storage>, _: &OpenContext<'_>) -> Result<Box<dyn Layer>> {
            Err(Error::unsupported("test driver"))
        }
        fn create(&self, _: &dyn Storage, _: CreateSpec<'_>) -> Result<()> {
            Err(Error::unsupported("test driver"))
        }
    }

    #[test]
    fn drivers_are_asked_in_the_fixed_order_raw_last() {
        let vhd = Tagged(Format::Vhd, b"ab");
        let vhdx = Tagged(Format::Vhdx, b"a");
        let drivers: [&dyn Driver; 3] = [&RawDriver, &vhd, &vhdx];
        let probe = |bytes: &[u8]| probe_with(&drivers, &MemStorage::from_bytes(bytes), None).unwrap();
        // VHDX is asked before VHD, and raw last, whatever the registration order.
        assert_eq!(probe(b"abc"), Format::Vhdx);
        assert_eq!(probe(b"xyz"), Format::Raw);
        assert_eq!(probe(b""), Format::Raw);
        // Unclaimed content is raw even without a raw driver.
        assert_eq!(
            probe_with(&[&vhd], &MemStorage::from_bytes(b"x"), None).unwrap(),
            Format::Raw
        );
    }

    #[test]
    fn head_and_extension() {
        assert_eq!(probe_head(&MemStorage::from_bytes(b"abc"), 2).unwrap(), b"ab");
        assert_eq!(probe_head(&MemStorage::from_bytes(b"abc"), 8).unwrap(), b"abc");
        assert!(extension_is(Some(Path::new("d.VHD")), &["vhd"]));
        assert!(!extension_is(Some(Path::new("d.img")), &["vhd"]));
        assert!(!extension_is(None, &["vhd"]));
    }

    #[test]
    fn format_names_parse() {
        assert_eq!("vpc".parse::<Format>().unwrap(), Format::Vhd);
        assert_eq!("VHDX".parse::<Format>().unwrap(), Format::Vhdx);
        assert_eq!("qcow2".parse::<Format>().unwrap_err().kind(), ErrorKind::UnknownFormat);
    }
}
