//! bank: money moves between accounts on different shards, and must be
//! neither created nor destroyed, nor seen to be.

use drsdb_client::{params, Client};

use super::{answered, in_transaction, integer, run, secs, Check, Failure};
use crate::faults::history::{Answer, Call, Op};
use drsdb_sql_tests::rng::Rng;

/// Accounts (ids 0..ACCOUNTS, spread over the shards by their key).
const ACCOUNTS: i64 = 8;
/// Each account's opening balance.
const OPENING: i64 = 100;
/// The largest transfer.
const MAX_TRANSFER: i64 = 5;
/// Percent of calls that are reads.
const READ_PERCENT: u64 = 40;

const TOTAL: i64 = ACCOUNTS * OPENING;

pub(super) fn setup() -> String {
    let rows: Vec<String> = (0..ACCOUNTS).map(|id| format!("({id}, {OPENING})")).collect();
    format!(
        "DROP TABLE IF EXISTS bank_accounts; \
         CREATE TABLE bank_accounts(id INTEGER PRIMARY KEY, balance INTEGER NOT NULL); \
         INSERT INTO bank_accounts VALUES {};",
        rows.join(", ")
    )
}

pub(super) fn generate(rng: &mut Rng) -> Call {
    if rng.chance(READ_PERCENT) {
        return Call::ReadBalances { in_txn: rng.chance(50) };
    }
    let from = rng.range(0, ACCOUNTS - 1);
    let to = (from + rng.range(1, ACCOUNTS - 1)) % ACCOUNTS;
    Call::Transfer { from, to, amount: rng.range(1, MAX_TRANSFER), in_txn: rng.chance(50) }
}

const READ: &str = "SELECT id, balance FROM bank_accounts ORDER BY id";
const DEBIT: &str = "UPDATE bank_accounts SET balance = balance - ?2 WHERE id = ?1";
const CREDIT: &str = "UPDATE bank_accounts SET balance = balance + ?2 WHERE id = ?1";
/// Both sides of a transfer in one statement (the two rows are usually on
/// different shards).
const TRANSFER: &str =
    "UPDATE bank_accounts SET balance = balance + CASE id WHEN ?1 THEN -?3 ELSE ?3 END WHERE id IN (?1, ?2)";

pub(super) async fn invoke(client: &mut Client, call: &Call) -> Result<Answer, Failure> {
    match *call {
        Call::ReadBalances { in_txn: false } => balances(client).await,
        Call::ReadBalances { in_txn: true } => in_transaction(client, async |c: &mut Client| balances(c).await).await,
        Call::Transfer { from, to, amount, in_txn: false } => {
            run(client, TRANSFER, params![from, to, amount], true).await?;
            Ok(Answer::Done)
        }
        Call::Transfer { from, to, amount, in_txn: true } => {
            in_transaction(client, async |c: &mut Client| {
                run(c, DEBIT, params![from, amount], true).await?;
                run(c, CREDIT, params![to, amount], true).await?;
                Ok(Answer::Done)
            })
            .await
        }
        _ => unreachable!("not a bank call: {call:?}"),
    }
}

async fn balances(client: &mut Client) -> Result<Answer, Failure> {
    let rows = run(client, READ, &[], false).await?.rows;
    let balances = rows.iter().map(|r| Ok((integer(r, 0)?, integer(r, 1)?))).collect::<Result<Vec<_>, _>>()?;
    Ok(Answer::Balances(balances))
}

pub(super) fn check(ops: &[Op]) -> Check {
    let mut check = Check::default();
    let reads: Vec<(&Op, &Vec<(i64, i64)>)> = answered(ops)
        .filter_map(|(op, answer)| match answer {
            Answer::Balances(b) => Some((op, b)),
            _ => None,
        })
        .collect();
    let total = |balances: &[(i64, i64)]| balances.iter().map(|(_, b)| b).sum::<i64>();
    match reads.iter().max_by_key(|(op, _)| op.start_us) {
        None => check.found("no read of the balances succeeded".into()),
        Some((_, b)) if total(b) != TOTAL => {
            check.found(format!("conservation: the final total is {}, not {TOTAL}", total(b)))
        }
        Some(_) => {}
    }
    for (op, balances) in reads {
        let where_ = if matches!(op.call, Call::ReadBalances { in_txn: true }) { "inside" } else { "outside" };
        if total(balances) != TOTAL || balances.len() != ACCOUNTS as usize {
            check.found(format!(
                "a read {where_} a transaction at {} saw {} accounts totalling {}, not {ACCOUNTS} totalling {TOTAL}",
                secs(op.start_us),
                balances.len(),
                total(balances)
            ));
        }
    }
    check
}
