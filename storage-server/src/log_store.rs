//! A group's Raft log, durable in its own SQLite file (`raft.db`).
//!
//! Entries are rows keyed by index; the vote, the committed id and the
//! last purged id are rows of a small key-value table. The file runs in WAL
//! mode with `synchronous = FULL`, so every append and vote is fsync'd
//! before openraft hears that it is durable. SQLite work runs on tokio's
//! blocking pool.

use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};

use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader};
use rusqlite::{Connection, OptionalExtension};
use serde::de::DeserializeOwned;
use serde::Serialize;

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

fn encode<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(to_io)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("corrupt log record: {e}")))
}

impl LogStore {
    /// Opens or creates the log file.
    pub fn open(path: &Path) -> io::Result<LogStore> {
        crate::clock::register();
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

    async fn get_meta<T: DeserializeOwned + Send + 'static>(&self, key: &'static str) -> io::Result<Option<T>> {
        self.with(move |c| {
            let v: Option<Vec<u8>> =
                c.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional().map_err(to_io)?;
            v.map(|b| decode(&b)).transpose()
        })
        .await
    }

    async fn put_meta<T: Serialize>(&self, key: &'static str, value: &T) -> io::Result<()> {
        let bytes = encode(value)?;
        self.with(move |c| {
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)", rusqlite::params![key, bytes])
                .map_err(to_io)?;
            Ok(())
        })
        .await
    }
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
                entries.push(decode(&row.map_err(to_io)?)?);
            }
            Ok(entries)
        })
        .await
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        self.get_meta(KEY_VOTE).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId> = self.get_meta(KEY_PURGED).await?;
        let last: Option<Entry> = self
            .with(|c| {
                let v: Option<Vec<u8>> = c
                    .query_row("SELECT entry FROM log ORDER BY idx DESC LIMIT 1", [], |r| r.get(0))
                    .optional()
                    .map_err(to_io)?;
                v.map(|b| decode(&b)).transpose()
            })
            .await?;
        let last_log_id = last.map(|e| e.log_id).or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        self.put_meta(KEY_VOTE, vote).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        self.put_meta(KEY_COMMITTED, &committed).await
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        Ok(self.get_meta::<Option<LogId>>(KEY_COMMITTED).await?.flatten())
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
                    entries.iter().map(|e| Ok((e.log_id.index as i64, encode(e)?))).collect::<io::Result<_>>()?;
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
        let purged = encode(&log_id)?;
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
