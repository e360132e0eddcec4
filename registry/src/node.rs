//! One running registry node: routes each client proposal to the leader (itself, or one hop
//! over the peer port), and reports its own view of the cluster.

use std::sync::Arc;
use std::time::Duration;

use openraft::{Membership, ServerState};

use crate::clock::{Clock, MonoTime};
use crate::clock_watch::ClockWatch;
use crate::error::RegistryError;
use crate::forward::{self, RenewalForwarder};
use crate::leader::{member_roles, Leader};
use crate::lease::Rules;
use crate::metrics::{Gauges, RegistryMetrics};
use crate::pre_vote::CampaignGate;
use crate::proposal::{Proposal, Reply};
use crate::raft::network::PeerClients;
use crate::raft::types::{NodeId, PeerNode, Raft};
use crate::storage::{Db, SharedState};

/// A member as this node sees it.
#[derive(Debug, Clone)]
pub struct MemberView {
    pub node_id: NodeId,
    pub node: PeerNode,
    pub voter: bool,
    pub role: &'static str,
    pub matched_index: Option<u64>,
    /// Leader only: how long ago this member last answered the leader.
    pub last_ack: Option<Duration>,
    /// Leader only: how much longer this voter stays out of elections after its start (zero:
    /// it may campaign; `None`: unknown, e.g. a probe of it failed since it last answered).
    pub start_quiet: Option<Duration>,
}

/// This node's view of the cluster (any node can answer; it is not linearizable).
#[derive(Debug, Clone)]
pub struct StatusView {
    pub node_id: NodeId,
    pub leader_id: Option<NodeId>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_log_index: u64,
    pub snapshot_index: u64,
    pub members: Vec<MemberView>,
    /// Nodes recorded as having served (as this node has applied).
    pub served_node_ids: Vec<NodeId>,
    /// This node's own Raft state.
    pub state: &'static str,
    /// Leader only: time since a quorum last acknowledged this leader.
    pub quorum_ack_age: Option<Duration>,
    /// How long a leader serves without a quorum acknowledgement.
    pub leader_lease: Duration,
    /// The apply rules in force, as this node has applied them.
    pub apply_rules: Rules,
}

#[derive(Clone)]
pub struct RegistryNode {
    pub raft: Raft,
    pub state: SharedState,
    pub leader: Leader,
    pub peers: PeerClients,
    pub metrics: Arc<RegistryMetrics>,
    /// A follower's batching of the renewals it forwards to the leader.
    pub renewals: RenewalForwarder,
    pub node_id: NodeId,
    pub cluster_id: String,
    pub request_timeout: Duration,
    /// Times requests (their deadlines and waits); the registry's only window onto time.
    pub clock: Arc<dyn Clock>,
    /// What this node's peers say about its wall clock, and whether it may lead.
    pub clocks: ClockWatch,
    pub db: Db,
    /// Orders a pre-vote campaign's last check against the appends of a leader (`pre_vote.rs`).
    pub campaign_gate: CampaignGate,
}

impl std::fmt::Debug for RegistryNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryNode").field("node_id", &self.node_id).finish_non_exhaustive()
    }
}

impl RegistryNode {
    /// Execute a client proposal wherever the leader is, within the request timeout.
    pub async fn execute(&self, proposal: Proposal) -> Result<Reply, RegistryError> {
        self.validate(&proposal)?;
        let started = self.clock.mono();
        let deadline = started.plus(self.request_timeout);
        let leader = self.wait_for_leader(deadline).await?;
        if leader == self.node_id {
            return self.leader.execute(proposal).await;
        }
        let addr = self.member_addr(leader).ok_or(RegistryError::NotLeader { leader: Some(leader) })?;
        // Renewals, the bulk of a follower's forwarding, go many to one peer call.
        let proposal = match proposal {
            Proposal::Renew(renew) => return self.renewals.forward(leader, addr, renew, started, deadline).await,
            other => other,
        };
        let remaining = deadline.since(self.clock.mono()).max(forward::MIN_CALL_TIMEOUT);
        let answer = forward::forward_one(&self.peers, leader, &addr, &proposal, remaining).await.unwrap_or_else(|e| {
            Err(forward::forward_failure(&e, leader, self.clock.mono().since(started).as_millis() as u64))
        });
        if matches!(answer, Ok(Reply::MembershipChanged)) {
            self.wait_to_see_change(&proposal, deadline).await;
        }
        answer
    }

    /// After the leader committed a membership change forwarded from here, wait (to `deadline`)
    /// until this node's own membership shows it: the reply carries this node's status, and a
    /// follower that had not yet received the change's entry answered `remove-member 5` with
    /// node 5 still listed (a t47 flake). The change has committed either way, so running out
    /// of time is logged, not an error: the reply then shows this node's older view.
    async fn wait_to_see_change(&self, proposal: &Proposal, deadline: MonoTime) {
        let mut metrics = self.raft.metrics();
        loop {
            if membership_shows(proposal, metrics.borrow_and_update().membership_config.membership()) {
                return;
            }
            let remaining = deadline.since(self.clock.mono());
            if !matches!(tokio::time::timeout(remaining, metrics.changed()).await, Ok(Ok(()))) {
                tracing::warn!(
                    ?proposal,
                    "the leader committed this membership change, but this node has not received it yet; its reply shows its older view (`ctl members` a moment later shows the change)"
                );
                return;
            }
        }
    }

    /// Execute a proposal forwarded by a follower: only as leader, never forwarding again.
    pub async fn execute_forwarded(&self, proposal: Proposal) -> Result<Reply, RegistryError> {
        self.validate(&proposal)?;
        self.leader.execute(proposal).await
    }

    /// The one validation every proposal passes, from the client port or the peer port.
    fn validate(&self, proposal: &Proposal) -> Result<(), RegistryError> {
        let config = self.state.read().table.config().cloned();
        crate::service::validate::proposal(proposal, config.as_ref())
    }

    async fn wait_for_leader(&self, deadline: MonoTime) -> Result<NodeId, RegistryError> {
        let started = self.clock.mono();
        let mut metrics = self.raft.metrics();
        loop {
            if let Some(leader) = metrics.borrow_and_update().current_leader {
                return Ok(leader);
            }
            let remaining = deadline.since(self.clock.mono());
            let changed = tokio::time::timeout(remaining, metrics.changed()).await;
            if !matches!(changed, Ok(Ok(()))) {
                return Err(RegistryError::NoLeader { waited_ms: self.clock.mono().since(started).as_millis() as u64 });
            }
        }
    }

    fn member_addr(&self, node_id: NodeId) -> Option<String> {
        member_roles(&self.raft).get(&node_id).map(|(node, _)| node.peer_addr.clone())
    }

    pub async fn status(&self) -> StatusView {
        let commit_index =
            self.raft.with_raft_state(|st| st.committed.map_or(0, |c| c.index)).await.unwrap_or_default();
        let m = self.raft.metrics().borrow().clone();
        let replication = m.replication.clone().unwrap_or_default();
        let members = member_roles(&self.raft)
            .into_iter()
            .map(|(node_id, (node, voter))| {
                let role = if Some(node_id) == m.current_leader {
                    "LEADER"
                } else if !voter {
                    "LEARNER"
                } else if node_id == self.node_id {
                    role_name(m.state)
                } else {
                    "FOLLOWER"
                };
                let matched_index = replication.get(&node_id).and_then(|l| l.map(|l| l.index));
                let leads = m.state == ServerState::Leader;
                let other = leads && node_id != self.node_id;
                let last_ack = if other { self.peers.since_answer(node_id) } else { None };
                let start_quiet = if other { self.clocks.quiet_for(node_id) } else { None };
                MemberView { node_id, node, voter, role, matched_index, last_ack, start_quiet }
            })
            .collect();
        // One read guard for both: a guard taken inside the struct literal below lives to the
        // end of the statement, and a second `read()` there waits behind any writer queued
        // meanwhile (std's lock lets writers go first), which waits for the first guard: the
        // node's runtime deadlocked, both workers blocked, no peer answered and nothing was
        // logged (the cluster-start flake of t47/t10, caught with the tests' thread dumps).
        let (served_node_ids, apply_rules) = {
            let state = self.state.read();
            (state.table.served_nodes().collect(), state.table.rules_in_force(Rules::CURRENT))
        };
        StatusView {
            node_id: self.node_id,
            leader_id: m.current_leader,
            term: m.current_term,
            commit_index,
            applied_index: m.last_applied.map_or(0, |l| l.index),
            last_log_index: m.last_log_index.unwrap_or(0),
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            members,
            served_node_ids,
            state: role_name(m.state),
            quorum_ack_age: m
                .millis_since_quorum_ack
                .filter(|_| m.state == ServerState::Leader)
                .map(Duration::from_millis),
            leader_lease: self.leader.leader_lease(),
            apply_rules,
        }
    }

    /// Gauges for the metrics endpoint.
    pub async fn gauges(&self) -> Gauges {
        let status = self.status().await;
        let m = self.raft.metrics().borrow().clone();
        let [held, free, expired, quarantined] = self.leader.lease_counts();
        let clock = self.clocks.verdict();
        // The middle of the proven interval: the estimate, within half its width.
        let offset_ms = clock.median().map(|m| (m.min_ms() as f64 + m.max_ms() as f64) / 2.0);
        Gauges {
            term: status.term,
            leader_id: status.leader_id.unwrap_or(0),
            is_leader: m.state == ServerState::Leader,
            commit_index: status.commit_index,
            applied_index: status.applied_index,
            last_log_index: status.last_log_index,
            quorum_ack_age: m.millis_since_quorum_ack.map(Duration::from_millis),
            leases_held: held,
            leases_free: free,
            leases_expired: expired,
            leases_quarantined: quarantined,
            db_bytes: self.db.size_on_disk().unwrap_or(0),
            clock_offset_seconds: offset_ms.map(|ms| ms / 1000.0),
            clock_excluded: !clock.may_lead(),
        }
    }
}

/// Whether `membership` shows what the membership-changing `proposal` did: the node listed
/// (learner), a voter (promoted) or gone (removed), and no joint configuration left over.
/// Any other proposal changes no membership: true.
fn membership_shows(proposal: &Proposal, membership: &Membership<NodeId, PeerNode>) -> bool {
    let settled = membership.get_joint_config().len() == 1;
    match proposal {
        Proposal::AddLearner { node_id, .. } => membership.get_node(node_id).is_some(),
        Proposal::PromoteMember { node_id } => settled && membership.voter_ids().any(|v| v == *node_id),
        Proposal::RemoveMember { node_id } => settled && membership.get_node(node_id).is_none(),
        _ => true,
    }
}

fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "LEADER",
        ServerState::Follower => "FOLLOWER",
        ServerState::Candidate => "CANDIDATE",
        ServerState::Learner => "LEARNER",
        ServerState::Shutdown => "SHUTDOWN",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    fn membership(configs: &[&[NodeId]], nodes: &[NodeId]) -> Membership<NodeId, PeerNode> {
        let configs = configs.iter().map(|c| c.iter().copied().collect::<BTreeSet<_>>()).collect();
        let node = |id: NodeId| PeerNode { peer_addr: format!("127.0.0.1:{}", 2380 + id), client_addr: String::new() };
        Membership::new(configs, nodes.iter().map(|id| (*id, node(*id))).collect::<BTreeMap<_, _>>())
    }

    /// Goal: a forwarded membership change's reply waits for exactly the view that shows it —
    /// neither the joint configuration between the two steps nor the view before it.
    #[test]
    fn a_membership_shows_a_change_only_once_it_is_settled() {
        let remove_5 = Proposal::RemoveMember { node_id: 5 };
        assert!(!membership_shows(&remove_5, &membership(&[&[1, 2, 3, 4, 5, 6]], &[1, 2, 3, 4, 5, 6])), "before");
        assert!(
            !membership_shows(&remove_5, &membership(&[&[1, 2, 3, 4, 5, 6], &[1, 2, 3, 4, 6]], &[1, 2, 3, 4, 5, 6])),
            "joint"
        );
        assert!(membership_shows(&remove_5, &membership(&[&[1, 2, 3, 4, 6]], &[1, 2, 3, 4, 6])), "after");

        let promote_6 = Proposal::PromoteMember { node_id: 6 };
        assert!(!membership_shows(&promote_6, &membership(&[&[1, 2, 3]], &[1, 2, 3, 6])), "still a learner");
        assert!(!membership_shows(&promote_6, &membership(&[&[1, 2, 3], &[1, 2, 3, 6]], &[1, 2, 3, 6])), "joint");
        assert!(membership_shows(&promote_6, &membership(&[&[1, 2, 3, 6]], &[1, 2, 3, 6])), "a voter");

        let node = PeerNode { peer_addr: "127.0.0.1:2386".into(), client_addr: String::new() };
        let learn_6 = Proposal::AddLearner { node_id: 6, node };
        assert!(!membership_shows(&learn_6, &membership(&[&[1, 2, 3]], &[1, 2, 3])), "not yet listed");
        assert!(membership_shows(&learn_6, &membership(&[&[1, 2, 3]], &[1, 2, 3, 6])), "a learner");

        assert!(membership_shows(&Proposal::ListAudit, &membership(&[&[1]], &[1])), "no membership change");
    }
}
