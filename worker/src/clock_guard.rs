//! The clock guard ladder (docs/design.md "Clock guard"): what to do when the wall clock reads
//! before the last minted millisecond, and the skew check against the registry's clock.
//!
//! Pure decisions only. The caller does the waiting, the counting and the logging, so the
//! ladder can be tested rung by rung and replayed by the simulation.

use std::fmt;

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

/// The worker's wall clock is too far from the registry leader's to trust (`CLOCK_SKEW`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SkewError {
    #[error(
        "local wall clock {local_wall_ms} ms is {skew_ms} ms from the registry's \
         {registry_time_ms} ms (max {max_skew_ms} ms)"
    )]
    TooFar { local_wall_ms: u64, registry_time_ms: u64, skew_ms: u64, max_skew_ms: u64 },
}

impl SkewError {
    /// Skew parks the worker with its own reason.
    pub fn park_reason(&self) -> ParkReason {
        ParkReason::ClockSkew
    }
}

/// Check at boot and on every grant that the local wall clock is within `max_skew_ms` of the
/// registry leader's (stamped into each response). Either direction counts: ahead burns
/// timestamp range and inflates `not_before` for the next holder; behind means waiting out
/// `not_before` and, with a lost disk, the risk of replaying an old window.
///
/// The registry time is stamped somewhere within the round trip, so `max_skew_ms` must
/// exceed the expected round-trip time.
pub fn check_skew(local_wall_ms: u64, registry_time_ms: u64, max_skew_ms: u64) -> Result<(), SkewError> {
    let skew_ms = local_wall_ms.abs_diff(registry_time_ms);
    if skew_ms > max_skew_ms {
        return Err(SkewError::TooFar { local_wall_ms, registry_time_ms, skew_ms, max_skew_ms });
    }
    Ok(())
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

    /// Goal: skew within the limit passes in both directions (edge included); beyond it the
    /// worker refuses with `CLOCK_SKEW` and the numbers to log.
    #[test]
    fn skew_check() {
        assert_eq!(check_skew(10_000, 10_500, 500), Ok(()));
        assert_eq!(check_skew(10_500, 10_000, 500), Ok(()));
        let err = check_skew(10_000, 10_501, 500).unwrap_err();
        assert_eq!(
            err,
            SkewError::TooFar { local_wall_ms: 10_000, registry_time_ms: 10_501, skew_ms: 501, max_skew_ms: 500 }
        );
        assert_eq!(err.park_reason(), ParkReason::ClockSkew);
        assert!(check_skew(20_000, 10_000, 500).is_err());
        assert_eq!(ParkReason::ClockSkew.to_string(), "clock_skew");
        assert_eq!(ParkReason::ClockRegressed.as_label(), "clock_regressed");
    }
}
