//! A registry cluster of real `fenceflake registry` processes on loopback.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fenceflake_proto::tls::{Role, Security};
use fenceflake_proto::v1 as pb;
use fenceflake_proto::v1::registry_client::RegistryClient;
use tonic::transport::Channel;

use crate::certs::{self, Certs, TEST_NAME};

/// How long one node's thread dump may take (`timeout`'s duration).
const GDB_LIMIT: &str = "20s";
use crate::{eventually, free_port};

/// One registry process and where it lives.
#[derive(Debug)]
pub struct RegistryProcess {
    pub node_id: u64,
    pub client_addr: String,
    pub peer_addr: String,
    pub data_dir: PathBuf,
    /// Extra arguments for this node only (e.g. `--initial-cluster-state existing`).
    pub extra_args: Vec<String>,
    child: Option<Child>,
}

/// How long one status call may take before a wait polls again on a fresh connection.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// A cluster under test, on mutual TLS: every node has the node certificate of its id from
/// the cluster's own CA ([`Certs`]), and every client the helpers make has a certificate of the
/// role it needs. Dropping it SIGKILLs every node; on a test failure the directory with data
/// and logs (and the certificates) is kept and its path printed.
#[derive(Debug)]
pub struct Cluster {
    pub dir: tempfile::TempDir,
    /// The cluster's CA and certificates (shared by its workers and ctl runs).
    pub certs: Certs,
    pub nodes: BTreeMap<u64, RegistryProcess>,
    initial_cluster: String,
    /// Arguments given to every node (timings, TTL bounds).
    common_args: Vec<String>,
    /// Environment given to every node (e.g. libfaketime's preload).
    common_env: Vec<(String, String)>,
}

/// Short TTL bounds and cool-down keep expiry tests fast.
pub const TEST_COOL_DOWN_MS: u64 = 500;

impl Cluster {
    /// Start `size` nodes as a new cluster and wait until every node serves and knows the leader.
    pub async fn start(size: u64, common_args: &[&str]) -> Cluster {
        Self::start_with_env(size, common_args, &[]).await
    }

    /// Like `start`, with extra environment variables for every node.
    pub async fn start_with_env(size: u64, common_args: &[&str], env: &[(&str, &str)]) -> Cluster {
        Self::start_with_certs(Certs::new(), size, common_args, env).await
    }

    /// Like `start_with_env`, with the CA and certificates of `certs` (e.g. another cluster's,
    /// so that one client may talk to both).
    pub async fn start_with_certs(certs: Certs, size: u64, common_args: &[&str], env: &[(&str, &str)]) -> Cluster {
        let mut cluster = Self::unstarted(certs, size, common_args, env);
        for node_id in 1..=size {
            cluster.spawn(node_id);
        }
        let leader = cluster.wait_all_know_the_leader(Duration::from_secs(15)).await;
        // Incarnations are in force once the leader has seen every member run this release.
        eventually(Duration::from_secs(15), "the current apply rules in force", || async {
            cluster.status(leader).await.filter(|s| s.apply_rules >= 2).map(drop)
        })
        .await;
        cluster
    }

    /// A new cluster of `size` nodes described (addresses, data dirs) but none started: the
    /// caller spawns the ones it wants.
    pub fn unstarted(certs: Certs, size: u64, common_args: &[&str], env: &[(&str, &str)]) -> Cluster {
        let dir = tempfile::Builder::new().prefix("fenceflake-cluster-").tempdir().expect("create a temp dir");
        let mut nodes = BTreeMap::new();
        for node_id in 1..=size {
            nodes.insert(node_id, Self::describe(&dir, node_id));
        }
        let initial_cluster = nodes
            .values()
            .map(|n| format!("{}={}/{}", n.node_id, n.peer_addr, n.client_addr))
            .collect::<Vec<_>>()
            .join(",");
        let mut args = vec!["--cool-down".to_string(), format!("{TEST_COOL_DOWN_MS}ms")];
        args.extend(common_args.iter().map(|s| s.to_string()));
        let common_env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Cluster { dir, certs, nodes, initial_cluster, common_args: args, common_env }
    }

    fn describe(dir: &tempfile::TempDir, node_id: u64) -> RegistryProcess {
        RegistryProcess {
            node_id,
            client_addr: format!("127.0.0.1:{}", free_port()),
            peer_addr: format!("127.0.0.1:{}", free_port()),
            data_dir: dir.path().join(format!("node-{node_id}")),
            extra_args: Vec::new(),
            child: None,
        }
    }

    /// Start (or restart) node `node_id` with its data dir as it is.
    pub fn spawn(&mut self, node_id: u64) {
        self.spawn_with(node_id, &[], &[]);
    }

    /// [`Cluster::spawn`] with extra flags and environment for this start only (a metrics
    /// port, libfaketime).
    pub fn spawn_with(&mut self, node_id: u64, args: &[&str], env: &[(&str, &OsStr)]) {
        let log_path = self.dir.path().join(format!("node-{node_id}.log"));
        let node = self.nodes.get_mut(&node_id).expect("node exists");
        assert!(node.child.is_none(), "node {node_id} is already running");
        let log = File::options().create(true).append(true).open(&log_path).expect("open node log");
        let child = self
            .certs
            .command(Role::Node, &node_id.to_string())
            .arg("registry")
            .args(["--node-id", &node_id.to_string()])
            .args(["--client-addr", &node.client_addr])
            .args(["--peer-addr", &node.peer_addr])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--initial-cluster", &self.initial_cluster])
            .args(&self.common_args)
            .args(&node.extra_args)
            .args(args)
            // FENCEFLAKE_TEST_NODE_LOG overrides it to chase a flake (e.g. `info,openraft=warn,
            // fenceflake_registry::leader=debug`).
            .env("RUST_LOG", std::env::var("FENCEFLAKE_TEST_NODE_LOG").unwrap_or_else(|_| "info,openraft=warn".into()))
            .envs(self.common_env.iter().map(|(k, v)| (k, v)))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn fenceflake registry");
        node.child = Some(child);
    }

    /// Add a fresh node (not started) that will join with `--initial-cluster-state existing`.
    pub fn add_node(&mut self, node_id: u64) -> &RegistryProcess {
        let mut node = Self::describe(&self.dir, node_id);
        node.extra_args = vec!["--initial-cluster-state".into(), "existing".into()];
        self.nodes.insert(node_id, node);
        &self.nodes[&node_id]
    }

    /// SIGKILL node `node_id` and reap it.
    pub fn kill(&mut self, node_id: u64) {
        if let Some(mut child) = self.nodes.get_mut(&node_id).and_then(|n| n.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Send `signal` (a name for `kill -s`: STOP, CONT) to node `node_id`.
    pub fn signal(&self, node_id: u64, signal: &str) {
        let pid = self.nodes[&node_id].child.as_ref().expect("node is running").id().to_string();
        let status = Command::new("kill").args(["-s", signal, &pid]).status().expect("run kill");
        assert!(status.success(), "kill -s {signal} {pid} (node {node_id}) failed");
    }

    /// Wait up to `timeout` for node `node_id` to exit by itself; its exit status, or `None`
    /// if it is still running.
    pub async fn wait_exit(&mut self, node_id: u64, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let node = self.nodes.get_mut(&node_id).expect("node exists");
            let child = node.child.as_mut().expect("node was started");
            if let Some(status) = child.try_wait().expect("poll child") {
                node.child = None;
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything node `node_id` logged so far.
    pub fn log(&self, node_id: u64) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node-{node_id}.log"))).unwrap_or_default()
    }

    /// Delete a (stopped) node's data dir: a lost disk.
    pub fn wipe(&mut self, node_id: u64) {
        let node = &self.nodes[&node_id];
        assert!(node.child.is_none(), "stop node {node_id} before wiping it");
        let _ = std::fs::remove_dir_all(&node.data_dir);
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes.values().filter(|n| n.child.is_some()).map(|n| n.node_id).collect()
    }

    pub fn client_addrs(&self) -> Vec<String> {
        self.nodes.values().map(|n| n.client_addr.clone()).collect()
    }

    /// TLS of an in-process client with the certificate of `role` (name [`TEST_NAME`]).
    pub fn security(&self, role: Role) -> Security {
        self.certs.security(role, TEST_NAME)
    }

    /// The TLS env vars of a process with the identity `role`/`name` of this cluster's CA.
    pub fn env_for(&self, role: Role, name: &str) -> Vec<(String, String)> {
        self.certs.env(role, name)
    }

    /// The `fenceflake` binary with this cluster's certificate of `role` (name [`TEST_NAME`]):
    /// `Role::Operator` for ctl, `Role::Client` for mint.
    pub fn fenceflake(&self, role: Role) -> Command {
        self.certs.command(role, TEST_NAME)
    }

    /// A client of node `node_id`'s public API as a worker (Acquire, Renew, Release, reads;
    /// every such client is the same identity, so it owns the leases any of them acquired).
    /// Lazy: connecting never fails here.
    pub fn client(&self, node_id: u64) -> RegistryClient<Channel> {
        self.client_as(node_id, Role::Worker)
    }

    /// A client of node `node_id` as an operator (quarantine, membership, audit, backups).
    pub fn operator(&self, node_id: u64) -> RegistryClient<Channel> {
        self.client_as(node_id, Role::Operator)
    }

    /// A client of node `node_id` with the certificate of `role`.
    pub fn client_as(&self, node_id: u64, role: Role) -> RegistryClient<Channel> {
        let addr = &self.nodes[&node_id].client_addr;
        RegistryClient::new(certs::channel(addr, &self.security(role), &[Role::Node], Duration::from_secs(10)))
    }

    /// Status as node `node_id` sees it (asked by an operator), if it answers.
    pub async fn status(&self, node_id: u64) -> Option<pb::ClusterStatusResponse> {
        let mut client = self.operator(node_id);
        client.cluster_status(pb::ClusterStatusRequest {}).await.ok().map(|r| r.into_inner())
    }

    /// [`Cluster::status`] within [`STATUS_TIMEOUT`], for the waits below, which poll it: one
    /// call stuck on a connection made while the node was still starting must not use up a
    /// whole wait (seen: a healthy cluster with a leader within a second, and a 15 s wait for
    /// it that timed out).
    async fn polled_status(&self, node_id: u64) -> Option<pb::ClusterStatusResponse> {
        tokio::time::timeout(STATUS_TIMEOUT, self.status(node_id)).await.ok()?
    }

    /// Wait until every running node answers on its client port and names the same running
    /// leader. Waiting for just one node is not enough: on a loaded machine a slower process
    /// may not have bound its client port yet when the test sends it its first request.
    pub async fn wait_all_know_the_leader(&self, timeout: Duration) -> u64 {
        eventually(timeout, "every node serving with one leader", || async {
            let mut leaders = BTreeSet::new();
            for node_id in self.running() {
                let s = self.polled_status(node_id).await?;
                leaders.insert(s.leader_id);
            }
            let leader = *leaders.first()?;
            (leaders.len() == 1 && leader != 0 && self.running().contains(&leader)).then_some(leader)
        })
        .await
    }

    /// Wait until every running node has applied the same log index, and return it.
    pub async fn wait_all_applied(&self, timeout: Duration) -> u64 {
        eventually(timeout, "every node applied the same index", || async {
            let mut applied = BTreeSet::new();
            for node_id in self.running() {
                applied.insert(self.polled_status(node_id).await?.applied_index);
            }
            (applied.len() == 1).then(|| applied.into_iter().next()).flatten()
        })
        .await
    }

    /// Wait until some running node reports a leader that is running, and return it.
    pub async fn wait_leader(&self, timeout: Duration) -> u64 {
        eventually(timeout, "a registry leader", || async {
            for node_id in self.running() {
                if let Some(s) = self.polled_status(node_id).await {
                    if s.leader_id != 0 && self.running().contains(&s.leader_id) && s.epoch_ms != 0 {
                        return Some(s.leader_id);
                    }
                }
            }
            None
        })
        .await
    }
}

/// `fenceflake ctl --json --registry <every node> <args> <file>` as an operator, run to completion (the
/// backup commands: `snapshot export FILE`, `snapshot import FILE`).
pub fn ctl_json(cluster: &Cluster, args: &[&str], file: &std::path::Path) -> std::process::Output {
    cluster
        .fenceflake(Role::Operator)
        .args(["ctl", "--json", "--registry", &cluster.client_addrs().join(",")])
        .args(args)
        .arg(file)
        .output()
        .expect("run fenceflake ctl")
}

/// The JSON a successful `ctl --json` printed.
pub fn json_of(output: &std::process::Output) -> serde_json::Value {
    assert!(output.status.success(), "ctl failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("ctl --json prints JSON")
}

impl Cluster {
    /// Beside each running node's log, what its threads are doing (`gdb`'s backtraces), for a
    /// failing test: a node that stops answering with nothing in its log (seen at cluster
    /// start on a loaded machine) shows where it is stuck. Skipped, saying so, without gdb.
    fn dump_threads(&self) {
        for node in self.nodes.values() {
            let Some(child) = &node.child else { continue };
            let path = self.dir.path().join(format!("node-{}.threads.txt", node.node_id));
            let Ok(out) = File::create(&path) else { continue };
            let Ok(err) = out.try_clone() else { continue };
            let pid = child.id().to_string();
            // Bounded: gdb waits for ever on a process stuck in the kernel (an fsync that does
            // not return), and the test's own time limit would then hide where its data is kept.
            let args = [
                GDB_LIMIT,
                "gdb",
                "-p",
                &pid,
                "-batch",
                "-nx",
                "-ex",
                "set pagination off",
                "-ex",
                "thread apply all bt",
            ];
            let status = Command::new("timeout").args(args).stdin(Stdio::null()).stdout(out).stderr(err).status();
            // `timeout` answers 127 for a command it cannot find.
            if status.is_err() || status.is_ok_and(|s| s.code() == Some(127)) {
                eprintln!("no thread dumps of the registry nodes: gdb (or timeout) is not installed");
                let _ = std::fs::remove_file(path);
                return;
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_threads();
        }
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
        if std::thread::panicking() {
            let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir")).keep();
            eprintln!("cluster data, node logs and thread dumps kept in {}", kept.display());
        }
    }
}
