//! Asking: rounds of `NodeHistory` to every node that may know this one (the initial cluster
//! and every member the answers name), until the decision settles, with a bounded backoff and
//! a log line naming who answered what and what it still waits for.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::task::JoinSet;

use super::answer::{HistoryAnswer, Received};
use super::decision::{decide, newest_membership, Decision, Evidence, Start};
use crate::clock::{Clock, MonoTime};
use crate::config::{InitialClusterState, NodeConfig};
use crate::raft::network::{PeerClients, PeerRpc};
use crate::raft::types::NodeId;

/// Per-peer bound on one question: a dead peer must not hold up a round.
const HISTORY_TIMEOUT: Duration = Duration::from_secs(1);
/// The first pause between rounds: peers of a cluster started at once bind their ports
/// within moments of each other, so the first rounds come fast.
const FIRST_PAUSE: Duration = Duration::from_millis(100);
/// The longest pause between rounds, once peers stay silent.
const MAX_PAUSE: Duration = Duration::from_secs(2);
/// While nothing changes, the waiting is logged again at this interval.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Ask until the answers settle how this node may start, or prove that it must not: the
/// `Err` names the node that remembers it serving.
pub async fn settle(config: &NodeConfig, peers: &PeerClients, clock: &dyn Clock) -> Result<Start, NodeId> {
    let initial: BTreeSet<NodeId> = config.initial_cluster.keys().copied().collect();
    let new_cluster = config.initial_cluster_state == InitialClusterState::New;
    let mut answers = BTreeMap::new();
    let mut seen_empty = BTreeSet::new();
    let mut pause = FIRST_PAUSE;
    let mut logged: Option<(MonoTime, String)> = None;
    loop {
        let targets = targets(config, &answers);
        for (peer_id, answer) in ask_round(config.node_id, peers, &targets).await {
            if answer == HistoryAnswer::Empty {
                seen_empty.insert(peer_id);
            }
            answers.insert(peer_id, answer);
        }
        let evidence =
            Evidence { me: config.node_id, initial: &initial, new_cluster, answers: &answers, seen_empty: &seen_empty };
        let heard = summary(&targets, &answers);
        match decide(&evidence) {
            Decision::Start(start) => {
                tracing::info!(node_id = config.node_id, ?start, answers = %heard, "no Raft state in the data dir: the answers let this node start");
                return Ok(start);
            }
            Decision::Refuse { remembered_by } => return Err(remembered_by),
            Decision::KeepAsking { waiting_for } => {
                let now = clock.mono();
                let due = logged.as_ref().is_none_or(|(at, said)| *said != heard || now.since(*at) >= LOG_EVERY);
                if due {
                    tracing::warn!(
                        node_id = config.node_id,
                        answers = %heard,
                        waiting_for,
                        "no Raft state in the data dir: not starting until the answers prove it safe (a lost disk must not rejoin under its old id; docs/operations.md, \"Lost disks\")"
                    );
                    logged = Some((now, heard));
                }
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// Whom to ask: the initial cluster, with the addresses (and members) of the newest
/// membership heard of over them.
fn targets(config: &NodeConfig, answers: &BTreeMap<NodeId, HistoryAnswer>) -> BTreeMap<NodeId, String> {
    let mut targets: BTreeMap<NodeId, String> =
        config.initial_cluster.iter().map(|(id, node)| (*id, node.peer_addr.clone())).collect();
    if let Some(membership) = newest_membership(answers) {
        targets.extend(membership.peer_addrs.iter().map(|(id, addr)| (*id, addr.clone())));
    }
    targets.remove(&config.node_id);
    targets
}

/// One round: every target asked at once; the answers of those that answered.
async fn ask_round(
    me: NodeId,
    peers: &PeerClients,
    targets: &BTreeMap<NodeId, String>,
) -> Vec<(NodeId, HistoryAnswer)> {
    let mut asks = JoinSet::new();
    for (&peer_id, addr) in targets {
        let (peers, addr) = (peers.clone(), addr.clone());
        asks.spawn(async move {
            let answer: Result<Received, _> =
                peers.call(peer_id, &addr, PeerRpc::NodeHistory, &me, HISTORY_TIMEOUT).await;
            match answer {
                Ok(answer) => {
                    let counted = answer.counted();
                    if counted.is_none() {
                        tracing::debug!(
                            peer_id,
                            "an older release answered `false`, which proves nothing; not counted"
                        );
                    }
                    counted.map(|answer| (peer_id, answer))
                }
                Err(e) => {
                    tracing::debug!(peer_id, error = %e, "peer did not answer the node-history question");
                    None
                }
            }
        });
    }
    let mut answered = Vec::new();
    while let Some(joined) = asks.join_next().await {
        answered.extend(joined.ok().flatten());
    }
    answered
}

/// "1: no answer, 2: empty, 4: holds data, never saw this node serve" for the log.
fn summary(targets: &BTreeMap<NodeId, String>, answers: &BTreeMap<NodeId, HistoryAnswer>) -> String {
    let said = |id: &NodeId| match answers.get(id) {
        None => "no answer",
        Some(HistoryAnswer::Empty) => "empty",
        Some(HistoryAnswer::HoldsData { served: false, .. }) => "holds data, never saw this node serve",
        Some(HistoryAnswer::HoldsData { served: true, .. }) => "holds data, remembers this node serving",
    };
    targets.keys().map(|id| format!("{id}: {}", said(id))).collect::<Vec<_>>().join(", ")
}
