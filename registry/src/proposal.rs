//! What a client asks of the cluster (`Proposal`) and what the leader answers (`Reply`).
//! Serializable, because a follower forwards proposals to the leader over the peer port.

use serde::{Deserialize, Serialize};

use crate::lease::{AuditEntry, ClusterConfig, HolderId, LeaseGrant, LeaseRecord, TableBackup, Token, WorkerId};
use crate::raft::types::{NodeId, PeerNode};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Proposal {
    Acquire {
        holder: HolderId,
        worker_id: Option<WorkerId>,
        ttl_ms: u64,
    },
    Renew {
        worker_id: WorkerId,
        token: Token,
        wall_ms_at_send: u64,
        max_minted_ts_ms: u64,
    },
    Release {
        worker_id: WorkerId,
        token: Token,
        last_ts_ms: u64,
    },
    Quarantine {
        worker_id: WorkerId,
        reason: String,
    },
    Unquarantine {
        worker_id: WorkerId,
    },
    GetLease {
        worker_id: WorkerId,
    },
    ListLeases {
        include_free: bool,
    },
    ListAudit,
    AddLearner {
        node_id: NodeId,
        node: PeerNode,
    },
    PromoteMember {
        node_id: NodeId,
    },
    RemoveMember {
        node_id: NodeId,
    },
    ExportSnapshot,
    ImportSnapshot {
        backup: Box<TableBackup>,
    },
    /// A node announces (once) that it has served; see `Command::NodeServed`.
    NoteServed {
        node_id: NodeId,
    },
}

impl Proposal {
    /// The RPC name this proposal came from (metric label).
    pub fn name(&self) -> &'static str {
        match self {
            Proposal::Acquire { .. } => "Acquire",
            Proposal::Renew { .. } => "Renew",
            Proposal::Release { .. } => "Release",
            Proposal::Quarantine { .. } => "Quarantine",
            Proposal::Unquarantine { .. } => "Unquarantine",
            Proposal::GetLease { .. } => "GetLease",
            Proposal::ListLeases { .. } => "ListLeases",
            Proposal::ListAudit => "ListAudit",
            Proposal::AddLearner { .. } => "AddLearner",
            Proposal::PromoteMember { .. } => "PromoteMember",
            Proposal::RemoveMember { .. } => "RemoveMember",
            Proposal::ExportSnapshot => "ExportSnapshot",
            Proposal::ImportSnapshot { .. } => "ImportSnapshot",
            Proposal::NoteServed { .. } => "NoteServed",
        }
    }
}

/// A lease as the holder receives it, with the leader's wall clock and the ID layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseReply {
    pub grant: LeaseGrant,
    pub registry_time_ms: u64,
    pub config: ClusterConfig,
}

/// The leader's view of one worker ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseState {
    Held,
    Free,
    /// Held, but the leader has seen no renewal for `ttl + cool_down`: it may re-grant it.
    Expired,
    Quarantined,
}

impl LeaseState {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Held => "HELD",
            LeaseState::Free => "FREE",
            LeaseState::Expired => "EXPIRED",
            LeaseState::Quarantined => "QUARANTINED",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseView {
    pub worker_id: WorkerId,
    pub state: LeaseState,
    pub record: Option<LeaseRecord>,
    pub since_renew_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Lease(LeaseReply),
    Released,
    LeaseInfo(LeaseView),
    Leases(Vec<LeaseView>),
    Audit(Vec<AuditEntry>),
    MembershipChanged,
    /// A linearizable copy of the table, as of `applied_index`, at the leader's `wall_ms`.
    Backup {
        backup: Box<TableBackup>,
        applied_index: u64,
        wall_ms: u64,
    },
    Restored {
        generation: u8,
        worker_ids: u32,
        records: usize,
        embargo_until_ms: u64,
    },
    Noted,
}
