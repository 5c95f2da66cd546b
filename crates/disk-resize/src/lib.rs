//! Grow and shrink virtual disk images, and file-size/virtual-size arithmetic.
//!
//! The engine arrives with its own issue; until then the facade reports this format as not
//! implemented.

#![forbid(unsafe_code)]
