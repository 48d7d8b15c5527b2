//! What index servers keep in the meta group: the shard map, the catalog,
//! which tables are reference tables, and the list of live index servers.
//! All are tables of the meta group's SQLite database, written through its
//! Raft log like any other data.

use std::collections::BTreeSet;

use drsdb_common::command::{Command, CommandResult, Statement};
use drsdb_common::shard::{self, Placement};
use drsdb_common::tier::StorageTier;
use drsdb_common::{Error, GroupId, NodeId, Result, Value};

use crate::catalog::{self, Catalog};

/// Tables of the meta group.
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS catalog(grp INTEGER PRIMARY KEY, objects TEXT NOT NULL)",
    // The version (`sql::schema_fingerprint`) of the catalog row.
    "CREATE TABLE IF NOT EXISTS catalog_version(grp INTEGER PRIMARY KEY, version INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS index_servers(addr TEXT PRIMARY KEY, last_seen_ms INTEGER NOT NULL)",
    // One row per data shard: its group, the first hash of its slice of
    // the hash space (hex), and its replicas (JSON array of node ids,
    // preferred leader first). Written once, when the cluster is created.
    "CREATE TABLE IF NOT EXISTS shards(grp INTEGER PRIMARY KEY, hash_start TEXT NOT NULL, replicas TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS reference_tables(name TEXT PRIMARY KEY COLLATE NOCASE)",
];

/// The catalog row that holds the data shards' schema.
const CATALOG_ROW: i64 = 1;

/// A statement for the meta group (meta statements use no random
/// functions, so the seed is fixed).
fn statement(sql: &str, params: Vec<Value>) -> Statement {
    Statement { params, now_ms: chrono::Utc::now().timestamp_millis(), ..Statement::new(sql) }
}

/// Runs statements as one batch in the meta group; fails if any failed.
/// Every meta write may repeat harmlessly (`IF NOT EXISTS`, `OR REPLACE`).
async fn meta_write(tier: &dyn StorageTier, statements: Vec<Statement>) -> Result<()> {
    match tier.write(GroupId::META, Command::Batch(statements), true).await? {
        CommandResult::Batch(outcomes) => outcomes.into_iter().try_for_each(|o| o.map(|_| ())),
        other => Err(Error::io(format!("unexpected meta result {other:?}"))),
    }
}

/// Creates the meta tables if they do not exist.
pub async fn ensure_schema(tier: &dyn StorageTier) -> Result<()> {
    meta_write(tier, SCHEMA.iter().map(|s| statement(s, vec![])).collect()).await
}

/// Runs a read in `group` and collects its rows.
pub async fn query(tier: &dyn StorageTier, group: GroupId, sql: &str, params: Vec<Value>) -> Result<Vec<Vec<Value>>> {
    tier.read_rows(group, Statement { params, ..Statement::new(sql) }).await
}

/// Index servers silent for this long are forgotten.
const FORGET_INDEX_SERVER_MS: i64 = 60 * 60 * 1000;

/// Records that the index server at `addr` is alive now, and forgets those
/// long silent.
pub async fn announce(tier: &dyn StorageTier, addr: &str, now_ms: i64) -> Result<()> {
    meta_write(
        tier,
        vec![
            statement(
                "INSERT OR REPLACE INTO index_servers(addr, last_seen_ms) VALUES (?1, ?2)",
                vec![addr.into(), now_ms.into()],
            ),
            statement(
                "DELETE FROM index_servers WHERE last_seen_ms < ?1",
                vec![(now_ms - FORGET_INDEX_SERVER_MS).into()],
            ),
        ],
    )
    .await
}

/// Index servers seen since `since_ms`.
pub async fn live_index_servers(tier: &dyn StorageTier, since_ms: i64) -> Result<Vec<String>> {
    let rows = query(
        tier,
        GroupId::META,
        "SELECT addr FROM index_servers WHERE last_seen_ms >= ?1 ORDER BY addr",
        vec![since_ms.into()],
    )
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| match r.into_iter().next() {
            Some(Value::Text(a)) => Some(a),
            _ => None,
        })
        .collect())
}

/// Records the shard map for a cluster of `nodes` with `shards` data
/// shards, unless one is recorded already (the first one written stays).
pub async fn ensure_shard_map(tier: &dyn StorageTier, nodes: &[NodeId], shards: usize) -> Result<()> {
    let statements = shard::placement(nodes, shards)
        .into_iter()
        .skip(1) // the meta group
        .enumerate()
        .map(|(k, Placement { group, replicas })| {
            let replicas: Vec<u64> = replicas.iter().map(|r| r.0).collect();
            statement(
                "INSERT OR IGNORE INTO shards(grp, hash_start, replicas) VALUES (?1, ?2, ?3)",
                vec![
                    (group.0 as i64).into(),
                    format!("{:016x}", shard::slice_start(k, shards)).into(),
                    serde_json::to_string(&replicas).expect("ids serialize").into(),
                ],
            )
        })
        .collect();
    meta_write(tier, statements).await
}

/// The number of data shards the meta group records (0 before the map is
/// written).
pub async fn shard_count(tier: &dyn StorageTier) -> Result<usize> {
    let rows = query(tier, GroupId::META, "SELECT count(*) FROM shards", vec![]).await?;
    match rows.first().and_then(|r| r.first()) {
        Some(Value::Integer(n)) => Ok(*n as usize),
        _ => Err(Error::io("unexpected shard count")),
    }
}

/// The shard map as rows of (group, hash start, replicas), for `SHOW SHARDS`.
pub async fn shard_rows(tier: &dyn StorageTier) -> Result<Vec<Vec<Value>>> {
    query(tier, GroupId::META, "SELECT grp, hash_start, replicas FROM shards ORDER BY grp", vec![]).await
}

/// Marks `name` as a reference table (before it is created), or forgets it.
pub async fn set_reference(tier: &dyn StorageTier, name: &str, reference: bool) -> Result<()> {
    let sql = if reference {
        "INSERT OR REPLACE INTO reference_tables(name) VALUES (?1)"
    } else {
        "DELETE FROM reference_tables WHERE name = ?1"
    };
    meta_write(tier, vec![statement(sql, vec![name.into()])]).await
}

async fn references(tier: &dyn StorageTier) -> Result<BTreeSet<String>> {
    let rows = query(tier, GroupId::META, "SELECT name FROM reference_tables", vec![]).await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| match r.into_iter().next() {
            Some(Value::Text(n)) => Some(n.to_ascii_lowercase()),
            _ => None,
        })
        .collect())
}

/// The catalog as the meta group holds it; `None` when that is `current`
/// (analysing a catalog takes a scratch database, so it is not rebuilt
/// for nothing on every refresh).
pub async fn load_catalog(tier: &dyn StorageTier, current: &Catalog) -> Result<Option<Catalog>> {
    let rows = query(
        tier,
        GroupId::META,
        "SELECT v.version, j.value->>'kind', j.value->>'name', j.value->>'table', j.value->>'sql'
           FROM (SELECT (SELECT version FROM catalog_version WHERE grp = ?1) AS version) AS v
           LEFT JOIN catalog ON catalog.grp = ?1 LEFT JOIN json_each(catalog.objects) AS j",
        vec![CATALOG_ROW.into()],
    )
    .await?;
    let (version, objects) = versioned_objects(rows);
    let references = references(tier).await?;
    if current.is_built_from(&objects, &references, version) {
        return Ok(None);
    }
    Catalog::new(objects, &references, version).map(Some)
}

/// Splits rows of `[version, kind, name, table, sql]` (one row with NULL
/// objects when there are none) into the version and the objects.
fn versioned_objects(rows: Vec<Vec<Value>>) -> (Option<i64>, Vec<catalog::Object>) {
    let version = rows.first().and_then(|r| match r.first() {
        Some(Value::Integer(v)) => Some(*v),
        _ => None,
    });
    let objects = rows.into_iter().filter(|r| r.get(1).is_some_and(|k| *k != Value::Null)).map(|mut r| {
        r.remove(0);
        r
    });
    (version, catalog::objects_from_rows(objects.collect()))
}

/// The catalog as the shards have it: the first shard's schema (every
/// shard has the same) and its version, with the meta group's list of
/// reference tables.
pub async fn shard_catalog(tier: &dyn StorageTier) -> Result<Catalog> {
    let schema = query(tier, GroupId::FIRST_DATA, drsdb_common::sql::SCHEMA_OBJECTS, vec![]);
    let (rows, references) = futures::try_join!(schema, references(tier))?;
    let objects = catalog::objects_from_rows(rows);
    let version = drsdb_common::sql::schema_fingerprint(
        objects.iter().map(|o| [o.kind.as_str(), o.name.as_str(), o.table.as_str(), o.sql.as_str()]),
    );
    Catalog::new(objects, &references, Some(version))
}

/// The catalog as the shards have it ([`shard_catalog`]), recorded in the
/// meta group. Returns it.
pub async fn sync_catalog(tier: &dyn StorageTier) -> Result<Catalog> {
    let catalog = shard_catalog(tier).await?;
    meta_write(
        tier,
        vec![
            statement(
                "INSERT OR REPLACE INTO catalog(grp, objects)
                 SELECT ?1, coalesce(json_group_array(json_object('kind', k, 'name', n, 'table', t, 'sql', s)), '[]')
                   FROM (SELECT value->>0 AS k, value->>1 AS n, value->>2 AS t, value->>3 AS s FROM json_each(?2))",
                vec![CATALOG_ROW.into(), catalog_json(&catalog).into()],
            ),
            statement(
                "INSERT OR REPLACE INTO catalog_version(grp, version) VALUES (?1, ?2)",
                vec![CATALOG_ROW.into(), catalog.version.into()],
            ),
        ],
    )
    .await?;
    Ok(catalog)
}

/// The catalog as a JSON array of `[kind, name, table, sql]`.
fn catalog_json(catalog: &Catalog) -> String {
    let items: Vec<[&str; 4]> =
        catalog.objects().map(|o| [o.kind.as_str(), o.name.as_str(), o.table.as_str(), o.sql.as_str()]).collect();
    serde_json::to_string(&items).expect("strings serialize")
}
