//! An async device backend over a vdisk [`Image`]: the adapter a hypervisor writes to plug vdisk
//! into an OpenVMM-style `DiskIo` trait.
//!
//! Virtual SCSI and NVMe front ends issue requests as futures: read a scatter list, write a
//! gather list (optionally with FUA, force unit access), flush the cache (`sync_cache`), unmap
//! (trim). vdisk's [`Disk`] is synchronous and `Send + Sync`, so the adapter runs each request on
//! a pool of worker threads and hands back a future that completes when the worker is done
//! (what `spawn_blocking` does in an async runtime). Nothing here needs an async runtime crate:
//!
//! - [`exec::ThreadPool`] runs closures on a fixed set of threads and returns a [`exec::Task`],
//!   a one-shot future built on std's `Waker`;
//! - [`exec::block_on`] drives one future on the calling thread (parking it until a waker fires),
//!   and [`exec::join_all`] polls many futures at once, so requests overlap on the pool.
//!
//! The trait mirrors OpenVMM's `disk_backend::DiskIo` with owned buffers (`Vec<u8>` per
//! scatter-gather element) instead of guest-memory request buffers, which keeps the example
//! free of lifetimes. What the adapter shows:
//!
//! - **Range checks**: any sector number is accepted and out-of-range requests come back as
//!   [`DiskError::IllegalBlock`], never a panic ([`Disk`] checks, the adapter maps
//!   [`vdisk::DeviceStatus`]).
//! - **FUA**: `write_vectored(.., fua: true)` goes to [`Disk::write_vectored`] with `fua`, which
//!   makes the data and the metadata that maps it durable before the future completes;
//!   [`Disk::is_fua_respected`] says so to the guest.
//! - **Unmap**: vdisk's discard always leaves zeros (never stale data, never a parent's data), so
//!   `unmap_behavior` is [`UnmapBehavior::Zeroes`] and `optimal_unmap_sectors` is the allocation
//!   unit ([`Disk::discard_behavior`], [`Disk::optimal_io_alignment`]).
//!
//! Run it with no arguments to create a temporary VHDX and exercise every call, or with the path
//! of an image to open it read-only, print what a device would report and read it concurrently:
//!
//! ```text
//! cargo run -p vdisk --example async_disk
//! cargo run -p vdisk --example async_disk -- disk.vmdk
//! ```

use std::future::Future;
use std::io::{IoSlice, IoSliceMut};
use std::path::Path;
use std::sync::Arc;
use vdisk::{CreateOptions, DeviceStatus, Disk, FsPolicy, FsResolver, Image, OpenOptions, Options};

/// A minimal std-only executor: a thread pool whose jobs complete futures, `block_on` and
/// `join_all`. An embedder with tokio would use `spawn_blocking` and `join!` instead.
mod exec {
    use std::future::Future;
    use std::pin::{Pin, pin};
    use std::sync::mpsc;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Wake, Waker};
    use std::thread::{self, JoinHandle, Thread};

    type Job = Box<dyn FnOnce() + Send>;

    /// A fixed set of worker threads taking jobs from one queue.
    pub struct ThreadPool {
        queue: Option<mpsc::Sender<Job>>,
        workers: Vec<JoinHandle<()>>,
    }

    impl ThreadPool {
        /// Start `threads` workers (at least one).
        pub fn new(threads: usize) -> Self {
            let (queue, jobs) = mpsc::channel::<Job>();
            let jobs = Arc::new(Mutex::new(jobs));
            let workers = (0..threads.max(1))
                .map(|i| {
                    let jobs = Arc::clone(&jobs);
                    thread::Builder::new()
                        .name(format!("disk-io-{i}"))
                        .spawn(move || {
                            loop {
                                // The queue lock is held only while taking a job, not while
                                // running it.
                                let job = vdisk::disk_core::sync::lock(&jobs).recv();
                                match job {
                                    Ok(job) => job(),
                                    Err(mpsc::RecvError) => break, // the pool was dropped
                                }
                            }
                        })
                        .expect("spawning a worker thread")
                })
                .collect();
            ThreadPool {
                queue: Some(queue),
                workers,
            }
        }

        /// Run `job` on a worker; the returned future completes with its result. A panic in
        /// `job` is resumed in whoever awaits the task.
        pub fn spawn<T: Send + 'static>(&self, job: impl FnOnce() -> T + Send + 'static) -> Task<T> {
            let shared = Arc::new(Mutex::new(Slot {
                result: None,
                waker: None,
            }));
            let slot = Arc::clone(&shared);
            let run: Job = Box::new(move || {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                let waker = {
                    let mut slot = vdisk::disk_core::sync::lock(&slot);
                    slot.result = Some(result);
                    slot.waker.take()
                };
                // Wake outside the lock: the woken task may poll at once.
                if let Some(waker) = waker {
                    waker.wake();
                }
            });
            self.queue
                .as_ref()
                .expect("the queue lives as long as the pool")
                .send(run)
                .expect("workers run until the pool is dropped");
            Task(shared)
        }
    }

    impl Drop for ThreadPool {
        fn drop(&mut self) {
            // Closing the queue ends each worker after the jobs already queued.
            self.queue = None;
            for worker in self.workers.drain(..) {
                let _ = worker.join();
            }
        }
    }

    /// What a job leaves for its task: the result, or the waker to call when it arrives.
    struct Slot<T> {
        result: Option<thread::Result<T>>,
        waker: Option<Waker>,
    }

    /// The future of one job on a [`ThreadPool`] (a one-shot channel).
    pub struct Task<T>(Arc<Mutex<Slot<T>>>);

    impl<T> Future for Task<T> {
        type Output = T;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
            let mut slot = vdisk::disk_core::sync::lock(&self.0);
            match slot.result.take() {
                Some(Ok(value)) => Poll::Ready(value),
                Some(Err(panic)) => std::panic::resume_unwind(panic),
                None => {
                    // Keep only the latest waker: the task may have moved between polls.
                    match &mut slot.waker {
                        Some(w) => w.clone_from(cx.waker()),
                        None => slot.waker = Some(cx.waker().clone()),
                    }
                    Poll::Pending
                }
            }
        }
    }

    /// Wakes a thread parked in [`block_on`].
    struct Unpark(Thread);

    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }

    /// Drive `future` to completion on this thread, parking between polls.
    pub fn block_on<F: Future>(future: F) -> F::Output {
        let mut future = pin!(future);
        let waker = Waker::from(Arc::new(Unpark(thread::current())));
        let mut cx = Context::from_waker(&waker);
        loop {
            if let Poll::Ready(value) = future.as_mut().poll(&mut cx) {
                return value;
            }
            // A wake before this park makes it return at once; spurious returns just poll again.
            thread::park();
        }
    }

    /// Poll all `futures` together; completes with their outputs in order once all are done.
    pub fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> JoinAll<F> {
        let futures: Vec<_> = futures.into_iter().map(|f| Some(Box::pin(f))).collect();
        let outputs = futures.iter().map(|_| None).collect();
        JoinAll { futures, outputs }
    }

    /// The future of [`join_all`].
    pub struct JoinAll<F: Future> {
        futures: Vec<Option<Pin<Box<F>>>>,
        outputs: Vec<Option<F::Output>>,
    }

    // The futures are boxed and outputs are never pinned, so moving a `JoinAll` is fine.
    impl<F: Future> Unpin for JoinAll<F> {}

    impl<F: Future> Future for JoinAll<F> {
        type Output = Vec<F::Output>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let this = self.get_mut();
            let mut pending = false;
            for (future, output) in this.futures.iter_mut().zip(this.outputs.iter_mut()) {
                if let Some(f) = future {
                    match f.as_mut().poll(cx) {
                        Poll::Ready(value) => {
                            *output = Some(value);
                            *future = None;
                        }
                        Poll::Pending => pending = true,
                    }
                }
            }
            if pending {
                return Poll::Pending;
            }
            Poll::Ready(
                this.outputs
                    .iter_mut()
                    .map(|o| o.take().expect("every future finished"))
                    .collect(),
            )
        }
    }
}

/// Why a request failed, as a virtual storage device reports it (the shape of OpenVMM's
/// `DiskError`).
#[derive(Debug)]
enum DiskError {
    /// The sector range lies outside the disk.
    IllegalBlock,
    /// The request is malformed (buffers not a whole number of sectors, an unsupported operation).
    InvalidInput(vdisk::Error),
    /// The disk is read-only.
    ReadOnly,
    /// The data cannot be read correctly (damaged metadata, a wrong parent).
    MediumError(vdisk::Error),
    /// The host storage failed, or the handle must be reopened.
    Io(vdisk::Error),
}

impl From<vdisk::Error> for DiskError {
    fn from(e: vdisk::Error) -> Self {
        match e.kind().device_status() {
            DeviceStatus::IllegalRequest if e.kind() == vdisk::ErrorKind::OutOfRange => DiskError::IllegalBlock,
            DeviceStatus::IllegalRequest => DiskError::InvalidInput(e),
            DeviceStatus::WriteProtected => DiskError::ReadOnly,
            DeviceStatus::MediumError => DiskError::MediumError(e),
            DeviceStatus::IoError => DiskError::Io(e),
        }
    }
}

impl std::fmt::Display for DiskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiskError::IllegalBlock => f.write_str("illegal block"),
            DiskError::InvalidInput(e) => write!(f, "invalid input: {e}"),
            DiskError::ReadOnly => f.write_str("read-only disk"),
            DiskError::MediumError(e) => write!(f, "medium error: {e}"),
            DiskError::Io(e) => write!(f, "I/O error: {e}"),
        }
    }
}

impl std::error::Error for DiskError {}

/// What happens to unmapped sectors (OpenVMM's `UnmapBehavior`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UnmapBehavior {
    /// They read as zeros afterwards.
    Zeroes,
    /// Their contents are unspecified afterwards.
    Unspecified,
}

/// An async disk backend, as a storage device emulator sees it (after OpenVMM's
/// `disk_backend::DiskIo`). Buffers are owned: reads take the scatter list and give it back
/// filled. Every method accepts any sector number; out of range is
/// [`DiskError::IllegalBlock`].
///
/// Like OpenVMM's trait, the async methods are declared as returning `impl Future + Send` (an
/// `async fn` in a trait cannot promise `Send`), so a multi-threaded executor may move the
/// futures between threads; an implementation may still write them as `async` blocks.
trait DiskIo: Send + Sync {
    /// A name for diagnostics.
    fn disk_type(&self) -> &str;
    /// Number of logical sectors.
    fn sector_count(&self) -> u64;
    /// Logical sector size in bytes.
    fn sector_size(&self) -> u32;
    /// Physical sector size in bytes.
    fn physical_sector_size(&self) -> u32;
    /// A stable 16-byte identifier, exposed to the guest (SCSI page 83, NVMe NGUID).
    fn disk_id(&self) -> Option<[u8; 16]>;
    /// Whether `fua` on [`DiskIo::write_vectored`] makes the write durable before completion.
    fn is_fua_respected(&self) -> bool;
    /// Whether writes are refused.
    fn is_read_only(&self) -> bool;
    /// Read consecutive sectors from `sector` into `bufs` (whose lengths add up to whole
    /// sectors), returning them filled.
    fn read_vectored(
        &self,
        sector: u64,
        bufs: Vec<Vec<u8>>,
    ) -> impl Future<Output = Result<Vec<Vec<u8>>, DiskError>> + Send;
    /// Write `bufs` as consecutive sectors from `sector`; with `fua`, durably.
    fn write_vectored(
        &self,
        sector: u64,
        bufs: Vec<Vec<u8>>,
        fua: bool,
    ) -> impl Future<Output = Result<(), DiskError>> + Send;
    /// Make every completed write durable (SCSI SYNCHRONIZE CACHE, NVMe Flush).
    fn sync_cache(&self) -> impl Future<Output = Result<(), DiskError>> + Send;
    /// Release `count` sectors from `sector` (SCSI UNMAP, NVMe Deallocate). With
    /// `block_level_only` the caller needs no more than the release of whole blocks.
    fn unmap(
        &self,
        sector: u64,
        count: u64,
        block_level_only: bool,
    ) -> impl Future<Output = Result<(), DiskError>> + Send;
    /// What unmapped sectors read as.
    fn unmap_behavior(&self) -> UnmapBehavior;
    /// The unmap granularity worth advertising, in sectors.
    fn optimal_unmap_sectors(&self) -> u32;
}

/// [`DiskIo`] over a shared vdisk image: every request runs on the pool.
#[derive(Clone)]
struct VdiskIo {
    image: Arc<Image>,
    pool: Arc<exec::ThreadPool>,
}

impl VdiskIo {
    fn new(image: Image, pool: Arc<exec::ThreadPool>) -> Self {
        VdiskIo {
            image: Arc::new(image),
            pool,
        }
    }

    /// Run `op` on the image in a worker thread.
    fn run<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Image) -> vdisk::Result<T> + Send + 'static,
    ) -> exec::Task<Result<T, DiskError>> {
        let image = Arc::clone(&self.image);
        self.pool.spawn(move || op(&image).map_err(DiskError::from))
    }
}

impl DiskIo for VdiskIo {
    fn disk_type(&self) -> &str {
        "vdisk"
    }

    fn sector_count(&self) -> u64 {
        self.image.sector_count()
    }

    fn sector_size(&self) -> u32 {
        self.image.sector_size()
    }

    fn physical_sector_size(&self) -> u32 {
        self.image.physical_sector_size()
    }

    fn disk_id(&self) -> Option<[u8; 16]> {
        self.image.disk_id().map(|id| *id.as_bytes())
    }

    fn is_fua_respected(&self) -> bool {
        self.image.is_fua_respected()
    }

    fn is_read_only(&self) -> bool {
        self.image.is_read_only()
    }

    fn read_vectored(
        &self,
        sector: u64,
        bufs: Vec<Vec<u8>>,
    ) -> impl Future<Output = Result<Vec<Vec<u8>>, DiskError>> + Send {
        self.run(move |image| {
            let mut bufs = bufs;
            let mut slices: Vec<IoSliceMut<'_>> = bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            image.read_vectored(sector, &mut slices)?;
            drop(slices);
            Ok(bufs)
        })
    }

    fn write_vectored(
        &self,
        sector: u64,
        bufs: Vec<Vec<u8>>,
        fua: bool,
    ) -> impl Future<Output = Result<(), DiskError>> + Send {
        self.run(move |image| {
            let slices: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
            image.write_vectored(sector, &slices, fua)
        })
    }

    fn sync_cache(&self) -> impl Future<Output = Result<(), DiskError>> + Send {
        self.run(|image| image.flush())
    }

    fn unmap(
        &self,
        sector: u64,
        count: u64,
        block_level_only: bool,
    ) -> impl Future<Output = Result<(), DiskError>> + Send {
        // vdisk's discard releases whole allocation units and zeroes the sectors around them,
        // which satisfies both a block-level-only request and one that needs the whole range to
        // read as `unmap_behavior` says, so the hint changes nothing here.
        let _ = block_level_only;
        self.run(move |image| image.write_zeroes_unmap(sector, count, true))
    }

    fn unmap_behavior(&self) -> UnmapBehavior {
        if self.image.discard_behavior().reads_zeros {
            UnmapBehavior::Zeroes
        } else {
            UnmapBehavior::Unspecified
        }
    }

    fn optimal_unmap_sectors(&self) -> u32 {
        let sectors = self.image.discard_behavior().granularity / u64::from(self.image.sector_size());
        u32::try_from(sectors).unwrap_or(u32::MAX).max(1)
    }
}

/// Bytes of `len` derived from `seed`, never all zero.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i as u64 * 31 + seed * 7) % 251) as u8 + 1).collect()
}

/// Split `data` into a scatter-gather list whose pieces do not follow sector boundaries.
fn scatter(data: &[u8]) -> Vec<Vec<u8>> {
    let (a, rest) = data.split_at(100.min(data.len()));
    let (b, c) = rest.split_at(rest.len() / 2 + 7);
    vec![a.to_vec(), b.to_vec(), c.to_vec()]
}

/// A short name for a device's id.
fn hex_id(id: Option<[u8; 16]>) -> String {
    id.map_or_else(|| "none".into(), |id| id.iter().map(|b| format!("{b:02x}")).collect())
}

/// What a device emulator would report about `disk`.
fn describe(disk: &impl DiskIo) -> String {
    format!(
        "{}: {} sectors of {} bytes (physical {}), id {}, read-only {}, FUA respected {}, unmap {:?} in {} sectors",
        disk.disk_type(),
        disk.sector_count(),
        disk.sector_size(),
        disk.physical_sector_size(),
        hex_id(disk.disk_id()),
        disk.is_read_only(),
        disk.is_fua_respected(),
        disk.unmap_behavior(),
        disk.optimal_unmap_sectors(),
    )
}

/// Read the first (up to) 8 MiB of an existing image with 64 KiB requests in flight together.
fn read_existing(path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let options = OpenOptions::new().resolver(Arc::new(FsResolver::new(FsPolicy::SameDirectory)));
    let disk = VdiskIo::new(vdisk::open(path, &options)?, Arc::new(exec::ThreadPool::new(4)));
    println!("{}", describe(&disk));
    let per = (64 * 1024 / disk.sector_size()) as u64;
    let total = disk.sector_count().min((8 << 20) / u64::from(disk.sector_size()));
    let reads = (0..total.div_ceil(per)).map(|i| {
        let sector = i * per;
        let len = per.min(total - sector) as usize * disk.sector_size() as usize;
        disk.read_vectored(sector, vec![vec![0u8; len]])
    });
    let mut nonzero = 0usize;
    for result in exec::block_on(exec::join_all(reads)) {
        let bufs = result?;
        nonzero += bufs.iter().flatten().filter(|&&b| b != 0).count();
    }
    println!(
        "read {total} sectors in {} concurrent requests: {nonzero} non-zero bytes",
        total.div_ceil(per)
    );
    Ok(())
}

/// Create a VHDX in a temporary directory and exercise every call of the adapter.
fn demo() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("demo.vhdx");
    let mut create = CreateOptions::new(vdisk::Format::Vhdx, 16 << 20);
    create.options = Options::parse("block_size=1M")?;
    vdisk::create(&path, &create)?;
    let disk = VdiskIo::new(
        vdisk::open(&path, &OpenOptions::new().writable(true))?,
        Arc::new(exec::ThreadPool::new(4)),
    );
    println!("{}", describe(&disk));

    // Sixteen 8 KiB writes in flight at once, every fourth with FUA.
    let writes = (0..16u64).map(|i| disk.write_vectored(i * 2048 + 5, scatter(&pattern(i, 8192)), i % 4 == 0));
    for result in exec::block_on(exec::join_all(writes)) {
        result?;
    }
    let reads = (0..16u64).map(|i| disk.read_vectored(i * 2048 + 5, scatter(&vec![0u8; 8192])));
    for (i, result) in exec::block_on(exec::join_all(reads)).into_iter().enumerate() {
        assert_eq!(result?.concat(), pattern(i as u64, 8192), "request {i}");
    }
    println!("16 concurrent scattered writes (4 with FUA) read back through 16 concurrent reads");

    exec::block_on(disk.unmap(2048, 4096, false))?;
    let back = exec::block_on(disk.read_vectored(2048 + 5, vec![vec![0u8; 8192]]))?;
    assert!(back[0].iter().all(|&b| b == 0));
    println!("unmapped sectors 2048..6144: they read as zeros");

    match exec::block_on(disk.read_vectored(u64::MAX, vec![vec![0u8; 512]])) {
        Err(DiskError::IllegalBlock) => println!("a read at sector 2^64-1 fails with an illegal block"),
        other => return Err(format!("expected an illegal block, got {other:?}").into()),
    }
    exec::block_on(disk.sync_cache())?;
    println!("flushed");
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    match std::env::args_os().nth(1) {
        Some(path) => read_existing(Path::new(&path)),
        None => demo(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdisk::{Format, Locking};

    const SIZE: u64 = 16 << 20;

    /// Open writable, or read-only beside the writer the test keeps open (sharing, as
    /// `qemu-img -U` does: a second open in one process is locked out like another process).
    fn open(path: &Path, writable: bool) -> Image {
        let locking = if writable { Locking::Auto } else { Locking::ForceShare };
        vdisk::open(path, &OpenOptions::new().writable(writable).locking(locking)).unwrap()
    }

    /// Concurrent scattered writes and reads, FUA, unmap and range errors on one format.
    fn exercise(format: Format, options: &str, unit_sectors: u32) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("async.{format}"));
        let mut create = CreateOptions::new(format, SIZE);
        create.options = Options::parse(options).unwrap();
        vdisk::create(&path, &create).unwrap();
        let pool = Arc::new(exec::ThreadPool::new(4));
        let disk = VdiskIo::new(open(&path, true), pool);
        assert_eq!(disk.sector_count(), SIZE / 512);
        assert!(disk.is_fua_respected());
        assert!(disk.disk_id().is_some(), "{format}: a stable id for the guest");
        assert_eq!(disk.unmap_behavior(), UnmapBehavior::Zeroes);
        assert_eq!(disk.optimal_unmap_sectors(), unit_sectors, "{format}");

        // 48 requests in flight: writes to disjoint ranges (neighbours share allocation units,
        // some writes cross from one unit into the next), and at the same time reads of ranges
        // that nobody writes, which read as zeros.
        let len = 12 * 1024;
        let at = |i: u64| i * 1000 + 3;
        let mut expected = vec![0u8; SIZE as usize];
        let data: Vec<Vec<u8>> = (0..32).map(|i| pattern(i, len)).collect();
        for (i, d) in data.iter().enumerate() {
            let start = at(i as u64) as usize * 512;
            expected[start..start + len].copy_from_slice(d);
        }
        let requests = (0..48u64).map(|i| {
            let (disk, data) = (&disk, &data);
            async move {
                if i < 32 {
                    let fua = i % 5 == 0;
                    disk.write_vectored(at(i), scatter(&data[i as usize]), fua)
                        .await
                        .map(|()| None)
                } else {
                    let untouched = (i - 32) * 1000 + 500;
                    disk.read_vectored(untouched, vec![vec![0xee; 4096]])
                        .await
                        .map(|b| Some(b.concat()))
                }
            }
        });
        for (i, r) in exec::block_on(exec::join_all(requests)).into_iter().enumerate() {
            match r.unwrap() {
                None => assert!(i < 32),
                Some(read) => assert!(read.iter().all(|&b| b == 0), "{format}: request {i}"),
            }
        }

        // Read everything back with as many concurrent reads, with differently split buffers.
        let reads = (0..32u64).map(|i| disk.read_vectored(at(i), vec![vec![0u8; 511], vec![0u8; len - 511]]));
        for (i, r) in exec::block_on(exec::join_all(reads)).into_iter().enumerate() {
            let start = at(i as u64) as usize * 512;
            assert!(
                r.unwrap().concat() == expected[start..start + len],
                "{format}: request {i}"
            );
        }

        // FUA: a second handle opened now (the first has not been flushed) sees the write.
        let fua = pattern(99, 4096);
        exec::block_on(disk.write_vectored(20_500, vec![fua.clone()], true)).unwrap();
        expected[20_500 * 512..20_500 * 512 + 4096].copy_from_slice(&fua);
        let other = open(&path, false);
        let mut seen = vec![0u8; 4096];
        other.read(20_500, &mut seen).unwrap();
        assert!(seen == fua, "{format}: a FUA write is durable when it completes");
        drop(other);

        // Unmap a range that covers a whole allocation unit of written data and parts of its
        // neighbours, and a few sectors inside one unit with the block-level hint: all of it
        // reads as zeros.
        let ranges = [
            (at(5) - 20, 2 * u64::from(unit_sectors) + 40, false),
            (at(12) + 1, 7, true),
        ];
        for (lba, count, block_level_only) in ranges {
            exec::block_on(disk.unmap(lba, count, block_level_only)).unwrap();
        }
        for (lba, count, _) in ranges {
            let start = lba as usize * 512;
            expected[start..start + count as usize * 512].fill(0);
            let back = exec::block_on(disk.read_vectored(lba, vec![vec![0xffu8; count as usize * 512]])).unwrap();
            assert!(back[0].iter().all(|&b| b == 0), "{format}: unmapped sectors read zeros");
        }

        // Out of range, at the end and at the largest sector number: an illegal block.
        for sector in [SIZE / 512, SIZE / 512 - 1, u64::MAX] {
            let r = exec::block_on(disk.read_vectored(sector, vec![vec![0u8; 1024]]));
            assert!(
                matches!(r, Err(DiskError::IllegalBlock)),
                "{format}: read at {sector}: {r:?}"
            );
            let w = exec::block_on(disk.write_vectored(sector, vec![vec![1u8; 1024]], false));
            assert!(
                matches!(w, Err(DiskError::IllegalBlock)),
                "{format}: write at {sector}: {w:?}"
            );
            let u = exec::block_on(disk.unmap(sector, 2, false));
            assert!(
                matches!(u, Err(DiskError::IllegalBlock)),
                "{format}: unmap at {sector}: {u:?}"
            );
        }
        // A buffer that is not whole sectors is invalid input.
        let r = exec::block_on(disk.read_vectored(0, vec![vec![0u8; 100]]));
        assert!(matches!(r, Err(DiskError::InvalidInput(_))), "{format}: {r:?}");

        exec::block_on(disk.sync_cache()).unwrap();
        drop(disk);
        let image = open(&path, false);
        let mut all = vec![0u8; SIZE as usize];
        image.read(0, &mut all).unwrap();
        assert!(all == expected, "{format}: the image after reopening");

        // A read-only disk refuses writes as a write-protected device.
        let ro = VdiskIo::new(image, Arc::new(exec::ThreadPool::new(1)));
        assert!(ro.is_read_only());
        let w = exec::block_on(ro.write_vectored(0, vec![vec![1u8; 512]], false));
        assert!(matches!(w, Err(DiskError::ReadOnly)), "{format}: {w:?}");
    }

    #[test]
    fn vhdx_through_the_async_adapter() {
        exercise(Format::Vhdx, "block_size=1M", 2048);
    }

    #[test]
    fn vmdk_through_the_async_adapter() {
        exercise(Format::Vmdk, "subformat=monolithicSparse", 128);
    }

    #[test]
    fn executor_runs_jobs_concurrently_and_propagates_panics() {
        let pool = exec::ThreadPool::new(4);
        // Four jobs that each wait for all four to have started: they only finish if they run
        // at the same time.
        let barrier = Arc::new(std::sync::Barrier::new(4));
        let tasks = (0..4).map(|i| {
            let barrier = Arc::clone(&barrier);
            pool.spawn(move || {
                barrier.wait();
                i * 10
            })
        });
        assert_eq!(exec::block_on(exec::join_all(tasks)), [0, 10, 20, 30]);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            exec::block_on(pool.spawn(|| -> u32 { panic!("job failed") }))
        }));
        assert!(panicked.is_err());
        // The worker survived the panic.
        assert_eq!(exec::block_on(pool.spawn(|| 7)), 7);
    }

    #[test]
    fn main_demo_runs() {
        demo().unwrap();
    }
}
