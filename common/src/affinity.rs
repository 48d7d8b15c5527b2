//! SQLite's column affinity: how a column's declared type converts the
//! values written to it ("Datatypes In SQLite" §3), as far as drsdb needs
//! it without SQLite at hand.
//!
//! Two tiers use it. The index server hashes a shard key as SQLite stores
//! it, so it must know when a value is stored unchanged (then it hashes
//! it as it is; otherwise SQLite's own conversion decides). The driver's
//! bulk loader groups rows by shard before sending them, so it converts
//! what it can exactly ([`Affinity::apply_exact`]) and hashes the same way.
//! Anything this module is unsure of is left for SQLite to convert: the
//! conversions here are the ones SQLite makes, never approximations.

use crate::Value;

/// A column's type affinity, from its declared type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Affinity {
    /// Declared type contains `INT`.
    Integer,
    /// Contains `CHAR`, `CLOB` or `TEXT`.
    Text,
    /// Contains `BLOB`, or is empty: values are stored as given.
    Blob,
    /// Contains `REAL`, `FLOA` or `DOUB`.
    Real,
    /// Anything else (including `ANY`, outside STRICT tables).
    Numeric,
}

impl Affinity {
    /// The affinity SQLite gives a column declared `decl_type` (its rules,
    /// in order).
    pub fn of(decl_type: &str) -> Affinity {
        let t = decl_type.to_ascii_uppercase();
        if t.contains("INT") {
            Affinity::Integer
        } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
            Affinity::Text
        } else if t.contains("BLOB") || t.is_empty() {
            Affinity::Blob
        } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
            Affinity::Real
        } else {
            Affinity::Numeric
        }
    }

    /// Whether a column of this affinity stores `v` unchanged; `false`
    /// when it may convert it.
    pub fn stores_unchanged(self, v: &Value) -> bool {
        matches!(
            (v, self),
            (Value::Null | Value::Blob(_), _)
                | (_, Affinity::Blob)
                | (Value::Text(_), Affinity::Text)
                | (Value::Integer(_), Affinity::Integer | Affinity::Numeric)
                | (Value::Real(_), Affinity::Real)
        )
    }

    /// `v` as a column of this affinity stores it, where that is certain
    /// without SQLite: a text of optional `-` and decimal digits that fits
    /// in 64 bits, written to an INTEGER or NUMERIC column, is that
    /// integer. Every other value is returned as it is (SQLite converts it
    /// when it is written, as it would have anyway).
    pub fn apply_exact(self, v: Value) -> Value {
        match (self, v) {
            (Affinity::Integer | Affinity::Numeric, Value::Text(t)) => match plain_integer(&t) {
                Some(i) => Value::Integer(i),
                None => Value::Text(t),
            },
            (_, v) => v,
        }
    }
}

/// The integer `t` spells as an optional `-` and decimal digits only.
fn plain_integer(t: &str) -> Option<i64> {
    let digits = t.strip_prefix('-').unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What SQLite stores for `v` in a column declared `decl`.
    fn sqlite_stores(decl: &str, v: &Value) -> Value {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        c.execute_batch(&format!("CREATE TABLE t(c {decl})")).unwrap();
        c.execute("INSERT INTO t VALUES (?1)", [v]).unwrap();
        c.query_row("SELECT c FROM t", [], |r| r.get_ref(0).map(Value::from)).unwrap()
    }

    #[test]
    fn exact_conversions_are_what_sqlite_stores() {
        let texts = ["42", "-7", "007", "-0", "9223372036854775807", "-9223372036854775808", "9223372036854775808"];
        let others = ["", " 42", "4.0", "1e3", "+5", "0x10", "abc", "12a", "-"];
        for decl in ["INTEGER", "INT", "BIGINT", "NUMERIC", "DECIMAL(10,2)", "TEXT", "VARCHAR(9)", "BLOB", "", "REAL"] {
            let affinity = Affinity::of(decl);
            for t in texts.iter().chain(&others) {
                let v = Value::Text((*t).to_string());
                let ours = affinity.apply_exact(v.clone());
                if ours != v {
                    assert_eq!(ours, sqlite_stores(decl, &v), "{t:?} into {decl}");
                }
                if affinity.stores_unchanged(&ours) {
                    assert_eq!(ours, sqlite_stores(decl, &ours), "{t:?} into {decl} is stored unchanged");
                }
            }
        }
        assert_eq!(Affinity::Integer.apply_exact(Value::Text("42".into())), Value::Integer(42));
        assert_eq!(Affinity::Text.apply_exact(Value::Text("42".into())), Value::Text("42".into()));
    }
}
