//! What index servers keep in the meta group: the catalog, and the list of
//! live index servers. Both are tables of the meta group's SQLite database,
//! written through its Raft log like any other data.

use std::collections::BTreeMap;

use drsdb_common::{Error, GroupId, Result, Value};
use drsdb_proto as pb;
use drsdb_storage::{Command, CommandResult, Statement};

use crate::cluster::Cluster;

/// Tables of the meta group.
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS catalog(grp INTEGER PRIMARY KEY, objects TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS index_servers(addr TEXT PRIMARY KEY, last_seen_ms INTEGER NOT NULL)",
];

/// A schema object (table, index, view, trigger) of a data group.
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

/// The schema of the data groups, keyed by lower-cased name.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    objects: BTreeMap<String, Object>,
}

impl Catalog {
    /// The table or view called `name` (case-insensitive), if any.
    pub fn relation(&self, name: &str) -> Option<&Object> {
        self.objects.get(&name.to_ascii_lowercase()).filter(|o| o.kind == "table" || o.kind == "view")
    }

    /// Every object, ordered by name.
    pub fn objects(&self) -> impl Iterator<Item = &Object> {
        self.objects.values()
    }

    fn from_rows(rows: Vec<Vec<Value>>) -> Catalog {
        let text = |v: &Value| match v {
            Value::Text(t) => t.clone(),
            _ => String::new(),
        };
        let objects = rows
            .iter()
            .filter(|r| r.len() == 4)
            .map(|r| Object { kind: text(&r[0]), name: text(&r[1]), table: text(&r[2]), sql: text(&r[3]) })
            .map(|o| (o.name.to_ascii_lowercase(), o))
            .collect();
        Catalog { objects }
    }
}

/// A statement for the meta group (meta statements use no random
/// functions, so the seed is fixed).
fn statement(sql: &str, params: Vec<Value>) -> Statement {
    Statement { sql: sql.into(), params, seed: 0, now_ms: chrono::Utc::now().timestamp_millis(), request_id: None }
}

/// Runs statements as one batch in the meta group; fails if any failed.
/// Every meta write may repeat harmlessly (`IF NOT EXISTS`, `OR REPLACE`).
async fn meta_write(cluster: &Cluster, statements: Vec<Statement>) -> Result<()> {
    match cluster.write(GroupId::META, &Command::Batch(statements), true).await? {
        CommandResult::Batch(outcomes) => outcomes.into_iter().try_for_each(|o| o.map(|_| ())),
        other => Err(Error::io(format!("unexpected meta result {other:?}"))),
    }
}

/// Creates the meta tables if they do not exist.
pub async fn ensure_schema(cluster: &Cluster) -> Result<()> {
    meta_write(cluster, SCHEMA.iter().map(|s| statement(s, vec![])).collect()).await
}

/// Runs a read in `group` and collects its rows.
pub async fn query(cluster: &Cluster, group: GroupId, sql: &str, params: Vec<Value>) -> Result<Vec<Vec<Value>>> {
    let req = pb::ReadRequest {
        group: group.0,
        sql: sql.into(),
        params: params.into_iter().map(Into::into).collect(),
        seed: 0,
        now_ms: 0,
    };
    let mut stream = cluster.read(req).await?;
    let mut rows = Vec::new();
    while let Some(part) = stream.message().await.map_err(Error::from)? {
        if let Some(pb::result_part::Part::Rows(r)) = part.part {
            rows.extend(r.rows.into_iter().map(|row| row.values.into_iter().map(Value::from).collect()));
        }
    }
    Ok(rows)
}

/// Index servers silent for this long are forgotten.
const FORGET_INDEX_SERVER_MS: i64 = 60 * 60 * 1000;

/// Records that the index server at `addr` is alive now, and forgets those
/// long silent.
pub async fn announce(cluster: &Cluster, addr: &str, now_ms: i64) -> Result<()> {
    meta_write(
        cluster,
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
pub async fn live_index_servers(cluster: &Cluster, since_ms: i64) -> Result<Vec<String>> {
    let rows = query(
        cluster,
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

/// The catalog as the meta group holds it.
pub async fn load_catalog(cluster: &Cluster) -> Result<Catalog> {
    let rows = query(
        cluster,
        GroupId::META,
        "SELECT j.value->>'kind', j.value->>'name', j.value->>'table', j.value->>'sql'
           FROM catalog, json_each(catalog.objects) AS j WHERE catalog.grp = ?1",
        vec![(GroupId::FIRST_DATA.0 as i64).into()],
    )
    .await?;
    Ok(Catalog::from_rows(rows))
}

/// Reads the data group's schema and records it as the catalog in the meta
/// group (one statement: all or nothing). Returns the new catalog.
pub async fn sync_catalog(cluster: &Cluster) -> Result<Catalog> {
    let rows = query(
        cluster,
        GroupId::FIRST_DATA,
        "SELECT type, name, tbl_name, sql FROM sqlite_schema
          WHERE sql IS NOT NULL AND name NOT LIKE '\\_drsdb%' ESCAPE '\\' ORDER BY name",
        vec![],
    )
    .await?;
    let catalog = Catalog::from_rows(rows);
    meta_write(
        cluster,
        vec![statement(
            "INSERT OR REPLACE INTO catalog(grp, objects)
             SELECT ?1, coalesce(json_group_array(json_object('kind', k, 'name', n, 'table', t, 'sql', s)), '[]')
               FROM (SELECT value->>0 AS k, value->>1 AS n, value->>2 AS t, value->>3 AS s FROM json_each(?2))",
            vec![(GroupId::FIRST_DATA.0 as i64).into(), catalog_json(&catalog).into()],
        )],
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
