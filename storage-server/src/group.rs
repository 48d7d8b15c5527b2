//! One Raft group on this server: its Raft instance, log, state machine,
//! and the write path in front of them (group commit, waiting out a
//! transaction that holds the group, rolling back idle transactions).
//!
//! ## Lease reads
//! A read first makes sure this replica still leads. openraft's leader
//! lease (`election_timeout_max_ms`) runs on the leader from when it sent
//! a message a majority acknowledged, and on each follower from when it
//! received it; a follower refuses to vote until its lease runs out, so no
//! other leader can be elected meanwhile. A read uses the lease while the
//! acknowledgement is younger than [`LEASE_READ_SHARE`] of it (clocks'
//! rates may differ by up to 25 %; only their rates matter, on monotonic
//! clocks, so a paused leader's lease has run out when it resumes), and
//! otherwise sends a heartbeat round and waits for it (ReadIndex), one
//! round for all the reads waiting. A follower forgets its lease when it
//! restarts, so a restarted server waits out a lease before its groups
//! start (`server`). `raft.lease_reads = false` makes every read a
//! ReadIndex round.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use drsdb_common::config::StorageConfig;
use drsdb_common::{Error, GroupId, NodeId, Result, TxnId};
use openraft::errors::{ClientWriteError, RaftError};
use openraft::{BasicNode, LinearizerOption, ReadPolicy, SnapshotPolicy};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use crate::log_store::LogEngine;
use crate::network::{Network, Peers};
use crate::state_machine::{Reader, Shared, StateMachine};
use crate::types::{Raft, TypeConfig};
use drsdb_common::command::{Command, CommandResult, Outcome, Statement, Step, TxnCommand, STATEMENT_TXN_IDLE_MS};

/// Batches proposed at once by one group's write path; later writes queue
/// behind them and form the next batch.
const MAX_INFLIGHT_BATCHES: usize = 4;
/// How long a write waits for a transaction holding the group to end.
const HOLD_WAIT: Duration = Duration::from_secs(30);
/// How often the leader looks for idle transactions.
const REAPER_PERIOD: Duration = Duration::from_millis(500);
/// A proposal not committed by then fails (the group may have lost its
/// majority); it may still commit later.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);
/// A read barrier not confirmed by a majority by then fails.
const READ_BARRIER_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of statements one batch gathers (a single larger statement
/// still forms its own batch).
const MAX_BATCH_BYTES: usize = 8 << 20;
/// Most entries in one AppendEntries message, so that a message of large
/// entries stays under the transport's limit.
const MAX_ENTRIES_PER_MESSAGE: u64 = 8;
/// Snapshot transfers may take this long.
const INSTALL_SNAPSHOT_TIMEOUT_MS: u64 = 30_000;
/// The part of the leader lease (openraft's: `election_timeout_max`) a
/// lease read relies on: 80 % keeps reads linearizable while clocks'
/// rates differ by less than 25 % (see "Lease reads" above).
const LEASE_READ_SHARE: f64 = 0.8;

struct PendingWrite {
    statement: Statement,
    /// The statement's outcome, or why its batch could not be committed.
    reply: oneshot::Sender<Result<Outcome>>,
}

/// Proposes commands to one group's log (the parts of a [`Group`] that
/// its background tasks need).
#[derive(Clone)]
struct Proposer {
    id: GroupId,
    raft: Raft,
    shared: Arc<Shared>,
}

/// A group hosted here.
pub struct Group {
    /// The group's id.
    pub id: GroupId,
    /// Its Raft instance.
    pub raft: Raft,
    proposer: Proposer,
    writes: mpsc::Sender<PendingWrite>,
    stop: watch::Sender<bool>,
    /// How a read makes sure this replica still leads (see
    /// [`LEASE_READ_SHARE`]).
    read_policy: LinearizerOption,
}

fn raft_config(c: &StorageConfig) -> Result<openraft::Config> {
    let r = &c.raft;
    openraft::Config {
        cluster_name: "drsdb".into(),
        heartbeat_interval: r.heartbeat_interval_ms,
        election_timeout_min: r.election_timeout_min_ms,
        election_timeout_max: r.election_timeout_max_ms,
        install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT_MS,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(r.snapshot_after_entries),
        max_in_snapshot_log_to_keep: r.keep_entries_after_snapshot,
        max_payload_entries: MAX_ENTRIES_PER_MESSAGE,
        ..Default::default()
    }
    .validate()
    .map_err(|e| Error::invalid(format!("raft configuration: {e}")))
}

/// Maps openraft's write errors to ours.
fn write_error(group: GroupId, e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            Error::NotLeader { group, leader: f.leader_id.map(NodeId) }
        }
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)) => Error::unavailable(format!(
            "group {group} changed leader while the write was in flight; it may or may not have been applied"
        )),
        RaftError::APIError(other) => Error::invalid(other),
        RaftError::Fatal(f) => Error::unavailable(format!("group {group} replica stopped: {f}")),
    }
}

impl Group {
    /// Opens (or creates) the group in `dir` and starts its Raft.
    pub async fn open(
        id: GroupId,
        dir: &Path,
        log: &Arc<LogEngine>,
        config: &StorageConfig,
        peers: Arc<Peers>,
    ) -> Result<Arc<Group>> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("cannot create {}: {e}", dir.display())))?;
        let log = log.group(id);
        let sm = StateMachine::open(&dir.join("sm"))
            .map_err(|e| Error::io(format!("group {id}: cannot open state machine: {e}")))?;
        let shared = sm.shared();
        let raft = Raft::new(config.node_id, Arc::new(raft_config(config)?), Network::new(id, peers), log, sm)
            .await
            .map_err(|e| Error::io(format!("group {id}: cannot start raft: {e}")))?;
        let (writes, queue) = mpsc::channel(config.max_batch * MAX_INFLIGHT_BATCHES);
        let (stop, stopped) = watch::channel(false);
        let proposer = Proposer { id, raft: raft.clone(), shared };
        tokio::spawn(batcher(proposer.clone(), queue, config.max_batch));
        tokio::spawn(reaper(proposer.clone(), config.txn_idle_timeout(), config.txn_max_duration(), stopped));
        let read_policy = if config.raft.lease_reads {
            // The lease if fresh enough, else a heartbeat round.
            let lease = Duration::from_millis(config.raft.election_timeout_max_ms).mul_f64(LEASE_READ_SHARE);
            LinearizerOption::new(Some(lease), true)
        } else {
            ReadPolicy::ReadIndex.into()
        };
        Ok(Arc::new(Group { id, raft, proposer, writes, stop, read_policy }))
    }

    /// Stops the group's Raft and background tasks.
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(group = %self.id, "raft shutdown: {e}");
        }
    }

    /// Initializes the group with `members` if it has never been.
    pub async fn bootstrap(&self, members: &BTreeMap<u64, String>) -> Result<()> {
        let initialized =
            self.raft.is_initialized().await.map_err(|e| Error::unavailable(format!("group {}: {e}", self.id)))?;
        if initialized {
            return Ok(());
        }
        let nodes: BTreeMap<u64, BasicNode> = members.iter().map(|(id, a)| (*id, BasicNode::new(a))).collect();
        match self.raft.initialize(nodes).await {
            Ok(()) => {
                tracing::info!(group = %self.id, "initialized group");
                Ok(())
            }
            Err(RaftError::APIError(openraft::errors::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(Error::unavailable(format!("group {}: cannot initialize: {e}", self.id))),
        }
    }

    /// Hands leadership to `preferred` when this replica leads the group,
    /// `preferred` is another voter, and it holds every log entry: the way
    /// leaders return to their placement after a failover, so that each
    /// server leads its share of groups.
    pub async fn hand_over(&self, preferred: NodeId) {
        let caught_up = {
            use openraft::async_runtime::WatchReceiver;
            let m = self.raft.metrics().borrow_watched().clone();
            let matched = m.replication.as_ref().and_then(|r| r.get(&preferred.0).cloned().flatten());
            m.current_leader == Some(m.id)
                && m.id != preferred.0
                && m.membership_config.membership().voter_ids().any(|v| v == preferred.0)
                && matched.map(|l| l.index) == m.last_log_index
        };
        if caught_up {
            tracing::info!(group = %self.id, to = %preferred, "handing leadership to the preferred replica");
            if let Err(e) = self.raft.trigger().transfer_leader(preferred.0).await {
                tracing::warn!(group = %self.id, "leader transfer: {e}");
            }
        }
    }

    /// Fails with `NotLeader` unless this replica leads the group.
    fn ensure_leader(&self) -> Result<()> {
        if self.raft.is_leader() {
            return Ok(());
        }
        let leader = {
            use openraft::async_runtime::WatchReceiver;
            self.raft.metrics().borrow_watched().current_leader
        };
        Err(Error::NotLeader { group: self.id, leader: leader.map(NodeId) })
    }

    /// Applies a command through the log and returns its result. Batched
    /// statements go through group commit.
    pub async fn write(&self, command: Command) -> Result<CommandResult> {
        self.ensure_leader()?;
        match command {
            Command::Batch(statements) => {
                let mut replies = Vec::with_capacity(statements.len());
                for statement in statements {
                    let (reply, rx) = oneshot::channel();
                    self.writes
                        .send(PendingWrite { statement, reply })
                        .await
                        .map_err(|_| Error::unavailable("server is shutting down"))?;
                    replies.push(rx);
                }
                let mut outcomes = Vec::with_capacity(replies.len());
                for rx in replies {
                    // A batch that could not be committed fails the request
                    // as a whole, so that the caller can retry or redirect.
                    outcomes.push(rx.await.map_err(|_| Error::unavailable("server is shutting down"))??);
                }
                Ok(CommandResult::Batch(outcomes))
            }
            other => self.proposer.propose_waiting(other).await,
        }
    }

    /// Waits until this replica may serve a linearizable read.
    pub async fn read_barrier(&self) -> Result<()> {
        self.ensure_leader()?;
        let barrier = tokio::time::timeout(READ_BARRIER_TIMEOUT, self.raft.ensure_linearizable(self.read_policy.clone()))
            .await
            .map_err(|_| {
                Error::unavailable(format!(
                    "group {} could not confirm its leadership within {READ_BARRIER_TIMEOUT:?} (a majority of its replicas may be down)",
                    self.id
                ))
            })?;
        barrier.map(|_| ()).map_err(|e| match e {
            RaftError::APIError(openraft::errors::LinearizableReadError::ForwardToLeader(f)) => {
                Error::NotLeader { group: self.id, leader: f.leader_id.map(NodeId) }
            }
            RaftError::APIError(other) => Error::unavailable(format!("group {}: {other}", self.id)),
            RaftError::Fatal(f) => Error::unavailable(format!("group {} replica stopped: {f}", self.id)),
        })
    }

    /// The transaction holding the group on this replica, if any.
    pub fn holder(&self) -> Option<crate::state_machine::Holder> {
        self.proposer.shared.holder().borrow().clone()
    }

    /// After a linearizable read barrier: transactions over several shards
    /// committed here, and whether one is prepared here now. (The holder is
    /// read first: a commit clears it only after counting itself.)
    pub async fn commits(&self) -> Result<(u64, bool)> {
        self.read_barrier().await?;
        let prepared = self.holder().is_some_and(|h| h.prepared.is_some());
        Ok((self.proposer.shared.commits(), prepared))
    }

    /// Bytes of this replica's database file; 0 when it cannot be read.
    pub fn size_bytes(&self) -> u64 {
        std::fs::metadata(self.proposer.shared.current_db()).map_or(0, |m| m.len())
    }

    /// A read-only connection on the group's committed data.
    pub fn reader(&self) -> Result<Reader> {
        self.proposer.shared.reader().map_err(|e| Error::io(format!("group {}: {e}", self.id)))
    }
}

impl Proposer {
    /// Proposes a command; when a transaction holds the group, waits for it
    /// to end and proposes again (unless the command says not to wait:
    /// then `Busy` is its result).
    async fn propose_waiting(&self, command: Command) -> Result<CommandResult> {
        let deadline = tokio::time::Instant::now() + HOLD_WAIT;
        let no_wait = matches!(&command, Command::Txn(t) if t.no_wait);
        loop {
            let response = tokio::time::timeout(COMMIT_TIMEOUT, self.raft.client_write(command.clone()))
                .await
                .map_err(|_| {
                    Error::unavailable(format!(
                        "group {} did not commit the write within {COMMIT_TIMEOUT:?} (a majority of its replicas may be down); it may still be applied",
                        self.id
                    ))
                })?
                .map_err(|e| write_error(self.id, e))?;
            match response.data {
                CommandResult::Busy(holder) if !no_wait => self.wait_until_free(&holder, deadline).await?,
                result => return Ok(result),
            }
        }
    }

    /// Waits until transaction `held_by` no longer holds the group: it is
    /// free, or held by another transaction (which a `Begin` may wound).
    async fn wait_until_free(&self, held_by: &TxnId, deadline: tokio::time::Instant) -> Result<()> {
        let mut holder = self.shared.holder();
        let free = tokio::time::timeout_at(deadline, holder.wait_for(|h| h.as_ref().map(|h| &h.txn) != Some(held_by)))
            .await
            .map(|r| r.is_ok());
        match free {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::unavailable("server is shutting down")),
            Err(_) => {
                Err(Error::Retryable(format!("group {} is held by a transaction for more than {HOLD_WAIT:?}", self.id)))
            }
        }
    }
}

/// Group commit: takes the writes waiting in the queue (up to `max_batch`)
/// and proposes them as one entry, with up to [`MAX_INFLIGHT_BATCHES`] in
/// flight.
async fn batcher(group: Proposer, mut queue: mpsc::Receiver<PendingWrite>, max_batch: usize) {
    let inflight = Arc::new(Semaphore::new(MAX_INFLIGHT_BATCHES));
    loop {
        let Ok(permit) = inflight.clone().acquire_owned().await else { return };
        let Some(first) = queue.recv().await else { return };
        let mut bytes = first.statement.approximate_size();
        let mut batch = vec![first];
        while batch.len() < max_batch && bytes < MAX_BATCH_BYTES {
            let Ok(next) = queue.try_recv() else { break };
            bytes += next.statement.approximate_size();
            batch.push(next);
        }
        let group = group.clone();
        tokio::spawn(async move {
            let (statements, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|w| (w.statement, w.reply)).unzip();
            let outcomes: Vec<Result<Outcome>> = match group.propose_waiting(Command::Batch(statements)).await {
                Ok(CommandResult::Batch(outcomes)) if outcomes.len() == replies.len() => {
                    outcomes.into_iter().map(Ok).collect()
                }
                Ok(other) => {
                    let e = Error::io(format!("unexpected result for a batch: {other:?}"));
                    vec![Err(e); replies.len()]
                }
                Err(e) => vec![Err(e); replies.len()],
            };
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(outcome);
            }
            drop(permit);
        });
    }
}

/// On the leader, rolls back a transaction that has been idle longer than
/// `idle` (a statement's own: [`STATEMENT_TXN_IDLE_MS`]) or open longer
/// than `longest`, unless it is prepared (then only its anchor's decision
/// ends it: index servers resolve it).
async fn reaper(group: Proposer, idle: Duration, longest: Duration, mut stopped: watch::Receiver<bool>) {
    let holder = group.shared.holder();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(REAPER_PERIOD) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        let stale = holder.borrow().clone().filter(|h| h.prepared.is_none()).and_then(|h| {
            let why = if h.statement && h.last_activity.elapsed() > Duration::from_millis(STATEMENT_TXN_IDLE_MS) {
                "left idle by the index server running its statement"
            } else if h.last_activity.elapsed() > idle {
                "idle longer than txn_idle_timeout_ms"
            } else if h.started.elapsed() > longest {
                "open longer than txn_max_duration_ms"
            } else {
                return None;
            };
            Some((h, why))
        });
        if let Some((h, why)) = stale {
            if group.raft.is_leader() {
                tracing::info!(group = %group.id, txn = %h.txn, "rolling back a transaction {why}");
                let now_ms = chrono::Utc::now().timestamp_millis();
                let rollback = Command::Txn(TxnCommand {
                    txn: h.txn.clone(),
                    now_ms,
                    steps: vec![Step::Rollback],
                    statement: h.statement,
                    no_wait: false,
                });
                if let Err(e) = group.raft.client_write(rollback).await {
                    tracing::warn!(group = %group.id, "cannot roll back a transaction {why}: {e}");
                }
            }
        }
    }
}
