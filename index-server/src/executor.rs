//! Executes one statement: classify, fix its clock and random seed, check
//! the catalog, plan (`planner`), carry the plan out over the shards, and
//! stream the result back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use drsdb_common::order::{self, Collation};
use drsdb_common::sql::{self, Kind};
use drsdb_common::ticket::TicketKey;
use drsdb_common::value::{self, Batch};
use drsdb_common::{shard, Error, GroupId, Result, TxnId, Value};
use drsdb_proto as pb;
use drsdb_storage::{Column, Command, CommandResult, Db, Limits, Statement, StatementResult};
use futures::future::join_all;
use tokio::sync::mpsc;
use tonic::Status;

use crate::catalog::{self, Catalog};
use crate::cluster::Cluster;
use crate::insert;
use crate::introspection;
use crate::keys::{Keys, RowidGenerator};
use crate::meta;
use crate::metrics::Metrics;
use crate::planner::{self, Context, Plan, Source, Undo};
use crate::pushdown::{Combine, PartialColumn, Split};

/// Where a statement's result parts go (the client's stream).
pub type PartSender = mpsc::Sender<std::result::Result<pb::ResultPart, Status>>;

/// Runs statements for any client. Holds no per-client state: a
/// transaction is named by the id the client sends with each statement.
pub struct Executor {
    /// The storage tier.
    pub cluster: Arc<Cluster>,
    catalog: RwLock<Arc<Catalog>>,
    /// The number of data shards; 0 until read from the meta group.
    shards: AtomicUsize,
    rows_per_batch: usize,
    /// Every statement's memory budget in bytes (`statement_memory_mb`).
    statement_memory: u64,
    rowids: RowidGenerator,
    /// Signs direct-streaming tickets; `None`: every row is relayed.
    tickets: Option<Tickets>,
    /// What this server has done.
    pub metrics: Metrics,
    /// This server's address as clients reach it.
    pub address: String,
}

/// How tickets for direct streaming are made.
pub struct Tickets {
    /// The cluster's ticket key.
    pub key: TicketKey,
    /// How long a ticket is valid, in milliseconds.
    pub ttl_ms: i64,
}

fn part(p: pb::result_part::Part) -> pb::ResultPart {
    pb::ResultPart { part: Some(p) }
}

/// A `Done` part.
pub fn done(rows_affected: u64, last_insert_rowid: i64, txn: Option<&TxnId>) -> pb::ResultPart {
    part(pb::result_part::Part::Done(pb::Done {
        rows_affected,
        last_insert_rowid,
        txn_id: txn.map(|t| t.0.clone()).unwrap_or_default(),
    }))
}

async fn send(out: &PartSender, p: pb::ResultPart) -> Result<()> {
    out.send(Ok(p)).await.map_err(|_| Error::unavailable("client went away"))
}

/// Sets its flag when dropped: work running elsewhere (a blocking task)
/// that watches the flag stops with the future that owns this.
#[derive(Default)]
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn rows_part(rows: Vec<Vec<Value>>) -> pb::ResultPart {
    part(pb::result_part::Part::Rows(value::to_rows(rows)))
}

fn columns_part(columns: &[Column]) -> pb::ResultPart {
    part(pb::result_part::Part::Columns(pb::Columns {
        columns: columns.iter().map(|c| pb::Column { name: c.name.clone(), decl_type: c.decl_type.clone() }).collect(),
    }))
}

/// Sends a complete result: columns, rows in batches, then `Done`.
pub async fn send_rows(
    out: &PartSender,
    columns: Vec<pb::Column>,
    rows: Vec<Vec<Value>>,
    rows_per_batch: usize,
    done_part: pb::ResultPart,
) -> Result<()> {
    let mut batcher = Batcher::new(out, columns, rows_per_batch);
    for row in rows {
        batcher.push(row).await?;
    }
    batcher.finish(done_part).await
}

/// `EXPLAIN stmt` (but not SQLite's `EXPLAIN QUERY PLAN`): the statement.
fn explained(sql: &str) -> Option<&str> {
    let trimmed = sql.trim_start();
    let head = trimmed.get(..7)?;
    if !head.eq_ignore_ascii_case("EXPLAIN") || !trimmed[7..].starts_with(char::is_whitespace) {
        return None;
    }
    let rest = trimmed[7..].trim_start();
    let query_plan = rest.get(..5).is_some_and(|w| w.eq_ignore_ascii_case("QUERY"));
    (!query_plan).then_some(rest)
}

impl Executor {
    /// An executor over `cluster`; with `tickets`, results that are a
    /// concatenation or merge of shard results go to clients as fragments.
    pub fn new(
        cluster: Arc<Cluster>,
        rows_per_batch: usize,
        statement_memory: u64,
        tickets: Option<Tickets>,
        address: String,
    ) -> Executor {
        Executor {
            cluster,
            catalog: RwLock::new(Arc::new(Catalog::default())),
            shards: AtomicUsize::new(0),
            rows_per_batch,
            statement_memory,
            rowids: RowidGenerator::new(rand::random()),
            tickets,
            metrics: Metrics::default(),
            address,
        }
    }

    /// The cached catalog.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().expect("catalog lock").clone()
    }

    fn set_catalog(&self, c: Catalog) {
        *self.catalog.write().expect("catalog lock") = Arc::new(c);
    }

    /// Reloads the catalog from the meta group.
    pub async fn refresh_catalog(&self) -> Result<()> {
        if let Some(c) = meta::load_catalog(&self.cluster, &self.catalog()).await? {
            self.set_catalog(c);
        }
        Ok(())
    }

    /// The number of data shards, read from the meta group once.
    pub async fn shard_count(&self) -> Result<usize> {
        let known = self.shards.load(Ordering::Relaxed);
        if known > 0 {
            return Ok(known);
        }
        let n = meta::shard_count(&self.cluster).await?;
        if n == 0 {
            return Err(Error::unavailable("the cluster's shard map is not written yet; try again shortly"));
        }
        self.shards.store(n, Ordering::Relaxed);
        Ok(n)
    }

    /// Makes sure the catalog knows every table `sql` names: when the cache
    /// misses one, reloads it from the meta group, then from the first
    /// shard's own schema (which also heals a catalog that missed a
    /// change). A write naming a table that is still unknown fails; a read
    /// goes on and fails on a shard with SQLite's message.
    async fn ensure_known(&self, sql: &str, kind: Kind) -> Result<()> {
        let targets = planner::relations(sql);
        let missing = |c: &Catalog| targets.iter().find(|t| c.relation(t).is_none()).cloned();
        if missing(&self.catalog()).is_none() {
            return Ok(());
        }
        self.refresh_catalog().await?;
        if missing(&self.catalog()).is_none() {
            return Ok(());
        }
        let synced = meta::sync_catalog(&self.cluster).await?;
        let result = match missing(&synced) {
            Some(t) if kind == Kind::Write => Err(Error::invalid(format!("no such table: {t}"))),
            _ => Ok(()),
        };
        self.set_catalog(synced);
        result
    }

    /// Runs one statement, sending its result parts to `out`.
    pub async fn execute(&self, req: pb::ExecuteRequest, out: &PartSender) -> Result<()> {
        sql::check_size(&req.sql)?;
        let kind = sql::classify(&req.sql)?;
        let txn = (!req.txn_id.is_empty()).then(|| TxnId(req.txn_id.clone()));
        // Reads inside a transaction must see its writes: they run in its
        // shards' logs, through here.
        let direct = self.tickets.is_some() && req.accept_fragments && txn.is_none();
        let statement = Statement {
            sql: req.sql,
            params: req.params.into_iter().map(Into::into).collect(),
            seed: rand::random(),
            now_ms: chrono::Utc::now().timestamp_millis(),
            request_id: (!req.request_id.is_empty()).then_some(req.request_id),
            schema_version: None,
            memory_limit: Some(self.statement_memory),
        };
        if kind == Kind::Show {
            return introspection::show(self, &statement.sql, out, self.rows_per_batch).await;
        }
        let shards = self.shard_count().await?;
        match (kind, &txn) {
            (Kind::Begin, Some(_)) => Err(Error::invalid("cannot start a transaction within a transaction")),
            (Kind::Commit, None) => Err(Error::invalid("cannot commit - no transaction is active")),
            (Kind::Rollback, None) => Err(Error::invalid("cannot rollback - no transaction is active")),
            (Kind::Begin, None) => {
                // The client's request id names the transaction, so that a
                // client whose BEGIN reply was lost can still roll it back.
                let t = TxnId(statement.request_id.clone().unwrap_or_else(|| ulid::Ulid::generate().to_string()));
                self.begin(&t, shards).await?;
                // The transaction holds every shard now: the schema it sees
                // is this one until its own DDL.
                if let Ok(c) = meta::sync_catalog(&self.cluster).await {
                    self.set_catalog(c);
                }
                send(out, done(0, 0, Some(&t))).await
            }
            (Kind::Commit, Some(t)) => {
                self.end(shards, |_| Command::Commit(t.clone())).await?;
                send(out, done(0, 0, None)).await
            }
            (Kind::Rollback, Some(t)) => {
                self.end(shards, |_| Command::Rollback(t.clone())).await?;
                send(out, done(0, 0, None)).await
            }
            _ => {
                if let Some(inner) = explained(&statement.sql) {
                    let inner_kind = sql::classify(inner)?;
                    if matches!(inner_kind, Kind::Read | Kind::Write) {
                        self.ensure_known(inner, inner_kind).await?;
                    }
                    let direct = direct && inner_kind == Kind::Read;
                    let plan = self.plan(&self.catalog(), inner, &statement.params, inner_kind, shards, direct)?;
                    let rows = plan.to_string().lines().map(|l| vec![Value::Text(l.to_string())]).collect();
                    let columns = vec![pb::Column { name: "plan".into(), decl_type: String::new() }];
                    return send_rows(out, columns, rows, self.rows_per_batch, done(0, 0, txn.as_ref())).await;
                }
                if matches!(kind, Kind::Read | Kind::Write) {
                    self.ensure_known(&statement.sql, kind).await?;
                }
                self.plan_and_run(kind, statement, txn.as_ref(), shards, direct && kind == Kind::Read, out).await
            }
        }
    }

    /// Plans and runs a statement. Reads and writes carry the schema
    /// version of the catalog they were planned with; when a shard's
    /// schema has moved on (another index server's DDL), the catalog is
    /// reloaded and the statement planned again. Nothing has reached the
    /// client then: every shard checks before it answers. (A read handed
    /// out as fragments is checked when the client opens them; the client
    /// then sends it again, asking for relayed rows.)
    async fn plan_and_run(
        &self,
        kind: Kind,
        statement: Statement,
        txn: Option<&TxnId>,
        shards: usize,
        direct: bool,
        out: &PartSender,
    ) -> Result<()> {
        let mut attempt = 0;
        loop {
            let catalog = self.catalog();
            let plan = self.plan(&catalog, &statement.sql, &statement.params, kind, shards, direct)?;
            tracing::debug!(sql = %statement.sql, plan = %plan, "planned");
            let mut planned = statement.clone();
            // Inside a transaction (which holds every shard, so no other
            // DDL interleaves; its catalog is read at BEGIN) its own DDL
            // would make the check refuse its later statements.
            if matches!(kind, Kind::Read | Kind::Write) && txn.is_none() {
                planned.schema_version = catalog.version;
            }
            match self.run(plan, kind, planned, txn, shards, out).await {
                Err(Error::StaleSchema { version }) if txn.is_none() && attempt < STALE_SCHEMA_RETRIES => {
                    attempt += 1;
                    tracing::debug!(version, attempt, "schema changed under the plan; reloading the catalog");
                    tokio::time::sleep(STALE_SCHEMA_BACKOFF * attempt).await;
                    self.set_catalog(meta::sync_catalog(&self.cluster).await?);
                }
                Err(Error::StaleSchema { version }) => {
                    return Err(Error::Retryable(format!(
                        "the schema changed while the statement ran (a shard is at version {version}){}; run it \
                         again, and if this persists, a schema change did not reach every shard: run it again \
                         (with IF EXISTS / IF NOT EXISTS)",
                        if txn.is_some() { " inside the transaction: roll back and retry the transaction" } else { "" }
                    )))
                }
                r => return r,
            }
        }
    }

    fn plan(
        &self,
        catalog: &Catalog,
        sql: &str,
        params: &[Value],
        kind: Kind,
        shards: usize,
        direct: bool,
    ) -> Result<Plan> {
        let numbered = sql::number_placeholders(sql)?;
        let keys = Keys { params };
        planner::plan(&Context { catalog, shards, keys: &keys, direct }, &numbered, kind)
    }

    async fn run(
        &self,
        plan: Plan,
        kind: Kind,
        statement: Statement,
        txn: Option<&TxnId>,
        shards: usize,
        out: &PartSender,
    ) -> Result<()> {
        match plan {
            Plan::Single { group, .. } if kind == Kind::Read && txn.is_none() => {
                self.stream_read(group, statement, out).await
            }
            Plan::Gather { tables, copies, filters, groups } => {
                let db = self.gather(&tables, &copies, &filters, &groups, &statement, txn).await?;
                self.run_here(db, statement, txn, out).await
            }
            Plan::Scatter { groups, split, direct: true } => self.hand_out(&groups, split, statement, out).await,
            Plan::Scatter { groups, split, direct: false } => self.scatter(&groups, split, statement, txn, out).await,
            Plan::Schema { groups, creates, undo } => {
                let r = self.schema_change(statement, &groups, creates, undo, txn).await?;
                self.send_result(out, r, txn).await
            }
            Plan::Insert { table, source } => {
                let r = self.insert(&table, source, statement, txn, shards).await?;
                self.send_result(out, r, txn).await
            }
            Plan::Single { group, .. } => {
                let r = self.apply(group, statement, txn).await?;
                self.send_result(out, r, txn).await
            }
            Plan::Broadcast { groups, same_seed } => {
                let r = self.broadcast(&groups, statement, same_seed, txn).await?;
                self.send_result(out, r, txn).await
            }
        }
    }

    /// Runs `statement` in a scratch database here, streaming its rows.
    async fn run_here(&self, db: Db, mut statement: Statement, txn: Option<&TxnId>, out: &PartSender) -> Result<()> {
        // The scratch database has a schema of its own.
        statement.schema_version = None;
        let out = out.clone();
        let done_txn = txn.cloned();
        let rows_per_batch = self.rows_per_batch;
        // Dropped with this future (statement timeout, client gone): the
        // query stops.
        let cancel = CancelOnDrop::default();
        let limits = Limits { cancel: Some(cancel.0.clone()), deadline: None };
        let result = tokio::task::spawn_blocking(move || {
            let mut batch = Batch::new(rows_per_batch);
            let send_rows = |rows| out.blocking_send(Ok(rows_part(rows))).is_ok();
            let r = db.run(
                &statement,
                limits,
                |columns| {
                    let _ = out.blocking_send(Ok(columns_part(columns)));
                },
                |row| batch.push(row).is_none_or(send_rows),
            );
            let rest = batch.take();
            if !rest.is_empty() {
                send_rows(rest);
            }
            r.map(|_| {
                let _ = out.blocking_send(Ok(done(0, 0, done_txn.as_ref())));
            })
        })
        .await
        .map_err(|e| Error::io(format!("query task: {e}")))?;
        result.map_err(failure)
    }

    /// Runs a split query: its shard part on every shard in parallel, then
    /// the combining step (`pushdown`).
    async fn scatter(
        &self,
        groups: &[GroupId],
        split: Split,
        statement: Statement,
        txn: Option<&TxnId>,
        out: &PartSender,
    ) -> Result<()> {
        let part = with_sql(&statement, split.shard_sql)?;
        let opened =
            join_all(groups.iter().map(|g| ShardRows::open(self, *g, Self::for_shard(&part, *g, false), txn))).await;
        let mut shards = opened.into_iter().collect::<Result<Vec<_>>>()?;
        let mut columns = Vec::new();
        for s in &mut shards {
            columns = s.columns().await?;
        }
        match split.combine {
            Combine::Concat => {
                let mut batcher = Batcher::new(out, columns, self.rows_per_batch);
                for s in &mut shards {
                    while let Some(row) = s.next().await? {
                        batcher.push(row).await?;
                    }
                }
                batcher.finish(done(0, 0, txn)).await
            }
            Combine::Merge { keys, offset, limit } => {
                let hidden = keys.len();
                let mut batcher = Batcher::new(out, columns.into_iter().skip(hidden).collect(), self.rows_per_batch);
                let mut heads = Vec::with_capacity(shards.len());
                for s in &mut shards {
                    heads.push(s.next().await?);
                }
                let (mut skipped, mut sent) = (0u64, 0u64);
                while limit.is_none_or(|l| sent < l) {
                    let Some(i) = order::next_head(&keys, &heads) else { break };
                    let row = std::mem::replace(&mut heads[i], shards[i].next().await?).expect("head present");
                    if skipped < offset {
                        skipped += 1;
                        continue;
                    }
                    batcher.push(row.into_iter().skip(hidden).collect()).await?;
                    sent += 1;
                }
                batcher.finish(done(0, 0, txn)).await
            }
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
                self.run_here(db, with_sql(&statement, sql)?, txn, out).await
            }
        }
    }

    /// Answers a split query with fragments: for each shard, the storage
    /// servers holding it and a signed ticket for its part, for the client
    /// to read and combine (concatenate, or merge on the hidden sort keys).
    async fn hand_out(&self, groups: &[GroupId], split: Split, statement: Statement, out: &PartSender) -> Result<()> {
        let (Some(tickets), Combine::Concat | Combine::Merge { .. }) = (&self.tickets, &split.combine) else {
            return Err(Error::io(format!("planned as direct without a ticket key, or with {}", split.combine)));
        };
        let (keys, offset, limit) = match split.combine {
            Combine::Merge { keys, offset, limit } => (keys.into_iter().map(Into::into).collect(), offset, limit),
            _ => (Vec::new(), 0, None),
        };
        let shard_part = with_sql(&statement, split.shard_sql)?;
        let expires_ms = chrono::Utc::now().timestamp_millis().saturating_add(tickets.ttl_ms);
        let replicas = self.cluster.replicas(groups).await?;
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

    /// Opens the transaction on every shard, in shard order (so two
    /// transactions never wait for each other in a cycle).
    async fn begin(&self, t: &TxnId, shards: usize) -> Result<()> {
        for (i, g) in shard::shard_groups(shards).into_iter().enumerate() {
            if let Err(e) = self.txn_command(g, Command::Begin(t.clone())).await {
                for earlier in shard::shard_groups(i) {
                    let _ = self.txn_command(earlier, Command::Rollback(t.clone())).await;
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Commits or rolls back on every shard, in shard order.
    async fn end(&self, shards: usize, command: impl Fn(GroupId) -> Command) -> Result<()> {
        let mut first_error = None;
        for g in shard::shard_groups(shards) {
            if let Err(e) = self.txn_command(g, command(g)).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn txn_command(&self, group: GroupId, command: Command) -> Result<StatementResult> {
        match self.cluster.write(group, &command, false).await? {
            CommandResult::Txn(outcome) => outcome,
            other => Err(Error::io(format!("unexpected transaction result {other:?}"))),
        }
    }

    /// Applies one statement to one shard, autocommit or in `txn`.
    async fn apply(&self, group: GroupId, statement: Statement, txn: Option<&TxnId>) -> Result<StatementResult> {
        if let Some(t) = txn {
            return self.txn_command(group, Command::InTxn(t.clone(), statement)).await;
        }
        // With a request id the storage tier applies it once, so it may be
        // sent again after a lost reply.
        let idempotent = statement.request_id.is_some();
        match self.cluster.write(group, &Command::Batch(vec![statement]), idempotent).await? {
            CommandResult::Batch(mut o) if o.len() == 1 => o.remove(0),
            other => Err(Error::io(format!("unexpected write result {other:?}"))),
        }
    }

    /// `statement` for shard `group`: its own request id, and its own seed
    /// unless every shard must compute the same values.
    fn for_shard(statement: &Statement, group: GroupId, same_seed: bool) -> Statement {
        let mut s = statement.clone();
        if !same_seed {
            s.seed ^= spread_seed(group.0);
        }
        s.request_id = statement.request_id.as_ref().map(|r| format!("{r}#{group}"));
        s
    }

    /// Applies `statement` on every shard of `groups` in parallel and adds
    /// up the results (a reference table's copies count once).
    async fn broadcast(
        &self,
        groups: &[GroupId],
        statement: Statement,
        same_seed: bool,
        txn: Option<&TxnId>,
    ) -> Result<StatementResult> {
        let results =
            join_all(groups.iter().map(|g| self.apply(*g, Self::for_shard(&statement, *g, same_seed), txn))).await;
        no_partial_replan(&results)?;
        combine(results, same_seed)
    }

    /// Runs a schema change on the first shard, then (if it worked there)
    /// on the others, and records the new catalog.
    async fn schema_change(
        &self,
        mut statement: Statement,
        groups: &[GroupId],
        creates: Option<(String, bool)>,
        undo: Option<Undo>,
        txn: Option<&TxnId>,
    ) -> Result<StatementResult> {
        if let Some(stripped) = sql::strip_reference(&statement.sql) {
            statement.sql = stripped;
        }
        let mut creates = creates;
        if groups.len() > 1 {
            // Checked against the shards' schema as it is now: this index
            // server's cached catalog may miss another one's recent DDL.
            self.set_catalog(meta::sync_catalog(&self.cluster).await?);
            let sql = statement.sql.clone();
            let reference = creates.as_ref().is_some_and(|(_, r)| *r);
            let catalog = self.catalog();
            let uncovered = tokio::task::spawn_blocking(move || catalog::uncovered_by(&catalog, &sql, reference))
                .await
                .map_err(|e| Error::io(format!("schema check: {e}")))??;
            if let Some(u) = uncovered {
                match &mut creates {
                    // A new table whose UNIQUE constraint shards could not
                    // enforce is kept whole on every shard.
                    Some((_, reference)) => *reference = true,
                    // So is an existing one given such an index, while it
                    // holds no rows.
                    None => {
                        if !self.is_empty(&u.table, groups, txn).await? {
                            return Err(Error::invalid(format!(
                                "{} on {} cannot be enforced: {} is sharded on {} and already holds rows, and each \
                                 shard checks uniqueness among its own rows only; include the shard key in the \
                                 constraint, or create the index while the table is empty (it then becomes a \
                                 reference table, copied whole to every shard)",
                                u.constraint, u.table, u.table, u.key
                            )));
                        }
                        meta::set_reference(&self.cluster, &u.table, true).await?;
                    }
                }
            }
        }
        // A new table's distribution is recorded before it exists anywhere
        // (an existing one keeps its own: CREATE … IF NOT EXISTS).
        if let Some((name, reference)) = &creates {
            if self.catalog().table(name).is_none() {
                meta::set_reference(&self.cluster, name, *reference).await?;
            }
        }
        // A new object is dropped again where it was made if some shard
        // cannot make it (not one that existed: that one keeps its rows;
        // not inside a transaction: rolling it back undoes it).
        let undo = undo.filter(|u| txn.is_none() && !self.catalog().has_object(&u.name));
        let (first, rest) = groups.split_first().expect("at least one shard");
        let mut r = self.apply(*first, Self::for_shard(&statement, *first, true), txn).await?;
        // What a virtual table's module wrote to its shadow tables is not
        // the statement's doing.
        r.rows_affected = 0;
        let others = join_all(rest.iter().map(|g| self.apply(*g, Self::for_shard(&statement, *g, true), txn))).await;
        let failed: Vec<String> =
            rest.iter().zip(&others).filter_map(|(g, o)| o.as_ref().err().map(|e| format!("shard {g}: {e}"))).collect();
        match meta::sync_catalog(&self.cluster).await {
            Ok(c) => self.set_catalog(c),
            // The shards have the change; the catalog heals on the next
            // lookup that misses.
            Err(e) => tracing::warn!("catalog not updated after DDL: {e}"),
        }
        if let (false, Some(undo)) = (failed.is_empty(), undo) {
            return Err(self.take_back(&statement, groups, &undo, &failed).await);
        }
        if !failed.is_empty() {
            return Err(Error::unavailable(format!(
                "the schema change was applied on shard {first} but not on every shard ({}); run it again \
                 (with IF NOT EXISTS / IF EXISTS) once those shards are available",
                failed.join("; ")
            )));
        }
        Ok(r)
    }

    /// Drops a new object again from every shard of `groups` after some
    /// failed to create it (`failed`), and says what happened. The failed
    /// ones get the DROP too: a CREATE whose outcome is unknown may sit
    /// in a leader's log and commit once the shard recovers; the DROP then
    /// follows it there. The error is not one the driver re-sends by
    /// itself: the same request id would find the creation recorded as
    /// done on the shards that undid it.
    async fn take_back(&self, statement: &Statement, groups: &[GroupId], undo: &Undo, failed: &[String]) -> Error {
        let mut drop = with_sql(statement, undo.sql.clone()).expect("a DROP statement has no placeholders");
        drop.request_id = statement.request_id.as_ref().map(|r| format!("{r}#undo"));
        let undone = join_all(groups.iter().map(|g| self.apply(*g, Self::for_shard(&drop, *g, true), None))).await;
        let left: Vec<String> = groups
            .iter()
            .zip(&undone)
            .filter_map(|(g, u)| u.as_ref().err().map(|e| format!("shard {g}: {e}")))
            .collect();
        if let Ok(c) = meta::sync_catalog(&self.cluster).await {
            self.set_catalog(c);
        }
        if left.is_empty() {
            Error::Retryable(format!(
                "{} could not be created on every shard ({}), so it was dropped again from the others: nothing \
                 changed; run the statement again once those shards are available",
                undo.name,
                failed.join("; ")
            ))
        } else {
            Error::io(format!(
                "{} could not be created on every shard ({}) nor surely dropped again everywhere ({}); once \
                 every shard is available, run `{}` and then the statement again",
                undo.name,
                failed.join("; "),
                left.join("; "),
                undo.sql
            ))
        }
    }

    /// How many rows of `table` each data shard holds (a reference
    /// table's copies each hold all of them).
    pub async fn rows_per_shard(&self, table: &str) -> Result<Vec<(GroupId, i64)>> {
        self.ensure_known(&format!("SELECT * FROM {}", sql::quote_name(table)), Kind::Write).await?;
        let groups = shard::shard_groups(self.shard_count().await?);
        let count = own_read(format!("SELECT count(*) FROM {}", sql::quote_name(table)));
        let counted = join_all(groups.iter().map(|g| self.fetch(*g, count.clone(), None))).await;
        groups
            .into_iter()
            .zip(counted)
            .map(|(g, rows)| match rows?.first().and_then(|r| r.first()) {
                Some(Value::Integer(n)) => Ok((g, *n)),
                other => Err(Error::io(format!("unexpected count from shard {g}: {other:?}"))),
            })
            .collect()
    }

    /// The shard that holds (or would hold) the row of `table` whose
    /// primary key is `key` (SQL values, comma-separated, in key order).
    pub async fn shard_of_key(&self, table: &str, key: &str) -> Result<GroupId> {
        self.ensure_known(&format!("SELECT * FROM {}", sql::quote_name(table)), Kind::Write).await?;
        let shards = self.shard_count().await?;
        let catalog = self.catalog();
        let t = catalog.table(table).ok_or_else(|| Error::invalid(format!("no such table: {table}")))?;
        if !t.is_sharded() {
            return Err(Error::invalid(format!("{table} is a reference table: every shard holds all its rows")));
        }
        if t.key_columns().is_none() {
            return Err(Error::invalid(format!(
                "{table} has no primary key: its rows are spread by the rowid the index server assigns"
            )));
        }
        // Literal values only: the key is computed here, outside any budget.
        let values = match sql::parse_one(&format!("SELECT {key}")).ok() {
            Some(sqlparser::ast::Statement::Query(q)) => match q.body.as_ref() {
                sqlparser::ast::SetExpr::Select(s) => s
                    .projection
                    .iter()
                    .map(|i| match i {
                        sqlparser::ast::SelectItem::UnnamedExpr(e) if planner::is_literal(e) => Some(e.to_string()),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>(),
                _ => None,
            },
            _ => None,
        };
        let values = values.ok_or_else(|| {
            Error::invalid(format!(
                "SHOW SHARD OF {table} KEY takes literal values (numbers, strings), comma-separated"
            ))
        })?;
        let hash = Keys { params: &[] }.hash_exprs(t, &[values.join(", ")])?;
        Ok(shard::shard_group(shard::shard_of(hash, shards)))
    }

    /// True when `table` has no row on any shard of `groups`.
    async fn is_empty(&self, table: &str, groups: &[GroupId], txn: Option<&TxnId>) -> Result<bool> {
        let probe = own_read(format!("SELECT 1 FROM {} LIMIT 1", sql::quote_name(table)));
        let found = join_all(groups.iter().map(|g| self.fetch(*g, probe.clone(), txn))).await;
        for rows in found {
            if !rows?.is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Computes an INSERT's rows, splits them by shard and writes them.
    async fn insert(
        &self,
        table: &str,
        source: Source,
        statement: Statement,
        txn: Option<&TxnId>,
        shards: usize,
    ) -> Result<StatementResult> {
        let catalog = self.catalog();
        let Some(table) = catalog.table(table).cloned() else {
            return Err(Error::invalid(format!("no such table: {table}")));
        };
        let numbered = sql::number_placeholders(&statement.sql)?;
        // The source binds the parameters it names (RETURNING may name others).
        let source_statement = |sql: &str| -> Result<Statement> {
            let n = sql::placeholder_count(sql)?;
            let mut params = statement.params.clone();
            params.truncate(n);
            Ok(Statement { sql: sql.to_string(), params, request_id: None, ..statement.clone() })
        };
        let rows = match &source {
            Source::Defaults => vec![Vec::new()],
            Source::Local(sql) => self.compute(source_statement(sql)?).await?,
            Source::Query(sql, plan) => self.collect(plan, source_statement(sql)?, txn).await?,
        };
        let Some(sqlparser::ast::Statement::Insert(ins)) = sql::parse_one(&numbered).ok() else {
            return Err(Error::invalid("not an INSERT"));
        };
        let defaults = |expr: &str| -> Result<Value> {
            let db = Db::open_scratch().map_err(|e| Error::io(format!("scratch database: {e}")))?;
            let s =
                Statement { sql: format!("SELECT {expr}"), params: vec![], schema_version: None, ..statement.clone() };
            let r = db.run_collect(&s).map_err(failure)?;
            Ok(r.rows.into_iter().next().and_then(|r| r.into_iter().next()).unwrap_or(Value::Null))
        };
        let parts = insert::split(&table, &ins, rows, shards, &self.rowids, statement.now_ms, &defaults)?;
        if parts.is_empty() {
            // An INSERT … SELECT whose query found no rows changes nothing.
            return Ok(StatementResult {
                columns: Vec::new(),
                rows: Vec::new(),
                rows_affected: 0,
                last_insert_rowid: 0,
            });
        }
        let results = join_all(parts.iter().enumerate().map(|(i, p)| {
            let s = Statement {
                sql: p.sql.clone(),
                params: p.params.clone(),
                // A chunk's copies (reference tables) compute the same values.
                seed: statement.seed ^ spread_seed(p.last_row as u64 + 1),
                now_ms: statement.now_ms,
                request_id: statement.request_id.as_ref().map(|r| format!("{r}#{i}")),
                schema_version: statement.schema_version,
                memory_limit: statement.memory_limit,
            };
            self.apply(p.group, s, txn)
        }))
        .await;
        no_partial_replan(&results)?;
        // last_insert_rowid() is that of the part holding the last row.
        let last_part = parts.iter().enumerate().max_by_key(|(_, p)| p.last_row).map(|(i, _)| i);
        let last_rowid = last_part.and_then(|i| results[i].as_ref().ok()).map(|r| r.last_insert_rowid);
        // A reference table counts (and returns) its first copy's rows.
        let first = shard::shard_group(0);
        let results = match table.is_sharded() {
            true => results,
            false => {
                let (copies, counted): (Vec<_>, Vec<_>) =
                    parts.iter().zip(results).partition(|(p, _)| p.group != first);
                copies.into_iter().map(|(_, r)| r).collect::<Result<Vec<_>>>()?;
                counted.into_iter().map(|(_, r)| r).collect()
            }
        };
        let mut r = combine(results, false)?;
        r.last_insert_rowid = last_rowid.unwrap_or(0);
        Ok(r)
    }

    /// Runs a query that reads no table in a scratch database here.
    async fn compute(&self, mut s: Statement) -> Result<Vec<Vec<Value>>> {
        s.schema_version = None;
        tokio::task::spawn_blocking(move || {
            let db = Db::open_scratch().map_err(|e| Error::io(format!("scratch database: {e}")))?;
            db.run_collect(&s).map(|r| r.rows).map_err(failure)
        })
        .await
        .map_err(|e| Error::io(format!("query task: {e}")))?
    }

    /// Runs a read plan and collects its rows.
    async fn collect(&self, plan: &Plan, statement: Statement, txn: Option<&TxnId>) -> Result<Vec<Vec<Value>>> {
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
    async fn fetch(&self, group: GroupId, statement: Statement, txn: Option<&TxnId>) -> Result<Vec<Vec<Value>>> {
        if let Some(t) = txn {
            return Ok(self.txn_command(group, Command::InTxn(t.clone(), statement)).await?.rows);
        }
        self.cluster.read_rows(read_request(group, statement)).await
    }

    /// A scratch database with the catalog's schema, the rows of `tables`
    /// (those that pass their `filters`) from every shard of `groups` (with
    /// their rowids, so rows keep the order they have on one database),
    /// and those of reference tables `copies` from the first shard.
    async fn gather(
        &self,
        tables: &[String],
        copies: &[String],
        filters: &BTreeMap<String, String>,
        groups: &[GroupId],
        statement: &Statement,
        txn: Option<&TxnId>,
    ) -> Result<Db> {
        let catalog = self.catalog();
        let mut loads = Vec::new();
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
            let fetched = join_all(groups.iter().map(|g| self.fetch(*g, statement.clone(), txn))).await;
            let rows: Vec<Vec<Vec<Value>>> = fetched.into_iter().collect::<Result<_>>()?;
            loads.push((insert, rows));
        }
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

    async fn send_result(&self, out: &PartSender, r: StatementResult, txn: Option<&TxnId>) -> Result<()> {
        let columns =
            r.columns.iter().map(|c| pb::Column { name: c.name.clone(), decl_type: c.decl_type.clone() }).collect();
        send_rows(out, columns, r.rows, self.rows_per_batch, done(r.rows_affected, r.last_insert_rowid, txn)).await
    }

    /// Streams a read from a shard's leader straight through.
    async fn stream_read(&self, group: GroupId, statement: Statement, out: &PartSender) -> Result<()> {
        let mut stream = self.cluster.read(read_request(group, statement)).await?;
        loop {
            match stream.message().await {
                Ok(Some(p)) => send(out, p).await?,
                Ok(None) => return Ok(()),
                Err(s) => return Err(Error::from(s)),
            }
        }
    }
}

/// How often a statement is planned again after a shard reports that
/// its schema changed, and the pause before the first retry (then longer
/// with each attempt).
const STALE_SCHEMA_RETRIES: u32 = 5;
const STALE_SCHEMA_BACKOFF: std::time::Duration = std::time::Duration::from_millis(20);

/// Result parts buffered between a scatter and the INSERT collecting its rows.
const SCATTER_COLLECT_BUFFER: usize = 16;

/// A read of the index server's own, with no parameters or randomness.
fn own_read(sql: String) -> Statement {
    Statement { sql, params: vec![], seed: 0, now_ms: 0, request_id: None, schema_version: None, memory_limit: None }
}

/// `statement` with other SQL, bound to the parameters that SQL names.
fn with_sql(statement: &Statement, sql: String) -> Result<Statement> {
    let mut params = statement.params.clone();
    params.truncate(sql::placeholder_count(&sql)?);
    Ok(Statement { sql, params, request_id: None, ..statement.clone() })
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

/// The affinity SQLite gives a column declared `decl` (its rules, in
/// order), as the one keyword that declares it; `ANY` (STRICT tables) and
/// BLOB have none.
fn affinity(decl: &str) -> &'static str {
    let t = decl.to_ascii_uppercase();
    if t.contains("INT") {
        "INTEGER"
    } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
        "TEXT"
    } else if t.is_empty() || t.contains("BLOB") || t.trim() == "ANY" {
        ""
    } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
        "REAL"
    } else {
        "NUMERIC"
    }
}

/// One shard's answer to a query, row by row: streamed from the shard's
/// leader, or (inside a transaction, where reads are log entries) whole.
enum ShardRows {
    Stream {
        stream: Box<tonic::Streaming<pb::ResultPart>>,
        columns: Option<Vec<pb::Column>>,
        rows: std::collections::VecDeque<Vec<Value>>,
        done: bool,
    },
    Whole {
        columns: Vec<pb::Column>,
        rows: std::vec::IntoIter<Vec<Value>>,
    },
}

impl ShardRows {
    async fn open(executor: &Executor, group: GroupId, statement: Statement, txn: Option<&TxnId>) -> Result<ShardRows> {
        if let Some(t) = txn {
            let r = executor.txn_command(group, Command::InTxn(t.clone(), statement)).await?;
            let columns =
                r.columns.iter().map(|c| pb::Column { name: c.name.clone(), decl_type: c.decl_type.clone() }).collect();
            return Ok(ShardRows::Whole { columns, rows: r.rows.into_iter() });
        }
        let stream = executor.cluster.read(read_request(group, statement)).await?;
        Ok(ShardRows::Stream { stream: Box::new(stream), columns: None, rows: Default::default(), done: false })
    }

    /// Reads the next part of a stream; false at its end.
    async fn pull(&mut self) -> Result<bool> {
        let ShardRows::Stream { stream, columns, rows, done } = self else { return Ok(false) };
        if *done {
            return Ok(false);
        }
        match stream.message().await.map_err(Error::from)? {
            Some(pb::ResultPart { part: Some(pb::result_part::Part::Columns(c)) }) => *columns = Some(c.columns),
            Some(pb::ResultPart { part: Some(pb::result_part::Part::Rows(r)) }) => rows.extend(value::rows_from(r)),
            Some(_) => {}
            None => *done = true,
        }
        Ok(!*done)
    }

    /// The answer's columns.
    async fn columns(&mut self) -> Result<Vec<pb::Column>> {
        loop {
            match self {
                ShardRows::Whole { columns, .. } => return Ok(columns.clone()),
                ShardRows::Stream { columns: Some(c), .. } => return Ok(c.clone()),
                ShardRows::Stream { .. } => {
                    if !self.pull().await? {
                        return Ok(Vec::new());
                    }
                }
            }
        }
    }

    /// The next row, or `None` after the last.
    async fn next(&mut self) -> Result<Option<Vec<Value>>> {
        loop {
            match self {
                ShardRows::Whole { rows, .. } => return Ok(rows.next()),
                ShardRows::Stream { rows, .. } => {
                    if let Some(r) = rows.pop_front() {
                        return Ok(Some(r));
                    }
                    if !self.pull().await? {
                        return Ok(None);
                    }
                }
            }
        }
    }
}

/// Sends rows to the client in batches: columns first, `Done` last.
struct Batcher<'a> {
    out: &'a PartSender,
    columns: Option<Vec<pb::Column>>,
    batch: Batch,
}

impl<'a> Batcher<'a> {
    /// A batcher sending `columns` first (none for a result without columns).
    fn new(out: &'a PartSender, columns: Vec<pb::Column>, rows_per_batch: usize) -> Batcher<'a> {
        Batcher { out, columns: (!columns.is_empty()).then_some(columns), batch: Batch::new(rows_per_batch) }
    }

    async fn send_columns(&mut self) -> Result<()> {
        if let Some(columns) = self.columns.take() {
            send(self.out, part(pb::result_part::Part::Columns(pb::Columns { columns }))).await?;
        }
        Ok(())
    }

    async fn push(&mut self, row: Vec<Value>) -> Result<()> {
        if let Some(rows) = self.batch.push(row) {
            self.send_columns().await?;
            send(self.out, rows_part(rows)).await?;
        }
        Ok(())
    }

    async fn finish(mut self, done_part: pb::ResultPart) -> Result<()> {
        self.send_columns().await?;
        let rest = self.batch.take();
        if !rest.is_empty() {
            send(self.out, rows_part(rest)).await?;
        }
        send(self.out, done_part).await
    }
}

/// What a statement's seed is XORed with for its `n`-th part (n > 0), so
/// that parts on different shards draw different random values.
fn spread_seed(n: u64) -> u64 {
    /// 2⁶⁴ divided by the golden ratio: consecutive `n` land far apart.
    const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
    n.wrapping_mul(GOLDEN)
}

/// A read of `statement` on `group`.
fn read_request(group: GroupId, statement: Statement) -> pb::ReadRequest {
    pb::ReadRequest {
        group: group.0,
        sql: statement.sql,
        params: statement.params.into_iter().map(Into::into).collect(),
        seed: statement.seed,
        now_ms: statement.now_ms,
        schema_version: statement.schema_version,
        memory_limit: statement.memory_limit,
    }
}

fn failure(f: drsdb_storage::Failure) -> Error {
    match f {
        drsdb_storage::Failure::Statement(e) => e,
        drsdb_storage::Failure::Environment(e) => Error::io(e),
    }
}

/// Refuses to let a write be planned again when some shards applied it
/// and others refused it because their schema changed: planned again, it
/// would apply twice where it did apply. (When every shard refused, it is
/// planned again.)
fn no_partial_replan(results: &[Result<StatementResult>]) -> Result<()> {
    let applied = results.iter().filter(|r| r.is_ok()).count();
    let stale = results.iter().filter(|r| matches!(r, Err(Error::StaleSchema { .. }))).count();
    if applied > 0 && stale > 0 {
        return Err(Error::io(format!(
            "the statement was applied on {applied} shard(s) but {stale} refused it because the table's schema \
             changed meanwhile (another index server's DDL); statements over several shards are not atomic: check \
             the rows it writes before running it again"
        )));
    }
    Ok(())
}

/// Adds up per-shard results: the first error wins; rows concatenate;
/// counts add up, except for `copies` of one table (reference tables),
/// which count once.
fn combine(results: Vec<Result<StatementResult>>, copies: bool) -> Result<StatementResult> {
    let mut total: Option<StatementResult> = None;
    for r in results {
        let r = r?;
        match &mut total {
            None => total = Some(r),
            Some(t) if !copies => {
                t.rows_affected += r.rows_affected;
                t.rows.extend(r.rows);
                t.last_insert_rowid = r.last_insert_rowid;
            }
            Some(_) => {}
        }
    }
    total.ok_or_else(|| Error::io("no shard answered"))
}
