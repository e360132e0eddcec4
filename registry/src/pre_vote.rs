//! Pre-vote: a voter campaigns only when a majority of the voters would vote for it.
//!
//! openraft 0.9.25 has no pre-vote (Raft thesis §9.6). Its follower campaigns on its own timer
//! (`election_timeout_max` + a random election timeout after its leader's last AppendEntries)
//! and raises its term first: a follower that its host did not schedule for that long wakes
//! up, campaigns, and its higher term deposes a healthy leader as soon as the leader's next
//! AppendEntries meets it — an election nobody needed, which on a loaded 2-core machine is
//! what kept the default timing slow (BENCHMARKS.md, "Elections without a fault").
//!
//! With `--pre-vote` (the default) openraft's own election timer stays off (its `elect`
//! switch, `ElectionSwitch`) and [`run`] campaigns instead, through `Trigger::elect`:
//! - it waits until this node's vote has not been refreshed by a leader for
//!   `election_timeout_max` plus a random part of half the election-timeout spread (so that
//!   followers of one dead leader rarely ask together);
//! - it asks every other voter `PreVote` ([`PreVoteRequest`]): would you vote for me? A voter
//!   says yes ([`grants`]) unless a reason to refuse the real vote stands — it heard a leader
//!   within its own `election_timeout_max` (openraft's follower lease), a leader lease it took
//!   still runs (`leader_lease.rs`), or its log is more up to date — or it leads and a quorum
//!   acknowledged it within `election_timeout_max` (a leader that lost its quorum says yes, so
//!   that the others can replace it);
//! - with a majority of yeses (its own included) it checks its own vote once more and starts
//!   the election (`elect_if_free`). A refused pre-vote changes nothing anywhere: no term
//!   moves, and it asks again a heartbeat later.
//!
//! **The one thing that touches safety: the candidate's vote for itself.** openraft's timer
//! decided inside its core, in order with AppendEntries, that the candidate's own leader
//! lease had run out; `Trigger::elect` votes for itself without any check. Had a leader's
//! heartbeat reached this node during the pre-vote round, this node would have acknowledged a
//! round the leader's lease counts on and then voted for itself within that lease. So the
//! final check and the `Elect` command happen under the [`CampaignGate`], which the peer
//! port's AppendEntries handler also holds while openraft handles the append. The argument:
//! a lease counts only answers to the leader's AppendEntries other than `HigherVote`, and
//! openraft refreshes the vote time (`update_vote`) while it handles such an append, before
//! it answers; AppendEntries, `with_raft_state` and `Trigger::elect` all reach openraft's core
//! through its one FIFO queue (`tx_api`). So every append the check did not see is handled
//! after `Elect`, meets the higher vote and is answered `HigherVote`: it counts for no lease.
//! InstallSnapshot takes no gate: a snapshot's answers count for no lease, and holding the
//! gate through an install (up to about half a second at 65,536 IDs) would time out the
//! heartbeats queued behind it.
//!
//! Everything else is liveness. Who leads is still decided by openraft's vote handling and
//! the leader lease's refusal, which count no pre-vote: a pre-vote answered wrongly (a lying
//! or buggy peer) can at worst start an election those votes then decide; a peer of an older
//! release answers `UNIMPLEMENTED`, counted as a yes (it votes as openraft does).
//!
//! The gain is also speed: a campaign starts once the voters' refusals have run out
//! (`election_timeout_max` after the last heartbeat), not a whole election timeout later.

use std::sync::Arc;
use std::time::Duration;

use fenceflake_proto::entropy;
use fenceflake_proto::serving::Stopped;
use openraft::{RaftLogReader, ServerState};
use serde::{Deserialize, Serialize};

use crate::leader::member_roles;
use crate::metrics::inc;
use crate::node::RegistryNode;
use crate::raft::network::{PeerCallError, PeerRpc};
use crate::raft::types::{LogId, NodeId};
use crate::storage::LogReader;
use crate::transfer::NoElections;

/// A candidate's question: would you vote for `candidate`, whose log ends at `last_log_id`?
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreVoteRequest {
    pub candidate: NodeId,
    pub last_log_id: Option<LogId>,
}

/// A voter's answer; `why` says what refused it (logged by the candidate).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreVoteAnswer {
    pub granted: bool,
    pub why: String,
}

/// openraft's election state on one node, as its core sees it.
#[derive(Debug, Clone, Copy)]
struct RaftView {
    state: ServerState,
    term: u64,
    /// The node's vote is a leader's committed one (it follows a leader, or leads).
    committed: bool,
    /// Since the vote was last refreshed (a leader's AppendEntries, a vote granted); `None`
    /// before any.
    silence: Option<Duration>,
}

impl RaftView {
    async fn of(node: &RegistryNode) -> Option<RaftView> {
        node.raft
            .with_raft_state(|st| RaftView {
                state: st.server_state,
                term: st.vote_ref().leader_id().term,
                committed: st.vote_ref().is_committed(),
                silence: st.vote_last_modified().map(crate::clock::raft_instant_age),
            })
            .await
            .ok()
    }

    /// How long openraft's real vote still refuses on this node's leader lease: it refuses
    /// while its vote is committed and refreshed within `election_max`.
    fn refuses_for(&self, election_max: Duration) -> Duration {
        match (self.committed, self.silence) {
            (true, Some(silence)) => (election_max + Duration::from_millis(1)).saturating_sub(silence),
            _ => Duration::ZERO,
        }
    }
}

/// What a voter knows when it answers a pre-vote.
#[derive(Debug, Clone, Copy)]
pub struct VoterView {
    /// This node leads, is not handing its leadership over, and a quorum acknowledged it
    /// within its `election_timeout_max`.
    pub leads_a_quorum: bool,
    /// How much longer a real vote would be refused: openraft's follower lease, or a leader
    /// lease this node took (`leader_lease.rs`).
    pub refuses_for: Duration,
    /// Where this node's log ends; `Err` if it could not be read (the check is then left to
    /// the real vote).
    pub last_log_id: Result<Option<LogId>, ()>,
}

/// Whether a voter in `view` would vote for a candidate whose log ends at `candidate_log`:
/// the reasons a real vote is refused, checked without voting, and a leader's quorum.
pub fn grants(view: &VoterView, candidate_log: Option<&LogId>) -> PreVoteAnswer {
    let refuse = |why: String| PreVoteAnswer { granted: false, why };
    if view.leads_a_quorum {
        return refuse("this node leads and a quorum acknowledged it".into());
    }
    if !view.refuses_for.is_zero() {
        return refuse(format!(
            "this node follows a leader (or its lease) and refuses votes for another {} ms",
            view.refuses_for.as_millis()
        ));
    }
    match &view.last_log_id {
        Ok(own) if candidate_log < own.as_ref() => {
            refuse(format!("the candidate's log ends at {candidate_log:?}, before this node's {own:?}"))
        }
        _ => PreVoteAnswer { granted: true, why: String::new() },
    }
}

/// This node's answer to `request`.
pub async fn answer(node: &RegistryNode, request: &PreVoteRequest) -> PreVoteAnswer {
    let Some(raft) = RaftView::of(node).await else {
        return PreVoteAnswer { granted: false, why: "this node's Raft has stopped".into() };
    };
    let election_max = node.clocks.own_election_max();
    let quorum_ack = node.raft.metrics().borrow().millis_since_quorum_ack.map(Duration::from_millis);
    let handing_over = node.clocks.elections().stands(NoElections::HandingOver);
    let view = VoterView {
        leads_a_quorum: raft.state == ServerState::Leader
            && !handing_over
            && quorum_ack.is_some_and(|age| age <= election_max),
        refuses_for: raft.refuses_for(election_max).max(node.leader.lease().refuses_votes_for()),
        last_log_id: last_log_id(node).await,
    };
    let answer = grants(&view, request.last_log_id.as_ref());
    tracing::debug!(candidate = request.candidate, granted = answer.granted, why = %answer.why, "pre-vote answered");
    answer
}

/// Why this node may not vote for itself now (`None`: it may): it leads, a leader refreshed
/// its vote within `election_max` (`follower_refusal`), a leader lease it took or its start
/// still refuses votes (`lease_refusal`), or a reason to stay out of elections stands.
fn own_vote_refusal(
    raft: &RaftView,
    follower_refusal: Duration,
    lease_refusal: Duration,
    may_campaign: bool,
) -> Option<String> {
    if raft.state == ServerState::Leader {
        Some("this node leads".into())
    } else if !follower_refusal.is_zero() {
        Some(format!("a leader was heard: this node refuses votes for another {} ms", follower_refusal.as_millis()))
    } else if !lease_refusal.is_zero() {
        Some(format!(
            "a leader lease this node took (or its start) refuses votes for another {} ms",
            lease_refusal.as_millis()
        ))
    } else if !may_campaign {
        Some("this node's elections are off (a transfer's hold, a hand-over or its clock check)".into())
    } else {
        None
    }
}

/// Orders a campaign's last check and its `Elect` against openraft's handling of a leader's
/// AppendEntries (module docs: the candidate's own vote). Appends share it, so that they never
/// wait on one another (openraft's leader check sends its heartbeats beside the replication
/// stream, and the leader lease is taken from those); a campaign holds it alone.
#[derive(Debug, Clone, Default)]
pub struct CampaignGate(Arc<tokio::sync::RwLock<()>>);

impl CampaignGate {
    /// Held while openraft handles one AppendEntries.
    pub async fn append(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.0.read().await
    }

    /// Held from a campaign's last check to its `Elect`.
    async fn campaign(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.0.write().await
    }
}

/// Why this node may not vote for itself now, as `raft` shows it (`None`: it may).
fn own_refusal_now(node: &RegistryNode, raft: &RaftView) -> Option<String> {
    let follower_refusal = raft.refuses_for(node.clocks.own_election_max());
    let lease_refusal = node.leader.lease().refuses_votes_for();
    own_vote_refusal(raft, follower_refusal, lease_refusal, node.clocks.elections().may_campaign())
}

/// Check this node's own vote once more, under the gate, and start the election if it may
/// vote for itself: `Ok(true)` if it did, `Err` once its Raft has stopped.
async fn elect_if_free(node: &RegistryNode) -> Result<bool, String> {
    let _gate = node.campaign_gate.campaign().await;
    let raft = RaftView::of(node).await.ok_or("this node's Raft has stopped")?;
    if let Some(why) = own_refusal_now(node, &raft) {
        tracing::debug!(
            node_id = node.node_id,
            term = raft.term,
            why,
            "a majority granted the pre-vote, but this node may not vote for itself now"
        );
        return Ok(false);
    }
    node.raft.trigger().elect().await.map_err(|e| e.to_string())?;
    Ok(true)
}

/// Where this node's log ends (its last entry, or the snapshot that replaced it).
async fn last_log_id(node: &RegistryNode) -> Result<Option<LogId>, ()> {
    let (last_index, snapshot) = {
        let m = node.raft.metrics();
        let m = m.borrow();
        (m.last_log_index, m.snapshot)
    };
    let Some(index) = last_index else { return Ok(None) };
    if snapshot.is_some_and(|s| s.index == index) {
        return Ok(snapshot);
    }
    let mut log = LogReader::open(&node.db).map_err(drop)?;
    let entries = log.try_get_log_entries(index..=index).await.map_err(drop)?;
    // Truncated or purged since the metrics were read: leave the check to the real vote.
    entries.first().map(|e| Some(e.log_id)).ok_or(())
}

/// The silence after which this node asks for votes. Following a leader: its
/// `election_timeout_max` (until then every voter that heard the same last heartbeat refuses)
/// plus a random part of half the election-timeout spread, so that followers of one dead
/// leader rarely ask together. Otherwise (a lost or split election), as openraft's candidate
/// timer: a random election timeout.
fn campaign_after(committed: bool, election_min: Duration, election_max: Duration) -> Duration {
    let spread = election_max.saturating_sub(election_min).as_millis() as u64;
    if committed {
        election_max + Duration::from_millis(entropy::random_in(0..=spread / 2))
    } else {
        election_min + Duration::from_millis(entropy::random_in(0..=spread))
    }
}

/// The heartbeat and the election timeout's bounds `node` runs.
fn timing_of(node: &RegistryNode) -> (Duration, Duration, Duration) {
    let config = node.raft.config();
    (
        Duration::from_millis(config.heartbeat_interval),
        Duration::from_millis(config.election_timeout_min),
        Duration::from_millis(config.election_timeout_max),
    )
}

/// The campaign loop of a voter (with `--pre-vote`), until the node or its Raft stops.
pub async fn run(node: RegistryNode, stopped: Stopped) {
    let (heartbeat, election_min, election_max) = timing_of(&node);
    let stop = stopped.wait();
    tokio::pin!(stop);
    // The wait drawn for the current vote, with the vote's silence and kind when drawn: a
    // refresh (shorter silence) or a change of kind draws again.
    let mut drawn: Option<(Option<Duration>, bool, Duration)> = None;
    let mut denied_in_a_row = 0u64;
    let mut sleep = heartbeat;
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(sleep) => {}
        }
        sleep = heartbeat;
        let Some(raft) = RaftView::of(&node).await else {
            tracing::info!(node_id = node.node_id, "Raft stopped: no more campaigns from this node");
            return;
        };
        if raft.state == ServerState::Leader || raft.state == ServerState::Learner {
            denied_in_a_row = 0;
            continue;
        }
        let refreshed =
            drawn.is_none_or(|(silence, committed, _)| committed != raft.committed || raft.silence < silence);
        if refreshed {
            drawn = Some((raft.silence, raft.committed, campaign_after(raft.committed, election_min, election_max)));
        }
        let wait = drawn.map_or(election_max, |(_, _, wait)| wait);
        let silence = raft.silence.unwrap_or(Duration::MAX);
        if silence < wait {
            denied_in_a_row = 0; // a leader is heard: the next denial starts a new spell
            sleep = (wait - silence).min(election_max);
            continue;
        }
        // Not worth a round while this node could not vote for itself (a restart's or a
        // deposed leader's refusal, a hold); `elect_if_free` checks again under the gate.
        if own_refusal_now(&node, &raft).is_some() {
            continue;
        }
        let voters: Vec<(NodeId, String)> = member_roles(&node.raft)
            .into_iter()
            .filter(|(_, (_, voter))| *voter)
            .map(|(id, (peer, _))| (id, peer.peer_addr))
            .collect();
        if !voters.iter().any(|(id, _)| *id == node.node_id) {
            continue;
        }
        let silence_ms = raft.silence.map(|s| s.as_millis() as u64);
        match ask_for_votes(&node, &voters, election_min).await {
            Ok(()) => match elect_if_free(&node).await {
                Ok(true) => {
                    tracing::info!(
                        node_id = node.node_id,
                        term = raft.term,
                        ?silence_ms,
                        "a majority granted the pre-vote; campaigning"
                    );
                    inc(&node.metrics.campaigns);
                    denied_in_a_row = 0;
                    drawn = None; // the election refreshed the vote: the next wait is a candidate's
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::info!(node_id = node.node_id, error = %e, "no more campaigns from this node");
                    return;
                }
            },
            Err(refusals) => {
                inc(&node.metrics.pre_votes_denied);
                denied_in_a_row += 1;
                // The first denial of a spell and every 50th after (about 5 s at the default
                // heartbeat) at info: a node that keeps asking hears no leader the others hear.
                if denied_in_a_row % 50 == 1 {
                    tracing::info!(node_id = node.node_id, term = raft.term, ?silence_ms, denied_in_a_row, ?refusals, "this node hears no leader, but no majority of the voters would vote for it: not campaigning (check its link to the leader)");
                } else {
                    tracing::debug!(node_id = node.node_id, ?refusals, "no majority granted the pre-vote");
                }
            }
        }
    }
}

/// Ask every other voter at once: `Ok` when this node and the others that granted make a
/// majority of `voters`, else each refusal or failure, by voter.
async fn ask_for_votes(node: &RegistryNode, voters: &[(NodeId, String)], timeout: Duration) -> Result<(), Vec<String>> {
    let needed = voters.len() / 2 + 1;
    if needed <= 1 {
        return Ok(()); // the only voter
    }
    let last_log_id = last_log_id(node).await.map_err(|()| vec!["this node's log could not be read".to_string()])?;
    let request = PreVoteRequest { candidate: node.node_id, last_log_id };
    let mut granted = 1;
    let mut refusals = Vec::new();
    let mut calls = tokio::task::JoinSet::new();
    for (id, addr) in voters.iter().filter(|(id, _)| *id != node.node_id).cloned() {
        let (peers, request) = (node.peers.clone(), request.clone());
        calls.spawn(async move {
            let answer =
                peers.call::<PreVoteRequest, PreVoteAnswer>(id, &addr, PeerRpc::PreVote, &request, timeout).await;
            (id, answer)
        });
    }
    while let Some(joined) = calls.join_next().await {
        match joined {
            Ok((_, Ok(answer))) if answer.granted => granted += 1,
            Ok((id, Ok(answer))) => refusals.push(format!("node {id}: {}", answer.why)),
            Ok((_, Err(PeerCallError::Failed { status, .. }))) if status.code() == tonic::Code::Unimplemented => {
                granted += 1 // an older release: it votes as openraft does, without pre-vote
            }
            Ok((id, Err(e))) => refusals.push(format!("node {id}: {e}")),
            Err(e) => refusals.push(format!("a pre-vote call failed: {e}")),
        }
        if granted >= needed {
            return Ok(());
        }
    }
    Err(refusals)
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn log(term: u64, index: u64) -> Option<LogId> {
        Some(LogId::new(CommittedLeaderId::new(term, 1), index))
    }

    fn follower(refuses_for_ms: u64, last: Option<LogId>) -> VoterView {
        VoterView { leads_a_quorum: false, refuses_for: Duration::from_millis(refuses_for_ms), last_log_id: Ok(last) }
    }

    /// Goal: a pre-vote is granted exactly when the real vote would be: not while the voter's
    /// lease runs, not by a leader, not to a candidate with a shorter log.
    #[test]
    fn a_pre_vote_is_granted_only_when_the_real_vote_would_be() {
        assert!(!grants(&follower(1, log(2, 10)), log(2, 10).as_ref()).granted, "lease still running");
        assert!(grants(&follower(0, log(2, 10)), log(2, 10).as_ref()).granted, "lease over, same log");
        assert!(grants(&follower(0, log(2, 10)), log(3, 4).as_ref()).granted, "a later term wins");
        assert!(!grants(&follower(0, log(2, 10)), log(2, 9).as_ref()).granted, "shorter log");
        assert!(!grants(&follower(0, log(3, 1)), log(2, 10).as_ref()).granted, "older term");
        assert!(!grants(&follower(0, log(2, 1)), None).granted, "empty log");
        let unread = VoterView { last_log_id: Err(()), ..follower(0, None) };
        assert!(grants(&unread, None).granted, "an unreadable log leaves the check to the real vote");
        let leader = VoterView { leads_a_quorum: true, ..follower(0, None) };
        assert!(
            !grants(&leader, log(9, 9).as_ref()).granted,
            "a leader with a quorum does not step down for a pre-vote"
        );
    }

    /// Goal: the candidate's last check (the module docs' one safety point): no vote for
    /// itself while it leads, while a leader's refresh or a lease of its own still refuses
    /// votes, or while its elections are off.
    #[test]
    fn a_candidate_votes_for_itself_only_when_every_refusal_has_run_out() {
        let follower = RaftView { state: ServerState::Follower, term: 3, committed: true, silence: None };
        let ms = Duration::from_millis;
        assert_eq!(own_vote_refusal(&follower, ms(0), ms(0), true), None);
        assert!(own_vote_refusal(&follower, ms(1), ms(0), true).is_some_and(|w| w.contains("a leader was heard")));
        assert!(own_vote_refusal(&follower, ms(0), ms(5), true).is_some_and(|w| w.contains("leader lease")));
        assert!(own_vote_refusal(&follower, ms(0), ms(0), false).is_some_and(|w| w.contains("elections are off")));
        let leader = RaftView { state: ServerState::Leader, ..follower };
        assert!(own_vote_refusal(&leader, ms(0), ms(0), true).is_some_and(|w| w.contains("leads")));
    }

    /// Goal: openraft's follower lease is mirrored: refused up to and at `election_max` after
    /// the vote's refresh, and only for a committed vote.
    #[test]
    fn the_real_vote_refuses_for_election_max_after_a_committed_refresh() {
        let max = Duration::from_millis(600);
        let view = |committed: bool, silence_ms: Option<u64>| RaftView {
            state: ServerState::Follower,
            term: 3,
            committed,
            silence: silence_ms.map(Duration::from_millis),
        };
        assert_eq!(view(true, Some(100)).refuses_for(max), Duration::from_millis(501));
        assert_eq!(
            view(true, Some(600)).refuses_for(max),
            Duration::from_millis(1),
            "openraft refuses at now == utime + lease"
        );
        assert!(view(true, Some(601)).refuses_for(max).is_zero());
        assert!(view(false, Some(10)).refuses_for(max).is_zero(), "a candidate's vote is not a lease");
        assert!(view(true, None).refuses_for(max).is_zero());
    }

    /// Goal: a follower's campaign waits past every voter's refusal, spread so that two
    /// followers of one dead leader rarely campaign together; a candidate's, a random
    /// election timeout.
    #[test]
    fn a_campaign_waits_past_the_refusal_by_a_random_part_of_the_spread() {
        entropy::seed_this_thread(7);
        let (min, max) = (Duration::from_millis(300), Duration::from_millis(600));
        let following: Vec<_> = (0..200).map(|_| campaign_after(true, min, max)).collect();
        let candidate: Vec<_> = (0..200).map(|_| campaign_after(false, min, max)).collect();
        entropy::unseed_this_thread();
        assert!(following.iter().all(|w| *w >= max && *w <= max + Duration::from_millis(150)), "{following:?}");
        assert!(following.iter().collect::<std::collections::BTreeSet<_>>().len() > 50, "spread: {following:?}");
        assert!(candidate.iter().all(|w| *w >= min && *w <= max), "{candidate:?}");
    }
}
