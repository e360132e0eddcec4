//! What a client asks of the cluster (`Proposal`) and what the leader answers (`Reply`).
//! Serializable, because a follower forwards proposals to the leader over the peer port.

use serde::{Deserialize, Serialize};

use crate::lease::{
    AuditEntry, ClusterConfig, HolderId, Incarnation, LeaseGrant, LeaseRecord, Quarantine, Release, Renew, TableBackup,
    Unquarantine, WorkerId,
};
use crate::raft::types::{NodeId, PeerNode};
use crate::rpc::Rpc;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Proposal {
    Acquire {
        holder: HolderId,
        worker_id: Option<WorkerId>,
        ttl_ms: u64,
        /// The authenticated identity asking (`None` over plaintext); becomes the lease's owner.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
        /// The asking process's incarnation (`None`: a worker older than incarnations).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        incarnation: Option<Incarnation>,
    },
    /// Passed into the log as it is (`Command::Renew`).
    Renew(Renew),
    /// Passed into the log as it is (`Command::Release`).
    Release(Release),
    /// Passed into the log as it is (`Command::Quarantine`).
    Quarantine(Quarantine),
    /// Passed into the log as it is (`Command::Unquarantine`).
    Unquarantine(Unquarantine),
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
    /// Move leadership away from the leader (to `to` if given); see `crate::transfer`.
    TransferLeader {
        to: Option<NodeId>,
    },
    /// A node announces (once) that it has served; see `Command::NodeServed`.
    NoteServed {
        node_id: NodeId,
    },
}

impl Proposal {
    /// The RPC this proposal came from (metric label).
    pub fn rpc(&self) -> Rpc {
        match self {
            Proposal::Acquire { .. } => Rpc::Acquire,
            Proposal::Renew(_) => Rpc::Renew,
            Proposal::Release(_) => Rpc::Release,
            Proposal::Quarantine(_) => Rpc::Quarantine,
            Proposal::Unquarantine(_) => Rpc::Unquarantine,
            Proposal::GetLease { .. } => Rpc::GetLease,
            Proposal::ListLeases { .. } => Rpc::ListLeases,
            Proposal::ListAudit => Rpc::ListAudit,
            Proposal::AddLearner { .. } => Rpc::AddLearner,
            Proposal::PromoteMember { .. } => Rpc::PromoteMember,
            Proposal::RemoveMember { .. } => Rpc::RemoveMember,
            Proposal::ExportSnapshot => Rpc::ExportSnapshot,
            Proposal::ImportSnapshot { .. } => Rpc::ImportSnapshot,
            Proposal::TransferLeader { .. } => Rpc::TransferLeader,
            Proposal::NoteServed { .. } => Rpc::NoteServed,
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
    LeaderMoved {
        from: NodeId,
        leader: NodeId,
        term: u64,
    },
}
