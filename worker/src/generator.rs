//! Library mode: [`Generator`], the whole worker in-process — lease acquisition, the boot
//! wait, the lease keeper, the clock guard and the ceiling — behind `generate()` calls. The
//! gRPC service ([`crate::service`]) is a thin layer over it.
//!
//! The worker talks to the registry with mutual TLS under the certificate in
//! `config.security` (a `worker` certificate of the cluster CA; `fenceflake certs issue
//! --role worker`). The embedding process follows the files for rotations
//! ([`Security::follow_files`]).
//!
//! ```no_run
//! use std::sync::Arc;
//! use fenceflake_worker::{Generator, Security, SystemClock, WorkerConfig};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let tls = "/etc/fenceflake/tls";
//! let security = Security::from_flags(
//!     Some(format!("{tls}/ca.pem").into()),
//!     Some(format!("{tls}/worker-my-service-0.pem").into()),
//!     Some(format!("{tls}/worker-my-service-0.key").into()),
//!     false,
//! )?;
//! security.follow_files(std::future::pending());
//! let config = WorkerConfig::new(
//!     vec!["10.0.0.1:2379".into(), "10.0.0.2:2379".into()],
//!     "/var/lib/my-service/fenceflake".into(),
//!     "my-service-0".into(),
//!     security,
//! );
//! let generator = Generator::start(config, Arc::new(SystemClock)).await?;
//! generator.wait_serving(std::time::Duration::from_secs(5)).await?;
//! let id = generator.generate().await?;
//! let batch = generator.generate_batch(10_000).await?;
//! println!("{id} and {} more from worker {}", batch.count(), batch.worker_id);
//! generator.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fenceflake_proto::channel::BoxChannel;
use fenceflake_proto::tls::Security;
use tokio::sync::watch;

use crate::acquire::{acquire, Acquired};
use crate::boot::{plan_boot, BootError};
use crate::clock::{Clock, MonoTime};
use crate::config::{ConfigError, Incarnations, WorkerConfig};
use crate::deadline::{DeadlineError, LeaseDeadline};
use crate::fast_path::FastMint;
use crate::holder::{HolderId, Incarnation};
use crate::keeper::{self, Backoff};
use crate::layout::{Layout, LayoutError};
use crate::lease::{LeaseGrant, SequenceBitsDisagree, Token};
use crate::limits::{GENERATE_TIMEOUT_MS, MAX_BATCH_COUNT, MAX_BOOT_WAIT_MS, RELEASE_TIMEOUT_MS, STATE_POLL_MS};
use crate::metrics::{Gauges, Rpc, WorkerMetrics};
use crate::mint_state::{mint_step, GenerateError, MintSetup, MintState, Step};
use crate::minter::{IdRun, Minter, MinterError};
use crate::park::ParkCause;
use crate::registry_client::{GrpcRegistry, LeaseRegistry, RegistryAddrError, RegistryCallError};
use crate::shared::WorkerShared;
use crate::state_dir::{StateDir, StateDirError};
use crate::worker_id::WorkerId;

/// Why a generator could not start. All are fatal for a worker process: exit non-zero.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    RegistryAddr(#[from] RegistryAddrError),
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    #[error("worker ID {worker_id} is already held by another worker: {message}")]
    WorkerIdHeld { worker_id: WorkerId, message: String },
    #[error(
        "worker ID {worker_id} is quarantined ({message}); refusing to start with it: an operator clears it with \
         `fenceflake ctl unquarantine {worker_id}` after auditing, or start this worker with another --worker-id \
         (or auto)"
    )]
    WorkerIdQuarantined { worker_id: WorkerId, message: String },
    #[error("could not acquire a lease within {waited_ms} ms: {last}")]
    AcquireTimedOut { waited_ms: u64, last: RegistryCallError },
    #[error("no worker ID could be had within {waited_ms} ms (--id-wait {id_wait_ms}ms): {last}")]
    NoWorkerId { waited_ms: u64, id_wait_ms: u64, last: RegistryCallError },
    #[error("the registry refused the lease: {0}")]
    AcquireRefused(RegistryCallError),
    #[error("the registry's layout cannot be used: {0}")]
    Layout(#[from] LayoutError),
    /// Not a `source`: the message is the whole story, printed once.
    #[error("refusing to start: {0}")]
    SequenceBits(SequenceBitsDisagree),
    #[error(transparent)]
    Minter(#[from] MinterError),
    #[error(transparent)]
    Deadline(#[from] DeadlineError),
    #[error(transparent)]
    Boot(#[from] BootError),
}

/// IDs from one `generate_batch` call: one run per millisecond used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub runs: Vec<IdRun>,
    pub worker_id: WorkerId,
    pub token: Token,
    /// The lease deadline on this worker's wall clock when the batch was returned. Deadlines
    /// only move forward, so every ID in `runs` is stamped before it (the harness checks).
    pub deadline_wall_ms: u64,
}

impl Batch {
    /// How many IDs the runs hold together.
    pub fn count(&self) -> u64 {
        self.runs.iter().map(|r| u64::from(r.count)).sum()
    }
}

/// A snapshot of the worker for `Status` and operators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerStatus {
    pub worker_id: WorkerId,
    pub token: Token,
    pub holder: HolderId,
    /// `None` while serving.
    pub park: Option<ParkCause>,
    pub lease_remaining: Duration,
    /// The deadline on this worker's wall clock (now + remaining): the last instant any ID
    /// it returns may be stamped before. The harness checks minted timestamps against it.
    pub deadline_wall_ms: u64,
    pub ids_minted: u64,
    pub layout: Layout,
}

/// The worker in-process; cheap to clone (all clones are one worker).
#[derive(Clone)]
pub struct Generator {
    shared: Arc<WorkerShared>,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator").field("holder", &self.shared.holder).field("layout", &self.shared.layout).finish()
    }
}

impl Generator {
    /// Start a worker against the registry nodes in `config`: lock the state directory,
    /// acquire a lease, check the clock, plan the boot wait and start the lease keeper.
    /// Returns while still booting (`BOOTING`) if the wall clock has not yet passed the
    /// ceiling or `not_before`; see [`Generator::wait_serving`].
    ///
    /// How long it may take: an unavailable registry is retried for up to
    /// [`ACQUIRE_TIMEOUT_MS`](crate::limits::ACQUIRE_TIMEOUT_MS) (30 s). When the registry
    /// answers that no worker ID can be had now — every ID held or quarantined, or the
    /// explicit one held by the restore embargo after a backup restore — start waits and
    /// retries for up to `config.id_wait` (default 5 minutes; zero fails at the first such
    /// answer, as before). So start returns, `Ok` or `Err`, within max(30 s, `id_wait`) plus
    /// one round of registry calls (each bounded by the RPC timeout per node). An explicit worker ID held by another worker, or quarantined, fails
    /// at once. The future may also be dropped at any point (e.g. under
    /// `tokio::time::timeout`): a lease granted meanwhile simply expires.
    pub async fn start(config: WorkerConfig, clock: Arc<dyn Clock>) -> Result<Generator, StartError> {
        let registry = GrpcRegistry::new(
            &config.registry,
            config.registry_rpc_timeout(),
            config.registry_connect_timeout,
            &config.security,
        )?;
        Generator::start_with_registry(config, clock, Arc::new(registry)).await
    }

    /// [`Generator::start`] over channels the caller made, one per registry node named by
    /// its address (the simulator's network); `config.registry` is not used.
    pub async fn start_over(
        config: WorkerConfig,
        clock: Arc<dyn Clock>,
        channels: Vec<(String, BoxChannel)>,
    ) -> Result<Generator, StartError> {
        let registry = GrpcRegistry::over(channels, config.registry_rpc_timeout())?;
        Generator::start_with_registry(config, clock, Arc::new(registry)).await
    }

    /// [`Generator::start`] with any registry behind the [`LeaseRegistry`] trait.
    pub async fn start_with_registry(
        config: WorkerConfig,
        clock: Arc<dyn Clock>,
        registry: Arc<dyn LeaseRegistry>,
    ) -> Result<Generator, StartError> {
        config.validate()?;
        let wanted = config.worker_id.resolve(&config.hostname)?;
        let mut state_dir = StateDir::open(&config.state_dir, &config.hostname)?;
        log_state_dir(&state_dir);
        // Every start is a new incarnation, so two processes never share a token, even with
        // one holder ID (a restart, or a copy of this state dir elsewhere).
        let incarnation = incarnation(&config, state_dir.holder());
        let Acquired { grant, sent_at, round_trip } =
            acquire(&config, &*clock, &*registry, &mut state_dir, incarnation, wanted).await?;
        let worker_id = grant.worker_id;
        let token = grant.token;
        let layout = minting_layout(&grant, config.sequence_bits)?;
        let max_skew_ms = config.max_skew.as_millis() as u64;
        let plan = plan_boot(&state_dir.loaded, grant.not_before_ms, &round_trip, max_skew_ms, MAX_BOOT_WAIT_MS)?;
        if let Err(skew) = &plan.skew {
            tracing::error!(%worker_id, %token, %skew, "refusing to mint: wall clock provably too far from the registry's (CLOCK_SKEW); fix NTP");
        }
        tracing::info!(
            %worker_id, %token, holder = %state_dir.holder(), %incarnation, ttl_ms = grant.ttl.as_millis() as u64,
            not_before_ms = grant.not_before_ms, floor_ms = plan.floor_ms, boot_wait_ms = plan.wait_ms,
            epoch_ms = layout.epoch_ms(), worker_id_bits = layout.worker_id_bits(), sequence_bits = layout.sequence_bits(),
            "lease granted"
        );
        let holder = state_dir.holder().clone();
        let metrics = Arc::new(WorkerMetrics::default());
        metrics.set_boot_wait(plan.wait_ms);
        metrics.set_start_time(round_trip.send_wall_ms);
        let state = MintState::new(MintSetup {
            minter: Minter::new(layout, worker_id)?,
            token,
            state_dir,
            ceiling_policy: config.ceiling_policy()?,
            guard: config.guard_policy()?,
            deadline: LeaseDeadline::from_send(sent_at, grant.ttl, config.effective_margin())?,
            deadline_check: config.deadline_check,
            floor_ms: plan.floor_ms,
            mint_until_ms: grant.mint_until_ms,
            skewed: plan.skew.is_err(),
        });
        let (stop, _) = watch::channel(false);
        let shared = Arc::new(WorkerShared {
            clock,
            registry,
            fast: state.fast_path(),
            state: Mutex::new(state),
            metrics,
            config,
            holder,
            layout,
            serving: watch::channel(Some(ParkCause::Booting)).0,
            stop,
            tasks: Mutex::new(Vec::new()),
        });
        shared.publish();
        let keeper = tokio::spawn(keeper::run(shared.clone(), shared.stop.subscribe()));
        let monitor = tokio::spawn(monitor(shared.clone(), shared.stop.subscribe()));
        shared.tasks.lock().expect("task list lock is never held across a panic").extend([keeper, monitor]);
        Ok(Generator { shared })
    }

    /// One ID. Usually lock-free (`fast_path.rs`): one compare-and-swap after reading the
    /// wall and then the monotonic clock, with every check of the locked path on every ID;
    /// otherwise (a park, a new ceiling to flush, a clock behind, a used-up millisecond) as
    /// [`Generator::generate_batch`] does, under the lock and with its waits.
    pub async fn generate(&self) -> Result<u64, GenerateError> {
        let shared = &self.shared;
        if let FastMint::Minted(id) = shared.fast.try_mint(&*shared.clock) {
            // Reading the clocks costs as much as the rest of the call, so no third reading
            // times it: it neither waits nor locks, and took well under the histogram's first
            // bucket (0.5 ms) and the microsecond its sum counts in.
            shared.metrics.count_instant_generate();
            return Ok(id);
        }
        let started = shared.clock.mono();
        let mut id = 0;
        let minted = self.mint(NonZeroU32::MIN, started, |run| id = run.first).await;
        shared.metrics.observe_request(Rpc::Generate, shared.clock.mono().duration_since(started));
        minted.map(|()| id)
    }

    /// One ID, with the lease it was minted under.
    pub async fn generate_with_lease(&self) -> Result<Batch, GenerateError> {
        self.mint_batch(NonZeroU32::MIN, Rpc::Generate).await
    }

    /// `count` IDs (1..=[`MAX_BATCH_COUNT`]), as one run per millisecond used.
    pub async fn generate_batch(&self, count: u32) -> Result<Batch, GenerateError> {
        let want = NonZeroU32::new(count)
            .filter(|c| c.get() <= MAX_BATCH_COUNT)
            .ok_or(GenerateError::InvalidCount { count, max: MAX_BATCH_COUNT })?;
        self.mint_batch(want, Rpc::GenerateBatch).await
    }

    async fn mint_batch(&self, want: NonZeroU32, rpc: Rpc) -> Result<Batch, GenerateError> {
        let started = self.shared.clock.mono();
        let mut runs = Vec::new();
        let minted = self.mint(want, started, |run| runs.push(run)).await;
        self.shared.metrics.observe_request(rpc, self.shared.clock.mono().duration_since(started));
        minted?;
        let state = self.shared.lock();
        let deadline_wall_ms = self.shared.batch_deadline_wall_ms(&state);
        Ok(Batch { runs, worker_id: state.worker_id(), token: state.token(), deadline_wall_ms })
    }

    /// Step until `want` IDs are minted, handing each run to `take`, waiting (lock released)
    /// for the wall clock when the sequence is used up or the clock guard spins, for at most
    /// [`GENERATE_TIMEOUT_MS`] after `started`.
    async fn mint(
        &self,
        want: NonZeroU32,
        started: MonoTime,
        mut take: impl FnMut(IdRun),
    ) -> Result<(), GenerateError> {
        let shared = &self.shared;
        let mut left = want.get();
        let mut spin_since: Option<MonoTime> = None;
        while let Some(still) = NonZeroU32::new(left) {
            let step = mint_step(&shared.fast, &shared.state, &*shared.clock, still, &mut spin_since, &shared.metrics);
            match step {
                Err(e) => {
                    if matches!(e, GenerateError::Parked(_)) {
                        shared.publish();
                    }
                    return Err(e);
                }
                Ok(Step::Minted(run)) => {
                    left -= run.count;
                    take(run);
                    spin_since = None;
                }
                Ok(Step::WaitForWall { until_ms, spin }) => {
                    let waited = shared.clock.mono().duration_since(started);
                    if waited > Duration::from_millis(GENERATE_TIMEOUT_MS) {
                        return Err(GenerateError::TimedOut { waited_ms: waited.as_millis() as u64 });
                    }
                    let before = shared.clock.mono();
                    let gap_ms = until_ms.saturating_sub(shared.clock.wall_ms()).min(STATE_POLL_MS);
                    // tokio's timer wakes a 1 ms sleep about 2 ms later, which lost every other
                    // millisecond at full rate (BENCHMARKS.md): sleep all but the last ms, then
                    // yield until the wall clock ticks.
                    if gap_ms <= 1 {
                        tokio::task::yield_now().await;
                    } else {
                        tokio::time::sleep(Duration::from_millis(gap_ms - 1)).await;
                    }
                    if spin {
                        shared.metrics.add_spin_wait(shared.clock.mono().duration_since(before));
                    }
                }
            }
        }
        shared.metrics.ids_minted.fetch_add(u64::from(want.get()), std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    pub fn status(&self) -> WorkerStatus {
        let park = self.shared.publish();
        let state = self.shared.lock();
        let lease_remaining = state.lease_remaining(self.shared.clock.mono());
        let deadline_wall_ms = self.shared.deadline_wall_ms(&state);
        WorkerStatus {
            worker_id: state.worker_id(),
            token: state.token(),
            holder: self.shared.holder.clone(),
            park,
            lease_remaining,
            deadline_wall_ms,
            ids_minted: self.shared.metrics.ids_minted(),
            layout: self.shared.layout,
        }
    }

    /// Follow the park cause (`None`: serving) as it changes; for health reporting.
    pub fn subscribe(&self) -> watch::Receiver<Option<ParkCause>> {
        self.shared.serving.subscribe()
    }

    /// Resolves when this generator has lost the right to mint for good without being asked
    /// to stop (FENCED, SUPERSEDED, QUARANTINED, STATE_DIR_FAILED: [`ParkCause::is_terminal`]),
    /// with the cause. It never mints again; every call fails `Parked(cause)`. A process should
    /// shut it down (which releases what can be released) and start a new `Generator` — or
    /// exit and let its supervisor do so, as `fenceflake worker` does.
    pub async fn ended(&self) -> ParkCause {
        let mut rx = self.subscribe();
        // The sender lives in the shared state `self` holds, so the channel cannot close.
        let ended = rx.wait_for(|cause| cause.is_some_and(ParkCause::is_terminal)).await;
        ended.ok().and_then(|cause| *cause).unwrap_or(ParkCause::Stopping)
    }

    /// Wait until the worker serves (boot wait over, lease live, clock trusted), or fail with
    /// the cause it is parked for after `timeout`.
    pub async fn wait_serving(&self, timeout: Duration) -> Result<(), GenerateError> {
        let mut rx = self.subscribe();
        let serving = tokio::time::timeout(timeout, rx.wait_for(|cause| cause.is_none())).await;
        match serving {
            Ok(Ok(_)) => Ok(()),
            _ => Err(GenerateError::Parked(self.status().park.unwrap_or(ParkCause::Booting))),
        }
    }

    /// The metrics of this worker in the Prometheus text format, TLS state included
    /// (`fenceflake_worker_tls_insecure`, `fenceflake_worker_tls_cert_expiry_timestamp_seconds`).
    pub fn render_metrics(&self) -> String {
        let status = self.status();
        let mut out =
            self.shared.metrics.render(&Gauges { lease_remaining: status.lease_remaining, parked: status.park });
        self.security().render_metrics(&mut out, "fenceflake_worker");
        out
    }

    /// How this worker talks: its TLS identity (for the registry and its own Generator port),
    /// or plaintext.
    pub fn security(&self) -> &Security {
        &self.shared.config.security
    }

    pub(crate) fn metrics(&self) -> &WorkerMetrics {
        &self.shared.metrics
    }

    /// Stop at once, as SIGKILL would: no more IDs, the background tasks aborted, no release
    /// and no last-timestamp flush (the lease expires; the next start boots past the ceiling
    /// as persisted). For the simulator's crashes, and embedders that cannot wait.
    pub fn kill(&self) {
        let _ = self.shared.lock().stop();
        let tasks =
            std::mem::take(&mut *self.shared.tasks.lock().expect("task list lock is never held across a panic"));
        for task in tasks {
            task.abort();
        }
    }

    /// Clean shutdown: refuse further mints, stop renewing, persist the exact last timestamp
    /// and release the lease (bounded by [`RELEASE_TIMEOUT_MS`]; past that it just expires).
    /// Idempotent.
    pub async fn shutdown(&self) {
        let shared = &self.shared;
        let (last_ts, release_ts, worker_id, token, holds) = {
            let mut state = shared.lock();
            let last_ts = state.stop();
            (last_ts, state.release_ts_ms(), state.worker_id(), state.token(), state.holds_lease())
        };
        let _ = shared.stop.send(true);
        let tasks: Vec<_> =
            std::mem::take(&mut *shared.tasks.lock().expect("task list lock is never held across a panic"));
        if tasks.is_empty() {
            return;
        }
        for task in tasks {
            let _ = task.await;
        }
        shared.publish();
        if let Some(last_ts_ms) = last_ts {
            match shared.lock().persist_exact(last_ts_ms) {
                Ok(()) => tracing::info!(%worker_id, %token, last_ts_ms, "persisted the exact last timestamp"),
                Err(error) => {
                    tracing::error!(%worker_id, %token, %error, "cannot persist the last timestamp; the next boot waits past the ceiling instead")
                }
            }
        }
        if !holds {
            return;
        }
        let mut backoff = Backoff::new();
        let deadline = shared.clock.mono().saturating_add(Duration::from_millis(RELEASE_TIMEOUT_MS));
        loop {
            match shared.registry.release(worker_id, token, release_ts).await {
                Ok(()) => {
                    tracing::info!(%worker_id, %token, last_ts_ms = release_ts, "lease released");
                    return;
                }
                Err(e) if e.is_retryable() && shared.clock.mono() < deadline => {
                    tokio::time::sleep(backoff.next_pause()).await
                }
                Err(error) => {
                    tracing::warn!(%worker_id, %token, %error, "could not release the lease; it will expire");
                    return;
                }
            }
        }
    }
}

/// The layout this worker mints with: the cluster's, as the grant states it (a disagreeing
/// `--sequence-bits` is refused, and then nothing is minted: the lease just granted is left to
/// expire, since releasing it would need a last timestamp this process cannot vouch for).
fn minting_layout(grant: &LeaseGrant, sequence_bits_flag: Option<u8>) -> Result<Layout, StartError> {
    let sequence_bits = grant.mint_sequence_bits(sequence_bits_flag).map_err(|refused| {
        tracing::error!(
            worker_id = %grant.worker_id, token = %grant.token, flag = refused.flag, cluster = refused.cluster,
            "--sequence-bits disagrees with the cluster's layout; refusing to start, nothing minted"
        );
        StartError::SequenceBits(refused)
    })?;
    if grant.sequence_bits.is_none() {
        tracing::warn!(
            sequence_bits,
            "the registry states no sequence width (older than this worker): using --sequence-bits, else 12; \
             upgrade the registry so that it states the cluster's layout"
        );
    }
    Ok(Layout::new(grant.epoch_ms, grant.worker_id_bits, sequence_bits)?)
}

/// This start's incarnation: drawn afresh, or, the test binary's unsafe switch only, the
/// holder's fixed one.
#[cfg(any(test, feature = "unsafe-test-switches"))]
fn incarnation(config: &WorkerConfig, holder: &HolderId) -> Incarnation {
    match config.incarnations {
        Incarnations::PerStart => Incarnation::draw(),
        Incarnations::DisabledUnsafe => Incarnation::fixed_unsafe(holder),
    }
}

#[cfg(not(any(test, feature = "unsafe-test-switches")))]
fn incarnation(config: &WorkerConfig, _holder: &HolderId) -> Incarnation {
    let Incarnations::PerStart = config.incarnations;
    Incarnation::draw()
}

fn log_state_dir(state_dir: &StateDir) {
    let dir = state_dir.path().display();
    match &state_dir.loaded {
        crate::ceiling::Loaded::Found { ceiling_ms, exact } => {
            tracing::info!(state_dir = %dir, ceiling_ms, exact, holder_reused = state_dir.holder_reused(), "state dir read")
        }
        crate::ceiling::Loaded::Missing if state_dir.is_fresh() => tracing::info!(
            state_dir = %dir,
            "new, empty state dir (first boot, or an empty replacement disk): no ceiling yet; the registry's not_before bounds the first mint"
        ),
        crate::ceiling::Loaded::Missing => tracing::warn!(
            state_dir = %dir,
            "no ceiling in a state dir that was used before (nothing minted yet, or the ceiling file was lost): relying on the registry's not_before alone, with a new holder ID"
        ),
        crate::ceiling::Loaded::Corrupt { why } => tracing::warn!(
            state_dir = %dir, why = %why,
            "ceiling file is corrupt: relying on the registry's not_before alone, with a new holder ID; check the disk"
        ),
    }
}

/// Publish the park cause every [`STATE_POLL_MS`]: ends the boot wait, notices the deadline
/// passing and the clock recovering even when no call comes in.
async fn monitor(shared: Arc<WorkerShared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(STATE_POLL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => { shared.publish(); }
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
#[path = "generator_tests.rs"]
mod tests;
