//! A small closed-loop benchmark of `WorkerClient`: `concurrency` tasks call Generate (or
//! GenerateBatch of `batch` IDs) through one shared client for `seconds`, then print calls/s,
//! IDs/s, p50/p99/max latency and the client's counters. Run it against healthy workers and
//! against the same workers with one SIGSTOPped:
//!
//! `cargo run --release -p fenceflake-client --example gray_bench -- A,B,C single 16 5`
//! `cargo run --release -p fenceflake-client --example gray_bench -- A,B,C batch:1000 16 5`
//!
//! TLS from the environment, as every fenceflake binary takes it: `FENCEFLAKE_TLS_CA`,
//! `FENCEFLAKE_TLS_CERT`, `FENCEFLAKE_TLS_KEY` (a `client` certificate), or
//! `FENCEFLAKE_INSECURE=1` against workers started `--insecure`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fenceflake_client::{Security, WorkerClient};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: gray_bench WORKERS single|batch:N CONCURRENCY SECONDS";
    let [workers, mode, concurrency, seconds] = &args[..] else { panic!("{usage}") };
    let workers: Vec<String> = workers.split(',').map(str::to_string).collect();
    let batch: Option<u32> = mode.strip_prefix("batch:").map(|n| n.parse().expect("batch size"));
    let concurrency: usize = concurrency.parse().expect("concurrency");
    let run_for = Duration::from_secs(seconds.parse().expect("seconds"));
    let path = |var: &str| std::env::var_os(var).map(std::path::PathBuf::from);
    let insecure = std::env::var("FENCEFLAKE_INSECURE").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    let security = Security::from_flags(
        path("FENCEFLAKE_TLS_CA"),
        path("FENCEFLAKE_TLS_CERT"),
        path("FENCEFLAKE_TLS_KEY"),
        insecure,
    )
    .expect("TLS settings");
    let client = Arc::new(WorkerClient::new(&workers, Some("gray-bench"), &security).expect("client"));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let (mut latencies, mut ids, mut errors) = (Vec::new(), 0u64, 0u64);
                while started.elapsed() < run_for {
                    let t = Instant::now();
                    let got = match batch {
                        Some(n) => client.generate_batch(n).await.map(|_| u64::from(n)),
                        None => client.generate().await.map(|_| 1),
                    };
                    latencies.push(t.elapsed());
                    match got {
                        Ok(n) => ids += n,
                        Err(_) => errors += 1,
                    }
                }
                (latencies, ids, errors)
            })
        })
        .collect();
    let (mut latencies, mut ids, mut errors) = (Vec::new(), 0, 0);
    for task in tasks {
        let (l, i, e) = task.await.expect("task");
        latencies.extend(l);
        ids += i;
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: usize| latencies[(latencies.len() * p).div_ceil(100).saturating_sub(1)];
    println!(
        "mode={mode} concurrency={concurrency} calls/s={:.0} ids/s={:.0} errors={errors} p50={:?} p99={:?} max={:?}",
        latencies.len() as f64 / secs,
        ids as f64 / secs,
        pct(50),
        pct(99),
        latencies.last().copied().unwrap_or_default()
    );
    println!("{:?}", client.stats());
}
