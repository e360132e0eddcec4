//! The operator replacing a registry voter, as docs/operations.md prescribes, through the
//! registry's own admin RPCs (`AddLearner`, `PromoteMember`, `RemoveMember`,
//! `TransferLeader`, `ClusterStatus`) from a machine with the `operator/harness` identity:
//! - **`replace-voter`**, a planned replacement: start a new machine under a node id never
//!   used before (`r6`, then `r7`, …) on an empty disk with `--initial-cluster-state
//!   existing`, add it as a learner, wait until the leader reports it caught up (as
//!   `ctl add-member` does), promote it, move leadership off the old voter if it leads, remove
//!   the old voter and stop its machine for good;
//! - **`replace-lost-node`**, "Replace a node whose disk is lost": a node the lost-disk guard
//!   refused (it crash-loops under its supervisor, saying "its disk was lost … Remove it …")
//!   is removed and its machine stopped, then a replacement under a new id is added as above.
//!
//! A replacement runs in the background: each step that waits for the cluster is a task of
//! its own, and the nemesis only looks at it between its faults ([`Operator::advance`]), so
//! it never holds the faults up (a nemesis blocked on an operator hid other faults' windows).
//! Each step has a deadline; at it the operator gives up and the history says how far it got.
//! One replacement at a time, at most [`REPLACEMENTS_MAX`] per run.
//!
//! The workers keep the registry addresses they started with, as a deployed worker keeps its
//! `--registry` flag until it is redeployed: any live member forwards to the leader (the new
//! nodes included), and with two replacements at most three of the five addresses stay live.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use fenceflake_jepsen::history::NemesisPhase;
use fenceflake_proto::channel::BoxChannel;
use fenceflake_proto::v1 as pb;
use fenceflake_proto::v1::registry_client::RegistryClient;
use fenceflake_registry::raft::types::NodeId;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use tokio::task::JoinHandle;

use crate::nemesis::Cluster;
use crate::nodes::{client_addr, peer_addr, SimNode};

/// The operator's machine, as the network, the nemesis and `identity.rs` know it.
pub const MACHINE: &str = "operator";
/// Its one process (never killed): it replaces members, and exports and imports backups
/// (`restore.rs`).
pub(crate) const PROCESS: &str = "operator#1";
/// The nemesis events' names.
const REPLACE_VOTER: &str = "replace-voter";
const REPLACE_LOST_NODE: &str = "replace-lost-node";
/// Each replacement changes the membership twice; two per run leave three of the workers'
/// five registry addresses live.
const REPLACEMENTS_MAX: usize = 2;
/// One admin call: a node's request timeout (2 s) and a hop or two.
const CALL_TIMEOUT: Duration = Duration::from_millis(2_500);
/// Between failed calls or status polls.
pub(crate) const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Caught up: within this many entries of the leader's commit index (as `ctl add-member`).
const CAUGHT_UP_ENTRIES: u64 = 10;
/// What the lost-disk guard's refusal says (`registry/src/server.rs`).
const LOST_DISK_REFUSAL: &str = "its disk was lost";

type Client = (NodeId, RegistryClient<BoxChannel>);

/// One step of a replacement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    StartNew,
    AddLearner,
    CatchUp,
    Promote,
    /// Move leadership off the old voter if it leads, and remove it.
    RemoveOld,
    StopOld,
}

const REPLACE_VOTER_STEPS: &[Step] =
    &[Step::StartNew, Step::AddLearner, Step::CatchUp, Step::Promote, Step::RemoveOld, Step::StopOld];
/// The docs' order for a lost disk: the refused member goes first (it cannot vote anyway).
const REPLACE_LOST_STEPS: &[Step] =
    &[Step::RemoveOld, Step::StopOld, Step::StartNew, Step::AddLearner, Step::CatchUp, Step::Promote];

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::StartNew => "start-new",
            Step::AddLearner => "add-learner",
            Step::CatchUp => "catch-up",
            Step::Promote => "promote",
            Step::RemoveOld => "remove-old",
            Step::StopOld => "stop-old",
        }
    }

    /// How long the operator waits for the step before giving up: long enough to ride out
    /// an election or a short partition, short enough to end within a run.
    fn deadline(self) -> Duration {
        match self {
            // A snapshot install, or a log replay, under the faults.
            Step::CatchUp => Duration::from_secs(20),
            // Perhaps a leadership transfer first.
            Step::RemoveOld => Duration::from_secs(15),
            _ => Duration::from_secs(10),
        }
    }
}

/// Which nodes may be voters, as far as the operator's calls prove it: `certain` ones are
/// voters in every membership the cluster may be in now, `possible` ones in some (a call
/// that timed out may have committed). The nemesis sizes its quorum loss and its bound on
/// nodes down by them.
#[derive(Debug)]
pub struct Voters {
    certain: BTreeSet<NodeId>,
    possible: BTreeSet<NodeId>,
}

impl Voters {
    /// The largest minority of the smallest membership the cluster may be in: this many
    /// voters down leave every membership a quorum, one more may leave one none.
    pub fn minority(&self) -> usize {
        self.certain.len().saturating_sub(1) / 2
    }

    pub fn may_vote(&self, id: NodeId) -> bool {
        self.possible.contains(&id)
    }
}

/// A replacement under way.
#[derive(Debug)]
struct Replacement {
    fault: &'static str,
    steps: &'static [Step],
    /// How many of `steps` are done.
    done: usize,
    /// The replaced node's index in `Cluster::nodes`.
    old: usize,
    new_id: NodeId,
    /// The step running in the background, and when the operator gives up on it.
    call: Option<(JoinHandle<()>, Duration)>,
}

impl Replacement {
    fn done_names(&self) -> Vec<&'static str> {
        step_names(&self.steps[..self.done])
    }
}

/// Where a replacement stands after [`Operator::advance`] looked at it.
enum Progress {
    Waiting,
    Done,
    GaveUp(Step),
}

#[derive(Debug)]
pub struct Operator {
    voters: Voters,
    /// Nodes (indexes in `Cluster::nodes`) the lost-disk guard refused to start.
    refused: BTreeSet<usize>,
    replacements: usize,
    under_way: Option<Replacement>,
}

impl Operator {
    /// The operator of a cluster bootstrapped with `members`.
    pub fn new(members: &[NodeId]) -> Operator {
        let voters = members.iter().copied().collect::<BTreeSet<_>>();
        Operator {
            voters: Voters { certain: voters.clone(), possible: voters },
            refused: BTreeSet::new(),
            replacements: 0,
            under_way: None,
        }
    }

    /// The operator of a cluster restored from a backup with `members`: the lost cluster's
    /// replacements are its story, and the fresh one's members stay as bootstrapped.
    pub fn restored(members: &[NodeId]) -> Operator {
        Operator { replacements: REPLACEMENTS_MAX, ..Operator::new(members) }
    }

    pub fn is_replacing(&self) -> bool {
        self.under_way.is_some()
    }

    pub fn voters(&self) -> &Voters {
        &self.voters
    }

    /// A node process exited on its own with `why`: if the lost-disk guard refused it, it is
    /// the operator's to replace.
    pub fn note_exit(&mut self, index: usize, why: &str) {
        if why.contains(LOST_DISK_REFUSAL) {
            self.refused.insert(index);
        }
    }

    /// Begin a replacement, unless one is under way or the run had its share: of a node the
    /// lost-disk guard refused if there is one (it cannot serve until replaced), else of a
    /// running voter drawn from `rng`.
    pub fn begin(&mut self, cluster: &mut Cluster<'_>, rng: &mut StdRng) {
        if self.under_way.is_some() || self.replacements >= REPLACEMENTS_MAX {
            return;
        }
        let lost = self.refused.iter().copied().find(|&i| !cluster.nodes[i].is_retired());
        let (fault, steps, old) = match lost {
            Some(index) => (REPLACE_LOST_NODE, REPLACE_LOST_STEPS, index),
            None => {
                let running: Vec<usize> = (0..cluster.nodes.len())
                    .filter(|&i| cluster.nodes[i].is_running() && self.voters.certain.contains(&cluster.nodes[i].id))
                    .collect();
                let Some(&index) = running.choose(rng) else { return };
                (REPLACE_VOTER, REPLACE_VOTER_STEPS, index)
            }
        };
        cluster.net.set_running(PROCESS, true);
        let new_id = cluster.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        self.replacements += 1;
        let replacement = Replacement { fault, steps, done: 0, old, new_id, call: None };
        cluster.recorder.nemesis(
            NemesisPhase::Start,
            fault,
            format!("{} by r{new_id}: {}", cluster.nodes[old].name, step_names(steps).join(", ")),
        );
        self.under_way = Some(replacement);
        self.advance(cluster);
    }

    /// Take the replacement under way as far as it goes now: note the steps finished in the
    /// background, carry out the next ones, give up on a step past its deadline.
    pub fn advance(&mut self, cluster: &mut Cluster<'_>) {
        let Some(mut replacement) = self.under_way.take() else { return };
        let old = cluster.nodes[replacement.old].name.clone();
        let new = format!("r{}", replacement.new_id);
        let detail = match self.progress(&mut replacement, cluster) {
            Progress::Waiting => {
                self.under_way = Some(replacement);
                return;
            }
            Progress::Done => format!("{old} replaced by {new}"),
            Progress::GaveUp(step) => format!(
                "{old} by {new}: gave up at {} after {:?}; done: {}",
                step.name(),
                step.deadline(),
                replacement.done_names().join(", ")
            ),
        };
        cluster.recorder.nemesis(NemesisPhase::Stop, replacement.fault, detail);
    }

    fn progress(&mut self, replacement: &mut Replacement, cluster: &mut Cluster<'_>) -> Progress {
        let now = cluster.recorder.world().elapsed();
        loop {
            let Some(&step) = replacement.steps.get(replacement.done) else { return Progress::Done };
            match &replacement.call {
                Some((task, _)) if task.is_finished() => {
                    replacement.call = None;
                    self.finished(step, replacement, cluster);
                }
                Some((_, give_up_at)) if now < *give_up_at => return Progress::Waiting,
                Some((task, _)) => {
                    task.abort();
                    return Progress::GaveUp(step);
                }
                None => match self.start(step, replacement, cluster) {
                    Some(task) => replacement.call = Some((task, now + step.deadline())),
                    None => self.finished(step, replacement, cluster),
                },
            }
        }
    }

    /// Carry out `step` now, or start it in the background (the task to wait for).
    fn start(&mut self, step: Step, replacement: &Replacement, cluster: &mut Cluster<'_>) -> Option<JoinHandle<()>> {
        let old_id = cluster.nodes[replacement.old].id;
        let new_id = replacement.new_id;
        match step {
            Step::StartNew => {
                // Its `--initial-cluster` names the live members as the operator knows them.
                let members: Vec<NodeId> = live(cluster).filter(|id| self.voters.may_vote(*id)).collect();
                let mut node = SimNode::joining(new_id, &members, cluster.nodes[replacement.old].cluster_id);
                node.start(cluster.net, cluster.recorder);
                cluster.nodes.push(node);
                None
            }
            Step::StopOld => {
                cluster.nodes[replacement.old].retire(cluster.net);
                None
            }
            Step::AddLearner => Some(tokio::spawn(add_learner(clients(cluster), new_id))),
            Step::CatchUp => Some(tokio::spawn(catch_up(clients(cluster), new_id))),
            Step::Promote => {
                self.voters.possible.insert(new_id);
                Some(tokio::spawn(promote(clients(cluster), new_id)))
            }
            Step::RemoveOld => {
                self.voters.certain.remove(&old_id);
                Some(tokio::spawn(remove(clients(cluster), old_id)))
            }
        }
    }

    /// `step` is done: what it proved about the voters.
    fn finished(&mut self, step: Step, replacement: &mut Replacement, cluster: &Cluster<'_>) {
        match step {
            Step::Promote => {
                self.voters.certain.insert(replacement.new_id);
            }
            Step::RemoveOld => {
                self.voters.possible.remove(&cluster.nodes[replacement.old].id);
            }
            Step::StartNew | Step::AddLearner | Step::CatchUp | Step::StopOld => {}
        }
        replacement.done += 1;
    }
}

fn step_names(steps: &[Step]) -> Vec<&'static str> {
    steps.iter().map(|s| s.name()).collect()
}

/// The ids of the nodes whose machines were not stopped for good.
fn live<'a>(cluster: &'a Cluster<'_>) -> impl Iterator<Item = NodeId> + 'a {
    cluster.nodes.iter().filter(|n| !n.is_retired()).map(|n| n.id)
}

/// A client of every live node's client address, from the operator's machine.
fn clients(cluster: &Cluster<'_>) -> Vec<Client> {
    live(cluster).map(|id| (id, RegistryClient::new(cluster.net.channel(PROCESS, &client_addr(id))))).collect()
}

/// One call through `client`, within [`CALL_TIMEOUT`]; `None` if it failed (logged).
pub(crate) async fn try_call<T, Fut>(call: Fut) -> Option<T>
where
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(response)) => Some(response.into_inner()),
        Ok(Err(status)) => {
            tracing::debug!(code = ?status.code(), message = status.message(), "operator call failed");
            None
        }
        Err(_) => {
            tracing::debug!("operator call timed out");
            None
        }
    }
}

/// `call` through each node in turn until one succeeds (followers forward to the leader).
/// The membership calls are safe to repeat: a change already made is made again as a no-op.
async fn until_ok<T, F, Fut>(clients: &[Client], call: F) -> T
where
    F: Fn(RegistryClient<BoxChannel>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut turn = 0;
    loop {
        let (_, client) = &clients[turn % clients.len()];
        turn += 1;
        if let Some(answer) = try_call(call(client.clone())).await {
            return answer;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// The leader's own status (only the leader knows each member's replication progress), and
/// a client of it.
async fn leader_status(clients: &[Client]) -> (pb::ClusterStatusResponse, RegistryClient<BoxChannel>) {
    loop {
        let named = until_ok(clients, |mut c| async move { c.cluster_status(pb::ClusterStatusRequest {}).await });
        let leader_id = named.await.leader_id;
        if let Some((_, leader)) = clients.iter().find(|(id, _)| *id == leader_id) {
            let mut leader = leader.clone();
            let status = try_call(leader.cluster_status(pb::ClusterStatusRequest {})).await;
            if let Some(status) = status.filter(|s| s.node_id == s.leader_id) {
                return (status, leader);
            }
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

async fn add_learner(clients: Vec<Client>, id: NodeId) {
    let request = pb::AddMemberRequest { node_id: id, peer_addr: peer_addr(id), client_addr: client_addr(id) };
    until_ok(&clients, |mut c| {
        let request = request.clone();
        async move { c.add_learner(request).await }
    })
    .await;
}

/// Until the leader reports the learner within [`CAUGHT_UP_ENTRIES`] of its commit index.
async fn catch_up(clients: Vec<Client>, id: NodeId) {
    loop {
        let (status, _) = leader_status(&clients).await;
        let matched = status.members.iter().find(|m| m.node_id == id).map_or(0, |m| m.matched_index);
        if matched > 0 && matched + CAUGHT_UP_ENTRIES >= status.commit_index {
            return;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

async fn promote(clients: Vec<Client>, id: NodeId) {
    until_ok(&clients, |mut c| async move { c.promote_member(pb::PromoteMemberRequest { node_id: id }).await }).await;
}

/// Remove voter `id` through the leader; the leader cannot remove itself, so while `id`
/// leads, hand leadership to whichever other voter wins.
async fn remove(clients: Vec<Client>, id: NodeId) {
    loop {
        let (status, mut leader) = leader_status(&clients).await;
        if status.leader_id == id {
            try_call(leader.transfer_leader(pb::TransferLeaderRequest { to_node_id: None })).await;
        } else if try_call(leader.remove_member(pb::RemoveMemberRequest { node_id: id })).await.is_some() {
            return;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}
