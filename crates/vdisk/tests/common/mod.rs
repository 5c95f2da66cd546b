//! Helpers shared by the facade's integration tests: the workspace's interop helpers (the
//! manifests' content digest, the test-data manifests), re-exported.

#![allow(dead_code, unused_imports)]

pub use disk_core::testing::interop::*;
