//! The shared conformance suite (model, boundaries, discard, crash at every write, I/O errors).

use disk_core::testing::{Capabilities, Config, DriverFactory, ImageFactory};
use disk_core::{
    CreateSpec, Driver, FileCreator, Image, MemResolver, MemStorage, OpenContext, Options, Result, Storage,
};
use std::sync::Arc;
use vmdk::VmdkDriver;

/// A monolithicSparse factory with `options`.
fn sparse(options: &str) -> DriverFactory {
    DriverFactory::new(VmdkDriver)
        .with_options(options)
        .with_capabilities(Capabilities {
            discard_frees_space: true,
            ..Capabilities::default()
        })
}

/// The crash test at a bounded number of crash points (CI time is shared).
fn crash_config() -> Config {
    Config {
        max_crash_points: 48,
        ..Config::from_env()
    }
}

mod sparse {
    use super::*;
    fn f() -> DriverFactory {
        sparse("subformat=monolithicSparse")
    }
    #[test]
    fn boundaries() {
        disk_core::testing::check_boundaries(&f());
    }
    #[test]
    fn read_only() {
        disk_core::testing::check_read_only(&f());
    }
    #[test]
    fn discard() {
        disk_core::testing::check_discard(&f());
    }
    #[test]
    fn concurrent_reads() {
        disk_core::testing::check_concurrent_reads(&f());
        disk_core::testing::check_concurrent_writes(&f());
    }
    #[test]
    fn model() {
        disk_core::testing::check_model(&f(), &Config::from_env());
    }
    #[test]
    fn crash() {
        disk_core::testing::check_crash_consistency(&f(), &crash_config());
    }
    #[test]
    fn io_errors() {
        disk_core::testing::check_io_errors(&f(), &crash_config());
    }
}

mod zeroed_grain {
    use super::*;
    #[test]
    fn boundaries_discard_model() {
        let f = sparse("zeroed_grain=on");
        disk_core::testing::check_boundaries(&f);
        disk_core::testing::check_discard(&f);
        disk_core::testing::check_model(&f, &Config::from_env());
    }
    #[test]
    fn crash() {
        disk_core::testing::check_crash_consistency(&sparse("zeroed_grain=on"), &crash_config());
    }
}

/// Multi-file images held in memory: extents live in a [`MemResolver`].
struct MultiFile {
    options: &'static str,
    files: Arc<MemResolver>,
}

impl FileCreator for MultiFile {
    fn create_file(&self, name: &str) -> Result<Arc<dyn Storage>> {
        let s = Arc::new(MemStorage::new());
        self.files.insert(name, s.clone());
        Ok(s)
    }
}

impl ImageFactory for MultiFile {
    fn name(&self) -> String {
        format!("vmdk ({})", self.options)
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            offsets_in_storage: false,
            crash_safe: false,
            survives_io_errors: false,
            ..Capabilities::default()
        }
    }
    fn create(&self, storage: Arc<dyn Storage>, size: u64) -> Result<()> {
        let spec = CreateSpec {
            size,
            options: Options::parse(self.options)?,
            backing: None,
            path: None,
            files: self,
        };
        VmdkDriver.create(&*storage, spec)
    }
    fn open(&self, storage: Arc<dyn Storage>, writable: bool) -> Result<Image> {
        let ctx = OpenContext {
            path: None,
            writable,
            resolver: &*self.files,
            lenient: false,
            repair: false,
            locking: disk_core::Locking::Auto,
        };
        Ok(Image::single(VmdkDriver.open(storage, &ctx)?, None))
    }
}

mod flat {
    use super::*;
    fn factory() -> MultiFile {
        MultiFile {
            options: "subformat=monolithicFlat",
            files: Arc::new(MemResolver::new()),
        }
    }
    disk_core::conformance_tests!(factory());
}

mod split_sparse {
    use super::*;
    fn factory() -> MultiFile {
        MultiFile {
            options: "subformat=twoGbMaxExtentSparse",
            files: Arc::new(MemResolver::new()),
        }
    }
    disk_core::conformance_tests!(factory());
}
