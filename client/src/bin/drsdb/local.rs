//! `drsdb local`: a whole cluster on one machine, for trying drsdb out and
//! for scripts. Storage and index servers run as child processes of this
//! one (`drsdb serve-storage` / `serve-index`), each in its own process
//! group so that Ctrl-C in the shell reaches only the shell.
//!
//! The data directory holds everything: `cluster.json` (addresses, chosen
//! on the first run and reused after), `certs/`, one config and one data
//! directory per server, and `logs/`. Running again on the same directory
//! restarts the same cluster with its data.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use drsdb_client::Client;
use drsdb_common::config::{IndexConfig, Member, StorageConfig, TlsConfig};
use drsdb_common::tls;
use serde::{Deserialize, Serialize};

use crate::shell;

/// Certificates, inside the data directory.
pub const CERTS_DIR: &str = "certs";
const LAYOUT_FILE: &str = "cluster.json";
const LOGS_DIR: &str = "logs";
/// How long the cluster may take to answer after start.
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// Pause between readiness checks.
const READY_POLL: Duration = Duration::from_millis(200);
/// How long a server may take to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// Options of `drsdb local`.
#[derive(clap::Args)]
pub struct LocalArgs {
    /// Data directory (created if missing; reused if it holds a cluster).
    #[arg(long, default_value = "drsdb-data")]
    data: PathBuf,
    /// Run the cluster in the foreground without a shell until SIGTERM or
    /// SIGINT.
    #[arg(long)]
    no_shell: bool,
    /// Storage servers (first run only).
    #[arg(long, default_value_t = 3)]
    storage_servers: u64,
    /// Index servers (first run only).
    #[arg(long, default_value_t = 2)]
    index_servers: usize,
    /// Plaintext instead of TLS (first run only; warns).
    #[arg(long)]
    insecure: bool,
    /// Log filter for the servers (their logs go to DATA/logs/).
    #[arg(long, default_value = "info")]
    log: String,
}

/// The addresses of a local cluster, kept in its data directory.
#[derive(Serialize, Deserialize)]
pub struct Layout {
    /// Storage servers.
    pub storage: Vec<Member>,
    /// Index servers.
    pub index: Vec<String>,
    /// Whether the cluster runs without TLS.
    pub insecure: bool,
}

impl Layout {
    /// Reads the layout of the cluster in `dir`.
    pub fn read(dir: &Path) -> anyhow::Result<Layout> {
        let path = dir.join(LAYOUT_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            anyhow::anyhow!("{} is not a drsdb local directory ({e}); start one with `drsdb local --data {}`", dir.display(), dir.display())
        })?;
        Ok(serde_json::from_str(&text)?)
    }

    fn create(dir: &Path, args: &LocalArgs) -> anyhow::Result<Layout> {
        if args.storage_servers == 0 || args.index_servers == 0 {
            anyhow::bail!("a cluster needs at least one storage server and one index server");
        }
        let storage = (1..=args.storage_servers)
            .map(|id| Ok(Member { id, addr: free_address()? }))
            .collect::<anyhow::Result<_>>()?;
        let index = (0..args.index_servers).map(|_| free_address()).collect::<anyhow::Result<_>>()?;
        let layout = Layout { storage, index, insecure: args.insecure };
        std::fs::write(dir.join(LAYOUT_FILE), serde_json::to_string_pretty(&layout)?)?;
        Ok(layout)
    }
}

/// A loopback address with a port that is free now.
fn free_address() -> anyhow::Result<String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.to_string())
}

struct Server {
    name: String,
    child: Child,
}

fn spawn(exe: &Path, dir: &Path, name: &str, subcommand: &str, config: &Path) -> anyhow::Result<Server> {
    use std::os::unix::process::CommandExt;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(LOGS_DIR).join(format!("{name}.log")))?;
    let mut command = std::process::Command::new(exe);
    command
        .arg(subcommand)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    // SAFETY: only an async-signal-safe prctl between fork and exec.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).map_err(std::io::Error::from)
        });
    }
    let child = command.spawn().map_err(|e| anyhow::anyhow!("cannot start {name}: {e}"))?;
    Ok(Server { name: name.into(), child })
}

fn stop(servers: &mut [Server]) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    for s in servers.iter() {
        let _ = kill(Pid::from_raw(s.child.id() as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + STOP_GRACE;
    for s in servers.iter_mut() {
        loop {
            match s.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    eprintln!("{} did not stop in time; killing it", s.name);
                    let _ = s.child.kill();
                    let _ = s.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(READY_POLL / 4),
            }
        }
    }
}

/// Fails if a server process has exited.
fn check_alive(servers: &mut [Server], dir: &Path) -> anyhow::Result<()> {
    for s in servers.iter_mut() {
        if let Ok(Some(status)) = s.child.try_wait() {
            anyhow::bail!(
                "{} exited ({status}); see {}",
                s.name,
                dir.join(LOGS_DIR).join(format!("{}.log", s.name)).display()
            );
        }
    }
    Ok(())
}

/// Waits until every index server answers a query.
async fn wait_ready(layout: &Layout, tls: &TlsConfig, servers: &mut [Server], dir: &Path) -> anyhow::Result<Client> {
    let deadline = Instant::now() + READY_DEADLINE;
    let mut last = String::new();
    loop {
        check_alive(servers, dir)?;
        let mut ready = true;
        for addr in &layout.index {
            let answer = async {
                let mut c = Client::connect(std::slice::from_ref(addr), tls).await?;
                c.execute("SELECT 1", &[]).await
            };
            if let Err(e) = answer.await {
                last = format!("{addr}: {e}");
                ready = false;
                break;
            }
        }
        if ready {
            return Ok(Client::connect(&layout.index, tls).await?);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("the cluster did not become ready within {READY_DEADLINE:?} ({last}); see {}", dir.join(LOGS_DIR).display());
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

/// Starts the cluster, then runs the shell or waits for a signal, then
/// stops every server.
pub fn run(args: LocalArgs) -> anyhow::Result<()> {
    let dir = args.data.clone();
    std::fs::create_dir_all(dir.join(LOGS_DIR))?;
    let dir = dir.canonicalize()?;
    let layout = match Layout::read(&dir) {
        Ok(l) => l,
        Err(_) if !dir.join(LAYOUT_FILE).exists() => Layout::create(&dir, &args)?,
        Err(e) => return Err(e),
    };
    let certs = dir.join(CERTS_DIR);
    let mut node_tls = tls::node_config_in(&certs);
    let mut client_tls = tls::client_config_in(&certs);
    if layout.insecure {
        eprintln!("warning: this cluster runs without TLS (--insecure)");
        node_tls.insecure = true;
        client_tls.insecure = true;
    } else {
        tls::generate(&certs, &[])?;
    }

    let exe = std::env::current_exe()?;
    let mut servers = Vec::new();
    let started = (|| -> anyhow::Result<()> {
        for m in &layout.storage {
            let config = StorageConfig {
                node_id: m.id,
                listen: m.addr.parse()?,
                data_dir: dir.join(format!("storage-{}", m.id)),
                members: layout.storage.clone(),
                log: args.log.clone(),
                tls: node_tls.clone(),
                ..StorageConfig::default()
            };
            let path = dir.join(format!("storage-{}.toml", m.id));
            std::fs::write(&path, toml_string(&config)?)?;
            servers.push(spawn(&exe, &dir, &format!("storage-{}", m.id), "serve-storage", &path)?);
        }
        for (i, addr) in layout.index.iter().enumerate() {
            let config = IndexConfig {
                listen: addr.parse()?,
                storage_seeds: layout.storage.iter().map(|m| m.addr.clone()).collect(),
                log: args.log.clone(),
                tls: node_tls.clone(),
                ..IndexConfig::default()
            };
            let path = dir.join(format!("index-{}.toml", i + 1));
            std::fs::write(&path, toml_string(&config)?)?;
            servers.push(spawn(&exe, &dir, &format!("index-{}", i + 1), "serve-index", &path)?);
        }
        Ok(())
    })();
    let runtime = tokio::runtime::Runtime::new()?;
    let result = started.and_then(|()| {
        let mut client = runtime.block_on(wait_ready(&layout, &client_tls, &mut servers, &dir))?;
        let index: Vec<&str> = layout.index.iter().map(String::as_str).collect();
        let storage: Vec<&str> = layout.storage.iter().map(|m| m.addr.as_str()).collect();
        println!("drsdb local cluster running in {}", dir.display());
        println!("  storage servers: {}", storage.join(", "));
        println!("  index servers:   {}", index.join(", "));
        println!("connect with:  drsdb --data {}", dir.display());
        if !layout.insecure {
            println!("         or:  drsdb --connect {} --certs {}", index.join(","), certs.display());
        }
        if args.no_shell {
            println!("running until SIGTERM or SIGINT");
            runtime.block_on(drsdb_common::logging::terminated());
            Ok(())
        } else {
            shell::interactive(&runtime, &mut client, shell::Mode::Table)
        }
    });
    println!("stopping the cluster");
    stop(&mut servers);
    result
}

fn toml_string<T: Serialize>(value: &T) -> anyhow::Result<String> {
    Ok(format!("# Written by `drsdb local`; rewritten on every start.\n{}", toml::to_string(value)?))
}
