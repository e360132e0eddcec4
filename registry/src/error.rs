//! The registry's one error type and its one mapping to gRPC status codes (clients apply
//! the same table in reverse). Each variant says whether a retry is safe.

use serde::{Deserialize, Serialize};

use crate::lease::Rejection;
use crate::raft::types::NodeId;

/// Metadata key carrying the machine-readable reason of a failed renewal.
pub const REASON_METADATA_KEY: &str = "fenceflake-reason";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum RegistryError {
    /// Definite: the request is malformed; nothing was applied.
    #[error("invalid {field}: {why}")]
    Invalid { field: String, why: String },
    /// Definite: the state machine said no.
    #[error("{0:?}")]
    Rejected(Rejection),
    /// Definite: a stale renewal proved an overlap (the canary); the ID is now quarantined.
    #[error("canary hit: token is stale (current {current}) and reported mints overlap the current holder")]
    Canary { current: crate::lease::Token },
    /// Definite: every worker ID is held or quarantined.
    #[error("no free worker ID: all {count} are held or quarantined")]
    Exhausted { count: u32 },
    /// Definite: this node is not the leader (a forwarded request does not hop twice).
    #[error("node is not the leader (leader: {leader:?}); retry through any node")]
    NotLeader { leader: Option<NodeId> },
    /// Definite: no leader is known.
    #[error("no registry leader within {waited_ms} ms (quorum lost or election in progress); retry later")]
    NoLeader { waited_ms: u64 },
    /// Definite: the leader cannot reach a quorum, so it refuses writes instead of hanging.
    #[error("registry leader cannot confirm a quorum: {why}; retry later")]
    NoQuorum { why: String },
    /// Indeterminate: the request may or may not have been applied.
    #[error("outcome unknown after {waited_ms} ms ({why}); retrying is safe: Acquire returns the lease the holder already holds, Renew and Release are idempotent")]
    Indeterminate { waited_ms: u64, why: String },
    /// Definite: the proposal queue is full.
    #[error("registry overloaded: {queued} proposals queued; retry with backoff")]
    Overloaded { queued: usize },
    /// Definite: the cluster config was not replicated yet.
    #[error("cluster not configured yet (no leader has committed the cluster config)")]
    NotConfigured,
    /// Definite: a membership change was refused.
    #[error("membership change refused: {0}")]
    Membership(String),
    /// Fatal: storage failed; this node is stopping.
    #[error("fatal registry error: {0}")]
    Fatal(String),
}

impl RegistryError {
    pub fn invalid(field: &str, why: impl Into<String>) -> RegistryError {
        RegistryError::Invalid { field: field.to_string(), why: why.into() }
    }

    /// The gRPC status for this error. Failed renewals get a message prefix (`FENCED:`,
    /// `QUARANTINED:`, `EXPIRED:`) and the same word in the `fenceflake-reason` metadata.
    pub fn to_status(&self) -> tonic::Status {
        use tonic::Code;
        let (code, reason, message) = match self {
            RegistryError::Invalid { .. } => (Code::InvalidArgument, None, self.to_string()),
            RegistryError::Rejected(rejection) => rejection_status(rejection),
            RegistryError::Canary { current } => (
                Code::FailedPrecondition,
                Some("FENCED"),
                format!("FENCED: token is stale (current token {current}) and your mints overlap the current holder's window: the worker ID is quarantined; stop minting and page an operator"),
            ),
            RegistryError::Exhausted { .. } => (Code::ResourceExhausted, None, self.to_string()),
            RegistryError::NotLeader { .. }
            | RegistryError::NoLeader { .. }
            | RegistryError::NoQuorum { .. }
            | RegistryError::Indeterminate { .. }
            | RegistryError::Overloaded { .. }
            | RegistryError::NotConfigured => (Code::Unavailable, None, self.to_string()),
            RegistryError::Membership(_) => (Code::FailedPrecondition, None, self.to_string()),
            RegistryError::Fatal(_) => (Code::Internal, None, self.to_string()),
        };
        let mut status = tonic::Status::new(code, message);
        if let Some(reason) = reason {
            if let Ok(value) = reason.parse() {
                status.metadata_mut().insert(REASON_METADATA_KEY, value);
            }
        }
        status
    }
}

fn rejection_status(rejection: &Rejection) -> (tonic::Code, Option<&'static str>, String) {
    use tonic::Code;
    match rejection {
        Rejection::Fenced { current } => (
            Code::FailedPrecondition,
            Some("FENCED"),
            format!("FENCED: token is stale (current token {current}); stop minting with this worker ID"),
        ),
        Rejection::Expired => (
            Code::FailedPrecondition,
            Some("EXPIRED"),
            "EXPIRED: the lease was released; acquire a new one".to_string(),
        ),
        Rejection::Quarantined { reason } => (
            Code::FailedPrecondition,
            Some("QUARANTINED"),
            format!("QUARANTINED: worker ID is quarantined ({reason}); an operator must clear it"),
        ),
        Rejection::AlreadyHeld { holder, specific: _ } => (
            Code::AlreadyExists,
            None,
            match holder {
                Some(holder) => format!("worker ID is held by {holder:?}"),
                None => "worker ID changed hands meanwhile; retry".to_string(),
            },
        ),
        Rejection::HolderHoldsOther { worker_id } => (
            Code::FailedPrecondition,
            None,
            format!("this holder already holds worker ID {worker_id}; release it first or use another holder identity"),
        ),
        Rejection::OutOfRange { worker_id, count } => {
            (Code::InvalidArgument, None, format!("invalid worker_id: {worker_id} is outside 0..{count}"))
        }
        Rejection::BadTtl { ttl_ms, ttl_ms_max } => {
            (Code::InvalidArgument, None, format!("invalid ttl_ms: {ttl_ms} is outside 1..={ttl_ms_max}"))
        }
        Rejection::NotEmpty { last_token } => (
            Code::FailedPrecondition,
            None,
            format!("this cluster has already granted leases (last token {last_token}); restore only into a freshly bootstrapped cluster"),
        ),
        Rejection::BadBackup { why } => (Code::InvalidArgument, None, format!("invalid backup: {why}")),
        Rejection::NotConfigured => (
            Code::Unavailable,
            None,
            "cluster not configured yet (no leader has committed the cluster config)".to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::Token;

    #[test]
    fn failed_renewals_carry_a_machine_readable_reason() {
        let status = RegistryError::Rejected(Rejection::Fenced { current: Token(9) }).to_status();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(status.message().starts_with("FENCED:"), "{}", status.message());
        assert_eq!(status.metadata().get(REASON_METADATA_KEY).map(|v| v.to_str().ok()), Some(Some("FENCED")));
        let status = RegistryError::Rejected(Rejection::Quarantined { reason: "x".into() }).to_status();
        assert!(status.message().starts_with("QUARANTINED:"));
        let status = RegistryError::Rejected(Rejection::Expired).to_status();
        assert!(status.message().starts_with("EXPIRED:"));
    }

    #[test]
    fn no_quorum_and_unknown_outcomes_are_unavailable() {
        for e in [
            RegistryError::NoLeader { waited_ms: 1 },
            RegistryError::NoQuorum { why: "x".into() },
            RegistryError::Indeterminate { waited_ms: 1, why: "x".into() },
        ] {
            assert_eq!(e.to_status().code(), tonic::Code::Unavailable);
        }
        assert_eq!(RegistryError::Exhausted { count: 4 }.to_status().code(), tonic::Code::ResourceExhausted);
    }
}
