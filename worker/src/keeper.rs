//! The lease keeper: renews every `ttl/3` (minus jitter) counted from the last committed
//! renewal's *send* time, retries with backoff across every registry node until a renewal
//! commits, extends the deadline only from a committed renewal's send time, and parks the
//! worker for good on FENCED or QUARANTINED.
//!
//! Slow networks: the deadline is extended from the send time, so the schedule is counted
//! from it too — counting from the reply would lose one round trip of slack per renewal (with
//! round trips of a quarter of the TTL, a renewal would answer just at the deadline). One
//! registry attempt may take TTL/3 (`WorkerConfig::registry_rpc_timeout`), above a round trip
//! of TTL/4 plus the commit; and a renewal whose reply can no longer extend the deadline
//! (older than `ttl - margin`) is abandoned and sent afresh instead of waiting on the other
//! nodes of its sweep.

use std::sync::Arc;
use std::time::Duration;

use fenceflake_proto::entropy;
use tokio::sync::watch;

use crate::clock::MonoTime;
use crate::clock_guard::{judge_skew, RoundTrip, SkewVerdict};
use crate::lease::LeaseGrant;
use crate::limits::{REGISTRY_BACKOFF_MAX_MS, REGISTRY_BACKOFF_MIN_MS, RENEW_JITTER_PERCENT};
use crate::metrics::inc;
use crate::park::ParkCause;
use crate::registry_client::{LostReason, RegistryCallError, RenewRequest};
use crate::shared::WorkerShared;

/// Exponential backoff with jitter between sweeps over the registry nodes.
#[derive(Debug)]
pub struct Backoff {
    next_ms: u64,
    max_ms: u64,
}

impl Backoff {
    /// Between registry sweeps: [`REGISTRY_BACKOFF_MIN_MS`] doubling to
    /// [`REGISTRY_BACKOFF_MAX_MS`].
    pub fn new() -> Backoff {
        Backoff::with_bounds(REGISTRY_BACKOFF_MIN_MS, REGISTRY_BACKOFF_MAX_MS)
    }

    /// Starting at `min_ms` (at least 1), doubling up to `max_ms` (at least `min_ms`).
    pub fn with_bounds(min_ms: u64, max_ms: u64) -> Backoff {
        let next_ms = min_ms.max(1);
        Backoff { next_ms, max_ms: max_ms.max(next_ms) }
    }

    /// The cap of the next pause (before jitter), for logs.
    pub fn next_cap(&self) -> Duration {
        Duration::from_millis(self.next_ms)
    }

    /// The next pause: uniformly in `[d/2, d]` for a `d` that doubles up to the cap, so
    /// workers retrying together spread out.
    pub fn next_pause(&mut self) -> Duration {
        let d = self.next_ms;
        self.next_ms = d.saturating_mul(2).min(self.max_ms);
        Duration::from_millis(entropy::random_in(d / 2..=d))
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new()
    }
}

/// `interval` minus up to [`RENEW_JITTER_PERCENT`], never more than `interval`.
fn jittered(interval: Duration) -> Duration {
    let cut = entropy::random_in(0..=RENEW_JITTER_PERCENT);
    interval * (100 - cut as u32) / 100
}

/// How long to wait before the next renewal: `interval` counted from `since_sent`, the
/// time since the last committed renewal (or the grant) was sent — so a slow round trip
/// does not push every later renewal back by itself.
fn next_renewal_in(interval: Duration, since_sent: Duration) -> Duration {
    interval.saturating_sub(since_sent)
}

/// How long a renewal's reply can still extend the deadline (from its send time): after
/// that it is abandoned and sent afresh.
fn renewal_useful_for(ttl: Duration, margin: Duration) -> Duration {
    ttl.saturating_sub(margin)
}

/// Keep the lease until `stop` fires or the lease is lost.
pub(crate) async fn run(shared: Arc<WorkerShared>, mut stop: watch::Receiver<bool>) {
    let interval = shared.config.renew_interval();
    // The grant was sent just before the keeper starts: close enough to count from here.
    let mut last_sent = shared.clock.mono();
    loop {
        let since_sent = shared.clock.mono().duration_since(last_sent);
        tokio::select! {
            _ = tokio::time::sleep(next_renewal_in(jittered(interval), since_sent)) => {}
            _ = stop.changed() => return,
        }
        tokio::select! {
            committed = renew_until_committed(&shared) => match committed {
                Some(sent_at) => last_sent = sent_at,
                None => return,
            },
            _ = stop.changed() => return,
        }
    }
}

/// Renew until one renewal commits (its send time) or the lease is lost for good (`None`).
async fn renew_until_committed(shared: &WorkerShared) -> Option<MonoTime> {
    let mut backoff = Backoff::new();
    let mut failures = 0u32;
    let useful_for = renewal_useful_for(shared.config.lease_ttl, shared.config.effective_margin());
    loop {
        let (request, sent_at) = {
            let state = shared.lock();
            (state.renew_request(shared.clock.wall_ms()), shared.clock.mono())
        };
        let (worker_id, token) = (request.worker_id, request.token);
        let reply = tokio::time::timeout(useful_for, shared.registry.renew(request)).await.unwrap_or_else(|_| {
            Err(RegistryCallError::Unavailable {
                last: format!("no node answered within {useful_for:?}, after which the reply could no longer extend the deadline; sending afresh"),
                indeterminate: true,
            })
        });
        match reply {
            Ok(grant) => {
                on_committed(shared, &request, sent_at, &grant, failures);
                return Some(sent_at);
            }
            Err(RegistryCallError::Lost { reason, message }) => {
                lost(shared, reason, &message);
                return None;
            }
            Err(error) => {
                // Unavailable is the expected case; anything else on a renewal is a registry
                // bug, and retrying is still safe: the deadline stops minting meanwhile.
                inc(&shared.metrics.renew_failures);
                failures += 1;
                let remaining = shared.lock().lease_remaining(shared.clock.mono());
                if failures == 1 || !error.is_retryable() {
                    tracing::warn!(%worker_id, %token, %error, indeterminate = error.is_indeterminate(), remaining_ms = remaining.as_millis() as u64, "renewal failed; retrying with backoff across registry nodes");
                } else {
                    tracing::debug!(%worker_id, %token, %error, indeterminate = error.is_indeterminate(), failures, "renewal failed again");
                }
                shared.publish();
                tokio::time::sleep(backoff.next_pause()).await;
            }
        }
    }
}

/// The registry will never renew this lease again: park for good (terminal, so the worker
/// process exits; see [`ParkCause::is_terminal`]). Superseded by a newer process of this
/// holder, the state dir gives the holder ID up first, so that this process's restart comes
/// back as a stranger instead of taking the lease back (two copies of a state dir under
/// restart-always supervisors would otherwise fence each other in turns forever).
fn lost(shared: &WorkerShared, reason: LostReason, message: &str) {
    let cause = match reason {
        LostReason::Quarantined => ParkCause::Quarantined,
        LostReason::Superseded => ParkCause::Superseded,
        LostReason::Fenced | LostReason::Expired => ParkCause::Fenced,
    };
    let mut state = shared.lock();
    let (worker_id, token) = (state.worker_id(), state.token());
    state.lose(cause);
    if cause == ParkCause::Superseded {
        let holder = &shared.holder;
        match state.disown_holder(&shared.config.hostname) {
            Ok(fresh) => tracing::error!(
                %worker_id, %token, %holder, new_holder = %fresh, registry = %message,
                "another process of this holder took the lease over: this state dir was copied (a cloned VM or \
                 volume, a restore), or this process outlived its own restart; stopping for good. The state dir now \
                 names a new holder, so a restart here is a stranger to the registry and never takes the lease back"
            ),
            Err(error) => tracing::error!(
                %worker_id, %token, %holder, %error, registry = %message,
                "another process of this holder took the lease over (a copied state dir?); stopping for good, but the \
                 state dir could not be given a new holder ID: remove its holder file before restarting here"
            ),
        }
    } else {
        tracing::error!(%worker_id, %token, reason = %cause, registry = %message, "lease lost for good; stopping (a restart gets a new lease)");
    }
    drop(state);
    shared.publish();
}

/// A renewal committed: check the skew over its round trip, extend the deadline from its
/// send time, and log what changed.
fn on_committed(shared: &WorkerShared, request: &RenewRequest, sent_at: MonoTime, grant: &LeaseGrant, failures: u32) {
    let (worker_id, token) = (request.worker_id, request.token);
    let now = shared.clock.mono();
    shared.metrics.observe_renew(now.duration_since(sent_at));
    let round_trip = RoundTrip {
        send_wall_ms: request.wall_ms_at_send,
        receive_wall_ms: shared.clock.wall_ms(),
        elapsed: now.duration_since(sent_at),
        registry_time_ms: grant.registry_time_ms,
    };
    let skew = judge_skew(&round_trip, shared.config.max_skew.as_millis() as u64);
    let (renewed, remaining) = {
        let mut state = shared.lock();
        let renewed = state.on_renewed(sent_at, now, grant, &skew);
        (renewed, state.lease_remaining(now))
    };
    if renewed.resumed {
        tracing::info!(%worker_id, %token, failures, "renewal committed after the deadline had passed; resuming with the same worker ID and token");
    } else if failures > 0 {
        tracing::info!(%worker_id, %token, failures, remaining_ms = remaining.as_millis() as u64, "renewal committed after retries");
    }
    match (renewed.skew_changed, &skew) {
        (Some(true), SkewVerdict::Beyond(e)) => {
            tracing::error!(%worker_id, %token, skew = %e, "wall clock provably too far from the registry's; parked (CLOCK_SKEW)")
        }
        (Some(false), _) => tracing::info!(
            %worker_id, %token, offset = %round_trip.offset(),
            "wall clock provably back within max skew of the registry's; resuming"
        ),
        (None, SkewVerdict::Inconclusive(offset)) if renewed.skewed => tracing::debug!(
            %worker_id, %token, %offset, "renewal too slow to tell whether the wall clock is back within max skew; staying parked (CLOCK_SKEW)"
        ),
        _ => {}
    }
    shared.publish();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: backoff grows to its cap and stays within [d/2, d]; jitter only shortens.
    #[test]
    fn backoff_and_jitter_bounds() {
        let mut b = Backoff::new();
        let mut last_cap = 0;
        for _ in 0..20 {
            let cap = b.next_ms;
            let d = b.next_pause().as_millis() as u64;
            assert!((cap / 2..=cap).contains(&d), "{d} outside [{}, {cap}]", cap / 2);
            assert!(cap >= last_cap && cap <= REGISTRY_BACKOFF_MAX_MS);
            last_cap = cap;
        }
        assert_eq!(last_cap, REGISTRY_BACKOFF_MAX_MS);
        let mut slow = Backoff::with_bounds(500, 5_000);
        let pauses: Vec<u64> = (0..8).map(|_| slow.next_pause().as_millis() as u64).collect();
        assert!((250..=500).contains(&pauses[0]) && pauses.iter().all(|p| *p <= 5_000), "{pauses:?}");
        assert_eq!(slow.next_cap(), Duration::from_millis(5_000));
        assert_eq!(Backoff::with_bounds(0, 0).next_cap(), Duration::from_millis(1), "never a zero pause");
        let interval = Duration::from_millis(1000);
        for _ in 0..100 {
            let j = jittered(interval);
            assert!(j <= interval && j >= interval * (100 - RENEW_JITTER_PERCENT as u32) / 100, "{j:?}");
        }
    }

    /// Goal: the next renewal is due `interval` after the last committed one was *sent*, so
    /// a round trip of a quarter of the TTL leaves the same slack before the deadline as a
    /// fast one: with a 3 s lease, a 500 ms margin and 750 ms round trips, each renewal
    /// commits 1.75 s after the previous send, well before that send's deadline at 2.5 s
    /// (counted from the reply it would be 2.5 s: just at the deadline).
    #[test]
    fn renewals_are_scheduled_from_the_send_time() {
        let (ttl, margin) = (Duration::from_secs(3), Duration::from_millis(500));
        let interval = ttl / 3;
        let round_trip = ttl / 4;
        let wait = next_renewal_in(interval, round_trip);
        assert_eq!(wait, Duration::from_millis(250));
        let next_commit = round_trip + wait + round_trip;
        assert!(next_commit < renewal_useful_for(ttl, margin), "{next_commit:?}");
        assert_eq!(next_renewal_in(interval, ttl), Duration::ZERO, "overdue: renew at once");
        assert_eq!(renewal_useful_for(ttl, margin), Duration::from_millis(2500));
    }
}
