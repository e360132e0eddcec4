//! Guard against a node that lost its disk coming back under its old id (etcd's "member has
//! already been bootstrapped" check). A node records in the replicated state, once, that it
//! has served; a node that starts with an empty data dir first asks its peers whether its id
//! has served before, and refuses to start if any says so: with its vote and log gone it could
//! help elect a leader that lacks acknowledged leases.

use std::path::Path;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::config::NodeConfig;
use crate::node::RegistryNode;
use crate::proposal::Proposal;
use crate::raft::network::{PeerClients, PeerRpc};

/// Per-peer bound on the history question: an unreachable peer must not hold up a normal
/// first start (peers of a fresh cluster may not be up yet).
const HISTORY_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between attempts to record that this node served.
const ANNOUNCE_RETRY: Duration = Duration::from_millis(500);

/// Whether `data_dir` holds nothing yet (missing or an empty directory).
pub fn is_empty_data_dir(data_dir: &Path) -> bool {
    match std::fs::read_dir(data_dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// The peer that remembers this node serving, if any peer answers so.
pub async fn peer_remembering(config: &NodeConfig, peers: &PeerClients) -> Option<u64> {
    let mut asks = JoinSet::new();
    for (&peer_id, peer) in config.initial_cluster.iter().filter(|(id, _)| **id != config.node_id) {
        let (peers, addr, node_id) = (peers.clone(), peer.peer_addr.clone(), config.node_id);
        asks.spawn(async move {
            let served: Result<bool, _> =
                peers.call(peer_id, &addr, PeerRpc::NodeHistory, &node_id, HISTORY_TIMEOUT).await;
            match served {
                Ok(served) => (peer_id, Some(served)),
                Err(e) => {
                    tracing::debug!(peer_id, error = %e, "peer did not answer the node-history question");
                    (peer_id, None)
                }
            }
        });
    }
    let mut answered = 0;
    while let Some(joined) = asks.join_next().await {
        match joined {
            Ok((peer_id, Some(true))) => return Some(peer_id),
            Ok((_, Some(false))) => answered += 1,
            _ => {}
        }
    }
    tracing::info!(node_id = config.node_id, answered, "empty data dir: no peer remembers this node serving");
    None
}

/// Record, once, that this node has served: as soon as it is a member, knows a leader and has
/// applied part of the log. Retries until it sticks or the node stops.
pub async fn announce(node: RegistryNode) {
    let mut metrics = node.raft.metrics();
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
                Err(e) => tracing::debug!(error = %e, "could not record that this node serves yet; retrying"),
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
    use super::*;

    /// Goal: a missing or empty data dir is "empty"; one holding anything is not.
    #[test]
    fn empty_data_dir_detection() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(is_empty_data_dir(&dir.path().join("missing")));
        assert!(is_empty_data_dir(dir.path()));
        std::fs::write(dir.path().join("db"), b"x").expect("write");
        assert!(!is_empty_data_dir(dir.path()));
    }
}
