//! A SQLite VFS whose clock each statement sets, so that every replica
//! reads the same "now".
//!
//! SQLite asks its VFS for the time whenever SQL reads the clock: `'now'`
//! in the date functions, `CURRENT_TIMESTAMP` (also as a column DEFAULT or
//! inside a trigger). Our VFS is the default one with its two clock methods
//! replaced: while a statement runs on this thread with a pinned instant
//! (the `now_ms` the index server chose before replication) they return
//! it; otherwise they ask the default VFS. Everything else (files, locks,
//! randomness) is the default VFS's own.

use std::cell::Cell;
use std::ffi::{c_int, CStr};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Once;

use rusqlite::ffi;

/// Name under which the VFS is registered.
pub const VFS_NAME: &CStr = c"drsdb";

/// The Unix epoch as a Julian day number in milliseconds (SQLite's unit).
const UNIX_EPOCH_JULIAN_MS: i64 = 210_866_760_000_000;
const MS_PER_DAY: f64 = 86_400_000.0;

thread_local! {
    static PINNED_MS: Cell<Option<i64>> = const { Cell::new(None) };
}

static DEFAULT_VFS: AtomicPtr<ffi::sqlite3_vfs> = AtomicPtr::new(std::ptr::null_mut());
static REGISTER: Once = Once::new();

/// Pins this thread's clock to `unix_ms` until the guard drops.
pub fn pin(unix_ms: i64) -> Pinned {
    PINNED_MS.with(|p| p.set(Some(unix_ms)));
    Pinned(())
}

/// Unpins the clock when dropped.
pub struct Pinned(());

impl Drop for Pinned {
    fn drop(&mut self) {
        PINNED_MS.with(|p| p.set(None));
    }
}

fn default_vfs() -> *mut ffi::sqlite3_vfs {
    DEFAULT_VFS.load(Ordering::Acquire)
}

unsafe extern "C" fn current_time_int64(_vfs: *mut ffi::sqlite3_vfs, out: *mut ffi::sqlite3_int64) -> c_int {
    if let Some(ms) = PINNED_MS.with(Cell::get) {
        // SAFETY: SQLite passes a valid pointer to write the time into.
        unsafe { *out = ms + UNIX_EPOCH_JULIAN_MS };
        return ffi::SQLITE_OK;
    }
    let default = default_vfs();
    // SAFETY: the default VFS outlives the process and has this method
    // (checked at registration).
    unsafe { ((*default).xCurrentTimeInt64.expect("checked at registration"))(default, out) }
}

unsafe extern "C" fn current_time(vfs: *mut ffi::sqlite3_vfs, out: *mut f64) -> c_int {
    let mut ms: ffi::sqlite3_int64 = 0;
    // SAFETY: as above; `ms` is a valid local.
    let rc = unsafe { current_time_int64(vfs, &mut ms) };
    // SAFETY: SQLite passes a valid pointer.
    unsafe { *out = ms as f64 / MS_PER_DAY };
    rc
}

/// Registers the VFS (once per process), after installing the heap
/// budgets (which must come before SQLite starts, as registering does).
/// Every SQLite connection of the process is opened after this.
pub fn register() {
    crate::heap::install();
    REGISTER.call_once(|| {
        // SAFETY: sqlite3_vfs_find(NULL) returns the default VFS, which lives
        // as long as the process. We copy its method table, replace the two
        // clock methods and register the copy (leaked: VFSes must outlive
        // every connection). Methods that read pAppData see the default's.
        unsafe {
            let default = ffi::sqlite3_vfs_find(std::ptr::null());
            assert!(!default.is_null(), "SQLite has no default VFS");
            assert!((*default).iVersion >= 2 && (*default).xCurrentTimeInt64.is_some(), "default VFS lacks a clock");
            DEFAULT_VFS.store(default, Ordering::Release);
            let mut ours: ffi::sqlite3_vfs = std::ptr::read(default);
            ours.zName = VFS_NAME.as_ptr();
            ours.pNext = std::ptr::null_mut();
            ours.xCurrentTime = Some(current_time);
            ours.xCurrentTimeInt64 = Some(current_time_int64);
            let rc = ffi::sqlite3_vfs_register(Box::leak(Box::new(ours)), 0);
            assert_eq!(rc, ffi::SQLITE_OK, "cannot register the drsdb VFS");
        }
    });
}
