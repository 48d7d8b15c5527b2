//! # drsdb SQL test harness
//!
//! Runs sqllogictest files through a live cluster (client → index server →
//! Raft → SQLite) and counts records passed, failed and skipped, file by
//! file. Results are formatted as SQLite's reference harness formats them
//! (see `../shared/sqllogictest/SOURCE.md`): each value by the column type
//! the test declares, `I` as a 32-bit integer, `R` with three decimals,
//! `T` as text with `(empty)` and `@` for bytes outside printable ASCII,
//! `NULL` always; results compared value by value; more than 8 values
//! hashed. The conversions themselves are SQLite's (an in-memory database
//! does the casts), so they match `sqlite3_column_int`/`_double`/`_text`.
//!
//! The engine label is `sqlite`: `skipif sqlite` records are skipped,
//! `onlyif sqlite` ones run, `onlyif <other>` ones are skipped.

pub mod rng;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use drsdb_client::{Client, Value};
use drsdb_common::Error;
use sqllogictest::{Condition, DBOutput, DefaultColumnType, QueryExpect, Record};

/// When this process was started as one of a local cluster's servers (the
/// harness binaries start their clusters' servers as copies of
/// themselves, with a hidden subcommand), runs that server and returns
/// its exit code; `None` for any other command line.
pub fn serve_if_server() -> Option<std::process::ExitCode> {
    let argv: Vec<String> = std::env::args().collect();
    let served = drsdb_cli::local::serve_from_args(&argv)?;
    Some(match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    })
}

/// The engine name tests are run as.
pub const ENGINE: &str = "sqlite";
/// The reference harness hashes results with more values than this.
pub const HASH_THRESHOLD: usize = 8;

/// Formats values like the reference harness, using SQLite's conversions.
struct Formatter {
    conn: rusqlite::Connection,
}

impl Formatter {
    fn new() -> Formatter {
        Formatter { conn: rusqlite::Connection::open_in_memory().expect("in-memory SQLite") }
    }

    fn cast(&self, sql: &str, v: &Value) -> rusqlite::types::Value {
        let mut stmt = self.conn.prepare_cached(sql).expect("valid cast");
        stmt.query_row([v], |r| r.get::<_, rusqlite::types::Value>(0)).expect("cast runs")
    }

    fn format(&self, v: &Value, ty: &DefaultColumnType) -> String {
        use rusqlite::types::Value as V;
        if *v == Value::Null {
            return "NULL".into();
        }
        match ty {
            DefaultColumnType::Integer => match self.cast("SELECT CAST(?1 AS INTEGER)", v) {
                // sqlite3_column_int keeps the low 32 bits.
                V::Integer(i) => (i as i32).to_string(),
                other => format!("{other:?}"),
            },
            // SQLite's printf, which keeps at most 16 significant digits.
            DefaultColumnType::FloatingPoint => match self.cast("SELECT printf('%.3f', CAST(?1 AS REAL))", v) {
                V::Text(t) => t,
                other => format!("{other:?}"),
            },
            DefaultColumnType::Text | DefaultColumnType::Any => {
                let text = match v {
                    Value::Text(t) => t.clone().into_bytes(),
                    Value::Integer(i) => i.to_string().into_bytes(),
                    Value::Blob(b) | Value::RawText(b) => b.clone(),
                    _ => match self.cast("SELECT CAST(?1 AS TEXT)", v) {
                        V::Text(t) => t.into_bytes(),
                        other => format!("{other:?}").into_bytes(),
                    },
                };
                if text.is_empty() {
                    return "(empty)".into();
                }
                text.iter().map(|&b| if (0x20..=0x7e).contains(&b) { b as char } else { '@' }).collect()
            }
        }
    }
}

/// A sqllogictest database: statements go through a drsdb client.
pub struct Db {
    client: Client,
    /// The column types the current query record declares.
    expected_types: Arc<Mutex<Vec<DefaultColumnType>>>,
    formatter: Formatter,
}

impl Db {
    async fn run_one(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, Error> {
        let mut rows = self.client.query(sql, &[]).await?;
        if rows.columns().is_empty() {
            while rows.next().await?.is_some() {}
            return Ok(DBOutput::StatementComplete(rows.summary().map_or(0, |s| s.rows_affected)));
        }
        let width = rows.columns().len();
        let expected = self.expected_types.lock().expect("types lock").clone();
        let types: Vec<DefaultColumnType> =
            (0..width).map(|i| expected.get(i).cloned().unwrap_or(DefaultColumnType::Any)).collect();
        let mut out = Vec::new();
        loop {
            match rows.next().await {
                Ok(Some(row)) => {
                    out.push(row.values().iter().zip(&types).map(|(v, t)| self.formatter.format(v, t)).collect())
                }
                Ok(None) => break,
                Err(e) if ends_rows(&e) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(DBOutput::Rows { types, rows: out })
    }
}

/// Whether an error that arrives after a query's columns ends its rows
/// (the record then compares the rows read so far) rather than failing the
/// record. The reference harness ignores an error SQLite raises while
/// stepping (`integer overflow` in `sum()`, say): its expected results hold
/// the rows made before it, so the statement's own error ends the rows
/// here too. Any other error (a server or the connection failed, a limit
/// of drsdb's) fails the record: partial rows are never taken for the
/// answer.
fn ends_rows(e: &Error) -> bool {
    matches!(e, Error::InvalidInput(_))
}

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for Db {
    type Error = Error;
    type ColumnType = DefaultColumnType;

    /// Runs a record's SQL; a record may hold several statements (the
    /// reference harness runs them with `sqlite3_exec`), the last one's
    /// output counts.
    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, Error> {
        let statements = drsdb_common::sql::split_script(sql)?;
        let mut last = DBOutput::StatementComplete(0);
        for s in statements {
            last = self.run_one(&s).await?;
        }
        Ok(last)
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        ENGINE
    }

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await;
    }
}

/// Compares results value by value, as the corpus lists one value per line.
fn valuewise(normalizer: sqllogictest::Normalizer, actual: &[Vec<String>], expected: &[String]) -> bool {
    let actual: Vec<String> = actual.iter().flatten().map(normalizer).collect();
    let expected: Vec<String> = expected.iter().map(normalizer).collect();
    actual == expected
}

/// One file's outcome.
#[derive(Debug, Default, Clone)]
pub struct FileReport {
    /// The file.
    pub path: PathBuf,
    /// Records that ran and matched.
    pub passed: usize,
    /// Records that ran and did not match (or errored unexpectedly).
    pub failed: usize,
    /// Records skipped for the `sqlite` engine.
    pub skipped: usize,
    /// A description of each failure.
    pub failures: Vec<String>,
    /// Set when the file could not be run at all.
    pub error: Option<String>,
}

fn skips(c: &Condition) -> bool {
    match c {
        Condition::OnlyIf { label } => label != ENGINE,
        Condition::SkipIf { label } => label == ENGINE,
    }
}

/// The corpus writes `onlyif mysql # comment`; the parser wants nothing
/// after the label.
fn strip_condition_comments(text: &str) -> String {
    text.lines()
        .map(|line| {
            let t = line.trim_start();
            if t.starts_with("skipif") || t.starts_with("onlyif") {
                line.split('#').next().unwrap_or("").trim_end()
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs one file through `client`, record by record, continuing after
/// failures. `halt` stops the file (when its conditions apply to sqlite).
pub async fn run_file(path: &Path, client: Client) -> FileReport {
    let mut report = FileReport { path: path.to_path_buf(), ..FileReport::default() };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            report.error = Some(format!("cannot read: {e}"));
            return report;
        }
    };
    let records: Vec<Record<DefaultColumnType>> =
        match sqllogictest::parse_with_name(&strip_condition_comments(&text), path.display().to_string()) {
            Ok(r) => r,
            Err(e) => {
                report.error = Some(format!("cannot parse: {e}"));
                return report;
            }
        };
    let expected_types = Arc::new(Mutex::new(Vec::new()));
    let db = Arc::new(tokio::sync::Mutex::new(Some(Db {
        client,
        expected_types: expected_types.clone(),
        formatter: Formatter::new(),
    })));
    let maker = db.clone();
    let mut runner = sqllogictest::Runner::new(move || {
        let maker = maker.clone();
        async move { maker.lock().await.take().ok_or_else(|| Error::invalid("the harness runs one connection per file")) }
    });
    runner.with_hash_threshold(HASH_THRESHOLD);
    runner.with_validator(valuewise);
    let mut pending: Vec<Condition> = Vec::new();
    let mut leaked = 0usize;
    for record in records {
        match record {
            Record::Condition(c) => {
                pending.push(c);
                continue;
            }
            Record::Halt { .. } => {
                if !pending.iter().any(skips) {
                    break;
                }
                // The parser hands a halt's conditions to the next record too.
                leaked += pending.len();
                pending.clear();
                continue;
            }
            Record::Statement { .. } | Record::Query { .. } => {}
            other => {
                let _ = runner.run_async(other).await;
                continue;
            }
        }
        pending.clear();
        let mut record = record;
        if let Record::Statement { conditions, .. } | Record::Query { conditions, .. } = &mut record {
            let n = leaked.min(conditions.len());
            conditions.drain(..n);
            leaked = 0;
            if conditions.iter().any(skips) {
                report.skipped += 1;
                continue;
            }
        }
        if let Record::Query { expected: QueryExpect::Results { types, .. }, .. } = &record {
            *expected_types.lock().expect("types lock") = types.clone();
        }
        match runner.run_async(record).await {
            Ok(_) => report.passed += 1,
            Err(e) => {
                report.failed += 1;
                report.failures.push(e.display(false).to_string());
            }
        }
    }
    runner.shutdown_async().await;
    report
}

/// The `.test` files under `paths` (files as given, folders recursively),
/// sorted.
pub fn test_files(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut stack = vec![p.clone()];
            while let Some(dir) = stack.pop() {
                for entry in std::fs::read_dir(&dir)? {
                    let path = entry?.path();
                    if path.is_dir() {
                        stack.push(path);
                    } else if path.extension().is_some_and(|e| e == "test") {
                        files.push(path);
                    }
                }
            }
        } else if p.exists() {
            files.push(p.clone());
        } else {
            return Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("{} does not exist", p.display())));
        }
    }
    files.sort();
    Ok(files)
}

/// Drops every table, view and trigger, so the next file starts empty.
pub async fn reset(client: &mut Client) -> drsdb_common::Result<()> {
    let rs = client
        .execute(
            "SELECT type, name FROM sqlite_schema WHERE type IN ('view', 'table', 'trigger') AND name NOT LIKE 'sqlite%' AND name NOT LIKE '\\_drsdb%' ESCAPE '\\' ORDER BY type = 'table'",
            &[],
        )
        .await?;
    for row in rs.rows {
        let (kind, name): (String, String) = (row.get(0)?, row.get(1)?);
        client
            .execute(&format!("DROP {} IF EXISTS \"{}\"", kind.to_uppercase(), name.replace('"', "\"\"")), &[])
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_statements_own_error_ends_its_rows() {
        assert!(ends_rows(&Error::invalid("integer overflow")));
        let failures = [
            Error::unavailable("the connection broke"),
            Error::io("disk full"),
            Error::Internal("a bug".into()),
            Error::Retryable("conflict".into()),
            Error::Corrupt("bad page".into()),
        ];
        for e in failures {
            assert!(!ends_rows(&e), "{e:?} fails the record");
        }
    }
}
