//! Queries answered here, in a scratch SQLite database: the rows of the
//! tables they read gathered from the shards (filtered there), or the
//! partial results of a split query; and the queries an INSERT's rows come
//! from.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use drsdb_common::command::Statement;
use drsdb_common::value;
use drsdb_common::{sql, Error, GroupId, Result, Value};
use drsdb_proto as pb;
use drsdb_sqlite::{Db, Limits};
use futures::future::join_all;
use tokio::sync::mpsc;

use super::output::{done, PartSender};
use super::snapshot::Tries;
use super::{failure, with_sql, Executor, Txn};
use crate::catalog;
use crate::catalog::Catalog;
use crate::planner::Plan;
use drsdb_common::stream::PartReader;

impl Executor {
    /// Runs `statement` in a scratch database here, streaming its rows.
    pub(super) async fn run_here(
        &self,
        db: Db,
        mut statement: Statement,
        txn: Option<&Txn>,
        out: &PartSender,
    ) -> Result<()> {
        // The scratch database has a schema of its own.
        statement.schema_version = None;
        let out = out.clone();
        let done_part = done(0, 0, txn);
        let rows_per_batch = self.rows_per_batch;
        // Dropped with this future (statement timeout, client gone): the
        // query stops.
        let cancel = CancelOnDrop::default();
        let limits = Limits { cancel: Some(cancel.0.clone()), ..Limits::default() };
        let result = tokio::task::spawn_blocking(move || {
            let r = db.run_parts(&statement, limits, rows_per_batch, |p| out.blocking_send(Ok(p)).is_ok());
            r.map(|_| {
                let _ = out.blocking_send(Ok(done_part));
            })
        })
        .await
        .map_err(|e| Error::io(format!("query task: {e}")))?;
        result.map_err(failure)
    }

    /// Runs a query that reads no table in a scratch database here.
    pub(super) async fn compute(&self, mut s: Statement) -> Result<Vec<Vec<Value>>> {
        s.schema_version = None;
        tokio::task::spawn_blocking(move || {
            let db = Db::open_scratch().map_err(|e| Error::io(format!("scratch database: {e}")))?;
            db.run_collect(&s).map(|r| r.rows).map_err(failure)
        })
        .await
        .map_err(|e| Error::io(format!("query task: {e}")))?
    }

    /// Runs a read plan and collects its rows.
    pub(super) async fn collect(
        &self,
        plan: &Plan,
        statement: Statement,
        txn: Option<&Txn>,
    ) -> Result<Vec<Vec<Value>>> {
        match plan {
            Plan::Single { group, .. } => self.fetch(*group, statement, txn).await,
            Plan::Gather { tables, copies, filters, groups } => {
                let db = self.gather(tables, copies, filters, groups, &statement, txn).await?;
                let statement = Statement { schema_version: None, ..statement };
                tokio::task::spawn_blocking(move || db.run_collect(&statement).map(|r| r.rows).map_err(failure))
                    .await
                    .map_err(|e| Error::io(format!("query task: {e}")))?
            }
            Plan::Scatter { groups, split, .. } => {
                let (tx, mut rx) = mpsc::channel(SCATTER_COLLECT_BUFFER);
                let run = async move {
                    let r = self.scatter(groups, split.clone(), statement, txn, &tx).await;
                    drop(tx);
                    r
                };
                let gather = async {
                    let mut rows = Vec::new();
                    while let Some(part) = rx.recv().await {
                        if let Ok(pb::ResultPart { part: Some(pb::result_part::Part::Rows(r)) }) = part {
                            rows.extend(value::rows_from(r));
                        }
                    }
                    rows
                };
                let (r, rows) = tokio::join!(run, gather);
                r.map(|_| rows)
            }
            other => Err(Error::io(format!("not a read plan: {other}"))),
        }
    }

    /// Collects the rows of a read on one shard.
    pub(crate) async fn fetch(
        &self,
        group: GroupId,
        statement: Statement,
        txn: Option<&Txn>,
    ) -> Result<Vec<Vec<Value>>> {
        Ok(self.fetch_at(group, statement, txn).await?.0)
    }

    /// Collects the rows of a read on one shard, with the snapshot it saw
    /// (none inside a transaction, whose reads are log entries).
    async fn fetch_at(
        &self,
        group: GroupId,
        statement: Statement,
        txn: Option<&Txn>,
    ) -> Result<(Vec<Vec<Value>>, Option<pb::Snapshot>)> {
        if let Some(t) = txn {
            return Ok((self.apply(group, statement, Some(t)).await?.rows, None));
        }
        let mut reader = PartReader::new(self.tier.read(group, statement, false).await?);
        let mut rows = Vec::new();
        while let Some(row) = reader.next().await? {
            rows.push(row);
        }
        Ok((rows, reader.snapshot().cloned()))
    }

    /// A scratch database with the catalog's schema, the rows of `tables`
    /// (those that pass their `filters`) from every shard of `groups` (with
    /// their rowids, so rows keep the order they have on one database),
    /// and those of reference tables `copies` from the first shard.
    pub(super) async fn gather(
        &self,
        tables: &[String],
        copies: &[String],
        filters: &BTreeMap<String, String>,
        groups: &[GroupId],
        statement: &Statement,
        txn: Option<&Txn>,
    ) -> Result<Db> {
        let catalog = self.catalog();
        // Outside a transaction every table's rows come from one cut.
        let mut tries = Tries::new();
        let loads = loop {
            let (loads, snapshots) = self.load(&catalog, tables, copies, filters, groups, statement, txn).await?;
            if txn.is_some() || self.consistent(&snapshots).await? {
                break loads;
            }
            tries.again().await?;
        };
        tokio::task::spawn_blocking(move || {
            let db = Db::open_scratch().map_err(|e| Error::io(format!("scratch database: {e}")))?;
            // An object that cannot be made here is missing from the
            // scratch database; a query that needs it fails there.
            catalog::create_schema(&db, catalog.objects(), true);
            db.internal(|c| {
                c.execute_batch("BEGIN")?;
                for (insert, shards) in &loads {
                    let mut s = c.prepare(insert)?;
                    for row in shards.iter().flatten() {
                        s.execute(rusqlite::params_from_iter(row.iter()))?;
                    }
                }
                c.execute_batch("COMMIT")
            })
            .map_err(|e| Error::io(format!("gathering rows: {e}")))?;
            Ok(db)
        })
        .await
        .map_err(|e| Error::io(format!("gather task: {e}")))?
    }

    /// The rows of `tables` (from every shard of `groups`) and `copies`
    /// (from the first), each with the INSERT that loads them into a
    /// scratch database, and the snapshots the reads saw.
    #[allow(clippy::too_many_arguments)]
    async fn load(
        &self,
        catalog: &Catalog,
        tables: &[String],
        copies: &[String],
        filters: &BTreeMap<String, String>,
        groups: &[GroupId],
        statement: &Statement,
        txn: Option<&Txn>,
    ) -> Result<(Vec<(String, Vec<Vec<Vec<Value>>>)>, Vec<pb::Snapshot>)> {
        let mut loads = Vec::new();
        let mut snapshots = Vec::new();
        // Sharded tables from every shard; a reference table's copy from one.
        let sources = tables.iter().map(|t| (t, groups)).chain(copies.iter().map(|t| (t, &groups[..1])));
        for (name, groups) in sources {
            let Some(table) = catalog.table(name) else { continue };
            let mut columns: Vec<String> = table.columns.iter().map(|c| sql::quote_name(&c.name)).collect();
            if let Some(alias) = &table.rowid_alias {
                columns.insert(0, alias.clone());
            }
            let mut select = format!("SELECT {} FROM {}", columns.join(", "), sql::quote_name(&table.name));
            if let Some(filter) = filters.get(name) {
                select.push_str(&format!(" WHERE {filter}"));
            }
            let insert = format!(
                "INSERT INTO {}({}) VALUES ({})",
                sql::quote_name(&table.name),
                columns.join(", "),
                vec!["?"; columns.len()].join(", ")
            );
            // A filter may name the statement's parameters.
            let statement = with_sql(statement, select)?;
            let fetched = join_all(groups.iter().map(|g| self.fetch_at(*g, statement.clone(), txn))).await;
            let mut rows = Vec::with_capacity(fetched.len());
            for f in fetched {
                let (shard_rows, snapshot) = f?;
                rows.push(shard_rows);
                snapshots.extend(snapshot);
            }
            loads.push((insert, rows));
        }
        Ok((loads, snapshots))
    }
}

/// Result parts buffered between a scatter and the INSERT collecting its rows.
const SCATTER_COLLECT_BUFFER: usize = 16;

/// Sets its flag when dropped: work running elsewhere (a blocking task)
/// that watches the flag stops with the future that owns this.
#[derive(Default)]
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
