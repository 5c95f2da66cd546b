//! `measure`: bytes a new VMDK of each subformat needs.
//!
//! Sparse extents are counted as [`write_sparse`](crate::create) lays them out (all grain
//! tables preallocated) plus 64 KiB per grain that holds data; flat extents hold their data
//! (sparse on the host) and reach their full size when written; a stream-optimized image is
//! bounded by its grains stored uncompressed with their markers and tables. Descriptor files
//! are measured by creating the image's descriptor in memory.

use crate::create::{GRAIN_BYTES, SPLIT_SECTORS, sparse_overhead};
use crate::format::SECTOR;
use disk_core::{CreateSpec, Driver, MeasureSource, Measurement, MemResolver, MemStorage, Options, Result, Storage};

/// Grain table entries per table of new images.
const GTES: u64 = 512;

/// Length of the descriptor file a flat image of this size gets (a split sparse descriptor has
/// extent lines of the same lengths, `SPARSE` for `FLAT 0`, and a `createType` two bytes
/// longer). Extent names are counted as `disk-f001.vmdk`.
fn descriptor_len(sectors: u64, split: bool, options: &Options) -> Result<u64> {
    let mut o = options.clone();
    o.set("subformat", if split { "twoGbMaxExtentFlat" } else { "monolithicFlat" });
    let storage = MemStorage::new();
    crate::VmdkDriver.create(
        &storage,
        CreateSpec {
            size: sectors * SECTOR,
            options: o,
            backing: None,
            path: None,
            files: &MemResolver::new(),
        },
    )?;
    storage
        .len()
        .map_err(|e| disk_core::Error::io(e, "measuring the descriptor"))
}

/// Measure a new image created with `options` for `source`.
pub(crate) fn measure(options: &Options, source: &MeasureSource) -> Result<Measurement> {
    let sub = options.get("subformat").unwrap_or("monolithicSparse").to_string();
    // Validate every option the way create does (on an empty image of one sector).
    let mut check = options.clone();
    check.set("subformat", &sub);
    crate::VmdkDriver.create(
        &MemStorage::new(),
        CreateSpec {
            size: SECTOR,
            options: check,
            backing: None,
            path: None,
            files: &MemResolver::new(),
        },
    )?;
    let sectors = source.virtual_size.div_ceil(SECTOR);
    let size = sectors * SECTOR;
    if !sub.contains("Flat") && size > crate::create::MAX_SIZE {
        return Err(disk_core::Error::invalid_argument(
            "sparse VMDK images are limited to 2 TiB",
        ));
    }
    let used = source.clusters(GRAIN_BYTES);
    let grains = sectors.div_ceil(GRAIN_BYTES / SECTOR);
    let desc_opts = options;
    Ok(match sub.as_str() {
        "monolithicSparse" => {
            let meta = sparse_overhead(sectors) * SECTOR;
            Measurement {
                required: meta + used * GRAIN_BYTES,
                fully_allocated: meta + grains * GRAIN_BYTES,
            }
        }
        "twoGbMaxExtentSparse" => {
            let mut meta = descriptor_len(sectors, true, desc_opts)? + 2;
            let mut left = sectors;
            while left > 0 {
                let n = left.min(SPLIT_SECTORS);
                meta += sparse_overhead(n) * SECTOR;
                left -= n;
            }
            Measurement {
                required: meta + used * GRAIN_BYTES,
                fully_allocated: meta + grains * GRAIN_BYTES,
            }
        }
        "monolithicFlat" | "twoGbMaxExtentFlat" => {
            let desc = descriptor_len(sectors, sub.starts_with("twoGb"), desc_opts)?;
            let data = if source.measured_image {
                source.data_bytes().min(size)
            } else {
                size
            };
            Measurement {
                required: desc + data,
                fully_allocated: desc + size,
            }
        }
        _ => {
            // streamOptimized: header and descriptor grain, then per grain a marker and at most
            // the grain itself, per table a marker and the table, then directory, footer, end.
            let per_grain = (12 + GRAIN_BYTES).div_ceil(SECTOR) * SECTOR;
            let tables = |g: u64| g.div_ceil(GTES) * (SECTOR + GTES * 4);
            let gd = (grains.div_ceil(GTES) * 4).div_ceil(SECTOR) * SECTOR;
            let fixed = GRAIN_BYTES + SECTOR + gd + 3 * SECTOR;
            Measurement {
                required: fixed + used * per_grain + tables(used),
                fully_allocated: fixed + grains * per_grain + tables(grains),
            }
        }
    })
}
