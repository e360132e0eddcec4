//! The Raft log and vote in the node's `Db` (openraft storage v2 `RaftLogStorage`). A write is
//! reported done to openraft only after the flush made it durable: the ack of a grant depends
//! on it.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError};

use super::codec::{decode, encode};
use super::kv::{Db, KvBatch, KvError, Tree};
use crate::raft::types::{Entry, LogId, StorageError, TypeConfig, Vote};

const KEY_VOTE: &[u8] = b"vote";
const KEY_PURGED: &[u8] = b"purged";

/// Cheap to clone: trees are handles. Readers run concurrently with appends.
#[derive(Debug, Clone)]
pub struct LogStore {
    db: Db,
    /// `vote`, `purged` (the last purged log id).
    meta: Tree,
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

impl LogStore {
    pub fn open(db: &Db) -> Result<LogStore, KvError> {
        Ok(LogStore { db: db.clone(), meta: db.open_tree("raft_meta")?, log: db.open_tree("raft_log")? })
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
        self.log.apply_batch(batch).map_err(|e| StorageIOError::write_logs(&e))?;
        // Readable now; durable (and so acknowledgeable) only after the flush.
        Ok(self.flush().await.map_err(std::io::Error::other))
    }

    /// One batch removing every entry of the log in `range`.
    fn removal(&self, range: impl RangeBounds<[u8; 8]>) -> Result<KvBatch, StorageError> {
        let mut batch = KvBatch::default();
        for key in self.log.keys(range).map_err(|e| StorageIOError::write_logs(&e))? {
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
        let Some(first) = self.log.first_key().map_err(|e| StorageIOError::write_logs(&e))? else {
            return Ok(());
        };
        // A purge may name an index past the log's end (after a snapshot install far ahead of
        // a lagging follower): removing the millions of keys in between would only stall.
        let Some((end_key, _)) = self.log.last().map_err(|e| StorageIOError::write_logs(&e))? else {
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
            self.log.apply_batch(batch).map_err(|e| StorageIOError::write_logs(&e))?;
            next = match end.checked_add(1) {
                Some(next) => next,
                None => break,
            };
        }
        Ok(())
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, StorageError> {
        match self.log.last().map_err(|e| StorageIOError::read_logs(&e))? {
            None => Ok(None),
            Some((_, value)) => {
                let entry: Entry = decode(&value).map_err(|e| StorageIOError::read_logs(&e))?;
                Ok(Some(entry.log_id))
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
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

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.read_meta(KEY_PURGED)?;
        let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
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
        self.log.apply_batch(batch).map_err(|e| StorageIOError::write_logs(&e))?;
        self.flush().await.map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // The marker goes first and durably: a crash in between leaves extra entries, never a hole.
        let bytes = encode(&log_id).map_err(|e| StorageIOError::write_logs(&e))?;
        self.meta.insert(KEY_PURGED, bytes).map_err(|e| StorageIOError::write_logs(&e))?;
        self.flush().await.map_err(|e| StorageIOError::write_logs(&e))?;
        self.remove_through(log_id.index)?;
        self.flush().await.map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}
