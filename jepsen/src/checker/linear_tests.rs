//! Tests of the registry linearizability checker on crafted lease-table histories.

use super::*;
use crate::checker::testkit::MS;

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
    assert_eq!(result.evidence[0]["state_after_prefix"]["holder"], "a");
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

/// Goal: an out-of-budget search is Unknown, never True.
#[test]
fn budget_exhaustion_is_unknown() {
    let mut r = R::default();
    for i in 0..20 {
        r.op(Call::Renew(7, 10), (i, 100), Phase::Info, None);
    }
    r.acquire(7, "a", (0, 200), 10);
    let result = check(&r.events, &Config { max_steps: 10, ..Config::default() });
    assert_eq!(result.valid, Valid::Unknown, "{}", result.summary);
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
