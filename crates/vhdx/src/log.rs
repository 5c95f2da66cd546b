//! The VHDX log: finding the active sequence, replaying it (to the file or into an in-memory
//! overlay), and building new log entries.

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
/// Largest file size a log entry may ask for (guards against sparse files of absurd size).
const MAX_FILE_OFFSET: u64 = 1 << 50;

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

struct LogScan<'a> {
    log: &'a [u8],
    guid: MsGuid,
    memo: HashMap<u64, Option<Entry>>,
}

impl LogScan<'_> {
    fn len(&self) -> u64 {
        self.log.len() as u64
    }

    /// The bytes of `len` bytes starting at `pos`, wrapping around the end of the log.
    fn bytes(&self, pos: u64, len: u64) -> Vec<u8> {
        let pos = pos as usize;
        let len = len as usize;
        let n = self.log.len();
        let first = (n - pos).min(len);
        let mut v = Vec::with_capacity(len);
        v.extend_from_slice(&self.log[pos..pos + first]);
        v.extend_from_slice(&self.log[..len - first]);
        v
    }

    /// Cheap check: does `pos` start with a header of our log?
    fn header(&self, pos: u64) -> Option<LogEntryHeader> {
        let h = LogEntryHeader::read_from_prefix(&self.log[pos as usize..]).ok()?.0;
        let len = u64::from(h.entry_length.get());
        let tail = u64::from(h.tail.get());
        let ok = h.signature.get() == LOG_ENTRY_SIGNATURE
            && h.log_guid == self.guid
            && len >= LOG_SECTOR as u64
            && len % LOG_SECTOR as u64 == 0
            && len <= self.len()
            && tail % LOG_SECTOR as u64 == 0
            && tail < self.len();
        ok.then_some(h)
    }

    fn entry(&mut self, pos: u64) -> Option<Entry> {
        if let Some(e) = self.memo.get(&pos) {
            return e.clone();
        }
        let e = self.parse(pos);
        self.memo.insert(pos, e.clone());
        e
    }

    fn parse(&self, pos: u64) -> Option<Entry> {
        let h = self.header(pos)?;
        let len = u64::from(h.entry_length.get());
        let bytes = self.bytes(pos, len);
        if checksum_with_zero_field(&bytes, 4) != h.checksum.get() {
            return None;
        }
        let seq = h.sequence_number.get();
        let count = h.descriptor_count.get() as usize;
        let desc_sectors = (64 + 32 * count).div_ceil(LOG_SECTOR);
        if desc_sectors * LOG_SECTOR > bytes.len() {
            return None;
        }
        let (descs, _) = <[LogDescriptor]>::ref_from_prefix_with_elems(&bytes[64..], count).ok()?;
        let mut next_data = desc_sectors;
        let mut ops = Vec::with_capacity(count);
        let last = h.last_file_offset.get();
        for d in descs {
            let offset = d.file_offset.get();
            if d.sequence_number.get() != seq || offset % LOG_SECTOR as u64 != 0 {
                return None;
            }
            match d.signature.get() {
                ZERO_DESC_SIGNATURE => {
                    let zlen = u64::from_le_bytes(d.leading_or_length);
                    if zlen % LOG_SECTOR as u64 != 0 || offset.checked_add(zlen).is_none_or(|e| e > MAX_FILE_OFFSET) {
                        return None;
                    }
                    ops.push(LogOp {
                        offset,
                        len: zlen,
                        data: None,
                    });
                }
                DATA_DESC_SIGNATURE => {
                    let sector = bytes.get(next_data * LOG_SECTOR..(next_data + 1) * LOG_SECTOR)?;
                    next_data += 1;
                    let ds = LogDataSector::read_from_bytes(sector).ok()?;
                    let sseq = (u64::from(ds.sequence_high.get()) << 32) | u64::from(ds.sequence_low.get());
                    if ds.signature.get() != DATA_SECTOR_SIGNATURE || sseq != seq || offset >= MAX_FILE_OFFSET {
                        return None;
                    }
                    let mut page = vec![0u8; LOG_SECTOR];
                    page[..8].copy_from_slice(&d.leading_or_length);
                    page[8..LOG_SECTOR - 4].copy_from_slice(&ds.data);
                    page[LOG_SECTOR - 4..].copy_from_slice(&d.trailing_bytes);
                    ops.push(LogOp {
                        offset,
                        len: LOG_SECTOR as u64,
                        data: Some(page.into()),
                    });
                }
                _ => return None,
            }
        }
        if last > MAX_FILE_OFFSET {
            return None;
        }
        Some(Entry {
            seq,
            len,
            tail: u64::from(h.tail.get()),
            flushed: h.flushed_file_offset.get(),
            last,
            ops,
        })
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
    let mut scan = LogScan {
        log: &log,
        guid,
        memo: HashMap::new(),
    };
    let sectors = log_length / LOG_SECTOR as u64;
    let mut heads: Vec<(u64, u64)> = (0..sectors)
        .map(|i| i * LOG_SECTOR as u64)
        .filter_map(|pos| scan.header(pos).map(|h| (h.sequence_number.get(), pos)))
        .collect();
    heads.sort_unstable_by(|a, b| b.cmp(a));
    for (_, head_pos) in heads {
        let Some(head) = scan.entry(head_pos) else {
            continue;
        };
        // Walk from the head's tail to the head.
        let mut chain = Vec::new();
        let mut pos = head.tail;
        let mut expect: Option<u64> = None;
        let mut ok = false;
        for _ in 0..=sectors {
            let Some(e) = scan.entry(pos) else { break };
            if expect.is_some_and(|s| s != e.seq) {
                break;
            }
            let at_head = pos == head_pos && e.seq == head.seq;
            expect = e.seq.checked_add(1);
            pos = (pos + e.len) % log_length;
            chain.push(e);
            if at_head {
                ok = true;
                break;
            }
        }
        if !ok {
            continue;
        }
        if head.flushed > file_len {
            return Err(Error::corrupt(format!(
                "the log says the file had {} bytes but it has {file_len}: data was lost",
                head.flushed
            ))
            .in_structure("log"));
        }
        let entries = chain.len();
        let ops = chain.into_iter().flat_map(|e| e.ops).collect();
        return Ok(Some(Replay {
            ops,
            entries,
            last_file_offset: head.last,
        }));
    }
    Ok(None)
}

/// Apply a replay to the file itself (the caller flushes afterwards).
pub(crate) fn apply(storage: &dyn Storage, replay: &Replay) -> io::Result<()> {
    let len = storage.len()?;
    let needed = replay
        .ops
        .iter()
        .map(|o| o.offset + o.len)
        .chain([replay.last_file_offset])
        .max()
        .unwrap_or(0);
    if needed > len {
        storage.set_len(needed)?;
    }
    for op in &replay.ops {
        match &op.data {
            Some(d) => storage.write_at(d, op.offset)?,
            None => storage.punch_hole(op.offset, op.len)?,
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
        let hi = replay.ops.iter().map(|o| o.offset + o.len).max().unwrap_or(0);
        Ok(Overlay {
            inner,
            len: file_len.max(replay.last_file_offset).max(hi),
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
            let (s, e) = (op.offset.max(offset), (op.offset + op.len).min(end));
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
pub(crate) fn entry_len(pages: usize) -> u64 {
    (((64 + 32 * pages).div_ceil(LOG_SECTOR) + pages) * LOG_SECTOR) as u64
}

/// Build a log entry writing `pages` (file offset, 4 KiB of contents).
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
