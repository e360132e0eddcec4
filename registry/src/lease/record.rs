//! What the lease table stores: the cluster config, one record per worker ID, the audit log's
//! entries, and the table's scalar globals. Plain data shared by the table, its commands and
//! its backups (so none of those three needs another to name what it holds).

use std::collections::BTreeSet;

use fenceflake_proto::wire::{layout_timestamp_bits, LayoutBound, LEGACY_SEQUENCE_BITS};
use serde::{Deserialize, Serialize};

use super::command::Rules;
use super::ids::{HolderId, Incarnation, LogPos, Token, TokenOffset, WorkerId};

/// Cluster-wide parameters, fixed by the first leader and replicated like any command. The
/// first three are the ID layout `0 | timestamp | worker ID | sequence`, stated in every grant:
/// every worker of the cluster mints with exactly it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// The ID time origin (ms since the Unix epoch); never changes once set.
    pub epoch_ms: u64,
    /// Width of the worker-ID field: worker IDs are `0..2^worker_id_bits`.
    pub worker_id_bits: u8,
    /// Width of the sequence field. A config stored before the registry recorded it (in the
    /// data dir, the log, a snapshot or a backup) reads as [`LEGACY_SEQUENCE_BITS`], the width
    /// every worker of such a cluster used unless given `--sequence-bits`.
    #[serde(default = "legacy_sequence_bits")]
    pub sequence_bits: u8,
    /// Largest TTL a lease may ask for.
    pub ttl_ms_max: u64,
    /// Extra time, on top of the TTL, a leader waits before re-granting an unrenewed ID.
    pub cool_down_ms: u64,
}

fn legacy_sequence_bits() -> u8 {
    LEGACY_SEQUENCE_BITS
}

impl ClusterConfig {
    /// Number of worker IDs the layout has room for.
    pub fn worker_id_count(&self) -> u32 {
        1u32 << self.worker_id_bits
    }

    /// 16 worker IDs, 1 s leases: the config the backup and command tests share (its JSON,
    /// field by field, is what their serialized-form checks expect).
    #[cfg(test)]
    pub(crate) fn small_for_tests() -> ClusterConfig {
        ClusterConfig { epoch_ms: 1, worker_id_bits: 4, sequence_bits: 12, ttl_ms_max: 1000, cool_down_ms: 10 }
    }

    /// The layout's timestamp width, if the layout passes the wire contract's one rule (the
    /// rule every worker applies to a grant), else the field that breaks it.
    pub fn check_layout(&self) -> Result<u8, LayoutBound> {
        layout_timestamp_bits(self.epoch_ms, self.worker_id_bits, self.sequence_bits)
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

/// Everything the registry knows about one worker ID that has ever been touched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The current holder; `None` once released (the token stays, so stale renewals fence).
    pub holder: Option<HolderId>,
    /// Fencing token of the latest grant.
    pub token: Token,
    pub ttl_ms: u64,
    /// Position of the latest grant or renewal: the second half of the grant CAS.
    pub last_renew: LogPos,
    /// Mechanism 4: no timestamp minted by any holder so far can be at or past this... plus
    /// one: the next holder mints nothing until its wall clock is past it.
    pub high_water_ms: u64,
    /// The `not_before` handed to the current holder (the canary compares stale mints with it).
    pub not_before_ms: u64,
    /// Largest timestamp the current holder reported having minted.
    pub max_minted_ms: u64,
    /// Set by an operator or a canary hit; blocks grants and renewals.
    pub quarantine: Option<String>,
    /// The authenticated identity (SPIFFE ID) the current token was granted to; only it may
    /// renew or release. `None`: granted over plaintext, or before identities existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The identities earlier tokens of this ID were granted to, newest last (at most
    /// [`PAST_OWNERS_MAX`]): a stale renewal trips the canary only from its own token's owner.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub past_owners: Vec<PastOwner>,
    /// The incarnation of the holder process the current token was granted to (`None`: it
    /// stated none, or the lease predates incarnations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<Incarnation>,
    /// The token of the holder's previous incarnation, after a new one took the lease over
    /// (or gave this ID up for another): that process is told SUPERSEDED, not just FENCED, so
    /// that it stops for good and does not come back under the holder ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded: Option<SupersededToken>,
}

/// A token whose holder process was superseded by a newer incarnation of the same holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupersededToken {
    pub token: Token,
    pub holder: HolderId,
}

/// How many earlier (token, owner) pairs a record keeps for the canary.
pub const PAST_OWNERS_MAX: usize = 4;

/// The identity an earlier token was granted to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PastOwner {
    pub token: Token,
    pub owner: String,
}

impl LeaseRecord {
    pub(super) fn fresh() -> LeaseRecord {
        LeaseRecord {
            holder: None,
            token: Token::NONE,
            ttl_ms: 0,
            last_renew: LogPos::default(),
            high_water_ms: 0,
            not_before_ms: 0,
            max_minted_ms: 0,
            quarantine: None,
            owner: None,
            past_owners: Vec::new(),
            incarnation: None,
            superseded: None,
        }
    }

    /// Whether `caller` may act on the current token. An authenticated caller only on a lease
    /// granted to it — never on one granted over plaintext (its token may have been read by
    /// anyone then). An unauthenticated caller (a plaintext or `--tls-transitional` server
    /// let it in unchecked) on anything, as before identities existed.
    pub fn owned_by(&self, caller: Option<&str>) -> bool {
        match (&self.owner, caller) {
            (Some(owner), Some(caller)) => owner == caller,
            (None, Some(_)) => false,
            (_, None) => true,
        }
    }

    /// Whether `caller` is provably the one `token` (an earlier token of this ID) was granted
    /// to. An authenticated caller must be the recorded owner of exactly that token: a token the
    /// record does not remember (never granted, too old, granted over plaintext) proves
    /// nothing, or anyone could quarantine any ID with a made-up token.
    pub fn granted_earlier_to(&self, token: Token, caller: Option<&str>) -> bool {
        let Some(caller) = caller else { return true };
        self.past_owners.iter().any(|p| p.token == token && p.owner == caller)
    }

    /// Whether an Acquire by this record's holder from `incarnation` takes the lease over
    /// (a new process of the holder) rather than getting it back (a retry, or a worker that
    /// states no incarnation).
    pub fn taken_over_by(&self, incarnation: Option<Incarnation>) -> bool {
        // Only the same incarnation, or two that both state none (a worker older than
        // incarnations retrying), is the same process: a process that states none asking
        // after one that stated one is another process, and must not share its token.
        self.incarnation != incarnation
    }

    /// The holder that superseded `token`'s process, if `token` is the one it superseded.
    pub fn superseding(&self, token: Token) -> Option<&HolderId> {
        self.superseded.as_ref().filter(|s| s.token == token).map(|s| &s.holder)
    }

    /// What the leader must still see to grant this ID (the CAS compare).
    pub fn expectation(&self) -> GrantExpectation {
        GrantExpectation { token: self.token, last_renew: self.last_renew }
    }
}

/// One proven or declared overlap, for the operator's audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub worker_id: WorkerId,
    pub stale_token: Token,
    pub current_token: Token,
    pub current_holder: Option<HolderId>,
    pub overlap_from_ms: u64,
    pub overlap_to_ms: u64,
    pub detected_at_ms: u64,
    pub kind: AuditKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditKind {
    /// A stale-token renewal reported mints inside the current holder's window.
    Canary,
    /// An operator quarantined the ID by hand.
    Operator,
}

/// The table's scalar state, stored apart from the per-ID records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableGlobals {
    pub config: Option<ClusterConfig>,
    pub last_token: Token,
    /// Restores this table descends from (tables stored before restores existed have none).
    #[serde(default)]
    pub generation: u8,
    /// The random token offset of the restore that started this generation (0: never restored,
    /// restored before offsets, or stored before them).
    #[serde(default)]
    pub token_offset: TokenOffset,
    #[serde(default)]
    pub served_nodes: BTreeSet<u64>,
    /// Apply rules raised by `EnableRules` (default: none raised; see [`Rules::UNGATED`]).
    #[serde(default, skip_serializing_if = "Rules::is_original")]
    pub enabled_rules: Rules,
}
