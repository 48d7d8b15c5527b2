//! `drsdb probe`: whether a server answers, for container healthchecks
//! (an image built from scratch has no shell or curl).
//!
//! An index server is asked for the live index servers; a storage server
//! for its Raft status (with the node certificate: only servers may ask),
//! and it is healthy when every group it holds knows a leader.

use std::path::PathBuf;
use std::time::Duration;

use drsdb_common::tls::{self, Dialer};
use drsdb_proto as pb;

/// How long a probe waits for an answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Options of `drsdb probe`.
#[derive(clap::Args)]
pub struct ProbeArgs {
    /// The server's address, HOST:PORT.
    addr: String,
    /// Directory holding ca.pem and the client (index) or node (storage)
    /// certificate.
    #[arg(long)]
    certs: PathBuf,
    /// Probe a storage server (default: an index server).
    #[arg(long)]
    storage: bool,
}

/// Probes the server; an error says why it is not healthy.
pub fn run(args: ProbeArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        tokio::time::timeout(PROBE_TIMEOUT, probe(&args))
            .await
            .map_err(|_| anyhow::anyhow!("{} gave no answer within {PROBE_TIMEOUT:?}", args.addr))?
    })
}

async fn probe(args: &ProbeArgs) -> anyhow::Result<()> {
    if !args.storage {
        let channel = Dialer::new(&tls::client_config_in(&args.certs))?.lazy(&args.addr)?;
        let servers = pb::sql_client::SqlClient::new(channel).index_servers(pb::IndexServersRequest {}).await?;
        anyhow::ensure!(!servers.into_inner().addrs.is_empty(), "no index server has announced itself yet");
        return Ok(());
    }
    let channel = Dialer::new(&tls::node_config_in(&args.certs))?.lazy(&args.addr)?;
    let status = pb::storage_client::StorageClient::new(channel).status(pb::StatusRequest {}).await?.into_inner();
    let leaderless: Vec<u64> = status.groups.iter().filter(|g| g.leader == 0).map(|g| g.group).collect();
    anyhow::ensure!(leaderless.is_empty(), "groups without a leader: {leaderless:?}");
    Ok(())
}
