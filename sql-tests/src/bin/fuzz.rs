//! `fuzz`: feeds drsdb inputs nobody would write by hand, and reports every
//! crash, hang, wrong answer and divergence it provokes.
//!
//! Three subcommands, each seeded (`--seed N`; by default the seed comes
//! from the clock and is printed first, so that any run can be replayed),
//! each ending with one summary line such as
//! `fuzz sql: 200000 statements, 0 crashes, 0 hangs, 0 wrong answers,
//! replicas identical` and exiting non-zero on any finding.
//!
//! - `fuzz parse --cases N [--corpus DIR]` runs in-process, without a
//!   cluster. It mutates seed statements (a built-in list, plus the
//!   `statement`/`query` records of the sqllogictest files under `DIR`)
//!   byte by byte and token by token: spans deleted, duplicated and
//!   swapped, random tokens, operators and unicode inserted, fragments
//!   repeated thousands of times, parentheses nested 100,000 deep,
//!   50,000-term operator chains, huge literals. Every input goes through
//!   the lexical layer shared by the client and the index server
//!   (`drsdb_common::sql`: `split_script`, `classify`, `is_complete`,
//!   `number_placeholders`, `placeholder_count`, `parse`, `parse_expr`,
//!   `check_size`, `virtual_table`, `strip_reference`, `words`) and through
//!   the driver's syntax check (`drsdb_client::check_syntax`). Each call runs
//!   under `catch_unwind`: a panic is a crash finding. Each input runs on a
//!   thread with a 2 MiB stack (what a tokio worker has), so deep recursion
//!   overflows it: Rust cannot catch that, the whole harness aborts with
//!   `thread 'fuzz-parse-case-N' has overflowed its stack`, and that abort
//!   is a finding too: `fuzz parse --seed S --replay N` prints case N and
//!   runs it alone (with the time each call took). A call that takes over
//!   2 s on one input is a hang finding, and so is an input whose calls
//!   have not all returned after 30 s (the limit is per call, not per
//!   input, because an input goes through some twenty linear passes, which
//!   in a debug build take seconds for a 200 KiB input). Most inputs are
//!   small; about 1.5 % are grown to tens of KiB and 0.1 % to hundreds
//!   (100,000 parentheses, 50,000-term chains). A few properties are
//!   checked as well (numbering placeholders twice changes nothing; every
//!   statement `split_script` returns tokenizes again); a violation is an
//!   inconsistency finding.
//!
//! - `fuzz sql --statements N [--shards S] [--data DIR]` generates random
//!   SQL from a grammar (queries with joins, subqueries, aggregates,
//!   compounds, window functions; inserts, upserts, updates, deletes; short
//!   transactions; now and then a hostile statement: 50,000-term chains,
//!   100,000 nested parentheses, blobs near 16 MiB, full-text tables,
//!   garbage after BEGIN) over a few tables (integer, text and composite
//!   keys, one without a key, one reference table), and runs each
//!   statement on a live cluster and then on an in-memory SQLite database.
//!   drsdb may refuse what SQLite runs (an invalid-input error); otherwise
//!   both must give the same answer (column names, and rows compared as
//!   SQLite values: in order when the query's ORDER BY is total, as sorted
//!   multisets otherwise; reals within a relative 1e-9; rows affected for
//!   writes). drsdb answering where SQLite fails, or failing with an I/O
//!   or internal error where SQLite answers, is a wrong answer. A write
//!   drsdb refuses is undone on SQLite (each SQLite statement runs inside
//!   a SAVEPOINT). After every write the tables it writes are compared
//!   whole: a write answered as SQLite answered it that left other data is
//!   a divergence, and so is a refused write that left changes (a partial
//!   write: statements are atomic over several shards too), unless its
//!   error said its outcome was unknown; either way SQLite's copy is then re-synced
//!   from drsdb's so that the run goes on. Every `--check-every`
//!   statements, and at the end: every index server must answer
//!   `SELECT 1`, every storage server its Status call, no server process
//!   may have died (their states in /proc), every table must hold what
//!   SQLite holds, and every shard's copy of the reference table must be
//!   the same (read from each group's leader). A statement unanswered
//!   after 60 s is a hang. When the harness
//!   started the cluster (no `--data`), it stops it at the end and checks
//!   that the replicas of every Raft group hold identical tables.
//!
//! - `fuzz grpc --messages N [--data DIR]` builds valid requests for every
//!   service (`Sql.Execute`, `Sql.IndexServers`; `Storage.Write`, `Read`,
//!   `ReadFragment`, `Status`; `Raft.AppendEntries`, `Vote`, `Snapshot`),
//!   encodes them, mutates the bytes (bit flips, truncation, extension,
//!   random bytes, corrupted length varints, repeated and unknown fields,
//!   extreme numbers, other strings; never over 8 MiB)
//!   and sends them over TLS as raw gRPC calls, with the client
//!   certificate to index servers and `ReadFragment`, the node certificate
//!   otherwise. Raft messages only ever name group 999999, which does not
//!   exist (a mutated message that decodes to another group is not sent),
//!   so that nothing legitimate can disturb consensus. Any answer is fine;
//!   what counts is that every server stays alive and answers, no call
//!   takes over 30 s, and no answer says the server hit a bug.
//!
//! Every finding is printed as it happens (`FINDING crash: …`) with what
//! reproduces it (findings that look alike are counted but shown three
//! times only). The cluster's directory (server logs under `logs/`) is
//! kept when there are findings or with `--keep`; `fuzz sql --verbose`
//! prints every statement and both answers.
//!
//! Short runs (what `sql-tests/tests/fuzz.rs` runs in CI, debug build):
//!
//! ```sh
//! cargo run -p drsdb-sql-tests --bin fuzz -- parse --cases 20000 --seed 1
//! cargo run -p drsdb-sql-tests --bin fuzz -- sql --statements 1500 --shards 2 --seed 1
//! cargo run -p drsdb-sql-tests --bin fuzz -- grpc --messages 2000 --seed 1
//! ```
//!
//! Long runs (release build, seed from the clock):
//!
//! ```sh
//! cargo build --release -p drsdb-sql-tests --bin fuzz
//! target/release/fuzz parse --cases 5000000 --corpus ../shared/sqllogictest
//! target/release/fuzz sql --statements 200000 --shards 4
//! target/release/fuzz grpc --messages 1000000
//! # against a cluster started with `drsdb local --data /tmp/c --no-shell`:
//! target/release/fuzz sql --statements 200000 --data /tmp/c
//! ```

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[path = "../fuzz/mod.rs"]
mod fuzz;

/// Fuzz drsdb: its SQL text handling, its answers, its gRPC services.
#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mutated SQL text through the parsing and checking functions, in-process.
    Parse(fuzz::parse::Args),
    /// Random SQL against a live cluster and in-memory SQLite, compared.
    Sql(fuzz::sql::Args),
    /// Mutated gRPC messages against every service of a live cluster.
    Grpc(fuzz::grpc::Args),
}

fn main() -> ExitCode {
    if let Some(served) = drsdb_sql_tests::serve_if_server() {
        return served;
    }
    let result = match Args::parse().command {
        Command::Parse(args) => fuzz::parse::run(args),
        Command::Sql(args) => fuzz::sql::run(args),
        Command::Grpc(args) => fuzz::grpc::run(args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
