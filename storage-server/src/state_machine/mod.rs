//! A group's state machine: a SQLite database that applies committed
//! commands in log order.
//!
//! ## Files (in the group's directory)
//! - `data-N.db`: the database of generation N. Installing a snapshot
//!   writes generation N+1 and switches to it; `CURRENT` names the live one.
//! - `snapshot-T-I.db` + `snapshot.meta`: the latest snapshot (a
//!   `VACUUM INTO` copy) and its metadata (a `SnapshotRecord` message).
//!
//! Inside the database, `_drsdb_raft` holds the applied state (an
//! `AppliedState` message) and `_drsdb_requests` the outcome of each
//! recently applied request id (an `Outcome` message), `_drsdb_txns` the
//! end of each recent transaction. Every record carries its format version
//! (`codec`).
//!
//! ## Invariants
//! - The row of `_drsdb_raft` holds the applied log id and membership, and
//!   is written in the same SQLite transaction as the effects of the entries
//!   it covers. So the database is always a consistent prefix of the log:
//!   after a crash, openraft re-applies from that id.
//! - A transaction keeps a SQLite transaction open across entries (module
//!   `txn`: its steps, two-phase commit, wound-wait). While it is open the
//!   `_drsdb_raft` row stays at the entry before its `Begin`; entries
//!   applied meanwhile advance only the in-memory applied id. Other writes
//!   are answered `Busy` without effect (their proposer re-proposes them
//!   once the group is free), so replaying from the row's id rebuilds
//!   exactly the same state, open (and prepared) transaction included.
//! - `_drsdb_txns` records how each transaction ended here (committed, with
//!   its participants, or rolled back), written in the same SQLite
//!   transaction as its effects; an anchor's record is the transaction's
//!   decision.
//! - Readers use their own read-only connections and see only committed
//!   data; snapshots are taken the same way, so a snapshot never contains
//!   an uncommitted transaction and its id is the row's id.
//! - An error from SQLite that is the environment's (I/O, disk full,
//!   corruption) fails `apply`, which stops this replica's Raft: a replica
//!   stops rather than diverges. A statement's own error is its result.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use drsdb_common::command::{outcome_from_pb, outcome_to_pb, Command, CommandResult, Outcome, Statement};
use drsdb_common::{Error, GroupId, TxnId};
use drsdb_proto as pb;
use drsdb_sqlite::{Db, Failure};
use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, RaftSnapshotBuilder};
use prost::Message;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use tokio::sync::watch;

use crate::codec;
use crate::types::{LogId, Payload, SnapshotMeta, StoredMembership, TypeConfig};

/// The snapshot a group hands to openraft: an open file holding a SQLite
/// database. Open handles keep the data readable even after a newer
/// snapshot replaces the file.
pub type SnapshotData = std::fs::File;
type Snapshot = openraft::storage::Snapshot<
    openraft::type_config::alias::CommittedLeaderIdOf<TypeConfig>,
    u64,
    openraft::BasicNode,
    SnapshotData,
>;

const CURRENT_FILE: &str = "CURRENT";
/// Idle read-only connections kept per group.
const IDLE_READERS: usize = 8;
const SNAPSHOT_META_FILE: &str = "snapshot.meta";

mod txn;

/// The transaction holding the group, as seen by this replica.
#[derive(Debug, Clone, PartialEq)]
pub struct Holder {
    /// The transaction.
    pub txn: TxnId,
    /// Set once it is prepared: the group whose record decides it. A
    /// prepared transaction is never rolled back for idleness; the
    /// resolver asks its anchor.
    pub prepared: Option<GroupId>,
    /// When this replica last applied one of its commands (local clock;
    /// the leader uses it to roll back idle transactions).
    pub last_activity: Instant,
    /// When this replica applied its BEGIN (local clock; the leader rolls
    /// back transactions that run too long).
    pub started: Instant,
    /// One statement's own transaction (see `TxnCommand::statement`).
    pub statement: bool,
}

/// A group's state machine. Clones share the same database.
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Mutex<Inner>>,
    shared: Arc<Shared>,
}

/// What readers and the write path need without taking the apply lock.
pub struct Shared {
    dir: PathBuf,
    /// Path of the live database file.
    current: Mutex<PathBuf>,
    /// The transaction holding the group, if any.
    holder: watch::Sender<Option<Holder>>,
    /// Idle read-only connections, with the file each is on.
    readers: Mutex<Vec<(PathBuf, Db)>>,
    /// Held while snapshot files are written or recorded.
    snapshots: Mutex<()>,
    /// Transactions over several shards committed here (`_drsdb_commits`,
    /// as of the last commit).
    commits: std::sync::atomic::AtomicU64,
}

/// A read-only connection on a group's committed data; back to the pool
/// when dropped.
pub struct Reader {
    db: Option<Db>,
    path: PathBuf,
    shared: Arc<Shared>,
}

impl std::ops::Deref for Reader {
    type Target = Db;
    fn deref(&self) -> &Db {
        self.db.as_ref().expect("present until dropped")
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let Some(db) = self.db.take() else { return };
        // A connection on a replaced database file is closed, not kept.
        if self.path == self.shared.current_db() {
            let mut idle = self.shared.readers.lock().expect("readers lock");
            if idle.len() < IDLE_READERS {
                idle.push((self.path.clone(), db));
            }
        }
    }
}

impl Shared {
    /// A read-only connection on the live database (reused when one is idle).
    pub fn reader(self: &Arc<Self>) -> rusqlite::Result<Reader> {
        let path = self.current_db();
        let idle = self.readers.lock().expect("readers lock").pop();
        let db = match idle {
            Some((p, db)) if p == path => db,
            _ => Db::open_reader(&path)?,
        };
        Ok(Reader { db: Some(db), path, shared: self.clone() })
    }

    /// Path of the live database, for opening a reader.
    pub fn current_db(&self) -> PathBuf {
        self.current.lock().expect("current lock").clone()
    }

    /// Takes a consistent copy of the committed database. Runs beside
    /// apply (it reads committed data through its own connection); only
    /// snapshot files are locked.
    fn build_snapshot(&self) -> io::Result<(SnapshotMeta, std::fs::File)> {
        let shared = self;
        let _files = self.snapshots.lock().expect("snapshots lock");
        let tmp = shared.dir.join("snapshot.building");
        let _ = std::fs::remove_file(&tmp);
        // A separate connection sees only committed data.
        let source =
            Connection::open_with_flags(shared.current_db(), OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(to_io)?;
        source.execute("VACUUM INTO ?1", [tmp.to_string_lossy()]).map_err(to_io)?;
        drop(source);
        // The live database commits without fsync (`Db::open_writer`); make
        // it durable up to the snapshot, whose entries the log may purge.
        let live = shared.current_db();
        for file in [live.clone(), PathBuf::from(format!("{}-wal", live.display()))] {
            match std::fs::File::open(&file) {
                Ok(f) => f.sync_all()?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let copy = Connection::open_with_flags(&tmp, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(to_io)?;
        let (last_log_id, last_membership) = read_applied(&copy)?;
        drop(copy);
        std::fs::File::open(&tmp)?.sync_all()?;
        let meta = SnapshotMeta { last_log_id, last_membership };
        let path = shared.dir.join(snapshot_file_name(&meta));
        std::fs::rename(&tmp, &path)?;
        let file = std::fs::File::open(&path)?;
        record_snapshot(shared, &meta, &path)?;
        Ok((meta, file))
    }

    /// Watches which transaction holds the group.
    pub fn holder(&self) -> watch::Receiver<Option<Holder>> {
        self.holder.subscribe()
    }

    /// Transactions over several shards committed here so far.
    pub fn commits(&self) -> u64 {
        self.commits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

struct Inner {
    db: Db,
    generation: u64,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// The transaction holding the group.
    txn: Option<txn::Open>,
    /// Aborts decided (by `Resolve`) while another transaction held the
    /// group, so that no write of their own could record them: written
    /// with the next write (`write_applied`). Replaying the log rebuilds
    /// them like the open transaction.
    unrecorded: Vec<(TxnId, i64)>,
}

/// The current snapshot: what it covers and its file's name.
struct SnapshotRecord {
    meta: SnapshotMeta,
    file: String,
}

fn to_io(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn db_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("data-{generation}.db"))
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename, fsync dir).
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Creates the bookkeeping tables if needed and reads the applied state.
fn load_applied(db: &Db) -> io::Result<(Option<LogId>, StoredMembership)> {
    db.internal(|c| {
        c.execute_batch(
            "CREATE TABLE IF NOT EXISTS _drsdb_raft(id INTEGER PRIMARY KEY CHECK (id = 0), state BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS _drsdb_requests(id TEXT PRIMARY KEY, at_ms INTEGER NOT NULL, outcome BLOB NOT NULL);
             CREATE INDEX IF NOT EXISTS _drsdb_requests_at ON _drsdb_requests(at_ms);
             CREATE TABLE IF NOT EXISTS _drsdb_txns(id TEXT PRIMARY KEY, committed INTEGER NOT NULL, \
               at_ms INTEGER NOT NULL, participants BLOB NOT NULL);
             CREATE INDEX IF NOT EXISTS _drsdb_txns_at ON _drsdb_txns(at_ms);
             CREATE TABLE IF NOT EXISTS _drsdb_commits(id INTEGER PRIMARY KEY CHECK (id = 0), n INTEGER NOT NULL);",
        )
    })
    .map_err(to_io)?;
    db.internal(|c| Ok(read_applied(c))).map_err(to_io)?
}

impl StateMachine {
    /// Opens the state machine in `dir`, creating an empty one if needed.
    pub fn open(dir: &Path) -> io::Result<StateMachine> {
        std::fs::create_dir_all(dir)?;
        let generation = match std::fs::read_to_string(dir.join(CURRENT_FILE)) {
            Ok(s) => s.trim().parse::<u64>().map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("corrupt {}: {e}", dir.join(CURRENT_FILE).display()))
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                write_atomic(&dir.join(CURRENT_FILE), b"0")?;
                0
            }
            Err(e) => return Err(e),
        };
        let path = db_path(dir, generation);
        let db = Db::open_writer(&path).map_err(to_io)?;
        let (last_applied, membership) = load_applied(&db)?;
        let commits = db.internal(committed_count).map_err(to_io)?;
        let (holder, _) = watch::channel(None);
        Ok(StateMachine {
            inner: Arc::new(Mutex::new(Inner {
                db,
                generation,
                last_applied,
                membership,
                txn: None,
                unrecorded: Vec::new(),
            })),
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                current: Mutex::new(path),
                holder,
                readers: Mutex::new(Vec::new()),
                snapshots: Mutex::new(()),
                commits: commits.into(),
            }),
        })
    }

    /// The parts readers and the write path use.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Inner, &Shared) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let inner = self.inner.clone();
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || f(&mut inner.lock().expect("state machine lock"), &shared))
            .await
            .map_err(to_io)?
    }
}

impl Inner {
    /// Writes the applied state into the open SQLite transaction, with the
    /// aborts not recorded yet (cleared once it commits).
    fn write_applied(&self) -> io::Result<()> {
        for (txn, at_ms) in &self.unrecorded {
            self.record(txn, false, *at_ms, &[])?;
        }
        let state = pb::AppliedState {
            format: codec::FORMAT_VERSION,
            applied: codec::opt_log_id_to_pb(&self.last_applied),
            membership: Some(codec::stored_membership_to_pb(&self.membership)),
        }
        .encode_to_vec();
        self.db
            .internal(|c| c.execute("INSERT OR REPLACE INTO _drsdb_raft(id, state) VALUES (0, ?1)", [state]))
            .map_err(to_io)?;
        Ok(())
    }

    /// Runs `f` in its own SQLite transaction that also records the applied
    /// state. Outside explicit transactions only.
    fn in_write_txn<T>(&mut self, f: impl FnOnce(&mut Inner) -> io::Result<T>) -> io::Result<T> {
        self.db.internal(|c| c.execute_batch("BEGIN IMMEDIATE")).map_err(to_io)?;
        let r = f(self).and_then(|v| {
            self.write_applied()?;
            self.db.internal(|c| c.execute_batch("COMMIT")).map_err(to_io)?;
            self.unrecorded.clear();
            Ok(v)
        });
        if r.is_err() && !self.db.is_autocommit() {
            let _ = self.db.internal(|c| c.execute_batch("ROLLBACK"));
        }
        r
    }

    /// Publishes the holder after a command of its (activity now).
    fn set_holder(&self, shared: &Shared) {
        let now = Instant::now();
        let holding = self.txn.as_ref().map(|o| &o.id);
        let started = shared.holder.borrow().as_ref().filter(|h| Some(&h.txn) == holding).map(|h| h.started);
        let holder = self.txn.as_ref().map(|o| Holder {
            txn: o.id.clone(),
            prepared: o.prepared,
            statement: o.statement,
            last_activity: now,
            started: started.unwrap_or(now),
        });
        shared.holder.send_replace(holder);
    }

    fn apply(&mut self, shared: &Shared, log_id: LogId, payload: Payload) -> io::Result<CommandResult> {
        let before = self.last_applied.replace(log_id);
        let command = match payload {
            EntryPayload::Blank => None,
            EntryPayload::Membership(m) => {
                self.membership = StoredMembership::new(Some(log_id), m);
                None
            }
            EntryPayload::Normal(c) => Some(c),
        };
        let Some(command) = command else {
            if self.txn.is_none() {
                self.in_write_txn(|_| Ok(()))?;
            }
            return Ok(CommandResult::None);
        };
        match command {
            Command::Batch(statements) => {
                if let Some(holder) = &self.txn {
                    return Ok(CommandResult::Busy(holder.id.clone()));
                }
                let outcomes = self.in_write_txn(|me| me.run_batch(&statements))?;
                Ok(CommandResult::Batch(outcomes))
            }
            Command::Txn(command) => self.apply_txn(shared, before, command),
        }
    }

    /// Runs a batch's statements in the open SQLite transaction. A statement
    /// that ends the whole transaction (`ON CONFLICT ROLLBACK`, an
    /// interrupted write) keeps its error; the transaction is begun again
    /// and the statements before it run again, which gives the same results
    /// on every replica since they are deterministic.
    fn run_batch(&mut self, statements: &[Statement]) -> io::Result<Vec<Outcome>> {
        let mut ended_txn: std::collections::BTreeMap<usize, Error> = Default::default();
        'attempt: loop {
            self.forget_old_requests(statements)?;
            let mut outcomes = Vec::with_capacity(statements.len());
            for (i, statement) in statements.iter().enumerate() {
                if let Some(e) = ended_txn.get(&i) {
                    outcomes.push(Err(e.clone()));
                    continue;
                }
                let outcome = self.run_once(statement)?;
                if self.db.is_autocommit() {
                    let e = outcome.err().unwrap_or_else(|| Error::invalid("the statement ended the transaction"));
                    ended_txn.insert(i, e);
                    self.db.internal(|c| c.execute_batch("BEGIN IMMEDIATE")).map_err(to_io)?;
                    continue 'attempt;
                }
                outcomes.push(outcome);
            }
            return Ok(outcomes);
        }
    }

    /// Drops request ids and transaction records older than their memory
    /// windows, by the batch's clock.
    fn forget_old_requests(&self, statements: &[Statement]) -> io::Result<()> {
        use drsdb_common::command::{REQUEST_MEMORY_MS, TXN_RECORD_MEMORY_MS};
        let Some(now) = statements.iter().map(|s| s.now_ms).max() else { return Ok(()) };
        self.db
            .internal(|c| {
                c.execute("DELETE FROM _drsdb_requests WHERE at_ms < ?1", [now - REQUEST_MEMORY_MS])?;
                c.execute("DELETE FROM _drsdb_txns WHERE at_ms < ?1", [now - TXN_RECORD_MEMORY_MS])
            })
            .map_err(to_io)?;
        Ok(())
    }

    /// Runs an autocommit statement unless its request id was applied
    /// already, in which case the first outcome is returned again.
    fn run_once(&mut self, statement: &Statement) -> io::Result<Outcome> {
        let Some(id) = &statement.request_id else { return self.run_in_savepoint(statement) };
        if let Some(outcome) = self.request_outcome(id)? {
            return Ok(outcome);
        }
        let outcome = self.run_in_savepoint(statement)?;
        if self.db.is_autocommit() {
            // The statement ended the batch's transaction; the batch runs
            // again without it (see `run_batch`).
            return Ok(outcome);
        }
        if let Err(Error::StaleSchema { .. }) = outcome {
            // Not run: the index server plans it again and sends it with
            // the same id.
            return Ok(outcome);
        }
        self.record_request(id, statement.now_ms, &outcome)?;
        Ok(outcome)
    }

    /// The recorded outcome of request `id`, if it was applied here (and
    /// is still remembered).
    fn request_outcome(&self, id: &str) -> io::Result<Option<Outcome>> {
        let seen: Option<Vec<u8>> = self
            .db
            .internal(|c| {
                c.query_row("SELECT outcome FROM _drsdb_requests WHERE id = ?1", [id], |r| r.get(0)).optional()
            })
            .map_err(to_io)?;
        let Some(outcome) = seen else { return Ok(None) };
        let outcome = codec::decode(&outcome, "a request record")?;
        outcome_from_pb(outcome)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("corrupt request record: {e}")))
    }

    /// Records the outcome of request `id`, in the open SQLite transaction.
    fn record_request(&self, id: &str, at_ms: i64, outcome: &Outcome) -> io::Result<()> {
        let recorded = outcome_to_pb(outcome.clone()).encode_to_vec();
        self.db
            .internal(|c| {
                c.execute(
                    "INSERT INTO _drsdb_requests(id, at_ms, outcome) VALUES (?1, ?2, ?3)",
                    rusqlite::params![id, at_ms, recorded],
                )
            })
            .map_err(to_io)?;
        Ok(())
    }

    /// Runs one autocommit statement of a batch inside a savepoint, so that
    /// its failure undoes only itself.
    fn run_in_savepoint(&mut self, statement: &Statement) -> io::Result<Outcome> {
        self.db.internal(|c| c.execute_batch("SAVEPOINT _drsdb_statement")).map_err(to_io)?;
        let outcome = match self.db.run_collect(statement) {
            Ok(r) => Ok(r),
            Err(Failure::Statement(e)) => Err(e),
            Err(Failure::Environment(e)) => return Err(e),
        };
        if self.db.is_autocommit() {
            // The statement rolled back the whole transaction, savepoint included.
            return Ok(outcome);
        }
        let finish = if outcome.is_ok() {
            "RELEASE _drsdb_statement"
        } else {
            "ROLLBACK TO _drsdb_statement; RELEASE _drsdb_statement"
        };
        self.db.internal(|c| c.execute_batch(finish)).map_err(to_io)?;
        Ok(outcome)
    }

    fn install_snapshot(&mut self, shared: &Shared, meta: &SnapshotMeta, mut data: SnapshotData) -> io::Result<()> {
        use std::io::Seek;
        let _files = shared.snapshots.lock().expect("snapshots lock");
        // Keep a copy as our own current snapshot.
        let snapshot_path = shared.dir.join(snapshot_file_name(meta));
        {
            let receiving = shared.dir.join("snapshot.receiving");
            let mut out = std::fs::File::create(&receiving)?;
            data.rewind()?;
            io::copy(&mut data, &mut out)?;
            out.sync_all()?;
            std::fs::rename(&receiving, &snapshot_path)?;
        }
        // The next generation of the live database is a copy of it.
        let next = self.generation + 1;
        let next_path = db_path(&shared.dir, next);
        let _ = std::fs::remove_file(&next_path);
        std::fs::copy(&snapshot_path, &next_path)?;
        std::fs::File::open(&next_path)?.sync_all()?;
        let db = Db::open_writer(&next_path).map_err(to_io)?;
        let (applied, membership) = load_applied(&db)?;
        if applied != meta.last_log_id {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("snapshot claims {:?} but holds {:?}", meta.last_log_id, applied),
            ));
        }
        write_atomic(&shared.dir.join(CURRENT_FILE), next.to_string().as_bytes())?;
        let old = std::mem::replace(&mut self.db, db);
        drop(old);
        let old_path = db_path(&shared.dir, self.generation);
        self.generation = next;
        *shared.current.lock().expect("current lock") = next_path;
        shared.readers.lock().expect("readers lock").clear();
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", old_path.display()));
        }
        self.last_applied = applied;
        self.membership = membership;
        self.txn = None;
        self.unrecorded.clear();
        shared.commits.store(self.db.internal(committed_count).map_err(to_io)?, std::sync::atomic::Ordering::SeqCst);
        self.set_holder(shared);
        record_snapshot(shared, meta, &snapshot_path)
    }
}

/// How many transactions over several shards `c`'s database (or its read
/// snapshot) has committed.
pub fn committed_count(c: &Connection) -> rusqlite::Result<u64> {
    let n: Option<i64> = c.query_row("SELECT n FROM _drsdb_commits WHERE id = 0", [], |r| r.get(0)).optional()?;
    Ok(n.unwrap_or(0) as u64)
}

/// Reads the applied state recorded in a database.
fn read_applied(c: &Connection) -> io::Result<(Option<LogId>, StoredMembership)> {
    let row: Option<Vec<u8>> = c
        .query_row("SELECT state FROM _drsdb_raft WHERE id = 0", [], |r| r.get(0))
        .optional()
        .map_err(|e| match e.to_string().contains("no such column") {
        // Format 1 kept the state as JSON columns.
        true => io::Error::from(codec::check_format(1, "the database's applied state").unwrap_err()),
        false => to_io(e),
    })?;
    let Some(row) = row else { return Ok((None, StoredMembership::default())) };
    let state: pb::AppliedState = codec::decode(&row, "the applied state")?;
    codec::check_format(state.format, "the database's applied state")?;
    Ok((codec::opt_log_id_from_pb(state.applied), codec::stored_membership_from_pb(state.membership)?))
}

fn snapshot_file_name(meta: &SnapshotMeta) -> String {
    match &meta.last_log_id {
        Some(l) => format!("snapshot-{}-{}.db", l.leader_id.term, l.index),
        None => "snapshot-0-0.db".into(),
    }
}

/// Makes `path` the current snapshot and removes older snapshot files,
/// unless a newer snapshot is recorded already (a build that raced with an
/// install). Callers hold `Shared::snapshots`.
fn record_snapshot(shared: &Shared, meta: &SnapshotMeta, path: &Path) -> io::Result<()> {
    if let Some(current) = recorded_snapshot(shared)? {
        if current.meta.last_log_id > meta.last_log_id {
            let _ = std::fs::remove_file(path);
            return Ok(());
        }
    }
    let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let record = pb::SnapshotRecord {
        format: codec::FORMAT_VERSION,
        meta: Some(codec::snapshot_meta_to_pb(meta)),
        file: file.clone(),
    };
    write_atomic(&shared.dir.join(SNAPSHOT_META_FILE), &record.encode_to_vec())?;
    for entry in std::fs::read_dir(&shared.dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with("snapshot-") && name.ends_with(".db") && name != file {
            // Senders that opened an older snapshot keep reading it.
            let _ = std::fs::remove_file(shared.dir.join(name));
        }
    }
    Ok(())
}

/// The current snapshot's record, if there is one.
fn recorded_snapshot(shared: &Shared) -> io::Result<Option<SnapshotRecord>> {
    let bytes = match std::fs::read(shared.dir.join(SNAPSHOT_META_FILE)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let record: pb::SnapshotRecord = codec::decode(&bytes, "the snapshot record")?;
    codec::check_format(record.format, "the snapshot record")?;
    Ok(Some(SnapshotRecord { meta: codec::snapshot_meta_from_pb(record.meta)?, file: record.file }))
}

fn current_snapshot(shared: &Shared) -> io::Result<Option<Snapshot>> {
    let Some(record) = recorded_snapshot(shared)? else { return Ok(None) };
    let file = std::fs::File::open(shared.dir.join(&record.file))?;
    Ok(Some(Snapshot { meta: record.meta, snapshot: file }))
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        let shared = self.shared.clone();
        let (meta, file) = tokio::task::spawn_blocking(move || shared.build_snapshot()).await.map_err(to_io)??;
        tracing::info!(last_log_id = ?meta.last_log_id, "built snapshot");
        Ok(Snapshot { meta, snapshot: file })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        self.blocking(|inner, _| Ok((inner.last_applied, inner.membership.clone()))).await
    }

    async fn apply<S>(&mut self, mut entries: S) -> io::Result<()>
    where
        S: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + Send,
    {
        let mut batch = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            batch.push((entry, responder));
        }
        let responders = self
            .blocking(move |inner, shared| {
                let mut out = Vec::with_capacity(batch.len());
                for (entry, responder) in batch {
                    let result = inner.apply(shared, entry.log_id, entry.payload)?;
                    out.push((responder, result));
                }
                Ok(out)
            })
            .await?;
        for (responder, result) in responders {
            if let Some(r) = responder {
                r.send(result);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotData) -> io::Result<()> {
        let meta = meta.clone();
        tracing::info!(last_log_id = ?meta.last_log_id, "installing snapshot");
        self.blocking(move |inner, shared| inner.install_snapshot(shared, &meta, snapshot)).await
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let _files = shared.snapshots.lock().expect("snapshots lock");
            current_snapshot(&shared)
        })
        .await
        .map_err(to_io)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drsdb_common::command::{Decision, StatementResult, Step, TxnCommand, TxnState};
    use openraft::impls::leader_id_adv::LeaderId;

    fn log_id(index: u64) -> LogId {
        LogId::new(LeaderId { term: 1, node_id: 1 }, index)
    }

    fn stmt(sql: &str) -> Statement {
        Statement { seed: 1, ..Statement::new(sql) }
    }

    fn apply(sm: &StateMachine, index: u64, command: Command) -> CommandResult {
        let mut inner = sm.inner.lock().unwrap();
        inner.apply(&sm.shared, log_id(index), Payload::Normal(command)).unwrap()
    }

    /// Applies a batch whose second statement repeats the first's key, on a
    /// table made by `create`; returns the outcomes and the keys stored.
    fn batch_with_a_duplicate(create: &str) -> (Vec<Outcome>, drsdb_common::Value) {
        let dir = tempfile::tempdir().unwrap();
        let sm = StateMachine::open(dir.path()).unwrap();
        apply(&sm, 1, Command::Batch(vec![stmt(create)]));
        let batch = ["INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (2), (3)"];
        let r = apply(&sm, 2, Command::Batch(batch.into_iter().map(stmt).collect()));
        let CommandResult::Batch(outcomes) = r else { panic!("{r:?}") };
        let reader = Db::open_reader(&sm.shared.current_db()).unwrap();
        let mut rows =
            reader.run_collect(&stmt("SELECT group_concat(a) FROM (SELECT a FROM t ORDER BY a)")).unwrap().rows;
        (outcomes, rows.remove(0).remove(0))
    }

    #[test]
    fn a_failing_statement_does_not_fail_its_batch_neighbours() {
        let (outcomes, keys) = batch_with_a_duplicate("CREATE TABLE t(a INTEGER PRIMARY KEY)");
        assert!(outcomes[0].is_ok() && outcomes[2].is_ok(), "{outcomes:?}");
        assert!(outcomes[1].as_ref().unwrap_err().to_string().contains("UNIQUE"));
        assert_eq!(keys, drsdb_common::Value::Text("1,2,3".into()));
    }

    #[test]
    fn a_statement_that_rolls_back_the_batch_fails_alone() {
        // ON CONFLICT ROLLBACK ends the batch's whole SQLite transaction.
        let (outcomes, keys) = batch_with_a_duplicate("CREATE TABLE t(a INTEGER PRIMARY KEY ON CONFLICT ROLLBACK)");
        assert!(outcomes[0].is_ok() && outcomes[1].is_err() && outcomes[2].is_ok(), "{outcomes:?}");
        assert_eq!(keys, drsdb_common::Value::Text("1,2,3".into()));
    }

    #[test]
    fn a_request_applies_once() {
        let dir = tempfile::tempdir().unwrap();
        let sm = StateMachine::open(dir.path()).unwrap();
        apply(&sm, 1, Command::Batch(vec![stmt("CREATE TABLE t(a INTEGER PRIMARY KEY AUTOINCREMENT, b)")]));
        let insert = Statement { request_id: Some("s1-7".into()), ..stmt("INSERT INTO t(b) VALUES ('x') RETURNING a") };
        let first = apply(&sm, 2, Command::Batch(vec![insert.clone()]));
        let again = apply(&sm, 3, Command::Batch(vec![insert.clone(), insert]));
        let CommandResult::Batch(first) = first else { panic!() };
        let CommandResult::Batch(again) = again else { panic!() };
        assert_eq!(again, vec![first[0].clone(), first[0].clone()], "the first outcome, RETURNING rows included");
        let reader = Db::open_reader(&sm.shared.current_db()).unwrap();
        let rows = reader.run_collect(&stmt("SELECT count(*) FROM t")).unwrap().rows;
        assert_eq!(rows[0][0], drsdb_common::Value::Integer(1));
    }

    #[test]
    fn a_request_refused_for_its_schema_version_runs_when_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        let sm = StateMachine::open(dir.path()).unwrap();
        apply(&sm, 1, Command::Batch(vec![stmt("CREATE TABLE t(a)")]));
        let insert = |v| Statement {
            request_id: Some("s1-8".into()),
            schema_version: Some(v),
            ..stmt("INSERT INTO t VALUES (1)")
        };
        let CommandResult::Batch(refused) = apply(&sm, 2, Command::Batch(vec![insert(0)])) else { panic!() };
        let Err(Error::StaleSchema { version }) = refused[0] else { panic!("{refused:?}") };
        let CommandResult::Batch(ran) = apply(&sm, 3, Command::Batch(vec![insert(version)])) else { panic!() };
        assert_eq!(ran[0].as_ref().map(|r| r.rows_affected), Ok(1));
    }

    fn txn(id: &str, steps: Vec<Step>) -> Command {
        Command::Txn(TxnCommand { txn: TxnId(id.into()), now_ms: 1, steps, statement: false, no_wait: false })
    }

    fn busy(holder: &str) -> CommandResult {
        CommandResult::Busy(TxnId(holder.into()))
    }

    fn count(sm: &StateMachine) -> drsdb_common::Value {
        let reader = Db::open_reader(&sm.shared.current_db()).unwrap();
        reader.run_collect(&stmt("SELECT count(*) FROM t")).unwrap().rows.remove(0).remove(0)
    }

    fn holder(sm: &StateMachine) -> Option<(String, Option<GroupId>)> {
        sm.shared.holder().borrow().as_ref().map(|h| (h.txn.0.clone(), h.prepared))
    }

    #[test]
    fn an_open_transaction_holds_the_group_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let insert = || Step::Run(stmt("INSERT INTO t VALUES (1)"));
        {
            let sm = StateMachine::open(dir.path()).unwrap();
            apply(&sm, 1, Command::Batch(vec![stmt("CREATE TABLE t(a)")]));
            apply(&sm, 2, txn("t1", vec![Step::Begin, insert()]));
            assert_eq!(apply(&sm, 3, Command::Batch(vec![stmt("INSERT INTO t VALUES (2)")])), busy("t1"));
            apply(&sm, 4, txn("t1", vec![Step::Prepare { anchor: GroupId(7) }]));
            assert_eq!(holder(&sm), Some(("t1".into(), Some(GroupId(7)))));
        }
        // Reopened (a crash): the database holds what preceded the Begin,
        // so openraft replays entries 2.. and rebuilds the transaction,
        // prepared.
        let sm = StateMachine::open(dir.path()).unwrap();
        let applied = sm.inner.lock().unwrap().last_applied;
        assert_eq!(applied, Some(log_id(1)));
        apply(&sm, 2, txn("t1", vec![Step::Begin, insert()]));
        assert_eq!(apply(&sm, 3, Command::Batch(vec![stmt("INSERT INTO t VALUES (2)")])), busy("t1"));
        apply(&sm, 4, txn("t1", vec![Step::Prepare { anchor: GroupId(7) }]));
        assert_eq!(holder(&sm), Some(("t1".into(), Some(GroupId(7)))));
        // Prepared: no more statements, no rollback; an older transaction waits.
        assert!(matches!(apply(&sm, 5, txn("t1", vec![insert()])), CommandResult::Txn(Err(Error::InvalidInput(_)))));
        assert!(matches!(apply(&sm, 6, txn("t1", vec![Step::Rollback])), CommandResult::Txn(Err(_))));
        assert_eq!(apply(&sm, 7, txn("t0", vec![Step::Begin])), busy("t1"));
        let participants = vec![GroupId(7), GroupId(8)];
        let commit = || txn("t1", vec![Step::Commit { participants: participants.clone(), request: None }]);
        assert_eq!(apply(&sm, 8, commit()), CommandResult::Txn(Ok(StatementResult::default())));
        assert!(holder(&sm).is_none());
        assert_eq!(count(&sm), drsdb_common::Value::Integer(1), "the busy batch had no effect");
        // Repeated, the commit answers as the first did; a Begin is refused.
        assert_eq!(apply(&sm, 9, commit()), CommandResult::Txn(Ok(StatementResult::default())));
        assert!(matches!(apply(&sm, 10, txn("t1", vec![Step::Begin])), CommandResult::Txn(Err(_))));
        assert_eq!(apply(&sm, 11, txn("t1", vec![Step::Resolve])), CommandResult::Resolved(Decision::Committed));
        // What the group knows of each, asked without changing anything.
        let inquire = |i, t| apply(&sm, i, txn(t, vec![Step::Inquire]));
        assert_eq!(inquire(12, "t1"), CommandResult::Inquired(TxnState::Ended(Decision::Committed)));
        apply(&sm, 13, txn("t2", vec![Step::Begin]));
        assert_eq!(inquire(14, "t2"), CommandResult::Inquired(TxnState::Open));
        apply(&sm, 15, txn("t2", vec![Step::Prepare { anchor: GroupId(9) }]));
        assert_eq!(inquire(16, "t2"), CommandResult::Inquired(TxnState::Prepared(GroupId(9))));
        assert_eq!(inquire(17, "t3"), CommandResult::Inquired(TxnState::Unknown));
        assert_eq!(holder(&sm), Some(("t2".into(), Some(GroupId(9)))));
        // Multi-shard commits are counted (reads check their snapshots by
        // it), a prepared one's too when the resolver commits it naming
        // this shard alone.
        assert_eq!(sm.shared.commits(), 1);
        apply(&sm, 18, txn("t2", vec![Step::Commit { participants: vec![GroupId(7)], request: None }]));
        assert_eq!(sm.shared.commits(), 2);
    }

    #[test]
    fn an_older_transaction_wounds_a_younger_one_and_a_younger_one_waits() {
        let dir = tempfile::tempdir().unwrap();
        let sm = StateMachine::open(dir.path()).unwrap();
        apply(&sm, 1, Command::Batch(vec![stmt("CREATE TABLE t(a)")]));
        apply(&sm, 2, txn("b", vec![Step::Begin, Step::Run(stmt("INSERT INTO t VALUES (1)"))]));
        assert_eq!(apply(&sm, 3, txn("c", vec![Step::Begin])), busy("b"), "younger waits");
        let older = apply(&sm, 4, txn("a", vec![Step::Begin, Step::Run(stmt("INSERT INTO t VALUES (2)"))]));
        assert!(matches!(older, CommandResult::Txn(Ok(_))), "{older:?}");
        assert_eq!(holder(&sm), Some(("a".into(), None)));
        // The wounded one learns it at its next step; its anchor's decision is abort.
        let CommandResult::Txn(Err(e)) = apply(&sm, 5, txn("b", vec![Step::Run(stmt("SELECT 1"))])) else { panic!() };
        assert!(matches!(e, Error::Retryable(ref m) if m.contains("rolled back")), "{e}");
        assert_eq!(apply(&sm, 6, txn("b", vec![Step::Resolve])), CommandResult::Resolved(Decision::Aborted));
        apply(&sm, 7, txn("a", vec![Step::Commit { participants: vec![], request: None }]));
        assert_eq!(count(&sm), drsdb_common::Value::Integer(1));
        // Replayed from the row, entries 2.. give the same state.
        drop(sm);
        let sm = StateMachine::open(dir.path()).unwrap();
        assert_eq!(sm.inner.lock().unwrap().last_applied, Some(log_id(7)));
    }

    #[test]
    fn a_command_that_opened_the_transaction_and_failed_leaves_the_group_free() {
        let dir = tempfile::tempdir().unwrap();
        let sm = StateMachine::open(dir.path()).unwrap();
        apply(&sm, 1, Command::Batch(vec![stmt("CREATE TABLE t(a PRIMARY KEY)")]));
        apply(&sm, 2, Command::Batch(vec![stmt("INSERT INTO t VALUES (1)")]));
        let steps = vec![
            Step::Begin,
            Step::Run(stmt("INSERT INTO t VALUES (1)")),
            Step::Commit { participants: vec![GroupId(1), GroupId(2)], request: None },
        ];
        let r = apply(&sm, 3, txn("x", steps));
        assert!(matches!(r, CommandResult::Txn(Err(Error::InvalidInput(ref m))) if m.contains("UNIQUE")), "{r:?}");
        assert!(holder(&sm).is_none());
        // Undecided, so the resolver's question records an abort (presumed abort).
        assert_eq!(apply(&sm, 4, txn("x", vec![Step::Resolve])), CommandResult::Resolved(Decision::Aborted));
        assert_eq!(apply(&sm, 5, txn("y", vec![Step::Resolve])), CommandResult::Resolved(Decision::Aborted));
        assert!(matches!(apply(&sm, 6, txn("y", vec![Step::Begin])), CommandResult::Txn(Err(Error::Retryable(_)))));
    }

    #[test]
    fn a_claimed_request_commits_once() {
        let dir = tempfile::tempdir().unwrap();
        let sm = StateMachine::open(dir.path()).unwrap();
        apply(&sm, 1, Command::Batch(vec![stmt("CREATE TABLE t(a)")]));
        let outcome = StatementResult { rows_affected: 1, ..StatementResult::default() };
        let first = vec![
            Step::Begin,
            Step::Claim("r".into()),
            Step::Run(stmt("INSERT INTO t VALUES (1)")),
            Step::Commit { participants: vec![GroupId(1), GroupId(2)], request: Some(("r".into(), outcome.clone())) },
        ];
        assert!(matches!(apply(&sm, 2, txn("x", first)), CommandResult::Txn(Ok(_))));
        let again = vec![Step::Begin, Step::Claim("r".into()), Step::Run(stmt("INSERT INTO t VALUES (1)"))];
        assert_eq!(apply(&sm, 3, txn("y", again)), CommandResult::Replayed(Ok(outcome)));
        assert!(holder(&sm).is_none(), "the claim's transaction is rolled back here");
        assert_eq!(count(&sm), drsdb_common::Value::Integer(1));
    }

    #[test]
    fn an_anchor_held_by_another_transaction_still_decides() {
        let dir = tempfile::tempdir().unwrap();
        {
            let sm = StateMachine::open(dir.path()).unwrap();
            apply(&sm, 1, Command::Batch(vec![stmt("CREATE TABLE t(a)")]));
            apply(&sm, 2, txn("h", vec![Step::Begin, Step::Run(stmt("INSERT INTO t VALUES (1)"))]));
            assert_eq!(apply(&sm, 3, txn("x", vec![Step::Resolve])), CommandResult::Resolved(Decision::Aborted));
            assert!(matches!(apply(&sm, 4, txn("x", vec![Step::Begin])), CommandResult::Txn(Err(_))));
        }
        // Replayed from the row (before h's Begin), the abort is decided again.
        let sm = StateMachine::open(dir.path()).unwrap();
        apply(&sm, 2, txn("h", vec![Step::Begin, Step::Run(stmt("INSERT INTO t VALUES (1)"))]));
        assert_eq!(apply(&sm, 3, txn("x", vec![Step::Resolve])), CommandResult::Resolved(Decision::Aborted));
        apply(&sm, 4, txn("h", vec![Step::Commit { participants: vec![], request: None }]));
        assert_eq!(apply(&sm, 5, txn("x", vec![Step::Resolve])), CommandResult::Resolved(Decision::Aborted));
        let reader = Db::open_reader(&sm.shared.current_db()).unwrap();
        let committed: i64 = reader
            .internal(|c| c.query_row("SELECT committed FROM _drsdb_txns WHERE id = 'x'", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(committed, 0, "written with h's commit");
    }
}
