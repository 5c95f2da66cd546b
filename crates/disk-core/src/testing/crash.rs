//! [`CrashStorage`]: an in-memory [`Storage`] that simulates losing power.
//!
//! It keeps two things: the *durable* image (what the medium held at the last successful
//! `flush`) and the list of *pending* changes made since. A crash can be armed at the Nth write or
//! the Nth flush; from that call on every change fails with an I/O error, as if the machine had
//! stopped. [`CrashStorage::crash_image`] then builds what the medium would hold after the power
//! came back, under one of several [`CrashMode`]s.

use crate::storage::{MemStorage, Storage};
use crate::sync::lock;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex};

/// Where a [`CrashStorage`] loses power. Indices are 0-based and count calls since creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// During the write with this index (`write_at`, `set_len` and `punch_hole` count as writes):
    /// that write is the *crashing write*, which may be torn.
    Write(u64),
    /// During the flush with this index: nothing it would have made durable is.
    Flush(u64),
}

/// What survives a crash, for [`CrashStorage::crash_image`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Nothing written since the last flush survives.
    LoseAll,
    /// Every completed write since the last flush survives; the crashing write does not.
    KeepAll,
    /// Every completed write survives, and of the crashing write the first `landed_sectors`
    /// sectors (counted in the storage's sector size from the write's start; clipped to its
    /// length). Without a crashing write this is [`CrashMode::KeepAll`].
    Torn {
        /// How many leading sectors of the crashing write reached the medium.
        landed_sectors: u64,
    },
    /// A write-back cache that reorders: every sector of every pending write (and of the crashing
    /// write), and every pending `set_len`, survives or not by a pseudo-random choice seeded with
    /// `seed`. Surviving changes are applied in their original order.
    Subset {
        /// Seed of the choice (the same seed gives the same image).
        seed: u64,
    },
}

impl CrashMode {
    /// The four modes a crash test usually checks: lose all, keep all, the crashing write torn
    /// after half of its sectors, and a subset chosen by `seed`.
    pub fn standard(seed: u64, crashing_sectors: u64) -> [CrashMode; 4] {
        [
            CrashMode::LoseAll,
            CrashMode::KeepAll,
            CrashMode::Torn {
                landed_sectors: crashing_sectors / 2,
            },
            CrashMode::Subset { seed },
        ]
    }
}

/// A change not yet flushed.
#[derive(Debug, Clone)]
enum Change {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
    Punch { offset: u64, len: u64 },
}

impl Change {
    fn apply(&self, to: &MemStorage) {
        let result = match self {
            Change::Write { offset, data } => to.write_at(data, *offset),
            Change::SetLen(len) => to.set_len(*len),
            Change::Punch { offset, len } => to.punch_hole(*offset, *len),
        };
        result.expect("replaying a change that already succeeded once");
    }

    /// The part of this change covering its first `sectors` sectors (`None` if nothing).
    fn prefix(&self, sectors: u64, sector_size: u64) -> Option<Change> {
        let keep = |offset: u64, len: u64| -> u64 {
            if sectors == 0 {
                return 0;
            }
            // Sector boundaries are absolute (multiples of the sector size in the file).
            let first_end = (offset / sector_size + 1) * sector_size;
            let end = first_end.saturating_add((sectors - 1).saturating_mul(sector_size));
            end.min(offset + len) - offset
        };
        match self {
            Change::Write { offset, data } => {
                let n = keep(*offset, data.len() as u64) as usize;
                (n > 0).then(|| Change::Write {
                    offset: *offset,
                    data: data[..n].to_vec(),
                })
            }
            Change::Punch { offset, len } => {
                let n = keep(*offset, *len);
                (n > 0).then_some(Change::Punch {
                    offset: *offset,
                    len: n,
                })
            }
            Change::SetLen(_) => (sectors > 0).then(|| self.clone()),
        }
    }

    /// Split into sector-aligned pieces and keep each one if `keep()` says so.
    fn subset(&self, sector_size: u64, keep: &mut impl FnMut() -> bool) -> Vec<Change> {
        let pieces = |offset: u64, len: u64| {
            let mut out = Vec::new();
            let mut pos = offset;
            let end = offset + len;
            while pos < end {
                let next = ((pos / sector_size + 1) * sector_size).min(end);
                out.push((pos, next - pos));
                pos = next;
            }
            out
        };
        match self {
            Change::Write { offset, data } => pieces(*offset, data.len() as u64)
                .into_iter()
                .filter(|_| keep())
                .map(|(pos, n)| {
                    let at = (pos - offset) as usize;
                    Change::Write {
                        offset: pos,
                        data: data[at..at + n as usize].to_vec(),
                    }
                })
                .collect(),
            Change::Punch { offset, len } => pieces(*offset, *len)
                .into_iter()
                .filter(|_| keep())
                .map(|(pos, n)| Change::Punch { offset: pos, len: n })
                .collect(),
            Change::SetLen(_) => {
                if keep() {
                    vec![self.clone()]
                } else {
                    Vec::new()
                }
            }
        }
    }
}

struct State {
    durable: MemStorage,
    current: MemStorage,
    pending: Vec<Change>,
    crashing: Option<Change>,
    writes: u64,
    flushes: u64,
    crash_at: Option<CrashPoint>,
    crashed: bool,
}

/// An in-memory storage that can lose power at a chosen write or flush (see the module docs).
///
/// ```
/// use disk_core::testing::{CrashMode, CrashStorage};
/// use disk_core::{MemStorage, Storage};
///
/// let s = CrashStorage::new(&MemStorage::new()).crash_at_write(2);
/// s.write_at(&[1; 512], 0).unwrap();
/// s.flush().unwrap();
/// s.write_at(&[2; 512], 512).unwrap();
/// assert!(s.write_at(&[3; 1024], 1024).is_err()); // write #2: the power fails
/// assert!(s.crashed());
/// assert_eq!(s.crash_image(CrashMode::LoseAll).to_vec(), vec![1; 512]);
/// assert_eq!(s.crash_image(CrashMode::KeepAll).len().unwrap(), 1024);
/// let torn = s.crash_image(CrashMode::Torn { landed_sectors: 1 });
/// assert_eq!(torn.len().unwrap(), 1536);
/// ```
pub struct CrashStorage {
    state: Mutex<State>,
    sector_size: u64,
}

impl fmt::Debug for CrashStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.lock();
        f.debug_struct("CrashStorage")
            .field("writes", &s.writes)
            .field("flushes", &s.flushes)
            .field("pending", &s.pending.len())
            .field("crash_at", &s.crash_at)
            .field("crashed", &s.crashed)
            .finish()
    }
}

/// The error every change returns once the power is gone.
fn power_lost(what: &str) -> io::Error {
    io::Error::other(format!("simulated power loss ({what})"))
}

impl CrashStorage {
    /// A storage whose durable (and current) contents are a copy of `base`, with 512-byte sectors
    /// and no crash armed.
    pub fn new(base: &MemStorage) -> Self {
        CrashStorage {
            state: Mutex::new(State {
                durable: base.snapshot(),
                current: base.snapshot(),
                pending: Vec::new(),
                crashing: None,
                writes: 0,
                flushes: 0,
                crash_at: None,
                crashed: false,
            }),
            sector_size: 512,
        }
    }

    /// Set the unit in which writes tear and are reordered (the medium's atomic write size).
    pub fn with_sector_size(mut self, sector_size: u32) -> Self {
        assert!(sector_size > 0, "sector size must be positive");
        self.sector_size = u64::from(sector_size);
        self
    }

    /// Lose power during the write with 0-based index `n` (builder).
    pub fn crash_at_write(self, n: u64) -> Self {
        self.arm(Some(CrashPoint::Write(n)));
        self
    }

    /// Lose power during the flush with 0-based index `n` (builder).
    pub fn crash_at_flush(self, n: u64) -> Self {
        self.arm(Some(CrashPoint::Flush(n)));
        self
    }

    /// Arm (or with `None`, disarm) the crash. Indices keep counting from creation.
    pub fn arm(&self, point: Option<CrashPoint>) {
        self.lock().crash_at = point;
    }

    /// Writes (`write_at`, `set_len`, `punch_hole`) seen so far, including failed ones. Run an
    /// operation sequence once without a crash to learn how many crash points it has.
    pub fn writes(&self) -> u64 {
        self.lock().writes
    }

    /// Flushes seen so far, including failed ones.
    pub fn flushes(&self) -> u64 {
        self.lock().flushes
    }

    /// Whether the power has been lost.
    pub fn crashed(&self) -> bool {
        self.lock().crashed
    }

    /// Number of changes made since the last successful flush.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// Length in sectors of the crashing write (0 if there is none, e.g. a crash in a flush).
    pub fn crashing_sectors(&self) -> u64 {
        let s = self.lock();
        match &s.crashing {
            Some(Change::Write { offset, data }) => span_sectors(*offset, data.len() as u64, self.sector_size),
            Some(Change::Punch { offset, len }) => span_sectors(*offset, *len, self.sector_size),
            Some(Change::SetLen(_)) => 1,
            None => 0,
        }
    }

    /// A copy of the durable contents (as of the last successful flush).
    pub fn durable(&self) -> MemStorage {
        self.lock().durable.snapshot()
    }

    /// A copy of the contents a reader sees now (durable plus every completed change).
    pub fn current(&self) -> MemStorage {
        self.lock().current.snapshot()
    }

    /// What the medium holds after the power comes back, under `mode`. May be called any number
    /// of times (also without a crash: then it is what a crash right now would leave).
    pub fn crash_image(&self, mode: CrashMode) -> MemStorage {
        let s = self.lock();
        let image = s.durable.snapshot();
        match mode {
            CrashMode::LoseAll => {}
            CrashMode::KeepAll => s.pending.iter().for_each(|c| c.apply(&image)),
            CrashMode::Torn { landed_sectors } => {
                s.pending.iter().for_each(|c| c.apply(&image));
                if let Some(part) = s
                    .crashing
                    .as_ref()
                    .and_then(|c| c.prefix(landed_sectors, self.sector_size))
                {
                    part.apply(&image);
                }
            }
            CrashMode::Subset { seed } => {
                let mut rng = crate::SplitMix64::new(seed ^ 0x9e37_79b9_7f4a_7c15);
                let mut keep = || rng.next_u64() & 1 == 1;
                for change in s.pending.iter().chain(s.crashing.as_ref()) {
                    for piece in change.subset(self.sector_size, &mut keep) {
                        piece.apply(&image);
                    }
                }
            }
        }
        image
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Count a change and either record it or lose power.
    fn change(&self, change: Change) -> io::Result<()> {
        let mut s = self.lock();
        let index = s.writes;
        s.writes += 1;
        if s.crashed {
            return Err(power_lost("write after the crash"));
        }
        if s.crash_at == Some(CrashPoint::Write(index)) {
            s.crashed = true;
            s.crashing = Some(change);
            return Err(power_lost("crashing write"));
        }
        let result = match &change {
            Change::Write { offset, data } => s.current.write_at(data, *offset),
            Change::SetLen(len) => s.current.set_len(*len),
            Change::Punch { offset, len } => s.current.punch_hole(*offset, *len),
        };
        if result.is_ok() {
            s.pending.push(change);
        }
        result
    }
}

fn span_sectors(offset: u64, len: u64, sector_size: u64) -> u64 {
    if len == 0 {
        return 0;
    }
    (offset + len).div_ceil(sector_size) - offset / sector_size
}

impl Storage for CrashStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.lock().current.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        offset
            .checked_add(buf.len() as u64)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "write past 2^64"))?;
        self.change(Change::Write {
            offset,
            data: buf.to_vec(),
        })
    }

    fn flush(&self) -> io::Result<()> {
        let mut s = self.lock();
        let index = s.flushes;
        s.flushes += 1;
        if s.crashed {
            return Err(power_lost("flush after the crash"));
        }
        if s.crash_at == Some(CrashPoint::Flush(index)) {
            s.crashed = true;
            return Err(power_lost("crashing flush"));
        }
        // Replay the pending changes rather than copy the whole image: engines flush often.
        let pending = std::mem::take(&mut s.pending);
        pending.iter().for_each(|c| c.apply(&s.durable));
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        self.lock().current.len()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.change(Change::SetLen(len))
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.change(Change::Punch { offset, len })
    }

    fn allocation(&self, offset: u64, len: u64) -> io::Result<(bool, u64)> {
        self.lock().current.allocation(offset, len)
    }
}

/// Crash `op` at each of its writes and flushes in turn and hand every image a crash can leave
/// (each of [`CrashMode::standard`] with `seed`) to `check`, with a label naming the crash point
/// and mode. `op` first runs once on a copy of `base` without a crash, which must succeed: that
/// run counts the crash points, and its storage is returned (its [`CrashStorage::current`] is
/// the finished result). After a crash `op`'s result is ignored (a crash in a last flush on
/// drop is not reported); `op` must have tried every write, which is asserted.
pub fn for_each_crash<T, E: fmt::Debug>(
    base: &MemStorage,
    seed: u64,
    op: impl Fn(Arc<CrashStorage>) -> Result<T, E>,
    mut check: impl FnMut(&str, MemStorage),
) -> Arc<CrashStorage> {
    let dry = Arc::new(CrashStorage::new(base));
    if let Err(e) = op(dry.clone()) {
        panic!("the operation fails without a crash: {e:?}");
    }
    let points = (0..dry.writes())
        .map(CrashPoint::Write)
        .chain((0..dry.flushes()).map(CrashPoint::Flush));
    for point in points {
        let storage = Arc::new(CrashStorage::new(base));
        storage.arm(Some(point));
        let _ = op(storage.clone());
        assert!(storage.crashed(), "{point:?}: no crash");
        for mode in CrashMode::standard(seed, storage.crashing_sectors()) {
            check(&format!("crash at {point:?}, {mode:?}"), storage.crash_image(mode));
        }
    }
    dry
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(s: &CrashStorage, mode: CrashMode) -> Vec<u8> {
        s.crash_image(mode).to_vec()
    }

    #[test]
    fn modes_give_the_expected_images() {
        let base = MemStorage::from_bytes(&[9u8; 2048]);
        let s = CrashStorage::new(&base).crash_at_write(2);
        s.write_at(&[1; 512], 0).unwrap();
        s.flush().unwrap();
        s.write_at(&[2; 512], 512).unwrap();
        assert_eq!(s.pending(), 1);
        let err = s.write_at(&[3; 1024], 1024).unwrap_err();
        assert!(err.to_string().contains("power"));
        assert!(s.write_at(&[4; 1], 0).is_err());
        assert!(s.flush().is_err());
        assert!(s.set_len(0).is_err());
        assert_eq!((s.writes(), s.flushes(), s.crashing_sectors()), (5, 2, 2));
        // Reads still see completed writes (the page cache), not the failed ones.
        let mut b = [0u8; 2048];
        s.read_at(&mut b, 0).unwrap();
        assert_eq!((b[0], b[512], b[1024]), (1, 2, 9));

        let lose = image(&s, CrashMode::LoseAll);
        assert_eq!((lose[0], lose[512], lose[1024], lose[1536]), (1, 9, 9, 9));
        let keep = image(&s, CrashMode::KeepAll);
        assert_eq!((keep[0], keep[512], keep[1024], keep[1536]), (1, 2, 9, 9));
        let torn = image(&s, CrashMode::Torn { landed_sectors: 1 });
        assert_eq!((torn[0], torn[512], torn[1024], torn[1536]), (1, 2, 3, 9));
        let full = image(&s, CrashMode::Torn { landed_sectors: 9 });
        assert_eq!((full[1024], full[1536]), (3, 3));
        assert_eq!(image(&s, CrashMode::Torn { landed_sectors: 0 }), keep);

        // Subsets are deterministic per seed and differ between seeds.
        let mut seen = std::collections::HashSet::new();
        for seed in 0..32 {
            let a = image(&s, CrashMode::Subset { seed });
            assert_eq!(a, image(&s, CrashMode::Subset { seed }));
            assert_eq!(a[0], 1, "flushed data always survives");
            assert!(
                a.chunks(512).all(|c| c.iter().all(|&x| x == c[0])),
                "whole sectors only"
            );
            seen.insert(a);
        }
        assert!(seen.len() > 4, "subsets vary with the seed");
    }

    #[test]
    fn torn_writes_respect_absolute_sector_boundaries() {
        let s = CrashStorage::new(&MemStorage::from_bytes(&[0u8; 2048])).crash_at_write(0);
        assert!(s.write_at(&[7; 1000], 100).is_err());
        assert_eq!(s.crashing_sectors(), 3);
        let torn = image(&s, CrashMode::Torn { landed_sectors: 1 });
        assert_eq!(torn.iter().filter(|&&b| b == 7).count(), 412);
        let torn = image(&s, CrashMode::Torn { landed_sectors: 2 });
        assert_eq!(torn.iter().filter(|&&b| b == 7).count(), 924);
    }

    #[test]
    fn crash_at_flush_keeps_earlier_durable_state() {
        let s = CrashStorage::new(&MemStorage::new())
            .with_sector_size(4096)
            .crash_at_flush(1);
        s.set_len(8192).unwrap();
        s.flush().unwrap();
        s.write_at(&[5; 4096], 0).unwrap();
        s.punch_hole(0, 4096).unwrap();
        assert!(s.flush().is_err());
        assert!(s.crashed());
        assert_eq!(s.crashing_sectors(), 0);
        assert_eq!(image(&s, CrashMode::LoseAll), vec![0; 8192]);
        assert_eq!(image(&s, CrashMode::KeepAll), vec![0; 8192]);
        assert_eq!(s.durable().len().unwrap(), 8192);
        assert_eq!(s.current().to_vec(), vec![0; 8192]);
    }
}
