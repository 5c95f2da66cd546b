//! The conformance suite run on the raw engine, in memory and on real files.

use super::*;
use crate::storage::{FileStorage, Storage};
use crate::{Image, RawDriver, Result};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Raw in memory: `MemStorage` punches whole 64 KiB chunks, so discarding everything frees it.
fn raw_mem() -> DriverFactory {
    DriverFactory::new(RawDriver).with_capabilities(Capabilities {
        discard_frees_space: true,
        ..Capabilities::default()
    })
}

mod raw_memory {
    crate::conformance_tests!(super::raw_mem());
}

/// Raw on host files in a temporary directory. Hole punching depends on the file system, so
/// discard is only required to zero.
struct RawFiles {
    dir: tempfile::TempDir,
    next: AtomicU64,
    raw: DriverFactory,
}

fn raw_files() -> RawFiles {
    RawFiles {
        dir: tempfile::tempdir().expect("temp dir"),
        next: AtomicU64::new(0),
        raw: DriverFactory::new(RawDriver),
    }
}

impl ImageFactory for RawFiles {
    fn name(&self) -> String {
        "raw (host file)".into()
    }
    fn new_storage(&self) -> Arc<dyn Storage> {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        Arc::new(FileStorage::create(self.dir.path().join(format!("img{n}.raw")), false).expect("temp file"))
    }
    fn create(&self, storage: Arc<dyn Storage>, size: u64) -> Result<()> {
        self.raw.create(storage, size)
    }
    fn open(&self, storage: Arc<dyn Storage>, writable: bool) -> Result<Image> {
        self.raw.open(storage, writable)
    }
}

// The crash and I/O-error checks always run in memory, so `raw_memory` covers them for raw.
mod raw_file {
    use super::*;

    #[test]
    fn conformance_boundaries() {
        check_boundaries(&raw_files());
    }
    #[test]
    fn conformance_read_only() {
        check_read_only(&raw_files());
    }
    #[test]
    fn conformance_discard() {
        check_discard(&raw_files());
    }
    #[test]
    fn conformance_concurrent_reads() {
        check_concurrent_reads(&raw_files());
        check_concurrent_writes(&raw_files());
    }
    #[test]
    fn conformance_model() {
        check_model(&raw_files(), &Config::from_env());
    }
}

/// A correct allocating engine (data, flush, table entry) passes everything.
mod toy_correct {
    crate::conformance_tests!(crate::testing::toy::ToyFactory(crate::testing::toy::Bug::None));
}

/// The suite must fail engines with the classic bugs: these tests pass only if it does.
mod catches {
    use super::*;
    use crate::testing::toy::{Bug, ToyFactory};

    #[test]
    #[should_panic(expected = "Subset")]
    fn table_entry_durable_before_its_data() {
        check_crash_consistency(&ToyFactory(Bug::NoFlushBeforeTable), &Config::with_cases(16));
    }

    #[test]
    #[should_panic(expected = "lost power during it")]
    fn swallowed_write_errors() {
        check_crash_consistency(&ToyFactory(Bug::SwallowsWriteErrors), &Config::with_cases(16));
    }

    #[test]
    #[should_panic(expected = "discard: after discard of everything: sector 0 holds write #1")]
    fn ignored_discard() {
        check_discard(&ToyFactory(Bug::IgnoresDiscard));
    }

    #[test]
    #[should_panic(expected = "conformance of toy (IgnoresDiscard): model")]
    fn ignored_discard_in_random_sequences() {
        check_model(&ToyFactory(Bug::IgnoresDiscard), &Config::with_cases(64));
    }
}

/// What raw promises for a file whose length is not a whole number of sectors (the suite only
/// uses whole sectors): the last sector is addressable, its bytes past the end of the file read as
/// zeros, writes there are dropped, and the file never changes length.
#[test]
fn raw_odd_length_tail() {
    use crate::Disk;
    let storage = Arc::new(crate::MemStorage::from_bytes(&[7u8; 1000]));
    let disk = raw_mem().open(storage.clone(), true).unwrap();
    assert_eq!((disk.virtual_size(), disk.sector_count()), (1000, 2));
    let mut buf = vec![0u8; 1024];
    disk.read(0, &mut buf).unwrap();
    assert!(buf[..1000].iter().all(|&b| b == 7) && buf[1000..].iter().all(|&b| b == 0));
    disk.write(1, &[9u8; 512]).unwrap();
    disk.read(1, &mut buf[..512]).unwrap();
    assert!(buf[..488].iter().all(|&b| b == 9) && buf[488..512].iter().all(|&b| b == 0));
    disk.discard(1, 1).unwrap();
    disk.read(1, &mut buf[..512]).unwrap();
    assert!(buf[..512].iter().all(|&b| b == 0));
    assert_eq!(storage.len().unwrap(), 1000);
    verify_block_status(&disk, Some(&*storage)).unwrap();
}
