//! `fleet` (issue 11): one process holding N leases of a 5-node registry, each renewed on its
//! own schedule as a worker's keeper does (every TTL/3 minus up to 10 % jitter, counted from
//! the last successful renewal's send time), with bounded concurrency.
//!
//! The registry runs with the 41/16/6 ID layout (`--worker-id-bits=16 --sequence-bits=6`), so
//! up to 65 536 leases fit. Each lease starts renewing as soon as it is granted (a lease
//! granted early must not expire while the rest are acquired); the measured renewal phase
//! starts once all are held and lasts `--duration`. Measured: successful renewals and their
//! latency (HDR), leases refused as lost (re-acquired and counted), deadline misses (an answer
//! after the deadline the previous grant or renewal gave: its send time + TTL on this
//! process's monotonic clock), and per node CPU, peak RSS, bytes written and data dir size.
//!
//! Renewals are unary `Renew` calls, or with `--stream` go over one `RenewStream` per
//! connection, shared by the leases on it (many renewals in flight, told apart by tag).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use fenceflake_proto::duration::parse_duration;
use fenceflake_proto::tls::Role;
use fenceflake_proto::v1 as pb;
use fenceflake_proto::v1::registry_client::RegistryClient;
use fenceflake_proto::wire::Reason;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::cluster::{self, holder_name, Cluster, ClusterOpts, NodeInfo};
use crate::load::wall_ms;
use crate::stats::{round, Lat};
use crate::tls::{self, TlsOpts, CLIENT_NAME};

/// Worker-ID bits of the fleet's layout (41/16/6): the most leases a run can hold is 2^16.
pub const WORKER_ID_BITS: u8 = 16;
/// Sequence bits of the fleet's layout.
pub const SEQUENCE_BITS: u8 = 6;
/// The most leases: every worker ID of the layout.
pub const MAX_LEASES: u32 = 1 << WORKER_ID_BITS;
/// The registry's default `--max-ttl`; a longer `--ttl` raises it for the run.
const REGISTRY_DEFAULT_MAX_TTL: Duration = Duration::from_secs(60);
/// Renewals are sent up to this much before TTL/3 (the worker's `RENEW_JITTER_PERCENT`).
pub const JITTER_PERCENT: u64 = 10;
/// Pause after a failed call before the next try (a failing lease must not spin).
const RETRY_PAUSE: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IdMode {
    /// Lease `i` asks for worker ID `i`.
    Specific,
    /// Every Acquire leaves the worker ID to the registry.
    Auto,
}

#[derive(Debug, Args)]
pub struct FleetArgs {
    /// Leases the one bench process holds, each under its own holder ID (1..=65536: the
    /// 16-bit worker-ID space of the 41/16/6 layout).
    #[arg(long, env = "FENCEFLAKE_BENCH_FLEET_LEASES", default_value_t = 1024)]
    pub leases: u32,
    /// TTL of every lease; each is renewed every TTL/3 minus up to 10 % jitter.
    #[arg(long, env = "FENCEFLAKE_BENCH_FLEET_TTL", default_value = "10s", value_parser = parse_duration)]
    pub ttl: Duration,
    /// Length of the measured renewal phase (it starts once every lease is held).
    #[arg(long, env = "FENCEFLAKE_BENCH_FLEET_DURATION", default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Which worker IDs the Acquires ask for: `specific` (lease i asks for ID i) or `auto`.
    #[arg(long, env = "FENCEFLAKE_BENCH_FLEET_WORKER_IDS", value_enum, default_value = "specific")]
    pub worker_ids: IdMode,
    /// Acquires and renewals in flight at most (a semaphore over all leases).
    #[arg(long, env = "FENCEFLAKE_BENCH_FLEET_IN_FLIGHT", default_value_t = 256)]
    pub in_flight: usize,
    /// gRPC connections per node; lease i uses connection i mod (all of them).
    #[arg(long, env = "FENCEFLAKE_BENCH_FLEET_CHANNELS_PER_NODE", default_value_t = 2)]
    pub channels_per_node: usize,
    /// Send everything to the leader (as of the start) instead of spreading over all nodes
    /// (followers forward to the leader).
    #[arg(long, env = "FENCEFLAKE_BENCH_FLEET_TO_LEADER")]
    pub to_leader: bool,
    /// Renew over one RenewStream per connection (renewals multiplexed by tag) instead of a
    /// unary Renew call each.
    #[arg(long, env = "FENCEFLAKE_BENCH_FLEET_STREAM")]
    pub stream: bool,
    /// Client deadline of one Acquire or Renew call.
    #[arg(long, env = "FENCEFLAKE_BENCH_FLEET_OP_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub op_timeout: Duration,
    /// Give up if the N leases are not all held within this long.
    #[arg(long, env = "FENCEFLAKE_BENCH_FLEET_ACQUIRE_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    pub acquire_timeout: Duration,
    /// SIGKILL the leader this long into the measured phase (it stays down): a leader kill
    /// must lose no lease and miss no deadline; `killed_leader` names it in the JSON line.
    #[arg(long, env = "FENCEFLAKE_BENCH_FLEET_KILL_LEADER_AFTER", value_parser = parse_duration)]
    pub kill_leader_after: Option<Duration>,
    /// Append the JSON line to this file too.
    #[arg(long, env = "FENCEFLAKE_BENCH_FLEET_OUT")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub cluster: ClusterOpts,
}

/// Refuse values the run cannot honour, naming them.
pub fn validate(a: &FleetArgs) -> anyhow::Result<()> {
    if a.leases == 0 || a.leases > MAX_LEASES {
        bail!(
            "--leases {} is out of range: 1..={MAX_LEASES} (2^{WORKER_ID_BITS} worker IDs of the 41/16/6 layout)",
            a.leases
        );
    }
    if a.ttl < Duration::from_millis(30) {
        bail!("--ttl {:?} is too short: at least 30ms (renewals go every TTL/3)", a.ttl);
    }
    if a.duration.is_zero() {
        bail!("--duration must be above 0");
    }
    if a.in_flight == 0 {
        bail!("--in-flight must be at least 1");
    }
    if a.channels_per_node == 0 {
        bail!("--channels-per-node must be at least 1");
    }
    if a.op_timeout.is_zero() || a.acquire_timeout.is_zero() {
        bail!("--op-timeout and --acquire-timeout must be above 0");
    }
    Ok(())
}

/// The registry flags of the fleet's cluster: the 41/16/6 layout, and `--max-ttl` when the
/// TTL asked for is above the registry's default.
pub fn node_args(ttl: Duration) -> Vec<String> {
    let mut args = vec![format!("--worker-id-bits={WORKER_ID_BITS}"), format!("--sequence-bits={SEQUENCE_BITS}")];
    if ttl > REGISTRY_DEFAULT_MAX_TTL {
        args.push(format!("--max-ttl={}ms", ttl.as_millis()));
    }
    args
}

/// The renewal interval with a jitter cut of `cut_percent` (0..=[`JITTER_PERCENT`]): TTL/3
/// shortened by that much, never lengthened.
pub fn renew_interval(ttl: Duration, cut_percent: u64) -> Duration {
    let cut = cut_percent.min(JITTER_PERCENT) as u32;
    (ttl / 3) * (100 - cut) / 100
}

/// When the next renewal of a lease is due: a jittered TTL/3 after the last successful
/// renewal (or grant) was *sent*, as the worker's keeper counts.
fn next_due(ttl: Duration, last_sent: Instant) -> Instant {
    last_sent + renew_interval(ttl, fenceflake_proto::entropy::random_in(0..=JITTER_PERCENT))
}

/// The deadline a lease has on this process's clock: the send time of the call that granted
/// or last renewed it plus the TTL. An answer after it is a deadline miss.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(Instant);

impl Deadline {
    pub fn granted(sent: Instant, ttl: Duration) -> Deadline {
        Deadline(sent + ttl)
    }

    /// Whether an answer received at `answered` came after the deadline (a miss).
    pub fn missed_by(&self, answered: Instant) -> bool {
        answered > self.0
    }
}

/// Counters shared by every lease task. Only events of calls *sent* in the measured phase
/// count.
#[derive(Default)]
struct Tally {
    renew: Mutex<Option<Lat>>,
    /// From a renewal's due time to the send of the attempt that succeeded: the schedule's
    /// slip when the registry (or the in-flight bound) cannot keep up.
    lag: Mutex<Option<Lat>>,
    acquire: Mutex<Option<Lat>>,
    leases_lost: AtomicU64,
    reacquired: AtomicU64,
    deadline_misses: AtomicU64,
    lost_samples: Mutex<Vec<String>>,
}

fn with_lat(slot: &Mutex<Option<Lat>>, f: impl FnOnce(&mut Lat)) {
    let mut guard = slot.lock().unwrap_or_else(PoisonError::into_inner);
    f(guard.get_or_insert_with(Lat::new));
}

fn take_lat(slot: &Mutex<Option<Lat>>) -> Lat {
    slot.lock().unwrap_or_else(PoisonError::into_inner).take().unwrap_or_else(Lat::new)
}

/// The run's shared state: when the measured phase began (unset while acquiring), the stop
/// signal, the concurrency bound and the tallies.
struct Shared {
    ttl: Duration,
    op_timeout: Duration,
    mode: IdMode,
    incarnation: u64,
    measure_from: OnceLock<Instant>,
    permits: Semaphore,
    tally: Tally,
}

impl Shared {
    fn measured(&self, sent: Instant) -> bool {
        self.measure_from.get().is_some_and(|t| sent >= *t)
    }
}

/// One lease held by a task.
struct Held {
    worker_id: u32,
    token: u64,
    deadline: Deadline,
    last_sent: Instant,
}

enum Answer<T> {
    Ok(T),
    /// The registry says the lease is gone for good (fenced, superseded, expired, quarantined).
    Lost(String),
    /// Anything else: try again.
    Retry(String),
}

async fn rpc<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Answer<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(r)) => Answer::Ok(r.into_inner()),
        Ok(Err(s)) if Reason::of(&s).is_some_and(Reason::lease_is_lost) => Answer::Lost(crate::load::status_msg(&s)),
        Ok(Err(s)) => Answer::Retry(crate::load::status_msg(&s)),
        Err(_) => Answer::Retry(format!("client timeout {timeout:?}")),
    }
}

/// One connection of the fleet: Acquires (and unary renewals) on its client; with `--stream`
/// its renewals go over its shared RenewStream.
#[derive(Clone)]
struct Conn {
    client: RegistryClient<Channel>,
    stream: Option<Arc<SharedStream>>,
}

impl Conn {
    async fn renew(&mut self, req: pb::RenewRequest, timeout: Duration) -> Answer<pb::Lease> {
        match &self.stream {
            Some(stream) => stream.renew(req, timeout).await,
            None => rpc(timeout, self.client.renew(req)).await,
        }
    }
}

/// The answers a stream still owes, by tag; `None` once the stream ended (a new one is opened).
type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<pb::RenewStreamResponse>>>>>;

/// A RenewStream shared by every lease of a connection, (re)opened on demand.
struct SharedStream {
    client: RegistryClient<Channel>,
    next_tag: AtomicU64,
    open: tokio::sync::Mutex<Option<(mpsc::Sender<pb::RenewStreamRequest>, Pending)>>,
}

impl SharedStream {
    fn new(client: RegistryClient<Channel>) -> SharedStream {
        SharedStream { client, next_tag: AtomicU64::new(1), open: tokio::sync::Mutex::new(None) }
    }

    /// The open stream, or a new one if there is none or it ended.
    async fn lane(&self, timeout: Duration) -> Result<(mpsc::Sender<pb::RenewStreamRequest>, Pending), String> {
        let mut open = self.open.lock().await;
        if let Some((tx, pending)) = open.as_ref() {
            if pending.lock().unwrap_or_else(PoisonError::into_inner).is_some() {
                return Ok((tx.clone(), pending.clone()));
            }
        }
        // Bounded like the semaphore: when full, renewals wait to be sent.
        let (tx, rx) = mpsc::channel(1024);
        let mut client = self.client.clone();
        let answers = match tokio::time::timeout(timeout, client.renew_stream(ReceiverStream::new(rx))).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(s)) => return Err(crate::load::status_msg(&s)),
            Err(_) => return Err(format!("client timeout {timeout:?} opening the renew stream")),
        };
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        tokio::spawn(route_answers(answers, pending.clone()));
        *open = Some((tx.clone(), pending.clone()));
        Ok((tx, pending))
    }

    async fn renew(&self, renewal: pb::RenewRequest, timeout: Duration) -> Answer<pb::Lease> {
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let (tx, pending) = match self.lane(timeout).await {
            Ok(lane) => lane,
            Err(e) => return Answer::Retry(e),
        };
        let (answer_tx, answer_rx) = oneshot::channel();
        match pending.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
            Some(waiting) => waiting.insert(tag, answer_tx),
            None => return Answer::Retry("renew stream ended".into()),
        };
        if tx.send(pb::RenewStreamRequest { tag, renew: Some(renewal) }).await.is_err() {
            return Answer::Retry("renew stream closed".into());
        }
        match tokio::time::timeout(timeout, answer_rx).await {
            Ok(Ok(answer)) => stream_answer(answer),
            Ok(Err(_)) => Answer::Retry("renew stream ended before the answer".into()),
            Err(_) => {
                if let Some(waiting) = pending.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
                    waiting.remove(&tag);
                }
                Answer::Retry(format!("client timeout {timeout:?}"))
            }
        }
    }
}

/// Hand each answer of a stream to the renewal waiting for its tag; when the stream ends,
/// every renewal still waiting is told (its sender dropped) and the stream marked ended.
async fn route_answers(mut answers: tonic::Streaming<pb::RenewStreamResponse>, pending: Pending) {
    while let Ok(Some(answer)) = answers.message().await {
        let waiting =
            pending.lock().unwrap_or_else(PoisonError::into_inner).as_mut().and_then(|w| w.remove(&answer.tag));
        if let Some(waiting) = waiting {
            let _ = waiting.send(answer);
        }
    }
    pending.lock().unwrap_or_else(PoisonError::into_inner).take();
}

/// A stream answer as a unary call's: lost when its reason says the lease is gone for good.
fn stream_answer(answer: pb::RenewStreamResponse) -> Answer<pb::Lease> {
    let lost = matches!(&answer.result,
        Some(pb::renew_stream_response::Result::Error(e)) if e.reason.parse::<Reason>().is_ok_and(Reason::lease_is_lost));
    match crate::load::answer_result(answer) {
        Ok(lease) => Answer::Ok(lease),
        Err(e) if lost => Answer::Lost(e),
        Err(e) => Answer::Retry(e),
    }
}

/// Acquire lease `i` under `holder`, retrying until granted or `give_up`.
async fn acquire(
    s: &Shared,
    client: &mut RegistryClient<Channel>,
    i: u32,
    holder: &str,
    give_up: Instant,
) -> anyhow::Result<Held> {
    let mut last = String::new();
    while Instant::now() < give_up {
        let req = pb::AcquireRequest {
            holder: holder.to_string(),
            worker_id: (s.mode == IdMode::Specific).then_some(i),
            ttl_ms: s.ttl.as_millis() as u64,
            incarnation: s.incarnation,
        };
        let answer = {
            let _permit = s.permits.acquire().await.context("the semaphore closed")?;
            let sent = Instant::now();
            (sent, rpc(s.op_timeout, client.acquire(req)).await)
        };
        match answer {
            (sent, Answer::Ok(lease)) => {
                with_lat(&s.tally.acquire, |l| l.record(sent.elapsed()));
                let deadline = Deadline::granted(sent, s.ttl);
                return Ok(Held { worker_id: lease.worker_id, token: lease.token, deadline, last_sent: sent });
            }
            (_, Answer::Lost(e) | Answer::Retry(e)) => {
                with_lat(&s.tally.acquire, |l| l.error(e.clone()));
                last = e;
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
    bail!("lease {i} (holder {holder}) not granted in time; last error: {last}")
}

/// Renew `held` until one renewal succeeds (true) or the lease is lost (false).
async fn renew_once(s: &Shared, conn: &mut Conn, held: &mut Held, due: Instant) -> anyhow::Result<bool> {
    loop {
        let req = pb::RenewRequest {
            worker_id: held.worker_id,
            token: held.token,
            wall_ms_at_send: wall_ms(),
            max_minted_ts_ms: 0,
        };
        let (sent, answer) = {
            let _permit = s.permits.acquire().await.context("the semaphore closed")?;
            let sent = Instant::now();
            (sent, conn.renew(req, s.op_timeout).await)
        };
        let answered = Instant::now();
        let measured = s.measured(sent);
        match answer {
            Answer::Ok(_) => {
                if measured {
                    with_lat(&s.tally.renew, |l| l.record(answered - sent));
                    with_lat(&s.tally.lag, |l| l.record(sent.saturating_duration_since(due)));
                    if held.deadline.missed_by(answered) {
                        s.tally.deadline_misses.fetch_add(1, Ordering::Relaxed);
                    }
                }
                held.deadline = Deadline::granted(sent, s.ttl);
                held.last_sent = sent;
                return Ok(true);
            }
            Answer::Lost(e) => {
                if measured {
                    s.tally.leases_lost.fetch_add(1, Ordering::Relaxed);
                    if held.deadline.missed_by(answered) {
                        s.tally.deadline_misses.fetch_add(1, Ordering::Relaxed);
                    }
                    let mut samples = s.tally.lost_samples.lock().unwrap_or_else(PoisonError::into_inner);
                    if samples.len() < 5 && !samples.contains(&e) {
                        samples.push(e);
                    }
                }
                return Ok(false);
            }
            Answer::Retry(e) => {
                if measured {
                    with_lat(&s.tally.renew, |l| l.error(e));
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// One lease's life: acquire it (reporting the outcome on `acquired`), then renew it on its
/// own schedule until `stop`; a lease refused as lost is acquired again.
async fn lease_task(
    s: Arc<Shared>,
    mut conn: Conn,
    i: u32,
    acquired: mpsc::UnboundedSender<anyhow::Result<()>>,
    give_up: Instant,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let holder = holder_name("fleet");
    let first = acquire(&s, &mut conn.client, i, &holder, give_up).await;
    let mut held = match first {
        Ok(h) => {
            let _ = acquired.send(Ok(()));
            h
        }
        Err(e) => {
            let _ = acquired.send(Err(e));
            return Ok(());
        }
    };
    loop {
        let due = next_due(s.ttl, held.last_sent);
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => {}
            _ = stop.changed() => return Ok(()),
        }
        let kept = tokio::select! {
            r = renew_once(&s, &mut conn, &mut held, due) => r?,
            _ = stop.changed() => return Ok(()),
        };
        if !kept {
            let again = tokio::select! {
                // Until granted or stopped: a lost lease is taken again, however long that takes.
                r = acquire(&s, &mut conn.client, i, &holder, Instant::now() + Duration::from_secs(86_400)) => r?,
                _ = stop.changed() => return Ok(()),
            };
            if s.measured(again.last_sent) {
                s.tally.reacquired.fetch_add(1, Ordering::Relaxed);
            }
            held = again;
        }
    }
}

/// Per-node counters read at the phase boundaries.
#[derive(Debug, Clone, Copy, Default)]
struct NodeSample {
    cpu_s: f64,
    write_bytes: u64,
    data_dir_bytes: u64,
}

fn sample(n: &NodeInfo) -> NodeSample {
    NodeSample {
        cpu_s: cluster::cpu_seconds(n.pid).unwrap_or(0.0),
        write_bytes: cluster::io_write_bytes(n.pid).unwrap_or(0),
        data_dir_bytes: cluster::dir_bytes(&n.data_dir),
    }
}

/// The connections the leases use: `channels_per_node` per node (or per the leader only),
/// each with its RenewStream under `--stream`.
fn clients(a: &FleetArgs, cluster: &Cluster, nodes: &[NodeInfo], leader: u64) -> anyhow::Result<Vec<Conn>> {
    let security = cluster.side().security(Role::Worker, CLIENT_NAME)?;
    let mut out = Vec::new();
    for _ in 0..a.channels_per_node {
        for n in nodes.iter().filter(|n| !a.to_leader || n.id == leader) {
            let client = RegistryClient::new(tls::channel(&n.client_addr, &security, &[Role::Node])?);
            let stream = a.stream.then(|| Arc::new(SharedStream::new(client.clone())));
            out.push(Conn { client, stream });
        }
    }
    if out.is_empty() {
        bail!("no node to send to (leader {leader} is not one of the running nodes)");
    }
    Ok(out)
}

/// Wait for every lease's acquire outcome; the first failure ends the run.
async fn await_acquired(rx: &mut mpsc::UnboundedReceiver<anyhow::Result<()>>, n: u32) -> anyhow::Result<()> {
    for got in 0..n {
        match rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(e.context(format!("acquiring {n} leases: {got} held when this one failed"))),
            None => bail!("lease tasks ended before all {n} leases were held ({got} held)"),
        }
    }
    Ok(())
}

pub async fn run(a: FleetArgs, tls: &TlsOpts) -> anyhow::Result<()> {
    validate(&a)?;
    let mut out = crate::Output::new(a.out.as_ref())?;
    let mut opts = a.cluster.clone();
    opts.node_args.extend(node_args(a.ttl));
    let mut cluster = Cluster::start(&opts, tls).await?;
    let nodes = cluster.node_infos();
    let leader_start = cluster::view(&cluster.channels()).await.leader_id;
    let conns = clients(&a, &cluster, &nodes, leader_start)?;
    let initial: Vec<NodeSample> = nodes.iter().map(sample).collect();
    let shared = Arc::new(Shared {
        ttl: a.ttl,
        op_timeout: a.op_timeout,
        mode: a.worker_ids,
        incarnation: fenceflake_proto::entropy::random_in(1..=u64::MAX),
        measure_from: OnceLock::new(),
        permits: Semaphore::new(a.in_flight),
        tally: Tally::default(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let (acq_tx, mut acq_rx) = mpsc::unbounded_channel();
    let t_acquire = Instant::now();
    let give_up = t_acquire + a.acquire_timeout;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..a.leases {
        let conn = conns[i as usize % conns.len()].clone();
        tasks.spawn(lease_task(shared.clone(), conn, i, acq_tx.clone(), give_up, stop_rx.clone()));
    }
    drop(acq_tx);
    await_acquired(&mut acq_rx, a.leases).await?;
    let acquire_s = t_acquire.elapsed().as_secs_f64();
    let before: Vec<NodeSample> = nodes.iter().map(sample).collect();
    let t0 = Instant::now();
    let _ = shared.measure_from.set(t0);
    // The killed node's counters as it died (its /proc entry goes with it).
    let mut killed: Option<(u64, NodeSample)> = None;
    match a.kill_leader_after.filter(|after| *after < a.duration) {
        Some(after) => {
            tokio::time::sleep(after).await;
            let leader = cluster::view(&cluster.channels()).await.leader_id;
            let info = nodes.iter().find(|n| n.id == leader).context("no leader to kill")?;
            let last = sample(info);
            cluster.kill(leader)?;
            eprintln!("leader {leader} killed {after:?} into the measured phase");
            killed = Some((leader, last));
            tokio::time::sleep(a.duration - after).await;
        }
        None => tokio::time::sleep(a.duration).await,
    }
    let _ = stop_tx.send(true);
    while let Some(joined) = tasks.join_next().await {
        joined.context("a lease task panicked")??;
    }
    let duration_s = t0.elapsed().as_secs_f64();
    let after: Vec<NodeSample> = nodes
        .iter()
        .map(|n| match killed {
            Some((id, last)) if id == n.id => last,
            _ => sample(n),
        })
        .collect();
    let leader_end = cluster::view(&cluster.channels()).await.leader_id;
    let killed_leader = killed.map(|(id, _)| id);
    let phases = Phases { initial, before, after, leader_start, leader_end, killed_leader, acquire_s, duration_s };
    let row = report(&a, tls.is_tls(), &shared.tally, &nodes, &phases);
    drop(cluster);
    print_row(&a, tls.is_tls(), &row);
    out.emit(&row)
}

/// What was sampled at the phase boundaries.
struct Phases {
    initial: Vec<NodeSample>,
    before: Vec<NodeSample>,
    after: Vec<NodeSample>,
    leader_start: u64,
    leader_end: u64,
    killed_leader: Option<u64>,
    acquire_s: f64,
    duration_s: f64,
}

/// The readable line of a run, on stderr.
fn print_row(a: &FleetArgs, tls: bool, row: &Value) {
    eprintln!(
        "fenceflake fleet [{}, {} renew] {} leases ttl {:?}: {} renewals, p50 {} p99 {} max {} ms, {} lost, {} deadline misses, {} B written/renewal",
        crate::tls_label(tls),
        renew_rpc(a),
        a.leases,
        a.ttl,
        row["renewals"],
        row["renew_p50_ms"],
        row["renew_p99_ms"],
        row["renew_max_ms"],
        row["leases_lost"],
        row["deadline_misses"],
        row["bytes_written_per_renewal"]
    );
}

/// How the run renewed, in its JSON line.
fn renew_rpc(a: &FleetArgs) -> &'static str {
    if a.stream {
        "stream"
    } else {
        "unary"
    }
}

/// The JSON line of a run.
fn report(a: &FleetArgs, tls: bool, t: &Tally, nodes: &[NodeInfo], p: &Phases) -> Value {
    let renew = take_lat(&t.renew);
    let acquire = take_lat(&t.acquire);
    let lag = take_lat(&t.lag);
    let mut written = 0u64;
    let mut node_rows = Vec::new();
    for (k, n) in nodes.iter().enumerate() {
        let (i, b, e) = (p.initial[k], p.before[k], p.after[k]);
        let write_bytes = e.write_bytes.saturating_sub(b.write_bytes);
        written += write_bytes;
        node_rows.push(json!({
            "id": n.id,
            "was_leader": n.id == p.leader_end,
            "cpu_s": round(e.cpu_s - b.cpu_s, 2),
            "rss_max_bytes": cluster::rss_max_bytes(n.pid),
            "write_bytes": write_bytes,
            "data_dir_bytes_initial": i.data_dir_bytes,
            "data_dir_bytes_before": b.data_dir_bytes,
            "data_dir_bytes_after": e.data_dir_bytes,
        }));
    }
    let renewals = renew.count();
    json!({
        "kind": "fleet",
        "system": "fenceflake",
        "leases": a.leases,
        "ttl_ms": a.ttl.as_millis() as u64,
        "tls": tls,
        "layout": format!("41/{WORKER_ID_BITS}/{SEQUENCE_BITS}"),
        "worker_ids": format!("{:?}", a.worker_ids).to_lowercase(),
        "in_flight": a.in_flight,
        "renew_rpc": renew_rpc(a),
        "channels": if a.to_leader { a.channels_per_node } else { a.channels_per_node * nodes.len() },
        "to_leader": a.to_leader,
        "duration_s": round(p.duration_s, 2),
        "acquire_s": round(p.acquire_s, 2),
        "acquire_p50_ms": round(acquire.ms(0.5), 3),
        "acquire_p99_ms": round(acquire.ms(0.99), 3),
        "acquire_errors": acquire.errors,
        "acquire_error_samples": acquire.error_samples,
        "renewals": renewals,
        "renewals_per_s": round(renewals as f64 / p.duration_s.max(1e-9), 1),
        "renew_p50_ms": round(renew.ms(0.5), 3),
        "renew_p99_ms": round(renew.ms(0.99), 3),
        "renew_max_ms": round(renew.max_ms(), 3),
        "renew_errors": renew.errors,
        // What the schedule asks for (TTL/3 minus 5 % mean jitter) against what was done.
        "renewals_scheduled_per_s": round(f64::from(a.leases) / (a.ttl.as_secs_f64() / 3.0 * 0.95), 1),
        "renew_lag_p50_ms": round(lag.ms(0.5), 3),
        "renew_lag_p99_ms": round(lag.ms(0.99), 3),
        "renew_lag_max_ms": round(lag.max_ms(), 3),
        "renew_error_samples": renew.error_samples,
        "leases_lost": t.leases_lost.load(Ordering::Relaxed),
        "lost_samples": *t.lost_samples.lock().unwrap_or_else(PoisonError::into_inner),
        "reacquired": t.reacquired.load(Ordering::Relaxed),
        "deadline_misses": t.deadline_misses.load(Ordering::Relaxed),
        "leader_start": p.leader_start,
        "leader_end": p.leader_end,
        "killed_leader": p.killed_leader,
        "bytes_written_per_renewal": if renewals == 0 { Value::Null } else { json!(round(written as f64 / renewals as f64, 1)) },
        "load_average": cluster::load_average(),
        "nodes": node_rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> FleetArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            fleet: FleetArgs,
        }
        Cli::try_parse_from(std::iter::once("fleet").chain(extra.iter().copied())).expect("parses").fleet
    }

    /// Goal: `--leases` 0 or above 2^16 (the 16-bit worker-ID space) is refused, naming the
    /// value; the edges 1 and 65536 pass; a zero duration or in-flight bound is refused.
    #[test]
    fn validation_names_bad_values() {
        let err = validate(&args(&["--leases", "65537"])).expect_err("too many");
        assert!(err.to_string().contains("--leases 65537"), "{err}");
        let err = validate(&args(&["--leases", "0"])).expect_err("none");
        assert!(err.to_string().contains("--leases 0"), "{err}");
        validate(&args(&["--leases", "65536"])).expect("all IDs");
        validate(&args(&["--leases", "1", "--ttl", "10s", "--duration", "60s"])).expect("one");
        assert!(validate(&args(&["--duration", "0s"])).is_err());
        assert!(validate(&args(&["--in-flight", "0"])).is_err());
        assert!(validate(&args(&["--ttl", "10ms"])).is_err());
    }

    /// Goal: renewals are unary unless `--stream`, and the JSON line says which.
    #[test]
    fn stream_flag_names_the_renew_rpc() {
        assert_eq!(renew_rpc(&args(&[])), "unary");
        assert_eq!(renew_rpc(&args(&["--stream"])), "stream");
    }

    /// Goal: a stream answer is read as the unary call's: a lease, a lost lease when its reason
    /// says so, and anything else retried.
    #[test]
    fn stream_answers_are_classified_by_reason() {
        let error = |code: tonic::Code, reason: &str| pb::RenewStreamResponse {
            tag: 1,
            result: Some(pb::renew_stream_response::Result::Error(pb::RenewError {
                code: code as i32,
                message: format!("{reason}: ..."),
                reason: reason.to_string(),
            })),
        };
        let lease = pb::RenewStreamResponse {
            tag: 2,
            result: Some(pb::renew_stream_response::Result::Lease(pb::Lease { token: 9, ..Default::default() })),
        };
        assert!(matches!(stream_answer(lease), Answer::Ok(l) if l.token == 9));
        assert!(
            matches!(stream_answer(error(tonic::Code::FailedPrecondition, "FENCED")), Answer::Lost(m) if m.contains("FailedPrecondition"))
        );
        assert!(matches!(stream_answer(error(tonic::Code::Unavailable, "NO_LEADER")), Answer::Retry(_)));
        assert!(matches!(stream_answer(error(tonic::Code::Unavailable, "")), Answer::Retry(_)));
    }

    /// Goal: the nodes get the 41/16/6 layout flags, and `--max-ttl` only when the TTL is above
    /// the registry's 60 s default (else the Acquires would be refused as invalid).
    #[test]
    fn node_args_carry_layout_and_max_ttl() {
        assert_eq!(node_args(Duration::from_secs(10)), vec!["--worker-id-bits=16", "--sequence-bits=6"]);
        assert_eq!(node_args(Duration::from_secs(60)).len(), 2);
        let long = node_args(Duration::from_secs(90));
        assert_eq!(long.last().map(String::as_str), Some("--max-ttl=90000ms"));
    }

    /// Goal: the schedule is the worker's: TTL/3 shortened by at most 10 %, never lengthened,
    /// and counted from the last send time.
    #[test]
    fn schedule_is_ttl_third_minus_jitter() {
        let ttl = Duration::from_secs(9);
        assert_eq!(renew_interval(ttl, 0), Duration::from_secs(3));
        assert_eq!(renew_interval(ttl, 10), Duration::from_millis(2700));
        assert_eq!(renew_interval(ttl, 50), Duration::from_millis(2700), "cut capped at 10 %");
        let sent = Instant::now();
        for _ in 0..200 {
            let due = next_due(ttl, sent) - sent;
            assert!(due >= Duration::from_millis(2700) && due <= Duration::from_secs(3), "{due:?}");
        }
    }

    /// Goal: a deadline miss is an answer strictly after send time + TTL of the call that gave
    /// the lease its current deadline; an answer at or before it is on time.
    #[test]
    fn deadline_miss_accounting() {
        let ttl = Duration::from_secs(10);
        let sent = Instant::now();
        let d = Deadline::granted(sent, ttl);
        assert!(!d.missed_by(sent + Duration::from_secs(3)));
        assert!(!d.missed_by(sent + ttl));
        assert!(d.missed_by(sent + ttl + Duration::from_millis(1)));
        // A renewal sent at +3 s moves the deadline to +13 s.
        let renewed = Deadline::granted(sent + Duration::from_secs(3), ttl);
        assert!(!renewed.missed_by(sent + Duration::from_secs(12)));
        assert!(renewed.missed_by(sent + Duration::from_secs(14)));
    }
}
