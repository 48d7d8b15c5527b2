//! The transaction workloads of `drsdb bench`: explicit transactions of
//! two UPDATEs, and what they cost.
//!
//! - one writer, its transactions on two shards (the baseline);
//! - two writers at once, each on two shards of its own (disjoint): a
//!   transaction holds only the shards it touches, so they run side by
//!   side, and their total rate is the baseline's times about 2;
//! - one writer, its transactions on one shard: COMMIT is one Raft entry,
//!   with no prepare round; and two such writers, on a shard each;
//! - one writer of autocommit UPDATEs on one shard: one Raft round, the
//!   floor of what a COMMIT can cost.
//!
//! Each prints transactions per second, p50/p99 of a whole transaction and
//! of its COMMIT, and the Raft entries the data shards' leaders appended
//! per transaction (the writer alone on the cluster: entries of concurrent
//! writers may share one).

use std::time::{Duration, Instant};

use drsdb_client::{Client, Value};

use super::{unique_suffix, Measure};

/// Rows of the accounts table, enough to find two on every shard.
const ACCOUNTS: i64 = 256;

/// What one writer runs: transactions of an UPDATE of each key in turn, or
/// (`autocommit`) the UPDATEs alone.
#[derive(Clone)]
struct Writer {
    keys: Vec<i64>,
    autocommit: bool,
}

/// One workload's figures.
struct Figures {
    txns: Measure,
    commits: Vec<Duration>,
    entries: i64,
}

/// Runs the transaction workloads with `txns` transactions per writer and
/// prints their figures.
pub(super) async fn run(clients: &mut [Client], txns: usize) -> anyhow::Result<()> {
    let table = format!("accounts_{}", unique_suffix());
    let client = &mut clients[0];
    client.execute(&format!("CREATE TABLE {table}(id INTEGER PRIMARY KEY, bal INTEGER)"), &[]).await?;
    let rows: Vec<String> = (1..=ACCOUNTS).map(|i| format!("({i}, 0)")).collect();
    client.execute(&format!("INSERT INTO {table} VALUES {}", rows.join(", ")), &[]).await?;
    // Two keys of each shard, in shard order.
    let mut by_shard: std::collections::BTreeMap<i64, Vec<i64>> = Default::default();
    for k in 1..=ACCOUNTS {
        let rs = client.execute(&format!("SHOW SHARD OF {table} KEY {k}"), &[]).await?;
        let shard: i64 = rs.rows.first().map(|r| r.get(0)).transpose()?.unwrap_or_default();
        by_shard.entry(shard).or_default().push(k);
    }
    let shards: Vec<Vec<i64>> = by_shard.into_values().filter(|keys| keys.len() >= 2).collect();
    if shards.len() < 4 || clients.len() < 2 {
        println!("transactions: left out (they need 4 shards and --concurrency 2 or more)");
        clients[0].execute(&format!("DROP TABLE {table}"), &[]).await?;
        return Ok(());
    }
    let pair = |a: usize, b: usize| Writer { keys: vec![shards[a][0], shards[b][0]], autocommit: false };
    let single = |a: usize| Writer { keys: shards[a][..2].to_vec(), autocommit: false };
    let workloads = [
        ("1 writer, 2 shards", vec![pair(0, 1)]),
        ("2 writers, disjoint shards", vec![pair(0, 1), pair(2, 3)]),
        ("1 writer, 1 shard", vec![single(0)]),
        ("2 writers, 1 shard each", vec![single(0), single(2)]),
        ("autocommit UPDATE, 1 shard", vec![Writer { keys: vec![shards[0][0]], autocommit: true }]),
    ];
    println!();
    println!("transactions: BEGIN, an UPDATE of one row per key, COMMIT; {txns} per writer");
    println!(
        "{:<28} {:>6} {:>9} {:>8} {:>8} {:>10} {:>12}",
        "workload", "txns", "txns/s", "p50 ms", "p99 ms", "commit p50", "entries/txn"
    );
    let mut rates = Vec::new();
    for (name, writers) in workloads {
        let f = workload(clients, &table, &writers, txns).await?;
        let commit_p50 = Measure { ops: f.commits.len(), elapsed: Duration::ZERO, latencies: f.commits.clone() };
        println!(
            "{:<28} {:>6} {:>9.1} {:>8.2} {:>8.2} {:>10} {:>12.2}",
            name,
            f.txns.ops,
            f.txns.throughput(),
            f.txns.percentile(0.50),
            f.txns.percentile(0.99),
            if f.commits.is_empty() { "-".to_string() } else { format!("{:.2}", commit_p50.percentile(0.50)) },
            f.entries as f64 / f.txns.ops as f64
        );
        rates.push(f.txns.throughput());
    }
    clients[0].execute(&format!("DROP TABLE {table}"), &[]).await?;
    println!(
        "  two writers on disjoint shards / one writer: {:.2}× the transactions per second over 2 shards each, \
         {:.2}× on 1 shard each",
        rates[1] / rates[0],
        rates[3] / rates[2]
    );
    Ok(())
}

/// Runs `writers` at once, one session each, `txns` transactions each.
async fn workload(clients: &mut [Client], table: &str, writers: &[Writer], txns: usize) -> anyhow::Result<Figures> {
    let before = data_log_total(&mut clients[0]).await?;
    let started = Instant::now();
    let runs = clients.iter_mut().zip(writers).map(|(client, w)| async move {
        let update = format!("UPDATE {table} SET bal = bal + 1 WHERE id = ?1");
        let (mut whole, mut commits) = (Vec::new(), Vec::new());
        for _ in 0..txns {
            let t = Instant::now();
            if !w.autocommit {
                client.execute("BEGIN", &[]).await?;
            }
            for k in &w.keys {
                client.execute(&update, &[Value::Integer(*k)]).await?;
            }
            if !w.autocommit {
                let c = Instant::now();
                client.execute("COMMIT", &[]).await?;
                commits.push(c.elapsed());
            }
            whole.push(t.elapsed());
        }
        anyhow::Ok((whole, commits))
    });
    let mut txns_measure = Measure { ops: 0, elapsed: Duration::ZERO, latencies: Vec::new() };
    let mut commits = Vec::new();
    for r in futures::future::join_all(runs).await {
        let (whole, c) = r?;
        txns_measure.ops += whole.len();
        txns_measure.latencies.extend(whole);
        commits.extend(c);
    }
    txns_measure.elapsed = started.elapsed();
    let entries = data_log_total(&mut clients[0]).await? - before;
    Ok(Figures { txns: txns_measure, commits, entries })
}

/// The sum of the data shards' leaders' last log indexes (`SHOW GROUPS`).
async fn data_log_total(client: &mut Client) -> anyhow::Result<i64> {
    let rs = client.execute("SHOW GROUPS", &[]).await?;
    let mut total = 0;
    for r in &rs.rows {
        let (group, role): (Option<i64>, Option<String>) = (r.get(0)?, r.get(2)?);
        if group.is_some_and(|g| g > 0) && role.as_deref() == Some("Leader") {
            total += r.get::<i64>(5)?;
        }
    }
    Ok(total)
}
