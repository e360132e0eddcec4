//! The workload: runs inside the harness's client namespace (never the root one), calls
//! `Generate` / `GenerateBatch` across the workers at the set rate (each call to a random
//! worker, or all through `WorkerClient`: `workload_balanced.rs`), polls each worker's
//! `Status` to record its lease changes, runs the registry workload for the
//! linearizability checker ([`crate::registry_workload`]; and, in the `adversary` scenario,
//! the forger of [`crate::adversary`]), and appends everything to its history file.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fenceflake_proto::channel::boxed;
use fenceflake_proto::tls::{self, Role, Security};
use fenceflake_proto::v1 as pb;
use fenceflake_proto::v1::generator_client::GeneratorClient;
use fenceflake_proto::v1::registry_client::RegistryClient;
use fenceflake_proto::wire::{Reason, PARK_REASON_METADATA_KEY, RETRY_AFTER_METADATA_KEY};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::{Channel, Endpoint};

use crate::clock::{wall_ms, RunClock};
use crate::history::{ClientOp, Event, GenerateFn, HistoryWriter, IdRange, LeaseEvent, LeaseEventKind, Phase};
use crate::registry_workload::{self, Timeline, REGISTRY_WORKLOAD_IDS};

/// How long one client call may take before its outcome is recorded as unknown (`info`).
const OP_TIMEOUT: Duration = Duration::from_secs(1);
/// How often each worker's `Status` is polled for lease changes.
const STATUS_POLL: Duration = Duration::from_millis(20);
/// Concurrent client calls in flight at most.
const IN_FLIGHT_MAX: usize = 16;
/// Largest `GenerateBatch` count the workload asks for in normal operation.
const BATCH_COUNT_MAX: u32 = 200;

#[path = "workload_balanced.rs"]
mod balanced;

/// How the ID workload reaches the workers (`--workload-client`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkloadClient {
    /// Each call to one worker picked at random, waiting out the call timeout if it hangs:
    /// every worker gets calls whatever its state, which is what checking safety needs.
    #[default]
    Direct,
    /// Every call through `fenceflake_client::WorkerClient` (hedged calls, latency-derived
    /// timeouts, outlier ejection): what a real caller sees.
    Balanced,
}

impl WorkloadClient {
    /// The flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadClient::Direct => "direct",
            WorkloadClient::Balanced => "balanced",
        }
    }
}

/// What to run; passed on the command line from the controller.
#[derive(Debug, Clone)]
pub struct Plan {
    pub workers: Vec<(String, String)>,
    pub registry: Vec<String>,
    pub rate_per_sec: u32,
    pub duration: Duration,
    pub seed: u64,
    pub clock: RunClock,
    /// (worker index, start offset, IDs per call, calls): one caller above a worker's ceiling.
    pub bursts: Vec<(usize, Duration, u32, u32)>,
    /// The run's certificate directory (`crate::tls`), or `None`: plaintext.
    pub certs: Option<std::path::PathBuf>,
    /// When the `adversary` scenario's forger runs (start and stop offsets), if at all.
    pub adversary: Option<(Duration, Duration)>,
    /// How the ID load reaches the workers (bursts and `Status` polls always go direct).
    pub client: WorkloadClient,
}

pub(crate) type Shared = Arc<Mutex<HistoryWriter>>;

/// The last lease deadline each worker reported in a reply, so a change is recorded once.
type Deadlines = Arc<Mutex<HashMap<String, (u32, u64, u64)>>>;

pub(crate) fn record(history: &Shared, event: Event) {
    let mut writer = history.lock().unwrap_or_else(PoisonError::into_inner);
    if let Err(e) = writer.append(&event) {
        tracing::error!(error = %e, "cannot append to the history");
    }
}

/// The registry workload's and the adversary's timeline in the harness: the run's monotonic clock, the harness's
/// (unfaked) wall clock, and the history file.
pub(crate) struct HarnessTimeline {
    pub(crate) clock: RunClock,
    pub(crate) history: Shared,
}

impl Timeline for HarnessTimeline {
    fn now_ns(&self) -> u64 {
        self.clock.now_ns()
    }

    fn wall_ms(&self) -> u64 {
        wall_ms()
    }

    fn record(&self, event: Event) {
        record(&self.history, event);
    }
}

/// A lazily connected channel to `addr` over `security`; under TLS the server must present a
/// certificate of the `expect`ed role (a worker, or a registry node).
pub(crate) fn channel(addr: &str, security: &Security, expect: &'static [Role]) -> anyhow::Result<Channel> {
    let endpoint =
        Endpoint::from_shared(tls::endpoint_url(addr))?.connect_timeout(Duration::from_millis(300)).tcp_nodelay(true);
    Ok(tls::connect_lazy(endpoint, security, expect))
}

/// The status as the history records it: code, the reason word the registry or the worker
/// put in its metadata (if any), and the message.
pub(crate) fn status_text(status: &tonic::Status) -> String {
    let word = Reason::of(status)
        .map(|r| r.as_str().to_string())
        .or_else(|| park_reason(status).map(|r| format!("parked {r}")));
    match word {
        Some(word) => format!("{:?} [{word}]: {}", status.code(), status.message()),
        None => format!("{:?}: {}", status.code(), status.message()),
    }
}

/// The park cause a worker names when it refuses to mint.
fn park_reason(status: &tonic::Status) -> Option<&str> {
    status.metadata().get(PARK_REASON_METADATA_KEY).and_then(|v| v.to_str().ok())
}

/// Run the plan to completion, writing to `history`.
pub async fn run(plan: Plan, history: HistoryWriter) -> anyhow::Result<()> {
    anyhow::ensure!(
        !crate::net::has_default_route()?,
        "refusing to run the workload in a network namespace with a default route: test addresses would leave the machine (it runs inside the harness's client namespace, started by `fenceflake-jepsen test`)"
    );
    let history: Shared = Arc::new(Mutex::new(history));
    // The ID workload calls workers as a `client`; the registry workload calls Acquire, Renew
    // and Release itself, so it is a `worker` to the registry.
    let as_client = crate::tls::security(plan.certs.as_deref(), crate::tls::WORKLOAD_CLIENT)?;
    let as_worker = crate::tls::security(plan.certs.as_deref(), crate::tls::WORKLOAD_REGISTRY)?;
    let mut clients = Vec::new();
    for (name, addr) in &plan.workers {
        clients.push((name.clone(), GeneratorClient::new(channel(addr, &as_client, &[Role::Worker])?)));
    }
    let end_ns = plan.clock.now_ns() + plan.duration.as_nanos() as u64;
    let mut tasks = Vec::new();
    for (name, client) in &clients {
        tasks.push(tokio::spawn(poll_status(name.clone(), client.clone(), plan.clock, end_ns, history.clone())));
    }
    for (index, first_id) in REGISTRY_WORKLOAD_IDS.into_iter().enumerate() {
        let clients = plan
            .registry
            .iter()
            .map(|addr| channel(addr, &as_worker, &[Role::Node]).map(|c| RegistryClient::new(boxed(c))))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let process = index as u64 + 1000;
        let workload = registry_workload::Process {
            process,
            first_id,
            seed: process,
            round_pause: registry_workload::RoundPause::HARNESS,
            expiry_race: None,
            reader: None,
        };
        let timeline = HarnessTimeline { clock: plan.clock, history: history.clone() };
        tasks.push(tokio::spawn(async move { registry_workload::run(workload, clients, end_ns, &timeline).await }));
    }
    if let Some((start, stop)) = plan.adversary {
        let adversary = crate::adversary::for_harness(&plan, history.clone())?;
        tasks.push(tokio::spawn(adversary.run(start.as_nanos() as u64, stop.as_nanos() as u64)));
    }
    for (i, (worker, at, ids, calls)) in plan.bursts.iter().copied().enumerate() {
        if let Some((name, client)) = clients.get(worker).cloned() {
            let burst = Burst { process: 2000 + i as u64, worker: name, client, at, ids, calls };
            tasks.push(tokio::spawn(burst.run(plan.clock, history.clone(), Deadlines::default())));
        }
    }
    let deadlines = Deadlines::default();
    let caller = match plan.client {
        WorkloadClient::Direct => Caller::Direct(clients),
        WorkloadClient::Balanced => Caller::Balanced(Arc::new(balanced::Balanced::new(&plan.workers, &as_client)?)),
    };
    generate_load(&plan, &caller, end_ns, &history, &deadlines).await;
    for task in tasks {
        let _ = task.await;
    }
    history.lock().unwrap_or_else(PoisonError::into_inner).flush()?;
    Ok(())
}

/// Where the ID load goes.
enum Caller {
    /// Each call to a worker picked at random.
    Direct(Vec<(String, GeneratorClient<Channel>)>),
    /// Every call through one balancing client.
    Balanced(Arc<balanced::Balanced>),
}

/// Where one call goes.
enum Target {
    Worker(String, GeneratorClient<Channel>),
    Balanced(Arc<balanced::Balanced>),
}

/// Open-loop load at the set rate, bounded in flight.
async fn generate_load(plan: &Plan, caller: &Caller, end_ns: u64, history: &Shared, deadlines: &Deadlines) {
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let permits = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_MAX));
    let mut tick = tokio::time::interval(Duration::from_secs(1) / plan.rate_per_sec.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut op_id = 0;
    while plan.clock.now_ns() < end_ns {
        tick.tick().await;
        let Ok(permit) = permits.clone().try_acquire_owned() else { continue };
        op_id += 1;
        let target = match caller {
            Caller::Direct(clients) => {
                let (name, client) = clients[rng.gen_range(0..clients.len())].clone();
                Target::Worker(name, client)
            }
            Caller::Balanced(balanced) => Target::Balanced(balanced.clone()),
        };
        let batch = rng.gen_bool(0.3).then(|| rng.gen_range(1..=BATCH_COUNT_MAX));
        let process = op_id % IN_FLIGHT_MAX as u64;
        let history = history.clone();
        let deadlines = deadlines.clone();
        let clock = plan.clock;
        tokio::spawn(async move {
            match target {
                Target::Worker(name, client) => {
                    call(process, op_id, &name, client, batch, clock, &history, &deadlines).await;
                }
                Target::Balanced(balanced) => balanced.call(process, op_id, batch, clock, &history, &deadlines).await,
            }
            drop(permit);
        });
    }
    let _ = permits.acquire_many(IN_FLIGHT_MAX as u32).await;
}

/// One Generate (batch = None) or GenerateBatch call, recorded invoke → ok/fail/info.
#[allow(clippy::too_many_arguments)]
async fn call(
    process: u64,
    op_id: u64,
    worker: &str,
    mut client: GeneratorClient<Channel>,
    batch: Option<u32>,
    clock: RunClock,
    history: &Shared,
    deadlines: &Deadlines,
) {
    let f = if batch.is_some() { GenerateFn::GenerateBatch } else { GenerateFn::Generate };
    let mut invoke = ClientOp::invoke(process, op_id, f, worker, clock.now_ns(), wall_ms());
    invoke.count = batch;
    record(history, Event::Op(invoke.clone()));
    let reply = tokio::time::timeout(OP_TIMEOUT, async {
        match batch {
            None => client.generate(pb::GenerateRequest {}).await.map(|r| Minted::from(r.into_inner())),
            Some(count) => {
                client.generate_batch(pb::GenerateBatchRequest { count }).await.map(|r| Minted::from(r.into_inner()))
            }
        }
    })
    .await;
    let completion = match reply {
        Ok(Ok(minted)) => completed(&invoke, minted, clock, history, deadlines),
        Ok(Err(status)) => failed(&invoke, &status, clock),
        Err(_) => invoke.failed(Phase::Info, clock.now_ns(), wall_ms(), "timeout"),
    };
    record(history, Event::Op(completion));
}

/// What an ok Generate or GenerateBatch returned, normalized: both answer with IDs, the
/// lease they were minted under and its deadline.
struct Minted {
    ranges: Vec<IdRange>,
    lease: (u32, u64),
    deadline_wall_ms: u64,
}

impl From<pb::GenerateResponse> for Minted {
    fn from(r: pb::GenerateResponse) -> Minted {
        Minted {
            ranges: vec![IdRange { first: r.id, count: 1 }],
            lease: (r.worker_id, r.token),
            deadline_wall_ms: r.deadline_wall_ms,
        }
    }
}

impl From<pb::GenerateBatchResponse> for Minted {
    fn from(r: pb::GenerateBatchResponse) -> Minted {
        let ranges = r.ranges.iter().map(|x| IdRange { first: x.first, count: u64::from(x.count) }).collect();
        Minted { ranges, lease: (r.worker_id, r.token), deadline_wall_ms: r.deadline_wall_ms }
    }
}

/// The ok completion of `invoke` (on the worker it names), after recording the deadline
/// the reply stated.
fn completed(invoke: &ClientOp, minted: Minted, clock: RunClock, history: &Shared, deadlines: &Deadlines) -> ClientOp {
    let done_ns = clock.now_ns();
    note_deadline(&invoke.worker, minted.lease, minted.deadline_wall_ms, done_ns, history, deadlines);
    invoke.ok(done_ns, wall_ms(), minted.ranges, Some(minted.lease))
}

/// Record the deadline a worker's reply stated for its lease, when it changed. Polls of
/// `Status` lag a renewal by up to a poll interval; the reply states the deadline in force
/// when the IDs were returned, so the checker never judges a mint by a stale deadline.
fn note_deadline(
    worker: &str,
    lease: (u32, u64),
    deadline_wall_ms: u64,
    at_ns: u64,
    history: &Shared,
    deadlines: &Deadlines,
) {
    if deadline_wall_ms == 0 {
        // The deadline passed while the reply was built: it states nothing usable.
        return;
    }
    // Each reply computes `wall + remaining + 2`, never below the true deadline but jittering
    // by a ms or two: keep the first value of a deadline and record only real extensions.
    let changed = {
        let mut known = deadlines.lock().unwrap_or_else(PoisonError::into_inner);
        let moved = match known.get(worker) {
            Some(&(w, t, d)) => (w, t) != lease || deadline_wall_ms > d + 5,
            None => true,
        };
        if moved {
            known.insert(worker.to_string(), (lease.0, lease.1, deadline_wall_ms));
        }
        moved
    };
    if changed {
        let event = LeaseEvent {
            worker: worker.to_string(),
            event: LeaseEventKind::Renewed,
            worker_id: lease.0,
            token: lease.1,
            deadline_wall_ms: Some(deadline_wall_ms),
            deadline_mono_ns: None,
            reason: None,
            holder: None,
            time_ns: at_ns,
            wall_ms: wall_ms(),
        };
        record(history, Event::Lease(event));
    }
}

fn failed(invoke: &ClientOp, status: &tonic::Status, clock: RunClock) -> ClientOp {
    invoke.failed(generate_phase(status), clock.now_ns(), wall_ms(), &status_text(status))
}

/// How a failed Generate/GenerateBatch ends: `fail` (it minted nothing) only when the worker
/// itself said why it refused — parked (`UNAVAILABLE` naming its park cause), rate limited
/// (`RESOURCE_EXHAUSTED` with its retry hint), or a bad count (`INVALID_ARGUMENT`, checked
/// before minting). Everything else is `info`: a transport error, a cancelled call, our own
/// timeout, a worker-side timeout, a status without the worker's metadata.
fn generate_phase(status: &tonic::Status) -> Phase {
    let definite = match status.code() {
        tonic::Code::Unavailable => park_reason(status).is_some(),
        tonic::Code::ResourceExhausted => status.metadata().get(RETRY_AFTER_METADATA_KEY).is_some(),
        tonic::Code::InvalidArgument => true,
        _ => false,
    };
    if definite {
        Phase::Fail
    } else {
        Phase::Info
    }
}

/// One caller far above a worker's per-millisecond ceiling.
struct Burst {
    process: u64,
    worker: String,
    client: GeneratorClient<Channel>,
    at: Duration,
    ids: u32,
    calls: u32,
}

impl Burst {
    async fn run(self, clock: RunClock, history: Shared, deadlines: Deadlines) {
        let start_ns = self.at.as_nanos() as u64;
        while clock.now_ns() < start_ns {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for i in 0..self.calls {
            let op_id = 1_000_000_000 + u64::from(i);
            let client = self.client.clone();
            call(self.process, op_id, &self.worker, client, Some(self.ids), clock, &history, &deadlines).await;
        }
    }
}

/// What the workload last saw of a worker.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Seen {
    worker_id: u32,
    token: u64,
    serving: bool,
    deadline_wall_ms: u64,
}

async fn poll_status(
    worker: String,
    mut client: GeneratorClient<Channel>,
    clock: RunClock,
    end_ns: u64,
    history: Shared,
) {
    let mut last: Option<Seen> = None;
    while clock.now_ns() < end_ns {
        let sent_ns = clock.now_ns();
        let Ok(Ok(status)) = tokio::time::timeout(OP_TIMEOUT, client.status(pb::StatusRequest {})).await else {
            tokio::time::sleep(STATUS_POLL).await;
            continue;
        };
        let s = status.into_inner();
        let now = Seen {
            worker_id: s.worker_id,
            token: s.token,
            serving: s.state == "SERVING",
            deadline_wall_ms: s.deadline_wall_ms,
        };
        // A passed deadline (0) is not a deadline: it neither renews nor bounds anything.
        let live = s.deadline_wall_ms > 0;
        let kinds = lease_changes(last.as_ref(), &now);
        for kind in kinds {
            let event = LeaseEvent {
                worker: worker.clone(),
                event: kind,
                worker_id: now.worker_id,
                token: now.token,
                deadline_wall_ms: live.then_some(now.deadline_wall_ms),
                deadline_mono_ns: live.then(|| sent_ns + s.lease_remaining_ms * 1_000_000),
                reason: (kind == LeaseEventKind::Parked).then(|| s.park_reason.clone()),
                holder: (!s.holder.is_empty()).then(|| s.holder.clone()),
                // The poll's send time: the worker's state is at least this fresh.
                time_ns: sent_ns,
                wall_ms: wall_ms(),
            };
            record(&history, Event::Lease(event));
        }
        last = Some(now);
        tokio::time::sleep(STATUS_POLL).await;
    }
}

/// The lease events implied by going from `before` to `now`.
fn lease_changes(before: Option<&Seen>, now: &Seen) -> Vec<LeaseEventKind> {
    let mut kinds = Vec::new();
    match before {
        Some(b) if b.token == now.token && b.worker_id == now.worker_id => {
            // Status states `now + remaining`, which jitters by a few ms between polls.
            if now.deadline_wall_ms > b.deadline_wall_ms + 5 && b.deadline_wall_ms > 0 {
                kinds.push(LeaseEventKind::Renewed);
            }
            if b.serving && !now.serving {
                kinds.push(LeaseEventKind::Parked);
            } else if !b.serving && now.serving {
                kinds.push(LeaseEventKind::Resumed);
            }
        }
        _ => {
            kinds.push(LeaseEventKind::Acquired);
            if !now.serving {
                kinds.push(LeaseEventKind::Parked);
            }
        }
    }
    kinds
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: a Generate error is `fail` only when the worker named why it refused (park
    /// cause, rate-limit hint) or the count was bad; transport errors and timeouts are `info`,
    /// whatever their message says.
    #[test]
    fn generate_errors_are_definite_only_with_the_workers_word() {
        let mut parked = tonic::Status::unavailable("parked: lease expired");
        parked.metadata_mut().insert(PARK_REASON_METADATA_KEY, "LEASE_EXPIRED".parse().unwrap());
        assert_eq!(generate_phase(&parked), Phase::Fail);
        assert_eq!(status_text(&parked), "Unavailable [parked LEASE_EXPIRED]: parked: lease expired");
        let mut limited = tonic::Status::resource_exhausted("rate limited");
        limited.metadata_mut().insert(RETRY_AFTER_METADATA_KEY, "5".parse().unwrap());
        assert_eq!(generate_phase(&limited), Phase::Fail);
        assert_eq!(generate_phase(&tonic::Status::invalid_argument("count 0")), Phase::Fail);
        for unknown in [
            tonic::Status::unavailable("tcp connect error"),
            tonic::Status::unavailable("no transport word here either"),
            tonic::Status::resource_exhausted("message too large"),
            tonic::Status::deadline_exceeded("timeout"),
            tonic::Status::cancelled("cancelled"),
        ] {
            assert_eq!(generate_phase(&unknown), Phase::Info, "{unknown:?}");
        }
    }

    #[test]
    fn lease_changes_follow_status_transitions() {
        let serving = Seen { worker_id: 1, token: 5, serving: true, deadline_wall_ms: 100 };
        assert_eq!(lease_changes(None, &serving), vec![LeaseEventKind::Acquired]);
        let renewed = Seen { deadline_wall_ms: 200, ..serving.clone() };
        assert_eq!(lease_changes(Some(&serving), &renewed), vec![LeaseEventKind::Renewed]);
        let parked = Seen { serving: false, ..renewed.clone() };
        assert_eq!(lease_changes(Some(&renewed), &parked), vec![LeaseEventKind::Parked]);
        assert_eq!(lease_changes(Some(&parked), &renewed), vec![LeaseEventKind::Resumed]);
        let regranted = Seen { token: 9, ..serving };
        assert_eq!(lease_changes(Some(&renewed), &regranted), vec![LeaseEventKind::Acquired]);
    }
}
