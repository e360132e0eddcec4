//! The linearizability search: Wing & Gong's question (is there an order of the operations,
//! consistent with real time, in which a sequential model accepts every one?) answered
//! breadth-first, as Lowe's just-in-time linearization does: sweep the calls and returns in
//! time order and keep every *configuration* the history so far can end in — a model state,
//! the in-flight ops already linearized, the never-returning ops already used. At each return
//! only the configurations that linearized that op survive. Generic over a possibly
//! nondeterministic model.
//!
//! Segments: a quiescent point is an instant with no returning op in flight. Every op before
//! it returned before every op after it was called, so real time orders them, and the
//! configurations at the cut are all the later part needs: carrying them across loses no
//! linearization and adds none. The step budget is per segment (the ops between two such
//! points), so one hard segment answers "don't know" for itself, named by its time range and
//! op count, without eating the budget of the rest; the search starts again at the next op
//! that pins the state ([`Model::pins`]).
//!
//! Ops that never returned (`return_ns: None`, a timeout) may take effect at any time after
//! their call, or never: they stay available forever. Three rules keep them from multiplying
//! the configurations: one is never linearized without effect (a successor equal to the
//! state; that is the same as leaving it out, which it may always be); ops the model calls
//! alike ([`Model::class`]) are counted, not told apart; and a configuration is dropped when
//! another with the same state and in-flight part used no more of each class (whatever the
//! larger one can still do, the smaller one can too). Configurations are expanded
//! fewest-used first, returning ops before never-returning ones, so the ones that dominate
//! are found before the ones they make redundant.
//!
//! Pure: no clock, no IO. The same history and budget give the same answer on any machine.

use std::cmp::Reverse;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hash};

/// A map with a fixed hash seed: the order configurations are found in, hence the steps a
/// segment takes and the states evidence shows, must not change from run to run.
type FixedMap<K, V> = HashMap<K, V, BuildHasherDefault<DefaultHasher>>;

/// A sequential specification. `step` pushes every state the op may lead to from `state`
/// (none: the op cannot happen there with the outcome it had).
pub(crate) trait Model {
    type State: Clone + Eq + Hash;
    type Op;
    /// What makes never-returning ops interchangeable: two with the same class must step
    /// alike from every state. The search then counts how many of a class were used instead
    /// of which, so k timeouts alike cost k + 1 configurations, not 2^k.
    type Class: Eq + Hash;
    fn step(&self, state: &Self::State, op: &Self::Op, next: &mut Vec<Self::State>);
    fn class(&self, op: &Self::Op) -> Self::Class;
    /// The state `op` leaves the object in whatever came before, when its outcome shows all
    /// of it (a read of the whole state), read as loosely as the model allows. After a
    /// segment runs out of budget the search starts again from the first such op that is a
    /// segment of its own: every state the history may truly be in there is this one, so a
    /// violation found later is real.
    fn pins(&self, op: &Self::Op) -> Option<Self::State>;
}

/// An operation with its real-time interval; `return_ns: None` means it never returned.
#[derive(Debug, Clone)]
pub(crate) struct Timed<O> {
    pub(crate) call_ns: u64,
    pub(crate) return_ns: Option<u64>,
    pub(crate) op: O,
}

/// A run of ops between two quiescent points, as evidence names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentInfo {
    /// Its position among the history's segments, from 0.
    pub(crate) index: usize,
    /// The first call and the last return of its returning ops.
    pub(crate) from_ns: u64,
    pub(crate) to_ns: u64,
    /// Returning ops in it.
    pub(crate) ops: usize,
    /// Never-returning ops that may still take effect in it (called in it or before).
    pub(crate) open_ops: usize,
    /// Model steps its search took.
    pub(crate) steps: u64,
}

/// Where no configuration could go on.
#[derive(Debug, Clone)]
pub(crate) struct Stuck<S> {
    pub(crate) segment: SegmentInfo,
    /// The op that returned before any configuration could linearize it.
    pub(crate) blocked: usize,
    /// The states the history could be in just before (at most [`STATES_SHOWN`]).
    pub(crate) states: Vec<S>,
    /// The returning ops that returned last before it, oldest first (at most [`RECENT_SHOWN`]).
    pub(crate) recent: Vec<usize>,
}

/// How many of the possible states a [`Stuck`] keeps: enough to see why, few enough to read.
pub(crate) const STATES_SHOWN: usize = 4;
/// How many earlier ops a [`Stuck`] names.
pub(crate) const RECENT_SHOWN: usize = 8;

/// What the search found. The history is linearizable iff `illegal` and `exhausted` are
/// both empty.
#[derive(Debug, Clone)]
pub(crate) struct Outcome<S> {
    /// Where no configuration could go on: a violation.
    pub(crate) illegal: Option<Stuck<S>>,
    /// Segments that ran out of their step budget. The ops after each, up to the next op
    /// whose outcome pins the state ([`Model::pins`]), were not checked.
    pub(crate) exhausted: Vec<SegmentInfo>,
    pub(crate) segments: usize,
    /// The most steps any one segment took.
    pub(crate) max_steps: u64,
}

#[cfg(test)]
impl<S> Outcome<S> {
    fn linearizable(&self) -> bool {
        self.illegal.is_none() && self.exhausted.is_empty()
    }
}

/// How many never-returning ops of each class a configuration used (by class number).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Used(Vec<u32>);

impl Used {
    fn none(classes: usize) -> Used {
        Used(vec![0; classes])
    }

    fn with(&self, class: usize) -> Used {
        let mut more = self.clone();
        more.0[class] += 1;
        more
    }

    fn count(&self) -> u32 {
        self.0.iter().sum()
    }

    fn within(&self, other: &Used) -> bool {
        self.0.iter().zip(&other.0).all(|(a, b)| a <= b)
    }
}

/// The part of a configuration dominance compares whole: the model state and the in-flight
/// ops already linearized (ascending).
type Key<S> = (S, Vec<usize>);

/// Configurations, keeping for each key only the used sets no other one is within.
struct Configs<S> {
    by_key: FixedMap<Key<S>, Vec<Used>>,
}

impl<S: Clone + Eq + Hash> Configs<S> {
    fn new() -> Configs<S> {
        Configs { by_key: FixedMap::default() }
    }

    /// Adds a configuration unless one that dominates it is there; drops those it dominates.
    fn insert(&mut self, key: Key<S>, used: Used) -> bool {
        let sets = self.by_key.entry(key).or_default();
        if sets.iter().any(|s| s.within(&used)) {
            return false;
        }
        sets.retain(|s| !used.within(s));
        sets.push(used);
        true
    }

    fn holds(&self, key: &Key<S>, used: &Used) -> bool {
        self.by_key.get(key).is_some_and(|sets| sets.contains(used))
    }

    fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    fn states(&self) -> Vec<S> {
        let mut states: Vec<S> = Vec::new();
        for (state, _) in self.by_key.keys() {
            if !states.contains(state) {
                states.push(state.clone());
            }
        }
        states
    }

    fn iter(&self) -> impl Iterator<Item = (&Key<S>, &Used)> {
        self.by_key.iter().flat_map(|(key, sets)| sets.iter().map(move |u| (key, u)))
    }
}

/// Configurations waiting to be expanded, fewest never-returning ops used first, then in the
/// order they were found (deterministic).
struct Queue<S> {
    items: Vec<Option<(Key<S>, Used)>>,
    order: BinaryHeap<Reverse<(u32, usize)>>,
}

impl<S> Default for Queue<S> {
    fn default() -> Queue<S> {
        Queue { items: Vec::new(), order: BinaryHeap::new() }
    }
}

impl<S> Queue<S> {
    fn push(&mut self, key: Key<S>, used: Used) {
        self.order.push(Reverse((used.count(), self.items.len())));
        self.items.push(Some((key, used)));
    }

    fn pop(&mut self) -> Option<(Key<S>, Used)> {
        let Reverse((_, at)) = self.order.pop()?;
        self.items[at].take()
    }
}

/// A call or return, in the order the sweep meets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Mark {
    /// At equal times calls come first, so ops that merely touch count as concurrent (the
    /// permissive reading: no false alarm from clock granularity).
    Call,
    Return,
}

/// The calls and returns of `ops` in time order, and the segments they form.
struct Timeline {
    marks: Vec<(u64, Mark, usize)>,
    /// Per segment: its first mark's position, and its info with `steps` still 0.
    segments: Vec<(usize, SegmentInfo)>,
}

impl Timeline {
    fn new<O>(ops: &[Timed<O>]) -> Timeline {
        let mut marks: Vec<(u64, Mark, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            marks.push((op.call_ns, Mark::Call, i));
            if let Some(ret) = op.return_ns {
                marks.push((ret.max(op.call_ns), Mark::Return, i));
            }
        }
        marks.sort_unstable();
        let mut segments: Vec<(usize, SegmentInfo)> = Vec::new();
        let (mut in_flight, mut open_ops) = (0usize, 0usize);
        for (pos, &(t, mark, i)) in marks.iter().enumerate() {
            let returns = ops[i].return_ns.is_some();
            match (mark, returns) {
                (Mark::Call, false) => open_ops += 1,
                (Mark::Call, true) => {
                    if in_flight == 0 {
                        let index = segments.len();
                        let info = SegmentInfo { index, from_ns: t, to_ns: t, ops: 0, open_ops, steps: 0 };
                        segments.push((pos, info));
                    }
                    in_flight += 1;
                    if let Some((_, s)) = segments.last_mut() {
                        s.ops += 1;
                        s.open_ops = open_ops;
                    }
                }
                (Mark::Return, _) => {
                    in_flight -= 1;
                    if let Some((_, s)) = segments.last_mut() {
                        s.to_ns = t;
                    }
                }
            }
        }
        Timeline { marks, segments }
    }
}

/// Searches for a linearization of `ops` from `init`, allowing each segment `max_steps`
/// model steps.
pub(crate) fn search<M: Model>(model: &M, init: M::State, ops: &[Timed<M::Op>], max_steps: u64) -> Outcome<M::State> {
    let timeline = Timeline::new(ops);
    // Never-returning ops by class number: each class's first op (they step alike), and each
    // op's class number.
    let mut class_of = vec![usize::MAX; ops.len()];
    let mut first_of_class: Vec<usize> = Vec::new();
    let mut numbers: FixedMap<M::Class, usize> = FixedMap::default();
    for (i, op) in ops.iter().enumerate().filter(|(_, op)| op.return_ns.is_none()) {
        class_of[i] = *numbers.entry(model.class(&op.op)).or_insert_with(|| {
            first_of_class.push(i);
            first_of_class.len() - 1
        });
    }
    let mut frontier = Configs::new();
    frontier.insert((init, Vec::new()), Used::none(first_of_class.len()));
    // Per class, how many of its ops were called so far.
    let mut available = Used::none(first_of_class.len());
    let mut in_flight: Vec<usize> = Vec::new();
    let mut recent: Vec<usize> = Vec::new();
    let mut outcome = Outcome { illegal: None, exhausted: Vec::new(), segments: timeline.segments.len(), max_steps: 0 };
    // Whether the search is waiting, after an exhausted segment, for an op that pins the state.
    let mut lost = false;
    let mut segment = 0usize;
    let mut steps = 0u64;
    for (pos, &(_, mark, i)) in timeline.marks.iter().enumerate() {
        if timeline.segments.get(segment + 1).is_some_and(|&(start, _)| start == pos) {
            segment += 1;
            steps = 0;
        }
        match (mark, ops[i].return_ns.is_some()) {
            (Mark::Call, false) => available = available.with(class_of[i]),
            (Mark::Call, true) => in_flight.push(i),
            (Mark::Return, _) if lost => {
                in_flight.retain(|&k| k != i);
                let alone = timeline.segments[segment].1.ops == 1;
                if let Some(state) = model.pins(&ops[i].op).filter(|_| alone) {
                    frontier = Configs::new();
                    frontier.insert((state, Vec::new()), Used::none(first_of_class.len()));
                    recent.clear();
                    lost = false;
                }
            }
            (Mark::Return, _) => {
                let sweep =
                    Sweep { model, ops, first_of_class: &first_of_class, in_flight: &in_flight, available: &available };
                let info = |steps| SegmentInfo { steps, ..timeline.segments[segment].1 };
                match sweep.linearize(&frontier, i, &mut steps, max_steps) {
                    None => {
                        outcome.exhausted.push(info(steps));
                        lost = true;
                    }
                    Some(next) if next.is_empty() => {
                        let mut states = frontier.states();
                        states.truncate(STATES_SHOWN);
                        outcome.illegal = Some(Stuck { segment: info(steps), blocked: i, states, recent });
                        return outcome;
                    }
                    Some(next) => frontier = next,
                }
                in_flight.retain(|&k| k != i);
                outcome.max_steps = outcome.max_steps.max(steps);
                if recent.len() == RECENT_SHOWN {
                    recent.remove(0);
                }
                recent.push(i);
            }
        }
    }
    outcome
}

/// What one return's search may use.
struct Sweep<'a, M: Model> {
    model: &'a M,
    ops: &'a [Timed<M::Op>],
    /// Per class of never-returning ops, its first op.
    first_of_class: &'a [usize],
    /// Returning ops called and not yet returned (including the one returning now).
    in_flight: &'a [usize],
    /// Per class, how many of its ops were called so far.
    available: &'a Used,
}

impl<M: Model> Sweep<'_, M> {
    /// Every configuration in which `returning` has been linearized, reached from `frontier`
    /// by linearizing in-flight and available never-returning ops, with `returning` taken
    /// out of the in-flight part. `None` when the budget ran out. Linearizing more ops after
    /// `returning` is left to later returns: they can still do it.
    fn linearize(
        &self,
        frontier: &Configs<M::State>,
        returning: usize,
        steps: &mut u64,
        max_steps: u64,
    ) -> Option<Configs<M::State>> {
        let mut seen: Configs<M::State> = Configs::new();
        let mut done: Configs<M::State> = Configs::new();
        let mut queue = Queue::default();
        for (key, used) in frontier.iter() {
            if key.1.contains(&returning) {
                // Linearized by an earlier return's search.
                let rest = key.1.iter().copied().filter(|&k| k != returning).collect();
                done.insert((key.0.clone(), rest), used.clone());
            } else if seen.insert(key.clone(), used.clone()) {
                queue.push(key.clone(), used.clone());
            }
        }
        let mut next = Vec::new();
        while let Some((key, used)) = queue.pop() {
            if !seen.holds(&key, &used) {
                continue; // one that dominates it was found after it was queued
            }
            let (state, linearized) = &key;
            for &k in self.in_flight.iter().filter(|k| !linearized.contains(k)) {
                next.clear();
                self.model.step(state, &self.ops[k].op, &mut next);
                *steps += 1;
                for s in next.drain(..) {
                    if k == returning {
                        done.insert((s, linearized.clone()), used.clone());
                        continue;
                    }
                    let mut more = linearized.clone();
                    more.insert(more.partition_point(|&x| x < k), k);
                    let key = (s, more);
                    if seen.insert(key.clone(), used.clone()) {
                        queue.push(key, used.clone());
                    }
                }
            }
            for (class, &first) in self.first_of_class.iter().enumerate() {
                if used.0[class] == self.available.0[class] {
                    continue;
                }
                next.clear();
                self.model.step(state, &self.ops[first].op, &mut next);
                *steps += 1;
                let more = used.with(class);
                for s in next.drain(..).filter(|s| s != state) {
                    let key = (s, linearized.clone());
                    if seen.insert(key.clone(), more.clone()) {
                        queue.push(key, more.clone());
                    }
                }
            }
            if *steps > max_steps {
                return None;
            }
        }
        Some(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        type Class = (bool, u32);
        fn class(&self, op: &RegOp) -> (bool, u32) {
            match *op {
                RegOp::Write(v) => (true, v),
                RegOp::Read(v) => (false, v),
            }
        }
        fn step(&self, state: &u32, op: &RegOp, next: &mut Vec<u32>) {
            match *op {
                RegOp::Write(v) => next.push(v),
                RegOp::Read(v) if v == *state => next.push(v),
                RegOp::Read(_) => {}
            }
        }
        fn pins(&self, op: &RegOp) -> Option<u32> {
            match *op {
                RegOp::Read(v) => Some(v),
                RegOp::Write(_) => None,
            }
        }
    }

    fn t(call_ns: u64, return_ns: Option<u64>, op: RegOp) -> Timed<RegOp> {
        Timed { call_ns, return_ns, op }
    }

    fn run(ops: &[Timed<RegOp>]) -> Outcome<u32> {
        search(&Register, 0, ops, 1_000_000)
    }

    /// Whether it is linearizable, and in how many segments.
    fn check(ops: &[Timed<RegOp>]) -> (bool, usize) {
        let outcome = run(ops);
        (outcome.linearizable(), outcome.segments)
    }

    /// Goal: concurrent ops may be reordered to fit the model.
    #[test]
    fn concurrent_reorder_is_found() {
        let ops = [t(0, Some(10), RegOp::Read(1)), t(1, Some(5), RegOp::Write(1))];
        assert_eq!(check(&ops), (true, 1));
    }

    /// Goal: an op linearized to explain an earlier return (the write, for the read inside
    /// it) is not asked for again at its own return.
    #[test]
    fn an_op_linearized_early_counts_at_its_return() {
        let ops = [t(0, Some(10), RegOp::Write(1)), t(1, Some(5), RegOp::Read(1)), t(11, Some(12), RegOp::Read(1))];
        assert_eq!(check(&ops), (true, 2));
    }

    /// Goal: a stale read after a completed write is illegal, and the evidence names it, the
    /// state before it and the op before it.
    #[test]
    fn stale_read_is_illegal() {
        let ops = [t(0, Some(5), RegOp::Write(1)), t(6, Some(8), RegOp::Read(0))];
        let stuck = run(&ops).illegal.expect("illegal");
        assert_eq!((stuck.blocked, stuck.states, stuck.recent), (1, vec![1], vec![0]));
        assert_eq!((stuck.segment.index, stuck.segment.from_ns, stuck.segment.to_ns), (1, 6, 8));
    }

    /// Goal: an op that never returned may take effect late (or never).
    #[test]
    fn pending_op_may_take_effect_late() {
        let ops = [t(0, None, RegOp::Write(2)), t(5, Some(6), RegOp::Read(0)), t(7, Some(8), RegOp::Read(2))];
        assert_eq!(check(&ops), (true, 2));
    }

    /// Goal: an op that never returned may also never take effect.
    #[test]
    fn pending_op_may_never_take_effect() {
        let ops = [t(0, None, RegOp::Write(2)), t(5, Some(6), RegOp::Read(0)), t(7, Some(8), RegOp::Read(0))];
        assert!(run(&ops).linearizable());
    }

    /// Goal: an op that never returned takes effect at most once.
    #[test]
    fn pending_op_takes_effect_once() {
        let ops = [
            t(0, None, RegOp::Write(2)),
            t(1, Some(2), RegOp::Read(2)),
            t(3, Some(4), RegOp::Write(1)),
            t(5, Some(6), RegOp::Read(2)),
        ];
        assert_eq!(run(&ops).illegal.map(|s| s.blocked), Some(3));
    }

    /// Goal: the cut at a quiescent point carries every possible state, not one: the first
    /// segment may end in 1 or 2, and only 2 explains the second.
    #[test]
    fn every_state_crosses_a_cut() {
        let ops = [
            t(0, Some(10), RegOp::Write(1)),
            t(0, Some(10), RegOp::Write(2)),
            t(11, Some(12), RegOp::Read(2)),
            t(13, Some(14), RegOp::Read(2)),
        ];
        assert_eq!(check(&ops), (true, 3));
        let ops = [t(0, Some(10), RegOp::Write(1)), t(0, Some(10), RegOp::Write(2)), t(11, Some(12), RegOp::Read(3))];
        assert!(run(&ops).illegal.is_some());
    }

    /// Goal: many never-returning writes cost configurations linear in their number, not
    /// exponential: each segment stays far below a budget that 2^30 would exceed.
    #[test]
    fn many_pending_ops_stay_cheap() {
        let mut ops: Vec<_> = (0..30).map(|i| t(i, None, RegOp::Write(i as u32 + 1))).collect();
        for i in 0..30u64 {
            ops.push(t(100 + 2 * i, Some(101 + 2 * i), RegOp::Read(30 - i as u32)));
        }
        let outcome = search(&Register, 0, &ops, 100_000);
        assert_eq!((outcome.linearizable(), outcome.segments), (true, 30));
        assert!(outcome.max_steps < 100_000, "{}", outcome.max_steps);
    }

    /// Goal: never-returning ops alike are counted: three writes of 5 explain three reads of
    /// 5 between writes of 0, but not four.
    #[test]
    fn alike_pending_ops_are_counted() {
        let mut ops: Vec<_> = (0..3).map(|i| t(i, None, RegOp::Write(5))).collect();
        for i in 0..3 {
            ops.push(t(10 + 4 * i, Some(11 + 4 * i), RegOp::Read(5)));
            ops.push(t(12 + 4 * i, Some(13 + 4 * i), RegOp::Write(0)));
        }
        assert!(run(&ops).linearizable());
        ops.push(t(30, Some(31), RegOp::Read(5)));
        assert_eq!(run(&ops).illegal.map(|s| s.blocked), Some(9));
    }

    /// Registers by key, searched as one object: what the search costs without splitting a
    /// history per key.
    struct Registers;
    impl Model for Registers {
        type State = Vec<u32>;
        type Op = (usize, RegOp);
        type Class = (usize, bool, u32);
        fn class(&self, (key, op): &(usize, RegOp)) -> (usize, bool, u32) {
            let (write, v) = Register.class(op);
            (*key, write, v)
        }
        fn step(&self, state: &Vec<u32>, (key, op): &(usize, RegOp), next: &mut Vec<Vec<u32>>) {
            let mut one = Vec::new();
            Register.step(&state[*key], op, &mut one);
            next.extend(one.into_iter().map(|v| {
                let mut s = state.clone();
                s[*key] = v;
                s
            }));
        }
        fn pins(&self, _: &(usize, RegOp)) -> Option<Vec<u32>> {
            None
        }
    }

    /// Goal: independent objects searched together are exponential (every subset of every
    /// key's in-flight ops is a configuration), and apart are linear — why the lease checker
    /// searches each worker ID alone.
    #[test]
    fn independent_objects_are_exponential_together() {
        let keys = 14;
        let per_key = |k: usize| {
            let v = k as u32 + 1;
            [(0, 100, RegOp::Write(v)), (1, 99, RegOp::Read(v)), (2, 98, RegOp::Write(v)), (3, 97, RegOp::Read(v))]
        };
        let budget = 20_000;
        let together: Vec<_> = (0..keys)
            .flat_map(|k| per_key(k).map(|(c, r, op)| Timed { call_ns: c, return_ns: Some(r), op: (k, op) }))
            .collect();
        assert_eq!(search(&Registers, vec![0; keys], &together, budget).exhausted.len(), 1);
        for k in 0..keys {
            let apart: Vec<_> = per_key(k).into_iter().map(|(c, r, op)| t(c, Some(r), op)).collect();
            let outcome = search(&Register, 0, &apart, budget);
            assert!(outcome.linearizable() && outcome.max_steps < 100, "key {k}: {outcome:?}");
        }
    }

    /// Goal: a segment that needs more steps than allowed says so, and which segment it was.
    #[test]
    fn budget_exhaustion_is_reported() {
        let mut ops: Vec<_> = (0..12).map(|i| t(0, Some(100), RegOp::Write(i))).collect();
        ops.insert(0, t(0, Some(1), RegOp::Write(0)));
        let outcome = search(&Register, 0, &ops, 5);
        assert_eq!(outcome.exhausted.iter().map(|s| (s.index, s.ops)).collect::<Vec<_>>(), [(0, 13)]);
        assert!(outcome.illegal.is_none());
    }

    /// Goal: after an exhausted segment the search starts again at the next read that is a
    /// segment of its own, and finds a violation after it; without such a read it checks
    /// nothing more.
    #[test]
    fn the_search_starts_again_at_a_read() {
        let mut ops: Vec<_> = (0..12).map(|i| t(0, Some(100), RegOp::Write(i))).collect();
        ops.push(t(101, Some(102), RegOp::Write(20)));
        ops.push(t(103, Some(104), RegOp::Read(7)));
        ops.push(t(105, Some(106), RegOp::Read(8)));
        let outcome = search(&Register, 0, &ops, 5);
        assert_eq!((outcome.exhausted.len(), outcome.illegal.map(|s| (s.blocked, s.states))), (1, Some((14, vec![7]))));
        ops.truncate(13);
        ops.push(t(102, Some(106), RegOp::Read(8)));
        let outcome = search(&Register, 0, &ops, 5);
        assert_eq!(
            (outcome.exhausted.len(), outcome.illegal.is_none()),
            (1, true),
            "a read overlapping a write pins nothing"
        );
    }
}
