//! The run's history, in the harness's own event types (`fenceflake_jepsen::history`), so the
//! harness's checkers read it unchanged. Events are recorded in the order the single-threaded
//! simulation produces them, so a seed always yields the same history, byte for byte.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use fenceflake_jepsen::history::{Event, NemesisEvent, NemesisPhase};
use fenceflake_jepsen::registry_workload::Timeline;

use crate::clock::World;

#[derive(Debug)]
pub struct Recorder {
    world: World,
    events: Mutex<Vec<Event>>,
    /// Holder IDs carry the OS process id (so they differ between runs of one seed): the
    /// history names each by the order it first appeared in, which keeps equal ones equal.
    holders: Mutex<BTreeMap<String, String>>,
}

impl Recorder {
    pub fn new(world: World) -> Recorder {
        Recorder { world, events: Mutex::default(), holders: Mutex::default() }
    }

    pub fn world(&self) -> World {
        self.world
    }

    /// True time since the run began, the history's clock.
    pub fn now_ns(&self) -> u64 {
        self.world.elapsed_ns()
    }

    pub fn push(&self, mut event: Event) {
        if let Event::Adversary(call) = &mut event {
            // The forger's request and the registry's answer quote holder IDs as text, which
            // carry this OS process's id: masked, so that a seed's history is the same bytes
            // in every process (found by `tests/determinism.rs` across processes).
            let pid = format!("/{}/", std::process::id());
            for text in [&mut call.request, &mut call.answer] {
                *text = text.replace(&pid, "/pid/");
            }
        }
        self.events.lock().unwrap_or_else(PoisonError::into_inner).push(event);
    }

    /// A fault started (`Start`) or healed (`Stop`).
    pub fn nemesis(&self, phase: NemesisPhase, name: &str, detail: String) {
        self.push(Event::Nemesis(NemesisEvent {
            phase,
            name: name.to_string(),
            time_ns: self.now_ns(),
            wall_ms: self.world.true_wall_ms(),
            detail,
        }));
    }

    /// The stable name of holder ID `holder` in this history.
    pub fn holder_alias(&self, holder: &str) -> String {
        let mut holders = self.holders.lock().unwrap_or_else(PoisonError::into_inner);
        let next = holders.len() + 1;
        holders.entry(holder.to_string()).or_insert_with(|| format!("holder-{next}")).clone()
    }

    /// The holder ID named `alias` in this history.
    pub fn holder_of_alias(&self, alias: &str) -> Option<String> {
        let holders = self.holders.lock().unwrap_or_else(PoisonError::into_inner);
        holders.iter().find(|(_, a)| a.as_str() == alias).map(|(holder, _)| holder.clone())
    }

    /// Everything recorded so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Visit the events recorded since the first `from`, in order; returns how many are
    /// recorded now (the next call's `from`). For an observer that follows the history as it
    /// grows: copying the whole history on every look made the simulation several times
    /// slower.
    pub fn visit_since(&self, from: usize, mut visit: impl FnMut(&Event)) -> usize {
        let events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        events.iter().skip(from).for_each(&mut visit);
        events.len()
    }
}

/// The registry workload's timeline in the simulation: the history's true time, and the
/// client machine's wall clock, which the nemesis never steps (it observes; the registry's
/// clocks are what is under test).
impl Timeline for Recorder {
    fn now_ns(&self) -> u64 {
        Recorder::now_ns(self)
    }

    fn wall_ms(&self) -> u64 {
        self.world.true_wall_ms()
    }

    fn record(&self, event: Event) {
        self.push(event);
    }
}
