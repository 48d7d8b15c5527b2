//! `drsdb local`: start a local cluster and open the shell.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drsdb_cli::local::{LocalCluster, Options, CERTS_DIR};

use crate::shell;

/// How long the cluster may take to answer after start.
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// How often the servers are checked for exits (and restarted).
const SUPERVISE_EVERY: Duration = Duration::from_secs(1);

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
    /// Data shards, each a Raft group of 3 replicas (first run only;
    /// default: 4 per 3 storage servers).
    #[arg(long)]
    shards: Option<usize>,
    /// Plaintext instead of TLS (first run only; warns).
    #[arg(long)]
    insecure: bool,
    /// Log filter for the servers (their logs go to DATA/logs/).
    #[arg(long, default_value = "info")]
    log: String,
}

/// Starts the cluster, then runs the shell or waits for a signal, then
/// stops every server.
pub fn run(args: LocalArgs) -> anyhow::Result<()> {
    let options = Options {
        storage_servers: args.storage_servers,
        index_servers: args.index_servers,
        insecure: args.insecure,
        shards: args.shards,
        log: args.log,
        ..Options::default()
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let mut cluster = LocalCluster::start(&std::env::current_exe()?, &args.data, &options)?;
    if cluster.layout().insecure {
        eprintln!("warning: this cluster runs without TLS (--insecure): plaintext, no authentication");
    }
    runtime.block_on(cluster.wait_ready(READY_DEADLINE))?;
    let dir = cluster.dir().display().to_string();
    let index = cluster.layout().index.join(",");
    let storage: Vec<&str> = cluster.layout().storage.iter().map(|m| m.addr.as_str()).collect();
    println!("drsdb local cluster running in {dir}");
    println!("  storage servers: {}", storage.join(", "));
    println!("  index servers:   {index}");
    println!("connect with:  drsdb --data {dir}");
    if !cluster.layout().insecure {
        println!("         or:  drsdb --connect {index} --certs {dir}/{CERTS_DIR}");
    }
    let shell_client = (!args.no_shell).then(|| runtime.block_on(cluster.client()));
    // Servers that die are restarted while the cluster runs.
    let cluster = Arc::new(Mutex::new(cluster));
    let supervisor = runtime.spawn(supervise(cluster.clone()));
    let result = match shell_client {
        None => {
            println!("running until SIGTERM or SIGINT");
            runtime.block_on(drsdb_common::logging::terminated());
            Ok(())
        }
        Some(connected) => connected
            .map_err(anyhow::Error::from)
            .and_then(|mut client| shell::interactive(&runtime, &mut client, shell::Mode::Table)),
    };
    supervisor.abort();
    println!("stopping the cluster");
    lock(&cluster).stop();
    result
}

fn lock(cluster: &Mutex<LocalCluster>) -> std::sync::MutexGuard<'_, LocalCluster> {
    cluster.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Restarts servers that exit, saying so on stderr.
async fn supervise(cluster: Arc<Mutex<LocalCluster>>) {
    let mut every = tokio::time::interval(SUPERVISE_EVERY);
    loop {
        every.tick().await;
        for line in lock(&cluster).restart_exited() {
            eprintln!("drsdb local: {line}");
        }
    }
}
