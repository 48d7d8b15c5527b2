//! Wiring: open the groups, bootstrap them, serve gRPC until shutdown.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;

use drsdb_common::config::StorageConfig;
use drsdb_common::tls::{self, Dialer};
use drsdb_common::{Error, GroupId, Result};
use drsdb_proto as pb;
use tokio::net::TcpListener;
use tonic::transport::Server;

use crate::group::Group;
use crate::network::{Peers, MAX_RAFT_MESSAGE};
use crate::service::{Node, RaftService, StorageService};

/// The groups every storage server hosts until sharding lands: the meta
/// group and the first data group, each on every member.
const GROUPS: [GroupId; 2] = [GroupId::META, GroupId::FIRST_DATA];

/// Runs a storage server on `listener` until `shutdown` completes, then
/// stops its groups cleanly.
pub async fn serve(config: StorageConfig, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<()> {
    config.validate()?;
    let groups_dir = config.data_dir.join("groups");
    let scratch_dir = config.data_dir.join("scratch");
    for dir in [&groups_dir, &scratch_dir] {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("cannot create {}: {e}", dir.display())))?;
    }
    let peers = Peers::new(Dialer::new(&config.tls)?);
    let mut groups = HashMap::new();
    for id in GROUPS {
        let group = Group::open(id, &groups_dir.join(id.0.to_string()), &config, peers.clone()).await?;
        groups.insert(id, group);
    }
    let node = Arc::new(Node { id: config.node(), groups, members: config.members.clone(), scratch_dir });

    // The lowest member id initializes the groups, once.
    let lowest = config.members.iter().map(|m| m.id).min();
    if lowest == Some(config.node_id) {
        let members: BTreeMap<u64, String> = config.members.iter().map(|m| (m.id, m.addr.clone())).collect();
        for group in node.groups.values() {
            group.bootstrap(&members).await?;
        }
    }

    let mut builder = Server::builder();
    if let Some(tls) = tls::server_config(&config.tls)? {
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
        .serve_with_incoming_shutdown(tls::incoming(listener), shutdown)
        .await;
    for group in node.groups.values() {
        group.shutdown().await;
    }
    tracing::info!(node = config.node_id, "storage server stopped");
    served.map_err(|e| Error::io(format!("gRPC server: {e}")))
}
