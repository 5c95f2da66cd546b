//! Finding, validating and building the hard disk footer.

#![deny(clippy::arithmetic_side_effects)]

use crate::format::{
    DiskType, FEATURE_RESERVED, FIXED_DATA_OFFSET, FOOTER_CHECKSUM_RANGE, FOOTER_COOKIE, FOOTER_SIZE, Footer,
    HOST_OS_WINDOWS, MAX_DISK_SIZE, SECTOR_SIZE, VERSION_1_0, VHD_EPOCH_UNIX, checksum,
};
use disk_core::geometry::Chs;
use disk_core::{Error, IoResultExt, Result, Storage};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

/// Our "Creator Application".
pub const CREATOR_APP: [u8; 4] = *b"vdsk";
/// Our "Creator Version" (0.1).
pub const CREATOR_VERSION: u32 = 0x0000_0001;

/// Where the footer an image was opened with came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FooterSource {
    /// The last 512 bytes of the file.
    End,
    /// The copy at offset 0 (dynamic and differencing disks).
    Start,
}

/// A footer read from the file, with how it was found.
#[derive(Debug, Clone)]
pub struct FoundFooter {
    /// The footer.
    pub footer: Footer,
    /// Its disk type.
    pub disk_type: DiskType,
    /// Where it came from.
    pub source: FooterSource,
    /// Whether its checksum matched (only `false` when opened leniently).
    pub checksum_ok: bool,
}

/// One candidate copy of the footer.
struct Candidate {
    footer: Footer,
    checksum_ok: bool,
    disk_type: Option<DiskType>,
}

fn read_candidate(storage: &dyn Storage, offset: u64, len: u64) -> Result<Option<Candidate>> {
    let mut buf = [0u8; 512];
    let n = usize::try_from(len.min(FOOTER_SIZE)).unwrap_or(512);
    storage
        .read_at(&mut buf[..n], offset)
        .io_context("reading the VHD footer", offset)?;
    if buf[..8] != FOOTER_COOKIE {
        return Ok(None);
    }
    let footer = Footer::read_from_bytes(&buf).map_err(|_| Error::corrupt("footer has the wrong size"))?;
    let checksum_ok = checksum(&buf, FOOTER_CHECKSUM_RANGE) == footer.checksum.get();
    Ok(Some(Candidate {
        disk_type: DiskType::from_raw(footer.disk_type.get()),
        footer,
        checksum_ok,
    }))
}

/// Find the footer: a valid fixed-disk footer at the end of the file wins (so a fixed disk whose
/// guest data begins with `conectix` is still a fixed disk); otherwise the copy at offset 0 of a
/// dynamic or differencing disk, as QEMU reads it; then the footer at the end. A damaged
/// checksum is an error unless `lenient`, in which case the other copy is preferred and a
/// damaged one is used only when nothing better exists.
pub fn find(storage: &dyn Storage, file_len: u64, lenient: bool) -> Result<FoundFooter> {
    if file_len < 511 {
        return Err(
            Error::corrupt(format!("file of {file_len} bytes is too small to hold a VHD footer"))
                .in_structure("footer"),
        );
    }
    // Virtual PC before 2004 wrote a 511-byte footer at the end of fixed disks.
    let end = if file_len >= FOOTER_SIZE {
        match read_candidate(storage, file_len.saturating_sub(FOOTER_SIZE), FOOTER_SIZE)? {
            Some(c) => Some(c),
            None => read_candidate(storage, file_len.saturating_sub(511), 511)?,
        }
    } else {
        read_candidate(storage, file_len.saturating_sub(511), 511)?
    };
    let start = if file_len >= FOOTER_SIZE {
        read_candidate(storage, 0, FOOTER_SIZE)?
    } else {
        None
    };
    let start = start.filter(|c| matches!(c.disk_type, Some(DiskType::Dynamic | DiskType::Differencing)));

    let pick = |c: Candidate, source: FooterSource| -> Result<FoundFooter> {
        let disk_type = c.disk_type.ok_or_else(|| {
            Error::unsupported(format!(
                "disk type {} is not fixed (2), dynamic (3) or differencing (4)",
                c.footer.disk_type.get()
            ))
            .in_structure("footer")
        })?;
        Ok(FoundFooter {
            footer: c.footer,
            disk_type,
            source,
            checksum_ok: c.checksum_ok,
        })
    };

    if end
        .as_ref()
        .is_some_and(|c| c.checksum_ok && c.disk_type == Some(DiskType::Fixed))
    {
        return pick(end.expect("checked"), FooterSource::End);
    }
    match (start, end) {
        (Some(s), _) if s.checksum_ok => pick(s, FooterSource::Start),
        (Some(s), Some(e)) => {
            if !lenient {
                return Err(checksum_error(FooterSource::Start));
            }
            // The copy at the end is the fallback for a damaged copy at offset 0.
            if e.checksum_ok && e.disk_type == s.disk_type {
                pick(e, FooterSource::End)
            } else {
                pick(s, FooterSource::Start)
            }
        }
        (Some(s), None) => {
            if !lenient {
                return Err(checksum_error(FooterSource::Start));
            }
            pick(s, FooterSource::Start)
        }
        (None, Some(e)) => {
            if !e.checksum_ok && !lenient {
                return Err(checksum_error(FooterSource::End));
            }
            pick(e, FooterSource::End)
        }
        (None, None) => Err(
            Error::corrupt("no VHD footer ('conectix' cookie) at the start or end of the file").in_structure("footer"),
        ),
    }
}

fn checksum_error(source: FooterSource) -> Error {
    let (place, offset) = match source {
        FooterSource::Start => ("copy at the start of the file", Some(0)),
        FooterSource::End => ("at the end of the file", None),
    };
    let e = Error::corrupt(format!("footer checksum mismatch ({place})")).in_structure("footer");
    match offset {
        Some(o) => e.at_offset(o),
        None => e,
    }
}

/// The disk geometry recorded in `footer`.
pub fn geometry(footer: &Footer) -> Chs {
    Chs {
        cylinders: footer.cylinders.get(),
        heads: footer.heads,
        sectors_per_track: footer.sectors_per_track,
    }
}

/// Whether a reader takes this footer's size from its CHS geometry (QEMU's rule): only for
/// creators `vpc ` (Virtual PC) and `qemu` (QEMU before `force_size`), and not when the geometry
/// is the 65535/16/255 maximum (which cannot describe larger disks).
pub fn uses_chs(footer: &Footer) -> bool {
    matches!(&footer.creator_application, b"vpc " | b"qemu") && geometry(footer) != Chs::MAX
}

/// The guest-visible size in bytes: `current_size` or the CHS product (see [`uses_chs`]), in
/// whole sectors, at most [`MAX_DISK_SIZE`].
pub fn virtual_size(footer: &Footer) -> Result<u64> {
    let bytes = if uses_chs(footer) {
        geometry(footer).total_sectors().saturating_mul(SECTOR_SIZE)
    } else {
        let size = footer.current_size.get();
        size.saturating_sub(size % SECTOR_SIZE)
    };
    if bytes > MAX_DISK_SIZE {
        return Err(
            Error::unsupported(format!("disk size {bytes} bytes exceeds the VHD maximum of 2040 GiB"))
                .in_structure("footer"),
        );
    }
    Ok(bytes)
}

/// Seconds since 2000-01-01 UTC, now (0 if the clock is before 2000).
pub fn now_timestamp() -> u32 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    u32::try_from(unix.saturating_sub(VHD_EPOCH_UNIX)).unwrap_or(u32::MAX)
}

/// A VHD timestamp as Unix seconds.
pub fn timestamp_to_unix(ts: u32) -> u64 {
    u64::from(ts) + VHD_EPOCH_UNIX
}

/// Recompute and store the footer checksum.
pub fn seal(footer: &mut Footer) {
    footer.checksum.set(0);
    let sum = checksum(footer.as_bytes(), FOOTER_CHECKSUM_RANGE);
    footer.checksum.set(sum);
}

/// A new footer with our creator fields, a fresh unique id and a valid checksum.
pub fn build(disk_type: DiskType, size: u64, geometry: Chs, data_offset: Option<u64>) -> Footer {
    let mut f = Footer::new_zeroed();
    f.cookie = FOOTER_COOKIE;
    f.features.set(FEATURE_RESERVED);
    f.file_format_version.set(VERSION_1_0);
    f.data_offset.set(data_offset.unwrap_or(FIXED_DATA_OFFSET));
    f.timestamp.set(now_timestamp());
    f.creator_application = CREATOR_APP;
    f.creator_version.set(CREATOR_VERSION);
    f.creator_host_os = HOST_OS_WINDOWS;
    f.original_size.set(size);
    f.current_size.set(size);
    f.cylinders.set(geometry.cylinders);
    f.heads = geometry.heads;
    f.sectors_per_track = geometry.sectors_per_track;
    f.disk_type.set(disk_type.raw());
    f.unique_id = *disk_core::guid::new_uuid().as_bytes();
    seal(&mut f);
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use disk_core::MemStorage;

    fn footer_with(creator: &[u8; 4], chs: Chs, size: u64) -> Footer {
        let mut f = build(DiskType::Dynamic, size, chs, Some(512));
        f.creator_application = *creator;
        seal(&mut f);
        f
    }

    #[test]
    fn size_rule_follows_qemu() {
        let chs = Chs {
            cylinders: 288,
            heads: 4,
            sectors_per_track: 17,
        };
        for (creator, size) in [
            (b"vpc ", 10_027_008),
            (b"qemu", 10_027_008),
            (b"qem2", 9_999_360),
            (b"win ", 9_999_360),
            (b"d2v\0", 9_999_360),
            (b"*img", 9_999_360),
            (b"vdsk", 9_999_360),
        ] {
            assert_eq!(virtual_size(&footer_with(creator, chs, 9_999_360)).unwrap(), size);
        }
        assert_eq!(
            virtual_size(&footer_with(b"vpc ", Chs::MAX, 300 << 30)).unwrap(),
            300 << 30
        );
        assert!(virtual_size(&footer_with(b"win ", Chs::MAX, 2041 << 30)).is_err());
    }

    #[test]
    fn finds_and_checks_copies() {
        let f = build(DiskType::Fixed, 4096, Chs::for_sectors(8), None);
        let s = MemStorage::new();
        s.write_at(&[0u8; 4096], 0).unwrap();
        s.write_at(f.as_bytes(), 4096).unwrap();
        let found = find(&s, 4608, false).unwrap();
        assert_eq!(found.disk_type, DiskType::Fixed);
        assert_eq!(found.source, FooterSource::End);
        // Damage the checksum: refused unless lenient.
        s.write_at(&[0xff], 4096 + 100).unwrap();
        assert_eq!(find(&s, 4608, false).unwrap_err().kind(), disk_core::ErrorKind::Corrupt);
        assert!(!find(&s, 4608, true).unwrap().checksum_ok);
        assert!(find(&MemStorage::from_bytes(&[0u8; 100]), 100, true).is_err());
        assert!(find(&MemStorage::from_bytes(&[0u8; 1024]), 1024, true).is_err());
    }
}
