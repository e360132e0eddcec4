//! Mechanism 3, registry-side expiry by elapsed time: a leader re-grants a worker ID only
//! after it has itself seen `ttl + cool_down` pass, on its monotonic clock, since the later of
//! (the last renewal it saw applied, the start of its own leadership). Volatile on purpose:
//! a new leader, or a restarted process, starts from "everything was just renewed".

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::clock::{Clock, MonoTime};
use crate::lease::WorkerId;

/// Identity of one leadership of this process: the full `(term, node_id)` of the vote, since
/// two leaders can share a term in openraft 0.9 and a restarted leader keeps its vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeadershipId {
    pub term: u64,
    pub node_id: u64,
}

#[derive(Debug, Clone, Copy)]
struct Leadership {
    id: LeadershipId,
    /// When this process first saw itself leader under `id` (seeing it late is conservative).
    began_at: MonoTime,
    /// Set once `ensure_linearizable` succeeded in this leadership: a quorum confirmed us and
    /// every renewal committed before our term is applied. No grant before that.
    confirmed: bool,
}

/// What a leader knows about renewals and its own leadership: pure, time is an argument, so
/// every expiry decision can be computed (and tested) at any instant.
#[derive(Debug, Default)]
pub struct Renewals {
    renewal_seen_at: HashMap<WorkerId, MonoTime>,
    leadership: Option<Leadership>,
}

/// Is a worker ID's lease expired, from the serving leader's point of view?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Still live: this much must still pass before it may be re-granted.
    LiveFor(Duration),
    Expired,
}

impl Renewals {
    /// A grant or renewal of `worker_id` was applied on this node at `now`.
    pub fn note_renewal(&mut self, worker_id: WorkerId, now: MonoTime) {
        self.renewal_seen_at.insert(worker_id, now);
    }

    /// This process is leader under `id` at `now`. Starts a new, unconfirmed leadership if
    /// `id` differs from the current one. Returns whether the leadership is confirmed.
    pub fn observe_leader(&mut self, id: LeadershipId, now: MonoTime) -> bool {
        match self.leadership {
            Some(l) if l.id == id => l.confirmed,
            _ => {
                self.leadership = Some(Leadership { id, began_at: now, confirmed: false });
                false
            }
        }
    }

    /// `ensure_linearizable` succeeded in leadership `id`.
    pub fn confirm(&mut self, id: LeadershipId) {
        if let Some(l) = self.leadership.as_mut().filter(|l| l.id == id) {
            l.confirmed = true;
        }
    }

    /// The expiry at `now` of `worker_id` whose last renewal asked for `ttl_ms`. `None` if no
    /// leadership is confirmed: only a confirmed leader may decide anything expired.
    pub fn expiry(&self, now: MonoTime, worker_id: WorkerId, ttl_ms: u64, cool_down_ms: u64) -> Option<Expiry> {
        let leadership = self.leadership.filter(|l| l.confirmed)?;
        let since =
            self.renewal_seen_at.get(&worker_id).map_or(leadership.began_at, |seen| (*seen).max(leadership.began_at));
        let needed = Duration::from_millis(ttl_ms.saturating_add(cool_down_ms));
        let elapsed = now.since(since);
        Some(if elapsed >= needed { Expiry::Expired } else { Expiry::LiveFor(needed - elapsed) })
    }
}

/// [`Renewals`] behind a lock with the node's clock: shared between the state machine (which
/// reports applied renewals) and the leader logic.
#[derive(Debug, Clone)]
pub struct ExpiryTracker {
    clock: Arc<dyn Clock>,
    inner: Arc<Mutex<Renewals>>,
}

impl ExpiryTracker {
    pub fn new(clock: Arc<dyn Clock>) -> ExpiryTracker {
        ExpiryTracker { clock, inner: Arc::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Renewals> {
        // A panic elsewhere cannot leave this map half-updated (each update is one insert).
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A grant or renewal of `worker_id` was applied on this node just now.
    pub fn note_renewal(&self, worker_id: WorkerId) {
        let now = self.clock.mono();
        self.lock().note_renewal(worker_id, now);
    }

    /// See [`Renewals::observe_leader`], at the clock's now.
    pub fn observe_leader(&self, id: LeadershipId) -> bool {
        let now = self.clock.mono();
        self.lock().observe_leader(id, now)
    }

    /// `ensure_linearizable` succeeded in leadership `id`.
    pub fn confirm(&self, id: LeadershipId) {
        self.lock().confirm(id);
    }

    /// Whether leadership `id` is the current one and confirmed.
    pub fn is_confirmed(&self, id: LeadershipId) -> bool {
        self.lock().leadership.is_some_and(|l| l.id == id && l.confirmed)
    }

    /// This process is no longer leader: forget the leadership (not the renewals).
    pub fn step_down(&self) {
        self.lock().leadership = None;
    }

    /// See [`Renewals::expiry`], at the clock's now.
    pub fn expiry(&self, worker_id: WorkerId, ttl_ms: u64, cool_down_ms: u64) -> Option<Expiry> {
        let now = self.clock.mono();
        self.lock().expiry(now, worker_id, ttl_ms, cool_down_ms)
    }

    /// Run a pure decision `decide(renewals, now)` under the lock, at the clock's now.
    pub fn decide<R>(&self, decide: impl FnOnce(&Renewals, MonoTime) -> R) -> R {
        let now = self.clock.mono();
        decide(&self.lock(), now)
    }

    /// Time since this node last saw `worker_id` renewed (for operators), if it ever did.
    pub fn since_renewal(&self, worker_id: WorkerId) -> Option<Duration> {
        let now = self.clock.mono();
        self.lock().renewal_seen_at.get(&worker_id).map(|seen| now.since(*seen))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    const ID: LeadershipId = LeadershipId { term: 3, node_id: 1 };

    fn tracker() -> (Arc<ManualClock>, ExpiryTracker) {
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        (clock.clone(), ExpiryTracker::new(clock))
    }

    fn confirmed_leader(t: &ExpiryTracker) {
        assert!(!t.observe_leader(ID));
        t.confirm(ID);
        assert!(t.observe_leader(ID));
    }

    #[test]
    fn nothing_expires_without_a_confirmed_leadership() {
        let (clock, t) = tracker();
        clock.advance(Duration::from_secs(3600));
        assert_eq!(t.expiry(WorkerId(1), 1000, 0), None);
        t.observe_leader(ID);
        assert_eq!(t.expiry(WorkerId(1), 1000, 0), None, "unconfirmed leader must not expire leases");
    }

    #[test]
    fn expires_after_ttl_plus_cool_down_since_the_last_renewal() {
        let (clock, t) = tracker();
        confirmed_leader(&t);
        t.note_renewal(WorkerId(7));
        clock.advance(Duration::from_millis(1499));
        assert_eq!(t.expiry(WorkerId(7), 1000, 500), Some(Expiry::LiveFor(Duration::from_millis(1))));
        clock.advance(Duration::from_millis(1));
        assert_eq!(t.expiry(WorkerId(7), 1000, 500), Some(Expiry::Expired));
    }

    #[test]
    fn a_new_leadership_treats_every_lease_as_just_renewed() {
        let (clock, t) = tracker();
        t.note_renewal(WorkerId(7));
        clock.advance(Duration::from_secs(60));
        // Leadership begins long after the renewal: the clock starts at the leadership.
        confirmed_leader(&t);
        assert_eq!(t.expiry(WorkerId(7), 1000, 0), Some(Expiry::LiveFor(Duration::from_secs(1))));
        // An ID this node never saw renewed is also live for a full ttl + cool_down.
        assert_eq!(t.expiry(WorkerId(8), 1000, 0), Some(Expiry::LiveFor(Duration::from_secs(1))));
        // Leadership changes (even within the same term, to another node id) restart it.
        clock.advance(Duration::from_secs(2));
        assert_eq!(t.expiry(WorkerId(7), 1000, 0), Some(Expiry::Expired));
        let other = LeadershipId { term: 3, node_id: 2 };
        t.observe_leader(other);
        t.confirm(other);
        assert_eq!(t.expiry(WorkerId(7), 1000, 0), Some(Expiry::LiveFor(Duration::from_secs(1))));
    }

    #[test]
    fn a_wall_clock_step_does_not_expire_a_lease_early() {
        let (clock, t) = tracker();
        confirmed_leader(&t);
        t.note_renewal(WorkerId(3));
        clock.step_wall_ms(24 * 3600 * 1000);
        clock.step_wall_ms(-48 * 3600 * 1000);
        assert_eq!(t.expiry(WorkerId(3), 10_000, 0), Some(Expiry::LiveFor(Duration::from_secs(10))));
    }

    #[test]
    fn stepping_down_forgets_the_leadership() {
        let (_clock, t) = tracker();
        confirmed_leader(&t);
        t.step_down();
        assert_eq!(t.expiry(WorkerId(1), 1, 0), None);
        assert!(!t.observe_leader(ID), "a leadership seen again after stepping down starts unconfirmed");
    }
}
