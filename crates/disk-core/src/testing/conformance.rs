//! The conformance suite's entry points: what an engine provides ([`ImageFactory`]) and what it
//! promises ([`Capabilities`]), and the functions that run every check.

use crate::driver::{CreateSpec, Driver, NoExtraFiles, OpenContext};
use crate::error::Result;
use crate::image::Image;
use crate::options::Options;
use crate::resolve::DenyExternal;
use crate::storage::{MemStorage, Storage};
use crate::testing::strategy::Config;
use crate::testing::{checks, crash_check};
use std::sync::Arc;

/// Default virtual size of the images the suite creates: 4 MiB and 100 KiB, so that the last
/// block or grain of most formats is partial.
pub const DEFAULT_SIZE: u64 = (4 << 20) + (100 << 10);

/// What an engine promises beyond the [`Disk`](crate::Disk) contract, so the suite knows what to
/// check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Discarding the whole disk leaves no run that [`Disk::block_status`](crate::Disk::block_status)
    /// reports as `Data` (space is released, not just zeroed), except possibly in a last granule
    /// that is partly past the end of the disk.
    pub discard_frees_space: bool,
    /// The unit in which the engine allocates (block, grain, cluster), in bytes; the random
    /// operations aim at its boundaries. Raw: any small power of two.
    pub granularity: u64,
    /// `Data` runs' `offset` is a byte offset into the storage the image was opened from (false
    /// for formats whose data lives in other files).
    pub offsets_in_storage: bool,
    /// Run the crash test at all.
    pub crash_safe: bool,
    /// The engine survives a torn crashing write (only a sector-granular prefix landed).
    pub survives_torn_writes: bool,
    /// The engine survives unflushed writes landing in any subset (a reordering write-back cache).
    pub survives_reordering: bool,
    /// After an I/O error the engine keeps working (or keeps failing) without corrupting what is
    /// on disk: checked by failing each write and read once.
    pub survives_io_errors: bool,
}

impl Default for Capabilities {
    /// Everything on except `discard_frees_space`; granularity 64 KiB.
    fn default() -> Self {
        Capabilities {
            discard_frees_space: false,
            granularity: 64 << 10,
            offsets_in_storage: true,
            crash_safe: true,
            survives_torn_writes: true,
            survives_reordering: true,
            survives_io_errors: true,
        }
    }
}

/// Creates and opens images of one engine (and one set of options) for the suite.
///
/// Most engines can use [`DriverFactory`]; implement this by hand to test unusual setups (other
/// storage, a chain, special options).
pub trait ImageFactory: Send + Sync {
    /// A name for messages ("vhd dynamic, 512 KiB blocks").
    fn name(&self) -> String;

    /// Virtual size of the images the suite creates.
    fn size(&self) -> u64 {
        DEFAULT_SIZE
    }

    /// What the engine promises.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// Fresh, empty storage for a new image. Default: a [`MemStorage`]. Crash and fault tests
    /// always use memory.
    fn new_storage(&self) -> Arc<dyn Storage> {
        Arc::new(MemStorage::new())
    }

    /// Write a new image of `size` bytes into `storage` (empty).
    fn create(&self, storage: Arc<dyn Storage>, size: u64) -> Result<()>;

    /// Open the image in `storage`, read-only or writable.
    fn open(&self, storage: Arc<dyn Storage>, writable: bool) -> Result<Image>;
}

/// An [`ImageFactory`] for a [`Driver`]: creates through [`Driver::create`] with fixed options,
/// opens a single layer with the deny-all resolver.
///
/// ```
/// use disk_core::RawDriver;
/// use disk_core::testing::{Capabilities, DriverFactory, ImageFactory};
///
/// let factory = DriverFactory::new(RawDriver)
///     .with_capabilities(Capabilities { discard_frees_space: true, ..Capabilities::default() })
///     .with_size(1 << 20);
/// assert_eq!(factory.size(), 1 << 20);
/// ```
pub struct DriverFactory {
    driver: Box<dyn Driver>,
    options: Options,
    capabilities: Capabilities,
    size: u64,
    name: String,
}

impl DriverFactory {
    /// A factory for `driver` with no create options, default capabilities and size.
    pub fn new(driver: impl Driver + 'static) -> Self {
        let name = driver.format().to_string();
        DriverFactory {
            driver: Box::new(driver),
            options: Options::new(),
            capabilities: Capabilities::default(),
            size: DEFAULT_SIZE,
            name,
        }
    }

    /// Create options (`key=value,...`); panics if they do not parse.
    pub fn with_options(mut self, options: &str) -> Self {
        self.options = Options::parse(options).expect("conformance factory options must parse");
        self.name = format!("{} ({options})", self.driver.format());
        self
    }

    /// What the engine promises.
    pub fn with_capabilities(mut self, capabilities: Capabilities) -> Self {
        self.capabilities = capabilities;
        self
    }

    /// Virtual size of the created images.
    pub fn with_size(mut self, size: u64) -> Self {
        self.size = size;
        self
    }
}

impl ImageFactory for DriverFactory {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }
    fn create(&self, storage: Arc<dyn Storage>, size: u64) -> Result<()> {
        let spec = CreateSpec {
            size,
            options: self.options.clone(),
            backing: None,
            path: None,
            files: &NoExtraFiles,
        };
        self.driver.create(&*storage, spec)
    }
    fn open(&self, storage: Arc<dyn Storage>, writable: bool) -> Result<Image> {
        let ctx = OpenContext {
            path: None,
            writable,
            resolver: &DenyExternal,
            lenient: false,
            repair: false,
            locking: crate::Locking::Auto,
        };
        Ok(Image::single(self.driver.open(storage, &ctx)?, None))
    }
}

/// Run every check with [`Config::from_env`]; panics with a description of the first failure.
///
/// To get one test per check (parallel, separately reported) use
/// [`conformance_tests!`](crate::conformance_tests) instead.
pub fn run_conformance(factory: &dyn ImageFactory) {
    run_conformance_with(factory, &Config::from_env());
}

/// Run every check with an explicit configuration.
pub fn run_conformance_with(factory: &dyn ImageFactory, config: &Config) {
    checks::check_boundaries(factory);
    checks::check_read_only(factory);
    checks::check_discard(factory);
    checks::check_concurrent_reads(factory);
    checks::check_concurrent_writes(factory);
    checks::check_model(factory, config);
    crash_check::check_crash_consistency(factory, config);
    crash_check::check_io_errors(factory, config);
}

/// Expand to one `#[test]` per conformance check for the factory expression `$factory` (a value
/// implementing [`ImageFactory`], evaluated once per test). Use inside a module of a test file:
///
/// ```ignore
/// mod conformance {
///     use disk_core::testing::{Capabilities, DriverFactory};
///     fn factory() -> DriverFactory {
///         DriverFactory::new(vhd1::VhdDriver).with_options("subformat=dynamic,block_size=512K")
///     }
///     disk_core::conformance_tests!(factory());
/// }
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        #[test]
        fn conformance_boundaries() {
            $crate::testing::check_boundaries(&$factory);
        }
        #[test]
        fn conformance_read_only() {
            $crate::testing::check_read_only(&$factory);
        }
        #[test]
        fn conformance_discard() {
            $crate::testing::check_discard(&$factory);
        }
        #[test]
        fn conformance_concurrent_reads() {
            $crate::testing::check_concurrent_reads(&$factory);
        }
        #[test]
        fn conformance_concurrent_writes() {
            $crate::testing::check_concurrent_writes(&$factory);
        }
        #[test]
        fn conformance_model() {
            $crate::testing::check_model(&$factory, &$crate::testing::Config::from_env());
        }
        #[test]
        fn conformance_crash() {
            $crate::testing::check_crash_consistency(&$factory, &$crate::testing::Config::from_env());
        }
        #[test]
        fn conformance_io_errors() {
            $crate::testing::check_io_errors(&$factory, &$crate::testing::Config::from_env());
        }
    };
}
