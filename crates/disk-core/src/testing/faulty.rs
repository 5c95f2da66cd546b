//! [`FaultyStorage`]: a [`Storage`] wrapper that fails chosen operations with an I/O error.

use crate::storage::Storage;
use crate::sync::lock;
use std::fmt;
use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Which operations of a [`FaultyStorage`] fail: each field is the 0-based index of the call of
/// that kind that fails (`Some(2)`: the third read fails), counted since the plan was armed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultPlan {
    /// Index of the `read_at` call that fails.
    pub read: Option<u64>,
    /// Index of the write that fails. `write_at` and `punch_hole` count as writes.
    pub write: Option<u64>,
    /// Index of the `flush` call that fails.
    pub flush: Option<u64>,
    /// Index of the `set_len` call that fails.
    pub set_len: Option<u64>,
    /// When set, every call of a kind from its chosen index on fails (a device that died);
    /// otherwise only that one call fails (a transient error).
    pub sticky: bool,
}

impl FaultPlan {
    /// A plan that fails nothing.
    pub fn none() -> Self {
        Self::default()
    }

    /// Fail the read with 0-based index `n`.
    pub fn read(mut self, n: u64) -> Self {
        self.read = Some(n);
        self
    }

    /// Fail the write (`write_at` or `punch_hole`) with 0-based index `n`.
    pub fn write(mut self, n: u64) -> Self {
        self.write = Some(n);
        self
    }

    /// Fail the flush with 0-based index `n`.
    pub fn flush(mut self, n: u64) -> Self {
        self.flush = Some(n);
        self
    }

    /// Fail the `set_len` with 0-based index `n`.
    pub fn set_len(mut self, n: u64) -> Self {
        self.set_len = Some(n);
        self
    }

    /// Keep failing from the chosen index on instead of failing once.
    pub fn sticky(mut self, sticky: bool) -> Self {
        self.sticky = sticky;
        self
    }
}

/// How many operations of each kind a [`FaultyStorage`] has seen (failed ones included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpCounts {
    /// `read_at` calls.
    pub reads: u64,
    /// Bytes asked for by `read_at` calls.
    pub bytes_read: u64,
    /// `write_at` and `punch_hole` calls.
    pub writes: u64,
    /// `flush` calls.
    pub flushes: u64,
    /// `set_len` calls.
    pub set_lens: u64,
    /// Calls that were failed on purpose.
    pub injected: u64,
}

/// Wraps a [`Storage`], counts its operations and fails the ones a [`FaultPlan`] names with an
/// [`io::ErrorKind::Other`] error whose message starts with `injected fault`.
///
/// ```
/// use disk_core::testing::{FaultPlan, FaultyStorage};
/// use disk_core::{MemStorage, Storage};
///
/// let s = FaultyStorage::new(MemStorage::new()).with_plan(FaultPlan::none().write(1));
/// s.write_at(b"a", 0).unwrap();
/// assert!(s.write_at(b"b", 1).is_err());
/// s.write_at(b"c", 2).unwrap();
/// assert_eq!(s.counts().writes, 3);
/// ```
pub struct FaultyStorage<S: Storage> {
    inner: S,
    plan: Mutex<FaultPlan>,
    reads: AtomicU64,
    bytes_read: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
    set_lens: AtomicU64,
    injected: AtomicU64,
}

impl<S: Storage> fmt::Debug for FaultyStorage<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyStorage")
            .field("inner", &self.inner)
            .field("plan", &self.plan())
            .field("counts", &self.counts())
            .finish()
    }
}

impl<S: Storage> FaultyStorage<S> {
    /// Wrap `inner` with a plan that fails nothing (operations are still counted).
    pub fn new(inner: S) -> Self {
        FaultyStorage {
            inner,
            plan: Mutex::new(FaultPlan::none()),
            reads: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            set_lens: AtomicU64::new(0),
            injected: AtomicU64::new(0),
        }
    }

    /// Builder form of [`FaultyStorage::arm`].
    pub fn with_plan(self, plan: FaultPlan) -> Self {
        self.arm(plan);
        self
    }

    /// Fail the read with 0-based index `n` (builder).
    pub fn fail_read(self, n: u64) -> Self {
        let plan = self.plan().read(n);
        self.with_plan(plan)
    }

    /// Fail the write with 0-based index `n` (builder).
    pub fn fail_write(self, n: u64) -> Self {
        let plan = self.plan().write(n);
        self.with_plan(plan)
    }

    /// Fail the flush with 0-based index `n` (builder).
    pub fn fail_flush(self, n: u64) -> Self {
        let plan = self.plan().flush(n);
        self.with_plan(plan)
    }

    /// Fail the `set_len` with 0-based index `n` (builder).
    pub fn fail_set_len(self, n: u64) -> Self {
        let plan = self.plan().set_len(n);
        self.with_plan(plan)
    }

    /// Keep failing from the chosen indices on (builder).
    pub fn sticky(self) -> Self {
        let plan = self.plan().sticky(true);
        self.with_plan(plan)
    }

    /// Install `plan` and restart all counts from zero, so the plan's indices count from now.
    pub fn arm(&self, plan: FaultPlan) {
        *lock(&self.plan) = plan;
        for c in [&self.reads, &self.writes, &self.flushes, &self.set_lens, &self.injected] {
            c.store(0, Ordering::SeqCst);
        }
    }

    /// The plan in force.
    pub fn plan(&self) -> FaultPlan {
        *lock(&self.plan)
    }

    /// Operations seen since the plan was armed.
    pub fn counts(&self) -> OpCounts {
        OpCounts {
            reads: self.reads.load(Ordering::SeqCst),
            bytes_read: self.bytes_read.load(Ordering::SeqCst),
            writes: self.writes.load(Ordering::SeqCst),
            flushes: self.flushes.load(Ordering::SeqCst),
            set_lens: self.set_lens.load(Ordering::SeqCst),
            injected: self.injected.load(Ordering::SeqCst),
        }
    }

    /// The wrapped storage.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Unwrap.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Count one call of a kind and decide whether it fails.
    fn check(&self, counter: &AtomicU64, chosen: impl Fn(&FaultPlan) -> Option<u64>, what: &str) -> io::Result<()> {
        let index = counter.fetch_add(1, Ordering::SeqCst);
        let plan = self.plan();
        let fails = match chosen(&plan) {
            Some(n) if plan.sticky => index >= n,
            Some(n) => index == n,
            None => false,
        };
        if fails {
            self.injected.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::other(format!("injected fault: {what} #{index}")));
        }
        Ok(())
    }
}

impl<S: Storage> Storage for FaultyStorage<S> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check(&self.reads, |p| p.read, "read")?;
        self.bytes_read.fetch_add(buf.len() as u64, Ordering::SeqCst);
        self.inner.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check(&self.writes, |p| p.write, "write")?;
        self.inner.write_at(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.check(&self.flushes, |p| p.flush, "flush")?;
        self.inner.flush()
    }

    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check(&self.set_lens, |p| p.set_len, "set_len")?;
        self.inner.set_len(len)
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check(&self.writes, |p| p.write, "write (punch_hole)")?;
        self.inner.punch_hole(offset, len)
    }

    fn allocation(&self, offset: u64, len: u64) -> io::Result<(bool, u64)> {
        self.inner.allocation(offset, len)
    }

    fn lock(&self, request: crate::lock::LockRequest) -> crate::Result<()> {
        self.inner.lock(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    #[test]
    fn fails_the_chosen_call_once_or_sticky() {
        let s = FaultyStorage::new(MemStorage::new())
            .fail_read(1)
            .fail_flush(0)
            .fail_set_len(0);
        s.write_at(&[1; 8], 0).unwrap();
        let mut b = [0u8; 4];
        s.read_at(&mut b, 0).unwrap();
        assert!(
            s.read_at(&mut b, 0)
                .unwrap_err()
                .to_string()
                .starts_with("injected fault")
        );
        s.read_at(&mut b, 0).unwrap();
        assert!(s.flush().is_err());
        s.flush().unwrap();
        assert!(s.set_len(100).is_err());
        assert_eq!(s.len().unwrap(), 8, "a failed set_len does nothing");
        assert_eq!(
            s.counts(),
            OpCounts {
                reads: 3,
                bytes_read: 8,
                writes: 1,
                flushes: 2,
                set_lens: 1,
                injected: 3
            }
        );

        let s = FaultyStorage::new(MemStorage::new()).fail_write(1).sticky();
        s.write_at(&[1], 0).unwrap();
        assert!(s.write_at(&[2], 1).is_err());
        assert!(s.punch_hole(0, 1).is_err());
        assert!(s.write_at(&[3], 2).is_err());
        assert_eq!(s.inner().to_vec(), vec![1]);
        s.arm(FaultPlan::none());
        s.write_at(&[3], 2).unwrap();
        assert_eq!(s.counts().writes, 1);
    }
}
