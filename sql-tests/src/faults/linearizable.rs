//! A linearizability checker: the Wing & Gong search, with Lowe's
//! just-in-time linearization and the memo of (linearized set, state)
//! pairs that Porcupine uses.
//!
//! A history is linearizable when each operation can be placed at one
//! instant between its invocation and its return so that, in that order,
//! the operations follow the sequential model. The search walks the
//! events in time order; at each call it tries to linearize that
//! operation now (the model must accept it in the current state); at a
//! return whose operation is still pending, the last choice was wrong and
//! it backtracks. A (set of linearized operations, model state) pair seen
//! before is not explored twice.
//!
//! Operations whose outcome is unknown have no return: they may be
//! linearized at any point after their call, or never.
//!
//! The search is exponential in the worst case; histories are checked
//! key by key (the registers are independent) and each key gets a bounded
//! number of operations, which keeps it small. A search that exceeds its
//! step budget is reported as inconclusive, never as a pass.

use std::collections::HashSet;
use std::hash::Hash;

/// One operation for the checker.
#[derive(Debug, Clone)]
pub struct Operation<C> {
    /// The call and, for a completed operation, what it returned.
    pub call: C,
    /// Invocation time.
    pub start: u64,
    /// Return time; `None` when the outcome is unknown.
    pub end: Option<u64>,
}

/// The verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A linearization exists.
    Linearizable,
    /// None exists.
    NotLinearizable,
    /// The search ran out of steps.
    Inconclusive,
}

/// Events in time order, as a doubly linked list that operations are
/// lifted out of (when linearized) and put back into (on backtracking).
struct Events {
    /// For each event: its operation, whether it is the call, and links.
    op: Vec<usize>,
    is_call: Vec<bool>,
    prev: Vec<usize>,
    next: Vec<usize>,
    /// For each operation: its call event and its return event.
    call_of: Vec<usize>,
    return_of: Vec<Option<usize>>,
}

/// Event index of the list's head sentinel (events are numbered from 1).
const HEAD: usize = 0;

impl Events {
    fn new<C>(ops: &[Operation<C>]) -> Events {
        // (time, return-before-call?, op, is_call). At equal times a call
        // sorts before a return: the operations count as overlapping,
        // which never rejects a correct history.
        let mut order: Vec<(u64, bool, usize)> = Vec::new();
        for (i, o) in ops.iter().enumerate() {
            order.push((o.start, true, i));
            if let Some(end) = o.end {
                order.push((end.max(o.start), false, i));
            }
        }
        order.sort_by_key(|&(t, is_call, i)| (t, !is_call, i));
        let n = order.len() + 1;
        let mut e = Events {
            op: vec![usize::MAX; n],
            is_call: vec![false; n],
            prev: vec![HEAD; n],
            next: vec![HEAD; n],
            call_of: vec![0; ops.len()],
            return_of: vec![None; ops.len()],
        };
        for (k, &(_, is_call, i)) in order.iter().enumerate() {
            let id = k + 1;
            e.op[id] = i;
            e.is_call[id] = is_call;
            e.prev[id] = k;
            e.next[id] = if id + 1 < n { id + 1 } else { HEAD };
            if is_call {
                e.call_of[i] = id;
            } else {
                e.return_of[i] = Some(id);
            }
        }
        e.next[HEAD] = if n > 1 { 1 } else { HEAD };
        e.prev[HEAD] = n - 1;
        e
    }

    fn unlink(&mut self, id: usize) {
        let (p, n) = (self.prev[id], self.next[id]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    fn relink(&mut self, id: usize) {
        let (p, n) = (self.prev[id], self.next[id]);
        self.next[p] = id;
        self.prev[n] = id;
    }

    /// Takes operation `op` out of the list (call and return).
    fn lift(&mut self, op: usize) {
        self.unlink(self.call_of[op]);
        if let Some(r) = self.return_of[op] {
            self.unlink(r);
        }
    }

    /// Puts operation `op` back (in reverse order of `lift`).
    fn unlift(&mut self, op: usize) {
        if let Some(r) = self.return_of[op] {
            self.relink(r);
        }
        self.relink(self.call_of[op]);
    }
}

/// Checks `ops` against a sequential model: `step(state, call)` returns the
/// state after `call` when the model allows `call` (with its recorded
/// result) in `state`, or `None`. Explores at most `max_steps` choices.
pub fn check<C, S, F>(ops: &[Operation<C>], init: S, step: F, max_steps: u64) -> Verdict
where
    S: Clone + Eq + Hash,
    F: Fn(&S, &C) -> Option<S>,
{
    let mut events = Events::new(ops);
    let mut remaining = ops.iter().filter(|o| o.end.is_some()).count();
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, S)> = HashSet::new();
    let mut state = init;
    // Linearized operations, with the state before each.
    let mut stack: Vec<(usize, S)> = Vec::new();
    let mut at = events.next[HEAD];
    let mut steps = 0u64;
    while remaining > 0 {
        steps += 1;
        if steps > max_steps {
            return Verdict::Inconclusive;
        }
        if at != HEAD && events.is_call[at] {
            let op = events.op[at];
            if let Some(after) = step(&state, &ops[op].call) {
                let mut with = linearized.clone();
                with[op / 64] |= 1 << (op % 64);
                if seen.insert((with.clone(), after.clone())) {
                    stack.push((op, std::mem::replace(&mut state, after)));
                    linearized = with;
                    events.lift(op);
                    if ops[op].end.is_some() {
                        remaining -= 1;
                    }
                    at = events.next[HEAD];
                    continue;
                }
            }
            at = events.next[at];
        } else {
            // A return whose operation is not linearized (or the end of
            // the list): undo the last choice and try the next event.
            let Some((op, before)) = stack.pop() else { return Verdict::NotLinearizable };
            state = before;
            linearized[op / 64] &= !(1 << (op % 64));
            events.unlift(op);
            if ops[op].end.is_some() {
                remaining += 1;
            }
            at = events.next[events.call_of[op]];
        }
    }
    Verdict::Linearizable
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A register: `(write, value)` or `(read, value seen)`.
    #[derive(Debug, Clone)]
    enum R {
        W(i64),
        Rd(Option<i64>),
    }

    fn reg(state: &Option<i64>, c: &R) -> Option<Option<i64>> {
        match c {
            R::W(v) => Some(Some(*v)),
            R::Rd(v) if v == state => Some(*state),
            R::Rd(_) => None,
        }
    }

    fn op(call: R, start: u64, end: Option<u64>) -> Operation<R> {
        Operation { call, start, end }
    }

    fn verdict(ops: &[Operation<R>]) -> Verdict {
        check(ops, None, reg, 1_000_000)
    }

    #[test]
    fn sequential_history_passes() {
        let ops = [op(R::W(1), 0, Some(1)), op(R::Rd(Some(1)), 2, Some(3)), op(R::W(2), 4, Some(5))];
        assert_eq!(verdict(&ops), Verdict::Linearizable);
    }

    #[test]
    fn stale_read_after_write_fails() {
        // The write of 2 returned before the read began, yet it saw 1.
        let ops = [op(R::W(1), 0, Some(1)), op(R::W(2), 2, Some(3)), op(R::Rd(Some(1)), 4, Some(5))];
        assert_eq!(verdict(&ops), Verdict::NotLinearizable);
    }

    #[test]
    fn concurrent_read_may_see_either() {
        let old = [op(R::W(1), 0, Some(1)), op(R::W(2), 2, Some(6)), op(R::Rd(Some(1)), 3, Some(4))];
        let new = [op(R::W(1), 0, Some(1)), op(R::W(2), 2, Some(6)), op(R::Rd(Some(2)), 3, Some(4))];
        assert_eq!(verdict(&old), Verdict::Linearizable);
        assert_eq!(verdict(&new), Verdict::Linearizable);
    }

    #[test]
    fn reads_may_not_go_back_in_time() {
        // Two reads during a write: the later one sees the old value after
        // the earlier one saw the new.
        let ops = [
            op(R::W(1), 0, Some(1)),
            op(R::W(2), 2, Some(10)),
            op(R::Rd(Some(2)), 3, Some(4)),
            op(R::Rd(Some(1)), 5, Some(6)),
        ];
        assert_eq!(verdict(&ops), Verdict::NotLinearizable);
    }

    #[test]
    fn unknown_write_may_or_may_not_apply() {
        let applied = [op(R::W(1), 0, Some(1)), op(R::W(2), 2, None), op(R::Rd(Some(2)), 5, Some(6))];
        let lost = [op(R::W(1), 0, Some(1)), op(R::W(2), 2, None), op(R::Rd(Some(1)), 5, Some(6))];
        let late = [
            op(R::W(1), 0, Some(1)),
            op(R::W(2), 2, None),
            op(R::Rd(Some(1)), 5, Some(6)),
            op(R::Rd(Some(2)), 7, Some(8)),
        ];
        assert_eq!(verdict(&applied), Verdict::Linearizable);
        assert_eq!(verdict(&lost), Verdict::Linearizable);
        assert_eq!(verdict(&late), Verdict::Linearizable);
        // But not a value nobody wrote.
        let invented = [op(R::W(1), 0, Some(1)), op(R::W(2), 2, None), op(R::Rd(Some(3)), 5, Some(6))];
        assert_eq!(verdict(&invented), Verdict::NotLinearizable);
    }

    #[test]
    fn a_long_concurrent_history_is_decided() {
        // 5 processes, 200 rounds of overlapping writes and reads of the
        // value written in the previous round: linearizable, and decided
        // quickly thanks to the memo.
        let mut ops = Vec::new();
        for round in 0..200u64 {
            let t = round * 10;
            for p in 0..4 {
                ops.push(op(R::W((round * 4 + p) as i64), t, Some(t + 8)));
            }
            if round > 0 {
                ops.push(op(R::Rd(Some(((round - 1) * 4 + 3) as i64)), t, Some(t + 1)));
            }
        }
        assert_eq!(check(&ops, None, reg, 10_000_000), Verdict::Linearizable);
    }
}
