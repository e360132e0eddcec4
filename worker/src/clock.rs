//! The worker's only window onto time: a wall clock that may jump and a monotonic one that
//! never goes back, behind a trait so tests and the simulation can drive time by hand.
//!
//! Architecture invariant: this is the only module of the worker that reads `SystemTime`
//! or `Instant`. Everything else receives time as an argument or through [`Clock`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const NANOS_PER_MS: u64 = 1_000_000;

/// Source of time for the worker.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch. May jump in either direction (NTP steps, VM
    /// migration); used only for ID timestamps and skew checks.
    fn wall_ms(&self) -> u64;
    /// Monotonic time; never goes back. Used for lease deadlines, which must not be moved by
    /// wall-clock steps.
    fn mono(&self) -> MonoTime;
}

/// Shared clocks (`Arc<ManualClock>` in tests, `Arc<dyn Clock>` in the service) are clocks.
impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn wall_ms(&self) -> u64 {
        (**self).wall_ms()
    }

    fn mono(&self) -> MonoTime {
        (**self).mono()
    }
}

/// A point on the monotonic clock: nanoseconds since an arbitrary, process-wide origin.
/// Only differences between two `MonoTime`s from the same clock mean anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MonoTime(u64);

impl MonoTime {
    /// The instant `nanos` after the clock's origin.
    pub const fn from_nanos(nanos: u64) -> MonoTime {
        MonoTime(nanos)
    }

    /// Nanoseconds since the clock's origin.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// `self + d`, pinned at the end of the representable range (584 years after the origin)
    /// rather than wrapping, so a huge TTL yields a far deadline, never a past one.
    pub fn saturating_add(self, d: Duration) -> MonoTime {
        MonoTime(self.0.saturating_add(duration_to_nanos(d)))
    }

    /// Time elapsed from `earlier` to `self`; zero if `earlier` is later, like
    /// `Instant::saturating_duration_since`.
    pub fn duration_since(self, earlier: MonoTime) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

fn duration_to_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The real clocks of this machine.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

/// Origin of [`SystemClock::mono`], shared by the whole process so `MonoTime`s from
/// different `SystemClock` values compare.
static MONO_ORIGIN: OnceLock<Instant> = OnceLock::new();

impl Clock for SystemClock {
    fn wall_ms(&self) -> u64 {
        // A clock set before 1970 is a broken clock; 0 makes every mint fail the epoch check
        // instead of inventing a timestamp.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }

    fn mono(&self) -> MonoTime {
        MonoTime(duration_to_nanos(MONO_ORIGIN.get_or_init(Instant::now).elapsed()))
    }
}

/// A clock moved only by hand, for tests and the simulation. Atomics rather than a mutex so
/// it can be shared (`Arc<ManualClock>`) across threads without lock ordering concerns.
#[derive(Debug)]
pub struct ManualClock {
    /// Wall time in nanoseconds since the Unix epoch: nanoseconds so that `advance` by
    /// sub-millisecond steps accumulates instead of being rounded away.
    wall_ns: AtomicU64,
    /// Monotonic time in nanoseconds since this clock's creation.
    mono_ns: AtomicU64,
}

impl ManualClock {
    /// A clock whose wall reads `wall_ms` and whose monotonic time is at its origin.
    pub fn new(wall_ms: u64) -> ManualClock {
        ManualClock { wall_ns: AtomicU64::new(wall_ms.saturating_mul(NANOS_PER_MS)), mono_ns: AtomicU64::new(0) }
    }

    /// Set the wall clock; the monotonic clock is untouched (an operator's `date -s`).
    pub fn set_wall_ms(&self, wall_ms: u64) {
        self.wall_ns.store(wall_ms.saturating_mul(NANOS_PER_MS), Ordering::SeqCst);
    }

    /// Let real time pass: both clocks move forward by `d`.
    pub fn advance(&self, d: Duration) {
        let nanos = duration_to_nanos(d);
        // Both closures always return `Some`, so the `Err` arm cannot happen.
        let _ = self.mono_ns.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |m| Some(m.saturating_add(nanos)));
        let _ = self.wall_ns.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| Some(w.saturating_add(nanos)));
    }

    /// Step the wall clock by `delta_ms` (negative: backwards), as NTP does; the monotonic
    /// clock does not move.
    pub fn step_wall_ms(&self, delta_ms: i64) {
        let delta_ns = delta_ms.saturating_mul(NANOS_PER_MS as i64);
        // The closure always returns `Some`, so the `Err` arm cannot happen.
        let _ =
            self.wall_ns.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| Some(w.saturating_add_signed(delta_ns)));
    }
}

impl Clock for ManualClock {
    fn wall_ms(&self) -> u64 {
        self.wall_ns.load(Ordering::SeqCst) / NANOS_PER_MS
    }

    fn mono(&self) -> MonoTime {
        MonoTime(self.mono_ns.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Goal: `MonoTime` arithmetic saturates instead of wrapping, so a deadline computed from
    /// a huge TTL is never in the past and a reversed difference is zero, not a panic.
    #[test]
    fn mono_time_arithmetic_saturates() {
        let t = MonoTime::from_nanos(1_000);
        assert_eq!(t.saturating_add(Duration::from_nanos(500)).as_nanos(), 1_500);
        assert_eq!(t.saturating_add(Duration::MAX), MonoTime::from_nanos(u64::MAX));
        assert_eq!(MonoTime::from_nanos(1_500).duration_since(t), Duration::from_nanos(500));
        assert_eq!(t.duration_since(MonoTime::from_nanos(2_000)), Duration::ZERO);
        assert!(t < MonoTime::from_nanos(1_001));
    }

    /// Goal: the manual clock models an NTP step (wall only), a `date -s` (wall only) and real
    /// time passing (both), and sub-millisecond advances add up.
    #[test]
    fn manual_clock_moves_as_told() {
        let clock = ManualClock::new(10_000);
        assert_eq!(clock.wall_ms(), 10_000);
        assert_eq!(clock.mono(), MonoTime::from_nanos(0));

        clock.advance(Duration::from_millis(5));
        assert_eq!(clock.wall_ms(), 10_005);
        assert_eq!(clock.mono().as_nanos(), 5_000_000);

        clock.step_wall_ms(-100);
        assert_eq!(clock.wall_ms(), 9_905);
        assert_eq!(clock.mono().as_nanos(), 5_000_000, "NTP step moved mono");

        clock.step_wall_ms(1_000);
        assert_eq!(clock.wall_ms(), 10_905);

        clock.set_wall_ms(42);
        assert_eq!(clock.wall_ms(), 42);
        assert_eq!(clock.mono().as_nanos(), 5_000_000, "set_wall moved mono");

        clock.advance(Duration::from_micros(600));
        clock.advance(Duration::from_micros(600));
        assert_eq!(clock.wall_ms(), 43, "sub-ms advances were lost");

        clock.step_wall_ms(-1_000);
        assert_eq!(clock.wall_ms(), 0, "wall went below the Unix epoch");
    }

    /// Goal: a shared manual clock is seen moving by every holder of the `Arc`.
    #[test]
    fn shared_clock_is_one_clock() {
        let clock = Arc::new(ManualClock::new(1));
        let as_dyn: Arc<dyn Clock> = clock.clone();
        clock.advance(Duration::from_millis(2));
        assert_eq!(as_dyn.wall_ms(), 3);
        assert_eq!(as_dyn.mono(), clock.mono());
    }

    /// Goal: the system clock's monotonic side never goes back and its wall side is after
    /// this code was written (a sanity check that it reads the real clock at all).
    #[test]
    fn system_clock_is_monotonic_and_plausible() {
        let clock = SystemClock;
        let a = clock.mono();
        let b = SystemClock.mono();
        assert!(b >= a);
        assert!(clock.wall_ms() > 1_700_000_000_000);
    }
}
