//! register: integer registers read, written and compare-and-set by
//! several clients at once; the history of each must be linearizable.
//!
//! Keys are used in generations: each gets about [`OPS_PER_KEY`]
//! operations, then the clients move to fresh keys. That keeps each key's
//! history small enough for the exhaustive search, even with the unknown
//! writes faults leave behind (each may take effect at any later point).

use std::collections::BTreeMap;

use drsdb_client::{params, Client};

use super::{integer, run, Check, Failure};
use crate::faults::history::{Answer, Call, Op, Outcome};
use crate::faults::linearizable::{self, Operation, Verdict};
use drsdb_sql_tests::rng::Rng;

/// Keys in use at once.
const KEYS: u64 = 4;
/// Operations on the keys of one generation.
const OPS_PER_KEY: u64 = 100;
/// Values written (few, so that compare-and-set often matches).
const VALUES: i64 = 5;
/// The search's budget per key.
const MAX_STEPS: u64 = 20_000_000;

pub(super) const SETUP: &str =
    "DROP TABLE IF EXISTS registers; CREATE TABLE registers(k INTEGER PRIMARY KEY, v INTEGER NOT NULL);";

pub(super) fn generate(rng: &mut Rng, n: u64) -> Call {
    let key = ((n / (KEYS * OPS_PER_KEY)) * KEYS + rng.below(KEYS as usize) as u64) as i64;
    match rng.below(3) {
        0 => Call::Read { key },
        1 => Call::Write { key, value: rng.range(0, VALUES - 1) },
        _ => Call::Cas { key, from: rng.range(0, VALUES - 1), to: rng.range(0, VALUES - 1) },
    }
}

pub(super) async fn invoke(client: &mut Client, call: &Call) -> Result<Answer, Failure> {
    match *call {
        Call::Read { key } => {
            let rows = run(client, "SELECT v FROM registers WHERE k = ?1", params![key], false).await?.rows;
            Ok(Answer::Value(rows.first().map(|r| integer(r, 0)).transpose()?))
        }
        Call::Write { key, value } => {
            let sql = "INSERT INTO registers(k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = excluded.v";
            run(client, sql, params![key, value], true).await?;
            Ok(Answer::Done)
        }
        Call::Cas { key, from, to } => {
            let sql = "UPDATE registers SET v = ?3 WHERE k = ?1 AND v = ?2";
            let done = run(client, sql, params![key, from, to], true).await?;
            Ok(Answer::Swapped(done.summary.rows_affected == 1))
        }
        _ => unreachable!("not a register call: {call:?}"),
    }
}

/// A register operation as the model sees it: the call and, when it
/// completed, its answer.
type RegisterOp = (Call, Option<Answer>);

/// The sequential register: `None` until first written.
fn step(state: &Option<i64>, (call, answer): &RegisterOp) -> Option<Option<i64>> {
    match (call, answer) {
        (Call::Read { .. }, Some(Answer::Value(v))) => (v == state).then_some(*state),
        (Call::Write { value, .. }, _) => Some(Some(*value)),
        (Call::Cas { from, to, .. }, Some(Answer::Swapped(true))) => (*state == Some(*from)).then_some(Some(*to)),
        (Call::Cas { from, .. }, Some(Answer::Swapped(false))) => (*state != Some(*from)).then_some(*state),
        // Unknown: if it happened, it swapped only if the value matched.
        (Call::Cas { from, to, .. }, None) => Some(if *state == Some(*from) { Some(*to) } else { *state }),
        _ => None,
    }
}

pub(super) fn check(ops: &[Op]) -> Check {
    let mut check = Check::default();
    let mut by_key: BTreeMap<i64, Vec<Operation<RegisterOp>>> = BTreeMap::new();
    for op in ops {
        let key = match op.call {
            Call::Read { key } | Call::Write { key, .. } | Call::Cas { key, .. } => key,
            _ => continue,
        };
        let (answer, end) = match op.outcome {
            Outcome::Ok => (op.answer.clone(), Some(op.end_us)),
            // A failed call did not happen; a failed read tells nothing.
            Outcome::Fail => continue,
            Outcome::Unknown if !op.call.writes() => continue,
            Outcome::Unknown => (None, None),
        };
        by_key.entry(key).or_default().push(Operation { call: (op.call.clone(), answer), start: op.start_us, end });
    }
    for (key, history) in by_key {
        match linearizable::check(&history, None, step, MAX_STEPS) {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable => {
                check.found(format!("register {key}: its {} operations are not linearizable", history.len()))
            }
            Verdict::Inconclusive => {
                check.inconclusive += 1;
                eprintln!("register {key}: the search gave up after {MAX_STEPS} steps ({} operations)", history.len());
            }
        }
    }
    check
}
