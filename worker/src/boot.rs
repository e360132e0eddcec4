//! The boot decision after a grant: from which millisecond the worker may mint, how long that
//! is from now, and whether its clock is trusted — pure, so it is tested with plain numbers.

use crate::ceiling::{boot_wait_until, Loaded};
use crate::clock_guard::{check_skew, RoundTrip, SkewError};

/// What a booting worker does with its first grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootPlan {
    /// First millisecond it may mint in: past its persisted ceiling and the grant's
    /// `not_before`.
    pub floor_ms: u64,
    /// How far that is ahead of the local wall clock now.
    pub wait_ms: u64,
    /// Err: the local clock is too far from the registry's to mint (park `CLOCK_SKEW`).
    pub skew: Result<(), SkewError>,
}

/// Why a worker refuses to boot.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BootError {
    #[error(
        "refusing to start: the wall clock ({local_wall_ms} ms) would have to wait {wait_ms} ms (more than \
         {max_wait_ms} ms) to pass {floor_ms} ms, the later of the local ceiling and the registry's not_before; \
         the clock is far behind the state this worker ID left — check NTP"
    )]
    WaitTooLong { local_wall_ms: u64, floor_ms: u64, wait_ms: u64, max_wait_ms: u64 },
}

/// Plan the boot: `local` is what the state directory held, `acquire` the round trip of the
/// Acquire that granted the lease. The wait is measured from its receive time; the skew
/// check uses the whole round trip ([`check_skew`]).
pub fn plan_boot(
    local: &Loaded,
    not_before_ms: u64,
    acquire: &RoundTrip,
    max_skew_ms: u64,
    max_wait_ms: u64,
) -> Result<BootPlan, BootError> {
    let local_wall_ms = acquire.receive_wall_ms;
    let floor_ms = boot_wait_until(local, not_before_ms);
    let wait_ms = floor_ms.saturating_sub(local_wall_ms);
    if wait_ms > max_wait_ms {
        return Err(BootError::WaitTooLong { local_wall_ms, floor_ms, wait_ms, max_wait_ms });
    }
    Ok(BootPlan { floor_ms, wait_ms, skew: check_skew(acquire, max_skew_ms) })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    /// An Acquire sent `rtt_ms` before NOW, answered with the registry reading `registry_ms`.
    fn acquired(rtt_ms: u64, registry_ms: u64) -> RoundTrip {
        RoundTrip {
            send_wall_ms: NOW - rtt_ms,
            receive_wall_ms: NOW,
            elapsed: Duration::from_millis(rtt_ms),
            registry_time_ms: registry_ms,
        }
    }

    /// Goal: the floor is past both the local ceiling and `not_before` (missing or corrupt
    /// state leaves `not_before` alone), the wait is measured from now, and a wait beyond
    /// the bound is refused instead of hanging.
    #[test]
    fn waits_past_both_floors_within_the_bound() {
        let found = |ceiling_ms| Loaded::Found { ceiling_ms, exact: false };
        let cases: &[(&str, Loaded, u64, u64, u64)] = &[
            ("fresh ID, no state", Loaded::Missing, 0, 1, 0),
            ("ceiling ahead", found(NOW + 700), NOW - 5, NOW + 700, 700),
            ("not_before ahead", found(NOW - 100), NOW + 300, NOW + 301, 301),
            ("corrupt: not_before only", Loaded::Corrupt { why: "x".into() }, NOW + 20, NOW + 21, 21),
            ("both behind", found(NOW - 10), NOW - 50, NOW - 10, 0),
        ];
        for (name, local, not_before_ms, floor_ms, wait_ms) in cases {
            let plan = plan_boot(local, *not_before_ms, &acquired(0, NOW), 500, 30_000).expect(name);
            assert_eq!((plan.floor_ms, plan.wait_ms), (*floor_ms, *wait_ms), "{name}");
            assert_eq!(plan.skew, Ok(()), "{name}");
        }
        let err = plan_boot(&found(NOW + 30_001), 0, &acquired(0, NOW), 500, 30_000).unwrap_err();
        assert_eq!(
            err,
            BootError::WaitTooLong { local_wall_ms: NOW, floor_ms: NOW + 30_001, wait_ms: 30_001, max_wait_ms: 30_000 }
        );
        assert!(plan_boot(&Loaded::Missing, NOW + 30_000, &acquired(0, NOW), 500, 30_000).is_err());
    }

    /// Goal: a local clock provably further than `max_skew` from the registry's, either way,
    /// is reported as skew (the worker parks `CLOCK_SKEW`), and within it is not; a slow
    /// Acquire (2 s, an election) on a correct clock is never skew, wherever in the round
    /// trip the registry read its clock.
    #[test]
    fn skew_beyond_the_bound_refuses_to_mint() {
        let cases = [
            (0, NOW + 501, true),
            (0, NOW - 501, true),
            (0, NOW + 500, false),
            (0, NOW - 499, false),
            (2_000, NOW - 2_000, false),
            (2_000, NOW - 1_000, false),
            (2_000, NOW, false),
            (2_000, NOW + 501, true),
            (2_000, NOW - 2_501, true),
            (2_000, NOW - 600_000, true),
        ];
        for (rtt_ms, registry_ms, skewed) in cases {
            let plan = plan_boot(&Loaded::Missing, 0, &acquired(rtt_ms, registry_ms), 500, 30_000).expect("plan");
            assert_eq!(
                plan.skew.is_err(),
                skewed,
                "rtt {rtt_ms} ms, registry at NOW{:+}",
                registry_ms as i64 - NOW as i64
            );
        }
    }
}
