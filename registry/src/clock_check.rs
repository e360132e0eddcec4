//! Whether this node's wall clock may stamp the cluster's time, decided from its peers' clocks:
//! pure (readings and now in, a [`Verdict`] out; no clock, lock or network), so every case is a
//! unit test with plain numbers.
//!
//! A leader's wall clock is the cluster's time: it stamps each Raft batch (grants raise the
//! high-water mark to `leader_wall + ttl`, which becomes the next holder's `not_before`) and
//! each reply (`registry_time_ms`, the reference of the workers' skew check). One fast node
//! that leads therefore moves every mark and parks every worker (issue 9, point 6). So a node
//! leads only while a round trip to each of a quorum of voters *proves* its clock within
//! `--max-clock-offset` of their median (CockroachDB's max-offset rule, on proof like the
//! worker's `judge_skew`):
//!
//! - each [`Probe`] bounds the offset `local − peer` by its round trip (the one skew
//!   computation, `fenceflake_proto::clock_offset`); this node's own clock is one more reading,
//!   exactly 0;
//! - the median of the readings is bounded by [`clock_offset::median`]; fewer than half of
//!   them, however wrong, cannot move it outside the range of the others;
//! - each peer's latest probe counts, unless it was too slow to prove anything while the one
//!   before is still fresh ([`replaces`]);
//! - a quorum of readings (a majority of the voters, this node included) younger than
//!   [`Policy::fresh_for`] is needed: then one bad clock is always outvoted (of five voters,
//!   two), and a node cut off from its peers cannot vouch for itself;
//! - [`Verdict::Within`] only if the whole median interval lies within `±max`: a probe too slow
//!   to tell, or too few answers, proves nothing and the node does not lead.
//!
//! A reading stays valid while neither clock steps. A step of this node's own wall clock is
//! visible (wall − monotonic changes), and moves every reading by exactly the step:
//! [`Probe::bounds_at`] carries the readings forward, so a node whose clock jumps is judged at
//! once, not a probe round later. A peer's step shows at its next probe.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use fenceflake_proto::clock_offset::{self, OffsetBounds, ProvenSkew};

use crate::clock::MonoTime;
use crate::raft::types::NodeId;

/// One probe of a peer's wall clock: this node's clocks around the call, the peer's reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Monotonic time at send: the probe's age, and this node's wall − monotonic then.
    pub sent_at: MonoTime,
    pub send_wall_ms: u64,
    pub receive_wall_ms: u64,
    /// The call's duration on the monotonic clock (widens the bounds over a wall step).
    pub elapsed: Duration,
    /// The peer's wall clock, read while it answered.
    pub remote_ms: u64,
}

/// The instant of a judgement, on both of this node's clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono: MonoTime,
    pub wall_ms: u64,
}

impl Probe {
    /// The bounds on `local − peer` this probe proves at `now`: its round trip's, moved by any
    /// step of this node's wall clock since the send (the change of wall − monotonic).
    pub fn bounds_at(&self, now: Now) -> OffsetBounds {
        let base = |wall_ms: u64, mono: MonoTime| i128::from(wall_ms) - mono.0.as_millis() as i128;
        let step = base(now.wall_ms, now.mono) - base(self.send_wall_ms, self.sent_at);
        let moved = |ms: u64| (i128::from(ms) + step).clamp(0, i128::from(u64::MAX)) as u64;
        let elapsed_ms = u64::try_from(self.elapsed.as_millis()).unwrap_or(u64::MAX);
        OffsetBounds::from_timed_round_trip(
            moved(self.send_wall_ms),
            moved(self.receive_wall_ms),
            elapsed_ms,
            self.remote_ms,
        )
    }
}

/// The bound and how old a probe may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// `--max-clock-offset`: how far from the median a leader's clock may be.
    pub max_offset_ms: u64,
    /// Older probes are not counted.
    pub fresh_for: Duration,
}

/// What the readings prove about this node's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Provably within `±max` of the median of `sampled` clocks: this node may lead.
    Within { median: OffsetBounds, sampled: usize },
    /// Provably beyond it.
    Beyond { median: OffsetBounds, skew: ProvenSkew, sampled: usize },
    /// The median interval straddles the bound (slow probes): nothing proven.
    Unclear { median: OffsetBounds, sampled: usize },
    /// Fewer fresh readings than a quorum of voters.
    TooFew { sampled: usize, needed: usize },
}

impl Verdict {
    /// Whether this node may campaign and stamp the cluster's time.
    pub fn may_lead(&self) -> bool {
        matches!(self, Verdict::Within { .. })
    }

    /// Bounds on this node's offset from the median, if a quorum answered.
    pub fn median(&self) -> Option<OffsetBounds> {
        match self {
            Verdict::Within { median, .. } | Verdict::Beyond { median, .. } | Verdict::Unclear { median, .. } => {
                Some(*median)
            }
            Verdict::TooFew { .. } => None,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Within { median, sampled } => {
                write!(f, "offset {median} from the median of {sampled} clocks: within the bound")
            }
            Verdict::Beyond { median, skew, sampled } => write!(
                f,
                "offset {median} from the median of {sampled} clocks: {skew} the cluster, beyond the bound"
            ),
            Verdict::Unclear { median, sampled } => write!(
                f,
                "offset {median} from the median of {sampled} clocks: the probes were too slow to prove it within the bound"
            ),
            Verdict::TooFew { sampled, needed } => write!(
                f,
                "only {sampled} of the {needed} clocks a quorum needs answered a probe recently (this node's included)"
            ),
        }
    }
}

/// Whether `new` should take the place of `old` as a peer's reading at `now`: a newer probe
/// always, except one too slow to prove anything by itself (wider than the bound) while the
/// old one is still fresh. A busy moment then does not wipe out a sharp reading, and a step
/// on the peer still shows at its next sharp probe.
pub fn replaces(policy: &Policy, old: Option<&Probe>, new: &Probe, now: Now) -> bool {
    let Some(old) = old.filter(|old| now.mono.since(old.sent_at) <= policy.fresh_for) else {
        return true;
    };
    new.bounds_at(now).width_ms() <= policy.max_offset_ms || old.bounds_at(now).width_ms() > policy.max_offset_ms
}

/// Judge node `me`'s clock at `now` against the latest probe of each voter.
pub fn judge(
    policy: &Policy,
    me: NodeId,
    voters: &BTreeSet<NodeId>,
    probes: &BTreeMap<NodeId, Probe>,
    now: Now,
) -> Verdict {
    let fresh = |p: &&Probe| now.mono.since(p.sent_at) <= policy.fresh_for;
    let peers = voters.iter().filter(|v| **v != me).filter_map(|v| probes.get(v)).filter(fresh);
    // This node's own clock is a reading too: exactly zero offset from itself.
    let readings: Vec<OffsetBounds> =
        std::iter::once(OffsetBounds::exact(0)).chain(peers.map(|p| p.bounds_at(now))).collect();
    let (sampled, needed) = (readings.len(), voters.len() / 2 + 1);
    let Some(median) = clock_offset::median(&readings).filter(|_| sampled >= needed) else {
        return Verdict::TooFew { sampled, needed };
    };
    if median.provably_within(policy.max_offset_ms) {
        Verdict::Within { median, sampled }
    } else if let Some(skew) = median.provably_beyond(policy.max_offset_ms) {
        Verdict::Beyond { median, skew, sampled }
    } else {
        Verdict::Unclear { median, sampled }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_700_000_000_000;
    const TEN_MIN: u64 = 600_000;
    const POLICY: Policy = Policy { max_offset_ms: 250, fresh_for: Duration::from_secs(3) };

    /// Wall clock `T + mono` on this node, as if it never stepped.
    fn now_at(mono_ms: u64) -> Now {
        Now { mono: MonoTime(Duration::from_millis(mono_ms)), wall_ms: T + mono_ms }
    }

    /// A probe sent at `mono_ms` (this node's wall clock unstepped), answered after `rtt_ms` by
    /// a peer whose clock is `peer_ahead_ms` ahead of ours, read halfway.
    fn probe(mono_ms: u64, rtt_ms: u64, peer_ahead_ms: i64) -> Probe {
        let send = T + mono_ms;
        Probe {
            sent_at: MonoTime(Duration::from_millis(mono_ms)),
            send_wall_ms: send,
            receive_wall_ms: send + rtt_ms,
            elapsed: Duration::from_millis(rtt_ms),
            remote_ms: (i128::from(send + rtt_ms / 2) + i128::from(peer_ahead_ms)) as u64,
        }
    }

    fn voters(n: u64) -> BTreeSet<NodeId> {
        (1..=n).collect()
    }

    /// Node 1's verdict with one probe per peer (node 2, 3, …) at the given offsets.
    fn judge_offsets(n: u64, peer_ahead_ms: &[i64], at_ms: u64) -> Verdict {
        let probes = (2..).zip(peer_ahead_ms).map(|(id, o)| (id, probe(1_000, 4, *o))).collect();
        judge(&POLICY, 1, &voters(n), &probes, now_at(at_ms))
    }

    /// Goal: the reproduced failure — the node ten minutes fast is proven beyond the bound by
    /// every quorum, and the four good nodes stay within (the fast one cannot move their median).
    #[test]
    fn a_ten_minute_fast_node_is_beyond_and_cannot_move_the_others() {
        let fast = -(TEN_MIN as i64); // every peer is ten minutes behind the fast node
        let verdict = judge_offsets(5, &[fast, fast, fast, fast], 1_010);
        assert!(matches!(verdict, Verdict::Beyond { sampled: 5, .. }), "{verdict}");
        assert!(!verdict.may_lead());
        assert!(verdict.to_string().contains("ahead of the cluster"), "{verdict}");
        // Only two of its peers answered: still a quorum (itself + 2), still beyond.
        assert!(matches!(judge_offsets(5, &[fast, fast], 1_010), Verdict::Beyond { sampled: 3, .. }));
        // A good node sees the fast one among its peers, at any quorum size.
        for peers in [&[TEN_MIN as i64, 3, -2, 0][..], &[TEN_MIN as i64, 3], &[0, TEN_MIN as i64, 5]] {
            let verdict = judge_offsets(5, peers, 1_010);
            assert!(verdict.may_lead(), "{peers:?}: {verdict}");
            let median = verdict.median().expect("a quorum");
            assert!(median.min_ms() >= -10 && median.max_ms() <= 10, "{peers:?}: {median}");
        }
    }

    /// Goal: no proof, no leadership — too few fresh readings, stale probes, or probes too
    /// slow to tell keep a node from leading; an offset of exactly the bound is within.
    #[test]
    fn without_proof_a_node_does_not_lead() {
        assert_eq!(judge_offsets(5, &[0], 1_010), Verdict::TooFew { sampled: 2, needed: 3 });
        assert_eq!(judge_offsets(5, &[0, 0, 0, 0], 4_001), Verdict::TooFew { sampled: 1, needed: 3 }, "stale");
        assert!(judge_offsets(5, &[0, 0], 4_000).may_lead(), "exactly fresh_for old still counts");
        let slow: BTreeMap<_, _> = [(2, probe(1_000, 900, 0)), (3, probe(1_000, 900, 0))].into();
        let verdict = judge(&POLICY, 1, &voters(5), &slow, now_at(2_000));
        assert!(matches!(verdict, Verdict::Unclear { .. }), "a 900 ms round trip cannot prove ±250: {verdict}");
        let edge: BTreeMap<_, _> = [(2, probe(1_000, 0, -250)), (3, probe(1_000, 0, -250))].into();
        assert!(judge(&POLICY, 1, &voters(3), &edge, now_at(1_000)).may_lead(), "exactly the bound is within");
        let past: BTreeMap<_, _> = [(2, probe(1_000, 0, -251)), (3, probe(1_000, 0, -251))].into();
        assert!(matches!(judge(&POLICY, 1, &voters(3), &past, now_at(1_000)), Verdict::Beyond { .. }));
    }

    /// Goal: a slow probe does not replace a sharp fresh one, but replaces a stale or equally
    /// slow one, and any sharp probe replaces whatever was there.
    #[test]
    fn a_slow_probe_does_not_wipe_out_a_sharp_one() {
        let (sharp, slow) = (probe(1_000, 4, 0), probe(1_500, 400, 0));
        let now = now_at(2_000);
        assert!(!replaces(&POLICY, Some(&sharp), &slow, now));
        assert!(replaces(&POLICY, Some(&sharp), &probe(1_500, 3, 0), now));
        assert!(replaces(&POLICY, Some(&slow), &probe(1_600, 300, 0), now), "both too slow: the newer");
        assert!(replaces(&POLICY, Some(&sharp), &slow, now_at(4_001)), "the sharp one went stale");
        assert!(replaces(&POLICY, None, &slow, now));
    }

    /// Goal: single-node and not-yet-configured clusters keep working (this node alone is a
    /// quorum of itself), and a three-node cluster with one node down cannot tell which of
    /// two disagreeing clocks is off: neither leads.
    #[test]
    fn small_clusters() {
        let alone = judge(&POLICY, 1, &voters(1), &BTreeMap::new(), now_at(0));
        assert_eq!(alone, Verdict::Within { median: OffsetBounds::exact(0), sampled: 1 });
        assert!(judge(&POLICY, 1, &BTreeSet::new(), &BTreeMap::new(), now_at(0)).may_lead());
        let two = judge_offsets(3, &[TEN_MIN as i64], 1_010);
        assert!(matches!(two, Verdict::Unclear { sampled: 2, .. }), "{two}");
        let learner_probes = [(9, probe(1_000, 4, 0)), (8, probe(1_000, 4, 0))].into();
        assert!(matches!(
            judge(&POLICY, 1, &voters(5), &learner_probes, now_at(1_010)),
            Verdict::TooFew { sampled: 1, .. }
        ));
    }

    /// Goal: a step of this node's own wall clock after the probes moves every reading by the
    /// step at once (a node whose clock jumps ten minutes is beyond before its next probe);
    /// slow NTP slewing moves them by as little.
    #[test]
    fn an_own_wall_step_carries_the_readings_forward() {
        let probes: BTreeMap<_, _> = (2..=5).map(|id| (id, probe(1_000, 4, 0))).collect();
        let stepped = Now { mono: MonoTime(Duration::from_millis(1_500)), wall_ms: T + 1_500 + TEN_MIN };
        let verdict = judge(&POLICY, 1, &voters(5), &probes, stepped);
        assert!(matches!(verdict, Verdict::Beyond { .. }), "{verdict}");
        let median = verdict.median().expect("a quorum");
        assert!(median.min_ms() >= TEN_MIN as i64 - 10 && median.max_ms() <= TEN_MIN as i64 + 10, "{median}");
        let slewed = Now { mono: MonoTime(Duration::from_millis(2_000)), wall_ms: T + 2_001 };
        assert!(judge(&POLICY, 1, &voters(5), &probes, slewed).may_lead());
    }
}
