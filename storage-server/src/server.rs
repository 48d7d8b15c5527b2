//! Wiring: open the groups this server holds replicas of, bootstrap the
//! ones it is the preferred leader of, serve gRPC until shutdown, and hand
//! leadership back to preferred leaders after failovers.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use drsdb_common::config::StorageConfig;
use drsdb_common::connections;
use drsdb_common::shard::{self, Placement};
use drsdb_common::ticket::TicketKey;
use drsdb_common::tls::{self, Dialer};
use drsdb_common::{Error, NodeId, Result};
use drsdb_proto as pb;
use tokio::net::TcpListener;
use tonic::transport::Server;

use crate::codec;
use crate::group::Group;
use crate::log_store::{LogEngine, LOG_FILE};
use crate::network::{Peers, MAX_RAFT_MESSAGE};
use crate::service::{Node, RaftService, StorageService};

/// How often leaders check whether a group's preferred leader is back.
const HAND_OVER_PERIOD: Duration = Duration::from_secs(5);
/// The data directory is its owner's only.
const DATA_DIR_MODE: u32 = 0o700;
/// The file in the data directory that records the shard count the cluster
/// was created with.
const SHARDS_FILE: &str = "shards";

/// Records the shard count on first start; afterwards refuses a config
/// that asks for another (the count is fixed when the cluster is created).
fn check_shard_count(data_dir: &Path, shards: usize) -> Result<()> {
    let path = data_dir.join(SHARDS_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => match text.trim().parse::<usize>() {
            Ok(n) if n == shards => Ok(()),
            Ok(n) => Err(Error::invalid(format!(
                "this cluster was created with {n} shards but the config asks for {shards}; \
                 the shard count is fixed when a cluster is created (set shards = {n})"
            ))),
            Err(_) => Err(Error::Corrupt(format!("{} does not hold a shard count", path.display()))),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::write(&path, format!("{shards}\n"))
            .map_err(|e| Error::io(format!("cannot write {}: {e}", path.display()))),
        Err(e) => Err(Error::io(format!("cannot read {}: {e}", path.display()))),
    }
}

/// The file in the data directory that records the format of what the
/// server wrote there (`codec::FORMAT_VERSION`).
const FORMAT_FILE: &str = "format";

/// Records the format on first start; afterwards refuses a data directory
/// written in another format, before anything in it is read. A directory
/// that holds groups but no format file was written by format 1 (JSON),
/// which had none.
fn check_format(data_dir: &Path, groups_dir: &Path) -> Result<()> {
    let path = data_dir.join(FORMAT_FILE);
    let found = match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse::<u32>()
            .map_err(|_| Error::Corrupt(format!("{} does not hold a format number", path.display())))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let has_groups = std::fs::read_dir(groups_dir).is_ok_and(|mut d| d.next().is_some());
            if !has_groups {
                return std::fs::write(&path, format!("{}\n", codec::FORMAT_VERSION))
                    .map_err(|e| Error::io(format!("cannot write {}: {e}", path.display())));
            }
            1
        }
        Err(e) => return Err(Error::io(format!("cannot read {}: {e}", path.display()))),
    };
    codec::check_format(found, &format!("the data directory {}", data_dir.display())).map_err(|m| Error::invalid(m.0))
}

/// Every `HAND_OVER_PERIOD`, each group this server leads goes back to
/// its preferred leader if that one is up to date.
async fn hand_over_leaders(preferred: Vec<(Arc<Group>, NodeId)>) {
    loop {
        tokio::time::sleep(HAND_OVER_PERIOD).await;
        for (group, leader) in &preferred {
            group.hand_over(*leader).await;
        }
    }
}

/// Runs a storage server on `listener` until `shutdown` completes, then
/// stops its groups cleanly.
pub async fn serve(config: StorageConfig, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<()> {
    config.validate()?;
    if !drsdb_sqlite::start() {
        tracing::error!("SQLite was in use before this server started: statement memory budgets are not enforced here");
    }
    let opened = open(&config).await?;
    run(opened, &config, listener, shutdown).await
}

/// A storage server's groups, open (and initialized where this server is
/// their preferred leader), before it serves.
pub(crate) struct Opened {
    /// What the services share.
    pub node: Arc<Node>,
    /// Each group hosted here with its preferred leader.
    preferred: Vec<(Arc<Group>, NodeId)>,
}

/// Opens the data directory and the groups placed on this server.
pub(crate) async fn open(config: &StorageConfig) -> Result<Opened> {
    let groups_dir = config.data_dir.join("groups");
    let scratch_dir = config.data_dir.join("scratch");
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| Error::io(format!("cannot create {}: {e}", config.data_dir.display())))?;
    check_format(&config.data_dir, &groups_dir)?;
    for dir in [&groups_dir, &scratch_dir] {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("cannot create {}: {e}", dir.display())))?;
    }
    // Private, also when an older version made it readable to all.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(DATA_DIR_MODE))
        .map_err(|e| Error::io(format!("cannot restrict {}: {e}", config.data_dir.display())))?;
    let shards = config.shard_count();
    check_shard_count(&config.data_dir, shards)?;
    let tickets = if config.ticket_key.exists() {
        Some(TicketKey::load(&config.ticket_key)?)
    } else {
        tracing::warn!(
            "no ticket key at {}: clients' direct reads will be refused (index servers must relay); make one with \
             `drsdb certs`",
            config.ticket_key.display()
        );
        None
    };
    let addrs: BTreeMap<NodeId, String> = config.members.iter().map(|m| (NodeId(m.id), m.addr.clone())).collect();
    let mine: Vec<Placement> = shard::placement(&addrs.keys().copied().collect::<Vec<_>>(), shards)
        .into_iter()
        .filter(|p| p.replicas.contains(&config.node()))
        .collect();
    let peers = Peers::new(Dialer::new(&config.tls)?);
    let log = LogEngine::open(&config.data_dir.join(LOG_FILE)).map_err(|e| {
        Error::io(format!("cannot open the Raft log {}: {e}", config.data_dir.join(LOG_FILE).display()))
    })?;
    let mut groups = HashMap::new();
    let mut preferred = Vec::new();
    for p in &mine {
        let group = Group::open(p.group, &groups_dir.join(p.group.0.to_string()), &log, config, peers.clone()).await?;
        // A group's preferred leader initializes it, once; starting the
        // first election there spreads the first leaders evenly.
        if p.replicas[0] == config.node() {
            let members: BTreeMap<u64, String> = p.replicas.iter().map(|r| (r.0, addrs[r].clone())).collect();
            group.bootstrap(&members).await?;
        }
        preferred.push((group.clone(), p.replicas[0]));
        groups.insert(p.group, group);
    }
    let node = Arc::new(Node {
        id: config.node(),
        groups,
        members: config.members.clone(),
        shards,
        scratch_dir,
        tickets,
        tls: !config.tls.insecure,
        statement_timeout: config.statement_timeout(),
        running_reads: Default::default(),
        peers,
    });
    Ok(Opened { node, preferred })
}

/// Serves `opened` on `listener` until `shutdown` completes, then stops its
/// groups.
pub(crate) async fn run(
    opened: Opened,
    config: &StorageConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let Opened { node, preferred } = opened;
    let balancer = tokio::spawn(hand_over_leaders(preferred));

    let mut builder = Server::builder();
    if let Some(tls) = tls::server_config(&config.tls, config.connections.handshake_timeout())? {
        builder = builder.tls_config(tls).map_err(|e| Error::invalid(format!("TLS: {e}")))?;
    }
    let addr = listener.local_addr().map_err(Error::from)?;
    tracing::info!(node = config.node_id, %addr, "storage server listening");
    let served = builder
        .add_service(
            pb::storage_server::StorageServer::new(StorageService(node.clone()))
                .max_decoding_message_size(MAX_RAFT_MESSAGE),
        )
        .add_service(
            pb::raft_server::RaftServer::new(RaftService(node.clone()))
                .max_decoding_message_size(MAX_RAFT_MESSAGE)
                .max_encoding_message_size(MAX_RAFT_MESSAGE),
        )
        .serve_with_incoming_shutdown(connections::incoming(listener, &config.connections), shutdown)
        .await;
    balancer.abort();
    for group in node.groups.values() {
        group.shutdown().await;
    }
    tracing::info!(node = config.node_id, "storage server stopped");
    served.map_err(|e| Error::io(format!("gRPC server: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_directory_of_another_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let groups = dir.path().join("groups");
        // New: the format is recorded, and accepted next time.
        check_format(dir.path(), &groups).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join(FORMAT_FILE)).unwrap().trim(),
            codec::FORMAT_VERSION.to_string()
        );
        std::fs::create_dir_all(groups.join("1")).unwrap();
        check_format(dir.path(), &groups).unwrap();
        // Groups but no format file: written by format 1 (JSON).
        std::fs::remove_file(dir.path().join(FORMAT_FILE)).unwrap();
        let e = check_format(dir.path(), &groups).unwrap_err();
        assert!(e.to_string().contains("format 1") && e.to_string().contains("rebuild"), "{e}");
        // Format 2: a Raft log per group.
        std::fs::write(dir.path().join(FORMAT_FILE), "2\n").unwrap();
        assert!(check_format(dir.path(), &groups).unwrap_err().to_string().contains("format 2"));
    }
}
