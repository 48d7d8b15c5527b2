//! `sql-tests PATHS…`: runs sqllogictest files or folders against a fresh
//! local cluster (3 storage servers, 2 index servers, child processes of
//! this binary) and ends with `N passed, N failed, N skipped` over records.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use drsdb_cli::local::{LocalCluster, Options};

/// How long the cluster may take to start.
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// Run sqllogictest files through a drsdb cluster.
#[derive(Parser)]
struct Args {
    /// .test files, or folders searched recursively.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Exit non-zero when fewer than this percentage of the records that
    /// run pass.
    #[arg(long, default_value_t = 100.0)]
    min_pass_rate: f64,
    /// Print at most this many failures per file.
    #[arg(long, default_value_t = 5)]
    show_failures: usize,
    /// Data shards of the cluster (default: 4 for its 3 storage servers).
    #[arg(long)]
    shards: Option<usize>,
    /// Keep the cluster directory (for its logs) instead of deleting it.
    #[arg(long)]
    keep: bool,
    /// Have the index servers relay query results, instead of the client
    /// reading them from the storage servers (direct streaming).
    #[arg(long)]
    relay: bool,
}

fn main() -> ExitCode {
    if let Some(served) = drsdb_sql_tests::serve_if_server() {
        return served;
    }
    match run(Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<bool> {
    let files = drsdb_sql_tests::test_files(&args.paths)?;
    if files.is_empty() {
        anyhow::bail!("no .test files under the given paths");
    }
    let dir = tempfile::Builder::new().prefix("drsdb-sql-tests-").tempdir()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let mut cluster = LocalCluster::start(
        &std::env::current_exe()?,
        dir.path(),
        &Options { log: "warn".into(), shards: args.shards, ..Options::default() },
    )?;
    runtime.block_on(cluster.wait_ready(READY_DEADLINE))?;
    let started = Instant::now();
    let (mut passed, mut failed, mut skipped, mut broken) = (0, 0, 0, 0);
    for file in &files {
        let file_started = Instant::now();
        let report = runtime.block_on(async {
            let mut client = cluster.client().await?;
            client.set_direct(!args.relay);
            drsdb_sql_tests::reset(&mut client).await?;
            anyhow::Ok(drsdb_sql_tests::run_file(file, client).await)
        })?;
        passed += report.passed;
        failed += report.failed;
        skipped += report.skipped;
        let name = file.display();
        let took = file_started.elapsed().as_secs_f64();
        match &report.error {
            Some(e) => {
                broken += 1;
                println!("{name}: ERROR {e} ({took:.1} s)");
            }
            None => println!(
                "{name}: {} passed, {} failed, {} skipped ({took:.1} s)",
                report.passed, report.failed, report.skipped
            ),
        }
        for f in report.failures.iter().take(args.show_failures) {
            println!("  {}", f.replace('\n', "\n  "));
        }
    }
    let ran = passed + failed;
    let rate = if ran == 0 { 0.0 } else { 100.0 * passed as f64 / ran as f64 };
    println!(
        "{} files in {:.0?}; pass rate {rate:.3}% of {ran} records run ({broken} files could not run)",
        files.len(),
        started.elapsed()
    );
    cluster.stop();
    if args.keep {
        let kept = dir.keep();
        println!("cluster directory kept: {}", kept.display());
    }
    println!("{passed} passed, {failed} failed, {skipped} skipped");
    Ok(broken == 0 && rate >= args.min_pass_rate)
}
