//! `WorkerId`: the leased identity whose bits every minted ID carries.

use std::fmt;

/// A worker ID as leased from the registry. A newtype so it cannot be confused with a
/// sequence number or a token; whether it fits a given layout is checked by
/// [`Layout`](crate::Layout), which knows the field width.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkerId(u16);

impl WorkerId {
    /// Wrap a raw worker ID.
    pub const fn new(raw: u16) -> WorkerId {
        WorkerId(raw)
    }

    /// The raw value.
    pub const fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the newtype round-trips its value and prints as the bare number (log fields).
    #[test]
    fn round_trips_and_displays_bare() {
        let w = WorkerId::new(1023);
        assert_eq!(w.get(), 1023);
        assert_eq!(w.to_string(), "1023");
    }
}
