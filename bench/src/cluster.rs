//! A 5-node registry of real `fenceflake registry` processes on 127.0.0.1, with data dirs
//! in a temp dir on disk (real fsync): start, SIGKILL, restart, status, and CPU accounting.
//! Every process started here is SIGKILLed and reaped when the [`Cluster`] is dropped.
//!
//! The nodes run with mutual TLS (node certificates of a CA made in the cluster's dir, see
//! [`crate::tls`]) and the benchmark's clients with a `worker` certificate, unless
//! `--insecure`: then both sides run plaintext.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use fenceflake_proto::tls::Role;
use fenceflake_proto::v1 as pb;
use fenceflake_proto::v1::registry_client::RegistryClient;
use tonic::transport::Channel;

use crate::tls::{self, Side, TlsOpts, CLIENT_NAME};

/// Nodes in a benchmark cluster (the registry's production size).
pub const NODES: usize = 5;

/// How the benchmark's own cluster is started.
#[derive(Debug, Clone, Args)]
pub struct ClusterOpts {
    /// The `fenceflake` binary (default: next to this binary, i.e. target/release/fenceflake).
    #[arg(long, env = "FENCEFLAKE_BIN")]
    pub fenceflake_bin: Option<PathBuf>,
    /// Where the nodes' temp data dirs go (default: the system temp dir; must be a real disk).
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// `--heartbeat` of every node (registry default if unset).
    #[arg(long)]
    pub heartbeat: Option<String>,
    /// `--election-timeout-min` of every node (registry default if unset).
    #[arg(long)]
    pub election_timeout_min: Option<String>,
    /// `--election-timeout-max` of every node (registry default if unset).
    #[arg(long)]
    pub election_timeout_max: Option<String>,
    /// Any other registry flag, verbatim, e.g. `--node-arg=--snapshot-logs=20000` (repeatable).
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    pub node_args: Vec<String>,
    /// Label of this configuration in the output (e.g. `default`, `hb30-el100-200`).
    #[arg(long, default_value = "default")]
    pub profile: String,
    /// Keep the nodes' data dirs and logs after the run (their path is printed).
    #[arg(long)]
    pub keep: bool,
}

impl ClusterOpts {
    /// The flags given to every node on top of addresses and data dir.
    fn common_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for (flag, value) in [
            ("--heartbeat", &self.heartbeat),
            ("--election-timeout-min", &self.election_timeout_min),
            ("--election-timeout-max", &self.election_timeout_max),
        ] {
            if let Some(v) = value {
                args.push(format!("{flag}={v}"));
            }
        }
        args.extend(self.node_args.iter().cloned());
        args
    }

    fn binary(&self) -> anyhow::Result<PathBuf> {
        tls::fenceflake_binary(self.fenceflake_bin.as_deref())
    }
}

#[derive(Debug)]
struct Node {
    id: u64,
    client_addr: String,
    peer_addr: String,
    data_dir: PathBuf,
    child: Option<Child>,
}

/// One running node as [`Cluster::node_infos`] lists it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub id: u64,
    pub pid: u32,
    pub client_addr: String,
    pub data_dir: PathBuf,
}

/// A running cluster this process started.
#[derive(Debug)]
pub struct Cluster {
    dir: Option<tempfile::TempDir>,
    nodes: Vec<Node>,
    bin: PathBuf,
    initial_cluster: String,
    common_args: Vec<String>,
    /// The nodes' and the clients' TLS (or plaintext).
    side: Side,
    channels: Vec<Channel>,
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding an ephemeral port")?;
    Ok(listener.local_addr()?.port())
}

/// ClusterStatus as the node behind `channel` sees it, within 1 s.
pub async fn status(channel: &Channel) -> Option<pb::ClusterStatusResponse> {
    let mut client = RegistryClient::new(channel.clone());
    let call = client.cluster_status(pb::ClusterStatusRequest {});
    match tokio::time::timeout(Duration::from_secs(1), call).await {
        Ok(Ok(r)) => Some(r.into_inner()),
        _ => None,
    }
}

/// What a set of nodes says about the cluster: the leader most of them name, the highest
/// term and commit index any of them reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct View {
    pub leader_id: u64,
    pub term: u64,
    pub commit_index: u64,
    pub answered: usize,
    /// Every answering node names the same, non-zero leader.
    pub agreed: bool,
}

pub async fn view(channels: &[Channel]) -> View {
    let mut out = View::default();
    let mut leaders = Vec::new();
    for c in channels {
        if let Some(s) = status(c).await {
            out.answered += 1;
            out.term = out.term.max(s.term);
            out.commit_index = out.commit_index.max(s.commit_index);
            leaders.push(s.leader_id);
        }
    }
    leaders.sort_unstable();
    out.leader_id = leaders.iter().copied().max_by_key(|l| leaders.iter().filter(|x| *x == l).count()).unwrap_or(0);
    out.agreed = !leaders.is_empty() && out.leader_id != 0 && leaders.iter().all(|l| *l == out.leader_id);
    out
}

impl Cluster {
    /// Start [`NODES`] nodes as a new cluster (TLS unless `tls.insecure`) and wait until it
    /// serves acquires.
    pub async fn start(opts: &ClusterOpts, tls: &TlsOpts) -> anyhow::Result<Cluster> {
        let bin = opts.binary()?;
        let mut builder = tempfile::Builder::new();
        builder.prefix("fenceflake-bench-");
        let dir = match &opts.data_root {
            Some(root) => {
                std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
                builder.tempdir_in(root)
            }
            None => builder.tempdir(),
        }
        .context("creating the cluster's temp dir")?;
        let mut nodes = Vec::with_capacity(NODES);
        for id in 1..=NODES as u64 {
            nodes.push(Node {
                id,
                client_addr: format!("127.0.0.1:{}", free_port()?),
                peer_addr: format!("127.0.0.1:{}", free_port()?),
                data_dir: dir.path().join(format!("node-{id}")),
                child: None,
            });
        }
        let initial_cluster =
            nodes.iter().map(|n| format!("{}={}/{}", n.id, n.peer_addr, n.client_addr)).collect::<Vec<_>>().join(",");
        let side = Side::new(tls, &bin, &dir.path().join("pki"))?;
        let security = side.security(Role::Worker, CLIENT_NAME)?;
        let channels = nodes
            .iter()
            .map(|n| tls::channel(&n.client_addr, &security, &[Role::Node]))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let common_args = opts.common_args();
        let mut cluster = Cluster { dir: Some(dir), nodes, bin, initial_cluster, common_args, side, channels };
        if opts.keep {
            if let Some(dir) = cluster.dir.take() {
                eprintln!("cluster data and logs kept in {}", dir.keep().display());
            }
        }
        for id in 1..=NODES as u64 {
            cluster.spawn(id)?;
        }
        cluster.wait_healthy(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    fn node(&mut self, id: u64) -> anyhow::Result<&mut Node> {
        self.nodes.iter_mut().find(|n| n.id == id).with_context(|| format!("no node {id}"))
    }

    fn log_dir(&self) -> PathBuf {
        self.nodes.first().and_then(|n| n.data_dir.parent()).map(Path::to_path_buf).unwrap_or_default()
    }

    /// Start (or restart) node `id` on its data dir as it is. Logs go to `node-<id>.log`
    /// beside the data dirs, with the registry's default log filter (what ships).
    pub fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let log_path = self.log_dir().join(format!("node-{id}.log"));
        let (bin, initial_cluster, common_args) =
            (self.bin.clone(), self.initial_cluster.clone(), self.common_args.clone());
        let side = self.side.clone();
        let node = self.node(id)?;
        if node.child.is_some() {
            bail!("node {id} is already running");
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut cmd = Command::new(&bin);
        side.apply(&mut cmd, Role::Node, &id.to_string())?;
        let child = cmd
            .arg("registry")
            .arg(format!("--node-id={id}"))
            .arg(format!("--client-addr={}", node.client_addr))
            .arg(format!("--peer-addr={}", node.peer_addr))
            .arg("--data-dir")
            .arg(&node.data_dir)
            .arg(format!("--initial-cluster={initial_cluster}"))
            .args(&common_args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        node.child = Some(child);
        Ok(())
    }

    /// SIGKILL node `id` and reap it.
    pub fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        kill_and_reap(&mut self.node(id)?.child, &format!("node {id}"))
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.id).collect()
    }

    /// Client channel of node `id` (1-based).
    /// The registry nodes' client addresses, as the cluster reports them.
    pub async fn registry_addrs(&self) -> anyhow::Result<Vec<String>> {
        for c in self.channels() {
            if let Some(s) = status(&c).await {
                let addrs: Vec<String> = s.members.iter().map(|m| m.client_addr.clone()).collect();
                if !addrs.is_empty() {
                    return Ok(addrs);
                }
            }
        }
        anyhow::bail!("no registry node reported its members")
    }

    pub fn channel_of(&self, id: u64) -> anyhow::Result<Channel> {
        let i = usize::try_from(id).ok().and_then(|i| i.checked_sub(1)).context("node ids start at 1")?;
        self.channels.get(i).cloned().with_context(|| format!("no node {id}"))
    }

    pub fn channels(&self) -> Vec<Channel> {
        self.channels.clone()
    }

    /// Channels of the running nodes only.
    pub fn running_channels(&self) -> Vec<Channel> {
        self.running().into_iter().filter_map(|id| self.channel_of(id).ok()).collect()
    }

    /// How the nodes and clients talk: TLS with the cluster's CA, or plaintext.
    pub fn side(&self) -> &Side {
        &self.side
    }

    /// The running nodes: id, pid, client address and data dir (for per-node accounting).
    pub fn node_infos(&self) -> Vec<NodeInfo> {
        self.nodes
            .iter()
            .filter_map(|n| {
                n.child.as_ref().map(|c| NodeInfo {
                    id: n.id,
                    pid: c.id(),
                    client_addr: n.client_addr.clone(),
                    data_dir: n.data_dir.clone(),
                })
            })
            .collect()
    }

    /// Pids of the running nodes (for CPU accounting).
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(|n| n.child.as_ref().map(Child::id)).collect()
    }

    /// Wait until every running node answers, all name the same running leader, the cluster
    /// config is committed, and an acquire + release through a follower succeeds.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            let running = self.running();
            let v = view(&self.running_channels()).await;
            if v.agreed && v.answered == running.len() && running.contains(&v.leader_id) {
                let via = running.iter().copied().find(|id| *id != v.leader_id).unwrap_or(v.leader_id);
                if probe_acquire(&self.channel_of(via)?, "bench-health").await.is_ok() {
                    return Ok(v.leader_id);
                }
            }
            if Instant::now() > deadline {
                bail!("cluster not healthy after {timeout:?} (view {v:?}); node logs in {}", self.log_dir().display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Fail fast if a node we started has exited on its own.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        let log_dir = self.log_dir();
        for n in &mut self.nodes {
            if let Some(child) = n.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    n.child = None;
                    bail!("node {} exited with {status}; see {}/node-{}.log", n.id, log_dir.display(), n.id);
                }
            }
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut child) = n.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// One Acquire of any worker ID with a fresh holder, then its Release (both must succeed).
pub async fn probe_acquire(channel: &Channel, tag: &str) -> anyhow::Result<()> {
    let mut client = RegistryClient::new(channel.clone());
    let holder = holder_name(tag);
    let req = pb::AcquireRequest { holder, worker_id: None, ttl_ms: 10_000, incarnation: 0 };
    let lease = tokio::time::timeout(Duration::from_secs(3), client.acquire(req)).await??.into_inner();
    let rel = pb::ReleaseRequest { worker_id: lease.worker_id, token: lease.token, last_ts_ms: 0 };
    tokio::time::timeout(Duration::from_secs(3), client.release(rel)).await??;
    Ok(())
}

/// A holder name no other Acquire of any benchmark process uses: `<tag>/<pid>/<n>`.
pub fn holder_name(tag: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{tag}/{}/{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// User + system CPU seconds of process `pid` (all threads), from /proc (USER_HZ = 100).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Peak resident set size of process `pid` in bytes (`VmHWM` of /proc/<pid>/status).
pub fn rss_max_bytes(pid: u32) -> Option<u64> {
    parse_vm_hwm(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// `VmHWM:  1234 kB` of a /proc/<pid>/status text, in bytes.
pub fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    let mut parts = line.split_whitespace();
    let kib: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => kib.checked_mul(1024),
        _ => None,
    }
}

/// Bytes process `pid` caused to be sent to the storage layer so far (`write_bytes` of
/// /proc/<pid>/io; readable for our own children).
pub fn io_write_bytes(pid: u32) -> Option<u64> {
    parse_io_write_bytes(&std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?)
}

/// `write_bytes: N` of a /proc/<pid>/io text (not `cancelled_write_bytes`).
pub fn parse_io_write_bytes(io: &str) -> Option<u64> {
    io.lines().find_map(|l| l.strip_prefix("write_bytes:")).and_then(|v| v.trim().parse().ok())
}

/// Total size in bytes of the regular files under `dir` (best effort: files that vanish
/// while it walks, as compaction removes them, count as nothing; symlinks are not followed).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0;
    for entry in entries.flatten() {
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        if meta.is_dir() {
            total += dir_bytes(&entry.path());
        } else if meta.is_file() {
            total += meta.len();
        }
    }
    total
}

/// CPU seconds of this process.
pub fn self_cpu_seconds() -> f64 {
    cpu_seconds(std::process::id()).unwrap_or(0.0)
}

/// CPU seconds the whole machine spent busy (all CPUs, everything but idle and iowait), from
/// /proc/stat: compared with the servers' and the client's own CPU it shows foreign load.
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<f64> = line.split_whitespace().take(8).filter_map(|t| t.parse().ok()).collect();
    if ticks.len() < 8 {
        return None;
    }
    let total: f64 = ticks.iter().sum();
    Some((total - ticks[3] - ticks[4]) / 100.0)
}

/// The machine's load averages over 1, 5 and 15 minutes, as /proc/loadavg gives them: how
/// busy the shared machine was around a measurement.
pub fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// SIGKILL the process in `slot`, if any, and reap it (`what` names it in errors). Shared by
/// our cluster and the etcd one.
pub fn kill_and_reap(slot: &mut Option<std::process::Child>, what: &str) -> anyhow::Result<()> {
    if let Some(mut child) = slot.take() {
        child.kill().with_context(|| format!("SIGKILL of {what}"))?;
        child.wait().with_context(|| format!("reaping {what}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the peak RSS comes from the `VmHWM` line in kB, converted to bytes; a text
    /// without it (or in another unit) gives nothing rather than a wrong figure.
    #[test]
    fn vm_hwm_parses() {
        let status = "Name:\tfenceflake\nVmPeak:\t  900000 kB\nVmHWM:\t   51234 kB\nVmRSS:\t   40000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(51_234 * 1024));
        assert_eq!(parse_vm_hwm("Name:\tx\nVmRSS:\t 1 kB\n"), None);
        assert_eq!(parse_vm_hwm("VmHWM:\t 12 MB\n"), None);
    }

    /// Goal: `write_bytes` is read, not `cancelled_write_bytes` (which also ends in it).
    #[test]
    fn io_write_bytes_parses() {
        let io = "rchar: 100\nwchar: 200\nsyscr: 3\nsyscw: 4\nread_bytes: 4096\nwrite_bytes: 81920\ncancelled_write_bytes: 4096\n";
        assert_eq!(parse_io_write_bytes(io), Some(81_920));
        assert_eq!(parse_io_write_bytes("rchar: 1\ncancelled_write_bytes: 7\n"), None);
    }

    /// Goal: a data dir's size sums its files at every depth; a missing dir is 0.
    #[test]
    fn dir_bytes_sums_nested_files() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("a"), [0u8; 10])?;
        std::fs::create_dir(dir.path().join("sub"))?;
        std::fs::write(dir.path().join("sub").join("b"), [0u8; 32])?;
        assert_eq!(dir_bytes(dir.path()), 42);
        assert_eq!(dir_bytes(&dir.path().join("missing")), 0);
        Ok(())
    }
}
