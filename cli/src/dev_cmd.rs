//! `fenceflake dev`: a whole deployment in one process for trying things out — a 5-node
//! registry and two workers on 127.0.0.1 — with the next commands to try printed.
//!
//! Mutual TLS by default, as in production: a throwaway CA and certificates (one `node` per
//! registry node named by its id, one `worker` per worker, an `operator` and a `client` for
//! the printed commands) are made in the state directory's `tls/` by `fenceflake certs`
//! (this very binary), and every printed command carries the `--tls-*` flags it needs.
//! `--insecure` runs everything plaintext, with the loud warning.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use fenceflake_client::WorkerClient;
use fenceflake_proto::tls::{self, Role, Security};
use fenceflake_proto::v1 as pb;
use fenceflake_proto::v1::registry_client::RegistryClient;
use fenceflake_registry::config::{LayoutFlags, NodeConfig};
use fenceflake_registry::raft::types::PeerNode;
use fenceflake_worker::limits::{DEFAULT_SEQUENCE_BITS, DEFAULT_WORKER_ID_BITS};
use fenceflake_worker::server::Listeners as WorkerListeners;
use fenceflake_worker::{Generator, RateLimitConfig, RateLimiter, SystemClock, WorkerConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::decode_cmd;
use crate::signals::shutdown_signal;
use crate::worker_cmd::bind;

const REGISTRY_NODES: u16 = 5;
const WORKERS: u16 = 2;
/// How long the registry may take to elect a leader and commit its config.
const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
/// IDs minted and decoded as a demonstration.
const DEMO_IDS: usize = 4;

/// Start a 5-node registry and 2 workers on 127.0.0.1 in this process, print their addresses
/// and a few decoded IDs, and run until Ctrl-C (then release the leases and clean up).
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Keep registry and worker state here (default: a temporary directory, deleted on exit).
    /// To run again on kept state, give the same --base-port both times: the registry
    /// remembers its members by address.
    #[arg(long, env = "FENCEFLAKE_DEV_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// First of 12 consecutive ports (registry clients, peers, workers); 0 picks free ports.
    #[arg(long, env = "FENCEFLAKE_DEV_BASE_PORT", default_value_t = 0)]
    base_port: u16,
    /// Plaintext everywhere: no TLS, no authentication (logged loudly). Default: mutual TLS
    /// with throwaway certificates made in the state directory's tls/.
    #[arg(long, env = "FENCEFLAKE_INSECURE")]
    insecure: bool,
}

/// The name of the operator and client certificates the printed commands use.
const DEV_NAME: &str = "dev";

/// How every process of `dev` talks: mutual TLS with the certificates in `dir`, or plaintext.
enum DevTls {
    Tls { dir: PathBuf },
    Insecure,
}

impl DevTls {
    /// Make (or, in a kept state dir, reuse) the CA and every certificate dev needs.
    async fn prepare(insecure: bool, data_dir: &Path) -> anyhow::Result<DevTls> {
        if insecure {
            Security::Insecure.announce("fenceflake dev");
            return Ok(DevTls::Insecure);
        }
        let dir = data_dir.join("tls");
        let bin = std::env::current_exe().context("cannot find the path of this fenceflake binary")?;
        if !dir.join("ca.pem").exists() {
            certs(&bin, &["init"], &dir).await?;
        }
        let nodes = (1..=u64::from(REGISTRY_NODES)).map(|id| (Role::Node, id.to_string()));
        let workers = (0..WORKERS).map(|i| (Role::Worker, worker_name(i)));
        let users = [(Role::Operator, DEV_NAME.to_string()), (Role::Client, DEV_NAME.to_string())];
        for (role, name) in nodes.chain(workers).chain(users) {
            if !dir.join(format!("{role}-{name}.key")).exists() {
                certs(&bin, &["issue", "--role", role.as_str(), "--name", &name], &dir).await?;
            }
        }
        Ok(DevTls::Tls { dir })
    }

    /// The CA, certificate and key files of `role`/`name`.
    fn files(dir: &Path, role: Role, name: &str) -> [PathBuf; 3] {
        [dir.join("ca.pem"), dir.join(format!("{role}-{name}.pem")), dir.join(format!("{role}-{name}.key"))]
    }

    fn security(&self, role: Role, name: &str) -> anyhow::Result<Security> {
        match self {
            DevTls::Insecure => Ok(Security::Insecure),
            DevTls::Tls { dir } => {
                let [ca, cert, key] = DevTls::files(dir, role, name);
                Security::from_flags(Some(ca), Some(cert), Some(key), false)
                    .with_context(|| format!("dev's {role} certificate {name:?}"))
            }
        }
    }

    /// The flags of a `fenceflake` command run as `role`/`name`.
    fn flags(&self, role: Role, name: &str) -> String {
        self.options(role, name, "--insecure", ["--tls-ca", "--tls-cert", "--tls-key"])
    }

    /// The TLS options of a `grpcurl` command run as `role`/`name`.
    fn grpcurl_flags(&self, role: Role, name: &str) -> String {
        self.options(role, name, "-plaintext", ["-cacert", "-cert", "-key"])
    }

    /// `plaintext`, or the CA, certificate and key of `role`/`name` after the given option names.
    fn options(&self, role: Role, name: &str, plaintext: &str, names: [&str; 3]) -> String {
        match self {
            DevTls::Insecure => plaintext.to_string(),
            DevTls::Tls { dir } => {
                let files = DevTls::files(dir, role, name).map(|p| shell_word(&p.display().to_string()));
                let pairs: Vec<String> = names.iter().zip(files).map(|(n, f)| format!("{n} {f}")).collect();
                pairs.join(" ")
            }
        }
    }
}

/// `fenceflake certs ARGS --dir DIR`, run by this very binary (the certificates are made
/// exactly as a user makes them), its report kept off dev's output.
async fn certs(bin: &Path, args: &[&str], dir: &Path) -> anyhow::Result<()> {
    let mut command = tokio::process::Command::new(bin);
    command.arg("certs").args(args).arg("--dir").arg(dir).stdin(std::process::Stdio::null());
    // Nothing from the caller's environment changes what dev issues.
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("FENCEFLAKE_CERTS_") {
            command.env_remove(var);
        }
    }
    let out = command.output().await.with_context(|| format!("cannot run {} certs", bin.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "fenceflake certs {} --dir {} failed: {}",
        args.join(" "),
        dir.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn worker_name(i: u16) -> String {
    format!("dev-worker-{i}")
}

/// A port `offset` above the base, or any free one.
async fn listen(base_port: u16, offset: u16, what: &str) -> anyhow::Result<TcpListener> {
    let port = if base_port == 0 { 0 } else { base_port.checked_add(offset).context("--base-port too high")? };
    bind(SocketAddr::from(([127, 0, 0, 1], port)), what).await
}

fn addr_of(listener: &TcpListener) -> anyhow::Result<String> {
    Ok(listener.local_addr()?.to_string())
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let (data_dir, temp) = match &args.data_dir {
        Some(dir) => {
            let kept_registry = dir.join("registry-1");
            anyhow::ensure!(
                args.base_port != 0 || std::fs::read_dir(&kept_registry).map_or(true, |mut d| d.next().is_none()),
                "{} holds a dev registry from an earlier run, which remembers its members by address: run with the same --base-port as then (random ports cannot be reused), or use a new --data-dir",
                dir.display()
            );
            (dir.clone(), None)
        }
        None => {
            let temp = tempfile::Builder::new().prefix("fenceflake-dev-").tempdir()?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };
    let tls = DevTls::prepare(args.insecure, &data_dir).await?;
    let (stop_registry, registry_stopped) = stop_switch();
    let (stop_workers, workers_stopped) = stop_switch();
    let (registry_addrs, registry_tasks) = start_registry(&args, &data_dir, &tls, &registry_stopped).await?;
    wait_for_leader(&registry_addrs, &tls.security(Role::Operator, DEV_NAME)?).await?;
    let (worker_addrs, generators, worker_tasks) =
        start_workers(&args, &data_dir, &tls, &registry_addrs, &workers_stopped).await?;
    let deployment = Deployment { data_dir: &data_dir, temporary: temp.is_some(), tls: &tls };
    print_summary(&deployment, &registry_addrs, &worker_addrs, &generators).await?;

    shutdown_signal().await;
    // Workers first: they release their leases while the registry is still up.
    for (stop, tasks) in [(stop_workers, worker_tasks), (stop_registry, registry_tasks)] {
        let _ = stop.send(true);
        for task in tasks {
            task.await?.map_err(|e| anyhow::anyhow!(e))?;
        }
    }
    println!("stopped; {}", if temp.is_some() { "temporary state deleted" } else { "state kept" });
    Ok(())
}

type Tasks = Vec<JoinHandle<Result<(), String>>>;

/// A switch and a maker of futures that resolve once it is flipped.
fn stop_switch() -> (watch::Sender<bool>, impl Fn() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) {
    let (tx, rx) = watch::channel(false);
    let stopped = move || -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        let mut rx = rx.clone();
        Box::pin(async move {
            let _ = rx.wait_for(|s| *s).await;
        })
    };
    (tx, stopped)
}

async fn start_registry<F, Fut>(
    args: &DevArgs,
    data_dir: &Path,
    tls: &DevTls,
    stopped: &F,
) -> anyhow::Result<(Vec<String>, Tasks)>
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut listeners = Vec::new();
    let mut members = BTreeMap::new();
    for i in 0..REGISTRY_NODES {
        let client = listen(args.base_port, i, "registry client port").await?;
        let peer = listen(args.base_port, REGISTRY_NODES + i, "registry peer port").await?;
        let node = PeerNode { peer_addr: addr_of(&peer)?, client_addr: addr_of(&client)? };
        members.insert(u64::from(i) + 1, node);
        listeners.push((client, peer));
    }
    let mut tasks = Vec::new();
    for (node_id, (client, peer)) in (1..).zip(listeners) {
        let dir = data_dir.join(format!("registry-{node_id}"));
        let defaults =
            NodeConfig::new(node_id, "fenceflake-dev".into(), members[&node_id].clone(), dir, members.clone());
        let config = NodeConfig {
            // The defaults, stated: the printed decode lines and a kept --data-dir rely on them.
            layout: LayoutFlags {
                epoch_ms: Some(decode_cmd::DEFAULT_EPOCH_MS),
                worker_id_bits: Some(DEFAULT_WORKER_ID_BITS),
                sequence_bits: Some(DEFAULT_SEQUENCE_BITS),
            },
            ..defaults
        };
        let listeners = fenceflake_registry::server::Listeners { client, peer, admin: None, metrics: None };
        let security = tls.security(Role::Node, &node_id.to_string())?;
        let clock = Arc::new(fenceflake_registry::clock::SystemClock);
        let shutdown = stopped();
        tasks.push(tokio::spawn(async move {
            fenceflake_registry::server::run(config, listeners, security, clock, shutdown)
                .await
                .map_err(|e| e.to_string())
        }));
    }
    Ok((members.values().map(|m| m.client_addr.clone()).collect(), tasks))
}

async fn wait_for_leader(registry_addrs: &[String], security: &Security) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + LEADER_TIMEOUT;
    let endpoint = tonic::transport::Endpoint::from_shared(tls::endpoint_url(&registry_addrs[0]))?;
    loop {
        if let Ok(channel) = tls::connect(endpoint.clone(), security, &[Role::Node]).await {
            let mut client = RegistryClient::new(channel);
            if let Ok(status) = client.cluster_status(pb::ClusterStatusRequest {}).await {
                let status = status.into_inner();
                if status.leader_id != 0 && status.epoch_ms != 0 {
                    return Ok(());
                }
            }
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the dev registry elected no leader in {LEADER_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start_workers<F, Fut>(
    args: &DevArgs,
    data_dir: &Path,
    tls: &DevTls,
    registry_addrs: &[String],
    stopped: &F,
) -> anyhow::Result<(Vec<String>, Vec<Generator>, Tasks)>
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (mut addrs, mut generators, mut tasks) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..WORKERS {
        let grpc = listen(args.base_port, 2 * REGISTRY_NODES + i, "worker port").await?;
        addrs.push(addr_of(&grpc)?);
        let hostname = worker_name(i);
        let security = tls.security(Role::Worker, &hostname)?;
        let config = WorkerConfig::new(registry_addrs.to_vec(), data_dir.join(&hostname), hostname, security);
        let generator = Generator::start(config, Arc::new(SystemClock)).await?;
        generator.wait_serving(Duration::from_secs(5)).await.context("dev worker did not start serving")?;
        let limiter = Arc::new(RateLimiter::new(RateLimitConfig::default(), Arc::new(SystemClock))?);
        let listeners = WorkerListeners { grpc, metrics: None };
        let serve = fenceflake_worker::server::run(generator.clone(), listeners, limiter, stopped());
        tasks.push(tokio::spawn(async move { serve.await.map_err(|e| e.to_string()) }));
        tokio::spawn(report_ended(generator.clone(), worker_name(i)));
        generators.push(generator);
    }
    Ok((addrs, generators, tasks))
}

/// A dev worker that lost its lease for good cannot be restarted by a supervisor (it lives in
/// this process): say so once, as the terminal error it is; the other worker keeps serving.
async fn report_ended(generator: Generator, name: String) {
    let cause = generator.ended().await;
    tracing::error!(worker = %name, reason = %cause, "dev worker lost its lease for good and stopped minting; restart `fenceflake dev` to get it back");
}

/// Where dev keeps its state and how its processes talk.
struct Deployment<'a> {
    data_dir: &'a Path,
    temporary: bool,
    tls: &'a DevTls,
}

async fn print_summary(
    deployment: &Deployment<'_>,
    registry_addrs: &[String],
    worker_addrs: &[String],
    generators: &[Generator],
) -> anyhow::Result<()> {
    let Deployment { data_dir, temporary, tls } = deployment;
    let registry = registry_addrs.join(",");
    let workers = worker_addrs.join(",");
    println!("fenceflake dev: a 5-node registry and {WORKERS} workers on 127.0.0.1");
    println!("  state:    {}{}", data_dir.display(), if *temporary { " (temporary)" } else { "" });
    match tls {
        DevTls::Tls { dir } => println!(
            "  security: mutual TLS; CA and certificates in {} (node-1..{REGISTRY_NODES}, worker-{}.., operator-{DEV_NAME}, client-{DEV_NAME})",
            dir.display(),
            worker_name(0)
        ),
        DevTls::Insecure => {
            println!("  security: PLAINTEXT (--insecure): no TLS, no authentication; anyone may do anything")
        }
    }
    println!("  registry: {registry}");
    for (addr, g) in worker_addrs.iter().zip(generators) {
        let s = g.status();
        println!("  worker:   {addr}  (worker ID {}, token {}, holder {})", s.worker_id, s.token, s.holder);
    }
    let client = WorkerClient::new(worker_addrs, Some("fenceflake-dev"), &tls.security(Role::Client, DEV_NAME)?)?;
    let layout = generators[0].status().layout;
    println!("\nA few IDs, minted through the balancing client and decoded:");
    println!("  {}", decode_cmd::header());
    let mut last_id = 0;
    for _ in 0..DEMO_IDS {
        last_id = client.generate().await?;
        println!("  {}", decode_cmd::row(&layout, last_id));
    }
    // Every line must work when pasted into a shell: name this very binary, which need not
    // be on PATH (e.g. target/debug/fenceflake).
    let exe = std::env::current_exe().context("cannot find the path of this fenceflake binary")?;
    let bin = shell_word(&exe.display().to_string());
    println!("\nTry:");
    for command in try_commands(&bin, &registry, &workers, last_id, tls) {
        println!("  {command}");
    }
    let protoset = data_dir.join("fenceflake.protoset");
    std::fs::write(&protoset, fenceflake_proto::FILE_DESCRIPTOR_SET)
        .with_context(|| format!("cannot write {}", protoset.display()))?;
    println!("\nWith grpcurl (not tested here: grpcurl is not packaged):");
    for command in grpcurl_commands(&protoset, &registry_addrs[0], &worker_addrs[0], tls) {
        println!("  {command}");
    }
    println!("\nPress Ctrl-C to stop.");
    Ok(())
}

/// The commands `dev` suggests, each starting with `bin` (the running binary's path), with
/// the TLS flags of the identity each needs (ctl an operator, mint a client).
fn try_commands(bin: &str, registry: &str, workers: &str, id: u64, tls: &DevTls) -> Vec<String> {
    let operator = tls.flags(Role::Operator, DEV_NAME);
    let client = tls.flags(Role::Client, DEV_NAME);
    vec![
        format!("{bin} ctl --registry {registry} {operator} status"),
        format!("{bin} ctl --registry {registry} {operator} leases"),
        format!("{bin} mint --workers {workers} {client} -n 5"),
        format!("{bin} mint --workers {workers} {client} -n 10000 --batch | tail -1"),
        format!("{bin} decode {id}"),
    ]
}

/// The same calls with grpcurl, reading the API from the protoset dev wrote.
fn grpcurl_commands(protoset: &Path, registry: &str, worker: &str, tls: &DevTls) -> Vec<String> {
    let protoset = shell_word(&protoset.display().to_string());
    let operator = tls.grpcurl_flags(Role::Operator, DEV_NAME);
    let client = tls.grpcurl_flags(Role::Client, DEV_NAME);
    vec![
        format!("grpcurl {operator} -protoset {protoset} {registry} fenceflake.v1.Registry/ClusterStatus"),
        format!("grpcurl {client} -protoset {protoset} {worker} fenceflake.v1.Generator/Generate"),
        format!(
            r#"grpcurl {client} -protoset {protoset} -d '{{"count": 5}}' {worker} fenceflake.v1.Generator/GenerateBatch"#
        ),
    ]
}

/// `text` as one shell word: as is when it has no character a shell treats specially, else
/// in single quotes.
fn shell_word(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+:,=@%".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: every suggested command starts with the binary's path (quoted when needed) and
    /// has no placeholder a shell would misread.
    #[test]
    fn try_commands_name_the_binary_and_paste_as_they_are() {
        let tls = DevTls::Tls { dir: "/tmp/fenceflake-dev-x/tls".into() };
        for tls in [tls, DevTls::Insecure] {
            let commands =
                try_commands("/work/target/debug/fenceflake", "127.0.0.1:1,127.0.0.1:2", "127.0.0.1:3", 42, &tls);
            assert_eq!(commands.len(), 5);
            for command in &commands {
                assert!(command.starts_with("/work/target/debug/fenceflake "), "{command}");
                assert!(!command.contains('<') && !command.contains('>'), "{command}");
            }
            assert!(commands[4].ends_with("decode 42"));
        }
        assert_eq!(shell_word("/usr/bin/fenceflake"), "/usr/bin/fenceflake");
        assert_eq!(shell_word("/home/a b/fenceflake"), "'/home/a b/fenceflake'");
        assert_eq!(shell_word("/tmp/it's"), r"'/tmp/it'\''s'");
    }

    /// Goal: under TLS, ctl runs as the operator and mint as the client, with the three
    /// files from dev's tls/ dir; --insecure commands say so; grpcurl lines carry the same
    /// identities (or -plaintext).
    #[test]
    fn printed_commands_carry_the_identity_each_needs() {
        let tls = DevTls::Tls { dir: "/tmp/d/tls".into() };
        let commands = try_commands("fenceflake", "127.0.0.1:1", "127.0.0.1:3", 1, &tls);
        let operator =
            "--tls-ca /tmp/d/tls/ca.pem --tls-cert /tmp/d/tls/operator-dev.pem --tls-key /tmp/d/tls/operator-dev.key";
        let client =
            "--tls-ca /tmp/d/tls/ca.pem --tls-cert /tmp/d/tls/client-dev.pem --tls-key /tmp/d/tls/client-dev.key";
        assert!(commands[0].contains(&format!("ctl --registry 127.0.0.1:1 {operator} status")), "{}", commands[0]);
        assert!(commands[2].contains(&format!("mint --workers 127.0.0.1:3 {client} -n 5")), "{}", commands[2]);
        let grpcurl = grpcurl_commands(Path::new("/tmp/d/f.protoset"), "127.0.0.1:1", "127.0.0.1:3", &tls);
        assert!(grpcurl[0].contains("-cert /tmp/d/tls/operator-dev.pem"), "{}", grpcurl[0]);
        assert!(grpcurl[1].contains("-cert /tmp/d/tls/client-dev.pem"), "{}", grpcurl[1]);
        let insecure = try_commands("fenceflake", "127.0.0.1:1", "127.0.0.1:3", 1, &DevTls::Insecure);
        assert!(insecure[0].contains("--insecure status") && !insecure[0].contains("--tls"), "{}", insecure[0]);
        let plain = grpcurl_commands(Path::new("/p"), "127.0.0.1:1", "127.0.0.1:3", &DevTls::Insecure);
        assert!(plain.iter().all(|c| c.contains("-plaintext")), "{plain:?}");
    }
}
