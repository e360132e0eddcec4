//! The follower's renewal batching against a fake leader served in-process (the generated
//! `RaftTransport` server behind a `PeerConnector`, no sockets): what goes in one call, which
//! answer reaches which caller, and what a failed call or an older leader means for each.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fenceflake_proto::channel::{BoxChannel, ChannelError};
use fenceflake_proto::tls::Security;
use fenceflake_proto::v1::raft_transport_server::{RaftTransport, RaftTransportServer};
use fenceflake_proto::v1::{NodeHistoryAnswer, RaftPayload};
use std::pin::Pin;

use tokio::sync::Semaphore;
use tokio_stream::{Stream, StreamExt};
use tonic::codegen::http;
use tonic::{Request, Response, Status};
use tower::util::BoxCloneSyncService;
use tower::ServiceExt;

use super::*;
use crate::clock::ManualClock;
use crate::lease::{Token, WorkerId};
use crate::raft::network::PeerConnector;

const LEADER: NodeId = 1;
const FOLLOWER: NodeId = 2;

/// How the fake leader answers a `ForwardRenewals`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// One answer per renewal, naming its worker ID.
    Answer,
    /// An older release: the method does not exist.
    Unimplemented,
    /// The peer port's envelope check refused the call (nothing ran).
    Refused,
    /// A batch this leader will not take (nothing ran).
    BatchRefused,
    /// The connection broke before any answer.
    Broken,
    /// The answers stop after the first, and the stream breaks.
    BrokenMidway,
    /// The answers stop after the first, and the stream ends.
    Short,
}

#[derive(Debug)]
struct FakeLeader {
    mode: Mutex<Mode>,
    /// Sizes of the `ForwardRenewals` calls received, in order.
    batches: Mutex<Vec<usize>>,
    singles: AtomicU64,
    /// Each `ForwardRenewals` takes a permit before answering: a test holds calls in flight.
    gate: Semaphore,
    /// The answer to [`SLOW_WORKER`]'s renewal waits for a permit (a renewal on the log path).
    slow: Arc<Semaphore>,
}

/// The worker ID whose renewal the fake leader answers only when the test lets it.
const SLOW_WORKER: u32 = 999;

/// The fake leader's answer to a renewal: an error naming the renewal's worker ID, so that a
/// test sees which answer reached which caller.
fn answer_for(renew: &Renew) -> Answer {
    Err(RegistryError::Invalid { field: "worker_id".into(), why: renew.worker_id.0.to_string() })
}

/// An answer from node `sender` (the node the call was meant for).
fn sealed<T: serde::Serialize>(sender: NodeId, body: &T) -> Result<Response<RaftPayload>, Status> {
    let data = serde_json::to_vec(body).unwrap();
    Ok(Response::new(RaftPayload { cluster_id: "c".into(), target_node_id: 0, sender_node_id: sender, data }))
}

type Answers = Pin<Box<dyn Stream<Item = Result<RaftPayload, Status>> + Send + 'static>>;

fn payload(sender: NodeId, answer: ForwardedAnswer) -> Result<RaftPayload, Status> {
    sealed(sender, &answer).map(Response::into_inner)
}

#[tonic::async_trait]
impl RaftTransport for FakeLeader {
    type ForwardRenewalsStream = Answers;

    /// Answers in reverse order (the follower must place each by its index); the renewal of
    /// worker [`SLOW_WORKER`] only once the test lets it.
    async fn forward_renewals(&self, request: Request<RaftPayload>) -> Result<Response<Answers>, Status> {
        let renewals: Vec<Renew> = serde_json::from_slice(&request.get_ref().data).unwrap();
        let me = request.get_ref().target_node_id;
        let mode = *self.mode.lock().unwrap();
        match mode {
            Mode::Unimplemented => return Err(Status::unimplemented("ForwardRenewals")),
            Mode::BatchRefused => return Err(Status::invalid_argument("too many renewals")),
            _ => {}
        }
        self.batches.lock().unwrap().push(renewals.len());
        self.gate.acquire().await.unwrap().forget();
        let answers: Vec<_> = renewals
            .iter()
            .enumerate()
            .rev()
            .map(|(index, r)| (r.worker_id, ForwardedAnswer { index, answer: answer_for(r) }))
            .collect();
        match mode {
            Mode::Refused => Err(Status::failed_precondition("wrong node")),
            Mode::Broken => Err(Status::unavailable("connection reset")),
            Mode::Short | Mode::BrokenMidway => {
                let first = answers.into_iter().next().map(|(_, a)| payload(me, a));
                let end = (mode == Mode::BrokenMidway).then(|| Err(Status::unavailable("connection reset")));
                Ok(Response::new(Box::pin(tokio_stream::iter(first.into_iter().chain(end)))))
            }
            Mode::Answer | Mode::Unimplemented | Mode::BatchRefused => {
                let slow = self.slow.clone();
                let stream = tokio_stream::iter(answers).then(move |(worker_id, answer)| {
                    let slow = slow.clone();
                    async move {
                        if worker_id == WorkerId(SLOW_WORKER) {
                            slow.acquire().await.unwrap().forget();
                        }
                        payload(me, answer)
                    }
                });
                Ok(Response::new(Box::pin(stream)))
            }
        }
    }

    async fn forward(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.singles.fetch_add(1, Ordering::SeqCst);
        match serde_json::from_slice(&request.get_ref().data).unwrap() {
            Proposal::Renew(renew) => sealed(request.get_ref().target_node_id, &answer_for(&renew)),
            other => panic!("only renewals are forwarded here, got {other:?}"),
        }
    }

    // The rest of the generated trait (it has no default methods): the forwarder never calls
    // them, and a call reaching one would fail its test with UNIMPLEMENTED.
    async fn append_entries(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn vote(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn install_snapshot(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn node_history(&self, _: Request<RaftPayload>) -> Result<Response<NodeHistoryAnswer>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn hold_elections(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn clock_probe(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn pre_vote(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// Connects every peer call to the fake leader.
#[derive(Debug)]
struct InProcess(Arc<FakeLeader>);

impl PeerConnector for InProcess {
    fn connect(&self, _target: NodeId, _addr: &str) -> Result<BoxChannel, PeerCallError> {
        let server = RaftTransportServer::from_arc(self.0.clone());
        let server = ServiceExt::<http::Request<tonic::body::Body>>::map_err(server, ChannelError::new);
        Ok(BoxCloneSyncService::new(server))
    }
}

struct Setup {
    leader: Arc<FakeLeader>,
    forwarder: RenewalForwarder,
    clock: Arc<ManualClock>,
}

fn setup(mode: Mode, open_calls: usize) -> Setup {
    let leader = Arc::new(FakeLeader {
        mode: Mutex::new(mode),
        batches: Mutex::default(),
        singles: AtomicU64::new(0),
        gate: Semaphore::new(open_calls),
        slow: Arc::new(Semaphore::new(0)),
    });
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let peers = PeerClients::with_connector(
        "c".into(),
        FOLLOWER,
        clock.clone(),
        Security::Insecure,
        Arc::new(InProcess(leader.clone())),
    );
    let forwarder = RenewalForwarder::new(peers, clock.clone(), Arc::default());
    Setup { leader, forwarder, clock }
}

fn renew(worker_id: u32) -> Renew {
    Renew {
        worker_id: WorkerId(worker_id),
        token: Token(7),
        wall_ms_at_send: 1_700_000_000_000,
        max_minted_ts_ms: 0,
        caller: None,
        window_ms: 0,
    }
}

impl Setup {
    /// Forward the renewal of `worker_id` in a task of its own.
    fn send(&self, worker_id: u32) -> tokio::task::JoinHandle<Answer> {
        self.send_to(LEADER, worker_id)
    }

    fn send_to(&self, leader: NodeId, worker_id: u32) -> tokio::task::JoinHandle<Answer> {
        let forwarder = self.forwarder.clone();
        let now = self.clock.mono();
        tokio::spawn(async move {
            let addr = format!("leader:{leader}");
            forwarder.forward(leader, addr, renew(worker_id), now, now.plus(Duration::from_secs(5))).await
        })
    }

    /// Renewals 0, 1, … sent one after the other until every call slot holds one.
    async fn fill_slots(&self) -> Vec<tokio::task::JoinHandle<Answer>> {
        let mut tasks = Vec::new();
        for id in 0..CALLS_IN_FLIGHT_MAX {
            tasks.push(self.send(id as u32));
            self.calls_seen(id + 1).await;
        }
        tasks
    }

    async fn calls_seen(&self, count: usize) {
        for _ in 0..10_000 {
            if self.leader.batches.lock().unwrap().len() >= count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("the leader saw {:?}, not {count} calls", self.leader.batches.lock().unwrap());
    }
}

fn named_worker(answer: Answer) -> String {
    match answer {
        Err(RegistryError::Invalid { why, .. }) => why,
        other => panic!("expected the fake leader's answer, got {other:?}"),
    }
}

#[tokio::test]
async fn renewals_that_queue_while_calls_are_in_flight_share_one_call_and_each_gets_its_own_answer() {
    let s = setup(Mode::Answer, 0);
    // The first renewals take every call slot, each its own call, held there by the leader.
    let in_calls = s.fill_slots().await;
    let queued: Vec<_> = (0..10).map(|i| s.send((CALLS_IN_FLIGHT_MAX + i) as u32)).collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.leader.gate.add_permits(CALLS_IN_FLIGHT_MAX + 1);
    for (id, task) in (0..).zip(in_calls.into_iter().chain(queued)) {
        assert_eq!(named_worker(task.await.unwrap()), id.to_string());
    }
    let mut expected = vec![1; CALLS_IN_FLIGHT_MAX];
    expected.push(10);
    assert_eq!(*s.leader.batches.lock().unwrap(), expected, "the ten queued renewals went in one call");
    assert_eq!(s.leader.singles.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_leader_without_batches_gets_single_forwards_and_no_batch_for_a_while() {
    let s = setup(Mode::Unimplemented, 0);
    for id in 0..3 {
        assert_eq!(named_worker(s.send(id).await.unwrap()), id.to_string());
    }
    assert_eq!(s.leader.singles.load(Ordering::SeqCst), 3);
    *s.leader.mode.lock().unwrap() = Mode::Answer;
    s.leader.gate.add_permits(10);
    assert_eq!(named_worker(s.send(3).await.unwrap()), "3");
    assert!(s.leader.batches.lock().unwrap().is_empty(), "batches wait {OLDER_LEADER_RETRY:?} after an UNIMPLEMENTED");
    s.clock.advance(OLDER_LEADER_RETRY);
    assert_eq!(named_worker(s.send(4).await.unwrap()), "4");
    assert_eq!(*s.leader.batches.lock().unwrap(), vec![1], "after the pause, batches are tried again");
}

#[tokio::test]
async fn a_call_refused_before_running_is_definite_for_every_renewal_in_it() {
    let s = setup(Mode::Refused, 10);
    for id in 0..3 {
        let answer = s.send(id).await.unwrap();
        assert!(matches!(answer, Err(RegistryError::NotLeader { leader: Some(LEADER) })), "{answer:?}");
    }
}

#[tokio::test]
async fn a_call_that_broke_after_sending_leaves_every_renewal_it_did_not_answer_unknown() {
    for mode in [Mode::Broken, Mode::BrokenMidway, Mode::Short] {
        let s = setup(mode, 0);
        let in_calls = s.fill_slots().await;
        let queued: Vec<_> = (0..3).map(|i| s.send((CALLS_IN_FLIGHT_MAX + i) as u32)).collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.leader.gate.add_permits(CALLS_IN_FLIGHT_MAX + 1);
        drop(in_calls);
        let answers: Vec<Answer> = futures_of(queued).await;
        // Answers come last to first: with `BrokenMidway` and `Short` the last renewal got its
        // own answer before the stream broke or ended.
        for (i, answer) in answers.into_iter().enumerate() {
            let answered = mode != Mode::Broken && i == 2;
            match answer {
                Err(RegistryError::Invalid { why, .. }) if answered => {
                    assert_eq!(why, (CALLS_IN_FLIGHT_MAX + 2).to_string())
                }
                Err(RegistryError::Indeterminate { .. }) if !answered => {}
                other => panic!("{mode:?}, renewal {i}: {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn a_batch_the_leader_refuses_goes_singly_and_each_gets_its_own_answer() {
    let s = setup(Mode::BatchRefused, 0);
    for id in 0..3 {
        assert_eq!(named_worker(s.send(id).await.unwrap()), id.to_string());
    }
    assert_eq!(s.leader.singles.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_renewal_the_leader_is_slow_to_answer_holds_back_no_other() {
    let s = setup(Mode::Answer, 0);
    let in_calls = s.fill_slots().await;
    let slow = s.send(SLOW_WORKER);
    let quick: Vec<_> = (0..5).map(|i| s.send((CALLS_IN_FLIGHT_MAX + i) as u32)).collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.leader.gate.add_permits(CALLS_IN_FLIGHT_MAX + 1);
    for (i, answer) in futures_of(in_calls).await.into_iter().enumerate() {
        assert_eq!(named_worker(answer), i.to_string());
    }
    for (i, answer) in futures_of(quick).await.into_iter().enumerate() {
        assert_eq!(named_worker(answer), (CALLS_IN_FLIGHT_MAX + i).to_string());
    }
    assert!(!slow.is_finished(), "the slow renewal is still being answered");
    assert_eq!(*s.leader.batches.lock().unwrap().last().unwrap(), 6, "it went in one call with the others");
    s.leader.slow.add_permits(1);
    assert_eq!(named_worker(slow.await.unwrap()), SLOW_WORKER.to_string());
}

#[tokio::test]
async fn calls_held_by_a_leader_that_went_away_leave_its_successor_free_slots() {
    let s = setup(Mode::Answer, 0);
    let held = s.fill_slots().await;
    // Leader 1 answers nothing; renewals for node 3, elected meanwhile, still go at once.
    s.calls_seen(CALLS_IN_FLIGHT_MAX).await;
    let successor = s.send_to(3, 42);
    s.calls_seen(CALLS_IN_FLIGHT_MAX + 1).await;
    s.leader.gate.add_permits(CALLS_IN_FLIGHT_MAX + 1);
    assert_eq!(named_worker(successor.await.unwrap()), "42");
    for (i, answer) in futures_of(held).await.into_iter().enumerate() {
        assert_eq!(named_worker(answer), i.to_string());
    }
}

#[test]
fn a_runtime_dropped_with_renewals_queued_stops_cleanly() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let s = runtime.block_on(async {
        let s = setup(Mode::Answer, 0);
        let _held = s.fill_slots().await;
        let _queued: Vec<_> = (0..5).map(|i| s.send((CALLS_IN_FLIGHT_MAX + i) as u32)).collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        s
    });
    // Dropping the runtime drops every task, slots included, with renewals still queued: no
    // slot may start work that the closed runtime drops again at once (it would recurse).
    drop(runtime);
    drop(s);
}

#[tokio::test]
async fn the_leader_sends_each_answer_when_it_is_ready_unknown_past_its_limit_and_nothing_for_a_panic() {
    let (release, wait) = oneshot::channel::<()>();
    let ready = |id: u32| -> std::pin::Pin<Box<dyn Future<Output = Answer> + Send>> {
        Box::pin(async move { answer_for(&renew(id)) })
    };
    let runs: Vec<std::pin::Pin<Box<dyn Future<Output = Answer> + Send>>> = vec![
        Box::pin(async move {
            wait.await.unwrap();
            answer_for(&renew(0))
        }),
        ready(1),
        Box::pin(async move {
            tokio::task::yield_now().await;
            panic!("a renewal's task panicked")
        }),
        ready(3),
        Box::pin(std::future::pending()),
    ];
    let mut answers = answer_each(runs, Duration::from_millis(300)).await;
    let mut next = || answers.try_recv().map(|a| (a.index, named_worker(a.answer)));
    assert_eq!(next(), Ok((1, "1".into())), "answered when first polled, in order");
    assert_eq!(next(), Ok((3, "3".into())));
    release.send(()).unwrap();
    let late = answers.recv().await.unwrap();
    assert_eq!((late.index, named_worker(late.answer)), (0, "0".into()));
    let stuck = answers.recv().await.unwrap();
    assert_eq!(stuck.index, 4);
    assert!(matches!(stuck.answer, Err(RegistryError::Indeterminate { .. })), "past its limit: {:?}", stuck.answer);
    assert!(answers.recv().await.is_none(), "the panicked renewal sends nothing, and the answers end");
}

/// Wait for every task, in order.
async fn futures_of(tasks: Vec<tokio::task::JoinHandle<Answer>>) -> Vec<Answer> {
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

#[tokio::test]
async fn a_renewal_whose_leader_does_not_answer_in_time_is_unknown_and_its_caller_is_freed() {
    let s = setup(Mode::Answer, 0);
    let now = s.clock.mono();
    let forward = s.forwarder.forward(LEADER, "leader:1".into(), renew(0), now, now.plus(Duration::from_millis(50)));
    let answer = tokio::time::timeout(Duration::from_secs(5), forward).await.expect("the caller's deadline holds");
    assert!(matches!(answer, Err(RegistryError::Indeterminate { .. })), "{answer:?}");
}

#[tokio::test]
async fn a_caller_that_leaves_mid_call_hands_its_slot_to_the_queue() {
    let s = setup(Mode::Answer, 0);
    let mut in_calls = s.fill_slots().await;
    // Every slot is held by a caller sending its own renewal; the next one queues.
    let queued = s.send(CALLS_IN_FLIGHT_MAX as u32);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let leaving = in_calls.remove(0);
    leaving.abort();
    assert!(leaving.await.unwrap_err().is_cancelled());
    s.calls_seen(CALLS_IN_FLIGHT_MAX + 1).await;
    s.leader.gate.add_permits(CALLS_IN_FLIGHT_MAX + 1);
    for (id, task) in (1..).zip(in_calls.into_iter().chain([queued])) {
        assert_eq!(named_worker(task.await.unwrap()), id.to_string());
    }
    assert_eq!(*s.leader.batches.lock().unwrap(), vec![1; CALLS_IN_FLIGHT_MAX + 1]);
}
