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
//! not at all; a `fail` without a lease rejection did not happen and is dropped; rejections
//! other than `already_held` / `fenced` / `expired` are not modelled and dropped. An info
//! Acquire's unknown token is any token seen in that ID's history, or one never seen.
//! The registry workload must use worker IDs no generator worker uses, and one holder name
//! per worker ID (the registry refuses a holder a second ID, a rule that spans IDs).
//!
//! Cost: the search is exponential in the worst case, mostly in Acquires of unknown outcome
//! (each may have taken effect at any later point). Measured on this crate's debug build with
//! 3 clients per ID and 3% timeouts: a few thousand ops per ID check in seconds when valid,
//! but proving a violation deep in a 1,000-op ID history can exhaust the default budget
//! (Unknown). So, as Jepsen's independent-keys workloads do, move the registry workload to a
//! fresh worker ID every few hundred ops.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::checker::wgl::{self, Budget, Timed};
use crate::checker::{CheckResult, Evidence, Valid};
use crate::history::{self, Event, Invocation, Phase, RegistryFn, RegistryOp, RegistryResult, Rejection};

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
    /// Search steps allowed per worker ID before answering Unknown.
    pub max_steps: u64,
    /// Wall time allowed for the whole check before answering Unknown.
    pub time_budget_ms: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config { expiry: Expiry::Anytime, max_steps: 5_000_000, time_budget_ms: 60_000 }
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    Acquire { holder: u32 },
    Renew { token: u64 },
    Release { token: u64 },
    Get,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    Granted(u64),
    Renewed,
    Released,
    Lease { holder: Option<u32>, token: u64 },
    Rejected(Rejection),
    Unknown,
}

#[derive(Debug, Clone, Copy)]
struct LeaseOp {
    input: Input,
    output: Output,
    call_ns: u64,
    return_ns: Option<u64>,
    /// Index of the invocation it came from, for evidence.
    source: usize,
}

struct LeaseModel<'a> {
    expiry: Expiry,
    /// Every token seen in this worker ID's history, ascending: what an info Acquire's token
    /// may have been.
    observed: &'a [u64],
}

impl LeaseModel<'_> {
    fn expiry_allows(&self, state: &LeaseState, op: &LeaseOp) -> bool {
        match self.expiry {
            Expiry::Never => false,
            Expiry::Anytime => true,
            Expiry::AfterIdle { min_idle_ns } => {
                op.return_ns.is_none_or(|r| r.saturating_sub(state.renewed_ns) >= min_idle_ns)
            }
        }
    }

    fn touched(&self, state: &LeaseState, op: &LeaseOp) -> LeaseState {
        let renewed_ns = if matches!(self.expiry, Expiry::AfterIdle { .. }) { op.call_ns } else { 0 };
        LeaseState { renewed_ns, ..state.clone() }
    }

    fn granted(&self, holder: u32, token: Tok, op: &LeaseOp) -> LeaseState {
        self.touched(&LeaseState { holder: Some(holder), token, renewed_ns: 0 }, op)
    }
}

impl wgl::Model for LeaseModel<'_> {
    type State = LeaseState;
    type Op = LeaseOp;

    fn step(&self, s: &LeaseState, op: &LeaseOp, next: &mut Vec<LeaseState>) {
        let held_by_other = |h: u32| s.holder.is_some_and(|x| x != h);
        match (op.input, op.output) {
            (Input::Acquire { holder }, Output::Granted(t)) => {
                let fresh = s.holder.is_none() || (held_by_other(holder) && self.expiry_allows(s, op));
                if s.holder == Some(holder) && s.token.is(t) {
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
                if s.holder == Some(holder) {
                    next.push(self.touched(s, op));
                } else if s.holder.is_none() || self.expiry_allows(s, op) {
                    let above = self.observed.iter().filter(|&&t| s.token.below(t));
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

/// The history turned into per-worker-ID op lists.
#[derive(Default)]
struct Partitions {
    by_worker_id: BTreeMap<u32, Vec<Timed<LeaseOp>>>,
    holders: Vec<String>,
    /// Info Acquires of "any free ID": they may have granted an ID we cannot attribute.
    unattributed: usize,
    doubts: Evidence,
}

impl Partitions {
    fn intern(&mut self, holder: &str, index: &mut HashMap<String, u32>) -> u32 {
        *index.entry(holder.to_string()).or_insert_with(|| {
            self.holders.push(holder.to_string());
            u32::try_from(self.holders.len() - 1).unwrap_or(u32::MAX)
        })
    }

    fn build(invocations: &[Invocation<'_, RegistryOp>]) -> Partitions {
        let mut parts = Partitions::default();
        let mut index = HashMap::new();
        for (source, inv) in invocations.iter().enumerate() {
            let done = inv.completion.filter(|c| c.phase != Phase::Info);
            let granted_id = match done.and_then(|c| c.result.as_ref()) {
                Some(RegistryResult::Granted { worker_id, .. }) => Some(*worker_id),
                _ => None,
            };
            let Some(worker_id) = inv.invoke.worker_id.or(granted_id) else {
                parts.unattributed += usize::from(done.is_none());
                continue;
            };
            let input = match (inv.invoke.f, inv.invoke.holder.as_deref(), inv.invoke.token) {
                (RegistryFn::Acquire, Some(h), _) => Input::Acquire { holder: parts.intern(h, &mut index) },
                (RegistryFn::Renew, _, Some(token)) => Input::Renew { token },
                (RegistryFn::Release, _, Some(token)) => Input::Release { token },
                (RegistryFn::Get, _, _) => Input::Get,
                _ => {
                    parts.doubts.push(json!({"doubt": "op lacks its holder or token", "op": inv.invoke}));
                    continue;
                }
            };
            let output = match done {
                None => Output::Unknown,
                Some(c) => match (c.phase, &c.result) {
                    (Phase::Ok, Some(RegistryResult::Granted { token, .. })) => Output::Granted(*token),
                    (Phase::Ok, Some(RegistryResult::Renewed { token }))
                        if input == (Input::Renew { token: *token }) =>
                    {
                        Output::Renewed
                    }
                    (Phase::Ok, Some(RegistryResult::Released)) => Output::Released,
                    (Phase::Ok, Some(RegistryResult::Lease { holder, token })) => {
                        let holder = holder.as_deref().map(|h| parts.intern(h, &mut index));
                        Output::Lease { holder, token: *token }
                    }
                    (Phase::Fail, None | Some(RegistryResult::Rejected { reason: Rejection::Other })) => continue,
                    (Phase::Fail, Some(RegistryResult::Rejected { reason }))
                        if rejection_fits(inv.invoke.f, *reason) =>
                    {
                        Output::Rejected(*reason)
                    }
                    _ => {
                        parts.doubts.push(json!({"doubt": "completion does not fit the call", "op": c}));
                        continue;
                    }
                },
            };
            // A read with an unknown answer constrains nothing.
            if input == Input::Get && output == Output::Unknown {
                continue;
            }
            let op = LeaseOp { input, output, call_ns: inv.invoke_ns(), return_ns: done.map(|c| c.time_ns), source };
            let timed = Timed { call_ns: op.call_ns, return_ns: op.return_ns, op };
            parts.by_worker_id.entry(worker_id).or_default().push(timed);
        }
        parts
    }

    fn describe_state(&self, s: &LeaseState) -> Value {
        let token = match s.token {
            Tok::Known(t) => json!(t),
            Tok::Unseen { above } => json!(format!("unseen, above {above}")),
        };
        json!({"holder": s.holder.and_then(|h| self.holders.get(h as usize)), "token": token})
    }
}

/// Whether the registry can refuse `f` for `reason` at all; anything else is a harness
/// mislabel, not the registry's fault.
fn rejection_fits(f: RegistryFn, reason: Rejection) -> bool {
    matches!(
        (f, reason),
        (RegistryFn::Acquire, Rejection::AlreadyHeld)
            | (RegistryFn::Renew, Rejection::Fenced | Rejection::Expired)
            | (RegistryFn::Release, Rejection::Fenced)
    )
}

/// Tokens an ID's history mentions, ascending.
fn observed_tokens(ops: &[Timed<LeaseOp>]) -> Vec<u64> {
    let mut tokens: Vec<u64> = ops
        .iter()
        .flat_map(|t| {
            let from_input = match t.op.input {
                Input::Renew { token } | Input::Release { token } => Some(token),
                _ => None,
            };
            let from_output = match t.op.output {
                Output::Granted(token) | Output::Lease { token, .. } => Some(token),
                _ => None,
            };
            [from_input, from_output]
        })
        .flatten()
        .collect();
    tokens.sort_unstable();
    tokens.dedup();
    tokens
}

/// Checks the registry ops of a history against the lease-table model.
pub fn check(events: &[Event], config: &Config) -> CheckResult {
    let invocations = history::registry_ops(events);
    let mut parts = Partitions::build(&invocations);
    let mut doubts = std::mem::take(&mut parts.doubts);
    let deadline = Instant::now() + Duration::from_millis(config.time_budget_ms);
    let mut violations = Evidence::default();
    let mut exhausted = 0usize;
    let describe = |op: &LeaseOp| json!(invocations[op.source].completion.unwrap_or(invocations[op.source].invoke));
    for (&worker_id, ops) in &parts.by_worker_id {
        let observed = observed_tokens(ops);
        let model = LeaseModel { expiry: config.expiry, observed: &observed };
        let init = LeaseState { holder: None, token: Tok::Known(0), renewed_ns: 0 };
        match wgl::search(&model, init, ops, Budget { max_steps: config.max_steps, deadline }) {
            wgl::Outcome::Linearizable => {}
            wgl::Outcome::Illegal(stuck) => {
                let tail = stuck.prefix.iter().rev().take(8).rev().map(|&i| describe(&ops[i].op)).collect::<Vec<_>>();
                violations.push(json!({
                    "violation": "not-linearizable",
                    "worker_id": worker_id,
                    "linearized_ops": stuck.prefix.len(),
                    "ops": ops.len(),
                    "state_after_prefix": parts.describe_state(&stuck.state),
                    "prefix_tail": tail,
                    "cannot_linearize_before_return_of": describe(&ops[stuck.blocked].op),
                }));
            }
            wgl::Outcome::Exhausted(steps) => {
                exhausted += 1;
                doubts.push(json!({"doubt": "search budget exhausted", "worker_id": worker_id, "steps": steps}));
            }
        }
    }

    let total: usize = parts.by_worker_id.values().map(Vec::len).sum();
    let counts = format!("{total} registry ops on {} worker IDs, expiry {:?}", parts.by_worker_id.len(), config.expiry);
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
        let why = format!("{} doubts ({exhausted} searches out of budget); {counts}", doubts.total());
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
