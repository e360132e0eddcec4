//! A 5-member etcd 3.4 cluster of real `etcd` processes (Debian's `etcd-server`) on
//! 127.0.0.1, with data dirs in a temp dir on disk (real fsync): start, SIGKILL, restart,
//! status. The counterpart of `crate::cluster` for our registry, and stopped the same way:
//! every member started here is SIGKILLed by pid and reaped when the [`EtcdCluster`] is
//! dropped (on return, on error, and on Ctrl-C / SIGTERM through `main`'s `interrupted`).
//!
//! Like our registry, etcd runs with mutual TLS unless `--insecure`, on client and peer URLs
//! (`https://`, `--client-cert-auth`, `--peer-client-cert-auth`), with certificates of a CA
//! made in the cluster's dir by the `fenceflake` binary (member N holds the `node` certificate
//! `N`; the clients a `worker` one): the same handshake and record costs on both sides of
//! every comparison.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use fenceflake_proto::duration::parse_duration;
use fenceflake_proto::tls::Role;
use tonic::transport::Channel;

use super::pb;
use super::pb::kv_client::KvClient;
use super::pb::maintenance_client::MaintenanceClient;
use crate::cluster::free_port;
use crate::tls::{self, Side, TlsOpts, CLIENT_NAME};

/// Members of a benchmark cluster (the same size as our registry's).
pub const MEMBERS: usize = 5;

/// Starts of a new cluster before giving up: a member can lose its port (picked free, bound a
/// moment later) to another process on this shared machine, and then exits at once.
const START_ATTEMPTS: usize = 3;

/// How the benchmark's etcd cluster is started.
#[derive(Debug, Clone, Args)]
pub struct EtcdOpts {
    /// The etcd server binary (Debian's `etcd-server` package: /usr/bin/etcd, 3.4.x).
    #[arg(long, env = "FFBENCH_ETCD_BIN", default_value = "etcd")]
    pub etcd_bin: PathBuf,
    /// Where the members' temp data dirs go (default: the system temp dir; must be a real disk).
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// `--heartbeat-interval` of every member (etcd's default: 100ms).
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub heartbeat: Duration,
    /// `--election-timeout` of every member (etcd's default: 1000ms; at least 5 heartbeats).
    #[arg(long, default_value = "1000ms", value_parser = parse_duration)]
    pub election_timeout: Duration,
    /// Label of this configuration in the output (e.g. `default`, `tuned`).
    #[arg(long, default_value = "default")]
    pub profile: String,
    /// Keep the members' data dirs and logs after the run (their path is printed).
    #[arg(long)]
    pub keep: bool,
    /// The `fenceflake` binary that makes the TLS certificates (default: next to this binary).
    #[arg(long, env = "FENCEFLAKE_BIN")]
    pub fenceflake_bin: Option<PathBuf>,
}

impl EtcdOpts {
    /// The timing in the output rows, e.g. `heartbeat 100ms / election 1000ms`.
    pub fn timing(&self) -> String {
        format!("heartbeat {}ms / election {}ms", self.heartbeat.as_millis(), self.election_timeout.as_millis())
    }
}

#[derive(Debug)]
struct Member {
    /// 1-based, as in the output rows (`m1` .. `m5`).
    number: usize,
    client_url: String,
    peer_url: String,
    data_dir: PathBuf,
    /// etcd's own member ID, learned from its first Status answer.
    id: Option<u64>,
    child: Option<Child>,
}

impl Member {
    fn name(&self) -> String {
        format!("m{}", self.number)
    }
}

/// A running etcd cluster this process started.
#[derive(Debug)]
pub struct EtcdCluster {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    members: Vec<Member>,
    bin: PathBuf,
    initial_cluster: String,
    heartbeat_ms: u128,
    election_ms: u128,
    /// The members' and the clients' TLS (or plaintext).
    side: Side,
    channels: Vec<Channel>,
}

/// Maintenance.Status of the member behind `channel`, within 1 s.
pub async fn status(channel: &Channel) -> Option<pb::StatusResponse> {
    let mut client = MaintenanceClient::new(channel.clone());
    match tokio::time::timeout(Duration::from_secs(1), client.status(pb::StatusRequest {})).await {
        Ok(Ok(r)) => Some(r.into_inner()),
        _ => None,
    }
}

/// What a set of members (numbered) says about the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// Number of the member the answering members name as leader (0: none of them is it,
    /// or no leader is named).
    pub leader: usize,
    /// etcd's ID of that leader (0: none named).
    pub leader_id: u64,
    /// Highest Raft term and Raft index any answering member reports.
    pub term: u64,
    pub raft_index: u64,
    pub answered: usize,
    /// Every answering member names the same, non-zero leader.
    pub agreed: bool,
    /// (member number, etcd member ID) of every answering member.
    pub ids: Vec<(usize, u64)>,
    /// Server version the first answering member reports.
    pub version: String,
}

/// Asks every `(number, channel)` for its Status.
pub async fn view(members: &[(usize, Channel)]) -> View {
    let mut out = View::default();
    let mut leaders = Vec::new();
    for (number, c) in members {
        if let Some(s) = status(c).await {
            out.answered += 1;
            out.term = out.term.max(s.raft_term);
            out.raft_index = out.raft_index.max(s.raft_index);
            if out.version.is_empty() {
                out.version = s.version.clone();
            }
            if let Some(h) = &s.header {
                out.ids.push((*number, h.member_id));
            }
            leaders.push(s.leader);
        }
    }
    leaders.sort_unstable();
    out.leader_id = leaders.iter().copied().max_by_key(|l| leaders.iter().filter(|x| *x == l).count()).unwrap_or(0);
    out.agreed = !leaders.is_empty() && out.leader_id != 0 && leaders.iter().all(|l| *l == out.leader_id);
    out.leader = out.ids.iter().find(|(_, id)| *id == out.leader_id && out.leader_id != 0).map_or(0, |(n, _)| *n);
    out
}

/// Channels numbered 1.. in list order (an external cluster's `--endpoints`).
pub fn numbered(channels: &[Channel]) -> Vec<(usize, Channel)> {
    channels.iter().cloned().enumerate().map(|(i, c)| (i + 1, c)).collect()
}

/// One unconditional write (a txn putting `key`) through `channel`, within 3 s.
pub async fn probe_write(channel: &Channel, key: &str) -> anyhow::Result<()> {
    let mut kv = KvClient::new(channel.clone());
    let put = pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: key.as_bytes().to_vec(),
            value: b"1".to_vec(),
            lease: 0,
        })),
    };
    let txn = pb::TxnRequest { compare: Vec::new(), success: vec![put], failure: Vec::new() };
    tokio::time::timeout(Duration::from_secs(3), kv.txn(txn)).await??;
    Ok(())
}

impl EtcdCluster {
    /// Start [`MEMBERS`] members as a new cluster and wait until a write through a follower
    /// commits; on fresh ports again if that fails (up to [`START_ATTEMPTS`] times).
    pub async fn start(opts: &EtcdOpts, tls: &TlsOpts) -> anyhow::Result<EtcdCluster> {
        let mut attempt = 1;
        loop {
            match Self::start_once(opts, tls).await {
                Ok(cluster) => return Ok(cluster),
                Err(e) if attempt < START_ATTEMPTS => {
                    eprintln!("etcd cluster did not start ({e:#}); again on fresh ports ({attempt}/{START_ATTEMPTS})");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn start_once(opts: &EtcdOpts, tls: &TlsOpts) -> anyhow::Result<EtcdCluster> {
        let version =
            Command::new(&opts.etcd_bin).arg("--version").stdin(Stdio::null()).output().with_context(|| {
                format!(
                    "running `{} --version`: install Debian's etcd-server (or pass --etcd-bin)",
                    opts.etcd_bin.display()
                )
            })?;
        anyhow::ensure!(version.status.success(), "`{} --version` failed", opts.etcd_bin.display());
        let mut builder = tempfile::Builder::new();
        builder.prefix("fenceflake-bench-etcd-");
        let dir = match &opts.data_root {
            Some(root) => {
                std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
                builder.tempdir_in(root)
            }
            None => builder.tempdir(),
        }
        .context("creating the cluster's temp dir")?;
        let root = dir.path().to_path_buf();
        let side = if tls.is_tls() {
            Side::new(tls, &tls::fenceflake_binary(opts.fenceflake_bin.as_deref())?, &root.join("pki"))?
        } else {
            Side::Insecure
        };
        let scheme = if side.is_tls() { "https" } else { "http" };
        let mut members = Vec::with_capacity(MEMBERS);
        for number in 1..=MEMBERS {
            members.push(Member {
                number,
                client_url: format!("{scheme}://127.0.0.1:{}", free_port()?),
                peer_url: format!("{scheme}://127.0.0.1:{}", free_port()?),
                data_dir: root.join(format!("m{number}")),
                id: None,
                child: None,
            });
        }
        let initial_cluster =
            members.iter().map(|m| format!("{}={}", m.name(), m.peer_url)).collect::<Vec<_>>().join(",");
        let security = side.security(Role::Worker, CLIENT_NAME)?;
        let channels = members
            .iter()
            .map(|m| tls::channel(&m.client_url, &security, &[Role::Node]))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut cluster = EtcdCluster {
            dir: Some(dir),
            root,
            members,
            bin: opts.etcd_bin.clone(),
            initial_cluster,
            heartbeat_ms: opts.heartbeat.as_millis(),
            election_ms: opts.election_timeout.as_millis(),
            side,
            channels,
        };
        if opts.keep {
            if let Some(dir) = cluster.dir.take() {
                eprintln!("etcd data and logs kept in {}", dir.keep().display());
            }
        }
        for number in 1..=MEMBERS {
            cluster.spawn(number)?;
        }
        cluster.wait_healthy(Duration::from_secs(60)).await?;
        Ok(cluster)
    }

    fn member(&mut self, number: usize) -> anyhow::Result<&mut Member> {
        self.members.iter_mut().find(|m| m.number == number).with_context(|| format!("no member {number}"))
    }

    fn log_dir(&self) -> &Path {
        &self.root
    }

    /// Start (or restart) member `number` on its data dir as it is (a restarted member
    /// ignores the `--initial-cluster*` flags and rejoins). Its log goes to `m<number>.log`.
    pub fn spawn(&mut self, number: usize) -> anyhow::Result<()> {
        let log_path = self.root.join(format!("m{number}.log"));
        let (bin, initial_cluster) = (self.bin.clone(), self.initial_cluster.clone());
        let (heartbeat, election) = (self.heartbeat_ms.to_string(), self.election_ms.to_string());
        let files = self.side.files(Role::Node, &number.to_string())?;
        let m = self.member(number)?;
        if m.child.is_some() {
            bail!("member {number} is already running");
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut cmd = Command::new(&bin);
        cmd.arg("--name")
            .arg(m.name())
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &m.client_url, "--advertise-client-urls", &m.client_url])
            .args(["--listen-peer-urls", &m.peer_url, "--initial-advertise-peer-urls", &m.peer_url])
            .args(["--initial-cluster", &initial_cluster, "--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "fenceflake-bench"])
            .args(["--heartbeat-interval", &heartbeat, "--election-timeout", &election])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .args(files.map(|f| tls_flags(&f)).unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // etcd reads ETCD_* variables as flags: none of the caller's may change the setup.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
        m.child = Some(child);
        Ok(())
    }

    /// SIGKILL member `number` and reap it.
    pub fn kill(&mut self, number: usize) -> anyhow::Result<()> {
        crate::cluster::kill_and_reap(&mut self.member(number)?.child, &format!("etcd member {number}"))
    }

    pub fn running(&self) -> Vec<usize> {
        self.members.iter().filter(|m| m.child.is_some()).map(|m| m.number).collect()
    }

    /// Client channel of member `number` (1-based).
    pub fn channel_of(&self, number: usize) -> anyhow::Result<Channel> {
        number.checked_sub(1).and_then(|i| self.channels.get(i)).cloned().with_context(|| format!("no member {number}"))
    }

    /// Client channels of every member, in member order.
    pub fn channels(&self) -> Vec<Channel> {
        self.channels.clone()
    }

    /// (number, channel) of the running members.
    pub fn running_members(&self) -> Vec<(usize, Channel)> {
        self.running().into_iter().filter_map(|n| self.channel_of(n).ok().map(|c| (n, c))).collect()
    }

    /// (number, etcd member ID) of every member whose ID is known.
    pub fn ids(&self) -> Vec<(usize, u64)> {
        self.members.iter().filter_map(|m| m.id.map(|id| (m.number, id))).collect()
    }

    /// Pids of the running members (for CPU accounting).
    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().filter_map(|m| m.child.as_ref().map(Child::id)).collect()
    }

    /// Wait until every running member answers, all name the same running leader, and a
    /// write through a follower commits; returns the leader's number.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            let running = self.running();
            let v = view(&self.running_members()).await;
            for (number, id) in &v.ids {
                self.member(*number)?.id = Some(*id);
            }
            if v.agreed && v.answered == running.len() && running.contains(&v.leader) {
                let via = running.iter().copied().find(|n| *n != v.leader).unwrap_or(v.leader);
                if probe_write(&self.channel_of(via)?, "/fenceflake-bench/health").await.is_ok() {
                    return Ok(v.leader);
                }
            }
            if Instant::now() > deadline {
                bail!("etcd not healthy after {timeout:?} (view {v:?}); member logs in {}", self.log_dir().display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Fail fast if a member we started has exited on its own, quoting the end of its log
    /// (the temp dir holding it is gone once the cluster is dropped, unless `--keep`).
    fn check_alive(&mut self) -> anyhow::Result<()> {
        let root = self.root.clone();
        for m in &mut self.members {
            if let Some(child) = m.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    m.child = None;
                    let log = root.join(format!("m{}.log", m.number));
                    bail!(
                        "etcd member {} exited with {status}; the end of {}:\n{}",
                        m.number,
                        log.display(),
                        log_tail(&log)
                    );
                }
            }
        }
        Ok(())
    }
}

/// etcd's flags for mutual TLS with `files` on its client and peer URLs.
fn tls_flags(files: &fenceflake_proto::tls::TlsFiles) -> Vec<String> {
    let (ca, cert, key) = (files.ca.display(), files.cert.display(), files.key.display());
    vec![
        format!("--cert-file={cert}"),
        format!("--key-file={key}"),
        format!("--trusted-ca-file={ca}"),
        "--client-cert-auth".into(),
        format!("--peer-cert-file={cert}"),
        format!("--peer-key-file={key}"),
        format!("--peer-trusted-ca-file={ca}"),
        "--peer-client-cert-auth".into(),
    ]
}

/// The last lines of a member's log (etcd logs JSON lines with zap).
fn log_tail(path: &Path) -> String {
    const LINES: usize = 5;
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LINES)..].join("\n")
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
