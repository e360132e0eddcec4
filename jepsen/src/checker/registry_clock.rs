//! A registry node's wall clock far off (`registry-clock-skew`, issue 9 point 6): a leader's
//! clock is the cluster's time, so one ten minutes fast that kept leading would park every
//! worker CLOCK_SKEW and push every high-water mark ten minutes ahead. With the clock check,
//! the fast leader steps aside and stamps nothing, so:
//! - no worker parks `CLOCK_SKEW` (`clock-skew-park`: the scenario fakes no worker's clock, so
//!   any such park is the registry's doing), from the first fault on;
//! - workers keep serving: of the client calls started while a registry clock is off, at least
//!   [`MIN_AVAILABILITY`] succeed (`unavailable`);
//! - every grant and renewal of the registry workload states a `registry_time_ms` within
//!   [`STAMP_SLACK_MS`] of the harness's wall clock around the call, a `not_before` at most the
//!   lease's TTL plus that slack past it, and a `mint_until` at most the TTL plus the
//!   registry's renew window ([`REGISTRY_RENEW_WINDOW_MS`]) plus the slack (`stamp-ahead`,
//!   `stamp-behind`).
//!
//! "Not exercised" (valid) in a run whose nemesis stepped no registry clock.

use serde_json::json;

use crate::checker::{CheckResult, Evidence, Valid};
use crate::history::{self, Event, LeaseEventKind, NemesisWindow, Phase};

pub const NAME: &str = "registry-clock";

/// The nemesis names of registry clock faults (`registry-clock-n3`).
pub const FAULT_PREFIX: &str = "registry-clock-";

/// Of the client calls started while a registry clock is off, at least this share must
/// succeed: the workers' leases (3 s) outlast a leader's step-aside and the election after it,
/// so the fault should barely show; a fast leader that keeps stamping parks every worker.
pub const MIN_AVAILABILITY: f64 = 0.9;

/// How far a stamp may be from the harness's clock: four times the registry's default
/// `--max-clock-offset` (250 ms), twice the workers' `--max-skew`. The nodes' clocks are the
/// machine's, so an honest stamp is within milliseconds; the fault is ten minutes.
pub const STAMP_SLACK_MS: u64 = 1_000;

/// The registries' `--renew-window`, which the harness passes them (the product's default): a
/// renewal's `mint_until` is its high-water mark, which a logged renewal raises this far past
/// the worker's clock plus the TTL, so memory renewals inside it need no log write.
pub const REGISTRY_RENEW_WINDOW_MS: u64 = 30_000;

/// The park reason of a worker whose clock disagrees with the registry's.
const CLOCK_SKEW: &str = "CLOCK_SKEW";

pub fn check(events: &[Event]) -> CheckResult {
    let windows: Vec<NemesisWindow> =
        history::nemesis_windows(events).into_iter().filter(|w| w.name.starts_with(FAULT_PREFIX)).collect();
    let Some(first) = windows.first().map(|w| w.start_ns) else {
        let summary = "not exercised: no registry clock was stepped".to_string();
        return CheckResult { name: NAME.to_string(), valid: Valid::True, summary, evidence: Vec::new() };
    };
    let mut violations = Evidence::default();
    let (parks, refusals) = clock_skew_parks(events, first, &mut violations);
    let (stamped, off) = judge_stamps(events, &mut violations);
    let (ok, total) = availability(events, &windows);
    let share = (total > 0).then(|| ok as f64 / total as f64);
    if let Some(share) = share.filter(|s| *s < MIN_AVAILABILITY) {
        violations.push(json!({"violation": "unavailable", "ok": ok, "calls": total, "availability": share}));
    }
    let counts = format!(
        "{} faults; {parks} CLOCK_SKEW parks and {refusals} calls refused so; {} of {total} calls ok during them (at least {:.0}% needed); {off} of {stamped} lease stamps beyond ±{STAMP_SLACK_MS} ms",
        windows.len(),
        ok,
        MIN_AVAILABILITY * 100.0
    );
    let (valid, summary) = if violations.total() > 0 {
        (Valid::False, format!("{} violations; {counts}", violations.total()))
    } else if total == 0 || stamped == 0 {
        (Valid::Unknown, format!("no client call or no lease stamp to judge; {counts}"))
    } else {
        (Valid::True, format!("workers served and every stamp kept the cluster's time; {counts}"))
    };
    CheckResult { name: NAME.to_string(), valid, summary, evidence: violations.into_items() }
}

/// Every CLOCK_SKEW park from `since_ns` on: (lease events, calls a worker refused so).
fn clock_skew_parks(events: &[Event], since_ns: u64, violations: &mut Evidence) -> (usize, usize) {
    let (mut parks, mut refusals) = (0, 0);
    for lease in history::lease_events(events) {
        let skew = lease.event == LeaseEventKind::Parked && lease.reason.as_deref() == Some(CLOCK_SKEW);
        if skew && lease.time_ns >= since_ns {
            parks += 1;
            violations.push(json!({"violation": "clock-skew-park", "lease": lease}));
        }
    }
    let refused = format!("parked {CLOCK_SKEW}");
    for op in history::client_ops(events) {
        let error = op.completion.and_then(|c| c.error.as_deref()).unwrap_or_default();
        if error.contains(&refused) && op.invoke_ns() >= since_ns {
            refusals += 1;
            let op = crate::checker::describe_op(&op);
            violations.push(json!({"violation": "clock-skew-park", "op": op, "error": error}));
        }
    }
    (parks, refusals)
}

/// Judges the stamps of every ok grant and renewal: (how many, how many off).
fn judge_stamps(events: &[Event], violations: &mut Evidence) -> (usize, usize) {
    let (mut stamped, mut off) = (0, 0);
    for op in history::registry_ops(events) {
        let Some(s) = op.completion.filter(|c| c.phase == Phase::Ok).and_then(|c| c.stamps) else { continue };
        stamped += 1;
        let latest = s.received_wall_ms.saturating_add(STAMP_SLACK_MS);
        let lease_latest = latest.saturating_add(s.ttl_ms);
        let mint_until_latest = lease_latest.saturating_add(REGISTRY_RENEW_WINDOW_MS);
        let ahead =
            s.registry_time_ms > latest || s.not_before_ms > lease_latest || s.mint_until_ms > mint_until_latest;
        let behind = s.registry_time_ms.saturating_add(STAMP_SLACK_MS) < s.sent_wall_ms;
        if ahead || behind {
            off += 1;
            let violation = if ahead { "stamp-ahead" } else { "stamp-behind" };
            let registry_ahead_ms = i128::from(s.registry_time_ms) - i128::from(s.received_wall_ms);
            let item = json!({
                "violation": violation,
                "f": op.invoke.f,
                "worker_id": op.invoke.worker_id,
                "complete_ns": op.complete_ns(),
                "registry_ahead_ms": registry_ahead_ms.to_string(),
                "stamps": s,
            });
            violations.push(item);
        }
    }
    (stamped, off)
}

/// (ok, all) client calls started inside a registry clock fault.
fn availability(events: &[Event], windows: &[NemesisWindow]) -> (u64, u64) {
    let during =
        history::client_ops(events).into_iter().filter(|op| windows.iter().any(|w| w.contains(op.invoke_ns())));
    during.fold((0, 0), |(ok, all), op| (ok + u64::from(op.outcome() == Phase::Ok), all + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::testkit::{id, H, MS};
    use crate::history::{LeaseStamps, NemesisPhase, RegistryFn, RegistryOp, RegistryResult};

    /// A renewal at `t_ms` whose lease says the leader's clock read `ahead_ms` past ours.
    fn renewal(h: &mut H, t_ms: u64, ahead_ms: u64) {
        let wall = 1_800_000_000_000 + t_ms;
        let invoke = RegistryOp {
            phase: Phase::Invoke,
            process: 900,
            op_id: t_ms,
            f: RegistryFn::Renew,
            worker_id: Some(1000),
            holder: None,
            token: Some(7),
            time_ns: t_ms * MS,
            result: None,
            error: None,
            stamps: None,
        };
        let stamps = LeaseStamps {
            sent_wall_ms: wall,
            received_wall_ms: wall + 2,
            registry_time_ms: wall + 1 + ahead_ms,
            not_before_ms: wall - 10_000,
            mint_until_ms: wall + 1 + ahead_ms + 5_000,
            ttl_ms: 5_000,
        };
        let ok = RegistryOp {
            phase: Phase::Ok,
            time_ns: (t_ms + 2) * MS,
            result: Some(RegistryResult::Renewed { token: 7 }),
            stamps: Some(stamps),
            ..invoke.clone()
        };
        h.events.extend([Event::Registry(invoke), Event::Registry(ok)]);
    }

    /// Workers serving through a leader's clock jump at 1000–2000, stamps on time.
    fn served() -> H {
        let mut h = H::default();
        h.nemesis(NemesisPhase::Start, "registry-clock-n2", 1000).nemesis(
            NemesisPhase::Stop,
            "registry-clock-n2",
            2000,
        );
        for t in (0..3000).step_by(100) {
            h.ok("w1", 1, (t, t + 1), &[(id(t, 1, 0), 1)], None);
            renewal(&mut h, t, 0);
        }
        h
    }

    /// Goal: workers that served through the fault with stamps on time are valid; a run with
    /// no registry clock fault is not exercised.
    #[test]
    fn serving_with_the_clusters_time_is_valid() {
        let r = check(&served().events);
        assert_eq!(r.valid, Valid::True, "{}: {:?}", r.summary, r.evidence);
        assert!(r.summary.contains("10 of 10 calls ok"), "{}", r.summary);
        let r = check(&H::default().events);
        assert!(r.valid == Valid::True && r.summary.starts_with("not exercised"), "{}", r.summary);
    }

    /// Goal (issue 11): a `mint_until` up to the renew window past the lease's reach is the
    /// registry's high-water window, not a fast clock; one further is still caught.
    #[test]
    fn mint_until_may_lie_a_renew_window_ahead_and_no_further() {
        let with_mint_until = |past_reach_ms: u64| {
            let mut h = served();
            if let Some(Event::Registry(op)) = h.events.last_mut() {
                let s = op.stamps.as_mut().expect("a stamped renewal");
                s.mint_until_ms = s.received_wall_ms + STAMP_SLACK_MS + s.ttl_ms + past_reach_ms;
            }
            check(&h.events)
        };
        let r = with_mint_until(REGISTRY_RENEW_WINDOW_MS);
        assert_eq!(r.valid, Valid::True, "{}: {:?}", r.summary, r.evidence);
        let r = with_mint_until(REGISTRY_RENEW_WINDOW_MS + 1);
        assert_eq!((r.valid, r.evidence[0]["violation"].as_str()), (Valid::False, Some("stamp-ahead")));
    }

    /// Goal: each symptom of a fast leader that kept stamping is caught on its own — a
    /// worker parked CLOCK_SKEW, a lease stamped ten minutes ahead, calls failing during the
    /// fault.
    #[test]
    fn a_fast_leader_that_kept_stamping_is_caught() {
        let mut h = served();
        h.lease("w1", LeaseEventKind::Parked, (1, 5), Some(3000), 1500);
        if let Some(Event::Lease(l)) = h.events.last_mut() {
            l.reason = Some(CLOCK_SKEW.into());
        }
        let r = check(&h.events);
        assert_eq!((r.valid, r.evidence[0]["violation"].as_str()), (Valid::False, Some("clock-skew-park")));

        let mut h = served();
        renewal(&mut h, 1500, 600_000);
        let r = check(&h.events);
        assert_eq!((r.valid, r.evidence[0]["violation"].as_str()), (Valid::False, Some("stamp-ahead")));
        assert_eq!(r.evidence[0]["registry_ahead_ms"], "599999");

        let mut h = served();
        for t in (1000..2000).step_by(10) {
            h.not_ok("w2", 2, (t, t + 5), Phase::Fail);
        }
        let r = check(&h.events);
        assert_eq!((r.valid, r.evidence[0]["violation"].as_str()), (Valid::False, Some("unavailable")));
    }
}
