//! The random SQL of `fuzz sql`: a small grammar over a fixed schema whose
//! answers are deterministic, so that drsdb's can be compared with
//! SQLite's.
//!
//! What keeps answers comparable:
//! - no nondeterministic functions (`random()`, `'now'`, `ulid()`);
//! - every key is given explicitly (drsdb assigns missing INTEGER PRIMARY
//!   KEYs and rowids its own way, as documented), and never NULL;
//! - a query is compared row by row only when its ORDER BY is total: it
//!   ends with a unique key of every table it reads (or, for the table
//!   without a key, every column and the type of the untyped one). Other
//!   queries are compared as sorted multisets, and only ordered queries
//!   get LIMIT/OFFSET;
//! - DISTINCT, GROUP BY, UNION/EXCEPT/INTERSECT and MIN/MAX take only
//!   values whose equal values are identical (typed columns: an INTEGER
//!   column stores 1.0 as 1, a REAL column 1 as 1.0; `length`, `upper`,
//!   `typeof` of them), since which of two equal values (1 and 1.0) SQLite
//!   keeps is an implementation detail;
//! - scalar subqueries aggregate, or are ordered on a key with LIMIT 1;
//! - multi-row INSERTs that could fail on some rows (and so, over several
//!   shards, apply on some only: documented) are avoided: their keys are
//!   fresh unless they use OR IGNORE/OR REPLACE.

use drsdb_client::Value;

use super::Rng;

/// A column's declared type, which decides its affinity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Int,
    Text,
    Real,
    /// No declared type: values are stored as given, so 1 and 1.0 may both
    /// appear and compare equal.
    Any,
    /// TEXT COLLATE NOCASE: 'a' and 'A' compare equal.
    NoCase,
}

impl Ty {
    /// Equal values of this column are identical.
    fn canonical(self) -> bool {
        !matches!(self, Ty::Any | Ty::NoCase)
    }
}

/// A column of the schema.
pub struct Column {
    pub name: &'static str,
    pub ty: Ty,
}

/// A table of the schema.
pub struct Table {
    pub name: &'static str,
    pub columns: &'static [Column],
    /// Primary key columns (empty: none).
    pub key: &'static [&'static str],
    /// A reference table (a plain table on SQLite).
    pub reference: bool,
    /// The column definitions, as in `CREATE TABLE name (…)`.
    pub body: &'static str,
}

const fn col(name: &'static str, ty: Ty) -> Column {
    Column { name, ty }
}

/// The tables statements read and write.
pub const TABLES: &[Table] = &[
    Table {
        name: "fz_a",
        columns: &[col("id", Ty::Int), col("x", Ty::Int), col("y", Ty::Text), col("z", Ty::Real)],
        key: &["id"],
        reference: false,
        body: "id INTEGER PRIMARY KEY, x INTEGER, y TEXT, z REAL",
    },
    Table {
        name: "fz_b",
        columns: &[col("k", Ty::Text), col("x", Ty::Int), col("y", Ty::Text), col("c", Ty::NoCase)],
        key: &["k"],
        reference: false,
        body: "k TEXT PRIMARY KEY, x INTEGER, y TEXT, c TEXT COLLATE NOCASE",
    },
    Table {
        name: "fz_c",
        columns: &[col("x", Ty::Int), col("y", Ty::Text), col("v", Ty::Any)],
        key: &[],
        reference: false,
        body: "x INTEGER, y TEXT, v",
    },
    Table {
        name: "fz_d",
        columns: &[col("p", Ty::Int), col("q", Ty::Text), col("v", Ty::Any)],
        key: &["p", "q"],
        reference: false,
        body: "p INTEGER, q TEXT, v, PRIMARY KEY (p, q)",
    },
    Table {
        name: "fz_r",
        columns: &[col("id", Ty::Int), col("name", Ty::Text), col("w", Ty::Int)],
        key: &["id"],
        reference: true,
        body: "id INTEGER PRIMARY KEY, name TEXT, w INTEGER",
    },
];

/// Where hostile statements put large values (never read by the others).
const BIG_TABLE: &str = "fz_big";
/// The full-text table hostile statements create and drop.
const DOCS_TABLE: &str = "fz_docs";
/// Every table the harness creates, for cleaning up a `--data` cluster.
pub const ALL_TABLES: &[&str] = &["fz_a", "fz_b", "fz_c", "fz_d", "fz_r", BIG_TABLE, DOCS_TABLE];

/// Rows each table starts with.
pub const SEED_ROWS: i64 = 40;
/// Rows per seeding INSERT.
const SEED_BATCH: i64 = 10;
/// Above this many rows a table is written by DELETEs only; below
/// [`MIN_ROWS`] by INSERTs only.
const MAX_ROWS: usize = 250;
const MIN_ROWS: usize = 10;
/// Fresh keys start here (seeded keys are 1..=SEED_ROWS).
const FRESH_KEYS: i64 = 1_000;
/// Most rows in one generated multi-row INSERT.
const MAX_INSERT_ROWS: usize = 20;
/// How deep generated expressions nest.
const EXPR_DEPTH: u32 = 3;
/// Most statements inside a generated transaction.
const MAX_TXN_STATEMENTS: usize = 4;
/// Terms of the hostile operator chains and UNION ALLs.
const HOSTILE_TERMS: usize = 50_000;
/// Depth of the hostile nested parentheses.
const HOSTILE_NESTING: usize = 100_000;
/// drsdb's limit on strings and blobs (16 MiB).
const VALUE_LIMIT: usize = 16 << 20;
/// Items of the hostile (valid) IN list.
const HOSTILE_IN_ITEMS: usize = 100_000;

/// Integers values are drawn from (small ones most of the time).
const INTS: &[i64] = &[
    0,
    1,
    2,
    3,
    5,
    7,
    10,
    42,
    -1,
    -7,
    100,
    255,
    1000,
    -1000,
    65536,
    2147483647,
    -2147483648,
    4294967296,
    9007199254740993,
    9223372036854775807,
    -9223372036854775807,
];
/// Reals, as written and as values.
const REALS: &[(&str, f64)] = &[
    ("0.5", 0.5),
    ("-1.25", -1.25),
    ("3.0", 3.0),
    ("2.5", 2.5),
    ("0.1", 0.1),
    ("100.0", 100.0),
    ("1e10", 1e10),
    ("-2.5e-5", -2.5e-5),
    ("7.75", 7.75),
    ("1.5e300", 1.5e300),
];
/// Texts (SQLite string literals are written with '' for ').
const TEXTS: &[&str] = &[
    "",
    "a",
    "A",
    "b",
    "abc",
    "ABC",
    "abd",
    "hello world",
    "10",
    "2.5",
    " x",
    "x ",
    "é",
    "Ü",
    "日本",
    "it's",
    "%",
    "_",
    "a_b",
    "null",
    "NULL",
    "k1",
    "K1",
    "z",
];
/// Blobs.
const BLOBS: &[&[u8]] = &[b"", b"\x00", b"\xff\x00", b"abc", b"k1"];
/// LIKE patterns.
const LIKE_PATTERNS: &[&str] = &["a%", "%b%", "_", "%", "A%", "%é%", "k_", "%1", "h%d"];
/// GLOB patterns.
const GLOB_PATTERNS: &[&str] = &["a*", "*[0-9]*", "?", "k?", "[a-c]*"];

/// Transaction control, which the runner maps onto a SQLite savepoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Begin,
    Commit,
    Rollback,
}

/// One statement to run on both sides.
#[derive(Debug, Clone)]
pub struct Case {
    /// The text drsdb gets.
    pub drsdb: String,
    /// The text SQLite gets (the same but for `CREATE REFERENCE TABLE`).
    pub sqlite: String,
    /// Parameter values, for both.
    pub params: Vec<Value>,
    /// Rows are compared in order (the ORDER BY is total).
    pub ordered: bool,
    /// Tables the statement may change.
    pub writes: Vec<&'static str>,
    /// Transaction control (`sqlite` is then unused).
    pub control: Option<Control>,
}

impl Case {
    fn read(sql: String, ordered: bool) -> Case {
        Case { sqlite: sql.clone(), drsdb: sql, params: Vec::new(), ordered, writes: Vec::new(), control: None }
    }

    fn write(sql: String, params: Vec<Value>, table: &'static str) -> Case {
        Case { params, writes: vec![table], ..Case::read(sql, false) }
    }

    fn control(sql: &str, control: Control) -> Case {
        Case { control: Some(control), ..Case::read(sql.to_string(), false) }
    }

    fn hostile(sql: String, writes: Vec<&'static str>) -> Case {
        Case { writes, ..Case::read(sql, true) }
    }
}

/// The tables a FROM clause names: alias and table.
struct Scope {
    items: Vec<(String, &'static Table)>,
    /// Column references carry their alias (several tables, subqueries).
    qualified: bool,
}

impl Scope {
    fn one(table: &'static Table) -> Scope {
        Scope { items: vec![(table.name.to_string(), table)], qualified: false }
    }

    fn aliased(items: Vec<(&str, &'static Table)>) -> Scope {
        Scope { items: items.into_iter().map(|(a, t)| (a.to_string(), t)).collect(), qualified: true }
    }

    fn none() -> Scope {
        Scope { items: Vec::new(), qualified: false }
    }

    fn name(&self, alias: &str, column: &str) -> String {
        if self.qualified {
            format!("{alias}.{column}")
        } else {
            column.to_string()
        }
    }

    /// Every column, as referenced, with its type.
    fn columns(&self) -> Vec<(String, Ty)> {
        self.items
            .iter()
            .flat_map(|(alias, t)| t.columns.iter().map(move |c| (self.name(alias, c.name), c.ty)))
            .collect()
    }

    /// An ORDER BY suffix that makes any ordering total: each table's key,
    /// or all its columns (and the type of the untyped one).
    fn unique_order(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (alias, t) in &self.items {
            if t.key.is_empty() {
                for c in t.columns {
                    out.push(self.name(alias, c.name));
                    if !c.ty.canonical() {
                        out.push(format!("typeof({})", self.name(alias, c.name)));
                    }
                }
            } else {
                out.extend(t.key.iter().map(|k| self.name(alias, k)));
            }
        }
        out
    }

    /// Expressions whose equal values are identical (for grouping).
    fn canonical(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, ty) in self.columns() {
            match ty {
                // Not abs(): abs('text') is 0.0, abs(0) is 0.
                Ty::Int => out.push(name),
                Ty::Text => {
                    out.push(format!("length({name})"));
                    out.push(format!("upper({name})"));
                    out.push(name);
                }
                Ty::Real => out.push(name),
                Ty::Any => out.push(format!("typeof({name})")),
                Ty::NoCase => {
                    out.push(format!("length({name})"));
                    out.push(format!("upper({name})"));
                }
            }
        }
        out
    }
}

/// Writes `text` as an SQL string literal.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Writes `bytes` as an SQL blob literal.
fn blob(bytes: &[u8]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02X}")).collect();
    format!("x'{hex}'")
}

/// The random statement source of a `fuzz sql` run.
pub struct Generator {
    rng: Rng,
    /// The last fresh key handed out.
    fresh: i64,
}

impl Generator {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Generator {
        Generator { rng: Rng::new(seed), fresh: FRESH_KEYS }
    }

    /// The statements that create the schema (after dropping what a
    /// previous run left).
    pub fn schema(&self) -> Vec<Case> {
        let mut out: Vec<Case> =
            ALL_TABLES.iter().map(|t| Case::read(format!("DROP TABLE IF EXISTS {t}"), false)).collect();
        for t in TABLES {
            let create = format!("CREATE TABLE {} ({})", t.name, t.body);
            let drsdb =
                if t.reference { create.replacen("CREATE TABLE", "CREATE REFERENCE TABLE", 1) } else { create.clone() };
            out.push(Case { drsdb, sqlite: create, ..Case::read(String::new(), false) });
        }
        out.push(Case::read(format!("CREATE TABLE {BIG_TABLE} (id INTEGER PRIMARY KEY, b)"), false));
        out.push(Case::read("CREATE INDEX fz_a_x ON fz_a(x)".into(), false));
        out
    }

    /// The INSERTs that give every table its first rows.
    pub fn seed_rows(&mut self) -> Vec<Case> {
        let mut out = Vec::new();
        for t in TABLES {
            for start in (1..=SEED_ROWS).step_by(SEED_BATCH as usize) {
                let rows: Vec<String> = (start..start + SEED_BATCH)
                    .map(|k| {
                        let values: Vec<String> = t.columns.iter().map(|c| self.seed_value(t, c, k)).collect();
                        format!("({})", values.join(", "))
                    })
                    .collect();
                out.push(Case::write(format!("INSERT INTO {} VALUES {}", t.name, rows.join(", ")), Vec::new(), t.name));
            }
        }
        out
    }

    /// Column `c` of seed row `k` of table `t`.
    fn seed_value(&mut self, t: &Table, c: &Column, k: i64) -> String {
        let composite = t.key.len() > 1;
        if t.key.contains(&c.name) {
            return match c.ty {
                Ty::Text if composite => quote(&format!("q{k}")),
                Ty::Text => quote(&format!("k{k}")),
                _ if composite => (k % 8).to_string(),
                _ => k.to_string(),
            };
        }
        match c.ty {
            Ty::Int => self.rng.range(-5, 30).to_string(),
            _ => self.literal(c.ty),
        }
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.rng.chance(percent)
    }

    fn fresh_key(&mut self) -> i64 {
        self.fresh += 1;
        self.fresh
    }

    // ------------------------------------------------------------ values

    fn int_literal(&mut self) -> String {
        if self.chance(80) {
            self.rng.range(-5, 50).to_string()
        } else {
            self.rng.pick(INTS).to_string()
        }
    }

    /// A literal, usually of type `ty`, sometimes of any storage class.
    fn literal(&mut self, ty: Ty) -> String {
        let ty = if self.chance(15) { *self.rng.pick(&[Ty::Int, Ty::Text, Ty::Real, Ty::Any]) } else { ty };
        match ty {
            Ty::Int => self.int_literal(),
            Ty::Real => self.rng.pick(REALS).0.to_string(),
            Ty::Text | Ty::NoCase => quote(self.rng.word(TEXTS)),
            Ty::Any => match self.rng.below(6) {
                0 => "NULL".into(),
                1 => blob(self.rng.pick::<&[u8]>(BLOBS)),
                2 => self.rng.pick(REALS).0.to_string(),
                3 => quote(self.rng.word(TEXTS)),
                4 if self.chance(10) => "-9223372036854775808".into(),
                _ => self.int_literal(),
            },
        }
    }

    /// A value of type `ty` as a parameter.
    fn param(&mut self, ty: Ty) -> Value {
        match ty {
            Ty::Int => Value::Integer(if self.chance(80) { self.rng.range(-5, 50) } else { *self.rng.pick(INTS) }),
            Ty::Real => Value::Real(self.rng.pick(REALS).1),
            Ty::Text | Ty::NoCase => Value::Text(self.rng.pick(TEXTS).to_string()),
            Ty::Any => match self.rng.below(5) {
                0 => Value::Null,
                1 => Value::Blob(self.rng.pick(BLOBS).to_vec()),
                2 => Value::Real(self.rng.pick(REALS).1),
                3 => Value::Text(self.rng.pick(TEXTS).to_string()),
                _ => Value::Integer(*self.rng.pick(INTS)),
            },
        }
    }

    /// A value for a non-key column: a literal, a `?` bound to a
    /// parameter, or NULL.
    fn value(&mut self, ty: Ty, params: &mut Vec<Value>) -> String {
        if self.chance(15) {
            params.push(self.param(ty));
            "?".into()
        } else if self.chance(8) {
            "NULL".into()
        } else {
            self.literal(ty)
        }
    }

    /// A key value for column `c` of `t`: an existing-looking one when
    /// `conflicting`, else a fresh one.
    fn key_value(&mut self, t: &Table, c: &Column, conflicting: bool) -> String {
        self.key(t, c, conflicting).0
    }

    /// [`Generator::key_value`], with the value it stands for.
    fn key(&mut self, t: &Table, c: &Column, conflicting: bool) -> (String, Value) {
        let composite = t.key.len() > 1;
        let text = |s: String| (quote(&s), Value::Text(s));
        let int = |i: i64| (i.to_string(), Value::Integer(i));
        match (c.ty, conflicting) {
            (Ty::Text, true) if composite => text(format!("q{}", self.rng.range(1, SEED_ROWS))),
            (Ty::Text, true) => match self.rng.below(4) {
                // An integer, stored as text by the column's affinity.
                0 => int(self.rng.range(1, 9)),
                1 => text(self.rng.pick(TEXTS).to_string()),
                _ => text(format!("k{}", self.rng.range(1, SEED_ROWS))),
            },
            (Ty::Text, false) => text(format!("n{}", self.fresh_key())),
            // An integer key written as text or as a real: the column's
            // affinity makes it the integer, on every shard alike.
            (_, true) if self.rng.chance(15) => {
                let i = if composite { self.rng.range(0, 7) } else { self.rng.range(1, SEED_ROWS + 10) };
                match self.rng.below(2) {
                    0 => (format!("'{i}'"), Value::Text(i.to_string())),
                    _ => (format!("{i}.0"), Value::Real(i as f64)),
                }
            }
            (_, true) if composite => int(self.rng.range(0, 7)),
            (_, true) => int(self.rng.range(1, SEED_ROWS + 10)),
            (_, false) => int(self.fresh_key()),
        }
    }

    // ------------------------------------------------------- expressions

    fn column(&mut self, scope: &Scope) -> Option<(String, Ty)> {
        let columns = scope.columns();
        (!columns.is_empty()).then(|| self.rng.pick(&columns).clone())
    }

    /// A column or a literal.
    fn atom(&mut self, scope: &Scope) -> String {
        match self.column(scope) {
            Some((name, _)) if self.chance(75) => name,
            _ => {
                let ty = *self.rng.pick(&[Ty::Int, Ty::Text, Ty::Real, Ty::Any]);
                self.literal(ty)
            }
        }
    }

    /// A scalar expression.
    fn expr(&mut self, scope: &Scope, depth: u32) -> String {
        if depth == 0 || self.chance(35) {
            return self.atom(scope);
        }
        let d = depth - 1;
        const WEIGHTS: &[u64] = &[20, 20, 8, 6, 6, 6, 4, 4, 4, 3];
        match self.rng.weighted(WEIGHTS) {
            0 => {
                let op = *self.rng.pick(&["+", "-", "*", "/", "%", "||", "+", "-"]);
                format!("({} {op} {})", self.expr(scope, d), self.expr(scope, d))
            }
            1 => {
                let f = *self.rng.pick(&[
                    "abs", "length", "upper", "lower", "typeof", "hex", "quote", "trim", "round", "sign", "unicode",
                    "ltrim",
                ]);
                format!("{f}({})", self.expr(scope, d))
            }
            2 => {
                let (a, b) = (self.rng.range(-2, 5), self.rng.range(0, 4));
                format!("substr({}, {a}, {b})", self.expr(scope, d))
            }
            3 => {
                let f = *self.rng.pick(&["coalesce", "ifnull", "nullif", "max", "min", "instr"]);
                format!("{f}({}, {})", self.expr(scope, d), self.expr(scope, d))
            }
            4 => {
                let mut s = String::from("CASE");
                for _ in 0..1 + self.rng.below(2) {
                    s.push_str(&format!(" WHEN {} THEN {}", self.pred(scope, d), self.expr(scope, d)));
                }
                if self.chance(70) {
                    s.push_str(&format!(" ELSE {}", self.expr(scope, d)));
                }
                s + " END"
            }
            5 => {
                let ty = *self.rng.pick(&["INTEGER", "TEXT", "REAL", "NUMERIC", "BLOB"]);
                format!("CAST({} AS {ty})", self.expr(scope, d))
            }
            6 => format!("iif({}, {}, {})", self.pred(scope, d), self.expr(scope, d), self.expr(scope, d)),
            7 => format!("({})", self.pred(scope, d)),
            8 => format!("replace({}, 'a', 'xy')", self.expr(scope, d)),
            _ => self.scalar_subquery(scope),
        }
    }

    /// A scalar subquery with one deterministic answer.
    fn scalar_subquery(&mut self, outer: &Scope) -> String {
        let t = self.rng.pick(TABLES);
        let inner = Scope::aliased(vec![("s", t)]);
        let correlated = match (self.column(outer), self.column(&inner)) {
            (Some((o, _)), Some((i, _))) if self.chance(60) => format!(" WHERE {i} = {o}"),
            _ => String::new(),
        };
        let (numeric, _) = self.column(&inner).unwrap_or_else(|| ("1".into(), Ty::Int));
        match self.rng.below(3) {
            0 => format!("(SELECT count(*) FROM {} AS s{correlated})", t.name),
            1 => format!("(SELECT total({numeric}) FROM {} AS s{correlated})", t.name),
            _ => {
                let order = inner.unique_order().join(", ");
                format!("(SELECT {numeric} FROM {} AS s{correlated} ORDER BY {order} LIMIT 1)", t.name)
            }
        }
    }

    /// A condition.
    fn pred(&mut self, scope: &Scope, depth: u32) -> String {
        if depth > 0 && self.chance(30) {
            let d = depth - 1;
            return match self.rng.below(3) {
                0 => format!("({} AND {})", self.pred(scope, d), self.pred(scope, d)),
                1 => format!("({} OR {})", self.pred(scope, d), self.pred(scope, d)),
                _ => format!("NOT ({})", self.pred(scope, d)),
            };
        }
        let (col, ty) = self.column(scope).unwrap_or_else(|| ("1".into(), Ty::Int));
        let d = depth.saturating_sub(1);
        const WEIGHTS: &[u64] = &[30, 10, 8, 8, 8, 4, 4, 6, 4];
        match self.rng.weighted(WEIGHTS) {
            0 => {
                let op = *self.rng.pick(&["=", "<>", "<", "<=", ">", ">=", "==", "!=", "=", "<", ">", "IS", "IS NOT"]);
                let rhs = if self.chance(70) { self.literal(ty) } else { self.expr(scope, d) };
                format!("{col} {op} {rhs}")
            }
            1 => format!("{col} IS {}NULL", if self.chance(50) { "NOT " } else { "" }),
            2 => {
                let (a, b) = (self.literal(ty), self.literal(ty));
                format!("{col} {}BETWEEN {a} AND {b}", if self.chance(20) { "NOT " } else { "" })
            }
            3 => {
                let items: Vec<String> = (0..1 + self.rng.below(5)).map(|_| self.literal(ty)).collect();
                format!("{col} {}IN ({})", if self.chance(20) { "NOT " } else { "" }, items.join(", "))
            }
            4 => {
                let pattern = quote(self.rng.word(LIKE_PATTERNS));
                format!("{col} {}LIKE {pattern}", if self.chance(20) { "NOT " } else { "" })
            }
            5 => format!("{col} GLOB {}", quote(self.rng.word(GLOB_PATTERNS))),
            6 => format!("{} COLLATE NOCASE = {}", self.expr(scope, d), quote(self.rng.word(TEXTS))),
            7 => {
                let t = self.rng.pick(TABLES);
                let inner = Scope::aliased(vec![("s", t)]);
                let (icol, _) = self.column(&inner).unwrap_or_else(|| ("1".into(), Ty::Int));
                let filter = if self.chance(50) { format!(" WHERE {}", self.pred(&inner, 0)) } else { String::new() };
                format!("{col} IN (SELECT {icol} FROM {} AS s{filter})", t.name)
            }
            _ => {
                let t = self.rng.pick(TABLES);
                let inner = Scope::aliased(vec![("s", t)]);
                let (icol, _) = self.column(&inner).unwrap_or_else(|| ("1".into(), Ty::Int));
                format!(
                    "{}EXISTS (SELECT 1 FROM {} AS s WHERE {icol} = {col})",
                    if self.chance(20) { "NOT " } else { "" },
                    t.name
                )
            }
        }
    }

    /// ` WHERE …` or nothing.
    fn where_clause(&mut self, scope: &Scope) -> String {
        if self.chance(70) {
            format!(" WHERE {}", self.pred(scope, EXPR_DEPTH))
        } else {
            String::new()
        }
    }

    /// ` ORDER BY … <unique key>` (and maybe LIMIT) when `ordered`.
    fn order_clause(&mut self, scope: &Scope, ordered: bool) -> String {
        if !ordered {
            return String::new();
        }
        let mut terms = Vec::new();
        for _ in 0..self.rng.below(3) {
            let mut term = self.expr(scope, 1);
            if term.parse::<i64>().is_ok() {
                // A bare integer names a result column.
                term = format!("{term} + 0");
            }
            if self.chance(20) {
                term.push_str(" COLLATE NOCASE");
            }
            if self.chance(40) {
                term.push_str(" DESC");
            }
            if self.chance(15) {
                term.push_str(self.rng.word(&[" NULLS FIRST", " NULLS LAST"]));
            }
            terms.push(term);
        }
        for key in scope.unique_order() {
            terms.push(if self.chance(25) { format!("{key} DESC") } else { key });
        }
        format!(" ORDER BY {}{}", terms.join(", "), self.limit_clause())
    }

    fn limit_clause(&mut self) -> String {
        if !self.chance(40) {
            return String::new();
        }
        let limit = self.rng.range(0, 12);
        if self.chance(40) {
            format!(" LIMIT {limit} OFFSET {}", self.rng.range(0, 20))
        } else {
            format!(" LIMIT {limit}")
        }
    }

    /// A projection list of 1–4 expressions (sometimes named).
    fn projection(&mut self, scope: &Scope) -> String {
        if self.chance(20) && !scope.items.is_empty() {
            return "*".into();
        }
        let items: Vec<String> = (0..1 + self.rng.below(4))
            .enumerate()
            .map(|(i, _)| {
                let e = self.expr(scope, EXPR_DEPTH);
                if self.chance(30) {
                    format!("{e} AS c{i}")
                } else {
                    e
                }
            })
            .collect();
        items.join(", ")
    }

    // ----------------------------------------------------------- queries

    fn simple_select(&mut self) -> Case {
        let t = self.rng.pick(TABLES);
        let scope = Scope::one(t);
        let ordered = self.chance(50);
        let distinct = if self.chance(10) { "DISTINCT " } else { "" };
        if !distinct.is_empty() {
            let canon = scope.canonical();
            let items: Vec<String> = (0..1 + self.rng.below(2)).map(|_| self.rng.pick(&canon).clone()).collect();
            let where_ = self.where_clause(&scope);
            // Distinct rows of canonical values: ordering every column is total.
            let order = match ordered {
                true => {
                    let columns: Vec<String> = (1..=items.len()).map(|i| i.to_string()).collect();
                    format!(" ORDER BY {}{}", columns.join(", "), self.limit_clause())
                }
                false => String::new(),
            };
            return Case::read(
                format!("SELECT {distinct}{} FROM {}{where_}{order}", items.join(", "), t.name),
                ordered,
            );
        }
        let proj = self.projection(&scope);
        let where_ = self.where_clause(&scope);
        let order = self.order_clause(&scope, ordered);
        Case::read(format!("SELECT {proj} FROM {}{where_}{order}", t.name), ordered)
    }

    fn point_select(&mut self) -> Case {
        let t = self.rng.pick(TABLES);
        let scope = Scope::one(t);
        let proj = self.projection(&scope);
        if t.key.is_empty() {
            let x = self.rng.range(-5, 30);
            return Case::read(format!("SELECT {proj} FROM {} WHERE x = {x}", t.name), false);
        }
        let mut params = Vec::new();
        let conditions: Vec<String> = t
            .key
            .iter()
            .map(|k| {
                let c = t.columns.iter().find(|c| c.name == *k).expect("key columns exist");
                let (literal, value) = self.key(t, c, true);
                if self.chance(30) {
                    params.push(value);
                    format!("{k} = ?")
                } else {
                    format!("{k} = {literal}")
                }
            })
            .collect();
        Case { params, ..Case::read(format!("SELECT {proj} FROM {} WHERE {}", t.name, conditions.join(" AND ")), true) }
    }

    fn aggregate(&mut self) -> Case {
        let t = self.rng.pick(TABLES);
        let scope = Scope::one(t);
        let canon = scope.canonical();
        let groups: Vec<String> = (0..self.rng.below(3)).map(|_| self.rng.pick(&canon).clone()).collect();
        let aggs: Vec<String> = (0..1 + self.rng.below(3)).map(|_| self.aggregate_call(&scope)).collect();
        let mut sql =
            format!("SELECT {} FROM {}", groups.iter().chain(&aggs).cloned().collect::<Vec<_>>().join(", "), t.name);
        sql.push_str(&self.where_clause(&scope));
        let ordered = groups.is_empty() || self.chance(60);
        if !groups.is_empty() {
            sql.push_str(&format!(" GROUP BY {}", groups.join(", ")));
            if self.chance(30) {
                let agg = self.aggregate_call(&scope);
                sql.push_str(&format!(
                    " HAVING {agg} {} {}",
                    self.rng.pick(&[">", "<", ">=", "<>"]),
                    self.int_literal()
                ));
            }
            if ordered {
                let order: Vec<String> =
                    groups.iter().map(|g| if self.chance(30) { format!("{g} DESC") } else { g.clone() }).collect();
                sql.push_str(&format!(" ORDER BY {}{}", order.join(", "), self.limit_clause()));
            }
        }
        Case::read(sql, ordered)
    }

    /// An aggregate over `scope` with one deterministic answer.
    fn aggregate_call(&mut self, scope: &Scope) -> String {
        let columns = scope.columns();
        let canonical: Vec<String> = columns.iter().filter(|(_, t)| t.canonical()).map(|(n, _)| n.clone()).collect();
        let any = self.rng.pick(&columns).0.clone();
        let canon = self.rng.pick(&canonical).clone();
        match self.rng.below(9) {
            0 => "count(*)".into(),
            1 => format!("count({any})"),
            2 => format!("sum({any})"),
            3 => format!("total({any})"),
            4 => format!("avg({any})"),
            5 => format!("min({canon})"),
            6 => format!("max({canon})"),
            7 => format!("count(DISTINCT {canon})"),
            _ => {
                let text = columns.iter().find(|(_, t)| *t == Ty::Text).map_or(canon, |(n, _)| n.clone());
                format!("group_concat({text}, '|' ORDER BY {text})")
            }
        }
    }

    fn join(&mut self) -> Case {
        // (left, right, condition): keys with keys, and other columns.
        const JOINS: &[(usize, usize, &str)] = &[
            (0, 4, "l.id = r.id"),
            (0, 0, "l.id = r.id"),
            (0, 0, "l.x = r.x"),
            (0, 1, "l.x = r.x"),
            (0, 2, "l.x = r.x"),
            (1, 3, "l.x = r.p"),
            (3, 4, "l.p = r.id"),
            (0, 3, "l.id = r.p"),
            (1, 1, "l.k = r.k"),
            (2, 4, "l.x = r.w"),
            (1, 0, "l.y = r.y"),
        ];
        let (li, ri, on) = *self.rng.pick(JOINS);
        let scope = Scope::aliased(vec![("l", &TABLES[li]), ("r", &TABLES[ri])]);
        let kind = *self.rng.pick(&["JOIN", "JOIN", "LEFT JOIN", "INNER JOIN"]);
        let ordered = self.chance(50);
        let proj = self.projection(&scope);
        let where_ = self.where_clause(&scope);
        let order = self.order_clause(&scope, ordered);
        let (left, right) = (TABLES[li].name, TABLES[ri].name);
        let sql = if kind == "JOIN" && self.chance(20) {
            // The old style: a comma, and the condition in WHERE.
            let cond = if where_.is_empty() { format!(" WHERE {on}") } else { format!("{where_} AND {on}") };
            format!("SELECT {proj} FROM {left} AS l, {right} AS r{cond}{order}")
        } else {
            format!("SELECT {proj} FROM {left} AS l {kind} {right} AS r ON {on}{where_}{order}")
        };
        Case::read(sql, ordered)
    }

    fn subquery_select(&mut self) -> Case {
        let t = self.rng.pick(TABLES);
        let scope = Scope::aliased(vec![("o", t)]);
        match self.rng.below(3) {
            0 => {
                let proj = format!("{}, {}", self.expr(&scope, 1), self.scalar_subquery(&scope));
                let ordered = self.chance(50);
                let order = self.order_clause(&scope, ordered);
                Case::read(format!("SELECT {proj} FROM {} AS o{}{order}", t.name, self.where_clause(&scope)), ordered)
            }
            1 => {
                let canon = Scope::one(t).canonical();
                let g = self.rng.pick(&canon).clone();
                let n = self.rng.range(0, 3);
                Case::read(
                    format!(
                        "SELECT s.g, s.n FROM (SELECT {g} AS g, count(*) AS n FROM {} GROUP BY {g}) AS s \
                         WHERE s.n > {n} ORDER BY s.g",
                        t.name
                    ),
                    true,
                )
            }
            _ => {
                let pred = self.pred(&scope, 2);
                let ordered = self.chance(50);
                let order = self.order_clause(&scope, ordered);
                Case::read(format!("SELECT * FROM {} AS o WHERE {pred}{order}", t.name), ordered)
            }
        }
    }

    fn compound(&mut self) -> Case {
        // Column types every arm shares (canonical ones only).
        let signature: Vec<Ty> = match self.rng.below(4) {
            0 => vec![Ty::Int],
            1 => vec![Ty::Text],
            2 => vec![Ty::Int, Ty::Text],
            _ => vec![Ty::Real],
        };
        let mut arms = Vec::new();
        for _ in 0..2 + self.rng.below(2) {
            let candidates: Vec<&Table> =
                TABLES.iter().filter(|t| signature.iter().all(|ty| t.columns.iter().any(|c| c.ty == *ty))).collect();
            let t = *self.rng.pick(&candidates);
            let scope = Scope::one(t);
            let cols: Vec<String> = signature
                .iter()
                .map(|ty| {
                    let of_type: Vec<&Column> = t.columns.iter().filter(|c| c.ty == *ty).collect();
                    self.rng.pick(&of_type).name.to_string()
                })
                .collect();
            arms.push(format!("SELECT {} FROM {}{}", cols.join(", "), t.name, self.where_clause(&scope)));
        }
        let mut sql = arms[0].clone();
        for arm in &arms[1..] {
            let op = *self.rng.pick(&["UNION", "UNION ALL", "EXCEPT", "INTERSECT", "UNION"]);
            sql.push_str(&format!(" {op} {arm}"));
        }
        let ordered = self.chance(60);
        if ordered {
            let order: Vec<String> = (1..=signature.len()).map(|i| i.to_string()).collect();
            sql.push_str(&format!(" ORDER BY {}{}", order.join(", "), self.limit_clause()));
        }
        Case::read(sql, ordered)
    }

    fn cte_or_window(&mut self) -> Case {
        let t = self.rng.pick(TABLES);
        let scope = Scope::one(t);
        let key = scope.unique_order().join(", ");
        let (col, _) = self.column(&scope).unwrap_or_else(|| ("1".into(), Ty::Int));
        let canon = scope.canonical();
        let g = self.rng.pick(&canon).clone();
        match self.rng.below(5) {
            0 => Case::read(format!("SELECT {key}, row_number() OVER (ORDER BY {col}, {key}) FROM {}", t.name), false),
            1 => Case::read(format!("SELECT {key}, rank() OVER (ORDER BY {g}), dense_rank() OVER (PARTITION BY {g} ORDER BY {key}) FROM {}", t.name), false),
            2 => Case::read(format!("SELECT {key}, lag({col}) OVER (ORDER BY {key}), count(*) OVER (PARTITION BY {g}) FROM {} ORDER BY {key}", t.name), true),
            3 => {
                let where_ = self.where_clause(&scope);
                Case::read(format!("WITH w AS (SELECT * FROM {}{where_}) SELECT {g}, count(*) FROM w GROUP BY {g} ORDER BY {g}", t.name), true)
            }
            _ => Case::read(
                "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 20) \
                 SELECT c.n, fz_a.y FROM c JOIN fz_a ON fz_a.id = c.n ORDER BY c.n"
                    .into(),
                true,
            ),
        }
    }

    fn tableless(&mut self) -> Case {
        let scope = Scope::none();
        if self.chance(30) {
            let rows: Vec<String> = (0..1 + self.rng.below(3))
                .map(|_| format!("({}, {})", self.literal(Ty::Any), self.literal(Ty::Any)))
                .collect();
            return Case::read(format!("VALUES {}", rows.join(", ")), true);
        }
        let items: Vec<String> = (0..1 + self.rng.below(4)).map(|_| self.expr(&scope, EXPR_DEPTH)).collect();
        Case::read(format!("SELECT {}", items.join(", ")), true)
    }

    fn broken(&mut self) -> Case {
        let sql = *self.rng.pick(&[
            "SELECT nope FROM fz_a",
            "SELECT * FROM fz_missing",
            "INSERT INTO fz_a VALUES (1)",
            "UPDATE fz_b SET nope = 1",
            "DELETE FROM fz_missing",
            "SELECT x FROM fz_a JOIN fz_b ON 1",
            "SELECT count(*) FROM fz_a GROUP BY nope",
        ]);
        Case::read(sql.into(), false)
    }

    // ------------------------------------------------------------ writes

    fn insert(&mut self, t: &'static Table) -> Case {
        let mut params = Vec::new();
        let multi = self.chance(40);
        // Conflicts only where a failure cannot be partial.
        let resolution = *self.rng.pick(&["", "", "OR IGNORE ", "OR REPLACE ", "REPLACE", "upsert"]);
        let can_conflict = !multi || !resolution.is_empty();
        let reorder = self.chance(25);
        let mut columns: Vec<&Column> = t.columns.iter().collect();
        if reorder {
            for i in (1..columns.len()).rev() {
                let j = self.rng.below(i + 1);
                columns.swap(i, j);
            }
            if t.key.is_empty() && columns.len() > 1 && self.chance(50) {
                columns.pop();
            }
        }
        let rows: Vec<String> = (0..if multi { 2 + self.rng.below(MAX_INSERT_ROWS - 1) } else { 1 })
            .map(|_| {
                let conflicting = can_conflict && self.chance(40);
                let values: Vec<String> = columns
                    .iter()
                    .map(|c| {
                        if t.key.contains(&c.name) {
                            self.key_value(t, c, conflicting)
                        } else {
                            self.value(c.ty, &mut params)
                        }
                    })
                    .collect();
                format!("({})", values.join(", "))
            })
            .collect();
        let list = if reorder {
            format!("({})", columns.iter().map(|c| c.name).collect::<Vec<_>>().join(", "))
        } else {
            String::new()
        };
        let verb = match resolution {
            "REPLACE" => "REPLACE INTO".to_string(),
            "upsert" => "INSERT INTO".to_string(),
            r => format!("INSERT {r}INTO"),
        };
        let mut sql = format!("{verb} {}{list} VALUES {}", t.name, rows.join(", "));
        if resolution == "upsert" && !t.key.is_empty() {
            let target = t.key.join(", ");
            let others: Vec<&Column> = t.columns.iter().filter(|c| !t.key.contains(&c.name)).collect();
            let c = self.rng.pick(&others).name;
            if self.chance(30) {
                sql.push_str(&format!(" ON CONFLICT ({target}) DO NOTHING"));
            } else {
                let set = match self.rng.below(3) {
                    0 => format!("{c} = excluded.{c}"),
                    1 => format!("{c} = coalesce({}.{c}, excluded.{c})", t.name),
                    _ => format!("{c} = NULL"),
                };
                sql.push_str(&format!(" ON CONFLICT ({target}) DO UPDATE SET {set}"));
            }
        } else if resolution == "upsert" {
            sql.push_str(" ON CONFLICT DO NOTHING");
        }
        if self.chance(15) {
            sql.push_str(" RETURNING *");
        }
        Case::write(sql, params, t.name)
    }

    fn insert_select(&mut self) -> Case {
        let sql = match self.rng.below(4) {
            0 => "INSERT INTO fz_c SELECT id, name, w FROM fz_r WHERE id % 7 = 3".to_string(),
            1 => {
                let scope = Scope::one(&TABLES[0]);
                format!("INSERT INTO fz_c(x, y, v) SELECT x, y, z FROM fz_a{}", self.where_clause(&scope))
            }
            2 => "INSERT INTO fz_c SELECT x + 1, y, v FROM fz_c WHERE x = 3".to_string(),
            _ => {
                // Far above every other key, and apart from earlier copies.
                let offset = self.fresh_key() * 1_000_000;
                format!("INSERT INTO fz_a SELECT id + {offset}, w, name, w * 0.5 FROM fz_r WHERE w > 20")
            }
        };
        let target = if sql.starts_with("INSERT INTO fz_a") { "fz_a" } else { "fz_c" };
        Case::write(sql, Vec::new(), target)
    }

    fn update(&mut self, t: &'static Table) -> Case {
        let scope = Scope::one(t);
        let others: Vec<&Column> = t.columns.iter().filter(|c| !t.key.contains(&c.name)).collect();
        let mut params = Vec::new();
        let mut sets = Vec::new();
        for _ in 0..1 + self.rng.below(2) {
            let c = *self.rng.pick(&others);
            let n = c.name;
            let value = match self.rng.below(10) {
                0 => format!("{n} + 1"),
                1 => format!("{n} - 3"),
                2 => format!("{n} * 2"),
                3 => format!("substr(coalesce({n}, '') || 'z', 1, 12)"),
                4 => format!("CASE WHEN {n} > 10 THEN 0 ELSE {n} + 1 END"),
                5 => self.value(c.ty, &mut params),
                6 if t.name == "fz_a" => format!("(SELECT w FROM fz_r WHERE fz_r.id = {}.id)", t.name),
                7 => format!("(SELECT count(*) FROM fz_b WHERE fz_b.x = {}.{})", t.name, scope.columns()[0].0),
                _ => self.expr(&scope, 2),
            };
            sets.push(format!("{n} = {value}"));
        }
        if !t.key.is_empty() && self.chance(5) {
            let k = t.key[0];
            sets.push(format!("{k} = {k} || ''"));
        }
        let where_ = if self.chance(40) && !t.key.is_empty() {
            let c = t.columns.iter().find(|c| c.name == t.key[0]).expect("key columns exist");
            format!(" WHERE {} = {}", c.name, self.key_value(t, c, true))
        } else {
            self.where_clause(&scope)
        };
        let returning = if self.chance(10) { " RETURNING *" } else { "" };
        Case::write(format!("UPDATE {} SET {}{where_}{returning}", t.name, sets.join(", ")), params, t.name)
    }

    fn delete(&mut self, t: &'static Table) -> Case {
        let scope = Scope::one(t);
        let has_x = t.columns.iter().any(|c| c.name == "x");
        let where_ = match self.rng.below(6) {
            0 if !t.key.is_empty() => {
                let c = t.columns.iter().find(|c| c.name == t.key[0]).expect("key columns exist");
                format!(" WHERE {} = {}", c.name, self.key_value(t, c, true))
            }
            1 => {
                let (col, _) = self.column(&scope).unwrap_or_else(|| ("1".into(), Ty::Int));
                format!(" WHERE {col} IN (SELECT w FROM fz_r WHERE id % 3 = {})", self.rng.range(0, 2))
            }
            2 if has_x => " WHERE x IN (SELECT x FROM fz_b WHERE k > 'k3')".to_string(),
            // Now and then everything.
            3 if self.chance(5) => String::new(),
            _ => format!(" WHERE {}", self.pred(&scope, EXPR_DEPTH)),
        };
        let returning = if self.chance(10) { " RETURNING *" } else { "" };
        Case::write(format!("DELETE FROM {}{where_}{returning}", t.name), Vec::new(), t.name)
    }

    /// A write to a table chosen with its size in mind.
    fn write(&mut self, size: &dyn Fn(&str) -> usize) -> Case {
        let t = self.rng.pick(TABLES);
        let rows = size(t.name);
        let choice = self.rng.weighted(&[45, 5, 30, 20]);
        match choice {
            _ if rows > MAX_ROWS => self.delete(t),
            _ if rows < MIN_ROWS => self.insert(t),
            0 => self.insert(t),
            1 => self.insert_select(),
            2 => self.update(t),
            _ => self.delete(t),
        }
    }

    fn transaction(&mut self, size: &dyn Fn(&str) -> usize) -> Vec<Case> {
        let mut out =
            vec![Case::control(self.rng.word(&["BEGIN", "BEGIN TRANSACTION", "BEGIN IMMEDIATE"]), Control::Begin)];
        for _ in 0..1 + self.rng.below(MAX_TXN_STATEMENTS) {
            out.push(if self.chance(60) { self.write(size) } else { self.simple_select() });
        }
        out.push(if self.chance(70) {
            Case::control("COMMIT", Control::Commit)
        } else {
            Case::control("ROLLBACK", Control::Rollback)
        });
        out
    }

    fn ddl(&mut self) -> Case {
        let sql = *self.rng.pick(&[
            "CREATE INDEX IF NOT EXISTS fz_b_y ON fz_b(y COLLATE NOCASE)",
            "DROP INDEX IF EXISTS fz_b_y",
            "CREATE INDEX IF NOT EXISTS fz_c_xy ON fz_c(x, y)",
            "DROP INDEX IF EXISTS fz_c_xy",
            "CREATE INDEX IF NOT EXISTS fz_d_v ON fz_d(v) WHERE v IS NOT NULL",
            "DROP INDEX IF EXISTS fz_d_v",
            "ANALYZE",
        ]);
        Case::read(sql.into(), false)
    }

    /// One of the statements that once broke something, or that push a
    /// limit.
    fn hostile(&mut self) -> Vec<Case> {
        let chain = |op: &str| format!("SELECT {}", vec!["1"; HOSTILE_TERMS].join(op));
        match self.rng.below(12) {
            0 => vec![Case::hostile(chain(self.rng.word(&["+", " || ", " AND ", " OR ", " = "])), vec![])],
            1 => vec![Case::hostile(
                format!("SELECT {}1{}", "(".repeat(HOSTILE_NESTING), ")".repeat(HOSTILE_NESTING)),
                vec![],
            )],
            2 => vec![Case::hostile(vec!["SELECT 1"; HOSTILE_TERMS].join(" UNION ALL "), vec![])],
            3 => vec![Case::hostile(
                format!("SELECT length(zeroblob({VALUE_LIMIT})), length(randomblob({}))", VALUE_LIMIT - 1),
                vec![],
            )],
            4 => vec![Case::hostile(format!("SELECT zeroblob({})", VALUE_LIMIT - self.rng.below(2)), vec![])],
            5 => {
                let size = VALUE_LIMIT - 1 + self.rng.below(3);
                vec![
                    Case::hostile(format!("INSERT INTO {BIG_TABLE} VALUES (1, zeroblob({size}))"), vec![BIG_TABLE]),
                    Case::hostile(format!("UPDATE {BIG_TABLE} SET b = b || x'00'"), vec![BIG_TABLE]),
                    Case::hostile(format!("SELECT id, length(b) FROM {BIG_TABLE}"), vec![]),
                    Case::hostile(format!("DELETE FROM {BIG_TABLE}"), vec![BIG_TABLE]),
                ]
            }
            6 => vec![
                Case::hostile(format!("CREATE VIRTUAL TABLE {DOCS_TABLE} USING fts5(title, body)"), vec![]),
                Case::hostile(
                    format!(
                        "INSERT INTO {DOCS_TABLE} VALUES ('a', 'hello world'), ('b', 'goodbye world'), ('c', 'hello there')"
                    ),
                    vec![],
                ),
                Case::hostile(format!("SELECT title FROM {DOCS_TABLE} WHERE {DOCS_TABLE} MATCH 'hello' ORDER BY title"), vec![]),
                Case::hostile(format!("DROP TABLE {DOCS_TABLE}"), vec![]),
            ],
            7 => vec![Case::hostile(
                (*self.rng.pick(&["BEGIN garbage", "COMMIT garbage", "ROLLBACK garbage", "BEGIN TRANSACTION a b", "END x"]))
                    .into(),
                vec![],
            )],
            8 => {
                let items: Vec<String> = (0..HOSTILE_IN_ITEMS).map(|i| i.to_string()).collect();
                vec![Case::hostile(format!("SELECT count(*) FROM fz_a WHERE x IN ({})", items.join(",")), vec![])]
            }
            9 => {
                let terms: Vec<String> = (0..HOSTILE_TERMS).map(|i| format!("x = {i}")).collect();
                vec![Case::hostile(format!("SELECT count(*) FROM fz_a WHERE {}", terms.join(" OR ")), vec![])]
            }
            10 => {
                let depth = 200;
                vec![Case::hostile(format!("SELECT {}1{}", "(SELECT ".repeat(depth), ")".repeat(depth)), vec![])]
            }
            _ => {
                let whens: Vec<String> = (0..20_000).map(|i| format!("WHEN x = {i} THEN {i}")).collect();
                vec![Case::hostile(format!("SELECT count(CASE {} END) FROM fz_a", whens.join(" ")), vec![])]
            }
        }
    }

    /// The next statements: usually one, a few for a transaction or a
    /// hostile sequence. `size` gives a table's row count.
    pub fn next(&mut self, size: &dyn Fn(&str) -> usize) -> Vec<Case> {
        const WEIGHTS: &[u64] = &[150, 50, 120, 100, 60, 50, 30, 10, 5, 330, 10, 10, 3];
        match self.rng.weighted(WEIGHTS) {
            0 => vec![self.simple_select()],
            1 => vec![self.point_select()],
            2 => vec![self.aggregate()],
            3 => vec![self.join()],
            4 => vec![self.subquery_select()],
            5 => vec![self.compound()],
            6 => vec![self.cte_or_window()],
            7 => vec![self.tableless()],
            8 => vec![self.broken()],
            9 => vec![self.write(size)],
            10 => self.transaction(size),
            11 => vec![self.ddl()],
            _ => self.hostile(),
        }
    }
}
