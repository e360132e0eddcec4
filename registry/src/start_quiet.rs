//! How long a process refuses votes after it starts, so that no leader lease relies on more
//! than this node's refusal covers (`leader_lease.rs`):
//!
//! - its own `election_timeout_max` covers any acknowledgement an earlier process of this data
//!   dir gave (a vote lost with a wiped disk included), as long as no leader counted on more;
//! - a leader counts on the value a voter last stated in a clock probe answer, and keeps that
//!   statement until it hears a newer one. A node restarted with a *smaller* value (its flags
//!   changed, or a release whose default is smaller: a rolling upgrade nobody thought of as a
//!   timing change) refuses for the earlier value, plus as long as a leader may still trust
//!   the earlier statement (`clock_watch::STATEMENT_TRUSTED_FOR` on the leader's clock,
//!   [`outlasting`] on this one's), before it relies on its own.
//!
//! The data dir records the largest value a leader may still count on
//! (`storage::stated_timing`): raised before the node answers anything, lowered only once the
//! longer refusal ran out, so a crash in between leaves the larger one for the next start.

use std::time::Duration;

use fenceflake_proto::serving::Stopped;
use fenceflake_proto::switches::{self, Mechanism};

use crate::storage::stated_timing::{self, EarlierStatement};
use crate::storage::{Db, KvError};
use crate::transfer::{ElectionSwitch, NoElections};

/// The default `--election-timeout-max` of every release that kept no record of the value it
/// stated: a data dir of such a release is taken to have stated this.
pub const UNRECORDED_ELECTION_MAX: Duration = Duration::from_millis(600);

/// How long after a restart a leader may still trust what the earlier process stated, on the
/// restarted node's clock: `trusted_for` on the leader's clock, which may run slow by
/// `drift_percent` while this one runs fast by as much (`--leader-lease-drift`).
pub fn outlasting(trusted_for: Duration, drift_percent: u8) -> Duration {
    let drift = u32::from(drift_percent.min(crate::leader_lease::LEASE_DRIFT_PERCENT_MAX));
    trusted_for * (100 + drift) / (100 - drift)
}

/// The refusal a process starts with, and what its record becomes when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartQuiet {
    /// Votes refused for this long after the start.
    pub refuse_for: Duration,
    /// The record to write once `refuse_for` has run out (`None`: it already holds this
    /// process's value).
    pub then_record: Option<Duration>,
}

/// The refusal of a process running `own`, given what earlier processes stated, and
/// `learned_within`: how long a leader takes at most to hear a new statement. With the
/// mechanism switched off (the simulator's self-test only) every start refuses for its own
/// value, as before the record existed.
pub fn quiet_after_start(own: Duration, earlier: EarlierStatement, learned_within: Duration) -> StartQuiet {
    let earlier = match earlier {
        EarlierStatement::None => own,
        EarlierStatement::Unrecorded => UNRECORDED_ELECTION_MAX,
        EarlierStatement::Recorded(stated) => stated,
    };
    if earlier > own && !switches::is_off(Mechanism::StartQuiet) {
        StartQuiet { refuse_for: earlier + learned_within, then_record: Some(own) }
    } else {
        StartQuiet { refuse_for: own, then_record: None }
    }
}

/// Read the record of `db`, write `own` at once when it is no smaller than anything stated
/// before, and say how long to refuse votes.
pub async fn begin(db: &Db, had_state: bool, own: Duration, learned_within: Duration) -> Result<StartQuiet, KvError> {
    let earlier = stated_timing::read(db, had_state)?;
    let quiet = quiet_after_start(own, earlier, learned_within);
    match quiet.then_record {
        None => {
            if earlier != EarlierStatement::Recorded(own) {
                stated_timing::record(db, own).await?;
            }
        }
        Some(_) => tracing::warn!(
            election_timeout_max_ms = own.as_millis() as u64,
            earlier = ?earlier,
            refuse_votes_for_ms = quiet.refuse_for.as_millis() as u64,
            "this node runs a smaller --election-timeout-max than it stated before: it refuses votes for the earlier value until every leader has heard the new one (docs/operations.md, changing the Raft timing)"
        ),
    }
    Ok(quiet)
}

/// Keep this node out of elections from its start (`NoElections::StartQuiet`, set before
/// Raft runs anything that could campaign). Its votes for others are refused by the leader
/// lease (`LeaderLease::new`); this covers its vote for itself, which with pre-vote
/// `pre_vote::run` checks anyway, and which without it openraft's timer would cast after its
/// own `election_timeout_max` plus an election timeout: less than an earlier, larger value.
pub fn hold_elections(elections: &ElectionSwitch) {
    elections.set(NoElections::StartQuiet, true);
}

/// Once `quiet` has run out (unless `stopped` first), let this node campaign again and record
/// the value this process states.
pub async fn end(db: Db, quiet: StartQuiet, elections: ElectionSwitch, stopped: Stopped) {
    if record_when_over(db, quiet, stopped).await {
        elections.set(NoElections::StartQuiet, false);
    }
}

/// Once `quiet` has run out, record the value this process states; whether it ran out
/// (`false`: stopped first).
async fn record_when_over(db: Db, quiet: StartQuiet, stopped: Stopped) -> bool {
    tokio::select! {
        () = stopped.wait() => return false,
        () = tokio::time::sleep(quiet.refuse_for) => {}
    }
    let Some(own) = quiet.then_record else { return true };
    match stated_timing::record(&db, own).await {
        Ok(()) => tracing::info!(
            election_timeout_max_ms = own.as_millis() as u64,
            "the earlier --election-timeout-max no longer binds this node: it refuses votes for its own from now"
        ),
        // The larger record stays: the next start refuses longer than it needs to, nothing worse.
        Err(e) => {
            tracing::warn!(error = %e, "cannot record this node's --election-timeout-max; the next start will refuse votes for the earlier one")
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRESH: Duration = Duration::from_secs(3);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Goal (issue 11, default timing): a node whose `election_timeout_max` shrank refuses for
    /// the old one plus the time a leader takes to hear the new; the same or a larger value, or
    /// a blank dir, refuses for its own, as every process did before.
    #[test]
    fn a_node_refuses_for_what_it_stated_before_until_leaders_heard_the_new_value() {
        let own = ms(300);
        let same = quiet_after_start(own, EarlierStatement::Recorded(own), FRESH);
        assert_eq!(same, StartQuiet { refuse_for: own, then_record: None });
        assert_eq!(quiet_after_start(own, EarlierStatement::None, FRESH), same, "a blank dir stated nothing");
        assert_eq!(quiet_after_start(own, EarlierStatement::Recorded(ms(200)), FRESH), same, "grown: own covers");
        assert_eq!(
            quiet_after_start(own, EarlierStatement::Recorded(ms(900)), FRESH),
            StartQuiet { refuse_for: ms(3_900), then_record: Some(own) }
        );
        assert_eq!(
            quiet_after_start(own, EarlierStatement::Unrecorded, FRESH),
            StartQuiet { refuse_for: UNRECORDED_ELECTION_MAX + FRESH, then_record: Some(own) },
            "an older release's dir is taken to have stated its default"
        );
        assert_eq!(quiet_after_start(ms(600), EarlierStatement::Unrecorded, FRESH).refuse_for, ms(600));
    }

    /// Goal (second review): the quiet outlasts a leader's trust in a statement even when the
    /// leader's clock runs slow and this node's fast, each by the drift bound.
    #[test]
    fn the_quiet_outlasts_a_statements_trust_on_clocks_within_the_drift_bound() {
        let trusted = Duration::from_secs(2);
        for drift in [0u8, 10, 33, 50] {
            let quiet = outlasting(trusted, drift).as_secs_f64();
            let d = f64::from(drift) / 100.0;
            // Real time: this node's clock fast by d, the leader's slow by d.
            assert!(quiet / (1.0 + d) >= trusted.as_secs_f64() / (1.0 - d) - 1e-9, "drift {drift}: {quiet}");
        }
        assert_eq!(outlasting(trusted, 10), Duration::from_nanos(2_444_444_444));
    }

    /// The record is raised before anything is answered and lowered only once the refusal
    /// ended: a process stopped inside it leaves the larger value to the next.
    #[tokio::test]
    async fn the_record_is_lowered_only_after_the_longer_refusal_ran_out() {
        let db = Db::Memory(crate::storage::MemDisk::default());
        stated_timing::record(&db, ms(600)).await.unwrap();
        let short = ms(100);
        let quiet = begin(&db, true, ms(300), short).await.unwrap();
        assert_eq!(quiet.refuse_for, ms(700));
        assert_eq!(stated_timing::read(&db, true).unwrap(), EarlierStatement::Recorded(ms(600)));
        let (_stop, stopped) = fenceflake_proto::serving::stop_signal();
        record_when_over(db.clone(), quiet, stopped).await;
        assert_eq!(stated_timing::read(&db, true).unwrap(), EarlierStatement::Recorded(ms(300)));

        stated_timing::record(&db, ms(600)).await.unwrap();
        let quiet = begin(&db, true, ms(300), FRESH).await.unwrap();
        let (stop, stopped) = fenceflake_proto::serving::stop_signal();
        stop.stop();
        record_when_over(db.clone(), quiet, stopped).await;
        assert_eq!(stated_timing::read(&db, true).unwrap(), EarlierStatement::Recorded(ms(600)), "stopped inside");

        // A blank dir records its own at once.
        let blank = Db::Memory(crate::storage::MemDisk::default());
        assert_eq!(begin(&blank, false, ms(300), FRESH).await.unwrap().refuse_for, ms(300));
        assert_eq!(stated_timing::read(&blank, true).unwrap(), EarlierStatement::Recorded(ms(300)));
    }
}
