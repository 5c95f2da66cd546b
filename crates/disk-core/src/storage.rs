//! The bytes an image lives in: positional I/O on `&self`, never a shared seek cursor.
//!
//! [`Storage`] is implemented for host files ([`FileStorage`]) and for a sparse in-memory store
//! ([`MemStorage`]) used by tests, fuzzers and benchmarks. Because every call names its offset,
//! any number of threads may read through one `Storage` at once.

use crate::lock::{LockRequest, lock_file};
use crate::sync::{lock, read_lock, write_lock};
use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

/// Positional byte I/O on the file (or memory) that holds an image.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Fill `buf` from `offset`. Reading past the end is an error of kind
    /// [`io::ErrorKind::UnexpectedEof`]: callers bound their reads by [`Storage::len`].
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Write all of `buf` at `offset`, extending the storage if needed.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;

    /// Make every completed write durable.
    fn flush(&self) -> io::Result<()>;

    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;

    /// Whether the storage holds no bytes.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Truncate or extend (with zeros) to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// Allocate host space for `len` bytes at `offset` without changing what they read,
    /// extending the length when the range reaches past it (`preallocation=falloc`). The
    /// default only extends the length.
    fn reserve(&self, offset: u64, len: u64) -> io::Result<()> {
        let end = offset
            .checked_add(len)
            .ok_or_else(|| io::Error::other("range past 2^64"))?;
        if end > self.len()? {
            self.set_len(end)?;
        }
        Ok(())
    }

    /// Make `len` bytes at `offset` read as zeros, releasing the space where the host can.
    /// Must not change the length. The default writes zeros.
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let end = offset
            .checked_add(len)
            .ok_or_else(|| io::Error::other("hole past 2^64"))?;
        let zeros = vec![0u8; ZERO_CHUNK.min(usize::try_from(len).unwrap_or(ZERO_CHUNK))];
        let mut pos = offset;
        while pos < end {
            let n = zeros.len().min(usize::try_from(end - pos).unwrap_or(usize::MAX));
            self.write_at(&zeros[..n], pos)?;
            pos += n as u64;
        }
        Ok(())
    }

    /// Whether all `len` bytes from `offset` read as zeros. Holes ([`Storage::allocation`]) are
    /// skipped without reading; data is read in chunks of at most 1 MiB.
    fn reads_as_zeros(&self, offset: u64, len: u64) -> io::Result<bool> {
        let end = offset
            .checked_add(len)
            .ok_or_else(|| io::Error::other("range past 2^64"))?;
        let mut buf = Vec::new();
        let mut pos = offset;
        while pos < end {
            let (data, n) = self.allocation(pos, end - pos)?;
            let n = n.clamp(1, end - pos);
            if !data {
                pos += n;
                continue;
            }
            let step = n.min(ZERO_CHUNK as u64);
            buf.resize(step as usize, 0);
            self.read_at(&mut buf, pos)?;
            if buf.iter().any(|&b| b != 0) {
                return Ok(false);
            }
            pos += step;
        }
        Ok(true)
    }

    /// Whether the bytes from `offset` are data (`true`) or a hole that reads as zeros (`false`),
    /// and for how many bytes (at least 1, at most `len`) that stays so. The default says "data".
    fn allocation(&self, offset: u64, len: u64) -> io::Result<(bool, u64)> {
        let _ = offset;
        Ok((true, len))
    }

    /// Take QEMU-compatible locks on the file for as long as this storage stays open, failing
    /// with [`crate::ErrorKind::Locked`] if another open of the file forbids them (see
    /// [`crate::lock`]). The default takes none: storage no other process can see (memory)
    /// needs none.
    fn lock(&self, request: LockRequest) -> crate::Result<()> {
        let _ = request;
        Ok(())
    }
}

const ZERO_CHUNK: usize = 1 << 20;

/// A host file, accessed with `pread`/`pwrite`.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
    path: PathBuf,
    durable: bool,
    /// The last data extent `SEEK_DATA`/`SEEK_HOLE` found (`start..end`), as QEMU's block
    /// status cache keeps it: on file systems without extent trees (tmpfs) `SEEK_HOLE` walks to
    /// the next hole, so asking again for every piece of a large data region is quadratic.
    /// Writes only turn holes into data, so only `punch_hole` and `set_len` forget it.
    data_extent: std::sync::Mutex<Option<(u64, u64)>>,
}

impl FileStorage {
    /// Open an existing file, read-only or read-write. Only regular files and block devices are
    /// images: a FIFO, socket or character device is refused (`InvalidInput`), and opening one
    /// never blocks.
    pub fn open(path: impl AsRef<Path>, writable: bool) -> io::Result<Self> {
        let path = path.as_ref();
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(writable);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32);
        }
        let file = options.open(path)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileTypeExt;
            let kind = file.metadata()?.file_type();
            if kind.is_fifo() || kind.is_socket() || kind.is_char_device() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not a regular file or block device",
                ));
            }
            let flags = rustix::fs::fcntl_getfl(&file)?;
            rustix::fs::fcntl_setfl(&file, flags - rustix::fs::OFlags::NONBLOCK)?;
        }
        Self::from_file(file, path)
    }

    /// Create a new file (failing if it exists unless `overwrite`), opened read-write.
    pub fn create(path: impl AsRef<Path>, overwrite: bool) -> io::Result<Self> {
        let path = path.as_ref();
        let mut opts = std::fs::OpenOptions::new();
        opts.read(true).write(true);
        if overwrite {
            opts.create(true).truncate(true);
        } else {
            opts.create_new(true);
        }
        Self::from_file(opts.open(path)?, path)
    }

    /// Wrap an already open file; `path` is kept for messages. Directories are refused.
    pub fn from_file(file: File, path: impl AsRef<Path>) -> io::Result<Self> {
        let meta = file.metadata()?;
        if meta.is_dir() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "is a directory"));
        }
        Ok(FileStorage {
            file,
            path: path.as_ref().to_path_buf(),
            durable: true,
            data_extent: std::sync::Mutex::new(None),
        })
    }

    /// Make [`Storage::flush`] a no-op: writes reach the host's page cache and the host writes
    /// them back in its own time (QEMU's `cache=unsafe`). For output that is worthless after a
    /// host crash anyway, such as a conversion in progress; never for an image a guest uses.
    pub fn without_sync(mut self) -> Self {
        self.durable = false;
        self
    }

    /// The path this storage was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Bytes the file occupies on the host (allocated blocks), as `du` counts them.
    pub fn allocated_bytes(&self) -> io::Result<u64> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            Ok(self.file.metadata()?.blocks() * 512)
        }
        #[cfg(not(unix))]
        {
            self.len()
        }
    }
}

impl Storage for FileStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        #[cfg(unix)]
        {
            std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, offset)
        }
        #[cfg(windows)]
        {
            let mut done = 0;
            while done < buf.len() {
                let n = std::os::windows::fs::FileExt::seek_read(&self.file, &mut buf[done..], offset + done as u64)?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                done += n;
            }
            Ok(())
        }
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        #[cfg(unix)]
        {
            std::os::unix::fs::FileExt::write_all_at(&self.file, buf, offset)
        }
        #[cfg(windows)]
        {
            let mut done = 0;
            while done < buf.len() {
                done += std::os::windows::fs::FileExt::seek_write(&self.file, &buf[done..], offset + done as u64)?;
            }
            Ok(())
        }
    }

    fn flush(&self) -> io::Result<()> {
        if self.durable { self.file.sync_data() } else { Ok(()) }
    }

    fn len(&self) -> io::Result<u64> {
        let meta = self.file.metadata()?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_block_device() {
                // A block device's metadata says 0 bytes; its end is its size. Moving the shared
                // file offset is harmless: all I/O here is positional.
                use std::io::Seek;
                return (&self.file).seek(io::SeekFrom::End(0));
            }
        }
        Ok(meta.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        *lock(&self.data_extent) = None;
        self.file.set_len(len)
    }

    #[cfg(target_os = "linux")]
    fn reserve(&self, offset: u64, len: u64) -> io::Result<()> {
        use rustix::fs::{FallocateFlags, fallocate};
        *lock(&self.data_extent) = None;
        fallocate(&self.file, FallocateFlags::empty(), offset, len).map_err(io::Error::from)
    }

    #[cfg(target_os = "linux")]
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        use rustix::fs::{FallocateFlags, fallocate};
        *lock(&self.data_extent) = None;
        match fallocate(
            &self.file,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            offset,
            len,
        ) {
            Ok(()) => Ok(()),
            // Filesystems without hole punching: fall back to writing zeros.
            Err(rustix::io::Errno::OPNOTSUPP) | Err(rustix::io::Errno::NOSYS) => {
                let zeros = vec![0u8; ZERO_CHUNK];
                let mut pos = offset;
                let end = offset.saturating_add(len);
                while pos < end {
                    let n = usize::try_from(end - pos).unwrap_or(ZERO_CHUNK).min(ZERO_CHUNK);
                    self.write_at(&zeros[..n], pos)?;
                    pos += n as u64;
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    #[cfg(target_os = "linux")]
    fn allocation(&self, offset: u64, len: u64) -> io::Result<(bool, u64)> {
        use rustix::fs::{SeekFrom, seek};
        if len == 0 {
            return Ok((true, 0));
        }
        let end = offset.saturating_add(len);
        if let Some((start, stop)) = *lock(&self.data_extent)
            && (start..stop).contains(&offset)
        {
            return Ok((true, stop.min(end) - offset));
        }
        // SEEK_DATA/SEEK_HOLE; ENXIO means "no data after offset" (offset at or past EOF too).
        let data = match seek(&self.file, SeekFrom::Data(offset)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => return Ok((false, len)),
            Err(_) => return Ok((true, len)),
        };
        if data > offset {
            return Ok((false, data.min(end) - offset));
        }
        let hole = match seek(&self.file, SeekFrom::Hole(offset)) {
            Ok(h) => h,
            Err(_) => end,
        };
        if hole > offset {
            *lock(&self.data_extent) = Some((offset, hole));
        }
        Ok((true, hole.clamp(offset + 1, end) - offset))
    }

    fn lock(&self, request: LockRequest) -> crate::Result<()> {
        lock_file(&self.file, &self.path, request)
    }
}

/// Size of the pieces a [`MemStorage`] allocates.
const MEM_CHUNK: usize = 64 * 1024;

/// A sparse in-memory store: unwritten ranges cost nothing and read as zeros.
///
/// Used by tests, fuzzers and benchmarks. An optional byte limit makes writes beyond it fail, so a
/// hostile image driven through a fuzzer cannot exhaust memory.
#[derive(Default)]
pub struct MemStorage {
    inner: RwLock<MemInner>,
    limit: Option<u64>,
}

#[derive(Default, Clone)]
struct MemInner {
    len: u64,
    chunks: HashMap<u64, Box<[u8]>>,
}

impl fmt::Debug for MemStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = read_lock(&self.inner);
        f.debug_struct("MemStorage")
            .field("len", &inner.len)
            .field("chunks", &inner.chunks.len())
            .finish()
    }
}

impl MemStorage {
    /// An empty store without a size limit.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store whose length may not exceed `limit` bytes.
    pub fn with_limit(limit: u64) -> Self {
        MemStorage {
            limit: Some(limit),
            ..Self::default()
        }
    }

    /// A store holding a copy of `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let s = Self::new();
        s.write_at(bytes, 0).expect("in-memory write without limit cannot fail");
        s
    }

    /// All bytes, as a vector (for tests).
    pub fn to_vec(&self) -> Vec<u8> {
        let len = usize::try_from(self.inner().len).expect("in-memory image fits in memory");
        let mut v = vec![0u8; len];
        self.read_at(&mut v, 0).expect("in-bounds read");
        v
    }

    /// An independent copy of the current contents.
    pub fn snapshot(&self) -> MemStorage {
        MemStorage {
            inner: RwLock::new(self.inner().clone()),
            limit: self.limit,
        }
    }

    fn inner(&self) -> std::sync::RwLockReadGuard<'_, MemInner> {
        read_lock(&self.inner)
    }

    fn inner_mut(&self) -> std::sync::RwLockWriteGuard<'_, MemInner> {
        write_lock(&self.inner)
    }

    fn check_limit(&self, end: u64) -> io::Result<()> {
        match self.limit {
            Some(limit) if end > limit => Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!("in-memory storage limit of {limit} bytes reached"),
            )),
            _ => Ok(()),
        }
    }
}

/// Split `[offset, offset+len)` into (chunk index, offset in chunk, position in buffer, length).
fn chunk_pieces(offset: u64, len: usize) -> impl Iterator<Item = (u64, usize, usize, usize)> {
    let mut done = 0usize;
    std::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let pos = offset + done as u64;
        let index = pos / MEM_CHUNK as u64;
        let within = (pos % MEM_CHUNK as u64) as usize;
        let n = (MEM_CHUNK - within).min(len - done);
        let piece = (index, within, done, n);
        done += n;
        Some(piece)
    })
}

impl Storage for MemStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let inner = self.inner();
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > inner.len) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past end of in-memory storage",
            ));
        }
        for (index, within, at, n) in chunk_pieces(offset, buf.len()) {
            match inner.chunks.get(&index) {
                Some(chunk) => buf[at..at + n].copy_from_slice(&chunk[within..within + n]),
                None => buf[at..at + n].fill(0),
            }
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "write past 2^64"))?;
        self.check_limit(end)?;
        let mut inner = self.inner_mut();
        for (index, within, at, n) in chunk_pieces(offset, buf.len()) {
            let data = &buf[at..at + n];
            match inner.chunks.get_mut(&index) {
                Some(chunk) => chunk[within..within + n].copy_from_slice(data),
                None if data.iter().all(|&b| b == 0) => {}
                None => {
                    let mut chunk = vec![0u8; MEM_CHUNK].into_boxed_slice();
                    chunk[within..within + n].copy_from_slice(data);
                    inner.chunks.insert(index, chunk);
                }
            }
        }
        inner.len = inner.len.max(end);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.inner().len)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check_limit(len)?;
        let mut inner = self.inner_mut();
        if len < inner.len {
            let first_dead = len.div_ceil(MEM_CHUNK as u64);
            inner.chunks.retain(|&index, _| index < first_dead);
            let within = (len % MEM_CHUNK as u64) as usize;
            if within != 0
                && let Some(chunk) = inner.chunks.get_mut(&(len / MEM_CHUNK as u64))
            {
                chunk[within..].fill(0);
            }
        }
        inner.len = len;
        Ok(())
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut inner = self.inner_mut();
        let end = offset.saturating_add(len).min(inner.len);
        let mut pos = offset;
        while pos < end {
            let index = pos / MEM_CHUNK as u64;
            let within = (pos % MEM_CHUNK as u64) as usize;
            let n = ((MEM_CHUNK - within) as u64).min(end - pos) as usize;
            if n == MEM_CHUNK {
                inner.chunks.remove(&index);
            } else if let Some(chunk) = inner.chunks.get_mut(&index) {
                chunk[within..within + n].fill(0);
            }
            pos += n as u64;
        }
        Ok(())
    }

    fn allocation(&self, offset: u64, len: u64) -> io::Result<(bool, u64)> {
        let inner = self.inner();
        let chunk = MEM_CHUNK as u64;
        let present = |pos: u64| inner.chunks.contains_key(&(pos / chunk));
        let first = present(offset);
        let end = offset.saturating_add(len);
        let mut pos = offset;
        while pos < end && present(pos) == first {
            pos = (pos / chunk + 1) * chunk;
        }
        Ok((first, pos.min(end) - offset).max((first, 1)))
    }
}

/// Forward every [`Storage`] call through a shared pointer.
impl<S: Storage + ?Sized> Storage for std::sync::Arc<S> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        (**self).write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        (**self).flush()
    }
    fn len(&self) -> io::Result<u64> {
        (**self).len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        (**self).set_len(len)
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        (**self).punch_hole(offset, len)
    }
    fn reserve(&self, offset: u64, len: u64) -> io::Result<()> {
        (**self).reserve(offset, len)
    }
    fn allocation(&self, offset: u64, len: u64) -> io::Result<(bool, u64)> {
        (**self).allocation(offset, len)
    }
    fn lock(&self, request: LockRequest) -> crate::Result<()> {
        (**self).lock(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(s: &dyn Storage) {
        assert_eq!(s.len().unwrap(), 0);
        s.write_at(b"hello", 70_000).unwrap();
        assert_eq!(s.len().unwrap(), 70_005);
        let mut buf = [1u8; 7];
        s.read_at(&mut buf, 69_998).unwrap();
        assert_eq!(&buf[2..7], b"hello");
        assert_eq!(&buf[..2], &[0, 0]);
        let err = s.read_at(&mut buf, 70_000).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        s.punch_hole(70_001, 2).unwrap();
        let mut five = [0u8; 5];
        s.read_at(&mut five, 70_000).unwrap();
        assert_eq!(&five, b"h\0\0lo");
        s.set_len(70_002).unwrap();
        s.set_len(80_000).unwrap();
        s.read_at(&mut five, 70_000).unwrap();
        assert_eq!(&five, b"h\0\0\0\0");
    }

    #[test]
    fn mem_storage_behaves_like_a_file() {
        exercise(&MemStorage::new());
    }

    #[test]
    fn file_storage_behaves_like_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStorage::create(dir.path().join("f"), false).unwrap();
        exercise(&s);
        assert!(FileStorage::create(dir.path().join("f"), false).is_err());
        assert!(FileStorage::open(dir.path(), false).is_err(), "directories are refused");
    }

    #[test]
    fn allocation_reports_holes() {
        let m = MemStorage::new();
        m.set_len(4 * MEM_CHUNK as u64).unwrap();
        m.write_at(&[1], 2 * MEM_CHUNK as u64 + 5).unwrap();
        assert_eq!(
            m.allocation(0, 4 * MEM_CHUNK as u64).unwrap(),
            (false, 2 * MEM_CHUNK as u64)
        );
        assert_eq!(
            m.allocation(2 * MEM_CHUNK as u64, 4 * MEM_CHUNK as u64).unwrap(),
            (true, MEM_CHUNK as u64)
        );

        let dir = tempfile::tempdir().unwrap();
        let f = FileStorage::create(dir.path().join("sparse"), false).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_at(&[1; 4096], 32 << 20).unwrap();
        let (data, n) = f.allocation(0, 64 << 20).unwrap();
        // Filesystems without SEEK_HOLE report everything as data; that is allowed.
        if !data {
            assert!(n > 0 && n <= 32 << 20);
            assert!(f.allocation(32 << 20, 4096).unwrap().0);
            // The data extent found is remembered (pieces of it answer without seeking) and
            // forgotten when a hole is punched into it.
            f.write_at(&[2; 1 << 20], 33 << 20).unwrap();
            let (data, n) = f.allocation(33 << 20, 1 << 20).unwrap();
            assert!(data && n == 1 << 20);
            assert_eq!(f.allocation((33 << 20) + 4096, 4096).unwrap(), (true, 4096));
            f.punch_hole((33 << 20) + 4096, 64 << 10).unwrap();
            let (data, n) = f.allocation((33 << 20) + 4096, 4096).unwrap();
            assert!(!data && n == 4096, "a punched hole is seen after the cached extent");
        }
    }

    #[cfg(target_os = "linux")]
    use crate::testing::LoopDevice;

    #[cfg(target_os = "linux")]
    #[test]
    fn block_device_length_is_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("backing");
        let f = FileStorage::create(&backing, false).unwrap();
        f.set_len(3 << 20).unwrap();
        f.write_at(b"end", (3 << 20) - 3).unwrap();
        f.flush().unwrap();
        let Some(dev) = LoopDevice::attach(&backing) else {
            return;
        };
        let s = FileStorage::open(dev.path(), false).unwrap();
        assert_eq!(s.len().unwrap(), 3 << 20, "a block device's length is its size, not 0");
        // The length query does not disturb positional reads.
        let mut end = [0u8; 3];
        s.read_at(&mut end, (3 << 20) - 3).unwrap();
        assert_eq!(&end, b"end");
        assert_eq!(s.len().unwrap(), 3 << 20);
    }

    #[test]
    fn mem_limit_is_enforced() {
        let m = MemStorage::with_limit(1000);
        assert!(m.write_at(&[1], 999).is_ok());
        assert_eq!(m.write_at(&[1], 1000).unwrap_err().kind(), io::ErrorKind::StorageFull);
        assert!(m.set_len(1 << 40).is_err());
    }
}
