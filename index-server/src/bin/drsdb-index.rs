//! `drsdb-index`: runs one index server.

use clap::Parser;
use drsdb_common::config::{IndexConfig, ServerFlags};

/// A drsdb index server: the stateless SQL layer clients connect to.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    server: ServerFlags,
    /// Address clients should use (default: the listen address).
    #[arg(long)]
    advertise: Option<String>,
    /// Storage servers to contact first, comma-separated HOST:PORT.
    #[arg(long, value_delimiter = ',')]
    storage: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut c: IndexConfig = args.server.load()?;
    args.server.apply(&mut c.listen, &mut c.log, &mut c.tls, &mut c.ticket_key);
    if args.advertise.is_some() {
        c.advertise = args.advertise;
    }
    if !args.storage.is_empty() {
        c.storage_seeds = args.storage;
    }
    c.validate()?;
    let listener = drsdb_common::logging::listen(c.listen)?;
    let log = c.log.clone();
    drsdb_common::logging::run_server(&log, listener, |listener, shutdown| drsdb_index::serve(c, listener, shutdown))?;
    Ok(())
}
