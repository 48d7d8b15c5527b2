//! SQLite's order of values: how ORDER BY, MIN/MAX and comparisons rank
//! values of any storage class, under a collation.
//!
//! NULL comes first, then numbers (integers and reals by value), then
//! text (under the collation), then blobs (byte-wise). Merging per-shard
//! sorted results with this order gives the rows one database would have
//! sorted, ties aside.

use std::cmp::Ordering;

use crate::value::Value;

/// How text compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collation {
    /// Byte-wise (SQLite's default).
    Binary,
    /// ASCII letters compare without case.
    NoCase,
    /// Trailing spaces are ignored.
    RTrim,
}

impl Collation {
    /// This collation on the wire.
    pub fn to_pb(self) -> drsdb_proto::sort_key::Collation {
        use drsdb_proto::sort_key::Collation as C;
        match self {
            Collation::Binary => C::Binary,
            Collation::NoCase => C::Nocase,
            Collation::RTrim => C::Rtrim,
        }
    }

    /// The collation numbered `n` on the wire; `None` for a number this
    /// version does not know.
    pub fn from_pb(n: i32) -> Option<Collation> {
        use drsdb_proto::sort_key::Collation as C;
        match C::try_from(n).ok()? {
            C::Binary => Some(Collation::Binary),
            C::Nocase => Some(Collation::NoCase),
            C::Rtrim => Some(Collation::RTrim),
        }
    }

    /// SQLite's collation of that name (case-insensitive, quotes allowed);
    /// names SQLite does not know are not possible in a statement it
    /// accepted, and count as BINARY.
    pub fn from_name(name: &str) -> Collation {
        let name = name.trim_matches(|c| c == '"' || c == '\'' || c == '`');
        if name.eq_ignore_ascii_case("NOCASE") {
            Collation::NoCase
        } else if name.eq_ignore_ascii_case("RTRIM") {
            Collation::RTrim
        } else {
            Collation::Binary
        }
    }

    /// Its name in SQL.
    pub fn name(self) -> &'static str {
        match self {
            Collation::Binary => "BINARY",
            Collation::NoCase => "NOCASE",
            Collation::RTrim => "RTRIM",
        }
    }

    /// Compares two texts, by their bytes as SQLite does (they need not
    /// be valid UTF-8).
    pub fn compare(self, a: &[u8], b: &[u8]) -> Ordering {
        self.fold(a).cmp(&self.fold(b))
    }

    /// What the collation compares of a text: its bytes, with ASCII
    /// letters in lower case (NOCASE) or trailing spaces dropped (RTRIM).
    pub fn fold<'a>(self, text: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        match self {
            Collation::Binary => text.into(),
            Collation::NoCase => text.to_ascii_lowercase().into(),
            Collation::RTrim => {
                let end = text.iter().rposition(|&c| c != b' ').map_or(0, |i| i + 1);
                text[..end].into()
            }
        }
    }
}

/// Compares two values as SQLite does, text under `collation`.
pub fn compare(a: &Value, b: &Value, collation: Collation) -> Ordering {
    use Value::*;
    fn class(v: &Value) -> u8 {
        match v {
            Null => 0,
            Integer(_) | Real(_) => 1,
            Text(_) | RawText(_) => 2,
            Blob(_) => 3,
        }
    }
    match (a, b) {
        (Integer(x), Integer(y)) => x.cmp(y),
        (Real(x), Real(y)) => x.partial_cmp(y).unwrap_or(Ordering::Equal),
        (Integer(i), Real(r)) => integer_real(*i, *r),
        (Real(r), Integer(i)) => integer_real(*i, *r).reverse(),
        (Blob(x), Blob(y)) => x.cmp(y),
        _ => match (a.text_bytes(), b.text_bytes()) {
            (Some(x), Some(y)) => collation.compare(x, y),
            _ => class(a).cmp(&class(b)),
        },
    }
}

/// An integer against a real, exactly (no rounding of large integers).
fn integer_real(i: i64, r: f64) -> Ordering {
    /// 2⁶³, the first real above every i64.
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if r < -TWO_63 {
        return Ordering::Greater;
    }
    if r >= TWO_63 {
        return Ordering::Less;
    }
    // `r` is in range: truncate, then settle the fraction.
    match i.cmp(&(r as i64)) {
        Ordering::Equal => (i as f64).partial_cmp(&r).unwrap_or(Ordering::Equal),
        other => other,
    }
}

/// One key of a sort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortKey {
    /// How text compares.
    pub collation: Collation,
    /// `DESC`.
    pub descending: bool,
    /// NULLs before other values (SQLite's default for ascending keys,
    /// `NULLS FIRST`/`NULLS LAST` otherwise).
    pub nulls_first: bool,
}

impl SortKey {
    /// Compares two values under this key.
    pub fn compare(&self, a: &Value, b: &Value) -> Ordering {
        match (a, b) {
            (Value::Null, Value::Null) => Ordering::Equal,
            (Value::Null, _) => {
                if self.nulls_first {
                    Ordering::Less
                } else {
                    Ordering::Greater
                }
            }
            (_, Value::Null) => {
                if self.nulls_first {
                    Ordering::Greater
                } else {
                    Ordering::Less
                }
            }
            _ => {
                let o = compare(a, b, self.collation);
                if self.descending {
                    o.reverse()
                } else {
                    o
                }
            }
        }
    }
}

impl From<SortKey> for drsdb_proto::SortKey {
    fn from(k: SortKey) -> Self {
        drsdb_proto::SortKey {
            collation: k.collation.to_pb() as i32,
            descending: k.descending,
            nulls_first: k.nulls_first,
        }
    }
}

impl From<&drsdb_proto::SortKey> for SortKey {
    /// A collation number this version does not know reads as BINARY.
    fn from(k: &drsdb_proto::SortKey) -> Self {
        let collation = Collation::from_pb(k.collation).unwrap_or(Collation::Binary);
        SortKey { collation, descending: k.descending, nulls_first: k.nulls_first }
    }
}

/// Compares two rows on their leading sort keys.
pub fn compare_rows(keys: &[SortKey], a: &[Value], b: &[Value]) -> Ordering {
    keys.iter().zip(a.iter().zip(b)).map(|(k, (x, y))| k.compare(x, y)).find(|o| o.is_ne()).unwrap_or(Ordering::Equal)
}

/// Which of several sorted streams' head rows comes next in a merge: the
/// smallest under `keys` (the first of equals); `None` when every stream
/// has ended.
pub fn next_head(keys: &[SortKey], heads: &[Option<Vec<Value>>]) -> Option<usize> {
    heads
        .iter()
        .enumerate()
        .filter_map(|(i, h)| h.as_ref().map(|r| (i, r)))
        .min_by(|(_, a), (_, b)| compare_rows(keys, a, b))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Value::*;

    #[test]
    fn storage_classes_rank_like_sqlite() {
        let ranked =
            [Null, Integer(-5), Real(-4.5), Integer(3), Real(3.5), Text("A".into()), Text("a".into()), Blob(vec![0])];
        for (i, a) in ranked.iter().enumerate() {
            for (j, b) in ranked.iter().enumerate() {
                assert_eq!(compare(a, b, Collation::Binary), i.cmp(&j), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn integers_and_reals_compare_exactly() {
        assert_eq!(compare(&Integer(1), &Real(1.0), Collation::Binary), Ordering::Equal);
        // 2^53 + 1 is not representable as a real: the integer is larger.
        assert_eq!(compare(&Integer((1 << 53) + 1), &Real((1u64 << 53) as f64), Collation::Binary), Ordering::Greater);
        assert_eq!(compare(&Integer(i64::MAX), &Real(9.3e18), Collation::Binary), Ordering::Less);
        assert_eq!(compare(&Integer(i64::MIN), &Real(-9.3e18), Collation::Binary), Ordering::Greater);
        assert_eq!(compare(&Integer(-1), &Real(-0.5), Collation::Binary), Ordering::Less);
    }

    #[test]
    fn collations_compare_text() {
        assert_eq!(Collation::NoCase.compare(b"abc", b"ABC"), Ordering::Equal);
        assert_eq!(Collation::NoCase.compare(b"ab", b"ABC"), Ordering::Less);
        assert_eq!(Collation::Binary.compare(b"B", b"a"), Ordering::Less);
        assert_eq!(Collation::NoCase.compare(b"B", b"a"), Ordering::Greater);
        assert_eq!(Collation::RTrim.compare(b"x  ", b"x"), Ordering::Equal);
        assert_eq!(Collation::from_name("\"nocase\""), Collation::NoCase);
    }

    #[test]
    fn sort_keys_place_nulls_and_reverse() {
        let asc = SortKey { collation: Collation::Binary, descending: false, nulls_first: true };
        let desc = SortKey { descending: true, nulls_first: false, ..asc };
        assert_eq!(asc.compare(&Null, &Integer(1)), Ordering::Less);
        assert_eq!(desc.compare(&Null, &Integer(1)), Ordering::Greater);
        assert_eq!(desc.compare(&Integer(2), &Integer(1)), Ordering::Less);
        assert_eq!(compare_rows(&[asc, desc], &[Integer(1), Integer(2)], &[Integer(1), Integer(3)]), Ordering::Greater);
    }
}
