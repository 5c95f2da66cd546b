//! The suite's functional checks: model comparison, boundaries, read-only refusal, block status,
//! discard, concurrent reads and concurrent writes.

use crate::disk::{Allocation, Disk};
use crate::error::{ErrorKind, Result};
use crate::image::Image;
use crate::storage::Storage;
use crate::testing::conformance::{Capabilities, ImageFactory};
use crate::testing::faulty::FaultyStorage;
use crate::testing::model::{Model, Op, SectorContent, compare_read, compare_with_model, pattern_run, scan_disk};
use crate::testing::strategy::{Config, ops_strategy, runner};
use proptest::test_runner::TestCaseError;
use std::fmt::Debug;
use std::sync::Arc;

/// A check's outcome: `Err` describes the first failure.
pub(crate) type Outcome = std::result::Result<(), String>;

/// Panic with the factory's name, the check and the failure.
pub(crate) fn report(factory: &dyn ImageFactory, check: &str, outcome: Outcome) {
    if let Err(e) = outcome {
        panic!("conformance of {}: {check}: {e}", factory.name());
    }
}

/// Turn an engine error into a failure message.
pub(crate) fn ctx<T>(what: impl std::fmt::Display, r: Result<T>) -> std::result::Result<T, String> {
    r.map_err(|e| format!("{what}: {} (kind {:?})", crate::display_chain(&e), e.kind()))
}

/// Create a fresh image in new storage and open it writable.
pub(crate) fn fresh(factory: &dyn ImageFactory) -> std::result::Result<(Arc<dyn Storage>, Image), String> {
    let storage = factory.new_storage();
    ctx("creating the image", factory.create(storage.clone(), factory.size()))?;
    let disk = ctx("opening the new image writable", factory.open(storage.clone(), true))?;
    Ok((storage, disk))
}

fn expect_kind<T: Debug>(what: &str, r: Result<T>, kinds: &[ErrorKind]) -> Outcome {
    match r {
        Err(e) if kinds.contains(&e.kind()) => Ok(()),
        Err(e) => Err(format!(
            "{what}: expected an error of kind {kinds:?}, got {:?}: {e}",
            e.kind()
        )),
        Ok(v) => Err(format!("{what}: expected an error of kind {kinds:?}, got Ok({v:?})")),
    }
}

/// Check [`Disk::block_status`] over the whole disk of a standalone image: runs are 1 to `count`
/// sectors long and tile the disk, `Zero` and `Unallocated` runs read as zeros, the depth is 0, and
/// when `storage` is given, a `Data` run with an `offset` holds at that offset of `storage` the
/// bytes the disk reads there. Done with queries for the rest of the disk and with short windows.
pub fn verify_block_status(disk: &dyn Disk, storage: Option<&dyn Storage>) -> std::result::Result<(), String> {
    block_status_windows(disk, storage, &[u64::MAX, 13])
}

/// [`verify_block_status`] with whole-rest queries only (cheaper, for the crash test's many images).
pub(crate) fn verify_full_block_status(disk: &dyn Disk, storage: Option<&dyn Storage>) -> Outcome {
    block_status_windows(disk, storage, &[u64::MAX])
}

fn block_status_windows(disk: &dyn Disk, storage: Option<&dyn Storage>, windows: &[u64]) -> Outcome {
    let total = disk.sector_count();
    let ss = u64::from(disk.sector_size());
    for &window in windows {
        let mut lba = 0u64;
        while lba < total {
            let count = window.min(total - lba);
            let st = ctx(format!("block_status({lba}, {count})"), disk.block_status(lba, count))?;
            if st.sectors == 0 || st.sectors > count {
                return Err(format!(
                    "block_status({lba}, {count}) returned a run of {} sectors",
                    st.sectors
                ));
            }
            if st.depth != 0 {
                return Err(format!(
                    "block_status({lba}, {count}) of a standalone image has depth {}",
                    st.depth
                ));
            }
            let mut buf = vec![0u8; (st.sectors.min(256) * ss) as usize];
            let mut pos = lba;
            while pos < lba + st.sectors {
                let n = (lba + st.sectors - pos).min(256);
                buf.resize((n * ss) as usize, 0);
                ctx(format!("reading sectors {pos}+{n}"), disk.read(pos, &mut buf))?;
                match (st.allocation, st.offset) {
                    (Allocation::Zero | Allocation::Unallocated, _) => {
                        if !crate::testing::model::is_zero(&buf) {
                            let i = buf.iter().position(|&b| b != 0).unwrap_or(0) as u64;
                            return Err(format!(
                                "block_status({lba}, {count}) says {:?} for {} sectors but sector {} is not zero",
                                st.allocation,
                                st.sectors,
                                pos + i / ss
                            ));
                        }
                    }
                    (Allocation::Data, Some(offset)) => {
                        if let Some(storage) = storage {
                            let at = offset + (pos - lba) * ss;
                            let len = storage.len().map_err(|e| e.to_string())?;
                            let inside = len.saturating_sub(at).min(buf.len() as u64) as usize;
                            let mut stored = vec![0u8; inside];
                            storage
                                .read_at(&mut stored, at)
                                .map_err(|e| format!("reading storage at {at}: {e}"))?;
                            if stored[..] != buf[..inside] || buf[inside..].iter().any(|&b| b != 0) {
                                return Err(format!(
                                    "block_status({lba}, {count}) says data at storage offset {offset}, but \
                                     sectors {pos}+{n} differ from the storage bytes at {at}"
                                ));
                            }
                        }
                    }
                    (Allocation::Data, None) => {}
                }
                pos += n;
            }
            lba += st.sectors;
        }
    }
    Ok(())
}

fn storage_if(caps: &Capabilities, storage: &Arc<dyn Storage>) -> Option<Arc<dyn Storage>> {
    caps.offsets_in_storage.then(|| storage.clone())
}

/// Check the edges of the [`Disk`] contract: sizes are sane, a new image reads as zeros, the first
/// and last sectors work, ranges past the end (including LBA `u64::MAX` and counts that overflow)
/// fail with [`ErrorKind::OutOfRange`], buffers that are not whole sectors with
/// [`ErrorKind::InvalidArgument`], and none of these panics or changes the disk.
pub fn check_boundaries(factory: &dyn ImageFactory) {
    report(factory, "boundaries", boundaries(factory));
}

fn boundaries(factory: &dyn ImageFactory) -> Outcome {
    use ErrorKind::{InvalidArgument, OutOfRange};
    let (storage, disk) = fresh(factory)?;
    let ss = disk.sector_size();
    let n = disk.sector_count();
    let ssz = ss as usize;
    if ss != 512 && ss != 4096 {
        return Err(format!("sector size {ss}"));
    }
    if disk.physical_sector_size() < ss || !disk.physical_sector_size().is_power_of_two() {
        return Err(format!("physical sector size {}", disk.physical_sector_size()));
    }
    if n == 0 || disk.virtual_size() <= (n - 1) * u64::from(ss) || disk.virtual_size() > n * u64::from(ss) {
        return Err(format!(
            "virtual size {} does not match {n} sectors",
            disk.virtual_size()
        ));
    }
    if disk.virtual_size() < factory.size() {
        return Err(format!(
            "asked for {} bytes, got a disk of {}",
            factory.size(),
            disk.virtual_size()
        ));
    }
    if disk.is_read_only() {
        return Err("an image opened writable says it is read-only".into());
    }
    let mut model = Model::new(n);
    compare_with_model(&disk, &model).map_err(|e| format!("a new image: {e}"))?;

    for (op, id) in [
        (Op::Write { lba: 0, count: 1 }, 1),
        (Op::Write { lba: n - 1, count: 1 }, 2),
    ] {
        ctx(format!("{op:?}"), op.perform(&disk, id))?;
        model.apply(&op, id);
    }
    let one = vec![0xa5u8; ssz];
    let two = vec![0xa5u8; 2 * ssz];
    let mut rbuf = vec![0u8; 2 * ssz];
    expect_kind("read across the end", disk.read(n - 1, &mut rbuf), &[OutOfRange])?;
    expect_kind("write across the end", disk.write(n - 1, &two), &[OutOfRange])?;
    expect_kind("read just past the end", disk.read(n, &mut rbuf[..ssz]), &[OutOfRange])?;
    expect_kind("write just past the end", disk.write(n, &one), &[OutOfRange])?;
    expect_kind("read at u64::MAX", disk.read(u64::MAX, &mut rbuf[..ssz]), &[OutOfRange])?;
    expect_kind("write at u64::MAX", disk.write(u64::MAX, &one), &[OutOfRange])?;
    expect_kind(
        "write_zeroes at u64::MAX",
        disk.write_zeroes(u64::MAX, 1),
        &[OutOfRange],
    )?;
    expect_kind("discard at u64::MAX", disk.discard(u64::MAX, 1), &[OutOfRange])?;
    expect_kind(
        "block_status at u64::MAX",
        disk.block_status(u64::MAX, 1),
        &[OutOfRange],
    )?;
    expect_kind(
        "write_zeroes with overflowing count",
        disk.write_zeroes(1, u64::MAX),
        &[OutOfRange],
    )?;
    expect_kind(
        "discard with overflowing count",
        disk.discard(1, u64::MAX),
        &[OutOfRange],
    )?;
    expect_kind(
        "block_status with overflowing count",
        disk.block_status(1, u64::MAX),
        &[OutOfRange],
    )?;
    expect_kind(
        "write_zeroes across the end",
        disk.write_zeroes(n - 1, 2),
        &[OutOfRange],
    )?;
    expect_kind("discard past the end", disk.discard(n, 1), &[OutOfRange])?;
    expect_kind("block_status past the end", disk.block_status(n, 1), &[OutOfRange])?;
    expect_kind(
        "block_status of zero sectors",
        disk.block_status(0, 0),
        &[InvalidArgument],
    )?;
    for len in [1, ssz - 1, ssz + 1, 100] {
        let mut b = vec![0u8; len];
        expect_kind(
            &format!("read of {len} bytes"),
            disk.read(0, &mut b),
            &[InvalidArgument],
        )?;
        expect_kind(&format!("write of {len} bytes"), disk.write(0, &b), &[InvalidArgument])?;
        expect_kind(
            &format!("read of {len} bytes at u64::MAX"),
            disk.read(u64::MAX, &mut b),
            &[InvalidArgument, OutOfRange],
        )?;
    }
    ctx("empty read at 0", disk.read(0, &mut []))?;
    ctx("empty write at the end", disk.write(n, &[]))?;
    ctx("write_zeroes of zero sectors", disk.write_zeroes(0, 0))?;
    ctx("discard of zero sectors", disk.discard(n, 0))?;

    compare_with_model(&disk, &model).map_err(|e| format!("after the refused calls: {e}"))?;
    ctx("flush", disk.flush())?;
    drop(disk);
    let disk = ctx("reopening read-only", factory.open(storage, false))?;
    compare_with_model(&disk, &model).map_err(|e| format!("after reopening: {e}"))
}

/// Check that an image opened read-only reads what was written, refuses `write`, `write_zeroes`
/// and `discard` with [`ErrorKind::ReadOnly`], and neither writes, resizes nor otherwise changes
/// its storage (the storage is wrapped to count every call).
pub fn check_read_only(factory: &dyn ImageFactory) {
    report(factory, "read-only", read_only(factory));
}

fn read_only(factory: &dyn ImageFactory) -> Outcome {
    let (storage, disk) = fresh(factory)?;
    let n = disk.sector_count();
    let mut model = Model::new(n);
    let ops = [
        Op::Write { lba: 0, count: 3 },
        Op::Write { lba: n / 2, count: 5 },
        Op::Write { lba: n - 1, count: 1 },
    ];
    for (i, op) in ops.iter().enumerate() {
        ctx(format!("{op:?}"), op.perform(&disk, i as u32 + 1))?;
        model.apply(op, i as u32 + 1);
    }
    ctx("flush", disk.flush())?;
    drop(disk);
    let before = storage_bytes(&*storage)?;

    let watched = Arc::new(FaultyStorage::new(storage.clone()));
    let disk = ctx("opening read-only", factory.open(watched.clone(), false))?;
    if !disk.is_read_only() {
        return Err("an image opened read-only says it is writable".into());
    }
    let ss = disk.sector_size() as usize;
    let sector = vec![0x5au8; ss];
    expect_kind("write", disk.write(0, &sector), &[ErrorKind::ReadOnly])?;
    expect_kind(
        "write at the last sector",
        disk.write(n - 1, &sector),
        &[ErrorKind::ReadOnly],
    )?;
    expect_kind("write_zeroes", disk.write_zeroes(0, 2), &[ErrorKind::ReadOnly])?;
    expect_kind("discard", disk.discard(n / 2, 5), &[ErrorKind::ReadOnly])?;
    expect_kind(
        "bytes::write_bytes",
        crate::bytes::write_bytes(&disk, 3, b"x"),
        &[ErrorKind::ReadOnly],
    )?;
    compare_with_model(&disk, &model)?;
    verify_block_status(&disk, storage_if(&factory.capabilities(), &storage).as_deref())?;
    ctx("flush of a read-only image", disk.flush())?;
    drop(disk);
    let counts = watched.counts();
    if counts.writes != 0 || counts.set_lens != 0 {
        return Err(format!("a read-only open changed its storage: {counts:?}"));
    }
    if storage_bytes(&*storage)? != before {
        return Err("a read-only open changed the storage bytes".into());
    }
    Ok(())
}

/// All bytes of a storage.
pub(crate) fn storage_bytes(storage: &dyn Storage) -> std::result::Result<Vec<u8>, String> {
    let len = storage.len().map_err(|e| e.to_string())?;
    let mut v = vec![0u8; usize::try_from(len).map_err(|e| e.to_string())?];
    storage.read_at(&mut v, 0).map_err(|e| e.to_string())?;
    Ok(v)
}

/// Write the whole disk, then discard it all: it must read as zeros, block status must stay
/// consistent, and if [`Capabilities::discard_frees_space`], no run may be `Data` any more
/// (except in a last granule that is partly past the end of the disk).
/// Also checks `write_zeroes` of everything.
pub fn check_discard(factory: &dyn ImageFactory) {
    report(factory, "discard", discard(factory));
}

fn discard(factory: &dyn ImageFactory) -> Outcome {
    let caps = factory.capabilities();
    for zeroes in [false, true] {
        let (storage, disk) = fresh(factory)?;
        let n = disk.sector_count();
        let ss = disk.sector_size();
        let mut lba = 0;
        while lba < n {
            let count = 512.min(n - lba);
            ctx(
                format!("writing sectors {lba}+{count}"),
                disk.write(lba, &pattern_run(1, lba, count, ss)),
            )?;
            lba += count;
        }
        ctx("flush", disk.flush())?;
        let what = if zeroes { "write_zeroes" } else { "discard" };
        let r = if zeroes {
            disk.write_zeroes(0, n)
        } else {
            disk.discard(0, n)
        };
        ctx(format!("{what} of the whole disk"), r)?;
        compare_with_model(&disk, &Model::new(n)).map_err(|e| format!("after {what} of everything: {e}"))?;
        verify_block_status(&disk, storage_if(&caps, &storage).as_deref())?;
        if caps.discard_frees_space && !zeroes {
            // A granule that is partly past the end of the disk may stay allocated.
            let g = (caps.granularity / u64::from(ss)).max(1);
            let tail = n / g * g;
            let mut lba = 0;
            while lba < tail {
                let st = ctx("block_status", disk.block_status(lba, n - lba))?;
                if st.allocation == Allocation::Data {
                    return Err(format!(
                        "after discarding everything, sectors {lba}+{} are still Data",
                        st.sectors
                    ));
                }
                lba += st.sectors;
            }
        }
        ctx("flush", disk.flush())?;
        drop(disk);
        let disk = ctx("reopening", factory.open(storage, false))?;
        compare_with_model(&disk, &Model::new(n)).map_err(|e| format!("after {what} and reopening: {e}"))?;
    }
    Ok(())
}

/// Read one image from four threads at once (random ranges) and compare with the model.
pub fn check_concurrent_reads(factory: &dyn ImageFactory) {
    report(factory, "concurrent reads", concurrent_reads(factory));
}

fn concurrent_reads(factory: &dyn ImageFactory) -> Outcome {
    let (storage, disk) = fresh(factory)?;
    let n = disk.sector_count();
    let mut model = Model::new(n);
    let g = (factory.capabilities().granularity / u64::from(disk.sector_size())).max(1);
    let mut id = 0;
    let mut lba = 0;
    while lba < n {
        id += 1;
        let op = Op::Write {
            lba,
            count: (g / 2).clamp(1, n - lba),
        };
        ctx(format!("{op:?}"), op.perform(&disk, id))?;
        model.apply(&op, id);
        lba += g + g / 3;
    }
    ctx("flush", disk.flush())?;
    drop(disk);
    let disk = ctx("reopening read-only", factory.open(storage, false))?;
    let ss = disk.sector_size();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4u64)
            .map(|t| {
                let (disk, model) = (&disk, &model);
                scope.spawn(move || -> Outcome {
                    let mut rng = crate::SplitMix64::new(t);
                    for _ in 0..200 {
                        let lba = rng.next_u64() % n;
                        let count = (rng.next_u64() % 64 + 1).min(n - lba);
                        let mut buf = vec![0u8; (count * u64::from(ss)) as usize];
                        ctx(format!("thread {t}: read({lba}, {count})"), disk.read(lba, &mut buf))?;
                        compare_read(&buf, lba, ss, model).map_err(|e| format!("thread {t}: {e}"))?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().unwrap_or_else(|_| Err("a reader panicked".into())))
    })
}

/// Write one image from four threads at once: no write may be lost, torn or misplaced.
///
/// Each thread writes its own ranges (one to several sectors up to more than an allocation unit;
/// inside units, across a unit boundary and spanning a whole unit; in units the other threads
/// write too), all threads also write one shared "racing" range across a unit boundary again and
/// again (between their own writes, then all together at the end), and each thread flushes once
/// midway. Afterwards every sector of a thread's own ranges
/// holds that thread's write, every racing sector holds a whole sector of one of the racing writes
/// (not zeros, not a mix), everything else reads as zeros, and block status is consistent. After a
/// flush and a read-only reopen the same must hold, with each racing sector unchanged.
pub fn check_concurrent_writes(factory: &dyn ImageFactory) {
    report(factory, "concurrent writes", concurrent_writes(factory));
}

/// Threads of [`check_concurrent_writes`].
const WRITERS: u64 = 4;
/// Own writes per thread in the shared regions (plus one large write each).
const SLOTS: u64 = 6;
/// Racing writes per thread after all own writes (each own write is followed by one too).
const RACING_TAIL: u64 = 4;

/// The id of thread `t`'s own write `w` (`racing`: its racing write `w`), non-zero and decodable.
fn writer_id(t: u64, w: u64, racing: bool) -> u32 {
    (1 + t * 100 + w + if racing { 50 } else { 0 }) as u32
}

/// "thread T's write W" (or racing write) for a write id made by [`writer_id`].
fn describe_writer(id: u32) -> String {
    if id == 0 {
        return "zeros".into();
    }
    let (t, w) = ((id - 1) / 100, (id - 1) % 100);
    if w >= 50 {
        format!("thread {t}'s racing write {} (#{id})", w - 50)
    } else {
        format!("thread {t}'s write {w} (#{id})")
    }
}

/// What the threads of [`check_concurrent_writes`] do.
struct WritePlan {
    /// Per thread, its phases (all threads start each phase together), each a list of
    /// `(op, id)`; `Op::Flush` once midway.
    phases: Vec<[Vec<(Op, u32)>; 2]>,
    /// What the own (non-racing) writes leave behind: they never overlap, so order is irrelevant.
    model: Model,
    /// The racing range (first sector, count).
    racing: (u64, u64),
    /// The ids of every racing write.
    racing_ids: Vec<u32>,
}

/// Lay out the writes over a disk of `n` sectors whose allocation unit is `unit` sectors.
///
/// The disk is cut into pieces of `s` sectors (the unit, halved until 24 pieces fit, at least 16
/// sectors), so that piece boundaries are unit boundaries where the disk is big enough. Pieces
/// 0..12 are six regions of two pieces, each written by all threads: one write across the middle
/// boundary, one right before and one right after it (adjacent sectors, no gap), and one at the
/// region's start (the roles rotate, so every thread gets each); the rest of a region stays
/// unwritten. Pieces 12..18 hold one write of more than a piece per thread; the racing range
/// straddles the boundary at piece 19; pieces 20.. stay unwritten. Each own write is followed by a
/// racing write; once all threads are done with theirs they race [`RACING_TAIL`] more times.
fn write_plan(n: u64, unit: u64) -> std::result::Result<WritePlan, String> {
    let mut s = unit.max(1);
    while s > n / 24 && s > 16 {
        s /= 2;
    }
    let s = s.max(16);
    if 24 * s > n {
        return Err(format!(
            "a disk of {n} sectors is too small for this check (it needs at least {})",
            24 * 16
        ));
    }
    let q = s / 8;
    let mut model = Model::new(n);
    let racing = (19 * s - q.min(16), 2 * q.min(16));
    let racing_op = Op::Write {
        lba: racing.0,
        count: racing.1,
    };
    let mut phases = Vec::new();
    let mut racing_ids = Vec::new();
    for t in 0..WRITERS {
        let mut own = Vec::new();
        for w in 0..SLOTS {
            let base = 2 * s * w;
            let m = base + s;
            // The boundary write covers `before` sectors before `m` and `after` from it; the
            // writes before and after it touch it, so threads write neighbouring sectors.
            let (before, after) = (1 + w % (2 * q), 1 + (3 * w) % (2 * q));
            let (lba, count) = match (t + w) % 4 {
                0 => (m - before, before + after),
                1 => (base + w % 2, 1 + (5 * w) % (3 * q)),
                2 => (m + after, 3 * q + w % 3),
                _ => {
                    let len = 1 + (7 * w) % (2 * q);
                    (m - before - len, len)
                }
            };
            own.push((Op::Write { lba, count }, writer_id(t, w, false)));
        }
        own.push((
            Op::Write {
                lba: 12 * s + t * 12 * q + q,
                count: s + 2 * q,
            },
            writer_id(t, SLOTS, false),
        ));
        let mut thread_ops = Vec::new();
        for (k, (op, id)) in own.into_iter().enumerate() {
            let (lba, count) = op.range().expect("writes have a range");
            if (lba..lba + count).any(|l| model.get(l) != 0) || (lba + count > racing.0 && lba < racing.0 + racing.1) {
                return Err(format!("internal: the plan's {op:?} overlaps another write"));
            }
            model.apply(&op, id);
            thread_ops.push((op, id));
            racing_ids.push(writer_id(t, k as u64, true));
            thread_ops.push((racing_op, writer_id(t, k as u64, true)));
            if k as u64 == SLOTS / 2 {
                thread_ops.push((Op::Flush, 0));
            }
        }
        let tail: Vec<_> = (SLOTS + 1..SLOTS + 1 + RACING_TAIL)
            .map(|k| (racing_op, writer_id(t, k, true)))
            .collect();
        racing_ids.extend(tail.iter().map(|&(_, id)| id));
        phases.push([thread_ops, tail]);
    }
    Ok(WritePlan {
        phases,
        model,
        racing,
        racing_ids,
    })
}

/// Compare the whole disk with `plan`; returns the id each racing sector holds, which must equal
/// `before` when given.
fn verify_writes(disk: &dyn Disk, plan: &WritePlan, before: Option<&[u32]>) -> std::result::Result<Vec<u32>, String> {
    let (r0, rn) = plan.racing;
    let mut racing = Vec::new();
    scan_disk(disk, |lba, got| {
        if (r0..r0 + rn).contains(&lba) {
            let id = match got {
                SectorContent::Id(id) if plan.racing_ids.contains(&id) => id,
                other => {
                    return Err(format!(
                        "racing sector {lba} holds {other}, expected a whole sector of one racing write"
                    ));
                }
            };
            if let Some(prev) = before.and_then(|b| b.get(racing.len()))
                && *prev != id
            {
                return Err(format!(
                    "racing sector {lba} held {} and now holds {}",
                    describe_writer(*prev),
                    describe_writer(id)
                ));
            }
            racing.push(id);
            return Ok(());
        }
        let want = plan.model.get(lba);
        if got == SectorContent::Id(want) {
            return Ok(());
        }
        let got = match got {
            SectorContent::Id(id) => describe_writer(id),
            SectorContent::Misplaced { id, lba } => format!("{}'s data for sector {lba}", describe_writer(id)),
            SectorContent::Garbage => got.to_string(),
        };
        Err(format!("sector {lba} holds {got}, expected {}", describe_writer(want)))
    })?;
    Ok(racing)
}

fn concurrent_writes(factory: &dyn ImageFactory) -> Outcome {
    let (storage, disk) = fresh(factory)?;
    let n = disk.sector_count();
    let ss = u64::from(disk.sector_size());
    let plan = write_plan(n, factory.capabilities().granularity / ss)?;
    let barrier = std::sync::Barrier::new(plan.phases.len());
    std::thread::scope(|scope| {
        let handles: Vec<_> = plan
            .phases
            .iter()
            .enumerate()
            .map(|(t, phases)| {
                let (disk, barrier) = (&disk, &barrier);
                scope.spawn(move || -> Outcome {
                    let mut failed = None;
                    for ops in phases {
                        // Every thread reaches every barrier, even after a failure.
                        barrier.wait();
                        for (op, id) in ops {
                            if failed.is_none() {
                                failed = ctx(format!("thread {t}: {op:?}"), op.perform(disk, *id)).err();
                            }
                        }
                    }
                    failed.map_or(Ok(()), Err)
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().unwrap_or_else(|_| Err("a writer panicked".into())))
    })?;
    let offsets = storage_if(&factory.capabilities(), &storage);
    let racing = verify_writes(&disk, &plan, None).map_err(|e| format!("after the writes: {e}"))?;
    verify_block_status(&disk, offsets.as_deref()).map_err(|e| format!("after the writes: {e}"))?;
    ctx("flush", disk.flush())?;
    drop(disk);
    let disk = ctx("reopening read-only", factory.open(storage, false))?;
    verify_writes(&disk, &plan, Some(&racing)).map_err(|e| format!("after reopening: {e}"))?;
    verify_block_status(&disk, offsets.as_deref()).map_err(|e| format!("after reopening: {e}"))
}

/// Random sequences of reads, writes, `write_zeroes`, discards and flushes (proptest,
/// `config.cases` of them) must behave exactly like the model: reads return what was last written,
/// discarded and zeroed ranges read as zeros. After each sequence the whole disk is compared and
/// block status verified, then the image is reopened read-only and compared again.
pub fn check_model(factory: &dyn ImageFactory, config: &Config) {
    let (sectors, ss) = match fresh(factory) {
        Ok((_, disk)) => (disk.sector_count(), u64::from(disk.sector_size())),
        Err(e) => return report(factory, "model", Err(e)),
    };
    let granularity = (factory.capabilities().granularity / ss).max(1);
    let strategy = ops_strategy(sectors, granularity, config.max_ops);
    let result = runner(config.cases).run(&strategy, |ops| model_case(factory, &ops).map_err(TestCaseError::fail));
    if let Err(e) = result {
        report(factory, "model", Err(e.to_string()));
    }
}

/// One sequence of the model check.
pub(crate) fn model_case(factory: &dyn ImageFactory, ops: &[Op]) -> Outcome {
    let (storage, disk) = fresh(factory)?;
    let mut model = Model::new(disk.sector_count());
    for (i, op) in ops.iter().enumerate() {
        let id = i as u32 + 1;
        let data = ctx(format!("step {i}: {op:?}"), op.perform(&disk, id))?;
        if let (Some(data), Op::Read { lba, .. }) = (data, op) {
            compare_read(&data, *lba, disk.sector_size(), &model).map_err(|e| format!("step {i}: {e}"))?;
        }
        model.apply(op, id);
    }
    let offsets = storage_if(&factory.capabilities(), &storage);
    compare_with_model(&disk, &model).map_err(|e| format!("after the sequence: {e}"))?;
    verify_block_status(&disk, offsets.as_deref()).map_err(|e| format!("after the sequence: {e}"))?;
    ctx("final flush", disk.flush())?;
    drop(disk);
    let disk = ctx("reopening read-only", factory.open(storage.clone(), false))?;
    compare_with_model(&disk, &model).map_err(|e| format!("after reopening: {e}"))?;
    verify_block_status(&disk, offsets.as_deref()).map_err(|e| format!("after reopening: {e}"))?;
    Ok(())
}
