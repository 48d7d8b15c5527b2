//! Queries split over shards (`pushdown`): each shard's part runs on every
//! shard in parallel, and the parts are combined here (concatenated,
//! merged in SQLite's order with OFFSET/LIMIT, or folded by a final query
//! over partial results in a scratch database), or handed to the client
//! as fragments to read from the storage servers itself (direct
//! streaming). A one-shard read is relayed as its leader streams it.

use drsdb_common::affinity::Affinity;
use drsdb_common::command::Statement;
use drsdb_common::order::Collation;
use drsdb_common::shard::{self, KeyRoute};
use drsdb_common::stream::{part, Combined, PartReader};
use drsdb_common::tier::Parts;
use drsdb_common::{Error, GroupId, Result};
use drsdb_proto as pb;
use drsdb_sqlite::Db;
use futures::future::join_all;
use futures::StreamExt;

use super::output::{done, send, Batcher, PartSender};
use super::snapshot::Tries;
use super::{with_sql, Executor, Txn};
use crate::grpc_tier::read_request;
use crate::metrics::Metrics;
use crate::pushdown::{Combine, PartialColumn, Split};

impl Executor {
    /// Runs a split query: its shard part on every shard in parallel, then
    /// the combining step (`pushdown`).
    pub(super) async fn scatter(
        &self,
        groups: &[GroupId],
        split: Split,
        statement: Statement,
        txn: Option<&Txn>,
        out: &PartSender,
    ) -> Result<()> {
        let part = with_sql(&statement, split.shard_sql)?;
        // Outside a transaction the shards' snapshots must form one cut.
        let mut tries = Tries::new();
        let (mut shards, columns) = loop {
            let opened =
                join_all(groups.iter().map(|g| self.open_shard(*g, Self::for_shard(&part, *g, false), txn))).await;
            let mut shards = opened.into_iter().collect::<Result<Vec<_>>>()?;
            let mut columns = Vec::new();
            for s in &mut shards {
                columns = s.columns().await?;
            }
            let snapshots: Vec<pb::Snapshot> = shards.iter().filter_map(|s| s.snapshot().cloned()).collect();
            if txn.is_some() || self.consistent(&snapshots).await? {
                break (shards, columns);
            }
            tries.again().await?;
        };
        let (keys, offset, limit) = match split.combine {
            Combine::Concat => (Vec::new(), 0, None),
            Combine::Merge { keys, offset, limit } => (keys, offset, limit),
            Combine::Final { columns: partial, sql, .. } => {
                let create = partial_table(&partial, &columns);
                let mut rows = Vec::new();
                for s in &mut shards {
                    while let Some(row) = s.next().await? {
                        rows.push(row);
                    }
                }
                let width = partial.len();
                let db = tokio::task::spawn_blocking(move || -> Result<Db> {
                    let db = Db::open_scratch().map_err(|e| Error::io(format!("scratch database: {e}")))?;
                    let insert = format!(
                        "INSERT INTO partial VALUES ({})",
                        (1..=width).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ")
                    );
                    db.internal(|c| {
                        c.execute_batch(&create)?;
                        c.execute_batch("BEGIN")?;
                        let mut s = c.prepare(&insert)?;
                        for row in &rows {
                            s.execute(rusqlite::params_from_iter(row.iter()))?;
                        }
                        c.execute_batch("COMMIT")
                    })
                    .map_err(|e| Error::io(format!("combining shard results: {e}")))?;
                    Ok(db)
                })
                .await
                .map_err(|e| Error::io(format!("combine task: {e}")))??;
                return self.run_here(db, with_sql(&statement, sql)?, txn, out).await;
            }
        };
        let hidden = keys.len();
        let mut combined = Combined::merge(shards, keys, offset, limit);
        let mut batcher = Batcher::new(out, columns.into_iter().skip(hidden).collect(), self.rows_per_batch);
        while let Some(row) = combined.next().await? {
            batcher.push(row).await?;
        }
        batcher.finish(done(0, 0, txn)).await
    }

    /// One shard's answer to a query, row by row: streamed from the
    /// shard's leader, or (inside a transaction, where reads are log
    /// entries) whole.
    async fn open_shard(&self, group: GroupId, statement: Statement, txn: Option<&Txn>) -> Result<PartReader<Parts>> {
        if let Some(t) = txn {
            let r = self.apply(group, statement, Some(t)).await?;
            let columns = r.columns.into_iter().map(Into::into).collect();
            return Ok(PartReader::whole(columns, r.rows, pb::Done::default()));
        }
        Ok(PartReader::new(self.tier.read(group, statement, false).await?))
    }

    /// Answers a split query with fragments: for each shard, the storage
    /// servers holding it and a signed ticket for its part, for the client
    /// to read and combine (concatenate, or merge on the hidden sort keys).
    pub(super) async fn hand_out(
        &self,
        groups: &[GroupId],
        split: Split,
        statement: Statement,
        out: &PartSender,
    ) -> Result<()> {
        let (Some(tickets), Combine::Concat | Combine::Merge { .. }) = (&self.tickets, &split.combine) else {
            return Err(Error::io(format!("planned as direct without a ticket key, or with {}", split.combine)));
        };
        let (keys, offset, limit) = match split.combine {
            Combine::Merge { keys, offset, limit } => (keys.into_iter().map(Into::into).collect(), offset, limit),
            _ => (Vec::new(), 0, None),
        };
        let shard_part = with_sql(&statement, split.shard_sql)?;
        let expires_ms = chrono::Utc::now().timestamp_millis().saturating_add(tickets.ttl_ms);
        let replicas = self.tier.replicas(groups).await?;
        let fragments: Vec<pb::Fragment> = groups
            .iter()
            .zip(replicas)
            .map(|(g, replicas)| pb::Fragment {
                group: g.0,
                replicas,
                ticket: Some(tickets.key.sign(read_request(*g, Self::for_shard(&shard_part, *g, false)), expires_ms)),
            })
            .collect();
        Metrics::add(&self.metrics.direct_results, 1);
        Metrics::add(&self.metrics.fragments_issued, fragments.len() as u64);
        send(out, part(pb::result_part::Part::Fragments(pb::Fragments { fragments, keys, offset, limit }))).await?;
        send(out, done(0, 0, None)).await
    }

    /// Sends the client `route` for `statement` (before the statement's
    /// own answer): its ticket, and the storage servers of every shard.
    pub(super) async fn send_route(&self, route: &KeyRoute, statement: &Statement, out: &PartSender) -> Result<()> {
        let Some(tickets) = &self.tickets else {
            return Err(Error::io("planned a route without a ticket key"));
        };
        let expires_ms = chrono::Utc::now().timestamp_millis().saturating_add(tickets.ttl_ms);
        let replicas = self.tier.replicas(&shard::shard_groups(route.shards)).await?;
        let statement = Statement { params: Vec::new(), request_id: None, ..statement.clone() };
        let route = pb::Route {
            ticket: Some(tickets.key.sign_route(statement.into(), route, expires_ms)),
            key: Some(route.into()),
            shards: replicas.into_iter().map(|addrs| pb::Replicas { addrs }).collect(),
        };
        Metrics::add(&self.metrics.routes_issued, 1);
        send(out, part(pb::result_part::Part::Route(route))).await
    }

    /// Streams a read from a shard's leader straight through.
    pub(super) async fn stream_read(&self, group: GroupId, statement: Statement, out: &PartSender) -> Result<()> {
        let mut parts = self.tier.read(group, statement, true).await?;
        while let Some(p) = parts.next().await {
            send(out, p?).await?;
        }
        Ok(())
    }
}

/// `CREATE TABLE partial(…)` for a combining step: each column with the
/// declared type it was planned with or, failing that, the one the shards
/// report (so that values keep their affinity), and its collation.
fn partial_table(columns: &[PartialColumn], reported: &[pb::Column]) -> String {
    let defs: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let decl = c.decl_type.clone().or_else(|| reported.get(i).map(|r| r.decl_type.clone())).unwrap_or_default();
            let collation = match c.collation {
                Collation::Binary => "BINARY",
                Collation::NoCase => "NOCASE",
                Collation::RTrim => "RTRIM",
            };
            format!("_c{i} {} COLLATE {collation}", affinity(&decl))
        })
        .collect();
    format!("CREATE TABLE partial({})", defs.join(", "))
}

/// The affinity SQLite gives a column declared `decl`, as the one keyword
/// that declares it; `ANY` (STRICT tables) and BLOB have none.
fn affinity(decl: &str) -> &'static str {
    if decl.trim().eq_ignore_ascii_case("ANY") {
        return "";
    }
    match Affinity::of(decl) {
        Affinity::Integer => "INTEGER",
        Affinity::Text => "TEXT",
        Affinity::Blob => "",
        Affinity::Real => "REAL",
        Affinity::Numeric => "NUMERIC",
    }
}
