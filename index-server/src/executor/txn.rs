//! Transactions: statements on the shards a transaction touches, and its
//! COMMIT by two-phase commit.
//!
//! A transaction holds only the shards it touched (each shard holds one
//! transaction at a time; module `txn` of the storage state machine has
//! the per-shard rules: wound-wait, prepare, records). The index servers
//! keep no transaction state: the client sends the transaction's id and
//! the shards it holds with each statement, and gets them back, grown, in
//! the statement's `Done`.
//!
//! - A statement on a shard not yet held opens the transaction there in
//!   the same log entry (`[Begin, Run]`).
//! - COMMIT on one shard is one entry. On several, the shards but one are
//!   prepared, then the anchor (the lowest shard) commits, which records
//!   the decision; then the others commit. A coordinator that dies after
//!   preparing leaves the decision to the resolver
//!   ([`Executor::resolve_in_doubt`], run by every index server), which
//!   asks the anchor.
//! - A statement's own transaction with a request id is anchored at a
//!   shard the id picks, and claims the id there (exactly once, see
//!   [`Executor::own_txn`]).
//! - A statement without a transaction that writes several shards (a
//!   multi-shard INSERT, a broadcast UPDATE or DELETE, DDL) runs as a
//!   transaction of its own, committed the same way: atomic, one shard's
//!   failure rolls back the others. A prepared transaction cannot be
//!   rolled back for an older one, so a transaction that waits for a shard
//!   while prepared on another could wait for one that waits for it. So a
//!   shard is prepared only once the transaction holds every shard it
//!   needs, with one exception that saves COMMIT its prepare round: a
//!   statement that sends one command to each shard (a broadcast, DDL, an
//!   INSERT with one part per shard) first tries with each command
//!   preparing its shard (`[Begin, Run, Prepare]`, the anchor not
//!   prepared) and waiting for nothing (`no_wait`: a held shard answers
//!   `Busy` at once). If a shard was held, that attempt is aborted
//!   everywhere and the statement runs again the usual way
//!   ([`Executor::in_own_txn`]).
//! - A client holds its transaction on one index server (`Sql.Hold`); a
//!   hold that ends unreleased (the client went away) ends the
//!   transaction on every shard ([`Executor::release_abandoned`]).
//!   [`Executor::outcome`] answers, finally, whether a transaction
//!   committed (`SHOW TRANSACTION id`).
//! - Inside an explicit transaction, a statement's own error on one shard
//!   leaves the transaction open (as SQLite does); any other failure (a
//!   statement over several shards that failed on some, a shard that did
//!   not answer, a transaction rolled back by wound-wait) rolls the whole
//!   transaction back and says so (a retryable error: run it again from
//!   BEGIN).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use drsdb_common::command::{
    Command, CommandResult, Decision, Outcome, Statement, StatementResult, Step, TxnCommand, TxnState,
};
use drsdb_common::{shard, Error, GroupId, Result, TxnId};
use futures::future::join_all;

use super::{first_try_ms, spread_seed, Executor};
use crate::metrics::Metrics;

/// A client's transaction id older than this is refused: storage servers
/// roll back any transaction after `txn_max_duration_ms` (5 minutes by
/// default), and wound-wait favours older ids, so an old id must not be
/// accepted from anyone.
pub const MAX_TXN_AGE: std::time::Duration = std::time::Duration::from_secs(60 * 60);

/// A statement's own transaction (see [`Executor::own_txn`]).
#[derive(Debug)]
pub struct OwnTxn {
    /// Its first attempt.
    first: Txn,
    /// The attempt run when the first prepared each shard as it ran
    /// there, and found one held.
    again: Option<Txn>,
}

/// After a statement that prepared each shard as it ran there found a shard
/// held, how long the others skip doing so (under contention, such an
/// attempt mostly costs a round and an abort).
const CONTENDED_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// A transaction, as one statement of it sees it.
#[derive(Debug)]
pub struct Txn {
    /// Its id: a ULID, so that older transactions have smaller ids.
    pub id: TxnId,
    /// The shards where it is open.
    held: Mutex<BTreeSet<GroupId>>,
    /// Shards a command of it reached without an answer: it may be open
    /// there too.
    unsure: Mutex<BTreeSet<GroupId>>,
    /// Shards this statement sent a command to.
    sent: Mutex<BTreeSet<GroupId>>,
    /// For a statement run as its own transaction: its anchor, the shard
    /// that is not prepared before the decision.
    anchor: Option<GroupId>,
    /// For a statement run as its own transaction: its request id, claimed
    /// at the anchor (which then depends on the id alone, so that the
    /// statement sent again is claimed at the same shard).
    request: Option<String>,
    /// The first outcome the anchor answered a claim with: the statement
    /// was applied before.
    replayed: Mutex<Option<Outcome>>,
    /// For a statement run as its own transaction that sends one command
    /// per shard: each shard but the anchor is prepared by the command
    /// that runs the statement there, and no command waits for a shard
    /// held by another transaction (see [`Executor::in_own_txn`]).
    prepare_in_statement: bool,
    /// A shard refused a command of it, being held (with
    /// `prepare_in_statement` only).
    found_held: AtomicBool,
    /// Shards where it is prepared.
    prepared: Mutex<BTreeSet<GroupId>>,
}

impl Txn {
    /// A new explicit transaction (its id from [`Executor::txn_id`]).
    pub fn begin(id: TxnId) -> Txn {
        Txn::explicit(id, [])
    }

    /// The explicit transaction a client names: its id (one an index
    /// server made, at most [`MAX_TXN_AGE`] old) and the shards it holds
    /// (of the cluster's `shards`).
    pub fn from_client(id: &str, held: &[u64], shards: usize) -> Result<Txn> {
        let started = ulid::Ulid::from_string(id)
            .map_err(|_| Error::invalid(format!("malformed transaction id {id:?}: start a transaction with BEGIN")))?
            .timestamp_ms();
        let age_ms = (chrono::Utc::now().timestamp_millis() as u64).saturating_sub(started);
        if age_ms > MAX_TXN_AGE.as_millis() as u64 {
            return Err(Error::invalid(format!(
                "transaction {id} began {} s ago, longer than any transaction may run: it was rolled back; start \
                 again with BEGIN",
                age_ms / 1000
            )));
        }
        let data = shard::shard_groups(shards);
        let held: Vec<GroupId> = held.iter().map(|g| GroupId(*g)).collect();
        if let Some(g) = held.iter().find(|g| !data.contains(g)) {
            return Err(Error::invalid(format!("transaction {id} names shard {g}, which this cluster does not have")));
        }
        Ok(Txn::explicit(TxnId(id.to_string()), held))
    }

    /// An explicit transaction open on `held`.
    fn explicit(id: TxnId, held: impl IntoIterator<Item = GroupId>) -> Txn {
        Txn {
            id,
            held: Mutex::new(held.into_iter().collect()),
            unsure: Mutex::default(),
            sent: Mutex::default(),
            anchor: None,
            request: None,
            replayed: Mutex::default(),
            prepare_in_statement: false,
            found_held: AtomicBool::new(false),
            prepared: Mutex::default(),
        }
    }

    /// The shards where it is open, in order.
    pub fn held(&self) -> Vec<GroupId> {
        self.held.lock().expect("txn lock").iter().copied().collect()
    }

    /// The shards where it is or may be open.
    fn reached(&self) -> Vec<GroupId> {
        let mut all = self.held.lock().expect("txn lock").clone();
        all.extend(self.unsure.lock().expect("txn lock").iter());
        all.into_iter().collect()
    }

    fn holds(&self, group: GroupId) -> bool {
        self.held.lock().expect("txn lock").contains(&group)
    }

    fn command(&self, steps: Vec<Step>) -> Command {
        Command::Txn(TxnCommand {
            txn: self.id.clone(),
            now_ms: chrono::Utc::now().timestamp_millis(),
            steps,
            statement: self.anchor.is_some(),
            no_wait: self.prepare_in_statement,
        })
    }
}

impl Executor {
    /// A new transaction id: a ULID, increasing on this server even within
    /// one millisecond (so an older transaction here has a smaller id).
    pub(super) fn txn_id(&self) -> TxnId {
        let mut ids = self.txn_ids.lock().expect("txn id lock");
        TxnId(ids.generate().unwrap_or_else(|_| ulid::Ulid::generate()).to_string())
    }

    /// The transaction of its own `statement`, a write of one command to
    /// each of `commands` (a shard each) outside `txn`: one when it sends
    /// several commands, so that it is atomic, or when `always`. With a
    /// request id, the statement is claimed at a shard the id picks. With
    /// `one_command_each` (the statement sends one command to each shard),
    /// its first attempt prepares each shard as it runs there (see
    /// [`Executor::in_own_txn`]).
    pub(super) fn own_txn(
        &self,
        txn: Option<&Txn>,
        commands: &[GroupId],
        statement: &Statement,
        always: bool,
        one_command_each: bool,
    ) -> Option<OwnTxn> {
        if txn.is_some() || (commands.len() <= 1 && !always) {
            return None;
        }
        let shards = self.shards.load(std::sync::atomic::Ordering::Relaxed);
        let attempt = || {
            // The statement's first try dates the transaction, so that it
            // keeps its age when the statement is run again after losing a
            // conflict.
            let id = match first_try_ms(statement.request_id.as_deref()) {
                Some(t) => TxnId(ulid::Ulid::from_parts(t as u64, rand::random()).to_string()),
                None => self.txn_id(),
            };
            let mut own = Txn::begin(id);
            own.anchor = match &statement.request_id {
                // The seed is a function of the request id (see `clock_of`).
                Some(_) if shards > 0 => Some(shard::shard_group(shard::shard_of(statement.seed, shards))),
                _ => commands.iter().min().copied(),
            };
            own.request = statement.request_id.clone().filter(|_| shards > 0);
            own
        };
        let now_ms = chrono::Utc::now().timestamp_millis();
        let early = one_command_each && now_ms >= self.contended_until_ms.load(Ordering::Relaxed);
        let mut first = attempt();
        first.prepare_in_statement = early;
        Some(OwnTxn { first, again: early.then(attempt) })
    }

    /// Runs `body`, a write of a statement, in `txn` or in `own`, the
    /// statement's own transaction (from [`Executor::own_txn`]), which it
    /// then commits or aborts. When the first attempt prepared each shard
    /// as it ran there, COMMIT saves a round; none of its commands waited
    /// for a shard another transaction holds, since this one, prepared
    /// elsewhere, could be what that one waits for. When a shard was held,
    /// that attempt is aborted and the statement runs again the usual way:
    /// waiting for the shard, then a prepare round; so do the statements
    /// that start in the next [`CONTENDED_FOR`].
    pub(super) async fn in_own_txn<'a, F, Fut>(
        &'a self,
        txn: Option<&'a Txn>,
        own: Option<&'a OwnTxn>,
        body: F,
    ) -> Result<StatementResult>
    where
        F: Fn(Option<&'a Txn>) -> Fut,
        Fut: std::future::Future<Output = Result<StatementResult>>,
    {
        let Some(own) = own else { return body(txn).await };
        let r = body(Some(&own.first)).await;
        let held = own.first.found_held.load(Ordering::Relaxed);
        let replayed = own.first.replayed.lock().expect("txn lock").is_some();
        let Some(again) = own.again.as_ref().filter(|_| held && !replayed) else {
            return self.finish_own(&own.first, r).await;
        };
        // Other statements will likely find shards held too for a while:
        // they go the usual way at once.
        let until = chrono::Utc::now().timestamp_millis() + CONTENDED_FOR.as_millis() as i64;
        self.contended_until_ms.fetch_max(until, Ordering::Relaxed);
        self.abort(&own.first).await;
        Metrics::add(&self.metrics.held_reruns, 1);
        let r = body(Some(again)).await;
        self.finish_own(again, r).await
    }

    /// Ends a write that ran in `own`, its own transaction (see
    /// [`Executor::own_txn`]), with result `r`: commits it, or aborts it.
    /// When the anchor found the statement applied before, the first
    /// outcome is the answer.
    async fn finish_own(&self, own: &Txn, r: Result<StatementResult>) -> Result<StatementResult> {
        let replayed = own.replayed.lock().expect("txn lock").take();
        if let Some(first) = replayed {
            self.abort(own).await;
            return first;
        }
        match r {
            Ok(v) => {
                let request = own.request.clone().map(|id| (id, v.clone()));
                match self.commit(own, request).await? {
                    Some(first) => first,
                    None => Ok(v),
                }
            }
            Err(e) => {
                self.abort(own).await;
                // No commit was sent, so nothing of it can commit: a
                // failure that left some shard's outcome unknown becomes
                // one that applied nothing.
                Err(match e {
                    e @ (Error::InvalidInput(_) | Error::Retryable(_) | Error::StaleSchema { .. }) => e,
                    e => Error::Unavailable(format!(
                        "the statement was rolled back on every shard, so nothing of it was applied ({e}); run it \
                         again once every shard is available"
                    )),
                })
            }
        }
    }

    /// Ends a statement of explicit transaction `txn` with result `r`: a
    /// failure other than the statement's own error on one shard rolls the
    /// transaction back.
    pub(super) async fn settle<T>(&self, txn: &Txn, r: Result<T>) -> Result<T> {
        let e = match r {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let own_error = matches!(e, Error::InvalidInput(_))
            && txn.sent.lock().expect("txn lock").len() <= 1
            && txn.unsure.lock().expect("txn lock").is_empty();
        if own_error {
            return Err(e);
        }
        let _ = self.roll_back(txn).await;
        Err(rolled_back(txn, e))
    }

    /// Commits `txn` on the shards it holds (see the module's essay);
    /// `request`: the id and outcome of the statement it is the own
    /// transaction of. Returns the first outcome when the anchor found
    /// that statement applied before (then this one is rolled back).
    pub(super) async fn commit(
        &self,
        txn: &Txn,
        request: Option<(String, StatementResult)>,
    ) -> Result<Option<Outcome>> {
        let mut held = txn.held();
        let Some(anchor) = txn.anchor.or_else(|| held.first().copied()) else { return Ok(None) };
        let others: Vec<GroupId> = held.iter().copied().filter(|g| *g != anchor).collect();
        // An anchor picked by the request id may have had nothing to write:
        // it joins to claim the request and record the decision.
        let mut decide = Vec::new();
        if !held.contains(&anchor) {
            decide.push(Step::Begin);
            decide.extend(txn.request.clone().map(Step::Claim));
            held.push(anchor);
            held.sort();
        }
        decide.push(Step::Commit { participants: held.clone(), request });
        let unprepared: Vec<GroupId> = {
            let prepared = txn.prepared.lock().expect("txn lock");
            others.iter().copied().filter(|g| !prepared.contains(g)).collect()
        };
        if !unprepared.is_empty() {
            let prepared =
                join_all(unprepared.iter().map(|g| self.txn_step(*g, txn, vec![Step::Prepare { anchor }]))).await;
            if let Some((g, e)) = unprepared.iter().zip(prepared).find_map(|(g, r)| r.err().map(|e| (g, e))) {
                self.abort(txn).await;
                return Err(Error::Retryable(format!(
                    "shard {g} could not prepare the transaction ({e}); it was rolled back: run it again from BEGIN"
                )));
            }
        }
        let decision = match self.tier.write(anchor, txn.command(decide), false).await {
            Ok(CommandResult::Txn(Ok(_))) => Decision::Committed,
            Ok(CommandResult::Replayed(first)) => {
                self.abort(txn).await;
                return Ok(Some(first));
            }
            Ok(CommandResult::Txn(Err(e))) => {
                self.abort(txn).await;
                return Err(rolled_back(txn, e));
            }
            Ok(other) => return Err(Error::io(format!("unexpected result of a commit: {other:?}"))),
            // No answer: the anchor's record says what happened.
            Err(e) => match self.resolve(anchor, &txn.id).await {
                Ok(Decision::Committed) => Decision::Committed,
                Ok(Decision::Aborted) => {
                    self.abort(txn).await;
                    return Err(rolled_back(txn, e));
                }
                Err(asking) => {
                    return Err(Error::io(format!(
                        "the outcome of COMMIT is unknown: shard {anchor}, which records the decision of \
                         transaction {}, did not answer ({e}), nor when asked again ({asking}); the decision is \
                         made and applied on every shard once they answer: ask `SHOW TRANSACTION {}` before \
                         running it again",
                        txn.id, txn.id
                    )))
                }
            },
        };
        debug_assert_eq!(decision, Decision::Committed);
        let counter = match held.len() {
            1 => &self.metrics.commits_single_shard,
            _ => &self.metrics.commits_multi_shard,
        };
        Metrics::add(counter, 1);
        // Decided: shards that miss this commit get it from the resolver.
        let commit = || vec![Step::Commit { participants: held.clone(), request: None }];
        let finished = join_all(others.iter().map(|g| self.txn_step(*g, txn, commit()))).await;
        for (g, r) in others.iter().zip(finished) {
            if let Err(e) = r {
                tracing::info!(txn = %txn.id, group = %g, "commit not confirmed; the resolver will finish it: {e}");
            }
        }
        Ok(None)
    }

    /// Rolls back explicit transaction `txn` wherever it may be open. A
    /// shard that does not confirm makes it an error (the client sends the
    /// ROLLBACK again later); that shard rolls it back after its idle
    /// timeout anyway (nothing can commit it: only COMMIT would).
    pub(super) async fn roll_back(&self, txn: &Txn) -> Result<()> {
        self.end_everywhere(txn, Step::Rollback).await
    }

    /// Aborts `txn`, which has no commit decision, wherever it may be open
    /// or prepared. Best effort: a shard that does not answer stays
    /// prepared until the resolver finds the anchor's (presumed) abort.
    async fn abort(&self, txn: &Txn) {
        let _ = self.end_everywhere(txn, Step::Abort).await;
    }

    /// Sends `end` (`Rollback` or `Abort`) wherever `txn` is or may be
    /// open, and counts the abort. Fails if a shard did not confirm.
    async fn end_everywhere(&self, txn: &Txn, end: Step) -> Result<()> {
        let reached = txn.reached();
        let done = join_all(reached.iter().map(|g| self.txn_step(*g, txn, vec![end.clone()]))).await;
        Metrics::add(&self.metrics.aborts, 1);
        let mut unconfirmed = Ok(());
        for (g, r) in reached.iter().zip(done) {
            if let Err(e) = r {
                tracing::info!(txn = %txn.id, group = %g, "{end:?} not confirmed (idle timeout or resolver ends it): {e}");
                unconfirmed = Err(Error::unavailable(format!(
                    "shard {g} did not confirm the rollback of transaction {} ({e}); it rolls it back after \
                     txn_idle_timeout_ms anyway",
                    txn.id
                )));
            }
        }
        unconfirmed
    }

    /// Ends `txn`, whose client went away, on every shard (`resolve_everywhere`).
    pub async fn release_abandoned(&self, txn: &Txn) {
        match self.resolve_everywhere(&txn.id).await {
            Ok(d) => tracing::debug!(txn = %txn.id, ?d, "abandoned transaction ended"),
            Err(e) => tracing::info!(txn = %txn.id, "abandoned transaction not ended everywhere (its shards' idle \
                                                    timeout or the resolver will): {e}"),
        }
        Metrics::add(&self.metrics.aborts, 1);
    }

    /// Ends `txn` on every shard: rolls it back where it is open and
    /// records its abort where it is not (so that a statement of it still
    /// on its way cannot open it there). Where it is prepared, its anchor
    /// decides, told the same: an abort, unless its COMMIT was decided
    /// first. Returns the decision: committed if any shard says so.
    async fn resolve_everywhere(&self, txn: &TxnId) -> Result<Decision> {
        let groups = shard::shard_groups(self.shard_count().await?);
        let mut decision = Decision::Aborted;
        for (g, r) in groups.iter().zip(join_all(groups.iter().map(|g| self.resolve(*g, txn))).await) {
            match r {
                Ok(Decision::Committed) => decision = Decision::Committed,
                Ok(Decision::Aborted) => {}
                // Prepared here: its coordinator is committing it now.
                Err(Error::InvalidInput(_)) => {
                    return Err(Error::unavailable(format!("transaction {txn} is being committed now: ask again")))
                }
                Err(e) => return Err(Error::unavailable(format!("shard {g} did not answer ({e}); ask again"))),
            }
        }
        Ok(decision)
    }

    /// What became of transaction `txn`, for a client that could not learn
    /// the outcome of its COMMIT: final once answered. Every shard is asked
    /// what it knows (`Inquire`): a commit recorded anywhere means
    /// committed (the anchor records the decision before any participant
    /// commits); where it is prepared, its anchor decides; otherwise no
    /// decision was made (the anchor decides only once every other shard
    /// is prepared), and it is ended everywhere as an abandoned one is,
    /// unless the anchor committed meanwhile.
    pub async fn outcome(&self, txn: &TxnId) -> Result<Decision> {
        let groups = shard::shard_groups(self.shard_count().await?);
        let inquire = |g: GroupId| async move {
            match self.tier.write(g, lone_step(txn, Step::Inquire), true).await? {
                CommandResult::Inquired(state) => Ok(state),
                other => Err(Error::io(format!("unexpected result of an inquiry: {other:?}"))),
            }
        };
        let states: Vec<Result<TxnState>> = join_all(groups.iter().map(|g| inquire(*g))).await;
        if states.iter().any(|s| matches!(s, Ok(TxnState::Ended(Decision::Committed)))) {
            return Ok(Decision::Committed);
        }
        if let Some(anchor) = states.iter().find_map(|s| match s {
            Ok(TxnState::Prepared(anchor)) => Some(*anchor),
            _ => None,
        }) {
            return self.resolve(anchor, txn).await;
        }
        self.resolve_everywhere(txn).await
    }

    /// The decision on `txn` recorded at `anchor` (an abort, recorded now,
    /// when it has none).
    pub(crate) async fn resolve(&self, anchor: GroupId, txn: &TxnId) -> Result<Decision> {
        // Asking again is harmless: the first answer is recorded.
        match self.tier.write(anchor, lone_step(txn, Step::Resolve), true).await? {
            CommandResult::Resolved(d) => Ok(d),
            CommandResult::Txn(Err(e)) => Err(e),
            other => Err(Error::io(format!("unexpected result of a resolve: {other:?}"))),
        }
    }

    /// Sends `steps` of `txn` to `group`.
    async fn txn_step(&self, group: GroupId, txn: &Txn, steps: Vec<Step>) -> Result<StatementResult> {
        match self.tier.write(group, txn.command(steps), false).await? {
            CommandResult::Txn(outcome) => outcome,
            CommandResult::Busy(holder) => Err(busy(txn, group, &holder)),
            other => Err(Error::io(format!("unexpected transaction result {other:?}"))),
        }
    }

    /// Opens `txn`, the own transaction of a statement over `groups`, at its
    /// anchor too when that has nothing to write (a shard picked by the
    /// request id), claiming the request there: run beside the statement's
    /// parts, so that the transaction holds every shard it needs before
    /// any is prepared.
    pub(super) async fn join_anchor(&self, txn: Option<&Txn>, groups: &[GroupId]) -> Result<()> {
        let Some(t) = txn else { return Ok(()) };
        let (Some(anchor), Some(request)) = (t.anchor, t.request.clone()) else { return Ok(()) };
        if groups.contains(&anchor) {
            return Ok(());
        }
        self.send_steps(t, anchor, vec![Step::Begin, Step::Claim(request)]).await.map(drop)
    }

    /// Sends `steps` of `t` to `group`, keeping track of where it is open
    /// (or may be) and of a claim answered with an earlier outcome.
    async fn send_steps(&self, t: &Txn, group: GroupId, steps: Vec<Step>) -> Result<StatementResult> {
        t.sent.lock().expect("txn lock").insert(group);
        let prepares = steps.iter().any(|s| matches!(s, Step::Prepare { .. }));
        match self.tier.write(group, t.command(steps), false).await {
            Ok(CommandResult::Txn(outcome)) => {
                if outcome.is_ok() {
                    t.held.lock().expect("txn lock").insert(group);
                    if prepares {
                        t.prepared.lock().expect("txn lock").insert(group);
                    }
                }
                outcome
            }
            Ok(CommandResult::Busy(holder)) => Err(busy(t, group, &holder)),
            Ok(CommandResult::Replayed(first)) => {
                *t.replayed.lock().expect("txn lock") = Some(first);
                Err(Error::Retryable(format!("statement {:?} was applied before", t.request)))
            }
            Ok(other) => Err(Error::io(format!("unexpected transaction result {other:?}"))),
            Err(e) => {
                t.unsure.lock().expect("txn lock").insert(group);
                Err(e)
            }
        }
    }

    /// Applies one statement to one shard, autocommit or in `txn`.
    pub(super) async fn apply(
        &self,
        group: GroupId,
        statement: Statement,
        txn: Option<&Txn>,
    ) -> Result<StatementResult> {
        if let Some(t) = txn {
            let mut steps = Vec::with_capacity(3);
            if !t.holds(group) {
                steps.push(Step::Begin);
            }
            if t.anchor == Some(group) {
                steps.extend(t.request.clone().map(Step::Claim));
            }
            steps.push(Step::Run(statement));
            match t.anchor {
                Some(anchor) if t.prepare_in_statement && anchor != group => steps.push(Step::Prepare { anchor }),
                _ => {}
            }
            return self.send_steps(t, group, steps).await;
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

/// A prepared transaction idle this long on a shard's leader is taken for
/// one whose coordinator died: the resolver asks its anchor for the
/// decision (a commit normally follows its prepare within milliseconds; a
/// coordinator looking for a new leader waits up to `LEADER_DEADLINE`).
pub const IN_DOUBT_AFTER: std::time::Duration = std::time::Duration::from_secs(6);

/// A transaction holding a shard, as the shard's leader reports it.
#[derive(Debug, Clone)]
pub struct Held {
    /// The shard.
    pub group: GroupId,
    /// The transaction and its state there.
    pub holder: drsdb_proto::HolderStatus,
}

impl Held {
    /// Prepared and idle for longer than [`IN_DOUBT_AFTER`]: its
    /// coordinator is presumed dead.
    pub fn in_doubt(&self) -> bool {
        self.holder.anchor.is_some() && self.holder.idle_ms >= IN_DOUBT_AFTER.as_millis() as u64
    }
}

impl Executor {
    /// The transactions holding shards now, from each shard's leader.
    pub async fn held(&self) -> Vec<Held> {
        let mut held = Vec::new();
        for server in self.tier.status().await {
            let Ok(status) = server.status else { continue };
            for g in status.groups.into_iter().filter(|g| g.leader != 0 && g.leader == g.node) {
                if let Some(holder) = g.holder {
                    held.push(Held { group: GroupId(g.group), holder });
                }
            }
        }
        held
    }

    /// Finishes the prepared transactions whose coordinator went quiet:
    /// asks each one's anchor for the decision (an abort when there is
    /// none yet) and applies it where the transaction is prepared. Any
    /// index server may do this, at any time: the anchor's log orders the
    /// decision before or after the coordinator's own commit, never both.
    pub async fn resolve_in_doubt(&self) {
        for held in self.held().await.into_iter().filter(Held::in_doubt) {
            let Some(anchor) = held.holder.anchor else { continue };
            let txn = TxnId(held.holder.txn.clone());
            let decision = match self.resolve(GroupId(anchor), &txn).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::info!(%txn, anchor, "cannot learn the decision of an in-doubt transaction yet: {e}");
                    continue;
                }
            };
            let step = match decision {
                Decision::Committed => Step::Commit { participants: vec![held.group], request: None },
                Decision::Aborted => Step::Abort,
            };
            match self.tier.write(held.group, lone_step(&txn, step), true).await {
                Ok(CommandResult::Txn(Ok(_))) => {
                    tracing::info!(%txn, group = %held.group, ?decision, "resolved an in-doubt transaction");
                    Metrics::add(&self.metrics.in_doubt_resolved, 1);
                }
                Ok(other) => tracing::info!(%txn, group = %held.group, "resolving: {other:?}"),
                Err(e) => tracing::info!(%txn, group = %held.group, "resolving failed: {e}"),
            }
        }
    }
}

/// The error of a command of `txn` that `group` refused without waiting,
/// being held by transaction `holder`.
fn busy(txn: &Txn, group: GroupId, holder: &TxnId) -> Error {
    txn.found_held.store(true, Ordering::Relaxed);
    Error::Retryable(format!("shard {group} is held by transaction {holder}"))
}

/// `step` of transaction `txn`, sent by someone other than its
/// coordinator (a resolver, a client asking its outcome).
fn lone_step(txn: &TxnId, step: Step) -> Command {
    Command::Txn(TxnCommand {
        txn: txn.clone(),
        now_ms: chrono::Utc::now().timestamp_millis(),
        steps: vec![step],
        statement: false,
        no_wait: false,
    })
}

/// The error of a transaction that was rolled back after `e`: what to
/// run again is the transaction from BEGIN, or the statement it was the
/// own transaction of.
fn rolled_back(txn: &Txn, e: Error) -> Error {
    match txn.anchor {
        Some(_) => Error::Retryable(format!("{e}; the statement was rolled back on every shard: run it again")),
        None => Error::Retryable(format!("{e}; the transaction was rolled back: run it again from BEGIN")),
    }
}
