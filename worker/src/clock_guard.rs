//! The clock guard ladder (docs/design.md "Clock guard"): what to do when the wall clock reads
//! before the last minted millisecond, and the skew check against the registry's clock.
//!
//! Pure decisions only. The caller does the waiting, the counting and the logging, so the
//! ladder can be tested rung by rung and replayed by the simulation.

use std::fmt;
use std::time::Duration;

use fenceflake_proto::clock_offset::{OffsetBounds, ProvenSkew};

use crate::limits::{DEFAULT_MAX_SPIN_MS, MAX_SPIN_MS};

/// How the guard responds to a regression; fixed at startup from config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockGuardPolicy {
    /// Longest regression waited out by spinning. Short: spinning blocks every caller.
    max_spin_ms: u64,
    /// Whether the grace rung may keep minting in the frozen last millisecond. Off by
    /// default: it trades timestamp accuracy (IDs carry a slightly stale time) for
    /// availability, which not every deployment wants.
    grace: bool,
}

/// Why a guard policy was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClockGuardPolicyError {
    #[error("max_spin_ms {max_spin_ms} exceeds the limit of {MAX_SPIN_MS}")]
    SpinTooLong { max_spin_ms: u64 },
}

/// The rung of the ladder to take for one mint attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuardAction {
    /// No regression: mint at the current wall time.
    Proceed,
    /// Wait until the wall clock reads at least `ts_ms` (the last minted millisecond), then
    /// try again. The caller bounds the wait by `max_spin_ms` on the monotonic clock, since
    /// the wall clock may step again while it waits.
    SpinUntil(u64),
    /// Take IDs from what is left of the frozen last millisecond ([`crate::Minter::mint_frozen`]).
    BorrowFrozen,
    /// Stop minting; count it and log at error.
    Park(ParkReason),
}

/// Why the clock guard stopped minting; also the `reason` label of the parked metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParkReason {
    /// The wall clock went back further than the guard will wait out.
    ClockRegressed,
    /// The wall clock disagrees with the registry leader's by more than `max_skew_ms`.
    ClockSkew,
}

impl ParkReason {
    /// The metric label and log value: a small fixed set, as metric labels must be.
    pub fn as_label(self) -> &'static str {
        match self {
            ParkReason::ClockRegressed => "clock_regressed",
            ParkReason::ClockSkew => "clock_skew",
        }
    }
}

impl fmt::Display for ParkReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_label())
    }
}

impl Default for ClockGuardPolicy {
    fn default() -> ClockGuardPolicy {
        ClockGuardPolicy { max_spin_ms: DEFAULT_MAX_SPIN_MS, grace: false }
    }
}

impl ClockGuardPolicy {
    pub fn new(max_spin_ms: u64, grace: bool) -> Result<ClockGuardPolicy, ClockGuardPolicyError> {
        if max_spin_ms > MAX_SPIN_MS {
            return Err(ClockGuardPolicyError::SpinTooLong { max_spin_ms });
        }
        Ok(ClockGuardPolicy { max_spin_ms, grace })
    }

    pub fn max_spin_ms(&self) -> u64 {
        self.max_spin_ms
    }

    pub fn grace(&self) -> bool {
        self.grace
    }

    /// The rung for a wall clock `regression_ms` behind `last_ts_ms`, with
    /// `frozen_seq_left` sequence numbers still free in `last_ts_ms`.
    ///
    /// Borrowing comes before spinning when allowed: it is safe at any regression size (the
    /// frozen millisecond is already above everything minted and covered by the ceiling)
    /// and costs callers no wait. Once the frozen millisecond is used up, the ladder falls
    /// through to spinning or parking.
    pub fn decide(&self, last_ts_ms: u64, regression_ms: u64, frozen_seq_left: u32) -> GuardAction {
        if regression_ms == 0 {
            GuardAction::Proceed
        } else if self.grace && frozen_seq_left > 0 {
            GuardAction::BorrowFrozen
        } else if regression_ms <= self.max_spin_ms {
            GuardAction::SpinUntil(last_ts_ms)
        } else {
            GuardAction::Park(ParkReason::ClockRegressed)
        }
    }
}

/// The worker's wall clock is provably too far from the registry leader's to trust
/// (`CLOCK_SKEW`): every offset consistent with the round trip is beyond the bound.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SkewError {
    #[error(
        "local wall clock is {proven} the registry's: local − registry is {offset} over the round trip \
         (registry read {registry_time_ms} ms), beyond the max skew of {max_skew_ms} ms"
    )]
    TooFar { offset: OffsetBounds, registry_time_ms: u64, proven: ProvenSkew, max_skew_ms: u64 },
}

impl SkewError {
    /// Skew parks the worker with its own reason.
    pub fn park_reason(&self) -> ParkReason {
        ParkReason::ClockSkew
    }
}

/// One registry call's wall-clock evidence for the skew check: the local wall clock just
/// before sending and just after receiving, the call's duration on the monotonic clock, and
/// the registry leader's wall clock stamped in the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoundTrip {
    pub send_wall_ms: u64,
    pub receive_wall_ms: u64,
    pub elapsed: Duration,
    pub registry_time_ms: u64,
}

impl RoundTrip {
    /// What the round trip proves about `local − registry`
    /// ([`OffsetBounds::from_timed_round_trip`]: a wall step during the call widens it).
    pub fn offset(&self) -> OffsetBounds {
        let elapsed_ms = u64::try_from(self.elapsed.as_millis()).unwrap_or(u64::MAX);
        OffsetBounds::from_timed_round_trip(self.send_wall_ms, self.receive_wall_ms, elapsed_ms, self.registry_time_ms)
    }
}

/// What one round trip says about the local wall clock against `max_skew_ms`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkewVerdict {
    /// Every offset the round trip allows is within the bound: the clock is trusted.
    Within,
    /// The interval straddles the bound (a call too slow to tell): neither proof. The
    /// worker keeps its previous verdict, so a slow call neither parks nor resumes it.
    Inconclusive(OffsetBounds),
    /// Every offset is beyond the bound: park `CLOCK_SKEW`.
    Beyond(SkewError),
}

impl SkewVerdict {
    /// Whether the worker is skewed after this verdict, given whether it was before.
    pub fn skewed_after(&self, was_skewed: bool) -> bool {
        match self {
            SkewVerdict::Within => false,
            SkewVerdict::Inconclusive(_) => was_skewed,
            SkewVerdict::Beyond(_) => true,
        }
    }
}

/// Judge a renewal's round trip: park only on proof of skew, resume only on proof of
/// agreement (see [`check_skew`] for why the round trip matters).
pub fn judge_skew(round_trip: &RoundTrip, max_skew_ms: u64) -> SkewVerdict {
    let offset = round_trip.offset();
    match check_skew(round_trip, max_skew_ms) {
        Err(e) => SkewVerdict::Beyond(e),
        Ok(()) if offset.provably_within(max_skew_ms) => SkewVerdict::Within,
        Ok(()) => SkewVerdict::Inconclusive(offset),
    }
}

/// Check at boot and on every grant that the local wall clock is within `max_skew_ms` of the
/// registry leader's (stamped into each response). Either direction counts: ahead burns
/// timestamp range and inflates `not_before` for the next holder; behind means waiting out
/// `not_before` and, with a lost disk, the risk of replaying an old window.
///
/// The registry stamps its time somewhere within the round trip, so the offset is only known
/// to lie in an interval as wide as the call ([`fenceflake_proto::clock_offset`]); the worker
/// parks only when the whole interval is beyond the bound. A slow call (an election) widens
/// the interval and so can hide a real skew for that one call, never invent one: a worker on
/// the registry's own host never parks for skew.
pub fn check_skew(round_trip: &RoundTrip, max_skew_ms: u64) -> Result<(), SkewError> {
    let offset = round_trip.offset();
    match offset.provably_beyond(max_skew_ms) {
        None => Ok(()),
        Some(proven) => {
            Err(SkewError::TooFar { offset, registry_time_ms: round_trip.registry_time_ms, proven, max_skew_ms })
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::num::NonZeroU32;
    use std::time::Duration;

    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::layout::Layout;
    use crate::minter::{IdRun, MintOutcome, Minter};
    use crate::worker_id::WorkerId;

    const EPOCH_MS: u64 = 1_600_000_000_000;
    const T0: u64 = EPOCH_MS + 10_000;

    /// Goal: `decide` picks the documented rung for every combination of regression size,
    /// grace and sequence left in the frozen ms, including both edges of `max_spin`.
    #[test]
    fn decide_table() {
        let last = T0;
        let cases: &[(&str, bool, u64, u32, GuardAction)] = &[
            ("no regression", false, 0, 0, GuardAction::Proceed),
            ("no regression, grace", true, 0, 5, GuardAction::Proceed),
            ("1 ms spins", false, 1, 5, GuardAction::SpinUntil(last)),
            ("max_spin spins", false, 20, 5, GuardAction::SpinUntil(last)),
            ("max_spin+1 parks", false, 21, 5, GuardAction::Park(ParkReason::ClockRegressed)),
            ("grace borrows small", true, 1, 5, GuardAction::BorrowFrozen),
            ("grace borrows large", true, 10_000, 1, GuardAction::BorrowFrozen),
            ("grace used up spins", true, 5, 0, GuardAction::SpinUntil(last)),
            ("grace used up parks", true, 21, 0, GuardAction::Park(ParkReason::ClockRegressed)),
        ];
        let strict = ClockGuardPolicy::new(20, false).unwrap();
        let graceful = ClockGuardPolicy::new(20, true).unwrap();
        for (name, grace, regression_ms, left, want) in cases {
            let policy = if *grace { graceful } else { strict };
            assert_eq!(policy.decide(last, *regression_ms, *left), *want, "{name}");
        }
        assert_eq!(ClockGuardPolicy::default(), strict);
    }

    /// Goal: a spin longer than the limit is rejected; a spin of 0 means "never spin".
    #[test]
    fn policy_limits() {
        assert_eq!(
            ClockGuardPolicy::new(MAX_SPIN_MS + 1, false),
            Err(ClockGuardPolicyError::SpinTooLong { max_spin_ms: MAX_SPIN_MS + 1 })
        );
        let never = ClockGuardPolicy::new(0, false).unwrap();
        assert_eq!(never.decide(T0, 1, 9), GuardAction::Park(ParkReason::ClockRegressed));
    }

    /// How one guarded mint ended in the driver below.
    #[derive(Debug, PartialEq)]
    enum Ended {
        Minted { ts_ms: u64, count: u32, spun_ms: u64 },
        Parked(ParkReason),
    }

    /// One guarded mint, as a caller would run it against `clock`: mint, and on a regression
    /// follow the ladder. Spins by advancing the manual clock 1 ms at a time and asserts the
    /// spin never exceeds `max_spin_ms` of monotonic time.
    fn guarded_mint(
        clock: &ManualClock,
        m: &mut Minter,
        policy: ClockGuardPolicy,
        want: u32,
        prev: &mut Option<IdRun>,
    ) -> Ended {
        let want = NonZeroU32::new(want).unwrap();
        let started = clock.mono();
        for _ in 0..1_000 {
            let run = match m.mint_batch(clock.wall_ms(), want) {
                MintOutcome::Minted(run) => run,
                MintOutcome::Exhausted { .. } => {
                    clock.advance(Duration::from_millis(1));
                    continue;
                }
                MintOutcome::Regressed { last_ts_ms, by_ms } => {
                    match policy.decide(last_ts_ms, by_ms, m.remaining_in_last_ms()) {
                        GuardAction::Proceed => panic!("Proceed on a regression"),
                        GuardAction::SpinUntil(ts_ms) => {
                            while clock.wall_ms() < ts_ms {
                                clock.advance(Duration::from_millis(1));
                                let spun = clock.mono().duration_since(started);
                                assert!(spun <= Duration::from_millis(policy.max_spin_ms()));
                            }
                            continue;
                        }
                        GuardAction::BorrowFrozen => m.mint_frozen(want).unwrap(),
                        GuardAction::Park(reason) => return Ended::Parked(reason),
                    }
                }
                MintOutcome::OutOfRange(e) => panic!("{e}"),
            };
            if let Some(p) = prev {
                assert!(run.first > p.last(), "IDs went back");
            }
            *prev = Some(run);
            let spun_ms = clock.mono().duration_since(started).as_millis() as u64;
            return Ended::Minted { ts_ms: run.ts_ms, count: run.count, spun_ms };
        }
        panic!("guarded mint did not finish");
    }

    /// Goal: every rung, driven end to end with a stepped `ManualClock` and a real minter
    /// (4 IDs per ms): spin waits out small steps back, grace borrows only what is left of
    /// the frozen ms, and large steps park — and IDs never go back.
    #[test]
    fn ladder_with_a_stepped_clock() {
        struct Case {
            name: &'static str,
            grace: bool,
            /// IDs minted at T0 before the step.
            used_before: u32,
            step_ms: i64,
            want: u32,
            ended: Ended,
        }
        // (name, grace, IDs minted at T0 before the step, step, IDs wanted after it, how it ends)
        let case =
            |name, grace, used_before, step_ms, want, ended| Case { name, grace, used_before, step_ms, want, ended };
        let cases = [
            case("no step", false, 1, 0, 2, Ended::Minted { ts_ms: T0, count: 2, spun_ms: 0 }),
            case("forward step", false, 1, 7, 9, Ended::Minted { ts_ms: T0 + 7, count: 4, spun_ms: 0 }),
            case("small step back spins", false, 1, -5, 3, Ended::Minted { ts_ms: T0, count: 3, spun_ms: 5 }),
            case("spin then next ms", false, 4, -20, 1, Ended::Minted { ts_ms: T0 + 1, count: 1, spun_ms: 21 }),
            case("large step back parks", false, 1, -21, 1, Ended::Parked(ParkReason::ClockRegressed)),
            case("grace borrows the rest only", true, 1, -500, 10, Ended::Minted { ts_ms: T0, count: 3, spun_ms: 0 }),
            case("grace used up parks", true, 4, -500, 1, Ended::Parked(ParkReason::ClockRegressed)),
            case("grace used up spins", true, 4, -3, 1, Ended::Minted { ts_ms: T0 + 1, count: 1, spun_ms: 4 }),
        ];
        for c in cases {
            let clock = ManualClock::new(T0);
            let layout = Layout::new(EPOCH_MS, 10, 2).unwrap();
            let mut m = Minter::new(layout, WorkerId::new(9)).unwrap();
            let policy = ClockGuardPolicy::new(20, c.grace).unwrap();
            let mut prev = None;
            let first = guarded_mint(&clock, &mut m, policy, c.used_before, &mut prev);
            assert!(matches!(first, Ended::Minted { ts_ms: T0, .. }), "{}", c.name);
            clock.step_wall_ms(c.step_ms);
            assert_eq!(guarded_mint(&clock, &mut m, policy, c.want, &mut prev), c.ended, "{}", c.name);
            m.check_invariants();
        }
    }

    fn round_trip(send_wall_ms: u64, receive_wall_ms: u64, registry_time_ms: u64) -> RoundTrip {
        let elapsed = Duration::from_millis(receive_wall_ms.saturating_sub(send_wall_ms));
        RoundTrip { send_wall_ms, receive_wall_ms, elapsed, registry_time_ms }
    }

    /// Goal: skew within the limit passes in both directions (edge included); beyond it the
    /// worker refuses with `CLOCK_SKEW`, naming the measured interval and the bound; a slow
    /// round trip never turns a correct clock into a skewed one.
    #[test]
    fn skew_check() {
        assert_eq!(check_skew(&round_trip(10_000, 10_000, 10_500), 500), Ok(()));
        assert_eq!(check_skew(&round_trip(10_500, 10_500, 10_000), 500), Ok(()));
        let err = check_skew(&round_trip(10_000, 10_000, 10_501), 500).unwrap_err();
        let SkewError::TooFar { offset, registry_time_ms, proven, max_skew_ms } = &err;
        assert_eq!((offset.min_ms(), offset.max_ms(), *registry_time_ms, *max_skew_ms), (-501, -501, 10_501, 500));
        assert_eq!(proven.at_least_ms, 501);
        assert_eq!(
            err.to_string(),
            "local wall clock is at least 501 ms behind the registry's: local − registry is -501 ms over the \
             round trip (registry read 10501 ms), beyond the max skew of 500 ms"
        );
        assert_eq!(err.park_reason(), ParkReason::ClockSkew);
        assert!(check_skew(&round_trip(20_000, 20_000, 10_000), 500).is_err());
        // Same host, a 2 s renewal during an election, the registry read at its middle: the
        // single-reading check saw 1 s of "skew" here.
        assert_eq!(check_skew(&round_trip(10_000, 12_000, 11_000), 500), Ok(()));
        // Ten minutes ahead over the same slow call is still proven.
        let err = check_skew(&round_trip(700_000, 702_000, 101_000), 500).unwrap_err();
        assert!(err.to_string().contains("at least 599000 ms ahead of the registry's"), "{err}");
        assert!(err.to_string().contains("+599000..+601000 ms"), "{err}");
        assert_eq!(ParkReason::ClockSkew.to_string(), "clock_skew");
        assert_eq!(ParkReason::ClockRegressed.as_label(), "clock_regressed");
    }

    /// Goal: a renewal parks only on proof of skew and resumes only on proof of agreement;
    /// a call too slow to tell keeps the previous verdict either way (no flapping).
    #[test]
    fn verdicts_need_proof_both_ways() {
        let within = judge_skew(&round_trip(10_000, 10_010, 10_005), 500);
        assert_eq!(within, SkewVerdict::Within);
        let slow = judge_skew(&round_trip(10_000, 12_000, 11_000), 500);
        assert!(matches!(slow, SkewVerdict::Inconclusive(o) if (o.min_ms(), o.max_ms()) == (-1_000, 1_000)));
        let beyond = judge_skew(&round_trip(20_000, 20_010, 10_000), 500);
        assert!(matches!(beyond, SkewVerdict::Beyond(_)));
        for was in [false, true] {
            assert!(!within.skewed_after(was));
            assert_eq!(slow.skewed_after(was), was);
            assert!(beyond.skewed_after(was));
        }
    }

    /// Goal: the monotonic duration widens the interval when the wall clock stepped back
    /// during the call, so the step alone does not prove a skew.
    #[test]
    fn a_wall_step_during_the_call_is_not_proof_of_skew() {
        // 200 ms call; the wall clock stepped back 1 s in the middle of it; the registry read
        // its clock (equal to ours before the step) just before our step.
        let stepped = RoundTrip {
            send_wall_ms: 10_000,
            receive_wall_ms: 9_200,
            elapsed: Duration::from_millis(200),
            registry_time_ms: 10_090,
        };
        assert_eq!((stepped.offset().min_ms(), stepped.offset().max_ms()), (-1_090, 110));
        assert_eq!(check_skew(&stepped, 500), Ok(()));
    }
}
