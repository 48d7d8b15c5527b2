//! Writes over several shards: an INSERT's rows computed (here, or by a
//! query over the shards), split by shard key (`insert`) and written to
//! each shard; an UPDATE or DELETE broadcast to every shard; their results
//! added up. Outside a transaction, a write over several shards runs as a
//! transaction of its own (`txn`), so it is atomic.

use drsdb_common::command::{Statement, StatementResult};
use drsdb_common::{shard, sql, Error, GroupId, Result, Value};
use drsdb_sqlite::Db;
use futures::future::join_all;

use super::{failure, spread_seed, Executor, Txn};
use crate::insert;
use crate::planner::Source;

impl Executor {
    /// Applies `statement` on every shard of `groups` in parallel and adds
    /// up the results (a reference table's copies count once).
    pub(super) async fn broadcast(
        &self,
        groups: &[GroupId],
        statement: &Statement,
        same_seed: bool,
        txn: Option<&Txn>,
    ) -> Result<StatementResult> {
        let results =
            join_all(groups.iter().map(|g| self.apply(*g, Self::for_shard(statement, *g, same_seed), txn))).await;
        combine(results, same_seed)
    }

    /// Computes an INSERT's rows (with `batch_rows`, the parameters are
    /// that many rows of values for a VALUES of one row), splits them by
    /// shard and writes them.
    pub(super) async fn insert(
        &self,
        table: &str,
        source: Source,
        statement: Statement,
        batch_rows: usize,
        txn: Option<&Txn>,
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
        let Some(sqlparser::ast::Statement::Insert(ins)) = sql::parse_one(&numbered).ok() else {
            return Err(Error::invalid("not an INSERT"));
        };
        let rows = match &source {
            Source::Local(_) if batch_rows > 0 => insert::batch_rows(&ins, &statement.params, batch_rows)?,
            Source::Defaults => vec![Vec::new()],
            Source::Local(sql) => match insert::plain_rows(&ins, &statement.params) {
                Some(rows) => rows,
                None => self.compute(source_statement(sql)?).await?,
            },
            Source::Query(sql, plan) => self.collect(plan, source_statement(sql)?, txn).await?,
        };
        let parts = {
            // Opened for the first DEFAULT computed, if any.
            let scratch = std::cell::OnceCell::new();
            let defaults = |expr: &str, row: usize| -> Result<Value> {
                let s = Statement {
                    sql: format!("SELECT {expr}"),
                    params: vec![],
                    schema_version: None,
                    // Each row draws its own random values.
                    seed: statement.seed ^ spread_seed(row as u64 + 1),
                    ..statement.clone()
                };
                let scratch = match scratch.get() {
                    Some(db) => db,
                    None => {
                        let db = Db::open_scratch().map_err(|e| Error::io(format!("scratch database: {e}")))?;
                        scratch.get_or_init(|| db)
                    }
                };
                let r = scratch.run_collect(&s).map_err(failure)?;
                Ok(r.rows.into_iter().next().and_then(|r| r.into_iter().next()).unwrap_or(Value::Null))
            };
            insert::split(&table, &ins, rows, shards, &self.rowids, &statement, &defaults)?
        };
        if parts.is_empty() {
            // An INSERT … SELECT whose query found no rows changes nothing.
            return Ok(StatementResult {
                columns: Vec::new(),
                rows: Vec::new(),
                rows_affected: 0,
                last_insert_rowid: 0,
            });
        }
        let groups: Vec<GroupId> = parts.iter().map(|p| p.group).collect();
        // Rows a query computed may differ when the statement is sent again
        // (the data changed), and go to other shards than the first time:
        // only the claim at the shard its request id picks finds it then.
        let read_data = matches!(source, Source::Query(..)) && statement.request_id.is_some();
        let distinct: std::collections::BTreeSet<&GroupId> = groups.iter().collect();
        let one_command_each = distinct.len() == groups.len();
        let own = self.own_txn(txn, &groups, &statement, read_data, one_command_each);
        let write = async |txn| {
            let parts_done = join_all(parts.iter().enumerate().map(|(i, p)| {
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
            }));
            let (results, anchor) = futures::join!(parts_done, self.join_anchor(txn, &groups));
            anchor.and_then(|_| combine_parts(table.is_sharded(), &parts, results))
        };
        self.in_own_txn(txn, own.as_ref(), write).await
    }
}

/// Adds up the results of an INSERT's parts.
fn combine_parts(
    sharded: bool,
    parts: &[insert::Part],
    results: Vec<Result<StatementResult>>,
) -> Result<StatementResult> {
    // last_insert_rowid() is that of the part holding the last row.
    let last_part = parts.iter().enumerate().max_by_key(|(_, p)| p.last_row).map(|(i, _)| i);
    let last_rowid = last_part.and_then(|i| results[i].as_ref().ok()).map(|r| r.last_insert_rowid);
    // A reference table counts (and returns) its first copy's rows.
    let first = shard::shard_group(0);
    let results = match sharded {
        true => results,
        false => {
            let (copies, counted): (Vec<_>, Vec<_>) = parts.iter().zip(results).partition(|(p, _)| p.group != first);
            copies.into_iter().map(|(_, r)| r).collect::<Result<Vec<_>>>()?;
            counted.into_iter().map(|(_, r)| r).collect()
        }
    };
    let mut r = combine(results, false)?;
    r.last_insert_rowid = last_rowid.unwrap_or(0);
    Ok(r)
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
