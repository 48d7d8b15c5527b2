//! The fault-injection suite: client processes run a workload against a
//! cluster while a nemesis injects faults; every operation is recorded
//! in a history, which is then checked, Jepsen-style.
//!
//! The run: start (or attach to) the target; create the workload's table;
//! run `concurrency` client processes, each with its own session, for the
//! run's duration, while the nemesis injects a fault every `interval` and
//! heals it after `hold`; wait until the cluster is whole again; read the
//! final state (retrying until it answers); check the history; print the
//! summary; exit non-zero on any violation.
//!
//! An operation that times out or fails without the cluster saying it was
//! refused is recorded as `unknown`: a write may still take effect, and
//! the checkers allow for both. The process then opens a new session.
//!
//! Modules: `history` (what is recorded), `workload` (what clients do and
//! what must hold), `linearizable` (the register checker), `nemesis`
//! (the faults), `target` (local processes or compose containers),
//! `report` (the summary).

pub mod history;
pub mod linearizable;
pub mod nemesis;
pub mod report;
pub mod target;
pub mod workload;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use history::{Entry, History, Op, Outcome};
use nemesis::Schedule;
use target::{Connector, Target};
use workload::{Check, Failure, Workload};

use drsdb_sql_tests::rng::Rng;

/// How long the final reads may keep failing before the run gives up.
const FINAL_DEADLINE: Duration = Duration::from_secs(120);
/// Pause between attempts to connect or to read the final state.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// One run.
pub struct Run {
    /// The workload.
    pub workload: Workload,
    /// Client processes.
    pub concurrency: usize,
    /// How long the clients run.
    pub duration: Duration,
    /// The faults.
    pub schedule: Schedule,
    /// How long one operation may take before its outcome is unknown.
    pub op_timeout: Duration,
    /// Pause between one process's operations.
    pub think: Duration,
    /// Seed of the generators.
    pub seed: u64,
    /// The history file.
    pub history: PathBuf,
}

impl Run {
    /// Runs it against `target` and prints the summary.
    pub async fn run(self, target: Target) -> anyhow::Result<Check> {
        if self.schedule.kinds.iter().any(|k| k.partitions()) && !target.can_partition() {
            anyhow::bail!("partitions need the compose target (--target compose)");
        }
        let history = Arc::new(History::create(&self.history)?);
        let connector = target.connector();
        println!(
            "{} workload, {} clients, {:?}, on the {}; faults: {}",
            self.workload.kind().name(),
            self.concurrency,
            self.duration,
            target.describe(),
            match self.schedule.kinds.as_slice() {
                [] => "none".to_string(),
                kinds => format!(
                    "{} every {:?}, held {:?}",
                    kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(", "),
                    self.schedule.interval,
                    self.schedule.hold
                ),
            }
        );
        let mut setup_client = connect(&connector).await?;
        self.workload.setup(&mut setup_client).await?;
        drop(setup_client);

        let until = tokio::time::Instant::now() + self.duration;
        let target = Arc::new(Mutex::new(target));
        let workload = Arc::new(self.workload);
        let mut workers = Vec::new();
        for process in 0..self.concurrency {
            let (connector, workload, history) = (connector.clone(), workload.clone(), history.clone());
            let mut rng = Rng::for_case(self.seed, process as u64);
            let (timeout, think) = (self.op_timeout, self.think);
            workers.push(tokio::spawn(async move {
                let mut client = None;
                while tokio::time::Instant::now() < until {
                    let c = match client.as_mut() {
                        Some(c) => c,
                        None => match tokio::time::timeout(timeout, connector.client()).await {
                            Ok(Ok(c)) => client.insert(c),
                            _ => {
                                tokio::time::sleep(RETRY_PAUSE).await;
                                continue;
                            }
                        },
                    };
                    let call = workload.generate(&mut rng);
                    let op = invoke(&workload, c, call, process, &history, timeout).await;
                    if op.outcome == Outcome::Unknown {
                        client = None;
                    }
                    history.record(Entry::Op(op));
                    tokio::time::sleep(think).await;
                }
            }));
        }
        nemesis::run(&target, &self.schedule, &history, until, self.seed).await;
        for w in workers {
            w.await?;
        }
        let run_end_us = history.now_us();

        let target = target.lock().await;
        target.wait_healthy(target::READY_DEADLINE).await?;
        final_reads(&workload, &connector, &history, self.concurrency, self.op_timeout).await?;

        let check = report(&workload, history.finish(), self.concurrency, Some(run_end_us));
        println!("history: {}", self.history.display());
        if let Some(logs) = target.logs() {
            println!("server logs: {}", logs.display());
        }
        Ok(check)
    }
}

/// Connects, retrying until the cluster answers.
async fn connect(connector: &Connector) -> anyhow::Result<drsdb_client::Client> {
    let deadline = tokio::time::Instant::now() + FINAL_DEADLINE;
    loop {
        match connector.client().await {
            Ok(c) => return Ok(c),
            Err(e) if tokio::time::Instant::now() >= deadline => anyhow::bail!("cannot connect: {e}"),
            Err(_) => tokio::time::sleep(RETRY_PAUSE).await,
        }
    }
}

/// Runs one call and records how it went.
async fn invoke(
    workload: &Workload,
    client: &mut drsdb_client::Client,
    call: history::Call,
    process: usize,
    history: &History,
    timeout: Duration,
) -> Op {
    let start_us = history.now_us();
    let result = match tokio::time::timeout(timeout, workload.invoke(client, &call)).await {
        Ok(result) => result,
        Err(_) => Err(Failure {
            error: format!("no answer within {timeout:?}"),
            outcome: if call.writes() { Outcome::Unknown } else { Outcome::Fail },
        }),
    };
    let (outcome, answer, error) = match result {
        Ok(answer) => (Outcome::Ok, Some(answer), None),
        Err(f) => (f.outcome, None, Some(f.error)),
    };
    Op { process, call, outcome, answer, error, start_us, end_us: history.now_us() }
}

/// Reads the final state, each call retried until it answers.
async fn final_reads(
    workload: &Workload,
    connector: &Connector,
    history: &History,
    process: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + FINAL_DEADLINE;
    for call in workload.final_calls() {
        loop {
            let mut client = connect(connector).await?;
            let op = invoke(workload, &mut client, call.clone(), process, history, timeout).await;
            let (ok, error) = (op.outcome == Outcome::Ok, op.error.clone());
            history.record(Entry::Op(op));
            if ok {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("the final read {call:?} kept failing: {}", error.unwrap_or_default());
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
    Ok(())
}

/// Checks a history and prints the summary. `run_end_us`: when the
/// clients stopped (default: the last operation's end).
pub fn report(workload: &Workload, entries: Vec<Entry>, processes: usize, run_end_us: Option<u64>) -> Check {
    let mut ops = Vec::new();
    let mut faults = Vec::new();
    for e in entries {
        match e {
            Entry::Op(op) => ops.push(op),
            Entry::Fault(f) => faults.push(f),
        }
    }
    let check = workload.check(&ops);
    let end =
        run_end_us.unwrap_or_else(|| ops.iter().filter(|o| o.process < processes).map(|o| o.end_us).max().unwrap_or(0));
    let stalls = report::stalls(&ops, &faults, processes, end);
    report::print(workload.kind().name(), &ops, &check, &stalls);
    check
}
