//! A node's record of having served, and what it tells a node that asks about it. A node
//! records in the replicated state, once, that it has served; a node that later starts without
//! Raft state under that id lost its disk, and the lost-disk guard (`crate::lost_disk`) asks
//! its peers (`NodeHistory`) before it takes part in anything. This is the answering side.

use std::time::Duration;

use openraft::{EntryPayload, RaftLogReader};

use crate::lease::Command;
use crate::lost_disk::{HistoryAnswer, KnownMembership};
use crate::node::RegistryNode;
use crate::proposal::Proposal;
use crate::raft::types::{Entry, LogId, NodeId, StorageError, Vote};
use crate::storage::{LogReader, OpenedStorage};

/// Pause between attempts to record that this node served.
const ANNOUNCE_RETRY: Duration = Duration::from_millis(500);

/// Whether a just-opened data dir holds Raft state: a vote, a log or applied state. A dir
/// without (new, wiped, or only its identity written before a crash) goes through the guard.
pub async fn holds_raft_state(opened: &mut OpenedStorage) -> Result<bool, StorageError> {
    use openraft::storage::RaftLogStorage;
    let voted = opened.log_store.read_vote().await?.is_some();
    let logged = opened.log_store.get_log_state().await?.last_log_id.is_some();
    let state = opened.state_machine.shared();
    let applied = state.read().last_applied.is_some();
    Ok(voted || logged || applied)
}

/// What this node tells node `asked`: empty (no Raft state), or whether it remembers `asked`
/// serving (applied, or in the log past the applied index: a record committed just before a
/// full stop may not be applied yet here) and the membership it knows.
pub async fn answer(node: &RegistryNode, asked: NodeId) -> Result<HistoryAnswer, StorageError> {
    let m = node.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let blank = m.vote == Vote::default()
        && m.last_log_index.is_none()
        && m.last_applied.is_none()
        && membership.nodes().next().is_none();
    if blank {
        return Ok(HistoryAnswer::Empty);
    }
    let tail = log_tail(node, m.last_applied).await?;
    let in_tail = |wanted: &dyn Fn(&Command) -> bool| {
        tail.iter().any(|entry| match &entry.payload {
            EntryPayload::Normal(batch) => batch.commands.iter().any(wanted),
            _ => false,
        })
    };
    let served = node.state.read().table.has_served(asked)
        || in_tail(&|c| matches!(c, Command::NodeServed { node_id } if *node_id == asked));
    let voters: Vec<_> = membership.get_joint_config().clone();
    let known = KnownMembership {
        log_id: *m.membership_config.log_id(),
        voters,
        peer_addrs: membership.nodes().map(|(id, n)| (*id, n.peer_addr.clone())).collect(),
    };
    // Any command past the applied index may follow a config this node has not applied yet.
    let configured = node.state.read().table.config().is_some() || in_tail(&|_| true);
    Ok(HistoryAnswer::HoldsData { served, membership: Some(known), configured })
}

/// The log past `applied` (committed entries a full stop left unapplied, and uncommitted ones).
async fn log_tail(node: &RegistryNode, applied: Option<LogId>) -> Result<Vec<Entry>, StorageError> {
    let mut log = LogReader::open(&node.db).map_err(|e| openraft::StorageIOError::read_logs(&e))?;
    let from = applied.map_or(0, |id| id.index + 1);
    log.try_get_log_entries(from..).await
}

/// Record, once, that this node has served: as soon as it is a member, knows a leader and has
/// applied part of the log. Retries until it sticks or the node stops.
pub async fn announce(node: RegistryNode) {
    let mut metrics = node.raft.metrics();
    let mut failures = 0u32;
    loop {
        if node.state.read().table.has_served(node.node_id) {
            return;
        }
        let ready = {
            let m = metrics.borrow_and_update();
            let member = m.membership_config.membership().nodes().any(|(id, _)| *id == node.node_id);
            member && m.current_leader.is_some() && m.last_applied.is_some()
        };
        if ready {
            match node.execute(Proposal::NoteServed { node_id: node.node_id }).await {
                Ok(_) => {
                    tracing::info!(node_id = node.node_id, "recorded that this node serves in the cluster");
                    return;
                }
                Err(e) => {
                    failures += 1;
                    // Until it sticks, a lost disk under this id would not be recognized: say
                    // so when it keeps failing (an unreachable leader, a firewall).
                    if failures.is_multiple_of(20) {
                        tracing::warn!(node_id = node.node_id, failures, error = %e, "still cannot record that this node serves (the lost-disk guard needs it): can this node reach the leader's peer port?");
                    } else {
                        tracing::debug!(error = %e, "could not record that this node serves yet; retrying");
                    }
                }
            }
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(ANNOUNCE_RETRY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use openraft::storage::RaftLogStorage;

    use super::*;
    use crate::clock::ManualClock;
    use crate::expiry::ExpiryTracker;
    use crate::storage::{self, DataDirIdentity};

    /// Goal: issue 9 — a data dir holding only its identity (written before a crash) holds no
    /// Raft state and goes through the guard again; one with a vote holds state.
    #[tokio::test]
    async fn only_raft_state_counts_as_data() {
        let dir = tempfile::tempdir().unwrap();
        let identity = DataDirIdentity { node_id: 1, cluster_id: "c".into() };
        let open = || {
            let tracker = ExpiryTracker::new(std::sync::Arc::new(ManualClock::new(0)));
            storage::open(dir.path(), &identity, tracker, crate::config::DEFAULT_CACHE_MIB).unwrap()
        };
        let mut opened = open();
        assert!(!holds_raft_state(&mut opened).await.unwrap(), "a new dir");
        drop(opened);
        let mut opened = open();
        assert!(opened.had_state && !holds_raft_state(&mut opened).await.unwrap(), "identity only");
        opened.log_store.save_vote(&Vote::new(1, 2)).await.unwrap();
        drop(opened);
        assert!(holds_raft_state(&mut open()).await.unwrap(), "a vote");
    }
}
