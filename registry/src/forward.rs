//! A follower's way to the leader: a client proposal goes over the peer port as one
//! `Forward`, and renewals go many to a `ForwardRenewals` call.
//!
//! Why renewals are batched: a leader answers most renewals from memory in microseconds, so
//! on a follower the forwarding call itself — an HTTP/2 request over mutual TLS, an encode
//! and a decode on each side — is most of a renewal's cost, and at fleet scale followers
//! forward thousands a second. [`RenewalForwarder`] keeps a queue per leader: a renewal that
//! finds a call slot free and nothing queued goes at once, in a call of its own; otherwise it
//! queues, and the next call to start or end takes the queue with it. Idle, nothing waits;
//! under load, one call carries many.
//!
//! Nothing about a renewal's meaning changes: the leader executes each renewal of a batch
//! exactly as it executes a forwarded one (`RegistryNode::execute_forwarded`) and streams each
//! answer back as soon as it is done ([`answer_each`]), so a renewal that takes the log path
//! never holds back the ones answered from memory. A call that fails before the leader ran
//! anything leaves each renewal with the answer a single forward would have had; once the
//! answers started, a renewal left unanswered is an unknown outcome (a renewal is idempotent,
//! so a retry is safe either way). A leader of an older release answers `UNIMPLEMENTED`
//! before running anything, and the batch then goes as single forwards.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::clock::{Clock, MonoTime};
use crate::error::RegistryError;
use crate::lease::Renew;
use crate::limits::{FORWARDED_RENEWALS_PER_CALL_MAX, FORWARD_QUEUE_MAX};
use crate::metrics::{inc, RegistryMetrics};
use crate::proposal::{Proposal, Reply};
use crate::raft::network::{PeerCallError, PeerClients, PeerRpc};
use crate::raft::types::NodeId;

/// Forwarding calls in flight at once per leader; renewals queue only while all are busy.
/// Measured (BENCHMARKS.md, "Forwarded renewals in batches"): 2 gave the most at 64
/// closed-loop clients but queued the third of the ~3 renewals a follower sees at 16 clients
/// behind a round trip; 4 keeps 16 clients at par and still gains at 64; 8 and unbounded
/// gained nothing.
pub const CALLS_IN_FLIGHT_MAX: usize = 4;

/// After a leader answered `UNIMPLEMENTED` (an older release, mid-upgrade), renewals to it go
/// as single forwards for this long before a batch is tried again.
pub const OLDER_LEADER_RETRY: Duration = Duration::from_secs(30);

/// The shortest time a forwarding call is given: a caller whose deadline is (nearly) past
/// still gets a call that can complete, as the single forward always did.
pub const MIN_CALL_TIMEOUT: Duration = Duration::from_millis(10);

/// The answer to one forwarded proposal, as the leader sent it.
pub type Answer = Result<Reply, RegistryError>;

/// One message of a `ForwardRenewals` answer stream: the answer to the renewal at `index` of
/// the call's body.
#[derive(Debug, Serialize, Deserialize)]
pub struct ForwardedAnswer {
    pub index: usize,
    pub answer: Answer,
}

/// Send `proposal` to the leader `leader` at `addr` as one `Forward`, within `timeout`.
pub async fn forward_one(
    peers: &PeerClients,
    leader: NodeId,
    addr: &str,
    proposal: &Proposal,
    timeout: Duration,
) -> Result<Answer, PeerCallError> {
    peers.call(leader, addr, PeerRpc::Forward, proposal, timeout).await
}

/// What a forwarding call that failed *before the leader answered anything* means for each
/// proposal it carried.
pub fn forward_failure(error: &PeerCallError, leader: NodeId, waited_ms: u64) -> RegistryError {
    match error {
        // Definite, safe to retry: the address is unusable, or the peer's envelope check or
        // decoding refused it (a gRPC error status rather than a sealed answer comes only from
        // there, before anything is executed). Anything else — UNAVAILABLE included, which
        // tonic also answers for an HTTP/2 keep-alive timeout on a request already sent — may
        // have been executed: unknown.
        PeerCallError::BadAddress { .. } => RegistryError::NotLeader { leader: Some(leader) },
        PeerCallError::Failed { status, .. } if refused_before_running(status) => {
            RegistryError::NotLeader { leader: Some(leader) }
        }
        e => RegistryError::Indeterminate { waited_ms, why: format!("forwarding to leader {leader} failed: {e}") },
    }
}

/// The statuses the peer port answers only before executing anything.
fn refused_before_running(status: &tonic::Status) -> bool {
    matches!(status.code(), tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument)
}

/// The leader's side of `ForwardRenewals`: run every future, and send each answer with its
/// index as soon as it is ready. Each is polled once here (a renewal answered from memory is
/// done then, at no task's cost); only those that must wait (the log path) continue as tasks
/// of their own, for at most `limit` (the node's request timeout: a single `Forward` stops
/// when its caller leaves, and these tasks outlive the call, so they end on their own and
/// answer unknown). The channel ends when the last answer is sent; a task that panicked sends
/// nothing, and the follower counts that renewal's outcome as unknown. The inline polls share
/// the handler's cooperative budget: past it, a renewal that could be answered from memory
/// is spawned too (correct, only dearer).
pub async fn answer_each(
    futures: Vec<impl Future<Output = Answer> + Send + 'static>,
    limit: Duration,
) -> mpsc::Receiver<ForwardedAnswer> {
    // Room for every answer: sending never waits, whatever the reader does.
    let (tx, rx) = mpsc::channel(futures.len().max(1));
    for (index, future) in futures.into_iter().enumerate() {
        let mut future = Box::pin(future);
        match std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await {
            Poll::Ready(answer) => {
                let _ = tx.try_send(ForwardedAnswer { index, answer });
            }
            Poll::Pending => {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let answer = tokio::time::timeout(limit, future).await.unwrap_or_else(|_| {
                        let waited_ms = limit.as_millis() as u64;
                        Err(RegistryError::Indeterminate { waited_ms, why: "still running on the leader".into() })
                    });
                    let _ = tx.try_send(ForwardedAnswer { index, answer });
                });
            }
        }
    }
    rx
}

/// A renewal to forward: what goes to the leader, the request's times, and where its answer
/// goes.
struct Renewal {
    renew: Renew,
    started: MonoTime,
    deadline: MonoTime,
    answer: oneshot::Sender<Answer>,
}

/// Which leader a queue is for: its id and its peer address.
type LeaderKey = (NodeId, String);

/// The renewals waiting for a call to one leader, and the calls to it running. Per leader, so
/// that calls stuck on a leader that went away never hold back renewals for its successor.
#[derive(Default)]
struct Queue {
    waiting: VecDeque<Renewal>,
    calls: usize,
}

impl Queue {
    /// Forget renewals whose callers stopped waiting: they already answered "unknown", which
    /// stays true.
    fn prune(&mut self) {
        self.waiting.retain(|r| !r.answer.is_closed());
    }

    /// The next call's renewals: the oldest, up to [`FORWARDED_RENEWALS_PER_CALL_MAX`].
    fn take_batch(&mut self) -> Vec<Renewal> {
        self.prune();
        let count = self.waiting.len().min(FORWARDED_RENEWALS_PER_CALL_MAX);
        self.waiting.drain(..count).collect()
    }
}

/// A follower's renewal batching. Cheap to clone.
#[derive(Clone)]
pub struct RenewalForwarder {
    inner: Arc<Carrier>,
}

impl std::fmt::Debug for RenewalForwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenewalForwarder").finish_non_exhaustive()
    }
}

impl RenewalForwarder {
    pub fn new(peers: PeerClients, clock: Arc<dyn Clock>, metrics: Arc<RegistryMetrics>) -> RenewalForwarder {
        let inner = Carrier { peers, clock, metrics, older_leader: Mutex::default(), queues: Mutex::default() };
        RenewalForwarder { inner: Arc::new(inner) }
    }

    /// Forward `renew` to the leader `leader` at `addr` and wait for its answer until
    /// `deadline` (the request's, which began at `started`).
    pub async fn forward(
        &self,
        leader: NodeId,
        addr: String,
        renew: Renew,
        started: MonoTime,
        deadline: MonoTime,
    ) -> Answer {
        let (answer, rx) = oneshot::channel();
        let renewal = Renewal { renew, started, deadline, answer };
        let key = (leader, addr);
        // `Ok`: a slot is ours and the renewal comes back to go at once; `Err(start)`: it was
        // queued, and whether a call should start for the queue.
        let route: Result<Renewal, bool> = {
            let mut queues = self.inner.queues();
            let queue = queues.entry(key.clone()).or_default();
            if queue.calls < CALLS_IN_FLIGHT_MAX && queue.waiting.is_empty() {
                queue.calls += 1;
                Ok(renewal)
            } else if queue.waiting.len() >= FORWARD_QUEUE_MAX {
                // A renewal that never entered the queue was never sent: definite.
                return Err(RegistryError::Overloaded { queued: FORWARD_QUEUE_MAX });
            } else {
                queue.waiting.push_back(renewal);
                Err(queue.calls < CALLS_IN_FLIGHT_MAX)
            }
        };
        match route {
            Ok(renewal) => {
                let slot = Slot { carrier: self.inner.clone(), key };
                slot.carrier.carry(&slot.key, vec![renewal]).await;
            }
            Err(true) => drop(tokio::spawn(drain(self.inner.clone(), key))),
            Err(false) => {}
        }
        let clock = self.inner.clock.as_ref();
        let waited_ms = || clock.mono().since(started).as_millis() as u64;
        // Queued, so possibly sent: from here on a missing answer is an unknown outcome.
        match tokio::time::timeout(deadline.since(clock.mono()), rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(RegistryError::Indeterminate {
                waited_ms: waited_ms(),
                why: format!("the forwarding to leader {leader} ended without an answer"),
            }),
            Err(_) => Err(RegistryError::Indeterminate {
                waited_ms: waited_ms(),
                why: format!("no answer from leader {leader} in time"),
            }),
        }
    }
}

/// One of a leader's [`CALLS_IN_FLIGHT_MAX`] call slots, held by a caller forwarding its own
/// renewal or by a [`drain`] task. Given back when dropped — also when its holder is cancelled
/// mid-call (a caller that left) — and if renewals wait then, a new drain task is started for
/// them. That task takes its slot when it first runs, never before, so a task dropped unrun
/// (a runtime shutting down) holds nothing and starts nothing.
struct Slot {
    carrier: Arc<Carrier>,
    key: LeaderKey,
}

/// Take a free slot for the renewals queued for `key`, and carry them until none wait.
async fn drain(carrier: Arc<Carrier>, key: LeaderKey) {
    let slot = {
        let mut queues = carrier.queues();
        let Some(queue) = queues.get_mut(&key) else { return };
        queue.prune();
        if queue.waiting.is_empty() && queue.calls == 0 {
            queues.remove(&key); // every caller that queued left before this task ran
            return;
        }
        if queue.calls >= CALLS_IN_FLIGHT_MAX || queue.waiting.is_empty() {
            return;
        }
        queue.calls += 1;
        Slot { carrier: carrier.clone(), key }
    };
    loop {
        let batch = slot.carrier.queues().get_mut(&slot.key).map(Queue::take_batch).unwrap_or_default();
        if batch.is_empty() {
            return; // the slot's drop gives it back, or starts a drain if one queued since
        }
        slot.carrier.carry(&slot.key, batch).await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut queues = self.carrier.queues();
        let Some(queue) = queues.get_mut(&self.key) else { return };
        queue.calls -= 1;
        queue.prune();
        if queue.waiting.is_empty() {
            if queue.calls == 0 {
                queues.remove(&self.key);
            }
        } else if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            drop(queues);
            drop(runtime.spawn(drain(self.carrier.clone(), self.key.clone())));
        } else {
            // No runtime to carry them: their callers hear "no answer" (unknown) now rather
            // than at their deadlines.
            queue.waiting.clear();
        }
    }
}

/// What the calls send with, and the queues they take from.
struct Carrier {
    peers: PeerClients,
    clock: Arc<dyn Clock>,
    metrics: Arc<RegistryMetrics>,
    /// The last leader that refused a batch before running it, and when.
    older_leader: Mutex<Option<(NodeId, MonoTime)>>,
    queues: Mutex<HashMap<LeaderKey, Queue>>,
}

impl Carrier {
    fn queues(&self) -> MutexGuard<'_, HashMap<LeaderKey, Queue>> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Send `renewals` to the leader in one `ForwardRenewals` call (or singly, to a leader of
    /// an older release) and hand each its answer as it arrives.
    async fn carry(&self, (leader, addr): &LeaderKey, renewals: Vec<Renewal>) {
        let leader = *leader;
        if self.leader_is_older(leader) {
            return self.carry_singly(leader, addr, renewals).await;
        }
        let now = self.clock.mono();
        // Long enough for the renewal that may wait longest; each caller keeps its own deadline.
        let timeout = renewals.iter().map(|r| r.deadline.since(now)).max().unwrap_or_default().max(MIN_CALL_TIMEOUT);
        let body: Vec<&Renew> = renewals.iter().map(|r| &r.renew).collect();
        let mut answers = match self.peers.forward_renewals(leader, addr, &body, timeout).await {
            Ok(answers) => answers,
            // An older release: nothing ran. Single forwards, and no batches to it for a while.
            Err(PeerCallError::Failed { status, .. }) if status.code() == tonic::Code::Unimplemented => {
                self.note_singly(leader, "the leader does not take renewal batches (an older release?)");
                return self.carry_singly(leader, addr, renewals).await;
            }
            // Refused before running (a batch this leader will not take, e.g. a release with a
            // smaller batch bound): each renewal goes on its own and gets its own answer.
            Err(PeerCallError::Failed { status, .. }) if status.code() == tonic::Code::InvalidArgument => {
                self.note_singly(leader, &format!("the leader refused a renewal batch: {}", status.message()));
                return self.carry_singly(leader, addr, renewals).await;
            }
            Err(e) => {
                for r in renewals {
                    let _ = r.answer.send(Err(forward_failure(&e, leader, self.waited_ms(r.started))));
                }
                return;
            }
        };
        inc(&self.metrics.forwarded_renewal_calls);
        self.metrics.forwarded_renewals.fetch_add(renewals.len() as u64, Ordering::Relaxed);
        let mut open: Vec<Option<Renewal>> = renewals.into_iter().map(Some).collect();
        let mut unanswered = open.len();
        // The leader has begun: whatever is not answered now may have been applied.
        let why = loop {
            let next = tokio::time::timeout(self.remaining(now, timeout), answers.next()).await;
            match next {
                Err(_) => break format!("leader {leader} did not answer every renewal within {timeout:?}"),
                Ok(None) => break format!("leader {leader} ended the answers early"),
                Ok(Some(Err(e))) => break format!("the answers from leader {leader} broke off: {e}"),
                Ok(Some(Ok(ForwardedAnswer { index, answer }))) => {
                    match open.get_mut(index).and_then(Option::take) {
                        Some(renewal) => {
                            let _ = renewal.answer.send(answer);
                            unanswered -= 1;
                        }
                        None => {
                            tracing::error!(leader, index, "the leader answered a renewal twice or one it was not sent")
                        }
                    }
                    if unanswered == 0 {
                        // Read the stream's end, which follows at once: a stream dropped before
                        // it is reset, and a server takes many resets for an attack (HTTP/2
                        // rapid reset) and closes the whole connection.
                        let rest = self.remaining(now, timeout);
                        let _ = tokio::time::timeout(rest, answers.next()).await;
                        return;
                    }
                }
            }
        };
        for renewal in open.into_iter().flatten() {
            let waited_ms = self.waited_ms(renewal.started);
            let _ = renewal.answer.send(Err(RegistryError::Indeterminate { waited_ms, why: why.clone() }));
        }
    }

    /// Remember that `leader` refused a batch before running it (`UNIMPLEMENTED`: an older
    /// release; `INVALID_ARGUMENT`: one with other bounds), so that renewals to it go singly
    /// for [`OLDER_LEADER_RETRY`] instead of paying a refused call first each time (logged
    /// when it is news).
    fn note_singly(&self, leader: NodeId, why: &str) {
        let mut older = self.older_leader.lock().unwrap_or_else(PoisonError::into_inner);
        if older.is_none_or(|(id, _)| id != leader) {
            tracing::warn!(
                leader,
                "{why}; forwarding renewals to it singly, a batch is tried again every {OLDER_LEADER_RETRY:?}"
            );
        }
        *older = Some((leader, self.clock.mono()));
    }

    fn leader_is_older(&self, leader: NodeId) -> bool {
        let older = *self.older_leader.lock().unwrap_or_else(PoisonError::into_inner);
        older.is_some_and(|(id, at)| id == leader && self.clock.mono().since(at) < OLDER_LEADER_RETRY)
    }

    /// Each renewal as its own `Forward`, all at once (what releases before batches did). A
    /// task that panicked drops its renewal's answer, which its caller reads as unknown.
    async fn carry_singly(&self, leader: NodeId, addr: &str, renewals: Vec<Renewal>) {
        let mut calls = tokio::task::JoinSet::new();
        for renewal in renewals {
            let (peers, clock, addr) = (self.peers.clone(), self.clock.clone(), addr.to_string());
            calls.spawn(async move {
                let timeout = renewal.deadline.since(clock.mono()).max(MIN_CALL_TIMEOUT);
                let proposal = Proposal::Renew(renewal.renew);
                let answer = forward_one(&peers, leader, &addr, &proposal, timeout).await.unwrap_or_else(|e| {
                    Err(forward_failure(&e, leader, clock.mono().since(renewal.started).as_millis() as u64))
                });
                let _ = renewal.answer.send(answer);
            });
        }
        while calls.join_next().await.is_some() {}
    }

    /// What is left of `timeout` counted from `since`.
    fn remaining(&self, since: MonoTime, timeout: Duration) -> Duration {
        timeout.saturating_sub(self.clock.mono().since(since))
    }

    fn waited_ms(&self, started: MonoTime) -> u64 {
        self.clock.mono().since(started).as_millis() as u64
    }
}

#[cfg(test)]
#[path = "forward_tests.rs"]
mod tests;
