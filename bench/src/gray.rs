//! `fenceflake-bench gray`: the balancing client, `fenceflake_client::WorkerClient`, against
//! three worker processes of which one is SIGSTOPped — a gray failure: the stopped worker
//! keeps its connections open and the kernel still accepts new ones, but nothing answers
//! (BENCHMARKS.md, "Gray failure").
//!
//! One run starts a 5-node registry of real processes ([`Cluster`]) and three `fenceflake
//! worker` processes ([`WorkerProc`]: the release binary, `--worker-id auto`, rate limit off).
//! Then, per call mode (`Generate`, `GenerateBatch(--batch)`), a new client shared by
//! `--tasks` closed-loop tasks: a warm-up, a healthy window, SIGSTOP of one worker and at
//! once a window while it is stopped (the onset included: that is when hedges and ejection
//! have work to do), SIGCONT. Then `fenceflake mint --workers A,B,C -n 200` (the CLI, a real
//! process with its own fresh client) is timed with all three serving and with one stopped,
//! alternately, and the difference compared with the client's starting hedge delay.
//!
//! Targets (issue 13): stopped rate ≥ 2/3 of the healthy rate and p99 < 20 ms while stopped,
//! for both modes; a mint with a hung worker at most about one hedge delay slower. Reported
//! with them: hedges per call (budget: about 10 %), and the client's timeouts, ejections and
//! probes. Checked, and the run fails if not: no ID was handed out twice across the run (every
//! window's IDs and every mint's, as ranges). Everything runs on mutual TLS (registry nodes,
//! workers, the bench's and mint's `client` certificate), or everything plaintext with
//! `--insecure`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::{Args, ValueEnum};
use fenceflake_client::policy::INITIAL_HEDGE_DELAY;
use fenceflake_client::{ClientError, ClientStats, WorkerClient, WorkerStats};
use fenceflake_proto::duration::parse_duration;
use fenceflake_proto::tls::{Role, Security};
use fenceflake_worker::limits::MAX_BATCH_COUNT;
use serde_json::{json, Value};

use crate::cluster::{self, Cluster, ClusterOpts};
use crate::id_ranges::IdRanges;
use crate::load::CpuWindow;
use crate::stats::{median, round, Lat};
use crate::tls::{Side, TlsOpts, CLIENT_NAME};
use crate::worker_proc::{WorkerProc, WorkerSpec};
use crate::Output;

/// Workers the client balances over (issue 13's benchmark: three, one stopped).
const WORKERS: usize = 3;
/// Targets of issue 13, point 3.
const RATIO_TARGET: f64 = 2.0 / 3.0;
const P99_TARGET_MS: f64 = 20.0;
/// "About one extra hedge delay": a mint with a hung worker may take this many starting
/// hedge delays longer (median against median) than one with all workers serving.
const MINT_EXTRA_HEDGE_DELAYS: f64 = 1.5;
/// Pause after a failed call, so a failing task does not spin.
const ERROR_BACKOFF: Duration = Duration::from_millis(5);
/// Longest wait for a (resumed) worker to say SERVING.
const SERVING_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
pub struct GrayArgs {
    /// Call modes to measure, in this order: `single` (Generate), `batch` (GenerateBatch).
    #[arg(long, env = "FFBENCH_GRAY_MODES", value_enum, value_delimiter = ',', default_value = "single,batch")]
    modes: Vec<CallMode>,
    /// Closed-loop tasks sharing one client.
    #[arg(long, env = "FFBENCH_GRAY_TASKS", default_value_t = 16)]
    tasks: usize,
    /// IDs per GenerateBatch. Small enough that three workers are not held to their minting
    /// ceiling (4096 IDs per ms each): a ceiling-bound run would lose exactly a third with
    /// one worker stopped, and measure the ceiling rather than the client.
    #[arg(long, env = "FFBENCH_GRAY_BATCH", default_value_t = 256)]
    batch: u32,
    /// Unrecorded warm-up of each mode's new client (it learns the latencies).
    #[arg(long, env = "FFBENCH_GRAY_WARMUP", default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Each recorded window: healthy, then stopped.
    #[arg(long, env = "FFBENCH_GRAY_DURATION", default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Which worker is stopped: its place (0, 1, 2) in the client's list. 0 is the worst case
    /// for `mint`, whose first call goes to it.
    #[arg(long, env = "FFBENCH_GRAY_STOPPED", default_value_t = 0)]
    stopped: usize,
    /// `fenceflake mint` rounds, each one healthy and one with the worker stopped.
    #[arg(long, env = "FFBENCH_GRAY_MINT_ROUNDS", default_value_t = 5)]
    mint_rounds: usize,
    /// `-n` of each mint (one Generate per ID).
    #[arg(long, env = "FFBENCH_GRAY_MINT_COUNT", default_value_t = 200)]
    mint_count: u32,
    /// `--lease-ttl` of the workers: at least twice a window, so the stopped worker still
    /// holds its lease when it resumes (a lapsed lease is the registry's business, not the
    /// client's, and would end the run's worker).
    #[arg(long, env = "FFBENCH_GRAY_LEASE_TTL", default_value = "30s", value_parser = parse_duration)]
    lease_ttl: Duration,
    /// Append the JSON lines to this file too.
    #[arg(long, env = "FFBENCH_GRAY_OUT")]
    out: Option<PathBuf>,
    #[command(flatten)]
    cluster: ClusterOpts,
}

impl GrayArgs {
    fn check(&self) -> anyhow::Result<()> {
        ensure!(!self.modes.is_empty(), "--modes names no mode");
        ensure!(self.tasks > 0, "--tasks must be at least 1");
        ensure!((1..=MAX_BATCH_COUNT).contains(&self.batch), "--batch outside 1..={MAX_BATCH_COUNT}");
        ensure!(self.stopped < WORKERS, "--stopped must name one of the {WORKERS} workers (0..{WORKERS})");
        ensure!(self.mint_count > 0, "--mint-count must be at least 1");
        ensure!(self.lease_ttl >= self.duration * 2, "--lease-ttl must be at least twice --duration");
        Ok(())
    }
}

/// Which call the tasks make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CallMode {
    Single,
    Batch,
}

impl CallMode {
    fn name(self) -> &'static str {
        match self {
            CallMode::Single => "single",
            CallMode::Batch => "batch",
        }
    }

    fn label(self, batch: u32) -> String {
        match self {
            CallMode::Single => "`Generate`".into(),
            CallMode::Batch => format!("`GenerateBatch({batch})`"),
        }
    }
}

/// Which window a call starts in; the tasks read it before each call.
const WARMUP: u8 = 0;
const HEALTHY: u8 = 1;
const STOPPED: u8 = 2;
const DONE: u8 = 3;

/// What one task saw: latencies and IDs per recorded window (healthy, stopped), and every
/// ID it was handed, warm-up included.
struct Calls {
    lat: [Lat; 2],
    ids: [u64; 2],
    seen: IdRanges,
}

impl Calls {
    fn new() -> Calls {
        Calls { lat: [Lat::new(), Lat::new()], ids: [0, 0], seen: IdRanges::default() }
    }

    fn merge(&mut self, other: Calls) {
        for w in 0..2 {
            self.lat[w].merge(&other.lat[w]);
            self.ids[w] += other.ids[w];
        }
        self.seen.append(other.seen);
    }
}

/// One call through the client; its IDs go to `seen`. Returns how many.
async fn one_call(client: &WorkerClient, mode: CallMode, batch: u32, seen: &mut IdRanges) -> Result<u64, ClientError> {
    match mode {
        CallMode::Single => {
            seen.add(client.generate().await?, 1);
            Ok(1)
        }
        CallMode::Batch => {
            let reply = client.generate_batch(batch).await?;
            for r in &reply.ranges {
                seen.add(r.first, r.count);
            }
            Ok(reply.ranges.iter().map(|r| u64::from(r.count)).sum())
        }
    }
}

/// Call in a closed loop until the phase is [`DONE`]; a call counts in the window it starts in.
async fn call_loop(client: WorkerClient, mode: CallMode, batch: u32, phase: Arc<AtomicU8>) -> Calls {
    let mut calls = Calls::new();
    loop {
        let window = match phase.load(Ordering::Acquire) {
            HEALTHY => Some(0),
            STOPPED => Some(1),
            DONE => return calls,
            _ => None,
        };
        let t0 = Instant::now();
        let result = one_call(&client, mode, batch, &mut calls.seen).await;
        match (result, window) {
            (Ok(n), Some(w)) => {
                calls.lat[w].record(t0.elapsed());
                calls.ids[w] += n;
            }
            (Ok(_), None) => {}
            (Err(e), w) => {
                if let Some(w) = w {
                    calls.lat[w].error(e.to_string());
                }
                tokio::time::sleep(ERROR_BACKOFF).await;
            }
        }
    }
}

/// A recorded window as it runs: the client's counters, CPU and time at its start.
struct Window {
    stats: ClientStats,
    cpu: CpuWindow,
    t0: Instant,
}

/// A recorded window once over.
struct Closed {
    secs: f64,
    cpu: Value,
    client: Value,
    hedges: u64,
    load: Option<String>,
}

impl Window {
    fn open(client: &WorkerClient, server_pids: &[u32]) -> Window {
        Window { stats: client.stats(), cpu: CpuWindow::start(server_pids), t0: Instant::now() }
    }

    fn close(self, client: &WorkerClient, stopped: usize) -> Closed {
        let secs = self.t0.elapsed().as_secs_f64();
        let (before, after) = (&self.stats, client.stats());
        let sum = |s: &ClientStats, f: fn(&WorkerStats) -> u64| s.workers.iter().map(f).sum::<u64>();
        let delta = |f: fn(&WorkerStats) -> u64| sum(&after, f) - sum(before, f);
        let hedges = after.hedges - before.hedges;
        let client = json!({
            "hedges": hedges,
            "attempts": delta(|w| w.attempts),
            "timeouts": delta(|w| w.timeouts),
            "ejections": delta(|w| w.ejections),
            "probes": delta(|w| w.probes),
            "readmissions": delta(|w| w.readmissions),
            "stopped_worker_attempts": after.workers[stopped].attempts - before.workers[stopped].attempts,
            "stopped_worker_admitted_at_end": after.workers[stopped].admitted,
        });
        Closed { secs, cpu: self.cpu.finish(), client, hedges, load: cluster::load_average() }
    }
}

/// One window's row: the latency summary (successful calls), IDs, hedges per call, the
/// client's counters, CPU and the machine's load average at its end.
fn window_json(lat: &Lat, ids: u64, w: &Closed) -> Value {
    let mut v = lat.summary(w.secs);
    let calls = lat.count() + lat.errors;
    v["ids"] = json!(ids);
    v["ids_per_s"] = json!(round(ids as f64 / w.secs, 1));
    v["window_s"] = json!(round(w.secs, 3));
    v["hedges_per_call"] = json!(round(w.hedges as f64 / calls.max(1) as f64, 4));
    v["client"] = w.client.clone();
    v["cpu"] = w.cpu.clone();
    v["loadavg"] = json!(w.load);
    v
}

/// Where the run happens: the workers, their addresses in the client's order, who calls
/// them, and whose CPU is the servers'.
struct Setup {
    workers: Vec<WorkerProc>,
    addrs: Vec<String>,
    security: Security,
    side: Side,
    bin: PathBuf,
    server_pids: Vec<u32>,
}

/// One mode: warm-up, healthy window, SIGSTOP, stopped window, SIGCONT; its row.
async fn measure_mode(mode: CallMode, a: &GrayArgs, s: &mut Setup, seen: &mut IdRanges) -> anyhow::Result<Value> {
    let client = WorkerClient::new(&s.addrs, None, &s.security)?;
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let tasks: Vec<_> =
        (0..a.tasks).map(|_| tokio::spawn(call_loop(client.clone(), mode, a.batch, phase.clone()))).collect();
    tokio::time::sleep(a.warmup).await;
    let window = Window::open(&client, &s.server_pids);
    phase.store(HEALTHY, Ordering::Release);
    tokio::time::sleep(a.duration).await;
    // Stopped first, then the window switched: calls of the few ms kill(1) takes count as
    // healthy, so the stopped window holds only calls sent while the worker was stopped.
    let hung = &s.workers[a.stopped];
    hung.signal("STOP")?;
    let healthy = window.close(&client, a.stopped);
    let window = Window::open(&client, &s.server_pids);
    phase.store(STOPPED, Ordering::Release);
    tokio::time::sleep(a.duration).await;
    let stopped = window.close(&client, a.stopped);
    phase.store(DONE, Ordering::Release);
    let resumed = hung.signal("CONT");
    let mut calls = Calls::new();
    for t in tasks {
        calls.merge(t.await.context("a call task panicked")?);
    }
    resumed?;
    seen.append(std::mem::take(&mut calls.seen));
    s.workers[a.stopped].wait_serving(&s.security, SERVING_TIMEOUT).await?;

    let healthy = window_json(&calls.lat[0], calls.ids[0], &healthy);
    let stopped = window_json(&calls.lat[1], calls.ids[1], &stopped);
    let ratio = stopped["ids_per_s"].as_f64().unwrap_or(0.0) / healthy["ids_per_s"].as_f64().unwrap_or(0.0).max(1e-9);
    let p99 = stopped["p99_ms"].as_f64().unwrap_or(f64::INFINITY);
    let row = json!({
        "kind": "gray",
        "system": "fenceflake",
        "mode": mode.name(),
        "call": mode.label(a.batch),
        "batch": (mode == CallMode::Batch).then_some(a.batch),
        "tasks": a.tasks,
        "workers": WORKERS,
        "stopped_worker": a.stopped,
        "warmup_s": a.warmup.as_secs_f64(),
        "healthy": healthy,
        "stopped": stopped,
        "ratio": round(ratio, 4),
        "ratio_target": round(RATIO_TARGET, 4),
        "ratio_met": ratio >= RATIO_TARGET,
        "p99_target_ms": P99_TARGET_MS,
        "p99_met": p99 < P99_TARGET_MS,
    });
    print_mode(&row);
    Ok(row)
}

fn print_mode(row: &Value) {
    for window in ["healthy", "stopped"] {
        let w = &row[window];
        eprintln!(
            "{} {window}: {} calls/s, {} IDs/s, p50 {} p99 {} max {} ms, errors {}, hedges/call {} | client {} | cpu {} | load {}",
            row["call"].as_str().unwrap_or("?"),
            w["ops_per_s"],
            w["ids_per_s"],
            w["p50_ms"],
            w["p99_ms"],
            w["max_ms"],
            w["errors"],
            w["hedges_per_call"],
            w["client"],
            w["cpu"],
            w["loadavg"]
        );
        if let Some(samples) = w["error_samples"].as_array().filter(|s| !s.is_empty()) {
            eprintln!("  errors: {samples:?}");
        }
    }
}

/// One `fenceflake mint` process: how long it took, and what its `--stats` said.
struct Mint {
    ms: f64,
    hedges: u64,
    stopped_worker_attempts: u64,
}

async fn mint_once(a: &GrayArgs, s: &Setup, seen: &mut IdRanges) -> anyhow::Result<Mint> {
    let mut cmd = Command::new(&s.bin);
    s.side.apply(&mut cmd, Role::Client, CLIENT_NAME)?;
    let count = a.mint_count.to_string();
    cmd.args(["mint", "--workers", &s.addrs.join(","), "-n", &count, "--stats"]).env_remove("RUST_LOG");
    let t0 = Instant::now();
    let out = tokio::process::Command::from(cmd).output().await.context("running fenceflake mint")?;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "fenceflake mint failed ({}): {stderr}", out.status);
    let mut printed = 0;
    for line in String::from_utf8(out.stdout).context("mint's output is not UTF-8")?.lines() {
        seen.add(line.parse().with_context(|| format!("mint printed {line:?}, not an ID"))?, 1);
        printed += 1;
    }
    ensure!(printed == a.mint_count, "mint printed {printed} IDs, not {}", a.mint_count);
    let stats: Value = stderr.lines().last().and_then(|l| serde_json::from_str(l).ok()).context("no --stats line")?;
    let stopped_worker_attempts = stats["workers"][a.stopped]["attempts"].as_u64().context("no attempts in --stats")?;
    Ok(Mint { ms, hedges: stats["hedges"].as_u64().unwrap_or(0), stopped_worker_attempts })
}

/// `--mint-rounds` pairs of mints, healthy and with the worker stopped (alternating which
/// goes first, so a drift in foreign load favours neither); their row.
async fn mint_rounds(a: &GrayArgs, s: &mut Setup, seen: &mut IdRanges) -> anyhow::Result<Value> {
    let (mut healthy, mut hung) = (Vec::new(), Vec::new());
    for round in 0..a.mint_rounds {
        let order = if round % 2 == 0 { [false, true] } else { [true, false] };
        for stop in order {
            if stop {
                s.workers[a.stopped].signal("STOP")?;
            }
            let mint = mint_once(a, s, seen).await;
            if stop {
                s.workers[a.stopped].signal("CONT")?;
                s.workers[a.stopped].wait_serving(&s.security, SERVING_TIMEOUT).await?;
            }
            let mint = mint?;
            eprintln!(
                "mint -n {} round {}, {}: {:.1} ms, {} hedges, {} attempts to worker {}",
                a.mint_count,
                round + 1,
                if stop { "one worker stopped" } else { "all serving" },
                mint.ms,
                mint.hedges,
                mint.stopped_worker_attempts,
                a.stopped
            );
            if stop { &mut hung } else { &mut healthy }.push(mint);
        }
    }
    let ms = |runs: &[Mint]| runs.iter().map(|m| m.ms).collect::<Vec<_>>();
    let max = |runs: &[Mint]| runs.iter().map(|m| m.ms).fold(0.0, f64::max);
    let (healthy_median, hung_median) = (median(&ms(&healthy)).unwrap_or(0.0), median(&ms(&hung)).unwrap_or(0.0));
    let hedge_ms = INITIAL_HEDGE_DELAY.as_secs_f64() * 1000.0;
    let extra = hung_median - healthy_median;
    Ok(json!({
        "kind": "gray-mint",
        "system": "fenceflake",
        "count": a.mint_count,
        "rounds": a.mint_rounds,
        "stopped_worker": a.stopped,
        "healthy_ms": { "median": round(healthy_median, 1), "max": round(max(&healthy), 1), "all": ms(&healthy).iter().map(|m| round(*m, 1)).collect::<Vec<_>>() },
        "stopped_ms": { "median": round(hung_median, 1), "max": round(max(&hung), 1), "all": ms(&hung).iter().map(|m| round(*m, 1)).collect::<Vec<_>>() },
        "extra_median_ms": round(extra, 1),
        "extra_max_ms": round(max(&hung) - healthy_median, 1),
        "starting_hedge_delay_ms": hedge_ms,
        "extra_in_hedge_delays": round(extra / hedge_ms, 2),
        "extra_target_hedge_delays": MINT_EXTRA_HEDGE_DELAYS,
        "extra_met": extra <= MINT_EXTRA_HEDGE_DELAYS * hedge_ms,
        "stopped_hedges": hung.iter().map(|m| m.hedges).collect::<Vec<_>>(),
        "stopped_worker_attempts": hung.iter().map(|m| m.stopped_worker_attempts).collect::<Vec<_>>(),
        "loadavg": cluster::load_average(),
    }))
}

/// Three workers, `--worker-id auto`, rate limit off (the client is measured, not the
/// per-caller limit), serving before this returns.
async fn start_workers(
    a: &GrayArgs,
    bin: &Path,
    side: &Side,
    registry: &[String],
    dir: &Path,
    security: &Security,
) -> anyhow::Result<Vec<WorkerProc>> {
    let extra_args = ["--rate-limit=0".to_string()];
    let mut workers = Vec::with_capacity(WORKERS);
    for i in 0..WORKERS {
        let (name, hostname) = (i.to_string(), format!("fenceflake-bench-gray-{i}"));
        let spec = WorkerSpec {
            name: &name,
            worker_id: "auto",
            hostname: &hostname,
            lease_ttl: a.lease_ttl,
            extra_args: &extra_args,
        };
        let mut w = WorkerProc::new(bin.to_path_buf(), &spec, side, registry, dir)?;
        w.spawn()?;
        workers.push(w);
    }
    for w in &mut workers {
        w.wait_serving(security, SERVING_TIMEOUT).await?;
    }
    Ok(workers)
}

pub async fn run(a: GrayArgs, tls: &TlsOpts) -> anyhow::Result<()> {
    a.check()?;
    let mut out = Output::new(a.out.as_ref())?;
    let cluster = Cluster::start(&a.cluster, tls).await?;
    let dir = crate::worker_proc::workers_temp_dir(a.cluster.data_root.as_deref(), "gray")?;
    let side = cluster.side().clone();
    let security = side.security(Role::Client, CLIENT_NAME)?;
    let bin = crate::tls::fenceflake_binary(a.cluster.fenceflake_bin.as_deref())?;
    let registry = cluster.registry_addrs().await?;
    let workers = start_workers(&a, &bin, &side, &registry, dir.path(), &security).await?;
    let addrs: Vec<String> = workers.iter().map(|w| w.listen().to_string()).collect();
    let mut server_pids = cluster.pids();
    server_pids.extend(workers.iter().filter_map(WorkerProc::pid));
    eprintln!(
        "gray: 5-node registry and {WORKERS} workers up ({}), worker {} ({}) is the one stopped; {} tasks; load average {}; logs in {}",
        if tls.is_tls() { "mutual TLS everywhere" } else { "plaintext everywhere (--insecure)" },
        a.stopped,
        addrs[a.stopped],
        a.tasks,
        cluster::load_average().unwrap_or_default(),
        dir.path().display()
    );
    let mut s = Setup { workers, addrs, security, side, bin, server_pids };
    let mut seen = IdRanges::default();
    let mut rows = Vec::new();
    for &mode in &a.modes {
        let mut row = measure_mode(mode, &a, &mut s, &mut seen).await?;
        row["tls"] = json!(tls.is_tls());
        out.emit(&row)?;
        rows.push(row);
    }
    let mint = if a.mint_rounds > 0 {
        let mut row = mint_rounds(&a, &mut s, &mut seen).await?;
        row["tls"] = json!(tls.is_tls());
        out.emit(&row)?;
        Some(row)
    } else {
        None
    };
    let (repeats, examples) = seen.repeats();
    out.emit(&json!({ "kind": "gray-unique", "ids_checked": seen.ids(), "repeats": repeats, "examples": examples }))?;
    print_table(&rows, mint.as_ref(), seen.ids(), repeats);
    drop(s);
    drop(cluster);
    if a.cluster.keep {
        eprintln!("worker state dirs and logs kept in {}", dir.keep().display());
    }
    ensure!(repeats == 0, "IDs handed out twice: {repeats} overlapping ranges, e.g. {examples:?}");
    Ok(())
}

fn yes_no(met: &Value) -> &'static str {
    if met.as_bool() == Some(true) {
        "yes"
    } else {
        "**no**"
    }
}

/// The summary tables (markdown) on stderr.
fn print_table(rows: &[Value], mint: Option<&Value>, ids_checked: u64, repeats: usize) {
    eprintln!("\n| call | healthy calls/s (IDs/s) | stopped calls/s (IDs/s) | ratio (≥ 0.667) | stopped p50 / p99 / max (ms) | p99 < 20 ms | healthy p99 (ms) | hedges / calls, healthy; stopped | stopped worker: attempts, ejections, probes (stopped window) |");
    eprintln!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let (h, s) = (&r["healthy"], &r["stopped"]);
        eprintln!(
            "| {} | {} ({}) | {} ({}) | {} {} | {} / {} / {} | {} | {} | {:.1} %; {:.1} % | {}, {}, {} |",
            r["call"].as_str().unwrap_or("?"),
            h["ops_per_s"],
            h["ids_per_s"],
            s["ops_per_s"],
            s["ids_per_s"],
            r["ratio"],
            yes_no(&r["ratio_met"]),
            s["p50_ms"],
            s["p99_ms"],
            s["max_ms"],
            yes_no(&r["p99_met"]),
            h["p99_ms"],
            100.0 * h["hedges_per_call"].as_f64().unwrap_or(0.0),
            100.0 * s["hedges_per_call"].as_f64().unwrap_or(0.0),
            s["client"]["stopped_worker_attempts"],
            s["client"]["ejections"],
            s["client"]["probes"],
        );
    }
    if let Some(m) = mint {
        eprintln!("\n| `fenceflake mint -n {}` | all serving: median / max (ms) | one stopped: median / max (ms) | extra (median) | starting hedge delay | ≤ {} hedge delays |", m["count"], MINT_EXTRA_HEDGE_DELAYS);
        eprintln!("|---|---|---|---|---|---|");
        eprintln!(
            "| {} rounds | {} / {} | {} / {} | {} ms | {} ms | {} |",
            m["rounds"],
            m["healthy_ms"]["median"],
            m["healthy_ms"]["max"],
            m["stopped_ms"]["median"],
            m["stopped_ms"]["max"],
            m["extra_median_ms"],
            m["starting_hedge_delay_ms"],
            yes_no(&m["extra_met"]),
        );
    }
    eprintln!("\nIDs checked: {ids_checked}, handed out twice: {repeats}");
}
