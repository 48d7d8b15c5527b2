//! One test per `.slt` file in `sql-tests/slt/`, each run through a real
//! cluster (shared by the files; every file starts from an empty database).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use drsdb_cli::local::{LocalCluster, Options};
use libtest_mimic::{Arguments, Failed, Trial};

fn main() {
    let mut args = Arguments::from_args();
    // Files share one cluster and each empties the database first.
    args.test_threads = Some(1);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("slt");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("slt directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    let runtime = Arc::new(tokio::runtime::Runtime::new().expect("runtime"));
    let cluster_dir = tempfile::tempdir().expect("temp dir");
    let mut cluster = LocalCluster::start(
        &PathBuf::from(env!("CARGO_BIN_EXE_sql-tests")),
        cluster_dir.path(),
        &Options { log: "warn".into(), ..Options::default() },
    )
    .expect("cluster starts");
    runtime.block_on(cluster.wait_ready(Duration::from_secs(60))).expect("cluster ready");
    let cluster = Arc::new(cluster);
    let trials = files
        .into_iter()
        .map(|path| {
            let name = path.file_stem().expect("name").to_string_lossy().into_owned();
            let (runtime, cluster) = (runtime.clone(), cluster.clone());
            Trial::test(name, move || {
                runtime.block_on(async {
                    let mut client = cluster.client().await.map_err(|e| Failed::from(e.to_string()))?;
                    drsdb_sql_tests::reset(&mut client).await.map_err(|e| Failed::from(e.to_string()))?;
                    let report = drsdb_sql_tests::run_file(&path, client).await;
                    if let Some(e) = report.error {
                        return Err(Failed::from(e));
                    }
                    if report.failed > 0 {
                        return Err(Failed::from(report.failures.join("\n")));
                    }
                    Ok(())
                })
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    // Stop the servers and remove their files before exiting.
    drop(cluster);
    drop(cluster_dir);
    conclusion.exit();
}
