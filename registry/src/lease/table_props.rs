//! Property test of the lease table: random logs (grants, renewals, releases, quarantines,
//! restores, configs, under every apply rule) never panic apply, and the table's invariants
//! hold after every command; a backup of whatever a table reached restores under tokens above
//! all of its own. Commands are built when they apply, from what the table holds then, so
//! that they meet leases (random tokens would almost never match one).

use std::collections::BTreeSet;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

use super::*;
use crate::strategies;

const WALL: u64 = 1_700_000_000_000;

/// A token or grant expectation as a step picks it.
#[derive(Debug, Clone, Copy)]
enum Pick {
    /// The worker ID's current one (a holder in good standing, a leader's fresh CAS).
    Current,
    /// One the table held at some earlier point (a stale holder, a lost CAS).
    Seen(Index),
    Any(u64),
}

/// A timestamp a renewal or release claims.
#[derive(Debug, Clone, Copy)]
enum Claim {
    Nothing,
    /// The leader's stamp plus this many ms.
    Near(i64),
    Any(u64),
}

/// One command of a log, in terms of small sets of worker IDs, holders, owners and
/// incarnations, so that commands keep meeting each other's leases.
#[derive(Debug, Clone)]
enum Step {
    Grant {
        w: u32,
        holder: u8,
        ttl_ms: u64,
        expect: Pick,
        specific: bool,
        owner: Option<u8>,
        incarnation: Option<u8>,
        window_ms: u64,
    },
    Renew {
        w: u32,
        token: Pick,
        send_ms: i64,
        minted: Claim,
        caller: Option<u8>,
        window_ms: u64,
    },
    Release {
        w: u32,
        token: Pick,
        last: Claim,
        caller: Option<u8>,
    },
    Quarantine {
        w: u32,
        reason: String,
    },
    Unquarantine {
        w: u32,
    },
    Configure(ClusterConfig),
    Restore {
        backup: Box<TableBackup>,
        offset_bits: Option<u64>,
    },
    NodeServed(u64),
    EnableRules(u8),
}

/// One log entry: its commands, the rules it was written under, the leader's clock step.
type Entry = (Vec<Step>, u8, i64);

fn pick() -> impl Strategy<Value = Pick> {
    prop_oneof![3 => Just(Pick::Current), 2 => any::<Index>().prop_map(Pick::Seen), 1 => any::<u64>().prop_map(Pick::Any)]
}

fn claim() -> impl Strategy<Value = Claim> {
    prop_oneof![Just(Claim::Nothing), (-90_000..90_000i64).prop_map(Claim::Near), any::<u64>().prop_map(Claim::Any)]
}

fn step() -> impl Strategy<Value = Step> {
    // Mostly IDs every layout has, sometimes one out of range.
    let w = prop_oneof![9 => 0..2u32, 3 => 2..8u32, 1 => any::<u32>()];
    let ttl_ms = prop_oneof![8 => 1..=10_000u64, 1 => Just(0), 1 => any::<u64>()];
    let who = || proptest::option::of(0..3u8);
    let window = || prop_oneof![3 => Just(0), 3 => 1..120_000u64, 1 => any::<u64>()];
    let grant = (w.clone(), 0..4u8, ttl_ms, pick(), any::<bool>(), who(), who(), window()).prop_map(
        |(w, holder, ttl_ms, expect, specific, owner, incarnation, window_ms)| Step::Grant {
            w,
            holder,
            ttl_ms,
            expect,
            specific,
            owner,
            incarnation,
            window_ms,
        },
    );
    let renew = (w.clone(), pick(), -90_000..90_000i64, claim(), who(), window()).prop_map(
        |(w, token, send_ms, minted, caller, window_ms)| Step::Renew { w, token, send_ms, minted, caller, window_ms },
    );
    let release = (w.clone(), pick(), claim(), who()).prop_map(|(w, token, last, caller)| Step::Release {
        w,
        token,
        last,
        caller,
    });
    let restore = (strategies::valid_backup(), proptest::option::of(any::<u64>()))
        .prop_map(|(backup, offset_bits)| Step::Restore { backup: Box::new(backup), offset_bits });
    prop_oneof![
        6 => grant,
        6 => renew,
        3 => release,
        1 => (w.clone(), strategies::text()).prop_map(|(w, reason)| Step::Quarantine { w, reason }),
        1 => w.prop_map(|w| Step::Unquarantine { w }),
        1 => strategies::table_config().prop_map(Step::Configure),
        1 => restore,
        1 => (1..6u64).prop_map(Step::NodeServed),
        1 => (0..=Rules::CURRENT.0).prop_map(Step::EnableRules),
    ]
}

fn entries() -> impl Strategy<Value = Vec<Entry>> {
    vec((vec(step(), 1..4), 0..=Rules::CURRENT.0, -2_000..60_000i64), 1..30)
}

/// How a log starts: a config, or a restore (of a backup, with or without an offset).
fn start() -> impl Strategy<Value = Step> {
    let restore = (strategies::valid_backup(), proptest::option::of(any::<u64>()))
        .prop_map(|(backup, offset_bits)| Step::Restore { backup: Box::new(backup), offset_bits });
    // Sometimes a config no release could have written (a forged entry): refused, not a panic.
    let config = prop_oneof![4 => strategies::table_config(), 1 => strategies::any_config()];
    prop_oneof![config.prop_map(Step::Configure), restore]
}

/// A table and the log it is applying.
struct Run {
    table: LeaseTable,
    index: u64,
    wall_ms: u64,
    /// Every token the table held so far, for stale picks.
    seen: BTreeSet<Token>,
}

impl Run {
    fn new(table: LeaseTable, index: u64) -> Run {
        Run { table, index, wall_ms: WALL, seen: BTreeSet::new() }
    }

    fn apply(&mut self, (steps, rules, wall_step_ms): &Entry) -> Result<(), TestCaseError> {
        self.index += 1;
        self.wall_ms = self.wall_ms.saturating_add_signed(*wall_step_ms);
        for (slot, step) in steps.iter().enumerate() {
            let command = self.command(step);
            if let Command::Renew(renew) = &command {
                self.covered_answers_what_the_log_would(renew, LogPos::new(self.index, slot))?;
            }
            let outcome = self.table.apply_under(Rules(*rules), LogPos::new(self.index, slot), self.wall_ms, &command);
            self.table.check_invariants();
            if let Outcome::Granted(grant) | Outcome::Renewed(grant) = &outcome {
                let record = self.table.record(grant.worker_id);
                prop_assert_eq!(record.map(|r| r.token), Some(grant.token), "{:?}", command);
            }
            self.seen.extend(self.table.records().map(|(_, r)| r.token));
        }
        Ok(())
    }

    fn command(&self, step: &Step) -> Command {
        let owner = |o: &Option<u8>| o.map(|o| format!("spiffe://td/fenceflake/worker/w{o}"));
        match step {
            Step::Grant { w, holder, ttl_ms, expect, specific, owner: o, incarnation, window_ms } => Command::Grant {
                worker_id: WorkerId(*w),
                holder: HolderId(format!("h{holder}")),
                ttl_ms: *ttl_ms,
                expect: self.expectation(*w, *expect),
                specific: *specific,
                owner: owner(o),
                incarnation: incarnation.map(|i| Incarnation(u64::from(i) + 1)),
                window_ms: *window_ms,
            },
            Step::Renew { w, token, send_ms, minted, caller, window_ms } => Command::Renew(Renew {
                worker_id: WorkerId(*w),
                token: self.token(*w, *token),
                wall_ms_at_send: self.wall_ms.saturating_add_signed(*send_ms),
                max_minted_ts_ms: self.claimed(*minted),
                caller: owner(caller),
                window_ms: *window_ms,
            }),
            Step::Release { w, token, last, caller } => Command::Release(Release {
                worker_id: WorkerId(*w),
                token: self.token(*w, *token),
                last_ts_ms: self.claimed(*last),
                caller: owner(caller),
            }),
            Step::Quarantine { w, reason } => {
                Command::Quarantine(Quarantine { worker_id: WorkerId(*w), reason: reason.clone() })
            }
            Step::Unquarantine { w } => Command::Unquarantine(Unquarantine { worker_id: WorkerId(*w) }),
            Step::Configure(config) => Command::Configure(config.clone()),
            Step::Restore { backup, offset_bits: None } => Command::Restore(backup.clone()),
            Step::Restore { backup, offset_bits: Some(bits) } => Command::RestoreWithOffset {
                backup: backup.clone(),
                token_offset: TokenOffset::from_random_bits(*bits),
                window_ms: 30_000,
            },
            Step::NodeServed(node_id) => Command::NodeServed { node_id: *node_id },
            Step::EnableRules(rules) => Command::EnableRules(Rules(*rules)),
        }
    }

    /// Memory renewals (issue 11): a renewal the table says is covered gets, from memory,
    /// exactly what logging it would answer, and logging it would not move the high-water mark.
    fn covered_answers_what_the_log_would(&self, renew: &Renew, pos: LogPos) -> Result<(), TestCaseError> {
        let Some(covered) = self.table.covered_renewal(renew, self.wall_ms) else { return Ok(()) };
        let mut logged = self.table.clone();
        let unwindowed = Command::Renew(Renew { window_ms: 0, ..renew.clone() });
        let outcome = logged.apply_under(Rules::CURRENT, pos, self.wall_ms, &unwindowed);
        prop_assert_eq!(outcome, Outcome::Renewed(covered.grant.clone()), "{:?}", renew);
        let high_water = |t: &LeaseTable| t.record(renew.worker_id).map(|r| r.high_water_ms);
        prop_assert_eq!(high_water(&logged), high_water(&self.table));
        prop_assert!(covered.grant.mint_until_ms >= renew.wall_ms_at_send.saturating_add(covered.grant.ttl_ms));
        Ok(())
    }

    fn token(&self, w: u32, pick: Pick) -> Token {
        match pick {
            Pick::Current => self.table.record(WorkerId(w)).map_or(Token::NONE, |r| r.token),
            Pick::Seen(i) if !self.seen.is_empty() => {
                *self.seen.iter().nth(i.index(self.seen.len())).expect("an index below the length")
            }
            Pick::Seen(_) => Token::NONE,
            Pick::Any(token) => Token(token),
        }
    }

    fn expectation(&self, w: u32, pick: Pick) -> GrantExpectation {
        let current = self
            .table
            .record(WorkerId(w))
            .map_or(GrantExpectation { token: Token::NONE, last_renew: LogPos::default() }, LeaseRecord::expectation);
        match pick {
            Pick::Current => current,
            Pick::Seen(_) => GrantExpectation { token: self.token(w, pick), ..current },
            Pick::Any(value) => GrantExpectation { token: Token(value), last_renew: LogPos(value) },
        }
    }

    fn claimed(&self, claim: Claim) -> u64 {
        match claim {
            Claim::Nothing => 0,
            Claim::Near(ms) => self.wall_ms.saturating_add_signed(ms),
            Claim::Any(ms) => ms,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Goal (issue 9): no log panics apply or breaks an invariant (checked after every
    /// command), and a backup of whatever the table reached restores into another table at a
    /// random offset, under tokens above every token of the first, where the log goes on.
    #[test]
    fn random_logs_keep_the_invariants_and_restore_above_themselves(
        start in start(),
        first in entries(),
        offset_bits in any::<u64>(),
        second in entries(),
    ) {
        let mut run = Run::new(LeaseTable::default(), 0);
        run.apply(&(vec![start], Rules::CURRENT.0, 0))?;
        for entry in &first {
            run.apply(entry)?;
        }
        let Some(backup) = run.table.backup() else { return Ok(()) };
        // A forged start config the table kept (one only a backup's check refuses): no restore.
        if backup.check().is_err() {
            return Ok(());
        }
        let mut restored = LeaseTable::default();
        let token_offset = TokenOffset::from_random_bits(offset_bits);
        let command = Command::RestoreWithOffset { backup: Box::new(backup.clone()), token_offset, window_ms: 0 };
        let outcome = restored.apply(LogPos::new(1, 0), WALL, &command);
        if backup.generation == u8::MAX {
            prop_assert!(matches!(outcome, Outcome::Rejected(Rejection::BadBackup { .. })), "{:?}", outcome);
            return Ok(());
        }
        prop_assert!(matches!(outcome, Outcome::Restored { .. }), "{:?}", outcome);
        let mut run = Run::new(restored, 1);
        for entry in &second {
            run.apply(entry)?;
            let lowest = run.table.records().map(|(_, r)| r.token).filter(|t| *t != Token::NONE).min();
            prop_assert!(lowest.is_none_or(|t| t > backup.last_token), "{:?} <= {}", lowest, backup.last_token);
        }
    }
}
