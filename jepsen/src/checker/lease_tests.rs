//! Tests of the lease-fencing checker: crafted good hand-overs pass, each kind of fencing
//! violation is caught, and missing lease information is Unknown.

use super::*;
use crate::checker::testkit::{id, H};
use crate::history::LeaseEventKind::{Acquired, Parked, Released, Renewed};

fn violations(r: &CheckResult) -> Vec<String> {
    r.evidence.iter().map(|e| e["violation"].as_str().unwrap_or("?").to_string()).collect()
}

/// w1 holds worker ID 1 (token 100) from t=0 with renewals, parks at its deadline 1500 ms,
/// and w2 gets token 200 at t=2000.
fn clean_hand_over() -> H {
    let mut h = H::default();
    h.lease("w1", Acquired, (1, 100), Some(1000), 0).mono_deadline(1000);
    h.ok("w1", 1, (100, 110), &[(id(105, 1, 0), 10)], Some((1, 100)));
    h.lease("w1", Renewed, (1, 100), Some(1500), 500).mono_deadline(1500);
    h.ok("w1", 1, (1200, 1210), &[(id(1205, 1, 0), 1)], None);
    h.lease("w1", Parked, (1, 100), Some(1500), 1500);
    h.lease("w2", Acquired, (1, 200), Some(3000), 2000).mono_deadline(3000);
    h.ok("w2", 2, (2100, 2110), &[(id(2105, 1, 0), 5)], Some((1, 200)));
    h
}

/// Goal: a clean hand-over with renewals and a batch-less `Generate` passes.
#[test]
fn a_clean_hand_over_is_valid() {
    let r = check(&clean_hand_over().events, &IdLayout::default());
    assert_eq!(r.valid, Valid::True, "{}: {:?}", r.summary, r.evidence);
    assert!(r.summary.contains("2 leases on 1 worker IDs (0 began"), "{}", r.summary);
    assert!(r.summary.contains("; 3 ok ops"), "{}", r.summary);
}

/// w1 holds worker ID 1 (token 100, deadline 1000 on both clocks) and is SIGSTOPped, or
/// copied, at 150; its holder's new incarnation (`w1` restarted, or a copy `c1`) takes the
/// lease over at 300 under token 200 with `not_before` 1000, past everything token 100 could
/// mint: the leases overlap in real time (300..1000), never in minted timestamps.
fn takeover(newer: &str) -> H {
    let mut h = H::default();
    h.lease("w1", Acquired, (1, 100), Some(1000), 0).mono_deadline(1000);
    h.ok("w1", 1, (100, 110), &[(id(105, 1, 0), 10)], Some((1, 100)));
    h.lease(newer, Acquired, (1, 200), Some(3300), 300).mono_deadline(3300);
    h.ok(newer, 2, (1000, 1010), &[(id(1001, 1, 0), 5)], Some((1, 200)));
    h
}

/// Goal (incarnations): a takeover that overlaps the older lease in real time but not in
/// minted timestamps is valid, whether the older process is paused (it mints nothing more) or
/// still running until its next renewal is told SUPERSEDED (it mints below its deadline, and
/// so below the new lease's timestamps, after the new lease was granted: what used to be
/// called an older token used after a newer one existed); the summary counts the overlap.
#[test]
fn a_takeover_overlapping_in_real_time_with_disjoint_timestamps_is_valid() {
    for newer in ["w1", "c1"] {
        let r = check(&takeover(newer).events, &IdLayout::default());
        assert_eq!(r.valid, Valid::True, "{newer}: {}: {:?}", r.summary, r.evidence);
        assert!(r.summary.contains("(1 began before the older lease's end"), "{}", r.summary);
    }
    let mut h = takeover("c1");
    h.ok("w1", 1, (900, 910), &[(id(905, 1, 0), 3)], Some((1, 100)));
    let r = check(&h.events, &IdLayout::default());
    assert_eq!(r.valid, Valid::True, "{}: {:?}", r.summary, r.evidence);
}

/// Goal: in a real-time overlap, a timestamp of the older lease at or past one of the newer
/// lease is still caught (a duplicate is then one sequence number away), and so is the older
/// process minting at or past its own deadline, even while its timestamps stay below the
/// newer lease's.
#[test]
fn a_takeover_whose_timestamps_overlap_or_that_outlives_its_deadline_is_caught() {
    let mut h = takeover("c1");
    h.ok("w1", 1, (1020, 1030), &[(id(1001, 1, 7), 1)], Some((1, 100)));
    let r = check(&h.events, &IdLayout::default());
    assert_eq!(r.valid, Valid::False);
    assert_eq!(violations(&r), ["minted-after-deadline", "mint-windows-overlap"]);

    let mut h = H::default();
    h.lease("w1", Acquired, (1, 100), Some(1000), 0).mono_deadline(1000);
    h.lease("c1", Acquired, (1, 200), Some(3300), 300).mono_deadline(3300);
    h.ok("c1", 2, (2000, 2010), &[(id(2001, 1, 0), 5)], Some((1, 200)));
    h.ok("w1", 1, (1100, 1110), &[(id(1000, 1, 0), 1)], Some((1, 100)));
    let r = check(&h.events, &IdLayout::default());
    assert_eq!(violations(&r), ["minted-after-deadline"]);
}

/// Goal: a worker process going back to an older token is caught; an older token used after
/// a newer one was in use is caught when its timestamps reach the newer one's.
#[test]
fn a_token_going_down_is_caught() {
    let mut h = H::default();
    h.lease("w2", Acquired, (1, 200), Some(2000), 100);
    h.ok("w2", 2, (150, 160), &[(id(155, 1, 0), 1)], Some((1, 200)));
    h.ok("w1", 1, (300, 310), &[(id(305, 1, 0), 1)], Some((1, 100)));
    h.lease("w2", Renewed, (1, 150), Some(2500), 400);
    let r = check(&h.events, &IdLayout::default());
    assert_eq!(r.valid, Valid::False);
    let v = violations(&r);
    assert!(v.contains(&"token-went-down".to_string()) && v.contains(&"mint-windows-overlap".to_string()), "{v:?}");
}

/// Goal: a mint at or past the deadline known when the op completed is caught; a renewal
/// logged only after the op completed does not excuse it.
#[test]
fn a_mint_after_the_deadline_is_caught() {
    let mut h = H::default();
    h.lease("w1", Acquired, (1, 100), Some(1000), 0);
    h.ok("w1", 1, (990, 1005), &[(id(1000, 1, 0), 1)], Some((1, 100)));
    h.lease("w1", Renewed, (1, 100), Some(2000), 1010);
    let r = check(&h.events, &IdLayout::default());
    assert_eq!(r.valid, Valid::False);
    assert_eq!(violations(&r), ["minted-after-deadline"]);
    assert_eq!(r.evidence[0]["late_by_ms"], 0);
}

/// Goal: two leases whose minted timestamps interleave are caught even when their real-time
/// windows look disjoint (a fast clock on the old holder).
#[test]
fn overlapping_mint_windows_are_caught() {
    let mut h = H::default();
    h.lease("w1", Acquired, (1, 100), Some(5000), 0);
    h.ok("w1", 1, (100, 110), &[(id(4000, 1, 0), 1)], Some((1, 100)));
    h.lease("w1", Released, (1, 100), None, 200);
    h.lease("w2", Acquired, (1, 200), Some(5000), 300);
    h.ok("w2", 2, (400, 410), &[(id(3999, 1, 0), 1)], Some((1, 200)));
    let r = check(&h.events, &IdLayout::default());
    assert_eq!(violations(&r), ["mint-windows-overlap"]);
}

/// Goal: one token held by two worker processes is caught.
#[test]
fn a_shared_token_is_caught() {
    let mut h = H::default();
    h.lease("w1", Acquired, (1, 100), Some(5000), 0);
    h.lease("w2", Acquired, (1, 100), Some(5000), 10);
    let r = check(&h.events, &IdLayout::default());
    assert_eq!(violations(&r), ["token-shared"]);
}

/// Goal: IDs carrying another worker ID than their lease's are caught.
#[test]
fn a_wrong_worker_id_field_is_caught() {
    let mut h = H::default();
    h.lease("w1", Acquired, (1, 100), Some(5000), 0);
    h.ok("w1", 1, (10, 20), &[(id(15, 2, 0), 1)], Some((1, 100)));
    assert_eq!(violations(&check(&h.events, &IdLayout::default())), ["wrong-worker-id"]);
}

/// Goal: a release followed by an immediate re-grant (the next holder may even log its
/// acquire before the old one logs the release) is not an overlap.
#[test]
fn release_then_immediate_regrant_is_valid() {
    let mut h = H::default();
    h.lease("w1", Acquired, (1, 100), Some(5000), 0).mono_deadline(5000);
    h.ok("w1", 1, (10, 20), &[(id(15, 1, 0), 1)], Some((1, 100)));
    h.lease("w2", Acquired, (1, 200), Some(5000), 30).mono_deadline(5030);
    h.lease("w1", Released, (1, 100), None, 31);
    h.ok("w2", 2, (40, 50), &[(id(45, 1, 0), 1)], Some((1, 200)));
    let r = check(&h.events, &IdLayout::default());
    assert_eq!(r.valid, Valid::True, "{:?}", r.evidence);
}

/// Goal: without lease events the deadline cannot be checked, so the verdict is Unknown,
/// and so is an op during which the worker's lease changed.
#[test]
fn missing_lease_info_is_unknown() {
    let mut h = H::default();
    h.ok("w1", 1, (10, 20), &[(id(15, 1, 0), 1)], Some((1, 100)));
    assert_eq!(check(&h.events, &IdLayout::default()).valid, Valid::Unknown);

    let mut h = H::default();
    h.lease("w1", Acquired, (1, 100), Some(5000), 0);
    h.lease("w1", Acquired, (2, 300), Some(5000), 15);
    h.ok("w1", 1, (10, 20), &[(id(15, 2, 0), 1)], None);
    let r = check(&h.events, &IdLayout::default());
    assert_eq!(r.valid, Valid::Unknown, "{:?}", r.evidence);
    assert_eq!(check(&[], &IdLayout::default()).valid, Valid::Unknown);
}
