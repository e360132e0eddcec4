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
use tokio::sync::Semaphore;
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
    /// The connection broke after the call was sent.
    Broken,
    /// One answer too few.
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
}

/// The fake leader's answer to a renewal: an error naming the renewal's worker ID, so that a
/// test sees which answer reached which caller.
fn answer_for(renew: &Renew) -> Answer {
    Err(RegistryError::Invalid { field: "worker_id".into(), why: renew.worker_id.0.to_string() })
}

fn sealed<T: serde::Serialize>(body: &T) -> Result<Response<RaftPayload>, Status> {
    let data = serde_json::to_vec(body).unwrap();
    Ok(Response::new(RaftPayload { cluster_id: "c".into(), target_node_id: 0, sender_node_id: LEADER, data }))
}

#[tonic::async_trait]
impl RaftTransport for FakeLeader {
    async fn forward_renewals(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let renewals: Vec<Renew> = serde_json::from_slice(&request.get_ref().data).unwrap();
        let mode = *self.mode.lock().unwrap();
        if mode == Mode::Unimplemented {
            return Err(Status::unimplemented("ForwardRenewals"));
        }
        self.batches.lock().unwrap().push(renewals.len());
        self.gate.acquire().await.unwrap().forget();
        match mode {
            Mode::Refused => Err(Status::failed_precondition("wrong node")),
            Mode::Broken => Err(Status::unavailable("connection reset")),
            Mode::Short => sealed(&renewals[1..].iter().map(answer_for).collect::<Vec<_>>()),
            Mode::Answer | Mode::Unimplemented => sealed(&renewals.iter().map(answer_for).collect::<Vec<_>>()),
        }
    }

    async fn forward(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.singles.fetch_add(1, Ordering::SeqCst);
        match serde_json::from_slice(&request.get_ref().data).unwrap() {
            Proposal::Renew(renew) => sealed(&answer_for(&renew)),
            other => panic!("only renewals are forwarded here, got {other:?}"),
        }
    }

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
        let forwarder = self.forwarder.clone();
        let now = self.clock.mono();
        tokio::spawn(async move {
            forwarder.forward(LEADER, "leader:1".into(), renew(worker_id), now, now.plus(Duration::from_secs(5))).await
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
async fn a_call_that_broke_after_sending_leaves_every_renewal_in_it_unknown() {
    for mode in [Mode::Broken, Mode::Short] {
        let s = setup(mode, 10);
        let answer = s.send(0).await.unwrap();
        assert!(matches!(answer, Err(RegistryError::Indeterminate { .. })), "{mode:?}: {answer:?}");
    }
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
