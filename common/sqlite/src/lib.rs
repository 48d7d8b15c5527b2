//! # drsdb's deterministic SQLite
//!
//! Both tiers run SQL on SQLite: storage servers on every replica of a
//! group, index servers in scratch databases where they combine what
//! shards sent. A replicated statement must give the same answer and the
//! same effects on every replica, and a combining step must compute what
//! SQLite would have computed on one file. This crate is that SQLite:
//!
//! - `clock`: a VFS whose clock each statement pins to the instant the
//!   index server chose, so `'now'` and `CURRENT_TIMESTAMP` agree
//!   everywhere;
//! - `db`: connections as drsdb opens them ([`Db`]: writer, read-only
//!   reader, in-memory scratch), with `random()`, `randomblob()` and
//!   `ulid()` drawn from the statement's seed, an authorizer that keeps
//!   user SQL away from drsdb's own tables and from transaction control,
//!   and a budget of virtual-machine steps counted alike on every replica;
//! - `heap`: a memory budget per statement, counted in the large heap
//!   blocks whose sizes follow from the statement and the data alone;
//! - `sum`: SUM, TOTAL and AVG split into per-shard states and finishers
//!   that fold them exactly as SQLite sums in one pass.
//!
//! Call [`start`] before anything else in the process touches SQLite;
//! [`prepare`] before opening a plain `rusqlite::Connection`.
//!
//! ## Not yet
//! Memory the servers hold outside SQLite (rows being relayed) is not
//! counted by the statement budget.

mod clock;
mod db;
mod heap;
mod sum;

pub use clock::register as prepare;
pub use db::{start, Db, Failure, Limits};
pub use sum::{finisher as sum_finisher, STATE as SUM_STATE};
