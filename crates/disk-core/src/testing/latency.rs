//! [`LatencyStorage`]: a [`Storage`] wrapper that makes every I/O wait, like a slow device.

use crate::storage::Storage;
use std::io;
use std::time::Duration;

/// Wraps a [`Storage`] and sleeps a fixed time before every call that moves data or changes the
/// storage, so that engines can be measured (and raced) as if on a device with that latency while
/// the bytes stay in memory.
///
/// `read_at`, `write_at`, `flush`, `set_len`, `punch_hole` and `reads_as_zeros` (once per call)
/// wait; the queries `len`, `is_empty` and `allocation` do not. Every call is forwarded to the
/// inner storage's own implementation, so its efficient provided methods stay in use. The sleeps
/// hold no lock: calls from different threads wait concurrently, as on a device with a queue.
///
/// ```
/// use disk_core::testing::LatencyStorage;
/// use disk_core::{MemStorage, Storage};
/// use std::time::{Duration, Instant};
///
/// let s = LatencyStorage::new(MemStorage::new(), Duration::from_millis(2));
/// let start = Instant::now();
/// s.write_at(b"slow", 0)?;
/// assert!(start.elapsed() >= Duration::from_millis(2));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct LatencyStorage<S: Storage> {
    inner: S,
    latency: Duration,
}

impl<S: Storage> LatencyStorage<S> {
    /// Wrap `inner`, waiting `latency` before each I/O.
    pub fn new(inner: S, latency: Duration) -> Self {
        LatencyStorage { inner, latency }
    }

    /// The time each I/O waits.
    pub fn latency(&self) -> Duration {
        self.latency
    }

    /// The wrapped storage.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Unwrap.
    pub fn into_inner(self) -> S {
        self.inner
    }

    fn wait(&self) {
        if !self.latency.is_zero() {
            std::thread::sleep(self.latency);
        }
    }
}

impl<S: Storage> Storage for LatencyStorage<S> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.wait();
        self.inner.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.wait();
        self.inner.write_at(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.wait();
        self.inner.flush()
    }

    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn is_empty(&self) -> io::Result<bool> {
        self.inner.is_empty()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.wait();
        self.inner.set_len(len)
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.wait();
        self.inner.punch_hole(offset, len)
    }

    fn reads_as_zeros(&self, offset: u64, len: u64) -> io::Result<bool> {
        self.wait();
        self.inner.reads_as_zeros(offset, len)
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
    use std::time::Instant;

    /// Run `f` and return how long it took.
    fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
        let start = Instant::now();
        let v = f();
        (v, start.elapsed())
    }

    #[test]
    fn forwards_data_and_waits() {
        let latency = Duration::from_millis(5);
        let s = LatencyStorage::new(MemStorage::new(), latency);
        assert_eq!(s.latency(), latency);

        let (r, t) = timed(|| s.write_at(b"hello", 70_000));
        r.unwrap();
        assert!(t >= latency, "write_at took {t:?}");

        let (len, t) = timed(|| s.len());
        assert_eq!(len.unwrap(), 70_005);
        assert!(t < latency, "len does not wait (took {t:?})");
        assert!(!s.is_empty().unwrap());
        assert_eq!(s.inner().len().unwrap(), 70_005);

        let mut buf = [0u8; 7];
        let (r, t) = timed(|| s.read_at(&mut buf, 69_998));
        r.unwrap();
        assert!(t >= latency, "read_at took {t:?}");
        assert_eq!(&buf, b"\0\0hello");
        assert_eq!(
            s.read_at(&mut buf, 70_000).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof,
            "errors are forwarded"
        );

        let (r, t) = timed(|| s.flush());
        r.unwrap();
        assert!(t >= latency, "flush took {t:?}");

        let (r, t) = timed(|| s.punch_hole(70_001, 2));
        r.unwrap();
        assert!(t >= latency, "punch_hole took {t:?}");
        let mut five = [0u8; 5];
        s.read_at(&mut five, 70_000).unwrap();
        assert_eq!(&five, b"h\0\0lo");

        let (r, t) = timed(|| s.reads_as_zeros(70_001, 2));
        assert!(r.unwrap());
        assert!(t >= latency, "reads_as_zeros took {t:?}");
        assert!(!s.reads_as_zeros(70_000, 5).unwrap());
        assert_eq!(s.allocation(0, 1000).unwrap(), s.inner().allocation(0, 1000).unwrap());

        let (r, t) = timed(|| s.set_len(70_002));
        r.unwrap();
        assert!(t >= latency, "set_len took {t:?}");
        assert_eq!(s.into_inner().to_vec().len(), 70_002);
    }

    #[test]
    fn zero_latency_only_forwards() {
        let s = LatencyStorage::new(MemStorage::new(), Duration::ZERO);
        s.write_at(&[1, 2, 3], 1).unwrap();
        assert_eq!(s.inner().to_vec(), vec![0, 1, 2, 3]);
    }
}
