//! The cluster a run fuzzes: one the harness starts (a `LocalCluster` in a
//! temporary directory, its servers child processes of this binary) or a
//! running `drsdb local` cluster named by its directory. Health checks,
//! and the comparison of the replicas' SQLite files after a run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use drsdb_cli::local::{self, Layout, LocalCluster, Options};
use drsdb_common::command::Statement;
use drsdb_common::config::TlsConfig;
use drsdb_common::stream::PartReader;
use drsdb_common::tls::{self, Dialer};
use drsdb_proto as pb;

use super::{Cell, Findings, Kind};

/// How long a started cluster may take to answer.
const READY_DEADLINE: Duration = Duration::from_secs(90);
/// How long a health check call may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer accepted from a server.
pub const MAX_MESSAGE: usize = 64 << 20;

/// A server process this harness started.
struct Child {
    pid: u32,
    name: String,
}

/// The cluster under test.
pub struct Target {
    /// Its directory.
    pub dir: PathBuf,
    /// Its addresses.
    pub layout: Layout,
    /// TLS settings with the client certificate.
    pub client_tls: TlsConfig,
    /// TLS settings with the node certificate (for storage-only calls).
    pub node_tls: TlsConfig,
    /// The cluster, when this harness started it.
    cluster: Option<LocalCluster>,
    temp: Option<tempfile::TempDir>,
    children: Vec<Child>,
    /// Servers already reported dead.
    reported: Vec<String>,
}

impl Target {
    /// Starts a cluster of `shards` shards in a temporary directory, or
    /// attaches to the one in `data`.
    pub async fn open(data: Option<&Path>, shards: Option<usize>) -> anyhow::Result<Target> {
        let (dir, temp, cluster) = match data {
            Some(dir) => (dir.canonicalize()?, None, None),
            None => {
                let temp = tempfile::Builder::new().prefix("drsdb-fuzz-").tempdir()?;
                let options = Options { log: "warn".into(), shards, ..Options::default() };
                let exe = std::env::current_exe()?;
                let mut cluster = LocalCluster::start(&exe, temp.path(), &options)?;
                cluster.wait_ready(READY_DEADLINE).await?;
                (cluster.dir().to_path_buf(), Some(temp), Some(cluster))
            }
        };
        let layout = Layout::read(&dir)?;
        let certs = dir.join(local::CERTS_DIR);
        let mut client_tls = tls::client_config_in(&certs);
        let mut node_tls = tls::node_config_in(&certs);
        client_tls.insecure = layout.insecure;
        node_tls.insecure = layout.insecure;
        let children = if cluster.is_some() { server_children() } else { Vec::new() };
        if cluster.is_some() && children.len() != layout.storage.len() + layout.index.len() {
            eprintln!(
                "note: found {} server processes of {} under /proc; dead servers are noticed by failing calls only",
                children.len(),
                layout.storage.len() + layout.index.len()
            );
        }
        Ok(Target { dir, layout, client_tls, node_tls, cluster, temp, children, reported: Vec::new() })
    }

    /// The index servers' addresses.
    pub fn index_servers(&self) -> &[String] {
        &self.layout.index
    }

    /// The storage servers' addresses.
    pub fn storage_servers(&self) -> Vec<String> {
        self.layout.storage.iter().map(|m| m.addr.clone()).collect()
    }

    /// A driver session over every index server.
    pub async fn client(&self) -> drsdb_common::Result<drsdb_client::Client> {
        drsdb_client::Client::connect(&self.layout.index, &self.client_tls).await
    }

    /// Problems with the cluster's health, each once: server processes
    /// that died, index servers that do not answer `SELECT 1`, storage
    /// servers that do not answer a Status call. The flag says whether a
    /// problem is a call that took longer than [`CHECK_TIMEOUT`].
    pub async fn health(&mut self) -> Vec<(String, bool)> {
        let mut problems = Vec::new();
        for child in &self.children {
            if !alive(child.pid) && !self.reported.contains(&child.name) {
                self.reported.push(child.name.clone());
                problems.push((
                    format!(
                        "{} (pid {}) died; see {}",
                        child.name,
                        child.pid,
                        self.dir.join("logs").join(format!("{}.log", child.name)).display()
                    ),
                    false,
                ));
            }
        }
        let client_dialer = Dialer::new(&self.client_tls);
        let node_dialer = Dialer::new(&self.node_tls);
        let (client_dialer, node_dialer) = match (client_dialer, node_dialer) {
            (Ok(c), Ok(n)) => (c, n),
            (Err(e), _) | (_, Err(e)) => {
                problems.push((format!("cannot load the cluster's certificates: {e}"), false));
                return problems;
            }
        };
        for addr in &self.layout.index {
            let answer = tokio::time::timeout(CHECK_TIMEOUT, select_one(&client_dialer, addr)).await;
            match answer {
                Ok(Ok(())) => {}
                Ok(Err(e)) => problems.push((format!("index server {addr} does not answer SELECT 1: {e}"), false)),
                Err(_) => problems
                    .push((format!("index server {addr} gave no answer to SELECT 1 in {CHECK_TIMEOUT:?}"), true)),
            }
        }
        for m in &self.layout.storage {
            let answer = tokio::time::timeout(CHECK_TIMEOUT, status(&node_dialer, &m.addr)).await;
            match answer {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => problems.push((format!("storage server {} does not answer Status: {e}", m.addr), false)),
                Err(_) => {
                    problems.push((format!("storage server {} gave no Status in {CHECK_TIMEOUT:?}", m.addr), true))
                }
            }
        }
        problems
    }

    /// The data shards, from a storage server's Status.
    pub async fn shards(&self) -> anyhow::Result<usize> {
        let dialer = Dialer::new(&self.node_tls)?;
        let mut last = None;
        for addr in self.storage_servers() {
            match tokio::time::timeout(CHECK_TIMEOUT, status(&dialer, &addr)).await {
                Ok(Ok(s)) => return Ok(s.shards as usize),
                Ok(Err(e)) => last = Some(e.to_string()),
                Err(_) => last = Some("no answer in time".into()),
            }
        }
        anyhow::bail!("no storage server answered Status: {}", last.unwrap_or_default())
    }

    /// The rows `sql` reads on group `group`, straight from its leader (a
    /// storage read with the node certificate: how each copy of a
    /// reference table is seen).
    pub async fn group_rows(&self, group: u64, sql: &str) -> anyhow::Result<Vec<Vec<Cell>>> {
        let dialer = Dialer::new(&self.node_tls)?;
        let mut last = String::new();
        for addr in self.storage_servers() {
            let read = async {
                let mut client =
                    pb::storage_client::StorageClient::new(dialer.lazy(&addr)?).max_decoding_message_size(MAX_MESSAGE);
                let request = pb::ReadRequest { group, statement: Some(Statement::new(sql).into()), alone: false };
                let mut parts = PartReader::new(client.read(request).await?.into_inner());
                let mut rows = Vec::new();
                while let Some(row) = parts.next().await? {
                    rows.push(row.iter().map(Cell::from).collect());
                }
                anyhow::Ok(rows)
            };
            match tokio::time::timeout(CHECK_TIMEOUT, read).await {
                Ok(Ok(rows)) => return Ok(rows),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = format!("no answer in {CHECK_TIMEOUT:?}"),
            }
        }
        anyhow::bail!("no storage server answered `{sql}` on group {group}: {last}")
    }

    /// Stops the cluster if this harness started it and compares the
    /// replicas of every group, reporting each difference as a divergence;
    /// returns what to say of the replicas in the summary. The directory is
    /// kept (and its path printed) when `keep` is set or there were
    /// findings before.
    pub fn finish(mut self, keep: bool, findings: &mut Findings) -> anyhow::Result<String> {
        let keep = keep || findings.total() > 0;
        let Some(mut cluster) = self.cluster.take() else {
            return Ok("replicas not compared (the cluster was not started here)".to_string());
        };
        cluster.stop();
        drop(cluster);
        let differences = compare_replicas(&self.dir);
        if let Some(temp) = self.temp.take() {
            if keep {
                println!("cluster directory kept: {}", temp.keep().display());
            }
        }
        let differences = differences?;
        for d in &differences {
            findings.report(Kind::Divergence, &format!("replicas differ: {d}"));
        }
        Ok(match differences.len() {
            0 => "replicas identical".to_string(),
            n => format!("replicas differ in {n} groups"),
        })
    }
}

/// Sends `SELECT 1` to the index server at `addr`, skipping the driver.
async fn select_one(dialer: &Dialer, addr: &str) -> anyhow::Result<()> {
    let mut client = pb::sql_client::SqlClient::new(dialer.lazy(addr)?).max_decoding_message_size(MAX_MESSAGE);
    let request = pb::ExecuteRequest { sql: "SELECT 1".into(), ..Default::default() };
    let mut parts = client.execute(request).await?.into_inner();
    let mut answered = false;
    while let Some(part) = parts.message().await? {
        answered |= matches!(part.part, Some(pb::result_part::Part::Rows(_)));
    }
    if !answered {
        anyhow::bail!("the answer had no rows");
    }
    Ok(())
}

/// A storage server's Status (the node certificate is needed).
async fn status(dialer: &Dialer, addr: &str) -> anyhow::Result<pb::StatusResponse> {
    let mut client = pb::storage_client::StorageClient::new(dialer.lazy(addr)?).max_decoding_message_size(MAX_MESSAGE);
    Ok(client.status(pb::StatusRequest {}).await?.into_inner())
}

/// The server processes this process started (its children running the
/// hidden serve subcommands), from /proc.
fn server_children() -> Vec<Child> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut children = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Some((_, ppid)) = proc_stat(pid) else { continue };
        if ppid != me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if !args.iter().any(|a| a == local::SERVE_STORAGE || a == local::SERVE_INDEX) {
            continue;
        }
        // The config file is named after the server: `storage-1.toml`.
        let name = args
            .iter()
            .skip_while(|a| *a != "--config")
            .nth(1)
            .and_then(|c| Path::new(c).file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| format!("server {pid}"));
        children.push(Child { pid, name });
    }
    children.sort_by(|a, b| a.name.cmp(&b.name));
    children
}

/// The state letter and parent of process `pid`, from `/proc/PID/stat`.
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// True while process `pid` runs (a zombie, which has exited but was not
/// reaped yet, does not count).
fn alive(pid: u32) -> bool {
    matches!(proc_stat(pid), Some((state, _)) if state != 'Z' && state != 'X')
}

/// One replica's user tables: name to rows, in a fixed order.
type Dump = BTreeMap<String, Vec<Vec<Cell>>>;

/// Compares the replicas of every group of the stopped cluster in `dir`;
/// returns the differences.
fn compare_replicas(dir: &Path) -> anyhow::Result<Vec<String>> {
    // Group id to (server, live database file).
    let mut groups: BTreeMap<u64, Vec<(String, PathBuf)>> = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let server = entry.file_name().to_string_lossy().into_owned();
        let groups_dir = entry.path().join("groups");
        if !server.starts_with("storage-") || !groups_dir.is_dir() {
            continue;
        }
        for group in std::fs::read_dir(&groups_dir)? {
            let group = group?;
            let Some(id) = group.file_name().to_str().and_then(|g| g.parse::<u64>().ok()) else { continue };
            let sm = group.path().join("sm");
            let generation = std::fs::read_to_string(sm.join("CURRENT"))
                .map_err(|e| anyhow::anyhow!("{}: cannot read CURRENT: {e}", sm.display()))?;
            groups.entry(id).or_default().push((server.clone(), sm.join(format!("data-{}.db", generation.trim()))));
        }
    }
    if groups.is_empty() {
        anyhow::bail!("no replica databases under {}", dir.display());
    }
    let mut differences = Vec::new();
    for (group, replicas) in &groups {
        // Raft needs only a majority to commit, so a follower may be
        // stopped a few entries behind: only replicas that applied the same
        // last entry are compared (a lagging one is not a divergence).
        let mut states = replicas
            .iter()
            .map(|(server, path)| Ok((applied_index(path)?, server, dump(path)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let newest = states.iter().map(|(applied, _, _)| *applied).max();
        states.retain(|(applied, _, _)| Some(*applied) == newest);
        let Some((_, first_server, first)) = states.first() else { continue };
        for (_, server, other) in states.iter().skip(1) {
            if other == first {
                continue;
            }
            let tables: Vec<&String> = first.keys().chain(other.keys()).collect();
            let differing: Vec<String> = tables
                .into_iter()
                .filter(|t| first.get(*t) != other.get(*t))
                .map(|t| {
                    let rows = |d: &Dump| d.get(t).map_or("absent".to_string(), |r| format!("{} rows", r.len()));
                    format!("{t} ({} on {first_server}, {} on {server})", rows(first), rows(other))
                })
                .collect();
            differences.push(format!(
                "group {group}: {server} differs from {first_server} at the same applied entry: {}",
                differing.join(", ")
            ));
        }
    }
    Ok(differences)
}

/// The index of the last log entry the replica in the SQLite file at
/// `path` applied (0: none yet).
fn applied_index(path: &Path) -> anyhow::Result<u64> {
    use prost::Message;
    let conn = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| anyhow::anyhow!("cannot open replica {}: {e}", path.display()))?;
    let state: Vec<u8> = conn
        .query_row("SELECT state FROM _drsdb_raft WHERE id = 0", [], |r| r.get(0))
        .map_err(|e| anyhow::anyhow!("cannot read the applied state of {}: {e}", path.display()))?;
    let state = pb::AppliedState::decode(state.as_slice())
        .map_err(|e| anyhow::anyhow!("the applied state of {} does not decode: {e}", path.display()))?;
    Ok(state.applied.map_or(0, |id| id.index))
}

/// Every user table of the SQLite file at `path` (opened read-only), in
/// rowid order (or ordered by all columns when it has no rowid).
fn dump(path: &Path) -> anyhow::Result<Dump> {
    use rusqlite::OpenFlags;
    let conn = rusqlite::Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| anyhow::anyhow!("cannot open replica {}: {e}", path.display()))?;
    let tables: Vec<String> = {
        // drsdb's own tables (`_drsdb…`) and SQLite's are left out; so are
        // virtual tables, whose shadow tables are compared instead.
        let mut stmt = conn.prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE '\\_drsdb%' ESCAPE '\\' \
             AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND sql NOT LIKE 'CREATE VIRTUAL%' ORDER BY name",
        )?;
        let names = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<Vec<String>>>()?;
        names
    };
    let mut out = Dump::new();
    for table in tables {
        let quoted = drsdb_common::sql::quote_name(&table);
        let by_rowid = format!("SELECT rowid, * FROM {quoted} ORDER BY rowid");
        let mut stmt = match conn.prepare(&by_rowid) {
            Ok(s) => s,
            Err(_) => {
                let width = conn.prepare(&format!("SELECT * FROM {quoted}"))?.column_count();
                let order: Vec<String> = (1..=width).map(|i| i.to_string()).collect();
                conn.prepare(&format!("SELECT * FROM {quoted} ORDER BY {}", order.join(", ")))?
            }
        };
        let width = stmt.column_count();
        let rows = stmt
            .query_map([], |r| (0..width).map(|i| r.get_ref(i).map(Cell::from)).collect::<rusqlite::Result<Vec<_>>>())?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| anyhow::anyhow!("cannot read {table} of {}: {e}", path.display()))?;
        out.insert(table, rows);
    }
    Ok(out)
}
