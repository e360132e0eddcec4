//! Batches lease commands into Raft entries. Every entry costs an fsync on each replica, so
//! the proposer packs whatever queued up while the previous entries were in flight into the
//! next one: under load, many renewals share one fsync; idle, a command goes out alone at once.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::clock::Clock;
use crate::error::RegistryError;
use crate::lease::{Batch, Command, Outcome};
use crate::limits::{COMMANDS_PER_ENTRY_MAX, PROPOSAL_QUEUE_MAX};
use crate::raft::types::{NodeId, PeerNode, Raft};

/// Entries in flight at once. Two keep the leader busy (one fsyncing, one filling) without
/// splitting the queue into many small entries.
const ENTRIES_IN_FLIGHT_MAX: usize = 2;

struct Pending {
    command: Command,
    reply: oneshot::Sender<Result<Outcome, RegistryError>>,
}

/// Handle to the batching task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("command", &self.command).finish()
    }
}

impl Proposer {
    /// Start the batcher. Each entry is given `timeout` to commit and apply; after that its
    /// outcome is unknown (it may still commit) and callers get `Indeterminate`.
    pub fn start(raft: Raft, clock: Arc<dyn Clock>, timeout: Duration) -> Proposer {
        let (tx, rx) = mpsc::channel(PROPOSAL_QUEUE_MAX);
        tokio::spawn(run_batcher(raft, clock, timeout, rx));
        Proposer { tx }
    }

    /// Replicate `command` and return its outcome, as applied on this (leader) node.
    pub async fn propose(&self, command: Command) -> Result<Outcome, RegistryError> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send(Pending { command, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => RegistryError::Overloaded { queued: PROPOSAL_QUEUE_MAX },
            mpsc::error::TrySendError::Closed(_) => RegistryError::Fatal("proposer stopped".into()),
        })?;
        rx.await.map_err(|_| RegistryError::Fatal("proposer dropped a proposal".into()))?
    }
}

async fn run_batcher(raft: Raft, clock: Arc<dyn Clock>, timeout: Duration, mut rx: mpsc::Receiver<Pending>) {
    let in_flight = Arc::new(Semaphore::new(ENTRIES_IN_FLIGHT_MAX));
    while let Some(first) = rx.recv().await {
        // Wait for a slot *before* draining: while we wait, the queue fills the next entry.
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let mut pending = vec![first];
        while pending.len() < COMMANDS_PER_ENTRY_MAX {
            match rx.try_recv() {
                Ok(p) => pending.push(p),
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        let leader_wall_ms = clock.wall_ms();
        tokio::spawn(async move {
            write_entry(&raft, leader_wall_ms, timeout, pending).await;
            drop(permit);
        });
    }
}

async fn write_entry(raft: &Raft, leader_wall_ms: u64, timeout: Duration, pending: Vec<Pending>) {
    let (commands, replies): (Vec<_>, Vec<_>) = pending.into_iter().map(|p| (p.command, p.reply)).unzip();
    let count = commands.len();
    let batch = Batch { leader_wall_ms, commands };
    let result = match tokio::time::timeout(timeout, raft.client_write(batch)).await {
        Err(_) => Err(RegistryError::Indeterminate {
            waited_ms: timeout.as_millis() as u64,
            why: "the entry did not commit in time (quorum lost or leader deposed?)".into(),
        }),
        Ok(Err(e)) => Err(write_error(e)),
        Ok(Ok(response)) => {
            assert_eq!(response.data.len(), count, "state machine returned one outcome per command");
            Ok(response.data)
        }
    };
    match result {
        Ok(outcomes) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// Map openraft's write errors to ours.
pub fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, PeerNode>>) -> RegistryError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => RegistryError::NotLeader { leader: f.leader_id },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => RegistryError::Membership(e.to_string()),
        RaftError::Fatal(f) => RegistryError::Fatal(f.to_string()),
    }
}
