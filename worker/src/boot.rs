//! The boot decision after a grant: from which millisecond the worker may mint, how long that
//! is from now, and whether its clock is trusted — pure, so it is tested with plain numbers.

use crate::ceiling::{boot_wait_until, Loaded};
use crate::clock_guard::{check_skew, SkewError};

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

/// Plan the boot: `local` is what the state directory held, `local_wall_ms` the wall clock
/// when the grant arrived (the midpoint of the Acquire's round trip, for the skew check).
pub fn plan_boot(
    local: &Loaded,
    not_before_ms: u64,
    registry_time_ms: u64,
    local_wall_ms: u64,
    max_skew_ms: u64,
    max_wait_ms: u64,
) -> Result<BootPlan, BootError> {
    let floor_ms = boot_wait_until(local, not_before_ms);
    let wait_ms = floor_ms.saturating_sub(local_wall_ms);
    if wait_ms > max_wait_ms {
        return Err(BootError::WaitTooLong { local_wall_ms, floor_ms, wait_ms, max_wait_ms });
    }
    Ok(BootPlan { floor_ms, wait_ms, skew: check_skew(local_wall_ms, registry_time_ms, max_skew_ms) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

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
            let plan = plan_boot(local, *not_before_ms, NOW, NOW, 500, 30_000).expect(name);
            assert_eq!((plan.floor_ms, plan.wait_ms), (*floor_ms, *wait_ms), "{name}");
            assert_eq!(plan.skew, Ok(()), "{name}");
        }
        let err = plan_boot(&found(NOW + 30_001), 0, NOW, NOW, 500, 30_000).unwrap_err();
        assert_eq!(
            err,
            BootError::WaitTooLong { local_wall_ms: NOW, floor_ms: NOW + 30_001, wait_ms: 30_001, max_wait_ms: 30_000 }
        );
        assert!(plan_boot(&Loaded::Missing, NOW + 30_000, NOW, NOW, 500, 30_000).is_err());
    }

    /// Goal: a local clock further than `max_skew` from the registry's, either way, is
    /// reported as skew (the worker parks `CLOCK_SKEW`), and within it is not.
    #[test]
    fn skew_beyond_the_bound_refuses_to_mint() {
        for (registry_time_ms, skewed) in [(NOW + 501, true), (NOW - 501, true), (NOW + 500, false), (NOW - 499, false)]
        {
            let plan = plan_boot(&Loaded::Missing, 0, registry_time_ms, NOW, 500, 30_000).expect("plan");
            assert_eq!(plan.skew.is_err(), skewed, "registry at {registry_time_ms}");
        }
    }
}
