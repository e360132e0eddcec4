//! The decision of a node that starts without Raft state, pure (answers in, decision out; no
//! IO, no clock): refuse, start (join or bootstrap), or keep asking.
//!
//! Why each rule is safe (docs/operations.md, "Lost disks"):
//! - *Refuse* if any node remembers this id serving: its vote and log are gone, and counted
//!   again it could help elect a leader that lacks acknowledged grants.
//! - *Join* only when a majority of every voter set of the newest membership heard of answers
//!   "holds data, never saw this id serve". A served node's record is committed, so it is in
//!   the log of a majority of the voters of its time, and every later membership change was
//!   acknowledged by a majority of the voters before it: any such majority includes a node
//!   that remembers the record (or knows a newer membership, which the asker then goes by).
//! - *Bootstrap* only when every member of `--initial-cluster` was heard answering "empty".
//!   A node holding data never answers "empty" (unless it lost its disk too), so a restart
//!   with even one surviving disk never bootstraps a new cluster over it, whether the
//!   survivor is up or not. Only when every disk is gone is this indistinguishable from a
//!   new cluster, and a new cluster it becomes (restore from a backup instead).
//! - Silence proves nothing: a node that did not answer is waited for, never assumed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use super::answer::{HistoryAnswer, KnownMembership};
use crate::raft::types::NodeId;

/// What the asking node knows after some rounds of asking.
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    pub me: NodeId,
    /// The ids of `--initial-cluster` (this node's among them for a new cluster).
    pub initial: &'a BTreeSet<NodeId>,
    /// `--initial-cluster-state new`: a new cluster may be bootstrapped. `existing`: only join.
    pub new_cluster: bool,
    /// Each peer's latest answer. A peer that stops answering keeps its last one: what a node
    /// holding data said about this id cannot change while this node does not serve, and a
    /// node that was empty when asked had no data of an older cluster then.
    pub answers: &'a BTreeMap<NodeId, HistoryAnswer>,
    /// Peers that answered "empty" at least once.
    pub seen_empty: &'a BTreeSet<NodeId>,
}

/// How a node without Raft state may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Join the cluster whose nodes hold data (as a new member or one not yet caught up);
    /// never initialize one.
    Join,
    /// Every member of `--initial-cluster` is empty: a new cluster (its lowest id initializes it).
    Bootstrap,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Start(Start),
    /// Node `remembered_by` remembers this id serving: its disk was lost.
    Refuse {
        remembered_by: NodeId,
    },
    /// Not enough answers yet; `waiting_for` says what would settle it (for the log).
    KeepAsking {
        waiting_for: String,
    },
}

/// The newest membership any node holding data reported.
pub fn newest_membership(answers: &BTreeMap<NodeId, HistoryAnswer>) -> Option<&KnownMembership> {
    answers
        .values()
        .filter_map(|answer| match answer {
            HistoryAnswer::HoldsData { membership: Some(m), .. } if m.voters.iter().any(|v| !v.is_empty()) => Some(m),
            _ => None,
        })
        .max_by_key(|m| m.log_id)
}

/// The voter sets a join needs enough answers from: those of the newest membership reported;
/// none while no node of this release holding data answered (the initial cluster can be long
/// out of date, and an older release's answer names no membership: neither proves anything).
fn voter_sets(e: &Evidence) -> Option<Vec<BTreeSet<NodeId>>> {
    let membership = newest_membership(e.answers)?;
    Some(membership.voters.iter().filter(|v| !v.is_empty()).cloned().collect())
}

/// The voter sets in which fewer than a majority answered "holds data, never saw it serve",
/// each described for the log.
fn short_majorities(e: &Evidence, sets: &[BTreeSet<NodeId>]) -> Vec<String> {
    let never_served = |id: &NodeId| matches!(e.answers.get(id), Some(HistoryAnswer::HoldsData { served: false, .. }));
    sets.iter()
        .filter_map(|voters| {
            let count = voters.iter().filter(|id| never_served(id)).count();
            // Enough answers that every commit quorum of this set contains one of them: half,
            // rounded up (a majority of an odd set; all that a 2-voter set can ever give).
            let needed = voters.len() - voters.len() / 2;
            (count < needed).then(|| {
                format!(
                    "a majority ({needed}) of voters {} holding data to answer that node {} never served ({count} so far)",
                    ids(voters),
                    e.me
                )
            })
        })
        .collect()
}

fn ids<'a>(ids: impl IntoIterator<Item = &'a NodeId>) -> String {
    let mut out = String::new();
    for (i, id) in ids.into_iter().enumerate() {
        let _ = write!(out, "{}{id}", if i == 0 { "" } else { "," });
    }
    format!("{{{out}}}")
}

/// A new cluster that another node initialized before this one saw it empty: every member
/// answered, each either empty or holding data of a cluster not yet configured. Before the
/// config commits, no lease exists anywhere (every lease command needs it), so nothing this
/// node could have acknowledged matters to a lease, and it may join. The config needs a
/// quorum, so it cannot commit while this node and the other empty ones stay out.
fn bootstrapping_without_me(e: &Evidence) -> bool {
    let fresh = |id: &NodeId| {
        matches!(
            e.answers.get(id),
            Some(HistoryAnswer::Empty | HistoryAnswer::HoldsData { served: false, configured: false, .. })
        )
    };
    e.initial.iter().filter(|id| **id != e.me).all(fresh)
        && e.answers.values().any(|a| matches!(a, HistoryAnswer::HoldsData { .. }))
}

/// Decide from the answers so far (rules and their argument in the module docs).
pub fn decide(e: &Evidence) -> Decision {
    if let Some((&remembered_by, _)) = e.answers.iter().find(|(_, answer)| answer.served()) {
        return Decision::Refuse { remembered_by };
    }
    let mut waiting = Vec::new();
    if let Some(sets) = voter_sets(e) {
        let short = short_majorities(e, &sets);
        if short.is_empty() {
            return Decision::Start(Start::Join);
        }
        waiting.extend(short);
    }
    if e.new_cluster {
        if bootstrapping_without_me(e) {
            return Decision::Start(Start::Join);
        }
        let not_seen: BTreeSet<NodeId> =
            e.initial.iter().copied().filter(|id| *id != e.me && !e.seen_empty.contains(id)).collect();
        if not_seen.is_empty() {
            // Every member was empty when asked: data anyone holds now is this new
            // cluster's, which someone else already initialized, so join it.
            let any_data = e.answers.values().any(|a| matches!(a, HistoryAnswer::HoldsData { .. }));
            return Decision::Start(if any_data { Start::Join } else { Start::Bootstrap });
        }
        waiting.push(format!(
            "every member of --initial-cluster to answer that it is empty too, for a new cluster (not yet: {})",
            ids(&not_seen)
        ));
    } else if waiting.is_empty() {
        waiting.push(
            "an answer from a member holding data (--initial-cluster-state existing: this node only joins)".into(),
        );
    }
    Decision::KeepAsking { waiting_for: waiting.join("; or ") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::LogId;

    const ME: NodeId = 3;

    /// "Holds data" from a node that knows no membership (only a vote, say).
    fn data(served: bool) -> HistoryAnswer {
        HistoryAnswer::HoldsData { served, membership: None, configured: true }
    }

    /// "Holds data, never saw it serve" from a node that knows the initial membership.
    fn member(index: u64) -> HistoryAnswer {
        data_in(&[&[1, 2, 3, 4, 5]], index)
    }

    fn data_in(voters: &[&[NodeId]], index: u64) -> HistoryAnswer {
        let voters: Vec<BTreeSet<NodeId>> = voters.iter().map(|v| v.iter().copied().collect()).collect();
        let peer_addrs = voters.iter().flatten().map(|id| (*id, format!("h{id}:2380"))).collect();
        let log_id = Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), index));
        let membership = Some(KnownMembership { log_id, voters, peer_addrs });
        HistoryAnswer::HoldsData { served: false, membership, configured: true }
    }

    /// The decision of node 3 of `--initial-cluster` 1..=5 after these answers.
    fn decide_with(new_cluster: bool, answers: &[(NodeId, HistoryAnswer)], seen_empty: &[NodeId]) -> Decision {
        let initial: BTreeSet<NodeId> = (1..=5).collect();
        let answers: BTreeMap<NodeId, HistoryAnswer> = answers.iter().cloned().collect();
        let seen_empty: BTreeSet<NodeId> = seen_empty.iter().copied().collect();
        decide(&Evidence { me: ME, initial: &initial, new_cluster, answers: &answers, seen_empty: &seen_empty })
    }

    fn keeps_asking(decision: &Decision, mentioning: &str) {
        match decision {
            Decision::KeepAsking { waiting_for } => assert!(waiting_for.contains(mentioning), "{waiting_for}"),
            other => panic!("expected to keep asking ({mentioning}), got {other:?}"),
        }
    }

    /// Goal: issue 9 — silence proves nothing: with no answer, or fewer than a majority of
    /// the voters holding data, an empty node keeps asking and says what it waits for.
    #[test]
    fn silence_or_a_minority_keeps_asking() {
        keeps_asking(&decide_with(true, &[], &[]), "not yet: {1,2,4,5}");
        keeps_asking(&decide_with(false, &[], &[]), "only joins");
        // The reproduced failure: 4 and 5 never saw the grant (nor, here, node 3 serve).
        let two = decide_with(true, &[(4, member(2)), (5, member(2))], &[]);
        keeps_asking(
            &two,
            "a majority (3) of voters {1,2,3,4,5} holding data to answer that node 3 never served (2 so far)",
        );
    }

    /// Goal: any node that remembers this id serving makes it refuse, whatever else answered.
    #[test]
    fn one_remembering_node_refuses() {
        let answers = [(1, data(false)), (2, data(false)), (4, data(false)), (5, data(true))];
        assert_eq!(decide_with(true, &answers, &[]), Decision::Refuse { remembered_by: 5 });
        let legacy_and_empty = [(1, HistoryAnswer::Empty), (2, data(true))];
        assert_eq!(decide_with(true, &legacy_and_empty, &[1, 4, 5]), Decision::Refuse { remembered_by: 2 });
    }

    /// Goal: a new member (or one that never got to serve) joins once a majority of the voters
    /// holding data answer that it never served; never bootstraps then.
    #[test]
    fn a_majority_holding_data_lets_it_join() {
        let answers = [(1, member(2)), (2, member(2)), (4, member(2))];
        assert_eq!(decide_with(false, &answers, &[]), Decision::Start(Start::Join));
        assert_eq!(decide_with(true, &answers, &[]), Decision::Start(Start::Join));
        // Nodes that hold data but know no membership prove nothing about whose majority counts.
        let memberless = [(1, data(false)), (2, data(false)), (4, data(false))];
        keeps_asking(&decide_with(false, &memberless, &[]), "only joins");
        // Half of a 4-voter set is enough: every commit quorum (3 of 4) contains one of them.
        let four = data_in(&[&[1, 2, 3, 4]], 5);
        assert_eq!(decide_with(false, &[(1, four.clone()), (2, four)], &[]), Decision::Start(Start::Join));
        // And the one other node of a 2-voter set.
        let two = data_in(&[&[1, 3]], 5);
        assert_eq!(decide_with(false, &[(1, two)], &[]), Decision::Start(Start::Join));
    }

    /// Goal: the newest membership reported decides whose majority counts, in every voter set
    /// of a joint change, and older (legacy) answers count as holding data.
    #[test]
    fn the_newest_membership_decides_the_majority() {
        // Voters moved to {4,5,6,7,8}: the three old voters are not enough.
        let newer = data_in(&[&[4, 5, 6, 7, 8]], 9);
        let answers = [(1, data(false)), (2, data(false)), (4, newer.clone())];
        keeps_asking(&decide_with(false, &answers, &[]), "voters {4,5,6,7,8}");
        let answers = [(4, newer.clone()), (5, data(false)), (6, data(false))];
        assert_eq!(decide_with(false, &answers, &[]), Decision::Start(Start::Join));
        // A joint change needs a majority of both sets.
        let joint = data_in(&[&[1, 2, 4], &[4, 5, 6]], 7);
        let answers = [(1, joint.clone()), (2, data(false)), (4, data(false))];
        keeps_asking(&decide_with(false, &answers, &[]), "voters {4,5,6}");
        let answers = [(1, joint), (2, data(false)), (4, data(false)), (5, data(false))];
        assert_eq!(decide_with(false, &answers, &[]), Decision::Start(Start::Join));
        // An older membership does not override a newer one.
        let answers = [(4, newer), (1, data_in(&[&[1, 2, 3, 4, 5]], 2)), (2, data(false)), (5, data(false))];
        keeps_asking(&decide_with(false, &answers, &[]), "voters {4,5,6,7,8}");
    }

    /// Goal: a new cluster bootstraps only when every member of --initial-cluster was seen
    /// empty; a restart where a majority of disks is gone waits for the survivors instead of
    /// bootstrapping over them, and `existing` never bootstraps.
    #[test]
    fn bootstrap_needs_every_member_seen_empty() {
        let empty = HistoryAnswer::Empty;
        let all: Vec<(NodeId, HistoryAnswer)> = [1, 2, 4, 5].iter().map(|id| (*id, empty.clone())).collect();
        assert_eq!(decide_with(true, &all, &[1, 2, 4, 5]), Decision::Start(Start::Bootstrap));
        keeps_asking(&decide_with(false, &all, &[1, 2, 4, 5]), "only joins");
        // Three disks lost (1, 2, 3), survivors 4 and 5 down: no bootstrap.
        keeps_asking(&decide_with(true, &all[..2], &[1, 2]), "not yet: {4,5}");
        // Seen empty earlier, node 1 holds data now: it initialized the new cluster; join it.
        let mut later = all.clone();
        later[0] = (1, data_in(&[&[1, 2, 3, 4, 5]], 0));
        assert_eq!(decide_with(true, &later, &[1, 2, 4, 5]), Decision::Start(Start::Join));
    }

    /// Goal: the start-up race of a new cluster — its lowest id initialized before this node
    /// saw it empty — ends in a join while no member holding data is configured yet (no lease
    /// can exist), and only then.
    #[test]
    fn a_new_cluster_initialized_before_this_node_saw_it_empty_is_joined() {
        let fresh = HistoryAnswer::HoldsData { served: false, membership: None, configured: false };
        let answers = [(1, fresh.clone()), (2, HistoryAnswer::Empty), (4, HistoryAnswer::Empty), (5, fresh)];
        assert_eq!(decide_with(true, &answers, &[2, 4]), Decision::Start(Start::Join));
        keeps_asking(&decide_with(false, &answers, &[]), "only joins");
        let configured = [(1, data(false)), (2, HistoryAnswer::Empty), (4, HistoryAnswer::Empty), (5, data(false))];
        keeps_asking(&decide_with(true, &configured, &[2, 4]), "not yet: {1,5}");
        let missing = [(1, data_in(&[&[1, 2, 3, 4, 5]], 1)), (2, HistoryAnswer::Empty)];
        keeps_asking(&decide_with(true, &missing, &[2]), "not yet");
    }
}
