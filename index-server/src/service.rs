//! The `Sql` gRPC service: translate a request, hand it to the executor,
//! stream what it produces.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use drsdb_common::error::catch_panic;
use drsdb_common::Error;

use drsdb_common::sql::{self, Kind};
use drsdb_proto as pb;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::catalog::Table;
use crate::executor::{Executor, Txn};
use crate::metrics::Metrics;

/// Result parts buffered ahead of a slow client.
const PARTS_AHEAD: usize = 8;

/// The client-facing service.
pub struct SqlService {
    /// Runs the statements.
    pub executor: Arc<Executor>,
    /// A statement still at work after this long is stopped.
    pub statement_timeout: Duration,
}

type PartStream = Pin<Box<dyn Stream<Item = Result<pb::ResultPart, Status>> + Send + 'static>>;

/// The error of a statement stopped by the statement timeout.
fn timed_out(kind: Option<Kind>, after: Duration) -> Error {
    match kind {
        Some(Kind::Read | Kind::Show) => Error::invalid(format!(
            "statement stopped: it ran longer than statement_timeout_ms ({after:?}); narrow it, or raise the timeout"
        )),
        _ => Error::unavailable(format!(
            "the statement did not finish within statement_timeout_ms ({after:?}); its outcome is unknown (it may \
             have been applied, on some shards only): check before running it again"
        )),
    }
}

/// Most snapshots one `CheckSnapshots` call may name (one per fragment of
/// a read).
const MAX_SNAPSHOTS: usize = 4096;

#[tonic::async_trait]
impl pb::sql_server::Sql for SqlService {
    type ExecuteStream = PartStream;

    async fn execute(&self, request: Request<pb::ExecuteRequest>) -> Result<Response<PartStream>, Status> {
        let req = request.into_inner();
        tracing::debug!(sql = %req.sql, txn = %req.txn_id, "execute");
        Metrics::add(&self.executor.metrics.statements, 1);
        let kind = sql::classify(&req.sql).ok();
        let counted = kind.is_some_and(|k| k != Kind::Show);
        let (tx, rx) = tokio::sync::mpsc::channel(PARTS_AHEAD);
        let executor = self.executor.clone();
        let metrics = self.executor.clone();
        let timeout = self.statement_timeout;
        tokio::spawn(async move {
            let work = tokio::time::timeout(timeout, catch_panic(executor.execute(req, &tx)));
            let outcome = tokio::select! {
                done = work => done.unwrap_or_else(|_| Err(timed_out(kind, timeout))),
                // A read whose client went away stops here: dropping it
                // cancels its reads on the storage servers.
                _ = tx.closed(), if kind == Some(Kind::Read) => return,
            };
            if let Err(e) = outcome {
                let _ = tx.send(Err(Status::from(e))).await;
            }
        });
        // Every row a client gets from this server passes here.
        let parts = ReceiverStream::new(rx).map(move |p| {
            if let (true, Ok(pb::ResultPart { part: Some(pb::result_part::Part::Rows(r)) })) = (counted, &p) {
                Metrics::add(&metrics.metrics.rows_sent, r.rows.len() as u64);
            }
            p
        });
        Ok(Response::new(Box::pin(parts)))
    }

    async fn check_snapshots(&self, request: Request<pb::Snapshots>) -> Result<Response<pb::SnapshotsChecked>, Status> {
        let snapshots = request.into_inner().snapshots;
        if snapshots.len() > MAX_SNAPSHOTS {
            return Err(Error::invalid(format!("at most {MAX_SNAPSHOTS} snapshots can be checked at once")).into());
        }
        let consistent = catch_panic(self.executor.consistent(&snapshots)).await?;
        Ok(Response::new(pb::SnapshotsChecked { consistent }))
    }

    async fn hold(
        &self,
        request: Request<tonic::Streaming<pb::HoldRequest>>,
    ) -> Result<Response<pb::HoldReleased>, Status> {
        let mut held = request.into_inner();
        let Some(first) = held.message().await? else { return Ok(Response::new(pb::HoldReleased {})) };
        let txn = Txn::from_client(&first.txn_id, &[], 0)?;
        tracing::debug!(txn = %txn.id, "hold");
        // Watched by a task of its own: when the connection drops, this
        // call may be dropped with it, but the task still sees its end.
        let executor = self.executor.clone();
        let watch = tokio::spawn(async move {
            loop {
                match held.message().await {
                    Ok(Some(m)) if m.release => return,
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
            tracing::debug!(txn = %txn.id, "the client went away inside a transaction: rolling it back");
            if let Err(e) = catch_panic(async {
                executor.release_abandoned(&txn).await;
                Ok(())
            })
            .await
            {
                tracing::warn!(txn = %txn.id, "rolling back an abandoned transaction failed: {e}");
            }
        });
        watch.await.map_err(|e| Status::internal(format!("hold: {e}")))?;
        Ok(Response::new(pb::HoldReleased {}))
    }

    async fn table_layout(
        &self,
        request: Request<pb::TableLayoutRequest>,
    ) -> Result<Response<pb::TableLayoutResponse>, Status> {
        let name = request.into_inner().table;
        tracing::debug!(table = %name, "table layout");
        let (table, shards) = catch_panic(self.executor.table(&name)).await?;
        Ok(Response::new(layout(&table, shards)))
    }

    async fn index_servers(
        &self,
        _request: Request<pb::IndexServersRequest>,
    ) -> Result<Response<pb::IndexServersResponse>, Status> {
        tracing::debug!("index servers");
        let addrs = self.executor.live_index_servers().await?;
        Ok(Response::new(pb::IndexServersResponse { addrs }))
    }
}

/// A table's layout as the client reads it.
fn layout(table: &Table, shards: usize) -> pb::TableLayoutResponse {
    let columns = table
        .columns
        .iter()
        .map(|c| pb::LayoutColumn {
            name: c.name.clone(),
            decl_type: c.decl_type.clone(),
            collation: c.collation.name().to_string(),
        })
        .collect();
    pb::TableLayoutResponse {
        table: table.name.clone(),
        columns,
        shards: shards as u32,
        key: table.key_columns().unwrap_or_default().iter().map(|c| *c as u32).collect(),
        reference: !table.is_sharded(),
    }
}
