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
