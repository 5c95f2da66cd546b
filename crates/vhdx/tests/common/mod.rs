//! Helpers shared by the integration tests: opening VHDX images, and the workspace's interop
//! helpers (tool lookup and runs, reading a whole disk, the manifests' content digest, the shared
//! test data), re-exported.

#![allow(dead_code, unused_imports)]

pub use disk_core::testing::interop::*;
use disk_core::{
    BackingSpec, CreateSpec, Driver, FileStorage, Image, Layer, MemStorage, NoExtraFiles, OpenOptions, Options, Result,
    Storage,
};
use std::path::Path;
use std::sync::Arc;
use vhdx::VhdxDriver;

/// Create a VHDX of `size` bytes with `-o` options `opts` in `storage`, over `backing` if given;
/// `path` is where it lives when it is a file.
pub fn create_in(
    storage: &dyn Storage,
    size: u64,
    opts: &str,
    backing: Option<BackingSpec<'_>>,
    path: Option<&Path>,
) -> Result<()> {
    VhdxDriver.create(
        storage,
        CreateSpec {
            size,
            options: Options::parse(opts)?,
            backing,
            path,
            files: &NoExtraFiles,
        },
    )
}

/// A new standalone VHDX in memory.
pub fn create_mem(size: u64, opts: &str) -> Result<Arc<MemStorage>> {
    let storage = Arc::new(MemStorage::new());
    create_in(&*storage, size, opts, None, None)?;
    Ok(storage)
}

/// A new VHDX file at `path`, over `backing` if given. Panics on failure.
pub fn create_file(path: &Path, size: u64, opts: &str, backing: Option<BackingSpec<'_>>) {
    let storage = FileStorage::create(path, true).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    create_in(&storage, size, opts, backing, Some(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Open one VHDX layer from `storage`.
pub fn open_layer(storage: Arc<dyn Storage>, writable: bool) -> Result<Box<dyn Layer>> {
    let options = OpenOptions::default();
    VhdxDriver.open(storage, &options.context(None, writable))
}

/// Open a standalone VHDX file as a disk.
pub fn open_file(path: &Path, writable: bool) -> Result<Image> {
    let storage = Arc::new(FileStorage::open(path, writable).unwrap());
    Ok(Image::single(open_layer(storage, writable)?, Some(path.to_path_buf())))
}

/// Open an in-memory VHDX as a disk.
pub fn open_mem(storage: &Arc<MemStorage>, writable: bool) -> Result<Image> {
    Ok(Image::single(open_layer(storage.clone(), writable)?, None))
}

/// A dynamic image of `size` bytes (1 MiB blocks) whose log holds one unreplayed entry (a new
/// block, as a crash would leave it), and the contents it has after replay.
pub fn dirty_image(size: u64) -> (Arc<MemStorage>, Vec<u8>) {
    use disk_core::Disk;
    dirty_after(size, |disk| disk.write(3, &[0x5a; 1024]).unwrap())
}

/// A dynamic image of `size` bytes (1 MiB blocks) after `writes`, flushed up to the header
/// update that marks the log empty (which failed): its log holds the applied entry.
pub fn dirty_after(size: u64, writes: impl Fn(&disk_core::Image)) -> (Arc<MemStorage>, Vec<u8>) {
    use disk_core::Disk;
    use disk_core::testing::{FaultPlan, FaultyStorage};
    let base = create_mem(size, "block_size=1M").unwrap();
    // A write's metadata is logged at the flush, whose last step marks the log empty in the
    // header: fail exactly that header write, so the file keeps one applied log entry.
    let counting = Arc::new(FaultyStorage::new(base.snapshot()));
    let image = |storage: Arc<FaultyStorage<MemStorage>>| {
        let layer = open_layer(storage, true).unwrap();
        disk_core::Image::single(layer, None)
    };
    let disk = image(counting.clone());
    writes(&disk);
    let before_flush = counting.counts().writes;
    disk.flush().unwrap();
    let last = counting.counts().writes;
    drop(disk);
    for n in (before_flush..last).rev() {
        let storage = Arc::new(FaultyStorage::new(base.snapshot()).with_plan(FaultPlan::none().write(n)));
        let disk = image(storage.clone());
        writes(&disk);
        if disk.flush().is_ok() {
            continue;
        }
        let dirty = Arc::new(storage.inner().snapshot());
        std::mem::forget(disk);
        let probe = open_mem(&dirty, false).unwrap();
        if probe.top().info().dirty == Some(true) {
            let expected = read_all(&probe);
            return (dirty, expected);
        }
    }
    panic!("no failed flush left the log applied but not marked empty");
}
