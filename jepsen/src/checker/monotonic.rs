//! Monotonic IDs per worker process: if op A completed before op B was invoked on the same
//! worker process, every ID of A is below every ID of B; and within one batch the ranges
//! ascend. Holds across restarts too (the persisted ceiling makes a restarted worker start
//! in a later millisecond), but not across a `state-lost` process event: with the ceiling
//! gone, the worker's ops after it are judged as another worker's.

use std::collections::BTreeMap;

use serde_json::json;

use crate::checker::{describe_op, CheckResult, Evidence, Valid};
use crate::history::{self, ClientOp, Event, Invocation, Phase, ProcessEventKind};

pub const NAME: &str = "monotonic-per-worker";

/// An ok op with IDs, and its smallest and largest ID.
struct Minted<'h, 'a> {
    op: &'a Invocation<'h, ClientOp>,
    min: u64,
    max: u64,
    complete_ns: u64,
}

pub fn check(events: &[Event]) -> CheckResult {
    let ops = history::client_ops(events);
    let state_lost: Vec<(&str, u64)> = history::process_events(events)
        .filter(|e| e.event == ProcessEventKind::StateLost)
        .map(|e| (e.process.as_str(), e.time_ns))
        .collect();
    // Per worker and per state dir it had: the number of state losses before the op.
    let mut by_worker: BTreeMap<(&str, usize), Vec<Minted>> = BTreeMap::new();
    let mut evidence = Evidence::default();
    for op in ops.iter().filter(|op| op.outcome() == Phase::Ok) {
        check_batch_order(op, &mut evidence);
        if let (Some((min, max)), Some(complete_ns)) = (op.id_bounds(), op.complete_ns()) {
            let worker = op.invoke.worker.as_str();
            let losses = state_lost.iter().filter(|(w, at)| *w == worker && *at <= op.invoke_ns()).count();
            by_worker.entry((worker, losses)).or_default().push(Minted { op, min, max, complete_ns });
        }
    }
    let checked: usize = by_worker.values().map(Vec::len).sum();
    for minted in by_worker.values_mut() {
        check_real_time_order(minted, &mut evidence);
    }

    let (valid, summary) = if evidence.total() > 0 {
        (Valid::False, format!("{} ordering violations among {checked} ok ops", evidence.total()))
    } else if checked == 0 {
        (Valid::Unknown, "no ok client ops with IDs: nothing to order".to_string())
    } else {
        (Valid::True, format!("{checked} ok ops on {} worker processes in order", by_worker.len()))
    };
    CheckResult { name: NAME.to_string(), valid, summary, evidence: evidence.into_items() }
}

/// Within one response, each range must start after the previous one ended.
fn check_batch_order(op: &Invocation<'_, ClientOp>, evidence: &mut Evidence) {
    let ranges = op.ranges().iter().filter(|r| r.count > 0).collect::<Vec<_>>();
    for pair in ranges.windows(2) {
        if pair[0].last().is_some_and(|last| last >= pair[1].first) {
            evidence.push(json!({
                "violation": "batch-not-ascending",
                "ranges": [pair[0], pair[1]],
                "op": describe_op(op),
            }));
        }
    }
}

/// Sweeps one worker's ops in invoke order, keeping the largest ID of all ops that completed
/// before the current invoke: that maximum must be below the current op's smallest ID.
fn check_real_time_order(minted: &mut [Minted], evidence: &mut Evidence) {
    minted.sort_by_key(|m| m.op.invoke_ns());
    let mut by_completion: Vec<usize> = (0..minted.len()).collect();
    by_completion.sort_by_key(|&i| minted[i].complete_ns);

    let mut done = 0;
    let mut highest: Option<usize> = None;
    for b in 0..minted.len() {
        let invoke_ns = minted[b].op.invoke_ns();
        while done < by_completion.len() && minted[by_completion[done]].complete_ns < invoke_ns {
            let a = by_completion[done];
            if highest.is_none_or(|h| minted[a].max > minted[h].max) {
                highest = Some(a);
            }
            done += 1;
        }
        if let Some(a) = highest.filter(|&a| minted[a].max >= minted[b].min) {
            evidence.push(json!({
                "violation": "not-increasing",
                "earlier": {"max_id": minted[a].max, "op": describe_op(minted[a].op)},
                "later": {"min_id": minted[b].min, "op": describe_op(minted[b].op)},
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::testkit::{id, H};

    /// Goal: sequential increasing ops pass, and concurrent ops may interleave freely.
    #[test]
    fn increasing_and_concurrent_ops_pass() {
        let mut h = H::default();
        h.ok("w1", 1, (0, 10), &[(id(5, 1, 0), 3)], None);
        h.ok("w1", 2, (11, 20), &[(id(15, 1, 0), 3)], None);
        // Concurrent with the next one (overlapping in time), smaller IDs but allowed.
        h.ok("w1", 1, (30, 40), &[(id(35, 1, 0), 1)], None);
        h.ok("w1", 2, (31, 39), &[(id(32, 1, 0), 1)], None);
        // Another worker's IDs are unrelated.
        h.ok("w2", 3, (50, 60), &[(id(1, 2, 0), 1)], None);
        let r = check(&h.events);
        assert_eq!(r.valid, Valid::True, "{:?}", r.evidence);
    }

    /// Goal: a later op (invoked after an earlier one completed) with a smaller ID is caught.
    #[test]
    fn a_non_monotonic_pair_is_caught() {
        let mut h = H::default();
        h.ok("w1", 1, (0, 10), &[(id(20, 1, 0), 1)], None);
        h.ok("w1", 2, (5, 8), &[(id(21, 1, 0), 1)], None);
        h.ok("w1", 3, (11, 12), &[(id(20, 1, 0), 1)], None);
        let r = check(&h.events);
        assert_eq!(r.valid, Valid::False);
        assert_eq!(r.evidence.len(), 1);
        assert_eq!(r.evidence[0]["earlier"]["max_id"], json!(id(21, 1, 0)));
    }

    /// Goal: after a `state-lost` event a worker's IDs are not compared with its IDs from
    /// before (its ceiling is gone), but still with each other.
    #[test]
    fn a_lost_state_dir_starts_a_new_order() {
        let mut h = H::default();
        h.ok("w1", 1, (0, 10), &[(id(20, 1, 0), 1)], None);
        h.process("w1", ProcessEventKind::StateLost, None, 11);
        h.ok("w1", 2, (12, 13), &[(id(10, 2, 0), 1)], None);
        assert_eq!(check(&h.events).valid, Valid::True);
        h.ok("w1", 2, (14, 15), &[(id(9, 2, 0), 1)], None);
        assert_eq!(check(&h.events).valid, Valid::False);
    }

    /// Goal: a later op repeating the earlier op's last ID is not "increasing".
    #[test]
    fn a_repeated_id_is_not_increasing() {
        let mut h = H::default();
        h.ok("w1", 1, (0, 10), &[(id(20, 1, 0), 3)], None);
        h.ok("w1", 1, (11, 12), &[(id(20, 1, 2), 2)], None);
        assert_eq!(check(&h.events).valid, Valid::False);
    }

    /// Goal: a batch whose ranges go backwards is caught.
    #[test]
    fn a_descending_batch_is_caught() {
        let mut h = H::default();
        h.ok("w1", 1, (0, 10), &[(id(20, 1, 0), 5), (id(20, 1, 2), 5)], None);
        let r = check(&h.events);
        assert_eq!(r.valid, Valid::False);
        assert_eq!(r.evidence[0]["violation"], "batch-not-ascending");
    }

    /// Goal: fail/info ops do not count, and with no ok op the answer is Unknown.
    #[test]
    fn only_ok_ops_are_ordered() {
        let mut h = H::default();
        h.not_ok("w1", 1, (0, 1), Phase::Info);
        assert_eq!(check(&h.events).valid, Valid::Unknown);
    }
}
