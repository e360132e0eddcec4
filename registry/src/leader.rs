//! What the leader does with a proposal: confirm its leadership (mechanism 3: no grant before
//! `ensure_linearizable` succeeded in this leadership; refuse writes fast when no quorum has
//! answered lately; refuse what stamps its wall clock until a quorum's clocks vouch for it),
//! decide expiry on its own monotonic clock, and propose compare-and-set grants, renewals and
//! admin commands through the batching proposer.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fenceflake_proto::switches::{self, Mechanism};
use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::{ChangeMembers, ServerState};

use crate::clock::Clock;
use crate::clock_watch::ClockWatch;
use crate::error::RegistryError;
use crate::expiry::{Expiry, ExpiryTracker, LeadershipId};
use crate::grant_plan::{self, Asker, GrantInputs, InFlight};
use crate::leader_lease::LeaderLease;
use crate::lease::{
    ClusterConfig, Command, GrantExpectation, HolderId, Incarnation, LeaseGrant, LeaseTable, Outcome, Rejection, Renew,
    Rules, TableBackup, TokenOffset, WorkerId,
};
use crate::metrics::RegistryMetrics;
use crate::proposal::{LeaseReply, LeaseState, LeaseView, Proposal, Reply};
use crate::proposer::{write_error, Proposer};
use crate::raft::network::PeerClients;
use crate::raft::types::{NodeId, PeerNode, Raft};
use crate::storage::SharedState;
use crate::transfer::{ElectionHold, HandOver, HandOverPlan};

/// Grant attempts for an Acquire without a worker ID: each lost compare-and-set (another
/// grant took the candidate first) moves on to the next candidate.
const ACQUIRE_ATTEMPTS_MAX: usize = 16;

/// Pause between attempts to confirm a new leadership.
const WARM_UP_RETRY: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct LeaderSettings {
    pub node_id: NodeId,
    /// The config a leader commits if the cluster has none yet.
    pub cluster_config: ClusterConfig,
    /// openraft's `election_timeout_max`: a leader that has not heard from a quorum for longer
    /// may already have been replaced, so it takes no writes.
    pub leader_lease: Duration,
    /// Bound on every wait (confirmation, commit).
    pub request_timeout: Duration,
    /// How far past a logged renewal's reach its high-water mark is raised, so the renewals
    /// that follow are answered from memory (`--renew-window`; zero: every renewal is logged).
    pub renew_window: Duration,
    /// How often the leader sends a heartbeat round to keep its [`LeaderLease`] (openraft's
    /// heartbeat interval).
    pub lease_round_every: Duration,
}

/// The leader-side logic of one node (idle unless the node leads).
#[derive(Clone)]
pub struct Leader {
    raft: Raft,
    state: SharedState,
    tracker: ExpiryTracker,
    proposer: Proposer,
    clock: Arc<dyn Clock>,
    settings: Arc<LeaderSettings>,
    /// Worker IDs with a grant in flight: concurrent "any ID" acquires skip them instead of all
    /// racing for the lowest free ID.
    reserved: Arc<Mutex<Reserved>>,
    /// Stepping aside on request (`TransferLeader`) or for the clock check, and this node's
    /// own election hold.
    hand_over: HandOver,
    hold: ElectionHold,
    /// Whether this node's wall clock may stamp the cluster's time (`clock_watch.rs`).
    clocks: ClockWatch,
    /// While held, renewals the durable high-water mark covers are answered from memory.
    lease: LeaderLease,
    /// High-water windows to extend in the background, gathered so that one entry carries many.
    extensions: Arc<Mutex<Extensions>>,
    metrics: Arc<RegistryMetrics>,
    /// One snapshot import at a time: an import is megabytes in one log entry, and a restore
    /// is a one-off operation; more at once would only queue renewals behind them.
    import: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Leader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leader").field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// Worker IDs a grant may still change: no memory renewal for them (the log decides).
#[derive(Debug, Default)]
struct Reserved {
    /// A grant attempt is running: concurrent "any ID" acquires skip them too.
    in_flight: InFlight,
    /// A grant whose outcome this leader never learned (a commit timeout): its entry may still
    /// commit, so until a new leadership has applied its whole log the ID stays reserved.
    unsettled: HashSet<WorkerId>,
}

impl Reserved {
    fn holds(&self, worker_id: WorkerId) -> bool {
        self.in_flight.contains(&worker_id) || self.unsettled.contains(&worker_id)
    }
}

/// Background window extensions: queued by memory renewals, proposed together every
/// [`WINDOW_FLUSH_EVERY`], one at a time per worker ID.
#[derive(Debug, Default)]
struct Extensions {
    queued: BTreeMap<WorkerId, Renew>,
    in_flight: HashSet<WorkerId>,
}

/// How often queued window extensions are proposed: together they fill a few entries instead
/// of one entry each (the log write is what a window saves; one per extension would give most
/// of it back). Far below the quarter window left when one is queued (7.5 s by default).
const WINDOW_FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Window extensions proposed per flush at most (the rest wait for the next): two full entries.
const WINDOW_FLUSH_MAX: usize = 2 * crate::limits::COMMANDS_PER_ENTRY_MAX;

/// Releases a reserved worker ID when the grant attempt ends, however it ends: into
/// `unsettled` unless the grant's outcome was learned ([`Reservation::settled`]) — an error,
/// or a request dropped mid-proposal (its caller gave up: the entry may still commit).
struct Reservation<'a> {
    reserved: &'a Mutex<Reserved>,
    worker_id: WorkerId,
    settled: bool,
}

impl Reservation<'_> {
    /// The proposal answered with an outcome (the grant applied or was refused at apply).
    fn settled(&mut self) {
        self.settled = true;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut reserved = self.reserved.lock().unwrap_or_else(PoisonError::into_inner);
        reserved.in_flight.remove_one(self.worker_id);
        if !self.settled {
            reserved.unsettled.insert(self.worker_id);
        }
    }
}

/// What a node's leader logic is built from (besides its settings).
pub struct LeaderParts {
    pub raft: Raft,
    pub state: SharedState,
    pub tracker: ExpiryTracker,
    pub proposer: Proposer,
    pub clocks: ClockWatch,
    pub peers: PeerClients,
    pub lease: LeaderLease,
    pub metrics: Arc<RegistryMetrics>,
}

impl Leader {
    pub fn new(parts: LeaderParts, settings: LeaderSettings) -> Leader {
        let LeaderParts { raft, state, tracker, proposer, clocks, peers, lease, metrics } = parts;
        // A new leader normally wins within one or two election timeouts after the leader
        // falls silent; allow three, during which this node refuses requests. Each hold call
        // gets one election timeout.
        let window = settings.leader_lease * 3;
        let hand_over = HandOver::new(clocks.elections().clone(), peers, window, settings.leader_lease);
        let hold = ElectionHold::new(clocks.elections().clone());
        let settings = Arc::new(settings);
        let clock = clocks.clock().clone();
        let import = Arc::new(tokio::sync::Semaphore::new(1));
        Leader {
            raft,
            state,
            tracker,
            proposer,
            clock,
            settings,
            reserved: Arc::default(),
            hand_over,
            hold,
            clocks,
            lease,
            extensions: Arc::default(),
            metrics,
            import,
        }
    }

    /// The lease memory renewals rest on (the peer service refuses votes while it runs).
    pub fn lease(&self) -> &LeaderLease {
        &self.lease
    }

    /// The leader lease this node holds itself to (openraft's `election_timeout_max`).
    pub fn leader_lease(&self) -> Duration {
        self.settings.leader_lease
    }

    /// A leader asked this node not to campaign for `hold_ms` (0: campaign again).
    pub fn hold_elections(&self, hold_ms: u64) {
        self.hold.hold(Duration::from_millis(hold_ms));
    }

    /// Execute `proposal` on this node, which must be the leader.
    pub async fn execute(&self, proposal: Proposal) -> Result<Reply, RegistryError> {
        let confirmed_now = self.ensure_serving_leader().await?;
        if stamps_wall_clock(&proposal) {
            self.clocks.vouch().await?;
        }
        match proposal {
            Proposal::Acquire { holder, worker_id, ttl_ms, owner, incarnation } => {
                let grant = self.acquire(Asking { holder, wanted: worker_id, ttl_ms, owner, incarnation }).await?;
                self.lease_reply(grant)
            }
            Proposal::Renew(renew) => self.renew(&renew).await,
            Proposal::Release(release) => match self.proposer.propose(Command::Release(release)).await? {
                Outcome::Released => Ok(Reply::Released),
                other => Err(unexpected(other)),
            },
            Proposal::Quarantine(quarantine) => {
                let worker_id = quarantine.worker_id;
                self.admin(Command::Quarantine(quarantine)).await?;
                Ok(Reply::LeaseInfo(self.view(worker_id)))
            }
            Proposal::Unquarantine(unquarantine) => {
                self.admin(Command::Unquarantine(unquarantine)).await?;
                Ok(Reply::LeaseInfo(self.view(unquarantine.worker_id)))
            }
            Proposal::GetLease { worker_id } => {
                self.linearizable_read(confirmed_now).await?;
                self.lease_info(worker_id)
            }
            Proposal::ListLeases { include_free } => {
                self.linearizable_read(confirmed_now).await?;
                Ok(Reply::Leases(self.views(include_free)?))
            }
            Proposal::ListAudit => {
                self.linearizable_read(confirmed_now).await?;
                Ok(Reply::Audit(self.state.read().table.audit().cloned().collect()))
            }
            Proposal::ExportSnapshot => {
                self.linearizable_read(confirmed_now).await?;
                self.export()
            }
            Proposal::ImportSnapshot { backup } => self.restore(backup).await,
            Proposal::NoteServed { node_id } => match self.proposer.propose(Command::NodeServed { node_id }).await? {
                Outcome::NodeServedNoted => Ok(Reply::Noted),
                other => Err(unexpected(other)),
            },
            Proposal::AddLearner { node_id, node } => self.add_learner(node_id, node).await,
            Proposal::PromoteMember { node_id } => {
                // Record that it served before it can vote or ack: from the membership change
                // on, its acks count, and a lost disk under its id must then be refused
                // (`lost_disk/`). A learner being promoted has joined: no false refusal.
                match self.proposer.propose(Command::NodeServed { node_id }).await? {
                    Outcome::NodeServedNoted => {}
                    other => return Err(unexpected(other)),
                }
                self.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node_id]))).await
            }
            Proposal::RemoveMember { node_id } => {
                if node_id == self.settings.node_id {
                    return Err(RegistryError::Membership(format!(
                        "node {node_id} is the leader; move leadership first (fenceflake ctl --registry <addr> transfer-leader), then remove it"
                    )));
                }
                self.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([node_id]))).await
            }
            Proposal::TransferLeader { to } => self.transfer(to).await,
        }
    }

    /// Put apply rules `rules` in force (`rules_raise.rs` decides when); the rules now in force.
    pub async fn enable_rules(&self, rules: Rules) -> Result<Rules, RegistryError> {
        self.ensure_serving_leader().await?;
        match self.proposer.propose(Command::EnableRules(rules)).await? {
            Outcome::RulesEnabled(in_force) => Ok(in_force),
            other => Err(unexpected(other)),
        }
    }

    /// Hand leadership to whichever other voter wins the election: this node's clock may not
    /// stamp the cluster's time (`clock_watch.rs`). Each voter campaigns only if its own clock
    /// check lets it, so the winner is one whose clock a quorum vouches for.
    pub async fn step_aside(&self) -> Result<(), RegistryError> {
        self.transfer(None).await.map(drop)
    }

    /// Hand leadership to `to` (or any voter): checked here, carried out by [`HandOver`].
    async fn transfer(&self, to: Option<NodeId>) -> Result<Reply, RegistryError> {
        let me = self.settings.node_id;
        let members = member_roles(&self.raft);
        let others: Vec<_> = members
            .iter()
            .filter(|(id, (_, voter))| *voter && **id != me)
            .map(|(id, (node, _))| (*id, node.peer_addr.clone()))
            .collect();
        if let Some(to) = to {
            self.check_transfer_target(to, &members)?;
        } else if others.is_empty() {
            return Err(RegistryError::Membership("no other voter to hand leadership to".into()));
        }
        // No memory answer from here on: the next leader is elected once the voters' refusal,
        // which every answer so far relies on, has run out.
        self.lease.give_up();
        match self.hand_over.run(HandOverPlan { me, to, others }).await {
            Ok((leader, term)) => Ok(Reply::LeaderMoved { from: me, leader, term }),
            Err(e) => {
                // Still leading: it refused renewals while it stood aside, so its expiry clock
                // must not count that time against anyone. Forgetting the leadership makes the
                // next request confirm it anew and treat every lease as just renewed.
                self.tracker.step_down();
                Err(e)
            }
        }
    }

    fn check_transfer_target(
        &self,
        to: NodeId,
        members: &BTreeMap<NodeId, (PeerNode, bool)>,
    ) -> Result<(), RegistryError> {
        let refuse = |why: String| Err(RegistryError::Membership(why));
        match members.get(&to) {
            _ if to == self.settings.node_id => refuse(format!("node {to} already leads")),
            None => refuse(format!("node {to} is not a member")),
            Some((_, false)) => refuse(format!("node {to} is a learner; promote it first (ctl promote-member {to})")),
            Some((_, true)) => {
                if let Some(quiet) = self.clocks.quiet_for(to).filter(|quiet| !quiet.is_zero()) {
                    return refuse(format!(
                        "node {to} has just started and stays out of elections for {} ms more (its start quiet, which \
                         is longer after a restart with a smaller --election-timeout-max: docs/operations.md, changing \
                         the Raft timing); retry after that",
                        quiet.as_millis()
                    ));
                }
                let m = self.raft.metrics().borrow().clone();
                let last = m.last_log_index.unwrap_or(0);
                let matched = m.replication.and_then(|r| r.get(&to).copied().flatten()).map_or(0, |l| l.index);
                if matched < last {
                    return refuse(format!(
                        "node {to} is behind (matched log index {matched} of {last}); retry once it has caught up"
                    ));
                }
                Ok(())
            }
        }
    }

    async fn renew(&self, renew: &Renew) -> Result<Reply, RegistryError> {
        if let Some(reply) = self.renew_from_memory(renew)? {
            return Ok(reply);
        }
        let windowed = Renew { window_ms: self.window_ms(), ..renew.clone() };
        match self.proposer.propose(Command::Renew(windowed)).await? {
            Outcome::Renewed(grant) => self.lease_reply(grant),
            Outcome::CanaryHit { current } => {
                tracing::error!(worker_id = renew.worker_id.0, token = renew.token.0, current_token = current.0, max_minted_ts_ms = renew.max_minted_ts_ms, "canary hit: two holders minted with one worker ID at overlapping times; ID quarantined, audit entry written");
                Err(RegistryError::Canary { current })
            }
            other => Err(unexpected(other)),
        }
    }

    fn window_ms(&self) -> u64 {
        self.settings.renew_window.as_millis() as u64
    }

    /// A renewal answered without a log entry (docs/design.md, "Memory renewals"), or `None`
    /// when the log must decide it. Needs three things at once: the leader lease (no other
    /// leader can have been elected, so every later one starts its expiry clock after this
    /// answer); a renewal the table's durable high-water mark covers, so `mint_until` is
    /// already what the next holder's `not_before` will be at least; and no grant of the ID in
    /// flight here. The last is checked, and the renewal noted for expiry, under the lock grant
    /// plans reserve under: a grant planned after this answer sees the renewal, and one planned
    /// before holds the reservation, so the two never pass each other — the part of the
    /// grant's compare-and-set a memory renewal cannot move (`last_renew`).
    fn renew_from_memory(&self, renew: &Renew) -> Result<Option<Reply>, RegistryError> {
        if self.settings.renew_window.is_zero() {
            return Ok(None);
        }
        let (leadership, _) = self.leadership()?;
        let worker_id = renew.worker_id.0;
        // Only a leadership that applied its predecessors' log answers from its table.
        if !self.tracker.is_confirmed(leadership) {
            tracing::debug!(worker_id, "renewal takes the log path: this leadership is not confirmed yet");
            return Ok(None);
        }
        if !self.lease.holds(leadership) && !switches::is_off(Mechanism::LeaderLease) {
            tracing::debug!(worker_id, "renewal takes the log path: no leader lease held");
            return Ok(None);
        }
        let Ok(wall_ms) = self.clocks.checked_wall_ms() else {
            tracing::debug!(worker_id, "renewal takes the log path: this node's clock is not vouched for");
            return Ok(None);
        };
        let covered = {
            let state = self.state.read();
            let reserved = self.reserved.lock().unwrap_or_else(PoisonError::into_inner);
            if reserved.holds(renew.worker_id) && !switches::is_off(Mechanism::RenewalReservation) {
                tracing::debug!(worker_id, "renewal takes the log path: a grant of the worker ID is in flight");
                return Ok(None);
            }
            let Some(covered) = state.table.covered_renewal(renew, wall_ms) else {
                tracing::debug!(worker_id, "renewal takes the log path: the committed window does not cover it");
                return Ok(None);
            };
            let config = state.table.config().cloned().ok_or(RegistryError::NotConfigured)?;
            self.tracker.note_renewal(renew.worker_id);
            (covered, config)
        };
        let (covered, config) = covered;
        self.metrics.memory_renewals.fetch_add(1, Ordering::Relaxed);
        if covered.headroom_ms < self.window_ms() / 4 {
            self.extend_window(renew);
        }
        Ok(Some(Reply::Lease(LeaseReply { grant: covered.grant, registry_time_ms: wall_ms, config })))
    }

    /// Queue a raise of the high-water window of `renew`'s lease (a logged renewal of the same
    /// claims), before the renewals that follow outrun it; [`Leader::keep_lease`] proposes the
    /// queue every [`WINDOW_FLUSH_EVERY`].
    fn extend_window(&self, renew: &Renew) {
        let mut extensions = self.extensions.lock().unwrap_or_else(PoisonError::into_inner);
        if !extensions.in_flight.contains(&renew.worker_id) {
            extensions.queued.entry(renew.worker_id).or_insert_with(|| renew.clone());
        }
    }

    /// Propose every queued window extension at once (the proposer packs them into entries).
    fn flush_windows(&self) {
        let queued = {
            let mut extensions = self.extensions.lock().unwrap_or_else(PoisonError::into_inner);
            // At most a few entries' worth per flush: a burst (marks that line up after a
            // failover) must not fill the proposer's queue and refuse clients `OVERLOADED`.
            let rest = match extensions.queued.keys().nth(WINDOW_FLUSH_MAX) {
                Some(first_left) => {
                    let first_left = *first_left;
                    extensions.queued.split_off(&first_left)
                }
                None => BTreeMap::new(),
            };
            let queued = std::mem::replace(&mut extensions.queued, rest);
            extensions.in_flight.extend(queued.keys().copied());
            queued
        };
        if queued.is_empty() {
            return;
        }
        let window_ms = self.window_ms();
        let (proposer, extensions, metrics) = (self.proposer.clone(), self.extensions.clone(), self.metrics.clone());
        tokio::spawn(async move {
            let mut proposals = tokio::task::JoinSet::new();
            for (worker_id, renew) in queued {
                let (proposer, windowed) = (proposer.clone(), Command::Renew(Renew { window_ms, ..renew }));
                proposals.spawn(async move { (worker_id, proposer.propose(windowed).await) });
            }
            while let Some(joined) = proposals.join_next().await {
                let Ok((worker_id, outcome)) = joined else { continue };
                // The holder already has its answer; a failure here only means its next
                // renewal extends the window on the log path (and a fenced token needs none).
                match outcome {
                    Ok(Outcome::Renewed(_)) => _ = metrics.window_extensions.fetch_add(1, Ordering::Relaxed),
                    Ok(other) => {
                        tracing::debug!(worker_id = worker_id.0, outcome = ?other, "high-water window not extended: the lease changed")
                    }
                    Err(e) => {
                        tracing::debug!(worker_id = worker_id.0, error = %e, "high-water window not extended; the next renewal will")
                    }
                }
                extensions.lock().unwrap_or_else(PoisonError::into_inner).in_flight.remove(&worker_id);
            }
        });
    }

    /// Until `stopped`: while this node leads, send a heartbeat round every
    /// `lease_round_every` and hold the [`LeaderLease`] from each round a quorum acknowledged.
    pub async fn keep_lease(&self, stopped: fenceflake_proto::serving::Stopped) {
        let stop = stopped.wait();
        tokio::pin!(stop);
        let mut flushed_at = self.clock.mono();
        loop {
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(self.settings.lease_round_every) => {}
            }
            if self.settings.renew_window.is_zero() {
                continue;
            }
            if self.clock.mono().since(flushed_at) >= WINDOW_FLUSH_EVERY {
                flushed_at = self.clock.mono();
                self.flush_windows();
            }
            let Ok((leadership, _)) = self.leadership() else {
                self.lease.give_up();
                continue;
            };
            let sent_at = self.lease.round_starts();
            let acknowledged = tokio::time::timeout(self.lease.duration(), self.raft.get_read_log_id()).await;
            // Still the same leadership, and not handing over (a round sent before a hand-over
            // began must not take the lease back).
            if matches!(acknowledged, Ok(Ok(_))) && self.leadership().is_ok_and(|(now, _)| now == leadership) {
                // `None` until the next probe round hears every voter that answers (waking the
                // probe loop here would shorten the clock check's step-aside, counted in rounds).
                match self.clocks.voters_election_max(self.lease.election_max(), sent_at) {
                    Some(voters_max) => self.lease.confirmed(leadership, sent_at, voters_max).await,
                    None => {
                        tracing::debug!("no leader lease from this round: a voter that answered it has no trusted clock probe statement");
                        self.metrics.lease_rounds_unheard.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    fn lease_info(&self, worker_id: WorkerId) -> Result<Reply, RegistryError> {
        let count = self.config()?.worker_id_count();
        if worker_id.0 >= count {
            return Err(RegistryError::Rejected(Rejection::OutOfRange { worker_id, count }));
        }
        Ok(Reply::LeaseInfo(self.view(worker_id)))
    }

    fn export(&self) -> Result<Reply, RegistryError> {
        let state = self.state.read();
        let backup = state.table.backup().ok_or(RegistryError::NotConfigured)?;
        let applied_index = state.last_applied.map_or(0, |id| id.index);
        Ok(Reply::Backup { backup: Box::new(backup), applied_index, wall_ms: self.clock.wall_ms() })
    }

    async fn restore(&self, backup: Box<TableBackup>) -> Result<Reply, RegistryError> {
        // Refused before proposing when it would be refused at apply anyway (this leader has
        // applied its own log: an import into a cluster that granted never reaches the log),
        // and one import at a time.
        self.state.read().table.restorable().map_err(RegistryError::Rejected)?;
        let _one_at_a_time = self.import.try_acquire().map_err(|_| RegistryError::ImportInProgress)?;
        // Drawn here, not in apply: the log carries it, so every replica grants the same tokens.
        // It comes from the OS-seeded generator, independent of anything another cluster
        // restored from the same backup could have drawn: their tokens share a generation,
        // and only the offsets keep their values apart (docs/design.md, Restores).
        let token_offset = TokenOffset::from_random_bits(fenceflake_proto::entropy::random_u64());
        let window_ms = self.window_ms();
        match self.proposer.propose(Command::RestoreWithOffset { backup, token_offset, window_ms }).await? {
            Outcome::Restored { generation, worker_ids, records, embargo_until_ms } => {
                tracing::warn!(
                    generation,
                    %token_offset,
                    worker_ids,
                    records,
                    embargo_until_ms,
                    "backup restored; every worker ID is embargoed for max TTL + cool-down"
                );
                Ok(Reply::Restored { generation, worker_ids, records, embargo_until_ms })
            }
            other => Err(unexpected(other)),
        }
    }

    /// Confirm a fresh leadership (and commit the cluster config) before the first client
    /// asks, so the first request after a failover does not pay for it.
    /// Retries while this node stays leader: on a loaded machine the first quorum round can
    /// time out, and nobody else would commit the cluster config of a fresh cluster.
    pub async fn warm_up(&self) {
        loop {
            match self.ensure_serving_leader().await {
                Ok(_) | Err(RegistryError::NotLeader { .. } | RegistryError::Fatal(_)) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "leadership warm-up failed; retrying");
                    tokio::time::sleep(WARM_UP_RETRY).await;
                }
            }
        }
    }

    /// The current leadership of this node, or NotLeader.
    fn leadership(&self) -> Result<(LeadershipId, Option<u64>), RegistryError> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let leader_id = m.vote.leader_id();
        if m.state != ServerState::Leader || !m.vote.is_committed() || leader_id.node_id != self.settings.node_id {
            return Err(RegistryError::NotLeader { leader: m.current_leader });
        }
        if self.hand_over.in_progress() {
            return Err(RegistryError::NotLeader { leader: None });
        }
        Ok((LeadershipId { term: leader_id.term, node_id: leader_id.node_id }, m.millis_since_quorum_ack))
    }

    /// Admission control, and confirmation of a new leadership. Returns whether this call
    /// confirmed it (then a read needs no second heartbeat round).
    async fn ensure_serving_leader(&self) -> Result<bool, RegistryError> {
        let (id, since_quorum_ack_ms) = self.leadership()?;
        let lease_ms = self.settings.leader_lease.as_millis() as u64;
        let checked = !switches::is_off(Mechanism::LeaderLease);
        if let Some(ms) = since_quorum_ack_ms.filter(|ms| *ms > lease_ms && checked) {
            // openraft 0.9 has no CheckQuorum: without this a cut-off leader would let writes hang.
            return Err(RegistryError::NoQuorum {
                why: format!("no quorum acknowledged this leader for {ms} ms (> {lease_ms} ms)"),
            });
        }
        if self.tracker.observe_leader(id) {
            // Confirmed before; its new-cluster proposals may have failed (a timeout under
            // load): a later call makes them, or the cluster would stay unconfigured until
            // the next leader.
            self.configure_new_cluster().await?;
            return Ok(false);
        }
        if !switches::is_off(Mechanism::EnsureLinearizable) {
            self.confirm_quorum().await?;
            self.catch_up_own_log().await?;
        }
        self.tracker.confirm(id);
        // Every grant an earlier leadership left unsettled is now applied or gone for good.
        self.reserved.lock().unwrap_or_else(PoisonError::into_inner).unsettled.clear();
        tracing::info!(term = id.term, node_id = id.node_id, "leadership confirmed by a quorum; serving grants");
        self.configure_new_cluster().await?;
        Ok(true)
    }

    /// On a new cluster (no layout committed yet): raise the apply rules, then commit the
    /// layout. Nothing to do once configured.
    async fn configure_new_cluster(&self) -> Result<(), RegistryError> {
        if self.state.read().table.config().is_none() {
            // A new cluster starts under the current apply rules (incarnations in force from
            // its first grant): it has no replica of an older release to keep in step with,
            // and a member of one stops at this entry instead of diverging. Waiting for
            // `rules_raise` instead left its first second open to copied state dirs sharing a
            // token (found by the simulator).
            match self.proposer.propose(Command::EnableRules(Rules::CURRENT)).await? {
                Outcome::RulesEnabled(_) => {}
                other => return Err(unexpected(other)),
            }
            let config = self.settings.cluster_config.clone();
            match self.proposer.propose(Command::Configure(config)).await? {
                Outcome::Configured(applied) => tracing::info!(?applied, "cluster config committed"),
                other => return Err(unexpected(other)),
            }
        }
        Ok(())
    }

    /// One `ensure_linearizable` round within the request timeout: a quorum still follows us
    /// and everything committed before now is applied here.
    async fn confirm_quorum(&self) -> Result<(), RegistryError> {
        let timeout = self.settings.request_timeout;
        match tokio::time::timeout(timeout, self.raft.ensure_linearizable()).await {
            Err(_) => Err(RegistryError::NoQuorum { why: format!("no quorum answered within {timeout:?}") }),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(RegistryError::NotLeader { leader: f.leader_id })
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)))) => {
                Err(RegistryError::NoQuorum { why: q.to_string() })
            }
            Ok(Err(RaftError::Fatal(f))) => Err(RegistryError::Fatal(f.to_string())),
        }
    }

    /// Wait until everything in this leader's log is applied. A leader restarted from disk
    /// resumes in its old term without a new blank entry, and its commit index restarts at
    /// its last applied entry: `ensure_linearizable` alone can then answer from a state
    /// machine that lacks entries a previous incarnation acknowledged. Applying its whole
    /// log first (entries of its own term commit as soon as a quorum holds them) closes that.
    async fn catch_up_own_log(&self) -> Result<(), RegistryError> {
        let last = self.raft.metrics().borrow().last_log_index;
        let timeout = self.settings.request_timeout;
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(last, "leader applies its own log")
            .await
            .map(drop)
            .map_err(|e| RegistryError::NoQuorum { why: format!("own log not applied within {timeout:?}: {e}") })
    }

    async fn linearizable_read(&self, confirmed_now: bool) -> Result<(), RegistryError> {
        if confirmed_now {
            return Ok(());
        }
        self.confirm_quorum().await
    }

    fn config(&self) -> Result<ClusterConfig, RegistryError> {
        self.state.read().table.config().cloned().ok_or(RegistryError::NotConfigured)
    }

    /// The reply to a committed Acquire or Renew. Its `registry_time_ms` (what the worker's
    /// skew check compares with) is read checked, like a batch's stamp: a clock that stepped
    /// since the batch is not echoed. The command committed, so a refusal here is an unknown
    /// outcome to the caller, whose retry is safe.
    fn lease_reply(&self, grant: LeaseGrant) -> Result<Reply, RegistryError> {
        let registry_time_ms = self.clocks.checked_wall_ms().map_err(|why| RegistryError::Indeterminate {
            waited_ms: 0,
            why: format!("committed, but this leader's clock may not stamp the reply now: {why}"),
        })?;
        Ok(Reply::Lease(LeaseReply { grant, registry_time_ms, config: self.config()? }))
    }

    async fn admin(&self, command: Command) -> Result<(), RegistryError> {
        match self.proposer.propose(command).await? {
            Outcome::QuarantineSet => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn acquire(&self, asking: Asking) -> Result<LeaseGrant, RegistryError> {
        let Asking { holder, wanted, ttl_ms, owner, incarnation } = asking;
        for _ in 0..ACQUIRE_ATTEMPTS_MAX {
            let asker = Asker { owner: owner.as_deref(), holder: &holder, incarnation };
            let (mut reservation, expect) = self.plan_grant(asker, wanted)?;
            let worker_id = reservation.worker_id;
            let specific = wanted.is_some();
            let command = Command::Grant {
                worker_id,
                holder: holder.clone(),
                ttl_ms,
                expect,
                specific,
                owner: owner.clone(),
                incarnation,
                window_ms: self.window_ms(),
            };
            let proposed = self.proposer.propose(command).await;
            if proposed.is_ok() {
                reservation.settled();
            }
            match proposed? {
                Outcome::Granted(grant) => {
                    let incarnation = incarnation.map(|i| i.to_string());
                    tracing::info!(worker_id = grant.worker_id.0, token = grant.token.0, holder = %grant.holder, incarnation, owner = owner.as_deref().unwrap_or("-"), ttl_ms, not_before_ms = grant.not_before_ms, "lease granted");
                    return Ok(grant);
                }
                // Lost the compare-and-set to a concurrent grant or a late renewal: re-plan.
                Outcome::Rejected(Rejection::AlreadyHeld { .. }) if wanted.is_none() => continue,
                Outcome::Rejected(rejection) => return Err(RegistryError::Rejected(rejection)),
                other => return Err(unexpected(other)),
            }
        }
        Err(RegistryError::Indeterminate {
            waited_ms: 0,
            why: format!("lost {ACQUIRE_ATTEMPTS_MAX} grant races in a row; retry"),
        })
    }

    /// Pick the worker ID to grant and what it must still look like (the CAS compare), and
    /// reserve it under the same lock: a memory renewal checks reservations under it, so none
    /// slips in between a plan that saw the lease expired and its reservation.
    fn plan_grant(
        &self,
        asker: Asker<'_>,
        wanted: Option<WorkerId>,
    ) -> Result<(Reservation<'_>, GrantExpectation), RegistryError> {
        let state = self.state.read();
        let mut reserved = self.reserved.lock().unwrap_or_else(PoisonError::into_inner);
        let wall_ms = self.clock.wall_ms();
        let (worker_id, expect) = self.tracker.decide(|renewals, now| {
            let inputs = GrantInputs { table: &state.table, renewals, now, wall_ms, reserved: &reserved.in_flight };
            grant_plan::plan_grant(inputs, asker, wanted)
        })?;
        reserved.in_flight.insert(worker_id);
        Ok((Reservation { reserved: &self.reserved, worker_id, settled: false }, expect))
    }

    fn view(&self, worker_id: WorkerId) -> LeaseView {
        let state = self.state.read();
        let cool_down_ms = state.table.config().map_or(0, |c| c.cool_down_ms);
        self.view_of(&state.table, worker_id, cool_down_ms)
    }

    fn view_of(&self, table: &LeaseTable, worker_id: WorkerId, cool_down_ms: u64) -> LeaseView {
        let record = table.record(worker_id).cloned();
        let state = match &record {
            None => LeaseState::Free,
            Some(r) if r.quarantine.is_some() => LeaseState::Quarantined,
            Some(r) if r.holder.is_none() => LeaseState::Free,
            Some(r) => match self.tracker.expiry(worker_id, r.ttl_ms, cool_down_ms) {
                Some(Expiry::Expired) => LeaseState::Expired,
                _ => LeaseState::Held,
            },
        };
        let since_renew_ms = self.tracker.since_renewal(worker_id).map(|d| d.as_millis() as u64);
        LeaseView { worker_id, state, record, since_renew_ms }
    }

    /// Worker IDs by state exactly as `ctl leases` shows them (`expired` only where this node
    /// is a confirmed leader: nobody else may decide it): held, free, expired, quarantined.
    pub fn lease_counts(&self) -> [u64; 4] {
        let state = self.state.read();
        let Some(config) = state.table.config() else { return [0; 4] };
        let mut counts = [0u64, u64::from(config.worker_id_count()), 0, 0];
        for (worker_id, _) in state.table.records() {
            let slot = match self.view_of(&state.table, worker_id, config.cool_down_ms).state {
                LeaseState::Free => continue,
                LeaseState::Held => 0,
                LeaseState::Expired => 2,
                LeaseState::Quarantined => 3,
            };
            counts[1] -= 1;
            counts[slot] += 1;
        }
        counts
    }

    fn views(&self, include_free: bool) -> Result<Vec<LeaseView>, RegistryError> {
        let state = self.state.read();
        let config = state.table.config().ok_or(RegistryError::NotConfigured)?;
        let ids: Vec<WorkerId> = if include_free {
            (0..config.worker_id_count()).map(WorkerId).collect()
        } else {
            state.table.records().map(|(w, _)| w).collect()
        };
        Ok(ids.into_iter().map(|w| self.view_of(&state.table, w, config.cool_down_ms)).collect())
    }

    async fn add_learner(&self, node_id: NodeId, node: PeerNode) -> Result<Reply, RegistryError> {
        let timeout = self.settings.request_timeout;
        // Non-blocking: the learner catches up (by snapshot if far behind) in the background;
        // `ctl members` shows its progress, and promote waits for nothing but a quorum.
        match tokio::time::timeout(timeout, self.raft.add_learner(node_id, node, false)).await {
            Err(_) => Err(indeterminate(timeout, "add-learner did not commit in time")),
            Ok(Err(e)) => Err(write_error(e)),
            Ok(Ok(_)) => Ok(Reply::MembershipChanged),
        }
    }

    async fn change_membership(&self, change: ChangeMembers<NodeId, PeerNode>) -> Result<Reply, RegistryError> {
        let timeout = self.settings.request_timeout;
        match tokio::time::timeout(timeout, self.raft.change_membership(change, false)).await {
            Err(_) => Err(indeterminate(timeout, "membership change did not commit in time")),
            Ok(Err(e)) => Err(write_error(e)),
            Ok(Ok(_)) => Ok(Reply::MembershipChanged),
        }
    }
}

fn indeterminate(timeout: Duration, why: &str) -> RegistryError {
    RegistryError::Indeterminate { waited_ms: timeout.as_millis() as u64, why: why.to_string() }
}

fn unexpected(outcome: Outcome) -> RegistryError {
    match outcome {
        Outcome::Rejected(rejection) => RegistryError::Rejected(rejection),
        other => RegistryError::Fatal(format!("state machine answered {other:?} to the wrong command")),
    }
}

/// Whether executing `proposal` stamps this leader's wall clock where it matters: into the
/// lease table (a grant's high-water mark, a renewal's claims checked against it, a restore's
/// embargo) or into a reply (`registry_time_ms`, the workers' skew reference).
fn stamps_wall_clock(proposal: &Proposal) -> bool {
    matches!(
        proposal,
        Proposal::Acquire { .. } | Proposal::Renew(_) | Proposal::Release(_) | Proposal::ImportSnapshot { .. }
    )
}

/// Members and their roles, for ClusterStatus (any node can answer from its own view).
pub fn member_roles(raft: &Raft) -> BTreeMap<NodeId, (PeerNode, bool)> {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    membership.nodes().map(|(id, node)| (*id, (node.clone(), voters.contains(id)))).collect()
}

/// An Acquire as the leader runs it.
struct Asking {
    holder: HolderId,
    wanted: Option<WorkerId>,
    ttl_ms: u64,
    owner: Option<String>,
    incarnation: Option<Incarnation>,
}
