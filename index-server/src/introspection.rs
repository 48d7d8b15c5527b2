//! `SHOW …` statements: the cluster as rows.
//!
//! - `SHOW NODES`: storage servers, their addresses, whether they answer,
//!   and how many reads each is running.
//! - `SHOW GROUPS`: every replica of every group: role, leader, term, last
//!   log index, applied index, snapshot index, voters, and on leaders each
//!   follower's replicated index with the last failure sending to it.
//! - `SHOW INDEX SERVERS`: index servers that announced themselves recently.
//! - `SHOW TABLES`: tables and views of the catalog, and how each is spread.
//! - `SHOW SHARDS`: the shard map: each shard's group, the first hash of its
//!   slice of the hash space, its replicas (preferred leader first), its
//!   current leader and the size of the leader's database file.
//! - `SHOW SHARDS OF t`: how many rows of table `t` each shard holds.
//! - `SHOW SHARD OF t KEY v1, v2…`: the shard that holds the row of `t`
//!   whose primary key is (v1, v2…).
//! - `SHOW TRANSACTIONS`: the transactions holding shards now, as the
//!   shards' leaders see them: open, prepared, or in doubt (prepared, with
//!   its coordinator quiet: the resolver is finishing it), the shards each
//!   holds, its age, how long it has been idle, and its anchor once
//!   prepared.
//! - `SHOW TRANSACTION id`: whether transaction `id` committed, for a
//!   client that did not learn the outcome of its COMMIT
//!   ([`Executor::outcome`]): final once answered (an undecided one is
//!   aborted).
//! - `SHOW METRICS`: the counters of the index server that answers
//!   (`metrics`): statements, rows it sent to clients, fragments it handed
//!   out for direct streaming, commits (on one shard, on several),
//!   aborts, in-doubt transactions resolved.

use drsdb_common::command::{Decision, Statement};
use drsdb_common::sql::{self, Kind};
use drsdb_common::{shard, Error, GroupId, Result, Value};
use drsdb_proto as pb;
use futures::future::join_all;

use crate::catalog::{Distribution, Key};
use crate::executor::{done, send_rows, Executor, PartSender, Txn};
use crate::keys::Keys;
use crate::planner;

/// What `SHOW` accepts, for the error message.
const USAGE: &str =
    "use SHOW NODES, SHOW GROUPS, SHOW SHARDS, SHOW SHARDS OF table, SHOW INDEX SERVERS, SHOW TABLES, SHOW TRANSACTIONS, SHOW TRANSACTION id or SHOW METRICS";

fn columns(names: &[&str]) -> Vec<pb::Column> {
    names.iter().map(|n| pb::Column { name: n.to_string(), decl_type: String::new() }).collect()
}

/// Answers a `SHOW` statement.
pub async fn show(ex: &Executor, sql: &str, out: &PartSender, rows_per_batch: usize) -> Result<()> {
    let words: Vec<String> =
        sql.split_whitespace().skip(1).map(|w| w.trim_end_matches(';').to_ascii_uppercase()).collect();
    let words: Vec<&str> = words.iter().map(String::as_str).filter(|w| !w.is_empty()).collect();
    let named = sql.split_whitespace().nth(3).map(|w| w.trim_end_matches(';').trim_matches('"'));
    let (cols, rows): (Vec<pb::Column>, Vec<Vec<Value>>) = match words.as_slice() {
        ["NODES"] => {
            let mut rows = Vec::new();
            for server in ex.tier.status().await {
                let status = server.status.ok();
                rows.push(vec![
                    Value::Integer(server.id as i64),
                    Value::Text(server.addr),
                    Value::Text(if status.is_some() { "up" } else { "down" }.into()),
                    status.map(|s| s.running_reads as i64).into(),
                ]);
            }
            (columns(&["node", "address", "state", "running_reads"]), rows)
        }
        ["GROUPS"] => {
            let mut rows = Vec::new();
            for server in ex.tier.status().await {
                let id = server.id;
                match server.status {
                    Ok(s) => {
                        for g in s.groups {
                            let voters = g.voters.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",");
                            rows.push(vec![
                                Value::Integer(g.group as i64),
                                Value::Integer(g.node as i64),
                                Value::Text(g.role),
                                (g.leader != 0).then_some(g.leader as i64).into(),
                                Value::Integer(g.term as i64),
                                Value::Integer(g.last_log_index as i64),
                                Value::Integer(g.applied_index as i64),
                                Value::Integer(g.snapshot_index as i64),
                                Value::Text(voters),
                                Value::Text(g.replication),
                            ]);
                        }
                    }
                    Err(_) => rows.push(vec![
                        Value::Null,
                        Value::Integer(id as i64),
                        Value::Text("unreachable".into()),
                        Value::Null,
                        Value::Null,
                        Value::Null,
                        Value::Null,
                        Value::Null,
                        Value::Null,
                        Value::Null,
                    ]),
                }
            }
            (
                columns(&[
                    "grp",
                    "node",
                    "role",
                    "leader",
                    "term",
                    "last_log_index",
                    "applied_index",
                    "snapshot_index",
                    "voters",
                    "replication",
                ]),
                rows,
            )
        }
        ["TRANSACTION", id] => {
            let id = id.trim_matches('\'');
            let txn = Txn::from_client(id, &[], 0)?;
            let outcome = match ex.outcome(&txn.id).await? {
                Decision::Committed => "committed",
                Decision::Aborted => "aborted",
            };
            (columns(&["txn", "outcome"]), vec![vec![Value::Text(txn.id.0), Value::Text(outcome.into())]])
        }
        ["TRANSACTIONS"] => {
            // One row per transaction: the shards it holds, as their leaders see it.
            let mut txns: std::collections::BTreeMap<String, Vec<crate::executor::Held>> = Default::default();
            for held in ex.held().await {
                txns.entry(held.holder.txn.clone()).or_default().push(held);
            }
            let rows = txns
                .into_iter()
                .map(|(txn, held)| {
                    let state =
                        match (held.iter().any(|h| h.in_doubt()), held.iter().any(|h| h.holder.anchor.is_some())) {
                            (true, _) => "in doubt",
                            (false, true) => "prepared",
                            (false, false) => "open",
                        };
                    let shards = held.iter().map(|h| h.group.to_string()).collect::<Vec<_>>().join(",");
                    let anchor = held.iter().find_map(|h| h.holder.anchor).map(|a| a as i64);
                    vec![
                        Value::Text(txn),
                        Value::Text(state.into()),
                        Value::Text(shards),
                        Value::Integer(held.iter().map(|h| h.holder.age_ms).max().unwrap_or(0) as i64),
                        Value::Integer(held.iter().map(|h| h.holder.idle_ms).min().unwrap_or(0) as i64),
                        anchor.into(),
                    ]
                })
                .collect();
            (columns(&["txn", "state", "shards", "age_ms", "idle_ms", "anchor"]), rows)
        }
        ["SHARDS"] => {
            // Each group's leader and database size, as its leader reports them.
            let mut leaders: std::collections::BTreeMap<u64, (u64, u64)> = Default::default();
            for server in ex.tier.status().await {
                if let Ok(s) = server.status {
                    for g in s.groups.iter().filter(|g| g.leader != 0 && g.leader == g.node) {
                        leaders.insert(g.group, (g.leader, g.size_bytes));
                    }
                }
            }
            let mut rows = crate::meta::shard_rows(ex.tier.as_ref()).await?;
            for r in &mut rows {
                let led = match r.first() {
                    Some(Value::Integer(g)) => leaders.get(&(*g as u64)).copied(),
                    _ => None,
                };
                r.push(led.map(|(l, _)| l as i64).into());
                r.push(led.map(|(_, size)| size as i64).into());
            }
            (columns(&["grp", "hash_start", "replicas", "leader", "size_bytes"]), rows)
        }
        ["SHARDS", "OF", _] => {
            let table = named.expect("a fourth word");
            let rows = rows_per_shard(ex, table).await?;
            let rows = rows.into_iter().map(|(g, n)| vec![Value::Integer(g.0 as i64), Value::Integer(n)]).collect();
            (columns(&["grp", "rows"]), rows)
        }
        ["SHARD", "OF", _, "KEY", ..] => {
            let table = named.expect("a fourth word");
            // The values follow the KEY after the table name.
            let upper = sql.to_ascii_uppercase();
            let after_table = upper.find(&table.to_ascii_uppercase()).map_or(0, |p| p + table.len());
            let at = after_table + upper[after_table..].find("KEY").expect("KEY was matched") + "KEY".len();
            let group = shard_of_key(ex, table, sql[at..].trim().trim_end_matches(';')).await?;
            (columns(&["grp"]), vec![vec![Value::Integer(group.0 as i64)]])
        }
        ["METRICS"] => {
            let rows = ex
                .metrics
                .snapshot()
                .into_iter()
                .map(|(name, v)| {
                    vec![Value::Text(ex.address.clone()), Value::Text(name.into()), Value::Integer(v as i64)]
                })
                .collect();
            (columns(&["index_server", "metric", "value"]), rows)
        }
        ["INDEX", "SERVERS"] => {
            let addrs = ex.live_index_servers().await?;
            (columns(&["address"]), addrs.into_iter().map(|a| vec![Value::Text(a)]).collect())
        }
        ["TABLES"] => {
            ex.refresh_catalog().await?;
            let catalog = ex.catalog();
            let rows = catalog
                .objects()
                .filter(|o| o.kind == "table" || o.kind == "view")
                .map(|o| {
                    let spread = match catalog.table(&o.name).map(|t| &t.distribution) {
                        Some(Distribution::Reference) => "reference".to_string(),
                        Some(Distribution::Sharded(Key::Rowid)) => "sharded by rowid".to_string(),
                        Some(Distribution::Sharded(Key::Columns(c))) => {
                            let t = catalog.table(&o.name).expect("table exists");
                            let names: Vec<&str> = c.iter().map(|i| t.columns[*i].name.as_str()).collect();
                            format!("sharded by ({})", names.join(", "))
                        }
                        None => match catalog.unloaded(&o.name) {
                            Some(why) => format!("not loaded: {why}"),
                            None => String::new(),
                        },
                    };
                    vec![
                        Value::Text(o.name.clone()),
                        Value::Text(o.kind.clone()),
                        Value::Text(spread),
                        Value::Text(o.sql.clone()),
                    ]
                })
                .collect();
            (columns(&["name", "type", "distribution", "sql"]), rows)
        }
        _ => return Err(Error::invalid(format!("unknown SHOW statement; {USAGE}"))),
    };
    send_rows(out, cols, rows, rows_per_batch, done(0, 0, None)).await
}

/// How many rows of `table` each data shard holds (a reference
/// table's copies each hold all of them).
async fn rows_per_shard(ex: &Executor, table: &str) -> Result<Vec<(GroupId, i64)>> {
    ex.ensure_known(&format!("SELECT * FROM {}", sql::quote_name(table)), Kind::Write).await?;
    let groups = shard::shard_groups(ex.shard_count().await?);
    let count = Statement::new(format!("SELECT count(*) FROM {}", sql::quote_name(table)));
    let counted = join_all(groups.iter().map(|g| ex.fetch(*g, count.clone(), None))).await;
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
async fn shard_of_key(ex: &Executor, table: &str, key: &str) -> Result<GroupId> {
    ex.ensure_known(&format!("SELECT * FROM {}", sql::quote_name(table)), Kind::Write).await?;
    let shards = ex.shard_count().await?;
    let catalog = ex.catalog();
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
                    sqlparser::ast::SelectItem::UnnamedExpr(e) if planner::is_literal(e) => Some(e.clone()),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>(),
            _ => None,
        },
        _ => None,
    };
    let values = values.ok_or_else(|| {
        Error::invalid(format!("SHOW SHARD OF {table} KEY takes literal values (numbers, strings), comma-separated"))
    })?;
    let hash = Keys { params: &[] }.hash_exprs(t, &values)?;
    Ok(shard::shard_group(shard::shard_of(hash, shards)))
}
