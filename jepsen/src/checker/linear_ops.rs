//! The registry ops of a history as the lease-table model reads them: one timed op list per
//! worker ID, with definite failures left out and only indeterminate ones kept open-ended.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};

use crate::checker::wgl::Timed;
use crate::checker::Evidence;
use crate::history::{Invocation, Phase, RegistryFn, RegistryOp, RegistryResult, Rejection};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Input {
    /// `holder`: an index into [`Partitions::holders`].
    Acquire {
        holder: u32,
    },
    Renew {
        token: u64,
    },
    Release {
        token: u64,
    },
    Get,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Output {
    Granted(u64),
    Renewed,
    Released,
    Lease {
        holder: Option<u32>,
        token: u64,
    },
    Rejected(Rejection),
    /// `info` or never completed: it may take effect at any time after its call, or never.
    Unknown,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct LeaseOp {
    pub(super) input: Input,
    pub(super) output: Output,
    pub(super) call_ns: u64,
    pub(super) return_ns: Option<u64>,
    /// Index of the invocation it came from, for evidence.
    pub(super) source: usize,
}

/// The history turned into per-worker-ID op lists.
#[derive(Default)]
pub(super) struct Partitions {
    pub(super) by_worker_id: BTreeMap<u32, Vec<Timed<LeaseOp>>>,
    /// Holder names by index.
    pub(super) holders: Vec<String>,
    /// The holder index standing for every anonymous holder, if there is one.
    pub(super) anonymous: Option<u32>,
    /// Info Acquires of "any free ID": they may have granted an ID we cannot attribute.
    pub(super) unattributed: usize,
    /// Failures that said nothing was applied, left out of the search.
    pub(super) definite_failures: usize,
    pub(super) doubts: Evidence,
}

impl Partitions {
    fn intern(&mut self, holder: &str, index: &mut HashMap<String, u32>) -> u32 {
        *index.entry(holder.to_string()).or_insert_with(|| {
            self.holders.push(holder.to_string());
            u32::try_from(self.holders.len() - 1).unwrap_or(u32::MAX)
        })
    }

    pub(super) fn build(invocations: &[Invocation<'_, RegistryOp>]) -> Partitions {
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
                    // The harness records `fail` only on the registry's word that nothing was
                    // applied (`wire::Reason` NOT_LEADER, NO_QUORUM, ..., or a refusal the model
                    // does not check): such an op did not happen, so it is not searched at all.
                    (Phase::Fail, None | Some(RegistryResult::Rejected { reason: Rejection::Other })) => {
                        parts.definite_failures += 1;
                        continue;
                    }
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
        parts.anonymize();
        parts
    }

    /// Renames every holder whose only op in an ID's history is one Acquire of unknown
    /// outcome to one shared name. Nothing else in that history names such a holder, so the
    /// name changes no step's outcome — the model treats two anonymous holders as different,
    /// as they are — while timeouts of different rounds become alike ([`wgl::Model::class`])
    /// and the search counts them instead of trying every subset.
    ///
    /// [`wgl::Model::class`]: crate::checker::wgl::Model::class
    fn anonymize(&mut self) {
        let mut anonymous = None;
        for ops in self.by_worker_id.values_mut() {
            let mut named: HashMap<u32, usize> = HashMap::new();
            for t in ops.iter() {
                match (t.op.input, t.op.output) {
                    (Input::Acquire { holder }, Output::Unknown) => *named.entry(holder).or_default() += 1,
                    (Input::Acquire { holder }, _) | (_, Output::Lease { holder: Some(holder), .. }) => {
                        *named.entry(holder).or_default() += 2;
                    }
                    _ => {}
                }
            }
            for t in ops.iter_mut() {
                if let (Input::Acquire { holder }, Output::Unknown) = (t.op.input, t.op.output) {
                    if named.get(&holder) == Some(&1) {
                        // Not interned: no recorded holder can share it.
                        let anon = *anonymous.get_or_insert_with(|| {
                            self.holders.push("(anonymous: one Acquire of unknown outcome)".to_string());
                            u32::try_from(self.holders.len() - 1).unwrap_or(u32::MAX)
                        });
                        t.op.input = Input::Acquire { holder: anon };
                    }
                }
            }
        }
        self.anonymous = anonymous;
    }

    pub(super) fn holder_name(&self, holder: u32) -> Option<&str> {
        self.holders.get(holder as usize).map(String::as_str)
    }

    /// How evidence names a recorded op: its completion, or its invoke if it has none.
    pub(super) fn describe(invocations: &[Invocation<'_, RegistryOp>], op: &LeaseOp) -> Value {
        let inv = &invocations[op.source];
        json!(inv.completion.unwrap_or(inv.invoke))
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

/// The tokens an Acquire of unknown outcome by each holder may have been granted, ascending:
/// every token the ID's history mentions except those an ok Acquire of *another* holder was
/// granted. A token is granted fresh at most once (the model's token only grows, and a fresh
/// grant needs it below the new one), and an ok grant of `t` to `h'` needs `t` granted fresh
/// to `h'`; so a guess of `t` for holder `h` could never be part of a linearization. Leaving
/// those out keeps a timed-out Acquire from branching on every token of a long history.
pub(super) fn unknown_grant_tokens(ops: &[Timed<LeaseOp>]) -> HashMap<u32, Vec<u64>> {
    let mut mentioned: Vec<u64> = Vec::new();
    let mut granted_to: HashMap<u64, Vec<u32>> = HashMap::new();
    for t in ops {
        if let Input::Renew { token } | Input::Release { token } = t.op.input {
            mentioned.push(token);
        }
        match (t.op.input, t.op.output) {
            (Input::Acquire { holder }, Output::Granted(token)) => {
                mentioned.push(token);
                granted_to.entry(token).or_default().push(holder);
            }
            (_, Output::Lease { token, .. }) => mentioned.push(token),
            _ => {}
        }
    }
    mentioned.sort_unstable();
    mentioned.dedup();
    let mut by_holder: HashMap<u32, Vec<u64>> = HashMap::new();
    for t in ops {
        if let (Input::Acquire { holder }, Output::Unknown) = (t.op.input, t.op.output) {
            by_holder.entry(holder).or_insert_with(|| {
                let others = |token: &u64| granted_to.get(token).is_some_and(|hs| hs.iter().any(|&h| h != holder));
                mentioned.iter().copied().filter(|t| !others(t)).collect()
            });
        }
    }
    by_holder
}
