//! Poison-tolerant locking: the one set of lock helpers every crate uses.
//!
//! A thread that panics while holding a lock poisons it. The engines keep their invariants
//! across every early return (an I/O error leaves the in-memory state consistent, and a failure
//! that cannot be undone poisons the image itself through [`crate::ErrorKind::Poisoned`]), so a
//! poisoned `std` lock carries no extra information: these helpers take the guard anyway
//! instead of panicking in every later caller.
//!
//! ```
//! use std::sync::{Mutex, RwLock};
//! use disk_core::sync::{lock, read_lock, write_lock};
//!
//! let m = Mutex::new(1);
//! *lock(&m) += 1;
//! let rw = RwLock::new(vec![1]);
//! write_lock(&rw).push(2);
//! assert_eq!(*read_lock(&rw), [1, 2]);
//! assert_eq!(*lock(&m), 2);
//! ```

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Lock `m`, even if a panicking thread poisoned it.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Take a read lock on `l`, even if a panicking thread poisoned it.
pub fn read_lock<T: ?Sized>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

/// Take the write lock on `l`, even if a panicking thread poisoned it.
pub fn write_lock<T: ?Sized>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisoned_locks_are_taken() {
        let m = Mutex::new(0);
        let rw = RwLock::new(0);
        std::thread::scope(|s| {
            let _ = s
                .spawn(|| {
                    let _m = m.lock().unwrap();
                    let _w = rw.write().unwrap();
                    panic!("poison both");
                })
                .join();
        });
        assert!(m.is_poisoned() && rw.is_poisoned());
        *lock(&m) = 1;
        *write_lock(&rw) = 2;
        assert_eq!((*lock(&m), *read_lock(&rw)), (1, 2));
    }
}
