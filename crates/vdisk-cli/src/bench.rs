//! `vdisk bench`: `qemu-img bench` for vdisk's I/O path.
//!
//! COUNT requests of BUFFER_SIZE bytes, the first at OFFSET, each next one STEP_SIZE further on
//! and wrapping as qemu-img wraps (modulo the disk size minus the buffer size), with DEPTH of
//! them in flight. qemu-img keeps DEPTH asynchronous requests queued; vdisk's `Disk` is
//! synchronous and `Send + Sync`, so DEPTH worker threads share one opened [`Image`], each
//! claiming the next request numbers when its previous request is done. `-r` (a vdisk extension)
//! sends every request to a random multiple of BUFFER_SIZE instead.

use crate::common::{CmdResult, Ctx, Failure, parse_format_opt};
use crate::output::{OutputFormat, emit_data, pretty_json};
use serde_json::{Map, Value};
use std::io::IoSlice;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Barrier, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};
use vdisk::bytes::{read_bytes, write_bytes};
use vdisk::disk_core::SplitMix64;
use vdisk::disk_core::display_chain;
use vdisk::{Disk, Error, Image, MissingParent, parse_size};

/// qemu-img's limit for counts, depths and sizes: `INT_MAX`.
const INT_MAX: u64 = i32::MAX as u64;
/// qemu-img's limit for the offset: `INT64_MAX`.
const OFFSET_MAX: u64 = i64::MAX as u64;
/// At most this many request numbers are claimed at once: a shared counter bumped for every
/// request bounces its cache line between cores each time, which costs several percent at a
/// million requests a second.
const MAX_BATCH: u64 = 16;
/// Seed of the random offsets (`-r`): fixed, so runs over the same image are comparable.
const SEED: u64 = 0x7664_6973_6b62_656e;

/// `-t`: qemu-img's cache modes, as they apply to vdisk (which never bypasses the host's page
/// cache: `none` and `directsync` behave as `writeback` and `writethrough`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Cache {
    /// Like `writeback` (qemu-img opens with `O_DIRECT`; vdisk does not).
    #[value(alias = "off")]
    None,
    /// Like `writethrough`: every write is durable before it completes.
    Directsync,
    /// Every write is durable before it completes (FUA).
    Writethrough,
    /// Writes are made durable by flushes (`--flush-interval`) and when the command ends.
    #[default]
    Writeback,
    /// No flush while the run lasts: `--flush-interval` flushes are skipped.
    Unsafe,
}

impl Cache {
    /// Whether every write is made durable before it completes.
    fn write_through(self) -> bool {
        matches!(self, Cache::Directsync | Cache::Writethrough)
    }
}

/// `-i`: qemu's asynchronous I/O back-ends; accepted for compatibility, none of them applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Aio {
    /// qemu's thread pool.
    Threads,
    /// Linux native AIO.
    Native,
    /// Linux io_uring.
    #[value(name = "io_uring")]
    IoUring,
}

/// Arguments of `vdisk bench` (qemu-img's, plus `-r` and `--output`). As with qemu-img's
/// option parsing, an option given twice takes its last value.
#[derive(Debug, clap::Args)]
#[command(args_override_self = true)]
pub struct BenchArgs {
    /// Number of requests.
    #[arg(short = 'c', long = "count", value_name = "COUNT", default_value = "75000", value_parser = parse_count)]
    pub count: u64,
    /// Requests in flight at once (served by this many threads).
    #[arg(short = 'd', long = "depth", value_name = "DEPTH", default_value = "64", value_parser = parse_count)]
    pub depth: u64,
    /// Image format (probed when absent).
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    pub format: Option<String>,
    /// Flush after every N requests (write test only; N at least DEPTH).
    #[arg(long = "flush-interval", value_name = "N", value_parser = parse_flush_interval)]
    pub flush_interval: Option<u64>,
    /// qemu's AIO back-end (threads, native, io_uring): accepted and ignored.
    #[arg(short = 'i', long = "aio", value_enum, value_name = "AIO")]
    pub aio: Option<Aio>,
    /// qemu's native AIO: accepted and ignored.
    #[arg(short = 'n', long = "native")]
    pub native: bool,
    /// With --flush-interval, flush without waiting for the requests in flight.
    #[arg(long = "no-drain")]
    pub no_drain: bool,
    /// Offset of the first request (not with -r).
    #[arg(short = 'o', long = "offset", value_name = "OFFSET", value_parser = parse_offset, conflicts_with = "random")]
    pub offset: Option<u64>,
    /// Byte written by a write test (default 0, as qemu-img).
    #[arg(long = "pattern", value_name = "PATTERN", value_parser = parse_pattern)]
    pub pattern: Option<u8>,
    /// Bytes per request.
    #[arg(short = 's', long = "buffer-size", value_name = "BUFFER_SIZE", default_value = "4096", value_parser = parse_buffer_size)]
    pub buffer_size: u64,
    /// Distance from one request's offset to the next (default: the buffer size; not with -r).
    #[arg(short = 'S', long = "step-size", value_name = "STEP_SIZE", value_parser = parse_step, conflicts_with = "random")]
    pub step: Option<u64>,
    /// Cache mode: none, directsync, writethrough, writeback (default) or unsafe.
    #[arg(short = 't', long = "cache", value_enum, value_name = "CACHE", default_value_t)]
    pub cache: Cache,
    /// Write test (default: read).
    #[arg(short = 'w', long = "write")]
    pub write: bool,
    /// Force-share: read while another process (a running VM) writes the image, as qemu-img's
    /// -U; refused with -w, as qemu-img refuses it.
    #[arg(short = 'U', long = "force-share", conflicts_with = "write")]
    pub force_share: bool,
    /// Random offsets, multiples of the buffer size (vdisk extension).
    #[arg(short = 'r', long = "random")]
    pub random: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t, value_name = "FMT")]
    pub output: OutputFormat,
    /// The image.
    pub file: PathBuf,
}

/// A number as qemu-img's `qemu_strtoul(.., 0)` reads it: decimal, `0x` hex or `0` octal.
/// `Err(true)` when it is a number but negative.
fn c_number(text: &str) -> Result<u64, bool> {
    if let Some(negated) = text.strip_prefix('-') {
        return Err(c_number(negated).is_ok());
    }
    let (digits, radix) = if let Some(h) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        (h, 16)
    } else if let Some(octal) = text.strip_prefix('0').filter(|rest| !rest.is_empty()) {
        (octal, 8)
    } else {
        (text, 10)
    };
    if digits.is_empty() || digits.starts_with('+') {
        return Err(false);
    }
    u64::from_str_radix(digits, radix).map_err(|e| {
        use std::num::IntErrorKind::PosOverflow;
        *e.kind() == PosOverflow
    })
}

/// A number in `min..=max`.
fn number_in(text: &str, min: u64, max: u64) -> Result<u64, String> {
    match c_number(text) {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        Err(false) => Err(format!("expected a number from {min} to {max}")),
        _ => Err(format!("must be between {min} and {max}")),
    }
}

/// A size as qemu-img's `cvtnum` reads it (`4k`, `1.5M`, `0x1000`) in `min..=max`.
fn size_in(text: &str, min: u64, max: u64) -> Result<u64, String> {
    let hex = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X"));
    let value = match hex {
        Some(h) => u64::from_str_radix(h, 16).map_err(|_| ()),
        None if text.starts_with('-') => return Err(format!("must be between {min} and {max}")),
        None => parse_size(text).map_err(|_| ()),
    };
    match value {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        Ok(_) => Err(format!("must be between {min} and {max}")),
        Err(()) => Err(format!(
            "expected a size from {min} to {max} bytes (suffixes K, M, G, T allowed)"
        )),
    }
}

fn parse_count(text: &str) -> Result<u64, String> {
    number_in(text, 1, INT_MAX)
}

fn parse_flush_interval(text: &str) -> Result<u64, String> {
    number_in(text, 0, INT_MAX)
}

fn parse_pattern(text: &str) -> Result<u8, String> {
    number_in(text, 0, 255).map(|n| n as u8)
}

fn parse_buffer_size(text: &str) -> Result<u64, String> {
    size_in(text, 1, INT_MAX)
}

fn parse_step(text: &str) -> Result<u64, String> {
    size_in(text, 0, INT_MAX)
}

fn parse_offset(text: &str) -> Result<u64, String> {
    size_in(text, 0, OFFSET_MAX)
}

/// Where the requests go and what is done around them.
#[derive(Debug, Clone)]
struct Plan {
    count: u64,
    /// Requests in flight (qemu-img's DEPTH); the run uses `min(depth, count)` threads.
    depth: u64,
    bufsize: usize,
    offset: u64,
    step: u64,
    /// Virtual size of the disk.
    size: u64,
    random: bool,
    write: bool,
    /// Every write durable before it completes (writethrough, directsync).
    fua: bool,
    /// Whether `--flush-interval` flushes happen (not with `-t unsafe`).
    flushes: bool,
    /// `--flush-interval` (0: none).
    flush_interval: u64,
    /// Wait for the requests in flight before a `--flush-interval` flush.
    drain: bool,
    sector: u64,
    /// Some write may cover part of a sector: writes then go one at a time, so that two
    /// read-modify-writes of one sector cannot undo each other.
    serialize_writes: bool,
    /// Request numbers a worker claims at once ([`Plan::batch_for`]).
    batch: u64,
}

impl Plan {
    /// Offset of request `i` in the sequential pattern, as qemu-img computes it: the first at
    /// OFFSET, then advancing by STEP modulo (size - buffer size), or always 0 when the buffer
    /// does not fit more than once.
    fn sequential_offset(&self, i: u64) -> u64 {
        let bufsize = self.bufsize as u64;
        if i == 0 {
            self.offset
        } else if self.size <= bufsize {
            0
        } else {
            // Below 2^63 + 2^62 (OFFSET < 2^63, i and STEP < 2^31): no overflow in u64.
            (self.offset + i * self.step) % (self.size - bufsize)
        }
    }

    /// A random offset: a multiple of the buffer size with the whole buffer inside the disk.
    fn random_offset(&self, rng: &mut SplitMix64) -> u64 {
        let bufsize = self.bufsize as u64;
        let slots = self.size / bufsize;
        ((u128::from(rng.next_u64()) * u128::from(slots)) >> 64) as u64 * bufsize
    }

    /// The first request number at or after which qemu-img drains and flushes: the number of
    /// requests not yet sent is then a multiple of the interval. qemu-img sends DEPTH requests
    /// before it first looks, so a point before that is never reached.
    fn first_flush_point(&self) -> u64 {
        let first_batch = self.depth.min(self.count);
        first_batch + (self.count - first_batch) % self.flush_interval
    }

    /// Request numbers a worker claims at once: up to [`MAX_BATCH`], few enough that every one
    /// of `threads` workers gets work between two flush points and the last workers to finish
    /// are not far behind the others.
    fn batch_for(count: u64, flush_interval: u64, threads: u64) -> u64 {
        let span = if flush_interval > 0 {
            flush_interval.min(count)
        } else {
            count
        };
        (span / threads.max(1) / 64).clamp(1, MAX_BATCH)
    }

    /// Whether a flush goes before request `i` (`--flush-interval`).
    fn flush_before(&self, i: u64) -> bool {
        self.flush_interval > 0
            && i < self.count
            && i >= self.depth.min(self.count)
            && (self.count - i).is_multiple_of(self.flush_interval)
    }
}

/// Holds the workers until every one of them has been started (or one could not be).
struct Gate {
    state: Mutex<Option<bool>>,
    opened: Condvar,
}

impl Gate {
    fn new() -> Self {
        Gate {
            state: Mutex::new(None),
            opened: Condvar::new(),
        }
    }

    /// Let the workers go (`true`) or send them home (`false`).
    fn open(&self, go: bool) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = Some(go);
        self.opened.notify_all();
    }

    /// Wait for [`Gate::open`]; whether to run.
    fn wait(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(go) = *state {
                return go;
            }
            state = self.opened.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// The shared request counter, on a cache line of its own (the flag read before every request
/// stays on a line nobody writes).
#[repr(align(128))]
struct Counter(AtomicU64);

/// What the workers share.
struct Shared<'a> {
    image: &'a Image,
    file: &'a Path,
    plan: &'a Plan,
    /// The next request number to send.
    next: Counter,
    /// Set on the first failure: the workers send nothing more.
    stop: AtomicBool,
    failure: Mutex<Option<Failure>>,
    /// Taken by every write when `serialize_writes`.
    write_lock: Mutex<()>,
    /// Where the workers meet to drain the queue before a flush (`--flush-interval`).
    drain: Barrier,
}

impl Shared<'_> {
    /// Remember the first failure and stop the run.
    fn fail(&self, failure: Failure) {
        let mut slot = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        slot.get_or_insert(failure);
        self.stop.store(true, Ordering::SeqCst);
    }

    /// A flush between requests (none with `-t unsafe`, as qemu-img's `cache.no-flush`).
    fn interval_flush(&self) {
        if self.plan.flushes
            && let Err(e) = self.image.flush()
        {
            self.fail(self.error("flush", e));
        }
    }

    fn error(&self, what: &str, e: Error) -> Failure {
        failure(self.file, what, &e)
    }

    /// Send request `i`, with `buf` as its buffer.
    fn request(&self, i: u64, buf: &mut [u8], rng: &mut SplitMix64) {
        let plan = self.plan;
        let offset = if plan.random {
            plan.random_offset(rng)
        } else {
            plan.sequential_offset(i)
        };
        let whole = offset.is_multiple_of(plan.sector) && (buf.len() as u64).is_multiple_of(plan.sector);
        let image = self.image;
        let result = if plan.write {
            let _one_at_a_time = plan
                .serialize_writes
                .then(|| self.write_lock.lock().unwrap_or_else(PoisonError::into_inner));
            if whole {
                let lba = offset / plan.sector;
                if plan.fua {
                    image.write_vectored(lba, &[IoSlice::new(buf)], true)
                } else {
                    image.write(lba, buf)
                }
            } else {
                write_bytes(image, offset, buf).and_then(|()| if plan.fua { image.flush() } else { Ok(()) })
            }
        } else if whole {
            image.read(offset / plan.sector, buf)
        } else {
            read_bytes(image, offset, buf)
        };
        if let Err(e) = result {
            let op = if plan.write { "write" } else { "read" };
            let what = format!("{op} of {} bytes at offset {offset}", buf.len());
            self.fail(self.error(&what, e));
        }
    }

    /// Send requests until `end` is claimed (or the run stopped).
    fn send_until(&self, end: u64, buf: &mut [u8], rng: &mut SplitMix64) {
        let batch = self.plan.batch;
        loop {
            let first = self.next.0.fetch_add(batch, Ordering::Relaxed);
            if first >= end {
                return;
            }
            for i in first..end.min(first + batch) {
                if self.stop.load(Ordering::Relaxed) {
                    return;
                }
                if !self.plan.drain && self.plan.flush_before(i) {
                    self.interval_flush();
                }
                self.request(i, buf, rng);
            }
        }
    }

    /// One worker: one request in flight at a time.
    fn work(&self, worker: u64, buf: &mut [u8]) {
        let mut rng = SplitMix64::new(SEED ^ worker.wrapping_mul(0xd1b5_4a32_d192_ed03));
        let plan = self.plan;
        if plan.flush_interval == 0 || !plan.drain {
            self.send_until(plan.count, buf, &mut rng);
            return;
        }
        // Drain mode: the requests up to each flush point, then every worker waits, one of them
        // flushes, and all go on. Every worker passes every meeting point (a failure only stops
        // the sending), so none waits for a worker that left.
        let mut end = plan.first_flush_point();
        while end < plan.count {
            self.send_until(end, buf, &mut rng);
            if self.drain.wait().is_leader() {
                self.next.0.store(end, Ordering::Relaxed);
                if !self.stop.load(Ordering::Relaxed) {
                    self.interval_flush();
                }
            }
            self.drain.wait();
            end += plan.flush_interval;
        }
        self.send_until(plan.count, buf, &mut rng);
    }
}

/// `what` on the image at `file` failed: the message names the file once.
fn failure(file: &Path, what: &str, e: &Error) -> Failure {
    let message = display_chain(e);
    match e.context().file {
        Some(_) => Failure::new(format!("{what} failed: {message}")),
        None => Failure::new(format!("{}: {what} failed: {message}", file.display())),
    }
}

/// A buffer of `len` bytes of `fill`, or a failure if there is not that much memory.
fn buffer(len: usize, fill: u8) -> Result<Vec<u8>, Failure> {
    let mut buf = Vec::new();
    buf.try_reserve_exact(len)
        .map_err(|_| Failure::new(format!("cannot allocate a buffer of {len} bytes")))?;
    // Written now, so no page is first touched while the clock runs.
    buf.resize(len, fill);
    Ok(buf)
}

/// Run `plan` on `image` with `min(depth, count)` threads; the time from the first request
/// to the last completion.
fn run_plan(image: &Image, file: &Path, plan: &Plan, pattern: u8) -> Result<Duration, Failure> {
    let threads = plan.depth.min(plan.count);
    let buffers = (0..threads)
        .map(|_| buffer(plan.bufsize, pattern))
        .collect::<Result<Vec<_>, _>>()?;
    let shared = Shared {
        image,
        file,
        plan,
        next: Counter(AtomicU64::new(0)),
        stop: AtomicBool::new(false),
        failure: Mutex::new(None),
        write_lock: Mutex::new(()),
        drain: Barrier::new(usize::try_from(threads).unwrap_or(usize::MAX)),
    };
    let gate = Gate::new();
    let elapsed = std::thread::scope(|scope| {
        let mut workers = Vec::with_capacity(buffers.len());
        for (worker, mut buf) in (0u64..).zip(buffers) {
            let (shared, gate) = (&shared, &gate);
            let spawned = std::thread::Builder::new()
                .name(format!("bench-{worker}"))
                .spawn_scoped(scope, move || {
                    if gate.wait() {
                        shared.work(worker, &mut buf);
                    }
                });
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(e) => {
                    gate.open(false);
                    return Err(Failure::new(format!("cannot start {threads} threads: {e}")));
                }
            }
        }
        let start = Instant::now();
        gate.open(true);
        let mut panicked = false;
        for handle in workers {
            panicked |= handle.join().is_err();
        }
        let elapsed = start.elapsed();
        if panicked {
            return Err(Failure::new(format!("{}: a worker thread failed", file.display())));
        }
        Ok(elapsed)
    })?;
    match shared.failure.into_inner().unwrap_or_else(PoisonError::into_inner) {
        Some(failure) => Err(failure),
        None => Ok(elapsed),
    }
}

/// Run `vdisk bench`.
pub fn run(ctx: &Ctx, args: &BenchArgs) -> CmdResult {
    let format = parse_format_opt(args.format.as_deref())?;
    let flush_interval = args.flush_interval.unwrap_or(0);
    if flush_interval > 0 && !args.write {
        return Err(Failure::new("--flush-interval is only available in write tests"));
    }
    if flush_interval > 0 && flush_interval < args.depth {
        return Err(Failure::new(format!(
            "the flush interval ({flush_interval}) can't be smaller than the depth ({})",
            args.depth
        )));
    }
    // -n and -i choose qemu's AIO back-end, which vdisk does not have.
    let _ = (args.native, args.aio);
    let ctx = &ctx.sharing(args.force_share);

    let image = ctx.open(&args.file, format, args.write, MissingParent::Fail)?;
    let bufsize = args.buffer_size;
    let size = image.virtual_size();
    let offset = args.offset.unwrap_or(0);
    let step = args.step.filter(|&s| s != 0).unwrap_or(bufsize);
    if args.random && bufsize > size {
        return Err(Failure::new(format!(
            "{}: requests of {bufsize} bytes do not fit in the disk of {size} bytes",
            args.file.display()
        )));
    }
    if !args.random && offset.checked_add(bufsize).is_none_or(|end| end > size) {
        return Err(Failure::new(format!(
            "{}: a request of {bufsize} bytes at offset {offset} lies outside the disk of {size} bytes",
            args.file.display()
        )));
    }
    let sector = u64::from(image.sector_size());
    let aligned = bufsize.is_multiple_of(sector)
        && (args.random
            || (offset.is_multiple_of(sector) && step.is_multiple_of(sector) && size.is_multiple_of(sector)));
    let plan = Plan {
        count: args.count,
        depth: args.depth,
        bufsize: usize::try_from(bufsize).map_err(|_| Failure::new("buffer size too large"))?,
        offset,
        step,
        size,
        random: args.random,
        write: args.write,
        fua: args.write && args.cache.write_through(),
        flushes: args.cache != Cache::Unsafe,
        flush_interval,
        drain: !args.no_drain,
        sector,
        serialize_writes: args.write && !aligned,
        batch: Plan::batch_for(args.count, flush_interval, args.depth.min(args.count)),
    };

    let op = if args.write { "write" } else { "read" };
    if args.output == OutputFormat::Human {
        let wherever = if args.random {
            format!("random offsets, aligned to {bufsize}")
        } else {
            format!("starting at offset {offset}, step size {step}")
        };
        let mut text = format!(
            "Sending {} {op} requests, {bufsize} bytes each, {} in parallel ({wherever})\n",
            args.count, args.depth
        );
        if flush_interval > 0 {
            text.push_str(&format!("Sending flush every {flush_interval} requests\n"));
        }
        emit_data(&text);
    }

    let elapsed = run_plan(&image, &args.file, &plan, args.pattern.unwrap_or(0))?;
    // What is still pending reaches the file (qemu-img flushes when it closes the image, after
    // the clock stopped; with -t unsafe the metadata is still written, so the image is whole).
    if args.write {
        image.flush().map_err(|e| failure(&args.file, "flush", &e))?;
    }

    let seconds = elapsed.as_secs_f64();
    let per_second = 1.0 / seconds.max(1e-9);
    let iops = args.count as f64 * per_second;
    let mib_per_s = (args.count * bufsize) as f64 * per_second / f64::from(1u32 << 20);
    match args.output {
        OutputFormat::Human => emit_data(&format!(
            "{iops:.0} IOPS, {mib_per_s:.2} MiB/s\nRun completed in {seconds:.3} seconds.\n"
        )),
        OutputFormat::Json => {
            let mut o = Map::new();
            o.insert("operation".into(), Value::from(op));
            o.insert("count".into(), Value::from(args.count));
            o.insert("depth".into(), Value::from(args.depth));
            o.insert("size".into(), Value::from(bufsize));
            if args.random {
                o.insert("random".into(), Value::from(true));
            } else {
                o.insert("offset".into(), Value::from(offset));
                o.insert("step".into(), Value::from(step));
            }
            o.insert("elapsed-seconds".into(), Value::from(seconds));
            o.insert("iops".into(), Value::from(iops));
            o.insert("mib-per-s".into(), Value::from(mib_per_s));
            emit_data(&pretty_json(&Value::Object(o)));
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(count: u64, depth: u64, offset: u64, step: u64, bufsize: usize, size: u64) -> Plan {
        Plan {
            count,
            depth,
            bufsize,
            offset,
            step,
            size,
            random: false,
            write: false,
            fua: false,
            flushes: true,
            flush_interval: 0,
            drain: true,
            sector: 512,
            serialize_writes: false,
            batch: 1,
        }
    }

    #[test]
    fn numbers_like_qemu() {
        assert_eq!(parse_count("0x10"), Ok(16));
        assert_eq!(parse_count("010"), Ok(8));
        assert_eq!(parse_count("75000"), Ok(75000));
        for bad in ["0", "-1", "1k", "x", "", "2147483648", "99999999999999999999999"] {
            assert!(parse_count(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_pattern("0xa5"), Ok(0xa5));
        assert!(parse_pattern("256").is_err());
        assert_eq!(parse_buffer_size("4k"), Ok(4096));
        assert_eq!(parse_buffer_size("0x1000"), Ok(4096));
        assert!(parse_buffer_size("0").is_err());
        assert!(parse_buffer_size("2G").is_err());
        assert_eq!(parse_step("0"), Ok(0));
        assert_eq!(parse_offset("1.5k"), Ok(1536));
        assert!(parse_offset("-1").is_err());
        assert!(parse_offset("x").is_err());
    }

    #[test]
    fn sequential_offsets_wrap_as_qemu() {
        // qemu-img bench -o 1044480 on a 1 MiB image: 1044480, then 4096, 8192, ...
        let p = plan(4, 2, 1_044_480, 4096, 4096, 1 << 20);
        let offsets: Vec<u64> = (0..4).map(|i| p.sequential_offset(i)).collect();
        assert_eq!(offsets, [1_044_480, 4096, 8192, 12288]);
        // Wrapping modulo size - bufsize: the last buffer of the disk is reached only as OFFSET.
        let p = plan(300, 1, 0, 4096, 4096, 1 << 20);
        assert_eq!(p.sequential_offset(254), 254 * 4096);
        assert_eq!(p.sequential_offset(255), 0);
        // A buffer as large as the disk: always 0.
        let p = plan(3, 1, 0, 512, 4096, 4096);
        assert_eq!(p.sequential_offset(2), 0);
    }

    #[test]
    fn random_offsets_stay_inside() {
        let mut p = plan(1, 1, 0, 4096, 4096, (1 << 20) + 100);
        p.random = true;
        let mut rng = SplitMix64::new(SEED);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..10_000 {
            let o = p.random_offset(&mut rng);
            assert!(o.is_multiple_of(4096) && o + 4096 <= p.size, "{o}");
            seen.insert(o);
        }
        assert_eq!(seen.len(), 256);
    }

    #[test]
    fn batches_leave_every_worker_work() {
        assert_eq!(Plan::batch_for(20, 0, 16), 1);
        assert_eq!(Plan::batch_for(75000, 0, 64), 16);
        assert_eq!(Plan::batch_for(20000, 0, 64), 4);
        assert_eq!(Plan::batch_for(1_000_000, 64, 64), 1);
        assert_eq!(Plan::batch_for(1_000_000, 0, 1), 16);
    }

    #[test]
    fn flush_points_as_qemu() {
        let mut p = plan(1000, 64, 0, 4096, 4096, 1 << 30);
        p.flush_interval = 100;
        let points: Vec<u64> = (0..1000).filter(|&i| p.flush_before(i)).collect();
        assert_eq!(points, (1..10).map(|k| k * 100).collect::<Vec<_>>());
        assert_eq!(p.first_flush_point(), 100);
        // 100 requests, interval 64, depth 64: the point at 36 comes before the first batch is
        // sent and is never reached; no point remains before the end.
        let mut p = plan(100, 64, 0, 4096, 4096, 1 << 30);
        p.flush_interval = 64;
        assert!((0..100).all(|i| !p.flush_before(i)));
        assert!(p.first_flush_point() >= 100);
    }
}
