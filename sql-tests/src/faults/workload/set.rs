//! set: multi-row INSERTs of unique values; at the end every acknowledged
//! value is there exactly once, nothing refused is, and each statement
//! is there whole or not at all. Half the INSERTs write one shard, half
//! spread over several.

use std::collections::{HashMap, HashSet};

use drsdb_client::{Client, Value};

use super::{answered, integer, run, secs, Check, Failure};
use crate::faults::history::{Answer, Call, Op, Outcome};
use drsdb_sql_tests::rng::Rng;

/// The most rows in one INSERT.
const MAX_BATCH: u64 = 5;

/// Even batches go to a table whose rowids the index server assigns (a
/// small INSERT lands on one shard), odd ones to a table keyed by
/// `DEFAULT (ulid())` (its rows spread over shards).
pub(super) const SETUP: &str = "DROP TABLE IF EXISTS set_elements; \
     CREATE TABLE set_elements(v INTEGER NOT NULL, batch INTEGER NOT NULL); \
     DROP TABLE IF EXISTS set_keyed; \
     CREATE TABLE set_keyed(id TEXT PRIMARY KEY DEFAULT (ulid()), v INTEGER NOT NULL, batch INTEGER NOT NULL);";

/// Call `n` inserts batch `n`, with values `n * MAX_BATCH + i`.
pub(super) fn generate(rng: &mut Rng, n: u64) -> Call {
    let rows = 1 + rng.below(MAX_BATCH as usize) as u64;
    let values = (0..rows).map(|i| (n * MAX_BATCH + i) as i64).collect();
    Call::Add { batch: n as i64, values }
}

pub(super) async fn invoke(client: &mut Client, call: &Call) -> Result<Answer, Failure> {
    match call {
        Call::Add { batch, values } => {
            let rows: Vec<String> = (0..values.len()).map(|i| format!("(?{}, ?{})", i + 2, 1)).collect();
            let table = if batch % 2 == 0 { "set_elements" } else { "set_keyed" };
            let sql = format!("INSERT INTO {table}(v, batch) VALUES {}", rows.join(", "));
            let mut params = vec![Value::Integer(*batch)];
            params.extend(values.iter().map(|v| Value::Integer(*v)));
            run(client, &sql, &params, true).await?;
            Ok(Answer::Done)
        }
        Call::ReadSet => {
            let rows =
                run(client, "SELECT v, batch FROM set_elements UNION ALL SELECT v, batch FROM set_keyed", &[], false)
                    .await?
                    .rows;
            let elements = rows.iter().map(|r| Ok((integer(r, 0)?, integer(r, 1)?))).collect::<Result<_, _>>()?;
            Ok(Answer::Elements(elements))
        }
        _ => unreachable!("not a set call: {call:?}"),
    }
}

pub(super) fn check(ops: &[Op]) -> Check {
    let mut check = Check::default();
    let last_read = answered(ops)
        .filter_map(|(op, a)| match a {
            Answer::Elements(e) => Some((op, e)),
            _ => None,
        })
        .max_by_key(|(op, _)| op.start_us);
    let Some((read, elements)) = last_read else {
        check.found("no read of the set succeeded".into());
        return check;
    };
    let mut seen: HashMap<i64, (usize, i64)> = HashMap::new();
    for &(v, batch) in elements {
        let entry = seen.entry(v).or_insert((0, batch));
        entry.0 += 1;
    }
    let mut known = HashSet::new();
    for op in ops {
        let Call::Add { batch, values } = &op.call else { continue };
        if op.outcome != Outcome::Unknown && op.end_us > read.start_us {
            check.found(format!("batch {batch} ended after the final read began; the read is not final"));
        }
        let mut present = 0;
        for v in values {
            known.insert(*v);
            if let Some(&(count, tag)) = seen.get(v) {
                present += 1;
                if count > 1 {
                    check.found(format!("value {v} of batch {batch} is there {count} times"));
                }
                if tag != *batch {
                    check.found(format!("value {v} of batch {batch} is tagged as batch {tag}"));
                }
            }
        }
        let n = values.len();
        let when = format!("(invoked at {}, {:?}", secs(op.start_us), op.outcome);
        match op.outcome {
            Outcome::Ok if present < n => {
                check.found(format!("acknowledged batch {batch} {when}) lost {} of its {n} rows", n - present))
            }
            Outcome::Fail if present > 0 => check.found(format!(
                "failed batch {batch} {when}: {}) has {present} of its {n} rows",
                op.error.as_deref().unwrap_or("")
            )),
            Outcome::Unknown if present > 0 && present < n => {
                check.found(format!("batch {batch} {when}) is partly there: {present} of its {n} rows"))
            }
            _ => {}
        }
    }
    for v in seen.keys().filter(|v| !known.contains(v)) {
        check.found(format!("value {v} was never inserted"));
    }
    check
}
