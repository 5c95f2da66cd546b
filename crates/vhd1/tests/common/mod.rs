//! Helpers shared by the integration tests: the workspace's interop helpers (tool lookup and
//! runs, the manifests' content digest, the shared test data), re-exported.

#![allow(dead_code, unused_imports)]

pub use disk_core::testing::interop::*;
