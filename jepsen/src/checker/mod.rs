//! The checkers: each reads a history and says whether one property held, with bounded
//! evidence. [`check_all`] runs them all for a run's verdict.
//!
//! A checker answers [`Valid::False`] only on proof of a violation, and [`Valid::Unknown`]
//! when the history lacks what it needs (missing lease info, an exhausted search budget):
//! a harness that cannot see a property must not report it as held.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::history::{ClientOp, Event, Invocation};

pub mod adversary;
pub mod availability;
pub mod convergence;
pub mod lease;
mod lease_log;
pub mod linear;
pub mod monotonic;
pub mod parking;
pub mod perf;
pub mod registry_clock;
pub mod unique;
mod wgl;

#[cfg(test)]
pub(crate) mod testkit;

/// A checker's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Valid {
    True,
    False,
    Unknown,
}

impl Valid {
    /// Combines two verdicts: any violation wins, then any doubt.
    pub fn and(self, other: Valid) -> Valid {
        match (self, other) {
            (Valid::False, _) | (_, Valid::False) => Valid::False,
            (Valid::Unknown, _) | (_, Valid::Unknown) => Valid::Unknown,
            _ => Valid::True,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Valid::True => "true",
            Valid::False => "false",
            Valid::Unknown => "unknown",
        }
    }
}

/// One checker's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    pub valid: Valid,
    pub summary: String,
    /// The first [`EVIDENCE_MAX`] violations (or doubts), as JSON objects.
    pub evidence: Vec<Value>,
}

/// At most this many evidence items per checker: enough to debug, small enough to read.
pub const EVIDENCE_MAX: usize = 20;

/// Collects evidence, keeping the first [`EVIDENCE_MAX`] items and counting all.
#[derive(Debug, Default)]
pub(crate) struct Evidence {
    items: Vec<Value>,
    total: usize,
}

impl Evidence {
    pub(crate) fn push(&mut self, item: Value) {
        self.total += 1;
        if self.items.len() < EVIDENCE_MAX {
            self.items.push(item);
        }
    }

    pub(crate) fn total(&self) -> usize {
        self.total
    }

    pub(crate) fn into_items(self) -> Vec<Value> {
        self.items
    }
}

/// How evidence names a client op: enough to find it in `history.jsonl`.
pub(crate) fn describe_op(op: &Invocation<'_, ClientOp>) -> Value {
    let done = op.completion.unwrap_or(op.invoke);
    serde_json::json!({
        "worker": op.invoke.worker,
        "process": op.invoke.process,
        "op_id": op.invoke.op_id,
        "invoke_ns": op.invoke_ns(),
        "complete_ns": op.complete_ns(),
        "worker_id": done.worker_id,
        "token": done.token,
    })
}

/// The ID bit layout `0 | timestamp | worker ID | sequence`, to decode minted IDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdLayout {
    /// Ms since the Unix epoch that timestamp 0 stands for.
    pub epoch_ms: u64,
    pub worker_id_bits: u32,
    pub sequence_bits: u32,
}

impl Default for IdLayout {
    fn default() -> IdLayout {
        IdLayout { epoch_ms: 1_704_067_200_000, worker_id_bits: 10, sequence_bits: 12 }
    }
}

impl IdLayout {
    /// The ID's timestamp in ms since the Unix epoch.
    pub fn timestamp_ms(&self, id: u64) -> u64 {
        self.epoch_ms.saturating_add(id >> (self.worker_id_bits + self.sequence_bits))
    }

    pub fn worker_id(&self, id: u64) -> u32 {
        let field = (id >> self.sequence_bits) & ((1u64 << self.worker_id_bits) - 1);
        // The mask keeps at most `worker_id_bits` (≤ 32 by construction) bits.
        u32::try_from(field).unwrap_or(u32::MAX)
    }

    /// Builds an ID; for tests and for tools that craft histories.
    pub fn encode(&self, timestamp_ms: u64, worker_id: u32, sequence: u64) -> u64 {
        (timestamp_ms.saturating_sub(self.epoch_ms) << (self.worker_id_bits + self.sequence_bits))
            | (u64::from(worker_id) << self.sequence_bits)
            | sequence
    }
}

/// Settings of every checker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckConfig {
    pub layout: IdLayout,
    pub linear: linear::Config,
    pub parking: parking::Config,
    pub perf: perf::Config,
    pub availability: availability::Config,
}

/// Everything the checkers found about one run.
#[derive(Debug, Clone, Serialize)]
pub struct Analysis {
    pub results: Vec<CheckResult>,
    pub perf: perf::PerfStats,
    /// What a caller saw while a worker was paused.
    pub availability: availability::Stats,
    /// The `adversary` scenario's forged calls per kind (empty when there were none).
    pub adversary: Vec<adversary::CallCounts>,
}

impl Analysis {
    /// The run's verdict: all checkers combined.
    pub fn valid(&self) -> Valid {
        self.results.iter().fold(Valid::True, |v, r| v.and(r.valid))
    }
}

/// Runs every checker over a history.
pub fn check_all(events: &[Event], config: &CheckConfig) -> Analysis {
    let perf = perf::analyze(events, &config.perf);
    let availability = availability::analyze(events, &config.availability);
    let results = vec![
        unique::check(events),
        monotonic::check(events),
        lease::check(events, &config.layout),
        linear::check(events, &config.linear),
        parking::check(events, &config.layout, &config.parking),
        perf::check(&perf, &config.perf),
        availability::check(events, &availability),
        adversary::check(events),
        convergence::check(events),
        registry_clock::check(events),
    ];
    Analysis { results, perf, availability, adversary: adversary::counts(events) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: False dominates Unknown dominates True.
    #[test]
    fn verdicts_combine() {
        assert_eq!(Valid::True.and(Valid::True), Valid::True);
        assert_eq!(Valid::True.and(Valid::Unknown), Valid::Unknown);
        assert_eq!(Valid::Unknown.and(Valid::False), Valid::False);
    }

    /// Goal: the default layout matches the design (41 | 10 | 12, epoch 2024-01-01).
    #[test]
    fn layout_round_trips() {
        let layout = IdLayout::default();
        let id = layout.encode(1_704_067_200_000 + 12_345, 1023, 4095);
        assert_eq!((layout.timestamp_ms(id), layout.worker_id(id), id & 4095), (1_704_067_212_345, 1023, 4095));
        assert_eq!(id >> 22, 12_345);
    }

    /// Goal: evidence is bounded but the count is exact.
    #[test]
    fn evidence_is_bounded() {
        let mut e = Evidence::default();
        for i in 0..(EVIDENCE_MAX + 5) {
            e.push(serde_json::json!(i));
        }
        assert_eq!((e.total(), e.into_items().len()), (EVIDENCE_MAX + 5, EVIDENCE_MAX));
    }
}
