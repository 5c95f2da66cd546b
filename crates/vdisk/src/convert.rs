//! Copying any disk into a new standalone image.

use crate::{CreateOptions, Disk, Format, OpenOptions, create, open_storage};
use disk_core::ops::{self, CopyOptions, CopyStats, Target};
use disk_core::{Error, FileStorage, FsPolicy, FsResolver, Options, Resolver, Result, ResultExt};
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
    /// Make the output durable before returning (flushes reach stable storage). Without it,
    /// flushes during and after the copy are skipped and the host writes the data back in its
    /// own time, as `qemu-img convert` does by default (`-t unsafe`): much faster, and a
    /// conversion interrupted by a host crash is worthless either way.
    pub durable: bool,
    /// Threads reading the source (qemu-img's `-m`); 0 means one per available core.
    pub workers: usize,
    /// Write chunks in any order (qemu-img's `-W`); refused for stream-optimized VMDK output.
    pub out_of_order: bool,
    /// Zero detection granularity in bytes (qemu-img's `-S`): all-zero pieces of this size in
    /// the source's data are not written; 0 writes all data. `None` is the default (64 KiB).
    pub zero_granularity: Option<usize>,
    /// Copy into the image that already exists at the destination (qemu-img's `-n`) instead of
    /// creating one: it must be of [`ConvertOptions::format`] and at least as large as the
    /// source; what the source reads as zeros is written as zeros there, and the image is left
    /// in place on failure. `options` must then be empty.
    pub existing: bool,
    /// Make the new image a child of this backing file (qemu-img's `-B`; recorded as given,
    /// relative to the new image's directory), writing only what differs from it.
    pub backing: Option<String>,
    /// The backing file's format (probed when `None`).
    pub backing_format: Option<Format>,
    /// The gate the backing file is opened through (with [`ConvertOptions::backing`]; the new
    /// image's own extent files are opened through it too). `None`: the new image's directory.
    pub resolver: Option<Arc<dyn Resolver>>,
}

impl<'a> ConvertOptions<'a> {
    /// Durable output of `format` with default options and no progress report.
    pub fn new(format: Format) -> Self {
        ConvertOptions {
            format,
            options: Options::new(),
            progress: None,
            durable: true,
            workers: 0,
            out_of_order: false,
            zero_granularity: None,
            existing: false,
            backing: None,
            backing_format: None,
            resolver: None,
        }
    }
}

/// Copy the guest-visible contents of `src` (a whole chain) into a new image at `dst` (or the
/// one there, with [`ConvertOptions::existing`]). Ranges that read as zeros are left unallocated
/// in a new image (a raw output file stays sparse). On failure a new output is removed.
pub fn convert(src: &dyn Disk, dst: impl AsRef<Path>, options: ConvertOptions<'_>) -> Result<CopyStats> {
    let dst = dst.as_ref();
    let size = src.virtual_size();
    let streamed = options.format == Format::Vmdk
        && options
            .options
            .get("subformat")
            .is_some_and(|s| s.eq_ignore_ascii_case("streamOptimized"));
    if options.out_of_order && streamed {
        return Err(Error::invalid_argument(
            "out-of-order writes (-W) and a stream-optimized (compressed) output are mutually exclusive",
        ))
        .with_file(dst);
    }
    if options.existing && options.backing.is_some() {
        return Err(Error::invalid_argument(
            "a backing file (-B) is recorded by creating the image: not with an existing one (-n)",
        ))
        .with_file(dst);
    }
    if options.existing {
        if let Some(key) = options.options.keys().next() {
            return Err(Error::invalid_argument(format!(
                "option '{key}' cannot apply: the existing image is not created (-n)"
            )))
            .with_file(dst);
        }
    } else {
        let mut create_opts = CreateOptions::new(options.format, size);
        create_opts.options = options.options;
        create_opts.backing = options.backing.clone();
        create_opts.backing_format = options.backing_format;
        if let Some(resolver) = &options.resolver {
            create_opts.resolver = resolver.clone();
        }
        create(dst, &create_opts)?;
    }
    let existing = options.existing;
    let target = match (existing, options.backing.is_some()) {
        (true, _) => Target::Unknown,
        (false, true) => Target::Compare,
        (false, false) => Target::Zeroed,
    };
    let result = (|| {
        // The image's own extent files (split and flat VMDK) lie beside it.
        let mut own_files = FsResolver::new(FsPolicy::SameDirectory);
        let mut storage = FileStorage::open(dst, true).map_err(|e| Error::io(e, "cannot open the output image"))?;
        if !options.durable {
            own_files = own_files.without_sync();
            storage = storage.without_sync();
        }
        let resolver: Arc<dyn Resolver> = match &options.resolver {
            Some(r) if options.backing.is_some() => r.clone(),
            _ => Arc::new(own_files),
        };
        let open_options = OpenOptions::new()
            .format(Some(options.format))
            .writable(true)
            .resolver(resolver);
        let out = open_storage(Arc::new(storage), Some(dst), &open_options)?;
        if out.virtual_size() < size {
            return Err(Error::invalid_argument(format!(
                "the output image ({} bytes) is smaller than the input ({size} bytes)",
                out.virtual_size()
            )));
        }
        let defaults = CopyOptions::default();
        let stats = ops::copy(
            src,
            &out,
            CopyOptions {
                progress: options.progress,
                workers: options.workers,
                out_of_order: options.out_of_order,
                zero_granularity: options.zero_granularity.unwrap_or(defaults.zero_granularity),
                target,
                ..defaults
            },
        )?;
        out.flush()?;
        Ok(stats)
    })();
    if result.is_err() && !existing {
        let _ = std::fs::remove_file(dst);
    }
    result.with_file(dst)
}
