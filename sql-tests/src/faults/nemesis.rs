//! The nemesis: faults injected one at a time on a schedule, each held
//! for a while and then healed, every one recorded in the history.
//!
//! | fault | what is done | healed by |
//! | --- | --- | --- |
//! | `kill-leader` | SIGKILL the storage server leading a random shard | starting it |
//! | `kill-storage` | SIGKILL a random storage server | starting it |
//! | `kill-index` | SIGKILL a random index server | starting it |
//! | `pause-leader` | SIGSTOP (`docker pause`) a shard's leader | SIGCONT |
//! | `pause-storage` | the same, for a random storage server | SIGCONT |
//! | `partition-storage` | cut one storage server off from every other server | removing the rules |
//! | `partition-majority` | split a minority of the storage servers and an index server from the rest | removing the rules |
//! | `partition-index` | cut one index server off from every other server (clients still reach it) | removing the rules |
//! | `restart-all` | SIGKILL every server, then start them all | (itself) |
//! | `rolling-restart` | stop and start each server in turn, waiting for the cluster to recover between | (itself) |
//!
//! Partitions need the compose target.

use std::time::Duration;

use tokio::sync::Mutex;

use super::history::{Entry, Fault, History};
use super::target::{Role, Server, Target, READY_DEADLINE};
use drsdb_sql_tests::rng::Rng;

/// The column of `SHOW SHARDS` that names a shard's leader.
const SHARD_LEADER: usize = 3;

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FaultKind {
    /// SIGKILL a shard's leader, restart it after the hold.
    KillLeader,
    /// SIGKILL a random storage server, restart it after the hold.
    KillStorage,
    /// SIGKILL a random index server, restart it after the hold.
    KillIndex,
    /// Freeze a shard's leader for the hold.
    PauseLeader,
    /// Freeze a random storage server for the hold.
    PauseStorage,
    /// Isolate one storage server for the hold.
    PartitionStorage,
    /// Split a minority of storage servers (and an index server) from the rest.
    PartitionMajority,
    /// Isolate one index server from the other servers.
    PartitionIndex,
    /// Kill every server, then start them all.
    RestartAll,
    /// Restart every server in turn.
    RollingRestart,
}

impl FaultKind {
    /// Its name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillLeader => "kill-leader",
            FaultKind::KillStorage => "kill-storage",
            FaultKind::KillIndex => "kill-index",
            FaultKind::PauseLeader => "pause-leader",
            FaultKind::PauseStorage => "pause-storage",
            FaultKind::PartitionStorage => "partition-storage",
            FaultKind::PartitionMajority => "partition-majority",
            FaultKind::PartitionIndex => "partition-index",
            FaultKind::RestartAll => "restart-all",
            FaultKind::RollingRestart => "rolling-restart",
        }
    }

    /// Whether it needs network partitions.
    pub fn partitions(self) -> bool {
        matches!(self, FaultKind::PartitionStorage | FaultKind::PartitionMajority | FaultKind::PartitionIndex)
    }
}

/// The nemesis's schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The faults to choose from (none: a run without faults).
    pub kinds: Vec<FaultKind>,
    /// Quiet time before each fault.
    pub interval: Duration,
    /// How long each fault lasts.
    pub hold: Duration,
}

/// Injects faults until `until`, then leaves the cluster whole.
pub async fn run(
    target: &Mutex<Target>,
    schedule: &Schedule,
    history: &History,
    until: tokio::time::Instant,
    seed: u64,
) {
    let mut rng = Rng::new(seed);
    if schedule.kinds.is_empty() {
        return;
    }
    while tokio::time::Instant::now() + schedule.interval + schedule.hold < until {
        tokio::time::sleep(schedule.interval).await;
        let kind = *rng.pick(&schedule.kinds);
        let start_us = history.now_us();
        let what = match inject(target, kind, schedule.hold, &mut rng).await {
            Ok(what) => what,
            Err(e) => format!("{} failed: {e}", kind.name()),
        };
        println!("[{:>7.1} s] {what}", start_us as f64 / 1e6);
        history.record(Entry::Fault(Fault { what, kind: kind.name().into(), start_us, end_us: history.now_us() }));
    }
}

/// Injects one fault, holds it, heals it; describes what was done.
async fn inject(target: &Mutex<Target>, kind: FaultKind, hold: Duration, rng: &mut Rng) -> anyhow::Result<String> {
    let servers = target.lock().await.servers();
    let storage: Vec<Server> = servers.iter().filter(|s| s.role == Role::Storage).cloned().collect();
    let index: Vec<Server> = servers.iter().filter(|s| s.role == Role::Index).cloned().collect();
    let lever = |f: fn(&mut Target, &Server) -> anyhow::Result<()>, s: Server| async move {
        let mut t = target.lock().await;
        tokio::task::block_in_place(|| f(&mut t, &s))
    };
    match kind {
        FaultKind::KillLeader | FaultKind::KillStorage | FaultKind::KillIndex => {
            let (victim, why) = match kind {
                FaultKind::KillLeader => leader(target, rng).await?,
                FaultKind::KillStorage => (rng.pick(&storage).clone(), String::new()),
                _ => (rng.pick(&index).clone(), String::new()),
            };
            lever(Target::kill, victim.clone()).await?;
            tokio::time::sleep(hold).await;
            lever(Target::start, victim.clone()).await?;
            Ok(format!("killed {}{why} for {hold:?}", victim.name))
        }
        FaultKind::PauseLeader | FaultKind::PauseStorage => {
            let (victim, why) = match kind {
                FaultKind::PauseLeader => leader(target, rng).await?,
                _ => (rng.pick(&storage).clone(), String::new()),
            };
            lever(Target::pause, victim.clone()).await?;
            tokio::time::sleep(hold).await;
            lever(Target::resume, victim.clone()).await?;
            Ok(format!("paused {}{why} for {hold:?}", victim.name))
        }
        FaultKind::PartitionStorage | FaultKind::PartitionMajority | FaultKind::PartitionIndex => {
            let side: Vec<Server> = match kind {
                FaultKind::PartitionStorage => vec![rng.pick(&storage).clone()],
                FaultKind::PartitionIndex => vec![rng.pick(&index).clone()],
                _ => {
                    let mut minority = storage.clone();
                    while minority.len() > (storage.len() - 1) / 2 {
                        minority.remove(rng.below(minority.len()));
                    }
                    minority.push(rng.pick(&index).clone());
                    minority
                }
            };
            let names: Vec<&str> = side.iter().map(|s| s.name.as_str()).collect();
            {
                let mut t = target.lock().await;
                tokio::task::block_in_place(|| t.partition(&side))?;
            }
            tokio::time::sleep(hold).await;
            let mut t = target.lock().await;
            tokio::task::block_in_place(|| t.heal())?;
            Ok(format!("cut [{}] off from the other servers for {hold:?}", names.join(", ")))
        }
        FaultKind::RestartAll => {
            for s in &servers {
                lever(Target::kill, s.clone()).await?;
            }
            for s in &servers {
                lever(Target::start, s.clone()).await?;
            }
            Ok(format!("killed all {} servers and started them again", servers.len()))
        }
        FaultKind::RollingRestart => {
            for s in &servers {
                lever(Target::stop, s.clone()).await?;
                lever(Target::start, s.clone()).await?;
                target.lock().await.wait_healthy(READY_DEADLINE).await?;
            }
            Ok(format!("restarted all {} servers one by one", servers.len()))
        }
    }
}

/// The leader of a random shard, from `SHOW SHARDS`.
async fn leader(target: &Mutex<Target>, rng: &mut Rng) -> anyhow::Result<(Server, String)> {
    let connector = target.lock().await.connector();
    let shards =
        tokio::time::timeout(READY_DEADLINE, async { connector.client().await?.execute("SHOW SHARDS", &[]).await })
            .await
            .map_err(|_| anyhow::anyhow!("no answer to SHOW SHARDS"))??;
    let led: Vec<(i64, i64)> =
        shards.rows.iter().filter_map(|r| Some((r.get::<i64>(0).ok()?, r.get::<i64>(SHARD_LEADER).ok()?))).collect();
    if led.is_empty() {
        anyhow::bail!("no shard has a leader");
    }
    let (group, node) = *rng.pick(&led);
    let server = target.lock().await.storage_node(node as u64).ok_or_else(|| anyhow::anyhow!("no node {node}"))?;
    Ok((server, format!(" (leader of group {group})")))
}
