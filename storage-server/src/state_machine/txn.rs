//! Transactions on one group: the steps of a `Command::Txn`.
//!
//! A group holds at most one transaction, in a SQLite transaction kept
//! open across log entries. Its life here:
//!
//! ```text
//!  Begin ──► open ──Run…──► open ──Prepare──► prepared ──Commit/Abort──► ended
//!              │                                 (decided at the anchor)
//!              └──Commit (the decision) / Rollback / wounded──► ended
//! ```
//!
//! - **Wound-wait.** A `Begin` finding the group held waits (`Busy`) when
//!   the holder is prepared or older (a smaller id); a younger holder that
//!   has not prepared is rolled back ("wounded") and its abort recorded.
//!   An older transaction never waits for a younger one, so waits never
//!   form a cycle.
//! - **Two-phase commit.** A transaction over several groups prepares
//!   every participant but one, the anchor, then commits the anchor: that
//!   commit, with its `_drsdb_txns` record, is the decision. A prepared
//!   participant refuses statements and `Rollback`, and is never rolled
//!   back for idleness: only `Commit` or `Abort` ends it, sent by its
//!   coordinator or by a resolver that read the anchor's decision
//!   (`Resolve`, which records an abort when there is no decision yet:
//!   presumed abort). A transaction of one group commits at once.
//! - **Records.** Every end is recorded (committed with its participants,
//!   or rolled back), in the same SQLite transaction as its effects, so a
//!   repeated `Commit` or `Rollback` answers as the first did and a `Begin`
//!   of an ended transaction is refused. An abort decided by `Resolve`
//!   while another transaction holds the group waits in memory for the
//!   next write (rebuilt, like the holder, by replaying the log).
//! - A command that opened the transaction here and then failed rolls it
//!   back here, so a failed first statement leaves the group as it was.
//! - **Exactly once.** A statement run as a transaction of its own claims
//!   its request id at one group (`Claim`), whose commit records the
//!   statement's outcome under that id; the same statement sent again
//!   claims the id there again and gets that outcome back instead of
//!   running. (A group holds one transaction at a time, so two attempts
//!   cannot both pass the claim and commit.)
//!
//! Not implemented yet: foreign keys are off in drsdb, so no deferred
//! constraint can fail a COMMIT after `Prepare`; when they are turned on,
//! `Prepare` must check them (`SQLITE_DBSTATUS_DEFERRED_FKS`).

use std::io;

use drsdb_common::command::{CommandResult, Decision, Statement, StatementResult, Step, TxnCommand, TxnState};
use drsdb_common::{Error, GroupId, TxnId};
use drsdb_proto as pb;
use drsdb_sqlite::Failure;
use prost::Message;
use rusqlite::OptionalExtension;

use super::{to_io, Inner, Shared};
use crate::types::LogId;

/// The transaction holding a group.
#[derive(Debug, Clone)]
pub(super) struct Open {
    pub(super) id: TxnId,
    /// Set by `Prepare`: the anchor group whose record decides it.
    pub(super) prepared: Option<GroupId>,
    /// One statement's own transaction.
    pub(super) statement: bool,
}

/// A step's own failure: the command's result.
type StepResult<T> = io::Result<Result<T, Error>>;

/// What a `Begin` found.
enum Began {
    /// The transaction was opened by this step.
    Now,
    /// It was open already.
    Already,
    /// Another transaction holds the group and may not be wounded.
    Busy(TxnId),
}

impl Inner {
    /// Applies the steps of `command`; `before` is the entry applied before
    /// this one (where the `_drsdb_raft` row must stay if this command
    /// opens a transaction).
    pub(super) fn apply_txn(
        &mut self,
        shared: &Shared,
        before: Option<LogId>,
        command: TxnCommand,
    ) -> io::Result<CommandResult> {
        let TxnCommand { txn, now_ms, steps, statement, no_wait: _ } = command;
        if steps.iter().skip(1).any(|s| *s == Step::Begin) {
            return Ok(CommandResult::Txn(Err(Error::invalid("malformed command: Begin must be its first step"))));
        }
        let mut result = StatementResult::default();
        let mut began = false;
        for step in steps {
            let done = match step {
                Step::Begin => match self.begin(shared, before, &txn, now_ms, statement)? {
                    Ok(Began::Busy(holder)) => return Ok(CommandResult::Busy(holder)),
                    Ok(Began::Now) => {
                        began = true;
                        Ok(())
                    }
                    Ok(Began::Already) => Ok(()),
                    Err(e) => Err(e),
                },
                Step::Run(statement) => self.run(shared, &txn, &statement, now_ms)?.map(|r| result = r),
                Step::Prepare { anchor } => self.prepare(shared, &txn, anchor)?,
                Step::Commit { participants, request } => {
                    self.commit(shared, &txn, &participants, request.as_ref(), now_ms)?
                }
                Step::Claim(request) => match self.request_outcome(&request)? {
                    None => Ok(()),
                    Some(first) => {
                        if began && self.holds(&txn) {
                            self.end_open(shared, &txn, now_ms, false)?;
                        }
                        return Ok(CommandResult::Replayed(first));
                    }
                },
                Step::Rollback => self.roll_back(shared, &txn, now_ms, false)?,
                Step::Abort => self.roll_back(shared, &txn, now_ms, true)?,
                Step::Inquire => {
                    let state = match &self.txn {
                        Some(o) if o.id == txn => o.prepared.map_or(TxnState::Open, TxnState::Prepared),
                        _ => match self.recorded(&txn)? {
                            Some(committed) => TxnState::Ended(decision(committed)),
                            None => TxnState::Unknown,
                        },
                    };
                    return Ok(CommandResult::Inquired(state));
                }
                Step::Resolve => {
                    return Ok(match self.resolve(shared, &txn, now_ms)? {
                        Ok(decision) => CommandResult::Resolved(decision),
                        Err(e) => CommandResult::Txn(Err(e)),
                    })
                }
            };
            if let Err(e) = done {
                if began && self.holds(&txn) {
                    self.end_open(shared, &txn, now_ms, false)?;
                }
                return Ok(CommandResult::Txn(Err(e)));
            }
        }
        Ok(CommandResult::Txn(Ok(result)))
    }

    fn holds(&self, txn: &TxnId) -> bool {
        self.txn.as_ref().is_some_and(|o| o.id == *txn)
    }

    fn begin(
        &mut self,
        shared: &Shared,
        before: Option<LogId>,
        txn: &TxnId,
        now_ms: i64,
        statement: bool,
    ) -> StepResult<Began> {
        if self.holds(txn) {
            return Ok(Ok(Began::Already));
        }
        if let Some(committed) = self.recorded(txn)? {
            return Ok(Err(ended(txn, committed)));
        }
        if let Some(holder) = &self.txn {
            if holder.prepared.is_some() || holder.id < *txn {
                return Ok(Ok(Began::Busy(holder.id.clone())));
            }
        }
        if let Some(wounded) = self.txn.take() {
            // Younger and not prepared: rolled back for the older one. The
            // `_drsdb_raft` row stays before this entry, which opens `txn`.
            tracing::debug!(wounded = %wounded.id, by = %txn, "rolling back a younger transaction (wound-wait)");
            self.db.internal(|c| c.execute_batch("ROLLBACK")).map_err(to_io)?;
            let current = std::mem::replace(&mut self.last_applied, before);
            let recorded = self.in_write_txn(|me| me.record(&wounded.id, false, now_ms, &[]));
            self.last_applied = current;
            recorded?;
        }
        self.db.internal(|c| c.execute_batch("BEGIN IMMEDIATE")).map_err(to_io)?;
        self.txn = Some(Open { id: txn.clone(), prepared: None, statement });
        self.set_holder(shared);
        Ok(Ok(Began::Now))
    }

    fn run(&mut self, shared: &Shared, txn: &TxnId, statement: &Statement, now_ms: i64) -> StepResult<StatementResult> {
        match &self.txn {
            Some(o) if o.id == *txn && o.prepared.is_some() => {
                return Ok(Err(Error::invalid(format!("transaction {txn} is prepared: it takes no more statements"))))
            }
            Some(o) if o.id == *txn => {}
            _ => return Ok(Err(self.not_open(txn)?)),
        }
        self.set_holder(shared);
        let outcome = match self.db.run_collect(statement) {
            Ok(r) => Ok(r),
            Err(Failure::Statement(e)) => Err(e),
            Err(Failure::Environment(e)) => return Err(e),
        };
        if self.db.is_autocommit() {
            // SQLite itself rolled the whole transaction back (some errors
            // do): it ended here.
            self.txn = None;
            self.in_write_txn(|me| me.record(txn, false, now_ms, &[]))?;
            self.set_holder(shared);
            return Ok(Err(Error::Retryable(format!(
                "{}; the transaction was rolled back, start again with BEGIN",
                outcome.err().map(|e| e.to_string()).unwrap_or_default()
            ))));
        }
        Ok(outcome)
    }

    fn prepare(&mut self, shared: &Shared, txn: &TxnId, anchor: GroupId) -> StepResult<()> {
        match &mut self.txn {
            Some(o) if o.id == *txn => {
                o.prepared = Some(anchor);
                self.set_holder(shared);
                Ok(Ok(()))
            }
            _ => Ok(Err(self.not_open(txn)?)),
        }
    }

    fn commit(
        &mut self,
        shared: &Shared,
        txn: &TxnId,
        participants: &[GroupId],
        request: Option<&(String, StatementResult)>,
        now_ms: i64,
    ) -> StepResult<()> {
        if !self.holds(txn) {
            return Ok(match self.recorded(txn)? {
                Some(true) => Ok(()),
                _ => Err(self.not_open(txn)?),
            });
        }
        // A prepared transaction spans shards, whoever commits it (the
        // resolver names this shard alone).
        let spans_shards = participants.len() > 1 || self.txn.as_ref().is_some_and(|o| o.prepared.is_some());
        self.record(txn, true, now_ms, participants)?;
        if let Some((id, outcome)) = request {
            self.record_request(id, now_ms, &Ok(outcome.clone()))?;
        }
        // Reads over several shards check their snapshots with this count.
        if spans_shards {
            self.db
                .internal(|c| {
                    c.execute(
                        "INSERT INTO _drsdb_commits(id, n) VALUES (0, 1) ON CONFLICT(id) DO UPDATE SET n = n + 1",
                        [],
                    )
                })
                .map_err(to_io)?;
        }
        self.write_applied()?;
        let committed = self.db.internal(|c| c.execute_batch("COMMIT"));
        let outcome = match committed {
            Ok(()) => {
                self.unrecorded.clear();
                if spans_shards {
                    let n = self.db.internal(super::committed_count).map_err(to_io)?;
                    shared.commits.store(n, std::sync::atomic::Ordering::SeqCst);
                }
                Ok(())
            }
            Err(e) => {
                // Only a deferred constraint can fail a COMMIT (and none
                // exists while foreign keys are off): roll back, record it.
                let msg = match Failure::from(e) {
                    Failure::Statement(e) => e.to_string(),
                    Failure::Environment(e) => return Err(e),
                };
                self.db.internal(|c| c.execute_batch("ROLLBACK")).map_err(to_io)?;
                self.in_write_txn(|me| me.record(txn, false, now_ms, &[]))?;
                Err(Error::invalid(format!("{msg}; the transaction was rolled back")))
            }
        };
        self.txn = None;
        self.set_holder(shared);
        Ok(outcome)
    }

    /// `Rollback` (`decided`: false) or `Abort` (true) of `txn`.
    fn roll_back(&mut self, shared: &Shared, txn: &TxnId, now_ms: i64, decided: bool) -> StepResult<()> {
        match &self.txn {
            Some(o) if o.id == *txn => {
                if let (Some(anchor), false) = (o.prepared, decided) {
                    return Ok(Err(Error::invalid(format!(
                        "transaction {txn} is prepared: only the decision recorded on shard {anchor} ends it"
                    ))));
                }
                self.end_open(shared, txn, now_ms, true)?;
                Ok(Ok(()))
            }
            _ => Ok(match self.recorded(txn)? {
                Some(true) => Err(Error::invalid(format!("transaction {txn} has committed; it cannot be rolled back"))),
                _ => Ok(()),
            }),
        }
    }

    /// The decision on `txn`, this group being its anchor: the recorded
    /// one, or an abort recorded now.
    fn resolve(&mut self, shared: &Shared, txn: &TxnId, now_ms: i64) -> StepResult<Decision> {
        if let Some(committed) = self.recorded(txn)? {
            return Ok(Ok(decision(committed)));
        }
        match &self.txn {
            Some(o) if o.id == *txn => {
                if let Some(anchor) = o.prepared {
                    return Ok(Err(Error::invalid(format!(
                        "transaction {txn} is prepared here: its decision is recorded on shard {anchor}"
                    ))));
                }
                self.end_open(shared, txn, now_ms, true)?;
            }
            // Another transaction's SQLite transaction is open: the abort
            // is written with the next write.
            Some(_) => self.unrecorded.push((txn.clone(), now_ms)),
            None => self.in_write_txn(|me| me.record(txn, false, now_ms, &[]))?,
        }
        Ok(Ok(Decision::Aborted))
    }

    /// Rolls back the open `txn`, recording its abort when `record`.
    fn end_open(&mut self, shared: &Shared, txn: &TxnId, now_ms: i64, record: bool) -> io::Result<()> {
        self.db.internal(|c| c.execute_batch("ROLLBACK")).map_err(to_io)?;
        self.txn = None;
        self.in_write_txn(|me| if record { me.record(txn, false, now_ms, &[]) } else { Ok(()) })?;
        self.set_holder(shared);
        Ok(())
    }

    /// Records how `txn` ended here, in the open SQLite transaction.
    pub(super) fn record(&self, txn: &TxnId, committed: bool, now_ms: i64, participants: &[GroupId]) -> io::Result<()> {
        let participants = pb::Participants { groups: participants.iter().map(|g| g.0).collect() }.encode_to_vec();
        self.db
            .internal(|c| {
                c.execute(
                    "INSERT OR REPLACE INTO _drsdb_txns(id, committed, at_ms, participants) VALUES (?1, ?2, ?3, ?4)",
                    rusqlite::params![txn.0, committed, now_ms, participants],
                )
            })
            .map_err(to_io)?;
        Ok(())
    }

    /// How `txn` ended here, if it did (and is still remembered): true
    /// when it committed.
    fn recorded(&self, txn: &TxnId) -> io::Result<Option<bool>> {
        if self.unrecorded.iter().any(|(t, _)| t == txn) {
            return Ok(Some(false));
        }
        self.db
            .internal(|c| {
                c.query_row("SELECT committed FROM _drsdb_txns WHERE id = ?1", [&txn.0], |r| r.get(0)).optional()
            })
            .map_err(to_io)
    }

    /// The error for a step of `txn`, which does not hold the group.
    fn not_open(&self, txn: &TxnId) -> io::Result<Error> {
        Ok(match self.recorded(txn)? {
            Some(committed) => ended(txn, committed),
            None => Error::Retryable(format!(
                "transaction {txn} is not open on this shard (it was rolled back: perhaps it sat idle longer than \
                 txn_idle_timeout_ms, or ran longer than txn_max_duration_ms); start again with BEGIN"
            )),
        })
    }
}

/// The decision a record's `committed` stands for.
fn decision(committed: bool) -> Decision {
    if committed {
        Decision::Committed
    } else {
        Decision::Aborted
    }
}

/// The error for a step of `txn`, which ended here already.
fn ended(txn: &TxnId, committed: bool) -> Error {
    match committed {
        true => Error::invalid(format!("transaction {txn} has committed already")),
        false => Error::Retryable(format!(
            "transaction {txn} was rolled back (an older transaction needed one of its shards, or it sat idle \
             longer than txn_idle_timeout_ms, or ran longer than txn_max_duration_ms); start again with BEGIN"
        )),
    }
}
