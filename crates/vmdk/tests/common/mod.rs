//! Helpers shared by the integration tests.
#![allow(dead_code, missing_docs)]

use disk_core::{Allocation, Disk, Driver, FsPolicy, FsResolver, Image, OpenOptions, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use vmdk::VmdkDriver;

/// Open a VMDK chain from a host file, extents and parents limited to its directory.
pub fn open(path: &Path, writable: bool) -> Result<Image> {
    let options = OpenOptions::new()
        .writable(writable)
        .resolver(Arc::new(FsResolver::new(FsPolicy::SameDirectory)));
    open_with(path, &options)
}

pub fn open_with(path: &Path, options: &OpenOptions) -> Result<Image> {
    let storage = disk_core::FileStorage::open(path, options.writable)
        .map_err(|e| disk_core::Error::io(e, "open").with_file(path))?;
    let canonical = path.canonicalize().unwrap();
    let ctx = options.context(Some(&canonical), options.writable);
    let top = VmdkDriver.open(Arc::new(storage), &ctx)?;
    Image::open_chain(top, Some(canonical.clone()), options, &|_, s, ctx| {
        VmdkDriver.open(s, ctx)
    })
}

/// Whether a host tool is installed.
pub fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Run a command, panicking with its output on failure.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const MIB: u64 = 1 << 20;

/// The manifest's content digest of a disk: sha256 over each non-zero 1 MiB chunk preceded by
/// its index (little-endian u64); chunks the disk reports as unallocated or zero are skipped.
pub fn content_digest(disk: &dyn Disk) -> String {
    let size = disk.virtual_size();
    let ss = u64::from(disk.sector_size());
    let mut h = Sha256::new();
    let mut buf = vec![0u8; MIB as usize];
    let mut pos = 0;
    while pos < size {
        let len = MIB.min(size - pos);
        // Skip chunks that hold no data.
        let (first, count) = (pos / ss, len.div_ceil(ss));
        let mut lba = first;
        let mut any = false;
        while lba < first + count {
            let st = disk.block_status(lba, first + count - lba).unwrap();
            if st.allocation == Allocation::Data {
                any = true;
                break;
            }
            lba += st.sectors.max(1);
        }
        if any {
            let chunk = &mut buf[..len as usize];
            disk_core::bytes::read_bytes(disk, pos, chunk).unwrap();
            if chunk.iter().any(|&b| b != 0) {
                h.update((pos / MIB).to_le_bytes());
                h.update(&*chunk);
            }
        }
        pos += len;
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
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

pub fn testdata() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata");
    p.join("manifest.json").exists().then_some(p)
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
