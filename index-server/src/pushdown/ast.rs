//! General helpers over sqlparser's syntax tree: walking expressions,
//! recognising aggregates, window functions, collations and random
//! functions, reading LIMIT/OFFSET and positions, and recovering the text
//! of select items as written.

use std::ops::ControlFlow;

use drsdb_common::Value;
use sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, LimitClause, Query, Select, UnaryOperator,
    Value as SqlValue, Visit, Visitor,
};

use crate::planner::last_name;

use super::*;

/// True when `e` calls an aggregate function outside any subquery.
pub(super) fn has_aggregate(e: &Expr) -> bool {
    let mut found = false;
    each_outer_expr(e, |x| {
        found |= matches!(x, Expr::Function(f) if f.over.is_none() && aggregate_of(f).is_some());
        ControlFlow::Continue(())
    });
    found
}

/// True when `e` holds an explicit COLLATE.
pub(super) fn has_collate(e: &Expr) -> bool {
    let mut found = false;
    each_outer_expr(e, |x| {
        found |= matches!(x, Expr::Collate { .. });
        ControlFlow::Continue(())
    });
    found
}

/// True when `e` draws random values (computed twice, they would differ).
pub(super) fn is_random(e: &Expr) -> bool {
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

pub(super) fn has_window(query: &Query) -> bool {
    let mut found = false;
    each_expr(query, |x| {
        found |= matches!(x, Expr::Function(f) if f.over.is_some());
        ControlFlow::Continue(())
    });
    found
}

/// A function's plain arguments.
pub(super) fn args(f: &sqlparser::ast::Function) -> Option<Vec<&Expr>> {
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
pub(super) fn integer(e: &Expr, params: &[Value]) -> Option<i64> {
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
pub(super) fn limits(clause: Option<&LimitClause>, params: &[Value]) -> Option<(u64, Option<u64>)> {
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
pub(super) fn item_texts(source: &str, select: &Select) -> Option<Vec<String>> {
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

/// An ORDER BY or GROUP BY term without the parentheses and unary plus
/// SQLite looks through when it reads a position.
pub(super) fn strip_position(e: &Expr) -> &Expr {
    match e {
        Expr::Nested(x) | Expr::UnaryOp { op: UnaryOperator::Plus, expr: x } => strip_position(x),
        e => e,
    }
}

/// True for an integer literal, signed or in parentheses: a position in
/// an ORDER BY or GROUP BY (or, negative or zero, an error there).
pub(super) fn is_ordinal(e: &Expr) -> bool {
    match strip_position(e) {
        Expr::UnaryOp { op: UnaryOperator::Minus, expr } => is_ordinal(expr),
        Expr::Value(v) => matches!(&v.value, SqlValue::Number(n, _) if n.parse::<i64>().is_ok()),
        _ => false,
    }
}

/// A double-quoted identifier.
pub(super) fn quoted(name: &str) -> Ident {
    Ident::with_quote('"', name)
}

/// Calls `f` on every expression of `node`, subqueries included.
pub(super) fn each_expr<V: Visit>(node: &V, f: impl FnMut(&Expr) -> ControlFlow<()>) {
    let _ = node.visit(&mut ExprVisitor { f, depth: 0, outer_only: false });
}

/// Calls `f` on every expression of `e` outside its subqueries.
pub(super) fn each_outer_expr(e: &Expr, f: impl FnMut(&Expr) -> ControlFlow<()>) {
    let _ = e.visit(&mut ExprVisitor { f, depth: 0, outer_only: true });
}

pub(super) struct ExprVisitor<F> {
    pub(super) f: F,
    /// Subqueries entered.
    pub(super) depth: usize,
    pub(super) outer_only: bool,
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
