//! Moving leadership on purpose. openraft 0.9.25 has no leadership-transfer API, so the
//! leader steps aside with the two switches it does have (its runtime config's `heartbeat`
//! and `elect`): it stops sending heartbeats and stops campaigning, so the followers' leader
//! leases run out and one of them wins the next election. To land on a chosen voter, the
//! leader first asks every *other* voter to hold its elections (`HoldElections` on the peer
//! port), so the chosen one is the only candidate. Holds lift themselves on a timer, so a
//! leader that dies mid-transfer leaves no voter unable to campaign for long.
//!
//! While it steps aside the leader refuses every request (NOT_LEADER): replicating new
//! entries would renew the followers' leases and keep it leader. Requests retried during
//! the hand-over (one election, normally well under a second) reach the new leader.
//!
//! openraft has one `elect` switch and four reasons to turn it off: a leader's hold, this
//! node's own hand-over, a clock this node cannot vouch for (`clock_watch.rs`), and the
//! quiet after a start (`start_quiet.rs`).
//! [`ElectionSwitch`] keeps the reasons apart, so that lifting one (a hold running out, a
//! hand-over ending) never turns elections back on while another still stands.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openraft::ServerState;

use crate::error::RegistryError;
use crate::raft::network::{PeerClients, PeerRpc};
use crate::raft::types::{NodeId, Raft};

/// Why this node's elections are off; they are on only while no reason stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoElections {
    /// A leader holds them for a transfer to another voter ([`ElectionHold`]).
    Held,
    /// This node is handing its own leadership over ([`HandOver`]).
    HandingOver,
    /// This node cannot vouch for its wall clock (`clock_watch.rs`).
    Clock,
    /// This process has just started and refuses votes for a while (`start_quiet.rs`): it
    /// must not vote for itself either (openraft's own timer, under `--pre-vote false`).
    StartQuiet,
}

/// openraft's `elect` switch, shared by every reason to turn it off. With pre-vote
/// (`pre_vote.rs`) openraft's own election timer stays off for good and the switch only
/// says whether this node may campaign ([`ElectionSwitch::may_campaign`]).
#[derive(Clone)]
pub struct ElectionSwitch {
    raft: Raft,
    /// The standing reasons, as bits of `1 << NoElections as u8`.
    off: Arc<Mutex<u8>>,
    /// Campaigns go through the pre-vote, never openraft's own timer.
    pre_vote: bool,
}

impl std::fmt::Debug for ElectionSwitch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElectionSwitch").field("off", &self.off).finish_non_exhaustive()
    }
}

impl ElectionSwitch {
    pub fn new(raft: Raft, pre_vote: bool) -> ElectionSwitch {
        raft.runtime_config().elect(!pre_vote);
        ElectionSwitch { raft, off: Arc::default(), pre_vote }
    }

    /// Whether no reason to stay out of elections stands.
    pub fn may_campaign(&self) -> bool {
        *self.off.lock().unwrap_or_else(PoisonError::into_inner) == 0
    }

    /// Whether `why` stands.
    pub fn stands(&self, why: NoElections) -> bool {
        *self.off.lock().unwrap_or_else(PoisonError::into_inner) & (1u8 << why as u8) != 0
    }

    /// Set (`standing`) or lift one reason, and the switch with it (under one lock, so two
    /// callers never leave it contrary to their reasons).
    pub fn set(&self, why: NoElections, standing: bool) {
        let mut off = self.off.lock().unwrap_or_else(PoisonError::into_inner);
        let bit = 1u8 << why as u8;
        *off = if standing { *off | bit } else { *off & !bit };
        self.raft.runtime_config().elect(*off == 0 && !self.pre_vote);
    }

    /// The Raft instance whose switch this is.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }
}

/// Longest hold a voter accepts on its own elections, whatever a leader asks: a lost "lift"
/// message must not keep a voter from campaigning for long.
pub const ELECTION_HOLD_MAX: Duration = Duration::from_secs(30);

/// This node's hold on its own elections: set by a leader's `HoldElections`, lifted by the
/// timer it starts or by a later call. Each call supersedes the previous one: the generation
/// and the switch change together under one lock, so a timer never lifts a newer hold and a
/// hold never outlives every timer.
#[derive(Clone)]
pub struct ElectionHold {
    switch: ElectionSwitch,
    generation: Arc<Mutex<u64>>,
}

impl std::fmt::Debug for ElectionHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElectionHold").field("generation", &self.generation).finish_non_exhaustive()
    }
}

impl ElectionHold {
    pub fn new(switch: ElectionSwitch) -> ElectionHold {
        ElectionHold { switch, generation: Arc::default() }
    }

    /// Start no election for `hold` (capped at [`ELECTION_HOLD_MAX`]); zero lifts a hold.
    /// This node still votes for others.
    pub fn hold(&self, hold: Duration) {
        let hold = hold.min(ELECTION_HOLD_MAX);
        let generation = {
            let mut generation = self.generation.lock().unwrap_or_else(PoisonError::into_inner);
            *generation += 1;
            self.switch.set(NoElections::Held, !hold.is_zero());
            *generation
        };
        if hold.is_zero() {
            return;
        }
        tracing::info!(hold_ms = hold.as_millis() as u64, "holding elections for a leadership transfer");
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(hold).await;
            let current = this.generation.lock().unwrap_or_else(PoisonError::into_inner);
            if *current == generation {
                this.switch.set(NoElections::Held, false);
            }
        });
    }
}

/// Where a hand-over may go: the voters (other than this node) and their peer addresses.
#[derive(Debug, Clone)]
pub struct HandOverPlan {
    pub me: NodeId,
    pub to: Option<NodeId>,
    /// Every voter but this node, with its peer address.
    pub others: Vec<(NodeId, String)>,
}

/// The leader's side of a hand-over.
#[derive(Clone)]
pub struct HandOver {
    raft: Raft,
    switch: ElectionSwitch,
    peers: PeerClients,
    /// How long to wait for a new leader before giving up (and serving on).
    window: Duration,
    /// Bound on each `HoldElections` call.
    call_timeout: Duration,
    in_progress: Arc<AtomicBool>,
}

impl std::fmt::Debug for HandOver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandOver").field("window", &self.window).finish_non_exhaustive()
    }
}

/// Puts the leader's switches back however the hand-over ends (also on cancellation).
struct Restore<'a>(&'a HandOver);

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        self.0.raft.runtime_config().heartbeat(true);
        self.0.switch.set(NoElections::HandingOver, false);
        self.0.in_progress.store(false, Ordering::SeqCst);
    }
}

impl HandOver {
    pub fn new(switch: ElectionSwitch, peers: PeerClients, window: Duration, call_timeout: Duration) -> HandOver {
        HandOver { raft: switch.raft.clone(), switch, peers, window, call_timeout, in_progress: Arc::default() }
    }

    /// Whether this node is stepping aside right now (it must refuse requests meanwhile).
    pub fn in_progress(&self) -> bool {
        self.in_progress.load(Ordering::SeqCst)
    }

    /// Step aside and wait for another node to lead. Returns the new leader and its term.
    /// The holds go out first, while this node still serves; it refuses requests only from
    /// the moment it stops heartbeating, for at most the window.
    pub async fn run(&self, plan: HandOverPlan) -> Result<(NodeId, u64), RegistryError> {
        if self.in_progress.load(Ordering::SeqCst) {
            return Err(RegistryError::Membership("a leadership transfer is already in progress".into()));
        }
        let held: Vec<_> = plan.others.iter().filter(|(id, _)| Some(*id) != plan.to).cloned().collect();
        if plan.to.is_some() {
            self.hold_others(&held, self.window + self.call_timeout).await;
        }
        if self.in_progress.swap(true, Ordering::SeqCst) {
            return Err(RegistryError::Membership("a leadership transfer is already in progress".into()));
        }
        let _restore = Restore(self);
        tracing::warn!(node_id = plan.me, to = ?plan.to, "stepping aside: leadership transfer requested");
        self.raft.runtime_config().heartbeat(false);
        self.switch.set(NoElections::HandingOver, true);
        let outcome = self.wait_for_new_leader(plan.me).await;
        if plan.to.is_some() {
            self.hold_others(&held, Duration::ZERO).await;
        }
        match outcome {
            Some((leader, term)) => {
                tracing::info!(from = plan.me, leader, term, "leadership transferred");
                Ok((leader, term))
            }
            None => Err(RegistryError::NoLeader { waited_ms: self.window.as_millis() as u64 }),
        }
    }

    /// Ask `voters`, all at once, to hold their elections for `hold` (zero: lift). Best
    /// effort: a voter that does not answer may campaign, which still moves leadership, just
    /// not to the target.
    async fn hold_others(&self, voters: &[(NodeId, String)], hold: Duration) {
        let hold_ms = hold.as_millis() as u64;
        let mut calls = tokio::task::JoinSet::new();
        for (node_id, addr) in voters.iter().cloned() {
            let (peers, timeout) = (self.peers.clone(), self.call_timeout);
            calls.spawn(async move {
                let call = peers.call::<u64, ()>(node_id, &addr, PeerRpc::HoldElections, &hold_ms, timeout);
                (node_id, call.await)
            });
        }
        while let Some(joined) = calls.join_next().await {
            if let Ok((node_id, Err(e))) = joined {
                tracing::warn!(node_id, error = %e, hold_ms, "could not set a voter's election hold");
            }
        }
    }

    async fn wait_for_new_leader(&self, me: NodeId) -> Option<(NodeId, u64)> {
        let mut metrics = self.raft.metrics();
        let wait = async {
            loop {
                {
                    let m = metrics.borrow_and_update();
                    if let Some(leader) = m.current_leader.filter(|l| *l != me) {
                        if m.state != ServerState::Leader {
                            return Some((leader, m.current_term));
                        }
                    }
                }
                if metrics.changed().await.is_err() {
                    return None;
                }
            }
        };
        tokio::time::timeout(self.window, wait).await.ok().flatten()
    }
}
