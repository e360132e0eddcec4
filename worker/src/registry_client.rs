//! The worker's side of the registry API: the [`LeaseRegistry`] trait the lease keeper talks
//! to (so tests can put a fake behind it), and [`GrpcRegistry`], which sweeps the registry
//! nodes until one answers and maps gRPC statuses back to [`RegistryCallError`] — the
//! registry's error table (`registry/src/error.rs`) applied in reverse.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fenceflake_proto::v1 as pb;
use fenceflake_proto::v1::registry_client::RegistryClient;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::holder::HolderId;
use crate::lease::{LeaseDecodeError, LeaseGrant, Token};
use crate::limits::REGISTRY_CONNECT_TIMEOUT_MS;
use crate::worker_id::WorkerId;

/// A boxed future, so [`LeaseRegistry`] can be a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Metadata key in which the registry names why a renewal failed.
const REASON_METADATA_KEY: &str = "fenceflake-reason";

/// What a renewal tells the registry (docs/design.md mechanism 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RenewRequest {
    pub worker_id: WorkerId,
    pub token: Token,
    /// The worker's wall clock when it sent the request.
    pub wall_ms_at_send: u64,
    /// The largest timestamp minted so far; 0 if none.
    pub max_minted_ts_ms: u64,
}

/// The registry operations the worker uses. Each call is one attempt against the cluster
/// (which may try several nodes); retrying and backing off is the caller's business.
pub trait LeaseRegistry: Send + Sync + 'static {
    fn acquire<'a>(
        &'a self,
        holder: &'a HolderId,
        worker_id: Option<WorkerId>,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<LeaseGrant, RegistryCallError>>;
    fn renew(&self, request: RenewRequest) -> BoxFuture<'_, Result<LeaseGrant, RegistryCallError>>;
    fn release(
        &self,
        worker_id: WorkerId,
        token: Token,
        last_ts_ms: u64,
    ) -> BoxFuture<'_, Result<(), RegistryCallError>>;
}

/// Why the registry will never renew this lease again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LostReason {
    /// Another holder has the worker ID now (or the canary fired).
    Fenced,
    Quarantined,
    /// The lease was released.
    Expired,
}

/// A failed registry call, classified the way the caller branches.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegistryCallError {
    /// No node could answer, or the answer's outcome is unknown: retrying is safe (Acquire
    /// returns the lease the holder already holds; Renew and Release are idempotent).
    #[error("no registry node answered: {last}")]
    Unavailable { last: String },
    /// Definite: the lease is gone for good.
    #[error("{message}")]
    Lost { reason: LostReason, message: String },
    /// Definite: the specific worker ID asked for is held by another holder.
    #[error("{message}")]
    AlreadyHeld { message: String },
    /// Definite: no worker ID is free.
    #[error("{message}")]
    Exhausted { message: String },
    /// Definite: this holder already holds another worker ID than the one asked for.
    #[error("{message}")]
    HolderHoldsOther { message: String },
    /// Definite: the registry refused the request itself (bad TTL, bad worker ID...).
    #[error("registry refused the request ({code:?}): {message}")]
    Refused { code: Code, message: String },
    /// The registry answered with something that cannot be a lease: a registry bug.
    #[error("registry answered with a malformed lease: {0}")]
    BadLease(#[from] LeaseDecodeError),
}

impl RegistryCallError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, RegistryCallError::Unavailable { .. })
    }

    /// The registry's status mapping in reverse.
    pub fn from_status(status: &tonic::Status) -> RegistryCallError {
        let message = status.message().to_string();
        match status.code() {
            Code::FailedPrecondition => {
                let reason = status.metadata().get(REASON_METADATA_KEY).and_then(|v| v.to_str().ok());
                match reason {
                    Some("FENCED") => RegistryCallError::Lost { reason: LostReason::Fenced, message },
                    Some("QUARANTINED") => RegistryCallError::Lost { reason: LostReason::Quarantined, message },
                    Some("EXPIRED") => RegistryCallError::Lost { reason: LostReason::Expired, message },
                    _ => RegistryCallError::HolderHoldsOther { message },
                }
            }
            Code::AlreadyExists => RegistryCallError::AlreadyHeld { message },
            Code::ResourceExhausted => RegistryCallError::Exhausted { message },
            code @ (Code::InvalidArgument
            | Code::OutOfRange
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::Unimplemented
            | Code::NotFound) => RegistryCallError::Refused { code, message },
            // Unavailable (no leader, no quorum), DeadlineExceeded (indeterminate), transport
            // failures (Unknown, Internal, Cancelled): another node, or a later try, may work.
            code => RegistryCallError::Unavailable { last: format!("{code:?}: {message}") },
        }
    }
}

/// Why a registry address list is unusable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad registry address {addr:?}: {why}")]
pub struct RegistryAddrError {
    pub addr: String,
    pub why: String,
}

/// The registry over gRPC: one lazily connected channel per node.
#[derive(Debug)]
pub struct GrpcRegistry {
    nodes: Vec<(String, RegistryClient<Channel>)>,
    /// The node that answered last: tried first next time, so a healthy cluster costs one
    /// RPC per call instead of a sweep.
    preferred: AtomicUsize,
    /// Bound on one RPC to one node, connection included.
    rpc_timeout: Duration,
}

impl GrpcRegistry {
    /// Clients for `addrs` (`host:port` or a URL); nothing is connected yet.
    pub fn new(addrs: &[String], rpc_timeout: Duration) -> Result<GrpcRegistry, RegistryAddrError> {
        let nodes = addrs
            .iter()
            .map(|addr| {
                let url = if addr.contains("://") { addr.clone() } else { format!("http://{addr}") };
                let endpoint = Endpoint::from_shared(url)
                    .map_err(|e| RegistryAddrError { addr: addr.clone(), why: e.to_string() })?
                    .connect_timeout(Duration::from_millis(REGISTRY_CONNECT_TIMEOUT_MS))
                    .tcp_nodelay(true);
                Ok((addr.clone(), RegistryClient::new(endpoint.connect_lazy())))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if nodes.is_empty() {
            return Err(RegistryAddrError { addr: String::new(), why: "no registry address given".into() });
        }
        Ok(GrpcRegistry { nodes, preferred: AtomicUsize::new(0), rpc_timeout })
    }

    /// Try `call` on each node once, starting with the preferred one, until one answers
    /// with anything but a retryable error.
    async fn sweep<T, F, Fut>(&self, call: F) -> Result<T, RegistryCallError>
    where
        F: Fn(RegistryClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let start = self.preferred.load(Ordering::Relaxed);
        let mut last = RegistryCallError::Unavailable { last: "no node tried".into() };
        for i in 0..self.nodes.len() {
            let index = (start + i) % self.nodes.len();
            let (addr, client) = &self.nodes[index];
            match tokio::time::timeout(self.rpc_timeout, call(client.clone())).await {
                Ok(Ok(response)) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(response.into_inner());
                }
                Ok(Err(status)) => {
                    let error = RegistryCallError::from_status(&status);
                    if !error.is_retryable() {
                        return Err(error);
                    }
                    tracing::debug!(registry = %addr, %error, "registry node did not answer; trying the next");
                    last = error;
                }
                Err(_) => {
                    tracing::debug!(registry = %addr, timeout = ?self.rpc_timeout, "registry node timed out");
                    last = RegistryCallError::Unavailable {
                        last: format!("{addr} timed out after {:?}", self.rpc_timeout),
                    };
                }
            }
        }
        Err(last)
    }
}

impl LeaseRegistry for GrpcRegistry {
    fn acquire<'a>(
        &'a self,
        holder: &'a HolderId,
        worker_id: Option<WorkerId>,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<LeaseGrant, RegistryCallError>> {
        Box::pin(async move {
            let request = pb::AcquireRequest {
                holder: holder.to_string(),
                worker_id: worker_id.map(|w| u32::from(w.get())),
                ttl_ms: ttl.as_millis() as u64,
            };
            let lease = self.sweep(|mut c| {
                let request = request.clone();
                async move { c.acquire(request).await }
            });
            Ok(LeaseGrant::try_from(lease.await?)?)
        })
    }

    fn renew(&self, request: RenewRequest) -> BoxFuture<'_, Result<LeaseGrant, RegistryCallError>> {
        Box::pin(async move {
            let request = pb::RenewRequest {
                worker_id: u32::from(request.worker_id.get()),
                token: request.token.get(),
                wall_ms_at_send: request.wall_ms_at_send,
                max_minted_ts_ms: request.max_minted_ts_ms,
            };
            let lease = self.sweep(|mut c| async move { c.renew(request).await });
            Ok(LeaseGrant::try_from(lease.await?)?)
        })
    }

    fn release(
        &self,
        worker_id: WorkerId,
        token: Token,
        last_ts_ms: u64,
    ) -> BoxFuture<'_, Result<(), RegistryCallError>> {
        Box::pin(async move {
            let request = pb::ReleaseRequest { worker_id: u32::from(worker_id.get()), token: token.get(), last_ts_ms };
            self.sweep(|mut c| async move { c.release(request).await }).await.map(|_| ())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_reason(reason: &str) -> tonic::Status {
        let mut status = tonic::Status::failed_precondition(format!("{reason}: nope"));
        status.metadata_mut().insert(REASON_METADATA_KEY, reason.parse().expect("ascii"));
        status
    }

    /// Goal: every registry status lands in the class the keeper branches on — the
    /// registry's error table in reverse.
    #[test]
    fn statuses_map_back_to_classes() {
        let lost = |s: &tonic::Status| match RegistryCallError::from_status(s) {
            RegistryCallError::Lost { reason, .. } => Some(reason),
            _ => None,
        };
        assert_eq!(lost(&with_reason("FENCED")), Some(LostReason::Fenced));
        assert_eq!(lost(&with_reason("QUARANTINED")), Some(LostReason::Quarantined));
        assert_eq!(lost(&with_reason("EXPIRED")), Some(LostReason::Expired));
        let cases = [
            (tonic::Status::failed_precondition("this holder already holds worker ID 3"), "HolderHoldsOther"),
            (tonic::Status::already_exists("worker ID is held by \"x\""), "AlreadyHeld"),
            (tonic::Status::resource_exhausted("no free worker ID"), "Exhausted"),
            (tonic::Status::invalid_argument("invalid ttl_ms"), "Refused"),
            (tonic::Status::unavailable("no leader"), "Unavailable"),
            (tonic::Status::deadline_exceeded("outcome unknown"), "Unavailable"),
            (tonic::Status::unknown("transport error"), "Unavailable"),
        ];
        for (status, want) in cases {
            let got = RegistryCallError::from_status(&status);
            assert!(format!("{got:?}").starts_with(want), "{status:?} -> {got:?}");
            assert_eq!(got.is_retryable(), want == "Unavailable");
        }
    }

    /// Goal: a sweep over nodes that are all down ends `Unavailable` (retryable) within the
    /// per-node bounds, and bad addresses are refused up front.
    #[tokio::test]
    async fn sweep_over_dead_nodes_is_unavailable() {
        let dead: Vec<String> = (0..2)
            .map(|_| {
                let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
                let addr = l.local_addr().expect("addr").to_string();
                drop(l);
                addr
            })
            .collect();
        let registry = GrpcRegistry::new(&dead, Duration::from_millis(500)).expect("addresses parse");
        let err = registry.renew(RenewRequest {
            worker_id: WorkerId::new(1),
            token: Token::new(1),
            wall_ms_at_send: 0,
            max_minted_ts_ms: 0,
        });
        assert!(err.await.is_err_and(|e| e.is_retryable()));
        assert!(GrpcRegistry::new(&["bad addr with spaces".to_string()], Duration::from_secs(1)).is_err());
        assert!(GrpcRegistry::new(&[], Duration::from_secs(1)).is_err());
    }
}
