//! Raft messages between storage servers over gRPC.
//!
//! One channel per peer address, shared by every group (each message
//! carries its group id). Messages are those of `proto/raft.proto`,
//! converted from and to openraft's types by `codec`. A snapshot travels
//! as a stream: a header (vote and metadata), then slices of the SQLite
//! file.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use drsdb_common::tls::Dialer;
use drsdb_common::GroupId;
use drsdb_proto as pb;
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::{BasicNode, RaftNetworkV2};
use prost::Message;
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

/// Channels to peer storage servers, by address, and the last failure
/// of each group's messages to each of them.
pub struct Peers {
    dialer: Dialer,
    channels: Mutex<HashMap<String, Channel>>,
    /// (group, address) → why its last message there failed; cleared by
    /// the next message that gets through.
    failures: Mutex<HashMap<(GroupId, String), String>>,
}

impl Peers {
    /// A pool that dials with `dialer`.
    pub fn new(dialer: Dialer) -> Arc<Peers> {
        Arc::new(Peers { dialer, channels: Mutex::new(HashMap::new()), failures: Mutex::new(HashMap::new()) })
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

    /// The (lazily connecting) channel to `addr`.
    pub fn channel(&self, addr: &str) -> Result<Channel, drsdb_common::Error> {
        let mut channels = self.channels.lock().expect("peers lock");
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let c = self.dialer.lazy(addr)?;
        channels.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    fn client(&self, addr: &str) -> Result<pb::raft_client::RaftClient<Channel>, RPCError<TypeConfig>> {
        let channel = self.channel(addr).map_err(|e| RPCError::Unreachable(Unreachable::from_string(e)))?;
        Ok(pb::raft_client::RaftClient::new(channel)
            .max_decoding_message_size(MAX_RAFT_MESSAGE)
            .max_encoding_message_size(MAX_RAFT_MESSAGE))
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

/// openraft's deadline for a message, stretched by its size.
fn deadline(option: &RPCOption, bytes: usize) -> std::time::Duration {
    option.hard_ttl() + std::time::Duration::from_secs_f64(bytes as f64 / MIN_TRANSFER_BYTES_PER_SEC)
}

/// `rpc` as its message, cut to a prefix of its entries that fits
/// `APPEND_BYTES` (at least one entry); the last entry sent when cut.
fn encode_append(group: GroupId, rpc: AppendEntriesRequest<TypeConfig>) -> (pb::AppendEntriesRequest, Option<LogId>) {
    let mut msg = codec::append_request_to_pb(group.0, rpc);
    let mut cut = None;
    while msg.encoded_len() > APPEND_BYTES && msg.entries.len() > 1 {
        msg.entries.truncate(msg.entries.len() / 2);
        cut = msg.entries.last().and_then(|e| e.log_id).map(codec::log_id_from_pb);
    }
    (msg, cut)
}

impl PeerClient {
    /// Sends one unary message with `timeout`, recording how it went.
    async fn unary<Req, Resp, Fut>(
        &mut self,
        message: Req,
        timeout: std::time::Duration,
        send: impl FnOnce(pb::raft_client::RaftClient<Channel>, tonic::Request<Req>) -> Fut,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let client = self.peers.client(&self.addr)?;
        let mut request = tonic::Request::new(message);
        request.set_timeout(timeout);
        let reply = send(client, request).await;
        let outcome = reply.as_ref().map(|_| ()).map_err(|e| format!("{}: {}", e.code(), e.message()));
        if let Err(why) = &outcome {
            tracing::debug!(group = %self.group, peer = %self.addr, ?timeout, "raft message failed: {why}");
        }
        self.peers.record(self.group, &self.addr, outcome);
        Ok(reply.map_err(status_error)?.into_inner())
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        // Off the async threads: a message of large entries takes a while.
        let group = self.group;
        let (message, cut) = tokio::task::spawn_blocking(move || encode_append(group, rpc))
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let timeout = deadline(&option, message.encoded_len());
        let reply = self.unary(message, timeout, |mut c, r| async move { c.append_entries(r).await }).await?;
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
        let reply = self.unary(message, timeout, |mut c, r| async move { c.vote(r).await }).await?;
        remote(codec::vote_response_from_pb(reply))
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
        let mut client = self.peers.client(&self.addr)?;
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
