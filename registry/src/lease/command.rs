//! Replicated commands of the lease table and their outcomes. Commands carry every input
//! apply needs (including the leader's time stamp), so apply is a pure function of the log.

use serde::{Deserialize, Serialize};

use super::backup::TableBackup;
use super::ids::{HolderId, LogPos, Token, WorkerId};

/// Cluster-wide parameters, fixed by the first leader and replicated like any command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// The ID time origin (ms since the Unix epoch); never changes once set.
    pub epoch_ms: u64,
    /// Width of the worker-ID field: worker IDs are `0..2^worker_id_bits`.
    pub worker_id_bits: u8,
    /// Largest TTL a lease may ask for.
    pub ttl_ms_max: u64,
    /// Extra time, on top of the TTL, a leader waits before re-granting an unrenewed ID.
    pub cool_down_ms: u64,
}

impl ClusterConfig {
    /// Number of worker IDs the layout has room for.
    pub fn worker_id_count(&self) -> u32 {
        1u32 << self.worker_id_bits
    }
}

/// What the leader expects a worker ID to look like when it grants it (the compare of the
/// compare-and-set): its token *and* the position of its last renewal. The renewal position
/// matters: a renewal appended before the grant but applied after the leader decided
/// "expired" commits first and extends the old holder, so the grant must then fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantExpectation {
    pub token: Token,
    pub last_renew: LogPos,
}

/// One command in a replicated batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Set the cluster config; only the first one applied takes effect.
    Configure(ClusterConfig),
    /// Grant `worker_id` to `holder`, if the expectation still holds. If `holder` already holds
    /// a lease, that lease is returned and renewed instead (a retried Acquire must not leak an ID).
    Grant {
        worker_id: WorkerId,
        holder: HolderId,
        ttl_ms: u64,
        expect: GrantExpectation,
        /// Whether the caller asked for this specific ID (for the error it gets on a conflict).
        specific: bool,
    },
    /// Extend the lease `(worker_id, token)`.
    Renew {
        worker_id: WorkerId,
        token: Token,
        wall_ms_at_send: u64,
        max_minted_ts_ms: u64,
    },
    /// Give the lease back; `last_ts_ms` is the exact last timestamp minted under it.
    Release {
        worker_id: WorkerId,
        token: Token,
        last_ts_ms: u64,
    },
    /// Operator: stop all grants and renewals of `worker_id` until unquarantined.
    Quarantine {
        worker_id: WorkerId,
        reason: String,
    },
    Unquarantine {
        worker_id: WorkerId,
    },
    /// Operator: load a backup into a cluster that has never granted a lease, under a new
    /// token generation, with every worker ID embargoed for `ttl_ms_max + cool_down_ms`.
    Restore(Box<TableBackup>),
    /// Registry node `node_id` has served in this cluster (joined and applied its log). An
    /// empty data dir under that id later means a lost disk, and the node refuses to start.
    NodeServed {
        node_id: u64,
    },
}

impl Command {
    /// The worker ID this command is about (`None` for cluster-wide commands).
    pub fn worker_id(&self) -> Option<WorkerId> {
        match self {
            Command::Configure(_) | Command::Restore(_) | Command::NodeServed { .. } => None,
            Command::Grant { worker_id, .. }
            | Command::Renew { worker_id, .. }
            | Command::Release { worker_id, .. }
            | Command::Quarantine { worker_id, .. }
            | Command::Unquarantine { worker_id } => Some(*worker_id),
        }
    }
}

/// A batch of commands in one Raft entry, stamped by the leader that proposed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The proposing leader's wall clock (ms since Unix epoch). Used only as the
    /// `registry_time_ms` echo and the audit time: it never expires anything.
    pub leader_wall_ms: u64,
    pub commands: Vec<Command>,
}

/// The lease as a holder sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrant {
    pub worker_id: WorkerId,
    pub token: Token,
    pub holder: HolderId,
    pub ttl_ms: u64,
    pub not_before_ms: u64,
    /// The high-water mark now recorded: the holder must not mint at or past it (the next
    /// holder's `not_before` will be at least this).
    pub mint_until_ms: u64,
}

/// Why a command did not take effect. These are domain answers, not errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    /// The token is not the current one: a newer grant exists.
    Fenced { current: Token },
    /// The token is current but the lease was released.
    Expired,
    /// The worker ID is quarantined.
    Quarantined { reason: String },
    /// The worker ID is held by someone else (grant compare failed, or a specific claim).
    AlreadyHeld { holder: Option<HolderId>, specific: bool },
    /// The holder already holds another worker ID than the one it asked for.
    HolderHoldsOther { worker_id: WorkerId },
    /// The worker ID is outside the configured range.
    OutOfRange { worker_id: WorkerId, count: u32 },
    /// No cluster config has been applied yet.
    NotConfigured,
    /// A ttl outside `1..=ttl_ms_max`.
    BadTtl { ttl_ms: u64, ttl_ms_max: u64 },
    /// A restore into a table that has already granted leases (it would merge two histories).
    NotEmpty { last_token: Token },
    /// A backup that fails `TableBackup::check`.
    BadBackup { why: String },
}

/// The outcome of one applied command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Configured(ClusterConfig),
    Granted(LeaseGrant),
    Renewed(LeaseGrant),
    Released,
    /// Quarantine state changed (or was already so).
    QuarantineSet,
    /// A backup was loaded; every worker ID is embargoed until `embargo_until_ms` (leader wall
    /// clock, for the operator: the embargo itself runs on each leader's monotonic clock).
    Restored {
        generation: u8,
        worker_ids: u32,
        records: usize,
        embargo_until_ms: u64,
    },
    NodeServedNoted,
    /// A stale renewal proved an overlap: the ID is now quarantined (and this renewal fenced).
    CanaryHit {
        current: Token,
    },
    Rejected(Rejection),
}
