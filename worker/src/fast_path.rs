//! The lock-free fast path of a single-ID mint: one compare-and-swap over the worker's last
//! handed-out ID, with every bound it must respect published in atomics by the slow path
//! ([`crate::mint_state`], under the generator's lock), which stays the only writer of them.
//!
//! # State
//!
//! - `word`: bit 63 is `CLOSED`; bits 0..63 are the last ID this worker handed out or burned,
//!   from either path. IDs have bit 63 clear (the layout's sign bit), so the two never mix.
//!   The ID carries `(timestamp, sequence)`, so the word *is* the minter's state.
//! - `deadline_ns`: the lease deadline on the monotonic clock (mechanism 2).
//! - `stamp_limit_ms`: an exclusive bound on any new millisecond the fast path may stamp:
//!   min(`mint_until`, the ceiling bound on disk). The layout's range is checked by encoding.
//!
//! # Rules
//!
//! 1. The fast path only ever changes `word` by one successful CAS from an open value `w` to
//!    an open value `c > w`, where `c` is the next ID of `w`'s millisecond or the first ID of
//!    a later one.
//! 2. Only the holder of the generator's lock closes the word (`fetch_or(CLOSED)`), and only it
//!    stores into a closed word; a closed word is changed by nobody else (the fast path's CAS
//!    expects an open value). The slow path therefore works on a closed word: it catches its
//!    [`crate::minter::Minter`] up to the payload ([`crate::minter::Minter::catch_up`] asserts
//!    it never goes back), mints above it, stores its minter's last ID back, and reopens only
//!    when no park cause but the deadline (checked per ID, below) stands
//!    ([`crate::mint_state::MintState`]'s `gate_may_open`). The gate opens only after the slow
//!    path minted once, so the first ID (the one checked against the boot floor) is the slow
//!    path's.
//! 3. `deadline_ns` and `stamp_limit_ms` only grow (`fetch_max`), and each is published only
//!    once what it states is true: the deadline from a committed renewal's send time, the
//!    ceiling bound after the fsync, `mint_until` from a committed grant. A stale read of
//!    either is therefore a smaller, stricter bound.
//!
//! # Why no ID is returned twice, out of order, or past a bound
//!
//! - **Twice / out of order.** Every write to the payload makes it strictly larger (rule 1;
//!   rule 2 with the minter's own assertion), and every ID handed out is the value such a
//!   write stored or lies in a slow run between two of them. So IDs of one worker strictly
//!   increase in the order the writes took effect, and no value is handed out twice. ABA —
//!   the word going `w → w|CLOSED → w` while a fast caller sits between its load and its CAS
//!   — is possible (a slow step that minted nothing) and harmless: that caller's decision
//!   rests on the last ID being `w`, which is still true when its CAS succeeds, on bounds that
//!   only grow (rule 3), and on the word being open, which the successful CAS itself proves
//!   at that instant.
//! - **Deadline (mechanism 2).** Each attempt reads the wall clock first, then the monotonic
//!   clock, and goes on only if that monotonic reading is before `deadline_ns`; the CAS comes
//!   after both. The ID is stamped from a wall reading taken before an instant at which the
//!   lease was provably live — the same order as the slow path's re-check after the wall
//!   read. A failed CAS starts the whole attempt over, clocks included. A deadline moved by a
//!   renewal only ever moves later (rule 3), so reading an older value refuses more, never
//!   less.
//! - **`mint_until`, the ceiling, the layout's range.** A new millisecond is taken only below
//!   `stamp_limit_ms`. The same millisecond again (the next sequence number) carries the
//!   timestamp of an ID that was below the limit in force when it was minted, and limits
//!   only grow. The ceiling bound is raised (and then published) by the slow path's flush,
//!   which the fast path falls back to when a new millisecond reaches the limit.
//! - **Parks.** Stop, a lost lease, booting, clock skew, `mint_until` reached and a clock
//!   regression are all set by the lock holder after closing the word, and it reopens only
//!   when none holds. A fast mint takes effect at its CAS, which succeeds only while the word
//!   is open: before the park's close, like a mint that took the lock before the park. So
//!   [`crate::mint_state::MintState::stop`] reads the exact last ID after its close, and
//!   nothing is minted after it.
//! - **The clock-guard ladder and the boot floor.** The fast path mints only at a wall
//!   reading equal to or past the last ID's millisecond. Anything behind (a regression, or a
//!   caller whose reading another caller overtook) goes to the slow path, which closes the
//!   word first: every fast mint then happened before its own wall reading, and the ladder
//!   judges that reading against the exact last ID. Since the last ID is at or above the
//!   boot floor (the first mint was the slow path's), so is every fast mint.
//! - **The harness's unsafe switch** (`DeadlineCheck::DisabledUnsafe`) never opens the word:
//!   that mode keeps to the slow path.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::{Clock, MonoTime};
use crate::layout::Layout;
use crate::minter::IdRun;
use crate::worker_id::WorkerId;

/// Set in [`FastPath::word`] while the slow path owns the minting state.
const CLOSED: u64 = 1 << 63;

/// What one fast-path attempt came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FastMint {
    /// An ID that may be returned.
    Minted(u64),
    /// Millisecond `ts_ms` is used up: try again once the wall clock is past it.
    Exhausted { ts_ms: u64 },
    /// Not for the fast path (closed, a new millisecond at a bound, the wall clock behind,
    /// the deadline passed): take the slow path, which decides and says why.
    Slow,
}

/// The published minting state of one worker; see the module docs.
#[derive(Debug)]
pub(crate) struct FastPath {
    word: AtomicU64,
    deadline_ns: AtomicU64,
    stamp_limit_ms: AtomicU64,
    layout: Layout,
    worker_id: WorkerId,
}

impl FastPath {
    /// Closed, with nothing minted yet; `deadline` and `stamp_limit_ms` are the grant's.
    pub fn new(layout: Layout, worker_id: WorkerId, deadline: MonoTime, stamp_limit_ms: u64) -> FastPath {
        FastPath {
            word: AtomicU64::new(CLOSED),
            deadline_ns: AtomicU64::new(deadline.as_nanos()),
            stamp_limit_ms: AtomicU64::new(stamp_limit_ms),
            layout,
            worker_id,
        }
    }

    /// One ID without the lock, or why not.
    pub fn try_mint(&self, clock: &dyn Clock) -> FastMint {
        let mut word = self.word.load(Ordering::Acquire);
        loop {
            if word & CLOSED != 0 {
                return FastMint::Slow;
            }
            let now_ms = clock.wall_ms();
            let last = self.layout.decode(word);
            // Both branches check the stamp limit: the locked path never leaves a stamp at or
            // past it in the word today, but the same-millisecond branch must not rely on that.
            let below_limit = now_ms < self.stamp_limit_ms.load(Ordering::Acquire);
            let candidate = if now_ms == last.ts_ms && below_limit {
                if last.sequence == self.layout.max_sequence() {
                    return FastMint::Exhausted { ts_ms: now_ms };
                }
                word + 1
            } else if now_ms > last.ts_ms && below_limit {
                match self.layout.encode(now_ms, self.worker_id, 0) {
                    Ok(id) => id,
                    Err(_) => return FastMint::Slow,
                }
            } else {
                return FastMint::Slow;
            };
            // After the wall read: the same test as `LeaseDeadline::is_live`.
            if clock.mono().as_nanos() >= self.deadline_ns.load(Ordering::Acquire) {
                return FastMint::Slow;
            }
            match self.word.compare_exchange_weak(word, candidate, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return FastMint::Minted(candidate),
                Err(now) => word = now,
            }
        }
    }

    /// `id` as a run of one.
    pub fn run_of_one(&self, id: u64) -> IdRun {
        IdRun { first: id, count: 1, ts_ms: self.layout.decode(id).ts_ms }
    }

    /// Lock holder only: stop fast mints and return the last ID handed out (meaningless
    /// before the first mint, when the word was never opened).
    pub fn close(&self) -> u64 {
        self.word.fetch_or(CLOSED, Ordering::AcqRel) & !CLOSED
    }

    /// Lock holder only, on a word it closed: store the minter's last ID, open or closed.
    /// Nothing minted yet keeps it closed.
    pub fn release(&self, last_id: Option<u64>, open: bool) {
        let word = match last_id {
            Some(id) if open => id,
            Some(id) => id | CLOSED,
            None => CLOSED,
        };
        self.word.store(word, Ordering::Release);
    }

    /// The last ID handed out, as of now (a later mint may follow at once unless closed).
    pub fn last_handed_out(&self) -> u64 {
        self.word.load(Ordering::Acquire) & !CLOSED
    }

    /// Lock holder only: a committed renewal moved the deadline (never back).
    pub fn raise_deadline(&self, deadline: MonoTime) {
        self.deadline_ns.fetch_max(deadline.as_nanos(), Ordering::AcqRel);
    }

    /// Lock holder only: stamps below `limit_ms` are now allowed (never lowered).
    pub fn raise_stamp_limit(&self, limit_ms: u64) {
        self.stamp_limit_ms.fetch_max(limit_ms, Ordering::AcqRel);
    }
}
