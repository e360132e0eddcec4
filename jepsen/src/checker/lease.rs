//! Lease fencing, per worker ID: one process per token, tokens increasing within a
//! process, successive leases disjoint in minted timestamps, and no ID minted at or after the
//! deadline of the lease it was minted under.
//!
//! What the design guarantees, and so what is checked: a new token's `not_before` is at or
//! past every `mint_until` the previous token of that worker ID was told, and a process
//! never stamps an ID at or past its own `mint_until` nor mints after its own deadline. So
//! successive leases are disjoint in *minted timestamps*, always — that is what uniqueness
//! rests on (docs/design.md), and it is checked strictly. They need not be disjoint in *real
//! time*: a holder's new incarnation (a restart, or a copy of its state dir) takes its lease
//! over at once under a new token while the previous process, dead, SIGSTOPped or still
//! running until its next renewal is told SUPERSEDED, may hold its deadline for up to a TTL;
//! and a worker ID given up that way is free at once with its high-water mark kept. A
//! real-time overlap is therefore counted (the summary says how many, as proof that takeovers
//! were exercised), never a violation by itself.
//!
//! What the history tells about a lease `L = (worker ID, token)`, all on the harness clock:
//! - `granted_by(L)`: an upper bound of when it was granted — the earliest lease event of `L`
//!   or completion of an ok op minted under it.
//! - `served_at(L)`: a lower bound of when it last had authority — the latest `acquired` /
//!   `renewed` / `resumed` / `restated` event whose deadline was still ahead (worker wall clock), or invoke
//!   of an ok op minted under it (the mint happened at or after the invoke).
//! - `end(L)`: `served_at(L)`, or the worker's deadline on the harness clock
//!   (`deadline_mono_ns`) if later — unless `L` was `released`: the holder gave it up before
//!   its deadline and the registry may re-grant at once, possibly before the worker logged
//!   the release, so only actual use bounds a released lease.
//!
//! For tokens `t1 < t2` of one worker ID, every timestamp minted under `L1` must be below
//! every one minted under `L2` (`mint-windows-overlap`), whenever each was minted;
//! `granted_by(L2) < end(L1)` is a real-time overlap (counted).
//!
//! The deadline check: an ok op is attributed to the `(worker_id, token)` it carries, else to
//! its worker process's latest lease event at or before its completion (ambiguous, hence
//! Unknown, if the lease changed while it ran). The deadline it had to respect is the one
//! stated by the latest event of that lease at or before the op's completion — a worker
//! extends its deadline only when a renewal commits and logs it then, so nothing later can
//! have licensed the mint. No such event: Unknown for that op, never valid. Caveat: IDs and
//! `deadline_wall_ms` are both on the worker's wall clock; after a *forward* wall-clock step
//! the old wall-clock deadline understates the real one until the next renewal, so clock-step
//! scenarios must re-express deadlines after the step.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use crate::checker::lease_log::LeaseLog;
use crate::checker::{describe_op, CheckResult, Evidence, IdLayout, Valid};
use crate::history::{self, ClientOp, Event, Invocation, LeaseEvent, LeaseEventKind, Phase};

pub const NAME: &str = "lease-fencing";

/// A lease: (worker ID, token).
type LeaseKey = (u32, u64);

/// What the history shows about one lease.
#[derive(Debug, Default)]
struct LeaseFacts<'a> {
    holders: BTreeSet<&'a str>,
    granted_by_ns: Option<u64>,
    served_at_ns: Option<u64>,
    deadline_mono_ns: Option<u64>,
    released: bool,
    /// Smallest and largest timestamp (ms since the Unix epoch) minted under it.
    minted_ts: Option<(u64, u64)>,
}

impl LeaseFacts<'_> {
    fn saw_granted_by(&mut self, t: u64) {
        self.granted_by_ns = Some(self.granted_by_ns.map_or(t, |g| g.min(t)));
    }

    fn saw_serving_at(&mut self, t: u64) {
        self.served_at_ns = Some(self.served_at_ns.map_or(t, |s| s.max(t)));
    }

    /// The end of its authority at the latest (ns, harness clock).
    fn end(&self) -> Option<u64> {
        let deadline = self.deadline_mono_ns.filter(|_| !self.released);
        self.served_at_ns.max(deadline)
    }

    fn describe(&self, (worker_id, token): LeaseKey) -> Value {
        json!({
            "worker_id": worker_id,
            "token": token,
            "holders": self.holders,
            "granted_by_ns": self.granted_by_ns,
            "served_at_ns": self.served_at_ns,
            "deadline_mono_ns": self.deadline_mono_ns,
            "minted_ts_ms": self.minted_ts,
        })
    }
}

/// Checks fencing and deadlines from lease events and ok client ops.
pub fn check(events: &[Event], layout: &IdLayout) -> CheckResult {
    let log = LeaseLog::new(events);
    let ops = history::client_ops(events);
    let mut evidence = Evidence::default();
    let mut leases: BTreeMap<LeaseKey, LeaseFacts> = BTreeMap::new();
    for event in history::lease_events(events) {
        record_event(leases.entry((event.worker_id, event.token)).or_default(), event);
    }
    for worker in log.workers() {
        check_process_tokens(log.events(worker), &mut evidence);
    }

    let mut deadline_checked = 0usize;
    let mut unknown = Evidence::default();
    for op in ops.iter().filter(|op| op.outcome() == Phase::Ok && !op.ranges().is_empty()) {
        let Some(lease) = attribute(op, &log) else {
            unknown.push(json!({"doubt": "no lease known for this op", "op": describe_op(op)}));
            continue;
        };
        let ts = record_op(leases.entry(lease).or_default(), op, layout);
        check_worker_id_field(op, lease.0, layout, &mut evidence);
        let Some(complete_ns) = op.complete_ns() else { continue };
        match log.deadline_at(&op.invoke.worker, Some(lease.1), complete_ns) {
            Some(known) => {
                deadline_checked += 1;
                check_deadline(op, ts, known, &mut evidence);
            }
            None => unknown.push(json!({"doubt": "no deadline known for this op's lease", "op": describe_op(op)})),
        }
    }
    let overlaps = check_successions(&leases, &mut evidence);

    let counts = format!(
        "{} leases on {} worker IDs ({overlaps} began before the older lease's end: takeovers, minted timestamps \
         disjoint); {deadline_checked} ok ops checked against their deadline",
        leases.len(),
        leases.keys().map(|k| k.0).collect::<BTreeSet<_>>().len()
    );
    let (valid, summary, evidence) = if evidence.total() > 0 {
        (Valid::False, format!("{} fencing violations; {counts}", evidence.total()), evidence)
    } else if unknown.total() > 0 {
        (Valid::Unknown, format!("{} ok ops without a known lease deadline; {counts}", unknown.total()), unknown)
    } else if leases.is_empty() {
        (Valid::Unknown, "no lease events and no ok ops: nothing to check".to_string(), evidence)
    } else {
        (Valid::True, format!("fenced: {counts}"), evidence)
    };
    CheckResult { name: NAME.to_string(), valid, summary, evidence: evidence.into_items() }
}

fn record_event<'a>(facts: &mut LeaseFacts<'a>, event: &'a LeaseEvent) {
    facts.holders.insert(&event.worker);
    facts.saw_granted_by(event.time_ns);
    let grants_authority = matches!(
        event.event,
        LeaseEventKind::Acquired | LeaseEventKind::Renewed | LeaseEventKind::Resumed | LeaseEventKind::Restated
    );
    // An acquire answered after its deadline passed (a long-delayed reply) grants nothing.
    if grants_authority && event.deadline_wall_ms.is_some_and(|d| event.wall_ms < d) {
        facts.saw_serving_at(event.time_ns);
    }
    if let Some(d) = event.deadline_mono_ns {
        facts.deadline_mono_ns = Some(facts.deadline_mono_ns.map_or(d, |m| m.max(d)));
    }
    facts.released |= event.event == LeaseEventKind::Released;
}

/// Records an ok op under its lease; returns the largest timestamp it minted.
fn record_op<'a>(facts: &mut LeaseFacts<'a>, op: &Invocation<'a, ClientOp>, layout: &IdLayout) -> Option<u64> {
    let (min_id, max_id) = op.id_bounds()?;
    let (lo, hi) = (layout.timestamp_ms(min_id), layout.timestamp_ms(max_id));
    facts.minted_ts = Some(facts.minted_ts.map_or((lo, hi), |(a, b)| (a.min(lo), b.max(hi))));
    facts.holders.insert(&op.invoke.worker);
    facts.saw_serving_at(op.invoke_ns());
    if let Some(done) = op.complete_ns() {
        facts.saw_granted_by(done);
    }
    Some(hi)
}

/// The lease an ok op minted under: the one it carries, else its worker's current lease if
/// that did not change while the op ran.
fn attribute(op: &Invocation<'_, ClientOp>, log: &LeaseLog) -> Option<LeaseKey> {
    let done = op.completion?;
    if let (Some(w), Some(t)) = (done.worker_id, done.token) {
        return Some((w, t));
    }
    let at_end = log.latest_at(&op.invoke.worker, None, done.time_ns)?;
    let at_start = log.latest_at(&op.invoke.worker, None, op.invoke_ns());
    if at_start.is_some_and(|s| (s.worker_id, s.token) != (at_end.worker_id, at_end.token)) {
        return None;
    }
    Some((at_end.worker_id, at_end.token))
}

/// Every ID must carry the worker ID of the lease it was minted under.
fn check_worker_id_field(op: &Invocation<'_, ClientOp>, worker_id: u32, layout: &IdLayout, evidence: &mut Evidence) {
    let wrong = op
        .ranges()
        .iter()
        .flat_map(|r| [Some(r.first), r.last()])
        .flatten()
        .find(|&id| layout.worker_id(id) != worker_id);
    if let Some(id) = wrong {
        evidence.push(json!({
            "violation": "wrong-worker-id",
            "id": id,
            "id_worker_id": layout.worker_id(id),
            "lease_worker_id": worker_id,
            "op": describe_op(op),
        }));
    }
}

fn check_deadline(op: &Invocation<'_, ClientOp>, max_ts: Option<u64>, known: &LeaseEvent, evidence: &mut Evidence) {
    let (Some(ts), Some(deadline)) = (max_ts, known.deadline_wall_ms) else { return };
    if ts >= deadline {
        evidence.push(json!({
            "violation": "minted-after-deadline",
            "max_ts_ms": ts,
            "deadline_wall_ms": deadline,
            "late_by_ms": ts - deadline,
            "deadline_from": {"event": known.event, "time_ns": known.time_ns},
            "op": describe_op(op),
        }));
    }
}

/// A worker process never goes back to an older token of the same worker ID, and one
/// token belongs to one process (checked across processes in `check_successions`).
fn check_process_tokens(events: &[&LeaseEvent], evidence: &mut Evidence) {
    let mut latest: BTreeMap<u32, &LeaseEvent> = BTreeMap::new();
    for &event in events {
        if let Some(prev) = latest.insert(event.worker_id, event) {
            if event.token < prev.token {
                evidence.push(json!({
                    "violation": "token-went-down",
                    "worker": event.worker,
                    "worker_id": event.worker_id,
                    "from": {"token": prev.token, "time_ns": prev.time_ns},
                    "to": {"token": event.token, "time_ns": event.time_ns},
                }));
            }
        }
    }
}

/// Per worker ID, in token order: one process per token, and each lease's minted timestamps
/// above every older lease's. Returns how many leases began before an older one's end (real
/// time overlaps: allowed, see the module docs).
fn check_successions(leases: &BTreeMap<LeaseKey, LeaseFacts>, evidence: &mut Evidence) -> usize {
    // Per worker ID, the latest end of the older leases, and the older lease with the latest mint.
    let mut latest_end: BTreeMap<u32, u64> = BTreeMap::new();
    let mut latest_mint: BTreeMap<u32, (u64, LeaseKey)> = BTreeMap::new();
    let mut real_time_overlaps = 0;
    for (&key, facts) in leases {
        if facts.holders.len() > 1 {
            evidence.push(json!({"violation": "token-shared", "lease": facts.describe(key)}));
        }
        if let (Some(granted_by), Some(&end)) = (facts.granted_by_ns, latest_end.get(&key.0)) {
            real_time_overlaps += usize::from(granted_by < end);
        }
        if let (Some((min_ts, _)), Some(&(max_ts, older))) = (facts.minted_ts, latest_mint.get(&key.0)) {
            if min_ts <= max_ts {
                evidence.push(json!({
                    "violation": "mint-windows-overlap",
                    "older": leases[&older].describe(older),
                    "newer": facts.describe(key),
                }));
            }
        }
        if let Some(end) = facts.end() {
            let entry = latest_end.entry(key.0).or_insert(end);
            *entry = (*entry).max(end);
        }
        if let Some((_, hi)) = facts.minted_ts {
            let entry = latest_mint.entry(key.0).or_insert((hi, key));
            if hi > entry.0 {
                *entry = (hi, key);
            }
        }
    }
    real_time_overlaps
}

#[cfg(test)]
#[path = "lease_tests.rs"]
mod tests;
