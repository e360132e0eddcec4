//! The registry's one error type and its one mapping to gRPC statuses: each error names a
//! [`Reason`] (the shared wire contract in `fenceflake_proto::wire`), which fixes the code and
//! travels in the `fenceflake-reason` metadata; clients branch on that, never on the message.
//! Each variant says whether a retry is safe.

use std::fmt;

use fenceflake_proto::wire::Reason;
use serde::{Deserialize, Serialize};

use crate::grant_plan::NoGrant;
use crate::lease::Rejection;
use crate::raft::types::NodeId;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum RegistryError {
    /// Definite: the request is malformed; nothing was applied.
    #[error("invalid {field}: {why}")]
    Invalid { field: String, why: String },
    /// Definite: the state machine said no.
    #[error("{0}")]
    Rejected(Rejection),
    /// Definite: a stale renewal proved an overlap (the canary); the ID is now quarantined.
    #[error("canary hit: token is stale and reported mints overlap the current holder")]
    Canary { current: crate::lease::Token },
    /// Definite: every worker ID is held or quarantined.
    #[error("no free worker ID: all {count} are held or quarantined")]
    Exhausted { count: u32 },
    /// Definite: this node is not the leader (a forwarded request does not hop twice).
    #[error("node is not the leader (leader: {}); retry through any node", leader.map_or("unknown".to_string(), |id| format!("node {id}")))]
    NotLeader { leader: Option<NodeId> },
    /// Definite: no leader is known.
    #[error("no registry leader within {waited_ms} ms (quorum lost or election in progress); retry later")]
    NoLeader { waited_ms: u64 },
    /// Definite: this node leads, but a quorum of its peers' clocks does not vouch for its
    /// wall clock, which would stamp the cluster's time; it steps aside. Nothing was proposed.
    #[error("node leads, but its wall clock is not proven near the cluster's: {why}; it steps aside, retry through any node")]
    ClockUnproven { why: String },
    /// Definite: the leader cannot reach a quorum, so it refuses writes instead of hanging.
    #[error("registry leader cannot confirm a quorum: {why}; retry later")]
    NoQuorum { why: String },
    /// Indeterminate: the request may or may not have been applied.
    #[error("outcome unknown after {waited_ms} ms ({why}); retrying is safe: Acquire returns the lease the holder already holds, Renew and Release are idempotent")]
    Indeterminate { waited_ms: u64, why: String },
    /// Definite: the proposal queue is full.
    #[error("registry overloaded: {queued} proposals queued; retry with backoff")]
    Overloaded { queued: usize },
    /// Definite: another snapshot import is being applied on this leader; nothing was proposed.
    #[error("another snapshot import is in progress on the leader; retry when it has finished")]
    ImportInProgress,
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

    /// The machine-readable reason a client branches on (its gRPC code follows from it).
    pub fn reason(&self) -> Reason {
        match self {
            RegistryError::Invalid { .. } => Reason::Invalid,
            RegistryError::Rejected(rejection) => rejection.reason(),
            RegistryError::Canary { .. } => Reason::Fenced,
            RegistryError::Exhausted { .. } => Reason::Exhausted,
            RegistryError::NotLeader { .. } | RegistryError::ClockUnproven { .. } => Reason::NotLeader,
            RegistryError::NoLeader { .. } => Reason::NoLeader,
            RegistryError::NoQuorum { .. } => Reason::NoQuorum,
            RegistryError::Indeterminate { .. } => Reason::OutcomeUnknown,
            RegistryError::Overloaded { .. } | RegistryError::ImportInProgress => Reason::Overloaded,
            RegistryError::NotConfigured => Reason::NotConfigured,
            RegistryError::Membership(_) => Reason::Membership,
            RegistryError::Fatal(_) => Reason::Fatal,
        }
    }

    /// The gRPC status for this error: the reason's code, the reason word in the
    /// `fenceflake-reason` metadata, and a message for people. Lost-lease messages also start
    /// with the reason word (`FENCED: …`) so logs read well; clients must use the metadata.
    pub fn to_status(&self) -> tonic::Status {
        let message = match self {
            RegistryError::Canary { .. } => "FENCED: token is stale and your mints overlap the current holder's window: the worker ID is quarantined; stop minting and page an operator".to_string(),
            other => other.to_string(),
        };
        self.reason().status(message)
    }
}

impl From<NoGrant> for RegistryError {
    fn from(no_grant: NoGrant) -> RegistryError {
        match no_grant {
            NoGrant::NotConfigured => RegistryError::NotConfigured,
            NoGrant::Exhausted { count } => RegistryError::Exhausted { count },
            NoGrant::Rejected(rejection) => RegistryError::Rejected(rejection),
        }
    }
}

impl Rejection {
    /// The wire reason of this domain answer.
    pub fn reason(&self) -> Reason {
        match self {
            Rejection::Fenced { .. } => Reason::Fenced,
            Rejection::Superseded { .. } => Reason::Superseded,
            Rejection::Expired => Reason::Expired,
            Rejection::Quarantined { .. } => Reason::Quarantined,
            Rejection::AlreadyHeld { .. } => Reason::AlreadyHeld,
            Rejection::HolderHoldsOther { .. } => Reason::HolderHoldsOther,
            Rejection::OutOfRange { .. }
            | Rejection::BadTtl { .. }
            | Rejection::BadBackup { .. }
            | Rejection::BadConfig { .. }
            | Rejection::BeyondMintUntil { .. }
            | Rejection::BatchTooLarge { .. } => Reason::Invalid,
            Rejection::NotOwner { .. } => Reason::NotOwner,
            Rejection::ClockAhead { .. } => Reason::ClockSkew,
            Rejection::NotEmpty { .. } => Reason::NotEmpty,
            Rejection::NotConfigured => Reason::NotConfigured,
        }
    }
}

/// What a person reads for each domain answer (also the gRPC message).
impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The current token is never put in a message: only its owner and operators may read it.
            Rejection::Fenced { .. } => {
                write!(f, "FENCED: token is stale (the worker ID was granted again); stop minting with this worker ID")
            }
            Rejection::Superseded { holder } => write!(
                f,
                "SUPERSEDED: another process of holder {holder} (a newer incarnation: a restart elsewhere, or a \
                 copy of this state dir) took this lease over; stop minting, and do not come back under this holder ID"
            ),
            Rejection::Expired => f.write_str("EXPIRED: the lease was released; acquire a new one"),
            Rejection::Quarantined { reason } => {
                write!(f, "QUARANTINED: worker ID is quarantined ({reason}); an operator must clear it")
            }
            Rejection::AlreadyHeld { holder: Some(holder), .. } => write!(f, "worker ID is held by {holder}"),
            Rejection::AlreadyHeld { holder: None, .. } => f.write_str("worker ID changed hands meanwhile; retry"),
            Rejection::HolderHoldsOther { worker_id } => write!(
                f,
                "this holder already holds worker ID {worker_id}; release it first or use another holder identity"
            ),
            Rejection::OutOfRange { worker_id, count } => {
                write!(f, "invalid worker_id: {worker_id} is outside 0..{count}")
            }
            Rejection::BadTtl { ttl_ms, ttl_ms_max } => {
                write!(f, "invalid ttl_ms: {ttl_ms} is outside 1..={ttl_ms_max}")
            }
            Rejection::NotEmpty { last_token } => write!(
                f,
                "this cluster has already granted leases (last token {last_token}); restore only into a freshly bootstrapped cluster"
            ),
            Rejection::BadBackup { why } => write!(f, "invalid backup: {why}"),
            Rejection::BadConfig { why } => write!(f, "invalid cluster config: {why}"),
            Rejection::NotOwner { owner } => write!(
                f,
                "the lease belongs to {owner}: only the identity it was granted to may renew, release or re-acquire it"
            ),
            Rejection::ClockAhead { wall_ms_at_send, registry_time_ms } => write!(
                f,
                "CLOCK_SKEW: wall_ms_at_send {wall_ms_at_send} is {} ms ahead of the registry's time {registry_time_ms} (more than {} ms); fix this host's clock (NTP). registry_time_ms={registry_time_ms}",
                wall_ms_at_send - registry_time_ms,
                crate::limits::CLAIM_AHEAD_MAX_MS
            ),
            Rejection::BatchTooLarge { slot } => {
                write!(f, "command {slot} of its log entry lies beyond the token slot space; not applied")
            }
            Rejection::BeyondMintUntil { field, value, mint_until_ms } => write!(
                f,
                "{field} {value} is at or past the lease's mint_until {mint_until_ms}: no holder mints there; refused, nothing changed"
            ),
            Rejection::NotConfigured => {
                f.write_str("cluster not configured yet (no leader has committed the cluster config)")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use fenceflake_proto::wire::REASON_METADATA_KEY;

    use super::*;
    use crate::lease::{HolderId, Token, WorkerId};

    fn every_error() -> Vec<RegistryError> {
        let rejections = [
            Rejection::Fenced { current: Token(9) },
            Rejection::Superseded { holder: HolderId("w-1".into()) },
            Rejection::Expired,
            Rejection::Quarantined { reason: "x".into() },
            Rejection::AlreadyHeld { holder: Some(HolderId("w-1".into())), specific: true },
            Rejection::AlreadyHeld { holder: None, specific: false },
            Rejection::HolderHoldsOther { worker_id: WorkerId(3) },
            Rejection::OutOfRange { worker_id: WorkerId(9), count: 4 },
            Rejection::NotConfigured,
            Rejection::BadTtl { ttl_ms: 0, ttl_ms_max: 5 },
            Rejection::NotEmpty { last_token: Token(4) },
            Rejection::BadBackup { why: "x".into() },
            Rejection::BadConfig { why: "x".into() },
            Rejection::NotOwner { owner: "spiffe://td/fenceflake/worker/a".into() },
            Rejection::ClockAhead { wall_ms_at_send: 90_000, registry_time_ms: 1 },
            Rejection::BeyondMintUntil { field: "last_ts_ms".into(), value: 9, mint_until_ms: 9 },
            Rejection::BatchTooLarge { slot: 4096 },
        ];
        let mut errors: Vec<_> = rejections.into_iter().map(RegistryError::Rejected).collect();
        errors.extend([
            RegistryError::invalid("holder", "empty"),
            RegistryError::Canary { current: Token(9) },
            RegistryError::Exhausted { count: 4 },
            RegistryError::NotLeader { leader: Some(2) },
            RegistryError::NotLeader { leader: None },
            RegistryError::NoLeader { waited_ms: 1 },
            RegistryError::NoQuorum { why: "x".into() },
            RegistryError::Indeterminate { waited_ms: 1, why: "x".into() },
            RegistryError::Overloaded { queued: 1 },
            RegistryError::ImportInProgress,
            RegistryError::NotConfigured,
            RegistryError::Membership("x".into()),
            RegistryError::Fatal("x".into()),
        ]);
        errors
    }

    /// Goal: every error status carries its reason, and the code agrees with it.
    #[test]
    fn every_error_carries_a_reason_in_its_status() {
        for error in every_error() {
            let status = error.to_status();
            assert_eq!(Reason::of(&status), Some(error.reason()), "{error:?}");
            assert_eq!(status.code(), error.reason().code(), "{error:?}");
            assert!(!status.message().contains("Some(") && !status.message().contains("(\""), "{}", status.message());
        }
    }

    #[test]
    fn failed_renewals_carry_a_machine_readable_reason() {
        let status = RegistryError::Rejected(Rejection::Fenced { current: Token(9) }).to_status();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(status.message().starts_with("FENCED:"), "{}", status.message());
        assert_eq!(status.metadata().get(REASON_METADATA_KEY).map(|v| v.to_str().ok()), Some(Some("FENCED")));
        let status = RegistryError::Rejected(Rejection::Quarantined { reason: "x".into() }).to_status();
        assert_eq!(Reason::of(&status), Some(Reason::Quarantined));
        assert_eq!(Reason::of(&RegistryError::Canary { current: Token(2) }.to_status()), Some(Reason::Fenced));
    }

    /// Goal: an unknown outcome is told apart from a definite "not now" on the wire.
    #[test]
    fn unknown_outcomes_are_told_apart_from_definite_unavailability() {
        for (e, indeterminate) in [
            (RegistryError::NoLeader { waited_ms: 1 }, false),
            (RegistryError::NoQuorum { why: "x".into() }, false),
            (RegistryError::NotLeader { leader: Some(1) }, false),
            (RegistryError::Overloaded { queued: 3 }, false),
            (RegistryError::Indeterminate { waited_ms: 1, why: "x".into() }, true),
        ] {
            let status = e.to_status();
            assert_eq!(status.code(), tonic::Code::Unavailable);
            assert_eq!(Reason::of(&status).map(Reason::is_indeterminate), Some(indeterminate), "{e:?}");
        }
    }

    /// Goal: people never read Rust debug formatting (`HolderId("…")`, `Some(2)`).
    #[test]
    fn messages_name_values_plainly() {
        let held =
            RegistryError::Rejected(Rejection::AlreadyHeld { holder: Some(HolderId("w-1".into())), specific: true });
        assert_eq!(held.to_status().message(), "worker ID is held by w-1");
        assert!(RegistryError::NotLeader { leader: Some(2) }.to_string().contains("(leader: node 2)"));
    }
}
