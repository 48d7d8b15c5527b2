//! Reads over several shards outside a transaction see one consistent cut:
//! never a transaction committed on some of the shards and not on others.
//!
//! Every storage read starts with a `Snapshot` part: the count of
//! transactions over several shards its group had committed in the SQLite
//! snapshot the read runs on. Once every shard's read has started (so
//! every snapshot is taken), each group's leader is asked, after a read
//! barrier, for its count now and whether a transaction is prepared there
//! now. The cut is consistent when every count is unchanged and nothing is
//! prepared:
//!
//! - Say transaction T is visible in shard s's snapshot and not in shard
//!   r's. T committed on r after r's snapshot. If before the check, r's
//!   count moved. If after, T was prepared on r at the check: every
//!   participant prepares before the anchor decides, and the decision
//!   preceded s's commit, which preceded s's snapshot, which preceded the
//!   check.
//!
//! Otherwise the read runs again (after a short pause: a prepared
//! transaction commits within milliseconds), up to [`ATTEMPTS`] times.
//! Nothing has reached the client before the cut is checked. Clients
//! reading fragments directly send their snapshots to `CheckSnapshots`.

use std::time::Duration;

use drsdb_common::{shard, Error, GroupId, Result};
use drsdb_proto as pb;
use futures::future::join_all;

use super::Executor;

/// How often a read over several shards is tried before giving up.
pub const ATTEMPTS: u32 = 30;
/// The pause before the second try; it doubles up to [`LONGEST_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(2);
const LONGEST_PAUSE: Duration = Duration::from_millis(100);

impl Executor {
    /// Whether reads that saw `snapshots` form a consistent cut (see the
    /// module's essay).
    pub async fn consistent(&self, snapshots: &[pb::Snapshot]) -> Result<bool> {
        let mut groups: Vec<u64> = snapshots.iter().map(|s| s.group).collect();
        groups.sort_unstable();
        groups.dedup();
        if groups.len() <= 1 {
            return Ok(true);
        }
        // Named by clients too: only this cluster's shards are asked.
        let data = shard::shard_groups(self.shard_count().await?);
        if let Some(g) = groups.iter().find(|g| !data.contains(&GroupId(**g))) {
            return Err(Error::invalid(format!("snapshot of shard {g}, which this cluster does not have")));
        }
        let now = join_all(groups.iter().map(|g| self.tier.commits(GroupId(*g)))).await;
        for (g, state) in groups.iter().zip(now) {
            let (commits, prepared) = state?;
            if prepared || snapshots.iter().any(|s| s.group == *g && s.commits != commits) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// The tries of one read over several shards.
pub struct Tries {
    done: u32,
    pause: Duration,
}

impl Tries {
    /// Before the first try.
    pub fn new() -> Tries {
        Tries { done: 0, pause: FIRST_PAUSE }
    }

    /// After a try whose cut was not consistent: pauses before the next, or
    /// fails after the last.
    pub async fn again(&mut self) -> Result<()> {
        self.done += 1;
        if self.done >= ATTEMPTS {
            return Err(Error::Retryable(format!(
                "the read spans several shards and {ATTEMPTS} tries found transactions committing across them \
                 each time, so no consistent snapshot was read; run it again"
            )));
        }
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(LONGEST_PAUSE);
        Ok(())
    }
}
