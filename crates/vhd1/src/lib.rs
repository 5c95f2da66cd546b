//! VHD v1 ("vpc") images: fixed, dynamic and differencing.
//!
//! The engine arrives with its own issue; until then the facade reports this format as not
//! implemented.

#![forbid(unsafe_code)]
