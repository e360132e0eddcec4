//! Unique IDs: no ID was returned twice, across all workers and all time. Works on ranges
//! (sorted by first ID, swept for overlaps) so a run of millions of IDs stays cheap.

use serde_json::json;

use crate::checker::{describe_op, CheckResult, Evidence, Valid};
use crate::history::{self, Event, Phase};

pub const NAME: &str = "unique-ids";

/// Checks that no two returned ID ranges (nor two IDs within one range) coincide.
pub fn check(events: &[Event]) -> CheckResult {
    let ops = history::client_ops(events);
    let ok_ops: Vec<_> = ops.iter().filter(|op| op.outcome() == Phase::Ok).collect();
    // (first, last, op) per non-empty range: an empty range holds no ID and cannot collide.
    let mut spans: Vec<(u64, u64, usize)> = Vec::new();
    let mut total_ids: u64 = 0;
    for (index, op) in ok_ops.iter().enumerate() {
        for range in op.ranges() {
            if let Some(last) = range.last() {
                spans.push((range.first, last, index));
                total_ids = total_ids.saturating_add(range.count);
            }
        }
    }
    spans.sort_unstable();

    let mut evidence = Evidence::default();
    let mut duplicated: u64 = 0;
    // The span reaching furthest so far: any later span starting at or before its end overlaps.
    let mut reach: Option<(u64, u64, usize)> = None;
    for &(first, last, index) in &spans {
        if let Some((r_first, r_last, r_index)) = reach {
            if first <= r_last {
                let overlap_last = last.min(r_last);
                duplicated = duplicated.saturating_add(overlap_last - first + 1);
                evidence.push(json!({
                    "violation": "duplicate-ids",
                    "overlap": [first, overlap_last - first + 1],
                    "a": {"range": [r_first, r_last - r_first + 1], "op": describe_op(ok_ops[r_index])},
                    "b": {"range": [first, last - first + 1], "op": describe_op(ok_ops[index])},
                }));
            }
        }
        if reach.is_none_or(|(_, r_last, _)| last > r_last) {
            reach = Some((first, last, index));
        }
    }

    let counts = format!("{total_ids} IDs in {} ranges from {} ok ops", spans.len(), ok_ops.len());
    let (valid, summary) = if evidence.total() > 0 {
        (Valid::False, format!("{} overlapping range pairs ({duplicated} duplicate IDs); {counts}", evidence.total()))
    } else if ok_ops.is_empty() {
        (Valid::Unknown, "no ok client ops: nothing was minted to check".to_string())
    } else {
        (Valid::True, format!("all unique: {counts}"))
    };
    CheckResult { name: NAME.to_string(), valid, summary, evidence: evidence.into_items() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::testkit::{id, H};

    /// Goal: disjoint ranges from many workers pass, and the count covers every ID.
    #[test]
    fn disjoint_ranges_are_unique() {
        let mut h = H::default();
        h.ok("w1", 1, (0, 1), &[(id(5, 1, 0), 4096), (id(6, 1, 0), 10)], Some((1, 10)));
        h.ok("w2", 2, (0, 1), &[(id(5, 2, 0), 4096)], Some((2, 11)));
        h.ok("w1", 1, (2, 3), &[(id(7, 1, 0), 1)], None);
        let r = check(&h.events);
        assert_eq!(r.valid, Valid::True, "{}", r.summary);
        assert!(r.summary.contains("8203 IDs in 4 ranges from 3 ok ops"), "{}", r.summary);
    }

    /// Goal: the same single ID from two workers is caught.
    #[test]
    fn a_duplicate_id_is_caught() {
        let mut h = H::default();
        h.ok("w1", 1, (0, 1), &[(id(5, 1, 7), 1)], None);
        h.ok("w2", 2, (0, 1), &[(id(5, 1, 7), 1)], None);
        let r = check(&h.events);
        assert_eq!(r.valid, Valid::False);
        assert_eq!(r.evidence[0]["overlap"], json!([id(5, 1, 7), 1]));
    }

    /// Goal: a partial overlap, and one range hidden inside a long earlier one, are caught
    /// even when a short range sits between them in sort order.
    #[test]
    fn overlapping_ranges_are_caught() {
        let base = id(5, 1, 0);
        let mut h = H::default();
        h.ok("w1", 1, (0, 1), &[(base, 100)], None);
        h.ok("w1", 1, (2, 3), &[(base + 10, 5)], None);
        h.ok("w2", 2, (2, 3), &[(base + 50, 60)], None);
        let r = check(&h.events);
        assert_eq!(r.valid, Valid::False);
        assert_eq!(r.evidence.len(), 2, "{:?}", r.evidence);
        assert!(r.summary.contains("55 duplicate IDs"), "{}", r.summary);
    }

    /// Goal: adjacent ranges touch without overlapping.
    #[test]
    fn adjacent_ranges_do_not_overlap() {
        let mut h = H::default();
        h.ok("w1", 1, (0, 1), &[(100, 10), (110, 10)], None);
        assert_eq!(check(&h.events).valid, Valid::True);
    }

    /// Goal: a run where nothing was minted is not reported as proven unique.
    #[test]
    fn nothing_minted_is_unknown() {
        let mut h = H::default();
        h.not_ok("w1", 1, (0, 1), Phase::Fail);
        assert_eq!(check(&h.events).valid, Valid::Unknown);
    }
}
