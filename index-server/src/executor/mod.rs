//! Executes one statement: classify it, fix its clock and random seed,
//! check the catalog, plan it (`planner`), carry the plan out over the
//! shards through the storage tier, and stream the result back.
//!
//! This module dispatches; each kind of work has its own:
//! - `txn`: a statement on one shard, autocommit or in a transaction, and
//!   BEGIN/COMMIT/ROLLBACK;
//! - `write`: INSERTs split by shard, UPDATE/DELETE broadcast;
//! - `ddl`: schema changes on every shard;
//! - `scatter`: queries split over shards and combined, or handed to the
//!   client as fragments;
//! - `gather`: queries answered in a scratch database here;
//! - `output`: the result parts sent to the client.
//!
//! The executor holds the storage tier as a `dyn StorageTier` (gRPC in
//! production, in-process in tests) and reads no process-wide state.

mod ddl;
mod gather;
mod output;
mod scatter;
mod snapshot;
mod txn;
mod write;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use drsdb_common::command::Statement;
use drsdb_common::config::IndexConfig;
use drsdb_common::order::Collation;
use drsdb_common::sql::{self, Kind};
use drsdb_common::ticket::TicketKey;
use drsdb_common::tier::StorageTier;
use drsdb_common::{shard, Error, NodeId, Result, Value};
use drsdb_proto as pb;
use drsdb_sqlite::Failure;

pub use output::{done, send_rows, PartSender};
pub use txn::{Held, Txn};

use crate::catalog::{Catalog, Table};
use crate::introspection;
use crate::keys::{Keys, RowidGenerator};
use crate::meta;
use crate::metrics::Metrics;
use crate::planner::{self, Context, Plan, Source};
use output::send;

/// An index server counts as alive for this many announce intervals.
const LIVENESS_INTERVALS: i64 = 3;

/// Runs statements for any client. Holds no per-client state: a
/// transaction is named by the id the client sends with each statement.
pub struct Executor {
    /// The storage tier.
    pub tier: Arc<dyn StorageTier>,
    catalog: RwLock<Arc<Catalog>>,
    /// The number of data shards; 0 until read from the meta group.
    shards: AtomicUsize,
    rows_per_batch: usize,
    /// Every statement's memory budget in bytes (`statement_memory_mb`).
    statement_memory: u64,
    rowids: RowidGenerator,
    /// Makes transaction ids.
    txn_ids: std::sync::Mutex<ulid::Generator>,
    /// Until when (ms since 1970) statements over several shards skip
    /// preparing each shard as they run there: one that tried found a
    /// shard held (see `Executor::in_own_txn`).
    contended_until_ms: std::sync::atomic::AtomicI64,
    /// Signs direct-streaming tickets; `None`: every row is relayed.
    tickets: Option<Tickets>,
    /// What this server has done.
    pub metrics: Metrics,
    /// This server's address as clients reach it.
    pub address: String,
    /// An index server that has not announced itself for this long is
    /// taken for dead (`LIVENESS_INTERVALS` announce intervals).
    liveness_ms: i64,
}

/// What a read's client may do itself: read a split query's shards
/// (fragments), and run the read again with other parameters on its
/// shard (routes).
#[derive(Clone, Copy, Debug)]
struct DirectReads {
    fragments: bool,
    routes: bool,
}

/// How tickets for direct streaming are made.
pub struct Tickets {
    /// The cluster's ticket key.
    pub key: TicketKey,
    /// How long a ticket is valid, in milliseconds.
    pub ttl_ms: i64,
}

impl Executor {
    /// An executor over `tier`, configured by `config`, for the index
    /// server clients reach at `address`. With `direct_streaming` (and the
    /// ticket key it needs), results that are a concatenation or merge of
    /// shard results go to clients as fragments.
    pub fn new(tier: Arc<dyn StorageTier>, config: &IndexConfig, address: String) -> Result<Executor> {
        let tickets = match config.direct_streaming {
            true => Some(Tickets { key: TicketKey::load(&config.ticket_key)?, ttl_ms: config.ticket_ttl_ms as i64 }),
            false => None,
        };
        Ok(Executor {
            tier,
            catalog: RwLock::new(Arc::new(Catalog::default())),
            shards: AtomicUsize::new(0),
            rows_per_batch: config.rows_per_batch,
            statement_memory: config.statement_memory_mb << 20,
            rowids: RowidGenerator::new(rand::random()),
            txn_ids: std::sync::Mutex::new(ulid::Generator::new()),
            contended_until_ms: Default::default(),
            tickets,
            metrics: Metrics::default(),
            address,
            liveness_ms: LIVENESS_INTERVALS * config.announce_interval_ms as i64,
        })
    }

    /// Creates the meta tables and records the shard map (what the storage
    /// servers were configured with), unless already done; then reads the
    /// shard count. The index server serves statements once this worked.
    pub async fn prepare(&self) -> Result<()> {
        meta::ensure_schema(self.tier.as_ref()).await?;
        let status = self.tier.status().await.into_iter().find_map(|s| s.status.ok().filter(|s| !s.nodes.is_empty()));
        let status = status.ok_or_else(|| Error::unavailable("no storage server answers; check storage_seeds"))?;
        let nodes: Vec<NodeId> = status.nodes.iter().map(|n| NodeId(n.id)).collect();
        meta::ensure_shard_map(self.tier.as_ref(), &nodes, status.shards as usize).await?;
        self.shard_count().await?;
        Ok(())
    }

    /// Index servers that announced themselves within the liveness window.
    pub async fn live_index_servers(&self) -> Result<Vec<String>> {
        let now_ms = chrono::Utc::now().timestamp_millis();
        meta::live_index_servers(self.tier.as_ref(), now_ms - self.liveness_ms).await
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
        if let Some(c) = meta::load_catalog(self.tier.as_ref(), &self.catalog()).await? {
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
        let n = meta::shard_count(self.tier.as_ref()).await?;
        if n == 0 {
            return Err(Error::unavailable("the cluster's shard map is not written yet; try again shortly"));
        }
        self.shards.store(n, Ordering::Relaxed);
        Ok(n)
    }

    /// The catalog's table `name` and the shard count, reloading the
    /// catalog once if the cache does not know the table.
    pub async fn table(&self, name: &str) -> Result<(Table, usize)> {
        let shards = self.shard_count().await?;
        if let Some(t) = self.catalog().table(name) {
            return Ok((t.clone(), shards));
        }
        self.refresh_catalog().await?;
        match self.catalog().table(name) {
            Some(t) => Ok((t.clone(), shards)),
            None => Err(Error::invalid(format!("no such table: {name}"))),
        }
    }

    /// Makes sure the catalog knows every table `sql` names: when the cache
    /// misses one, reloads it from the meta group, then from the first
    /// shard's own schema (which also heals a catalog that missed a
    /// change). A write naming a table that is still unknown fails; a read
    /// goes on and fails on a shard with SQLite's message.
    pub(crate) async fn ensure_known(&self, sql: &str, kind: Kind) -> Result<()> {
        let targets = planner::relations(sql);
        let missing = |c: &Catalog| targets.iter().find(|t| c.relation(t).is_none()).cloned();
        if missing(&self.catalog()).is_none() {
            return Ok(());
        }
        self.refresh_catalog().await?;
        if missing(&self.catalog()).is_none() {
            return Ok(());
        }
        let synced = meta::sync_catalog(self.tier.as_ref()).await?;
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

        // Reads inside a transaction must see its writes: they run in its
        // shards' logs, through here.
        let fragments = self.tickets.is_some() && req.accept_fragments && req.txn_id.is_empty();
        let want_route = req.want_route;
        let direct = |kind: Kind| DirectReads {
            fragments: fragments && kind == Kind::Read,
            routes: fragments && kind == Kind::Read && want_route,
        };
        let batch_rows = req.batch_rows as usize;
        if batch_rows > 0 && (kind != Kind::Write || explained(&req.sql).is_some()) {
            return Err(Error::invalid("batch_rows is for an INSERT … VALUES of one row"));
        }
        let request_id = (!req.request_id.is_empty()).then_some(req.request_id);
        let (seed, now_ms) = clock_of(request_id.as_deref());
        let statement = Statement {
            sql: req.sql,
            params: req.params.into_iter().map(Into::into).collect(),
            seed,
            now_ms,
            request_id,
            schema_version: None,
            memory_limit: Some(self.statement_memory),
        };
        if kind == Kind::Show {
            return introspection::show(self, &statement.sql, out, self.rows_per_batch).await;
        }
        let shards = self.shard_count().await?;
        let txn = match req.txn_id.is_empty() {
            true => None,
            false => Some(Txn::from_client(&req.txn_id, &req.txn_groups, shards)?),
        };
        match (kind, &txn) {
            (Kind::Begin, Some(_)) => Err(Error::invalid("cannot start a transaction within a transaction")),
            (Kind::Commit, None) => Err(Error::invalid("cannot commit - no transaction is active")),
            (Kind::Rollback, None) => Err(Error::invalid("cannot rollback - no transaction is active")),
            (Kind::Begin, None) => {
                // Nothing is held yet: the transaction opens on each shard
                // with its first statement there.
                let t = Txn::begin(self.txn_id());
                send(out, done(0, 0, Some(&t))).await
            }
            (Kind::Commit, Some(t)) => {
                self.commit(t, None).await?;
                send(out, done(0, 0, None)).await
            }
            (Kind::Rollback, Some(t)) => {
                self.roll_back(t).await?;
                send(out, done(0, 0, None)).await
            }
            _ => {
                if let Some(inner) = explained(&statement.sql) {
                    let inner_kind = sql::classify(inner)?;
                    if matches!(inner_kind, Kind::Read | Kind::Write) {
                        self.ensure_known(inner, inner_kind).await?;
                    }
                    // Planned as for a client that reads directly, routes included.
                    let direct = DirectReads { routes: direct(inner_kind).fragments, ..direct(inner_kind) };
                    let plan = self.plan(&self.catalog(), inner, &statement.params, inner_kind, shards, direct)?;
                    let rows = plan.to_string().lines().map(|l| vec![Value::Text(l.to_string())]).collect();
                    let columns = vec![pb::Column { name: "plan".into(), decl_type: String::new() }];
                    return send_rows(out, columns, rows, self.rows_per_batch, done(0, 0, txn.as_ref())).await;
                }
                if matches!(kind, Kind::Read | Kind::Write) {
                    self.ensure_known(&statement.sql, kind).await?;
                }
                self.plan_and_run(kind, statement, batch_rows, txn.as_ref(), shards, direct(kind), out).await
            }
        }
    }

    /// Plans and runs a statement. Reads and writes carry the schema
    /// version of the catalog they were planned with; when a shard's
    /// schema has moved on (another index server's DDL), the catalog is
    /// reloaded and the statement planned again. Nothing has reached the
    /// client then: every shard checks before it answers. (A read handed
    /// out as fragments is checked when the client opens them; the client
    /// then sends it again, asking for relayed rows.) With `batch_rows`,
    /// the parameters are that many rows for an INSERT of one row.
    #[allow(clippy::too_many_arguments)]
    async fn plan_and_run(
        &self,
        kind: Kind,
        statement: Statement,
        batch_rows: usize,
        txn: Option<&Txn>,
        shards: usize,
        direct: DirectReads,
        out: &PartSender,
    ) -> Result<()> {
        let mut attempt = 0;
        loop {
            let catalog = self.catalog();
            let plan = self.plan(&catalog, &statement.sql, &statement.params, kind, shards, direct)?;
            tracing::debug!(sql = %statement.sql, plan = %plan, "planned");
            let mut planned = statement.clone();
            // Inside a transaction its own DDL would make the check refuse
            // its later statements, so they are not checked. (Not done
            // yet: another index server's DDL on a shard the transaction
            // has not touched can then go unnoticed by its plans.)
            if matches!(kind, Kind::Read | Kind::Write) && txn.is_none() {
                planned.schema_version = catalog.version;
            }
            let ran = self.run(plan, kind, planned, batch_rows, txn, shards, out).await;
            let ran = match txn {
                Some(t) => self.settle(t, ran).await,
                None => ran,
            };
            match ran {
                Err(Error::StaleSchema { version }) if txn.is_none() && attempt < STALE_SCHEMA_RETRIES => {
                    attempt += 1;
                    tracing::debug!(version, attempt, "schema changed under the plan; reloading the catalog");
                    tokio::time::sleep(STALE_SCHEMA_BACKOFF * attempt).await;
                    self.set_catalog(meta::sync_catalog(self.tier.as_ref()).await?);
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
        direct: DirectReads,
    ) -> Result<Plan> {
        let numbered = sql::number_placeholders(sql)?;
        let keys = Keys { params };
        let cx = Context { catalog, shards, keys: &keys, direct: direct.fragments, routes: direct.routes };
        planner::plan(&cx, &numbered, kind)
    }

    #[allow(clippy::too_many_arguments)]
    async fn run(
        &self,
        plan: Plan,
        kind: Kind,
        statement: Statement,
        batch_rows: usize,
        txn: Option<&Txn>,
        shards: usize,
        out: &PartSender,
    ) -> Result<()> {
        if batch_rows > 0 && !matches!(plan, Plan::Insert { source: Source::Local(_), .. }) {
            return Err(Error::invalid(
                "batch_rows is for an INSERT … VALUES of one row into a sharded table (send a reference table's rows \
                 as one multi-row INSERT)",
            ));
        }
        match plan {
            Plan::Single { group, route, .. } if kind == Kind::Read && txn.is_none() => {
                if let Some(route) = route {
                    self.send_route(&route, &statement, out).await?;
                }
                self.stream_read(group, statement, out).await
            }
            Plan::Gather { tables, copies, filters, groups } => {
                let db = self.gather(&tables, &copies, &filters, &groups, &statement, txn).await?;
                self.run_here(db, statement, txn, out).await
            }
            Plan::Scatter { groups, split, direct: true } => self.hand_out(&groups, split, statement, out).await,
            Plan::Scatter { groups, split, direct: false } => self.scatter(&groups, split, statement, txn, out).await,
            Plan::Schema { groups, creates } => {
                let r = self.schema_change(statement, &groups, creates, txn).await?;
                self.send_result(out, r, txn).await
            }
            Plan::Insert { table, source } => {
                let r = self.insert(&table, source, statement, batch_rows, txn, shards).await?;
                self.send_result(out, r, txn).await
            }
            Plan::Single { group, .. } => {
                let r = self.apply(group, statement, txn).await?;
                self.send_result(out, r, txn).await
            }
            Plan::Broadcast { groups, same_seed } => {
                let own = self.own_txn(txn, &groups, &statement, false, true);
                let body = |t| self.broadcast(&groups, &statement, same_seed, t);
                let r = self.in_own_txn(txn, own.as_ref(), body).await?;
                self.send_result(out, r, txn).await
            }
        }
    }
}

/// How often a statement is planned again after a shard reports that
/// its schema changed, and the pause before the first retry (then longer
/// with each attempt).
const STALE_SCHEMA_RETRIES: u32 = 5;

const STALE_SCHEMA_BACKOFF: std::time::Duration = std::time::Duration::from_millis(20);

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

/// `statement` with other SQL, bound to the parameters that SQL names.
pub(super) fn with_sql(statement: &Statement, sql: String) -> Result<Statement> {
    let mut params = statement.params.clone();
    params.truncate(sql::placeholder_count(&sql)?);
    Ok(Statement { sql, params, request_id: None, ..statement.clone() })
}

pub(super) fn failure(f: Failure) -> Error {
    match f {
        Failure::Statement(e) => e,
        Failure::Environment(e) => Error::io(e),
    }
}

/// What a statement's seed is XORed with for its `n`-th part (n > 0), so
/// that parts on different shards draw different random values.
pub(super) fn spread_seed(n: u64) -> u64 {
    /// 2⁶⁴ divided by the golden ratio: consecutive `n` land far apart.
    const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
    n.wrapping_mul(GOLDEN)
}

/// A statement's first try (the ULID leading the driver's request ids) is
/// taken as its date only when it is at most this far from now: an old
/// date would let a client win every conflict.
const MAX_RETRY_AGE: std::time::Duration = std::time::Duration::from_secs(10 * 60);

/// When the statement with `request_id` was first tried, in milliseconds
/// since 1970: the ULID leading the id, when it has one within
/// [`MAX_RETRY_AGE`] of now.
pub(super) fn first_try_ms(request_id: Option<&str>) -> Option<i64> {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let first = ulid::Ulid::from_string(request_id?.get(..26)?).ok()?.timestamp_ms() as i64;
    (now_ms.abs_diff(first) <= MAX_RETRY_AGE.as_millis() as u64).then_some(first)
}

/// The random seed and the clock (`now_ms`) of a statement with
/// `request_id`. The same request id gives the same ones, so a statement
/// sent again (after a lost reply, to another index server) computes the
/// same values (`random()`, `ulid()`, the time, where assigned rowids go)
/// and writes the same shards, where each shard's record of the request
/// finds it. Without an id: a fresh seed and the time now.
fn clock_of(request_id: Option<&str>) -> (u64, i64) {
    let now_ms = chrono::Utc::now().timestamp_millis();
    match request_id {
        Some(r) => (
            shard::key_hash(&[(Value::Text(r.to_string()), Collation::Binary)]),
            first_try_ms(Some(r)).unwrap_or(now_ms),
        ),
        None => (rand::random(), now_ms),
    }
}
