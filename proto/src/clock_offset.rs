//! What one request/response round trip proves about the offset between this process's wall
//! clock and a remote one: the one skew check shared by the worker (boot and every renewal),
//! the registry's trust work and the registry-clock work. Pure arithmetic, no IO, no clock.
//!
//! The remote side stamps its wall clock (`remote_ms`) somewhere between our send and our
//! receive. If our wall clock ran steadily through the call, it read between `send_wall_ms` and
//! `receive_wall_ms` at that instant, so the offset `local − remote` lies in
//! `[send_wall_ms − remote_ms, receive_wall_ms − remote_ms]`. A slow call (an election, a
//! retry) only widens the interval; it never makes a correct clock look skewed. A clock is
//! called skewed only when the *whole* interval lies outside `±max`
//! ([`OffsetBounds::provably_beyond`]), and trusted again only when the whole interval lies
//! inside ([`OffsetBounds::provably_within`]); a call too slow to tell proves neither.
//!
//! If our wall clock stepped during the call, the two wall readings no longer bracket the
//! instant of the remote reading by themselves. [`OffsetBounds::from_timed_round_trip`] also
//! takes the call's duration on the monotonic clock and widens the interval so that it still
//! holds the true offset after one step of any size in either direction (the offset before
//! or after the step, whichever was in force at the remote reading). With several steps
//! inside one call the interval is only as good as the wall readings.
//!
//! All arithmetic is exact (`i128`) and the results saturate at the `i64` range, so any
//! `u64` input, `u64::MAX` included, is fine.

use std::fmt;

/// Bounds on `local − remote` wall clock, in ms (positive: the local clock is ahead).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OffsetBounds {
    min_ms: i64,
    max_ms: i64,
}

/// Which way a local clock is off from the remote one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The local clock reads later than the remote one.
    Ahead,
    /// The local clock reads earlier than the remote one.
    Behind,
}

/// A skew the round trip proves: the local clock is off by at least `at_least_ms` in
/// `direction`, whichever instant of the round trip the remote reading was taken at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProvenSkew {
    pub direction: Direction,
    /// The smallest skew consistent with the round trip (the interval's end nearest zero).
    pub at_least_ms: u64,
}

fn saturate(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

impl OffsetBounds {
    /// From the local wall clock read just before sending (`send_wall_ms`) and just after
    /// receiving (`receive_wall_ms`), and the remote wall clock stamped in the response. If
    /// the local clock went back during the call (`receive < send`), the two readings are
    /// taken in either order; see [`OffsetBounds::from_timed_round_trip`] for steps.
    pub fn from_round_trip(send_wall_ms: u64, receive_wall_ms: u64, remote_ms: u64) -> OffsetBounds {
        let (first, last) = (send_wall_ms.min(receive_wall_ms), send_wall_ms.max(receive_wall_ms));
        OffsetBounds::between(i128::from(first), i128::from(last), remote_ms)
    }

    /// Like [`OffsetBounds::from_round_trip`], with the call's duration on the monotonic
    /// clock (`elapsed_ms`, receive − send). A wall step during the call shows as a difference
    /// between `receive − send` and `elapsed_ms`; the interval is widened to
    /// `[min(send, receive − elapsed), max(receive, send + elapsed)] − remote`, which holds the
    /// offset in force at the remote reading after one wall step of any size. Without a step
    /// it is exactly `[send, receive] − remote`.
    pub fn from_timed_round_trip(
        send_wall_ms: u64,
        receive_wall_ms: u64,
        elapsed_ms: u64,
        remote_ms: u64,
    ) -> OffsetBounds {
        let (send, receive, elapsed) = (i128::from(send_wall_ms), i128::from(receive_wall_ms), i128::from(elapsed_ms));
        let first = send.min(receive - elapsed).min(receive);
        let last = receive.max(send + elapsed).max(send);
        OffsetBounds::between(first, last, remote_ms)
    }

    /// Exactly `offset_ms`: a reading taken at a known instant (e.g. a test, or a clock read
    /// against itself).
    pub fn exact(offset_ms: i64) -> OffsetBounds {
        OffsetBounds { min_ms: offset_ms, max_ms: offset_ms }
    }

    fn between(first_local: i128, last_local: i128, remote_ms: u64) -> OffsetBounds {
        let remote = i128::from(remote_ms);
        OffsetBounds { min_ms: saturate(first_local - remote), max_ms: saturate(last_local - remote) }
    }

    /// Smallest offset consistent with the round trip (ms, positive: local ahead).
    pub fn min_ms(&self) -> i64 {
        self.min_ms
    }

    /// Largest offset consistent with the round trip (ms, positive: local ahead).
    pub fn max_ms(&self) -> i64 {
        self.max_ms
    }

    /// How wide the uncertainty is: the round trip (plus any wall step during it).
    pub fn width_ms(&self) -> u64 {
        self.max_ms.abs_diff(self.min_ms)
    }

    /// The skew this round trip proves beyond `max_skew_ms`, if any: `Some` only when every
    /// offset in the interval is beyond `±max_skew_ms` (an offset of exactly `max_skew_ms` is
    /// within). The answer names the interval's end nearest zero, the least the clock is off.
    pub fn provably_beyond(&self, max_skew_ms: u64) -> Option<ProvenSkew> {
        let bound = i128::from(max_skew_ms);
        if i128::from(self.min_ms) > bound {
            Some(ProvenSkew { direction: Direction::Ahead, at_least_ms: self.min_ms.unsigned_abs() })
        } else if i128::from(self.max_ms) < -bound {
            Some(ProvenSkew { direction: Direction::Behind, at_least_ms: self.max_ms.unsigned_abs() })
        } else {
            None
        }
    }

    /// Whether every offset in the interval is within `±max_skew_ms` (ends included): the
    /// round trip proves the clocks agree. Neither this nor [`OffsetBounds::provably_beyond`]
    /// holds when the interval straddles the bound (a call too slow to tell).
    pub fn provably_within(&self, max_skew_ms: u64) -> bool {
        let bound = i128::from(max_skew_ms);
        i128::from(self.min_ms) >= -bound && i128::from(self.max_ms) <= bound
    }
}

/// Bounds on the median of several offsets, each known only within its bounds (the registry's
/// clock check: this node's offset from the median clock of a quorum). The median of the true
/// offsets lies between the lower median of the intervals' lower ends and the upper median of
/// their upper ends, because an order statistic only grows when any input grows; with an even
/// count both middle values lie inside. So fewer than half of the readings, however wrong,
/// cannot move either end outside the range of the others. `None` for no readings.
pub fn median(readings: &[OffsetBounds]) -> Option<OffsetBounds> {
    let (mut mins, mut maxs): (Vec<i64>, Vec<i64>) = readings.iter().map(|r| (r.min_ms, r.max_ms)).unzip();
    mins.sort_unstable();
    maxs.sort_unstable();
    let n = readings.len();
    Some(OffsetBounds { min_ms: *mins.get(n.checked_sub(1)? / 2)?, max_ms: *maxs.get(n / 2)? })
}

/// `+a..+b ms` style: the interval of `local − remote`, signs always shown.
impl fmt::Display for OffsetBounds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min_ms == self.max_ms {
            write!(f, "{:+} ms", self.min_ms)
        } else {
            write!(f, "{:+}..{:+} ms", self.min_ms, self.max_ms)
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ahead => "ahead of",
            Direction::Behind => "behind",
        })
    }
}

/// `at least 599000 ms ahead of` / `at least 700 ms behind`: reads on with "the registry's".
impl fmt::Display for ProvenSkew {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at least {} ms {}", self.at_least_ms, self.direction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_700_000_000_000;
    const MAX: u64 = 500;

    /// Goal: the regression of issue 14 — a clock on the same host as the registry never
    /// looks skewed, however slow the round trip and wherever in it the registry read its
    /// clock (even at the very send or receive instant of a 2 s call).
    #[test]
    fn same_host_never_parks_even_with_a_two_second_round_trip() {
        for rtt in [0, 1, 523, 1_046, 2_000, 2_900, 60_000] {
            for remote in [T, T + rtt / 4, T + rtt / 2, T + rtt] {
                let bounds = OffsetBounds::from_round_trip(T, T + rtt, remote);
                assert!(bounds.min_ms() <= 0 && bounds.max_ms() >= 0, "{bounds} for rtt {rtt}");
                assert_eq!(bounds.provably_beyond(MAX), None, "rtt {rtt}, remote at +{}", remote - T);
                let timed = OffsetBounds::from_timed_round_trip(T, T + rtt, rtt, remote);
                assert_eq!(timed, bounds, "no step: the monotonic time changes nothing");
            }
        }
        // The report's numbers: 523 ms "from the registry's" over a 1-2 s renewal.
        let bounds = OffsetBounds::from_round_trip(T, T + 1_046, T + 523);
        assert_eq!((bounds.min_ms(), bounds.max_ms(), bounds.width_ms()), (-523, 523, 1_046));
        assert_eq!(bounds.provably_beyond(MAX), None);
    }

    /// Goal: a clock truly 10 minutes off parks in both directions, even over a slow call,
    /// and the proven skew is the interval's end nearest zero.
    #[test]
    fn a_ten_minute_off_clock_is_proven_skewed() {
        let ten_min: u64 = 600_000;
        // Local ahead: the registry reads ten minutes less at the middle of a 2 s call.
        let ahead = OffsetBounds::from_round_trip(T, T + 2_000, T + 1_000 - ten_min);
        assert_eq!((ahead.min_ms(), ahead.max_ms()), (599_000, 601_000));
        let proven = ahead.provably_beyond(MAX).expect("ten minutes ahead");
        assert_eq!(proven, ProvenSkew { direction: Direction::Ahead, at_least_ms: 599_000 });
        assert_eq!(proven.to_string(), "at least 599000 ms ahead of");
        assert_eq!(ahead.to_string(), "+599000..+601000 ms");

        let behind = OffsetBounds::from_round_trip(T, T + 2_000, T + 1_000 + ten_min);
        let proven = behind.provably_beyond(MAX).expect("ten minutes behind");
        assert_eq!(proven, ProvenSkew { direction: Direction::Behind, at_least_ms: 599_000 });
        assert_eq!(proven.to_string(), "at least 599000 ms behind");
        assert_eq!(behind.to_string(), "-601000..-599000 ms");
    }

    /// Goal: the edges — an interval that touches `±max` is within; one past it on its
    /// nearest end is beyond; an interval straddling the bound is not proven either way.
    #[test]
    fn interval_edges() {
        let cases: &[(&str, i64, i64, Option<ProvenSkew>)] = &[
            ("exactly +max", 500, 500, None),
            ("exactly -max", -500, -500, None),
            ("nearest end at +max", 500, 900, None),
            ("nearest end at -max", -900, -500, None),
            ("+max+1", 501, 501, Some(ProvenSkew { direction: Direction::Ahead, at_least_ms: 501 })),
            ("-max-1", -501, -501, Some(ProvenSkew { direction: Direction::Behind, at_least_ms: 501 })),
            ("straddles +max", 499, 10_000, None),
            ("straddles -max", -10_000, -499, None),
            ("spans both bounds", -10_000, 10_000, None),
            ("zero", 0, 0, None),
        ];
        for (name, min, max, want) in cases {
            let within = *min >= -(MAX as i64) && *max <= MAX as i64;
            // Build each from a real round trip: send at T, receive at T + width.
            let width = max.abs_diff(*min);
            let remote = (i128::from(T) - i128::from(*min)) as u64;
            let bounds = OffsetBounds::from_round_trip(T, T + width, remote);
            assert_eq!((bounds.min_ms(), bounds.max_ms()), (*min, *max), "{name}");
            assert_eq!(bounds.provably_beyond(MAX), *want, "{name}");
            assert_eq!(bounds.provably_within(MAX), within, "{name}");
            assert!(!(within && want.is_some()), "{name}: within and beyond at once");
        }
        assert!(!OffsetBounds::from_round_trip(T, T + 2_000, T + 1_000).provably_within(MAX), "too slow to tell");
        assert!(OffsetBounds::from_round_trip(0, u64::MAX, 0).provably_within(u64::MAX));
        assert_eq!(OffsetBounds::exact(501).provably_beyond(MAX).map(|p| p.at_least_ms), Some(501));
        assert_eq!(OffsetBounds::exact(-3).to_string(), "-3 ms");
        assert_eq!(OffsetBounds::exact(0).provably_beyond(0), None);
        assert!(OffsetBounds::exact(1).provably_beyond(0).is_some());
        assert_eq!(OffsetBounds::exact(i64::MAX).provably_beyond(u64::MAX), None, "a bound beyond i64 is never passed");
    }

    /// Goal: a wall step during the call. The wall readings alone still bracket the offset
    /// after a forward step, but not after a backward one; with the monotonic duration the
    /// interval holds the offset in force at the remote reading either way, and a step never
    /// makes a correct clock look skewed.
    #[test]
    fn a_wall_step_during_the_call_widens_the_interval() {
        // Backward step of 500 ms after 100 ms of a 200 ms call; the registry read its clock
        // (which agrees with ours before the step) at +150 ms, after our step: the offset in
        // force then is -500.
        let (send, elapsed) = (T, 200);
        let receive = send + elapsed - 500;
        let remote = T + 150;
        let wall_only = OffsetBounds::from_round_trip(send, receive, remote);
        assert_eq!((wall_only.min_ms(), wall_only.max_ms()), (-450, -150), "wall readings alone miss -500");
        let timed = OffsetBounds::from_timed_round_trip(send, receive, elapsed, remote);
        assert_eq!((timed.min_ms(), timed.max_ms()), (-650, 50));
        assert!(timed.min_ms() <= -500 && timed.max_ms() >= -500);
        // Read before our step, when the offset was 0: also inside.
        let before = OffsetBounds::from_timed_round_trip(send, receive, elapsed, T + 50);
        assert!(before.min_ms() <= 0 && before.max_ms() >= 0, "{before}");

        // Forward step of 10 minutes during a 200 ms call, registry read after it.
        let receive = send + elapsed + 600_000;
        let timed = OffsetBounds::from_timed_round_trip(send, receive, elapsed, T + 150);
        assert_eq!(timed, OffsetBounds::from_round_trip(send, receive, T + 150), "forward: wall readings suffice");
        assert!(timed.min_ms() <= 600_000 && timed.max_ms() >= 600_000, "{timed}");
        assert_eq!(timed.provably_beyond(MAX), None, "wider, so not proven by this call");
    }

    /// Goal: the median of several readings — exact readings give the plain median (lower
    /// and upper middle for an even count), intervals widen it only by their own widths, and
    /// one reading of any size among three or more cannot move it outside the others.
    #[test]
    fn median_of_readings() {
        let exact = |v: &[i64]| v.iter().map(|o| OffsetBounds::exact(*o)).collect::<Vec<_>>();
        assert_eq!(median(&[]), None);
        assert_eq!(median(&exact(&[7])), Some(OffsetBounds::exact(7)));
        assert_eq!(median(&exact(&[0, 600_000, 3])), Some(OffsetBounds::exact(3)));
        let even = median(&exact(&[0, 10, 20, 600_000])).expect("four readings");
        assert_eq!((even.min_ms(), even.max_ms()), (10, 20));
        let two = median(&exact(&[0, -600_000])).expect("two readings");
        assert_eq!((two.min_ms(), two.max_ms()), (-600_000, 0), "two clocks cannot tell which one is off");
        let widened = median(&[
            OffsetBounds::from_round_trip(T, T + 4, T),
            OffsetBounds::exact(-600_000),
            OffsetBounds::from_round_trip(T, T + 10, T + 5),
        ])
        .expect("three readings");
        assert_eq!((widened.min_ms(), widened.max_ms()), (-5, 4));
        for bad in [i64::MIN, -600_000, 600_000, i64::MAX] {
            let m = median(&exact(&[0, 2, bad])).expect("three");
            assert!(m.min_ms() >= 0 && m.max_ms() <= 2, "{bad}: {m}");
        }
    }

    /// Goal: no overflow or panic on any input, `u64::MAX` included; results saturate.
    #[test]
    fn saturating_arithmetic_on_extreme_inputs() {
        let extremes = [0, 1, T, i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX - 1, u64::MAX];
        for &a in &extremes {
            for &b in &extremes {
                for &c in &extremes {
                    let bounds = OffsetBounds::from_round_trip(a, b, c);
                    assert!(bounds.min_ms() <= bounds.max_ms());
                    let _ = bounds.provably_beyond(MAX);
                    let _ = bounds.provably_beyond(u64::MAX);
                    let _ = bounds.width_ms();
                    let _ = bounds.to_string();
                    for &d in &extremes {
                        let timed = OffsetBounds::from_timed_round_trip(a, b, d, c);
                        assert!(timed.min_ms() <= bounds.min_ms() && timed.max_ms() >= bounds.max_ms());
                    }
                }
            }
        }
        let far_ahead = OffsetBounds::from_round_trip(u64::MAX, u64::MAX, 0);
        assert_eq!((far_ahead.min_ms(), far_ahead.max_ms()), (i64::MAX, i64::MAX));
        assert_eq!(far_ahead.provably_beyond(MAX).map(|p| p.at_least_ms), Some(i64::MAX as u64));
        let far_behind = OffsetBounds::from_round_trip(0, 0, u64::MAX);
        assert_eq!(far_behind.min_ms(), i64::MIN);
        let proven = far_behind.provably_beyond(MAX).expect("behind");
        assert_eq!((proven.direction, proven.at_least_ms), (Direction::Behind, 1u64 << 63));
        assert_eq!(OffsetBounds::from_round_trip(0, u64::MAX, 0).width_ms(), i64::MAX as u64);
        assert_eq!(OffsetBounds::from_round_trip(0, u64::MAX, 0).provably_beyond(MAX), None);
    }
}
