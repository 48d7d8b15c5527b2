//! The Raft logs of every group on this server, in one SQLite file
//! (`raft-log.db` in the data directory): one write-ahead log per server,
//! as TiKV's raft-engine and CockroachDB's per-node store do it.
//!
//! ## Data flow
//! Each group's [`LogStore`] hands its appends, votes and log changes to
//! the server's [`LogEngine`], whose writer thread takes everything that
//! has queued, from every group, and writes it as one SQLite transaction:
//! one fsync (WAL mode, `synchronous = FULL`) makes the appends of many
//! groups durable at once. Then it tells each group (openraft's
//! `IOFlushed` callback for appends; the waiting caller for votes,
//! truncations and purges). `append` returns as soon as its entries are
//! queued, so a group's Raft goes on (replicates, accepts the next append)
//! while the fsync runs.
//!
//! ## Invariants
//! - Operations reach the file in the order they were made (one queue,
//!   one writer), so a group's vote, appends, truncations and purges keep
//!   their order, and a completion means everything queued before it is
//!   durable too.
//! - Entries appended but not yet written are readable at once: each
//!   group keeps them in memory (`pending`) until their transaction
//!   commits; a read takes the pending entries first, then the file, so an
//!   entry moving from one to the other is never missed.
//! - `save_vote`, `truncate_after` and `purge` return once durable; the
//!   committed id is written with the next batch (openraft only reads it
//!   back at start, and a stale one is safe: it re-applies less).
//! - Rows are keyed by (group, index); each is a `LogEntry` message and
//!   every value a `LogMeta` message, with its format version (`codec`).
//!   Snapshots and purges stay per group.

use std::collections::BTreeMap;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use drsdb_common::GroupId;
use drsdb_proto as pb;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader};
use prost::Message;
use rusqlite::{Connection, OptionalExtension};
use tokio::sync::oneshot;

use crate::codec;
use crate::types::{Entry, LogId, TypeConfig, Vote};

/// The log file's name in the data directory.
pub const LOG_FILE: &str = "raft-log.db";
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "purged";
/// Most operations one transaction of the writer takes; more wait for the
/// next one.
const MAX_OPS_PER_FLUSH: usize = 4096;
/// Idle read-only connections kept.
const IDLE_READERS: usize = 8;
/// How long the writer waits for another connection's write to end.
const WRITER_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn to_io(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn corrupt(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn encode_entry(e: Entry) -> Vec<u8> {
    codec::entry_to_pb(e).encode_to_vec()
}

fn decode_entry(bytes: &[u8]) -> io::Result<Entry> {
    Ok(codec::entry_from_pb(codec::decode(bytes, "a log record")?)?)
}

/// A value of the key-value table.
enum MetaValue {
    Vote(Vote),
    LogId(Option<LogId>),
}

fn encode_meta(v: &MetaValue) -> Vec<u8> {
    use pb::log_meta::Value;
    let value = match v {
        MetaValue::Vote(v) => Value::Vote(codec::vote_to_pb(v)),
        MetaValue::LogId(Some(l)) => Value::LogId(codec::log_id_to_pb(l)),
        MetaValue::LogId(None) => Value::None(pb::Blank {}),
    };
    pb::LogMeta { format: codec::FORMAT_VERSION, value: Some(value) }.encode_to_vec()
}

fn decode_meta(bytes: &[u8]) -> io::Result<MetaValue> {
    use pb::log_meta::Value;
    let m: pb::LogMeta = codec::decode(bytes, "a log store value")?;
    codec::check_format(m.format, "a log store value")?;
    Ok(match m.value {
        Some(Value::Vote(v)) => MetaValue::Vote(codec::vote_from_pb(Some(v))?),
        Some(Value::LogId(l)) => MetaValue::LogId(Some(codec::log_id_from_pb(l))),
        Some(Value::None(_)) | None => MetaValue::LogId(None),
    })
}

/// A group's entries appended but not written yet, by index.
type Pending = Arc<Mutex<BTreeMap<u64, Entry>>>;

/// A change to the file, queued for the writer.
enum Op {
    /// Entries of a group; `flushed` hears when they are durable.
    Append { group: i64, entries: Vec<Entry>, pending: Pending, flushed: IOFlushed<TypeConfig> },
    /// Anything else; `done`, if any, hears when it is durable.
    Change { group: i64, change: Change, done: Option<oneshot::Sender<io::Result<()>>> },
}

enum Change {
    /// Sets a value of the key-value table.
    Meta(&'static str, Vec<u8>),
    /// Deletes the entries after this index.
    TruncateAfter(i64),
    /// Deletes the entries up to this index and records the purged id.
    Purge(i64, Vec<u8>),
}

/// The log file of a storage server, shared by all its groups. Dropping
/// the last handle stops the writer once it has written what is queued.
pub struct LogEngine {
    ops: mpsc::Sender<Op>,
    path: PathBuf,
    readers: Mutex<Vec<Connection>>,
}

impl LogEngine {
    /// Opens or creates the log file at `path` and starts its writer.
    pub fn open(path: &Path) -> io::Result<Arc<LogEngine>> {
        drsdb_sqlite::prepare();
        let conn = Connection::open(path).map_err(to_io)?;
        // A server restarted in the same process may open the file while
        // the previous writer finishes what was queued.
        conn.busy_timeout(WRITER_BUSY_TIMEOUT).map_err(to_io)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(to_io)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(to_io)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS log(grp INTEGER, idx INTEGER, entry BLOB NOT NULL, PRIMARY KEY(grp, idx))
                 WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS meta(grp INTEGER, key TEXT, value BLOB NOT NULL, PRIMARY KEY(grp, key))
                 WITHOUT ROWID;",
        )
        .map_err(to_io)?;
        let (ops, queue) = mpsc::channel();
        std::thread::Builder::new().name("raft-log-writer".into()).spawn(move || write_loop(conn, queue))?;
        Ok(Arc::new(LogEngine { ops, path: path.to_path_buf(), readers: Mutex::new(Vec::new()) }))
    }

    /// The log of group `id`.
    pub fn group(self: &Arc<Self>, id: GroupId) -> LogStore {
        let group = i64::try_from(id.0).expect("group ids fit in i64");
        LogStore { engine: self.clone(), group, pending: Pending::default(), committed: Default::default() }
    }

    fn queue(&self, op: Op) -> io::Result<()> {
        self.ops.send(op).map_err(|_| io::Error::other("the Raft log writer has stopped (an earlier write failed)"))
    }

    /// Queues a change and waits until it is durable.
    async fn change(&self, group: i64, change: Change) -> io::Result<()> {
        let (done, durable) = oneshot::channel();
        self.queue(Op::Change { group, change, done: Some(done) })?;
        durable.await.map_err(|_| io::Error::other("the Raft log writer has stopped"))?
    }

    /// Runs `f` on a read-only connection in the blocking pool.
    async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Connection) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let engine = self.clone();
        tokio::task::spawn_blocking(move || {
            let idle = engine.readers.lock().expect("log readers lock").pop();
            let conn = match idle {
                Some(c) => c,
                None => Connection::open_with_flags(&engine.path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                    .map_err(to_io)?,
            };
            let result = f(&conn);
            let mut idle = engine.readers.lock().expect("log readers lock");
            if idle.len() < IDLE_READERS {
                idle.push(conn);
            }
            result
        })
        .await
        .map_err(to_io)?
    }
}

/// The writer: takes what has queued, writes it as one transaction, then
/// reports. After a failed write it stops: what is queued and every later
/// operation fail, and openraft stops the groups (a log that may have lost
/// a write must not go on).
fn write_loop(mut conn: Connection, queue: mpsc::Receiver<Op>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_OPS_PER_FLUSH {
            match queue.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        match write_batch(&mut conn, &mut batch) {
            Ok(written) => {
                for (op, ids) in batch.into_iter().zip(written) {
                    report(op, &ids, None);
                }
            }
            Err(e) => {
                let e = e.to_string();
                tracing::error!("cannot write the Raft log, stopping its writer: {e}");
                for op in batch.into_iter().chain(queue.try_iter()) {
                    report(op, &[], Some(&e));
                }
                return;
            }
        }
    }
}

/// Tells an operation's waiter its outcome; entries written stop being
/// pending.
fn report(op: Op, written: &[LogId], failed: Option<&str>) {
    let result = match failed {
        None => Ok(()),
        Some(e) => Err(io::Error::other(format!("cannot write the Raft log: {e}"))),
    };
    match op {
        Op::Append { pending, flushed, .. } => {
            let mut pending = pending.lock().expect("pending entries lock");
            for id in written {
                if pending.get(&id.index).is_some_and(|e| e.log_id == *id) {
                    pending.remove(&id.index);
                }
            }
            drop(pending);
            flushed.io_completed(result);
        }
        Op::Change { done: Some(done), .. } => {
            let _ = done.send(result);
        }
        Op::Change { done: None, .. } => {}
    }
}

/// Writes a batch in one transaction; for each operation, the ids of the
/// entries it wrote. (On error, every operation of the batch failed.)
fn write_batch(conn: &mut Connection, batch: &mut [Op]) -> rusqlite::Result<Vec<Vec<LogId>>> {
    let tx = conn.transaction()?;
    let mut written = Vec::with_capacity(batch.len());
    {
        let mut append = tx.prepare_cached("INSERT OR REPLACE INTO log(grp, idx, entry) VALUES (?1, ?2, ?3)")?;
        let mut meta = tx.prepare_cached("INSERT OR REPLACE INTO meta(grp, key, value) VALUES (?1, ?2, ?3)")?;
        for op in batch.iter_mut() {
            let mut ids = Vec::new();
            match op {
                Op::Append { group, entries, .. } => {
                    for entry in entries.drain(..) {
                        ids.push(entry.log_id);
                        append.execute(rusqlite::params![*group, entry.log_id.index as i64, encode_entry(entry)])?;
                    }
                }
                Op::Change { group, change: Change::Meta(key, value), .. } => {
                    meta.execute(rusqlite::params![*group, *key, &*value])?;
                }
                Op::Change { group, change: Change::TruncateAfter(after), .. } => {
                    tx.execute("DELETE FROM log WHERE grp = ?1 AND idx > ?2", [*group, *after])?;
                }
                Op::Change { group, change: Change::Purge(upto, record), .. } => {
                    meta.execute(rusqlite::params![*group, KEY_PURGED, &*record])?;
                    tx.execute("DELETE FROM log WHERE grp = ?1 AND idx <= ?2", [*group, *upto])?;
                }
            }
            written.push(ids);
        }
    }
    // synchronous = FULL: the commit returns after fsync.
    tx.commit()?;
    Ok(written)
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

/// SQLite's integers are signed; indexes beyond i64 never occur, clamp so
/// a query stays valid.
fn sql_index(i: u64) -> i64 {
    i.min(i64::MAX as u64) as i64
}

/// The log of one group, in its server's [`LogEngine`]. Cloning gives
/// another handle to the same log (openraft's log reader).
#[derive(Clone)]
pub struct LogStore {
    engine: Arc<LogEngine>,
    group: i64,
    pending: Pending,
    /// The committed id last saved (openraft reads it back only at start).
    committed: Arc<Mutex<Option<Option<LogId>>>>,
}

impl LogStore {
    async fn get_meta(&self, key: &'static str) -> io::Result<Option<MetaValue>> {
        let group = self.group;
        self.engine
            .read(move |c| {
                let v: Option<Vec<u8>> = c
                    .query_row(
                        "SELECT value FROM meta WHERE grp = ?1 AND key = ?2",
                        rusqlite::params![group, key],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(to_io)?;
                v.map(|b| decode_meta(&b)).transpose()
            })
            .await
    }

    async fn get_log_id(&self, key: &'static str) -> io::Result<Option<LogId>> {
        match self.get_meta(key).await? {
            None => Ok(None),
            Some(MetaValue::LogId(l)) => Ok(l),
            Some(MetaValue::Vote(_)) => Err(corrupt(format!("the log store's {key} holds a vote"))),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + Send>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let (start, end) = bounds(&range);
        if start >= end {
            return Ok(Vec::new());
        }
        // Pending entries first: one written meanwhile is then in the file.
        let pending: Vec<Entry> =
            self.pending.lock().expect("pending entries lock").range(start..end).map(|(_, e)| e.clone()).collect();
        let group = self.group;
        let mut entries: BTreeMap<u64, Entry> = self
            .engine
            .read(move |c| {
                let mut stmt = c
                    .prepare_cached("SELECT entry FROM log WHERE grp = ?1 AND idx >= ?2 AND idx < ?3 ORDER BY idx")
                    .map_err(to_io)?;
                let rows = stmt
                    .query_map([group, sql_index(start), sql_index(end)], |r| r.get::<_, Vec<u8>>(0))
                    .map_err(to_io)?;
                let mut entries = BTreeMap::new();
                for row in rows {
                    let entry = decode_entry(&row.map_err(to_io)?)?;
                    entries.insert(entry.log_id.index, entry);
                }
                Ok(entries)
            })
            .await?;
        entries.extend(pending.into_iter().map(|e| (e.log_id.index, e)));
        Ok(entries.into_values().collect())
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        match self.get_meta(KEY_VOTE).await? {
            None => Ok(None),
            Some(MetaValue::Vote(v)) => Ok(Some(v)),
            Some(MetaValue::LogId(_)) => Err(corrupt("the log store's vote holds a log id".into())),
        }
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let last_purged_log_id = self.get_log_id(KEY_PURGED).await?;
        let group = self.group;
        let pending_last = self.pending.lock().expect("pending entries lock").last_key_value().map(|(_, e)| e.log_id);
        let written_last: Option<LogId> = self
            .engine
            .read(move |c| {
                let v: Option<Vec<u8>> = c
                    .query_row("SELECT entry FROM log WHERE grp = ?1 ORDER BY idx DESC LIMIT 1", [group], |r| r.get(0))
                    .optional()
                    .map_err(to_io)?;
                Ok(v.map(|b| decode_entry(&b)).transpose()?.map(|e| e.log_id))
            })
            .await?;
        let last_log_id = pending_last.max(written_last).or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        self.engine.change(self.group, Change::Meta(KEY_VOTE, encode_meta(&MetaValue::Vote(*vote)))).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        *self.committed.lock().expect("committed lock") = Some(committed);
        let change = Change::Meta(KEY_COMMITTED, encode_meta(&MetaValue::LogId(committed)));
        self.engine.queue(Op::Change { group: self.group, change, done: None })
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        let saved = *self.committed.lock().expect("committed lock");
        match saved {
            Some(committed) => Ok(committed),
            None => self.get_log_id(KEY_COMMITTED).await,
        }
    }

    async fn append<I>(&mut self, entries: I, flushed: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        self.pending.lock().expect("pending entries lock").extend(entries.iter().map(|e| (e.log_id.index, e.clone())));
        self.engine.queue(Op::Append { group: self.group, entries, pending: self.pending.clone(), flushed })
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let after = last_log_id.map_or(-1, |l| sql_index(l.index));
        self.engine.change(self.group, Change::TruncateAfter(after)).await?;
        // Entries queued before and written since are removed as they are
        // written; none after `after` may stay readable.
        let keep_to = last_log_id.map_or(0, |l| l.index + 1);
        self.pending.lock().expect("pending entries lock").split_off(&keep_to);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        let record = encode_meta(&MetaValue::LogId(Some(log_id)));
        self.engine.change(self.group, Change::Purge(sql_index(log_id.index), record)).await
    }
}

#[cfg(test)]
mod tests {
    use openraft::type_config::TypeConfigExt;
    use openraft::EntryPayload;

    use super::*;

    fn entry(term: u64, index: u64) -> Entry {
        let log_id = codec::log_id_from_pb(pb::LogId { term, node: 1, index });
        Entry { log_id, payload: EntryPayload::Blank }
    }

    async fn append(log: &mut LogStore, entries: Vec<Entry>) {
        let (tx, rx) = TypeConfig::oneshot();
        log.append(entries, IOFlushed::signal(tx)).await.unwrap();
        rx.await.unwrap().unwrap();
    }

    async fn indexes(log: &mut LogStore) -> Vec<(u64, u64)> {
        let entries = log.try_get_log_entries(0..100).await.unwrap();
        entries.iter().map(|e| (e.log_id.leader_id.term, e.log_id.index)).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn groups_share_the_file_and_keep_their_own_logs_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        {
            let engine = LogEngine::open(&path).unwrap();
            let (mut a, mut b) = (engine.group(GroupId(1)), engine.group(GroupId(2)));
            // Appends of both groups, queued together.
            let (ta, ra) = TypeConfig::oneshot();
            let (tb, rb) = TypeConfig::oneshot();
            a.append((1..=5).map(|i| entry(1, i)).collect::<Vec<_>>(), IOFlushed::signal(ta)).await.unwrap();
            b.append((1..=3).map(|i| entry(1, i)).collect::<Vec<_>>(), IOFlushed::signal(tb)).await.unwrap();
            // Readable before they are durable.
            assert_eq!(indexes(&mut a).await.len(), 5);
            ra.await.unwrap().unwrap();
            rb.await.unwrap().unwrap();
            // A truncation and a purge touch one group only.
            a.truncate_after(Some(entry(1, 3).log_id)).await.unwrap();
            append(&mut a, vec![entry(2, 4)]).await;
            b.purge(entry(1, 1).log_id).await.unwrap();
            let vote = Vote::new(3, 1);
            a.save_vote(&vote).await.unwrap();
            a.save_committed(Some(entry(2, 4).log_id)).await.unwrap();
        }
        // The writer finishes what is queued once the engine is dropped.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let engine = loop {
            match LogEngine::open(&path) {
                Ok(e) => break e,
                Err(e) if std::time::Instant::now() > deadline => panic!("the log did not reopen: {e}"),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        };
        let (mut a, mut b) = (engine.group(GroupId(1)), engine.group(GroupId(2)));
        assert_eq!(indexes(&mut a).await, vec![(1, 1), (1, 2), (1, 3), (2, 4)]);
        assert_eq!(indexes(&mut b).await, vec![(1, 2), (1, 3)]);
        assert_eq!(a.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
        assert_eq!(b.read_vote().await.unwrap(), None);
        let state = b.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(entry(1, 1).log_id));
        assert_eq!(state.last_log_id, Some(entry(1, 3).log_id));
        assert_eq!(a.get_log_state().await.unwrap().last_log_id, Some(entry(2, 4).log_id));
    }
}
