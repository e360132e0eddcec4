//! The Raft log and vote in the node's `Db` (openraft storage v2 `RaftLogStorage`). A write is
//! reported done to openraft only after the flush made it durable: the ack of a grant depends
//! on it. A purge never passes what the state machine holds (`wait_until_applied`).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError};
use tokio::sync::watch;

use super::codec::{decode, encode};
use super::kv::{Db, KvBatch, KvError, Tree};
use crate::raft::types::{Entry, LogId, StorageError, TypeConfig, Vote};

const KEY_VOTE: &[u8] = b"vote";
const KEY_PURGED: &[u8] = b"purged";

/// The Raft log of one node, as the `Raft` that owns it writes it. Not `Clone`: openraft gets
/// [`LogReader`]s, which cannot write.
#[derive(Debug)]
pub struct LogStore {
    db: Db,
    /// `vote`, `purged` (the last purged log id).
    meta: Tree,
    reader: LogReader,
    /// The last log id the state machine has applied or installed into `db` (published by
    /// [`super::StateMachine`]; see [`LogStore::wait_until_applied`]).
    applied: watch::Receiver<Option<LogId>>,
}

/// Reads the log; runs concurrently with appends. Cheap to clone: trees are handles.
#[derive(Debug, Clone)]
pub struct LogReader {
    /// Big-endian log index (so byte order is numeric order) → encoded entry.
    log: Tree,
}

/// Log entries removed per sled batch by a purge.
pub(super) const PURGE_BATCH: u64 = 256;

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn key_index(key: &[u8]) -> Result<u64, StorageError> {
    let bytes: [u8; 8] =
        key.try_into().map_err(|_| StorageIOError::read_logs(&std::io::Error::other("log key is not 8 bytes")))?;
    Ok(u64::from_be_bytes(bytes))
}

impl LogReader {
    /// A reader of the log in `db` (also for a reader beside the running `Raft`).
    pub fn open(db: &Db) -> Result<LogReader, KvError> {
        Ok(LogReader { log: db.open_tree("raft_log")? })
    }
}

impl LogStore {
    /// The log in `db`, purged only as far as `applied` (the state machine's
    /// [`super::StateMachine::applied_watch`]) has reached.
    pub fn open(db: &Db, applied: watch::Receiver<Option<LogId>>) -> Result<LogStore, KvError> {
        Ok(LogStore { db: db.clone(), meta: db.open_tree("raft_meta")?, reader: LogReader::open(db)?, applied })
    }

    /// This store, with its purges no longer waiting for a state machine: openraft's storage
    /// suite purges logs it never applies.
    #[cfg(test)]
    pub(super) fn unlinked_from_state_machine(mut self) -> LogStore {
        let everything = openraft::LogId::new(openraft::CommittedLeaderId::new(u64::MAX, u64::MAX), u64::MAX);
        // The sender goes at once; a closed channel still shows its last value to `wait_for`.
        self.applied = watch::channel(Some(everything)).1;
        self
    }

    fn log(&self) -> &Tree {
        &self.reader.log
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        let value = self.meta.get(key).map_err(|e| StorageIOError::read(&e))?;
        value.map(|v| decode(&v)).transpose().map_err(|e| StorageIOError::read(&e).into())
    }

    /// The database this store lives in (for size metrics).
    pub fn db(&self) -> &Db {
        &self.db
    }

    async fn flush(&self) -> Result<(), KvError> {
        self.db.flush().await
    }

    /// Write `entries` in one batch and flush. The outer error is a failed write; the inner
    /// result, the flush's, is what openraft's append callback hears (an error: never acked).
    pub(super) async fn write_entries(
        &self,
        entries: impl IntoIterator<Item = Entry>,
    ) -> Result<std::io::Result<()>, StorageError> {
        let mut batch = KvBatch::default();
        for entry in entries {
            let bytes = encode(&entry).map_err(|e| StorageIOError::write_logs(&e))?;
            batch.insert(index_key(entry.log_id.index), bytes);
        }
        self.log().apply_batch(batch).map_err(|e| StorageIOError::write_logs(&e))?;
        // Readable now; durable (and so acknowledgeable) only after the flush.
        Ok(self.flush().await.map_err(std::io::Error::other))
    }

    /// One batch removing every entry of the log in `range`.
    fn removal(&self, range: impl RangeBounds<[u8; 8]>) -> Result<KvBatch, StorageError> {
        let mut batch = KvBatch::default();
        for key in self.log().keys(range).map_err(|e| StorageIOError::write_logs(&e))? {
            batch.remove(key);
        }
        Ok(batch)
    }

    /// Remove the entries from the log's first through `last`, in batches of
    /// [`PURGE_BATCH`] keys computed from their indexes (the log has no holes). Listing them
    /// instead made sled read every purged entry back into its cache at once (46.6 MB of a
    /// node's 181 MB heap peak at 65,536 leases, BENCHMARKS.md); batches let its cache evict
    /// between them. Not atomic, and need not be: the purge marker is durable first, and
    /// entries a crash leaves behind are the first ones the next purge removes.
    fn remove_through(&self, last: u64) -> Result<(), StorageError> {
        let Some(first) = self.log().first_key().map_err(|e| StorageIOError::write_logs(&e))? else {
            return Ok(());
        };
        // A purge may name an index past the log's end (after a snapshot install far ahead of
        // a lagging follower): removing the millions of keys in between would only stall.
        let Some((end_key, _)) = self.log().last().map_err(|e| StorageIOError::write_logs(&e))? else {
            return Ok(());
        };
        let last = last.min(key_index(&end_key)?);
        let mut next = key_index(&first)?;
        while next <= last {
            let end = next.saturating_add(PURGE_BATCH - 1).min(last);
            let mut batch = KvBatch::default();
            for index in next..=end {
                batch.remove(index_key(index).to_vec());
            }
            self.log().apply_batch(batch).map_err(|e| StorageIOError::write_logs(&e))?;
            next = match end.checked_add(1) {
                Some(next) => next,
                None => break,
            };
        }
        Ok(())
    }

    /// Wait until the state machine holds `log_id` in the `Db` (applied, or installed from a
    /// snapshot), so that the flush of the purge marker makes it durable too.
    ///
    /// openraft 0.9 hands a follower's snapshot install to its state-machine worker and runs
    /// the purge behind it at once, without waiting (`install_full_snapshot` in its
    /// following handler): a marker made durable before the install could, after a crash,
    /// leave a state machine at A below a marker at M with entries A+1..M gone, held by no one
    /// on this node. Raft's own order makes the wait safe: the install is already queued to the
    /// state-machine worker, which needs nothing from the core to finish it. A purge behind a
    /// snapshot this node built waits at most for the publication of the apply it was built
    /// from. If the state machine stops first (a failed install ends openraft's worker, which
    /// drops it), the purge fails rather than writing the marker.
    ///
    /// While it waits, openraft's core handles nothing else: on a follower installing a
    /// snapshot it neither answers its leader (openraft already held those answers back until
    /// the install) nor publishes metrics, and a shutdown waits for it. An install of a
    /// 65,536-ID table took 0.37-0.67 s in a one-off measurement (docs/operations.md), under
    /// the election timeout of a follower that heard its leader just before; the heartbeats
    /// queued meanwhile are handled before its election tick (with pre-vote, before the
    /// `with_raft_state` read of `pre_vote::elect_if_free`: the same queue).
    async fn wait_until_applied(&self, log_id: LogId) -> Result<(), StorageError> {
        let reached = |applied: &Option<LogId>| applied.is_some_and(|applied| applied.index >= log_id.index);
        let mut applied = self.applied.clone();
        let before = *applied.borrow();
        if reached(&before) {
            return Ok(());
        }
        tracing::info!(purge = %log_id, applied = ?before.map(|id| id.index), "log purge waits for the state machine to reach it (a snapshot install)");
        let outcome = applied.wait_for(reached).await.map(drop);
        match outcome {
            Ok(()) => {
                tracing::info!(purge = %log_id, "the state machine reached the purge; purging the log");
                Ok(())
            }
            Err(_) => {
                let why = format!(
                    "the state machine stopped before it reached log index {} (a failed snapshot install?): the log is not purged past it",
                    log_id.index
                );
                Err(StorageIOError::write_logs(&std::io::Error::other(why)).into())
            }
        }
    }

    /// The last purged log id (the purge marker).
    pub(super) fn purged(&self) -> Result<Option<LogId>, StorageError> {
        self.read_meta(KEY_PURGED)
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, StorageError> {
        match self.log().last().map_err(|e| StorageIOError::read_logs(&e))? {
            None => Ok(None),
            Some((_, value)) => {
                let entry: Entry = decode(&value).map_err(|e| StorageIOError::read_logs(&e))?;
                Ok(Some(entry.log_id))
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => index_key(*i),
            Bound::Excluded(i) => index_key(i.saturating_add(1)),
            Bound::Unbounded => index_key(0),
        };
        let pairs = match range.end_bound() {
            Bound::Included(i) => self.log.range(start..=index_key(*i)),
            Bound::Excluded(i) => self.log.range(start..index_key(*i)),
            Bound::Unbounded => self.log.range(start..),
        };
        let mut entries = Vec::new();
        for (key, value) in pairs.map_err(|e| StorageIOError::read_logs(&e))? {
            let entry: Entry = decode(&value).map_err(|e| StorageIOError::read_logs(&e))?;
            let index = key_index(&key)?;
            assert_eq!(entry.log_id.index, index, "log entry stored under the wrong index");
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.reader.try_get_log_entries(range).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.purged()?;
        let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.reader.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let bytes = encode(vote).map_err(|e| StorageIOError::write_vote(&e))?;
        self.meta.insert(KEY_VOTE, bytes).map_err(|e| StorageIOError::write_vote(&e))?;
        // openraft replies to the VoteRequest right after this returns: it must be on disk.
        self.flush().await.map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(KEY_VOTE)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let flushed = self.write_entries(entries).await?;
        callback.log_io_completed(flushed);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let batch = self.removal(index_key(log_id.index)..)?;
        self.log().apply_batch(batch).map_err(|e| StorageIOError::write_logs(&e))?;
        self.flush().await.map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.wait_until_applied(log_id).await?;
        // The marker goes first and durably: a crash in between leaves extra entries, never a hole.
        let bytes = encode(&log_id).map_err(|e| StorageIOError::write_logs(&e))?;
        self.meta.insert(KEY_PURGED, bytes).map_err(|e| StorageIOError::write_logs(&e))?;
        self.flush().await.map_err(|e| StorageIOError::write_logs(&e))?;
        self.remove_through(log_id.index)?;
        self.flush().await.map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}
