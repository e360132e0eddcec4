//! `fenceflake registry`: run one registry node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use fenceflake_proto::duration::parse_duration;
use fenceflake_proto::tls::TlsArgs;
use fenceflake_registry::clock::SystemClock;
use fenceflake_registry::config::{
    parse_initial_cluster, ClockCheck, InitialClusterState, LayoutFlags, NodeConfig, RaftTiming, DEFAULT_CACHE_MIB,
};
use fenceflake_registry::raft::types::PeerNode;
use fenceflake_registry::server::{self, Listeners};
use fenceflake_worker::config::statefulset_ordinal;

use crate::signals::shutdown_signal;

/// `--node-id`: a number, or `ordinal` (N+1 from a StatefulSet host name `name-N`, so that
/// pods `registry-0..4` are nodes 1..5 without a shell in the image to compute it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeIdSpec {
    Ordinal,
    Fixed(u64),
}

impl FromStr for NodeIdSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<NodeIdSpec, String> {
        match text {
            "ordinal" => Ok(NodeIdSpec::Ordinal),
            number => match number.parse::<u64>() {
                Ok(0) => Err("0 is not a node id (ids start at 1)".to_string()),
                Ok(id) => Ok(NodeIdSpec::Fixed(id)),
                Err(_) => Err(format!("{text:?} is neither a node id (1, 2, ...) nor `ordinal`")),
            },
        }
    }
}

impl NodeIdSpec {
    fn resolve(self, hostname: &str) -> anyhow::Result<u64> {
        match self {
            NodeIdSpec::Fixed(id) => Ok(id),
            NodeIdSpec::Ordinal => statefulset_ordinal(hostname).map(|n| n + 1).with_context(|| {
                format!(
                    "--node-id ordinal: host name {hostname:?} does not end in -N (StatefulSet style); set --hostname"
                )
            }),
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ClusterState {
    New,
    Existing,
}

/// Run one node of the 5-node registry that grants fenced worker-ID leases.
///
/// A fresh cluster bootstraps once: start all nodes with the same --initial-cluster; the
/// lowest node id initializes it. A node that finds state in --data-dir rejoins with it.
#[derive(Debug, Args)]
#[command(after_help = crate::DURATION_HELP)]
pub struct RegistryArgs {
    /// This node's id (> 0, unique in the cluster, never reused after a node is lost), or
    /// `ordinal`: N+1 from a StatefulSet host name `name-N` (see --hostname).
    #[arg(long, env = "FENCEFLAKE_NODE_ID")]
    node_id: NodeIdSpec,
    /// Host name for --node-id ordinal (default: $HOSTNAME, else the kernel's host name).
    #[arg(long, env = "FENCEFLAKE_HOSTNAME")]
    hostname: Option<String>,
    /// Address to serve the public Registry API (and health, reflection) on.
    #[arg(long, env = "FENCEFLAKE_CLIENT_ADDR", default_value = "127.0.0.1:2379")]
    client_addr: SocketAddr,
    /// Address to serve Raft traffic and forwarded requests on (peers only).
    #[arg(long, env = "FENCEFLAKE_PEER_ADDR", default_value = "127.0.0.1:2380")]
    peer_addr: SocketAddr,
    /// Peer address other nodes use to reach this one, if not --peer-addr (e.g. a DNS name).
    #[arg(long, env = "FENCEFLAKE_ADVERTISE_PEER_ADDR")]
    advertise_peer_addr: Option<String>,
    /// Client address shown to operators, if not --client-addr.
    #[arg(long, env = "FENCEFLAKE_ADVERTISE_CLIENT_ADDR")]
    advertise_client_addr: Option<String>,
    /// Directory of this node's sled database (created if missing).
    #[arg(long, env = "FENCEFLAKE_DATA_DIR")]
    data_dir: PathBuf,
    /// All initial members: ID=HOST:PEERPORT[/HOST:CLIENTPORT],... (same on every node).
    #[arg(long, env = "FENCEFLAKE_INITIAL_CLUSTER")]
    initial_cluster: String,
    /// `new` bootstraps a cluster from --initial-cluster; `existing` waits to be added.
    #[arg(long, env = "FENCEFLAKE_INITIAL_CLUSTER_STATE", value_enum, default_value = "new")]
    initial_cluster_state: ClusterState,
    /// Cluster name, stored in the data dir and checked on every peer message.
    #[arg(long, env = "FENCEFLAKE_CLUSTER_ID", default_value = "fenceflake")]
    cluster_id: String,
    /// Serve Prometheus metrics on HOST:PORT (/metrics).
    #[arg(long, env = "FENCEFLAKE_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// ID time origin of a new cluster, ms since the Unix epoch [new cluster's default:
    /// 1704067200000, 2024-01-01]. The layout (this, --worker-id-bits, --sequence-bits) is
    /// fixed when the cluster bootstraps: a node whose data dir holds another value refuses to
    /// start. Leave the layout flags out on a configured cluster.
    #[arg(long, env = "FENCEFLAKE_EPOCH_MS")]
    epoch_ms: Option<u64>,
    /// Worker-ID bits of a new cluster's ID layout [new cluster's default: 10, 1024 worker IDs].
    #[arg(long, env = "FENCEFLAKE_WORKER_ID_BITS")]
    worker_id_bits: Option<u8>,
    /// Sequence bits of a new cluster's ID layout [new cluster's default: 12, 4096 IDs per ms
    /// per worker]; stated in every grant, so every worker mints with it.
    #[arg(long, env = "FENCEFLAKE_SEQUENCE_BITS")]
    sequence_bits: Option<u8>,
    /// Longest lease TTL a worker may ask for.
    #[arg(long, env = "FENCEFLAKE_MAX_TTL", default_value = "60s", value_parser = parse_duration)]
    max_ttl: Duration,
    /// Extra wait on top of the TTL before an unrenewed worker ID is re-granted.
    #[arg(long, env = "FENCEFLAKE_COOL_DOWN", default_value = "1s", value_parser = parse_duration)]
    cool_down: Duration,
    /// Raft heartbeat interval (also the replication RPC timeout: keep it well above the disk's
    /// fsync p99 plus the round trip, and above scheduling hiccups of a busy host).
    #[arg(long, env = "FENCEFLAKE_HEARTBEAT", default_value = "50ms", value_parser = parse_duration)]
    heartbeat: Duration,
    /// Raft election timeout, lower bound.
    #[arg(long, env = "FENCEFLAKE_ELECTION_TIMEOUT_MIN", default_value = "150ms", value_parser = parse_duration)]
    election_timeout_min: Duration,
    /// Raft election timeout, upper bound (also the leader lease for admission control); at
    /// most 10s. The data dir records it: restarted with a smaller value, a node refuses votes
    /// for the recorded one (plus ~2.4 s) before it takes the new one.
    #[arg(long, env = "FENCEFLAKE_ELECTION_TIMEOUT_MAX", default_value = "300ms", value_parser = parse_duration)]
    election_timeout_max: Duration,
    /// Campaign only when a majority of the voters say they would vote (pre-vote): a node
    /// its host did not schedule for a while, or cut off from the leader alone, then cannot
    /// depose a healthy leader by raising its term. `false` campaigns on openraft's own timer
    /// (`election-timeout-max` + a random election timeout after the last heartbeat), as
    /// releases before pre-vote did; mixed clusters work either way.
    #[arg(long, env = "FENCEFLAKE_PRE_VOTE", default_value_t = true, action = clap::ArgAction::Set)]
    pre_vote: bool,
    /// Bound on every client request (waiting for a leader, a quorum, a commit).
    #[arg(long, env = "FENCEFLAKE_REQUEST_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// How far this node's wall clock may be from the median of a quorum of the voters' clocks
    /// (probed over the peer port) for it to campaign and lead; a node further off, or unable
    /// to prove it is not, steps aside. Keep it below the workers' --max-skew.
    #[arg(long, env = "FENCEFLAKE_MAX_CLOCK_OFFSET", default_value = "250ms", value_parser = parse_duration)]
    max_clock_offset: Duration,
    /// How far past a logged renewal's reach (the worker's clock at send + TTL) the leader
    /// raises the worker ID's durable high-water mark. Renewals inside it are answered from the
    /// leader's memory under its leader lease, without a log write; the leader extends it when a
    /// quarter is left. The price: the next holder of an ID whose holder vanished without
    /// releasing it may wait up to this long to mint. 0s logs every renewal. At most 300s.
    #[arg(long, env = "FENCEFLAKE_RENEW_WINDOW", default_value = "30s", value_parser = parse_duration)]
    renew_window: Duration,
    /// The clock-rate bound the leader lease assumes, in percent: how far any node's monotonic
    /// clock may run fast or slow. The leader answers renewals from memory for
    /// election-timeout-max × (100 − d)/(100 + d) after a heartbeat round a quorum acknowledged.
    /// At most 50.
    #[arg(long, env = "FENCEFLAKE_LEADER_LEASE_DRIFT", default_value_t = 10)]
    leader_lease_drift: u8,
    /// Log entries between snapshots; the log is purged behind each one.
    #[arg(long, env = "FENCEFLAKE_SNAPSHOT_LOGS", default_value_t = 5000)]
    snapshot_logs: u64,
    /// sled's page cache, in MiB (1 to 65536). It keeps recent log entries and records; the
    /// lease table itself is always in memory, so a larger cache mostly holds log entries
    /// about to be purged. Raise it if the data dir's disk shows steady reads under load.
    #[arg(long, env = "FENCEFLAKE_CACHE_MIB", default_value_t = DEFAULT_CACHE_MIB)]
    cache_mib: u64,
    /// A separate listener for operator RPCs (quarantine, membership, snapshots, audit,
    /// transfer-leader) besides the client port, so a NetworkPolicy can keep workers away.
    #[arg(long, env = "FENCEFLAKE_ADMIN_ADDR")]
    admin_addr: Option<SocketAddr>,
    /// Serve operator RPCs on --admin-addr only: the client port refuses them.
    #[arg(long, env = "FENCEFLAKE_ADMIN_ONLY", requires = "admin_addr")]
    admin_only: bool,
    /// UNSAFE, harness self-test only, and only in the separately built test binary (feature
    /// `unsafe-test-switches`): the clock check always says "within", so a node leads and
    /// stamps the cluster's time whatever its wall clock, to prove the harness catches it.
    #[cfg(feature = "unsafe-test-switches")]
    #[arg(long, env = "FENCEFLAKE_UNSAFE_DISABLE_CLOCK_CHECK", hide = true)]
    unsafe_disable_clock_check: bool,
    #[command(flatten)]
    tls: TlsArgs,
}

impl RegistryArgs {
    fn into_config(self) -> anyhow::Result<NodeConfig> {
        let clock_check = self.clock_check();
        let initial_cluster = parse_initial_cluster(&self.initial_cluster)?;
        let advertise = PeerNode {
            peer_addr: self.advertise_peer_addr.unwrap_or_else(|| self.peer_addr.to_string()),
            client_addr: self.advertise_client_addr.unwrap_or_else(|| self.client_addr.to_string()),
        };
        let hostname = self.hostname.unwrap_or_else(crate::hostname::detect);
        Ok(NodeConfig {
            node_id: self.node_id.resolve(&hostname)?,
            cluster_id: self.cluster_id,
            advertise,
            data_dir: self.data_dir,
            initial_cluster,
            initial_cluster_state: match self.initial_cluster_state {
                ClusterState::New => InitialClusterState::New,
                ClusterState::Existing => InitialClusterState::Existing,
            },
            layout: LayoutFlags {
                epoch_ms: self.epoch_ms,
                worker_id_bits: self.worker_id_bits,
                sequence_bits: self.sequence_bits,
            },
            ttl_ms_max: self.max_ttl.as_millis() as u64,
            cool_down_ms: self.cool_down.as_millis() as u64,
            timing: RaftTiming {
                heartbeat_ms: self.heartbeat.as_millis() as u64,
                election_min_ms: self.election_timeout_min.as_millis() as u64,
                election_max_ms: self.election_timeout_max.as_millis() as u64,
                pre_vote: self.pre_vote,
            },
            request_timeout: self.request_timeout,
            max_clock_offset: self.max_clock_offset,
            clock_check,
            renew_window: self.renew_window,
            lease_drift_percent: self.leader_lease_drift,
            snapshot_logs: self.snapshot_logs,
            cache_mib: self.cache_mib,
            metrics_addr: self.metrics_addr,
            admin_only: self.admin_only,
        })
    }

    /// The clock check: enforced, unless the test binary's unsafe switch turns it off.
    fn clock_check(&self) -> ClockCheck {
        #[cfg(feature = "unsafe-test-switches")]
        if self.unsafe_disable_clock_check {
            tracing::error!("UNSAFE: the clock check is disabled; this node leads and stamps leases whatever its wall clock (harness self-test only)");
            return ClockCheck::DisabledUnsafe;
        }
        ClockCheck::Enforced
    }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {what} {addr} (in use by another process?)"))
}

pub async fn run(args: RegistryArgs) -> anyhow::Result<()> {
    let (client_addr, peer_addr, admin_addr) = (args.client_addr, args.peer_addr, args.admin_addr);
    let security = args.tls.security()?;
    security.announce("registry");
    let config = args.into_config()?;
    config.validate()?;
    let listeners = Listeners {
        client: bind(client_addr, "--client-addr").await?,
        peer: bind(peer_addr, "--peer-addr").await?,
        admin: match admin_addr {
            Some(addr) => Some(bind(addr, "--admin-addr").await?),
            None => None,
        },
        metrics: match config.metrics_addr {
            Some(addr) => Some(bind(addr, "--metrics-addr").await?),
            None => None,
        },
    };
    server::run(config, listeners, security, Arc::new(SystemClock), shutdown_signal()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: `--node-id` takes a positive number or `ordinal`, and `ordinal` maps pod `name-N`
    /// to node N+1, refusing host names without the suffix.
    #[test]
    fn node_id_spec_parses_and_resolves() {
        assert_eq!("3".parse::<NodeIdSpec>().unwrap(), NodeIdSpec::Fixed(3));
        assert!("0".parse::<NodeIdSpec>().unwrap_err().contains("start at 1"));
        assert!("three".parse::<NodeIdSpec>().unwrap_err().contains("\"three\""));
        let ordinal: NodeIdSpec = "ordinal".parse().unwrap();
        assert_eq!(ordinal.resolve("fenceflake-registry-0").unwrap(), 1);
        assert_eq!(ordinal.resolve("fenceflake-registry-4").unwrap(), 5);
        assert_eq!(NodeIdSpec::Fixed(7).resolve("anything").unwrap(), 7);
        for bad in ["registry", "registry-", "-3", "registry-x1"] {
            let err = ordinal.resolve(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }

    /// Goal: `fenceflake decode` without layout flags decodes the IDs of a cluster bootstrapped
    /// without them (one default layout for the registry, the worker and decode).
    #[test]
    fn a_new_clusters_layout_defaults_are_decodes() {
        use fenceflake_registry::config::{DEFAULT_EPOCH_MS, DEFAULT_SEQUENCE_BITS, DEFAULT_WORKER_ID_BITS};
        assert_eq!(DEFAULT_EPOCH_MS, crate::decode_cmd::DEFAULT_EPOCH_MS);
        assert_eq!(DEFAULT_WORKER_ID_BITS, fenceflake_worker::limits::DEFAULT_WORKER_ID_BITS);
        assert_eq!(DEFAULT_SEQUENCE_BITS, fenceflake_worker::limits::DEFAULT_SEQUENCE_BITS);
    }

    /// Goal: the CLI's timing defaults are the registry's (one default for `registry` and
    /// `dev`).
    #[test]
    fn timing_flag_defaults_are_the_registry_defaults() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Wrap {
            #[command(flatten)]
            args: RegistryArgs,
        }
        let wrap = Wrap::try_parse_from([
            "registry",
            "--node-id",
            "1",
            "--data-dir",
            "/tmp/x",
            "--initial-cluster",
            "1=127.0.0.1:2380",
        ]);
        let args = wrap.expect("minimal registry flags parse").args;
        assert_eq!(
            (args.epoch_ms, args.worker_id_bits, args.sequence_bits),
            (None, None, None),
            "layout flags have no default: only a new cluster takes the registry's"
        );
        let defaults = RaftTiming::default();
        assert_eq!(args.heartbeat.as_millis() as u64, defaults.heartbeat_ms);
        assert_eq!(args.election_timeout_min.as_millis() as u64, defaults.election_min_ms);
        assert_eq!(args.election_timeout_max.as_millis() as u64, defaults.election_max_ms);
    }
}
