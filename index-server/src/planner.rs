//! The distributed planner: where a statement runs, as a [`Plan`] that
//! `EXPLAIN` prints as a tree.
//!
//! Planning is a function of the catalog, the shard count, the statement
//! and its parameters (a shard key written as an expression is evaluated
//! by an in-process SQLite, `keys`); it does no I/O. The executor carries
//! plans out.
//!
//! What the planner knows so far:
//! - with one shard, everything runs there unchanged;
//! - a statement that reads no sharded table runs on one shard (reference
//!   tables are complete on every shard);
//! - a query or UPDATE/DELETE whose only sharded table is pinned to one key
//!   by its WHERE clause (`key = constant`, ANDed) runs on that key's shard;
//! - UPDATE/DELETE of one sharded table that read no other sharded table
//!   run on every shard, each changing its own rows;
//! - INSERT computes its rows at the index server (VALUES there, a SELECT
//!   through the read planner), assigns rowids and missing integer keys,
//!   and sends each shard its rows;
//! - a query whose sharded tables all sit in its FROM clause, joined on
//!   their shard keys (`pushdown::co_located`), is split by `pushdown`:
//!   each shard runs a part, the index server concatenates, merges or
//!   combines the answers;
//! - every other query gathers the rows of the sharded tables it reads
//!   into a scratch SQLite database at the index server and runs there:
//!   slow for big tables, always SQLite's answer. With inner joins only,
//!   the shards apply the conditions that read one table while scanning
//!   it (`pushdown::scan_filters`). So does a query that
//!   sqlparser cannot parse (SQLite syntax it lacks), with every sharded
//!   table it names.
//!
//! A concatenation or merge planned with `Context::direct` is combined by
//! the client from the storage servers' answers (direct streaming). A read
//! pinned to one shard by placeholders (`WHERE id = ?`), or any read on a
//! one-shard cluster, planned with `Context::routes` carries the
//! `KeyRoute` that picks its shard from its parameters: the client then
//! runs it again with other parameters on that shard itself.
//!
//! Not yet: hash joins, writes whose subqueries read other sharded
//! tables, updates of shard keys.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::ControlFlow;

use drsdb_common::shard::{self, KeyRoute};
use drsdb_common::sql::{Kind, ParseError};
use drsdb_common::{Error, GroupId, Result};
use sqlparser::ast::{
    AssignmentTarget, BinaryOperator, Expr, FromTable, ObjectName, ObjectNamePart, Query, SetExpr, Statement,
    TableFactor, TableObject, Visit, Visitor,
};

use crate::catalog::{Catalog, Table};
use crate::keys::{self, Keys};
use crate::pushdown::{self, Combine, Split};

/// Where a statement's rows come from before an INSERT splits them.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// `DEFAULT VALUES`: one row of defaults.
    Defaults,
    /// A query that reads no table, computed at the index server.
    Local(String),
    /// A query planned like any other read.
    Query(String, Box<Plan>),
}

/// How one statement runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// The statement runs unchanged on one shard.
    Single {
        /// The shard's group.
        group: GroupId,
        /// Why one shard answers for all.
        why: String,
        /// For a read whose shard follows from its parameters alone (the
        /// shard key pinned to placeholders), when the client asked for
        /// routes: how other parameters pick the shard.
        route: Option<KeyRoute>,
    },
    /// A write runs unchanged on every shard, each applying it to its own
    /// rows (or, for a reference table, to its copy); counts add up.
    Broadcast {
        /// Every shard.
        groups: Vec<GroupId>,
        /// True when every shard must compute identical values (reference
        /// tables); otherwise each shard gets its own random seed.
        same_seed: bool,
    },
    /// Every shard runs its part of a query; their answers are combined
    /// (`pushdown`) by the index server or, when `direct`, by the client.
    Scatter {
        /// Every shard.
        groups: Vec<GroupId>,
        /// The shards' part and how answers combine.
        split: Split,
        /// The client reads the shards' answers from the storage servers
        /// with signed tickets and combines them (only for concatenation
        /// and ordered merge).
        direct: bool,
    },
    /// The rows of `tables` are gathered from every shard, and those of
    /// `copies` from one, into a scratch database at the index server,
    /// where the statement runs.
    Gather {
        /// The sharded tables read, lower-cased.
        tables: Vec<String>,
        /// The reference tables read, lower-cased.
        copies: Vec<String>,
        /// Conditions the shards apply while scanning a table, by table.
        filters: BTreeMap<String, String>,
        /// Every shard.
        groups: Vec<GroupId>,
    },
    /// An INSERT whose rows are computed first, then split by shard key.
    Insert {
        /// The target table.
        table: String,
        /// Where the rows come from.
        source: Source,
    },
    /// A schema change on every shard, as one transaction.
    Schema {
        /// Every shard.
        groups: Vec<GroupId>,
        /// For CREATE TABLE: the table, and whether it is a reference table.
        creates: Option<(String, bool)>,
    },
}

impl Plan {
    /// A statement for one shard, not routed by the client.
    fn single(group: GroupId, why: impl Into<String>) -> Plan {
        Plan::Single { group, why: why.into(), route: None }
    }

    fn fmt_tree(&self, f: &mut fmt::Formatter<'_>, depth: usize) -> fmt::Result {
        let pad = "  ".repeat(depth);
        match self {
            Plan::Single { group, why, route } => {
                writeln!(f, "{pad}Single shard (group {group}): {why}")?;
                match route {
                    Some(r) if r.positions.is_empty() => writeln!(f, "{pad}  Routed by the client (one shard)")?,
                    Some(r) => {
                        let params: Vec<String> = r.positions.iter().map(|p| format!("?{}", p + 1)).collect();
                        writeln!(f, "{pad}  Routed by the client on {} (signed route)", params.join(", "))?;
                    }
                    None => {}
                }
                Ok(())
            }
            Plan::Broadcast { groups, same_seed } => {
                let what = if *same_seed { "identical copies" } else { "each shard its own rows" };
                writeln!(f, "{pad}Broadcast to {} shards ({what})", groups.len())
            }
            Plan::Scatter { groups, split, direct } => {
                writeln!(f, "{pad}{}", split.combine)?;
                if let Combine::Final { sql, .. } = &split.combine {
                    writeln!(f, "{pad}  Final query: {sql}")?;
                }
                if *direct {
                    writeln!(f, "{pad}  Stream from shards to client (signed tickets; combined by the client)")?;
                }
                writeln!(f, "{pad}  Shard query on {} shards: {}", groups.len(), split.shard_sql)
            }
            Plan::Gather { tables, copies, filters, groups } => {
                writeln!(f, "{pad}Run at index server over gathered rows")?;
                for t in tables {
                    match filters.get(t) {
                        Some(w) => writeln!(f, "{pad}  Scan {t} on {} shards where {w}", groups.len())?,
                        None => writeln!(f, "{pad}  Scan {t} on {} shards", groups.len())?,
                    }
                }
                for t in copies {
                    writeln!(f, "{pad}  Scan {t} on one shard")?;
                }
                Ok(())
            }
            Plan::Insert { table, source } => {
                writeln!(f, "{pad}Insert into {table}, rows placed by the index server")?;
                match source {
                    Source::Defaults => writeln!(f, "{pad}  Default values"),
                    Source::Local(_) => writeln!(f, "{pad}  Values computed at index server"),
                    Source::Query(_, plan) => plan.fmt_tree(f, depth + 1),
                }
            }
            Plan::Schema { groups, creates } => {
                let what = match creates {
                    Some((t, true)) => format!(", creates reference table {t}"),
                    Some((t, false)) => format!(", creates sharded table {t}"),
                    None => String::new(),
                };
                writeln!(f, "{pad}Schema change on {} shards{what}", groups.len())
            }
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_tree(f, 0)
    }
}

/// What the planner needs to know about the cluster.
pub struct Context<'a> {
    /// The schema.
    pub catalog: &'a Catalog,
    /// The number of data shards.
    pub shards: usize,
    /// Evaluates shard keys written as expressions.
    pub keys: &'a Keys<'a>,
    /// Whether the client may read a query's shard results itself (direct
    /// streaming: a read outside a transaction, from a client that reads
    /// fragments, on a server with a ticket key). Never for writes: the
    /// rows an INSERT … SELECT reads are the index server's to place.
    pub direct: bool,
    /// Whether a read pinned to one shard by placeholders gets a
    /// [`KeyRoute`] (the client asked for routes, and may read directly).
    pub routes: bool,
}

impl Context<'_> {
    fn groups(&self) -> Vec<GroupId> {
        shard::shard_groups(self.shards)
    }

    fn sharded(&self, name: &str) -> Option<&Table> {
        self.catalog.table(name).filter(|t| t.is_sharded())
    }
}

/// Plans `sql` (placeholders numbered, see `number_placeholders`) of kind `kind`.
pub fn plan(cx: &Context<'_>, sql: &str, kind: Kind) -> Result<Plan> {
    let groups = cx.groups();
    if kind == Kind::Ddl {
        // A virtual table is a reference table: a full copy on every
        // shard, so that what it computes over all its rows (an FTS
        // rank, bm25()) is what SQLite computes.
        if let Some((name, module)) = drsdb_common::sql::virtual_table(sql) {
            if !drsdb_common::sql::VIRTUAL_TABLE_MODULES.contains(&module.as_str()) {
                return Err(Error::invalid(format!(
                    "virtual tables using {module} are not supported: drsdb replicates the modules {} (they keep \
                     their rows in the database); table-valued functions such as json_each need no CREATE",
                    drsdb_common::sql::VIRTUAL_TABLE_MODULES.join(", ")
                )));
            }
            return Ok(Plan::Schema { groups, creates: Some((name, true)) });
        }
        let stripped = drsdb_common::sql::strip_reference(sql);
        let reference = stripped.is_some();
        let statement = parse(stripped.as_deref().unwrap_or(sql)).ok();
        let creates = statement.as_ref().and_then(created_table).map(|t| (t, reference));
        return Ok(Plan::Schema { groups, creates });
    }
    if cx.shards == 1 {
        // Every read runs on the one shard, whatever its parameters.
        let route =
            (cx.routes && kind == Kind::Read).then(|| KeyRoute { positions: vec![], columns: vec![], shards: 1 });
        return Ok(Plan::Single { group: groups[0], why: "the only shard".into(), route });
    }
    let statement = match parse(sql) {
        Ok(s) => s,
        // SQLite syntax sqlparser lacks (`x IN table`, `NOT INDEXED`…): a
        // query gathers every sharded table it might name and runs as is.
        Err(ParseError::Unknown(_)) if kind == Kind::Read => {
            let refs = References::named_in(cx.catalog, sql)?;
            if refs.sharded.is_empty() {
                return Ok(Plan::single(groups[0], "reads no sharded table"));
            }
            return Ok(Plan::Gather {
                tables: refs.sharded.into_iter().collect(),
                copies: refs.reference.into_iter().collect(),
                filters: BTreeMap::new(),
                groups,
            });
        }
        Err(e) => return Err(e.into()),
    };
    let refs = References::of(cx.catalog, &statement);
    match &statement {
        Statement::Query(q) => plan_query(cx, q, &refs, Some(sql)),
        Statement::Insert(insert) => {
            let TableObject::TableName(name) = &insert.table else {
                return Err(Error::invalid("INSERT into a table function is not supported"));
            };
            let target = last_name(name);
            let table = match cx.catalog.table(&target) {
                Some(t) => t,
                None => return Err(Error::invalid(format!("no such table: {target}"))),
            };
            let source = match &insert.source {
                None => Source::Defaults,
                Some(q) => {
                    let source_refs = References::of(cx.catalog, &Statement::Query(q.clone()));
                    if source_refs.all.is_empty() {
                        Source::Local(pushdown::to_sql(q.clone()))
                    } else {
                        let text = pushdown::to_sql(q.clone());
                        let plan = plan_query(cx, q, &source_refs, Some(&text))?;
                        Source::Query(text, Box::new(plan))
                    }
                }
            };
            if !table.is_sharded() && refs.sharded.is_empty() {
                return Ok(Plan::Broadcast { groups, same_seed: true });
            }
            if insert.on.is_some() && refs.occurrences > 1 {
                return Err(not_yet("an upsert whose values read tables"));
            }
            Ok(Plan::Insert { table: table.name.clone(), source })
        }
        Statement::Update(u) => {
            let TableFactor::Table { name, alias, .. } = &u.table.relation else {
                return Err(Error::invalid("UPDATE target is not a table"));
            };
            let target = last_name(name);
            let Some(table) = cx.catalog.table(&target) else {
                return Err(Error::invalid(format!("no such table: {target}")));
            };
            for a in &u.assignments {
                let columns = match &a.target {
                    AssignmentTarget::ColumnName(c) => vec![c],
                    AssignmentTarget::Tuple(cs) => cs.iter().collect(),
                };
                for c in columns {
                    if is_key_column(table, &last_name(c)) {
                        return Err(Error::invalid(format!(
                            "cannot change column {} of {}: it is the table's shard key and the row would have to \
                             move to another shard; DELETE the row and INSERT it again instead",
                            last_name(c),
                            table.name
                        )));
                    }
                }
            }
            plan_change(cx, table, alias.as_ref().map(|a| a.name.value.clone()), u.selection.as_ref(), &refs)
        }
        Statement::Delete(d) => {
            let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &d.from;
            let Some(TableFactor::Table { name, alias, .. }) = from.first().map(|t| &t.relation) else {
                return Err(Error::invalid("DELETE target is not a table"));
            };
            let target = last_name(name);
            let Some(table) = cx.catalog.table(&target) else {
                return Err(Error::invalid(format!("no such table: {target}")));
            };
            plan_change(cx, table, alias.as_ref().map(|a| a.name.value.clone()), d.selection.as_ref(), &refs)
        }
        // Anything else that is not DDL (PRAGMA table_info and the like)
        // reads the schema, which every shard has.
        _ => Ok(Plan::single(groups[0], "statement reads no table rows")),
    }
}

fn not_yet(what: &str) -> Error {
    Error::invalid(format!(
        "{what} is not supported on a sharded cluster yet; run the read first and write its results, \
         or use a reference table"
    ))
}

fn parse(sql: &str) -> std::result::Result<Statement, ParseError> {
    drsdb_common::sql::parse_one(sql).map_err(|e| match e {
        ParseError::Unknown(m) => ParseError::Unknown(format!("drsdb cannot plan this statement across shards: {m}")),
        refused => refused,
    })
}

/// The table a `CREATE TABLE` statement creates.
fn created_table(statement: &Statement) -> Option<String> {
    match statement {
        Statement::CreateTable(c) => Some(last_name(&c.name)),
        _ => None,
    }
}

/// Plans a query whose text (placeholders numbered) is `source`.
fn plan_query(cx: &Context<'_>, q: &Query, refs: &References, source: Option<&str>) -> Result<Plan> {
    let groups = cx.groups();
    if refs.sharded.is_empty() {
        return Ok(Plan::single(groups[0], "reads no sharded table"));
    }
    if let (SetExpr::Select(select), Some(source)) = (q.body.as_ref(), source) {
        // Every sharded table read is in the FROM clause, once, and they are co-located.
        let sharded_in_from: Vec<(&Table, Option<String>)> = select
            .from
            .iter()
            .flat_map(|twj| std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation)))
            .filter_map(|f| match f {
                TableFactor::Table { name, alias, args: None, .. } => {
                    cx.sharded(&last_name(name)).map(|t| (t, alias.as_ref().map(|a| a.name.value.clone())))
                }
                _ => None,
            })
            .collect();
        let all_in_from = sharded_in_from.len() == refs.occurrences_of_sharded;
        if all_in_from && pushdown::co_located(cx.catalog, select) {
            for (table, alias) in &sharded_in_from {
                if let Some((group, route)) = pinned_shard(cx, table, alias.clone(), select.selection.as_ref())? {
                    let why = format!("key of {} pinned by WHERE", table.name);
                    return Ok(Plan::Single { group, why, route });
                }
            }
            if let Some(split) = pushdown::split(cx.catalog, source, q, cx.keys.params) {
                let direct = cx.direct && matches!(split.combine, Combine::Concat | Combine::Merge { .. });
                return Ok(Plan::Scatter { groups, split, direct });
            }
        }
        if all_in_from {
            return Ok(Plan::Gather {
                tables: refs.sharded.iter().cloned().collect(),
                copies: refs.reference.iter().cloned().collect(),
                filters: pushdown::scan_filters(cx.catalog, select),
                groups,
            });
        }
    }
    Ok(Plan::Gather {
        tables: refs.sharded.iter().cloned().collect(),
        copies: refs.reference.iter().cloned().collect(),
        filters: BTreeMap::new(),
        groups,
    })
}

/// UPDATE or DELETE of `table`.
fn plan_change(
    cx: &Context<'_>,
    table: &Table,
    alias: Option<String>,
    selection: Option<&Expr>,
    refs: &References,
) -> Result<Plan> {
    let groups = cx.groups();
    if !table.is_sharded() {
        if refs.sharded.is_empty() {
            return Ok(Plan::Broadcast { groups, same_seed: true });
        }
        return Err(not_yet("a change to a reference table that reads sharded tables"));
    }
    if refs.sharded.len() > 1 || refs.occurrences_of_sharded > 1 {
        return Err(not_yet("an UPDATE or DELETE that reads other sharded tables (or its own in a subquery)"));
    }
    if let Some((group, _)) = pinned_shard(cx, table, alias, selection)? {
        return Ok(Plan::single(group, format!("key of {} pinned by WHERE", table.name)));
    }
    Ok(Plan::Broadcast { groups, same_seed: false })
}

fn is_key_column(table: &Table, column: &str) -> bool {
    let is_rowid =
        ["rowid", "_rowid_", "oid"].iter().any(|a| a.eq_ignore_ascii_case(column)) && table.column(column).is_none();
    match table.key_columns() {
        Some(key) => key.iter().any(|i| table.columns[*i].name.eq_ignore_ascii_case(column)) || is_rowid,
        None => is_rowid && table.is_sharded(),
    }
}

/// The shard holding every row `selection` can match, when its top-level
/// ANDed terms set each shard key column equal to a constant; with it,
/// when those constants are all placeholders and `cx.routes`, the route
/// that finds the shard for any of their values.
fn pinned_shard(
    cx: &Context<'_>,
    table: &Table,
    alias: Option<String>,
    selection: Option<&Expr>,
) -> Result<Option<(GroupId, Option<KeyRoute>)>> {
    let (Some(key), Some(selection)) = (table.key_columns(), selection) else { return Ok(None) };
    let qualifier = alias.unwrap_or_else(|| table.name.clone());
    let mut pinned: BTreeMap<usize, &Expr> = BTreeMap::new();
    for e in pushdown::conjuncts(vec![selection]) {
        if let Expr::BinaryOp { left, op: BinaryOperator::Eq, right } = e {
            for (col, value) in [(left, right), (right, left)] {
                if let Some(c) = column_of(col, &qualifier).and_then(|c| table.column(&c)) {
                    if key.contains(&c) && is_constant(value) {
                        pinned.insert(c, value.as_ref());
                    }
                }
            }
        }
    }
    if pinned.len() != key.len() {
        return Ok(None);
    }
    let exprs: Vec<Expr> = key.iter().map(|c| pinned[c].clone()).collect();
    let hash = cx.keys.hash_exprs(table, &exprs)?;
    let positions: Option<Vec<usize>> = exprs.iter().map(keys::placeholder_index).collect();
    let route = positions
        .filter(|_| cx.routes)
        .and_then(|positions| Some(KeyRoute { positions, columns: table.key_types()?, shards: cx.shards }));
    Ok(Some((shard::shard_group(shard::shard_of(hash, cx.shards)), route)))
}

/// The column an expression names, if it is a bare or `qualifier.`-qualified column.
fn column_of(e: &Expr, qualifier: &str) -> Option<String> {
    match e {
        Expr::Identifier(i) => Some(i.value.clone()),
        Expr::CompoundIdentifier(parts) if parts.len() == 2 && parts[0].value.eq_ignore_ascii_case(qualifier) => {
            Some(parts[1].value.clone())
        }
        _ => None,
    }
}

/// Literals and signs of them (no placeholders, no casts).
pub(crate) fn is_literal(e: &Expr) -> bool {
    match e {
        Expr::Value(v) => !matches!(v.value, sqlparser::ast::Value::Placeholder(_)),
        Expr::UnaryOp { expr, .. } | Expr::Nested(expr) => is_literal(expr),
        _ => false,
    }
}

/// Literals, placeholders, and signs or casts of them: values that are
/// the same wherever they are computed.
fn is_constant(e: &Expr) -> bool {
    match e {
        Expr::Value(_) => true,
        Expr::UnaryOp { expr, .. } | Expr::Nested(expr) => is_constant(expr),
        Expr::Cast { expr, .. } => is_constant(expr),
        _ => false,
    }
}

pub(crate) fn last_name(name: &ObjectName) -> String {
    match name.0.last() {
        Some(ObjectNamePart::Identifier(i)) => i.value.clone(),
        _ => name.to_string(),
    }
}

/// The relations a statement reads or writes, with views expanded.
#[derive(Debug, Default)]
struct References {
    /// Every relation named (lower-cased), CTE names excepted.
    all: BTreeSet<String>,
    /// The sharded tables among them, views expanded.
    sharded: BTreeSet<String>,
    /// The reference tables among them, views expanded.
    reference: BTreeSet<String>,
    /// How many times relations are named.
    occurrences: usize,
    /// How many times sharded tables are named (through views too).
    occurrences_of_sharded: usize,
}

#[derive(Default)]
struct Names {
    relations: Vec<String>,
    ctes: BTreeSet<String>,
    functions: BTreeSet<String>,
}

impl Names {
    /// Relations named, without CTEs and table-valued functions.
    fn tables(self) -> Vec<String> {
        let skip = |r: &String| self.ctes.contains(r) || self.functions.contains(r);
        self.relations.iter().filter(|r| !skip(r)).cloned().collect()
    }
}

/// The tables and views `sql` names (lower-cased; CTEs and table-valued
/// functions left out). Empty when sqlparser cannot parse it.
pub fn relations(sql: &str) -> Vec<String> {
    let Ok(statement) = parse(sql) else { return Vec::new() };
    let mut names = Names::default();
    let _ = statement.visit(&mut names);
    names.tables()
}

impl Visitor for Names {
    type Break = ();
    fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<()> {
        if let TableFactor::Table { name, args: Some(_), .. } = t {
            self.functions.insert(last_name(name).to_ascii_lowercase());
        }
        ControlFlow::Continue(())
    }
    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if let Some(with) = &q.with {
            self.ctes.extend(with.cte_tables.iter().map(|c| c.alias.name.value.to_ascii_lowercase()));
        }
        ControlFlow::Continue(())
    }
    fn pre_visit_relation(&mut self, r: &ObjectName) -> ControlFlow<()> {
        self.relations.push(last_name(r).to_ascii_lowercase());
        ControlFlow::Continue(())
    }
}

impl References {
    fn of(catalog: &Catalog, statement: &Statement) -> References {
        let mut refs = References::default();
        refs.add(catalog, statement, 0);
        refs
    }

    /// The relations among the words of `sql`, which sqlparser cannot parse.
    fn named_in(catalog: &Catalog, sql: &str) -> Result<References> {
        let mut refs = References::default();
        let mut words = drsdb_common::sql::words(sql)?;
        words.sort();
        words.dedup();
        refs.add_names(catalog, words.into_iter().filter(|w| catalog.relation(w).is_some()).collect(), 0);
        Ok(refs)
    }

    fn add(&mut self, catalog: &Catalog, statement: &Statement, depth: usize) {
        let mut names = Names::default();
        let _ = statement.visit(&mut names);
        self.add_names(catalog, names.tables(), depth);
    }

    fn add_names(&mut self, catalog: &Catalog, relations: Vec<String>, depth: usize) {
        const MAX_VIEW_DEPTH: usize = 32;
        for r in relations {
            self.occurrences += 1;
            self.all.insert(r.clone());
            if let Some(t) = catalog.table(&r) {
                if t.is_sharded() {
                    self.sharded.insert(r);
                    self.occurrences_of_sharded += 1;
                } else {
                    self.reference.insert(r);
                }
            } else if let Some(view) = catalog.relation(&r).filter(|o| o.kind == "view") {
                match parse(&view.sql) {
                    // What the view reads (not the view it creates).
                    Ok(Statement::CreateView(v)) if depth < MAX_VIEW_DEPTH => {
                        self.add(catalog, &Statement::Query(v.query), depth + 1)
                    }
                    // A view we cannot read: assume it reads every table.
                    _ => {
                        for o in catalog.objects().filter(|o| o.kind == "table") {
                            match catalog.table(&o.name) {
                                Some(t) if t.is_sharded() => {
                                    self.sharded.insert(o.name.to_ascii_lowercase());
                                    self.occurrences_of_sharded += 2;
                                }
                                Some(_) => {
                                    self.reference.insert(o.name.to_ascii_lowercase());
                                }
                                None => {}
                            }
                        }
                    }
                }
            }
        }
    }
}
