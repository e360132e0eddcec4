//! Availability as a caller sees it while a worker is paused: of the ID calls (Generate and
//! GenerateBatch) invoked inside a fault window named `pause-*` (a SIGSTOPped worker), the
//! fraction that got IDs, and the latency of every call that ended, ok or not (a caller
//! waits for a failure too); beside it, ok calls per second inside the windows and before
//! the first fault, because the workload is open-loop with a bounded number of calls in
//! flight: a caller stuck on a hung worker makes fewer calls, not more failed ones.
//!
//! Informational unless a minimum is configured (the harness sets one when its workload
//! calls through `fenceflake_client::WorkerClient`: the caller that routes around a hung
//! worker); a history without such a window does not exercise it.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::checker::perf::Latency;
use crate::checker::{describe_op, CheckResult, Evidence, Valid};
use crate::history::{self, Event, NemesisWindow, Phase};

pub const NAME: &str = "availability";

/// The windows judged by default: a paused worker.
pub const PAUSE_PREFIX: &str = "pause-";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Fault windows whose name starts with this are judged.
    pub window_prefix: String,
    /// If set, availability inside the windows below this fails the check (0.0..=1.0).
    pub min: Option<f64>,
}

impl Default for Config {
    fn default() -> Config {
        Config { window_prefix: PAUSE_PREFIX.to_string(), min: None }
    }
}

/// What a caller saw inside the judged windows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    /// The judged windows (empty: not exercised).
    pub windows: Vec<NemesisWindow>,
    pub calls: u64,
    pub ok: u64,
    /// ok / calls; `None` without calls.
    pub availability: Option<f64>,
    /// Invoke to completion of every call that completed, ok or not.
    pub latency: Option<Latency>,
    /// Ok calls per second of window time.
    pub ok_per_sec: Option<f64>,
    /// Ok calls per second from the first call to the first fault of any kind.
    pub nominal_ok_per_sec: Option<f64>,
    /// The configured minimum, if any.
    pub min: Option<f64>,
}

/// Computes the numbers of a history.
pub fn analyze(events: &[Event], config: &Config) -> Stats {
    let all_windows = history::nemesis_windows(events);
    let end_ns = events.iter().map(Event::time_ns).max().unwrap_or(0);
    let windows: Vec<NemesisWindow> =
        all_windows.iter().filter(|w| w.name.starts_with(&config.window_prefix)).cloned().collect();
    let ops = history::client_ops(events);
    let inside = |t: u64| windows.iter().any(|w| w.contains(t));
    let (mut calls, mut ok, mut latencies_ns) = (0, 0, Vec::new());
    for op in ops.iter().filter(|op| inside(op.invoke_ns())) {
        calls += 1;
        ok += u64::from(op.outcome() == Phase::Ok);
        latencies_ns.extend(op.complete_ns().map(|c| c.saturating_sub(op.invoke_ns())));
    }
    latencies_ns.sort_unstable();
    let first_fault_ns = all_windows.first().map_or(end_ns, |w| w.start_ns);
    let first_call_ns = ops.iter().map(|op| op.invoke_ns()).min().unwrap_or(first_fault_ns);
    let nominal_ok = ops.iter().filter(|op| op.invoke_ns() < first_fault_ns && op.outcome() == Phase::Ok).count();
    Stats {
        availability: (calls > 0).then(|| ok as f64 / calls as f64),
        latency: Latency::of_sorted(&latencies_ns),
        ok_per_sec: per_sec(ok, covered_ns(&windows, end_ns)),
        nominal_ok_per_sec: per_sec(nominal_ok as u64, first_fault_ns.saturating_sub(first_call_ns)),
        windows,
        calls,
        ok,
        min: config.min,
    }
}

fn per_sec(count: u64, span_ns: u64) -> Option<f64> {
    (span_ns > 0).then(|| count as f64 * 1e9 / span_ns as f64)
}

/// Time covered by the union of `windows` (one still open at the end runs to `end_ns`).
fn covered_ns(windows: &[NemesisWindow], end_ns: u64) -> u64 {
    let mut spans: Vec<(u64, u64)> = windows.iter().map(|w| (w.start_ns, w.stop_ns.unwrap_or(end_ns))).collect();
    spans.sort_unstable();
    let (mut covered, mut reached) = (0, 0);
    for (start, stop) in spans {
        let start = start.max(reached);
        if stop > start {
            covered += stop - start;
            reached = stop;
        }
    }
    covered
}

/// The verdict: `true` when not exercised or at or above the minimum (or none is set),
/// `false` below it, with the calls that failed inside the windows as evidence; `unknown`
/// when a window saw no call.
pub fn check(events: &[Event], stats: &Stats) -> CheckResult {
    let result = |valid, summary, evidence| CheckResult { name: NAME.to_string(), valid, summary, evidence };
    if stats.windows.is_empty() {
        return result(Valid::True, "not exercised: no worker was paused".to_string(), Vec::new());
    }
    let Some(availability) = stats.availability else {
        return result(Valid::Unknown, "no ID call was made while a worker was paused".to_string(), Vec::new());
    };
    let summary = describe(stats, availability);
    match stats.min {
        Some(min) if availability < min => result(Valid::False, summary, failed_calls(events, stats)),
        _ => result(Valid::True, summary, Vec::new()),
    }
}

fn describe(stats: &Stats, availability: f64) -> String {
    let names: Vec<&str> = stats.windows.iter().map(|w| w.name.as_str()).collect();
    let latency = stats
        .latency
        .map_or(String::new(), |l| format!(", p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms", l.p50_ms, l.p99_ms, l.max_ms));
    let rate = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.0}"));
    let threshold = match stats.min {
        Some(min) => format!("minimum {:.2}%", min * 100.0),
        None => "no minimum (informational)".to_string(),
    };
    format!(
        "while paused ({}): {:.2}% of {} ID calls ok{latency}; {} ok/s (before the faults {} ok/s); {threshold}",
        names.join(", "),
        availability * 100.0,
        stats.calls,
        rate(stats.ok_per_sec),
        rate(stats.nominal_ok_per_sec),
    )
}

/// The calls inside the windows that did not get IDs, as evidence.
fn failed_calls(events: &[Event], stats: &Stats) -> Vec<serde_json::Value> {
    let mut evidence = Evidence::default();
    for op in history::client_ops(events) {
        if op.outcome() != Phase::Ok && stats.windows.iter().any(|w| w.contains(op.invoke_ns())) {
            let error = op.completion.and_then(|c| c.error.clone());
            evidence.push(json!({"outcome": op.outcome(), "error": error, "op": describe_op(&op)}));
        }
    }
    evidence.into_items()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::testkit::{id, H};
    use crate::history::NemesisPhase::{Start, Stop};

    /// 10 ok calls before the fault (0–1000 ms); a pause of w2 from 1000 to 2000 ms with 99
    /// ok calls (latency 1 ms, one of 30 ms) and one that failed after 500 ms; a partition
    /// from 2000 ms that does not count.
    fn paused_run() -> H {
        let mut h = H::default();
        for i in 0..10 {
            h.ok("w1", 1, (i * 100, i * 100 + 1), &[(id(i, 1, 0), 1)], None);
        }
        h.nemesis(Start, "pause-w2", 1000).nemesis(Stop, "pause-w2", 2000);
        for i in 0..99 {
            let took = if i == 50 { 30 } else { 1 };
            h.ok("w1", 1, (1000 + i * 10, 1000 + i * 10 + took), &[(id(1000 + i, 1, 0), 1)], None);
        }
        h.not_ok("any", 2, (1500, 2000), Phase::Info);
        h.nemesis(Start, "partition", 2000);
        h.not_ok("any", 2, (2100, 2200), Phase::Fail);
        h
    }

    /// Goal: only calls invoked inside `pause-*` windows count; the latency includes the
    /// failed call's wait; rates are per second of window and of nominal time.
    #[test]
    fn counts_calls_inside_pause_windows_only() {
        let h = paused_run();
        let stats = analyze(&h.events, &Config::default());
        assert_eq!((stats.calls, stats.ok, stats.availability), (100, 99, Some(0.99)));
        let names: Vec<&str> = stats.windows.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["pause-w2"]);
        let l = stats.latency.expect("latencies");
        assert_eq!((l.p50_ms, l.p99_ms, l.max_ms), (1.0, 30.0, 500.0));
        assert_eq!(stats.ok_per_sec, Some(99.0));
        // 10 ok calls from the first call (0 ms) to the first fault (1000 ms).
        assert_eq!(stats.nominal_ok_per_sec, Some(10.0));
    }

    /// Goal: informational without a minimum; at the minimum passes; below it fails with the
    /// failed calls as evidence; the summary names the window and the numbers.
    #[test]
    fn the_minimum_is_enforced_only_when_set() {
        let h = paused_run();
        let judge = |min| {
            let config = Config { min, ..Config::default() };
            check(&h.events, &analyze(&h.events, &config))
        };
        let informational = judge(None);
        assert_eq!(informational.valid, Valid::True);
        assert!(informational.summary.contains("pause-w2") && informational.summary.contains("99.00% of 100"));
        assert!(informational.summary.contains("informational"), "{}", informational.summary);
        assert_eq!(judge(Some(0.99)).valid, Valid::True);
        let strict = judge(Some(0.995));
        assert_eq!(strict.valid, Valid::False);
        assert_eq!(strict.evidence.len(), 1, "only the failed call inside the window");
        assert_eq!(strict.evidence[0]["op"]["invoke_ns"], json!(1500 * crate::checker::testkit::MS));
    }

    /// Goal: a run without a pause is not exercised (whatever the minimum); a pause without
    /// any call cannot tell.
    #[test]
    fn no_pause_is_not_exercised_and_no_calls_is_unknown() {
        let mut h = H::default();
        h.ok("w1", 1, (0, 1), &[(id(0, 1, 0), 1)], None);
        h.nemesis(Start, "partition", 10).nemesis(Stop, "partition", 20);
        let config = Config { min: Some(0.99), ..Config::default() };
        let r = check(&h.events, &analyze(&h.events, &config));
        assert!(r.valid == Valid::True && r.summary.starts_with("not exercised"), "{}", r.summary);
        h.nemesis(Start, "pause-w1", 30);
        assert_eq!(check(&h.events, &analyze(&h.events, &config)).valid, Valid::Unknown);
    }

    /// Goal: overlapping and open windows are covered once.
    #[test]
    fn window_union() {
        let w = |start_ms: u64, stop_ms: Option<u64>| NemesisWindow {
            name: "pause-w1".into(),
            start_ns: start_ms,
            stop_ns: stop_ms,
            detail: String::new(),
        };
        assert_eq!(covered_ns(&[w(0, Some(10)), w(5, Some(20)), w(30, None)], 35), 25);
        assert_eq!(covered_ns(&[w(0, Some(10)), w(2, Some(5))], 35), 10);
        assert_eq!(covered_ns(&[], 35), 0);
    }
}
