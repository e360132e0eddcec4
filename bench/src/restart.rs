//! `fenceflake-bench restart`: how long a worker takes from SIGKILL to its first ID again, per
//! `--worker-id` mode (BENCHMARKS.md, "Worker restart after SIGKILL").
//!
//! One run starts a 5-node registry of real processes ([`Cluster`]) and, for each mode
//! (`auto`, `ordinal`, explicit), one `fenceflake worker` process with its own state dir and
//! metrics port. Each round a Generate loop mints; the worker is SIGKILLed in the middle of it
//! and started again at once on the same state dir; the bench then polls it (Status and
//! Generate every `--poll`) and times, from the SIGKILL, its first answer (lease granted,
//! maybe still booting), SERVING, and the first ID. The restart is a new incarnation
//! (docs/design.md, "Incarnations: one lease, one process"): it takes its lease over under a
//! new token and waits past the previous token's mint window, unless `auto` takes a free
//! worker ID because that wait would exceed 1 s. The wait is read from the worker itself: its
//! `fenceflake_worker_boot_wait_seconds` and its `lease granted` log line.
//!
//! Checked, and the run fails if not: every restart got a new token, and no ID was returned
//! twice across all the kills of a mode. Everything runs on mutual TLS (registry nodes, the
//! worker, the bench's client), or everything plaintext with `--insecure`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use clap::{Args, ValueEnum};
use fenceflake_proto::duration::parse_duration;
use fenceflake_proto::tls::{Role, Security};
use fenceflake_proto::v1 as pb;
use fenceflake_proto::v1::generator_client::GeneratorClient;
use fenceflake_worker::config::default_margin;
use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::cluster::{self, Cluster, ClusterOpts};
use crate::stats::{median, round};
use crate::tls::{Side, TlsOpts, CLIENT_NAME};
use crate::worker_proc::{WorkerProc, WorkerSpec};
use crate::Output;

/// Deadline of one Status or Generate call. Short: a restarted worker's port accepts TCP
/// before it serves, and a call stuck on it must not hide the moment it does.
const CALL_TIMEOUT: Duration = Duration::from_millis(250);
/// Pause after a failed Generate of the mint loop, so a failing loop does not spin.
const ERROR_BACKOFF: Duration = Duration::from_millis(5);
/// `auto`'s goal (issue 9): restart to first ID under 2 s.
const AUTO_GOAL_MS: f64 = 2000.0;
/// The apply rules under which a restart is a new incarnation (`apply_rules` of
/// registry.proto's ClusterStatusResponse: 2 = incarnations).
const INCARNATION_RULES: u32 = 2;
/// Longest wait for a new cluster's leader to raise the apply rules.
const RULES_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
pub struct RestartArgs {
    /// The `--worker-id` modes to measure, in this order: `auto`, `ordinal` (a host name
    /// `fenceflake-bench-restart-<--ordinal>`), `explicit` (`--worker-id <--explicit-id>`).
    #[arg(
        long,
        env = "FFBENCH_RESTART_MODES",
        value_enum,
        value_delimiter = ',',
        default_value = "auto,ordinal,explicit"
    )]
    modes: Vec<Mode>,
    /// SIGKILL + restart rounds per mode.
    #[arg(long, env = "FFBENCH_RESTART_ROUNDS", default_value_t = 5)]
    rounds: usize,
    /// `--lease-ttl` of the worker (renewed every third of it; an explicit or ordinal restart
    /// waits up to about this long).
    #[arg(long, env = "FFBENCH_RESTART_LEASE_TTL", default_value = "10s", value_parser = parse_duration)]
    lease_ttl: Duration,
    /// How long the Generate loop mints before the first kill. Round i of n (from 0) kills i/n of a
    /// renewal interval (TTL/3) later still, so the kills fall at different points of the
    /// lease's renewal cycle (the mint window left at the kill varies by up to TTL/3).
    #[arg(long, env = "FFBENCH_RESTART_MINT_FOR", default_value = "1s", value_parser = parse_duration)]
    mint_for: Duration,
    /// The worker ID of the `explicit` mode.
    #[arg(long, env = "FFBENCH_RESTART_EXPLICIT_ID", default_value_t = 900)]
    explicit_id: u16,
    /// The ordinal N of the `ordinal` mode's host name (`…-N`).
    #[arg(long, env = "FFBENCH_RESTART_ORDINAL", default_value_t = 901)]
    ordinal: u16,
    /// How often a restarting worker is polled (Status, then Generate).
    #[arg(long, env = "FFBENCH_RESTART_POLL", default_value = "5ms", value_parser = parse_duration)]
    poll: Duration,
    /// Give up on a (re)start that has not returned an ID after this long.
    #[arg(long, env = "FFBENCH_RESTART_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    restart_timeout: Duration,
    /// Append the JSON lines to this file too.
    #[arg(long, env = "FFBENCH_RESTART_OUT")]
    out: Option<PathBuf>,
    #[command(flatten)]
    cluster: ClusterOpts,
}

/// How the worker names its worker ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Auto,
    Ordinal,
    Explicit,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Ordinal => "ordinal",
            Mode::Explicit => "explicit",
        }
    }

    /// `--worker-id` and `--hostname` of this mode's worker.
    fn identity(self, a: &RestartArgs) -> (String, String) {
        let host = |suffix: &str| format!("fenceflake-bench-restart-{suffix}");
        match self {
            Mode::Auto => ("auto".into(), host("auto")),
            Mode::Ordinal => ("ordinal".into(), host(&a.ordinal.to_string())),
            Mode::Explicit => (a.explicit_id.to_string(), host("explicit")),
        }
    }

    /// What this mode promises (docs/design.md), as text, and whether a round kept it: `auto`
    /// is back with an ID in under 2 s; an explicit or ordinal ID waits at most one TTL.
    fn goal(self, ttl: Duration) -> (String, impl Fn(&RoundResult) -> bool) {
        let ttl_ms = ttl.as_secs_f64() * 1000.0;
        let text = match self {
            Mode::Auto => format!("restart → first ID < {AUTO_GOAL_MS:.0} ms"),
            Mode::Ordinal | Mode::Explicit => format!("boot wait ≤ TTL ({ttl_ms:.0} ms)"),
        };
        let met = move |r: &RoundResult| match self {
            Mode::Auto => ms(r.back.first_id) < AUTO_GOAL_MS,
            Mode::Ordinal | Mode::Explicit => r.boot_wait_ms.is_some_and(|w| w <= ttl_ms),
        };
        (text, met)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// This mode's worker: `--worker-id` and `--hostname` as [`Mode::identity`] says.
fn worker(mode: Mode, a: &RestartArgs, side: &Side, registry: &[String], dir: &Path) -> anyhow::Result<WorkerProc> {
    let (worker_id, hostname) = mode.identity(a);
    let spec = WorkerSpec {
        name: mode.name(),
        worker_id: &worker_id,
        hostname: &hostname,
        lease_ttl: a.lease_ttl,
        extra_args: &[],
    };
    let bin = crate::tls::fenceflake_binary(a.cluster.fenceflake_bin.as_deref())?;
    WorkerProc::new(bin, &spec, side, registry, dir)
}

/// When a (re)started worker first answered, served and minted, counted from `from`.
struct Back {
    answered: Duration,
    serving: Duration,
    first_id: Duration,
    reply: pb::GenerateResponse,
}

/// Poll the worker until a Generate succeeds: Status (until it says SERVING), then Generate.
async fn wait_first_id(
    w: &mut WorkerProc,
    security: &Security,
    from: Instant,
    a: &RestartArgs,
) -> anyhow::Result<Back> {
    let mut client = w.client(security)?;
    let (mut answered, mut serving) = (None, None);
    loop {
        w.check_alive()?;
        if from.elapsed() > a.restart_timeout {
            bail!("no ID {:?} after the (re)start; see {}", a.restart_timeout, w.log().display());
        }
        if serving.is_none() {
            if let Ok(Ok(s)) = tokio::time::timeout(CALL_TIMEOUT, client.status(pb::StatusRequest {})).await {
                let at = from.elapsed();
                answered.get_or_insert(at);
                if s.get_ref().state == "SERVING" {
                    serving = Some(at);
                }
            }
        }
        if let Ok(Ok(r)) = tokio::time::timeout(CALL_TIMEOUT, client.generate(pb::GenerateRequest {})).await {
            let at = from.elapsed();
            let (answered, serving) = (answered.unwrap_or(at), serving.unwrap_or(at));
            return Ok(Back { answered, serving, first_id: at, reply: r.into_inner() });
        }
        tokio::time::sleep(a.poll).await;
    }
}

/// What a Generate loop got: every ID, the last reply (its lease), and failures before it
/// was told to stop.
struct Minted {
    ids: Vec<u64>,
    last: Option<pb::GenerateResponse>,
    errors: u64,
}

/// Generate in a closed loop until `stop`; a failure after `stop` (the kill) ends the loop.
async fn mint_loop(mut client: GeneratorClient<Channel>, stop: Arc<AtomicBool>) -> Minted {
    let mut m = Minted { ids: Vec::new(), last: None, errors: 0 };
    while !stop.load(Ordering::SeqCst) {
        match tokio::time::timeout(CALL_TIMEOUT, client.generate(pb::GenerateRequest {})).await {
            Ok(Ok(r)) => {
                let r = r.into_inner();
                m.ids.push(r.id);
                m.last = Some(r);
            }
            _ if stop.load(Ordering::SeqCst) => break,
            _ => {
                m.errors += 1;
                tokio::time::sleep(ERROR_BACKOFF).await;
            }
        }
    }
    m
}

/// Every ID one mode saw, across all its kills.
#[derive(Default)]
struct Seen {
    ids: HashSet<u64>,
    duplicates: Vec<u64>,
}

impl Seen {
    fn add(&mut self, ids: impl IntoIterator<Item = u64>) {
        for id in ids {
            if !self.ids.insert(id) {
                self.duplicates.push(id);
            }
        }
    }
}

/// One SIGKILL and restart.
struct RoundResult {
    kill_after: Duration,
    before: Minted,
    /// The killed worker's lease deadline (from its last reply) minus the kill, in ms.
    deadline_left_ms: i64,
    /// What was left of its token's mint window at the kill: the deadline plus the worker's
    /// margin (it stops minting a margin before `mint_until`), in ms.
    window_left_ms: i64,
    back: Back,
    boot_wait_ms: Option<f64>,
    logged: Option<Value>,
}

impl RoundResult {
    fn last_before(&self) -> anyhow::Result<&pb::GenerateResponse> {
        self.before.last.as_ref().context("the worker minted nothing before the kill")
    }

    /// What the boot wait was for, from the logged floor: the registry's `not_before` (the
    /// previous token's mint window; the floor is just past it) or the state dir's own
    /// timestamp ceiling (persisted up to `--flush-interval` ahead); "nothing" if it was 0.
    fn waited_for(&self) -> &'static str {
        let field = |name: &str| self.logged.as_ref().and_then(|l| l[name].as_u64());
        match (field("floor_ms"), field("not_before_ms")) {
            _ if field("boot_wait_ms") == Some(0) => "nothing",
            (Some(floor), Some(not_before)) if floor > not_before + 1 => "local ceiling",
            (Some(_), Some(_)) => "not_before",
            _ => "unknown",
        }
    }

    fn worker_id_changed(&self) -> bool {
        self.before.last.as_ref().is_some_and(|l| l.worker_id != self.back.reply.worker_id)
    }

    fn new_token(&self) -> bool {
        self.before.last.as_ref().is_some_and(|l| l.token != self.back.reply.token)
    }

    fn json(&self, number: usize) -> Value {
        let last = self.before.last.as_ref();
        json!({
            "round": number,
            "kill_after_ms": self.kill_after.as_millis() as u64,
            "ids_before": self.before.ids.len(),
            "errors_before": self.before.errors,
            "deadline_left_at_kill_ms": self.deadline_left_ms,
            "mint_window_left_at_kill_ms": self.window_left_ms,
            "waited_for": self.waited_for(),
            "first_answer_ms": round_ms(self.back.answered),
            "serving_ms": round_ms(self.back.serving),
            "first_id_ms": round_ms(self.back.first_id),
            "boot_wait_ms": self.boot_wait_ms.map(|w| round(w, 1)),
            "lease_granted_log": self.logged,
            "worker_id_before": last.map(|l| l.worker_id),
            "worker_id_after": self.back.reply.worker_id,
            "token_before": last.map(|l| l.token.to_string()),
            "token_after": self.back.reply.token.to_string(),
            "new_token": self.new_token(),
        })
    }
}

fn round_ms(d: Duration) -> f64 {
    round(ms(d), 1)
}

/// When round `i` of `n` kills: `--mint-for`, plus i/n of a renewal interval (TTL/3).
fn kill_after(a: &RestartArgs, i: usize) -> Duration {
    let n = u32::try_from(a.rounds.max(1)).unwrap_or(u32::MAX);
    let i = u32::try_from(i).unwrap_or(u32::MAX);
    a.mint_for + a.lease_ttl / 3 * i / n
}

/// Mint for `kill_after`, SIGKILL, restart at once, and time the way back to an ID.
async fn round_trip(
    w: &mut WorkerProc,
    security: &Security,
    kill_after: Duration,
    seen: &mut Seen,
    a: &RestartArgs,
) -> anyhow::Result<RoundResult> {
    let stop = Arc::new(AtomicBool::new(false));
    let minting = tokio::spawn(mint_loop(w.client(security)?, stop.clone()));
    tokio::time::sleep(kill_after).await;
    // Told first, so that the call the kill breaks ends the loop instead of counting as an
    // error; the loop's call in flight is still the kill's to break.
    stop.store(true, Ordering::SeqCst);
    let (killed_at, killed_wall) = (Instant::now(), wall_ms());
    w.kill()?;
    w.spawn()?;
    let back = wait_first_id(w, security, killed_at, a).await?;
    let before = minting.await.context("the mint loop panicked")?;
    seen.add(before.ids.iter().copied().chain([back.reply.id]));
    let deadline_left_ms = before.last.as_ref().map_or(0, |l| l.deadline_wall_ms as i64 - killed_wall as i64);
    let window_left_ms = deadline_left_ms + default_margin(a.lease_ttl).as_millis() as i64;
    let boot_wait_ms = w.boot_wait_ms().await.inspect_err(|e| eprintln!("  boot wait not read: {e:#}")).ok();
    let logged = w.lease_granted();
    let r = RoundResult { kill_after, before, deadline_left_ms, window_left_ms, back, boot_wait_ms, logged };
    r.last_before()?;
    Ok(r)
}

/// Min, median and max of `values`.
fn spread(values: &[f64]) -> Value {
    let fold = |init: f64, f: fn(f64, f64) -> f64| values.iter().copied().fold(init, f);
    json!({
        "min": round(fold(f64::INFINITY, f64::min), 1),
        "p50": median(values).map(|m| round(m, 1)),
        "max": round(fold(f64::NEG_INFINITY, f64::max), 1),
    })
}

/// What one mode measured, with the checks of every round.
struct ModeResult {
    mode: Mode,
    worker_id_flag: String,
    first_start: Back,
    rounds: Vec<RoundResult>,
    seen: Seen,
    machine_busy_cores: Option<f64>,
}

impl ModeResult {
    fn series(&self, f: impl Fn(&RoundResult) -> Option<f64>) -> Vec<f64> {
        self.rounds.iter().filter_map(f).collect()
    }

    /// How many boot waits were for each cause ([`RoundResult::waited_for`]).
    fn waited_for(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for r in &self.rounds {
            *counts.entry(r.waited_for()).or_default() += 1;
        }
        counts
    }

    fn first_id_ms(&self) -> Vec<f64> {
        self.series(|r| Some(ms(r.back.first_id)))
    }

    /// (met by the median round, met by every round) of the mode's goal.
    fn goal_met(&self, ttl: Duration) -> (bool, bool) {
        let (_, met) = self.mode.goal(ttl);
        let every = self.rounds.iter().all(&met);
        let median_met = match self.mode {
            Mode::Auto => median(&self.first_id_ms()).is_some_and(|m| m < AUTO_GOAL_MS),
            Mode::Ordinal | Mode::Explicit => self.rounds.iter().filter(|r| met(r)).count() * 2 > self.rounds.len(),
        };
        (median_met, every)
    }

    fn json(&self, a: &RestartArgs, tls: bool) -> Value {
        let (goal, _) = self.mode.goal(a.lease_ttl);
        let (goal_met_median, goal_met_every_round) = self.goal_met(a.lease_ttl);
        let before: Vec<Option<u32>> =
            self.rounds.iter().map(|r| r.before.last.as_ref().map(|l| l.worker_id)).collect();
        let after: Vec<u32> = self.rounds.iter().map(|r| r.back.reply.worker_id).collect();
        json!({
            "kind": "restart",
            "system": "fenceflake",
            "mode": self.mode.name(),
            "worker_id_flag": self.worker_id_flag,
            "tls": tls,
            "ttl_ms": a.lease_ttl.as_millis() as u64,
            "rounds": self.rounds.len(),
            "profile": a.cluster.profile,
            "first_start_to_first_id_ms": round_ms(self.first_start.first_id),
            "restart_to_first_id_ms": spread(&self.first_id_ms()),
            "restart_to_serving_ms": spread(&self.series(|r| Some(ms(r.back.serving)))),
            "restart_to_first_answer_ms": spread(&self.series(|r| Some(ms(r.back.answered)))),
            "boot_wait_ms": spread(&self.series(|r| r.boot_wait_ms)),
            "deadline_left_at_kill_ms": spread(&self.series(|r| Some(r.deadline_left_ms as f64))),
            "mint_window_left_at_kill_ms": spread(&self.series(|r| Some(r.window_left_ms as f64))),
            "waited_for": self.waited_for(),
            "worker_ids_before": before,
            "worker_ids_after": after,
            "worker_id_changed": self.rounds.iter().filter(|r| r.worker_id_changed()).count(),
            "tokens_changed": self.rounds.iter().filter(|r| r.new_token()).count(),
            "ids_checked": self.seen.ids.len(),
            "duplicate_ids": self.seen.duplicates,
            "goal": goal,
            "goal_met_median": goal_met_median,
            "goal_met_every_round": goal_met_every_round,
            "machine_busy_cores": self.machine_busy_cores.map(|c| round(c, 2)),
            "round_detail": self.rounds.iter().enumerate().map(|(i, r)| r.json(i + 1)).collect::<Vec<_>>(),
        })
    }

    /// The broken promises of this mode: a restart without a new token, an ID seen twice.
    fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        let same = self.rounds.len() - self.rounds.iter().filter(|r| r.new_token()).count();
        if same > 0 {
            out.push(format!("{}: {same} restart(s) kept the token", self.mode.name()));
        }
        if !self.seen.duplicates.is_empty() {
            out.push(format!("{}: IDs returned twice: {:?}", self.mode.name(), self.seen.duplicates));
        }
        out
    }
}

/// Wait until every node applies the incarnation rules. A new cluster's leader raises them a
/// moment after it forms (once every member answered its clock probe: over a second on a busy
/// machine); a restart before that gets its lease back under the same token, as before
/// incarnations, which is not what is measured here.
async fn wait_incarnations(cluster: &Cluster) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    loop {
        let mut rules = Vec::new();
        for c in cluster.channels() {
            rules.push(cluster::status(&c).await.map(|s| s.apply_rules));
        }
        if rules.iter().all(|r| r.is_some_and(|r| r >= INCARNATION_RULES)) {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > RULES_TIMEOUT {
            bail!("incarnations not in force after {RULES_TIMEOUT:?} (apply rules per node: {rules:?})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Where the workers run: their state dirs and logs, the registry, the bench's identity.
struct Setup {
    dir: PathBuf,
    registry: Vec<String>,
    side: Side,
    security: Security,
}

/// Start a worker in `mode`, wait for its first ID, then `--rounds` kills and restarts, and a
/// last mint so that the IDs of the last restart are checked too.
async fn measure_mode(mode: Mode, a: &RestartArgs, s: &Setup) -> anyhow::Result<ModeResult> {
    let mut w = worker(mode, a, &s.side, &s.registry, &s.dir)?;
    let busy0 = cluster::machine_busy_seconds().map(|b| (b, Instant::now()));
    w.spawn()?;
    let first_start = wait_first_id(&mut w, &s.security, Instant::now(), a).await?;
    let mut seen = Seen::default();
    seen.add([first_start.reply.id]);
    let mut rounds = Vec::with_capacity(a.rounds);
    for i in 0..a.rounds {
        let r = round_trip(&mut w, &s.security, kill_after(a, i), &mut seen, a).await?;
        print_round(mode, i + 1, &r);
        rounds.push(r);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let tail = tokio::spawn(mint_loop(w.client(&s.security)?, stop.clone()));
    tokio::time::sleep(a.mint_for).await;
    stop.store(true, Ordering::SeqCst);
    seen.add(tail.await.context("the mint loop panicked")?.ids);
    let machine_busy_cores = busy0
        .zip(cluster::machine_busy_seconds())
        .map(|((b0, t0), b1)| (b1 - b0) / t0.elapsed().as_secs_f64().max(1e-9));
    let (worker_id_flag, _) = mode.identity(a);
    Ok(ModeResult { mode, worker_id_flag, first_start, rounds, seen, machine_busy_cores })
}

fn print_round(mode: Mode, i: usize, r: &RoundResult) {
    let last = r.before.last.as_ref();
    eprintln!(
        "{} round {i}: killed after {} ms ({} IDs, mint window {} ms ahead) -> answered {:.0} ms, serving {:.0} ms, first ID {:.0} ms; boot wait {} ms (for the {}); worker ID {:?} -> {}, new token {}",
        mode.name(),
        r.kill_after.as_millis(),
        r.before.ids.len(),
        r.window_left_ms,
        ms(r.back.answered),
        ms(r.back.serving),
        ms(r.back.first_id),
        r.boot_wait_ms.map_or("?".to_string(), |w| format!("{w:.0}")),
        r.waited_for(),
        last.map(|l| l.worker_id),
        r.back.reply.worker_id,
        r.new_token()
    );
}

/// The summary table (markdown) on stderr.
fn print_table(rows: &[Value]) {
    eprintln!("\n| mode | `--worker-id` | TTL | rounds | restart → first ID p50 / max (ms) | → SERVING p50 (ms) | boot wait p50 / max (ms), for | mint window left at kill p50 (ms) | worker ID changed | new token | duplicate IDs / checked | goal | met (median / every round) |");
    eprintln!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        eprintln!(
            "| {} | `{}` | {} ms | {} | {} / {} | {} | {} / {}, {} | {} | {} of {} | {} of {} | {} / {} | {} | {} / {} |",
            r["mode"].as_str().unwrap_or("?"),
            r["worker_id_flag"].as_str().unwrap_or("?"),
            r["ttl_ms"],
            r["rounds"],
            r["restart_to_first_id_ms"]["p50"],
            r["restart_to_first_id_ms"]["max"],
            r["restart_to_serving_ms"]["p50"],
            r["boot_wait_ms"]["p50"],
            r["boot_wait_ms"]["max"],
            causes(&r["waited_for"]),
            r["mint_window_left_at_kill_ms"]["p50"],
            r["worker_id_changed"],
            r["rounds"],
            r["tokens_changed"],
            r["rounds"],
            r["duplicate_ids"].as_array().map_or(0, Vec::len),
            r["ids_checked"],
            r["goal"].as_str().unwrap_or("?"),
            yes_no(&r["goal_met_median"]),
            yes_no(&r["goal_met_every_round"]),
        );
    }
}

/// `{"not_before": 5}` as `not_before ×5`.
fn causes(counts: &Value) -> String {
    let Some(counts) = counts.as_object() else { return "?".into() };
    counts.iter().map(|(cause, n)| format!("{cause} ×{n}")).collect::<Vec<_>>().join(", ")
}

fn yes_no(v: &Value) -> &'static str {
    if v.as_bool() == Some(true) {
        "yes"
    } else {
        "**no**"
    }
}

pub async fn run(a: RestartArgs, tls: &TlsOpts) -> anyhow::Result<()> {
    ensure!(a.rounds > 0, "--rounds must be at least 1");
    ensure!(!a.modes.is_empty(), "--modes names no mode");
    let mut out = Output::new(a.out.as_ref())?;
    let cluster = Cluster::start(&a.cluster, tls).await?;
    let dir = crate::worker_proc::workers_temp_dir(a.cluster.data_root.as_deref(), "restart")?;
    let rules_after = wait_incarnations(&cluster).await?;
    let side = cluster.side().clone();
    let setup = Setup {
        dir: dir.path().to_path_buf(),
        registry: cluster.registry_addrs().await?,
        security: side.security(Role::Client, CLIENT_NAME)?,
        side,
    };
    eprintln!(
        "restart: 5-node registry up, incarnations in force {} ms after it served; workers with --lease-ttl {:?}, {}; state dirs and logs in {}",
        rules_after.as_millis(),
        a.lease_ttl,
        if tls.is_tls() { "mutual TLS everywhere" } else { "plaintext everywhere (--insecure)" },
        setup.dir.display()
    );
    let (mut rows, mut failures) = (Vec::new(), Vec::new());
    for &mode in &a.modes {
        let result = measure_mode(mode, &a, &setup).await?;
        let row = result.json(&a, tls.is_tls());
        out.emit(&row)?;
        failures.extend(result.failures());
        rows.push(row);
    }
    print_table(&rows);
    drop(cluster);
    if a.cluster.keep {
        eprintln!("worker state dirs and logs kept in {}", dir.keep().display());
    }
    ensure!(failures.is_empty(), "restart checks failed: {}", failures.join("; "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the kills walk through one renewal interval (TTL/3) across the rounds.
    #[test]
    fn kills_spread_over_one_renewal_interval() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            a: RestartArgs,
        }
        let a = Cli::try_parse_from(["x", "--rounds", "4", "--lease-ttl", "12s"]).expect("parses").a;
        let kills: Vec<u128> = (0..4).map(|i| kill_after(&a, i).as_millis()).collect();
        assert_eq!(kills, vec![1000, 2000, 3000, 4000]);
        assert_eq!(a.modes, vec![Mode::Auto, Mode::Ordinal, Mode::Explicit]);
    }

    /// Goal: an ID seen twice is reported, once per repeat.
    #[test]
    fn seen_reports_repeats() {
        let mut seen = Seen::default();
        seen.add([1, 2, 3]);
        seen.add([3, 4, 1]);
        assert_eq!(seen.duplicates, vec![3, 1]);
        assert_eq!(seen.ids.len(), 4);
    }
}
