//! A rolling upgrade to a release whose default Raft timing is smaller (`--rolling-upgrade`):
//! the schedule `registry/src/start_quiet.rs` exists for, and the probe that shows the
//! registry's linearizability checker what happens without it.
//!
//! Every node of such a run starts on [`OLD_TIMING`], the default before pre-vote (100 ms
//! heartbeats, elections 300–600 ms), and every later process of its machine runs today's
//! default (50 ms, 150–300 ms): any restart, the nemesis's or its supervisor's, is the upgrade
//! reaching that machine. Once per run, at a time drawn from a stream of the seed of its own
//! (so that a run without the flag draws exactly what it drew before), the upgrade reaches the
//! leader's followers: each running one is stopped and started again a few ms later, one after
//! the other, while the leader goes on answering renewals from memory under a lease that counts
//! on their old statement (600 ms) until its probes hear the new one; then the leader's links
//! to its peers fail (not to its callers), as a switch port might during the work.
//!
//! A restarted follower refuses votes for 300 ms after it last heard the leader, less than the
//! leader's lease may still run (491 ms from its last acknowledged round). Its start quiet
//! makes it refuse for the recorded 600 ms plus as long as a leader may trust the old
//! statement (about 3 s in all), so that no leader is elected on the followers' side while the
//! old one answers from memory. Without it (`--disable start-quiet`) they elect one within
//! about 350 ms of the cut.
//!
//! The probe makes that visible to `registry-linearizable`: a lease taken through the leader
//! before the upgrade, released through the first node of the other side that says it leads,
//! then renewed through the old leader. A renewal answered after its release was acknowledged
//! has no place in any order of the two: the old leader answered it from memory after another
//! leader had been elected.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use fenceflake_jepsen::history::{Event, NemesisPhase, Phase, RegistryFn, RegistryOp, RegistryResult};
use fenceflake_jepsen::registry_workload::LEASE_TTL_MS;
use fenceflake_proto::channel::BoxChannel;
use fenceflake_proto::v1 as pb;
use fenceflake_proto::v1::registry_client::RegistryClient;
use fenceflake_registry::config::RaftTiming;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::nemesis::{Cluster, Nemesis};
use crate::net::Net;
use crate::nodes::client_addr;
use crate::recorder::Recorder;

/// The default Raft timing until pre-vote made today's (`RaftTiming::default`) safe: what the
/// nodes of a rolling upgrade run first.
pub const OLD_TIMING: RaftTiming =
    RaftTiming { heartbeat_ms: 100, election_min_ms: 300, election_max_ms: 600, pre_vote: true };

/// The nemesis events of the upgrade's restarts.
const UPGRADE: &str = "upgrade";
/// When the upgrade reaches the followers (true time since the run began): once the first
/// leader, elected on the old timing, serves, and early, while it most likely still leads
/// (a leader already restarted runs the new timing, and its own 300 ms then caps its lease).
const DUE_MS: Range<u64> = 3_000..10_000;
/// How long each follower is down for its restart: the package is installed, the process
/// restarts. Short enough that the leader's clock probes (every 500 ms) rarely fail meanwhile:
/// a failed probe makes it distrust the old statement, and the hole closes without the quiet.
const DOWN_MS: Range<u64> = 5..30;

/// The probe's machine. It is no fault's target (not among `Nemesis::machines`), like the
/// chaos tool's: it must reach both sides of the cut.
pub const PROBE: &str = "upgrade-probe";
const PROBE_PROCESS: &str = "upgrade-probe#1";
/// Its process number in the history, apart from the registry workload's (1000 and 1001, each
/// also plus 100 and plus 200).
const PROBE_PROCESS_NUMBER: u64 = 3_000;
/// Its worker ID: below the registry workload's (960–1023), far above the workers', which
/// take the lowest free ones.
const PROBE_WORKER_ID: u32 = 900;
const PROBE_HOLDER: &str = "upgrade-probe";
/// How long the probe looks for a leader on the other side: past the followers' start quiet
/// (about 3 s), after which they elect one whatever the switches say.
const OTHER_LEADER_WITHIN: Duration = Duration::from_secs(5);
/// How often it asks the other side's nodes whether they lead, and how long it waits for
/// each answer (the nemesis's own bound on a `ClusterStatus`).
const ASK_EVERY: Duration = Duration::from_millis(5);
const ASK_TIMEOUT: Duration = Duration::from_millis(200);
/// One call's bound, as the registry workload's.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// The rolling upgrade of one run: its own random stream, and when it reaches the followers.
#[derive(Debug)]
pub struct Upgrade {
    rng: StdRng,
    due: Duration,
    done: bool,
}

impl Upgrade {
    pub fn new(seed: u64) -> Upgrade {
        let mut rng = StdRng::seed_from_u64(seed);
        let due = Duration::from_millis(rng.gen_range(DUE_MS));
        Upgrade { rng, due, done: false }
    }

    /// Whether the upgrade of the followers is still to come and due at `now`.
    pub fn is_due(&self, now: Duration) -> bool {
        !self.done && now >= self.due
    }

    /// The leader's followers upgraded, at most `down_max` nodes down at once, then the leader
    /// cut off from its peers, the probe's lease taken through it before and watched in the
    /// background after. Whether it struck: not while no node says it leads (a later step
    /// tries again).
    pub async fn strike(&mut self, cluster: &mut Cluster<'_>, down_max: usize) -> bool {
        let Some(leader) = Nemesis::leader(cluster).await else { return false };
        self.done = true;
        let mut probe = Probe::new(cluster, leader);
        let token = probe.take_lease().await;
        self.restart_followers(cluster, leader, down_max).await;
        Nemesis::cut_from_peers(cluster, leader);
        if let Some(token) = token {
            tokio::spawn(probe.release_then_renew(token));
        }
        true
    }

    /// Restart every running follower of `leader` in turn (a stop the process saw coming: the
    /// OS keeps what it wrote), each down for a few ms; its next process runs the new timing.
    async fn restart_followers(&mut self, cluster: &mut Cluster<'_>, leader: usize, down_max: usize) {
        let up = |cluster: &Cluster<'_>, i: usize| {
            let node = &cluster.nodes[i];
            !node.is_retired() && node.is_running() && !cluster.net.is_paused(&node.name)
        };
        let mut followers: Vec<usize> = (0..cluster.nodes.len()).filter(|&i| i != leader && up(cluster, i)).collect();
        followers.shuffle(&mut self.rng);
        for index in followers {
            if Nemesis::nodes_down(cluster) >= down_max || !up(cluster, index) {
                continue;
            }
            let down = Duration::from_millis(self.rng.gen_range(DOWN_MS));
            let node = &mut cluster.nodes[index];
            let pending = node.disk.pending_len();
            node.crash(cluster.net, pending);
            let t = node.timing;
            let detail = format!(
                "{} restarted on the new release (heartbeat {} ms, elections {}–{} ms), down {down:?}",
                node.name, t.heartbeat_ms, t.election_min_ms, t.election_max_ms
            );
            cluster.recorder.nemesis(NemesisPhase::Start, UPGRADE, detail);
            tokio::time::sleep(down).await;
            let node = &mut cluster.nodes[index];
            node.start(cluster.net, cluster.recorder);
            cluster.recorder.nemesis(NemesisPhase::Stop, UPGRADE, node.name.clone());
        }
    }
}

/// What the probe asks the registry.
#[derive(Debug, Clone, Copy)]
enum Call {
    Acquire,
    Release { token: u64 },
    Renew { token: u64 },
}

/// The probe's calls, recorded as the registry workload records its own (the invocation, then
/// the completion), on a worker ID nothing else touches. Only an answered call is definite:
/// every error is recorded as an unknown outcome, which the checker may take as applied or not
/// — always sound, and enough here, since the violation it shows is two answered calls.
struct Probe {
    net: Arc<Net>,
    recorder: Arc<Recorder>,
    /// The old leader's client address, and those of every other node that may lead later.
    old_leader: String,
    others: Vec<String>,
    op_id: u64,
}

impl Probe {
    fn new(cluster: &Cluster<'_>, leader: usize) -> Probe {
        let net = cluster.env.net.clone();
        net.set_running(PROBE_PROCESS, true);
        let live = cluster.nodes.iter().filter(|n| !n.is_retired());
        let leader_id = cluster.nodes[leader].id;
        Probe {
            net,
            recorder: cluster.env.recorder.clone(),
            old_leader: client_addr(leader_id),
            others: live.filter(|n| n.id != leader_id).map(|n| client_addr(n.id)).collect(),
            op_id: 0,
        }
    }

    /// The probe's lease, taken through the leader: its token, if granted.
    async fn take_lease(&mut self) -> Option<u64> {
        let leader = self.old_leader.clone();
        match self.call(&leader, Call::Acquire).await {
            Some(RegistryResult::Granted { token, .. }) => Some(token),
            _ => None,
        }
    }

    /// Release the lease of `token` through the first node of the other side that says it
    /// leads, and once that is answered, renew it through the old leader.
    async fn release_then_renew(mut self, token: u64) {
        let Some(new_leader) = self.other_leader().await else { return };
        if self.call(&new_leader, Call::Release { token }).await.is_some() {
            // The history's clock moves in whole ms here (tokio's timers): a renewal invoked
            // in the ms the release returned would count as concurrent with it.
            tokio::time::sleep(Duration::from_millis(1)).await;
            let old_leader = self.old_leader.clone();
            self.call(&old_leader, Call::Renew { token }).await;
        }
    }

    /// The client address of a node other than the old leader that says it leads, asked as a
    /// chaos tool asks (`ClusterStatus`, not recorded), within [`OTHER_LEADER_WITHIN`].
    async fn other_leader(&self) -> Option<String> {
        let until = self.recorder.world().elapsed() + OTHER_LEADER_WITHIN;
        while self.recorder.world().elapsed() < until {
            for addr in &self.others {
                let mut client = RegistryClient::new(self.net.channel(PROBE_PROCESS, addr));
                let asked = tokio::time::timeout(ASK_TIMEOUT, client.cluster_status(pb::ClusterStatusRequest {})).await;
                if asked.is_ok_and(|status| status.is_ok_and(|s| s.get_ref().state == "LEADER")) {
                    return Some(addr.clone());
                }
            }
            tokio::time::sleep(ASK_EVERY).await;
        }
        None
    }

    /// Make `call` through `addr`, recorded; what it answered, if it did.
    async fn call(&mut self, addr: &str, call: Call) -> Option<RegistryResult> {
        self.op_id += 1;
        let (f, token) = match call {
            Call::Acquire => (RegistryFn::Acquire, None),
            Call::Release { token } => (RegistryFn::Release, Some(token)),
            Call::Renew { token } => (RegistryFn::Renew, Some(token)),
        };
        let invoke = RegistryOp {
            phase: Phase::Invoke,
            process: PROBE_PROCESS_NUMBER,
            op_id: self.op_id,
            f,
            worker_id: Some(PROBE_WORKER_ID),
            holder: matches!(call, Call::Acquire).then(|| PROBE_HOLDER.to_string()),
            token,
            time_ns: self.recorder.now_ns(),
            result: None,
            error: None,
            stamps: None,
        };
        self.recorder.push(Event::Registry(invoke.clone()));
        let client = RegistryClient::new(self.net.channel(PROBE_PROCESS, addr));
        let answered = tokio::time::timeout(CALL_TIMEOUT, self.request(client, call)).await;
        let (phase, result, error) = match answered {
            Ok(Ok(result)) => (Phase::Ok, Some(result), None),
            Ok(Err(status)) => (Phase::Info, None, Some(format!("{:?}: {}", status.code(), status.message()))),
            Err(_) => (Phase::Info, None, Some("probe timeout".to_string())),
        };
        let done = RegistryOp { phase, result: result.clone(), error, time_ns: self.recorder.now_ns(), ..invoke };
        self.recorder.push(Event::Registry(done));
        result
    }

    async fn request(
        &self,
        mut client: RegistryClient<BoxChannel>,
        call: Call,
    ) -> Result<RegistryResult, tonic::Status> {
        let worker_id = PROBE_WORKER_ID;
        Ok(match call {
            Call::Acquire => {
                let holder = PROBE_HOLDER.to_string();
                let req =
                    pb::AcquireRequest { holder, worker_id: Some(worker_id), ttl_ms: LEASE_TTL_MS, incarnation: 0 };
                let lease = client.acquire(req).await?.into_inner();
                RegistryResult::Granted { worker_id: lease.worker_id, token: lease.token }
            }
            Call::Release { token } => {
                client.release(pb::ReleaseRequest { worker_id, token, last_ts_ms: 0 }).await?;
                RegistryResult::Released
            }
            Call::Renew { token } => {
                let wall_ms_at_send = self.recorder.world().true_wall_ms();
                let req = pb::RenewRequest { worker_id, token, wall_ms_at_send, max_minted_ts_ms: 0 };
                RegistryResult::Renewed { token: client.renew(req).await?.into_inner().token }
            }
        })
    }
}
