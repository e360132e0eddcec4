//! Tests of library mode against a fake registry and a manual clock: the boot wait for
//! `not_before`, skew refusal, duplicate IDs, waiting out a restore embargo, `auto` leaving a
//! quarantined remembered ID, parking at the deadline and resuming on a committed renewal,
//! parking for good on FENCED, release on shutdown; and the service over it: authorization by
//! role and rate limits per identity, then the whole gRPC server with health and metrics.

#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::clock::ManualClock;
use crate::lease::LeaseGrant;
use crate::registry_client::{BoxFuture, IdView, LostReason, RenewRequest};

const T0: u64 = 1_700_000_000_000;
const EPOCH_MS: u64 = 1_600_000_000_000;

/// What the fake registry answers, set by the test.
struct FakeState {
    /// Answered first, one per Acquire, before `acquire`.
    script: VecDeque<Result<LeaseGrant, RegistryCallError>>,
    acquire: Result<LeaseGrant, RegistryCallError>,
    /// Each Acquire: the holder and the worker ID asked for.
    asked: Vec<(String, Option<WorkerId>)>,
    /// Each Acquire's incarnation.
    incarnations: Vec<Incarnation>,
    /// How long each Acquire takes on the manual clock.
    acquire_takes: Duration,
    inspect: Result<IdView, RegistryCallError>,
    renew: Result<(), RegistryCallError>,
    renewals: u32,
    released: Option<(WorkerId, Token, u64)>,
}

struct FakeRegistry {
    clock: Arc<ManualClock>,
    state: Mutex<FakeState>,
}

fn grant(not_before_ms: u64, registry_time_ms: u64) -> LeaseGrant {
    LeaseGrant {
        worker_id: WorkerId::new(5),
        token: Token::new(4096),
        holder: "h".into(),
        ttl: Duration::from_millis(600),
        not_before_ms,
        registry_time_ms,
        epoch_ms: EPOCH_MS,
        worker_id_bits: 10,
        sequence_bits: Some(12),
        mint_until_ms: registry_time_ms + 600,
    }
}

impl FakeRegistry {
    fn new(clock: Arc<ManualClock>, acquire: Result<LeaseGrant, RegistryCallError>) -> Arc<FakeRegistry> {
        let state = FakeState {
            script: VecDeque::new(),
            acquire,
            asked: Vec::new(),
            incarnations: Vec::new(),
            acquire_takes: Duration::ZERO,
            inspect: Ok(id_view("HELD", "other/1/ab")),
            renew: Ok(()),
            renewals: 0,
            released: None,
        };
        Arc::new(FakeRegistry { clock, state: Mutex::new(state) })
    }

    /// Answer the next Acquires with `answers`, in order, before the standing answer.
    fn script(&self, answers: impl IntoIterator<Item = Result<LeaseGrant, RegistryCallError>>) {
        self.state.lock().unwrap().script.extend(answers);
    }

    fn set_inspect(&self, view: IdView) {
        self.state.lock().unwrap().inspect = Ok(view);
    }

    fn asked(&self) -> Vec<(String, Option<WorkerId>)> {
        self.state.lock().unwrap().asked.clone()
    }

    fn set_renew(&self, renew: Result<(), RegistryCallError>) {
        self.state.lock().unwrap().renew = renew;
    }

    fn renewals(&self) -> u32 {
        self.state.lock().unwrap().renewals
    }
}

impl LeaseRegistry for FakeRegistry {
    fn acquire<'a>(
        &'a self,
        holder: &'a HolderId,
        incarnation: Incarnation,
        worker_id: Option<WorkerId>,
        _ttl: Duration,
    ) -> BoxFuture<'a, Result<LeaseGrant, RegistryCallError>> {
        let mut state = self.state.lock().unwrap();
        state.asked.push((holder.to_string(), worker_id));
        state.incarnations.push(incarnation);
        self.clock.advance(state.acquire_takes);
        let answer = state.script.pop_front().unwrap_or_else(|| state.acquire.clone());
        Box::pin(async move { answer })
    }

    fn inspect(&self, _worker_id: WorkerId) -> BoxFuture<'_, Result<IdView, RegistryCallError>> {
        let answer = self.state.lock().unwrap().inspect.clone();
        Box::pin(async move { answer })
    }

    fn renew(&self, _request: RenewRequest) -> BoxFuture<'_, Result<LeaseGrant, RegistryCallError>> {
        let mut state = self.state.lock().unwrap();
        let answer = state.renew.clone().map(|()| grant(0, self.clock.wall_ms()));
        if answer.is_ok() {
            state.renewals += 1;
        }
        Box::pin(async move { answer })
    }

    fn release(
        &self,
        worker_id: WorkerId,
        token: Token,
        last_ts_ms: u64,
    ) -> BoxFuture<'_, Result<(), RegistryCallError>> {
        self.state.lock().unwrap().released = Some((worker_id, token, last_ts_ms));
        Box::pin(async { Ok(()) })
    }
}

/// The registry's view of worker ID 5 held by `holder`.
fn id_view(state: &str, holder: &str) -> IdView {
    IdView {
        worker_id: WorkerId::new(5),
        state: state.into(),
        holder: holder.into(),
        ttl_ms: 2_000,
        since_renew_ms: 500,
        cool_down_ms: Some(500),
    }
}

fn exhausted() -> RegistryCallError {
    RegistryCallError::Exhausted { message: "no free worker ID: all 1024 are held or quarantined".into() }
}

fn quarantined() -> RegistryCallError {
    let message = "QUARANTINED: worker ID is quarantined (audit); an operator must clear it".into();
    RegistryCallError::Lost { reason: LostReason::Quarantined, message }
}

struct Fixture {
    _dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    registry: Arc<FakeRegistry>,
    config: WorkerConfig,
}

fn fixture(acquire: Result<LeaseGrant, RegistryCallError>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let registry = FakeRegistry::new(clock.clone(), acquire);
    let mut config =
        WorkerConfig::new(vec!["fake:1".into()], dir.path().join("state"), "gen-5".into(), Security::Insecure);
    config.lease_ttl = Duration::from_millis(600);
    config.margin = Some(Duration::from_millis(100));
    Fixture { _dir: dir, clock, registry, config }
}

impl Fixture {
    async fn start(&self) -> Result<Generator, StartError> {
        Generator::start_with_registry(self.config.clone(), self.clock.clone(), self.registry.clone()).await
    }
}

/// Poll `f` (real time) until it holds; the keeper and monitor run on real timers.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Goal: a grant whose `not_before` is ahead of the wall clock keeps the worker BOOTING —
/// nothing minted — until the wall clock is past it; the first ID is stamped after it.
#[tokio::test]
async fn boot_waits_until_the_wall_clock_passes_not_before() {
    let f = fixture(Ok(grant(T0 + 200, T0)));
    let g = f.start().await.unwrap();
    assert_eq!(g.generate().await, Err(GenerateError::Parked(ParkCause::Booting)));
    assert_eq!(g.status().park, Some(ParkCause::Booting));
    f.clock.advance(Duration::from_millis(200));
    assert_eq!(g.generate().await, Err(GenerateError::Parked(ParkCause::Booting)), "minted at not_before itself");
    f.clock.advance(Duration::from_millis(1));
    g.wait_serving(Duration::from_secs(2)).await.unwrap();
    let id = g.generate().await.unwrap();
    assert_eq!(g.status().layout.decode(id).ts_ms, T0 + 201);
    g.shutdown().await;
}

/// Goal: a local clock further than --max-skew from the registry's at grant time refuses to
/// mint (CLOCK_SKEW), and a later renewal that finds it within bounds lifts that.
#[tokio::test]
async fn skew_at_grant_refuses_to_mint_until_a_renewal_clears_it() {
    let f = fixture(Ok(grant(0, T0 + 10_000)));
    let g = f.start().await.unwrap();
    assert_eq!(g.generate().await, Err(GenerateError::Parked(ParkCause::ClockSkew)));
    // Renewals answer with the registry time equal to ours (see FakeRegistry::renew).
    until("a renewal to clear the skew", || g.status().park.is_none()).await;
    g.generate().await.unwrap();
    g.shutdown().await;
}

/// Goal: issue 9 — library mode mints with the layout the grant states: without a sequence
/// width of its own it takes the cluster's (here 14, not the default 12); with one that
/// disagrees, start fails naming both values and nothing is ever minted; a grant from a
/// registry older than the field falls back to the configured width.
#[tokio::test]
async fn the_grants_layout_wins_and_a_disagreeing_sequence_width_refuses_start() {
    let wide = LeaseGrant { sequence_bits: Some(14), ..grant(0, T0) };
    let f = fixture(Ok(wide.clone()));
    let g = f.start().await.unwrap();
    let layout = g.status().layout;
    assert_eq!((layout.epoch_ms(), layout.worker_id_bits(), layout.sequence_bits()), (EPOCH_MS, 10, 14));
    g.wait_serving(Duration::from_secs(2)).await.unwrap();
    let id = g.generate().await.unwrap();
    assert_eq!(layout.decode(id).worker_id, WorkerId::new(5), "minted in the cluster's layout");
    g.shutdown().await;

    let mut f = fixture(Ok(wide));
    f.config.sequence_bits = Some(12);
    let err = f.start().await.unwrap_err();
    assert!(matches!(err, StartError::SequenceBits(_)), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("--sequence-bits 12") && message.contains("14 sequence bits"), "{message}");
    assert_eq!(f.registry.renewals(), 0, "a refused worker keeps no lease going");

    let mut f = fixture(Ok(LeaseGrant { sequence_bits: None, ..grant(0, T0) }));
    f.config.sequence_bits = Some(11);
    let g = f.start().await.unwrap();
    assert_eq!(g.status().layout.sequence_bits(), 11, "an older registry states no width: the flag's");
    g.shutdown().await;
}

/// Goal: an explicit worker ID held by another holder fails start naming the ID and holder.
#[tokio::test]
async fn a_held_explicit_id_is_refused_naming_id_and_holder() {
    let mut f = fixture(Err(RegistryCallError::AlreadyHeld { message: "worker ID is held by \"other/1/ab\"".into() }));
    f.config.worker_id = crate::config::WorkerIdSpec::Fixed(WorkerId::new(5));
    let err = f.start().await.unwrap_err().to_string();
    assert!(err.contains("worker ID 5") && err.contains("other/1/ab"), "{err}");
}

/// Goal: issue 14 — during a restore embargo (every Acquire answers EXHAUSTED) an `auto`
/// worker does not give up: it retries with backoff and starts once the embargo lifts.
#[tokio::test]
async fn auto_waits_out_an_embargo_and_starts_when_it_lifts() {
    let f = fixture(Ok(grant(0, T0)));
    f.registry.set_inspect(id_view("HELD", "fenceflake:restore-embargo/0"));
    f.registry.script([Err(exhausted()), Err(exhausted())]);
    let g = f.start().await.unwrap();
    assert_eq!(f.registry.asked().len(), 3, "two refusals waited out, then granted");
    g.wait_serving(Duration::from_secs(2)).await.unwrap();
    g.shutdown().await;
}

/// Goal: an explicit worker ID held by the registry's embargo holder is waited for; one held
/// by another worker still fails at once (a duplicate claim is a misconfiguration).
#[tokio::test]
async fn an_explicit_id_waits_for_the_embargo_but_not_for_another_worker() {
    let mut f = fixture(Ok(grant(0, T0)));
    f.config.worker_id = crate::config::WorkerIdSpec::Fixed(WorkerId::new(5));
    let embargoed =
        RegistryCallError::AlreadyHeld { message: "worker ID is held by fenceflake:restore-embargo/5".into() };
    f.registry.set_inspect(id_view("HELD", "fenceflake:restore-embargo/5"));
    f.registry.script([Err(embargoed)]);
    let g = f.start().await.unwrap();
    assert_eq!(f.registry.asked(), vec![(f.registry.asked()[0].0.clone(), Some(WorkerId::new(5))); 2]);
    g.shutdown().await;

    let f2 = fixture(Err(RegistryCallError::AlreadyHeld { message: "worker ID is held by gen-9/1/ab".into() }));
    let mut config = f2.config.clone();
    config.worker_id = crate::config::WorkerIdSpec::Fixed(WorkerId::new(5));
    f2.registry.set_inspect(id_view("HELD", "gen-9/1/ab"));
    let err = Generator::start_with_registry(config, f2.clock.clone(), f2.registry.clone()).await.unwrap_err();
    assert!(matches!(err, StartError::WorkerIdHeld { .. }), "{err}");
    assert_eq!(f2.registry.asked().len(), 1, "a real holder is refused at once");
}

/// Goal: the wait for a worker ID is bounded by `id_wait` on the worker's monotonic clock
/// (here each Acquire takes 300 ms of it), and a zero `id_wait` gives up at the first answer.
#[tokio::test]
async fn the_wait_for_a_worker_id_is_bounded_by_id_wait() {
    let mut f = fixture(Err(exhausted()));
    f.config.id_wait = Duration::from_secs(1);
    f.registry.state.lock().unwrap().acquire_takes = Duration::from_millis(300);
    let err = f.start().await.unwrap_err();
    match &err {
        StartError::NoWorkerId { waited_ms, .. } => assert!((1_000..=1_300).contains(waited_ms), "{err}"),
        other => panic!("expected NoWorkerId, got {other}"),
    }
    assert!(err.to_string().contains("no free worker ID") && err.to_string().contains("--id-wait 1000ms"), "{err}");
    assert!((4..=5).contains(&f.registry.asked().len()), "{:?}", f.registry.asked());

    let mut f = fixture(Err(exhausted()));
    f.config.id_wait = Duration::ZERO;
    assert!(matches!(f.start().await, Err(StartError::NoWorkerId { waited_ms: 0, .. })));
    assert_eq!(f.registry.asked().len(), 1);
}

/// Goal: issue 14 — `auto` restarted with its state dir asks with its remembered holder; when
/// the worker ID that holder held is quarantined, it takes another ID under a new holder. An
/// explicit `--worker-id` on a quarantined ID refuses to start, naming the quarantine.
#[tokio::test]
async fn auto_leaves_a_quarantined_remembered_id_but_explicit_refuses() {
    let f = fixture(Ok(grant(0, T0)));
    let remembered = {
        let mut dir = StateDir::open(&f.config.state_dir, &f.config.hostname).unwrap();
        dir.ceiling.persist(T0 - 1_000).unwrap();
        dir.holder().to_string()
    };
    f.registry.script([Err(quarantined())]);
    let g = f.start().await.unwrap();
    let asked = f.registry.asked();
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert_eq!(asked[0], (remembered.clone(), None), "first asks with the remembered holder");
    assert_ne!(asked[1].0, remembered, "then as a stranger");
    assert_eq!(asked[1].1, None, "for any worker ID");
    assert_eq!(g.status().holder.to_string(), asked[1].0);
    g.shutdown().await;

    let mut f = fixture(Err(quarantined()));
    f.config.worker_id = crate::config::WorkerIdSpec::Fixed(WorkerId::new(5));
    let err = f.start().await.unwrap_err();
    assert!(matches!(err, StartError::WorkerIdQuarantined { .. }), "{err}");
    assert!(err.to_string().contains("worker ID 5 is quarantined"), "{err}");
    assert_eq!(f.registry.asked().len(), 1);
}

/// Goal: mechanism 2 end to end — with renewals failing, the worker parks LEASE_EXPIRED
/// once its deadline passes; when a renewal commits it resumes with the same worker ID and
/// token. FENCED then parks it for good.
#[tokio::test]
async fn parks_at_the_deadline_resumes_on_renewal_and_stops_for_good_when_fenced() {
    let f = fixture(Ok(grant(0, T0)));
    let g = f.start().await.unwrap();
    let before = g.generate_batch(3).await.unwrap();
    f.registry.set_renew(Err(RegistryCallError::Unavailable { last: "down".into(), indeterminate: false }));
    f.clock.advance(Duration::from_millis(500));
    assert_eq!(g.generate().await, Err(GenerateError::Parked(ParkCause::LeaseExpired)));
    let mut health = g.subscribe();
    health.wait_for(|c| *c == Some(ParkCause::LeaseExpired)).await.unwrap();

    f.registry.set_renew(Ok(()));
    until("a committed renewal to resume", || g.status().park.is_none()).await;
    let after = g.generate_batch(3).await.unwrap();
    assert_eq!((after.worker_id, after.token), (before.worker_id, before.token));
    assert!(after.runs[0].first > before.runs[0].first);

    let renewals = f.registry.renewals();
    f.registry.set_renew(Err(RegistryCallError::Lost { reason: LostReason::Fenced, message: "FENCED: x".into() }));
    until("the keeper to see FENCED", || g.status().park == Some(ParkCause::Fenced)).await;
    f.registry.set_renew(Ok(()));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(f.registry.renewals(), renewals, "kept renewing a fenced lease");
    assert_eq!(g.generate().await, Err(GenerateError::Parked(ParkCause::Fenced)));
    g.shutdown().await;
    assert_eq!(f.registry.state.lock().unwrap().released, None, "released a lease it no longer holds");
}

/// Goal (incarnations): a retried Acquire within one start states the same incarnation; a
/// second start on the same state dir states the same holder but a new incarnation. SUPERSEDED
/// (a newer process of this holder took the lease over) ends the generator for good —
/// `ended()` says so, nothing is released — and the state dir gives its holder ID up, so a
/// restart there comes back as a stranger instead of taking the lease back.
#[tokio::test]
async fn each_start_is_an_incarnation_and_superseded_gives_the_holder_up() {
    let f = fixture(Ok(grant(0, T0)));
    f.registry.script([Err(RegistryCallError::Unavailable { last: "down".into(), indeterminate: true })]);
    let g = f.start().await.unwrap();
    g.generate().await.unwrap();
    g.shutdown().await;
    drop(g);
    let g = f.start().await.unwrap();
    let (asked, incarnations) = {
        let state = f.registry.state.lock().unwrap();
        (state.asked.clone(), state.incarnations.clone())
    };
    assert_eq!(asked.len(), 3, "{asked:?}");
    assert!(asked.iter().all(|(holder, _)| *holder == asked[0].0), "one holder across restarts: {asked:?}");
    assert_eq!(incarnations[0], incarnations[1], "a retry is the same incarnation");
    assert_ne!(incarnations[1], incarnations[2], "a new start is a new incarnation");

    f.registry.state.lock().unwrap().released = None;
    let message = "SUPERSEDED: another process of holder h took this lease over".to_string();
    f.registry.set_renew(Err(RegistryCallError::Lost { reason: LostReason::Superseded, message }));
    let ended = tokio::time::timeout(Duration::from_secs(5), g.ended()).await.expect("ended within 5 s");
    assert_eq!(ended, ParkCause::Superseded);
    assert!(ended.is_terminal());
    assert_eq!(g.generate().await, Err(GenerateError::Parked(ParkCause::Superseded)));
    g.shutdown().await;
    assert_eq!(f.registry.state.lock().unwrap().released, None, "released a lease another process holds");
    drop(g);
    let restarted = StateDir::open(&f.config.state_dir, &f.config.hostname).unwrap();
    assert_ne!(restarted.holder().to_string(), asked[0].0, "the state dir still names the superseded holder");
}

/// Goal: shutdown refuses further mints, persists the exact last timestamp and releases
/// with it, so the next holder's not_before is just past what was minted.
#[tokio::test]
async fn shutdown_persists_the_exact_last_timestamp_and_releases() {
    let f = fixture(Ok(grant(0, T0)));
    let g = f.start().await.unwrap();
    f.clock.advance(Duration::from_millis(7));
    let id = g.generate().await.unwrap();
    let ts_ms = g.status().layout.decode(id).ts_ms;
    g.shutdown().await;
    assert_eq!(g.generate().await, Err(GenerateError::Parked(ParkCause::Stopping)));
    let released = f.registry.state.lock().unwrap().released;
    assert_eq!(released, Some((WorkerId::new(5), Token::new(4096), ts_ms)));
    let (_, loaded) = crate::ceiling::CeilingStore::open(&f.config.state_dir).unwrap();
    assert_eq!(loaded, crate::ceiling::Loaded::Found { ceiling_ms: ts_ms, exact: true });
}

/// Goal: the Generator API is authorized by the caller's certificate — a `reader` or `node`
/// is PERMISSION_DENIED on every RPC naming the RPC and the roles it needs, a plaintext caller
/// of a TLS port UNAUTHENTICATED — and the rate limit keys on the verified identity: callers
/// with different certificates have separate buckets, a non-operator's `x-caller` is ignored
/// (it can neither escape its own bucket nor charge another's), an operator's names the
/// bucket it charges, and an `--insecure` worker keys on `x-caller`.
#[tokio::test]
async fn service_authorizes_by_role_and_limits_per_identity() {
    use fenceflake_proto::tls::{request_from, Peer, PeerIdentity, Role};
    use fenceflake_proto::v1 as pb;
    use fenceflake_proto::v1::generator_server::Generator as _;
    use fenceflake_proto::wire::CALLER_METADATA_KEY;
    use tonic::Code;

    use crate::rate_limit::{RateLimitConfig, RateLimiter};
    use crate::service::GeneratorService;

    let f = fixture(Ok(grant(0, T0)));
    let g = f.start().await.unwrap();
    g.wait_serving(Duration::from_secs(2)).await.unwrap();
    // The manual clock stands still: a drained bucket stays drained.
    let limits = RateLimitConfig { ids_per_sec: 1, burst: 100_000 };
    let limiter = Arc::new(RateLimiter::new(limits, f.clock.clone()).unwrap());
    let service = GeneratorService::new(g.clone(), limiter.clone());
    let identity = |role, name: &str| PeerIdentity { trust_domain: "test.local".into(), role, name: name.into() };
    let generate = |peer: Peer, x_caller: Option<&str>| {
        let mut request = request_from(pb::GenerateRequest {}, peer);
        if let Some(name) = x_caller {
            request.metadata_mut().insert(CALLER_METADATA_KEY, name.parse().unwrap());
        }
        let service = service.clone();
        async move { service.generate(request).await.map(|_| ()).map_err(|s| (s.code(), s.message().to_string())) }
    };

    for role in [Role::Reader, Role::Node] {
        let peer = Peer::Verified(identity(role, "7"));
        let (code, message) = generate(peer.clone(), None).await.unwrap_err();
        assert_eq!(code, Code::PermissionDenied, "{role}: {message}");
        assert!(message.contains("Generate needs role client or worker or operator"), "{message}");
        assert!(message.contains(&format!("spiffe://test.local/fenceflake/{role}/7")), "{message}");
        let batch = service.generate_batch(request_from(pb::GenerateBatchRequest { count: 1 }, peer.clone())).await;
        assert_eq!(batch.unwrap_err().code(), Code::PermissionDenied);
        let status = service.status(request_from(pb::StatusRequest {}, peer)).await;
        assert_eq!(status.unwrap_err().code(), Code::PermissionDenied);
    }
    assert_eq!(generate(Peer::Plaintext, None).await.unwrap_err().0, Code::Unauthenticated);
    assert_eq!(g.status().ids_minted, 0, "a refused caller got IDs");

    let (alice, bob) = (identity(Role::Client, "alice"), identity(Role::Client, "bob"));
    let operator = identity(Role::Operator, "ops");
    limiter.admit(&alice.uri(), 100_000).unwrap();
    let exhausted = generate(Peer::Verified(alice.clone()), None).await.unwrap_err();
    assert_eq!(exhausted.0, Code::ResourceExhausted, "{}", exhausted.1);
    let renamed = generate(Peer::Verified(alice.clone()), Some("fresh-name")).await;
    assert_eq!(renamed.unwrap_err().0, Code::ResourceExhausted, "x-caller let a client out of its bucket");
    generate(Peer::Verified(bob.clone()), None).await.expect("bob has a bucket of his own");
    generate(Peer::Verified(bob), Some(&alice.uri())).await.expect("bob's x-caller charged alice");
    let for_alice = generate(Peer::Verified(operator.clone()), Some(&alice.uri())).await;
    assert_eq!(for_alice.unwrap_err().0, Code::ResourceExhausted, "an operator's x-caller is honoured");
    generate(Peer::Verified(operator), None).await.expect("an operator has a bucket of its own");
    service.status(request_from(pb::StatusRequest {}, Peer::Verified(alice))).await.expect("Status is not charged");

    limiter.admit("insecure-caller", 100_000).unwrap();
    let unchecked = generate(Peer::Unchecked, Some("insecure-caller")).await;
    assert_eq!(unchecked.unwrap_err().0, Code::ResourceExhausted, "--insecure keys on x-caller");
    generate(Peer::Unchecked, Some("another")).await.expect("another insecure caller");
    g.shutdown().await;
}

/// Goal: the gRPC layer over a generator — the balancing client fails over from a dead
/// endpoint; per-caller limits answer RESOURCE_EXHAUSTED with a retry hint (other callers
/// unaffected); a bad count is INVALID_ARGUMENT; grpc.health.v1 follows the park state
/// (NOT_SERVING once the deadline passes) and parked calls name the reason; the metrics
/// endpoint shows it; shutdown releases the lease.
#[tokio::test]
async fn grpc_service_health_limits_metrics_and_client() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    use crate::rate_limit::{RateLimitConfig, RateLimiter};
    use crate::server::{run, Listeners};
    use fenceflake_client::{ClientError, WorkerClient};

    let f = fixture(Ok(grant(0, T0)));
    let g = f.start().await.unwrap();
    // Let time pass on the manual clock as it does in reality, so a batch can span
    // milliseconds.
    let ticking = f.clock.clone();
    let ticker = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        loop {
            tick.tick().await;
            ticking.advance(Duration::from_millis(1));
        }
    });
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, metrics_addr) = (grpc.local_addr().unwrap().to_string(), metrics.local_addr().unwrap());
    // One ID per second after the burst: the caller that used its burst stays limited.
    let limits = RateLimitConfig { ids_per_sec: 1, burst: 100_000 };
    let limiter = Arc::new(RateLimiter::new(limits, f.clock.clone()).unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run(g.clone(), Listeners { grpc, metrics: Some(metrics) }, limiter, async {
        let _ = stopped.await;
    }));

    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let insecure = &Security::Insecure;
    let balanced = WorkerClient::new(&[dead, addr.clone()], Some("tester"), insecure).unwrap();
    balanced.generate().await.expect("failed over from the dead endpoint");
    let tester = WorkerClient::new(std::slice::from_ref(&addr), Some("tester"), insecure).unwrap();
    let batch = tester.generate_batch(99_999).await.unwrap();
    assert_eq!(batch.ranges.iter().map(|r| u64::from(r.count)).sum::<u64>(), 99_999);
    match tester.generate().await {
        Err(ClientError::RateLimited { retry_after_ms }) => assert!((1..=1_000).contains(&retry_after_ms)),
        other => panic!("expected a rate limit, got {other:?}"),
    }
    let other = WorkerClient::new(std::slice::from_ref(&addr), Some("other"), insecure).unwrap();
    other.generate().await.expect("another caller is not limited");
    assert!(matches!(
        other.generate_batch(0).await,
        Err(ClientError::Refused { code: tonic::Code::InvalidArgument, .. })
    ));

    let mut health =
        HealthClient::new(tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy());
    let check = |mut h: HealthClient<tonic::transport::Channel>| async move {
        let request = HealthCheckRequest { service: "fenceflake.v1.Generator".into() };
        h.check(request).await.unwrap().into_inner().status
    };
    assert_eq!(check(health.clone()).await, ServingStatus::Serving as i32);
    f.registry.set_renew(Err(RegistryCallError::Unavailable { last: "down".into(), indeterminate: false }));
    f.clock.advance(Duration::from_millis(600));
    for _ in 0..100 {
        if check(health.clone()).await == ServingStatus::NotServing as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(check(health.clone()).await, ServingStatus::NotServing as i32);
    match other.generate().await {
        Err(ClientError::NoWorkerServed { failures }) => {
            assert!(failures[0].ends_with("parked (LEASE_EXPIRED)"), "{failures:?}")
        }
        other => panic!("a parked worker served: {other:?}"),
    }

    let mut http = tokio::net::TcpStream::connect(metrics_addr).await.unwrap();
    http.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut text = String::new();
    http.read_to_string(&mut text).await.unwrap();
    assert!(text.contains("fenceflake_worker_parked{reason=\"lease_expired\"} 1"), "{text}");
    assert!(text.contains("fenceflake_worker_rate_limited_total{rpc=\"Generate\"} 1"), "{text}");
    assert!(text.contains("fenceflake_worker_ids_minted_total 100001"), "{text}");
    assert!(text.contains("fenceflake_worker_tls_insecure 1"), "{text}");

    let _ = stop.send(());
    server.await.unwrap().unwrap();
    ticker.abort();
    assert!(f.registry.state.lock().unwrap().released.is_some(), "shutdown did not release");
    health.check(HealthCheckRequest { service: String::new() }).await.expect_err("still serving after shutdown");
}

/// A throwaway CA in `dir` and leaf certificates of it, as `fenceflake certs` makes them
/// (SPIFFE URI SAN, localhost and 127.0.0.1, server and client use).
struct TestCa {
    dir: std::path::PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    fn new(dir: &std::path::Path) -> TestCa {
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        params.distinguished_name.push(rcgen::DnType::CommonName, "test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        TestCa { dir: dir.to_path_buf(), issuer: rcgen::Issuer::new(params, key) }
    }

    /// The Security of a holder of `role`/`name`.
    fn security(&self, role: &str, name: &str) -> Security {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let uri = format!("spiffe://test.local/fenceflake/{role}/{name}");
        params.subject_alt_names.push(rcgen::SanType::URI(uri.try_into().unwrap()));
        params.subject_alt_names.push(rcgen::SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        params.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) =
            (self.dir.join(format!("{role}-{name}.pem")), self.dir.join(format!("{role}-{name}.key")));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Security::from_flags(Some(self.dir.join("ca.pem")), Some(cert_path), Some(key_path), false).unwrap()
    }
}

/// Goal: the whole Generator port over real mutual TLS — a `client` certificate mints
/// through the balancing client, a `reader` is refused PERMISSION_DENIED at once, a plaintext
/// client is told the worker requires TLS; rate limits follow the certificate whatever `x-caller` says; the metrics
/// say TLS is on and when the certificate expires; and a worker will not start with a
/// certificate of another role.
#[tokio::test]
async fn grpc_service_over_mutual_tls_authorizes_by_certificate() {
    use crate::rate_limit::{RateLimitConfig, RateLimiter};
    use crate::server::{run, Listeners};
    use fenceflake_client::{ClientError, WorkerClient};

    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new(certs.path());
    let mut f = fixture(Ok(grant(0, T0)));
    f.config.security = ca.security("client", "not-a-worker");
    let refused = f.start().await.unwrap_err().to_string();
    assert!(
        refused.contains("spiffe://test.local/fenceflake/client/not-a-worker")
            && refused.contains("worker certificate"),
        "{refused}"
    );
    f.config.security = ca.security("worker", "w1");
    let g = f.start().await.unwrap();
    g.wait_serving(Duration::from_secs(2)).await.unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = vec![grpc.local_addr().unwrap().to_string()];
    let limiter =
        Arc::new(RateLimiter::new(RateLimitConfig { ids_per_sec: 1, burst: 100_000 }, f.clock.clone()).unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run(g.clone(), Listeners { grpc, metrics: None }, limiter.clone(), async {
        let _ = stopped.await;
    }));

    let alice = WorkerClient::new(&addr, Some("bob"), &ca.security("client", "alice")).unwrap();
    alice.generate().await.expect("a client certificate mints");
    limiter.admit("spiffe://test.local/fenceflake/client/alice", 99_999).unwrap();
    assert!(matches!(alice.generate().await, Err(ClientError::RateLimited { .. })), "alice escaped by x-caller");
    let bob = WorkerClient::new(&addr, Some("alice"), &ca.security("client", "bob")).unwrap();
    bob.generate().await.expect("bob has his own bucket");

    let reader = WorkerClient::new(&addr, None, &ca.security("reader", "r")).unwrap();
    match reader.generate().await {
        Err(ClientError::Refused { code: tonic::Code::PermissionDenied, message }) => {
            assert!(message.contains("Generate needs role client or worker or operator"), "{message}")
        }
        other => panic!("a reader minted: {other:?}"),
    }
    let plaintext = WorkerClient::new(&addr, None, &Security::Insecure).unwrap();
    match plaintext.generate().await {
        Err(ClientError::NoWorkerServed { failures }) => {
            assert!(
                failures[0].contains("Unauthenticated") && failures[0].contains("requires mutual TLS"),
                "{failures:?}"
            )
        }
        other => panic!("a plaintext client minted: {other:?}"),
    }

    let text = g.render_metrics();
    assert!(text.contains("fenceflake_worker_tls_insecure 0"), "{text}");
    assert!(text.contains("fenceflake_worker_tls_cert_expiry_timestamp_seconds "), "{text}");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
