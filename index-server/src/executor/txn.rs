//! Statements on one shard, autocommit or inside an explicit transaction,
//! and the transaction's BEGIN, COMMIT and ROLLBACK on every shard.
//!
//! A transaction holds every shard from BEGIN to its end: each shard
//! opens it in its own log (in shard order, so two transactions never wait
//! for each other in a cycle), and its statements, reads included, are
//! entries of the logs of the shards they touch. COMMIT is applied shard by
//! shard: not atomic across shards yet.

use drsdb_common::command::{Command, CommandResult, Statement, StatementResult};
use drsdb_common::{shard, Error, GroupId, Result, TxnId};

use super::{spread_seed, Executor};

impl Executor {
    /// Opens the transaction on every shard, in shard order (so two
    /// transactions never wait for each other in a cycle).
    pub(super) async fn begin(&self, t: &TxnId, shards: usize) -> Result<()> {
        for (i, g) in shard::shard_groups(shards).into_iter().enumerate() {
            if let Err(e) = self.txn_command(g, Command::Begin(t.clone())).await {
                for earlier in shard::shard_groups(i) {
                    let _ = self.txn_command(earlier, Command::Rollback(t.clone())).await;
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Commits or rolls back on every shard, in shard order.
    ///
    /// A COMMIT that failed on some shard has an unknown outcome as a
    /// whole (shards before it committed; the failed one may have): the
    /// error says so, never to try again.
    pub(super) async fn end(&self, shards: usize, command: Command) -> Result<()> {
        let committing = matches!(command, Command::Commit(_));
        let mut first_error = None;
        let mut ended = 0;
        for g in shard::shard_groups(shards) {
            match self.txn_command(g, command.clone()).await {
                Ok(_) => ended += 1,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            None => Ok(()),
            Some(Error::InvalidInput(m)) if ended == 0 => Err(Error::InvalidInput(m)),
            Some(e) if committing => Err(Error::io(format!(
                "the outcome of COMMIT is unknown: {ended} of {shards} shard(s) confirmed it, then {e}; commits \
                 over several shards are not atomic yet: check the transaction's rows before running it again"
            ))),
            Some(e) => Err(e),
        }
    }

    pub(super) async fn txn_command(&self, group: GroupId, command: Command) -> Result<StatementResult> {
        match self.tier.write(group, command, false).await? {
            CommandResult::Txn(outcome) => outcome,
            other => Err(Error::io(format!("unexpected transaction result {other:?}"))),
        }
    }

    /// Applies one statement to one shard, autocommit or in `txn`.
    pub(super) async fn apply(
        &self,
        group: GroupId,
        statement: Statement,
        txn: Option<&TxnId>,
    ) -> Result<StatementResult> {
        if let Some(t) = txn {
            return self.txn_command(group, Command::InTxn(t.clone(), statement)).await;
        }
        // With a request id the storage tier applies it once, so it may be
        // sent again after a lost reply.
        let idempotent = statement.request_id.is_some();
        match self.tier.write(group, Command::Batch(vec![statement]), idempotent).await? {
            CommandResult::Batch(mut o) if o.len() == 1 => o.remove(0),
            other => Err(Error::io(format!("unexpected write result {other:?}"))),
        }
    }

    /// `statement` for shard `group`: its own request id, and its own seed
    /// unless every shard must compute the same values.
    pub(super) fn for_shard(statement: &Statement, group: GroupId, same_seed: bool) -> Statement {
        let mut s = statement.clone();
        if !same_seed {
            s.seed ^= spread_seed(group.0);
        }
        s.request_id = statement.request_id.as_ref().map(|r| format!("{r}#{group}"));
        s
    }
}
