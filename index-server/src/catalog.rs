//! The catalog: the schema every data shard holds, and how each table is
//! distributed over the shards.
//!
//! The schema objects come from a shard's `sqlite_schema` (every shard has
//! the same, because DDL runs on all of them); which tables are reference
//! tables comes from the meta group. From the CREATE statements the
//! catalog derives each table's shard key exactly as SQLite sees the
//! table: it loads them into a scratch SQLite database and asks SQLite
//! (`pragma_table_xinfo`, column metadata) for columns, declared types,
//! primary keys and collations, instead of re-implementing SQLite's
//! parsing rules.
//!
//! Shard keys:
//! - a table with a PRIMARY KEY is partitioned on it;
//! - a table without one on its rowid, which index servers assign
//!   (cluster-unique and increasing, see `rowid`) so that rows keep their
//!   insertion order across shards;
//! - a rowid table with a primary key that is not its rowid also gets an
//!   assigned rowid, for the same reason.
//!
//! A UNIQUE constraint on a sharded table must include the whole shard
//! key, since each shard enforces uniqueness among its own rows only. A
//! table created with one that does not ([`uncovered_by`]) is made a
//! reference table instead (a full copy on every shard enforces any
//! constraint), and so is an empty table given such a UNIQUE index; a
//! table that already holds rows refuses the index.

use std::collections::{BTreeMap, BTreeSet};

use drsdb_common::affinity::Affinity;
use drsdb_common::order::Collation;
use drsdb_common::{Error, Result, Value};
use drsdb_sqlite::Db;

/// A schema object (table, index, view, trigger) of the data shards.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// `table`, `index`, `view` or `trigger`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// The table it belongs to.
    pub table: String,
    /// Its CREATE statement.
    pub sql: String,
}

/// A column that can be written (not generated).
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Its declared type (decides its affinity).
    pub decl_type: String,
    /// Its collation.
    pub collation: Collation,
    /// Its DEFAULT expression, as written.
    pub default: Option<String>,
}

/// What a table's rows are partitioned on.
#[derive(Debug, Clone, PartialEq)]
pub enum Key {
    /// These columns (indexes into [`Table::columns`]), the primary key.
    Columns(Vec<usize>),
    /// The rowid, assigned by the index server.
    Rowid,
}

/// How a table is spread over the shards.
#[derive(Debug, Clone, PartialEq)]
pub enum Distribution {
    /// Hash-partitioned on a shard key.
    Sharded(Key),
    /// A full copy on every shard (`CREATE REFERENCE TABLE`).
    Reference,
}

/// A table and its distribution.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// Its name as created.
    pub name: String,
    /// Its writable columns in declaration order.
    pub columns: Vec<Column>,
    /// How its rows are spread.
    pub distribution: Distribution,
    /// A name that reaches its rowid (`rowid`, `_rowid_` or `oid`, the
    /// first no column shadows); `None` for WITHOUT ROWID tables.
    pub rowid_alias: Option<String>,
    /// True when the primary key is an alias of the rowid (INTEGER
    /// PRIMARY KEY): a row written without one gets an assigned id.
    pub integer_key: bool,
}

impl Table {
    /// True when the index server assigns this table's rowids (rowid
    /// tables whose rowid is not a declared INTEGER PRIMARY KEY).
    pub fn assigns_rowid(&self) -> bool {
        self.rowid_alias.is_some() && !self.integer_key && self.distribution != Distribution::Reference
    }

    /// The column at `name` (case-insensitive).
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name.eq_ignore_ascii_case(name))
    }

    /// The shard key's columns, when it is made of declared columns.
    pub fn key_columns(&self) -> Option<&[usize]> {
        match &self.distribution {
            Distribution::Sharded(Key::Columns(c)) => Some(c),
            _ => None,
        }
    }

    /// Each shard key column's affinity and collation (what a key value
    /// becomes when stored, and how it compares), when the key is made of
    /// declared columns.
    pub fn key_types(&self) -> Option<Vec<(Affinity, Collation)>> {
        let key = self.key_columns()?;
        Some(key.iter().map(|c| (Affinity::of(&self.columns[*c].decl_type), self.columns[*c].collation)).collect())
    }

    /// True for a hash-partitioned table.
    pub fn is_sharded(&self) -> bool {
        matches!(self.distribution, Distribution::Sharded(_))
    }
}

/// The data shards' schema, keyed by lower-cased name.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    objects: BTreeMap<String, Object>,
    tables: BTreeMap<String, Table>,
    /// The reference tables it was built with (lower-cased).
    references: BTreeSet<String>,
    /// Objects SQLite could not load (lower-cased name → why). They are
    /// left out of planning, so that one bad object cannot stop every
    /// statement; `SHOW TABLES` names them, and DROP removes them.
    unloaded: BTreeMap<String, String>,
    /// The version of the shards' schema it was read from
    /// (`sql::schema_fingerprint`); `None` before any was read. Statements planned with this
    /// catalog carry it, and a shard whose schema has moved on refuses
    /// them, so that no statement runs on a stale plan.
    pub version: Option<i64>,
}

impl Catalog {
    /// Builds the catalog of `objects` read at schema `version`,
    /// `references` naming the reference tables (lower-cased).
    pub fn new(objects: Vec<Object>, references: &BTreeSet<String>, version: Option<i64>) -> Result<Catalog> {
        let db = Db::open_scratch().map_err(|e| Error::io(format!("scratch database: {e}")))?;
        let objects: BTreeMap<String, Object> = objects.into_iter().map(|o| (o.name.to_ascii_lowercase(), o)).collect();
        let mut unloaded = create_schema(&db, objects.values(), false);
        let mut tables = BTreeMap::new();
        for o in objects.values().filter(|o| o.kind == "table") {
            let name = o.name.to_ascii_lowercase();
            if unloaded.contains_key(&name) {
                continue;
            }
            match analyse(&db, &o.name, references.contains(&name)) {
                Ok(table) => {
                    tables.insert(name, table);
                }
                Err(e) => {
                    unloaded.insert(name, e.to_string());
                }
            }
        }
        for (name, why) in &unloaded {
            tracing::warn!("catalog object {name} left out: {why}");
        }
        Ok(Catalog { objects, tables, references: references.clone(), unloaded, version })
    }

    /// True when building from `objects` and `references` would give this
    /// catalog again.
    pub fn is_built_from(&self, objects: &[Object], references: &BTreeSet<String>, version: Option<i64>) -> bool {
        self.version == version
            && self.references == *references
            && self.objects.len() == objects.len()
            && objects.iter().all(|o| self.objects.get(&o.name.to_ascii_lowercase()) == Some(o))
    }

    /// The table or view called `name` (case-insensitive), if any.
    pub fn relation(&self, name: &str) -> Option<&Object> {
        self.objects.get(&name.to_ascii_lowercase()).filter(|o| o.kind == "table" || o.kind == "view")
    }

    /// Why the object called `name` could not be loaded, if it could not.
    pub fn unloaded(&self, name: &str) -> Option<&str> {
        self.unloaded.get(&name.to_ascii_lowercase()).map(String::as_str)
    }

    /// The table called `name` (case-insensitive), if any.
    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.get(&name.to_ascii_lowercase())
    }

    /// Every object, ordered by name.
    pub fn objects(&self) -> impl Iterator<Item = &Object> {
        self.objects.values()
    }

    /// True when a table, index, view or trigger is named `name` (SQLite
    /// compares names without ASCII case).
    pub fn has_object(&self, name: &str) -> bool {
        self.objects().any(|o| o.name.eq_ignore_ascii_case(name))
    }
}

/// Creates `objects` in `db`: tables, then indexes, then views (which may
/// name each other, so they are retried until none is left). Triggers are
/// left out (scratch databases are only read). Returns the objects that
/// could not be created (lower-cased name → SQLite's error): the others
/// are there all the same.
pub fn create_schema<'a>(
    db: &Db,
    objects: impl Iterator<Item = &'a Object>,
    with_views: bool,
) -> BTreeMap<String, String> {
    let objects: Vec<&Object> = objects.collect();
    let run = |sql: &str| db.internal(|c| c.execute_batch(sql));
    let mut failed = BTreeMap::new();
    for kind in ["table", "index"] {
        for o in objects.iter().filter(|o| o.kind == kind) {
            if let Err(e) = run(&o.sql) {
                failed.insert(o.name.to_ascii_lowercase(), e.to_string());
            }
        }
    }
    if with_views {
        let mut views: Vec<&Object> = objects.iter().copied().filter(|o| o.kind == "view").collect();
        while !views.is_empty() {
            let before = views.len();
            views.retain(|o| run(&o.sql).is_err());
            if views.len() == before {
                failed.extend(views.iter().map(|o| (o.name.to_ascii_lowercase(), "cannot be created".to_string())));
                break;
            }
        }
    }
    failed
}

/// Reads a table's columns, key and rowid from SQLite.
fn analyse(db: &Db, name: &str, reference: bool) -> rusqlite::Result<Table> {
    db.internal(|c| {
        let mut columns = Vec::new();
        let mut key: Vec<(i64, usize)> = Vec::new();
        let mut all_names = Vec::new();
        let mut stmt =
            c.prepare("SELECT name, type, pk, dflt_value, hidden FROM pragma_table_xinfo(?1) ORDER BY cid")?;
        let mut rows = stmt.query([name])?;
        while let Some(r) = rows.next()? {
            let col: String = r.get(0)?;
            all_names.push(col.clone());
            if r.get::<_, i64>(4)? != 0 {
                continue; // generated or hidden: never written
            }
            let pk: i64 = r.get(2)?;
            if pk > 0 {
                key.push((pk, columns.len()));
            }
            let (_, collation, ..) = c.column_metadata(None::<&str>, name, col.as_str())?;
            let collation = collation.and_then(|s| s.to_str().ok()).map_or(Collation::Binary, Collation::from_name);
            columns.push(Column { name: col, decl_type: r.get(1)?, collation, default: r.get(3)? });
        }
        key.sort_unstable();
        let without_rowid: bool = c.query_row(
            "SELECT wr FROM pragma_table_list WHERE schema = 'main' AND name = ?1 COLLATE NOCASE",
            [name],
            |r| r.get(0),
        )?;
        let rowid_alias = (!without_rowid)
            .then(|| {
                ["rowid", "_rowid_", "oid"]
                    .into_iter()
                    .find(|a| !all_names.iter().any(|n| n.eq_ignore_ascii_case(a)))
                    .map(str::to_string)
            })
            .flatten();
        let integer_key =
            !without_rowid && key.len() == 1 && columns[key[0].1].decl_type.eq_ignore_ascii_case("INTEGER");
        let distribution = if reference {
            Distribution::Reference
        } else if key.is_empty() {
            Distribution::Sharded(Key::Rowid)
        } else {
            Distribution::Sharded(Key::Columns(key.into_iter().map(|(_, i)| i).collect()))
        };
        Ok(Table { name: name.to_string(), columns, distribution, rowid_alias, integer_key })
    })
}

/// A UNIQUE constraint of a sharded table that does not include its whole
/// shard key: each shard would check it among its own rows only.
#[derive(Debug, Clone, PartialEq)]
pub struct Uncovered {
    /// The table.
    pub table: String,
    /// The constraint, as `UNIQUE (a, b)`.
    pub constraint: String,
    /// The table's shard key, described.
    pub key: String,
}

/// The first UNIQUE constraint of `table` (in `db`) that its shard key
/// does not cover, if any.
fn uncovered_unique(db: &Db, table: &Table) -> Result<Option<Uncovered>> {
    let key: Vec<&str> = match &table.distribution {
        Distribution::Reference => return Ok(None),
        Distribution::Sharded(Key::Rowid) => Vec::new(),
        Distribution::Sharded(Key::Columns(c)) => c.iter().map(|i| table.columns[*i].name.as_str()).collect(),
    };
    let unique: Vec<Vec<Option<String>>> = db
        .internal(|c| {
            let mut out = Vec::new();
            let mut list =
                c.prepare("SELECT name FROM pragma_index_list(?1) WHERE \"unique\" AND origin <> 'pk' ORDER BY name")?;
            let names: Vec<String> = list.query_map([&table.name], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
            for index in names {
                let mut cols = c.prepare("SELECT name FROM pragma_index_info(?1) ORDER BY seqno")?;
                out.push(cols.query_map([&index], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?);
            }
            Ok(out)
        })
        .map_err(|e| Error::io(format!("scratch database: {e}")))?;
    for columns in unique {
        let covers = !key.is_empty() && key.iter().all(|k| columns.iter().flatten().any(|c| c.eq_ignore_ascii_case(k)));
        if !covers {
            let shown: Vec<&str> = columns.iter().map(|c| c.as_deref().unwrap_or("<expression>")).collect();
            return Ok(Some(Uncovered {
                table: table.name.clone(),
                constraint: format!("UNIQUE ({})", shown.join(", ")),
                key: if key.is_empty() { "its rowid (it has no primary key)".into() } else { key.join(", ") },
            }));
        }
    }
    Ok(None)
}

/// Parses catalog rows of `[kind, name, table, sql]`.
pub fn objects_from_rows(rows: Vec<Vec<Value>>) -> Vec<Object> {
    let text = |v: &Value| match v {
        Value::Text(t) => t.clone(),
        _ => String::new(),
    };
    rows.iter()
        .filter(|r| r.len() == 4)
        .map(|r| Object { kind: text(&r[0]), name: text(&r[1]), table: text(&r[2]), sql: text(&r[3]) })
        .collect()
}

/// The UNIQUE constraint a CREATE TABLE or CREATE INDEX would leave
/// uncovered by its table's shard key, tried in a scratch database that
/// holds the rest of `catalog`. Statements SQLite itself refuses have
/// none: the first shard refuses them with SQLite's message.
pub fn uncovered_by(catalog: &Catalog, create: &str, reference: bool) -> Result<Option<Uncovered>> {
    match created_table(catalog, create, reference) {
        Ok(Some((db, table))) => uncovered_unique(&db, &table),
        Ok(None) => Ok(None),
        Err(e) => {
            tracing::debug!("schema check skipped: {e}");
            Ok(None)
        }
    }
}

/// The table `create` makes or indexes, analysed in a scratch database
/// (returned with it); `Err` when the statement or the scratch fails.
fn created_table(catalog: &Catalog, create: &str, reference: bool) -> Result<Option<(Db, Table)>> {
    let db = Db::open_scratch().map_err(|e| Error::io(format!("scratch database: {e}")))?;
    create_schema(&db, catalog.objects(), false);
    let before: BTreeSet<String> = table_names(&db)?;
    db.internal(|c| c.execute_batch(create)).map_err(|e| Error::invalid(e.to_string()))?;
    let after = table_names(&db)?;
    // CREATE INDEX changes an existing table; CREATE TABLE adds one.
    let target = after.difference(&before).next().cloned().or_else(|| index_table(&db, create));
    let Some(name) = target else { return Ok(None) };
    let reference = reference || catalog.table(&name).is_some_and(|t| t.distribution == Distribution::Reference);
    let table = analyse(&db, &name, reference).map_err(|e| Error::io(format!("table {name}: {e}")))?;
    Ok(Some((db, table)))
}

fn table_names(db: &Db) -> Result<BTreeSet<String>> {
    db.internal(|c| {
        let mut s = c.prepare("SELECT name FROM sqlite_schema WHERE type = 'table'")?;
        let names = s.query_map([], |r| r.get::<_, String>(0))?.collect::<rusqlite::Result<BTreeSet<_>>>()?;
        Ok(names)
    })
    .map_err(|e| Error::io(format!("scratch database: {e}")))
}

/// The table a `CREATE INDEX` statement just created an index on.
fn index_table(db: &Db, create: &str) -> Option<String> {
    let upper = create.to_ascii_uppercase();
    if !upper.contains("INDEX") {
        return None;
    }
    db.internal(|c| {
        c.query_row(
            "SELECT tbl_name FROM sqlite_schema WHERE type = 'index' AND sql IS NOT NULL ORDER BY rowid DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
    })
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(sqls: &[&str]) -> Catalog {
        let objects = sqls
            .iter()
            .enumerate()
            .map(|(i, s)| Object {
                kind: "table".into(),
                name: format!("t{i}"),
                table: format!("t{i}"),
                sql: s.to_string(),
            })
            .collect();
        Catalog::new(objects, &BTreeSet::new(), None).unwrap()
    }

    #[test]
    fn shard_keys_follow_sqlite() {
        let c = catalog(&[
            "CREATE TABLE t0(id INTEGER PRIMARY KEY, a)",
            "CREATE TABLE t1(a, b TEXT COLLATE NOCASE, PRIMARY KEY(b, a))",
            "CREATE TABLE t2(a, b)",
            "CREATE TABLE t3(k TEXT PRIMARY KEY, rowid) WITHOUT ROWID",
            "CREATE TABLE t4(id INT PRIMARY KEY, g AS (id * 2))",
        ]);
        let t0 = c.table("T0").unwrap();
        assert!(t0.integer_key && !t0.assigns_rowid());
        assert_eq!(t0.key_columns(), Some(&[0][..]));
        let t1 = c.table("t1").unwrap();
        assert_eq!(t1.key_columns(), Some(&[1, 0][..]));
        assert_eq!(t1.columns[1].collation, Collation::NoCase);
        assert!(t1.assigns_rowid());
        let t2 = c.table("t2").unwrap();
        assert_eq!(t2.distribution, Distribution::Sharded(Key::Rowid));
        let t3 = c.table("t3").unwrap();
        assert_eq!(t3.rowid_alias, None);
        assert!(!t3.assigns_rowid());
        let t4 = c.table("t4").unwrap();
        assert!(!t4.integer_key, "INT is not INTEGER: not a rowid alias");
        assert_eq!(t4.columns.len(), 1, "generated columns are not written");
    }

    #[test]
    fn unique_constraints_without_the_shard_key_are_found() {
        let c = Catalog::default();
        assert_eq!(uncovered_by(&c, "CREATE TABLE a(id INTEGER PRIMARY KEY, x, UNIQUE(x, id))", false).unwrap(), None);
        let u = uncovered_by(&c, "CREATE TABLE b(id INTEGER PRIMARY KEY, x UNIQUE)", false).unwrap().unwrap();
        assert_eq!((u.table.as_str(), u.constraint.as_str(), u.key.as_str()), ("b", "UNIQUE (x)", "id"));
        assert_eq!(uncovered_by(&c, "CREATE TABLE r(id INTEGER PRIMARY KEY, x UNIQUE)", true).unwrap(), None);
        let c = catalog(&["CREATE TABLE t0(pk INTEGER PRIMARY KEY, col0 INTEGER)"]);
        assert!(uncovered_by(&c, "CREATE UNIQUE INDEX i ON t0(col0)", false).unwrap().is_some());
        assert_eq!(uncovered_by(&c, "CREATE INDEX i ON t0(col0)", false).unwrap(), None);
    }
}
