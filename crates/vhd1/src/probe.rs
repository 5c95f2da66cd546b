//! Recognising a VHD: the footer cookie at offset 0 (dynamic and differencing disks keep a copy
//! there) or a footer at the end (fixed disks have nothing else).

use crate::format::{FOOTER_CHECKSUM_RANGE, FOOTER_COOKIE, FOOTER_SIZE, checksum};
use disk_core::{Storage, extension_is, probe_head};
use std::io;
use std::path::Path;

/// Extensions that make a footer with a wrong checksum count as VHD.
const EXTENSIONS: [&str; 4] = ["vhd", "vpc", "vhdf", "avhd"];

/// Whether `storage` is a VHD: the cookie at offset 0, or a footer at the end of the file (512
/// bytes, or 511 in images from Virtual PC before 2004) whose checksum is right, or whose file
/// name has a VHD extension.
pub(crate) fn probe(storage: &dyn Storage, name: Option<&Path>) -> io::Result<bool> {
    if probe_head(storage, FOOTER_COOKIE.len())?.starts_with(&FOOTER_COOKIE) {
        return Ok(true);
    }
    let len = storage.len()?;
    for footer_len in [FOOTER_SIZE, FOOTER_SIZE - 1] {
        let Some(at) = len.checked_sub(footer_len) else {
            continue;
        };
        let mut footer = [0u8; FOOTER_SIZE as usize];
        let footer = &mut footer[..footer_len as usize];
        storage.read_at(footer, at)?;
        if footer.starts_with(&FOOTER_COOKIE) && (checksum_ok(footer) || extension_is(name, &EXTENSIONS)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether the checksum field of `footer` (a whole footer, or the 511 bytes of an old one)
/// matches its bytes.
fn checksum_ok(footer: &[u8]) -> bool {
    let Some(stored) = footer.get(FOOTER_CHECKSUM_RANGE) else {
        return false;
    };
    let stored = u32::from_be_bytes([stored[0], stored[1], stored[2], stored[3]]);
    checksum(footer, FOOTER_CHECKSUM_RANGE) == stored
}

#[cfg(test)]
mod tests {
    use super::*;
    use disk_core::MemStorage;

    fn footer(valid: bool) -> Vec<u8> {
        let mut f = vec![0u8; 512];
        f[..8].copy_from_slice(&FOOTER_COOKIE);
        f[20] = 7;
        let sum = f.iter().fold(0u32, |a, &b| a.wrapping_add(u32::from(b)));
        let ck = if valid { !sum } else { 1 };
        f[64..68].copy_from_slice(&ck.to_be_bytes());
        f
    }

    fn probe_bytes(b: &[u8], name: Option<&str>) -> bool {
        probe(&MemStorage::from_bytes(b), name.map(Path::new)).unwrap()
    }

    #[test]
    fn cookie_at_zero_or_footer_at_end() {
        assert!(probe_bytes(b"conectix", None));
        assert!(!probe_bytes(b"", None));
        assert!(!probe_bytes(&[0u8; 4096], None));
        let mut img = vec![0u8; 4096];
        img.extend(footer(true));
        assert!(probe_bytes(&img, None));
        let mut img = vec![0u8; 4096];
        img.extend(footer(false));
        assert!(!probe_bytes(&img, Some("disk.img")));
        assert!(probe_bytes(&img, Some("disk.VHD")));
        // A footer alone (empty fixed disk) and the old 511-byte footer.
        assert!(probe_bytes(&footer(true), None));
        let mut img = vec![0u8; 1024];
        img.extend(&footer(true)[..511]);
        assert!(probe_bytes(&img, Some("old.vhd")));
    }
}
