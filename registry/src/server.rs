//! Starts a registry node: opens the data dir, starts openraft, serves the client and peer
//! ports (and metrics), bootstraps a new cluster once, and stops cleanly on shutdown.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use fenceflake_proto::channel::BoxChannel;
use fenceflake_proto::serving::Stopped;
use fenceflake_proto::tls::{self, Role, Security};
use fenceflake_proto::v1::raft_transport_server::RaftTransportServer;
use fenceflake_proto::v1::registry_server::RegistryServer;
use openraft::error::{InitializeError, RaftError};
use openraft::ServerState;
use tokio::net::TcpListener;
use tonic::codegen::http;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tonic_reflection::pb::v1::server_reflection_server::{ServerReflection, ServerReflectionServer};

use crate::clock::Clock;
use crate::clock_watch::{self, ClockWatch};
use crate::config::{initial_cluster_mismatches, ConfigError, InitialClusterState, LayoutMismatch, NodeConfig};
use crate::expiry::ExpiryTracker;
use crate::forward::RenewalForwarder;
use crate::leader::{member_roles, Leader, LeaderParts, LeaderSettings};
use crate::leader_lease::LeaderLease;
use crate::lease::ClusterConfig;
use crate::limits::PEER_MESSAGE_BYTES_MAX;
use crate::lost_disk::{self, Start, StartGate};
use crate::metrics::RegistryMetrics;
use crate::node::RegistryNode;
use crate::pre_vote::{self, CampaignGate};
use crate::proposer::Proposer;
use crate::raft::network::{NetworkFactory, PeerClients, PeerConnector};
use crate::raft::types::{NodeId, PeerNode, Raft};
use crate::rules_raise;
use crate::served;
use crate::service::peer::PeerService;
use crate::service::registry::{Listener, RegistryService};
use crate::service::sized::SizedRegistry;
use crate::start_quiet::{self, StartQuiet};
use crate::storage::{self, DataDirIdentity, MemDisk, OpenError};
use crate::transfer::ElectionSwitch;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Storage(#[from] OpenError),
    #[error("raft failed to start: {0}")]
    Raft(String),
    #[error("cannot read or write the election timeout this node stated before, in its data dir {}: {source}", data_dir.display())]
    StatedTiming { data_dir: std::path::PathBuf, source: storage::KvError },
    #[error("raft stopped with a fatal error: {0} (storage failure? check the disk; the supervisor should restart this node)")]
    Fatal(String),
    #[error("node {node_id} starts without Raft state in its data dir {}, but peer {peer_id} remembers node {node_id} serving in this cluster: its disk was lost. Restarted empty under its old id it could help elect a leader that lacks acknowledged leases, so it refuses. Remove it (`fenceflake ctl --registry <a live node's client address> remove-member {node_id}`) and add a replacement under a NEW node id (docs/operations.md, \"Replace a node whose disk is lost\")", data_dir.display())]
    LostDisk { node_id: u64, peer_id: u64, data_dir: std::path::PathBuf },
    #[error("{}: this node's data dir {} holds the ID layout of cluster {cluster_id} (epoch {epoch_ms} ms, {worker_id_bits} worker-ID bits, {sequence_bits} sequence bits), fixed when the cluster was bootstrapped and stated in every grant. Layout flags only choose a new cluster's layout, and IDs of two layouts can collide, so a layout never changes in place and this node refuses to start. Leave the flag out (or give the cluster's value); for another layout, bootstrap a new cluster (docs/operations.md, \"Change the ID layout\")", mismatches.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "), data_dir.display())]
    LayoutMismatch {
        mismatches: Vec<LayoutMismatch>,
        data_dir: std::path::PathBuf,
        cluster_id: String,
        epoch_ms: u64,
        worker_id_bits: u8,
        sequence_bits: u8,
    },
    #[error("{port} port server failed: {source}")]
    Serve { port: &'static str, source: tonic::transport::Error },
    #[error("reflection service: {0}")]
    Reflection(String),
    #[error("this node's certificate is {identity}, but a registry node needs spiffe://<domain>/fenceflake/node/{node_id} (issue one with `fenceflake certs issue --role node --name {node_id}`)")]
    WrongIdentity { identity: String, node_id: u64 },
    #[error("--admin-only needs --admin-addr: operator RPCs would be served nowhere")]
    AdminOnlyWithoutAdmin,
}

/// Where a node serves and keeps its data: sockets and its data dir (the product), or the
/// deterministic simulator's in-memory network and disk.
pub enum NodeIo {
    Sockets(Listeners),
    Simulated(SimulatedIo),
}

/// A simulated node's IO: its disk (crash semantics chosen by the simulator), how it reaches
/// its peers, and where it hands the services it serves to the simulated network.
pub struct SimulatedIo {
    pub disk: MemDisk,
    pub connector: Arc<dyn PeerConnector>,
    pub served: ServedServices,
}

/// The services a simulated node serves, as its network calls them: each is there while the
/// node serves it (the peer service from the start, the client service once the lost-disk
/// guard let the node start) and gone once the node stops.
#[derive(Clone, Default)]
pub struct ServedServices {
    pub peer: Arc<Mutex<Option<BoxChannel>>>,
    pub client: Arc<Mutex<Option<BoxChannel>>>,
}

impl std::fmt::Debug for ServedServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let serving = |slot: &Mutex<Option<BoxChannel>>| ServedServices::get(slot).is_some();
        f.debug_struct("ServedServices")
            .field("peer", &serving(&self.peer))
            .field("client", &serving(&self.client))
            .finish()
    }
}

impl ServedServices {
    fn publish(slot: &Mutex<Option<BoxChannel>>, service: Option<BoxChannel>) {
        *slot.lock().unwrap_or_else(PoisonError::into_inner) = service;
    }

    /// The node stopped: nothing is served any more.
    fn withdraw(&self) {
        ServedServices::publish(&self.peer, None);
        ServedServices::publish(&self.client, None);
    }

    /// The service in `slot`, if it is being served.
    pub fn get(slot: &Mutex<Option<BoxChannel>>) -> Option<BoxChannel> {
        slot.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// A generated gRPC server as a channel the simulated network calls.
fn as_channel<S>(server: S) -> BoxChannel
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    BoxChannel::new(tower::ServiceExt::map_err(server, |never| match never {}))
}

/// The sockets a node serves on, bound by the caller (tests bind port 0).
#[derive(Debug)]
pub struct Listeners {
    pub client: TcpListener,
    pub peer: TcpListener,
    /// The admin listener (`--admin-addr`): the Registry service again, for operators.
    pub admin: Option<TcpListener>,
    pub metrics: Option<TcpListener>,
}

/// One serving port's task, with the port's name.
type ServeTask = (&'static str, tokio::task::JoinHandle<Result<(), tonic::transport::Error>>);

/// A registry node's certificate must be a `node` certificate naming its own id: peers check
/// the sender id of every peer call against it.
fn wrong_identity(security: &Security, node_id: u64) -> Option<ServerError> {
    let identity = security.identity()?;
    (identity.node_id() != Some(node_id)).then(|| ServerError::WrongIdentity { identity: identity.uri(), node_id })
}

/// A node on sockets: what the product runs (the simulator passes `NodeIo::Simulated`).
impl From<Listeners> for NodeIo {
    fn from(listeners: Listeners) -> NodeIo {
        NodeIo::Sockets(listeners)
    }
}

/// The node's background loops, each until the node stops: the clock check, the apply-rules
/// raise, the pre-vote campaigns and the leader lease's rounds.
fn spawn_watchers(node: &RegistryNode, config: &NodeConfig, quiet: StartQuiet, stopped: &Stopped) {
    tokio::spawn(clock_watch::run(node.clone(), stopped.clone()));
    tokio::spawn(start_quiet::end(node.db.clone(), quiet, node.clocks.elections().clone(), stopped.clone()));
    tokio::spawn(rules_raise::run(node.clone(), stopped.clone()));
    if config.timing.pre_vote {
        tokio::spawn(pre_vote::run(node.clone(), stopped.clone()));
    }
    let leader = node.leader.clone();
    let until = stopped.clone();
    tokio::spawn(async move { leader.keep_lease(until).await });
}

/// Run a registry node, on sockets or on the simulator's network and disk, until `shutdown`
/// resolves or Raft stops with a fatal error.
pub async fn run(
    config: NodeConfig,
    io: impl Into<NodeIo>,
    security: Security,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let io = io.into();
    config.validate()?;
    if let Some(error) = wrong_identity(&security, config.node_id) {
        return Err(error);
    }
    if let NodeIo::Sockets(Listeners { admin: None, .. }) = &io {
        if config.admin_only {
            return Err(ServerError::AdminOnlyWithoutAdmin);
        }
    }
    let tracker = ExpiryTracker::new(clock.clone());
    let simulated = match &io {
        NodeIo::Sockets(_) => None,
        NodeIo::Simulated(sim) => Some(sim),
    };
    let (node, blank, quiet) = start_node(&config, clock.clone(), tracker.clone(), security.clone(), simulated).await?;
    let raft = node.raft.clone();
    let (stop, stopped) = fenceflake_proto::serving::stop_signal();
    let gate = StartGate::new(!blank);
    let mut serving = Serving::peer_port(io, &node, &gate, &security, &stopped);
    let mut shutdown = std::pin::pin!(shutdown);
    let fresh = if blank {
        match guard_start(&config, &node, clock.as_ref(), shutdown.as_mut()).await {
            Ok(Some(start)) => Some(start),
            stopped_or_refused => {
                stop.stop();
                serving.withdraw();
                let _ = raft.shutdown().await;
                if let Some((_, task)) = serving.peer_task.take() {
                    let _ = task.await;
                }
                return stopped_or_refused.map(drop);
            }
        }
    } else {
        None
    };
    gate.open();
    let (health_reporter, tasks) =
        serving.client_ports(&node, &config, &security, &stopped).map_err(ServerError::Reflection)?;
    security.follow_files(stopped.clone().wait());
    tokio::spawn(watch_leadership(node.clone(), health_reporter, tracker));
    spawn_watchers(&node, &config, quiet, &stopped);
    bootstrap(&config, &raft, fresh).await?;
    if config.initial_cluster_state == InitialClusterState::New {
        tokio::spawn(compare_initial_cluster(raft.clone(), config.initial_cluster.clone()));
    }
    tokio::spawn(served::announce(node.clone()));
    if config.layout.any() {
        tokio::spawn(compare_layout(node.clone(), config.clone()));
    }
    tracing::info!(
        node_id = config.node_id,
        client_addr = %config.advertise.client_addr,
        peer_addr = %config.advertise.peer_addr,
        "registry node serving"
    );

    let fatal = wait_fatal(raft.clone());
    tokio::pin!(fatal);
    let result = tokio::select! {
        () = shutdown.as_mut() => Ok(()),
        reason = &mut fatal => Err(ServerError::Fatal(reason)),
    };
    tracing::info!(node_id = config.node_id, "registry node stopping");
    stop.stop();
    serving.withdraw();
    let _ = raft.shutdown().await;
    for (port, task) in tasks {
        if let Ok(Err(source)) = task.await {
            return Err(ServerError::Serve { port, source });
        }
    }
    result
}

/// What a node serves on: sockets (and their tasks) or the simulator's service slots.
struct Serving {
    /// The client and admin listeners, until the node may serve them.
    client_sockets: Option<(TcpListener, Option<TcpListener>)>,
    served: Option<ServedServices>,
    peer_task: Option<ServeTask>,
}

impl Serving {
    /// Serve the peer port (and metrics) from the start: the lost-disk guard's question
    /// comes in there while the client ports wait.
    fn peer_port(io: NodeIo, node: &RegistryNode, gate: &StartGate, security: &Security, stopped: &Stopped) -> Serving {
        match io {
            NodeIo::Sockets(Listeners { client, peer, admin, metrics }) => {
                let peer_task = serve_peer(node, peer, gate.clone(), security, stopped);
                if let Some(listener) = metrics {
                    serve_metrics(node, listener, security, stopped);
                }
                Serving { client_sockets: Some((client, admin)), served: None, peer_task: Some(peer_task) }
            }
            NodeIo::Simulated(sim) => {
                ServedServices::publish(&sim.served.peer, Some(as_channel(peer_server(node, gate.clone()))));
                Serving { client_sockets: None, served: Some(sim.served), peer_task: None }
            }
        }
    }

    /// Serve the client (and admin) ports; every serving task, the peer port's included (or
    /// why the reflection service cannot be served).
    fn client_ports(
        &mut self,
        node: &RegistryNode,
        config: &NodeConfig,
        security: &Security,
        stopped: &Stopped,
    ) -> Result<(HealthReporter, Vec<ServeTask>), String> {
        let (health_reporter, services) = client_services(config, security)?;
        let mut tasks = match (self.client_sockets.take(), &self.served) {
            (Some((client, admin)), _) => serve_ports(node, client, admin, services, stopped),
            (None, served) => {
                let service =
                    RegistryService::new(node.clone(), Listener::Client { admin_only: false }, stopped.clone());
                let registry = RegistryServer::new(service);
                served.iter().for_each(|s| ServedServices::publish(&s.client, Some(as_channel(registry.clone()))));
                Vec::new()
            }
        };
        tasks.extend(self.peer_task.take());
        Ok((health_reporter, tasks))
    }

    /// The node stopped: the simulator's network no longer reaches it.
    fn withdraw(&self) {
        self.served.iter().for_each(ServedServices::withdraw);
    }
}

/// For a node without Raft state: how the lost-disk guard lets it start, raced against
/// shutdown (`Ok(None)`: stopped while still asking).
async fn guard_start(
    config: &NodeConfig,
    node: &RegistryNode,
    clock: &dyn Clock,
    shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<Option<Start>, ServerError> {
    tokio::select! {
        () = shutdown => Ok(None),
        settled = lost_disk::settle(config, &node.peers, clock) => match settled {
            Ok(start) => Ok(Some(start)),
            Err(peer_id) => Err(ServerError::LostDisk { node_id: config.node_id, peer_id, data_dir: config.data_dir.clone() }),
        },
    }
}

/// The peer clients and the opened data dir of a node: sockets and sled, or the simulator's
/// network and memory disk.
// `OpenError` carries openraft's `StorageError` (storage/mod.rs says why it is not boxed).
#[allow(clippy::result_large_err)]
fn open_io(
    config: &NodeConfig,
    clock: &Arc<dyn Clock>,
    tracker: &ExpiryTracker,
    security: Security,
    simulated: Option<&SimulatedIo>,
) -> Result<(PeerClients, storage::OpenedStorage), OpenError> {
    let identity = DataDirIdentity { node_id: config.node_id, cluster_id: config.cluster_id.clone() };
    let (cluster_id, node_id) = (config.cluster_id.clone(), config.node_id);
    Ok(match simulated {
        None => (
            PeerClients::new(cluster_id, node_id, clock.clone(), security),
            storage::open(&config.data_dir, &identity, tracker.clone(), config.cache_mib)?,
        ),
        Some(sim) => (
            PeerClients::with_connector(cluster_id, node_id, clock.clone(), security, sim.connector.clone()),
            storage::open_memory(&sim.disk, &identity, tracker.clone())?,
        ),
    })
}

/// Open the data dir, start Raft, and assemble the node; with whether the data dir held no
/// Raft state (then the lost-disk guard decides before the node takes part in anything), and
/// how long it refuses votes after its start (`start_quiet.rs`).
async fn start_node(
    config: &NodeConfig,
    clock: Arc<dyn Clock>,
    tracker: ExpiryTracker,
    security: Security,
    simulated: Option<&SimulatedIo>,
) -> Result<(RegistryNode, bool, StartQuiet), ServerError> {
    let raft_config = Arc::new(config.raft_config()?);
    let (peers, mut opened) = open_io(config, &clock, &tracker, security, simulated)?;
    let blank = !served::holds_raft_state(&mut opened)
        .await
        .map_err(|e| ServerError::Raft(format!("cannot read the Raft state in the data dir: {e}")))?;
    let db = opened.log_store.db().clone();
    let state = opened.state_machine.shared();
    if let Some(refusal) = layout_refusal(config, state.read().table.config()) {
        return Err(refusal);
    }
    if !blank {
        tracing::info!(data_dir = %config.data_dir.display(), "found existing state; rejoining with it");
    }
    let raft = Raft::new(
        config.node_id,
        raft_config,
        NetworkFactory::new(peers.clone()),
        opened.log_store,
        opened.state_machine,
    )
    .await
    .map_err(|e| ServerError::Raft(e.to_string()))?;
    let elections = ElectionSwitch::new(raft.clone(), config.timing.pre_vote);
    start_quiet::hold_elections(&elections);
    let clocks = ClockWatch::new(
        config.node_id,
        clock.clone(),
        config.max_clock_offset,
        config.clock_check,
        elections,
        peers.clone(),
    );
    let proposer = Proposer::start(raft.clone(), state.clone(), Arc::new(clocks.clone()), config.request_timeout);
    let settings = LeaderSettings {
        node_id: config.node_id,
        cluster_config: config.bootstrap_config(),
        leader_lease: std::time::Duration::from_millis(config.timing.election_max_ms),
        request_timeout: config.request_timeout,
        renew_window: config.renew_window,
        lease_round_every: std::time::Duration::from_millis(config.timing.heartbeat_ms),
    };
    let election_max = std::time::Duration::from_millis(config.timing.election_max_ms);
    let learned_within = start_quiet::outlasting(clock_watch::STATEMENT_TRUSTED_FOR, config.lease_drift_percent);
    let quiet = start_quiet::begin(&db, !blank, election_max, learned_within)
        .await
        .map_err(|source| ServerError::StatedTiming { data_dir: config.data_dir.clone(), source })?;
    let lease = LeaderLease::new(clock.clone(), election_max, config.lease_drift_percent, quiet.refuse_for);
    let metrics = Arc::new(RegistryMetrics::default());
    let parts = LeaderParts {
        raft: raft.clone(),
        state: state.clone(),
        tracker: tracker.clone(),
        proposer,
        clocks: clocks.clone(),
        peers: peers.clone(),
        lease,
        metrics: metrics.clone(),
    };
    let leader = Leader::new(parts, settings);
    let renewals = RenewalForwarder::new(peers.clone(), clock.clone(), metrics.clone());
    let node = RegistryNode {
        raft: raft.clone(),
        state,
        leader,
        peers,
        metrics,
        renewals,
        node_id: config.node_id,
        cluster_id: config.cluster_id.clone(),
        request_timeout: config.request_timeout,
        clock,
        clocks,
        db,
        campaign_gate: CampaignGate::default(),
    };
    Ok((node, blank, quiet))
}

/// The refusal of a node whose layout flags disagree with the layout its data dir holds
/// (`None` when no config is stored yet, or every flag given agrees).
fn layout_refusal(config: &NodeConfig, stored: Option<&ClusterConfig>) -> Option<ServerError> {
    let stored = stored?;
    let mismatches = config.layout.mismatches(stored);
    (!mismatches.is_empty()).then(|| ServerError::LayoutMismatch {
        mismatches,
        data_dir: config.data_dir.clone(),
        cluster_id: config.cluster_id.clone(),
        epoch_ms: stored.epoch_ms,
        worker_id_bits: stored.worker_id_bits,
        sequence_bits: stored.sequence_bits,
    })
}

/// Once this node applies a cluster config (committed by another node's bootstrap, or by a
/// restore), say loudly if its layout flags disagree: they changed nothing, and the node's
/// next start refuses until they agree.
async fn compare_layout(node: RegistryNode, config: NodeConfig) {
    let mut metrics = node.raft.metrics();
    let mut compared: Option<ClusterConfig> = None;
    loop {
        let current = node.state.read().table.config().cloned();
        if current.is_some() && current != compared {
            if let Some(ServerError::LayoutMismatch { mismatches, .. }) = layout_refusal(&config, current.as_ref()) {
                let mismatches: Vec<String> = mismatches.iter().map(ToString::to_string).collect();
                tracing::error!(
                    "{}: the cluster's ID layout is fixed and these flags change nothing; this node serves the cluster's layout but will refuse to start with them. Leave them out or give the cluster's values (docs/operations.md, \"Change the ID layout\")",
                    mismatches.join("; ")
                );
            }
            compared = current;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// The health reporter, and what the client and admin ports serve beside the Registry
/// service (or why reflection cannot be served).
fn client_services(
    config: &NodeConfig,
    security: &Security,
) -> Result<(HealthReporter, Services<impl Health, impl ServerReflection>), String> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(fenceflake_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| e.to_string())?;
    Ok((health_reporter, Services { health, reflection, security: security.clone(), admin_only: config.admin_only }))
}

/// What the client and admin ports serve beside the Registry service.
struct Services<H, R> {
    health: HealthServer<H>,
    reflection: ServerReflectionServer<R>,
    security: Security,
    admin_only: bool,
}

/// Serve the client port (Registry, health, reflection) and the admin port (the Registry
/// service again) until `stopped` fires. Returns the port
/// tasks, whose errors the caller reports.
fn serve_ports<H: Health, R: ServerReflection>(
    node: &RegistryNode,
    client: TcpListener,
    admin: Option<TcpListener>,
    services: Services<H, R>,
    stopped: &Stopped,
) -> Vec<ServeTask> {
    let Services { health, reflection, security, admin_only } = services;
    // Room for a backup on import (that RPC only) and export: `SizedRegistry`.
    let registry = |listener| SizedRegistry::new(RegistryService::new(node.clone(), listener, stopped.clone()));
    let client_server = tonic::transport::Server::builder()
        .layer(tls::RefuseStrangersLayer::default())
        .add_service(health.clone())
        .add_service(reflection)
        .add_service(registry(Listener::Client { admin_only }))
        .serve_with_incoming_shutdown(tls::incoming(client, security.clone(), "client"), stopped.clone().wait());
    let mut tasks = vec![("client", tokio::spawn(client_server))];
    if let Some(listener) = admin {
        let admin_server = tonic::transport::Server::builder()
            .layer(tls::RefuseStrangersLayer::default())
            .add_service(health)
            .add_service(registry(Listener::Admin))
            .serve_with_incoming_shutdown(tls::incoming(listener, security.clone(), "admin"), stopped.clone().wait());
        tasks.push(("admin", tokio::spawn(admin_server)));
    }
    tasks
}

/// Serve metrics (and `/healthz`) until `stopped` fires: from the start, so that a node
/// whose lost-disk guard is still asking counts as alive (it is not serving, and says why).
fn serve_metrics(node: &RegistryNode, listener: TcpListener, security: &Security, stopped: &Stopped) {
    let (scraped, security) = (node.clone(), security.clone());
    let render = move || {
        let (node, security) = (scraped.clone(), security.clone());
        async move {
            let mut text = node.metrics.render(&node.gauges().await);
            security.render_metrics(&mut text, "fenceflake_registry");
            text
        }
    };
    tokio::spawn(fenceflake_proto::metrics::serve_http(listener, render, stopped.clone().wait()));
}

/// Serve the peer port until `stopped` fires: first (with `gate` closed) only to answer the
/// node-history question, once the node may start everything.
fn serve_peer(
    node: &RegistryNode,
    peer: TcpListener,
    gate: StartGate,
    security: &Security,
    stopped: &Stopped,
) -> ServeTask {
    let peer_server = tonic::transport::Server::builder()
        // Nodes only, before the body: a peer message may be as large as a restore's entry.
        .layer(tls::RefuseStrangersLayer::only(Role::Node))
        .http2_keepalive_interval(Some(std::time::Duration::from_millis(500)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(1)))
        .add_service(peer_server(node, gate))
        .serve_with_incoming_shutdown(tls::incoming(peer, security.clone(), "peer"), stopped.clone().wait());
    ("peer", tokio::spawn(peer_server))
}

/// The peer service of `node`, behind `gate`.
fn peer_server(node: &RegistryNode, gate: StartGate) -> RaftTransportServer<PeerService> {
    RaftTransportServer::new(PeerService::new(node.clone(), gate))
        .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX)
}

/// Once a membership is known, say loudly where this node's `--initial-cluster` disagrees
/// with it (a typo on the bootstrapping node is committed; on the others it is ignored).
async fn compare_initial_cluster(raft: Raft, flags: BTreeMap<NodeId, PeerNode>) {
    let mut metrics = raft.metrics();
    loop {
        let members = member_roles(&raft);
        if !members.is_empty() {
            let membership = members.into_iter().map(|(id, (node, _))| (id, node)).collect();
            for mismatch in initial_cluster_mismatches(&flags, &membership) {
                tracing::error!("{mismatch}");
            }
            return;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Initialize a new cluster on its lowest-numbered node, exactly once: only when this node
/// found Raft state (`fresh` is `None`: as before the guard existed, `initialize` refuses a
/// node with a log) or the lost-disk guard decided on a new cluster; never when it decided
/// this node joins one that exists.
async fn bootstrap(config: &NodeConfig, raft: &Raft, fresh: Option<Start>) -> Result<(), ServerError> {
    let initialized = raft.is_initialized().await.map_err(|e| ServerError::Raft(e.to_string()))?;
    if initialized {
        return Ok(());
    }
    if fresh == Some(Start::Join) {
        tracing::info!(
            node_id = config.node_id,
            "joining the cluster the answering nodes hold: waiting for its leader to contact us"
        );
        return Ok(());
    }
    match config.initial_cluster_state {
        InitialClusterState::Existing => {
            tracing::info!(
                node_id = config.node_id,
                "empty data dir, joining an existing cluster: waiting to be added (`fenceflake ctl add-member`)"
            );
            Ok(())
        }
        InitialClusterState::New => {
            let first = config.initial_cluster.keys().next().copied();
            if first != Some(config.node_id) {
                tracing::info!(node_id = config.node_id, bootstrapper = ?first, "new cluster: waiting for the bootstrapping node to contact us");
                return Ok(());
            }
            match raft.initialize(config.initial_cluster.clone()).await {
                Ok(()) => {
                    tracing::info!(members = ?config.initial_cluster.keys().collect::<Vec<_>>(), "bootstrapped a new cluster");
                    Ok(())
                }
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
                Err(e) => Err(ServerError::Raft(format!("cannot initialize the cluster: {e}"))),
            }
        }
    }
}

/// Keep health and the expiry tracker in step with this node's role, and log changes.
async fn watch_leadership(node: RegistryNode, health: tonic_health::server::HealthReporter, tracker: ExpiryTracker) {
    let mut metrics = node.raft.server_metrics();
    let mut last: Option<(ServerState, Option<u64>)> = None;
    loop {
        let (state, leader, term) = {
            let m = metrics.borrow_and_update();
            (m.state, m.current_leader, m.vote.leader_id().term)
        };
        if last != Some((state, leader)) {
            match (state, leader) {
                (ServerState::Leader, _) => {
                    tracing::info!(node_id = node.node_id, term, "this node is the leader");
                    let leader = node.leader.clone();
                    tokio::spawn(async move { leader.warm_up().await });
                }
                (_, Some(leader)) => tracing::info!(node_id = node.node_id, term, leader, "following leader"),
                (_, None) => tracing::warn!(
                    node_id = node.node_id,
                    term,
                    "no leader known (election in progress or quorum lost)"
                ),
            }
            if state != ServerState::Leader {
                tracker.step_down();
                node.leader.lease().give_up();
            }
            let status = if leader.is_some() { ServingStatus::Serving } else { ServingStatus::NotServing };
            health.set_service_status("", status).await;
            health.set_service_status("fenceflake.v1.Registry", status).await;
            last = Some((state, leader));
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Resolves with the reason once openraft reports a fatal error (storage failure).
async fn wait_fatal(raft: Raft) -> String {
    let mut metrics = raft.metrics();
    loop {
        if let Err(fatal) = &metrics.borrow_and_update().running_state {
            return fatal.to_string();
        }
        if metrics.changed().await.is_err() {
            return "raft metrics channel closed".to_string();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::config::tests::node;
    use crate::config::LayoutFlags;

    /// Goal: issue 9 — a node whose data dir holds a layout refuses to start when a layout
    /// flag given disagrees, naming the flag, both values, the data dir and what to do; a
    /// fresh data dir (no config yet), no flags, or agreeing flags start.
    #[test]
    fn a_disagreeing_layout_flag_refuses_to_start_naming_both_values() {
        let stored = ClusterConfig {
            epoch_ms: 1_704_067_200_000,
            worker_id_bits: 10,
            sequence_bits: 12,
            ttl_ms_max: 60_000,
            cool_down_ms: 1_000,
        };
        let eleven = node(LayoutFlags { worker_id_bits: Some(11), ..LayoutFlags::default() });
        let message = layout_refusal(&eleven, Some(&stored)).unwrap().to_string();
        for part in [
            "--worker-id-bits 11 was given, but the cluster's is 10",
            "data dir /tmp/x",
            "cluster c",
            "12 sequence bits",
            "Leave the flag out",
            "Change the ID layout",
        ] {
            assert!(message.contains(part), "{part:?} missing: {message}");
        }
        assert!(layout_refusal(&eleven, None).is_none(), "a new data dir takes the flags");
        assert!(layout_refusal(&node(LayoutFlags::default()), Some(&stored)).is_none());
        let agreeing =
            LayoutFlags { epoch_ms: Some(1_704_067_200_000), worker_id_bits: Some(10), sequence_bits: Some(12) };
        assert!(layout_refusal(&node(agreeing), Some(&stored)).is_none());
    }
}
