//! `fenceflake-sim`: run seeds of the deterministic simulation and say whether every history
//! was valid. Exit codes (scripts rely on them): 0 every seed valid, 1 a violation (the last
//! line is `violation seed=S: <command that reproduces it>`), 2 a usage error, 3 a checker
//! could not conclude, 4 the simulator itself failed (an IO error).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use fenceflake_jepsen::checker::Valid;
use fenceflake_proto::duration::parse_duration;
use fenceflake_proto::switches::Mechanism;
use fenceflake_sim::report;
use fenceflake_sim::seeds::Seeds;
use fenceflake_sim::world::{self, RunConfig};

#[derive(Debug, Parser)]
#[command(
    name = "fenceflake-sim",
    version,
    about = "Deterministic simulation of a Fenceflake cluster: 5 registry nodes and 8 workers under faults, from one seed"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Safety mechanism to switch off for the run (repeatable; names: `list-mechanisms`).
    /// Self-tests only: with one off, the simulator must find a violation.
    #[arg(long = "disable", value_parser = parse_mechanism, env = "FENCEFLAKE_SIM_DISABLE", value_delimiter = ',')]
    disabled: Vec<Mechanism>,
    /// Simulated time of faults per seed (then everything heals and settles for 12 s).
    #[arg(long, value_parser = parse_duration, default_value = "30s", env = "FENCEFLAKE_SIM_DURATION")]
    duration: Duration,
    /// Leave out the registry client (whose calls the linearizability checker judges) and the
    /// adversary (forged calls): only the workers, the registry and the faults, judged by the
    /// ID-safety checkers. About twice the seeds per hour, for long soaks; CI runs both.
    #[arg(long, env = "FENCEFLAKE_SIM_IDS_ONLY")]
    ids_only: bool,
    /// A rolling upgrade to a release with a smaller Raft timing: the nodes start on the old
    /// default (100 ms / 300–600 ms), every restart runs today's, and once the upgrade restarts
    /// the leader's followers, then cuts the leader off from them (`start-quiet`'s self-test).
    #[arg(long, env = "FENCEFLAKE_SIM_ROLLING_UPGRADE")]
    rolling_upgrade: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run seeds A..B (half-open), or one seed; stop at the first violation.
    Run {
        /// Seeds to run: `A..B` (A up to B-1).
        #[arg(long, value_parser = Seeds::parse, conflicts_with = "seed", required_unless_present = "seed")]
        seeds: Option<Seeds>,
        /// One seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Write the history of the (single) seed here, as JSON lines.
        #[arg(long, requires = "seed")]
        history: Option<PathBuf>,
        #[command(flatten)]
        args: RunArgs,
    },
    /// Run seeds N.. (or A..B) for at most `--time` of real time; append every failing seed's
    /// reproduce line to `--failures` and go on.
    Soak {
        #[arg(long, value_parser = Seeds::parse)]
        seeds: Seeds,
        /// Real time to run for.
        #[arg(long, value_parser = parse_duration, default_value = "1h")]
        time: Duration,
        /// File the reproduce lines of failing seeds are appended to.
        #[arg(long, default_value = "sim-failures.txt")]
        failures: PathBuf,
        #[command(flatten)]
        args: RunArgs,
    },
    /// Print the safety mechanisms `--disable` can switch off, one kebab-case name per line.
    ListMechanisms,
}

fn parse_mechanism(name: &str) -> Result<Mechanism, String> {
    Mechanism::parse(name).ok_or_else(|| {
        let names: Vec<&str> = Mechanism::ALL.iter().map(|m| m.name()).collect();
        format!("no mechanism {name:?}; one of: {}", names.join(", "))
    })
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FENCEFLAKE_SIM_LOG").unwrap_or_else(|_| "off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::ListMechanisms => {
            print!("{}", report::mechanisms());
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { seeds, seed, history, args } => {
            let seeds = seeds.or(seed.map(|s| Seeds { start: s, end: Some(s.saturating_add(1)) }));
            run(seeds.unwrap_or(Seeds { start: 0, end: Some(1) }), history, &args)
        }
        Command::Soak { seeds, time, failures, args } => soak(seeds, time, &failures, &args),
    };
    result.unwrap_or_else(|error| {
        eprintln!("fenceflake-sim: {error:#}");
        ExitCode::from(4)
    })
}

fn config(seed: u64, args: &RunArgs) -> RunConfig {
    RunConfig {
        duration: args.duration,
        disabled: args.disabled.clone(),
        ids_only: args.ids_only,
        rolling_upgrade: args.rolling_upgrade,
        ..RunConfig::new(seed)
    }
}

fn run(seeds: Seeds, history: Option<PathBuf>, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let (mut simulated, started) = (Duration::ZERO, Instant::now());
    let mut inconclusive = None;
    for seed in seeds.iter() {
        let config = config(seed, args);
        let began = Instant::now();
        let outcome = world::run(&config)?;
        simulated += outcome.simulated;
        println!("{}", report::seed_line(&config, &outcome, began.elapsed()));
        if let Some(path) = &history {
            std::fs::write(path, world::history_lines(&outcome.events)?)?;
        }
        match outcome.valid() {
            Valid::True => {}
            Valid::False => {
                print!("{}", report::explain(&outcome));
                println!("violation seed={seed}: {}", report::reproduce(&config));
                return Ok(ExitCode::from(1));
            }
            Valid::Unknown => {
                print!("{}", report::explain(&outcome));
                inconclusive.get_or_insert(seed);
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    println!(
        "simulated {:.0}s in {wall:.1}s of real time ({:.0}× real time)",
        simulated.as_secs_f64(),
        simulated.as_secs_f64() / wall.max(1e-9)
    );
    Ok(match inconclusive {
        Some(seed) => {
            println!("inconclusive seed={seed}: {}", report::reproduce(&config(seed, args)));
            ExitCode::from(3)
        }
        None => ExitCode::SUCCESS,
    })
}

fn soak(seeds: Seeds, time: Duration, failures: &std::path::Path, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut failed = 0u64;
    for seed in seeds.iter() {
        if started.elapsed() >= time {
            break;
        }
        let config = config(seed, args);
        let began = Instant::now();
        let outcome = world::run(&config)?;
        println!("{}", report::seed_line(&config, &outcome, began.elapsed()));
        if outcome.valid() != Valid::True {
            failed += 1;
            print!("{}", report::explain(&outcome));
            let mut file = std::fs::OpenOptions::new().create(true).append(true).open(failures)?;
            writeln!(file, "{} seed={seed}: {}", outcome.valid().as_str(), report::reproduce(&config))?;
        }
    }
    println!("soak: {failed} failing seeds (appended to {})", failures.display());
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
