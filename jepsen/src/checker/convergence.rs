//! Copies of one state dir converge (`clone-state`): a worker's state dir copied to new
//! processes (a cloned VM, same certificate identity) gives them one holder ID; the registry
//! lets the newest incarnation have the holder's lease and tells every older one SUPERSEDED,
//! which exits once, gives its holder ID up and comes back under restart-always as a
//! stranger. So, per group (the source and its copies):
//! - no member exits more often after the first copy than there are copies
//!   (`superseded-more-than-once`: each copy supersedes each older member at most once, so
//!   more exits mean two copies fencing each other in turns, forever); an exit whose recorded
//!   cause is not `SUPERSEDED` (a failing disk, a lease lost to a fault: the simulator knows
//!   the cause) is no supersede and not counted, and an exit without a cause is;
//! - at the end, every member's last lease names a holder ID and a worker ID of its own
//!   (`still-shared`), judged only when the history runs at least [`SETTLE_MS`] past the last
//!   copy (else Unknown), and only from lease events seen after each member's last (re)start.
//!
//! Duplicates themselves are the other checkers' business; this one says whether the copies
//! stopped contending.

use std::collections::BTreeMap;

use serde_json::json;

use crate::checker::{CheckResult, Evidence, Valid};
use crate::history::{self, Event, LeaseEvent, ProcessEventKind};

pub const NAME: &str = "clone-convergence";

/// How long after the last copy the members must have settled: a supersede needs the older
/// process's next renewal (a third of its 3 s TTL), the restart pause (1 s) and a boot.
pub const SETTLE_MS: u64 = 8_000;

const MS: u64 = 1_000_000;

/// The cause of an exit that a supersede explains (the worker's park cause on the wire).
const SUPERSEDED: &str = "SUPERSEDED";

/// The source and copies of one state dir, and when the first and the last copy started.
#[derive(Debug)]
struct Group<'a> {
    members: Vec<&'a str>,
    since_ns: u64,
    last_copy_ns: u64,
}

pub fn check(events: &[Event]) -> CheckResult {
    let groups = groups(events);
    if groups.is_empty() {
        let summary = "not exercised: no state dir was copied".to_string();
        return CheckResult { name: NAME.to_string(), valid: Valid::True, summary, evidence: Vec::new() };
    }
    let end_ns = events.iter().map(Event::time_ns).max().unwrap_or(0);
    let (mut violations, mut doubts) = (Evidence::default(), Evidence::default());
    let mut described = Vec::new();
    for (source, group) in &groups {
        let exits = exits_since(events, group);
        let copies = group.members.len() - 1;
        for (&member, &count) in exits.iter().filter(|(_, &count)| count > copies) {
            violations.push(json!({"violation": "superseded-more-than-once", "process": member, "exits": count}));
        }
        let settled = end_ns >= group.last_copy_ns + SETTLE_MS * MS;
        judge_final(events, group, settled, (&mut violations, &mut doubts));
        let exits: Vec<String> = exits.iter().map(|(m, c)| format!("{m} {c}")).collect();
        described.push(format!("{source} → {} (exits: {})", group.members[1..].join(", "), exits.join(", ")));
    }
    let counts = format!("{} copied state dirs: {}", groups.len(), described.join("; "));
    let (valid, summary, evidence) = if violations.total() > 0 {
        (Valid::False, format!("{} convergence violations; {counts}", violations.total()), violations)
    } else if doubts.total() > 0 {
        (Valid::Unknown, format!("{} questions the history cannot answer; {counts}", doubts.total()), doubts)
    } else {
        (Valid::True, format!("converged, each under its own holder and worker ID: {counts}"), violations)
    };
    CheckResult { name: NAME.to_string(), valid, summary, evidence: evidence.into_items() }
}

/// The groups by source, from the `cloned` process events.
fn groups(events: &[Event]) -> BTreeMap<&str, Group<'_>> {
    let mut groups: BTreeMap<&str, Group> = BTreeMap::new();
    for event in history::process_events(events).filter(|e| e.event == ProcessEventKind::Cloned) {
        let Some(source) = event.copy_of.as_deref() else { continue };
        let first = Group { members: vec![source], since_ns: event.time_ns, last_copy_ns: event.time_ns };
        let group = groups.entry(source).or_insert(first);
        group.members.push(&event.process);
        group.since_ns = group.since_ns.min(event.time_ns);
        group.last_copy_ns = group.last_copy_ns.max(event.time_ns);
    }
    groups
}

/// How often each member exited by itself since the group's first copy.
fn exits_since<'a>(events: &'a [Event], group: &Group<'a>) -> BTreeMap<&'a str, usize> {
    let mut exits: BTreeMap<&str, usize> = group.members.iter().map(|&m| (m, 0)).collect();
    let own_exits = history::process_events(events).filter(|e| {
        e.event == ProcessEventKind::Exited
            && e.time_ns >= group.since_ns
            && e.cause.as_deref().is_none_or(|cause| cause == SUPERSEDED)
    });
    for event in own_exits {
        if let Some(count) = exits.get_mut(event.process.as_str()) {
            *count += 1;
        }
    }
    exits
}

/// Every member's last lease since its last (re)start: holder IDs and worker IDs pairwise
/// distinct once settled.
fn judge_final(events: &[Event], group: &Group, settled: bool, (violations, doubts): (&mut Evidence, &mut Evidence)) {
    let mut last: Vec<(&str, &LeaseEvent)> = Vec::new();
    for &member in &group.members {
        let started_ns = history::process_events(events)
            .filter(|e| e.process == member && e.event != ProcessEventKind::Exited)
            .map(|e| e.time_ns)
            .max()
            .unwrap_or(0);
        let latest = history::lease_events(events)
            .filter(|e| e.worker == member && e.time_ns >= started_ns && e.holder.is_some())
            .max_by_key(|e| e.time_ns);
        match latest {
            Some(lease) => last.push((member, lease)),
            None => doubts.push(json!({"doubt": "no lease seen since its last start", "process": member})),
        }
    }
    for (i, (a, la)) in last.iter().enumerate() {
        for (b, lb) in &last[i + 1..] {
            if la.holder == lb.holder || la.worker_id == lb.worker_id {
                let item = json!({"processes": [a, b], "leases": [la, lb]});
                if settled {
                    violations.push(json!({"violation": "still-shared", "detail": item}));
                } else {
                    doubts.push(json!({"doubt": "the run ended before the copies could settle", "detail": item}));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::testkit::H;
    use crate::history::LeaseEventKind::{Acquired, Parked};

    /// w1 (holder h1, worker ID 1) is copied to c1 at 1000; c1 takes worker ID 2 as the newest
    /// incarnation of h1, w1 is superseded, exits once and comes back as h2 on worker ID 1.
    fn converged() -> H {
        let mut h = H::default();
        h.lease("w1", Acquired, (1, 100), Some(3000), 0).holder("h1");
        h.process("c1", ProcessEventKind::Cloned, Some("w1"), 1000);
        h.lease("c1", Acquired, (2, 200), Some(4000), 1100).holder("h1");
        h.lease("w1", Parked, (1, 100), Some(3000), 2000).holder("h1");
        h.process("w1", ProcessEventKind::Exited, None, 2010).process("w1", ProcessEventKind::Restarted, None, 3010);
        h.lease("w1", Acquired, (1, 300), Some(6000), 3100).holder("h2");
        h.lease("c1", Acquired, (2, 200), Some(13_000), 10_000).holder("h1");
        h
    }

    /// Goal: copies that end under holders and worker IDs of their own, each superseded at
    /// most once, converge; a run without copies is not exercised.
    #[test]
    fn copies_under_their_own_holders_converge() {
        let r = check(&converged().events);
        assert_eq!(r.valid, Valid::True, "{}: {:?}", r.summary, r.evidence);
        assert!(r.summary.contains("w1 → c1 (exits: c1 0, w1 1)"), "{}", r.summary);
        let r = check(&H::default().events);
        assert!(r.valid == Valid::True && r.summary.starts_with("not exercised"), "{}", r.summary);
    }

    /// Goal: copies still sharing a holder at the end (no incarnations: one token for both)
    /// are caught once the run had time to settle, Unknown before; a copy superseded twice is
    /// caught.
    #[test]
    fn copies_that_still_share_or_fence_each_other_in_turns_are_caught() {
        let mut h = H::default();
        h.lease("w1", Acquired, (1, 100), Some(3000), 0).holder("h1");
        h.process("c1", ProcessEventKind::Cloned, Some("w1"), 1000);
        h.lease("c1", Acquired, (1, 100), Some(4000), 1100).holder("h1");
        assert_eq!(check(&h.events).valid, Valid::Unknown);
        h.lease("w1", Acquired, (1, 100), Some(13_000), 10_000).holder("h1");
        let r = check(&h.events);
        assert_eq!(r.valid, Valid::False);
        assert_eq!(r.evidence[0]["violation"], "still-shared");

        let mut h = converged();
        h.process("w1", ProcessEventKind::Exited, None, 5000).process("w1", ProcessEventKind::Restarted, None, 6000);
        h.lease("w1", Acquired, (3, 400), Some(9000), 6100).holder("h3");
        let r = check(&h.events);
        assert_eq!(r.evidence[0]["violation"], "superseded-more-than-once");

        // A second copy, made later, supersedes its source once more: that is no fencing in turns.
        let mut h = converged();
        h.process("c2", ProcessEventKind::Cloned, Some("w1"), 4000);
        h.process("w1", ProcessEventKind::Exited, None, 5000).process("w1", ProcessEventKind::Restarted, None, 6000);
        let r = check(&h.events);
        assert!(r.evidence.iter().all(|e| e["violation"] != "superseded-more-than-once"), "{:?}", r.evidence);
    }

    /// Goal: an exit whose recorded cause is no supersede (a failing state dir) is not
    /// counted; the same exit recorded as SUPERSEDED is.
    #[test]
    fn only_exits_a_supersede_explains_are_counted() {
        let exit_with = |cause: &str| {
            let mut h = converged();
            h.process("w1", ProcessEventKind::Exited, None, 5000).cause(cause).process(
                "w1",
                ProcessEventKind::Restarted,
                None,
                6000,
            );
            check(&h.events)
        };
        let r = exit_with("STATE_DIR_FAILED");
        assert!(r.evidence.iter().all(|e| e["violation"] != "superseded-more-than-once"), "{:?}", r.evidence);
        let r = exit_with(SUPERSEDED);
        assert_eq!(r.evidence[0]["violation"], "superseded-more-than-once");
    }
}
