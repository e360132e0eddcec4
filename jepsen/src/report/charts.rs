//! The report's plots: latency and throughput over time, parked intervals per worker
//! process, and lease spans per worker ID — each with the nemesis intervals shaded.

use std::collections::BTreeMap;

use super::svg::{Chart, PALETTE};
use crate::checker::perf::{Latency, PerfStats, Tally};
use crate::history::{self, Event, LeaseEventKind};

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn run_seconds(perf: &PerfStats) -> f64 {
    secs(perf.end_ns)
}

fn shade_faults(chart: &mut Chart, perf: &PerfStats) {
    for w in &perf.nemesis {
        let label = format!("{} {}", w.name, w.detail);
        chart.shade(secs(w.start_ns), secs(w.stop_ns.unwrap_or(perf.end_ns)), &label);
    }
}

/// Picks one statistic out of a bucket's latency.
type Pick = fn(&Latency) -> f64;

/// p50, p99 and max latency of ok ops per bucket.
pub(super) fn latency(perf: &PerfStats) -> String {
    let series: [(&str, Pick); 3] = [("p50 ms", |l| l.p50_ms), ("p99 ms", |l| l.p99_ms), ("max ms", |l| l.max_ms)];
    let y_max = perf.buckets.iter().filter_map(|b| b.tally.latency).map(|l| l.max_ms).fold(0.0, f64::max);
    let mut chart = Chart::numeric("Latency of ok ops (per bucket)", run_seconds(perf), y_max, "ms");
    shade_faults(&mut chart, perf);
    for (i, (label, pick)) in series.into_iter().enumerate() {
        let points: Vec<Option<(f64, f64)>> = perf
            .buckets
            .iter()
            .map(|b| b.tally.latency.map(|l| (secs(b.start_ns + perf.bucket_ns / 2), pick(&l))))
            .collect();
        chart.line(&points, PALETTE[i], label);
    }
    chart.finish()
}

/// Ok and failed/indeterminate ops per second.
pub(super) fn throughput(perf: &PerfStats) -> String {
    let per_s = secs(perf.bucket_ns);
    let rate = |n: u64| n as f64 / per_s;
    let series = |count: fn(&Tally) -> u64| -> Vec<Option<(f64, f64)>> {
        perf.buckets.iter().map(|b| Some((secs(b.start_ns + perf.bucket_ns / 2), rate(count(&b.tally))))).collect()
    };
    let ok = series(|t| t.ok);
    let bad = series(|t| t.fail + t.info);
    let y_max = ok.iter().chain(&bad).flatten().map(|p| p.1).fold(0.0, f64::max);
    let mut chart = Chart::numeric("Throughput (ops per second, by invoke time)", run_seconds(perf), y_max, "ops/s");
    shade_faults(&mut chart, perf);
    chart.line(&ok, PALETTE[2], "ok/s");
    chart.line(&bad, "#d62728", "fail+info/s");
    chart.finish()
}

/// One parked interval of a worker process: from a `parked` event to the next event that
/// restores a lease (or the end of the run).
struct Parked {
    from_ns: u64,
    to_ns: u64,
    reason: String,
}

fn parked_intervals(events: &[Event], end_ns: u64) -> BTreeMap<&str, Vec<Parked>> {
    let mut out: BTreeMap<&str, Vec<Parked>> = BTreeMap::new();
    let mut open: BTreeMap<&str, (u64, String)> = BTreeMap::new();
    let mut lease_events: Vec<_> = history::lease_events(events).collect();
    lease_events.sort_by_key(|e| e.time_ns);
    for e in lease_events {
        let worker = e.worker.as_str();
        out.entry(worker).or_default();
        match e.event {
            LeaseEventKind::Parked => {
                open.entry(worker).or_insert_with(|| (e.time_ns, e.reason.clone().unwrap_or_default()));
            }
            LeaseEventKind::Resumed | LeaseEventKind::Acquired | LeaseEventKind::Renewed | LeaseEventKind::Restated => {
                if let Some((from_ns, reason)) = open.remove(worker) {
                    out.entry(worker).or_default().push(Parked { from_ns, to_ns: e.time_ns, reason });
                }
            }
            LeaseEventKind::Released => {}
        }
    }
    for (worker, (from_ns, reason)) in open {
        out.entry(worker).or_default().push(Parked { from_ns, to_ns: end_ns, reason });
    }
    out
}

/// Parked intervals per worker process.
pub(super) fn parked(events: &[Event], perf: &PerfStats) -> String {
    let intervals = parked_intervals(events, perf.end_ns);
    let rows: Vec<String> = intervals.keys().map(|w| w.to_string()).collect();
    let mut chart = Chart::rows("Parked intervals per worker process", run_seconds(perf), rows);
    shade_faults(&mut chart, perf);
    for (row, spans) in intervals.values().enumerate() {
        for p in spans {
            let hover = format!("parked {} from {:.3}s to {:.3}s", p.reason, secs(p.from_ns), secs(p.to_ns));
            chart.bar(row, (secs(p.from_ns), secs(p.to_ns)), "#d62728", &p.reason, &hover);
        }
    }
    chart.finish()
}

/// What the lease events say about one (worker ID, token).
struct Span<'a> {
    holder: &'a str,
    from_ns: u64,
    to_ns: u64,
    /// A released lease ends at its release, whatever deadline it had.
    released_ns: Option<u64>,
}

impl Span<'_> {
    fn end_ns(&self) -> u64 {
        self.released_ns.unwrap_or(self.to_ns)
    }
}

/// Lease spans per worker ID: one bar per token from its first to its last event (or its
/// harness-clock deadline, unless released), coloured by holder.
pub(super) fn leases(events: &[Event], perf: &PerfStats) -> String {
    let mut spans: BTreeMap<u32, BTreeMap<u64, Span>> = BTreeMap::new();
    for e in history::lease_events(events) {
        let to_ns = e.deadline_mono_ns.unwrap_or(e.time_ns).max(e.time_ns);
        let span = spans.entry(e.worker_id).or_default().entry(e.token).or_insert(Span {
            holder: &e.worker,
            from_ns: e.time_ns,
            to_ns,
            released_ns: None,
        });
        span.from_ns = span.from_ns.min(e.time_ns);
        span.to_ns = span.to_ns.max(to_ns);
        if e.event == LeaseEventKind::Released {
            span.released_ns = Some(e.time_ns);
        }
    }
    let mut holders: Vec<&str> = spans.values().flat_map(|t| t.values().map(|s| s.holder)).collect();
    holders.sort_unstable();
    holders.dedup();
    let rows: Vec<String> = spans.keys().map(|w| format!("worker ID {w}")).collect();
    let mut chart = Chart::rows("Lease spans per worker ID (colour = holder)", run_seconds(perf), rows);
    shade_faults(&mut chart, perf);
    for (row, tokens) in spans.values().enumerate() {
        for (token, span) in tokens {
            let color =
                holders.iter().position(|h| *h == span.holder).map_or(PALETTE[0], |i| PALETTE[i % PALETTE.len()]);
            let hover = format!(
                "token {token}, holder {}, {:.3}s to {:.3}s",
                span.holder,
                secs(span.from_ns),
                secs(span.end_ns())
            );
            chart.bar(
                row,
                (secs(span.from_ns), secs(span.end_ns())),
                color,
                &format!("{} t{token}", span.holder),
                &hover,
            );
        }
    }
    chart.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::testkit::{H, MS};
    use crate::history::LeaseEventKind::{Acquired, Parked, Resumed};

    /// Goal: parked → resumed makes one interval; a park never resumed lasts to the end.
    #[test]
    fn parked_intervals_pair_park_with_resume() {
        let mut h = H::default();
        h.lease("w1", Acquired, (1, 10), Some(100), 0);
        h.lease("w1", Parked, (1, 10), Some(100), 100);
        h.lease("w1", Parked, (1, 10), Some(100), 150);
        h.lease("w1", Resumed, (1, 10), Some(900), 300);
        h.lease("w2", Parked, (2, 11), None, 400);
        let intervals = parked_intervals(&h.events, 1000 * MS);
        let spans = |w: &str| intervals[w].iter().map(|p| (p.from_ns / MS, p.to_ns / MS)).collect::<Vec<_>>();
        assert_eq!(spans("w1"), vec![(100, 300)]);
        assert_eq!(spans("w2"), vec![(400, 1000)]);
    }
}
