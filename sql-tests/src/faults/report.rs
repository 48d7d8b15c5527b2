//! The summary of a run: operations by outcome, violations, and how long
//! clients went without an answer after each fault.

use std::collections::BTreeMap;

use super::history::{Fault, Op, Outcome};
use super::workload::Check;

/// Longest stall after each kind of fault, in microseconds.
pub struct Stalls {
    /// Per fault kind: every fault's stall.
    pub by_kind: BTreeMap<String, Vec<u64>>,
}

/// How long the client processes went without a successful answer after
/// each fault: for the window from the fault's start to the next fault
/// (or the end of the run), the longest time any one process waited,
/// from the start of the window or its previous answer, for its next
/// answer. Final reads (process `finals`) are left out.
pub fn stalls(ops: &[Op], faults: &[Fault], processes: usize, run_end_us: u64) -> Stalls {
    let mut by_process: Vec<Vec<u64>> = vec![Vec::new(); processes];
    for op in ops.iter().filter(|o| o.outcome == Outcome::Ok && o.process < processes) {
        by_process[op.process].push(op.end_us);
    }
    for answers in &mut by_process {
        answers.sort_unstable();
    }
    let mut by_kind: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (i, fault) in faults.iter().enumerate() {
        let window_end = faults.get(i + 1).map_or(run_end_us, |f| f.start_us);
        let mut worst = 0;
        for answers in &by_process {
            let mut since = fault.start_us;
            for &t in answers.iter().filter(|&&t| t > fault.start_us && t <= window_end) {
                worst = worst.max(t - since);
                since = t;
            }
            worst = worst.max(window_end - since);
        }
        by_kind.entry(fault.kind.clone()).or_default().push(worst);
    }
    Stalls { by_kind }
}

/// Prints the summary table.
pub fn print(workload: &str, ops: &[Op], check: &Check, stalls: &Stalls) {
    let count = |o: Outcome| ops.iter().filter(|op| op.outcome == o).count();
    println!();
    println!("| workload | operations | ok | failed | unknown | violations |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| {workload} | {} | {} | {} | {} | {}{} |",
        ops.len(),
        count(Outcome::Ok),
        count(Outcome::Fail),
        count(Outcome::Unknown),
        check.violations,
        if check.inconclusive > 0 { format!(" ({} undecided)", check.inconclusive) } else { String::new() }
    );
    if !stalls.by_kind.is_empty() {
        println!();
        println!("| fault | times | longest stall after it | median |");
        println!("| --- | ---: | ---: | ---: |");
        for (kind, values) in &stalls.by_kind {
            let mut sorted = values.clone();
            sorted.sort_unstable();
            println!(
                "| {kind} | {} | {:.1} s | {:.1} s |",
                sorted.len(),
                sorted.last().copied().unwrap_or(0) as f64 / 1e6,
                sorted[sorted.len() / 2] as f64 / 1e6
            );
        }
    }
    if !check.shown.is_empty() {
        println!();
        println!("violations{}:", if check.violations as usize > check.shown.len() { " (the first)" } else { "" });
        for v in &check.shown {
            println!("  {v}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::history::Call;

    fn ok(process: usize, end_s: u64) -> Op {
        Op {
            process,
            call: Call::ReadSet,
            outcome: Outcome::Ok,
            answer: None,
            error: None,
            start_us: end_s * 1_000_000 - 1,
            end_us: end_s * 1_000_000,
        }
    }

    #[test]
    fn stall_is_the_longest_wait_of_any_process() {
        // Fault at 10 s; process 0 answers at 11, 12, 20; process 1 at 11
        // then nothing until the next fault at 30.
        let fault = |start: u64| Fault { what: String::new(), kind: "pause".into(), start_us: start, end_us: start };
        let ops = [ok(0, 11), ok(0, 12), ok(0, 20), ok(1, 11), ok(1, 31)];
        let stalls = stalls(&ops, &[fault(10_000_000), fault(30_000_000)], 2, 40_000_000);
        assert_eq!(stalls.by_kind["pause"], vec![19_000_000, 10_000_000]);
    }
}
