//! Seed ranges as the command line gives them: `A..B` (half-open), `A..` (open-ended, soak
//! only), or one seed `A`.

use std::ops::Range;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seeds {
    pub start: u64,
    /// `None`: no end (soak).
    pub end: Option<u64>,
}

impl Seeds {
    pub fn parse(text: &str) -> Result<Seeds, String> {
        let number = |s: &str| s.trim().parse::<u64>().map_err(|e| format!("seed {s:?} is not a u64: {e}"));
        let seeds = match text.split_once("..") {
            None => {
                let seed = number(text)?;
                Seeds { start: seed, end: Some(seed.saturating_add(1)) }
            }
            Some((start, "")) => Seeds { start: number(start)?, end: None },
            Some((start, end)) => Seeds { start: number(start)?, end: Some(number(end)?) },
        };
        match seeds.end {
            Some(end) if end <= seeds.start => Err(format!("seed range {text:?} is empty (A..B runs A up to B-1)")),
            _ => Ok(seeds),
        }
    }

    /// The range, if it ends.
    pub fn bounded(&self) -> Option<Range<u64>> {
        self.end.map(|end| self.start..end)
    }

    pub fn iter(&self) -> impl Iterator<Item = u64> {
        let end = self.end.unwrap_or(u64::MAX);
        self.start..end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the three spellings parse; empty and malformed ranges are refused naming the text.
    #[test]
    fn seed_ranges_parse() {
        assert_eq!(Seeds::parse("3..7").unwrap().bounded(), Some(3..7));
        assert_eq!(Seeds::parse("9").unwrap().bounded(), Some(9..10));
        assert_eq!(Seeds::parse("5..").unwrap().end, None);
        assert!(Seeds::parse("7..7").unwrap_err().contains("empty"));
        assert!(Seeds::parse("x..3").unwrap_err().contains("\"x\""));
    }
}
