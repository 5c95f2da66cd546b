//! Image locking that QEMU sees and that sees QEMU's locks.
//!
//! QEMU (`block/file-posix.c`) marks what each open of an image file does with advisory
//! byte-range locks on the file itself, taken as shared (read) locks on an open file
//! description (Linux OFD locks: they belong to the open file, not to the process, and go away
//! when it is closed):
//!
//! - byte [`PERM_BASE`] `+ n` locked: "I use permission n";
//! - byte [`SHARED_BASE`] `+ n` locked: "I do not let anyone else use permission n",
//!
//! where n is the bit number of a block permission ([`Perms`]). An open first locks its bytes,
//! then probes with an exclusive lock test that nobody else holds a byte that forbids it: the
//! "shared" byte of a permission it wants, or the "use" byte of a permission it does not share.
//! Two opens racing each other both see the other and both fail; neither writes.
//!
//! [`LockRequest`] holds the permission sets for each kind of open, as QEMU's block layer
//! computes them for the file under an image format (`bdrv_default_perms_for_storage` in
//! `block.c`); [`Locking`] is the caller's choice ([`crate::OpenOptions::locking`]).
//!
//! Locking needs Linux (OFD locks). Elsewhere [`lock_file`] does nothing, as QEMU's `locking=auto`
//! does without OFD locks.

use crate::error::{Error, Result};
use crate::storage::Storage;
use std::fs::File;
use std::path::Path;

/// The first "I use permission n" byte: QEMU's `RAW_LOCK_PERM_BASE` (libvirt uses byte 0).
pub const PERM_BASE: u64 = 100;
/// The first "I do not share permission n" byte: QEMU's `RAW_LOCK_SHARED_BASE`.
pub const SHARED_BASE: u64 = 200;

/// A set of QEMU block permissions (`BLK_PERM_*` in `include/block/block-common.h`). Bit n of
/// the set is permission n, the lock bytes of which are [`PERM_BASE`] `+ n` and [`SHARED_BASE`]
/// `+ n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Perms(u8);

impl Perms {
    /// No permission.
    pub const NONE: Perms = Perms(0);
    /// `BLK_PERM_CONSISTENT_READ`: reads see a complete, self-consistent disk.
    pub const CONSISTENT_READ: Perms = Perms(0x01);
    /// `BLK_PERM_WRITE`: change the visible contents.
    pub const WRITE: Perms = Perms(0x02);
    /// `BLK_PERM_WRITE_UNCHANGED`: write without changing the visible contents.
    pub const WRITE_UNCHANGED: Perms = Perms(0x04);
    /// `BLK_PERM_RESIZE`: change the size.
    pub const RESIZE: Perms = Perms(0x08);
    /// `BLK_PERM_ALL`: every permission.
    pub const ALL: Perms = Perms(0x0f);

    /// The permissions of both sets.
    pub const fn union(self, other: Perms) -> Perms {
        Perms(self.0 | other.0)
    }

    /// Whether every permission of `other` is in this set.
    pub const fn contains(self, other: Perms) -> bool {
        self.0 & other.0 == other.0
    }

    /// Every permission not in this set.
    pub const fn complement(self) -> Perms {
        Perms(Perms::ALL.0 & !self.0)
    }

    /// The bits of the set (bit n is permission n).
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Each permission of the set with its bit number, lowest first.
    pub fn each(self) -> impl Iterator<Item = (u64, Perms)> {
        (0..4u8)
            .map(|n| (u64::from(n), Perms(1 << n)))
            .filter(move |(_, p)| self.contains(*p))
    }

    /// The names QEMU gives the permissions of the set (`bdrv_perm_names`), comma-separated:
    /// `consistent read`, `write`, `write unchanged`, `resize`.
    pub fn names(self) -> String {
        let names: Vec<&str> = self
            .each()
            .map(|(n, _)| ["consistent read", "write", "write unchanged", "resize"][n as usize])
            .collect();
        names.join(", ")
    }
}

/// The permissions one open of a file takes (`perm`) and those it lets other opens take
/// (`shared`), as QEMU computes them for the file holding an image of a format (VHD, VHDX,
/// VMDK, also raw here: vdisk does not track its writers finely enough to share more).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LockRequest {
    /// What this open does with the file.
    pub perm: Perms,
    /// What it lets others do at the same time.
    pub shared: Perms,
}

/// What an image format's reader keeps to itself: nobody else may write or resize the file
/// under its metadata (`bdrv_default_perms_for_storage`, the `BDRV_CHILD_METADATA` case).
const FORMAT_SHARED: Perms = Perms::CONSISTENT_READ.union(Perms::WRITE_UNCHANGED);

impl LockRequest {
    /// A read-only open (`qemu-img info`, a backing file, a VMDK extent of a read-only image):
    /// consistent read, sharing reads and unchanging writes only. Writers are refused while it
    /// is open, and it is refused while a writer has the file.
    pub const READ_ONLY: LockRequest = LockRequest {
        perm: Perms::CONSISTENT_READ,
        shared: FORMAT_SHARED,
    };

    /// A writable open (`qemu-io`, a running VM, `qemu-img resize`/`commit`): consistent read,
    /// write and resize (a format may grow its file on any write), sharing reads and unchanging
    /// writes only.
    pub const READ_WRITE: LockRequest = LockRequest {
        perm: Perms::CONSISTENT_READ.union(Perms::WRITE).union(Perms::RESIZE),
        shared: FORMAT_SHARED,
    };

    /// A read-only open with `force-share=on` (`qemu-img info -U`): consistent read, sharing
    /// everything (`bdrv_child_perm` sets the shared set to `BLK_PERM_ALL`), so it coexists
    /// with a writer, whose data it may see change underneath.
    pub const FORCE_SHARE: LockRequest = LockRequest {
        perm: Perms::CONSISTENT_READ,
        shared: Perms::ALL,
    };

    /// Replacing the file at an image's path with a new image (`raw_co_create` in QEMU: write
    /// and resize, sharing all but resize), so that creating over an image in use fails.
    pub const CREATE: LockRequest = LockRequest {
        perm: Perms::WRITE.union(Perms::RESIZE),
        shared: Perms::RESIZE.complement(),
    };

    /// The bytes this open locks (shared locks): a "use" byte for each permission taken and a
    /// "do not share" byte for each permission not shared.
    pub fn held_bytes(&self) -> Vec<u64> {
        let used = self.perm.each().map(|(n, _)| PERM_BASE + n);
        let unshared = self.shared.complement().each().map(|(n, _)| SHARED_BASE + n);
        used.chain(unshared).collect()
    }

    /// The bytes nobody else may hold for this open to go ahead, each with the message for when
    /// someone does: the "do not share" byte of each permission taken and the "use" byte of each
    /// permission not shared (QEMU's `raw_check_lock_bytes`, messages included).
    pub fn conflict_bytes(&self) -> Vec<(u64, String)> {
        let unshared_by_others = self
            .perm
            .each()
            .map(|(n, p)| (SHARED_BASE + n, format!("Failed to get \"{}\" lock", p.names())));
        let used_by_others = self
            .shared
            .complement()
            .each()
            .map(|(n, p)| (PERM_BASE + n, format!("Failed to get shared \"{}\" lock", p.names())));
        unshared_by_others.chain(used_by_others).collect()
    }
}

/// Whether opening an image takes QEMU-compatible locks on its files
/// ([`crate::OpenOptions::locking`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Locking {
    /// Lock every file of the image (the image, its parents, its extents) as QEMU does: a
    /// writable open takes the write permission and shares it with nobody; a read-only open
    /// coexists with other readers but not with a writer.
    #[default]
    Auto,
    /// `qemu-img -U` / `force-share=on`: read-only opens share every permission, so they
    /// coexist with a writer (a running VM); what they read may be changing. Writable opens
    /// are refused.
    ForceShare,
    /// Take no lock and check none (for an embedder who arranges exclusion itself).
    Off,
}

impl Locking {
    /// The locks an open of a file takes (`None`: none), or an error for a writable open with
    /// [`Locking::ForceShare`] (QEMU: "force-share=on can only be used with read-only images").
    pub fn request(self, writable: bool) -> Result<Option<LockRequest>> {
        match (self, writable) {
            (Locking::Off, _) => Ok(None),
            (Locking::Auto, false) => Ok(Some(LockRequest::READ_ONLY)),
            (Locking::Auto, true) => Ok(Some(LockRequest::READ_WRITE)),
            (Locking::ForceShare, false) => Ok(Some(LockRequest::FORCE_SHARE)),
            (Locking::ForceShare, true) => Err(Error::invalid_argument(
                "force-share=on can only be used with read-only images",
            )),
        }
    }

    /// Lock the file in `storage` as this choice says for an open that is `writable` or not
    /// ([`Storage::lock`]).
    pub fn apply(self, storage: &dyn Storage, writable: bool) -> Result<()> {
        match self.request(writable)? {
            Some(request) => storage.lock(request),
            None => Ok(()),
        }
    }
}

/// Take `request`'s locks on `file` (opened from `path`, named in errors) and check that no
/// other open of the file forbids them. The locks stay as long as the file stays open. On
/// failure ([`crate::ErrorKind::Locked`] when another open holds a conflicting lock) the bytes this
/// call locked are released again.
pub fn lock_file(file: &File, path: &Path, request: LockRequest) -> Result<()> {
    sys::lock_file(file, path, request)
}

#[cfg(all(target_os = "linux", not(target_arch = "mips")))]
mod sys {
    use super::LockRequest;
    use crate::error::{Error, ErrorKind, Result};
    use nix::errno::Errno;
    use nix::fcntl::{FcntlArg, fcntl};
    use nix::libc;
    use std::fs::File;
    use std::path::Path;

    /// The error for a lock another open of the file holds.
    fn locked(what: &str, path: &Path) -> Error {
        Error::new(
            ErrorKind::Locked,
            format!("{what}; is another process using the image [{}]?", path.display()),
        )
        .with_file(path)
    }

    /// A one-byte lock description (OFD locks want `l_pid` 0).
    fn one_byte(kind: libc::c_int, byte: u64) -> libc::flock {
        libc::flock {
            l_type: kind as libc::c_short,
            l_whence: libc::SEEK_SET as libc::c_short,
            l_start: byte as libc::off_t,
            l_len: 1,
            l_pid: 0,
        }
    }

    fn set(file: &File, kind: libc::c_int, byte: u64) -> nix::Result<()> {
        loop {
            match fcntl(file, FcntlArg::F_OFD_SETLK(&one_byte(kind, byte))) {
                Err(Errno::EINTR) => continue,
                other => return other.map(drop),
            }
        }
    }

    /// Whether another open file description holds a lock on `byte` that an exclusive lock
    /// would conflict with.
    fn taken_by_other(file: &File, byte: u64) -> nix::Result<bool> {
        let mut probe = one_byte(libc::F_WRLCK, byte);
        fcntl(file, FcntlArg::F_OFD_GETLK(&mut probe))?;
        Ok(probe.l_type != libc::F_UNLCK as libc::c_short)
    }

    fn unlock(file: &File, bytes: &[u64]) {
        for &byte in bytes {
            // Unlocking a byte this description holds cannot conflict; nothing to report.
            let _ = set(file, libc::F_UNLCK, byte);
        }
    }

    pub(super) fn lock_file(file: &File, path: &Path, request: LockRequest) -> Result<()> {
        let mut held = Vec::new();
        let result = (|| {
            for byte in request.held_bytes() {
                match set(file, libc::F_RDLCK, byte) {
                    Ok(()) => held.push(byte),
                    // A kernel without OFD locks: QEMU's `locking=auto` goes without, too.
                    Err(Errno::EINVAL) if held.is_empty() => return Ok(()),
                    Err(Errno::EAGAIN | Errno::EACCES) => {
                        return Err(locked(&format!("Failed to lock byte {byte}"), path));
                    }
                    Err(e) => {
                        return Err(Error::io(e.into(), format!("Failed to lock byte {byte}")).with_file(path));
                    }
                }
            }
            for (byte, what) in request.conflict_bytes() {
                match taken_by_other(file, byte) {
                    Ok(false) => {}
                    Ok(true) => return Err(locked(&what, path)),
                    Err(e) => return Err(Error::io(e.into(), what).with_file(path)),
                }
            }
            Ok(())
        })();
        if result.is_err() {
            unlock(file, &held);
        }
        result
    }
}

#[cfg(not(all(target_os = "linux", not(target_arch = "mips"))))]
mod sys {
    use super::LockRequest;
    use crate::error::Result;
    use std::fs::File;
    use std::path::Path;

    /// No OFD locks on this platform: nothing is locked (QEMU's `locking=auto` without them).
    pub(super) fn lock_file(_file: &File, _path: &Path, _request: LockRequest) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn byte_layout_is_qemus() {
        // A writer (qemu-io, a VM) holds 100, 101, 103 ("use" read, write, resize) and 201, 203
        // ("do not share" write, resize).
        assert_eq!(LockRequest::READ_WRITE.held_bytes(), [100, 101, 103, 201, 203]);
        assert_eq!(LockRequest::READ_ONLY.held_bytes(), [100, 201, 203]);
        assert_eq!(LockRequest::FORCE_SHARE.held_bytes(), [100]);
        assert_eq!(LockRequest::CREATE.held_bytes(), [101, 103, 203]);
        let checked = |r: LockRequest| r.conflict_bytes().into_iter().map(|(b, _)| b).collect::<Vec<_>>();
        assert_eq!(checked(LockRequest::READ_WRITE), [200, 201, 203, 101, 103]);
        assert_eq!(checked(LockRequest::READ_ONLY), [200, 101, 103]);
        assert_eq!(checked(LockRequest::FORCE_SHARE), [200]);
        assert_eq!(
            LockRequest::READ_WRITE.conflict_bytes()[1].1,
            "Failed to get \"write\" lock"
        );
        assert_eq!(
            LockRequest::READ_ONLY.conflict_bytes()[1].1,
            "Failed to get shared \"write\" lock"
        );
        assert_eq!(Perms::ALL.names(), "consistent read, write, write unchanged, resize");
    }

    #[test]
    fn force_share_is_for_readers_only() {
        assert_eq!(
            Locking::ForceShare.request(false).unwrap(),
            Some(LockRequest::FORCE_SHARE)
        );
        let e = Locking::ForceShare.request(true).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(
            e.message()
                .contains("force-share=on can only be used with read-only images")
        );
        assert_eq!(Locking::Off.request(true).unwrap(), None);
    }

    #[cfg(all(target_os = "linux", not(target_arch = "mips")))]
    #[test]
    fn two_opens_in_one_process_conflict_as_two_processes_would() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        std::fs::write(&path, [0u8; 512]).unwrap();
        let open = || File::options().read(true).write(true).open(&path).unwrap();
        let try_lock = |f: &File, r: LockRequest| lock_file(f, &path, r);

        // A writer excludes another writer, a reader, and creating over it; not a -U reader.
        let writer = open();
        try_lock(&writer, LockRequest::READ_WRITE).unwrap();
        let e = try_lock(&open(), LockRequest::READ_WRITE).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Locked);
        assert!(e.message().starts_with("Failed to get \"write\" lock"), "{e}");
        let e = try_lock(&open(), LockRequest::READ_ONLY).unwrap_err();
        assert!(e.message().starts_with("Failed to get shared \"write\" lock"), "{e}");
        assert_eq!(
            try_lock(&open(), LockRequest::CREATE).unwrap_err().kind(),
            ErrorKind::Locked
        );
        let shared = open();
        try_lock(&shared, LockRequest::FORCE_SHARE).unwrap();
        drop(writer);
        drop(shared);

        // Readers coexist and exclude writers; a failed attempt leaves no lock behind.
        let (r1, r2) = (open(), open());
        try_lock(&r1, LockRequest::READ_ONLY).unwrap();
        try_lock(&r2, LockRequest::READ_ONLY).unwrap();
        assert_eq!(
            try_lock(&open(), LockRequest::READ_WRITE).unwrap_err().kind(),
            ErrorKind::Locked
        );
        drop((r1, r2));
        let writer = open();
        try_lock(&writer, LockRequest::READ_WRITE).unwrap();
        drop(writer);

        // Closing the file releases its locks.
        try_lock(&open(), LockRequest::READ_WRITE).unwrap();
        try_lock(&open(), LockRequest::READ_WRITE).unwrap();
    }
}
