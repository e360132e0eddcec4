//! A client over many Fenceflake generator workers (`fenceflake.v1.Generator`) that keeps
//! answering when one of them fails, including when it fails grayly (hangs without closing
//! its connections: a GC pause, a frozen VM, a SIGSTOP, a full disk).
//!
//! - **Balancing:** calls rotate over the admitted workers.
//! - **Failover:** a worker that answers `UNAVAILABLE` (parked, with its reason) or cannot be
//!   reached is skipped for 500 ms and the call goes to the next; a rate-limited call tries
//!   another worker; a refused request (`INVALID_ARGUMENT`…, or `PERMISSION_DENIED`: this
//!   certificate's role may not call the Generator API) stops the call.
//! - **Per-attempt timeouts from observed latency:** 10 × the recent p99 of successful calls
//!   of the same kind (Generate and GenerateBatch tracked apart), at least 100 ms, at most the
//!   call's overall timeout; 500 ms before 16 samples are known ([`policy`]).
//! - **Hedged calls:** a call that has no answer after 3 × the recent p99 (at least 5 ms;
//!   **50 ms** before any latency is known) is sent to the next worker too, and the first
//!   answer wins. Hedges come from a token bucket refilled by successful calls: a burst of
//!   10, then at most one per 10 successful calls (about 10 % extra calls).
//! - **Outlier ejection:** a worker outpaced by a hedge is not tried while its attempt is
//!   pending; one whose attempt timed out is ejected for 500 ms, doubling with every further
//!   timeout or failed probe up to 10 s. Once its interval passed it is probed with a cheap
//!   `Status` call (not a real request) and readmitted when that answers `SERVING`.
//!
//! Measured against three worker processes with one SIGSTOPped (rate kept, p99 while it is
//! stopped, hedges per call, `fenceflake mint` with a hung worker): `fenceflake-bench gray`,
//! BENCHMARKS.md "Gray failure: WorkerClient against three workers, one SIGSTOPped".
//!
//! **Why hedging is safe.** Each Generate or GenerateBatch mints fresh IDs under the
//! answering worker's lease, and two workers never hold the same worker ID (the registry's
//! fenced leases), so two workers answering the same call return disjoint IDs. A reply that
//! is dropped (the loser of a hedge, an attempt that timed out after the worker minted) only
//! burns IDs, never repeats them: the caller sees each ID at most once.
//!
//! **Security.** Every connection runs mutual TLS with the [`Security`] the client is built
//! with (a `client` certificate of the cluster CA, usually; `fenceflake certs issue --role
//! client`), and accepts only workers that present a `worker` certificate of that CA. A
//! rotated certificate is presented on the next connection. Plaintext only with an explicit
//! `Security::Insecure`, against workers started `--insecure`.
//!
//! Every call carries `x-caller` when a caller name is given. A worker charges its
//! per-caller rate limit to the caller's certificate identity, however many workers and
//! connections it uses; it honours `x-caller` only from an `operator` certificate (which may
//! act for others) or when it runs `--insecure` (then it is the only name a caller has).

mod call;
pub mod error;
pub mod policy;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fenceflake_proto::tls::{self, Role};
use fenceflake_proto::v1 as pb;
use fenceflake_proto::v1::generator_client::GeneratorClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

pub use error::ClientError;
/// How the client connects: mutual TLS with its certificate, or plaintext (`--insecure`).
pub use fenceflake_proto::tls::Security;
use policy::{Health, HedgeBudget, Latencies};

/// Most worker addresses one client takes; a fleet is larger, but one client needs a few.
pub const MAX_WORKER_ADDRS: usize = 64;

/// A call's overall timeout unless the caller sets one: a worker may legitimately take up
/// to its own 2 s limit (e.g. waiting out a clock step), plus a second of network.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// TCP connect timeout per worker.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(250);

/// A balancing, hedging client over a list of worker endpoints; cheap to share (`&self`
/// methods, `Clone` shares the state).
#[derive(Clone, Debug)]
pub struct WorkerClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    workers: Vec<Worker>,
    /// Round-robin cursor: spreads load evenly over the admitted workers.
    next: AtomicUsize,
    caller: Option<MetadataValue<Ascii>>,
    call_timeout: Duration,
    budget: Mutex<HedgeBudget>,
    /// Latencies of successful attempts, per [`Kind`].
    latencies: [Mutex<Latencies>; 2],
    hedges: AtomicU64,
}

#[derive(Debug)]
struct Worker {
    addr: String,
    client: GeneratorClient<Channel>,
    health: Mutex<Health>,
    counters: Counters,
}

#[derive(Debug, Default)]
struct Counters {
    attempts: AtomicU64,
    answers: AtomicU64,
    timeouts: AtomicU64,
    ejections: AtomicU64,
    probes: AtomicU64,
    readmissions: AtomicU64,
}

/// The two calls, tracked apart because a batch legitimately takes longer.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Single = 0,
    Batch = 1,
}

/// A reply and the worker that gave it, as its index in the addresses the client was built
/// with. Which worker answers is known only when the call ends (a hedge may win), and a
/// caller that records where each ID came from — the harness's history, judged per worker
/// process and lease — needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answered<T> {
    pub worker: usize,
    pub reply: T,
}

/// What one worker saw from this client, for tests and diagnostics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerStats {
    pub addr: String,
    /// Real requests sent (probes not counted).
    pub attempts: u64,
    /// Attempts that got IDs.
    pub answers: u64,
    pub timeouts: u64,
    /// Times it went from admitted to ejected.
    pub ejections: u64,
    pub probes: u64,
    pub readmissions: u64,
    pub admitted: bool,
}

/// The client's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    pub hedges: u64,
    pub workers: Vec<WorkerStats>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state under these locks is updated in single steps; a panic elsewhere leaves it
    // consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl WorkerClient {
    /// A client over `addrs` (`host:port` or URLs; TLS or not is `security`'s business, not
    /// the scheme's); connects lazily, through `security`, to workers that must present a
    /// `worker` certificate. `caller` names this client in `x-caller` (honoured by workers
    /// only from operators, or when they run `--insecure`).
    pub fn new(addrs: &[String], caller: Option<&str>, security: &Security) -> Result<WorkerClient, ClientError> {
        Self::with_timeout(addrs, caller, DEFAULT_CALL_TIMEOUT, security)
    }

    /// As [`WorkerClient::new`], with the overall timeout of each call (attempt timeouts and
    /// hedges fit inside it).
    pub fn with_timeout(
        addrs: &[String],
        caller: Option<&str>,
        call_timeout: Duration,
        security: &Security,
    ) -> Result<WorkerClient, ClientError> {
        if addrs.is_empty() || addrs.len() > MAX_WORKER_ADDRS {
            return Err(ClientError::WorkerCount { count: addrs.len() });
        }
        let workers = addrs.iter().map(|addr| worker(addr, security)).collect::<Result<Vec<_>, ClientError>>()?;
        let caller =
            caller.map(|c| c.parse().map_err(|_| ClientError::BadCaller { caller: c.to_string() })).transpose()?;
        Ok(WorkerClient {
            inner: Arc::new(Inner {
                workers,
                next: AtomicUsize::new(0),
                caller,
                call_timeout,
                budget: Mutex::default(),
                latencies: Default::default(),
                hedges: AtomicU64::new(0),
            }),
        })
    }

    /// One ID from some serving worker.
    pub async fn generate(&self) -> Result<u64, ClientError> {
        self.generate_answered().await.map(|a| a.reply.id)
    }

    /// As [`WorkerClient::generate`], with the whole reply (the lease it was minted under
    /// and its deadline) and which worker gave it.
    pub async fn generate_answered(&self) -> Result<Answered<pb::GenerateResponse>, ClientError> {
        let rpc = |mut c: GeneratorClient<Channel>, r| async move { c.generate(r).await };
        call::call(&self.inner, Kind::Single, rpc, pb::GenerateRequest {}).await
    }

    /// `count` IDs from one serving worker, as ranges (one per millisecond used).
    pub async fn generate_batch(&self, count: u32) -> Result<pb::GenerateBatchResponse, ClientError> {
        self.generate_batch_answered(count).await.map(|a| a.reply)
    }

    /// As [`WorkerClient::generate_batch`], with which worker gave the reply.
    pub async fn generate_batch_answered(
        &self,
        count: u32,
    ) -> Result<Answered<pb::GenerateBatchResponse>, ClientError> {
        let rpc = |mut c: GeneratorClient<Channel>, r| async move { c.generate_batch(r).await };
        call::call(&self.inner, Kind::Batch, rpc, pb::GenerateBatchRequest { count }).await
    }

    /// The counters so far.
    pub fn stats(&self) -> ClientStats {
        let now = tokio::time::Instant::now();
        let workers = self
            .inner
            .workers
            .iter()
            .map(|w| {
                let c = &w.counters;
                WorkerStats {
                    addr: w.addr.clone(),
                    attempts: c.attempts.load(Ordering::Relaxed),
                    answers: c.answers.load(Ordering::Relaxed),
                    timeouts: c.timeouts.load(Ordering::Relaxed),
                    ejections: c.ejections.load(Ordering::Relaxed),
                    probes: c.probes.load(Ordering::Relaxed),
                    readmissions: c.readmissions.load(Ordering::Relaxed),
                    admitted: lock(&w.health).admits(now),
                }
            })
            .collect();
        ClientStats { hedges: self.inner.hedges.load(Ordering::Relaxed), workers }
    }
}

fn worker(addr: &str, security: &Security) -> Result<Worker, ClientError> {
    let endpoint = Endpoint::from_shared(tls::endpoint_url(addr))
        .map_err(|e| ClientError::BadAddr { addr: addr.to_string(), why: e.to_string() })?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    Ok(Worker {
        addr: addr.to_string(),
        client: GeneratorClient::new(tls::connect_lazy(endpoint, security, &[Role::Worker])),
        health: Mutex::default(),
        counters: Counters::default(),
    })
}
