//! Co-location analysis: whether every output row of a query is built from
//! rows of one shard (its sharded tables joined on their whole shard
//! keys), the conditions each gathered table can apply on its shards, and
//! the query's scope: which table a column belongs to, its declared type
//! and collation, and what a shard can compute.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;

use drsdb_common::affinity::Affinity;
use drsdb_common::order::Collation;
use sqlparser::ast::{Expr, Select, TableFactor, UnaryOperator, VisitMut, VisitorMut};

use crate::catalog::{Catalog, Table};
use crate::planner::last_name;

use super::*;

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

/// `e` with the qualifier `qualifier.` dropped from its column references.
pub(super) fn unqualified(mut e: Expr, qualifier: &str) -> Expr {
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
pub(super) fn outer_joins_keep_rows_once(scope: &Scope<'_>, select: &Select) -> bool {
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

pub(super) fn join_constraint(op: &sqlparser::ast::JoinOperator) -> Option<&sqlparser::ast::JoinConstraint> {
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
pub(super) fn affinity_class(decl_type: &str) -> u8 {
    match Affinity::of(decl_type) {
        Affinity::Integer | Affinity::Real | Affinity::Numeric => 0,
        Affinity::Text => 1,
        Affinity::Blob => 2,
    }
}

/// The tables of a FROM clause, with the names that qualify their columns.
pub(super) struct Scope<'a> {
    pub(super) tables: Vec<(String, &'a Table)>,
}

/// A column reference resolved against a [`Scope`].
pub(super) struct ColumnRef {
    /// Its table's position in the scope.
    pub(super) table: usize,
    /// The column as declared; `None` for the rowid.
    pub(super) column: Option<usize>,
}

impl<'a> Scope<'a> {
    pub(super) fn of(catalog: &'a Catalog, select: &Select) -> Option<Scope<'a>> {
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

    pub(super) fn resolve(&self, e: &Expr) -> Option<ColumnRef> {
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
    pub(super) fn collation(&self, e: &Expr) -> Collation {
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
    pub(super) fn computable(&self, e: &Expr) -> bool {
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

    pub(super) fn same(&self, a: &Expr, b: &Expr) -> bool {
        match (self.resolve(a), self.resolve(b)) {
            (Some(x), Some(y)) => x.table == y.table && x.column == y.column,
            _ => a.to_string() == b.to_string(),
        }
    }
}
