//! Hostile statements against a real cluster: each gets a clear error or
//! SQLite's answer, and afterwards every index server still answers.
//! Statements go both through the driver (which refuses some itself) and
//! straight to the index servers over gRPC, as a client that skips the
//! driver's checks would send them.

use std::path::PathBuf;
use std::time::Duration;

use drsdb_cli::local::{LocalCluster, Options};
use drsdb_client::{Client, Error, Value};
use drsdb_common::config::ConnectionLimits;
use drsdb_common::tls::Dialer;
use drsdb_proto as pb;

const READY: Duration = Duration::from_secs(60);

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sql-tests"))
}

/// `n` terms joined by `op`, selected.
fn chain(n: usize, op: &str) -> String {
    format!("SELECT {}", vec!["1"; n].join(op))
}

/// The statements that once crashed or broke a cluster, and what their
/// error says.
fn hostile() -> Vec<(String, &'static str)> {
    vec![
        (chain(50_000, "+"), "too large"),
        (chain(50_000, " || "), "too large"),
        (chain(50_000, " AND "), "too large"),
        (chain(50_000, " OR "), "too large"),
        (format!("SELECT {}1{}", "(".repeat(100_000), ")".repeat(100_000)), "too large"),
        (vec!["SELECT 1"; 50_000].join(" UNION ALL "), "compound SELECT"),
        ("BEGIN garbage".into(), "syntax error"),
        ("COMMIT garbage".into(), "syntax error"),
        ("ROLLBACK garbage".into(), "syntax error"),
    ]
}

/// Sends `sql` to the index server at `addr` directly, skipping the
/// driver; the first error in the answer, if any.
async fn raw(dialer: &Dialer, addr: &str, sql: &str) -> Result<(), tonic::Status> {
    let mut client = pb::sql_client::SqlClient::new(dialer.lazy(addr).unwrap()).max_encoding_message_size(64 << 20);
    let request =
        pb::ExecuteRequest { sql: sql.into(), request_id: ulid::Ulid::generate().to_string(), ..Default::default() };
    let mut parts = client.execute(request).await?.into_inner();
    while parts.message().await?.is_some() {}
    Ok(())
}

async fn one(client: &mut Client, sql: &str) -> Value {
    client.execute(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}")).rows[0].values()[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_statements_get_clear_errors_and_every_index_server_lives_on() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options { shards: Some(2), ..Options::default() };
    let mut cluster = LocalCluster::start(&exe(), dir.path(), &options).expect("cluster starts");
    cluster.wait_ready(READY).await.expect("cluster ready");
    let mut client = cluster.client().await.unwrap();
    let dialer = Dialer::new(cluster.client_tls()).unwrap();
    let index_servers = cluster.layout().index.clone();

    for (sql, expected) in hostile() {
        let shown = &sql[..sql.len().min(40)];
        let e = client.execute(&sql, &[]).await.expect_err(shown);
        assert!(matches!(&e, Error::InvalidInput(m) if m.contains(expected)), "{shown}: {e}");
        for addr in &index_servers {
            let status = raw(&dialer, addr, &sql).await.expect_err(shown);
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{shown}: {status}");
            assert!(status.message().contains(expected), "{shown}: {status}");
        }
    }
    // Within SQLite's limits, the same shapes get SQLite's answers.
    assert_eq!(one(&mut client, &chain(900, "+")).await, Value::Integer(900));
    assert_eq!(one(&mut client, &chain(900, " || ")).await, Value::Text("1".repeat(900)));

    // Text that is not UTF-8 comes back byte for byte, stored on a shard
    // or computed, relayed, merged or streamed directly.
    client.execute("CREATE TABLE texts(k TEXT PRIMARY KEY, v)", &[]).await.unwrap();
    client
        .execute("INSERT INTO texts VALUES (CAST(x'6bff' AS TEXT), CAST(x'61ff62' AS TEXT)), ('a', 'b')", &[])
        .await
        .unwrap();
    let raw_text = |bytes: &[u8]| Value::RawText(bytes.to_vec());
    for sql in [
        "SELECT k, v FROM texts WHERE k <> 'a'",
        "SELECT k, v FROM texts ORDER BY k DESC LIMIT 1",
        "SELECT k, v FROM texts WHERE k = CAST(x'6bff' AS TEXT)",
        "SELECT CAST(x'6bff' AS TEXT), CAST(x'61ff62' AS TEXT)",
    ] {
        let rs = client.execute(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(rs.rows[0].values(), &[raw_text(b"k\xff"), raw_text(b"a\xffb")], "{sql}");
    }
    assert_eq!(one(&mut client, "SELECT hex(min(v)) FROM texts").await, Value::Text("61FF62".into()));

    // Memory: a statement is held to statement_memory_mb (default 256 MiB),
    // reads and writes alike; a write fails the same way on every replica.
    let blobs = vec!["randomblob(16000000)"; 20].join(", ");
    for sql in [format!("SELECT {blobs} FROM texts"), format!("INSERT INTO texts VALUES ('m', 'n') RETURNING {blobs}")]
    {
        let e = client.execute(&sql, &[]).await.expect_err("over the memory budget");
        assert!(matches!(&e, Error::InvalidInput(m) if m.contains("statement_memory_mb")), "{e}");
    }
    assert_eq!(one(&mut client, "SELECT count(*) FROM texts WHERE k = 'm'").await, Value::Integer(0));

    // Virtual tables: full-text search works, replicated to every shard;
    // modules that are not replicated are refused before they run.
    for module in ["fts5", "fts4", "fts3"] {
        client.execute(&format!("CREATE VIRTUAL TABLE docs USING {module}(title, body)"), &[]).await.unwrap();
        client
            .execute("INSERT INTO docs VALUES ('a', 'hello world'), ('b', 'goodbye world'), ('c', 'hello there')", &[])
            .await
            .unwrap();
        let rs = client.execute("SELECT title FROM docs WHERE docs MATCH 'hello' ORDER BY title", &[]).await.unwrap();
        let titles: Vec<String> = rs.rows.iter().map(|r| r.get(0).unwrap()).collect();
        assert_eq!(titles, ["a", "c"], "{module}");
        let e = client.execute("INSERT INTO docs_content VALUES (9, 'x', 'y', 'z')", &[]).await;
        assert!(e.is_err(), "{module}: shadow tables are written by their module only");
        assert_eq!(one(&mut client, "SELECT 1").await, Value::Integer(1));
        client.execute("DROP TABLE docs", &[]).await.unwrap();
    }
    client.execute("CREATE VIRTUAL TABLE places USING rtree(id, x0, x1)", &[]).await.unwrap();
    client.execute("INSERT INTO places VALUES (1, 0, 5), (2, 10, 20)", &[]).await.unwrap();
    assert_eq!(one(&mut client, "SELECT id FROM places WHERE x1 < 6").await, Value::Integer(1));
    let e = client.execute("CREATE VIRTUAL TABLE v USING json_each('[1]')", &[]).await.unwrap_err();
    assert!(e.to_string().contains("not supported"), "{e}");
    let e = raw(&dialer, &index_servers[0], "CREATE VIRTUAL TABLE v USING dbstat").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");

    // Data files and directories are their owner's only.
    use std::os::unix::fs::PermissionsExt;
    let storage = dir.path().join("storage-1");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&storage), 0o700);
    for entry in std::fs::read_dir(storage.join("groups").join("1")).unwrap() {
        let path = entry.unwrap().path();
        let expected = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&path), expected, "{}", path.display());
    }

    // Every index server answers afterwards.
    for addr in &index_servers {
        raw(&dialer, addr, "SELECT 1").await.unwrap_or_else(|e| panic!("{addr}: {e}"));
    }
    cluster.stop();
}

/// Reads running on the storage servers, per `SHOW NODES`.
async fn running_reads(client: &mut Client) -> i64 {
    let rs = client.execute("SHOW NODES", &[]).await.unwrap();
    rs.rows.iter().map(|r| r.get::<Option<i64>>(3).unwrap().unwrap_or(0)).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_queries_leave_room_for_others_and_stop_when_their_clients_go() {
    const RUNAWAYS: usize = 10;
    let dir = tempfile::tempdir().unwrap();
    let options = Options { shards: Some(2), ..Options::default() };
    let mut cluster = LocalCluster::start(&exe(), dir.path(), &options).expect("cluster starts");
    cluster.wait_ready(READY).await.expect("cluster ready");
    let mut client = cluster.client().await.unwrap();
    client.execute("CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT)", &[]).await.unwrap();
    client.execute("INSERT INTO t VALUES (1, 'one'), (2, 'two')", &[]).await.unwrap();

    // Queries that never end on their own and send nothing back.
    let endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";
    let mut runaways = Vec::new();
    for _ in 0..RUNAWAYS {
        let mut c = cluster.client().await.unwrap();
        runaways.push(tokio::spawn(async move { c.execute(endless, &[]).await }));
    }
    let deadline = std::time::Instant::now() + READY;
    while running_reads(&mut client).await < RUNAWAYS as i64 {
        assert!(std::time::Instant::now() < deadline, "the runaway queries did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A new client's point select is answered meanwhile.
    let mut newcomer = cluster.client().await.unwrap();
    let started = std::time::Instant::now();
    let v = tokio::time::timeout(READY, newcomer.execute("SELECT v FROM t WHERE k = 2", &[])).await;
    let v = v.expect("the point select is answered").unwrap();
    assert_eq!(v.rows[0].values(), &[Value::Text("two".into())]);
    println!("point select beside {RUNAWAYS} runaway queries: {:?}", started.elapsed());

    // Their clients give up: the storage servers stop the work.
    for r in &runaways {
        r.abort();
    }
    let gone = std::time::Instant::now();
    let timeout = Duration::from_millis(drsdb_common::config::DEFAULT_STATEMENT_TIMEOUT_MS);
    while running_reads(&mut client).await > 0 {
        assert!(gone.elapsed() < timeout, "runaway reads still running {:?} after their clients left", gone.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("the storage servers stopped the runaway reads {:?} after their clients left", gone.elapsed());

    // An index server that dies while it runs a statement: the driver
    // does not send that statement on to the next server.
    let mut victim = cluster.client().await.unwrap();
    let running = tokio::spawn(async move { victim.execute(endless, &[]).await });
    while running_reads(&mut client).await < 1 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.kill("index-1").unwrap();
    cluster.kill("index-2").unwrap();
    let e = running.await.unwrap().unwrap_err();
    assert!(e.to_string().contains("was not sent again"), "{e}");
    cluster.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_cannot_exhaust_a_server() {
    const SOCKETS: usize = 150;
    let dir = tempfile::tempdir().unwrap();
    let connections = ConnectionLimits { max_connections: 32, handshake_timeout_ms: 1_000, ..Default::default() };
    let options = Options { shards: Some(1), connections, ..Options::default() };
    let mut cluster = LocalCluster::start(&exe(), dir.path(), &options).expect("cluster starts");
    cluster.wait_ready(READY).await.expect("cluster ready");
    // Raw sockets that never start TLS, on every server.
    let layout = cluster.layout().clone();
    let addrs: Vec<String> =
        layout.index.iter().cloned().chain(layout.storage.iter().map(|m| m.addr.clone())).collect();
    let mut sockets = Vec::new();
    for addr in &addrs {
        for _ in 0..SOCKETS {
            sockets.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
    }
    // The cluster still answers a new client.
    let started = std::time::Instant::now();
    let mut client = tokio::time::timeout(READY, cluster.client()).await.expect("a client connects").unwrap();
    assert_eq!(one(&mut client, "SELECT 1").await, Value::Integer(1));
    println!("answered beside {} idle sockets after {:?}", sockets.len(), started.elapsed());
    // Every idle socket is closed by its server.
    for mut s in sockets {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(READY, s.read(&mut buf)).await.expect("the server closes an idle socket");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    }
    cluster.stop();
}
