//! Why a worker is not minting: the park causes reported by `Status`, the `UNAVAILABLE`
//! answers, the health service and the `parked{reason}` metric.

use std::fmt;

use crate::clock_guard::ParkReason;

/// Every reason a worker refuses to mint. A small fixed set, so it can label metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParkCause {
    /// Waiting for the wall clock to pass the persisted ceiling and the grant's `not_before`.
    Booting,
    /// The lease deadline passed without a committed renewal; resumes (same worker ID, same
    /// token) as soon as one commits.
    LeaseExpired,
    /// The registry answered FENCED (another holder has the worker ID) or EXPIRED (the lease
    /// was released): the lease is gone for good.
    Fenced,
    /// The registry answered SUPERSEDED: a newer process of this holder (a copy of the state
    /// dir, or a restart elsewhere) took the lease over. Gone for good, and the state dir's
    /// holder ID is given up so that this process's restart does not take it back.
    Superseded,
    /// The registry quarantined the worker ID (an overlap was detected or an operator asked):
    /// parked for good.
    Quarantined,
    /// The wall clock went back further than the clock guard waits out; resumes once it is
    /// past the last minted millisecond again.
    ClockRegressed,
    /// The wall clock is further than `max_skew` from the registry leader's; resumes when a
    /// later renewal finds it within bounds.
    ClockSkew,
    /// The ceiling could not be persisted: minting on could replay a millisecond after the
    /// next crash. Parked for good; a human must look at the disk.
    StateDirFailed,
    /// Shutting down: the lease is being released.
    Stopping,
}

impl ParkCause {
    /// Every cause, for metrics that export one series per cause.
    pub const ALL: [ParkCause; 9] = [
        ParkCause::Booting,
        ParkCause::LeaseExpired,
        ParkCause::Fenced,
        ParkCause::Superseded,
        ParkCause::Quarantined,
        ParkCause::ClockRegressed,
        ParkCause::ClockSkew,
        ParkCause::StateDirFailed,
        ParkCause::Stopping,
    ];

    /// The wire name (`StatusResponse.park_reason`, `UNAVAILABLE` messages).
    pub fn as_wire(self) -> &'static str {
        match self {
            ParkCause::Booting => "BOOTING",
            ParkCause::LeaseExpired => "LEASE_EXPIRED",
            ParkCause::Fenced => "FENCED",
            ParkCause::Superseded => "SUPERSEDED",
            ParkCause::Quarantined => "QUARANTINED",
            ParkCause::ClockRegressed => "CLOCK_REGRESSED",
            ParkCause::ClockSkew => "CLOCK_SKEW",
            ParkCause::StateDirFailed => "STATE_DIR_FAILED",
            ParkCause::Stopping => "STOPPING",
        }
    }

    /// The metric label: the wire name in lower case, like [`ParkReason::as_label`].
    pub fn as_label(self) -> &'static str {
        match self {
            ParkCause::Booting => "booting",
            ParkCause::LeaseExpired => "lease_expired",
            ParkCause::Fenced => "fenced",
            ParkCause::Superseded => "superseded",
            ParkCause::Quarantined => "quarantined",
            ParkCause::ClockRegressed => ParkReason::ClockRegressed.as_label(),
            ParkCause::ClockSkew => ParkReason::ClockSkew.as_label(),
            ParkCause::StateDirFailed => "state_dir_failed",
            ParkCause::Stopping => "stopping",
        }
    }

    /// Whether the worker can never mint again under this lease.
    pub fn is_permanent(self) -> bool {
        self.is_terminal() || self == ParkCause::Stopping
    }

    /// Whether the worker lost the right to mint without being asked to stop: it can never
    /// mint again, and should get out of the way (the `fenceflake worker` process releases
    /// what it can and exits non-zero so that its supervisor starts it afresh; a library-mode
    /// `Generator` reports it through [`crate::Generator::ended`] and its errors).
    pub fn is_terminal(self) -> bool {
        matches!(self, ParkCause::Fenced | ParkCause::Superseded | ParkCause::Quarantined | ParkCause::StateDirFailed)
    }
}

impl From<ParkReason> for ParkCause {
    fn from(reason: ParkReason) -> ParkCause {
        match reason {
            ParkReason::ClockRegressed => ParkCause::ClockRegressed,
            ParkReason::ClockSkew => ParkCause::ClockSkew,
        }
    }
}

impl fmt::Display for ParkCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_wire())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: labels are the wire names in lower case and agree with the clock guard's, and
    /// only the causes that cannot clear are permanent.
    #[test]
    fn names_agree_and_permanence() {
        for cause in ParkCause::ALL {
            assert_eq!(cause.as_label(), cause.as_wire().to_ascii_lowercase());
        }
        assert_eq!(ParkCause::from(ParkReason::ClockSkew), ParkCause::ClockSkew);
        let permanent: Vec<_> = ParkCause::ALL.into_iter().filter(|c| c.is_permanent()).collect();
        assert_eq!(
            permanent,
            [
                ParkCause::Fenced,
                ParkCause::Superseded,
                ParkCause::Quarantined,
                ParkCause::StateDirFailed,
                ParkCause::Stopping
            ]
        );
        assert!(!ParkCause::Stopping.is_terminal(), "a requested stop is not a loss");
    }
}
