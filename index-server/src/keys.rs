//! Shard keys as SQLite stores them, and the rowids index servers assign.
//!
//! A key is hashed after the key columns' affinity has converted it (`'5'`
//! written to an INTEGER column is the integer 5), so the conversion is
//! SQLite's own: the values are written to a scratch table whose columns
//! have the key columns' declared types, and read back. The common case
//! skips the scratch table: a value that the column's affinity stores
//! unchanged (an integer into an INTEGER column, text into a TEXT one, a
//! bound parameter or a plain literal) is hashed as it is.
//!
//! Rowids for tables without an INTEGER PRIMARY KEY, and integer keys a
//! row leaves out, come from [`RowidGenerator`]: milliseconds since
//! [`EPOCH_MS`], then this index server's instance number, then a sequence,
//! so ids are unique across index servers and increase with time (rows
//! keep their insertion order across shards). An INSERT asks for ids on
//! the shards its seed picks ([`RowidGenerator::next_on`]), so that the
//! statement sent again, even to another index server, writes the same
//! shards, and their request records find it.

use std::sync::Mutex;

use drsdb_common::order::Collation;
use drsdb_common::shard;
use drsdb_common::{Error, Result, Value};
use drsdb_sqlite::Db;
use sqlparser::ast::Expr;

use crate::catalog::Table;

/// 2026-01-01T00:00:00Z, the zero of assigned rowids.
pub const EPOCH_MS: i64 = 1_767_225_600_000;
/// Bits of the per-millisecond sequence.
const SEQUENCE_BITS: u32 = 12;
/// Bits of the instance number.
const INSTANCE_BITS: u32 = 10;

/// Evaluates shard keys for one statement.
pub struct Keys<'a> {
    /// The statement's parameters.
    pub params: &'a [Value],
}

/// The key hashes of `rows` without SQLite, when every value is stored
/// unchanged.
fn hash_unchanged(table: &Table, rows: &[Vec<Value>]) -> Option<Vec<u64>> {
    let columns = table.key_types()?;
    rows.iter()
        .map(|row| {
            let key: Option<Vec<(Value, Collation)>> = row
                .iter()
                .zip(&columns)
                .map(|(v, (a, coll))| a.stores_unchanged(v).then(|| (v.clone(), *coll)))
                .collect();
            key.filter(|k| k.len() == columns.len()).map(|k| shard::key_hash(&k))
        })
        .collect()
}

/// Which parameter (counting from 0) `e` is, when it is a numbered
/// placeholder (`?N`, as `sql::number_placeholders` writes them).
pub fn placeholder_index(e: &Expr) -> Option<usize> {
    use sqlparser::ast::Value as Literal;
    match e {
        Expr::Value(v) => match &v.value {
            Literal::Placeholder(p) => p.strip_prefix('?')?.parse::<usize>().ok()?.checked_sub(1),
            _ => None,
        },
        _ => None,
    }
}

/// The value of `e` when it is a numbered parameter that has a value
/// (`?N`, as `sql::number_placeholders` writes them), NULL, an integer or
/// a plain string: what SQLite computes for it, without SQLite. `None`
/// for anything else (SQLite computes those, or says what is wrong).
pub fn plain_value(e: &Expr, params: &[Value]) -> Option<Value> {
    use sqlparser::ast::{UnaryOperator, Value as Literal};
    let (negative, e) = match e {
        Expr::UnaryOp { op: UnaryOperator::Minus, expr } => (true, expr.as_ref()),
        e => (false, e),
    };
    let Expr::Value(v) = e else { return None };
    Some(match (&v.value, negative) {
        (Literal::Placeholder(_), false) => params.get(placeholder_index(e)?)?.clone(),
        (Literal::Null, false) => Value::Null,
        (Literal::SingleQuotedString(s), false) => Value::Text(s.clone()),
        // Digits only: SQLite reads a larger literal as a real.
        (Literal::Number(n, _), _) if n.bytes().all(|b| b.is_ascii_digit()) => {
            let i: i64 = n.parse().ok()?;
            Value::Integer(if negative { -i } else { i })
        }
        _ => return None,
    })
}

fn scratch() -> Result<Db> {
    Db::open_scratch().map_err(|e| Error::io(format!("scratch database: {e}")))
}

/// A scratch table `k` with the key columns' declared types.
fn key_table(db: &Db, table: &Table) -> Result<Vec<Collation>> {
    let Some(key) = table.key_columns() else {
        return Err(Error::io(format!("table {} has no key columns", table.name)));
    };
    let columns: Vec<String> =
        key.iter().enumerate().map(|(i, c)| format!("c{i} {}", table.columns[*c].decl_type)).collect();
    db.internal(|c| c.execute_batch(&format!("CREATE TABLE k({})", columns.join(", "))))
        .map_err(|e| Error::io(format!("key table: {e}")))?;
    Ok(key.iter().map(|c| table.columns[*c].collation).collect())
}

fn read_keys(db: &Db, collations: &[Collation]) -> Result<Vec<u64>> {
    db.internal(|c| {
        let mut s = c.prepare("SELECT * FROM k ORDER BY rowid")?;
        let mut rows = s.query([])?;
        let mut hashes = Vec::new();
        while let Some(r) = rows.next()? {
            let mut key = Vec::with_capacity(collations.len());
            for (i, coll) in collations.iter().enumerate() {
                key.push((Value::from(r.get_ref(i)?), *coll));
            }
            hashes.push(shard::key_hash(&key));
        }
        Ok(hashes)
    })
    .map_err(|e| Error::io(format!("key table: {e}")))
}

impl Keys<'_> {
    /// The hash of the key `exprs` (one per key column of `table`,
    /// placeholders numbered) evaluate to.
    pub fn hash_exprs(&self, table: &Table, exprs: &[Expr]) -> Result<u64> {
        let plain: Option<Vec<Value>> = exprs.iter().map(|e| plain_value(e, self.params)).collect();
        if let Some(hash) = plain.and_then(|row| hash_unchanged(table, &[row])).and_then(|h| h.first().copied()) {
            return Ok(hash);
        }
        let exprs: Vec<String> = exprs.iter().map(ToString::to_string).collect();
        let db = scratch()?;
        let collations = key_table(&db, table)?;
        db.internal(|c| {
            let mut s = c.prepare(&format!("INSERT INTO k VALUES ({})", exprs.join(", ")))?;
            for i in 1..=s.parameter_count() {
                s.raw_bind_parameter(i, self.params.get(i - 1).unwrap_or(&Value::Null))?;
            }
            s.raw_execute()
        })
        .map_err(|e| Error::invalid(format!("shard key: {e}")))?;
        read_keys(&db, &collations)?.pop().ok_or_else(|| Error::io("key not evaluated"))
    }
}

/// The hashes of the keys `rows` hold (each row the key columns' values).
pub fn hash_values(table: &Table, rows: &[Vec<Value>]) -> Result<Vec<u64>> {
    match hash_unchanged(table, rows) {
        Some(hashes) => Ok(hashes),
        None => hash_in_sqlite(table, rows),
    }
}

/// [`hash_values`] through a scratch table.
fn hash_in_sqlite(table: &Table, rows: &[Vec<Value>]) -> Result<Vec<u64>> {
    let db = scratch()?;
    let collations = key_table(&db, table)?;
    db.internal(|c| {
        let placeholders = vec!["?"; collations.len()].join(", ");
        let mut s = c.prepare(&format!("INSERT INTO k VALUES ({placeholders})"))?;
        for row in rows {
            s.execute(rusqlite::params_from_iter(row.iter()))?;
        }
        Ok(())
    })
    .map_err(|e| Error::invalid(format!("shard key: {e}")))?;
    read_keys(&db, &collations)
}

/// Assigns cluster-unique, increasing rowids.
pub struct RowidGenerator {
    instance: i64,
    /// (millisecond, sequence) of the last id.
    last: Mutex<(i64, i64)>,
}

impl RowidGenerator {
    /// A generator for the instance numbered `instance` (only its low
    /// [`INSTANCE_BITS`] count).
    pub fn new(instance: u64) -> RowidGenerator {
        RowidGenerator { instance: (instance & ((1 << INSTANCE_BITS) - 1)) as i64, last: Mutex::new((0, 0)) }
    }

    /// The next id at `now_ms`.
    pub fn next(&self, now_ms: i64) -> i64 {
        let mut last = self.last.lock().expect("rowid lock");
        let ms = (now_ms - EPOCH_MS).max(1);
        *last = if ms > last.0 {
            (ms, 0)
        } else if last.1 + 1 < (1 << SEQUENCE_BITS) {
            (last.0, last.1 + 1)
        } else {
            (last.0 + 1, 0)
        };
        (last.0 << (INSTANCE_BITS + SEQUENCE_BITS)) | (self.instance << SEQUENCE_BITS) | last.1
    }

    /// The next id at `now_ms` that, as a key under `collation`, belongs to
    /// shard `want` of `shards` (ids in between are skipped: about
    /// `shards` are drawn per id).
    pub fn next_on(&self, now_ms: i64, want: usize, shards: usize, collation: Collation) -> i64 {
        loop {
            let id = self.next(now_ms);
            if shards <= 1 || shard::shard_of(shard::key_hash(&[(Value::Integer(id), collation)]), shards) == want {
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_stored_unchanged_hash_as_sqlite_stores_them() {
        let types = ["INTEGER", "INT", "TEXT", "VARCHAR(10)", "BLOB", "", "REAL", "DOUBLE", "NUMERIC", "DECIMAL(5,2)"];
        let objects = types
            .iter()
            .enumerate()
            .map(|(i, t)| crate::catalog::Object {
                kind: "table".into(),
                name: format!("t{i}"),
                table: format!("t{i}"),
                sql: format!("CREATE TABLE t{i}(k {t} PRIMARY KEY, v)"),
            })
            .collect();
        let catalog = crate::catalog::Catalog::new(objects, &Default::default(), None).unwrap();
        let values = [
            Value::Integer(5),
            Value::Integer(-3),
            Value::Real(5.0),
            Value::Real(2.5),
            Value::Text("5".into()),
            Value::Text(" 7".into()),
            Value::Text("abc".into()),
            Value::Blob(vec![1, 2]),
            Value::Null,
        ];
        let mut fast = 0;
        for (i, decl) in types.iter().enumerate() {
            let table = catalog.table(&format!("t{i}")).unwrap();
            let rows: Vec<Vec<Value>> = values.iter().map(|v| vec![v.clone()]).collect();
            let sqlite = hash_in_sqlite(table, &rows).unwrap();
            for (row, want) in rows.iter().zip(&sqlite) {
                if let Some(got) = hash_unchanged(table, std::slice::from_ref(row)) {
                    assert_eq!(got, vec![*want], "{} into {decl}", row[0]);
                    fast += 1;
                }
            }
        }
        assert!(fast > types.len() * 3, "the fast path is taken for common values ({fast})");
        let keys = Keys { params: &[Value::Text("x".into())] };
        let t = catalog.table("t2").unwrap();
        let expr = |sql: &str| drsdb_common::sql::parse_expr(sql).unwrap();
        assert_eq!(plain_value(&expr("?1"), keys.params), Some(Value::Text("x".into())));
        assert_eq!(plain_value(&expr("'it''s'"), keys.params), Some(Value::Text("it's".into())));
        assert_eq!(plain_value(&expr("?2"), keys.params), None, "a parameter without a value is left to SQLite");
        for (sql, value) in [("?1", Value::Text("x".into())), ("'it''s'", Value::Text("it's".into()))] {
            assert_eq!(keys.hash_exprs(t, &[expr(sql)]).unwrap(), hash_in_sqlite(t, &[vec![value]]).unwrap()[0]);
        }
    }

    #[test]
    fn rowids_increase_and_differ_between_instances() {
        let a = RowidGenerator::new(1);
        let b = RowidGenerator::new(2);
        let now = EPOCH_MS + 1_000;
        let ids: Vec<i64> = (0..10_000).map(|_| a.next(now)).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert!(ids[0] > 0);
        let other: std::collections::BTreeSet<i64> = (0..10_000).map(|_| b.next(now)).collect();
        assert!(ids.iter().all(|i| !other.contains(i)));
    }

    #[test]
    fn ids_asked_on_a_shard_belong_to_it_and_still_increase() {
        let g = RowidGenerator::new(7);
        let now = EPOCH_MS + 1_000;
        for shards in [1, 4, 8] {
            let ids: Vec<(usize, i64)> =
                (0..200).map(|n| (n % shards, g.next_on(now, n % shards, shards, Collation::Binary))).collect();
            assert!(ids.windows(2).all(|w| w[0].1 < w[1].1));
            for (want, id) in ids {
                let hash = shard::key_hash(&[(Value::Integer(id), Collation::Binary)]);
                assert_eq!(shard::shard_of(hash, shards), want);
            }
        }
    }
}
