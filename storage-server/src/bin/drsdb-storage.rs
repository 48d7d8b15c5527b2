//! `drsdb-storage`: runs one storage server.

use std::path::PathBuf;

use clap::Parser;
use drsdb_common::config::{Member, ServerFlags, StorageConfig};

/// A drsdb storage server: replicas of Raft groups over SQLite.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    server: ServerFlags,
    /// This server's node id.
    #[arg(long)]
    node_id: Option<u64>,
    /// Data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Bootstrap members as ID=HOST:PORT, repeated or comma-separated.
    #[arg(long, value_delimiter = ',')]
    member: Vec<String>,
}

fn parse_member(s: &str) -> anyhow::Result<Member> {
    let (id, addr) = s.split_once('=').ok_or_else(|| anyhow::anyhow!("member {s:?} must look like ID=HOST:PORT"))?;
    Ok(Member { id: id.parse().map_err(|_| anyhow::anyhow!("member id {id:?} is not a number"))?, addr: addr.into() })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut c: StorageConfig = args.server.load()?;
    args.server.apply(&mut c.listen, &mut c.log, &mut c.tls, &mut c.ticket_key);
    if let Some(v) = args.node_id {
        c.node_id = v;
    }
    if let Some(v) = args.data_dir {
        c.data_dir = v;
    }
    if !args.member.is_empty() {
        c.members = args.member.iter().map(|m| parse_member(m)).collect::<anyhow::Result<_>>()?;
    }
    c.validate()?;
    let listener = drsdb_common::logging::listen(c.listen)?;
    let log = c.log.clone();
    drsdb_common::logging::run_server(&log, listener, |listener, shutdown| {
        drsdb_storage::serve(c, listener, shutdown)
    })?;
    Ok(())
}
