//! `cargo bench -p fenceflake-worker --bench generate`: library-mode [`Generator::generate`]
//! (one ID per call) against the layout's ceiling and against a bare Snowflake loop, measured
//! in one command (BENCHMARKS.md, "Worker").
//!
//! One worker runs in this process with the real clocks ([`SystemClock`]), a state dir in a
//! temp dir (the ceiling is flushed and fsynced as in production) and an in-process registry
//! that grants and renews every lease at once, so only the minting path is measured. Each
//! round measures, in turn:
//! 1. what one `SystemClock::wall_ms()` and one `SystemClock::mono()` cost;
//! 2. a bare Snowflake loop: the wall clock read per ID, the sequence, nothing else (no lease,
//!    no ceiling, no guard) — what one thread can do at best on this machine;
//! 3. `generate()` from 1 thread, then from `--threads` threads at once (each thread runs its
//!    own current-thread tokio runtime and awaits `generate()` in a loop).
//!
//! Rounds repeat the whole sequence, so a machine shared with other work shows up as the
//! spread between rounds; `/proc/loadavg` is printed before each round, and the median,
//! lowest and highest of each ratio at the end.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use clap::Parser;
use fenceflake_worker::lease::LeaseGrant;
use fenceflake_worker::registry_client::{BoxFuture, LeaseRegistry, RegistryCallError, RenewRequest};
use fenceflake_worker::{
    Clock, Generator, HolderId, Incarnation, Security, SystemClock, Token, WorkerConfig, WorkerId,
};

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

#[derive(Debug, Parser)]
struct Args {
    /// Recorded window of each measurement, in seconds.
    #[arg(long, env = "FF_GENERATE_BENCH_SECS", default_value_t = 3.0)]
    secs: f64,
    /// Unrecorded warm-up before each window, in seconds.
    #[arg(long, env = "FF_GENERATE_BENCH_WARMUP_SECS", default_value_t = 0.5)]
    warmup_secs: f64,
    /// Threads calling `generate()` at once in the concurrent measurement.
    #[arg(long, env = "FF_GENERATE_BENCH_THREADS", default_value_t = 8)]
    threads: usize,
    /// How many times the whole sequence is repeated (at least 1).
    #[arg(long, env = "FF_GENERATE_BENCH_ROUNDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    rounds: u64,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

const EPOCH_MS: u64 = 1_600_000_000_000;
const SEQUENCE_BITS: u8 = 12;
const LEASE_TTL: Duration = Duration::from_secs(10);

/// A registry that grants and renews at once, stating the registry time as this machine's.
struct InstantRegistry;

fn grant_now() -> LeaseGrant {
    let now = SystemClock.wall_ms();
    LeaseGrant {
        worker_id: WorkerId::new(1),
        token: Token::new(1),
        holder: "bench".into(),
        ttl: LEASE_TTL,
        not_before_ms: 0,
        registry_time_ms: now,
        epoch_ms: EPOCH_MS,
        worker_id_bits: 10,
        sequence_bits: Some(SEQUENCE_BITS),
        mint_until_ms: now + LEASE_TTL.as_millis() as u64,
    }
}

impl LeaseRegistry for InstantRegistry {
    fn acquire<'a>(
        &'a self,
        _holder: &'a HolderId,
        _incarnation: Incarnation,
        _worker_id: Option<WorkerId>,
        _ttl: Duration,
    ) -> BoxFuture<'a, Result<LeaseGrant, RegistryCallError>> {
        Box::pin(async { Ok(grant_now()) })
    }

    fn renew(&self, _request: RenewRequest) -> BoxFuture<'_, Result<LeaseGrant, RegistryCallError>> {
        Box::pin(async { Ok(grant_now()) })
    }

    fn release(&self, _: WorkerId, _: Token, _: u64) -> BoxFuture<'_, Result<(), RegistryCallError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Nanoseconds per call of `f`, over a million calls.
fn ns_per_call(mut f: impl FnMut() -> u64) -> f64 {
    const CALLS: u32 = 1_000_000;
    let t0 = Instant::now();
    let mut sum = 0u64;
    for _ in 0..CALLS {
        sum = sum.wrapping_add(f());
    }
    black_box(sum);
    t0.elapsed().as_nanos() as f64 / f64::from(CALLS)
}

/// IDs per second of a bare Snowflake loop on one thread: read the wall clock, take the next
/// sequence number (or skip while it is used up), build the ID.
fn bare_snowflake(warmup: Duration, window: Duration) -> f64 {
    let max_seq = (1u64 << SEQUENCE_BITS) - 1;
    let (mut last_ms, mut seq) = (0u64, 0u64);
    let mut run = |until: Instant| -> u64 {
        let mut minted = 0u64;
        while Instant::now() < until {
            for _ in 0..256 {
                let now_ms = SystemClock.wall_ms();
                if now_ms != last_ms {
                    (last_ms, seq) = (now_ms, 0);
                } else if seq < max_seq {
                    seq += 1;
                } else {
                    continue;
                }
                black_box(((now_ms - EPOCH_MS) << 22) | (1 << SEQUENCE_BITS) | seq);
                minted += 1;
            }
        }
        minted
    };
    run(Instant::now() + warmup);
    let t0 = Instant::now();
    let minted = run(t0 + window);
    minted as f64 / t0.elapsed().as_secs_f64()
}

/// IDs per second of `threads` threads calling `generate()` in a loop at once. Each thread
/// also checks that its own IDs strictly increase.
fn generate_rate(generator: &Generator, threads: usize, warmup: Duration, window: Duration) -> BenchResult<f64> {
    let start = Arc::new(Barrier::new(threads + 1));
    let callers: Vec<_> = (0..threads)
        .map(|_| {
            let (g, start) = (generator.clone(), start.clone());
            std::thread::spawn(move || -> Result<u64, String> {
                let rt =
                    tokio::runtime::Builder::new_current_thread().enable_time().build().map_err(|e| e.to_string())?;
                start.wait();
                let t0 = Instant::now();
                let (rec_from, end) = (t0 + warmup, t0 + warmup + window);
                rt.block_on(async {
                    let (mut minted, mut last) = (0u64, 0u64);
                    loop {
                        // The time is looked at once per 64 calls, as the bare loop does per 256.
                        let now = Instant::now();
                        if now >= end {
                            return Ok(minted);
                        }
                        for _ in 0..64 {
                            let id = g.generate().await.map_err(|e| e.to_string())?;
                            if id <= last {
                                return Err(format!("ID {id} not above this thread's previous {last}"));
                            }
                            last = id;
                        }
                        minted += if now >= rec_from { 64 } else { 0 };
                    }
                })
            })
        })
        .collect();
    start.wait();
    let mut total = 0u64;
    for caller in callers {
        total += caller.join().map_err(|_| "a generate() thread panicked")??;
    }
    Ok(total as f64 / window.as_secs_f64())
}

/// Median, lowest and highest of each ratio over the rounds.
fn print_spread(ratios: &[[f64; 5]], threads: usize) {
    let names = [
        "bare ÷ ceiling",
        "1 thread ÷ ceiling",
        "1 thread ÷ bare",
        &format!("{threads} threads ÷ ceiling"),
        &format!("{threads} threads ÷ bare"),
    ]
    .map(str::to_string);
    println!("\n| ratio over {} rounds | median | min | max |\n|---|---|---|---|", ratios.len());
    for (i, name) in names.iter().enumerate() {
        let mut column: Vec<f64> = ratios.iter().map(|r| r[i]).collect();
        column.sort_by(f64::total_cmp);
        let median = column[column.len() / 2];
        println!("| {name} | {median:.3} | {:.3} | {:.3} |", column[0], column[column.len() - 1]);
    }
}

fn main() -> BenchResult<()> {
    let args = Args::parse();
    let (warmup, window) = (Duration::from_secs_f64(args.warmup_secs), Duration::from_secs_f64(args.secs));
    // The keeper and the park monitor run here; the callers bring their own runtimes.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let dir = tempfile::tempdir()?;
    let config =
        WorkerConfig::new(vec!["in-process".into()], dir.path().join("state"), "bench-0".into(), Security::Insecure);
    let generator = rt.block_on(async {
        let g = Generator::start_with_registry(config, Arc::new(SystemClock), Arc::new(InstantRegistry)).await?;
        g.wait_serving(Duration::from_secs(5)).await?;
        BenchResult::Ok(g)
    })?;
    let ceiling = f64::from(generator.status().layout.max_sequence() + 1) * 1000.0;
    println!(
        "ceiling {:.3} M IDs/s ({SEQUENCE_BITS} sequence bits); {} rounds of {:.1} s windows",
        ceiling / 1e6,
        args.rounds,
        args.secs
    );
    println!("| round | loadavg | wall_ms() ns | mono() ns | bare loop M/s (÷ ceiling) | generate() 1 thread M/s (÷ ceiling, ÷ bare) | generate() {} threads M/s (÷ ceiling, ÷ bare) |", args.threads);
    println!("|---|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for round in 1..=args.rounds {
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let load = load.split_whitespace().next().unwrap_or("?").to_string();
        let wall_ns = ns_per_call(|| SystemClock.wall_ms());
        let mono_ns = ns_per_call(|| SystemClock.mono().as_nanos());
        let bare = bare_snowflake(warmup, window);
        let one = generate_rate(&generator, 1, warmup, window)?;
        let many = generate_rate(&generator, args.threads, warmup, window)?;
        println!(
            "| {round} | {load} | {wall_ns:.1} | {mono_ns:.1} | {:.3} ({:.3}) | {:.3} ({:.3}, {:.3}) | {:.3} ({:.3}, {:.3}) |",
            bare / 1e6,
            bare / ceiling,
            one / 1e6,
            one / ceiling,
            one / bare,
            many / 1e6,
            many / ceiling,
            many / bare
        );
        ratios.push([bare / ceiling, one / ceiling, one / bare, many / ceiling, many / bare]);
    }
    print_spread(&ratios, args.threads);
    rt.block_on(generator.shutdown());
    Ok(())
}
