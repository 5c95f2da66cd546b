//! The VHDX log: finding the active sequence, replaying it (to the file or into an in-memory
//! overlay), and building new log entries.
//!
//! The log is hostile input: every size in it is checked before use, and the scan does work
//! linear in the log's length (each position is checksummed at most once, and at most
//! `WORK_FACTOR` times the log's length is checksummed in all; more is refused as a damaged
//! log).

#![warn(clippy::arithmetic_side_effects)]

use crate::format::*;
use crate::parse::{checksum_with_zero_field, read_bounded};
use disk_core::guid::MsGuid;
use disk_core::{Error, Result, Storage};
use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use zerocopy::{FromBytes, FromZeros, IntoBytes};

/// Largest log read into memory for replay.
const MAX_LOG: u64 = 1 << 30;
/// Most a replay may grow the file past its current length (`LastFileOffset`, zero
/// descriptors): room for a few payload blocks of the largest size that a writer allocated but
/// had not flushed yet. More is a hostile log asking for a sparse file of absurd size.
pub(crate) const MAX_REPLAY_GROWTH: u64 = 4 * MAX_BLOCK_SIZE as u64;
/// The scan checksums at most this many times the log's length: a sound log holds entries that
/// do not overlap (each byte checksummed once, plus a torn head or two), so more means forged
/// headers claiming long entries, and the log is refused as too damaged.
const WORK_FACTOR: u64 = 4;
/// Bytes of the header of a log entry (always inside the entry's first 4 KiB sector).
const ENTRY_HEADER: usize = size_of::<LogEntryHeader>();
/// Bytes of one log descriptor.
const DESCRIPTOR: usize = size_of::<LogDescriptor>();
/// [`LOG_SECTOR`] as a `u64`.
const SECTOR: u64 = LOG_SECTOR as u64;

/// One change a log entry makes to the file.
#[derive(Debug, Clone)]
pub(crate) struct LogOp {
    /// File offset (4 KiB aligned).
    pub offset: u64,
    /// Bytes affected.
    pub len: u64,
    /// The 4 KiB sector to write, or `None` for zeros.
    pub data: Option<Arc<[u8]>>,
}

impl LogOp {
    /// One past the last byte affected (entries are checked not to overflow when parsed).
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.len)
    }
}

/// The active sequence of a log, ready to replay.
#[derive(Debug, Clone, Default)]
pub(crate) struct Replay {
    /// Changes in replay order.
    pub ops: Vec<LogOp>,
    /// Entries in the active sequence.
    pub entries: usize,
    /// File size required after replay (`LastFileOffset` of the head entry).
    pub last_file_offset: u64,
}

impl Replay {
    /// The file length the log asks for: `LastFileOffset`, or more if a change reaches further.
    pub fn required_len(&self) -> u64 {
        self.ops
            .iter()
            .map(LogOp::end)
            .chain([self.last_file_offset])
            .max()
            .unwrap_or(0)
    }
}

/// What a valid entry says about itself.
#[derive(Debug, Clone)]
struct Entry {
    seq: u64,
    len: u64,
    tail: u64,
    flushed: u64,
    last: u64,
    ops: Vec<LogOp>,
}

/// How much work a scan did (the regression tests bound it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Work {
    /// Bytes of entries checksummed.
    pub hashed: u64,
    /// Entries visited while following sequences from their tails.
    pub steps: u64,
}

struct LogScan<'a> {
    log: &'a [u8],
    guid: MsGuid,
    /// Outcome of each position parsed so far (an index into `entries`): every position is
    /// checksummed at most once.
    memo: HashMap<u64, Option<usize>>,
    /// The valid entries found (their total size is bounded by the checksum budget).
    entries: Vec<Entry>,
    work: &'a mut Work,
    /// Most bytes [`Work::hashed`] may reach.
    hash_budget: u64,
    /// Most entries [`Work::steps`] may reach.
    step_budget: u64,
}

fn too_damaged(what: &str) -> Error {
    Error::corrupt(format!(
        "log too damaged: {what} (forged or overlapping entries); refusing to scan further"
    ))
    .in_structure("log")
}

impl LogScan<'_> {
    fn len(&self) -> u64 {
        self.log.len() as u64
    }

    /// Cheap check: does `pos` start with a header of our log?
    fn header(&self, pos: u64) -> Option<LogEntryHeader> {
        let at = usize::try_from(pos).ok()?;
        let h = LogEntryHeader::read_from_prefix(self.log.get(at..)?).ok()?.0;
        let len = u64::from(h.entry_length.get());
        let tail = u64::from(h.tail.get());
        let ok = h.signature.get() == LOG_ENTRY_SIGNATURE
            && h.log_guid == self.guid
            && len >= SECTOR
            && len % SECTOR == 0
            && len <= self.len()
            && tail % SECTOR == 0
            && tail < self.len();
        ok.then_some(h)
    }

    /// The 4 KiB sector `k` of the entry at `pos`, wrapping around the end of the log (whose
    /// length is a multiple of 4 KiB, so a sector never straddles the end).
    fn sector(&self, pos: u64, k: u64) -> Option<&[u8]> {
        let at = k.checked_mul(SECTOR)?.checked_add(pos)?.checked_rem(self.len())?;
        let at = usize::try_from(at).ok()?;
        self.log.get(at..at.checked_add(LOG_SECTOR)?)
    }

    /// CRC-32C of the `len` bytes at `pos` (wrapping), with the checksum field taken as zero;
    /// no copy. The header never wraps: `pos` is sector aligned.
    fn checksum(&self, pos: u64, len: u64) -> Option<u32> {
        let start = usize::try_from(pos).ok()?;
        let len = usize::try_from(len).ok()?;
        let first_len = self.log.len().checked_sub(start)?.min(len);
        let first = self.log.get(start..start.checked_add(first_len)?)?;
        let rest = self.log.get(..len.checked_sub(first_len)?)?;
        Some(crc32c::crc32c_append(checksum_with_zero_field(first, 4), rest))
    }

    /// The valid entry at `pos`, if any, as an index into `entries` (memoised). Fails once the
    /// scan has checksummed more than its budget.
    fn entry(&mut self, pos: u64) -> Result<Option<usize>> {
        if let Some(&e) = self.memo.get(&pos) {
            return Ok(e);
        }
        let e = match self.header(pos) {
            None => None,
            Some(h) => {
                let len = u64::from(h.entry_length.get());
                self.work.hashed = self.work.hashed.saturating_add(len);
                if self.work.hashed > self.hash_budget {
                    return Err(too_damaged(&format!(
                        "more than {} bytes to checksum in a log of {} bytes",
                        self.hash_budget,
                        self.len()
                    )));
                }
                let valid = self.checksum(pos, len) == Some(h.checksum.get());
                valid.then(|| self.parse(pos, &h)).flatten().map(|e| {
                    self.entries.push(e);
                    self.entries.len().saturating_sub(1)
                })
            }
        };
        self.memo.insert(pos, e);
        Ok(e)
    }

    /// Descriptors and data sectors of the entry at `pos` whose checksum matched.
    fn parse(&self, pos: u64, h: &LogEntryHeader) -> Option<Entry> {
        let seq = h.sequence_number.get();
        let len = u64::from(h.entry_length.get());
        let sectors = len / SECTOR;
        let count = u64::from(h.descriptor_count.get());
        // Descriptors follow the 64-byte header; 128 fit in a sector, none straddles one.
        let desc_sectors = count
            .checked_mul(DESCRIPTOR as u64)?
            .checked_add(ENTRY_HEADER as u64)?
            .div_ceil(SECTOR);
        if desc_sectors > sectors {
            return None;
        }
        let mut next_data = desc_sectors;
        let mut ops = Vec::new();
        for i in 0..count {
            let byte = i.checked_mul(DESCRIPTOR as u64)?.checked_add(ENTRY_HEADER as u64)?;
            let sector = self.sector(pos, byte / SECTOR)?;
            let within = usize::try_from(byte % SECTOR).ok()?;
            let d = LogDescriptor::read_from_prefix(sector.get(within..)?).ok()?.0;
            let offset = d.file_offset.get();
            if d.sequence_number.get() != seq || offset % SECTOR != 0 {
                return None;
            }
            match d.signature.get() {
                ZERO_DESC_SIGNATURE => {
                    let zlen = u64::from_le_bytes(d.leading_or_length);
                    if zlen % SECTOR != 0 {
                        return None;
                    }
                    offset.checked_add(zlen)?;
                    ops.push(LogOp {
                        offset,
                        len: zlen,
                        data: None,
                    });
                }
                DATA_DESC_SIGNATURE => {
                    if next_data >= sectors {
                        return None;
                    }
                    let ds = LogDataSector::read_from_bytes(self.sector(pos, next_data)?).ok()?;
                    next_data = next_data.checked_add(1)?;
                    let sseq = (u64::from(ds.sequence_high.get()) << 32) | u64::from(ds.sequence_low.get());
                    if ds.signature.get() != DATA_SECTOR_SIGNATURE || sseq != seq {
                        return None;
                    }
                    offset.checked_add(SECTOR)?;
                    let mut page = Vec::with_capacity(LOG_SECTOR);
                    page.extend_from_slice(&d.leading_or_length);
                    page.extend_from_slice(&ds.data);
                    page.extend_from_slice(&d.trailing_bytes);
                    ops.push(LogOp {
                        offset,
                        len: SECTOR,
                        data: Some(page.into()),
                    });
                }
                _ => return None,
            }
        }
        Some(Entry {
            seq,
            len,
            tail: u64::from(h.tail.get()),
            flushed: h.flushed_file_offset.get(),
            last: h.last_file_offset.get(),
            ops,
        })
    }

    /// Follow the sequence from the tail of the head entry (`head`, at `head_pos`): the entries
    /// up to and including the head, if they are valid and consecutive.
    fn chain(&mut self, head_pos: u64, head: usize) -> Result<Option<Vec<usize>>> {
        let (head_seq, mut pos) = (self.entries[head].seq, self.entries[head].tail);
        let mut chain = Vec::new();
        let mut expect: Option<u64> = None;
        // A sequence has at most one entry per sector of the log.
        for _ in 0..=self.len() / SECTOR {
            self.work.steps = self.work.steps.saturating_add(1);
            if self.work.steps > self.step_budget {
                return Err(too_damaged("too many sequences to follow"));
            }
            let Some(i) = self.entry(pos)? else {
                return Ok(None);
            };
            let e = &self.entries[i];
            if expect.is_some_and(|s| s != e.seq) {
                return Ok(None);
            }
            let at_head = pos == head_pos && e.seq == head_seq;
            expect = e.seq.checked_add(1);
            pos = pos
                .checked_add(e.len)
                .and_then(|p| p.checked_rem(self.len()))
                .unwrap_or(0);
            chain.push(i);
            if at_head {
                return Ok(Some(chain));
            }
        }
        Ok(None)
    }
}

/// Find the active sequence of the log at `log_offset` (entries of `guid`): the valid entry with
/// the highest sequence number whose tail leads to it through consecutive valid entries.
/// `Ok(None)` if there is none (an empty log).
pub(crate) fn find_active(
    storage: &dyn Storage,
    file_len: u64,
    log_offset: u64,
    log_length: u64,
    guid: MsGuid,
) -> Result<Option<Replay>> {
    if guid.is_nil() || log_length == 0 {
        return Ok(None);
    }
    if log_length > MAX_LOG {
        return Err(
            Error::unsupported(format!("log of {log_length} bytes is too large to replay")).in_structure("log"),
        );
    }
    let log = read_bounded(storage, file_len, log_offset, log_length, "log")?;
    scan(&log, guid, file_len, &mut Work::default()).map_err(|e| e.at_offset(log_offset))
}

/// What [`scan_log`] found: the active sequence of a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogSummary {
    /// Entries in the active sequence.
    pub entries: usize,
    /// Changes (data sectors and zeroed ranges) the sequence makes to the file.
    pub changes: usize,
    /// The file length the sequence asks for after replay.
    pub required_len: u64,
}

/// Scan a VHDX log on its own, as opening an image does (for fuzzing and tools): `log` is the
/// log's bytes (a multiple of 4 KiB), `guid` the header's `LogGuid`, `file_len` the image
/// file's length. Returns the active sequence, `None` for an empty log (or a nil GUID), or an
/// [`ErrorKind::Corrupt`](disk_core::ErrorKind) error for a damaged one. Never panics; its work
/// is linear in the log's length whatever the log holds.
pub fn scan_log(log: &[u8], guid: MsGuid, file_len: u64) -> Result<Option<LogSummary>> {
    Ok(scan(log, guid, file_len, &mut Work::default())?.map(|r| LogSummary {
        entries: r.entries,
        changes: r.ops.len(),
        required_len: r.required_len(),
    }))
}

/// [`find_active`] on the log's bytes (a multiple of 4 KiB long), counting the work done.
pub(crate) fn scan(log: &[u8], guid: MsGuid, file_len: u64, work: &mut Work) -> Result<Option<Replay>> {
    let log_len = log.len() as u64;
    if guid.is_nil() || log_len == 0 || !log_len.is_multiple_of(SECTOR) {
        return Ok(None);
    }
    let sectors = log_len / SECTOR;
    let mut scan = LogScan {
        log,
        guid,
        memo: HashMap::new(),
        entries: Vec::new(),
        work,
        hash_budget: log_len.saturating_mul(WORK_FACTOR),
        step_budget: sectors.saturating_mul(WORK_FACTOR).saturating_add(WORK_FACTOR),
    };
    let mut heads: Vec<(u64, u64)> = (0..sectors)
        .filter_map(|i| {
            let pos = i.checked_mul(SECTOR)?;
            scan.header(pos).map(|h| (h.sequence_number.get(), pos))
        })
        .collect();
    heads.sort_unstable_by(|a, b| b.cmp(a));
    for (_, head_pos) in heads {
        let Some(head) = scan.entry(head_pos)? else {
            continue;
        };
        let Some(chain) = scan.chain(head_pos, head)? else {
            continue;
        };
        let head = &scan.entries[head];
        let replay = Replay {
            entries: chain.len(),
            ops: chain
                .iter()
                .flat_map(|&i| scan.entries[i].ops.iter().cloned())
                .collect(),
            last_file_offset: head.last,
        };
        check_bounds(&replay, head.flushed, file_len)?;
        return Ok(Some(replay));
    }
    Ok(None)
}

/// Refuse an active sequence that asks for more than the file can justify: data known durable
/// past the end of the file (it was lost), growth beyond [`MAX_REPLAY_GROWTH`], or changes past
/// the file size the log itself records.
fn check_bounds(replay: &Replay, flushed: u64, file_len: u64) -> Result<()> {
    let bad = |m: String| Err(Error::corrupt(m).in_structure("log"));
    if flushed > file_len {
        return bad(format!(
            "the log says the file had {flushed} bytes but it has {file_len}: data was lost"
        ));
    }
    let last = replay.last_file_offset;
    if last > file_len.saturating_add(MAX_REPLAY_GROWTH) {
        return bad(format!(
            "the log asks to grow the file from {file_len} to {last} bytes (at most {MAX_REPLAY_GROWTH} more)"
        ));
    }
    let limit = file_len.max(last);
    if let Some(op) = replay.ops.iter().find(|op| op.end() > limit) {
        return bad(format!(
            "the log changes {} bytes at {:#x}, past the file size it records ({limit} bytes)",
            op.len, op.offset
        ));
    }
    Ok(())
}

/// Apply a replay to the file itself (the caller flushes afterwards), growing the file to the
/// length the log asks for but to at most `max_len` (what the image's structures use, found by
/// its space map): changes past `max_len` touch space nothing refers to and are skipped.
pub(crate) fn apply(storage: &dyn Storage, replay: &Replay, max_len: u64) -> io::Result<()> {
    let len = storage.len()?;
    let target = replay.required_len().min(max_len.max(len));
    if target > len {
        storage.set_len(target)?;
    }
    for op in &replay.ops {
        let end = op.end().min(target);
        let Some(n) = end.checked_sub(op.offset).filter(|&n| n > 0) else {
            continue;
        };
        match &op.data {
            Some(d) => storage.write_at(d.get(..usize::try_from(n).unwrap_or(0)).unwrap_or(&[]), op.offset)?,
            None => storage.punch_hole(op.offset, n)?,
        }
    }
    Ok(())
}

/// A read-only view of a file with a replayed log laid over it, so that a dirty image reads
/// correctly without being modified.
#[derive(Debug)]
pub(crate) struct Overlay {
    inner: Arc<dyn Storage>,
    ops: Vec<LogOp>,
    len: u64,
    /// Smallest and largest byte touched, to skip the op scan for most reads.
    span: (u64, u64),
}

impl Overlay {
    /// Lay `replay` over `inner`.
    pub fn new(inner: Arc<dyn Storage>, replay: Replay) -> io::Result<Self> {
        let file_len = inner.len()?;
        let lo = replay.ops.iter().map(|o| o.offset).min().unwrap_or(0);
        let hi = replay.ops.iter().map(LogOp::end).max().unwrap_or(0);
        Ok(Overlay {
            inner,
            len: file_len.max(replay.required_len()),
            ops: replay.ops,
            span: (lo, hi),
        })
    }
}

fn read_only_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "log replayed in memory: image is read-only",
    )
}

impl Storage for Overlay {
    // The subtractions take `offset <= s < e <= end = offset + buf.len()` and, for data,
    // `op.offset <= s < e <= op.offset + 4096`: each index lies inside its buffer.
    #[allow(clippy::arithmetic_side_effects)]
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past end of file"))?;
        let file_len = self.inner.len()?;
        let in_file = usize::try_from(file_len.saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        self.inner.read_at(&mut buf[..in_file], offset)?;
        buf[in_file..].fill(0);
        if end <= self.span.0 || offset >= self.span.1 {
            return Ok(());
        }
        for op in &self.ops {
            let (s, e) = (op.offset.max(offset), op.end().min(end));
            if s >= e {
                continue;
            }
            let dst = &mut buf[(s - offset) as usize..(e - offset) as usize];
            match &op.data {
                Some(d) => dst.copy_from_slice(&d[(s - op.offset) as usize..(e - op.offset) as usize]),
                None => dst.fill(0),
            }
        }
        Ok(())
    }
    fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Err(read_only_error())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.len)
    }
    fn set_len(&self, _len: u64) -> io::Result<()> {
        Err(read_only_error())
    }
    fn punch_hole(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Err(read_only_error())
    }
}

/// What a new log entry says about the file.
pub(crate) struct EntryParams {
    /// The log's GUID.
    pub guid: MsGuid,
    /// Sequence number.
    pub seq: u64,
    /// Log offset of the oldest entry still needed.
    pub tail: u32,
    /// File size known durable.
    pub flushed_file_offset: u64,
    /// File size after replay.
    pub last_file_offset: u64,
}

/// Bytes of an entry logging `pages` (4 KiB sectors: file offset and contents).
// Our own entries: `pages` is at most the log's sectors (a log is at most 4 GiB).
#[allow(clippy::arithmetic_side_effects)]
pub(crate) fn entry_len(pages: usize) -> u64 {
    (((64 + 32 * pages).div_ceil(LOG_SECTOR) + pages) * LOG_SECTOR) as u64
}

/// Build a log entry writing `pages` (file offset, 4 KiB of contents).
// Our own entries: `pages` is at most the log's sectors, so every size fits.
#[allow(clippy::arithmetic_side_effects)]
pub(crate) fn build_entry(p: &EntryParams, pages: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let total = entry_len(pages.len()) as usize;
    let desc_sectors = (64 + 32 * pages.len()).div_ceil(LOG_SECTOR);
    let mut buf = vec![0u8; total];
    let mut h = LogEntryHeader::new_zeroed();
    h.signature.set(LOG_ENTRY_SIGNATURE);
    h.entry_length.set(total as u32);
    h.tail.set(p.tail);
    h.sequence_number.set(p.seq);
    h.descriptor_count.set(pages.len() as u32);
    h.log_guid = p.guid;
    h.flushed_file_offset.set(p.flushed_file_offset);
    h.last_file_offset.set(p.last_file_offset);
    buf[..64].copy_from_slice(h.as_bytes());
    for (i, (offset, page)) in pages.iter().enumerate() {
        let mut d = LogDescriptor::new_zeroed();
        d.signature.set(DATA_DESC_SIGNATURE);
        d.trailing_bytes.copy_from_slice(&page[LOG_SECTOR - 4..]);
        d.leading_or_length.copy_from_slice(&page[..8]);
        d.file_offset.set(*offset);
        d.sequence_number.set(p.seq);
        buf[64 + 32 * i..96 + 32 * i].copy_from_slice(d.as_bytes());
        let mut s = LogDataSector::new_zeroed();
        s.signature.set(DATA_SECTOR_SIGNATURE);
        s.sequence_high.set((p.seq >> 32) as u32);
        s.sequence_low.set(p.seq as u32);
        s.data.copy_from_slice(&page[8..LOG_SECTOR - 4]);
        let at = (desc_sectors + i) * LOG_SECTOR;
        buf[at..at + LOG_SECTOR].copy_from_slice(s.as_bytes());
    }
    let crc = checksum_with_zero_field(&buf, 4);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    buf
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)] // test images of fixed, small sizes
mod tests {
    use super::*;
    use disk_core::MemStorage;

    fn params(guid: MsGuid, seq: u64, tail: u32) -> EntryParams {
        EntryParams {
            guid,
            seq,
            tail,
            flushed_file_offset: 4 * MIB,
            last_file_offset: 4 * MIB,
        }
    }

    #[test]
    fn hostile_entries_with_valid_checksums_never_panic() {
        let guid = MsGuid([5; 16]);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..400 {
            let s = MemStorage::new();
            s.set_len(3 * MIB).unwrap();
            let n = 1 + (next() % 3) as usize;
            let pages: Vec<(u64, Vec<u8>)> = (0..n)
                .map(|i| (2 * MIB + 4096 * i as u64, vec![i as u8; LOG_SECTOR]))
                .collect();
            let mut e = build_entry(&params(guid, next() % 4, 0), &pages);
            for _ in 0..1 + next() % 4 {
                let at = 8 + (next() % (56 + 32 * n as u64)) as usize;
                e[at] = next() as u8;
            }
            e[4..8].fill(0);
            let crc = crc32c::crc32c(&e);
            e[4..8].copy_from_slice(&crc.to_le_bytes());
            let pos = (next() % 256) * LOG_SECTOR as u64;
            let first = e.len().min((MIB - pos) as usize);
            s.write_at(&e[..first], MIB + pos).unwrap();
            s.write_at(&e[first..], MIB).unwrap();
            if let Ok(Some(r)) = find_active(&s, 3 * MIB, MIB, MIB, guid) {
                let o = Overlay::new(Arc::new(s.snapshot()), r).unwrap();
                let mut buf = vec![0u8; 8192];
                let _ = o.read_at(&mut buf, 2 * MIB);
            }
        }
    }

    /// Fix the checksum of an entry edited by a test.
    fn reseal(e: &mut [u8]) {
        e[4..8].fill(0);
        let crc = crc32c::crc32c(e);
        e[4..8].copy_from_slice(&crc.to_le_bytes());
    }

    /// A log of `len` bytes whose every sector starts with a plausible header of `guid` (right
    /// signature, GUID, tail) claiming an entry as long as the whole log, with a wrong checksum.
    fn forged_log(guid: MsGuid, len: usize) -> Vec<u8> {
        let mut log = vec![0u8; len];
        for (i, sector) in log.chunks_mut(LOG_SECTOR).enumerate() {
            let mut h = LogEntryHeader::new_zeroed();
            h.signature.set(LOG_ENTRY_SIGNATURE);
            h.checksum.set(0xdead_beef);
            h.entry_length.set(len as u32);
            h.sequence_number.set(1000 + i as u64);
            h.log_guid = guid;
            sector[..64].copy_from_slice(h.as_bytes());
        }
        log
    }

    #[test]
    fn forged_headers_cost_work_linear_in_the_log() {
        let guid = MsGuid([4; 16]);
        let len = 8 * MIB as usize;
        let log = forged_log(guid, len);
        // 2048 plausible headers of 8 MiB each: checksumming each would be 16 GiB of work.
        let mut work = Work::default();
        let e = scan(&log, guid, 64 * MIB, &mut work).unwrap_err();
        assert_eq!(e.kind(), disk_core::ErrorKind::Corrupt);
        assert!(e.to_string().contains("log too damaged"), "{e}");
        assert!(work.hashed <= (WORK_FACTOR + 1) * len as u64, "{work:?}");

        // Short forged entries: each position is checksummed once, whatever refers to it.
        let mut log = vec![0u8; len];
        for (i, sector) in log.chunks_mut(LOG_SECTOR).enumerate() {
            let mut h = LogEntryHeader::new_zeroed();
            h.signature.set(LOG_ENTRY_SIGNATURE);
            h.entry_length.set(2 * LOG_SECTOR as u32);
            h.sequence_number.set(i as u64);
            h.log_guid = guid;
            sector[..64].copy_from_slice(h.as_bytes());
            reseal(&mut sector[..]);
        }
        let mut work = Work::default();
        let _ = scan(&log, guid, 64 * MIB, &mut work);
        assert!(work.hashed <= 2 * len as u64, "{work:?}");
        assert!(
            work.steps <= WORK_FACTOR * (len / LOG_SECTOR) as u64 + WORK_FACTOR,
            "{work:?}"
        );
    }

    #[test]
    fn a_log_asking_for_a_huge_file_is_refused() {
        let guid = MsGuid([6; 16]);
        let s = MemStorage::new();
        s.set_len(4 * MIB).unwrap();
        // LastFileOffset of 8 TiB.
        let mut p = params(guid, 1, 0);
        p.last_file_offset = 8 << 40;
        s.write_at(&build_entry(&p, &[(3 * MIB, vec![1; LOG_SECTOR])]), MIB)
            .unwrap();
        let e = find_active(&s, 4 * MIB, MIB, MIB, guid).unwrap_err();
        assert_eq!(e.kind(), disk_core::ErrorKind::Corrupt);
        assert!(e.to_string().contains("grow the file"), "{e}");
        // A data sector written past the file size the entry records.
        let p = params(guid, 1, 0);
        s.write_at(&build_entry(&p, &[(8 << 40, vec![1; LOG_SECTOR])]), MIB)
            .unwrap();
        let e = find_active(&s, 4 * MIB, MIB, MIB, guid).unwrap_err();
        assert!(e.to_string().contains("past the file size"), "{e}");
        // A zero descriptor reaching 8 TiB.
        let mut entry = build_entry(&p, &[(3 * MIB, vec![1; LOG_SECTOR])]);
        entry[64..68].copy_from_slice(&ZERO_DESC_SIGNATURE.to_le_bytes());
        entry[72..80].copy_from_slice(&(8u64 << 40).to_le_bytes());
        reseal(&mut entry);
        s.write_at(&entry, MIB).unwrap();
        let e = find_active(&s, 4 * MIB, MIB, MIB, guid).unwrap_err();
        assert!(e.to_string().contains("past the file size"), "{e}");
        // Within bounds: replayed, and `apply` grows the file only as far as it is told.
        let mut p = params(guid, 1, 0);
        p.last_file_offset = 6 * MIB;
        s.write_at(&build_entry(&p, &[(3 * MIB, vec![1; LOG_SECTOR])]), MIB)
            .unwrap();
        let r = find_active(&s, 4 * MIB, MIB, MIB, guid).unwrap().unwrap();
        assert_eq!(r.required_len(), 6 * MIB);
        apply(&s, &r, 5 * MIB).unwrap();
        assert_eq!(s.len().unwrap(), 5 * MIB);
    }

    #[test]
    fn an_entry_may_wrap_around_the_end_of_the_log() {
        let guid = MsGuid([9; 16]);
        let s = MemStorage::new();
        s.set_len(4 * MIB).unwrap();
        let pages = vec![
            (3 * MIB, vec![0xaa; LOG_SECTOR]),
            (3 * MIB + 8192, vec![0xbb; LOG_SECTOR]),
        ];
        let pos = MIB - 8192;
        let e = build_entry(&params(guid, 5, pos as u32), &pages);
        assert_eq!(e.len(), 3 * LOG_SECTOR);
        s.write_at(&e[..8192], MIB + pos).unwrap();
        s.write_at(&e[8192..], MIB).unwrap();
        let r = find_active(&s, 4 * MIB, MIB, MIB, guid).unwrap().unwrap();
        assert_eq!(r.entries, 1);
        assert_eq!(r.ops[1].offset, 3 * MIB + 8192);
        assert_eq!(r.ops[1].data.as_deref().unwrap()[100], 0xbb);
    }

    #[test]
    fn a_log_promising_a_longer_file_is_refused() {
        let guid = MsGuid([3; 16]);
        let s = MemStorage::new();
        s.set_len(4 * MIB).unwrap();
        let mut p = params(guid, 1, 0);
        p.flushed_file_offset = 8 * MIB;
        s.write_at(&build_entry(&p, &[(3 * MIB, vec![1; LOG_SECTOR])]), MIB)
            .unwrap();
        let e = find_active(&s, 4 * MIB, MIB, MIB, guid).unwrap_err();
        assert_eq!(e.kind(), disk_core::ErrorKind::Corrupt);
    }

    #[test]
    fn entries_round_trip_and_torn_ones_are_ignored() {
        let guid = MsGuid([7; 16]);
        let s = MemStorage::new();
        s.set_len(4 * MIB).unwrap();
        let page = |b: u8| vec![b; LOG_SECTOR];
        let e1 = build_entry(&params(guid, 10, 0), &[(3 * MIB, page(1))]);
        s.write_at(&e1, MIB).unwrap();
        let e2 = build_entry(&params(guid, 11, 0), &[(3 * MIB, page(2)), (3 * MIB + 4096, page(3))]);
        s.write_at(&e2, MIB + e1.len() as u64).unwrap();
        let r = find_active(&s, 4 * MIB, MIB, MIB, guid).unwrap().unwrap();
        assert_eq!(r.entries, 2);
        assert_eq!(r.last_file_offset, 4 * MIB);
        assert_eq!(r.ops.len(), 3);
        assert_eq!(r.ops[2].data.as_deref().unwrap()[0], 3);
        // A wrong GUID sees nothing.
        assert!(find_active(&s, 4 * MIB, MIB, MIB, MsGuid([8; 16])).unwrap().is_none());
        // Tear the second entry: only the first remains.
        s.write_at(&[0xff; 16], MIB + e1.len() as u64 + 5000).unwrap();
        let r = find_active(&s, 4 * MIB, MIB, MIB, guid).unwrap().unwrap();
        assert_eq!(r.entries, 1);
        assert_eq!(r.ops.len(), 1);
        // The overlay shows the replayed data without touching the file.
        let o = Overlay::new(Arc::new(s.snapshot()), r).unwrap();
        let mut b = [0u8; 2];
        o.read_at(&mut b, 3 * MIB + 4095).unwrap();
        assert_eq!(b, [1, 0]);
    }
}
