//! A whole cluster on one machine: storage and index servers as child
//! processes, on loopback ports, with their data, configs, certificates and
//! logs in one directory. `drsdb local` runs one for people; the test
//! harness runs them for tests (killing and restarting servers at will).
//!
//! The children are started from an executable that knows the hidden
//! subcommands `serve-storage --config FILE` and `serve-index --config
//! FILE` (see [`serve`]): `drsdb` and `sql-tests` both do. Each child gets
//! its own process group, so that Ctrl-C in a terminal reaches only the
//! parent, and dies with its parent (SIGTERM on parent death).
//!
//! Directory layout: `cluster.json` (addresses, chosen on the first start
//! and reused after, because Raft membership records them), `certs/`,
//! `storage-N.toml` + `storage-N/`, `index-N.toml`, `logs/`.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use drsdb_common::config::{self, IndexConfig, Member, StorageConfig, TlsConfig};
use drsdb_common::tls;
use serde::{Deserialize, Serialize};

use drsdb_client::Client;

/// Certificates, inside the data directory.
pub const CERTS_DIR: &str = "certs";
const LAYOUT_FILE: &str = "cluster.json";
const LOGS_DIR: &str = "logs";
/// A server that ran at least this long before exiting is restarted at
/// once; one that exits sooner waits [`RESTART_BACKOFF`], doubled for each
/// such exit in a row, up to [`MAX_RESTART_BACKOFF`].
const STABLE_RUN: Duration = Duration::from_secs(10);
/// The first wait before restarting a server that exited soon after start.
const RESTART_BACKOFF: Duration = Duration::from_secs(1);
/// The longest such wait.
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(30);
/// Pause between readiness checks.
const READY_POLL: Duration = Duration::from_millis(200);
/// How long a server may take to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// The subcommand that runs a storage server from a config file.
pub const SERVE_STORAGE: &str = "serve-storage";
/// The subcommand that runs an index server from a config file.
pub const SERVE_INDEX: &str = "serve-index";

/// How to build a new local cluster (ignored when the directory already
/// holds one, except `log`).
#[derive(Debug, Clone)]
pub struct Options {
    /// Storage servers.
    pub storage_servers: u64,
    /// Index servers.
    pub index_servers: usize,
    /// Plaintext instead of TLS.
    pub insecure: bool,
    /// Data shards (unset: the storage servers' default).
    pub shards: Option<usize>,
    /// Log filter for the servers.
    pub log: String,
    /// Raft tuning for the storage servers.
    pub raft: config::RaftConfig,
    /// Idle transactions are rolled back after this long.
    pub txn_idle_timeout_ms: u64,
    /// Transactions are rolled back after being open this long.
    pub txn_max_duration_ms: u64,
    /// Limits on the connections every server accepts.
    pub connections: config::ConnectionLimits,
}

impl Default for Options {
    fn default() -> Self {
        let storage = StorageConfig::default();
        Options {
            storage_servers: 3,
            index_servers: 2,
            insecure: false,
            shards: None,
            log: storage.log,
            raft: storage.raft,
            txn_idle_timeout_ms: storage.txn_idle_timeout_ms,
            txn_max_duration_ms: storage.txn_max_duration_ms,
            connections: storage.connections,
        }
    }
}

/// The addresses of a local cluster, kept in its data directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Layout {
    /// Storage servers.
    pub storage: Vec<Member>,
    /// Index servers.
    pub index: Vec<String>,
    /// Whether the cluster runs without TLS.
    pub insecure: bool,
    /// Data shards (unset: the storage servers' default).
    #[serde(default)]
    pub shards: Option<usize>,
}

impl Layout {
    /// Reads the layout of the cluster in `dir`.
    pub fn read(dir: &Path) -> anyhow::Result<Layout> {
        let path = dir.join(LAYOUT_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            anyhow::anyhow!(
                "{} is not a drsdb local directory ({e}); start one with `drsdb local --data {}`",
                dir.display(),
                dir.display()
            )
        })?;
        Ok(serde_json::from_str(&text)?)
    }

    /// Chooses addresses for a new cluster by binding loopback port 0 for
    /// each server; the bound listeners are handed to the servers, so no
    /// other process can take a port in between.
    fn create(dir: &Path, options: &Options) -> anyhow::Result<(Layout, Vec<std::net::TcpListener>)> {
        if options.storage_servers == 0 || options.index_servers == 0 {
            anyhow::bail!("a cluster needs at least one storage server and one index server");
        }
        let count = options.storage_servers as usize + options.index_servers;
        let listeners =
            (0..count).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<std::io::Result<Vec<_>>>()?;
        let mut addrs =
            listeners.iter().map(|l| Ok(l.local_addr()?.to_string())).collect::<anyhow::Result<Vec<_>>>()?;
        let index = addrs.split_off(options.storage_servers as usize);
        let storage = addrs.into_iter().zip(1..).map(|(addr, id)| Member { id, addr }).collect();
        let layout = Layout { storage, index, insecure: options.insecure, shards: options.shards };
        std::fs::write(dir.join(LAYOUT_FILE), serde_json::to_string_pretty(&layout)?)?;
        Ok((layout, listeners))
    }
}

/// The descriptor a server child finds its listening socket on.
pub const LISTEN_FD: i32 = 3;

struct Process {
    name: String,
    addr: String,
    config: PathBuf,
    subcommand: &'static str,
    /// A socket already bound for it (first start of a new cluster).
    listener: Option<std::net::TcpListener>,
    child: Option<Child>,
    /// When it was last started.
    started: Option<Instant>,
    /// Exits in a row soon after starting (for the restart backoff).
    quick_exits: u32,
    /// When [`LocalCluster::restart_exited`] may start it again.
    restart_at: Option<Instant>,
}

impl Process {
    fn new(
        name: String,
        addr: String,
        config: PathBuf,
        subcommand: &'static str,
        listener: Option<std::net::TcpListener>,
    ) -> Process {
        Process {
            name,
            addr,
            config,
            subcommand,
            listener,
            child: None,
            started: None,
            quick_exits: 0,
            restart_at: None,
        }
    }
}

/// A running local cluster. Dropping it stops every server.
pub struct LocalCluster {
    dir: PathBuf,
    exe: PathBuf,
    layout: Layout,
    client_tls: TlsConfig,
    processes: Vec<Process>,
}

impl LocalCluster {
    /// Starts (or restarts) the cluster in `dir`, running servers from
    /// `exe`. Does not wait for it to be ready: see [`LocalCluster::wait_ready`].
    pub fn start(exe: &Path, dir: &Path, options: &Options) -> anyhow::Result<LocalCluster> {
        std::fs::create_dir_all(dir.join(LOGS_DIR))?;
        let dir = dir.canonicalize()?;
        let (layout, mut listeners) = if dir.join(LAYOUT_FILE).exists() {
            (Layout::read(&dir)?, Vec::new())
        } else {
            let (layout, listeners) = Layout::create(&dir, options)?;
            (layout, listeners.into_iter().map(Some).collect())
        };
        listeners.resize_with(layout.storage.len() + layout.index.len(), || None);
        let mut listeners = listeners.into_iter();
        let certs = dir.join(CERTS_DIR);
        let mut node_tls = tls::node_config_in(&certs);
        let mut client_tls = tls::client_config_in(&certs);
        let ticket_key = certs.join(tls::files::TICKET_KEY);
        if layout.insecure {
            node_tls.insecure = true;
            client_tls.insecure = true;
            std::fs::create_dir_all(&certs)?;
            drsdb_common::ticket::generate(&ticket_key)?;
        } else {
            tls::generate(&certs, &[])?;
        }
        let mut processes = Vec::new();
        for m in &layout.storage {
            let config = StorageConfig {
                node_id: m.id,
                listen: m.addr.parse()?,
                data_dir: dir.join(format!("storage-{}", m.id)),
                members: layout.storage.clone(),
                shards: layout.shards,
                log: options.log.clone(),
                tls: node_tls.clone(),
                ticket_key: ticket_key.clone(),
                raft: options.raft.clone(),
                txn_idle_timeout_ms: options.txn_idle_timeout_ms,
                txn_max_duration_ms: options.txn_max_duration_ms,
                connections: options.connections.clone(),
                ..StorageConfig::default()
            };
            let name = format!("storage-{}", m.id);
            let path = dir.join(format!("{name}.toml"));
            std::fs::write(&path, toml_string(&config)?)?;
            processes.push(Process::new(name, m.addr.clone(), path, SERVE_STORAGE, listeners.next().flatten()));
        }
        for (i, addr) in layout.index.iter().enumerate() {
            let config = IndexConfig {
                listen: addr.parse()?,
                storage_seeds: layout.storage.iter().map(|m| m.addr.clone()).collect(),
                log: options.log.clone(),
                tls: node_tls.clone(),
                ticket_key: ticket_key.clone(),
                connections: options.connections.clone(),
                ..IndexConfig::default()
            };
            let name = format!("index-{}", i + 1);
            let path = dir.join(format!("{name}.toml"));
            std::fs::write(&path, toml_string(&config)?)?;
            processes.push(Process::new(name, addr.clone(), path, SERVE_INDEX, listeners.next().flatten()));
        }
        let mut cluster = LocalCluster { dir, exe: exe.to_path_buf(), layout, client_tls, processes };
        let names: Vec<String> = cluster.processes.iter().map(|p| p.name.clone()).collect();
        for name in names {
            cluster.start_server(&name)?;
        }
        Ok(cluster)
    }

    /// The cluster's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its addresses.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// TLS settings for clients.
    pub fn client_tls(&self) -> &TlsConfig {
        &self.client_tls
    }

    /// A client over every index server.
    pub async fn client(&self) -> drsdb_common::Result<Client> {
        Client::connect(&self.layout.index, &self.client_tls).await
    }

    fn process(&mut self, name: &str) -> anyhow::Result<&mut Process> {
        self.processes.iter_mut().find(|p| p.name == name).ok_or_else(|| anyhow::anyhow!("no server called {name}"))
    }

    /// Starts the server `name` (`storage-N` or `index-N`) if it is not
    /// running. This process binds its address and hands the socket over
    /// on descriptor [`LISTEN_FD`].
    pub fn start_server(&mut self, name: &str) -> anyhow::Result<()> {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let exe = self.exe.clone();
        let log_path = self.dir.join(LOGS_DIR).join(format!("{name}.log"));
        let p = self.process(name)?;
        if p.child.is_some() {
            return Ok(());
        }
        let listener = match p.listener.take() {
            Some(l) => l,
            None => std::net::TcpListener::bind(&p.addr).map_err(|e| {
                anyhow::anyhow!(
                    "{name} cannot listen on {} ({e}); is another cluster using this directory's ports?",
                    p.addr
                )
            })?,
        };
        let fd = listener.as_raw_fd();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log_path)?;
        let mut command = std::process::Command::new(&exe);
        command
            .arg(p.subcommand)
            .arg("--config")
            .arg(&p.config)
            .arg("--listen-fd")
            .arg(LISTEN_FD.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        // SAFETY: between fork and exec only async-signal-safe calls run:
        // prctl, dup2 and fcntl on descriptors this process owns.
        unsafe {
            command.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).map_err(std::io::Error::from)?;
                let rc = if fd == LISTEN_FD {
                    nix::libc::fcntl(fd, nix::libc::F_SETFD, 0)
                } else {
                    nix::libc::dup2(fd, LISTEN_FD)
                };
                if rc < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        p.child = Some(command.spawn().map_err(|e| anyhow::anyhow!("cannot start {name}: {e}"))?);
        p.started = Some(Instant::now());
        p.restart_at = None;
        // The child has its own copy of the socket now.
        drop(listener);
        Ok(())
    }

    /// Kills the server `name` with SIGKILL (no chance to clean up).
    pub fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        if let Some(mut child) = self.process(name)?.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// The servers' names (`storage-N`, `index-N`).
    pub fn server_names(&self) -> Vec<String> {
        self.processes.iter().map(|p| p.name.clone()).collect()
    }

    /// Stops the server `name` as an operator would (SIGTERM, then SIGKILL
    /// after a grace period).
    pub fn stop_server(&mut self, name: &str) -> anyhow::Result<()> {
        if let Some(child) = self.process(name)?.child.take() {
            stop_all(vec![(name.to_string(), child)]);
        }
        Ok(())
    }

    /// Freezes the server `name` (SIGSTOP): it holds its connections and
    /// answers nothing until [`LocalCluster::resume`].
    pub fn pause(&mut self, name: &str) -> anyhow::Result<()> {
        self.signal(name, nix::sys::signal::Signal::SIGSTOP)
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&mut self, name: &str) -> anyhow::Result<()> {
        self.signal(name, nix::sys::signal::Signal::SIGCONT)
    }

    fn signal(&mut self, name: &str, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
        let Some(child) = &self.process(name)?.child else { anyhow::bail!("{name} is not running") };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal)?;
        Ok(())
    }

    /// Restarts the servers whose processes exited on their own (not those
    /// stopped through this cluster): a server that had run for a while
    /// at once, one that keeps exiting soon after start with a growing
    /// delay. Returns a line per server that exited or was restarted.
    pub fn restart_exited(&mut self) -> Vec<String> {
        let mut said = Vec::new();
        let now = Instant::now();
        let logs = self.dir.join(LOGS_DIR);
        let mut due = Vec::new();
        for p in &mut self.processes {
            if let Some(child) = &mut p.child {
                let Ok(Some(status)) = child.try_wait() else { continue };
                p.child = None;
                let ran = p.started.map_or(Duration::ZERO, |s| now - s);
                p.quick_exits = if ran < STABLE_RUN { p.quick_exits + 1 } else { 0 };
                let delay = match p.quick_exits {
                    0 => Duration::ZERO,
                    n => RESTART_BACKOFF.saturating_mul(1 << (n - 1).min(16)).min(MAX_RESTART_BACKOFF),
                };
                p.restart_at = Some(now + delay);
                said.push(format!(
                    "{} exited ({status}) after {:.0?}; restarting it in {delay:?} (log: {})",
                    p.name,
                    ran,
                    logs.join(format!("{}.log", p.name)).display()
                ));
            }
            if p.child.is_none() && p.restart_at.is_some_and(|at| at <= now) {
                due.push(p.name.clone());
            }
        }
        for name in due {
            match self.start_server(&name) {
                Ok(()) => said.push(format!("{name} restarted")),
                Err(e) => {
                    said.push(format!("{name} could not be restarted: {e}"));
                    if let Ok(p) = self.process(&name) {
                        p.restart_at = Some(now + MAX_RESTART_BACKOFF);
                    }
                }
            }
        }
        said
    }

    /// The process id of server `name`, while it runs.
    pub fn pid(&mut self, name: &str) -> anyhow::Result<Option<u32>> {
        Ok(self.process(name)?.child.as_ref().map(Child::id))
    }

    /// Stops every server (SIGTERM, then SIGKILL after a grace period).
    pub fn stop(&mut self) {
        let children: Vec<(String, Child)> =
            self.processes.iter_mut().filter_map(|p| p.child.take().map(|c| (p.name.clone(), c))).collect();
        stop_all(children);
    }

    /// Fails if a server that should run has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in &mut self.processes {
            if let Some(child) = &mut p.child {
                if let Ok(Some(status)) = child.try_wait() {
                    p.child = None;
                    anyhow::bail!(
                        "{} exited ({status}); see {}",
                        p.name,
                        self.dir.join(LOGS_DIR).join(format!("{}.log", p.name)).display()
                    );
                }
            }
        }
        Ok(())
    }

    /// Waits until every running index server answers a query, or fails
    /// after `deadline`.
    pub async fn wait_ready(&mut self, deadline: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + deadline;
        loop {
            self.check_alive()?;
            let mut last = None;
            for addr in &self.layout.index {
                // Ready: it answers, and it lists every index server (they
                // announce themselves in the meta group, which clients read).
                let expected = self.layout.index.len();
                let answer = async {
                    let mut c = Client::connect(std::slice::from_ref(addr), &self.client_tls).await?;
                    c.execute("SELECT 1", &[]).await?;
                    match c.servers().len() {
                        n if n < expected => {
                            Err(drsdb_common::Error::unavailable(format!("it lists {n} of {expected} index servers")))
                        }
                        _ => Ok(()),
                    }
                };
                if let Err(e) = answer.await {
                    last = Some(format!("{addr}: {e}"));
                    break;
                }
            }
            let Some(last) = last else { return Ok(()) };
            if Instant::now() >= until {
                anyhow::bail!(
                    "the cluster did not become ready within {deadline:?} ({last}); see {}",
                    self.dir.join(LOGS_DIR).display()
                );
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn stop_all(mut children: Vec<(String, Child)>) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    for (_, child) in &children {
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        // A paused server would not act on SIGTERM before the deadline.
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
    }
    let deadline = Instant::now() + STOP_GRACE;
    for (name, child) in &mut children {
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    eprintln!("{name} did not stop in time; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(READY_POLL / 4),
            }
        }
    }
}

fn toml_string<T: Serialize>(value: &T) -> anyhow::Result<String> {
    Ok(format!("# Written by drsdb's local cluster; rewritten on every start.\n{}", toml::to_string(value)?))
}

/// Runs the server a hidden `serve-storage`/`serve-index` subcommand names,
/// from its config file, until SIGTERM or SIGINT. With `listen_fd` it
/// serves on the socket its parent bound and passed on that descriptor;
/// otherwise it binds the configured address.
pub fn serve(subcommand: &str, config_path: &Path, listen_fd: Option<i32>) -> anyhow::Result<()> {
    use drsdb_common::logging::run_server;
    let listener = |configured: std::net::SocketAddr| -> anyhow::Result<std::net::TcpListener> {
        match listen_fd {
            // SAFETY: the parent passed a listening socket on this
            // descriptor and nothing else in this process owns it.
            Some(fd) => Ok(unsafe { <std::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(fd) }),
            None => Ok(drsdb_common::logging::listen(configured)?),
        }
    };
    match subcommand {
        SERVE_STORAGE => {
            let c: StorageConfig = config::load(config_path)?;
            let (log, socket) = (c.log.clone(), listener(c.listen)?);
            run_server(&log, socket, |listener, shutdown| drsdb_storage::serve(c, listener, shutdown))?;
        }
        SERVE_INDEX => {
            let c: IndexConfig = config::load(config_path)?;
            let (log, socket) = (c.log.clone(), listener(c.listen)?);
            run_server(&log, socket, |listener, shutdown| drsdb_index::serve(c, listener, shutdown))?;
        }
        other => anyhow::bail!("unknown server kind {other}"),
    }
    Ok(())
}

/// The hidden server subcommands as they appear in `argv`
/// (`serve-storage --config FILE --listen-fd N`), for binaries that host
/// local clusters. `None` when `argv` is something else.
pub fn serve_from_args(argv: &[String]) -> Option<anyhow::Result<()>> {
    let [_, kind, flag, config, rest @ ..] = argv else { return None };
    if (kind != SERVE_STORAGE && kind != SERVE_INDEX) || flag != "--config" {
        return None;
    }
    let fd = match rest {
        [] => None,
        [f, n] if f == "--listen-fd" => match n.parse() {
            Ok(n) => Some(n),
            Err(_) => return Some(Err(anyhow::anyhow!("--listen-fd takes a number"))),
        },
        _ => return Some(Err(anyhow::anyhow!("usage: {kind} --config FILE [--listen-fd N]"))),
    };
    Some(serve(kind, config.as_ref(), fd))
}
