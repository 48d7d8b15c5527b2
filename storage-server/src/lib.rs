//! # drsdb storage server
//!
//! A storage server hosts replicas of several Raft groups. They share one
//! durable log (`log_store`: one SQLite file, one writer thread that makes
//! the appends of every group durable with one fsync per batch); each has
//! a state machine that is a SQLite database (`state_machine`), which
//! commits without fsync: after a crash, what it lost is applied again
//! from the log. The
//! commands in the log are the typed contract of `drsdb_common::command`
//! (protobuf on the wire and on disk, `codec`); a command applies the same
//! way on every replica because everything nondeterministic was fixed
//! before it was proposed: the statement's instant and the seed of its
//! random functions, which the deterministic SQLite of `drsdb_sqlite`
//! reads, with its step and memory budgets counted alike everywhere, so a
//! runaway statement fails on every replica the same way.
//!
//! Raft knows bytes: openraft's types cross the network and reach the disk
//! only as the messages of `proto/raft.proto`, each record with a format
//! version; a data directory in another format is refused at start.
//!
//! ## Data flow
//! - **Writes**: an index server calls `Storage.Write` on the group's
//!   leader. Autocommit statements queue in the group's write path
//!   (`group`), which proposes whatever has queued as one `Batch` entry:
//!   one Raft round, one fsync, one SQLite transaction for many clients,
//!   each statement in its own savepoint so that one failure does not fail
//!   its neighbours. A statement with a request id already applied in the
//!   last ten minutes is not run again; its first outcome is returned. The
//!   reply comes when the entry is applied.
//! - **Transactions**: a `Txn` command carries one transaction's steps on
//!   the group (begin, statements, prepare, commit, rollback, abort,
//!   resolve, claim: `state_machine::txn` has the rules: one holder at a
//!   time, wound-wait, two-phase commit with the decision recorded at an
//!   anchor group). Its SQLite transaction stays open across entries on
//!   every replica. Writes that reach the log meanwhile are answered `Busy`
//!   (naming the holder) and re-proposed once it lets go, unless the
//!   command says not to wait (`no_wait`): then `Busy` is its answer. The leader rolls
//!   back a transaction that is not prepared when it sits idle longer than
//!   `txn_idle_timeout_ms` (a statement's own: 5 s) or stays open longer
//!   than `txn_max_duration_ms`; a prepared one only its decision ends.
//! - **Reads**: `Storage.Read` on the leader makes sure it still leads
//!   (linearizable): on its lease while a majority acknowledged it within
//!   the last 80 % of a lease (`raft.lease_reads`, on by default; see
//!   `group`), else by a ReadIndex round, which the reads waiting behind
//!   it share. Then it streams rows from a pooled read-only connection,
//!   which sees committed data only; a reader that goes away cancels it,
//!   and `statement_timeout_ms` bounds it. The stream starts with the
//!   count of multi-shard commits in the read's snapshot, which
//!   `Storage.Commits` (count and prepared holder, after a barrier) lets
//!   index servers check a read over several shards against.
//!   Clients read too, but only through `Storage.ReadFragment`: the same
//!   read, carried by a ticket an index server signed with the cluster's
//!   ticket key (direct streaming), and `Storage.ReadRouted`: a signed
//!   route's statement with the client's parameters, run on the shard
//!   this server computes from them (without the commit count: its
//!   answer stands alone). Every other call requires a server
//!   certificate (`service`).
//! - **Raft traffic**: `network` carries openraft's messages, as the
//!   messages of `raft.proto`, over one gRPC channel per peer, tagged with
//!   the group id. AppendEntries messages of all groups to one peer share
//!   its outbox: those queued while a call is in flight leave together in
//!   the next. Snapshots stream as SQLite files.
//!
//! ## In tests
//! `InProcessTier` (`in_process`) hosts whole storage servers inside the
//! calling process and offers them to the SQL tier through
//! `drsdb_common::tier::StorageTier`, with fault hooks (lost or late
//! replies, failing calls, a stopped replica, a moved leader).
//!
//! ## Groups
//! A server hosts the groups the placement (`drsdb_common::shard`) gives
//! it: the meta group and its share of the data shards. A group's
//! preferred leader initializes it on first start and gets leadership back
//! after failovers (`server`).
//!
//! ## Not yet
//! Membership and placement are fixed at creation: no moving groups, no
//! adding servers; no follower reads.

mod codec;
#[cfg(test)]
mod conformance;
mod group;
mod in_process;
mod log_store;
mod network;
mod server;
mod service;
mod state_machine;
mod types;

pub use in_process::InProcessTier;
pub use server::serve;
