//! The peers of `drsdb bench`: etcd and PostgreSQL, run by the bench from
//! Debian's packages (`apt-get install etcd-server postgresql`) in a
//! temporary directory on free loopback ports, and given the same
//! workloads at the same concurrency, so that drsdb's figures can be
//! quoted as ratios measured in the same run.
//!
//! - etcd (one member, its defaults: every put fsync'd) through its gRPC
//!   API: a single-row insert is a `Put`, a point select a linearizable
//!   `Range`; it has no batched-insert counterpart here.
//! - PostgreSQL (its defaults: `synchronous_commit = on`, `fsync = on`)
//!   through its wire protocol (`tokio-postgres`), with the same SQL as
//!   drsdb, prepared once per connection. As root, the servers run as the
//!   `postgres` user (`setpriv`), since PostgreSQL refuses root.
//!
//! A peer's server is stopped and its directory removed when it is
//! dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use drsdb_client::Value;

use super::{Measure, Workload};

mod etcd {
    tonic::include_proto!("etcdserverpb");
}

/// How long a peer may take to start answering.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// Between two tries while a peer starts.
const START_POLL: Duration = Duration::from_millis(100);
/// Where Debian installs PostgreSQL's server programs (one directory per
/// major version).
const POSTGRES_LIB: &str = "/usr/lib/postgresql";
/// The unprivileged user PostgreSQL runs as when the bench runs as root.
const POSTGRES_USER: &str = "postgres";

/// A system the bench can compare drsdb with.
#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
pub enum PeerKind {
    /// etcd, through its gRPC API.
    Etcd,
    /// PostgreSQL, through its wire protocol.
    Postgres,
}

impl PeerKind {
    /// The name printed in the bench's tables.
    pub fn name(self) -> &'static str {
        match self {
            PeerKind::Etcd => "etcd",
            PeerKind::Postgres => "postgres",
        }
    }
}

/// A peer's server, running.
pub struct Peer {
    /// Which system.
    pub kind: PeerKind,
    port: u16,
    server: Child,
    dir: tempfile::TempDir,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn log_file(dir: &Path, name: &str) -> anyhow::Result<Stdio> {
    Ok(std::fs::File::create(dir.join(name))?.into())
}

/// Runs `program` as PostgreSQL's user when this process is root.
fn as_postgres_user(program: &Path) -> Command {
    if nix::unistd::geteuid().is_root() {
        let mut c = Command::new("setpriv");
        c.args([&format!("--reuid={POSTGRES_USER}"), &format!("--regid={POSTGRES_USER}"), "--init-groups", "--"])
            .arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// The newest PostgreSQL server installed by Debian's packages.
fn postgres_bin() -> anyhow::Result<PathBuf> {
    let newest = std::fs::read_dir(POSTGRES_LIB)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .max()
        .with_context(|| format!("no PostgreSQL under {POSTGRES_LIB}: install it with `apt-get install postgresql`"))?;
    Ok(Path::new(POSTGRES_LIB).join(newest.to_string()).join("bin"))
}

impl Peer {
    /// Starts the peer's server and waits until it answers.
    pub async fn start(kind: PeerKind) -> anyhow::Result<Peer> {
        let dir = tempfile::Builder::new().prefix(&format!("drsdb-bench-{}-", kind.name())).tempdir()?;
        let port = free_port()?;
        let server = match kind {
            PeerKind::Etcd => {
                let peer_url = format!("http://127.0.0.1:{}", free_port()?);
                let client_url = format!("http://127.0.0.1:{port}");
                Command::new("etcd")
                    .args(["--name", "bench", "--data-dir"])
                    .arg(dir.path().join("data"))
                    .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
                    .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
                    .args(["--initial-cluster", &format!("bench={peer_url}"), "--initial-cluster-state", "new"])
                    .stdin(Stdio::null())
                    .stdout(log_file(dir.path(), "etcd.log")?)
                    .stderr(log_file(dir.path(), "etcd.err")?)
                    .spawn()
                    .context("cannot start etcd: install it with `apt-get install etcd-server`")?
            }
            PeerKind::Postgres => {
                let bin = postgres_bin()?;
                if nix::unistd::geteuid().is_root() {
                    let user = nix::unistd::User::from_name(POSTGRES_USER)?
                        .with_context(|| format!("no user {POSTGRES_USER} (Debian's postgresql package makes it)"))?;
                    nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid))?;
                }
                let data = dir.path().join("data");
                let initdb = as_postgres_user(&bin.join("initdb"))
                    .arg("-D")
                    .arg(&data)
                    .args(["-U", POSTGRES_USER, "--auth=trust", "--no-locale", "-E", "UTF8"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log_file(dir.path(), "initdb.err")?)
                    .status()
                    .context("cannot run PostgreSQL's initdb")?;
                anyhow::ensure!(initdb.success(), "PostgreSQL's initdb failed: see {}", dir.path().display());
                as_postgres_user(&bin.join("postgres"))
                    .arg("-D")
                    .arg(&data)
                    .args(["-p", &port.to_string(), "-k"])
                    .arg(dir.path())
                    .args(["-c", "listen_addresses=127.0.0.1", "-c", "max_connections=300"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log_file(dir.path(), "postgres.log")?)
                    .spawn()
                    .context("cannot start PostgreSQL")?
            }
        };
        let peer = Peer { kind, port, server, dir };
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let answered = match kind {
                PeerKind::Etcd => peer.etcd().await.map(drop),
                PeerKind::Postgres => peer.postgres().await.map(drop),
            };
            match answered {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => {
                    anyhow::bail!(
                        "{} did not answer within {START_DEADLINE:?} ({e}); logs in {}",
                        kind.name(),
                        peer.dir.path().display()
                    )
                }
                Err(_) => tokio::time::sleep(START_POLL).await,
            }
        }
        Ok(peer)
    }

    async fn etcd(&self) -> anyhow::Result<etcd::kv_client::KvClient<tonic::transport::Channel>> {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", self.port))?.connect().await?;
        Ok(etcd::kv_client::KvClient::new(channel))
    }

    async fn postgres(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, connection) = tokio_postgres::connect(
            &format!("host=127.0.0.1 port={} user={POSTGRES_USER} dbname={POSTGRES_USER}", self.port),
            tokio_postgres::NoTls,
        )
        .await?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// Creates the bench's table (PostgreSQL).
    pub async fn prepare(&self) -> anyhow::Result<()> {
        if self.kind == PeerKind::Postgres {
            self.postgres().await?.batch_execute("CREATE TABLE bench(k TEXT PRIMARY KEY, v TEXT)").await?;
        }
        Ok(())
    }

    /// Whether the peer has a counterpart of workload `w`.
    pub fn runs(&self, w: Workload) -> bool {
        !(self.kind == PeerKind::Etcd && w == Workload::BatchInsert)
    }

    /// Runs workload `w` with `concurrency` sessions, `ops` operations.
    pub async fn workload(&self, w: Workload, concurrency: usize, ops: usize, batch: usize) -> anyhow::Result<Measure> {
        let mut workers = Vec::new();
        for worker in 0..concurrency {
            let session = match self.kind {
                PeerKind::Etcd => Session::Etcd(self.etcd().await?),
                PeerKind::Postgres => Session::Postgres(self.postgres().await?),
            };
            workers.push(session.run(w, worker, concurrency, ops, batch));
        }
        let started = Instant::now();
        let mut latencies = Vec::new();
        for l in futures::future::try_join_all(workers.into_iter().map(tokio::spawn)).await? {
            latencies.extend(l?);
        }
        Ok(Measure { ops, elapsed: started.elapsed(), latencies })
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // SIGINT: PostgreSQL's fast shutdown; etcd stops on it too.
        let pid = nix::unistd::Pid::from_raw(self.server.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let _ = self.server.wait();
    }
}

/// One worker's connection to a peer.
enum Session {
    Etcd(etcd::kv_client::KvClient<tonic::transport::Channel>),
    Postgres(tokio_postgres::Client),
}

fn text(v: &Value) -> String {
    match v {
        Value::Text(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Session {
    /// Runs this worker's share of workload `w`: its latencies.
    async fn run(
        self,
        w: Workload,
        worker: usize,
        n: usize,
        ops: usize,
        batch: usize,
    ) -> anyhow::Result<Vec<std::time::Duration>> {
        let mut latencies = Vec::new();
        match self {
            Session::Etcd(mut kv) => {
                for i in (worker..ops).step_by(n) {
                    let (_, params) = w.statement("bench", i, batch, ops);
                    let key = text(&params[0]).into_bytes();
                    let t = Instant::now();
                    match w {
                        Workload::Insert => {
                            let value = text(&params[1]).into_bytes();
                            kv.put(etcd::PutRequest { key, value, ..Default::default() }).await?;
                        }
                        Workload::PointSelect => {
                            let found = kv.range(etcd::RangeRequest { key, ..Default::default() }).await?;
                            anyhow::ensure!(found.get_ref().kvs.len() == 1, "etcd: a key written before is missing");
                        }
                        Workload::BatchInsert => anyhow::bail!("etcd has no batched insert here"),
                    }
                    latencies.push(t.elapsed());
                }
            }
            Session::Postgres(client) => {
                let (sql, _) = w.statement("bench", worker, batch, ops);
                let stmt = client.prepare(&sql.replace('?', "$")).await?;
                for i in (worker..ops).step_by(n) {
                    let (_, params) = w.statement("bench", i, batch, ops);
                    let texts: Vec<String> = params.iter().map(text).collect();
                    let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                        texts.iter().map(|s| s as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
                    let t = Instant::now();
                    let rows = client.query(&stmt, &refs).await?;
                    anyhow::ensure!(
                        w != Workload::PointSelect || rows.len() == 1,
                        "postgres: a key written before is missing"
                    );
                    latencies.push(t.elapsed());
                }
            }
        }
        Ok(latencies)
    }
}
