//! The registry workload: Acquire a reserved worker ID, renew it, read it, release it, over
//! and over, through random registry nodes — the history the linearizability checker judges.
//!
//! Two callers run it: the harness's workload (tonic channels inside the client namespace, the
//! run's monotonic clock, the harness's wall clock, `history.jsonl`) and the deterministic
//! simulator (its in-memory network, simulated time, its recorder). What differs between
//! them is only the transport — a [`BoxChannel`] per registry node, the product's own seam
//! for it — and the [`Timeline`]: where time is read and where the ops are recorded.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fenceflake_proto::channel::BoxChannel;
use fenceflake_proto::v1 as pb;
use fenceflake_proto::v1::registry_client::RegistryClient;
use fenceflake_proto::wire::Reason;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::history::{Event, LeaseStamps, Phase, RegistryFn, RegistryOp, RegistryResult, Rejection};
use crate::workload::status_text;

/// Worker IDs reserved for the registry workload (harness and simulator workers take low
/// IDs, `auto`: the registry grants the lowest free one): each of its processes owns one
/// block and moves to a fresh ID every few rounds, because the linearizability search grows
/// with the history of one ID.
/// An operation with an unknown outcome (a timeout across a leader kill) may linearize
/// anywhere after its call, which multiplies the search: after one, the process moves on to
/// a fresh ID at once, so no ID's history holds more than one.
pub const REGISTRY_WORKLOAD_IDS: [u32; 2] = [960, 992];
const IDS_PER_PROCESS: u32 = 32;
const ROUNDS_PER_ID: u64 = 10;

/// The TTL every Acquire asks for. A checker that bounds when the registry may expire one of
/// these leases (`linear::Expiry::AfterIdle`) derives its bound from it.
pub const LEASE_TTL_MS: u64 = 5_000;

/// How long one registry call may take before its outcome is recorded as unknown (`info`).
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Where the workload reads time and records its ops.
pub trait Timeline: Sync {
    /// The history's clock: ns since the run began (it orders every event).
    fn now_ns(&self) -> u64;
    /// The caller's wall clock, ms since the Unix epoch: sent as `wall_ms_at_send` and kept
    /// in the stamps of each granted or renewed lease.
    fn wall_ms(&self) -> u64;
    fn record(&self, event: Event);
}

/// A shared timeline is the same timeline.
impl<T: Timeline + Send + ?Sized> Timeline for std::sync::Arc<T> {
    fn now_ns(&self) -> u64 {
        (**self).now_ns()
    }

    fn wall_ms(&self) -> u64 {
        (**self).wall_ms()
    }

    fn record(&self, event: Event) {
        (**self).record(event);
    }
}

/// One process of the workload: its number in the history (and in its holder names), the
/// first of its reserved worker IDs, the seed of its random choices, the pause between its
/// rounds, and whether some rounds end in a race at expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Process {
    pub process: u64,
    pub first_id: u32,
    pub seed: u64,
    pub round_pause: RoundPause,
    pub expiry_race: Option<ExpiryRace>,
    /// A reader beside the process, if any.
    pub reader: Option<Reader>,
}

/// A second process beside a workload process that only reads (`GetLease`) the worker ID the
/// process is on, every few ms, so that reads land right after a write was acknowledged and
/// right after a leader changed or restarted: the first reads of a leadership, before it has
/// applied what earlier leaderships committed, are what `ensure_linearizable` (and the
/// leader's catch-up on its own log) protects. The rounds' own reads come one call after a
/// write and a pause after a failure, too late to see that window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reader {
    /// The pause between two reads.
    pub pause: RoundPause,
}

/// The reader's process number, apart from the writer's (its ops are concurrent with them).
const READER_PROCESS_OFFSET: u64 = 200;

/// A round that ends in a race at expiry abandons its lease instead of releasing it, waits
/// until the registry may expire it, and then renews it while a new holder asks for the same
/// ID at the same moment. A leader that plans the grant on the lapsed lease while the renewal
/// is still being committed must refuse the grant when it applies (the compare-and-set on the
/// renewal position): if both succeed, the linearizability checker finds no order for them.
/// This is the schedule that compare exists for; it needs a known cool-down and a checker that
/// bounds expiry tightly, so only the simulator asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiryRace {
    /// How many rounds in a thousand end in a race.
    pub per_mille: u32,
    /// How long after the last renewal's answer the race starts: the registry's TTL plus its
    /// cool-down, when a leader that saw that renewal applied has expired the lease.
    pub after: Duration,
    /// The race starts up to this much later (uniformly), so that across rounds it brackets
    /// the leader's expiry instant, which the client knows only to within a network hop.
    pub spread: Duration,
}

/// The process number of the new holder in a race at expiry: apart from the workload's own,
/// since its Acquire runs at the same time as the process's Renew.
const RACER_PROCESS_OFFSET: u64 = 100;

/// The pause between two rounds, uniformly in `[min_ms, max_ms)`: the harness's (5–50 ms)
/// keeps the registry busy; the simulator's is longer, since every call is a Raft write that
/// costs it real time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundPause {
    pub min_ms: u64,
    pub max_ms: u64,
}

impl RoundPause {
    pub const HARNESS: RoundPause = RoundPause { min_ms: 5, max_ms: 50 };
}

/// One process of the workload, each call through a registry node picked at random from
/// `clients`, until `end_ns` on the timeline's clock (the round under way finishes).
pub async fn run(workload: Process, clients: Vec<RegistryClient<BoxChannel>>, end_ns: u64, timeline: &impl Timeline) {
    let on_id = AtomicU32::new(workload.first_id);
    let reader = workload.reader.map(|reader| {
        let calls = Calls { rng: StdRng::seed_from_u64(!workload.seed), clients: clients.clone(), op_id: 0, timeline };
        read(workload.process + READER_PROCESS_OFFSET, reader, calls, &on_id, end_ns)
    });
    tokio::join!(write(workload, clients, &on_id, end_ns, timeline), async {
        if let Some(reader) = reader {
            reader.await;
        }
    });
}

/// The workload process's rounds; `on_id` follows the worker ID it is on, for its reader.
async fn write(
    workload: Process,
    clients: Vec<RegistryClient<BoxChannel>>,
    on_id: &AtomicU32,
    end_ns: u64,
    timeline: &impl Timeline,
) {
    let Process { process, first_id, seed, round_pause, expiry_race, reader: _ } = workload;
    let mut calls = Calls { rng: StdRng::seed_from_u64(seed), clients, op_id: 0, timeline };
    let mut round = 0u64;
    let mut slot = 0u64;
    while timeline.now_ns() < end_ns {
        round += 1;
        if round.is_multiple_of(ROUNDS_PER_ID) {
            slot += 1;
        }
        let worker_id = first_id + (slot % u64::from(IDS_PER_PROCESS)) as u32;
        on_id.store(worker_id, Ordering::Relaxed);
        let holder = format!("jepsen-{process}-{round}");
        let race = expiry_race.filter(|r| calls.rng.gen_range(0..1000) < r.per_mille);
        let mut token = None;
        let mut unknown = false;
        for f in [RegistryFn::Acquire, RegistryFn::Renew, RegistryFn::Get, RegistryFn::Renew, RegistryFn::Release] {
            if matches!(f, RegistryFn::Renew | RegistryFn::Release) && token.is_none() {
                continue;
            }
            if let (RegistryFn::Release, Some(race)) = (f, race) {
                unknown = calls.race_at_expiry(race, process, worker_id, token, &format!("{holder}-racer")).await;
                break;
            }
            let op = calls.op(process, f, worker_id, (f == RegistryFn::Acquire).then(|| holder.clone()), token);
            let completed = calls.call(op).await;
            if let Some(RegistryResult::Granted { token: t, .. }) = &completed.result {
                token = Some(*t);
            }
            if completed.phase == Phase::Info {
                unknown = true;
                break;
            }
        }
        if unknown {
            slot += 1;
        }
        tokio::time::sleep(Duration::from_millis(calls.rng.gen_range(round_pause.min_ms..round_pause.max_ms))).await;
    }
}

/// The reader's loop: `GetLease` of the ID the writer is on, until `end_ns`.
async fn read<T: Timeline>(process: u64, reader: Reader, mut calls: Calls<'_, T>, on_id: &AtomicU32, end_ns: u64) {
    while calls.timeline.now_ns() < end_ns {
        let op = calls.op(process, RegistryFn::Get, on_id.load(Ordering::Relaxed), None, None);
        calls.call(op).await;
        tokio::time::sleep(Duration::from_millis(calls.rng.gen_range(reader.pause.min_ms..reader.pause.max_ms))).await;
    }
}

/// One process's calls: each through a registry node picked at random, recorded on its
/// timeline with op IDs unique within the process's history.
struct Calls<'t, T: Timeline> {
    rng: StdRng,
    clients: Vec<RegistryClient<BoxChannel>>,
    op_id: u64,
    timeline: &'t T,
}

impl<T: Timeline> Calls<'_, T> {
    fn op(
        &mut self,
        process: u64,
        f: RegistryFn,
        worker_id: u32,
        holder: Option<String>,
        token: Option<u64>,
    ) -> RegistryOp {
        self.op_id += 1;
        RegistryOp {
            phase: Phase::Invoke,
            process,
            op_id: self.op_id,
            f,
            worker_id: Some(worker_id),
            holder,
            token: if matches!(f, RegistryFn::Renew | RegistryFn::Release) { token } else { None },
            time_ns: self.timeline.now_ns(),
            result: None,
            error: None,
            stamps: None,
        }
    }

    fn pick(&mut self) -> RegistryClient<BoxChannel> {
        self.clients[self.rng.gen_range(0..self.clients.len())].clone()
    }

    /// Invoke `op` through a random node, record its invocation and its completion.
    async fn call(&mut self, op: RegistryOp) -> RegistryOp {
        let client = self.pick();
        self.call_via(client, op).await
    }

    async fn call_via(&self, client: RegistryClient<BoxChannel>, op: RegistryOp) -> RegistryOp {
        self.timeline.record(Event::Registry(op.clone()));
        let done = call(client, &op, self.timeline).await;
        let completed = RegistryOp { time_ns: self.timeline.now_ns(), ..done };
        self.timeline.record(Event::Registry(completed.clone()));
        completed
    }

    /// The end of a racing round ([`ExpiryRace`]): the holder of `token` abandons the lease,
    /// then renews it at expiry while `racer` (as its own process) asks for the ID; whoever
    /// won releases it. Returns whether any outcome was unknown.
    async fn race_at_expiry(
        &mut self,
        race: ExpiryRace,
        process: u64,
        worker_id: u32,
        token: Option<u64>,
        racer: &str,
    ) -> bool {
        let spread_us = u64::try_from(race.spread.as_micros()).unwrap_or(u64::MAX).max(1);
        tokio::time::sleep(race.after + Duration::from_micros(self.rng.gen_range(0..spread_us))).await;
        let racer_process = process + RACER_PROCESS_OFFSET;
        let renew = self.op(process, RegistryFn::Renew, worker_id, None, token);
        let acquire = self.op(racer_process, RegistryFn::Acquire, worker_id, Some(racer.to_string()), None);
        let (a, b) = (self.pick(), self.pick());
        let (renewed, acquired) = tokio::join!(self.call_via(a, renew), self.call_via(b, acquire));
        let mut unknown = renewed.phase == Phase::Info || acquired.phase == Phase::Info;
        for (owner, outcome) in [(process, &renewed), (racer_process, &acquired)] {
            let Some(RegistryResult::Granted { token: t, .. } | RegistryResult::Renewed { token: t }) = outcome.result
            else {
                continue;
            };
            let release = self.op(owner, RegistryFn::Release, worker_id, None, Some(t));
            unknown |= self.call(release).await.phase == Phase::Info;
        }
        unknown
    }
}

async fn call(mut client: RegistryClient<BoxChannel>, op: &RegistryOp, timeline: &impl Timeline) -> RegistryOp {
    let worker_id = op.worker_id.unwrap_or_default();
    let token = op.token.unwrap_or_default();
    let sent_wall_ms = timeline.wall_ms();
    let stamped = |l: &pb::Lease| {
        Some(LeaseStamps {
            sent_wall_ms,
            received_wall_ms: timeline.wall_ms(),
            registry_time_ms: l.registry_time_ms,
            not_before_ms: l.not_before_ms,
            mint_until_ms: l.mint_until_ms,
            ttl_ms: l.ttl_ms,
        })
    };
    let result: Result<(RegistryResult, Option<LeaseStamps>), tonic::Status> = match op.f {
        RegistryFn::Acquire => {
            let req = pb::AcquireRequest {
                holder: op.holder.clone().unwrap_or_default(),
                worker_id: Some(worker_id),
                ttl_ms: LEASE_TTL_MS,
                incarnation: 0,
            };
            timed(client.acquire(req))
                .await
                .map(|l| (RegistryResult::Granted { worker_id: l.worker_id, token: l.token }, stamped(&l)))
        }
        RegistryFn::Renew => {
            let req = pb::RenewRequest { worker_id, token, wall_ms_at_send: sent_wall_ms, max_minted_ts_ms: 0 };
            timed(client.renew(req)).await.map(|l| (RegistryResult::Renewed { token: l.token }, stamped(&l)))
        }
        RegistryFn::Release => {
            let req = pb::ReleaseRequest { worker_id, token, last_ts_ms: 0 };
            timed(client.release(req)).await.map(|_| (RegistryResult::Released, None))
        }
        RegistryFn::Get => timed(client.get_lease(pb::GetLeaseRequest { worker_id })).await.map(|l| {
            let holder = (!l.holder.is_empty() && l.state != "FREE").then_some(l.holder);
            (RegistryResult::Lease { holder, token: l.token }, None)
        }),
    };
    match result {
        Ok((result, stamps)) => RegistryOp { phase: Phase::Ok, result: Some(result), stamps, ..op.clone() },
        Err(status) => {
            let (phase, rejection) = outcome(&status);
            RegistryOp {
                phase,
                result: rejection.map(|reason| RegistryResult::Rejected { reason }),
                error: Some(status_text(&status)),
                ..op.clone()
            }
        }
    }
}

/// How a failed registry call ends in the history, read from the [`Reason`] the registry
/// puts on every error status (never from the message):
/// - a refusal (`fail`): FENCED, EXPIRED and ALREADY_HELD are what the linearizability model
///   checks; any other refusal (quarantined, holder holds another ID, invalid...) is `other`;
/// - a definite unavailability (`fail`, no result: nothing was applied): NOT_LEADER,
///   NO_LEADER, NO_QUORUM, OVERLOADED, NOT_CONFIGURED;
/// - unknown (`info`: it may still take effect): OUTCOME_UNKNOWN; FATAL (the node stopped on
///   a storage error, possibly after proposing the command); and every status without a
///   reason this build knows — a transport error, a cancelled call, the harness's own
///   timeout (`DEADLINE_EXCEEDED`), a newer registry's word. A status with no reason did not
///   come from the registry's error table, so it proves nothing about the outcome.
fn outcome(status: &tonic::Status) -> (Phase, Option<Rejection>) {
    let Some(reason) = Reason::of(status) else {
        return (Phase::Info, None);
    };
    match reason {
        // SUPERSEDED is FENCED told more precisely (a newer process of the same holder).
        Reason::Fenced | Reason::Superseded => (Phase::Fail, Some(Rejection::Fenced)),
        Reason::Expired => (Phase::Fail, Some(Rejection::Expired)),
        Reason::AlreadyHeld => (Phase::Fail, Some(Rejection::AlreadyHeld)),
        Reason::OutcomeUnknown | Reason::Fatal => (Phase::Info, None),
        Reason::NotLeader | Reason::NoLeader | Reason::NoQuorum | Reason::Overloaded | Reason::NotConfigured => {
            (Phase::Fail, None)
        }
        // Refusals that change nothing: the lease is another identity's, or the claim's clock
        // is too far from the registry's.
        Reason::NotOwner | Reason::ClockSkew => (Phase::Fail, Some(Rejection::Other)),
        Reason::Quarantined
        | Reason::HolderHoldsOther
        | Reason::Exhausted
        | Reason::Invalid
        | Reason::NotEmpty
        | Reason::Membership => (Phase::Fail, Some(Rejection::Other)),
    }
}

async fn timed<T>(
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded("harness timeout")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: registry errors are classified by their reason alone — rejections and definite
    /// unavailability are `fail` (nothing applied), OUTCOME_UNKNOWN is `info`, and a status
    /// without a reason (transport error, cancelled, our own timeout), whatever its code or
    /// message, stays `info`: it proves nothing about the outcome.
    #[test]
    fn registry_errors_are_classified_by_reason() {
        let of = |status: tonic::Status| outcome(&status);
        assert_eq!(of(Reason::Fenced.status("stale token")), (Phase::Fail, Some(Rejection::Fenced)));
        assert_eq!(of(Reason::Expired.status("released")), (Phase::Fail, Some(Rejection::Expired)));
        assert_eq!(of(Reason::AlreadyHeld.status("held by x")), (Phase::Fail, Some(Rejection::AlreadyHeld)));
        for other in [
            Reason::Quarantined,
            Reason::HolderHoldsOther,
            Reason::Exhausted,
            Reason::Invalid,
            Reason::NotOwner,
            Reason::ClockSkew,
        ] {
            assert_eq!(of(other.status("no")), (Phase::Fail, Some(Rejection::Other)), "{other}");
        }
        for definite in
            [Reason::NotLeader, Reason::NoLeader, Reason::NoQuorum, Reason::Overloaded, Reason::NotConfigured]
        {
            assert_eq!(of(definite.status("try later")), (Phase::Fail, None), "{definite}");
        }
        assert_eq!(of(Reason::OutcomeUnknown.status("timed out")), (Phase::Info, None));
        assert_eq!(of(Reason::Fatal.status("disk")), (Phase::Info, None));
        // No reason: never read from the code or the message.
        for reasonless in [
            tonic::Status::unavailable("transport error: connection reset"),
            tonic::Status::unavailable("NO_QUORUM: looks definite but carries no reason"),
            tonic::Status::failed_precondition("FENCED: a message prefix is not a reason"),
            tonic::Status::already_exists("held"),
            tonic::Status::cancelled("client went away"),
            tonic::Status::deadline_exceeded("harness timeout"),
            tonic::Status::unknown("h2 error"),
        ] {
            assert_eq!(of(reasonless.clone()), (Phase::Info, None), "{reasonless:?}");
        }
        let mut foreign = tonic::Status::unavailable("x");
        foreign.metadata_mut().insert(fenceflake_proto::wire::REASON_METADATA_KEY, "SOME_NEW_WORD".parse().unwrap());
        assert_eq!(of(foreign), (Phase::Info, None));
        let text = status_text(&Reason::NoQuorum.status("leader cannot confirm a quorum"));
        assert_eq!(text, "Unavailable [NO_QUORUM]: leader cannot confirm a quorum");
    }
}
