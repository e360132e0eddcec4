//! One `fenceflake worker` process started by the bench (the release binary, as shipped): its
//! flags, state dir and log, start and restart on the state dir, SIGKILL, SIGSTOP/SIGCONT,
//! and what can be read back from it (Status, its boot wait metric, its `lease granted` log
//! line). Shared by `restart` (one worker, killed and restarted) and `gray` (three workers,
//! one stopped). SIGKILLed and reaped when dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use fenceflake_proto::tls::{Role, Security};
use fenceflake_proto::v1 as pb;
use fenceflake_proto::v1::generator_client::GeneratorClient;
use fenceflake_worker::metrics::names::BOOT_WAIT_SECONDS;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::transport::Channel;

use crate::cluster::{self, free_port};
use crate::tls::Side;

/// A temp dir for the workers' state dirs, named `fenceflake-bench-<what>-…`, under
/// `--data-root` when given (as the registry's data dirs are).
pub fn workers_temp_dir(data_root: Option<&Path>, what: &str) -> anyhow::Result<tempfile::TempDir> {
    let mut builder = tempfile::Builder::new();
    let prefix = format!("fenceflake-bench-{what}-");
    builder.prefix(&prefix);
    match data_root {
        Some(root) => builder.tempdir_in(root),
        None => builder.tempdir(),
    }
    .context("creating the workers' temp dir")
}

/// How one worker is started.
pub struct WorkerSpec<'a> {
    /// Names its state dir (`worker-<name>`) and log (`worker-<name>.log`) in the run's dir.
    pub name: &'a str,
    /// `--worker-id`: `auto`, `ordinal` or a number.
    pub worker_id: &'a str,
    /// `--hostname`, and the name of its `worker` certificate.
    pub hostname: &'a str,
    pub lease_ttl: Duration,
    /// Any further worker flags, verbatim.
    pub extra_args: &'a [String],
}

/// One `fenceflake worker` process, restartable on its state dir; SIGKILLed when dropped.
pub struct WorkerProc {
    bin: PathBuf,
    args: Vec<String>,
    /// The worker's TLS env (its `worker` certificate) or `FENCEFLAKE_INSECURE`.
    env: BTreeMap<String, String>,
    log: PathBuf,
    listen: String,
    metrics: String,
    child: Option<Child>,
}

impl WorkerProc {
    /// A worker of `bin` against `registry`, its state dir and log in `dir`; not started yet.
    pub fn new(
        bin: PathBuf,
        spec: &WorkerSpec<'_>,
        side: &Side,
        registry: &[String],
        dir: &Path,
    ) -> anyhow::Result<WorkerProc> {
        let listen = format!("127.0.0.1:{}", free_port()?);
        let metrics = format!("127.0.0.1:{}", free_port()?);
        let state_dir = dir.join(format!("worker-{}", spec.name));
        let mut args = vec![
            "worker".into(),
            format!("--registry={}", registry.join(",")),
            format!("--listen={listen}"),
            format!("--metrics-addr={metrics}"),
            format!("--state-dir={}", state_dir.display()),
            format!("--worker-id={}", spec.worker_id),
            format!("--hostname={}", spec.hostname),
            format!("--lease-ttl={}ms", spec.lease_ttl.as_millis()),
            // JSON, so that the `lease granted` line's fields can be read back.
            "--log-format=json".into(),
        ];
        args.extend(spec.extra_args.iter().cloned());
        Ok(WorkerProc {
            bin,
            args,
            env: side.env(Role::Worker, spec.hostname)?,
            log: dir.join(format!("worker-{}.log", spec.name)),
            listen,
            metrics,
            child: None,
        })
    }

    /// Its Generator address, `127.0.0.1:PORT`.
    pub fn listen(&self) -> &str {
        &self.listen
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Start it on its state dir as it is, with only the flags above: none of the caller's
    /// `FENCEFLAKE_*` env, and the worker's default log filter (what ships).
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut cmd = Command::new(&self.bin);
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("FENCEFLAKE_") {
                cmd.env_remove(var);
            }
        }
        let child = cmd
            .args(&self.args)
            .envs(&self.env)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} worker", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn kill(&mut self) -> anyhow::Result<()> {
        cluster::kill_and_reap(&mut self.child, "the worker")
    }

    /// Send `signal` (`STOP`, `CONT`) with kill(1): the bench links no libc wrapper, and a
    /// fork of `kill` costs a few ms, outside every measured window's calls.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid().context("the worker is not running")?;
        let status = Command::new("kill")
            .args(["-s", signal, &pid.to_string()])
            .status()
            .with_context(|| format!("running kill -s {signal} {pid}"))?;
        ensure!(status.success(), "kill -s {signal} {pid} failed: {status}");
        Ok(())
    }

    /// Fail fast if the worker exited on its own (e.g. refused to start).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.as_mut().map(Child::try_wait).transpose()?.flatten() {
            self.child = None;
            bail!("the worker exited with {status}; see {}", self.log.display());
        }
        Ok(())
    }

    /// A client on a new channel: nothing carried over from a killed incarnation's connection.
    pub fn client(&self, security: &Security) -> anyhow::Result<GeneratorClient<Channel>> {
        Ok(GeneratorClient::new(crate::tls::channel(&self.listen, security, &[Role::Worker])?))
    }

    /// Poll Status until the worker says SERVING.
    pub async fn wait_serving(&mut self, security: &Security, timeout: Duration) -> anyhow::Result<()> {
        let mut client = self.client(security)?;
        let give_up = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            let status = tokio::time::timeout(Duration::from_millis(250), client.status(pb::StatusRequest {})).await;
            if matches!(&status, Ok(Ok(s)) if s.get_ref().state == "SERVING") {
                return Ok(());
            }
            if Instant::now() > give_up {
                bail!("the worker was not SERVING after {timeout:?}; see {}", self.log.display());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `fenceflake_worker_boot_wait_seconds` from its metrics port, in ms.
    pub async fn boot_wait_ms(&self) -> anyhow::Result<f64> {
        let scrape = async {
            let mut stream = tokio::net::TcpStream::connect(&self.metrics).await?;
            stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n").await?;
            let mut body = String::new();
            stream.read_to_string(&mut body).await?;
            anyhow::Ok(body)
        };
        let body = tokio::time::timeout(Duration::from_secs(2), scrape).await.context("scraping /metrics")??;
        let value = body
            .lines()
            .find_map(|l| l.strip_prefix(BOOT_WAIT_SECONDS)?.strip_prefix(' '))
            .with_context(|| format!("no {BOOT_WAIT_SECONDS} in /metrics"))?;
        Ok(value.trim().parse::<f64>().context("bad boot wait")? * 1000.0)
    }

    /// The fields of the latest `lease granted` line of its log (the worker ID, token and
    /// boot wait it logged, and why: `not_before_ms` and `floor_ms`).
    pub fn lease_granted(&self) -> Option<Value> {
        let log = std::fs::read_to_string(&self.log).ok()?;
        log.lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["fields"]["message"] == "lease granted")
            .map(|v| {
                let f = &v["fields"];
                json!({
                    "worker_id": f["worker_id"], "token": f["token"], "boot_wait_ms": f["boot_wait_ms"],
                    "not_before_ms": f["not_before_ms"], "floor_ms": f["floor_ms"],
                })
            })
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too.
        let _ = self.kill();
    }
}
