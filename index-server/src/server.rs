//! Wiring: connect to the storage tier, announce this server in the meta
//! group, serve the `Sql` service until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use drsdb_common::config::IndexConfig;
use drsdb_common::connections;
use drsdb_common::sql;
use drsdb_common::ticket::TicketKey;
use drsdb_common::tls::{self, Dialer};
use drsdb_common::{Error, NodeId, Result};
use drsdb_proto as pb;
use tokio::net::TcpListener;
use tonic::transport::Server;

use crate::cluster::Cluster;
use crate::executor::{Executor, Tickets};
use crate::meta;
use crate::service::SqlService;

/// Largest request a client may send: a statement and its parameters
/// (room for two values of the largest size next to the longest text).
pub const MAX_REQUEST: usize = sql::MAX_STATEMENT_BYTES + 2 * sql::MAX_VALUE_BYTES;
/// An index server counts as alive for this many announce intervals.
const LIVENESS_INTERVALS: i64 = 3;
/// Announce interval, shared with the liveness check (set once at start).
static ANNOUNCE_MS: std::sync::OnceLock<i64> = std::sync::OnceLock::new();

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Index servers that announced themselves within the liveness window.
pub async fn live_index_servers(cluster: &Cluster) -> Result<Vec<String>> {
    let interval = *ANNOUNCE_MS.get().unwrap_or(&2_000);
    meta::live_index_servers(cluster, now_ms() - LIVENESS_INTERVALS * interval).await
}

/// Creates the meta tables and records the shard map (what the storage
/// servers were configured with), unless already done.
async fn prepare_meta(executor: &Executor) -> Result<()> {
    meta::ensure_schema(&executor.cluster).await?;
    let status = executor.cluster.refresh().await?;
    let nodes: Vec<NodeId> = status.nodes.iter().map(|n| NodeId(n.id)).collect();
    meta::ensure_shard_map(&executor.cluster, &nodes, status.shards as usize).await?;
    executor.shard_count().await?;
    Ok(())
}

/// Keeps the meta schema present, this server announced and the catalog
/// fresh.
async fn maintain(executor: Arc<Executor>, advertise: String, interval: Duration) {
    let mut schema_ready = false;
    loop {
        if !schema_ready {
            match prepare_meta(&executor).await {
                Ok(()) => schema_ready = true,
                Err(e) => tracing::debug!("meta not ready: {e}"),
            }
        }
        if schema_ready {
            if let Err(e) = meta::announce(&executor.cluster, &advertise, now_ms()).await {
                tracing::debug!("announce failed: {e}");
            }
            if let Err(e) = executor.refresh_catalog().await {
                tracing::debug!("catalog refresh failed: {e}");
            }
        }
        tokio::time::sleep(if schema_ready { interval } else { interval / 10 }).await;
    }
}

/// Keeps the leaders of all groups known: direct reads go to the leaders
/// this server names without it calling them. (Its own loop: a dead
/// storage server costs a connect timeout, which must not delay
/// announcements.)
async fn follow_leaders(executor: Arc<Executor>, interval: Duration) {
    loop {
        executor.cluster.refresh_leaders().await;
        tokio::time::sleep(interval).await;
    }
}

/// Runs an index server on `listener` until `shutdown` completes.
pub async fn serve(config: IndexConfig, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<()> {
    config.validate()?;
    if !drsdb_storage::start_sqlite() {
        tracing::error!("SQLite was in use before this server started: statement_memory_mb is not enforced here");
    }
    let _ = ANNOUNCE_MS.set(config.announce_interval_ms as i64);
    let addr = listener.local_addr().map_err(Error::from)?;
    let advertise = config.advertise.clone().unwrap_or_else(|| addr.to_string());
    let cluster = Arc::new(Cluster::new(Dialer::new(&config.tls)?, config.storage_seeds.clone()));
    if let Err(e) = cluster.refresh().await {
        tracing::warn!("storage tier not reachable yet: {e}");
    }
    let tickets = match config.direct_streaming {
        true => Some(Tickets { key: TicketKey::load(&config.ticket_key)?, ttl_ms: config.ticket_ttl_ms as i64 }),
        false => None,
    };
    let executor = Arc::new(Executor::new(
        cluster,
        config.rows_per_batch,
        config.statement_memory_mb << 20,
        tickets,
        advertise.clone(),
    ));
    let interval = Duration::from_millis(config.announce_interval_ms);
    let maintenance = tokio::spawn(maintain(executor.clone(), advertise, interval));
    let leaders = tokio::spawn(follow_leaders(executor.clone(), interval));
    let mut builder = Server::builder();
    if let Some(tls) = tls::server_config(&config.tls, config.connections.handshake_timeout())? {
        builder = builder.tls_config(tls).map_err(|e| Error::invalid(format!("TLS: {e}")))?;
    }
    tracing::info!(%addr, "index server listening");
    let served = builder
        .add_service(
            pb::sql_server::SqlServer::new(SqlService {
                executor,
                statement_timeout: Duration::from_millis(config.statement_timeout_ms),
            })
            .max_decoding_message_size(MAX_REQUEST),
        )
        .serve_with_incoming_shutdown(connections::incoming(listener, &config.connections), shutdown)
        .await;
    maintenance.abort();
    leaders.abort();
    tracing::info!(%addr, "index server stopped");
    served.map_err(|e| Error::io(format!("gRPC server: {e}")))
}
