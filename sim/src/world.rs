//! One simulated run: five registry nodes and eight workers under one seed, on one thread,
//! in simulated time; faults for `duration`, then everything healed and a settling time; then
//! the checkers.
//!
//! Every source of choice is the seed: the tokio scheduler's (`rng_seed`, which is why the
//! simulator is built with `--cfg tokio_unstable`), the product's own random draws
//! (`fenceflake_proto::entropy`, seeded on this thread: holder nonces, incarnations, renewal
//! jitter, election timeouts, restore offsets), the network's delays, the nemesis's faults
//! and the callers' requests. Time is tokio's paused clock, which jumps to the next timer
//! whenever every task waits.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fenceflake_jepsen::checker::{CheckResult, Valid};
use fenceflake_jepsen::history::Event;
use fenceflake_proto::entropy;
use fenceflake_proto::switches::{self, Mechanism};
use fenceflake_registry::raft::types::NodeId;

use crate::adversary;
use crate::checks;
use crate::clock::World;
use crate::identity::Identities;
use crate::nemesis::{Cluster, Nemesis};
use crate::net::Net;
use crate::nodes::{client_addr, SimNode, CLUSTER_ID};
use crate::recorder::Recorder;
use crate::registry_client;
use crate::restore::{self, Restore};
use crate::upgrade::{self, Upgrade};
use crate::workers::{SimWorker, WorkerEnv};

/// What one run simulates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunConfig {
    pub seed: u64,
    /// How long faults are injected (simulated time).
    pub duration: Duration,
    pub nodes: u64,
    pub workers: usize,
    pub lease_ttl: Duration,
    /// Safety mechanisms switched off for this run (self-tests only).
    pub disabled: Vec<Mechanism>,
    /// Leave out the registry client and the adversary: the workers, the registry and the
    /// nemesis only, judged by the ID-safety checkers (about twice as fast: BENCHMARKS.md).
    pub ids_only: bool,
    /// The nodes start on the replaced release's Raft timing and every restart runs the
    /// default; once, the upgrade reaches the leader's followers (`upgrade.rs`).
    pub rolling_upgrade: bool,
}

impl RunConfig {
    pub fn new(seed: u64) -> RunConfig {
        RunConfig {
            seed,
            duration: Duration::from_secs(30),
            nodes: 5,
            workers: 8,
            lease_ttl: Duration::from_secs(3),
            disabled: Vec::new(),
            ids_only: false,
            rolling_upgrade: false,
        }
    }
}

/// After the faults: long enough for every lease to be renewed or expire and re-granted, and
/// for copies of a state dir to converge.
const SETTLE: Duration = Duration::from_secs(12);

/// What a run produced.
#[derive(Debug)]
pub struct RunOutcome {
    pub events: Vec<Event>,
    pub results: Vec<CheckResult>,
    /// Simulated time the run covered.
    pub simulated: Duration,
}

impl RunOutcome {
    pub fn valid(&self) -> Valid {
        self.results.iter().fold(Valid::True, |v, r| v.and(r.valid))
    }
}

/// Independent streams of one seed (network, nemesis, product entropy, tokio, workers' callers,
/// the registry client, the adversary, the rolling upgrade).
fn stream(seed: u64, which: u64) -> u64 {
    // SplitMix64's finalizer: nearby seeds give unrelated streams.
    let mut z = seed.wrapping_add(which.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Run one seed to its verdict.
pub fn run(config: &RunConfig) -> anyhow::Result<RunOutcome> {
    switches::set_off(&config.disabled);
    entropy::seed_this_thread(stream(config.seed, 1));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .rng_seed(tokio::runtime::RngSeed::from_bytes(&stream(config.seed, 2).to_le_bytes()))
        .build()?;
    let state_root = state_root()?;
    let outcome = runtime.block_on(simulate(config, state_root.path()));
    // Dropping the runtime drops every task the run left (leases parked, calls in flight).
    drop(runtime);
    entropy::unseed_this_thread();
    switches::set_off(&[]);
    outcome
}

/// Where the workers' state dirs live: in memory (`/dev/shm`) where there is one, since the
/// ceiling file is fsynced on every flush and a real fsync costs milliseconds of real time
/// (most of a run's, on a disk) while changing nothing the simulation can see.
fn state_root() -> std::io::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let builder = tempfile::Builder::new().prefix("fenceflake-sim-").to_owned();
    if shm.is_dir() {
        if let Ok(dir) = builder.tempdir_in(shm) {
            return Ok(dir);
        }
    }
    builder.tempdir()
}

async fn simulate(config: &RunConfig, state_root: &Path) -> anyhow::Result<RunOutcome> {
    let world = World::starting_now();
    let recorder = Arc::new(Recorder::new(world));
    let net = Net::new(stream(config.seed, 3), Identities::new(recorder.clone()));
    let members: Vec<NodeId> = (1..=config.nodes).collect();
    let mut nodes: Vec<SimNode> = members.iter().map(|id| SimNode::founding(*id, &members, CLUSTER_ID)).collect();
    let upgrade = config.rolling_upgrade.then(|| Upgrade::new(stream(config.seed, 8)));
    if upgrade.is_some() {
        nodes = nodes.into_iter().map(|node| node.upgraded_from(upgrade::OLD_TIMING)).collect();
    }
    for node in &mut nodes {
        node.start(&net, &recorder);
    }
    let env = WorkerEnv {
        net: net.clone(),
        recorder: recorder.clone(),
        registry: members.iter().map(|id| client_addr(*id)).collect(),
        lease_ttl: config.lease_ttl,
        seed: stream(config.seed, 4),
    };
    let mut workers: Vec<SimWorker> =
        (1..=config.workers).map(|i| SimWorker::new(&format!("w{i}"), state_root)).collect();
    for worker in &mut workers {
        worker.start(&env);
    }
    let mut callers = Vec::new();
    if !config.ids_only {
        callers = registry_client::start(&net, &recorder, &env.registry, stream(config.seed, 6), config.duration);
        callers.push(adversary::start(&net, &recorder, &members, stream(config.seed, 7), config.duration));
    }
    let restore = Restore::start(&net, &recorder, &members, callers);
    net.set_running(crate::nemesis::CHAOS, true);
    let mut nemesis = Nemesis::new(stream(config.seed, 5), &members, restore, upgrade);
    let mut cluster =
        Cluster { net: &net, recorder: &recorder, nodes: &mut nodes, workers: &mut workers, env: &env, state_root };
    while world.elapsed() < config.duration {
        nemesis.step(&mut cluster).await;
    }
    nemesis.heal_all(&mut cluster);
    nemesis.idle(&mut cluster, SETTLE).await;
    for worker in cluster.workers.iter_mut() {
        worker.kill(&net);
    }
    for node in cluster.nodes.iter_mut() {
        let pending = node.disk.pending_len();
        node.crash(&net, pending);
    }
    net.unbind_all();
    let simulated = world.elapsed();
    let events = recorder.events();
    let mut results = checks::check(&events, cluster.nodes);
    results.extend(nemesis.restore_failure().map(restore::failed));
    Ok(RunOutcome { events, results, simulated })
}

/// The history as JSON lines (the same format as the harness's `history.jsonl`).
pub fn history_lines(events: &[Event]) -> anyhow::Result<String> {
    let mut text = String::new();
    for event in events {
        text.push_str(&serde_json::to_string(event)?);
        text.push('\n');
    }
    Ok(text)
}
