//! Counters of what this index server has done since it started, printed
//! by `SHOW METRICS`. They show where result rows travel: rows this server
//! sent to clients itself, and fragments and routes it handed out instead
//! (whose rows went from the storage servers to the clients without
//! passing here).

use std::sync::atomic::{AtomicU64, Ordering};

/// The counters; each only grows.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Statements received (SHOW included).
    pub statements: AtomicU64,
    /// Result rows sent to clients, SHOW output aside: relayed from
    /// shards, combined here, or computed here.
    pub rows_sent: AtomicU64,
    /// Queries answered with fragments (read by the client from the
    /// storage servers).
    pub direct_results: AtomicU64,
    /// Fragments handed out (one per shard of a direct result).
    pub fragments_issued: AtomicU64,
    /// Routes handed out: reads pinned to one shard by their parameters,
    /// which the client then runs on that shard itself.
    pub routes_issued: AtomicU64,
    /// Transactions committed on one shard (no two-phase commit round).
    pub commits_single_shard: AtomicU64,
    /// Transactions committed on several shards by two-phase commit
    /// (statements run as their own transaction included).
    pub commits_multi_shard: AtomicU64,
    /// Transactions rolled back or aborted by this server.
    pub aborts: AtomicU64,
    /// Prepared transactions this server's resolver finished after their
    /// coordinator went quiet.
    pub in_doubt_resolved: AtomicU64,
    /// Statements over several shards whose first attempt, preparing each
    /// shard as it ran there, found a shard held, and that ran again
    /// waiting for it (`Executor::in_own_txn`).
    pub held_reruns: AtomicU64,
}

impl Metrics {
    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Every counter, by name, in a fixed order.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("statements", read(&self.statements)),
            ("rows_sent", read(&self.rows_sent)),
            ("direct_results", read(&self.direct_results)),
            ("fragments_issued", read(&self.fragments_issued)),
            ("routes_issued", read(&self.routes_issued)),
            ("commits_single_shard", read(&self.commits_single_shard)),
            ("commits_multi_shard", read(&self.commits_multi_shard)),
            ("aborts", read(&self.aborts)),
            ("in_doubt_resolved", read(&self.in_doubt_resolved)),
            ("held_reruns", read(&self.held_reruns)),
        ]
    }
}
