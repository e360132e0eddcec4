//! `fenceflake-jepsen`: runs Fenceflake in network namespaces under a nemesis, records the
//! history, checks it, and writes a report. `list` shows scenarios, `test` runs them,
//! `cleanup` removes what a crashed run left behind, `check` re-judges a recorded history.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use fenceflake_jepsen::checker::{check_all, CheckConfig, Valid};
use fenceflake_jepsen::clock::RunClock;
use fenceflake_jepsen::history::{self, HistoryWriter};
use fenceflake_jepsen::run::{run, RunOptions};
use fenceflake_jepsen::scenario::{self, SCENARIOS};
use fenceflake_jepsen::workload::WorkloadClient;
use fenceflake_jepsen::{net, process, report, workload};
use fenceflake_proto::duration::parse_duration;

/// Jepsen-style tests for Fenceflake: real registry and worker processes in network
/// namespaces, partitions, crashes, pauses and clock faults, and checkers that prove no ID
/// was ever minted twice. Needs root (namespaces, nftables).
#[derive(Debug, Parser)]
#[command(name = "fenceflake-jepsen", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the scenarios.
    List,
    /// Run one scenario, or all of them; exit 1 if any checker finds a violation.
    Test(TestArgs),
    /// Remove namespaces left by crashed runs.
    Cleanup,
    /// Re-check a recorded history and rewrite its report.
    Check {
        history: PathBuf,
        /// Where to write results.json and report.html (default: beside the history).
        out_dir: Option<PathBuf>,
    },
    /// (internal) The workload, run by `test` inside the client namespace.
    #[command(hide = true)]
    Workload(WorkloadArgs),
}

// The flags of `test` (the variant's doc is its help).
#[derive(Debug, clap::Args)]
struct TestArgs {
    /// A scenario name (see `list`) or `all`.
    #[arg(long, env = "FENCEFLAKE_JEPSEN_SCENARIO")]
    scenario: String,
    /// Length of each run, with a unit: 30s, 2m, 1h.
    #[arg(long, env = "FENCEFLAKE_JEPSEN_TIME_LIMIT", default_value = "30s", value_parser = parse_duration)]
    time_limit: Duration,
    /// Seed of the nemesis schedule and the workload (printed in the reproduce command).
    #[arg(long, env = "FENCEFLAKE_JEPSEN_SEED")]
    seed: Option<u64>,
    /// Worker processes.
    #[arg(long, env = "FENCEFLAKE_JEPSEN_WORKERS", default_value_t = 6)]
    workers: usize,
    /// Client calls per second across all workers.
    #[arg(long, env = "FENCEFLAKE_JEPSEN_RATE", default_value_t = 2000)]
    rate: u32,
    /// Where runs are stored: <store>/<scenario>/<time>/.
    #[arg(long, env = "FENCEFLAKE_JEPSEN_STORE", default_value = "store")]
    store: PathBuf,
    /// The fenceflake binary under test (default: next to this binary).
    #[arg(long, env = "FENCEFLAKE_BIN")]
    fenceflake: Option<PathBuf>,
    /// Self-test: workers mint past their lease deadline. The run must then be invalid.
    #[arg(long)]
    unsafe_disable_deadline_check: bool,
    /// Self-test: registry nodes authorize nobody (every caller may do anything). Needs
    /// `--fenceflake` naming the test binary built by scripts/build-unsafe-test-binary; the
    /// `adversary` scenario must then be invalid.
    #[arg(long, requires = "fenceflake")]
    unsafe_disable_authorization: bool,
    /// Self-test: workers state no incarnation, so copies of one state dir get one token and
    /// both mint under it. Needs `--fenceflake` naming the test binary; the `clone-state`
    /// scenario must then be invalid.
    #[arg(long, requires = "fenceflake")]
    unsafe_disable_incarnations: bool,
    /// Self-test: registry nodes' clock check always says "within", so a leader whose clock
    /// jumped keeps leading and stamping. Needs `--fenceflake` naming the test binary; the
    /// `registry-clock-skew` scenario must then be invalid.
    #[arg(long, requires = "fenceflake")]
    unsafe_disable_clock_check: bool,
    /// Run every process plaintext (`--insecure`), for comparison; by default each run makes
    /// its own CA and every process and client uses mutual TLS with a certificate of its own.
    #[arg(long)]
    insecure: bool,
    /// How the ID workload calls the workers: `direct` (a random worker per call, waiting out
    /// a hung one: the safety workload) or `balanced` (through `WorkerClient`: what a real
    /// caller sees; the `availability` check then enforces --min-availability).
    #[arg(long, env = "FENCEFLAKE_JEPSEN_WORKLOAD_CLIENT", value_enum, default_value_t = WorkloadClient::Direct)]
    workload_client: WorkloadClient,
    /// With `--workload-client balanced`: the least fraction of ID calls that must succeed
    /// while a worker is paused (the `availability` check; informational in direct mode).
    #[arg(long, env = "FENCEFLAKE_JEPSEN_MIN_AVAILABILITY", default_value_t = 0.99)]
    min_availability: f64,
}

// The flags of the internal `workload`: the client side of one run, in the client namespace.
#[derive(Debug, clap::Args)]
struct WorkloadArgs {
    #[arg(long, value_delimiter = ',')]
    workers: Vec<String>,
    #[arg(long, value_delimiter = ',')]
    registry: Vec<String>,
    #[arg(long)]
    rate: u32,
    #[arg(long)]
    duration_ms: u64,
    #[arg(long)]
    seed: u64,
    #[arg(long)]
    origin_ns: u64,
    #[arg(long)]
    history: PathBuf,
    /// WORKER_INDEX:AT_MS:IDS_PER_CALL:CALLS
    #[arg(long)]
    burst: Vec<String>,
    /// The run's certificate directory (mutual TLS)...
    #[arg(long, required_unless_present = "insecure")]
    certs: Option<PathBuf>,
    /// ...or plaintext.
    #[arg(long, conflicts_with = "certs")]
    insecure: bool,
    /// START_MS:STOP_MS: run the adversary's forged calls between these offsets.
    #[arg(long)]
    adversary: Option<String>,
    #[arg(long, value_enum, default_value_t = WorkloadClient::Direct)]
    client: WorkloadClient,
}

fn main() -> ExitCode {
    tracing_subscriber_init();
    match dispatch(Cli::parse().command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Logs go to stderr (the workload's stderr is its log file), filtered by `RUST_LOG`.
fn tracing_subscriber_init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn exit_code(valid: Valid) -> ExitCode {
    // The Jepsen tradition: 0 valid, 1 invalid, 2 unknown (or could not run).
    ExitCode::from(match valid {
        Valid::True => 0,
        Valid::False => 1,
        Valid::Unknown => 2,
    })
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::List => {
            for s in SCENARIOS {
                println!("{:<20} {}", s.name, s.about);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cleanup => {
            for ns in net::leftover_namespaces()? {
                net::run("ip", &["netns", "del", &ns])?;
                println!("deleted namespace {ns}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { history, out_dir } => check(&history, out_dir),
        Command::Workload(args) => run_workload(args),
        Command::Test(args) => test(args),
    }
}

/// Re-judge a recorded history and rewrite its report.
fn check(path: &std::path::Path, out_dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let out_dir = out_dir.unwrap_or_else(|| path.parent().map_or_else(|| PathBuf::from("."), PathBuf::from));
    let events = history::load(path)?;
    let analysis = check_all(&events, &CheckConfig::default());
    let tls = path.parent().and_then(report::recorded_tls);
    let provenance = report::Provenance { reproduce: format!("fenceflake-jepsen check {}", path.display()), tls };
    let paths = report::write(&out_dir, &events, &analysis, &provenance)?;
    for r in &analysis.results {
        println!("{:<24} {:<8} {}", r.name, r.valid.as_str(), r.summary);
    }
    println!("report: {}", paths.report_html.display());
    Ok(exit_code(analysis.valid()))
}

fn run_workload(args: WorkloadArgs) -> anyhow::Result<ExitCode> {
    let WorkloadArgs {
        workers,
        registry,
        rate,
        duration_ms,
        seed,
        origin_ns,
        history: path,
        burst,
        certs,
        insecure: _,
        adversary,
        client,
    } = args;
    let workers = workers
        .iter()
        .map(|w| w.split_once('=').map(|(n, a)| (n.to_string(), a.to_string())).context("--workers takes NAME=ADDR"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let bursts = burst
        .iter()
        .map(|b| {
            let parts: Vec<u64> = b.split(':').filter_map(|p| p.parse().ok()).collect();
            match parts[..] {
                [w, at, ids, calls] => Ok((w as usize, Duration::from_millis(at), ids as u32, calls as u32)),
                _ => bail!("--burst takes WORKER:AT_MS:IDS:CALLS, got {b:?}"),
            }
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let plan = workload::Plan {
        workers,
        registry,
        rate_per_sec: rate,
        duration: Duration::from_millis(duration_ms),
        seed,
        clock: RunClock { origin_ns },
        bursts,
        certs,
        adversary: adversary.as_deref().map(parse_window).transpose()?,
        client,
    };
    let writer = HistoryWriter::open(&path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(workload::run(plan, writer))?;
    Ok(ExitCode::SUCCESS)
}

/// `START_MS:STOP_MS` as two offsets.
fn parse_window(text: &str) -> anyhow::Result<(Duration, Duration)> {
    let parsed = text.split_once(':').and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
    let (start, stop) = parsed.with_context(|| format!("--adversary takes START_MS:STOP_MS, got {text:?}"))?;
    Ok((Duration::from_millis(start), Duration::from_millis(stop)))
}

/// Whether `binary` carries the unsafe test switch read from the variable `switch` (only the
/// test binary of scripts/build-unsafe-test-binary does; a normal one ignores the variable,
/// and the self-test would then prove nothing).
fn has_switch(binary: &std::path::Path, switch: &str) -> anyhow::Result<bool> {
    let marker = switch.as_bytes();
    let bytes = std::fs::read(binary).with_context(|| format!("read {}", binary.display()))?;
    Ok(bytes.windows(marker.len()).any(|w| w == marker))
}

/// Run the scenarios of `args` one after the other; the exit code of the worst.
fn test(args: TestArgs) -> anyhow::Result<ExitCode> {
    let TestArgs {
        scenario,
        time_limit,
        seed,
        workers,
        rate,
        store,
        fenceflake,
        unsafe_disable_deadline_check,
        unsafe_disable_authorization,
        unsafe_disable_incarnations,
        unsafe_disable_clock_check,
        insecure,
        workload_client,
        min_availability,
    } = args;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("fenceflake-jepsen needs root: it creates network namespaces and nftables rules (run it with sudo)");
        return Ok(ExitCode::from(77));
    }
    anyhow::ensure!(workers >= 2, "--workers must be at least 2 (got {workers})");
    anyhow::ensure!((0.0..=1.0).contains(&min_availability), "--min-availability is a fraction in 0..=1");
    let harness = std::env::current_exe()?;
    let fenceflake = fenceflake.unwrap_or_else(|| harness.with_file_name("fenceflake"));
    anyhow::ensure!(
        fenceflake.exists(),
        "{} not found: build it (`cargo build -p fenceflake-cli`) or pass --fenceflake",
        fenceflake.display()
    );
    let switches = [
        (unsafe_disable_authorization, "--unsafe-disable-authorization", process::UNSAFE_DISABLE_AUTHORIZATION),
        (unsafe_disable_incarnations, "--unsafe-disable-incarnations", process::UNSAFE_DISABLE_INCARNATIONS),
        (unsafe_disable_clock_check, "--unsafe-disable-clock-check", process::UNSAFE_DISABLE_CLOCK_CHECK),
    ];
    for (_, flag, switch) in switches.into_iter().filter(|s| s.0) {
        anyhow::ensure!(
            has_switch(&fenceflake, switch)?,
            "{flag}: {} has no unsafe test switch {switch} (build target/unsafe-test/fenceflake with scripts/build-unsafe-test-binary and pass it as --fenceflake)",
            fenceflake.display()
        );
    }
    let scenarios: Vec<&'static scenario::Scenario> = if scenario == "all" {
        SCENARIOS.iter().collect()
    } else {
        vec![scenario::find(&scenario)
            .with_context(|| format!("unknown scenario {scenario:?}; see `fenceflake-jepsen list`"))?]
    };
    let seed = seed.unwrap_or_else(|| fenceflake_jepsen::clock::mono_ns() % 1_000_000);
    let mut worst = Valid::True;
    let mut summary = Vec::new();
    for scenario in scenarios {
        let options = RunOptions {
            scenario,
            time_limit,
            seed,
            workers,
            rate,
            store: store.clone(),
            fenceflake: fenceflake.clone(),
            harness: harness.clone(),
            unsafe_disable_deadline_check,
            unsafe_disable_authorization,
            unsafe_disable_incarnations,
            unsafe_disable_clock_check,
            insecure,
            workload_client,
            min_availability,
        };
        let outcome = run(&options)?;
        for r in &outcome.results {
            println!("  {:<20} {:<8} {}", r.name, r.valid.as_str(), r.summary);
        }
        let report = outcome.dir.join("report.html");
        println!("{} {} (tls: {}): {}", scenario.name, outcome.valid.as_str(), outcome.tls, report.display());
        summary.push(format!("{:<20} {:<8} tls: {}", scenario.name, outcome.valid.as_str(), outcome.tls));
        worst = worst.and(outcome.valid);
    }
    println!("\n{}", summary.join("\n"));
    Ok(exit_code(worst))
}
