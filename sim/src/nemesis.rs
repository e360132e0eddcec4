//! The faults, every one chosen from the run's seed: partitions (both ways and one-way),
//! latency, packet loss and duplicated requests, registry node crashes that lose a random part
//! of what was not yet flushed, leader bounces (killed and back within an election timeout,
//! sometimes cut off from its peers), failing fsyncs, lost registry disks, worker SIGKILLs (some
//! leaving a lost, torn or rolled-back state dir: `worker_disk`, some a wall clock behind),
//! failing ceiling writes, wall-clock steps and drift on any machine, paused machines (SIGSTOP, or a suspended VM
//! whose monotonic clock stops) with a standby asking for a paused worker's ID, a worker cut
//! off from the registry whose wall clock jumps forward while a standby asks for its ID,
//! worker processes started on a copy of another's state dir; an operator replacing a registry
//! voter (`replace-voter`) or a node whose disk was lost (`replace-lost-node`) under a new node
//! id, in the background (`membership.rs`); quorum loss, a majority of the voters cut off
//! for a few seconds, for the parking checker; and, once at most, the disaster a backup is
//! for: every registry disk lost, and the newest backup restored into a fresh cluster
//! (`restore.rs`); in a rolling upgrade's runs (`--rolling-upgrade`), once, the upgrade of
//! the leader's followers to a smaller Raft timing, the leader then cut off from them
//! (`upgrade.rs`). A supervisor restarts node processes that exit
//! on their own. Each is recorded in the history as a nemesis
//! event, and everything is healed before the run ends (a replacement under way goes on).
//!
//! The set of nodes changes: `Cluster::nodes` grows by each replacement's new node, and a
//! replaced node's machine is retired (stopped for good: no restart, no supervisor, no fault
//! picks it). Faults that count nodes count the voters as far as the operator knows them
//! (`membership::Voters`): nodes down at once stay a minority of them, and a quorum loss cuts
//! off a majority of every membership the cluster may be in.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fenceflake_jepsen::history::NemesisPhase;
use fenceflake_proto::v1 as pb;
use fenceflake_proto::v1::registry_client::RegistryClient;
use fenceflake_registry::raft::types::NodeId;
use fenceflake_worker::WorkerId;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::adversary;
use crate::clock::MonoStall;
use crate::membership::{self, Operator};
use crate::net::{Latency, Net};
use crate::nodes::{client_addr, SimNode, RENEW_WINDOW};
use crate::recorder::Recorder;
use crate::registry_client;
use crate::restore::{self, Restore};
use crate::upgrade::Upgrade;
use crate::worker_disk::{self, DeadDiskFault};
use crate::workers::{clone_of, SimWorker, WorkerEnv};

/// At most this many copies of state dirs per run.
const CLONES_MAX: usize = 2;
/// At most this many standbys per run.
const STANDBYS_MAX: usize = 2;
/// A paused worker gets a standby for its ID only if it stays paused this long: long enough
/// for its lease to lapse and the ID to be granted again (TTL 3 s + cool-down).
const STANDBY_PAUSE_MIN: Duration = Duration::from_secs(4);

/// A node process that exited on its own is started again this long after, as a supervisor
/// (systemd's `Restart=always`, `RestartSec=1`) would.
const RESTART_SEC: Duration = Duration::from_secs(1);
/// How often the nemesis looks for exited nodes while it injects nothing.
const SUPERVISE_EVERY: Duration = Duration::from_millis(250);

/// The machine the nemesis asks who leads (never cut off: it is not among `machines`).
pub const CHAOS: &str = "chaos";
/// How long the nemesis waits for one node's `ClusterStatus`.
const STATUS_TIMEOUT: Duration = Duration::from_millis(200);

/// The name of the quorum-loss fault, which the parking checker looks for.
pub const QUORUM_LOSS: &str = "quorum-loss";
/// How long the nemesis injects nothing after a quorum loss heals: every worker that served
/// before must serve again within it (the parking checker's bound). A worker whose lease
/// expired meanwhile renews it, or is fenced, restarts (1 s) and acquires afresh; both well
/// within this once a leader is elected.
pub const QUORUM_LOSS_CALM: Duration = Duration::from_secs(10);

/// Everything the nemesis acts on.
pub struct Cluster<'a> {
    pub net: &'a Arc<Net>,
    pub recorder: &'a Recorder,
    pub nodes: &'a mut Vec<SimNode>,
    pub workers: &'a mut Vec<SimWorker>,
    pub env: &'a WorkerEnv,
    pub state_root: &'a Path,
}

#[derive(Debug)]
pub struct Nemesis {
    rng: StdRng,
    /// When each stopped node or worker starts again: (true time, is a node, index).
    restarts: Vec<(Duration, bool, usize)>,
    /// Nodes whose fsyncs were made to fail: their supervisor restarts them at this time (the
    /// failed flush stopped the process by then, or it is killed now).
    supervised: Vec<(Duration, usize)>,
    /// Paused machines and when they run again.
    resumes: Vec<(Duration, String)>,
    /// Workers whose ceiling writes fail, and when that heals.
    failing_writes: Vec<(Duration, usize)>,
    clones: usize,
    /// Workers whose state dir was copied.
    cloned: BTreeSet<String>,
    standbys: usize,
    quorum_lost: bool,
    /// Replaces registry voters, in the background.
    operator: Operator,
    /// Backs the registry up, and restores it once every disk is lost.
    restore: Restore,
    /// A rolling upgrade's turn at the leader's followers, in runs that have one.
    upgrade: Option<Upgrade>,
}

impl Nemesis {
    /// The nemesis of a cluster bootstrapped with `members`, with the rolling upgrade if any.
    pub fn new(seed: u64, members: &[NodeId], restore: Restore, upgrade: Option<Upgrade>) -> Nemesis {
        Nemesis {
            rng: StdRng::seed_from_u64(seed),
            restarts: Vec::new(),
            supervised: Vec::new(),
            resumes: Vec::new(),
            failing_writes: Vec::new(),
            clones: 0,
            cloned: BTreeSet::new(),
            standbys: 0,
            quorum_lost: false,
            operator: Operator::new(members),
            restore,
            upgrade,
        }
    }

    /// One fault, after a pause; and whatever restarts are due.
    pub async fn step(&mut self, cluster: &mut Cluster<'_>) {
        let pause = Duration::from_millis(self.rng.gen_range(200..2_500));
        tokio::time::sleep(pause).await;
        self.restart_due(cluster);
        // From its own stream, and instead of this step's draw: runs without an upgrade draw
        // exactly as before it existed.
        let (now, down_max) = (cluster.recorder.world().elapsed(), self.nodes_down_max());
        if let Some(upgrade) = self.upgrade.as_mut().filter(|u| u.is_due(now)) {
            if upgrade.strike(cluster, down_max).await {
                return;
            }
        }
        match self.rng.gen_range(0..120) {
            0..=10 => self.partition(cluster),
            11..=16 => self.one_way_cut(cluster),
            17..=28 => {
                cluster.net.heal();
                cluster.recorder.nemesis(NemesisPhase::Stop, "network", "healed".into());
            }
            29..=36 => self.slow_network(cluster),
            37..=49 => self.crash_node(cluster),
            50..=63 => self.kill_worker(cluster),
            64..=74 => self.step_clock(cluster),
            75..=79 => self.drift_clock(cluster),
            80..=83 => self.clone_worker(cluster),
            84..=86 => self.fail_fsync(cluster),
            87 => self.lose_disk(cluster),
            88..=95 => self.pause(cluster),
            96..=97 => self.fail_ceiling_writes(cluster),
            98..=99 => self.isolated_clock_jump(cluster),
            100..=109 => self.quorum_loss(cluster).await,
            110..=112 => self.bounce_leader(cluster).await,
            113..=116 => self.operator.begin(cluster, &mut self.rng),
            117 => self.disaster(cluster).await,
            _ => {}
        }
    }

    /// Every machine there is now (a node's is gone once its member was removed).
    fn machines(cluster: &Cluster<'_>) -> Vec<String> {
        let nodes = cluster.nodes.iter().filter(|n| !n.is_retired()).map(|n| n.name.clone());
        let workers = cluster.workers.iter().map(|w| w.name.clone());
        let others = [registry_client::MACHINE, adversary::MACHINE, membership::MACHINE].map(String::from);
        nodes.chain(workers).chain(others).collect()
    }

    /// Split every machine into two sides, cut both ways.
    fn partition(&mut self, cluster: &mut Cluster<'_>) {
        let mut machines = Nemesis::machines(cluster);
        machines.shuffle(&mut self.rng);
        let split = self.rng.gen_range(1..machines.len());
        let (a, b) = machines.split_at(split);
        for x in a {
            for y in b {
                cluster.net.cut(x, y);
                cluster.net.cut(y, x);
            }
        }
        cluster.recorder.nemesis(NemesisPhase::Start, "partition", format!("{a:?} | {b:?}"));
    }

    fn one_way_cut(&mut self, cluster: &mut Cluster<'_>) {
        let machines = Nemesis::machines(cluster);
        let from = machines.choose(&mut self.rng).cloned().unwrap_or_default();
        let to = machines.choose(&mut self.rng).cloned().unwrap_or_default();
        if from != to {
            cluster.net.cut(&from, &to);
            cluster.recorder.nemesis(NemesisPhase::Start, "one-way-cut", format!("{from} -> {to}"));
        }
    }

    fn slow_network(&mut self, cluster: &mut Cluster<'_>) {
        let max_us = self.rng.gen_range(1_000..80_000);
        let latency = Latency {
            min_us: max_us / 4,
            max_us,
            loss_per_mille: self.rng.gen_range(0..60),
            duplicate_per_mille: self.rng.gen_range(0..100),
        };
        cluster.net.set_latency(latency);
        cluster.recorder.nemesis(NemesisPhase::Start, "latency", format!("{latency:?}"));
    }

    /// Registry nodes that cannot take part now: crashed or paused (not those removed).
    pub(crate) fn nodes_down(cluster: &Cluster<'_>) -> usize {
        let down = |n: &&SimNode| !n.is_running() || cluster.net.is_paused(&n.name);
        cluster.nodes.iter().filter(|n| !n.is_retired()).filter(down).count()
    }

    /// At most this many registry nodes down at once, a minority of the voters (two of
    /// five): more only stalls the run.
    fn nodes_down_max(&self) -> usize {
        self.operator.voters().minority()
    }

    fn crash_node(&mut self, cluster: &mut Cluster<'_>) {
        if Nemesis::nodes_down(cluster) >= self.nodes_down_max() {
            return;
        }
        let Some(index) = self.pick_node(cluster) else { return };
        let node = &mut cluster.nodes[index];
        if !node.is_running() {
            return;
        }
        let pending = node.disk.pending_len();
        let keep = self.rng.gen_range(0..=pending);
        node.crash(cluster.net, keep);
        let back = cluster.recorder.world().elapsed() + Duration::from_millis(self.rng.gen_range(300..6_000));
        self.restarts.push((back, true, index));
        cluster.recorder.nemesis(
            NemesisPhase::Start,
            "crash",
            format!("{} (kept {keep} of {pending} unflushed writes)", node.name),
        );
    }

    /// The next fsyncs of a running node fail: openraft stops on the storage error, the node
    /// exits (its supervisor restarts it below), and nothing unflushed was acknowledged.
    fn fail_fsync(&mut self, cluster: &mut Cluster<'_>) {
        let Some(index) = self.pick_node(cluster) else { return };
        let node = &cluster.nodes[index];
        if !node.is_running() {
            return;
        }
        let count = self.rng.gen_range(1..4);
        node.disk.fail_next_flushes(count);
        let restart = cluster.recorder.world().elapsed() + Duration::from_millis(self.rng.gen_range(200..2_000));
        self.supervised.push((restart, index));
        cluster.recorder.nemesis(NemesisPhase::Start, "fsync-error", format!("{} (next {count} flushes)", node.name));
    }

    /// A node's disk is lost: it crashes and comes back empty under its old id, which the
    /// lost-disk guard must refuse (the node served), or let join only if it never did.
    fn lose_disk(&mut self, cluster: &mut Cluster<'_>) {
        let down = Nemesis::nodes_down(cluster);
        let Some(index) = self.pick_node(cluster) else { return };
        let node = &mut cluster.nodes[index];
        if down >= self.nodes_down_max() || !node.is_running() {
            return;
        }
        node.crash(cluster.net, 0);
        node.disk.wipe();
        node.disk = node.disk.restart();
        let back = cluster.recorder.world().elapsed() + Duration::from_millis(self.rng.gen_range(300..3_000));
        self.restarts.push((back, true, index));
        cluster.recorder.nemesis(NemesisPhase::Start, "lost-disk", node.name.clone());
    }

    /// SIGKILL a worker; sometimes its state dir suffers too while it is down, or is
    /// snapshotted (a VM snapshot) for a later rollback.
    fn kill_worker(&mut self, cluster: &mut Cluster<'_>) {
        let index = self.rng.gen_range(0..cluster.workers.len());
        let worker = &mut cluster.workers[index];
        if !worker.is_running() {
            return;
        }
        worker.kill(cluster.net);
        let back = cluster.recorder.world().elapsed() + Duration::from_millis(self.rng.gen_range(50..3_000));
        self.restarts.push((back, false, index));
        // A rollback brings back an old holder ID: a copy of the state dir made in time. Among
        // the copies of one dir it would be one more copy than the convergence check counts,
        // so their dirs are lost instead.
        let in_clone_group = worker.name.starts_with('c') || self.cloned.contains(&worker.name);
        let fault = DeadDiskFault::draw(&mut self.rng).map(|f| {
            if f == DeadDiskFault::RolledBack && in_clone_group {
                DeadDiskFault::Lost
            } else {
                f
            }
        });
        let disk = match fault {
            None if self.rng.gen_bool(0.3) => worker_disk::snapshot(&worker.state_dir).map(|()| "snapshotted"),
            None => Ok(""),
            Some(fault) => {
                if fault.loses_ceiling() {
                    worker.record_state_lost(cluster.recorder);
                }
                worker_disk::apply(fault, &worker.state_dir, &mut self.rng).map(|()| fault.name())
            }
        };
        let detail = match disk {
            Ok("") => worker.name.clone(),
            Ok(what) => format!("{} ({what})", worker.name),
            Err(error) => format!("{} (state dir fault failed: {error})", worker.name),
        };
        let detail = match self.reboot_clock_behind(worker) {
            Some(by_ms) => format!("{detail}, its wall clock back {by_ms} ms"),
            None => detail,
        };
        cluster.recorder.nemesis(NemesisPhase::Start, "kill", detail);
    }

    /// Sometimes a killed worker's machine comes back with its wall clock behind (a reboot
    /// whose hardware clock lags until NTP steps it; here until the next heal): its next
    /// process retakes its own lease, whose `not_before` is older than its last IDs, so only
    /// its persisted ceiling (`local-ceiling`) keeps it from minting them again. The
    /// mechanism's self-test needs this: a clock step and a kill of one worker in one window
    /// came too rarely (none in seeds 0..1200 once the nemesis draw went to `0..120`).
    fn reboot_clock_behind(&mut self, worker: &SimWorker) -> Option<i64> {
        if !self.rng.gen_bool(0.15) {
            return None;
        }
        let by_ms = -self.rng.gen_range(300..3_000);
        worker.wall.step(by_ms);
        Some(by_ms)
    }

    /// A running worker's ceiling writes fail for a while (a full or read-only disk): it must
    /// stop minting past its ceiling, and exits; its supervisor restarts it.
    fn fail_ceiling_writes(&mut self, cluster: &mut Cluster<'_>) {
        let index = self.rng.gen_range(0..cluster.workers.len());
        let worker = &cluster.workers[index];
        if self.failing_writes.iter().any(|(_, i)| *i == index) {
            return;
        }
        if let Err(error) = worker_disk::fail_writes(&worker.state_dir) {
            tracing::warn!(%error, "could not make a state dir fail");
            return;
        }
        let heal = cluster.recorder.world().elapsed() + Duration::from_millis(self.rng.gen_range(500..5_000));
        self.failing_writes.push((heal, index));
        cluster.recorder.nemesis(NemesisPhase::Start, "ceiling-write-errors", worker.name.clone());
    }

    /// Pause a machine (registry node or worker): SIGSTOP, or a suspended VM whose monotonic
    /// clock stops meanwhile. A worker paused long enough may get a standby asking for its
    /// worker ID, which the registry grants once the paused lease has lapsed.
    fn pause(&mut self, cluster: &mut Cluster<'_>) {
        let machines = Nemesis::machines(cluster);
        let Some(name) = machines.choose(&mut self.rng).cloned() else { return };
        let node = Nemesis::live_node(cluster, &name);
        if cluster.net.is_paused(&name) || (node.is_some() && Nemesis::nodes_down(cluster) >= self.nodes_down_max()) {
            return;
        }
        let worker = cluster.workers.iter().find(|w| w.name == name);
        let Some(stall) = node.map(|n| &n.mono_stall).or(worker.map(|w| &w.mono_stall)).cloned() else { return };
        let length = Duration::from_millis(self.rng.gen_range(300..9_000));
        let suspended = self.rng.gen_bool(0.5);
        let world = cluster.recorder.world();
        cluster.net.pause(&name);
        if suspended {
            stall.begin(world.elapsed_ns());
        }
        self.resumes.push((world.elapsed() + length, name.clone()));
        let how = if suspended { "VM suspended: its monotonic clock stops" } else { "SIGSTOP" };
        cluster.recorder.nemesis(NemesisPhase::Start, "pause", format!("{name} for {length:?} ({how})"));
        let standby_for = worker.and_then(SimWorker::worker_id);
        if let Some(worker_id) = standby_for.filter(|_| length >= STANDBY_PAUSE_MIN) {
            self.start_standby(cluster, worker_id, &format!("paused {name}"));
        }
    }

    /// A worker cut off from every registry node, whose wall clock then steps forward by more
    /// than its deadline margin plus the cool-down (NTP after a VM migration, say), and a
    /// standby asking for its worker ID. The cut-off worker cannot renew, so no skew check
    /// sees the step: from then on its IDs carry timestamps past the lease's `mint_until`
    /// before its monotonic deadline ends minting, while the standby is granted the ID once the
    /// lease lapses, from `not_before` = that `mint_until`. Only the `mint_until` bound keeps
    /// the two apart; this is the schedule it exists for. The cut heals with the network.
    fn isolated_clock_jump(&mut self, cluster: &mut Cluster<'_>) {
        let holders: Vec<(usize, WorkerId)> = (0..cluster.workers.len())
            .filter(|&i| !cluster.net.is_paused(&cluster.workers[i].name))
            .filter_map(|i| cluster.workers[i].minting_with().map(|id| (i, id)))
            .collect();
        let Some(&(index, worker_id)) = holders.choose(&mut self.rng) else { return };
        let worker = &cluster.workers[index];
        let name = worker.name.clone();
        for node in cluster.nodes.iter() {
            cluster.net.cut(&name, &node.name);
            cluster.net.cut(&node.name, &name);
        }
        let by_ms = self.rng.gen_range(2_000..4_000);
        worker.wall.step(by_ms);
        cluster.recorder.nemesis(
            NemesisPhase::Start,
            "isolated-clock-jump",
            format!("{name} cut off from the registry, its wall clock {by_ms:+} ms"),
        );
        self.start_standby(cluster, worker_id, &name);
    }

    /// A standby asking for `worker_id` by number, as an operator replacing `of`, a worker
    /// that looks hung; at most [`STANDBYS_MAX`] per run.
    fn start_standby(&mut self, cluster: &mut Cluster<'_>, worker_id: WorkerId, of: &str) {
        if self.standbys >= STANDBYS_MAX {
            return;
        }
        self.standbys += 1;
        let mut standby = SimWorker::standby(&format!("s{}", self.standbys), cluster.state_root, worker_id);
        standby.start(cluster.env);
        cluster.recorder.nemesis(
            NemesisPhase::Start,
            "standby",
            format!("{} asks for worker ID {} of {of}", standby.name, worker_id.get()),
        );
        cluster.workers.push(standby);
    }

    /// The leader's process dies and its supervisor starts it again within an election
    /// timeout (an OOM kill, say), often losing what it applied but had not flushed: openraft
    /// resumes it as leader in its old term, its state machine behind what it acknowledged
    /// until it has applied its own log again. Its first reads and grants must wait for that
    /// (`ensure_linearizable` and the leader's catch-up on its own log): this is the schedule
    /// they exist for, which the registry client's readers watch.
    async fn bounce_leader(&mut self, cluster: &mut Cluster<'_>) {
        let Some(index) = Nemesis::leader(cluster).await else { return };
        let node = &mut cluster.nodes[index];
        let pending = node.disk.pending_len();
        let keep = self.rng.gen_range(0..=pending);
        let down = Duration::from_millis(self.rng.gen_range(10..250));
        node.crash(cluster.net, keep);
        let detail = format!("{} (leader; kept {keep} of {pending} unflushed writes; back after {down:?})", node.name);
        cluster.recorder.nemesis(NemesisPhase::Start, "crash", detail);
        tokio::time::sleep(down).await;
        Nemesis::restart(cluster, true, index);
        if self.rng.gen_bool(0.5) {
            // It comes back cut off from its peers but not from its callers (a switch port
            // that flaps with the reboot): it cannot learn what it lost from them, and stays
            // leader to itself until the network heals.
            Nemesis::cut_from_peers(cluster, index);
        }
    }

    /// Node `index` cut off from every other node, both ways, until the network heals; its
    /// callers still reach it.
    pub(crate) fn cut_from_peers(cluster: &Cluster<'_>, index: usize) {
        let name = &cluster.nodes[index].name;
        for peer in cluster.nodes.iter().filter(|n| n.name != *name) {
            cluster.net.cut(name, &peer.name);
            cluster.net.cut(&peer.name, name);
        }
        cluster.recorder.nemesis(NemesisPhase::Start, "partition", format!("{name} cut off from its peers"));
    }

    /// The node that says it leads, as a chaos tool finds it: `ClusterStatus` of each running
    /// node in turn, through the network as it is.
    pub(crate) async fn leader(cluster: &Cluster<'_>) -> Option<usize> {
        for (index, node) in cluster.nodes.iter().enumerate().filter(|(_, n)| n.is_running()) {
            let mut client = RegistryClient::new(cluster.net.channel(CHAOS, &client_addr(node.id)));
            let asked = tokio::time::timeout(STATUS_TIMEOUT, client.cluster_status(pb::ClusterStatusRequest {})).await;
            if let Ok(Ok(status)) = asked {
                if status.get_ref().state == "LEADER" {
                    return Some(index);
                }
            }
        }
        None
    }

    /// The running machine of that name: after a restore a lost node's machine and its
    /// successor share it.
    fn live_node<'c>(cluster: &'c Cluster<'_>, name: &str) -> Option<&'c SimNode> {
        cluster.nodes.iter().find(|n| n.name == name && !n.is_retired())
    }

    fn resume(cluster: &Cluster<'_>, name: &str) {
        let stall: Option<&Arc<MonoStall>> = Nemesis::live_node(cluster, name).map(|n| &n.mono_stall).or(cluster
            .workers
            .iter()
            .find(|w| w.name == name)
            .map(|w| &w.mono_stall));
        if let Some(stall) = stall {
            stall.end(cluster.recorder.world().elapsed_ns());
        }
        cluster.net.resume(name);
        cluster.recorder.nemesis(NemesisPhase::Stop, "pause", name.to_string());
    }

    fn heal_writes(cluster: &Cluster<'_>, index: usize) {
        let worker = &cluster.workers[index];
        if let Err(error) = worker_disk::heal_writes(&worker.state_dir) {
            tracing::warn!(%error, "could not heal a state dir");
        }
        cluster.recorder.nemesis(NemesisPhase::Stop, "ceiling-write-errors", worker.name.clone());
    }

    /// A machine's wall clock steps (NTP, a VM migration): mostly small, sometimes large.
    fn step_clock(&mut self, cluster: &mut Cluster<'_>) {
        let by_ms =
            if self.rng.gen_bool(0.8) { self.rng.gen_range(-400..400) } else { self.rng.gen_range(-5_000..5_000) };
        let (name, wall) = self.pick_clock(cluster);
        wall.step(by_ms);
        cluster.recorder.nemesis(NemesisPhase::Start, "clock-step", format!("{name} {by_ms:+} ms"));
    }

    fn drift_clock(&mut self, cluster: &mut Cluster<'_>) {
        let ppm = self.rng.gen_range(-2_000..2_000);
        let (name, wall) = self.pick_clock(cluster);
        wall.set_drift_ppm(ppm);
        cluster.recorder.nemesis(NemesisPhase::Start, "clock-drift", format!("{name} {ppm:+} ppm"));
    }

    fn pick_clock(&mut self, cluster: &Cluster<'_>) -> (String, Arc<crate::clock::WallError>) {
        let nodes = cluster.nodes.iter().filter(|n| !n.is_retired()).map(|n| (&n.name, &n.wall));
        let mut clocks: Vec<_> = nodes.chain(cluster.workers.iter().map(|w| (&w.name, &w.wall))).collect();
        let (name, wall) = clocks.swap_remove(self.rng.gen_range(0..clocks.len()));
        (name.clone(), wall.clone())
    }

    /// A node whose machine was not stopped for good (its index in `Cluster::nodes`): after a
    /// replacement or a restore, faults drawn over retired machines did nothing.
    fn pick_node(&mut self, cluster: &Cluster<'_>) -> Option<usize> {
        let live: Vec<usize> = (0..cluster.nodes.len()).filter(|&i| !cluster.nodes[i].is_retired()).collect();
        live.choose(&mut self.rng).copied()
    }

    fn clone_worker(&mut self, cluster: &mut Cluster<'_>) {
        if self.clones >= CLONES_MAX {
            return;
        }
        let originals: Vec<usize> =
            (0..cluster.workers.len()).filter(|i| cluster.workers[*i].name.starts_with('w')).collect();
        let Some(&index) = originals.choose(&mut self.rng) else { return };
        self.clones += 1;
        self.cloned.insert(cluster.workers[index].name.clone());
        let name = format!("c{}", self.clones);
        match clone_of(&cluster.workers[index], &name, cluster.state_root, cluster.recorder) {
            Ok(mut clone) => {
                clone.start(cluster.env);
                cluster.recorder.nemesis(
                    NemesisPhase::Start,
                    "clone",
                    format!("{name} from {}", cluster.workers[index].name),
                );
                cluster.workers.push(clone);
            }
            Err(error) => tracing::warn!(%error, "could not copy a state dir"),
        }
    }

    /// The supervisor's part: a node process that exited on its own (its storage failed, or
    /// the lost-disk guard refused to start it) is restarted after [`RESTART_SEC`]. Without it
    /// a node whose fsync failed again after its restart stayed down for the rest of the run.
    fn supervise_exits(&mut self, cluster: &mut Cluster<'_>) {
        let now = cluster.recorder.world().elapsed();
        for (index, node) in cluster.nodes.iter_mut().enumerate() {
            let Some(why) = node.exited() else { continue };
            self.operator.note_exit(index, &why);
            // A process exit, not a machine crash: the OS still holds every unflushed write.
            let pending = node.disk.pending_len();
            node.crash(cluster.net, pending);
            self.supervised.retain(|(_, i)| *i != index);
            self.restarts.push((now + RESTART_SEC, true, index));
            cluster.recorder.nemesis(
                NemesisPhase::Start,
                "crash",
                format!("{} (exited on its own; its supervisor restarts it): {why}", node.name),
            );
        }
    }

    /// Inject nothing for `length`, restarting exited nodes meanwhile.
    pub async fn idle(&mut self, cluster: &mut Cluster<'_>, length: Duration) {
        let until = cluster.recorder.world().elapsed() + length;
        loop {
            self.restart_due(cluster);
            let left = until.saturating_sub(cluster.recorder.world().elapsed());
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left.min(SUPERVISE_EVERY)).await;
        }
    }

    fn restart_due(&mut self, cluster: &mut Cluster<'_>) {
        self.supervise_exits(cluster);
        let now = cluster.recorder.world().elapsed();
        let (due, later): (Vec<_>, Vec<_>) = self.supervised.drain(..).partition(|(at, _)| *at <= now);
        self.supervised = later;
        for (_, index) in due {
            let node = &mut cluster.nodes[index];
            if node.is_running() {
                node.crash(cluster.net, 0);
                self.restarts.push((now, true, index));
            }
        }
        let (due, later): (Vec<_>, Vec<_>) = self.restarts.drain(..).partition(|(at, _, _)| *at <= now);
        self.restarts = later;
        for (_, is_node, index) in due {
            Nemesis::restart(cluster, is_node, index);
        }
        let (due, later): (Vec<_>, Vec<_>) = self.resumes.drain(..).partition(|(at, _)| *at <= now);
        self.resumes = later;
        for (_, name) in due {
            Nemesis::resume(cluster, &name);
        }
        let (due, later): (Vec<_>, Vec<_>) = self.failing_writes.drain(..).partition(|(at, _)| *at <= now);
        self.failing_writes = later;
        for (_, index) in due {
            Nemesis::heal_writes(cluster, index);
        }
        self.operator.advance(cluster);
    }

    fn restart(cluster: &mut Cluster<'_>, is_node: bool, index: usize) {
        if is_node {
            let node = &mut cluster.nodes[index];
            if node.is_retired() {
                return;
            }
            node.start(cluster.net, cluster.recorder);
            cluster.recorder.nemesis(NemesisPhase::Stop, "crash", node.name.clone());
        } else {
            let worker = &mut cluster.workers[index];
            worker.start(cluster.env);
            cluster.recorder.nemesis(NemesisPhase::Stop, "kill", worker.name.clone());
        }
    }

    /// Heal everything: network, clocks, paused machines, state dirs, stopped processes.
    pub fn heal_all(&mut self, cluster: &mut Cluster<'_>) {
        self.supervise_exits(cluster);
        cluster.net.heal();
        for (_, name) in std::mem::take(&mut self.resumes) {
            Nemesis::resume(cluster, &name);
        }
        for (_, index) in std::mem::take(&mut self.failing_writes) {
            Nemesis::heal_writes(cluster, index);
        }
        for (_, index) in std::mem::take(&mut self.supervised) {
            let node = &mut cluster.nodes[index];
            if node.is_running() {
                node.crash(cluster.net, 0);
                self.restarts.push((Duration::ZERO, true, index));
            }
        }
        for (_, is_node, index) in std::mem::take(&mut self.restarts) {
            Nemesis::restart(cluster, is_node, index);
        }
        cluster.nodes.iter().for_each(|n| n.wall.reset());
        cluster.workers.iter().for_each(|w| w.wall.reset());
        cluster.recorder.nemesis(
            NemesisPhase::Stop,
            "all",
            "network, clocks, pauses, state dirs and processes healed".into(),
        );
    }

    /// The nodes a quorum loss cuts off: all but a minority of the smallest membership the
    /// cluster may be in, of every node that may vote. With the membership known that is a
    /// majority of the voters (three of five, four of six); while a change's outcome is
    /// unknown, a majority of every membership it may have left (a learner commits nothing).
    fn quorum_to_cut(&mut self, cluster: &Cluster<'_>) -> Vec<String> {
        let voters = self.operator.voters();
        let mut nodes: Vec<String> =
            cluster.nodes.iter().filter(|n| !n.is_retired() && voters.may_vote(n.id)).map(|n| n.name.clone()).collect();
        nodes.shuffle(&mut self.rng);
        nodes.truncate(nodes.len().saturating_sub(voters.minority()));
        nodes
    }

    /// Quorum loss: a majority of the voters each cut off from every other machine,
    /// so no node can commit anything (no grant, no renewal) while the workers still reach
    /// the minority; for a few seconds, sometimes past the workers' 3 s leases. The nemesis
    /// starts nothing else meanwhile: a wall clock stepped inside the window would move the
    /// timestamps the parking checker holds against the deadline known at its start. Then
    /// everything heals ([`Nemesis::heal_all`]) and stays calm for [`QUORUM_LOSS_CALM`], the
    /// checker's bound on serving again: later faults would otherwise keep a worker from it.
    async fn quorum_loss(&mut self, cluster: &mut Cluster<'_>) {
        // One per run: with its calm it takes a third of the faults' time.
        if self.quorum_lost {
            return;
        }
        self.quorum_lost = true;
        let nodes = self.quorum_to_cut(cluster);
        let machines = Nemesis::machines(cluster);
        for node in &nodes {
            for other in machines.iter().filter(|m| *m != node) {
                cluster.net.cut(node, other);
                cluster.net.cut(other, node);
            }
        }
        let lasts = Duration::from_millis(self.rng.gen_range(2_000..6_000));
        let detail = format!("{nodes:?} cut off for {} ms", lasts.as_millis());
        cluster.recorder.nemesis(NemesisPhase::Start, QUORUM_LOSS, detail);
        tokio::time::sleep(lasts).await;
        self.heal_all(cluster);
        cluster.recorder.nemesis(NemesisPhase::Stop, QUORUM_LOSS, "healed with everything else".into());
        self.idle(cluster, QUORUM_LOSS_CALM).await;
    }

    /// Every registry disk lost at once, and the restore from the newest backup
    /// (`restore.rs`). The operator's clock wait is measured first; paused nodes run again
    /// (their successors take their machines' names). The other faults stay while the
    /// embargo holds; then everything heals, and the nemesis injects nothing until the workers
    /// could serve again, as after a quorum loss.
    async fn disaster(&mut self, cluster: &mut Cluster<'_>) {
        if !self.restore.may_strike(&self.operator) {
            return;
        }
        let clock_wait = restore::clock_wait(cluster);
        let (paused_nodes, others): (Vec<_>, Vec<_>) = std::mem::take(&mut self.resumes)
            .into_iter()
            .partition(|(_, name)| Nemesis::live_node(cluster, name).is_some());
        self.resumes = others;
        for (_, name) in paused_nodes {
            Nemesis::resume(cluster, &name);
        }
        let answer = self.restore.strike(cluster, &mut self.operator, clock_wait).await;
        if self.restore.failure().is_none() {
            self.heal_all(cluster);
        }
        cluster.recorder.nemesis(NemesisPhase::Stop, restore::DISASTER, answer);
        // The restored marks lie a renew window past the embargo: the workers' new leases
        // start that much later.
        self.idle(cluster, QUORUM_LOSS_CALM + RENEW_WINDOW).await;
    }

    /// Why the restore failed, if one did.
    pub fn restore_failure(&self) -> Option<&str> {
        self.restore.failure()
    }
}
