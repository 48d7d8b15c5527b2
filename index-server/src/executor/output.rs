//! What the executor sends the client: result parts (columns, row
//! batches, `Done`) on the client's stream, batched by rows and bytes.

use drsdb_common::command::StatementResult;
use drsdb_common::stream::{part, rows_part};
use drsdb_common::value::Batch;
use drsdb_common::{Error, Result, Value};
use drsdb_proto as pb;
use tokio::sync::mpsc;
use tonic::Status;

use super::{Executor, Txn};

/// Where a statement's result parts go (the client's stream).
pub type PartSender = mpsc::Sender<std::result::Result<pb::ResultPart, Status>>;

/// A `Done` part, naming the transaction the client is in afterwards and
/// the shards it holds.
pub fn done(rows_affected: u64, last_insert_rowid: i64, txn: Option<&Txn>) -> pb::ResultPart {
    part(pb::result_part::Part::Done(pb::Done {
        rows_affected,
        last_insert_rowid,
        txn_id: txn.map(|t| t.id.0.clone()).unwrap_or_default(),
        txn_groups: txn.map(|t| t.held().into_iter().map(|g| g.0).collect()).unwrap_or_default(),
    }))
}

/// Sends one part to the client; fails once the client has gone.
pub(super) async fn send(out: &PartSender, p: pb::ResultPart) -> Result<()> {
    out.send(Ok(p)).await.map_err(|_| Error::unavailable("client went away"))
}

/// Sends a complete result: columns, rows in batches, then `Done`.
pub async fn send_rows(
    out: &PartSender,
    columns: Vec<pb::Column>,
    rows: Vec<Vec<Value>>,
    rows_per_batch: usize,
    done_part: pb::ResultPart,
) -> Result<()> {
    let mut batcher = Batcher::new(out, columns, rows_per_batch);
    for row in rows {
        batcher.push(row).await?;
    }
    batcher.finish(done_part).await
}

/// Sends rows to the client in batches: columns first, `Done` last.
pub(super) struct Batcher<'a> {
    out: &'a PartSender,
    columns: Option<Vec<pb::Column>>,
    batch: Batch,
}

impl<'a> Batcher<'a> {
    /// A batcher sending `columns` first (none for a result without columns).
    pub(super) fn new(out: &'a PartSender, columns: Vec<pb::Column>, rows_per_batch: usize) -> Batcher<'a> {
        Batcher { out, columns: (!columns.is_empty()).then_some(columns), batch: Batch::new(rows_per_batch) }
    }

    async fn send_columns(&mut self) -> Result<()> {
        if let Some(columns) = self.columns.take() {
            send(self.out, part(pb::result_part::Part::Columns(pb::Columns { columns }))).await?;
        }
        Ok(())
    }

    pub(super) async fn push(&mut self, row: Vec<Value>) -> Result<()> {
        if let Some(rows) = self.batch.push(row) {
            self.send_columns().await?;
            send(self.out, rows_part(rows)).await?;
        }
        Ok(())
    }

    pub(super) async fn finish(mut self, done_part: pb::ResultPart) -> Result<()> {
        self.send_columns().await?;
        let rest = self.batch.take();
        if !rest.is_empty() {
            send(self.out, rows_part(rest)).await?;
        }
        send(self.out, done_part).await
    }
}

impl Executor {
    pub(super) async fn send_result(&self, out: &PartSender, r: StatementResult, txn: Option<&Txn>) -> Result<()> {
        let columns = r.columns.into_iter().map(Into::into).collect();
        send_rows(out, columns, r.rows, self.rows_per_batch, done(r.rows_affected, r.last_insert_rowid, txn)).await
    }
}
