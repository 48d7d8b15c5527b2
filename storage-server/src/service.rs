//! The gRPC services of a storage server. They check who calls, then
//! translate and route: find the group, decode, call it, encode.
//!
//! Who may call: every call but `ReadFragment` is for servers only (index
//! servers and peers, recognized by their server certificates). Clients
//! reach a storage server only through `ReadFragment`, with a ticket an
//! index server signed (`drsdb_common::ticket`).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use drsdb_common::config::Member;
use drsdb_common::error::catch_panic;
use drsdb_common::stream::part;
use drsdb_common::ticket::TicketKey;
use drsdb_common::{shard, tls};
use drsdb_common::{Error, GroupId, NodeId};
use drsdb_proto as pb;
use openraft::async_runtime::WatchReceiver;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use drsdb_common::command::{Command, Statement};
use drsdb_sqlite::{Failure, Limits};

use crate::codec;
use crate::group::Group;
use crate::network::{Peers, INLINE_CONVERSION_BYTES};
use crate::state_machine::{committed_count, SnapshotData};
use crate::types::TypeConfig;
use openraft::raft::AppendEntriesResponse;
use prost::Message;

/// Rows per streamed batch from a storage server.
pub const ROWS_PER_PART: usize = 256;
/// Result parts buffered ahead of a slow reader.
const PARTS_AHEAD: usize = 4;

/// What every service of this server shares.
pub struct Node {
    /// This server's id.
    pub id: NodeId,
    /// The groups hosted here.
    pub groups: HashMap<GroupId, Arc<Group>>,
    /// The bootstrap member list (id, address).
    pub members: Vec<Member>,
    /// The cluster's number of data shards.
    pub shards: usize,
    /// Where incoming snapshots are buffered.
    pub scratch_dir: std::path::PathBuf,
    /// Checks the tickets of clients' direct reads; `None` (no key file):
    /// clients' reads are refused.
    pub tickets: Option<TicketKey>,
    /// Whether this server runs TLS (without it no peer is authenticated,
    /// so every call is open).
    pub tls: bool,
    /// A read running longer than this is stopped.
    pub statement_timeout: std::time::Duration,
    /// Reads running now.
    pub running_reads: Arc<AtomicUsize>,
    /// Connections to the other storage servers, with the last failures.
    pub peers: Arc<Peers>,
}

/// Counts a running read until dropped.
struct Running(Arc<AtomicUsize>);

impl Running {
    fn start(count: &Arc<AtomicUsize>) -> Running {
        count.fetch_add(1, Ordering::Relaxed);
        Running(count.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Node {
    pub(crate) fn group(&self, id: u64) -> Result<&Arc<Group>, Status> {
        self.groups
            .get(&GroupId(id))
            .ok_or_else(|| Status::from(Error::invalid(format!("group {id} is not hosted on node {}", self.id))))
    }

    /// On the leader of `group`, each follower's replicated index and the
    /// last failure sending to it.
    fn replication(&self, group: &Group, metrics: &openraft::RaftMetrics<crate::types::TypeConfig>) -> String {
        let Some(followers) = &metrics.replication else { return String::new() };
        let shown: Vec<String> = followers
            .iter()
            .filter(|(node, _)| **node != self.id.0)
            .map(|(node, matched)| {
                let index = matched.as_ref().map_or(0, |l| l.index);
                let addr = self.members.iter().find(|m| m.id == *node).map(|m| m.addr.as_str());
                match addr.and_then(|a| self.peers.failure(group.id, a)) {
                    Some(why) => format!("{node}:{index} ({why})"),
                    None => format!("{node}:{index}"),
                }
            })
            .collect();
        shown.join(", ")
    }

    /// The Raft status of every group hosted here.
    pub(crate) fn status(&self) -> pb::StatusResponse {
        let mut groups: Vec<pb::GroupStatus> = self
            .groups
            .values()
            .map(|g| {
                let m = g.raft.metrics().borrow_watched().clone();
                pb::GroupStatus {
                    group: g.id.0,
                    node: self.id.0,
                    leader: m.current_leader.unwrap_or(0),
                    term: m.current_term,
                    last_log_index: m.last_log_index.unwrap_or(0),
                    applied_index: m.last_applied.as_ref().map_or(0, |l| l.index),
                    role: format!("{:?}", m.state),
                    voters: m.membership_config.membership().voter_ids().collect(),
                    snapshot_index: m.snapshot.as_ref().map_or(0, |l| l.index),
                    size_bytes: g.size_bytes(),
                    replication: self.replication(g, &m),
                    holder: g.holder().map(|h| pb::HolderStatus {
                        txn: h.txn.0,
                        age_ms: h.started.elapsed().as_millis() as u64,
                        idle_ms: h.last_activity.elapsed().as_millis() as u64,
                        anchor: h.prepared.map(|g| g.0),
                    }),
                }
            })
            .collect();
        groups.sort_by_key(|g| g.group);
        let nodes = self.members.iter().map(|m| pb::NodeAddr { id: m.id, addr: m.addr.clone() }).collect();
        pb::StatusResponse {
            node: self.id.0,
            groups,
            nodes,
            shards: self.shards as u32,
            running_reads: self.running_reads.load(Ordering::Relaxed) as u32,
        }
    }

    /// Refuses a call from a client (only servers may make it).
    fn servers_only<T>(&self, request: &Request<T>) -> Result<(), Status> {
        tls::require_server_peer(request, self.tls)
    }

    /// The cluster's ticket key, which direct reads need.
    fn ticket_key(&self) -> Result<&TicketKey, Status> {
        self.tickets.as_ref().ok_or_else(|| {
            Status::from(Error::invalid(
                "this storage server has no ticket key, so it serves no direct reads; ask an index server to relay \
                 the rows (or give every server the cluster's ticket.key)",
            ))
        })
    }

    /// Runs a read on `group` after its read barrier (leader only),
    /// streaming its result parts. With `snapshot`, the parts start with
    /// the commit count of the read's snapshot (for a read over several
    /// shards, whose snapshots are checked to be one cut); a read whose
    /// answer stands alone skips it.
    pub(crate) async fn read(&self, group: u64, statement: Statement, snapshot: bool) -> Result<PartStream, Status> {
        tracing::debug!(group, sql = %statement.sql, "read");
        let group = self.group(group)?.clone();
        group.read_barrier().await?;
        let db = group.reader()?;
        // A read whose answer stands alone is tried here first: a point
        // read takes less than handing it to another thread would.
        if let Some(_slot) = (!snapshot).then(ShortSlot::take).flatten() {
            let _running = Running::start(&self.running_reads);
            if let Some(parts) = read_short(&db, &statement) {
                return Ok(Box::pin(tokio_stream::iter(parts)));
            }
        }
        let (tx, rx) = tokio::sync::mpsc::channel(PARTS_AHEAD);
        // When the reader goes away (the client cancelled), stop the query
        // even if it is busy producing no rows. The watcher lets go of its
        // sender once the query ends, so that the stream can end.
        let cancel = Arc::new(AtomicBool::new(false));
        let cancel_on_close = cancel.clone();
        let gone = tx.clone();
        let (finished, query_done) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            tokio::select! {
                _ = gone.closed() => cancel_on_close.store(true, Ordering::Relaxed),
                _ = query_done => {}
            }
        });
        let running = Running::start(&self.running_reads);
        let deadline = Some(std::time::Instant::now() + self.statement_timeout);
        let limits = Limits { cancel: Some(cancel), deadline, short: false };
        let group_id = group.id;
        tokio::task::spawn_blocking(move || {
            let _finished = finished;
            let _running = running;
            // A panic (a bug) ends this read with an error, not the process.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                // One SQLite snapshot for the count and the query: a read
                // over several shards checks the counts form a consistent cut.
                if snapshot {
                    let commits = db
                        .internal(|c| {
                            c.execute_batch("BEGIN")?;
                            committed_count(c)
                        })
                        .map_err(|e| Failure::Environment(std::io::Error::other(e.to_string())))?;
                    let snapshot = pb::Snapshot { group: group_id.0, commits };
                    let _ = tx.blocking_send(Ok(part(pb::result_part::Part::Snapshot(snapshot))));
                }
                db.run_parts(&statement, limits, ROWS_PER_PART, |p| tx.blocking_send(Ok(p)).is_ok())
            }));
            // Ends the read transaction (also after a panic: the connection
            // goes back to the pool).
            if !db.is_autocommit() {
                let _ = db.internal(|c| c.execute_batch("ROLLBACK"));
            }
            let _ = tx.blocking_send(last_part(result));
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}

/// Short reads running on this process's async threads now.
static SHORT_READS: AtomicUsize = AtomicUsize::new(0);

/// The right to run a short read on an async thread. A short read is
/// bounded in SQLite steps, but one step can take long (a LIKE over a huge
/// text): so one of the runtime's threads (when it has several) stays free
/// for Raft and other requests, whatever reads arrive; the others go to
/// the blocking pool meanwhile.
struct ShortSlot;

impl ShortSlot {
    /// A slot, unless as many short reads run as may.
    fn take() -> Option<ShortSlot> {
        let most = tokio::runtime::Handle::current().metrics().num_workers().saturating_sub(1).max(1);
        SHORT_READS.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < most).then_some(n + 1)).ok()?;
        Some(ShortSlot)
    }
}

impl Drop for ShortSlot {
    fn drop(&mut self) {
        SHORT_READS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Result parts a short read may make: its columns and one batch of rows.
const SHORT_READ_PARTS: usize = 2;

/// The whole answer of `statement` when it is short: a few thousand
/// SQLite steps at most (`Limits::short`) and [`SHORT_READ_PARTS`] parts.
/// `None` when it is not (nothing was sent: it runs again on the blocking
/// pool). Run on an async thread, so briefly.
fn read_short(db: &drsdb_sqlite::Db, statement: &Statement) -> Option<Vec<Result<pb::ResultPart, Status>>> {
    let parts = std::cell::RefCell::new(Vec::with_capacity(SHORT_READ_PARTS + 1));
    let long = std::cell::Cell::new(false);
    let limits = Limits { short: true, ..Limits::default() };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        db.run_parts(statement, limits, ROWS_PER_PART, |p| {
            let mut parts = parts.borrow_mut();
            long.set(long.get() || parts.len() >= SHORT_READ_PARTS);
            parts.push(Ok(p));
            !long.get()
        })
    }));
    if long.get() || (matches!(result, Ok(Err(Failure::Statement(_)))) && db.yielded()) {
        return None;
    }
    let mut parts = parts.into_inner();
    parts.push(last_part(result));
    Some(parts)
}

/// The last part of a read that ran (`result`, or the panic it hit): its
/// `Done`, or its error.
fn last_part(
    result: std::thread::Result<Result<drsdb_common::command::StatementResult, Failure>>,
) -> Result<pb::ResultPart, Status> {
    match result {
        Err(_) => Err(Status::from(Error::Internal(
            "the storage server hit a bug while running this read and abandoned it; please report this with the \
             statement"
                .into(),
        ))),
        Ok(Ok(r)) => Ok(part(pb::result_part::Part::Done(pb::Done {
            rows_affected: r.rows_affected,
            last_insert_rowid: r.last_insert_rowid,
            ..Default::default()
        }))),
        Ok(Err(Failure::Statement(e))) => Err(Status::from(e)),
        Ok(Err(Failure::Environment(e))) => Err(Status::from(Error::io(e))),
    }
}

/// A read's stream of result parts.
pub(crate) type PartStream = Pin<Box<dyn Stream<Item = Result<pb::ResultPart, Status>> + Send + 'static>>;

/// The `Storage` service (index server → storage server; clients call
/// `ReadFragment` only).
pub struct StorageService(pub Arc<Node>);

#[tonic::async_trait]
impl pb::storage_server::Storage for StorageService {
    async fn write(&self, request: Request<pb::WriteRequest>) -> Result<Response<pb::WriteResponse>, Status> {
        self.0.servers_only(&request)?;
        let req = request.into_inner();
        let group = self.0.group(req.group)?;
        let command = req.command.ok_or_else(|| Error::invalid("malformed write: the command is missing"))?;
        let result = catch_panic(group.write(Command::try_from(command)?)).await?;
        Ok(Response::new(pb::WriteResponse { result: Some(result.into()) }))
    }

    type ReadStream = PartStream;

    async fn read(&self, request: Request<pb::ReadRequest>) -> Result<Response<PartStream>, Status> {
        self.0.servers_only(&request)?;
        let (group, statement, alone) = read_of(request.into_inner())?;
        Ok(Response::new(self.0.read(group, statement, !alone).await?))
    }

    async fn commits(&self, request: Request<pb::CommitsRequest>) -> Result<Response<pb::CommitsState>, Status> {
        self.0.servers_only(&request)?;
        let group = self.0.group(request.into_inner().group)?.clone();
        let (commits, prepared) = group.commits().await?;
        Ok(Response::new(pb::CommitsState { commits, prepared }))
    }

    type ReadFragmentStream = PartStream;

    async fn read_fragment(&self, request: Request<pb::Ticket>) -> Result<Response<PartStream>, Status> {
        let read = self.0.ticket_key()?.open(request.get_ref(), chrono::Utc::now().timestamp_millis())?;
        let (group, statement, alone) = read_of(read)?;
        Ok(Response::new(self.0.read(group, statement, !alone).await?))
    }

    type ReadRoutedStream = PartStream;

    async fn read_routed(&self, request: Request<pb::RoutedRead>) -> Result<Response<PartStream>, Status> {
        let tickets = self.0.ticket_key()?;
        let pb::RoutedRead { ticket, params } = request.into_inner();
        let ticket = ticket.ok_or_else(|| Error::invalid("malformed routed read: the ticket is missing"))?;
        let (statement, route) = tickets.open_route(&ticket, chrono::Utc::now().timestamp_millis())?;
        let mut statement = Statement::from(statement);
        statement.params = params.into_iter().map(Into::into).collect();
        let shard = route.shard(&statement.params).ok_or_else(|| {
            Error::invalid(
                "the statement's key parameters do not name a shard without SQLite; send it to an index server",
            )
        })?;
        // A read runs on one replica, so its clock and seed are this
        // server's own (the ticket's statement may be minutes old).
        statement.now_ms = chrono::Utc::now().timestamp_millis();
        statement.seed = rand::random();
        Ok(Response::new(self.0.read(shard::shard_group(shard).0, statement, false).await?))
    }

    async fn status(&self, request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        self.0.servers_only(&request)?;
        Ok(Response::new(self.0.status()))
    }
}

/// The `Raft` service (storage server ↔ storage server).
pub struct RaftService(pub Arc<Node>);

/// Runs `decode` on the blocking pool (a message of large entries takes a
/// while to decode, which must not hold up heartbeats).
async fn off_thread<T: Send + 'static>(decode: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(decode).await.map_err(|e| Status::internal(format!("decoding a raft message: {e}")))
}

impl RaftService {
    /// One AppendEntries message of a batch, handed to its group's Raft; a
    /// message this server cannot take is refused on its own.
    async fn append_one(&self, message: pb::AppendEntriesRequest) -> pb::AppendEntriesResponse {
        let refused = |why: String| codec::append_response_to_pb(Err::<AppendEntriesResponse<TypeConfig>, _>(why));
        let group = match self.0.group(message.group) {
            Ok(g) => g.clone(),
            Err(status) => return refused(status.message().to_string()),
        };
        // Large entries are converted off the async threads.
        let rpc = if message.encoded_len() <= INLINE_CONVERSION_BYTES {
            Ok(codec::append_request_from_pb(message))
        } else {
            off_thread(move || codec::append_request_from_pb(message)).await
        };
        match rpc {
            Ok(Ok(rpc)) => codec::append_response_to_pb(group.raft.append_entries(rpc).await),
            Ok(Err(malformed)) => refused(format!("malformed AppendEntries message: {malformed}")),
            Err(status) => refused(status.message().to_string()),
        }
    }
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        request: Request<pb::AppendEntriesBatch>,
    ) -> Result<Response<pb::AppendEntriesReplies>, Status> {
        self.0.servers_only(&request)?;
        let messages = request.into_inner().messages;
        let replies = futures::future::join_all(messages.into_iter().map(|m| self.append_one(m))).await;
        Ok(Response::new(pb::AppendEntriesReplies { replies }))
    }

    async fn vote(&self, request: Request<pb::VoteRequest>) -> Result<Response<pb::VoteResponse>, Status> {
        self.0.servers_only(&request)?;
        let msg = request.into_inner();
        let group = self.0.group(msg.group)?;
        let r = group.raft.vote(codec::vote_request_from_pb(msg)?).await;
        Ok(Response::new(codec::vote_response_to_pb(r)))
    }

    async fn snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        self.0.servers_only(&request)?;
        let mut chunks = request.into_inner();
        let first = chunks.message().await?.ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let group = self.0.group(first.group)?.clone();
        let header = first.header.ok_or_else(|| Status::invalid_argument("the snapshot header is missing"))?;
        let vote = codec::vote_from_pb(header.vote)?;
        let meta = codec::snapshot_meta_from_pb(header.meta)?;
        // Receive into an anonymous temporary file; the state machine copies it.
        let scratch = anonymous_file(&self.0.scratch_dir)
            .map_err(|e| Status::internal(format!("cannot buffer snapshot: {e}")))?;
        let mut file = tokio::fs::File::from_std(scratch);
        use tokio::io::AsyncWriteExt;
        file.write_all(&first.data).await?;
        while let Some(chunk) = chunks.message().await? {
            if chunk.group != first.group {
                return Err(Status::invalid_argument("snapshot chunks of different groups"));
            }
            file.write_all(&chunk.data).await?;
        }
        file.flush().await?;
        let file: SnapshotData = file.into_std().await;
        let snapshot = openraft::storage::Snapshot { meta, snapshot: file };
        let r = group.raft.install_full_snapshot(vote, snapshot).await;
        Ok(Response::new(codec::snapshot_response_to_pb(r)))
    }
}

/// An unnamed file in `dir` (its name is removed at once; the space is
/// freed when the handle closes).
fn anonymous_file(dir: &std::path::Path) -> std::io::Result<std::fs::File> {
    let path = dir.join(format!("incoming-{}", ulid::Ulid::generate()));
    let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(f)
}

/// The group and statement of a read request.
fn read_of(req: pb::ReadRequest) -> Result<(u64, Statement, bool), Status> {
    let statement = req.statement.ok_or_else(|| Error::invalid("malformed read: the statement is missing"))?;
    Ok((req.group, statement.into(), req.alone))
}
