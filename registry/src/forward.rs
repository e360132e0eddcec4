//! A follower's way to the leader: a client proposal goes over the peer port as one
//! `Forward`, and renewals go many to a `ForwardRenewals` call.
//!
//! Why renewals are batched: a leader answers most renewals from memory in microseconds, so
//! on a follower the forwarding call itself — an HTTP/2 request over mutual TLS, an encode
//! and a decode on each side — is most of a renewal's cost, and at fleet scale followers
//! forward thousands a second. [`RenewalForwarder`] sends whatever renewals queued up while
//! the previous calls were in flight as one call (the proposer's pattern, `proposer.rs`):
//! idle, a renewal goes out alone at once; under load, one call carries many.
//!
//! Nothing about a renewal's meaning changes: the leader executes each renewal of a batch
//! exactly as it executes a forwarded one (`RegistryNode::execute_forwarded`) and answers each
//! on its own; a call that fails leaves every renewal in it with the outcome a single forward
//! would have had (definite when the call was refused before anything ran, unknown otherwise:
//! a renewal is idempotent, so a retry is safe either way). A leader of an older release
//! answers `UNIMPLEMENTED` before running anything, and the batch then goes as single forwards.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::clock::{Clock, MonoTime};
use crate::error::RegistryError;
use crate::lease::Renew;
use crate::limits::{FORWARDED_RENEWALS_PER_CALL_MAX, FORWARD_QUEUE_MAX};
use crate::metrics::{inc, RegistryMetrics};
use crate::proposal::{Proposal, Reply};
use crate::raft::network::{PeerCallError, PeerClients, PeerRpc};
use crate::raft::types::NodeId;

/// Forwarding calls in flight at once; renewals queue only while all are busy. Measured
/// (BENCHMARKS.md, "Forwarded renewals in batches"): 2 gave the most at 64 closed-loop clients
/// (+22 % over a call per renewal) but queued the third of the ~3 renewals a follower sees at 16
/// clients behind a round trip (−15 %); 4 keeps 16 clients at par and still gains at 64; 8 and
/// unbounded gained nothing.
const CALLS_IN_FLIGHT_MAX: usize = 4;

/// After a leader answered `UNIMPLEMENTED` (an older release, mid-upgrade), renewals to it go
/// as single forwards for this long before a batch is tried again.
const OLDER_LEADER_RETRY: Duration = Duration::from_secs(30);

/// The answer to one forwarded proposal, as the leader sent it.
pub type Answer = Result<Reply, RegistryError>;

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

/// What a forwarding call that failed means for each proposal it carried.
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

/// A renewal to forward: what goes to the leader, and the request's times.
struct Renewal {
    renew: Renew,
    started: MonoTime,
    deadline: MonoTime,
}

/// One renewal waiting in the queue, and where its answer goes.
struct Waiting {
    leader: NodeId,
    addr: String,
    renewal: Renewal,
    answer: oneshot::Sender<Answer>,
}

/// The renewals waiting for a call, and the calls running.
#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiting>,
    calls: usize,
}

impl Queue {
    /// The next call's renewals: the oldest waiting one and every other for the same leader,
    /// up to [`FORWARDED_RENEWALS_PER_CALL_MAX`]; renewals whose callers stopped waiting are
    /// dropped (they already answered "unknown", which stays true).
    fn take_batch(&mut self) -> Vec<Waiting> {
        self.waiting.retain(|w| !w.answer.is_closed());
        let Some(first) = self.waiting.pop_front() else { return Vec::new() };
        let mut batch = vec![first];
        let mut rest = VecDeque::new();
        while let Some(next) = self.waiting.pop_front() {
            let same_leader = next.leader == batch[0].leader && next.addr == batch[0].addr;
            if same_leader && batch.len() < FORWARDED_RENEWALS_PER_CALL_MAX {
                batch.push(next);
            } else {
                rest.push_back(next);
            }
        }
        self.waiting = rest;
        batch
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
        let inner = Carrier { peers, clock, metrics, older_leader: Mutex::default(), queue: Mutex::default() };
        RenewalForwarder { inner: Arc::new(inner) }
    }

    /// Forward `renew` to the leader `leader` at `addr` and wait for its answer until
    /// `deadline` (the request's, which began at `started`). With a call slot free and nothing
    /// queued, the renewal goes at once, in a call of its own made by this caller (no task, no
    /// hand-off: what an idle follower pays). Otherwise it joins the queue, which the next
    /// call to start or end takes with it.
    pub async fn forward(
        &self,
        leader: NodeId,
        addr: String,
        renew: Renew,
        started: MonoTime,
        deadline: MonoTime,
    ) -> Answer {
        let renewal = Renewal { renew, started, deadline };
        let (answer, rx) = oneshot::channel();
        // `Ok`: a slot is ours and the renewal comes back to go at once; `Err(start_call)`: it
        // was queued, and whether this caller must start a call for the queue.
        let route: Result<Renewal, bool> = {
            let mut queue = self.inner.queue.lock().unwrap_or_else(PoisonError::into_inner);
            let slot_free = queue.calls < CALLS_IN_FLIGHT_MAX;
            if slot_free && queue.waiting.is_empty() {
                queue.calls += 1;
                Ok(renewal)
            } else if queue.waiting.len() >= FORWARD_QUEUE_MAX {
                // A renewal that never entered the queue was never sent: definite.
                return Err(RegistryError::Overloaded { queued: FORWARD_QUEUE_MAX });
            } else {
                queue.waiting.push_back(Waiting { leader, addr: addr.clone(), renewal, answer });
                queue.calls += usize::from(slot_free);
                Err(slot_free)
            }
        };
        match route {
            Ok(renewal) => {
                let slot = Slot(self.inner.clone());
                let answer = self.inner.carry(leader, &addr, vec![renewal]).await.pop();
                drop(slot);
                return answer
                    .unwrap_or_else(|| Err(RegistryError::Fatal("a forwarded renewal went unanswered".into())));
            }
            Err(true) => drop(tokio::spawn(Slot(self.inner.clone()).calls())),
            Err(false) => {}
        }
        let clock = self.inner.clock.as_ref();
        let waited_ms = || clock.mono().since(started).as_millis() as u64;
        // Queued, so possibly sent: from here on a missing answer is an unknown outcome.
        match tokio::time::timeout(deadline.since(clock.mono()), rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(RegistryError::Indeterminate {
                waited_ms: waited_ms(),
                why: "the renewal forwarder dropped the renewal".into(),
            }),
            Err(_) => Err(RegistryError::Indeterminate {
                waited_ms: waited_ms(),
                why: format!("no answer from leader {leader} in time"),
            }),
        }
    }
}

/// One of the [`CALLS_IN_FLIGHT_MAX`] call slots, held by a caller forwarding its own renewal
/// or by a task emptying the queue. Given back when dropped — also when its holder is
/// cancelled mid-call (a caller that left) — and then handed to a new task if renewals wait,
/// so the queue never waits for a call that will not come.
struct Slot(Arc<Carrier>);

impl Slot {
    /// Send what waits, then what waited meanwhile, until the queue is empty.
    async fn calls(self) {
        loop {
            let batch = self.0.queue.lock().unwrap_or_else(PoisonError::into_inner).take_batch();
            if batch.is_empty() {
                return; // the drop gives the slot back, or hands it on if one queued since
            }
            self.0.send(batch).await;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut queue = self.0.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if queue.waiting.is_empty() {
            queue.calls -= 1;
        } else if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            drop(queue);
            runtime.spawn(Slot(self.0.clone()).calls());
        } else {
            // The runtime is shutting down: nobody is left to answer.
            queue.calls -= 1;
        }
    }
}

/// What the calls send with, and the queue they take from.
struct Carrier {
    peers: PeerClients,
    clock: Arc<dyn Clock>,
    metrics: Arc<RegistryMetrics>,
    /// The last leader that answered `UNIMPLEMENTED` to a batch, and when.
    older_leader: Mutex<Option<(NodeId, MonoTime)>>,
    queue: Mutex<Queue>,
}

impl Carrier {
    /// Send a batch taken from the queue and hand each waiting caller its answer.
    async fn send(&self, batch: Vec<Waiting>) {
        let (leader, addr) = (batch[0].leader, batch[0].addr.clone());
        debug_assert!(batch.iter().all(|w| w.leader == leader && w.addr == addr));
        let (renewals, answers): (Vec<_>, Vec<_>) = batch.into_iter().map(|w| (w.renewal, w.answer)).unzip();
        for (answer, to) in self.carry(leader, &addr, renewals).await.into_iter().zip(answers) {
            let _ = to.send(answer);
        }
    }

    /// Send `renewals` to the leader in one `ForwardRenewals` call (or singly, to a leader of
    /// an older release) and return one answer per renewal, in their order.
    async fn carry(&self, leader: NodeId, addr: &str, renewals: Vec<Renewal>) -> Vec<Answer> {
        if self.leader_is_older(leader) {
            return self.carry_singly(leader, addr, renewals).await;
        }
        let now = self.clock.mono();
        // Long enough for the renewal that may wait longest; each caller keeps its own deadline.
        let timeout = renewals.iter().map(|r| r.deadline.since(now)).max().unwrap_or_default().max(MIN_CALL_TIMEOUT);
        let body: Vec<&Renew> = renewals.iter().map(|r| &r.renew).collect();
        inc(&self.metrics.forwarded_renewal_calls);
        self.metrics.forwarded_renewals.fetch_add(renewals.len() as u64, Ordering::Relaxed);
        let result: Result<Vec<Answer>, PeerCallError> =
            self.peers.call(leader, addr, PeerRpc::ForwardRenewals, &body, timeout).await;
        match result {
            Ok(answers) if answers.len() == renewals.len() => answers,
            Ok(answers) => {
                tracing::error!(
                    leader,
                    sent = renewals.len(),
                    answered = answers.len(),
                    "the leader answered a renewal batch with the wrong number of answers"
                );
                let why = format!("leader {leader} answered {} renewals of {}", answers.len(), renewals.len());
                let unknown =
                    |r: &Renewal| RegistryError::Indeterminate { waited_ms: self.waited_ms(r), why: why.clone() };
                renewals.iter().map(|r| Err(unknown(r))).collect()
            }
            // An older release: nothing ran. Single forwards, and no batches to it for a while.
            Err(PeerCallError::Failed { status, .. }) if status.code() == tonic::Code::Unimplemented => {
                tracing::info!(
                    leader,
                    "the leader does not take renewal batches (an older release?); forwarding singly"
                );
                *self.older_leader.lock().unwrap_or_else(PoisonError::into_inner) = Some((leader, self.clock.mono()));
                self.carry_singly(leader, addr, renewals).await
            }
            Err(e) => renewals.iter().map(|r| Err(forward_failure(&e, leader, self.waited_ms(r)))).collect(),
        }
    }

    fn leader_is_older(&self, leader: NodeId) -> bool {
        let older = *self.older_leader.lock().unwrap_or_else(PoisonError::into_inner);
        older.is_some_and(|(id, at)| id == leader && self.clock.mono().since(at) < OLDER_LEADER_RETRY)
    }

    /// Each renewal as its own `Forward`, all at once (what releases before batches did).
    async fn carry_singly(&self, leader: NodeId, addr: &str, renewals: Vec<Renewal>) -> Vec<Answer> {
        let calls = renewals.into_iter().map(|renewal| {
            let (peers, clock, addr) = (self.peers.clone(), self.clock.clone(), addr.to_string());
            async move {
                let timeout = renewal.deadline.since(clock.mono()).max(MIN_CALL_TIMEOUT);
                let proposal = Proposal::Renew(renewal.renew);
                forward_one(&peers, leader, &addr, &proposal, timeout).await.unwrap_or_else(|e| {
                    Err(forward_failure(&e, leader, clock.mono().since(renewal.started).as_millis() as u64))
                })
            }
        });
        all_in_order(calls)
            .await
            .into_iter()
            .map(|answer| answer.unwrap_or_else(|| Err(RegistryError::Fatal("a forwarding task panicked".into()))))
            .collect()
    }

    fn waited_ms(&self, renewal: &Renewal) -> u64 {
        self.clock.mono().since(renewal.started).as_millis() as u64
    }
}

/// The shortest time a forwarding call is given: a caller whose deadline is (nearly) past
/// still gets a call that can complete, as the single forward always did.
pub const MIN_CALL_TIMEOUT: Duration = Duration::from_millis(10);

/// Run `futures` and return their outputs in their order: each is polled once here, and only
/// those that must wait (a renewal that takes the log path) continue as tasks of their own, so
/// a batch of renewals answered from memory costs no task spawns. A task that panicked yields
/// `None` (its panic is already logged by the runtime).
pub async fn all_in_order<T: Send + 'static>(
    futures: impl IntoIterator<Item = impl Future<Output = T> + Send + 'static>,
) -> Vec<Option<T>> {
    let mut outputs = Vec::new();
    let mut waiting = tokio::task::JoinSet::new();
    for (i, future) in futures.into_iter().enumerate() {
        let mut future = Box::pin(future);
        match std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await {
            Poll::Ready(output) => outputs.push(Some(output)),
            Poll::Pending => {
                outputs.push(None);
                waiting.spawn(async move { (i, future.await) });
            }
        }
    }
    while let Some(joined) = waiting.join_next().await {
        if let Ok((i, output)) = joined {
            outputs[i] = Some(output);
        }
    }
    outputs
}

#[cfg(test)]
#[path = "forward_tests.rs"]
mod tests;
