//! Configuration of one registry node, validated as a whole before anything starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use fenceflake_proto::wire::{LayoutBound, SEQUENCE_BITS_MAX, TIMESTAMP_BITS_MIN};

use crate::leader_lease::LEASE_DRIFT_PERCENT_MAX;
use crate::lease::ClusterConfig;
use crate::limits::{ELECTION_TIMEOUT_MAX_MS_LIMIT, RENEW_WINDOW_MAX_MS, WORKER_ID_BITS_MAX};
use crate::raft::types::{NodeId, PeerNode};

/// Whether this node may bootstrap a new cluster (etcd's `--initial-cluster-state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialClusterState {
    /// A new cluster: the lowest node id of `--initial-cluster` initializes it, once.
    New,
    /// Joining a running cluster: never initialize; wait to be added with `ctl add-member`.
    Existing,
}

/// Raft timing, and how a voter campaigns. Failover ≈ election_max + U[0, (election_max −
/// election_min)/2) + two round trips with pre-vote (`pre_vote.rs`); election_max +
/// U[election_min, election_max) + heartbeat ticks on openraft's own timer.
///
/// The default, 50 ms / 150–300 ms, fails over in about 0.3 s. Without pre-vote it deposed
/// healthy leaders on a loaded machine (a follower starved of CPU for a few hundred ms woke up,
/// campaigned and raised the term: `bench/elections.sh`, BENCHMARKS.md "Elections"), which is
/// why 100 ms / 300–600 ms was the default until pre-vote; a node restarted from the old
/// default refuses votes for it a while longer (`start_quiet.rs`).
#[derive(Debug, Clone, Copy)]
pub struct RaftTiming {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Campaign only after a majority's pre-vote (`pre_vote.rs`), not on openraft's timer.
    pub pre_vote: bool,
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming { heartbeat_ms: 50, election_min_ms: 150, election_max_ms: 300, pre_vote: true }
    }
}

impl RaftTiming {
    /// The timing's own rules, and that `request_timeout` outlasts an election.
    fn check(&self, request_timeout: Duration) -> Result<(), ConfigError> {
        let invalid = |field, why: String| Err(ConfigError::Invalid { field, why });
        let t = self;
        if t.election_min_ms <= 2 * t.heartbeat_ms || t.election_max_ms <= t.election_min_ms {
            return invalid(
                "--election-timeout",
                format!(
                    "need heartbeat*2 < election-min < election-max, got {} / {} / {}",
                    t.heartbeat_ms, t.election_min_ms, t.election_max_ms
                ),
            );
        }
        if t.election_max_ms > ELECTION_TIMEOUT_MAX_MS_LIMIT {
            return invalid(
                "--election-timeout-max",
                format!(
                    "{} ms is above the limit of {ELECTION_TIMEOUT_MAX_MS_LIMIT} ms: a failover waits at least this long, and \
                     the data dir keeps the value, so a node restarted later with a smaller one refuses votes for it first",
                    t.election_max_ms
                ),
            );
        }
        if request_timeout.as_millis() as u64 <= t.election_max_ms {
            return invalid(
                "--request-timeout",
                format!(
                    "{:?} must exceed the election timeout ({} ms) to ride through a failover",
                    request_timeout, t.election_max_ms
                ),
            );
        }
        Ok(())
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
    /// The ID layout flags given (`--epoch-ms`, `--worker-id-bits`, `--sequence-bits`): they
    /// choose the layout of a new cluster, and a node whose data dir holds another layout
    /// refuses to start.
    pub layout: LayoutFlags,
    /// `--max-ttl` and `--cool-down`: committed with the layout by the first leader if the
    /// cluster has no config yet (see [`NodeConfig::bootstrap_config`]); ignored afterwards.
    pub ttl_ms_max: u64,
    pub cool_down_ms: u64,
    pub timing: RaftTiming,
    /// Bound on every client request: waiting for a leader, confirming a quorum, committing.
    pub request_timeout: Duration,
    /// `--max-clock-offset`: how far this node's wall clock may be from the median of a
    /// quorum of the voters' clocks for it to campaign and lead (`clock_check.rs`).
    pub max_clock_offset: Duration,
    /// The clock check on (always, in production) or off (harness self-test only).
    pub clock_check: ClockCheck,
    /// `--renew-window`: how far past a logged renewal's reach (`wall_ms_at_send + ttl`) its
    /// high-water mark is raised, so the renewals that follow are answered from the leader's
    /// memory; zero logs every renewal (docs/design.md, "Memory renewals").
    pub renew_window: Duration,
    /// `--leader-lease-drift`: the bound, in percent, on how far any two nodes' monotonic
    /// clock rates differ from true time; the leader lease is `election_timeout_max × (100 −
    /// d) / (100 + d)` from each acknowledged heartbeat round.
    pub lease_drift_percent: u8,
    /// Log entries between snapshots (the log is purged behind each snapshot).
    pub snapshot_logs: u64,
    /// `--cache-mib`: sled's page cache, in MiB. It holds recent log entries and records, so
    /// it is most of a node's memory beyond the lease table (docs/operations.md).
    pub cache_mib: u64,
    pub metrics_addr: Option<SocketAddr>,
    /// Operator RPCs only on the admin listener: the client port refuses them, so a
    /// NetworkPolicy that lets workers reach the client port keeps them from membership,
    /// snapshots and quarantine even with a stolen operator certificate in the wrong place.
    pub admin_only: bool,
}

/// Whether the clock check (`clock_check.rs`) decides who may lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockCheck {
    Enforced,
    /// UNSAFE: every verdict says "within", so a node leads and stamps the cluster's time
    /// whatever its wall clock (elections and admission as before the check). Exists so a
    /// harness run can show that a fast leader is caught; compiled only into unit tests and
    /// the separately built test binary (feature `unsafe-test-switches`).
    #[cfg(any(test, feature = "unsafe-test-switches"))]
    DisabledUnsafe,
}

/// `--cache-mib` by default. Measured at 65,536 leases under fleet load (BENCHMARKS.md, "sled's
/// cache"): 64 MiB filled with log entries the log is about to purge anyway and set a node's
/// peak; 16 MiB served the same renewals. Raft reads back only the newest entries (to
/// replicate them) and the lease table is in memory, so a large cache buys little here.
pub const DEFAULT_CACHE_MIB: u64 = 16;
/// The cache sizes `--cache-mib` accepts: below 1 MiB sled thrashes on every log read; above
/// 64 GiB is a typo.
const CACHE_MIB_RANGE: std::ops::RangeInclusive<u64> = 1..=65_536;

/// `--max-clock-offset` by default: half the workers' default `--max-skew` (500 ms), so a
/// worker whose clock is within 250 ms of the quorum's median never parks on a leader the
/// clock check lets lead.
pub const DEFAULT_MAX_CLOCK_OFFSET: Duration = Duration::from_millis(250);
/// `--renew-window` by default: a renewal every TTL/3 on a 10 s lease writes the log about
/// once in seven renewals (each logged renewal reaches 30 s further, and the leader extends
/// the window when a quarter of it is left); the cost is that the next holder of an ID whose
/// holder vanished without releasing it may wait up to this long for its `not_before`.
pub const DEFAULT_RENEW_WINDOW: Duration = Duration::from_secs(30);
/// `--leader-lease-drift` by default: monotonic clocks of two nodes may run 10 % apart (real
/// crystal drift is below 0.01 %; the margin also covers a slow timer wake-up).
pub const DEFAULT_LEASE_DRIFT_PERCENT: u8 = 10;
/// The smallest `--max-clock-offset`: proof needs a probe round trip below twice the bound.
pub const MAX_CLOCK_OFFSET_MIN: Duration = Duration::from_millis(10);

/// The ID time origin of a new cluster started without `--epoch-ms`: 2024-01-01T00:00:00Z.
pub const DEFAULT_EPOCH_MS: u64 = 1_704_067_200_000;
/// The worker-ID width of a new cluster started without `--worker-id-bits`: 1024 worker IDs.
pub const DEFAULT_WORKER_ID_BITS: u8 = 10;
/// The sequence width of a new cluster started without `--sequence-bits`: 4096 IDs per ms.
pub const DEFAULT_SEQUENCE_BITS: u8 = 12;

/// The ID layout flags a node was started with, each `None` unless given. They choose the
/// layout of a new cluster (the defaults fill in the rest); once the cluster is configured
/// its layout is fixed, and a flag given must agree with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayoutFlags {
    pub epoch_ms: Option<u64>,
    pub worker_id_bits: Option<u8>,
    pub sequence_bits: Option<u8>,
}

/// One layout flag that disagrees with the cluster's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayoutMismatch {
    pub flag: &'static str,
    pub given: u64,
    pub cluster: u64,
}

impl std::fmt::Display for LayoutMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} was given, but the cluster's is {}", self.flag, self.given, self.cluster)
    }
}

impl LayoutFlags {
    /// Whether any layout flag was given.
    pub fn any(&self) -> bool {
        self.epoch_ms.is_some() || self.worker_id_bits.is_some() || self.sequence_bits.is_some()
    }

    /// Every flag given whose value is not the one `cluster` holds.
    pub fn mismatches(&self, cluster: &ClusterConfig) -> Vec<LayoutMismatch> {
        let flags = [
            ("--epoch-ms", self.epoch_ms, cluster.epoch_ms),
            ("--worker-id-bits", self.worker_id_bits.map(u64::from), u64::from(cluster.worker_id_bits)),
            ("--sequence-bits", self.sequence_bits.map(u64::from), u64::from(cluster.sequence_bits)),
        ];
        flags
            .into_iter()
            .filter_map(|(flag, given, cluster)| {
                given.filter(|g| *g != cluster).map(|given| LayoutMismatch { flag, given, cluster })
            })
            .collect()
    }
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

/// The flag to blame for a layout that breaks `bound`, and why.
fn layout_bound_why(c: &ClusterConfig, bound: LayoutBound) -> (&'static str, String) {
    match bound {
        LayoutBound::WorkerIdBits => {
            ("--worker-id-bits", format!("{} is outside 1..={WORKER_ID_BITS_MAX}", c.worker_id_bits))
        }
        LayoutBound::SequenceBits => {
            ("--sequence-bits", format!("{} is outside 1..={SEQUENCE_BITS_MAX}", c.sequence_bits))
        }
        LayoutBound::TimestampBits { timestamp_bits } => (
            "--worker-id-bits/--sequence-bits",
            format!(
                "{} worker-ID bits and {} sequence bits leave {timestamp_bits} timestamp bits, below the minimum of {TIMESTAMP_BITS_MIN} (63 bits in all)",
                c.worker_id_bits, c.sequence_bits
            ),
        ),
        LayoutBound::EpochTooLate => {
            ("--epoch-ms", format!("{} leaves no room for the timestamp range below u64::MAX", c.epoch_ms))
        }
    }
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
    /// A node of a new cluster with every documented default (`fenceflake registry --help`:
    /// max TTL 60 s, cool-down 1 s, request timeout 2 s, 5000 entries between snapshots, the
    /// default Raft timing, the default layout), for embedders (`fenceflake dev`) and tests.
    pub fn new(
        node_id: NodeId,
        cluster_id: String,
        advertise: PeerNode,
        data_dir: PathBuf,
        initial_cluster: BTreeMap<NodeId, PeerNode>,
    ) -> NodeConfig {
        NodeConfig {
            node_id,
            cluster_id,
            advertise,
            data_dir,
            initial_cluster,
            initial_cluster_state: InitialClusterState::New,
            layout: LayoutFlags::default(),
            ttl_ms_max: 60_000,
            cool_down_ms: 1_000,
            timing: RaftTiming::default(),
            request_timeout: Duration::from_secs(2),
            max_clock_offset: DEFAULT_MAX_CLOCK_OFFSET,
            clock_check: ClockCheck::Enforced,
            renew_window: DEFAULT_RENEW_WINDOW,
            lease_drift_percent: DEFAULT_LEASE_DRIFT_PERCENT,
            snapshot_logs: 5_000,
            cache_mib: DEFAULT_CACHE_MIB,
            metrics_addr: None,
            admin_only: false,
        }
    }

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
        let c = self.bootstrap_config();
        if let Err(bound) = c.check_layout() {
            let (field, why) = layout_bound_why(&c, bound);
            return invalid(field, why);
        }
        if c.ttl_ms_max == 0 {
            return invalid("--max-ttl", "must be > 0".into());
        }
        self.timing.check(self.request_timeout)?;
        if self.max_clock_offset < MAX_CLOCK_OFFSET_MIN {
            return invalid(
                "--max-clock-offset",
                format!(
                    "{:?} is below {MAX_CLOCK_OFFSET_MIN:?}: a clock probe's round trip could never prove a clock that close",
                    self.max_clock_offset
                ),
            );
        }
        if self.renew_window.as_millis() as u64 > RENEW_WINDOW_MAX_MS {
            return invalid(
                "--renew-window",
                format!(
                    "{:?} is above {} s: the next holder of a vanished holder's worker ID may wait that long",
                    self.renew_window,
                    RENEW_WINDOW_MAX_MS / 1000
                ),
            );
        }
        if self.lease_drift_percent > LEASE_DRIFT_PERCENT_MAX {
            return invalid(
                "--leader-lease-drift",
                format!(
                    "{} % is above {LEASE_DRIFT_PERCENT_MAX} %: the lease would be too short to answer from",
                    self.lease_drift_percent
                ),
            );
        }
        if self.cluster_id.is_empty() {
            return invalid("--cluster-id", "must not be empty".into());
        }
        self.validate_storage()
    }

    /// The storage flags' part of [`NodeConfig::validate`].
    fn validate_storage(&self) -> Result<(), ConfigError> {
        let invalid = |field, why: String| Err(ConfigError::Invalid { field, why });
        if self.snapshot_logs < 10 {
            return invalid("--snapshot-logs", format!("{} is below 10", self.snapshot_logs));
        }
        if !CACHE_MIB_RANGE.contains(&self.cache_mib) {
            let (low, high) = (CACHE_MIB_RANGE.start(), CACHE_MIB_RANGE.end());
            return invalid("--cache-mib", format!("{} is outside {low}..={high}", self.cache_mib));
        }
        Ok(())
    }

    /// The config the first leader commits if the cluster has none: the layout flags given,
    /// the defaults for the others, and the TTL bounds.
    pub fn bootstrap_config(&self) -> ClusterConfig {
        ClusterConfig {
            epoch_ms: self.layout.epoch_ms.unwrap_or(DEFAULT_EPOCH_MS),
            worker_id_bits: self.layout.worker_id_bits.unwrap_or(DEFAULT_WORKER_ID_BITS),
            sequence_bits: self.layout.sequence_bits.unwrap_or(DEFAULT_SEQUENCE_BITS),
            ttl_ms_max: self.ttl_ms_max,
            cool_down_ms: self.cool_down_ms,
        }
    }

    /// The openraft config derived from ours (every timing set explicitly).
    pub fn raft_config(&self) -> Result<openraft::Config, ConfigError> {
        let config = openraft::Config {
            cluster_name: self.cluster_id.clone(),
            heartbeat_interval: self.timing.heartbeat_ms,
            election_timeout_min: self.timing.election_min_ms,
            election_timeout_max: self.timing.election_max_ms,
            // With pre-vote this node campaigns through `pre_vote::run`, never on openraft's
            // timer (which would raise its term without asking).
            enable_elect: !self.timing.pre_vote,
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
pub(crate) mod tests {
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

    /// Goal (issue 11): a window or a drift bound the memory renewals could not honour is
    /// refused naming the flag; the bounds themselves are accepted.
    #[test]
    fn renew_window_and_lease_drift_are_bounded() {
        let field = |c: NodeConfig| match c.validate() {
            Err(ConfigError::Invalid { field, .. }) => Some(field),
            _ => None,
        };
        let base = node(LayoutFlags::default());
        let at_most = NodeConfig { renew_window: Duration::from_millis(RENEW_WINDOW_MAX_MS), ..base.clone() };
        assert_eq!(field(at_most), None);
        let over = NodeConfig { renew_window: Duration::from_millis(RENEW_WINDOW_MAX_MS + 1), ..base.clone() };
        assert_eq!(field(over), Some("--renew-window"));
        assert_eq!(field(NodeConfig { renew_window: Duration::ZERO, ..base.clone() }), None, "0 logs every renewal");
        let drift = |d| NodeConfig { lease_drift_percent: d, ..base.clone() };
        assert_eq!(field(drift(LEASE_DRIFT_PERCENT_MAX)), None);
        assert_eq!(field(drift(LEASE_DRIFT_PERCENT_MAX + 1)), Some("--leader-lease-drift"));
    }

    /// Goal (issue 11): an `--election-timeout-max` above the limit is refused naming the flag
    /// (a data dir records it, and a later restart with less refuses votes for it first); the
    /// limit itself is accepted.
    #[test]
    fn election_timeout_max_is_bounded() {
        let field = |election_max_ms: u64| {
            let timing = RaftTiming { election_max_ms, ..RaftTiming::default() };
            let config =
                NodeConfig { timing, request_timeout: Duration::from_secs(60), ..node(LayoutFlags::default()) };
            match config.validate() {
                Err(ConfigError::Invalid { field, .. }) => Some(field),
                _ => None,
            }
        };
        assert_eq!(field(ELECTION_TIMEOUT_MAX_MS_LIMIT), None);
        assert_eq!(field(ELECTION_TIMEOUT_MAX_MS_LIMIT + 1), Some("--election-timeout-max"));
    }

    /// Goal (issue 11): a sled cache of 0 MiB (sled would thrash on every log read) or past
    /// 64 GiB is refused naming `--cache-mib`; the default and both bounds are accepted.
    #[test]
    fn cache_size_is_bounded() {
        let field = |cache_mib| match (NodeConfig { cache_mib, ..node(LayoutFlags::default()) }).validate() {
            Err(ConfigError::Invalid { field, why }) => Some((field, why)),
            _ => None,
        };
        for accepted in [1, DEFAULT_CACHE_MIB, 65_536] {
            assert_eq!(field(accepted), None, "{accepted}");
        }
        for refused in [0, 65_537] {
            let (flag, why) = field(refused).unwrap();
            assert_eq!(flag, "--cache-mib");
            assert!(why.starts_with(&refused.to_string()), "{why}");
        }
    }

    /// A valid one-node config with `layout` (shared by the tests of config and server).
    pub(crate) fn node(layout: LayoutFlags) -> NodeConfig {
        let advertise = PeerNode { peer_addr: "127.0.0.1:2380".into(), client_addr: "127.0.0.1:2379".into() };
        let initial_cluster = parse_initial_cluster("1=127.0.0.1:2380").unwrap();
        NodeConfig { layout, ..NodeConfig::new(1, "c".into(), advertise, "/tmp/x".into(), initial_cluster) }
    }

    /// Goal: issue 9 — the layout flags choose a new cluster's layout, the documented defaults
    /// (1704067200000 / 10 / 12) fill in those not given, and a layout no worker could mint
    /// with is refused naming the flag.
    #[test]
    fn layout_flags_choose_a_new_clusters_layout() {
        let defaults = node(LayoutFlags::default()).bootstrap_config();
        assert_eq!((defaults.epoch_ms, defaults.worker_id_bits, defaults.sequence_bits), (1_704_067_200_000, 10, 12));
        assert_eq!((defaults.ttl_ms_max, defaults.cool_down_ms), (60_000, 1_000));
        let given = node(LayoutFlags { sequence_bits: Some(14), ..LayoutFlags::default() }).bootstrap_config();
        assert_eq!((given.epoch_ms, given.worker_id_bits, given.sequence_bits), (1_704_067_200_000, 10, 14));
        node(LayoutFlags::default()).validate().unwrap();
        let refused = |layout: LayoutFlags, flag: &str| {
            let err = node(layout).validate().unwrap_err().to_string();
            assert!(err.contains(flag), "{flag}: {err}");
        };
        let none = LayoutFlags::default();
        refused(LayoutFlags { worker_id_bits: Some(0), ..none }, "--worker-id-bits");
        refused(LayoutFlags { worker_id_bits: Some(17), ..none }, "--worker-id-bits");
        refused(LayoutFlags { sequence_bits: Some(23), ..none }, "--sequence-bits");
        refused(LayoutFlags { sequence_bits: Some(22), worker_id_bits: Some(11), ..none }, "30 timestamp bits");
        refused(LayoutFlags { epoch_ms: Some(u64::MAX - 1), ..none }, "--epoch-ms");
        node(LayoutFlags { sequence_bits: Some(22), ..none }).validate().unwrap();
    }

    /// Goal: issue 9 — only flags given are compared with the cluster's layout, and each one
    /// that disagrees is named with both values.
    #[test]
    fn layout_mismatches_name_the_flag_and_both_values() {
        let cluster = ClusterConfig {
            epoch_ms: 1_704_067_200_000,
            worker_id_bits: 10,
            sequence_bits: 12,
            ttl_ms_max: 1,
            cool_down_ms: 1,
        };
        assert!(LayoutFlags::default().mismatches(&cluster).is_empty());
        assert!(!LayoutFlags::default().any());
        let agreeing =
            LayoutFlags { epoch_ms: Some(1_704_067_200_000), worker_id_bits: Some(10), sequence_bits: Some(12) };
        assert!(agreeing.any() && agreeing.mismatches(&cluster).is_empty());
        let wrong = LayoutFlags { epoch_ms: None, worker_id_bits: Some(11), sequence_bits: Some(11) };
        let found: Vec<String> = wrong.mismatches(&cluster).iter().map(ToString::to_string).collect();
        assert_eq!(
            found,
            [
                "--worker-id-bits 11 was given, but the cluster's is 10",
                "--sequence-bits 11 was given, but the cluster's is 12"
            ]
        );
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
