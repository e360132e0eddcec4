//! Parking under registry outage: during each fault window (nemesis names starting with a
//! configured prefix: `quorum-loss`, and `latency-beyond-margin`, where no renewal's round
//! trip fits in the worker's registry timeout) every worker stops minting by its deadline
//! plus ε, its lease is not extended while the registry cannot answer it (an `acquired` or
//! `renewed` event; a `restated` one is the same deadline on a moved wall clock), and after the
//! fault heals every worker that was serving before serves again within a bound.
//!
//! And the converse: during a window in which the registry stays reachable, only slower
//! (`latency-quarter-ttl`: round trips within a quarter of the TTL), and for the commit
//! grace after it, no worker parks — no `parked` lease event, no call refused as parked.
//!
//! "Its deadline" is the one it knew when the fault began: the latest lease event stating a
//! deadline at or before `start + commit_grace` (a renewal sent before the fault may still
//! commit as it begins). ε absorbs millisecond rounding between the worker's monotonic
//! deadline check and the wall-clock timestamp in the ID.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::checker::lease_log::LeaseLog;
use crate::checker::{describe_op, CheckResult, Evidence, IdLayout, Valid};
use crate::history::{self, ClientOp, Event, Invocation, LeaseEventKind, NemesisWindow, Phase, ProcessEventKind};

pub const NAME: &str = "parking";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Nemesis names that take the registry's quorum away.
    pub fault_prefixes: Vec<String>,
    /// Nemesis names during which the registry stays reachable: no worker may park.
    pub reachable_prefixes: Vec<String>,
    pub epsilon_ms: u64,
    /// How long after a fault begins a renewal sent before it may still complete: one
    /// registry attempt (TTL/3, 1 s for the harness's 3 s lease) plus the status poll.
    pub commit_grace_ms: u64,
    /// How soon after the heal each worker must serve again.
    pub resume_within_ms: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            fault_prefixes: vec!["quorum-loss".to_string(), "latency-beyond-margin".to_string()],
            reachable_prefixes: vec!["latency-quarter-ttl".to_string()],
            epsilon_ms: 50,
            commit_grace_ms: 1_200,
            resume_within_ms: 15_000,
        }
    }
}

const MS: u64 = 1_000_000;

/// One worker's ok ops and all its invocations, for the per-fault questions.
#[derive(Default)]
struct WorkerOps<'h, 'a> {
    ok: Vec<&'a Invocation<'h, ClientOp>>,
    invoked_ns: Vec<u64>,
}

pub fn check(events: &[Event], layout: &IdLayout, config: &Config) -> CheckResult {
    let windows = |prefixes: &[String]| -> Vec<NemesisWindow> {
        history::nemesis_windows(events)
            .into_iter()
            .filter(|w| prefixes.iter().any(|p| w.name.starts_with(p.as_str())))
            .collect()
    };
    let (faults, reachable) = (windows(&config.fault_prefixes), windows(&config.reachable_prefixes));
    if faults.is_empty() && reachable.is_empty() {
        let named: Vec<&String> = config.fault_prefixes.iter().chain(&config.reachable_prefixes).collect();
        let summary = format!("not exercised: no fault windows named {named:?}");
        return CheckResult { name: NAME.to_string(), valid: Valid::True, summary, evidence: Vec::new() };
    }
    let log = LeaseLog::new(events);
    let ops = history::client_ops(events);
    let mut by_worker: BTreeMap<&str, WorkerOps> = BTreeMap::new();
    for op in &ops {
        let entry = by_worker.entry(op.invoke.worker.as_str()).or_default();
        entry.invoked_ns.push(op.invoke_ns());
        if op.outcome() == Phase::Ok {
            entry.ok.push(op);
        }
    }
    let workers: BTreeSet<&str> = by_worker.keys().copied().chain(log.workers()).collect();
    let end_ns = events.iter().map(Event::time_ns).max().unwrap_or(0);
    let empty = WorkerOps::default();

    let mut violations = Evidence::default();
    let mut doubts = Evidence::default();
    let mut refused = 0;
    for fault in &faults {
        for &worker in &workers {
            let own = by_worker.get(worker).unwrap_or(&empty);
            check_stop(fault, worker, own, &log, layout, config, (&mut violations, &mut doubts));
            let held = refused_its_id(events, &ops, &log, worker, fault, config);
            refused += usize::from(held);
            check_resume(fault, worker, own, end_ns, held, config, (&mut violations, &mut doubts));
        }
    }

    let parks = no_parks(events, &reachable, config, &mut violations);

    let counts = format!(
        "{} fault windows, {} windows with the registry reachable ({parks} parks in them), {} workers \
         ({refused} refused their worker ID after a heal)",
        faults.len(),
        reachable.len(),
        workers.len()
    );
    let (valid, summary, evidence) = if violations.total() > 0 {
        (Valid::False, format!("{} parking violations; {counts}", violations.total()), violations)
    } else if doubts.total() > 0 {
        (Valid::Unknown, format!("{} questions the history cannot answer; {counts}", doubts.total()), doubts)
    } else {
        let summary = format!(
            "{counts}: all stopped by deadline + {} ms and resumed within {} ms",
            config.epsilon_ms, config.resume_within_ms
        );
        (Valid::True, summary, violations)
    };
    CheckResult { name: NAME.to_string(), valid, summary, evidence: evidence.into_items() }
}

/// Every park inside a reachable window or its commit grace: `parked` lease events and calls
/// a worker refused as parked. Returns how many.
fn no_parks(events: &[Event], windows: &[NemesisWindow], config: &Config, violations: &mut Evidence) -> usize {
    let grace_ns = config.commit_grace_ms * MS;
    let inside = |t: u64| windows.iter().find(|w| t >= w.start_ns && w.stop_ns.is_none_or(|s| t < s + grace_ns));
    let mut parks = 0;
    for lease in history::lease_events(events).filter(|l| l.event == LeaseEventKind::Parked) {
        if let Some(window) = inside(lease.time_ns) {
            parks += 1;
            violations
                .push(json!({"violation": "parked-while-registry-reachable", "fault": window, "lease_event": lease}));
        }
    }
    for op in history::client_ops(events) {
        let error = op.completion.and_then(|c| c.error.as_deref()).unwrap_or_default();
        let Some(window) = inside(op.invoke_ns()).filter(|_| error.contains("[parked ")) else { continue };
        parks += 1;
        violations.push(json!({
            "violation": "parked-while-registry-reachable",
            "fault": window,
            "op": describe_op(&op),
            "error": error,
        }));
    }
    parks
}

/// No mint past the deadline known at the fault's start, and no lease extension inside it.
fn check_stop(
    fault: &NemesisWindow,
    worker: &str,
    ops: &WorkerOps,
    log: &LeaseLog,
    layout: &IdLayout,
    config: &Config,
    (violations, doubts): (&mut Evidence, &mut Evidence),
) {
    let settled_ns = fault.start_ns.saturating_add(config.commit_grace_ms * MS);
    let known = log.deadline_at(worker, None, settled_ns).and_then(|e| e.deadline_wall_ms);
    for op in ops.ok.iter().filter(|op| fault.contains(op.invoke_ns())) {
        let Some((_, max_id)) = op.id_bounds() else { continue };
        let ts = layout.timestamp_ms(max_id);
        match known {
            Some(deadline) if ts > deadline.saturating_add(config.epsilon_ms) => violations.push(json!({
                "violation": "minted-past-deadline-during-fault",
                "fault": fault,
                "max_ts_ms": ts,
                "deadline_wall_ms": deadline,
                "late_by_ms": ts - deadline,
                "op": describe_op(op),
            })),
            Some(_) => {}
            None => doubts.push(json!({
                "doubt": "no deadline known at the fault's start",
                "fault": fault,
                "op": describe_op(op),
            })),
        }
    }
    let extended = log.events(worker).iter().filter(|e| {
        matches!(e.event, LeaseEventKind::Acquired | LeaseEventKind::Renewed)
            && e.time_ns > settled_ns
            && fault.contains(e.time_ns)
    });
    for event in extended {
        violations.push(json!({"violation": "lease-extended-during-fault", "fault": fault, "lease_event": event}));
    }
}

/// Whether `worker` was refused its worker ID after the fault healed, within the resume
/// bound, and never granted a lease after its first such refusal, for a reason that leaves it
/// unable to serve whatever the registry's health:
/// - the ID is quarantined (until an operator clears it; a quarantine nothing explains is the
///   simulator's `replicas` check's business, which reports every canary hit);
/// - the lease it held on that ID had lapsed by the time the fault healed (so losing the ID
///   was no fault of its own), and another worker holds it and *serves with it* at or after
///   the refusal (a standby whose worker came back). Without these two, a worker that stopped
///   renewing after the heal, or a registry that never let a dead holder's lease expire,
///   would look just like that.
fn refused_its_id(
    events: &[Event],
    ops: &[Invocation<ClientOp>],
    log: &LeaseLog,
    worker: &str,
    fault: &NemesisWindow,
    config: &Config,
) -> bool {
    let Some(stop) = fault.stop_ns else { return false };
    let bound = stop.saturating_add(config.resume_within_ms * MS);
    let in_window = |t: u64| (stop..=bound).contains(&t);
    let refusals: Vec<_> = history::process_events(events)
        .filter(|p| p.process == worker && p.event == ProcessEventKind::Exited && in_window(p.time_ns))
        .filter(|p| matches!(p.cause.as_deref(), Some(history::CAUSE_WORKER_ID_HELD | history::CAUSE_QUARANTINED)))
        .collect();
    let (Some(first), Some(last)) = (refusals.first(), refusals.last()) else { return false };
    let granted_since = log
        .events(worker)
        .iter()
        .any(|l| l.event == LeaseEventKind::Acquired && l.time_ns > first.time_ns && l.time_ns <= bound);
    if granted_since {
        return false;
    }
    if last.cause.as_deref() == Some(history::CAUSE_QUARANTINED) {
        return true;
    }
    let Some(held) = log.events(worker).iter().rev().find(|l| l.time_ns < stop) else { return false };
    let lapsed_by_heal = held.deadline_mono_ns.is_some_and(|d| d <= stop);
    lapsed_by_heal
        && ops.iter().any(|op| {
            op.invoke.worker != worker
                && op.outcome() == Phase::Ok
                && op.completion.is_some_and(|c| {
                    c.worker_id == Some(held.worker_id) && c.time_ns >= last.time_ns && c.time_ns <= bound
                })
        })
}

/// A worker that served before the fault serves again within the bound after it heals,
/// unless it was refused its fixed worker ID meanwhile (`refused_its_id`).
fn check_resume(
    fault: &NemesisWindow,
    worker: &str,
    ops: &WorkerOps,
    end_ns: u64,
    refused_its_id: bool,
    config: &Config,
    (violations, doubts): (&mut Evidence, &mut Evidence),
) {
    let Some(stop) = fault.stop_ns else { return };
    let served_before = ops.ok.iter().any(|op| op.complete_ns().is_some_and(|c| c < fault.start_ns));
    if !served_before {
        return;
    }
    let bound = stop.saturating_add(config.resume_within_ms * MS);
    let within = |t: u64| t >= stop && t <= bound;
    if ops.ok.iter().any(|op| op.complete_ns().is_some_and(within)) {
        return;
    }
    let item = json!({"worker": worker, "fault": fault, "resume_by_ns": bound});
    if refused_its_id {
        return;
    }
    if end_ns < bound {
        doubts.push(json!({"doubt": "the run ended before the resume bound", "detail": item}));
    } else if !ops.invoked_ns.iter().any(|&t| within(t)) {
        doubts.push(json!({"doubt": "no request reached this worker after the heal", "detail": item}));
    } else {
        violations.push(json!({"violation": "did-not-resume", "detail": item}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::testkit::{id, H};
    use crate::history::LeaseEventKind::{Acquired, Parked, Renewed, Resumed};
    use crate::history::NemesisPhase::{Start, Stop};

    /// w1 holds worker ID 1 with deadline 2000 when quorum is lost at 1000 (healed at 5000),
    /// mints until its deadline, parks, and resumes after the heal.
    fn outage() -> H {
        let mut h = H::default();
        h.lease("w1", Acquired, (1, 100), Some(1000), 0);
        h.ok("w1", 1, (100, 101), &[(id(100, 1, 0), 1)], None);
        h.lease("w1", Renewed, (1, 100), Some(2000), 900);
        h.nemesis(Start, "quorum-loss-3", 1000);
        h.ok("w1", 1, (1200, 1201), &[(id(1200, 1, 0), 1)], None);
        h.lease("w1", Parked, (1, 100), Some(2000), 2000);
        h.not_ok("w1", 1, (2100, 2101), Phase::Fail);
        h.nemesis(Stop, "quorum-loss-3", 5000);
        h.lease("w1", Resumed, (1, 100), Some(7000), 5200);
        h.ok("w1", 1, (5300, 5301), &[(id(5300, 1, 0), 1)], None);
        h.nemesis(Start, "partition-halves", 30_000);
        h
    }

    /// Goal: a worker that parks at its deadline and resumes after the heal passes.
    #[test]
    fn parking_and_resuming_in_time_is_valid() {
        let r = check(&outage().events, &IdLayout::default(), &Config::default());
        assert_eq!(r.valid, Valid::True, "{}: {:?}", r.summary, r.evidence);
    }

    /// Goal: minting during quorum loss past the deadline (+ε) is caught.
    #[test]
    fn minting_past_the_deadline_during_quorum_loss_is_caught() {
        let mut h = outage();
        h.ok("w1", 2, (2060, 2061), &[(id(2060, 1, 0), 1)], None);
        let r = check(&h.events, &IdLayout::default(), &Config::default());
        assert_eq!(r.valid, Valid::False);
        assert_eq!(r.evidence[0]["violation"], "minted-past-deadline-during-fault");
        assert_eq!(r.evidence[0]["late_by_ms"], 60);
    }

    /// Goal: a renewal that commits while the registry has no quorum is caught.
    #[test]
    fn a_lease_extended_during_quorum_loss_is_caught() {
        let mut h = outage();
        h.lease("w1", Renewed, (1, 100), Some(4000), 3000);
        let r = check(&h.events, &IdLayout::default(), &Config::default());
        assert_eq!(r.evidence[0]["violation"], "lease-extended-during-fault");
    }

    /// Goal: a worker that keeps failing long after the heal is caught; one the run stopped
    /// watching too early is Unknown.
    #[test]
    fn not_resuming_is_caught() {
        let mut h = H::default();
        h.lease("w1", Acquired, (1, 100), Some(2000), 0);
        h.ok("w1", 1, (100, 101), &[(id(100, 1, 0), 1)], None);
        h.nemesis(Start, "quorum-loss", 1000).nemesis(Stop, "quorum-loss", 5000);
        h.not_ok("w1", 1, (6000, 6001), Phase::Fail);
        let early = check(&h.events, &IdLayout::default(), &Config::default());
        assert_eq!(early.valid, Valid::Unknown, "{:?}", early.evidence);
        h.not_ok("w1", 1, (25_000, 25_001), Phase::Fail);
        let r = check(&h.events, &IdLayout::default(), &Config::default());
        assert_eq!(r.valid, Valid::False);
        assert_eq!(r.evidence[0]["violation"], "did-not-resume");
    }

    /// Goal: a worker refused its fixed worker ID after the heal (another worker holds it: a
    /// standby whose worker came back, and serves with it; or the ID is quarantined) owes no
    /// resume, and is counted; refused as held by a worker that never serves, it is not; a worker granted a lease
    /// after such a refusal is judged again, and one refused for another cause is not excused.
    #[test]
    fn a_worker_refused_its_fixed_id_after_the_heal_owes_no_resume() {
        let standby = |cause: &str| {
            let mut h = H::default();
            h.lease("s1", Acquired, (1, 100), Some(2000), 0).mono_deadline(2000);
            h.ok("s1", 1, (100, 101), &[(id(100, 1, 0), 1)], None);
            h.nemesis(Start, "quorum-loss", 1000).nemesis(Stop, "quorum-loss", 5000);
            h.process("s1", ProcessEventKind::Exited, None, 6000).cause(cause);
            h.nemesis(Start, "end", 30_000);
            h
        };
        let mut held = standby(history::CAUSE_WORKER_ID_HELD);
        let unserved = check(&held.events, &IdLayout::default(), &Config::default());
        assert_eq!(unserved.valid, Valid::Unknown, "nobody serves with ID 1: no excuse: {:?}", unserved.evidence);
        held.lease("w1", Acquired, (1, 300), Some(9000), 6500).ok(
            "w1",
            3,
            (7000, 7001),
            &[(id(7000, 1, 0), 1)],
            Some((1, 300)),
        );
        let r = check(&held.events, &IdLayout::default(), &Config::default());
        assert_eq!(r.valid, Valid::True, "{}: {:?}", r.summary, r.evidence);
        assert!(r.summary.contains("1 refused their worker ID"), "{}", r.summary);
        let r = check(&standby(history::CAUSE_QUARANTINED).events, &IdLayout::default(), &Config::default());
        assert_eq!(r.valid, Valid::True, "{}: {:?}", r.summary, r.evidence);
        let r = check(&standby("FENCED").events, &IdLayout::default(), &Config::default());
        assert_eq!(r.valid, Valid::Unknown, "no request reached it: {:?}", r.evidence);
        // Its lease outlived the fault: losing the ID after the heal (it stopped renewing) is
        // its own failure.
        let mut live = held.clone();
        if let Some(Event::Lease(l)) = live.events.iter_mut().find(|e| matches!(e, Event::Lease(l) if l.worker == "s1"))
        {
            l.deadline_mono_ns = Some(5_500 * MS);
        }
        let r = check(&live.events, &IdLayout::default(), &Config::default());
        assert_eq!(r.valid, Valid::Unknown, "a lease live at the heal was lost after it: {:?}", r.evidence);
        // Refused, granted, then refused again: judged, since it held a lease in between.
        let mut regranted = held.clone();
        regranted.lease("s1", Acquired, (1, 400), Some(9500), 6200).mono_deadline(9500);
        regranted.process("s1", ProcessEventKind::Exited, None, 6900).cause(history::CAUSE_WORKER_ID_HELD);
        let r = check(&regranted.events, &IdLayout::default(), &Config::default());
        assert_ne!(r.valid, Valid::True, "granted between two refusals: {:?}", r.evidence);
        let mut granted = standby(history::CAUSE_QUARANTINED);
        granted.lease("s1", Acquired, (1, 200), Some(9000), 7000).not_ok("s1", 2, (8000, 8001), Phase::Fail);
        let r = check(&granted.events, &IdLayout::default(), &Config::default());
        assert_eq!(r.valid, Valid::False, "granted again, it must serve: {:?}", r.evidence);
    }

    /// Goal: with the registry only slower (`latency-quarter-ttl`), a worker that parks —
    /// seen by its status or by a call it refused as parked — is a violation, inside the
    /// window or just after it; a run that keeps serving is valid, and parks outside the
    /// window are none of this check's business.
    #[test]
    fn a_park_while_the_registry_is_reachable_is_caught() {
        let slow = || {
            let mut h = H::default();
            h.lease("w1", Acquired, (1, 100), Some(2000), 0);
            h.ok("w1", 1, (100, 101), &[(id(100, 1, 0), 1)], None);
            h.nemesis(Start, "latency-quarter-ttl", 1000);
            h.ok("w1", 1, (1500, 1501), &[(id(1500, 1, 0), 1)], None);
            h.nemesis(Stop, "latency-quarter-ttl", 4000);
            h.lease("w1", Parked, (1, 100), Some(9000), 8000);
            h
        };
        let clean = check(&slow().events, &IdLayout::default(), &Config::default());
        assert_eq!(clean.valid, Valid::True, "{}: {:?}", clean.summary, clean.evidence);
        assert!(clean.summary.contains("1 windows with the registry reachable (0 parks"), "{}", clean.summary);

        let mut status = slow();
        status.lease("w1", Parked, (1, 100), Some(2000), 4500);
        let r = check(&status.events, &IdLayout::default(), &Config::default());
        assert_eq!(r.valid, Valid::False);
        assert_eq!(r.evidence[0]["violation"], "parked-while-registry-reachable");

        let mut refused = slow();
        refused.not_ok("w1", 2, (2000, 2001), Phase::Fail);
        let error = "Unavailable [parked LEASE_EXPIRED]: parked: lease expired";
        let not_parked = check(&refused.events, &IdLayout::default(), &Config::default());
        assert_eq!(not_parked.valid, Valid::True, "a refusal that names no park is not a park");
        if let Some(Event::Op(op)) = refused.events.last_mut() {
            op.error = Some(error.to_string());
        }
        let r = check(&refused.events, &IdLayout::default(), &Config::default());
        assert_eq!(r.valid, Valid::False, "{}", r.summary);
        assert_eq!(r.evidence[0]["error"], error);
    }

    /// Goal: `latency-beyond-margin` windows are judged like quorum loss: minting past the
    /// deadline inside one is caught.
    #[test]
    fn latency_beyond_margin_is_judged_as_an_outage() {
        let mut h = outage();
        for event in &mut h.events {
            if let Event::Nemesis(n) = event {
                n.name = n.name.replace("quorum-loss-3", "latency-beyond-margin");
            }
        }
        assert_eq!(check(&h.events, &IdLayout::default(), &Config::default()).valid, Valid::True);
        h.ok("w1", 2, (2060, 2061), &[(id(2060, 1, 0), 1)], None);
        let r = check(&h.events, &IdLayout::default(), &Config::default());
        assert_eq!(r.evidence[0]["violation"], "minted-past-deadline-during-fault");
    }

    /// Goal: minting during a fault with no known deadline is Unknown; runs without a
    /// quorum-loss fault are not exercised.
    #[test]
    fn missing_information_and_absent_faults() {
        let mut h = H::default();
        h.nemesis(Start, "quorum-loss", 0);
        h.ok("w1", 1, (10, 11), &[(id(10, 1, 0), 1)], None);
        assert_eq!(check(&h.events, &IdLayout::default(), &Config::default()).valid, Valid::Unknown);
        let r = check(&outage().events[..2], &IdLayout::default(), &Config::default());
        assert!(r.valid == Valid::True && r.summary.starts_with("not exercised"));
    }
}
