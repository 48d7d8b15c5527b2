//! Bulk loading: many rows into one table, as fast as the cluster takes
//! them ([`Loader`]; `drsdb import` reads CSV files through it).
//!
//! The loader asks an index server for the table's layout (its columns,
//! shard key and the shard count), works out which shard each row's key
//! hashes to, and sends each shard's rows in batches of up to
//! [`LoadOptions::batch`] rows, several at once over sessions of its own.
//! A batch is one statement: the one-row INSERT with the batch's rows of
//! values ([`Client::execute_many`]), parsed once per batch.
//! A batch that writes one shard commits in one Raft round, without
//! two-phase commit, and batches to different shards commit in parallel.
//!
//! Values are converted as the target column's affinity would convert
//! them when that is certain without SQLite (the text `'42'` written to
//! an INTEGER column is the integer 42), so that their shard is known.
//! Rows the loader cannot place (a key left out and assigned by the index
//! server, a key value only SQLite can convert, a table without a declared
//! key) go in batches of their own that the index server places, at most
//! [`shard::ASSIGNED_ROWS_PER_SHARD`] rows each so that each still writes
//! one shard; a reference table's batches write every shard.
//!
//! Placement is only for speed: the index server places every row itself,
//! so a layout gone stale (the table dropped and created again) costs
//! speed, never correctness.
//!
//! A load is not one transaction. Each batch is atomic and commits on its
//! own, exactly once (sent again after a lost reply, it keeps its request
//! id). The first batch that fails stops the load: the rows of batches
//! that committed stay, [`Loader::committed`] counts them, and the error
//! says so.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use drsdb_common::affinity::Affinity;
use drsdb_common::order::Collation;
use drsdb_common::shard::{self, KeyRoute};
use drsdb_common::{sql, Error, Result, Value};
use tokio::task::JoinSet;

use crate::Client;

/// Rows per batch unless the options say otherwise (fewer when the
/// table is wide: a batch stays within
/// [`sql::MAX_PARAMS_PER_STATEMENT`] values with a column to spare for an
/// assigned rowid, so that it stays one statement on its shard).
pub const DEFAULT_BATCH: usize = 4000;
/// Batches in flight at once unless the options say otherwise.
pub const DEFAULT_PARALLEL: usize = 8;

/// What a row whose key is already in the table does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnConflict {
    /// Fails its batch, and so stops the load (`INSERT`).
    #[default]
    Abort,
    /// Is skipped (`INSERT OR IGNORE`): loading a file again adds only
    /// the rows that are missing.
    Ignore,
    /// Replaces the row in the table (`INSERT OR REPLACE`).
    Replace,
}

impl OnConflict {
    fn verb(self) -> &'static str {
        match self {
            OnConflict::Abort => "INSERT",
            OnConflict::Ignore => "INSERT OR IGNORE",
            OnConflict::Replace => "INSERT OR REPLACE",
        }
    }
}

/// How a [`Loader`] sends rows.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Most rows per INSERT (at least 1; fewer for wide rows, see
    /// [`DEFAULT_BATCH`] and [`sql::MAX_BYTES_PER_STATEMENT`]).
    pub batch: usize,
    /// Most INSERTs in flight at once, each on a session of its own (at
    /// least 1).
    pub parallel: usize,
    /// What a row whose key exists does.
    pub on_conflict: OnConflict,
}

impl Default for LoadOptions {
    fn default() -> LoadOptions {
        LoadOptions { batch: DEFAULT_BATCH, parallel: DEFAULT_PARALLEL, on_conflict: OnConflict::Abort }
    }
}

/// Loads rows into one table, grouped by shard, in batches sent in
/// parallel that each commit on their own: [`Loader::push`] each row, then
/// [`Loader::finish`].
pub struct Loader {
    /// `INSERT INTO t(a, b) VALUES (?, ?)`: a batch is this statement
    /// with its rows of values ([`Client::execute_many`]).
    insert: String,
    /// A reference table's batches are one multi-row INSERT instead (the
    /// index server writes them to every shard as they are); the text of
    /// the last one built, by its row count.
    reference: Option<(usize, String)>,
    /// Target columns' names, for messages.
    columns: Vec<String>,
    /// Each target column's affinity.
    affinities: Vec<Affinity>,
    /// Where a row's key lands (its positions among the target columns);
    /// `None` when rows are placed by the index server.
    key: Option<KeyRoute>,
    shards: usize,
    /// Rows waiting, one buffer per shard and a last one for rows the
    /// index server places.
    buffers: Vec<Vec<Vec<Value>>>,
    /// Rows per batch of each buffer.
    limits: Vec<usize>,
    /// Bytes of values in each buffer: a batch stays within
    /// [`sql::MAX_BYTES_PER_STATEMENT`] (then it is one statement on its
    /// shard, and far from the largest request an index server takes).
    bytes: Vec<usize>,
    /// Sessions not sending now.
    idle: Vec<Client>,
    /// Batches in flight: each gives its session back.
    running: JoinSet<(Client, Result<()>)>,
    /// Rows in batches that committed.
    committed: Arc<AtomicU64>,
    /// Rows pushed so far.
    pushed: u64,
    /// The error that stopped the load.
    failed: Option<Error>,
}

impl Client {
    /// A loader of rows into `table`'s `columns` (all of its writable
    /// columns, in order, when empty), sending over `options.parallel`
    /// sessions of its own to the same index servers.
    pub async fn loader(&mut self, table: &str, columns: &[String], options: LoadOptions) -> Result<Loader> {
        let layout = self.table_layout(table).await?;
        let known: Vec<&str> = layout.columns.iter().map(|c| c.name.as_str()).collect();
        let targets: Vec<usize> = if columns.is_empty() {
            (0..known.len()).collect()
        } else {
            columns
                .iter()
                .map(|c| {
                    known.iter().position(|k| k.eq_ignore_ascii_case(c)).ok_or_else(|| {
                        Error::invalid(format!(
                            "table {} has no column named {c}; it has {}",
                            layout.table,
                            known.join(", ")
                        ))
                    })
                })
                .collect::<Result<_>>()?
        };
        if let Some(twice) = targets.iter().enumerate().find(|(i, c)| targets[..*i].contains(c)) {
            return Err(Error::invalid(format!("column {} is named twice", known[*twice.1])));
        }
        let shards = (layout.shards as usize).max(1);
        let affinities: Vec<Affinity> = targets.iter().map(|t| Affinity::of(&layout.columns[*t].decl_type)).collect();
        let key: Option<Vec<(usize, (Affinity, Collation))>> = match layout.reference || layout.key.is_empty() {
            true => None,
            false => layout
                .key
                .iter()
                .map(|k| {
                    let at = targets.iter().position(|t| *t as u32 == *k)?;
                    let column = &layout.columns[*k as usize];
                    Some((at, (affinities[at], Collation::from_name(&column.collation))))
                })
                .collect(),
        };
        let key = key.map(|k| {
            let (positions, columns) = k.into_iter().unzip();
            KeyRoute { positions, columns, shards }
        });
        let names: Vec<String> = targets.iter().map(|t| sql::quote_name(known[*t])).collect();
        let batch = options.batch.min(sql::MAX_PARAMS_PER_STATEMENT / (names.len() + 1)).max(1);
        let parallel = options.parallel.max(1);
        let mut limits = vec![batch; shards];
        limits.push(match layout.reference {
            true => batch,
            false => batch.min(shard::ASSIGNED_ROWS_PER_SHARD),
        });
        let mut idle = Vec::with_capacity(parallel);
        for _ in 0..parallel {
            idle.push(self.session()?);
        }
        Ok(Loader {
            insert: format!(
                "{} INTO {}({}) VALUES ({})",
                options.on_conflict.verb(),
                sql::quote_name(&layout.table),
                names.join(", "),
                vec!["?"; names.len()].join(", ")
            ),
            reference: layout.reference.then(|| (0, String::new())),
            columns: targets.iter().map(|t| known[*t].to_string()).collect(),
            affinities,
            key,
            shards,
            buffers: vec![Vec::new(); shards + 1],
            bytes: vec![0; shards + 1],
            limits,
            idle,
            running: JoinSet::new(),
            committed: Arc::new(AtomicU64::new(0)),
            pushed: 0,
            failed: None,
        })
    }
}

impl Loader {
    /// The target columns, in the order rows give their values.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Rows in batches that committed so far.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    /// A counter of committed rows that can be read while the load runs
    /// (for a progress bar).
    pub fn progress(&self) -> Arc<AtomicU64> {
        self.committed.clone()
    }

    /// Adds one row (a value per target column); sends a batch when one
    /// fills, waiting for a session when all are busy. After an error from
    /// a batch, call [`Loader::finish`]: it waits for the batches still in
    /// flight and says how many rows are in.
    pub async fn push(&mut self, mut row: Vec<Value>) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if row.len() != self.columns.len() {
            return Err(Error::invalid(format!(
                "row {} has {} values for {} columns ({})",
                self.pushed + 1,
                row.len(),
                self.columns.len(),
                self.columns.join(", ")
            )));
        }
        self.pushed += 1;
        for (v, a) in row.iter_mut().zip(&self.affinities) {
            *v = a.apply_exact(std::mem::replace(v, Value::Null));
        }
        let at = self.key.as_ref().and_then(|k| k.shard(&row)).unwrap_or(self.shards);
        let size: usize = row.iter().map(Value::size).sum();
        if !self.buffers[at].is_empty() && self.bytes[at] + size > sql::MAX_BYTES_PER_STATEMENT {
            self.send(at).await?;
        }
        self.bytes[at] += size;
        self.buffers[at].push(row);
        if self.buffers[at].len() >= self.limits[at] {
            self.send(at).await?;
        }
        Ok(())
    }

    /// Sends what is left, waits for every batch, and returns the rows
    /// loaded. Dropping a loader instead abandons the batches in flight,
    /// which may or may not commit.
    pub async fn finish(mut self) -> Result<u64> {
        for at in 0..self.buffers.len() {
            if self.failed.is_some() {
                break;
            }
            if !self.buffers[at].is_empty() {
                if let Err(e) = self.send(at).await {
                    self.failed.get_or_insert(e);
                }
            }
        }
        while !self.running.is_empty() {
            self.reap().await;
        }
        match self.failed.take() {
            Some(e) => Err(e.noted(format!(
                "the load stopped: the {} rows of batches that committed stay in the table (each batch commits on its \
                 own); loading again with OnConflict::Ignore (`drsdb import --on-conflict ignore`) adds only the \
                 missing rows of a table with a key",
                self.committed()
            ))),
            None => Ok(self.committed()),
        }
    }

    /// Sends buffer `at` as one INSERT.
    async fn send(&mut self, at: usize) -> Result<()> {
        while self.idle.is_empty() && !self.running.is_empty() {
            self.reap().await;
        }
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let Some(mut session) = self.idle.pop() else { return Err(Error::io("the loader has no session left")) };
        let batch = std::mem::take(&mut self.buffers[at]);
        self.bytes[at] = 0;
        let rows = batch.len();
        let reference = self.reference.as_mut().map(|(n, text)| {
            if *n != rows {
                let (head, tuple) = self.insert.split_at(self.insert.rfind('(').expect("VALUES has a tuple"));
                *text = format!("{head}{}", vec![tuple; rows].join(", "));
                *n = rows;
            }
            text.clone()
        });
        let insert = self.insert.clone();
        let committed = self.committed.clone();
        self.running.spawn(async move {
            let result = match reference {
                Some(text) => session.execute(&text, &batch.concat()).await,
                None => session.execute_many(&insert, &batch).await,
            };
            let result = result.map(|_| {
                committed.fetch_add(rows as u64, Ordering::Relaxed);
            });
            (session, result)
        });
        Ok(())
    }

    /// Waits for one batch in flight; the first failure stops the load.
    async fn reap(&mut self) {
        let Some(done) = self.running.join_next().await else { return };
        let (session, result) = match done {
            Ok((session, result)) => (Some(session), result),
            Err(e) => (None, Err(Error::io(format!("a batch's task ended: {e}")))),
        };
        self.idle.extend(session);
        if let Err(e) = result {
            self.failed.get_or_insert(e);
        }
    }
}
