//! The client's errors, and how a worker's gRPC status is read: the worker service's error
//! table in reverse (parked → `UNAVAILABLE` with `fenceflake-park-reason`, rate limited →
//! `RESOURCE_EXHAUSTED` with `fenceflake-retry-after-ms`, bad request → `INVALID_ARGUMENT`,
//! a certificate whose role may not call → `PERMISSION_DENIED`).

use fenceflake_proto::wire::{PARK_REASON_METADATA_KEY, RETRY_AFTER_METADATA_KEY};
use tonic::{Code, Status};

use crate::MAX_WORKER_ADDRS;

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

/// How one attempt's failure affects the call.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Try the next worker; skip this one for a while (parked or unreachable).
    Skip(String),
    /// Try the next worker; this one is fine but limits us (retry hint in ms).
    Limited(u64),
    /// Try the next worker; this one did not answer in time and is ejected.
    TimedOut(u64),
    /// Stop: no worker will accept this request.
    Fatal(ClientError),
}

/// Retry hint when a rate limit names none.
const DEFAULT_RETRY_AFTER_MS: u64 = 500;

pub(crate) fn classify(status: &Status) -> Failure {
    match status.code() {
        Code::ResourceExhausted => {
            let ms = status
                .metadata()
                .get(RETRY_AFTER_METADATA_KEY)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(DEFAULT_RETRY_AFTER_MS);
            Failure::Limited(ms)
        }
        // PERMISSION_DENIED: this certificate's role may not call the Generator API, and
        // every worker of the cluster says the same. (UNAUTHENTICATED is skipped like an
        // unreachable worker: a plaintext client may still find --insecure workers while a
        // fleet moves to TLS, and the failures name the reason if none is left.)
        Code::InvalidArgument | Code::FailedPrecondition | Code::Unimplemented | Code::PermissionDenied => {
            Failure::Fatal(ClientError::Refused { code: status.code(), message: status.message().to_string() })
        }
        _ => {
            let reason = status.metadata().get(PARK_REASON_METADATA_KEY).and_then(|v| v.to_str().ok());
            Failure::Skip(match reason {
                Some(reason) => format!("parked ({reason})"),
                None => describe_status(status),
            })
        }
    }
}

/// A status as a person should read it: code and message, then the causes of a transport
/// failure (a failed TLS handshake, a refused certificate), which tonic keeps out of the
/// message, and what a TLS alert from the server most likely means.
pub fn describe_status(status: &Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if cause_text != "transport error" && !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    if text.contains("received fatal alert") {
        text.push_str(
            " (the server refused this client's certificate: is it issued by the server's CA (--tls-ca on both), and unexpired?)",
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the service's error table in reverse — parked and unreachable workers are
    /// skipped, rate limits carry their hint, bad requests stop the call. (The worker's own
    /// tests drive this client against its real service.)
    #[test]
    fn statuses_classify_as_the_service_sends_them() {
        let mut parked = Status::unavailable("parked");
        parked.metadata_mut().insert(PARK_REASON_METADATA_KEY, "FENCED".parse().expect("ascii"));
        assert!(matches!(classify(&parked), Failure::Skip(r) if r == "parked (FENCED)"));
        assert!(matches!(classify(&Status::unavailable("connection refused")), Failure::Skip(_)));
        let mut limited = Status::resource_exhausted("slow down");
        limited.metadata_mut().insert(RETRY_AFTER_METADATA_KEY, "42".parse().expect("ascii"));
        assert!(matches!(classify(&limited), Failure::Limited(42)));
        assert!(matches!(classify(&Status::resource_exhausted("x")), Failure::Limited(DEFAULT_RETRY_AFTER_MS)));
        let bad = Status::invalid_argument("count 0");
        assert!(matches!(classify(&bad), Failure::Fatal(ClientError::Refused { code: Code::InvalidArgument, .. })));
        let denied = Status::permission_denied("Generate needs role client or worker or operator");
        assert!(matches!(classify(&denied), Failure::Fatal(ClientError::Refused { code: Code::PermissionDenied, .. })));
        assert!(
            matches!(classify(&Status::unauthenticated("requires mutual TLS")), Failure::Skip(r) if r.contains("TLS"))
        );
        let alert = Status::from_error(Box::new(std::io::Error::other("received fatal alert: DecryptError")));
        let text = describe_status(&alert);
        assert!(text.contains("DecryptError") && text.contains("refused this client's certificate"), "{text}");
    }
}
