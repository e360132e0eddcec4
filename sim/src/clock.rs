//! Simulated time. The runtime's paused tokio clock is the world's true time; each simulated
//! process reads it through a [`ProcessClock`]: a monotonic clock that starts at zero when the
//! process starts and stands still while its machine is suspended ([`MonoStall`]), and a wall
//! clock with this process's offset (stepped by the nemesis, as an NTP step or a VM migration
//! would) and drift rate. The registry and the worker see only their `Clock` traits, exactly as
//! in production.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// The wall clock every simulated machine starts near (2026-01-01T00:00:00Z): past the ID
/// layout's epoch, and the same in every run, so histories repeat byte for byte.
pub const WORLD_WALL_START_MS: u64 = 1_767_225_600_000;

/// The world's true time, from the start of the run.
#[derive(Debug, Clone, Copy)]
pub struct World {
    start: Instant,
}

impl World {
    pub fn starting_now() -> World {
        World { start: Instant::now() }
    }

    /// True time since the run began.
    pub fn elapsed(&self) -> Duration {
        Instant::now().duration_since(self.start)
    }

    pub fn elapsed_ns(&self) -> u64 {
        u64::try_from(self.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The true wall clock (what a perfect NTP server would say).
    pub fn true_wall_ms(&self) -> u64 {
        WORLD_WALL_START_MS + millis(self.elapsed())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The wall-clock error of one machine: an offset (stepped at once) and a drift rate, kept
/// across the restarts of the processes on it.
#[derive(Debug, Default)]
pub struct WallError {
    offset_ms: AtomicI64,
    /// Parts per million the clock runs fast (negative: slow), since the run began.
    drift_ppm: AtomicI64,
    /// The largest offset and drift rate it ever had (a reset keeps them: they bound what
    /// was stamped with this clock before).
    max_offset_ms: AtomicI64,
    max_drift_ppm: AtomicI64,
}

impl WallError {
    /// Step the wall clock by `by_ms` (negative: back).
    pub fn step(&self, by_ms: i64) {
        let offset = self.offset_ms.fetch_add(by_ms, Ordering::SeqCst).saturating_add(by_ms);
        self.max_offset_ms.fetch_max(offset, Ordering::SeqCst);
    }

    pub fn set_drift_ppm(&self, ppm: i64) {
        self.drift_ppm.store(ppm, Ordering::SeqCst);
        self.max_drift_ppm.fetch_max(ppm, Ordering::SeqCst);
    }

    /// The most this clock was ever ahead of true time, up to `elapsed` into the run: the
    /// largest offset plus the largest drift over the whole run (drift counts from the run's
    /// start), a bound rather than the exact maximum.
    pub fn max_ahead_ms(&self, elapsed: Duration) -> i64 {
        let elapsed_ms = i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX);
        let drift_ms = elapsed_ms.saturating_mul(self.max_drift_ppm.load(Ordering::SeqCst)) / 1_000_000;
        self.max_offset_ms.load(Ordering::SeqCst).saturating_add(drift_ms)
    }

    /// Back to true time (the nemesis heals clocks at the end of a run).
    pub fn reset(&self) {
        self.offset_ms.store(0, Ordering::SeqCst);
        self.drift_ppm.store(0, Ordering::SeqCst);
    }

    /// This machine's wall clock when the true wall clock reads `true_wall_ms`, `elapsed_ms`
    /// into the run.
    fn wall_ms_at(&self, true_wall_ms: u64, elapsed_ms: u64) -> u64 {
        let elapsed_ms = i64::try_from(elapsed_ms).unwrap_or(i64::MAX);
        let drift_ms = elapsed_ms.saturating_mul(self.drift_ppm.load(Ordering::SeqCst)) / 1_000_000;
        let wall = i64::try_from(true_wall_ms).unwrap_or(i64::MAX);
        u64::try_from(wall.saturating_add(self.offset_ms.load(Ordering::SeqCst)).saturating_add(drift_ms)).unwrap_or(0)
    }
}

/// A machine's monotonic clock standing still while the machine is suspended: a hypervisor
/// pausing a VM stops its `CLOCK_MONOTONIC` (it does not count suspended time), so after the
/// resume every process on it believes less time has passed than has, and a lease deadline
/// kept on that clock lies in the past of true time. Kept across process restarts, like the
/// machine.
#[derive(Debug, Default)]
pub struct MonoStall {
    state: Mutex<Stalls>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Stalls {
    /// ns of true time the finished stalls took.
    finished_ns: u64,
    /// When the current stall began (true ns since the run began), if one is under way.
    since_ns: Option<u64>,
}

impl MonoStall {
    fn lock(&self) -> std::sync::MutexGuard<'_, Stalls> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The machine is suspended from `at_ns` on (nothing if it already is).
    pub fn begin(&self, at_ns: u64) {
        let mut stalls = self.lock();
        stalls.since_ns.get_or_insert(at_ns);
    }

    /// The machine runs again at `at_ns`.
    pub fn end(&self, at_ns: u64) {
        let mut stalls = self.lock();
        if let Some(since) = stalls.since_ns.take() {
            stalls.finished_ns += at_ns.saturating_sub(since);
        }
    }

    /// How much of true time up to `now_ns` the machine's monotonic clock did not count.
    fn stalled_ns(&self, now_ns: u64) -> u64 {
        let stalls = *self.lock();
        stalls.finished_ns + stalls.since_ns.map_or(0, |since| now_ns.saturating_sub(since))
    }
}

/// How far a process's clocks move on each reading while simulated time stands still: a
/// reading costs time on a real machine, and code that spins until a clock moves (the
/// worker's clock guard waiting out a small regression, or the next millisecond) must see it
/// move, or the simulation would never get past that spin.
const READ_COST_NS: u64 = 1_000;

/// One simulated process's clocks.
#[derive(Debug, Clone)]
pub struct ProcessClock {
    world: World,
    /// True time of the process's start, ns since the run began.
    started_ns: u64,
    mono_stall: Arc<MonoStall>,
    /// What the machine's monotonic clock had not counted when the process started.
    stalled_at_start_ns: u64,
    /// The last time this process read, ns since the run began: each reading is the world's
    /// time, or [`READ_COST_NS`] past the previous reading if the world has not moved on.
    read_ns: Arc<AtomicU64>,
    wall: Arc<WallError>,
}

impl ProcessClock {
    /// The clocks of a process that starts now on a machine with wall error `wall` and
    /// monotonic stalls `mono_stall`.
    pub fn start(world: World, wall: Arc<WallError>, mono_stall: Arc<MonoStall>) -> ProcessClock {
        let now = world.elapsed_ns();
        let stalled_at_start_ns = mono_stall.stalled_ns(now);
        ProcessClock {
            world,
            started_ns: now,
            mono_stall,
            stalled_at_start_ns,
            read_ns: Arc::new(AtomicU64::new(now)),
            wall,
        }
    }

    /// This process's reading of true time, ns since the run began.
    fn now_ns(&self) -> u64 {
        let world = self.world.elapsed_ns();
        let previous = self.read_ns.load(Ordering::SeqCst);
        let now = world.max(previous + READ_COST_NS);
        self.read_ns.store(now, Ordering::SeqCst);
        now
    }

    /// The monotonic clock: true time since the start, less what the machine's suspensions
    /// since then did not count. Never goes back: while stalled it gains what a reading adds
    /// to true time and loses the same to the stall.
    fn since_start(&self) -> Duration {
        let now = self.now_ns();
        let stalled = self.mono_stall.stalled_ns(now) - self.stalled_at_start_ns;
        Duration::from_nanos((now - self.started_ns).saturating_sub(stalled))
    }

    fn wall_ms(&self) -> u64 {
        let now = self.now_ns();
        self.wall.wall_ms_at(WORLD_WALL_START_MS + now / 1_000_000, now / 1_000_000)
    }
}

impl fenceflake_registry::clock::Clock for ProcessClock {
    fn mono(&self) -> fenceflake_registry::clock::MonoTime {
        fenceflake_registry::clock::MonoTime(self.since_start())
    }

    fn wall_ms(&self) -> u64 {
        ProcessClock::wall_ms(self)
    }
}

impl fenceflake_worker::clock::Clock for ProcessClock {
    fn wall_ms(&self) -> u64 {
        ProcessClock::wall_ms(self)
    }

    fn mono(&self) -> fenceflake_worker::clock::MonoTime {
        fenceflake_worker::clock::MonoTime::from_nanos(u64::try_from(self.since_start().as_nanos()).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fenceflake_registry::clock::Clock as _;

    /// Goal: a process's monotonic clock starts at its start and follows simulated time;
    /// its wall clock carries the machine's steps and drift, and a reset heals it.
    #[tokio::test(start_paused = true)]
    async fn process_clocks_follow_simulated_time_and_their_errors() {
        let world = World::starting_now();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let wall = Arc::new(WallError::default());
        let clock = ProcessClock::start(world, wall.clone(), Arc::new(MonoStall::default()));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(clock.mono().0, Duration::from_secs(2));
        assert_eq!(clock.mono().0, Duration::from_secs(2) + Duration::from_micros(1), "a reading costs 1 µs");
        assert_eq!(clock.wall_ms(), WORLD_WALL_START_MS + 7_000);
        wall.step(-3_000);
        assert_eq!(clock.wall_ms(), WORLD_WALL_START_MS + 4_000);
        wall.set_drift_ppm(1_000);
        assert_eq!(clock.wall_ms(), WORLD_WALL_START_MS + 4_007, "1000 ppm of 7 s is 7 ms");
        wall.reset();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(clock.wall_ms(), world.true_wall_ms(), "readings catch up with the world");
        let mut spun = clock.mono();
        for _ in 0..2_000 {
            spun = clock.mono();
        }
        assert!(spun.0 >= Duration::from_millis(2_002), "a spin sees its clock move: {spun:?}");
    }

    /// Goal: the most a clock was ever ahead survives steps back and a reset (it bounds what
    /// the machine stamped before: the restore's clock wait), and counts the largest drift.
    #[test]
    fn the_largest_lead_is_remembered_through_steps_back_and_resets() {
        let wall = WallError::default();
        assert_eq!(wall.max_ahead_ms(Duration::from_secs(10)), 0);
        wall.step(-2_000);
        assert_eq!(wall.max_ahead_ms(Duration::from_secs(10)), 0, "behind is not ahead");
        wall.step(4_500);
        wall.step(-4_000);
        wall.reset();
        assert_eq!(wall.max_ahead_ms(Duration::from_secs(10)), 2_500);
        wall.set_drift_ppm(2_000);
        wall.set_drift_ppm(-500);
        assert_eq!(wall.max_ahead_ms(Duration::from_secs(10)), 2_520, "2000 ppm of 10 s");
    }

    /// Goal: a suspended machine's monotonic clock stands still for the suspension, stays
    /// behind true time by it afterwards, never goes back, and a process started after the
    /// suspension counts from its own start.
    #[tokio::test(start_paused = true)]
    async fn a_suspension_stops_the_monotonic_clock_and_leaves_it_behind() {
        let world = World::starting_now();
        let wall = Arc::new(WallError::default());
        let stall = Arc::new(MonoStall::default());
        let clock = ProcessClock::start(world, wall.clone(), stall.clone());
        tokio::time::sleep(Duration::from_secs(1)).await;
        stall.begin(world.elapsed_ns());
        let frozen = clock.mono().0;
        assert_eq!(frozen, Duration::from_secs(1));
        tokio::time::sleep(Duration::from_secs(5)).await;
        let during = clock.mono().0;
        assert!(during >= frozen && during < frozen + Duration::from_millis(1), "stands still: {during:?}");
        assert_eq!(clock.wall_ms(), WORLD_WALL_START_MS + 6_000, "the wall clock does not stall");
        stall.end(world.elapsed_ns());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = clock.mono().0;
        assert!(after >= during, "never back");
        assert!(after.abs_diff(Duration::from_secs(3)) < Duration::from_millis(1), "5 s behind: {after:?}");
        let restarted = ProcessClock::start(world, wall, stall);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(restarted.mono().0.abs_diff(Duration::from_secs(1)) < Duration::from_millis(1));
    }
}
