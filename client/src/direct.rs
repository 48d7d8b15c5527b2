//! Direct streaming: reading a result's fragments from the storage servers.
//!
//! For a query whose answer is the concatenation or ordered merge of
//! per-shard results, an index server answers with a `Fragments` part
//! instead of rows: per shard, the storage servers holding it (last known
//! leader first) and a ticket, the shard's read signed by the index server.
//! The driver reads every fragment at once, each in its own task that
//! keeps a few result parts ahead (`PARTS_AHEAD`), and hands out rows:
//!
//! - concatenation: fragment after fragment, in shard order (a query
//!   without ORDER BY has no promised order; this one is at least the same
//!   from run to run);
//! - merge: the rows start with hidden sort-key columns; the smallest head
//!   row under SQLite's order (`drsdb_common::order`) goes next, without
//!   those columns, after `offset` rows are skipped, up to `limit`.
//!
//! Both are `drsdb_common::stream::Combined`, the merge the index server
//! uses when it relays rows.
//!
//! Neither the index server nor this process holds the whole result:
//! memory is bounded by the parts in flight per fragment.
//!
//! A fragment is read from its group's leader; a replica that is not the
//! leader (or does not answer) sends the driver to the next, for a few
//! rounds. If a fragment cannot be opened at all the client asks an index
//! server to run the query again and relay the rows (`Client`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drsdb_common::order::SortKey;
use drsdb_common::stream::{Combined, PartReader};
use drsdb_common::tls::{Channels, Dialer};
use drsdb_common::{Error, Result};
use drsdb_proto as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::rows::{Column, Failure, Row, RowStream};

/// Result parts a fragment's task reads ahead of the consumer.
const PARTS_AHEAD: usize = 4;
/// Rounds over a fragment's replicas before giving up on opening it.
const OPEN_ROUNDS: u32 = 3;
/// Pause between rounds (a leader election takes about this long).
const ROUND_PAUSE: Duration = Duration::from_millis(300);
/// Largest message accepted from a storage server.
const MAX_MESSAGE: usize = 64 << 20;
/// How long a fragment may take to produce its first answer (as for a
/// statement sent to an index server).
const FIRST_ANSWER_TIMEOUT: Duration = Duration::from_secs(120);
/// A storage server that could not be reached is tried last for this long.
const TRY_LAST: Duration = Duration::from_secs(30);

/// Connections to storage servers, shared by a client's fragment reads.
#[derive(Clone)]
pub(crate) struct StorageChannels {
    channels: Channels,
    /// Servers that could not be reached, and when.
    unreachable: Arc<Mutex<HashMap<String, Instant>>>,
}

impl StorageChannels {
    pub(crate) fn new(dialer: Dialer) -> StorageChannels {
        StorageChannels { channels: Channels::new(dialer), unreachable: Arc::default() }
    }

    /// `replicas` in the order to try them: as listed, except that servers
    /// unreachable lately come last (a dead leader the index server still
    /// lists first costs a connect timeout once, not on every query).
    fn order(&self, replicas: &[String]) -> Vec<String> {
        let mut unreachable = self.unreachable.lock().expect("unreachable lock");
        unreachable.retain(|_, at| at.elapsed() < TRY_LAST);
        let mut ordered = replicas.to_vec();
        ordered.sort_by_key(|a| unreachable.contains_key(a));
        ordered
    }

    fn client(&self, addr: &str) -> Result<pb::storage_client::StorageClient<Channel>> {
        Ok(pb::storage_client::StorageClient::new(self.channels.get(addr)?).max_decoding_message_size(MAX_MESSAGE))
    }

    /// True when some storage server could not be reached lately.
    pub(crate) fn any_unreachable(&self) -> bool {
        let mut unreachable = self.unreachable.lock().expect("unreachable lock");
        unreachable.retain(|_, at| at.elapsed() < TRY_LAST);
        !unreachable.is_empty()
    }

    /// The error of a call to `addr` that failed with `status`; a server
    /// that could not be reached is remembered so ([`TRY_LAST`]).
    fn failed(&self, addr: &str, status: tonic::Status) -> Error {
        if drsdb_common::error::never_arrived(&status) {
            self.unreachable.lock().expect("unreachable lock").insert(addr.to_string(), Instant::now());
        }
        Error::from(status)
    }

    /// Runs a routed read on `addr` (the leader of its shard, as the route
    /// last knew it). Any failure before the answer began is the caller's
    /// cue to ask an index server instead.
    pub(crate) async fn read_routed(&self, addr: &str, read: pb::RoutedRead) -> Result<RowStream> {
        let answer = async {
            match self.client(addr)?.read_routed(read).await {
                Ok(response) => RowStream::start(response.into_inner()).await.map_err(Failure::into_error),
                Err(status) => Err(self.failed(addr, status)),
            }
        };
        tokio::time::timeout(FIRST_ANSWER_TIMEOUT, answer)
            .await
            .map_err(|_| Error::unavailable(format!("{addr} gave no answer within {FIRST_ANSWER_TIMEOUT:?}")))?
    }

    /// Opens `fragment` on its leader, trying each replica in turn.
    async fn open(&self, fragment: &pb::Fragment) -> Result<tonic::Streaming<pb::ResultPart>> {
        let ticket = fragment.ticket.clone().ok_or_else(|| Error::invalid("a fragment came without its ticket"))?;
        let mut last = Error::unavailable(format!("group {} lists no storage server", fragment.group));
        for round in 0..OPEN_ROUNDS {
            if round > 0 {
                tokio::time::sleep(ROUND_PAUSE).await;
            }
            for addr in self.order(&fragment.replicas) {
                match self.client(&addr)?.read_fragment(ticket.clone()).await {
                    Ok(response) => return Ok(response.into_inner()),
                    Err(status) => {
                        let e = self.failed(&addr, status);
                        tracing::debug!(group = fragment.group, %addr, "fragment not opened: {e}");
                        if !matches!(e, Error::NotLeader { .. } | Error::Unavailable(_)) {
                            return Err(e);
                        }
                        last = e;
                    }
                }
            }
        }
        Err(last)
    }
}

/// Reads one fragment into `tx`, part by part, until it ends, fails, or
/// the consumer goes away (then at once, even while waiting on the
/// storage server: dropping the stream cancels the read there).
async fn pump(channels: StorageChannels, fragment: pb::Fragment, tx: mpsc::Sender<Result<pb::ResultPart>>) {
    let gone = tx.clone();
    tokio::select! {
        _ = gone.closed() => {}
        _ = forward(channels, fragment, tx) => {}
    }
}

async fn forward(channels: StorageChannels, fragment: pb::Fragment, tx: mpsc::Sender<Result<pb::ResultPart>>) {
    let mut stream = match channels.open(&fragment).await {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            return;
        }
    };
    loop {
        let item = match stream.message().await {
            Ok(Some(p)) => Ok(p),
            Ok(None) => Err(Error::unavailable(format!("shard {} closed its result stream early", fragment.group))),
            Err(s) => Err(Error::from(s)),
        };
        let end = !matches!(
            item,
            Ok(pb::ResultPart {
                part: None
                    | Some(
                        pb::result_part::Part::Snapshot(_)
                            | pb::result_part::Part::Columns(_)
                            | pb::result_part::Part::Rows(_)
                    )
            })
        );
        if tx.send(item).await.is_err() || end {
            return;
        }
    }
}

/// One fragment as the consumer sees it: parts its task read ahead.
type Source = PartReader<ReceiverStream<Result<pb::ResultPart>>>;

/// A result read directly from the shards.
pub(crate) struct Direct {
    combined: Combined<ReceiverStream<Result<pb::ResultPart>>>,
}

impl Direct {
    /// Starts reading every fragment and waits for each one's columns;
    /// returns the result's columns (hidden sort keys removed), the reader,
    /// and the snapshots the fragments are read at (to be checked as one
    /// cut before any row is used).
    pub(crate) async fn open(
        channels: &StorageChannels,
        f: pb::Fragments,
    ) -> Result<(Vec<Column>, Direct, Vec<pb::Snapshot>)> {
        let mut sources: Vec<Source> = Vec::with_capacity(f.fragments.len());
        for fragment in f.fragments {
            let (tx, rx) = mpsc::channel(PARTS_AHEAD);
            tokio::spawn(pump(channels.clone(), fragment, tx));
            sources.push(PartReader::new(ReceiverStream::new(rx)));
        }
        let mut columns = Vec::new();
        for s in &mut sources {
            let first = tokio::time::timeout(FIRST_ANSWER_TIMEOUT, s.columns())
                .await
                .map_err(|_| Error::unavailable(format!("a shard gave no answer within {FIRST_ANSWER_TIMEOUT:?}")))?;
            // A shard whose answer is empty may send no columns.
            let shard_columns = first?;
            if !shard_columns.is_empty() {
                columns = shard_columns.into_iter().map(Column::from).collect();
            }
        }
        let snapshots = sources.iter().filter_map(|s| s.snapshot().cloned()).collect();
        let keys: Vec<SortKey> = f.keys.iter().map(SortKey::from).collect();
        columns.drain(..keys.len().min(columns.len()));
        Ok((columns, Direct { combined: Combined::merge(sources, keys, f.offset, f.limit) }, snapshots))
    }

    /// The next row of the combined result, or `None` at its end.
    pub(crate) async fn next(&mut self) -> Result<Option<Row>> {
        Ok(self.combined.next().await?.map(Row::new))
    }
}
