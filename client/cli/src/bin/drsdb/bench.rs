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
//!
//! `--workloads` picks among them. With `--peers etcd,postgres`, the bench
//! starts those servers (module `peers`) and runs the same workloads
//! against them too, printing drsdb's throughput as a ratio of each.
//!
//! Then the transaction workloads (module `transactions`, `--txns` per
//! writer): one writer against two on disjoint shards, one-shard COMMITs.
//!
//! With `--rows N`, analytic workloads follow on a table of N rows loaded
//! through the driver (and the same rows in SQLite): a full-table
//! aggregate, a GROUP BY, a top-10 ORDER BY … LIMIT and point selects by
//! key, each checked against SQLite's answer, with the plans (EXPLAIN) and
//! how evenly the rows spread over the shards; then a scan of every row,
//! streamed from the storage servers to this process (direct streaming),
//! checked by count and sums against SQLite, with the index servers'
//! `rows_sent` metric before and after (it must not move), this process's
//! peak memory, and the same scan relayed by the index servers for
//! comparison.

mod peers;
mod transactions;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drsdb_client::{Client, LoadOptions, Value};

use crate::{import, ConnectArgs};

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
    /// Rows of the analytic workloads' table (0 leaves them out).
    #[arg(long, default_value_t = 0)]
    rows: usize,
    /// Explicit transactions per writer in the transaction workloads (0
    /// leaves them out).
    #[arg(long, default_value_t = 200)]
    txns: usize,
    /// The statement workloads to run, in this order (point selects read
    /// what single-row inserts wrote).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = WORKLOADS)]
    workloads: Vec<Workload>,
    /// Systems that run the same workloads in the same run, for ratios:
    /// started by the bench from Debian's packages (`peers`).
    #[arg(long, value_enum, value_delimiter = ',')]
    peers: Vec<peers::PeerKind>,
}

/// Runs of each analytic query (latencies are their percentiles).
const ANALYTIC_RUNS: usize = 5;
/// Largest deviation of a shard's row count from the mean (a fraction)
/// that the analytic load accepts.
const MAX_SPREAD: f64 = 0.10;
/// Point selects in the analytic part.
const POINT_SELECTS: usize = 2000;
/// Runs of the full scan, streamed directly.
const SCAN_RUNS: usize = 3;
/// The full scan; `{t}` is the table.
const SCAN: &str = "SELECT id, grp, amount, label FROM {t}";

/// The analytic queries, by name; `{t}` is the table.
const ANALYTIC_QUERIES: [(&str, &str); 3] = [
    ("full-table aggregate", "SELECT count(*), sum(amount), avg(amount), min(label), max(amount) FROM {t}"),
    ("group by (100 groups)", "SELECT grp, count(*), sum(amount) FROM {t} GROUP BY grp ORDER BY grp"),
    ("top 10", "SELECT id, amount, label FROM {t} ORDER BY amount DESC, id LIMIT 10"),
];

/// Row `i` of the analytic table: id, group, amount, label.
fn fact(i: usize) -> [Value; 4] {
    [
        Value::Integer(i as i64 + 1),
        Value::Integer((i % 100) as i64),
        Value::Integer(((i * 7919) % 10007) as i64),
        Value::Text(format!("row {i:07}")),
    ]
}

/// Loads, checks and times the analytic workloads; prints their figures.
async fn analytics(clients: &mut [Client], baseline: &Path, rows: usize) -> anyhow::Result<Vec<(String, f64)>> {
    let table = format!("facts_{}", unique_suffix());
    let create = "CREATE TABLE {t}(id INTEGER PRIMARY KEY, grp INTEGER, amount INTEGER, label TEXT)";
    clients[0].execute(&create.replace("{t}", &table), &[]).await?;
    let mut sqlite = rusqlite::Connection::open(baseline)?;
    sqlite.execute_batch(&create.replace("{t}", "facts"))?;

    // Load: the rows as a CSV file, imported as `drsdb import` does, and
    // read into SQLite in one transaction.
    let csv_path = baseline.with_extension("csv");
    {
        let mut out = csv::Writer::from_path(&csv_path)?;
        out.write_record(["id", "grp", "amount", "label"])?;
        for i in 0..rows {
            let [id, grp, amount, label] = fact(i);
            out.write_record([id.to_string(), grp.to_string(), amount.to_string(), label.to_string()])?;
        }
        out.flush()?;
    }
    let started = Instant::now();
    let options = LoadOptions { parallel: clients.len(), ..LoadOptions::default() };
    let format = import::Format::csv_with_header();
    import::import(&mut clients[0], &csv_path, &table, &format, options, false).await?;
    let cluster_load = rows as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let txn = sqlite.transaction()?;
    {
        let mut insert = txn.prepare("INSERT INTO facts(id, grp, amount, label) VALUES (?1, ?2, ?3, ?4)")?;
        let mut input = csv::Reader::from_path(&csv_path)?;
        for record in input.records() {
            insert.execute(rusqlite::params_from_iter(record?.iter()))?;
        }
    }
    txn.commit()?;
    let sqlite_load = rows as f64 / started.elapsed().as_secs_f64();
    std::fs::remove_file(&csv_path)?;
    println!(
        "\nanalytic table: {rows} rows imported from CSV at {cluster_load:.0} rows/s (`drsdb import`, {} batches in \
         flight; SQLite, the same file in one transaction: {sqlite_load:.0} rows/s, ratio {:.4})",
        clients.len(),
        cluster_load / sqlite_load
    );

    // Spread over the shards.
    let spread = clients[0].execute(&format!("SHOW SHARDS OF {table}"), &[]).await?;
    let counts: Vec<i64> = spread.rows.iter().map(|r| r.get::<i64>(1)).collect::<Result<_, _>>()?;
    let mean = counts.iter().sum::<i64>() as f64 / counts.len().max(1) as f64;
    let worst = counts.iter().map(|c| (*c as f64 - mean).abs() / mean.max(1.0)).fold(0.0, f64::max);
    println!("rows per shard: {counts:?}; largest deviation from the mean {:.2}%", worst * 100.0);
    anyhow::ensure!(worst <= MAX_SPREAD, "rows are spread unevenly over the shards: {counts:?}");

    let mut ratios = Vec::new();
    println!("{:<22} {:>8} {:>10} {:>10}", "query", "system", "p50 ms", "p99 ms");
    for (name, sql) in ANALYTIC_QUERIES {
        let ours = sql.replace("{t}", &table);
        let explained = clients[0].execute(&format!("EXPLAIN {ours}"), &[]).await?;
        for r in &explained.rows {
            println!("  plan: {}", r.get::<String>(0)?);
        }
        let mut cluster = Vec::new();
        let mut answer = Vec::new();
        for _ in 0..ANALYTIC_RUNS {
            let t = Instant::now();
            let rs = clients[0].execute(&ours, &[]).await?;
            cluster.push(t.elapsed());
            answer = rs.rows.iter().map(|r| r.values().to_vec()).collect();
        }
        let mut baseline_times = Vec::new();
        let mut expected = Vec::new();
        for _ in 0..ANALYTIC_RUNS {
            let t = Instant::now();
            let mut stmt = sqlite.prepare_cached(&sql.replace("{t}", "facts"))?;
            let width = stmt.column_count();
            expected = stmt
                .query_map([], |r| (0..width).map(|i| r.get_ref(i).map(Value::from)).collect::<Result<Vec<_>, _>>())?
                .collect::<Result<Vec<_>, _>>()?;
            baseline_times.push(t.elapsed());
        }
        anyhow::ensure!(answer == expected, "{name}: drsdb answered {answer:?}, SQLite {expected:?}");
        let cluster = Measure { ops: ANALYTIC_RUNS, elapsed: cluster.iter().sum(), latencies: cluster };
        let baseline = Measure { ops: ANALYTIC_RUNS, elapsed: baseline_times.iter().sum(), latencies: baseline_times };
        for (system, m) in [("drsdb", &cluster), ("sqlite", &baseline)] {
            println!("{name:<22} {system:>8} {:>10.1} {:>10.1}", m.percentile(0.5), m.percentile(0.99));
        }
        println!("  same answer as SQLite ({} rows)", expected.len());
        ratios.push((name.to_string(), cluster.throughput() / baseline.throughput()));
    }

    // Point selects by key, one session.
    let select = "SELECT label FROM {t} WHERE id = ?1";
    let key = |i: usize| Value::Integer(((i * 7919) % rows) as i64 + 1);
    let mut latencies = Vec::new();
    let started = Instant::now();
    for i in 0..POINT_SELECTS {
        let t = Instant::now();
        let rs = clients[0].execute(&select.replace("{t}", &table), &[key(i)]).await?;
        anyhow::ensure!(rs.rows.len() == 1, "point select of key {:?} found {} rows", key(i), rs.rows.len());
        latencies.push(t.elapsed());
    }
    let cluster = Measure { ops: POINT_SELECTS, elapsed: started.elapsed(), latencies };
    let mut latencies = Vec::new();
    let started = Instant::now();
    for i in 0..POINT_SELECTS {
        let t = Instant::now();
        let mut stmt = sqlite.prepare_cached(&select.replace("{t}", "facts"))?;
        let _: String = stmt.query_row([key(i)], |r| r.get(0))?;
        latencies.push(t.elapsed());
    }
    let baseline = Measure { ops: POINT_SELECTS, elapsed: started.elapsed(), latencies };
    for (system, m) in [("drsdb", &cluster), ("sqlite", &baseline)] {
        println!("{:<22} {system:>8} {:>10.3} {:>10.3}", "point select by key", m.percentile(0.5), m.percentile(0.99));
    }
    ratios.push(("point select by key".into(), cluster.throughput() / baseline.throughput()));
    ratios.extend(full_scan(&mut clients[0], &sqlite, &table).await?);
    clients[0].execute(&format!("DROP TABLE {table}"), &[]).await?;
    Ok(ratios)
}

/// Count and sums of a scan's rows (id, grp, amount), computed as they
/// stream by: nothing is kept.
#[derive(Debug, Default, PartialEq)]
struct Digest {
    rows: i64,
    ids: i64,
    groups: i64,
    amounts: i64,
}

impl Digest {
    fn add(&mut self, values: &[Value]) {
        let int = |i: usize| match values.get(i) {
            Some(Value::Integer(v)) => *v,
            _ => 0,
        };
        self.rows += 1;
        self.ids = self.ids.wrapping_add(int(0));
        self.groups += int(1);
        self.amounts += int(2);
    }
}

/// Scans `table` through `client`; says whether the rows came directly.
async fn scan(client: &mut Client, table: &str) -> anyhow::Result<(Digest, bool, Duration)> {
    let t = Instant::now();
    let mut rows = client.query(&SCAN.replace("{t}", table), &[]).await?;
    let direct = rows.is_direct();
    let mut digest = Digest::default();
    while let Some(r) = rows.next().await? {
        digest.add(r.values());
    }
    Ok((digest, direct, t.elapsed()))
}

/// Rows each index server has sent to clients (`SHOW METRICS`), by server:
/// asked until every server of the rotation answered.
async fn rows_sent(client: &mut Client) -> anyhow::Result<std::collections::BTreeMap<String, i64>> {
    let servers = client.servers().len();
    let mut sent = std::collections::BTreeMap::new();
    for _ in 0..servers * 3 {
        for r in client.execute("SHOW METRICS", &[]).await?.rows {
            if r.get::<String>(1)? == "rows_sent" {
                sent.insert(r.get::<String>(0)?, r.get::<i64>(2)?);
            }
        }
        if sent.len() >= servers {
            break;
        }
    }
    Ok(sent)
}

/// This process's peak resident memory in MiB (Linux), if known.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// The full scan, direct and relayed, against SQLite's.
async fn full_scan(
    client: &mut Client,
    sqlite: &rusqlite::Connection,
    table: &str,
) -> anyhow::Result<Vec<(String, f64)>> {
    let sql = SCAN.replace("{t}", table);
    for r in client.execute(&format!("EXPLAIN {sql}"), &[]).await?.rows {
        println!("  plan: {}", r.get::<String>(0)?);
    }
    let mut baseline_times = Vec::new();
    let mut expected = Digest::default();
    for _ in 0..SCAN_RUNS {
        let t = Instant::now();
        let mut stmt = sqlite.prepare_cached(&SCAN.replace("{t}", "facts"))?;
        let mut rows = stmt.query([])?;
        expected = Digest::default();
        while let Some(r) = rows.next()? {
            expected.add(&(0..3).map(|i| r.get_ref(i).map(Value::from)).collect::<Result<Vec<_>, _>>()?);
        }
        baseline_times.push(t.elapsed());
    }
    let before = rows_sent(client).await?;
    let memory_before = peak_rss_mib();
    let mut times = Vec::new();
    for _ in 0..SCAN_RUNS {
        let (digest, direct, elapsed) = scan(client, table).await?;
        anyhow::ensure!(direct, "the full scan was not streamed from the storage servers");
        anyhow::ensure!(digest == expected, "full scan: drsdb read {digest:?}, SQLite {expected:?}");
        times.push(elapsed);
    }
    let after = rows_sent(client).await?;
    let relayed_by_index: i64 = after.iter().map(|(s, n)| n - before.get(s).copied().unwrap_or(0)).sum();
    // The SHOW METRICS statements themselves are not counted.
    anyhow::ensure!(relayed_by_index == 0, "index servers sent {relayed_by_index} rows during direct scans");
    println!(
        "  full scan streamed directly {SCAN_RUNS} times: {} rows each, same count and sums as SQLite; rows sent by \
         index servers meanwhile: {relayed_by_index} (rows_sent before {before:?}, after {after:?})",
        expected.rows
    );
    if let (Some(b), Some(a)) = (memory_before, peak_rss_mib()) {
        println!("  client peak memory: {b:.0} MiB before the scans, {a:.0} MiB after");
    }
    client.set_direct(false);
    let relayed = scan(client, table).await;
    client.set_direct(true);
    let (digest, direct, relayed_time) = relayed?;
    anyhow::ensure!(!direct && digest == expected, "relayed full scan: {digest:?}, SQLite {expected:?}");
    let cluster = Measure { ops: SCAN_RUNS, elapsed: times.iter().sum(), latencies: times };
    let baseline = Measure { ops: SCAN_RUNS, elapsed: baseline_times.iter().sum(), latencies: baseline_times };
    let relayed = Measure { ops: 1, elapsed: relayed_time, latencies: vec![relayed_time] };
    for (system, m) in [("drsdb", &cluster), ("relayed", &relayed), ("sqlite", &baseline)] {
        println!("{:<22} {system:>8} {:>10.1} {:>10.1}", "full scan", m.percentile(0.5), m.percentile(0.99));
    }
    Ok(vec![
        ("full scan (direct)".into(), cluster.throughput() / baseline.throughput()),
        ("full scan (relayed)".into(), relayed.throughput() / baseline.throughput()),
    ])
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

/// A statement workload.
#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
enum Workload {
    /// Single-row inserts.
    Insert,
    /// Inserts of `--batch` rows per statement.
    BatchInsert,
    /// Point selects by primary key.
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
        let mut running = Vec::new();
        for kind in &args.peers {
            let peer = peers::Peer::start(*kind).await?;
            peer.prepare().await?;
            running.push(peer);
        }
        let mut clients = Vec::new();
        for _ in 0..args.concurrency {
            clients.push(args.connect.client().await?);
        }
        clients[0].execute(&format!("CREATE TABLE {table}(k TEXT PRIMARY KEY, v TEXT)"), &[]).await?;
        let mut ratios = Vec::new();
        for &w in &args.workloads {
            let cluster = cluster_workload(&mut clients, w, &table, &args).await?;
            let mut others = vec![("sqlite", sqlite_workload(&baseline, w, &args)?)];
            for peer in running.iter().filter(|p| p.runs(w)) {
                others.push((peer.kind.name(), peer.workload(w, args.concurrency, args.ops, args.batch).await?));
            }
            for (system, m) in std::iter::once(("drsdb", &cluster)).chain(others.iter().map(|(s, m)| (*s, m))) {
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
            for (system, m) in &others {
                ratios.push((format!("{} / {system}", w.name()), cluster.throughput() / m.throughput()));
            }
        }
        clients[0].execute(&format!("DROP TABLE {table}"), &[]).await?;
        if args.txns > 0 {
            transactions::run(&mut clients, args.txns).await?;
        }
        if args.rows > 0 {
            let analytic = analytics(&mut clients, &baseline, args.rows).await?;
            ratios.extend(analytic.into_iter().map(|(name, r)| (format!("{name} / sqlite"), r)));
        }
        anyhow::Ok(ratios)
    })?;
    println!("throughput ratio drsdb / other system (same run):");
    for (name, ratio) in results {
        println!("  {name:<34} {ratio:.4}");
    }
    Ok(())
}

/// A suffix that keeps the benchmark's table apart from anyone else's.
fn unique_suffix() -> String {
    format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_micros())
}
