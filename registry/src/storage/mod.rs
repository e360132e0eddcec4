//! Storage of one registry node: the data dir's identity, the Raft log and vote, and the state
//! machine, in one key-value `Db` per data dir (`kv`): sled for a real data dir, `MemDisk` in
//! the simulator. A flush of the `Db` flushes every tree of it.

// openraft dictates `StorageError` (224 bytes) as the error of every storage call; boxing it
// in our helpers would only add conversions at each trait boundary.
#![allow(clippy::result_large_err)]

pub mod codec;
pub mod kv;
pub mod log_store;
pub mod memory;
pub mod snapshot_file;
pub mod snapshot_store;
pub mod state_machine;
pub mod stated_timing;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::expiry::ExpiryTracker;
use crate::raft::types::NodeId;
pub use kv::{Db, KvError};
pub use log_store::{LogReader, LogStore};
pub use memory::{MemDisk, MemDiskError};
pub use snapshot_file::SnapshotData;
pub use state_machine::{SharedState, SmState, StateMachine};

/// The tree of the data dir's own facts: its identity, and what its node stated to leaders.
const IDENTITY_TREE: &str = "identity";
const KEY_IDENTITY: &[u8] = b"identity";
/// Stands for the data dir in the errors of a memory disk.
const MEMORY_DISK_PATH: &str = "<memory disk>";

/// Which node and cluster a data dir belongs to, written on first start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataDirIdentity {
    pub node_id: NodeId,
    pub cluster_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the sled database in {path}: {source} (another fenceflake registry may be running on this data dir; if the files are corrupt, treat this node as lost: remove it from the cluster, wipe the dir, and add it back under a new node id)")]
    Sled { path: PathBuf, source: sled::Error },
    #[error("cannot use the memory disk: {source}")]
    MemoryDisk { source: MemDiskError },
    #[error("data dir {path} belongs to node {found} of cluster {found_cluster:?}, not node {wanted}: refusing to start (pass the right --data-dir or --node-id)")]
    WrongNode { path: PathBuf, found: NodeId, found_cluster: String, wanted: NodeId },
    #[error("data dir {path} belongs to cluster {found:?}, not {wanted:?}: refusing to start (pass the right --data-dir or --cluster-id)")]
    WrongCluster { path: PathBuf, found: String, wanted: String },
    #[error("data dir {path} has an unreadable identity: {why}")]
    BadIdentity { path: PathBuf, why: String },
    #[error("state machine in {path} cannot be loaded: {source}")]
    StateMachine { path: PathBuf, source: crate::raft::types::StorageError },
    #[error("data dir {path} has its log purged through index {purged} but its state machine only through {applied:?}: the entries in between are gone (a crash during a snapshot install, under a release from before log purges waited for installs). Treat this node as lost: remove it from the cluster, wipe the dir, and add it back under a new node id")]
    PurgedPastApplied { path: PathBuf, purged: u64, applied: Option<u64> },
    #[error("the Raft log in {path} cannot be read: {source}")]
    Log { path: PathBuf, source: crate::raft::types::StorageError },
}

/// An opened data dir.
#[derive(Debug)]
pub struct OpenedStorage {
    pub log_store: LogStore,
    pub state_machine: StateMachine,
    /// Whether this data dir held Raft state before (the node rejoins with it).
    pub had_state: bool,
}

/// Open (or create) the data dir of node `node_id` in cluster `cluster_id`; refuse a dir that
/// belongs to another node or cluster. `cache_mib`: sled's page cache (`--cache-mib`; sled's own
/// default, 1 GiB, would mostly keep log entries that are about to be purged).
pub fn open(
    path: &Path,
    identity: &DataDirIdentity,
    tracker: ExpiryTracker,
    cache_mib: u64,
) -> Result<OpenedStorage, OpenError> {
    let db = sled::Config::new()
        .path(path)
        .cache_capacity(cache_mib.saturating_mul(1024 * 1024))
        .mode(sled::Mode::LowSpace)
        .open()
        .map_err(|source| OpenError::Sled { path: path.to_path_buf(), source })?;
    open_db(Db::Sled(db), path, Some(path), identity, tracker)
}

/// `open` on a simulated node's memory disk, with the same identity checks.
pub fn open_memory(
    disk: &MemDisk,
    identity: &DataDirIdentity,
    tracker: ExpiryTracker,
) -> Result<OpenedStorage, OpenError> {
    open_db(Db::Memory(disk.clone()), Path::new(MEMORY_DISK_PATH), None, identity, tracker)
}

/// `snapshot_dir`: the data dir whose `snapshots/` keeps snapshot files (`None`: in `db`).
fn open_db(
    db: Db,
    path: &Path,
    snapshot_dir: Option<&Path>,
    identity: &DataDirIdentity,
    tracker: ExpiryTracker,
) -> Result<OpenedStorage, OpenError> {
    let kv_err = |error| match error {
        KvError::Sled(source) => OpenError::Sled { path: path.to_path_buf(), source },
        KvError::Memory(source) => OpenError::MemoryDisk { source },
    };
    let meta = db.open_tree(IDENTITY_TREE).map_err(kv_err)?;
    let had_state = match meta.get(KEY_IDENTITY).map_err(kv_err)? {
        Some(bytes) => {
            let found: DataDirIdentity = codec::decode(&bytes)
                .map_err(|e| OpenError::BadIdentity { path: path.to_path_buf(), why: e.to_string() })?;
            if found.cluster_id != identity.cluster_id {
                return Err(OpenError::WrongCluster {
                    path: path.to_path_buf(),
                    found: found.cluster_id,
                    wanted: identity.cluster_id.clone(),
                });
            }
            if found.node_id != identity.node_id {
                return Err(OpenError::WrongNode {
                    path: path.to_path_buf(),
                    found: found.node_id,
                    found_cluster: found.cluster_id,
                    wanted: identity.node_id,
                });
            }
            true
        }
        None => {
            let bytes = codec::encode(identity)
                .map_err(|e| OpenError::BadIdentity { path: path.to_path_buf(), why: e.to_string() })?;
            meta.insert(KEY_IDENTITY, bytes).map_err(kv_err)?;
            db.flush_blocking().map_err(kv_err)?;
            false
        }
    };
    let state_machine = StateMachine::open(&db, snapshot_dir, tracker)
        .map_err(|source| OpenError::StateMachine { path: path.to_path_buf(), source })?;
    let log_store = LogStore::open(&db, state_machine.applied_watch()).map_err(kv_err)?;
    refuse_purged_past_applied(&log_store, &state_machine, path)?;
    Ok(OpenedStorage { log_store, state_machine, had_state })
}

/// A log purged past the state machine cannot be replayed: openraft would fail at the first
/// apply after start with an error naming missing entries; say what happened instead. No data
/// dir written under `LogStore::wait_until_applied` is in this state.
fn refuse_purged_past_applied(
    log_store: &LogStore,
    state_machine: &StateMachine,
    path: &Path,
) -> Result<(), OpenError> {
    let purged = log_store.purged().map_err(|source| OpenError::Log { path: path.to_path_buf(), source })?;
    let applied = state_machine.shared().read().last_applied;
    match purged {
        Some(purged) if applied.is_none_or(|applied| applied.index < purged.index) => {
            Err(OpenError::PurgedPastApplied {
                path: path.to_path_buf(),
                purged: purged.index,
                applied: applied.map(|id| id.index),
            })
        }
        _ => Ok(()),
    }
}

/// For a test that reopens a sled data dir its own process just dropped: a dropped sled
/// database lets its file lock go from its own threads, a moment later on a loaded machine,
/// so `open_it` is retried while the lock is held (up to 5 s), as a restarted process would
/// not need. sled 0.34 reports a held lock as `ErrorKind::Other` with this text (the OS's
/// `WouldBlock` only inside the message), so the kind alone never matches it.
#[cfg(test)]
pub(crate) fn when_unlocked<T, E: std::fmt::Display>(mut open_it: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    for _ in 0..50 {
        match open_it() {
            Err(e) if e.to_string().contains("could not acquire lock") => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            other => return other,
        }
    }
    open_it()
}

/// [`open`], through [`when_unlocked`].
#[cfg(test)]
pub(crate) fn open_when_unlocked(
    path: &Path,
    identity: &DataDirIdentity,
    tracker: ExpiryTracker,
) -> Result<OpenedStorage, OpenError> {
    when_unlocked(|| open(path, identity, tracker.clone(), crate::config::DEFAULT_CACHE_MIB))
}

#[cfg(test)]
mod tests;
