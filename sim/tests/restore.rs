//! The disaster a backup is for (`restore.rs`): every registry disk lost, the newest backup
//! restored into a fresh cluster, the workers fenced off the lost cluster's leases and granted
//! the new generation's once the embargo lifts; replayed byte for byte.

use fenceflake_jepsen::checker::Valid;
use fenceflake_jepsen::history::{Event, LeaseEventKind, NemesisPhase};
use fenceflake_sim::world::{self, history_lines, RunConfig};

/// A seed whose nemesis loses every disk (the schedules move whenever the simulation changes:
/// `fenceflake-sim run --seed S --history F` and a grep for `"disaster"` find another).
const DISASTER_SEED: u64 = 11;
/// Token generations live in the top 8 bits (docs/design.md, Tokens).
const GENERATION_SHIFT: u32 = 56;

/// Goal: issue 10 — snapshot export and import under the simulator: the restore succeeds, the
/// lost cluster's holders are fenced, every lease granted after the embargo is of the new
/// generation, every checker passes, and the run replays exactly (the restore's token offset
/// is drawn from the seeded source).
#[test]
fn a_lost_registry_is_restored_from_its_backup_and_replays() {
    let config = RunConfig::new(DISASTER_SEED);
    let outcome = world::run(&config).expect("the simulation runs");
    let disaster = |phase: NemesisPhase| {
        outcome.events.iter().find_map(|e| match e {
            Event::Nemesis(n) if n.name == "disaster" && n.phase == phase => Some(n.clone()),
            _ => None,
        })
    };
    let start = disaster(NemesisPhase::Start).expect("the seed loses every registry disk");
    let stop = disaster(NemesisPhase::Stop).expect("the restore ends");
    assert!(stop.detail.starts_with("restored into sim-restored: token generation 1"), "{}", stop.detail);
    let fenced = outcome.events.iter().any(|e| match e {
        Event::Process(p) => p.time_ns > start.time_ns && p.cause.as_deref() == Some("FENCED"),
        _ => false,
    });
    assert!(fenced, "a worker of the lost cluster is fenced by the restored one");
    let granted: Vec<u64> = outcome
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Lease(l) if l.time_ns > stop.time_ns && l.event == LeaseEventKind::Acquired => Some(l.token),
            _ => None,
        })
        .collect();
    assert!(!granted.is_empty(), "workers serve again after the restore");
    assert!(granted.iter().all(|t| t >> GENERATION_SHIFT == 1), "leases of the new generation: {granted:x?}");
    for result in &outcome.results {
        assert_eq!(result.valid, Valid::True, "{}: {}", result.name, result.summary);
    }
    let parking = outcome.results.iter().find(|r| r.name == "parking").expect("the parking checker ran");
    assert!(!parking.summary.starts_with("not exercised"), "{}", parking.summary);
    let again = world::run(&config).expect("the simulation runs again");
    let (first, second) =
        (history_lines(&outcome.events).expect("encodes"), history_lines(&again.events).expect("encodes"));
    assert!(first == second, "the restore's run does not replay byte for byte");
}
