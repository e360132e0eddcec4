//! UNSAFE switches that turn one safety mechanism off, so the deterministic simulator can
//! prove that its checkers catch what each mechanism prevents (a self-test per mechanism).
//!
//! They exist only where feature `unsafe-test-switches` is on: the simulator's build and the
//! separately built test binary. Everywhere else [`is_off`] is the constant `false` and the
//! code behind it compiles away; no workspace member of the product turns the feature on, and
//! t00 proves the shipped binary has no unsafe switch.
//!
//! Process-wide (one atomic set): the simulator turns a mechanism off for a whole run, on
//! every node and worker it simulates.

/// A safety mechanism that a switch can turn off (names as `fenceflake-sim list-mechanisms`
/// prints them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mechanism {
    /// The worker's lease deadline on its monotonic clock (mechanism 2).
    DeadlineCheck,
    /// The worker's wall-clock bound: no timestamp at or past the lease's `mint_until`.
    MintUntil,
    /// The grant's compare-and-set on what the leader saw when it planned the grant.
    GrantCas,
    /// `ensure_linearizable` (and the leader's own log applied) before a leadership's first
    /// decision.
    EnsureLinearizable,
    /// The worker's persisted timestamp ceiling (mechanism 5).
    LocalCeiling,
    /// The high-water mark handed to the next holder as `not_before` (mechanism 4).
    NotBefore,
    /// A new token for every process of a holder (incarnations).
    Incarnations,
    /// The leader lease a memory renewal needs (and the quorum-acknowledgement age every
    /// request's admission checks): off, a leader that may have been deposed answers renewals.
    LeaderLease,
    /// A memory renewal's refusal while the leader has a grant of the worker ID in flight (what
    /// stands in for the grant's compare-and-set, which a memory renewal does not move).
    RenewalReservation,
    /// A restarted registry node's longer refusal of votes when it runs a smaller
    /// `election_timeout_max` than it stated before (`start_quiet.rs`): off, it refuses for its
    /// own only, while a leader's lease may still count on the earlier, larger value.
    StartQuiet,
}

impl Mechanism {
    pub const ALL: [Mechanism; 10] = [
        Mechanism::DeadlineCheck,
        Mechanism::MintUntil,
        Mechanism::GrantCas,
        Mechanism::EnsureLinearizable,
        Mechanism::LocalCeiling,
        Mechanism::NotBefore,
        Mechanism::Incarnations,
        Mechanism::LeaderLease,
        Mechanism::RenewalReservation,
        Mechanism::StartQuiet,
    ];

    /// The kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::DeadlineCheck => "deadline-check",
            Mechanism::MintUntil => "mint-until",
            Mechanism::GrantCas => "grant-cas",
            Mechanism::EnsureLinearizable => "ensure-linearizable",
            Mechanism::LocalCeiling => "local-ceiling",
            Mechanism::NotBefore => "not-before",
            Mechanism::Incarnations => "incarnations",
            Mechanism::LeaderLease => "leader-lease",
            Mechanism::RenewalReservation => "renewal-reservation",
            Mechanism::StartQuiet => "start-quiet",
        }
    }

    /// The mechanism called `name`.
    pub fn parse(name: &str) -> Option<Mechanism> {
        Mechanism::ALL.into_iter().find(|m| m.name() == name)
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

impl std::fmt::Display for Mechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(feature = "unsafe-test-switches")]
static OFF: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Whether `mechanism` is switched off (never, without feature `unsafe-test-switches`).
#[inline]
pub fn is_off(mechanism: Mechanism) -> bool {
    #[cfg(feature = "unsafe-test-switches")]
    {
        OFF.load(std::sync::atomic::Ordering::Relaxed) & mechanism.bit() != 0
    }
    #[cfg(not(feature = "unsafe-test-switches"))]
    {
        let _ = mechanism.bit();
        false
    }
}

/// UNSAFE: exactly `mechanisms` are off from now on, in this whole process.
#[cfg(feature = "unsafe-test-switches")]
pub fn set_off(mechanisms: &[Mechanism]) {
    let bits = mechanisms.iter().fold(0, |bits, m| bits | m.bit());
    OFF.store(bits, std::sync::atomic::Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: every mechanism has one distinct kebab-case name that parses back.
    #[test]
    fn names_parse_back() {
        for m in Mechanism::ALL {
            assert_eq!(Mechanism::parse(m.name()), Some(m));
            assert!(m.name().chars().all(|c| c.is_ascii_lowercase() || c == '-'), "{m}");
        }
        assert_eq!(Mechanism::parse("nope"), None);
    }

    /// Goal: without the feature, nothing can be switched off.
    #[cfg(not(feature = "unsafe-test-switches"))]
    #[test]
    fn nothing_is_off_in_the_product() {
        assert!(Mechanism::ALL.into_iter().all(|m| !is_off(m)));
    }
}
