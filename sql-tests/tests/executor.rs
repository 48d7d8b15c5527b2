//! The executor's multi-shard paths, in-process: the SQL tier
//! (`drsdb_index::Executor`) over real storage groups hosted in this test
//! process (`drsdb_storage::InProcessTier`: openraft, SQLite files, TLS on
//! loopback), with a failure injected at an exact step.
//!
//! What each test checks is what drsdb promises: a statement over several
//! shards is atomic (one shard's failure rolls back the others), sending
//! it again with the same request id applies it once, and an error never
//! says "try again" about a write that may have applied.

use std::sync::Arc;
use std::time::Duration;

use drsdb_common::command::Statement;
use drsdb_common::config::IndexConfig;
use drsdb_common::stream::PartReader;
use drsdb_common::tier::StorageTier;
use drsdb_common::{Error, GroupId, Value};
use drsdb_index::Executor;
use drsdb_proto as pb;
use drsdb_storage::InProcessTier;
use tokio_stream::wrappers::ReceiverStream;

/// Data shards of every test cluster.
const SHARDS: usize = 4;
/// How long the executor may take to find the meta group ready.
const READY_WAIT: Duration = Duration::from_secs(20);

/// A cluster of three in-process storage servers and one executor.
struct Cluster {
    tier: Arc<InProcessTier>,
    executor: Executor,
    _dir: tempfile::TempDir,
}

/// One client session: its open transaction (and the shards it holds)
/// and its request ids.
#[derive(Default)]
struct Session {
    txn: String,
    groups: Vec<u64>,
    sent: u64,
}

/// A statement's answer.
#[derive(Debug)]
struct Answer {
    rows: Vec<Vec<Value>>,
    rows_affected: u64,
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let tier = InProcessTier::start(dir.path(), 3, SHARDS).await.expect("storage servers start");
        let executor = index_server(&tier).await;
        Cluster { tier, executor, _dir: dir }
    }

    /// Runs `sql` with request id `id` (a client sending it again after a
    /// lost reply uses the same id).
    async fn send(&self, session: &mut Session, sql: &str, id: &str) -> Result<Answer, Error> {
        self.send_to(&self.executor, session, sql, id).await
    }

    /// Runs `sql` with request id `id` on index server `executor`.
    async fn send_to(&self, executor: &Executor, session: &mut Session, sql: &str, id: &str) -> Result<Answer, Error> {
        let req = pb::ExecuteRequest { sql: sql.into(), request_id: id.into(), ..Default::default() };
        self.send_request(executor, session, req).await
    }

    /// Runs `sql`, an INSERT of one row, once per row of `rows` (a batch
    /// of parameter rows, as `Client::execute_many` sends it), with
    /// request id `id`.
    async fn send_batch(&self, sql: &str, rows: &[Vec<Value>], id: &str) -> Result<Answer, Error> {
        let req = pb::ExecuteRequest {
            sql: sql.into(),
            params: rows.iter().flatten().cloned().map(Into::into).collect(),
            batch_rows: rows.len() as u32,
            request_id: id.into(),
            ..Default::default()
        };
        self.send_request(&self.executor, &mut Session::default(), req).await
    }

    /// Runs `req` in `session` on index server `executor`.
    async fn send_request(
        &self,
        executor: &Executor,
        session: &mut Session,
        req: pb::ExecuteRequest,
    ) -> Result<Answer, Error> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let in_txn = !session.txn.is_empty();
        let sql = req.sql.clone();
        let req = pb::ExecuteRequest { txn_id: session.txn.clone(), txn_groups: session.groups.clone(), ..req };
        let run = async move {
            let r = executor.execute(req, &tx).await;
            drop(tx);
            r
        };
        let read = async {
            let mut reader = PartReader::new(ReceiverStream::new(rx));
            let mut rows = Vec::new();
            while let Some(row) = reader.next().await? {
                rows.push(row);
            }
            Ok::<_, tonic::Status>((rows, reader.done().cloned().unwrap_or_default()))
        };
        let (ran, read) = tokio::join!(run, read);
        if let Err(e) = ran {
            // As the driver does: only a statement's own error leaves a
            // transaction open.
            if !matches!(e, Error::InvalidInput(_)) || !in_txn {
                session.txn.clear();
                session.groups.clear();
            }
            return Err(e);
        }
        let (rows, done) = read.map_err(Error::from)?;
        let control = ["BEGIN", "COMMIT", "ROLLBACK"].contains(&sql.as_str());
        if control || !done.txn_id.is_empty() {
            session.txn = done.txn_id;
            session.groups = done.txn_groups;
        }
        Ok(Answer { rows, rows_affected: done.rows_affected })
    }

    /// Runs `sql` with a fresh request id.
    async fn run(&self, session: &mut Session, sql: &str) -> Result<Answer, Error> {
        session.sent += 1;
        let id = format!("test-{}", session.sent);
        self.send(session, sql, &id).await
    }

    /// Runs `sql`, which must succeed.
    async fn ok(&self, session: &mut Session, sql: &str) -> Answer {
        self.run(session, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The single integer `sql` answers.
    async fn number(&self, sql: &str) -> i64 {
        match self.ok(&mut Session::default(), sql).await.rows.as_slice() {
            [row] => match row.as_slice() {
                [Value::Integer(n)] => *n,
                other => panic!("{sql}: {other:?}"),
            },
            other => panic!("{sql}: {other:?}"),
        }
    }

    /// Waits until no transaction holds any shard (aborted ones are
    /// rolled back by the statement that failed, or by the resolver).
    async fn no_transactions(&self) {
        let deadline = tokio::time::Instant::now() + READY_WAIT;
        loop {
            let held = self.ok(&mut Session::default(), "SHOW TRANSACTIONS").await.rows;
            if held.is_empty() {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "still held: {held:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates table `t(id, v)` with ids 1..=40 over every shard, and
    /// returns two of its keys that live on different shards.
    async fn table_with_keys_on_two_shards(&self) -> (i64, i64) {
        const ROWS: i64 = 40;
        let mut setup = Session::default();
        self.ok(&mut setup, "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)").await;
        self.ok(&mut setup, &insert_rows(ROWS)).await;
        let mut keys: std::collections::BTreeMap<i64, i64> = Default::default();
        for id in 1..=ROWS {
            match self.ok(&mut Session::default(), &format!("SHOW SHARD OF t KEY {id}")).await.rows[0][0] {
                Value::Integer(g) => keys.entry(g).or_insert(id),
                ref other => panic!("{other:?}"),
            };
        }
        match keys.into_values().collect::<Vec<_>>()[..] {
            [a, b, ..] => (a, b),
            ref one => panic!("the rows reached only {one:?}"),
        }
    }

    /// How many rows of `table` each data shard holds.
    async fn spread(&self, table: &str) -> Vec<i64> {
        let shown = self.ok(&mut Session::default(), &format!("SHOW SHARDS OF {table}")).await;
        shown.rows.iter().map(|r| if let Value::Integer(n) = r[1] { n } else { panic!("{r:?}") }).collect()
    }
}

/// An index server (an executor) over `tier`, ready.
async fn index_server(tier: &Arc<InProcessTier>) -> Executor {
    let config = IndexConfig { direct_streaming: false, ..IndexConfig::default() };
    let executor = Executor::new(tier.clone(), &config, "in-process".into()).expect("executor");
    let deadline = tokio::time::Instant::now() + READY_WAIT;
    while let Err(e) = executor.prepare().await {
        assert!(tokio::time::Instant::now() < deadline, "meta group not ready: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    executor
}

/// `INSERT INTO t(id, v) VALUES …` of ids 1..=n (spread over every shard).
fn insert_rows(n: i64) -> String {
    let rows: Vec<String> = (1..=n).map(|i| format!("({i}, 0)")).collect();
    format!("INSERT INTO t(id, v) VALUES {}", rows.join(", "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_parameter_rows_is_one_atomic_statement_applied_once() {
    let c = Cluster::start().await;
    let mut s = Session::default();
    c.ok(&mut s, "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)").await;
    c.ok(&mut s, "CREATE TABLE u(v INTEGER)").await;
    let keyed: Vec<Vec<Value>> = (1..=40).map(|i| vec![Value::Integer(i), Value::Integer(i)]).collect();
    let insert = "INSERT INTO t(id, v) VALUES (?, ?)";
    // Over every shard: one failing shard applies the batch nowhere...
    c.tier.fail_calls(GroupId(3), 1);
    let e = c.send_batch(insert, &keyed, "batch-1").await.expect_err("one shard failed");
    assert!(matches!(&e, Error::Unavailable(m) if m.contains("nothing")), "{e:?}");
    c.no_transactions().await;
    assert_eq!(c.spread("t").await, vec![0; SHARDS], "no shard kept its rows");
    // ...and sent again, then once more under the same id, it applies once.
    for _ in 0..2 {
        assert_eq!(c.send_batch(insert, &keyed, "batch-1").await.expect("sent again").rows_affected, 40);
    }
    assert_eq!(c.number("SELECT count(*) FROM t").await, 40);
    assert_eq!(c.number("SELECT sum(v) FROM t").await, (1..=40).sum::<i64>());
    // Rows whose rowids the index server assigns: sent again, the same rows.
    let unkeyed: Vec<Vec<Value>> = (1..=30).map(|i| vec![Value::Integer(i)]).collect();
    for _ in 0..2 {
        let r = c.send_batch("INSERT INTO u(v) VALUES (?)", &unkeyed, "batch-2").await.expect("applied");
        assert_eq!(r.rows_affected, 30);
    }
    assert_eq!(c.number("SELECT count(*) FROM u").await, 30);
    // A constraint failure in one row undoes the whole batch.
    let mut clash: Vec<Vec<Value>> = (41..=60).map(|i| vec![Value::Integer(i), Value::Integer(0)]).collect();
    clash.push(vec![Value::Integer(1), Value::Integer(0)]);
    let e = c.send_batch(insert, &clash, "batch-3").await.expect_err("duplicate key");
    assert!(matches!(&e, Error::InvalidInput(m) if m.contains("UNIQUE")), "{e:?}");
    assert_eq!(c.number("SELECT count(*) FROM t").await, 40);
    c.tier.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_shard_insert_with_a_failing_shard_applies_nowhere_then_once() {
    let c = Cluster::start().await;
    let mut s = Session::default();
    c.ok(&mut s, "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)").await;
    c.tier.fail_calls(GroupId(3), 1);
    let e = c.send(&mut s, &insert_rows(40), "insert-1").await.expect_err("one shard failed");
    assert!(matches!(&e, Error::Unavailable(m) if m.contains("fault injected") && m.contains("nothing")), "{e:?}");
    c.no_transactions().await;
    assert_eq!(c.spread("t").await, vec![0; SHARDS], "no shard kept its rows");
    // Sent again with the same request id: applied once.
    let again = c.send(&mut s, &insert_rows(40), "insert-1").await.expect("sent again");
    assert_eq!(again.rows_affected, 40);
    assert_eq!(c.number("SELECT count(DISTINCT id) FROM t").await, 40);
    assert!(c.spread("t").await.iter().all(|n| *n > 0), "rows on every shard");
    // Sent once more (a client whose reply was lost after the commit): the
    // first outcome, and nothing applied again.
    let replayed = c.send(&mut s, &insert_rows(40), "insert-1").await.expect("sent once more");
    assert_eq!(replayed.rows_affected, 40);
    assert_eq!(c.number("SELECT count(*) FROM t").await, 40);
    // A constraint failure on one shard undoes the others.
    let e = c.run(&mut s, "INSERT INTO t(id, v) VALUES (41, 0), (42, 0), (43, 0), (44, 0), (1, 0)").await;
    assert!(matches!(&e, Err(Error::InvalidInput(m)) if m.contains("UNIQUE")), "{e:?}");
    assert_eq!(c.number("SELECT count(*) FROM t").await, 40);
    c.tier.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_update_with_a_failing_shard_applies_nowhere_then_once() {
    let c = Cluster::start().await;
    let mut s = Session::default();
    c.ok(&mut s, "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)").await;
    c.ok(&mut s, &insert_rows(40)).await;
    c.tier.fail_calls(GroupId(2), 1);
    let update = "UPDATE t SET v = v + 1";
    let e = c.send(&mut s, update, "update-1").await.expect_err("one shard failed");
    assert!(e.to_string().contains("fault injected"), "{e}");
    c.no_transactions().await;
    assert_eq!(c.number("SELECT count(*) FROM t WHERE v = 0").await, 40, "no shard kept the update");
    let again = c.send(&mut s, update, "update-1").await.expect("sent again");
    assert_eq!(again.rows_affected, 40);
    assert_eq!(c.number("SELECT count(*) FROM t WHERE v = 1").await, 40, "every row updated exactly once");
    let replayed = c.send(&mut s, update, "update-1").await.expect("sent once more");
    assert_eq!(replayed.rows_affected, 40);
    assert_eq!(c.number("SELECT count(*) FROM t WHERE v = 1").await, 40, "not applied again");
    c.tier.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_fails_on_one_shard_is_made_nowhere() {
    let c = Cluster::start().await;
    let mut s = Session::default();
    c.tier.fail_calls(GroupId(3), 1);
    let e = c.run(&mut s, "CREATE TABLE u(id INTEGER PRIMARY KEY, v TEXT)").await.expect_err("one shard failed");
    assert!(matches!(&e, Error::Unavailable(m) if m.contains("nothing")), "{e:?}");
    c.no_transactions().await;
    for g in 1..=SHARDS as u64 {
        let probe = Statement::new("SELECT count(*) FROM sqlite_schema WHERE name = 'u'");
        let rows = c.tier.read_rows(GroupId(g), probe).await.expect("shard answers");
        assert_eq!(rows, vec![vec![Value::Integer(0)]], "u is not on shard {g}");
    }
    let e = c.run(&mut s, "SELECT * FROM u").await.expect_err("no such table");
    assert!(e.to_string().contains("no such table"), "{e}");
    c.ok(&mut s, "CREATE TABLE u(id INTEGER PRIMARY KEY, v TEXT)").await;
    c.ok(&mut s, "INSERT INTO u VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd')").await;
    assert_eq!(c.number("SELECT count(*) FROM u").await, 4);
    c.tier.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_reply_was_lost_applies_once_or_nowhere() {
    let c = Cluster::start().await;
    let mut s = Session::default();
    c.ok(&mut s, "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)").await;
    // On one shard, an autocommit write is deduplicated by request id: the
    // executor sends it again and the first outcome comes back.
    let Value::Integer(shard) = c.ok(&mut Session::default(), "SHOW SHARD OF t KEY 1").await.rows[0][0] else {
        panic!("no shard")
    };
    let shard = GroupId(shard as u64);
    c.tier.lose_replies(shard, 1);
    assert_eq!(c.ok(&mut s, "INSERT INTO t VALUES (1, 0)").await.rows_affected, 1);
    assert_eq!(c.tier.replies_lost(), 1);
    // Over several shards, a lost reply before the decision aborts the
    // statement everywhere: it applied nothing, and says so.
    for g in 1..=SHARDS as u64 {
        c.tier.lose_replies(GroupId(g), 1);
    }
    let e = c.run(&mut s, &insert_rows(20).replace("VALUES (1, 0), ", "VALUES ")).await.expect_err("replies lost");
    assert!(matches!(&e, Error::Unavailable(m) if m.contains("nothing")), "{e:?}");
    c.no_transactions().await;
    assert_eq!(c.number("SELECT count(*) FROM t").await, 1);
    // Inside a transaction, a lost reply rolls the transaction back.
    c.ok(&mut s, "BEGIN").await;
    c.tier.lose_replies(shard, 1);
    let e = c.run(&mut s, "UPDATE t SET v = 1 WHERE id = 1").await.expect_err("the reply was lost");
    assert!(matches!(&e, Error::Retryable(m) if m.contains("rolled back")), "{e:?}");
    c.no_transactions().await;
    assert_eq!(c.number("SELECT v FROM t WHERE id = 1").await, 0);
    // A COMMIT whose decision reply was lost asks the anchor: committed.
    c.ok(&mut s, "BEGIN").await;
    c.ok(&mut s, &insert_rows(20).replace("VALUES (1, 0), ", "VALUES ")).await;
    assert_eq!(s.groups.len(), SHARDS, "the transaction holds every shard it wrote: {:?}", s.groups);
    c.tier.lose_replies(GroupId(1), 1);
    c.ok(&mut s, "COMMIT").await;
    c.no_transactions().await;
    assert_eq!(c.number("SELECT count(*) FROM t").await, 20);
    c.tier.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_sent_again_to_another_index_server_applies_once() {
    // The driver sends a statement whose reply it lost to the next index
    // server, with the same request id: it must find the first outcome
    // wherever the first index server put the rows (assigned rowids and
    // keys, keys from DEFAULT (ulid()), rows a query computed).
    let c = Cluster::start().await;
    let other = index_server(&c.tier).await;
    let mut s = Session::default();
    c.ok(&mut s, "CREATE TABLE r(v INTEGER)").await;
    c.ok(&mut s, "CREATE TABLE k(id TEXT PRIMARY KEY DEFAULT (ulid()), v INTEGER)").await;
    c.ok(&mut s, "CREATE TABLE n(id INTEGER PRIMARY KEY, v INTEGER)").await;
    let statements = [
        ("INSERT INTO r(v) VALUES (1)", 1),
        ("INSERT INTO r(v) VALUES (2), (3), (4)", 3),
        ("INSERT INTO k(v) VALUES (1), (2), (3), (4), (5), (6), (7), (8)", 8),
        ("INSERT INTO n(v) VALUES (1), (2)", 2),
        // The second time, the query finds the rows the first time added.
        ("INSERT INTO r(v) SELECT v + 10 FROM r", 4),
    ];
    for (sql, rows) in statements {
        let id = format!("{}-test-{sql}", ulid::Ulid::generate());
        let first = c.send(&mut s, sql, &id).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        let again = c.send_to(&other, &mut s, sql, &id).await.unwrap_or_else(|e| panic!("{sql} again: {e}"));
        assert_eq!((first.rows_affected, again.rows_affected), (rows, rows), "{sql}");
    }
    assert_eq!(c.number("SELECT count(*) FROM r").await, 8);
    assert_eq!(c.number("SELECT count(*) FROM k").await, 8);
    assert_eq!(c.number("SELECT count(*) FROM n").await, 2);
    assert!(c.spread("k").await.iter().filter(|n| **n > 0).count() > 1, "ulid keys spread over shards");
    c.tier.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outcome_of_a_transaction_can_be_asked_and_is_final() {
    let c = Cluster::start().await;
    let mut s = Session::default();
    c.ok(&mut s, "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)").await;
    let c = &c;
    let outcome = |id: String| async move {
        let rows = c.ok(&mut Session::default(), &format!("SHOW TRANSACTION {id}")).await.rows;
        match rows.as_slice() {
            [row] => row[1].clone(),
            other => panic!("{other:?}"),
        }
    };
    // Committed over every shard.
    c.ok(&mut s, "BEGIN").await;
    let committed = s.txn.clone();
    c.ok(&mut s, &insert_rows(20)).await;
    c.ok(&mut s, "COMMIT").await;
    assert_eq!(outcome(committed).await, Value::Text("committed".into()));
    // Rolled back.
    c.ok(&mut s, "BEGIN").await;
    let rolled_back = s.txn.clone();
    c.ok(&mut s, "UPDATE t SET v = 1").await;
    c.ok(&mut s, "ROLLBACK").await;
    assert_eq!(outcome(rolled_back).await, Value::Text("aborted".into()));
    // Still open, its client quiet: the question decides it (aborted) and
    // frees its shards; the client's COMMIT then fails.
    c.ok(&mut s, "BEGIN").await;
    let open = s.txn.clone();
    c.ok(&mut s, "UPDATE t SET v = 2").await;
    assert_eq!(outcome(open.clone()).await, Value::Text("aborted".into()));
    c.no_transactions().await;
    let e = c.run(&mut s, "COMMIT").await.expect_err("the transaction was aborted");
    assert!(matches!(&e, Error::Retryable(m) if m.contains("rolled back")), "{e:?}");
    assert_eq!(outcome(open).await, Value::Text("aborted".into()), "asked again, the same answer");
    assert_eq!(c.number("SELECT count(*) FROM t WHERE v = 0").await, 20);
    // Never seen: aborted (it cannot commit any more).
    assert_eq!(outcome(ulid::Ulid::generate().to_string()).await, Value::Text("aborted".into()));
    c.tier.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_on_disjoint_shards_run_side_by_side_and_the_older_one_wins_a_conflict() {
    let c = Cluster::start().await;
    let (a, b) = c.table_with_keys_on_two_shards().await;
    let mut older = Session::default();
    let mut younger = Session::default();
    c.ok(&mut older, "BEGIN").await;
    c.ok(&mut younger, "BEGIN").await;
    c.ok(&mut older, &format!("UPDATE t SET v = 1 WHERE id = {a}")).await;
    c.ok(&mut younger, &format!("UPDATE t SET v = 2 WHERE id = {b}")).await;
    assert_eq!(c.ok(&mut Session::default(), "SHOW TRANSACTIONS").await.rows.len(), 2, "both hold a shard");
    // The older one needs the younger one's shard: the younger is rolled
    // back, and learns it at its next statement there.
    c.ok(&mut older, &format!("UPDATE t SET v = 1 WHERE id = {b}")).await;
    let e = c.run(&mut younger, &format!("UPDATE t SET v = 3 WHERE id = {b}")).await.expect_err("wounded");
    assert!(matches!(&e, Error::Retryable(m) if m.contains("rolled back")), "{e:?}");
    c.ok(&mut older, "COMMIT").await;
    c.no_transactions().await;
    assert_eq!(c.number(&format!("SELECT v FROM t WHERE id = {a}")).await, 1);
    assert_eq!(c.number(&format!("SELECT v FROM t WHERE id = {b}")).await, 1);
    c.tier.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_carry_on_through_a_leader_change() {
    let c = Arc::new(Cluster::start().await);
    let mut s = Session::default();
    c.ok(&mut s, "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)").await;
    let writer = {
        let c = c.clone();
        tokio::spawn(async move {
            let mut s = Session::default();
            for i in 1..=60 {
                c.ok(&mut s, &format!("INSERT INTO t VALUES ({i}, {i})")).await;
            }
        })
    };
    for g in 1..=SHARDS as u64 {
        let before = c.tier.leader(GroupId(g));
        let after = c.tier.change_leader(GroupId(g)).await.expect("leadership moves");
        assert_ne!(before, Some(after));
    }
    // Slow replies from one shard delay its answers, not their order.
    c.tier.delay_replies(GroupId(2), Duration::from_millis(50));
    writer.await.expect("every write succeeded");
    assert_eq!(c.number("SELECT count(*) FROM t").await, 60);
    assert_eq!(c.number("SELECT sum(v) FROM t").await, (1..=60).sum::<i64>());
    let ordered = c.ok(&mut s, "SELECT id FROM t ORDER BY v DESC LIMIT 3").await.rows;
    assert_eq!(ordered, vec![vec![Value::Integer(60)], vec![Value::Integer(59)], vec![Value::Integer(58)]]);
    c.tier.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_leader_is_replaced_and_writes_go_on() {
    let c = Cluster::start().await;
    let mut s = Session::default();
    c.ok(&mut s, "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)").await;
    c.ok(&mut s, &insert_rows(20)).await;
    let leader = c.tier.leader(GroupId(1)).expect("shard 1 has a leader");
    c.tier.stop_replica(leader).await.expect("server stops");
    let more: Vec<String> = (21..=40).map(|i| format!("({i}, 0)")).collect();
    c.ok(&mut s, &format!("INSERT INTO t VALUES {}", more.join(", "))).await;
    assert_eq!(c.number("SELECT count(*) FROM t").await, 40);
    assert_ne!(c.tier.leader(GroupId(1)), Some(leader));
    c.tier.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_over_shards_that_finds_one_held_leaves_the_others_unprepared_and_waits() {
    let c = Cluster::start().await;
    let (a, b) = c.table_with_keys_on_two_shards().await;
    // An explicit transaction holds a's shard; then a broadcast UPDATE
    // (younger) starts, and finds that shard held.
    let mut holder = Session::default();
    c.ok(&mut holder, "BEGIN").await;
    c.ok(&mut holder, &format!("UPDATE t SET v = 1 WHERE id = {a}")).await;
    // (Its own request id: ids of the sessions above were claimed.)
    let mut updater = Session { sent: 100, ..Session::default() };
    let broadcast = async { c.run(&mut updater, "UPDATE t SET v = v + 10").await };
    let holder_goes_on = async {
        // Its first attempt, which prepares each shard as it runs there,
        // is aborted once it finds the shard held...
        let deadline = tokio::time::Instant::now() + READY_WAIT;
        while metric(&c, "held_reruns").await == 0 {
            assert!(tokio::time::Instant::now() < deadline, "the broadcast never found a's shard held");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // ...so it left b's shard free, not prepared: the holder takes it
        // (a prepared shard would make it wait for the broadcast, which
        // waits for it) and commits.
        c.ok(&mut holder, &format!("UPDATE t SET v = 2 WHERE id = {b}")).await;
        c.ok(&mut holder, "COMMIT").await;
    };
    let (broadcast, ()) = tokio::join!(broadcast, holder_goes_on);
    c.no_transactions().await;
    let total = c.number("SELECT sum(v) FROM t").await;
    match broadcast {
        // It ran again, waiting for the shard, after the holder committed.
        Ok(answer) => {
            assert_eq!(answer.rows_affected, 40);
            assert_eq!(total, 3 + 400);
        }
        // Or, holding b's shard when the (older) holder came for it, it was
        // rolled back everywhere: the driver runs it again.
        Err(e) => {
            assert!(matches!(&e, Error::Retryable(_)), "{e:?}");
            assert_eq!(total, 3);
        }
    }
    c.tier.shutdown().await;
}

/// The counter `name` of `SHOW METRICS`.
async fn metric(c: &Cluster, name: &str) -> i64 {
    let shown = c.ok(&mut Session::default(), "SHOW METRICS").await;
    let row = shown.rows.iter().find(|r| r[1] == Value::Text(name.into())).unwrap_or_else(|| panic!("{name}"));
    match row[2] {
        Value::Integer(n) => n,
        ref other => panic!("{other:?}"),
    }
}
