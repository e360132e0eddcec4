//! Builders for the crafted histories the checker tests feed in. Times are ms on the harness
//! clock; each worker's wall clock reads `EPOCH_MS + t` at harness time `t` unless a test
//! says otherwise.

use crate::checker::IdLayout;
use crate::history::{
    ClientOp, Event, GenerateFn, IdRange, LeaseEvent, LeaseEventKind, NemesisEvent, NemesisPhase, Phase, ProcessEvent,
    ProcessEventKind,
};

pub(crate) const MS: u64 = 1_000_000;
pub(crate) const EPOCH_MS: u64 = 1_704_067_200_000;

#[derive(Debug, Default, Clone)]
pub(crate) struct H {
    pub(crate) events: Vec<Event>,
    next_op: u64,
}

/// The ID minted at `t_ms` after the epoch by worker ID `wid` with sequence `seq`.
pub(crate) fn id(t_ms: u64, wid: u32, seq: u64) -> u64 {
    IdLayout::default().encode(EPOCH_MS + t_ms, wid, seq)
}

impl H {
    fn invoke(&mut self, worker: &str, process: u64, invoke_ms: u64) -> ClientOp {
        self.next_op += 1;
        let op = ClientOp::invoke(
            process,
            self.next_op,
            GenerateFn::GenerateBatch,
            worker,
            invoke_ms * MS,
            EPOCH_MS + invoke_ms,
        );
        self.events.push(Event::Op(op.clone()));
        op
    }

    /// An ok batch on `worker` by client `process`, returning `ranges` of `(first, count)`.
    pub(crate) fn ok(
        &mut self,
        worker: &str,
        process: u64,
        (invoke_ms, complete_ms): (u64, u64),
        ranges: &[(u64, u64)],
        lease: Option<(u32, u64)>,
    ) -> &mut H {
        let op = self.invoke(worker, process, invoke_ms);
        let ranges = ranges.iter().map(|&r| IdRange::from(r)).collect();
        self.events.push(Event::Op(op.ok(complete_ms * MS, EPOCH_MS + complete_ms, ranges, lease)));
        self
    }

    /// An op on `worker` that ended `fail` or `info` (`Phase::Invoke`: never completed).
    pub(crate) fn not_ok(
        &mut self,
        worker: &str,
        process: u64,
        (invoke_ms, complete_ms): (u64, u64),
        phase: Phase,
    ) -> &mut H {
        let op = self.invoke(worker, process, invoke_ms);
        if phase != Phase::Invoke {
            self.events.push(Event::Op(op.failed(
                phase,
                complete_ms * MS,
                EPOCH_MS + complete_ms,
                "UNAVAILABLE: test",
            )));
        }
        self
    }

    /// A lease event at `t_ms` whose deadline is `deadline_ms` after the epoch on the wall clock.
    pub(crate) fn lease(
        &mut self,
        worker: &str,
        event: LeaseEventKind,
        (worker_id, token): (u32, u64),
        deadline_ms: Option<u64>,
        t_ms: u64,
    ) -> &mut H {
        self.events.push(Event::Lease(LeaseEvent {
            worker: worker.to_string(),
            event,
            worker_id,
            token,
            deadline_wall_ms: deadline_ms.map(|d| EPOCH_MS + d),
            deadline_mono_ns: None,
            reason: (event == LeaseEventKind::Parked).then(|| "LEASE_EXPIRED".to_string()),
            holder: None,
            time_ns: t_ms * MS,
            wall_ms: EPOCH_MS + t_ms,
        }));
        self
    }

    /// Sets the harness-clock deadline of the last lease event.
    pub(crate) fn mono_deadline(&mut self, deadline_ms: u64) -> &mut H {
        if let Some(Event::Lease(l)) = self.events.last_mut() {
            l.deadline_mono_ns = Some(deadline_ms * MS);
        }
        self
    }

    /// Sets the holder ID of the last lease event.
    pub(crate) fn holder(&mut self, holder: &str) -> &mut H {
        if let Some(Event::Lease(l)) = self.events.last_mut() {
            l.holder = Some(holder.to_string());
        }
        self
    }

    /// A process event at `t_ms` (`copy_of` for `cloned`).
    pub(crate) fn process(
        &mut self,
        process: &str,
        event: ProcessEventKind,
        copy_of: Option<&str>,
        t_ms: u64,
    ) -> &mut H {
        self.events.push(Event::Process(ProcessEvent {
            process: process.to_string(),
            event,
            code: (event == ProcessEventKind::Exited).then_some(1),
            copy_of: copy_of.map(str::to_string),
            cause: None,
            time_ns: t_ms * MS,
            wall_ms: EPOCH_MS + t_ms,
        }));
        self
    }

    /// The latest process event's exit cause.
    pub(crate) fn cause(&mut self, cause: &str) -> &mut H {
        if let Some(Event::Process(e)) = self.events.iter_mut().rev().find(|e| matches!(e, Event::Process(_))) {
            e.cause = Some(cause.to_string());
        }
        self
    }

    pub(crate) fn nemesis(&mut self, phase: NemesisPhase, name: &str, t_ms: u64) -> &mut H {
        self.events.push(Event::Nemesis(NemesisEvent {
            phase,
            name: name.to_string(),
            time_ns: t_ms * MS,
            wall_ms: EPOCH_MS + t_ms,
            detail: String::new(),
        }));
        self
    }
}
