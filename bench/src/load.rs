//! Closed-loop load on the registry: each client issues its next request when the previous
//! one ended, over one gRPC connection per node (client `i` uses node `i % 5`, so followers
//! forward to the leader, as etcd's benchmark spreads `--conns` over `--endpoints`).
//!
//! * `acquire`: Acquire any worker ID with a fresh holder (recorded), then Release it (recorded
//!   apart), so the 1024-ID space never runs out. Throughput counts acquires only.
//! * `renew`: each client holds one lease and renews it in a loop.
//! * `renew-stream`: the same over one `RenewStream` per client, opened before the run; one op
//!   = one renewal and its answer on that stream (the shape of etcd's keepalive op). A stream
//!   that failed or timed out is reopened by the next op.
//!
//! Only requests that *start* inside the measured window are recorded; ops/s = recorded / window.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::ValueEnum;
use fenceflake_proto::v1 as pb;
use fenceflake_proto::v1::registry_client::RegistryClient;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::cluster::{self, holder_name, View};
use crate::stats::{round, Lat};

/// Pause after a failed request, so a failing client does not spin.
pub const ERROR_BACKOFF: Duration = Duration::from_millis(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Op {
    Acquire,
    Renew,
    /// Renew over one RenewStream per client (not part of `both`).
    RenewStream,
    Both,
}

impl Op {
    pub fn expand(self) -> Vec<Op> {
        match self {
            Op::Both => vec![Op::Acquire, Op::Renew],
            one => vec![one],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Op::Acquire => "acquire",
            Op::Renew => "renew",
            Op::RenewStream => "renew-stream",
            Op::Both => "both",
        }
    }
}

/// The load-window flags `registry` and `etcd-load` share.
#[derive(Debug, clap::Args)]
pub struct WindowOpts {
    /// Use this running cluster instead of starting one (client addresses, comma-separated;
    /// for etcd also client URLs).
    #[arg(long, value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Concurrent closed-loop clients; one run per value.
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    pub clients: Vec<usize>,
    /// Recorded window per run.
    #[arg(long, default_value = "10s", value_parser = fenceflake_proto::duration::parse_duration)]
    pub duration: Duration,
    /// Unrecorded warm-up per run.
    #[arg(long, default_value = "3s", value_parser = fenceflake_proto::duration::parse_duration)]
    pub warmup: Duration,
    /// Client deadline of one request.
    #[arg(long, default_value = "10s", value_parser = fenceflake_proto::duration::parse_duration)]
    pub op_timeout: Duration,
    /// Append the JSON lines to this file too.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// Redo a run (up to --retries times) when other processes used more than this many
    /// cores during its window: the machine is shared with builds and tests.
    #[arg(long, default_value_t = 0.15)]
    pub max_other_cores: f64,
    #[arg(long, default_value_t = 2)]
    pub retries: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct LoadCfg {
    pub clients: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub ttl_ms: u64,
    pub op_timeout: Duration,
}

/// The processes whose CPU is accounted (empty when the cluster is not ours).
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub channels: Vec<Channel>,
    pub server_pids: Vec<u32>,
}

impl Target {
    /// A cluster this tool did not start (`--endpoints`): channels only, no server CPU to
    /// account for; TLS with `--tls-ca/--tls-cert/--tls-key`, or plaintext with `--insecure`.
    pub fn external(endpoints: &[String], tls: &crate::tls::TlsOpts) -> anyhow::Result<Target> {
        let security = tls.external()?;
        let node = &[fenceflake_proto::tls::Role::Node];
        let channels =
            endpoints.iter().map(|e| crate::tls::channel(e, &security, node)).collect::<anyhow::Result<_>>()?;
        Ok(Target { channels, server_pids: Vec::new() })
    }
}

/// The lease a renew client holds.
struct Held {
    client: RegistryClient<Channel>,
    worker_id: u32,
    token: u64,
}

impl Held {
    fn renewal(&self) -> pb::RenewRequest {
        pb::RenewRequest {
            worker_id: self.worker_id,
            token: self.token,
            wall_ms_at_send: wall_ms(),
            max_minted_ts_ms: 0,
        }
    }
}

enum Worker {
    Acquire {
        client: RegistryClient<Channel>,
        tag: String,
    },
    Renew(Held),
    /// The stream boxed: its buffers would make every worker of a run that large.
    RenewStream {
        held: Held,
        stream: Option<Box<RenewLane>>,
    },
}

/// An open RenewStream with one renewal at a time on it.
pub struct RenewLane {
    tx: mpsc::Sender<pb::RenewStreamRequest>,
    rx: tonic::Streaming<pb::RenewStreamResponse>,
    tag: u64,
}

impl RenewLane {
    pub async fn open(client: &mut RegistryClient<Channel>) -> Result<RenewLane, String> {
        let (tx, rx) = mpsc::channel(4);
        let rx = client.renew_stream(ReceiverStream::new(rx)).await.map_err(|s| status_msg(&s))?.into_inner();
        Ok(RenewLane { tx, rx, tag: 0 })
    }

    /// One renewal round trip.
    async fn renew(&mut self, renewal: pb::RenewRequest) -> Result<(), String> {
        self.tag += 1;
        let request = pb::RenewStreamRequest { tag: self.tag, renew: Some(renewal) };
        self.tx.send(request).await.map_err(|_| "renew stream closed".to_string())?;
        match self.rx.message().await {
            Ok(Some(answer)) if answer.tag != self.tag => {
                Err(format!("answer to tag {} while waiting for {}", answer.tag, self.tag))
            }
            Ok(Some(answer)) => answer_result(answer).map(drop),
            Ok(None) => Err("renew stream closed by the server".into()),
            Err(s) => Err(status_msg(&s)),
        }
    }
}

/// The lease of a RenewStream answer, or its error as [`status_msg`] words it.
pub fn answer_result(answer: pb::RenewStreamResponse) -> Result<pb::Lease, String> {
    match answer.result {
        Some(pb::renew_stream_response::Result::Lease(lease)) => Ok(lease),
        Some(pb::renew_stream_response::Result::Error(e)) => {
            let mut msg = format!("{:?}: {}", tonic::Code::from_i32(e.code), e.message);
            msg.truncate(200);
            Err(msg)
        }
        None => Err(format!("answer to tag {} without a result", answer.tag)),
    }
}

struct Rec {
    main: Lat,
    release: Lat,
    /// Whether this client's node was the leader when the run started (no forwarding hop).
    via_leader: bool,
}

pub fn status_msg(s: &tonic::Status) -> String {
    let mut msg = format!("{:?}: {}", s.code(), s.message());
    msg.truncate(200);
    msg
}

/// One gRPC call with a client deadline; the error as a short message.
pub async fn call<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, String> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(status_msg(&s)),
        Err(_) => Err(format!("client timeout {timeout:?}")),
    }
}

pub fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Rec {
    /// Record a renewal sent at `t0` if `measured`; whether it succeeded.
    fn renewal(&mut self, r: Result<(), String>, measured: bool, t0: Instant) -> bool {
        let ok = r.is_ok();
        match (r, measured) {
            (Ok(()), true) => self.main.record(t0.elapsed()),
            (Err(e), true) => self.main.error(e),
            _ => {}
        }
        ok
    }
}

/// One renewal on the client's stream, reopening it first if the last op left none.
async fn renew_on_stream(held: &mut Held, stream: &mut Option<Box<RenewLane>>) -> Result<(), String> {
    // Taken out first: a failed or timed-out op leaves no stream, the next reopens it.
    let mut lane = match stream.take() {
        Some(lane) => lane,
        None => Box::new(RenewLane::open(&mut held.client).await?),
    };
    lane.renew(held.renewal()).await?;
    *stream = Some(lane);
    Ok(())
}

async fn drive(mut w: Worker, via_leader: bool, cfg: LoadCfg, t_measure: Instant, t_end: Instant) -> (Rec, Worker) {
    let mut rec = Rec { main: Lat::new(), release: Lat::new(), via_leader };
    loop {
        let t0 = Instant::now();
        if t0 >= t_end {
            break;
        }
        let measured = t0 >= t_measure;
        let ok = match &mut w {
            Worker::Acquire { client, tag } => {
                let req = pb::AcquireRequest {
                    holder: holder_name(tag),
                    worker_id: None,
                    ttl_ms: cfg.ttl_ms,
                    incarnation: 0,
                };
                let r = call(cfg.op_timeout, client.acquire(req)).await;
                let t1 = Instant::now();
                match r {
                    Ok(lease) => {
                        if measured {
                            rec.main.record(t1 - t0);
                        }
                        let rel = pb::ReleaseRequest { worker_id: lease.worker_id, token: lease.token, last_ts_ms: 0 };
                        let r = call(cfg.op_timeout, client.release(rel)).await;
                        match (r, measured) {
                            (Ok(_), true) => rec.release.record(t1.elapsed()),
                            (Err(e), true) => rec.release.error(e),
                            _ => {}
                        }
                        true
                    }
                    Err(e) => {
                        if measured {
                            rec.main.error(e);
                        }
                        false
                    }
                }
            }
            Worker::Renew(held) => {
                let r = call(cfg.op_timeout, held.client.renew(held.renewal())).await.map(drop);
                rec.renewal(r, measured, t0)
            }
            Worker::RenewStream { held, stream } => {
                let r = match tokio::time::timeout(cfg.op_timeout, renew_on_stream(held, stream)).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("client timeout {:?}", cfg.op_timeout)),
                };
                rec.renewal(r, measured, t0)
            }
        };
        if !ok {
            tokio::time::sleep(ERROR_BACKOFF).await;
        }
    }
    (rec, w)
}

fn cpu_sum(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| cluster::cpu_seconds(*p)).sum()
}

/// CPU use over a measured window: of the servers (`pids`), of this process, and of the
/// whole machine, so that foreign load shows as `other_cores`.
pub struct CpuWindow {
    pids: Vec<u32>,
    servers: f64,
    client: f64,
    busy: Option<f64>,
    wall: Instant,
}

impl CpuWindow {
    pub fn start(server_pids: &[u32]) -> CpuWindow {
        CpuWindow {
            pids: server_pids.to_vec(),
            servers: cpu_sum(server_pids),
            client: cluster::self_cpu_seconds(),
            busy: cluster::machine_busy_seconds(),
            wall: Instant::now(),
        }
    }

    /// The `cpu` object of a result row, in cores (CPU seconds per second of the window).
    pub fn finish(self) -> Value {
        let (servers, client, wall) = (cpu_sum(&self.pids), cluster::self_cpu_seconds(), self.wall.elapsed());
        let secs = wall.as_secs_f64();
        let busy = self.busy.zip(cluster::machine_busy_seconds()).map(|(b0, b1)| (b1 - b0) / secs);
        let (servers_cores, client_cores) = ((servers - self.servers) / secs, (client - self.client) / secs);
        json!({
            "servers_cores": if self.pids.is_empty() { Value::Null } else { json!(round(servers_cores, 2)) },
            "client_cores": round(client_cores, 2),
            "machine_busy_cores": busy.map(|b| round(b, 2)),
            // Anything else running on the machine during the window (another build, say).
            "other_cores": busy.filter(|_| !self.pids.is_empty()).map(|b| round((b - servers_cores - client_cores).max(0.0), 2)),
        })
    }
}

/// The clients of a run, client `i` on node `i % nodes`; a renew client holds its lease.
async fn workers(op: Op, target: &Target, cfg: LoadCfg, tag: &str) -> anyhow::Result<Vec<Worker>> {
    let mut workers = Vec::with_capacity(cfg.clients);
    for i in 0..cfg.clients {
        let client = RegistryClient::new(target.channels[i % target.channels.len()].clone());
        workers.push(match op {
            Op::Acquire => Worker::Acquire { client, tag: format!("{tag}/c{i}") },
            _ => {
                let mut client = client;
                let req = pb::AcquireRequest {
                    holder: holder_name(&format!("{tag}/c{i}")),
                    worker_id: None,
                    ttl_ms: cfg.ttl_ms,
                    incarnation: 0,
                };
                let lease = call(cfg.op_timeout, client.acquire(req))
                    .await
                    .map_err(|e| anyhow::anyhow!("acquiring the lease of renew client {i}: {e}"))?;
                let held = Held { client, worker_id: lease.worker_id, token: lease.token };
                if op == Op::RenewStream {
                    let mut held = held;
                    let stream = tokio::time::timeout(cfg.op_timeout, RenewLane::open(&mut held.client))
                        .await
                        .map_err(|_| anyhow::anyhow!("client timeout opening the renew stream of client {i}"))?
                        .map_err(|e| anyhow::anyhow!("opening the renew stream of client {i}: {e}"))?;
                    Worker::RenewStream { held, stream: Some(Box::new(stream)) }
                } else {
                    Worker::Renew(held)
                }
            }
        });
    }
    Ok(workers)
}

/// One closed-loop run of `op` with `cfg.clients` clients; returns the JSON result row
/// (without the identifying fields the caller adds).
pub async fn run(op: Op, target: &Target, cfg: LoadCfg) -> anyhow::Result<Value> {
    anyhow::ensure!(!target.channels.is_empty(), "no endpoints");
    anyhow::ensure!(op != Op::Both, "run one op at a time");
    let tag = format!("bench-{}", op.name());
    let before = cluster::view(&target.channels).await;
    let mut node_ids = Vec::with_capacity(target.channels.len());
    for c in &target.channels {
        node_ids.push(cluster::status(c).await.map_or(0, |s| s.node_id));
    }
    let workers = workers(op, target, cfg, &tag).await?;

    let start = Instant::now();
    let (t_measure, t_end) = (start + cfg.warmup, start + cfg.warmup + cfg.duration);
    let handles: Vec<_> = workers
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            let via_leader = node_ids[i % node_ids.len()] == before.leader_id;
            tokio::spawn(drive(w, via_leader, cfg, t_measure, t_end))
        })
        .collect();

    tokio::time::sleep_until(t_measure.into()).await;
    let at_measure = cluster::view(&target.channels).await;
    let cpu = CpuWindow::start(&target.server_pids);
    tokio::time::sleep_until(t_end.into()).await;
    let at_end = cluster::view(&target.channels).await;
    let cpu = cpu.finish();

    let (mut main, mut release, mut via_leader, mut via_follower) = (Lat::new(), Lat::new(), Lat::new(), Lat::new());
    let mut back = Vec::with_capacity(handles.len());
    for h in handles {
        let (rec, w) = h.await?;
        main.merge(&rec.main);
        release.merge(&rec.release);
        if rec.via_leader {
            via_leader.merge(&rec.main);
        } else {
            via_follower.merge(&rec.main);
        }
        back.push(w);
    }
    let after = cluster::view(&target.channels).await;
    // Give the renew leases back (best effort): a reused cluster then starts empty again.
    for w in back {
        if let Worker::Renew(mut held) | Worker::RenewStream { mut held, .. } = w {
            let release = pb::ReleaseRequest { worker_id: held.worker_id, token: held.token, last_ts_ms: 0 };
            let _ = call(cfg.op_timeout, held.client.release(release)).await;
        }
    }

    let window = cfg.duration.as_secs_f64();
    let commands = main.count() + release.count();
    let entries = at_end.commit_index.saturating_sub(at_measure.commit_index);
    let mut out = json!({
        "result": main.summary(window),
        "raft": {
            "entries_in_window": entries,
            "commands_in_window": commands,
            "commands_per_entry": if entries > 0 { round(commands as f64 / entries as f64, 2) } else { 0.0 },
            "before": view_json(&before),
            "after": view_json(&after),
            "term_changes": after.term.saturating_sub(before.term),
            "leader_changed": before.leader_id != after.leader_id,
        },
        "via_leader": via_leader.summary(window),
        "via_follower": via_follower.summary(window),
        "cpu": cpu,
    });
    if op == Op::Acquire {
        out["release"] = release.summary(window);
        out["raft_writes_per_s"] = json!(round(commands as f64 / window, 1));
    }
    Ok(out)
}

fn view_json(v: &View) -> Value {
    json!({"leader_id": v.leader_id, "term": v.term, "commit_index": v.commit_index, "answered": v.answered})
}
