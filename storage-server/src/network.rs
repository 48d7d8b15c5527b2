//! Raft messages between storage servers over gRPC.
//!
//! One channel per peer address, shared by every group (each message
//! carries its group id). Messages are those of `proto/raft.proto`,
//! converted from and to openraft's types by `codec`. A snapshot travels
//! as a stream: a header (vote and metadata), then slices of the SQLite
//! file.
//!
//! ## One AppendEntries call per peer for all groups
//! Every group replicates on its own, so a server leading several groups
//! would send each peer one small message per group and entry. Instead,
//! AppendEntries messages to a peer go through its outbox: one call is in
//! flight per peer ([`CALLS_IN_FLIGHT_PER_PEER`]), and the messages
//! queued meanwhile, of any group, leave together in the next call
//! (`AppendEntriesBatch`), so a busy server sends fewer, larger messages.
//! A message larger than [`GATHERED_BYTES`] goes in a call of its own, so
//! that heartbeats never wait behind a large transfer. Each message keeps
//! its own deadline: one stuck behind a call to a peer that stopped
//! answering fails when its deadline passes, like any unanswered message.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drsdb_common::tls::{Channels, Dialer};
use drsdb_common::GroupId;
use drsdb_proto as pb;
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::{BasicNode, RaftNetworkV2};
use prost::Message;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tonic::transport::Channel;

use crate::codec::{self, Malformed};
use crate::state_machine::SnapshotData;
use crate::types::{LogId, TypeConfig, Vote};

/// Largest gRPC message between storage servers (a batch of log entries).
pub const MAX_RAFT_MESSAGE: usize = 256 << 20;
/// An AppendEntries message over this size carries only a prefix of its
/// entries (at least one); the follower acknowledges that prefix and the
/// rest follows in the next messages. (One entry holds at most a batch of
/// statements of `MAX_BATCH_BYTES`, which stays under `MAX_RAFT_MESSAGE`.)
const APPEND_BYTES: usize = 32 << 20;
/// The slowest transfer a message is given time for, on top of openraft's
/// deadline (which is sized for heartbeats): a message of large entries
/// gets a deadline that grows with its size instead of timing out on
/// every attempt.
const MIN_TRANSFER_BYTES_PER_SEC: f64 = (2 << 20) as f64;
/// Size of one snapshot chunk.
pub const SNAPSHOT_CHUNK: usize = 1 << 20;
/// Calls carrying gathered AppendEntries messages in flight to one peer;
/// messages queue behind them and leave together in the next.
const CALLS_IN_FLIGHT_PER_PEER: usize = 1;
/// Most bytes of messages gathered into one call; a larger message goes
/// in a call of its own.
const GATHERED_BYTES: usize = 1 << 20;
/// Entries up to this many bytes in all are converted to and from their
/// messages on the async threads; larger ones on the blocking pool.
pub const INLINE_CONVERSION_BYTES: usize = 256 << 10;

/// An AppendEntries message waiting in a peer's outbox.
struct Outgoing {
    message: pb::AppendEntriesRequest,
    bytes: usize,
    /// How long the sender waits for the reply.
    timeout: Duration,
    reply: oneshot::Sender<Result<pb::AppendEntriesResponse, tonic::Status>>,
}

/// Channels to peer storage servers, by address, and the last failure
/// of each group's messages to each of them.
pub struct Peers {
    channels: Channels,
    /// Each peer's outbox of AppendEntries messages (see the module's
    /// essay); its sending task ends when this is dropped.
    outboxes: Mutex<HashMap<String, mpsc::UnboundedSender<Outgoing>>>,
    /// (group, address) → why its last message there failed; cleared by
    /// the next message that gets through.
    failures: Mutex<HashMap<(GroupId, String), String>>,
}

impl Peers {
    /// A pool that dials with `dialer`.
    pub fn new(dialer: Dialer) -> Arc<Peers> {
        Arc::new(Peers {
            channels: Channels::new(dialer),
            outboxes: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// Why the last message of `group` to `addr` failed, if it did.
    pub fn failure(&self, group: GroupId, addr: &str) -> Option<String> {
        self.failures.lock().expect("failures lock").get(&(group, addr.to_string())).cloned()
    }

    fn record(&self, group: GroupId, addr: &str, outcome: Result<(), String>) {
        let mut failures = self.failures.lock().expect("failures lock");
        match outcome {
            Ok(()) => failures.remove(&(group, addr.to_string())),
            Err(why) => failures.insert((group, addr.to_string()), why),
        };
    }

    fn client(&self, addr: &str) -> Result<pb::raft_client::RaftClient<Channel>, drsdb_common::Error> {
        Ok(pb::raft_client::RaftClient::new(self.channels.get(addr)?)
            .max_decoding_message_size(MAX_RAFT_MESSAGE)
            .max_encoding_message_size(MAX_RAFT_MESSAGE))
    }

    /// Sends `message` (`bytes` long) to `addr` through its outbox and
    /// waits up to `timeout` for the reply.
    async fn append(
        &self,
        addr: &str,
        message: pb::AppendEntriesRequest,
        bytes: usize,
        timeout: Duration,
    ) -> Result<pb::AppendEntriesResponse, tonic::Status> {
        let (reply, answer) = oneshot::channel();
        let outgoing = Outgoing { message, bytes, timeout, reply };
        self.outbox(addr)?.send(outgoing).map_err(|_| tonic::Status::cancelled("the server is shutting down"))?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(tonic::Status::cancelled("the server is shutting down")),
            Err(_) => Err(tonic::Status::deadline_exceeded(format!("no reply from {addr} within {timeout:?}"))),
        }
    }

    /// The outbox of `addr`, started on first use.
    fn outbox(&self, addr: &str) -> Result<mpsc::UnboundedSender<Outgoing>, drsdb_common::Error> {
        let mut outboxes = self.outboxes.lock().expect("outboxes lock");
        if let Some(o) = outboxes.get(addr) {
            return Ok(o.clone());
        }
        let (outbox, queue) = mpsc::unbounded_channel();
        tokio::spawn(deliver(self.client(addr)?, queue));
        outboxes.insert(addr.to_string(), outbox.clone());
        Ok(outbox)
    }
}

/// Sends the messages of one peer's outbox: those queued while a call is
/// in flight leave together in the next (see the module's essay).
async fn deliver(client: pb::raft_client::RaftClient<Channel>, mut queue: mpsc::UnboundedReceiver<Outgoing>) {
    let calls = Arc::new(Semaphore::new(CALLS_IN_FLIGHT_PER_PEER));
    let mut held_over = None;
    loop {
        let first = match held_over.take() {
            Some(o) => o,
            None => match queue.recv().await {
                Some(o) => o,
                None => return,
            },
        };
        if first.bytes > GATHERED_BYTES {
            tokio::spawn(call(client.clone(), vec![first], None));
            continue;
        }
        let Ok(permit) = calls.clone().acquire_owned().await else { return };
        let mut bytes = first.bytes;
        let mut gathered = vec![first];
        while let Ok(next) = queue.try_recv() {
            if bytes + next.bytes > GATHERED_BYTES {
                held_over = Some(next);
                break;
            }
            bytes += next.bytes;
            gathered.push(next);
        }
        tokio::spawn(call(client.clone(), gathered, Some(permit)));
    }
}

/// One call carrying `messages` (those whose sender still waits), each
/// answered from the reply; `permit` is given back when it ends.
async fn call(
    mut client: pb::raft_client::RaftClient<Channel>,
    messages: Vec<Outgoing>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    let (messages, replies): (Vec<_>, Vec<_>) =
        messages.into_iter().filter(|o| !o.reply.is_closed()).map(|o| ((o.message, o.timeout), o.reply)).unzip();
    let Some(timeout) = messages.iter().map(|(_, t)| *t).max() else { return };
    let mut request =
        tonic::Request::new(pb::AppendEntriesBatch { messages: messages.into_iter().map(|(m, _)| m).collect() });
    request.set_timeout(timeout);
    let answers = match client.append_entries(request).await {
        Ok(r) if r.get_ref().replies.len() == replies.len() => r.into_inner().replies.into_iter().map(Ok).collect(),
        Ok(r) => {
            let why =
                format!("malformed raft reply: {} answers to {} messages", r.get_ref().replies.len(), replies.len());
            vec![Err(tonic::Status::internal(why)); replies.len()]
        }
        Err(status) => vec![Err(expired_as_deadline(status)); replies.len()],
    };
    drop(permit);
    for (reply, answer) in replies.into_iter().zip(answers) {
        let _ = reply.send(answer);
    }
}

/// openraft's network factory for one group.
#[derive(Clone)]
pub struct Network {
    group: GroupId,
    peers: Arc<Peers>,
}

impl Network {
    /// The network of `group`, over the shared `peers`.
    pub fn new(group: GroupId, peers: Arc<Peers>) -> Network {
        Network { group, peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, _target: u64, node: &BasicNode) -> PeerClient {
        PeerClient { group: self.group, addr: node.addr.clone(), peers: self.peers.clone() }
    }
}

/// Sends one group's messages to one peer.
pub struct PeerClient {
    group: GroupId,
    addr: String,
    peers: Arc<Peers>,
}

fn status_error(s: tonic::Status) -> RPCError<TypeConfig> {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded => {
            RPCError::Unreachable(Unreachable::from_string(s.message()))
        }
        _ => RPCError::Network(NetworkError::from_string(format!("{}: {}", s.code(), s.message()))),
    }
}

/// A peer's answer: what its Raft said, or why it refused.
fn remote<T>(answer: Result<Result<T, String>, Malformed>) -> Result<T, RPCError<TypeConfig>> {
    let answer =
        answer.map_err(|e| RPCError::Network(NetworkError::from_string(format!("malformed raft reply: {e}"))))?;
    answer.map_err(|why| RPCError::Unreachable(Unreachable::from_string(format!("peer failed: {why}"))))
}

/// `status`, except that the transport's own timer running out (which
/// tonic reports as `Cancelled`) is the `DeadlineExceeded` it is: the call
/// and its senders' timers expire at the same instant, and which one fires
/// first must not change the answer.
fn expired_as_deadline(status: tonic::Status) -> tonic::Status {
    if status.code() == tonic::Code::Cancelled && status.message() == tonic::TimeoutExpired(()).to_string() {
        return tonic::Status::deadline_exceeded(status.message());
    }
    status
}

/// openraft's deadline for a message, stretched by its size.
fn deadline(option: &RPCOption, bytes: usize) -> std::time::Duration {
    option.hard_ttl() + std::time::Duration::from_secs_f64(bytes as f64 / MIN_TRANSFER_BYTES_PER_SEC)
}

/// `rpc` as its message, cut to a prefix of its entries that fits
/// `APPEND_BYTES` (at least one entry); the last entry sent when cut, and
/// the message's encoded length.
fn encode_append(
    group: GroupId,
    rpc: AppendEntriesRequest<TypeConfig>,
) -> (pb::AppendEntriesRequest, Option<LogId>, usize) {
    let mut msg = codec::append_request_to_pb(group.0, rpc);
    let mut cut = None;
    let mut bytes = msg.encoded_len();
    while bytes > APPEND_BYTES && msg.entries.len() > 1 {
        msg.entries.truncate(msg.entries.len() / 2);
        cut = msg.entries.last().and_then(|e| e.log_id).map(codec::log_id_from_pb);
        bytes = msg.encoded_len();
    }
    (msg, cut, bytes)
}

impl PeerClient {
    /// Records how a message sent with `timeout` went, and gives its reply.
    fn record<Resp>(
        &self,
        reply: Result<Resp, tonic::Status>,
        timeout: Duration,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let outcome = reply.as_ref().map(|_| ()).map_err(|e| format!("{}: {}", e.code(), e.message()));
        if let Err(why) = &outcome {
            tracing::debug!(group = %self.group, peer = %self.addr, ?timeout, "raft message failed: {why}");
        }
        self.peers.record(self.group, &self.addr, outcome);
        reply.map_err(status_error)
    }
}

/// Roughly how many bytes `entries` take in a message.
fn entries_bytes(entries: &[crate::types::Entry]) -> usize {
    entries
        .iter()
        .map(|e| match &e.payload {
            openraft::EntryPayload::Normal(c) => c.approximate_size(),
            _ => 0,
        })
        .sum()
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        // Large entries are converted off the async threads.
        let group = self.group;
        let (message, cut, bytes) = if entries_bytes(&rpc.entries) <= INLINE_CONVERSION_BYTES {
            encode_append(group, rpc)
        } else {
            tokio::task::spawn_blocking(move || encode_append(group, rpc))
                .await
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?
        };
        let timeout = deadline(&option, bytes);
        let reply = self.peers.append(&self.addr, message, bytes, timeout).await;
        let reply = self.record(reply, timeout)?;
        match (remote(codec::append_response_from_pb(reply))?, cut) {
            (AppendEntriesResponse::Success, Some(last)) => Ok(AppendEntriesResponse::PartialSuccess(Some(last))),
            (response, _) => Ok(response),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let message = codec::vote_request_to_pb(self.group.0, &rpc);
        let timeout = deadline(&option, message.encoded_len());
        let mut client =
            self.peers.client(&self.addr).map_err(|e| RPCError::Unreachable(Unreachable::from_string(e)))?;
        let mut request = tonic::Request::new(message);
        request.set_timeout(timeout);
        let reply = client.vote(request).await.map(tonic::Response::into_inner);
        remote(codec::vote_response_from_pb(self.record(reply, timeout)?))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let header = pb::SnapshotHeader {
            vote: Some(codec::vote_to_pb(&vote)),
            meta: Some(codec::snapshot_meta_to_pb(&snapshot.meta)),
        };
        let group = self.group.0;
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::SnapshotChunk>(4);
        let mut file = snapshot.snapshot;
        // Read the file on the blocking pool, chunk by chunk.
        let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::{Read, Seek};
            file.rewind()?;
            if tx.blocking_send(pb::SnapshotChunk { group, header: Some(header), data: Vec::new() }).is_err() {
                return Ok(());
            }
            loop {
                let mut buf = vec![0u8; SNAPSHOT_CHUNK];
                let n = file.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                buf.truncate(n);
                if tx.blocking_send(pb::SnapshotChunk { group, header: None, data: buf }).is_err() {
                    return Ok(());
                }
            }
        });
        let mut client =
            self.peers.client(&self.addr).map_err(|e| StreamingError::Unreachable(Unreachable::from_string(e)))?;
        let send = client.snapshot(tokio_stream::wrappers::ReceiverStream::new(rx));
        tokio::pin!(cancel);
        let reply = tokio::select! {
            closed = &mut cancel => return Err(StreamingError::Closed(closed)),
            r = send => r,
        };
        match reader.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(StreamingError::Network(NetworkError::new(&e))),
            Err(e) => return Err(StreamingError::Network(NetworkError::new(&e))),
        }
        let reply = reply.map_err(status_error)?.into_inner();
        let r = codec::snapshot_response_from_pb(reply)
            .map_err(|e| StreamingError::Network(NetworkError::from_string(format!("malformed reply: {e}"))))?;
        r.map_err(|why| StreamingError::Unreachable(Unreachable::from_string(format!("peer failed: {why}"))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drsdb_common::config::TlsConfig;
    use tokio::sync::Notify;
    use tonic::{Request, Response, Status, Streaming};

    /// A peer that records the calls it gets and answers each message with
    /// its group id; the first call is held until `release`.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<Vec<u64>>>,
        arrived: Notify,
        release: Notify,
    }

    /// The recorder as a served peer.
    struct Peer(Arc<Recorder>);

    #[tonic::async_trait]
    impl pb::raft_server::Raft for Peer {
        async fn append_entries(
            &self,
            request: Request<pb::AppendEntriesBatch>,
        ) -> Result<Response<pb::AppendEntriesReplies>, Status> {
            let groups: Vec<u64> = request.into_inner().messages.iter().map(|m| m.group).collect();
            let first = {
                let mut calls = self.0.calls.lock().unwrap();
                calls.push(groups.clone());
                calls.len() == 1
            };
            if first {
                self.0.arrived.notify_one();
                self.0.release.notified().await;
            }
            let replies = groups
                .iter()
                .map(|g| codec::append_response_to_pb(Err::<AppendEntriesResponse<TypeConfig>, _>(g.to_string())))
                .collect();
            Ok(Response::new(pb::AppendEntriesReplies { replies }))
        }

        async fn vote(&self, _: Request<pb::VoteRequest>) -> Result<Response<pb::VoteResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn snapshot(
            &self,
            _: Request<Streaming<pb::SnapshotChunk>>,
        ) -> Result<Response<pb::SnapshotResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
    }

    fn peers() -> Arc<Peers> {
        Peers::new(Dialer::new(&TlsConfig { insecure: true, ..Default::default() }).unwrap())
    }

    fn message(group: u64) -> pb::AppendEntriesRequest {
        pb::AppendEntriesRequest { group, ..Default::default() }
    }

    /// The group id the recorder answered with.
    fn answered(reply: Result<pb::AppendEntriesResponse, Status>) -> String {
        match reply.unwrap().result {
            Some(pb::append_entries_response::Result::Refused(g)) => g,
            other => panic!("{other:?}"),
        }
    }

    const LONG: Duration = Duration::from_secs(30);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_queued_behind_a_call_leave_together_and_each_gets_its_reply() {
        let recorder = Arc::new(Recorder::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tonic::transport::Server::builder()
            .add_service(pb::raft_server::RaftServer::new(Peer(recorder.clone())))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        let server = tokio::spawn(server);
        let peers = peers();

        let first = tokio::spawn({
            let (peers, addr) = (peers.clone(), addr.clone());
            async move { peers.append(&addr, message(1), 0, LONG).await }
        });
        tokio::time::timeout(LONG, recorder.arrived.notified()).await.expect("the first call arrives");
        // Queued (polled once) while the first call is in flight.
        let mut queued: Vec<_> = (2..=4).map(|g| Box::pin(peers.append(&addr, message(g), 0, LONG))).collect();
        for q in &mut queued {
            assert!(futures::poll!(q.as_mut()).is_pending());
        }
        recorder.release.notify_one();
        assert_eq!(answered(first.await.unwrap()), "1");
        for (g, q) in (2..=4).zip(queued) {
            assert_eq!(answered(q.await), g.to_string());
        }
        assert_eq!(*recorder.calls.lock().unwrap(), vec![vec![1], vec![2, 3, 4]]);
        server.abort();
    }

    #[test]
    fn the_transports_timer_running_out_is_a_deadline_not_a_cancellation() {
        // As tonic turns its own timeout into a status.
        let expired = tonic::Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(expired.code(), tonic::Code::Cancelled, "tonic's mapping changed");
        assert_eq!(expired_as_deadline(expired).code(), tonic::Code::DeadlineExceeded);
        let cancelled = tonic::Status::cancelled("the peer went away");
        assert_eq!(expired_as_deadline(cancelled).code(), tonic::Code::Cancelled);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_behind_an_unanswered_call_fails_by_its_own_deadline() {
        // Accepts connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let peers = peers();
        let stuck = tokio::spawn({
            let (peers, addr) = (peers.clone(), addr.clone());
            async move { peers.append(&addr, message(1), 0, LONG).await }
        });
        let behind = peers.append(&addr, message(2), 0, Duration::from_millis(200));
        let behind = tokio::time::timeout(LONG / 2, behind).await.expect("not held by the call in flight");
        assert_eq!(behind.unwrap_err().code(), tonic::Code::DeadlineExceeded);
        stuck.abort();
        silent.abort();
    }
}
