//! Sums that combine across shards as SQLite computes them in one pass.
//!
//! SQLite's `sum()`, `total()` and `avg()` add integers exactly until one
//! overflows or a non-integer arrives, then switch to floating point with
//! Kahan–Babuška–Neumaier compensation: a running sum plus an error term.
//! Adding per-shard `sum()`s loses the error terms (1.5e300 + 500.25 is
//! 1.5e300 in a double), so a sharded sum could differ wildly from
//! SQLite's. Instead each shard returns its whole summation state,
//! `_drsdb_sum_state(x)` (a blob, NULL when it saw no value), and the
//! index server's scratch database folds the states in with the same
//! compensated steps: `_drsdb_sum(s)`, `_drsdb_total(s)` and `_drsdb_avg(s)`
//! finish them as `sum`, `total` and `avg` finish theirs.
//!
//! The shard side is registered through SQLite's C interface, so that each
//! value is classified exactly as `sum()` does (`sqlite3_value_numeric_type`:
//! text that looks like a number counts as one). What cannot match is
//! order: an integer overflow fails `sum()` in SQLite only if no real came
//! after it; here it fails when the values held no real at all.

use std::ffi::{c_int, c_void};

use rusqlite::functions::{Aggregate, Context, FunctionFlags};
use rusqlite::{ffi, Connection};

/// The per-shard aggregate.
pub const STATE: &str = "_drsdb_sum_state";

/// The aggregates that fold states and finish them as SQLite's `sum`,
/// `total` and `avg`.
const FINISHERS: [(&str, &str, Finish); 3] =
    [("sum", "_drsdb_sum", Finish::Sum), ("total", "_drsdb_total", Finish::Total), ("avg", "_drsdb_avg", Finish::Avg)];

/// The aggregate that folds shards' states into SQLite's `aggregate`
/// (`sum`, `total` or `avg`).
pub fn finisher(aggregate: &str) -> Option<&'static str> {
    FINISHERS.iter().find(|(name, _, _)| *name == aggregate).map(|(_, finisher, _)| *finisher)
}

/// Integers at least this large (in magnitude) are added as two doubles,
/// as SQLite does, so that no bits are lost.
const EXACT_DOUBLE_LIMIT: i64 = 4_503_599_627_370_496;
/// The low part split off such integers.
const LOW_PART: i64 = 16_384;
/// Bytes of an encoded state.
const ENCODED_BYTES: usize = 34;

/// An integer as SQLite adds it in floating point: a large one as its high
/// part and the low bits split off it (so that none is lost).
fn parts(i: i64) -> (f64, Option<f64>) {
    if i <= -EXACT_DOUBLE_LIMIT || i >= EXACT_DOUBLE_LIMIT {
        let low = i % LOW_PART;
        ((i - low) as f64, Some(low as f64))
    } else {
        (i as f64, None)
    }
}

/// SQLite's `SumCtx`: a summation in progress. (`repr(C)` and all-zero
/// valid: SQLite allocates it zeroed for the shard-side aggregate.)
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Sum {
    r_sum: f64,
    r_err: f64,
    i_sum: i64,
    cnt: i64,
    /// Floating point since a non-integer or an overflow.
    approx: bool,
    /// An integer overflowed and no real came after it.
    ovrfl: bool,
}

impl Sum {
    fn step(&mut self, r: f64) {
        let s = self.r_sum;
        let t = s + r;
        if s.abs() > r.abs() {
            self.r_err += (s - t) + r;
        } else {
            self.r_err += (r - t) + s;
        }
        self.r_sum = t;
    }

    fn step_int(&mut self, i: i64) {
        let (high, low) = parts(i);
        self.step(high);
        if let Some(low) = low {
            self.step(low);
        }
    }

    /// Switches to floating point, starting from the integer sum.
    fn go_approx(&mut self) {
        let (high, low) = parts(self.i_sum);
        self.r_sum = high;
        self.r_err = low.unwrap_or(0.0);
        self.approx = true;
    }

    fn add_int(&mut self, v: i64) {
        self.cnt += 1;
        if self.approx {
            self.step_int(v);
            return;
        }
        match self.i_sum.checked_add(v) {
            Some(sum) => self.i_sum = sum,
            None => {
                self.ovrfl = true;
                self.go_approx();
                self.step_int(v);
            }
        }
    }

    fn add_real(&mut self, r: f64) {
        self.cnt += 1;
        if !self.approx {
            self.go_approx();
        }
        self.ovrfl = false;
        self.step(r);
    }

    /// Folds in another shard's state.
    fn merge(&mut self, other: &Sum) {
        if other.cnt == 0 {
            return;
        }
        if !other.approx {
            self.add_int(other.i_sum);
            self.cnt += other.cnt - 1;
            return;
        }
        let had_real = self.saw_real();
        if !self.approx {
            self.go_approx();
        }
        // `other` saw a real unless it went approximate by overflowing.
        self.ovrfl = other.ovrfl && !had_real;
        self.step(other.r_sum);
        if other.r_err.is_finite() {
            self.step(other.r_err);
        }
        self.cnt += other.cnt;
    }

    /// Whether a non-integer value was added (approximate, not by overflow).
    fn saw_real(&self) -> bool {
        self.approx && !self.ovrfl
    }

    /// The floating-point total, as `total()` and `avg()` compute it.
    fn real(&self) -> f64 {
        if !self.approx {
            return self.i_sum as f64;
        }
        if self.r_err.is_finite() {
            self.r_sum + self.r_err
        } else {
            self.r_sum
        }
    }

    fn encode(&self) -> [u8; ENCODED_BYTES] {
        let mut out = [0u8; ENCODED_BYTES];
        out[0..8].copy_from_slice(&self.r_sum.to_le_bytes());
        out[8..16].copy_from_slice(&self.r_err.to_le_bytes());
        out[16..24].copy_from_slice(&self.i_sum.to_le_bytes());
        out[24..32].copy_from_slice(&self.cnt.to_le_bytes());
        out[32] = u8::from(self.approx);
        out[33] = u8::from(self.ovrfl);
        out
    }

    fn decode(bytes: &[u8]) -> Option<Sum> {
        let bytes: &[u8; ENCODED_BYTES] = bytes.try_into().ok()?;
        let word = |i: usize| <[u8; 8]>::try_from(&bytes[i..i + 8]).expect("8 bytes");
        Some(Sum {
            r_sum: f64::from_le_bytes(word(0)),
            r_err: f64::from_le_bytes(word(8)),
            i_sum: i64::from_le_bytes(word(16)),
            cnt: i64::from_le_bytes(word(24)),
            approx: bytes[32] != 0,
            ovrfl: bytes[33] != 0,
        })
    }
}

unsafe extern "C" fn state_step(ctx: *mut ffi::sqlite3_context, argc: c_int, argv: *mut *mut ffi::sqlite3_value) {
    // SAFETY: SQLite passes its context and `argc` values; the aggregate
    // context is zeroed memory of the requested size, which is a valid
    // `Sum`, or null when out of memory.
    unsafe {
        let sum = ffi::sqlite3_aggregate_context(ctx, std::mem::size_of::<Sum>() as c_int).cast::<Sum>();
        if sum.is_null() {
            ffi::sqlite3_result_error_nomem(ctx);
            return;
        }
        if argc != 1 {
            return;
        }
        let value = *argv;
        match ffi::sqlite3_value_numeric_type(value) {
            ffi::SQLITE_NULL => {}
            ffi::SQLITE_INTEGER => (*sum).add_int(ffi::sqlite3_value_int64(value)),
            _ => (*sum).add_real(ffi::sqlite3_value_double(value)),
        }
    }
}

unsafe extern "C" fn state_final(ctx: *mut ffi::sqlite3_context) {
    // SAFETY: as above; with size 0 SQLite returns the context the steps
    // used, or null when no row was stepped.
    unsafe {
        let sum = ffi::sqlite3_aggregate_context(ctx, 0).cast::<Sum>();
        if sum.is_null() || (*sum).cnt == 0 {
            ffi::sqlite3_result_null(ctx);
            return;
        }
        let bytes = (*sum).encode();
        ffi::sqlite3_result_blob(ctx, bytes.as_ptr().cast::<c_void>(), ENCODED_BYTES as c_int, ffi::SQLITE_TRANSIENT());
    }
}

/// How a folded state finishes.
#[derive(Clone, Copy)]
enum Finish {
    Sum,
    Total,
    Avg,
}

impl Aggregate<Sum, rusqlite::types::Value> for Finish {
    fn init(&self, _: &mut Context<'_>) -> rusqlite::Result<Sum> {
        Ok(Sum::default())
    }

    fn step(&self, ctx: &mut Context<'_>, acc: &mut Sum) -> rusqlite::Result<()> {
        match ctx.get_raw(0) {
            rusqlite::types::ValueRef::Null => Ok(()),
            rusqlite::types::ValueRef::Blob(b) => {
                let state = Sum::decode(b)
                    .ok_or_else(|| rusqlite::Error::UserFunctionError("a shard's partial sum is malformed".into()))?;
                acc.merge(&state);
                Ok(())
            }
            _ => Err(rusqlite::Error::UserFunctionError("a shard's partial sum is malformed".into())),
        }
    }

    fn finalize(&self, _: &mut Context<'_>, acc: Option<Sum>) -> rusqlite::Result<rusqlite::types::Value> {
        use rusqlite::types::Value;
        let sum = acc.unwrap_or_default();
        Ok(match self {
            Finish::Total => Value::Real(sum.real()),
            _ if sum.cnt == 0 => Value::Null,
            Finish::Avg => Value::Real(sum.real() / sum.cnt as f64),
            Finish::Sum if sum.approx && sum.ovrfl => {
                return Err(rusqlite::Error::UserFunctionError("integer overflow".into()));
            }
            Finish::Sum if sum.approx => Value::Real(sum.real()),
            Finish::Sum => Value::Integer(sum.i_sum),
        })
    }
}

/// Registers the shard-side state aggregate and the three finishing ones.
pub fn register(conn: &Connection) -> rusqlite::Result<()> {
    let name = std::ffi::CString::new(STATE).expect("no NUL in the name");
    // SAFETY: the handle is this open connection's; SQLite copies the name;
    // the callbacks use only the aggregate context SQLite hands them.
    let rc = unsafe {
        ffi::sqlite3_create_function_v2(
            conn.handle(),
            name.as_ptr(),
            1,
            ffi::SQLITE_UTF8 | ffi::SQLITE_DETERMINISTIC,
            std::ptr::null_mut(),
            None,
            Some(state_step),
            Some(state_final),
            None,
        )
    };
    if rc != ffi::SQLITE_OK {
        return Err(rusqlite::Error::SqliteFailure(ffi::Error::new(rc), Some(format!("cannot register {STATE}"))));
    }
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    for (_, name, finish) in FINISHERS {
        conn.create_aggregate_function(name, 1, flags, finish)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bare connection with the sums (after the process's SQLite set-up,
    /// which must come first).
    fn open() -> Connection {
        crate::clock::register();
        let conn = Connection::open_in_memory().unwrap();
        register(&conn).unwrap();
        conn
    }

    /// Values split over shards by position, summed per shard, folded:
    /// the same answers as SQLite's own aggregates over all of them.
    fn check(values: &str, shards: usize) {
        let conn = open();
        conn.execute_batch(&format!(
            "CREATE TABLE v(x); INSERT INTO v VALUES {values}; CREATE TABLE partial(s BLOB);
             INSERT INTO partial SELECT {STATE}(x) FROM v GROUP BY rowid % {shards};"
        ))
        .unwrap();
        let ask = |sql: &str| {
            conn.query_row(sql, [], |r| Ok([r.get::<_, rusqlite::types::Value>(0)?, r.get(1)?, r.get(2)?]))
                .map(|v| format!("{v:?}"))
                .unwrap_or_else(|e| e.to_string())
        };
        assert_eq!(
            ask("SELECT _drsdb_sum(s), _drsdb_total(s), _drsdb_avg(s) FROM partial"),
            ask("SELECT sum(x), total(x), avg(x) FROM v"),
            "{values} over {shards} shards"
        );
    }

    #[test]
    fn folded_sums_equal_sqlite_s() {
        let cases = [
            "(1.5e300),(-1.5e300),(500.25),(1.5e300),(-1.5e300),(0.5),(1e300),(-1e300)",
            "(1),(2),(3),(NULL),(4)",
            "(1),('2'),('3.5'),('x'),(X'00'),(4)",
            "(9223372036854775807),(1),(2)",
            "(9223372036854775807),(1),(0.5)",
            "(4503599627370497),(4503599627370497),(3),(0.1)",
            "(NULL),(NULL)",
            "(0.1),(0.2),(0.3),(0.4),(0.5),(0.6),(0.7)",
            "(1e308),(1e308),(1.0)",
        ];
        for values in cases {
            for shards in [1, 2, 3, 4] {
                check(values, shards);
            }
        }
    }

    #[test]
    fn an_empty_table_sums_to_null_and_totals_to_zero() {
        let conn = open();
        let row: (Option<i64>, f64, Option<f64>) = conn
            .query_row("SELECT _drsdb_sum(s), _drsdb_total(s), _drsdb_avg(s) FROM (SELECT 1 AS s WHERE 0)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(row, (None, 0.0, None));
        let e = conn.query_row("SELECT _drsdb_sum(x'00')", [], |r| r.get::<_, i64>(0)).unwrap_err();
        assert!(e.to_string().contains("malformed"), "{e}");
    }
}
