//! Writing stream-optimized extents sequentially: compressed grains with markers appended in
//! LBA order, each grain table (with its marker) right after the last grain it covers, then (at
//! each flush) the remaining tables, the grain directory, the footer and the end-of-stream
//! marker, as VMware's tools write them.
//!
//! An image we created (no grain allocated yet, grain directory found through the footer) is
//! opened for writing in this mode; `convert` then fills it front to back. A write before a
//! grain already written is refused: stream images cannot be rewritten in place.

#![warn(clippy::arithmetic_side_effects)]

use crate::format::{self, GrainMarker, MetaDataMarker, SECTOR, SparseExtentHeader};
use crate::sparse::SparseExtent;
use disk_core::sync::lock;
use disk_core::{Allocation, BlockStatus, Disk, Error, IoResultExt, Result};
use std::collections::BTreeMap;
use std::sync::Mutex;
use zerocopy::{FromBytes, FromZeros, IntoBytes};

/// Deflate level for new grains (speed over the last few percent of size).
const LEVEL: u8 = 1;

#[derive(Debug)]
struct State {
    /// Where the next finished grain goes.
    append_pos: u64,
    /// Grain tables in memory: directory index -> entries (sector of the grain marker).
    tables: BTreeMap<u64, Vec<u32>>,
    /// Tables already written for good (all their grains are behind us): index -> sector.
    emitted: BTreeMap<u64, u32>,
    /// The grain being filled and its data.
    pending: Option<(u64, Vec<u8>)>,
    /// Grains below this are finished and cannot change.
    next_grain: u64,
    /// Metadata must be rewritten at the next flush.
    dirty: bool,
}

/// Sequential writer state for one stream-optimized extent.
#[derive(Debug)]
pub(crate) struct StreamWriter {
    header: SparseExtentHeader,
    state: Mutex<State>,
}

fn marker(num_sectors: u64, kind: u32) -> MetaDataMarker {
    let mut m = MetaDataMarker::new_zeroed();
    m.num_sectors.set(num_sectors);
    m.marker_type.set(kind);
    m
}

/// Little-endian bytes of 32-bit table entries.
pub(crate) fn le_bytes(entries: &[u32]) -> Vec<u8> {
    entries.iter().flat_map(|e| e.to_le_bytes()).collect()
}

// Stream writing works on an image this crate created (see `attach`): its layout was validated
// on open (`capacity * 512` fits in 64 bits, grains at most 2^15 sectors, tables at most 2^16
// entries, directory at most 64 MiB), sector numbers are `lba < capacity` (callers check ranges)
// and positions grow by records of at most a few grains up to a 2 TiB limit enforced by the
// 32-bit table entries (`u32::try_from`), so no sum or product here comes near 2^64.
#[allow(clippy::arithmetic_side_effects)]
/// A grain compressed with its marker, padded to whole sectors.
pub(crate) fn compress_grain(lba: u64, data: &[u8]) -> Vec<u8> {
    let packed = miniz_oxide::deflate::compress_to_vec_zlib(data, LEVEL);
    let mut m = GrainMarker::new_zeroed();
    m.lba.set(lba);
    m.size.set(packed.len() as u32);
    let mut out = Vec::with_capacity(packed.len() + 12 + 512);
    out.extend_from_slice(m.as_bytes());
    out.extend_from_slice(&packed);
    out.resize(out.len().div_ceil(SECTOR as usize) * SECTOR as usize, 0);
    out
}

// Stream writing works on an image this crate created (see `attach`): its layout was validated
// on open (`capacity * 512` fits in 64 bits, grains at most 2^15 sectors, tables at most 2^16
// entries, directory at most 64 MiB), sector numbers are `lba < capacity` (callers check ranges)
// and positions grow by records of at most a few grains up to a 2 TiB limit enforced by the
// 32-bit table entries (`u32::try_from`), so no sum or product here comes near 2^64.
#[allow(clippy::arithmetic_side_effects)]
/// Compress many grains on all cores, keeping their order.
fn compress_all(grains: Vec<(u64, Vec<u8>)>, grain_sectors: u64) -> Vec<Vec<u8>> {
    let records: Vec<(u64, Vec<u8>)> = grains.into_iter().map(|(g, d)| (g * grain_sectors, d)).collect();
    crate::parallel::map_in_order(records, 2, |(lba, d)| compress_grain(lba, &d))
}

// Stream writing works on an image this crate created (see `attach`): its layout was validated
// on open (`capacity * 512` fits in 64 bits, grains at most 2^15 sectors, tables at most 2^16
// entries, directory at most 64 MiB), sector numbers are `lba < capacity` (callers check ranges)
// and positions grow by records of at most a few grains up to a 2 TiB limit enforced by the
// 32-bit table entries (`u32::try_from`), so no sum or product here comes near 2^64.
#[allow(clippy::arithmetic_side_effects)]
impl StreamWriter {
    /// Stream mode for `s` if it is an empty stream image whose metadata sits at the end
    /// (what [`crate::create`] writes); `None` otherwise.
    pub fn attach(s: &SparseExtent) -> Result<Option<Self>> {
        let mut raw = [0u8; 512];
        s.storage.read_at(&mut raw, 0).io_context("reading the header", 0)?;
        let header = SparseExtentHeader::read_from_bytes(&raw).map_err(|_| Error::corrupt("short header"))?;
        let flags = header.flags.get();
        if header.gd_offset.get() != format::GD_AT_END
            || flags & format::FLAG_MARKERS == 0
            || s.gd_offset() < SECTOR
            || s.gd_entries().iter().any(|&e| e != 0)
        {
            return Ok(None);
        }
        let append_pos = s.gd_offset() - SECTOR;
        let mut m = [0u8; 512];
        s.storage
            .read_at(&mut m, append_pos)
            .io_context("reading a marker", append_pos)?;
        let m = MetaDataMarker::read_from_bytes(&m).map_err(|_| Error::corrupt("short marker"))?;
        if m.marker_type.get() != format::MARKER_GD || m.size.get() != 0 {
            return Ok(None);
        }
        Ok(Some(StreamWriter {
            header,
            state: Mutex::new(State {
                append_pos,
                tables: BTreeMap::new(),
                emitted: BTreeMap::new(),
                pending: None,
                next_grain: 0,
                dirty: false,
            }),
        }))
    }

    fn set_entry(st: &mut State, s: &SparseExtent, g: u64, sector: u64) -> Result<()> {
        let sector = u32::try_from(sector).map_err(|_| Error::unsupported("stream image larger than 2 TiB of data"))?;
        let table = st.tables.entry(g / s.gtes).or_insert_with(|| vec![0; s.gtes as usize]);
        table[(g % s.gtes) as usize] = sector;
        Ok(())
    }

    fn append(st: &mut State, s: &SparseExtent, done: &[(u64, Vec<u8>)]) -> Result<()> {
        let work: Vec<(u64, Vec<u8>)> = done
            .iter()
            .filter(|(_, d)| d.iter().any(|&b| b != 0))
            .cloned()
            .collect();
        let grains: Vec<u64> = work.iter().map(|(g, _)| *g).collect();
        let packed = compress_all(work, s.grain);
        for (g, rec) in grains.iter().zip(packed) {
            Self::emit_tables_before(st, s, g / s.gtes)?;
            let at = st.append_pos;
            s.storage
                .write_at(&rec, at)
                .io_context("writing a compressed grain", at)?;
            Self::set_entry(st, s, *g, at / SECTOR)?;
            st.append_pos += rec.len() as u64;
            s.grew(st.append_pos);
        }
        Ok(())
    }

    /// A grain table with its marker, padded to whole sectors.
    fn table_record(table: &[u32], gt_sectors: u64) -> Vec<u8> {
        let mut rec = marker(gt_sectors, format::MARKER_GT).as_bytes().to_vec();
        rec.extend_from_slice(&le_bytes(table));
        rec.resize(rec.len().div_ceil(SECTOR as usize) * SECTOR as usize, 0);
        rec
    }

    /// Write, at the append position, every table before table `current` not yet written: no
    /// grain can be added to them any more.
    fn emit_tables_before(st: &mut State, s: &SparseExtent, current: u64) -> Result<()> {
        let gt_sectors = (s.gtes * 4).div_ceil(SECTOR);
        let due: Vec<u64> = st
            .tables
            .range(..current)
            .map(|(i, _)| *i)
            .filter(|i| !st.emitted.contains_key(i))
            .collect();
        for i in due {
            let rec = Self::table_record(&st.tables[&i], gt_sectors);
            let at = st.append_pos;
            s.storage.write_at(&rec, at).io_context("writing a grain table", at)?;
            let sector = u32::try_from(at / SECTOR + 1).map_err(|_| Error::unsupported("stream image too large"))?;
            st.emitted.insert(i, sector);
            st.append_pos += rec.len() as u64;
            s.grew(st.append_pos);
        }
        Ok(())
    }

    /// Write extent sectors from `lba`: only at or after the grain being filled.
    pub fn write(&self, s: &SparseExtent, lba: u64, buf: &[u8]) -> Result<()> {
        let mut st = lock(&self.state);
        let gb = s.grain_bytes() as usize;
        let total = buf.len() as u64 / SECTOR;
        let mut finished = Vec::new();
        let mut done = 0u64;
        while done < total {
            let at = lba + done;
            let g = at / s.grain;
            let within = ((at % s.grain) * SECTOR) as usize;
            let n = (s.grain - at % s.grain).min(total - done);
            let piece = &buf[(done * SECTOR) as usize..((done + n) * SECTOR) as usize];
            let pending_g = st.pending.as_ref().map(|p| p.0);
            if pending_g != Some(g) {
                if g < st.next_grain || pending_g.is_some_and(|p| g < p) {
                    return Err(Error::unsupported(format!(
                        "streamOptimized images are written front to back: sector {} lies before data already written \
                         (random writes into stream images are not supported)",
                        at
                    )));
                }
                if let Some(p) = st.pending.take() {
                    finished.push(p);
                }
                st.pending = Some((g, vec![0u8; gb]));
                st.next_grain = g + 1;
            }
            if let Some((_, data)) = st.pending.as_mut() {
                data[within..within + piece.len()].copy_from_slice(piece);
            }
            done += n;
        }
        st.dirty = true;
        Self::append(&mut st, s, &finished)
    }

    /// Read extent sectors from `lba` in stream mode.
    pub fn read(&self, s: &SparseExtent, lba: u64, buf: &mut [u8], global: u64, below: &dyn Disk) -> Result<()> {
        let total = buf.len() as u64 / SECTOR;
        let mut done = 0u64;
        while done < total {
            let at = lba + done;
            let g = at / s.grain;
            let within = ((at % s.grain) * SECTOR) as usize;
            let n = (s.grain - at % s.grain).min(total - done);
            let piece = &mut buf[(done * SECTOR) as usize..((done + n) * SECTOR) as usize];
            let found = {
                let st = lock(&self.state);
                match &st.pending {
                    Some((p, data)) if *p == g => {
                        piece.copy_from_slice(&data[within..within + piece.len()]);
                        None
                    }
                    _ => Some(st.tables.get(&(g / s.gtes)).map_or(0, |t| t[(g % s.gtes) as usize])),
                }
            };
            match found {
                None => {}
                Some(0) => below.read(global + done, piece)?,
                Some(sector) => {
                    let data = s.inflate(u64::from(sector) * SECTOR, g)?;
                    piece.copy_from_slice(&data[within..within + piece.len()]);
                }
            }
            done += n;
        }
        Ok(())
    }

    /// Allocation of the run at `lba` in stream mode.
    pub fn block_status(&self, s: &SparseExtent, lba: u64, max: u64) -> Option<BlockStatus> {
        let st = lock(&self.state);
        let is_data = |g: u64| {
            st.pending.as_ref().is_some_and(|p| p.0 == g)
                || st
                    .tables
                    .get(&(g / s.gtes))
                    .is_some_and(|t| t[(g % s.gtes) as usize] != 0)
        };
        let first = is_data(lba / s.grain);
        let mut n = (s.grain - lba % s.grain).min(max);
        while n < max && is_data((lba + n) / s.grain) == first {
            n = (n + s.grain).min(max);
        }
        // Grains of a stream are written compressed.
        Some(if first {
            BlockStatus::compressed(n)
        } else {
            BlockStatus::new(n, Allocation::Unallocated)
        })
    }

    /// Write the grain being filled, the tables, directory, footer and end-of-stream marker.
    pub fn finish(&self, s: &SparseExtent) -> Result<()> {
        let mut st = lock(&self.state);
        if !st.dirty {
            return Ok(());
        }
        let mut pos = st.append_pos;
        if let Some((g, data)) = st.pending.clone()
            && data.iter().any(|&b| b != 0)
        {
            let rec = compress_grain(g * s.grain, &data);
            s.storage
                .write_at(&rec, pos)
                .io_context("writing a compressed grain", pos)?;
            Self::set_entry(&mut st, s, g, pos / SECTOR)?;
            pos += rec.len() as u64;
            s.grew(pos);
        }
        let gd_count = s.gd_entries().len();
        let mut gd = vec![0u32; gd_count];
        let mut meta = Vec::new();
        let gt_sectors = (s.gtes * 4).div_ceil(SECTOR);
        for (i, sector) in &st.emitted {
            if let Some(e) = gd.get_mut(*i as usize) {
                *e = *sector;
            }
        }
        for (i, table) in st.tables.iter().filter(|(i, _)| !st.emitted.contains_key(i)) {
            let gt_at = pos + meta.len() as u64 + SECTOR;
            let sector = u32::try_from(gt_at / SECTOR).map_err(|_| Error::unsupported("stream image too large"))?;
            if let Some(e) = gd.get_mut(*i as usize) {
                *e = sector;
            }
            meta.extend_from_slice(&Self::table_record(table, gt_sectors));
        }
        let gd_sectors = (gd_count as u64 * 4).div_ceil(SECTOR);
        meta.extend_from_slice(marker(gd_sectors, format::MARKER_GD).as_bytes());
        let gd_at = pos + meta.len() as u64;
        meta.extend_from_slice(&le_bytes(&gd));
        meta.resize(meta.len().div_ceil(512) * 512, 0);
        let mut footer = self.header;
        footer.gd_offset.set(gd_at / SECTOR);
        meta.extend_from_slice(marker(1, format::MARKER_FOOTER).as_bytes());
        meta.extend_from_slice(footer.as_bytes());
        meta.extend_from_slice(marker(0, format::MARKER_EOS).as_bytes());
        s.storage
            .write_at(&meta, pos)
            .io_context("writing stream metadata", pos)?;
        let end = pos + meta.len() as u64;
        s.storage.set_len(end).io_context("setting the stream length", end)?;
        st.dirty = false;
        Ok(())
    }
}
