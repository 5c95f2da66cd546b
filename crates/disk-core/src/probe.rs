//! Image formats and recognising them from content.

use crate::error::{Error, ErrorKind, Result};
use crate::storage::Storage;
use std::fmt;
use std::io;
use std::path::Path;
use std::str::FromStr;

/// A disk image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// A plain file: byte N of the file is byte N of the disk.
    Raw,
    /// VHD version 1 ("vpc" in QEMU): fixed, dynamic, differencing.
    Vhd,
    /// VHDX.
    Vhdx,
    /// VMDK, all subformats.
    Vmdk,
}

impl Format {
    /// Every format, in probing order.
    pub const ALL: [Format; 4] = [Format::Vhdx, Format::Vmdk, Format::Vhd, Format::Raw];

    /// The canonical name: `raw`, `vhd`, `vhdx`, `vmdk`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Vhd => "vhd",
            Format::Vhdx => "vhdx",
            Format::Vmdk => "vmdk",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = Error;

    /// Accepts the canonical names and `vpc` (QEMU's name for VHD), case-insensitively.
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "raw" => Ok(Format::Raw),
            "vhd" | "vpc" => Ok(Format::Vhd),
            "vhdx" => Ok(Format::Vhdx),
            "vmdk" => Ok(Format::Vmdk),
            _ => Err(Error::new(
                ErrorKind::UnknownFormat,
                format!("unknown format '{s}' (expected raw, vhd, vpc, vhdx or vmdk)"),
            )),
        }
    }
}

/// VHDX file type identifier signature ("vhdxfile") at offset 0.
pub const VHDX_SIGNATURE: &[u8; 8] = b"vhdxfile";
/// VHD footer cookie ("conectix"), at the end of every VHD and at offset 0 of dynamic ones.
pub const VHD_COOKIE: &[u8; 8] = b"conectix";
/// VMDK hosted sparse extent magic ("KDMV" as stored).
pub const VMDK_SPARSE_MAGIC: &[u8; 4] = b"KDMV";
/// VMDK COWD (ESX vmfsSparse / VMDK3) magic.
pub const VMDK_COWD_MAGIC: &[u8; 4] = b"COWD";
/// VMDK seSparse magic: little-endian `0x00000000cafebabe`.
pub const VMDK_SESPARSE_MAGIC: &[u8; 8] = &[0xbe, 0xba, 0xfe, 0xca, 0, 0, 0, 0];

/// How many leading bytes probing looks at.
const HEAD: usize = 4096;

/// Recognise an image's format from its content.
///
/// VHDX signature at 0; VMDK sparse/COWD/seSparse magic or text descriptor at 0; VHD cookie at 0
/// (dynamic) or a VHD footer at the end (fixed VHDs have no header); otherwise raw. The file
/// name's extension is only a tie-breaker: a VHD footer whose checksum is wrong counts as VHD only
/// when the extension says VHD.
pub fn probe(storage: &dyn Storage, name: Option<&Path>) -> io::Result<Format> {
    let len = storage.len()?;
    let mut head = vec![0u8; HEAD.min(usize::try_from(len).unwrap_or(HEAD))];
    storage.read_at(&mut head, 0)?;
    if head.starts_with(VHDX_SIGNATURE) {
        return Ok(Format::Vhdx);
    }
    if head.starts_with(VMDK_SPARSE_MAGIC)
        || head.starts_with(VMDK_COWD_MAGIC)
        || head.starts_with(VMDK_SESPARSE_MAGIC)
        || is_vmdk_descriptor(&head)
    {
        return Ok(Format::Vmdk);
    }
    if head.starts_with(VHD_COOKIE) {
        return Ok(Format::Vhd);
    }
    // Fixed VHD: 512-byte footer at the end (511 bytes in images from Virtual PC before 2004).
    for footer_len in [512u64, 511] {
        if len < footer_len {
            continue;
        }
        let mut footer = [0u8; 512];
        let footer = &mut footer[..footer_len as usize];
        storage.read_at(footer, len - footer_len)?;
        if footer.starts_with(VHD_COOKIE)
            && (vhd_footer_checksum_ok(footer) || extension_is(name, &["vhd", "vpc", "vhdf", "avhd"]))
        {
            return Ok(Format::Vhd);
        }
    }
    Ok(Format::Raw)
}

/// The VHD footer checksum: ones' complement of the byte sum, with the checksum field (bytes
/// 64..68, big-endian) counted as zero.
pub fn vhd_footer_checksum_ok(footer: &[u8]) -> bool {
    if footer.len() < 68 {
        return false;
    }
    let stored = u32::from_be_bytes([footer[64], footer[65], footer[66], footer[67]]);
    let sum = footer
        .iter()
        .enumerate()
        .filter(|(i, _)| !(64..68).contains(i))
        .fold(0u32, |acc, (_, &b)| acc.wrapping_add(u32::from(b)));
    !sum == stored
}

fn extension_is(name: Option<&Path>, exts: &[&str]) -> bool {
    name.and_then(|n| n.extension())
        .and_then(|e| e.to_str())
        .is_some_and(|e| exts.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// A standalone VMDK descriptor: text (no NUL bytes before its end) with a `createType` line or
/// the `# Disk DescriptorFile` banner.
fn is_vmdk_descriptor(head: &[u8]) -> bool {
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
    use crate::storage::MemStorage;

    fn probe_bytes(bytes: &[u8], name: Option<&str>) -> Format {
        probe(&MemStorage::from_bytes(bytes), name.map(Path::new)).unwrap()
    }

    fn footer(valid: bool) -> Vec<u8> {
        let mut f = vec![0u8; 512];
        f[..8].copy_from_slice(VHD_COOKIE);
        f[20] = 7;
        let sum = f.iter().fold(0u32, |a, &b| a.wrapping_add(u32::from(b)));
        let ck = if valid { !sum } else { 1 };
        f[64..68].copy_from_slice(&ck.to_be_bytes());
        f
    }

    #[test]
    fn recognises_each_signature() {
        assert_eq!(probe_bytes(b"", None), Format::Raw);
        assert_eq!(probe_bytes(b"vhdxfile\0\0", None), Format::Vhdx);
        assert_eq!(probe_bytes(b"KDMV\x01\0\0\0", None), Format::Vmdk);
        assert_eq!(probe_bytes(b"COWD\x01\0\0\0", None), Format::Vmdk);
        assert_eq!(
            probe_bytes(&[0xbe, 0xba, 0xfe, 0xca, 0, 0, 0, 0, 1], None),
            Format::Vmdk
        );
        assert_eq!(probe_bytes(b"conectix", None), Format::Vhd);
        let desc = b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\ncreateType=\"monolithicFlat\"\n";
        assert_eq!(probe_bytes(desc, None), Format::Vmdk);
        assert_eq!(probe_bytes(b"version=1\r\ncreateType=\"vmfs\"\r\n", None), Format::Vmdk);
        assert_eq!(probe_bytes(b"createType is just text\n", None), Format::Raw);
        assert_eq!(probe_bytes(&[0u8; 4096], None), Format::Raw);
    }

    #[test]
    fn fixed_vhd_footer_at_end() {
        let mut img = vec![0u8; 4096];
        img.extend(footer(true));
        assert_eq!(probe_bytes(&img, None), Format::Vhd);
        let mut img = vec![0u8; 4096];
        img.extend(footer(false));
        assert_eq!(probe_bytes(&img, Some("disk.img")), Format::Raw);
        assert_eq!(probe_bytes(&img, Some("disk.VHD")), Format::Vhd);
        // A footer alone (empty fixed disk) and the old 511-byte footer.
        assert_eq!(probe_bytes(&footer(true), None), Format::Vhd);
        let mut img = vec![0u8; 1024];
        img.extend(&footer(true)[..511]);
        assert_eq!(probe_bytes(&img, Some("old.vhd")), Format::Vhd);
    }

    #[test]
    fn format_names_parse() {
        assert_eq!("vpc".parse::<Format>().unwrap(), Format::Vhd);
        assert_eq!("VHDX".parse::<Format>().unwrap(), Format::Vhdx);
        assert_eq!("qcow2".parse::<Format>().unwrap_err().kind(), ErrorKind::UnknownFormat);
    }
}
