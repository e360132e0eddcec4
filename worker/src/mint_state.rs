//! The minting path of one worker, under one lock: park checks, the clock-guard ladder, the
//! ceiling flush, and the deadline re-check after the wall clock was read. Never waits and
//! never reads time except through the [`Clock`] it is given, so tests drive it by hand;
//! [`crate::Generator`] does the waiting between steps.
//!
//! It is also the slow path behind the lock-free `FastPath` of single IDs, and the only
//! writer of what that path reads: every method that reads or changes the minting state or a
//! park cause runs with the fast path closed and the minter caught up with it
//! (`with_gate_closed`), publishes the deadline and the stamp limit as they grow, and reopens
//! the fast path only when nothing but the deadline stands in the way (`gate_may_open`). The
//! argument that this never hands an ID out twice or past a bound is in [`crate::fast_path`].

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};

use fenceflake_proto::switches::{self, Mechanism};

use crate::ceiling::CeilingPolicy;
use crate::clock::{Clock, MonoTime};
use crate::clock_guard::{ClockGuardPolicy, GuardAction, SkewVerdict};
use crate::config::DeadlineCheck;
use crate::deadline::LeaseDeadline;
use crate::fast_path::{FastMint, FastPath};
use crate::holder::HolderId;
use crate::layout::EncodeError;
use crate::lease::{LeaseGrant, Token};
use crate::metrics::{inc, WorkerMetrics};
use crate::minter::{IdRun, MintOutcome, Minter};
use crate::park::ParkCause;
use crate::registry_client::RenewRequest;
use crate::state_dir::{StateDir, StateDirError};
use crate::worker_id::WorkerId;

/// Why a mint call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GenerateError {
    /// Retry on another worker (or later): this one is parked.
    #[error("worker is parked: {0}")]
    Parked(ParkCause),
    #[error("count {count} outside 1..={max}")]
    InvalidCount { count: u32, max: u32 },
    /// The wall clock is outside what the layout can encode: a wrong epoch or a wild clock.
    #[error("wall clock cannot be encoded in an ID: {0}")]
    Unencodable(EncodeError),
    /// Waiting for the clock (spin or sequence exhaustion) took longer than one call may.
    #[error("gave up after {waited_ms} ms waiting for the wall clock")]
    TimedOut { waited_ms: u64 },
}

/// What one step produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// IDs that may be returned: below the persisted ceiling and stamped before the deadline.
    Minted(IdRun),
    /// Nothing minted: try again once the wall clock reads at least `until_ms`. `spin` says
    /// whether the wait is the clock guard waiting out a regression (it counts against
    /// `max_spin`) or sequence exhaustion.
    WaitForWall { until_ms: u64, spin: bool },
}

/// A keeper-visible change of the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Renewed {
    /// The deadline had passed and now it has not: minting resumes.
    pub resumed: bool,
    /// The skew check's verdict changed (`Some(true)`: now skewed).
    pub skew_changed: Option<bool>,
    /// Whether the clock counts as skewed after this renewal.
    pub skewed: bool,
}

/// Everything the minting path decides with, guarded by the generator's mutex.
#[derive(Debug)]
pub struct MintState {
    minter: Minter,
    token: Token,
    state_dir: StateDir,
    ceiling_policy: CeilingPolicy,
    guard: ClockGuardPolicy,
    deadline: LeaseDeadline,
    /// Enforced everywhere but in the harness's self-test.
    deadline_check: DeadlineCheck,
    /// First millisecond minting may use: past the old ceiling and the grant's not_before.
    floor_ms: u64,
    /// Exclusive bound on minted timestamps: the registry's high-water mark for this lease,
    /// which the next holder's not_before will be at least. Holds even when the wall clock
    /// jumps forward between renewals, which the monotonic deadline cannot see.
    mint_until_ms: u64,
    /// The wall clock has reached `mint_until_ms`; a renewal (reporting the new wall time)
    /// raises the bound again.
    past_mint_until: bool,
    /// This episode of `past_mint_until` with a live lease was logged.
    past_mint_until_logged: bool,
    /// Until the wall clock first reaches `floor_ms`.
    booting: bool,
    /// The last grant or renewal found the wall clock too far from the registry's.
    skewed: bool,
    /// The clock guard parked on a regression; cleared once the clock is past the last
    /// minted millisecond again.
    regressed: bool,
    /// Parked for good (FENCED, QUARANTINED, state dir failure).
    lost: Option<ParkCause>,
    stopping: bool,
    /// The lock-free path of single IDs, which this state closes, catches up with and reopens.
    gate: Arc<FastPath>,
}

/// What [`MintState::new`] needs beyond the grant.
#[derive(Debug)]
pub struct MintSetup {
    pub minter: Minter,
    pub token: Token,
    pub state_dir: StateDir,
    pub ceiling_policy: CeilingPolicy,
    pub guard: ClockGuardPolicy,
    pub deadline: LeaseDeadline,
    pub deadline_check: DeadlineCheck,
    pub floor_ms: u64,
    /// From the grant: see [`MintState`]'s field.
    pub mint_until_ms: u64,
    pub skewed: bool,
}

impl MintState {
    pub fn new(setup: MintSetup) -> MintState {
        let gate = FastPath::new(
            *setup.minter.layout(),
            setup.minter.worker_id(),
            setup.deadline.deadline(),
            stamp_limit_ms(setup.mint_until_ms, &setup.state_dir),
        );
        MintState {
            minter: setup.minter,
            token: setup.token,
            state_dir: setup.state_dir,
            ceiling_policy: setup.ceiling_policy,
            guard: setup.guard,
            deadline: setup.deadline,
            deadline_check: setup.deadline_check,
            floor_ms: setup.floor_ms,
            mint_until_ms: setup.mint_until_ms,
            past_mint_until: false,
            past_mint_until_logged: false,
            booting: true,
            skewed: setup.skewed,
            regressed: false,
            lost: None,
            stopping: false,
            gate: Arc::new(gate),
        }
    }

    /// The fast path this state is the slow path of, for the generator to mint through.
    pub(crate) fn fast_path(&self) -> Arc<FastPath> {
        self.gate.clone()
    }

    /// Run `f` with the fast path closed and the minter caught up with every ID it handed
    /// out, then store the minter's last ID back and reopen if nothing but the deadline stands
    /// in the way ([`crate::fast_path`], rule 2). A panic in `f` leaves it closed for good.
    fn with_gate_closed<R>(&mut self, f: impl FnOnce(&mut MintState) -> R) -> R {
        let handed_out = self.gate.close();
        // Before the first mint the fast path was never open, and the word holds no ID.
        if self.minter.last_id().is_some() {
            self.minter.catch_up(handed_out);
        }
        let result = f(self);
        self.gate.release(self.minter.last_id(), self.gate_may_open());
        result
    }

    /// Whether the fast path may mint: no park cause holds but possibly the deadline, which
    /// it checks on every ID, and the deadline check is on.
    fn gate_may_open(&self) -> bool {
        !self.deadline_check_off()
            && !switches::is_off(Mechanism::DeadlineCheck)
            && !switches::is_off(Mechanism::MintUntil)
            && !self.stopping
            && self.lost.is_none()
            && !self.booting
            && !self.skewed
            && !self.past_mint_until
            && !self.regressed
    }

    /// The last minted millisecond, the fast path's mints included; `None` before the first.
    fn last_minted_ts_ms(&self) -> Option<u64> {
        let handed_out = self.minter.layout().decode(self.gate.last_handed_out()).ts_ms;
        self.minter.last_ts_ms().map(|known| known.max(handed_out))
    }

    pub fn worker_id(&self) -> WorkerId {
        self.minter.worker_id()
    }

    pub fn token(&self) -> Token {
        self.token
    }

    /// Mechanism 2: may this worker mint at `now`?
    fn lease_live(&self, now: MonoTime) -> bool {
        self.deadline.is_live(now) || self.deadline_check_off() || switches::is_off(Mechanism::DeadlineCheck)
    }

    /// Mechanism 2 on the wall clock: may this worker stamp `ts_ms`?
    fn below_mint_until(&self, ts_ms: u64) -> bool {
        ts_ms < self.mint_until_ms || self.deadline_check_off() || switches::is_off(Mechanism::MintUntil)
    }

    /// Whether mechanism 2 is switched off (only unit tests and the unsafe test binary can).
    #[cfg(any(test, feature = "unsafe-test-switches"))]
    fn deadline_check_off(&self) -> bool {
        self.deadline_check == DeadlineCheck::DisabledUnsafe
    }

    #[cfg(not(any(test, feature = "unsafe-test-switches")))]
    fn deadline_check_off(&self) -> bool {
        let DeadlineCheck::Enforced = self.deadline_check;
        false
    }

    pub fn lease_remaining(&self, now: MonoTime) -> std::time::Duration {
        self.deadline.remaining(now)
    }

    /// The lease deadline on the monotonic clock (passed or not).
    pub fn lease_deadline(&self) -> MonoTime {
        self.deadline.deadline()
    }

    /// Clear the park causes that end by themselves with time: the boot wait once the wall
    /// clock reaches the floor, a regression once it is past the last minted millisecond.
    /// Returns true when the boot wait just ended.
    pub fn refresh(&mut self, wall_ms: u64) -> bool {
        self.with_gate_closed(|state| state.refresh_closed(wall_ms))
    }

    fn refresh_closed(&mut self, wall_ms: u64) -> bool {
        if self.regressed && self.minter.last_ts_ms().is_none_or(|last| wall_ms >= last) {
            self.regressed = false;
        }
        self.past_mint_until = !self.below_mint_until(wall_ms);
        self.past_mint_until_logged &= self.past_mint_until;
        let boot_ended = self.booting && wall_ms >= self.floor_ms;
        if boot_ended {
            self.booting = false;
        }
        boot_ended
    }

    /// Why the worker is not serving, if it is not: the most fundamental cause first.
    pub fn park_cause(&self, now: MonoTime) -> Option<ParkCause> {
        self.blocking_cause(now).or(self.regressed.then_some(ParkCause::ClockRegressed))
    }

    /// The causes that refuse a mint outright; a regression is re-examined by each attempt.
    fn blocking_cause(&self, now: MonoTime) -> Option<ParkCause> {
        if self.stopping {
            Some(ParkCause::Stopping)
        } else if let Some(cause) = self.lost.filter(|_| !self.deadline_check_off()) {
            Some(cause)
        } else if self.booting {
            Some(ParkCause::Booting)
        } else if self.skewed {
            Some(ParkCause::ClockSkew)
        } else if !self.lease_live(now) {
            Some(ParkCause::LeaseExpired)
        } else if self.past_mint_until {
            Some(ParkCause::ClockSkew)
        } else {
            None
        }
    }

    /// One attempt at up to `want` IDs from one millisecond. `spin_since` is the caller's
    /// memory of when the current regression wait started (`None`: not spinning).
    pub fn step(
        &mut self,
        clock: &dyn Clock,
        want: NonZeroU32,
        spin_since: &mut Option<MonoTime>,
        metrics: &WorkerMetrics,
    ) -> Result<Step, GenerateError> {
        self.with_gate_closed(|state| state.step_closed(clock, want, spin_since, metrics))
    }

    /// [`MintState::step`] with the fast path closed: the wall clock is read only now, after
    /// every fast mint so far, so the guard ladder judges it against the exact last ID.
    fn step_closed(
        &mut self,
        clock: &dyn Clock,
        want: NonZeroU32,
        spin_since: &mut Option<MonoTime>,
        metrics: &WorkerMetrics,
    ) -> Result<Step, GenerateError> {
        let now_ms = clock.wall_ms();
        self.refresh_closed(now_ms);
        if self.past_mint_until && !self.past_mint_until_logged && self.lease_live(clock.mono()) {
            // With the lease expired this is the normal end of a lease, not worth a page.
            self.past_mint_until_logged = true;
            tracing::error!(
                worker_id = %self.worker_id(),
                token = %self.token,
                wall_ms = now_ms,
                mint_until_ms = self.mint_until_ms,
                "wall clock reached the lease's mint_until (the registry's high-water mark) before a renewal raised it: it jumped forward or runs fast; parked (CLOCK_SKEW) until a renewal reports the new time"
            );
        }
        if let Some(cause) = self.blocking_cause(clock.mono()) {
            return Err(GenerateError::Parked(cause));
        }
        // Before the first mint the boot floor stands in for the last minted millisecond, so
        // a clock that steps back right after boot cannot mint below it.
        if self.minter.last_ts_ms().is_none() && now_ms < self.floor_ms {
            return self.on_regression(clock, self.floor_ms, self.floor_ms - now_ms, want, spin_since, metrics);
        }
        match self.minter.mint_batch(now_ms, want) {
            MintOutcome::Minted(run) => self.finish(clock, run),
            MintOutcome::Exhausted { ts_ms } => {
                inc(&metrics.sequence_exhausted);
                Ok(Step::WaitForWall { until_ms: ts_ms + 1, spin: false })
            }
            MintOutcome::Regressed { last_ts_ms, by_ms } => {
                self.on_regression(clock, last_ts_ms, by_ms, want, spin_since, metrics)
            }
            MintOutcome::OutOfRange(e) => Err(GenerateError::Unencodable(e)),
        }
    }

    /// The clock-guard ladder for a wall clock `by_ms` behind `last_ts_ms`.
    fn on_regression(
        &mut self,
        clock: &dyn Clock,
        last_ts_ms: u64,
        by_ms: u64,
        want: NonZeroU32,
        spin_since: &mut Option<MonoTime>,
        metrics: &WorkerMetrics,
    ) -> Result<Step, GenerateError> {
        if spin_since.is_none() {
            metrics.count_regression(by_ms);
        }
        match self.guard.decide(last_ts_ms, by_ms, self.minter.remaining_in_last_ms()) {
            // `decide` proceeds only without a regression; there is one, so look again.
            GuardAction::Proceed => Ok(Step::WaitForWall { until_ms: last_ts_ms, spin: true }),
            GuardAction::BorrowFrozen => {
                inc(&metrics.frozen_borrows);
                let run =
                    self.minter.mint_frozen(want).expect("decide borrows only while the frozen ms has sequence left");
                self.finish(clock, run)
            }
            GuardAction::SpinUntil(until_ms) => {
                let started = *spin_since.get_or_insert(clock.mono());
                // The wall clock may step again while we wait; the spin is bounded on the
                // monotonic clock.
                if clock.mono().duration_since(started).as_millis() > u128::from(self.guard.max_spin_ms()) {
                    return Err(self.park_regressed(last_ts_ms, by_ms));
                }
                Ok(Step::WaitForWall { until_ms, spin: true })
            }
            GuardAction::Park(_) => Err(self.park_regressed(last_ts_ms, by_ms)),
        }
    }

    fn park_regressed(&mut self, last_ts_ms: u64, by_ms: u64) -> GenerateError {
        if !self.regressed {
            tracing::error!(
                worker_id = %self.worker_id(),
                token = %self.token,
                last_ts_ms,
                regression_ms = by_ms,
                max_spin_ms = self.guard.max_spin_ms(),
                "wall clock went back further than the clock guard waits out; parked (CLOCK_REGRESSED) until it is past the last minted millisecond"
            );
        }
        self.regressed = true;
        GenerateError::Parked(ParkCause::ClockRegressed)
    }

    /// Make a freshly minted run returnable: persist the ceiling first if the run reaches it
    /// (mechanism 5), then re-check the deadline — after the wall clock was read and after
    /// the fsync — so a stall anywhere in between can never return an ID stamped at or after
    /// the deadline (mechanism 2). Refused runs are burned, never returned.
    fn finish(&mut self, clock: &dyn Clock, run: IdRun) -> Result<Step, GenerateError> {
        assert!(run.ts_ms >= self.floor_ms, "minted ms {} below the boot floor {}", run.ts_ms, self.floor_ms);
        if !self.below_mint_until(run.ts_ms) {
            // The next holder may start at mint_until_ms: burn the run.
            self.past_mint_until = true;
            return Err(GenerateError::Parked(ParkCause::ClockSkew));
        }
        if let Some(ceiling_ms) = self.ceiling_policy.needs_flush(self.state_dir.ceiling.bound_ms(), run.ts_ms) {
            if let Err(error) = self.state_dir.ceiling.persist(ceiling_ms) {
                tracing::error!(worker_id = %self.worker_id(), token = %self.token, %error, "cannot persist the ceiling; parked for good (a restart could replay IDs)");
                self.lost = Some(ParkCause::StateDirFailed);
                return Err(GenerateError::Parked(ParkCause::StateDirFailed));
            }
            // On disk now: the fast path may stamp below the new bound.
            self.gate.raise_stamp_limit(stamp_limit_ms(self.mint_until_ms, &self.state_dir));
        }
        if !self.lease_live(clock.mono()) {
            return Err(GenerateError::Parked(ParkCause::LeaseExpired));
        }
        self.regressed = false;
        Ok(Step::Minted(run))
    }

    /// The next renewal's content, sent at wall time `wall_ms`.
    pub fn renew_request(&self, wall_ms: u64) -> RenewRequest {
        RenewRequest {
            worker_id: self.worker_id(),
            token: self.token,
            wall_ms_at_send: wall_ms,
            max_minted_ts_ms: self.last_minted_ts_ms().unwrap_or(0),
        }
    }

    /// A renewal sent at `sent_at` committed; extend the deadline from its send time (never
    /// from anything else) and take the skew verdict of its round trip (an inconclusive one
    /// keeps the previous verdict).
    pub fn on_renewed(&mut self, sent_at: MonoTime, now: MonoTime, grant: &LeaseGrant, skew: &SkewVerdict) -> Renewed {
        self.with_gate_closed(|state| state.on_renewed_closed(sent_at, now, grant, skew))
    }

    fn on_renewed_closed(
        &mut self,
        sent_at: MonoTime,
        now: MonoTime,
        grant: &LeaseGrant,
        skew: &SkewVerdict,
    ) -> Renewed {
        assert_eq!(
            (grant.worker_id, grant.token),
            (self.worker_id(), self.token),
            "registry renewed a different lease than the one asked for"
        );
        let was_live = self.deadline.is_live(now);
        self.deadline.extend_from(sent_at);
        self.mint_until_ms = self.mint_until_ms.max(grant.mint_until_ms);
        // Committed, so both are true now; published before the gate reopens.
        self.gate.raise_deadline(self.deadline.deadline());
        self.gate.raise_stamp_limit(stamp_limit_ms(self.mint_until_ms, &self.state_dir));
        let skewed = skew.skewed_after(self.skewed);
        let skew_changed = (skewed != self.skewed).then_some(skewed);
        self.skewed = skewed;
        Renewed { resumed: !was_live && self.deadline.is_live(now), skew_changed, skewed }
    }

    /// The registry will never renew this lease again.
    pub fn lose(&mut self, cause: ParkCause) {
        assert!(cause.is_permanent(), "{cause} is not a permanent park");
        self.with_gate_closed(|state| {
            state.lost.get_or_insert(cause);
        });
    }

    /// Refuse every mint from now on, and return the exact last minted millisecond of this
    /// process, if it minted anything: read after the fast path closed for good.
    pub fn stop(&mut self) -> Option<u64> {
        self.with_gate_closed(|state| {
            state.stopping = true;
            state.minter.last_ts_ms()
        })
    }

    /// The largest timestamp any holder of this lease may have minted: this process's last
    /// one, or, if it minted nothing, just below its floor (a previous incarnation with the
    /// same holder may have minted up to its ceiling). Reported on release, which makes it
    /// the next holder's `not_before`.
    pub fn release_ts_ms(&self) -> u64 {
        self.last_minted_ts_ms().unwrap_or(self.floor_ms.saturating_sub(1))
    }

    /// Whether the registry still considers the lease ours (it was not lost).
    pub fn holds_lease(&self) -> bool {
        self.lost.is_none_or(|c| c == ParkCause::StateDirFailed)
    }

    /// A newer process of this holder took the lease over: persist a fresh holder ID in the
    /// state dir, so that a restart here is a stranger to the registry.
    pub fn disown_holder(&mut self, hostname: &str) -> Result<HolderId, StateDirError> {
        self.state_dir.replace_holder(hostname).cloned()
    }

    /// On clean shutdown, after [`MintState::stop`]: persist the exact last timestamp.
    pub fn persist_exact(&mut self, last_ts_ms: u64) -> Result<(), crate::ceiling::CeilingError> {
        self.state_dir.ceiling.persist_exact(last_ts_ms)
    }
}

/// Lock the mint state. A poisoned lock means a minting assertion fired while it was held:
/// the state may be broken, and continuing could duplicate IDs.
pub(crate) fn lock(state: &Mutex<MintState>) -> MutexGuard<'_, MintState> {
    state.lock().expect("mint state lock poisoned: a minting invariant broke")
}

/// One step towards `want` IDs: a single ID from the fast path when it can, else one step of
/// `state` (its slow path) under the lock, which also says why the fast path could not.
pub(crate) fn mint_step(
    fast: &FastPath,
    state: &Mutex<MintState>,
    clock: &dyn Clock,
    want: NonZeroU32,
    spin_since: &mut Option<MonoTime>,
    metrics: &WorkerMetrics,
) -> Result<Step, GenerateError> {
    if want == NonZeroU32::MIN {
        match fast.try_mint(clock) {
            FastMint::Minted(first) => return Ok(Step::Minted(fast.run_of_one(first))),
            FastMint::Exhausted { ts_ms } => {
                inc(&metrics.sequence_exhausted);
                return Ok(Step::WaitForWall { until_ms: ts_ms + 1, spin: false });
            }
            FastMint::Slow => {}
        }
    }
    lock(state).step(clock, want, spin_since, metrics)
}

/// The fast path's exclusive bound on stamps: below `mint_until` (where the next holder may
/// start) and below the ceiling on disk (mechanism 5).
fn stamp_limit_ms(mint_until_ms: u64, state_dir: &StateDir) -> u64 {
    mint_until_ms.min(state_dir.ceiling.bound_ms())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;
    use std::time::Duration;

    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

    use super::*;
    use crate::clock::ManualClock;
    use crate::layout::Layout;

    const EPOCH_MS: u64 = 1_600_000_000_000;
    const T0: u64 = 1_700_000_000_000;
    const TTL: Duration = Duration::from_secs(2);
    const MARGIN: Duration = Duration::from_millis(500);

    fn n(v: u32) -> NonZeroU32 {
        NonZeroU32::new(v).unwrap()
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        clock: Arc<ManualClock>,
        state: MintState,
        metrics: WorkerMetrics,
    }

    /// A booted state: the lease was granted (sent) at the clock's start, floor = T0.
    fn fixture(grace: bool) -> Fixture {
        fixture_with(grace, DeadlineCheck::Enforced)
    }

    fn fixture_with(grace: bool, deadline_check: DeadlineCheck) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let layout = Layout::new(EPOCH_MS, 10, 2).unwrap();
        let mut state = MintState::new(MintSetup {
            minter: Minter::new(layout, WorkerId::new(3)).unwrap(),
            token: Token::new(77),
            state_dir: StateDir::open(dir.path(), "test").unwrap(),
            ceiling_policy: CeilingPolicy::new(100).unwrap(),
            guard: ClockGuardPolicy::new(20, grace).unwrap(),
            deadline: LeaseDeadline::from_send(clock.mono(), TTL, MARGIN).unwrap(),
            deadline_check,
            floor_ms: T0,
            mint_until_ms: T0 + TTL.as_millis() as u64,
            skewed: false,
        });
        assert!(state.refresh(T0), "boot wait did not end at the floor");
        Fixture { _dir: dir, clock, state, metrics: WorkerMetrics::default() }
    }

    /// The fixture's lease as a renewal answers it.
    fn renewal(registry_time_ms: u64, mint_until_ms: u64) -> LeaseGrant {
        LeaseGrant {
            worker_id: WorkerId::new(3),
            token: Token::new(77),
            holder: "h".into(),
            ttl: TTL,
            not_before_ms: 0,
            registry_time_ms,
            epoch_ms: EPOCH_MS,
            worker_id_bits: 10,
            sequence_bits: Some(2),
            mint_until_ms,
        }
    }

    impl Fixture {
        fn step_with(&mut self, clock: &dyn Clock, want: u32) -> Result<Step, GenerateError> {
            self.state.step(clock, n(want), &mut None, &self.metrics)
        }

        fn step(&mut self, want: u32) -> Result<Step, GenerateError> {
            let clock = self.clock.clone();
            self.step_with(&*clock, want)
        }
    }

    /// A clock that stalls (lets `stall` of real time pass) right after the wall clock is
    /// read: the task was descheduled between reading the time and returning the IDs.
    struct StallingClock {
        inner: Arc<ManualClock>,
        stall: Duration,
    }

    impl Clock for StallingClock {
        fn wall_ms(&self) -> u64 {
            let wall = self.inner.wall_ms();
            self.inner.advance(self.stall);
            wall
        }

        fn mono(&self) -> MonoTime {
            self.inner.mono()
        }
    }

    /// The fixture's state as the generator shares it: the fast path, and the state under
    /// its lock behind it.
    struct SharedFixture {
        _dir: tempfile::TempDir,
        clock: Arc<ManualClock>,
        fast: Arc<FastPath>,
        state: Mutex<MintState>,
        metrics: WorkerMetrics,
    }

    fn shared_fixture() -> SharedFixture {
        let Fixture { _dir, clock, state, metrics } = fixture(false);
        SharedFixture { _dir, clock, fast: state.fast_path(), state: Mutex::new(state), metrics }
    }

    impl SharedFixture {
        /// One single-ID step as the generator takes it.
        fn step_one(&self, spin_since: &mut Option<MonoTime>) -> Result<Step, GenerateError> {
            mint_step(&self.fast, &self.state, &*self.clock, n(1), spin_since, &self.metrics)
        }

        /// A committed renewal sent now, granting `mint_until_ms`, with the skew `verdict`.
        fn renew(&self, mint_until_ms: u64, verdict: &SkewVerdict) {
            let now = self.clock.mono();
            lock(&self.state).on_renewed(now, now, &renewal(self.clock.wall_ms(), mint_until_ms), verdict);
        }
    }

    /// A renewal's verdict that the wall clock is 10 s behind the registry's.
    fn skewed_verdict(wall_ms: u64) -> SkewVerdict {
        let round_trip = crate::clock_guard::RoundTrip {
            send_wall_ms: wall_ms,
            receive_wall_ms: wall_ms,
            elapsed: Duration::ZERO,
            registry_time_ms: wall_ms + 10_000,
        };
        crate::clock_guard::judge_skew(&round_trip, 500)
    }

    /// Goal: the fast path serves exactly what the locked path would and hands everything
    /// else to it: not before the first (slow) mint, the next sequence number and a new
    /// millisecond without the lock, a used-up millisecond as a wait, and the slow path for
    /// a clock behind, a skew park, mint_until, the ceiling bound (which the slow path
    /// flushes, reopening the way) and after stop — whose last timestamp covers fast mints.
    #[test]
    fn the_fast_path_mints_only_within_every_bound() {
        let f = shared_fixture();
        let clock = &*f.clock;
        assert_eq!(f.fast.try_mint(clock), FastMint::Slow, "fast before the first mint");
        let Ok(Step::Minted(first)) = f.step_one(&mut None) else { panic!("no first mint") };
        assert_eq!(f.fast.try_mint(clock), FastMint::Minted(first.first + 1));
        f.fast.try_mint(clock);
        f.fast.try_mint(clock);
        assert_eq!(f.fast.try_mint(clock), FastMint::Exhausted { ts_ms: T0 }, "4 IDs per ms");
        f.clock.advance(Duration::from_millis(1));
        let FastMint::Minted(next) = f.fast.try_mint(clock) else { panic!("a new ms went slow") };
        assert_eq!(f.fast.run_of_one(next).ts_ms, T0 + 1);
        f.clock.step_wall_ms(-1);
        assert_eq!(f.fast.try_mint(clock), FastMint::Slow, "minted behind the last ms");
        f.clock.step_wall_ms(1);
        f.renew(0, &skewed_verdict(clock.wall_ms()));
        f.clock.advance(Duration::from_millis(1));
        assert_eq!(f.fast.try_mint(clock), FastMint::Slow, "minted while parked for skew");
        f.renew(0, &SkewVerdict::Within);
        assert!(matches!(f.fast.try_mint(clock), FastMint::Minted(_)), "a renewal did not reopen it");
        // The fixture's ceiling is 100 ms ahead of the first mint: at it, only a flush goes on.
        let bound = lock(&f.state).state_dir.ceiling.bound_ms();
        f.clock.advance(Duration::from_millis(bound - clock.wall_ms()));
        assert_eq!(f.fast.try_mint(clock), FastMint::Slow, "minted at the ceiling bound");
        assert!(matches!(f.step_one(&mut None), Ok(Step::Minted(_))));
        f.clock.advance(Duration::from_millis(1));
        assert!(matches!(f.fast.try_mint(clock), FastMint::Minted(_)), "the flush did not reopen it");
        // mint_until is T0 + 2 s. Renewed on the way and flushed just before it, so that only
        // mint_until stands in the way at T0 + 2 s.
        f.clock.advance(Duration::from_millis(T0 + 1_000 - clock.wall_ms()));
        f.renew(0, &SkewVerdict::Within);
        f.clock.advance(Duration::from_millis(999));
        assert!(matches!(f.step_one(&mut None), Ok(Step::Minted(_))));
        f.clock.advance(Duration::from_millis(1));
        assert_eq!(f.fast.try_mint(clock), FastMint::Slow, "minted at mint_until");
        assert_eq!(f.step_one(&mut None), Err(GenerateError::Parked(ParkCause::ClockSkew)));
        f.renew(clock.wall_ms() + 1_000, &SkewVerdict::Within);
        assert!(matches!(f.step_one(&mut None), Ok(Step::Minted(_))), "a raised mint_until did not resume");
        let FastMint::Minted(last) = f.fast.try_mint(clock) else { panic!("the fast path did not reopen") };
        assert_eq!(lock(&f.state).stop(), Some(f.fast.run_of_one(last).ts_ms), "stop missed a fast mint");
        f.clock.advance(Duration::from_millis(1));
        assert_eq!(f.fast.try_mint(clock), FastMint::Slow, "minted after stop");
    }

    /// Goal: mechanism 2 on the fast path — the deadline is checked after the wall clock was
    /// read, so a stall between the two refuses the ID instead of stamping it at the deadline.
    #[test]
    fn the_fast_path_checks_the_deadline_after_the_wall_read() {
        let f = shared_fixture();
        f.clock.advance(TTL - MARGIN - Duration::from_nanos(1));
        // The first mint, and the ceiling flush, on the slow path; then the fast one may.
        assert!(matches!(f.step_one(&mut None), Ok(Step::Minted(_))));
        assert!(matches!(f.fast.try_mint(&*f.clock), FastMint::Minted(_)), "1 ns early must mint");
        let stalling = StallingClock { inner: f.clock.clone(), stall: Duration::from_nanos(1) };
        assert_eq!(f.fast.try_mint(&stalling), FastMint::Slow, "stamped from a read at the deadline");
        assert_eq!(f.step_one(&mut None), Err(GenerateError::Parked(ParkCause::LeaseExpired)));
    }

    /// Stamps no ID may carry: any millisecond lying wholly in `[from, until)` of the manual
    /// clock's monotonic time (its wall clock reads `T0` + that until the wall is stepped).
    /// `until` is read before the event that ends the window, so every reading below it was
    /// taken before that event.
    #[derive(Debug)]
    struct Forbidden {
        from: MonoTime,
        until: MonoTime,
        why: &'static str,
    }

    impl Forbidden {
        fn covers(&self, ts_ms: u64) -> bool {
            let start = (ts_ms - T0) * 1_000_000;
            start >= self.from.as_nanos() && start + 1_000_000 <= self.until.as_nanos()
        }
    }

    /// Moves the manual clock of the concurrent test with the minters' work, not with real
    /// time — 40 µs per 8 fresh attempts, so a slow fsync or a descheduled thread skips no
    /// millisecond — and never past `hold`, where the keeper acts next.
    struct Pacer {
        attempts: AtomicU64,
        hold: AtomicU64,
        done: AtomicBool,
    }

    const PACE_STEP: Duration = Duration::from_micros(40);

    impl Pacer {
        fn new() -> Pacer {
            Pacer { attempts: AtomicU64::new(0), hold: AtomicU64::new(0), done: AtomicBool::new(false) }
        }

        fn advance_until_done(&self, clock: &ManualClock) {
            let mut next = 0;
            while !self.done.load(SeqCst) {
                let room = clock.mono().as_nanos() + PACE_STEP.as_nanos() as u64 <= self.hold.load(SeqCst);
                if room && self.attempts.load(SeqCst) >= next {
                    clock.advance(PACE_STEP);
                    next = self.attempts.load(SeqCst) + 8;
                }
                std::thread::yield_now();
            }
        }

        /// Let the clock run to exactly `at` (a multiple of the step) and hold it there.
        fn run_to(&self, clock: &ManualClock, at_ms: u64) -> MonoTime {
            self.hold.store(at_ms * 1_000_000, SeqCst);
            while clock.mono().as_nanos() < at_ms * 1_000_000 {
                std::thread::yield_now();
            }
            clock.mono()
        }
    }

    /// The keeper's part of the concurrent test, at fixed instants of the manual clock: the
    /// lease lapses and is renewed, a renewal parks for skew and the next lifts it, the wall
    /// clock reaches mint_until before a renewal raises it, the wall clock steps back, and
    /// the worker stops. Returns the forbidden stamps and what stop said was the last minted
    /// millisecond.
    fn keeper_script(f: &SharedFixture, pacer: &Pacer) -> (Vec<Forbidden>, Option<u64>) {
        let mut forbidden = Vec::new();
        // The fixture's deadline is TTL - MARGIN = 1.5 s; its mint_until T0 + 2 s (mono 2 s).
        let resumed = pacer.run_to(&f.clock, 1_510);
        f.renew(0, &SkewVerdict::Within);
        forbidden.push(Forbidden { from: MonoTime::from_nanos(1_500_000_000), until: resumed, why: "lease lapsed" });
        pacer.run_to(&f.clock, 1_600);
        f.renew(0, &skewed_verdict(f.clock.wall_ms()));
        // A reading equal to this one may have been taken before the park took effect; only
        // a later one surely after it.
        let parked = MonoTime::from_nanos(f.clock.mono().as_nanos() + 1);
        let unparked = pacer.run_to(&f.clock, 1_620);
        f.renew(0, &SkewVerdict::Within);
        forbidden.push(Forbidden { from: parked, until: unparked, why: "parked for skew" });
        let raised = pacer.run_to(&f.clock, 2_010);
        f.renew(f.clock.wall_ms() + 2_000, &SkewVerdict::Within);
        forbidden.push(Forbidden { from: MonoTime::from_nanos(2_000_000_000), until: raised, why: "at mint_until" });
        pacer.run_to(&f.clock, 2_100);
        f.clock.step_wall_ms(-3);
        pacer.run_to(&f.clock, 2_150);
        let last_ts_ms = lock(&f.state).stop();
        pacer.run_to(&f.clock, 2_170);
        (forbidden, last_ts_ms)
    }

    /// One minting thread of the concurrent test: single-ID steps as the generator takes
    /// them until done, each counted by the pacer; the IDs it got, in order.
    fn mint_until_done(f: &SharedFixture, pacer: &Pacer) -> Vec<u64> {
        let mut ids = Vec::new();
        let mut spin_since = None;
        while !pacer.done.load(SeqCst) {
            pacer.attempts.fetch_add(1, SeqCst);
            match f.step_one(&mut spin_since) {
                Ok(Step::Minted(run)) => {
                    ids.push(run.first);
                    spin_since = None;
                }
                Ok(Step::WaitForWall { .. }) | Err(_) => std::thread::yield_now(),
            }
        }
        ids
    }

    /// Goal: with 8 threads minting single IDs at once (mostly on the fast path) while
    /// another moves the clock and the keeper renews, lets the lease lapse, parks and unparks
    /// for skew, lets the wall clock reach mint_until, steps the wall clock back and stops the
    /// worker: no ID twice, each thread's IDs strictly increase, none stamped while the lease
    /// had lapsed, while parked or at/after mint_until, none at or past the ceiling on disk,
    /// none after stop — and IDs were minted before, between and after those windows.
    #[test]
    fn many_threads_mint_through_lapses_parks_and_stop_without_a_violation() {
        let f = shared_fixture();
        // The first mint 50 ms in puts the ceiling flushes (every 100 ms) at T0 + 150, 250,
        // …: between the keeper's windows, so that only the check under test guards each.
        f.clock.advance(Duration::from_millis(50));
        let pacer = Pacer::new();
        let (per_thread, (forbidden, last_ts_ms)) = std::thread::scope(|s| {
            let minters: Vec<_> = (0..8).map(|_| s.spawn(|| mint_until_done(&f, &pacer))).collect();
            s.spawn(|| pacer.advance_until_done(&f.clock));
            let script = keeper_script(&f, &pacer);
            pacer.done.store(true, SeqCst);
            (minters.into_iter().map(|m| m.join().unwrap()).collect::<Vec<_>>(), script)
        });
        let layout = *lock(&f.state).minter.layout();
        let mut all = std::collections::HashSet::new();
        for ids in &per_thread {
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "a thread's IDs went back");
            for &id in ids {
                assert!(all.insert(id), "ID {id} handed out twice");
                let ts_ms = layout.decode(id).ts_ms;
                if let Some(window) = forbidden.iter().find(|w| w.covers(ts_ms)) {
                    panic!("ID {id} stamped {ts_ms}, {}: {window:?}", window.why);
                }
            }
        }
        let stamps: Vec<u64> = all.iter().map(|id| layout.decode(*id).ts_ms).collect();
        let last_ts_ms = last_ts_ms.expect("stop saw no mint");
        assert!(stamps.iter().all(|ts| *ts <= last_ts_ms), "an ID stamped after stop's last ms {last_ts_ms}");
        let (_, on_disk) = crate::ceiling::CeilingStore::open(lock(&f.state).state_dir.path()).unwrap();
        assert!(stamps.iter().all(|ts| *ts < on_disk.bound_ms()), "an ID at or past the ceiling on disk");
        // Wall = T0 + mono until the step back at 2.1 s, T0 + mono - 3 ms after it.
        for (from, until) in [(1_000, 1_500), (1_520, 1_600), (1_630, 2_000), (2_020, 2_097), (2_110, 2_140)] {
            let minted = stamps.iter().filter(|ts| (T0 + from..T0 + until).contains(*ts)).count();
            assert!(minted > 0, "nothing minted in [{from}, {until}) ms: the test proves nothing there");
        }
    }

    /// Goal: the harness's self-test switch really turns mechanism 2 off (so a harness run
    /// with it proves the checkers catch what follows), and only it does.
    #[test]
    fn the_unsafe_switch_mints_past_the_deadline_and_nothing_else_does() {
        for (check, mints) in [(DeadlineCheck::Enforced, false), (DeadlineCheck::DisabledUnsafe, true)] {
            let mut f = fixture_with(false, check);
            f.clock.advance(TTL);
            assert_eq!(matches!(f.step(1), Ok(Step::Minted(_))), mints, "{check:?}");
        }
    }

    /// Goal: mechanism 2 — no ID is returned once the deadline has passed, checked before the
    /// mint and again after the wall clock was read, so a stall between check and return
    /// burns the IDs instead of returning IDs stamped at or after the deadline.
    #[test]
    fn no_id_is_returned_at_or_after_the_deadline_even_across_a_stall() {
        let mut f = fixture(false);
        assert!(matches!(f.step(1), Ok(Step::Minted(_))));
        // 1 ns before the deadline a plain mint still works.
        f.clock.advance(TTL - MARGIN - Duration::from_nanos(1));
        assert!(matches!(f.step(1), Ok(Step::Minted(_))));
        // A stall of 1 ns right after the wall read reaches the deadline: refused.
        let stalling = StallingClock { inner: f.clock.clone(), stall: Duration::from_nanos(1) };
        assert!(f.state.deadline.is_live(f.clock.mono()), "precondition: live before the stall");
        assert_eq!(f.step_with(&stalling, 2), Err(GenerateError::Parked(ParkCause::LeaseExpired)));
        assert_eq!(f.step(1), Err(GenerateError::Parked(ParkCause::LeaseExpired)));
        assert_eq!(f.state.park_cause(f.clock.mono()), Some(ParkCause::LeaseExpired));
    }

    /// Goal: a committed renewal extends the deadline from its *send* time and resumes a
    /// lease-expired worker with the same worker ID and token; an old (reordered) renewal
    /// moves nothing.
    #[test]
    fn renewal_resumes_from_its_send_time() {
        let mut f = fixture(false);
        let sent_at = f.clock.mono();
        f.clock.advance(TTL);
        assert_eq!(f.step(1), Err(GenerateError::Parked(ParkCause::LeaseExpired)));
        let grant = renewal(T0, T0 + 2 * TTL.as_millis() as u64);
        // Sent at the start: its deadline is already behind us, nothing resumes.
        let r = f.state.on_renewed(sent_at, f.clock.mono(), &grant, &SkewVerdict::Within);
        assert_eq!(r, Renewed { resumed: false, skew_changed: None, skewed: false });
        let late_send = f.clock.mono();
        f.clock.advance(Duration::from_millis(300));
        let r = f.state.on_renewed(late_send, f.clock.mono(), &grant, &SkewVerdict::Within);
        assert!(r.resumed);
        assert_eq!(f.state.lease_remaining(f.clock.mono()), TTL - MARGIN - Duration::from_millis(300));
        let Ok(Step::Minted(run)) = f.step(1) else { panic!("did not resume") };
        assert_eq!(f.state.minter.layout().decode(run.first).worker_id, WorkerId::new(3));
    }

    /// Goal: a wall clock that jumps forward between renewals never mints at or past the
    /// lease's mint_until (where the next holder may start), although the monotonic deadline
    /// is still far; the worker parks CLOCK_SKEW, and a renewal that raises the bound
    /// resumes it. Without the bound this is a duplicate with the next holder.
    #[test]
    fn forward_wall_step_stops_at_mint_until_until_a_renewal_raises_it() {
        let mut f = fixture(false);
        assert!(matches!(f.step(1), Ok(Step::Minted(_))));
        f.clock.advance(Duration::from_millis(300));
        f.clock.step_wall_ms(1_800); // T0 + 2100: past mint_until = T0 + 2000
        assert!(f.state.lease_remaining(f.clock.mono()) > Duration::ZERO, "the deadline alone would mint");
        assert_eq!(f.step(1), Err(GenerateError::Parked(ParkCause::ClockSkew)));
        assert_eq!(f.state.park_cause(f.clock.mono()), Some(ParkCause::ClockSkew));
        let grant = renewal(f.clock.wall_ms(), f.clock.wall_ms() + TTL.as_millis() as u64);
        f.state.on_renewed(f.clock.mono(), f.clock.mono(), &grant, &SkewVerdict::Within);
        let Ok(Step::Minted(run)) = f.step(1) else { panic!("a renewal must resume minting") };
        assert_eq!(run.ts_ms, T0 + 2_100);
        assert_eq!(f.state.park_cause(f.clock.mono()), None);
    }

    /// Goal: the ceiling is on disk before an ID at or past the old one is returned, and a
    /// state dir that cannot be written parks the worker for good.
    #[test]
    fn ceiling_is_persisted_before_ids_past_it_are_returned() {
        let mut f = fixture(false);
        assert_eq!(f.state.state_dir.ceiling.bound_ms(), 0);
        let Ok(Step::Minted(run)) = f.step(1) else { panic!("no mint") };
        let (_, on_disk) = crate::ceiling::CeilingStore::open(f.state.state_dir.path()).unwrap();
        assert!(run.ts_ms < on_disk.bound_ms(), "ts {} not under the persisted bound", run.ts_ms);
        f.clock.advance(Duration::from_millis(150));
        std::fs::remove_dir_all(f.state.state_dir.path()).unwrap();
        assert_eq!(f.step(1), Err(GenerateError::Parked(ParkCause::StateDirFailed)));
        assert_eq!(f.state.park_cause(f.clock.mono()), Some(ParkCause::StateDirFailed));
    }

    /// Goal: before the first mint, a wall clock below the boot floor (not_before / ceiling)
    /// is a regression: waited out if small, parked if large — never minted below the floor.
    #[test]
    fn the_boot_floor_is_never_undercut() {
        let mut f = fixture(false);
        f.clock.step_wall_ms(-5);
        assert_eq!(f.step(1), Ok(Step::WaitForWall { until_ms: T0, spin: true }));
        f.clock.step_wall_ms(-100);
        assert_eq!(f.step(1), Err(GenerateError::Parked(ParkCause::ClockRegressed)));
        f.clock.step_wall_ms(105);
        let Ok(Step::Minted(run)) = f.step(1) else { panic!("did not recover") };
        assert_eq!(run.ts_ms, T0);
    }

    /// Goal: a spin is bounded on the monotonic clock: a wall clock that stays behind for
    /// longer than max_spin parks the worker, which resumes once the clock is past again.
    #[test]
    fn spin_is_bounded_then_parks_then_recovers() {
        let mut f = fixture(false);
        f.step(1).unwrap();
        f.clock.step_wall_ms(-10);
        let mut spin = None;
        let want = n(1);
        assert!(matches!(f.state.step(&*f.clock, want, &mut spin, &f.metrics), Ok(Step::WaitForWall { .. })));
        // Real time passes but the wall clock is stepped back again by as much.
        f.clock.advance(Duration::from_millis(21));
        f.clock.step_wall_ms(-21);
        assert_eq!(
            f.state.step(&*f.clock, want, &mut spin, &f.metrics),
            Err(GenerateError::Parked(ParkCause::ClockRegressed))
        );
        assert_eq!(f.state.park_cause(f.clock.mono()), Some(ParkCause::ClockRegressed));
        f.clock.step_wall_ms(10);
        f.state.refresh(f.clock.wall_ms());
        assert_eq!(f.state.park_cause(f.clock.mono()), None);
        assert!(matches!(f.step(1), Ok(Step::Minted(_))));
        assert_eq!(f.metrics.clock_regressions.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    /// Goal: skew and boot are park causes, permanent losses outrank them, and the release
    /// timestamp covers a previous incarnation when nothing was minted.
    #[test]
    fn park_causes_and_release_timestamp() {
        let mut f = fixture(false);
        assert_eq!(f.state.release_ts_ms(), T0 - 1);
        f.state.skewed = true;
        assert_eq!(f.step(1), Err(GenerateError::Parked(ParkCause::ClockSkew)));
        f.state.lose(ParkCause::Fenced);
        assert_eq!(f.step(1), Err(GenerateError::Parked(ParkCause::Fenced)));
        assert!(!f.state.holds_lease());
        assert_eq!(f.state.stop(), None);
        assert_eq!(f.step(1), Err(GenerateError::Parked(ParkCause::Stopping)));
    }

    /// Goal (issue 14): a renewal too slow to tell (its round trip straddles the max skew)
    /// neither parks a trusted clock nor resumes a skewed one; only proof changes the verdict.
    #[test]
    fn an_inconclusive_renewal_keeps_the_skew_verdict() {
        use fenceflake_proto::clock_offset::OffsetBounds;

        let mut f = fixture(false);
        let grant = renewal(f.clock.wall_ms(), f.clock.wall_ms() + TTL.as_millis() as u64);
        let slow = SkewVerdict::Inconclusive(OffsetBounds::from_round_trip(T0, T0 + 2_000, T0 + 1_000));
        let now = f.clock.mono();
        let r = f.state.on_renewed(now, now, &grant, &slow);
        assert_eq!((r.skew_changed, r.skewed), (None, false));
        assert!(matches!(f.step(1), Ok(Step::Minted(_))), "a slow renewal parked a trusted clock");
        f.state.skewed = true;
        let r = f.state.on_renewed(now, now, &grant, &slow);
        assert_eq!((r.skew_changed, r.skewed), (None, true));
        assert_eq!(f.step(1), Err(GenerateError::Parked(ParkCause::ClockSkew)));
        let r = f.state.on_renewed(now, now, &grant, &SkewVerdict::Within);
        assert_eq!((r.skew_changed, r.skewed), (Some(false), false));
        assert!(matches!(f.step(1), Ok(Step::Minted(_))));
    }
}
