//! Every metric the worker exports, with its name and help text, rendered in the Prometheus
//! text format. Names are `fenceflake_worker_<name>_<unit>`; labels come only from small
//! fixed sets (RPC names, park causes), never from callers, holders or addresses.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use fenceflake_proto::metrics::{preamble, single, Histogram};

use crate::park::ParkCause;

/// Metric names, in one place so alerts and dashboards can be checked against them.
pub mod names {
    pub const IDS_MINTED: &str = "fenceflake_worker_ids_minted_total";
    pub const REQUEST_SECONDS: &str = "fenceflake_worker_request_duration_seconds";
    pub const CLOCK_REGRESSIONS: &str = "fenceflake_worker_clock_regressions_total";
    pub const CLOCK_REGRESSION_SECONDS: &str = "fenceflake_worker_clock_regression_seconds_total";
    pub const CLOCK_REGRESSION_MAX_SECONDS: &str = "fenceflake_worker_clock_regression_max_seconds";
    pub const SPIN_WAIT_SECONDS: &str = "fenceflake_worker_spin_wait_seconds_total";
    pub const FROZEN_BORROWS: &str = "fenceflake_worker_frozen_borrows_total";
    pub const SEQUENCE_EXHAUSTED: &str = "fenceflake_worker_sequence_exhausted_total";
    pub const LEASE_REMAINING_SECONDS: &str = "fenceflake_worker_lease_remaining_seconds";
    pub const PARKED: &str = "fenceflake_worker_parked";
    pub const RENEW_SECONDS: &str = "fenceflake_worker_renew_duration_seconds";
    pub const RENEW_FAILURES: &str = "fenceflake_worker_renew_failures_total";
    pub const RATE_LIMITED: &str = "fenceflake_worker_rate_limited_total";
    pub const BOOT_WAIT_SECONDS: &str = "fenceflake_worker_boot_wait_seconds";
    pub const START_TIME_SECONDS: &str = "fenceflake_worker_start_time_seconds";
}

/// The RPCs whose latency is recorded and which can be rate limited (a label set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rpc {
    Generate,
    GenerateBatch,
}

impl Rpc {
    const ALL: [Rpc; 2] = [Rpc::Generate, Rpc::GenerateBatch];

    pub fn name(self) -> &'static str {
        match self {
            Rpc::Generate => "Generate",
            Rpc::GenerateBatch => "GenerateBatch",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters and histograms, updated lock-free from the minting path, the lease keeper and the
/// service. Gauges that are a function of the state (lease remaining, parked) are passed to
/// [`WorkerMetrics::render`] at scrape time instead.
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    /// IDs returned, but for [`WorkerMetrics::count_instant_generate`]'s (see
    /// [`WorkerMetrics::ids_minted`]).
    pub ids_minted: AtomicU64,
    requests: [Histogram; Rpc::ALL.len()],
    /// `generate()` calls the lock-free path served: one ID each, no wait. Counted per thread
    /// because at millions a second on every core one shared counter (or histogram) is a cache
    /// line fought over; added to `ids_minted` and the Generate histogram when read.
    instant_generates: Stripes,
    pub clock_regressions: AtomicU64,
    clock_regression_ms: AtomicU64,
    clock_regression_max_ms: AtomicU64,
    spin_wait_us: AtomicU64,
    pub frozen_borrows: AtomicU64,
    pub sequence_exhausted: AtomicU64,
    renewals: Histogram,
    pub renew_failures: AtomicU64,
    rate_limited: [AtomicU64; Rpc::ALL.len()],
    boot_wait_ms: AtomicU64,
    /// Wall clock when this generator started (ms): its changes count restarts, which a worker
    /// that lost its lease for good (it exits) cannot report itself.
    start_wall_ms: AtomicU64,
}

/// The state-derived gauges, read at scrape time.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gauges {
    pub lease_remaining: Duration,
    pub parked: Option<ParkCause>,
}

pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl WorkerMetrics {
    pub fn observe_request(&self, rpc: Rpc, elapsed: Duration) {
        self.requests[rpc.index()].observe(elapsed);
    }

    /// A `generate()` call that returned one ID without waiting or locking: one more ID
    /// returned and one more Generate request in the first latency bucket.
    pub fn count_instant_generate(&self) {
        self.instant_generates.add_one();
    }

    /// IDs returned to callers.
    pub fn ids_minted(&self) -> u64 {
        self.ids_minted.load(Ordering::Relaxed) + self.instant_generates.sum()
    }

    pub fn observe_renew(&self, elapsed: Duration) {
        self.renewals.observe(elapsed);
    }

    pub fn count_rate_limited(&self, rpc: Rpc) {
        inc(&self.rate_limited[rpc.index()]);
    }

    pub fn count_regression(&self, by_ms: u64) {
        inc(&self.clock_regressions);
        self.clock_regression_ms.fetch_add(by_ms, Ordering::Relaxed);
        self.clock_regression_max_ms.fetch_max(by_ms, Ordering::Relaxed);
    }

    pub fn add_spin_wait(&self, waited: Duration) {
        self.spin_wait_us.fetch_add(u64::try_from(waited.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub fn set_boot_wait(&self, waited_ms: u64) {
        self.boot_wait_ms.store(waited_ms, Ordering::Relaxed);
    }

    pub fn set_start_time(&self, wall_ms: u64) {
        self.start_wall_ms.store(wall_ms, Ordering::Relaxed);
    }

    /// The single-valued series: (name, type, help, value).
    fn samples(&self, g: &Gauges) -> [(&'static str, &'static str, &'static str, f64); 11] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        let ms = |c: &AtomicU64| get(c) / 1e3;
        [
            (names::IDS_MINTED, "counter", "IDs returned to callers.", self.ids_minted() as f64),
            (
                names::CLOCK_REGRESSIONS,
                "counter",
                "Mints that found the wall clock behind the last minted millisecond.",
                get(&self.clock_regressions),
            ),
            (
                names::CLOCK_REGRESSION_SECONDS,
                "counter",
                "Sum of the sizes of those regressions.",
                ms(&self.clock_regression_ms),
            ),
            (
                names::CLOCK_REGRESSION_MAX_SECONDS,
                "gauge",
                "Largest clock regression seen since start.",
                ms(&self.clock_regression_max_ms),
            ),
            (
                names::SPIN_WAIT_SECONDS,
                "counter",
                "Time callers waited for the wall clock to catch up with the last minted millisecond.",
                get(&self.spin_wait_us) / 1e6,
            ),
            (
                names::FROZEN_BORROWS,
                "counter",
                "Runs served from the rest of a frozen millisecond during a regression (--grace).",
                get(&self.frozen_borrows),
            ),
            (
                names::SEQUENCE_EXHAUSTED,
                "counter",
                "Times a millisecond's sequence ran out and minting waited for the next one.",
                get(&self.sequence_exhausted),
            ),
            (
                names::LEASE_REMAINING_SECONDS,
                "gauge",
                "Time left before the lease deadline (0: parked for lack of a committed renewal).",
                g.lease_remaining.as_secs_f64(),
            ),
            (
                names::RENEW_FAILURES,
                "counter",
                "Renewal attempts that no registry node committed.",
                get(&self.renew_failures),
            ),
            (
                names::BOOT_WAIT_SECONDS,
                "gauge",
                "How long boot waited for the wall clock to pass the ceiling and not_before.",
                ms(&self.boot_wait_ms),
            ),
            (
                names::START_TIME_SECONDS,
                "gauge",
                "When this worker started (Unix seconds); each change is a restart.",
                ms(&self.start_wall_ms),
            ),
        ]
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(8192);
        for (name, kind, help, value) in self.samples(g) {
            single(&mut out, name, kind, help, value);
        }
        preamble(&mut out, names::PARKED, "gauge", "1 for the reason the worker is parked, 0 for the others.");
        for cause in ParkCause::ALL {
            let value = u8::from(g.parked == Some(cause));
            out.push_str(&format!("{}{{reason=\"{}\"}} {value}\n", names::PARKED, cause.as_label()));
        }
        preamble(&mut out, names::REQUEST_SECONDS, "histogram", "Latency of Generate and GenerateBatch calls.");
        for rpc in Rpc::ALL {
            let instant = if rpc == Rpc::Generate { self.instant_generates.sum() } else { 0 };
            let labels = format!("rpc=\"{}\"", rpc.name());
            self.requests[rpc.index()].render_with_instant(&mut out, names::REQUEST_SECONDS, &labels, instant);
        }
        preamble(&mut out, names::RENEW_SECONDS, "histogram", "Latency of committed lease renewals.");
        self.renewals.render(&mut out, names::RENEW_SECONDS, "");
        preamble(&mut out, names::RATE_LIMITED, "counter", "Calls refused by a per-caller rate limit.");
        for rpc in Rpc::ALL {
            let value = self.rate_limited[rpc.index()].load(Ordering::Relaxed);
            out.push_str(&format!("{}{{rpc=\"{}\"}} {value}\n", names::RATE_LIMITED, rpc.name()));
        }
        out
    }
}

/// How many slots a [`Stripes`] counter has: more than the cores of most machines, so that
/// threads seldom share one.
const STRIPES: usize = 16;

/// A counter that threads add to without sharing a cache line: each thread adds to the slot
/// it drew on first use; a read sums the slots. Every add that returned before a read began
/// is in that read's sum, and later reads never sum less.
#[derive(Debug, Default)]
struct Stripes {
    slots: [Slot; STRIPES],
}

/// One slot, alone on its cache lines (128 bytes: adjacent-line prefetch pairs 64-byte lines).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Slot(AtomicU64);

thread_local! {
    /// This thread's slot in every [`Stripes`].
    static STRIPE: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES
    };
}

impl Stripes {
    fn add_one(&self) {
        let slot = STRIPE.with(|slot| *slot);
        self.slots[slot].0.fetch_add(1, Ordering::Relaxed);
    }

    fn sum(&self) -> u64 {
        self.slots.iter().map(|slot| slot.0.load(Ordering::Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: every name is exported with its type, the parked gauge marks exactly the current
    /// cause, and values land in the right series.
    #[test]
    fn every_name_is_exported() {
        let m = WorkerMetrics::default();
        m.count_regression(30);
        m.count_regression(5);
        m.count_rate_limited(Rpc::GenerateBatch);
        m.observe_request(Rpc::Generate, Duration::from_micros(300));
        m.ids_minted.fetch_add(3, Ordering::Relaxed);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| m.count_instant_generate());
            }
        });
        let text = m.render(&Gauges { lease_remaining: Duration::from_millis(1500), parked: Some(ParkCause::Fenced) });
        for name in [
            names::IDS_MINTED,
            names::REQUEST_SECONDS,
            names::CLOCK_REGRESSIONS,
            names::CLOCK_REGRESSION_SECONDS,
            names::CLOCK_REGRESSION_MAX_SECONDS,
            names::SPIN_WAIT_SECONDS,
            names::FROZEN_BORROWS,
            names::SEQUENCE_EXHAUSTED,
            names::LEASE_REMAINING_SECONDS,
            names::PARKED,
            names::RENEW_SECONDS,
            names::RENEW_FAILURES,
            names::RATE_LIMITED,
            names::BOOT_WAIT_SECONDS,
            names::START_TIME_SECONDS,
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
        assert!(text.contains("fenceflake_worker_parked{reason=\"fenced\"} 1\n"), "{text}");
        assert!(text.contains("fenceflake_worker_parked{reason=\"lease_expired\"} 0\n"), "{text}");
        assert!(text.contains("fenceflake_worker_clock_regressions_total 2\n"), "{text}");
        assert!(text.contains("fenceflake_worker_clock_regression_max_seconds 0.03\n"), "{text}");
        assert!(text.contains("fenceflake_worker_rate_limited_total{rpc=\"GenerateBatch\"} 1\n"), "{text}");
        assert!(text.contains("fenceflake_worker_lease_remaining_seconds 1.5\n"), "{text}");
        assert!(text.contains("fenceflake_worker_request_duration_seconds_count{rpc=\"Generate\"} 5\n"), "{text}");
        let first_bucket = "fenceflake_worker_request_duration_seconds_bucket{rpc=\"Generate\",le=\"0.0005\"} 5\n";
        assert!(text.contains(first_bucket), "{text}");
        assert!(text.contains("fenceflake_worker_request_duration_seconds_count{rpc=\"GenerateBatch\"} 0\n"), "{text}");
        assert!(text.contains("fenceflake_worker_ids_minted_total 7\n"), "{text}");
    }
}
