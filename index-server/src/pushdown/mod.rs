//! Pushdown: splitting a query over co-located tables into the query
//! every shard runs and the way the index server combines their answers.
//!
//! The planner hands over a plain `SELECT` whose sharded tables all sit in
//! its top-level FROM and are co-located (each output row is built from
//! rows of one shard), with no other sharded table read anywhere. Then:
//! - without ORDER BY, LIMIT, DISTINCT, GROUP BY or aggregates, every shard
//!   runs the query unchanged and the answer is their rows one after the
//!   other ([`Combine::Concat`]);
//! - with ORDER BY and/or LIMIT, every shard sorts its rows (on sort keys
//!   it returns as hidden leading columns) and keeps its first
//!   OFFSET + LIMIT; the index server (or, streaming directly, the client) merges the sorted streams, skips
//!   OFFSET rows and stops at LIMIT ([`Combine::Merge`]);
//! - with aggregates, GROUP BY or DISTINCT, every shard computes partial
//!   aggregates per group (COUNTs add up, MIN of MINs; SUM, TOTAL and
//!   AVG return their summation state, which folds as SQLite sums in one
//!   pass: `drsdb_sqlite`'s `sum` module); the index server loads them into a scratch SQLite
//!   table whose columns carry the collation and declared type of what
//!   they hold, and a final query there combines the groups and applies
//!   HAVING, DISTINCT, ORDER BY and LIMIT ([`Combine::Final`]).
//!
//! Anything this module does not recognise makes [`split`] return `None`,
//! and the planner falls back to gathering the tables at the index server,
//! which is always correct: aggregates other than COUNT, SUM, TOTAL, AVG,
//! MIN and MAX (and their DISTINCT forms where the answer would change),
//! window functions, compound selects, CTEs, subqueries in the parts the
//! index server computes, sort keys that cannot be computed on a shard,
//! LIMIT or OFFSET that is not an integer literal or parameter.
//!
//! Results equal SQLite's: sort keys compare as SQLite compares them
//! (storage class, then value, text under the key's collation, derived
//! as SQLite derives it); output columns keep SQLite's names (aliases,
//! column names, or the expression's text as written).
//!
//! Here: the split and its result types; `colocation`: whether a query's
//! rows each come from one shard, and its scope (columns, types,
//! collations); `rewrite`: the shard query and the combining step;
//! `ast`: general helpers over sqlparser's syntax tree.

mod ast;
mod colocation;
mod rewrite;

use std::fmt;
use std::ops::ControlFlow;

use drsdb_common::order::{Collation, SortKey};
use drsdb_common::Value;
use sqlparser::ast::{
    Distinct, Expr, GroupByExpr, OrderByKind, Query, SelectItem, SetExpr, UnaryOperator, Value as SqlValue, VisitMut,
    VisitorMut,
};

use crate::catalog::Catalog;

use ast::*;
use colocation::*;
pub use colocation::{co_located, scan_filters};
use rewrite::*;

/// A query split into a per-shard part and a combining step.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// What every shard runs (placeholders numbered as in the statement).
    pub shard_sql: String,
    /// How the shards' answers become the answer.
    pub combine: Combine,
}

/// How per-shard answers become the answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Combine {
    /// The shards' rows, one shard after another.
    Concat,
    /// Each shard's rows come sorted on their first `keys.len()` columns,
    /// which are not part of the answer; the answer is the ordered merge,
    /// without its first `offset` rows, at most `limit` rows.
    Merge {
        /// The sort keys, most significant first.
        keys: Vec<SortKey>,
        /// Rows skipped.
        offset: u64,
        /// Rows kept; `None` keeps all.
        limit: Option<u64>,
    },
    /// The shards' rows are loaded into table `partial` of a scratch
    /// database (columns `_c0`, `_c1`, … as described by `columns`), where
    /// `sql` computes the answer.
    Final {
        /// The partial table's columns.
        columns: Vec<PartialColumn>,
        /// The combining query.
        sql: String,
        /// What the combining query does, for EXPLAIN.
        steps: Vec<String>,
    },
}

/// A column of the partial table of [`Combine::Final`].
#[derive(Debug, Clone, PartialEq)]
pub struct PartialColumn {
    /// Its collation (that of the expression it holds).
    pub collation: Collation,
    /// Its declared type; `None` takes the one the shards report.
    pub decl_type: Option<String>,
}

impl fmt::Display for Combine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Combine::Concat => write!(f, "Concatenate shard results"),
            Combine::Merge { keys, offset, limit } => {
                write!(f, "Merge sorted shard results on {} key(s)", keys.len())?;
                if *offset > 0 {
                    write!(f, ", skip {offset}")?;
                }
                match limit {
                    Some(l) => write!(f, ", first {l} rows"),
                    None => Ok(()),
                }
            }
            Combine::Final { steps, .. } => write!(f, "Combine at index server: {}", steps.join(", ")),
        }
    }
}

/// Splits `query` (whose text, placeholders numbered, is `source`), or
/// `None` when it cannot be split.
pub fn split(catalog: &Catalog, source: &str, query: &Query, params: &[Value]) -> Option<Split> {
    if query.with.is_some() || query.fetch.is_some() || !query.locks.is_empty() || has_window(query) {
        return None;
    }
    let SetExpr::Select(select) = query.body.as_ref() else { return None };
    if select.top.is_some() || !select.named_window.is_empty() || select.qualify.is_some() {
        return None;
    }
    let scope = Scope::of(catalog, select)?;
    let cx = Cx { scope, source };
    let distinct = match &select.distinct {
        None | Some(Distinct::All) => false,
        Some(Distinct::Distinct) => true,
        Some(_) => return None,
    };
    let grouped = !matches!(&select.group_by, GroupByExpr::Expressions(e, m) if e.is_empty() && m.is_empty());
    let order_by = match &query.order_by {
        None => Vec::new(),
        Some(o) => match &o.kind {
            OrderByKind::Expressions(e) if o.interpolate.is_none() => e.clone(),
            _ => return None,
        },
    };
    let (offset, limit) = limits(query.limit_clause.as_ref(), params)?;
    let aggregated = grouped
        || select.having.is_some()
        || select.projection.iter().any(
            |i| matches!(i, SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } if has_aggregate(e)),
        )
        || order_by.iter().any(|o| has_aggregate(&o.expr));
    if aggregated || distinct {
        return cx.aggregate(query, select, &order_by, distinct);
    }
    if order_by.is_empty() && query.limit_clause.is_none() {
        return Some(Split { shard_sql: source.to_string(), combine: Combine::Concat });
    }
    cx.merge(query, select, &order_by, offset, limit)
}

/// The terms ANDed together in `roots` (through parentheses), last first.
pub(crate) fn conjuncts(roots: Vec<&Expr>) -> Vec<&Expr> {
    let (mut stack, mut terms) = (roots, Vec::new());
    while let Some(e) = stack.pop() {
        match e {
            Expr::Nested(x) => stack.push(x),
            Expr::BinaryOp { left, op: sqlparser::ast::BinaryOperator::And, right } => {
                stack.push(left);
                stack.push(right);
            }
            term => terms.push(term),
        }
    }
    terms
}

/// The SQL text of an AST node. sqlparser prints `- -x` as `--x`, which
/// SQLite reads as the start of a comment: a negated negation (or
/// negative number) is put in parentheses first.
pub(crate) fn to_sql<T: VisitMut + fmt::Display>(mut node: T) -> String {
    struct Parenthesize;
    impl VisitorMut for Parenthesize {
        type Break = ();
        fn post_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
            if let Expr::UnaryOp { op: UnaryOperator::Minus, expr } = e {
                if expr.to_string().starts_with('-') {
                    let inner = std::mem::replace(expr.as_mut(), Expr::value(SqlValue::Null));
                    **expr = Expr::Nested(Box::new(inner));
                }
            }
            ControlFlow::Continue(())
        }
    }
    let _ = VisitMut::visit(&mut node, &mut Parenthesize);
    node.to_string()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use sqlparser::ast::Select;

    use super::*;
    use crate::catalog::Object;

    fn catalog() -> Catalog {
        let table = |name: &str, sql: &str| Object {
            kind: "table".into(),
            name: name.into(),
            table: name.into(),
            sql: sql.into(),
        };
        Catalog::new(
            vec![
                table("t", "CREATE TABLE t(k INTEGER PRIMARY KEY, a INTEGER, b TEXT COLLATE NOCASE)"),
                table("u", "CREATE TABLE u(id INTEGER PRIMARY KEY, v REAL)"),
                table("w", "CREATE TABLE w(x TEXT PRIMARY KEY)"),
                table("r", "CREATE TABLE r(code TEXT PRIMARY KEY, name TEXT)"),
            ],
            &BTreeSet::from(["r".to_string()]),
            None,
        )
        .expect("catalog")
    }

    fn query(sql: &str) -> Query {
        match sqlparser::parser::Parser::parse_sql(&sqlparser::dialect::SQLiteDialect {}, sql)
            .expect("parses")
            .remove(0)
        {
            sqlparser::ast::Statement::Query(q) => *q,
            other => panic!("not a query: {other}"),
        }
    }

    fn select(sql: &str) -> Box<Select> {
        match *query(sql).body {
            SetExpr::Select(s) => s,
            _ => panic!("not a select"),
        }
    }

    fn split_of(sql: &str) -> Option<Split> {
        split(&catalog(), sql, &query(sql), &[Value::Integer(5)])
    }

    #[test]
    fn a_plain_scan_runs_unchanged_and_concatenates() {
        let sql = "SELECT a, b FROM t WHERE a > 3";
        assert_eq!(split_of(sql), Some(Split { shard_sql: sql.into(), combine: Combine::Concat }));
    }

    #[test]
    fn top_n_sorts_on_hidden_keys_and_merges() {
        let s = split_of("SELECT a, b, a + 1 FROM t ORDER BY b DESC, 1 LIMIT ?1 OFFSET 2").expect("splits");
        assert_eq!(
            s.shard_sql,
            r#"SELECT b AS "_s0", a AS "_s1", a, b, a + 1 AS "a + 1" FROM t ORDER BY 1 DESC, 2 LIMIT 7"#
        );
        let nocase_desc = SortKey { collation: Collation::NoCase, descending: true, nulls_first: false };
        let binary_asc = SortKey { collation: Collation::Binary, descending: false, nulls_first: true };
        assert_eq!(s.combine, Combine::Merge { keys: vec![nocase_desc, binary_asc], offset: 2, limit: Some(5) });
    }

    #[test]
    fn aggregates_are_computed_in_parts_and_combined() {
        let s = split_of("SELECT b, count( * ), avg(a) AS m FROM t GROUP BY b HAVING max(a) > 1 ORDER BY m")
            .expect("splits");
        assert_eq!(
            s.shard_sql,
            r#"SELECT b AS "_g0", count(*) AS "_p0", _drsdb_sum_state(a) AS "_p1", max(a) AS "_p2" FROM t GROUP BY 1"#
        );
        let Combine::Final { columns, sql, .. } = s.combine else { panic!("not combined") };
        assert_eq!(
            sql,
            r#"SELECT _g0 AS "b", _a0 AS "count( * )", _a1 AS "m" FROM (SELECT _c0 AS _g0, sum(_c1) AS _a0, _drsdb_avg(_c2) AS _a1, max(_c3) AS _a2 FROM partial GROUP BY _g0) WHERE _a2 > 1 ORDER BY m"#
        );
        assert_eq!(columns[0].collation, Collation::NoCase);
    }

    #[test]
    fn distinct_groups_by_its_columns() {
        let s = split_of("SELECT DISTINCT - a FROM t ORDER BY 1 DESC LIMIT 3").expect("splits");
        assert_eq!(s.shard_sql, r#"SELECT -a AS "_g0" FROM t GROUP BY 1"#);
        let Combine::Final { sql, .. } = s.combine else { panic!("not combined") };
        assert_eq!(
            sql,
            r#"SELECT DISTINCT _g0 AS "- a" FROM (SELECT _c0 AS _g0 FROM partial GROUP BY _g0) ORDER BY 1 DESC LIMIT 3"#
        );
    }

    #[test]
    fn positions_read_as_sqlite_reads_them() {
        let s = split_of("SELECT b FROM t ORDER BY (+1) COLLATE NOCASE LIMIT 3").expect("splits");
        assert_eq!(s.shard_sql, r#"SELECT b COLLATE NOCASE AS "_s0", b FROM t ORDER BY 1 LIMIT 3"#);
        // Out of range or negative: left to SQLite's error, not a constant sort.
        for sql in
            ["SELECT a FROM t ORDER BY 0", "SELECT a FROM t ORDER BY -1 LIMIT 2", "SELECT count(*) FROM t GROUP BY 0"]
        {
            assert_eq!(split_of(sql), None, "{sql}");
        }
    }

    #[test]
    fn negated_negations_do_not_print_as_comments() {
        let s = split_of("SELECT DISTINCT - - a, + 26 FROM t").expect("splits");
        assert_eq!(s.shard_sql, r#"SELECT -(-a) AS "_g0", +26 AS "_g1" FROM t GROUP BY 1, 2"#);
    }

    #[test]
    fn what_cannot_be_split_is_left_to_the_gather() {
        for sql in [
            "SELECT a, b FROM t GROUP BY b",          // bare column
            "SELECT group_concat(b) FROM t",          // order-dependent aggregate
            "SELECT count(DISTINCT a) FROM t",        // distinct count
            "SELECT row_number() OVER () FROM t",     // window
            "SELECT a FROM t LIMIT (SELECT 1)",       // computed limit
            "SELECT * FROM t ORDER BY 2",             // position after a wildcard
            "SELECT a FROM t UNION SELECT id FROM u", // compound
            "SELECT a FROM (SELECT a FROM t)",        // derived table
        ] {
            assert_eq!(split_of(sql), None, "{sql}");
        }
    }

    #[test]
    fn gathered_tables_are_scanned_with_their_own_conditions() {
        let cat = catalog();
        let f = scan_filters(
            &cat,
            &select("SELECT * FROM t AS x JOIN u ON u.v > 2 WHERE x.a = ?1 AND x.a < u.v AND b = 'q'"),
        );
        assert_eq!(f.get("t").map(String::as_str), Some("(b = 'q') AND (a = ?1)"));
        assert_eq!(f.get("u").map(String::as_str), Some("(v > 2)"));
        // Not through outer joins, nor for a table named twice.
        assert!(scan_filters(&cat, &select("SELECT * FROM t LEFT JOIN u ON u.v > 2 WHERE t.a = 1")).is_empty());
        assert!(scan_filters(&cat, &select("SELECT * FROM t, t AS y WHERE t.a = 1")).is_empty());
    }

    #[test]
    fn tables_joined_on_their_keys_are_co_located() {
        let cat = catalog();
        assert!(co_located(&cat, &select("SELECT * FROM t JOIN u ON t.k = u.id")));
        assert!(co_located(&cat, &select("SELECT * FROM t, u, r WHERE u.id = t.k AND r.code = 'x'")));
        assert!(!co_located(&cat, &select("SELECT * FROM t JOIN u ON t.a = u.id")));
        assert!(!co_located(&cat, &select("SELECT * FROM t, u")));
        // Reference rows kept by an outer join against a sharded side would come once per shard.
        assert!(!co_located(&cat, &select("SELECT * FROM r LEFT JOIN t ON t.b = r.code")));
        assert!(!co_located(&cat, &select("SELECT * FROM t RIGHT JOIN r ON t.b = r.code")));
        assert!(!co_located(&cat, &select("SELECT * FROM t FULL JOIN r ON t.b = r.code")));
        assert!(co_located(&cat, &select("SELECT * FROM t LEFT JOIN r ON t.b = r.code")));
        assert!(co_located(&cat, &select("SELECT * FROM r RIGHT JOIN t ON t.b = r.code")));
        // Integer and text keys hash differently even when they compare equal.
        assert!(!co_located(&cat, &select("SELECT * FROM t JOIN w ON t.k = w.x")));
    }
}
