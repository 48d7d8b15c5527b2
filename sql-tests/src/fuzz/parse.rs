//! `fuzz parse`: mutated SQL text through the lexical layer shared by the
//! client and the index server, and through the driver's syntax check,
//! in-process (see the binary's documentation).

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drsdb_common::sql;

use super::{clock_seed, floor_boundary, rate, shown, Findings, Kind, Rng};

/// Options of `fuzz parse`.
#[derive(clap::Args)]
pub struct Args {
    /// Inputs to generate and check.
    #[arg(long, default_value_t = 100_000)]
    cases: u64,
    /// Also mutate the statements of the sqllogictest files in this folder.
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Seed of the run (default: from the clock, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Print case N of the run and check it alone (to reproduce a finding,
    /// with the run's seed).
    #[arg(long)]
    replay: Option<u64>,
}

/// The stack every input is checked on: a tokio worker's default.
const CASE_STACK: usize = 2 << 20;
/// A call that takes longer than this on one input is a hang. (Each input
/// goes through some twenty calls, each a linear pass or more; a limit on
/// the whole input would measure how slow a debug build is.)
const HANG: Duration = Duration::from_secs(2);
/// An input whose calls have not all returned after this long is a hang
/// too (one that never ends); its thread is abandoned.
const WATCHDOG: Duration = Duration::from_secs(30);
/// Inputs are cut to this size.
const MAX_INPUT: usize = 1 << 20;
/// Small mutations cut their input to this size.
const MAX_SMALL_INPUT: usize = 4 << 10;
/// Cases (per thousand) grown at [`Scale::Huge`], and at
/// [`Scale::Thousands`]: large inputs are what finds stack overflows and
/// superlinear passes, but they take most of the time.
const HUGE_PER_MILLE: usize = 1;
const THOUSANDS_PER_MILLE: usize = 15;
const PER_MILLE: usize = 1_000;
/// The statements of a split input checked one by one.
const MAX_PIECES: usize = 4;
/// Mutation rounds applied to one seed statement, at most.
const MAX_ROUNDS: usize = 4;
/// A progress line this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// A replayed input is printed whole up to this size.
const REPLAY_SHOWN_BYTES: usize = 64 << 10;
/// The slowest calls a replay shows.
const REPLAY_SLOWEST: usize = 8;
/// The thread names of cases start with this (a stack overflow names it).
const CASE_THREAD: &str = "fuzz-parse-case-";

/// Seed statements: the grammar's corners, drsdb's additions, statements
/// that once broke something.
const SEEDS: &[&str] = &[
    "SELECT 1",
    "SELECT * FROM t WHERE a = ?1 AND b LIKE 'x%' ESCAPE '\\' ORDER BY a DESC LIMIT 10 OFFSET 5",
    "SELECT a, count(*) FROM t GROUP BY a HAVING count(*) > 1 ORDER BY 2",
    "SELECT t.a, u.b FROM t JOIN u ON t.id = u.id LEFT JOIN v USING (id) WHERE v.c IS NULL",
    "SELECT CASE WHEN a > 0 THEN 'pos' WHEN a < 0 THEN 'neg' ELSE 'zero' END FROM t",
    "SELECT abs(-1), length('héllo'), substr('abc', 2, 1), upper('x'), coalesce(NULL, 2), typeof(3.5)",
    "SELECT x FROM t WHERE x IN (SELECT y FROM u WHERE u.z = t.z) AND EXISTS (SELECT 1 FROM v)",
    "SELECT a FROM t UNION ALL SELECT b FROM u EXCEPT SELECT c FROM v INTERSECT SELECT 1",
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10) SELECT sum(x) FROM c",
    "SELECT row_number() OVER (PARTITION BY a ORDER BY b ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) FROM t",
    "SELECT group_concat(b, ',' ORDER BY b) FILTER (WHERE b > 0) FROM t",
    "SELECT DISTINCT a COLLATE NOCASE FROM t ORDER BY 1 COLLATE RTRIM",
    "SELECT CAST('12' AS INTEGER) + CAST(x'41' AS TEXT) || 1e308 * -1e308",
    "SELECT -9223372036854775808, 9223372036854775807, 0x7fffffffffffffff, 1.5e-400, .5, 5.",
    "SELECT json_extract('{\"a\":[1,2]}', '$.a[1]'), '{\"a\":1}' -> '$.a', '[1]' ->> 0",
    "SELECT ?, ?5, ?, :name, @other, $dollar, ?, :name",
    "SELECT \"quoted \"\" name\", [bracketed], `backtick` FROM \"t\"",
    "SELECT 'it''s', X'00FF', x'', N'national'",
    "VALUES (1, 'a'), (2, 'b'), (3, NULL)",
    "EXPLAIN SELECT * FROM t WHERE id = 7",
    "EXPLAIN QUERY PLAN SELECT * FROM t",
    "INSERT INTO t VALUES (1, 'a', 2.5, x'00', NULL)",
    "INSERT INTO t(a, b) VALUES (?, ?), (?, ?) RETURNING id, a",
    "INSERT OR REPLACE INTO t SELECT * FROM u WHERE a > 5",
    "INSERT INTO t VALUES (1, 'x') ON CONFLICT(id) DO UPDATE SET b = excluded.b WHERE b <> excluded.b",
    "INSERT INTO t DEFAULT VALUES",
    "REPLACE INTO t(a) VALUES (randomblob(16))",
    "UPDATE t SET a = a + 1, b = upper(b) WHERE id BETWEEN 1 AND 10 RETURNING *",
    "UPDATE OR IGNORE t SET a = (SELECT max(b) FROM u WHERE u.id = t.id)",
    "DELETE FROM t WHERE a IS NOT NULL AND b NOT LIKE '%z%' RETURNING a",
    "CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT NOT NULL DEFAULT 'x', b REAL CHECK (b > 0), UNIQUE(id, a))",
    "CREATE TABLE IF NOT EXISTS main.t(a, b, PRIMARY KEY (a, b)) WITHOUT ROWID",
    "CREATE REFERENCE TABLE r(id INTEGER PRIMARY KEY, name TEXT)",
    "create  Reference TABLE \"r2\"(a PRIMARY KEY)",
    "CREATE VIRTUAL TABLE docs USING fts5(title, body, tokenize = 'porter')",
    "CREATE VIRTUAL TABLE IF NOT EXISTS main.places USING rtree(id, x0, x1)",
    "CREATE UNIQUE INDEX IF NOT EXISTS i ON t(a COLLATE NOCASE, b DESC) WHERE a > 0",
    "CREATE VIEW v AS SELECT a FROM t",
    "CREATE TRIGGER tr AFTER INSERT ON t BEGIN DELETE FROM u; INSERT INTO u VALUES (1); END",
    "CREATE TEMP TRIGGER tr2 BEFORE UPDATE OF a ON t WHEN new.a > 1 BEGIN SELECT RAISE(ABORT, 'no'); END",
    "ALTER TABLE t ADD COLUMN c INTEGER DEFAULT 0",
    "ALTER TABLE t RENAME TO u",
    "DROP TABLE IF EXISTS t",
    "DROP INDEX i",
    "REINDEX t",
    "ANALYZE",
    "BEGIN IMMEDIATE TRANSACTION t1",
    "COMMIT TRANSACTION",
    "END",
    "ROLLBACK TO SAVEPOINT sp",
    "SAVEPOINT sp",
    "PRAGMA table_info(t)",
    "ATTACH 'x.db' AS x",
    "SHOW GROUPS",
    "SHOW SHARD OF t KEY 42",
    "SELECT 1; SELECT 2;; -- trailing comment\n",
    "/* a comment */ SELECT 1 -- another",
    "SELECT 'a;b' ; INSERT INTO t VALUES (';')",
];

/// Tokens and fragments inserted by mutations.
const TOKENS: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "AND",
    "OR",
    "NOT",
    "IN",
    "IS",
    "NULL",
    "LIKE",
    "GLOB",
    "REGEXP",
    "MATCH",
    "BETWEEN",
    "ESCAPE",
    "COLLATE",
    "NOCASE",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "END",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "TRANSACTION",
    "SAVEPOINT",
    "RELEASE",
    "CREATE",
    "REFERENCE",
    "VIRTUAL",
    "TABLE",
    "TEMP",
    "TRIGGER",
    "VIEW",
    "INDEX",
    "USING",
    "INSERT",
    "INTO",
    "VALUES",
    "DEFAULT",
    "UPDATE",
    "SET",
    "DELETE",
    "REPLACE",
    "RETURNING",
    "WITH",
    "RECURSIVE",
    "AS",
    "UNION",
    "ALL",
    "EXCEPT",
    "INTERSECT",
    "ORDER",
    "BY",
    "GROUP",
    "HAVING",
    "LIMIT",
    "OFFSET",
    "JOIN",
    "LEFT",
    "CROSS",
    "NATURAL",
    "ON",
    "OVER",
    "PARTITION",
    "FILTER",
    "WINDOW",
    "CAST",
    "DISTINCT",
    "EXISTS",
    "EXPLAIN",
    "SHOW",
    "PRAGMA",
    "ATTACH",
    "ON CONFLICT DO NOTHING",
    "IF NOT EXISTS",
    "+",
    "-",
    "*",
    "/",
    "%",
    "||",
    "&",
    "|",
    "<<",
    ">>",
    "~",
    "=",
    "==",
    "!=",
    "<>",
    "<",
    "<=",
    ">",
    ">=",
    "->",
    "->>",
    "(",
    ")",
    "[",
    "]",
    ",",
    ";",
    ".",
    "?",
    "?1",
    "?0",
    "?99999999999999999999",
    ":a",
    "@b",
    "$c",
    "$",
    "'",
    "\"",
    "`",
    "x'",
    "X'0'",
    "x'zz'",
    "0x",
    "0xFFFFFFFFFFFFFFFFFFFF",
    "1e999",
    "1e",
    "-9223372036854775808",
    "9223372036854775808",
    "1.5e-400",
    ".5",
    "5.",
    "0",
    "''",
    "NULL",
    "--",
    "/*",
    "*/",
    "\n",
    "\t",
    "\r",
    "\u{a0}",
    "\u{2028}",
    "\u{feff}",
    "\0",
    "abs(",
    "substr(",
    "zeroblob(",
    "randomblob(",
    "count(*)",
    "sum(",
    "t",
    "u",
    "a",
    "b",
    "*",
];

/// Fragments repeated thousands of times.
const REPEATED: &[&str] = &[
    "(",
    ")",
    "SELECT 1 UNION ALL ",
    "1+",
    " OR 1",
    " AND ",
    "NOT ",
    "- ",
    "~",
    "'a'||",
    "CASE WHEN 1 THEN ",
    "abs(",
    "(SELECT ",
    ",",
    ";",
    " ",
    "--\n",
    "/**/",
    "?,",
    "x'00'",
    "CAST(",
    "1 COLLATE NOCASE ",
    "a.",
    "é",
];

/// How the seeds of the run were gathered.
fn seeds(corpus: Option<&PathBuf>) -> anyhow::Result<Vec<String>> {
    let mut seeds: Vec<String> = SEEDS.iter().map(|s| s.to_string()).collect();
    if let Some(dir) = corpus {
        let files = drsdb_sql_tests::test_files(std::slice::from_ref(dir))
            .map_err(|e| anyhow::anyhow!("cannot read the corpus {}: {e}", dir.display()))?;
        if files.is_empty() {
            anyhow::bail!("no .test files under {}", dir.display());
        }
        for file in files {
            let text =
                std::fs::read_to_string(&file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            seeds.extend(corpus_statements(&text));
        }
    }
    Ok(seeds)
}

/// The SQL of the `statement` and `query` records of a sqllogictest file:
/// the lines after the record's first line, up to a blank line or `----`.
fn corpus_statements(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if !(line.starts_with("statement ") || line.starts_with("query ")) {
            continue;
        }
        let mut sql = Vec::new();
        for l in lines.by_ref() {
            if l.trim().is_empty() || l.starts_with("----") {
                break;
            }
            sql.push(l);
        }
        if !sql.is_empty() {
            out.push(sql.join("\n"));
        }
    }
    out
}

/// A random position in `s` on a character boundary.
fn position(rng: &mut Rng, s: &str) -> usize {
    floor_boundary(s, rng.below(s.len() + 1))
}

/// A random span of `s` (at most `max` bytes), on character boundaries.
fn span(rng: &mut Rng, s: &str, max: usize) -> std::ops::Range<usize> {
    let start = position(rng, s);
    let end = floor_boundary(s, start + rng.below(max.max(1) + 1));
    start..end.max(start)
}

/// A random character: control characters, combining marks, right-to-left
/// and wide scripts, emoji, noncharacters, byte-order marks, anything.
fn unicode(rng: &mut Rng) -> char {
    const RANGES: &[(u32, u32)] = &[
        (0x00, 0x1f),
        (0x20, 0x7e),
        (0x80, 0xff),
        (0x300, 0x36f),
        (0x5d0, 0x5ea),
        (0x200b, 0x202e),
        (0x3040, 0x30ff),
        (0x4e00, 0x9fff),
        (0xfeff, 0xfeff),
        (0xfff0, 0xffff),
        (0x1f300, 0x1f64f),
        (0x10fff0, 0x10ffff),
        (0x0, 0x10ffff),
    ];
    let (lo, hi) = *rng.pick(RANGES);
    let c = lo + (rng.next_u64() % u64::from(hi - lo + 1)) as u32;
    char::from_u32(c).unwrap_or('\u{fffd}')
}

/// Splits `s` into rough tokens (words, quoted strings, single symbols,
/// runs of whitespace): enough for token-level mutations.
fn rough_tokens(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut chars = s.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        let mut end = start + c.len_utf8();
        let same = |d: char| {
            if c.is_alphanumeric() || c == '_' {
                d.is_alphanumeric() || d == '_'
            } else if c.is_whitespace() {
                d.is_whitespace()
            } else {
                false
            }
        };
        if c == '\'' || c == '"' {
            for (i, d) in chars.by_ref() {
                end = i + d.len_utf8();
                if d == c {
                    break;
                }
            }
        } else {
            while let Some(&(i, d)) = chars.peek() {
                if !same(d) {
                    break;
                }
                end = i + d.len_utf8();
                chars.next();
            }
        }
        out.push(&s[start..end]);
    }
    out
}

/// How large a growing mutation makes its input.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scale {
    /// Fragments repeated thousands of times, chains of thousands of
    /// terms, nesting about SQLite's depth limit: tens of KiB.
    Thousands,
    /// 100,000 nested parentheses, 50,000-term chains, literals of
    /// 500,000 bytes: up to [`MAX_INPUT`].
    Huge,
}

/// One small mutation of `s`: spans and tokens moved, inserted, removed.
fn mutate(rng: &mut Rng, s: &str, seeds: &[String]) -> String {
    const WEIGHTS: &[u64] = &[10, 8, 6, 14, 6, 14, 6, 4, 4, 3];
    let mut out = String::with_capacity(s.len() + 16);
    match rng.weighted(WEIGHTS) {
        // Delete a span.
        0 => {
            let r = span(rng, s, 16);
            out.push_str(&s[..r.start]);
            out.push_str(&s[r.end..]);
        }
        // Duplicate a span.
        1 => {
            let r = span(rng, s, 24);
            out.push_str(&s[..r.end]);
            out.push_str(&s[r.clone()]);
            out.push_str(&s[r.end..]);
        }
        // Swap two spans.
        2 => {
            let (a, b) = (span(rng, s, 16), span(rng, s, 16));
            let (first, second) = if a.start <= b.start { (a, b) } else { (b, a) };
            if first.end <= second.start {
                out.push_str(&s[..first.start]);
                out.push_str(&s[second.clone()]);
                out.push_str(&s[first.end..second.start]);
                out.push_str(&s[first.clone()]);
                out.push_str(&s[second.end..]);
            } else {
                out.push_str(s);
            }
        }
        // Insert tokens or operators.
        3 => {
            let at = position(rng, s);
            out.push_str(&s[..at]);
            for _ in 0..1 + rng.below(3) {
                if rng.chance(60) {
                    out.push(' ');
                }
                out.push_str(rng.word(TOKENS));
            }
            out.push_str(&s[at..]);
        }
        // Insert random characters.
        4 => {
            let at = position(rng, s);
            out.push_str(&s[..at]);
            for _ in 0..1 + rng.below(8) {
                out.push(unicode(rng));
            }
            out.push_str(&s[at..]);
        }
        // Token-level: delete, duplicate, swap or replace tokens.
        5 => {
            let mut tokens = rough_tokens(s);
            if tokens.is_empty() {
                tokens.push(*rng.pick(TOKENS));
            }
            let i = rng.below(tokens.len());
            let j = rng.below(tokens.len());
            match rng.below(4) {
                0 => {
                    tokens.remove(i);
                }
                1 => tokens.insert(i, tokens[j]),
                2 => tokens.swap(i, j),
                _ => tokens[i] = *rng.pick(TOKENS),
            }
            out.extend(tokens);
        }
        // Splice with another seed.
        6 => {
            let other = rng.pick(seeds);
            out.push_str(&s[..position(rng, s)]);
            out.push_str(&other[position(rng, other)..]);
        }
        // Change case or whitespace.
        7 => {
            for c in s.chars() {
                match c {
                    ' ' if rng.chance(20) => out.push_str(rng.word(&["\t", "\n", "\r\n", "  ", "\u{a0}", "/**/"])),
                    c if rng.chance(30) => out.extend(c.to_uppercase()),
                    c if rng.chance(30) => out.extend(c.to_lowercase()),
                    c => out.push(c),
                }
            }
        }
        // Open a quote or comment and never close it.
        8 => {
            let at = position(rng, s);
            out.push_str(&s[..at]);
            out.push_str(rng.word(&[
                "'",
                "\"",
                "`",
                "[",
                "/*",
                "--",
                "x'",
                "CREATE TRIGGER t AFTER INSERT ON t BEGIN ",
            ]));
            out.push_str(&s[at..]);
        }
        // Several statements, some empty.
        _ => {
            for _ in 0..1 + rng.below(4) {
                out.push_str(rng.pick::<String>(seeds));
                out.push_str(rng.word(&[";", ";;", "; ", ";\n--c\n", " ; /* c */ "]));
            }
            out.push_str(s);
        }
    }
    out
}

/// One growing mutation of `s`, at `scale`.
fn grow(rng: &mut Rng, s: &str, scale: Scale) -> String {
    let huge = scale == Scale::Huge;
    let mut out = String::new();
    match rng.below(5) {
        // Repeat a fragment thousands of times.
        0 => {
            let at = position(rng, s);
            let fragment =
                if rng.chance(50) { rng.pick(REPEATED).to_string() } else { s[span(rng, s, 12)].to_string() };
            let times = if huge { *rng.pick(&[20_000, 50_000]) } else { *rng.pick(&[1_000, 2_000, 3_000]) };
            out.push_str(&s[..at]);
            out.push_str(&fragment.repeat(times));
            out.push_str(&s[at..]);
        }
        // Nest parentheses deep around a span (or the whole input).
        1 => {
            let depth = if huge { 100_000 } else { *rng.pick(&[100, 999, 1_001, 4_001]) };
            let r = if rng.chance(50) { 0..s.len() } else { span(rng, s, 40) };
            out.push_str(&s[..r.start]);
            out.push_str(&"(".repeat(depth));
            out.push_str(&s[r.clone()]);
            out.push_str(&")".repeat(depth));
            out.push_str(&s[r.end..]);
        }
        // A long operator chain.
        2 => {
            let ops = ["+", "-", "*", "/", "||", " AND ", " OR ", "=", "<", " IS ", " COLLATE NOCASE ", " NOT "];
            let terms = if huge { 50_000 } else { *rng.pick(&[1_000, 4_000, 4_001]) };
            let at = position(rng, s);
            out.push_str(&s[..at]);
            for i in 0..terms {
                if i > 0 {
                    out.push_str(if rng.chance(80) { ops[0] } else { rng.word(&ops) });
                }
                out.push('1');
            }
            out.push_str(&s[at..]);
        }
        // A huge literal.
        3 => {
            let n = if huge { *rng.pick(&[100_000, 500_000]) } else { *rng.pick(&[1_000, 10_000]) };
            let literal = match rng.below(5) {
                0 => "9".repeat(n),
                1 => format!("'{}'", "x".repeat(n)),
                2 => format!("x'{}'", "ab".repeat(n / 2)),
                3 => format!("\"{}\"", "c".repeat(n)),
                _ => format!("1.{}e{}", "5".repeat(n), "9".repeat(20)),
            };
            let at = position(rng, s);
            out.push_str(&s[..at]);
            out.push_str(&literal);
            out.push_str(&s[at..]);
        }
        // Wrap in a construct nested many times.
        _ => {
            let depth = if huge { 10_000 } else { *rng.pick(&[10, 200, 1_000, 2_000]) };
            let (open, close) = *rng.pick(&[
                ("(SELECT ", ")"),
                ("abs(", ")"),
                ("CASE WHEN 1 THEN ", " END"),
                ("NOT ", ""),
                ("- ", ""),
                ("coalesce(NULL, ", ")"),
                ("(1 IN (", "))"),
                ("CAST(", " AS TEXT)"),
            ]);
            let inner = if rng.chance(50) { "1" } else { s };
            out.push_str("SELECT ");
            out.push_str(&open.repeat(depth));
            out.push_str(inner);
            out.push_str(&close.repeat(depth));
        }
    }
    out
}

/// Input `case` of a run seeded `seed`.
fn generate(seeds: &[String], seed: u64, case: u64) -> String {
    let mut rng = Rng::for_case(seed, case);
    let mut s = rng.pick(seeds).clone();
    for _ in 0..1 + rng.below(MAX_ROUNDS) {
        s = mutate(&mut rng, &s, seeds);
        s.truncate(floor_boundary(&s, MAX_SMALL_INPUT));
    }
    let roll = rng.below(PER_MILLE);
    if roll < HUGE_PER_MILLE {
        s = grow(&mut rng, &s, Scale::Huge);
    } else if roll < HUGE_PER_MILLE + THOUSANDS_PER_MILLE {
        s = grow(&mut rng, &s, Scale::Thousands);
    }
    s.truncate(floor_boundary(&s, MAX_INPUT));
    s
}

thread_local! {
    /// The last panic on this thread: where and what.
    static LAST_PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Panics on case threads are recorded for the finding instead of printed;
/// others are printed as usual.
fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let on_case = std::thread::current().name().is_some_and(|n| n.starts_with(CASE_THREAD));
        if on_case {
            let what = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
            LAST_PANIC.with(|p| *p.borrow_mut() = Some(format!("{what}{at}")));
        } else {
            default(info);
        }
    }));
}

/// What checking one input found.
#[derive(Default)]
struct Problems {
    crashes: Vec<String>,
    hangs: Vec<String>,
    inconsistencies: Vec<String>,
    /// How long each call took (shown when a case is replayed).
    timings: Vec<(String, Duration)>,
}

/// Runs `f` under `catch_unwind`, recording a panic as a crash of `name`.
fn guarded<T>(problems: &mut Problems, name: &str, f: impl FnOnce() -> T) -> Option<T> {
    let started = Instant::now();
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    let took = started.elapsed();
    problems.timings.push((name.to_string(), took));
    if took > HANG {
        problems.hangs.push(format!("{name} took {took:.1?}"));
    }
    match result {
        Ok(v) => Some(v),
        Err(_) => {
            let what = LAST_PANIC.with(|p| p.borrow_mut().take()).unwrap_or_else(|| "a panic".into());
            problems.crashes.push(format!("{name} panicked: {what}"));
            None
        }
    }
}

/// Every function under test on one text (a whole input or one of its
/// statements).
fn check_text(problems: &mut Problems, text: &str) {
    guarded(problems, "classify", || sql::classify(text).is_ok());
    guarded(problems, "is_complete", || sql::is_complete(text));
    guarded(problems, "check_size", || sql::check_size(text).is_ok());
    guarded(problems, "parse", || sql::parse(text).is_ok());
    guarded(problems, "parse_one", || sql::parse_one(text).is_ok());
    guarded(problems, "parse_expr", || sql::parse_expr(text).is_some());
    guarded(problems, "virtual_table", || sql::virtual_table(text));
    guarded(problems, "strip_reference", || sql::strip_reference(text));
    guarded(problems, "words", || sql::words(text).map(|w| w.len()).ok());
    guarded(problems, "placeholder_count", || sql::placeholder_count(text).ok());
    guarded(problems, "check_syntax (driver)", || drsdb_client::check_syntax(text).is_ok());
    let numbered = guarded(problems, "number_placeholders", || sql::number_placeholders(text).ok()).flatten();
    if let Some(numbered) = numbered {
        guarded(problems, "placeholder_count", || sql::placeholder_count(&numbered).ok());
        let again = guarded(problems, "number_placeholders", || sql::number_placeholders(&numbered).ok()).flatten();
        match again {
            Some(again) if again != numbered => problems.inconsistencies.push(format!(
                "number_placeholders is not idempotent: once {}, twice {}",
                shown(&numbered),
                shown(&again)
            )),
            None => problems
                .inconsistencies
                .push(format!("number_placeholders fails on its own output {}", shown(&numbered))),
            Some(_) => {}
        }
    }
}

/// Checks one input: the whole text, then each of its first statements.
fn check(input: &str) -> Problems {
    let mut problems = Problems::default();
    check_text(&mut problems, input);
    let pieces = guarded(&mut problems, "split_script", || sql::split_script(input).ok()).flatten();
    for piece in pieces.unwrap_or_default().iter().take(MAX_PIECES) {
        if guarded(&mut problems, "words", || sql::words(piece).is_err()) == Some(true) {
            problems
                .inconsistencies
                .push(format!("split_script returned a statement that does not tokenize: {}", shown(piece)));
        }
        check_text(&mut problems, piece);
    }
    problems
}

/// Checks `input` on a thread with a small stack; `None` when it took
/// longer than [`WATCHDOG`] (the thread is left to finish on its own).
fn check_on_thread(case: u64, input: Arc<String>) -> anyhow::Result<Option<Problems>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name(format!("{CASE_THREAD}{case}"))
        .stack_size(CASE_STACK)
        .spawn(move || {
            let _ = tx.send(check(&input));
        })
        .map_err(|e| anyhow::anyhow!("cannot start a checking thread: {e}"))?;
    match rx.recv_timeout(WATCHDOG) {
        Ok(problems) => {
            let _ = handle.join();
            Ok(Some(problems))
        }
        Err(RecvTimeoutError::Timeout) => Ok(None),
        Err(RecvTimeoutError::Disconnected) => {
            anyhow::bail!("the thread checking case {case} ended without an answer")
        }
    }
}

/// Runs `fuzz parse`.
pub fn run(args: Args) -> anyhow::Result<bool> {
    let seed = args.seed.unwrap_or_else(clock_seed);
    let seeds = seeds(args.corpus.as_ref())?;
    install_panic_hook();
    if let Some(case) = args.replay {
        return replay(&seeds, seed, case);
    }
    println!(
        "fuzz parse: seed {seed}, {} cases from {} seed statements (replay one with --seed {seed} --replay N)",
        args.cases,
        seeds.len()
    );
    let mut findings = Findings::default();
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let mut bytes = 0u64;
    for case in 0..args.cases {
        let input = Arc::new(generate(&seeds, seed, case));
        bytes += input.len() as u64;
        report_case(&mut findings, case, &input)?;
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            println!(
                "fuzz parse: {}/{} cases, {:.0} cases/s, {} findings",
                case + 1,
                args.cases,
                rate(case + 1, started.elapsed()),
                findings.total()
            );
        }
    }
    let elapsed = started.elapsed();
    println!(
        "fuzz parse: {} cases ({:.1} MiB) in {elapsed:.1?}, {:.0} cases/s",
        args.cases,
        bytes as f64 / f64::from(1 << 20),
        rate(args.cases, elapsed)
    );
    println!(
        "fuzz parse: {} cases, {} crashes, {} hangs, {} inconsistencies",
        args.cases, findings.crashes, findings.hangs, findings.inconsistencies
    );
    Ok(findings.total() == 0)
}

/// Prints case `case` and checks it alone, on the same small stack but
/// without a time limit, showing how long each call took.
fn replay(seeds: &[String], seed: u64, case: u64) -> anyhow::Result<bool> {
    let input = generate(seeds, seed, case);
    println!("fuzz parse: seed {seed}, case {case} ({} bytes): {}", input.len(), shown(&input));
    if input.len() <= REPLAY_SHOWN_BYTES {
        println!("{input:?}");
    }
    let started = Instant::now();
    let problems = std::thread::Builder::new()
        .name(format!("{CASE_THREAD}{case}"))
        .stack_size(CASE_STACK)
        .spawn(move || check(&input))
        .map_err(|e| anyhow::anyhow!("cannot start a checking thread: {e}"))?
        .join()
        .map_err(|_| anyhow::anyhow!("the checking thread panicked"))?;
    println!("checked in {:.3?}", started.elapsed());
    let mut slowest = problems.timings.clone();
    slowest.sort_by_key(|t| std::cmp::Reverse(t.1));
    for (name, took) in slowest.iter().take(REPLAY_SLOWEST) {
        println!("  {name}: {took:.3?}");
    }
    let found: Vec<&String> = problems.crashes.iter().chain(&problems.hangs).chain(&problems.inconsistencies).collect();
    for p in &found {
        println!("FINDING: {p}");
    }
    Ok(found.is_empty())
}

/// Checks case `case` and records what it found.
fn report_case<'a>(findings: &'a mut Findings, case: u64, input: &Arc<String>) -> anyhow::Result<&'a mut Findings> {
    match check_on_thread(case, input.clone())? {
        None => findings.report(
            Kind::Hang,
            &format!("case {case} did not finish in {WATCHDOG:?} ({} bytes): {}", input.len(), shown(input)),
        ),
        Some(problems) => {
            for p in problems.hangs {
                findings
                    .report(Kind::Hang, &format!("case {case}: {p}; input ({} bytes): {}", input.len(), shown(input)));
            }
            for p in problems.crashes {
                findings
                    .report(Kind::Crash, &format!("case {case}: {p}; input ({} bytes): {}", input.len(), shown(input)));
            }
            for p in problems.inconsistencies {
                findings.report(Kind::Inconsistency, &format!("case {case}: {p}; input: {}", shown(input)));
            }
        }
    }
    Ok(findings)
}
