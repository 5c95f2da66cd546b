//! Parent locators and the parent's name: how a differencing disk records its parent.

#![deny(clippy::arithmetic_side_effects)]

use crate::format::{
    DynamicHeader, PLATFORM_MACX, PLATFORM_W2KU, PLATFORM_W2RU, PLATFORM_WI2K, PLATFORM_WI2R, ParentLocatorEntry,
};
use disk_core::{IoResultExt, Result, Storage};

/// Longest locator data read (a Windows path of 32767 UTF-16 units, with room to spare).
pub const MAX_LOCATOR_BYTES: u32 = 1 << 16;

/// One decoded parent locator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locator {
    /// Its "Platform Code" as text (`W2ru`, `W2ku`, ...).
    pub platform: String,
    /// The decoded path, or `None` if the entry is unusable.
    pub path: Option<String>,
    /// Why the entry is unusable.
    pub problem: Option<String>,
    /// "Platform Data Offset".
    pub offset: u64,
    /// "Platform Data Length".
    pub length: u32,
    /// "Platform Data Space".
    pub space: u32,
}

/// Decode UTF-16 (`little` endian or big), stopping at the first NUL.
pub fn decode_utf16(bytes: &[u8], little: bool) -> String {
    let units = bytes.chunks_exact(2).map(|c| {
        if little {
            u16::from_le_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], c[1]])
        }
    });
    let units: Vec<u16> = units.take_while(|&u| u != 0).collect();
    String::from_utf16_lossy(&units)
}

/// Encode as UTF-16, little or big endian, without a terminator.
pub fn encode_utf16(text: &str, little: bool) -> Vec<u8> {
    text.encode_utf16()
        .flat_map(|u| if little { u.to_le_bytes() } else { u.to_be_bytes() })
        .collect()
}

/// The header's "Parent Unicode Name".
pub fn unicode_name(header: &DynamicHeader) -> String {
    decode_utf16(&header.parent_unicode_name, false)
}

/// Decode every used locator entry, reading its data (bounded by `file_len`).
pub fn read_locators(storage: &dyn Storage, header: &DynamicHeader, file_len: u64) -> Result<Vec<Locator>> {
    let mut out = Vec::new();
    for entry in &header.parent_locators {
        if entry.platform_code == [0; 4] {
            continue;
        }
        out.push(read_one(storage, entry, file_len)?);
    }
    Ok(out)
}

fn read_one(storage: &dyn Storage, entry: &ParentLocatorEntry, file_len: u64) -> Result<Locator> {
    let offset = entry.platform_data_offset.get();
    let length = entry.platform_data_length.get();
    let mut loc = Locator {
        platform: String::from_utf8_lossy(&entry.platform_code).into_owned(),
        path: None,
        problem: None,
        offset,
        length,
        space: entry.platform_data_space.get(),
    };
    if length > MAX_LOCATOR_BYTES {
        loc.problem = Some(format!("locator data of {length} bytes is too long"));
        return Ok(loc);
    }
    if offset.checked_add(u64::from(length)).is_none_or(|end| end > file_len) {
        loc.problem = Some(format!("locator data at {offset:#x} lies past the end of the file"));
        return Ok(loc);
    }
    let mut data = vec![0u8; length as usize];
    storage
        .read_at(&mut data, offset)
        .io_context("reading a parent locator", offset)?;
    let text = match entry.platform_code {
        PLATFORM_W2RU | PLATFORM_W2KU => decode_utf16(&data, true),
        PLATFORM_WI2R | PLATFORM_WI2K | PLATFORM_MACX => {
            let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
            String::from_utf8_lossy(&data[..end]).into_owned()
        }
        _ => {
            loc.problem = Some("platform not supported".into());
            return Ok(loc);
        }
    };
    let text = if entry.platform_code == PLATFORM_MACX {
        text.strip_prefix("file://").unwrap_or(&text).to_string()
    } else {
        text
    };
    if text.is_empty() {
        loc.problem = Some("empty path".into());
    } else {
        loc.path = Some(text);
    }
    Ok(loc)
}

/// Paths to try for the parent, best first: W2ru (relative), W2ku (absolute), the deprecated
/// and Mac forms, and last the "Parent Unicode Name" (which Windows records as a full path).
pub fn candidates(locators: &[Locator], unicode_name: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for platform in ["W2ru", "W2ku", "Wi2r", "Wi2k", "MacX"] {
        for loc in locators.iter().filter(|l| l.platform == platform) {
            match &loc.path {
                Some(p) if !out.contains(p) => out.push(p.clone()),
                _ => {}
            }
        }
    }
    if !unicode_name.is_empty() && !out.iter().any(|p| p == unicode_name) {
        out.push(unicode_name.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf16_round_trip() {
        let s = ".\\päre€nt.vhd";
        assert_eq!(decode_utf16(&encode_utf16(s, true), true), s);
        assert_eq!(decode_utf16(&encode_utf16(s, false), false), s);
        let mut padded = encode_utf16("ab", false);
        padded.extend([0, 0, 0, 0x41]);
        assert_eq!(decode_utf16(&padded, false), "ab");
    }

    #[test]
    fn candidate_order() {
        let loc = |platform: &str, path: &str| Locator {
            platform: platform.into(),
            path: Some(path.into()),
            problem: None,
            offset: 0,
            length: 0,
            space: 0,
        };
        let c = candidates(&[loc("W2ku", "C:\\p.vhd"), loc("W2ru", ".\\p.vhd")], "C:\\p.vhd");
        assert_eq!(c, vec![".\\p.vhd".to_string(), "C:\\p.vhd".to_string()]);
        assert_eq!(candidates(&[], "p.vhd"), vec!["p.vhd".to_string()]);
    }
}
