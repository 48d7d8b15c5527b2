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
//!   pass: `drsdb_storage`'s `sum` module); the index server loads them into a scratch SQLite
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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::ControlFlow;

use drsdb_common::order::{Collation, SortKey};
use drsdb_common::Value;
use sqlparser::ast::{
    Distinct, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, Ident, LimitClause, OrderByExpr,
    OrderByKind, OrderBySort, Query, Select, SelectItem, SetExpr, TableFactor, UnaryOperator, Value as SqlValue, Visit,
    VisitMut, Visitor, VisitorMut,
};

use crate::catalog::{Catalog, Table};
use crate::planner::last_name;

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

/// True when every output row of `select` is built from rows of one
/// shard: its sharded tables (all in its FROM clause) are joined on their
/// whole shard keys, position by position, by equalities ANDed in WHERE or
/// in ON clauses, and their keys compare alike (same affinity class and
/// collation, so equal keys hash alike). A reference table joins anything.
pub fn co_located(catalog: &Catalog, select: &Select) -> bool {
    let Some(scope) = Scope::of(catalog, select) else { return false };
    if !outer_joins_keep_rows_once(&scope, select) {
        return false;
    }
    let sharded: Vec<usize> = (0..scope.tables.len()).filter(|i| scope.tables[*i].1.is_sharded()).collect();
    let [first, rest @ ..] = sharded.as_slice() else { return true };
    if rest.is_empty() {
        return true;
    }
    let signature = |t: &Table| -> Option<Vec<(u8, Collation)>> {
        let key = t.key_columns()?;
        Some(key.iter().map(|c| (affinity_class(&t.columns[*c].decl_type), t.columns[*c].collation)).collect())
    };
    let Some(expected) = signature(scope.tables[*first].1) else { return false };
    if rest.iter().any(|i| signature(scope.tables[*i].1).as_ref() != Some(&expected)) {
        return false;
    }
    // For each key position, which sharded tables are joined (union-find).
    let mut parent: Vec<Vec<usize>> = vec![(0..scope.tables.len()).collect(); expected.len()];
    fn root(p: &mut [usize], mut i: usize) -> usize {
        while p[i] != i {
            i = p[i];
        }
        i
    }
    let mut conditions: Vec<&Expr> = select.selection.iter().collect();
    for twj in &select.from {
        for j in &twj.joins {
            if let Some(sqlparser::ast::JoinConstraint::On(e)) = join_constraint(&j.join_operator) {
                conditions.push(e);
            }
        }
    }
    let key_position = |r: &ColumnRef| -> Option<usize> {
        let key = scope.tables[r.table].1.key_columns()?;
        key.iter().position(|c| Some(*c) == r.column)
    };
    for e in conjuncts(conditions) {
        if let Expr::BinaryOp { left, op: sqlparser::ast::BinaryOperator::Eq, right } = e {
            let (Some(a), Some(b)) = (scope.resolve(left), scope.resolve(right)) else { continue };
            if let (Some(p), Some(q)) = (key_position(&a), key_position(&b)) {
                if p == q && a.table != b.table {
                    let (x, y) = (root(&mut parent[p], a.table), root(&mut parent[p], b.table));
                    parent[p][x] = y;
                }
            }
        }
    }
    parent.iter_mut().all(|p| {
        let r = root(p, *first);
        rest.iter().all(|i| root(p, *i) == r)
    })
}

/// For a query gathered at the index server: the WHERE (and inner-join ON)
/// conjuncts of `select` that read only one table, by table (lower-cased),
/// ANDed, for the shards to apply while scanning it. Only when every join
/// is inner (a filter on an outer join's side would change which rows get
/// NULL partners) and every FROM item is a table named once.
pub fn scan_filters(catalog: &Catalog, select: &Select) -> BTreeMap<String, String> {
    use sqlparser::ast::{JoinConstraint as C, JoinOperator as J};
    let mut filters: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let Some(scope) = Scope::of(catalog, select) else { return BTreeMap::new() };
    let mut conditions: Vec<&Expr> = select.selection.iter().collect();
    for j in select.from.iter().flat_map(|twj| &twj.joins) {
        match &j.join_operator {
            J::Join(C::On(e)) | J::Inner(C::On(e)) => conditions.push(e),
            J::Join(C::None) | J::Inner(C::None) | J::CrossJoin(C::None) => {}
            _ => return BTreeMap::new(),
        }
    }
    let named = |t: &Table| scope.tables.iter().filter(|(_, u)| u.name.eq_ignore_ascii_case(&t.name)).count();
    for e in conjuncts(conditions) {
        let mut tables = BTreeSet::new();
        let mut plain = true;
        each_outer_expr(e, |x| {
            match x {
                Expr::Identifier(_) | Expr::CompoundIdentifier(_) => match scope.resolve(x) {
                    Some(c) => {
                        tables.insert(c.table);
                    }
                    None => plain = false,
                },
                Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => plain = false,
                _ => {}
            }
            ControlFlow::Continue(())
        });
        if let (true, [t]) = (plain, tables.into_iter().collect::<Vec<_>>().as_slice()) {
            let table = scope.tables[*t].1;
            if table.is_sharded() && named(table) == 1 {
                // The shard scans the table by its own name.
                let text = to_sql(unqualified(e.clone(), &scope.tables[*t].0));
                filters.entry(table.name.to_ascii_lowercase()).or_default().push(format!("({text})"));
            }
        }
    }
    filters.into_iter().map(|(t, f)| (t, f.join(" AND "))).collect()
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

/// `e` with the qualifier `qualifier.` dropped from its column references.
fn unqualified(mut e: Expr, qualifier: &str) -> Expr {
    struct Strip<'a>(&'a str);
    impl VisitorMut for Strip<'_> {
        type Break = ();
        fn post_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
            if let Expr::CompoundIdentifier(parts) = e {
                if parts.len() == 2 && parts[0].value.eq_ignore_ascii_case(self.0) {
                    *e = Expr::Identifier(parts[1].clone());
                }
            }
            ControlFlow::Continue(())
        }
    }
    let _ = VisitMut::visit(&mut e, &mut Strip(qualifier));
    e
}

/// True unless an outer join preserves the rows of reference tables only
/// against a side holding sharded tables: each shard would then add the
/// reference rows it finds no partner for, once per shard. (FROM items
/// join left to right, commas included; `scope` lists them in order.)
fn outer_joins_keep_rows_once(scope: &Scope<'_>, select: &Select) -> bool {
    use sqlparser::ast::JoinOperator as J;
    let mut position = 0;
    let mut left_sharded = false;
    for twj in &select.from {
        left_sharded |= scope.tables[position].1.is_sharded();
        position += 1;
        for j in &twj.joins {
            let right_sharded = scope.tables[position].1.is_sharded();
            position += 1;
            let fine = match &j.join_operator {
                J::Join(_) | J::Inner(_) | J::CrossJoin(_) => true,
                J::Left(_) | J::LeftOuter(_) => left_sharded || !right_sharded,
                J::Right(_) | J::RightOuter(_) => right_sharded || !left_sharded,
                J::FullOuter(_) => left_sharded == right_sharded,
                _ => false,
            };
            if !fine {
                return false;
            }
            left_sharded |= right_sharded;
        }
    }
    true
}

fn join_constraint(op: &sqlparser::ast::JoinOperator) -> Option<&sqlparser::ast::JoinConstraint> {
    use sqlparser::ast::JoinOperator as J;
    match op {
        J::Join(c) | J::Inner(c) | J::Left(c) | J::LeftOuter(c) | J::Right(c) | J::RightOuter(c) | J::FullOuter(c) => {
            Some(c)
        }
        _ => None,
    }
}

/// SQLite's affinity of a declared type, as far as hashing goes: 0 for
/// numeric (INTEGER, REAL, NUMERIC), 1 for TEXT, 2 for BLOB (none).
fn affinity_class(decl_type: &str) -> u8 {
    let t = decl_type.to_ascii_uppercase();
    if t.contains("INT") {
        0
    } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
        1
    } else if t.is_empty() || t.contains("BLOB") {
        2
    } else {
        0
    }
}

/// The tables of a FROM clause, with the names that qualify their columns.
struct Scope<'a> {
    tables: Vec<(String, &'a Table)>,
}

/// A column reference resolved against a [`Scope`].
struct ColumnRef {
    /// Its table's position in the scope.
    table: usize,
    /// The column as declared; `None` for the rowid.
    column: Option<usize>,
}

impl<'a> Scope<'a> {
    fn of(catalog: &'a Catalog, select: &Select) -> Option<Scope<'a>> {
        let mut tables = Vec::new();
        for twj in &select.from {
            for factor in std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation)) {
                let TableFactor::Table { name, alias, args: None, .. } = factor else { return None };
                let table = catalog.table(&last_name(name))?;
                let qualifier = alias.as_ref().map(|a| a.name.value.clone()).unwrap_or_else(|| table.name.clone());
                tables.push((qualifier, table));
            }
        }
        Some(Scope { tables })
    }

    fn resolve(&self, e: &Expr) -> Option<ColumnRef> {
        if let Expr::Nested(x) = e {
            return self.resolve(x);
        }
        let find = |table: usize, t: &Table, name: &str| {
            let column = t.column(name);
            let is_rowid =
                t.rowid_alias.is_some() && ["rowid", "oid", "_rowid_"].iter().any(|r| r.eq_ignore_ascii_case(name));
            (column.is_some() || is_rowid).then_some(ColumnRef { table, column })
        };
        match e {
            Expr::Identifier(i) => {
                let mut found = self.tables.iter().enumerate().filter_map(|(k, (_, t))| find(k, t, &i.value));
                let first = found.next()?;
                found.next().is_none().then_some(first)
            }
            Expr::CompoundIdentifier(parts) if parts.len() == 2 => {
                let (k, (_, t)) =
                    self.tables.iter().enumerate().find(|(_, (q, _))| q.eq_ignore_ascii_case(&parts[0].value))?;
                find(k, t, &parts[1].value)
            }
            _ => None,
        }
    }

    /// The collation SQLite gives `e` when it sorts or compares by it: an
    /// explicit COLLATE, else that of the column it is (through CAST,
    /// unary plus and parentheses), else BINARY.
    fn collation(&self, e: &Expr) -> Collation {
        match e {
            Expr::Collate { collation, .. } => Collation::from_name(&last_name(collation)),
            Expr::Nested(x) | Expr::Cast { expr: x, .. } | Expr::UnaryOp { op: UnaryOperator::Plus, expr: x } => {
                self.collation(x)
            }
            Expr::Identifier(_) | Expr::CompoundIdentifier(_) => match self.resolve(e) {
                Some(ColumnRef { table, column: Some(c) }) => self.tables[table].1.columns[c].collation,
                _ => Collation::Binary,
            },
            Expr::BinaryOp { left, right, .. } => {
                if has_collate(left) {
                    self.collation(left)
                } else if has_collate(right) {
                    self.collation(right)
                } else {
                    Collation::Binary
                }
            }
            Expr::Function(f) => {
                args(f).into_iter().flatten().find(|a| has_collate(a)).map_or(Collation::Binary, |a| self.collation(a))
            }
            // As SQLite: the operand's explicit collation, else that of the
            // first of WHEN, THEN, …, ELSE with one (even a WHEN's).
            Expr::Case { operand, conditions, else_result, .. } => operand
                .as_deref()
                .into_iter()
                .chain(conditions.iter().flat_map(|c| [&c.condition, &c.result]))
                .chain(else_result.as_deref())
                .find(|p| has_collate(p))
                .map_or(Collation::Binary, |p| self.collation(p)),
            _ => Collation::Binary,
        }
    }

    /// True when every column `e` names resolves here and it holds no subquery.
    fn computable(&self, e: &Expr) -> bool {
        let mut ok = true;
        each_outer_expr(e, |x| {
            match x {
                Expr::Identifier(_) | Expr::CompoundIdentifier(_) if self.resolve(x).is_none() => ok = false,
                Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => ok = false,
                _ => {}
            }
            ControlFlow::Continue(())
        });
        ok
    }

    fn same(&self, a: &Expr, b: &Expr) -> bool {
        match (self.resolve(a), self.resolve(b)) {
            (Some(x), Some(y)) => x.table == y.table && x.column == y.column,
            _ => a.to_string() == b.to_string(),
        }
    }
}

struct Cx<'a> {
    scope: Scope<'a>,
    source: &'a str,
}

impl Cx<'_> {
    /// The name SQLite gives an output column: its alias, the declared
    /// name of the column it is, or the expression's text as written.
    fn output_name(&self, select: &Select, item: &SelectItem) -> Option<String> {
        if let SelectItem::UnnamedExpr(e) = item {
            if self.scope.resolve(e).is_none() {
                let texts = item_texts(self.source, select).filter(|t| t.len() == select.projection.len());
                let position = select.projection.iter().position(|i| std::ptr::eq(i, item));
                if let (Some(texts), Some(k)) = (texts, position) {
                    return Some(texts[k].clone());
                }
            }
        }
        match item {
            SelectItem::ExprWithAlias { alias, .. } => Some(alias.value.clone()),
            SelectItem::UnnamedExpr(e) => match self.scope.resolve(e) {
                Some(ColumnRef { table, column: Some(c) }) => Some(self.scope.tables[table].1.columns[c].name.clone()),
                Some(ColumnRef { column: None, .. }) => match e {
                    Expr::Identifier(i) => Some(i.value.clone()),
                    Expr::CompoundIdentifier(p) => p.last().map(|i| i.value.clone()),
                    _ => None,
                },
                None => Some(e.to_string()),
            },
            _ => None,
        }
    }

    /// Items with their SQLite names made explicit, so that a rewritten
    /// query keeps them; wildcards and column references stay as they are.
    fn named_items(&self, select: &Select) -> Vec<SelectItem> {
        select
            .projection
            .iter()
            .map(|item| match item {
                SelectItem::UnnamedExpr(e) if self.scope.resolve(e).is_none() => {
                    let name = self.output_name(select, item).unwrap_or_else(|| e.to_string());
                    SelectItem::ExprWithAlias { expr: e.clone(), alias: quoted(&name) }
                }
                other => other.clone(),
            })
            .collect()
    }

    /// ORDER BY and/or LIMIT without aggregates: top-N per shard, merged.
    fn merge(
        &self,
        query: &Query,
        select: &Select,
        order_by: &[OrderByExpr],
        offset: u64,
        limit: Option<u64>,
    ) -> Option<Split> {
        let mut hidden = Vec::new();
        let mut keys = Vec::new();
        let mut shard_order = Vec::new();
        for (k, o) in order_by.iter().enumerate() {
            // `ORDER BY 2 COLLATE NOCASE` sorts result column 2 under NOCASE.
            let (term, collate) = match &o.expr {
                Expr::Collate { expr, collation } => (expr.as_ref(), Some(collation)),
                e => (e, None),
            };
            let expr = match (self.item_of(select, term), collate) {
                (Some(item), Some(collation)) => {
                    Expr::Collate { expr: Box::new(item.clone()), collation: collation.clone() }
                }
                (Some(item), None) => item.clone(),
                (None, _) if !is_ordinal(term) && self.scope.computable(&o.expr) => o.expr.clone(),
                (None, _) => return None,
            };
            if is_random(&expr) {
                return None;
            }
            let descending = match &o.options.sort {
                None | Some(OrderBySort::Asc) => false,
                Some(OrderBySort::Desc) => true,
                Some(_) => return None,
            };
            let collation = self.scope.collation(&expr);
            let nulls_first = o.options.nulls_first.unwrap_or(!descending);
            keys.push(SortKey { collation, descending, nulls_first });
            hidden.push(SelectItem::ExprWithAlias { expr, alias: quoted(&format!("_s{k}")) });
            shard_order.push(OrderByExpr {
                expr: Expr::value(SqlValue::Number((k + 1).to_string(), false)),
                options: o.options.clone(),
                with_fill: None,
            });
        }
        let mut shard_select = select.clone();
        shard_select.projection = hidden.into_iter().chain(self.named_items(select)).collect();
        let mut shard = query.clone();
        shard.body = Box::new(SetExpr::Select(Box::new(shard_select)));
        let ordered = !shard_order.is_empty();
        shard.order_by = ordered
            .then_some(sqlparser::ast::OrderBy { kind: OrderByKind::Expressions(shard_order), interpolate: None });
        shard.limit_clause = limit.map(|l| LimitClause::LimitOffset {
            limit: Some(Expr::value(SqlValue::Number(
                l.saturating_add(offset).min(i64::MAX as u64).to_string(),
                false,
            ))),
            offset: None,
            limit_by: Vec::new(),
        });
        Some(Split { shard_sql: to_sql(shard), combine: Combine::Merge { keys, offset, limit } })
    }

    /// The select item an ORDER BY term names by position or alias.
    fn item_of<'s>(&self, select: &'s Select, term: &Expr) -> Option<&'s Expr> {
        let expr_of = |item: &'s SelectItem| match item {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => Some(e),
            _ => None,
        };
        match strip_position(term) {
            Expr::Value(v) => {
                let SqlValue::Number(n, _) = &v.value else { return None };
                let k: usize = n.parse().ok().filter(|k| *k > 0)?;
                let items = select.projection.get(..k)?;
                // Positions after a wildcard are not known here.
                items.iter().map(expr_of).collect::<Option<Vec<_>>>()?;
                expr_of(&items[k - 1])
            }
            Expr::Identifier(id) => select.projection.iter().find_map(|item| match item {
                SelectItem::ExprWithAlias { expr, alias } if alias.value.eq_ignore_ascii_case(&id.value) => Some(expr),
                _ => None,
            }),
            _ => None,
        }
    }

    /// Aggregates, GROUP BY or DISTINCT: partial groups per shard, combined
    /// by a final query at the index server.
    fn aggregate(&self, query: &Query, select: &Select, order_by: &[OrderByExpr], distinct: bool) -> Option<Split> {
        let mut items = Vec::new();
        for item in &select.projection {
            match item {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                    items.push((e.clone(), self.output_name(select, item)?));
                }
                _ => return None,
            }
        }
        let aliases: Vec<String> = items.iter().map(|(_, n)| n.to_ascii_lowercase()).collect();
        let mut groups = Vec::new();
        match &select.group_by {
            GroupByExpr::Expressions(exprs, modifiers) if modifiers.is_empty() => {
                for e in exprs {
                    let resolved = match self.item_of(select, e) {
                        Some(item) if !matches!(e, Expr::Identifier(_)) || self.scope.resolve(e).is_none() => item,
                        None if is_ordinal(e) => return None,
                        _ => e,
                    };
                    groups.push(resolved.clone());
                }
            }
            _ => return None,
        }
        let grouped = !groups.is_empty();
        let has_aggregates = select.having.is_some() || items.iter().any(|(e, _)| has_aggregate(e));
        if !grouped && !has_aggregates {
            // DISTINCT alone groups by every output column.
            groups = items.iter().map(|(e, _)| e.clone()).collect();
        }
        if groups.iter().any(|g| !self.scope.computable(g) || has_aggregate(g)) {
            return None;
        }
        let mut rw = Rewriter {
            scope: &self.scope,
            groups: &groups,
            aliases: &aliases,
            partials: Vec::new(),
            combos: Vec::new(),
        };
        let mut final_items = Vec::new();
        for (e, name) in &items {
            final_items.push(format!("{} AS {}", rw.rewrite(e)?, quoted(name)));
        }
        let having = match &select.having {
            Some(h) => Some(rw.rewrite(h)?),
            None => None,
        };
        let mut final_order = Vec::new();
        for o in order_by {
            let keep = match &o.expr {
                Expr::Value(_) => true,
                Expr::Identifier(i) => aliases.contains(&i.value.to_ascii_lowercase()),
                _ => false,
            };
            let expr = if keep { o.expr.to_string() } else { rw.rewrite(&o.expr)? };
            let options =
                OrderByExpr { expr: Expr::value(SqlValue::Null), options: o.options.clone(), with_fill: None };
            final_order.push(format!("{expr}{}", options.to_string().trim_start_matches("NULL")));
        }
        let Rewriter { partials, combos, .. } = rw;

        // The shard query: group keys, then partial aggregates.
        let mut shard_items = Vec::new();
        let mut columns = Vec::new();
        for (i, g) in groups.iter().enumerate() {
            shard_items.push(SelectItem::ExprWithAlias { expr: g.clone(), alias: quoted(&format!("_g{i}")) });
            let decl_type = match g {
                Expr::Cast { data_type, .. } => Some(data_type.to_string()),
                _ => None,
            };
            columns.push(PartialColumn { collation: self.scope.collation(g), decl_type });
        }
        for (i, (p, collation)) in partials.iter().enumerate() {
            shard_items.push(SelectItem::ExprWithAlias { expr: p.clone(), alias: quoted(&format!("_p{i}")) });
            columns.push(PartialColumn { collation: *collation, decl_type: None });
        }
        let mut shard_select = select.clone();
        shard_select.projection = shard_items;
        shard_select.distinct = None;
        shard_select.having = None;
        // By position: a constant key would read as a position otherwise.
        let positions = (1..=groups.len()).map(|i| Expr::value(SqlValue::Number(i.to_string(), false))).collect();
        shard_select.group_by = GroupByExpr::Expressions(positions, Vec::new());
        let mut shard = query.clone();
        shard.body = Box::new(SetExpr::Select(Box::new(shard_select)));
        shard.order_by = None;
        shard.limit_clause = None;

        // The final query: combine partial groups, then the rest.
        let group_names: Vec<String> = (0..groups.len()).map(|i| format!("_g{i}")).collect();
        let mut inner: Vec<String> = groups.iter().enumerate().map(|(i, _)| format!("_c{i} AS _g{i}")).collect();
        inner.extend(combos.iter().enumerate().map(|(i, c)| format!("{c} AS _a{i}")));
        let mut sql = format!(
            "SELECT {}{} FROM (SELECT {} FROM partial{})",
            if distinct { "DISTINCT " } else { "" },
            final_items.join(", "),
            inner.join(", "),
            if grouped || !has_aggregates { format!(" GROUP BY {}", group_names.join(", ")) } else { String::new() }
        );
        let mut steps = Vec::new();
        if !combos.is_empty() {
            steps.push(format!("{} partial aggregate(s)", combos.len()));
        }
        if grouped {
            steps.push(format!("GROUP BY {} key(s)", groups.len()));
        }
        if let Some(h) = having {
            sql.push_str(&format!(" WHERE {h}"));
            steps.push("HAVING".into());
        }
        if distinct {
            steps.push("DISTINCT".into());
        }
        if !final_order.is_empty() {
            sql.push_str(&format!(" ORDER BY {}", final_order.join(", ")));
            steps.push("ORDER BY".into());
        }
        if let Some(l) = &query.limit_clause {
            sql.push_str(&format!(" {}", l.to_string().trim_start()));
            steps.push("LIMIT".into());
        }
        Some(Split { shard_sql: to_sql(shard), combine: Combine::Final { columns, sql, steps } })
    }
}

/// Replaces, in expressions the index server computes over partial groups,
/// group keys by `_gN` and aggregates by `_aN`, recording the partial
/// aggregates shards compute (`_pN`) and how `_aN` combines them.
struct Rewriter<'a> {
    scope: &'a Scope<'a>,
    groups: &'a [Expr],
    /// Output column names (lower-cased), which HAVING and ORDER BY may name.
    aliases: &'a [String],
    /// Per-shard aggregates and the collation of their column.
    partials: Vec<(Expr, Collation)>,
    /// Final expressions over `_pN`.
    combos: Vec<String>,
}

impl Rewriter<'_> {
    fn rewrite(&mut self, e: &Expr) -> Option<String> {
        let mut out = e.clone();
        match VisitMut::visit(&mut out, self) {
            ControlFlow::Continue(()) => Some(to_sql(out)),
            ControlFlow::Break(()) => None,
        }
    }

    fn partial(&mut self, sql: &str, arg: Option<&Expr>) -> Option<String> {
        let expr = drsdb_common::sql::parse_expr(&match arg {
            Some(a) => format!("{sql}({})", to_sql(a.clone())),
            None => format!("{sql}(*)"),
        })?;
        let collation = match (sql, arg) {
            ("min" | "max", Some(a)) => self.scope.collation(a),
            _ => Collation::Binary,
        };
        self.partials.push((expr, collation));
        Some(format!("_c{}", self.groups.len() + self.partials.len() - 1))
    }
}

impl VisitorMut for Rewriter<'_> {
    type Break = ();

    fn pre_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
        if let Some(i) = self.groups.iter().position(|g| self.scope.same(g, e)) {
            *e = Expr::Identifier(Ident::new(format!("_g{i}")));
            return ControlFlow::Continue(());
        }
        match e {
            Expr::Function(f) => {
                let Some(aggregate) = aggregate_of(f) else {
                    return if f.over.is_some() { ControlFlow::Break(()) } else { ControlFlow::Continue(()) };
                };
                let (name, arg) = match aggregate {
                    Aggregate::Combinable(name, arg) => (name, arg),
                    Aggregate::Other => return ControlFlow::Break(()),
                };
                let arg = arg.map(|a| *a);
                if arg.as_ref().is_some_and(|a| has_aggregate(a) || !self.scope.computable(a)) {
                    return ControlFlow::Break(());
                }
                let combo = match name {
                    "count" => self.partial("count", arg.as_ref()).map(|p| format!("sum({p})")),
                    "min" | "max" => self.partial(name, arg.as_ref()).map(|p| format!("{name}({p})")),
                    // Shards return their whole summation state, folded
                    // here as SQLite sums in one pass.
                    "sum" | "total" | "avg" => drsdb_sqlite::sum_finisher(name).and_then(|finisher| {
                        self.partial(drsdb_sqlite::SUM_STATE, arg.as_ref()).map(|p| format!("{finisher}({p})"))
                    }),
                    _ => None,
                };
                let Some(combo) = combo else { return ControlFlow::Break(()) };
                *e = Expr::Identifier(Ident::new(format!("_a{}", self.combos.len())));
                self.combos.push(combo);
                ControlFlow::Continue(())
            }
            Expr::Identifier(i)
                if self.aliases.contains(&i.value.to_ascii_lowercase())
                    && self.scope.resolve(&Expr::Identifier(i.clone())).is_none() =>
            {
                ControlFlow::Continue(())
            }
            // A column outside the group keys and aggregates, a subquery.
            Expr::Identifier(_)
            | Expr::CompoundIdentifier(_)
            | Expr::Subquery(_)
            | Expr::Exists { .. }
            | Expr::InSubquery { .. } => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        }
    }
}

/// An aggregate function call.
enum Aggregate {
    /// One whose partial results combine: the function and its argument
    /// (`None` for `count(*)`).
    Combinable(&'static str, Option<Box<Expr>>),
    /// One whose partial results do not combine (or a DISTINCT form that
    /// changes the answer).
    Other,
}

fn aggregate_of(f: &sqlparser::ast::Function) -> Option<Aggregate> {
    const OTHERS: [&str; 7] = [
        "group_concat",
        "string_agg",
        "json_group_array",
        "json_group_object",
        "jsonb_group_array",
        "jsonb_group_object",
        "median",
    ];
    let name = last_name(&f.name).to_ascii_lowercase();
    let FunctionArguments::List(list) = &f.args else {
        return OTHERS.contains(&name.as_str()).then_some(Aggregate::Other);
    };
    let distinct = matches!(list.duplicate_treatment, Some(sqlparser::ast::DuplicateTreatment::Distinct));
    let plain = f.filter.is_none() && f.within_group.is_empty() && list.clauses.is_empty() && f.over.is_none();
    let arg = match list.args.as_slice() {
        [] => None,
        [FunctionArg::Unnamed(FunctionArgExpr::Expr(e))] => Some(e.clone()),
        [FunctionArg::Unnamed(FunctionArgExpr::Wildcard)] if name == "count" => None,
        _ if OTHERS.contains(&name.as_str()) => return Some(Aggregate::Other),
        // min(a, b) and max(a, b) are scalar functions.
        _ => return None,
    };
    let known = match name.as_str() {
        "count" => Some("count"),
        "sum" => Some("sum"),
        "total" => Some("total"),
        "avg" => Some("avg"),
        "min" if arg.is_some() => Some("min"),
        "max" if arg.is_some() => Some("max"),
        other if OTHERS.contains(&other) => return Some(Aggregate::Other),
        _ => None,
    }?;
    if f.over.is_some() {
        // A window function, not an aggregate of the query.
        return Some(Aggregate::Other);
    }
    let keeps_answer = !distinct || matches!(known, "min" | "max");
    if !plain || !keeps_answer || (arg.is_none() && known != "count") {
        return Some(Aggregate::Other);
    }
    Some(Aggregate::Combinable(known, arg.map(Box::new)))
}

/// True when `e` calls an aggregate function outside any subquery.
fn has_aggregate(e: &Expr) -> bool {
    let mut found = false;
    each_outer_expr(e, |x| {
        found |= matches!(x, Expr::Function(f) if f.over.is_none() && aggregate_of(f).is_some());
        ControlFlow::Continue(())
    });
    found
}

/// True when `e` holds an explicit COLLATE.
fn has_collate(e: &Expr) -> bool {
    let mut found = false;
    each_outer_expr(e, |x| {
        found |= matches!(x, Expr::Collate { .. });
        ControlFlow::Continue(())
    });
    found
}

/// True when `e` draws random values (computed twice, they would differ).
fn is_random(e: &Expr) -> bool {
    let mut found = false;
    each_expr(e, |x| {
        if let Expr::Function(f) = x {
            let name = last_name(&f.name).to_ascii_lowercase();
            found |= matches!(name.as_str(), "random" | "randomblob" | "ulid");
        }
        ControlFlow::Continue(())
    });
    found
}

fn has_window(query: &Query) -> bool {
    let mut found = false;
    each_expr(query, |x| {
        found |= matches!(x, Expr::Function(f) if f.over.is_some());
        ControlFlow::Continue(())
    });
    found
}

/// A function's plain arguments.
fn args(f: &sqlparser::ast::Function) -> Option<Vec<&Expr>> {
    let FunctionArguments::List(list) = &f.args else { return None };
    Some(
        list.args
            .iter()
            .filter_map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
                _ => None,
            })
            .collect(),
    )
}

/// An integer literal, or a parameter bound to an integer.
fn integer(e: &Expr, params: &[Value]) -> Option<i64> {
    match e {
        Expr::Value(v) => match &v.value {
            SqlValue::Number(n, _) => n.parse().ok(),
            SqlValue::Placeholder(p) => match params.get(p.strip_prefix('?')?.parse::<usize>().ok()?.checked_sub(1)?) {
                Some(Value::Integer(i)) => Some(*i),
                _ => None,
            },
            _ => None,
        },
        Expr::UnaryOp { op: UnaryOperator::Minus, expr } => integer(expr, params).and_then(i64::checked_neg),
        Expr::Nested(x) | Expr::UnaryOp { op: UnaryOperator::Plus, expr: x } => integer(x, params),
        _ => None,
    }
}

/// OFFSET and LIMIT as numbers; `None` when they are not integer literals
/// or integer parameters. A negative LIMIT keeps every row, a negative
/// OFFSET skips none.
fn limits(clause: Option<&LimitClause>, params: &[Value]) -> Option<(u64, Option<u64>)> {
    let (offset, limit) = match clause {
        None => return Some((0, None)),
        Some(LimitClause::LimitOffset { limit, offset, limit_by }) => {
            if !limit_by.is_empty() {
                return None;
            }
            let limit = match limit {
                Some(l) => Some(integer(l, params)?),
                None => None,
            };
            let offset = match offset {
                Some(o) => integer(&o.value, params)?,
                None => 0,
            };
            (offset, limit)
        }
        Some(LimitClause::OffsetCommaLimit { offset, limit }) => {
            (integer(offset, params)?, Some(integer(limit, params)?))
        }
    };
    Some((offset.max(0) as u64, limit.and_then(|l| u64::try_from(l).ok())))
}

/// The text of each item of `select`'s result list as written in
/// `source` (SQLite names unaliased expressions by it): the tokens from
/// SELECT (and DISTINCT or ALL) to the first top-level FROM or clause
/// keyword, split at top-level commas.
fn item_texts(source: &str, select: &Select) -> Option<Vec<String>> {
    use sqlparser::keywords::Keyword;
    use sqlparser::tokenizer::{Token, Tokenizer};
    let tokens = Tokenizer::new(&sqlparser::dialect::SQLiteDialect {}, source).tokenize_with_location().ok()?;
    let start = select.select_token.0.span.start;
    let first = tokens.iter().position(|t| t.span.start == start)? + 1;
    let offsets = drsdb_common::sql::Offsets::new(source);
    let mut texts = Vec::new();
    let (mut depth, mut from, mut to, mut started) = (0usize, None, None, false);
    let mut flush = |from: &mut Option<usize>, to: &mut Option<usize>| -> Option<()> {
        texts.push(source.get(from.take()?..to.take()?)?.trim().to_string());
        Some(())
    };
    for t in tokens.iter().skip(first) {
        let leading = !std::mem::replace(&mut started, true);
        match &t.token {
            Token::Whitespace(_) => {
                started = !leading;
                continue;
            }
            Token::Word(w) if leading && matches!(w.keyword, Keyword::DISTINCT | Keyword::ALL) => continue,
            Token::Word(w)
                if depth == 0
                    && matches!(
                        w.keyword,
                        Keyword::FROM
                            | Keyword::WHERE
                            | Keyword::GROUP
                            | Keyword::HAVING
                            | Keyword::ORDER
                            | Keyword::LIMIT
                            | Keyword::WINDOW
                            | Keyword::UNION
                            | Keyword::INTERSECT
                            | Keyword::EXCEPT
                    ) =>
            {
                break
            }
            Token::SemiColon | Token::RParen if depth == 0 => break,
            Token::Comma if depth == 0 => {
                flush(&mut from, &mut to)?;
                continue;
            }
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            _ => {}
        }
        from.get_or_insert(offsets.byte(t.span.start));
        to = Some(offsets.byte(t.span.end));
    }
    flush(&mut from, &mut to)?;
    Some(texts)
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

/// An ORDER BY or GROUP BY term without the parentheses and unary plus
/// SQLite looks through when it reads a position.
fn strip_position(e: &Expr) -> &Expr {
    match e {
        Expr::Nested(x) | Expr::UnaryOp { op: UnaryOperator::Plus, expr: x } => strip_position(x),
        e => e,
    }
}

/// True for an integer literal, signed or in parentheses: a position in
/// an ORDER BY or GROUP BY (or, negative or zero, an error there).
fn is_ordinal(e: &Expr) -> bool {
    match strip_position(e) {
        Expr::UnaryOp { op: UnaryOperator::Minus, expr } => is_ordinal(expr),
        Expr::Value(v) => matches!(&v.value, SqlValue::Number(n, _) if n.parse::<i64>().is_ok()),
        _ => false,
    }
}

/// A double-quoted identifier.
fn quoted(name: &str) -> Ident {
    Ident::with_quote('"', name)
}

/// Calls `f` on every expression of `node`, subqueries included.
fn each_expr<V: Visit>(node: &V, f: impl FnMut(&Expr) -> ControlFlow<()>) {
    let _ = node.visit(&mut ExprVisitor { f, depth: 0, outer_only: false });
}

/// Calls `f` on every expression of `e` outside its subqueries.
fn each_outer_expr(e: &Expr, f: impl FnMut(&Expr) -> ControlFlow<()>) {
    let _ = e.visit(&mut ExprVisitor { f, depth: 0, outer_only: true });
}

struct ExprVisitor<F> {
    f: F,
    /// Subqueries entered.
    depth: usize,
    outer_only: bool,
}

impl<F: FnMut(&Expr) -> ControlFlow<()>> Visitor for ExprVisitor<F> {
    type Break = ();
    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if self.outer_only && self.depth > 0 {
            return ControlFlow::Continue(());
        }
        (self.f)(e)
    }
    fn pre_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
        self.depth += 1;
        ControlFlow::Continue(())
    }
    fn post_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

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
