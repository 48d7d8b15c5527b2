//! The `Sql` gRPC service: translate a request, hand it to the executor,
//! stream what it produces.

use std::pin::Pin;
use std::sync::Arc;

use drsdb_common::sql::{self, Kind};
use drsdb_proto as pb;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::executor::Executor;
use crate::metrics::Metrics;

/// Result parts buffered ahead of a slow client.
const PARTS_AHEAD: usize = 8;

/// The client-facing service.
pub struct SqlService(pub Arc<Executor>);

type PartStream = Pin<Box<dyn Stream<Item = Result<pb::ResultPart, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::sql_server::Sql for SqlService {
    type ExecuteStream = PartStream;

    async fn execute(&self, request: Request<pb::ExecuteRequest>) -> Result<Response<PartStream>, Status> {
        let req = request.into_inner();
        tracing::debug!(sql = %req.sql, txn = %req.txn_id, "execute");
        Metrics::add(&self.0.metrics.statements, 1);
        let counted = sql::classify(&req.sql).is_ok_and(|k| k != Kind::Show);
        let (tx, rx) = tokio::sync::mpsc::channel(PARTS_AHEAD);
        let executor = self.0.clone();
        let metrics = self.0.clone();
        tokio::spawn(async move {
            if let Err(e) = drsdb_common::error::catch_panic(executor.execute(req, &tx)).await {
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

    async fn index_servers(
        &self,
        _request: Request<pb::IndexServersRequest>,
    ) -> Result<Response<pb::IndexServersResponse>, Status> {
        tracing::debug!("index servers");
        let addrs = crate::server::live_index_servers(&self.0.cluster).await?;
        Ok(Response::new(pb::IndexServersResponse { addrs }))
    }
}
