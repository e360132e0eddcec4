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
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::clock::{Clock, MonoTime};
use crate::error::RegistryError;
use crate::lease::Renew;
use crate::limits::{FORWARDED_RENEWALS_PER_CALL_MAX, FORWARD_QUEUE_MAX};
use crate::metrics::RegistryMetrics;
use crate::proposal::{Proposal, Reply};
use crate::raft::network::{PeerCallError, PeerClients, PeerRpc};
use crate::raft::types::NodeId;

/// Renewal batches in flight at once: one on the wire while the next fills, as the proposer
/// does with entries. More would split the queue into smaller calls for no gain.
const CALLS_IN_FLIGHT_MAX: usize = 2;

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

/// One renewal waiting to be forwarded, and where its answer goes.
struct Waiting {
    leader: NodeId,
    addr: String,
    renew: Renew,
    started: MonoTime,
    deadline: MonoTime,
    answer: oneshot::Sender<Answer>,
}

/// Handle to the follower's renewal batching task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RenewalForwarder {
    queue: mpsc::Sender<Waiting>,
    clock: Arc<dyn Clock>,
}

impl RenewalForwarder {
    /// Start the batching task; it ends when the last handle is dropped.
    pub fn start(peers: PeerClients, clock: Arc<dyn Clock>, metrics: Arc<RegistryMetrics>) -> RenewalForwarder {
        let (queue, rx) = mpsc::channel(FORWARD_QUEUE_MAX);
        let sender = Sender { peers, clock: clock.clone(), metrics, older_leader: Arc::default() };
        tokio::spawn(run(sender, rx));
        RenewalForwarder { queue, clock }
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
        let waiting = Waiting { leader, addr, renew, started, deadline, answer };
        let waited_ms = |clock: &dyn Clock| clock.mono().since(started).as_millis() as u64;
        let remaining = deadline.since(self.clock.mono());
        // A renewal that never entered the queue was never sent: definite.
        match tokio::time::timeout(remaining, self.queue.send(waiting)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(RegistryError::Fatal("the renewal forwarder stopped".into())),
            Err(_) => return Err(RegistryError::Overloaded { queued: FORWARD_QUEUE_MAX }),
        }
        let remaining = deadline.since(self.clock.mono());
        match tokio::time::timeout(remaining, rx).await {
            Ok(Ok(answer)) => answer,
            // Queued, so possibly sent: from here on the outcome is unknown.
            Ok(Err(_)) => Err(RegistryError::Indeterminate {
                waited_ms: waited_ms(self.clock.as_ref()),
                why: "the renewal forwarder dropped the renewal".into(),
            }),
            Err(_) => Err(RegistryError::Indeterminate {
                waited_ms: waited_ms(self.clock.as_ref()),
                why: format!("no answer from leader {leader} in time"),
            }),
        }
    }
}

/// What the batching task sends with.
#[derive(Clone)]
struct Sender {
    peers: PeerClients,
    clock: Arc<dyn Clock>,
    metrics: Arc<RegistryMetrics>,
    /// The last leader that answered `UNIMPLEMENTED` to a batch, and when.
    older_leader: Arc<Mutex<Option<(NodeId, MonoTime)>>>,
}

async fn run(sender: Sender, mut rx: mpsc::Receiver<Waiting>) {
    let in_flight = Arc::new(Semaphore::new(CALLS_IN_FLIGHT_MAX));
    // Renewals for another leader than the batch being filled (leadership moved) go next.
    let mut carried: VecDeque<Waiting> = VecDeque::new();
    loop {
        let first = match carried.pop_front() {
            Some(w) => w,
            None => match rx.recv().await {
                Some(w) => w,
                None => return,
            },
        };
        // Wait for a slot *before* draining: while we wait, the queue fills the next call.
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let mut batch = vec![first];
        while batch.len() < FORWARDED_RENEWALS_PER_CALL_MAX {
            let next = match carried.pop_front() {
                Some(w) => w,
                None => match rx.try_recv() {
                    Ok(w) => w,
                    Err(_) => break,
                },
            };
            if next.leader == batch[0].leader && next.addr == batch[0].addr {
                batch.push(next);
            } else {
                carried.push_back(next);
            }
        }
        // Answers nobody waits for any more are not sent (their callers already answered
        // "unknown", which stays true).
        batch.retain(|w| !w.answer.is_closed());
        if batch.is_empty() {
            continue;
        }
        let sender = sender.clone();
        tokio::spawn(async move {
            sender.send(batch).await;
            drop(permit);
        });
    }
}

impl Sender {
    async fn send(&self, batch: Vec<Waiting>) {
        let (leader, addr) = (batch[0].leader, batch[0].addr.clone());
        debug_assert!(batch.iter().all(|w| w.leader == leader && w.addr == addr));
        if self.leader_is_older(leader) {
            return self.send_singly(batch).await;
        }
        let now = self.clock.mono();
        // Long enough for the renewal that may wait longest; each caller keeps its own deadline.
        let timeout = batch.iter().map(|w| w.deadline.since(now)).max().unwrap_or_default().max(MIN_CALL_TIMEOUT);
        let renewals: Vec<&Renew> = batch.iter().map(|w| &w.renew).collect();
        crate::metrics::inc(&self.metrics.forwarded_renewal_calls);
        self.metrics.forwarded_renewals.fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let result: Result<Vec<Answer>, PeerCallError> =
            self.peers.call(leader, &addr, PeerRpc::ForwardRenewals, &renewals, timeout).await;
        match result {
            Ok(answers) if answers.len() == batch.len() => {
                for (waiting, answer) in batch.into_iter().zip(answers) {
                    let _ = waiting.answer.send(answer);
                }
            }
            Ok(answers) => {
                tracing::error!(
                    leader,
                    sent = batch.len(),
                    answered = answers.len(),
                    "the leader answered a renewal batch with the wrong number of answers"
                );
                let why = format!("leader {leader} answered {} renewals of {}", answers.len(), batch.len());
                self.answer_all(batch, |waited_ms| RegistryError::Indeterminate { waited_ms, why: why.clone() });
            }
            // An older release: nothing ran. Single forwards, and no batches to it for a while.
            Err(PeerCallError::Failed { status, .. }) if status.code() == tonic::Code::Unimplemented => {
                tracing::info!(
                    leader,
                    "the leader does not take renewal batches (an older release?); forwarding singly"
                );
                *self.older_leader.lock().unwrap_or_else(PoisonError::into_inner) = Some((leader, self.clock.mono()));
                self.send_singly(batch).await;
            }
            Err(e) => self.answer_all(batch, |waited_ms| forward_failure(&e, leader, waited_ms)),
        }
    }

    fn leader_is_older(&self, leader: NodeId) -> bool {
        let older = *self.older_leader.lock().unwrap_or_else(PoisonError::into_inner);
        older.is_some_and(|(id, at)| id == leader && self.clock.mono().since(at) < OLDER_LEADER_RETRY)
    }

    /// Each renewal as its own `Forward`, all at once (what releases before batches did).
    async fn send_singly(&self, batch: Vec<Waiting>) {
        let calls = batch.into_iter().map(|waiting| {
            let sender = self.clone();
            async move {
                let timeout = waiting.deadline.since(sender.clock.mono()).max(MIN_CALL_TIMEOUT);
                let proposal = Proposal::Renew(waiting.renew.clone());
                let answer = match forward_one(&sender.peers, waiting.leader, &waiting.addr, &proposal, timeout).await {
                    Ok(answer) => answer,
                    Err(e) => Err(forward_failure(&e, waiting.leader, sender.waited_ms(&waiting))),
                };
                let _ = waiting.answer.send(answer);
            }
        });
        all_in_order(calls).await;
    }

    fn answer_all(&self, batch: Vec<Waiting>, error: impl Fn(u64) -> RegistryError) {
        for waiting in batch {
            let e = error(self.waited_ms(&waiting));
            let _ = waiting.answer.send(Err(e));
        }
    }

    fn waited_ms(&self, waiting: &Waiting) -> u64 {
        self.clock.mono().since(waiting.started).as_millis() as u64
    }
}

/// The shortest time a forwarding call is given: a caller whose deadline is (nearly) past
/// still gets a call that can complete, as the single forward always did.
pub const MIN_CALL_TIMEOUT: Duration = Duration::from_millis(10);

/// Run `futures` as tasks of their own and return their outputs in their order. A task that
/// panicked yields `None` (its panic is already logged by the runtime).
pub async fn all_in_order<T: Send + 'static>(
    futures: impl IntoIterator<Item = impl std::future::Future<Output = T> + Send + 'static>,
) -> Vec<Option<T>> {
    let mut set = tokio::task::JoinSet::new();
    let mut count = 0;
    for (i, future) in futures.into_iter().enumerate() {
        set.spawn(async move { (i, future.await) });
        count += 1;
    }
    let mut outputs: Vec<Option<T>> = (0..count).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        if let Ok((i, output)) = joined {
            outputs[i] = Some(output);
        }
    }
    outputs
}

#[cfg(test)]
#[path = "forward_tests.rs"]
mod tests;
