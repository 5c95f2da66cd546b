//! Crash consistency and I/O-error checks.
//!
//! # What "consistent after a crash" means here
//!
//! A sequence of operations is run on an image whose storage is a [`CrashStorage`]. Model states
//! are numbered: state 0 is the new image (all zeros), state `t+1` is the content after step `t`.
//! The power fails at one write (or flush) of the storage; the step that was running then is the
//! *crashing step* `t`. The last step before it that was a successful `flush` fixes the *floor*
//! `f`: what was flushed must survive.
//!
//! After the crash, the image rebuilt by each [`CrashMode`] must open (writable, as a machine
//! would after a reboot; engines may replay logs), and **every sector must read as its content in
//! one of the states `f ..= t+1`** (zeros, or the intact pattern of a write that was the sector's
//! latest at one of those states). Sectors are judged independently: a multi-sector write may land
//! partly. This is what a guest may rely on from a disk, and it catches what matters for engines
//! that allocate: a table entry that became durable before its data (the sector reads as stale or
//! garbage bytes), lost or half-written metadata (the image no longer opens, or reads another
//! block's data), a flushed write lost (the floor). The recovered image is then written to (one
//! sector per granule, which makes an engine allocate where the crash left holes and exposes
//! table entries that point at lost or reused space), flushed, closed and reopened read-only, and
//! must read exactly as expected.
//!
//! A crash during `open` allows only state 0; a crash while the image is dropped (after the last
//! step) allows states `f ..= last`.

use crate::storage::{MemStorage, Storage};
use crate::testing::checks::{Outcome, ctx, report, verify_full_block_status};
use crate::testing::conformance::{Capabilities, ImageFactory};
use crate::testing::crash::{CrashMode, CrashPoint, CrashStorage};
use crate::testing::faulty::{FaultPlan, FaultyStorage};
use crate::testing::model::{Model, Op, SectorContent, compare_read, decode_sector, pattern_run, scan_disk};
use crate::testing::strategy::{Config, fixed_sequence, ops_strategy, runner, sample_points};
use crate::{Disk, display_chain};
use proptest::test_runner::TestCaseError;
use std::sync::Arc;

/// Where the power failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Open,
    Op(usize),
    Close,
    Finished,
}

/// Crash at every write and every flush of a fixed sequence and of `config.crash_cases` random
/// ones (at most `config.max_crash_points` points each), check every [`CrashMode`] the engine's
/// [`Capabilities`] claim (see the module docs for the criterion). Skipped when
/// [`Capabilities::crash_safe`] is false.
pub fn check_crash_consistency(factory: &dyn ImageFactory, config: &Config) {
    if !factory.capabilities().crash_safe {
        return;
    }
    let (sectors, granularity) = match geometry(factory) {
        Ok(g) => g,
        Err(e) => return report(factory, "crash", Err(e)),
    };
    let fixed = fixed_sequence(sectors, granularity);
    report(
        factory,
        "crash (fixed sequence)",
        crash_sequence(factory, &fixed, config),
    );
    let strategy = ops_strategy(sectors, granularity, config.crash_ops);
    let result = runner(config.crash_cases).run(&strategy, |ops| {
        crash_sequence(factory, &ops, config).map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        report(factory, "crash (random sequence)", Err(e.to_string()));
    }
}

/// Sector count and granularity in sectors of the factory's images.
fn geometry(factory: &dyn ImageFactory) -> std::result::Result<(u64, u64), String> {
    let (_, disk) = crate::testing::checks::fresh(factory)?;
    let ss = u64::from(disk.sector_size());
    Ok((disk.sector_count(), (factory.capabilities().granularity / ss).max(1)))
}

/// A new image in memory.
fn base_image(factory: &dyn ImageFactory) -> std::result::Result<(Arc<MemStorage>, u64, u32), String> {
    let base = Arc::new(MemStorage::new());
    ctx("creating the image", factory.create(base.clone(), factory.size()))?;
    let disk = ctx("opening the new image", factory.open(base.clone(), false))?;
    Ok((base, disk.sector_count(), disk.sector_size()))
}

/// The model states `0..=ops.len()`.
fn states(sectors: u64, ops: &[Op]) -> Vec<Model> {
    let mut states = vec![Model::new(sectors)];
    for (i, op) in ops.iter().enumerate() {
        let mut next = states.last().expect("state 0").clone();
        next.apply(op, i as u32 + 1);
        states.push(next);
    }
    states
}

/// Crash one sequence at every point.
fn crash_sequence(factory: &dyn ImageFactory, ops: &[Op], config: &Config) -> Outcome {
    let caps = factory.capabilities();
    let (base, sectors, ss) = base_image(factory)?;
    let states = states(sectors, ops);

    let dry = Arc::new(CrashStorage::new(&base).with_sector_size(ss));
    let (step, _) = run_until_crash(factory, &dry, ops, &states).map_err(|e| format!("without a crash: {e}"))?;
    debug_assert_eq!(step, Step::Finished);
    let points = sample_points(dry.writes(), config.max_crash_points)
        .into_iter()
        .map(CrashPoint::Write)
        .chain(
            sample_points(dry.flushes(), config.max_crash_points)
                .into_iter()
                .map(CrashPoint::Flush),
        );

    for (k, point) in points.enumerate() {
        let storage = Arc::new(CrashStorage::new(&base).with_sector_size(ss));
        storage.arm(Some(point));
        let (step, floor) =
            run_until_crash(factory, &storage, ops, &states).map_err(|e| format!("crash at {point:?}: {e}"))?;
        let (lo, hi, during) = match step {
            Step::Open => (0, 0, "open".to_string()),
            Step::Op(t) => (floor, t + 1, format!("step {t} ({:?})", ops[t])),
            Step::Close => (floor, ops.len(), "close".to_string()),
            // The engine wrote less this time (nothing to crash): not a failure.
            Step::Finished => continue,
        };
        // Modes often give the same bytes (nothing pending, a one-sector crashing write): check
        // each distinct image once.
        let mut checked: Vec<Vec<u8>> = Vec::new();
        for mode in modes(&caps, k as u64, storage.crashing_sectors()) {
            let image = Arc::new(storage.crash_image(mode));
            let bytes = image.to_vec();
            if checked.contains(&bytes) {
                continue;
            }
            checked.push(bytes);
            verify_recovered(factory, image, &states[lo..=hi], &caps).map_err(|e| {
                format!("crash at {point:?} during {during}, {mode:?}, allowed states {lo}..={hi}: {e}")
            })?;
        }
    }
    Ok(())
}

fn modes(caps: &Capabilities, seed: u64, crashing_sectors: u64) -> Vec<CrashMode> {
    CrashMode::standard(seed, crashing_sectors)
        .into_iter()
        .filter(|m| match m {
            CrashMode::Torn { landed_sectors } => caps.survives_torn_writes && *landed_sectors > 0,
            CrashMode::Subset { .. } => caps.survives_reordering,
            CrashMode::LoseAll | CrashMode::KeepAll => true,
        })
        .collect()
}

/// Run `ops` until the storage loses power: returns the step it happened in and the floor.
fn run_until_crash(
    factory: &dyn ImageFactory,
    storage: &Arc<CrashStorage>,
    ops: &[Op],
    states: &[Model],
) -> std::result::Result<(Step, usize), String> {
    let disk = match factory.open(storage.clone(), true) {
        Ok(disk) => disk,
        Err(_) if storage.crashed() => return Ok((Step::Open, 0)),
        Err(e) => return ctx("opening writable", Err(e)),
    };
    if storage.crashed() {
        return Err("open reported success although the storage lost power during it".into());
    }
    let mut floor = 0;
    for (t, op) in ops.iter().enumerate() {
        match op.perform(&disk, t as u32 + 1) {
            Err(_) if storage.crashed() => return Ok((Step::Op(t), floor)),
            Err(e) => return ctx(format!("step {t}: {op:?}"), Err(e)),
            Ok(_) if storage.crashed() => {
                return Err(format!(
                    "step {t}: {op:?} reported success although the storage lost power during it"
                ));
            }
            Ok(data) => {
                if let (Some(data), Op::Read { lba, .. }) = (data, op) {
                    compare_read(&data, *lba, disk.sector_size(), &states[t]).map_err(|e| format!("step {t}: {e}"))?;
                }
                if *op == Op::Flush {
                    floor = t + 1;
                }
            }
        }
    }
    drop(disk);
    Ok((if storage.crashed() { Step::Close } else { Step::Finished }, floor))
}

/// Describe the contents a sector may have.
fn allowed_list(allowed: &[Model], lba: u64) -> String {
    let mut ids: Vec<u32> = allowed.iter().map(|m| m.get(lba)).collect();
    ids.sort_unstable();
    ids.dedup();
    ids.iter()
        .map(|&id| SectorContent::Id(id).to_string())
        .collect::<Vec<_>>()
        .join(" or ")
}

/// Open a crash image, check every sector against the allowed states, then keep using it: write
/// the first sector of every granule (allocating where the crash left holes, so that a table
/// entry pointing at lost or reused space shows up as aliasing), flush, close, reopen read-only
/// and check that everything reads as expected.
fn verify_recovered(
    factory: &dyn ImageFactory,
    image: Arc<MemStorage>,
    allowed: &[Model],
    caps: &Capabilities,
) -> Outcome {
    let disk = ctx("reopening writable after the crash", factory.open(image.clone(), true))?;
    let n = allowed[0].sectors();
    if disk.sector_count() != n {
        return Err(format!(
            "the disk now has {} sectors instead of {n}",
            disk.sector_count()
        ));
    }
    let mut expect = Vec::with_capacity(n as usize);
    scan_disk(&disk, |lba, got| match got {
        SectorContent::Id(id) if allowed.iter().any(|m| m.get(lba) == id) => {
            expect.push(id);
            Ok(())
        }
        _ => Err(format!(
            "sector {lba} holds {got}, allowed: {}",
            allowed_list(allowed, lba)
        )),
    })?;
    let offsets = caps.offsets_in_storage.then_some(&*image as &dyn Storage);
    verify_full_block_status(&disk, offsets).map_err(|e| format!("after recovery: {e}"))?;

    let ss = disk.sector_size();
    let g = (caps.granularity / u64::from(ss)).max(1);
    for (k, lba) in (0..n).step_by(g as usize).chain([n - 1]).enumerate() {
        let id = AFTER_RECOVERY + k as u32;
        ctx(
            format!("writing sector {lba} after recovery"),
            disk.write(lba, &pattern_run(id, lba, 1, ss)),
        )?;
        expect[lba as usize] = id;
    }
    let same = |what: &'static str, disk: &dyn Disk| {
        scan_disk(disk, |lba, got| {
            let want = SectorContent::Id(expect[lba as usize]);
            if got == want {
                Ok(())
            } else {
                Err(format!("{what}: sector {lba} holds {got}, expected {want}"))
            }
        })
    };
    ctx("flush after recovery", disk.flush())?;
    drop(disk);
    let disk = ctx("reopening read-only after recovery", factory.open(image, false))?;
    same("writing after recovery, flushing and reopening", &disk)
}

/// Write ids used after recovery (far above any step's id).
const AFTER_RECOVERY: u32 = 1 << 30;

/// Fail each storage write, read and flush of the fixed sequence once (at most
/// `config.max_crash_points` of each kind), with the sequence carrying on after the error.
///
/// Nothing may panic; until the first error every operation must succeed, and the first error must
/// be the injected one (its chain mentions `injected fault`); after it, an engine may keep failing
/// (a poisoned image) or carry on. A failed change leaves its sectors old or new; reads must
/// return contents consistent with that, and the storage, reopened without faults, must open and
/// hold such contents too. Skipped when [`Capabilities::survives_io_errors`] is false.
pub fn check_io_errors(factory: &dyn ImageFactory, config: &Config) {
    if !factory.capabilities().survives_io_errors {
        return;
    }
    report(factory, "I/O errors", io_errors(factory, config));
}

fn io_errors(factory: &dyn ImageFactory, config: &Config) -> Outcome {
    let (base, sectors, ss) = base_image(factory)?;
    let granularity = (factory.capabilities().granularity / u64::from(ss)).max(1);
    let ops = fixed_sequence(sectors, granularity);

    let dry = Arc::new(FaultyStorage::new(base.snapshot()));
    fault_case(factory, &dry, &ops, sectors).map_err(|e| format!("without faults: {e}"))?;
    let counts = dry.counts();
    let max = config.max_crash_points;
    let plans = (sample_points(counts.writes, max)
        .into_iter()
        .map(|i| FaultPlan::none().write(i)))
    .chain(
        sample_points(counts.reads, max)
            .into_iter()
            .map(|i| FaultPlan::none().read(i)),
    )
    .chain(
        sample_points(counts.flushes, max)
            .into_iter()
            .map(|i| FaultPlan::none().flush(i)),
    )
    .chain(
        sample_points(counts.set_lens, max)
            .into_iter()
            .map(|i| FaultPlan::none().set_len(i)),
    );
    for plan in plans {
        let storage = Arc::new(FaultyStorage::new(base.snapshot()).with_plan(plan));
        fault_case(factory, &storage, &ops, sectors).map_err(|e| format!("{plan:?}: {e}"))?;
    }
    Ok(())
}

/// Run `ops` over faulty storage, tracking per sector which contents are possible.
fn fault_case(
    factory: &dyn ImageFactory,
    storage: &Arc<FaultyStorage<MemStorage>>,
    ops: &[Op],
    sectors: u64,
) -> Outcome {
    let injected = |e: &crate::Error| display_chain(e).contains("injected fault");
    let mut possible: Vec<Vec<u32>> = vec![vec![0]; sectors as usize];
    match factory.open(storage.clone(), true) {
        // The open failed cleanly: the image must still open without faults (checked below).
        Err(e) if injected(&e) => {}
        Err(e) => return ctx("opening writable", Err(e)),
        Ok(disk) => {
            let mut failed = false;
            for (t, op) in ops.iter().enumerate() {
                let id = t as u32 + 1;
                match op.perform(&disk, id) {
                    Ok(data) => {
                        if let (Some(data), Op::Read { lba, .. }) = (data, op) {
                            for (i, sector) in data.chunks(ss_of(&disk)).enumerate() {
                                let at = *lba + i as u64;
                                check_possible(&possible, at, decode_sector(sector, at))
                                    .map_err(|e| format!("step {t}: read: {e}"))?;
                            }
                        }
                        if let (true, Some((lba, count))) = (op.is_change(), op.range()) {
                            let new = if matches!(op, Op::Write { .. }) { id } else { 0 };
                            possible[lba as usize..(lba + count) as usize]
                                .iter_mut()
                                .for_each(|p| *p = vec![new]);
                        }
                    }
                    Err(e) if failed || injected(&e) => {
                        failed = true;
                        if let (true, Some((lba, count))) = (op.is_change(), op.range()) {
                            let new = if matches!(op, Op::Write { .. }) { id } else { 0 };
                            possible[lba as usize..(lba + count) as usize]
                                .iter_mut()
                                .for_each(|p| p.push(new));
                        }
                    }
                    Err(e) => return ctx(format!("step {t}: {op:?}, before any injected fault"), Err(e)),
                }
            }
        }
    }
    let reopened = Arc::new(storage.inner().snapshot());
    let disk = ctx("reopening without faults", factory.open(reopened, true))?;
    scan_disk(&disk, |lba, got| check_possible(&possible, lba, got)).map_err(|e| format!("after reopening: {e}"))
}

fn ss_of(disk: &dyn Disk) -> usize {
    disk.sector_size() as usize
}

fn check_possible(possible: &[Vec<u32>], lba: u64, got: SectorContent) -> Outcome {
    let p = &possible[lba as usize];
    match got {
        SectorContent::Id(id) if p.contains(&id) => Ok(()),
        _ => Err(format!(
            "sector {lba} holds {got}, possible: {}",
            p.iter()
                .map(|&id| SectorContent::Id(id).to_string())
                .collect::<Vec<_>>()
                .join(" or ")
        )),
    }
}
