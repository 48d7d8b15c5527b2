//! counter: increments and reads of a few counters. A read must lie
//! between the increments acknowledged before it began and those invoked
//! before it ended (an unknown increment may or may not count); the final
//! reads, after the faults, count every acknowledged increment.

use drsdb_client::{params, Client};

use super::{answered, integer, run, secs, Check, Failure};
use crate::faults::history::{Answer, Call, Op, Outcome};
use drsdb_sql_tests::rng::Rng;

/// Counters (rows 0..KEYS).
const KEYS: i64 = 4;
/// Percent of calls that are reads.
const READ_PERCENT: u64 = 30;

pub(super) fn setup() -> String {
    let rows: Vec<String> = (0..KEYS).map(|k| format!("({k}, 0)")).collect();
    format!(
        "DROP TABLE IF EXISTS counters; CREATE TABLE counters(k INTEGER PRIMARY KEY, v INTEGER NOT NULL); \
         INSERT INTO counters VALUES {};",
        rows.join(", ")
    )
}

pub(super) fn generate(rng: &mut Rng) -> Call {
    let key = rng.range(0, KEYS - 1);
    if rng.chance(READ_PERCENT) {
        Call::ReadCounter { key }
    } else {
        Call::Increment { key }
    }
}

pub(super) fn final_calls() -> Vec<Call> {
    (0..KEYS).map(|key| Call::ReadCounter { key }).collect()
}

pub(super) async fn invoke(client: &mut Client, call: &Call) -> Result<Answer, Failure> {
    match *call {
        Call::Increment { key } => {
            let done = run(client, "UPDATE counters SET v = v + 1 WHERE k = ?1", params![key], true).await?;
            if done.summary.rows_affected != 1 {
                return Err(Failure {
                    error: format!("the increment of counter {key} changed {} rows", done.summary.rows_affected),
                    outcome: Outcome::Fail,
                });
            }
            Ok(Answer::Done)
        }
        Call::ReadCounter { key } => {
            let rows = run(client, "SELECT v FROM counters WHERE k = ?1", params![key], false).await?.rows;
            Ok(Answer::Value(rows.first().map(|r| integer(r, 0)).transpose()?))
        }
        _ => unreachable!("not a counter call: {call:?}"),
    }
}

pub(super) fn check(ops: &[Op]) -> Check {
    let mut check = Check::default();
    for key in 0..KEYS {
        // Acknowledged increments by end time; possible ones by start time.
        let increments = ops.iter().filter(|o| o.call == Call::Increment { key });
        let mut acked: Vec<u64> = increments.clone().filter(|o| o.outcome == Outcome::Ok).map(|o| o.end_us).collect();
        let mut possible: Vec<u64> = increments.filter(|o| o.outcome != Outcome::Fail).map(|o| o.start_us).collect();
        acked.sort_unstable();
        possible.sort_unstable();
        let mut reads = 0;
        for (op, answer) in answered(ops) {
            let (Call::ReadCounter { key: k }, Answer::Value(value)) = (&op.call, answer) else { continue };
            if *k != key {
                continue;
            }
            reads += 1;
            let value = value.unwrap_or(-1);
            let lower = acked.partition_point(|&end| end < op.start_us);
            let upper = possible.partition_point(|&start| start < op.end_us);
            if value < lower as i64 || value > upper as i64 {
                check.found(format!(
                    "counter {key} read {value} at {}, outside [{lower}, {upper}] (acknowledged before it, invoked \
                     before it ended)",
                    secs(op.start_us)
                ));
            }
        }
        // The final reads, after every fault, see every acknowledged
        // increment by the bound above.
        if reads == 0 {
            check.found(format!("no read of counter {key} succeeded"));
        }
    }
    check
}
