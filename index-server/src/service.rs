//! The `Sql` gRPC service: translate a request, hand it to the executor,
//! stream what it produces.

use std::pin::Pin;
use std::sync::Arc;

use drsdb_proto as pb;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::executor::Executor;

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
        let (tx, rx) = tokio::sync::mpsc::channel(PARTS_AHEAD);
        let executor = self.0.clone();
        tokio::spawn(async move {
            if let Err(e) = executor.execute(req, &tx).await {
                let _ = tx.send(Err(Status::from(e))).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
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
