//! `fenceflake mint`: ask a set of workers for IDs through the balancing client and print
//! them, one per line. Mutual TLS with a `client` (or `operator`) certificate; the workers
//! must present `worker` certificates of the same CA.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use fenceflake_client::{ClientError, ClientStats, WorkerClient};
use fenceflake_proto::tls::TlsArgs;
use fenceflake_worker::limits::MAX_BATCH_COUNT;

/// Most IDs one `mint` prints: enough for any experiment, bounded like everything else.
const MAX_MINT_COUNT: u32 = 10_000_000;

/// Consecutive rate-limited answers waited out before giving up.
const MAX_RATE_LIMITED_RETRIES: u32 = 50;

/// Mint IDs from workers and print them, one per line.
///
/// TLS: a `client` certificate of the cluster CA (`fenceflake certs issue --role client`);
/// the workers must present `worker` certificates.
#[derive(Debug, Args)]
pub struct MintArgs {
    #[command(flatten)]
    tls: TlsArgs,
    /// Worker addresses, HOST:PORT[,HOST:PORT...]; calls rotate over them and fail over.
    #[arg(long, env = "FENCEFLAKE_WORKERS", value_delimiter = ',', required = true)]
    workers: Vec<String>,
    /// How many IDs.
    #[arg(short = 'n', long = "count", env = "FENCEFLAKE_MINT_COUNT", default_value_t = 1)]
    count: u32,
    /// Use GenerateBatch (ranges of up to 100000 IDs per call) instead of one call per ID.
    #[arg(long, env = "FENCEFLAKE_MINT_BATCH")]
    batch: bool,
    /// Name sent as x-caller. Workers rate-limit per certificate identity and honour
    /// x-caller only from an operator certificate (acting for others), or when --insecure.
    #[arg(long, env = "FENCEFLAKE_CALLER")]
    caller: Option<String>,
    /// After minting, print the client's counters (hedges; per worker attempts, answers,
    /// timeouts, ejections, probes) as one JSON line on stderr.
    #[arg(long)]
    stats: bool,
}

pub async fn run(args: MintArgs) -> anyhow::Result<()> {
    anyhow::ensure!((1..=MAX_MINT_COUNT).contains(&args.count), "-n {} outside 1..={MAX_MINT_COUNT}", args.count);
    let security = args.tls.security()?;
    let client = WorkerClient::new(&args.workers, args.caller.as_deref(), &security)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut left = args.count;
    let mut limited = 0;
    while left > 0 {
        let want = if args.batch { left.min(MAX_BATCH_COUNT) } else { 1 };
        let minted = if args.batch {
            client.generate_batch(want).await.map(|b| b.ranges.iter().map(|r| (r.first, r.count)).collect())
        } else {
            client.generate().await.map(|id| vec![(id, 1)])
        };
        match minted {
            Ok(ranges) => {
                limited = 0;
                for (first, count) in ranges {
                    for id in first..first + u64::from(count) {
                        writeln!(out, "{id}").context("cannot write to stdout")?;
                    }
                }
                left -= want;
            }
            // The workers' per-caller limits say when to come back; a large -n just takes
            // longer.
            Err(ClientError::RateLimited { retry_after_ms }) if limited < MAX_RATE_LIMITED_RETRIES => {
                limited += 1;
                tokio::time::sleep(Duration::from_millis(retry_after_ms)).await;
            }
            Err(e) => return Err(e).context(if args.batch { "GenerateBatch" } else { "Generate" }),
        }
    }
    out.flush()?;
    if args.stats {
        eprintln!("{}", stats_json(&client.stats()));
    }
    Ok(())
}

fn stats_json(stats: &ClientStats) -> serde_json::Value {
    let workers: Vec<_> = stats
        .workers
        .iter()
        .map(|w| {
            serde_json::json!({
                "addr": w.addr, "attempts": w.attempts, "answers": w.answers, "timeouts": w.timeouts,
                "ejections": w.ejections, "probes": w.probes, "readmissions": w.readmissions, "admitted": w.admitted,
            })
        })
        .collect();
    serde_json::json!({ "hedges": stats.hedges, "workers": workers })
}
