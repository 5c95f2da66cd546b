//! Recognising a VHDX file: the file type identifier signature at offset 0.

use crate::format::FILE_SIGNATURE;
use disk_core::{Storage, probe_head};
use std::io;

/// Whether `storage` starts with the VHDX file type identifier signature (`vhdxfile`).
pub(crate) fn probe(storage: &dyn Storage) -> io::Result<bool> {
    Ok(probe_head(storage, FILE_SIGNATURE.len())?.starts_with(&FILE_SIGNATURE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use disk_core::MemStorage;

    #[test]
    fn signature_at_zero() {
        let probe = |b: &[u8]| probe(&MemStorage::from_bytes(b)).unwrap();
        assert!(probe(b"vhdxfile\0\0"));
        assert!(probe(b"vhdxfile"));
        assert!(!probe(b"vhdxfil"));
        assert!(!probe(b""));
        assert!(!probe(b"\0vhdxfile"));
    }
}
