//! Splitting an INSERT's rows by shard.
//!
//! The rows arrive computed (the index server ran the VALUES or SELECT;
//! a VALUES list of parameters and plain literals is read without SQLite,
//! [`plain_rows`]);
//! each gets its shard key completed (an integer key left out gets an
//! assigned id, a key column with a DEFAULT gets that default computed
//! here so that it decides the shard) and, for tables whose rowid is not
//! their key, an assigned rowid. Then each shard receives one
//! `INSERT … VALUES (?, …), …` per chunk of its rows, with the original
//! conflict clause, upsert and RETURNING. A reference table's rows go
//! whole to every shard, in the same chunks.

use std::collections::BTreeMap;
use std::fmt::Write;

use drsdb_common::command::Statement;
use drsdb_common::order::Collation;
use drsdb_common::{shard, sql, Error, GroupId, Result, Value};
use sqlparser::ast::{Insert, ObjectNamePart, OnConflictAction, OnInsert, SqliteOnConflict};

use crate::catalog::Table;
use crate::keys::{self, RowidGenerator};

/// One statement for one shard.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// The shard.
    pub group: GroupId,
    /// `INSERT … VALUES (?1, ?2), …`.
    pub sql: String,
    /// Its values.
    pub params: Vec<Value>,
    /// The position (in the INSERT's row order) of the last row it writes.
    pub last_row: usize,
}

/// The rows of an INSERT whose VALUES hold only plain values
/// ([`keys::plain_value`]: parameters that have a value, NULL, integers,
/// plain strings), without SQLite; `None` for anything else.
pub fn plain_rows(insert: &Insert, params: &[Value]) -> Option<Vec<Vec<Value>>> {
    let query = insert.source.as_ref()?;
    if query.with.is_some() || query.order_by.is_some() || query.limit_clause.is_some() {
        return None;
    }
    let sqlparser::ast::SetExpr::Values(values) = query.body.as_ref() else { return None };
    values.rows.iter().map(|row| row.iter().map(|e| keys::plain_value(e, params)).collect()).collect()
}

/// The rows of an INSERT sent with `n` rows of parameters
/// (`batch_rows`): its VALUES is one row of plain values, evaluated once
/// per row of `params`.
pub fn batch_rows(insert: &Insert, params: &[Value], n: usize) -> Result<Vec<Vec<Value>>> {
    let refused = |why: &str| Error::invalid(format!("batch_rows: {why}"));
    if params.is_empty() || !params.len().is_multiple_of(n) {
        return Err(refused(&format!("{} parameters do not make {n} rows of equal width", params.len())));
    }
    let updates = match &insert.on {
        None => false,
        Some(OnInsert::OnConflict(c)) => c.action != OnConflictAction::DoNothing,
        // DuplicateKeyUpdate, and any clause sqlparser adds later.
        Some(_) => true,
    };
    if insert.returning.is_some() || updates {
        return Err(refused("RETURNING and DO UPDATE are not supported with a batch of rows"));
    }
    params
        .chunks(params.len() / n)
        .map(|row| match plain_rows(insert, row) {
            Some(mut rows) if rows.len() == 1 => Ok(rows.pop().expect("one row")),
            _ => Err(refused("the INSERT's VALUES must be one row of parameters and plain literals")),
        })
        .collect()
}

/// The INSERT's target columns (indexes into `table.columns`).
fn target_columns(table: &Table, insert: &Insert) -> Result<Vec<usize>> {
    if insert.columns.is_empty() {
        return Ok((0..table.columns.len()).collect());
    }
    insert
        .columns
        .iter()
        .map(|c| {
            let name = match c.0.last() {
                Some(ObjectNamePart::Identifier(i)) => i.value.clone(),
                _ => c.to_string(),
            };
            table
                .column(&name)
                .ok_or_else(|| Error::invalid(format!("table {} has no column named {name}", table.name)))
        })
        .collect()
}

/// The parts of an INSERT into `table` of `rows` (each as wide as
/// the target column list). `default_of(expr, i)` computes a column's
/// DEFAULT expression for row `i`.
pub fn split(
    table: &Table,
    insert: &Insert,
    rows: Vec<Vec<Value>>,
    shards: usize,
    rowids: &RowidGenerator,
    statement: &Statement,
    default_of: &dyn Fn(&str, usize) -> Result<Value>,
) -> Result<Vec<Part>> {
    let now_ms = statement.now_ms;
    // Where the `n`th row given an assigned id goes: a function of the
    // statement's seed (so of its request id), so that the statement sent
    // again writes the same shards.
    let first = shard::shard_of(statement.seed, shards.max(1));
    let place = |n: usize| (first + n / shard::ASSIGNED_ROWS_PER_SHARD) % shards.max(1);
    let mut columns = target_columns(table, insert)?;
    let width = columns.len();
    if let Some(bad) = rows.iter().find(|r| r.len() != width) {
        return Err(Error::invalid(if insert.columns.is_empty() {
            format!("table {} has {width} columns but {} values were supplied", table.name, bad.len())
        } else {
            format!("{} values for {width} columns", bad.len())
        }));
    }
    let mut rows = rows;
    // Key columns the statement leaves out get their value here.
    let key = table.key_columns().map(<[usize]>::to_vec).unwrap_or_default();
    for k in &key {
        if columns.contains(k) {
            continue;
        }
        columns.push(*k);
        for (i, r) in rows.iter_mut().enumerate() {
            r.push(match &table.columns[*k].default {
                // Evaluated once per row: `DEFAULT (ulid())` gives each row its own key.
                Some(expr) if !table.integer_key => default_of(expr, i)?,
                _ => Value::Null,
            });
        }
    }
    let reference = !table.is_sharded();
    if table.integer_key && !reference {
        let at = columns.iter().position(|c| *c == key[0]).expect("key column is a target");
        let collation = table.columns[key[0]].collation;
        let mut assigned = 0;
        for r in &mut rows {
            if r[at] == Value::Null {
                r[at] = Value::Integer(rowids.next_on(now_ms, place(assigned), shards, collation));
                assigned += 1;
            }
        }
    }
    let mut names: Vec<String> = columns.iter().map(|c| sql::quote_name(&table.columns[*c].name)).collect();
    let hashes = if table.assigns_rowid() {
        let alias = table.rowid_alias.as_deref().expect("rowid tables have an alias");
        names.push(alias.to_string());
        let ids: Vec<i64> = match table.key_columns() {
            Some(_) => rows.iter().map(|_| rowids.next(now_ms)).collect(),
            None => (0..rows.len()).map(|n| rowids.next_on(now_ms, place(n), shards, Collation::Binary)).collect(),
        };
        for (r, id) in rows.iter_mut().zip(&ids) {
            r.push(Value::Integer(*id));
        }
        match table.key_columns() {
            Some(_) => None,
            None => Some(
                ids.iter().map(|id| shard::key_hash(&[(Value::Integer(*id), Collation::Binary)])).collect::<Vec<_>>(),
            ),
        }
    } else {
        None
    };
    let hashes = match hashes {
        Some(h) => h,
        None if reference => Vec::new(),
        None => {
            let at: Vec<usize> =
                key.iter().map(|k| columns.iter().position(|c| c == k).expect("key is a target")).collect();
            let key_rows: Vec<Vec<Value>> = rows.iter().map(|r| at.iter().map(|i| r[*i].clone()).collect()).collect();
            keys::hash_values(table, &key_rows)?
        }
    };

    let verb = match (insert.replace_into, &insert.or) {
        (true, _) => "REPLACE",
        (false, None) => "INSERT",
        (false, Some(SqliteOnConflict::Replace)) => "INSERT OR REPLACE",
        (false, Some(SqliteOnConflict::Ignore)) => "INSERT OR IGNORE",
        (false, Some(SqliteOnConflict::Abort)) => "INSERT OR ABORT",
        (false, Some(SqliteOnConflict::Fail)) => "INSERT OR FAIL",
        (false, Some(SqliteOnConflict::Rollback)) => "INSERT OR ROLLBACK",
    };
    let mut tail = String::new();
    if let Some(on) = &insert.on {
        tail.push_str(&format!(" {on}"));
    }
    if let Some(returning) = &insert.returning {
        let items: Vec<String> = returning.iter().map(ToString::to_string).collect();
        tail.push_str(&format!(" RETURNING {}", items.join(", ")));
    }
    let head = format!("{verb} INTO {}({}) VALUES ", sql::quote_name(&table.name), names.join(", "));

    let mut by_shard: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    if reference {
        by_shard.extend((0..shards).map(|k| (k, (0..rows.len()).collect())));
    }
    for (i, h) in hashes.iter().enumerate() {
        by_shard.entry(shard::shard_of(*h, shards)).or_default().push(i);
    }
    let mut parts = Vec::new();
    for (k, indexes) in by_shard {
        let mut chunk: Vec<usize> = Vec::new();
        let mut bytes = 0;
        let flush = |chunk: &mut Vec<usize>, parts: &mut Vec<Part>| {
            if chunk.is_empty() {
                return;
            }
            let mut params = Vec::with_capacity(chunk.len() * names.len());
            // `(?1, ?2), (?3, ?4)…`, written in place: big batches make
            // this text long.
            let mut sql = String::with_capacity(head.len() + tail.len() + chunk.len() * names.len() * 9);
            sql.push_str(&head);
            for (n, i) in chunk.iter().enumerate() {
                sql.push_str(if n == 0 { "(" } else { ", (" });
                for (c, v) in rows[*i].iter().enumerate() {
                    params.push(v.clone());
                    let _ = write!(sql, "{}?{}", if c == 0 { "" } else { ", " }, params.len());
                }
                sql.push(')');
            }
            sql.push_str(&tail);
            parts.push(Part {
                group: shard::shard_group(k),
                sql,
                params,
                last_row: *chunk.last().expect("chunk is not empty"),
            });
            chunk.clear();
        };
        for i in indexes {
            let size: usize = rows[i].iter().map(Value::size).sum();
            if !chunk.is_empty()
                && ((chunk.len() + 1) * names.len() > sql::MAX_PARAMS_PER_STATEMENT
                    || bytes + size > sql::MAX_BYTES_PER_STATEMENT)
            {
                flush(&mut chunk, &mut parts);
                bytes = 0;
            }
            chunk.push(i);
            bytes += size;
        }
        flush(&mut chunk, &mut parts);
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use drsdb_common::command::Statement;

    /// What SQLite computes for the INSERT's VALUES.
    fn sqlite_rows(values: &str, params: &[Value]) -> Vec<Vec<Value>> {
        let db = drsdb_sqlite::Db::open_scratch().unwrap();
        let s = Statement { params: params.to_vec(), ..Statement::new(values) };
        db.run_collect(&s).unwrap().rows
    }

    #[test]
    fn plain_values_are_read_as_sqlite_computes_them() {
        let params = [Value::Text("a".into()), Value::Integer(7), Value::Real(1.5), Value::Blob(vec![0, 1])];
        for values in [
            "VALUES (?1, ?2), (?3, ?4)",
            "VALUES (NULL, 'it''s', 42, -42)",
            "VALUES (9223372036854775807, -9223372036854775807, ?2)",
            "VALUES (?4, '')",
        ] {
            let numbered = sql::number_placeholders(&format!("INSERT INTO t {values}")).unwrap();
            let Some(sqlparser::ast::Statement::Insert(ins)) = sql::parse_one(&numbered).ok() else { panic!() };
            let n = sql::placeholder_count(values).unwrap();
            let got = plain_rows(&ins, &params).unwrap_or_else(|| panic!("{values} is plain"));
            assert_eq!(got, sqlite_rows(values, &params[..n.min(params.len())]), "{values}");
        }
        for values in [
            "VALUES (1.5)",
            "VALUES (9223372036854775808)",
            "VALUES (-9223372036854775808)",
            "VALUES (1 + 1)",
            "VALUES (x'00')",
            "VALUES (?9)",
        ] {
            let Some(sqlparser::ast::Statement::Insert(ins)) = sql::parse_one(&format!("INSERT INTO t {values}")).ok()
            else {
                panic!()
            };
            assert_eq!(plain_rows(&ins, &[]), None, "{values} is left to SQLite");
        }
    }
}
