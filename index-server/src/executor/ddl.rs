//! Schema changes: CREATE, DROP and ALTER run on the first shard, then
//! (if it worked there) on every other; a new object that some shard could
//! not make is dropped again where it was made (its undo); the catalog is
//! recorded in the meta group afterwards. A UNIQUE constraint that shards
//! could not enforce makes the table a reference table (copied whole).

use drsdb_common::command::{Statement, StatementResult};
use drsdb_common::{sql, Error, GroupId, Result, TxnId};
use futures::future::join_all;

use super::{with_sql, Executor};
use crate::catalog;
use crate::meta;
use crate::planner::Undo;

impl Executor {
    /// Runs a schema change on the first shard, then (if it worked there)
    /// on the others, and records the new catalog.
    pub(super) async fn schema_change(
        &self,
        mut statement: Statement,
        groups: &[GroupId],
        creates: Option<(String, bool)>,
        undo: Option<Undo>,
        txn: Option<&TxnId>,
    ) -> Result<StatementResult> {
        if let Some(stripped) = sql::strip_reference(&statement.sql) {
            statement.sql = stripped;
        }
        let mut creates = creates;
        if groups.len() > 1 {
            // Checked against the shards' schema as it is now: this index
            // server's cached catalog may miss another one's recent DDL.
            self.set_catalog(meta::sync_catalog(self.tier.as_ref()).await?);
            let sql = statement.sql.clone();
            let reference = creates.as_ref().is_some_and(|(_, r)| *r);
            let catalog = self.catalog();
            let uncovered = tokio::task::spawn_blocking(move || catalog::uncovered_by(&catalog, &sql, reference))
                .await
                .map_err(|e| Error::io(format!("schema check: {e}")))??;
            if let Some(u) = uncovered {
                match &mut creates {
                    // A new table whose UNIQUE constraint shards could not
                    // enforce is kept whole on every shard.
                    Some((_, reference)) => *reference = true,
                    // So is an existing one given such an index, while it
                    // holds no rows.
                    None => {
                        if !self.is_empty(&u.table, groups, txn).await? {
                            return Err(Error::invalid(format!(
                                "{} on {} cannot be enforced: {} is sharded on {} and already holds rows, and each \
                                 shard checks uniqueness among its own rows only; include the shard key in the \
                                 constraint, or create the index while the table is empty (it then becomes a \
                                 reference table, copied whole to every shard)",
                                u.constraint, u.table, u.table, u.key
                            )));
                        }
                        meta::set_reference(self.tier.as_ref(), &u.table, true).await?;
                    }
                }
            }
        }
        // A new table's distribution is recorded before it exists anywhere
        // (an existing one keeps its own: CREATE … IF NOT EXISTS).
        if let Some((name, reference)) = &creates {
            if self.catalog().table(name).is_none() {
                meta::set_reference(self.tier.as_ref(), name, *reference).await?;
            }
        }
        // A new object is dropped again where it was made if some shard
        // cannot make it (not one that existed: that one keeps its rows;
        // not inside a transaction: rolling it back undoes it).
        let undo = undo.filter(|u| txn.is_none() && !self.catalog().has_object(&u.name));
        let (first, rest) = groups.split_first().expect("at least one shard");
        let mut r = self.apply(*first, Self::for_shard(&statement, *first, true), txn).await?;
        // What a virtual table's module wrote to its shadow tables is not
        // the statement's doing.
        r.rows_affected = 0;
        let others = join_all(rest.iter().map(|g| self.apply(*g, Self::for_shard(&statement, *g, true), txn))).await;
        let failed: Vec<String> =
            rest.iter().zip(&others).filter_map(|(g, o)| o.as_ref().err().map(|e| format!("shard {g}: {e}"))).collect();
        match meta::sync_catalog(self.tier.as_ref()).await {
            Ok(c) => self.set_catalog(c),
            // The shards have the change; the catalog heals on the next
            // lookup that misses.
            Err(e) => tracing::warn!("catalog not updated after DDL: {e}"),
        }
        if let (false, Some(undo)) = (failed.is_empty(), undo) {
            return Err(self.take_back(&statement, groups, &undo, &failed).await);
        }
        if !failed.is_empty() {
            return Err(Error::unavailable(format!(
                "the schema change was applied on shard {first} but not on every shard ({}); run it again \
                 (with IF NOT EXISTS / IF EXISTS) once those shards are available",
                failed.join("; ")
            )));
        }
        Ok(r)
    }

    /// Drops a new object again from every shard of `groups` after some
    /// failed to create it (`failed`), and says what happened. The failed
    /// ones get the DROP too: a CREATE whose outcome is unknown may sit
    /// in a leader's log and commit once the shard recovers; the DROP then
    /// follows it there. The error is not one the driver re-sends by
    /// itself: the same request id would find the creation recorded as
    /// done on the shards that undid it.
    pub(super) async fn take_back(
        &self,
        statement: &Statement,
        groups: &[GroupId],
        undo: &Undo,
        failed: &[String],
    ) -> Error {
        let mut drop = with_sql(statement, undo.sql.clone()).expect("a DROP statement has no placeholders");
        drop.request_id = statement.request_id.as_ref().map(|r| format!("{r}#undo"));
        let undone = join_all(groups.iter().map(|g| self.apply(*g, Self::for_shard(&drop, *g, true), None))).await;
        let left: Vec<String> = groups
            .iter()
            .zip(&undone)
            .filter_map(|(g, u)| u.as_ref().err().map(|e| format!("shard {g}: {e}")))
            .collect();
        if let Ok(c) = meta::sync_catalog(self.tier.as_ref()).await {
            self.set_catalog(c);
        }
        if left.is_empty() {
            Error::Retryable(format!(
                "{} could not be created on every shard ({}), so it was dropped again from the others: nothing \
                 changed; run the statement again once those shards are available",
                undo.name,
                failed.join("; ")
            ))
        } else {
            Error::io(format!(
                "{} could not be created on every shard ({}) nor surely dropped again everywhere ({}); once \
                 every shard is available, run `{}` and then the statement again",
                undo.name,
                failed.join("; "),
                left.join("; "),
                undo.sql
            ))
        }
    }

    /// True when `table` has no row on any shard of `groups`.
    pub(super) async fn is_empty(&self, table: &str, groups: &[GroupId], txn: Option<&TxnId>) -> Result<bool> {
        let probe = Statement::new(format!("SELECT 1 FROM {} LIMIT 1", sql::quote_name(table)));
        let found = join_all(groups.iter().map(|g| self.fetch(*g, probe.clone(), txn))).await;
        for rows in found {
            if !rows?.is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
