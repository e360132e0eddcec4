//! The harness's clocks. Every process of a run (controller, workload) stamps events with
//! CLOCK_MONOTONIC, which is machine-wide (the same in every network namespace and never
//! faked: libfaketime runs with DONT_FAKE_MONOTONIC=1), minus the run's origin.

use nix::time::{clock_gettime, ClockId};

/// CLOCK_MONOTONIC in nanoseconds.
pub fn mono_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|t| (t.tv_sec() as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec() as u64))
        .unwrap_or(0)
}

/// The harness's (unfaked) wall clock, ms since the Unix epoch.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Time since a run's origin, on the shared monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct RunClock {
    pub origin_ns: u64,
}

impl RunClock {
    pub fn start() -> RunClock {
        RunClock { origin_ns: mono_ns() }
    }

    pub fn now_ns(&self) -> u64 {
        mono_ns().saturating_sub(self.origin_ns)
    }
}
