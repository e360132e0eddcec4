//! Batches lease commands into Raft entries. Every entry costs an fsync on each replica, so
//! the proposer packs whatever queued up while the previous entries were in flight into the
//! next one: under load, many renewals share one fsync; idle, a command goes out alone at once.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::error::RegistryError;
use crate::lease::{Batch, Command, Outcome, Rules};
use crate::limits::{COMMANDS_PER_ENTRY_MAX, ENTRY_BYTES_MAX, PROPOSAL_QUEUE_MAX};
use crate::raft::types::{NodeId, PeerNode, Raft};
use crate::storage::SharedState;

/// Entries in flight at once. Two keep the leader busy (one fsyncing, one filling) without
/// splitting the queue into many small entries.
const ENTRIES_IN_FLIGHT_MAX: usize = 2;

struct Pending {
    command: Command,
    /// Encoded size: entries are filled up to [`ENTRY_BYTES_MAX`].
    bytes: usize,
    reply: oneshot::Sender<Result<Outcome, RegistryError>>,
}

/// Handle to the batching task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("command", &self.command).field("bytes", &self.bytes).finish()
    }
}

/// Where a batch's stamp (`Batch::leader_wall_ms`) comes from: the leader's wall clock, read
/// once per batch, and whether that same reading may stamp the cluster's time (the clock
/// check, `clock_watch.rs`): `Err((wall_ms, why))` when it may not.
pub trait Stamp: Send + Sync + 'static {
    fn stamp(&self) -> Result<u64, (u64, String)>;
}

impl Proposer {
    /// Start the batcher. Each entry is given `timeout` to commit and apply; after that its
    /// outcome is unknown (it may still commit) and callers get `Indeterminate`.
    /// `state` is read for the apply rules in force, which every entry is written under.
    pub fn start(raft: Raft, state: SharedState, stamp: Arc<dyn Stamp>, timeout: Duration) -> Proposer {
        let (tx, rx) = mpsc::channel(PROPOSAL_QUEUE_MAX);
        tokio::spawn(run_batcher(raft, state, stamp, timeout, rx));
        Proposer { tx }
    }

    /// Replicate `command` and return its outcome, as applied on this (leader) node.
    /// A command too large for one entry is refused here, before anything is proposed.
    pub async fn propose(&self, command: Command) -> Result<Outcome, RegistryError> {
        let bytes = encoded_len(&command)?;
        let (reply, rx) = oneshot::channel();
        self.tx.try_send(Pending { command, bytes, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => RegistryError::Overloaded { queued: PROPOSAL_QUEUE_MAX },
            mpsc::error::TrySendError::Closed(_) => RegistryError::Fatal("proposer stopped".into()),
        })?;
        rx.await.map_err(|_| RegistryError::Fatal("proposer dropped a proposal".into()))?
    }
}

async fn run_batcher(
    raft: Raft,
    state: SharedState,
    stamp: Arc<dyn Stamp>,
    timeout: Duration,
    mut rx: mpsc::Receiver<Pending>,
) {
    let in_flight = Arc::new(Semaphore::new(ENTRIES_IN_FLIGHT_MAX));
    // A command that did not fit the previous entry opens the next one.
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        // Wait for a slot *before* draining: while we wait, the queue fills the next entry.
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let mut entry = EntryFill::new(first);
        while let Ok(next) = rx.try_recv() {
            if let Some(refused) = entry.push(next) {
                carried = Some(refused);
                break;
            }
        }
        // The stamp is checked here, not only when the request was admitted: the clock may
        // have stepped while the commands waited for a slot, and the stamp becomes high-water
        // marks and `not_before`s. Refused: nothing is proposed (definite).
        // Commands whose outcome does not depend on the stamp (config, rules, served records,
        // quarantines) still go.
        let leader_wall_ms = match stamp.stamp() {
            Ok(ms) => ms,
            Err((wall_ms, why)) => {
                let (stamped, clock_free): (Vec<_>, Vec<_>) =
                    entry.pending.into_iter().partition(|p| p.command.depends_on_the_stamp());
                if !stamped.is_empty() {
                    tracing::warn!(%why, commands = stamped.len(), "not proposing: this leader's clock may not stamp the cluster's time now");
                }
                for pending in stamped {
                    let _ = pending.reply.send(Err(RegistryError::ClockUnproven { why: why.clone() }));
                }
                if clock_free.is_empty() {
                    continue;
                }
                entry.pending = clock_free;
                wall_ms
            }
        };
        // Written under the rules in force, never newer: a node of the previous release stops
        // at an entry under rules it does not know, so newer rules appear in the log only once
        // `EnableRules` raised them, which waits until every member knows them (`rules_raise.rs`).
        let rules = state.read().table.rules_in_force(Rules::CURRENT);
        let raft = raft.clone();
        tokio::spawn(async move {
            write_entry(&raft, leader_wall_ms, rules, timeout, entry.pending).await;
            drop(permit);
        });
    }
}

/// One entry being filled: at most [`COMMANDS_PER_ENTRY_MAX`] commands and
/// [`ENTRY_BYTES_MAX`] encoded bytes (the first command always fits: `propose` refused
/// any larger one).
struct EntryFill {
    pending: Vec<Pending>,
    bytes: usize,
}

impl EntryFill {
    fn new(first: Pending) -> EntryFill {
        debug_assert!(first.bytes <= ENTRY_BYTES_MAX);
        EntryFill { bytes: first.bytes, pending: vec![first] }
    }

    /// Add `next` if it fits; otherwise hand it back for the next entry.
    fn push(&mut self, next: Pending) -> Option<Pending> {
        if self.pending.len() >= COMMANDS_PER_ENTRY_MAX || self.bytes + next.bytes > ENTRY_BYTES_MAX {
            return Some(next);
        }
        self.bytes += next.bytes;
        self.pending.push(next);
        None
    }
}

/// The encoded size of `command`, or `INVALID_ARGUMENT` if it could never fit one entry.
fn encoded_len(command: &Command) -> Result<usize, RegistryError> {
    let bytes = serde_json::to_vec(command).map_err(|e| RegistryError::invalid("request", e.to_string()))?.len();
    if bytes > ENTRY_BYTES_MAX {
        return Err(RegistryError::invalid(
            "request",
            format!("{bytes} bytes once encoded is over the {ENTRY_BYTES_MAX}-byte limit of one Raft entry"),
        ));
    }
    Ok(bytes)
}

async fn write_entry(raft: &Raft, leader_wall_ms: u64, rules: Rules, timeout: Duration, pending: Vec<Pending>) {
    let (commands, replies): (Vec<_>, Vec<_>) = pending.into_iter().map(|p| (p.command, p.reply)).unzip();
    let count = commands.len();
    let batch = Batch { leader_wall_ms, commands, rules };
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

/// Map openraft's write errors to ours. Every caller checked its leadership before writing,
/// so a `ForwardToLeader` means leadership moved while the entry was in flight: openraft also
/// answers it for an appended entry that a new leader truncated here, and that entry may
/// still commit through a node that holds it. Unknown, not "nothing applied".
pub fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, PeerNode>>) -> RegistryError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => RegistryError::Indeterminate {
            waited_ms: 0,
            why: format!(
                "leadership moved while the entry was in flight (leader now: {}); it may still commit",
                f.leader_id.map_or("unknown".to_string(), |id| format!("node {id}"))
            ),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => RegistryError::Membership(e.to_string()),
        RaftError::Fatal(f) => RegistryError::Fatal(f.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::{Quarantine, WorkerId};

    fn pending(bytes: usize) -> Pending {
        let command = Command::Quarantine(Quarantine { worker_id: WorkerId(1), reason: "x".into() });
        Pending { command, bytes, reply: oneshot::channel().0 }
    }

    /// Goal: an entry never exceeds the byte budget (so it always fits a peer message), a
    /// command that does not fit opens the next entry, and the count bound still holds.
    #[test]
    fn entries_stop_at_the_byte_budget_and_the_count_bound() {
        let mut entry = EntryFill::new(pending(ENTRY_BYTES_MAX / 2));
        assert!(entry.push(pending(ENTRY_BYTES_MAX / 2)).is_none());
        let refused = entry.push(pending(1)).expect("over the byte budget");
        assert_eq!(refused.bytes, 1);
        assert_eq!(entry.bytes, ENTRY_BYTES_MAX / 2 * 2);
        let mut entry = EntryFill::new(pending(10));
        for _ in 1..COMMANDS_PER_ENTRY_MAX {
            assert!(entry.push(pending(10)).is_none());
        }
        assert!(entry.push(pending(10)).is_some(), "over the count bound");
    }

    /// Goal: a single command larger than an entry may be is refused before it is proposed,
    /// with INVALID_ARGUMENT naming the sizes.
    #[test]
    fn an_oversized_command_is_refused_before_proposing() {
        let huge = Command::Quarantine(Quarantine { worker_id: WorkerId(1), reason: "x".repeat(ENTRY_BYTES_MAX) });
        let err = encoded_len(&huge).unwrap_err();
        assert!(
            matches!(&err, RegistryError::Invalid { field, why } if field == "request" && why.contains("limit")),
            "{err:?}"
        );
        let small = Command::Quarantine(Quarantine { worker_id: WorkerId(1), reason: "x".into() });
        assert!(encoded_len(&small).is_ok_and(|n| n < 100));
    }
}
