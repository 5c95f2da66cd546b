//! UTF-16 text as the image formats store it: VHD's "Parent Unicode Name" (big-endian) and its
//! W2ru/W2ku parent locators (little-endian), VHDX parent locator keys and values and the
//! creator string (little-endian).

/// The byte order of the 16-bit code units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endian {
    /// Little-endian (UTF-16LE).
    Little,
    /// Big-endian (UTF-16BE).
    Big,
}

/// `text` as UTF-16 bytes in `endian` order, without a terminator.
pub fn encode(text: &str, endian: Endian) -> Vec<u8> {
    text.encode_utf16()
        .flat_map(|u| match endian {
            Endian::Little => u.to_le_bytes(),
            Endian::Big => u.to_be_bytes(),
        })
        .collect()
}

/// The code units in `bytes` (an odd last byte is ignored).
fn units(bytes: &[u8], endian: Endian) -> impl Iterator<Item = u16> + '_ {
    bytes.chunks_exact(2).map(move |c| match endian {
        Endian::Little => u16::from_le_bytes([c[0], c[1]]),
        Endian::Big => u16::from_be_bytes([c[0], c[1]]),
    })
}

/// The part of `bytes` before its first NUL code unit (all of it when there is none): the text
/// of a NUL-padded field.
pub fn before_nul(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .chunks_exact(2)
        .position(|c| c == [0, 0])
        .map_or(bytes.len(), |i| i.saturating_mul(2));
    &bytes[..end]
}

/// Decode a NUL-padded field leniently: the text before the first NUL, with anything that is
/// not UTF-16 (an unpaired surrogate) replaced by U+FFFD. For names that are shown or tried as
/// paths, where a damaged character should not hide the rest.
pub fn decode_lossy(bytes: &[u8], endian: Endian) -> String {
    let units: Vec<u16> = units(before_nul(bytes), endian).collect();
    String::from_utf16_lossy(&units)
}

/// Decode text strictly: `None` when `bytes` is not valid UTF-16. Trailing NULs are dropped.
pub fn decode(bytes: &[u8], endian: Endian) -> Option<String> {
    let units: Vec<u16> = units(bytes, endian).collect();
    let s = String::from_utf16(&units).ok()?;
    Some(s.trim_end_matches('\0').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let s = ".\\päre€nt𝄞.vhd";
        for endian in [Endian::Little, Endian::Big] {
            assert_eq!(decode_lossy(&encode(s, endian), endian), s);
            assert_eq!(decode(&encode(s, endian), endian).as_deref(), Some(s));
        }
        assert_eq!(encode("A", Endian::Little), [0x41, 0]);
        assert_eq!(encode("A", Endian::Big), [0, 0x41]);
    }

    #[test]
    fn nul_padding_and_damage() {
        let mut padded = encode("ab", Endian::Big);
        padded.extend([0, 0, 0, 0x41]);
        assert_eq!(decode_lossy(&padded, Endian::Big), "ab");
        assert_eq!(before_nul(&padded), encode("ab", Endian::Big));
        assert_eq!(before_nul(&[0x41, 0, 0x42]), [0x41, 0, 0x42]);
        let mut trailing = encode("ab", Endian::Little);
        trailing.extend([0, 0, 0, 0]);
        assert_eq!(decode(&trailing, Endian::Little).as_deref(), Some("ab"));
        // An unpaired surrogate: replaced when lenient, refused when strict.
        let lone = [0x00, 0xd8, 0x41, 0x00];
        assert_eq!(decode_lossy(&lone, Endian::Little), "\u{fffd}A");
        assert_eq!(decode(&lone, Endian::Little), None);
    }
}
