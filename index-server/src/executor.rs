//! Executes one statement: classify, fix its clock and random seed, check
//! the catalog, route to the group, and stream the result back.

use std::sync::{Arc, RwLock};

use drsdb_common::sql::{self, Kind};
use drsdb_common::{Error, GroupId, Result, TxnId, Value};
use drsdb_proto as pb;
use drsdb_storage::{Command, CommandResult, Statement, StatementResult};
use sqlparser::ast::{FromTable, ObjectName, ObjectNamePart, TableFactor, TableObject};
use sqlparser::dialect::SQLiteDialect;
use sqlparser::parser::Parser;
use tokio::sync::mpsc;
use tonic::Status;

use crate::cluster::Cluster;
use crate::introspection;
use crate::meta::{self, Catalog};

/// Where a statement's result parts go (the client's stream).
pub type PartSender = mpsc::Sender<std::result::Result<pb::ResultPart, Status>>;

/// The group all tables live in until sharding lands.
const DATA: GroupId = GroupId::FIRST_DATA;

/// Runs statements for any client. Holds no per-client state: a
/// transaction is named by the id the client sends with each statement.
pub struct Executor {
    /// The storage tier.
    pub cluster: Arc<Cluster>,
    catalog: RwLock<Catalog>,
    rows_per_batch: usize,
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

/// Sends a complete result: columns, rows in batches, then `Done`.
pub async fn send_rows(
    out: &PartSender,
    columns: Vec<pb::Column>,
    rows: Vec<Vec<Value>>,
    rows_per_batch: usize,
    done_part: pb::ResultPart,
) -> Result<()> {
    if !columns.is_empty() {
        send(out, part(pb::result_part::Part::Columns(pb::Columns { columns }))).await?;
    }
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let batch: Vec<pb::Row> = rows
            .by_ref()
            .take(rows_per_batch)
            .map(|r| pb::Row { values: r.into_iter().map(Into::into).collect() })
            .collect();
        send(out, part(pb::result_part::Part::Rows(pb::Rows { rows: batch }))).await?;
    }
    send(out, done_part).await
}

fn last_name(name: &ObjectName) -> Option<String> {
    match name.0.last()? {
        ObjectNamePart::Identifier(i) => Some(i.value.clone()),
        _ => None,
    }
}

/// The tables a write statement changes, when sqlparser understands it.
fn write_targets(sql: &str) -> Vec<String> {
    let Ok(statements) = Parser::parse_sql(&SQLiteDialect {}, sql) else { return Vec::new() };
    let mut names = Vec::new();
    for s in statements {
        match s {
            sqlparser::ast::Statement::Insert(i) => {
                if let TableObject::TableName(n) = &i.table {
                    names.extend(last_name(n));
                }
            }
            sqlparser::ast::Statement::Update(u) => {
                if let TableFactor::Table { name, .. } = &u.table.relation {
                    names.extend(last_name(name));
                }
            }
            sqlparser::ast::Statement::Delete(d) => {
                let (FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t)) = &d.from;
                for twj in t {
                    if let TableFactor::Table { name, .. } = &twj.relation {
                        names.extend(last_name(name));
                    }
                }
            }
            _ => {}
        }
    }
    names
}

impl Executor {
    /// An executor over `cluster`.
    pub fn new(cluster: Arc<Cluster>, rows_per_batch: usize) -> Executor {
        Executor { cluster, catalog: RwLock::new(Catalog::default()), rows_per_batch }
    }

    /// The cached catalog.
    pub fn catalog(&self) -> Catalog {
        self.catalog.read().expect("catalog lock").clone()
    }

    fn set_catalog(&self, c: Catalog) {
        *self.catalog.write().expect("catalog lock") = c;
    }

    /// Reloads the catalog from the meta group.
    pub async fn refresh_catalog(&self) -> Result<()> {
        let c = meta::load_catalog(&self.cluster).await?;
        self.set_catalog(c);
        Ok(())
    }

    /// Checks that the tables a write targets exist: from the cache, then
    /// the meta group, then the data group's own schema (which also heals a
    /// catalog that missed a change).
    async fn check_targets(&self, sql: &str) -> Result<()> {
        let targets = write_targets(sql);
        let missing = |c: &Catalog| targets.iter().find(|t| c.relation(t).is_none()).cloned();
        if missing(&self.catalog.read().expect("catalog lock")).is_none() {
            return Ok(());
        }
        self.refresh_catalog().await?;
        if missing(&self.catalog()).is_none() {
            return Ok(());
        }
        let synced = meta::sync_catalog(&self.cluster).await?;
        let result = match missing(&synced) {
            Some(t) => Err(Error::invalid(format!("no such table: {t}"))),
            None => Ok(()),
        };
        self.set_catalog(synced);
        result
    }

    /// Runs one statement, sending its result parts to `out`.
    pub async fn execute(&self, req: pb::ExecuteRequest, out: &PartSender) -> Result<()> {
        let kind = sql::classify(&req.sql)?;
        let txn = (!req.txn_id.is_empty()).then(|| TxnId(req.txn_id.clone()));
        let now_ms = chrono::Utc::now().timestamp_millis();
        let statement = Statement {
            sql: req.sql,
            params: req.params.into_iter().map(Into::into).collect(),
            seed: rand::random(),
            now_ms,
            request_id: (!req.request_id.is_empty()).then_some(req.request_id),
        };
        match (kind, txn) {
            (Kind::Show, _) => introspection::show(self, &statement.sql, out, self.rows_per_batch).await,
            (Kind::Begin, Some(_)) => Err(Error::invalid("cannot start a transaction within a transaction")),
            (Kind::Commit, None) => Err(Error::invalid("cannot commit - no transaction is active")),
            (Kind::Rollback, None) => Err(Error::invalid("cannot rollback - no transaction is active")),
            (Kind::Begin, None) => {
                // The client's request id names the transaction, so that a
                // client whose BEGIN reply was lost can still roll it back.
                let t = TxnId(statement.request_id.clone().unwrap_or_else(|| ulid::Ulid::generate().to_string()));
                self.txn_command(Command::Begin(t.clone())).await?;
                send(out, done(0, 0, Some(&t))).await
            }
            (Kind::Commit, Some(t)) => {
                self.txn_command(Command::Commit(t)).await?;
                send(out, done(0, 0, None)).await
            }
            (Kind::Rollback, Some(t)) => {
                self.txn_command(Command::Rollback(t)).await?;
                send(out, done(0, 0, None)).await
            }
            (_, Some(t)) => {
                if kind == Kind::Write {
                    self.check_targets(&statement.sql).await?;
                }
                let r = self.txn_command(Command::InTxn(t.clone(), statement)).await?;
                self.send_result(out, r, Some(&t)).await
            }
            (Kind::Read, None) => self.read(statement, out).await,
            (Kind::Write | Kind::Ddl, None) => {
                if kind == Kind::Write {
                    self.check_targets(&statement.sql).await?;
                }
                // With a request id the storage tier applies it once, so
                // it may be sent again after a lost reply.
                let idempotent = statement.request_id.is_some();
                let outcome = match self.cluster.write(DATA, &Command::Batch(vec![statement]), idempotent).await? {
                    CommandResult::Batch(mut o) if o.len() == 1 => o.remove(0),
                    other => return Err(Error::io(format!("unexpected write result {other:?}"))),
                };
                let result = outcome?;
                if kind == Kind::Ddl {
                    match meta::sync_catalog(&self.cluster).await {
                        Ok(c) => self.set_catalog(c),
                        // The data group has the change; the catalog heals
                        // on the next lookup that misses.
                        Err(e) => tracing::warn!("catalog not updated after DDL: {e}"),
                    }
                }
                self.send_result(out, result, None).await
            }
        }
    }

    async fn txn_command(&self, command: Command) -> Result<StatementResult> {
        match self.cluster.write(DATA, &command, false).await? {
            CommandResult::Txn(outcome) => outcome,
            other => Err(Error::io(format!("unexpected transaction result {other:?}"))),
        }
    }

    async fn send_result(&self, out: &PartSender, r: StatementResult, txn: Option<&TxnId>) -> Result<()> {
        let columns =
            r.columns.iter().map(|c| pb::Column { name: c.name.clone(), decl_type: c.decl_type.clone() }).collect();
        send_rows(out, columns, r.rows, self.rows_per_batch, done(r.rows_affected, r.last_insert_rowid, txn)).await
    }

    /// Streams a read from the group's leader straight through.
    async fn read(&self, statement: Statement, out: &PartSender) -> Result<()> {
        let req = pb::ReadRequest {
            group: DATA.0,
            sql: statement.sql,
            params: statement.params.into_iter().map(Into::into).collect(),
            seed: statement.seed,
            now_ms: statement.now_ms,
        };
        let mut stream = self.cluster.read(req).await?;
        loop {
            match stream.message().await {
                Ok(Some(p)) => send(out, p).await?,
                Ok(None) => return Ok(()),
                Err(s) => return Err(Error::from(s)),
            }
        }
    }
}
