//! SQLite connections as drsdb uses them: how they are opened, the
//! deterministic functions every replica registers, the authorizer that
//! keeps user SQL away from drsdb's own tables and from transaction
//! control, and running one statement.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drsdb_common::stream::{columns_part, rows_part};
use drsdb_common::value::Batch;
use drsdb_common::{Error, Value};
use drsdb_proto as pb;
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rusqlite::functions::FunctionFlags;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::{clock, heap, sum};
use drsdb_common::command::{Column, Statement, StatementResult};

/// Prefix of drsdb's own tables inside a group's database; user SQL may
/// not name them.
pub const INTERNAL_PREFIX: &str = "_drsdb";

/// How long a connection waits for a lock held by another connection of
/// the same process (a checkpoint, a snapshot being taken).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLite virtual-machine steps between two checks of a statement's budget.
const STEPS_PER_CHECK: i32 = 10_000;
/// Compiled user statements kept per connection (least recently used
/// go first): applying a statement seen before skips parsing it.
const STATEMENT_CACHE: usize = 256;
/// Most virtual-machine steps one statement may take (about a minute of
/// work). The count is the same on every replica, so a runaway statement
/// fails identically everywhere instead of wedging the log.
pub const MAX_STATEMENT_STEPS: u64 = 5_000_000_000;

/// Longest string or blob a statement may build (SQLite's length limit,
/// on every connection): larger values fail the statement, the same way
/// on every replica, instead of exhausting memory on all of them.
pub const MAX_VALUE_BYTES: i32 = drsdb_common::sql::MAX_VALUE_BYTES as i32;

/// A statement's memory budget when it names none
/// ([`Statement::memory_limit`]).
pub const DEFAULT_STATEMENT_MEMORY: u64 = drsdb_common::config::DEFAULT_STATEMENT_MEMORY_MB << 20;

/// Prepares SQLite for drsdb (once per process; servers call it before
/// anything else touches SQLite): installs the per-statement heap budgets
/// and the clock VFS. Returns false when SQLite had already started, so
/// that memory budgets are not enforced in this process.
pub fn start() -> bool {
    clock::register();
    heap::install()
}

/// SQLite functions whose values depend on the connection's history, which
/// differs between replicas (a replica that restarted has a fresh
/// connection): refused inside replicated statements.
const CONNECTION_FUNCTIONS: &[(&str, i32)] =
    &[("changes", 0), ("total_changes", 0), ("last_insert_rowid", 0), ("sqlite_offset", 1)];

/// Pragmas user SQL may run: read-only introspection.
const ALLOWED_PRAGMAS: &[&str] =
    &["table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo", "foreign_key_list"];

/// Pragmas the FTS and R*Tree modules read while a statement runs (not
/// user SQL, whose answers could differ between replicas): `page_size`
/// sizes their nodes (fixed when a database is created, kept by
/// snapshots), `data_version` tells FTS5 when to drop its caches.
const MODULE_PRAGMAS: &[&str] = &["page_size", "data_version"];

/// The per-statement inputs of the deterministic functions.
struct Env {
    rng: ChaCha8Rng,
    now_ms: i64,
    last_ulid: Option<u128>,
    /// Budget checks left for the running statement.
    checks_left: u64,
    /// What else may stop the running statement.
    limits: Limits,
    /// Why the running statement was stopped, once it was.
    stopped: Option<Stop>,
}

/// What may stop a read before its step budget runs out. Replicated
/// statements take neither: they must end the same way on every replica,
/// so only their (deterministic) step budget bounds them.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Set from another thread to stop the statement (its reader left).
    pub cancel: Option<Arc<AtomicBool>>,
    /// The statement stops once this instant has passed.
    pub deadline: Option<Instant>,
    /// The statement stops at its first progress check (after
    /// `STEPS_PER_CHECK` SQLite steps): a read tried on a thread that must
    /// not block for long, run again elsewhere when it stops so
    /// ([`Db::yielded`]).
    pub short: bool,
}

/// Why a statement was interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Budget,
    Cancelled,
    Deadline,
    /// A short read ([`Limits::short`]) that was not.
    Long,
}

/// A connection plus the switches drsdb flips around each statement.
pub struct Db {
    conn: Connection,
    env: Arc<Mutex<Env>>,
    /// Whose SQL the connection is compiling now (a [`Phase`]), which
    /// decides what the authorizer lets through.
    phase: Arc<AtomicU8>,
    /// Most virtual-machine steps per user statement.
    max_steps: u64,
    /// The schema's fingerprint, with SQLite's `schema_version` it was
    /// computed at (recomputed when that moves).
    fingerprint: Mutex<Option<(i64, i64)>>,
    /// The `schema_version` the cached user statements were compiled at
    /// (the cache is emptied when it moves).
    cached_at: Mutex<Option<i64>>,
}

/// Whether a SQLite error is the statement's fault or the environment's.
#[derive(Debug)]
pub enum Failure {
    /// The statement failed (syntax, constraint, type): report it.
    Statement(Error),
    /// The disk or database failed: the replica must stop.
    Environment(std::io::Error),
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        let code = match &e {
            rusqlite::Error::SqliteFailure(fe, _) | rusqlite::Error::SqlInputError { error: fe, .. } => Some(fe.code),
            _ => None,
        };
        match code {
            Some(
                ErrorCode::SystemIoFailure
                | ErrorCode::DiskFull
                | ErrorCode::DatabaseCorrupt
                | ErrorCode::NotADatabase
                | ErrorCode::CannotOpen
                | ErrorCode::OutOfMemory
                | ErrorCode::FileLockingProtocolFailed
                | ErrorCode::PermissionDenied
                | ErrorCode::ReadOnly
                | ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked,
            ) => Failure::Environment(std::io::Error::other(e.to_string())),
            Some(ErrorCode::AuthorizationForStatementDenied) => Failure::Statement(Error::invalid(format!(
                "{}: drsdb refuses statements a replica could not reproduce or that reach outside the database \
                 (temporary tables, views and triggers; SAVEPOINT; ATTACH; PRAGMAs other than table introspection; \
                 drsdb's own _drsdb tables); use a regular table or view instead",
                statement_message(&e)
            ))),
            Some(ErrorCode::OperationInterrupted) => Failure::Statement(Stop::Budget.error()),
            _ => Failure::Statement(Error::invalid(statement_message(&e))),
        }
    }
}

impl Stop {
    fn error(self) -> Error {
        match self {
            Stop::Budget => Error::invalid(format!(
                "statement stopped: over the budget of {MAX_STATEMENT_STEPS} SQLite steps (about a minute of work); \
                 narrow it, or split it into smaller statements"
            )),
            Stop::Cancelled => Error::invalid("statement cancelled: its reader went away"),
            Stop::Long => Error::invalid("statement stopped: it is not short; run it again without `Limits::short`"),
            Stop::Deadline => Error::invalid(
                "statement stopped: it ran longer than the storage server's statement_timeout_ms; narrow it, or \
                 raise the timeout",
            ),
        }
    }
}

/// SQLite's message for a failed statement, without rusqlite's decoration.
fn statement_message(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqlInputError { msg, .. } => msg.clone(),
        rusqlite::Error::SqliteFailure(_, Some(msg)) => msg.clone(),
        other => other.to_string(),
    }
}

impl Db {
    /// Opens (creating if needed) a group's database for writing: WAL, and
    /// the deterministic functions. `synchronous = NORMAL`: a commit is
    /// atomic at once but durable only at the next checkpoint or sync. The
    /// Raft log is durable: what a crash loses is applied again from it
    /// (the applied id commits with the effects), and the state machine
    /// syncs before a snapshot lets the log be purged.
    pub fn open_writer(path: &Path) -> rusqlite::Result<Db> {
        clock::register();
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags_and_vfs(path, flags, clock::VFS_NAME)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)?;
        for &(name, args) in CONNECTION_FUNCTIONS {
            conn.create_scalar_function(name, args, FunctionFlags::SQLITE_UTF8, move |_| {
                Err::<i64, _>(rusqlite::Error::UserFunctionError(
                    format!(
                        "{name}() depends on the connection and is not available in replicated statements; \
                         statement results report rows affected and the last rowid"
                    )
                    .into(),
                ))
            })?;
        }
        Self::wrap(conn)
    }

    /// Opens a group's database read-only (readers see the last committed
    /// state, never an open transaction's changes).
    pub fn open_reader(path: &Path) -> rusqlite::Result<Db> {
        clock::register();
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags_and_vfs(path, flags, clock::VFS_NAME)?;
        conn.pragma_update(None, "query_only", true)?;
        // Reads are held to the same cap on values as writes: a read that
        // builds a huge string fails instead of exhausting memory.
        conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)?;
        Self::wrap(conn)
    }

    /// Opens a private scratch database (a temporary file that SQLite
    /// deletes on close, cached in memory until it grows): what an index
    /// server computes with, with the same functions and authorizer.
    pub fn open_scratch() -> rusqlite::Result<Db> {
        clock::register();
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags_and_vfs("", flags, clock::VFS_NAME)?;
        conn.pragma_update(None, "synchronous", "OFF")?;
        conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)?;
        Self::wrap(conn)
    }

    fn wrap(mut conn: Connection) -> rusqlite::Result<Db> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // User SQL may read but not write the shadow tables of virtual
        // tables (an FTS index written by hand would be corrupt).
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
        let env = Arc::new(Mutex::new(Env {
            rng: ChaCha8Rng::seed_from_u64(0),
            now_ms: 0,
            last_ulid: None,
            checks_left: 0,
            limits: Limits::default(),
            stopped: None,
        }));
        register_functions(&conn, &env)?;
        let budget = env.clone();
        conn.progress_handler(
            STEPS_PER_CHECK,
            Some(move || {
                let mut env = budget.lock().expect("env lock");
                env.checks_left = env.checks_left.saturating_sub(1);
                env.stopped = if env.checks_left == 0 {
                    Some(Stop::Budget)
                } else if env.limits.short {
                    Some(Stop::Long)
                } else if env.limits.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
                    Some(Stop::Cancelled)
                } else if env.limits.deadline.is_some_and(|d| Instant::now() >= d) {
                    Some(Stop::Deadline)
                } else {
                    None
                };
                env.stopped.is_some()
            }),
        )?;
        let phase = Arc::new(AtomicU8::new(Phase::User as u8));
        let flag = phase.clone();
        conn.authorizer(Some(move |ctx: AuthContext<'_>| authorize(&ctx, flag.load(Ordering::Relaxed))))?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(Db {
            conn,
            env,
            phase,
            max_steps: MAX_STATEMENT_STEPS,
            fingerprint: Mutex::new(None),
            cached_at: Mutex::new(None),
        })
    }

    /// SQLite's `schema_version`: moves with every schema change.
    fn schema_cookie(&self) -> rusqlite::Result<i64> {
        self.internal(|c| c.query_row("PRAGMA schema_version", [], |r| r.get(0)))
    }

    /// The schema's version as every replica computes it alike
    /// ([`drsdb_common::sql::schema_fingerprint`]).
    pub fn schema_fingerprint(&self) -> rusqlite::Result<i64> {
        let cookie = self.schema_cookie()?;
        self.fingerprint_at(cookie)
    }

    fn fingerprint_at(&self, cookie: i64) -> rusqlite::Result<i64> {
        let mut cached = self.fingerprint.lock().expect("fingerprint lock");
        if let Some((at, fingerprint)) = *cached {
            if at == cookie {
                return Ok(fingerprint);
            }
        }
        let rows: Vec<[String; 4]> = self.internal(|c| {
            let mut stmt = c.prepare(drsdb_common::sql::SCHEMA_OBJECTS)?;
            let rows = stmt.query_map([], |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?]))?;
            rows.collect()
        })?;
        let fingerprint =
            drsdb_common::sql::schema_fingerprint(rows.iter().map(|r| [r[0].as_str(), &r[1], &r[2], &r[3]]));
        *cached = Some((cookie, fingerprint));
        Ok(fingerprint)
    }

    /// Runs drsdb's own SQL (transaction control, bookkeeping), bypassing
    /// the authorizer. Never `prepare_cached` here: the statement cache
    /// holds user statements, authorized as such, and a user statement of
    /// the same text would find one authorized as drsdb's own.
    pub fn internal<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> rusqlite::Result<T> {
        // drsdb's own statements are not budgeted.
        self.env.lock().expect("env lock").checks_left = u64::MAX;
        self.phase.store(Phase::Internal as u8, Ordering::Relaxed);
        let r = f(&self.conn);
        self.phase.store(Phase::User as u8, Ordering::Relaxed);
        r
    }

    /// True outside any open SQLite transaction.
    pub fn is_autocommit(&self) -> bool {
        self.conn.is_autocommit()
    }

    /// Runs `stmt` like [`Db::run`], handing its result to `send` as the
    /// parts of a result stream: the columns, then the rows in batches
    /// (`value::Batch`, at most `rows_per_part` rows). The rows made before
    /// the statement ended are sent also when it failed, as SQLite hands
    /// them out before its error. `send` returning false (the reader left)
    /// stops the statement. The caller sends the last part: `Done`, or the
    /// error.
    pub fn run_parts(
        &self,
        stmt: &Statement,
        limits: Limits,
        rows_per_part: usize,
        send: impl Fn(pb::ResultPart) -> bool,
    ) -> Result<StatementResult, Failure> {
        let mut batch = Batch::new(rows_per_part);
        let result = self.run(
            stmt,
            limits,
            |columns| {
                // A reader that left shows up when the first rows are sent.
                send(columns_part(columns));
            },
            |row| batch.push(row).is_none_or(|rows| send(rows_part(rows))),
        );
        let rest = batch.take();
        if !rest.is_empty() {
            send(rows_part(rest));
        }
        result
    }

    /// Runs one user statement, handing each row to `on_row` (return false
    /// to stop reading), within `limits`. Returns the columns and the
    /// change counts.
    pub fn run(
        &self,
        stmt: &Statement,
        limits: Limits,
        mut on_columns: impl FnMut(&[Column]),
        mut on_row: impl FnMut(Vec<Value>) -> bool,
    ) -> Result<StatementResult, Failure> {
        // Before the statement's budget is set: the check is drsdb's own SQL.
        let cookie = self.schema_cookie()?;
        if let Some(expected) = stmt.schema_version {
            let version = self.fingerprint_at(cookie)?;
            if version != expected {
                return Err(Failure::Statement(Error::StaleSchema { version }));
            }
        }
        // Compiled (or found compiled) before the budget is set too, so that
        // a replica whose cache holds the statement counts the same memory
        // as one that compiles it; a schema change empties the cache, so a
        // cached statement is never compiled again while it runs.
        {
            let mut cached_at = self.cached_at.lock().expect("statement cache lock");
            if *cached_at != Some(cookie) {
                self.conn.flush_prepared_statement_cache();
                *cached_at = Some(cookie);
            }
        }
        let mut prepared = self.conn.prepare_cached(&stmt.sql)?;
        {
            let mut env = self.env.lock().expect("env lock");
            env.rng = ChaCha8Rng::seed_from_u64(stmt.seed);
            env.now_ms = stmt.now_ms;
            env.last_ulid = None;
            env.checks_left = self.max_steps / STEPS_PER_CHECK as u64;
            env.limits = limits;
            env.stopped = None;
        }
        let memory = stmt.memory_limit.unwrap_or(DEFAULT_STATEMENT_MEMORY);
        let _budget = heap::budget(memory);
        self.run_prepared(&mut prepared, stmt, &mut on_columns, &mut on_row).map_err(|e| match (e, self.stopped()) {
            // SQLite reports the refused allocation as out of memory.
            _ if heap::exceeded() => Failure::Statement(Error::invalid(format!(
                "statement stopped: it needed more than its {} MiB of memory (statement_memory_mb); narrow it, or \
                 raise the setting",
                memory >> 20
            ))),
            (Failure::Statement(_), Some(stop)) => Failure::Statement(stop.error()),
            (e, _) => e,
        })
    }

    /// Why the last statement was interrupted, if it was.
    fn stopped(&self) -> Option<Stop> {
        self.env.lock().expect("env lock").stopped
    }

    /// True when the last statement, run with [`Limits::short`], stopped
    /// because it was not short (its error says so too).
    pub fn yielded(&self) -> bool {
        self.stopped() == Some(Stop::Long)
    }

    fn run_prepared(
        &self,
        prepared: &mut rusqlite::Statement<'_>,
        stmt: &Statement,
        on_columns: &mut impl FnMut(&[Column]),
        on_row: &mut impl FnMut(Vec<Value>) -> bool,
    ) -> Result<StatementResult, Failure> {
        let _clock = clock::pin(stmt.now_ms);
        let before = self.conn.total_changes();
        if !prepared.readonly() && self.conn.is_readonly(rusqlite::MAIN_DB)? {
            return Err(Failure::Statement(Error::invalid(
                "this is a read-only connection (Storage.Read); writes go through Storage.Write",
            )));
        }
        let expected = prepared.parameter_count();
        if expected != stmt.params.len() {
            return Err(Failure::Statement(Error::invalid(format!(
                "statement has {expected} parameter(s) but {} value(s) were bound",
                stmt.params.len()
            ))));
        }
        let columns: Vec<Column> = prepared
            .columns()
            .map(|c| Column { name: c.name().to_string(), decl_type: c.decl_type().unwrap_or("").to_string() })
            .collect();
        on_columns(&columns);
        // From here on, statements compiled are a virtual table's own.
        let _running = PhaseGuard::enter(&self.phase, Phase::Modules);
        let mut rows = prepared.query(rusqlite::params_from_iter(stmt.params.iter()))?;
        let width = columns.len();
        while let Some(row) = rows.next()? {
            let mut values = Vec::with_capacity(width);
            for i in 0..width {
                values.push(Value::from(row.get_ref(i)?));
            }
            if !on_row(values) {
                break;
            }
        }
        drop(rows);
        let changed = self.conn.total_changes() != before;
        Ok(StatementResult {
            columns,
            rows: Vec::new(),
            rows_affected: if changed { self.conn.changes() } else { 0 },
            last_insert_rowid: self.conn.last_insert_rowid(),
        })
    }

    /// Runs one statement and collects its rows.
    pub fn run_collect(&self, stmt: &Statement) -> Result<StatementResult, Failure> {
        let mut rows = Vec::new();
        let mut result = self.run(
            stmt,
            Limits::default(),
            |_| {},
            |r| {
                rows.push(r);
                true
            },
        )?;
        result.rows = rows;
        Ok(result)
    }
}

/// Whose SQL a connection compiles, for the authorizer.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    /// The user's statement: held to the rules below.
    User,
    /// drsdb's own: anything goes.
    Internal,
    /// While the user's statement runs: what a virtual-table module
    /// (FTS, R*Tree) compiles for its shadow tables, which may also read
    /// the pragmas in `MODULE_PRAGMAS`. (User SQL is compiled whole
    /// before it runs, its triggers and views included.)
    Modules,
}

/// Sets a connection's phase until dropped.
struct PhaseGuard<'a>(&'a AtomicU8);

impl<'a> PhaseGuard<'a> {
    fn enter(phase: &'a AtomicU8, to: Phase) -> PhaseGuard<'a> {
        phase.store(to as u8, Ordering::Relaxed);
        PhaseGuard(phase)
    }
}

impl Drop for PhaseGuard<'_> {
    fn drop(&mut self) {
        self.0.store(Phase::User as u8, Ordering::Relaxed);
    }
}

fn authorize(ctx: &AuthContext<'_>, phase: u8) -> Authorization {
    if phase == Phase::Internal as u8 {
        return Authorization::Allow;
    }
    if let (true, AuthAction::Pragma { pragma_name, pragma_value: None }) = (phase == Phase::Modules as u8, &ctx.action)
    {
        if MODULE_PRAGMAS.iter().any(|p| p.eq_ignore_ascii_case(pragma_name)) {
            return Authorization::Allow;
        }
    }
    let verdict = verdict(ctx);
    if verdict == Authorization::Deny {
        tracing::debug!(action = ?ctx.action, "refused by the authorizer");
    }
    verdict
}

fn verdict(ctx: &AuthContext<'_>) -> Authorization {
    let table = match ctx.action {
        // drsdb runs transactions itself; temporary objects would live on one
        // connection of one replica only.
        AuthAction::Transaction { .. }
        | AuthAction::Savepoint { .. }
        | AuthAction::Attach { .. }
        | AuthAction::Detach { .. }
        | AuthAction::CreateTempIndex { .. }
        | AuthAction::CreateTempTable { .. }
        | AuthAction::CreateTempTrigger { .. }
        | AuthAction::CreateTempView { .. }
        | AuthAction::DropTempIndex { .. }
        | AuthAction::DropTempTable { .. }
        | AuthAction::DropTempTrigger { .. }
        | AuthAction::DropTempView { .. } => {
            return Authorization::Deny;
        }
        AuthAction::CreateVtable { module_name, .. } => {
            let ok = drsdb_common::sql::VIRTUAL_TABLE_MODULES.iter().any(|m| m.eq_ignore_ascii_case(module_name));
            return if ok { Authorization::Allow } else { Authorization::Deny };
        }
        AuthAction::Pragma { pragma_name, .. } => {
            let ok = ALLOWED_PRAGMAS.iter().any(|p| p.eq_ignore_ascii_case(pragma_name));
            return if ok { Authorization::Allow } else { Authorization::Deny };
        }
        AuthAction::CreateIndex { table_name, .. }
        | AuthAction::CreateTable { table_name }
        | AuthAction::CreateTrigger { table_name, .. }
        | AuthAction::Delete { table_name }
        | AuthAction::DropIndex { table_name, .. }
        | AuthAction::DropTable { table_name }
        | AuthAction::DropTrigger { table_name, .. }
        | AuthAction::Insert { table_name }
        | AuthAction::Read { table_name, .. }
        | AuthAction::Update { table_name, .. }
        | AuthAction::AlterTable { table_name, .. }
        | AuthAction::Analyze { table_name } => table_name,
        AuthAction::CreateView { view_name } | AuthAction::DropView { view_name } => view_name,
        _ => return Authorization::Allow,
    };
    if table.len() >= INTERNAL_PREFIX.len() && table[..INTERNAL_PREFIX.len()].eq_ignore_ascii_case(INTERNAL_PREFIX) {
        Authorization::Deny
    } else {
        Authorization::Allow
    }
}

/// `random()`, `randomblob(n)` and `ulid()`, drawn from the statement's
/// seed so that every replica computes the same values.
fn register_functions(conn: &Connection, env: &Arc<Mutex<Env>>) -> rusqlite::Result<()> {
    sum::register(conn)?;
    let flags = FunctionFlags::SQLITE_UTF8;
    let e = env.clone();
    conn.create_scalar_function("random", 0, flags, move |_| Ok(e.lock().expect("env lock").rng.next_u64() as i64))?;
    let e = env.clone();
    conn.create_scalar_function("randomblob", 1, flags, move |ctx| {
        // SQLite: a size below 1 gives one byte; beyond the length limit the
        // statement fails before anything is allocated.
        let n = ctx.get::<i64>(0).unwrap_or(1).max(1);
        if n > i64::from(MAX_VALUE_BYTES) {
            return Err(rusqlite::Error::UserFunctionError("string or blob too big".into()));
        }
        let n = n as usize;
        let mut bytes = vec![0u8; n];
        e.lock().expect("env lock").rng.fill_bytes(&mut bytes);
        Ok(bytes)
    })?;
    let e = env.clone();
    conn.create_scalar_function("ulid", 0, flags, move |_| {
        const RANDOM_MASK: u128 = (1u128 << 80) - 1;
        let mut env = e.lock().expect("env lock");
        // Within a statement ulids increase: the random part counts up from
        // one random start, as ULID's monotonic mode does.
        let random = match env.last_ulid {
            Some(last) => (last + 1) & RANDOM_MASK,
            None => {
                let hi = u128::from(env.rng.next_u64());
                let lo = u128::from(env.rng.next_u64());
                // Start in the lower half so that counting up never wraps.
                ((hi << 64) | lo) & (RANDOM_MASK >> 1)
            }
        };
        env.last_ulid = Some(random);
        Ok(ulid::Ulid::from_parts(env.now_ms.max(0) as u64, random).to_string())
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stmt(sql: &str, seed: u64) -> Statement {
        Statement {
            sql: sql.into(),
            params: vec![],
            seed,
            now_ms: 1_700_000_000_000,
            request_id: None,
            schema_version: None,
            memory_limit: None,
        }
    }

    #[test]
    fn seeded_functions_repeat_on_every_replica() {
        let a = Db::open_writer(Path::new(":memory:")).unwrap();
        let b = Db::open_writer(Path::new(":memory:")).unwrap();
        let s = stmt("SELECT random(), hex(randomblob(8)), ulid(), ulid(), datetime('now'), CURRENT_TIMESTAMP", 42);
        let ra = a.run_collect(&s).unwrap();
        let rb = b.run_collect(&s).unwrap();
        assert_eq!(ra.rows, rb.rows);
        let other = a.run_collect(&stmt("SELECT random()", 43)).unwrap();
        assert_ne!(other.rows[0][0], ra.rows[0][0]);
        let (Value::Text(u1), Value::Text(u2)) = (&ra.rows[0][2], &ra.rows[0][3]) else { panic!() };
        assert!(u1 < u2, "ulids within a statement increase: {u1} {u2}");
        assert!(u1.starts_with("01HF"), "timestamp part encodes now_ms: {u1}");
        assert_eq!(ra.rows[0][4], Value::Text("2023-11-14 22:13:20".into()), "the clock is the statement's");
        assert_eq!(ra.rows[0][5], ra.rows[0][4]);
    }

    #[test]
    fn runaway_statements_are_stopped() {
        let mut db = Db::open_writer(Path::new(":memory:")).unwrap();
        db.max_steps = 1_000_000;
        let e = db
            .run_collect(&stmt(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
                0,
            ))
            .unwrap_err();
        let Failure::Statement(e) = e else { panic!("{e:?}") };
        assert!(e.to_string().contains("budget"), "{e}");
        db.internal(|c| c.execute_batch("CREATE TABLE after(x)")).unwrap();
    }

    #[test]
    fn reads_stop_at_their_deadline_or_when_cancelled() {
        let db = Db::open_writer(Path::new(":memory:")).unwrap();
        let endless = stmt("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c", 0);
        let stopped = |limits| match db.run(&endless, limits, |_| {}, |_| true) {
            Err(Failure::Statement(e)) => e.to_string(),
            other => panic!("{other:?}"),
        };
        let deadline = Some(Instant::now() + Duration::from_millis(50));
        assert!(stopped(Limits { deadline, ..Limits::default() }).contains("statement_timeout_ms"));
        assert!(!db.yielded());
        let cancel = Arc::new(AtomicBool::new(true));
        assert!(stopped(Limits { cancel: Some(cancel), ..Limits::default() }).contains("cancelled"));
        assert!(stopped(Limits { short: true, ..Limits::default() }).contains("not short"));
        assert!(db.yielded());
        let short = Limits { short: true, ..Limits::default() };
        assert_eq!(db.run(&stmt("SELECT 1", 0), short, |_| {}, |_| true).unwrap().rows_affected, 0);
        assert!(!db.yielded(), "a short statement runs to its end");
    }

    #[test]
    fn statements_planned_on_another_schema_are_refused() {
        let db = Db::open_writer(Path::new(":memory:")).unwrap();
        db.run_collect(&stmt("CREATE TABLE t(a)", 0)).unwrap();
        let version = drsdb_common::sql::schema_fingerprint([["table", "t", "t", "CREATE TABLE t(a)"]]);
        assert_eq!(db.schema_fingerprint().unwrap(), version);
        let planned = |v| Statement { schema_version: Some(v), ..stmt("INSERT INTO t VALUES (1)", 0) };
        match db.run_collect(&planned(version - 1)) {
            Err(Failure::Statement(Error::StaleSchema { version: now })) => assert_eq!(now, version),
            other => panic!("{other:?}"),
        }
        assert_eq!(db.run_collect(&planned(version)).unwrap().rows_affected, 1);
    }

    #[test]
    fn a_reader_refuses_writes_as_the_caller_s_mistake() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.db");
        let writer = Db::open_writer(&path).unwrap();
        writer.run_collect(&stmt("CREATE TABLE t(a)", 0)).unwrap();
        let reader = Db::open_reader(&path).unwrap();
        match reader.run_collect(&stmt("INSERT INTO t VALUES (1)", 0)) {
            Err(Failure::Statement(e)) => assert!(e.to_string().contains("Storage.Write"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(reader.run_collect(&stmt("SELECT count(*) FROM t", 0)).unwrap().rows, [[Value::Integer(0)]]);
    }

    #[test]
    fn column_defaults_read_the_pinned_clock() {
        let db = Db::open_writer(Path::new(":memory:")).unwrap();
        db.run_collect(&stmt("CREATE TABLE t(a, at DEFAULT CURRENT_TIMESTAMP)", 0)).unwrap();
        db.run_collect(&stmt("INSERT INTO t(a) VALUES (1)", 0)).unwrap();
        let r = db.run_collect(&stmt("SELECT at FROM t", 0)).unwrap();
        assert_eq!(r.rows[0][0], Value::Text("2023-11-14 22:13:20".into()));
    }

    #[test]
    fn user_sql_cannot_touch_internal_tables_or_transactions() {
        let db = Db::open_writer(Path::new(":memory:")).unwrap();
        db.internal(|c| c.execute_batch("CREATE TABLE _drsdb_raft(x)")).unwrap();
        for sql in [
            "SELECT * FROM _drsdb_raft",
            "DROP TABLE _drsdb_raft",
            "BEGIN",
            "COMMIT",
            "ATTACH 'x' AS y",
            "PRAGMA journal_mode=DELETE",
        ] {
            assert!(db.run_collect(&stmt(sql, 0)).is_err(), "{sql} must be refused");
        }
        db.run_collect(&stmt("CREATE TABLE t(a INTEGER)", 0)).unwrap();
        let r = db.run_collect(&stmt("PRAGMA table_info(t)", 0)).unwrap();
        assert_eq!(r.rows.len(), 1);
    }
}
