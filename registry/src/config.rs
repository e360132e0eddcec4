//! Configuration of one registry node, validated as a whole before anything starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::lease::ClusterConfig;
use crate::limits::WORKER_ID_BITS_MAX;
use crate::raft::types::{NodeId, PeerNode};

/// Whether this node may bootstrap a new cluster (etcd's `--initial-cluster-state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialClusterState {
    /// A new cluster: the lowest node id of `--initial-cluster` initializes it, once.
    New,
    /// Joining a running cluster: never initialize; wait to be added with `ctl add-member`.
    Existing,
}

/// Raft timing. Failover ≈ election_max + U[election_min, election_max) + heartbeat ticks.
///
/// The defaults (100 ms / 300–600 ms) are chosen for stability on a loaded machine: openraft
/// 0.9 uses the heartbeat interval as the AppendEntries timeout and has no pre-vote, so with
/// 50 ms / 150–300 ms a follower starved of CPU for a few hundred ms missed heartbeats,
/// campaigned and deposed a healthy leader (`bench/elections.sh`, BENCHMARKS.md "Elections").
#[derive(Debug, Clone, Copy)]
pub struct RaftTiming {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming { heartbeat_ms: 100, election_min_ms: 300, election_max_ms: 600 }
    }
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: NodeId,
    /// Names the cluster; stored in the data dir and checked on every peer RPC.
    pub cluster_id: String,
    /// Where clients and peers reach this node (as written in the membership).
    pub advertise: PeerNode,
    pub data_dir: PathBuf,
    pub initial_cluster: BTreeMap<NodeId, PeerNode>,
    pub initial_cluster_state: InitialClusterState,
    /// Committed by the first leader if the cluster has no config yet.
    pub cluster_config: ClusterConfig,
    pub timing: RaftTiming,
    /// Bound on every client request: waiting for a leader, confirming a quorum, committing.
    pub request_timeout: Duration,
    /// Log entries between snapshots (the log is purged behind each snapshot).
    pub snapshot_logs: u64,
    pub metrics_addr: Option<SocketAddr>,
    /// Operator RPCs only on the admin listener: the client port refuses them, so a
    /// NetworkPolicy that lets workers reach the client port keeps them from membership,
    /// snapshots and quarantine even with a stolen operator certificate in the wrong place.
    pub admin_only: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--initial-cluster entry {entry:?} is not ID=HOST:PEERPORT or ID=HOST:PEERPORT/HOST:CLIENTPORT")]
    BadClusterEntry { entry: String },
    #[error("--initial-cluster names node {0} twice")]
    DuplicateNode(NodeId),
    #[error("--initial-cluster does not name this node ({0}); add {0}=<its peer address>")]
    SelfMissing(NodeId),
    #[error("--initial-cluster says node {node_id} has peer address {listed}, but --peer-addr is {mine}")]
    SelfMismatch { node_id: NodeId, listed: String, mine: String },
    #[error("--node-id must be > 0 (0 means \"no leader\" in ClusterStatus)")]
    ZeroNodeId,
    #[error("invalid {field}: {why}")]
    Invalid { field: &'static str, why: String },
}

/// Parse `1=HOST:PEERPORT[/HOST:CLIENTPORT],2=...`.
pub fn parse_initial_cluster(spec: &str) -> Result<BTreeMap<NodeId, PeerNode>, ConfigError> {
    let mut members = BTreeMap::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = || ConfigError::BadClusterEntry { entry: entry.to_string() };
        let (id, addrs) = entry.split_once('=').ok_or_else(bad)?;
        let id: NodeId = id.trim().parse().map_err(|_| bad())?;
        let (peer, client) = match addrs.split_once('/') {
            Some((peer, client)) => (peer, client),
            None => (addrs, ""),
        };
        if peer.parse::<SocketAddr>().is_err() && !looks_like_host_port(peer) {
            return Err(bad());
        }
        if !client.is_empty() && client.parse::<SocketAddr>().is_err() && !looks_like_host_port(client) {
            return Err(bad());
        }
        let node = PeerNode { peer_addr: peer.to_string(), client_addr: client.to_string() };
        if members.insert(id, node).is_some() {
            return Err(ConfigError::DuplicateNode(id));
        }
    }
    if members.is_empty() {
        return Err(ConfigError::BadClusterEntry { entry: spec.to_string() });
    }
    Ok(members)
}

/// `name:port` with a DNS name (Kubernetes and compose use them).
fn looks_like_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok(),
        None => false,
    }
}

impl NodeConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id == 0 {
            return Err(ConfigError::ZeroNodeId);
        }
        if self.initial_cluster_state == InitialClusterState::New {
            let listed = self.initial_cluster.get(&self.node_id).ok_or(ConfigError::SelfMissing(self.node_id))?;
            if listed.peer_addr != self.advertise.peer_addr {
                return Err(ConfigError::SelfMismatch {
                    node_id: self.node_id,
                    listed: listed.peer_addr.clone(),
                    mine: self.advertise.peer_addr.clone(),
                });
            }
        }
        let invalid = |field, why: String| Err(ConfigError::Invalid { field, why });
        let c = &self.cluster_config;
        if c.worker_id_bits == 0 || c.worker_id_bits > WORKER_ID_BITS_MAX {
            return invalid("--worker-id-bits", format!("{} is outside 1..={WORKER_ID_BITS_MAX}", c.worker_id_bits));
        }
        if c.ttl_ms_max == 0 {
            return invalid("--max-ttl", "must be > 0".into());
        }
        let t = &self.timing;
        if t.election_min_ms <= 2 * t.heartbeat_ms || t.election_max_ms <= t.election_min_ms {
            return invalid(
                "--election-timeout",
                format!(
                    "need heartbeat*2 < election-min < election-max, got {} / {} / {}",
                    t.heartbeat_ms, t.election_min_ms, t.election_max_ms
                ),
            );
        }
        if self.request_timeout.as_millis() as u64 <= t.election_max_ms {
            return invalid(
                "--request-timeout",
                format!(
                    "{:?} must exceed the election timeout ({} ms) to ride through a failover",
                    self.request_timeout, t.election_max_ms
                ),
            );
        }
        if self.cluster_id.is_empty() {
            return invalid("--cluster-id", "must not be empty".into());
        }
        if self.snapshot_logs < 10 {
            return invalid("--snapshot-logs", format!("{} is below 10", self.snapshot_logs));
        }
        Ok(())
    }

    /// The openraft config derived from ours (every timing set explicitly).
    pub fn raft_config(&self) -> Result<openraft::Config, ConfigError> {
        let config = openraft::Config {
            cluster_name: self.cluster_id.clone(),
            heartbeat_interval: self.timing.heartbeat_ms,
            election_timeout_min: self.timing.election_min_ms,
            election_timeout_max: self.timing.election_max_ms,
            // Covers sending the last chunk *and* installing it on the follower.
            install_snapshot_timeout: 2000,
            max_payload_entries: 300,
            replication_lag_threshold: self.snapshot_logs.saturating_mul(2).max(1000),
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_logs),
            // JSON inflates bytes; stay far below the peer message limit.
            snapshot_max_chunk_size: 1024 * 1024,
            max_in_snapshot_log_to_keep: (self.snapshot_logs / 5).max(5),
            purge_batch_size: 64,
            ..Default::default()
        };
        config.validate().map_err(|e| ConfigError::Invalid { field: "raft config", why: e.to_string() })
    }
}

/// Where `--initial-cluster` disagrees with the committed membership: one message per node
/// id listed in both at different peer addresses. The membership wins (it was fixed when the
/// cluster bootstrapped), so a disagreement is either a stale flag or a typo committed by the
/// bootstrapping node; either way an operator must hear of it.
pub fn initial_cluster_mismatches(
    flags: &BTreeMap<NodeId, PeerNode>,
    membership: &BTreeMap<NodeId, PeerNode>,
) -> Vec<String> {
    flags
        .iter()
        .filter_map(|(id, flagged)| {
            let member = membership.get(id)?;
            (member.peer_addr != flagged.peer_addr).then(|| {
                format!(
                    "--initial-cluster says node {id} is at {}, but the cluster's membership says {}: the membership is used. If the membership is wrong, replace the member (ctl remove-member {id}, then ctl add-member under a new id); otherwise fix this node's --initial-cluster",
                    flagged.peer_addr, member.peer_addr
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_initial_cluster_with_optional_client_addresses() {
        let m = parse_initial_cluster("1=127.0.0.1:2380/127.0.0.1:2379, 2=reg-1.reg:2380").unwrap();
        assert_eq!(m[&1].client_addr, "127.0.0.1:2379");
        assert_eq!(m[&2].peer_addr, "reg-1.reg:2380");
        assert_eq!(m[&2].client_addr, "");
    }

    #[test]
    fn rejects_bad_initial_cluster_entries_by_name() {
        for bad in ["", "1", "x=127.0.0.1:1", "1=nohost", "1=127.0.0.1:99999", "1=127.0.0.1:1/bad"] {
            assert!(matches!(parse_initial_cluster(bad), Err(ConfigError::BadClusterEntry { .. })), "{bad}");
        }
        assert_eq!(parse_initial_cluster("1=a:1,1=b:2"), Err(ConfigError::DuplicateNode(1)));
    }

    #[test]
    fn initial_cluster_disagreements_name_both_addresses() {
        let flags = parse_initial_cluster("1=127.0.0.1:2380,2=127.0.0.1:2381,3=127.0.0.1:2382").unwrap();
        let membership = parse_initial_cluster("1=127.0.0.1:2380,2=127.0.0.1:2391,4=127.0.0.1:2384").unwrap();
        let found = initial_cluster_mismatches(&flags, &membership);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("node 2 is at 127.0.0.1:2381") && found[0].contains("says 127.0.0.1:2391"));
        assert!(initial_cluster_mismatches(&flags, &flags).is_empty());
    }
}
