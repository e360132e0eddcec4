//! What a run says: one line per seed, and for a violation the failing checkers' evidence,
//! a shortened trace (the faults and process events up to the first violation's time), and
//! the one command line that reproduces it.

use std::fmt::Write as _;

use fenceflake_jepsen::checker::Valid;
use fenceflake_jepsen::history::Event;
use fenceflake_proto::switches::Mechanism;

use crate::world::{RunConfig, RunOutcome};

/// At most this many trace lines and evidence items per checker.
const TRACE_MAX: usize = 40;
const EVIDENCE_SHOWN: usize = 3;

/// The command that runs exactly this seed again (and writes its history).
pub fn reproduce(config: &RunConfig) -> String {
    let mut line = format!("fenceflake-sim run --seed {} --duration {}s", config.seed, config.duration.as_secs());
    for mechanism in &config.disabled {
        let _ = write!(line, " --disable {mechanism}");
    }
    if config.ids_only {
        line.push_str(" --ids-only");
    }
    if config.rolling_upgrade {
        line.push_str(" --rolling-upgrade");
    }
    line.push_str(&format!(" --history sim-{}.jsonl", config.seed));
    line
}

/// One line for a seed.
pub fn seed_line(config: &RunConfig, outcome: &RunOutcome, wall: std::time::Duration) -> String {
    let ids: u64 = outcome
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Op(op) => op.value.as_ref().map(|v| v.ranges.iter().map(|r| r.count).sum::<u64>()),
            _ => None,
        })
        .sum();
    let faults = outcome.events.iter().filter(|e| matches!(e, Event::Nemesis(_))).count();
    format!(
        "seed={} {} simulated={:.1}s ids={ids} faults={faults} wall={:.2}s",
        config.seed,
        outcome.valid().as_str(),
        outcome.simulated.as_secs_f64(),
        wall.as_secs_f64()
    )
}

/// The failing (or inconclusive) checkers with their first evidence, then the trace.
pub fn explain(outcome: &RunOutcome) -> String {
    let mut text = String::new();
    for result in outcome.results.iter().filter(|r| r.valid != Valid::True) {
        let _ = writeln!(text, "  {} {}: {}", result.name, result.valid.as_str(), result.summary);
        for item in result.evidence.iter().take(EVIDENCE_SHOWN) {
            let _ = writeln!(text, "    {item}");
        }
    }
    let until = first_evidence_ns(outcome).unwrap_or(u64::MAX);
    let trace: Vec<String> = outcome
        .events
        .iter()
        .filter(|e| e.time_ns() <= until)
        .filter_map(|e| {
            match e {
                Event::Nemesis(n) => Some(format!("{:?} {} {}", n.phase, n.name, n.detail)),
                Event::Process(p) => Some(format!("{} {:?}", p.process, p.event)),
                _ => None,
            }
            .map(|line| format!("  {:>9.3}s {line}", e.time_ns() as f64 / 1e9))
        })
        .collect();
    let skipped = trace.len().saturating_sub(TRACE_MAX);
    let _ = writeln!(
        text,
        "  trace (faults and process events up to the first violation{}):",
        if skipped > 0 { format!(", last {TRACE_MAX}") } else { String::new() }
    );
    for line in trace.iter().skip(skipped) {
        let _ = writeln!(text, "{line}");
    }
    text
}

/// When the first violation the evidence names happened, if it says (`complete_ns`,
/// `time_ns` or `invoke_ns` fields).
fn first_evidence_ns(outcome: &RunOutcome) -> Option<u64> {
    outcome
        .results
        .iter()
        .filter(|r| r.valid == Valid::False)
        .flat_map(|r| r.evidence.iter())
        .filter_map(|item| {
            ["complete_ns", "time_ns", "invoke_ns"]
                .iter()
                .find_map(|key| item.pointer(&format!("/{key}")).and_then(|v| v.as_u64()))
        })
        .min()
}

/// The names `list-mechanisms` prints, one per line.
pub fn mechanisms() -> String {
    Mechanism::ALL.iter().map(|m| format!("{m}\n")).collect()
}
