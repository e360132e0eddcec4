//! The one duration syntax of every binary's flags: a number with a unit, `250ms`, `1.5s`,
//! `2m`, `1h`. A bare number is refused: `--lease-ttl 10` could mean 10 ms or 10 s, and
//! guessing wrong by a factor of a thousand on a lease is not a typo anyone should survive.

use std::time::Duration;

/// Units, longest suffix first so `ms` is not read as `m` + garbage.
const UNITS: [(&str, u64); 5] =
    [("ms", 1_000_000), ("us", 1_000), ("s", 1_000_000_000), ("m", 60_000_000_000), ("h", 3_600_000_000_000)];

/// Parses `text` as `<number><unit>` with unit `us`, `ms`, `s`, `m` or `h`; the number may
/// have a fractional part (`1.5s`). The error names the text and the units.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let Some((number, nanos_per_unit)) =
        UNITS.iter().find_map(|(unit, nanos)| trimmed.strip_suffix(unit).map(|number| (number, *nanos)))
    else {
        return Err(format!("{text:?} has no unit: write it like 250ms, 10s, 2m or 1h (units: us, ms, s, m, h)"));
    };
    let nanos = scaled(number, nanos_per_unit)
        .ok_or_else(|| format!("{text:?} is not a duration like 250ms, 1.5s, 2m or 1h (units: us, ms, s, m, h)"))?;
    Ok(Duration::from_nanos(nanos))
}

/// `number` (digits, optionally `.` and more digits) times `scale`, exactly, in integers;
/// `None` if it is not such a number or overflows.
fn scaled(number: &str, scale: u64) -> Option<u64> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty()
        || !digits_only(whole)
        || !digits_only(fraction)
        || (number.contains('.') && fraction.is_empty())
    {
        return None;
    }
    let mut nanos = whole.parse::<u64>().ok()?.checked_mul(scale)?;
    let mut place = scale;
    for digit in fraction.bytes() {
        place /= 10;
        nanos = nanos.checked_add(u64::from(digit - b'0').checked_mul(place)?)?;
    }
    Some(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_fractions() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration(" 1.5s "), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("750us"), Ok(Duration::from_micros(750)));
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
    }

    /// Goal: a bare number is refused with a message naming the units, not read as ms or s.
    #[test]
    fn a_bare_number_is_refused_naming_the_units() {
        let err = parse_duration("3").unwrap_err();
        assert!(err.contains("\"3\"") && err.contains("no unit") && err.contains("ms, s, m, h"), "{err}");
    }

    #[test]
    fn malformed_values_are_refused_naming_the_value() {
        for bad in ["", "s", "ten s", "-1s", "1.s", ".5s", "1.2.3s", "5d", "1e3ms", "99999999999999999999h"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }
}
