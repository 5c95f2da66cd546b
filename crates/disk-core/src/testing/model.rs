//! The reference model the conformance suite compares engines against.
//!
//! Every sector written by a test holds a self-describing pattern: the id of the write (a
//! non-zero `u32`) and the sector's own LBA, followed by pseudo-random bytes derived from both.
//! So a sector read back can be *decoded* into "written by write #7 for this LBA", "zeros" or
//! "garbage", which makes the model a plain `Vec<u32>` of ids per sector (0 = zeros), cheap to
//! copy at every step, and failure messages precise (stale data, data from another sector, torn
//! sectors).

use crate::disk::Disk;
use crate::error::Result;
use std::fmt;

/// One operation of a test sequence, on sectors of the disk under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Read `count` sectors from `lba` and compare them with the model.
    Read {
        /// First sector.
        lba: u64,
        /// Number of sectors.
        count: u64,
    },
    /// Write `count` sectors of fresh pattern data from `lba`.
    Write {
        /// First sector.
        lba: u64,
        /// Number of sectors.
        count: u64,
    },
    /// `write_zeroes(lba, count)`.
    WriteZeroes {
        /// First sector.
        lba: u64,
        /// Number of sectors.
        count: u64,
    },
    /// `discard(lba, count)`.
    Discard {
        /// First sector.
        lba: u64,
        /// Number of sectors.
        count: u64,
    },
    /// `flush()`.
    Flush,
}

impl Op {
    /// Whether the operation may change the disk's content.
    pub fn is_change(&self) -> bool {
        matches!(self, Op::Write { .. } | Op::WriteZeroes { .. } | Op::Discard { .. })
    }

    /// The sectors it covers, if any.
    pub fn range(&self) -> Option<(u64, u64)> {
        match *self {
            Op::Read { lba, count }
            | Op::Write { lba, count }
            | Op::WriteZeroes { lba, count }
            | Op::Discard { lba, count } => Some((lba, count)),
            Op::Flush => None,
        }
    }

    /// Run the operation on `disk`; a write stores the pattern of write `id`. Returns the data of
    /// a read.
    pub fn perform(&self, disk: &dyn Disk, id: u32) -> Result<Option<Vec<u8>>> {
        let ss = disk.sector_size();
        match *self {
            Op::Read { lba, count } => {
                let mut buf = vec![0u8; sector_bytes(count, ss)];
                disk.read(lba, &mut buf)?;
                Ok(Some(buf))
            }
            Op::Write { lba, count } => {
                disk.write(lba, &pattern_run(id, lba, count, ss))?;
                Ok(None)
            }
            Op::WriteZeroes { lba, count } => disk.write_zeroes(lba, count).map(|()| None),
            Op::Discard { lba, count } => disk.discard(lba, count).map(|()| None),
            Op::Flush => disk.flush().map(|()| None),
        }
    }
}

fn sector_bytes(count: u64, sector_size: u32) -> usize {
    usize::try_from(count * u64::from(sector_size)).expect("test ranges fit in memory")
}

/// The pattern's 8-byte word `index` for write `id` at sector `lba` (cheap to compute, so that
/// checking a sector needs no allocation).
fn pattern_word(id: u32, lba: u64, index: u64) -> u64 {
    let seed = (u64::from(id) << 40) ^ lba.rotate_left(17) ^ 0x5eed_5eed_5eed_5eed;
    let x = seed.wrapping_add(index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let x = (x ^ (x >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^ (x >> 32)
}

pub(crate) use crate::mover::is_zero;

/// The first 12 bytes of a pattern sector: the write id and the LBA, little-endian.
const HEADER: usize = 12;

/// Fill `buf` (one sector) with the pattern of write `id` (non-zero) at sector `lba`.
pub fn fill_pattern(buf: &mut [u8], id: u32, lba: u64) {
    assert!(id != 0, "write id 0 means zeros");
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let v = pattern_word(id, lba, i as u64).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    let header = [&id.to_le_bytes()[..], &lba.to_le_bytes()[..]].concat();
    let n = header.len().min(buf.len());
    buf[..n].copy_from_slice(&header[..n]);
}

/// Whether `buf` (at least 16 bytes) is exactly the pattern of write `id` for sector `lba`.
fn is_pattern(buf: &[u8], id: u32, lba: u64) -> bool {
    buf.len() >= 16
        && buf[..4] == id.to_le_bytes()
        && buf[4..HEADER] == lba.to_le_bytes()
        && buf[HEADER..16] == pattern_word(id, lba, 1).to_le_bytes()[HEADER - 8..]
        && buf
            .chunks(8)
            .enumerate()
            .skip(2)
            .all(|(i, chunk)| chunk == &pattern_word(id, lba, i as u64).to_le_bytes()[..chunk.len()])
}

/// `count` sectors of write `id`'s pattern starting at `lba`.
pub fn pattern_run(id: u32, lba: u64, count: u64, sector_size: u32) -> Vec<u8> {
    let mut buf = vec![0u8; sector_bytes(count, sector_size)];
    for (i, sector) in buf.chunks_mut(sector_size as usize).enumerate() {
        fill_pattern(sector, id, lba + i as u64);
    }
    buf
}

/// What a sector read back holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectorContent {
    /// Write `id`'s pattern for this very sector (id 0: all zeros).
    Id(u32),
    /// Write `id`'s pattern meant for sector `lba`: data landed in the wrong place.
    Misplaced {
        /// The write.
        id: u32,
        /// The sector it was meant for.
        lba: u64,
    },
    /// Neither zeros nor an intact pattern (torn, stale metadata, garbage).
    Garbage,
}

impl fmt::Display for SectorContent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SectorContent::Id(0) => f.write_str("zeros"),
            SectorContent::Id(id) => write!(f, "write #{id}"),
            SectorContent::Misplaced { id, lba } => write!(f, "write #{id}'s data for sector {lba}"),
            SectorContent::Garbage => f.write_str("garbage (neither zeros nor an intact written sector)"),
        }
    }
}

/// Decode one sector read back from sector `lba`.
pub fn decode_sector(buf: &[u8], lba: u64) -> SectorContent {
    if is_zero(buf) {
        return SectorContent::Id(0);
    }
    if buf.len() < 16 {
        return SectorContent::Garbage;
    }
    let id = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes"));
    let at = u64::from_le_bytes(buf[4..12].try_into().expect("8 bytes"));
    if id == 0 || !is_pattern(buf, id, at) {
        return SectorContent::Garbage;
    }
    if at == lba {
        SectorContent::Id(id)
    } else {
        SectorContent::Misplaced { id, lba: at }
    }
}

/// The expected content of every sector: the id of the write that last stored it (0 = zeros).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    ids: Vec<u32>,
}

impl Model {
    /// A disk of `sectors` zero sectors.
    pub fn new(sectors: u64) -> Self {
        Model {
            ids: vec![0; usize::try_from(sectors).expect("model fits in memory")],
        }
    }

    /// Number of sectors.
    pub fn sectors(&self) -> u64 {
        self.ids.len() as u64
    }

    /// The id expected at `lba`.
    pub fn get(&self, lba: u64) -> u32 {
        self.ids[lba as usize]
    }

    /// Apply a successful operation (`id` is the write's id).
    pub fn apply(&mut self, op: &Op, id: u32) {
        let fill = match op {
            Op::Write { .. } => id,
            Op::WriteZeroes { .. } | Op::Discard { .. } => 0,
            Op::Read { .. } | Op::Flush => return,
        };
        let (lba, count) = op.range().expect("changes have a range");
        self.ids[lba as usize..(lba + count) as usize].fill(fill);
    }
}

/// Read the whole disk in chunks, decode each sector and pass it to `check(lba, content)`.
/// Stops at the first error `check` returns; read failures are errors too.
pub fn scan_disk(
    disk: &dyn Disk,
    mut check: impl FnMut(u64, SectorContent) -> std::result::Result<(), String>,
) -> std::result::Result<(), String> {
    const CHUNK: u64 = 256;
    let ss = disk.sector_size();
    let total = disk.sector_count();
    let mut buf = Vec::new();
    let mut lba = 0;
    while lba < total {
        let n = CHUNK.min(total - lba);
        buf.resize(sector_bytes(n, ss), 0);
        disk.read(lba, &mut buf)
            .map_err(|e| format!("reading sectors {lba}+{n}: {}", crate::display_chain(&e)))?;
        for (i, sector) in buf.chunks(ss as usize).enumerate() {
            let at = lba + i as u64;
            check(at, decode_sector(sector, at))?;
        }
        lba += n;
    }
    Ok(())
}

/// Check that the whole disk holds exactly what `model` says.
pub fn compare_with_model(disk: &dyn Disk, model: &Model) -> std::result::Result<(), String> {
    if disk.sector_count() != model.sectors() {
        return Err(format!(
            "disk has {} sectors, model {}",
            disk.sector_count(),
            model.sectors()
        ));
    }
    scan_disk(disk, |lba, got| {
        let want = model.get(lba);
        if got == SectorContent::Id(want) {
            Ok(())
        } else {
            Err(format!(
                "sector {lba} holds {got}, expected {}",
                SectorContent::Id(want)
            ))
        }
    })
}

/// Check the data of a read of `count` sectors at `lba` against the model.
pub fn compare_read(data: &[u8], lba: u64, sector_size: u32, model: &Model) -> std::result::Result<(), String> {
    for (i, sector) in data.chunks(sector_size as usize).enumerate() {
        let at = lba + i as u64;
        let got = decode_sector(sector, at);
        let want = SectorContent::Id(model.get(at));
        if got != want {
            return Err(format!("read of sector {at} returned {got}, expected {want}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_decode() {
        let mut s = vec![0u8; 512];
        assert_eq!(decode_sector(&s, 3), SectorContent::Id(0));
        fill_pattern(&mut s, 7, 3);
        assert_eq!(decode_sector(&s, 3), SectorContent::Id(7));
        assert_eq!(decode_sector(&s, 4), SectorContent::Misplaced { id: 7, lba: 3 });
        s[300] ^= 1;
        assert_eq!(decode_sector(&s, 3), SectorContent::Garbage);
        let run = pattern_run(2, 10, 3, 4096);
        assert_eq!(decode_sector(&run[8192..], 12), SectorContent::Id(2));
        assert_ne!(pattern_run(2, 10, 1, 512), pattern_run(3, 10, 1, 512));

        let mut m = Model::new(8);
        m.apply(&Op::Write { lba: 2, count: 3 }, 5);
        m.apply(&Op::Discard { lba: 3, count: 1 }, 6);
        assert_eq!(m.ids, vec![0, 0, 5, 0, 5, 0, 0, 0]);
    }
}
