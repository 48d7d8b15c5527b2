//! Short runs of the fuzzing harness (`src/bin/fuzz.rs`) with fixed seeds:
//! each must end without findings. They run one at a time (each is sized
//! for about a minute on two cores in a debug build).

use std::process::Command;
use std::sync::Mutex;

/// One fuzzing run at a time: they compete for the same cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The seed of every run, so that a failure replays.
const SEED: &str = "1";

fn fuzz(args: &[&str]) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let output = Command::new(env!("CARGO_BIN_EXE_fuzz"))
        .args(args)
        .args(["--seed", SEED])
        .output()
        .expect("the fuzz binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(output.status.success(), "fuzz {} failed ({}):\n{stdout}\n{stderr}", args.join(" "), output.status);
}

#[test]
fn parse_functions_survive_mutated_sql() {
    fuzz(&["parse", "--cases", "20000"]);
}

#[test]
fn random_sql_gets_sqlites_answers() {
    fuzz(&["sql", "--statements", "1500", "--shards", "2"]);
}

#[test]
fn servers_survive_mutated_grpc_messages() {
    fuzz(&["grpc", "--messages", "2000"]);
}
