//! Wiring: connect to the storage tier, announce this server in the meta
//! group, serve the `Sql` service until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use drsdb_common::config::IndexConfig;
use drsdb_common::connections;
use drsdb_common::sql;
use drsdb_common::tier::StorageTier;
use drsdb_common::tls::{self, Dialer};
use drsdb_common::{Error, Result};
use drsdb_proto as pb;
use tokio::net::TcpListener;
use tonic::transport::Server;

use crate::executor::Executor;
use crate::grpc_tier::GrpcTier;
use crate::meta;
use crate::service::SqlService;

/// Largest request a client may send: a statement and its parameters
/// (room for two values of the largest size next to the longest text).
pub const MAX_REQUEST: usize = sql::MAX_STATEMENT_BYTES + 2 * sql::MAX_VALUE_BYTES;
/// A client connection is pinged this often, and dropped when a ping goes
/// unanswered this long: a client gone without closing its connection (a
/// cut network, a machine that died) loses its transaction's hold then.
const CLIENT_KEEPALIVE: Duration = Duration::from_secs(5);

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Keeps the meta schema present, this server announced and the catalog
/// fresh.
async fn maintain(executor: Arc<Executor>, advertise: String, interval: Duration) {
    let mut schema_ready = false;
    loop {
        if !schema_ready {
            match executor.prepare().await {
                Ok(()) => schema_ready = true,
                Err(e) => tracing::debug!("meta not ready: {e}"),
            }
        }
        if schema_ready {
            if let Err(e) = meta::announce(executor.tier.as_ref(), &advertise, now_ms()).await {
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
        executor.tier.refresh_leaders().await;
        tokio::time::sleep(interval).await;
    }
}

/// Finishes prepared transactions whose coordinator went quiet.
async fn resolve_in_doubt(executor: Arc<Executor>) {
    loop {
        tokio::time::sleep(RESOLVE_PERIOD).await;
        executor.resolve_in_doubt().await;
    }
}

/// How often this server looks for in-doubt transactions.
const RESOLVE_PERIOD: Duration = Duration::from_secs(1);

/// Runs an index server on `listener` until `shutdown` completes.
pub async fn serve(config: IndexConfig, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<()> {
    config.validate()?;
    if !drsdb_sqlite::start() {
        tracing::error!("SQLite was in use before this server started: statement_memory_mb is not enforced here");
    }
    let addr = listener.local_addr().map_err(Error::from)?;
    let advertise = config.advertise.clone().unwrap_or_else(|| addr.to_string());
    let tier = Arc::new(GrpcTier::new(Dialer::new(&config.tls)?, config.storage_seeds.clone()));
    if tier.status().await.iter().all(|s| s.status.is_err()) {
        tracing::warn!("storage tier not reachable yet (storage_seeds: {:?})", config.storage_seeds);
    }
    let executor = Arc::new(Executor::new(tier, &config, advertise.clone())?);
    let interval = Duration::from_millis(config.announce_interval_ms);
    let maintenance = tokio::spawn(maintain(executor.clone(), advertise, interval));
    let leaders = tokio::spawn(follow_leaders(executor.clone(), interval));
    let resolver = tokio::spawn(resolve_in_doubt(executor.clone()));
    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(CLIENT_KEEPALIVE))
        .http2_keepalive_timeout(Some(CLIENT_KEEPALIVE));
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
    resolver.abort();
    tracing::info!(%addr, "index server stopped");
    served.map_err(|e| Error::io(format!("gRPC server: {e}")))
}
