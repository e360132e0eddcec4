//! `fenceflake dev`: a whole deployment in one process for trying things out — a 5-node
//! registry and two workers on 127.0.0.1 — with the next commands to try printed.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use fenceflake_client::WorkerClient;
use fenceflake_proto::v1 as pb;
use fenceflake_proto::v1::registry_client::RegistryClient;
use fenceflake_registry::config::{InitialClusterState, NodeConfig, RaftTiming};
use fenceflake_registry::lease::ClusterConfig;
use fenceflake_registry::raft::types::PeerNode;
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
    let (stop_registry, registry_stopped) = stop_switch();
    let (stop_workers, workers_stopped) = stop_switch();
    let (registry_addrs, registry_tasks) = start_registry(&args, &data_dir, &registry_stopped).await?;
    wait_for_leader(&registry_addrs).await?;
    let (worker_addrs, generators, worker_tasks) =
        start_workers(&args, &data_dir, &registry_addrs, &workers_stopped).await?;
    print_summary(&data_dir, temp.is_some(), &registry_addrs, &worker_addrs, &generators).await?;

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

async fn start_registry<F, Fut>(args: &DevArgs, data_dir: &Path, stopped: &F) -> anyhow::Result<(Vec<String>, Tasks)>
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
        let config = NodeConfig {
            node_id,
            cluster_id: "fenceflake-dev".into(),
            advertise: members[&node_id].clone(),
            data_dir: data_dir.join(format!("registry-{node_id}")),
            initial_cluster: members.clone(),
            initial_cluster_state: InitialClusterState::New,
            cluster_config: ClusterConfig {
                epoch_ms: decode_cmd::DEFAULT_EPOCH_MS,
                worker_id_bits: 10,
                ttl_ms_max: 60_000,
                cool_down_ms: 1_000,
            },
            timing: RaftTiming::default(),
            request_timeout: Duration::from_secs(2),
            snapshot_logs: 5_000,
            metrics_addr: None,
        };
        let listeners = fenceflake_registry::server::Listeners { client, peer, metrics: None };
        let clock = Arc::new(fenceflake_registry::clock::SystemClock);
        let shutdown = stopped();
        tasks.push(tokio::spawn(async move {
            fenceflake_registry::server::run(config, listeners, clock, shutdown).await.map_err(|e| e.to_string())
        }));
    }
    Ok((members.values().map(|m| m.client_addr.clone()).collect(), tasks))
}

async fn wait_for_leader(registry_addrs: &[String]) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + LEADER_TIMEOUT;
    let url = format!("http://{}", registry_addrs[0]);
    loop {
        if let Ok(mut client) = RegistryClient::connect(url.clone()).await {
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
        let hostname = format!("dev-worker-{i}");
        let config = WorkerConfig::new(registry_addrs.to_vec(), data_dir.join(&hostname), hostname);
        let generator = Generator::start(config, Arc::new(SystemClock)).await?;
        generator.wait_serving(Duration::from_secs(5)).await.context("dev worker did not start serving")?;
        let limiter = Arc::new(RateLimiter::new(RateLimitConfig::default(), Arc::new(SystemClock))?);
        let listeners = WorkerListeners { grpc, metrics: None };
        let serve = fenceflake_worker::server::run(generator.clone(), listeners, limiter, stopped());
        tasks.push(tokio::spawn(async move { serve.await.map_err(|e| e.to_string()) }));
        generators.push(generator);
    }
    Ok((addrs, generators, tasks))
}

async fn print_summary(
    data_dir: &Path,
    temporary: bool,
    registry_addrs: &[String],
    worker_addrs: &[String],
    generators: &[Generator],
) -> anyhow::Result<()> {
    let registry = registry_addrs.join(",");
    let workers = worker_addrs.join(",");
    println!("fenceflake dev: a 5-node registry and {WORKERS} workers on 127.0.0.1");
    println!("  state:    {}{}", data_dir.display(), if temporary { " (temporary)" } else { "" });
    println!("  registry: {registry}");
    for (addr, g) in worker_addrs.iter().zip(generators) {
        let s = g.status();
        println!("  worker:   {addr}  (worker ID {}, token {}, holder {})", s.worker_id, s.token, s.holder);
    }
    let client = WorkerClient::new(worker_addrs, Some("fenceflake-dev"))?;
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
    for command in try_commands(&bin, &registry, &workers, last_id) {
        println!("  {command}");
    }
    println!("\nPress Ctrl-C to stop.");
    Ok(())
}

/// The commands `dev` suggests, each starting with `bin` (the running binary's path).
fn try_commands(bin: &str, registry: &str, workers: &str, id: u64) -> Vec<String> {
    vec![
        format!("{bin} ctl --registry {registry} status"),
        format!("{bin} ctl --registry {registry} leases"),
        format!("{bin} mint --workers {workers} -n 5"),
        format!("{bin} mint --workers {workers} -n 10000 --batch | tail -1"),
        format!("{bin} decode {id}"),
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
        let commands = try_commands("/work/target/debug/fenceflake", "127.0.0.1:1,127.0.0.1:2", "127.0.0.1:3", 42);
        assert_eq!(commands.len(), 5);
        for command in &commands {
            assert!(command.starts_with("/work/target/debug/fenceflake "), "{command}");
            assert!(!command.contains('<') && !command.contains('>'), "{command}");
        }
        assert!(commands[4].ends_with("decode 42"));
        assert_eq!(shell_word("/usr/bin/fenceflake"), "/usr/bin/fenceflake");
        assert_eq!(shell_word("/home/a b/fenceflake"), "'/home/a b/fenceflake'");
        assert_eq!(shell_word("/tmp/it's"), r"'/tmp/it'\''s'");
    }
}
