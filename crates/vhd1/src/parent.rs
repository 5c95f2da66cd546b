//! Parent locators and the parent's name: how a differencing disk records its parent.

#![deny(clippy::arithmetic_side_effects)]

use crate::format::{
    DynamicHeader, PLATFORM_MACX, PLATFORM_W2KU, PLATFORM_W2RU, PLATFORM_WI2K, PLATFORM_WI2R, ParentLocatorEntry,
    SECTOR_SIZE,
};
use disk_core::utf16::{self, Endian};
use disk_core::{Error, IoResultExt, Result, Storage};
use std::path::Path;

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

/// The header's "Parent Unicode Name" (UTF-16BE, NUL padded).
pub fn unicode_name(header: &DynamicHeader) -> String {
    utf16::decode_lossy(&header.parent_unicode_name, Endian::Big)
}

/// Record a parent in `header`, replacing its "Parent Unicode Name" and parent locators: the
/// name the user gave (`recorded`), a W2ku locator with the parent's host path `absolute` and a
/// W2ru locator with its path relative to the child at `child` ([`disk_core::relative_locator`]).
/// The locators' data is laid out from file offset `at`, each in whole sectors (see
/// [`LocatorData`]). The unique id and timestamp are the caller's.
pub(crate) fn record_parent(
    header: &mut DynamicHeader,
    recorded: &str,
    absolute: Option<&Path>,
    child: Option<&Path>,
    at: u64,
) -> Result<LocatorData> {
    let name = utf16::encode(recorded, Endian::Big);
    header.parent_unicode_name = [0; 512];
    let n = name.len().min(header.parent_unicode_name.len());
    header.parent_unicode_name[..n].copy_from_slice(&name[..n]);
    header.parent_locators = [ParentLocatorEntry::default(); 8];
    let relative = disk_core::relative_locator(recorded, absolute, child);
    let absolute = absolute.map(|p| p.to_string_lossy().into_owned());
    let mut data = Vec::new();
    let mut next = at;
    let paths = [(PLATFORM_W2KU, absolute), (PLATFORM_W2RU, relative)];
    for (entry, (code, path)) in header
        .parent_locators
        .iter_mut()
        .zip(paths.into_iter().filter_map(|(c, p)| p.map(|p| (c, p))))
    {
        let mut bytes = utf16::encode(&path, Endian::Little);
        let length = u32::try_from(bytes.len())
            .ok()
            .filter(|&l| l <= MAX_LOCATOR_BYTES)
            .ok_or_else(|| Error::invalid_argument(format!("parent path '{path}' is too long")))?;
        // At most 64 KiB: the sums below cannot overflow.
        let space = u64::from(length)
            .div_ceil(SECTOR_SIZE)
            .max(1)
            .saturating_mul(SECTOR_SIZE);
        entry.platform_code = code;
        entry.platform_data_space.set(space as u32);
        entry.platform_data_length.set(length);
        entry.platform_data_offset.set(next);
        bytes.resize(space as usize, 0);
        data.push((next, bytes));
        next = next.saturating_add(space);
    }
    Ok(LocatorData {
        pieces: data,
        end: next,
    })
}

/// The parent locators' data [`record_parent`] laid out, for the caller to write.
pub(crate) struct LocatorData {
    /// Each locator's data with its file offset, zero padded to the space it records.
    pub pieces: Vec<(u64, Vec<u8>)>,
    /// The offset just past the last one.
    pub end: u64,
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
        PLATFORM_W2RU | PLATFORM_W2KU => utf16::decode_lossy(&data, Endian::Little),
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
