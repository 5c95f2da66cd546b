//! VMDK images: sparse, flat, split, streamOptimized, COWD and seSparse.
//!
//! The engine arrives with its own issue; until then the facade reports this format as not
//! implemented.

#![forbid(unsafe_code)]
