//! Tests of the registry linearizability checker on crafted lease-table histories.

use super::*;
use crate::checker::testkit::MS;
use crate::history::{Phase, RegistryFn, RegistryOp, RegistryResult};

/// Builds registry histories; times in ms.
#[derive(Default)]
struct R {
    events: Vec<Event>,
    next: u64,
}

enum Call<'a> {
    Acquire(Option<u32>, &'a str),
    Renew(u32, u64),
    Release(u32, u64),
    Get(u32),
}

impl R {
    /// One op from `call_ms` to `ret_ms` ending in `phase` (`Invoke`: never returned).
    fn op(
        &mut self,
        call: Call,
        (call_ms, ret_ms): (u64, u64),
        phase: Phase,
        result: Option<RegistryResult>,
    ) -> &mut R {
        self.next += 1;
        let (f, worker_id, holder, token) = match call {
            Call::Acquire(w, h) => (RegistryFn::Acquire, w, Some(h.to_string()), None),
            Call::Renew(w, t) => (RegistryFn::Renew, Some(w), None, Some(t)),
            Call::Release(w, t) => (RegistryFn::Release, Some(w), None, Some(t)),
            Call::Get(w) => (RegistryFn::Get, Some(w), None, None),
        };
        let invoke = RegistryOp {
            phase: Phase::Invoke,
            process: self.next,
            op_id: self.next,
            f,
            worker_id,
            holder,
            token,
            time_ns: call_ms * MS,
            result: None,
            error: None,
            stamps: None,
        };
        self.events.push(Event::Registry(invoke.clone()));
        if phase != Phase::Invoke {
            self.events.push(Event::Registry(RegistryOp { phase, time_ns: ret_ms * MS, result, ..invoke }));
        }
        self
    }

    fn acquire(&mut self, w: u32, h: &str, span: (u64, u64), token: u64) -> &mut R {
        self.op(Call::Acquire(Some(w), h), span, Phase::Ok, Some(RegistryResult::Granted { worker_id: w, token }))
    }

    fn reject(&mut self, call: Call, span: (u64, u64), reason: Rejection) -> &mut R {
        self.op(call, span, Phase::Fail, Some(RegistryResult::Rejected { reason }))
    }

    fn get(&mut self, w: u32, span: (u64, u64), holder: Option<&str>, token: u64) -> &mut R {
        let lease = RegistryResult::Lease { holder: holder.map(str::to_string), token };
        self.op(Call::Get(w), span, Phase::Ok, Some(lease))
    }

    fn check(&self, expiry: Expiry) -> CheckResult {
        check(&self.events, &Config { expiry, ..Config::default() })
    }
}

/// Goal: a sequential life of one lease, with a hand-over, stale renewals and reads, passes
/// even with expiry forbidden.
#[test]
fn a_sequential_lease_life_is_linearizable() {
    let mut r = R::default();
    r.acquire(7, "a", (0, 1), 10)
        .acquire(7, "a", (2, 3), 10)
        .op(Call::Renew(7, 10), (4, 5), Phase::Ok, Some(RegistryResult::Renewed { token: 10 }))
        .get(7, (6, 7), Some("a"), 10)
        .reject(Call::Acquire(Some(7), "b"), (8, 9), Rejection::AlreadyHeld)
        .op(Call::Release(7, 10), (10, 11), Phase::Ok, Some(RegistryResult::Released))
        .reject(Call::Renew(7, 10), (12, 13), Rejection::Expired)
        .get(7, (14, 15), None, 10)
        .acquire(7, "b", (16, 17), 20)
        .reject(Call::Renew(7, 10), (18, 19), Rejection::Fenced)
        .reject(Call::Release(7, 10), (20, 21), Rejection::Fenced)
        .op(Call::Acquire(Some(7), "c"), (22, 23), Phase::Fail, None);
    let result = r.check(Expiry::Never);
    assert_eq!(result.valid, Valid::True, "{}: {:?}", result.summary, result.evidence);
}

/// Goal: two holders granted the same ID with no release and no expiry allowed is caught;
/// allowing expiry accepts it (larger token), but not with a smaller token.
#[test]
fn two_holders_granted_the_same_id() {
    let mut r = R::default();
    r.acquire(7, "a", (0, 1), 10).acquire(7, "b", (2, 3), 20);
    let result = r.check(Expiry::Never);
    assert_eq!(result.valid, Valid::False);
    assert_eq!(result.evidence[0]["worker_id"], 7);
    assert_eq!(result.evidence[0]["possible_states"][0]["holder"], "a");
    assert_eq!(r.check(Expiry::Anytime).valid, Valid::True);

    let mut r = R::default();
    r.acquire(7, "a", (0, 1), 20).acquire(7, "b", (2, 3), 10);
    assert_eq!(r.check(Expiry::Anytime).valid, Valid::False, "tokens must grow even across an expiry");
}

/// Goal: timed expiry allows a re-grant only after the lease sat idle long enough.
#[test]
fn expiry_after_idle_needs_the_idle_time() {
    let rule = Expiry::AfterIdle { min_idle_ns: 100 * MS };
    let mut r = R::default();
    r.acquire(7, "a", (0, 1), 10)
        .op(Call::Renew(7, 10), (50, 51), Phase::Ok, Some(RegistryResult::Renewed { token: 10 }))
        .acquire(7, "b", (100, 120), 20);
    assert_eq!(r.check(rule).valid, Valid::False, "renewed at 50, re-granted by 120");
    let mut r = R::default();
    r.acquire(7, "a", (0, 1), 10).acquire(7, "b", (100, 160), 20);
    assert_eq!(r.check(rule).valid, Valid::True);
}

/// Goal: concurrent acquires may be ordered either way, but both cannot win.
#[test]
fn concurrent_acquires() {
    let mut r = R::default();
    r.acquire(7, "a", (0, 10), 10).reject(Call::Acquire(Some(7), "b"), (1, 9), Rejection::AlreadyHeld);
    assert_eq!(r.check(Expiry::Never).valid, Valid::True);
    let mut r = R::default();
    r.acquire(7, "a", (0, 10), 10).acquire(7, "b", (1, 9), 20);
    assert_eq!(r.check(Expiry::Never).valid, Valid::False);
}

/// Goal: a read that misses a completed grant (a stale read) is caught.
#[test]
fn a_stale_read_is_caught() {
    let mut r = R::default();
    r.acquire(7, "a", (0, 1), 10).get(7, (2, 3), None, 0);
    assert_eq!(r.check(Expiry::Anytime).valid, Valid::False);
}

/// Goal: a renewal with the old token succeeding after a re-grant is caught, even with
/// expiry allowed: fencing must hold.
#[test]
fn a_stale_renewal_that_succeeds_is_caught() {
    let mut r = R::default();
    r.acquire(7, "a", (0, 1), 10).acquire(7, "b", (2, 3), 20).op(
        Call::Renew(7, 10),
        (4, 5),
        Phase::Ok,
        Some(RegistryResult::Renewed { token: 10 }),
    );
    assert_eq!(r.check(Expiry::Anytime).valid, Valid::False);
}

/// Goal: a timed-out Acquire may have taken effect (with a token seen later) or not at all.
#[test]
fn an_info_acquire_may_or_may_not_take_effect() {
    let mut r = R::default();
    r.op(Call::Acquire(Some(7), "a"), (0, 5), Phase::Info, None).get(7, (10, 11), Some("a"), 30);
    assert_eq!(r.check(Expiry::Never).valid, Valid::True);
    let mut r = R::default();
    r.op(Call::Acquire(Some(7), "a"), (0, 0), Phase::Invoke, None).get(7, (10, 11), None, 0).reject(
        Call::Renew(7, 99),
        (12, 13),
        Rejection::Fenced,
    );
    assert_eq!(r.check(Expiry::Never).valid, Valid::True);
    let mut r = R::default();
    r.op(Call::Acquire(Some(7), "a"), (0, 5), Phase::Info, None).get(7, (10, 11), Some("b"), 30);
    assert_eq!(r.check(Expiry::Never).valid, Valid::False, "nobody acquired for b");
}

/// Goal: worker IDs are checked independently and the violation names the right one.
#[test]
fn partitions_are_independent() {
    let mut r = R::default();
    r.acquire(1, "a", (0, 10), 10).acquire(2, "b", (0, 10), 11).get(1, (11, 12), Some("a"), 10);
    r.get(2, (13, 14), Some("b"), 12);
    let result = r.check(Expiry::Never);
    assert_eq!(result.valid, Valid::False);
    assert_eq!((result.evidence.len(), &result.evidence[0]["worker_id"]), (1, &json!(2)));
}

/// Goal: an out-of-budget segment is Unknown, never True, and the doubt names it: worker
/// ID, time range, op count. Other IDs are still checked: a violation elsewhere is False.
#[test]
fn budget_exhaustion_names_the_segment() {
    let mut r = R::default();
    r.acquire(7, "a", (0, 1), 10);
    r.acquire(7, "a", (10, 200), 10);
    for i in 0..12 {
        r.reject(Call::Acquire(Some(7), &format!("b{i}")), (11 + i, 100), Rejection::AlreadyHeld);
    }
    let tight = Config { max_steps_per_segment: 50, ..Config::default() };
    let result = check(&r.events, &tight);
    assert_eq!(result.valid, Valid::Unknown, "{}", result.summary);
    let doubt = &result.evidence[0];
    assert_eq!((&doubt["worker_id"], &doubt["segment"], &doubt["ops"]), (&json!(7), &json!(1), &json!(13)));
    assert_eq!((&doubt["from_ns"], &doubt["to_ns"]), (&json!(10 * MS), &json!(200 * MS)));
    assert_eq!(r.check(Expiry::Never).valid, Valid::True, "the default budget suffices");

    r.acquire(8, "c", (0, 1), 10).get(8, (2, 3), None, 10);
    assert_eq!(check(&r.events, &tight).valid, Valid::False, "ID 8's violation is still found");
}

/// Goal: after an exhausted segment the ID's check starts again at the next read that is a
/// segment of its own, so a later double grant on the same ID is still found.
#[test]
fn the_check_starts_again_after_an_exhausted_segment() {
    let mut r = R::default();
    r.acquire(7, "a", (0, 1), 10).acquire(7, "a", (10, 200), 10);
    for i in 0..12 {
        r.reject(Call::Acquire(Some(7), &format!("b{i}")), (11 + i, 100), Rejection::AlreadyHeld);
    }
    r.op(Call::Release(7, 10), (201, 202), Phase::Ok, Some(RegistryResult::Released));
    r.get(7, (203, 204), None, 10).acquire(7, "c", (205, 206), 30).acquire(7, "d", (207, 208), 31);
    let tight = Config { expiry: Expiry::Never, max_steps_per_segment: 50 };
    let result = check(&r.events, &tight);
    assert_eq!(result.valid, Valid::False, "{}", result.summary);
    assert_eq!(result.evidence[0]["possible_states"][0]["holder"], "c");
    assert!(result.summary.contains("(1 out of budget"), "{}", result.summary);
}

/// Goal: the history is cut at quiescent points with every possible state carried across:
/// a long sequential history of many rounds is linearizable in one segment per op, and a
/// double grant whose two halves sit in different segments is still caught.
#[test]
fn cuts_keep_state_across_segments() {
    let mut r = R::default();
    for round in 0..200u64 {
        let (t, token) = (round * 10, 100 + round);
        let holder = format!("h{round}");
        r.acquire(7, &holder, (t, t + 1), token)
            .op(Call::Renew(7, token), (t + 2, t + 3), Phase::Ok, Some(RegistryResult::Renewed { token }))
            .get(7, (t + 4, t + 5), Some(&holder), token)
            .op(Call::Release(7, token), (t + 6, t + 7), Phase::Ok, Some(RegistryResult::Released));
    }
    let result = r.check(Expiry::Never);
    assert_eq!(result.valid, Valid::True, "{}", result.summary);
    assert!(result.summary.contains("in 800 segments"), "{}", result.summary);

    // Granted to "x" in one segment, to "y" in a later one, nothing released in between.
    let mut r = R::default();
    r.acquire(7, "x", (0, 1), 10).get(7, (5, 6), Some("x"), 10).acquire(7, "y", (10, 11), 11);
    let result = r.check(Expiry::Never);
    assert_eq!(result.valid, Valid::False, "{}", result.summary);
    assert_eq!(
        (&result.evidence[0]["segment"], &result.evidence[0]["possible_states"][0]["holder"]),
        (&json!(2), &json!("x"))
    );

    // A stale read across a cut: the release completed in an earlier segment.
    let mut r = R::default();
    r.acquire(7, "x", (0, 1), 10).op(Call::Release(7, 10), (2, 3), Phase::Ok, Some(RegistryResult::Released)).get(
        7,
        (4, 5),
        Some("x"),
        10,
    );
    assert_eq!(r.check(Expiry::Anytime).valid, Valid::False);
}

/// Goal: the state a cut carries includes what a timeout may have done: an Acquire that
/// timed out in one segment may take effect in a much later one, once.
#[test]
fn a_timeout_may_take_effect_segments_later() {
    let mut r = R::default();
    r.op(Call::Acquire(Some(7), "late"), (0, 5), Phase::Info, None);
    for i in 0..50u64 {
        r.get(7, (10 + 2 * i, 11 + 2 * i), None, 0);
    }
    r.get(7, (200, 201), Some("late"), 30).op(
        Call::Renew(7, 30),
        (202, 203),
        Phase::Ok,
        Some(RegistryResult::Renewed { token: 30 }),
    );
    assert_eq!(r.check(Expiry::Never).valid, Valid::True);
    r.op(Call::Release(7, 30), (204, 205), Phase::Ok, Some(RegistryResult::Released)).get(
        7,
        (206, 207),
        Some("late"),
        30,
    );
    assert_eq!(r.check(Expiry::Never).valid, Valid::False, "the Acquire took effect once, and was released");
}

/// Goal: a failure the registry called definite (`fail` with no result: NOT_LEADER,
/// NO_QUORUM, ... nothing applied) is left out of the search, so it cannot explain a later
/// read; the same call timed out (`info`) can.
#[test]
fn a_definite_failure_is_pruned() {
    let mut r = R::default();
    r.op(Call::Acquire(Some(7), "a"), (0, 5), Phase::Fail, None).get(7, (10, 11), Some("a"), 30);
    let result = r.check(Expiry::Anytime);
    assert_eq!(result.valid, Valid::False, "{}", result.summary);
    assert!(result.summary.contains("1 definite failures left out"), "{}", result.summary);
    let mut r = R::default();
    r.op(Call::Acquire(Some(7), "a"), (0, 5), Phase::Info, None).get(7, (10, 11), Some("a"), 30);
    assert_eq!(r.check(Expiry::Anytime).valid, Valid::True);
}

/// Goal: per-ID independence (P-compositionality) keeps concurrent work on many IDs
/// polynomial. 24 IDs, each with two overlapping rounds and an interleaved read, all
/// concurrent in time: searched as one object that is 2^48 orders of in-flight ops; split per
/// ID each is a handful of steps, well inside a budget far below what one search would need.
#[test]
fn independent_ids_are_searched_apart() {
    let mut r = R::default();
    for w in 0..24u32 {
        let (a, b) = (format!("a{w}"), format!("b{w}"));
        r.acquire(w, &a, (0, 100), 10 + u64::from(w))
            .reject(Call::Acquire(Some(w), &b), (1, 99), Rejection::AlreadyHeld)
            .get(w, (2, 98), Some(&a), 10 + u64::from(w));
    }
    let tight = Config { max_steps_per_segment: 1_000, ..Config::default() };
    let result = check(&r.events, &tight);
    assert_eq!(result.valid, Valid::True, "{}", result.summary);
    assert!(result.summary.contains("on 24 worker IDs in 24 segments"), "{}", result.summary);
    // One ID's read of the wrong holder is still found.
    r.get(5, (3, 97), Some("b5"), 15);
    assert_eq!(check(&r.events, &tight).valid, Valid::False);
}

/// Goal: many timeouts of different rounds cost configurations linear in their number: 60
/// Acquires of unknown outcome (each by its own holder, as the harness's rounds are) spread
/// over a long history stay within a small budget per segment, and the history's real
/// double grant is still found.
#[test]
fn many_timeouts_stay_cheap() {
    let mut r = R::default();
    for round in 0..60u64 {
        let (t, token) = (round * 10, 100 + 2 * round);
        let holder = format!("h{round}");
        r.acquire(7, &holder, (t, t + 1), token)
            .get(7, (t + 2, t + 3), Some(&holder), token)
            .op(Call::Release(7, token), (t + 4, t + 5), Phase::Ok, Some(RegistryResult::Released))
            .op(Call::Acquire(Some(7), &format!("lost{round}")), (t + 6, t + 7), Phase::Info, None);
    }
    let tight = Config { max_steps_per_segment: 500, ..Config::default() };
    let result = check(&r.events, &tight);
    assert_eq!(result.valid, Valid::True, "{}", result.summary);
    r.acquire(7, "z", (700, 701), 1000).acquire(7, "y", (702, 703), 1001);
    assert_eq!(check(&r.events, &Config { expiry: Expiry::Never, ..tight }).valid, Valid::False);
}

/// Goal: an unattributable Acquire of unknown outcome turns a violation into Unknown, since
/// it may have granted the ID in question.
#[test]
fn an_unattributed_info_acquire_makes_violations_unknown() {
    let mut r = R::default();
    r.op(Call::Acquire(None, "a"), (0, 5), Phase::Info, None).get(7, (10, 11), Some("a"), 30);
    assert_eq!(r.check(Expiry::Never).valid, Valid::Unknown);
}

/// Goal: a history without registry ops is reported as not exercised.
#[test]
fn no_registry_ops_is_vacuous() {
    let result = check(&[], &Config::default());
    assert_eq!(result.valid, Valid::True);
    assert!(result.summary.starts_with("not exercised"));
}

/// Goal: a rejection the registry cannot give for that call (a harness mislabel) is a doubt,
/// not a registry violation.
#[test]
fn a_mislabelled_rejection_is_unknown() {
    let mut r = R::default();
    r.acquire(7, "a", (0, 1), 10).reject(Call::Get(7), (2, 3), Rejection::Fenced);
    let result = r.check(Expiry::Never);
    assert_eq!(result.valid, Valid::Unknown, "{}", result.summary);
}
