//! The worker's view of a lease: the fencing token and what a committed Acquire or Renew
//! told it, with newtypes instead of the wire's bare integers.

use std::fmt;
use std::time::Duration;

use fenceflake_proto::v1 as pb;
use fenceflake_proto::wire::LEGACY_SEQUENCE_BITS;

use crate::worker_id::WorkerId;

/// Fencing token of a grant (docs/design.md "Safety", mechanism 1): strictly increasing across
/// grants cluster-wide; renewals and the release carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Token(u64);

impl Token {
    pub const fn new(raw: u64) -> Token {
        Token(raw)
    }

    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A committed Acquire or Renew answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseGrant {
    pub worker_id: WorkerId,
    pub token: Token,
    pub holder: String,
    pub ttl: Duration,
    /// The holder mints nothing until its wall clock is past this (ms since the Unix epoch).
    pub not_before_ms: u64,
    /// The registry leader's wall clock when it handled the request, for the skew check.
    pub registry_time_ms: u64,
    /// The deployment's ID epoch, worker-ID width and sequence width: the whole layout comes
    /// from the registry so no worker can mint with a different one. `sequence_bits` is
    /// `None` from a registry older than the field (see [`LeaseGrant::mint_sequence_bits`]).
    pub epoch_ms: u64,
    pub worker_id_bits: u8,
    pub sequence_bits: Option<u8>,
    /// Exclusive bound on this lease's timestamps: the registry's high-water mark, which the
    /// next holder's `not_before` will be at least. `u64::MAX` if the registry did not say.
    pub mint_until_ms: u64,
}

/// A `--sequence-bits` the worker was given that is not the cluster's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "--sequence-bits {flag} disagrees with the cluster's layout, which has {cluster} sequence bits: IDs of two \
     layouts can collide, so this worker mints nothing. Leave --sequence-bits (FENCEFLAKE_SEQUENCE_BITS) out to \
     use the cluster's layout, or set it to {cluster}. The layout is fixed when the cluster is bootstrapped \
     (docs/operations.md, \"Change the ID layout\")"
)]
pub struct SequenceBitsDisagree {
    pub flag: u8,
    pub cluster: u8,
}

impl LeaseGrant {
    /// The sequence width to mint with: the cluster's, as the grant states it. A flag that
    /// disagrees is refused, never obeyed. A grant from a registry older than the field states
    /// none: then the flag, else [`LEGACY_SEQUENCE_BITS`] (what every worker used then).
    pub fn mint_sequence_bits(&self, flag: Option<u8>) -> Result<u8, SequenceBitsDisagree> {
        match (self.sequence_bits, flag) {
            (Some(cluster), Some(flag)) if flag != cluster => Err(SequenceBitsDisagree { flag, cluster }),
            (Some(cluster), _) => Ok(cluster),
            (None, flag) => Ok(flag.unwrap_or(LEGACY_SEQUENCE_BITS)),
        }
    }
}

/// A registry answer that cannot be a lease.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LeaseDecodeError {
    #[error("registry granted worker ID {worker_id}, which does not fit in 16 bits")]
    WorkerIdTooLarge { worker_id: u32 },
    #[error("registry reports worker_id_bits {bits}, which does not fit in 8 bits")]
    WorkerIdBitsTooLarge { bits: u32 },
    #[error("registry reports sequence_bits {bits}, which does not fit in 8 bits")]
    SequenceBitsTooLarge { bits: u32 },
    #[error("registry returned token 0, which no grant carries")]
    ZeroToken,
}

impl TryFrom<pb::Lease> for LeaseGrant {
    type Error = LeaseDecodeError;

    fn try_from(lease: pb::Lease) -> Result<LeaseGrant, LeaseDecodeError> {
        let worker_id = u16::try_from(lease.worker_id)
            .map_err(|_| LeaseDecodeError::WorkerIdTooLarge { worker_id: lease.worker_id })?;
        let worker_id_bits = u8::try_from(lease.worker_id_bits)
            .map_err(|_| LeaseDecodeError::WorkerIdBitsTooLarge { bits: lease.worker_id_bits })?;
        let sequence_bits = u8::try_from(lease.sequence_bits)
            .map_err(|_| LeaseDecodeError::SequenceBitsTooLarge { bits: lease.sequence_bits })?;
        if lease.token == 0 {
            return Err(LeaseDecodeError::ZeroToken);
        }
        Ok(LeaseGrant {
            worker_id: WorkerId::new(worker_id),
            token: Token(lease.token),
            holder: lease.holder,
            ttl: Duration::from_millis(lease.ttl_ms),
            not_before_ms: lease.not_before_ms,
            registry_time_ms: lease.registry_time_ms,
            epoch_ms: lease.epoch_ms,
            worker_id_bits,
            sequence_bits: (sequence_bits != 0).then_some(sequence_bits),
            mint_until_ms: if lease.mint_until_ms == 0 { u64::MAX } else { lease.mint_until_ms },
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Goal: a wire lease converts field by field, and values no grant can carry are refused
    /// instead of being truncated into another worker ID.
    #[test]
    fn converts_and_refuses_impossible_values() {
        let wire = pb::Lease {
            worker_id: 7,
            token: 42,
            holder: "h".into(),
            ttl_ms: 2_000,
            not_before_ms: 5,
            registry_time_ms: 6,
            epoch_ms: 1,
            worker_id_bits: 10,
            mint_until_ms: 9,
            sequence_bits: 12,
        };
        let grant = LeaseGrant::try_from(wire.clone()).unwrap();
        assert_eq!(
            (grant.worker_id, grant.token, grant.ttl),
            (WorkerId::new(7), Token::new(42), Duration::from_secs(2))
        );
        assert_eq!((grant.not_before_ms, grant.registry_time_ms, grant.worker_id_bits), (5, 6, 10));
        assert_eq!((grant.mint_until_ms, grant.sequence_bits), (9, Some(12)));
        let unstated = LeaseGrant::try_from(pb::Lease { mint_until_ms: 0, sequence_bits: 0, ..wire.clone() }).unwrap();
        assert_eq!(unstated.mint_until_ms, u64::MAX, "an older registry states no bound");
        assert_eq!(unstated.sequence_bits, None, "an older registry states no sequence width");
        let wide = pb::Lease { sequence_bits: 300, ..wire.clone() };
        assert_eq!(LeaseGrant::try_from(wide), Err(LeaseDecodeError::SequenceBitsTooLarge { bits: 300 }));
        let too_big = pb::Lease { worker_id: 70_000, ..wire.clone() };
        assert_eq!(LeaseGrant::try_from(too_big), Err(LeaseDecodeError::WorkerIdTooLarge { worker_id: 70_000 }));
        assert_eq!(LeaseGrant::try_from(pb::Lease { token: 0, ..wire }), Err(LeaseDecodeError::ZeroToken));
    }

    /// Goal: issue 9 — the cluster's sequence width wins: without a flag the worker mints with
    /// it, with the same flag too, and a flag that disagrees is refused naming both values. A
    /// grant from a registry older than the field (no width stated) falls back to the flag,
    /// else to 12.
    #[test]
    fn the_clusters_sequence_width_wins_and_a_disagreeing_flag_is_refused() {
        let stated = |bits| LeaseGrant {
            worker_id: WorkerId::new(1),
            token: Token::new(1),
            holder: "h".into(),
            ttl: Duration::from_secs(1),
            not_before_ms: 0,
            registry_time_ms: 0,
            epoch_ms: 0,
            worker_id_bits: 10,
            sequence_bits: bits,
            mint_until_ms: u64::MAX,
        };
        assert_eq!(stated(Some(12)).mint_sequence_bits(None), Ok(12));
        assert_eq!(stated(Some(14)).mint_sequence_bits(None), Ok(14));
        assert_eq!(stated(Some(12)).mint_sequence_bits(Some(12)), Ok(12));
        let refused = stated(Some(12)).mint_sequence_bits(Some(11)).unwrap_err();
        assert_eq!(refused, SequenceBitsDisagree { flag: 11, cluster: 12 });
        let message = refused.to_string();
        assert!(message.contains("--sequence-bits 11") && message.contains("12 sequence bits"), "{message}");
        assert_eq!(stated(None).mint_sequence_bits(None), Ok(12));
        assert_eq!(stated(None).mint_sequence_bits(Some(11)), Ok(11));
    }
}
