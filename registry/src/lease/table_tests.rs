//! Unit tests of the lease table: each mechanism has a test that fails if it breaks.
#![allow(clippy::unwrap_used)]

use super::*;

const WALL: u64 = 1_700_000_000_000;

fn configured() -> LeaseTable {
    let mut t = LeaseTable::default();
    let config =
        ClusterConfig { epoch_ms: 0, worker_id_bits: 2, sequence_bits: 12, ttl_ms_max: 60_000, cool_down_ms: 1000 };
    t.apply(LogPos::new(1, 0), WALL, &Command::Configure(config));
    // Every member runs this release: the current rules are in force (see `rules_raise.rs`).
    t.apply(LogPos::new(1, 1), WALL, &Command::EnableRules(Rules::CURRENT));
    t
}

fn grant(t: &mut LeaseTable, idx: u64, w: u32, holder: &str) -> Outcome {
    grant_owned(t, idx, w, holder, None)
}

/// A specific claim of `w` by `holder` of identity `owner`, expecting the record as it is.
fn grant_owned(t: &mut LeaseTable, idx: u64, w: u32, holder: &str, owner: Option<&str>) -> Outcome {
    let expect = t
        .record(WorkerId(w))
        .map_or(GrantExpectation { token: Token::NONE, last_renew: LogPos::default() }, LeaseRecord::expectation);
    let cmd = claim(WorkerId(w), holder, 10_000, expect, true, owner.map(str::to_string));
    t.apply(LogPos::new(idx, 0), WALL, &cmd)
}

fn renew(t: &mut LeaseTable, idx: u64, w: u32, token: Token, wall: u64, minted: u64) -> Outcome {
    let cmd = Command::Renew(Renew {
        worker_id: WorkerId(w),
        token,
        wall_ms_at_send: wall,
        max_minted_ts_ms: minted,
        caller: None,
        window_ms: 0,
    });
    t.apply(LogPos::new(idx, 0), WALL, &cmd)
}

/// A Grant command: `holder` of identity `owner` claims `worker_id` (`specific`) expecting `expect`.
fn claim(
    worker_id: WorkerId,
    holder: &str,
    ttl_ms: u64,
    expect: GrantExpectation,
    specific: bool,
    owner: Option<String>,
) -> Command {
    Command::Grant {
        worker_id,
        holder: HolderId(holder.into()),
        ttl_ms,
        expect,
        specific,
        owner,
        incarnation: None,
        window_ms: 0,
    }
}

fn granted(o: Outcome) -> LeaseGrant {
    match o {
        Outcome::Granted(g) | Outcome::Renewed(g) => g,
        other => panic!("expected a grant, got {other:?}"),
    }
}

fn release(t: &mut LeaseTable, idx: u64, w: u32, token: Token, last_ts_ms: u64) -> Outcome {
    t.apply(
        LogPos::new(idx, 0),
        WALL,
        &Command::Release(Release { worker_id: WorkerId(w), token, last_ts_ms, caller: None }),
    )
}

#[test]
fn token_is_the_log_position_of_the_grant_and_only_grows() {
    let mut t = configured();
    let a = granted(grant(&mut t, 2, 0, "a"));
    let b = granted(grant(&mut t, 3, 1, "b"));
    assert_eq!(a.token, Token(LogPos::new(2, 0).0));
    assert!(b.token > a.token);
    release(&mut t, 4, 0, a.token, WALL);
    let c = granted(grant(&mut t, 5, 0, "c"));
    assert!(c.token > b.token, "a re-grant must carry a larger token");
}

#[test]
fn stale_token_renewal_is_fenced() {
    let mut t = configured();
    let a = granted(grant(&mut t, 2, 0, "a"));
    release(&mut t, 3, 0, a.token, 0);
    let b = granted(grant(&mut t, 4, 0, "b"));
    assert_eq!(renew(&mut t, 5, 0, a.token, WALL, 0), Outcome::Rejected(Rejection::Fenced { current: b.token }));
    assert!(matches!(renew(&mut t, 6, 0, b.token, WALL, 0), Outcome::Renewed(_)));
}

#[test]
fn grant_compares_the_last_renewal_not_only_the_token() {
    let mut t = configured();
    let a = granted(grant(&mut t, 2, 0, "a"));
    // The leader decides "expired" from this expectation...
    let seen = t.record(WorkerId(0)).unwrap().expectation();
    // ...but a renewal appended before its grant commits first.
    assert!(matches!(renew(&mut t, 3, 0, a.token, WALL, 0), Outcome::Renewed(_)));
    let cmd = claim(WorkerId(0), "b", 10_000, seen, false, None);
    let outcome = t.apply(LogPos::new(4, 0), WALL, &cmd);
    assert!(matches!(outcome, Outcome::Rejected(Rejection::AlreadyHeld { .. })), "{outcome:?}");
    assert_eq!(t.record(WorkerId(0)).unwrap().holder, Some(HolderId("a".into())));
}

#[test]
fn a_retried_acquire_returns_the_lease_already_held() {
    let mut t = configured();
    let first = granted(grant(&mut t, 2, 0, "a"));
    // Same holder asks again (its first reply was lost), for any ID: it gets ID 0 back.
    let expect = GrantExpectation { token: Token::NONE, last_renew: LogPos::default() };
    let cmd = claim(WorkerId(1), "a", 10_000, expect, false, None);
    let again = granted(t.apply(LogPos::new(3, 0), WALL, &cmd));
    assert_eq!(again.worker_id, WorkerId(0));
    assert_eq!(again.token, first.token);
    assert!(t.record(WorkerId(1)).is_none(), "no second ID leaked");
    // The re-acquire counts as a renewal, so the leader's expiry clock restarts.
    assert_eq!(t.record(WorkerId(0)).unwrap().last_renew, LogPos::new(3, 0));
    // Asking for a different specific ID while holding one is refused.
    let cmd = claim(WorkerId(1), "a", 10_000, expect, true, None);
    assert_eq!(
        t.apply(LogPos::new(4, 0), WALL, &cmd),
        Outcome::Rejected(Rejection::HolderHoldsOther { worker_id: WorkerId(0) })
    );
}

#[test]
fn high_water_mark_orders_successive_holders() {
    let mut t = configured();
    let a = granted(grant(&mut t, 2, 0, "a"));
    // Holder a's clock runs 5 s ahead of the leader's: its window reaches wall + 5 s + ttl.
    renew(&mut t, 3, 0, a.token, WALL + 5_000, WALL + 5_000);
    let hw = t.record(WorkerId(0)).unwrap().high_water_ms;
    assert_eq!(hw, WALL + 5_000 + 10_000);
    // Expired without release: the next holder must not mint before that.
    let b = granted(grant(&mut t, 4, 0, "b"));
    assert_eq!(b.not_before_ms, hw);
}

#[test]
fn release_lowers_the_high_water_to_what_was_minted() {
    let mut t = configured();
    let a = granted(grant(&mut t, 2, 0, "a"));
    renew(&mut t, 3, 0, a.token, WALL, WALL + 100);
    assert_eq!(release(&mut t, 4, 0, a.token, WALL + 250), Outcome::Released);
    // A retried release answers the same and changes nothing.
    assert_eq!(release(&mut t, 5, 0, a.token, WALL + 250), Outcome::Released);
    let b = granted(grant(&mut t, 6, 0, "b"));
    assert_eq!(b.not_before_ms, WALL + 251);
    // The old token can neither renew nor release any more.
    assert!(matches!(renew(&mut t, 7, 0, a.token, WALL, 0), Outcome::Rejected(Rejection::Fenced { .. })));
    assert!(matches!(release(&mut t, 8, 0, a.token, 0), Outcome::Rejected(Rejection::Fenced { .. })));
}

#[test]
fn renewal_after_release_is_expired() {
    let mut t = configured();
    let a = granted(grant(&mut t, 2, 0, "a"));
    release(&mut t, 3, 0, a.token, 0);
    assert_eq!(renew(&mut t, 4, 0, a.token, WALL, 0), Outcome::Rejected(Rejection::Expired));
}

#[test]
fn canary_quarantines_on_proven_overlap_only() {
    let mut t = configured();
    let a = granted(grant(&mut t, 2, 0, "a"));
    renew(&mut t, 3, 0, a.token, WALL, WALL + 10);
    let b = granted(grant(&mut t, 4, 0, "b"));
    // A stale renewal whose mints end before b's not_before proves nothing: plain FENCED.
    let before = b.not_before_ms - 1;
    assert_eq!(renew(&mut t, 5, 0, a.token, WALL, before), Outcome::Rejected(Rejection::Fenced { current: b.token }));
    assert!(t.record(WorkerId(0)).unwrap().quarantine.is_none());
    // One at or past b's not_before proves an overlap.
    assert_eq!(renew(&mut t, 6, 0, a.token, WALL, b.not_before_ms), Outcome::CanaryHit { current: b.token });
    let record = t.record(WorkerId(0)).unwrap();
    assert!(record.quarantine.is_some());
    let audit: Vec<_> = t.audit().collect();
    assert_eq!(audit.len(), 1);
    assert_eq!((audit[0].stale_token, audit[0].current_token), (a.token, b.token));
    assert_eq!(audit[0].overlap_from_ms, b.not_before_ms);
    // The current holder is parked by its next renewal, and nobody gets the ID.
    assert!(matches!(renew(&mut t, 7, 0, b.token, WALL, 0), Outcome::Rejected(Rejection::Quarantined { .. })));
}

#[test]
fn quarantine_blocks_grants_until_cleared() {
    let mut t = configured();
    let q = Command::Quarantine(Quarantine { worker_id: WorkerId(2), reason: "suspect".into() });
    assert_eq!(t.apply(LogPos::new(2, 0), WALL, &q), Outcome::QuarantineSet);
    assert!(!t.free_ids().any(|w| w == WorkerId(2)));
    assert!(matches!(grant(&mut t, 3, 2, "a"), Outcome::Rejected(Rejection::Quarantined { .. })));
    t.apply(LogPos::new(4, 0), WALL, &Command::Unquarantine(Unquarantine { worker_id: WorkerId(2) }));
    assert!(matches!(grant(&mut t, 5, 2, "a"), Outcome::Granted(_)));
}

#[test]
fn bad_inputs_are_rejected_not_applied() {
    let mut t = LeaseTable::default();
    assert_eq!(grant(&mut t, 1, 0, "a"), Outcome::Rejected(Rejection::NotConfigured));
    let mut t = configured();
    assert_eq!(grant(&mut t, 2, 4, "a"), Outcome::Rejected(Rejection::OutOfRange { worker_id: WorkerId(4), count: 4 }));
    let expect = GrantExpectation { token: Token::NONE, last_renew: LogPos::default() };
    for ttl_ms in [0, 60_001] {
        let cmd = claim(WorkerId(0), "a", ttl_ms, expect, true, None);
        assert_eq!(
            t.apply(LogPos::new(3, 0), WALL, &cmd),
            Outcome::Rejected(Rejection::BadTtl { ttl_ms, ttl_ms_max: 60_000 })
        );
    }
    assert_eq!(t.free_ids().count(), 4);
}

#[test]
fn first_configuration_wins() {
    let mut t = configured();
    let other = ClusterConfig { epoch_ms: 5, worker_id_bits: 10, sequence_bits: 12, ttl_ms_max: 1, cool_down_ms: 1 };
    let Outcome::Configured(applied) = t.apply(LogPos::new(2, 0), WALL, &Command::Configure(other)) else {
        panic!("configure must answer Configured");
    };
    assert_eq!(applied.worker_id_bits, 2);
}

#[test]
fn reindex_restores_the_holder_index_after_a_round_trip() {
    let mut t = configured();
    granted(grant(&mut t, 2, 1, "a"));
    let mut copy: LeaseTable = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
    copy.reindex();
    assert_eq!(copy.held_by(None, &HolderId("a".into())), Some(WorkerId(1)));
    assert_eq!(copy, t);
}

/// Goal (restore): a backup loads only into a table that never granted; afterwards every
/// worker ID is held by its embargo holder with a next-generation token above every token the
/// lost cluster could have issued, quarantines and audit survive, high-water marks cover what
/// lost holders minted, and a lost holder renewing is fenced (not a canary: the embargo holder
/// mints nothing).
#[test]
fn restore_embargoes_every_id_under_a_new_token_generation() {
    let mut old = configured();
    let a = granted(grant(&mut old, 2, 0, "a"));
    // Renewed a minute later (its mint_until moves to WALL + 75 s), reporting a mint 70 s in.
    let later = |wall_ms_at_send, max_minted_ts_ms| {
        Command::Renew(Renew {
            worker_id: WorkerId(0),
            token: a.token,
            wall_ms_at_send,
            max_minted_ts_ms,
            caller: None,
            window_ms: 0,
        })
    };
    granted(old.apply(LogPos::new(3, 0), WALL + 65_000, &later(WALL + 65_000, 0)));
    granted(old.apply(LogPos::new(3, 1), WALL + 70_000, &later(WALL + 70_000, WALL + 70_000)));
    old.apply(
        LogPos::new(4, 0),
        WALL,
        &Command::Quarantine(Quarantine { worker_id: WorkerId(3), reason: "by hand".into() }),
    );
    let backup = old.backup().unwrap();
    // The lost cluster went on granting after the backup, up to some huge log position.
    let lost_token = granted(grant(&mut old, 1 << 40, 1, "lost")).token;

    let mut fresh = configured();
    let restore_at = LogPos::new(2, 0);
    let outcome = fresh.apply(restore_at, WALL + 5, &Command::Restore(Box::new(backup.clone())));
    let Outcome::Restored { generation, worker_ids, records, embargo_until_ms } = outcome else {
        panic!("expected Restored, got {outcome:?}");
    };
    assert_eq!((generation, worker_ids, records), (1, 4, 2));
    assert_eq!(embargo_until_ms, WALL + 5 + 60_000 + 1000);
    for (worker_id, record) in fresh.records() {
        assert_eq!(record.holder, Some(HolderId::restore_embargo(worker_id)));
        assert!(record.token > lost_token, "restored token must beat every lost token");
        assert_eq!(record.ttl_ms, 60_000);
        assert!(record.high_water_ms >= embargo_until_ms);
    }
    // The lost holder's mint_until (its last renewal at WALL + 70 s, plus the TTL) covers its mints.
    assert_eq!(fresh.record(WorkerId(0)).unwrap().high_water_ms, WALL + 80_000, "minted timestamps are covered");
    assert_eq!(fresh.record(WorkerId(3)).unwrap().quarantine.as_deref(), Some("by hand"));
    assert_eq!(fresh.audit().count(), 1);
    assert_eq!(fresh.free_ids().count(), 0, "nothing is free during the embargo");

    let stale = renew(&mut fresh, 3, 1, lost_token, WALL, WALL + 10);
    assert!(matches!(stale, Outcome::Rejected(Rejection::Fenced { .. })), "{stale:?}");
    assert!(fresh.record(WorkerId(1)).unwrap().quarantine.is_none(), "a lost holder is not a canary");

    // After the embargo (the leader's expiry decides; here: the CAS on the embargo record),
    // a grant carries the new generation and waits past the high-water mark.
    let g = granted(grant(&mut fresh, 4, 0, "new"));
    assert!(g.token > lost_token && g.token.position(TokenOffset::NONE) == LogPos::new(4, 0));
    // A `Restore` entry (written before token offsets) replays exactly as it always did.
    assert_eq!(g.token, Token((1 << 56) | LogPos::new(4, 0).0));
    assert_eq!(g.not_before_ms, WALL + 80_000);

    let again = fresh.apply(LogPos::new(5, 0), WALL, &Command::Restore(Box::new(backup.clone())));
    assert!(matches!(again, Outcome::Rejected(Rejection::NotEmpty { .. })), "{again:?}");
    let mut broken = backup;
    broken.last_token = Token::NONE;
    let bad = configured().apply(LogPos::new(2, 0), WALL, &Command::Restore(Box::new(broken)));
    assert!(matches!(bad, Outcome::Rejected(Rejection::BadBackup { .. })), "{bad:?}");
}

/// A backup of a cluster of generation `generation` that granted worker ID 0 at a huge log
/// position, and that largest token it issued.
fn backup_of_generation(generation: u8) -> (TableBackup, Token) {
    let mut lost = configured();
    lost.generation = generation;
    lost.token_offset = TokenOffset::from_random_bits(u64::MAX);
    let token = granted(grant(&mut lost, (1 << 43) - 1, 0, "lost")).token;
    (lost.backup().unwrap(), token)
}

fn restored(backup: &TableBackup, token_offset: TokenOffset) -> LeaseTable {
    let mut t = configured();
    let command = Command::RestoreWithOffset { backup: Box::new(backup.clone()), token_offset, window_ms: 0 };
    let outcome = t.apply(LogPos::new(2, 0), WALL, &command);
    assert!(matches!(outcome, Outcome::Restored { .. }), "{outcome:?}");
    t
}

/// Goal (issue 9): two clusters restored from one backup share a generation but not token
/// values. With different offsets, the same grants at the same log positions carry different
/// tokens, in disjoint ranges, all above every token of the backup's cluster; a table reloaded
/// from its stored parts or a snapshot keeps granting under its offset.
#[test]
fn two_restores_of_one_backup_grant_different_tokens_above_the_backup() {
    let (backup, lost_token) = backup_of_generation(0);
    let offsets =
        [TokenOffset::from_random_bits(0x9e37_79b9_7f4a_7c15), TokenOffset::from_random_bits(0x2545_f491_4f6c_dd1d)];
    let tokens: Vec<Vec<Token>> = offsets
        .iter()
        .map(|offset| {
            let mut t = restored(&backup, *offset);
            assert_eq!(t.generation(), 1);
            let embargo = t.record(WorkerId(0)).unwrap().expectation();
            let cmd = claim(WorkerId(0), "new", 10_000, embargo, true, None);
            let first = granted(t.apply(LogPos::new(3, 0), WALL, &cmd)).token;
            assert_eq!(first.position(*offset), LogPos::new(3, 0));
            let mut reloaded = LeaseTable::from_parts(t.globals(), t.records().map(|(w, r)| (w, r.clone())), []);
            let mut snapshot: LeaseTable = serde_json::from_value(serde_json::to_value(&t).unwrap()).unwrap();
            snapshot.reindex();
            let later = [granted(grant(&mut t, 4, 1, "b")).token, granted(grant(&mut reloaded, 4, 1, "b")).token];
            assert_eq!(later, [granted(grant(&mut snapshot, 4, 1, "b")).token; 2], "reloads keep the offset");
            let all = [t.record(WorkerId(2)).unwrap().token, first, later[0]];
            assert!(all.iter().all(|token| *token > lost_token && token.0 >> 56 == 1), "{all:?}");
            all.to_vec()
        })
        .collect();
    let (a, b) = (&tokens[0], &tokens[1]);
    assert!(a.iter().all(|token| !b.contains(token)), "{a:?} {b:?}");
    assert!(a.last() < b.first() || b.last() < a.first(), "disjoint ranges: {a:?} {b:?}");
}

/// Goal: a restore's generation is above the backup's, so even the smallest offset of the new
/// generation orders above the largest token of the backup's.
#[test]
fn a_restore_orders_above_the_backups_generation_whatever_the_offsets() {
    let (backup, lost_token) = backup_of_generation(4);
    let t = restored(&backup, TokenOffset::NONE);
    assert_eq!(t.generation(), 5);
    assert!(t.record(WorkerId(0)).unwrap().token > lost_token);
}

/// Goal: a node recorded as having served stays recorded, through the stored globals (which
/// is how a restarted peer still remembers it).
#[test]
fn served_nodes_are_remembered_through_the_stored_globals() {
    let mut t = configured();
    assert!(!t.has_served(3));
    assert_eq!(t.apply(LogPos::new(2, 0), WALL, &Command::NodeServed { node_id: 3 }), Outcome::NodeServedNoted);
    let reloaded = LeaseTable::from_parts(t.globals(), Vec::new(), Vec::new());
    assert!(reloaded.has_served(3) && !reloaded.has_served(4));
}

/// Goal: every grant and renewal states `mint_until` = the high-water mark, and the next
/// holder's `not_before` is at least the last `mint_until` the previous holder was told, so a
/// holder that honours it cannot overlap its successor whatever its wall clock does.
#[test]
fn mint_until_never_exceeds_the_next_holders_not_before() {
    let mut t = configured();
    let a = granted(grant(&mut t, 2, 0, "a"));
    assert_eq!(a.mint_until_ms, WALL + 10_000, "leader wall + ttl");
    let renewed = granted(renew(&mut t, 3, 0, a.token, WALL + 4_000, WALL + 3_000));
    assert_eq!(renewed.mint_until_ms, WALL + 14_000, "the holder's send wall + ttl");
    // Expired, then re-granted by CAS to b: b starts at or after everything a was allowed.
    let b = granted(grant(&mut t, 4, 0, "b"));
    assert!(b.not_before_ms >= renewed.mint_until_ms, "{} < {}", b.not_before_ms, renewed.mint_until_ms);
}

/// Goal: a quarantine reason cut at the byte limit never splits a character (a panic in apply
/// would stop every replica at the same entry).
#[test]
fn a_long_multibyte_reason_is_cut_at_a_character_boundary() {
    let mut t = configured();
    let reason = format!("a{}", "é".repeat(REASON_LEN_MAX));
    let q = Command::Quarantine(Quarantine { worker_id: WorkerId(1), reason });
    assert_eq!(t.apply(LogPos::new(2, 0), WALL, &q), Outcome::QuarantineSet);
    let kept = t.record(WorkerId(1)).unwrap().quarantine.clone().unwrap();
    assert!(kept.len() <= REASON_LEN_MAX && kept.len() >= REASON_LEN_MAX - 1, "{}", kept.len());
    assert!(kept.starts_with("aé"));
}

/// Goal: a re-acquire by the holder of a lease starts it past everything it reported
/// minting, not at the lease's original `not_before`.
#[test]
fn a_re_acquire_starts_past_what_the_holder_reported_minting() {
    let mut t = configured();
    let first = granted(grant(&mut t, 2, 1, "a"));
    let minted = WALL + 5_000;
    granted(renew(&mut t, 3, 1, first.token, WALL + 4_000, minted));
    let again = granted(grant(&mut t, 4, 1, "a"));
    assert_eq!((again.worker_id, again.token), (first.worker_id, first.token));
    assert_eq!(again.not_before_ms, minted + 1);
    assert!(again.mint_until_ms > again.not_before_ms, "{again:?}");
}

const ALICE: &str = "spiffe://td/fenceflake/worker/alice";
const MALLORY: &str = "spiffe://td/fenceflake/worker/mallory";

fn grant_as(t: &mut LeaseTable, idx: u64, w: u32, holder: &str, owner: &str) -> Outcome {
    grant_owned(t, idx, w, holder, Some(owner))
}

fn renew_as(t: &mut LeaseTable, idx: u64, token: Token, minted: u64, caller: &str) -> Outcome {
    let renew = Renew {
        worker_id: WorkerId(0),
        token,
        wall_ms_at_send: WALL,
        max_minted_ts_ms: minted,
        caller: Some(caller.into()),
        window_ms: 0,
    };
    t.apply(LogPos::new(idx, 0), WALL, &Command::Renew(renew))
}

fn release_as(t: &mut LeaseTable, idx: u64, token: Token, last_ts_ms: u64, caller: &str) -> Outcome {
    let release = Release { worker_id: WorkerId(0), token, last_ts_ms, caller: Some(caller.into()) };
    t.apply(LogPos::new(idx, 0), WALL, &Command::Release(release))
}

/// Goal (trust boundary): the right token from the wrong identity changes nothing — no
/// renewal, no release (which would free the ID and lower its high-water mark), no re-acquire
/// of the holder's lease by a copy of its holder ID.
#[test]
fn a_lease_answers_only_to_the_identity_it_was_granted_to() {
    let mut t = configured();
    let lease = granted(grant_as(&mut t, 2, 0, "a", ALICE));
    let before = t.record(WorkerId(0)).unwrap().clone();
    let refused = |o: &Outcome| matches!(o, Outcome::Rejected(Rejection::NotOwner { owner }) if owner == ALICE);
    assert!(refused(&renew_as(&mut t, 3, lease.token, 0, MALLORY)));
    assert!(refused(&release_as(&mut t, 4, lease.token, 0, MALLORY)));
    assert_eq!(t.record(WorkerId(0)).unwrap(), &before, "nothing changed");
    // Alice's holder ID used by Mallory is another holder (a namespace per identity): its
    // Acquire does not find Alice's lease (so it is planned like any other claim).
    assert_eq!(t.held_by(Some(MALLORY), &HolderId("a".into())), None);
    assert_eq!(t.held_by(Some(ALICE), &HolderId("a".into())), Some(WorkerId(0)));
    assert!(matches!(renew_as(&mut t, 6, lease.token, 0, ALICE), Outcome::Renewed(_)));
    assert!(matches!(release_as(&mut t, 7, lease.token, WALL, ALICE), Outcome::Released));
}

/// Goal: a stale token trips the canary only from the identity it was granted to; from
/// anyone else it is just FENCED (a stranger cannot quarantine someone else's ID).
#[test]
fn the_canary_believes_a_stale_token_only_from_its_own_owner() {
    let mut t = configured();
    let old = granted(grant_as(&mut t, 2, 0, "a", ALICE));
    release_as(&mut t, 3, old.token, WALL, ALICE);
    let new = granted(grant_as(&mut t, 4, 0, "b", MALLORY));
    let forged = renew_as(&mut t, 5, old.token, new.not_before_ms + 5, MALLORY);
    assert!(matches!(forged, Outcome::Rejected(Rejection::Fenced { .. })), "{forged:?}");
    assert!(t.record(WorkerId(0)).unwrap().quarantine.is_none());
    // A token the record never granted proves nothing either (else any worker certificate
    // could quarantine any ID with a made-up token).
    let made_up = renew_as(&mut t, 6, Token(1), u64::MAX, ALICE);
    assert!(matches!(made_up, Outcome::Rejected(Rejection::Fenced { .. })), "{made_up:?}");
    assert!(t.record(WorkerId(0)).unwrap().quarantine.is_none());
    let proven = renew_as(&mut t, 7, old.token, new.not_before_ms + 5, ALICE);
    assert!(matches!(proven, Outcome::CanaryHit { .. }), "{proven:?}");
}

/// Goal: a lease granted over plaintext (no owner) answers no authenticated caller — its
/// token may have been read by anyone before TLS — while plaintext callers keep it working
/// until it ends; an authenticated worker with the same holder ID gets a lease of its own.
#[test]
fn a_plaintext_lease_is_closed_to_authenticated_callers() {
    let mut t = configured();
    let lease = granted(grant(&mut t, 2, 0, "a"));
    let before = t.record(WorkerId(0)).unwrap().clone();
    let not_owner = |o: &Outcome| matches!(o, Outcome::Rejected(Rejection::NotOwner { .. }));
    assert!(not_owner(&renew_as(&mut t, 3, lease.token, 0, ALICE)));
    assert!(not_owner(&release_as(&mut t, 4, lease.token, 0, ALICE)));
    assert_eq!(t.record(WorkerId(0)).unwrap(), &before);
    let own = granted(grant_as(&mut t, 5, 1, "a", ALICE));
    assert_eq!(own.worker_id, WorkerId(1));
    assert!(matches!(renew(&mut t, 6, 0, lease.token, WALL, 0), Outcome::Renewed(_)), "plaintext holder unaffected");
}

/// Goal: entries are applied under the rules they were written with, so replaying an entry
/// written before identities and bounds gives the outcome it had then.
#[test]
fn old_entries_replay_under_their_own_rules() {
    let mut t = configured();
    let lease = granted(grant(&mut t, 2, 0, "a"));
    let far = Renew {
        worker_id: WorkerId(0),
        token: lease.token,
        wall_ms_at_send: WALL + 100_000,
        max_minted_ts_ms: 0,
        caller: None,
        window_ms: 0,
    };
    let old = t.clone().apply_under(Rules::ORIGINAL, LogPos::new(3, 0), WALL, &Command::Renew(far.clone()));
    assert!(matches!(old, Outcome::Renewed(_)), "{old:?}");
    let new = t.apply_under(Rules::CURRENT, LogPos::new(3, 0), WALL, &Command::Renew(far));
    assert!(matches!(new, Outcome::Rejected(Rejection::ClockAhead { .. })), "{new:?}");
}

/// Goal (bounded claims): no claim moves a high-water mark past what an honest holder could
/// need — a send time far ahead of the leader's clock is CLOCK_SKEW, a minted timestamp or
/// last timestamp at or past the lease's mint_until is refused — and nothing overflows.
#[test]
fn claims_beyond_the_registrys_time_or_the_lease_change_nothing() {
    let mut t = configured();
    let lease = granted(grant(&mut t, 2, 0, "a"));
    let before = t.record(WorkerId(0)).unwrap().clone();
    let ahead = renew(&mut t, 3, 0, lease.token, WALL + CLAIM_AHEAD_MAX_MS + 1, 0);
    assert!(matches!(ahead, Outcome::Rejected(Rejection::ClockAhead { registry_time_ms: WALL, .. })), "{ahead:?}");
    for minted in [lease.mint_until_ms, u64::MAX] {
        let o = renew(&mut t, 4, 0, lease.token, WALL, minted);
        assert!(matches!(o, Outcome::Rejected(Rejection::BeyondMintUntil { .. })), "{o:?}");
    }
    assert!(matches!(renew(&mut t, 5, 0, lease.token, u64::MAX, 0), Outcome::Rejected(Rejection::ClockAhead { .. })));
    let o = release(&mut t, 6, 0, lease.token, u64::MAX);
    assert!(matches!(o, Outcome::Rejected(Rejection::BeyondMintUntil { .. })), "{o:?}");
    assert_eq!(t.record(WorkerId(0)).unwrap(), &before, "nothing changed");
    // Inside the bounds the honest path works as before.
    let renewed = granted(renew(&mut t, 7, 0, lease.token, WALL + 1_000, lease.mint_until_ms - 1));
    assert_eq!(renewed.mint_until_ms, WALL + 1_000 + 10_000);
}

/// A Grant by `holder` from process `incarnation`, for `w` (`specific`), expecting the record
/// of `w` as it is now (what the leader's plan would expect).
fn claim_from(t: &mut LeaseTable, idx: u64, w: u32, holder: &str, incarnation: u64, specific: bool) -> Outcome {
    let expect = t
        .record(WorkerId(w))
        .map_or(GrantExpectation { token: Token::NONE, last_renew: LogPos::default() }, LeaseRecord::expectation);
    let cmd = Command::Grant {
        worker_id: WorkerId(w),
        holder: HolderId(holder.into()),
        ttl_ms: 10_000,
        expect,
        specific,
        owner: None,
        incarnation: Some(Incarnation(incarnation)),
        window_ms: 0,
    };
    t.apply(LogPos::new(idx, 0), WALL, &cmd)
}

/// Goal (incarnations): a retried Acquire of the same process gets its lease back unchanged;
/// a new process of the holder gets a new token at once, with a `not_before` past everything
/// the previous token could still mint (its `mint_until`), and the previous process is told
/// SUPERSEDED — or, if it minted inside the new window, the canary quarantines the ID.
#[test]
fn a_new_incarnation_takes_the_lease_over_under_a_new_token() {
    let mut t = configured();
    let first = granted(claim_from(&mut t, 2, 0, "h", 1, true));
    let again = granted(claim_from(&mut t, 3, 0, "h", 1, true));
    assert_eq!(again.token, first.token, "a retry of the same incarnation keeps the token");
    let renewed = granted(renew(&mut t, 4, 0, first.token, WALL + 2_000, WALL + 1_500));
    // Expect a stale expectation: the takeover does not compare (the holder asks for its own).
    let stale = GrantExpectation { token: Token::NONE, last_renew: LogPos::default() };
    let cmd = Command::Grant {
        worker_id: WorkerId(0),
        holder: HolderId("h".into()),
        ttl_ms: 10_000,
        expect: stale,
        specific: true,
        owner: None,
        incarnation: Some(Incarnation(2)),
        window_ms: 0,
    };
    let taken = granted(t.apply(LogPos::new(5, 0), WALL, &cmd));
    assert!(taken.token > first.token, "a new incarnation must get a new token");
    assert!(taken.not_before_ms >= renewed.mint_until_ms, "{} < {}", taken.not_before_ms, renewed.mint_until_ms);
    let superseded = renew(&mut t, 6, 0, first.token, WALL, WALL + 1_600);
    assert_eq!(superseded, Outcome::Rejected(Rejection::Superseded { holder: HolderId("h".into()) }));
    assert!(matches!(release(&mut t, 7, 0, first.token, WALL), Outcome::Rejected(Rejection::Fenced { .. })));
    assert!(matches!(renew(&mut t, 8, 0, taken.token, WALL, 0), Outcome::Renewed(_)));
    // The previous process reporting a mint at or past the new not_before is an overlap.
    let overlap = renew(&mut t, 9, 0, first.token, WALL, taken.not_before_ms);
    assert_eq!(overlap, Outcome::CanaryHit { current: taken.token });
    assert!(t.record(WorkerId(0)).unwrap().quarantine.is_some());
}

/// Goal: incarnations apply only under rules in force. Entries written before them replay as
/// they did, and an entry a new leader writes under them is applied under the older rules until
/// `EnableRules` raised the table (every member then runs a release that knows them): so a
/// replica of an older release, which ignores the incarnation, applies it the same way.
#[test]
fn incarnations_apply_only_under_their_rules() {
    let take_over = |t: &mut LeaseTable, idx, rules| {
        let cmd = Command::Grant {
            worker_id: WorkerId(0),
            holder: HolderId("h".into()),
            ttl_ms: 10_000,
            expect: t.record(WorkerId(0)).unwrap().expectation(),
            specific: true,
            owner: None,
            incarnation: Some(Incarnation(idx)),
            window_ms: 0,
        };
        granted(t.apply_under(rules, LogPos::new(idx, 0), WALL, &cmd))
    };
    let mut t = configured();
    let first = granted(claim_from(&mut t, 2, 0, "h", 1, true));
    assert_eq!(take_over(&mut t, 3, Rules::IDENTITIES).token, first.token, "old entries replay unchanged");
    let taken = take_over(&mut t, 4, Rules::INCARNATIONS);
    assert!(taken.token > first.token);

    let mut fresh = LeaseTable::default();
    let config =
        ClusterConfig { epoch_ms: 0, worker_id_bits: 2, sequence_bits: 12, ttl_ms_max: 60_000, cool_down_ms: 1000 };
    fresh.apply(LogPos::new(1, 0), WALL, &Command::Configure(config));
    let mut old_replica = fresh.clone();
    let first = granted(claim_from(&mut fresh, 2, 0, "h", 1, true));
    granted(claim_from(&mut old_replica, 2, 0, "h", 1, true));
    let new = take_over(&mut fresh, 3, Rules::INCARNATIONS);
    let old = take_over(&mut old_replica, 3, Rules::IDENTITIES);
    assert_eq!((new.token, &fresh), (first.token, &old_replica), "before the raise both apply it alike");
    assert_eq!(old.token, first.token);
    let raised = fresh.apply(LogPos::new(4, 0), WALL, &Command::EnableRules(Rules::CURRENT));
    assert_eq!(raised, Outcome::RulesEnabled(Rules::CURRENT));
    assert!(take_over(&mut fresh, 5, Rules::INCARNATIONS).token > first.token, "after the raise, a takeover");
    assert_eq!(fresh.rules_in_force(Rules::IDENTITIES), Rules::IDENTITIES, "entries keep their own rules");
}

/// Goal: a process that states no incarnation (an older worker binary, or a bare client) after
/// one that stated one is another process: it takes the lease over under a new token instead of
/// sharing the live one; two that both state none still get the lease back (an old worker's
/// retry).
#[test]
fn no_incarnation_after_an_incarnation_is_another_process() {
    let mut t = configured();
    let first = granted(claim_from(&mut t, 2, 0, "h", 1, true));
    let mut t2 = configured();
    let a = granted(grant(&mut t2, 2, 0, "old"));
    let again = granted(t2.apply(
        LogPos::new(3, 0),
        WALL,
        &claim(WorkerId(0), "old", 10_000, t2.record(WorkerId(0)).unwrap().expectation(), true, None),
    ));
    assert_eq!(again.token, a.token, "an old worker's retry gets its lease back");
    let cmd = claim(WorkerId(0), "h", 10_000, t.record(WorkerId(0)).unwrap().expectation(), true, None);
    let other = granted(t.apply(LogPos::new(4, 0), WALL, &cmd));
    assert!(other.token > first.token, "a process without an incarnation must not share a stated one's token");
    assert_eq!(
        renew(&mut t, 5, 0, first.token, WALL, 0),
        Outcome::Rejected(Rejection::Superseded { holder: HolderId("h".into()) })
    );
}

/// Goal: with `auto`, a new incarnation that would wait long for its held ID takes a free one;
/// the held ID is given up with its high-water mark kept (its previous process may still mint
/// below it), and that process is told SUPERSEDED, so it stops instead of fencing back.
#[test]
fn a_new_incarnation_may_give_its_held_id_up_for_a_free_one() {
    let mut t = configured();
    let first = granted(claim_from(&mut t, 2, 0, "h", 1, false));
    let renewed = granted(renew(&mut t, 3, 0, first.token, WALL + 2_000, WALL + 1_000));
    let moved = granted(claim_from(&mut t, 4, 1, "h", 2, false));
    assert_eq!(moved.worker_id, WorkerId(1));
    let left = t.record(WorkerId(0)).unwrap();
    assert_eq!(left.holder, None, "the held ID is free again");
    assert_eq!(left.high_water_ms, renewed.mint_until_ms, "its mark stays for its next holder");
    let superseded = renew(&mut t, 5, 0, first.token, WALL, WALL + 1_100);
    assert_eq!(superseded, Outcome::Rejected(Rejection::Superseded { holder: HolderId("h".into()) }));
    assert_eq!(release(&mut t, 6, 0, first.token, WALL + 1_100), Outcome::Released);
    assert_eq!(t.record(WorkerId(0)).unwrap().high_water_ms, renewed.mint_until_ms, "a late release lowers nothing");
    let next = granted(grant(&mut t, 7, 0, "other"));
    assert!(next.not_before_ms >= renewed.mint_until_ms);
    // A new incarnation asking for another specific ID than its holder holds is refused.
    let refused = claim_from(&mut t, 8, 2, "h", 3, true);
    assert_eq!(refused, Outcome::Rejected(Rejection::HolderHoldsOther { worker_id: WorkerId(1) }));
}

fn windowed(w: u32, token: Token, wall: u64, minted: u64, window_ms: u64) -> Command {
    Command::Renew(Renew {
        worker_id: WorkerId(w),
        token,
        wall_ms_at_send: wall,
        max_minted_ts_ms: minted,
        caller: None,
        window_ms,
    })
}

/// Goal (issue 11, high-water windows): a logged renewal raises the high-water mark a window
/// past its reach — only under the rules that know windows, and never past the bound.
#[test]
fn a_windowed_renewal_raises_the_high_water_mark_past_its_reach_under_its_rules_only() {
    let mut t = configured();
    let lease = granted(grant(&mut t, 2, 0, "a"));
    let reach = WALL + 10_000;
    let old =
        t.clone().apply_under(Rules::INCARNATIONS, LogPos::new(3, 0), WALL, &windowed(0, lease.token, WALL, 0, 30_000));
    assert_eq!(granted(old).mint_until_ms, reach, "before windows the field is ignored");
    let now = granted(t.clone().apply(LogPos::new(3, 0), WALL, &windowed(0, lease.token, WALL, 0, 30_000)));
    assert_eq!(now.mint_until_ms, reach + 30_000);
    let forged = granted(t.apply(LogPos::new(3, 0), WALL, &windowed(0, lease.token, WALL, 0, u64::MAX)));
    assert_eq!(forged.mint_until_ms, reach + crate::limits::RENEW_WINDOW_MAX_MS, "bounded");
}

/// Goal (issue 11, grant windows): a grant raises the high-water mark a window past
/// `leader_wall + ttl` under its rules only (an entry written under older rules keeps its
/// outcome), bounded like a renewal's; so is a retried Acquire's regrant; and the lease's first
/// renewal is then covered, so it is answered from memory instead of logged.
#[test]
fn a_windowed_grant_raises_the_mark_under_its_rules_and_covers_the_first_renewal() {
    let t = configured();
    let none = GrantExpectation { token: Token::NONE, last_renew: LogPos::default() };
    let ask = |holder: &str, window_ms, expect| Command::Grant {
        worker_id: WorkerId(0),
        holder: HolderId(holder.into()),
        ttl_ms: 10_000,
        expect,
        specific: false,
        owner: None,
        incarnation: None,
        window_ms,
    };
    let old = granted(t.clone().apply_under(Rules::WINDOWS, LogPos::new(2, 0), WALL, &ask("a", 30_000, none)));
    assert_eq!(old.mint_until_ms, WALL + 10_000, "before grant windows the field is ignored");
    let forged = granted(t.clone().apply(LogPos::new(2, 0), WALL, &ask("a", u64::MAX, none)));
    assert_eq!(forged.mint_until_ms, WALL + 10_000 + crate::limits::RENEW_WINDOW_MAX_MS, "bounded");

    let mut t = t;
    let lease = granted(t.apply(LogPos::new(2, 0), WALL, &ask("a", 30_000, none)));
    assert_eq!((lease.mint_until_ms, lease.not_before_ms), (WALL + 40_000, 0));
    let first = Renew {
        worker_id: WorkerId(0),
        token: lease.token,
        wall_ms_at_send: WALL + 3_300,
        max_minted_ts_ms: WALL + 3_000,
        caller: None,
        window_ms: 0,
    };
    let covered = t.covered_renewal(&first, WALL + 3_300).expect("the first renewal is inside the grant's window");
    assert_eq!((covered.grant.mint_until_ms, covered.headroom_ms), (WALL + 40_000, 26_700));

    // A retried Acquire an hour on gets its lease back with the mark a window past again.
    let later = WALL + 3_600_000;
    let retried = granted(t.apply(LogPos::new(3, 0), later, &ask("a", 30_000, none)));
    assert_eq!((retried.token, retried.mint_until_ms), (lease.token, later + 40_000));
    // The next holder after a release waits only past what was minted, window or not.
    release(&mut t, 4, 0, lease.token, later + 1_000);
    let expect = t.record(WorkerId(0)).unwrap().expectation();
    let next = granted(t.apply(LogPos::new(5, 0), later + 2_000, &ask("b", 30_000, expect)));
    assert_eq!(next.not_before_ms, later + 1_001);
}

/// Goal (issue 11, review): a takeover by a new incarnation carries no window. Otherwise a worker
/// that refuses to wait out its `not_before` and is restarted in a loop pushes its ID's mark a
/// TTL and a window further at every restart, and the ID never serves again; without it every
/// takeover waits for less than the one before, and the loop ends.
#[test]
fn takeovers_in_a_restart_loop_wait_less_each_time() {
    let mut t = configured();
    let take = |t: &mut LeaseTable, idx: u64, wall: u64, incarnation: u64| {
        let cmd = Command::Grant {
            worker_id: WorkerId(0),
            holder: HolderId("a".into()),
            ttl_ms: 10_000,
            expect: GrantExpectation { token: Token::NONE, last_renew: LogPos::default() },
            specific: true,
            owner: None,
            incarnation: Some(Incarnation(incarnation)),
            window_ms: 120_000,
        };
        granted(t.apply(LogPos::new(idx, 0), wall, &cmd))
    };
    let first = take(&mut t, 2, WALL, 1);
    assert_eq!(first.mint_until_ms, WALL + 130_000, "a first grant carries the window");
    let mut waits = Vec::new();
    for restart in 1..6u64 {
        let wall = WALL + restart * 6_000;
        let lease = take(&mut t, 2 + restart, wall, 1 + restart);
        assert_eq!(lease.mint_until_ms, WALL + 130_000, "restart {restart}: the mark did not move");
        waits.push(lease.not_before_ms - wall);
    }
    assert!(waits.windows(2).all(|w| w[1] < w[0]), "every wait shorter than the last: {waits:?}");
}

/// Goal (issue 11, memory renewals): a renewal is answered from memory only when the durable
/// high-water mark covers its reach and the log could not decide otherwise; then it gets what
/// logging it would give.
#[test]
fn a_renewal_is_covered_only_inside_the_window_for_the_current_owner_in_good_standing() {
    let mut t = configured();
    let lease = granted(grant(&mut t, 2, 0, "a"));
    let renew = |wall, minted| Renew {
        worker_id: WorkerId(0),
        token: lease.token,
        wall_ms_at_send: wall,
        max_minted_ts_ms: minted,
        caller: None,
        window_ms: 0,
    };
    assert_eq!(t.covered_renewal(&renew(WALL + 1, 0), WALL), None, "no window yet: reach beyond the grant's mark");
    granted(t.apply(LogPos::new(3, 0), WALL, &windowed(0, lease.token, WALL, 0, 30_000)));
    let hw = WALL + 40_000;
    let inside = t.covered_renewal(&renew(WALL + 20_000, WALL + 19_000), WALL + 20_000).unwrap();
    assert_eq!((inside.grant.mint_until_ms, inside.headroom_ms), (hw, 10_000));
    let logged =
        t.clone().apply(LogPos::new(4, 0), WALL + 20_000, &Command::Renew(renew(WALL + 20_000, WALL + 19_000)));
    assert_eq!(logged, Outcome::Renewed(inside.grant.clone()), "the log would answer the same");
    assert!(t.covered_renewal(&renew(WALL + 30_000, 0), WALL + 30_000).is_some(), "reach exactly at the mark");
    assert_eq!(t.covered_renewal(&renew(WALL + 30_001, 0), WALL + 30_001), None, "reach past the mark");
    assert_eq!(t.covered_renewal(&renew(WALL, hw), WALL), None, "a mint at the mark: the log refuses it");
    assert_eq!(t.covered_renewal(&renew(WALL + 1_000 + CLAIM_AHEAD_MAX_MS, 0), WALL), None, "a clock too far ahead");
    let stale = Renew { token: Token(lease.token.0 - 1), ..renew(WALL, 0) };
    assert_eq!(t.covered_renewal(&stale, WALL), None, "another token: fenced or the canary, by the log");
    let stranger = Renew { caller: Some("spiffe://td/fenceflake/worker/mallory".into()), ..renew(WALL, 0) };
    assert_eq!(t.covered_renewal(&stranger, WALL), None, "another identity");
    let mut q = t.clone();
    q.apply(LogPos::new(4, 0), WALL, &Command::Quarantine(Quarantine { worker_id: WorkerId(0), reason: "x".into() }));
    assert_eq!(q.covered_renewal(&renew(WALL, 0), WALL), None, "quarantined");
    let mut r = t.clone();
    release(&mut r, 4, 0, lease.token, WALL);
    assert_eq!(r.covered_renewal(&renew(WALL, 0), WALL), None, "released");
    let mut mixed = LeaseTable::default();
    let config = t.config().cloned().unwrap();
    mixed.apply(LogPos::new(1, 0), WALL, &Command::Configure(config));
    let lease = granted(grant(&mut mixed, 2, 0, "a"));
    mixed.apply(LogPos::new(3, 0), WALL, &windowed(0, lease.token, WALL, 0, 30_000));
    assert_eq!(
        mixed.covered_renewal(&Renew { token: lease.token, ..renew(WALL + 1, 0) }, WALL),
        None,
        "rules below windows"
    );
}

/// Goal (issue 11, review): a lost holder's `mint_until` may lie a window past its reach, so a
/// restore raises every high-water mark that much past the embargo — under the rules that know
/// windows; the grant embargo itself (when the IDs may be granted again) does not move.
#[test]
fn a_restore_raises_every_mark_a_window_past_the_embargo() {
    let (backup, _) = backup_of_generation(0);
    let command =
        Command::RestoreWithOffset { backup: Box::new(backup), token_offset: TokenOffset::NONE, window_ms: 30_000 };
    let embargo = WALL + 60_000 + 1_000;
    for (rules, window) in [(Rules::CURRENT, 30_000), (Rules::INCARNATIONS, 0)] {
        let mut t = configured();
        let outcome = t.apply_under(rules, LogPos::new(2, 0), WALL, &command);
        let Outcome::Restored { embargo_until_ms, .. } = outcome else { panic!("{outcome:?}") };
        assert_eq!(embargo_until_ms, embargo, "the grant embargo is max TTL + cool-down");
        assert!(t.records().all(|(_, r)| r.high_water_ms >= embargo + window), "under {rules:?}");
        assert!(t.records().any(|(_, r)| r.high_water_ms == embargo + window), "under {rules:?}");
    }
}

/// Goal (issue 11): the copy a snapshot is written from serializes exactly as the table does,
/// shares its records (no second table in memory), and keeps what the table held when it was
/// taken while later applies change the table.
#[test]
fn the_copy_a_snapshot_is_written_from_is_the_table_then() {
    let mut t = configured();
    let lease = granted(grant(&mut t, 1, 3, "a"));
    granted(grant(&mut t, 2, 2, "b"));
    let copy = t.copy_to_write();
    assert_eq!(serde_json::to_vec(&copy).unwrap(), serde_json::to_vec(&t).unwrap());
    assert!(Arc::ptr_eq(&copy.records[&WorkerId(3)], &t.records[&WorkerId(3)]), "records are shared");
    assert!(copy.holders.is_empty(), "the index is not written, so not copied");

    let before = copy.record(WorkerId(3)).unwrap().clone();
    assert!(matches!(renew(&mut t, 3, 3, lease.token, 5_000, 4_000), Outcome::Renewed(_)));
    assert_eq!(copy.record(WorkerId(3)), Some(&before), "the copy still holds the record as it was");
    assert_ne!(t.record(WorkerId(3)), Some(&before));
    assert!(Arc::ptr_eq(&copy.records[&WorkerId(2)], &t.records[&WorkerId(2)]), "an unchanged record stays shared");
}
