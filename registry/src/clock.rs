//! The registry's only source of time. The state machine never reads a clock: the leader
//! stamps its wall time into each batch, and lease expiry uses the monotonic clock only.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A point on this process's monotonic clock (time since an arbitrary origin). Never goes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct MonoTime(pub Duration);

impl MonoTime {
    /// Time elapsed from `earlier` to `self` (zero if `earlier` is later).
    pub fn since(self, earlier: MonoTime) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// The point `by` after this one (a deadline).
    pub fn plus(self, by: Duration) -> MonoTime {
        MonoTime(self.0.saturating_add(by))
    }
}

/// Time as the registry sees it; injected so clock faults are unit-testable.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Monotonic time: the basis of every expiry decision.
    fn mono(&self) -> MonoTime;
    /// Wall time in ms since the Unix epoch: only echoed to workers and written in audits.
    fn wall_ms(&self) -> u64;
}

/// The real clocks: `Instant` and `SystemTime`.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn mono(&self) -> MonoTime {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        MonoTime(ORIGIN.get_or_init(Instant::now).elapsed())
    }

    fn wall_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }
}

/// A hand-driven clock for tests: `advance` moves both clocks, `step_wall_ms` only the wall
/// clock (what an NTP step or a VM migration does).
#[derive(Debug, Default)]
pub struct ManualClock {
    mono_ns: AtomicU64,
    wall_offset_ms: AtomicI64,
}

impl ManualClock {
    pub fn new(wall_ms: u64) -> ManualClock {
        ManualClock { mono_ns: AtomicU64::new(0), wall_offset_ms: AtomicI64::new(wall_ms as i64) }
    }

    pub fn advance(&self, by: Duration) {
        self.mono_ns.fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
    }

    pub fn step_wall_ms(&self, by_ms: i64) {
        self.wall_offset_ms.fetch_add(by_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn mono(&self) -> MonoTime {
        MonoTime(Duration::from_nanos(self.mono_ns.load(Ordering::SeqCst)))
    }

    fn wall_ms(&self) -> u64 {
        let mono_ms = self.mono_ns.load(Ordering::SeqCst) / 1_000_000;
        (self.wall_offset_ms.load(Ordering::SeqCst) + mono_ms as i64).max(0) as u64
    }
}

/// How long ago openraft stamped `at` on its own clock (tokio's, which `Clock` cannot stand
/// in for: openraft times its votes with it, and `pre_vote.rs` mirrors openraft's checks).
pub fn raft_instant_age(at: openraft::TokioInstant) -> Duration {
    openraft::TokioInstant::now().saturating_duration_since(at)
}
