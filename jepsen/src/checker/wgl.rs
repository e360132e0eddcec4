//! The Wing–Gong linearizability search with Lowe's memoization (as in Porcupine): find an
//! order of the operations, consistent with real time, in which a sequential model accepts
//! every one. Generic over a possibly nondeterministic model; bounded by a step and time
//! budget so a hard history yields "don't know" instead of a hung checker.

use std::collections::HashSet;
use std::hash::Hash;
use std::time::Instant;

/// A sequential specification. `step` pushes every state the op may lead to from `state`
/// (none: the op cannot happen there with the outcome it had).
pub(crate) trait Model {
    type State: Clone + Eq + Hash;
    type Op;
    fn step(&self, state: &Self::State, op: &Self::Op, next: &mut Vec<Self::State>);
}

/// An operation with its real-time interval; `return_ns: None` means it never returned: it
/// may take effect at any time after its call, or never. The search never linearizes such
/// an op without effect (a successor equal to the current state): that is the same as
/// leaving it out, which it may always be. This keeps crashed ops from multiplying the
/// search space by every place a no-op could go.
#[derive(Debug, Clone)]
pub(crate) struct Timed<O> {
    pub(crate) call_ns: u64,
    pub(crate) return_ns: Option<u64>,
    pub(crate) op: O,
}

/// Where the search got stuck: the longest linearizable prefix it found.
#[derive(Debug, Clone)]
pub(crate) struct Stuck<S> {
    /// Indexes of the prefix's ops in linearization order.
    pub(crate) prefix: Vec<usize>,
    /// The model state after the prefix.
    pub(crate) state: S,
    /// The op whose return came before any remaining op could be linearized.
    pub(crate) blocked: usize,
}

#[derive(Debug, Clone)]
pub(crate) enum Outcome<S> {
    Linearizable,
    Illegal(Stuck<S>),
    /// The budget ran out after this many steps.
    Exhausted(u64),
}

/// Limits on one search.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    pub(crate) max_steps: u64,
    pub(crate) deadline: Instant,
}

const NIL: usize = usize::MAX;
const HEAD: usize = 0;

/// A node of the doubly linked list of call and return entries (index 0 is the head).
#[derive(Debug, Clone, Copy)]
struct Node {
    op: usize,
    is_call: bool,
    /// For a call: its return's node.
    partner: usize,
    prev: usize,
    next: usize,
}

struct Entries {
    nodes: Vec<Node>,
}

impl Entries {
    /// Calls and returns in time order; at equal times calls first, so ops that merely touch
    /// count as concurrent (the permissive reading: no false alarm from clock granularity).
    fn new<O>(ops: &[Timed<O>]) -> Entries {
        let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            let ret = op.return_ns.map_or(u64::MAX, |r| r.max(op.call_ns));
            order.push((op.call_ns, false, i));
            order.push((ret, true, i));
        }
        order.sort_unstable();
        let mut nodes = vec![Node { op: NIL, is_call: false, partner: NIL, prev: NIL, next: NIL }; order.len() + 1];
        let mut call_node = vec![NIL; ops.len()];
        for (k, &(_, is_return, op)) in order.iter().enumerate() {
            let n = k + 1;
            nodes[n] = Node { op, is_call: !is_return, partner: NIL, prev: n - 1, next: NIL };
            nodes[n - 1].next = n;
            if is_return {
                nodes[call_node[op]].partner = n;
            } else {
                call_node[op] = n;
            }
        }
        Entries { nodes }
    }

    fn unlink(&mut self, n: usize) {
        let Node { prev, next, .. } = self.nodes[n];
        self.nodes[prev].next = next;
        if next != NIL {
            self.nodes[next].prev = prev;
        }
    }

    fn relink(&mut self, n: usize) {
        let Node { prev, next, .. } = self.nodes[n];
        self.nodes[prev].next = n;
        if next != NIL {
            self.nodes[next].prev = n;
        }
    }

    /// Takes a linearized op's call and return out of the list.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.nodes[call].partner);
    }

    /// Puts them back, in the reverse order of `lift`.
    fn unlift(&mut self, call: usize) {
        self.relink(self.nodes[call].partner);
        self.relink(call);
    }
}

struct Frame<S> {
    call: usize,
    prev_state: S,
    /// Which of the model's successor states this frame chose.
    alternative: usize,
}

/// Searches for a linearization of `ops` from `init`.
pub(crate) fn search<M: Model>(model: &M, init: M::State, ops: &[Timed<M::Op>], budget: Budget) -> Outcome<M::State> {
    let mut entries = Entries::new(ops);
    let mut linearized = vec![0u64; ops.len().div_ceil(64)];
    let mut seen: HashSet<(Vec<u64>, M::State)> = HashSet::new();
    let mut stack: Vec<Frame<M::State>> = Vec::new();
    let mut state = init;
    let mut successors = Vec::new();
    let mut best: Option<Stuck<M::State>> = None;
    let mut cursor = entries.nodes[HEAD].next;
    let mut first_alternative = 0;
    let mut steps: u64 = 0;
    while entries.nodes[HEAD].next != NIL {
        steps += 1;
        // Reading the clock every 1024 steps keeps it off the hot path.
        if steps > budget.max_steps || (steps & 1023 == 0 && Instant::now() > budget.deadline) {
            return Outcome::Exhausted(steps);
        }
        // Every remaining call has its return later in the list, so the walk meets a return
        // before it runs off the end.
        let node = entries.nodes[cursor];
        let pending = ops[node.op].return_ns.is_none();
        if node.is_call {
            successors.clear();
            model.step(&state, &ops[node.op].op, &mut successors);
            let (word, bit) = (node.op / 64, 1u64 << (node.op % 64));
            linearized[word] |= bit;
            let chosen = (first_alternative..successors.len()).find(|&k| {
                !(pending && successors[k] == state) && seen.insert((linearized.clone(), successors[k].clone()))
            });
            first_alternative = 0;
            match chosen {
                Some(k) => {
                    let next_state = successors.swap_remove(k);
                    stack.push(Frame {
                        call: cursor,
                        prev_state: std::mem::replace(&mut state, next_state),
                        alternative: k,
                    });
                    entries.lift(cursor);
                    cursor = entries.nodes[HEAD].next;
                }
                None => {
                    linearized[word] &= !bit;
                    cursor = node.next;
                }
            }
        } else if pending {
            // Returns at infinity sort last: only ops that never returned remain, and each
            // may be left out.
            return Outcome::Linearizable;
        } else {
            if best.as_ref().is_none_or(|b| stack.len() > b.prefix.len()) {
                let prefix = stack.iter().map(|f| entries.nodes[f.call].op).collect();
                best = Some(Stuck { prefix, state: state.clone(), blocked: node.op });
            }
            let Some(frame) = stack.pop() else {
                // Nothing left to undo: no order works. `best` was recorded just above.
                return Outcome::Illegal(best.unwrap_or(Stuck { prefix: Vec::new(), state, blocked: node.op }));
            };
            let op = entries.nodes[frame.call].op;
            linearized[op / 64] &= !(1u64 << (op % 64));
            state = frame.prev_state;
            entries.unlift(frame.call);
            cursor = frame.call;
            first_alternative = frame.alternative + 1;
        }
    }
    Outcome::Linearizable
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A register: `Write(v)` sets it, `Read(v)` must see `v`.
    struct Register;
    #[derive(Debug)]
    enum RegOp {
        Write(u32),
        Read(u32),
    }
    impl Model for Register {
        type State = u32;
        type Op = RegOp;
        fn step(&self, state: &u32, op: &RegOp, next: &mut Vec<u32>) {
            match *op {
                RegOp::Write(v) => next.push(v),
                RegOp::Read(v) if v == *state => next.push(v),
                RegOp::Read(_) => {}
            }
        }
    }

    fn t(call_ns: u64, return_ns: Option<u64>, op: RegOp) -> Timed<RegOp> {
        Timed { call_ns, return_ns, op }
    }

    fn budget() -> Budget {
        Budget { max_steps: 1_000_000, deadline: Instant::now() + Duration::from_secs(10) }
    }

    /// Goal: concurrent ops may be reordered to fit the model.
    #[test]
    fn concurrent_reorder_is_found() {
        let ops = [t(0, Some(10), RegOp::Read(1)), t(1, Some(5), RegOp::Write(1))];
        assert!(matches!(search(&Register, 0, &ops, budget()), Outcome::Linearizable));
    }

    /// Goal: a stale read after a completed write is illegal, and the evidence names it.
    #[test]
    fn stale_read_is_illegal() {
        let ops = [t(0, Some(5), RegOp::Write(1)), t(6, Some(8), RegOp::Read(0))];
        match search(&Register, 0, &ops, budget()) {
            Outcome::Illegal(stuck) => assert_eq!((stuck.prefix, stuck.state, stuck.blocked), (vec![0], 1, 1)),
            other => panic!("expected illegal, got {other:?}"),
        }
    }

    /// Goal: an op that never returned may take effect late (or never).
    #[test]
    fn pending_op_may_take_effect_late() {
        let ops = [t(0, None, RegOp::Write(2)), t(5, Some(6), RegOp::Read(0)), t(7, Some(8), RegOp::Read(2))];
        assert!(matches!(search(&Register, 0, &ops, budget()), Outcome::Linearizable));
    }

    /// Goal: an op that never returned may also never take effect.
    #[test]
    fn pending_op_may_never_take_effect() {
        let ops = [t(0, None, RegOp::Write(2)), t(5, Some(6), RegOp::Read(0)), t(7, Some(8), RegOp::Read(0))];
        assert!(matches!(search(&Register, 0, &ops, budget()), Outcome::Linearizable));
    }

    /// Goal: a search that needs more steps than allowed says so instead of guessing.
    #[test]
    fn budget_exhaustion_is_reported() {
        let ops: Vec<_> = (0..12).map(|i| t(0, Some(100), RegOp::Write(i))).collect();
        let tight = Budget { max_steps: 5, deadline: Instant::now() + Duration::from_secs(10) };
        assert!(matches!(search(&Register, 0, &ops, tight), Outcome::Exhausted(_)));
    }
}
