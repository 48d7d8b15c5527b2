//! The seam between the SQL tier and the storage tier: everything an index
//! server asks of the storage servers, as one narrow trait.
//!
//! The index server's executor holds a `dyn StorageTier` and nothing else
//! of the storage tier. Two implementations exist:
//! - over gRPC, to the leaders of the groups (`drsdb_index`'s `GrpcTier`,
//!   used in production);
//! - in-process (`drsdb_storage::InProcessTier`): real storage groups
//!   (openraft, SQLite files) hosted inside the calling process, with
//!   fault hooks, so that tests drive the executor's multi-shard paths and
//!   inject a failure at an exact step.
//!
//! Both speak the typed contract of [`crate::command`].

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use drsdb_proto as pb;
use futures::Stream;

use crate::command::{Command, CommandResult, Statement};
use crate::stream::PartReader;
use crate::{Error, GroupId, Result, Value};

/// A read's result stream, part by part (see [`crate::stream`]).
pub type Parts = Pin<Box<dyn Stream<Item = Result<pb::ResultPart>> + Send>>;

/// One storage server as the tier knows it, and its status if it answered.
#[derive(Debug)]
pub struct ServerStatus {
    /// Its node id (0 while only its seed address is known).
    pub id: u64,
    /// Its address.
    pub addr: String,
    /// Its answer to a status call.
    pub status: Result<pb::StatusResponse>,
}

/// The storage tier, as the SQL tier uses it.
#[async_trait::async_trait]
pub trait StorageTier: Send + Sync {
    /// Proposes `command` to `group`'s Raft log on its leader, following
    /// leader changes, and returns its result once applied. An
    /// `idempotent` command (one the tier deduplicates by request id, or
    /// whose repetition is harmless) may be sent again after a failure
    /// whose outcome is unknown; any other such failure is reported as
    /// unknown, never retried.
    async fn write(&self, group: GroupId, command: Command, idempotent: bool) -> Result<CommandResult>;

    /// Runs a read-only statement on `group`'s leader after its
    /// linearizable read barrier, streaming its result; unless `alone`,
    /// its parts start with its snapshot's commit count (a read of one of
    /// several shards, checked to be one consistent cut with the others).
    async fn read(&self, group: GroupId, statement: Statement, alone: bool) -> Result<Parts>;

    /// After a linearizable read barrier on `group`'s leader: how many
    /// transactions over several shards it has committed, and whether one
    /// is prepared there now.
    async fn commits(&self, group: GroupId) -> Result<(u64, bool)>;

    /// For each of `groups`, the addresses of the storage servers holding
    /// it, the last known leader first (what a client needs to open a
    /// fragment there).
    async fn replicas(&self, groups: &[GroupId]) -> Result<Vec<Vec<String>>>;

    /// Every storage server known, with its status (a server that does not
    /// answer is listed with the error).
    async fn status(&self) -> Vec<ServerStatus>;

    /// Learns the current leader of every group (called periodically, so
    /// that [`StorageTier::replicas`] names leaders without a call).
    async fn refresh_leaders(&self) {}

    /// Runs a read like [`StorageTier::read`] and collects its rows.
    async fn read_rows(&self, group: GroupId, statement: Statement) -> Result<Vec<Vec<Value>>> {
        let mut reader = PartReader::new(self.read(group, statement, true).await?);
        let mut rows = Vec::new();
        while let Some(row) = reader.next().await? {
            rows.push(row);
        }
        Ok(rows)
    }
}

/// How long a call keeps looking for a group's leader before giving up:
/// a few election timeouts. (Longer only delays the caller's failover to
/// another index server when this one is cut off from the leader.)
const LEADER_DEADLINE: Duration = Duration::from_secs(5);
/// Pause before calling again when no leader is known.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// A call to a group's leader that failed.
#[derive(Debug)]
pub struct CallFailure {
    /// Why.
    pub error: Error,
    /// Whether the request may have reached a server that acted on it:
    /// false only when it certainly did not (the connection could not be
    /// opened). A write that may have arrived and got no answer has an
    /// unknown outcome.
    pub arrived: bool,
}

/// Runs `call` against a group's leader, following leader changes, until
/// it succeeds, fails for a reason that calling again cannot fix, or
/// [`LEADER_DEADLINE`] passes: the one retry policy of both storage tier
/// implementations. `call` picks the server to try each time (learning
/// leaders from `NotLeader` answers). A call that certainly never arrived
/// is made again; one whose outcome is unknown only when `idempotent`
/// (the storage tier deduplicates it by request id, or repeating it is
/// harmless). Otherwise the error says that the outcome is unknown, never
/// to try again.
pub async fn with_leader<T, F, Fut>(group: GroupId, idempotent: bool, mut call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, CallFailure>>,
{
    let deadline = tokio::time::Instant::now() + LEADER_DEADLINE;
    // Whether some attempt reached a server and got no answer: a write's
    // outcome is then unknown, whatever the later attempts said.
    let mut unknown = false;
    loop {
        let CallFailure { error, arrived } = match call().await {
            Ok(v) => return Ok(v),
            Err(f) => f,
        };
        tracing::debug!(%group, "storage call failed: {error}");
        unknown |= arrived && matches!(error, Error::Unavailable(_));
        let retry = match &error {
            Error::NotLeader { .. } => true,
            Error::Unavailable(_) => idempotent || !arrived,
            _ => false,
        };
        if !retry || tokio::time::Instant::now() >= deadline {
            let error = match error {
                Error::NotLeader { group, .. } if unknown => {
                    Error::unavailable(format!("group {group} has no leader right now"))
                }
                Error::NotLeader { group, .. } => {
                    Error::unavailable(format!("group {group} has no leader right now; try again shortly"))
                }
                other => other,
            };
            return Err(match error {
                Error::Unavailable(m) if unknown => Error::Unavailable(format!(
                    "{m}; an attempt reached a storage server and got no answer, so if this writes, it may or may \
                     not have been applied: check before sending it again"
                )),
                other => other,
            });
        }
        if !matches!(error, Error::NotLeader { leader: Some(_), .. }) {
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}
