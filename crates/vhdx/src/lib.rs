//! VHDX images: fixed, dynamic and differencing, with log replay.
//!
//! The engine arrives with its own issue; until then the facade reports this format as not
//! implemented.

#![forbid(unsafe_code)]
