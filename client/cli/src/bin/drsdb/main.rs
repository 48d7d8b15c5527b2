//! `drsdb`: the shell, and the tools around it.
//!
//! - `drsdb [--data DIR | --connect ADDRS] [-e SQL | -f FILE]`: the shell.
//! - `drsdb local --data DIR`: a whole cluster on this machine.
//! - `drsdb certs --out DIR`: certificates for a cluster.
//! - `drsdb bench`: throughput and latency against a cluster and SQLite.
//! - `drsdb import FILE --table T`: a CSV file into a table, in parallel batches.
//! - `drsdb probe ADDR --certs DIR [--storage]`: whether a server answers
//!   (container healthchecks).

mod bench;
mod import;
mod local;
mod probe;
mod shell;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use drsdb_client::Client;
use drsdb_common::config::TlsConfig;
use drsdb_common::tls;

/// drsdb: a distributed SQL database with SQLite's semantics.
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    shell: ShellArgs,
}

/// Where the cluster is and how to authenticate.
#[derive(Args, Clone, Debug)]
pub struct ConnectArgs {
    /// Directory of a `drsdb local` cluster: addresses and certificates are
    /// read from it.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Index servers, comma-separated HOST:PORT (instead of --data).
    #[arg(long, value_delimiter = ',')]
    connect: Vec<String>,
    /// Directory with ca.pem, client.pem and client.key (with --connect).
    #[arg(long)]
    certs: Option<PathBuf>,
    /// CA certificate (overrides --certs).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Client certificate (overrides --certs).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Client key (overrides --certs).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Plaintext instead of TLS (only for clusters started with --insecure).
    #[arg(long)]
    insecure: bool,
    /// Have the index servers relay every row, instead of reading large
    /// results from the storage servers directly (for clients that cannot
    /// reach the storage servers).
    #[arg(long)]
    relay: bool,
}

#[derive(Args)]
struct ShellArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Run these statements and exit (non-zero on the first error).
    #[arg(short = 'e', long = "execute")]
    execute: Option<String>,
    /// Run the statements in this file and exit (non-zero on the first error).
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Output: `table` (aligned, with headers) or `list` (values separated by |).
    #[arg(long, default_value = "table")]
    mode: shell::Mode,
}

#[derive(Subcommand)]
enum Command {
    /// Start (or restart) a local cluster: 3 storage servers and 2 index
    /// servers as separate processes, then open the shell.
    Local(local::LocalArgs),
    /// Create a CA, the node and client certificates and the ticket key a
    /// cluster needs.
    Certs {
        /// Output directory.
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// Extra host names or IP addresses for the node certificate.
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
    /// Measure throughput and latency, against the cluster and plain SQLite.
    Bench(bench::BenchArgs),
    /// Load a CSV file into an existing table: rows grouped by shard, sent
    /// in parallel batches that each commit on their own.
    Import(import::ImportArgs),
    /// Exit 0 when a server answers (for container healthchecks).
    Probe(probe::ProbeArgs),
    /// Run a storage server (used by `drsdb local`).
    #[command(hide = true)]
    ServeStorage {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        listen_fd: Option<i32>,
    },
    /// Run an index server (used by `drsdb local`).
    #[command(hide = true)]
    ServeIndex {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        listen_fd: Option<i32>,
    },
}

impl ConnectArgs {
    /// The index servers and TLS settings these options name.
    pub fn resolve(&self) -> anyhow::Result<(Vec<String>, TlsConfig)> {
        let mut tls = match (&self.data, &self.certs) {
            (_, Some(dir)) => tls::client_config_in(dir),
            (Some(data), None) => tls::client_config_in(&data.join(drsdb_cli::local::CERTS_DIR)),
            (None, None) => tls::client_config_in(PathBuf::from("certs").as_path()),
        };
        if let Some(p) = &self.ca {
            tls.ca = p.clone();
        }
        if let Some(p) = &self.cert {
            tls.cert = p.clone();
        }
        if let Some(p) = &self.key {
            tls.key = p.clone();
        }
        tls.insecure = self.insecure;
        let servers = if !self.connect.is_empty() {
            self.connect.clone()
        } else if let Some(data) = &self.data {
            drsdb_cli::local::Layout::read(data)?.index
        } else {
            anyhow::bail!("say where the cluster is: --data DIR (a `drsdb local` directory) or --connect HOST:PORT");
        };
        Ok((servers, tls))
    }

    /// Connects a client.
    pub async fn client(&self) -> anyhow::Result<Client> {
        let (servers, tls) = self.resolve()?;
        let mut client = Client::connect(&servers, &tls).await?;
        client.set_direct(!self.relay);
        Ok(client)
    }
}

fn main() -> ExitCode {
    drsdb_common::logging::private_files();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Local(args)) => local::run(args),
        Some(Command::Certs { out, hosts }) => tls::generate(&out, &hosts)
            .map(|()| {
                println!(
                    "certificates written to {}; give clients ca.pem, client.pem and client.key only (ticket.key \
                     and node.key are for servers)",
                    out.display()
                )
            })
            .map_err(Into::into),
        Some(Command::Bench(args)) => bench::run(args),
        Some(Command::Import(args)) => import::run(args),
        Some(Command::Probe(args)) => probe::run(args),
        Some(Command::ServeStorage { config, listen_fd }) => {
            drsdb_cli::local::serve(drsdb_cli::local::SERVE_STORAGE, &config, listen_fd)
        }
        Some(Command::ServeIndex { config, listen_fd }) => {
            drsdb_cli::local::serve(drsdb_cli::local::SERVE_INDEX, &config, listen_fd)
        }
        None => shell::run(&cli.shell.connect, cli.shell.execute, cli.shell.file, cli.shell.mode),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
