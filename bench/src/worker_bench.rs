//! `fenceflake-bench worker`: one worker's throughput, latency and memory, each as a ratio to
//! a ceiling or baseline measured in the same run (BENCHMARKS.md, "Worker").
//!
//! One run starts a 5-node registry of real processes ([`Cluster`]), one worker in this
//! process in library mode ([`Generator`]), and then measures, in order:
//! 1. the `uuid` crate's v7 rate in-process (the no-coordination reference);
//! 2. library mode: a tight loop of `generate_batch(--batch)`, then of `generate()`, against
//!    the layout's ceiling (sequence space × 1000 per second), sampling this process's RSS;
//! 3. the same worker served over gRPC on loopback (`fenceflake_worker::server::run`, rate
//!    limit off): closed-loop `GenerateBatch(--batch)` clients against the ceiling;
//! 4. closed-loop unary `Generate` clients against the worker and against a no-op tonic
//!    server of the same service ([`crate::noop_server`]), alternating which goes first.
//!
//! Servers and clients share this process and the machine's cores. Each row says how many
//! cores other processes used during its window (`other_cores`).
//!
//! Everything runs on mutual TLS (the worker with a `worker` certificate towards the registry
//! and its callers, the no-op server with one too, the callers with a `client` certificate),
//! or everything plaintext with `--insecure`: both servers of a comparison always alike.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use fenceflake_proto::duration::parse_duration;
use fenceflake_proto::tls::{Role, Security};
use fenceflake_proto::v1 as pb;
use fenceflake_proto::v1::generator_client::GeneratorClient;
use fenceflake_worker::server::Listeners;
use fenceflake_worker::{Generator, RateLimitConfig, RateLimiter, SystemClock, WorkerConfig};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::cluster::{self, Cluster, ClusterOpts};
use crate::stats::{round, Lat};
use crate::tls::{TlsOpts, CLIENT_NAME};
use crate::Output;

/// Targets of issue 3, as ratios.
const LIB_TARGET: f64 = 0.97;
const GRPC_BATCH_TARGET: f64 = 0.85;
const GENERATE_VS_NOOP_TARGET: f64 = 0.90;
/// Largest acceptable resident set of a worker at full rate.
const RSS_LIMIT_BYTES: u64 = 32 << 20;
/// Pause after a failed request, so a failing client does not spin.
const ERROR_BACKOFF: Duration = Duration::from_millis(5);
/// How often the resident set is sampled during the library-mode windows.
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(50);

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Recorded window of each measurement.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Unrecorded warm-up before each window.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// IDs per `generate_batch` call and per `GenerateBatch` RPC.
    #[arg(long, default_value_t = 4096)]
    batch: u32,
    /// Concurrent library-mode `generate_batch` tasks of the extra (reference) row, which
    /// shows how much of the single loop's shortfall is time spent waiting, not working.
    #[arg(long, default_value_t = 4)]
    lib_tasks: usize,
    /// Concurrent closed-loop `GenerateBatch` clients (one connection each).
    #[arg(long, default_value_t = 4)]
    batch_clients: usize,
    /// Concurrent closed-loop `Generate` clients (one connection each); one worker run and one
    /// no-op run per value.
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    clients: Vec<usize>,
    /// Accept the no-op baseline's connections with Nagle's algorithm on (plaintext only, with
    /// `--insecure`); by default the baseline accepts like the worker, through the TLS
    /// acceptor, which sets TCP_NODELAY on every socket.
    #[arg(long)]
    noop_nagle: bool,
    /// Client deadline of one RPC.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    op_timeout: Duration,
    /// Append the JSON lines to this file too.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    cluster: ClusterOpts,
}

/// One line of the final table.
struct Line {
    what: String,
    measured: String,
    baseline: String,
    ratio: f64,
    /// `(text, met)`, or `None` for reference rows.
    target: Option<(String, bool)>,
}

impl Line {
    fn at_least(what: String, measured: String, baseline: String, ratio: f64, min: f64) -> Line {
        Line { what, measured, baseline, ratio, target: Some((format!("≥ {min:.2}"), ratio >= min)) }
    }

    fn markdown(&self) -> String {
        let (target, met) = match &self.target {
            Some((t, m)) => (t.clone(), if *m { "yes".to_string() } else { "**no**".to_string() }),
            None => ("—".to_string(), "(reference)".to_string()),
        };
        format!("| {} | {} | {} | {:.3} | {target} | {met} |", self.what, self.measured, self.baseline, self.ratio)
    }
}

/// CPU use during one window: this process (worker, servers and clients), the registry
/// processes, and everything else on the machine.
struct CpuWindow {
    registry_pids: Vec<u32>,
    self0: f64,
    registry0: f64,
    busy0: Option<f64>,
    wall0: Instant,
}

fn cpu_sum(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| cluster::cpu_seconds(*p)).sum()
}

impl CpuWindow {
    fn start(registry_pids: &[u32]) -> CpuWindow {
        CpuWindow {
            registry_pids: registry_pids.to_vec(),
            self0: cluster::self_cpu_seconds(),
            registry0: cpu_sum(registry_pids),
            busy0: cluster::machine_busy_seconds(),
            wall0: Instant::now(),
        }
    }

    fn finish(&self) -> Value {
        let wall = self.wall0.elapsed().as_secs_f64().max(1e-9);
        let bench = (cluster::self_cpu_seconds() - self.self0) / wall;
        let registry = (cpu_sum(&self.registry_pids) - self.registry0) / wall;
        let busy = self.busy0.zip(cluster::machine_busy_seconds()).map(|(b0, b1)| (b1 - b0) / wall);
        json!({
            "bench_process_cores": round(bench, 2),
            "registry_cores": round(registry, 2),
            "machine_busy_cores": busy.map(|b| round(b, 2)),
            "other_cores": busy.map(|b| round((b - bench - registry).max(0.0), 2)),
        })
    }
}

/// `VmRSS` and `VmHWM` of this process, in bytes.
fn memory() -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status.lines().find(|l| l.starts_with(name)).with_context(|| format!("no {name} in status"))?;
        let kib: u64 = line
            .trim_start_matches(name)
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("bad {line:?}"))?;
        Ok(kib * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

fn mib(bytes: u64) -> f64 {
    round(bytes as f64 / f64::from(1u32 << 20), 1)
}

fn per_s(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.3} M/s", x / 1e6)
    } else {
        format!("{:.1} k/s", x / 1e3)
    }
}

/// What one tight loop achieved.
struct Rate {
    ids: u64,
    calls: u64,
    secs: f64,
    cpu: Value,
}

impl Rate {
    fn ids_per_s(&self) -> f64 {
        self.ids as f64 / self.secs
    }

    fn json(&self) -> Value {
        json!({
            "ids": self.ids,
            "calls": self.calls,
            "window_s": round(self.secs, 3),
            "ids_per_s": round(self.ids_per_s(), 1),
            "calls_per_s": round(self.calls as f64 / self.secs, 1),
            "cpu": self.cpu,
        })
    }
}

/// A tight loop of `generate_batch(batch)` (or of `generate()` if `batch` is `None`).
async fn library_loop(
    g: Generator,
    batch: Option<u32>,
    warmup: Duration,
    window: Duration,
    registry_pids: Vec<u32>,
) -> anyhow::Result<Rate> {
    let one = |g: &Generator| {
        let g = g.clone();
        async move {
            match batch {
                Some(n) => g.generate_batch(n).await.map(|b| b.count()).context("generate_batch"),
                None => g.generate().await.map(|_| 1).context("generate"),
            }
        }
    };
    let rec_from = Instant::now() + warmup;
    while Instant::now() < rec_from {
        one(&g).await?;
    }
    let cpu = CpuWindow::start(&registry_pids);
    let (t0, mut ids, mut calls) = (Instant::now(), 0u64, 0u64);
    let end = t0 + window;
    while Instant::now() < end {
        ids += one(&g).await?;
        calls += 1;
    }
    Ok(Rate { ids, calls, secs: t0.elapsed().as_secs_f64(), cpu: cpu.finish() })
}

/// `tasks` concurrent [`library_loop`]s of `generate_batch(batch)`, summed.
async fn library_tasks(
    g: &Generator,
    batch: u32,
    tasks: usize,
    a: &WorkerArgs,
    registry_pids: &[u32],
) -> anyhow::Result<Rate> {
    let cpu = CpuWindow::start(registry_pids);
    let handles: Vec<_> = (0..tasks)
        .map(|_| tokio::spawn(library_loop(g.clone(), Some(batch), a.warmup, a.duration, registry_pids.to_vec())))
        .collect();
    let (mut ids, mut calls, mut secs) = (0, 0, 0f64);
    for h in handles {
        let r = h.await.context("a library loop panicked")??;
        ids += r.ids;
        calls += r.calls;
        secs = secs.max(r.secs);
    }
    // Rates come from the loops' own windows; this CPU figure also covers their warm-up.
    Ok(Rate { ids, calls, secs, cpu: cpu.finish() })
}

/// `Uuid::now_v7()` in a tight loop on a blocking thread.
async fn uuid_loop(warmup: Duration, window: Duration, registry_pids: Vec<u32>) -> anyhow::Result<Rate> {
    tokio::task::spawn_blocking(move || {
        let spin = |until: Instant| -> u64 {
            let mut n = 0u64;
            loop {
                for _ in 0..1024 {
                    std::hint::black_box(uuid::Uuid::now_v7());
                }
                n += 1024;
                if Instant::now() >= until {
                    return n;
                }
            }
        };
        spin(Instant::now() + warmup);
        let cpu = CpuWindow::start(&registry_pids);
        let t0 = Instant::now();
        let ids = spin(t0 + window);
        Rate { ids, calls: ids, secs: t0.elapsed().as_secs_f64(), cpu: cpu.finish() }
    })
    .await
    .context("the uuid loop panicked")
}

/// Library-mode rate with this process's peak RSS sampled during the window.
async fn library_with_rss(
    g: &Generator,
    batch: Option<u32>,
    a: &WorkerArgs,
    registry_pids: &[u32],
) -> anyhow::Result<(Rate, u64)> {
    let peak = Arc::new(AtomicU64::new(0));
    let (stop, mut stopped) = watch::channel(false);
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                if let Ok((rss, _)) = memory() {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::select! {
                    _ = tokio::time::sleep(RSS_SAMPLE_EVERY) => {}
                    _ = stopped.wait_for(|s| *s) => return,
                }
            }
        })
    };
    let run = tokio::spawn(library_loop(g.clone(), batch, a.warmup, a.duration, registry_pids.to_vec()));
    let rate = run.await.context("the library loop panicked")?;
    let _ = stop.send(true);
    sampler.await.context("the RSS sampler panicked")?;
    Ok((rate?, peak.load(Ordering::Relaxed)))
}

#[derive(Debug, Clone, Copy)]
enum Call {
    Generate,
    Batch(u32),
}

/// What closed-loop RPC clients achieved.
struct Rpcs {
    lat: Lat,
    ids: u64,
    window_s: f64,
    cpu: Value,
}

impl Rpcs {
    fn rpcs_per_s(&self) -> f64 {
        self.lat.count() as f64 / self.window_s
    }

    fn ids_per_s(&self) -> f64 {
        self.ids as f64 / self.window_s
    }

    fn json(&self) -> Value {
        let mut v = self.lat.summary(self.window_s);
        v["ids"] = json!(self.ids);
        v["ids_per_s"] = json!(round(self.ids_per_s(), 1));
        v["window_s"] = json!(round(self.window_s, 3));
        v["cpu"] = self.cpu.clone();
        v
    }
}

async fn one_rpc(client: &mut GeneratorClient<Channel>, call: Call) -> Result<u64, tonic::Status> {
    match call {
        Call::Generate => client.generate(pb::GenerateRequest {}).await.map(|_| 1),
        Call::Batch(count) => client
            .generate_batch(pb::GenerateBatchRequest { count })
            .await
            .map(|r| r.into_inner().ranges.iter().map(|r| u64::from(r.count)).sum()),
    }
}

/// `clients` closed-loop clients, one connection each, calling `addr` through `security`
/// (the server must hold a `worker` certificate); only calls that start inside the window
/// are recorded.
async fn rpc_load(
    addr: &str,
    security: &Security,
    clients: usize,
    call: Call,
    a: &WorkerArgs,
    registry_pids: &[u32],
) -> anyhow::Result<Rpcs> {
    let start = Instant::now();
    let rec_from = start + a.warmup;
    let end = rec_from + a.duration;
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let mut client = GeneratorClient::new(crate::tls::channel(addr, security, &[Role::Worker])?);
        let op_timeout = a.op_timeout;
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut ids) = (Lat::new(), 0u64);
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    return (lat, ids);
                }
                let result = tokio::time::timeout(op_timeout, one_rpc(&mut client, call)).await;
                let recorded = t0 >= rec_from;
                match result {
                    Ok(Ok(n)) if recorded => {
                        lat.record(t0.elapsed());
                        ids += n;
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(status)) => {
                        if recorded {
                            lat.error(format!("{:?}: {}", status.code(), status.message()));
                        }
                        tokio::time::sleep(ERROR_BACKOFF).await;
                    }
                    Err(_) => {
                        if recorded {
                            lat.error(format!("timed out after {op_timeout:?}"));
                        }
                    }
                }
            }
        }));
    }
    tokio::time::sleep_until(rec_from.into()).await;
    let cpu = CpuWindow::start(registry_pids);
    tokio::time::sleep_until(end.into()).await;
    let cpu = cpu.finish();
    let (mut lat, mut ids) = (Lat::new(), 0u64);
    for task in tasks {
        let (l, n) = task.await.context("a client task panicked")?;
        lat.merge(&l);
        ids += n;
    }
    Ok(Rpcs { lat, ids, window_s: a.duration.as_secs_f64(), cpu })
}

async fn local_listener(what: &str) -> anyhow::Result<(TcpListener, String)> {
    let listener = TcpListener::bind("127.0.0.1:0").await.with_context(|| format!("binding the {what} port"))?;
    let addr = listener.local_addr()?.to_string();
    Ok((listener, addr))
}

fn stderr_rate(label: &str, r: &Rate, ceiling: f64) {
    eprintln!(
        "{label}: {} ({:.1} % of the {} ceiling), {} calls/s | cpu {}",
        per_s(r.ids_per_s()),
        100.0 * r.ids_per_s() / ceiling,
        per_s(ceiling),
        round(r.calls as f64 / r.secs, 1),
        r.cpu
    );
}

fn stderr_rpcs(label: &str, r: &Rpcs) {
    let s = r.lat.summary(r.window_s);
    eprintln!(
        "{label}: {} RPCs/s ({} IDs/s), p50 {} p99 {} p999 {} max {} ms, errors {} | cpu {}",
        round(r.rpcs_per_s(), 1),
        round(r.ids_per_s(), 1),
        s["p50_ms"],
        s["p99_ms"],
        s["p999_ms"],
        s["max_ms"],
        s["errors"],
        r.cpu
    );
    if !r.lat.error_samples.is_empty() {
        eprintln!("  errors: {:?}", r.lat.error_samples);
    }
}

pub async fn run(a: WorkerArgs, tls: &TlsOpts) -> anyhow::Result<()> {
    if a.batch == 0 || a.batch_clients == 0 || a.lib_tasks == 0 || a.clients.contains(&0) {
        bail!("--batch, --lib-tasks, --batch-clients and --clients must be at least 1");
    }
    if a.noop_nagle && tls.is_tls() {
        bail!("--noop-nagle needs --insecure: the TLS acceptor sets TCP_NODELAY on every socket");
    }
    let mut out = Output::new(a.out.as_ref())?;
    let base = json!({
        "kind": "worker",
        "system": "fenceflake",
        "tls": tls.is_tls(),
        "profile": a.cluster.profile,
        "warmup_s": a.warmup.as_secs_f64(),
        "window_s": a.duration.as_secs_f64(),
        "noop_nodelay": !a.noop_nagle,
    });
    let emit = |out: &mut Output, measure: &str, mut row: Value| -> anyhow::Result<()> {
        if let (Value::Object(row), Value::Object(base)) = (&mut row, &base) {
            for (k, v) in base {
                row.insert(k.clone(), v.clone());
            }
            row.insert("measure".into(), json!(measure));
        }
        out.emit(&row)
    };
    let mut lines = Vec::new();

    let cluster = Cluster::start(&a.cluster, tls).await?;
    let pids = cluster.pids();
    let addrs = cluster.registry_addrs().await?;
    let state = tempfile::Builder::new().prefix("fenceflake-bench-worker-").tempdir().context("state dir")?;
    let (rss_before, _) = memory()?;
    let worker_tls = cluster.side().security(Role::Worker, "bench-worker-0")?;
    let config = WorkerConfig::new(addrs, state.path().join("worker"), "bench-worker-0".into(), worker_tls);
    let generator = Generator::start(config, Arc::new(SystemClock)).await.context("starting the worker")?;
    generator.wait_serving(Duration::from_secs(10)).await.context("the worker did not start serving")?;
    let layout = generator.status().layout;
    let ceiling = f64::from(layout.max_sequence() + 1) * 1000.0;
    eprintln!(
        "worker {} serving, {} (sequence bits {}: ceiling {} IDs/s); RSS before it started {} MiB",
        generator.status().worker_id,
        if tls.is_tls() {
            "mutual TLS on both servers and every client"
        } else {
            "plaintext on both sides (--insecure)"
        },
        layout.sequence_bits(),
        ceiling,
        mib(rss_before)
    );

    library_phase(&generator, &a, &pids, ceiling, rss_before, &mut out, &emit, &mut lines).await?;

    // 3 and 4 over gRPC: the worker (rate limit off) and the no-op baseline, both in-process.
    let (stop, stopped) = watch::channel(false);
    let until_stopped = |rx: &watch::Receiver<bool>| {
        let mut rx = rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let (worker_listener, worker_addr) = local_listener("worker").await?;
    let (noop_listener, noop_addr) = local_listener("no-op baseline").await?;
    let limiter = Arc::new(RateLimiter::new(RateLimitConfig { ids_per_sec: 0, burst: 0 }, Arc::new(SystemClock))?);
    let listeners = Listeners { grpc: worker_listener, metrics: None };
    let worker_server =
        tokio::spawn(fenceflake_worker::server::run(generator.clone(), listeners, limiter, until_stopped(&stopped)));
    let noop_tls = cluster.side().security(Role::Worker, "noop-baseline")?;
    let noop_server =
        tokio::spawn(crate::noop_server::serve(noop_listener, noop_tls, !a.noop_nagle, until_stopped(&stopped)));
    let callers = Callers { security: cluster.side().security(Role::Client, CLIENT_NAME)?, pids };
    let result = grpc_phase(&a, &worker_addr, &noop_addr, ceiling, &callers, &mut out, &emit, &mut lines).await;
    let _ = stop.send(true);
    worker_server.await.context("the worker server panicked")?.context("serving the worker")?;
    noop_server.await.context("the no-op server panicked")??;
    generator.shutdown().await;
    drop(cluster);
    result?;

    emit(&mut out, "summary", summary_table(&lines))
}

/// Steps 1 and 2: the no-coordination reference (UUIDv7), then library mode with the
/// resident set sampled at full rate; their rows, and their lines of the summary table.
#[allow(clippy::too_many_arguments)]
async fn library_phase(
    generator: &Generator,
    a: &WorkerArgs,
    pids: &[u32],
    ceiling: f64,
    rss_before: u64,
    out: &mut Output,
    emit: &impl Fn(&mut Output, &str, Value) -> anyhow::Result<()>,
    lines: &mut Vec<Line>,
) -> anyhow::Result<()> {
    let uuid = uuid_loop(a.warmup, a.duration, pids.to_vec()).await?;
    stderr_rate("uuid v7 in-process", &uuid, ceiling);
    emit(out, "uuid_v7", uuid.json())?;

    let (lib_batch, rss_batch) = library_with_rss(generator, Some(a.batch), a, pids).await?;
    stderr_rate(&format!("library generate_batch({})", a.batch), &lib_batch, ceiling);
    let (lib_one, rss_one) = library_with_rss(generator, None, a, pids).await?;
    stderr_rate("library generate()", &lib_one, ceiling);
    let lib_conc = library_tasks(generator, a.batch, a.lib_tasks, a, pids).await?;
    stderr_rate(&format!("library generate_batch({}) x {} tasks", a.batch, a.lib_tasks), &lib_conc, ceiling);
    let (rss_now, hwm) = memory()?;
    let rss_peak = rss_batch.max(rss_one).max(rss_now);
    eprintln!(
        "RSS of this process (worker in library mode + harness + registry clients): peak sampled {} MiB, VmHWM {} MiB, before the worker {} MiB",
        mib(rss_peak),
        mib(hwm),
        mib(rss_before)
    );
    let mut row = lib_batch.json();
    row["batch"] = json!(a.batch);
    row["ceiling_ids_per_s"] = json!(ceiling);
    row["ratio"] = json!(round(lib_batch.ids_per_s() / ceiling, 4));
    emit(out, "library_generate_batch", row)?;
    let mut row = lib_one.json();
    row["ceiling_ids_per_s"] = json!(ceiling);
    row["ratio"] = json!(round(lib_one.ids_per_s() / ceiling, 4));
    emit(out, "library_generate", row)?;
    let mut row = lib_conc.json();
    row["batch"] = json!(a.batch);
    row["tasks"] = json!(a.lib_tasks);
    row["ceiling_ids_per_s"] = json!(ceiling);
    row["ratio"] = json!(round(lib_conc.ids_per_s() / ceiling, 4));
    emit(out, "library_generate_batch_concurrent", row)?;
    let memory_row = json!({
        "vm_rss_peak_mib": mib(rss_peak),
        "vm_hwm_mib": mib(hwm),
        "vm_rss_before_worker_mib": mib(rss_before),
        "limit_mib": mib(RSS_LIMIT_BYTES),
    });
    emit(out, "library_rss", memory_row)?;
    library_lines(lines, a, ceiling, [&uuid, &lib_batch, &lib_one, &lib_conc], (rss_before, rss_peak, hwm));
    Ok(())
}

/// The summary lines of [`library_phase`]: rates of uuid, batch, single, concurrent; memory
/// as (before the worker, peak sampled, VmHWM).
fn library_lines(lines: &mut Vec<Line>, a: &WorkerArgs, ceiling: f64, rates: [&Rate; 4], memory: (u64, u64, u64)) {
    let [uuid, lib_batch, lib_one, lib_conc] = rates;
    let (rss_before, rss_peak, hwm) = memory;
    lines.push(Line {
        what: "uuid v7, in-process (no coordination)".into(),
        measured: per_s(uuid.ids_per_s()),
        baseline: format!("ceiling {}", per_s(ceiling)),
        ratio: uuid.ids_per_s() / ceiling,
        target: None,
    });
    lines.push(Line::at_least(
        format!("library `generate_batch({})`, 1 task", a.batch),
        per_s(lib_batch.ids_per_s()),
        format!("ceiling {}", per_s(ceiling)),
        lib_batch.ids_per_s() / ceiling,
        LIB_TARGET,
    ));
    lines.push(Line::at_least(
        "library `generate()`, 1 task".into(),
        per_s(lib_one.ids_per_s()),
        format!("ceiling {}", per_s(ceiling)),
        lib_one.ids_per_s() / ceiling,
        LIB_TARGET,
    ));
    lines.push(Line {
        what: format!("library `generate_batch({})`, {} concurrent tasks", a.batch, a.lib_tasks),
        measured: per_s(lib_conc.ids_per_s()),
        baseline: format!("ceiling {}", per_s(ceiling)),
        ratio: lib_conc.ids_per_s() / ceiling,
        target: None,
    });
    let rss_ratio = hwm.max(rss_peak) as f64 / RSS_LIMIT_BYTES as f64;
    lines.push(Line {
        what: "RSS of the library-mode process at full rate".into(),
        measured: format!(
            "VmHWM {} MiB (VmRSS peak {} MiB; {} MiB before the worker started)",
            mib(hwm),
            mib(rss_peak),
            mib(rss_before)
        ),
        baseline: format!("limit {} MiB", mib(RSS_LIMIT_BYTES)),
        ratio: rss_ratio,
        target: Some(("< 1.00".into(), rss_ratio < 1.0)),
    });
}

/// The summary table on stderr (markdown), and as the `summary` row's JSON.
fn summary_table(lines: &[Line]) -> Value {
    eprintln!("\n| measure | measured | ceiling / baseline | ratio | target | met? |");
    eprintln!("|---|---|---|---|---|---|");
    for line in lines {
        eprintln!("{}", line.markdown());
    }
    let table: Vec<Value> = lines
        .iter()
        .map(|l| {
            json!({
                "measure": l.what,
                "measured": l.measured,
                "baseline": l.baseline,
                "ratio": round(l.ratio, 4),
                "target": l.target.as_ref().map(|t| t.0.clone()),
                "met": l.target.as_ref().map(|t| t.1),
            })
        })
        .collect();
    json!({ "table": table })
}

/// Who calls the servers of the gRPC phase (`client` certificate or plaintext), and whose
/// CPU is the registry's.
struct Callers {
    security: Security,
    pids: Vec<u32>,
}

#[allow(clippy::too_many_arguments)]
async fn grpc_phase(
    a: &WorkerArgs,
    worker_addr: &str,
    noop_addr: &str,
    ceiling: f64,
    callers: &Callers,
    out: &mut Output,
    emit: &impl Fn(&mut Output, &str, Value) -> anyhow::Result<()>,
    lines: &mut Vec<Line>,
) -> anyhow::Result<()> {
    let (security, pids) = (&callers.security, &callers.pids);
    let batch = rpc_load(worker_addr, security, a.batch_clients, Call::Batch(a.batch), a, pids).await?;
    let label = format!("gRPC GenerateBatch({}) x {} clients", a.batch, a.batch_clients);
    stderr_rpcs(&label, &batch);
    let mut row = batch.json();
    row["batch"] = json!(a.batch);
    row["clients"] = json!(a.batch_clients);
    row["ceiling_ids_per_s"] = json!(ceiling);
    row["ratio"] = json!(round(batch.ids_per_s() / ceiling, 4));
    emit(out, "grpc_generate_batch", row)?;
    lines.push(Line::at_least(
        format!("gRPC `GenerateBatch({})`, {} clients", a.batch, a.batch_clients),
        format!("{} (p99 {:.2} ms)", per_s(batch.ids_per_s()), batch.lat.ms(0.99)),
        format!("ceiling {}", per_s(ceiling)),
        batch.ids_per_s() / ceiling,
        GRPC_BATCH_TARGET,
    ));

    for (i, &clients) in a.clients.iter().enumerate() {
        // Alternate which server goes first, so a drift in foreign load favours neither.
        let order = if i % 2 == 0 { [false, true] } else { [true, false] };
        let (mut worker, mut noop) = (None, None);
        for is_noop in order {
            let (name, addr) = if is_noop { ("no-op baseline", noop_addr) } else { ("worker", worker_addr) };
            let r = rpc_load(addr, security, clients, Call::Generate, a, pids).await?;
            stderr_rpcs(&format!("gRPC Generate x {clients} clients, {name}"), &r);
            let mut row = r.json();
            row["clients"] = json!(clients);
            row["server"] = json!(if is_noop { "noop-baseline" } else { "worker" });
            emit(out, "grpc_generate", row)?;
            if is_noop {
                noop = Some(r);
            } else {
                worker = Some(r);
            }
        }
        let (worker, noop) = worker.zip(noop).context("both servers were measured")?;
        let ratio = worker.rpcs_per_s() / noop.rpcs_per_s().max(1e-9);
        emit(
            out,
            "grpc_generate_vs_noop",
            json!({
                "clients": clients,
                "ratio": round(ratio, 4),
                "p99_ratio": round(worker.lat.ms(0.99) / noop.lat.ms(0.99).max(1e-9), 3),
            }),
        )?;
        lines.push(Line::at_least(
            format!("gRPC `Generate`, {clients} clients"),
            format!("{} RPCs/s, p99 {:.2} ms", round(worker.rpcs_per_s(), 0), worker.lat.ms(0.99)),
            format!("no-op {} RPCs/s, p99 {:.2} ms", round(noop.rpcs_per_s(), 0), noop.lat.ms(0.99)),
            ratio,
            GENERATE_VS_NOOP_TARGET,
        ));
    }
    Ok(())
}
