//! Client side of the peer port: openraft's `RaftNetwork` over gRPC, plus the cached channels
//! that followers also use to forward client proposals to the leader.
//!
//! Every payload names the cluster and the target node; a peer that is someone else (another
//! cluster reusing the port, a replaced node) refuses it, so it can never vote in our elections.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fenceflake_proto::channel::{self, BoxChannel};
use fenceflake_proto::tls::{self, Security};
use fenceflake_proto::v1::raft_transport_client::RaftTransportClient;
use fenceflake_proto::v1::{NodeHistoryAnswer, RaftPayload};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Endpoint;

use super::types::{NodeId, PeerNode, TypeConfig};
use crate::clock::{Clock, MonoTime};
use crate::limits::{APPEND_BODY_BYTES_BUDGET, PEER_MESSAGE_BYTES_MAX};

/// How long a connection attempt to a peer may take. A dead peer behind a DROP rule would
/// otherwise hold a replication stream for the OS connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(100);
/// HTTP/2 keepalive: a half-dead connection to a partitioned or restarted peer is noticed fast.
const KEEPALIVE_INTERVAL: Duration = Duration::from_millis(500);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_millis(1000);
/// At most one warning per peer in this interval for repeated call failures.
const PEER_WARN_EVERY: Duration = Duration::from_secs(10);

/// Which peer RPC a payload is for.
#[derive(Debug, Clone, Copy)]
pub enum PeerRpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
    Forward,
    NodeHistory,
    HoldElections,
    ClockProbe,
    PreVote,
}

/// Why a peer call failed, before openraft's error types are involved.
#[derive(Debug, thiserror::Error)]
pub enum PeerCallError {
    #[error("peer {addr} unreachable: {status}")]
    Unreachable { addr: String, status: tonic::Status },
    #[error("peer {addr} failed: {status}")]
    Failed { addr: String, status: tonic::Status },
    #[error("peer {addr} did not answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("bad peer address {addr:?}: {why}")]
    BadAddress { addr: String, why: String },
    /// The node at `addr` is not the one the membership names for it (a typo in
    /// `--initial-cluster`, or an address reused by another node).
    #[error("peer address {addr} answers as node {found}, but the membership says node {expected} is there; fix the member's address (ctl remove-member / add-member) or that node's flags")]
    WrongNode { addr: String, expected: NodeId, found: NodeId },
    #[error("peer payload does not encode/decode: {0}")]
    Codec(#[from] serde_json::Error),
}

/// How a node reaches its peers' peer ports: real gRPC channels, or (the simulator) its
/// in-memory network.
pub trait PeerConnector: Send + Sync + std::fmt::Debug + 'static {
    /// A lazily connected channel to node `target` at `addr`.
    fn connect(&self, target: NodeId, addr: &str) -> Result<BoxChannel, PeerCallError>;
}

/// gRPC over TCP: mutual TLS to peers (servers must present the `node` certificate of the
/// target), or plaintext.
#[derive(Debug)]
pub struct GrpcConnector {
    security: Security,
}

impl PeerConnector for GrpcConnector {
    fn connect(&self, target: NodeId, addr: &str) -> Result<BoxChannel, PeerCallError> {
        let bad = |why: String| PeerCallError::BadAddress { addr: addr.to_string(), why };
        let endpoint = Endpoint::from_shared(tls::endpoint_url(addr))
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        Ok(channel::boxed(tls::connect_lazy_to_node(endpoint, &self.security, target)))
    }
}

/// Cached channels to peers, by node id and peer address. Channels are lazy and reconnect
/// by themselves, so one per peer is enough; creating one per call floods sockets.
/// Also remembers when each peer last answered (the leader's per-member reachability).
#[derive(Debug, Clone)]
pub struct PeerClients {
    cluster_id: String,
    my_id: NodeId,
    clock: Arc<dyn Clock>,
    /// Mutual TLS to peers (servers must present a `node` certificate), or plaintext.
    security: Security,
    connector: Arc<dyn PeerConnector>,
    channels: Arc<Mutex<HashMap<(NodeId, String), BoxChannel>>>,
    answered_at: Arc<Mutex<HashMap<NodeId, MonoTime>>>,
    warned_at: Arc<Mutex<HashMap<NodeId, MonoTime>>>,
}

impl PeerClients {
    pub fn new(cluster_id: String, my_id: NodeId, clock: Arc<dyn Clock>, security: Security) -> PeerClients {
        let connector = Arc::new(GrpcConnector { security: security.clone() });
        PeerClients::with_connector(cluster_id, my_id, clock, security, connector)
    }

    /// Peer clients that reach peers through `connector` (the simulator's network).
    pub fn with_connector(
        cluster_id: String,
        my_id: NodeId,
        clock: Arc<dyn Clock>,
        security: Security,
        connector: Arc<dyn PeerConnector>,
    ) -> PeerClients {
        PeerClients {
            cluster_id,
            my_id,
            clock,
            security,
            connector,
            channels: Arc::default(),
            answered_at: Arc::default(),
            warned_at: Arc::default(),
        }
    }

    /// How this node talks to its peers (and so whether its peers are authenticated).
    pub fn security(&self) -> &Security {
        &self.security
    }

    /// When node `node_id` last answered a peer call of this node (None: never).
    pub fn answered_at(&self, node_id: NodeId) -> Option<MonoTime> {
        self.answered_at.lock().unwrap_or_else(PoisonError::into_inner).get(&node_id).copied()
    }

    /// How long ago node `node_id` last answered a peer call of this node (None: never).
    pub fn since_answer(&self, node_id: NodeId) -> Option<Duration> {
        let at = *self.answered_at.lock().unwrap_or_else(PoisonError::into_inner).get(&node_id)?;
        Some(self.clock.mono().since(at))
    }

    /// The channel to node `target` at `addr` (keyed by both: under TLS it accepts only that
    /// node's certificate).
    fn channel(&self, target: NodeId, addr: &str) -> Result<BoxChannel, PeerCallError> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (target, addr.to_string());
        if let Some(channel) = channels.get(&key) {
            return Ok(channel.clone());
        }
        let channel = self.connector.connect(target, addr)?;
        channels.insert(key, channel.clone());
        Ok(channel)
    }

    /// Log a failed call to `target` at most once per [`PEER_WARN_EVERY`]: a misaddressed or
    /// dead member fails every replication attempt, and one line per attempt drowns the log.
    fn warn_limited(&self, target: NodeId, error: &PeerCallError) {
        let now = self.clock.mono();
        let mut warned = self.warned_at.lock().unwrap_or_else(PoisonError::into_inner);
        if warned.get(&target).is_none_or(|at| now.since(*at) >= PEER_WARN_EVERY) {
            warned.insert(target, now);
            tracing::warn!(target_node = target, error = %error, "peer call failed (repeats are logged at most every {PEER_WARN_EVERY:?})");
        }
    }

    /// Send `request` to node `target` at `addr` and decode its answer, within `timeout`.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: NodeId,
        addr: &str,
        rpc: PeerRpc,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, PeerCallError> {
        self.call_encoded(target, addr, rpc, serde_json::to_vec(request)?, timeout).await
    }

    /// Like [`PeerClients::call`], with the request already encoded.
    async fn call_encoded<Resp: DeserializeOwned>(
        &self,
        target: NodeId,
        addr: &str,
        rpc: PeerRpc,
        data: Vec<u8>,
        timeout: Duration,
    ) -> Result<Resp, PeerCallError> {
        let mut client = self.client(target, addr)?;
        let request = self.request(target, data, timeout);
        let call = async {
            match rpc {
                PeerRpc::AppendEntries => client.append_entries(request).await,
                PeerRpc::Vote => client.vote(request).await,
                PeerRpc::InstallSnapshot => client.install_snapshot(request).await,
                PeerRpc::Forward => client.forward(request).await,
                PeerRpc::NodeHistory => client.node_history(request).await.map(|r| r.map(history_payload)),
                PeerRpc::HoldElections => client.hold_elections(request).await,
                PeerRpc::ClockProbe => client.clock_probe(request).await,
                PeerRpc::PreVote => client.pre_vote(request).await,
            }
        };
        let response = match tokio::time::timeout(timeout, call).await {
            Err(_) => return Err(PeerCallError::Timeout { addr: addr.to_string(), timeout }),
            Ok(Err(status)) => return Err(PeerCallError::of_status(addr, status)),
            Ok(Ok(response)) => response.into_inner(),
        };
        self.answered(target, addr, response)
    }

    /// Open `ForwardRenewals` to node `target` at `addr` with `request` (the renewals): the
    /// leader's answers, as they come. `timeout` bounds the opening, and each caller bounds
    /// its reading.
    pub async fn forward_renewals<Req: Serialize, Item: DeserializeOwned>(
        &self,
        target: NodeId,
        addr: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<PeerAnswers<Item>, PeerCallError> {
        let mut client = self.client(target, addr)?;
        let request = self.request(target, serde_json::to_vec(request)?, timeout);
        let answers = match tokio::time::timeout(timeout, client.forward_renewals(request)).await {
            Err(_) => return Err(PeerCallError::Timeout { addr: addr.to_string(), timeout }),
            Ok(Err(status)) => return Err(PeerCallError::of_status(addr, status)),
            Ok(Ok(response)) => response.into_inner(),
        };
        Ok(PeerAnswers { peers: self.clone(), target, addr: addr.to_string(), answers, item: PhantomData })
    }

    fn client(&self, target: NodeId, addr: &str) -> Result<RaftTransportClient<BoxChannel>, PeerCallError> {
        Ok(RaftTransportClient::new(self.channel(target, addr)?)
            .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX))
    }

    /// The envelope of a call to `target`: this cluster, the target, this node as sender.
    fn request(&self, target: NodeId, data: Vec<u8>, timeout: Duration) -> tonic::Request<RaftPayload> {
        let payload = RaftPayload {
            cluster_id: self.cluster_id.clone(),
            target_node_id: target,
            sender_node_id: self.my_id,
            data,
        };
        let mut request = tonic::Request::new(payload);
        request.set_timeout(timeout);
        request
    }

    /// The body of `target`'s answer, once it is shown to come from `target`.
    fn answered<Resp: DeserializeOwned>(
        &self,
        target: NodeId,
        addr: &str,
        response: RaftPayload,
    ) -> Result<Resp, PeerCallError> {
        // The reply names its sender: a different node at this address must not count as
        // `target` (nor as having acknowledged anything).
        if response.sender_node_id != target {
            return Err(PeerCallError::WrongNode {
                addr: addr.to_string(),
                expected: target,
                found: response.sender_node_id,
            });
        }
        self.answered_at.lock().unwrap_or_else(PoisonError::into_inner).insert(target, self.clock.mono());
        Ok(serde_json::from_slice(&response.data)?)
    }
}

/// The answers of a server-streaming peer call, each checked to come from the node called.
pub struct PeerAnswers<Item> {
    peers: PeerClients,
    target: NodeId,
    addr: String,
    answers: tonic::Streaming<RaftPayload>,
    item: PhantomData<fn() -> Item>,
}

impl<Item: DeserializeOwned> PeerAnswers<Item> {
    /// The next answer; `None` once the peer ended the stream.
    pub async fn next(&mut self) -> Option<Result<Item, PeerCallError>> {
        match self.answers.message().await {
            Ok(None) => None,
            Err(status) => Some(Err(PeerCallError::of_status(&self.addr, status))),
            Ok(Some(payload)) => Some(self.peers.answered(self.target, &self.addr, payload)),
        }
    }
}

impl PeerCallError {
    /// A peer call's error status: `UNAVAILABLE` is a peer that cannot be reached.
    fn of_status(addr: &str, status: tonic::Status) -> PeerCallError {
        let addr = addr.to_string();
        if status.code() == tonic::Code::Unavailable {
            PeerCallError::Unreachable { addr, status }
        } else {
            PeerCallError::Failed { addr, status }
        }
    }
}

/// A `NodeHistory` answer as a payload whose body is the answer's `detail` (this release),
/// or the bare bool `data` of an older release, which has no `detail`.
fn history_payload(answer: NodeHistoryAnswer) -> RaftPayload {
    let data = if answer.detail.is_empty() { answer.data } else { answer.detail };
    RaftPayload {
        cluster_id: answer.cluster_id,
        target_node_id: answer.target_node_id,
        sender_node_id: answer.sender_node_id,
        data,
    }
}

/// openraft's factory: one `PeerNetwork` per replication stream, vote or read round.
#[derive(Debug, Clone)]
pub struct NetworkFactory {
    clients: PeerClients,
}

impl NetworkFactory {
    pub fn new(clients: PeerClients) -> NetworkFactory {
        NetworkFactory { clients }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> PeerNetwork {
        PeerNetwork { clients: self.clients.clone(), target, addr: node.peer_addr.clone() }
    }
}

/// The connection to one peer, as openraft sees it.
#[derive(Debug)]
pub struct PeerNetwork {
    clients: PeerClients,
    target: NodeId,
    addr: String,
}

impl PeerNetwork {
    async fn send<Req, Resp, E>(
        &self,
        rpc: PeerRpc,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, PeerNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let data = serde_json::to_vec(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.send_encoded(rpc, data, option).await
    }

    async fn send_encoded<Resp, E>(
        &self,
        rpc: PeerRpc,
        data: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, PeerNode, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let call = self.clients.call_encoded(self.target, &self.addr, rpc, data, option.hard_ttl());
        let answer: Result<Resp, RaftError<NodeId, E>> = call.await.map_err(|e| {
            if backs_off(&e) {
                self.clients.warn_limited(self.target, &e);
                RPCError::Unreachable(Unreachable::new(&e))
            } else {
                RPCError::Network(NetworkError::new(&e))
            }
        })?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// Whether openraft should back off from this peer (only `Unreachable` makes it): a refused
/// connection is the typical dead peer, and a node that is not the one the membership names
/// or that refuses us (another cluster, another id) will not change its mind; retrying those
/// at full speed floods the log and burns a core. A slow answer (a timeout, a cancelled
/// call) is not a dead peer: backing off would pause heartbeats to a follower that is merely
/// busy, and its election timer would then depose a healthy leader (openraft 0.9 has no
/// pre-vote).
fn backs_off(error: &PeerCallError) -> bool {
    match error {
        PeerCallError::Unreachable { .. } | PeerCallError::BadAddress { .. } | PeerCallError::WrongNode { .. } => true,
        PeerCallError::Failed { status, .. } => status.code() == tonic::Code::FailedPrecondition,
        PeerCallError::Timeout { .. } | PeerCallError::Codec(_) => false,
    }
}

/// How many of `entries` entries that encode to `bytes` fit [`APPEND_BODY_BYTES_BUDGET`], if they
/// do not all fit (at least 1: the proposer keeps every single entry below the limit).
fn entries_that_fit(entries: usize, bytes: usize) -> Option<u64> {
    (bytes > APPEND_BODY_BYTES_BUDGET && entries > 1).then(|| {
        let fitting = (entries as u128 * APPEND_BODY_BYTES_BUDGET as u128 / bytes as u128) as u64;
        fitting.clamp(1, entries as u64 - 1)
    })
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, PeerNode, RaftError<NodeId>>> {
        let data = serde_json::to_vec(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        // Too many large entries for one message: openraft retries at once with fewer,
        // instead of the peer refusing the message and replication stalling.
        if let Some(hint) = entries_that_fit(rpc.entries.len(), data.len()) {
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(hint)));
        }
        self.send_encoded(PeerRpc::AppendEntries, data, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, PeerNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.send(PeerRpc::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, PeerNode, RaftError<NodeId>>> {
        self.send(PeerRpc::Vote, &rpc, &option).await
    }

    /// 25 → 50 → 100 → 200 ms, then 200 ms: openraft's 500 ms default starves a restarted
    /// follower of heartbeats past its election timeout, and its term bump then deposes a
    /// healthy leader (0.9 has no Pre-Vote).
    fn backoff(&self) -> Backoff {
        Backoff::new([25, 50, 100].into_iter().chain(std::iter::repeat(200)).map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: only dead or wrong peers make openraft back off; a slow one (timeout, cancelled
    /// call) is retried at once, so heartbeats to a busy follower do not pause.
    #[test]
    fn only_dead_or_wrong_peers_are_backed_off_from() {
        let addr = || "127.0.0.1:1".to_string();
        let failed = |status| PeerCallError::Failed { addr: addr(), status };
        assert!(backs_off(&PeerCallError::Unreachable { addr: addr(), status: tonic::Status::unavailable("refused") }));
        assert!(backs_off(&PeerCallError::WrongNode { addr: addr(), expected: 2, found: 3 }));
        assert!(backs_off(&failed(tonic::Status::failed_precondition("cluster id mismatch"))));
        assert!(!backs_off(&failed(tonic::Status::cancelled("Timeout expired"))));
        assert!(!backs_off(&failed(tonic::Status::deadline_exceeded("slow"))));
        assert!(!backs_off(&PeerCallError::Timeout { addr: addr(), timeout: Duration::from_millis(50) }));
    }

    /// Goal: an AppendEntries over the peer limit asks openraft for fewer entries (at least
    /// one, fewer than it had), and one that fits goes as it is.
    #[test]
    fn oversized_appends_ask_for_fewer_entries() {
        assert_eq!(entries_that_fit(300, 1024), None);
        assert_eq!(entries_that_fit(1, APPEND_BODY_BYTES_BUDGET * 2), None, "one entry always goes");
        assert_eq!(entries_that_fit(4, APPEND_BODY_BYTES_BUDGET * 2), Some(2));
        assert_eq!(entries_that_fit(2, APPEND_BODY_BYTES_BUDGET * 10), Some(1));
        assert_eq!(entries_that_fit(300, APPEND_BODY_BYTES_BUDGET + 1), Some(299));
    }
}
