//! `fuzz sql`: random statements on a live cluster and on an in-memory
//! SQLite database, answers compared (see the binary's documentation and
//! `sqlgen` for what keeps them comparable).

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use drsdb_client::{Client, Error, ResultSet};

use super::cluster::Target;
use super::sqlgen::{Case, Control, Generator, TABLES};
use super::{clock_seed, rate, shown, sorted, Cell, Findings, Kind};

/// Options of `fuzz sql`.
#[derive(clap::Args)]
pub struct Args {
    /// Statements to generate and compare.
    #[arg(long, default_value_t = 10_000)]
    statements: u64,
    /// Data shards of the cluster the harness starts (default: the
    /// storage servers' default).
    #[arg(long)]
    shards: Option<usize>,
    /// Fuzz the running `drsdb local` cluster in this directory instead of
    /// starting one (its tables named fz_* are dropped and recreated).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Check the servers' health and compare every table this often
    /// (statements).
    #[arg(long, default_value_t = 1_000)]
    check_every: u64,
    /// Seed of the run (default: from the clock, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Keep the cluster directory (with its logs) even without findings.
    #[arg(long)]
    keep: bool,
    /// Print every statement and how each side answered.
    #[arg(long)]
    verbose: bool,
}

/// A statement unanswered after this long is a hang.
const HANG: Duration = Duration::from_secs(60);
/// The SQLite savepoint every statement runs in, undone when drsdb refuses.
const STATEMENT_SAVEPOINT: &str = "fz_statement";
/// The SQLite savepoint standing for a drsdb transaction.
const TXN_SAVEPOINT: &str = "fz_txn";
/// Rows of each side shown in a wrong-answer finding.
const SHOWN_ROWS: usize = 6;
/// Transient errors shown in full (all are counted).
const SHOWN_ODD: u64 = 10;

/// How drsdb answered a write whose effect is compared.
enum Outcome {
    /// It refused the write (with this error).
    Refused(String),
    /// As SQLite answered it.
    Alike,
    /// Otherwise (already reported).
    Differently,
}

/// The rows of `a` missing from `b` and those of `b` missing from `a`.
fn row_differences(a: &[Vec<Cell>], b: &[Vec<Cell>]) -> (Vec<Vec<Cell>>, Vec<Vec<Cell>>) {
    let only = |x: &[Vec<Cell>], y: &[Vec<Cell>]| -> Vec<Vec<Cell>> {
        let mut rest: Vec<&Vec<Cell>> = y.iter().collect();
        x.iter()
            .filter(|row| match rest.iter().position(|r| r == row) {
                Some(i) => {
                    rest.remove(i);
                    false
                }
                None => true,
            })
            .cloned()
            .collect()
    };
    (only(a, b), only(b, a))
}

/// SQLite's answer to a statement.
struct Answer {
    columns: Vec<String>,
    rows: Vec<Vec<Cell>>,
    affected: u64,
}

/// The state of a run.
struct Run {
    target: Target,
    client: Client,
    lite: rusqlite::Connection,
    findings: Findings,
    /// Statements both answered (and were compared).
    compared: u64,
    /// Statements both refused.
    both_failed: u64,
    /// Statements drsdb refused that SQLite ran (allowed).
    refused: u64,
    /// Transient errors of drsdb where SQLite answered (unavailable,
    /// retryable): allowed, shown as notes.
    odd_errors: u64,
    /// Print every statement and both answers.
    verbose: bool,
    /// Refused writes that left changes on some shards.
    partial: u64,
    /// A drsdb transaction is open (and SQLite's savepoint for it).
    in_txn: bool,
    /// Tables written inside the open transaction.
    txn_writes: BTreeSet<&'static str>,
    /// A server died: the run ends.
    stop: bool,
    /// The cluster's data shards (groups 1..=shards).
    shards: usize,
}

/// Runs `fuzz sql`.
pub fn run(args: Args) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: Args) -> anyhow::Result<bool> {
    let seed = args.seed.unwrap_or_else(clock_seed);
    println!("fuzz sql: seed {seed}, {} statements (replay with --seed {seed})", args.statements);
    let target = Target::open(args.data.as_deref(), args.shards).await?;
    let shards = target.shards().await?;
    println!("fuzz sql: cluster in {} ({shards} shards)", target.dir.display());
    let client = target.client().await.map_err(|e| anyhow::anyhow!("cannot connect to the cluster: {e}"))?;
    let lite = rusqlite::Connection::open_in_memory()?;
    let mut run = Run {
        target,
        client,
        lite,
        findings: Findings::default(),
        compared: 0,
        both_failed: 0,
        refused: 0,
        odd_errors: 0,
        verbose: args.verbose,
        shards,
        partial: 0,
        in_txn: false,
        txn_writes: BTreeSet::new(),
        stop: false,
    };
    let mut generator = Generator::new(seed);
    for case in generator.schema().iter().chain(&generator.seed_rows()) {
        run.case(case).await?;
    }
    if run.findings.total() > 0 {
        anyhow::bail!("setting up the schema failed (see the findings above)");
    }
    let started = Instant::now();
    let mut done = 0u64;
    let mut last_check = 0u64;
    while done < args.statements && !run.stop {
        let sizes = run.sizes();
        let size = |t: &str| sizes.get(t).copied().unwrap_or(0);
        for case in generator.next(&size) {
            run.case(&case).await?;
            done += 1;
            if run.stop {
                break;
            }
        }
        if done - last_check >= args.check_every && !run.in_txn {
            last_check = done;
            run.check().await?;
            println!(
                "fuzz sql: {done}/{} statements, {:.1} statements/s, {} findings, {} refused by drsdb, {} partial writes",
                args.statements,
                rate(done, started.elapsed()),
                run.findings.total(),
                run.refused,
                run.partial
            );
        }
    }
    if !run.stop {
        if run.in_txn {
            run.end_transaction().await?;
        }
        run.check().await?;
    }
    let elapsed = started.elapsed();
    let Run { target, findings: mut f, compared, both_failed, refused, odd_errors, partial, .. } = run;
    let replicas = target.finish(args.keep, &mut f)?;
    println!(
        "fuzz sql: {done} statements in {elapsed:.1?}, {:.1} statements/s; {compared} answered by both and compared, \
         {both_failed} refused by both, {refused} refused by drsdb only (allowed; {odd_errors} of them with transient \
         errors, see the notes); {partial} refused writes changed data (findings unless their outcome was \
         unknown)",
        rate(done, elapsed)
    );
    println!(
        "fuzz sql: {done} statements, {} crashes, {} hangs, {} wrong answers, {} divergences, {replicas}",
        f.crashes, f.hangs, f.wrong_answers, f.divergences
    );
    Ok(f.total() == 0)
}

/// A statement and its parameters, for findings.
fn statement(case: &Case) -> String {
    if case.params.is_empty() {
        shown(&case.drsdb)
    } else {
        let params: Vec<String> = case.params.iter().map(|v| Cell::from(v).to_string()).collect();
        format!("{} with parameters [{}]", shown(&case.drsdb), params.join(", "))
    }
}

/// What a finding about `case` looks like, to show only a few alike: the
/// statement's verb, the features it uses, and what went wrong.
fn signature(case: &Case, what: &str) -> String {
    const FEATURES: &[&str] = &[
        "GROUP BY",
        "HAVING",
        "DISTINCT",
        "JOIN",
        "UNION",
        "EXCEPT",
        "INTERSECT",
        "LIMIT",
        "OVER",
        "avg(",
        "sum(",
        "total(",
        "min(",
        "max(",
        "count(",
        "group_concat",
        "ORDER BY",
        "RETURNING",
        "ON CONFLICT",
        "WITH",
        "SELECT",
        "NOCASE",
        "CASE",
    ];
    let text = &case.drsdb;
    let verb = text.split_whitespace().next().unwrap_or_default();
    let features: Vec<&str> = FEATURES.iter().copied().filter(|f| text[verb.len()..].contains(f)).collect();
    format!("{verb} {} / {what}", features.join(" "))
}

/// Rows for a finding: the first few.
fn show_rows(rows: &[Vec<Cell>]) -> String {
    let mut out: Vec<String> = rows
        .iter()
        .take(SHOWN_ROWS)
        .map(|r| format!("({})", r.iter().map(Cell::to_string).collect::<Vec<_>>().join(", ")))
        .collect();
    if rows.len() > SHOWN_ROWS {
        out.push(format!("… {} rows", rows.len()));
    }
    format!("[{}]", out.join(", "))
}

/// Rows equal, reals within the tolerance.
fn rows_match(a: &[Vec<Cell>], b: &[Vec<Cell>]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.close_to(q)))
}

/// How drsdb's answer differs from SQLite's, if it does.
fn difference(case: &Case, d: &ResultSet, s: &Answer) -> Option<String> {
    let columns: Vec<String> = d.columns.iter().map(|c| c.name.clone()).collect();
    if columns != s.columns {
        return Some(format!("columns: drsdb {columns:?}, SQLite {:?}", s.columns));
    }
    let rows: Vec<Vec<Cell>> = d.rows.iter().map(|r| r.values().iter().map(Cell::from).collect()).collect();
    let (ours, theirs) = match case.ordered {
        true => (rows, s.rows.clone()),
        false => (sorted(rows), sorted(s.rows.clone())),
    };
    if !rows_match(&ours, &theirs) {
        let first =
            ours.iter().zip(&theirs).position(|(x, y)| !rows_match(std::slice::from_ref(x), std::slice::from_ref(y)));
        let at = first.map_or_else(|| "in the row count".to_string(), |i| format!("first at row {i}"));
        let order = if case.ordered { "in order" } else { "sorted" };
        return Some(format!(
            "{} rows from drsdb, {} from SQLite, compared {order}, differing {at}:\n  drsdb  {}\n  SQLite {}",
            ours.len(),
            theirs.len(),
            show_rows(&ours[first.unwrap_or(0).min(ours.len())..]),
            show_rows(&theirs[first.unwrap_or(0).min(theirs.len())..]),
        ));
    }
    // (By the verb: SQLite's count is stale after a read.)
    let verb = case.drsdb.split_whitespace().next().unwrap_or_default().to_ascii_uppercase();
    let writes = ["INSERT", "UPDATE", "DELETE", "REPLACE"].contains(&verb.as_str());
    if writes && d.summary.rows_affected != s.affected {
        return Some(format!("rows affected: drsdb {}, SQLite {}", d.summary.rows_affected, s.affected));
    }
    None
}

impl Run {
    /// Row counts of every table, from SQLite.
    fn sizes(&self) -> HashMap<&'static str, usize> {
        TABLES
            .iter()
            .map(|t| {
                let n: i64 =
                    self.lite.query_row(&format!("SELECT count(*) FROM {}", t.name), [], |r| r.get(0)).unwrap_or(0);
                (t.name, n as usize)
            })
            .collect()
    }

    /// Runs a batch of savepoint commands on SQLite.
    fn lite_batch(&self, sql: &str) -> anyhow::Result<()> {
        self.lite.execute_batch(sql).map_err(|e| anyhow::anyhow!("SQLite refused `{sql}`: {e}"))
    }

    /// Runs `case` on SQLite.
    fn sqlite(&self, case: &Case) -> Result<Answer, String> {
        let mut stmt = self.lite.prepare(&case.sqlite).map_err(|e| e.to_string())?;
        let columns: Vec<String> = stmt.column_names().map(String::from).collect();
        let width = stmt.column_count();
        let mut out = Vec::new();
        let mut rows = stmt.query(rusqlite::params_from_iter(case.params.iter())).map_err(|e| e.to_string())?;
        while let Some(row) = rows.next().map_err(|e| e.to_string())? {
            let cells = (0..width).map(|i| row.get_ref(i).map(Cell::from)).collect::<Result<Vec<_>, _>>();
            out.push(cells.map_err(|e| e.to_string())?);
        }
        drop(rows);
        drop(stmt);
        Ok(Answer { columns, rows: out, affected: self.lite.changes() })
    }

    /// Runs one statement on both sides and compares.
    async fn case(&mut self, case: &Case) -> anyhow::Result<()> {
        let answer = tokio::time::timeout(HANG, self.client.execute(&case.drsdb, &case.params)).await;
        let d = match answer {
            Ok(d) => d,
            Err(_) => {
                self.findings.report(Kind::Hang, &format!("no answer in {HANG:?} to {}", statement(case)));
                self.client = self.target.client().await.map_err(|e| anyhow::anyhow!("cannot reconnect: {e}"))?;
                if self.in_txn {
                    self.lite_batch(&format!("ROLLBACK TO {TXN_SAVEPOINT}; RELEASE {TXN_SAVEPOINT}"))?;
                    self.in_txn = false;
                }
                return self.health().await;
            }
        };
        match &d {
            Err(Error::Internal(m)) if m.contains("hit a bug") => {
                self.findings.report(Kind::Crash, &format!("{} answered: {m}", statement(case)));
            }
            Err(Error::Unavailable(_) | Error::Io(_) | Error::Internal(_)) => self.health().await?,
            _ => {}
        }
        if let Some(control) = case.control {
            return self.control(control, d.is_ok()).await;
        }
        self.lite_batch(&format!("SAVEPOINT {STATEMENT_SAVEPOINT}"))?;
        let s = self.sqlite(case);
        let undo = d.is_err();
        self.lite_batch(&if undo {
            format!("ROLLBACK TO {STATEMENT_SAVEPOINT}; RELEASE {STATEMENT_SAVEPOINT}")
        } else {
            format!("RELEASE {STATEMENT_SAVEPOINT}")
        })?;
        if self.verbose {
            let side = |ok: bool, e: String| if ok { "ok".to_string() } else { e };
            println!(
                "{}\n  drsdb: {}\n  SQLite: {}",
                statement(case),
                side(d.is_ok(), d.as_ref().err().map(|e| e.to_string()).unwrap_or_default()),
                side(s.is_ok(), s.as_ref().err().cloned().unwrap_or_default())
            );
        }
        // Every write's effect is compared, not only its answer.
        let mut outcome = Outcome::Alike;
        match (&d, &s) {
            (Ok(d), Ok(s)) => {
                self.compared += 1;
                if let Some(diff) = difference(case, d, s) {
                    let what = format!("{}: {diff}", statement(case));
                    let category = diff.split(':').next().unwrap_or_default().trim_start_matches(char::is_numeric);
                    self.findings.report_like(Kind::WrongAnswer, &signature(case, category), &what);
                    outcome = Outcome::Differently;
                }
            }
            (Ok(_), Err(e)) => {
                let what = format!("{}: drsdb answered, SQLite failed: {e}", statement(case));
                self.findings.report_like(Kind::WrongAnswer, &signature(case, "SQLite failed"), &what);
                outcome = Outcome::Differently;
            }
            // An I/O or internal error is no refusal: the statement was
            // valid (SQLite ran it) and drsdb failed on it.
            (Err(e @ (Error::Io(_) | Error::Internal(_) | Error::Corrupt(_))), Ok(_)) => {
                let what = format!("{}: drsdb failed ({e}) where SQLite answered", statement(case));
                let error: String = e.to_string().chars().filter(|c| !c.is_ascii_digit()).collect();
                self.findings.report_like(Kind::WrongAnswer, &signature(case, &error), &what);
                outcome = Outcome::Differently;
            }
            (Err(e), Ok(_)) => {
                self.refused += 1;
                if !matches!(e, Error::InvalidInput(_)) {
                    self.odd_errors += 1;
                    if self.odd_errors <= SHOWN_ODD {
                        println!(
                            "note: drsdb failed where SQLite answered, with a transient error: {}: {e}",
                            statement(case)
                        );
                    }
                }
                outcome = Outcome::Refused(e.to_string());
            }
            // A write over several shards may fail on some and apply on
            // others (documented): its effect is compared too.
            (Err(e), Err(_)) => {
                self.both_failed += 1;
                outcome = Outcome::Refused(e.to_string());
            }
        }
        if !case.writes.is_empty() {
            if self.in_txn {
                self.txn_writes.extend(&case.writes);
            } else {
                self.compare_tables(&case.writes, Some((case, outcome))).await?;
            }
        }
        Ok(())
    }

    /// BEGIN, COMMIT or ROLLBACK, which drsdb answered (`ok`) or refused.
    async fn control(&mut self, control: Control, ok: bool) -> anyhow::Result<()> {
        match control {
            Control::Begin if ok => {
                if self.in_txn {
                    // drsdb let a transaction begin inside another.
                    self.findings.report(Kind::WrongAnswer, "BEGIN inside an open transaction was accepted");
                } else {
                    self.lite_batch(&format!("SAVEPOINT {TXN_SAVEPOINT}"))?;
                    self.in_txn = true;
                }
            }
            Control::Begin => {}
            Control::Commit | Control::Rollback if self.in_txn => {
                let commit = control == Control::Commit && ok;
                self.lite_batch(&if commit {
                    format!("RELEASE {TXN_SAVEPOINT}")
                } else {
                    format!("ROLLBACK TO {TXN_SAVEPOINT}; RELEASE {TXN_SAVEPOINT}")
                })?;
                self.in_txn = false;
                let written: Vec<&'static str> = std::mem::take(&mut self.txn_writes).into_iter().collect();
                // After a refused COMMIT or ROLLBACK nobody knows what holds.
                let tables: Vec<&'static str> = if ok { written } else { TABLES.iter().map(|t| t.name).collect() };
                self.compare_tables(&tables, None).await?;
            }
            Control::Commit | Control::Rollback => {}
        }
        Ok(())
    }

    /// Ends an open transaction on both sides (rolled back).
    async fn end_transaction(&mut self) -> anyhow::Result<()> {
        let answer = tokio::time::timeout(HANG, self.client.execute("ROLLBACK", &[])).await;
        self.control(Control::Rollback, matches!(answer, Ok(Ok(_)))).await
    }

    /// `SELECT *` of `table` on drsdb; `None` if drsdb does not answer.
    async fn drsdb_rows(&mut self, table: &str) -> Option<Vec<Vec<Cell>>> {
        let sql = format!("SELECT * FROM {table}");
        match tokio::time::timeout(HANG, self.client.execute(&sql, &[])).await {
            Ok(Ok(rs)) => Some(rs.rows.iter().map(|r| r.values().iter().map(Cell::from).collect()).collect()),
            Ok(Err(e)) => {
                println!("note: cannot read {table} to compare it: {e}");
                None
            }
            Err(_) => {
                self.findings.report(Kind::Hang, &format!("no answer in {HANG:?} to {sql}"));
                None
            }
        }
    }

    /// Every row of `table` on SQLite.
    fn lite_rows(&self, table: &str) -> anyhow::Result<Vec<Vec<Cell>>> {
        let mut stmt = self.lite.prepare(&format!("SELECT * FROM {table}"))?;
        let width = stmt.column_count();
        let rows = stmt
            .query_map([], |r| (0..width).map(|i| r.get_ref(i).map(Cell::from)).collect::<rusqlite::Result<Vec<_>>>())?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Compares `tables` on both sides; re-syncs SQLite's copy of any that
    /// differs. `after` names the write whose effect is checked and how
    /// drsdb answered it: a difference after a refused write (a partial
    /// write) or after a write answered as SQLite answered it is a
    /// divergence.
    async fn compare_tables(&mut self, tables: &[&'static str], after: Option<(&Case, Outcome)>) -> anyhow::Result<()> {
        for table in tables {
            let Some(ours) = self.drsdb_rows(table).await else { continue };
            let theirs = self.lite_rows(table)?;
            let (ours, theirs) = (sorted(ours), sorted(theirs));
            if ours == theirs {
                continue;
            }
            let detail = format!("{table}: drsdb has {} rows, SQLite {}", ours.len(), theirs.len());
            match &after {
                Some((case, Outcome::Refused(error))) => {
                    // Statements are atomic, over several shards too: a
                    // refused one changes nothing, unless its outcome was
                    // unknown (then it may have applied whole).
                    self.partial += 1;
                    if !error.contains("unknown") {
                        self.findings.report_like(
                            Kind::Divergence,
                            &signature(case, "partial write"),
                            &format!("{} was refused ({error}) but changed {detail}", statement(case)),
                        );
                    }
                }
                Some((case, Outcome::Alike)) => {
                    let (missing, extra) = row_differences(&theirs, &ours);
                    self.findings.report_like(
                        Kind::Divergence,
                        &signature(case, "different data"),
                        &format!(
                            "{} was answered as SQLite answered it, but left different data: {detail}\n  \
                             only in drsdb  {}\n  only in SQLite {}",
                            statement(case),
                            show_rows(&extra),
                            show_rows(&missing)
                        ),
                    );
                }
                // The consequence of a wrong answer already reported.
                Some((case, Outcome::Differently)) => println!("note: after {}: {detail}; re-synced", statement(case)),
                None => self.findings.report(Kind::Divergence, &format!("tables differ: {detail}")),
            }
            self.resync(table, &ours)?;
        }
        Ok(())
    }

    /// Makes SQLite's `table` hold `rows` (drsdb's), so the run can go on.
    fn resync(&self, table: &str, rows: &[Vec<Cell>]) -> anyhow::Result<()> {
        self.lite.execute(&format!("DELETE FROM {table}"), [])?;
        for row in rows {
            let marks = vec!["?"; row.len()].join(", ");
            self.lite
                .execute(&format!("INSERT INTO {table} VALUES ({marks})"), rusqlite::params_from_iter(row.iter()))?;
        }
        Ok(())
    }

    /// Reports the cluster's health problems; a dead server ends the run.
    async fn health(&mut self) -> anyhow::Result<()> {
        for (problem, hang) in self.target.health().await {
            if problem.contains("died") {
                self.stop = true;
            }
            self.findings.report(if hang { Kind::Hang } else { Kind::Crash }, &problem);
        }
        Ok(())
    }

    /// The periodic check: health, then every table against SQLite's.
    async fn check(&mut self) -> anyhow::Result<()> {
        self.health().await?;
        if !self.stop {
            let tables: Vec<&'static str> = TABLES.iter().map(|t| t.name).collect();
            self.compare_tables(&tables, None).await?;
            self.compare_copies().await;
        }
        Ok(())
    }

    /// Every shard's copy of each reference table must be the same.
    async fn compare_copies(&mut self) {
        for table in TABLES.iter().filter(|t| t.reference) {
            let sql = format!("SELECT * FROM {}", table.name);
            let mut first: Option<(u64, Vec<Vec<Cell>>)> = None;
            for group in 1..=self.shards as u64 {
                let rows = match self.target.group_rows(group, &sql).await {
                    Ok(rows) => sorted(rows),
                    Err(e) => {
                        println!("note: cannot read the copy of {} on group {group}: {e}", table.name);
                        continue;
                    }
                };
                match &first {
                    None => first = Some((group, rows)),
                    Some((g, expected)) if *expected != rows => {
                        let (missing, extra) = row_differences(expected, &rows);
                        self.findings.report(
                            Kind::Divergence,
                            &format!(
                                "the copies of reference table {} differ: group {group} has {} rows, group {g} {}\n  \
                                 only on group {group} {}\n  only on group {g} {}",
                                table.name,
                                rows.len(),
                                expected.len(),
                                show_rows(&extra),
                                show_rows(&missing)
                            ),
                        );
                    }
                    Some(_) => {}
                }
            }
        }
    }
}
