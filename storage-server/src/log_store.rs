//! A group's Raft log, durable in its own SQLite file (`raft.db`).
//!
//! Entries are rows keyed by index, each a `LogEntry` message (`codec`);
//! the vote, the committed id and the last purged id are `LogMeta`
//! messages in a small key-value table. Every record carries its format
//! version and one in another format is refused. The file runs in WAL
//! mode with `synchronous = FULL`, so every append and vote is fsync'd
//! before openraft hears that it is durable. SQLite work runs on tokio's
//! blocking pool.

use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};

use drsdb_proto as pb;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader};
use prost::Message;
use rusqlite::{Connection, OptionalExtension};

use crate::codec;
use crate::types::{Entry, LogId, TypeConfig, Vote};

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "purged";

/// The log of one group. Cloning gives another handle to the same file
/// (openraft's log reader).
#[derive(Clone)]
pub struct LogStore {
    conn: Arc<Mutex<Connection>>,
}

fn to_io(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
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

impl LogStore {
    /// Opens or creates the log file.
    pub fn open(path: &Path) -> io::Result<LogStore> {
        drsdb_sqlite::prepare();
        let conn = Connection::open(path).map_err(to_io)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(to_io)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(to_io)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS log(idx INTEGER PRIMARY KEY, entry BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value BLOB NOT NULL);",
        )
        .map_err(to_io)?;
        Ok(LogStore { conn: Arc::new(Mutex::new(conn)) })
    }

    /// Runs `f` on the connection in the blocking pool.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&mut conn.lock().expect("log store lock"))).await.map_err(to_io)?
    }

    async fn get_meta(&self, key: &'static str) -> io::Result<Option<MetaValue>> {
        self.with(move |c| {
            let v: Option<Vec<u8>> =
                c.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional().map_err(to_io)?;
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

    async fn put_meta(&self, key: &'static str, value: &MetaValue) -> io::Result<()> {
        let bytes = encode_meta(value);
        self.with(move |c| {
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)", rusqlite::params![key, bytes])
                .map_err(to_io)?;
            Ok(())
        })
        .await
    }
}

fn corrupt(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn bounds(range: &impl RangeBounds<u64>) -> (i64, i64) {
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
    // Indexes beyond i64 never occur; clamp so the query stays valid.
    (start.min(i64::MAX as u64) as i64, end.min(i64::MAX as u64) as i64)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + Send>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let (start, end) = bounds(&range);
        self.with(move |c| {
            let mut stmt =
                c.prepare_cached("SELECT entry FROM log WHERE idx >= ?1 AND idx < ?2 ORDER BY idx").map_err(to_io)?;
            let rows = stmt.query_map([start, end], |r| r.get::<_, Vec<u8>>(0)).map_err(to_io)?;
            let mut entries = Vec::new();
            for row in rows {
                entries.push(decode_entry(&row.map_err(to_io)?)?);
            }
            Ok(entries)
        })
        .await
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
        let last: Option<Entry> = self
            .with(|c| {
                let v: Option<Vec<u8>> = c
                    .query_row("SELECT entry FROM log ORDER BY idx DESC LIMIT 1", [], |r| r.get(0))
                    .optional()
                    .map_err(to_io)?;
                v.map(|b| decode_entry(&b)).transpose()
            })
            .await?;
        let last_log_id = last.map(|e| e.log_id).or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        self.put_meta(KEY_VOTE, &MetaValue::Vote(*vote)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        self.put_meta(KEY_COMMITTED, &MetaValue::LogId(committed)).await
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        self.get_log_id(KEY_COMMITTED).await
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let result = self
            .with(move |c| {
                // Encoded here, off the async threads: entries can be large.
                let rows: Vec<(i64, Vec<u8>)> =
                    entries.into_iter().map(|e| (e.log_id.index as i64, encode_entry(e))).collect();
                let tx = c.transaction().map_err(to_io)?;
                {
                    let mut stmt =
                        tx.prepare_cached("INSERT OR REPLACE INTO log(idx, entry) VALUES (?1, ?2)").map_err(to_io)?;
                    for (idx, bytes) in &rows {
                        stmt.execute(rusqlite::params![idx, bytes]).map_err(to_io)?;
                    }
                }
                // synchronous=FULL: the commit returns after fsync.
                tx.commit().map_err(to_io)
            })
            .await;
        match result {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let after = last_log_id.map_or(-1, |l| l.index as i64);
        self.with(move |c| {
            c.execute("DELETE FROM log WHERE idx > ?1", [after]).map_err(to_io)?;
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        let upto = log_id.index as i64;
        let purged = encode_meta(&MetaValue::LogId(Some(log_id)));
        self.with(move |c| {
            let tx = c.transaction().map_err(to_io)?;
            tx.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)",
                rusqlite::params![KEY_PURGED, purged],
            )
            .map_err(to_io)?;
            tx.execute("DELETE FROM log WHERE idx <= ?1", [upto]).map_err(to_io)?;
            tx.commit().map_err(to_io)
        })
        .await
    }
}
