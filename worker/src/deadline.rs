//! The worker-side lease deadline (docs/design.md "Safety", mechanism 2): when this worker must
//! stop minting, computed on its own monotonic clock from the *send* time of a request.
//!
//! Counting from the send time, not the receive time, means the deadline can only be early,
//! never late: the registry started its TTL no earlier than the request was sent. The margin
//! absorbs the drift between the worker's and the registry's monotonic clocks.

use std::time::Duration;

use crate::clock::MonoTime;

/// When the current lease stops being provably ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseDeadline {
    /// Minting is allowed strictly before this instant.
    deadline: MonoTime,
    /// `ttl - margin`, kept so renewals extend by the same amount.
    usable: Duration,
}

/// Why a deadline could not be computed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeadlineError {
    #[error("margin {margin:?} leaves nothing of the lease ttl {ttl:?}")]
    MarginNotBelowTtl { ttl: Duration, margin: Duration },
}

impl LeaseDeadline {
    /// The deadline for a lease whose Acquire or Renew was sent at `sent_at` and committed
    /// with `ttl`: `sent_at + ttl - margin`.
    pub fn from_send(sent_at: MonoTime, ttl: Duration, margin: Duration) -> Result<LeaseDeadline, DeadlineError> {
        if margin >= ttl {
            return Err(DeadlineError::MarginNotBelowTtl { ttl, margin });
        }
        let usable = ttl - margin;
        Ok(LeaseDeadline { deadline: sent_at.saturating_add(usable), usable })
    }

    /// Extend from a *committed* renewal sent at `sent_at`. Responses can arrive out of
    /// order (a retried renewal answered after a later one), so the deadline only ever
    /// moves forward. Returns whether it moved.
    pub fn extend_from(&mut self, sent_at: MonoTime) -> bool {
        let candidate = sent_at.saturating_add(self.usable);
        if candidate > self.deadline {
            self.deadline = candidate;
            true
        } else {
            false
        }
    }

    /// Whether minting is allowed at `now`: strictly before the deadline.
    pub fn is_live(&self, now: MonoTime) -> bool {
        now < self.deadline
    }

    /// Time left before the deadline; zero once it has passed.
    pub fn remaining(&self, now: MonoTime) -> Duration {
        self.deadline.duration_since(now)
    }

    pub fn deadline(&self) -> MonoTime {
        self.deadline
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::clock::{Clock, ManualClock};

    const TTL: Duration = Duration::from_secs(10);
    const MARGIN: Duration = Duration::from_secs(1);

    fn at_ms(ms: u64) -> MonoTime {
        MonoTime::from_nanos(ms * 1_000_000)
    }

    /// Goal: the deadline is `sent_at + ttl - margin`, live strictly before it and dead at it.
    #[test]
    fn deadline_counts_from_send_minus_margin() {
        let d = LeaseDeadline::from_send(at_ms(5_000), TTL, MARGIN).unwrap();
        assert_eq!(d.deadline(), at_ms(14_000));
        assert!(d.is_live(at_ms(13_999)));
        assert!(!d.is_live(at_ms(14_000)), "live at the deadline itself");
        assert!(!d.is_live(at_ms(20_000)));
        assert_eq!(d.remaining(at_ms(13_000)), Duration::from_secs(1));
        assert_eq!(d.remaining(at_ms(15_000)), Duration::ZERO);
    }

    /// Goal: a margin that eats the whole TTL is refused rather than yielding a lease that is
    /// dead on arrival (or, with wrapping, one that never dies).
    #[test]
    fn margin_must_leave_some_ttl() {
        for margin in [TTL, TTL + Duration::from_millis(1)] {
            assert_eq!(
                LeaseDeadline::from_send(at_ms(0), TTL, margin),
                Err(DeadlineError::MarginNotBelowTtl { ttl: TTL, margin })
            );
        }
    }

    /// Goal: an out-of-order (older) renewal response never pulls the deadline back; a newer
    /// one pushes it forward by exactly its own send time.
    #[test]
    fn extend_never_moves_backwards() {
        let mut d = LeaseDeadline::from_send(at_ms(5_000), TTL, MARGIN).unwrap();
        assert!(d.extend_from(at_ms(8_000)));
        assert_eq!(d.deadline(), at_ms(17_000));
        assert!(!d.extend_from(at_ms(6_000)), "older renewal moved the deadline");
        assert_eq!(d.deadline(), at_ms(17_000));
        assert!(!d.extend_from(at_ms(8_000)));
        assert!(d.extend_from(at_ms(8_001)));
        assert_eq!(d.deadline(), at_ms(17_001));
    }

    /// Goal: a wall-clock step does not move the deadline — it lives on the monotonic clock —
    /// and real time passing does expire it.
    #[test]
    fn wall_steps_do_not_touch_the_deadline() {
        let clock = ManualClock::new(1_700_000_000_000);
        let d = LeaseDeadline::from_send(clock.mono(), TTL, MARGIN).unwrap();
        clock.step_wall_ms(-3_600_000);
        clock.step_wall_ms(7_200_000);
        assert_eq!(d.remaining(clock.mono()), TTL - MARGIN);
        clock.advance(TTL - MARGIN - Duration::from_nanos(1));
        assert!(d.is_live(clock.mono()));
        clock.advance(Duration::from_nanos(1));
        assert!(!d.is_live(clock.mono()));
    }
}
