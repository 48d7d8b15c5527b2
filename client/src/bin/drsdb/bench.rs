//! `drsdb bench`: throughput and latency of three workloads against a
//! cluster, and the same workloads against plain SQLite on one file in the
//! same run, so that figures can be quoted as ratios on a noisy machine.
//!
//! Workloads (each at `--concurrency` sessions, `--ops` statements):
//! - single-row inserts (`INSERT … VALUES (?, ?)`),
//! - batched inserts (one statement of `--batch` rows),
//! - point selects by primary key.
//!
//! The SQLite baseline uses one connection per worker thread on a WAL file
//! with `synchronous = FULL`, so that both sides make every acknowledged
//! write durable.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drsdb_client::{Client, Value};

use crate::ConnectArgs;

/// Options of `drsdb bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Concurrent sessions (cluster) or threads (SQLite).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Statements per workload.
    #[arg(long, default_value_t = 2000)]
    ops: usize,
    /// Rows per statement in the batched-insert workload.
    #[arg(long, default_value_t = 100)]
    batch: usize,
}

/// What one workload measured.
struct Measure {
    ops: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Measure {
    fn throughput(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> f64 {
        let mut l = self.latencies.clone();
        l.sort();
        let i = ((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1;
        l[i].as_secs_f64() * 1e3
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Workload {
    Insert,
    BatchInsert,
    PointSelect,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Insert => "single-row insert",
            Workload::BatchInsert => "batched insert",
            Workload::PointSelect => "point select",
        }
    }

    /// The statement and parameters of operation `i` (keys `k` are unique
    /// per insert; selects read keys written by the single-row inserts).
    fn statement(self, table: &str, i: usize, batch: usize, ops: usize) -> (String, Vec<Value>) {
        match self {
            Workload::Insert => (format!("INSERT INTO {table}(k, v) VALUES (?1, ?2)"), vec![key(i), payload(i)]),
            Workload::BatchInsert => {
                let tuples: Vec<String> = (0..batch).map(|j| format!("(?{}, ?{})", 2 * j + 1, 2 * j + 2)).collect();
                let params = (0..batch).flat_map(|j| [key(ops + i * batch + j), payload(j)]).collect();
                (format!("INSERT INTO {table}(k, v) VALUES {}", tuples.join(", ")), params)
            }
            Workload::PointSelect => (format!("SELECT v FROM {table} WHERE k = ?1"), vec![key((i * 7919) % ops)]),
        }
    }
}

fn key(i: usize) -> Value {
    Value::Text(format!("key-{i:010}"))
}

fn payload(i: usize) -> Value {
    Value::Text(format!("value {i} {}", "x".repeat(64)))
}

const WORKLOADS: [Workload; 3] = [Workload::Insert, Workload::BatchInsert, Workload::PointSelect];

async fn cluster_workload(
    clients: &mut Vec<Client>,
    w: Workload,
    table: &str,
    args: &BenchArgs,
) -> anyhow::Result<Measure> {
    let ops = args.ops;
    let started = Instant::now();
    let mut tasks = Vec::new();
    let workers = std::mem::take(clients);
    let n = workers.len();
    for (worker, mut client) in workers.into_iter().enumerate() {
        let table = table.to_string();
        let (batch, total) = (args.batch, args.ops);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            for i in (worker..ops).step_by(n) {
                let (sql, params) = w.statement(&table, i, batch, total);
                let t = Instant::now();
                client.execute(&sql, &params).await?;
                latencies.push(t.elapsed());
            }
            anyhow::Ok((client, latencies))
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        let (client, l) = t.await??;
        clients.push(client);
        latencies.extend(l);
    }
    Ok(Measure { ops, elapsed: started.elapsed(), latencies })
}

fn sqlite_workload(path: &Path, w: Workload, args: &BenchArgs) -> anyhow::Result<Measure> {
    let ops = args.ops;
    let path = Arc::new(path.to_path_buf());
    let started = Instant::now();
    let handles: Vec<_> = (0..args.concurrency)
        .map(|worker| {
            let path = path.clone();
            let (n, batch, total) = (args.concurrency, args.batch, args.ops);
            std::thread::spawn(move || -> anyhow::Result<Vec<Duration>> {
                let conn = rusqlite::Connection::open(path.as_path())?;
                conn.busy_timeout(Duration::from_secs(60))?;
                conn.pragma_update(None, "synchronous", "FULL")?;
                let mut latencies = Vec::new();
                for i in (worker..ops).step_by(n) {
                    let (sql, params) = w.statement("bench", i, batch, total);
                    let t = Instant::now();
                    let mut stmt = conn.prepare_cached(&sql)?;
                    let mut rows = stmt.query(rusqlite::params_from_iter(params.iter()))?;
                    while rows.next()?.is_some() {}
                    latencies.push(t.elapsed());
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for h in handles {
        latencies.extend(h.join().map_err(|_| anyhow::anyhow!("a SQLite worker panicked"))??);
    }
    Ok(Measure { ops, elapsed: started.elapsed(), latencies })
}

/// Runs the benchmark and prints a table.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.concurrency > 0 && args.ops > 0 && args.batch > 0,
        "concurrency, ops and batch must be positive"
    );
    let runtime = tokio::runtime::Runtime::new()?;
    let table = format!("bench_{}", unique_suffix());
    let baseline_dir = tempfile::tempdir()?;
    let baseline = baseline_dir.path().join("bench.db");
    {
        let conn = rusqlite::Connection::open(&baseline)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.execute_batch("CREATE TABLE bench(k TEXT PRIMARY KEY, v TEXT)")?;
    }
    println!(
        "drsdb bench: {} statements per workload, concurrency {}, batch {} rows; baseline: SQLite on one file (WAL, synchronous=FULL)",
        args.ops, args.concurrency, args.batch
    );
    println!("{:<18} {:>8} {:>8} {:>12} {:>10} {:>10}", "workload", "system", "stmts", "stmts/s", "p50 ms", "p99 ms");
    let results = runtime.block_on(async {
        let mut clients = Vec::new();
        for _ in 0..args.concurrency {
            clients.push(args.connect.client().await?);
        }
        clients[0].execute(&format!("CREATE TABLE {table}(k TEXT PRIMARY KEY, v TEXT)"), &[]).await?;
        let mut results = Vec::new();
        for w in WORKLOADS {
            let cluster = cluster_workload(&mut clients, w, &table, &args).await?;
            let sqlite = sqlite_workload(&baseline, w, &args)?;
            for (system, m) in [("drsdb", &cluster), ("sqlite", &sqlite)] {
                println!(
                    "{:<18} {:>8} {:>8} {:>12.1} {:>10.3} {:>10.3}",
                    w.name(),
                    system,
                    m.ops,
                    m.throughput(),
                    m.percentile(0.50),
                    m.percentile(0.99)
                );
            }
            results.push((w, cluster.throughput() / sqlite.throughput()));
        }
        clients[0].execute(&format!("DROP TABLE {table}"), &[]).await?;
        anyhow::Ok(results)
    })?;
    println!("throughput ratio drsdb / SQLite:");
    for (w, ratio) in results {
        println!("  {:<18} {ratio:.3}", w.name());
    }
    Ok(())
}

/// A suffix that keeps the benchmark's table apart from anyone else's.
fn unique_suffix() -> String {
    format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_micros())
}
