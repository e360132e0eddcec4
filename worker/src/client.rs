//! Test-only: the balancing client as it was before it moved to the `fenceflake-client`
//! crate (hedging, latency-derived timeouts, ejection), kept for `generator_tests` until the
//! worker takes that crate as a dev-dependency. A client over many workers with client-side
//! balancing: calls rotate over the workers,
//! a worker that answers UNAVAILABLE (parked) or cannot be reached is skipped for a short
//! while and the call fails over to the next; a rate-limited call tries another worker.
//! Applies the service's error table ([`crate::service::to_status`]) in reverse.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use fenceflake_proto::v1 as pb;
use fenceflake_proto::v1::generator_client::GeneratorClient;
use fenceflake_proto::wire::{CALLER_METADATA_KEY, PARK_REASON_METADATA_KEY, RETRY_AFTER_METADATA_KEY};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::clock::{Clock, SystemClock};
use crate::limits::{GENERATE_TIMEOUT_MS, MAX_REGISTRY_ADDRS, REGISTRY_CONNECT_TIMEOUT_MS};

/// How long a worker that failed is skipped: long enough not to hammer a parked worker, short
/// enough to notice it resumed (leases resume within a renewal interval).
const SKIP_FAILED_WORKER_MS: u64 = 500;

/// Per-call timeout: a worker call may legitimately wait up to its own limit.
const CALL_TIMEOUT_MS: u64 = GENERATE_TIMEOUT_MS + 1_000;

/// Most worker addresses one client takes; a fleet is larger, but one client needs a few.
const MAX_WORKER_ADDRS: usize = 4 * MAX_REGISTRY_ADDRS;

/// Why a call through the client failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("bad worker address {addr:?}: {why}")]
    BadAddr { addr: String, why: String },
    #[error("expected 1..={MAX_WORKER_ADDRS} worker addresses, got {count}")]
    WorkerCount { count: usize },
    #[error("bad --caller name {caller:?}: not valid gRPC metadata")]
    BadCaller { caller: String },
    /// Definite: the request itself was refused (e.g. a bad count); no worker would take it.
    #[error("request refused ({code:?}): {message}")]
    Refused { code: Code, message: String },
    /// Every worker rate-limited this caller.
    #[error("rate limited by every worker; retry after {retry_after_ms} ms")]
    RateLimited { retry_after_ms: u64 },
    /// No worker could serve: each one's reason, as `addr: reason`.
    #[error("no worker could serve the request: {}", .failures.join("; "))]
    NoWorkerServed { failures: Vec<String> },
}

#[derive(Debug)]
struct Worker {
    addr: String,
    client: GeneratorClient<Channel>,
    /// Monotonic nanoseconds until which this worker is skipped (0: never failed).
    skip_until_ns: AtomicU64,
}

/// A balancing client over a list of worker endpoints; cheap to share (`&self` methods).
#[derive(Debug)]
pub struct WorkerClient {
    workers: Vec<Worker>,
    /// Round-robin cursor: spreads load evenly over the serving workers.
    next: AtomicUsize,
    /// Sent as `x-caller`, so the workers' rate limits see one caller however many
    /// connections it uses.
    caller: Option<MetadataValue<tonic::metadata::Ascii>>,
}

/// How one worker's failure affects the call.
enum Failure {
    /// Try the next worker; skip this one for a while.
    Skip(String),
    /// Try the next worker; this one is fine but limits us.
    Limited(u64),
    /// Stop: no worker will accept this request.
    Fatal(ClientError),
}

fn classify(status: &Status) -> Failure {
    match status.code() {
        Code::ResourceExhausted => {
            let ms = status
                .metadata()
                .get(RETRY_AFTER_METADATA_KEY)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(SKIP_FAILED_WORKER_MS);
            Failure::Limited(ms)
        }
        Code::InvalidArgument | Code::FailedPrecondition | Code::Unimplemented => {
            Failure::Fatal(ClientError::Refused { code: status.code(), message: status.message().to_string() })
        }
        _ => {
            let reason = status.metadata().get(PARK_REASON_METADATA_KEY).and_then(|v| v.to_str().ok());
            Failure::Skip(match reason {
                Some(reason) => format!("parked ({reason})"),
                None => format!("{:?}: {}", status.code(), status.message()),
            })
        }
    }
}

impl WorkerClient {
    /// A client over `addrs` (`host:port` or URLs); connects lazily. `caller` names this
    /// client for the workers' rate limits.
    pub fn new(addrs: &[String], caller: Option<&str>) -> Result<WorkerClient, ClientError> {
        if addrs.is_empty() || addrs.len() > MAX_WORKER_ADDRS {
            return Err(ClientError::WorkerCount { count: addrs.len() });
        }
        let workers = addrs
            .iter()
            .map(|addr| {
                let url = if addr.contains("://") { addr.clone() } else { format!("http://{addr}") };
                let endpoint = Endpoint::from_shared(url)
                    .map_err(|e| ClientError::BadAddr { addr: addr.clone(), why: e.to_string() })?
                    .connect_timeout(Duration::from_millis(REGISTRY_CONNECT_TIMEOUT_MS))
                    .timeout(Duration::from_millis(CALL_TIMEOUT_MS))
                    .tcp_nodelay(true);
                Ok(Worker {
                    addr: addr.clone(),
                    client: GeneratorClient::new(endpoint.connect_lazy()),
                    skip_until_ns: AtomicU64::new(0),
                })
            })
            .collect::<Result<Vec<_>, ClientError>>()?;
        let caller =
            caller.map(|c| c.parse().map_err(|_| ClientError::BadCaller { caller: c.to_string() })).transpose()?;
        Ok(WorkerClient { workers, next: AtomicUsize::new(0), caller })
    }

    /// One ID from some serving worker.
    pub async fn generate(&self) -> Result<u64, ClientError> {
        self.call(|mut c, r| async move { c.generate(r).await }, pb::GenerateRequest {}).await.map(|r| r.id)
    }

    /// `count` IDs from one serving worker, as ranges (one per millisecond used).
    pub async fn generate_batch(&self, count: u32) -> Result<pb::GenerateBatchResponse, ClientError> {
        self.call(|mut c, r| async move { c.generate_batch(r).await }, pb::GenerateBatchRequest { count }).await
    }

    /// Try the workers in round-robin order, skipping recently failed ones (unless all of
    /// them failed recently: then try them all anyway rather than fail without trying).
    async fn call<Req, Resp, F, Fut>(&self, rpc: F, message: Req) -> Result<Resp, ClientError>
    where
        Req: Clone,
        F: Fn(GeneratorClient<Channel>, Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let n = self.workers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now_ns = SystemClock.mono().as_nanos();
        let fresh: Vec<&Worker> = (0..n)
            .map(|i| &self.workers[(start + i) % n])
            .filter(|w| w.skip_until_ns.load(Ordering::Relaxed) <= now_ns)
            .collect();
        let order = if fresh.is_empty() { (0..n).map(|i| &self.workers[(start + i) % n]).collect() } else { fresh };
        let mut failures = Vec::new();
        let mut retry_after_ms: Option<u64> = None;
        for worker in order {
            let mut request = Request::new(message.clone());
            if let Some(caller) = &self.caller {
                request.metadata_mut().insert(CALLER_METADATA_KEY, caller.clone());
            }
            match rpc(worker.client.clone(), request).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => match classify(&status) {
                    Failure::Fatal(error) => return Err(error),
                    Failure::Limited(ms) => {
                        retry_after_ms = Some(retry_after_ms.map_or(ms, |r| r.min(ms)));
                        failures.push(format!("{}: rate limited", worker.addr));
                    }
                    Failure::Skip(reason) => {
                        let until = SystemClock.mono().as_nanos() + SKIP_FAILED_WORKER_MS * 1_000_000;
                        worker.skip_until_ns.store(until, Ordering::Relaxed);
                        failures.push(format!("{}: {reason}", worker.addr));
                    }
                },
            }
        }
        match retry_after_ms {
            Some(retry_after_ms) if failures.iter().all(|f| f.ends_with("rate limited")) => {
                Err(ClientError::RateLimited { retry_after_ms })
            }
            _ => Err(ClientError::NoWorkerServed { failures }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the service's error table in reverse — parked and unreachable workers are
    /// skipped, rate limits carry their hint, bad requests stop the call.
    #[test]
    fn statuses_classify_as_the_service_sends_them() {
        use crate::mint_state::GenerateError;
        use crate::park::ParkCause;
        use crate::service::to_status;

        let parked = to_status(&GenerateError::Parked(ParkCause::Fenced));
        assert!(matches!(classify(&parked), Failure::Skip(r) if r == "parked (FENCED)"));
        assert!(matches!(classify(&Status::unavailable("connection refused")), Failure::Skip(_)));
        let mut limited = Status::resource_exhausted("slow down");
        limited.metadata_mut().insert(RETRY_AFTER_METADATA_KEY, "42".parse().expect("ascii"));
        assert!(matches!(classify(&limited), Failure::Limited(42)));
        let bad = to_status(&GenerateError::InvalidCount { count: 0, max: 1 });
        assert!(matches!(classify(&bad), Failure::Fatal(ClientError::Refused { code: Code::InvalidArgument, .. })));
    }

    /// Goal: with every worker down, a call fails naming each worker instead of hanging,
    /// and bad inputs are refused up front.
    #[tokio::test]
    async fn all_workers_down_names_each() {
        let addrs: Vec<String> = (0..2)
            .map(|_| {
                let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
                l.local_addr().expect("addr").to_string()
            })
            .collect();
        let client = WorkerClient::new(&addrs, Some("test")).expect("client");
        match client.generate().await {
            Err(ClientError::NoWorkerServed { failures }) => assert_eq!(failures.len(), 2, "{failures:?}"),
            other => panic!("expected NoWorkerServed, got {other:?}"),
        }
        assert!(WorkerClient::new(&[], None).is_err());
        assert!(WorkerClient::new(&["a b".to_string()], None).is_err());
        assert!(WorkerClient::new(&["127.0.0.1:1".to_string()], Some("bad\ncaller")).is_err());
    }
}
