//! Schema changes: CREATE, DROP and ALTER run on every shard as one
//! transaction (on all or on none); the catalog is recorded in the meta
//! group afterwards. A UNIQUE constraint that shards could not enforce
//! makes the table a reference table (copied whole).

use drsdb_common::command::{Statement, StatementResult};
use drsdb_common::{sql, Error, GroupId, Result};
use futures::future::join_all;

use super::{Executor, Txn};
use crate::catalog;
use crate::meta;

impl Executor {
    /// Runs a schema change on the first shard, then (if it worked there)
    /// on the others, and records the new catalog.
    pub(super) async fn schema_change(
        &self,
        mut statement: Statement,
        groups: &[GroupId],
        creates: Option<(String, bool)>,
        txn: Option<&Txn>,
    ) -> Result<StatementResult> {
        if let Some(stripped) = sql::strip_reference(&statement.sql) {
            statement.sql = stripped;
        }
        let mut creates = creates;
        if groups.len() > 1 {
            // Checked against the shards' schema as it is now: this index
            // server's cached catalog may miss another one's recent DDL.
            // (Recorded in the meta group after the change.)
            self.set_catalog(meta::shard_catalog(self.tier.as_ref()).await?);
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
        // On several shards the change is a transaction of its own: on
        // every shard or on none.
        let own = self.own_txn(txn, groups, &statement, false, true);
        let r = self.in_own_txn(txn, own.as_ref(), |t| self.change_everywhere(&statement, groups, t)).await;
        match meta::sync_catalog(self.tier.as_ref()).await {
            Ok(c) => self.set_catalog(c),
            // The shards have the change; the catalog heals on the next
            // lookup that misses.
            Err(e) => tracing::warn!("catalog not updated after DDL: {e}"),
        }
        r
    }

    /// Applies a schema change to every shard of `groups` (in `txn`).
    async fn change_everywhere(
        &self,
        statement: &Statement,
        groups: &[GroupId],
        txn: Option<&Txn>,
    ) -> Result<StatementResult> {
        let applied = join_all(groups.iter().map(|g| self.apply(*g, Self::for_shard(statement, *g, true), txn))).await;
        let mut first = None;
        for (g, r) in groups.iter().zip(applied) {
            match r {
                Ok(r) => {
                    first.get_or_insert(r);
                }
                Err(e) if groups.len() > 1 => {
                    return Err(match e {
                        Error::InvalidInput(m) => Error::InvalidInput(format!("shard {g}: {m}")),
                        other => other,
                    })
                }
                Err(e) => return Err(e),
            }
        }
        let mut r = first.ok_or_else(|| Error::io("a schema change on no shard"))?;
        // What a virtual table's module wrote to its shadow tables is not
        // the statement's doing.
        r.rows_affected = 0;
        Ok(r)
    }

    /// True when `table` has no row on any shard of `groups`.
    pub(super) async fn is_empty(&self, table: &str, groups: &[GroupId], txn: Option<&Txn>) -> Result<bool> {
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
