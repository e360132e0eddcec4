//! The lease table: per worker ID its holder, fencing token, high-water mark and quarantine,
//! plus the audit log. Pure and deterministic: no clock, no IO; time arrives in commands.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::backup::TableBackup;
use super::command::Rules;
use super::command::{Command, LeaseGrant, Outcome, Quarantine, Rejection, Release, Renew, Unquarantine};
use super::ids::{HolderId, Incarnation, LogPos, Token, TokenOffset, WorkerId};
use super::record::{
    AuditEntry, AuditKind, ClusterConfig, GrantExpectation, LeaseRecord, PastOwner, SupersededToken, TableGlobals,
    PAST_OWNERS_MAX,
};
use fenceflake_proto::switches::{self, Mechanism};
use fenceflake_proto::wire::WORKER_ID_BITS_MAX;

use crate::limits::{AUDIT_ENTRIES_MAX, CLAIM_AHEAD_MAX_MS, REASON_LEN_MAX, RENEW_WINDOW_MAX_MS};

/// A renewal answered from memory ([`LeaseTable::covered_renewal`]): the lease as the holder
/// sees it, and how far the high-water mark still reaches past this renewal's own reach
/// (`wall_ms_at_send + ttl`): the leader extends the window before it runs out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoveredRenewal {
    pub grant: LeaseGrant,
    pub headroom_ms: u64,
}

/// The replicated lease table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseTable {
    config: Option<ClusterConfig>,
    /// Each record shared (`Arc`), so that the copy of the table a snapshot is written from
    /// costs a pointer per worker ID instead of the records (33 MB at 65,536 IDs); a record
    /// changed while such a copy lives is copied then (`Arc::make_mut`).
    records: BTreeMap<WorkerId, Arc<LeaseRecord>>,
    audit: VecDeque<AuditEntry>,
    /// The largest token ever granted: tokens only grow (asserted on every grant).
    last_token: Token,
    /// Restore generation: the high bits of every token this table grants.
    #[serde(default)]
    generation: u8,
    /// The random offset of the restore that started this generation: grant positions are
    /// shifted by it inside the generation's token range (0: never restored, or restored
    /// before offsets existed).
    #[serde(default)]
    token_offset: TokenOffset,
    /// Registry nodes that have served in this cluster (never removed: node ids are not reused).
    #[serde(default)]
    served_nodes: BTreeSet<u64>,
    /// Apply rules raised by `EnableRules` (see [`LeaseTable::rules_in_force`]).
    #[serde(default, skip_serializing_if = "Rules::is_original")]
    enabled_rules: Rules,
    /// Index (owner, holder) → worker ID, derived from `records` (rebuilt after deserializing).
    /// Holder IDs are a namespace per owner identity: another identity using the same holder
    /// ID neither finds nor blocks this one's lease.
    #[serde(skip)]
    holders: BTreeMap<HolderKey, WorkerId>,
}

impl LeaseTable {
    /// Rebuild derived indexes after deserializing a snapshot or stored table.
    pub fn reindex(&mut self) {
        self.holders =
            self.records.iter().filter_map(|(w, r)| r.holder.clone().map(|h| ((r.owner.clone(), h), *w))).collect();
        self.check_invariants();
    }

    /// A copy to write a snapshot from while applies go on: the records shared (each copied
    /// only if it changes meanwhile), the holder index left out (a snapshot does not carry it).
    /// Every field is named, so a field added later cannot be left out of snapshots unseen.
    pub fn copy_to_write(&self) -> LeaseTable {
        LeaseTable {
            config: self.config.clone(),
            records: self.records.clone(),
            audit: self.audit.clone(),
            last_token: self.last_token,
            generation: self.generation,
            token_offset: self.token_offset,
            served_nodes: self.served_nodes.clone(),
            enabled_rules: self.enabled_rules,
            holders: BTreeMap::new(),
        }
    }

    /// Reassemble a table from what `globals`, `records` and `audit` returned.
    pub fn from_parts(
        globals: TableGlobals,
        records: impl IntoIterator<Item = (WorkerId, LeaseRecord)>,
        audit: impl IntoIterator<Item = AuditEntry>,
    ) -> LeaseTable {
        let mut table = LeaseTable {
            config: globals.config,
            records: records.into_iter().map(|(w, r)| (w, Arc::new(r))).collect(),
            audit: audit.into_iter().collect(),
            last_token: globals.last_token,
            generation: globals.generation,
            token_offset: globals.token_offset,
            served_nodes: globals.served_nodes,
            enabled_rules: globals.enabled_rules,
            holders: BTreeMap::new(),
        };
        table.reindex();
        table
    }

    pub fn globals(&self) -> TableGlobals {
        TableGlobals {
            config: self.config.clone(),
            last_token: self.last_token,
            generation: self.generation,
            token_offset: self.token_offset,
            served_nodes: self.served_nodes.clone(),
            enabled_rules: self.enabled_rules,
        }
    }

    /// The rules an entry written under `written` is applied under: never newer than what
    /// every member was known to run ([`Rules::UNGATED`], or what `EnableRules` raised to).
    pub fn rules_in_force(&self, written: Rules) -> Rules {
        written.min(self.enabled_rules.max(Rules::UNGATED))
    }

    /// Whether registry node `node_id` has served in this cluster.
    pub fn has_served(&self, node_id: u64) -> bool {
        self.served_nodes.contains(&node_id)
    }

    pub fn served_nodes(&self) -> impl Iterator<Item = u64> + '_ {
        self.served_nodes.iter().copied()
    }

    pub fn generation(&self) -> u8 {
        self.generation
    }

    /// The token of a grant at `pos` in this table.
    fn token_at(&self, pos: LogPos) -> Token {
        Token::granted(self.generation, self.token_offset, pos)
    }

    /// The table as a backup carries it (`None` before the cluster is configured).
    pub fn backup(&self) -> Option<TableBackup> {
        Some(TableBackup {
            config: self.config.clone()?,
            generation: self.generation,
            last_token: self.last_token,
            records: self.records.iter().map(|(w, r)| (*w, LeaseRecord::clone(r))).collect(),
            audit: self.audit.iter().cloned().collect(),
        })
    }

    pub fn config(&self) -> Option<&ClusterConfig> {
        self.config.as_ref()
    }

    pub fn record(&self, worker_id: WorkerId) -> Option<&LeaseRecord> {
        self.records.get(&worker_id).map(Arc::as_ref)
    }

    pub fn records(&self) -> impl Iterator<Item = (WorkerId, &LeaseRecord)> {
        self.records.iter().map(|(w, r)| (*w, r.as_ref()))
    }

    pub fn audit(&self) -> impl Iterator<Item = &AuditEntry> {
        self.audit.iter()
    }

    /// The worker ID `holder` of identity `owner` currently holds, if any.
    pub fn held_by(&self, owner: Option<&str>, holder: &HolderId) -> Option<WorkerId> {
        self.holders.get(&(owner.map(str::to_string), holder.clone())).copied()
    }

    /// Worker IDs that are free right now without any expiry decision: never held, or
    /// released, and not quarantined. Lowest first.
    pub fn free_ids(&self) -> impl Iterator<Item = WorkerId> + '_ {
        let count = self.config.as_ref().map_or(0, ClusterConfig::worker_id_count);
        (0..count).map(WorkerId).filter(|w| match self.records.get(w) {
            None => true,
            Some(r) => r.holder.is_none() && r.quarantine.is_none(),
        })
    }

    /// Apply one command at log position `pos` under the current [`Rules`].
    pub fn apply(&mut self, pos: LogPos, leader_wall_ms: u64, command: &Command) -> Outcome {
        self.apply_under(Rules::CURRENT, pos, leader_wall_ms, command)
    }

    /// Apply one command at log position `pos` under `rules` (those of the entry that carries
    /// it). Deterministic: same table, same inputs, same result.
    pub fn apply_under(&mut self, rules: Rules, pos: LogPos, leader_wall_ms: u64, command: &Command) -> Outcome {
        let rules = self.rules_in_force(rules);
        let outcome = match command {
            // Every release validated the worker-ID width before committing a config; one
            // outside it is forged, and would overflow `worker_id_count` on every replica.
            Command::Configure(config) if !(1..=WORKER_ID_BITS_MAX).contains(&config.worker_id_bits) => {
                Outcome::Rejected(Rejection::BadConfig {
                    why: format!("worker_id_bits {} is outside 1..={WORKER_ID_BITS_MAX}", config.worker_id_bits),
                })
            }
            Command::Configure(config) => {
                let applied = self.config.get_or_insert_with(|| config.clone());
                Outcome::Configured(applied.clone())
            }
            Command::Grant { worker_id, holder, ttl_ms, expect, specific, owner, incarnation, window_ms } => {
                let ask = GrantAsk {
                    holder,
                    ttl_ms: *ttl_ms,
                    window_ms: if rules >= Rules::GRANT_WINDOWS { (*window_ms).min(RENEW_WINDOW_MAX_MS) } else { 0 },
                    expect: *expect,
                    specific: *specific,
                    owner: owner.as_deref(),
                    incarnation: *incarnation,
                    takeovers: rules >= Rules::INCARNATIONS,
                };
                self.grant(pos, leader_wall_ms, *worker_id, ask)
            }
            Command::Renew(renew) => self.renew(rules, pos, leader_wall_ms, renew),
            Command::Release(release) => self.release(rules, release),
            Command::Quarantine(Quarantine { worker_id, reason }) => {
                self.set_quarantine(leader_wall_ms, *worker_id, Some(reason))
            }
            Command::Unquarantine(Unquarantine { worker_id }) => self.set_quarantine(leader_wall_ms, *worker_id, None),
            Command::Restore(backup) => self.restore(pos, leader_wall_ms, backup, TokenOffset::NONE, 0),
            Command::RestoreWithOffset { backup, token_offset, window_ms } => {
                let window_ms = if rules >= Rules::WINDOWS { (*window_ms).min(RENEW_WINDOW_MAX_MS) } else { 0 };
                self.restore(pos, leader_wall_ms, backup, *token_offset, window_ms)
            }
            Command::EnableRules(raised) => {
                self.enabled_rules = self.enabled_rules.max(*raised);
                Outcome::RulesEnabled(self.rules_in_force(Rules::CURRENT))
            }
            Command::NodeServed { node_id } => {
                self.served_nodes.insert(*node_id);
                Outcome::NodeServedNoted
            }
        };
        if cfg!(debug_assertions) {
            self.check_invariants();
        }
        outcome
    }

    fn check_range(&self, worker_id: WorkerId) -> Result<&ClusterConfig, Rejection> {
        let config = self.config.as_ref().ok_or(Rejection::NotConfigured)?;
        if worker_id.0 >= config.worker_id_count() {
            return Err(Rejection::OutOfRange { worker_id, count: config.worker_id_count() });
        }
        Ok(config)
    }

    fn grant(&mut self, pos: LogPos, leader_wall_ms: u64, worker_id: WorkerId, ask: GrantAsk<'_>) -> Outcome {
        let GrantAsk { holder, ttl_ms, window_ms, expect, specific, owner, incarnation, takeovers } = ask;
        let config = match self.check_range(worker_id) {
            Ok(config) => config,
            Err(rejection) => return Outcome::Rejected(rejection),
        };
        if ttl_ms == 0 || ttl_ms > config.ttl_ms_max {
            return Outcome::Rejected(Rejection::BadTtl { ttl_ms, ttl_ms_max: config.ttl_ms_max });
        }
        let mut compare = true;
        if let Some(held) = self.held_by(owner, holder) {
            if !(takeovers && self.records[&held].taken_over_by(incarnation)) {
                return self.regrant(pos, leader_wall_ms, held, worker_id, ask);
            }
            if specific && held != worker_id {
                return Outcome::Rejected(Rejection::HolderHoldsOther { worker_id: held });
            }
            if held == worker_id {
                // A new process of the holder takes its own lease over. No compare: a renewal
                // of the previous incarnation applied before this grant is in the high-water
                // mark the new token waits past, and one applied after carries the old token
                // and is fenced.
                compare = false;
            } else {
                // `auto`, and waiting past the held ID's high-water mark would be long: the
                // held ID is given up (its mark kept for its next holder) for a free one.
                if let Err(rejection) = self.grantable(worker_id, expect, specific) {
                    return Outcome::Rejected(rejection);
                }
                self.give_up(held);
            }
        }
        if compare {
            if let Err(rejection) = self.grantable(worker_id, expect, specific) {
                return Outcome::Rejected(rejection);
            }
        } else if let Some(reason) = self.records.get(&worker_id).and_then(|r| r.quarantine.clone()) {
            return Outcome::Rejected(Rejection::Quarantined { reason });
        }
        let token = self.token_at(pos);
        assert!(token > self.last_token, "fencing token {token} not above {}", self.last_token);
        self.last_token = token;
        let record = Arc::make_mut(self.records.entry(worker_id).or_insert_with(|| Arc::new(LeaseRecord::fresh())));
        record.superseded = (!compare).then(|| SupersededToken { token: record.token, holder: holder.clone() });
        if let Some(previous) = record.holder.replace(holder.clone()) {
            self.holders.remove(&(record.owner.clone(), previous));
        }
        if let Some(previous) = record.owner.take() {
            record.past_owners.push(PastOwner { token: record.token, owner: previous });
            if record.past_owners.len() > PAST_OWNERS_MAX {
                record.past_owners.remove(0);
            }
        }
        record.owner = owner.map(str::to_string);
        record.incarnation = if takeovers { incarnation } else { None };
        record.token = token;
        record.ttl_ms = ttl_ms;
        record.last_renew = pos;
        record.not_before_ms = if switches::is_off(Mechanism::NotBefore) { 0 } else { record.high_water_ms };
        record.max_minted_ms = 0;
        // No window on a takeover: a new incarnation that refuses to wait out its `not_before`
        // (a worker's boot-wait bound) and is restarted would otherwise push the mark a window
        // further each time, and an ID in a restart loop would never serve again. Without it
        // each takeover's wait is shorter than the last.
        let window_ms = if compare { window_ms } else { 0 };
        record.high_water_ms =
            record.high_water_ms.max(leader_wall_ms.saturating_add(ttl_ms).saturating_add(window_ms));
        self.holders.insert((record.owner.clone(), holder.clone()), worker_id);
        Outcome::Granted(grant_view(worker_id, record))
    }

    /// Whether `worker_id` may be granted to a new holder: not quarantined, and still as the
    /// leader saw it when it planned the grant (the compare of the compare-and-set).
    fn grantable(&self, worker_id: WorkerId, expect: GrantExpectation, specific: bool) -> Result<(), Rejection> {
        let fresh = LeaseRecord::fresh();
        let record = self.records.get(&worker_id).map_or(&fresh, Arc::as_ref);
        if let Some(reason) = &record.quarantine {
            return Err(Rejection::Quarantined { reason: reason.clone() });
        }
        if record.expectation() != expect && !switches::is_off(Mechanism::GrantCas) {
            return Err(Rejection::AlreadyHeld { holder: record.holder.clone(), specific });
        }
        Ok(())
    }

    /// The holder gives `worker_id` up without a release: its high-water mark stays (a
    /// previous incarnation may still mint below it), and its token stays, so that
    /// incarnation's renewals are answered EXPIRED.
    fn give_up(&mut self, worker_id: WorkerId) {
        let record = Arc::make_mut(self.records.get_mut(&worker_id).expect("a held ID has a record"));
        if let Some(holder) = record.holder.take() {
            record.superseded = Some(SupersededToken { token: record.token, holder: holder.clone() });
            self.holders.remove(&(record.owner.clone(), holder));
        }
    }

    /// The holder (same incarnation, or one that states none) asks again: its Acquire may
    /// have committed while the reply was lost, and a retry must not take a second ID. It gets
    /// the lease it holds back, renewed.
    fn regrant(
        &mut self,
        pos: LogPos,
        leader_wall_ms: u64,
        held: WorkerId,
        worker_id: WorkerId,
        ask: GrantAsk<'_>,
    ) -> Outcome {
        if ask.specific && held != worker_id {
            return Outcome::Rejected(Rejection::HolderHoldsOther { worker_id: held });
        }
        let record = Arc::make_mut(self.records.get_mut(&held).expect("holders index points at a record"));
        if let Some(reason) = &record.quarantine {
            return Outcome::Rejected(Rejection::Quarantined { reason: reason.clone() });
        }
        record.last_renew = pos;
        record.ttl_ms = ask.ttl_ms;
        record.high_water_ms =
            record.high_water_ms.max(leader_wall_ms.saturating_add(ask.ttl_ms).saturating_add(ask.window_ms));
        // The holder may come back as a process that remembers less than it minted (a
        // retried Acquire after a restart): it must start past every timestamp it reported.
        let minted_floor = if record.max_minted_ms > 0 { record.max_minted_ms.saturating_add(1) } else { 0 };
        let grant = grant_view(held, record);
        Outcome::Granted(LeaseGrant { not_before_ms: grant.not_before_ms.max(minted_floor), ..grant })
    }

    fn renew(&mut self, rules: Rules, pos: LogPos, leader_wall_ms: u64, renew: &Renew) -> Outcome {
        let Renew { worker_id, token, wall_ms_at_send, max_minted_ts_ms, ref caller, window_ms } = *renew;
        if let Err(rejection) = self.check_range(worker_id) {
            return Outcome::Rejected(rejection);
        }
        let Some(record) = self.records.get_mut(&worker_id).map(Arc::make_mut) else {
            return Outcome::Rejected(Rejection::Fenced { current: Token::NONE });
        };
        if token != record.token {
            // The canary: a stale holder reports a mint inside the current holder's window.
            // Two processes have minted with this worker ID at overlapping times.
            // The embargo holder of a restore mints nothing: a lost cluster's holder renewing
            // against it is only stale, not overlapping.
            // Only the identity the stale token was granted to proves anything with it: a
            // stranger replaying a token it read somewhere is just fenced.
            let proven_owner = rules < Rules::IDENTITIES || record.granted_earlier_to(token, caller.as_deref());
            let overlap = token < record.token
                && proven_owner
                && record.holder.as_ref().is_some_and(|h| !h.is_reserved())
                && max_minted_ts_ms > 0
                && max_minted_ts_ms >= record.not_before_ms;
            if !overlap {
                if let Some(holder) = record.superseding(token) {
                    return Outcome::Rejected(Rejection::Superseded { holder: holder.clone() });
                }
                return Outcome::Rejected(Rejection::Fenced { current: record.token });
            }
            let current = record.token;
            record
                .quarantine
                .get_or_insert_with(|| format!("canary: stale token {token} minted at {max_minted_ts_ms}"));
            let entry = AuditEntry {
                worker_id,
                stale_token: token,
                current_token: current,
                current_holder: record.holder.clone(),
                overlap_from_ms: record.not_before_ms,
                overlap_to_ms: max_minted_ts_ms,
                detected_at_ms: leader_wall_ms,
                kind: AuditKind::Canary,
            };
            self.push_audit(entry);
            return Outcome::CanaryHit { current };
        }
        if let Some(reason) = &record.quarantine {
            return Outcome::Rejected(Rejection::Quarantined { reason: reason.clone() });
        }
        let checked = rules >= Rules::IDENTITIES;
        if checked && !record.owned_by(caller.as_deref()) {
            return Outcome::Rejected(not_owner(record));
        }
        if record.holder.is_none() {
            if let Some(holder) = record.superseding(token) {
                return Outcome::Rejected(Rejection::Superseded { holder: holder.clone() });
            }
            return Outcome::Rejected(Rejection::Expired);
        }
        if checked {
            if let Err(rejection) = claim_bounds(record, leader_wall_ms, wall_ms_at_send, max_minted_ts_ms) {
                return Outcome::Rejected(rejection);
            }
        }
        record.last_renew = pos;
        record.max_minted_ms = record.max_minted_ms.max(max_minted_ts_ms);
        let window_ms = if rules >= Rules::WINDOWS { window_ms.min(RENEW_WINDOW_MAX_MS) } else { 0 };
        record.high_water_ms = record
            .high_water_ms
            .max(wall_ms_at_send.saturating_add(record.ttl_ms).saturating_add(window_ms))
            .max(max_minted_ts_ms.saturating_add(1));
        Outcome::Renewed(grant_view(worker_id, record))
    }

    /// A renewal this table's durable high-water mark already covers, answered without a log
    /// entry: what applying it would answer, had it been logged (`Renewed` with the same grant
    /// and the same high-water mark; only `last_renew` and `max_minted_ms` would have moved,
    /// which no holder's safety rests on — docs/design.md, "Memory renewals"). `None` whenever
    /// the log must decide: another token (fenced, superseded, or the canary), a quarantine, a
    /// released lease, another identity, a claim out of bounds, a reach past the high-water
    /// mark, or apply rules below [`Rules::WINDOWS`] (a mixed-release cluster).
    pub fn covered_renewal(&self, renew: &Renew, leader_wall_ms: u64) -> Option<CoveredRenewal> {
        if self.rules_in_force(Rules::CURRENT) < Rules::WINDOWS {
            return None;
        }
        self.check_range(renew.worker_id).ok()?;
        let record = self.records.get(&renew.worker_id)?;
        let current = renew.token == record.token && record.quarantine.is_none() && record.holder.is_some();
        if !current || !record.owned_by(renew.caller.as_deref()) {
            return None;
        }
        claim_bounds(record, leader_wall_ms, renew.wall_ms_at_send, renew.max_minted_ts_ms).ok()?;
        let reach_ms = renew.wall_ms_at_send.saturating_add(record.ttl_ms);
        let headroom_ms = record.high_water_ms.checked_sub(reach_ms)?;
        Some(CoveredRenewal { grant: grant_view(renew.worker_id, record), headroom_ms })
    }

    fn release(&mut self, rules: Rules, release: &Release) -> Outcome {
        let Release { worker_id, token, last_ts_ms, ref caller } = *release;
        if let Err(rejection) = self.check_range(worker_id) {
            return Outcome::Rejected(rejection);
        }
        let Some(record) = self.records.get_mut(&worker_id).map(Arc::make_mut) else {
            return Outcome::Rejected(Rejection::Fenced { current: Token::NONE });
        };
        if token != record.token {
            return Outcome::Rejected(Rejection::Fenced { current: record.token });
        }
        let checked = rules >= Rules::IDENTITIES;
        if checked && !record.owned_by(caller.as_deref()) {
            return Outcome::Rejected(not_owner(record));
        }
        // A holder never mints at or past its mint_until: a larger claim is a lie or a bug,
        // and would push the next holder's not_before out of reach.
        if checked && record.holder.is_some() && last_ts_ms >= record.high_water_ms {
            return Outcome::Rejected(Rejection::BeyondMintUntil {
                field: "last_ts_ms".into(),
                value: last_ts_ms,
                mint_until_ms: record.high_water_ms,
            });
        }
        // Releasing twice (a retried Release) is answered like the first.
        if let Some(holder) = record.holder.take() {
            self.holders.remove(&(record.owner.clone(), holder));
            // The holder certifies it minted nothing after last_ts_ms and never will, so the
            // next holder only has to wait past what was really minted, not past the TTL.
            record.high_water_ms =
                record.not_before_ms.max(record.max_minted_ms.saturating_add(1)).max(last_ts_ms.saturating_add(1));
        }
        Outcome::Released
    }

    fn set_quarantine(&mut self, leader_wall_ms: u64, worker_id: WorkerId, reason: Option<&String>) -> Outcome {
        if let Err(rejection) = self.check_range(worker_id) {
            return Outcome::Rejected(rejection);
        }
        let record = Arc::make_mut(self.records.entry(worker_id).or_insert_with(|| Arc::new(LeaseRecord::fresh())));
        match reason {
            Some(reason) => {
                let reason = truncated(reason, REASON_LEN_MAX);
                let entry = AuditEntry {
                    worker_id,
                    stale_token: Token::NONE,
                    current_token: record.token,
                    current_holder: record.holder.clone(),
                    overlap_from_ms: 0,
                    overlap_to_ms: 0,
                    detected_at_ms: leader_wall_ms,
                    kind: AuditKind::Operator,
                };
                record.quarantine = Some(reason);
                self.push_audit(entry);
            }
            None => record.quarantine = None,
        }
        Outcome::QuarantineSet
    }

    /// Load `backup` into a table that has never granted a lease. The lost cluster may have
    /// granted any worker ID, with any token, after the backup was taken, and its holders may
    /// still be minting until their deadlines. So: tokens move to a generation above the
    /// backup's and this table's (above anything the lost cluster issued), at `token_offset`
    /// inside it (so that another cluster restored from the same backup, in the same
    /// generation, almost surely issues other token values); every worker ID is held by a
    /// registry-owned embargo holder with the maximum TTL, which the normal expiry (mechanism
    /// 3) releases only after a leader has itself seen `ttl_ms_max + cool_down_ms` pass; and
    /// each high-water mark is raised past any timestamp a lost holder could have minted
    /// before its deadline, and past its `mint_until` (`window_ms`: a memory renewal's
    /// `mint_until` lies up to a window past its reach, and a lost holder whose wall clock jumps
    /// forward mints up to it).
    fn restore(
        &mut self,
        pos: LogPos,
        leader_wall_ms: u64,
        backup: &TableBackup,
        token_offset: TokenOffset,
        window_ms: u64,
    ) -> Outcome {
        if let Err(rejection) = self.restorable() {
            return Outcome::Rejected(rejection);
        }
        if let Err(why) = backup.check() {
            return Outcome::Rejected(Rejection::BadBackup { why });
        }
        let config = backup.config.clone();
        // An empty table is of generation 0 (only a restore raises it, and a restore fills the
        // table); taking the maximum keeps the rule "above every generation seen" explicit.
        let Some(generation) = backup.generation.max(self.generation).checked_add(1) else {
            return Outcome::Rejected(Rejection::BadBackup { why: "no token generation left".to_string() });
        };
        self.generation = generation;
        self.token_offset = token_offset;
        let token = self.token_at(pos);
        let embargo_until_ms = leader_wall_ms.saturating_add(config.ttl_ms_max).saturating_add(config.cool_down_ms);
        let mut backed_up: BTreeMap<WorkerId, &LeaseRecord> = backup.records.iter().map(|(w, r)| (*w, r)).collect();
        for worker_id in (0..config.worker_id_count()).map(WorkerId) {
            let old = backed_up.remove(&worker_id);
            let high_water_ms = old
                .map_or(0, |r| r.high_water_ms.max(r.max_minted_ms.saturating_add(1)))
                .max(embargo_until_ms.saturating_add(window_ms));
            let record = LeaseRecord {
                holder: Some(HolderId::restore_embargo(worker_id)),
                token,
                ttl_ms: config.ttl_ms_max,
                last_renew: pos,
                high_water_ms,
                not_before_ms: 0,
                max_minted_ms: 0,
                quarantine: old.and_then(|r| r.quarantine.clone()),
                owner: None,
                past_owners: Vec::new(),
                incarnation: None,
                superseded: None,
            };
            self.records.insert(worker_id, Arc::new(record));
        }
        self.audit = backup.audit.iter().cloned().collect();
        self.last_token = token;
        self.config = Some(config);
        self.reindex();
        Outcome::Restored {
            generation,
            worker_ids: self.records.len() as u32,
            records: backup.records.len(),
            embargo_until_ms,
        }
    }

    fn push_audit(&mut self, entry: AuditEntry) {
        if self.audit.len() == AUDIT_ENTRIES_MAX {
            self.audit.pop_front();
        }
        self.audit.push_back(entry);
    }

    /// Whether a backup may be loaded: only into a table that has never granted a lease (nor
    /// recorded anything about a worker ID). Checked again in apply; a leader also checks it
    /// before proposing, so that an import into a live cluster never reaches the log.
    pub fn restorable(&self) -> Result<(), Rejection> {
        if self.last_token != Token::NONE || !self.records.is_empty() {
            return Err(Rejection::NotEmpty { last_token: self.last_token });
        }
        Ok(())
    }

    /// Invariants that only a bug or corruption can break; crash loudly if one does.
    pub fn check_invariants(&self) {
        let mut held = 0;
        for (worker_id, record) in &self.records {
            assert!(record.token <= self.last_token, "worker {worker_id}: token above last_token");
            assert!(
                record.last_renew >= record.token.position(self.token_offset),
                "worker {worker_id}: renewal before grant"
            );
            if let Some(holder) = &record.holder {
                held += 1;
                let key = (record.owner.clone(), holder.clone());
                assert_eq!(self.holders.get(&key), Some(worker_id), "holder index out of sync");
                assert!(record.high_water_ms >= record.not_before_ms, "worker {worker_id}: high water fell");
            }
        }
        assert_eq!(held, self.holders.len(), "holder index has stale entries");
    }
}

/// A holder ID within the namespace of one owner identity (`None`: plaintext).
type HolderKey = (Option<String>, HolderId);

fn not_owner(record: &LeaseRecord) -> Rejection {
    let owner = record.owner.clone().unwrap_or_else(|| "a plaintext caller (granted without TLS)".to_string());
    Rejection::NotOwner { owner }
}

/// What a grant asks for, beside the worker ID.
#[derive(Clone, Copy)]
struct GrantAsk<'a> {
    holder: &'a HolderId,
    ttl_ms: u64,
    /// How far past `leader_wall_ms + ttl` the mark goes (0 under rules before
    /// [`Rules::GRANT_WINDOWS`]).
    window_ms: u64,
    expect: GrantExpectation,
    specific: bool,
    owner: Option<&'a str>,
    incarnation: Option<Incarnation>,
    /// Whether a new incarnation takes the holder's lease over (rules from
    /// [`Rules::INCARNATIONS`] on); before, the holder always got its lease back.
    takeovers: bool,
}

/// Bounded claims: a renewal may move the high-water mark only as far as an honest holder
/// could need — its send time no more than [`CLAIM_AHEAD_MAX_MS`] ahead of the leader's
/// stamp, and its minted timestamps below the `mint_until` it was given. Anything beyond is
/// refused and changes nothing (so no claim can poison an ID for its next holders).
fn claim_bounds(
    record: &LeaseRecord,
    leader_wall_ms: u64,
    wall_ms_at_send: u64,
    max_minted_ts_ms: u64,
) -> Result<(), Rejection> {
    if wall_ms_at_send > leader_wall_ms.saturating_add(CLAIM_AHEAD_MAX_MS) {
        return Err(Rejection::ClockAhead { wall_ms_at_send, registry_time_ms: leader_wall_ms });
    }
    if max_minted_ts_ms >= record.high_water_ms {
        return Err(Rejection::BeyondMintUntil {
            field: "max_minted_ts_ms".into(),
            value: max_minted_ts_ms,
            mint_until_ms: record.high_water_ms,
        });
    }
    Ok(())
}

fn grant_view(worker_id: WorkerId, record: &LeaseRecord) -> LeaseGrant {
    LeaseGrant {
        worker_id,
        token: record.token,
        holder: record.holder.clone().expect("a granted or renewed lease has a holder"),
        ttl_ms: record.ttl_ms,
        not_before_ms: record.not_before_ms,
        mint_until_ms: record.high_water_ms,
    }
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "table_props.rs"]
mod props;

/// `text` cut to at most `max_bytes`, at a character boundary: `String::truncate` panics inside
/// a multibyte character, and a panic in apply would stop every replica on the same entry.
fn truncated(text: &str, max_bytes: usize) -> String {
    let mut end = text.len().min(max_bytes);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}
