//! Leader-failover gap: a probe launches a write every `interval` through the nodes that are
//! *not* the leader; after `pre` the leader is SIGKILLed. The gap is the time from the kill to
//! the completion of the first successful probe that *started* after the kill (probes in
//! flight at the kill do not count). A watcher also records when a survivor first names a new
//! leader (the election part of the gap). The killed node is restarted on its data dir before
//! the next trial.
//!
//! [`probe_loop`] is that measurement for any system; [`trial`] runs it on our registry (the
//! probe is an Acquire with a fresh holder, any worker ID, then a Release), `etcd::failover`
//! on etcd (the probe is the claim txn).

use std::time::{Duration, Instant};

use clap::Args;
use fenceflake_proto::duration::parse_duration;
use fenceflake_proto::v1 as pb;
use fenceflake_proto::v1::registry_client::RegistryClient;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::cluster::{self, holder_name, Cluster};
use crate::stats::{median, round};

/// The probe's flags, shared by `failover` and `etcd-failover`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Leader kills (each followed by a restart of the killed node).
    #[arg(long, default_value_t = 5)]
    pub trials: usize,
    /// One probe every this long.
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    pub probe_interval: Duration,
    /// Probing before each kill.
    #[arg(long, default_value = "1500ms", value_parser = parse_duration)]
    pub pre: Duration,
    /// Probing after the first success.
    #[arg(long, default_value = "300ms", value_parser = parse_duration)]
    pub settle: Duration,
    /// Give up on a trial this long after the kill.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub post_max: Duration,
    /// Deadline of one probe.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub probe_timeout: Duration,
    /// Pause between a healthy cluster and the next kill.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub rest: Duration,
}

impl ProbeArgs {
    pub fn cfg(&self) -> FailCfg {
        FailCfg {
            pre: self.pre,
            interval: self.probe_interval,
            settle: self.settle,
            post_max: self.post_max,
            probe_timeout: self.probe_timeout,
            rest: self.rest,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct FailCfg {
    /// Probing before the kill.
    pub pre: Duration,
    /// One probe every `interval`, round robin over the survivors.
    pub interval: Duration,
    /// Keep probing this long after the first post-kill success.
    pub settle: Duration,
    /// Give up this long after the kill.
    pub post_max: Duration,
    /// Client deadline of one probe (long: the server-side window is what is measured).
    pub probe_timeout: Duration,
    /// Pause between a healthy cluster and the next kill.
    pub rest: Duration,
}

/// The completion of one probe: when it started, when it ended, and how.
#[derive(Debug)]
pub struct Done {
    t0: Instant,
    t1: Instant,
    result: Result<(), String>,
}

impl Done {
    /// A probe that started at `t0` ends now with `result`.
    pub fn now(t0: Instant, result: Result<(), String>) -> Done {
        Done { t0, t1: Instant::now(), result }
    }
}

/// Where a probe reports its [`Done`] (before any clean-up it does afterwards).
pub type Report = mpsc::UnboundedSender<Done>;

/// Resolves to when (and which node) a survivor first named a new leader, if it did.
pub type Watcher = JoinHandle<Option<(Instant, u64)>>;

async fn probe(channel: Channel, timeout: Duration, tx: Report) {
    let mut client = RegistryClient::new(channel);
    let t0 = Instant::now();
    let req =
        pb::AcquireRequest { holder: holder_name("bench-failover"), worker_id: None, ttl_ms: 10_000, incarnation: 0 };
    let r = tokio::time::timeout(timeout, client.acquire(req)).await;
    let (result, lease) = match r {
        Ok(Ok(lease)) => (Ok(()), Some(lease.into_inner())),
        Ok(Err(s)) => (Err(format!("{:?}: {}", s.code(), s.message())), None),
        Err(_) => (Err(format!("client timeout {timeout:?}")), None),
    };
    let _ = tx.send(Done::now(t0, result));
    if let Some(lease) = lease {
        // Give the ID back so trials never exhaust the 1024 IDs; best effort.
        let rel = pb::ReleaseRequest { worker_id: lease.worker_id, token: lease.token, last_ts_ms: 0 };
        let _ = tokio::time::timeout(timeout, client.release(rel)).await;
    }
}

/// Poll the survivors until one names a leader other than `old`; returns when (and who).
async fn watch_new_leader(channels: Vec<Channel>, old: u64, give_up: Duration) -> Option<(Instant, u64)> {
    let deadline = Instant::now() + give_up;
    while Instant::now() < deadline {
        for c in &channels {
            if let Some(s) = cluster::status(c).await {
                if s.leader_id != 0 && s.leader_id != old {
                    return Some((Instant::now(), s.leader_id));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

fn note(samples: &mut Vec<String>, msg: String) {
    let mut msg = msg;
    msg.truncate(160);
    if samples.len() < 5 && !samples.contains(&msg) {
        samples.push(msg);
    }
}

/// What one run of [`probe_loop`] saw.
#[derive(Debug)]
pub struct Outcome {
    killed: Instant,
    first_ok: Option<Instant>,
    new_leader: Option<(Instant, u64)>,
    before_ok: u64,
    before_err: u64,
    launched_after: u64,
    failed_after: u64,
    last_failed_end: Option<Instant>,
    samples: Vec<String>,
}

impl Outcome {
    /// The trial's JSON fields (times in ms after the kill); the caller adds who was killed
    /// and the terms.
    /// The row of one trial: this outcome, the node killed, and the term around the kill.
    pub fn trial_row(&self, killed: u64, term_before: u64, term_after: u64) -> Value {
        let mut row = self.to_json();
        row["killed"] = json!(killed);
        row["term_before"] = json!(term_before);
        row["term_after"] = json!(term_after);
        row
    }

    pub fn to_json(&self) -> Value {
        let ms = |t: Instant| round((t - self.killed).as_secs_f64() * 1000.0, 1);
        json!({
            "gap_ms": self.first_ok.map(ms),
            "new_leader_seen_ms": self.new_leader.map(|(t, _)| ms(t)),
            "new_leader": self.new_leader.map(|(_, id)| id),
            "probes_ok_before_kill": self.before_ok,
            "probes_failed_before_kill": self.before_err,
            "probes_after_kill": self.launched_after,
            "failed_after_kill": self.failed_after,
            "last_failure_end_ms": self.last_failed_end.map(ms),
            "error_samples": self.samples,
        })
    }
}

/// The measurement: every `cfg.interval`, `launch(i, report)` starts probe `i` (it must spawn
/// it and report its [`Done`]); after `cfg.pre`, `kill()` kills the leader and returns the
/// watcher of the new leader. Ends `cfg.settle` after the first success of a probe started
/// after the kill, or `cfg.post_max` after the kill.
pub async fn probe_loop(
    cfg: FailCfg,
    mut launch: impl FnMut(u64, Report),
    kill: impl FnOnce() -> anyhow::Result<Watcher>,
) -> anyhow::Result<Outcome> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Done>();
    let kill_due = Instant::now() + cfg.pre;
    let mut kill = Some(kill);
    let mut killed: Option<Instant> = None;
    let mut watcher = None;
    let mut first_ok: Option<Instant> = None;
    let (mut before_ok, mut before_err, mut launched_after, mut failed_after) = (0u64, 0u64, 0u64, 0u64);
    let mut last_failed_end: Option<Instant> = None;
    let mut samples = Vec::new();
    let mut ticker = tokio::time::interval(cfg.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut i = 0u64;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let now = Instant::now();
                if let Some(kill) = kill.take_if(|_| now >= kill_due) {
                    killed = Some(Instant::now());
                    watcher = Some(kill()?);
                }
                if let Some(k) = killed {
                    if first_ok.is_some_and(|f| now >= f + cfg.settle) || now >= k + cfg.post_max {
                        break;
                    }
                    launched_after += 1;
                }
                launch(i, tx.clone());
                i += 1;
            }
            Some(d) = rx.recv() => match killed.filter(|k| d.t0 >= *k) {
                None => match d.result {
                    Ok(()) => before_ok += 1,
                    Err(_) => before_err += 1,
                },
                Some(k) => match d.result {
                    Ok(()) => first_ok = Some(first_ok.map_or(d.t1, |f| f.min(d.t1))),
                    Err(e) => {
                        failed_after += 1;
                        last_failed_end = Some(last_failed_end.map_or(d.t1, |l| l.max(d.t1)));
                        note(&mut samples, format!("{e} (+{} ms)", (d.t1 - k).as_millis()));
                    }
                },
            },
        }
    }
    let killed = killed.ok_or_else(|| anyhow::anyhow!("the loop ends only after the kill"))?;
    let new_leader = match watcher {
        Some(h) => h.await?,
        None => None,
    };
    Ok(Outcome {
        killed,
        first_ok,
        new_leader,
        before_ok,
        before_err,
        launched_after,
        failed_after,
        last_failed_end,
        samples,
    })
}

/// One trial on a healthy cluster: kill its leader, measure, restart the node.
pub async fn trial(cluster: &mut Cluster, cfg: FailCfg) -> anyhow::Result<Value> {
    let leader = cluster.wait_healthy(Duration::from_secs(60)).await?;
    tokio::time::sleep(cfg.rest).await;
    let before = cluster::view(&cluster.running_channels()).await;
    anyhow::ensure!(before.agreed && before.leader_id == leader, "leader moved before the kill: {before:?}");
    let survivors: Vec<Channel> =
        cluster.running().into_iter().filter(|id| *id != leader).filter_map(|id| cluster.channel_of(id).ok()).collect();
    anyhow::ensure!(!survivors.is_empty(), "no survivors to probe");

    let launch = |i: u64, tx: Report| {
        let channel = survivors[i as usize % survivors.len()].clone();
        tokio::spawn(probe(channel, cfg.probe_timeout, tx));
    };
    let kill = || {
        cluster.kill(leader)?;
        Ok(tokio::spawn(watch_new_leader(survivors.clone(), leader, cfg.post_max)))
    };
    let outcome = probe_loop(cfg, launch, kill).await?;
    let after = cluster::view(&cluster.running_channels()).await;
    cluster.spawn(leader)?;
    Ok(outcome.trial_row(leader, before.term, after.term))
}

/// Median / min / max over the trials' gaps (those that recovered).
pub fn summarize(trials: &[Value]) -> Value {
    let gaps: Vec<f64> = trials.iter().filter_map(|t| t["gap_ms"].as_f64()).collect();
    let seen: Vec<f64> = trials.iter().filter_map(|t| t["new_leader_seen_ms"].as_f64()).collect();
    let min = gaps.iter().copied().fold(f64::INFINITY, f64::min);
    let max = gaps.iter().copied().fold(0.0, f64::max);
    json!({
        "trials": trials.len(),
        "unrecovered": trials.len() - gaps.len(),
        "gaps_ms": gaps,
        "median_ms": median(&gaps),
        "min_ms": if gaps.is_empty() { Value::Null } else { json!(min) },
        "max_ms": if gaps.is_empty() { Value::Null } else { json!(max) },
        "new_leader_seen_median_ms": median(&seen),
    })
}
