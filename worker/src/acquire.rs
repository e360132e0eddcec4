//! The first lease of a starting worker: retry an unavailable registry (bounded by
//! [`ACQUIRE_TIMEOUT_MS`]); wait out a time when no worker ID can be had — every ID held or
//! quarantined, or the explicit one held by the registry's restore embargo — bounded by
//! `id_wait`; forget a remembered holder identity that stands in the way (it holds another
//! worker ID, or, with `auto`, its worker ID was quarantined); refuse what waiting cannot fix
//! (an explicit worker ID held by another worker, or quarantined).
//!
//! The decisions are pure functions of the registry's answer and of times passed in
//! ([`next_step`], [`holder_of`], [`Budget`]), tested below without a registry; the loop
//! around them does the calls, the sleeps and the logging.

use std::time::Duration;

use crate::clock::{Clock, MonoTime};
use crate::clock_guard::RoundTrip;
use crate::config::WorkerConfig;
use crate::generator::StartError;
use crate::holder::Incarnation;
use crate::keeper::Backoff;
use crate::lease::LeaseGrant;
use crate::limits::{ACQUIRE_TIMEOUT_MS, ID_WAIT_BACKOFF_MAX_MS, ID_WAIT_BACKOFF_MIN_MS};
use crate::registry_client::{IdView, LeaseRegistry, LostReason, RegistryCallError};
use crate::state_dir::StateDir;
use crate::worker_id::WorkerId;

/// The lease a start got, with what the boot needs of the Acquire that committed it.
#[derive(Debug)]
pub(crate) struct Acquired {
    pub grant: LeaseGrant,
    /// Monotonic send time: the deadline runs from it.
    pub sent_at: MonoTime,
    /// For the skew check at boot.
    pub round_trip: RoundTrip,
}

/// What to do after a failed Acquire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// The cluster could not serve, or a free ID changed hands while the registry picked it:
    /// try again soon (bounded by [`ACQUIRE_TIMEOUT_MS`]).
    Retry,
    /// No worker ID can be had now: wait with a slow backoff (bounded by `id_wait`).
    WaitForId,
    /// The explicit worker ID is held: ask the registry by whom (its restore embargo: wait;
    /// another worker: refuse).
    AskWhoHolds(WorkerId),
    /// The remembered holder identity is in the way: forget it and ask again at once.
    NewHolder(NewHolderWhy),
    /// Waiting cannot help: fail start.
    Refuse,
}

/// Why a remembered holder identity is given up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NewHolderWhy {
    /// It holds another worker ID than the one now asked for.
    HoldsOther,
    /// `auto`: the worker ID it holds is quarantined; any other will do.
    RememberedQuarantined,
}

/// The decision after a failed Acquire for `wanted` (`None`: `auto`), with `holder_reused`
/// saying whether the holder identity came from the state dir (its lease may still exist).
pub(crate) fn next_step(error: &RegistryCallError, wanted: Option<WorkerId>, holder_reused: bool) -> Next {
    match (error, wanted) {
        (e, _) if e.is_retryable() => Next::Retry,
        (RegistryCallError::Exhausted { .. }, _) => Next::WaitForId,
        (RegistryCallError::AlreadyHeld { .. }, Some(worker_id)) => Next::AskWhoHolds(worker_id),
        // Without a specific ID, ALREADY_EXISTS only means a free ID changed hands while the
        // registry picked it (the registry answers a holder's own lease, never this).
        (RegistryCallError::AlreadyHeld { .. }, None) => Next::Retry,
        (RegistryCallError::HolderHoldsOther { .. }, _) if holder_reused => Next::NewHolder(NewHolderWhy::HoldsOther),
        (RegistryCallError::Lost { reason: LostReason::Quarantined, .. }, None) if holder_reused => {
            Next::NewHolder(NewHolderWhy::RememberedQuarantined)
        }
        _ => Next::Refuse,
    }
}

/// Who holds a worker ID, as far as a starting worker cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Holder {
    /// The registry itself: the embargo after a restore. It lifts by itself.
    Embargo,
    /// Another worker: a duplicate claim, a misconfiguration.
    Other,
    /// Nobody any more (released, or expired meanwhile): ask again.
    Nobody,
}

pub(crate) fn holder_of(view: &IdView) -> Holder {
    if view.held_by_registry() {
        Holder::Embargo
    } else if view.holder.is_empty() || view.state == "FREE" || view.state == "EXPIRED" {
        Holder::Nobody
    } else {
        Holder::Other
    }
}

/// How long start may keep trying: [`ACQUIRE_TIMEOUT_MS`] of unavailability from the start,
/// extended to `id_wait` from the start once the registry has said that no worker ID can be
/// had now. So start returns within max(30 s, `id_wait`) plus one round of registry calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Budget {
    started: MonoTime,
    unavailable: Duration,
    id_wait: Duration,
    waiting_for_id: bool,
}

impl Budget {
    pub fn new(started: MonoTime, id_wait: Duration) -> Budget {
        Budget { started, unavailable: Duration::from_millis(ACQUIRE_TIMEOUT_MS), id_wait, waiting_for_id: false }
    }

    pub fn waited(&self, now: MonoTime) -> Duration {
        now.duration_since(self.started)
    }

    /// The last instant a retry may start at.
    fn deadline(&self) -> MonoTime {
        let span = if self.waiting_for_id { self.unavailable.max(self.id_wait) } else { self.unavailable };
        self.started.saturating_add(span)
    }

    /// Whether an unavailable registry may be tried again at `now`.
    pub fn may_retry(&self, now: MonoTime) -> bool {
        now <= self.deadline()
    }

    /// Whether start may keep waiting for a worker ID at `now` (never with a zero `id_wait`);
    /// from then on, unavailability is also tolerated up to `id_wait`.
    pub fn may_wait_for_id(&mut self, now: MonoTime) -> bool {
        self.waiting_for_id = true;
        self.waited(now) < self.id_wait
    }

    /// `pause`, cut so that the next try is no later than the deadline.
    pub fn pause(&self, now: MonoTime, pause: Duration) -> Duration {
        pause.min(self.deadline().duration_since(now))
    }
}

/// The refusal for an answer waiting cannot fix.
fn refusal(error: RegistryCallError, wanted: Option<WorkerId>) -> StartError {
    match (error, wanted) {
        (RegistryCallError::Lost { reason: LostReason::Quarantined, message }, Some(worker_id)) => {
            StartError::WorkerIdQuarantined { worker_id, message }
        }
        (RegistryCallError::AlreadyHeld { message }, Some(worker_id)) => {
            StartError::WorkerIdHeld { worker_id, message }
        }
        (other, _) => StartError::AcquireRefused(other),
    }
}

/// The acquire loop's state: what it may still spend, its two backoffs, and whether the
/// start of a wait for a worker ID was logged.
struct Attempts<'a> {
    config: &'a WorkerConfig,
    registry: &'a dyn LeaseRegistry,
    wanted: Option<WorkerId>,
    budget: Budget,
    backoff: Backoff,
    id_backoff: Backoff,
    /// When the first "no worker ID now" answer came (for the log when one is granted).
    waiting_since: Option<MonoTime>,
}

/// Acquire the first lease; see the module docs for what is retried, waited for and refused.
pub(crate) async fn acquire(
    config: &WorkerConfig,
    clock: &dyn Clock,
    registry: &dyn LeaseRegistry,
    state_dir: &mut StateDir,
    incarnation: Incarnation,
    wanted: Option<WorkerId>,
) -> Result<Acquired, StartError> {
    let mut attempts = Attempts {
        config,
        registry,
        wanted,
        budget: Budget::new(clock.mono(), config.id_wait),
        backoff: Backoff::new(),
        id_backoff: Backoff::with_bounds(ID_WAIT_BACKOFF_MIN_MS, ID_WAIT_BACKOFF_MAX_MS),
        waiting_since: None,
    };
    loop {
        let (send_wall_ms, sent_at) = (clock.wall_ms(), clock.mono());
        let answer = registry.acquire(state_dir.holder(), incarnation, wanted, config.lease_ttl).await;
        let (receive_wall_ms, now) = (clock.wall_ms(), clock.mono());
        let error = match answer {
            Ok(grant) => {
                attempts.granted(&grant, now);
                let elapsed = now.duration_since(sent_at);
                let registry_time_ms = grant.registry_time_ms;
                let round_trip = RoundTrip { send_wall_ms, receive_wall_ms, elapsed, registry_time_ms };
                return Ok(Acquired { grant, sent_at, round_trip });
            }
            Err(error) => error,
        };
        let pause = match next_step(&error, wanted, state_dir.holder_reused()) {
            Next::Retry => attempts.retry(error, now)?,
            Next::WaitForId => attempts.wait_for_id(error, None, now).await?,
            Next::AskWhoHolds(worker_id) => attempts.ask_who_holds(worker_id, error, now).await?,
            Next::NewHolder(why) => {
                log_new_holder(why, &error);
                state_dir.replace_holder(&config.hostname)?;
                continue;
            }
            Next::Refuse => return Err(refusal(error, wanted)),
        };
        tokio::time::sleep(pause).await;
    }
}

fn log_new_holder(why: NewHolderWhy, error: &RegistryCallError) {
    match why {
        // The previous incarnation held another worker ID than the one now asked for: become
        // a stranger; that lease expires on its own.
        NewHolderWhy::HoldsOther => {
            tracing::warn!(registry = %error, "the state dir's holder holds another worker ID; continuing with a new holder ID")
        }
        NewHolderWhy::RememberedQuarantined => tracing::warn!(
            registry = %error,
            "the worker ID this state dir's holder held is quarantined; with --worker-id auto, taking another worker ID under a new holder ID (the quarantined ID stays for an operator to audit and clear)"
        ),
    }
}

impl Attempts<'_> {
    fn granted(&self, grant: &LeaseGrant, now: MonoTime) {
        assert!(
            self.wanted.is_none_or(|w| w == grant.worker_id),
            "registry granted worker ID {} when {:?} was asked for",
            grant.worker_id,
            self.wanted
        );
        if let Some(since) = self.waiting_since {
            let waited_ms = now.duration_since(since).as_millis() as u64;
            tracing::info!(worker_id = %grant.worker_id, waited_ms, "worker ID granted after waiting for one");
        }
    }

    /// An unavailable registry: the pause before the next try, or the timeout.
    fn retry(&mut self, last: RegistryCallError, now: MonoTime) -> Result<Duration, StartError> {
        if !self.budget.may_retry(now) {
            let waited_ms = self.budget.waited(now).as_millis() as u64;
            return Err(StartError::AcquireTimedOut { waited_ms, last });
        }
        if last.is_retryable() {
            tracing::warn!(error = %last, indeterminate = last.is_indeterminate(), "registry unavailable; retrying the acquire");
        } else {
            tracing::debug!(registry = %last, "acquire lost a race for a free worker ID; retrying");
        }
        Ok(self.budget.pause(now, self.backoff.next_pause()))
    }

    /// No worker ID now (`view`: the ID asked for, when known): the pause before the next
    /// try, or the end of `id_wait`. Logged at WARN once, then at DEBUG.
    async fn wait_for_id(
        &mut self,
        last: RegistryCallError,
        view: Option<IdView>,
        now: MonoTime,
    ) -> Result<Duration, StartError> {
        if !self.budget.may_wait_for_id(now) {
            let waited_ms = self.budget.waited(now).as_millis() as u64;
            let id_wait_ms = self.config.id_wait.as_millis() as u64;
            return Err(StartError::NoWorkerId { waited_ms, id_wait_ms, last });
        }
        let retry_max_ms = ID_WAIT_BACKOFF_MAX_MS;
        if self.waiting_since.is_none() {
            self.waiting_since = Some(now);
            // For `auto`, one worker ID stands for all: a restore embargoes every one at once.
            let view = match view {
                Some(view) => Some(view),
                None => self.registry.inspect(self.wanted.unwrap_or(WorkerId::new(0))).await.ok(),
            };
            log_wait_start(&last, view.as_ref(), self.config.id_wait, retry_max_ms);
        } else {
            tracing::debug!(error = %last, "still no worker ID; retrying");
        }
        Ok(self.budget.pause(now, self.id_backoff.next_pause()))
    }

    /// The explicit worker ID is held: by the registry's embargo, wait; by another worker,
    /// refuse (a misconfiguration); by nobody any more, ask again.
    async fn ask_who_holds(
        &mut self,
        worker_id: WorkerId,
        last: RegistryCallError,
        now: MonoTime,
    ) -> Result<Duration, StartError> {
        match self.registry.inspect(worker_id).await {
            Ok(view) => match holder_of(&view) {
                Holder::Embargo => self.wait_for_id(last, Some(view), now).await,
                Holder::Nobody => {
                    tracing::debug!(%worker_id, state = %view.state, "the worker ID is no longer held; asking again");
                    self.retry(last, now)
                }
                Holder::Other => Err(refusal(last, Some(worker_id))),
            },
            Err(e) if e.is_retryable() => self.retry(last, now),
            Err(_) => Err(refusal(last, Some(worker_id))),
        }
    }
}

/// The one WARN of a wait for a worker ID: what is happening and, when the registry says,
/// when it ends.
fn log_wait_start(last: &RegistryCallError, view: Option<&IdView>, id_wait: Duration, retry_max_ms: u64) {
    let id_wait_ms = id_wait.as_millis() as u64;
    match view.filter(|v| v.held_by_registry()) {
        Some(view) => {
            let lifts_in_ms = view.frees_within().map(|d| d.as_millis() as u64);
            tracing::warn!(
                worker_id = %view.worker_id, holder = %view.holder, lifts_in_ms, retry_max_ms, id_wait_ms, registry = %last,
                "worker IDs are embargoed after a backup restore (held by the registry for max TTL + cool-down, so no lost holder can still be minting); waiting for the embargo to lift, retrying until --id-wait runs out"
            );
        }
        None => tracing::warn!(
            registry = %last, retry_max_ms, id_wait_ms,
            "no worker ID can be had now: all are held or quarantined (after a backup restore they are embargoed for max TTL + cool-down); retrying until --id-wait runs out"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(message: &str) -> RegistryCallError {
        RegistryCallError::AlreadyHeld { message: message.into() }
    }

    /// Goal: every answer an Acquire can get leads to the documented step: unavailable
    /// retries; exhausted waits; an explicit held ID asks who holds it; a remembered holder in
    /// the way is replaced (with `auto`, also when its ID is quarantined); an explicit
    /// quarantined ID, and anything else, refuses.
    #[test]
    fn each_answer_leads_to_its_step() {
        let five = Some(WorkerId::new(5));
        let unavailable = RegistryCallError::Unavailable { last: "x".into(), indeterminate: true };
        let exhausted = RegistryCallError::Exhausted { message: "no free worker ID".into() };
        let quarantined = RegistryCallError::Lost { reason: LostReason::Quarantined, message: "QUARANTINED".into() };
        let fenced = RegistryCallError::Lost { reason: LostReason::Fenced, message: "FENCED".into() };
        let holds_other = RegistryCallError::HolderHoldsOther { message: "holds 3".into() };
        let refused =
            RegistryCallError::Refused { code: tonic::Code::InvalidArgument, reason: None, message: "x".into() };
        let cases: &[(&str, &RegistryCallError, Option<WorkerId>, bool, Next)] = &[
            ("unavailable, auto", &unavailable, None, false, Next::Retry),
            ("unavailable, explicit", &unavailable, five, true, Next::Retry),
            ("exhausted, auto", &exhausted, None, true, Next::WaitForId),
            ("exhausted, explicit", &exhausted, five, false, Next::WaitForId),
            ("held, explicit", &held("held by x"), five, false, Next::AskWhoHolds(WorkerId::new(5))),
            ("held, auto: changed hands", &held("changed hands"), None, true, Next::Retry),
            ("holds other, reused", &holds_other, five, true, Next::NewHolder(NewHolderWhy::HoldsOther)),
            ("holds other, fresh", &holds_other, five, false, Next::Refuse),
            (
                "quarantined, auto, reused",
                &quarantined,
                None,
                true,
                Next::NewHolder(NewHolderWhy::RememberedQuarantined),
            ),
            ("quarantined, auto, fresh holder", &quarantined, None, false, Next::Refuse),
            ("quarantined, explicit", &quarantined, five, true, Next::Refuse),
            ("fenced", &fenced, None, true, Next::Refuse),
            ("refused", &refused, None, true, Next::Refuse),
        ];
        for (name, error, wanted, reused, want) in cases {
            assert_eq!(next_step(error, *wanted, *reused), *want, "{name}");
        }
    }

    /// Goal: refusals name what is wrong: a quarantined or held explicit ID gets its own
    /// error naming the ID; everything else is the registry's refusal.
    #[test]
    fn refusals_name_the_worker_id() {
        let q = RegistryCallError::Lost { reason: LostReason::Quarantined, message: "QUARANTINED: audit".into() };
        let err = refusal(q.clone(), Some(WorkerId::new(7))).to_string();
        assert!(err.contains("worker ID 7 is quarantined") && err.contains("QUARANTINED: audit"), "{err}");
        assert!(err.contains("ctl unquarantine 7"), "{err}");
        let err = refusal(held("worker ID is held by gen-1/2/ab"), Some(WorkerId::new(7))).to_string();
        assert!(err.contains("worker ID 7") && err.contains("gen-1/2/ab"), "{err}");
        assert!(matches!(refusal(q, None), StartError::AcquireRefused(_)));
    }

    fn view(state: &str, holder: &str) -> IdView {
        IdView {
            worker_id: WorkerId::new(5),
            state: state.into(),
            holder: holder.into(),
            ttl_ms: 2_000,
            since_renew_ms: 0,
            cool_down_ms: None,
        }
    }

    /// Goal: the registry's embargo holder is waited for; a real holder is a duplicate claim;
    /// a lease that is gone is asked for again.
    #[test]
    fn the_embargo_is_told_from_a_real_holder() {
        assert_eq!(holder_of(&view("HELD", "fenceflake:restore-embargo/5")), Holder::Embargo);
        assert_eq!(holder_of(&view("QUARANTINED", "fenceflake:restore-embargo/5")), Holder::Embargo);
        assert_eq!(holder_of(&view("HELD", "gen-1/77/0123456789abcdef")), Holder::Other);
        assert_eq!(holder_of(&view("QUARANTINED", "gen-1/77/0123456789abcdef")), Holder::Other);
        assert_eq!(holder_of(&view("FREE", "")), Holder::Nobody);
        assert_eq!(holder_of(&view("EXPIRED", "gen-1/77/0123456789abcdef")), Holder::Nobody);
    }

    /// Goal: the budget — unavailability alone is tolerated for ACQUIRE_TIMEOUT_MS; once no ID
    /// could be had, waiting goes on until `id_wait` (unavailability too); a zero `id_wait`
    /// gives up at the first such answer; pauses never overshoot the deadline.
    #[test]
    fn the_budget_bounds_every_wait() {
        let t0 = MonoTime::from_nanos(1_000);
        let at = |ms: u64| t0.saturating_add(Duration::from_millis(ms));
        let mut budget = Budget::new(t0, Duration::from_secs(120));
        assert!(budget.may_retry(at(ACQUIRE_TIMEOUT_MS)));
        assert!(!budget.may_retry(at(ACQUIRE_TIMEOUT_MS + 1)));
        assert_eq!(budget.pause(at(ACQUIRE_TIMEOUT_MS - 100), Duration::from_secs(1)), Duration::from_millis(100));
        assert!(budget.may_wait_for_id(at(10_000)));
        assert!(budget.may_retry(at(119_000)), "unavailability during an ID wait is waited out too");
        assert!(budget.may_wait_for_id(at(119_999)));
        assert!(!budget.may_wait_for_id(at(120_000)));
        assert!(!budget.may_retry(at(120_001)));
        assert_eq!(budget.pause(at(119_000), Duration::from_secs(5)), Duration::from_secs(1));
        assert_eq!(budget.pause(at(200_000), Duration::from_secs(5)), Duration::ZERO);
        assert_eq!(budget.waited(at(7)), Duration::from_millis(7));

        let mut never = Budget::new(t0, Duration::ZERO);
        assert!(!never.may_wait_for_id(t0), "a zero id_wait fails at the first answer");
        assert!(never.may_retry(at(ACQUIRE_TIMEOUT_MS)), "and keeps the unavailability bound");
        let short = Budget::new(t0, Duration::from_secs(1));
        let mut short_waiting = short;
        assert!(short_waiting.may_wait_for_id(t0));
        assert_eq!(short_waiting.deadline(), short.deadline(), "never shorter than the unavailability bound");
    }
}
