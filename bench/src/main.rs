//! `fenceflake-bench`: closed-loop load (HDR histograms) and leader-failover gap of a 5-node
//! Fenceflake registry of real processes on loopback; the same two for a 5-member etcd 3.4
//! (`etcd-load`, `etcd-failover`); `compare` of both, measured in the same run; and `worker`:
//! one worker's throughput, latency and memory against its ceiling and a no-op gRPC baseline;
//! `restart`: a worker process's way back to its first ID after SIGKILL, per worker-ID mode;
//! and `gray`: the balancing client against three worker processes, one SIGSTOPped.
//! Results are JSON lines on stdout (and `--out`); a readable line per run goes to stderr. See
//! BENCHMARKS.md and bench/run.sh.
//!
//! Everything runs on mutual TLS, as production does ([`tls`]: certificates made with the
//! `fenceflake` binary in each cluster's dir); `--insecure` runs both sides plaintext, for
//! the TLS-cost comparison. Every row says which (`"tls"`), and `compare` sets side by side
//! only rows of one setting (plus ours with TLS against ours without).

mod cluster;
mod compare;
mod etcd;
mod failover;
mod fleet;
mod gray;
mod id_ranges;
mod load;
mod noop_server;
mod restart;
mod stats;
mod tls;
mod worker_bench;
mod worker_proc;

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use crate::cluster::{Cluster, ClusterOpts};
use crate::load::{LoadCfg, Op, Target, WindowOpts};
use crate::stats::measure_clean;
use crate::tls::TlsOpts;

#[derive(Debug, Parser)]
#[command(name = "fenceflake-bench", about = "Load and failover benchmarks of the Fenceflake registry")]
struct Cli {
    /// Tokio worker threads of the load generator (it shares the machine with the servers).
    #[arg(long, env = "BENCH_THREADS", default_value_t = 2, global = true)]
    threads: usize,
    #[command(flatten)]
    tls: TlsOpts,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Closed-loop acquire and/or renew load (`--op renew-stream`: renewals over one RenewStream
    /// per client); a fresh 5-node cluster per (op, clients).
    Registry(RegistryArgs),
    /// SIGKILL the leader while probing acquires through the other nodes; report the gap.
    Failover(FailoverArgs),
    /// Closed-loop lease keepalive and/or claim txn (or lease grant) on a fresh 5-member etcd
    /// per (op, clients): the counterparts of renew and acquire.
    EtcdLoad(etcd::LoadArgs),
    /// SIGKILL etcd's leader while probing claim txns through the other members; report the gap.
    EtcdFailover(etcd::FailoverArgs),
    /// Markdown tables: our JSON lines against the etcd JSON lines of the same run.
    Compare(compare::CompareArgs),
    /// One worker (library mode and gRPC) against its ceiling, a no-op gRPC server and UUIDv7.
    Worker(worker_bench::WorkerArgs),
    /// SIGKILL a worker process and restart it on its state dir: time to its first ID again.
    ///
    /// Starts a 5-node registry and, for each of `--modes` (auto, ordinal, explicit), one
    /// `fenceflake worker` process with its own state dir. Each round a Generate loop mints,
    /// the worker is SIGKILLed and started again at once on the same state dir, and the time
    /// from the SIGKILL to its first answer, to SERVING and to its first ID is measured, with
    /// the boot wait it reports (`fenceflake_worker_boot_wait_seconds`, `lease granted` log
    /// line). A restart is a new incarnation: it takes its lease over under a new token and
    /// waits out the previous token's mint window (at most about one TTL), except that `auto`
    /// takes a free worker ID when that wait would exceed 1 s (goal: back in under 2 s).
    /// Fails if a restart kept its token or an ID was returned twice. One JSON line per mode;
    /// a markdown table on stderr.
    Restart(restart::RestartArgs),
    /// `WorkerClient` against three worker processes, one SIGSTOPped: rate, p99, hedges.
    ///
    /// Starts a 5-node registry and three `fenceflake worker` processes. Per call mode
    /// (Generate, GenerateBatch) a new client shared by `--tasks` closed-loop tasks: warm-up,
    /// a healthy window, SIGSTOP of one worker and a window while it is stopped, SIGCONT.
    /// Then `fenceflake mint -n 200` timed with all workers serving and with one stopped.
    /// Targets (issue 13): stopped rate ≥ 2/3 of healthy, p99 < 20 ms while stopped; mint
    /// slower by at most about one starting hedge delay. Fails if an ID was handed out
    /// twice. One JSON line per mode, one for mint; markdown tables on stderr.
    Gray(gray::GrayArgs),
    /// One process holding N leases (41/16/6 layout), each renewed every TTL/3 with jitter.
    ///
    /// Starts a 5-node registry with `--worker-id-bits=16 --sequence-bits=6`, acquires
    /// `--leases` leases (one holder each) and renews each on its own schedule, as a worker's
    /// keeper does, with at most `--in-flight` calls outstanding, for `--duration` once all are
    /// held. One JSON line: renewals and their p50/p99/max, leases lost (re-acquired),
    /// deadline misses, and per node CPU, peak RSS, bytes written and data dir size (issue 11).
    Fleet(fleet::FleetArgs),
}

#[derive(Debug, Args)]
struct RegistryArgs {
    #[command(flatten)]
    window: WindowOpts,
    /// `both` is acquire and renew; `renew-stream` runs only when asked for.
    #[arg(long, value_enum, default_value = "both")]
    op: Op,
    /// TTL of every lease asked for.
    #[arg(long, default_value_t = 60_000)]
    ttl_ms: u64,
    #[command(flatten)]
    cluster: ClusterOpts,
}

#[derive(Debug, Args)]
struct FailoverArgs {
    #[command(flatten)]
    probe: failover::ProbeArgs,
    /// Append the JSON lines to this file too.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    cluster: ClusterOpts,
}

/// JSON lines to stdout, and appended to a file if asked.
struct Output {
    file: Option<std::fs::File>,
}

impl Output {
    fn new(path: Option<&PathBuf>) -> anyhow::Result<Output> {
        let file = match path {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("opening {}", p.display()))?,
            ),
            None => None,
        };
        Ok(Output { file })
    }

    fn emit(&mut self, row: &Value) -> anyhow::Result<()> {
        let line = row.to_string();
        println!("{line}");
        if let Some(f) = &mut self.file {
            writeln!(f, "{line}").context("writing the --out file")?;
        }
        Ok(())
    }
}

/// The nodes' Raft timing in the output rows; an unset flag shows the registry's default
/// (`RaftTiming::default()` in registry/src/config.rs: 50 ms / 150–300 ms since issue 11's
/// pre-vote; 100 ms / 300–600 ms from issue 14 until then).
fn timing_label(c: &ClusterOpts) -> String {
    let or = |v: &Option<String>, d: &str| v.clone().unwrap_or_else(|| d.to_string());
    format!(
        "heartbeat {} / election {}–{}",
        or(&c.heartbeat, "50ms"),
        or(&c.election_timeout_min, "150ms"),
        or(&c.election_timeout_max, "300ms")
    )
}

/// The readable line of one registry load row, on stderr.
fn print_registry_row(op: Op, clients: usize, profile: &str, tls: &TlsOpts, row: &Value) {
    let r = &row["result"];
    let raft = &row["raft"];
    let mut line = format!(
        "fenceflake {} c={clients} [{}, {}]: {} ops/s  p50 {} p99 {} p999 {} max {} ms  errors {}",
        op.name(),
        profile,
        tls_label(tls.is_tls()),
        r["ops_per_s"],
        r["p50_ms"],
        r["p99_ms"],
        r["p999_ms"],
        r["max_ms"],
        r["errors"]
    );
    if op == Op::Acquire {
        let rel = &row["release"];
        line += &format!(
            " | release p50 {} p99 {} ms errors {} | {} Raft writes/s",
            rel["p50_ms"], rel["p99_ms"], rel["errors"], row["raft_writes_per_s"]
        );
    }
    line += &format!(
        " | {} entries, {} commands/entry | term {} -> {} | cpu servers {} client {} other {}",
        raft["entries_in_window"],
        raft["commands_per_entry"],
        raft["before"]["term"],
        raft["after"]["term"],
        row["cpu"]["servers_cores"],
        row["cpu"]["client_cores"],
        row["cpu"]["other_cores"]
    );
    eprintln!("{line}");
    if let Some(samples) = r["error_samples"].as_array().filter(|s| !s.is_empty()) {
        eprintln!("  errors: {samples:?}");
    }
}

async fn registry(a: RegistryArgs, tls: &TlsOpts) -> anyhow::Result<()> {
    let mut out = Output::new(a.window.out.as_ref())?;
    for op in a.op.expand() {
        for &clients in &a.window.clients {
            let cfg = LoadCfg {
                clients,
                warmup: a.window.warmup,
                duration: a.window.duration,
                ttl_ms: a.ttl_ms,
                op_timeout: a.window.op_timeout,
            };
            let label = format!("fenceflake {} c={clients}", op.name());
            let mut row = measure_clean(&label, a.window.max_other_cores, a.window.retries, || async {
                let (cluster, target) = if a.window.endpoints.is_empty() {
                    let c = Cluster::start(&a.cluster, tls).await?;
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
            print_registry_row(op, clients, &a.cluster.profile, tls, &row);
            let fields = json!({
                "kind": "load",
                "system": "fenceflake",
                "tls": tls.is_tls(),
                "op": op.name(),
                "clients": clients,
                "profile": a.cluster.profile,
                "timing": timing_label(&a.cluster),
                "node_args": a.cluster.node_args,
                "external_cluster": !a.window.endpoints.is_empty(),
                "warmup_s": a.window.warmup.as_secs_f64(),
                "window_s": a.window.duration.as_secs_f64(),
            });
            if let (Value::Object(row), Value::Object(fields)) = (&mut row, fields) {
                for (k, v) in fields {
                    row.insert(k, v);
                }
            }
            out.emit(&row)?;
        }
    }
    Ok(())
}

/// How a row's side ran, in the readable lines.
fn tls_label(tls: bool) -> &'static str {
    if tls {
        "TLS"
    } else {
        "plaintext"
    }
}

async fn failover(a: FailoverArgs, tls: &TlsOpts) -> anyhow::Result<()> {
    let mut out = Output::new(a.out.as_ref())?;
    let cfg = a.probe.cfg();
    let timing = timing_label(&a.cluster);
    let mut cluster = Cluster::start(&a.cluster, tls).await?;
    let mut trials = Vec::with_capacity(a.probe.trials);
    for t in 1..=a.probe.trials {
        let mut row = failover::trial(&mut cluster, cfg).await?;
        eprintln!(
            "fenceflake failover [{}] trial {t}: killed node {} -> gap {} ms (new leader {} seen at {} ms), {} failed probes, term {} -> {}",
            a.cluster.profile,
            row["killed"],
            row["gap_ms"],
            row["new_leader"],
            row["new_leader_seen_ms"],
            row["failed_after_kill"],
            row["term_before"],
            row["term_after"]
        );
        row["kind"] = json!("failover-trial");
        row["system"] = json!("fenceflake");
        row["tls"] = json!(tls.is_tls());
        row["profile"] = json!(a.cluster.profile);
        row["timing"] = json!(timing);
        row["trial"] = json!(t);
        out.emit(&row)?;
        trials.push(row);
    }
    cluster.wait_healthy(Duration::from_secs(60)).await?;
    drop(cluster);
    let mut summary = failover::summarize(&trials);
    summary["kind"] = json!("failover");
    summary["system"] = json!("fenceflake");
    summary["tls"] = json!(tls.is_tls());
    summary["profile"] = json!(a.cluster.profile);
    summary["timing"] = json!(timing);
    summary["node_args"] = json!(a.cluster.node_args);
    summary["probe_interval_ms"] = json!(a.probe.probe_interval.as_millis() as u64);
    eprintln!(
        "fenceflake failover [{}, {}] ({timing}): median {} ms, min {} ms, max {} ms over {} trials ({} unrecovered); new leader seen median {} ms",
        a.cluster.profile,
        tls_label(tls.is_tls()),
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

async fn dispatch(cmd: Cmd, tls: &TlsOpts) -> anyhow::Result<()> {
    match cmd {
        Cmd::Registry(a) => registry(a, tls).await,
        Cmd::Failover(a) => failover(a, tls).await,
        Cmd::EtcdLoad(a) => etcd::load(a, tls).await,
        Cmd::EtcdFailover(a) => etcd::failover(a, tls).await,
        Cmd::Worker(a) => worker_bench::run(a, tls).await,
        Cmd::Restart(a) => restart::run(a, tls).await,
        Cmd::Gray(a) => gray::run(a, tls).await,
        Cmd::Fleet(a) => fleet::run(a, tls).await,
        Cmd::Compare(a) => {
            print!("{}", compare::run(&a, tls.is_tls())?);
            Ok(())
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM, so that the clusters (dropped on return) are stopped.
async fn interrupted() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async {
        tokio::select! {
            r = dispatch(cli.cmd, &cli.tls) => r,
            r = interrupted() => {
                r?;
                anyhow::bail!("interrupted; the benchmark's servers were stopped")
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "fenceflake-bench",
            "registry",
            "--clients",
            "16,64",
            "--op",
            "renew",
            "--heartbeat",
            "30ms",
            "--node-arg=--snapshot-logs=20000",
        ])
        .expect("parses");
        match cli.cmd {
            Cmd::Registry(a) => {
                assert_eq!(a.window.clients, vec![16, 64]);
                assert_eq!(a.op, Op::Renew);
                assert_eq!(a.cluster.node_args, vec!["--snapshot-logs=20000".to_string()]);
            }
            other => panic!("parsed as {other:?}"),
        }
        let cli = Cli::try_parse_from(["fenceflake-bench", "registry", "--op", "renew-stream"]).expect("parses");
        match cli.cmd {
            Cmd::Registry(a) => {
                assert_eq!((a.op, a.op.expand(), a.op.name()), (Op::RenewStream, vec![Op::RenewStream], "renew-stream"))
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    /// Goal: TLS is the default; `--insecure` (before or after the subcommand) switches both
    /// sides to plaintext; an external cluster's files go together and conflict with it.
    #[test]
    fn tls_by_default_insecure_anywhere() {
        let parse =
            |args: &[&str]| Cli::try_parse_from(std::iter::once("fenceflake-bench").chain(args.iter().copied()));
        assert!(parse(&["registry"]).expect("parses").tls.is_tls());
        assert!(!parse(&["--insecure", "registry"]).expect("parses").tls.is_tls());
        assert!(!parse(&["worker", "--insecure"]).expect("parses").tls.is_tls());
        assert!(!parse(&["etcd-load", "--insecure"]).expect("parses").tls.is_tls());
        assert!(!parse(&["restart", "--insecure", "--modes", "auto,explicit"]).expect("parses").tls.is_tls());
        assert!(!parse(&["gray", "--insecure", "--modes", "batch"]).expect("parses").tls.is_tls());
        let err = parse(&["registry", "--endpoints", "127.0.0.1:1", "--tls-ca", "ca.pem"]).expect_err("alone");
        assert!(err.to_string().contains("--tls-cert"), "{err}");
        let all = ["registry", "--tls-ca", "ca.pem", "--tls-cert", "w.pem", "--tls-key", "w.key", "--insecure"];
        let conflict = parse(&all).expect("parses").tls.external().expect_err("both");
        assert!(conflict.to_string().contains("choose one"), "{conflict}");
    }
}
