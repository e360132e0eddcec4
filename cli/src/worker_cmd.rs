//! `fenceflake worker`: run one generator worker — lease a worker ID from the registry and
//! serve fenced Snowflake IDs over gRPC until SIGTERM, then release the lease and exit 0.
//! Mutual TLS with one `worker` certificate for both sides (the registry client and the
//! Generator port), unless started `--insecure`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use fenceflake_proto::duration::parse_duration;
use fenceflake_proto::tls::{Security, TlsArgs};
use fenceflake_worker::limits::{DEFAULT_RATE_LIMIT_BURST, DEFAULT_RATE_LIMIT_IDS_PER_SEC};
use fenceflake_worker::server::{self, Listeners};
use fenceflake_worker::{Generator, RateLimitConfig, RateLimiter, SystemClock, WorkerConfig, WorkerIdSpec};

use crate::signals::shutdown_signal;

/// Run one generator worker.
///
/// It acquires a fenced lease on a worker ID, renews it every ttl/3, mints only while the
/// lease is provably its own (parks otherwise), and persists a timestamp ceiling in
/// --state-dir so a restart never repeats an ID. Give each worker its own --state-dir.
///
/// TLS: a `worker` certificate of the cluster CA (`fenceflake certs issue --role worker`),
/// presented to the registry (whose nodes must present `node` certificates) and to callers
/// of the Generator port (which accepts `client`, `worker` and `operator` certificates).
#[derive(Debug, Args)]
#[command(after_help = crate::DURATION_HELP)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Registry client addresses, HOST:PORT[,HOST:PORT...]; any node will do.
    #[arg(long, env = "FENCEFLAKE_REGISTRY", value_delimiter = ',', required = true)]
    pub registry: Vec<String>,
    /// Address to serve the Generator API and grpc.health.v1 on.
    #[arg(long, env = "FENCEFLAKE_LISTEN", default_value = "127.0.0.1:7379")]
    pub listen: SocketAddr,
    /// Directory for the ceiling, the holder ID and a lock (created if missing).
    #[arg(long, env = "FENCEFLAKE_STATE_DIR")]
    pub state_dir: PathBuf,
    /// auto (any free ID; a restart with its state dir gets its own lease back, or another ID
    /// if that one was quarantined), ordinal (N from a hostname `name-N`), or a number.
    #[arg(long, env = "FENCEFLAKE_WORKER_ID", default_value = "auto")]
    pub worker_id: WorkerIdSpec,
    /// Bound on connecting to one registry node (TCP and TLS handshakes: two round trips);
    /// a node that does not answer in this long is passed over for the next. Raise it above
    /// twice the round trip when the registry is far (over ~100 ms away): below that no
    /// connection can complete. At most 2s; a registry call as a whole has a third of the TTL.
    #[arg(long, env = "FENCEFLAKE_REGISTRY_CONNECT_TIMEOUT", default_value = "250ms", value_parser = parse_duration)]
    pub registry_connect_timeout: Duration,
    /// Lease TTL asked of the registry; renewed every third of it.
    #[arg(long, env = "FENCEFLAKE_LEASE_TTL", default_value = "10s", value_parser = parse_duration)]
    pub lease_ttl: Duration,
    /// Safety margin: minting stops at last renewal's send time + TTL - margin. Default:
    /// min(1s, TTL/10), i.e. 1s for the default 10s TTL and 300ms for a 3s one. A value
    /// given must be above 0 and below a third of the TTL.
    #[arg(long, env = "FENCEFLAKE_MARGIN", value_parser = parse_duration)]
    pub margin: Option<Duration>,
    /// Longest wall-clock regression waited out instead of parking (CLOCK_REGRESSED).
    #[arg(long, env = "FENCEFLAKE_MAX_SPIN", default_value = "20ms", value_parser = parse_duration)]
    pub max_spin: Duration,
    /// On a regression, first serve the rest of the frozen millisecond's sequence.
    #[arg(long, env = "FENCEFLAKE_GRACE")]
    pub grace: bool,
    /// Largest tolerated difference from the registry leader's wall clock (else CLOCK_SKEW).
    #[arg(long, env = "FENCEFLAKE_MAX_SKEW", default_value = "500ms", value_parser = parse_duration)]
    pub max_skew: Duration,
    /// How far each persisted ceiling runs ahead (fsyncs per second vs. boot wait after a crash).
    #[arg(long, env = "FENCEFLAKE_FLUSH_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub flush_interval: Duration,
    /// How long to wait at start while the registry says no worker ID can be had now: every
    /// ID held or quarantined, or the --worker-id asked for held by the registry's embargo
    /// after a backup restore (max TTL + cool-down). Retries with backoff (up to 5s apart);
    /// 0s exits at once. An ID held by another worker, or quarantined, exits at once anyway.
    #[arg(long, env = "FENCEFLAKE_ID_WAIT", default_value = "5m", value_parser = parse_duration)]
    pub id_wait: Duration,
    /// Serve Prometheus metrics on HOST:PORT (/metrics).
    #[arg(long, env = "FENCEFLAKE_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// UNSAFE, harness self-test only, and only in the separately built test binary (feature
    /// `unsafe-test-switches`): mint past the lease deadline (mechanism 2 off), to prove the
    /// harness catches the duplicates that follow.
    #[cfg(feature = "unsafe-test-switches")]
    #[arg(long, env = "FENCEFLAKE_UNSAFE_DISABLE_DEADLINE_CHECK", hide = true)]
    pub unsafe_disable_deadline_check: bool,
    /// UNSAFE, harness self-test only, and only in the separately built test binary (feature
    /// `unsafe-test-switches`): every process of a holder states one incarnation, so a copy of
    /// the state dir gets the same token and mints duplicates, to prove the harness catches them.
    #[cfg(feature = "unsafe-test-switches")]
    #[arg(long, env = "FENCEFLAKE_UNSAFE_DISABLE_INCARNATIONS", hide = true)]
    pub unsafe_disable_incarnations: bool,
    /// Leave out: the whole ID layout (epoch, worker-ID bits, sequence bits) is the cluster's,
    /// stated in every grant. Given and different from the cluster's, the worker refuses to
    /// start (exit 1) and mints nothing. Used only with a registry that states no sequence
    /// width (older than this worker): then this, else 12.
    #[arg(long, env = "FENCEFLAKE_SEQUENCE_BITS")]
    pub sequence_bits: Option<u8>,
    /// Host name used in the holder ID and for --worker-id ordinal (default: $HOSTNAME, else
    /// the kernel's host name).
    #[arg(long, env = "FENCEFLAKE_HOSTNAME")]
    pub hostname: Option<String>,
    /// Per-caller limit in IDs per second; 0 = off. The caller is the certificate's SPIFFE ID
    /// (x-caller metadata is honoured only from operator certificates, which may act for
    /// others); with --insecure, x-caller, else the peer's IP.
    #[arg(long, env = "FENCEFLAKE_RATE_LIMIT", default_value_t = DEFAULT_RATE_LIMIT_IDS_PER_SEC)]
    pub rate_limit: u64,
    /// Per-caller burst in IDs (at least one maximal batch, 100000).
    #[arg(long, env = "FENCEFLAKE_RATE_LIMIT_BURST", default_value_t = DEFAULT_RATE_LIMIT_BURST)]
    pub rate_limit_burst: u64,
}

impl WorkerArgs {
    fn config(&self, security: Security) -> WorkerConfig {
        let hostname = self.hostname.clone().unwrap_or_else(crate::hostname::detect);
        let mut config = WorkerConfig::new(self.registry.clone(), self.state_dir.clone(), hostname, security);
        config.worker_id = self.worker_id.clone();
        config.lease_ttl = self.lease_ttl;
        config.margin = self.margin;
        config.registry_connect_timeout = self.registry_connect_timeout;
        config.max_spin = self.max_spin;
        config.grace = self.grace;
        config.max_skew = self.max_skew;
        config.flush_interval = self.flush_interval;
        config.sequence_bits = self.sequence_bits;
        config.id_wait = self.id_wait;
        #[cfg(feature = "unsafe-test-switches")]
        if self.unsafe_disable_deadline_check {
            tracing::error!("UNSAFE: the lease deadline check is disabled; this worker WILL mint duplicates (harness self-test only)");
            config.deadline_check = fenceflake_worker::config::DeadlineCheck::DisabledUnsafe;
        }
        #[cfg(feature = "unsafe-test-switches")]
        if self.unsafe_disable_incarnations {
            tracing::error!("UNSAFE: incarnations are disabled; copies of this state dir WILL share a token and mint duplicates (harness self-test only)");
            config.incarnations = fenceflake_worker::config::Incarnations::DisabledUnsafe;
        }
        config
    }

    fn rate_limit(&self) -> RateLimitConfig {
        RateLimitConfig { ids_per_sec: self.rate_limit, burst: self.rate_limit_burst }
    }
}

/// A broken minting invariant must stop the process (and let its supervisor restart it
/// through the boot wait), not just the task that tripped it.
fn abort_on_panic() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::abort();
    }));
}

pub async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {what} {addr} (in use by another process?)"))
}

pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    abort_on_panic();
    let security = args.tls.security()?;
    let config = args.config(security.clone());
    config.validate()?;
    security.announce("worker");
    let (stop_following, following) = tokio::sync::oneshot::channel::<()>();
    security.follow_files(async {
        let _ = following.await;
    });
    let limiter = Arc::new(RateLimiter::new(args.rate_limit(), Arc::new(SystemClock))?);
    // Bound before the lease is acquired, so a busy port does not cost a lease.
    let listeners = Listeners {
        grpc: bind(args.listen, "--listen").await?,
        metrics: match args.metrics_addr {
            Some(addr) => Some(bind(addr, "--metrics-addr").await?),
            None => None,
        },
    };
    let generator = Generator::start(config, Arc::new(SystemClock)).await?;
    let status = generator.status();
    tracing::info!(
        worker_id = %status.worker_id,
        token = %status.token,
        holder = %status.holder,
        listen = %args.listen,
        "worker serving"
    );
    // A worker that lost the right to mint for good (FENCED, SUPERSEDED, QUARANTINED,
    // STATE_DIR_FAILED) gets out of the way: it stops serving, releases what it still holds,
    // and exits non-zero, so that its supervisor starts it afresh (a new incarnation, which
    // acquires a new lease) instead of a parked process holding its worker ID until a human
    // acts.
    let (ended_tx, mut ended_rx) = tokio::sync::oneshot::channel();
    let watched = generator.clone();
    let shutdown = async move {
        tokio::select! {
            () = shutdown_signal() => {}
            cause = watched.ended() => { let _ = ended_tx.send(cause); }
        }
    };
    server::run(generator, listeners, limiter, shutdown).await?;
    drop(stop_following);
    if let Ok(cause) = ended_rx.try_recv() {
        anyhow::bail!(
            "the lease was lost for good ({cause}); exiting non-zero so that the supervisor restarts the worker \
             under a new lease (see the ERROR above for why)"
        );
    }
    tracing::info!("worker stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        worker: WorkerArgs,
    }

    fn config(flags: &[&str]) -> Result<WorkerConfig, String> {
        let base = ["fenceflake", "--registry", "127.0.0.1:1", "--state-dir", "/tmp/x", "--hostname", "h"];
        let cli = Cli::try_parse_from(base.iter().chain(flags)).map_err(|e| e.to_string())?;
        let config = cli.worker.config(Security::Insecure);
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    /// Goal: `--lease-ttl 3s` alone starts (the margin follows the TTL: 300ms), the default
    /// TTL keeps 1s, an explicit margin is used as given and still refused when too large,
    /// and a bare number is refused naming the units.
    #[test]
    fn margin_follows_the_ttl_unless_given() {
        assert_eq!(config(&["--lease-ttl", "3s"]).unwrap().effective_margin(), Duration::from_millis(300));
        assert_eq!(config(&[]).unwrap().effective_margin(), Duration::from_secs(1));
        assert_eq!(config(&["--lease-ttl", "60s"]).unwrap().effective_margin(), Duration::from_secs(1));
        let given = config(&["--lease-ttl", "3s", "--margin", "200ms"]).unwrap();
        assert_eq!(given.effective_margin(), Duration::from_millis(200));
        let err = config(&["--lease-ttl", "3s", "--margin", "1s"]).unwrap_err();
        assert!(err.contains("--margin") && err.contains("third"), "{err}");
        let err = config(&["--lease-ttl", "3"]).unwrap_err();
        assert!(err.contains("no unit") && err.contains("ms, s, m, h"), "{err}");
    }

    /// Goal: a worker without TLS flags does not start plaintext: the error names the three
    /// flags, their env vars and --insecure; --insecure with a TLS flag is refused as
    /// ambiguous; --insecure alone means plaintext.
    #[test]
    fn tls_is_required_unless_insecure() {
        let tls = |flags: &[&str]| {
            let base = ["fenceflake", "--registry", "127.0.0.1:1", "--state-dir", "/tmp/x"];
            Cli::try_parse_from(base.iter().chain(flags)).unwrap().worker.tls.security()
        };
        let missing = tls(&[]).unwrap_err().to_string();
        for word in ["--tls-ca", "--tls-cert", "--tls-key", "FENCEFLAKE_TLS_CA", "--insecure"] {
            assert!(missing.contains(word), "{word} not named: {missing}");
        }
        let both = tls(&["--insecure", "--tls-ca", "/ca.pem"]).unwrap_err().to_string();
        assert!(both.contains("--insecure") && both.contains("--tls-ca"), "{both}");
        let partial = tls(&["--tls-ca", "/ca.pem", "--tls-cert", "/c.pem"]).unwrap_err().to_string();
        assert!(partial.contains("--tls-key"), "{partial}");
        assert!(!tls(&["--insecure"]).unwrap().is_tls());
    }

    /// Goal: issue 9 — without --sequence-bits the worker states no width of its own (it takes
    /// the cluster's from the grant); a width given is carried as given, and one outside the
    /// bounds is refused naming the flag.
    #[test]
    fn sequence_bits_are_the_clusters_unless_given() {
        assert_eq!(config(&[]).unwrap().sequence_bits, None);
        assert_eq!(config(&["--sequence-bits", "11"]).unwrap().sequence_bits, Some(11));
        let err = config(&["--sequence-bits", "23"]).unwrap_err();
        assert!(err.contains("--sequence-bits 23"), "{err}");
    }

    /// Goal: --id-wait defaults to 5 minutes (an embargo after a restore is waited out, not
    /// exited into a crash loop), takes any duration up to an hour, 0s included.
    #[test]
    fn id_wait_defaults_to_five_minutes() {
        assert_eq!(config(&[]).unwrap().id_wait, Duration::from_secs(300));
        assert_eq!(config(&["--id-wait", "0s"]).unwrap().id_wait, Duration::ZERO);
        assert_eq!(config(&["--id-wait", "90s"]).unwrap().id_wait, Duration::from_secs(90));
        let err = config(&["--id-wait", "2h"]).unwrap_err();
        assert!(err.contains("--id-wait"), "{err}");
    }
}
