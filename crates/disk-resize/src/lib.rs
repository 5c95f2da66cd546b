//! Grow and shrink virtual disk images, and size arithmetic.
//!
//! - [`SizeChange`] parses the size argument of `vdisk resize` (`10G`, `+1G`, `-512M`) and applies
//!   it to a current size with overflow and underflow checks.
//! - [`resize_layer`] / [`resize_storage`] change an image's virtual size through its engine's
//!   [`Layer::resize`](disk_core::Layer::resize), after the checks every format shares
//!   ([`plan`], made on the same writable handle: it only reads): shrinking needs a flag and is
//!   refused when data lies past the new end ([`smallest_safe_size`]) unless the caller accepts
//!   the loss; sizes past the format's maximum are refused. Nothing is modified when a check
//!   fails. `vdisk::resize` does it for a file: probe once, open once, resize.
//! - [`measure`] says how many bytes a new image needs (`qemu-img measure`); [`fitting_size`]
//!   the largest virtual size that fits a file size.
//!
//! ```
//! use disk_resize::{ResizeOptions, SizeChange, resize_storage};
//! use disk_core::{MemStorage, NoExtraFiles, OpenOptions, RawDriver, Storage};
//! use std::sync::Arc;
//!
//! let storage = Arc::new(MemStorage::new());
//! storage.set_len(1 << 20)?;
//! let change: SizeChange = "+1M".parse()?;
//! let opts = ResizeOptions::default();
//! let done = resize_storage(storage.clone(), &RawDriver, None, &OpenOptions::new(), change, &opts, &NoExtraFiles)?;
//! assert_eq!((done.old_size, done.new_size), (1 << 20, 2 << 20));
//! assert_eq!(storage.len()?, 2 << 20);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

mod measure;
mod resize;
mod size;

pub use disk_core::{MeasureSource, Measurement};
pub use measure::{fitting_size, measure};
pub use resize::{ResizeOptions, Resized, plan, resize_layer, resize_storage, smallest_safe_size};
pub use size::SizeChange;

#[cfg(test)]
mod tests;
