//! The internal `RaftTransport` service on the peer port: Raft RPCs into openraft, proposals
//! forwarded by followers, election holds, clock probes, and the node-history question of a
//! node starting without Raft state (the only call answered while this node itself decides
//! whether it may start). Payloads for another cluster or node are refused.

use std::pin::Pin;

use fenceflake_proto::tls::{self, Role};
use fenceflake_proto::v1 as pb;
use fenceflake_proto::v1::{NodeHistoryAnswer, RaftPayload};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::Vote;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::clock_watch::ClockReading;
use crate::forward;
use crate::leader::member_roles;
use crate::lease::Renew;
use crate::lease::Rules;
use crate::limits::FORWARDED_RENEWALS_PER_CALL_MAX;
use crate::lost_disk::StartGate;
use crate::metrics::inc;
use crate::node::RegistryNode;
use crate::pre_vote::{self, PreVoteRequest};
use crate::proposal::Proposal;
use crate::raft::types::{NodeId, TypeConfig};
use crate::served;
use crate::transfer::NoElections;

#[derive(Debug, Clone)]
pub struct PeerService {
    node: RegistryNode,
    /// Closed while this node, started without Raft state, decides whether it may start:
    /// only `NodeHistory` is answered then (`crate::lost_disk`).
    gate: StartGate,
}

impl PeerService {
    pub fn new(node: RegistryNode, gate: StartGate) -> PeerService {
        PeerService { node, gate }
    }

    /// Check the caller and the envelope, and decode the body. Only registry nodes may call
    /// the peer port, and a node speaks only for itself: the sender id in the envelope must be
    /// the node id its certificate names (a stolen worker or operator certificate cannot vote,
    /// replicate, forward or hold elections; a node cannot pose as another).
    fn open<T: DeserializeOwned>(&self, request: &Request<RaftPayload>, rpc: &str) -> Result<T, Status> {
        let caller =
            tls::authorize(request, rpc, &[Role::Node]).inspect_err(|_| inc(&self.node.metrics.refused_calls))?;
        if !self.gate.is_open() && rpc != "NodeHistory" {
            return Err(Status::unavailable(format!(
                "{rpc}: node {} has no Raft state and has not yet settled whether it may start (lost-disk guard)",
                self.node.node_id
            )));
        }
        let payload = request.get_ref();
        if let Some(identity) = caller.identity() {
            if identity.node_id() != Some(payload.sender_node_id) {
                inc(&self.node.metrics.refused_calls);
                return Err(Status::permission_denied(format!(
                    "{rpc}: the envelope says node {}, the certificate is {identity}",
                    payload.sender_node_id
                )));
            }
        }
        if payload.cluster_id != self.node.cluster_id {
            return Err(Status::failed_precondition(format!(
                "cluster id mismatch: this node is in {:?}, the sender (node {}) in {:?}",
                self.node.cluster_id, payload.sender_node_id, payload.cluster_id
            )));
        }
        if payload.target_node_id != self.node.node_id {
            return Err(Status::failed_precondition(format!(
                "wrong node: this is node {}, the sender (node {}) meant node {}",
                self.node.node_id, payload.sender_node_id, payload.target_node_id
            )));
        }
        serde_json::from_slice(&payload.data)
            .map_err(|e| Status::invalid_argument(format!("undecodable peer payload: {e}")))
    }

    /// Like [`PeerService::open`], for calls only members make: votes, forwarded proposals and
    /// election holds come from a voter or learner of the membership this node knows, never
    /// from a removed node or one not yet added (whose certificate may still be valid). Not
    /// applied to appends and snapshots: a node whose log is behind must still catch up from
    /// a leader added after its last entry (its vote binding is checked instead), and a node
    /// with no membership yet (being bootstrapped or added) accepts its first leader.
    /// `NodeHistory` is open to any node: a node asks it before it is added.
    fn open_from_member<T: DeserializeOwned>(&self, request: &Request<RaftPayload>, rpc: &str) -> Result<T, Status> {
        let body = self.open(request, rpc)?;
        let sender = request.get_ref().sender_node_id;
        let members = member_roles(&self.node.raft);
        if self.checks_identities() && !members.is_empty() && !members.contains_key(&sender) {
            return Err(self.refuse(format!("{rpc} from node {sender}, which is not a member of this node's cluster")));
        }
        Ok(body)
    }

    /// Appends and snapshots from a node that served in this cluster and is no longer a member
    /// (removed: its certificate may still be valid) are refused. A sender this node has never
    /// heard of is let through: it may be a member added after this node's last entry, which a
    /// lagging follower must still be able to catch up from (a node certificate is trusted
    /// infrastructure; docs/security.md).
    fn not_removed(&self, request: &Request<RaftPayload>, rpc: &str) -> Result<(), Status> {
        let sender = request.get_ref().sender_node_id;
        if !self.checks_identities() || member_roles(&self.node.raft).contains_key(&sender) {
            return Ok(());
        }
        if self.node.state.read().table.has_served(sender) {
            return Err(self.refuse(format!("{rpc} from node {sender}, which served in this cluster and was removed")));
        }
        Ok(())
    }

    /// A Raft message speaks for the node that sent it: the vote it carries (a candidate's,
    /// or the leader's on appends and snapshots) must be the sender's own, or one node's
    /// certificate could campaign or replicate in another's name.
    fn speaks_for_itself(&self, request: &Request<RaftPayload>, rpc: &str, vote: &Vote<NodeId>) -> Result<(), Status> {
        let sender = request.get_ref().sender_node_id;
        if self.checks_identities() && vote.leader_id().voted_for() != Some(sender) {
            return Err(self.refuse(format!("{rpc} from node {sender} carries the vote of {:?}", vote.leader_id())));
        }
        Ok(())
    }

    /// Whether callers are authenticated (not a plaintext cluster, where nothing can be told).
    fn checks_identities(&self) -> bool {
        !self.node.peers.security().accepts_plaintext()
    }

    fn refuse(&self, why: String) -> Status {
        inc(&self.node.metrics.refused_calls);
        tracing::warn!(why, "peer call refused");
        Status::permission_denied(why)
    }

    fn seal<T: Serialize>(&self, body: &T) -> Result<Response<RaftPayload>, Status> {
        self.payload(body).map(Response::new)
    }

    fn payload<T: Serialize>(&self, body: &T) -> Result<RaftPayload, Status> {
        let data = serde_json::to_vec(body).map_err(|e| Status::internal(format!("cannot encode reply: {e}")))?;
        Ok(RaftPayload {
            cluster_id: self.node.cluster_id.clone(),
            target_node_id: 0,
            sender_node_id: self.node.node_id,
            data,
        })
    }
}

#[tonic::async_trait]
impl pb::raft_transport_server::RaftTransport for PeerService {
    async fn append_entries(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = self.open(&request, "AppendEntries")?;
        self.speaks_for_itself(&request, "AppendEntries", &rpc.vote)?;
        self.not_removed(&request, "AppendEntries")?;
        // Ordered against a pre-vote campaign's last check of this node's own vote: an ack a
        // leader's lease counts never slips between that check and the self-vote (pre_vote.rs).
        let _gate = self.node.campaign_gate.append().await;
        self.seal(&self.node.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: VoteRequest<NodeId> = self.open_from_member(&request, "Vote")?;
        self.speaks_for_itself(&request, "Vote", &rpc.vote)?;
        // The leader lease (`leader_lease.rs`): while one this node took runs, or just after
        // this process started, a vote could elect a leader that memory renewals assumed
        // impossible. openraft does the same for a follower's committed vote; this covers the
        // leader itself and a voter whose vote was lost with its disk.
        let (candidate, term) = (rpc.vote.leader_id().node_id, rpc.vote.leader_id().term);
        match self.node.leader.lease().vote(self.node.raft.vote(rpc)).await {
            Some(answer) => self.seal(&answer),
            None => {
                tracing::debug!(candidate, term, "vote refused: a leader lease this node relies on is still running");
                Err(Status::unavailable("vote refused: a leader lease this node relies on is still running"))
            }
        }
    }

    async fn install_snapshot(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = self.open(&request, "InstallSnapshot")?;
        self.speaks_for_itself(&request, "InstallSnapshot", &rpc.vote)?;
        self.not_removed(&request, "InstallSnapshot")?;
        self.seal(&self.node.raft.install_snapshot(rpc).await)
    }

    async fn forward(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let proposal: Proposal = self.open_from_member(&request, "Forward")?;
        self.seal(&self.node.execute_forwarded(proposal).await)
    }

    type ForwardRenewalsStream = Pin<Box<dyn Stream<Item = Result<RaftPayload, Status>> + Send + 'static>>;

    /// Many forwarded renewals: each executed as a single forwarded one would be, all at once,
    /// each answer sent as soon as it is ready (`crate::forward`).
    async fn forward_renewals(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<Self::ForwardRenewalsStream>, Status> {
        let renewals: Vec<Renew> = self.open_from_member(&request, "ForwardRenewals")?;
        if renewals.len() > FORWARDED_RENEWALS_PER_CALL_MAX {
            return Err(Status::invalid_argument(format!(
                "ForwardRenewals: {} renewals in one call, at most {FORWARDED_RENEWALS_PER_CALL_MAX}",
                renewals.len()
            )));
        }
        let runs: Vec<_> = renewals
            .into_iter()
            .map(|renew| {
                let node = self.node.clone();
                async move { node.execute_forwarded(Proposal::Renew(renew)).await }
            })
            .collect();
        let answers = forward::answer_each(runs, self.node.request_timeout).await;
        let service = self.clone();
        let sealed = ReceiverStream::new(answers).map(move |answer| service.payload(&answer));
        Ok(Response::new(Box::pin(sealed)))
    }

    /// Answered in both shapes: `data` the bool older releases read, `detail` this release's.
    async fn node_history(&self, request: Request<RaftPayload>) -> Result<Response<NodeHistoryAnswer>, Status> {
        let node_id: u64 = self.open(&request, "NodeHistory")?;
        let answer = served::answer(&self.node, node_id)
            .await
            .map_err(|e| Status::internal(format!("cannot read this node's log: {e}")))?;
        let sealed = self.seal(&answer.served())?.into_inner();
        let detail = serde_json::to_vec(&answer).map_err(|e| Status::internal(format!("cannot encode reply: {e}")))?;
        Ok(Response::new(NodeHistoryAnswer {
            cluster_id: sealed.cluster_id,
            target_node_id: sealed.target_node_id,
            sender_node_id: sealed.sender_node_id,
            data: sealed.data,
            detail,
        }))
    }

    async fn hold_elections(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let hold_ms: u64 = self.open_from_member(&request, "HoldElections")?;
        // Only the leader this node follows may hold its elections (a transfer); anyone else
        // could keep the cluster leaderless by repeating the call.
        let leader = self.node.raft.metrics().borrow().current_leader;
        // Lifting a hold (0) is always allowed from a member: the leader that set it may no
        // longer be the one followed once the transfer happened.
        if self.checks_identities() && hold_ms > 0 && leader != Some(request.get_ref().sender_node_id) {
            return Err(self.refuse(format!(
                "HoldElections from node {}, which is not the leader this node follows ({leader:?})",
                request.get_ref().sender_node_id
            )));
        }
        tracing::info!(
            leader = request.get_ref().sender_node_id,
            hold_ms,
            "leader asked this node to hold its elections"
        );
        self.node.leader.hold_elections(hold_ms);
        self.seal(&())
    }

    /// A member asks for this node's wall clock (its clock check, `clock_watch.rs`); read as
    /// late as possible, so the reading lies within the caller's round trip. The answer also
    /// names the newest apply rules this release knows (`rules_raise.rs`) and this node's
    /// `election_timeout_max` (the leader lease counts on the smallest: `leader_lease.rs`), and
    /// how much longer its start keeps it out of elections (a leader refuses to transfer
    /// leadership to it meanwhile: it could not campaign).
    async fn clock_probe(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let () = self.open_from_member(&request, "ClockProbe")?;
        let election_timeout_max_ms = self.node.clocks.own_election_max().as_millis() as u64;
        let quiet_for_ms = if self.node.clocks.elections().stands(NoElections::StartQuiet) {
            self.node.leader.lease().refuses_votes_for().as_millis() as u64
        } else {
            0
        };
        let wall_ms = self.node.clock.wall_ms();
        self.seal(&ClockReading { wall_ms, rules: Rules::CURRENT, election_timeout_max_ms, quiet_for_ms })
    }

    /// A voter about to campaign asks whether this node would vote for it (`pre_vote.rs`).
    /// Members only, and a node asks only for itself (the envelope's sender is checked
    /// against its certificate): the answer changes nothing here.
    async fn pre_vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let body: PreVoteRequest = self.open_from_member(&request, "PreVote")?;
        let sender = request.get_ref().sender_node_id;
        if body.candidate != sender {
            return Err(self.refuse(format!("PreVote from node {sender} asks for node {}", body.candidate)));
        }
        self.seal(&pre_vote::answer(&self.node, &body).await)
    }
}
