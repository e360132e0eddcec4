//! Replicated commands of the lease table and their outcomes. Commands carry every input
//! apply needs (including the leader's time stamp), so apply is a pure function of the log.

use serde::{Deserialize, Serialize};

use super::backup::TableBackup;
use super::ids::{HolderId, Incarnation, Token, TokenOffset, WorkerId};
use super::record::{ClusterConfig, GrantExpectation};

/// A holder extends its lease `(worker_id, token)`. Passed unchanged from the client's
/// request through the proposal into the log (the structs keep the serialized form of the
/// earlier struct variants, so logs written before stay readable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Renew {
    pub worker_id: WorkerId,
    pub token: Token,
    /// The holder's wall clock when it sent the renewal.
    pub wall_ms_at_send: u64,
    /// The largest timestamp the holder minted so far (0: none).
    pub max_minted_ts_ms: u64,
    /// The authenticated identity that sent it (`None` over plaintext).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    /// How far past `wall_ms_at_send + ttl` this renewal raises the durable high-water mark
    /// (under [`Rules::WINDOWS`]; 0 before): set by the leader, never by the caller, so that
    /// the renewals that follow are covered by it and answered from memory
    /// (docs/design.md, "Memory renewals").
    #[serde(default, skip_serializing_if = "is_zero")]
    pub window_ms: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// A holder gives its lease back; `last_ts_ms` is the exact last timestamp minted under it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub worker_id: WorkerId,
    pub token: Token,
    pub last_ts_ms: u64,
    /// The authenticated identity that sent it (`None` over plaintext).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
}

/// An operator quarantines a worker ID, saying why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantine {
    pub worker_id: WorkerId,
    pub reason: String,
}

/// An operator lifts a quarantine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unquarantine {
    pub worker_id: WorkerId,
}

/// One command in a replicated batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Set the cluster config; only the first one applied takes effect.
    Configure(ClusterConfig),
    /// Grant `worker_id` to `holder`, if the expectation still holds. If `holder` already holds
    /// a lease, that lease is returned and renewed instead (a retried Acquire must not leak an
    /// ID) — unless a new incarnation of the holder asks: then the holder's lease is taken over
    /// under a new token at this position (`worker_id` is the held ID) or given up, with its
    /// high-water mark kept, for `worker_id` (another, free ID: `auto` where waiting out the
    /// held one's high-water mark would be long).
    Grant {
        worker_id: WorkerId,
        holder: HolderId,
        ttl_ms: u64,
        expect: GrantExpectation,
        /// Whether the caller asked for this specific ID (for the error it gets on a conflict).
        specific: bool,
        /// The authenticated identity asking (`None` over plaintext): the lease's owner.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
        /// The asking process's incarnation (under [`Rules::INCARNATIONS`]): a holder's new
        /// incarnation takes its lease over under a new token instead of getting it back.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        incarnation: Option<Incarnation>,
        /// How far past `leader_wall_ms + ttl` the grant raises the durable high-water mark
        /// (under [`Rules::GRANT_WINDOWS`]; 0 before): set by the leader, like
        /// [`Renew::window_ms`], so that a lease's first renewals are answered from memory too.
        #[serde(default, skip_serializing_if = "is_zero")]
        window_ms: u64,
    },
    /// Extend the lease `(worker_id, token)`.
    Renew(Renew),
    /// Give the lease back.
    Release(Release),
    /// Operator: stop all grants and renewals of a worker ID until unquarantined.
    Quarantine(Quarantine),
    Unquarantine(Unquarantine),
    /// Operator: load a backup into a cluster that has never granted a lease, under a new
    /// token generation, with every worker ID embargoed for `ttl_ms_max + cool_down_ms`.
    /// Written before token offsets: it restores with offset 0 (replays as it always did).
    Restore(Box<TableBackup>),
    /// `Restore` with grant positions shifted by `token_offset`, drawn at random by the leader
    /// that proposed it, so that two clusters restored from one backup do not issue equal
    /// tokens. A node of an older release cannot decode it, so it stops taking entries here
    /// rather than apply the restore without the offset (a new command: usable once every
    /// node runs this release, as a restore into a freshly bootstrapped cluster does).
    RestoreWithOffset {
        backup: Box<TableBackup>,
        token_offset: TokenOffset,
        /// The restoring leader's `--renew-window` (under [`Rules::WINDOWS`]): a lost holder's
        /// `mint_until` may lie that far past its reach, so every high-water mark is raised
        /// that much further past the embargo.
        #[serde(default, skip_serializing_if = "is_zero")]
        window_ms: u64,
    },
    /// Raise the apply rules in force to `rules` (never lowered): proposed by a leader once
    /// every member runs a release that knows them. Until then a newer leader's entries are
    /// applied under the rules every member knows, so a rolling upgrade never makes replicas
    /// apply one entry two ways; a node of an older release cannot decode this command and
    /// stops rather than apply later entries differently.
    EnableRules(Rules),
    /// Registry node `node_id` has served in this cluster (joined and applied its log). An
    /// empty data dir under that id later means a lost disk, and the node refuses to start.
    NodeServed {
        node_id: u64,
    },
}

impl Command {
    /// The worker ID this command is about (`None` for cluster-wide commands).
    /// Whether applying it reads the batch's stamp into what it records (high-water marks,
    /// `not_before`, claim bounds, a restore's embargo): such a command is proposed only under
    /// a stamp the clock check vouches for.
    pub fn depends_on_the_stamp(&self) -> bool {
        matches!(
            self,
            Command::Grant { .. } | Command::Renew(_) | Command::Restore(_) | Command::RestoreWithOffset { .. }
        )
    }

    pub fn worker_id(&self) -> Option<WorkerId> {
        match self {
            Command::Configure(_)
            | Command::Restore(_)
            | Command::RestoreWithOffset { .. }
            | Command::NodeServed { .. }
            | Command::EnableRules(_) => None,
            Command::Grant { worker_id, .. }
            | Command::Renew(Renew { worker_id, .. })
            | Command::Release(Release { worker_id, .. })
            | Command::Quarantine(Quarantine { worker_id, .. })
            | Command::Unquarantine(Unquarantine { worker_id }) => Some(*worker_id),
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
    /// The apply rules the proposing leader ran: an entry is applied under the rules it was
    /// written with, so a replica that replays old entries (a learner catching up, a restart
    /// before the state machine was flushed) reaches the state the other replicas reached.
    #[serde(default, skip_serializing_if = "Rules::is_original")]
    pub rules: Rules,
}

/// Versions of the apply logic that change outcomes. Entries written before a version keep
/// their old outcomes; a new leader writes the newest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Rules(pub u8);

impl Rules {
    /// Before identities and bounded claims (entries without a `rules` field).
    pub const ORIGINAL: Rules = Rules(0);
    /// Leases bound to identities (NOT_OWNER, the canary believes only a token's owner) and
    /// bounded claims (CLOCK_SKEW, nothing at or past mint_until).
    pub const IDENTITIES: Rules = Rules(1);
    /// Incarnations: a holder's new process takes its lease over under a new token
    /// (`Command::Grant::incarnation`); before, it got the lease back unchanged.
    pub const INCARNATIONS: Rules = Rules(2);
    /// High-water windows: a renewal's `window_ms` raises the high-water mark that far past
    /// `wall_ms_at_send + ttl` (before, the field is ignored).
    pub const WINDOWS: Rules = Rules(3);
    /// Grant windows: a grant's `window_ms` raises the high-water mark that far past
    /// `leader_wall_ms + ttl`, as a renewal's does (before, the field is ignored).
    pub const GRANT_WINDOWS: Rules = Rules(4);
    /// What this build's leaders write, and the newest rules it can apply: an entry written
    /// under newer rules stops this node (applying it under older ones could diverge).
    pub const CURRENT: Rules = Rules::GRANT_WINDOWS;
    /// The newest rules in force without an `EnableRules`: those every release that writes
    /// them could already apply when they were introduced. Newer ones need the raise.
    pub const UNGATED: Rules = Rules::IDENTITIES;

    pub fn is_original(&self) -> bool {
        *self == Rules::ORIGINAL
    }
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
    /// The token belonged to an earlier incarnation of the holder, which a newer one took over
    /// (its lease, or another ID given for it): a copied state dir, or a process that outlived
    /// its restart. The holder ID (not the token) names who has the lease now.
    Superseded { holder: HolderId },
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
    /// A cluster config no release could have written (a forged entry): refused, never a panic.
    BadConfig { why: String },
    /// The lease belongs to another authenticated identity (right token or not).
    NotOwner { owner: String },
    /// A renewal claims a send time this far ahead of the leader's clock: the holder's clock
    /// (or the claim) is off, and the high-water mark must not follow it.
    ClockAhead { wall_ms_at_send: u64, registry_time_ms: u64 },
    /// A command beyond the token slot space of its entry (only a forged entry has one).
    BatchTooLarge { slot: usize },
    /// A claimed minted timestamp at or past the lease's own `mint_until`: no honest holder
    /// mints there, so it may not move the high-water mark.
    BeyondMintUntil { field: String, value: u64, mint_until_ms: u64 },
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
    /// The apply rules in force (after an `EnableRules`).
    RulesEnabled(Rules),
    /// A stale renewal proved an overlap: the ID is now quarantined (and this renewal fenced).
    CanaryHit {
        current: Token,
    },
    Rejected(Rejection),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Goal: logs and forwarded proposals written before Renew, Release, Quarantine and
    /// Unquarantine became structs still decode, and encode the same way (a newtype variant
    /// holding a struct serializes like the struct variant it replaced); a `Restore` written
    /// before token offsets keeps its form (and restores with offset 0), and the offset travels
    /// only in its own variant, which an older release cannot decode (so never misapplies).
    #[test]
    fn commands_keep_their_serialized_form() {
        use crate::lease::{ClusterConfig, TokenOffset};
        use crate::limits::TOKEN_OFFSET_BITS;
        let config = r#"{"epoch_ms":1,"worker_id_bits":4,"sequence_bits":12,"ttl_ms_max":1000,"cool_down_ms":10}"#;
        let backup = format!(r#"{{"config":{config},"generation":0,"last_token":0,"records":[],"audit":[]}}"#);
        let table = TableBackup {
            config: ClusterConfig::small_for_tests(),
            generation: 0,
            last_token: Token::NONE,
            records: Vec::new(),
            audit: Vec::new(),
        };
        let restores = [
            (format!(r#"{{"Restore":{backup}}}"#), Command::Restore(Box::new(table.clone()))),
            (
                format!(r#"{{"RestoreWithOffset":{{"backup":{backup},"token_offset":77}}}}"#),
                Command::RestoreWithOffset {
                    backup: Box::new(table),
                    token_offset: TokenOffset::try_from(77).unwrap(),
                    window_ms: 0,
                },
            ),
        ];
        for (json, command) in restores {
            assert_eq!(serde_json::from_str::<Command>(&json).unwrap(), command);
            assert_eq!(serde_json::to_string(&command).unwrap(), json);
        }
        let forged =
            format!(r#"{{"RestoreWithOffset":{{"backup":{backup},"token_offset":{}}}}}"#, 1u64 << TOKEN_OFFSET_BITS);
        let error = serde_json::from_str::<Command>(&forged).unwrap_err().to_string();
        assert!(error.contains("token offset"), "{error}");

        let cases = [
            (
                r#"{"Renew":{"worker_id":3,"token":8192,"wall_ms_at_send":5,"max_minted_ts_ms":4}}"#,
                Command::Renew(Renew {
                    worker_id: WorkerId(3),
                    token: Token(8192),
                    wall_ms_at_send: 5,
                    max_minted_ts_ms: 4,
                    caller: None,
                    window_ms: 0,
                }),
            ),
            (
                r#"{"Release":{"worker_id":3,"token":8192,"last_ts_ms":7}}"#,
                Command::Release(Release { worker_id: WorkerId(3), token: Token(8192), last_ts_ms: 7, caller: None }),
            ),
            (
                r#"{"Quarantine":{"worker_id":1,"reason":"x"}}"#,
                Command::Quarantine(Quarantine { worker_id: WorkerId(1), reason: "x".into() }),
            ),
            (r#"{"Unquarantine":{"worker_id":1}}"#, Command::Unquarantine(Unquarantine { worker_id: WorkerId(1) })),
        ];
        for (json, command) in cases {
            assert_eq!(serde_json::from_str::<Command>(json).unwrap(), command);
            assert_eq!(serde_json::to_string(&command).unwrap(), json);
        }
    }
}
