//! The typed contract between the SQL tier and the storage tier: the
//! statement an index server sends, the write commands a group's Raft log
//! carries, and their outcomes.
//!
//! Both tiers work with these Rust types; on the wire and in the log they
//! are the protobuf messages of `proto/storage.proto`, converted here and
//! nowhere else. Everything a replica needs to apply a command identically
//! is inside it: the SQL text, the parameters, the instant every clock
//! reading of the statement returns, and the seed for `random()`,
//! `randomblob()` and `ulid()`, all chosen by the index server before
//! replication.

use std::fmt;

use drsdb_proto as pb;

use crate::{Error, GroupId, Result, TxnId, Value};

/// One SQL statement with everything needed to run it deterministically.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    /// Exactly one SQL statement, as the client wrote it.
    pub sql: String,
    /// Values for its placeholders.
    pub params: Vec<Value>,
    /// Seeds the statement's random functions (chosen before replication).
    pub seed: u64,
    /// The statement's wall-clock time in ms since the Unix epoch: every
    /// clock reading of the statement returns it.
    pub now_ms: i64,
    /// Deduplication id: an autocommit statement whose id was applied in
    /// the last [`REQUEST_MEMORY_MS`] is not run again; its first outcome
    /// is returned.
    pub request_id: Option<String>,
    /// The schema version (`sql::schema_fingerprint`) of the catalog the
    /// statement was planned with; when set and the group's schema has
    /// another, the statement is refused with [`Error::StaleSchema`]
    /// before it runs. Replicas of a group share their schema, so they
    /// refuse alike.
    pub schema_version: Option<i64>,
    /// Most memory, in bytes, the statement's large heap blocks may hold
    /// at once; `None` means the storage tier's default
    /// ([`crate::config::DEFAULT_STATEMENT_MEMORY_MB`]). Carried in the
    /// log, so every replica holds a write to the same budget and fails it
    /// alike.
    pub memory_limit: Option<u64>,
}

/// How long an applied request id is remembered for deduplication
/// (measured on the statements' own clocks, so the same on every replica).
pub const REQUEST_MEMORY_MS: i64 = 10 * 60 * 1000;

impl Statement {
    /// A statement of `sql` with no parameters, seed 0 at instant 0, and
    /// none of the optional fields; callers set what they need.
    pub fn new(sql: impl Into<String>) -> Statement {
        Statement {
            sql: sql.into(),
            params: Vec::new(),
            seed: 0,
            now_ms: 0,
            request_id: None,
            schema_version: None,
            memory_limit: None,
        }
    }

    /// Roughly how many bytes the statement adds to a log entry.
    pub fn approximate_size(&self) -> usize {
        self.sql.len() + self.params.iter().map(Value::size).sum::<usize>()
    }
}

/// A command in a group's log.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Autocommit statements from several clients, applied in one SQLite
    /// transaction (group commit); each statement is atomic on its own.
    Batch(Vec<Statement>),
    /// Steps of one transaction on this group.
    Txn(TxnCommand),
}

impl Command {
    /// Roughly how many bytes the command takes in a log entry (its
    /// statements; the rest is small).
    pub fn approximate_size(&self) -> usize {
        let statements: usize = match self {
            Command::Batch(statements) => statements.iter().map(Statement::approximate_size).sum(),
            Command::Txn(t) => {
                t.steps.iter().map(|s| if let Step::Run(s) = s { s.approximate_size() } else { 0 }).sum()
            }
        };
        statements + COMMAND_OVERHEAD_BYTES
    }
}

/// What a command takes in a log entry besides its statements' text and
/// parameters (ids, clocks, step tags), roughly.
const COMMAND_OVERHEAD_BYTES: usize = 64;

/// Steps of transaction `txn` on one group, applied in order; the first
/// that fails ends the command (and, when the command opened the
/// transaction here, rolls it back here).
#[derive(Debug, Clone, PartialEq)]
pub struct TxnCommand {
    /// The transaction (a ULID: an older transaction has a smaller id).
    pub txn: TxnId,
    /// The proposer's clock in ms since the Unix epoch: dates the
    /// transaction's record (records are forgotten after
    /// [`TXN_RECORD_MEMORY_MS`] by these clocks, alike on every replica).
    pub now_ms: i64,
    /// What to do, in order.
    pub steps: Vec<Step>,
    /// The transaction is one statement's own, run by an index server with
    /// no client holding it open: idle, it is abandoned (its shards roll it
    /// back after `STATEMENT_TXN_IDLE_MS`, not `txn_idle_timeout_ms`).
    pub statement: bool,
    /// A `Begin` finding the group held answers [`CommandResult::Busy`] to
    /// the proposer at once instead of waiting for the holder to end (the
    /// command also prepares the transaction, and a prepared transaction
    /// must never wait: see the index server's `executor::txn`). Read by
    /// the proposer only: replicas apply the command alike either way.
    pub no_wait: bool,
}

/// How long a statement's own transaction may sit idle, not prepared, on a
/// shard before the shard rolls it back: its coordinator sends its steps
/// back to back, so this long means the coordinator is gone.
pub const STATEMENT_TXN_IDLE_MS: u64 = 5_000;

/// One step of a transaction on one group (see `TxnStep` in
/// `storage.proto`).
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Opens the transaction on this group. A group holds one transaction
    /// at a time: while a prepared or an older transaction holds it the
    /// command answers [`CommandResult::Busy`] (and is proposed again once
    /// the group is free); a younger one that has not prepared is rolled
    /// back (wound-wait), so waits never form a cycle.
    Begin,
    /// Runs a statement in the open transaction.
    Run(Statement),
    /// Promises to commit: the transaction can no longer fail here, and
    /// only the decision recorded at `anchor` ends it.
    Prepare {
        /// The group whose record holds the decision.
        anchor: GroupId,
    },
    /// Commits, recording the commit with every participant. Where the
    /// transaction is not prepared, this is the decision itself.
    Commit {
        /// Every group the transaction wrote to.
        participants: Vec<GroupId>,
        /// For a statement run as a transaction of its own: its request id
        /// and outcome, recorded with the commit (what a later
        /// [`Step::Claim`] of the id answers).
        request: Option<(String, StatementResult)>,
    },
    /// Rolls back an open transaction (the client's ROLLBACK, an idle
    /// timeout); refused once it is prepared.
    Rollback,
    /// Rolls back a prepared transaction whose anchor decided to abort.
    Abort,
    /// Asks this group (the anchor) for the decision: the recorded one, or
    /// an abort recorded now when there is none (presumed abort).
    Resolve,
    /// Goes on only if this request id has no recorded outcome here; else
    /// the command answers [`CommandResult::Replayed`] and changes nothing.
    /// A statement re-sent after a lost reply is claimed at the same
    /// group each time, so it commits once.
    Claim(String),
    /// Asks what this group knows of the transaction
    /// ([`CommandResult::Inquired`]), changing nothing.
    Inquire,
}

/// How long a transaction's record (committed or rolled back) is kept, by
/// the clocks of the commands that write and forget them. A participant
/// left prepared for longer than this would find no decision and abort.
pub const TXN_RECORD_MEMORY_MS: i64 = 24 * 60 * 60 * 1000;

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Batch(s) => write!(f, "batch of {}", s.len()),
            Command::Txn(t) => {
                write!(f, "{}:", t.txn)?;
                for step in &t.steps {
                    match step {
                        Step::Begin => write!(f, " begin")?,
                        Step::Run(s) => write!(f, " run `{}`", s.sql)?,
                        Step::Prepare { anchor } => write!(f, " prepare (anchor {anchor})")?,
                        Step::Commit { participants, .. } => {
                            write!(f, " commit ({} participants)", participants.len())?
                        }
                        Step::Rollback => write!(f, " rollback")?,
                        Step::Abort => write!(f, " abort")?,
                        Step::Resolve => write!(f, " resolve")?,
                        Step::Claim(r) => write!(f, " claim {r}")?,
                        Step::Inquire => write!(f, " inquire")?,
                    }
                }
                Ok(())
            }
        }
    }
}

/// A result column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Name as SQLite reports it.
    pub name: String,
    /// Declared type; empty for expressions.
    pub decl_type: String,
}

/// What one statement produced.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StatementResult {
    /// Result columns (empty for statements without rows).
    pub columns: Vec<Column>,
    /// Result rows (`RETURNING`, or a query inside a transaction).
    pub rows: Vec<Vec<Value>>,
    /// Rows changed.
    pub rows_affected: u64,
    /// `last_insert_rowid()` after the statement.
    pub last_insert_rowid: i64,
}

/// The outcome of one statement.
pub type Outcome = Result<StatementResult, Error>;

/// The result of applying one command.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum CommandResult {
    /// Entries that carry no command (blank, membership).
    #[default]
    None,
    /// One outcome per statement of a `Batch`, in order.
    Batch(Vec<Outcome>),
    /// Transaction `.0` holds the group; the command did nothing and must
    /// be proposed again once that transaction no longer holds it.
    Busy(TxnId),
    /// The outcome of a transaction command: its last statement's result,
    /// or the error of the step that failed.
    Txn(Outcome),
    /// The decision a [`Step::Resolve`] found or made.
    Resolved(Decision),
    /// A [`Step::Claim`] found its request applied already: its first
    /// outcome (the command changed nothing).
    Replayed(Outcome),
    /// What a [`Step::Inquire`] found.
    Inquired(TxnState),
}

/// What one group knows of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnState {
    /// Nothing: it never ran there, or its record was forgotten.
    Unknown,
    /// Recorded as ended there.
    Ended(Decision),
    /// Open there, not prepared.
    Open,
    /// Prepared there; its decision is recorded at the anchor.
    Prepared(GroupId),
}

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Committed everywhere it wrote (or to be, where still prepared).
    Committed,
    /// Rolled back everywhere.
    Aborted,
}

/// A required field missing from a message: the peer sent something this
/// version cannot read.
fn missing(what: &str) -> Error {
    Error::invalid(format!("malformed message: {what} is missing"))
}

impl From<Statement> for pb::Statement {
    fn from(s: Statement) -> Self {
        pb::Statement {
            sql: s.sql,
            params: s.params.into_iter().map(Into::into).collect(),
            seed: s.seed,
            now_ms: s.now_ms,
            request_id: s.request_id,
            schema_version: s.schema_version,
            memory_limit: s.memory_limit,
        }
    }
}

impl From<pb::Statement> for Statement {
    fn from(s: pb::Statement) -> Self {
        Statement {
            sql: s.sql,
            params: s.params.into_iter().map(Into::into).collect(),
            seed: s.seed,
            now_ms: s.now_ms,
            request_id: s.request_id,
            schema_version: s.schema_version,
            memory_limit: s.memory_limit,
        }
    }
}

impl From<Command> for pb::Command {
    fn from(c: Command) -> Self {
        use pb::command::Kind;
        let kind = match c {
            Command::Batch(statements) => {
                Kind::Batch(pb::Batch { statements: statements.into_iter().map(Into::into).collect() })
            }
            Command::Txn(t) => Kind::Txn(pb::TxnCommand {
                txn: t.txn.0,
                now_ms: t.now_ms,
                steps: t.steps.into_iter().map(Into::into).collect(),
                statement: t.statement,
                no_wait: t.no_wait,
            }),
        };
        pb::Command { kind: Some(kind) }
    }
}

impl TryFrom<pb::Command> for Command {
    type Error = Error;
    fn try_from(c: pb::Command) -> Result<Self> {
        use pb::command::Kind;
        Ok(match c.kind.ok_or_else(|| missing("the command"))? {
            Kind::Batch(b) => Command::Batch(b.statements.into_iter().map(Into::into).collect()),
            Kind::Txn(t) => Command::Txn(TxnCommand {
                txn: TxnId(t.txn),
                now_ms: t.now_ms,
                steps: t.steps.into_iter().map(Step::try_from).collect::<Result<_>>()?,
                statement: t.statement,
                no_wait: t.no_wait,
            }),
        })
    }
}

impl From<Step> for pb::TxnStep {
    fn from(s: Step) -> Self {
        use pb::txn_step::Kind;
        let kind = match s {
            Step::Begin => Kind::Begin(pb::Unit {}),
            Step::Run(s) => Kind::Run(s.into()),
            Step::Prepare { anchor } => Kind::Prepare(anchor.0),
            Step::Commit { participants, request } => {
                let (request_id, outcome) = request.map_or((None, None), |(id, r)| (Some(id), Some(r.into())));
                Kind::Commit(pb::CommitStep {
                    participants: Some(pb::Participants { groups: participants.into_iter().map(|g| g.0).collect() }),
                    request_id,
                    outcome,
                })
            }
            Step::Rollback => Kind::Rollback(pb::Unit {}),
            Step::Abort => Kind::Abort(pb::Unit {}),
            Step::Resolve => Kind::Resolve(pb::Unit {}),
            Step::Claim(r) => Kind::Claim(r),
            Step::Inquire => Kind::Inquire(pb::Unit {}),
        };
        pb::TxnStep { kind: Some(kind) }
    }
}

impl TryFrom<pb::TxnStep> for Step {
    type Error = Error;
    fn try_from(s: pb::TxnStep) -> Result<Self> {
        use pb::txn_step::Kind;
        Ok(match s.kind.ok_or_else(|| missing("the transaction step"))? {
            Kind::Begin(_) => Step::Begin,
            Kind::Run(s) => Step::Run(s.into()),
            Kind::Prepare(g) => Step::Prepare { anchor: GroupId(g) },
            Kind::Commit(c) => Step::Commit {
                participants: c.participants.map(|p| p.groups.into_iter().map(GroupId).collect()).unwrap_or_default(),
                request: match (c.request_id, c.outcome) {
                    (Some(id), Some(outcome)) => Some((id, outcome.into())),
                    (None, _) => None,
                    (Some(_), None) => return Err(missing("the outcome of the committed request")),
                },
            },
            Kind::Rollback(_) => Step::Rollback,
            Kind::Abort(_) => Step::Abort,
            Kind::Resolve(_) => Step::Resolve,
            Kind::Claim(r) => Step::Claim(r),
            Kind::Inquire(_) => Step::Inquire,
        })
    }
}

impl From<Column> for pb::Column {
    fn from(c: Column) -> Self {
        pb::Column { name: c.name, decl_type: c.decl_type }
    }
}

impl From<pb::Column> for Column {
    fn from(c: pb::Column) -> Self {
        Column { name: c.name, decl_type: c.decl_type }
    }
}

impl From<StatementResult> for pb::StatementResult {
    fn from(r: StatementResult) -> Self {
        pb::StatementResult {
            columns: r.columns.into_iter().map(Into::into).collect(),
            rows: crate::value::to_rows(r.rows).rows,
            rows_affected: r.rows_affected,
            last_insert_rowid: r.last_insert_rowid,
        }
    }
}

impl From<pb::StatementResult> for StatementResult {
    fn from(r: pb::StatementResult) -> Self {
        StatementResult {
            columns: r.columns.into_iter().map(Into::into).collect(),
            rows: crate::value::rows_from(pb::Rows { rows: r.rows }).collect(),
            rows_affected: r.rows_affected,
            last_insert_rowid: r.last_insert_rowid,
        }
    }
}

/// An outcome as its message.
pub fn outcome_to_pb(o: Outcome) -> pb::Outcome {
    use pb::outcome::Kind;
    pb::Outcome {
        kind: Some(match o {
            Ok(r) => Kind::Ok(r.into()),
            Err(e) => Kind::Error(e.into()),
        }),
    }
}

/// The outcome a message holds.
pub fn outcome_from_pb(o: pb::Outcome) -> Result<Outcome> {
    use pb::outcome::Kind;
    Ok(match o.kind.ok_or_else(|| missing("the outcome"))? {
        Kind::Ok(r) => Ok(r.into()),
        Kind::Error(e) => Err(e.into()),
    })
}

impl From<CommandResult> for pb::CommandResult {
    fn from(r: CommandResult) -> Self {
        use pb::command_result::Kind;
        let kind = match r {
            CommandResult::None => None,
            CommandResult::Batch(outcomes) => {
                Some(Kind::Batch(pb::Outcomes { outcomes: outcomes.into_iter().map(outcome_to_pb).collect() }))
            }
            CommandResult::Busy(holder) => Some(Kind::Busy(pb::Busy { holder: holder.0 })),
            CommandResult::Txn(o) => Some(Kind::Txn(outcome_to_pb(o))),
            CommandResult::Resolved(d) => Some(Kind::Resolved(d == Decision::Committed)),
            CommandResult::Replayed(o) => Some(Kind::Replayed(outcome_to_pb(o))),
            CommandResult::Inquired(state) => {
                use pb::inquired::State;
                let (state, anchor) = match state {
                    TxnState::Unknown => (State::Unknown, 0),
                    TxnState::Ended(Decision::Committed) => (State::Committed, 0),
                    TxnState::Ended(Decision::Aborted) => (State::Aborted, 0),
                    TxnState::Open => (State::Open, 0),
                    TxnState::Prepared(anchor) => (State::Prepared, anchor.0),
                };
                Some(Kind::Inquired(pb::Inquired { state: state.into(), anchor }))
            }
        };
        pb::CommandResult { kind }
    }
}

impl TryFrom<pb::CommandResult> for CommandResult {
    type Error = Error;
    fn try_from(r: pb::CommandResult) -> Result<Self> {
        use pb::command_result::Kind;
        Ok(match r.kind {
            None => CommandResult::None,
            Some(Kind::Batch(b)) => {
                CommandResult::Batch(b.outcomes.into_iter().map(outcome_from_pb).collect::<Result<_>>()?)
            }
            Some(Kind::Busy(b)) => CommandResult::Busy(TxnId(b.holder)),
            Some(Kind::Txn(o)) => CommandResult::Txn(outcome_from_pb(o)?),
            Some(Kind::Resolved(committed)) => {
                CommandResult::Resolved(if committed { Decision::Committed } else { Decision::Aborted })
            }
            Some(Kind::Replayed(o)) => CommandResult::Replayed(outcome_from_pb(o)?),
            Some(Kind::Inquired(i)) => {
                use pb::inquired::State;
                CommandResult::Inquired(match State::try_from(i.state) {
                    Ok(State::Unknown) => TxnState::Unknown,
                    Ok(State::Committed) => TxnState::Ended(Decision::Committed),
                    Ok(State::Aborted) => TxnState::Ended(Decision::Aborted),
                    Ok(State::Open) => TxnState::Open,
                    Ok(State::Prepared) => TxnState::Prepared(GroupId(i.anchor)),
                    Err(_) => return Err(Error::invalid(format!("unknown transaction state {}", i.state))),
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement() -> Statement {
        Statement {
            sql: "INSERT INTO t VALUES (?, ?)".into(),
            params: vec![Value::Integer(-3), Value::Blob(vec![0, 255])],
            seed: 42,
            now_ms: -1,
            request_id: Some("s1-7".into()),
            schema_version: Some(-9),
            memory_limit: Some(64 << 20),
        }
    }

    #[test]
    fn every_command_round_trips() {
        let txn = TxnId("01J".into());
        let steps = vec![
            Step::Begin,
            Step::Run(statement()),
            Step::Prepare { anchor: GroupId(3) },
            Step::Commit { participants: vec![GroupId(1), GroupId(3)], request: None },
            Step::Commit { participants: vec![], request: Some(("r-1".into(), StatementResult::default())) },
            Step::Claim("r-1".into()),
            Step::Rollback,
            Step::Abort,
            Step::Resolve,
            Step::Inquire,
        ];
        for c in [
            Command::Batch(vec![statement(), Statement::new("SELECT 1")]),
            Command::Txn(TxnCommand { txn, now_ms: -7, steps, statement: true, no_wait: true }),
        ] {
            assert_eq!(Command::try_from(pb::Command::from(c.clone())), Ok(c));
        }
    }

    #[test]
    fn every_result_round_trips() {
        let rows = StatementResult {
            columns: vec![Column { name: "a".into(), decl_type: "INT".into() }],
            rows: vec![vec![Value::Null, Value::Real(-0.0)]],
            rows_affected: 2,
            last_insert_rowid: -5,
        };
        for r in [
            CommandResult::None,
            CommandResult::Busy(TxnId("t".into())),
            CommandResult::Batch(vec![Ok(rows.clone()), Err(Error::StaleSchema { version: 3 })]),
            CommandResult::Txn(Ok(rows)),
            CommandResult::Resolved(Decision::Committed),
            CommandResult::Resolved(Decision::Aborted),
            CommandResult::Inquired(TxnState::Unknown),
            CommandResult::Inquired(TxnState::Ended(Decision::Committed)),
            CommandResult::Inquired(TxnState::Ended(Decision::Aborted)),
            CommandResult::Inquired(TxnState::Open),
            CommandResult::Inquired(TxnState::Prepared(GroupId(4))),
            CommandResult::Replayed(Err(Error::invalid("no such table: t"))),
            CommandResult::Txn(Err(Error::invalid("UNIQUE constraint failed: t.a"))),
        ] {
            assert_eq!(CommandResult::try_from(pb::CommandResult::from(r.clone())), Ok(r));
        }
    }

    #[test]
    fn a_command_without_its_kind_is_refused() {
        let e = Command::try_from(pb::Command { kind: None }).unwrap_err();
        assert!(matches!(e, Error::InvalidInput(m) if m.contains("missing")));
    }
}
