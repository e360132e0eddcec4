//! The replicated state machine (openraft storage v2 `RaftStateMachine`): applies batches of
//! lease commands to the `LeaseTable`, persists what changed to the `Db` in one atomic batch, and
//! builds and installs snapshots.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::codec::{decode, encode};
use super::kv::{Db, KvBatch, Tree};
use super::snapshot_store::{SnapshotData, SnapshotStore};
use crate::expiry::ExpiryTracker;
use crate::lease::{Command, LeaseTable, LogPos, Outcome, Rejection, Rules, WorkerId};
use crate::raft::types::{Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

const KEY_APPLIED: &[u8] = b"applied";
const KEY_GLOBALS: &[u8] = b"globals";
const KEY_AUDIT: &[u8] = b"audit";
/// Prefix of per-worker-ID records: `r` + worker ID (big-endian u32).
const RECORD_PREFIX: u8 = b'r';

fn record_key(worker_id: WorkerId) -> [u8; 5] {
    let [a, b, c, d] = worker_id.0.to_be_bytes();
    [RECORD_PREFIX, a, b, c, d]
}

/// Everything applied so far. Readers (the gRPC service) take short read locks; no lock is
/// ever held across an `.await`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SmState {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    pub table: LeaseTable,
}

/// Shared, read-mostly handle on the applied state.
#[derive(Debug, Clone, Default)]
pub struct SharedState(Arc<RwLock<SmState>>);

impl SharedState {
    pub fn read(&self) -> RwLockReadGuard<'_, SmState> {
        // Every writer replaces whole values, so a panicked writer leaves no torn state behind.
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, SmState> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The applied position, the table's globals, its audit log and one key per worker ID live in
/// the `sm` tree. Each apply writes the position and only what it changed in one atomic
/// `apply_batch`, so after a crash position and data always agree.
#[derive(Debug)]
pub struct StateMachine {
    tree: Tree,
    state: SharedState,
    pub(super) snapshots: SnapshotStore,
    tracker: ExpiryTracker,
    snapshots_built: u64,
    /// The last log id applied or installed into the `Db`, for the log store's purge; closed
    /// when this state machine is dropped (openraft's worker ends on a storage error). The one
    /// sender: a `StateMachine` must never be `Clone`, or a purge waiting on a failed install
    /// would hang instead of failing.
    applied: watch::Sender<Option<LogId>>,
}

/// What one apply call changed, so only that is written, and which worker IDs the expiry
/// tracker must now count as just renewed.
#[derive(Debug, Default)]
struct Changes {
    records: BTreeSet<WorkerId>,
    audit: bool,
    renewed: BTreeSet<WorkerId>,
}

impl Changes {
    fn note(&mut self, table: &LeaseTable, command: &Command, outcome: &Outcome) {
        if let Some(worker_id) = command.worker_id() {
            self.records.insert(worker_id);
        }
        if let Outcome::Restored { .. } = outcome {
            self.records.extend(table.records().map(|(w, _)| w));
            self.audit = true;
        }
        if let Outcome::Granted(grant) = outcome {
            // A retried Acquire returns (and renews) the ID the holder already has.
            self.records.insert(grant.worker_id);
        }
        self.audit |= matches!(outcome, Outcome::CanaryHit { .. }) || matches!(command, Command::Quarantine(_));
        match outcome {
            Outcome::Granted(g) | Outcome::Renewed(g) => {
                self.renewed.insert(g.worker_id);
            }
            // The embargo runs from here on every node's expiry clock.
            Outcome::Restored { .. } => self.renewed.extend(table.records().map(|(w, _)| w)),
            _ => {}
        }
    }
}

/// An entry written by a leader of a newer release, under apply rules this release does not
/// know, stops this node before anything is applied: applying it under older rules could give
/// other outcomes than the other replicas (a diverged state machine). Upgrade this node.
fn refuse_newer_rules(entries: &[Entry]) -> Result<(), StorageError> {
    let newer = entries.iter().find_map(|entry| match &entry.payload {
        EntryPayload::Normal(batch) => {
            let raised = batch.commands.iter().filter_map(|c| match c {
                Command::EnableRules(rules) => Some(*rules),
                _ => None,
            });
            let newest = raised.chain([batch.rules]).max().unwrap_or(batch.rules);
            (newest > Rules::CURRENT).then_some((entry.log_id, newest))
        }
        _ => None,
    });
    let Some((log_id, rules)) = newer else { return Ok(()) };
    let why = format!(
        "log entry {log_id} was written under apply rules {}, newer than this release's {}: upgrade this node \
         to the release the leader runs (it stops rather than apply the entry differently)",
        rules.0,
        Rules::CURRENT.0
    );
    tracing::error!(%log_id, rules = rules.0, known = Rules::CURRENT.0, "{why}");
    Err(StorageIOError::apply(log_id, &std::io::Error::other(why)).into())
}

/// Refuse a snapshot whose apply rules were raised past what this release knows: it would
/// install it and then apply the entries after it under older rules (a release from before
/// this check installs it and stops at the first such entry instead).
fn refuse_newer_snapshot(state: &SmState, meta: &SnapshotMeta) -> Result<(), StorageError> {
    let raised = state.table.globals().enabled_rules;
    if raised <= Rules::CURRENT {
        return Ok(());
    }
    let why = format!(
        "snapshot {} was taken under apply rules {}, newer than this release's {}: upgrade this node to the \
         release the leader runs (it stops rather than apply later entries differently)",
        meta.snapshot_id,
        raised.0,
        Rules::CURRENT.0
    );
    tracing::error!(snapshot = %meta.snapshot_id, rules = raised.0, known = Rules::CURRENT.0, "{why}");
    Err(StorageIOError::read_snapshot(Some(meta.signature()), &std::io::Error::other(why)).into())
}

/// Apply one log entry to the state; the outcomes of its commands, in order.
fn apply_entry(state: &mut SmState, entry: Entry, changes: &mut Changes) -> Vec<Outcome> {
    state.last_applied = Some(entry.log_id);
    match entry.payload {
        EntryPayload::Blank => Vec::new(),
        EntryPayload::Membership(membership) => {
            state.membership = StoredMembership::new(Some(entry.log_id), membership);
            Vec::new()
        }
        EntryPayload::Normal(batch) => {
            let index = entry.log_id.index;
            let apply_one = |(slot, command): (usize, &Command)| {
                // Honest leaders put at most COMMANDS_PER_ENTRY_MAX commands in an entry; a
                // longer one (forged, or corrupt) is refused command by command, never a panic
                // that every replica would repeat on every restart.
                let Some(pos) = LogPos::checked(index, slot) else {
                    return Outcome::Rejected(Rejection::BatchTooLarge { slot });
                };
                // A grant may change a second record: the ID its holder held before, given up by
                // a new incarnation that takes another (it must be written too, or a restart
                // reloads it still held).
                let held_before = match command {
                    Command::Grant { holder, owner, .. } => state.table.held_by(owner.as_deref(), holder),
                    _ => None,
                };
                let outcome = state.table.apply_under(batch.rules, pos, batch.leader_wall_ms, command);
                changes.note(&state.table, command, &outcome);
                changes.records.extend(held_before);
                outcome
            };
            batch.commands.iter().enumerate().map(apply_one).collect()
        }
    }
}

fn load_table(tree: &Tree) -> Result<LeaseTable, StorageError> {
    let err = |e| StorageIOError::read_state_machine(&e);
    let globals = match tree.get(KEY_GLOBALS).map_err(|e| StorageIOError::read_state_machine(&e))? {
        Some(bytes) => decode(&bytes).map_err(err)?,
        None => return Ok(LeaseTable::default()),
    };
    let audit = match tree.get(KEY_AUDIT).map_err(|e| StorageIOError::read_state_machine(&e))? {
        Some(bytes) => decode(&bytes).map_err(err)?,
        None => Vec::new(),
    };
    let mut records = Vec::new();
    for (key, value) in tree.scan_prefix(&[RECORD_PREFIX]).map_err(|e| StorageIOError::read_state_machine(&e))? {
        let id: [u8; 4] = key[1..]
            .try_into()
            .map_err(|_| StorageIOError::read_state_machine(&std::io::Error::other("bad record key")))?;
        records.push((WorkerId(u32::from_be_bytes(id)), decode(&value).map_err(err)?));
    }
    Ok(LeaseTable::from_parts(globals, records, audit))
}

#[derive(Debug, Serialize, Deserialize)]
struct AppliedPosition {
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

impl StateMachine {
    /// The state machine kept in `db`, its snapshots in `data_dir` (`None`: in `db`, which is
    /// how a memory disk keeps them).
    pub fn open(db: &Db, data_dir: Option<&Path>, tracker: ExpiryTracker) -> Result<StateMachine, StorageError> {
        let tree = db.open_tree("sm").map_err(|e| StorageIOError::read_state_machine(&e))?;
        let snapshots = match data_dir {
            Some(dir) => SnapshotStore::in_dir(db, &tree, dir)?,
            None => SnapshotStore::in_tree(db, &tree)?,
        };
        let mut state = SmState::default();
        if let Some(bytes) = tree.get(KEY_APPLIED).map_err(|e| StorageIOError::read_state_machine(&e))? {
            let pos: AppliedPosition = decode(&bytes).map_err(|e| StorageIOError::read_state_machine(&e))?;
            state.last_applied = pos.last_applied;
            state.membership = pos.membership;
        }
        state.table = load_table(&tree)?;
        let (applied, _) = watch::channel(state.last_applied);
        Ok(StateMachine {
            tree,
            state: SharedState(Arc::new(RwLock::new(state))),
            snapshots,
            tracker,
            snapshots_built: 0,
            applied,
        })
    }

    pub fn shared(&self) -> SharedState {
        self.state.clone()
    }

    /// How far this state machine has applied or installed into the `Db` (not necessarily
    /// flushed: the next flush of the `Db` makes it durable).
    pub fn applied_watch(&self) -> watch::Receiver<Option<LogId>> {
        self.applied.subscribe()
    }

    fn persist(&self, state: &SmState, changed: &Changes) -> Result<(), StorageError> {
        let err = |e| StorageIOError::write_state_machine(&e);
        let position = AppliedPosition { last_applied: state.last_applied, membership: state.membership.clone() };
        let mut batch = KvBatch::default();
        batch.insert(KEY_APPLIED, encode(&position).map_err(err)?);
        batch.insert(KEY_GLOBALS, encode(&state.table.globals()).map_err(err)?);
        for worker_id in &changed.records {
            if let Some(record) = state.table.record(*worker_id) {
                batch.insert(record_key(*worker_id), encode(record).map_err(err)?);
            }
        }
        if changed.audit {
            let audit: Vec<_> = state.table.audit().collect();
            batch.insert(KEY_AUDIT, encode(&audit).map_err(err)?);
        }
        // No flush here: the log entries being applied are already durable on a quorum, and a
        // crash that loses this batch only makes openraft re-apply them (apply is deterministic).
        // The next log append or snapshot flushes the whole Db anyway.
        self.tree.apply_batch(batch).map_err(|e| StorageIOError::write_state_machine(&e).into())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachineSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let state = self.state.read();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Outcome>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        refuse_newer_rules(&entries)?;
        let mut changes = Changes::default();
        let (responses, last_applied) = {
            let mut state = self.state.write();
            // One response per entry, in order: openraft matches them to waiting clients by
            // position and only debug-asserts the count.
            let responses: Vec<_> =
                entries.into_iter().map(|entry| apply_entry(&mut state, entry, &mut changes)).collect();
            self.persist(&state, &changes)?;
            (responses, state.last_applied)
        };
        self.applied.send_replace(last_applied);
        for worker_id in changes.renewed {
            self.tracker.note_renewal(worker_id);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Counted here, not in the builder: each builder is a new value, so a count kept there
        // started from the same number every time.
        self.snapshots_built += 1;
        StateMachineSnapshotBuilder {
            snapshots: self.snapshots.clone(),
            state: self.state.clone(),
            counter: self.snapshots_built,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError> {
        Ok(Box::new(self.snapshots.begin_receiving().await?))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Box<SnapshotData>) -> Result<(), StorageError> {
        let signature = Some(meta.signature());
        let (mut state, received) = self.snapshots.read_received(meta, *snapshot).await?;
        refuse_newer_snapshot(&state, meta)?;
        state.table.reindex();
        state.last_applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        // Replace everything in one atomic batch: no key of the old state survives.
        let mut batch = KvBatch::default();
        for key in self.tree.keys::<&[u8], _>(..).map_err(|e| StorageIOError::write_snapshot(signature.clone(), &e))? {
            batch.remove(key);
        }
        let position = AppliedPosition { last_applied: state.last_applied, membership: state.membership.clone() };
        let encode_err = |e| StorageIOError::write_snapshot(signature.clone(), &e);
        batch.insert(KEY_APPLIED, encode(&position).map_err(encode_err)?);
        batch.insert(KEY_GLOBALS, encode(&state.table.globals()).map_err(encode_err)?);
        let audit: Vec<_> = state.table.audit().collect();
        batch.insert(KEY_AUDIT, encode(&audit).map_err(encode_err)?);
        for (worker_id, record) in state.table.records() {
            batch.insert(record_key(worker_id), encode(record).map_err(encode_err)?);
        }
        self.snapshots.install(meta, received, state.table.rules_in_force(Rules::CURRENT), batch).await?;
        *self.state.write() = state;
        // Durable already (the install flushed): the log purge behind it may go on.
        self.applied.send_replace(meta.last_log_id);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        self.snapshots.current().await
    }
}

/// Builds snapshots from a copy of the shared state, concurrently with later applies.
#[derive(Debug)]
pub struct StateMachineSnapshotBuilder {
    pub(super) snapshots: SnapshotStore,
    state: SharedState,
    counter: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        // A copy, so that applies go on while it is encoded (encoding under the read lock
        // stalled applies for the whole encode: ~250 ms at 65,536 IDs, long enough for an
        // election; BENCHMARKS.md "Memory at 65,536 leases"). It shares the records.
        let state = {
            let applied = self.state.read();
            SmState {
                last_applied: applied.last_applied,
                membership: applied.membership.clone(),
                table: applied.table.copy_to_write(),
            }
        };
        let snapshot_id = match state.last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id, id.index, self.counter),
            None => format!("empty-{}", self.counter),
        };
        let meta =
            SnapshotMeta { last_log_id: state.last_applied, last_membership: state.membership.clone(), snapshot_id };
        let built = self.snapshots.store_built(meta, state).await?;
        // What a snapshot costs grows with the table (65,536 IDs: ~17.7 MB): the operator's
        // measure of it, once per `--snapshot-logs` entries. (No duration: the storage reads no
        // clock; the line's timestamp against openraft's build request shows it.)
        tracing::info!(snapshot = %built.snapshot.meta.snapshot_id, bytes = built.bytes, "snapshot built and stored");
        Ok(built.snapshot)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Goal (issue 11, review): a snapshot raised past this release's apply rules is refused on
    /// install, saying to upgrade, rather than installed and followed by entries applied under
    /// older rules; one at this release's rules installs.
    #[test]
    fn a_snapshot_under_newer_rules_is_refused() {
        let meta = SnapshotMeta { snapshot_id: "9-1-1".into(), ..SnapshotMeta::default() };
        let mut state = SmState::default();
        state.table.apply(LogPos::new(1, 0), 0, &Command::EnableRules(Rules::CURRENT));
        assert!(refuse_newer_snapshot(&state, &meta).is_ok());
        state.table.apply(LogPos::new(2, 0), 0, &Command::EnableRules(Rules(Rules::CURRENT.0 + 1)));
        let refused = refuse_newer_snapshot(&state, &meta).unwrap_err().to_string();
        assert!(refused.contains("upgrade this node"), "{refused}");
    }
}
