//! Registry linearizability: the recorded Acquire / Renew / Release / GetLease calls must be
//! explainable by one sequential lease table, in an order consistent with real time.
//!
//! The model, per worker ID (leases of different IDs are independent, so the history is
//! split per ID and each part searched alone — P-compositionality): `{holder, token}`,
//! initially free with token 0.
//! - `acquire(h)`: held by `h` → ok with the same token (a retried Acquire returns its
//!   lease); free → ok with a larger token; held by another → `already_held`, or, if
//!   [`Expiry`] allows, ok with a larger token (the lease expired and was re-granted).
//! - `renew(t)`: ok iff `t` is the current token and the ID is held; else `fenced` (other
//!   token) or `expired` (same token, released). Expiry alone does not fail a renewal: the
//!   registry re-grants an expired lease only on an Acquire, and until then it renews.
//! - `release(t)`: ok iff `t` is the current token (again ok when already released), else
//!   `fenced`. `get` → `(holder, token)`.
//!
//! Time is what the model cannot see: the real registry expires a lease after `ttl +
//! cool_down` without any op. [`Expiry::Never`] forbids that (for runs that keep every lease
//! renewed); [`Expiry::Anytime`] allows it at any point (sound, weakest);
//! [`Expiry::AfterIdle`] allows it only if the Acquire returned at least `min_idle_ns` after
//! the call of the op that last granted or renewed the lease — a renewal commits no earlier
//! than its call and a re-grant no later than the Acquire's return, and the registry waits
//! `ttl + cool_down` between them, so set `min_idle_ns` to that minus clock slack.
//!
//! Outcomes: `info` (or never returned) may have taken effect at any time after the call or
//! not at all; a `fail` without a lease rejection did not happen and is dropped (the harness
//! records `fail` only on the registry's word that nothing was applied); rejections other
//! than `already_held` / `fenced` / `expired` are not modelled and dropped. An info Acquire's
//! unknown token is one never seen, or a token of that ID's history that no ok Acquire of
//! another holder got ([`ops::unknown_grant_tokens`]).
//! The registry workload must use worker IDs no generator worker uses, and one holder name
//! per worker ID (the registry refuses a holder a second ID, a rule that spans IDs: that
//! refusal is `other`, unmodelled, so it does not tie IDs together; an Acquire of "any free
//! ID" with an unknown outcome does, and turns a violation into Unknown).
//!
//! The search ([`wgl`]) carries every state the history may be in across each quiescent
//! point of an ID's history, so a long history costs the sum of its segments, not their
//! product; the step budget is per segment, and an exhausted one is named (worker ID, time
//! range, op count), and the ID's check starts again at its next lone read. Entry point:
//! [`check`], a pure function of the events (no clock, no IO).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::checker::wgl::{self, SegmentInfo};
use crate::checker::{CheckResult, Evidence, Valid};
use crate::history::{self, Event, Rejection};

#[path = "linear_ops.rs"]
mod ops;

use ops::{Input, LeaseOp, Output, Partitions};

pub const NAME: &str = "registry-linearizable";

/// When the model lets a held lease pass to another holder without a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum Expiry {
    Never,
    Anytime,
    AfterIdle { min_idle_ns: u64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub expiry: Expiry,
    /// Model steps allowed per segment (the ops between two quiescent points of one worker
    /// ID's history) before that ID answers Unknown. A step budget, not a time budget, so the
    /// verdict is the same on any machine.
    pub max_steps_per_segment: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config { expiry: Expiry::Anytime, max_steps_per_segment: 2_000_000 }
    }
}

/// A token in the model: one seen in the history, or the unseen result of an info Acquire
/// (only known to be above the previous token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Tok {
    Known(u64),
    Unseen { above: u64 },
}

impl Tok {
    fn is(self, t: u64) -> bool {
        self == Tok::Known(t)
    }

    /// Whether `t` may be a later grant's token.
    fn below(self, t: u64) -> bool {
        match self {
            Tok::Known(k) | Tok::Unseen { above: k } => k < t,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LeaseState {
    holder: Option<u32>,
    token: Tok,
    /// Call time of the op that last granted or renewed; 0 unless [`Expiry::AfterIdle`] needs
    /// it (a field that never varies costs the memoization nothing).
    renewed_ns: u64,
}

struct LeaseModel {
    expiry: Expiry,
    /// The one name of every holder whose only op is one Acquire of unknown outcome
    /// ([`ops::anonymize`]): such holders are all different, so a lease held under this name
    /// is never the requester's own.
    anonymous: Option<u32>,
    /// Per holder of an info Acquire: the known tokens it may have been granted, ascending.
    unknown_grant_tokens: HashMap<u32, Vec<u64>>,
}

impl LeaseModel {
    fn expiry_allows(&self, state: &LeaseState, op: &LeaseOp) -> bool {
        match self.expiry {
            Expiry::Never => false,
            Expiry::Anytime => true,
            Expiry::AfterIdle { min_idle_ns } => {
                op.return_ns.is_none_or(|r| r.saturating_sub(state.renewed_ns) >= min_idle_ns)
            }
        }
    }

    /// Whether `holder` holds the lease in `state` (an Acquire by it is then a retry).
    fn holds(&self, state: &LeaseState, holder: u32) -> bool {
        state.holder == Some(holder) && self.anonymous != Some(holder)
    }

    fn touched(&self, state: &LeaseState, op: &LeaseOp) -> LeaseState {
        let renewed_ns = if matches!(self.expiry, Expiry::AfterIdle { .. }) { op.call_ns } else { 0 };
        LeaseState { renewed_ns, ..state.clone() }
    }

    fn granted(&self, holder: u32, token: Tok, op: &LeaseOp) -> LeaseState {
        self.touched(&LeaseState { holder: Some(holder), token, renewed_ns: 0 }, op)
    }
}

impl wgl::Model for LeaseModel {
    type State = LeaseState;
    type Op = LeaseOp;
    /// Ops alike in call and outcome step alike, but for [`Expiry::AfterIdle`], which reads
    /// the call time.
    type Class = (Input, Output, u64);

    fn class(&self, op: &LeaseOp) -> (Input, Output, u64) {
        let call_ns = if matches!(self.expiry, Expiry::AfterIdle { .. }) { op.call_ns } else { 0 };
        (op.input, op.output, call_ns)
    }

    /// A read shows holder and token; when the lease was last renewed it does not, so the
    /// loosest value stands in (0: idle since the start, any re-grant allowed).
    fn pins(&self, op: &LeaseOp) -> Option<LeaseState> {
        match (op.input, op.output) {
            (Input::Get, Output::Lease { holder, token }) => {
                Some(LeaseState { holder, token: Tok::Known(token), renewed_ns: 0 })
            }
            _ => None,
        }
    }

    fn step(&self, s: &LeaseState, op: &LeaseOp, next: &mut Vec<LeaseState>) {
        let held_by_other = |h: u32| s.holder.is_some() && !self.holds(s, h);
        match (op.input, op.output) {
            (Input::Acquire { holder }, Output::Granted(t)) => {
                let fresh = s.holder.is_none() || (held_by_other(holder) && self.expiry_allows(s, op));
                if self.holds(s, holder) && s.token.is(t) {
                    next.push(self.touched(s, op));
                } else if fresh && s.token.below(t) {
                    next.push(self.granted(holder, Tok::Known(t), op));
                }
            }
            (Input::Acquire { holder }, Output::Rejected(Rejection::AlreadyHeld)) if held_by_other(holder) => {
                next.push(s.clone());
            }
            (Input::Acquire { holder }, Output::Unknown) => {
                next.push(s.clone());
                if self.holds(s, holder) {
                    next.push(self.touched(s, op));
                } else if s.holder.is_none() || self.expiry_allows(s, op) {
                    let known = self.unknown_grant_tokens.get(&holder).map_or(&[][..], Vec::as_slice);
                    let above = known.iter().filter(|&&t| s.token.below(t));
                    next.extend(above.map(|&t| self.granted(holder, Tok::Known(t), op)));
                    let floor = match s.token {
                        Tok::Known(k) | Tok::Unseen { above: k } => k,
                    };
                    next.push(self.granted(holder, Tok::Unseen { above: floor }, op));
                }
            }
            (Input::Renew { token }, output) => {
                let current = s.token.is(token);
                let ok = current && s.holder.is_some();
                match output {
                    Output::Renewed if ok => next.push(self.touched(s, op)),
                    Output::Rejected(Rejection::Fenced) if !current => next.push(s.clone()),
                    Output::Rejected(Rejection::Expired) if current && s.holder.is_none() => next.push(s.clone()),
                    Output::Unknown => {
                        next.push(s.clone());
                        if ok {
                            next.push(self.touched(s, op));
                        }
                    }
                    _ => {}
                }
            }
            (Input::Release { token }, output) => {
                let current = s.token.is(token);
                let released = LeaseState { holder: None, ..s.clone() };
                match output {
                    Output::Released if current => next.push(released),
                    Output::Rejected(Rejection::Fenced) if !current => next.push(s.clone()),
                    Output::Unknown => {
                        next.push(s.clone());
                        if current {
                            next.push(released);
                        }
                    }
                    _ => {}
                }
            }
            (Input::Get, Output::Lease { holder, token }) if s.holder == holder && s.token.is(token) => {
                next.push(s.clone());
            }
            _ => {}
        }
    }
}

fn describe_state(parts: &Partitions, s: &LeaseState) -> Value {
    let token = match s.token {
        Tok::Known(t) => json!(t),
        Tok::Unseen { above } => json!(format!("unseen, above {above}")),
    };
    json!({"holder": s.holder.and_then(|h| parts.holder_name(h)), "token": token})
}

fn describe_segment(worker_id: u32, segment: &SegmentInfo) -> Value {
    json!({
        "worker_id": worker_id,
        "segment": segment.index,
        "from_ns": segment.from_ns,
        "to_ns": segment.to_ns,
        "ops": segment.ops,
        "open_ops": segment.open_ops,
        "steps": segment.steps,
    })
}

/// Checks the registry ops of a history against the lease-table model: each worker ID on
/// its own, each ID's history segment by segment.
pub fn check(events: &[Event], config: &Config) -> CheckResult {
    let invocations = history::registry_ops(events);
    let mut parts = Partitions::build(&invocations);
    let mut doubts = std::mem::take(&mut parts.doubts);
    let mut violations = Evidence::default();
    let (mut exhausted, mut segments, mut max_steps) = (0usize, 0usize, 0u64);
    for (&worker_id, ops) in &parts.by_worker_id {
        let model = LeaseModel {
            expiry: config.expiry,
            anonymous: parts.anonymous,
            unknown_grant_tokens: ops::unknown_grant_tokens(ops),
        };
        let init = LeaseState { holder: None, token: Tok::Known(0), renewed_ns: 0 };
        let outcome = wgl::search(&model, init, ops, config.max_steps_per_segment);
        segments += outcome.segments;
        max_steps = max_steps.max(outcome.max_steps);
        exhausted += outcome.exhausted.len();
        for segment in &outcome.exhausted {
            let mut item = describe_segment(worker_id, segment);
            item["doubt"] = json!("search budget exhausted in this segment; this ID's ops after it are unchecked up to the next read that is a segment of its own");
            doubts.push(item);
        }
        if let Some(stuck) = outcome.illegal {
            let mut item = describe_segment(worker_id, &stuck.segment);
            item["violation"] = json!("not-linearizable");
            item["possible_states"] = stuck.states.iter().map(|s| describe_state(&parts, s)).collect();
            item["recent_ops"] = stuck.recent.iter().map(|&i| Partitions::describe(&invocations, &ops[i].op)).collect();
            item["cannot_linearize"] = Partitions::describe(&invocations, &ops[stuck.blocked].op);
            violations.push(item);
        }
    }

    let total: usize = parts.by_worker_id.values().map(Vec::len).sum();
    let counts = format!(
        "{total} registry ops on {} worker IDs in {segments} segments ({exhausted} out of budget, most steps in one: {max_steps}), {} definite failures left out, expiry {:?}",
        parts.by_worker_id.len(),
        parts.definite_failures,
        config.expiry
    );
    let (valid, summary, evidence) = if violations.total() > 0 && parts.unattributed > 0 {
        let why = format!(
            "{} worker IDs not linearizable, but {} Acquires of any ID had unknown outcomes and may explain it; {counts}",
            violations.total(),
            parts.unattributed
        );
        (Valid::Unknown, why, violations)
    } else if violations.total() > 0 {
        (Valid::False, format!("{} worker IDs not linearizable; {counts}", violations.total()), violations)
    } else if doubts.total() > 0 {
        let why = format!("{} doubts; {counts}", doubts.total());
        (Valid::Unknown, why, doubts)
    } else if total == 0 {
        (Valid::True, "not exercised: no registry ops in this history".to_string(), violations)
    } else {
        (Valid::True, format!("linearizable: {counts}"), violations)
    };
    CheckResult { name: NAME.to_string(), valid, summary, evidence: evidence.into_items() }
}

#[cfg(test)]
#[path = "linear_tests.rs"]
mod tests;
