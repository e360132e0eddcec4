//! The scenarios a run can use, and the nemesis schedule each one produces for a seed. A
//! schedule is data (a list of timed actions), so it is printed, recorded and reproducible.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Which registry nodes a partition separates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Shape {
    /// Two random halves (2 | 3) of the registry nodes; workers stay with the majority.
    Halves,
    /// Each node sees a different majority: n_i talks only to its ring neighbours ±1, ±2.
    MajoritiesRing,
    /// The current leader alone.
    IsolateLeader,
    /// Two halves joined by one bridge node that sees both.
    Bridge,
    /// One worker cut off from every registry node (it must park at its deadline).
    WorkerCut { worker: usize },
    /// Every worker cut off from every registry node: a registry outage, seen by workers.
    QuorumLoss,
}

/// One thing the nemesis does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    Partition(Shape),
    /// Random loss (percent) between every pair of registry nodes and workers.
    Loss(u8),
    /// Remove every partition and loss rule.
    Heal,
    KillRegistry {
        node: usize,
    },
    KillLeader,
    /// Restart every registry node that is down.
    RestartRegistries,
    KillWorker {
        worker: usize,
        wipe_state: bool,
    },
    RestartWorkers,
    /// SIGSTOP a worker (past its TTL if the pause lasts long enough).
    Pause {
        worker: usize,
    },
    /// Start the standby worker claiming the ID `worker` held when it was paused or cut off,
    /// retrying until the registry re-grants it (the "a new node claims 7" half of the
    /// GC-pause case).
    ClaimId {
        worker: usize,
    },
    ResumeAll,
    /// Step a worker's wall clock by this many milliseconds (libfaketime offset file).
    ClockStep {
        worker: usize,
        offset_ms: i64,
    },
    /// Step the wall clock of the registry node leading at that moment by this many
    /// milliseconds (every registry node runs under libfaketime in such a scenario).
    RegistryClockStep {
        offset_ms: i64,
    },
    /// Reset every worker's and registry node's clock offset to zero.
    ClockReset,
    /// Start a second worker process claiming the same explicit worker ID as `worker`.
    DuplicateManifest {
        worker: usize,
    },
    /// One caller asks a worker for more than its per-millisecond ceiling.
    Burst {
        worker: usize,
        ids_per_call: u32,
        calls: u32,
    },
    /// Copy a running worker's state dir (`cp -a`, a cloned VM) to `copies` new worker
    /// processes, each in a namespace of its own, all started at once with the worker's own
    /// certificate identity, and kept running under restart-always supervision.
    CloneState {
        worker: usize,
        copies: usize,
    },
    /// Hold the packets of each listed link (NFQUEUE, `crate::delay`); a link is one
    /// direction, so a pair listed once is delayed one way. Replaces any delay in place;
    /// `Heal` lifts it.
    Delay {
        budget: DelayBudget,
        links: Vec<LinkDelay>,
    },
    /// A client with a valid `worker` certificate starts forging calls (`crate::adversary`,
    /// run by the workload, which is told the window at start) ...
    Adversary,
    /// ... and stops.
    AdversaryStop,
}

/// One end of a delayed link, by role and index (the run maps it to an address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum End {
    Registry(usize),
    Worker(usize),
}

/// Packets from `from` to `to` are held `delay_ms` plus a uniform `0..=jitter_ms` each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkDelay {
    pub from: End,
    pub to: End,
    pub delay_ms: u64,
    pub jitter_ms: u64,
}

impl LinkDelay {
    /// The longest a packet of this link is held.
    pub fn worst(&self) -> Duration {
        Duration::from_millis(self.delay_ms + self.jitter_ms)
    }
}

/// What a [`Action::Delay`] is sized against; it names the nemesis window, which the parking
/// checker reads (neither name is a prefix of the other).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DelayBudget {
    /// A worker's round trip to the registry stays within a quarter of the TTL: no worker
    /// may park.
    QuarterTtl,
    /// Every one-way delay between a worker and the registry exceeds the deadline margin and
    /// a round trip exceeds one registry attempt (TTL/3): every worker parks by its deadline.
    BeyondMargin,
}

impl DelayBudget {
    pub fn nemesis_name(self) -> &'static str {
        match self {
            DelayBudget::QuarterTtl => "latency-quarter-ttl",
            DelayBudget::BeyondMargin => "latency-beyond-margin",
        }
    }
}

/// How far `registry-clock-skew` moves the leader's wall clock: the reproduced failure of
/// issue 9 (a registry node ten minutes fast, leading).
pub const REGISTRY_CLOCK_JUMP_MS: i64 = 600_000;

/// Whether the schedule steps a registry node's clock (its nodes then start under libfaketime).
pub fn steps_registry_clocks(steps: &[Step]) -> bool {
    steps.iter().any(|s| matches!(s.action, Action::RegistryClockStep { .. }))
}

/// An action at an offset from the start of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub at: Duration,
    pub action: Action,
}

/// A named scenario: what it exercises, and its schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario { name: "partition-halves", about: "registry split into two random halves, then healed" },
    Scenario { name: "partition-ring", about: "majorities ring: every node sees a different majority" },
    Scenario { name: "partition-leader", about: "the registry leader isolated from everyone" },
    Scenario { name: "partition-bridge", about: "two halves joined by one bridge node" },
    Scenario { name: "worker-cut", about: "one worker cut off from the registry: it parks at its deadline" },
    Scenario { name: "packet-loss", about: "10% random loss between every registry node and worker" },
    Scenario { name: "kill-registry", about: "SIGKILL and restart of random registry nodes" },
    Scenario { name: "kill-leader", about: "SIGKILL of the registry leader, then restart" },
    Scenario { name: "kill-worker", about: "SIGKILL of a worker and immediate restart (restart replays a hot ms?)" },
    Scenario { name: "pause", about: "SIGSTOP a worker past its TTL (the GC pause), then SIGCONT" },
    Scenario { name: "clock-step", about: "worker wall clocks step back 5 ms, 50 ms, 2 s, and forward" },
    Scenario { name: "clock-strobe", about: "a worker's wall clock jumps back and forth every 200 ms" },
    Scenario {
        name: "clock-jump-cut",
        about: "a worker cut off from the registry, its clock 10 s forward; a standby claims its ID",
    },
    Scenario { name: "disk-loss", about: "a worker's state dir wiped before its restart" },
    Scenario { name: "duplicate-manifest", about: "a second worker started with an explicit ID already held" },
    Scenario {
        name: "quorum-loss",
        about: "every worker cut from the registry longer than the TTL: park in waves, resume",
    },
    Scenario { name: "burst", about: "one caller above a worker's per-millisecond ceiling" },
    Scenario {
        name: "adversary",
        about: "a client with a valid worker certificate forges lease, operator and plaintext calls",
    },
    Scenario {
        name: "clone-state",
        about: "a running worker's state dir copied to a new process (a cloned VM), once and twice at once",
    },
    Scenario {
        name: "registry-clock-skew",
        about: "the registry leader's wall clock jumps 10 min ahead, twice, then back",
    },
    Scenario {
        name: "latency",
        about: "worker-registry round trips delayed up to TTL/4 (both ways, then one way): no worker parks",
    },
    Scenario {
        name: "latency-beyond-margin",
        about: "worker-registry delays beyond the deadline margin: workers park by their deadline, resume",
    },
    Scenario { name: "random-mix", about: "a seeded random mix of all of the above" },
];

pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

/// Sizes the schedule needs to know.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub registries: usize,
    pub workers: usize,
    /// The workers' lease TTL: pauses, outages and delays are sized against it.
    pub ttl: Duration,
    /// The workers' deadline margin (`--margin`): `latency-beyond-margin` delays past it.
    pub margin: Duration,
}

/// The schedule of `scenario` for a run of `limit`, seeded. Faults start after a nominal
/// phase (a fifth of the run) and everything is healed by 70% of it, so the rest shows
/// recovery.
pub fn schedule(scenario: &Scenario, sizes: Sizes, limit: Duration, seed: u64) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed);
    let start = limit / 5;
    let heal_by = limit * 7 / 10;
    let at = |f: f64| start + (heal_by - start).mul_f64(f);
    let outage = (sizes.ttl * 2).min(heal_by - start);
    let worker = rng.gen_range(0..sizes.workers);
    let step = |at: Duration, action: Action| Step { at, action };
    match scenario.name {
        "partition-halves" => cycle(at, &[Action::Partition(Shape::Halves)], Action::Heal),
        "partition-ring" => cycle(at, &[Action::Partition(Shape::MajoritiesRing)], Action::Heal),
        "partition-leader" => cycle(at, &[Action::Partition(Shape::IsolateLeader)], Action::Heal),
        "partition-bridge" => cycle(at, &[Action::Partition(Shape::Bridge)], Action::Heal),
        "worker-cut" => {
            vec![step(start, Action::Partition(Shape::WorkerCut { worker })), step(start + outage, Action::Heal)]
        }
        "packet-loss" => vec![step(start, Action::Loss(10)), step(heal_by, Action::Heal)],
        "kill-registry" => {
            let mut nodes: Vec<usize> = (0..sizes.registries).collect();
            nodes.shuffle(&mut rng);
            vec![
                step(at(0.0), Action::KillRegistry { node: nodes[0] }),
                step(at(0.3), Action::RestartRegistries),
                step(at(0.5), Action::KillRegistry { node: nodes[1] }),
                step(at(0.5), Action::KillRegistry { node: nodes[2] }),
                step(at(0.8), Action::RestartRegistries),
            ]
        }
        "kill-leader" => cycle(at, &[Action::KillLeader], Action::RestartRegistries),
        "kill-worker" => cycle(at, &[Action::KillWorker { worker, wipe_state: false }], Action::RestartWorkers),
        "disk-loss" => cycle(at, &[Action::KillWorker { worker, wipe_state: true }], Action::RestartWorkers),
        "pause" => vec![
            step(start, Action::Pause { worker }),
            step(start + sizes.ttl + sizes.ttl / 2, Action::ClaimId { worker }),
            step(start + (sizes.ttl * 3).min(heal_by - start), Action::ResumeAll),
        ],
        "clock-step" => vec![
            step(at(0.0), Action::ClockStep { worker, offset_ms: -5 }),
            step(at(0.2), Action::ClockStep { worker, offset_ms: -50 }),
            step(at(0.4), Action::ClockStep { worker: (worker + 1) % sizes.workers, offset_ms: -2000 }),
            step(at(0.6), Action::ClockStep { worker, offset_ms: 1500 }),
            step(at(1.0), Action::ClockReset),
        ],
        "clock-strobe" => {
            let mut steps = Vec::new();
            let mut t = start;
            let mut back = true;
            while t < heal_by {
                steps.push(step(t, Action::ClockStep { worker, offset_ms: if back { -100 } else { 0 } }));
                back = !back;
                t += Duration::from_millis(200);
            }
            steps.push(step(heal_by, Action::ClockReset));
            steps
        }
        // Cut off, then the wall clock jumps forward by far more than the margin: the
        // monotonic deadline does not notice, only `mint_until` keeps the worker below the
        // standby's not_before.
        "clock-jump-cut" => vec![
            step(start, Action::Partition(Shape::WorkerCut { worker })),
            step(start + Duration::from_millis(50), Action::ClockStep { worker, offset_ms: 10_000 }),
            step(start + sizes.ttl + sizes.ttl / 2, Action::ClaimId { worker }),
            step(start + (sizes.ttl * 3).min(heal_by - start), Action::Heal),
            step(heal_by, Action::ClockReset),
        ],
        "duplicate-manifest" => vec![step(start, Action::DuplicateManifest { worker })],
        "quorum-loss" => vec![step(start, Action::Partition(Shape::QuorumLoss)), step(start + outage, Action::Heal)],
        "burst" => vec![step(start, Action::Burst { worker, ids_per_call: 4096, calls: 2000 })],
        "adversary" => vec![step(start, Action::Adversary), step(heal_by, Action::AdversaryStop)],
        // Once, then twice at once from another worker: the newest incarnation of a holder
        // takes over, every older one is superseded once and comes back as a stranger.
        "clone-state" => vec![
            step(at(0.0), Action::CloneState { worker, copies: 1 }),
            step(at(0.4), Action::CloneState { worker: (worker + 1) % sizes.workers, copies: 2 }),
        ],
        // Ten minutes ahead, far beyond --max-clock-offset and the workers' --max-skew: the
        // leader must step aside and admit nothing it would stamp; each round hits whichever
        // node leads then.
        "registry-clock-skew" => {
            cycle(at, &[Action::RegistryClockStep { offset_ms: REGISTRY_CLOCK_JUMP_MS }], Action::ClockReset)
        }
        "latency" => latency(&mut rng, sizes, [start, at(0.5), heal_by]),
        "latency-beyond-margin" => {
            vec![step(start, latency_beyond_margin(&mut rng, sizes)), step(start + outage, Action::Heal)]
        }
        _ => random_mix(&mut rng, sizes, start, heal_by),
    }
}

/// `latency`: both ways first, every direction of a worker-registry pair drawn on its own;
/// then one way only (a random direction per pair) with the whole budget on it; then heal.
fn latency(rng: &mut StdRng, sizes: Sizes, [both_ways, one_way, heal]: [Duration; 3]) -> Vec<Step> {
    vec![
        Step { at: both_ways, action: latency_quarter_ttl(rng, sizes, false) },
        Step { at: one_way, action: latency_quarter_ttl(rng, sizes, true) },
        Step { at: heal, action: Action::Heal },
    ]
}

/// A delay of at most `worst` in all: jitter up to a fifth of it, the fixed part from half
/// of what is left up to all of it (so the budget is really used).
fn draw_delay(rng: &mut StdRng, from: End, to: End, worst: Duration) -> LinkDelay {
    let worst_ms = worst.as_millis() as u64;
    let jitter_ms = rng.gen_range(0..=worst_ms / 5);
    let rest = worst_ms - jitter_ms;
    LinkDelay { from, to, delay_ms: rng.gen_range(rest / 2..=rest), jitter_ms }
}

/// Every worker-registry pair, each pair once: (worker end, registry end).
fn worker_registry_pairs(sizes: Sizes) -> impl Iterator<Item = (End, End)> {
    (0..sizes.workers).flat_map(move |w| (0..sizes.registries).map(move |r| (End::Worker(w), End::Registry(r))))
}

/// `latency`: a worker's round trip to any registry node within TTL/4 — TTL/8 each way, or,
/// `one_way`, TTL/4 on one random direction of each pair; registry nodes among themselves
/// within TTL/300 each way (10 ms for a 3 s lease): Raft's heartbeat (50 ms) is also its
/// replication timeout, so a round trip there stays well inside it, a commit adds little to
/// the worker's round trip and leadership stays put.
fn latency_quarter_ttl(rng: &mut StdRng, sizes: Sizes, one_way: bool) -> Action {
    let mut links = Vec::new();
    for (worker, registry) in worker_registry_pairs(sizes) {
        if one_way {
            let (from, to) = if rng.gen_bool(0.5) { (worker, registry) } else { (registry, worker) };
            links.push(draw_delay(rng, from, to, sizes.ttl / 4));
        } else {
            links.push(draw_delay(rng, worker, registry, sizes.ttl / 8));
            links.push(draw_delay(rng, registry, worker, sizes.ttl / 8));
        }
    }
    for a in 0..sizes.registries {
        for b in (0..sizes.registries).filter(|b| *b != a) {
            links.push(draw_delay(rng, End::Registry(a), End::Registry(b), sizes.ttl / 300));
        }
    }
    Action::Delay { budget: DelayBudget::QuarterTtl, links }
}

/// `latency-beyond-margin`: each direction of every worker-registry pair held at least the
/// margin and TTL/4, up to TTL/3 plus jitter: every round trip outlasts the worker's
/// per-attempt timeout (TTL/3), so no renewal gets through and every worker parks by its
/// deadline. The registry nodes among themselves are not delayed.
fn latency_beyond_margin(rng: &mut StdRng, sizes: Sizes) -> Action {
    let low_ms = sizes.margin.max(sizes.ttl / 4).as_millis() as u64;
    let high_ms = (sizes.ttl / 3).as_millis() as u64;
    let jitter_ms = (sizes.ttl / 12).as_millis() as u64;
    let mut links = Vec::new();
    for (worker, registry) in worker_registry_pairs(sizes) {
        for (from, to) in [(worker, registry), (registry, worker)] {
            let delay_ms = rng.gen_range(low_ms..=high_ms.max(low_ms));
            links.push(LinkDelay { from, to, delay_ms, jitter_ms: rng.gen_range(0..=jitter_ms) });
        }
    }
    Action::Delay { budget: DelayBudget::BeyondMargin, links }
}

/// When the schedule's adversary forges (start, stop); it runs to `limit` without a stop step.
pub fn adversary_window(steps: &[Step], limit: Duration) -> Option<(Duration, Duration)> {
    let start = steps.iter().find(|s| s.action == Action::Adversary)?.at;
    let stop = steps.iter().find(|s| s.action == Action::AdversaryStop).map_or(limit, |s| s.at);
    Some((start, stop))
}

/// How many clone processes (each needs a namespace of its own) the schedule starts.
pub fn clone_count(steps: &[Step]) -> usize {
    steps
        .iter()
        .map(|s| match s.action {
            Action::CloneState { copies, .. } => copies,
            _ => 0,
        })
        .sum()
}

/// Fault, heal, fault, heal: two rounds inside the fault window.
fn cycle(at: impl Fn(f64) -> Duration, faults: &[Action], heal: Action) -> Vec<Step> {
    let mut steps = Vec::new();
    for round in [0.0, 0.5] {
        for fault in faults {
            steps.push(Step { at: at(round), action: fault.clone() });
        }
        steps.push(Step { at: at(round + 0.3), action: heal.clone() });
    }
    steps
}

fn random_mix(rng: &mut StdRng, sizes: Sizes, start: Duration, heal_by: Duration) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut t = start;
    let slot = sizes.ttl.max(Duration::from_secs(2));
    while t + slot < heal_by {
        let worker = rng.gen_range(0..sizes.workers);
        let (fault, heal) = match rng.gen_range(0..8) {
            0 => (Action::Partition(Shape::Halves), Action::Heal),
            1 => (Action::Partition(Shape::IsolateLeader), Action::Heal),
            2 => (Action::KillLeader, Action::RestartRegistries),
            3 => (Action::KillWorker { worker, wipe_state: rng.gen_bool(0.3) }, Action::RestartWorkers),
            4 => (Action::Pause { worker }, Action::ResumeAll),
            5 => (Action::ClockStep { worker, offset_ms: -rng.gen_range(5..2000) }, Action::ClockReset),
            6 => (Action::Loss(rng.gen_range(5..30)), Action::Heal),
            _ => (Action::Partition(Shape::WorkerCut { worker }), Action::Heal),
        };
        steps.push(Step { at: t, action: fault });
        steps.push(Step { at: t + slot, action: heal });
        t += slot + slot / 2;
    }
    steps.push(Step { at: heal_by, action: Action::Heal });
    steps.push(Step { at: heal_by, action: Action::ResumeAll });
    steps.push(Step { at: heal_by, action: Action::ClockReset });
    steps.push(Step { at: heal_by, action: Action::RestartRegistries });
    steps.push(Step { at: heal_by, action: Action::RestartWorkers });
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes() -> Sizes {
        Sizes { registries: 5, workers: 4, ttl: Duration::from_secs(3), margin: Duration::from_millis(500) }
    }

    #[test]
    fn every_scenario_has_a_schedule_that_heals_and_is_reproducible() {
        let limit = Duration::from_secs(30);
        for scenario in SCENARIOS {
            let a = schedule(scenario, sizes(), limit, 7);
            assert_eq!(a, schedule(scenario, sizes(), limit, 7), "{} is not deterministic", scenario.name);
            assert!(!a.is_empty(), "{} does nothing", scenario.name);
            assert!(a.iter().all(|s| s.at < limit), "{} acts after the run", scenario.name);
        }
    }

    /// Goal: the adversary forges from the end of the nominal phase until the heal, and the
    /// workload can read that window from the schedule.
    #[test]
    fn the_adversary_forges_between_nominal_and_heal() {
        let limit = Duration::from_secs(20);
        let steps = schedule(find("adversary").unwrap(), sizes(), limit, 42);
        assert_eq!(
            steps,
            vec![
                Step { at: limit / 5, action: Action::Adversary },
                Step { at: limit * 7 / 10, action: Action::AdversaryStop },
            ]
        );
        assert_eq!(adversary_window(&steps, limit), Some((limit / 5, limit * 7 / 10)));
        assert_eq!(adversary_window(&schedule(find("pause").unwrap(), sizes(), limit, 42), limit), None);
    }

    /// Goal: `clone-state` copies one worker's state dir once, then another's twice at once,
    /// inside the fault window, and the run knows how many clone namespaces to make.
    #[test]
    fn clone_state_copies_once_then_twice_at_once() {
        let limit = Duration::from_secs(20);
        let steps = schedule(find("clone-state").unwrap(), sizes(), limit, 42);
        let clones: Vec<(usize, usize)> = steps
            .iter()
            .filter_map(|s| match s.action {
                Action::CloneState { worker, copies } => Some((worker, copies)),
                _ => None,
            })
            .collect();
        assert_eq!(clones.iter().map(|c| c.1).collect::<Vec<_>>(), [1, 2]);
        assert_ne!(clones[0].0, clones[1].0, "two different workers are cloned");
        assert!(steps.iter().all(|s| s.at >= limit / 5 && s.at < limit * 7 / 10), "{steps:?}");
        assert_eq!(clone_count(&steps), 3);
        assert_eq!(clone_count(&schedule(find("pause").unwrap(), sizes(), limit, 42)), 0);
    }

    /// Goal: `registry-clock-skew` jumps the leader's clock ten minutes ahead twice inside the
    /// fault window and puts it back each time; no other scenario fakes registry clocks.
    #[test]
    fn registry_clock_skew_jumps_the_leader_and_heals() {
        let limit = Duration::from_secs(20);
        let steps = schedule(find("registry-clock-skew").unwrap(), sizes(), limit, 42);
        let jump = Action::RegistryClockStep { offset_ms: REGISTRY_CLOCK_JUMP_MS };
        let actions: Vec<&Action> = steps.iter().map(|s| &s.action).collect();
        assert_eq!(actions, [&jump, &Action::ClockReset, &jump, &Action::ClockReset]);
        assert!(steps.iter().all(|s| s.at >= limit / 5 && s.at <= limit * 7 / 10), "{steps:?}");
        assert!(steps_registry_clocks(&steps));
        let others = SCENARIOS.iter().filter(|s| s.name != "registry-clock-skew");
        assert!(others.into_iter().all(|s| !steps_registry_clocks(&schedule(s, sizes(), limit, 42))));
    }

    fn delays(steps: &[Step]) -> Vec<(DelayBudget, &[LinkDelay])> {
        steps
            .iter()
            .filter_map(|s| match &s.action {
                Action::Delay { budget, links } => Some((*budget, links.as_slice())),
                _ => None,
            })
            .collect()
    }

    /// The worst round trip between `worker` and `registry` under `links` (zero for a
    /// direction not listed).
    fn round_trip(links: &[LinkDelay], worker: usize, registry: usize) -> Duration {
        let way =
            |from, to| links.iter().find(|l| l.from == from && l.to == to).map_or(Duration::ZERO, LinkDelay::worst);
        way(End::Worker(worker), End::Registry(registry)) + way(End::Registry(registry), End::Worker(worker))
    }

    /// Goal: `latency` delays every worker-registry pair both ways, then one way only, each
    /// round trip within a quarter of the TTL (and some near it), registry links far below
    /// Raft's heartbeat, and heals inside the fault window.
    #[test]
    fn latency_keeps_round_trips_within_a_quarter_ttl() {
        let sizes = sizes();
        for seed in 0..20 {
            let steps = schedule(find("latency").unwrap(), sizes, Duration::from_secs(20), seed);
            let rounds = delays(&steps);
            assert_eq!(rounds.len(), 2, "{steps:?}");
            let mut worst = Duration::ZERO;
            for (round, (budget, links)) in rounds.iter().enumerate() {
                assert_eq!(*budget, DelayBudget::QuarterTtl);
                let worker_links =
                    links.iter().filter(|l| matches!(l.from, End::Worker(_)) || matches!(l.to, End::Worker(_)));
                let pairs = sizes.workers * sizes.registries;
                assert_eq!(worker_links.count(), if round == 0 { 2 * pairs } else { pairs });
                for (w, r) in (0..sizes.workers).flat_map(|w| (0..sizes.registries).map(move |r| (w, r))) {
                    let rtt = round_trip(links, w, r);
                    assert!(rtt > Duration::ZERO && rtt <= sizes.ttl / 4, "seed {seed} w{w} n{r}: {rtt:?}");
                    worst = worst.max(rtt);
                }
                let between_registries =
                    links.iter().filter(|l| matches!((l.from, l.to), (End::Registry(_), End::Registry(_))));
                assert!(
                    between_registries.clone().count() == 20
                        && between_registries.clone().all(|l| l.worst() <= Duration::from_millis(10))
                );
            }
            assert!(worst >= sizes.ttl / 6, "seed {seed}: the budget is barely used ({worst:?})");
            // The run changes windows in place (nothing released early or dropped) only if the
            // first window's rules already send every direction of the second to the queue.
            let directions = |links: &[LinkDelay]| links.iter().map(|l| (l.from, l.to)).collect::<Vec<_>>();
            let first = directions(rounds[0].1);
            assert!(directions(rounds[1].1).iter().all(|d| first.contains(d)), "seed {seed}");
            assert_eq!(steps.last().map(|s| &s.action), Some(&Action::Heal));
        }
    }

    /// Goal: `latency-beyond-margin` holds every direction of every worker-registry pair
    /// past the margin, so every round trip outlasts a registry attempt (TTL/3), for longer
    /// than the TTL, and leaves the registry nodes among themselves alone.
    #[test]
    fn latency_beyond_margin_outlasts_every_attempt() {
        let sizes = sizes();
        let steps = schedule(find("latency-beyond-margin").unwrap(), sizes, Duration::from_secs(20), 3);
        let [(budget, links)] = delays(&steps)[..] else { panic!("{steps:?}") };
        assert_eq!(budget, DelayBudget::BeyondMargin);
        assert_eq!(links.len(), 2 * sizes.workers * sizes.registries);
        assert!(links.iter().all(|l| Duration::from_millis(l.delay_ms) > sizes.margin), "{links:?}");
        for (w, r) in (0..sizes.workers).flat_map(|w| (0..sizes.registries).map(move |r| (w, r))) {
            assert!(round_trip(links, w, r) > sizes.ttl / 3);
        }
        assert!(steps[1].action == Action::Heal && steps[1].at - steps[0].at > sizes.ttl);
        assert_ne!(DelayBudget::QuarterTtl.nemesis_name(), DelayBudget::BeyondMargin.nemesis_name());
        assert!(!DelayBudget::BeyondMargin.nemesis_name().starts_with(DelayBudget::QuarterTtl.nemesis_name()));
    }

    #[test]
    fn quorum_loss_outlasts_the_ttl() {
        let steps = schedule(find("quorum-loss").unwrap(), sizes(), Duration::from_secs(30), 1);
        assert!(steps[1].at - steps[0].at > sizes().ttl);
    }
}
