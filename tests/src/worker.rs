//! A generator worker as a real `fenceflake worker` process on loopback: start, SIGKILL,
//! SIGSTOP/SIGCONT, SIGTERM, restart with the same state dir, and talk to it over gRPC. It runs
//! on mutual TLS with the worker certificate `worker/<name>` of its cluster's CA; the tests call
//! it with a `client` certificate.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use fenceflake_proto::tls::Role;
use fenceflake_proto::v1 as pb;
use fenceflake_proto::v1::generator_client::GeneratorClient;
use tonic::transport::Channel;

use crate::certs::{self, Certs, TEST_NAME};
use crate::cluster::Cluster;
use crate::{eventually, free_port};

/// Short leases keep expiry tests fast: deadline 1.5 s after each renewal's send time.
pub const SHORT_LEASE: [&str; 4] = ["--lease-ttl", "2s", "--margin", "500ms"];

/// One worker process; dropping it SIGKILLs it (after a SIGCONT, in case it is stopped).
#[derive(Debug)]
pub struct WorkerProcess {
    pub name: String,
    pub addr: String,
    pub state_dir: PathBuf,
    pub log_path: PathBuf,
    /// The CA and certificates of the cluster it was started for.
    pub certs: Certs,
    /// The name in its certificate (`worker/<identity>`): its `name` unless started
    /// [`WorkerProcess::spawn_as`] another.
    pub identity: String,
    args: Vec<String>,
    child: Option<Child>,
}

impl WorkerProcess {
    /// Start a worker named `name` (its certificate: `worker/<name>` of `cluster`'s CA) with
    /// its state dir and log in `cluster`'s dir, against `registry`, with `extra` flags.
    pub fn spawn(cluster: &Cluster, name: &str, registry: &[String], extra: &[&str]) -> WorkerProcess {
        WorkerProcess::spawn_as(cluster, name, name, registry, extra)
    }

    /// [`WorkerProcess::spawn`] with the certificate of `worker/<identity>` (several processes
    /// may share one identity, as copies of one machine do).
    pub fn spawn_as(
        cluster: &Cluster,
        name: &str,
        identity: &str,
        registry: &[String],
        extra: &[&str],
    ) -> WorkerProcess {
        let dir = cluster.dir.path();
        let mut worker = WorkerProcess {
            name: name.to_string(),
            identity: identity.to_string(),
            certs: cluster.certs.clone(),
            addr: format!("127.0.0.1:{}", free_port()),
            state_dir: dir.join(format!("{name}-state")),
            log_path: dir.join(format!("{name}.log")),
            args: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        worker.args.extend(["--registry".to_string(), registry.join(",")]);
        worker.args.extend(["--hostname".to_string(), format!("test-{name}")]);
        worker.start();
        worker
    }

    /// Start (or restart) the process with the same flags, port and state dir.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "worker {} is already running", self.name);
        let log = File::options().create(true).append(true).open(&self.log_path).expect("open worker log");
        let child = self
            .certs
            .command(Role::Worker, &self.identity)
            .arg("worker")
            .args(["--listen", &self.addr])
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(&self.args)
            .env("RUST_LOG", "info,fenceflake_worker=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn fenceflake worker");
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("worker is running").id()
    }

    /// Send `signal` (a name for `kill -s`: STOP, CONT, TERM) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args(["-s", signal, &self.pid().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill -s {signal} {} failed", self.pid());
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-s", "CONT", &child.id().to_string()]).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Wait (bounded) for the process to exit on its own, and reap it.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("worker is running");
        let status = eventually(timeout, &format!("worker {} to exit", self.name), || {
            let exited = child.try_wait().expect("poll the worker");
            async move { exited }
        })
        .await;
        status
    }

    /// Whether the process has exited on its own, without waiting (reaped if so; it can then
    /// be started again). `None` while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut().expect("worker was started").try_wait().expect("poll the worker")?;
        self.child = None;
        Some(status)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// A client of this worker with a `client` certificate (lazy: connecting never fails here).
    pub fn client(&self) -> GeneratorClient<Channel> {
        self.client_as(Role::Client)
    }

    /// A client of this worker with the certificate of `role` (name `test`).
    pub fn client_as(&self, role: Role) -> GeneratorClient<Channel> {
        let security = self.certs.security(role, TEST_NAME);
        GeneratorClient::new(certs::channel(&self.addr, &security, &[Role::Worker], Duration::from_secs(5)))
    }

    pub async fn status(&self) -> Option<pb::StatusResponse> {
        self.client().status(pb::StatusRequest {}).await.ok().map(|r| r.into_inner())
    }

    /// Wait until the worker reports SERVING and return its status.
    pub async fn wait_serving(&self, timeout: Duration) -> pb::StatusResponse {
        eventually(timeout, &format!("worker {} to serve", self.name), || async {
            self.status().await.filter(|s| s.state == "SERVING")
        })
        .await
    }

    /// Wait until the worker reports PARKED for `reason`.
    pub async fn wait_parked(&self, reason: &str, timeout: Duration) -> pb::StatusResponse {
        eventually(timeout, &format!("worker {} to park {reason}", self.name), || async {
            self.status().await.filter(|s| s.state == "PARKED" && s.park_reason == reason)
        })
        .await
    }

    /// `count` IDs from one GenerateBatch, expanded.
    pub async fn batch(&self, count: u32) -> Result<Vec<u64>, tonic::Status> {
        let response = self.client().generate_batch(pb::GenerateBatchRequest { count }).await?.into_inner();
        Ok(response.ranges.iter().flat_map(|r| r.first..r.first + u64::from(r.count)).collect())
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- log of worker {} ({}) ---\n{}", self.name, self.log_path.display(), tail(&self.log(), 40));
        }
    }
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
