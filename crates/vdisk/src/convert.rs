//! Copying any disk into a new standalone image.

use crate::{CreateOptions, Disk, Format, OpenOptions, create, open};
use disk_core::ops::{self, CopyOptions, CopyStats};
use disk_core::{FsPolicy, FsResolver, Options, Result, ResultExt};
use std::path::Path;
use std::sync::Arc;

/// How [`convert`] writes its output.
pub struct ConvertOptions<'a> {
    /// Output format.
    pub format: Format,
    /// Output format options (`-o`).
    pub options: Options,
    /// Called with (bytes done, bytes total) as the copy proceeds.
    pub progress: Option<&'a mut dyn FnMut(u64, u64)>,
}

/// Copy the guest-visible contents of `src` (a whole chain) into a new image at `dst`.
/// Ranges that read as zeros are left unallocated (a raw output file stays sparse). On failure
/// the partial output is removed.
pub fn convert(src: &dyn Disk, dst: impl AsRef<Path>, options: ConvertOptions<'_>) -> Result<CopyStats> {
    let dst = dst.as_ref();
    let size = src.virtual_size();
    let mut create_opts = CreateOptions::new(options.format, size);
    create_opts.options = options.options;
    create(dst, &create_opts)?;
    let result = (|| {
        // The new image's own extent files (split and flat VMDK) lie beside it.
        let own_files = Arc::new(FsResolver::new(FsPolicy::SameDirectory));
        let out = open(
            dst,
            &OpenOptions::new()
                .format(Some(options.format))
                .writable(true)
                .resolver(own_files),
        )?;
        let stats = ops::copy(
            src,
            &out,
            CopyOptions {
                progress: options.progress,
                ..CopyOptions::default()
            },
        )?;
        out.flush()?;
        Ok(stats)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(dst);
    }
    result.with_file(dst)
}
