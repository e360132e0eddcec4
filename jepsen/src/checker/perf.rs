//! Availability and latency of client ops per phase of the run — nominal (before the first
//! fault), fault (inside any nemesis window), recovered (after a fault, outside any) — and
//! per time bucket for the report's plots. Informational unless a minimum nominal
//! availability is configured.

use serde::{Deserialize, Serialize};

use crate::checker::{CheckResult, Valid};
use crate::history::{self, Event, NemesisWindow, Phase};

pub const NAME: &str = "performance";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Width of a throughput/latency bucket.
    pub bucket_ms: u64,
    /// If set, nominal availability below this fails the check (0.0..=1.0).
    pub min_nominal_availability: Option<f64>,
}

impl Default for Config {
    fn default() -> Config {
        Config { bucket_ms: 1000, min_nominal_availability: None }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// Nearest-rank p50, p99 and the max of `sorted_ns`; `None` if it is empty.
    pub(crate) fn of_sorted(sorted_ns: &[u64]) -> Option<Latency> {
        let ms = |ns: u64| ns as f64 / 1e6;
        sorted_ns.last().map(|&max| Latency {
            p50_ms: ms(nearest_rank(sorted_ns, 0.50)),
            p99_ms: ms(nearest_rank(sorted_ns, 0.99)),
            max_ms: ms(max),
        })
    }
}

/// Counts of one phase or bucket. Ops that never completed count as info.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tally {
    pub ok: u64,
    pub fail: u64,
    pub info: u64,
    /// IDs returned by the ok ops.
    pub ids: u64,
    /// ok / (ok + fail + info); `None` without ops.
    pub availability: Option<f64>,
    /// Of ok ops, invoke to completion.
    pub latency: Option<Latency>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseStats {
    /// `all`, `nominal`, `fault` or `recovered`.
    pub phase: &'static str,
    #[serde(flatten)]
    pub tally: Tally,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bucket {
    /// Start of the bucket on the harness clock (ns since run start); ops fall in the bucket
    /// of their invoke.
    pub start_ns: u64,
    #[serde(flatten)]
    pub tally: Tally,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PerfStats {
    pub bucket_ns: u64,
    /// `all`, then `nominal`, `fault`, `recovered`.
    pub phases: Vec<PhaseStats>,
    pub buckets: Vec<Bucket>,
    pub nemesis: Vec<NemesisWindow>,
    /// Last event time of the run.
    pub end_ns: u64,
}

/// Collects one tally.
#[derive(Debug, Default)]
struct Acc {
    ok: u64,
    fail: u64,
    info: u64,
    ids: u64,
    latencies_ns: Vec<u64>,
}

impl Acc {
    fn add(&mut self, outcome: Phase, ids: u64, latency_ns: Option<u64>) {
        match outcome {
            Phase::Ok => {
                self.ok += 1;
                self.ids += ids;
                self.latencies_ns.extend(latency_ns);
            }
            Phase::Fail => self.fail += 1,
            Phase::Info | Phase::Invoke => self.info += 1,
        }
    }

    fn finish(mut self) -> Tally {
        let total = self.ok + self.fail + self.info;
        let availability = (total > 0).then(|| self.ok as f64 / total as f64);
        self.latencies_ns.sort_unstable();
        let latency = Latency::of_sorted(&self.latencies_ns);
        Tally { ok: self.ok, fail: self.fail, info: self.info, ids: self.ids, availability, latency }
    }
}

/// The nearest-rank percentile of a sorted, non-empty slice.
fn nearest_rank(sorted: &[u64], q: f64) -> u64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

const PHASES: [&str; 3] = ["nominal", "fault", "recovered"];

fn phase_of(t: u64, nemesis: &[NemesisWindow]) -> usize {
    if nemesis.iter().any(|w| w.contains(t)) {
        1
    } else if nemesis.first().is_none_or(|w| t < w.start_ns) {
        0
    } else {
        2
    }
}

/// Computes the per-phase and per-bucket numbers of a history.
pub fn analyze(events: &[Event], config: &Config) -> PerfStats {
    let bucket_ns = config.bucket_ms.max(1) * 1_000_000;
    let nemesis = history::nemesis_windows(events);
    let end_ns = events.iter().map(Event::time_ns).max().unwrap_or(0);
    let bucket_count = usize::try_from(end_ns / bucket_ns).unwrap_or(0) + 1;
    let mut all = Acc::default();
    let mut phases: [Acc; 3] = Default::default();
    let mut buckets: Vec<Acc> = (0..bucket_count).map(|_| Acc::default()).collect();
    for op in history::client_ops(events) {
        let ids = op.ranges().iter().map(|r| r.count).sum();
        let latency = op.complete_ns().map(|c| c.saturating_sub(op.invoke_ns()));
        let t = op.invoke_ns();
        let bucket = usize::try_from(t / bucket_ns).unwrap_or(usize::MAX).min(bucket_count - 1);
        for acc in [&mut all, &mut phases[phase_of(t, &nemesis)], &mut buckets[bucket]] {
            acc.add(op.outcome(), ids, latency);
        }
    }
    let mut phase_stats = vec![PhaseStats { phase: "all", tally: all.finish() }];
    phase_stats.extend(PHASES.iter().zip(phases).map(|(&phase, acc)| PhaseStats { phase, tally: acc.finish() }));
    let buckets = buckets
        .into_iter()
        .enumerate()
        .map(|(i, acc)| Bucket { start_ns: i as u64 * bucket_ns, tally: acc.finish() })
        .collect();
    PerfStats { bucket_ns, phases: phase_stats, buckets, nemesis, end_ns }
}

fn describe(stats: &PhaseStats) -> String {
    let t = &stats.tally;
    let availability = t.availability.map_or("-".to_string(), |a| format!("{:.2}%", a * 100.0));
    let latency = t.latency.map_or(String::new(), |l| format!(", p50 {:.1} ms, p99 {:.1} ms", l.p50_ms, l.p99_ms));
    format!("{} {availability} of {} ops{latency}", stats.phase, t.ok + t.fail + t.info)
}

/// The perf verdict: Unknown without ops, False below a configured nominal availability.
pub fn check(stats: &PerfStats, config: &Config) -> CheckResult {
    let summary = stats.phases.iter().map(describe).collect::<Vec<_>>().join("; ");
    let nominal = stats.phases.iter().find(|p| p.phase == "nominal").and_then(|p| p.tally.availability);
    let has_ops = stats.phases.first().is_some_and(|p| p.tally.availability.is_some());
    let valid = match (config.min_nominal_availability, nominal) {
        _ if !has_ops => Valid::Unknown,
        (Some(min), Some(a)) if a < min => Valid::False,
        (Some(_), None) => Valid::Unknown,
        _ => Valid::True,
    };
    CheckResult { name: NAME.to_string(), valid, summary, evidence: Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::testkit::{id, H};
    use crate::history::NemesisPhase::{Start, Stop};

    fn run() -> H {
        let mut h = H::default();
        for i in 0..100 {
            h.ok("w1", 1, (i * 10, i * 10 + 1 + i / 50), &[(id(i, 1, 0), 2)], None);
        }
        h.nemesis(Start, "partition", 1000).nemesis(Stop, "partition", 2000);
        h.ok("w1", 1, (1500, 1600), &[(id(1500, 1, 0), 1)], None);
        h.not_ok("w1", 1, (1500, 1600), Phase::Fail);
        h.not_ok("w1", 1, (1700, 0), Phase::Invoke);
        h.ok("w1", 1, (2500, 2501), &[(id(2500, 1, 0), 1)], None);
        h
    }

    /// Goal: ops land in the right phase, with exact counts and nearest-rank percentiles.
    #[test]
    fn phases_and_percentiles() {
        let stats = analyze(&run().events, &Config::default());
        let by = |name: &str| stats.phases.iter().find(|p| p.phase == name).map(|p| p.tally.clone()).unwrap();
        let nominal = by("nominal");
        assert_eq!((nominal.ok, nominal.ids, nominal.availability), (100, 200, Some(1.0)));
        let l = nominal.latency.unwrap();
        assert_eq!((l.p50_ms, l.p99_ms, l.max_ms), (1.0, 2.0, 2.0));
        let fault = by("fault");
        assert_eq!((fault.ok, fault.fail, fault.info), (1, 1, 1));
        assert_eq!(by("recovered").ok, 1);
        assert_eq!(by("all").ok, 102);
    }

    /// Goal: buckets cover the run and count throughput by invoke time.
    #[test]
    fn throughput_buckets() {
        let stats = analyze(&run().events, &Config { bucket_ms: 500, ..Config::default() });
        assert_eq!(stats.buckets.len(), 6);
        let oks: Vec<u64> = stats.buckets.iter().map(|b| b.tally.ok).collect();
        assert_eq!(oks, vec![50, 50, 0, 1, 0, 1]);
    }

    /// Goal: the verdict is informational by default, enforceable by threshold, Unknown
    /// without any op.
    #[test]
    fn verdicts() {
        let stats = analyze(&run().events, &Config::default());
        assert_eq!(check(&stats, &Config::default()).valid, Valid::True);
        let strict = Config { min_nominal_availability: Some(1.01), ..Config::default() };
        assert_eq!(check(&stats, &strict).valid, Valid::False);
        assert_eq!(check(&analyze(&[], &Config::default()), &Config::default()).valid, Valid::Unknown);
    }
}
