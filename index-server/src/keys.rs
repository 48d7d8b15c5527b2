//! Shard keys as SQLite stores them, and the rowids index servers assign.
//!
//! A key is hashed after the key columns' affinity has converted it (`'5'`
//! written to an INTEGER column is the integer 5), so the conversion is
//! SQLite's own: the values are written to a scratch table whose columns
//! have the key columns' declared types, and read back.
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
    /// The hash of the key `exprs` (SQL expressions, one per key column of
    /// `table`, placeholders numbered) evaluate to.
    pub fn hash_exprs(&self, table: &Table, exprs: &[String]) -> Result<u64> {
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
