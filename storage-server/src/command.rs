//! The typed commands a group's Raft log carries, and their results.
//!
//! Raft sees a command as bytes (serde); the state machine interprets it.
//! Everything a replica needs to apply a command identically is inside it:
//! the SQL text, the parameters, the instant every clock reading of the
//! statement returns, and the seed for `random()`, `randomblob()` and
//! `ulid()`, all chosen by the index server before replication.

use std::fmt;

use drsdb_common::{Error, TxnId, Value};
use serde::{Deserialize, Serialize};

/// One SQL statement with everything needed to run it deterministically.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// the last [`crate::REQUEST_MEMORY_MS`] is not run again; its first
    /// outcome is returned.
    #[serde(default)]
    pub request_id: Option<String>,
    /// The schema version (`sql::schema_fingerprint`) of the catalog the
    /// statement was planned with; when set and the group's schema has
    /// another, the statement is refused with [`Error::StaleSchema`]
    /// before it runs. Replicas of a group share their schema, so they
    /// refuse alike.
    #[serde(default)]
    pub schema_version: Option<i64>,
    /// Most memory, in bytes, the statement's large heap blocks may hold
    /// at once (see `heap`); `None` means
    /// [`crate::sqlite::DEFAULT_STATEMENT_MEMORY`]. Carried in the log, so every
    /// replica holds a write to the same budget and fails it alike.
    #[serde(default)]
    pub memory_limit: Option<u64>,
}

/// A command in a group's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Autocommit statements from several clients, applied in one SQLite
    /// transaction (group commit); each statement is atomic on its own.
    Batch(Vec<Statement>),
    /// Opens an explicit transaction; it holds the group until it ends.
    Begin(TxnId),
    /// A statement inside an open transaction.
    InTxn(TxnId, Statement),
    /// Commits a transaction.
    Commit(TxnId),
    /// Rolls a transaction back (by the client's ROLLBACK, or by the
    /// leader when the transaction sat idle too long).
    Rollback(TxnId),
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Batch(s) => write!(f, "batch of {}", s.len()),
            Command::Begin(t) => write!(f, "begin {t}"),
            Command::InTxn(t, s) => write!(f, "in {t}: {}", s.sql),
            Command::Commit(t) => write!(f, "commit {t}"),
            Command::Rollback(t) => write!(f, "rollback {t}"),
        }
    }
}

/// A result column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    /// Name as SQLite reports it.
    pub name: String,
    /// Declared type; empty for expressions.
    pub decl_type: String,
}

/// What one statement produced.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub enum CommandResult {
    /// Entries that carry no command (blank, membership).
    #[default]
    None,
    /// One outcome per statement of a `Batch`, in order.
    Batch(Vec<Outcome>),
    /// A transaction holds the group; the command did nothing and must be
    /// proposed again once the group is free.
    Busy,
    /// The outcome of `Begin`, `InTxn`, `Commit` or `Rollback`.
    Txn(Outcome),
}

/// Serializes a command or result for the wire and the log.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("commands always serialize")
}

/// Deserializes what [`encode`] produced; malformed input is invalid input.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::invalid(format!("malformed message: {e}")))
}
