//! SQL values as they travel: SQLite's five storage classes, converted to
//! and from protobuf and rusqlite in one place.

use drsdb_proto as pb;

/// One SQL value, as SQLite stores it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A 64-bit signed integer.
    Integer(i64),
    /// An IEEE 754 double.
    Real(f64),
    /// UTF-8 text.
    Text(String),
    /// Text whose bytes are not valid UTF-8 (SQLite keeps text as it was
    /// given, `CAST(x'ff' AS TEXT)` say): it travels and compares as text,
    /// byte for byte.
    RawText(Vec<u8>),
    /// Bytes.
    Blob(Vec<u8>),
}

/// A batch of result rows is sent once its values reach this many bytes
/// (or its row count is reached), so that a batch of large values stays
/// well under every message limit on its way.
pub const PART_BYTES: usize = 1 << 20;

/// Result rows gathered for sending: full at a number of rows or at
/// [`PART_BYTES`] bytes of values, whichever comes first. The one rule
/// every tier batches rows by.
#[derive(Debug)]
pub struct Batch {
    rows: Vec<Vec<Value>>,
    bytes: usize,
    max_rows: usize,
}

impl Batch {
    /// An empty batch of at most `max_rows` rows.
    pub fn new(max_rows: usize) -> Batch {
        Batch { rows: Vec::new(), bytes: 0, max_rows: max_rows.max(1) }
    }

    /// Adds a row; returns the batch's rows when that filled it.
    pub fn push(&mut self, row: Vec<Value>) -> Option<Vec<Vec<Value>>> {
        self.bytes += row.iter().map(Value::size).sum::<usize>();
        self.rows.push(row);
        (self.rows.len() >= self.max_rows || self.bytes >= PART_BYTES).then(|| self.take())
    }

    /// Takes the rows gathered so far (the last, partial batch).
    pub fn take(&mut self) -> Vec<Vec<Value>> {
        self.bytes = 0;
        std::mem::take(&mut self.rows)
    }
}

impl Value {
    /// About how many bytes the value takes on the wire.
    pub fn size(&self) -> usize {
        match self {
            Value::Null => 1,
            Value::Integer(_) | Value::Real(_) => 8,
            Value::Text(t) => t.len(),
            Value::RawText(b) | Value::Blob(b) => b.len(),
        }
    }

    /// The bytes of a text value (valid UTF-8 or not); `None` for others.
    pub fn text_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Text(t) => Some(t.as_bytes()),
            Value::RawText(b) => Some(b),
            _ => None,
        }
    }
}

/// Rows as a protobuf result batch.
pub fn to_rows(rows: Vec<Vec<Value>>) -> pb::Rows {
    pb::Rows { rows: rows.into_iter().map(|r| pb::Row { values: r.into_iter().map(Into::into).collect() }).collect() }
}

/// The rows of a result batch as values.
pub fn rows_from(batch: pb::Rows) -> impl Iterator<Item = Vec<Value>> {
    batch.rows.into_iter().map(|row| row.values.into_iter().map(Value::from).collect())
}

impl From<pb::Value> for Value {
    fn from(v: pb::Value) -> Self {
        use pb::value::Kind;
        match v.kind {
            None => Value::Null,
            Some(Kind::Integer(i)) => Value::Integer(i),
            Some(Kind::Real(r)) => Value::Real(r),
            Some(Kind::Text(t)) => Value::Text(t),
            Some(Kind::RawText(b)) => Value::RawText(b),
            Some(Kind::Blob(b)) => Value::Blob(b),
        }
    }
}

impl From<Value> for pb::Value {
    fn from(v: Value) -> Self {
        use pb::value::Kind;
        let kind = match v {
            Value::Null => None,
            Value::Integer(i) => Some(Kind::Integer(i)),
            Value::Real(r) => Some(Kind::Real(r)),
            Value::Text(t) => Some(Kind::Text(t)),
            Value::RawText(b) => Some(Kind::RawText(b)),
            Value::Blob(b) => Some(Kind::Blob(b)),
        };
        pb::Value { kind }
    }
}

impl From<rusqlite::types::ValueRef<'_>> for Value {
    fn from(v: rusqlite::types::ValueRef<'_>) -> Self {
        use rusqlite::types::ValueRef;
        match v {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Integer(i),
            ValueRef::Real(r) => Value::Real(r),
            ValueRef::Text(t) => match std::str::from_utf8(t) {
                Ok(t) => Value::Text(t.to_string()),
                // SQLite may hold invalid UTF-8 in a TEXT value: kept as is.
                Err(_) => Value::RawText(t.to_vec()),
            },
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        }
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(r) => ValueRef::Real(*r),
            Value::Text(t) => ValueRef::Text(t.as_bytes()),
            Value::RawText(b) => ValueRef::Text(b),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

macro_rules! value_from {
    ($($t:ty => $variant:ident),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self { Value::$variant(v.into()) }
        }
    )*};
}
value_from!(i64 => Integer, i32 => Integer, f64 => Real, String => Text, &str => Text, Vec<u8> => Blob);

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

impl std::fmt::Display for Value {
    /// Formats a value as the shell shows it: NULL, numbers as SQLite
    /// prints them, text as is, blobs as hex literals.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Integer(i) => write!(f, "{i}"),
            Value::Real(r) => write!(f, "{}", format_real(*r)),
            Value::Text(t) => f.write_str(t),
            Value::RawText(b) => f.write_str(&String::from_utf8_lossy(b)),
            Value::Blob(b) => {
                f.write_str("x'")?;
                for byte in b {
                    write!(f, "{byte:02X}")?;
                }
                f.write_str("'")
            }
        }
    }
}

/// Formats a double the way SQLite's `CAST(x AS TEXT)` does for common
/// values: integral values keep a `.0`, others use the shortest
/// representation that round-trips.
pub fn format_real(r: f64) -> String {
    if r.is_finite() && r.fract() == 0.0 && r.abs() < 1e15 {
        format!("{r:.1}")
    } else if r.is_infinite() {
        if r > 0.0 {
            "Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{r}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proto_round_trip() {
        for v in
            [Value::Null, Value::Integer(-7), Value::Real(1.5), Value::Text("héllo".into()), Value::Blob(vec![0, 255])]
        {
            assert_eq!(Value::from(pb::Value::from(v.clone())), v);
        }
    }

    #[test]
    fn batches_fill_by_rows_or_bytes() {
        let mut batch = Batch::new(3);
        assert!(batch.push(vec![Value::Integer(1)]).is_none());
        assert!(batch.push(vec![Value::Integer(2)]).is_none());
        assert_eq!(batch.push(vec![Value::Integer(3)]).map(|r| r.len()), Some(3));
        assert_eq!(batch.push(vec![Value::Blob(vec![0; PART_BYTES])]).map(|r| r.len()), Some(1));
        assert!(batch.take().is_empty());
    }

    #[test]
    fn text_that_is_not_utf8_keeps_its_bytes() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let v: Value =
            conn.query_row("SELECT CAST(x'61ff62' AS TEXT)", [], |r| Ok(Value::from(r.get_ref(0)?))).unwrap();
        assert_eq!(v, Value::RawText(vec![0x61, 0xff, 0x62]));
        assert_eq!(Value::from(pb::Value::from(v.clone())), v);
        let (kind, bytes): (String, Vec<u8>) =
            conn.query_row("SELECT typeof(?1), CAST(?1 AS BLOB)", [&v], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        assert_eq!((kind.as_str(), bytes), ("text", vec![0x61, 0xff, 0x62]));
    }

    #[test]
    fn every_double_survives_protobuf() {
        for r in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0, 0.1, f64::MAX] {
            let Value::Real(back) = Value::from(pb::Value::from(Value::Real(r))) else { panic!() };
            assert_eq!(back.to_bits(), r.to_bits());
        }
    }

    #[test]
    fn display() {
        assert_eq!(Value::Real(2.0).to_string(), "2.0");
        assert_eq!(Value::Blob(vec![0xab, 1]).to_string(), "x'AB01'");
    }
}
