//! The disaster a backup is for, and the restore docs/operations.md prescribes for it.
//!
//! The operator's machine exports a backup every few simulated seconds (`ExportSnapshot`, a
//! linearizable read on the leader) and keeps the newest. Once per run at most the nemesis
//! loses every registry disk at once (three or more: Raft cannot recover), and the operator
//! restores by the book:
//! 1. the old cluster is gone for good: every node's machine is retired, and the registry
//!    workload and the adversary stop (the registry checker models one cluster's table; their
//!    calls in flight stay indeterminate);
//! 2. a fresh cluster (new disks, cluster id [`RESTORED_CLUSTER_ID`]) is bootstrapped under
//!    the same node ids and addresses, with every worker cut off from it;
//! 3. the newest backup is imported (`ImportSnapshot`), retried until a leader takes it;
//! 4. the workers are let in (the run's other faults stay: a worker paused or cut off at the
//!    disaster mints on under its old lease until its deadline): a worker of the lost cluster is answered `FENCED` (its token is
//!    of the old generation), exits and is restarted by its supervisor; a new one waits out
//!    the embargo (every worker ID held for max TTL + cool-down) and is granted a lease of
//!    the new generation, from a `not_before` past anything the lost cluster let its holders
//!    mint.
//!
//! The restore's one stated assumption (docs/design.md, Restores) is that the restoring
//! leader's wall clock is not behind the lost workers' clocks by more than the cool-down. The
//! nemesis steps clocks by seconds, so the operator here waits, before importing, for as
//! long as the fastest clock of the run was ahead of true time past the cool-down
//! ([`clock_wait`]): then the embargo's end, read on the fresh cluster's true clocks, lies past
//! every timestamp a lost holder could mint. The parking checker judges the window: nothing
//! minted past a deadline, no lease extended while the registry is lost, and every worker
//! that served before serving again soon after the embargo lifts.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fenceflake_jepsen::checker::{CheckResult, Valid};
use fenceflake_jepsen::history::NemesisPhase;
use fenceflake_proto::channel::BoxChannel;
use fenceflake_proto::v1 as pb;
use fenceflake_proto::v1::registry_client::RegistryClient;
use fenceflake_proto::wire::Reason;
use fenceflake_registry::raft::types::NodeId;
use tokio::task::JoinHandle;

use crate::clock::World;
use crate::membership::{self, Operator};
use crate::nemesis::Cluster;
use crate::net::Net;
use crate::nodes::{client_addr, SimNode, COOL_DOWN_MS, RESTORED_CLUSTER_ID, TTL_MS_MAX};
use crate::recorder::Recorder;

/// The nemesis event's name (a fault window for the parking checker).
pub const DISASTER: &str = "disaster";
/// How often the operator exports a backup.
const BACKUP_EVERY: Duration = Duration::from_secs(3);
/// One import attempt: a backup is one Raft entry, replicated and applied.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The operator gives up on the import after this long (the workers then stay away from the
/// fresh cluster, and the parking checker reports that they never served again).
const IMPORT_DEADLINE: Duration = Duration::from_secs(60);
/// The window ends this long after the attempt that applied the import was sent: before the
/// embargo can lift on any leader (`ttl_max + cool_down` on its monotonic clock from its
/// apply, which follows the send; a simulated monotonic clock runs ahead of true time by at
/// most 100 ms), so no lease is granted inside the window (the answer may come much later
/// than the apply, through a slow network or a lost reply), and the parking checker's bound
/// on serving again counts from about when the embargo lifts.
const EMBARGO_NOTICE: Duration = Duration::from_millis(TTL_MS_MAX + COOL_DOWN_MS - 500);
/// Definite refusals the operator retries: no leader yet, or one busy.
const RETRIED: [Reason; 4] = [Reason::NotLeader, Reason::NoLeader, Reason::NoQuorum, Reason::Overloaded];
/// Drift and rounding the operator's clock wait allows for on top of the steps it saw.
const CLOCK_WAIT_MARGIN: Duration = Duration::from_millis(100);

/// The newest backup, with what the export said of it.
#[derive(Debug, Clone)]
struct Backup {
    data: Vec<u8>,
    applied_index: u64,
    records: u32,
    /// True time it was taken at.
    taken_at: Duration,
}

/// The operator's side of the disaster: its backups, and what stops when the registry is
/// lost.
#[derive(Debug)]
pub struct Restore {
    /// The founding members: the fresh cluster takes their ids and addresses, which the
    /// workers still name.
    members: Vec<NodeId>,
    newest: Arc<Mutex<Option<Backup>>>,
    backups: JoinHandle<()>,
    /// The registry workload's and the adversary's processes and tasks.
    callers: Vec<(&'static str, JoinHandle<()>)>,
    done: bool,
    failure: Option<String>,
}

impl Restore {
    /// Start exporting backups from the operator's machine through the founding members'
    /// addresses (any live member forwards to the leader); `callers` stop at the disaster.
    pub fn start(
        net: &Arc<Net>,
        recorder: &Arc<Recorder>,
        members: &[NodeId],
        callers: Vec<(&'static str, JoinHandle<()>)>,
    ) -> Restore {
        net.set_running(membership::PROCESS, true);
        let clients: Vec<_> =
            members.iter().map(|id| RegistryClient::new(net.channel(membership::PROCESS, &client_addr(*id)))).collect();
        let newest = Arc::new(Mutex::new(None));
        let backups = tokio::spawn(export_every(clients, newest.clone(), recorder.clone()));
        Restore { members: members.to_vec(), newest, backups, callers, done: false, failure: None }
    }

    fn newest(&self) -> Option<Backup> {
        self.newest.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Whether the disaster may strike now: once per run, with a backup, and not while the
    /// operator is replacing a member (it cannot do both at once).
    pub fn may_strike(&self, operator: &Operator) -> bool {
        !self.done && !operator.is_replacing() && self.newest().is_some()
    }

    /// Why the restore failed, if it did: the simulation reports it as a violation (with
    /// every fault healed, a leader of the fresh cluster must take the backup).
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Lose every registry disk and restore the newest backup into a fresh cluster, waiting
    /// `clock_wait` before the import; `operator` becomes the fresh cluster's, which replaces
    /// no member (its replacements belong to the lost cluster's story). Returns once the
    /// embargo is about to lift, with what the import answered, for the window's end. The
    /// other faults stay as they were (a worker cut off or paused at the disaster goes on
    /// minting under its old lease until its deadline, which is what the embargo is for),
    /// except that the operator reaches every node, and the nodes one another.
    pub async fn strike(&mut self, cluster: &mut Cluster<'_>, operator: &mut Operator, clock_wait: Duration) -> String {
        let Some(backup) = self.newest() else { return "no backup".to_string() };
        self.done = true;
        self.backups.abort();
        for (process, task) in self.callers.drain(..) {
            cluster.net.set_running(process, false);
            task.abort();
        }
        let lost: Vec<String> = cluster.nodes.iter().filter(|n| !n.is_retired()).map(|n| n.name.clone()).collect();
        for node in cluster.nodes.iter_mut() {
            node.retire(cluster.net);
        }
        let age = cluster.recorder.world().elapsed().saturating_sub(backup.taken_at);
        cluster.recorder.nemesis(
            NemesisPhase::Start,
            DISASTER,
            format!(
                "every registry disk lost ({}); restoring the backup of applied index {} ({} records, taken {age:?} \
                 ago) into a fresh cluster {RESTORED_CLUSTER_ID}, after waiting {clock_wait:?} for the fastest \
                 clock of the run",
                lost.join(", "),
                backup.applied_index,
                backup.records,
            ),
        );
        tokio::time::sleep(clock_wait).await;
        cluster.net.heal_machine(membership::MACHINE);
        let first = cluster.nodes.len();
        // The cuts that keep the workers away until the import, and only those: a worker cut
        // off from an address before the disaster stays cut off from its new node.
        let mut away = Vec::new();
        for id in &self.members {
            let mut node = SimNode::founding(*id, &self.members, RESTORED_CLUSTER_ID);
            for peer in &cluster.nodes[first..] {
                cluster.net.uncut(&node.name, &peer.name);
                cluster.net.uncut(&peer.name, &node.name);
            }
            for worker in cluster.workers.iter() {
                for (from, to) in [(&worker.name, &node.name), (&node.name, &worker.name)] {
                    if cluster.net.cut(from, to) {
                        away.push((from.clone(), to.clone()));
                    }
                }
            }
            node.start(cluster.net, cluster.recorder);
            cluster.nodes.push(node);
        }
        *operator = Operator::restored(&self.members);
        let clients: Vec<_> = cluster.nodes[first..]
            .iter()
            .map(|n| RegistryClient::new(cluster.net.channel(membership::PROCESS, &client_addr(n.id))))
            .collect();
        let world = cluster.recorder.world();
        match import(&clients, &backup.data, world).await {
            Ok(Imported { answer, applied_after }) => {
                for (from, to) in away {
                    cluster.net.uncut(&from, &to);
                }
                let window_ends = applied_after + EMBARGO_NOTICE;
                tokio::time::sleep(window_ends.saturating_sub(world.elapsed())).await;
                answer
            }
            Err(why) => {
                // The workers stay away from a cluster that did not take the backup.
                let failure = format!("the import failed, gave up after {IMPORT_DEADLINE:?}: {why}");
                self.failure = Some(failure.clone());
                failure
            }
        }
    }
}

/// How long the operator waits before importing: as long as the fastest wall clock of the run
/// (any machine's, at any time) was ahead of true time past the cool-down. A lost holder minted
/// below its `mint_until`, at most its wall clock at a renewal (or the leader's at a grant) plus
/// a TTL of at most `ttl_max`, plus the renew window at a renewal; the restored high-water
/// marks lie `ttl_max + cool_down` plus the restoring leader's (equal) window past its wall
/// clock at the import, which is true time on the fresh machines.
pub fn clock_wait(cluster: &Cluster<'_>) -> Duration {
    let elapsed = cluster.recorder.world().elapsed();
    let walls = cluster.nodes.iter().map(|n| &n.wall).chain(cluster.workers.iter().map(|w| &w.wall));
    let ahead_ms = walls.map(|wall| wall.max_ahead_ms(elapsed)).max().unwrap_or(0);
    let ahead = Duration::from_millis(u64::try_from(ahead_ms).unwrap_or(0));
    match ahead.checked_sub(Duration::from_millis(COOL_DOWN_MS)) {
        Some(past) => past + CLOCK_WAIT_MARGIN,
        None => Duration::ZERO,
    }
}

/// Export a backup every [`BACKUP_EVERY`] through the first client that answers; keep the
/// newest.
async fn export_every(
    clients: Vec<RegistryClient<BoxChannel>>,
    newest: Arc<Mutex<Option<Backup>>>,
    recorder: Arc<Recorder>,
) {
    loop {
        tokio::time::sleep(BACKUP_EVERY).await;
        for client in &clients {
            let mut client = client.clone();
            let Some(exported) = membership::try_call(client.export_snapshot(pb::ExportSnapshotRequest {})).await
            else {
                continue;
            };
            let backup = Backup {
                data: exported.data,
                applied_index: exported.applied_index,
                records: exported.records,
                taken_at: recorder.world().elapsed(),
            };
            *newest.lock().unwrap_or_else(PoisonError::into_inner) = Some(backup);
            break;
        }
    }
}

/// A successful import: what the answer said, and the earliest true time it can have been
/// applied at (when the attempt that applied it was sent).
struct Imported {
    answer: String,
    applied_after: Duration,
}

/// Import `data` through the fresh cluster's nodes in turn (a follower forwards to the
/// leader; before the first election every node answers UNAVAILABLE) until one takes it; or
/// why the operator gave up.
async fn import(clients: &[RegistryClient<BoxChannel>], data: &[u8], world: World) -> Result<Imported, String> {
    let attempts = async {
        // When the first attempt that may have been applied without its answer reaching the
        // operator was sent (it timed out, or its answer says nothing of whether it was
        // applied): a retry is then refused because the table is no longer empty.
        let mut first_indeterminate: Option<Duration> = None;
        let mut turn = 0;
        loop {
            let mut client = clients[turn % clients.len()].clone();
            turn += 1;
            let request = pb::ImportSnapshotRequest { data: data.to_vec() };
            let sent = world.elapsed();
            match tokio::time::timeout(IMPORT_TIMEOUT, client.import_snapshot(request)).await {
                Ok(Ok(answer)) => {
                    let answer = answer.into_inner();
                    let answer = format!(
                        "restored into {RESTORED_CLUSTER_ID}: token generation {}, {} worker IDs embargoed until \
                         leader wall {} ms, {} records",
                        answer.generation, answer.worker_ids, answer.embargo_until_ms, answer.records
                    );
                    return Ok(Imported { answer, applied_after: sent });
                }
                Ok(Err(status)) => match (Reason::of(&status), first_indeterminate) {
                    (Some(Reason::NotEmpty), Some(applied_after)) => {
                        let answer = format!(
                            "restored into {RESTORED_CLUSTER_ID} by an attempt whose answer was lost: {}",
                            status.message()
                        );
                        return Ok(Imported { answer, applied_after });
                    }
                    (Some(reason), _) if !reason.is_indeterminate() && !RETRIED.contains(&reason) => {
                        return Err(format!("{reason:?}: {}", status.message()));
                    }
                    (Some(reason), _) if !reason.is_indeterminate() => {}
                    // A forward that failed, a proposal whose fate is unknown, a reply without a
                    // reason: perhaps applied.
                    _ => {
                        first_indeterminate.get_or_insert(sent);
                    }
                },
                Err(_) => {
                    first_indeterminate.get_or_insert(sent);
                }
            }
            tokio::time::sleep(membership::RETRY_PAUSE).await;
        }
    };
    tokio::time::timeout(IMPORT_DEADLINE, attempts).await.unwrap_or_else(|_| Err("no leader took it".to_string()))
}

/// The `restore` check of a run whose restore failed.
pub fn failed(why: &str) -> CheckResult {
    CheckResult {
        name: "restore".to_string(),
        valid: Valid::False,
        summary: format!("the backup was not restored: {why}"),
        evidence: Vec::new(),
    }
}
