//! `drsdb-index`: runs one index server.

use std::path::PathBuf;

use clap::Parser;
use drsdb_common::config::{self, IndexConfig};

/// A drsdb index server: the stateless SQL layer clients connect to.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// TOML config file (see deploy/index.toml); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Address clients should use (default: the listen address).
    #[arg(long)]
    advertise: Option<String>,
    /// Storage servers to contact first, comma-separated HOST:PORT.
    #[arg(long, value_delimiter = ',')]
    storage: Vec<String>,
    /// Log filter (e.g. info, debug).
    #[arg(long)]
    log: Option<String>,
    /// Directory holding ca.pem, node.pem and node.key.
    #[arg(long)]
    certs: Option<PathBuf>,
    /// Plaintext instead of TLS (logs a warning; never in production).
    #[arg(long)]
    insecure: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut c: IndexConfig = match &args.config {
        Some(path) => config::load(path)?,
        None => IndexConfig::default(),
    };
    if let Some(v) = args.listen {
        c.listen = v;
    }
    if args.advertise.is_some() {
        c.advertise = args.advertise;
    }
    if !args.storage.is_empty() {
        c.storage_seeds = args.storage;
    }
    if let Some(v) = args.log {
        c.log = v;
    }
    c.tls.apply_flags(args.certs.as_deref(), args.insecure);
    c.validate()?;
    let listener = drsdb_common::logging::listen(c.listen)?;
    let log = c.log.clone();
    drsdb_common::logging::run_server(&log, listener, |listener, shutdown| drsdb_index::serve(c, listener, shutdown))?;
    Ok(())
}
