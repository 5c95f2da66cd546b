//! Recognising a VMDK: a sparse extent's magic (KDMV, COWD, seSparse) or a text descriptor.

use crate::open::SparseKind;
use disk_core::{Storage, probe_head};
use std::io;

/// How many leading bytes probing looks at (a descriptor's first lines).
const HEAD: usize = 4096;

/// Whether `storage` starts with a sparse, COWD or seSparse magic or is a text descriptor.
pub(crate) fn probe(storage: &dyn Storage) -> io::Result<bool> {
    let head = probe_head(storage, HEAD)?;
    Ok(SparseKind::of(&head).is_some() || is_descriptor(&head))
}

/// A standalone VMDK descriptor: text (no NUL bytes before its end) with a `createType` line
/// after a `version` line, or the `# Disk DescriptorFile` banner.
fn is_descriptor(head: &[u8]) -> bool {
    let text_end = head.iter().position(|&b| b == 0).unwrap_or(head.len());
    let text = &head[..text_end];
    if text.is_empty() || text.iter().any(|&b| b < 0x09 || (b > 0x0d && b < 0x20 && b != 0x1b)) {
        return false;
    }
    let Ok(text) = std::str::from_utf8(text) else {
        return false;
    };
    let mut saw_version = false;
    for line in text.lines() {
        let line = line.trim();
        if line.eq_ignore_ascii_case("# disk descriptorfile") {
            return true;
        }
        let key = line.split('=').next().unwrap_or("").trim().to_ascii_lowercase();
        if key == "version" {
            saw_version = true;
        }
        if key == "createtype" && saw_version {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use disk_core::MemStorage;

    fn probe_bytes(b: &[u8]) -> bool {
        probe(&MemStorage::from_bytes(b)).unwrap()
    }

    #[test]
    fn magics_and_descriptors() {
        assert!(probe_bytes(b"KDMV\x01\0\0\0"));
        assert!(probe_bytes(b"COWD\x01\0\0\0"));
        assert!(probe_bytes(&[0xbe, 0xba, 0xfe, 0xca, 0, 0, 0, 0, 1]));
        assert!(!probe_bytes(&[0xbe, 0xba, 0xfe, 0xca, 0, 0, 0]));
        let desc = b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\ncreateType=\"monolithicFlat\"\n";
        assert!(probe_bytes(desc));
        assert!(probe_bytes(b"version=1\r\ncreateType=\"vmfs\"\r\n"));
        assert!(!probe_bytes(b"createType=\"vmfs\"\nversion=1\n"));
        assert!(!probe_bytes(b"createType is just text\n"));
        assert!(!probe_bytes(b"version=1\n\x01createType=\"vmfs\"\n"));
        assert!(!probe_bytes(&[0u8; 4096]));
        assert!(!probe_bytes(b""));
    }
}
