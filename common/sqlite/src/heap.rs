//! A heap budget for each statement.
//!
//! SQLite allocates through a table of memory methods that a process may
//! replace before SQLite starts. [`install`] wraps the default table:
//! every allocation still goes to the default allocator, and blocks of at
//! least [`COUNTED_BLOCK_BYTES`] are also counted against the budget of
//! the statement running on the allocating thread ([`Budget`]). When a
//! block would take the statement past its budget the allocation fails,
//! SQLite fails the statement with "out of memory", and [`exceeded`] tells
//! the caller why.
//!
//! Only large blocks count, so that the count is the same on every
//! replica: those are what grows with the data a statement handles
//! (strings and blobs, sorter and JSON buffers, rows being built), and
//! their sizes follow from the statement and the database alone. Small
//! blocks (the page cache, parse trees, lookaside) depend on a
//! connection's history, which differs between replicas (one that
//! restarted has a cold cache); they are bounded by the cache size and
//! the statement's length instead. A replicated write that runs out of
//! budget therefore fails identically everywhere.
//!
//! The budget is per thread: a statement runs from start to end on one
//! thread. Blocks freed during a statement that were allocated before it
//! make room for it; that is bounded by what the connection held before.
//!
//! SQLite takes memory methods only before it initialises; if something
//! in the process used SQLite before [`install`], budgets are not
//! enforced and [`install`] says so (the servers log it at start).

use std::cell::Cell;
use std::ffi::{c_int, c_void};
use std::sync::OnceLock;

use rusqlite::ffi;

/// Heap blocks at least this large count against a statement's budget.
pub const COUNTED_BLOCK_BYTES: i64 = 64 * 1024;

thread_local! {
    /// The running statement's budget in bytes (None outside statements).
    static LIMIT: Cell<Option<i64>> = const { Cell::new(None) };
    /// Counted bytes allocated (less those freed) since the budget was set.
    static USED: Cell<i64> = const { Cell::new(0) };
    /// Whether an allocation was refused for the budget.
    static EXCEEDED: Cell<bool> = const { Cell::new(false) };
}

/// SQLite's default memory methods, which ours wrap.
struct DefaultMethods(ffi::sqlite3_mem_methods);

// SAFETY: the table is a set of function pointers and SQLite's own
// `pAppData` (null for the default allocator), read-only once stored.
unsafe impl Sync for DefaultMethods {}
unsafe impl Send for DefaultMethods {}

/// The default methods, stored before ours can be called.
static DEFAULT: OnceLock<DefaultMethods> = OnceLock::new();
/// Whether ours are installed.
static INSTALLED: OnceLock<bool> = OnceLock::new();

/// Installs the counting allocator (once per process). Returns false
/// when SQLite had already started, so budgets cannot be enforced.
pub fn install() -> bool {
    *INSTALLED.get_or_init(|| {
        // SAFETY: both calls copy a `sqlite3_mem_methods` out or in; they
        // fail with SQLITE_MISUSE, changing nothing, once SQLite has
        // initialised.
        unsafe {
            let mut default: ffi::sqlite3_mem_methods = std::mem::zeroed();
            if ffi::sqlite3_config(ffi::SQLITE_CONFIG_GETMALLOC, &mut default as *mut ffi::sqlite3_mem_methods)
                != ffi::SQLITE_OK
            {
                return false;
            }
            if default.xMalloc.is_none()
                || default.xFree.is_none()
                || default.xRealloc.is_none()
                || default.xSize.is_none()
                || DEFAULT.set(DefaultMethods(default)).is_err()
            {
                return false;
            }
            let ours = ffi::sqlite3_mem_methods {
                xMalloc: Some(counted_malloc),
                xFree: Some(counted_free),
                xRealloc: Some(counted_realloc),
                ..default
            };
            ffi::sqlite3_config(ffi::SQLITE_CONFIG_MALLOC, &ours as *const ffi::sqlite3_mem_methods) == ffi::SQLITE_OK
        }
    })
}

fn methods() -> &'static ffi::sqlite3_mem_methods {
    &DEFAULT.get().expect("stored before ours are installed").0
}

/// The bytes a block counts for (0 for small blocks).
///
/// # Safety
/// `p` is null or a live block from the default allocator.
unsafe fn counted(p: *mut c_void) -> i64 {
    if p.is_null() {
        return 0;
    }
    // SAFETY: per the contract.
    counted_size(i64::from(unsafe { (methods().xSize.expect("checked at install"))(p) }))
}

/// The bytes a block of `size` counts for: all of them or none.
fn counted_size(size: i64) -> i64 {
    if size >= COUNTED_BLOCK_BYTES {
        size
    } else {
        0
    }
}

/// Whether `more` counted bytes fit the running statement's budget; if
/// not, records that the budget was exceeded.
fn fits(more: i64) -> bool {
    let limit = LIMIT.try_with(Cell::get).ok().flatten();
    let used = USED.try_with(Cell::get).unwrap_or(0);
    match limit {
        Some(limit) if more > 0 && used.saturating_add(more) > limit => {
            let _ = EXCEEDED.try_with(|e| e.set(true));
            false
        }
        _ => true,
    }
}

fn charge(bytes: i64) {
    let _ = USED.try_with(|u| u.set(u.get().saturating_add(bytes)));
}

/// The size class the default allocator gives a request of `n` bytes, as
/// far as counting is concerned (SQLite rounds to 8).
fn requested(n: c_int) -> i64 {
    counted_size((i64::from(n) + 7) & !7)
}

unsafe extern "C" fn counted_malloc(n: c_int) -> *mut c_void {
    if !fits(requested(n)) {
        return std::ptr::null_mut();
    }
    // SAFETY: the default allocator's own method, called as SQLite would.
    let p = unsafe { (methods().xMalloc.expect("checked at install"))(n) };
    // SAFETY: `p` is null or fresh from the default allocator.
    charge(unsafe { counted(p) });
    p
}

unsafe extern "C" fn counted_free(p: *mut c_void) {
    // SAFETY: SQLite frees only live blocks it allocated through us.
    charge(-unsafe { counted(p) });
    // SAFETY: as above.
    unsafe { (methods().xFree.expect("checked at install"))(p) }
}

unsafe extern "C" fn counted_realloc(p: *mut c_void, n: c_int) -> *mut c_void {
    // SAFETY: SQLite reallocates only live blocks it allocated through us.
    let before = unsafe { counted(p) };
    if !fits(requested(n) - before) {
        return std::ptr::null_mut();
    }
    // SAFETY: the default allocator's own method; on failure `p` stays live.
    let q = unsafe { (methods().xRealloc.expect("checked at install"))(p, n) };
    if !q.is_null() {
        // SAFETY: `q` is live from the default allocator.
        charge(unsafe { counted(q) } - before);
    }
    q
}

/// A statement's budget on this thread, until dropped.
pub struct Budget(());

/// Holds this thread's allocations to `bytes` of counted blocks until the
/// guard drops.
pub fn budget(bytes: u64) -> Budget {
    let limit = i64::try_from(bytes).unwrap_or(i64::MAX);
    LIMIT.with(|l| l.set(Some(limit)));
    USED.with(|u| u.set(0));
    EXCEEDED.with(|e| e.set(false));
    Budget(())
}

impl Drop for Budget {
    fn drop(&mut self) {
        let _ = LIMIT.try_with(|l| l.set(None));
    }
}

/// Whether an allocation of the statement running (or last run) on this
/// thread was refused for its budget.
pub fn exceeded() -> bool {
    EXCEEDED.try_with(Cell::get).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statement_over_its_budget_fails_and_the_next_runs() {
        assert!(install(), "nothing used SQLite before this test's process");
        crate::clock::register();
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let big = "SELECT length(hex(zeroblob(8000000)))";
        {
            let _b = budget(4 << 20);
            let e = conn.query_row(big, [], |r| r.get::<_, i64>(0)).unwrap_err();
            assert_eq!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::OutOfMemory), "{e}");
            assert!(exceeded());
        }
        {
            let _b = budget(64 << 20);
            assert_eq!(conn.query_row(big, [], |r| r.get::<_, i64>(0)).unwrap(), 16_000_000);
            assert!(!exceeded());
        }
        // Outside a budget nothing is refused.
        assert_eq!(conn.query_row(big, [], |r| r.get::<_, i64>(0)).unwrap(), 16_000_000);
    }
}
