//! Grow and shrink virtual disk images, and file-size/virtual-size arithmetic.
//!
//! - [`SizeChange`] parses the size argument of `vdisk resize` (`10G`, `+1G`, `-512M`) and applies
//!   it to a current size with overflow and underflow checks.
//! - [`resize`] / [`resize_storage`] change an image's virtual size. Only raw images are handled
//!   so far; the other formats answer with an [`ErrorKind::Unsupported`] error.
//! - [`measure`] says how many bytes a new image of some format needs for a given content, as
//!   `qemu-img measure` does. Only raw output is handled so far.
//!
//! ```
//! use disk_resize::{ResizeOptions, SizeChange, resize_storage};
//! use disk_core::{Format, MemStorage, Storage};
//!
//! let storage = MemStorage::new();
//! storage.set_len(1 << 20)?;
//! let change: SizeChange = "+1M".parse()?;
//! let done = resize_storage(&storage, Format::Raw, change, &ResizeOptions::default())?;
//! assert_eq!((done.old_size, done.new_size), (1 << 20, 2 << 20));
//! assert_eq!(storage.len()?, 2 << 20);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

use disk_core::{Error, ErrorKind, FileStorage, Format, IoResultExt, Options, Result, ResultExt, Storage, parse_size};
use std::path::Path;
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
    /// by more than the current size are [`ErrorKind::InvalidArgument`] errors.
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

/// How [`resize`] may change an image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResizeOptions {
    /// Allow the new size to be smaller than the current one (data past the new end is lost).
    pub shrink: bool,
    /// The image format; `None` probes it from the content.
    pub format: Option<Format>,
}

/// What [`resize`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resized {
    /// The image's format.
    pub format: Format,
    /// Virtual size before, in bytes.
    pub old_size: u64,
    /// Virtual size after, in bytes.
    pub new_size: u64,
}

/// Change the virtual size of the image at `path`.
///
/// The file is opened for writing only after the request has been checked; a refused request
/// (shrinking without [`ResizeOptions::shrink`], a zero size, an unsupported format) leaves it
/// untouched.
pub fn resize(path: impl AsRef<Path>, change: SizeChange, options: &ResizeOptions) -> Result<Resized> {
    let path = path.as_ref();
    let open =
        |writable| FileStorage::open(path, writable).map_err(|e| Error::io(e, "cannot open image").with_file(path));
    let storage = open(false)?;
    let format = match options.format {
        Some(f) => f,
        None => disk_core::probe(&storage, Some(path))
            .map_err(|e| Error::io(e, "probing the image format"))
            .with_file(path)?,
    };
    // Check everything on the read-only handle first, then reopen for writing.
    plan(&storage, format, change, options).with_file(path)?;
    drop(storage);
    let storage = open(true)?;
    resize_storage(&storage, format, change, options).with_file(path)
}

/// Change the virtual size of an image of `format` held in `storage`.
pub fn resize_storage(
    storage: &dyn Storage,
    format: Format,
    change: SizeChange,
    options: &ResizeOptions,
) -> Result<Resized> {
    let planned = plan(storage, format, change, options)?;
    match format {
        Format::Raw => {
            if planned.new_size != planned.old_size {
                storage
                    .set_len(planned.new_size)
                    .io_context("changing the file size", planned.new_size)?;
                storage.flush().io_context("flushing the resized image", 0)?;
            }
            Ok(planned)
        }
        other => Err(not_implemented(other)),
    }
}

/// Validate a resize without changing anything.
fn plan(storage: &dyn Storage, format: Format, change: SizeChange, options: &ResizeOptions) -> Result<Resized> {
    if format != Format::Raw {
        return Err(not_implemented(format));
    }
    let old_size = storage.len().io_context("reading the file size", 0)?;
    let new_size = change.apply(old_size)?;
    if new_size == 0 {
        return Err(Error::invalid_argument("the new image size must be positive"));
    }
    if new_size < old_size && !options.shrink {
        return Err(Error::invalid_argument(format!(
            "shrinking from {old_size} to {new_size} bytes deletes the data past the new end; use --shrink to do it"
        )));
    }
    Ok(Resized {
        format,
        old_size,
        new_size,
    })
}

fn not_implemented(format: Format) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!("resizing {format} images is not implemented yet"),
    )
}

/// The content a new image is measured for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeasureInput {
    /// An empty image of this virtual size (`measure --size`).
    Size(u64),
    /// A copy of an existing disk.
    Image {
        /// Its virtual size in bytes.
        virtual_size: u64,
        /// Bytes of it that hold data (allocated in some layer of its chain).
        allocated: u64,
    },
}

/// How many bytes a new image needs, as `qemu-img measure` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measurement {
    /// Bytes needed for the given content.
    pub required: u64,
    /// Bytes needed once every block of the disk is written.
    pub fully_allocated: u64,
}

/// Measure a new image of `format`, created with `options` (`-o`), holding `input`.
///
/// For raw output, `required` is the data that a sparse copy stores (the size itself for an
/// empty image, as `qemu-img` counts it) and `fully_allocated` the virtual size.
pub fn measure(format: Format, options: &Options, input: MeasureInput) -> Result<Measurement> {
    match format {
        Format::Raw => {
            options.clone().finish()?;
            Ok(match input {
                MeasureInput::Size(size) => Measurement {
                    required: size,
                    fully_allocated: size,
                },
                MeasureInput::Image {
                    virtual_size,
                    allocated,
                } => Measurement {
                    required: allocated.min(virtual_size),
                    fully_allocated: virtual_size,
                },
            })
        }
        other => Err(Error::new(
            ErrorKind::Unsupported,
            format!("measuring the size of {other} images is not implemented yet"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use disk_core::MemStorage;

    #[test]
    fn size_changes_parse_and_apply() {
        assert_eq!("10G".parse::<SizeChange>().unwrap(), SizeChange::To(10 << 30));
        assert_eq!("+1M".parse::<SizeChange>().unwrap(), SizeChange::Grow(1 << 20));
        assert_eq!("-512K".parse::<SizeChange>().unwrap(), SizeChange::Shrink(512 << 10));
        assert!("+".parse::<SizeChange>().is_err());
        assert!("--1".parse::<SizeChange>().is_err());
        assert!("1Q".parse::<SizeChange>().is_err());
        assert_eq!(SizeChange::Grow(5).apply(10).unwrap(), 15);
        assert_eq!(SizeChange::Shrink(5).apply(10).unwrap(), 5);
        assert_eq!(SizeChange::To(3).apply(10).unwrap(), 3);
        assert_eq!(
            SizeChange::Shrink(11).apply(10).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            SizeChange::Grow(u64::MAX).apply(1).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
    }

    #[test]
    fn raw_grow_and_shrink() {
        let s = MemStorage::from_bytes(&[7u8; 4096]);
        let opts = ResizeOptions::default();
        let r = resize_storage(&s, Format::Raw, SizeChange::Grow(4096), &opts).unwrap();
        assert_eq!((r.old_size, r.new_size), (4096, 8192));
        assert_eq!(s.len().unwrap(), 8192);
        let e = resize_storage(&s, Format::Raw, SizeChange::To(1024), &opts).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert_eq!(s.len().unwrap(), 8192);
        let shrink = ResizeOptions { shrink: true, ..opts };
        resize_storage(&s, Format::Raw, SizeChange::Shrink(7168), &shrink).unwrap();
        assert_eq!(s.to_vec(), vec![7u8; 1024]);
        let e = resize_storage(&s, Format::Raw, SizeChange::To(0), &shrink).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    }

    #[test]
    fn other_formats_are_not_implemented() {
        let s = MemStorage::from_bytes(&[0u8; 4096]);
        let e = resize_storage(&s, Format::Vhd, SizeChange::Grow(512), &ResizeOptions::default()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert_eq!(e.message(), "resizing vhd images is not implemented yet");
        assert_eq!(s.len().unwrap(), 4096);
    }

    #[test]
    fn resize_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.img");
        std::fs::write(&path, vec![1u8; 1000]).unwrap();
        let r = resize(&path, SizeChange::Grow(24), &ResizeOptions::default()).unwrap();
        assert_eq!((r.format, r.new_size), (Format::Raw, 1024));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1024);
        let e = resize(
            dir.path().join("missing"),
            SizeChange::Grow(1),
            &ResizeOptions::default(),
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let forced = ResizeOptions {
            format: Some(Format::Vhdx),
            ..ResizeOptions::default()
        };
        assert_eq!(
            resize(&path, SizeChange::Grow(1), &forced).unwrap_err().kind(),
            ErrorKind::Unsupported
        );
    }

    #[test]
    fn raw_measure() {
        let o = Options::new();
        let m = measure(Format::Raw, &o, MeasureInput::Size(1 << 30)).unwrap();
        assert_eq!((m.required, m.fully_allocated), (1 << 30, 1 << 30));
        let m = measure(
            Format::Raw,
            &o,
            MeasureInput::Image {
                virtual_size: 1 << 20,
                allocated: 4096,
            },
        )
        .unwrap();
        assert_eq!((m.required, m.fully_allocated), (4096, 1 << 20));
        let bad = Options::parse("subformat=fixed").unwrap();
        assert_eq!(
            measure(Format::Raw, &bad, MeasureInput::Size(1)).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        let e = measure(Format::Vhdx, &o, MeasureInput::Size(1)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
    }
}
