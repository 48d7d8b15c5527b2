//! ddl: CREATE and DROP of a few tables while servers die. Each statement
//! is a transaction of its own over every shard, so at the end each table
//! is on every shard or on none: a table some shard has and another lacks
//! answers neither a read (the shard without it fails it) nor a CREATE (a
//! shard with it refuses it, and with it the whole statement).

use drsdb_client::Client;

use super::{run, Check, Failure};
use crate::faults::history::{Answer, Call, Op, Outcome};
use drsdb_sql_tests::rng::Rng;

/// Tables `ddl_0` … `ddl_{TABLES-1}`.
const TABLES: i64 = 4;

pub(super) fn setup() -> String {
    (0..TABLES).map(|t| format!("DROP TABLE IF EXISTS ddl_{t};")).collect()
}

pub(super) fn generate(rng: &mut Rng) -> Call {
    Call::Ddl { table: rng.range(0, TABLES - 1), create: rng.chance(50) }
}

pub(super) fn final_calls() -> Vec<Call> {
    vec![Call::ProbeTables]
}

fn create(table: i64) -> String {
    format!("CREATE TABLE ddl_{table}(id INTEGER PRIMARY KEY, v INTEGER)")
}

pub(super) async fn invoke(client: &mut Client, call: &Call) -> Result<Answer, Failure> {
    match *call {
        Call::Ddl { table, create: true } => run(client, &create(table), &[], true).await.map(|_| Answer::Done),
        Call::Ddl { table, create: false } => {
            run(client, &format!("DROP TABLE ddl_{table}"), &[], true).await.map(|_| Answer::Done)
        }
        Call::ProbeTables => {
            let mut states = Vec::new();
            for table in 0..TABLES {
                states.push((table, probe(client, table).await?));
            }
            Ok(Answer::Tables(states))
        }
        _ => unreachable!("not a ddl call: {call:?}"),
    }
}

/// Where `ddl_{table}` is: "everywhere" (it answers a read over every
/// shard), "nowhere" (a CREATE of it succeeds; it is dropped again), or
/// "on some shards" (neither).
async fn probe(client: &mut Client, table: i64) -> Result<String, Failure> {
    let read = match run(client, &format!("SELECT count(*) FROM ddl_{table}"), &[], false).await {
        Ok(_) => return Ok("everywhere".into()),
        Err(f) => f.error,
    };
    match run(client, &create(table), &[], true).await {
        Ok(_) => {
            run(client, &format!("DROP TABLE ddl_{table}"), &[], true).await?;
            Ok("nowhere".into())
        }
        Err(f) if f.outcome == Outcome::Fail => {
            Ok(format!("on some shards (a read said: {read}; a CREATE said: {})", f.error))
        }
        Err(f) => Err(f),
    }
}

pub(super) fn check(ops: &[Op]) -> Check {
    let mut check = Check::default();
    let probes: Vec<&Vec<(i64, String)>> = ops
        .iter()
        .filter_map(|o| match (&o.outcome, &o.answer) {
            (Outcome::Ok, Some(Answer::Tables(t))) => Some(t),
            _ => None,
        })
        .collect();
    if probes.is_empty() {
        check.inconclusive += 1;
    }
    for (table, state) in probes.into_iter().flatten() {
        if state.starts_with("on some shards") {
            check.found(format!("table ddl_{table} is {state}"));
        }
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(states: &[(i64, &str)]) -> Op {
        Op {
            process: 0,
            call: Call::ProbeTables,
            outcome: Outcome::Ok,
            answer: Some(Answer::Tables(states.iter().map(|(t, s)| (*t, s.to_string())).collect())),
            error: None,
            start_us: 0,
            end_us: 1,
        }
    }

    #[test]
    fn a_table_on_some_shards_only_is_a_violation() {
        let whole = check(&[probe(&[(0, "everywhere"), (1, "nowhere")])]);
        assert_eq!((whole.violations, whole.inconclusive), (0, 0));
        let partial = check(&[probe(&[(0, "everywhere"), (1, "on some shards (…)")])]);
        assert_eq!(partial.violations, 1, "{:?}", partial.shown);
        assert_eq!(check(&[]).inconclusive, 1, "no probe: nothing shown");
    }
}
