//! The storage tier inside the calling process, for tests of the SQL tier.
//!
//! [`InProcessTier`] runs real storage servers in this process: their Raft
//! groups (openraft, SQLite files in a directory the caller owns), each
//! serving its Raft traffic and clients' direct reads over gRPC with TLS
//! on a loopback port, exactly as `serve` does. The SQL tier calls their
//! groups directly through [`StorageTier`], without the `Storage` gRPC
//! hop, and the same retry policy as in production
//! (`drsdb_common::tier::with_leader`).
//!
//! Fault hooks, each at an exact step of the caller's choosing:
//! - [`InProcessTier::lose_replies`]: writes to a group are applied, but
//!   their replies are lost (the caller learns nothing: the outcome is
//!   unknown);
//! - [`InProcessTier::delay_replies`]: replies from a group come late;
//! - [`InProcessTier::fail_calls`]: calls to a group fail as a broken disk
//!   would make them fail (an I/O error, nothing applied);
//! - [`InProcessTier::stop_replica`]: a storage server stops;
//! - [`InProcessTier::change_leader`]: a group's leadership moves.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drsdb_common::command::{Command, CommandResult, Statement};
use drsdb_common::config::{Member, RaftConfig, StorageConfig};
use drsdb_common::error::catch_panic;
use drsdb_common::tier::{self, CallFailure, Parts, ServerStatus, StorageTier};
use drsdb_common::{shard, tls, Error, GroupId, NodeId, Result};
use futures::StreamExt;
use openraft::async_runtime::WatchReceiver;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::server::{self, Opened};
use crate::service::Node;

/// How long [`InProcessTier::start`] and [`InProcessTier::change_leader`]
/// wait for leaders.
const LEADER_WAIT: Duration = Duration::from_secs(20);
/// Pause between checks for a leader.
const LEADER_POLL: Duration = Duration::from_millis(20);

/// A storage server running in this process.
struct Hosted {
    node: Arc<Node>,
    stop: oneshot::Sender<()>,
    served: JoinHandle<Result<()>>,
}

/// Faults to inject, by group.
#[derive(Default)]
struct Faults {
    /// Replies still to lose.
    lost: HashMap<GroupId, usize>,
    /// Replies lost so far.
    lost_so_far: usize,
    /// How late replies come.
    delayed: HashMap<GroupId, Duration>,
    /// Calls still to fail.
    failing: HashMap<GroupId, usize>,
}

/// Storage servers hosted in this process, reached by direct calls.
pub struct InProcessTier {
    servers: Mutex<BTreeMap<u64, Hosted>>,
    addrs: BTreeMap<u64, String>,
    faults: Mutex<Faults>,
}

impl InProcessTier {
    /// Starts `servers` storage servers with `shards` data shards under
    /// `dir`, and waits until every group has a leader.
    pub async fn start(dir: &Path, servers: u64, shards: usize) -> Result<Arc<InProcessTier>> {
        drsdb_sqlite::start();
        let certs = dir.join("certs");
        tls::generate(&certs, &[])?;
        let mut listeners = Vec::new();
        for _ in 0..servers {
            listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await?);
        }
        let members: Vec<Member> = listeners
            .iter()
            .enumerate()
            .map(|(i, l)| Ok(Member { id: i as u64 + 1, addr: l.local_addr()?.to_string() }))
            .collect::<std::io::Result<_>>()?;
        let addrs = members.iter().map(|m| (m.id, m.addr.clone())).collect();
        let mut hosted = BTreeMap::new();
        for (member, listener) in members.iter().zip(listeners) {
            let config = StorageConfig {
                node_id: member.id,
                listen: listener.local_addr()?,
                data_dir: dir.join(format!("storage-{}", member.id)),
                members: members.clone(),
                shards: Some(shards),
                tls: tls::node_config_in(&certs),
                ticket_key: certs.join(tls::files::TICKET_KEY),
                raft: RaftConfig {
                    election_timeout_min_ms: 300,
                    election_timeout_max_ms: 600,
                    ..RaftConfig::default()
                },
                ..StorageConfig::default()
            };
            config.validate()?;
            let opened = server::open(&config).await?;
            hosted.insert(member.id, run(opened, config, listener));
        }
        let tier = Arc::new(InProcessTier { servers: Mutex::new(hosted), addrs, faults: Mutex::default() });
        let mut groups = vec![GroupId::META];
        groups.extend(shard::shard_groups(shards));
        for g in groups {
            tier.wait_for_leader(g, None).await?;
        }
        Ok(tier)
    }

    /// Writes to `group` are applied from now on, but the next `count`
    /// replies are lost.
    pub fn lose_replies(&self, group: GroupId, count: usize) {
        self.faults.lock().expect("faults lock").lost.insert(group, count);
    }

    /// How many replies were lost so far.
    pub fn replies_lost(&self) -> usize {
        self.faults.lock().expect("faults lock").lost_so_far
    }

    /// Replies from `group` come `delay` late (zero: on time).
    pub fn delay_replies(&self, group: GroupId, delay: Duration) {
        self.faults.lock().expect("faults lock").delayed.insert(group, delay);
    }

    /// The next `count` calls to `group` (writes and reads) fail with an
    /// I/O error without reaching it; 0 heals it.
    pub fn fail_calls(&self, group: GroupId, count: usize) {
        self.faults.lock().expect("faults lock").failing.insert(group, count);
    }

    /// Stops storage server `node` (its groups stop; their other replicas
    /// elect new leaders).
    pub async fn stop_replica(&self, node: u64) -> Result<()> {
        let hosted = self.servers.lock().expect("servers lock").remove(&node);
        let Some(hosted) = hosted else { return Err(Error::invalid(format!("no storage server {node} runs"))) };
        let _ = hosted.stop.send(());
        hosted.served.await.map_err(|e| Error::Internal(format!("storage server {node}: {e}")))?
    }

    /// The storage server leading `group`, as its replicas see it.
    pub fn leader(&self, group: GroupId) -> Option<u64> {
        let servers = self.servers.lock().expect("servers lock");
        servers.values().find_map(|h| {
            let g = h.node.groups.get(&group)?;
            g.raft.is_leader().then_some(h.node.id.0)
        })
    }

    /// Moves `group`'s leadership to another of its replicas and waits
    /// until that one leads; returns it.
    pub async fn change_leader(&self, group: GroupId) -> Result<u64> {
        let old = self.wait_for_leader(group, None).await?;
        let (raft, target) = {
            let servers = self.servers.lock().expect("servers lock");
            let raft = servers[&old].node.groups[&group].raft.clone();
            let voters: Vec<u64> = raft.metrics().borrow_watched().membership_config.membership().voter_ids().collect();
            let target = voters.into_iter().find(|v| *v != old && servers.contains_key(v));
            (raft, target.ok_or_else(|| Error::unavailable(format!("group {group} has no other running replica")))?)
        };
        raft.trigger().transfer_leader(target).await.map_err(|e| Error::unavailable(format!("transfer: {e}")))?;
        self.wait_for_leader(group, Some(old)).await
    }

    /// Waits until `group` has a leader other than `not`.
    async fn wait_for_leader(&self, group: GroupId, not: Option<u64>) -> Result<u64> {
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        loop {
            if let Some(l) = self.leader(group).filter(|l| Some(*l) != not) {
                return Ok(l);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::unavailable(format!("group {group} elected no new leader within {LEADER_WAIT:?}")));
            }
            tokio::time::sleep(LEADER_POLL).await;
        }
    }

    /// Stops every storage server.
    pub async fn shutdown(&self) {
        let servers: Vec<u64> = self.servers.lock().expect("servers lock").keys().copied().collect();
        for node in servers {
            let _ = self.stop_replica(node).await;
        }
    }

    /// The running node that leads `group` (or, when none is known, any
    /// running replica of it: it will name the leader).
    fn target(&self, group: GroupId) -> std::result::Result<Arc<Node>, CallFailure> {
        let unreachable = |m: &str| CallFailure { error: Error::unavailable(m), arrived: false };
        if take_one(&mut self.faults.lock().expect("faults lock").failing, group) {
            let error = Error::io(format!("group {group} failed (fault injected)"));
            return Err(CallFailure { error, arrived: true });
        }
        let servers = self.servers.lock().expect("servers lock");
        let holders: Vec<&Hosted> = servers.values().filter(|h| h.node.groups.contains_key(&group)).collect();
        let leader = holders.iter().find(|h| h.node.groups[&group].raft.is_leader()).or(holders.first());
        leader.map(|h| h.node.clone()).ok_or_else(|| unreachable("no running storage server holds the group"))
    }

    /// Applies the reply faults of `group` to an answer from it (a write's
    /// reply may be lost, any reply delayed).
    async fn reply<T>(&self, group: GroupId, write: bool, answer: Result<T>) -> std::result::Result<T, CallFailure> {
        let (lose, delay) = {
            let mut faults = self.faults.lock().expect("faults lock");
            let lose = write && take_one(&mut faults.lost, group);
            faults.lost_so_far += usize::from(lose);
            (lose, faults.delayed.get(&group).copied())
        };
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        if lose {
            let error = Error::unavailable("the reply was lost (fault injected)");
            return Err(CallFailure { error, arrived: true });
        }
        answer.map_err(|error| CallFailure { error, arrived: true })
    }
}

/// Takes one from `group`'s count of faults still to inject; false when
/// none is left.
fn take_one(counts: &mut HashMap<GroupId, usize>, group: GroupId) -> bool {
    match counts.get_mut(&group) {
        Some(n) if *n > 0 => {
            *n -= 1;
            true
        }
        _ => false,
    }
}

/// Serves `opened` until stopped.
fn run(opened: Opened, config: StorageConfig, listener: tokio::net::TcpListener) -> Hosted {
    let node = opened.node.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(async move {
        server::run(opened, &config, listener, async {
            let _ = stopped.await;
        })
        .await
    });
    Hosted { node, stop, served }
}

#[async_trait::async_trait]
impl StorageTier for InProcessTier {
    async fn write(&self, group: GroupId, command: Command, idempotent: bool) -> Result<CommandResult> {
        tier::with_leader(group, idempotent, || {
            let command = command.clone();
            async move {
                let node = self.target(group)?;
                let g = node.groups[&group].clone();
                let answer = catch_panic(g.write(command)).await;
                self.reply(group, true, answer).await
            }
        })
        .await
    }

    async fn read(&self, group: GroupId, statement: Statement, alone: bool) -> Result<Parts> {
        tier::with_leader(group, true, || {
            let statement = statement.clone();
            async move {
                let node = self.target(group)?;
                let answer = node.read(group.0, statement, !alone).await.map_err(Error::from);
                let parts = self.reply(group, false, answer).await?;
                Ok(Box::pin(parts.map(|p| p.map_err(Error::from))) as Parts)
            }
        })
        .await
    }

    async fn commits(&self, group: GroupId) -> Result<(u64, bool)> {
        tier::with_leader(group, true, || async move {
            let node = self.target(group)?;
            let g = node.groups[&group].clone();
            self.reply(group, false, g.commits().await).await
        })
        .await
    }

    async fn replicas(&self, groups: &[GroupId]) -> Result<Vec<Vec<String>>> {
        let ids: Vec<NodeId> = self.addrs.keys().map(|id| NodeId(*id)).collect();
        Ok(groups
            .iter()
            .map(|g| {
                let leader = self.leader(*g).map(NodeId);
                shard::replicas_leader_first(&ids, *g, leader).iter().map(|r| self.addrs[&r.0].clone()).collect()
            })
            .collect())
    }

    async fn status(&self) -> Vec<ServerStatus> {
        let servers = self.servers.lock().expect("servers lock");
        self.addrs
            .iter()
            .map(|(id, addr)| ServerStatus {
                id: *id,
                addr: addr.clone(),
                status: servers
                    .get(id)
                    .map(|h| h.node.status())
                    .ok_or_else(|| Error::unavailable(format!("storage server {id} is stopped"))),
            })
            .collect()
    }
}
