//! TLS in operation, with real processes: a running plaintext cluster and worker moved to
//! mutual TLS by the rolling procedure of docs/security.md (`--tls-transitional` in between),
//! and certificates rotated under a serving cluster — no worker parks in either.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fenceflake_proto::tls::{Role, Security, TlsState};
use fenceflake_proto::v1 as pb;
use fenceflake_proto::v1::generator_client::GeneratorClient;
use fenceflake_proto::v1::registry_client::RegistryClient;
use fenceflake_tests::certs::{channel, tls_env, Certs, ENV_INSECURE};
use fenceflake_tests::cluster::Cluster;
use fenceflake_tests::worker::WorkerProcess;
use fenceflake_tests::{eventually, fenceflake_bin, free_port};

/// How a process of the rollout talks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plaintext,
    Transitional,
    Tls,
}

/// One process of the rollout: a command line, restarted in another mode.
struct Proc {
    args: Vec<String>,
    role: Role,
    name: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn start(&mut self, certs: &Certs, mode: Mode) {
        let log = File::options().create(true).append(true).open(&self.log).expect("open log");
        let mut cmd = Command::new(fenceflake_bin());
        cmd.args(&self.args).env("RUST_LOG", "info,openraft=warn").env_remove(ENV_INSECURE);
        match mode {
            Mode::Plaintext => cmd.env(ENV_INSECURE, "true"),
            Mode::Transitional => {
                cmd.envs(tls_env(&certs.files(self.role, &self.name))).env("FENCEFLAKE_TLS_TRANSITIONAL", "true")
            }
            Mode::Tls => cmd.envs(tls_env(&certs.files(self.role, &self.name))),
        };
        let child = cmd.stdin(Stdio::null()).stdout(log.try_clone().expect("dup")).stderr(log).spawn().expect("spawn");
        self.child = Some(child);
    }

    /// SIGTERM (a worker releases its lease), wait, then start again in `mode`.
    async fn restart(&mut self, certs: &Certs, mode: Mode) {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill").args(["-s", "TERM", &child.id().to_string()]).status();
        eventually(Duration::from_secs(15), "the process to stop", || {
            let done = child.try_wait().expect("poll").is_some();
            async move { done.then_some(()) }
        })
        .await;
        self.start(certs, mode);
    }
}

impl Proc {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- {} ---\n{}", self.log.display(), std::fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}

fn registry_node(dir: &Path, id: u64, client: &str, peer: &str, initial_cluster: &str) -> Proc {
    let args = [
        "registry",
        "--node-id",
        &id.to_string(),
        "--client-addr",
        client,
        "--peer-addr",
        peer,
        "--initial-cluster",
        initial_cluster,
        "--cool-down",
        "500ms",
        "--data-dir",
    ];
    let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    args.push(dir.join(format!("node-{id}")).display().to_string());
    Proc { args, role: Role::Node, name: id.to_string(), log: dir.join(format!("node-{id}.log")), child: None }
}

/// A transitional client: TLS to servers that speak it, plaintext to those that do not yet.
fn transitional(certs: &Certs, role: Role) -> Security {
    let state = TlsState::load(certs.files(role, "rollout")).expect("load");
    state.set_transitional(true);
    Security::Tls(state)
}

/// Polls the worker's status every 50 ms until `stop`; every park that is not a restart
/// (`BOOTING`, `STOPPING`), and how many polls were answered (a watcher that never got an
/// answer would prove nothing).
fn watch_parks(
    addr: String,
    security: Security,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Vec<String>, usize)> {
    tokio::spawn(async move {
        let mut client = GeneratorClient::new(channel(&addr, &security, &[Role::Worker], Duration::from_secs(1)));
        let (mut parks, mut answered) = (Vec::new(), 0);
        while !stop.load(Ordering::Relaxed) {
            if let Ok(status) = client.status(pb::StatusRequest {}).await {
                answered += 1;
                let s = status.into_inner();
                if s.state == "PARKED" && !matches!(s.park_reason.as_str(), "BOOTING" | "STOPPING") {
                    parks.push(s.park_reason);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (parks, answered)
    })
}

async fn no_parks(stop: &AtomicBool, watcher: tokio::task::JoinHandle<(Vec<String>, usize)>, during: &str) {
    stop.store(true, Ordering::Relaxed);
    let (parks, answered) = watcher.await.expect("watcher");
    assert!(answered >= 10, "only {answered} status polls were answered during {during}");
    assert_eq!(parks, Vec::<String>::new(), "the worker parked during {during}");
}

async fn serving_leader(addrs: &[String], security: &Security) {
    for addr in addrs {
        let mut client = RegistryClient::new(channel(addr, security, &[Role::Node], Duration::from_secs(1)));
        eventually(Duration::from_secs(20), &format!("{addr} to know a leader"), || {
            let mut client = client.clone();
            async move {
                client.cluster_status(pb::ClusterStatusRequest {}).await.ok().filter(|s| s.get_ref().leader_id != 0)
            }
        })
        .await;
        let _ = &mut client;
    }
}

async fn worker_serving(addr: &str, security: &Security) {
    let client = GeneratorClient::new(channel(addr, security, &[Role::Worker], Duration::from_secs(1)));
    eventually(Duration::from_secs(30), "the worker to serve", || {
        let mut client = client.clone();
        async move { client.generate(pb::GenerateRequest {}).await.ok() }
    })
    .await;
}

/// Goal (issue 8, point 9): a running plaintext cluster and its worker move to mutual TLS by
/// the documented rolling procedure — nodes transitional one at a time, the worker, then
/// every process TLS only — with the worker serving throughout (no park but restarts), and
/// at the end plaintext callers are refused.
#[tokio::test]
async fn a_plaintext_cluster_moves_to_tls_without_parking() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = Certs::new();
    let ports: Vec<(String, String)> =
        (0..3).map(|_| (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()))).collect();
    let ic: Vec<String> = ports.iter().enumerate().map(|(i, (c, p))| format!("{}={p}/{c}", i + 1)).collect();
    let clients: Vec<String> = ports.iter().map(|(c, _)| c.clone()).collect();
    let mut nodes: Vec<Proc> = ports
        .iter()
        .enumerate()
        .map(|(i, (c, p))| registry_node(dir.path(), i as u64 + 1, c, p, &ic.join(",")))
        .collect();
    for node in &mut nodes {
        node.start(&certs, Mode::Plaintext);
    }
    let operator = transitional(&certs, Role::Operator);
    serving_leader(&clients, &operator).await;

    let worker_addr = format!("127.0.0.1:{}", free_port());
    let worker_args = [
        "worker",
        "--listen",
        &worker_addr,
        "--registry",
        &clients.join(","),
        "--hostname",
        "rollout-w1",
        "--state-dir",
    ];
    let mut args: Vec<String> = worker_args.iter().map(|s| s.to_string()).collect();
    args.push(dir.path().join("w1-state").display().to_string());
    let mut worker = Proc { args, role: Role::Worker, name: "w1".into(), log: dir.path().join("w1.log"), child: None };
    worker.start(&certs, Mode::Plaintext);
    let caller = transitional(&certs, Role::Client);
    worker_serving(&worker_addr, &caller).await;
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_parks(worker_addr.clone(), caller.clone(), stop.clone());

    for mode in [Mode::Transitional, Mode::Tls] {
        for node in &mut nodes {
            node.restart(&certs, mode).await;
            serving_leader(&clients, &operator).await;
        }
        worker.restart(&certs, mode).await;
        worker_serving(&worker_addr, &caller).await;
    }
    no_parks(&stop, watcher, "the move").await;
    assert!(worker.log_text().contains("--tls-transitional"), "the worker never ran transitional");

    let tls_only = Security::Tls(TlsState::load(certs.files(Role::Client, "rollout")).expect("load"));
    worker_serving(&worker_addr, &tls_only).await;
    let plaintext =
        GeneratorClient::new(channel(&worker_addr, &Security::Insecure, &[Role::Worker], Duration::from_secs(2)))
            .status(pb::StatusRequest {})
            .await
            .expect_err("plaintext refused at the end");
    assert_eq!(plaintext.code(), tonic::Code::Unauthenticated, "{plaintext:?}");
    let plaintext =
        RegistryClient::new(channel(&clients[0], &Security::Insecure, &[Role::Node], Duration::from_secs(2)))
            .cluster_status(pb::ClusterStatusRequest {})
            .await
            .expect_err("plaintext refused at the end");
    assert_eq!(plaintext.code(), tonic::Code::Unauthenticated, "{plaintext:?}");
}

/// Goal (issue 8, point 6): a registry node's and a worker's certificates rotated while
/// serving are picked up without a restart (the log says so, new connections present the new
/// certificate) and the worker never parks.
#[tokio::test]
async fn rotated_certificates_are_picked_up_while_serving() {
    let cluster = Cluster::start(3, &[]).await;
    let worker = WorkerProcess::spawn(&cluster, "w1", &cluster.client_addrs(), &[]);
    worker.wait_serving(Duration::from_secs(30)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_parks(worker.addr.clone(), cluster.security(Role::Client), stop.clone());

    for (role, name) in [("node", "1"), ("worker", "w1")] {
        let out = cluster.certs.run(&["issue", "--role", role, "--name", name, "--force"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    eventually(Duration::from_secs(15), "both processes to reload their certificates", || {
        let (node, w) = (cluster.log(1), worker.log());
        async move { (node.contains("TLS files changed") && w.contains("TLS files changed")).then_some(()) }
    })
    .await;
    // New connections, made with the rotated certificates on both sides, work.
    let fresh = Security::Tls(TlsState::load(cluster.certs.files(Role::Operator, "fresh")).expect("load"));
    let mut client =
        RegistryClient::new(channel(&cluster.nodes[&1].client_addr, &fresh, &[Role::Node], Duration::from_secs(2)));
    client.cluster_status(pb::ClusterStatusRequest {}).await.expect("node 1 serves with its new certificate");
    let ids = worker.batch(10).await.expect("worker serves with its new certificate");
    assert_eq!(ids.len(), 10);
    tokio::time::sleep(Duration::from_secs(3)).await;
    no_parks(&stop, watcher, "the rotation").await;
}
