//! The public `fenceflake.v1.Generator` gRPC service over a [`Generator`], and the worker's
//! one table from errors to gRPC statuses (`fenceflake-client` applies it in reverse). The
//! metadata keys are the shared ones of `fenceflake_proto::wire`: a parked worker names its
//! park cause in `PARK_REASON_METADATA_KEY`, a rate limit its retry hint in
//! `RETRY_AFTER_METADATA_KEY`, and callers may name themselves in `CALLER_METADATA_KEY`.
//!
//! **Who may call.** Every RPC (Generate, GenerateBatch, Status) is authorized from the
//! caller's certificate: roles `client`, `worker` and `operator` of the cluster CA; anyone
//! else is `PERMISSION_DENIED` (a `reader` or `node` certificate) or `UNAUTHENTICATED` (no
//! certificate, plaintext). A worker started `--insecure` checks nobody.
//!
//! **Whose rate limit.** Each call is charged to one bucket of the per-caller limit
//! ([`rate_key`]):
//! - a caller with a verified certificate: its SPIFFE ID
//!   (`spiffe://<domain>/fenceflake/<role>/<name>`), whatever `x-caller` it sends — rotating
//!   `x-caller` or connections does not buy a fresh bucket;
//! - except an `operator`, who may act for others: its `x-caller`, when it sends one, names
//!   the bucket (e.g. a proxy in front of the workers charging each of its own callers);
//! - on an `--insecure` worker (no identities): `x-caller` if given, else the peer's IP.

use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;

use fenceflake_proto::tls::{self, Caller, ConnInfo, Role};
use fenceflake_proto::v1 as pb;
use fenceflake_proto::wire::{CALLER_METADATA_KEY, PARK_REASON_METADATA_KEY, RETRY_AFTER_METADATA_KEY};
use tonic::{Code, Request, Response, Status};

use crate::generator::Generator;
use crate::limits::{MAX_BATCH_COUNT, MAX_CALLER_KEY_BYTES};
use crate::metrics::Rpc;
use crate::mint_state::GenerateError;
use crate::rate_limit::RateLimiter;

/// The service; cheap to clone.
#[derive(Clone, Debug)]
pub struct GeneratorService {
    generator: Generator,
    limiter: Arc<RateLimiter>,
}

/// The gRPC status for a failed mint.
pub fn to_status(error: &GenerateError) -> Status {
    let (code, reason) = match error {
        GenerateError::Parked(cause) => (Code::Unavailable, Some(cause.as_wire())),
        GenerateError::InvalidCount { .. } => (Code::InvalidArgument, None),
        GenerateError::Unencodable(_) => (Code::FailedPrecondition, None),
        GenerateError::TimedOut { .. } => (Code::Unavailable, None),
    };
    let mut status = Status::new(code, error.to_string());
    if let Some(reason) = reason {
        if let Ok(value) = reason.parse() {
            status.metadata_mut().insert(PARK_REASON_METADATA_KEY, value);
        }
    }
    status
}

/// RESOURCE_EXHAUSTED with the retry hint in the message and in metadata.
fn rate_limited(retry_after: Duration) -> Status {
    let ms = retry_after.as_millis().max(1) as u64;
    let mut status = Status::resource_exhausted(format!("rate limited: retry after {ms} ms"));
    if let Ok(value) = ms.to_string().parse() {
        status.metadata_mut().insert(RETRY_AFTER_METADATA_KEY, value);
    }
    status
}

/// The roles that may call the Generator API: ID consumers, workers (one worker's library may
/// call another), and operators.
pub const CALLER_ROLES: &[Role] = &[Role::Client, Role::Worker, Role::Operator];

/// The rate-limit bucket of a call from `caller` (see the module doc): `x_caller` only from a
/// caller allowed to act for others (an `operator`, or anyone on an `--insecure` worker),
/// else the verified identity, else (insecure) the peer's IP.
pub fn rate_key(caller: &Caller, x_caller: Option<&str>, remote: Option<SocketAddr>) -> String {
    if let Some(name) = x_caller.filter(|_| caller.has(Role::Operator)) {
        return name.chars().take(MAX_CALLER_KEY_BYTES).collect();
    }
    match caller.identity() {
        Some(identity) => identity.uri(),
        None => remote.map_or_else(|| "unknown".to_string(), |a| a.ip().to_string()),
    }
}

impl GeneratorService {
    pub fn new(generator: Generator, limiter: Arc<RateLimiter>) -> GeneratorService {
        GeneratorService { generator, limiter }
    }

    /// Charge `cost` IDs to the bucket of `caller` (already authorized for `request`).
    fn admit<T>(&self, request: &Request<T>, caller: &Caller, rpc: Rpc, cost: u32) -> Result<(), Status> {
        let x_caller = request.metadata().get(CALLER_METADATA_KEY).and_then(|v| v.to_str().ok());
        let remote = request.extensions().get::<ConnInfo>().and_then(|info| info.remote_addr);
        let key = rate_key(caller, x_caller, remote);
        self.limiter.admit(&key, u64::from(cost)).map_err(|retry_after| {
            self.generator.metrics().count_rate_limited(rpc);
            rate_limited(retry_after)
        })
    }
}

#[tonic::async_trait]
impl pb::generator_server::Generator for GeneratorService {
    async fn generate(&self, request: Request<pb::GenerateRequest>) -> Result<Response<pb::GenerateResponse>, Status> {
        let caller = tls::authorize(&request, Rpc::Generate.name(), CALLER_ROLES)?;
        self.admit(&request, &caller, Rpc::Generate, 1)?;
        let batch = self.generator.generate_with_lease().await.map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::GenerateResponse {
            id: batch.runs[0].first,
            worker_id: u32::from(batch.worker_id.get()),
            token: batch.token.get(),
            deadline_wall_ms: batch.deadline_wall_ms,
        }))
    }

    async fn generate_batch(
        &self,
        request: Request<pb::GenerateBatchRequest>,
    ) -> Result<Response<pb::GenerateBatchResponse>, Status> {
        let caller = tls::authorize(&request, Rpc::GenerateBatch.name(), CALLER_ROLES)?;
        let count = request.get_ref().count;
        if count == 0 || count > MAX_BATCH_COUNT {
            return Err(to_status(&GenerateError::InvalidCount { count, max: MAX_BATCH_COUNT }));
        }
        self.admit(&request, &caller, Rpc::GenerateBatch, count)?;
        let batch = self.generator.generate_batch(count).await.map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::GenerateBatchResponse {
            ranges: batch.runs.iter().map(|r| pb::IdRange { first: r.first, count: r.count }).collect(),
            worker_id: u32::from(batch.worker_id.get()),
            token: batch.token.get(),
            deadline_wall_ms: batch.deadline_wall_ms,
        }))
    }

    async fn status(&self, request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        tls::authorize(&request, "Status", CALLER_ROLES)?;
        let s = self.generator.status();
        Ok(Response::new(pb::StatusResponse {
            worker_id: u32::from(s.worker_id.get()),
            token: s.token.get(),
            state: if s.park.is_none() { "SERVING" } else { "PARKED" }.to_string(),
            park_reason: s.park.map(|c| c.as_wire().to_string()).unwrap_or_default(),
            lease_remaining_ms: s.lease_remaining.as_millis() as u64,
            deadline_wall_ms: s.deadline_wall_ms,
            ids_minted: s.ids_minted,
            holder: s.holder.to_string(),
            epoch_ms: s.layout.epoch_ms(),
            worker_id_bits: u32::from(s.layout.worker_id_bits()),
            sequence_bits: u32::from(s.layout.sequence_bits()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::park::ParkCause;
    use fenceflake_proto::tls::PeerIdentity;

    /// Goal: the rate-limit bucket is the verified identity (x-caller ignored) except for an
    /// operator, whose x-caller names it; without identities (--insecure) x-caller, else the
    /// peer's IP (any port), else one shared `unknown`; a long x-caller is cut to the bound.
    #[test]
    fn rate_keys_follow_identity_then_x_caller_then_ip() {
        let verified = |role| Caller::Verified(PeerIdentity { trust_domain: "td".into(), role, name: "n".into() });
        let remote: Option<SocketAddr> = "10.1.2.3:5555".parse().ok();
        let client = verified(Role::Client);
        assert_eq!(rate_key(&client, Some("someone-else"), remote), "spiffe://td/fenceflake/client/n");
        assert_eq!(rate_key(&verified(Role::Worker), None, remote), "spiffe://td/fenceflake/worker/n");
        assert_eq!(rate_key(&verified(Role::Operator), Some("tenant-7"), remote), "tenant-7");
        assert_eq!(rate_key(&verified(Role::Operator), None, remote), "spiffe://td/fenceflake/operator/n");
        assert_eq!(rate_key(&Caller::Unchecked, Some("tenant-7"), remote), "tenant-7");
        assert_eq!(rate_key(&Caller::Unchecked, None, remote), "10.1.2.3");
        assert_eq!(rate_key(&Caller::Unchecked, None, None), "unknown");
        let long = "x".repeat(MAX_CALLER_KEY_BYTES + 10);
        assert_eq!(rate_key(&Caller::Unchecked, Some(&long), None).len(), MAX_CALLER_KEY_BYTES);
    }

    /// Goal: every mint error has its documented code, and parked answers name the reason in
    /// metadata so clients can branch without parsing prose.
    #[test]
    fn error_table() {
        let parked = to_status(&GenerateError::Parked(ParkCause::LeaseExpired));
        assert_eq!(parked.code(), Code::Unavailable);
        assert_eq!(
            parked.metadata().get(PARK_REASON_METADATA_KEY).and_then(|v| v.to_str().ok()),
            Some("LEASE_EXPIRED")
        );
        assert_eq!(to_status(&GenerateError::InvalidCount { count: 0, max: 1 }).code(), Code::InvalidArgument);
        assert_eq!(to_status(&GenerateError::TimedOut { waited_ms: 1 }).code(), Code::Unavailable);
        let limited = rate_limited(Duration::from_micros(10));
        assert_eq!(limited.code(), Code::ResourceExhausted);
        assert_eq!(limited.metadata().get(RETRY_AFTER_METADATA_KEY).and_then(|v| v.to_str().ok()), Some("1"));
    }
}
