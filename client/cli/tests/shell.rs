//! The `drsdb` binary as scripts use it: `-e`, `-f`, exit status, output
//! modes, `certs`, against a real local cluster.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use drsdb_cli::local::{LocalCluster, Options};

fn drsdb() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_drsdb"))
}

fn run(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(drsdb()).arg("--data").arg(dir).args(args).output().expect("drsdb runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_run_print_and_fail_with_a_status() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::start(&drsdb(), dir.path(), &Options::default()).unwrap();
    cluster.wait_ready(Duration::from_secs(60)).await.unwrap();
    let data = cluster.dir().to_path_buf();

    let (ok, out, err) =
        run(&data, &["-e", "CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT); INSERT INTO t VALUES (1, 'x'), (2, NULL)"]);
    assert!(ok, "{err}");
    assert!(out.contains("2 rows affected"), "{out}");

    let (ok, out, _) = run(&data, &["-e", "SELECT a, b FROM t ORDER BY a"]);
    assert!(ok);
    assert_eq!(out, " a | b\n---+------\n 1 | x\n 2 | NULL\n(2 rows)\n");

    let (ok, out, _) = run(&data, &["--mode", "list", "-e", "SELECT a, b FROM t ORDER BY a"]);
    assert!(ok);
    assert_eq!(out, "1|x\n2|NULL\n");

    let script = dir.path().join("script.sql");
    std::fs::write(&script, "INSERT INTO t VALUES (3, 'y');\nSELEC oops;\nINSERT INTO t VALUES (4, 'never');\n")
        .unwrap();
    let (ok, _, err) = run(&data, &["-f", script.to_str().unwrap()]);
    assert!(!ok, "a failing script exits non-zero");
    assert!(err.contains("syntax error"), "{err}");
    let (_, out, _) = run(&data, &["--mode", "list", "-e", "SELECT count(*) FROM t"]);
    assert_eq!(out, "3\n", "the script stopped at its first error");

    let (ok, _, err) = run(&data, &["-e", "SELECT * FROM missing"]);
    assert!(!ok);
    assert!(err.contains("no such table: missing"), "{err}");
}

#[test]
fn certs_and_helpful_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(drsdb()).args(["certs", "--out"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success());
    for f in ["ca.pem", "node.pem", "node.key", "client.pem", "client.key"] {
        assert!(dir.path().join(f).exists(), "{f}");
    }
    // No cluster there: the error says what to do.
    let out = Command::new(drsdb()).arg("--data").arg(dir.path()).args(["-e", "SELECT 1"]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("drsdb local --data"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
