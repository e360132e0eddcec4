//! Proptest strategies for the registry's values (test-only): text, cluster configs, lease
//! records, commands, batches, backups and proposals, from arbitrary to merely plausible. The
//! property tests of the codec, the backup decoder, the validators and the lease table share
//! them. (cargo-fuzz needs a nightly toolchain; these properties stand in for it.)

use std::collections::BTreeMap;

use proptest::collection::{btree_set, vec};
use proptest::option;
use proptest::prelude::*;

use crate::lease::record::{PastOwner, SupersededToken};
use crate::lease::{
    AuditEntry, AuditKind, Batch, ClusterConfig, Command, GrantExpectation, HolderId, Incarnation, LeaseRecord, LogPos,
    Quarantine, Release, Renew, Rules, TableBackup, TableGlobals, Token, TokenOffset, Unquarantine, WorkerId,
};
use crate::proposal::Proposal;
use crate::raft::types::PeerNode;

/// Text a request, a forwarded proposal or a stored value may carry: any characters (control
/// characters included), over-long runs, and shapes close enough to valid ones (identities,
/// reserved holders, addresses) to get past the first check.
pub fn text() -> BoxedStrategy<String> {
    prop_oneof![
        vec(any::<char>(), 0..12).prop_map(String::from_iter),
        "[a-z0-9/:._-]{0,24}",
        "[a-zé]{250,520}",
        "spiffe://[a-z0-9.-]{0,8}/fenceflake/(node|worker|client|operator|reader|x)/[a-zA-Z0-9._/-]{0,10}",
        "fenceflake:[a-z/0-9-]{0,12}",
        "[a-z.]{0,6}:[0-9]{0,6}",
    ]
    .boxed()
}

/// A config from its fields, in declaration order.
fn config(
    (epoch_ms, worker_id_bits, sequence_bits, ttl_ms_max, cool_down_ms): (u64, u8, u8, u64, u64),
) -> ClusterConfig {
    ClusterConfig { epoch_ms, worker_id_bits, sequence_bits, ttl_ms_max, cool_down_ms }
}

/// Any values at all, as a forged or corrupt entry could carry.
pub fn any_config() -> impl Strategy<Value = ClusterConfig> {
    (any::<u64>(), any::<u8>(), any::<u8>(), any::<u64>(), any::<u64>()).prop_map(config)
}

/// A config a leader could have committed (a layout every worker accepts), with few worker IDs
/// so that random commands keep meeting the same ones.
pub fn table_config() -> impl Strategy<Value = ClusterConfig> {
    (0..1u64 << 41, 1..=3u8, 8..=14u8, 1..=120_000u64, 0..=5_000u64).prop_map(config)
}

/// A config as a node's table may hold it (any layout within the bounds).
pub fn node_config() -> impl Strategy<Value = ClusterConfig> {
    (table_config(), 1..=16u8).prop_map(|(config, worker_id_bits)| ClusterConfig { worker_id_bits, ..config })
}

pub fn holder() -> impl Strategy<Value = HolderId> {
    text().prop_map(HolderId)
}

fn token() -> impl Strategy<Value = Token> {
    any::<u64>().prop_map(Token)
}

pub fn record() -> impl Strategy<Value = LeaseRecord> {
    let past_owner = (token(), text()).prop_map(|(token, owner)| PastOwner { token, owner });
    let superseded = (token(), holder()).prop_map(|(token, holder)| SupersededToken { token, holder });
    let lease = (option::of(holder()), token(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>());
    let rest = (
        option::of(text()),
        option::of(text()),
        vec(past_owner, 0..3),
        option::of(any::<u64>()),
        option::of(superseded),
    );
    (lease, rest).prop_map(
        |(
            (holder, token, ttl_ms, last_renew, high_water_ms, not_before_ms, max_minted_ms),
            (quarantine, owner, past_owners, incarnation, superseded),
        )| LeaseRecord {
            holder,
            token,
            ttl_ms,
            last_renew: LogPos(last_renew),
            high_water_ms,
            not_before_ms,
            max_minted_ms,
            quarantine,
            owner,
            past_owners,
            incarnation: incarnation.map(Incarnation),
            superseded,
        },
    )
}

pub fn audit_entry() -> impl Strategy<Value = AuditEntry> {
    let kind = prop_oneof![Just(AuditKind::Canary), Just(AuditKind::Operator)];
    (any::<u32>(), token(), token(), option::of(holder()), any::<u64>(), any::<u64>(), any::<u64>(), kind).prop_map(
        |(w, stale_token, current_token, current_holder, overlap_from_ms, overlap_to_ms, detected_at_ms, kind)| {
            AuditEntry {
                worker_id: WorkerId(w),
                stale_token,
                current_token,
                current_holder,
                overlap_from_ms,
                overlap_to_ms,
                detected_at_ms,
                kind,
            }
        },
    )
}

/// Any backup, consistent or not.
pub fn any_backup() -> impl Strategy<Value = TableBackup> {
    let config = prop_oneof![any_config(), table_config()];
    let records = vec((any::<u32>().prop_map(WorkerId), record()), 0..4);
    (config, any::<u8>(), token(), records, vec(audit_entry(), 0..3)).prop_map(
        |(config, generation, last_token, records, audit)| TableBackup {
            config,
            generation,
            last_token,
            records,
            audit,
        },
    )
}

/// A backup that passes `TableBackup::check`: records of worker IDs in range, one holder each,
/// tokens up to `last_token`, a generation that leaves another.
pub fn valid_backup() -> impl Strategy<Value = TableBackup> {
    let records = vec((any::<u32>(), record()), 0..6);
    (table_config(), 0..u8::MAX, records, vec(audit_entry(), 0..3)).prop_map(|(config, generation, records, audit)| {
        let count = config.worker_id_count();
        let records: BTreeMap<WorkerId, LeaseRecord> = records
            .into_iter()
            .map(|(w, mut record)| {
                let worker_id = WorkerId(w % count);
                record.holder = record.holder.map(|_| HolderId(format!("holder-{worker_id}")));
                (worker_id, record)
            })
            .collect();
        let last_token = records.values().map(|r| r.token).max().unwrap_or(Token::NONE);
        TableBackup { config, generation, last_token, records: records.into_iter().collect(), audit }
    })
}

fn renew() -> impl Strategy<Value = Renew> {
    (any::<u32>(), token(), any::<u64>(), any::<u64>(), option::of(text()), any::<u64>()).prop_map(
        |(w, token, wall_ms_at_send, max_minted_ts_ms, caller, window_ms)| Renew {
            worker_id: WorkerId(w),
            token,
            wall_ms_at_send,
            max_minted_ts_ms,
            caller,
            window_ms,
        },
    )
}

fn release() -> impl Strategy<Value = Release> {
    (any::<u32>(), token(), any::<u64>(), option::of(text())).prop_map(|(w, token, last_ts_ms, caller)| Release {
        worker_id: WorkerId(w),
        token,
        last_ts_ms,
        caller,
    })
}

fn quarantine() -> impl Strategy<Value = Quarantine> {
    (any::<u32>(), text()).prop_map(|(w, reason)| Quarantine { worker_id: WorkerId(w), reason })
}

/// Any command, with any values.
pub fn command() -> impl Strategy<Value = Command> {
    let expect = (token(), any::<u64>()).prop_map(|(token, pos)| GrantExpectation { token, last_renew: LogPos(pos) });
    let grant = (
        any::<u32>(),
        holder(),
        any::<u64>(),
        expect,
        any::<bool>(),
        option::of(text()),
        option::of(any::<u64>()),
        any::<u64>(),
    )
        .prop_map(|(w, holder, ttl_ms, expect, specific, owner, incarnation, window_ms)| Command::Grant {
            worker_id: WorkerId(w),
            holder,
            ttl_ms,
            expect,
            specific,
            owner,
            incarnation: incarnation.map(Incarnation),
            window_ms,
        });
    let restore_with_offset =
        (any_backup(), any::<u64>(), any::<u64>()).prop_map(|(backup, bits, window_ms)| Command::RestoreWithOffset {
            backup: Box::new(backup),
            token_offset: TokenOffset::from_random_bits(bits),
            window_ms,
        });
    prop_oneof![
        any_config().prop_map(Command::Configure),
        grant,
        renew().prop_map(Command::Renew),
        release().prop_map(Command::Release),
        quarantine().prop_map(Command::Quarantine),
        any::<u32>().prop_map(|w| Command::Unquarantine(Unquarantine { worker_id: WorkerId(w) })),
        any_backup().prop_map(|backup| Command::Restore(Box::new(backup))),
        restore_with_offset,
        any::<u64>().prop_map(|node_id| Command::NodeServed { node_id }),
        any::<u8>().prop_map(|rules| Command::EnableRules(Rules(rules))),
    ]
}

pub fn batch() -> impl Strategy<Value = Batch> {
    (any::<u64>(), vec(command(), 0..4), any::<u8>()).prop_map(|(leader_wall_ms, commands, rules)| Batch {
        leader_wall_ms,
        commands,
        rules: Rules(rules),
    })
}

pub fn globals() -> impl Strategy<Value = TableGlobals> {
    let parts = (option::of(any_config()), token(), any::<u8>(), any::<u64>(), btree_set(any::<u64>(), 0..4));
    (parts, any::<u8>()).prop_map(|((config, last_token, generation, bits, served_nodes), rules)| TableGlobals {
        config,
        last_token,
        generation,
        token_offset: TokenOffset::from_random_bits(bits),
        served_nodes,
        enabled_rules: Rules(rules),
    })
}

/// Any proposal, as a client request turns into one or a peer forwards it.
pub fn proposal() -> impl Strategy<Value = Proposal> {
    let acquire = (holder(), option::of(any::<u32>()), any::<u64>(), option::of(text()), option::of(0..3u64)).prop_map(
        |(holder, worker_id, ttl_ms, owner, incarnation)| Proposal::Acquire {
            holder,
            worker_id: worker_id.map(WorkerId),
            ttl_ms,
            owner,
            incarnation: incarnation.map(Incarnation),
        },
    );
    let node_id = prop_oneof![Just(0u64), any::<u64>()];
    let add_learner = (node_id.clone(), text(), text()).prop_map(|(node_id, peer_addr, client_addr)| {
        Proposal::AddLearner { node_id, node: PeerNode { peer_addr, client_addr } }
    });
    prop_oneof![
        acquire,
        renew().prop_map(Proposal::Renew),
        release().prop_map(Proposal::Release),
        quarantine().prop_map(Proposal::Quarantine),
        any::<u32>().prop_map(|w| Proposal::Unquarantine(Unquarantine { worker_id: WorkerId(w) })),
        any::<u32>().prop_map(|w| Proposal::GetLease { worker_id: WorkerId(w) }),
        any::<bool>().prop_map(|include_free| Proposal::ListLeases { include_free }),
        Just(Proposal::ListAudit),
        Just(Proposal::ExportSnapshot),
        add_learner,
        node_id.clone().prop_map(|node_id| Proposal::PromoteMember { node_id }),
        node_id.clone().prop_map(|node_id| Proposal::RemoveMember { node_id }),
        node_id.clone().prop_map(|node_id| Proposal::NoteServed { node_id }),
        option::of(node_id).prop_map(|to| Proposal::TransferLeader { to }),
        prop_oneof![any_backup(), valid_backup()]
            .prop_map(|backup| Proposal::ImportSnapshot { backup: Box::new(backup) }),
    ]
}
