//! The worker's side of the registry API: the [`LeaseRegistry`] trait the lease keeper talks
//! to (so tests can put a fake behind it), and [`GrpcRegistry`], which sweeps the registry
//! nodes until one answers and maps gRPC statuses back to [`RegistryCallError`] by the
//! [`Reason`] each carries (`fenceflake_proto::wire`) — the registry's error table applied
//! in reverse. Under TLS every channel presents the worker's certificate and accepts only a
//! server that presents a registry `node` certificate of the cluster CA.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fenceflake_proto::channel::{self, BoxChannel};
use fenceflake_proto::tls::{self, Role, Security};
use fenceflake_proto::v1 as pb;
use fenceflake_proto::v1::registry_client::RegistryClient;
use fenceflake_proto::wire::Reason;
use tonic::transport::Endpoint;
use tonic::Code;

use crate::holder::{HolderId, Incarnation};
use crate::lease::{LeaseDecodeError, LeaseGrant, Token};
use crate::worker_id::WorkerId;

/// A boxed future, so [`LeaseRegistry`] can be a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

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

/// Holders whose ID starts with this are the registry's own (after a restore, every worker ID
/// is held by `fenceflake:restore-embargo/N` until the embargo lifts); no worker can be one.
/// The registry's own holder IDs, read from the holder field of `GetLease`.
pub use fenceflake_proto::wire::REGISTRY_HOLDER_PREFIX;

/// The registry's view of one worker ID (`GetLease`), as far as a starting worker needs it to
/// tell an embargo from a real holder and to say when the ID frees up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdView {
    pub worker_id: WorkerId,
    /// HELD, FREE, EXPIRED (the serving leader may re-grant it) or QUARANTINED.
    pub state: String,
    /// Empty when nobody holds it.
    pub holder: String,
    pub ttl_ms: u64,
    /// Since the serving leader last saw a renewal (or its own leadership began); 0 if unknown.
    pub since_renew_ms: u64,
    /// The cluster's cool-down after a TTL, if the registry said (`ClusterStatus`).
    pub cool_down_ms: Option<u64>,
}

impl IdView {
    /// Whether the registry itself holds the ID (the embargo of a restore).
    pub fn held_by_registry(&self) -> bool {
        self.holder.starts_with(REGISTRY_HOLDER_PREFIX)
    }

    /// Roughly how long until the registry may grant the ID: for a HELD lease, what is left of
    /// `ttl + cool_down` since the last renewal the leader saw (an upper bound when the leader
    /// does not know when that was); zero once EXPIRED; `None` when it depends on someone
    /// (free, quarantined) or the cool-down is unknown.
    pub fn frees_within(&self) -> Option<Duration> {
        match self.state.as_str() {
            "EXPIRED" => Some(Duration::ZERO),
            "HELD" => {
                let total = self.ttl_ms.saturating_add(self.cool_down_ms?);
                Some(Duration::from_millis(total.saturating_sub(self.since_renew_ms)))
            }
            _ => None,
        }
    }
}

/// The registry operations the worker uses. Each call is one attempt against the cluster
/// (which may try several nodes); retrying and backing off is the caller's business.
pub trait LeaseRegistry: Send + Sync + 'static {
    /// Acquire a lease for `holder` from process `incarnation`: a retry of the same
    /// incarnation gets its lease back; a new one takes the holder's lease over.
    fn acquire<'a>(
        &'a self,
        holder: &'a HolderId,
        incarnation: Incarnation,
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
    /// Who holds `worker_id` and for how long still: only to explain a refusal at start (an
    /// embargo or a real holder). A registry that cannot tell answers `Refused`, and the
    /// caller then treats the holder as a real one.
    fn inspect(&self, worker_id: WorkerId) -> BoxFuture<'_, Result<IdView, RegistryCallError>> {
        let _ = worker_id;
        Box::pin(async {
            Err(RegistryCallError::Refused {
                code: Code::Unimplemented,
                reason: None,
                message: "this registry client cannot inspect leases".into(),
            })
        })
    }
}

/// Why the registry will never renew this lease again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LostReason {
    /// Another holder has the worker ID now (or the canary fired).
    Fenced,
    /// A newer process of this holder (a new incarnation: a copy of this state dir, or a
    /// restart elsewhere) took the lease over; this process must not come back as the holder.
    Superseded,
    Quarantined,
    /// The lease was released.
    Expired,
}

/// A failed registry call, classified the way the caller branches.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegistryCallError {
    /// No node could serve the call. Retrying is safe either way (Acquire returns the lease
    /// the holder already holds; Renew and Release are idempotent), but the logs say which:
    /// `indeterminate == false` when every node answered with a definite "nothing applied"
    /// reason (no leader, no quorum, overloaded...); `true` when any attempt may still commit
    /// (OUTCOME_UNKNOWN, a timeout, a transport error, a status without a reason).
    #[error("registry unavailable ({}): {last}", outcome_words(*indeterminate))]
    Unavailable { last: String, indeterminate: bool },
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
    /// Definite: the registry refused the request itself (bad TTL, bad worker ID...), or
    /// answered a refusal code without a reason this build knows.
    #[error("registry refused the request ({code:?}{}): {message}", reason.map(|r| format!(", {r}")).unwrap_or_default())]
    Refused { code: Code, reason: Option<Reason>, message: String },
    /// The registry answered with something that cannot be a lease: a registry bug.
    #[error("registry answered with a malformed lease: {0}")]
    BadLease(#[from] LeaseDecodeError),
}

fn outcome_words(indeterminate: bool) -> &'static str {
    if indeterminate {
        "outcome unknown; a retry is safe"
    } else {
        "nothing applied"
    }
}

impl RegistryCallError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, RegistryCallError::Unavailable { .. })
    }

    /// Whether the call may have taken effect although it failed: only an `Unavailable`
    /// whose outcome is unknown.
    pub fn is_indeterminate(&self) -> bool {
        matches!(self, RegistryCallError::Unavailable { indeterminate: true, .. })
    }

    /// The registry's status table in reverse, read from the status's [`Reason`] (never its
    /// message). A status without a reason this build knows (a transport error, a timeout,
    /// a newer registry's word) is classified by its code alone and never guessed into a
    /// specific class: a refusal code is `Refused`, anything else is `Unavailable` with an
    /// unknown outcome.
    pub fn from_status(status: &tonic::Status) -> RegistryCallError {
        let message = status.message().to_string();
        let unavailable = |indeterminate| RegistryCallError::Unavailable {
            last: format!("{:?}: {}", status.code(), status.message()),
            indeterminate,
        };
        let Some(reason) = Reason::of(status) else {
            return match status.code() {
                code @ (Code::InvalidArgument
                | Code::FailedPrecondition
                | Code::AlreadyExists
                | Code::ResourceExhausted
                | Code::OutOfRange
                | Code::PermissionDenied
                | Code::Unauthenticated
                | Code::Unimplemented
                | Code::NotFound) => RegistryCallError::Refused { code, reason: None, message },
                // Unavailable, DeadlineExceeded, Cancelled, Unknown, Internal, Aborted: a
                // transport failure or a reply we cannot read; another node, or a later try,
                // may work, and the command may have been applied.
                _ => unavailable(true),
            };
        };
        match reason {
            Reason::Fenced => RegistryCallError::Lost { reason: LostReason::Fenced, message },
            Reason::Superseded => RegistryCallError::Lost { reason: LostReason::Superseded, message },
            Reason::Quarantined => RegistryCallError::Lost { reason: LostReason::Quarantined, message },
            Reason::Expired => RegistryCallError::Lost { reason: LostReason::Expired, message },
            Reason::AlreadyHeld => RegistryCallError::AlreadyHeld { message },
            Reason::Exhausted => RegistryCallError::Exhausted { message },
            Reason::HolderHoldsOther => RegistryCallError::HolderHoldsOther { message },
            // NOT_OWNER (the lease was granted to another certificate identity) and CLOCK_SKEW
            // (a claim beyond the registry's time): definite refusals, nothing applied. On a
            // renewal the keeper retries, and the deadline stops minting meanwhile.
            Reason::Invalid | Reason::NotEmpty | Reason::Membership | Reason::NotOwner | Reason::ClockSkew => {
                RegistryCallError::Refused { code: status.code(), reason: Some(reason), message }
            }
            Reason::NotLeader | Reason::NoLeader | Reason::NoQuorum | Reason::Overloaded | Reason::NotConfigured => {
                unavailable(false)
            }
            Reason::OutcomeUnknown => unavailable(true),
            // The node is stopping on a storage error, possibly after proposing the command:
            // try another node, and count the outcome as unknown.
            Reason::Fatal => unavailable(true),
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
pub struct GrpcRegistry {
    nodes: Vec<(String, RegistryClient<BoxChannel>)>,
    /// The node that answered last: tried first next time, so a healthy cluster costs one
    /// RPC per call instead of a sweep.
    preferred: AtomicUsize,
    /// Bound on one RPC to one node, connection included.
    rpc_timeout: Duration,
}

impl GrpcRegistry {
    /// Clients for `addrs` (`host:port` or a URL; TLS or not is `security`'s business, not
    /// the scheme's), each connection (TCP and TLS handshakes) bounded by `connect_timeout`;
    /// nothing is connected yet.
    pub fn new(
        addrs: &[String],
        rpc_timeout: Duration,
        connect_timeout: Duration,
        security: &Security,
    ) -> Result<GrpcRegistry, RegistryAddrError> {
        let nodes = addrs
            .iter()
            .map(|addr| {
                let endpoint = Endpoint::from_shared(tls::endpoint_url(addr))
                    .map_err(|e| RegistryAddrError { addr: addr.clone(), why: e.to_string() })?
                    .connect_timeout(connect_timeout)
                    .tcp_nodelay(true);
                Ok((addr.clone(), channel::boxed(tls::connect_lazy(endpoint, security, &[Role::Node]))))
            })
            .collect::<Result<Vec<_>, _>>()?;
        GrpcRegistry::over(nodes, rpc_timeout)
    }

    /// Clients over channels the caller made, named by address (the simulator's network).
    pub fn over(channels: Vec<(String, BoxChannel)>, rpc_timeout: Duration) -> Result<GrpcRegistry, RegistryAddrError> {
        if channels.is_empty() {
            return Err(RegistryAddrError { addr: String::new(), why: "no registry address given".into() });
        }
        let nodes = channels.into_iter().map(|(addr, channel)| (addr, RegistryClient::new(channel))).collect();
        Ok(GrpcRegistry { nodes, preferred: AtomicUsize::new(0), rpc_timeout })
    }

    /// Try `call` on each node once, starting with the preferred one, until one answers
    /// with anything but a retryable error.
    async fn sweep<T, F, Fut>(&self, call: F) -> Result<T, RegistryCallError>
    where
        F: Fn(RegistryClient<BoxChannel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let start = self.preferred.load(Ordering::Relaxed);
        let mut last = String::from("no node tried");
        // Whether any attempt may have applied the command: then so may the whole call.
        let mut indeterminate = false;
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
                    let RegistryCallError::Unavailable { last: why, indeterminate: unknown } = error else {
                        return Err(error);
                    };
                    tracing::debug!(registry = %addr, error = %why, indeterminate = unknown, "registry node could not serve; trying the next");
                    indeterminate |= unknown;
                    last = format!("{addr}: {why}");
                }
                Err(_) => {
                    tracing::debug!(registry = %addr, timeout = ?self.rpc_timeout, "registry node timed out");
                    indeterminate = true;
                    last = format!("{addr} timed out after {:?}", self.rpc_timeout);
                }
            }
        }
        Err(RegistryCallError::Unavailable { last, indeterminate })
    }
}

impl std::fmt::Debug for GrpcRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let addrs: Vec<&str> = self.nodes.iter().map(|(addr, _)| addr.as_str()).collect();
        f.debug_struct("GrpcRegistry").field("nodes", &addrs).field("rpc_timeout", &self.rpc_timeout).finish()
    }
}

impl LeaseRegistry for GrpcRegistry {
    fn acquire<'a>(
        &'a self,
        holder: &'a HolderId,
        incarnation: Incarnation,
        worker_id: Option<WorkerId>,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<LeaseGrant, RegistryCallError>> {
        Box::pin(async move {
            let request = pb::AcquireRequest {
                holder: holder.to_string(),
                worker_id: worker_id.map(|w| u32::from(w.get())),
                ttl_ms: ttl.as_millis() as u64,
                incarnation: incarnation.get(),
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

    fn inspect(&self, worker_id: WorkerId) -> BoxFuture<'_, Result<IdView, RegistryCallError>> {
        Box::pin(async move {
            let request = pb::GetLeaseRequest { worker_id: u32::from(worker_id.get()) };
            let info = self.sweep(|mut c| async move { c.get_lease(request).await }).await?;
            // Only for the estimate of when the ID frees up: best effort.
            let status = self.sweep(|mut c| async move { c.cluster_status(pb::ClusterStatusRequest {}).await }).await;
            Ok(IdView {
                worker_id,
                state: info.state,
                holder: info.holder,
                ttl_ms: info.ttl_ms,
                since_renew_ms: info.since_renew_ms,
                cool_down_ms: status.ok().map(|s| s.cool_down_ms),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fenceflake_proto::wire::REASON_METADATA_KEY;

    /// Goal: every registry status lands in the class the keeper branches on — the
    /// registry's error table in reverse, read from the reason alone.
    #[test]
    fn statuses_map_back_to_classes_by_reason() {
        let lost = |s: &tonic::Status| match RegistryCallError::from_status(s) {
            RegistryCallError::Lost { reason, .. } => Some(reason),
            _ => None,
        };
        assert_eq!(lost(&Reason::Fenced.status("FENCED: stale")), Some(LostReason::Fenced));
        assert_eq!(lost(&Reason::Quarantined.status("x")), Some(LostReason::Quarantined));
        assert_eq!(lost(&Reason::Expired.status("x")), Some(LostReason::Expired));
        assert_eq!(lost(&Reason::Superseded.status("x")), Some(LostReason::Superseded));
        let class = |e: &RegistryCallError| format!("{e:?}").split([' ', '(']).next().unwrap_or_default().to_string();
        for reason in Reason::ALL {
            let got = RegistryCallError::from_status(&reason.status("msg"));
            let want = match reason {
                Reason::Fenced | Reason::Superseded | Reason::Expired | Reason::Quarantined => "Lost",
                Reason::AlreadyHeld => "AlreadyHeld",
                Reason::HolderHoldsOther => "HolderHoldsOther",
                Reason::Exhausted => "Exhausted",
                Reason::Invalid | Reason::NotEmpty | Reason::Membership | Reason::NotOwner | Reason::ClockSkew => {
                    "Refused"
                }
                _ => "Unavailable",
            };
            assert_eq!(class(&got), want, "{reason}: {got:?}");
            assert_eq!(got.is_retryable(), want == "Unavailable", "{reason}");
            let unknown = matches!(reason, Reason::OutcomeUnknown | Reason::Fatal);
            assert_eq!(got.is_indeterminate(), unknown, "{reason}: {got}");
        }
        let definite = RegistryCallError::from_status(&Reason::NoQuorum.status("no quorum"));
        assert!(definite.to_string().contains("nothing applied"), "{definite}");
        let unknown = RegistryCallError::from_status(&Reason::OutcomeUnknown.status("timed out"));
        assert!(unknown.to_string().contains("outcome unknown"), "{unknown}");
    }

    /// Goal: a status without a (known) reason is classified by its code, never guessed: a
    /// reasonless FAILED_PRECONDITION is not "holder holds another ID", and a reasonless
    /// UNAVAILABLE (a transport error) has an unknown outcome.
    #[test]
    fn reasonless_statuses_are_never_guessed() {
        let mut foreign = tonic::Status::failed_precondition("held");
        foreign.metadata_mut().insert(REASON_METADATA_KEY, "SOME_NEW_WORD".parse().expect("ascii"));
        let refusals = [
            tonic::Status::failed_precondition("this holder already holds worker ID 3"),
            foreign,
            tonic::Status::already_exists("worker ID is held by \"x\""),
            tonic::Status::resource_exhausted("no free worker ID"),
            tonic::Status::invalid_argument("invalid ttl_ms"),
        ];
        for status in refusals {
            let got = RegistryCallError::from_status(&status);
            assert!(
                matches!(&got, RegistryCallError::Refused { code, reason: None, .. } if *code == status.code()),
                "{status:?} -> {got:?}"
            );
            assert!(!got.is_retryable());
        }
        let unknowns = [
            tonic::Status::unavailable("transport error"),
            tonic::Status::deadline_exceeded("timeout"),
            tonic::Status::cancelled("cancelled"),
            tonic::Status::unknown("h2 protocol error"),
            tonic::Status::internal("broken pipe"),
        ];
        for status in unknowns {
            let got = RegistryCallError::from_status(&status);
            assert!(got.is_retryable() && got.is_indeterminate(), "{status:?} -> {got:?}");
        }
    }

    /// Goal: an embargo holder is told from a real one by the registry's reserved prefix,
    /// and the time until the ID frees up is what is left of ttl + cool-down (saturating),
    /// unknown without the cool-down or for an ID nobody's expiry will free.
    #[test]
    fn id_views_tell_the_embargo_and_when_it_lifts() {
        let view = |state: &str, holder: &str, since_renew_ms, cool_down_ms| IdView {
            worker_id: WorkerId::new(3),
            state: state.into(),
            holder: holder.into(),
            ttl_ms: 60_000,
            since_renew_ms,
            cool_down_ms,
        };
        let embargo = view("HELD", "fenceflake:restore-embargo/3", 20_000, Some(1_000));
        assert!(embargo.held_by_registry());
        assert_eq!(embargo.frees_within(), Some(Duration::from_millis(41_000)));
        assert!(!view("HELD", "gen-3/12/ab", 0, None).held_by_registry());
        assert!(!view("HELD", "x-fenceflake:y", 0, None).held_by_registry());
        assert_eq!(view("HELD", "h", 0, Some(1_000)).frees_within(), Some(Duration::from_millis(61_000)));
        assert_eq!(view("HELD", "h", 90_000, Some(1_000)).frees_within(), Some(Duration::ZERO));
        assert_eq!(view("HELD", "h", 0, None).frees_within(), None);
        assert_eq!(view("EXPIRED", "h", 0, None).frees_within(), Some(Duration::ZERO));
        assert_eq!(view("QUARANTINED", "h", 0, Some(1)).frees_within(), None);
        assert_eq!(view("FREE", "", 0, Some(1)).frees_within(), None);
        let huge = IdView { ttl_ms: u64::MAX, cool_down_ms: Some(u64::MAX), ..embargo };
        assert_eq!(huge.frees_within(), Some(Duration::from_millis(u64::MAX - 20_000)));
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
        let registry =
            GrpcRegistry::new(&dead, Duration::from_millis(500), Duration::from_millis(250), &Security::Insecure)
                .expect("addresses parse");
        let err = registry.renew(RenewRequest {
            worker_id: WorkerId::new(1),
            token: Token::new(1),
            wall_ms_at_send: 0,
            max_minted_ts_ms: 0,
        });
        assert!(err.await.is_err_and(|e| e.is_retryable() && e.is_indeterminate()));
        assert!(GrpcRegistry::new(
            &["bad addr with spaces".to_string()],
            Duration::from_secs(1),
            Duration::from_millis(250),
            &Security::Insecure
        )
        .is_err());
        assert!(
            GrpcRegistry::new(&[], Duration::from_secs(1), Duration::from_millis(250), &Security::Insecure).is_err()
        );
    }
}
