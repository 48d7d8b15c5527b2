//! The cluster under test, and the levers the nemesis pulls on it.
//!
//! - `local`: a `drsdb local` cluster this harness starts in a temporary
//!   directory (servers are child processes of this binary). Kills,
//!   pauses and restarts are signals to the processes. Everything runs on
//!   loopback, so network partitions are not available.
//! - `compose`: a running docker-compose cluster (`deploy/`). Kills,
//!   pauses and restarts are `docker kill/pause/start`; partitions are
//!   iptables rules inside the containers' network namespaces (entered
//!   with `nsenter`, so the images need no tools), which drop traffic to
//!   and from the containers on the other side.

use std::path::{Path, PathBuf};
use std::time::Duration;

use drsdb_cli::local::{LocalCluster, Options};
use drsdb_client::Client;
use drsdb_common::config::TlsConfig;
use drsdb_common::tls;

/// How long a cluster may take to (re)start and answer.
pub const READY_DEADLINE: Duration = Duration::from_secs(90);
/// Pause between checks while waiting.
const POLL: Duration = Duration::from_millis(250);

/// How clients reach the cluster (shared by the client processes, so
/// that connecting never waits for the nemesis).
#[derive(Debug, Clone)]
pub struct Connector {
    /// Index server addresses.
    pub servers: Vec<String>,
    /// Client TLS settings.
    pub tls: TlsConfig,
}

impl Connector {
    /// A new client session.
    pub async fn client(&self) -> drsdb_client::Result<Client> {
        Client::connect(&self.servers, &self.tls).await
    }
}

/// Whether a server stores data or plans statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A storage server (`storage-N` / `storageN`).
    Storage,
    /// An index server.
    Index,
}

/// A server of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// Its name as the target knows it (process or container name).
    pub name: String,
    /// Its role.
    pub role: Role,
    /// For a storage server, its node id.
    pub node: Option<u64>,
}

/// The cluster under test.
pub enum Target {
    /// Processes of a local cluster.
    Local {
        /// The cluster.
        cluster: LocalCluster,
        /// Its directory, removed after the cluster stops unless kept.
        _dir: Option<tempfile::TempDir>,
    },
    /// Containers of a docker-compose cluster.
    Compose {
        /// The compose project's containers.
        servers: Vec<Server>,
        /// Index server addresses reachable from here.
        connect: Vec<String>,
        /// Client certificates.
        tls: TlsConfig,
    },
}

impl Target {
    /// Starts a local cluster of `shards` shards in a temporary directory.
    pub async fn local(shards: Option<usize>, keep: bool) -> anyhow::Result<Target> {
        let dir = tempfile::Builder::new().prefix("drsdb-faults-").tempdir()?;
        let options = Options { shards, log: "info".into(), ..Options::default() };
        let mut cluster = LocalCluster::start(&std::env::current_exe()?, dir.path(), &options)?;
        cluster.wait_ready(READY_DEADLINE).await?;
        let dir = if keep {
            println!("cluster directory (kept): {}", dir.keep().display());
            None
        } else {
            Some(dir)
        };
        Ok(Target::Local { cluster, _dir: dir })
    }

    /// Attaches to the containers of compose project `project`, reaching
    /// its index servers at `connect` with the client certificates in
    /// `certs`.
    pub fn compose(project: &str, connect: Vec<String>, certs: &Path) -> anyhow::Result<Target> {
        let listing = docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=com.docker.compose.project={project}"),
            "--format",
            "{{.Names}} {{.Label \"com.docker.compose.service\"}}",
        ])?;
        let mut servers = Vec::new();
        for line in listing.lines() {
            let Some((name, service)) = line.split_once(' ') else { continue };
            let (role, node) = if let Some(n) = service.strip_prefix("storage") {
                (Role::Storage, n.parse().ok())
            } else if service.starts_with("index") {
                (Role::Index, None)
            } else {
                continue;
            };
            servers.push(Server { name: name.to_string(), role, node });
        }
        servers.sort_by(|a, b| a.name.cmp(&b.name));
        if !servers.iter().any(|s| s.role == Role::Storage) {
            anyhow::bail!("no storage containers in compose project {project}; bring it up first (see README)");
        }
        Ok(Target::Compose { servers, connect, tls: tls::client_config_in(certs) })
    }

    /// Its name in the summary.
    pub fn describe(&self) -> String {
        match self {
            Target::Local { cluster, .. } => format!("local cluster in {}", cluster.dir().display()),
            Target::Compose { connect, .. } => format!("compose cluster at {}", connect.join(",")),
        }
    }

    /// Where the servers' logs are.
    pub fn logs(&self) -> Option<PathBuf> {
        match self {
            Target::Local { cluster, .. } => Some(cluster.dir().join("logs")),
            Target::Compose { .. } => None,
        }
    }

    /// Whether network partitions can be made.
    pub fn can_partition(&self) -> bool {
        matches!(self, Target::Compose { .. })
    }

    /// Every server.
    pub fn servers(&self) -> Vec<Server> {
        match self {
            Target::Local { cluster, .. } => cluster
                .server_names()
                .into_iter()
                .map(|name| {
                    let node = name.strip_prefix("storage-").and_then(|n| n.parse().ok());
                    let role = if node.is_some() { Role::Storage } else { Role::Index };
                    Server { name, role, node }
                })
                .collect(),
            Target::Compose { servers, .. } => servers.clone(),
        }
    }

    /// What clients connect with: index server addresses and TLS settings.
    pub fn connector(&self) -> Connector {
        match self {
            Target::Local { cluster, .. } => {
                Connector { servers: cluster.layout().index.clone(), tls: cluster.client_tls().clone() }
            }
            Target::Compose { connect, tls, .. } => Connector { servers: connect.clone(), tls: tls.clone() },
        }
    }

    /// Kills `server` with SIGKILL.
    pub fn kill(&mut self, server: &Server) -> anyhow::Result<()> {
        self.lever(server, LocalCluster::kill, &["kill", "-s", "KILL"])
    }

    /// Stops `server` gracefully (SIGTERM).
    pub fn stop(&mut self, server: &Server) -> anyhow::Result<()> {
        self.lever(server, LocalCluster::stop_server, &["stop"])
    }

    /// Starts `server` if it is not running.
    pub fn start(&mut self, server: &Server) -> anyhow::Result<()> {
        self.lever(server, LocalCluster::start_server, &["start"])
    }

    /// Freezes `server`.
    pub fn pause(&mut self, server: &Server) -> anyhow::Result<()> {
        self.lever(server, LocalCluster::pause, &["pause"])
    }

    /// Unfreezes `server`.
    pub fn resume(&mut self, server: &Server) -> anyhow::Result<()> {
        self.lever(server, LocalCluster::resume, &["unpause"])
    }

    /// Acts on `server`: through the local cluster, or with the docker
    /// command `verb` on its container.
    fn lever(
        &mut self,
        server: &Server,
        local: fn(&mut LocalCluster, &str) -> anyhow::Result<()>,
        verb: &[&str],
    ) -> anyhow::Result<()> {
        match self {
            Target::Local { cluster, .. } => local(cluster, &server.name),
            Target::Compose { .. } => docker(&[verb, &[server.name.as_str()]].concat()).map(drop),
        }
    }

    /// Cuts every server in `side` off from every server not in it.
    pub fn partition(&mut self, side: &[Server]) -> anyhow::Result<()> {
        let Target::Compose { servers, .. } = self else {
            anyhow::bail!("partitions need the compose target");
        };
        let ips: Vec<(Server, String, String)> = servers
            .iter()
            .map(|s| Ok((s.clone(), container_pid(&s.name)?, container_ip(&s.name)?)))
            .collect::<anyhow::Result<_>>()?;
        for (s, pid, _) in &ips {
            let inside = side.contains(s);
            for (other, _, ip) in &ips {
                if side.contains(other) != inside {
                    iptables(pid, &["-A", "INPUT", "-s", ip, "-j", "DROP"])?;
                    iptables(pid, &["-A", "OUTPUT", "-d", ip, "-j", "DROP"])?;
                }
            }
        }
        Ok(())
    }

    /// Removes every partition.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        if let Target::Compose { servers, .. } = self {
            for s in servers.iter() {
                // A container that is not running has no rules to remove.
                if let Ok(pid) = container_pid(&s.name) {
                    iptables(&pid, &["-F", "INPUT"])?;
                    iptables(&pid, &["-F", "OUTPUT"])?;
                }
            }
        }
        Ok(())
    }

    /// Storage node id → server.
    pub fn storage_node(&self, node: u64) -> Option<Server> {
        self.servers().into_iter().find(|s| s.node == Some(node))
    }

    /// Waits until a client can run a statement and every storage server
    /// answers (`SHOW NODES`), or fails after `deadline`.
    pub async fn wait_healthy(&self, deadline: Duration) -> anyhow::Result<()> {
        let until = tokio::time::Instant::now() + deadline;
        let connector = self.connector();
        let mut last;
        loop {
            let check = async {
                let mut client = connector.client().await?;
                let nodes = client.execute("SHOW NODES", &[]).await?;
                let down: Vec<String> = nodes
                    .rows
                    .iter()
                    .filter(|r| r.get::<String>(2).map(|s| s != "up").unwrap_or(true))
                    .map(|r| r.get::<String>(1).unwrap_or_default())
                    .collect();
                match down.is_empty() {
                    true => Ok(()),
                    false => Err(drsdb_client::Error::unavailable(format!("not answering: {}", down.join(", ")))),
                }
            };
            match tokio::time::timeout(POLL * 20, check).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "no answer".into(),
            }
            if tokio::time::Instant::now() >= until {
                anyhow::bail!("the cluster did not recover within {deadline:?}: {last}");
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Runs `docker ARGS`, returning its output.
fn docker(args: &[&str]) -> anyhow::Result<String> {
    command("docker", args)
}

fn command(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run {program}: {e}"))?;
    if !out.status.success() {
        anyhow::bail!("{program} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The host pid of a running container's first process.
fn container_pid(name: &str) -> anyhow::Result<String> {
    let pid = docker(&["inspect", "-f", "{{.State.Pid}}", name])?.trim().to_string();
    match pid.as_str() {
        "" | "0" => anyhow::bail!("{name} is not running"),
        _ => Ok(pid),
    }
}

/// A container's address on its compose network.
fn container_ip(name: &str) -> anyhow::Result<String> {
    let ip = docker(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", name])?;
    ip.split_whitespace().next().map(str::to_string).ok_or_else(|| anyhow::anyhow!("{name} has no address"))
}

/// Runs iptables inside the network namespace of process `pid`.
fn iptables(pid: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut full = vec!["-t", pid, "-n", "iptables", "-w"];
    full.extend_from_slice(args);
    command("nsenter", &full).map(drop)
}
