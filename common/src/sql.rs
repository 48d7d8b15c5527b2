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
    /// `BEGIN` / `START TRANSACTION`.
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
/// (columns count characters).
struct Offsets<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> Offsets<'a> {
    fn new(text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self { text, line_starts }
    }

    fn byte(&self, loc: sqlparser::tokenizer::Location) -> usize {
        let Some(&start) = self.line_starts.get((loc.line as usize).saturating_sub(1)) else {
            return self.text.len();
        };
        let col = (loc.column as usize).saturating_sub(1);
        self.text[start..].char_indices().nth(col).map_or(self.text.len(), |(i, _)| start + i)
    }

    /// Byte range of a token (span ends are inclusive in sqlparser).
    fn range(&self, t: &TokenWithSpan) -> std::ops::Range<usize> {
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

/// Classifies one statement by its leading keywords.
pub fn classify(sql: &str) -> Result<Kind> {
    let tokens = tokenize(sql)?;
    let words: Vec<Option<Keyword>> =
        tokens.iter().filter(|t| !is_trivia(&t.token)).take(2).map(|t| keyword(&t.token)).collect();
    let first = words.first().copied().flatten();
    Ok(match first {
        Some(Keyword::SELECT | Keyword::VALUES | Keyword::EXPLAIN) => Kind::Read,
        Some(Keyword::WITH) => {
            // WITH … INSERT/UPDATE/DELETE writes; WITH … SELECT reads.
            let writes = tokens.iter().any(|t| {
                matches!(
                    keyword(&t.token),
                    Some(Keyword::INSERT | Keyword::UPDATE | Keyword::DELETE | Keyword::REPLACE)
                )
            });
            if writes {
                Kind::Write
            } else {
                Kind::Read
            }
        }
        Some(Keyword::BEGIN | Keyword::START) => Kind::Begin,
        Some(Keyword::COMMIT | Keyword::END) => Kind::Commit,
        Some(Keyword::ROLLBACK) => {
            let to = tokens.iter().any(|t| keyword(&t.token) == Some(Keyword::TO));
            if to {
                Kind::Write
            } else {
                Kind::Rollback
            }
        }
        Some(Keyword::CREATE | Keyword::DROP | Keyword::ALTER | Keyword::REINDEX | Keyword::ANALYZE) => Kind::Ddl,
        Some(Keyword::SHOW) => Kind::Show,
        _ => Kind::Write,
    })
}

/// Writes every placeholder as `?N`, numbered the way SQLite numbers
/// them (`?` takes the next number after the largest so far; a name takes
/// one at its first appearance and keeps it), so that any part of the
/// statement can be cut out and still bind the same values.
pub fn number_placeholders(sql: &str) -> Result<String> {
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
/// [`schema_fingerprint`] takes them: `type, name, tbl_name, sql`.
pub const SCHEMA_OBJECTS: &str = "SELECT type, name, tbl_name, sql FROM sqlite_schema \
     WHERE sql IS NOT NULL AND name NOT LIKE '\\_drsdb%' ESCAPE '\\' ORDER BY name";

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

/// Parses one statement with sqlparser's SQLite dialect. `Ok(false)` when
/// sqlparser does not understand it (the caller may then ask SQLite);
/// the error text is returned alongside for the message.
pub fn sqlparser_accepts(sql: &str) -> std::result::Result<(), String> {
    match Parser::parse_sql(&SQLiteDialect {}, sql) {
        Ok(stmts) if stmts.len() == 1 => Ok(()),
        Ok(stmts) => Err(format!("expected one statement, found {}", stmts.len())),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_as_sqlite_numbers_them() {
        assert_eq!(
            number_placeholders("SELECT ?, '?', ?5, ?, $a, ?, $a").unwrap(),
            "SELECT ?1, '?', ?5, ?6, ?7, ?8, ?7"
        );
        assert_eq!(number_placeholders("SELECT 1").unwrap(), "SELECT 1");
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
            ("INSERT INTO t VALUES(1)", Kind::Write),
            ("REPLACE INTO t VALUES(1)", Kind::Write),
            ("create table t(a)", Kind::Ddl),
            ("BEGIN", Kind::Begin),
            ("END TRANSACTION", Kind::Commit),
            ("ROLLBACK", Kind::Rollback),
            ("ROLLBACK TO sp", Kind::Write),
            ("SHOW GROUPS", Kind::Show),
        ] {
            assert_eq!(classify(sql).unwrap(), kind, "{sql}");
        }
    }
}
