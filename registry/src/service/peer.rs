//! The internal `RaftTransport` service on the peer port: Raft RPCs into openraft, and
//! proposals forwarded by followers. Payloads for another cluster or node are refused.

use fenceflake_proto::tls::{self, Role};
use fenceflake_proto::v1 as pb;
use fenceflake_proto::v1::RaftPayload;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::metrics::inc;
use crate::node::RegistryNode;
use crate::proposal::Proposal;

#[derive(Debug, Clone)]
pub struct PeerService {
    node: RegistryNode,
}

impl PeerService {
    pub fn new(node: RegistryNode) -> PeerService {
        PeerService { node }
    }

    /// Check the caller and the envelope, and decode the body. Only registry nodes may call
    /// the peer port, and a node speaks only for itself: the sender id in the envelope must be
    /// the node id its certificate names (a stolen worker or operator certificate cannot vote,
    /// replicate, forward or hold elections; a node cannot pose as another).
    fn open<T: DeserializeOwned>(&self, request: &Request<RaftPayload>, rpc: &str) -> Result<T, Status> {
        let caller =
            tls::authorize(request, rpc, &[Role::Node]).inspect_err(|_| inc(&self.node.metrics.refused_calls))?;
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

    fn seal<T: Serialize>(&self, body: &T) -> Result<Response<RaftPayload>, Status> {
        let data = serde_json::to_vec(body).map_err(|e| Status::internal(format!("cannot encode reply: {e}")))?;
        Ok(Response::new(RaftPayload {
            cluster_id: self.node.cluster_id.clone(),
            target_node_id: 0,
            sender_node_id: self.node.node_id,
            data,
        }))
    }
}

#[tonic::async_trait]
impl pb::raft_transport_server::RaftTransport for PeerService {
    async fn append_entries(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = self.open(&request, "AppendEntries")?;
        self.seal(&self.node.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = self.open(&request, "Vote")?;
        self.seal(&self.node.raft.vote(rpc).await)
    }

    async fn install_snapshot(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = self.open(&request, "InstallSnapshot")?;
        self.seal(&self.node.raft.install_snapshot(rpc).await)
    }

    async fn forward(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let proposal: Proposal = self.open(&request, "Forward")?;
        self.seal(&self.node.execute_forwarded(proposal).await)
    }

    async fn node_history(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let node_id: u64 = self.open(&request, "NodeHistory")?;
        let served = self.node.state.read().table.has_served(node_id);
        self.seal(&served)
    }

    async fn hold_elections(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let hold_ms: u64 = self.open(&request, "HoldElections")?;
        tracing::info!(
            leader = request.get_ref().sender_node_id,
            hold_ms,
            "leader asked this node to hold its elections"
        );
        self.node.leader.hold_elections(hold_ms);
        self.seal(&())
    }
}
