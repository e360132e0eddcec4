//! The registry's clock check at run time (the decision itself is `clock_check.rs`): probe
//! every voter's wall clock over the peer port (`ClockProbe`) about twice a second, keep the
//! latest probe of each, and act on the verdict:
//!
//! - a node whose clock is not proven within `--max-clock-offset` of the median of a quorum
//!   turns its elections off ([`NoElections::Clock`]), says so in its log (node_id, term,
//!   verdict) and in `fenceflake_registry_clock_excluded`;
//! - if it leads, it steps aside through the hand-over of `transfer.rs` (heartbeats off, so
//!   the followers' election timers fire; any voter may win, and each voter campaigns only if
//!   its own clock check lets it): after two rounds that prove its clock off (one round can
//!   straddle a step every node took at once), after five when it merely cannot prove it is
//!   right (an upgrade where most peers do not answer probes yet must not leave the cluster
//!   without a leader);
//! - meanwhile a leader refuses every request that stamps its wall clock into the lease table
//!   or a reply ([`ClockWatch::vouch`]) until the verdict proves it within: so every
//!   `leader_wall_ms` and `registry_time_ms` is within the bound of the quorum's median.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fenceflake_proto::serving::Stopped;
use openraft::ServerState;
use tokio::sync::{watch, Notify};

use crate::clock::{Clock, MonoTime};
use crate::clock_check::{self, Now, Policy, Probe, Verdict};
use crate::config::ClockCheck;
use crate::error::RegistryError;
use crate::leader::member_roles;
use crate::leader_lease::{self, RoundSent, VoterTiming};
use crate::lease::Rules;
use crate::node::RegistryNode;
use crate::proposer::Stamp;
use crate::raft::network::{PeerClients, PeerRpc};
use crate::raft::types::{NodeId, Raft};
use crate::transfer::{ElectionSwitch, NoElections};

/// How often each node probes every voter.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);
/// Bound on one probe; a slower answer would prove little anyway.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long after the probe that got it a leader lease trusts a voter's stated
/// `election_timeout_max` (`leader_lease::voters_election_max`): two probe intervals of the
/// slowest kind, a pause and a timed-out probe each. Probing refreshes it every 0.5–1 s; a
/// leader whose probing stalled (a paused process, a suspended host) distrusts what it knew.
/// A restarted node's start quiet outlasts it on any clocks within the drift bound
/// (`start_quiet::outlasting`).
pub const STATEMENT_TRUSTED_FOR: Duration =
    Duration::from_millis(2 * (PROBE_EVERY.as_millis() as u64 + PROBE_TIMEOUT.as_millis() as u64));
/// Probes older than this are not counted: six rounds, so a node that misses a few answers
/// under load keeps its verdict, and one cut off loses it within seconds.
pub const PROBE_FRESH_FOR: Duration = Duration::from_secs(3);
/// Rounds in a row a leader proven off steps aside after: two, because a round that straddles a
/// wall step shared by every node (a VM host's, a leap) can prove one round wrong.
const PROVEN_OFF_ROUNDS: u32 = 2;
/// Rounds in a row a leader that cannot prove its clock either way steps aside after.
const UNPROVEN_ROUNDS: u32 = 5;
/// How long a leader's admission waits for a probe round to vouch for its clock (after its
/// own clock stepped, say) before refusing the request.
const VOUCH_WAIT: Duration = Duration::from_secs(1);

/// At most one warning per peer this often that its round trip nears the heartbeat.
const SLOW_LINK_WARN_EVERY: Duration = Duration::from_secs(60);

/// Slow probes in a row before the slow-link warning: the first probe after a connect carries
/// the TCP and TLS handshakes, so one slow probe alone says nothing.
const SLOW_PROBES_TO_WARN: u8 = 3;

/// Whether a probe's round trip to a peer is slow for `heartbeat`: openraft 0.9 times every
/// AppendEntries out after the heartbeat interval, so once a peer's round trip plus its fsync
/// pass `heartbeat`, nothing replicates to it, and a cluster whose majority is that far commits
/// nothing. Half the heartbeat leaves the fsync the other half.
fn slow_round_trip(round_trip: Duration, heartbeat: Duration) -> bool {
    round_trip * 2 > heartbeat
}

/// Whether `in_a_row` slow probes deserve the slow-link warning, last given at `warned_at`.
fn warn_slow_link(in_a_row: u8, warned_at: Option<MonoTime>, now: MonoTime) -> bool {
    in_a_row >= SLOW_PROBES_TO_WARN && warned_at.is_none_or(|at| now.since(at) >= SLOW_LINK_WARN_EVERY)
}

/// This node's clock as its peers see it: the latest probe of each voter, the policy, and the
/// election switch the verdict drives. Cheap to clone; shared by the probe loop, the leader's
/// admission and the metrics.
#[derive(Clone)]
pub struct ClockWatch {
    me: NodeId,
    raft: Raft,
    clock: Arc<dyn Clock>,
    policy: Policy,
    /// Off only in the harness's self-test binary.
    check: ClockCheck,
    elections: ElectionSwitch,
    probes: Arc<Mutex<BTreeMap<NodeId, Probe>>>,
    /// What each voter's latest probe answer said besides its clock (`Heard`).
    heard: Arc<Mutex<BTreeMap<NodeId, Heard>>>,
    /// What each voter stated in its latest probe answer and when its latest probe failed
    /// (`answered` unused here: read from `peers` when a lease asks).
    timings: Arc<Mutex<BTreeMap<NodeId, VoterTiming>>>,
    /// The peer calls of this node: probes go out through them, and they say when each peer
    /// last answered anything.
    peers: PeerClients,
    /// Completed probe rounds: admission waits for the next one.
    rounds: watch::Sender<u64>,
    /// Asks the probe loop for a round now.
    wake: Arc<Notify>,
}

impl std::fmt::Debug for ClockWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClockWatch").field("me", &self.me).field("policy", &self.policy).finish_non_exhaustive()
    }
}

impl ClockWatch {
    pub fn new(
        me: NodeId,
        clock: Arc<dyn Clock>,
        max_offset: Duration,
        check: ClockCheck,
        elections: ElectionSwitch,
        peers: PeerClients,
    ) -> ClockWatch {
        let policy = Policy { max_offset_ms: max_offset.as_millis() as u64, fresh_for: PROBE_FRESH_FOR };
        ClockWatch {
            me,
            raft: elections.raft().clone(),
            clock,
            policy,
            check,
            elections,
            probes: Arc::default(),
            heard: Arc::default(),
            timings: Arc::default(),
            peers,
            rounds: watch::Sender::new(0),
            wake: Arc::default(),
        }
    }

    /// The node's clock (the registry's only source of time).
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The switch of this node's elections (shared with leadership transfers).
    pub fn elections(&self) -> &ElectionSwitch {
        &self.elections
    }

    /// `--max-clock-offset`, in ms.
    pub fn max_offset_ms(&self) -> u64 {
        self.policy.max_offset_ms
    }

    /// What the latest probes prove about this node's clock now.
    pub fn verdict(&self) -> Verdict {
        self.verdict_at(self.now())
    }

    fn now(&self) -> Now {
        Now { mono: self.clock.mono(), wall_ms: self.clock.wall_ms() }
    }

    fn verdict_at(&self, now: Now) -> Verdict {
        let probes = self.probes.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let verdict = clock_check::judge(&self.policy, self.me, &voters(&self.raft), &probes, now);
        match self.check {
            ClockCheck::Enforced => verdict,
            // UNSAFE (harness self-test): any clock may lead; the real offset stays visible.
            #[cfg(any(test, feature = "unsafe-test-switches"))]
            ClockCheck::DisabledUnsafe => Verdict::Within {
                median: verdict.median().unwrap_or(fenceflake_proto::clock_offset::OffsetBounds::exact(0)),
                sampled: 1,
            },
        }
    }

    /// This node's wall clock, if the probes prove that very reading within the bound: the
    /// only stamp a batch or a reply's `registry_time_ms` may carry.
    pub fn checked_wall_ms(&self) -> Result<u64, String> {
        self.checked().map_err(|(_, why)| why)
    }

    /// [`ClockWatch::checked_wall_ms`], with the unchecked reading when refused.
    fn checked(&self) -> Result<u64, (u64, String)> {
        let now = self.now();
        let verdict = self.verdict_at(now);
        if verdict.may_lead() {
            Ok(now.wall_ms)
        } else {
            Err((now.wall_ms, format!("{verdict} (±{} ms, --max-clock-offset)", self.policy.max_offset_ms)))
        }
    }

    /// Admission of a request that stamps this leader's wall clock: `Ok` once the probes prove
    /// the clock within the bound, waiting up to [`VOUCH_WAIT`] for fresh rounds; refused
    /// (`NOT_LEADER`, definite: nothing was proposed) otherwise.
    pub async fn vouch(&self) -> Result<(), RegistryError> {
        let started = self.clock.mono();
        let mut rounds = self.rounds.subscribe();
        loop {
            let verdict = self.verdict();
            if verdict.may_lead() {
                return Ok(());
            }
            self.wake.notify_one();
            let remaining = VOUCH_WAIT.saturating_sub(self.clock.mono().since(started));
            let next_round = tokio::time::timeout(remaining, rounds.changed()).await;
            if remaining.is_zero() || !matches!(next_round, Ok(Ok(()))) {
                return Err(RegistryError::ClockUnproven {
                    why: format!("{verdict} (±{} ms, --max-clock-offset)", self.policy.max_offset_ms),
                });
            }
        }
    }

    /// Whether every member but this node answered a probe within [`PROBE_FRESH_FOR`] from a
    /// release that knows `wanted` (learners are not probed: while one exists, no).
    pub fn members_know(&self, wanted: Rules) -> bool {
        let now = self.clock.mono();
        let heard = self.heard.lock().unwrap_or_else(PoisonError::into_inner);
        member_roles(&self.raft)
            .into_keys()
            .filter(|id| *id != self.me)
            .all(|id| heard.get(&id).is_some_and(|h| h.rules >= wanted && now.since(h.at) <= PROBE_FRESH_FOR))
    }

    /// How much longer voter `node_id` certainly stays out of elections after its start
    /// (`start_quiet.rs`), as its latest probe answer said, counted from the probe's send
    /// (zero: it may campaign, or a release that does not say); `None` when unknown: never
    /// heard, or a probe of it failed since (it may be restarting). A transfer to it could
    /// not land meanwhile.
    pub fn quiet_for(&self, node_id: NodeId) -> Option<Duration> {
        let heard = self.heard.lock().unwrap_or_else(PoisonError::into_inner);
        let heard = heard.get(&node_id).filter(|h| !h.failed_since)?;
        Some(heard.quiet_until.since(self.clock.mono()))
    }

    /// This node's `election_timeout_max` (stated in its own probe answers).
    pub fn own_election_max(&self) -> Duration {
        Duration::from_millis(self.raft.config().election_timeout_max)
    }

    /// The `election_timeout_max` a lease from a round sent at `round` may count on, given
    /// this node's `own`, or `None` when a voter that may have acknowledged the round has no
    /// statement the lease may trust (see [`leader_lease::voters_election_max`]; the value
    /// changes only with a restart: `start_quiet.rs` covers one the probes did not see).
    pub fn voters_election_max(&self, own: Duration, round: RoundSent) -> Option<Duration> {
        let timings = self.timings.lock().unwrap_or_else(PoisonError::into_inner);
        let voters = voters(&self.raft);
        let known = voters.iter().filter(|id| **id != self.me).map(|id| VoterTiming {
            answered: self.peers.answered_at(*id),
            ..timings.get(id).copied().unwrap_or_default()
        });
        leader_lease::voters_election_max(own, round, STATEMENT_TRUSTED_FOR, known)
    }

    /// Keep what `node_id` answered to a probe sent at `sent` (its `election_timeout_max`, 0
    /// from a release that states none), and say once when it differs from this node's: the
    /// leader lease then counts on the smaller of the two.
    fn note_election_max(&self, node_id: NodeId, sent: RoundSent, stated_ms: u64) {
        let stated = (stated_ms > 0).then(|| Duration::from_millis(stated_ms));
        let previous = {
            let mut timings = self.timings.lock().unwrap_or_else(PoisonError::into_inner);
            let timing = timings.entry(node_id).or_default();
            let previous = timing.stated.map(|(value, _)| value);
            timing.stated = Some((stated, sent));
            previous
        };
        let own = self.own_election_max();
        let Some(stated) = stated else { return };
        if previous != Some(Some(stated)) && stated != own {
            tracing::warn!(
                node_id = self.me,
                peer = node_id,
                peer_election_timeout_max_ms = stated.as_millis() as u64,
                election_timeout_max_ms = own.as_millis() as u64,
                "a member runs another --election-timeout-max: leader leases count on the smaller one; give every node the same Raft timing (docs/operations.md, changing the Raft timing)"
            );
        }
    }

    /// Keep what `node_id`'s probe answer said besides its clock, and warn when its round
    /// trips keep nearing the heartbeat ([`slow_round_trip`]).
    fn hear(&self, node_id: NodeId, sent: RoundSent, reading: &ClockReading, round_trip: Duration, now: MonoTime) {
        let heartbeat = Duration::from_millis(self.raft.config().heartbeat_interval);
        let warn = {
            let mut heard = self.heard.lock().unwrap_or_else(PoisonError::into_inner);
            let before = heard.get(&node_id);
            let (mut slow_warned_at, in_a_row) =
                (before.and_then(|h| h.slow_warned_at), before.map_or(0, |h| h.slow_in_a_row));
            let slow_in_a_row = if slow_round_trip(round_trip, heartbeat) { in_a_row.saturating_add(1) } else { 0 };
            let warn = warn_slow_link(slow_in_a_row, slow_warned_at, now);
            if warn {
                slow_warned_at = Some(now);
            }
            let quiet_until = sent.at.plus(Duration::from_millis(reading.quiet_for_ms));
            let answer = Heard {
                rules: reading.rules,
                at: now,
                quiet_until,
                failed_since: false,
                slow_in_a_row,
                slow_warned_at,
            };
            heard.insert(node_id, answer);
            warn
        };
        if warn {
            tracing::warn!(
                node_id = self.me,
                peer = node_id,
                round_trip_ms = round_trip.as_millis() as u64,
                heartbeat_ms = heartbeat.as_millis() as u64,
                "the round trip to a member is over half the --heartbeat, which is also Raft's replication timeout: appends to it fail once its round trip plus its fsync pass the heartbeat, and a cluster whose majority is that slow commits nothing; give every node a --heartbeat above the round trip plus the fsync p99 (docs/operations.md, changing the Raft timing)"
            );
        }
    }

    /// Probe every other voter once, concurrently, and keep each answer (and each failure:
    /// it may hide a restart, see [`ClockWatch::voters_election_max`]).
    async fn probe_round(&self) {
        let voters: BTreeSet<NodeId> = voters(&self.raft);
        // A node that stops being a voter loses what it stated: added back later, it is heard
        // anew before a lease counts on it.
        self.timings.lock().unwrap_or_else(PoisonError::into_inner).retain(|id, _| voters.contains(id));
        let mut calls = tokio::task::JoinSet::new();
        for (node_id, (node, voter)) in member_roles(&self.raft) {
            if !voter || node_id == self.me {
                continue;
            }
            let (peers, clock) = (self.peers.clone(), self.clock.clone());
            calls.spawn(async move {
                let sent = RoundSent { at: clock.mono(), wall_ms: clock.wall_ms() };
                (node_id, sent, probe(&peers, clock.as_ref(), node_id, &node.peer_addr).await)
            });
        }
        while let Some(joined) = calls.join_next().await {
            let Ok((node_id, sent, answer)) = joined else { continue };
            let Some((probe, reading)) = answer else {
                self.timings.lock().unwrap_or_else(PoisonError::into_inner).entry(node_id).or_default().probe_failed =
                    Some(sent.at);
                if let Some(heard) = self.heard.lock().unwrap_or_else(PoisonError::into_inner).get_mut(&node_id) {
                    heard.failed_since = true;
                }
                continue;
            };
            let now = Now { mono: self.clock.mono(), wall_ms: self.clock.wall_ms() };
            self.hear(node_id, sent, &reading, probe.elapsed, now.mono);
            self.note_election_max(node_id, sent, reading.election_timeout_max_ms);
            let mut probes = self.probes.lock().unwrap_or_else(PoisonError::into_inner);
            if clock_check::replaces(&self.policy, probes.get(&node_id), &probe, now) {
                probes.insert(node_id, probe);
            }
        }
        self.rounds.send_modify(|round| *round += 1);
    }
}

/// One `ClockProbe` of node `target`, timed on both of this node's clocks. `None` if it did
/// not answer (an older node does not know the call: it simply counts as not answering).
async fn probe(peers: &PeerClients, clock: &dyn Clock, target: NodeId, addr: &str) -> Option<(Probe, ClockReading)> {
    let (sent_at, send_wall_ms) = (clock.mono(), clock.wall_ms());
    let answer = peers.call::<(), ClockReading>(target, addr, PeerRpc::ClockProbe, &(), PROBE_TIMEOUT).await;
    let (receive_wall_ms, elapsed) = (clock.wall_ms(), clock.mono().since(sent_at));
    match answer {
        Ok(reading) => {
            Some((Probe { sent_at, send_wall_ms, receive_wall_ms, elapsed, remote_ms: reading.wall_ms }, reading))
        }
        Err(e) => {
            tracing::debug!(target_node = target, error = %e, "clock probe failed");
            None
        }
    }
}

impl Stamp for ClockWatch {
    fn stamp(&self) -> Result<u64, (u64, String)> {
        self.checked()
    }
}

/// A `ClockProbe` answer: the peer's wall clock, the newest apply rules its release knows, its
/// `election_timeout_max` (0: a release that does not state it), which bounds the leader
/// leases that count on its refusal of votes, and how much longer it stays out of elections
/// after its start (0: it may campaign, or a release that does not say).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct ClockReading {
    pub wall_ms: u64,
    pub rules: Rules,
    #[serde(default)]
    pub election_timeout_max_ms: u64,
    #[serde(default)]
    pub quiet_for_ms: u64,
}

/// What a voter's latest probe answer said besides its clock, and when it came.
#[derive(Debug, Clone, Copy)]
struct Heard {
    /// The newest apply rules its release knows.
    rules: Rules,
    at: MonoTime,
    /// Until when it certainly stays out of elections (its start quiet from the probe's send).
    quiet_until: MonoTime,
    /// A probe of it failed after this answer: it may have restarted, its quiet is unknown.
    failed_since: bool,
    /// Slow probes of it in a row ([`slow_round_trip`]).
    slow_in_a_row: u8,
    /// When the slow-link warning about it was last given.
    slow_warned_at: Option<MonoTime>,
}

/// The voters of the membership this node knows.
fn voters(raft: &Raft) -> BTreeSet<NodeId> {
    member_roles(raft).into_iter().filter(|(_, (_, voter))| *voter).map(|(id, _)| id).collect()
}

/// What the probe loop remembers between rounds.
#[derive(Debug, Default)]
struct Standing {
    /// Whether the last round excluded this node (`None` before the first).
    excluded: Option<bool>,
    /// The kind of the last verdict logged: each change of kind is logged once.
    logged: Option<std::mem::Discriminant<Verdict>>,
    /// Rounds in a row that excluded this node.
    excluded_rounds: u32,
    /// The hand-over under way, if any (one at a time).
    stepping_aside: Option<tokio::task::JoinHandle<()>>,
}

/// The probe loop of `node`, until `stopped`: a round every [`PROBE_EVERY`] (or at once when
/// admission asks), then the verdict acted on.
pub async fn run(node: RegistryNode, stopped: Stopped) {
    let watch = node.clocks.clone();
    let mut standing = Standing::default();
    let stop = stopped.wait();
    tokio::pin!(stop);
    loop {
        watch.probe_round().await;
        act(&node, &watch.verdict(), &mut standing);
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(PROBE_EVERY) => {}
            () = watch.wake.notified() => {}
        }
    }
}

/// Turn elections off or on with the verdict, log each change, and step aside if this node
/// leads and must not.
fn act(node: &RegistryNode, verdict: &Verdict, standing: &mut Standing) {
    let watch = &node.clocks;
    let excluded = !verdict.may_lead();
    let (state, term) = {
        let m = node.raft.metrics();
        let m = m.borrow();
        (m.state, m.current_term)
    };
    let kind = std::mem::discriminant(verdict);
    if standing.logged != Some(kind) {
        log_change(node.node_id, term, watch.max_offset_ms(), verdict, standing.logged.is_none());
        standing.logged = Some(kind);
    }
    if standing.excluded != Some(excluded) {
        watch.elections.set(NoElections::Clock, excluded);
        standing.excluded = Some(excluded);
    }
    standing.excluded_rounds = if excluded { standing.excluded_rounds + 1 } else { 0 };
    let rounds_needed = if matches!(verdict, Verdict::Beyond { .. }) { PROVEN_OFF_ROUNDS } else { UNPROVEN_ROUNDS };
    let must_go = excluded && standing.excluded_rounds >= rounds_needed;
    let under_way = standing.stepping_aside.as_ref().is_some_and(|h| !h.is_finished());
    if state == ServerState::Leader && must_go && !under_way {
        let (leader, node_id) = (node.leader.clone(), node.node_id);
        standing.stepping_aside = Some(tokio::spawn(async move {
            match leader.step_aside().await {
                Ok(()) => tracing::warn!(node_id, "stepped aside: this node's clock may not stamp the cluster's time"),
                Err(e) => {
                    tracing::warn!(node_id, error = %e, "stepping aside for the clock check failed; retrying next round")
                }
            }
        }));
    }
}

fn log_change(node_id: NodeId, term: u64, max_offset_ms: u64, verdict: &Verdict, first: bool) {
    match verdict {
        Verdict::Within { .. } => {
            tracing::info!(node_id, term, max_offset_ms, %verdict, "clock check passed: this node may campaign and lead");
        }
        Verdict::Beyond { .. } => tracing::error!(
            node_id,
            term,
            max_offset_ms,
            %verdict,
            "clock check failed: this node's wall clock is off the cluster's median by more than --max-clock-offset; it does not campaign, and steps aside if it leads (fix its time sync: docs/failure-modes.md#registry-clock-off)"
        ),
        // At start-up nothing has answered yet: expected, not worth a warning.
        Verdict::TooFew { .. } if first => tracing::info!(
            node_id,
            term,
            %verdict,
            "clock check: waiting for a quorum of peers to answer clock probes before campaigning"
        ),
        Verdict::TooFew { .. } | Verdict::Unclear { .. } => tracing::warn!(
            node_id,
            term,
            max_offset_ms,
            %verdict,
            "clock check unproven: this node does not campaign until a quorum of peers proves its clock within --max-clock-offset"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> MonoTime {
        MonoTime(Duration::from_millis(ms))
    }

    /// Goal: a member whose round trips keep passing half the heartbeat (openraft's
    /// replication timeout) is warned about, once a minute at most; a quick one never, nor one
    /// slow probe (a connect's handshakes).
    #[test]
    fn round_trips_over_half_the_heartbeat_are_warned_about_once_a_minute() {
        let (heartbeat, ms) = (Duration::from_millis(50), Duration::from_millis);
        assert!(!slow_round_trip(ms(25), heartbeat), "exactly half leaves the fsync the rest");
        assert!(slow_round_trip(ms(26), heartbeat));
        assert!(!warn_slow_link(SLOW_PROBES_TO_WARN - 1, None, at(0)), "a connect's first probe alone");
        assert!(warn_slow_link(SLOW_PROBES_TO_WARN, None, at(0)));
        assert!(!warn_slow_link(SLOW_PROBES_TO_WARN, Some(at(1_000)), at(60_999)), "warned within the minute");
        assert!(warn_slow_link(SLOW_PROBES_TO_WARN, Some(at(1_000)), at(61_000)));
    }
}
