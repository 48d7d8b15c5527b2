//! The connection to a cluster: a rotation of index servers, failover,
//! and the open transaction.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use drsdb_common::config::TlsConfig;
use drsdb_common::shard::KeyRoute;
use drsdb_common::sql::{self, Kind};
use drsdb_common::tls::Dialer;
use drsdb_common::{Error, Result, Value};
use drsdb_proto as pb;
use tonic::transport::Channel;

use crate::direct::StorageChannels;
use crate::rows::{Failure, ResultSet, RowStream};
use crate::syntax;

/// Failures after which an index server leaves the rotation.
const MAX_FAILURES: u32 = 2;
/// A dropped server stays out of refreshed rotations this long (the
/// cluster may still list it until its announcements expire).
const QUARANTINE: Duration = Duration::from_secs(30);
/// Largest message accepted from an index server.
const MAX_MESSAGE: usize = 64 << 20;
/// How long asking an index server for the live list may take.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a statement may take to produce its first answer (a write may
/// wait for a transaction holding its group, or for a leader election).
const FIRST_ANSWER_TIMEOUT: Duration = Duration::from_secs(120);
/// How often an autocommit statement that lost a conflict (a retryable
/// error: it applied nothing) is run again, the pause before the first
/// time (doubling after each, jittered) and the longest pause.
const CONFLICT_RETRIES: u32 = 12;
const CONFLICT_PAUSE: Duration = Duration::from_millis(10);
const CONFLICT_LONGEST_PAUSE: Duration = Duration::from_millis(320);
/// How often a read over several shards is read again when its fragments'
/// snapshots are not one consistent cut, the pause before the second try
/// and the longest pause.
const CUT_TRIES: u32 = 10;
const CUT_PAUSE: Duration = Duration::from_millis(2);
const CUT_LONGEST_PAUSE: Duration = Duration::from_millis(50);
/// An abandoned transaction's ROLLBACK is tried for this long (a shard
/// rolls back an idle transaction after `txn_idle_timeout_ms`, 30 s by
/// default).
const ROLLBACK_RETRY_FOR: Duration = Duration::from_secs(30);
/// Routes a session keeps (one per statement text); when full, it starts
/// over.
const MAX_ROUTES: usize = 1024;
/// After the storage servers could not be reached for a direct read, the
/// session asks for relayed rows this long before trying again.
const RELAY_AFTER_UNREACHABLE: Duration = Duration::from_secs(30);

struct Server {
    addr: String,
    failures: u32,
    client: pb::sql_client::SqlClient<Channel>,
}

/// What became of a transaction ([`Client::transaction_outcome`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Committed: its writes are there.
    Committed,
    /// Rolled back: none of its writes are.
    Aborted,
}

/// A transaction open in a session: its id and the shards it holds, as
/// the last `Done` of it said (the index servers keep no transaction
/// state: each statement carries it), and its hold.
#[derive(Debug)]
struct OpenTxn {
    id: String,
    groups: Vec<u64>,
    hold: Hold,
}

/// A transaction's hold on an index server (`Sql.Hold`), kept while the
/// transaction is open. When it ends without [`Hold::release`] (the
/// `Client` was dropped, the process ended, the connection broke), that
/// index server rolls the transaction back at once, rather than the
/// shards at their idle timeout.
#[derive(Debug)]
struct Hold(tokio::sync::mpsc::Sender<pb::HoldRequest>);

impl Hold {
    /// Holds transaction `id` through `server`.
    fn start(server: &pb::sql_client::SqlClient<Channel>, id: &str) -> Hold {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let first = pb::HoldRequest { txn_id: id.to_string(), release: false };
        tx.try_send(first).expect("a new channel has room");
        let mut server = server.clone();
        tokio::spawn(async move {
            if let Err(e) = server.hold(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
                tracing::debug!("transaction hold ended: {e}");
            }
        });
        Hold(tx)
    }

    /// Whether the hold ended already (its index server went away).
    fn lost(&self) -> bool {
        self.0.is_closed()
    }

    /// Ends the hold, leaving the transaction as it is (it ended).
    fn release(self) {
        let _ = self.0.try_send(pb::HoldRequest { txn_id: String::new(), release: true });
    }
}

/// A client of a drsdb cluster.
///
/// Statements go to the index servers in turn. A server that fails is
/// skipped; one that fails twice leaves the rotation, and the rotation is
/// refreshed from a live index server. A statement is re-sent to the next
/// server only when that is safe: it never reached the failed one, or it
/// only reads, or it is a write the cluster deduplicates by request id
/// (every statement outside a transaction). A `Client` is one session: `BEGIN` opens a transaction that
/// its next statements belong to, whichever index server they reach.
pub struct Client {
    dialer: Dialer,
    seeds: Vec<String>,
    rotation: Vec<Server>,
    /// Servers dropped from the rotation, and when.
    dropped: HashMap<String, Instant>,
    next: usize,
    /// The open transaction, if any.
    txn: Option<OpenTxn>,
    /// This session's id, the prefix of its request ids.
    session: String,
    /// Statements sent so far (the suffix of request ids).
    sent: u64,
    /// Connections for reading fragments from storage servers.
    storage: StorageChannels,
    /// Whether this session reads fragments itself (see [`Client::set_direct`]).
    direct: bool,
    /// Until when the session asks for relayed rows because the storage
    /// servers were not reachable.
    relay_until: Option<Instant>,
    /// Routes of reads pinned to one shard by their parameters, by
    /// statement text.
    routes: HashMap<String, Route>,
}

/// A read's route (`pb::Route`): its signed statement, how its parameters
/// pick its shard, and each shard's storage servers (leader first).
struct Route {
    ticket: pb::Ticket,
    key: KeyRoute,
    shards: Vec<Vec<String>>,
}

impl Route {
    /// The route the index server sent, if this version can follow it.
    fn from_pb(r: pb::Route) -> Option<Route> {
        let key = KeyRoute::try_from(&r.key?).ok()?;
        let shards: Vec<Vec<String>> = r.shards.into_iter().map(|s| s.addrs).collect();
        (shards.len() == key.shards).then_some(Route { ticket: r.ticket?, key, shards })
    }
}

impl Client {
    /// Connects to the cluster through `servers` (index server addresses,
    /// `host:port`), authenticating with `tls`. Fails if none answers.
    pub async fn connect(servers: &[String], tls: &TlsConfig) -> Result<Client> {
        if servers.is_empty() {
            return Err(Error::invalid("no index server address given"));
        }
        let mut client = Client::new(Dialer::new(tls)?, servers.to_vec());
        client.set_rotation(servers.to_vec())?;
        client.refresh().await?;
        Ok(client)
    }

    /// A session with no rotation yet.
    fn new(dialer: Dialer, seeds: Vec<String>) -> Client {
        Client {
            storage: StorageChannels::new(dialer.clone()),
            direct: true,
            relay_until: None,
            routes: HashMap::new(),
            dialer,
            seeds,
            rotation: Vec::new(),
            dropped: HashMap::new(),
            next: 0,
            txn: None,
            session: ulid::Ulid::generate().to_string(),
            sent: 0,
        }
    }

    /// Makes `addrs` the rotation, leaving out recently dropped servers
    /// unless nothing else remains.
    fn set_rotation(&mut self, addrs: Vec<String>) -> Result<()> {
        self.dropped.retain(|_, at| at.elapsed() < QUARANTINE);
        let healthy: Vec<String> = addrs.iter().filter(|a| !self.dropped.contains_key(*a)).cloned().collect();
        let addrs = if healthy.is_empty() { addrs } else { healthy };
        let mut rotation = Vec::with_capacity(addrs.len());
        for addr in addrs {
            let client = pb::sql_client::SqlClient::new(self.dialer.lazy(&addr)?)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE);
            rotation.push(Server { addr, failures: 0, client });
        }
        self.rotation = rotation;
        self.next = 0;
        Ok(())
    }

    /// Replaces the rotation with the index servers a live one reports.
    pub async fn refresh(&mut self) -> Result<()> {
        let mut candidates: Vec<String> = self.rotation.iter().map(|s| s.addr.clone()).collect();
        for s in &self.seeds {
            if !candidates.contains(s) {
                candidates.push(s.clone());
            }
        }
        let mut last = Error::unavailable("no index server known");
        for addr in candidates {
            let mut c = pb::sql_client::SqlClient::new(self.dialer.lazy(&addr)?);
            let mut request = tonic::Request::new(pb::IndexServersRequest {});
            request.set_timeout(REFRESH_TIMEOUT);
            match c.index_servers(request).await {
                Ok(r) => {
                    let mut addrs = r.into_inner().addrs;
                    if addrs.is_empty() {
                        // The cluster has not recorded any yet; keep this one.
                        addrs.push(addr);
                    }
                    return self.set_rotation(addrs);
                }
                Err(e) => last = Error::from(e),
            }
        }
        Err(Error::unavailable(format!("cannot reach any index server: {last}")))
    }

    /// Another session on the same cluster: the same index servers and
    /// credentials, connections and transaction state of its own.
    pub fn session(&self) -> Result<Client> {
        let mut session = Client::new(self.dialer.clone(), self.seeds.clone());
        session.direct = self.direct;
        session.set_rotation(self.servers())?;
        Ok(session)
    }

    /// How `table`'s rows are spread over the shards, asked of the index
    /// servers in turn.
    pub(crate) async fn table_layout(&mut self, table: &str) -> Result<pb::TableLayoutResponse> {
        let request = pb::TableLayoutRequest { table: table.to_string() };
        let mut last = Error::unavailable("no index server in the rotation");
        for server in &mut self.rotation {
            match server.client.table_layout(request.clone()).await.map_err(Error::from) {
                Ok(layout) => return Ok(layout.into_inner()),
                Err(e @ Error::Unavailable(_)) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// The index servers in the rotation.
    pub fn servers(&self) -> Vec<String> {
        self.rotation.iter().map(|s| s.addr.clone()).collect()
    }

    /// Whether results the index server can hand out as fragments are read
    /// from the storage servers directly (the default) or relayed by the
    /// index server (`false`: for clients that cannot reach the storage
    /// servers). A direct read that cannot reach them falls back to
    /// relaying by itself.
    pub fn set_direct(&mut self, direct: bool) {
        self.direct = direct;
    }

    /// True while a transaction is open.
    pub fn in_transaction(&self) -> bool {
        self.txn.is_some()
    }

    /// Runs one statement and returns its rows as a stream.
    pub async fn query(&mut self, statement: &str, params: &[Value]) -> Result<RowStream> {
        self.query_rows(statement, params.iter().cloned().map(Into::into).collect(), 0).await
    }

    /// Runs `statement`, an INSERT whose VALUES is one row, once for each
    /// of `rows` (its parameters), as one statement: atomic, and in one
    /// round trip. The statement is parsed once, not once per row, which
    /// makes this the fastest way to write many rows ([`crate::Loader`]
    /// sends its batches so).
    pub async fn execute_many(&mut self, statement: &str, rows: &[Vec<Value>]) -> Result<ResultSet> {
        let Some(width) = rows.first().map(Vec::len) else {
            return Err(Error::invalid("execute_many needs at least one row"));
        };
        if let Some(bad) = rows.iter().position(|r| r.len() != width) {
            return Err(Error::invalid(format!(
                "row {} has {} values, the first has {width}: every row gives the same parameters",
                bad + 1,
                rows[bad].len()
            )));
        }
        let params = rows.iter().flatten().cloned().map(Into::into).collect();
        let batch = u32::try_from(rows.len()).map_err(|_| Error::invalid("too many rows for one statement"))?;
        self.query_rows(statement, params, batch).await?.collect().await
    }

    /// [`Client::query`] with its parameters on the wire already, and
    /// `batch_rows` rows of them when not 0.
    async fn query_rows(&mut self, text: &str, params: Vec<pb::Value>, batch_rows: u32) -> Result<RowStream> {
        self.relay_until = self.relay_until.filter(|t| Instant::now() < *t);
        // A read outside a transaction may run on its shard directly,
        // through a route an index server handed out for the same text
        // (which was checked then, and found to be a read).
        let routable = self.txn.is_none() && batch_rows == 0 && self.direct && self.relay_until.is_none();
        if routable {
            if let Some(rows) = self.read_routed(text, &params).await {
                return Ok(rows);
            }
        }
        sql::check_length(text)?;
        let statements = sql::split_script(text)?;
        let [statement] = statements.as_slice() else {
            return Err(Error::invalid(format!(
                "expected one statement, got {}; use execute_script for several",
                statements.len()
            )));
        };
        let kind = syntax::check(statement)?;
        self.sent += 1;
        let req = pb::ExecuteRequest {
            sql: statement.clone(),
            params,
            txn_id: self.txn.as_ref().map(|t| t.id.clone()).unwrap_or_default(),
            // Led by a ULID of this first try: a statement that runs as a
            // transaction of its own keeps its age across retries (so it
            // wins wound-wait in the end).
            request_id: format!("{}-{}-{}", ulid::Ulid::generate(), self.session, self.sent),
            accept_fragments: self.direct && self.relay_until.is_none(),
            txn_groups: self.txn.as_ref().map(|t| t.groups.clone()).unwrap_or_default(),
            batch_rows,
            // A route kept for the text stays (these parameters needed SQLite).
            want_route: routable && kind == Kind::Read && !self.routes.contains_key(text),
        };
        // Outside a transaction a statement may be sent again after a lost
        // reply: reads are harmless, writes are deduplicated by request id.
        // Transaction statements are not (their order matters).
        let resendable = self.txn.is_none() && !kind.is_transaction_control();
        let mut result = self.attempt(&req, resendable).await;
        // A conflict (another transaction won the shard) applied nothing:
        // an autocommit statement runs again, under the same request id.
        let mut pause = CONFLICT_PAUSE;
        for _ in 0..CONFLICT_RETRIES {
            match &result {
                Err(Error::Retryable(m)) if resendable => tracing::debug!("conflict, running the statement again: {m}"),
                _ => break,
            }
            // Jittered, so that statements that conflicted do not meet again.
            tokio::time::sleep(pause.mul_f64(0.5 + rand::random::<f64>())).await;
            pause = (pause * 2).min(CONFLICT_LONGEST_PAUSE);
            result = self.attempt(&req, resendable).await;
        }
        match (kind, self.txn.take()) {
            (Kind::Begin, None) => {
                if let Some((id, groups)) = result.as_ref().ok().and_then(|rs| rs.txn()) {
                    let hold = match self.rotation.get(self.next.saturating_sub(1) % self.rotation.len().max(1)) {
                        Some(server) => Hold::start(&server.client, &id),
                        None => return Err(Error::unavailable("no index server left to hold the transaction")),
                    };
                    self.txn = Some(OpenTxn { id, groups, hold });
                }
            }
            (Kind::Commit | Kind::Rollback, Some(txn)) => match result {
                Ok(_) => txn.hold.release(),
                // Whatever went wrong (a shard that did not confirm, a lost
                // reply), shards where the transaction is still open are
                // released now rather than at their idle timeout.
                Err(e) => {
                    let id = txn.id.clone();
                    self.abandon(txn);
                    // The index server names the command when it could not
                    // learn the outcome; the driver, when no answer came.
                    let ask = |m: String| match m.contains("SHOW TRANSACTION") {
                        true => m,
                        false => format!(
                            "{m} (transaction {id}: `SHOW TRANSACTION {id}`, or Client::transaction_outcome, says \
                             whether it committed)"
                        ),
                    };
                    return Err(match (kind, e) {
                        (Kind::Commit, Error::Unavailable(m)) => Error::Unavailable(ask(m)),
                        (Kind::Commit, Error::Io(m)) => Error::Io(ask(m)),
                        (_, e) => e,
                    });
                }
            },
            (_, Some(txn)) => match result {
                // The shards the transaction holds now come with the
                // statement's end, so its result is read whole.
                Ok(rows) => match rows.read_whole().await {
                    Ok(rows) => {
                        self.txn = Some(match rows.txn() {
                            Some((_, groups)) => OpenTxn { groups, ..txn },
                            None => txn,
                        });
                        return Ok(rows);
                    }
                    Err(e) => return Err(self.abandoned(txn, e)),
                },
                // The statement's own error leaves the transaction open,
                // as in SQLite; any other ended it (the index server rolled
                // it back, or the outcome is unknown).
                Err(Error::InvalidInput(m)) => {
                    self.txn = Some(txn);
                    return Err(Error::InvalidInput(m));
                }
                Err(e) => return Err(self.abandoned(txn, e)),
            },
            (_, txn) => self.txn = txn,
        }
        if let Some(route) = result.as_mut().ok().and_then(RowStream::take_route).and_then(Route::from_pb) {
            if self.routes.len() >= MAX_ROUTES {
                self.routes.clear();
            }
            self.routes.insert(text.to_string(), route);
        }
        result
    }

    /// Runs a read on its shard's leader through the route kept for
    /// `text`. `None` when there is none, or its parameters need SQLite to
    /// pick the shard, or the read failed before its answer began (a new
    /// leader, a schema change, an expired route, a server down: the route
    /// is dropped; when a storage server could not be reached, the session
    /// asks for relayed rows for a while): then an index server runs it.
    async fn read_routed(&mut self, text: &str, params: &[pb::Value]) -> Option<RowStream> {
        let route = self.routes.get(text)?;
        let values: Vec<Value> = params.iter().cloned().map(Value::from).collect();
        let leader = route.shards.get(route.key.shard(&values)?)?.first()?;
        let read = pb::RoutedRead { ticket: Some(route.ticket.clone()), params: params.to_vec() };
        match self.storage.read_routed(leader, read).await {
            Ok(rows) => Some(rows),
            Err(e) => {
                tracing::debug!(%leader, "routed read failed, asking an index server: {e}");
                self.routes.remove(text);
                // As for fragments: storage servers out of reach are not
                // tried again for a while.
                if self.storage.any_unreachable() {
                    self.relay_until = Some(Instant::now() + RELAY_AFTER_UNREACHABLE);
                }
                None
            }
        }
    }

    /// Sends `req` (failing over when safe), opening the fragments of a
    /// direct result; when they cannot be read, asks for the rows relayed.
    ///
    /// Fragments over several shards are used only once an index server
    /// found their snapshots one consistent cut (no transaction committed
    /// on some of those shards and not on others); otherwise the statement
    /// is read again, and after [`CUT_TRIES`] tries relayed (the index
    /// server then checks the cut itself).
    async fn attempt(&mut self, req: &pb::ExecuteRequest, resendable: bool) -> Result<RowStream> {
        let mut pause = CUT_PAUSE;
        for _ in 0..CUT_TRIES {
            let mut rows = self.send(req.clone(), resendable).await?;
            if !rows.has_fragments() {
                return Ok(rows);
            }
            match rows.open_fragments(&self.storage).await {
                Ok(snapshots) if snapshots.len() < 2 => return Ok(rows),
                Ok(snapshots) => match self.consistent(snapshots).await {
                    Some(true) => return Ok(rows),
                    Some(false) => {}
                    None => break,
                },
                // Only reads outside transactions come as fragments, so
                // running it again is safe; relayed, the index server also
                // deals with what stopped the fragments (a schema change,
                // an expired ticket).
                Err(e) => {
                    tracing::warn!("reading shards directly failed ({e}); asking the index server to relay the rows");
                    if self.storage.any_unreachable() {
                        self.relay_until = Some(Instant::now() + RELAY_AFTER_UNREACHABLE);
                    }
                    break;
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(CUT_LONGEST_PAUSE);
        }
        self.send(pb::ExecuteRequest { accept_fragments: false, ..req.clone() }, resendable).await
    }

    /// Asks the index servers whether `snapshots` form one consistent cut;
    /// `None` when none could say.
    async fn consistent(&mut self, snapshots: Vec<pb::Snapshot>) -> Option<bool> {
        let request = pb::Snapshots { snapshots };
        for server in &mut self.rotation {
            match server.client.check_snapshots(request.clone()).await {
                Ok(answer) => return Some(answer.into_inner().consistent),
                Err(e) => tracing::debug!(server = %server.addr, "cannot check snapshots: {e}"),
            }
        }
        None
    }

    /// Rolls back `txn` after `e` ended it, and says so.
    fn abandoned(&mut self, txn: OpenTxn, e: Error) -> Error {
        self.abandon(txn);
        match e {
            Error::Retryable(m) if m.contains("rolled back") => Error::Retryable(m),
            e @ (Error::Retryable(_) | Error::Unavailable(_) | Error::Io(_)) => {
                e.noted("the transaction was rolled back")
            }
            other => other,
        }
    }

    /// Rolls back transaction `txn`, whose state is unknown (rolling back a
    /// transaction that already ended changes nothing), without waiting:
    /// in the background, trying the index servers in turn for up to
    /// [`ROLLBACK_RETRY_FOR`] (a shard that does not answer, or an index
    /// server restarting, would otherwise hold up the session's next
    /// statements; the shards roll it back at their idle timeout anyway).
    ///
    /// Its hold ends unreleased, so the index server holding it ends it on
    /// every shard too, even one a statement whose answer was lost opened
    /// without this session hearing of it. If that server died (with the
    /// statement, perhaps), another is asked to, by a hold ended at once.
    fn abandon(&mut self, txn: OpenTxn) {
        let OpenTxn { id, groups, hold } = txn;
        let lost = hold.lost();
        drop(hold);
        let servers: Vec<pb::sql_client::SqlClient<Channel>> = self.rotation.iter().map(|s| s.client.clone()).collect();
        self.sent += 1;
        let req = pb::ExecuteRequest {
            sql: "ROLLBACK".into(),
            params: Vec::new(),
            txn_id: id,
            request_id: format!("{}-{}", self.session, self.sent),
            accept_fragments: false,
            txn_groups: groups,
            batch_rows: 0,
            want_route: false,
        };
        let first = self.next;
        tokio::spawn(async move {
            let deadline = Instant::now() + ROLLBACK_RETRY_FOR;
            let mut pause = CONFLICT_PAUSE;
            for mut server in servers.into_iter().cycle().skip(first) {
                let done = match server.execute(req.clone()).await {
                    Ok(answer) => match RowStream::start(answer.into_inner()).await {
                        Ok(rows) => rows.collect().await.map(drop),
                        Err(f) => Err(f.into_error()),
                    },
                    Err(status) => Err(Error::from(status)),
                };
                // The hold died with its index server: this one ends the
                // transaction everywhere (a hold ended at once).
                let done = match (done, lost) {
                    (Ok(()), true) => {
                        let only_first = pb::HoldRequest { txn_id: req.txn_id.clone(), release: false };
                        server.hold(tokio_stream::iter([only_first])).await.map(drop).map_err(Error::from)
                    }
                    (done, _) => done,
                };
                match done {
                    Ok(()) => return,
                    Err(e) if Instant::now() >= deadline => {
                        tracing::debug!(txn = %req.txn_id, "gave up rolling back an abandoned transaction: {e}");
                        return;
                    }
                    Err(e) => tracing::debug!(txn = %req.txn_id, "rolling back an abandoned transaction: {e}"),
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(CONFLICT_LONGEST_PAUSE);
            }
        });
    }

    /// Sends a request to the next server, failing over when safe: each
    /// server gets one try per round; after a round of failures the
    /// rotation is refreshed once and a second round runs.
    async fn send(&mut self, req: pb::ExecuteRequest, idempotent: bool) -> Result<RowStream> {
        let mut last: Option<Error> = None;
        for round in 0..2 {
            if round == 1 && self.refresh().await.is_err() && self.rotation.is_empty() {
                self.set_rotation(self.seeds.clone())?;
            }
            for _ in 0..self.rotation.len() {
                if self.rotation.is_empty() {
                    break;
                }
                let i = self.next % self.rotation.len();
                self.next = i + 1;
                let error = match self.try_server(i, &req, idempotent).await {
                    Ok(rows) => {
                        self.rotation[i].failures = 0;
                        return Ok(rows);
                    }
                    Err(Ok(error)) => error,
                    Err(Err(fatal)) => return Err(fatal),
                };
                let server = &mut self.rotation[i];
                server.failures += 1;
                tracing::debug!(server = %server.addr, "index server failed: {error}");
                if server.failures >= MAX_FAILURES {
                    let gone = self.rotation.remove(i);
                    tracing::info!(server = %gone.addr, "dropped index server from the rotation");
                    self.dropped.insert(gone.addr, Instant::now());
                    let _ = self.refresh().await;
                }
                last = Some(error);
            }
        }
        Err(Error::unavailable(format!(
            "cannot reach any index server: {}",
            last.map(|e| e.to_string()).unwrap_or_else(|| "none known".into())
        )))
    }

    /// One attempt on rotation entry `i`. `Err(Ok(e))`: the server failed
    /// and another may be tried; `Err(Err(e))`: the statement's final error.
    ///
    /// Another server is tried only when this one cannot have started on
    /// the statement: it could not be reached, or the call failed before
    /// any answer began (reads and deduplicated writes only), or it
    /// answered that it cannot serve now (no leader, shutting down). When
    /// the connection broke after the answer began, or no answer came in
    /// time, the statement is not sent on: it may be what brought this
    /// server down, and it would bring down the next one too.
    async fn try_server(
        &mut self,
        i: usize,
        req: &pb::ExecuteRequest,
        idempotent: bool,
    ) -> std::result::Result<RowStream, Result<Error>> {
        let server = &mut self.rotation[i];
        // The flag: whether the answer had begun when the call failed.
        let first_answer = async {
            match server.client.execute(req.clone()).await {
                Ok(response) => RowStream::start(response.into_inner()).await.map_err(|f| (true, f)),
                Err(status) => Err((false, Failure::from(status))),
            }
        };
        let (began, status) = match tokio::time::timeout(FIRST_ANSWER_TIMEOUT, first_answer).await {
            Ok(Ok(rows)) => return Ok(rows),
            Ok(Err((_, Failure::Answered(e @ Error::Unavailable(_))))) if idempotent => return Err(Ok(e)),
            Ok(Err((_, Failure::Answered(e)))) => return Err(Err(e)),
            Ok(Err((began, Failure::Broken(status)))) => (began, status),
            Err(_) => {
                return Err(Err(Error::unavailable(format!(
                    "{} gave no answer within {FIRST_ANSWER_TIMEOUT:?}; the statement was not sent to another index \
                     server (it may be what stalled this one); if it writes, its outcome is unknown: check before \
                     running it again",
                    server.addr
                ))))
            }
        };
        if began {
            return Err(Err(Failure::Broken(status).into_error()));
        }
        let safe = idempotent || drsdb_common::error::never_arrived(&status);
        match Error::from(status) {
            e @ Error::Unavailable(_) if safe => Err(Ok(e)),
            e => Err(Err(e)),
        }
    }

    /// Whether transaction `id` committed, for a COMMIT whose outcome is
    /// unknown (its error names the transaction). Final once answered: a
    /// transaction still undecided is aborted by the question.
    pub async fn transaction_outcome(&mut self, id: &str) -> Result<TxnOutcome> {
        if ulid::Ulid::from_string(id).is_err() {
            return Err(Error::invalid(format!("{id:?} is not a transaction id")));
        }
        let rs = self.execute(&format!("SHOW TRANSACTION {id}"), &[]).await?;
        let outcome: Option<String> = rs.rows.first().map(|r| r.get(1)).transpose()?;
        match outcome.as_deref() {
            Some("committed") => Ok(TxnOutcome::Committed),
            Some("aborted") => Ok(TxnOutcome::Aborted),
            other => Err(Error::io(format!("unexpected answer about transaction {id}: {other:?}"))),
        }
    }

    /// Runs one statement and reads its whole result.
    pub async fn execute(&mut self, statement: &str, params: &[Value]) -> Result<ResultSet> {
        self.query(statement, params).await?.collect().await
    }

    /// Runs every statement of a script in order, stopping at the first
    /// error; returns each statement's result.
    pub async fn execute_script(&mut self, script: &str) -> Result<Vec<ResultSet>> {
        let mut results = Vec::new();
        for statement in sql::split_script(script)? {
            results.push(self.execute(&statement, &[]).await?);
        }
        Ok(results)
    }
}

/// Builds a parameter list: `params![1, "x", None::<i64>]`.
#[macro_export]
macro_rules! params {
    ($($v:expr),* $(,)?) => { &[$($crate::Value::from($v)),*][..] };
}
