//! The `adversary` scenario's verdict: a client with a valid `worker` certificate forged
//! every call of [`Forged`] against the other workers' leases and the operator RPCs while the
//! workers minted; every one must have been refused, and no worker may have parked.
//!
//! - `false`: a forged call was accepted (it did what it asked, got past the check under
//!   test, showed a token of another identity, or tripped the canary), or a worker parked
//!   (the scenario injects no fault but the adversary, so a park is the adversary's doing);
//! - `unknown`: some kind of forged call has no attempt whose answer proves anything (none
//!   refused, none accepted): a call that never connected, or was answered "no leader", says
//!   nothing about the check;
//! - `true` otherwise. A history without forged calls is "not exercised" (`true`).
//!
//! The simulator runs the same adversary under its nemesis, whose faults park workers
//! themselves and may keep the adversary from the servers for a whole seed: it judges the
//! forged calls' verdicts only ([`Faults::Others`]).
//!
//! [`counts`] are the per-call numbers of the report (attempted, refused, accepted,
//! inconclusive, never connected, and the nodes that answered).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::json;

use crate::checker::{CheckResult, Evidence, Valid};
use crate::history::{self, Event, Forged, ForgedOutcome, LeaseEventKind};

pub const NAME: &str = "adversary";

/// The numbers of one kind of forged call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallCounts {
    pub call: Forged,
    pub label: &'static str,
    pub attempted: u64,
    pub refused: u64,
    pub accepted: u64,
    pub inconclusive: u64,
    pub never_connected: u64,
    /// The registry nodes that answered at least one of them (connected, whatever the answer).
    pub nodes: Vec<String>,
}

impl CallCounts {
    /// Attempts whose answer proves something about the check (refused or accepted).
    pub fn conclusive(&self) -> u64 {
        self.refused + self.accepted
    }
}

/// Per kind of forged call, in [`Forged::ALL`] order; empty when the history has none.
pub fn counts(events: &[Event]) -> Vec<CallCounts> {
    let mut by_call: BTreeMap<Forged, (CallCounts, BTreeSet<&str>)> = BTreeMap::new();
    for call in history::forged_calls(events) {
        let (c, nodes) = by_call.entry(call.call).or_insert_with(|| (empty(call.call), BTreeSet::new()));
        c.attempted += 1;
        match call.outcome {
            ForgedOutcome::Refused => c.refused += 1,
            ForgedOutcome::Accepted => c.accepted += 1,
            ForgedOutcome::Inconclusive => c.inconclusive += 1,
            ForgedOutcome::NeverConnected => c.never_connected += 1,
        }
        if call.outcome != ForgedOutcome::NeverConnected {
            nodes.insert(&call.node);
        }
    }
    if by_call.is_empty() {
        return Vec::new();
    }
    Forged::ALL
        .iter()
        .map(|f| match by_call.remove(f) {
            Some((c, nodes)) => CallCounts { nodes: nodes.into_iter().map(str::to_string).collect(), ..c },
            None => empty(*f),
        })
        .collect()
}

fn empty(call: Forged) -> CallCounts {
    CallCounts {
        call,
        label: call.label(),
        attempted: 0,
        refused: 0,
        accepted: 0,
        inconclusive: 0,
        never_connected: 0,
        nodes: Vec::new(),
    }
}

/// What else ran beside the adversary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Faults {
    /// Nothing (the harness's `adversary` scenario): a park is the adversary's doing, a
    /// violation; a kind of forged call that never reached a verdict leaves the run unknown.
    AdversaryOnly,
    /// Other faults (the simulator's nemesis), which park workers themselves and may keep a
    /// kind of call from every server, or leave no lease to forge against, for a whole run:
    /// only the forged calls' verdicts are judged, and the simulator's many seeds, not each
    /// one, show every kind refused.
    Others,
}

/// The harness's verdict (no other fault: a park is a violation).
pub fn check(events: &[Event]) -> CheckResult {
    check_with(events, Faults::AdversaryOnly)
}

pub fn check_with(events: &[Event], faults: Faults) -> CheckResult {
    let counts = counts(events);
    if counts.is_empty() {
        let summary = "not exercised: no forged calls in the history".to_string();
        return CheckResult { name: NAME.to_string(), valid: Valid::True, summary, evidence: Vec::new() };
    }
    let mut violations = Evidence::default();
    for call in history::forged_calls(events).filter(|c| c.outcome == ForgedOutcome::Accepted) {
        violations.push(json!({ "violation": "forged-call-accepted", "call": call }));
    }
    let forged_accepted = violations.total();
    let judged_parks = history::lease_events(events).filter(|_| faults == Faults::AdversaryOnly);
    for lease in judged_parks.filter(|l| l.event == LeaseEventKind::Parked) {
        violations.push(json!({ "violation": "worker-parked", "lease_event": lease }));
    }
    let parked = violations.total() - forged_accepted;
    let mut doubts = Evidence::default();
    for c in counts.iter().filter(|c| c.conclusive() == 0 && faults == Faults::AdversaryOnly) {
        doubts.push(json!({
            "doubt": "no conclusive attempt (never connected, or answered without proving anything)",
            "call": c.call,
            "attempted": c.attempted,
            "inconclusive": c.inconclusive,
            "never_connected": c.never_connected,
        }));
    }
    let total: u64 = counts.iter().map(|c| c.attempted).sum();
    let refused: u64 = counts.iter().map(|c| c.refused).sum();
    let tally = format!(
        "{total} forged calls of {} kinds: {refused} refused, {forged_accepted} accepted, {} inconclusive, {} never connected; {parked} worker parks",
        counts.len(),
        counts.iter().map(|c| c.inconclusive).sum::<u64>(),
        counts.iter().map(|c| c.never_connected).sum::<u64>(),
    );
    let (valid, summary, evidence) = if violations.total() > 0 {
        (Valid::False, tally, violations)
    } else if doubts.total() > 0 {
        let kinds: Vec<String> =
            counts.iter().filter(|c| c.conclusive() == 0).map(|c| format!("{:?}", c.call)).collect();
        (Valid::Unknown, format!("{tally}; nothing proven for {}", kinds.join(", ")), doubts)
    } else {
        (Valid::True, format!("{tally}; every kind refused at least once, none accepted"), violations)
    };
    CheckResult { name: NAME.to_string(), valid, summary, evidence: evidence.into_items() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::testkit::H;
    use crate::history::{ForgedCall, LeaseEventKind::Acquired, LeaseEventKind::Parked};

    fn forged(call: Forged, node: &str, outcome: ForgedOutcome) -> Event {
        Event::Adversary(ForgedCall {
            call,
            node: node.into(),
            outcome,
            worker_id: Some(1),
            token: Some(4096),
            request: String::new(),
            answer: "PermissionDenied [NOT_OWNER]: ...".into(),
            time_ns: 1,
        })
    }

    /// Every kind refused once, plus noise that proves nothing.
    fn all_refused() -> Vec<Event> {
        let mut events: Vec<Event> = Forged::ALL.iter().map(|f| forged(*f, "n1", ForgedOutcome::Refused)).collect();
        events.push(forged(Forged::Release, "n2", ForgedOutcome::NeverConnected));
        events.push(forged(Forged::Release, "n3", ForgedOutcome::Inconclusive));
        events
    }

    /// Goal: every kind refused at least once and nothing accepted is valid; the counts say how
    /// many of each, and only nodes that answered are listed.
    #[test]
    fn every_kind_refused_is_valid_with_per_call_counts() {
        let events = all_refused();
        let result = check(&events);
        assert_eq!(result.valid, Valid::True, "{}", result.summary);
        let counts = counts(&events);
        assert_eq!(counts.len(), Forged::ALL.len());
        let release = counts.iter().find(|c| c.call == Forged::Release).unwrap();
        assert_eq!(
            (release.attempted, release.refused, release.accepted, release.inconclusive, release.never_connected),
            (3, 1, 0, 1, 1)
        );
        assert_eq!(release.nodes, vec!["n1".to_string(), "n3".to_string()]);
    }

    /// Goal: one accepted forged call makes the run invalid and is the evidence.
    #[test]
    fn an_accepted_forged_call_is_a_violation() {
        let mut events = all_refused();
        events.push(forged(Forged::RenewStale, "n4", ForgedOutcome::Accepted));
        let result = check(&events);
        assert_eq!(result.valid, Valid::False);
        assert_eq!(result.evidence.len(), 1);
        assert_eq!(result.evidence[0]["call"]["call"], "renew_stale");
    }

    /// Goal: a kind that never got a conclusive answer (never connected, only inconclusive, or
    /// never tried at all) leaves the verdict unknown: a call that never connected proves nothing.
    #[test]
    fn a_kind_without_a_conclusive_attempt_is_unknown() {
        let mut events: Vec<Event> = all_refused()
            .into_iter()
            .filter(
                |e| !matches!(e, Event::Adversary(c) if c.call == Forged::ForeignCa || c.call == Forged::Quarantine),
            )
            .collect();
        events.push(forged(Forged::ForeignCa, "n1", ForgedOutcome::NeverConnected));
        let result = check(&events);
        assert_eq!(result.valid, Valid::Unknown, "{}", result.summary);
        assert!(result.summary.contains("ForeignCa") && result.summary.contains("Quarantine"), "{}", result.summary);
    }

    /// Goal: a worker that parked while the adversary ran is a violation (the scenario injects
    /// nothing else); without forged calls the checker is not exercised, parks or not.
    #[test]
    fn a_parked_worker_is_a_violation_only_when_the_adversary_ran() {
        let mut h = H::default();
        h.lease("w1", Acquired, (1, 100), Some(3000), 0);
        h.lease("w1", Parked, (1, 100), Some(3000), 3000);
        assert_eq!(check(&h.events).valid, Valid::True);
        assert!(check(&h.events).summary.contains("not exercised"));
        let mut events = all_refused();
        events.extend(h.events);
        let result = check(&events);
        assert_eq!(result.valid, Valid::False);
        assert!(result.summary.contains("1 worker parks"), "{}", result.summary);
        assert_eq!(result.evidence[0]["violation"], "worker-parked");
    }

    /// Goal: under other faults (the simulator's nemesis) a park is theirs, not a violation,
    /// and a kind that never reached a verdict is no doubt; a forged call accepted still is a
    /// violation.
    #[test]
    fn under_other_faults_only_the_forged_calls_are_judged() {
        let mut h = H::default();
        h.lease("w1", Acquired, (1, 100), Some(3000), 0);
        h.lease("w1", Parked, (1, 100), Some(3000), 3000);
        let mut events = vec![forged(Forged::Quarantine, "n1", ForgedOutcome::NeverConnected)];
        events.extend(h.events);
        assert_eq!(check_with(&events, Faults::Others).valid, Valid::True);
        assert_eq!(check(&events).valid, Valid::False);
        events.push(forged(Forged::Release, "n1", ForgedOutcome::Accepted));
        assert_eq!(check_with(&events, Faults::Others).valid, Valid::False);
    }
}
