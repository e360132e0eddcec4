//! `compare`: our JSON lines against the etcd rows that ../shared/bench/peers wrote in the same
//! run (`etcd.jsonl`, `failover.jsonl`), as markdown tables with ratios, targets and verdicts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use serde_json::Value;

use crate::stats::median;

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Our JSON lines (from `registry --out` and `failover --out`).
    #[arg(long)]
    pub ours: PathBuf,
    /// The peers' results directory (holds etcd.jsonl and failover.jsonl).
    #[arg(long)]
    pub peers: PathBuf,
    /// Our profiles compared with etcd, one throughput table each.
    #[arg(long, value_delimiter = ',', default_value = "default")]
    pub profile: Vec<String>,
}

fn read_jsonl(path: &Path) -> anyhow::Result<Vec<Value>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| serde_json::from_str(l).with_context(|| format!("a line of {}", path.display())))
        .collect()
}

/// A number field that peers.py may have written as a string ("64").
fn num(v: &Value) -> Option<f64> {
    v.as_f64().or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

fn fmt(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "n/a".into(), |x| format!("{x:.digits$}"))
}

fn fmt_ops(x: Option<f64>) -> String {
    let Some(x) = x else { return "n/a".into() };
    let s = format!("{:.0}", x.round());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "n/a",
    }
}

/// Median throughput, p50 and p99 (ms) over our rows of (op, clients, profile).
fn ours_load(rows: &[Value], op: &str, clients: u64, profile: &str) -> (Option<f64>, Option<f64>, Option<f64>) {
    let rs: Vec<&Value> = rows
        .iter()
        .filter(|r| r["kind"] == "load" && r["op"] == op && r["clients"].as_u64() == Some(clients))
        .filter(|r| r["profile"] == profile)
        .collect();
    let pick = |f: &str| median(&rs.iter().filter_map(|r| r["result"][f].as_f64()).collect::<Vec<_>>());
    (pick("ops_per_s"), pick("p50_ms"), pick("p99_ms"))
}

/// Same for etcd rows of `bench` (latencies converted from µs).
fn etcd_load(rows: &[Value], bench: &str, clients: u64) -> (Option<f64>, Option<f64>, Option<f64>) {
    let rs: Vec<&Value> = rows
        .iter()
        .filter(|r| r["bench"] == bench && num(&r["clients"]) == Some(clients as f64) && r["profile"] == "default")
        .collect();
    let pick = |f: &str, scale: f64| {
        median(&rs.iter().filter_map(|r| r["result"][f].as_f64().map(|x| x * scale)).collect::<Vec<_>>())
    };
    (pick("ops_per_s", 1.0), pick("p50_us", 1e-3), pick("p99_us", 1e-3))
}

pub fn run(a: &CompareArgs) -> anyhow::Result<String> {
    let ours = read_jsonl(&a.ours)?;
    let etcd = read_jsonl(&a.peers.join("etcd.jsonl"))?;
    let etcd_fail = read_jsonl(&a.peers.join("failover.jsonl"))?;
    let mut out = Vec::new();

    for profile in &a.profile {
        throughput_table(&mut out, &ours, &etcd, profile);
    }
    stability_table(&mut out, &ours);
    failover_table(&mut out, &ours, &etcd_fail);
    Ok(out.join("\n"))
}

fn throughput_table(out: &mut Vec<String>, ours: &[Value], etcd: &[Value], profile: &str) {
    let clients: BTreeSet<u64> = ours
        .iter()
        .filter(|r| r["kind"] == "load" && r["profile"] == profile)
        .filter_map(|r| r["clients"].as_u64())
        .collect();
    if clients.is_empty() {
        return;
    }
    out.push(format!(
        "### Throughput and latency: Fenceflake (profile `{profile}`) vs etcd 3.4 (defaults), 5 nodes on loopback, closed loop\n"
    ));
    out.push("| ours vs etcd | clients | ours ops/s | etcd ops/s | ratio (target ≥ 2) | ours p50 / p99 ms | etcd p50 / p99 ms | p99 ratio (target ≤ 0.5) | throughput met? | p99 met? |".into());
    out.push("|---|---:|---:|---:|---:|---:|---:|---:|---|---|".into());
    for (op, bench, label) in
        [("renew", "etcd-keepalive", "renew vs lease keepalive"), ("acquire", "etcd-claim", "acquire vs txn claim")]
    {
        for &c in &clients {
            let (o_ops, o_p50, o_p99) = ours_load(ours, op, c, profile);
            let (e_ops, e_p50, e_p99) = etcd_load(etcd, bench, c);
            if o_ops.is_none() && e_ops.is_none() {
                continue;
            }
            let ratio = o_ops.zip(e_ops).map(|(o, e)| o / e);
            let p99_ratio = o_p99.zip(e_p99).map(|(o, e)| o / e);
            out.push(format!(
                "| {label} | {c} | {} | {} | {}× | {} / {} | {} / {} | {}× | {} | {} |",
                fmt_ops(o_ops),
                fmt_ops(e_ops),
                fmt(ratio, 2),
                fmt(o_p50, 2),
                fmt(o_p99, 2),
                fmt(e_p50, 2),
                fmt(e_p99, 2),
                fmt(p99_ratio, 2),
                verdict(ratio.map(|r| r >= 2.0)),
                verdict(p99_ratio.map(|r| r <= 0.5)),
            ));
        }
    }
    out.push(String::new());
}

fn stability_table(out: &mut Vec<String>, ours: &[Value]) {
    out.push("### Raft work and stability under load (ours)\n".into());
    out.push("| profile | op | clients | ops/s | errors | Raft writes/s | entries in window | commands / entry | term before → after | leader changed | CPU cores servers / client / other |".into());
    out.push("|---|---|---:|---:|---:|---:|---:|---:|---|---|---|".into());
    for r in ours.iter().filter(|r| r["kind"] == "load") {
        let raft = &r["raft"];
        let writes = r["raft_writes_per_s"].as_f64().or(r["result"]["ops_per_s"].as_f64());
        out.push(format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} → {} | {} | {} / {} / {} |",
            r["profile"].as_str().unwrap_or("?"),
            r["op"].as_str().unwrap_or("?"),
            r["clients"],
            fmt_ops(r["result"]["ops_per_s"].as_f64()),
            r["result"]["errors"].as_u64().unwrap_or(0) + r["release"]["errors"].as_u64().unwrap_or(0),
            fmt_ops(writes),
            raft["entries_in_window"],
            fmt(raft["commands_per_entry"].as_f64(), 1),
            raft["before"]["term"],
            raft["after"]["term"],
            if raft["leader_changed"].as_bool().unwrap_or(false) { "**yes**" } else { "no" },
            fmt(r["cpu"]["servers_cores"].as_f64(), 2),
            fmt(r["cpu"]["client_cores"].as_f64(), 2),
            fmt(r["cpu"]["other_cores"].as_f64(), 2),
        ));
    }
    out.push(String::new());
}

fn failover_table(out: &mut Vec<String>, ours: &[Value], etcd_fail: &[Value]) {
    out.push(
        "### Failover gap: SIGKILL of the leader → first successful write started after it (probe every 10 ms)\n"
            .into(),
    );
    out.push("| system | profile | write probed | trials | median ms | min–max ms | single trials ms | new leader seen, median ms | target < 400 ms |".into());
    out.push("|---|---|---|---:|---:|---:|---|---:|---|".into());
    for s in ours.iter().filter(|r| r["kind"] == "failover") {
        let gaps: Vec<String> =
            s["gaps_ms"].as_array().map(|g| g.iter().map(|x| fmt(x.as_f64(), 0)).collect()).unwrap_or_default();
        let med = s["median_ms"].as_f64();
        out.push(format!(
            "| fenceflake | {} ({}) | acquire via a follower | {} | {} | {}–{} | {} | {} | {} |",
            s["profile"].as_str().unwrap_or("?"),
            s["timing"].as_str().unwrap_or(""),
            s["trials"],
            fmt(med, 0),
            fmt(s["min_ms"].as_f64(), 0),
            fmt(s["max_ms"].as_f64(), 0),
            gaps.join(", "),
            fmt(s["new_leader_seen_median_ms"].as_f64(), 0),
            verdict(med.map(|m| m < 400.0)),
        ));
    }
    let probe_rows: Vec<&Value> =
        etcd_fail.iter().filter(|r| r["bench"] == "etcd-failover" && r["result"]["mode"] == "probe").collect();
    let keys: BTreeSet<(String, String)> = probe_rows
        .iter()
        .map(|r| {
            (r["profile"].as_str().unwrap_or("?").to_string(), r["result"]["op"].as_str().unwrap_or("?").to_string())
        })
        .collect();
    for (profile, op) in keys {
        let gaps: Vec<f64> = probe_rows
            .iter()
            .filter(|r| r["profile"] == profile.as_str() && r["result"]["op"] == op.as_str())
            .filter_map(|r| r["result"]["gap_first_ms"].as_f64())
            .collect();
        let min = gaps.iter().copied().reduce(f64::min);
        let max = gaps.iter().copied().reduce(f64::max);
        let timing =
            if profile == "tuned" { "heartbeat 50 / election 500 ms" } else { "heartbeat 100 / election 1000 ms" };
        out.push(format!(
            "| etcd 3.4 | {profile} ({timing}) | {op} txn via the balanced client | {} | {} | {}–{} | {} | n/a | (reference) |",
            gaps.len(),
            fmt(median(&gaps), 0),
            fmt(min, 0),
            fmt(max, 0),
            gaps.iter().map(|g| format!("{g:.0}")).collect::<Vec<_>>().join(", "),
        ));
    }
    out.push(String::new());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(fmt_ops(Some(13442.4)), "13,442");
        assert_eq!(fmt_ops(Some(999.0)), "999");
        assert_eq!(fmt_ops(Some(1234567.0)), "1,234,567");
        assert_eq!(fmt_ops(None), "n/a");
    }

    #[test]
    fn tables_from_rows() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ours = dir.path().join("ours.jsonl");
        std::fs::write(
            &ours,
            concat!(
                r#"{"kind":"load","op":"renew","clients":64,"profile":"default","result":{"ops_per_s":30000.0,"p50_ms":1.0,"p99_ms":10.0,"errors":0},"raft":{"entries_in_window":100,"commands_per_entry":3000.0,"before":{"term":1},"after":{"term":1},"leader_changed":false},"cpu":{"servers_cores":1.7,"client_cores":0.2}}"#,
                "\n",
                r#"{"kind":"failover","profile":"default","timing":"50/150/300","trials":5,"gaps_ms":[500,510,520,530,540],"median_ms":520.0,"min_ms":500.0,"max_ms":540.0,"new_leader_seen_median_ms":450.0}"#,
                "\n"
            ),
        )
        .expect("write ours");
        std::fs::write(
            dir.path().join("etcd.jsonl"),
            r#"{"bench":"etcd-keepalive","clients":"64","profile":"default","result":{"ops_per_s":13000.0,"p50_us":2600.0,"p99_us":31500.0}}"#,
        )
        .expect("write etcd");
        let text = run(&CompareArgs { ours, peers: dir.path().to_path_buf(), profile: vec!["default".into()] })
            .expect("compare");
        assert!(text.contains("| renew vs lease keepalive | 64 | 30,000 | 13,000 | 2.31× |"), "{text}");
        assert!(text.contains("| 0.32× | yes | yes |"), "{text}");
        assert!(text.contains("| 520 | 500–540 |"), "{text}");
    }
}
