//! `faults`: the fault-injection suite. Runs workloads against a drsdb
//! cluster while a nemesis kills, pauses and partitions its servers,
//! records every operation in a history file, checks the history, and
//! exits non-zero when an invariant was violated. See `faults --help` and
//! README's "Testing under faults".

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

#[path = "../faults/mod.rs"]
mod faults;

use faults::nemesis::{FaultKind, Schedule};
use faults::target::Target;
use faults::workload::{Kind, Workload};

/// Run workloads against a drsdb cluster under faults and check the histories.
#[derive(Parser)]
struct Args {
    /// Workloads, run one after the other on the same cluster.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "set,register,counter,bank")]
    workload: Vec<Kind>,
    /// The cluster: `local` starts one (child processes); `compose`
    /// attaches to a running docker-compose cluster.
    #[arg(long, value_enum, default_value = "local")]
    target: TargetKind,
    /// Seconds each workload runs.
    #[arg(long, default_value_t = 60)]
    time: u64,
    /// Client processes (sessions).
    #[arg(long, default_value_t = 5)]
    concurrency: usize,
    /// Faults to inject, chosen at random one at a time (none: no faults).
    #[arg(long, value_enum, value_delimiter = ',')]
    faults: Vec<FaultKind>,
    /// Seconds between faults.
    #[arg(long, default_value_t = 5)]
    interval: u64,
    /// Seconds each fault is held.
    #[arg(long, default_value_t = 10)]
    hold: u64,
    /// Seconds an operation may take before its outcome counts as unknown.
    #[arg(long, default_value_t = 30)]
    op_timeout: u64,
    /// Milliseconds each client waits between operations.
    #[arg(long, default_value_t = 10)]
    think_ms: u64,
    /// Seed (default: from the clock; printed, to replay the choices).
    #[arg(long)]
    seed: Option<u64>,
    /// Where history files go.
    #[arg(long, default_value = "target/faults")]
    out: PathBuf,
    /// Workloads known to violate their invariants today: the run fails if
    /// they do NOT (so the checker is shown to catch them).
    #[arg(long, value_enum, value_delimiter = ',')]
    expect_violations: Vec<Kind>,
    /// local: data shards (default: 4).
    #[arg(long)]
    shards: Option<usize>,
    /// local: keep the cluster directory (logs, data).
    #[arg(long)]
    keep: bool,
    /// compose: the project name.
    #[arg(long, default_value = "drsdb")]
    project: String,
    /// compose: index servers as reachable from here.
    #[arg(long, value_delimiter = ',', default_value = "localhost:7201,localhost:7202")]
    connect: Vec<String>,
    /// compose: the client certificates (ca.pem, client.pem, client.key).
    #[arg(long, default_value = "drsdb-certs")]
    certs: PathBuf,
    /// Check a history file written earlier (with the one --workload that
    /// wrote it and the same --concurrency) instead of running.
    #[arg(long)]
    check: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TargetKind {
    Local,
    Compose,
}

fn main() -> ExitCode {
    if let Some(served) = drsdb_sql_tests::serve_if_server() {
        return served;
    }
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // On SIGINT or SIGTERM the run is dropped: the local cluster stops and
    // its directory goes; the history written so far stays.
    let interrupted = async {
        drsdb_common::logging::terminated().await;
        Err(anyhow::anyhow!("interrupted"))
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            r = run(args) => r,
            r = interrupted => r,
        }
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs every workload; true when each found what it should.
async fn run(args: Args) -> anyhow::Result<bool> {
    let seed = args.seed.unwrap_or_else(drsdb_sql_tests::rng::clock_seed);
    println!("seed {seed}");
    if let Some(path) = &args.check {
        let [kind] = args.workload.as_slice() else { anyhow::bail!("--check takes the one --workload that wrote it") };
        let check = faults::report(&Workload::new(*kind), faults::history::read(path)?, args.concurrency, None);
        return Ok(as_expected(&check, args.expect_violations.contains(kind)));
    }
    std::fs::create_dir_all(&args.out)?;
    let mut all_good = true;
    let mut results = Vec::new();
    for (i, kind) in args.workload.iter().enumerate() {
        // A fresh cluster per workload, so one's faults do not linger into
        // the next.
        let target = match args.target {
            TargetKind::Local => Target::local(args.shards, args.keep).await?,
            TargetKind::Compose => Target::compose(&args.project, args.connect.clone(), &args.certs)?,
        };
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        let run = faults::Run {
            workload: Workload::new(*kind),
            concurrency: args.concurrency,
            duration: Duration::from_secs(args.time),
            schedule: Schedule {
                kinds: args.faults.clone(),
                interval: Duration::from_secs(args.interval),
                hold: Duration::from_secs(args.hold),
            },
            op_timeout: Duration::from_secs(args.op_timeout),
            think: Duration::from_millis(args.think_ms),
            seed: seed.wrapping_add(i as u64),
            history: args.out.join(format!("{}-{stamp}.jsonl", kind.name())),
        };
        let check = run.run(target).await?;
        let expected = args.expect_violations.contains(kind);
        let good = as_expected(&check, expected);
        if expected && check.violations == 0 {
            println!("{}: expected violations (a known anomaly) but found none", kind.name());
        }
        all_good &= good;
        results.push((kind.name(), check.violations, good));
    }
    println!();
    for (name, violations, good) in results {
        println!("{name}: {violations} violations: {}", if good { "as expected" } else { "FAILED" });
    }
    Ok(all_good)
}

/// Whether a checked history is what was expected: decided, and with
/// violations exactly when they were expected (a known anomaly).
fn as_expected(check: &faults::workload::Check, violations_expected: bool) -> bool {
    (check.violations > 0) == violations_expected && check.inconclusive == 0
}
