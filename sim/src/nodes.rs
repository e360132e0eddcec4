//! Simulated registry nodes: the real `fenceflake_registry::server::run` (openraft, the
//! lease table and its apply logic, the leader's decisions, the proposer, the clock check,
//! the lost-disk guard, the gRPC services) over the simulated network and an in-memory disk
//! whose crash semantics the simulation chooses.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fenceflake_proto::channel::BoxChannel;
use fenceflake_proto::tls::Security;
use fenceflake_registry::config::{ClockCheck, InitialClusterState, LayoutFlags, NodeConfig, RaftTiming};
use fenceflake_registry::raft::network::{PeerCallError, PeerConnector};
use fenceflake_registry::raft::types::{NodeId, PeerNode};
use fenceflake_registry::server::{self, NodeIo, ServedServices, SimulatedIo};
use fenceflake_registry::storage::MemDisk;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::clock::{MonoStall, ProcessClock, WallError};
use crate::net::{Net, Port};
use crate::recorder::Recorder;

/// The cluster the run bootstraps.
pub const CLUSTER_ID: &str = "sim";
/// The fresh cluster a backup is restored into after every disk was lost (`restore.rs`).
pub const RESTORED_CLUSTER_ID: &str = "sim-restored";

/// The cluster's bounds on leases, committed by its first leader. The largest TTL anything in
/// the run asks for (the registry workload's 5 s): a restore embargoes every worker ID for
/// this plus the cool-down, and a larger bound would keep the workers parked for most of a
/// run after one.
pub const TTL_MS_MAX: u64 = 5_000;
pub const COOL_DOWN_MS: u64 = 500;
/// The registry's `--renew-window`: longer than the largest TTL plus the cool-down, as
/// production's 30 s is for its 10 s leases, so that a lease can lapse inside its window and
/// the registry client's race at expiry meets a memory renewal (the renewal reservation's
/// self-test); short enough that windows are extended many times a run and the next holder
/// of a vanished holder's ID waits seconds, not production's 30 s.
pub const RENEW_WINDOW: Duration = Duration::from_secs(8);

/// A node's peer-port address in the simulated network.
pub fn peer_addr(id: NodeId) -> String {
    format!("r{id}.sim:7001")
}

/// A node's client-port address.
pub fn client_addr(id: NodeId) -> String {
    format!("r{id}.sim:7000")
}

/// How a simulated node reaches its peers: through the simulated network.
#[derive(Debug)]
struct SimConnector {
    net: Arc<Net>,
    from: String,
}

impl PeerConnector for SimConnector {
    fn connect(&self, _target: NodeId, addr: &str) -> Result<BoxChannel, PeerCallError> {
        Ok(self.net.channel(&self.from, addr))
    }
}

/// One registry "machine": its disk and wall clock outlive the node process running on it.
#[derive(Debug)]
pub struct SimNode {
    pub id: NodeId,
    pub name: String,
    pub disk: MemDisk,
    pub wall: Arc<WallError>,
    pub mono_stall: Arc<MonoStall>,
    /// The cluster it was bootstrapped into (or joined).
    pub cluster_id: &'static str,
    /// The Raft timing of its processes: the default (`--pre-vote` among it, on unless a test
    /// compares without it).
    pub timing: RaftTiming,
    /// The timing of its first process, when it differs: a rolling upgrade's node starts on
    /// the replaced release's timing, and every later process runs `timing` (`upgrade.rs`).
    first_timing: Option<RaftTiming>,
    /// The members its `--initial-cluster` names (itself among them for a founding member).
    initial_cluster: Vec<NodeId>,
    /// `New` for the five founding members; `Existing` for a replacement started later.
    initial_state: InitialClusterState,
    /// Removed from the cluster and its machine stopped for good: never started again.
    retired: bool,
    starts: u64,
    running: Option<(String, oneshot::Sender<()>, JoinHandle<()>)>,
    /// Why the running process ended on its own, once it did.
    exit: Arc<Mutex<Option<String>>>,
}

impl SimNode {
    /// A member of the cluster the run bootstraps, `members`.
    pub fn founding(id: NodeId, members: &[NodeId], cluster_id: &'static str) -> SimNode {
        SimNode::new(id, members, InitialClusterState::New, cluster_id)
    }

    /// A node an operator adds to the running cluster, whose live members are `members`: it
    /// asks them whether its id served before, then waits to be added.
    pub fn joining(id: NodeId, members: &[NodeId], cluster_id: &'static str) -> SimNode {
        SimNode::new(id, members, InitialClusterState::Existing, cluster_id)
    }

    fn new(id: NodeId, members: &[NodeId], initial_state: InitialClusterState, cluster_id: &'static str) -> SimNode {
        let name = format!("r{id}");
        SimNode {
            id,
            name,
            disk: MemDisk::new(),
            wall: Arc::new(WallError::default()),
            mono_stall: Arc::new(MonoStall::default()),
            cluster_id,
            timing: RaftTiming::default(),
            first_timing: None,
            initial_cluster: members.to_vec(),
            initial_state,
            retired: false,
            starts: 0,
            running: None,
            exit: Arc::default(),
        }
    }

    /// This node as one of a cluster a rolling upgrade reaches: its first process runs
    /// `first`, the replaced release's timing, and every later one the default.
    pub fn upgraded_from(self, first: RaftTiming) -> SimNode {
        SimNode { first_timing: Some(first), ..self }
    }

    /// The timing of the process starting now (`starts` counts it already).
    fn process_timing(&self) -> RaftTiming {
        match self.first_timing {
            Some(first) if self.starts == 1 => first,
            _ => self.timing,
        }
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    pub fn is_retired(&self) -> bool {
        self.retired
    }

    /// Why the node process ended on its own (`server::run` returned: a fatal storage error,
    /// the lost-disk guard's refusal), if it did while nobody stopped it: its machine's
    /// supervisor restarts it.
    pub fn exited(&self) -> Option<String> {
        let finished = self.running.as_ref().is_some_and(|(_, _, task)| task.is_finished());
        finished.then(|| self.exit.lock().unwrap_or_else(PoisonError::into_inner).clone().unwrap_or_default())
    }

    fn config(&self) -> NodeConfig {
        let node = |id: NodeId| PeerNode { peer_addr: peer_addr(id), client_addr: client_addr(id) };
        let initial_cluster: BTreeMap<NodeId, PeerNode> =
            self.initial_cluster.iter().map(|id| (*id, node(*id))).collect();
        NodeConfig {
            node_id: self.id,
            cluster_id: self.cluster_id.to_string(),
            advertise: node(self.id),
            data_dir: format!("/sim/{}", self.name).into(),
            initial_cluster,
            initial_cluster_state: self.initial_state,
            layout: LayoutFlags::default(),
            ttl_ms_max: TTL_MS_MAX,
            cool_down_ms: COOL_DOWN_MS,
            timing: self.process_timing(),
            request_timeout: Duration::from_secs(2),
            max_clock_offset: Duration::from_millis(250),
            clock_check: ClockCheck::Enforced,
            renew_window: RENEW_WINDOW,
            lease_drift_percent: fenceflake_registry::config::DEFAULT_LEASE_DRIFT_PERCENT,
            // Small, so that runs take and install snapshots.
            snapshot_logs: 200,
            // Unused: a simulated node's disk is memory, with no sled cache.
            cache_mib: fenceflake_registry::config::DEFAULT_CACHE_MIB,
            metrics_addr: None,
            admin_only: false,
        }
    }

    /// Start the node process on this machine's disk, unless it runs or was retired.
    pub fn start(&mut self, net: &Arc<Net>, recorder: &Recorder) {
        if self.running.is_some() || self.retired {
            return;
        }
        self.starts += 1;
        // Each process serves its own services: a dead one withdrawing its own on the way out
        // never touches its successor's.
        // A restored cluster's machines take the lost ones' names: their processes are told
        // apart by cluster, so a lost process's leftover tasks never count as running again.
        let process = match self.cluster_id {
            CLUSTER_ID => format!("{}#{}", self.name, self.starts),
            other => format!("{}#{other}.{}", self.name, self.starts),
        };
        let served = ServedServices::default();
        net.bind(&peer_addr(self.id), &process, served.clone(), Port::Peer);
        net.bind(&client_addr(self.id), &process, served.clone(), Port::Client);
        net.set_running(&process, true);
        let io = NodeIo::Simulated(SimulatedIo {
            disk: self.disk.clone(),
            connector: Arc::new(SimConnector { net: net.clone(), from: process.clone() }),
            served,
        });
        let clock = Arc::new(ProcessClock::start(recorder.world(), self.wall.clone(), self.mono_stall.clone()));
        let (stop, stopped) = oneshot::channel::<()>();
        let config = self.config();
        let name = self.name.clone();
        let security = Security::Transport(net.identity(&self.name));
        let exit = Arc::new(Mutex::new(None));
        self.exit = exit.clone();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(error) = server::run(config, io, security, clock, shutdown).await {
                tracing::debug!(node = %name, %error, "registry node stopped with an error");
                *exit.lock().unwrap_or_else(PoisonError::into_inner) = Some(error.to_string());
            }
        });
        self.running = Some((process, stop, task));
    }

    /// The process dies at once: the network stops carrying its messages, the disk keeps only
    /// what was flushed plus the first `keep` unflushed batches, and the process's leftover
    /// tasks can no longer write.
    pub fn crash(&mut self, net: &Net, keep: usize) {
        if let Some((process, stop, _task)) = self.running.take() {
            net.set_running(&process, false);
            self.disk.crash(keep);
            let _ = stop.send(());
            self.disk = self.disk.restart();
        }
    }

    /// Stop the machine for good (its member was removed): the process dies as in a crash,
    /// and nothing starts it again (the nemesis's restarts and its supervisor skip it).
    pub fn retire(&mut self, net: &Net) {
        let pending = self.disk.pending_len();
        self.crash(net, pending);
        self.retired = true;
    }
}
