//! The lease table as a backup carries it, and the checks a backup must pass before a restore
//! may apply it. Pure: the file format around it lives in `crate::backup`.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::ids::{Token, WorkerId};
use super::record::{AuditEntry, ClusterConfig, LeaseRecord};
use crate::limits::{AUDIT_ENTRIES_MAX, WORKER_ID_BITS_MAX};
use fenceflake_proto::wire::{LayoutBound, SEQUENCE_BITS_MAX, TIMESTAMP_BITS_MIN};

/// Everything a restore needs from the table it was exported from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableBackup {
    pub config: ClusterConfig,
    /// Restore generation of the exported table (0: it was never restored itself).
    pub generation: u8,
    pub last_token: Token,
    pub records: Vec<(WorkerId, LeaseRecord)>,
    pub audit: Vec<AuditEntry>,
}

impl TableBackup {
    /// Structural checks: a backup that fails them would break table invariants on every
    /// replica. Deterministic, so the state machine repeats them in apply.
    pub fn check(&self) -> Result<(), String> {
        let config = &self.config;
        // The layout must be one a worker can mint with. Not the epoch's range: backups
        // restored before that was checked keep their outcome when the log replays (a too-late
        // epoch only makes every worker refuse the grants; it cannot repeat an ID).
        match config.check_layout() {
            Ok(_) | Err(LayoutBound::EpochTooLate) => {}
            Err(LayoutBound::WorkerIdBits) => {
                return Err(format!("worker_id_bits {} is outside 1..={WORKER_ID_BITS_MAX}", config.worker_id_bits))
            }
            Err(LayoutBound::SequenceBits) => {
                return Err(format!("sequence_bits {} is outside 1..={SEQUENCE_BITS_MAX}", config.sequence_bits))
            }
            Err(LayoutBound::TimestampBits { timestamp_bits }) => {
                return Err(format!(
                    "worker_id_bits {} and sequence_bits {} leave {timestamp_bits} timestamp bits, below {TIMESTAMP_BITS_MIN}",
                    config.worker_id_bits, config.sequence_bits
                ))
            }
        }
        if config.ttl_ms_max == 0 {
            return Err("cluster config has a zero max TTL".to_string());
        }
        if self.generation == u8::MAX {
            return Err(format!("generation {} cannot be restored again (no generation left)", self.generation));
        }
        if self.audit.len() > AUDIT_ENTRIES_MAX {
            return Err(format!("{} audit entries is over the {AUDIT_ENTRIES_MAX} kept", self.audit.len()));
        }
        let mut seen_ids = BTreeSet::new();
        let mut seen_holders = BTreeSet::new();
        for (worker_id, record) in &self.records {
            if worker_id.0 >= config.worker_id_count() {
                return Err(format!("worker ID {worker_id} is outside 0..{}", config.worker_id_count()));
            }
            if !seen_ids.insert(*worker_id) {
                return Err(format!("worker ID {worker_id} appears twice"));
            }
            if record.token > self.last_token {
                return Err(format!(
                    "worker ID {worker_id}: token {} is above last_token {}",
                    record.token, self.last_token
                ));
            }
            if let Some(holder) = &record.holder {
                if !seen_holders.insert((record.owner.clone(), holder.clone())) {
                    return Err(format!("holder {holder:?} holds two worker IDs"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::HolderId;

    fn backup() -> TableBackup {
        let record = |holder: &str, token| LeaseRecord {
            holder: Some(HolderId(holder.to_string())),
            token: Token(token),
            ttl_ms: 1000,
            last_renew: crate::lease::LogPos(token),
            high_water_ms: 5,
            not_before_ms: 0,
            max_minted_ms: 0,
            quarantine: None,
            owner: None,
            past_owners: Vec::new(),
            incarnation: None,
            superseded: None,
        };
        TableBackup {
            config: ClusterConfig::small_for_tests(),
            generation: 0,
            last_token: Token(20),
            records: vec![(WorkerId(1), record("a", 10)), (WorkerId(2), record("b", 20))],
            audit: Vec::new(),
        }
    }

    /// Goal: a consistent backup passes, and each inconsistency a restore could not apply
    /// safely is refused with a message naming it.
    #[test]
    fn check_refuses_what_a_restore_cannot_apply() {
        assert_eq!(backup().check(), Ok(()));
        type Breakage = (&'static str, fn(&mut TableBackup));
        let cases: [Breakage; 8] = [
            ("outside 0..16", |b| b.records[0].0 = WorkerId(16)),
            ("appears twice", |b| b.records[1].0 = WorkerId(1)),
            ("above last_token", |b| b.last_token = Token(15)),
            ("holds two", |b| b.records[1].1.holder = Some(HolderId("a".into()))),
            ("worker_id_bits", |b| b.config.worker_id_bits = 0),
            ("sequence_bits 23", |b| b.config.sequence_bits = 23),
            ("leave 29 timestamp bits", |b| (b.config.worker_id_bits, b.config.sequence_bits) = (12, 22)),
            ("no generation left", |b| b.generation = u8::MAX),
        ];
        for (want, break_it) in cases {
            let mut b = backup();
            break_it(&mut b);
            let err = b.check().expect_err(want);
            assert!(err.contains(want), "{want}: {err}");
        }
    }
}
