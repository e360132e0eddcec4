//! The leader's grant decision, pure: which worker ID an Acquire gets and what that ID must
//! still look like when the grant applies (the compare of the compare-and-set). Expiry is
//! decided only through [`Renewals::expiry`] at the instant `now` given (mechanism 3). No
//! clock, lock, IO or gRPC here, so every branch is tested below with hand-made instants.

use std::collections::HashMap;

use crate::clock::MonoTime;
use crate::expiry::{Expiry, Renewals};
use crate::lease::{ClusterConfig, GrantExpectation, HolderId, Incarnation, LeaseTable, Rejection, Rules, WorkerId};

/// Why no grant can be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoGrant {
    #[error("cluster not configured yet")]
    NotConfigured,
    #[error("no free worker ID: all {count} are held or quarantined")]
    Exhausted { count: u32 },
    #[error("{0}")]
    Rejected(Rejection),
}

/// Worker IDs with a grant attempt running, counted: two attempts may plan the same ID (a
/// holder's own lease asked for twice at once, one specific ID asked for twice), and it stays
/// reserved until the last of them ends, not the first.
#[derive(Debug, Default)]
pub struct InFlight(HashMap<WorkerId, usize>);

impl InFlight {
    pub fn contains(&self, worker_id: &WorkerId) -> bool {
        self.0.contains_key(worker_id)
    }

    pub fn insert(&mut self, worker_id: WorkerId) {
        *self.0.entry(worker_id).or_default() += 1;
    }

    /// One attempt on `worker_id` ended.
    pub fn remove_one(&mut self, worker_id: WorkerId) {
        if let std::collections::hash_map::Entry::Occupied(mut attempts) = self.0.entry(worker_id) {
            *attempts.get_mut() -= 1;
            if *attempts.get() == 0 {
                attempts.remove();
            }
        }
    }
}

impl FromIterator<WorkerId> for InFlight {
    fn from_iter<I: IntoIterator<Item = WorkerId>>(ids: I) -> InFlight {
        let mut in_flight = InFlight::default();
        ids.into_iter().for_each(|id| in_flight.insert(id));
        in_flight
    }
}

/// What the planner reads: the table, the leader's renewal knowledge at `now`, and the IDs
/// with a grant in flight (skipped, so concurrent acquires do not all race for one ID).
#[derive(Debug, Clone, Copy)]
pub struct GrantInputs<'a> {
    pub table: &'a LeaseTable,
    pub renewals: &'a Renewals,
    pub now: MonoTime,
    /// The leader's wall clock (the stamp its next batch carries): how far ahead a held ID's
    /// high-water mark lies, for a holder's new incarnation.
    pub wall_ms: u64,
    pub reserved: &'a InFlight,
}

/// Who asks: the holder within its owner's namespace, and the process incarnation it stated.
#[derive(Debug, Clone, Copy)]
pub struct Asker<'a> {
    pub owner: Option<&'a str>,
    pub holder: &'a HolderId,
    pub incarnation: Option<Incarnation>,
}

/// A new incarnation of a holder with `auto` takes a free worker ID rather than wait longer
/// than this past its held one's high-water mark (a restart after SIGKILL then serves within
/// about this long; the held ID keeps its mark for its next holder).
pub const TAKEOVER_WAIT_MAX_MS: u64 = 1_000;

/// Pick the worker ID for the asker (`wanted`, or any): the holder's own lease first (a
/// retried Acquire gets it back, a new incarnation takes it over), then a free ID, then one
/// whose lease has expired at `now`.
pub fn plan_grant(
    inputs: GrantInputs<'_>,
    asker: Asker<'_>,
    wanted: Option<WorkerId>,
) -> Result<(WorkerId, GrantExpectation), NoGrant> {
    let GrantInputs { table, renewals, now, wall_ms, reserved } = inputs;
    let config = table.config().ok_or(NoGrant::NotConfigured)?;
    if let Some(held) = table.held_by(asker.owner, asker.holder) {
        let record = table.record(held).expect("a held ID has a record");
        let wait_ms = record.high_water_ms.saturating_sub(wall_ms);
        let takeover =
            table.rules_in_force(Rules::CURRENT) >= Rules::INCARNATIONS && record.taken_over_by(asker.incarnation);
        if wanted.is_none() && takeover && wait_ms > TAKEOVER_WAIT_MAX_MS {
            let soon = wall_ms.saturating_add(TAKEOVER_WAIT_MAX_MS);
            let free_soon = table
                .free_ids()
                .find(|w| !reserved.contains(w) && table.record(*w).is_none_or(|r| r.high_water_ms <= soon));
            if let Some(free) = free_soon {
                return Ok((free, expectation(table, free)));
            }
        }
        // The apply returns the lease the holder has (renewed), or a new incarnation takes it
        // over under a new token.
        return Ok((held, expectation(table, held)));
    }
    let expired = |worker_id: WorkerId, ttl_ms: u64| {
        renewals.expiry(now, worker_id, ttl_ms, config.cool_down_ms) == Some(Expiry::Expired)
    };
    if let Some(worker_id) = wanted {
        return plan_specific(table, config, worker_id, expired).map(|e| (worker_id, e));
    }
    // Lowest first, but one whose high-water mark has passed before one its new holder would
    // have to wait for (an ID just released or given up by a restarting incarnation).
    let ready = |w: &WorkerId| table.record(*w).is_none_or(|r| r.high_water_ms <= wall_ms);
    let free = || table.free_ids().filter(|w| !reserved.contains(w));
    if let Some(free) = free().find(ready).or_else(|| free().next()) {
        return Ok((free, expectation(table, free)));
    }
    let reclaimable = table
        .records()
        .find(|(w, r)| r.holder.is_some() && r.quarantine.is_none() && !reserved.contains(w) && expired(*w, r.ttl_ms));
    match reclaimable {
        Some((worker_id, record)) => Ok((worker_id, record.expectation())),
        None => Err(NoGrant::Exhausted { count: config.worker_id_count() }),
    }
}

fn plan_specific(
    table: &LeaseTable,
    config: &ClusterConfig,
    worker_id: WorkerId,
    expired: impl Fn(WorkerId, u64) -> bool,
) -> Result<GrantExpectation, NoGrant> {
    let count = config.worker_id_count();
    if worker_id.0 >= count {
        return Err(NoGrant::Rejected(Rejection::OutOfRange { worker_id, count }));
    }
    let Some(record) = table.record(worker_id) else {
        return Ok(expectation(table, worker_id));
    };
    if let Some(reason) = &record.quarantine {
        return Err(NoGrant::Rejected(Rejection::Quarantined { reason: reason.clone() }));
    }
    match &record.holder {
        None => Ok(record.expectation()),
        Some(_) if expired(worker_id, record.ttl_ms) => Ok(record.expectation()),
        Some(current) => {
            Err(NoGrant::Rejected(Rejection::AlreadyHeld { holder: Some(current.clone()), specific: true }))
        }
    }
}

fn expectation(table: &LeaseTable, worker_id: WorkerId) -> GrantExpectation {
    table
        .record(worker_id)
        .map_or(GrantExpectation { token: Default::default(), last_renew: Default::default() }, |r| r.expectation())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::expiry::LeadershipId;
    use crate::lease::{Command, LogPos, Outcome, Quarantine};

    const TTL_MS: u64 = 1_000;
    const COOL_DOWN_MS: u64 = 500;
    const LEADER: LeadershipId = LeadershipId { term: 2, node_id: 1 };

    /// A table of 4 worker IDs, and a leader confirmed at the manual clock's start.
    struct Fixture {
        clock: Arc<ManualClock>,
        table: LeaseTable,
        renewals: Renewals,
        next_index: u64,
    }

    impl Fixture {
        fn new() -> Fixture {
            let clock = Arc::new(ManualClock::new(1_700_000_000_000));
            let mut table = LeaseTable::default();
            let config = ClusterConfig {
                epoch_ms: 0,
                worker_id_bits: 2,
                sequence_bits: 12,
                ttl_ms_max: 60_000,
                cool_down_ms: COOL_DOWN_MS,
            };
            table.apply(LogPos::new(1, 0), 0, &Command::Configure(config));
            table.apply(LogPos::new(1, 1), 0, &Command::EnableRules(Rules::CURRENT));
            let mut renewals = Renewals::default();
            renewals.observe_leader(LEADER, clock.mono());
            renewals.confirm(LEADER);
            Fixture { clock, table, renewals, next_index: 2 }
        }

        fn apply(&mut self, command: Command) -> Outcome {
            self.next_index += 1;
            self.table.apply(LogPos::new(self.next_index, 0), 0, &command)
        }

        /// Grant `worker_id` to `holder` as the leader would, and note the renewal now.
        fn grant(&mut self, holder: &str, worker_id: u32) {
            let (planned, expect) = self.plan(holder, Some(worker_id)).unwrap();
            let holder = HolderId(holder.into());
            let cmd = Command::Grant {
                worker_id: planned,
                holder,
                ttl_ms: TTL_MS,
                expect,
                specific: true,
                owner: None,
                incarnation: None,
                window_ms: 0,
            };
            assert!(matches!(self.apply(cmd), Outcome::Granted(_)));
            self.renewals.note_renewal(planned, self.clock.mono());
        }

        fn plan_reserving(
            &self,
            holder: &str,
            wanted: Option<u32>,
            reserved: &InFlight,
        ) -> Result<(WorkerId, GrantExpectation), NoGrant> {
            let (now, wall_ms) = (self.clock.mono(), self.clock.wall_ms());
            let inputs = GrantInputs { table: &self.table, renewals: &self.renewals, now, wall_ms, reserved };
            let holder = HolderId(holder.into());
            plan_grant(inputs, Asker { owner: None, holder: &holder, incarnation: None }, wanted.map(WorkerId))
        }

        fn plan(&self, holder: &str, wanted: Option<u32>) -> Result<(WorkerId, GrantExpectation), NoGrant> {
            self.plan_reserving(holder, wanted, &InFlight::default())
        }
    }

    #[test]
    fn free_ids_go_lowest_first_skipping_reserved_ones() {
        let mut f = Fixture::new();
        assert_eq!(f.plan("a", None).unwrap().0, WorkerId(0));
        f.grant("a", 0);
        assert_eq!(f.plan("b", None).unwrap().0, WorkerId(1));
        let reserved = InFlight::from_iter([WorkerId(1), WorkerId(2)]);
        assert_eq!(f.plan_reserving("b", None, &reserved).unwrap().0, WorkerId(3));
    }

    /// Goal (issue 11, review): an ID two attempts planned at once stays reserved until the
    /// second ends (a memory renewal must not slip in while a grant of it is in flight).
    #[test]
    fn an_id_planned_twice_stays_reserved_until_both_attempts_end() {
        let mut in_flight = InFlight::from_iter([WorkerId(4), WorkerId(4)]);
        in_flight.remove_one(WorkerId(4));
        assert!(in_flight.contains(&WorkerId(4)), "the second attempt still runs");
        in_flight.remove_one(WorkerId(4));
        assert!(!in_flight.contains(&WorkerId(4)));
        in_flight.remove_one(WorkerId(4));
        assert!(!in_flight.contains(&WorkerId(4)), "an extra end changes nothing");
    }

    /// Goal: a retried Acquire gets the holder's own lease back, whatever it asked for.
    #[test]
    fn a_holder_gets_its_own_lease_back() {
        let mut f = Fixture::new();
        f.grant("a", 2);
        let (worker_id, expect) = f.plan("a", None).unwrap();
        assert_eq!(worker_id, WorkerId(2));
        assert_eq!(expect, f.table.record(WorkerId(2)).unwrap().expectation());
    }

    /// Goal (mechanism 3): a held ID is reclaimed only once ttl + cool-down has passed on the
    /// leader's monotonic clock since the last renewal it saw, and a wall step changes nothing.
    #[test]
    fn a_held_id_is_reclaimed_only_after_ttl_plus_cool_down() {
        let mut f = Fixture::new();
        for (i, holder) in ["a", "b", "c", "d"].into_iter().enumerate() {
            f.grant(holder, i as u32);
        }
        assert_eq!(f.plan("e", None), Err(NoGrant::Exhausted { count: 4 }));
        f.clock.step_wall_ms(3_600_000);
        f.clock.advance(Duration::from_millis(TTL_MS + COOL_DOWN_MS - 1));
        assert_eq!(f.plan("e", None), Err(NoGrant::Exhausted { count: 4 }));
        assert!(matches!(f.plan("e", Some(1)), Err(NoGrant::Rejected(Rejection::AlreadyHeld { specific: true, .. }))));
        f.clock.advance(Duration::from_millis(1));
        let (worker_id, expect) = f.plan("e", None).unwrap();
        assert_eq!(worker_id, WorkerId(0));
        assert_eq!(expect, f.table.record(WorkerId(0)).unwrap().expectation(), "the CAS compares the old lease");
        assert_eq!(f.plan("e", Some(3)).unwrap().0, WorkerId(3));
    }

    /// Goal: a renewal seen late restarts the wait for that ID only.
    #[test]
    fn a_renewal_restarts_that_ids_wait() {
        let mut f = Fixture::new();
        for (i, holder) in ["a", "b", "c", "d"].into_iter().enumerate() {
            f.grant(holder, i as u32);
        }
        f.clock.advance(Duration::from_millis(TTL_MS));
        f.renewals.note_renewal(WorkerId(0), f.clock.mono());
        f.clock.advance(Duration::from_millis(COOL_DOWN_MS));
        assert_eq!(f.plan("e", None).unwrap().0, WorkerId(1));
    }

    /// Goal: nothing is reclaimed by an unconfirmed leadership, however much time passed.
    #[test]
    fn an_unconfirmed_leader_reclaims_nothing() {
        let mut f = Fixture::new();
        for (i, holder) in ["a", "b", "c", "d"].into_iter().enumerate() {
            f.grant(holder, i as u32);
        }
        f.clock.advance(Duration::from_secs(3600));
        f.renewals.observe_leader(LeadershipId { term: 3, node_id: 1 }, f.clock.mono());
        f.clock.advance(Duration::from_secs(3600));
        assert_eq!(f.plan("e", None), Err(NoGrant::Exhausted { count: 4 }));
    }

    #[test]
    fn specific_claims_are_checked_for_range_and_quarantine() {
        let mut f = Fixture::new();
        assert_eq!(
            f.plan("a", Some(4)),
            Err(NoGrant::Rejected(Rejection::OutOfRange { worker_id: WorkerId(4), count: 4 }))
        );
        f.apply(Command::Quarantine(Quarantine { worker_id: WorkerId(1), reason: "suspect".into() }));
        assert_eq!(f.plan("a", Some(1)), Err(NoGrant::Rejected(Rejection::Quarantined { reason: "suspect".into() })));
        assert_eq!(f.plan("a", None).unwrap().0, WorkerId(0), "a quarantined ID is not free");
    }

    #[test]
    fn nothing_is_planned_before_the_cluster_is_configured() {
        let f = Fixture { table: LeaseTable::default(), ..Fixture::new() };
        assert_eq!(f.plan("a", None), Err(NoGrant::NotConfigured));
    }

    /// Goal: a new incarnation of a holder plans its held ID (taken over under a new token),
    /// unless it asked for any ID and the held one's high-water mark is more than
    /// [`TAKEOVER_WAIT_MAX_MS`] ahead: then a free ID whose mark has passed; none free, the
    /// held one. The same incarnation (a retry) always plans its held ID.
    #[test]
    fn a_new_incarnation_takes_a_free_id_rather_than_wait_long() {
        let mut f = Fixture::new();
        let wall = f.clock.wall_ms();
        let holder = HolderId("h".into());
        let grant = |worker_id, holder: &HolderId, incarnation| Command::Grant {
            worker_id: WorkerId(worker_id),
            holder: holder.clone(),
            ttl_ms: 10_000,
            expect: GrantExpectation { token: Default::default(), last_renew: Default::default() },
            specific: false,
            owner: None,
            incarnation,
            window_ms: 0,
        };
        assert!(matches!(
            f.table.apply(LogPos::new(3, 0), wall, &grant(0, &holder, Some(Incarnation(1)))),
            Outcome::Granted(_)
        ));
        let plan = |f: &Fixture, incarnation, wanted: Option<u32>| {
            let reserved = InFlight::default();
            let inputs = GrantInputs {
                table: &f.table,
                renewals: &f.renewals,
                now: f.clock.mono(),
                wall_ms: wall,
                reserved: &reserved,
            };
            plan_grant(
                inputs,
                Asker { owner: None, holder: &holder, incarnation: Some(Incarnation(incarnation)) },
                wanted.map(WorkerId),
            )
            .unwrap()
            .0
        };
        assert_eq!(plan(&f, 1, None), WorkerId(0), "a retry gets its lease back");
        assert_eq!(plan(&f, 2, Some(0)), WorkerId(0), "an explicit ID is taken over, however long the wait");
        assert_eq!(plan(&f, 2, None), WorkerId(1), "auto takes a free ID rather than wait ~10 s");
        for (index, other) in [(4, 1), (5, 2), (6, 3)] {
            let cmd = grant(other, &HolderId(format!("o{other}")), None);
            assert!(matches!(f.table.apply(LogPos::new(index, 0), wall, &cmd), Outcome::Granted(_)));
        }
        assert_eq!(plan(&f, 2, None), WorkerId(0), "no free ID: the held one, after the wait");
    }

    /// Goal: among free IDs, one whose high-water mark has passed goes first (lowest first
    /// among those); only when none has, the lowest, whose holder then waits.
    #[test]
    fn free_ids_whose_mark_passed_go_first() {
        let mut f = Fixture::new();
        let wall = f.clock.wall_ms();
        let grant = |w: u32, holder: &str| Command::Grant {
            worker_id: WorkerId(w),
            holder: HolderId(holder.into()),
            ttl_ms: 10_000,
            expect: GrantExpectation { token: Default::default(), last_renew: Default::default() },
            specific: true,
            owner: None,
            incarnation: None,
            window_ms: 0,
        };
        // ID 0 granted and released at once: free, but its mark lies 10 s ahead.
        let Outcome::Granted(g) = f.table.apply(LogPos::new(3, 0), wall, &grant(0, "a")) else { panic!() };
        let release =
            crate::lease::Release { worker_id: WorkerId(0), token: g.token, last_ts_ms: wall + 5_000, caller: None };
        assert_eq!(f.table.apply(LogPos::new(4, 0), wall, &Command::Release(release)), Outcome::Released);
        let (now, reserved) = (f.clock.mono(), InFlight::default());
        let plan = |f: &Fixture| {
            let inputs =
                GrantInputs { table: &f.table, renewals: &f.renewals, now, wall_ms: wall, reserved: &reserved };
            plan_grant(inputs, Asker { owner: None, holder: &HolderId("new".into()), incarnation: None }, None)
                .unwrap()
                .0
        };
        assert_eq!(plan(&f), WorkerId(1), "ID 0's new holder would wait 5 s");
        for (index, w) in [(5, 1), (6, 2), (7, 3)] {
            assert!(matches!(
                f.table.apply(LogPos::new(index, 0), wall, &grant(w, &format!("h{w}"))),
                Outcome::Granted(_)
            ));
        }
        assert_eq!(plan(&f), WorkerId(0), "the only free ID, after the wait");
    }
}
