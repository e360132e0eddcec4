//! Can the cluster commit? The one-line verdict of `ctl status`, decided from the leader's own
//! report (its quorum-acknowledgement age against its leader lease), never from a follower's
//! memory of a leader that may be gone. Pure, so every case is unit-tested.

use fenceflake_proto::v1 as pb;
use serde_json::{json, Value};

/// `ctl status` exit status when the cluster cannot commit (no quorum or no leader).
pub const EXIT_CANNOT_COMMIT: u8 = 3;
/// Exit status for every other failure (including "the leader did not answer us").
pub const EXIT_ERROR: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A leader answered and a quorum acknowledged it within its lease.
    Serving { leader: u64, ack_age_ms: u64, lease_ms: u64 },
    /// A leader answered, but no quorum has acknowledged it within its lease: writes fail.
    NoQuorum { leader: u64, ack_age_ms: Option<u64>, lease_ms: u64 },
    /// No answering node knows a leader (election in progress, or quorum lost).
    NoLeader,
    /// Some node names a leader, but it did not answer us: we cannot tell.
    LeaderUnreachable { leader: u64 },
}

impl Verdict {
    /// Decide from the leader's own status (if it answered) and the leader other nodes name.
    pub fn decide(leader_status: Option<&pb::ClusterStatusResponse>, named_leader: Option<u64>) -> Verdict {
        match (leader_status, named_leader) {
            (Some(s), _) => {
                let lease_ms = s.leader_lease_ms;
                match s.quorum_ack_age_ms {
                    Some(age) if age <= lease_ms => Verdict::Serving { leader: s.node_id, ack_age_ms: age, lease_ms },
                    age => Verdict::NoQuorum { leader: s.node_id, ack_age_ms: age, lease_ms },
                }
            }
            (None, Some(leader)) => Verdict::LeaderUnreachable { leader },
            (None, None) => Verdict::NoLeader,
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Verdict::Serving { .. } => 0,
            Verdict::NoQuorum { .. } | Verdict::NoLeader => EXIT_CANNOT_COMMIT,
            Verdict::LeaderUnreachable { .. } => EXIT_ERROR,
        }
    }

    pub fn word(&self) -> &'static str {
        match self {
            Verdict::Serving { .. } => "serving",
            Verdict::NoQuorum { .. } => "no quorum",
            Verdict::NoLeader => "no leader",
            Verdict::LeaderUnreachable { .. } => "unknown",
        }
    }

    /// The line an operator reads first.
    pub fn line(&self) -> String {
        let detail = match self {
            Verdict::Serving { leader, ack_age_ms, lease_ms } => {
                format!("leader {leader}, quorum acknowledged it {ack_age_ms} ms ago (lease {lease_ms} ms)")
            }
            Verdict::NoQuorum { leader, ack_age_ms: Some(age), lease_ms } => format!(
                "leader {leader} has not been acknowledged by a quorum for {age} ms (> lease {lease_ms} ms): writes fail until enough members are back"
            ),
            Verdict::NoQuorum { leader, ack_age_ms: None, .. } => {
                format!("leader {leader} has never been acknowledged by a quorum: writes fail")
            }
            Verdict::NoLeader => "no answering node knows a leader (election in progress or quorum lost)".to_string(),
            Verdict::LeaderUnreachable { leader } => {
                format!("node {leader} is named leader but did not answer: pass its client address to --registry")
            }
        };
        format!("health: {} — {detail}", self.word())
    }

    pub fn to_json(&self) -> Value {
        let (leader, ack_age_ms, lease_ms) = match self {
            Verdict::Serving { leader, ack_age_ms, lease_ms } => (Some(*leader), Some(*ack_age_ms), Some(*lease_ms)),
            Verdict::NoQuorum { leader, ack_age_ms, lease_ms } => (Some(*leader), *ack_age_ms, Some(*lease_ms)),
            Verdict::NoLeader => (None, None, None),
            Verdict::LeaderUnreachable { leader } => (Some(*leader), None, None),
        };
        json!({"verdict": self.word(), "exit_code": self.exit_code(), "leader_id": leader,
               "quorum_ack_age_ms": ack_age_ms, "leader_lease_ms": lease_ms})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader(ack: Option<u64>) -> pb::ClusterStatusResponse {
        pb::ClusterStatusResponse {
            node_id: 3,
            state: "LEADER".into(),
            quorum_ack_age_ms: ack,
            leader_lease_ms: 300,
            ..Default::default()
        }
    }

    #[test]
    fn a_fresh_quorum_ack_is_serving() {
        let v = Verdict::decide(Some(&leader(Some(40))), Some(3));
        assert_eq!(v, Verdict::Serving { leader: 3, ack_age_ms: 40, lease_ms: 300 });
        assert_eq!(v.exit_code(), 0);
    }

    /// Goal: the case that fooled operators — survivors show a leader and all members, yet
    /// the leader has had no quorum for longer than its lease — exits 3.
    #[test]
    fn a_stale_quorum_ack_is_no_quorum_and_exits_3() {
        for ack in [Some(301), None] {
            let v = Verdict::decide(Some(&leader(ack)), Some(3));
            assert!(matches!(v, Verdict::NoQuorum { leader: 3, .. }), "{v:?}");
            assert_eq!(v.exit_code(), EXIT_CANNOT_COMMIT);
            assert!(v.line().starts_with("health: no quorum"), "{}", v.line());
        }
    }

    #[test]
    fn no_leader_exits_3_and_an_unanswering_leader_is_unknown() {
        assert_eq!(Verdict::decide(None, None).exit_code(), EXIT_CANNOT_COMMIT);
        let v = Verdict::decide(None, Some(2));
        assert_eq!(v.exit_code(), EXIT_ERROR);
        assert!(v.line().contains("node 2"), "{}", v.line());
        assert_eq!(v.to_json()["verdict"], "unknown");
    }
}
