//! # drsdb index server
//!
//! A stateless SQL layer. Any number run; any one serves any client. It
//! holds a cached copy of the catalog and nothing else: a transaction is
//! named by an id the client sends with each of its statements, with the
//! shards it holds, and its state lives in those shards' logs.
//!
//! ## The life of a query
//! 1. The client's driver has already parsed the statement (syntax errors
//!    never leave the client) and sends its text, parameters and any open
//!    transaction id to `Sql.Execute` (`service`). The service runs it in
//!    its own task, stopped by the statement timeout or, for a read, as
//!    soon as the client goes away; a panic there becomes an error answer.
//!    The statement is held to its limits first (`sql::check_size`: length,
//!    operator chains, compound SELECTs) in one pass over its tokens, and
//!    every syntax tree is built by `sql::parse`, which checks them too.
//! 2. The executor (`executor/mod.rs`) classifies it by its leading keywords
//!    (read, write, DDL, transaction control, SHOW) and fixes what SQLite
//!    would otherwise take from the machine: the instant every clock
//!    reading of the statement returns (`'now'`, `CURRENT_TIMESTAMP`,
//!    column defaults) and the seed of `random()`, `randomblob()` and
//!    `ulid()`. Both travel inside the command, so every replica computes
//!    the same values: the statement is deterministic from here on.
//! 3. The tables it names are looked up in the catalog (`catalog`, kept in
//!    the meta group by `meta`); a miss reloads it, and a write to a table
//!    that the meta group and the first shard's schema both lack is an
//!    error before anything is proposed.
//! 4. The planner (`planner`) decides where it runs: one shard (no sharded
//!    table read, or the primary key pinned by WHERE, `keys` hashing it as
//!    SQLite stores it), every shard (UPDATE/DELETE, DDL), rows split by
//!    shard key (INSERT, `insert`), a query split into a per-shard part and
//!    a combining step (`pushdown`: concatenation, ordered merge, partial
//!    aggregates), or gathered into a scratch SQLite database here (every
//!    other query). The statement carries the schema version of the
//!    catalog it was planned with; a shard whose schema moved on refuses
//!    it, and it is planned again with a fresh catalog.
//! 5. The executor carries the plan out (`executor/write.rs` for INSERTs
//!    split by shard and broadcast UPDATE/DELETE, `executor/ddl.rs` for
//!    schema changes, `executor/scatter.rs` and `executor/gather.rs` for
//!    queries, `executor/txn.rs` for one shard's statement and for
//!    transactions). Each shard's part is a typed command or statement
//!    (`drsdb_common::command`) handed to the storage tier through the
//!    `StorageTier` trait (`drsdb_common::tier`): here `grpc_tier`, which
//!    sends it to the leader of its group, following leader changes; in
//!    tests an in-process tier. A write becomes a Raft entry (group commit
//!    batches it with others), a read waits for a ReadIndex barrier. Inside
//!    a transaction every statement, reads included, is an entry of the
//!    logs of the shards it touches, so it sees the transaction's writes;
//!    COMMIT over several shards is two-phase, decided at an anchor shard
//!    (`executor/txn.rs`, whose essay has the protocol). A write over
//!    several shards outside a transaction runs as a transaction of its
//!    own, so it is atomic. A read over several shards outside a
//!    transaction is checked to be one consistent cut
//!    (`executor/snapshot.rs`) before any row is sent.
//! 6. Rows stream back part by part (columns, row batches, `Done`;
//!    `executor/output.rs`); a one-shard read is relayed as the storage
//!    server produces it, shard streams are read and merged by
//!    `drsdb_common::stream`. A query outside a transaction whose answer
//!    is the concatenation or merge of its shards' answers is not carried
//!    here at all (direct streaming): the client gets one fragment per
//!    shard, the shard's read signed with the cluster's ticket key
//!    (`drsdb_common::ticket`), reads them from the storage servers and
//!    combines them itself with the same `stream`; `metrics` counts the
//!    rows this server sent and the fragments it handed out. A read pinned
//!    to one shard by placeholders (`WHERE id = ?`), from a client that
//!    asks for routes, is answered with a route first
//!    (`executor/scatter.rs`, `send_route`): the statement signed, and how
//!    its parameters pick the shard. The client sends the same text with
//!    other parameters to that shard's leader itself from then on.
//! 7. After DDL the first shard's schema is recorded as the catalog in the
//!    meta group, where other index servers read it.
//!
//! `SHOW …` statements (`introspection`) answer from the storage servers'
//! Raft status and the meta group.
//!
//! ## Not yet
//! Hash joins (non-key joins gather their tables here).
//! Autocommit writes carry the client's request id and are applied once
//! (over several shards, through a claim at one shard: `executor::txn`),
//! so they are re-sent after a lost reply; statements inside transactions
//! are not.

mod catalog;
mod executor;
mod grpc_tier;
mod insert;
mod introspection;
mod keys;
mod meta;
mod metrics;
mod planner;
mod pushdown;
mod server;
mod service;

/// The SQL tier without its gRPC service, over any `StorageTier` (tests
/// run it over `drsdb_storage::InProcessTier`).
pub use executor::{Executor, PartSender};
pub use server::serve;
