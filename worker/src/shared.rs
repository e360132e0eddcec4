//! [`WorkerShared`]: what one running worker's handles ([`crate::Generator`] and its clones)
//! and its background tasks (the lease keeper, the park monitor) share — the mint state
//! under its lock and its lock-free fast path, the registry, the clock, the config and the
//! published park cause.
//!
//! It sits below both [`crate::generator`] and [`crate::keeper`], so neither imports the
//! other's internals: generator → keeper → shared, generator → shared.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::config::WorkerConfig;
use crate::fast_path::FastPath;
use crate::holder::HolderId;
use crate::layout::Layout;
use crate::metrics::WorkerMetrics;
use crate::mint_state::MintState;
use crate::park::ParkCause;
use crate::registry_client::LeaseRegistry;

/// The state of one running worker, shared by its handles and its tasks.
pub(crate) struct WorkerShared {
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) registry: Arc<dyn LeaseRegistry>,
    pub(crate) state: Mutex<MintState>,
    /// The lock-free path of single IDs; `state` is its slow path and only writer.
    pub(crate) fast: Arc<FastPath>,
    pub(crate) metrics: Arc<WorkerMetrics>,
    pub(crate) config: WorkerConfig,
    pub(crate) holder: HolderId,
    pub(crate) layout: Layout,
    /// The park cause as last published; the health service follows it.
    pub(crate) serving: watch::Sender<Option<ParkCause>>,
    /// Tells the keeper and the monitor to stop.
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl WorkerShared {
    /// The lease deadline on the wall clock, as an exclusive bound on minted timestamps:
    /// `wall + remaining` with both truncated to ms can fall up to 2 ms before the real
    /// instant, and an ID stamped in that ms was still minted before the deadline. `0` once
    /// the deadline has passed (the wall-clock moment is then no longer known exactly).
    pub(crate) fn deadline_wall_ms(&self, state: &MintState) -> u64 {
        let remaining = state.lease_remaining(self.clock.mono());
        if remaining.is_zero() {
            return 0;
        }
        self.clock.wall_ms() + remaining.as_millis() as u64 + 2
    }

    /// The lease deadline on this worker's wall clock for a batch just minted: also when it
    /// passed since (the mint checked it was live; by the time the batch is answered it may
    /// not be, and "no deadline" would read as minted after it). Deadlines only move forward,
    /// so it is at or past the one that licensed the batch.
    pub(crate) fn batch_deadline_wall_ms(&self, state: &MintState) -> u64 {
        let (now, wall_ms) = (self.clock.mono(), self.clock.wall_ms());
        let deadline = state.lease_deadline();
        let ahead_ms = i128::from(deadline.as_nanos()) / 1_000_000 - i128::from(now.as_nanos()) / 1_000_000;
        u64::try_from((i128::from(wall_ms) + ahead_ms + 2).max(0)).unwrap_or(u64::MAX)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, MintState> {
        crate::mint_state::lock(&self.state)
    }

    /// Recompute the park cause and publish it if it changed.
    pub(crate) fn publish(&self) -> Option<ParkCause> {
        let cause = {
            let mut state = self.lock();
            if state.refresh(self.clock.wall_ms()) {
                tracing::info!(worker_id = %state.worker_id(), token = %state.token(), "boot wait over; minting");
            }
            state.park_cause(self.clock.mono())
        };
        self.serving.send_if_modified(|published| {
            if *published == cause {
                return false;
            }
            match cause {
                None => tracing::info!(was = ?published, "serving"),
                Some(c) if c.is_permanent() => {}
                Some(c) => tracing::warn!(reason = %c, "parked"),
            }
            *published = cause;
            true
        });
        cause
    }
}
