//! The workspace conformance suite (model, boundaries, discard, crash at every write, I/O
//! errors) run on fixed, dynamic and differencing VHDs.

use disk_core::testing::{Capabilities, DriverFactory, ImageFactory};
use disk_core::{
    BackingSpec, CreateSpec, Driver, Image, MemResolver, MemStorage, NoExtraFiles, OpenContext, OpenOptions, Options,
    Result, Storage,
};
use std::sync::Arc;
use vhd1::VhdDriver;

mod fixed {
    use super::*;
    fn factory() -> DriverFactory {
        DriverFactory::new(VhdDriver).with_options("subformat=fixed")
    }
    disk_core::conformance_tests!(factory());
}

mod dynamic {
    use super::*;
    fn factory() -> DriverFactory {
        DriverFactory::new(VhdDriver)
            .with_options("subformat=dynamic,block_size=64K")
            .with_capabilities(Capabilities {
                granularity: 64 << 10,
                discard_frees_space: true,
                ..Capabilities::default()
            })
    }
    disk_core::conformance_tests!(factory());
}

mod dynamic_default_blocks {
    use super::*;
    fn factory() -> DriverFactory {
        DriverFactory::new(VhdDriver).with_capabilities(Capabilities {
            granularity: 2 << 20,
            discard_frees_space: true,
            ..Capabilities::default()
        })
    }
    disk_core::conformance_tests!(factory());
}

/// Differencing disks over a fixed, all-zero parent held in memory.
struct Differencing {
    parent: Arc<MemStorage>,
    resolver: Arc<MemResolver>,
}

impl Differencing {
    fn new() -> Self {
        let parent = Arc::new(MemStorage::new());
        VhdDriver
            .create(
                &*parent,
                CreateSpec {
                    size: disk_core::testing::DEFAULT_SIZE,
                    options: Options::parse("subformat=fixed").unwrap(),
                    backing: None,
                    path: None,
                    files: &NoExtraFiles,
                },
            )
            .unwrap();
        let resolver = Arc::new(MemResolver::new());
        resolver.insert("parent.vhd", parent.clone());
        Differencing { parent, resolver }
    }

    fn options(&self, writable: bool) -> OpenOptions {
        OpenOptions::new().writable(writable).resolver(self.resolver.clone())
    }
}

impl ImageFactory for Differencing {
    fn name(&self) -> String {
        "vhd differencing (64 KiB blocks)".into()
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            granularity: 64 << 10,
            ..Capabilities::default()
        }
    }
    fn create(&self, storage: Arc<dyn Storage>, size: u64) -> Result<()> {
        let ctx = OpenContext {
            path: None,
            writable: false,
            resolver: &disk_core::DenyExternal,
            lenient: false,
            repair: false,
            locking: disk_core::Locking::Auto,
        };
        let parent = Image::single(VhdDriver.open(self.parent.clone(), &ctx)?, None);
        VhdDriver.create(
            &*storage,
            CreateSpec {
                size,
                options: Options::parse("block_size=64K").unwrap(),
                backing: Some(BackingSpec {
                    recorded: "parent.vhd".into(),
                    absolute: None,
                    image: &parent,
                }),
                path: None,
                files: &NoExtraFiles,
            },
        )
    }
    /// The child alone: its parent is all zeros, so sectors it does not hold read as zeros
    /// either way, and the suite's block-status checks (written for standalone images) apply.
    fn open(&self, storage: Arc<dyn Storage>, writable: bool) -> Result<Image> {
        let options = self.options(writable);
        let top = VhdDriver.open(storage, &options.context(None, writable))?;
        assert!(top.parent().is_some());
        Ok(Image::single(top, None))
    }
}

mod differencing {
    use super::*;
    disk_core::conformance_tests!(Differencing::new());
}
