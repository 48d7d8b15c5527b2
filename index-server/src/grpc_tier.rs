//! The storage tier over gRPC ([`GrpcTier`], the production
//! implementation of `drsdb_common::tier::StorageTier`): which storage
//! servers exist, which one leads each group, and sending requests to
//! leaders.
//!
//! Leaders are learned from `NotLeader` replies and from `Status` calls,
//! never configured. A request that meets a follower goes to the leader it
//! names; one that meets a dead server tries the next server. When a call
//! is made again is `drsdb_common::tier::with_leader`'s rule: a write whose
//! outcome is unknown only when the storage tier deduplicates it.
//!
//! A server whose connection failed (it died, froze or was cut off: the
//! transport's keepalive notices within seconds) is *suspect* for
//! [`SUSPECT_FOR`]: requests for every group avoid it, even where it was
//! the cached leader or a follower still names it, while another replica
//! can be tried. So a frozen leader costs each caller one failed call, not
//! one per group it led, and not the length of the freeze. When every
//! storage server is suspect, requests fail at once: this index server is
//! cut off, and the client's next index server may not be.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use drsdb_common::command::{Command, CommandResult, Statement};
use drsdb_common::tier::{self, CallFailure, Parts, ServerStatus, StorageTier};
use drsdb_common::tls::{Channels, Dialer};
use drsdb_common::{shard, Error, GroupId, NodeId, Result};
use drsdb_proto as pb;
use futures::StreamExt;
use tonic::transport::Channel;

/// Largest message from a storage server.
const MAX_MESSAGE: usize = 64 << 20;
/// How long a server whose connection failed is avoided.
pub const SUSPECT_FOR: Duration = Duration::from_secs(5);

/// Storage servers and group leaders as this index server knows them.
pub struct GrpcTier {
    channels: Channels,
    seeds: Vec<String>,
    nodes: RwLock<BTreeMap<u64, String>>,
    leaders: RwLock<HashMap<GroupId, u64>>,
    /// Addresses whose connection failed, and until when they are avoided.
    suspects: RwLock<HashMap<String, Instant>>,
}

impl GrpcTier {
    /// The storage tier reached through `seeds` (storage server addresses).
    pub fn new(dialer: Dialer, seeds: Vec<String>) -> GrpcTier {
        GrpcTier {
            channels: Channels::new(dialer),
            seeds,
            nodes: RwLock::new(BTreeMap::new()),
            leaders: RwLock::new(HashMap::new()),
            suspects: RwLock::new(HashMap::new()),
        }
    }

    fn client(&self, addr: &str) -> Result<pb::storage_client::StorageClient<Channel>> {
        Ok(pb::storage_client::StorageClient::new(self.channels.get(addr)?)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }

    /// Every storage server address known (seeds first if nothing else).
    fn addresses(&self) -> Vec<(u64, String)> {
        let nodes = self.nodes.read().expect("nodes lock");
        if nodes.is_empty() {
            return self.seeds.iter().map(|s| (0, s.clone())).collect();
        }
        nodes.iter().map(|(id, a)| (*id, a.clone())).collect()
    }

    /// Asks one storage server for its status and learns the node list and
    /// the leaders it knows.
    async fn status_of(&self, addr: &str) -> Result<pb::StatusResponse> {
        let answer = self.client(addr)?.status(pb::StatusRequest {}).await;
        // The periodic status calls (`refresh_leaders`) find frozen servers
        // before requests have to.
        self.heard(addr, answer.as_ref().err());
        let status = answer?.into_inner();
        if !status.nodes.is_empty() {
            let mut nodes = self.nodes.write().expect("nodes lock");
            for n in &status.nodes {
                nodes.insert(n.id, n.addr.clone());
            }
        }
        let mut leaders = self.leaders.write().expect("leaders lock");
        for g in &status.groups {
            if g.leader != 0 {
                leaders.insert(GroupId(g.group), g.leader);
            }
        }
        Ok(status)
    }

    /// Learns the node list from any reachable storage server, unless it
    /// is known already.
    async fn learn_nodes(&self) -> Result<()> {
        if !self.nodes.read().expect("nodes lock").is_empty() {
            return Ok(());
        }
        let mut last = Error::unavailable("no storage server configured");
        for (_, addr) in self.addresses() {
            match self.status_of(&addr).await {
                Ok(_) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(Error::unavailable(format!("no storage server answers ({last}); check storage_seeds")))
    }

    /// The address to try for `group`'s leader: the cached leader, or the
    /// `attempt`-th server holding a replica of it (of any known server
    /// while only the seeds are known); suspects only when nothing else is
    /// left.
    fn target(&self, group: GroupId, attempt: usize) -> Option<String> {
        let nodes = self.addresses();
        if nodes.is_empty() {
            return None;
        }
        let suspect = |addr: &str| self.is_suspect(addr);
        if let Some(leader) = self.leaders.read().expect("leaders lock").get(&group) {
            if let Some((_, addr)) = nodes.iter().find(|(id, _)| id == leader).filter(|(_, a)| !suspect(a)) {
                return Some(addr.clone());
            }
        }
        let ids: Vec<NodeId> = nodes.iter().map(|(id, _)| NodeId(*id)).filter(|id| id.0 != 0).collect();
        let mut holders: Vec<&String> = shard::replicas_of(&ids, group)
            .iter()
            .filter_map(|r| nodes.iter().find(|(id, _)| *id == r.0).map(|(_, a)| a))
            .collect();
        if holders.is_empty() {
            holders = nodes.iter().map(|(_, a)| a).collect();
        }
        let healthy: Vec<&String> = holders.iter().copied().filter(|a| !suspect(a)).collect();
        let choices = if healthy.is_empty() { holders } else { healthy };
        Some(choices[attempt % choices.len()].clone())
    }

    /// True while `addr` is suspect.
    fn is_suspect(&self, addr: &str) -> bool {
        self.suspects.read().expect("suspects lock").get(addr).is_some_and(|until| *until > Instant::now())
    }

    /// True while node `id` is suspect.
    fn is_suspect_node(&self, id: u64) -> bool {
        let addr = self.nodes.read().expect("nodes lock").get(&id).cloned();
        addr.is_some_and(|a| self.is_suspect(&a))
    }

    /// Notes how a call to `addr` went: a connection that failed makes it
    /// suspect; any answer clears it.
    fn heard(&self, addr: &str, status: Option<&tonic::Status>) {
        let failed = status.is_some_and(|s| !drsdb_common::error::is_answer(s));
        if failed {
            self.suspects.write().expect("suspects lock").insert(addr.to_string(), Instant::now() + SUSPECT_FOR);
        } else if self.suspects.read().expect("suspects lock").contains_key(addr) {
            // Every call passes here: the write lock only when there is
            // something to clear.
            self.suspects.write().expect("suspects lock").remove(addr);
        }
    }

    /// True when every known storage server is suspect: this index server
    /// is cut off from the storage tier.
    fn cut_off(&self) -> bool {
        let suspects = self.suspects.read().expect("suspects lock");
        if suspects.is_empty() {
            return false;
        }
        let now = Instant::now();
        let suspect = |addr: &String| suspects.get(addr).is_some_and(|until| *until > now);
        let nodes = self.nodes.read().expect("nodes lock");
        match nodes.is_empty() {
            true => !self.seeds.is_empty() && self.seeds.iter().all(suspect),
            false => nodes.values().all(suspect),
        }
    }

    fn learn(&self, group: GroupId, e: &Error) {
        let mut leaders = self.leaders.write().expect("leaders lock");
        match e {
            Error::NotLeader { leader: Some(l), .. } => {
                leaders.insert(group, l.0);
            }
            _ => {
                leaders.remove(&group);
            }
        }
    }

    /// Runs `call` against `group`'s leader (`tier::with_leader`): the
    /// cached leader, or each server holding the group in turn.
    async fn with_leader<T, F, Fut>(&self, group: GroupId, idempotent: bool, mut call: F) -> Result<T>
    where
        F: FnMut(pb::storage_client::StorageClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, tonic::Status>>,
    {
        // Without the node list, the seeds are tried.
        let _ = self.learn_nodes().await;
        if self.cut_off() {
            // Cut off from the whole storage tier: say so at once (nothing
            // was sent), so that the client turns to another index server.
            return Err(Error::unavailable(format!(
                "this index server cannot reach any storage server (their connections failed in the last \
                 {SUSPECT_FOR:?}); nothing was sent: send the statement to another index server"
            )));
        }
        let mut attempt = 0;
        tier::with_leader(group, idempotent, || {
            attempt += 1;
            let target = self.target(group, attempt - 1);
            let sent = target.as_ref().map(|addr| self.client(addr).map(&mut call));
            async move {
                let (Some(addr), Some(sent)) = (target, sent) else {
                    return Err(CallFailure { error: Error::unavailable("no storage servers known"), arrived: false });
                };
                tracing::debug!(%group, %addr, attempt, "calling storage server");
                let sent = sent.map_err(|error| CallFailure { error, arrived: false })?;
                let answer = sent.await;
                self.heard(&addr, answer.as_ref().err());
                answer.map_err(|status| {
                    let arrived = !drsdb_common::error::never_arrived(&status);
                    let mut error = Error::from(status);
                    self.learn(group, &error);
                    if let Error::NotLeader { leader: Some(l), .. } = error {
                        // A follower that still names a suspect leader has
                        // not seen the election yet: wait for it.
                        if self.is_suspect_node(l.0) {
                            error = Error::NotLeader { group, leader: None };
                        }
                    }
                    CallFailure { error, arrived }
                })
            }
        })
        .await
    }
}

#[async_trait::async_trait]
impl StorageTier for GrpcTier {
    async fn write(&self, group: GroupId, command: Command, idempotent: bool) -> Result<CommandResult> {
        let command = pb::Command::from(command);
        let reply = self
            .with_leader(group, idempotent, |mut client| {
                let req = pb::WriteRequest { group: group.0, command: Some(command.clone()) };
                async move { client.write(req).await }
            })
            .await?;
        let result = reply.into_inner().result.ok_or_else(|| Error::invalid("malformed write reply: no result"))?;
        CommandResult::try_from(result)
    }

    async fn read(&self, group: GroupId, statement: Statement, alone: bool) -> Result<Parts> {
        let req = pb::ReadRequest { alone, ..read_request(group, statement) };
        let response = self
            .with_leader(group, true, |mut client| {
                let req = req.clone();
                async move { client.read(req).await }
            })
            .await?;
        Ok(Box::pin(response.into_inner().map(|part| part.map_err(Error::from))))
    }

    async fn commits(&self, group: GroupId) -> Result<(u64, bool)> {
        let reply = self
            .with_leader(group, true, |mut client| async move {
                client.commits(pb::CommitsRequest { group: group.0 }).await
            })
            .await?
            .into_inner();
        Ok((reply.commits, reply.prepared))
    }

    async fn replicas(&self, groups: &[GroupId]) -> Result<Vec<Vec<String>>> {
        self.learn_nodes().await?;
        let nodes = self.nodes.read().expect("nodes lock");
        let leaders = self.leaders.read().expect("leaders lock");
        let ids: Vec<NodeId> = nodes.keys().map(|id| NodeId(*id)).collect();
        Ok(groups
            .iter()
            .map(|g| {
                let leader = leaders.get(g).map(|l| NodeId(*l));
                shard::replicas_leader_first(&ids, *g, leader).iter().filter_map(|r| nodes.get(&r.0).cloned()).collect()
            })
            .collect())
    }

    async fn status(&self) -> Vec<ServerStatus> {
        // Known nodes are listed by id; without them, the seeds answer.
        let _ = self.learn_nodes().await;
        let addrs = self.addresses();
        let answers = futures::future::join_all(addrs.iter().map(|(_, addr)| self.status_of(addr))).await;
        addrs.into_iter().zip(answers).map(|((id, addr), status)| ServerStatus { id, addr, status }).collect()
    }

    async fn refresh_leaders(&self) {
        // Each answer teaches the leaders its server knows (`status_of`).
        self.status().await;
    }
}

/// A read of `statement` on `group`, as sent.
pub fn read_request(group: GroupId, statement: Statement) -> pb::ReadRequest {
    pb::ReadRequest { group: group.0, statement: Some(statement.into()), alone: false }
}
