//! The run's report: `results.json` (verdicts, evidence and numbers for machines) and a
//! self-contained `report.html` (inline CSS and SVG, no scripts, no network) for humans:
//! verdict table with evidence, performance per phase, latency and throughput over time,
//! parked intervals, lease spans, the fault list, and the command that reproduces the run.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::checker::adversary::CallCounts;
use crate::checker::availability;
use crate::checker::perf::{PerfStats, Tally};
use crate::checker::{Analysis, CheckResult};
use crate::history::{self, Event};

mod charts;
mod svg;

use svg::escape;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot encode results: {0}")]
    Encode(#[source] serde_json::Error),
}

/// Where the report files went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportPaths {
    pub results_json: PathBuf,
    pub report_html: PathBuf,
}

/// How the run was made: the command that reproduces it, and whether every process ran with
/// mutual TLS (`None`: not recorded, e.g. a history re-checked without its results).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    pub reproduce: String,
    pub tls: Option<bool>,
}

impl Provenance {
    /// What the report says about the transport.
    fn transport(&self) -> &'static str {
        match self.tls {
            Some(true) => "mutual TLS, one certificate per process (the run's own CA)",
            Some(false) => "PLAINTEXT: every process ran --insecure",
            None => "not recorded",
        }
    }
}

/// The machine-readable results: overall verdict, reproduce command, transport, every check,
/// the perf numbers.
pub fn results_json(analysis: &Analysis, provenance: &Provenance) -> Value {
    json!({
        "valid": analysis.valid(),
        "reproduce": provenance.reproduce,
        "tls": provenance.tls,
        "checks": analysis.results,
        "perf": analysis.perf,
        "availability": analysis.availability,
        "adversary": analysis.adversary,
    })
}

/// The `tls` a previous `results.json` in `dir` recorded, if any (so re-checking a history
/// keeps it).
pub fn recorded_tls(dir: &Path) -> Option<bool> {
    let text = std::fs::read_to_string(dir.join("results.json")).ok()?;
    serde_json::from_str::<Value>(&text).ok()?["tls"].as_bool()
}

/// Writes `results.json` and `report.html` into `dir` (which must exist).
pub fn write(
    dir: &Path,
    events: &[Event],
    analysis: &Analysis,
    provenance: &Provenance,
) -> Result<ReportPaths, ReportError> {
    let paths = ReportPaths { results_json: dir.join("results.json"), report_html: dir.join("report.html") };
    let results = serde_json::to_string_pretty(&results_json(analysis, provenance)).map_err(ReportError::Encode)?;
    write_file(&paths.results_json, &results)?;
    write_file(&paths.report_html, &render_html(events, analysis, provenance))?;
    Ok(paths)
}

fn write_file(path: &Path, text: &str) -> Result<(), ReportError> {
    std::fs::write(path, text).map_err(|source| ReportError::Io { path: path.to_path_buf(), source })
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;max-width:1000px;color:#222}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}\
.v-true{background:#d4edda}.v-false{background:#f8d7da}.v-unknown{background:#fff3cd}\
code,pre{background:#f4f4f4;padding:2px 4px}pre{white-space:pre-wrap;max-height:30em;overflow:auto}\
h1 span{padding:2px 8px;border-radius:4px}";

/// The whole HTML page.
pub fn render_html(events: &[Event], analysis: &Analysis, provenance: &Provenance) -> String {
    let verdict = analysis.valid();
    let mut html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Fenceflake Jepsen report</title>\
         <style>{STYLE}</style></head><body>\
         <h1>Fenceflake Jepsen run: <span class=\"v-{v}\">valid = {v}</span></h1>\
         <p id=\"reproduce\">Reproduce: <code>{}</code></p>\
         <p id=\"transport\">Transport: {}</p>",
        escape(&provenance.reproduce),
        provenance.transport(),
        v = verdict.as_str(),
    );
    html.push_str("<h2 id=\"checks\">Checks</h2>");
    html.push_str(&checks_table(&analysis.results));
    if !analysis.adversary.is_empty() {
        html.push_str("<h2 id=\"adversary\">Forged calls (adversary)</h2>");
        html.push_str(&adversary_table(&analysis.adversary));
    }
    html.push_str("<h2 id=\"performance\">Performance per phase</h2>");
    html.push_str(&perf_table(&analysis.perf));
    if !analysis.availability.windows.is_empty() {
        html.push_str("<h2 id=\"availability\">Availability while a worker is paused</h2>");
        html.push_str(&availability_table(&analysis.availability));
    }
    let sections = [
        ("latency", "Latency over time", charts::latency(&analysis.perf)),
        ("throughput", "Throughput over time", charts::throughput(&analysis.perf)),
        ("parked", "Parked workers", charts::parked(events, &analysis.perf)),
        ("leases", "Lease timeline per worker ID", charts::leases(events, &analysis.perf)),
    ];
    for (id, title, svg) in sections {
        let _ = write!(html, "<h2 id=\"{id}\">{title}</h2>{svg}");
    }
    html.push_str("<h2 id=\"faults\">Faults</h2>");
    html.push_str(&faults_table(&analysis.perf));
    html.push_str("<h2 id=\"processes\">Worker exits, restarts and copies</h2>");
    html.push_str(&processes_table(events));
    let _ = write!(html, "<p>{} events in the history.</p></body></html>", events.len());
    html
}

fn checks_table(results: &[CheckResult]) -> String {
    let mut html = String::from("<table><tr><th>check</th><th>valid</th><th>summary</th><th>evidence</th></tr>");
    for r in results {
        let evidence = if r.evidence.is_empty() {
            String::new()
        } else {
            let items: Vec<String> =
                r.evidence.iter().map(|e| serde_json::to_string_pretty(e).unwrap_or_default()).collect();
            format!(
                "<details><summary>{} items</summary><pre>{}</pre></details>",
                r.evidence.len(),
                escape(&items.join("\n"))
            )
        };
        let _ = write!(
            html,
            "<tr class=\"v-{v}\"><td>{}</td><td>{v}</td><td>{}</td><td>{evidence}</td></tr>",
            escape(&r.name),
            escape(&r.summary),
            v = r.valid.as_str()
        );
    }
    html.push_str("</table>");
    html
}

/// Per kind of forged call: how many were tried and how each ended (a call that never
/// connected proves nothing), and which registry nodes answered.
fn adversary_table(counts: &[CallCounts]) -> String {
    let mut html = String::from(
        "<p>A client with a valid <code>worker</code> certificate of the run's CA (its own identity) \
         forged these calls against the other workers' leases and the operator RPCs.</p>\
         <table><tr><th>forged call</th><th>attempted</th><th>refused</th><th>accepted</th>\
         <th>inconclusive</th><th>never connected</th><th>nodes that answered</th></tr>",
    );
    for c in counts {
        let class = if c.accepted > 0 {
            "v-false"
        } else if c.conclusive() == 0 {
            "v-unknown"
        } else {
            "v-true"
        };
        let _ = write!(
            html,
            "<tr class=\"{class}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(c.label),
            c.attempted,
            c.refused,
            c.accepted,
            c.inconclusive,
            c.never_connected,
            escape(&c.nodes.join(" "))
        );
    }
    html.push_str("</table>");
    html
}

fn perf_table(perf: &PerfStats) -> String {
    let mut html = String::from(
        "<table><tr><th>phase</th><th>ok</th><th>fail</th><th>info</th><th>availability</th>\
         <th>p50 ms</th><th>p99 ms</th><th>max ms</th><th>IDs</th></tr>",
    );
    let ms = |t: &Tally, pick: fn(&crate::checker::perf::Latency) -> f64| {
        t.latency.map_or("-".into(), |l| format!("{:.2}", pick(&l)))
    };
    for p in &perf.phases {
        let t = &p.tally;
        let availability = t.availability.map_or("-".to_string(), |a| format!("{:.3}%", a * 100.0));
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{availability}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            p.phase,
            t.ok,
            t.fail,
            t.info,
            ms(t, |l| l.p50_ms),
            ms(t, |l| l.p99_ms),
            ms(t, |l| l.max_ms),
            t.ids
        );
    }
    html.push_str("</table>");
    html
}

/// What a caller saw while a worker was paused: one row for the judged windows.
fn availability_table(stats: &availability::Stats) -> String {
    let windows: Vec<&str> = stats.windows.iter().map(|w| w.name.as_str()).collect();
    let percent = |a: Option<f64>| a.map_or("-".to_string(), |a| format!("{:.3}%", a * 100.0));
    let number = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.1}"));
    let class = match (stats.availability, stats.min) {
        (Some(a), Some(min)) if a < min => "v-false",
        (None, _) => "v-unknown",
        _ => "v-true",
    };
    format!(
        "<p>ID calls invoked while the worker was stopped; latency of every call that ended, ok or not.</p>\
         <table><tr><th>windows</th><th>calls</th><th>ok</th><th>availability</th><th>minimum</th>\
         <th>p50 ms</th><th>p99 ms</th><th>max ms</th><th>ok/s</th><th>ok/s before the faults</th></tr>\
         <tr class=\"{class}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
         <td>{}</td><td>{}</td><td>{}</td></tr></table>",
        escape(&windows.join(" ")),
        stats.calls,
        stats.ok,
        percent(stats.availability),
        percent(stats.min),
        number(stats.latency.map(|l| l.p50_ms)),
        number(stats.latency.map(|l| l.p99_ms)),
        number(stats.latency.map(|l| l.max_ms)),
        number(stats.ok_per_sec),
        number(stats.nominal_ok_per_sec),
    )
}

fn faults_table(perf: &PerfStats) -> String {
    if perf.nemesis.is_empty() {
        return "<p>No faults were injected.</p>".to_string();
    }
    let mut html = String::from("<table><tr><th>nemesis</th><th>start s</th><th>stop s</th><th>detail</th></tr>");
    for w in &perf.nemesis {
        let stop = w.stop_ns.map_or("(still on at the end)".to_string(), |s| format!("{:.3}", s as f64 / 1e9));
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{:.3}</td><td>{stop}</td><td>{}</td></tr>",
            escape(&w.name),
            w.start_ns as f64 / 1e9,
            escape(&w.detail)
        );
    }
    html.push_str("</table>");
    html
}

/// What the restart-always supervision saw (not the nemesis's kills, which are faults).
fn processes_table(events: &[Event]) -> String {
    let mut rows = history::process_events(events).peekable();
    if rows.peek().is_none() {
        return "<p>No worker exited by itself, and no state dir was copied.</p>".to_string();
    }
    let mut html = String::from("<table><tr><th>process</th><th>at s</th><th>event</th><th>detail</th></tr>");
    for p in rows {
        let detail = match (p.code, &p.copy_of) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(source)) => format!("on a copy of {source}'s state dir"),
            (None, None) => String::new(),
        };
        let event = format!("{:?}", p.event).to_lowercase();
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{:.3}</td><td>{}</td><td>{}</td></tr>",
            escape(&p.process),
            p.time_ns as f64 / 1e9,
            escape(&event),
            escape(&detail)
        );
    }
    html.push_str("</table>");
    html
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::testkit::{id, H};
    use crate::checker::{check_all, CheckConfig};
    use crate::history::LeaseEventKind::{Acquired, Parked, Resumed};
    use crate::history::NemesisPhase::{Start, Stop};

    fn sample() -> Vec<Event> {
        let mut h = H::default();
        h.lease("w1", Acquired, (1, 100), Some(3000), 0).mono_deadline(3000);
        h.ok("w1", 1, (100, 102), &[(id(100, 1, 0), 10)], Some((1, 100)));
        h.nemesis(Start, "quorum-loss", 1000);
        h.lease("w1", Parked, (1, 100), Some(3000), 3000);
        h.not_ok("w1", 1, (3100, 3101), crate::history::Phase::Fail);
        h.nemesis(Stop, "quorum-loss", 4000);
        h.process("w2", crate::history::ProcessEventKind::Exited, None, 4500);
        h.lease("w1", Resumed, (1, 100), Some(9000), 4200).mono_deadline(9000);
        h.ok("w1", 1, (4300, 4302), &[(id(4300, 1, 0), 10)], Some((1, 100)));
        h.events
    }

    /// Goal: both files are written, the HTML has every section with real SVG content, and
    /// the reproduce line is escaped verbatim.
    #[test]
    fn report_files_contain_the_key_sections() {
        let events = sample();
        let analysis = check_all(&events, &CheckConfig::default());
        let dir = tempfile::tempdir().unwrap();
        let reproduce = "fenceflake-jepsen run --scenario quorum-loss --seed 42 --time-limit 60s <x>";
        let provenance = Provenance { reproduce: reproduce.into(), tls: Some(true) };
        let paths = write(dir.path(), &events, &analysis, &provenance).unwrap();

        let html = std::fs::read_to_string(&paths.report_html).unwrap();
        for section in [
            "id=\"checks\"",
            "id=\"latency\"",
            "id=\"throughput\"",
            "id=\"parked\"",
            "id=\"leases\"",
            "id=\"faults\"",
            "id=\"processes\"",
        ] {
            assert!(html.contains(section), "missing {section}");
        }
        assert_eq!(html.matches("<svg").count(), 4);
        assert!(html.contains("--seed 42 --time-limit 60s &lt;x&gt;"));
        assert!(html.contains("Transport: mutual TLS"));
        assert!(html.contains("class=\"fault\""), "nemesis intervals are shaded");
        assert!(html.contains("LEASE_EXPIRED"), "the parked interval is drawn with its reason");
        assert!(html.contains("w1 t100"), "the lease span is labelled");
        assert!(html.contains("<td>exited</td><td>exit code 1</td>"), "the exit is listed apart from the faults");
        for name in [
            "unique-ids",
            "monotonic-per-worker",
            "lease-fencing",
            "registry-linearizable",
            "parking",
            "performance",
            "adversary",
            "clone-convergence",
            "registry-clock",
            "availability",
        ] {
            assert!(html.contains(name), "verdict table lacks {name}");
        }
        assert!(!html.contains("<script") && !html.contains("https://"), "self-contained");
        assert_eq!(html.matches("http://").count(), html.matches("http://www.w3.org/2000/svg").count());

        let results: Value = serde_json::from_str(&std::fs::read_to_string(&paths.results_json).unwrap()).unwrap();
        assert_eq!(results["reproduce"], reproduce);
        assert_eq!(results["tls"], true);
        assert_eq!(recorded_tls(dir.path()), Some(true), "a re-check keeps the run's transport");
        assert_eq!(results["checks"].as_array().map(Vec::len), Some(10));
        assert!(!html.contains("id=\"availability\""), "no pause, no availability table");
        assert_eq!(results["adversary"], serde_json::json!([]), "no forged calls, no table");
        assert!(!html.contains("id=\"adversary\""));
        assert_eq!(results["valid"], "true", "{}", serde_json::to_string_pretty(&results["checks"]).unwrap());
    }

    /// Goal: a failing check shows up as such, with its evidence in the page.
    #[test]
    fn violations_are_shown_with_evidence() {
        let mut events = sample();
        let mut h = H::default();
        h.ok("w2", 2, (200, 201), &[(id(100, 1, 5), 1)], None);
        events.extend(h.events);
        let analysis = check_all(&events, &CheckConfig::default());
        let html = render_html(&events, &analysis, &Provenance { reproduce: "cmd".into(), tls: Some(false) });
        assert!(html.contains("valid = false"));
        assert!(html.contains("Transport: PLAINTEXT"));
        assert!(html.contains("duplicate-ids"));
    }

    /// Goal: a run with a paused worker shows what callers saw then, in the page and in
    /// results.json, marked failed below the minimum.
    #[test]
    fn availability_while_paused_is_reported() {
        let mut h = H::default();
        h.nemesis(Start, "pause-w2", 1000).nemesis(Stop, "pause-w2", 2000);
        h.ok("w1", 1, (1100, 1102), &[(id(1100, 1, 0), 1)], Some((1, 100)));
        h.not_ok("w2", 2, (1200, 2200), crate::history::Phase::Info);
        let config = CheckConfig {
            availability: availability::Config { min: Some(0.99), ..availability::Config::default() },
            ..CheckConfig::default()
        };
        let analysis = check_all(&h.events, &config);
        let provenance = Provenance { reproduce: "cmd".into(), tls: Some(true) };
        let html = render_html(&h.events, &analysis, &provenance);
        assert!(html.contains("id=\"availability\""));
        let row = "<tr class=\"v-false\"><td>pause-w2</td><td>2</td><td>1</td><td>50.000%</td><td>99.000%</td>";
        assert!(html.contains(row), "{html}");
        let results = results_json(&analysis, &provenance);
        assert_eq!(
            (results["availability"]["calls"].as_u64(), results["availability"]["ok"].as_u64()),
            (Some(2), Some(1))
        );
        assert_eq!(results["availability"]["latency"]["max_ms"], 1000.0);
        let verdict = analysis.results.iter().find(|r| r.name == availability::NAME).unwrap();
        assert_eq!(verdict.valid, crate::checker::Valid::False);
    }

    /// Goal: a run with forged calls shows the per-call table (attempted, refused, accepted,
    /// inconclusive, never connected, nodes) in the page and in results.json, and an accepted
    /// call marks its row and the run invalid.
    #[test]
    fn forged_calls_are_counted_per_call() {
        use crate::history::{Forged, ForgedCall, ForgedOutcome};
        let mut events = sample();
        for (call, node, outcome) in [
            (Forged::Release, "n1", ForgedOutcome::Refused),
            (Forged::Release, "n2", ForgedOutcome::NeverConnected),
            (Forged::Quarantine, "n3", ForgedOutcome::Accepted),
        ] {
            let answer = "OK".to_string();
            let c = ForgedCall {
                call,
                node: node.into(),
                outcome,
                worker_id: None,
                token: None,
                request: String::new(),
                answer,
                time_ns: 5,
            };
            events.push(Event::Adversary(c));
        }
        let analysis = check_all(&events, &CheckConfig::default());
        let html = render_html(&events, &analysis, &Provenance { reproduce: "cmd".into(), tls: Some(true) });
        assert!(html.contains("id=\"adversary\""));
        assert!(html.contains("<tr class=\"v-true\"><td>Release of a worker&#39;s lease"), "{html}");
        assert!(html.contains("<td>2</td><td>1</td><td>0</td><td>0</td><td>1</td><td>n1</td>"), "{html}");
        assert!(html.contains("<tr class=\"v-false\"><td>Quarantine"), "{html}");
        assert!(html.contains("valid = false"));
        let results = results_json(&analysis, &Provenance { reproduce: "cmd".into(), tls: Some(true) });
        let rows = results["adversary"].as_array().unwrap();
        assert_eq!(rows.len(), Forged::ALL.len());
        assert_eq!(rows[2]["call"], "release");
        assert_eq!((rows[2]["attempted"].as_u64(), rows[2]["never_connected"].as_u64()), (Some(2), Some(1)));
    }
}
