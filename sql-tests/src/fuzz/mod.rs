//! The fuzzing harness's parts: one module per subcommand, the cluster it
//! runs against, and the tally of findings.

pub mod cluster;
pub mod grpc;
pub mod parse;
pub mod sql;
pub mod sqlgen;

use std::fmt;

pub use drsdb_sql_tests::rng::{clock_seed, Rng};

/// How many findings of each kind are printed in full (all are counted),
/// and how many that look alike (the same signature).
const SHOWN_PER_KIND: u64 = 40;
const SHOWN_PER_SIGNATURE: u64 = 3;
/// Inputs longer than this are shown by their head and tail only.
pub const SHOWN_BYTES: usize = 400;

/// What a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A panic, a dead server process, an answer saying a server hit a bug,
    /// or a server that stopped answering.
    Crash,
    /// No answer in time.
    Hang,
    /// An answer other than SQLite's (or an answer where SQLite fails).
    WrongAnswer,
    /// Two copies of the data that should be equal are not.
    Divergence,
    /// A property of the parsing functions that does not hold.
    Inconsistency,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Crash => "crash",
            Kind::Hang => "hang",
            Kind::WrongAnswer => "wrong answer",
            Kind::Divergence => "divergence",
            Kind::Inconsistency => "inconsistency",
        })
    }
}

/// The findings of a run: counted, and printed as they come (the first
/// [`SHOWN_PER_KIND`] of each kind in full).
#[derive(Default)]
pub struct Findings {
    pub crashes: u64,
    pub hangs: u64,
    pub wrong_answers: u64,
    pub divergences: u64,
    pub inconsistencies: u64,
    /// Findings shown, per kind and per signature.
    shown: std::collections::HashMap<String, u64>,
}

impl Findings {
    /// Records a finding and prints it.
    pub fn report(&mut self, kind: Kind, what: &str) {
        self.report_like(kind, what, what);
    }

    /// Records a finding and prints it, unless several with the same
    /// `signature` (findings that look alike) were printed already.
    pub fn report_like(&mut self, kind: Kind, signature: &str, what: &str) {
        let count = match kind {
            Kind::Crash => &mut self.crashes,
            Kind::Hang => &mut self.hangs,
            Kind::WrongAnswer => &mut self.wrong_answers,
            Kind::Divergence => &mut self.divergences,
            Kind::Inconsistency => &mut self.inconsistencies,
        };
        *count += 1;
        let of_kind = self.shown.entry(kind.to_string()).or_default();
        if *of_kind >= SHOWN_PER_KIND {
            return;
        }
        let alike = self.shown.entry(format!("{kind}: {signature}")).or_default();
        *alike += 1;
        if *alike <= SHOWN_PER_SIGNATURE {
            *self.shown.entry(kind.to_string()).or_default() += 1;
            println!("FINDING {kind}: {}", what.replace('\n', "\n  "));
        } else if *alike == SHOWN_PER_SIGNATURE + 1 {
            let like: String = signature.chars().take(SHOWN_BYTES / 4).collect();
            println!("(further {kind} findings like this are counted, not shown: {like})");
        }
    }

    /// Every finding of every kind.
    pub fn total(&self) -> u64 {
        self.crashes + self.hangs + self.wrong_answers + self.divergences + self.inconsistencies
    }
}

/// `text` for a message: whole when short, otherwise its head and tail
/// with its length, control characters escaped.
pub fn shown(text: &str) -> String {
    let escape = |s: &str| s.escape_debug().to_string();
    if text.len() <= SHOWN_BYTES {
        return format!("\"{}\"", escape(text));
    }
    let half = SHOWN_BYTES / 2;
    let head = &text[..floor_boundary(text, half)];
    let tail = &text[floor_boundary(text, text.len() - half)..];
    format!("\"{}\" … \"{}\" ({} bytes)", escape(head), escape(tail), text.len())
}

/// The largest character boundary of `s` at or before `i`.
pub fn floor_boundary(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// A rate for the summary: `n` per second over `elapsed`.
pub fn rate(n: u64, elapsed: std::time::Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// One SQL value as SQLite holds it, for comparisons: text is kept as
/// bytes, since SQLite may hold text that is not UTF-8.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Integer(i64),
    Real(f64),
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

/// Reals within this relative distance are equal: an aggregate combined
/// from several shards' partial results adds in another order than
/// SQLite does.
const REAL_TOLERANCE: f64 = 1e-9;

impl From<rusqlite::types::ValueRef<'_>> for Cell {
    fn from(v: rusqlite::types::ValueRef<'_>) -> Cell {
        use rusqlite::types::ValueRef;
        match v {
            ValueRef::Null => Cell::Null,
            ValueRef::Integer(i) => Cell::Integer(i),
            ValueRef::Real(r) => Cell::Real(r),
            ValueRef::Text(t) => Cell::Text(t.to_vec()),
            ValueRef::Blob(b) => Cell::Blob(b.to_vec()),
        }
    }
}

impl From<&drsdb_client::Value> for Cell {
    /// Through the value's SQLite form, which every variant has.
    fn from(v: &drsdb_client::Value) -> Cell {
        use rusqlite::types::ToSqlOutput;
        match rusqlite::ToSql::to_sql(v) {
            Ok(ToSqlOutput::Borrowed(r)) => Cell::from(r),
            Ok(ToSqlOutput::Owned(o)) => Cell::from(rusqlite::types::ValueRef::from(&o)),
            _ => Cell::Null,
        }
    }
}

impl rusqlite::ToSql for Cell {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Cell::Null => ValueRef::Null,
            Cell::Integer(i) => ValueRef::Integer(*i),
            Cell::Real(r) => ValueRef::Real(*r),
            Cell::Text(t) => ValueRef::Text(t),
            Cell::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl Cell {
    fn rank(&self) -> u8 {
        match self {
            Cell::Null => 0,
            Cell::Integer(_) => 1,
            Cell::Real(_) => 2,
            Cell::Text(_) => 3,
            Cell::Blob(_) => 4,
        }
    }

    /// A total order (storage class first), for sorting rows.
    pub fn total_cmp(&self, other: &Cell) -> std::cmp::Ordering {
        match (self, other) {
            (Cell::Integer(a), Cell::Integer(b)) => a.cmp(b),
            (Cell::Real(a), Cell::Real(b)) => a.total_cmp(b),
            (Cell::Text(a), Cell::Text(b)) | (Cell::Blob(a), Cell::Blob(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }

    /// Equal, reals within [`REAL_TOLERANCE`].
    pub fn close_to(&self, other: &Cell) -> bool {
        match (self, other) {
            (Cell::Real(a), Cell::Real(b)) => {
                a == b || (a.is_nan() && b.is_nan()) || (a - b).abs() <= REAL_TOLERANCE * a.abs().max(b.abs())
            }
            _ => self == other,
        }
    }
}

impl fmt::Display for Cell {
    /// As an SQL literal (reals with every digit).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cell::Null => f.write_str("NULL"),
            Cell::Integer(i) => write!(f, "{i}"),
            Cell::Real(r) => write!(f, "{r:?}"),
            Cell::Text(t) => {
                let t = String::from_utf8_lossy(t);
                let t = if t.len() > SHOWN_BYTES {
                    format!("{}…", &t[..floor_boundary(&t, SHOWN_BYTES)])
                } else {
                    t.into()
                };
                let escaped: String = t
                    .chars()
                    .map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() })
                    .collect();
                write!(f, "'{}'", escaped.replace('\'', "''"))
            }
            Cell::Blob(b) => {
                f.write_str("x'")?;
                for byte in b.iter().take(SHOWN_BYTES / 2) {
                    write!(f, "{byte:02x}")?;
                }
                if b.len() > SHOWN_BYTES / 2 {
                    write!(f, "…' ({} bytes)", b.len())
                } else {
                    f.write_str("'")
                }
            }
        }
    }
}

/// Rows sorted in [`Cell::total_cmp`] order.
pub fn sorted(mut rows: Vec<Vec<Cell>>) -> Vec<Vec<Cell>> {
    rows.sort_by(|a, b| {
        a.iter().zip(b).map(|(x, y)| x.total_cmp(y)).find(|o| o.is_ne()).unwrap_or_else(|| a.len().cmp(&b.len()))
    });
    rows
}
