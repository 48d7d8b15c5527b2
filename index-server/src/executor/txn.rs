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
    pub(super) async fn end(&self, shards: usize, command: impl Fn(GroupId) -> Command) -> Result<()> {
        let mut first_error = None;
        for g in shard::shard_groups(shards) {
            if let Err(e) = self.txn_command(g, command(g)).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
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
