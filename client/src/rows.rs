//! Results as the driver hands them out: typed rows, streamed.

use drsdb_common::stream::PartReader;
use drsdb_common::{Error, Result, Value};
use drsdb_proto as pb;

use crate::direct::{Direct, StorageChannels};

/// A result column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Name as SQLite reports it.
    pub name: String,
    /// Declared type, empty for expressions.
    pub decl_type: String,
}

impl From<pb::Column> for Column {
    fn from(c: pb::Column) -> Self {
        Column { name: c.name, decl_type: c.decl_type }
    }
}

/// How a request to a server failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The server answered with this error.
    Answered(Error),
    /// No answer: the call or its stream broke (the server may have
    /// acted on the request, or died of it).
    Broken(tonic::Status),
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        match drsdb_common::error::is_answer(&status) {
            true => Failure::Answered(Error::from(status)),
            false => Failure::Broken(status),
        }
    }
}

impl Failure {
    /// The error for the caller. A connection that broke while the server
    /// ran the statement leaves its outcome unknown: the statement is not
    /// sent again (it may be what brought the server down).
    pub(crate) fn into_error(self) -> Error {
        use tonic::Code;
        match self {
            Failure::Answered(e) => e,
            Failure::Broken(status) => match status.code() {
                Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled => Error::unavailable(format!(
                    "the connection broke while the server ran the statement ({}); the statement was not sent \
                     again (it may be what brought the server down); if it writes, its outcome is unknown: check \
                     before running it again",
                    status.message()
                )),
                _ => Error::from(status),
            },
        }
    }
}

/// One result row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    values: Vec<Value>,
}

impl Row {
    pub(crate) fn new(values: Vec<Value>) -> Row {
        Row { values }
    }

    /// The values, in column order.
    pub fn values(&self) -> &[Value] {
        &self.values
    }

    /// Takes the values.
    pub fn into_values(self) -> Vec<Value> {
        self.values
    }

    /// The value of column `i` converted to `T`; an error names the column
    /// and the mismatch.
    pub fn get<T: FromValue>(&self, i: usize) -> Result<T> {
        let v = self.values.get(i).ok_or_else(|| {
            Error::invalid(format!("column index {i} out of range; the row has {} columns", self.values.len()))
        })?;
        T::from_value(v).ok_or_else(|| Error::invalid(format!("column {i} holds {v:?}, not a {}", T::NAME)))
    }
}

/// Types a [`Value`] converts into.
pub trait FromValue: Sized {
    /// Type name for errors.
    const NAME: &'static str;
    /// The conversion; `None` when the value has another type.
    fn from_value(v: &Value) -> Option<Self>;
}

impl FromValue for Value {
    const NAME: &'static str = "value";
    fn from_value(v: &Value) -> Option<Self> {
        Some(v.clone())
    }
}

impl FromValue for i64 {
    const NAME: &'static str = "integer";
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Integer(i) => Some(*i),
            _ => None,
        }
    }
}

impl FromValue for f64 {
    const NAME: &'static str = "real";
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Real(r) => Some(*r),
            Value::Integer(i) => Some(*i as f64),
            _ => None,
        }
    }
}

impl FromValue for String {
    const NAME: &'static str = "text";
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Text(t) => Some(t.clone()),
            _ => None,
        }
    }
}

impl FromValue for Vec<u8> {
    const NAME: &'static str = "blob";
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            // Text that is not UTF-8 reads as its bytes.
            Value::Blob(b) | Value::RawText(b) => Some(b.clone()),
            _ => None,
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    const NAME: &'static str = T::NAME;
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Null => Some(None),
            other => T::from_value(other).map(Some),
        }
    }
}

/// How a statement ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Rows inserted, updated or deleted.
    pub rows_affected: u64,
    /// `last_insert_rowid()` after the statement.
    pub last_insert_rowid: i64,
}

/// A statement's rows, read from the network as they are consumed: a large
/// result is never held whole. They come from the index server, or from
/// the storage servers directly (`direct`) when the index server handed
/// out fragments.
pub struct RowStream {
    columns: Vec<Column>,
    /// The index server's answer (for fragments: the fragments, then `Done`).
    answer: PartReader<tonic::Streaming<pb::ResultPart>>,
    /// Fragments the index server answered with, not opened yet.
    fragments: Option<pb::Fragments>,
    direct: Option<Direct>,
}

impl RowStream {
    /// Reads parts until the columns are known, or fragments arrive, or
    /// the statement is done.
    pub(crate) async fn start(stream: tonic::Streaming<pb::ResultPart>) -> std::result::Result<RowStream, Failure> {
        let mut answer = PartReader::new(stream);
        answer.start().await?;
        let fragments = answer.take_fragments();
        if fragments.is_some() {
            // Fragments come alone, then Done.
            while answer.pull().await? {}
        }
        let columns = answer.columns().await?.into_iter().map(Column::from).collect();
        Ok(RowStream { columns, answer, fragments, direct: None })
    }

    /// The route the index server sent with the result, if any (taken).
    pub(crate) fn take_route(&mut self) -> Option<pb::Route> {
        self.answer.take_route()
    }

    /// True when the index server answered with fragments, not opened yet.
    pub(crate) fn has_fragments(&self) -> bool {
        self.fragments.is_some()
    }

    /// Opens the fragments the index server handed out; afterwards rows
    /// come from the storage servers.
    /// Returns the snapshots the fragments are read at.
    pub(crate) async fn open_fragments(&mut self, channels: &StorageChannels) -> Result<Vec<pb::Snapshot>> {
        let Some(fragments) = self.fragments.take() else { return Ok(Vec::new()) };
        let (columns, direct, snapshots) = Direct::open(channels, fragments).await?;
        self.columns = columns;
        self.direct = Some(direct);
        Ok(snapshots)
    }

    /// True when the rows come straight from the storage servers.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// The result's columns (empty for statements without rows).
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// The next row, or `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Row>> {
        if let Some(direct) = &mut self.direct {
            return direct.next().await;
        }
        if self.fragments.is_some() {
            return Err(Error::io("the result's fragments were not opened (a bug in the driver)"));
        }
        let row = self.answer.next().await.map_err(|s| Failure::from(s).into_error())?;
        Ok(row.map(Row::new))
    }

    /// Reads the rest of the rows into memory.
    pub async fn collect(mut self) -> Result<ResultSet> {
        let mut rows = Vec::new();
        while let Some(r) = self.next().await? {
            rows.push(r);
        }
        let summary = self.summary().unwrap_or_default();
        Ok(ResultSet { columns: self.columns, rows, summary })
    }

    /// The transaction open after the statement and the shards it holds,
    /// if its `Done` names one.
    pub(crate) fn txn(&self) -> Option<(String, Vec<u64>)> {
        self.answer.done().filter(|d| !d.txn_id.is_empty()).map(|d| (d.txn_id.clone(), d.txn_groups.clone()))
    }

    /// This result read whole (so that its `Done` is known).
    pub(crate) async fn read_whole(mut self) -> Result<RowStream> {
        let mut rows = Vec::new();
        while let Some(r) = self.next().await? {
            rows.push(r.into_values());
        }
        let done = self.answer.done().cloned().unwrap_or_default();
        let columns = self.columns.iter().map(|c| pb::Column { name: c.name.clone(), decl_type: c.decl_type.clone() });
        Ok(RowStream {
            answer: PartReader::whole(columns.collect(), rows, done),
            columns: self.columns,
            fragments: None,
            direct: None,
        })
    }

    /// How the statement ended; `None` until the stream is consumed.
    pub fn summary(&self) -> Option<Summary> {
        self.answer.done().map(|d| Summary { rows_affected: d.rows_affected, last_insert_rowid: d.last_insert_rowid })
    }
}

/// A whole result in memory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResultSet {
    /// Result columns.
    pub columns: Vec<Column>,
    /// Result rows.
    pub rows: Vec<Row>,
    /// How the statement ended.
    pub summary: Summary,
}
