//! The index server's view of the storage tier: which storage servers
//! exist, which one leads each group, and sending requests to leaders.
//!
//! Leaders are learned from `NotLeader` replies and from `Status` calls,
//! never configured. A request that meets a follower goes to the leader it
//! names; one that meets a dead server tries the next server. Writes are
//! re-sent only when the first attempt certainly did not reach a leader
//! (a `NotLeader` refusal or a failed connect), so a write is never
//! applied twice by a retry here.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;
use std::time::Duration;

use drsdb_common::tls::{Channels, Dialer};
use drsdb_common::{shard, value, Error, GroupId, NodeId, Result, Value};
use drsdb_proto as pb;
use drsdb_storage::{Command, CommandResult};
use tonic::transport::Channel;

/// How long a request keeps looking for a leader before giving up.
const LEADER_DEADLINE: Duration = Duration::from_secs(10);
/// Pause before retrying when no leader is known.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Largest message from a storage server.
const MAX_MESSAGE: usize = 64 << 20;

/// Storage servers and group leaders as this index server knows them.
pub struct Cluster {
    channels: Channels,
    seeds: Vec<String>,
    nodes: RwLock<BTreeMap<u64, String>>,
    leaders: RwLock<HashMap<GroupId, u64>>,
}

impl Cluster {
    /// A cluster reached through `seeds` (storage server addresses).
    pub fn new(dialer: Dialer, seeds: Vec<String>) -> Cluster {
        Cluster {
            channels: Channels::new(dialer),
            seeds,
            nodes: RwLock::new(BTreeMap::new()),
            leaders: RwLock::new(HashMap::new()),
        }
    }

    fn client(&self, addr: &str) -> Result<pb::storage_client::StorageClient<Channel>> {
        Ok(pb::storage_client::StorageClient::new(self.channels.get(addr)?)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }

    /// Every storage server address known (seeds first if nothing else).
    pub fn addresses(&self) -> Vec<(u64, String)> {
        let nodes = self.nodes.read().expect("nodes lock");
        if nodes.is_empty() {
            return self.seeds.iter().map(|s| (0, s.clone())).collect();
        }
        nodes.iter().map(|(id, a)| (*id, a.clone())).collect()
    }

    /// Asks one storage server for its status and learns the node list and
    /// the leaders it knows.
    pub async fn status_of(&self, addr: &str) -> Result<pb::StatusResponse> {
        let status = self.client(addr)?.status(pb::StatusRequest {}).await?.into_inner();
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

    /// Refreshes the node list from any reachable storage server, and
    /// returns that server's status.
    pub async fn refresh(&self) -> Result<pb::StatusResponse> {
        let mut last = Error::unavailable("no storage server configured");
        for (_, addr) in self.addresses() {
            match self.status_of(&addr).await {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(Error::unavailable(format!("no storage server answers ({last}); check storage_seeds")))
    }

    /// For each of `groups`, the addresses of the storage servers holding
    /// it, the last known leader first.
    pub async fn replicas(&self, groups: &[GroupId]) -> Result<Vec<Vec<String>>> {
        if self.nodes.read().expect("nodes lock").is_empty() {
            self.refresh().await?;
        }
        let nodes = self.nodes.read().expect("nodes lock");
        let leaders = self.leaders.read().expect("leaders lock");
        let ids: Vec<NodeId> = nodes.keys().map(|id| NodeId(*id)).collect();
        Ok(groups
            .iter()
            .map(|g| {
                let mut replicas: Vec<u64> = shard::replicas_of(&ids, *g).iter().map(|r| r.0).collect();
                if let Some(i) = leaders.get(g).and_then(|l| replicas.iter().position(|r| r == l)) {
                    replicas[..=i].rotate_right(1);
                }
                replicas.iter().filter_map(|r| nodes.get(r).cloned()).collect()
            })
            .collect())
    }

    /// Asks every known storage server for its status, to learn the
    /// leaders of all groups (each server reports those it holds).
    pub async fn refresh_leaders(&self) {
        let addrs = self.addresses();
        futures::future::join_all(addrs.iter().map(|(_, addr)| self.status_of(addr))).await;
    }

    /// The address to try for `group`'s leader: the cached leader, or the
    /// `attempt`-th server holding a replica of it (of any known server
    /// while only the seeds are known).
    fn target(&self, group: GroupId, attempt: usize) -> Option<String> {
        let nodes = self.addresses();
        if nodes.is_empty() {
            return None;
        }
        if let Some(leader) = self.leaders.read().expect("leaders lock").get(&group) {
            if let Some((_, addr)) = nodes.iter().find(|(id, _)| id == leader) {
                return Some(addr.clone());
            }
        }
        let ids: Vec<NodeId> = nodes.iter().map(|(id, _)| NodeId(*id)).filter(|id| id.0 != 0).collect();
        let holders: Vec<&String> = shard::replicas_of(&ids, group)
            .iter()
            .filter_map(|r| nodes.iter().find(|(id, _)| *id == r.0).map(|(_, a)| a))
            .collect();
        match holders.is_empty() {
            true => Some(nodes[attempt % nodes.len()].1.clone()),
            false => Some(holders[attempt % holders.len()].clone()),
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

    /// Runs `call` against `group`'s leader, following leader changes
    /// until it succeeds, fails for a reason that retrying cannot fix, or
    /// the deadline passes. `idempotent` calls are also retried after
    /// failures whose outcome is unknown.
    async fn with_leader<T, F, Fut>(&self, group: GroupId, idempotent: bool, mut call: F) -> Result<T>
    where
        F: FnMut(pb::storage_client::StorageClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let deadline = tokio::time::Instant::now() + LEADER_DEADLINE;
        let mut attempt = 0;
        loop {
            if self.nodes.read().expect("nodes lock").is_empty() {
                let _ = self.refresh().await;
            }
            let Some(addr) = self.target(group, attempt) else {
                return Err(Error::unavailable("no storage servers known"));
            };
            attempt += 1;
            tracing::debug!(%group, %addr, attempt, "calling storage server");
            let status = match call(self.client(&addr)?).await {
                Ok(v) => return Ok(v),
                Err(s) => s,
            };
            tracing::debug!(%group, %addr, "storage server failed: {status}");
            let arrived = !drsdb_common::error::never_arrived(&status);
            let error = Error::from(status);
            let retry = match &error {
                Error::NotLeader { .. } => true,
                Error::Unavailable(_) => idempotent || !arrived,
                _ => false,
            };
            self.learn(group, &error);
            if !retry || tokio::time::Instant::now() >= deadline {
                return Err(match error {
                    Error::Unavailable(m) if !idempotent && arrived => Error::Unavailable(format!(
                        "{m}; the write may or may not have been applied, check before sending it again"
                    )),
                    Error::NotLeader { group, .. } => {
                        Error::unavailable(format!("group {group} has no leader right now; try again shortly"))
                    }
                    other => other,
                });
            }
            if !matches!(error, Error::NotLeader { leader: Some(_), .. }) {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }

    /// Proposes `command` to `group` and returns its result. An
    /// `idempotent` command (one the storage tier deduplicates, or whose
    /// repetition is harmless) is sent again after failures whose outcome
    /// is unknown.
    pub async fn write(&self, group: GroupId, command: &Command, idempotent: bool) -> Result<CommandResult> {
        let bytes = drsdb_storage::encode(command);
        let reply = self
            .with_leader(group, idempotent, |mut client| {
                let req = pb::WriteRequest { group: group.0, command: bytes.clone() };
                async move { client.write(req).await }
            })
            .await?;
        drsdb_storage::decode(&reply.into_inner().result)
    }

    /// Runs a read on `group`'s leader (after its linearizable read
    /// barrier) and returns the row stream.
    pub async fn read(&self, req: pb::ReadRequest) -> Result<tonic::Streaming<pb::ResultPart>> {
        let group = GroupId(req.group);
        let response = self
            .with_leader(group, true, |mut client| {
                let req = req.clone();
                async move { client.read(req).await }
            })
            .await?;
        Ok(response.into_inner())
    }

    /// Runs a read like [`Cluster::read`] and collects its rows.
    pub async fn read_rows(&self, req: pb::ReadRequest) -> Result<Vec<Vec<Value>>> {
        let mut stream = self.read(req).await?;
        let mut rows = Vec::new();
        while let Some(part) = stream.message().await.map_err(Error::from)? {
            if let Some(pb::result_part::Part::Rows(r)) = part.part {
                rows.extend(value::rows_from(r));
            }
        }
        Ok(rows)
    }
}
