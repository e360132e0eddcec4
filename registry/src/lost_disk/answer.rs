//! The answer to `NodeHistory` ("has node N served in this cluster?") as this release sends
//! it, and every release's answer as an asker reads it.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::raft::types::{LogId, NodeId};

/// The membership a node holding data knows: its effective one, committed or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownMembership {
    /// Where the membership sits in the log: an asker goes by the newest one it hears of,
    /// because a committed change was acknowledged by a majority of the previous voters.
    pub log_id: Option<LogId>,
    /// The voter sets: two during a joint change, each of which needs its own majority.
    pub voters: Vec<BTreeSet<NodeId>>,
    /// Every member's peer address, so that an asker reaches members its flags do not name.
    /// A list of pairs, not a map: integer map keys do not survive serde's buffering of a
    /// tagged enum.
    pub peer_addrs: Vec<(NodeId, String)>,
}

/// What a node says about itself and about the node that asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum HistoryAnswer {
    /// No Raft state at all: a node of a cluster not yet bootstrapped, or one still deciding.
    Empty,
    /// Raft state (a vote, log or membership). `served`: this node remembers the asked id
    /// serving (in its applied state or in its log). `configured`: the cluster config may be
    /// committed (applied here, or entries past the applied index): before it, no lease can
    /// exist anywhere. Absent: taken as configured.
    HoldsData {
        served: bool,
        membership: Option<KnownMembership>,
        #[serde(default = "configured_unless_said")]
        configured: bool,
    },
}

fn configured_unless_said() -> bool {
    true
}

impl HistoryAnswer {
    /// The bool an older release reads (`data`): whether the asked id served, as far as
    /// this node knows (an empty node knows nothing).
    pub fn served(&self) -> bool {
        matches!(self, HistoryAnswer::HoldsData { served: true, .. })
    }
}

/// An answer as it arrives: this release's object, or an older release's bare bool. An older
/// release answers `false` also with an empty data dir, and reads only its applied table: its
/// `true` proves the asked node served, its `false` proves nothing (see [`Received::counted`]).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Received {
    Detailed(HistoryAnswer),
    Legacy(bool),
}

impl Received {
    /// The answer as evidence, if it is any: an older release's `false` is not.
    pub fn counted(self) -> Option<HistoryAnswer> {
        match self {
            Received::Detailed(answer) => Some(answer),
            Received::Legacy(true) => {
                Some(HistoryAnswer::HoldsData { served: true, membership: None, configured: true })
            }
            Received::Legacy(false) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Goal: issue 9 — an older release's bare `true` reads as "holds data, served"; its
    /// `false` (also what it answers with an empty data dir) is no evidence at all; this
    /// release's answers read back as sent.
    #[test]
    fn older_answers_prove_only_that_a_node_served() {
        let read = |json: &str| serde_json::from_str::<Received>(json).unwrap().counted();
        assert_eq!(read("true"), Some(HistoryAnswer::HoldsData { served: true, membership: None, configured: true }));
        assert_eq!(read("false"), None);
        let membership = KnownMembership {
            log_id: None,
            voters: vec![BTreeSet::from([1, 2, 3])],
            peer_addrs: vec![(1, "a:1".to_string())],
        };
        for answer in [
            HistoryAnswer::Empty,
            HistoryAnswer::HoldsData { served: false, membership: Some(membership), configured: false },
        ] {
            assert_eq!(read(&serde_json::to_string(&answer).unwrap()), Some(answer));
        }
        assert!(!HistoryAnswer::Empty.served());
    }
}
