//! The lease events of each worker process in time order, and the one rule the lease and
//! parking checkers share for "which deadline did this worker know at time t".

use std::collections::BTreeMap;

use crate::history::{self, Event, LeaseEvent};

/// Lease events grouped by worker process, each group sorted by `time_ns`.
#[derive(Debug)]
pub(crate) struct LeaseLog<'a> {
    by_worker: BTreeMap<&'a str, Vec<&'a LeaseEvent>>,
}

impl<'a> LeaseLog<'a> {
    pub(crate) fn new(events: &'a [Event]) -> LeaseLog<'a> {
        let mut by_worker: BTreeMap<&str, Vec<&LeaseEvent>> = BTreeMap::new();
        for event in history::lease_events(events) {
            by_worker.entry(event.worker.as_str()).or_default().push(event);
        }
        for list in by_worker.values_mut() {
            // Stable: events the harness wrote in order keep it when their times tie.
            list.sort_by_key(|e| e.time_ns);
        }
        LeaseLog { by_worker }
    }

    /// Every worker process with at least one lease event.
    pub(crate) fn workers(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.by_worker.keys().copied()
    }

    /// The worker's events, oldest first.
    pub(crate) fn events(&self, worker: &str) -> &[&'a LeaseEvent] {
        self.by_worker.get(worker).map_or(&[], Vec::as_slice)
    }

    /// The worker's latest event at or before `at_ns` (of lease `token`, if given).
    pub(crate) fn latest_at(&self, worker: &str, token: Option<u64>, at_ns: u64) -> Option<&'a LeaseEvent> {
        let events = self.events(worker);
        let upto = events.partition_point(|e| e.time_ns <= at_ns);
        events[..upto].iter().rev().find(|e| token.is_none_or(|t| e.token == t)).copied()
    }

    /// The deadline (worker wall clock, ms) the worker knew at `at_ns`: that of its latest
    /// event at or before `at_ns` that states one (of lease `token`, if given). A worker
    /// extends its deadline only from a committed response and logs that when it happens, so
    /// no later deadline could have allowed a mint that finished by `at_ns`.
    pub(crate) fn deadline_at(&self, worker: &str, token: Option<u64>, at_ns: u64) -> Option<&'a LeaseEvent> {
        let events = self.events(worker);
        let upto = events.partition_point(|e| e.time_ns <= at_ns);
        events[..upto]
            .iter()
            .rev()
            .find(|e| e.deadline_wall_ms.is_some() && token.is_none_or(|t| e.token == t))
            .copied()
    }
}
