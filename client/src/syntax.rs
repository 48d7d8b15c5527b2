//! The client-side syntax check: a malformed statement is refused here,
//! before any round trip.
//!
//! sqlparser parses first. It does not know all of SQLite's grammar
//! (triggers, `REPLACE INTO` forms, some expressions), so when it refuses,
//! SQLite's own parser decides: the statement is prepared against an empty
//! in-memory database, where a syntax error is reported as such while
//! errors that need the real schema (an unknown table) mean the syntax is
//! fine and the cluster should judge.

use drsdb_common::sql::{self, Kind, ParseError};
use drsdb_common::{Error, Result};

/// Refuses `statement` if it is not valid SQL (drsdb's `CREATE REFERENCE
/// TABLE` is checked as the `CREATE TABLE` it stands for).
pub fn check(statement: &str) -> Result<Kind> {
    let kind = sql::classify(statement)?;
    if kind == Kind::Show {
        return Ok(kind);
    }
    let stripped = sql::strip_reference(statement);
    let statement = stripped.as_deref().unwrap_or(statement);
    let sqlparser_error = match sql::parse_one(statement) {
        Ok(_) => return Ok(kind),
        Err(ParseError::Refused(e)) => return Err(e),
        Err(ParseError::Unknown(message)) => message,
    };
    let conn = rusqlite::Connection::open_in_memory().map_err(|e| Error::io(format!("cannot check syntax: {e}")))?;
    let prepared = conn.prepare(statement).map(|_| ());
    match prepared {
        Ok(()) => Ok(kind),
        Err(e) => {
            let message = match &e {
                rusqlite::Error::SqlInputError { msg, .. } => msg.clone(),
                rusqlite::Error::SqliteFailure(_, Some(msg)) => msg.clone(),
                other => other.to_string(),
            };
            let syntax = ["syntax error", "incomplete input", "unrecognized token"].iter().any(|s| message.contains(s));
            if syntax {
                Err(Error::invalid(format!("{message} ({sqlparser_error}); fix the statement and send it again")))
            } else {
                Ok(kind)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_sqlite_syntax_and_refuses_garbage() {
        for ok in [
            "SELECT 1",
            "INSERT INTO t VALUES(1)",
            "CREATE TRIGGER t1 AFTER INSERT ON t BEGIN DELETE FROM u; END",
            "REINDEX t",
            "CREATE REFERENCE TABLE r(a PRIMARY KEY)",
            "SHOW GROUPS",
        ] {
            check(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["SELEC 1", "SELECT * FROM", "INSERT INTO t VALUES(1"] {
            let e = check(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidInput(_)), "{bad}: {e}");
        }
    }
}
