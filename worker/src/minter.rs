//! The minting core: turns "now" into runs of IDs for one worker ID, never reading a clock.
//!
//! Pure and deterministic: time is an argument, so the simulation can replay any schedule.
//! Within one lease the worker's `(ts, seq)` strictly increases (docs/design.md "Safety"); the
//! minter asserts that on every run, because a violation means a duplicate ID is in flight.

use std::num::NonZeroU32;

use crate::layout::{EncodeError, Layout};
use crate::worker_id::WorkerId;

/// A contiguous run of IDs, all in one millisecond: `first, first + 1, .., first + count - 1`.
/// Contiguous because the sequence is the lowest field of the ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRun {
    pub first: u64,
    /// At least 1.
    pub count: u32,
    /// The millisecond (since the Unix epoch) every ID of the run carries.
    pub ts_ms: u64,
}

impl IdRun {
    /// The last ID of the run.
    pub fn last(&self) -> u64 {
        self.first + u64::from(self.count) - 1
    }
}

/// What one mint request produced. Everything except `Minted` is a domain answer the caller
/// handles (wait, consult the clock guard), not an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MintOutcome {
    Minted(IdRun),
    /// The sequence of millisecond `ts_ms` is used up; retry once the wall clock is past it.
    Exhausted {
        ts_ms: u64,
    },
    /// The wall clock reads `by_ms` before the last minted millisecond `last_ts_ms`; the
    /// clock guard decides what to do.
    Regressed {
        last_ts_ms: u64,
        by_ms: u64,
    },
    /// The wall clock is outside what the layout can encode (before the epoch, or past its
    /// end): a misconfigured epoch or a wildly wrong clock.
    OutOfRange(EncodeError),
}

/// Minting state of one worker ID under one layout.
#[derive(Debug)]
pub struct Minter {
    layout: Layout,
    worker_id: WorkerId,
    /// Millisecond of the last run; `None` until the first mint.
    last_ts_ms: Option<u64>,
    /// Next unused sequence number in `last_ts_ms`; `max_sequence + 1` when it is used up.
    next_seq: u32,
    /// Last ID handed out, so every new run can be asserted to lie strictly above it.
    last_id: Option<u64>,
}

/// Why a minter could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MinterError {
    #[error("worker ID {worker_id} does not fit the layout (max {max_worker_id})")]
    WorkerIdOutOfRange { worker_id: WorkerId, max_worker_id: WorkerId },
}

impl Minter {
    /// A minter for `worker_id`, which must fit the layout's worker-ID field.
    pub fn new(layout: Layout, worker_id: WorkerId) -> Result<Minter, MinterError> {
        if worker_id > layout.max_worker_id() {
            return Err(MinterError::WorkerIdOutOfRange { worker_id, max_worker_id: layout.max_worker_id() });
        }
        Ok(Minter { layout, worker_id, last_ts_ms: None, next_seq: 0, last_id: None })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn worker_id(&self) -> WorkerId {
        self.worker_id
    }

    /// The millisecond of the last run, `None` before the first. Reported to the registry as
    /// the largest timestamp minted (`not_before` input) and persisted on clean shutdown.
    pub fn last_ts_ms(&self) -> Option<u64> {
        self.last_ts_ms
    }

    /// The last ID handed out (or burned), `None` before the first.
    pub fn last_id(&self) -> Option<u64> {
        self.last_id
    }

    /// Take over the IDs handed out from this minter's sequence by someone else — the
    /// lock-free fast path ([`crate::fast_path`]) — up to and including `last_id`, so that the
    /// next run starts above it. Panics if `last_id` is another worker's or below the last ID
    /// this minter knows of: going back would hand an ID out twice.
    pub fn catch_up(&mut self, last_id: u64) {
        if let Some(known) = self.last_id {
            assert!(last_id >= known, "caught up to ID {last_id}, below the last known {known}: duplicate risk");
        }
        let d = self.layout.decode(last_id);
        assert_eq!(d.worker_id, self.worker_id, "caught up to ID {last_id} of another worker");
        self.last_ts_ms = Some(d.ts_ms);
        self.next_seq = d.sequence + 1;
        self.last_id = Some(last_id);
        self.check_invariants();
    }

    /// Sequence numbers left in the last minted millisecond: what a frozen borrow can still
    /// use. 0 before the first mint.
    pub fn remaining_in_last_ms(&self) -> u32 {
        match self.last_ts_ms {
            None => 0,
            // `next_seq <= max_sequence + 1` is an invariant, so this cannot underflow.
            Some(_) => self.layout.max_sequence() + 1 - self.next_seq,
        }
    }

    /// Up to `want` IDs in millisecond `now_ms`, all from that one millisecond.
    pub fn mint_batch(&mut self, now_ms: u64, want: NonZeroU32) -> MintOutcome {
        let start_seq = match self.last_ts_ms {
            Some(last_ts_ms) if now_ms < last_ts_ms => {
                return MintOutcome::Regressed { last_ts_ms, by_ms: last_ts_ms - now_ms };
            }
            Some(last_ts_ms) if now_ms == last_ts_ms => {
                if self.next_seq > self.layout.max_sequence() {
                    return MintOutcome::Exhausted { ts_ms: now_ms };
                }
                self.next_seq
            }
            // A new millisecond (or the first one): its whole sequence space is free.
            _ => 0,
        };
        match self.take(now_ms, start_seq, want) {
            Ok(run) => MintOutcome::Minted(run),
            Err(e) => MintOutcome::OutOfRange(e),
        }
    }

    /// Up to `want` IDs from what is left of the last minted millisecond, without looking at
    /// the clock: the grace rung of the clock guard. Never exceeds that millisecond's
    /// sequence space, so it cannot collide with anything; `None` when nothing is left (or
    /// nothing was ever minted).
    pub fn mint_frozen(&mut self, want: NonZeroU32) -> Option<IdRun> {
        let ts_ms = self.last_ts_ms?;
        if self.remaining_in_last_ms() == 0 {
            return None;
        }
        // `last_ts_ms` was encoded before, so it is in range; a failure here means the
        // minter's own state is corrupt.
        let run = self.take(ts_ms, self.next_seq, want);
        Some(run.expect("the frozen millisecond was encodable when it was first minted"))
    }

    /// Mint `min(want, left in ms)` IDs at `(ts_ms, start_seq..)` and advance the state.
    fn take(&mut self, ts_ms: u64, start_seq: u32, want: NonZeroU32) -> Result<IdRun, EncodeError> {
        let left = self.layout.max_sequence() + 1 - start_seq;
        let count = want.get().min(left);
        let first = self.layout.encode(ts_ms, self.worker_id, start_seq)?;
        let run = IdRun { first, count, ts_ms };
        if let Some(last_id) = self.last_id {
            assert!(run.first > last_id, "minted ID {} not above the previous {last_id}: duplicate risk", run.first);
        }
        self.last_ts_ms = Some(ts_ms);
        self.next_seq = start_seq + count;
        self.last_id = Some(run.last());
        self.check_invariants();
        Ok(run)
    }

    /// Assert the state is self-consistent: the last ID carries this worker's ID, the last
    /// timestamp and the sequence just below `next_seq`. Tests and the simulation call it
    /// after every step; the minter calls it after every run.
    pub fn check_invariants(&self) {
        assert!(
            self.next_seq <= self.layout.max_sequence() + 1,
            "next_seq {} beyond the sequence space",
            self.next_seq
        );
        match (self.last_id, self.last_ts_ms) {
            (None, None) => assert_eq!(self.next_seq, 0, "sequence used before any mint"),
            (Some(last_id), Some(last_ts_ms)) => {
                let d = self.layout.decode(last_id);
                assert_eq!(d.worker_id, self.worker_id, "ID {last_id} carries another worker's ID");
                assert_eq!(d.ts_ms, last_ts_ms, "ID {last_id} timestamp drifted");
                assert_eq!(d.sequence + 1, self.next_seq, "ID {last_id} sequence drifted");
            }
            (last_id, last_ts_ms) => {
                panic!("half-initialised minter: last_id {last_id:?}, last_ts_ms {last_ts_ms:?}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const EPOCH_MS: u64 = 1_600_000_000_000;
    const T0: u64 = EPOCH_MS + 1_000;

    fn n(v: u32) -> NonZeroU32 {
        NonZeroU32::new(v).unwrap()
    }

    /// A minter with a 4-ID-per-ms sequence so exhaustion is quick to reach.
    fn small_minter(worker_id: u16) -> Minter {
        let layout = Layout::new(EPOCH_MS, 10, 2).unwrap();
        Minter::new(layout, WorkerId::new(worker_id)).unwrap()
    }

    fn minted(outcome: MintOutcome) -> IdRun {
        match outcome {
            MintOutcome::Minted(run) => run,
            other => panic!("expected a run, got {other:?}"),
        }
    }

    /// Every ID of `run`, decoded, carries the run's ms and `worker_id`.
    fn assert_run_is_ours(m: &Minter, run: IdRun) {
        for id in run.first..=run.last() {
            let d = m.layout().decode(id);
            assert_eq!(d.worker_id, m.worker_id());
            assert_eq!(d.ts_ms, run.ts_ms);
        }
    }

    /// Goal: a new millisecond restarts the sequence at 0, the same millisecond continues it,
    /// and a run never spills past the end of its millisecond.
    #[test]
    fn sequence_restarts_continues_and_exhausts() {
        let mut m = small_minter(7);
        let a = minted(m.mint_batch(T0, n(3)));
        assert_eq!((a.count, a.ts_ms, m.layout().decode(a.first).sequence), (3, T0, 0));
        let b = minted(m.mint_batch(T0, n(3)));
        assert_eq!((b.count, m.layout().decode(b.first).sequence), (1, 3), "spilled past the ms");
        assert_eq!(b.first, a.last() + 1);
        assert_eq!(m.mint_batch(T0, n(1)), MintOutcome::Exhausted { ts_ms: T0 });
        let c = minted(m.mint_batch(T0 + 1, n(100)));
        assert_eq!((c.count, c.ts_ms, m.layout().decode(c.first).sequence), (4, T0 + 1, 0));
        for run in [a, b, c] {
            assert_run_is_ours(&m, run);
        }
        m.check_invariants();
    }

    /// Goal: a wall clock behind the last minted ms is reported as a regression with its
    /// size, and mints nothing (the state is unchanged, so later IDs stay above earlier ones).
    #[test]
    fn regression_is_reported_and_mints_nothing() {
        let mut m = small_minter(1);
        let a = minted(m.mint_batch(T0 + 50, n(1)));
        assert_eq!(m.mint_batch(T0 + 45, n(1)), MintOutcome::Regressed { last_ts_ms: T0 + 50, by_ms: 5 });
        assert_eq!(m.last_ts_ms(), Some(T0 + 50));
        let b = minted(m.mint_batch(T0 + 50, n(1)));
        assert_eq!(b.first, a.first + 1);
    }

    /// Goal: over an arbitrary schedule of clock readings (forward, repeated, backward), every
    /// emitted ID is strictly above the previous one and carries the worker ID.
    #[test]
    fn ids_strictly_increase_over_a_jittery_clock() {
        let mut m = small_minter(1023);
        let readings = [0, 0, 0, 1, 1, 3, 2, 3, 3, 3, 3, 10, 9, 0, 10, 11, 11, 11, 11, 11];
        let mut prev: Option<u64> = None;
        let mut emitted = 0;
        for (i, r) in readings.iter().enumerate() {
            if let MintOutcome::Minted(run) = m.mint_batch(T0 + r, n(1 + (i as u32 % 3))) {
                assert!(prev.is_none_or(|p| run.first > p), "step {i}: not increasing");
                assert_run_is_ours(&m, run);
                prev = Some(run.last());
                emitted += run.count;
            }
            m.check_invariants();
        }
        assert!(emitted > 10, "the schedule minted too little to mean anything");
    }

    /// Goal: the grace rung never yields more than what is left of the frozen millisecond,
    /// keeps that millisecond's timestamp, and stops (`None`) once it is used up.
    #[test]
    fn frozen_borrow_is_bounded_by_the_remaining_sequence() {
        let mut m = small_minter(2);
        assert_eq!(m.mint_frozen(n(1)), None, "borrowed before anything was minted");
        minted(m.mint_batch(T0, n(1)));
        assert_eq!(m.remaining_in_last_ms(), 3);
        let borrowed = m.mint_frozen(n(100)).unwrap();
        assert_eq!((borrowed.ts_ms, borrowed.count), (T0, 3));
        assert_run_is_ours(&m, borrowed);
        assert_eq!(m.remaining_in_last_ms(), 0);
        assert_eq!(m.mint_frozen(n(1)), None, "borrowed beyond the sequence space");
        assert_eq!(m.last_ts_ms(), Some(T0));
        // Once the clock is back past the frozen ms, normal minting resumes above it.
        let next = minted(m.mint_batch(T0 + 1, n(1)));
        assert!(next.first > borrowed.last());
    }

    /// Goal: readings the layout cannot encode are refused without touching the state, and a
    /// worker ID outside the layout cannot even build a minter.
    #[test]
    fn out_of_range_time_and_worker_are_refused() {
        let mut m = small_minter(0);
        assert!(matches!(m.mint_batch(EPOCH_MS - 1, n(1)), MintOutcome::OutOfRange(EncodeError::BeforeEpoch { .. })));
        let past_end = m.layout().max_ts_ms() + 1;
        assert!(matches!(m.mint_batch(past_end, n(1)), MintOutcome::OutOfRange(EncodeError::BeyondRange { .. })));
        assert_eq!(m.last_ts_ms(), None);
        m.check_invariants();

        let layout = Layout::with_default_bits(EPOCH_MS).unwrap();
        assert_eq!(
            Minter::new(layout, WorkerId::new(1024)).unwrap_err(),
            MinterError::WorkerIdOutOfRange { worker_id: WorkerId::new(1024), max_worker_id: WorkerId::new(1023) }
        );
    }

    /// Goal: catching up with IDs handed out elsewhere continues strictly above them, in the
    /// same millisecond or a later one, and refuses to go back.
    #[test]
    fn catch_up_continues_above_and_never_goes_back() {
        let mut m = small_minter(4);
        let a = minted(m.mint_batch(T0, n(1)));
        m.catch_up(a.first + 2);
        let b = minted(m.mint_batch(T0, n(4)));
        assert_eq!((b.first, b.count), (a.first + 3, 1), "not continued above the caught-up ID");
        m.catch_up(b.first);
        assert_eq!(m.mint_batch(T0, n(1)), MintOutcome::Exhausted { ts_ms: T0 });
        let later = m.layout().encode(T0 + 5, WorkerId::new(4), 2).unwrap();
        m.catch_up(later);
        assert_eq!(minted(m.mint_batch(T0 + 5, n(1))).first, later + 1);
        let back = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| m.catch_up(later - 1)));
        assert!(back.is_err(), "caught up backwards");
    }

    /// Goal: one default-layout millisecond is exactly 4096 IDs, as one run.
    #[test]
    fn a_whole_default_millisecond_is_one_run() {
        let layout = Layout::with_default_bits(EPOCH_MS).unwrap();
        let mut m = Minter::new(layout, WorkerId::new(5)).unwrap();
        let run = minted(m.mint_batch(T0, n(crate::limits::MAX_BATCH_COUNT)));
        assert_eq!(run.count, 4096);
        assert_eq!(m.mint_batch(T0, n(1)), MintOutcome::Exhausted { ts_ms: T0 });
    }
}
