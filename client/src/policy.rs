//! The client's decisions, pure: latency window and p99, the per-attempt timeout and hedge
//! delay derived from it, the hedge budget, and a worker's health (parked skip, suspicion,
//! ejection with backoff and probe readmission). Time is an argument (an `Instant` the caller
//! read); nothing here sleeps, spawns or reads a clock, so every decision is unit-tested.

use std::time::Duration;

use tokio::time::Instant;

/// Samples kept per call kind; the p99 is over these.
const WINDOW: usize = 256;
/// Samples before the p99 is trusted; until then the starting values below apply.
pub const MIN_SAMPLES: usize = 16;
/// The p99 is recomputed (a sort of the window) after this many new samples.
const RECOMPUTE_EVERY: u32 = 16;

/// Per-attempt timeout before any latency is known.
pub const INITIAL_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);
/// Hedge delay before any latency is known: a cold connection (TCP + HTTP/2 handshake)
/// answers well within it on a LAN.
pub const INITIAL_HEDGE_DELAY: Duration = Duration::from_millis(50);
/// Per-attempt timeout = this × p99, at least [`ATTEMPT_FLOOR`], at most the call's timeout.
pub const ATTEMPT_P99_MULTIPLE: u32 = 10;
pub const ATTEMPT_FLOOR: Duration = Duration::from_millis(100);
/// Hedge delay = this × p99, at least [`HEDGE_FLOOR`], at most the attempt timeout.
pub const HEDGE_P99_MULTIPLE: u32 = 3;
pub const HEDGE_FLOOR: Duration = Duration::from_millis(5);

/// Hedge budget in milli-tokens: a hedge costs one token, a successful call earns a tenth
/// (so hedges stay within about 10 % extra calls), and a full bucket allows a burst of ten.
const HEDGE_COST: u32 = 1_000;
const HEDGE_EARN: u32 = 100;
const HEDGE_BURST: u32 = 10 * HEDGE_COST;

/// How long a worker that answered UNAVAILABLE (parked) or refused the connection is
/// skipped: long enough not to hammer it, short enough to notice it resumed.
pub const SKIP_FAILED_WORKER: Duration = Duration::from_millis(500);
/// First ejection after a timeout; each further strike (timeout or failed probe) doubles it.
pub const EJECT_BASE: Duration = Duration::from_millis(500);
pub const EJECT_MAX: Duration = Duration::from_secs(10);

/// The last [`WINDOW`] latencies of successful attempts of one kind, and their p99.
#[derive(Debug, Default)]
pub struct Latencies {
    ring: Vec<Duration>,
    next: usize,
    fresh: u32,
    p99: Option<Duration>,
}

impl Latencies {
    pub fn record(&mut self, latency: Duration) {
        if self.ring.len() < WINDOW {
            self.ring.push(latency);
        } else {
            self.ring[self.next] = latency;
        }
        self.next = (self.next + 1) % WINDOW;
        self.fresh += 1;
        if self.ring.len() >= MIN_SAMPLES && (self.p99.is_none() || self.fresh >= RECOMPUTE_EVERY) {
            let mut sorted = self.ring.clone();
            sorted.sort_unstable();
            self.p99 = Some(sorted[(sorted.len() * 99).div_ceil(100) - 1]);
            self.fresh = 0;
        }
    }

    /// `None` until [`MIN_SAMPLES`] were recorded.
    pub fn p99(&self) -> Option<Duration> {
        self.p99
    }
}

/// How long one attempt may take, and when a second worker is asked too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub attempt: Duration,
    pub hedge: Duration,
}

/// The timeouts for a call whose caller allows `overall`, given the recent p99.
pub fn timeouts(p99: Option<Duration>, overall: Duration) -> Timeouts {
    let Some(p99) = p99 else {
        let attempt = INITIAL_ATTEMPT_TIMEOUT.min(overall);
        return Timeouts { attempt, hedge: INITIAL_HEDGE_DELAY.min(attempt) };
    };
    let attempt = p99.saturating_mul(ATTEMPT_P99_MULTIPLE).clamp(ATTEMPT_FLOOR.min(overall), overall);
    let hedge = p99.saturating_mul(HEDGE_P99_MULTIPLE).clamp(HEDGE_FLOOR.min(attempt), attempt);
    Timeouts { attempt, hedge }
}

/// Token bucket of hedges, refilled by successful calls.
#[derive(Debug)]
pub struct HedgeBudget {
    milli_tokens: u32,
}

impl Default for HedgeBudget {
    fn default() -> Self {
        HedgeBudget { milli_tokens: HEDGE_BURST }
    }
}

impl HedgeBudget {
    pub fn on_success(&mut self) {
        self.milli_tokens = (self.milli_tokens + HEDGE_EARN).min(HEDGE_BURST);
    }

    /// Take one hedge if the budget allows.
    pub fn try_spend(&mut self) -> bool {
        let ok = self.milli_tokens >= HEDGE_COST;
        if ok {
            self.milli_tokens -= HEDGE_COST;
        }
        ok
    }
}

/// Ejection delay after `strikes` consecutive timeouts or failed probes (≥ 1).
pub fn eject_backoff(strikes: u32) -> Duration {
    EJECT_BASE.saturating_mul(1 << strikes.saturating_sub(1).min(16)).min(EJECT_MAX)
}

/// Whether calls may go to a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// Not tried by calls; probed once `until` passed (one probe at a time).
    Ejected {
        until: Instant,
        probing: bool,
    },
}

/// What the client knows of one worker's health.
#[derive(Debug)]
pub struct Health {
    pub admission: Admission,
    /// Consecutive timeouts and failed probes; an answered attempt clears them.
    strikes: u32,
    /// Parked or unreachable: skipped until then.
    skip_until: Option<Instant>,
    /// Another worker answered a call while this one's attempt was overdue: not tried
    /// until that attempt ends (answers, fails or times out).
    suspect: bool,
}

impl Default for Health {
    fn default() -> Self {
        Health { admission: Admission::Admitted, strikes: 0, skip_until: None, suspect: false }
    }
}

impl Health {
    pub fn admits(&self, now: Instant) -> bool {
        self.admission == Admission::Admitted && !self.suspect && self.skip_until.is_none_or(|u| u <= now)
    }

    /// The worker answered (with IDs, or a definite refusal such as a rate limit).
    pub fn on_answer(&mut self) {
        *self = Health::default();
    }

    /// Parked (UNAVAILABLE) or the connection failed: skip it for a while, as before.
    pub fn on_unavailable(&mut self, now: Instant) {
        self.suspect = false;
        self.skip_until = Some(now + SKIP_FAILED_WORKER);
    }

    /// An attempt timed out: eject with a growing backoff. True if it was admitted until now.
    /// Further timeouts of attempts sent before the ejection (concurrent calls) are not new
    /// strikes: only a failed probe lengthens the ejection.
    pub fn on_timeout(&mut self, now: Instant) -> bool {
        self.suspect = false;
        self.admission == Admission::Admitted && self.strike(now)
    }

    /// Another worker answered while this one's attempt was overdue.
    pub fn on_outpaced(&mut self) {
        self.suspect = true;
    }

    /// Claim the probe of an ejected worker whose backoff has passed.
    pub fn start_probe(&mut self, now: Instant) -> bool {
        match self.admission {
            Admission::Ejected { until, probing: false } if until <= now => {
                self.admission = Admission::Ejected { until, probing: true };
                true
            }
            _ => false,
        }
    }

    /// A probe's result: readmitted if it answered SERVING, else ejected for longer. True if
    /// readmitted.
    pub fn on_probe(&mut self, serving: bool, now: Instant) -> bool {
        if serving {
            self.admission = Admission::Admitted;
            self.suspect = false;
        } else {
            self.strike(now);
        }
        serving
    }

    fn strike(&mut self, now: Instant) -> bool {
        let was_admitted = self.admission == Admission::Admitted;
        self.strikes += 1;
        self.admission = Admission::Ejected { until: now + eject_backoff(self.strikes), probing: false };
        was_admitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Goal: the p99 is unknown until enough samples, then follows the window's tail.
    #[test]
    fn p99_needs_samples_then_tracks_the_tail() {
        let mut l = Latencies::default();
        for _ in 0..MIN_SAMPLES - 1 {
            l.record(MS);
        }
        assert_eq!(l.p99(), None);
        l.record(MS);
        assert_eq!(l.p99(), Some(MS));
        // 3 % slow samples: the p99 is slow.
        for i in 0..WINDOW {
            l.record(if i % 33 == 0 { 40 * MS } else { MS });
        }
        assert_eq!(l.p99(), Some(40 * MS));
        // A full window of fast samples pushes the slow ones out.
        for _ in 0..WINDOW {
            l.record(2 * MS);
        }
        assert_eq!(l.p99(), Some(2 * MS));
    }

    /// Goal: the starting values apply before latency is known; after, a multiple of the
    /// p99 clamped between the floors and the caller's overall timeout.
    #[test]
    fn timeouts_derive_from_p99_within_floor_and_overall() {
        let overall = Duration::from_secs(3);
        assert_eq!(timeouts(None, overall), Timeouts { attempt: INITIAL_ATTEMPT_TIMEOUT, hedge: INITIAL_HEDGE_DELAY });
        assert_eq!(timeouts(None, 20 * MS), Timeouts { attempt: 20 * MS, hedge: 20 * MS });
        // Fast workers: both at their floors.
        assert_eq!(timeouts(Some(MS / 2), overall), Timeouts { attempt: ATTEMPT_FLOOR, hedge: HEDGE_FLOOR });
        // Slower: the multiples.
        assert_eq!(timeouts(Some(20 * MS), overall), Timeouts { attempt: 200 * MS, hedge: 60 * MS });
        // Very slow: capped by the caller's timeout.
        assert_eq!(timeouts(Some(Duration::from_secs(1)), overall), Timeouts { attempt: overall, hedge: overall });
        // A caller's timeout below the floor wins.
        assert_eq!(timeouts(Some(MS), 50 * MS), Timeouts { attempt: 50 * MS, hedge: 5 * MS });
    }

    /// Goal: a burst of ten hedges, then one per ten successful calls.
    #[test]
    fn hedge_budget_allows_a_burst_then_ten_percent() {
        let mut b = HedgeBudget::default();
        assert_eq!((0..20).filter(|_| b.try_spend()).count(), 10);
        let mut hedges = 0;
        for _ in 0..1_000 {
            b.on_success();
            hedges += usize::from(b.try_spend());
        }
        assert_eq!(hedges, 100);
        // Refills stop at the burst.
        for _ in 0..10_000 {
            b.on_success();
        }
        assert_eq!((0..20).filter(|_| b.try_spend()).count(), 10);
    }

    /// Goal: a timed-out worker is not admitted, is probed once its backoff passed (one
    /// probe at a time), is ejected for twice as long when the probe fails, readmitted when
    /// it answers; backoff is capped and an answered attempt resets it.
    #[test]
    fn ejection_backs_off_and_probes_readmit() {
        let t0 = Instant::now();
        let mut h = Health::default();
        assert!(h.admits(t0));
        assert!(h.on_timeout(t0));
        assert!(!h.admits(t0 + Duration::from_secs(60)), "ejected until a probe readmits it");
        assert!(!h.start_probe(t0 + EJECT_BASE - MS));
        assert!(h.start_probe(t0 + EJECT_BASE));
        assert!(!h.start_probe(t0 + EJECT_BASE), "one probe at a time");
        let t1 = t0 + EJECT_BASE;
        assert!(!h.on_probe(false, t1));
        assert_eq!(h.admission, Admission::Ejected { until: t1 + 2 * EJECT_BASE, probing: false });
        assert!(!h.start_probe(t1 + 2 * EJECT_BASE - MS));
        assert!(h.start_probe(t1 + 2 * EJECT_BASE));
        assert!(h.on_probe(true, t1 + 2 * EJECT_BASE));
        assert!(h.admits(t1 + 2 * EJECT_BASE));
        // Readmitted but not yet proven by an answer: the next timeout backs off further.
        assert!(h.on_timeout(t1));
        assert_eq!(h.admission, Admission::Ejected { until: t1 + 4 * EJECT_BASE, probing: false });
        h.on_answer();
        assert!(h.admits(t1));
        assert!(h.on_timeout(t1));
        assert_eq!(h.admission, Admission::Ejected { until: t1 + EJECT_BASE, probing: false });
        assert_eq!(eject_backoff(40), EJECT_MAX);
    }

    /// Goal: an outpaced worker is skipped until its attempt ends; a parked one for the
    /// fixed skip; a second timeout of an ejected worker is not a new ejection.
    #[test]
    fn suspicion_and_parked_skips() {
        let t0 = Instant::now();
        let mut h = Health::default();
        h.on_outpaced();
        assert!(!h.admits(t0));
        h.on_answer();
        assert!(h.admits(t0));
        h.on_unavailable(t0);
        assert!(!h.admits(t0 + SKIP_FAILED_WORKER - MS));
        assert!(h.admits(t0 + SKIP_FAILED_WORKER));
        h.on_outpaced();
        assert!(h.on_timeout(t0));
        assert!(!h.on_timeout(t0 + MS), "already ejected");
        assert_eq!(h.admission, Admission::Ejected { until: t0 + EJECT_BASE, probing: false }, "not a new strike");
    }
}
