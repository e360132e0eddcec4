//! The deployment files name only metrics the code exports: every `fenceflake_*` name in
//! `deploy/prometheus/alerts.yml`, its promtool tests, `deploy/grafana/fenceflake.json` and the
//! runbooks in `docs/failure-modes.md` is a family that a real registry node and a real worker
//! serve on `--metrics-addr` (declared by a `# TYPE` line from the first scrape on, before
//! anything happened). Every alert carries a severity, a summary, a description and a
//! `runbook_url` whose anchor is a heading of a runbook (`docs/failure-modes.md`, or
//! `docs/security.md` for the TLS alerts), and has a firing and a quiet promtool case;
//! `check.sh` runs those promtool cases when promtool is installed.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fenceflake_tests::cluster::Cluster;
use fenceflake_tests::worker::WorkerProcess;
use fenceflake_tests::{eventually, free_port};

const ALERTS: &str = "deploy/prometheus/alerts.yml";
const ALERTS_TEST: &str = "deploy/prometheus/alerts_test.yml";
const DASHBOARD: &str = "deploy/grafana/fenceflake.json";
const FAILURE_MODES: &str = "docs/failure-modes.md";
/// The runbook of the TLS alerts (certificate expiry, plaintext).
const SECURITY: &str = "docs/security.md";
/// The docs an alert's `runbook_url` may point into.
const RUNBOOKS: [&str; 2] = [FAILURE_MODES, SECURITY];
const SEVERITIES: [&str; 2] = ["page", "ticket"];
/// The runbook sections of the seed's five failure modes: each must be some alert's target.
const SEED_SECTIONS: [&str; 5] = [
    "clock-steps-backward",
    "two-workers-hold-the-same-worker-id",
    "registry-outage",
    "sequence-saturation",
    "restart-replays-a-hot-millisecond",
];
/// Series a histogram family exports besides its name.
const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ lives in the workspace").to_path_buf()
}

fn read(rel: &str) -> String {
    let path = workspace_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The body of `GET /metrics` at `addr`, if it answers 200 now.
fn scrape(addr: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    let (head, body) = reply.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// Scrape `addr` until it answers (the worker serves metrics once it holds a lease).
async fn scrape_eventually(addr: &str, what: &str) -> String {
    eventually(Duration::from_secs(30), what, || {
        let addr = addr.to_string();
        async move { tokio::task::spawn_blocking(move || scrape(&addr)).await.ok().flatten() }
    })
    .await
}

/// Metric families and their types, from the `# TYPE name type` lines of an exposition.
fn families(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("# TYPE ")?.split_whitespace();
            Some((words.next()?.to_string(), words.next()?.to_string()))
        })
        .collect()
}

/// Every `fenceflake_[a-z0-9_]+` identifier in `text` that does not continue another word.
fn metric_names(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut names = BTreeSet::new();
    let mut from = 0;
    while let Some(offset) = text[from..].find("fenceflake_") {
        let start = from + offset;
        let continues_a_word = start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let len =
            text[start..].bytes().take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_').count();
        if !continues_a_word {
            names.insert(text[start..start + len].to_string());
        }
        from = start + len;
    }
    names
}

/// Whether `name` is an exported family, or a `_bucket`/`_sum`/`_count` series of a histogram.
fn is_exported(name: &str, families: &BTreeMap<String, String>) -> bool {
    families.contains_key(name)
        || HISTOGRAM_SUFFIXES.iter().any(|suffix| {
            name.strip_suffix(suffix).is_some_and(|base| families.get(base).is_some_and(|t| t == "histogram"))
        })
}

/// The anchors GitHub gives the Markdown headings of `md` (outside code fences): lower case,
/// punctuation dropped, spaces turned into hyphens.
fn heading_anchors(md: &str) -> BTreeSet<String> {
    let mut anchors = BTreeSet::new();
    let mut in_fence = false;
    for line in md.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        let Some(title) = line.strip_prefix('#').filter(|_| !in_fence) else { continue };
        let title = title.trim_start_matches('#').trim();
        let anchor: String = title
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c.to_ascii_lowercase()),
                _ => None,
            })
            .collect();
        anchors.insert(anchor);
    }
    anchors
}

/// One alerting rule as alerts.yml spells it (one key per line, as in the file).
#[derive(Debug, Default)]
struct AlertRule {
    name: String,
    fields: BTreeMap<String, String>,
}

/// The alerting rules of alerts.yml: a rule runs from its `- alert:` line to the next rule
/// or group.
fn alert_rules(yaml: &str) -> Vec<AlertRule> {
    let mut rules: Vec<AlertRule> = Vec::new();
    for line in yaml.lines() {
        let trimmed = line.trim();
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            rules.push(AlertRule { name: name.trim().to_string(), ..AlertRule::default() });
        } else if trimmed.starts_with("- name:") || trimmed.starts_with("- record:") {
            if let Some(rule) = rules.last_mut() {
                rule.fields.insert("(end)".into(), String::new());
            }
        } else if let Some(rule) = rules.last_mut().filter(|r| !r.fields.contains_key("(end)")) {
            if let Some((key, value)) = trimmed.split_once(':') {
                let value = value.trim().trim_matches('"').to_string();
                rule.fields.entry(key.to_string()).or_insert(value);
            }
        }
    }
    rules
}

/// Per alert name, whether alerts_test.yml evaluates it quiet (`exp_alerts: []`) and firing.
fn promtool_cases(yaml: &str) -> BTreeMap<String, (bool, bool)> {
    let mut cases: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in yaml.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("alertname:") {
            current = Some(name.trim().to_string());
        } else if let Some(expected) = line.strip_prefix("exp_alerts:") {
            let name = current.take().unwrap_or_else(|| panic!("{ALERTS_TEST}: exp_alerts without an alertname"));
            let entry = cases.entry(name).or_default();
            if expected.trim() == "[]" {
                entry.0 = true;
            } else {
                entry.1 = true;
            }
        }
    }
    cases
}

/// Goal: every metric name an alert, a promtool test, a dashboard panel or a runbook uses is
/// a family that a live registry node and a live worker export with a `# TYPE` line, from the
/// first scrape on (the registry is scraped before any request, so no family appears lazily).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_deploy_files_name_is_exported() {
    let registry_metrics = format!("127.0.0.1:{}", free_port());
    let cluster = Cluster::start(1, &["--metrics-addr", &registry_metrics]).await;
    let registry_text = scrape_eventually(&registry_metrics, "registry /metrics").await;
    eprintln!("phase: registry scraped before any lease; starting a worker");
    let worker_metrics = format!("127.0.0.1:{}", free_port());
    let worker =
        WorkerProcess::spawn(&cluster, "metrics", &cluster.client_addrs(), &["--metrics-addr", &worker_metrics]);
    let worker_text = scrape_eventually(&worker_metrics, "worker /metrics").await;
    worker.wait_serving(Duration::from_secs(15)).await;

    let mut exported = families(&registry_text);
    let registry_count = exported.len();
    let worker_families = families(&worker_text);
    let worker_count = worker_families.len();
    exported.extend(worker_families);
    assert!(registry_count > 10 && worker_count > 10, "few families: registry {registry_count}, worker {worker_count}");
    eprintln!("phase: {registry_count} registry and {worker_count} worker families exported");

    let mut used = BTreeSet::new();
    let mut failures = Vec::new();
    for file in [ALERTS, ALERTS_TEST, DASHBOARD, FAILURE_MODES] {
        let names = metric_names(&read(file));
        assert!(names.len() >= 10, "{file} names only {} metrics: {names:?}", names.len());
        let missing: Vec<&String> = names.iter().filter(|n| !is_exported(n, &exported)).collect();
        if !missing.is_empty() {
            failures.push(format!("{file} names metrics no process exports: {missing:?}"));
        }
        used.extend(names);
    }
    let unused: Vec<&String> = exported.keys().filter(|f| !used.iter().any(|u| u.starts_with(f.as_str()))).collect();
    eprintln!("phase: exported families no deploy file uses: {unused:?}");
    assert!(failures.is_empty(), "{}\nexported families: {:?}", failures.join("\n"), exported.keys());
}

/// Goal: every alert has a page/ticket severity, a summary and a description, a runbook_url
/// into docs/failure-modes.md whose anchor is one of its headings, and a firing and a quiet
/// promtool case; each seed failure mode's section is some alert's runbook.
#[test]
fn every_alert_has_a_severity_a_runbook_section_and_promtool_cases() {
    let rules = alert_rules(&read(ALERTS));
    assert!(rules.len() >= 20, "{ALERTS}: only {} alerts found", rules.len());
    let anchors: BTreeMap<&str, BTreeSet<String>> =
        RUNBOOKS.iter().map(|doc| (*doc, heading_anchors(&read(doc)))).collect();
    let cases = promtool_cases(&read(ALERTS_TEST));
    let mut targets = BTreeSet::new();
    let mut failures = Vec::new();
    for rule in &rules {
        let name = &rule.name;
        let severity = rule.fields.get("severity").map(String::as_str);
        if !severity.is_some_and(|s| SEVERITIES.contains(&s)) {
            failures.push(format!("{name}: severity {severity:?} is not one of {SEVERITIES:?}"));
        }
        for key in ["summary", "description"] {
            if rule.fields.get(key).is_none_or(|v| v.is_empty()) {
                failures.push(format!("{name}: no {key} annotation"));
            }
        }
        let url = rule.fields.get("runbook_url").map(String::as_str).unwrap_or_default();
        let runbook = url
            .split_once('#')
            .and_then(|(page, anchor)| RUNBOOKS.iter().find(|doc| page.ends_with(**doc)).map(|doc| (*doc, anchor)));
        match runbook {
            Some((doc, anchor)) => {
                if !anchors[doc].contains(anchor) {
                    failures.push(format!("{name}: runbook anchor #{anchor} is no heading of {doc}"));
                }
                if doc == FAILURE_MODES {
                    targets.insert(anchor.to_string());
                }
            }
            None => failures.push(format!("{name}: runbook_url {url:?} does not point into one of {RUNBOOKS:?}#…")),
        }
        match cases.get(name) {
            Some((true, true)) => {}
            other => failures.push(format!("{name}: {ALERTS_TEST} needs a quiet and a firing case, has {other:?}")),
        }
    }
    for section in SEED_SECTIONS {
        if !targets.contains(section) {
            failures.push(format!("seed failure mode #{section}: no alert's runbook_url points at it"));
        }
    }
    assert!(failures.is_empty(), "{}\nheadings of the runbooks: {anchors:?}", failures.join("\n"));
}

/// Goal: `deploy/prometheus/check.sh` passes (promtool accepts the rules and every unit test
/// of alerts_test.yml holds). Skipped, saying so, where promtool is not installed (failed
/// instead where every test must run: CI).
#[test]
fn promtool_checks_and_unit_tests_pass() {
    let promtool = std::process::Command::new("promtool").arg("--version").output();
    if !promtool.is_ok_and(|out| out.status.success()) {
        fenceflake_tests::skip_unless_required("the promtool alert checks", "promtool (Debian prometheus)");
        return;
    }
    let out = std::process::Command::new(workspace_root().join("deploy/prometheus/check.sh"))
        .output()
        .expect("run deploy/prometheus/check.sh");
    assert!(
        out.status.success(),
        "deploy/prometheus/check.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Goal: the extraction helpers of this file do what the checks above rely on.
#[test]
fn helpers_extract_names_types_and_anchors() {
    let names =
        metric_names("rate(fenceflake_a_total[5m]) / x_fenceflake_b + Fenceflake_c fenceflake_d_bucket{le=\"1\"}");
    assert_eq!(names, BTreeSet::from(["fenceflake_a_total".to_string(), "fenceflake_d_bucket".to_string()]));
    let fams =
        families("# HELP fenceflake_d x\n# TYPE fenceflake_d histogram\n# TYPE fenceflake_e gauge\nfenceflake_e 1\n");
    assert!(is_exported("fenceflake_d_bucket", &fams) && is_exported("fenceflake_d", &fams));
    assert!(!is_exported("fenceflake_e_count", &fams) && !is_exported("fenceflake_f", &fams));
    let anchors = heading_anchors("# Top\n## Canary hit: two holders (`x`)\n```\n# not a heading\n```\n");
    assert_eq!(anchors, BTreeSet::from(["top".to_string(), "canary-hit-two-holders-x".to_string()]));
}
