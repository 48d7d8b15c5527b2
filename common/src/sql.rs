//! Lexical work on SQL text shared by the client and the index server:
//! splitting a script into statements, classifying a statement, and
//! parsing it with sqlparser for a syntax check.
//!
//! Statements travel as their original text: SQLite derives result column
//! names from it, so re-printing an AST would change answers.
//!
//! sqlparser does not know all of SQLite's grammar (triggers, some pragmas,
//! `REINDEX`). Where it fails, the client asks SQLite's own parser before
//! calling the statement malformed (see the client's syntax check).

use sqlparser::dialect::SQLiteDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use crate::error::{Error, Result};

/// What a statement does, which decides where it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Reads only (`SELECT`, `VALUES`, `WITH … SELECT`, `EXPLAIN`).
    Read,
    /// Changes rows (`INSERT`, `UPDATE`, `DELETE`, `REPLACE`) or anything
    /// else that must go through the log.
    Write,
    /// Changes the schema (`CREATE`, `DROP`, `ALTER`, `REINDEX`, `ANALYZE`).
    Ddl,
    /// `BEGIN`.
    Begin,
    /// `COMMIT` / `END`.
    Commit,
    /// `ROLLBACK` (of the whole transaction; `ROLLBACK TO` is a [`Kind::Write`]).
    Rollback,
    /// `SHOW …`: cluster introspection answered by the index server.
    Show,
}

impl Kind {
    /// True for statements that end or start a transaction.
    pub fn is_transaction_control(self) -> bool {
        matches!(self, Kind::Begin | Kind::Commit | Kind::Rollback)
    }
}

fn tokenize(sql: &str) -> Result<Vec<TokenWithSpan>> {
    Tokenizer::new(&SQLiteDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| Error::invalid(format!("malformed SQL: {e}")))
}

/// Longest statement text a client may send.
pub const MAX_STATEMENT_BYTES: usize = 8 << 20;
/// Most placeholders in one statement an index server sends a shard
/// (SQLite's limit is 32766): an INSERT with more rows is split.
pub const MAX_PARAMS_PER_STATEMENT: usize = 30_000;
/// Roughly most bytes of values in one statement an index server sends a
/// shard: an INSERT with more is split.
pub const MAX_BYTES_PER_STATEMENT: usize = 4 << 20;
/// Longest string or blob drsdb stores or computes (16 MiB).
pub const MAX_VALUE_BYTES: usize = 16 << 20;

/// SQLite's bound on the depth of an expression tree
/// (`SQLITE_MAX_EXPR_DEPTH`): deeper expressions are refused by SQLite
/// itself.
pub const MAX_EXPR_DEPTH: usize = 1000;
/// SQLite's bound on the terms of a compound SELECT
/// (`SQLITE_MAX_COMPOUND_SELECT`).
pub const MAX_COMPOUND_SELECT: usize = 500;
/// Most operator tokens on any path through a statement's expressions.
/// sqlparser builds a chain of operators (`1+1+…`, `a OR b OR …`) into a
/// tree as deep as the chain is long, and every later walk over it
/// (printing, visiting, dropping) recurses once per level: unbounded, a
/// long chain overflows the stack. An expression within SQLite's depth
/// spends at most a few operator tokens per level (`t.a = 1 AND …`), so
/// this bound refuses nothing SQLite would accept.
const MAX_OPERATOR_CHAIN: usize = 4 * MAX_EXPR_DEPTH;

/// Keywords that join or qualify expressions (each adds a level to the
/// tree it builds).
const OPERATOR_KEYWORDS: &[Keyword] = &[
    Keyword::AND,
    Keyword::OR,
    Keyword::NOT,
    Keyword::IS,
    Keyword::IN,
    Keyword::LIKE,
    Keyword::GLOB,
    Keyword::REGEXP,
    Keyword::MATCH,
    Keyword::BETWEEN,
    Keyword::COLLATE,
    Keyword::ESCAPE,
    Keyword::NOTNULL,
];

/// One level of parentheses (or a CASE … END) while checking limits.
#[derive(Default)]
struct Level {
    /// Operators on the path into this level from the outer ones.
    base: usize,
    /// Operators of the current list item (since the last comma).
    operators: usize,
    /// UNION / INTERSECT / EXCEPT at this level.
    compound: usize,
    /// A CASE … END rather than parentheses.
    case: bool,
}

/// Refuses a statement whose expressions or compound SELECTs are too large
/// to parse and walk safely, in one linear pass over its tokens, before
/// any tree is built: long operator chains (see `MAX_OPERATOR_CHAIN`)
/// and compound SELECTs of more than SQLite's `MAX_COMPOUND_SELECT`
/// terms. (Nesting depth is bounded by sqlparser's own recursion limit.)
fn check_limits(tokens: &[TokenWithSpan]) -> Result<()> {
    let mut levels = vec![Level::default()];
    for t in tokens {
        let top = levels.last_mut().expect("the statement level is never popped");
        match &t.token {
            Token::Whitespace(_)
            | Token::Number(..)
            | Token::Placeholder(_)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::NationalStringLiteral(_)
            | Token::HexStringLiteral(_) => {}
            Token::LParen | Token::LBracket => {
                let base = top.base + top.operators + top.compound + 1;
                levels.push(Level { base, ..Level::default() });
            }
            Token::RParen | Token::RBracket => {
                if levels.len() > 1 {
                    levels.pop();
                }
            }
            Token::Comma => top.operators = 0,
            Token::SemiColon => levels = vec![Level::default()],
            Token::Word(w) if w.quote_style.is_none() => match w.keyword {
                Keyword::CASE => {
                    let base = top.base + top.operators + top.compound + 1;
                    levels.push(Level { base, case: true, ..Level::default() });
                }
                Keyword::END if top.case => {
                    levels.pop();
                }
                Keyword::WHEN | Keyword::THEN | Keyword::ELSE if top.case => top.operators = 0,
                Keyword::UNION | Keyword::INTERSECT | Keyword::EXCEPT => {
                    top.compound += 1;
                    top.operators = 0;
                    if top.compound >= MAX_COMPOUND_SELECT {
                        return Err(Error::invalid(format!(
                            "too many terms in compound SELECT (at most {MAX_COMPOUND_SELECT}, as in SQLite); \
                             split the query"
                        )));
                    }
                }
                k if OPERATOR_KEYWORDS.contains(&k) => top.operators += 1,
                _ => {}
            },
            Token::Word(_) => {}
            _ => top.operators += 1,
        }
        let top = levels.last().expect("the statement level is never popped");
        if top.base + top.operators + top.compound > MAX_OPERATOR_CHAIN {
            return Err(Error::invalid(format!(
                "Expression tree is too large (maximum depth {MAX_EXPR_DEPTH}); break the expression up \
                 (an IN list instead of a chain of ORs, or several statements)"
            )));
        }
    }
    Ok(())
}

/// Why sqlparser gave no tree for a statement.
#[derive(Debug)]
pub enum ParseError {
    /// The statement is over a limit (see [`parse`]): refuse it.
    Refused(Error),
    /// sqlparser does not know this syntax; SQLite's parser may.
    Unknown(String),
}

impl From<ParseError> for Error {
    fn from(e: ParseError) -> Self {
        match e {
            ParseError::Refused(e) => e,
            ParseError::Unknown(m) => Error::invalid(m),
        }
    }
}

/// Refuses `sql` if it is longer than [`MAX_STATEMENT_BYTES`] or its
/// expressions or compound SELECTs are too large to handle safely (see
/// [`parse`]); linear in its length.
pub fn check_size(sql: &str) -> Result<()> {
    check_length(sql)?;
    check_limits(&tokenize(sql)?)
}

/// Refuses a statement longer than [`MAX_STATEMENT_BYTES`].
pub fn check_length(sql: &str) -> Result<()> {
    if sql.len() > MAX_STATEMENT_BYTES {
        return Err(Error::invalid(format!(
            "the statement is {} bytes long, over the limit of {} MiB; split it (several INSERTs of fewer rows), or \
             bind large values as parameters",
            sql.len(),
            MAX_STATEMENT_BYTES >> 20
        )));
    }
    Ok(())
}

/// Parses `sql` with sqlparser's SQLite dialect: the one way drsdb builds
/// a syntax tree, so that every tree is within the limits that keep the
/// walks over it (which recurse) off the end of the stack.
pub fn parse(sql: &str) -> std::result::Result<Vec<sqlparser::ast::Statement>, ParseError> {
    let tokens = tokenize(sql).map_err(ParseError::Refused)?;
    check_limits(&tokens).map_err(ParseError::Refused)?;
    Parser::new(&SQLiteDialect {})
        .with_tokens_with_locations(tokens)
        .parse_statements()
        .map_err(|e| ParseError::Unknown(e.to_string()))
}

/// Parses an expression (see [`parse`]); `None` when it is not one.
pub fn parse_expr(sql: &str) -> Option<sqlparser::ast::Expr> {
    let tokens = tokenize(sql).ok()?;
    check_limits(&tokens).ok()?;
    Parser::new(&SQLiteDialect {}).with_tokens_with_locations(tokens).parse_expr().ok()
}

fn is_trivia(t: &Token) -> bool {
    matches!(t, Token::Whitespace(_))
}

fn keyword(t: &Token) -> Option<Keyword> {
    match t {
        Token::Word(w) if w.quote_style.is_none() => Some(w.keyword),
        _ => None,
    }
}

/// Byte offsets of token positions, from sqlparser's 1-based line/column
/// (columns count characters). A cursor remembers the last position
/// found, so a walk over a statement's tokens in order is linear in its
/// length (a statement on one long line included).
pub struct Offsets<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
    /// The last position found: line, column, byte offset.
    cursor: std::cell::Cell<(u64, u64, usize)>,
}

impl<'a> Offsets<'a> {
    /// Offsets into `text`.
    pub fn new(text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self { text, line_starts, cursor: std::cell::Cell::new((1, 1, 0)) }
    }

    /// The byte offset of `loc` (the text's length when past its end).
    pub fn byte(&self, loc: sqlparser::tokenizer::Location) -> usize {
        let (line, column) = (loc.line, loc.column.max(1));
        let (at_line, at_column, at_byte) = self.cursor.get();
        let (from_column, from_byte) = if line == at_line && column >= at_column {
            (at_column, at_byte)
        } else {
            match self.line_starts.get((line as usize).saturating_sub(1)) {
                Some(&start) => (1, start),
                None => return self.text.len(),
            }
        };
        let steps = (column - from_column) as usize;
        let byte = match steps {
            0 => from_byte,
            _ => self.text[from_byte..].char_indices().nth(steps).map_or(self.text.len(), |(i, _)| from_byte + i),
        };
        self.cursor.set((line, column, byte));
        byte
    }

    /// Byte range of a token (span ends are inclusive in sqlparser).
    pub fn range(&self, t: &TokenWithSpan) -> std::ops::Range<usize> {
        let start = self.byte(t.span.start);
        let end = self.byte(t.span.end);
        start..end.max(start)
    }
}

/// Splits a script into statements at top-level semicolons, keeping each
/// statement's text (without the `;`). Trigger bodies (`BEGIN … END`) stay
/// whole. Empty statements and comments between statements are dropped.
pub fn split_script(script: &str) -> Result<Vec<String>> {
    Ok(split(script)?.0)
}

/// True when `script` ends with a complete statement (a terminating `;`
/// outside strings, comments and trigger bodies) or holds nothing but
/// whitespace and comments. The shell reads lines until this holds.
/// Text that does not even tokenize (an open quote) is incomplete.
pub fn is_complete(script: &str) -> bool {
    split(script).map(|(_, complete)| complete).unwrap_or(false)
}

fn split(script: &str) -> Result<(Vec<String>, bool)> {
    let tokens = tokenize(script)?;
    let offsets = Offsets::new(script);
    let mut statements = Vec::new();
    let mut start: Option<usize> = None;
    // Words seen at the start of the current statement, to spot triggers.
    let mut leading: Vec<Keyword> = Vec::new();
    let mut in_trigger_body = false;
    let mut last_word: Option<Keyword> = None;
    for t in &tokens {
        if is_trivia(&t.token) {
            continue;
        }
        let range = offsets.range(t);
        if t.token == Token::SemiColon {
            let ends_trigger = in_trigger_body && last_word == Some(Keyword::END);
            if in_trigger_body && !ends_trigger {
                last_word = None;
                continue;
            }
            if let Some(s) = start.take() {
                statements.push(script[s..range.start].trim().to_string());
            }
            leading.clear();
            in_trigger_body = false;
            last_word = None;
            continue;
        }
        if start.is_none() {
            start = Some(range.start);
        }
        let kw = keyword(&t.token);
        if leading.len() < 4 {
            leading.push(kw.unwrap_or(Keyword::NoKeyword));
        }
        let is_trigger = leading.first() == Some(&Keyword::CREATE) && leading[1..].contains(&Keyword::TRIGGER);
        if is_trigger && kw == Some(Keyword::BEGIN) {
            in_trigger_body = true;
        }
        last_word = kw;
    }
    let complete = start.is_none();
    if let Some(s) = start {
        let rest = script[s..].trim();
        if !rest.is_empty() {
            statements.push(rest.to_string());
        }
    }
    Ok((statements, complete))
}

/// Returns `kind` if `tokens` are transaction control as SQLite's grammar
/// has it: `BEGIN [DEFERRED | IMMEDIATE | EXCLUSIVE]`, `COMMIT`, `END`
/// or `ROLLBACK`, each followed by nothing, `TRANSACTION` or
/// `TRANSACTION name`. Anything else is a syntax error, as in SQLite.
fn check_transaction_control(tokens: &[TokenWithSpan], kind: Kind) -> Result<Kind> {
    let words: Vec<&Token> = tokens.iter().map(|t| &t.token).filter(|t| !is_trivia(t)).collect();
    let mut rest = words.get(1..).unwrap_or_default();
    if kind == Kind::Begin
        && matches!(
            rest.first().and_then(|t| keyword(t)),
            Some(Keyword::DEFERRED | Keyword::IMMEDIATE | Keyword::EXCLUSIVE)
        )
    {
        rest = &rest[1..];
    }
    if rest.last() == Some(&&Token::SemiColon) {
        rest = &rest[..rest.len() - 1];
    }
    let unexpected = match rest {
        [] => None,
        [t] | [t, Token::Word(_)] if keyword(t) == Some(Keyword::TRANSACTION) => None,
        [t, ..] if keyword(t) == Some(Keyword::TRANSACTION) => rest.get(2).or(rest.get(1)),
        [t, ..] => Some(t),
    };
    match unexpected {
        None => Ok(kind),
        Some(t) => Err(Error::invalid(format!("near \"{t}\": syntax error"))),
    }
}

/// Classifies one statement by its leading keywords.
pub fn classify(sql: &str) -> Result<Kind> {
    static KINDS: memo::Memo<Kind> = memo::Memo::new();
    KINDS.get_or(sql, || classify_uncached(sql))
}

fn classify_uncached(sql: &str) -> Result<Kind> {
    let tokens = tokenize(sql)?;
    let words: Vec<Option<Keyword>> =
        tokens.iter().filter(|t| !is_trivia(&t.token)).take(2).map(|t| keyword(&t.token)).collect();
    let first = words.first().copied().flatten();
    Ok(match first {
        Some(Keyword::SELECT | Keyword::VALUES | Keyword::EXPLAIN) => Kind::Read,
        Some(Keyword::WITH) => match main_verb(&tokens) {
            // WITH … SELECT/VALUES reads (whatever functions it calls);
            // WITH … INSERT/UPDATE/DELETE/REPLACE writes. Without a verb
            // the statement is malformed: planning reports it.
            Some(Keyword::SELECT | Keyword::VALUES) | None => Kind::Read,
            Some(_) => Kind::Write,
        },
        Some(Keyword::BEGIN) => check_transaction_control(&tokens, Kind::Begin)?,
        Some(Keyword::COMMIT | Keyword::END) => check_transaction_control(&tokens, Kind::Commit)?,
        Some(Keyword::ROLLBACK) => {
            let to = tokens.iter().any(|t| keyword(&t.token) == Some(Keyword::TO));
            if to {
                Kind::Write
            } else {
                check_transaction_control(&tokens, Kind::Rollback)?
            }
        }
        Some(Keyword::CREATE | Keyword::DROP | Keyword::ALTER | Keyword::REINDEX | Keyword::ANALYZE) => Kind::Ddl,
        Some(Keyword::SHOW) => Kind::Show,
        _ => Kind::Write,
    })
}

/// The verb of a `WITH` statement's main statement: the first word after
/// a closing parenthesis at depth 0 (the end of the last common table
/// expression's body), so that neither a CTE's body nor a CTE named like a verb
/// (`WITH replace AS …`) nor a function (`replace(…)`) is taken for it.
fn main_verb(tokens: &[TokenWithSpan]) -> Option<Keyword> {
    let mut depth = 0usize;
    let mut after_close = false;
    for t in tokens.iter().filter(|t| !is_trivia(&t.token)) {
        match &t.token {
            Token::LParen => {
                depth += 1;
                after_close = false;
            }
            Token::RParen => {
                depth = depth.saturating_sub(1);
                after_close = depth == 0;
            }
            // (`AS` follows a CTE's column list, not its body.)
            Token::Word(w) if depth == 0 && after_close && w.keyword != Keyword::AS => return Some(w.keyword),
            _ => after_close = false,
        }
    }
    None
}

/// Writes every placeholder as `?N`, numbered the way SQLite numbers
/// them (`?` takes the next number after the largest so far; a name takes
/// one at its first appearance and keeps it), so that any part of the
/// statement can be cut out and still bind the same values.
pub fn number_placeholders(sql: &str) -> Result<String> {
    static NUMBERED: memo::Memo<String> = memo::Memo::new();
    NUMBERED.get_or(sql, || number_placeholders_uncached(sql))
}

fn number_placeholders_uncached(sql: &str) -> Result<String> {
    let tokens = tokenize(sql)?;
    let offsets = Offsets::new(sql);
    let mut out = String::with_capacity(sql.len() + 8);
    let mut copied = 0;
    let mut largest = 0usize;
    let mut names: Vec<(String, usize)> = Vec::new();
    for t in &tokens {
        let Token::Placeholder(p) = &t.token else { continue };
        let number = if p == "?" {
            largest += 1;
            largest
        } else if let Some(n) = p.strip_prefix('?').and_then(|d| d.parse::<usize>().ok()) {
            largest = largest.max(n);
            n
        } else if let Some((_, n)) = names.iter().find(|(name, _)| name == p) {
            *n
        } else {
            largest += 1;
            names.push((p.clone(), largest));
            largest
        };
        let range = offsets.range(t);
        out.push_str(&sql[copied..range.start]);
        out.push_str(&format!("?{number}"));
        copied = range.end;
    }
    out.push_str(&sql[copied..]);
    Ok(out)
}

/// `name` as a double-quoted SQL identifier.
pub fn quote_name(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Every word of `sql` (lower-cased): keywords and names alike. What a
/// statement sqlparser cannot parse may name.
pub fn words(sql: &str) -> Result<Vec<String>> {
    Ok(tokenize(sql)?
        .into_iter()
        .filter_map(|t| match t.token {
            Token::Word(w) => Some(w.value.to_ascii_lowercase()),
            _ => None,
        })
        .collect())
}

/// The largest placeholder number in `sql` (after `number_placeholders`):
/// how many parameters it binds.
pub fn placeholder_count(sql: &str) -> Result<usize> {
    Ok(tokenize(sql)?
        .iter()
        .filter_map(|t| match &t.token {
            Token::Placeholder(p) => p.strip_prefix('?').and_then(|d| d.parse::<usize>().ok()),
            _ => None,
        })
        .max()
        .unwrap_or(0))
}

/// The user-visible schema objects of a database, in the order and form
/// [`schema_fingerprint`] takes them: `type, name, tbl_name, sql`. The
/// shadow tables of virtual tables (an FTS index's `t_data`, `t_idx`…)
/// are left out, with their indexes: their virtual table's CREATE makes
/// them.
pub const SCHEMA_OBJECTS: &str = "SELECT type, name, tbl_name, sql FROM sqlite_schema AS s \
     WHERE sql IS NOT NULL AND name NOT LIKE '\\_drsdb%' ESCAPE '\\' \
     AND NOT EXISTS (SELECT 1 FROM pragma_table_list AS l \
                     WHERE l.schema = 'main' AND l.name = s.tbl_name AND l.type = 'shadow') \
     ORDER BY name";

/// A schema's version as every replica of every shard computes it alike:
/// a hash of its objects ([`SCHEMA_OBJECTS`]). (SQLite's own
/// `schema_version` counter is not: a replica restored from a snapshot
/// has another.)
pub fn schema_fingerprint<'a>(objects: impl IntoIterator<Item = [&'a str; 4]>) -> i64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for object in objects {
        for field in object {
            hasher.update(&(field.len() as u64).to_le_bytes());
            hasher.update(field.as_bytes());
        }
    }
    hasher.digest() as i64
}

/// Virtual-table modules drsdb replicates: they keep their data in
/// ordinary (shadow) tables that every replica writes alike. Other modules
/// are refused (their tables would read state outside the database).
pub const VIRTUAL_TABLE_MODULES: &[&str] = &["fts3", "fts4", "fts5", "fts5vocab", "rtree", "rtree_i32"];

/// For `CREATE VIRTUAL TABLE [IF NOT EXISTS] [schema.]name USING module…`,
/// the table's name and the module's (lower-cased); `None` for any other
/// statement.
pub fn virtual_table(sql: &str) -> Option<(String, String)> {
    let tokens = tokenize(sql).ok()?;
    let mut tokens = tokens.iter().map(|t| &t.token).filter(|t| !is_trivia(t)).peekable();
    for expected in [Keyword::CREATE, Keyword::VIRTUAL, Keyword::TABLE] {
        if keyword(tokens.next()?) != Some(expected) {
            return None;
        }
    }
    if keyword(tokens.peek()?) == Some(Keyword::IF) {
        for expected in [Keyword::IF, Keyword::NOT, Keyword::EXISTS] {
            if keyword(tokens.next()?) != Some(expected) {
                return None;
            }
        }
    }
    let mut name = match tokens.next()? {
        Token::Word(w) => w.value.clone(),
        _ => return None,
    };
    if tokens.peek() == Some(&&Token::Period) {
        tokens.next();
        name = match tokens.next()? {
            Token::Word(w) => w.value.clone(),
            _ => return None,
        };
    }
    if keyword(tokens.next()?) != Some(Keyword::USING) {
        return None;
    }
    match tokens.next()? {
        Token::Word(w) => Some((name, w.value.to_ascii_lowercase())),
        _ => None,
    }
}

/// For `CREATE REFERENCE TABLE …`, the statement as SQLite knows it
/// (`CREATE TABLE …`); `None` for any other statement.
pub fn strip_reference(sql: &str) -> Option<String> {
    let tokens = tokenize(sql).ok()?;
    let words: Vec<&TokenWithSpan> = tokens.iter().filter(|t| !is_trivia(&t.token)).take(3).collect();
    let is_reference = words.len() == 3
        && keyword(&words[0].token) == Some(Keyword::CREATE)
        && matches!(&words[1].token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("REFERENCE"))
        && keyword(&words[2].token) == Some(Keyword::TABLE);
    if !is_reference {
        return None;
    }
    let range = Offsets::new(sql).range(words[1]);
    Some(format!("{}{}", &sql[..range.start], sql[range.end..].trim_start()))
}

/// Parses one statement with sqlparser's SQLite dialect (see [`parse`]).
pub fn parse_one(sql: &str) -> std::result::Result<sqlparser::ast::Statement, ParseError> {
    let mut statements = parse(sql)?;
    match statements.len() {
        1 => Ok(statements.remove(0)),
        n => Err(ParseError::Unknown(format!("expected one statement, found {n}"))),
    }
}

/// What the functions above computed for texts seen recently.
/// Applications send the same parameterized statements again and again:
/// each text is classified and numbered once per process while it stays in
/// use, not once per statement. The results are pure functions of the
/// text; errors are not kept. Syntax trees are not kept: cloning one out
/// would be another recursive walk over a tree as deep as the limits allow
/// (a chain of 900 operators overflows a small stack).
mod memo {
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// Texts kept per function; the table starts over when full.
    const ENTRIES: usize = 256;
    /// Longer texts (big literal batches, rarely sent twice) are not kept.
    const MAX_TEXT_BYTES: usize = 4 << 10;

    /// One function's results, by text.
    pub struct Memo<V> {
        entries: Mutex<Option<HashMap<String, V>>>,
    }

    impl<V: Clone> Memo<V> {
        pub const fn new() -> Self {
            Memo { entries: Mutex::new(None) }
        }

        /// The result for `text`, computed by `f` unless kept.
        pub fn get_or<E>(&self, text: &str, f: impl FnOnce() -> Result<V, E>) -> Result<V, E> {
            if text.len() > MAX_TEXT_BYTES {
                return f();
            }
            if let Some(v) = self.entries.lock().expect("memo lock").as_ref().and_then(|m| m.get(text)) {
                return Ok(v.clone());
            }
            let v = f()?;
            let mut entries = self.entries.lock().expect("memo lock");
            let map = entries.get_or_insert_with(HashMap::new);
            if map.len() >= ENTRIES {
                map.clear();
            }
            map.insert(text.to_string(), v.clone());
            Ok(v)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_seen_again_gets_the_same_answers_and_errors_are_not_kept() {
        let sql = "INSERT INTO memo_t(a, b) VALUES (?, ?5), (?, ?5)";
        for _ in 0..3 {
            assert_eq!(classify(sql).unwrap(), classify_uncached(sql).unwrap());
            assert_eq!(number_placeholders(sql).unwrap(), "INSERT INTO memo_t(a, b) VALUES (?1, ?5), (?6, ?5)");
        }
        let memo = memo::Memo::<u32>::new();
        assert_eq!(memo.get_or("x", || Err::<u32, ()>(())), Err(()));
        assert_eq!(memo.get_or("x", || Ok::<u32, ()>(7)), Ok(7));
        assert_eq!(memo.get_or("x", || Ok::<u32, ()>(8)), Ok(7), "kept");
    }

    #[test]
    fn placeholders_are_numbered_as_sqlite_numbers_them() {
        assert_eq!(
            number_placeholders("SELECT ?, '?', ?5, ?, $a, ?, $a").unwrap(),
            "SELECT ?1, '?', ?5, ?6, ?7, ?8, ?7"
        );
        assert_eq!(number_placeholders("SELECT 1").unwrap(), "SELECT 1");
    }

    /// A chain of `n` terms joined by `op`.
    fn chain(n: usize, op: &str) -> String {
        format!("SELECT {}", vec!["1"; n].join(op))
    }

    #[test]
    fn long_chains_are_refused_before_any_tree_is_built() {
        for op in ["+", " || ", " AND ", " OR ", " = "] {
            let e = parse(&chain(50_000, op)).unwrap_err();
            assert!(
                matches!(&e, ParseError::Refused(Error::InvalidInput(m)) if m.contains("too large")),
                "{op}: {e:?}"
            );
        }
        let unions = vec!["SELECT 1"; 50_000].join(" UNION ALL ");
        assert!(matches!(parse(&unions), Err(ParseError::Refused(_))));
        // Within SQLite's own limits: parsed.
        parse(&chain(MAX_EXPR_DEPTH - 10, " OR ")).unwrap();
        parse(&vec!["SELECT 1"; MAX_COMPOUND_SELECT - 1].join(" UNION ")).unwrap();
        let conditions: Vec<String> = (0..900).map(|i| format!("t.c{i} = ?")).collect();
        parse(&format!("SELECT * FROM t WHERE {}", conditions.join(" AND "))).unwrap();
        // Long lists are not chains.
        let values: Vec<String> = (0..100_000).map(|i| format!("({i}, 'x')")).collect();
        parse(&format!("INSERT INTO t VALUES {}", values.join(","))).unwrap();
        let whens: Vec<String> = (0..20_000).map(|i| format!("WHEN a = {i} THEN {i}")).collect();
        parse(&format!("SELECT CASE {} END FROM t", whens.join(" "))).unwrap();
    }

    /// The largest tree the limits let through is printed, visited and
    /// dropped on a thread with a small stack (2 MiB, tokio's default).
    #[test]
    fn the_deepest_accepted_tree_fits_a_small_stack() {
        let sql = chain(MAX_OPERATOR_CHAIN, "+");
        let deepest = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let statements = parse(&sql).expect("at the limit");
                let printed = statements[0].to_string();
                let mut count = 0;
                let _ = sqlparser::ast::visit_expressions(&statements, |_| {
                    count += 1;
                    std::ops::ControlFlow::<()>::Continue(())
                });
                drop(statements);
                (printed.len(), count)
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(deepest.1 > MAX_OPERATOR_CHAIN, "{deepest:?}");
    }

    #[test]
    fn offsets_are_found_in_linear_time() {
        let values: Vec<String> = (0..200_000).map(|i| format!("({i}, 'é?')")).collect();
        let sql = format!("INSERT INTO t VALUES {}", values.join(","));
        let started = std::time::Instant::now();
        let numbered = number_placeholders(&sql).unwrap();
        assert!(numbered.ends_with("(199999, 'é?')"));
        assert_eq!(split_script(&format!("{sql};{sql}")).unwrap().len(), 2);
        println!("numbered and split {} bytes in {:?}", sql.len(), started.elapsed());
    }

    #[test]
    fn trailing_junk_after_transaction_control_is_a_syntax_error() {
        for sql in ["BEGIN garbage", "COMMIT garbage", "ROLLBACK garbage", "END TRANSACTION t x", "BEGIN IMMEDIATE x"] {
            let e = classify(sql).unwrap_err();
            assert!(e.to_string().contains("syntax error"), "{sql}: {e}");
        }
    }

    #[test]
    fn virtual_tables_are_recognized() {
        assert_eq!(
            virtual_table("create virtual table if not exists main.\"Docs\" using FTS5(a, tokenize = 'porter')"),
            Some(("Docs".into(), "fts5".into()))
        );
        assert_eq!(virtual_table("CREATE VIRTUAL TABLE r USING rtree(id, x0, x1)"), Some(("r".into(), "rtree".into())));
        assert_eq!(virtual_table("CREATE TABLE t(a)"), None);
    }

    #[test]
    fn reference_tables_are_recognized() {
        assert_eq!(strip_reference("create  Reference TABLE r(a)").as_deref(), Some("create  TABLE r(a)"));
        assert_eq!(strip_reference("CREATE TABLE reference(a)"), None);
    }

    #[test]
    fn splits_statements_and_keeps_text() {
        let s = split_script("SELECT 1 ;\n  insert into t values('a;b');; -- c\n").unwrap();
        assert_eq!(s, vec!["SELECT 1", "insert into t values('a;b')"]);
    }

    #[test]
    fn keeps_trigger_bodies_whole() {
        let script = "CREATE TRIGGER t1 AFTER INSERT ON t BEGIN DELETE FROM u; INSERT INTO u VALUES(1); END; SELECT 2";
        let s = split_script(script).unwrap();
        assert_eq!(s.len(), 2, "{s:?}");
        assert!(s[0].ends_with("END"));
    }

    #[test]
    fn completeness() {
        assert!(is_complete("select 1;"));
        assert!(is_complete("  -- nothing\n"));
        assert!(!is_complete("select 1"));
        assert!(!is_complete("select ';"));
        assert!(!is_complete("CREATE TRIGGER t AFTER INSERT ON x BEGIN SELECT 1;"));
        assert!(is_complete("CREATE TRIGGER t AFTER INSERT ON x BEGIN SELECT 1; END;"));
    }

    #[test]
    fn classifies() {
        for (sql, kind) in [
            ("select 1", Kind::Read),
            ("WITH x AS (SELECT 1) SELECT * FROM x", Kind::Read),
            ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", Kind::Write),
            ("WITH x(a) AS (SELECT 'ab') SELECT replace(a, 'a', 'c') FROM x", Kind::Read),
            ("WITH replace AS (SELECT 1), y AS MATERIALIZED (SELECT 2) SELECT * FROM replace", Kind::Read),
            ("WITH RECURSIVE x AS (SELECT 1) REPLACE INTO t SELECT * FROM x", Kind::Write),
            ("WITH x AS (SELECT 1), y(b) AS (VALUES (2)) DELETE FROM t WHERE a IN x", Kind::Write),
            ("WITH x AS (SELECT 1) VALUES (1)", Kind::Read),
            ("INSERT INTO t VALUES(1)", Kind::Write),
            ("REPLACE INTO t VALUES(1)", Kind::Write),
            ("create table t(a)", Kind::Ddl),
            ("BEGIN", Kind::Begin),
            ("END TRANSACTION", Kind::Commit),
            ("ROLLBACK", Kind::Rollback),
            ("ROLLBACK TO sp", Kind::Write),
            ("BEGIN IMMEDIATE TRANSACTION t1", Kind::Begin),
            ("begin deferred", Kind::Begin),
            ("COMMIT TRANSACTION", Kind::Commit),
            ("ROLLBACK -- why\n", Kind::Rollback),
            ("SHOW GROUPS", Kind::Show),
        ] {
            assert_eq!(classify(sql).unwrap(), kind, "{sql}");
        }
    }
}
