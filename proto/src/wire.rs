//! The contract both sides share beyond the protobuf messages: the machine-readable reason
//! a registry error carries, the metadata keys, and the limits both sides must agree on
//! (among them the one rule of a valid ID layout, [`layout_timestamp_bits`]).
//!
//! Clients branch on [`Reason`] (read with [`Reason::of`]), never on a status message: the
//! messages are prose for people and may change. Every error status the registry returns
//! carries a reason, so a client never has to guess what a bare code meant.

use std::fmt;
use std::str::FromStr;

/// Metadata key carrying the [`Reason`] of a failed registry call.
pub const REASON_METADATA_KEY: &str = "fenceflake-reason";
/// Metadata key carrying why a worker refused to mint (its park cause, e.g. `FENCED`).
pub const PARK_REASON_METADATA_KEY: &str = "fenceflake-park-reason";
/// Metadata key carrying how long a rate-limited caller should wait, in ms.
pub const RETRY_AFTER_METADATA_KEY: &str = "fenceflake-retry-after-ms";
/// Metadata key naming the caller a worker's per-caller rate limit keys on.
pub const CALLER_METADATA_KEY: &str = "x-caller";

/// Holder IDs starting with this belong to the registry itself (e.g. the embargo holder of
/// a restore): no client may claim one, and a worker that finds one in its way knows it is
/// the registry's and waits instead of calling it a duplicate claim.
pub const REGISTRY_HOLDER_PREFIX: &str = "fenceflake:";

/// Widest worker-ID field any layout may have: the registry refuses a cluster config above
/// it and the worker a grant above it, so both must read the same number.
pub const WORKER_ID_BITS_MAX: u8 = 16;

/// Widest sequence field any layout may have (4M IDs per millisecond; a sequence travels as
/// `u32`). Like [`WORKER_ID_BITS_MAX`], a bound of the cluster's layout both sides check: the
/// registry refuses to bootstrap a layout a worker could not mint with.
pub const SEQUENCE_BITS_MAX: u8 = 22;

/// Narrowest timestamp field any layout may have: 2^31 ms is about 24.8 days; anything
/// shorter would wrap within one deployment's lifetime.
pub const TIMESTAMP_BITS_MIN: u8 = 31;

/// Bits of an ID below its always-zero sign bit: timestamp + worker ID + sequence.
pub const ID_PAYLOAD_BITS: u8 = 63;

/// The sequence width of a cluster that states none: a registry older than the field stores
/// none and answers 0, and every worker of such a cluster used 12 unless given
/// `--sequence-bits`. The registry reads a config stored without it as this; a worker reads a
/// grant that states none as this (or its flag).
pub const LEGACY_SEQUENCE_BITS: u8 = 12;

// The widest fields together leave less than the narrowest timestamp, so a layout's
// timestamp width must be checked on its own; the narrowest fields leave room for it.
const _: () = assert!(WORKER_ID_BITS_MAX + SEQUENCE_BITS_MAX + TIMESTAMP_BITS_MIN > ID_PAYLOAD_BITS);
const _: () = assert!(1 + 1 + TIMESTAMP_BITS_MIN <= ID_PAYLOAD_BITS);
const _: () = assert!(LEGACY_SEQUENCE_BITS <= SEQUENCE_BITS_MAX);

/// The field of an ID layout that breaks a bound, as [`layout_timestamp_bits`] finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutBound {
    /// The worker-ID width is outside `1..=WORKER_ID_BITS_MAX`.
    WorkerIdBits,
    /// The sequence width is outside `1..=SEQUENCE_BITS_MAX`.
    SequenceBits,
    /// The two widths leave fewer than [`TIMESTAMP_BITS_MIN`] timestamp bits (this many).
    TimestampBits { timestamp_bits: u8 },
    /// The epoch plus the timestamp range overflows `u64` milliseconds.
    EpochTooLate,
}

/// The one rule of a valid layout `0 | timestamp | worker ID | sequence`, applied by the
/// registry before it bootstraps a cluster and by the worker to every grant, so the registry
/// never fixes a layout its workers would refuse: both widths within their bounds, at least
/// [`TIMESTAMP_BITS_MIN`] timestamp bits left, and the last encodable millisecond
/// representable. Returns the timestamp width.
pub fn layout_timestamp_bits(epoch_ms: u64, worker_id_bits: u8, sequence_bits: u8) -> Result<u8, LayoutBound> {
    if !(1..=WORKER_ID_BITS_MAX).contains(&worker_id_bits) {
        return Err(LayoutBound::WorkerIdBits);
    }
    if !(1..=SEQUENCE_BITS_MAX).contains(&sequence_bits) {
        return Err(LayoutBound::SequenceBits);
    }
    // Cannot underflow: both widths were just bounded, 16 + 22 < 63.
    let timestamp_bits = ID_PAYLOAD_BITS - worker_id_bits - sequence_bits;
    if timestamp_bits < TIMESTAMP_BITS_MIN {
        return Err(LayoutBound::TimestampBits { timestamp_bits });
    }
    if epoch_ms.checked_add((1u64 << timestamp_bits) - 1).is_none() {
        return Err(LayoutBound::EpochTooLate);
    }
    Ok(timestamp_bits)
}

/// Why a registry call failed, as a word in the [`REASON_METADATA_KEY`] metadata.
///
/// Grouped by what a client may do next: the lease is gone for good; the request was refused
/// and will be refused again; the cluster could not serve it and nothing was applied; or the
/// outcome is unknown (the command may still commit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The token is stale: another holder has the worker ID (or the canary fired).
    Fenced,
    /// The token is stale because a newer process of the same holder (a new incarnation: a
    /// restart, or a copy of its state dir) took the lease over. The stale process must stop
    /// and never come back under that holder ID.
    Superseded,
    /// The lease was released; acquire a new one.
    Expired,
    /// The worker ID is quarantined until an operator clears it.
    Quarantined,
    /// The specific worker ID asked for is held by another holder.
    AlreadyHeld,
    /// This holder already holds another worker ID.
    HolderHoldsOther,
    /// Every worker ID is held or quarantined.
    Exhausted,
    /// The lease belongs to another authenticated identity: only the identity it was granted
    /// to may renew, release or re-acquire it (even with the right token).
    NotOwner,
    /// The caller's clock is too far from the registry's for its claim to be accepted; the
    /// message carries the registry's time. Nothing was changed.
    ClockSkew,
    /// A field of the request is malformed or out of range.
    Invalid,
    /// A restore was refused: the cluster has granted leases already.
    NotEmpty,
    /// A membership change was refused.
    Membership,
    /// Definite, nothing applied: the node asked is not the leader and did not forward.
    NotLeader,
    /// Definite, nothing applied: no leader is known (election, or quorum lost).
    NoLeader,
    /// Definite, nothing applied: the leader cannot confirm a quorum.
    NoQuorum,
    /// Definite, nothing applied: the proposal queue is full.
    Overloaded,
    /// Definite, nothing applied: no leader has committed the cluster config yet.
    NotConfigured,
    /// Indeterminate: the command was proposed and may still commit; a retry is safe.
    OutcomeUnknown,
    /// The node hit a fatal storage error and is stopping; the command may or may not have
    /// been proposed before (indeterminate).
    Fatal,
}

impl Reason {
    /// Every reason, for exhaustive tests and documentation.
    pub const ALL: [Reason; 19] = [
        Reason::Fenced,
        Reason::Superseded,
        Reason::Expired,
        Reason::Quarantined,
        Reason::AlreadyHeld,
        Reason::HolderHoldsOther,
        Reason::Exhausted,
        Reason::NotOwner,
        Reason::ClockSkew,
        Reason::Invalid,
        Reason::NotEmpty,
        Reason::Membership,
        Reason::NotLeader,
        Reason::NoLeader,
        Reason::NoQuorum,
        Reason::Overloaded,
        Reason::NotConfigured,
        Reason::OutcomeUnknown,
        Reason::Fatal,
    ];

    /// The word on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Fenced => "FENCED",
            Reason::Superseded => "SUPERSEDED",
            Reason::Expired => "EXPIRED",
            Reason::Quarantined => "QUARANTINED",
            Reason::AlreadyHeld => "ALREADY_HELD",
            Reason::HolderHoldsOther => "HOLDER_HOLDS_OTHER",
            Reason::Exhausted => "EXHAUSTED",
            Reason::NotOwner => "NOT_OWNER",
            Reason::ClockSkew => "CLOCK_SKEW",
            Reason::Invalid => "INVALID",
            Reason::NotEmpty => "NOT_EMPTY",
            Reason::Membership => "MEMBERSHIP",
            Reason::NotLeader => "NOT_LEADER",
            Reason::NoLeader => "NO_LEADER",
            Reason::NoQuorum => "NO_QUORUM",
            Reason::Overloaded => "OVERLOADED",
            Reason::NotConfigured => "NOT_CONFIGURED",
            Reason::OutcomeUnknown => "OUTCOME_UNKNOWN",
            Reason::Fatal => "FATAL",
        }
    }

    /// The gRPC code a status with this reason has.
    pub fn code(self) -> tonic::Code {
        use tonic::Code;
        match self {
            Reason::Fenced
            | Reason::Superseded
            | Reason::Expired
            | Reason::Quarantined
            | Reason::HolderHoldsOther
            | Reason::NotEmpty
            | Reason::ClockSkew
            | Reason::Membership => Code::FailedPrecondition,
            Reason::NotOwner => Code::PermissionDenied,
            Reason::AlreadyHeld => Code::AlreadyExists,
            Reason::Exhausted => Code::ResourceExhausted,
            Reason::Invalid => Code::InvalidArgument,
            Reason::NotLeader
            | Reason::NoLeader
            | Reason::NoQuorum
            | Reason::Overloaded
            | Reason::NotConfigured
            | Reason::OutcomeUnknown => Code::Unavailable,
            Reason::Fatal => Code::Internal,
        }
    }

    /// Whether the lease named in the request can never be renewed again.
    pub fn lease_is_lost(self) -> bool {
        matches!(self, Reason::Fenced | Reason::Superseded | Reason::Expired | Reason::Quarantined)
    }

    /// Whether the registry could not say if the command took effect: an unknown outcome,
    /// or a node that failed fatally (it may have proposed the command before stopping).
    /// Every other reason is a definite answer.
    pub fn is_indeterminate(self) -> bool {
        matches!(self, Reason::OutcomeUnknown | Reason::Fatal)
    }

    /// A status with this reason's code, `message`, and the reason in its metadata.
    pub fn status(self, message: impl Into<String>) -> tonic::Status {
        let mut status = tonic::Status::new(self.code(), message);
        status.metadata_mut().insert(REASON_METADATA_KEY, tonic::metadata::MetadataValue::from_static(self.as_str()));
        status
    }

    /// The reason a status carries; `None` when it carries none (a transport error, an
    /// older registry) or one this build does not know.
    pub fn of(status: &tonic::Status) -> Option<Reason> {
        status.metadata().get(REASON_METADATA_KEY)?.to_str().ok()?.parse().ok()
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reason word this build does not know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownReason(pub String);

impl fmt::Display for UnknownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown registry reason {:?}", self.0)
    }
}

impl std::error::Error for UnknownReason {}

impl FromStr for Reason {
    type Err = UnknownReason;

    fn from_str(word: &str) -> Result<Reason, UnknownReason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == word).ok_or_else(|| UnknownReason(word.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: every reason survives the trip through a status, and words are unique.
    #[test]
    fn every_reason_round_trips_through_a_status() {
        for reason in Reason::ALL {
            let status = reason.status("x");
            assert_eq!(status.code(), reason.code());
            assert_eq!(Reason::of(&status), Some(reason));
            assert_eq!(reason.as_str().parse::<Reason>(), Ok(reason));
        }
        let words: std::collections::BTreeSet<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(words.len(), Reason::ALL.len());
    }

    /// Goal: only OUTCOME_UNKNOWN (and FATAL) are indeterminate; the definite UNAVAILABLE
    /// reasons are not.
    #[test]
    fn unknown_outcomes_are_told_apart_from_definite_unavailability() {
        let unavailable: Vec<_> = Reason::ALL.into_iter().filter(|r| r.code() == tonic::Code::Unavailable).collect();
        assert!(unavailable.len() > 1);
        for reason in unavailable {
            assert_eq!(reason.is_indeterminate(), reason == Reason::OutcomeUnknown, "{reason}");
        }
    }

    /// Goal: a reasonless or unknown reason reads as none, never as a guess.
    #[test]
    fn missing_or_foreign_reasons_are_none() {
        assert_eq!(Reason::of(&tonic::Status::failed_precondition("held")), None);
        let mut status = tonic::Status::failed_precondition("x");
        status.metadata_mut().insert(REASON_METADATA_KEY, tonic::metadata::MetadataValue::from_static("NEW_WORD"));
        assert_eq!(Reason::of(&status), None);
        assert_eq!("fenced".parse::<Reason>(), Err(UnknownReason("fenced".into())));
    }

    /// Goal: the one layout rule accepts the edges of every bound and names the field that
    /// breaks one (the worker's `Layout::new` and the registry's bootstrap both rely on it).
    #[test]
    fn the_layout_rule_names_the_field_out_of_bounds() {
        let cases: &[(u64, u8, u8, Result<u8, LayoutBound>)] = &[
            (0, 10, 12, Ok(41)),
            (0, 1, 1, Ok(61)),
            (0, 16, 16, Ok(31)),
            (0, 10, 22, Ok(31)),
            (0, 0, 12, Err(LayoutBound::WorkerIdBits)),
            (0, 17, 12, Err(LayoutBound::WorkerIdBits)),
            (0, 10, 0, Err(LayoutBound::SequenceBits)),
            (0, 10, 23, Err(LayoutBound::SequenceBits)),
            (0, 16, 22, Err(LayoutBound::TimestampBits { timestamp_bits: 25 })),
            (0, 11, 22, Err(LayoutBound::TimestampBits { timestamp_bits: 30 })),
            (u64::MAX - 5, 10, 12, Err(LayoutBound::EpochTooLate)),
            (u64::MAX - ((1 << 41) - 1), 10, 12, Ok(41)),
        ];
        for (epoch_ms, w, s, want) in cases {
            assert_eq!(&layout_timestamp_bits(*epoch_ms, *w, *s), want, "epoch {epoch_ms} {w}/{s}");
        }
    }
}
