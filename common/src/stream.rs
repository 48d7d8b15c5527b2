//! Reading a statement's result stream, and combining several: the one
//! implementation both tiers use.
//!
//! A result travels as parts (`ResultPart`): columns first (queries only),
//! row batches, then `Done`; an index server may answer with `Fragments`
//! instead of rows. [`PartReader`] reads such a stream row by row without
//! holding it whole. [`Combined`] reads several (one per shard) as one
//! result: concatenated in order, or merged on hidden leading sort-key
//! columns under SQLite's order, with OFFSET/LIMIT applied after the
//! merge. The index server combines shard streams this way when it relays
//! rows; the driver does the same with the fragments it reads directly.
//!
//! The senders build their parts with [`part`], [`columns_part`] and
//! [`rows_part`].
//!
//! Errors keep the stream's own type `E` (the driver tells a server's
//! answer from a broken connection); a stream that ends before its `Done`
//! fails with [`EndedEarly`], converted into `E`.

use std::collections::VecDeque;

use drsdb_proto as pb;
use futures::{Stream, StreamExt};

use crate::command::Column;
use crate::order::{self, SortKey};
use crate::value::{self, Value};
use crate::Error;

/// A part holding `p`.
pub fn part(p: pb::result_part::Part) -> pb::ResultPart {
    pb::ResultPart { part: Some(p) }
}

/// The columns part a query's result starts with.
pub fn columns_part(columns: &[Column]) -> pb::ResultPart {
    part(pb::result_part::Part::Columns(pb::Columns { columns: columns.iter().cloned().map(Into::into).collect() }))
}

/// A part holding a batch of rows.
pub fn rows_part(rows: Vec<Vec<Value>>) -> pb::ResultPart {
    part(pb::result_part::Part::Rows(value::to_rows(rows)))
}

/// A result stream that ended before its `Done` part: the sender died or
/// the connection broke, so the result is incomplete.
#[derive(Debug, Clone, Copy)]
pub struct EndedEarly;

impl From<EndedEarly> for Error {
    fn from(_: EndedEarly) -> Self {
        Error::unavailable("the result stream ended before the result did (the server or the connection failed)")
    }
}

impl From<EndedEarly> for tonic::Status {
    fn from(_: EndedEarly) -> Self {
        tonic::Status::unavailable("the server closed the result stream before the result ended")
    }
}

/// One result stream, read row by row as the consumer asks.
pub struct PartReader<S> {
    /// `None` once the stream has ended (or for a whole result).
    parts: Option<S>,
    columns: Option<Vec<pb::Column>>,
    rows: VecDeque<Vec<Value>>,
    done: Option<pb::Done>,
    fragments: Option<pb::Fragments>,
    snapshot: Option<pb::Snapshot>,
    route: Option<pb::Route>,
}

impl<S, E> PartReader<S>
where
    S: Stream<Item = Result<pb::ResultPart, E>> + Unpin,
    E: From<EndedEarly>,
{
    /// A reader of `parts`.
    pub fn new(parts: S) -> PartReader<S> {
        PartReader {
            parts: Some(parts),
            columns: None,
            rows: VecDeque::new(),
            done: None,
            fragments: None,
            snapshot: None,
            route: None,
        }
    }

    /// A result that is already whole (a read inside a transaction comes
    /// back in the command's result).
    pub fn whole(columns: Vec<pb::Column>, rows: Vec<Vec<Value>>, done: pb::Done) -> PartReader<S> {
        PartReader {
            parts: None,
            columns: Some(columns),
            rows: rows.into(),
            done: Some(done),
            fragments: None,
            snapshot: None,
            route: None,
        }
    }

    /// Reads one more part; false once the stream is over.
    pub async fn pull(&mut self) -> Result<bool, E> {
        let Some(parts) = self.parts.as_mut() else { return Ok(false) };
        match parts.next().await.transpose()? {
            None => {
                self.parts = None;
                if self.done.is_none() {
                    return Err(EndedEarly.into());
                }
            }
            Some(pb::ResultPart { part }) => match part {
                Some(pb::result_part::Part::Columns(c)) => self.columns = Some(c.columns),
                Some(pb::result_part::Part::Rows(r)) => self.rows.extend(value::rows_from(r)),
                Some(pb::result_part::Part::Fragments(f)) => self.fragments = Some(f),
                Some(pb::result_part::Part::Snapshot(s)) => self.snapshot = Some(s),
                Some(pb::result_part::Part::Route(r)) => self.route = Some(r),
                Some(pb::result_part::Part::Done(d)) => {
                    self.done = Some(d);
                    self.parts = None;
                }
                None => {}
            },
        }
        Ok(self.parts.is_some())
    }

    /// Reads until the columns are known, fragments came, or the stream
    /// ended: what a result starts with.
    pub async fn start(&mut self) -> Result<(), E> {
        while self.columns.is_none() && self.fragments.is_none() && self.rows.is_empty() && self.pull().await? {}
        Ok(())
    }

    /// The result's columns (empty for a statement without rows).
    pub async fn columns(&mut self) -> Result<Vec<pb::Column>, E> {
        self.start().await?;
        Ok(self.columns.clone().unwrap_or_default())
    }

    /// The next row, or `None` after the last.
    pub async fn next(&mut self) -> Result<Option<Vec<Value>>, E> {
        loop {
            if let Some(r) = self.rows.pop_front() {
                return Ok(Some(r));
            }
            if !self.pull().await? {
                return Ok(self.rows.pop_front());
            }
        }
    }

    /// The snapshot a storage server's read saw, once its first parts
    /// were read ([`PartReader::start`]).
    pub fn snapshot(&self) -> Option<&pb::Snapshot> {
        self.snapshot.as_ref()
    }

    /// How the statement ended, once its `Done` was read.
    pub fn done(&self) -> Option<&pb::Done> {
        self.done.as_ref()
    }

    /// The fragments an index server answered with, if it did (taken).
    pub fn take_fragments(&mut self) -> Option<pb::Fragments> {
        self.fragments.take()
    }

    /// The route an index server sent before the result, if it did (taken).
    pub fn take_route(&mut self) -> Option<pb::Route> {
        self.route.take()
    }
}

/// Several result streams read as one: concatenated, or merged.
pub struct Combined<S> {
    sources: Vec<PartReader<S>>,
    /// Concatenation: the source being read.
    current: usize,
    /// Merge: the sort keys of the hidden leading columns (empty: concatenate).
    keys: Vec<SortKey>,
    /// Merge: each source's next row, once started.
    heads: Option<Vec<Option<Vec<Value>>>>,
    /// Rows still to skip.
    skip: u64,
    /// Rows still to return, if limited.
    left: Option<u64>,
}

impl<S, E> Combined<S>
where
    S: Stream<Item = Result<pb::ResultPart, E>> + Unpin,
    E: From<EndedEarly>,
{
    /// The sources one after the other, in order.
    pub fn concat(sources: Vec<PartReader<S>>) -> Combined<S> {
        Combined::merge(sources, Vec::new(), 0, None)
    }

    /// The sources, each sorted on leading columns ordered by `keys`,
    /// merged (without those columns); `offset` merged rows skipped, then
    /// at most `limit` returned. No `keys`: concatenation.
    pub fn merge(sources: Vec<PartReader<S>>, keys: Vec<SortKey>, offset: u64, limit: Option<u64>) -> Combined<S> {
        Combined { sources, current: 0, keys, heads: None, skip: offset, left: limit }
    }

    /// The next row of the combined result, or `None` at its end.
    pub async fn next(&mut self) -> Result<Option<Vec<Value>>, E> {
        loop {
            if self.left == Some(0) {
                // Let the senders stop.
                self.sources.clear();
                return Ok(None);
            }
            let Some(row) = self.next_combined().await? else { return Ok(None) };
            if self.skip > 0 {
                self.skip -= 1;
                continue;
            }
            if let Some(left) = &mut self.left {
                *left -= 1;
            }
            return Ok(Some(row));
        }
    }

    async fn next_combined(&mut self) -> Result<Option<Vec<Value>>, E> {
        if self.keys.is_empty() {
            while let Some(source) = self.sources.get_mut(self.current) {
                if let Some(row) = source.next().await? {
                    return Ok(Some(row));
                }
                self.current += 1;
            }
            return Ok(None);
        }
        if self.heads.is_none() {
            let mut heads = Vec::with_capacity(self.sources.len());
            for s in &mut self.sources {
                heads.push(s.next().await?);
            }
            self.heads = Some(heads);
        }
        let heads = self.heads.as_mut().expect("heads set above");
        let Some(i) = order::next_head(&self.keys, heads) else { return Ok(None) };
        let refill = self.sources[i].next().await?;
        let row = std::mem::replace(&mut heads[i], refill).expect("the chosen head is a row");
        Ok(Some(row.into_iter().skip(self.keys.len()).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::Collation;

    type Parts = futures::stream::Iter<std::vec::IntoIter<Result<pb::ResultPart, Error>>>;

    /// A source of integer rows `(key, tag)` in batches of two, ended by
    /// `Done` unless `cut`.
    fn source(keys: &[i64], tag: &str, cut: bool) -> PartReader<Parts> {
        let columns = vec![pb::Column { name: "k".into(), decl_type: String::new() }];
        let mut parts = vec![part(pb::result_part::Part::Columns(pb::Columns { columns }))];
        for chunk in keys.chunks(2) {
            parts.push(rows_part(chunk.iter().map(|k| vec![Value::Integer(*k), Value::Text(tag.into())]).collect()));
        }
        if !cut {
            parts.push(part(pb::result_part::Part::Done(pb::Done::default())));
        }
        PartReader::new(futures::stream::iter(parts.into_iter().map(Ok).collect::<Vec<_>>()))
    }

    async fn all(mut c: Combined<Parts>) -> Result<Vec<String>, Error> {
        let mut out = Vec::new();
        while let Some(row) = c.next().await? {
            out.push(row.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(" "));
        }
        Ok(out)
    }

    #[tokio::test]
    async fn concatenation_keeps_source_order() {
        let c = Combined::concat(vec![source(&[3, 1], "a", false), source(&[], "b", false), source(&[2], "c", false)]);
        assert_eq!(all(c).await.unwrap(), ["3 a", "1 a", "2 c"]);
    }

    #[tokio::test]
    async fn merge_orders_drops_the_keys_and_applies_offset_and_limit() {
        let key = SortKey { collation: Collation::Binary, descending: false, nulls_first: true };
        let sources = || vec![source(&[1, 4, 5], "a", false), source(&[2, 3, 6], "b", false)];
        let merged = Combined::merge(sources(), vec![key], 0, None);
        assert_eq!(all(merged).await.unwrap(), ["a", "b", "b", "a", "a", "b"]);
        let page = Combined::merge(sources(), vec![key], 2, Some(3));
        assert_eq!(all(page).await.unwrap(), ["b", "a", "a"]);
    }

    #[tokio::test]
    async fn a_stream_without_its_done_fails() {
        let c = Combined::concat(vec![source(&[1, 2, 3], "a", true)]);
        let e = all(c).await.unwrap_err();
        assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
    }
}
