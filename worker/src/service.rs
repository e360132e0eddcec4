//! The public `fenceflake.v1.Generator` gRPC service over a [`Generator`], and the worker's
//! one table from errors to gRPC statuses ([`crate::client`] applies it in reverse). The
//! metadata keys are the shared ones of `fenceflake_proto::wire`: a parked worker names its
//! park cause in `PARK_REASON_METADATA_KEY`, a rate limit its retry hint in
//! `RETRY_AFTER_METADATA_KEY`, and callers name themselves in `CALLER_METADATA_KEY`.

use std::sync::Arc;
use std::time::Duration;

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

impl GeneratorService {
    pub fn new(generator: Generator, limiter: Arc<RateLimiter>) -> GeneratorService {
        GeneratorService { generator, limiter }
    }

    /// Charge `cost` IDs to the caller: `x-caller` if given, else the peer's IP address.
    fn admit<T>(&self, request: &Request<T>, rpc: Rpc, cost: u32) -> Result<(), Status> {
        let caller = match request.metadata().get(CALLER_METADATA_KEY).and_then(|v| v.to_str().ok()) {
            Some(name) => name.chars().take(MAX_CALLER_KEY_BYTES).collect(),
            None => request.remote_addr().map_or_else(|| "unknown".to_string(), |a| a.ip().to_string()),
        };
        self.limiter.admit(&caller, u64::from(cost)).map_err(|retry_after| {
            self.generator.metrics().count_rate_limited(rpc);
            rate_limited(retry_after)
        })
    }
}

#[tonic::async_trait]
impl pb::generator_server::Generator for GeneratorService {
    async fn generate(&self, request: Request<pb::GenerateRequest>) -> Result<Response<pb::GenerateResponse>, Status> {
        self.admit(&request, Rpc::Generate, 1)?;
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
        let count = request.get_ref().count;
        if count == 0 || count > MAX_BATCH_COUNT {
            return Err(to_status(&GenerateError::InvalidCount { count, max: MAX_BATCH_COUNT }));
        }
        self.admit(&request, Rpc::GenerateBatch, count)?;
        let batch = self.generator.generate_batch(count).await.map_err(|e| to_status(&e))?;
        Ok(Response::new(pb::GenerateBatchResponse {
            ranges: batch.runs.iter().map(|r| pb::IdRange { first: r.first, count: r.count }).collect(),
            worker_id: u32::from(batch.worker_id.get()),
            token: batch.token.get(),
            deadline_wall_ms: batch.deadline_wall_ms,
        }))
    }

    async fn status(&self, _request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
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
