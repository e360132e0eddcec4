//! Storage tests: openraft's own conformance suite against our sled stores, and the data-dir
//! identity checks.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};

use super::*;
use crate::clock::SystemClock;
use crate::raft::types::{StorageError, TypeConfig};

fn identity(node_id: NodeId) -> DataDirIdentity {
    DataDirIdentity { node_id, cluster_id: "test".into() }
}

fn tracker() -> ExpiryTracker {
    ExpiryTracker::new(Arc::new(SystemClock))
}

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for SledBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().unwrap();
        let opened = open(dir.path(), &identity(1), tracker()).unwrap();
        Ok((dir, opened.log_store, opened.state_machine))
    }
}

/// openraft's storage conformance suite: log reads, truncate, purge, vote, apply, snapshots.
#[test]
fn passes_the_openraft_storage_suite() {
    Suite::test_all(SledBuilder).unwrap();
}

#[test]
fn a_data_dir_refuses_another_node_or_cluster() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path(), &identity(1), tracker()).unwrap());
    let err = open(dir.path(), &identity(2), tracker()).unwrap_err();
    assert!(matches!(err, OpenError::WrongNode { found: 1, wanted: 2, .. }), "{err}");
    let other = DataDirIdentity { node_id: 1, cluster_id: "other".into() };
    let err = open(dir.path(), &other, tracker()).unwrap_err();
    assert!(matches!(err, OpenError::WrongCluster { .. }), "{err}");
    assert!(open(dir.path(), &identity(1), tracker()).unwrap().had_state);
}

/// Goal: an entry with more commands than the token slot space (only a forged entry has one)
/// is refused command by command, never a panic that every replica would repeat on replay.
#[tokio::test]
async fn an_oversized_entry_is_refused_not_a_panic() {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload};

    use crate::lease::{Batch, ClusterConfig, Command, Outcome, Rejection, Rules};
    use crate::limits::TOKEN_SLOT_BITS;

    let dir = tempfile::tempdir().unwrap();
    let mut sm = open(dir.path(), &identity(1), tracker()).unwrap().state_machine;
    let config = ClusterConfig { epoch_ms: 0, worker_id_bits: 2, sequence_bits: 12, ttl_ms_max: 1000, cool_down_ms: 0 };
    let commands = vec![Command::Configure(config); (1 << TOKEN_SLOT_BITS) + 1];
    let batch = Batch { leader_wall_ms: 1, commands, rules: Rules::CURRENT };
    let entry = crate::raft::types::Entry {
        log_id: openraft::LogId::new(CommittedLeaderId::new(1, 1), 1),
        payload: EntryPayload::Normal(batch),
    };
    let outcomes = sm.apply(vec![entry]).await.unwrap().pop().unwrap();
    assert_eq!(outcomes.len(), (1 << TOKEN_SLOT_BITS) + 1);
    assert!(matches!(outcomes[0], Outcome::Configured(_)));
    assert_eq!(
        outcomes[1 << TOKEN_SLOT_BITS],
        Outcome::Rejected(Rejection::BatchTooLarge { slot: 1 << TOKEN_SLOT_BITS })
    );
}

/// Goal: an entry written under apply rules newer than this release's stops the node with a
/// storage error before anything of it is applied (applying it under older rules could make
/// this replica diverge from the others).
#[tokio::test]
async fn an_entry_under_newer_rules_stops_the_node_before_applying() {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload};

    use crate::lease::{Batch, ClusterConfig, Command, Rules};

    let dir = tempfile::tempdir().unwrap();
    let mut sm = open(dir.path(), &identity(1), tracker()).unwrap().state_machine;
    let config = ClusterConfig { epoch_ms: 0, worker_id_bits: 2, sequence_bits: 12, ttl_ms_max: 1000, cool_down_ms: 0 };
    let entry = |index, rules| crate::raft::types::Entry {
        log_id: openraft::LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Batch {
            leader_wall_ms: 1,
            commands: vec![Command::Configure(config.clone())],
            rules,
        }),
    };
    let error = sm.apply(vec![entry(1, Rules(Rules::CURRENT.0 + 1))]).await.unwrap_err();
    assert!(error.to_string().contains("upgrade this node"), "{error}");
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied, None, "nothing of the entry was applied");
    sm.apply(vec![entry(1, Rules::CURRENT)]).await.unwrap();
}

/// Goal (review of incarnations): a grant that gives its holder's earlier ID up changes two
/// records; both are persisted, so a restarted node reloads exactly the table it applied
/// (before, the given-up ID reloaded still held and the holder index check failed on start).
#[tokio::test]
async fn a_given_up_id_is_persisted_with_the_grant() {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload};

    use crate::lease::{
        Batch, ClusterConfig, Command, GrantExpectation, HolderId, Incarnation, Outcome, Rules, WorkerId,
    };

    let dir = tempfile::tempdir().unwrap();
    let applied = {
        let mut sm = open(dir.path(), &identity(1), tracker()).unwrap().state_machine;
        let config =
            ClusterConfig { epoch_ms: 0, worker_id_bits: 2, sequence_bits: 12, ttl_ms_max: 60_000, cool_down_ms: 0 };
        let grant = |w, incarnation| Command::Grant {
            worker_id: WorkerId(w),
            holder: HolderId("h".into()),
            ttl_ms: 10_000,
            expect: GrantExpectation { token: Default::default(), last_renew: Default::default() },
            specific: false,
            owner: None,
            incarnation: Some(Incarnation(incarnation)),
        };
        let entry = |index, commands| crate::raft::types::Entry {
            log_id: openraft::LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Batch { leader_wall_ms: 1_000, commands, rules: Rules::CURRENT }),
        };
        sm.apply(vec![entry(1, vec![Command::Configure(config), Command::EnableRules(Rules::CURRENT)])]).await.unwrap();
        sm.apply(vec![entry(2, vec![grant(0, 1)])]).await.unwrap();
        let moved = sm.apply(vec![entry(3, vec![grant(1, 2)])]).await.unwrap();
        assert!(matches!(moved[0][0], Outcome::Granted(_)), "{moved:?}");
        let table = sm.shared().read().table.clone();
        assert!(table.record(WorkerId(0)).unwrap().holder.is_none(), "ID 0 was given up");
        table
    };
    let reopened = open(dir.path(), &identity(1), tracker()).unwrap().state_machine;
    assert_eq!(reopened.shared().read().table, applied, "the reloaded table differs from the applied one");
}
