//! The harness's clocks. Every process of a run (controller, workload) stamps events with
//! CLOCK_MONOTONIC, which is machine-wide (the same in every network namespace and never
//! faked: libfaketime runs with DONT_FAKE_MONOTONIC=1), minus the run's origin. The wall
//! clocks of the processes under test can be faked: each reads its offset from a file.

use std::path::Path;

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

/// The environment that starts a process under libfaketime `lib` with its wall clock offset
/// read from `offset_file` on every read (so the nemesis can step it while it runs), and its
/// monotonic clock real (tokio's timers and the deadline logic see real elapsed time).
pub fn faketime_env(lib: &Path, offset_file: &Path) -> Vec<(String, String)> {
    vec![
        ("LD_PRELOAD".to_string(), lib.display().to_string()),
        ("FAKETIME_TIMESTAMP_FILE".to_string(), offset_file.display().to_string()),
        ("FAKETIME_NO_CACHE".to_string(), "1".to_string()),
        ("DONT_FAKE_MONOTONIC".to_string(), "1".to_string()),
    ]
}

/// Set the wall clock offset of the processes reading `offset_file` to `offset_ms`.
pub fn write_offset(offset_file: &Path, offset_ms: i64) -> std::io::Result<()> {
    let seconds = offset_ms as f64 / 1000.0;
    std::fs::write(offset_file, format!("{seconds:+}\n"))
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
