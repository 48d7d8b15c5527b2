//! The workloads: what the client processes do, and what must hold of
//! the history they leave.
//!
//! | workload | operations | checked |
//! | --- | --- | --- |
//! | `bank` | transfers between 8 accounts (explicit transactions, and single multi-shard UPDATEs); reads of every balance inside and outside transactions | every read sees the total; the final total is the initial one |
//! | `set` | multi-row INSERTs of unique values, spanning shards | every acknowledged insert present exactly once; none failed present; every statement all or nothing; nothing invented |
//! | `register` | read, write and compare-and-set of integer registers | linearizability, key by key (Wing & Gong search) |
//! | `counter` | increments and reads of counters | every read between the increments acknowledged before it began and those invoked before it ended; none lost |
//! | `ddl` | CREATE and DROP of a few tables (each a transaction over every shard) | at the end, each table on every shard or on none |
//!
//! Each workload owns its table, created afresh by `setup` (dropped first
//! if an earlier run left it).

mod bank;
mod counter;
mod ddl;
mod register;
mod set;

use std::sync::atomic::{AtomicU64, Ordering};

use drsdb_client::{Client, Error, ResultSet, Value};

use super::history::{Answer, Call, Op, Outcome};
use drsdb_sql_tests::rng::Rng;

/// A workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Conservation of money across shards.
    Bank,
    /// Acknowledged inserts survive, once, all or nothing.
    Set,
    /// Linearizable registers.
    Register,
    /// No lost or invented increments.
    Counter,
    /// Schema changes on every shard or on none.
    Ddl,
}

impl Kind {
    /// Its name in the summary.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Bank => "bank",
            Kind::Set => "set",
            Kind::Register => "register",
            Kind::Counter => "counter",
            Kind::Ddl => "ddl",
        }
    }
}

/// A failed call: the error, and what it means for the call's effect.
#[derive(Debug)]
pub struct Failure {
    /// The error the client saw.
    pub error: String,
    /// Whether the call may have taken effect.
    pub outcome: Outcome,
}

impl Failure {
    /// Classifies an error from a statement that `writes` (or not): a read
    /// that failed changed nothing; a write failed for sure only when the
    /// cluster said it refused it (bad input, a conflict to retry, a
    /// replica that is not the leader, a stale plan). Anything else (no
    /// server answered, the connection broke, a timeout) leaves the
    /// outcome unknown.
    pub fn of(writes: bool, error: Error) -> Failure {
        let definite = !writes
            || matches!(
                error,
                Error::InvalidInput(_) | Error::Retryable(_) | Error::NotLeader { .. } | Error::StaleSchema { .. }
            );
        Failure { error: error.to_string(), outcome: if definite { Outcome::Fail } else { Outcome::Unknown } }
    }
}

/// A workload with its run-wide counters.
pub struct Workload {
    kind: Kind,
    /// Calls generated so far (batch numbers, register generations).
    generated: AtomicU64,
}

impl Workload {
    /// A fresh workload.
    pub fn new(kind: Kind) -> Workload {
        Workload { kind, generated: AtomicU64::new(0) }
    }

    /// Which workload it is.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Creates its table (dropping an old one) and initial rows.
    pub async fn setup(&self, client: &mut Client) -> drsdb_client::Result<()> {
        let script = match self.kind {
            Kind::Bank => bank::setup(),
            Kind::Set => set::SETUP.to_string(),
            Kind::Register => register::SETUP.to_string(),
            Kind::Counter => counter::setup(),
            Kind::Ddl => ddl::setup(),
        };
        client.execute_script(&script).await.map(drop)
    }

    /// The next call of a client process.
    pub fn generate(&self, rng: &mut Rng) -> Call {
        let n = self.generated.fetch_add(1, Ordering::Relaxed);
        match self.kind {
            Kind::Bank => bank::generate(rng),
            Kind::Set => set::generate(rng, n),
            Kind::Register => register::generate(rng, n),
            Kind::Counter => counter::generate(rng),
            Kind::Ddl => ddl::generate(rng),
        }
    }

    /// The calls that read the final state, once the faults are healed.
    pub fn final_calls(&self) -> Vec<Call> {
        match self.kind {
            Kind::Bank => vec![Call::ReadBalances { in_txn: false }],
            Kind::Set => vec![Call::ReadSet],
            Kind::Register => Vec::new(),
            Kind::Counter => counter::final_calls(),
            Kind::Ddl => ddl::final_calls(),
        }
    }

    /// Runs `call`.
    pub async fn invoke(&self, client: &mut Client, call: &Call) -> Result<Answer, Failure> {
        match call {
            Call::Transfer { .. } | Call::ReadBalances { .. } => bank::invoke(client, call).await,
            Call::Add { .. } | Call::ReadSet => set::invoke(client, call).await,
            Call::Read { .. } | Call::Write { .. } | Call::Cas { .. } => register::invoke(client, call).await,
            Call::Increment { .. } | Call::ReadCounter { .. } => counter::invoke(client, call).await,
            Call::Ddl { .. } | Call::ProbeTables => ddl::invoke(client, call).await,
        }
    }

    /// Checks the history.
    pub fn check(&self, ops: &[Op]) -> Check {
        match self.kind {
            Kind::Bank => bank::check(ops),
            Kind::Set => set::check(ops),
            Kind::Register => register::check(ops),
            Kind::Counter => counter::check(ops),
            Kind::Ddl => ddl::check(ops),
        }
    }
}

/// Violations printed in full (all are counted).
const SHOWN: usize = 8;

/// What checking a history found.
#[derive(Debug, Default)]
pub struct Check {
    /// Invariant violations.
    pub violations: u64,
    /// The first few, described.
    pub shown: Vec<String>,
    /// Histories the checker could not decide (never counted as passing).
    pub inconclusive: u64,
}

impl Check {
    /// Records a violation.
    fn found(&mut self, what: String) {
        self.violations += 1;
        if self.shown.len() < SHOWN {
            self.shown.push(what);
        }
    }
}

/// Runs one statement, classifying its failure.
async fn run(client: &mut Client, sql: &str, params: &[Value], writes: bool) -> Result<ResultSet, Failure> {
    client.execute(sql, params).await.map_err(|e| Failure::of(writes, e))
}

/// Runs `body` inside BEGIN … COMMIT. A failure before COMMIT leaves
/// nothing committed (the transaction is rolled back); a failed COMMIT
/// leaves the outcome unknown, unless the cluster said it refused it.
async fn in_transaction<T>(
    client: &mut Client,
    body: impl AsyncFnOnce(&mut Client) -> Result<T, Failure>,
) -> Result<T, Failure> {
    run(client, "BEGIN", &[], false).await?;
    let result = match body(client).await {
        Ok(value) => value,
        Err(failure) => {
            if client.in_transaction() {
                let _ = client.execute("ROLLBACK", &[]).await;
            }
            return Err(Failure { outcome: Outcome::Fail, ..failure });
        }
    };
    run(client, "COMMIT", &[], true).await?;
    Ok(result)
}

/// The integer in column `i` of `row`.
fn integer(row: &drsdb_client::Row, i: usize) -> Result<i64, Failure> {
    row.get::<i64>(i).map_err(|e| Failure { error: format!("unexpected value: {e}"), outcome: Outcome::Fail })
}

/// The operations of `ops` that completed with an answer.
fn answered(ops: &[Op]) -> impl Iterator<Item = (&Op, &Answer)> {
    ops.iter().filter_map(|o| match (&o.outcome, &o.answer) {
        (Outcome::Ok, Some(a)) => Some((o, a)),
        _ => None,
    })
}

/// Seconds since the run began, for messages.
fn secs(us: u64) -> String {
    format!("{:.3} s", us as f64 / 1e6)
}
