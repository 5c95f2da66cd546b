//! Helpers shared by the integration tests: opening and creating VMDK images, comparing with a
//! raw file, and the workspace's interop helpers (tool lookup and runs, the manifests' content
//! digest, the shared test data), re-exported.

#![allow(dead_code, unused_imports, missing_docs)]

pub use disk_core::testing::interop::*;
use disk_core::{Disk, Driver, FsPolicy, FsResolver, Image, OpenOptions, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vmdk::VmdkDriver;

const MIB: u64 = 1 << 20;

/// Open a VMDK chain from a host file, extents and parents limited to its directory.
pub fn open(path: &Path, writable: bool) -> Result<Image> {
    let options = OpenOptions::new()
        .writable(writable)
        .resolver(Arc::new(FsResolver::new(FsPolicy::SameDirectory)));
    open_with(path, &options)
}

/// Open a VMDK chain from a host file with `options`.
pub fn open_with(path: &Path, options: &OpenOptions) -> Result<Image> {
    let storage = disk_core::FileStorage::open(path, options.writable)
        .map_err(|e| disk_core::Error::io(e, "open").with_file(path))?;
    options.locking.apply(&storage, options.writable)?;
    let canonical = path.canonicalize().unwrap();
    let ctx = options.context(Some(&canonical), options.writable);
    let top = VmdkDriver.open(Arc::new(storage), &ctx)?;
    Image::open_chain(top, Some(canonical.clone()), options, &|_, s, ctx| {
        VmdkDriver.open(s, ctx)
    })
}

/// Compare the whole guest view of `disk` with a raw file.
pub fn assert_same_as_raw(disk: &dyn Disk, raw: &Path) {
    let data = std::fs::read(raw).unwrap();
    assert_eq!(disk.virtual_size(), data.len() as u64, "size of {}", raw.display());
    let mut buf = vec![0u8; 4 * MIB as usize];
    let mut pos = 0usize;
    while pos < data.len() {
        let n = buf.len().min(data.len() - pos);
        disk_core::bytes::read_bytes(disk, pos as u64, &mut buf[..n]).unwrap();
        if buf[..n] != data[pos..pos + n] {
            let i = (0..n).find(|&i| buf[i] != data[pos + i]).unwrap();
            panic!("differs from {} at byte {}", raw.display(), pos + i);
        }
        pos += n;
    }
}

/// Creates extent files in a directory (what the facade does).
pub struct DirFiles(pub PathBuf);

impl disk_core::FileCreator for DirFiles {
    fn create_file(&self, name: &str) -> Result<Arc<dyn disk_core::Storage>> {
        let s =
            disk_core::FileStorage::create(self.0.join(name), true).map_err(|e| disk_core::Error::io(e, "create"))?;
        Ok(Arc::new(s))
    }
}

/// Create a VMDK at `path` with `-o` options `opts`, optionally over `backing` (recorded name).
pub fn create(path: &Path, size: u64, opts: &str, backing: Option<&str>) -> Result<()> {
    let storage = disk_core::FileStorage::create(path, true).map_err(|e| disk_core::Error::io(e, "create"))?;
    let files = DirFiles(path.parent().unwrap().to_path_buf());
    let parent = backing
        .map(|b| open(&path.parent().unwrap().join(b), false))
        .transpose()?;
    let spec = disk_core::CreateSpec {
        size,
        options: disk_core::Options::parse(opts)?,
        backing: parent.as_ref().map(|image| disk_core::BackingSpec {
            recorded: backing.unwrap().to_string(),
            absolute: None,
            image,
        }),
        path: Some(path),
        files: &files,
    };
    VmdkDriver.create(&storage, spec)
}
