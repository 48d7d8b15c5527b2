//! `SHOW …` statements: the cluster as rows.
//!
//! - `SHOW NODES`: storage servers, their addresses and whether they answer.
//! - `SHOW GROUPS`: every replica of every group: role, leader, term, last
//!   log index, applied index, snapshot index, voters.
//! - `SHOW INDEX SERVERS`: index servers that announced themselves recently.
//! - `SHOW TABLES`: tables and views of the catalog, and how each is spread.
//! - `SHOW SHARDS`: the shard map: each shard's group, the first hash of its
//!   slice of the hash space, its replicas (preferred leader first) and its
//!   current leader.
//! - `SHOW SHARDS OF t`: how many rows of table `t` each shard holds.

use drsdb_common::{Error, Result, Value};
use drsdb_proto as pb;

use crate::catalog::{Distribution, Key};
use crate::executor::{done, send_rows, Executor, PartSender};

/// What `SHOW` accepts, for the error message.
const USAGE: &str = "use SHOW NODES, SHOW GROUPS, SHOW SHARDS, SHOW SHARDS OF table, SHOW INDEX SERVERS or SHOW TABLES";

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
            let _ = ex.cluster.refresh().await;
            let mut rows = Vec::new();
            for (id, addr) in ex.cluster.addresses() {
                let up = ex.cluster.status_of(&addr).await.is_ok();
                rows.push(vec![
                    Value::Integer(id as i64),
                    Value::Text(addr),
                    Value::Text(if up { "up" } else { "down" }.into()),
                ]);
            }
            (columns(&["node", "address", "state"]), rows)
        }
        ["GROUPS"] => {
            let _ = ex.cluster.refresh().await;
            let mut rows = Vec::new();
            for (id, addr) in ex.cluster.addresses() {
                match ex.cluster.status_of(&addr).await {
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
                ]),
                rows,
            )
        }
        ["SHARDS"] => {
            let status = ex.cluster.refresh().await.ok();
            let leaders: std::collections::BTreeMap<u64, u64> =
                status.iter().flat_map(|s| &s.groups).map(|g| (g.group, g.leader)).collect();
            let mut rows = crate::meta::shard_rows(&ex.cluster).await?;
            for r in &mut rows {
                let leader = match r.first() {
                    Some(Value::Integer(g)) => leaders.get(&(*g as u64)).copied().filter(|l| *l != 0),
                    _ => None,
                };
                r.push(leader.map(|l| l as i64).into());
            }
            (columns(&["grp", "hash_start", "replicas", "leader"]), rows)
        }
        ["SHARDS", "OF", _] => {
            let table = named.expect("a fourth word");
            let rows = ex.rows_per_shard(table).await?;
            let rows = rows.into_iter().map(|(g, n)| vec![Value::Integer(g.0 as i64), Value::Integer(n)]).collect();
            (columns(&["grp", "rows"]), rows)
        }
        ["INDEX", "SERVERS"] => {
            let addrs = crate::server::live_index_servers(&ex.cluster).await?;
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
                        None => String::new(),
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
