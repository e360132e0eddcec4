//! The etcd side of the comparison, driven by this crate alone: `etcd-load` (closed-loop
//! lease keepalive, claim txn, lease grant on a fresh 5-member etcd per run) and
//! `etcd-failover` (the leader-kill gap probe). etcd is Debian's `etcd-server` (3.4.x), started
//! by [`cluster::EtcdCluster`] on 127.0.0.1; we talk to it with tonic over the minimal
//! `proto/etcdserverpb/rpc.proto`. Rows are the JSON lines of the registry side, with
//! `"system": "etcd"`, so `compare` sets both side by side.

pub mod cluster;
pub mod failover;
pub mod load;

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use fenceflake_proto::duration::parse_duration;
use serde_json::{json, Value};

use self::cluster::{EtcdCluster, EtcdOpts};
use self::load::EtcdOp;
use crate::load::{LoadCfg, Target, WindowOpts};
use crate::stats::measure_clean;
use crate::tls::TlsOpts;
use crate::Output;

/// etcd's v3 API, as far as `proto/etcdserverpb/rpc.proto` declares it (client stubs only).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    #[command(flatten)]
    window: WindowOpts,
    /// `both` = keepalive and claim (the two compared with our renew and acquire).
    #[arg(long, value_enum, default_value = "both")]
    op: EtcdOp,
    /// TTL of every lease granted (etcd counts whole seconds); nothing expires during a run.
    #[arg(long, default_value = "600s", value_parser = parse_duration)]
    ttl: Duration,
    #[command(flatten)]
    etcd: EtcdOpts,
}

#[derive(Debug, Args)]
pub struct FailoverArgs {
    #[command(flatten)]
    probe: crate::failover::ProbeArgs,
    /// TTL of the lease the probes' claims are bound to.
    #[arg(long, default_value = "600s", value_parser = parse_duration)]
    ttl: Duration,
    /// Append the JSON lines to this file too.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    etcd: EtcdOpts,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `fenceflake-bench etcd-load`: one fresh cluster per (op, clients), as for our registry.
pub async fn load(a: LoadArgs, tls: &TlsOpts) -> anyhow::Result<()> {
    let mut out = Output::new(a.window.out.as_ref())?;
    for op in a.op.expand() {
        for &clients in &a.window.clients {
            let cfg = LoadCfg {
                clients,
                warmup: a.window.warmup,
                duration: a.window.duration,
                ttl_ms: ms(a.ttl),
                op_timeout: a.window.op_timeout,
            };
            let label = format!("etcd {} c={clients}", op.name());
            let mut row = measure_clean(&label, a.window.max_other_cores, a.window.retries, || async {
                let (cluster, target) = if a.window.endpoints.is_empty() {
                    let c = EtcdCluster::start(&a.etcd, tls).await?;
                    let t = Target { channels: c.channels(), server_pids: c.pids() };
                    (Some(c), t)
                } else {
                    (None, Target::external(&a.window.endpoints, tls)?)
                };
                let row = load::run(op, &target, cfg).await;
                drop(cluster);
                row
            })
            .await?;
            let (r, raft, cpu) = (&row["result"], &row["raft"], &row["cpu"]);
            eprintln!(
                "etcd {} c={clients} [{}, {}]: {} ops/s  p50 {} p99 {} p999 {} max {} ms  errors {} | {} entries | term {} -> {} | cpu servers {} client {} other {}",
                op.name(),
                a.etcd.profile,
                crate::tls_label(tls.is_tls()),
                r["ops_per_s"],
                r["p50_ms"],
                r["p99_ms"],
                r["p999_ms"],
                r["max_ms"],
                r["errors"],
                raft["entries_in_window"],
                raft["before"]["term"],
                raft["after"]["term"],
                cpu["servers_cores"],
                cpu["client_cores"],
                cpu["other_cores"]
            );
            if let Some(samples) = r["error_samples"].as_array().filter(|s| !s.is_empty()) {
                eprintln!("  errors: {samples:?}");
            }
            merge(&mut row, load_fields(op, clients, &a, tls.is_tls()));
            out.emit(&row)?;
        }
    }
    Ok(())
}

/// `fenceflake-bench etcd-failover`: one cluster, `--trials` leader kills.
pub async fn failover(a: FailoverArgs, tls: &TlsOpts) -> anyhow::Result<()> {
    let mut out = Output::new(a.out.as_ref())?;
    let cfg = a.probe.cfg();
    let timing = a.etcd.timing();
    let prefix = load::run_prefix();
    let ttl_s = load::ttl_seconds(ms(a.ttl));
    let mut cluster = EtcdCluster::start(&a.etcd, tls).await?;
    let mut trials = Vec::with_capacity(a.probe.trials);
    for t in 1..=a.probe.trials {
        let mut row = failover::trial(&mut cluster, cfg, &format!("{prefix}/failover/t{t}"), ttl_s).await?;
        eprintln!(
            "etcd failover [{}] trial {t}: killed member {} -> gap {} ms (new leader {} seen at {} ms), {} failed probes, term {} -> {}",
            a.etcd.profile,
            row["killed"],
            row["gap_ms"],
            row["new_leader"],
            row["new_leader_seen_ms"],
            row["failed_after_kill"],
            row["term_before"],
            row["term_after"]
        );
        merge(&mut row, failover_fields("failover-trial", &a.etcd, tls.is_tls()));
        row["trial"] = json!(t);
        out.emit(&row)?;
        trials.push(row);
    }
    cluster.wait_healthy(Duration::from_secs(60)).await?;
    drop(cluster);
    let mut summary = crate::failover::summarize(&trials);
    merge(&mut summary, failover_fields("failover", &a.etcd, tls.is_tls()));
    summary["probe_interval_ms"] = json!(ms(a.probe.probe_interval));
    eprintln!(
        "etcd failover [{}, {}] ({timing}): median {} ms, min {} ms, max {} ms over {} trials ({} unrecovered); new leader seen median {} ms",
        a.etcd.profile,
        crate::tls_label(tls.is_tls()),
        summary["median_ms"],
        summary["min_ms"],
        summary["max_ms"],
        summary["trials"],
        summary["unrecovered"],
        summary["new_leader_seen_median_ms"]
    );
    out.emit(&summary)?;
    Ok(())
}

/// What identifies a load row of etcd (`compare` matches on kind, system, TLS, op, clients,
/// profile).
fn load_fields(op: EtcdOp, clients: usize, a: &LoadArgs, tls: bool) -> Value {
    json!({
        "kind": "load",
        "system": "etcd",
        "tls": tls,
        "op": op.name(),
        "clients": clients,
        "profile": a.etcd.profile,
        "timing": a.etcd.timing(),
        "external_cluster": !a.window.endpoints.is_empty(),
        "warmup_s": a.window.warmup.as_secs_f64(),
        "window_s": a.window.duration.as_secs_f64(),
    })
}

/// What identifies a failover row of etcd (`kind`: `failover-trial` or `failover`).
fn failover_fields(kind: &str, etcd: &EtcdOpts, tls: bool) -> Value {
    json!({"kind": kind, "system": "etcd", "tls": tls, "op": "claim", "profile": etcd.profile, "timing": etcd.timing()})
}

/// `fields` into the object `row` (both JSON objects).
fn merge(row: &mut Value, fields: Value) {
    if let (Value::Object(row), Value::Object(fields)) = (row, fields) {
        row.extend(fields);
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::stats::Lat;
    use crate::{Cli, Cmd};

    fn parse(args: &[&str]) -> Result<Cmd, clap::Error> {
        Cli::try_parse_from(std::iter::once("fenceflake-bench").chain(args.iter().copied())).map(|c| c.cmd)
    }

    #[test]
    fn etcd_flags_parse_with_units_and_refuse_bare_numbers() {
        let cmd = parse(&["etcd-load", "--clients", "16", "--duration", "5s", "--warmup", "3s", "--op", "claim"]);
        match cmd.expect("parses") {
            Cmd::EtcdLoad(a) => {
                assert_eq!((a.window.clients, a.op), (vec![16], EtcdOp::Claim));
                assert_eq!((a.window.duration, a.window.warmup), (Duration::from_secs(5), Duration::from_secs(3)));
                assert_eq!(a.etcd.timing(), "heartbeat 100ms / election 1000ms");
            }
            other => panic!("parsed as {other:?}"),
        }
        let err = parse(&["etcd-load", "--duration", "10"]).expect_err("a bare number has no unit");
        assert!(err.to_string().contains("no unit"), "{err}");
        let cmd = parse(&[
            "etcd-failover",
            "--trials",
            "2",
            "--profile",
            "tuned",
            "--heartbeat",
            "50ms",
            "--election-timeout",
            "500ms",
        ]);
        match cmd.expect("parses") {
            Cmd::EtcdFailover(a) => {
                assert_eq!(a.probe.trials, 2);
                assert_eq!(a.probe.cfg().interval, Duration::from_millis(10));
                assert_eq!(a.etcd.timing(), "heartbeat 50ms / election 500ms");
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    /// Goal: the rows `etcd-load` and `etcd-failover` write are the ones `compare` reads.
    #[test]
    fn etcd_rows_feed_compare() {
        let Ok(Cmd::EtcdLoad(a)) = parse(&["etcd-load", "--duration", "10s"]) else { panic!("etcd-load parses") };
        let mut lat = Lat::new();
        for _ in 0..20_000 {
            lat.record(Duration::from_millis(2));
        }
        let mut row = json!({"result": lat.summary(10.0)});
        merge(&mut row, load_fields(EtcdOp::Keepalive, 16, &a, true));
        let Ok(Cmd::EtcdFailover(f)) = parse(&["etcd-failover"]) else { panic!("etcd-failover parses") };
        let mut summary = crate::failover::summarize(&[json!({"gap_ms": 1100.0, "new_leader_seen_ms": 1090.0})]);
        merge(&mut summary, failover_fields("failover", &f.etcd, true));

        let dir = tempfile::tempdir().expect("temp dir");
        let (ours, etcd) = (dir.path().join("ours.jsonl"), dir.path().join("etcd.jsonl"));
        let our_row = r#"{"kind":"load","system":"fenceflake","tls":true,"op":"renew","clients":16,"profile":"default","result":{"ops_per_s":1000.0,"p50_ms":1.0,"p99_ms":4.0}}"#;
        std::fs::write(&ours, format!("{our_row}\n")).expect("write ours");
        std::fs::write(&etcd, format!("{row}\n{summary}\n")).expect("write etcd");
        let args =
            crate::compare::CompareArgs { ours, etcd, profile: vec!["default".into()], etcd_profile: "default".into() };
        let text = crate::compare::run(&args, true).expect("compare");
        assert!(
            text.contains("| renew vs lease keepalive | 16 | 1,000 | 2,000 | 0.50× | 1.00 / 4.00 | 2.00 / 2.00 |"),
            "{text}"
        );
        assert!(
            text.contains(
                "| etcd 3.4 | default (heartbeat 100ms / election 1000ms) | claim txn via a follower | 1 | 1100 |"
            ),
            "{text}"
        );
    }
}
