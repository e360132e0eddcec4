//! The leader lease behind memory renewals (docs/design.md, "Memory renewals"): while it
//! holds one, no other leader can have been elected, so a renewal it answers from memory is
//! honoured by every later leader (whose expiry clock starts at its own leadership, later).
//!
//! openraft 0.9.25 keeps the followers' half: a voter whose vote is committed (it accepted an
//! AppendEntries of the leader) refuses every VoteRequest for `election_timeout_max` after the
//! last one it accepted (`Engine::handle_vote_req`), and campaigns itself only after
//! `election_timeout_max` + its election timeout (`RaftCore::handle_tick_election`; with
//! pre-vote, only after `pre_vote::elect_if_free` found that refusal run out, checked under a
//! gate the appends also take, so no acknowledgement slips in between). So once a
//! quorum acknowledged a round of heartbeats sent at or after `t`, a candidate's quorum meets
//! a voter that refuses it until `t + election_timeout_max` on that voter's clock. Two members
//! of such a quorum do not refuse on their own, and this module closes both:
//! - **the leader itself** (it counts in the quorum): openraft never refreshes a leader's own
//!   vote time, so it would grant a higher term's vote at once. A node refuses votes while any
//!   lease it took is running ([`LeaderLease::refuses_votes`], asked by the peer service);
//! - **a voter that lost its vote** (a wiped disk the lost-disk guard let back in) votes at
//!   once. Every process refuses votes for `election_timeout_max` after it started, which covers
//!   any acknowledgement its earlier process gave — longer when it runs a smaller value than
//!   it stated before, until every leader heard the new one (`start_quiet.rs`).
//!
//! The lease runs `election_timeout_max × (1 − drift) / (1 + drift)` from the send of the round
//! (`--leader-lease-drift`): a leader clock slow by `drift` and a voter clock fast by `drift`
//! still end it before the voter would vote. It is measured on the wall clock too: the
//! monotonic clock stops while the host is suspended, and a leader that slept through an
//! election must not wake up believing its lease still runs (a wall clock stepped back cannot
//! extend it either: both must agree it runs).
//!
//! A vote this node lets through and a round it confirms are ordered by one gate: a round sent
//! before a vote this node granted completed proves nothing (the node may have voted itself
//! out of the quorum that acknowledged it), so it takes no lease.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::clock::{Clock, MonoTime};
use crate::expiry::LeadershipId;

/// The largest `--leader-lease-drift` (percent): at 50 % the lease is a third of
/// `election_timeout_max`, and a larger bound leaves too little to be worth holding.
pub const LEASE_DRIFT_PERCENT_MAX: u8 = 50;

/// What a leader knows of one other voter's `election_timeout_max`, from its clock probes
/// (`clock_watch.rs`) and its peer calls; instants are this node's clocks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VoterTiming {
    /// The latest probe the voter answered: what it stated (`None`: a release that states
    /// nothing, taken to run this node's value) and when that probe was sent.
    pub stated: Option<(Option<Duration>, RoundSent)>,
    /// When the latest probe it did not answer was sent.
    pub probe_failed: Option<MonoTime>,
    /// When it last answered any peer call of this node (an AppendEntries among them).
    pub answered: Option<MonoTime>,
}

/// The `election_timeout_max` a lease from a round sent at `round` may count on: the
/// smallest among this node's own and every other voter's. A voter refuses votes for its own
/// value, so a leader counting on a larger one would hold its lease past that voter's refusal
/// (the timing changed on some nodes only, or a node restarted with a smaller value).
///
/// A voter's statement counts only while it may still describe the voter's running process:
/// no probe failed after it (a failure may hide a restart), and it is at most `trusted_for`
/// old on both clocks (a leader whose probes stalled — its process paused, its host suspended —
/// has heard nothing of a restart meanwhile). `start_quiet.rs` covers a restart for longer than
/// a statement is trusted. A voter with no statement that counts and that answered nothing
/// since the round was sent did not acknowledge it and is left out; one that did answer may
/// have acknowledged it with a value nobody knows, and the round takes no lease (`None`) until
/// a probe hears the voter.
pub fn voters_election_max(
    own: Duration,
    round: RoundSent,
    trusted_for: Duration,
    voters: impl IntoIterator<Item = VoterTiming>,
) -> Option<Duration> {
    let trusted_ms = trusted_for.as_millis() as u64;
    let mut smallest = own;
    for voter in voters {
        let current = voter.stated.filter(|(_, sent)| {
            voter.probe_failed.is_none_or(|failed| sent.at > failed)
                && round.at.since(sent.at) <= trusted_for
                && round.wall_ms.saturating_sub(sent.wall_ms) <= trusted_ms
        });
        match current {
            Some((stated, _)) => smallest = smallest.min(stated.unwrap_or(own)),
            None if voter.answered.is_some_and(|at| at >= round.at) => return None,
            None => {}
        }
    }
    Some(smallest)
}

/// How long a lease taken at a round's send lasts, for voters refusing votes for
/// `election_max` and clocks whose rates differ from true time by at most `drift_percent`.
pub fn lease_duration(election_max: Duration, drift_percent: u8) -> Duration {
    debug_assert!(drift_percent <= LEASE_DRIFT_PERCENT_MAX);
    let drift = u32::from(drift_percent.min(LEASE_DRIFT_PERCENT_MAX));
    election_max * (100 - drift) / (100 + drift)
}

/// The lease state, pure: time is an argument.
#[derive(Debug, Clone, Copy)]
pub struct LeaseState {
    /// The leadership the running lease was taken in, and its end on both clocks.
    held: Option<Held>,
    /// No vote granted before this: the end of every lease taken, and the start's quiet
    /// (`start_quiet.rs`) after the process started.
    quiet_until: MonoTime,
    /// When the last vote this node let through was answered: rounds sent before it take no
    /// lease.
    last_vote_at: Option<MonoTime>,
}

/// A running lease: its leadership and its end, on the monotonic and on the wall clock.
#[derive(Debug, Clone, Copy)]
struct Held {
    leadership: LeadershipId,
    until: MonoTime,
    wall_until_ms: u64,
}

/// When a heartbeat round (or a clock probe) was sent, on both clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundSent {
    pub at: MonoTime,
    pub wall_ms: u64,
}

impl LeaseState {
    /// A process started at `started_at`, refusing votes for `quiet` (at least the
    /// `election_max` the voters refuse for).
    pub fn new(started_at: MonoTime, quiet: Duration) -> LeaseState {
        LeaseState { held: None, quiet_until: started_at.plus(quiet), last_vote_at: None }
    }

    /// A quorum acknowledged a heartbeat round of `leadership` sent at or after `sent`: hold
    /// the lease until `sent + duration` on both clocks (never shortened by an older round's
    /// answer) — unless this node answered a vote since the round was sent.
    pub fn confirmed(&mut self, leadership: LeadershipId, sent: RoundSent, duration: Duration) {
        if self.last_vote_at.is_some_and(|voted| voted >= sent.at) {
            return;
        }
        let mut held = Held {
            leadership,
            until: sent.at.plus(duration),
            wall_until_ms: sent.wall_ms.saturating_add(duration.as_millis() as u64),
        };
        if let Some(old) = self.held.filter(|h| h.leadership == leadership) {
            held.until = held.until.max(old.until);
            held.wall_until_ms = held.wall_until_ms.max(old.wall_until_ms);
        }
        self.quiet_until = self.quiet_until.max(held.until);
        self.held = Some(held);
    }

    /// Whether this node may answer from memory as leader of `leadership`, at `now` and
    /// `wall_ms`: the lease runs on both clocks.
    pub fn holds(&self, leadership: LeadershipId, now: MonoTime, wall_ms: u64) -> bool {
        self.held.is_some_and(|h| h.leadership == leadership && now < h.until && wall_ms < h.wall_until_ms)
    }

    /// This node answered a vote at `now` (it may have granted it).
    pub fn voted(&mut self, now: MonoTime) {
        self.last_vote_at = Some(now);
    }

    /// Whether this node must refuse a VoteRequest at `now`.
    pub fn refuses_votes(&self, now: MonoTime) -> bool {
        now < self.quiet_until
    }

    /// How much longer from `now` this node refuses votes (zero: it does not).
    pub fn refuses_votes_for(&self, now: MonoTime) -> Duration {
        self.quiet_until.since(now)
    }

    /// Stop answering from memory (the leadership ended or is being handed over); votes stay
    /// refused until the lease would have ended, since answers already given rely on it.
    pub fn give_up(&mut self) {
        self.held = None;
    }
}

/// [`LeaseState`] behind a lock with the node's clock, shared by the leader logic (which takes
/// and uses the lease) and the peer service (which refuses votes).
#[derive(Debug, Clone)]
pub struct LeaderLease {
    clock: Arc<dyn Clock>,
    /// This node's `election_timeout_max`.
    election_max: Duration,
    drift_percent: u8,
    /// The lease with this node's own `election_timeout_max` (the longest any round takes).
    duration: Duration,
    state: Arc<Mutex<LeaseState>>,
    /// Orders votes let through against rounds confirmed (held across a vote's handling).
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl LeaderLease {
    /// The lease of a process starting now, for `election_max` and `drift_percent`, refusing
    /// votes for `quiet` from now (`start_quiet.rs`; never less than `election_max`).
    pub fn new(clock: Arc<dyn Clock>, election_max: Duration, drift_percent: u8, quiet: Duration) -> LeaderLease {
        debug_assert!(quiet >= election_max, "a start refuses votes for at least election_max");
        let state = LeaseState::new(clock.mono(), quiet.max(election_max));
        let duration = lease_duration(election_max, drift_percent);
        LeaderLease {
            clock,
            election_max,
            drift_percent,
            duration,
            state: Arc::new(Mutex::new(state)),
            gate: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LeaseState> {
        // Every update is a few assignments that cannot panic halfway.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How long a lease lasts at most from the send of the round that took it (with every
    /// voter on this node's `election_timeout_max`).
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// This node's `election_timeout_max`.
    pub fn election_max(&self) -> Duration {
        self.election_max
    }

    /// When a round about to be sent starts: the lease it may take counts from here.
    pub fn round_starts(&self) -> RoundSent {
        RoundSent { at: self.clock.mono(), wall_ms: self.clock.wall_ms() }
    }

    /// See [`LeaseState::confirmed`]; the lease counts on `voters_election_max` (see
    /// [`voters_election_max`]), never on more than this node's own.
    pub async fn confirmed(&self, leadership: LeadershipId, sent: RoundSent, voters_election_max: Duration) {
        let duration = lease_duration(voters_election_max.min(self.election_max), self.drift_percent);
        let _votes_wait = self.gate.lock().await;
        self.lock().confirmed(leadership, sent, duration);
    }

    /// See [`LeaseState::holds`], at the clock's now.
    pub fn holds(&self, leadership: LeadershipId) -> bool {
        let (now, wall_ms) = (self.clock.mono(), self.clock.wall_ms());
        self.lock().holds(leadership, now, wall_ms)
    }

    /// Answer a VoteRequest with `vote` (openraft's handling of it), unless this node refuses
    /// votes now (`None`). No round is confirmed while a vote is being handled, and none sent
    /// before it takes a lease afterwards.
    pub async fn vote<T>(&self, vote: impl Future<Output = T>) -> Option<T> {
        let _rounds_wait = self.gate.lock().await;
        if self.lock().refuses_votes(self.clock.mono()) {
            return None;
        }
        let answer = vote.await;
        let now = self.clock.mono();
        self.lock().voted(now);
        Some(answer)
    }

    /// How much longer this node refuses votes (zero: it does not); see
    /// [`LeaseState::refuses_votes_for`].
    pub fn refuses_votes_for(&self) -> Duration {
        self.lock().refuses_votes_for(self.clock.mono())
    }

    /// See [`LeaseState::give_up`].
    pub fn give_up(&self) {
        self.lock().give_up();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TERM_3: LeadershipId = LeadershipId { term: 3, node_id: 1 };
    const TERM_4: LeadershipId = LeadershipId { term: 4, node_id: 1 };

    fn at(ms: u64) -> MonoTime {
        MonoTime(Duration::from_millis(ms))
    }

    #[test]
    fn the_lease_is_shorter_than_the_voters_refusal_by_the_drift_bound() {
        let max = Duration::from_millis(600);
        assert_eq!(lease_duration(max, 0), max);
        // 600 × 90 / 110: a leader clock 10 % slow and a voter clock 10 % fast still agree.
        assert_eq!(lease_duration(max, 10), Duration::from_nanos(490_909_090));
        let slow_leader = lease_duration(max, 10).as_secs_f64() / 0.9;
        let fast_voter = max.as_secs_f64() / 1.1;
        assert!(slow_leader <= fast_voter + 1e-9, "{slow_leader} > {fast_voter}");
        assert_eq!(lease_duration(max, LEASE_DRIFT_PERCENT_MAX), Duration::from_millis(200));
    }

    /// A voter that stated `value` in a probe sent at mono `at_ms` (the wall clock keeping
    /// pace), and answered since.
    fn stated(value: Option<u64>, at_ms: u64) -> VoterTiming {
        VoterTiming {
            stated: Some((value.map(Duration::from_millis), sent(at_ms))),
            probe_failed: None,
            answered: Some(at(at_ms)),
        }
    }

    const TRUSTED: Duration = Duration::from_secs(2);

    /// Goal (issue 11): a voter that runs a smaller `election_timeout_max` than the leader (the
    /// timing changed on some nodes only) shortens the lease to what its refusal covers; a
    /// voter of a release that states none is taken to run the leader's; a larger one changes
    /// nothing. The LeaderLease applies it to the round it confirms.
    #[tokio::test]
    async fn a_voter_with_a_smaller_election_timeout_shortens_the_lease() {
        let own = Duration::from_millis(600);
        let ms = Duration::from_millis;
        let round = sent(1_000);
        let voters = [stated(Some(600), 900), stated(None, 900), stated(Some(900), 900)];
        assert_eq!(voters_election_max(own, round, TRUSTED, voters), Some(own));
        let voters = [stated(Some(600), 900), stated(Some(200), 900), stated(None, 900)];
        assert_eq!(voters_election_max(own, round, TRUSTED, voters), Some(ms(200)));
        assert_eq!(voters_election_max(own, round, TRUSTED, []), Some(own));

        let clock = Arc::new(crate::clock::ManualClock::new(WALL));
        let lease = LeaderLease::new(clock.clone(), own, 0, own);
        clock.advance(ms(700)); // past the refusal every process starts with
        lease.confirmed(TERM_3, lease.round_starts(), ms(200)).await;
        assert!(lease.holds(TERM_3));
        clock.advance(ms(199));
        assert!(lease.holds(TERM_3), "inside the smaller voter's refusal");
        clock.advance(ms(1));
        assert!(!lease.holds(TERM_3), "the lease ends with the smaller voter's refusal, not this node's");
        lease.confirmed(TERM_3, lease.round_starts(), ms(5_000)).await;
        clock.advance(ms(599));
        assert!(lease.holds(TERM_3));
        clock.advance(ms(1));
        assert!(!lease.holds(TERM_3), "never longer than this node's own");
    }

    /// Goal (review of the start quiet): a statement a later failed probe may have outdated
    /// (the voter restarted while the leader could not reach it, or a voter never heard: just
    /// promoted, or this leader just started) counts for nothing. If the voter answered
    /// anything since the round was sent it may have acknowledged the round with a smaller
    /// value than any the leader knows: no lease. If it answered nothing it did not, and it is
    /// left out.
    #[test]
    fn a_voter_whose_value_may_have_changed_unheard_takes_no_lease_if_it_may_have_acknowledged() {
        let own = Duration::from_millis(600);
        let round = sent(5_000);
        let outdated =
            VoterTiming { probe_failed: Some(at(4_500)), answered: Some(at(4_000)), ..stated(Some(600), 4_000) };
        assert_eq!(voters_election_max(own, round, TRUSTED, [outdated]), Some(own), "not answering: left out");
        let healed = VoterTiming { answered: Some(at(5_010)), ..outdated };
        assert_eq!(voters_election_max(own, round, TRUSTED, [stated(Some(600), 4_900), healed]), None);
        let reheard = VoterTiming { stated: Some((Some(Duration::from_millis(300)), sent(5_020))), ..healed };
        assert_eq!(voters_election_max(own, round, TRUSTED, [reheard]), Some(Duration::from_millis(300)));
        let never_heard = VoterTiming { answered: Some(at(5_001)), ..VoterTiming::default() };
        assert_eq!(voters_election_max(own, round, TRUSTED, [never_heard]), None);
        assert_eq!(voters_election_max(own, round, TRUSTED, [VoterTiming::default()]), Some(own), "never answered");
        let failed_before = VoterTiming { probe_failed: Some(at(3_900)), ..stated(Some(450), 4_000) };
        assert_eq!(voters_election_max(own, round, TRUSTED, [failed_before]), Some(Duration::from_millis(450)));
    }

    /// Goal (second review): a statement older than it is trusted counts for nothing either —
    /// a leader whose process was paused, or whose host was suspended (its monotonic clock
    /// stood still, the wall clock ran on), probed nobody meanwhile and may have missed a
    /// restart; the first round after it takes no lease from a voter that answered it.
    #[test]
    fn a_statement_older_than_it_is_trusted_on_either_clock_counts_for_nothing() {
        let own = Duration::from_millis(600);
        let voter = stated(Some(600), 1_000);
        let answered = VoterTiming { answered: Some(at(3_100)), ..voter };
        assert_eq!(voters_election_max(own, sent(3_000), TRUSTED, [answered]), Some(own), "2 s old: trusted");
        assert_eq!(voters_election_max(own, sent(3_001), TRUSTED, [answered]), None, "paused: too old");
        let suspended = RoundSent { at: at(1_100), wall_ms: WALL + 60_000 };
        let answered = VoterTiming { answered: Some(at(1_100)), ..voter };
        assert_eq!(voters_election_max(own, suspended, TRUSTED, [answered]), None, "the wall clock ran on");
        let not_answered = VoterTiming { answered: Some(at(1_000)), ..voter };
        assert_eq!(voters_election_max(own, sent(9_000), TRUSTED, [not_answered]), Some(own), "left out");
    }

    /// A round sent at mono `ms`, with the wall clock reading `WALL + ms`.
    fn sent(ms: u64) -> RoundSent {
        RoundSent { at: at(ms), wall_ms: WALL + ms }
    }

    const WALL: u64 = 1_700_000_000_000;

    /// Holds at mono `ms`, the wall clock having kept pace.
    fn holds(s: &LeaseState, leadership: LeadershipId, ms: u64) -> bool {
        s.holds(leadership, at(ms), WALL + ms)
    }

    #[test]
    fn a_lease_holds_from_the_rounds_send_for_its_leadership_only() {
        let d = Duration::from_millis(400);
        let mut s = LeaseState::new(at(0), Duration::from_millis(600));
        assert!(!holds(&s, TERM_3, 700), "no round acknowledged yet");
        s.confirmed(TERM_3, sent(1_000), d);
        assert!(holds(&s, TERM_3, 1_000));
        assert!(holds(&s, TERM_3, 1_399));
        assert!(!holds(&s, TERM_3, 1_400), "ends exactly at send + duration");
        assert!(!holds(&s, TERM_4, 1_100), "another leadership holds nothing");
        // A late answer to an older round never shortens a lease.
        s.confirmed(TERM_3, sent(1_200), d);
        s.confirmed(TERM_3, sent(1_100), d);
        assert!(holds(&s, TERM_3, 1_599) && !holds(&s, TERM_3, 1_600));
    }

    /// Goal (review): a host suspended inside the lease wakes with its monotonic clock where it
    /// stopped; the wall clock ran on, and ends the lease. A wall clock stepped back does not
    /// extend it either.
    #[test]
    fn the_lease_ends_on_whichever_clock_ends_it_first() {
        let mut s = LeaseState::new(at(0), Duration::from_millis(600));
        s.confirmed(TERM_3, sent(1_000), Duration::from_millis(400));
        assert!(!s.holds(TERM_3, at(1_100), WALL + 11_100), "suspended 10 s: the wall clock says it ended");
        assert!(!s.holds(TERM_3, at(1_500), WALL), "stepped back: the monotonic clock says it ended");
        assert!(s.holds(TERM_3, at(1_100), WALL + 1_100));
    }

    /// Goal (review): a round sent before this node answered a vote takes no lease (the node
    /// may have voted itself out of the quorum that acknowledged the round).
    #[test]
    fn a_round_sent_before_a_vote_was_answered_takes_no_lease() {
        let d = Duration::from_millis(400);
        let mut s = LeaseState::new(at(0), Duration::from_millis(600));
        s.voted(at(1_050));
        s.confirmed(TERM_3, sent(1_000), d);
        assert!(!holds(&s, TERM_3, 1_100));
        s.confirmed(TERM_3, sent(1_050), d);
        assert!(!holds(&s, TERM_3, 1_100), "sent in the same instant: not after the vote");
        s.confirmed(TERM_3, sent(1_060), d);
        assert!(holds(&s, TERM_3, 1_100));
    }

    #[test]
    fn votes_stay_refused_until_every_lease_taken_ends_even_after_giving_it_up() {
        let mut s = LeaseState::new(at(0), Duration::from_millis(600));
        assert!(s.refuses_votes(at(599)), "a process refuses votes for election_max after its start");
        assert!(!s.refuses_votes(at(600)));
        s.confirmed(TERM_3, sent(1_000), Duration::from_millis(400));
        s.give_up();
        assert!(!holds(&s, TERM_3, 1_100), "given up: no memory answers");
        assert!(s.refuses_votes(at(1_399)), "answers already given still rely on the lease");
        assert!(!s.refuses_votes(at(1_400)));
        // A new leadership's lease replaces the old one for answers, and extends the refusal.
        s.confirmed(TERM_4, sent(2_000), Duration::from_millis(400));
        assert!(holds(&s, TERM_4, 2_100) && !holds(&s, TERM_3, 2_100));
        assert!(s.refuses_votes(at(2_399)) && !s.refuses_votes(at(2_400)));
    }
}
