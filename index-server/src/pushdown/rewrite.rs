//! The rewrites: a query over co-located tables becomes the query every
//! shard runs and the step that combines their answers (concatenation,
//! ordered merge on hidden sort keys, or partial aggregates folded by a
//! final query at the index server).

use std::ops::ControlFlow;

use drsdb_common::order::{Collation, SortKey};
use sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, Ident, LimitClause, OrderByExpr, OrderByKind,
    OrderBySort, Query, Select, SelectItem, SetExpr, Value as SqlValue, VisitMut, VisitorMut,
};

use crate::planner::last_name;

use super::*;

pub(super) struct Cx<'a> {
    pub(super) scope: Scope<'a>,
    pub(super) source: &'a str,
}

impl Cx<'_> {
    /// The name SQLite gives an output column: its alias, the declared
    /// name of the column it is, or the expression's text as written.
    pub(super) fn output_name(&self, select: &Select, item: &SelectItem) -> Option<String> {
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
    pub(super) fn named_items(&self, select: &Select) -> Vec<SelectItem> {
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
    pub(super) fn merge(
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
    pub(super) fn item_of<'s>(&self, select: &'s Select, term: &Expr) -> Option<&'s Expr> {
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
    pub(super) fn aggregate(
        &self,
        query: &Query,
        select: &Select,
        order_by: &[OrderByExpr],
        distinct: bool,
    ) -> Option<Split> {
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
pub(super) struct Rewriter<'a> {
    pub(super) scope: &'a Scope<'a>,
    pub(super) groups: &'a [Expr],
    /// Output column names (lower-cased), which HAVING and ORDER BY may name.
    pub(super) aliases: &'a [String],
    /// Per-shard aggregates and the collation of their column.
    pub(super) partials: Vec<(Expr, Collation)>,
    /// Final expressions over `_pN`.
    pub(super) combos: Vec<String>,
}

impl Rewriter<'_> {
    pub(super) fn rewrite(&mut self, e: &Expr) -> Option<String> {
        let mut out = e.clone();
        match VisitMut::visit(&mut out, self) {
            ControlFlow::Continue(()) => Some(to_sql(out)),
            ControlFlow::Break(()) => None,
        }
    }

    pub(super) fn partial(&mut self, sql: &str, arg: Option<&Expr>) -> Option<String> {
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
pub(super) enum Aggregate {
    /// One whose partial results combine: the function and its argument
    /// (`None` for `count(*)`).
    Combinable(&'static str, Option<Box<Expr>>),
    /// One whose partial results do not combine (or a DISTINCT form that
    /// changes the answer).
    Other,
}

pub(super) fn aggregate_of(f: &sqlparser::ast::Function) -> Option<Aggregate> {
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
