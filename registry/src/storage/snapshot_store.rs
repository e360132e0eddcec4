//! Where a node keeps its latest snapshot.
//!
//! On a data dir the snapshot is a file in `<data dir>/snapshots/`: built by writing the table
//! straight into it, sent from it in chunks, received into a file of its own. The `sm` tree
//! keeps its metadata, the file's name and its length and CRC32 ([`KEY_SNAPSHOT_FILE`]; a corrupt file is never sent). Kept as one sled value
//! (before), a 65,536-ID snapshot (17.7 MB) was held about five times over in memory while it
//! was stored (the encoded bytes, the framed value, sled's copy and blob buffer), which set
//! every node's peak memory (BENCHMARKS.md, "Memory at 65,536 leases"). The bytes of a snapshot
//! are the same as before (format byte, then the JSON of the applied state), so nodes of
//! either release exchange them.
//!
//! On the simulator's memory disk the snapshot stays one value of the `sm` tree
//! ([`KEY_SNAPSHOT`]), so that `MemDisk`'s crash and fsync-error semantics cover it.
//!
//! Crash safety of the file: it is written under a temporary name, fsynced, renamed into place
//! and its directory fsynced before the tree names it, and the file it replaces is removed only
//! after the tree's flush; at open, every file the tree does not name is removed (what a crash
//! left of a build or a receive).

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::StorageIOError;
use serde::{Deserialize, Serialize};

use super::codec::{decode, decode_framed, encode, encode_framed, is_framed, CodecError};
use super::kv::{Db, KvBatch, Tree};
pub use super::snapshot_file::SnapshotData;
use super::snapshot_file::{self as file, blocking, Checksum, FileError, Unkept};
use super::state_machine::SmState;
use crate::lease::Rules;
use crate::raft::types::{LogId, Snapshot, SnapshotMeta, StorageError};

/// The snapshot itself, in the tree (memory disk; data dirs written before snapshot files).
const KEY_SNAPSHOT: &[u8] = b"snapshot";
/// The snapshot's metadata, file name and checksum (data dir).
const KEY_SNAPSHOT_FILE: &[u8] = b"snapshot-file";
/// The snapshot directory, inside the data dir.
const SNAPSHOT_DIR: &str = "snapshots";
/// A snapshot file the tree may name: `<file number>.snap`.
const KEPT_SUFFIX: &str = ".snap";

/// What the tree keeps of a snapshot file.
#[derive(Debug, Serialize, Deserialize)]
struct FileRecord {
    meta: SnapshotMeta,
    file: String,
    checksum: Checksum,
}

/// The snapshot the store holds now, and the next free file number.
#[derive(Debug, Default)]
struct Current {
    last_log_id: Option<LogId>,
    file: Option<String>,
    next_file: u64,
}

impl Current {
    fn take_number(&mut self) -> u64 {
        let number = self.next_file;
        self.next_file = number.saturating_add(1);
        number
    }
}

/// A received snapshot, decoded, for [`SnapshotStore::install`] to keep.
#[derive(Debug)]
pub enum Received {
    Memory(Vec<u8>),
    File { path: Unkept, checksum: Checksum },
}

/// A built snapshot: what openraft gets back, and its size (for the log line).
#[derive(Debug)]
pub struct Built {
    pub snapshot: Snapshot,
    pub bytes: u64,
}

/// The latest snapshot of one node, in its `sm` tree or in files beside it.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    tree: Tree,
    db: Db,
    /// `None`: in the tree (memory disk).
    dir: Option<PathBuf>,
    /// Held from writing a snapshot into place until the tree names it, so that a build and a
    /// receive finishing together cannot name an older snapshot after a newer one.
    current: Arc<tokio::sync::Mutex<Current>>,
}

fn io_read(e: &(impl std::error::Error + 'static)) -> StorageError {
    StorageIOError::read_snapshot(None, e).into()
}

fn io_read_of(meta: &SnapshotMeta, e: &(impl std::error::Error + 'static)) -> StorageError {
    StorageIOError::read_snapshot(Some(meta.signature()), e).into()
}

fn io_write(meta: Option<&SnapshotMeta>, e: &(impl std::error::Error + 'static)) -> StorageError {
    StorageIOError::write_snapshot(meta.map(SnapshotMeta::signature), e).into()
}

/// The latest snapshot as the tree keeps it (memory disk): its metadata, then its data byte
/// for byte ([`encode_framed`]) once every member runs a release that reads frames (apply rules
/// [`Rules::GRANT_WINDOWS`] in force, past which a node is not rolled back); before, as
/// releases before the frame stored it, and still read: JSON, the data an array of numbers.
fn encode_stored_snapshot(meta: &SnapshotMeta, data: &[u8], rules: Rules) -> Result<Vec<u8>, CodecError> {
    #[derive(Serialize)]
    struct Unframed<'a> {
        meta: &'a SnapshotMeta,
        data: &'a [u8],
    }
    if rules >= Rules::GRANT_WINDOWS {
        encode_framed(meta, data)
    } else {
        encode(&Unframed { meta, data })
    }
}

fn decode_stored_snapshot(bytes: &[u8]) -> Result<(SnapshotMeta, Vec<u8>), CodecError> {
    #[derive(Deserialize)]
    struct Unframed {
        meta: SnapshotMeta,
        data: Vec<u8>,
    }
    if is_framed(bytes) {
        return decode_framed(bytes);
    }
    let Unframed { meta, data } = decode(bytes)?;
    Ok((meta, data))
}

fn file_number(name: &str) -> Option<u64> {
    name.split_once('.').and_then(|(number, _)| number.parse().ok())
}

impl SnapshotStore {
    /// The store of a memory disk: the snapshot is a value of `tree`.
    pub fn in_tree(db: &Db, tree: &Tree) -> Result<SnapshotStore, StorageError> {
        let last_log_id = match tree.get(KEY_SNAPSHOT).map_err(|e| io_read(&e))? {
            Some(bytes) => decode_stored_snapshot(&bytes).map_err(|e| io_read(&e))?.0.last_log_id,
            None => None,
        };
        let current = Current { last_log_id, ..Current::default() };
        Ok(SnapshotStore { tree: tree.clone(), db: db.clone(), dir: None, current: Arc::new(current.into()) })
    }

    /// The store of data dir `data_dir`: snapshot files in its `snapshots/`. Checks the named
    /// file, removes what a crash left there, and moves a snapshot an older release kept in the
    /// tree into a file.
    pub fn in_dir(db: &Db, tree: &Tree, data_dir: &Path) -> Result<SnapshotStore, StorageError> {
        let dir = data_dir.join(SNAPSHOT_DIR);
        std::fs::create_dir_all(&dir)
            .map_err(|source| io_write(None, &FileError::Io { op: "create", path: dir.clone(), source }))?;
        let record = Self::checked_record(tree, &dir)?;
        let mut next_file = 0u64;
        let entries = std::fs::read_dir(&dir)
            .map_err(|source| io_read(&FileError::Io { op: "list", path: dir.clone(), source }))?;
        for entry in entries {
            let entry = entry.map_err(|source| io_read(&FileError::Io { op: "list", path: dir.clone(), source }))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            next_file = next_file.max(file_number(&name).map_or(0, |n| n.saturating_add(1)));
            if record.as_ref().is_none_or(|kept| kept.file != name) {
                // A build or receive a crash cut short, or a file renamed into place whose
                // naming never became durable.
                let path = entry.path();
                std::fs::remove_file(&path)
                    .map_err(|source| io_write(None, &FileError::Io { op: "remove leftover", path, source }))?;
            }
        }
        let current = Current {
            last_log_id: record.as_ref().and_then(|kept| kept.meta.last_log_id),
            file: record.map(|kept| kept.file),
            next_file,
        };
        let store =
            SnapshotStore { tree: tree.clone(), db: db.clone(), dir: Some(dir), current: Arc::new(current.into()) };
        store.move_tree_snapshot_to_file()?;
        Ok(store)
    }

    /// The tree's record of the snapshot file, if the file is there and matches it. A missing
    /// or corrupt file is forgotten (and left to the cleanup to remove): the snapshot is derived
    /// data, and openraft builds a new one at start when the log behind it was purged.
    fn checked_record(tree: &Tree, dir: &Path) -> Result<Option<FileRecord>, StorageError> {
        let Some(bytes) = tree.get(KEY_SNAPSHOT_FILE).map_err(|e| io_read(&e))? else { return Ok(None) };
        let record: FileRecord = decode(&bytes).map_err(|e| io_read(&e))?;
        let problem = match file::open_checked(&dir.join(&record.file), record.checksum) {
            Ok(_) => return Ok(Some(record)),
            Err(e @ FileError::Corrupt { .. }) => e,
            Err(e) if e.is_not_found() => e,
            Err(e) => return Err(io_read_of(&record.meta, &e)),
        };
        tracing::error!(snapshot = %record.meta.snapshot_id, error = %problem, "forgetting the data dir's snapshot; a new one is built from the state machine (at start if the log behind it was purged, else at the next --snapshot-logs)");
        let mut batch = KvBatch::default();
        batch.remove(KEY_SNAPSHOT_FILE);
        tree.apply_batch(batch).map_err(|e| io_write(None, &e))?;
        Ok(None)
    }

    /// A data dir from before snapshot files keeps its snapshot in the tree: write it to a file
    /// (once, at the first start of this release) so that there is one place to read it from.
    fn move_tree_snapshot_to_file(&self) -> Result<(), StorageError> {
        let (Some(dir), Some(bytes)) = (&self.dir, self.tree.get(KEY_SNAPSHOT).map_err(|e| io_read(&e))?) else {
            return Ok(());
        };
        let (meta, data) = decode_stored_snapshot(&bytes).map_err(|e| io_read(&e))?;
        drop(bytes);
        let mut current = self.current.try_lock().map_err(|e| io_write(Some(&meta), &e))?;
        let number = current.take_number();
        let name = format!("{number}{KEPT_SUFFIX}");
        let checksum = file::write_bytes_kept(&data, &dir.join(format!("{number}.building")), &dir.join(&name))
            .map_err(|e| io_write(Some(&meta), &e))?;
        let mut batch = KvBatch::default();
        batch.remove(KEY_SNAPSHOT);
        self.name_file(&mut batch, &meta, name.clone(), checksum)?;
        self.tree.apply_batch(batch).map_err(|e| io_write(Some(&meta), &e))?;
        self.db.flush_blocking().map_err(|e| io_write(Some(&meta), &e))?;
        tracing::info!(snapshot = %meta.snapshot_id, file = %dir.join(&name).display(), "moved the snapshot an older release kept in the database into its own file");
        self.forget_replaced_now(&mut current, &meta, Some(name));
        Ok(())
    }

    /// The snapshot kept now, checked against its recorded checksum, ready to be read from its
    /// start.
    pub async fn current(&self) -> Result<Option<Snapshot>, StorageError> {
        let Some(dir) = &self.dir else {
            let Some(bytes) = self.tree.get(KEY_SNAPSHOT).map_err(|e| io_read(&e))? else { return Ok(None) };
            let (meta, data) = decode_stored_snapshot(&bytes).map_err(|e| io_read(&e))?;
            return Ok(Some(Snapshot { meta, snapshot: Box::new(SnapshotData::Memory(Cursor::new(data))) }));
        };
        // Under the lock: a build may replace (and remove) the named file meanwhile; once open,
        // the file stays readable however long openraft takes to send it.
        let _current = self.current.lock().await;
        let Some(bytes) = self.tree.get(KEY_SNAPSHOT_FILE).map_err(|e| io_read(&e))? else { return Ok(None) };
        let FileRecord { meta, file: name, checksum } = decode(&bytes).map_err(|e| io_read(&e))?;
        let path = dir.join(name);
        // A corrupt file is an error here, not something to send: the node stops, and at the
        // next start forgets the file and builds a new snapshot.
        let file = blocking(move || file::open_checked(&path, checksum)).await.map_err(|e| io_read_of(&meta, &e))?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(SnapshotData::File(tokio::fs::File::from_std(file))) }))
    }

    /// Write `state` as the snapshot `meta` and keep it, unless a newer one was kept meanwhile.
    pub async fn store_built(&self, meta: SnapshotMeta, state: SmState) -> Result<Built, StorageError> {
        let Some(dir) = &self.dir else { return self.store_built_in_tree(meta, state).await };
        let number = self.current.lock().await.take_number();
        let name = format!("{number}{KEPT_SUFFIX}");
        let (building, path) = (dir.join(format!("{number}.building")), dir.join(&name));
        let kept = path.clone();
        // Encoding a large table takes long (65,536 IDs: ~250 ms): off the async workers.
        let (checksum, file) = blocking(move || {
            let checksum = file::write_kept(&state, &building, &kept)?;
            drop(state);
            // Opened before it may be replaced: the returned snapshot reads this file either way.
            let file = std::fs::File::open(&kept).map_err(|source| FileError::Io { op: "open", path: kept, source })?;
            Ok((checksum, file))
        })
        .await
        .map_err(|e| io_write(Some(&meta), &e))?;
        let mut current = self.current.lock().await;
        if meta.last_log_id >= current.last_log_id {
            let mut batch = KvBatch::default();
            self.name_file(&mut batch, &meta, name.clone(), checksum)?;
            self.tree.apply_batch(batch).map_err(|e| io_write(Some(&meta), &e))?;
            // openraft purges the log behind a snapshot it built next: it must be on disk first.
            self.db.flush().await.map_err(|e| io_write(Some(&meta), &e))?;
            self.forget_replaced(&mut current, &meta, Some(name)).await;
        } else {
            tracing::info!(snapshot = %meta.snapshot_id, "a newer snapshot was kept while this one was built; dropping its file");
            remove_quietly(path).await;
        }
        let snapshot = Snapshot { meta, snapshot: Box::new(SnapshotData::File(tokio::fs::File::from_std(file))) };
        Ok(Built { snapshot, bytes: checksum.bytes })
    }

    async fn store_built_in_tree(&self, meta: SnapshotMeta, state: SmState) -> Result<Built, StorageError> {
        let mut data = Vec::new();
        file::write_state(&mut data, &state).map_err(|e| io_write(Some(&meta), &e))?;
        let rules = state.table.rules_in_force(Rules::CURRENT);
        drop(state);
        let stored = encode_stored_snapshot(&meta, &data, rules).map_err(|e| io_write(Some(&meta), &e))?;
        let mut current = self.current.lock().await;
        if meta.last_log_id >= current.last_log_id {
            self.tree.insert(KEY_SNAPSHOT, stored).map_err(|e| io_write(Some(&meta), &e))?;
            // openraft purges the log behind a snapshot it built next: it must be on disk first.
            self.db.flush().await.map_err(|e| io_write(Some(&meta), &e))?;
            current.last_log_id = meta.last_log_id;
        }
        let bytes = data.len() as u64;
        Ok(Built { snapshot: Snapshot { meta, snapshot: Box::new(SnapshotData::Memory(Cursor::new(data))) }, bytes })
    }

    /// A new, empty [`SnapshotData`] for a snapshot about to be received (in a data dir, a new
    /// file that is removed if openraft drops it unkept).
    pub async fn begin_receiving(&self) -> Result<SnapshotData, StorageError> {
        let Some(dir) = &self.dir else { return Ok(SnapshotData::Memory(Cursor::new(Vec::new()))) };
        let (file, path) = self.new_receiving(dir).await?;
        Ok(SnapshotData::Receiving { file, path })
    }

    async fn new_receiving(&self, dir: &Path) -> Result<(tokio::fs::File, Unkept), StorageError> {
        let path = dir.join(format!("{}.receiving", self.current.lock().await.take_number()));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|source| io_write(None, &FileError::Io { op: "create", path: path.clone(), source }))?;
        Ok((file, Unkept::new(path)))
    }

    /// The state a received snapshot holds. Data that did not come through
    /// [`SnapshotStore::begin_receiving`] (openraft's storage suite hands one store's snapshot to
    /// another) is first copied to where this store keeps what it receives.
    pub async fn read_received(
        &self,
        meta: &SnapshotMeta,
        data: SnapshotData,
    ) -> Result<(SmState, Received), StorageError> {
        let (file, path) = match (data, &self.dir) {
            (SnapshotData::Receiving { file, path }, Some(_)) => (file.into_std().await, path),
            (SnapshotData::Memory(cursor), None) => {
                let bytes = cursor.into_inner();
                let state = decode(&bytes).map_err(|e| io_read_of(meta, &e))?;
                return Ok((state, Received::Memory(bytes)));
            }
            (SnapshotData::File(file) | SnapshotData::Receiving { file, .. }, None) => {
                let mut file = file.into_std().await;
                let bytes = blocking(move || file::read_all(&mut file)).await.map_err(|e| io_read_of(meta, &e))?;
                return Box::pin(self.read_received(meta, SnapshotData::Memory(Cursor::new(bytes)))).await;
            }
            (mut other, Some(dir)) => {
                let (mut file, path) = self.new_receiving(dir).await?;
                tokio::io::AsyncSeekExt::rewind(&mut other).await.map_err(|e| io_read_of(meta, &e))?;
                tokio::io::copy(&mut other, &mut file).await.map_err(|e| io_write(Some(meta), &e))?;
                (file.into_std().await, path)
            }
        };
        let at = path.path().to_path_buf();
        let (state, checksum) =
            blocking(move || file::read_received(file, &at)).await.map_err(|e| io_read_of(meta, &e))?;
        Ok((state, Received::File { path, checksum }))
    }

    /// Keep a received snapshot as the current one: what names it goes into `batch`, the
    /// state machine's batch that replaces all its keys, so that after a crash the tree holds
    /// the old state and the old snapshot or the new state and the new snapshot. Applies and
    /// flushes `batch`.
    pub async fn install(
        &self,
        meta: &SnapshotMeta,
        received: Received,
        rules: Rules,
        mut batch: KvBatch,
    ) -> Result<(), StorageError> {
        let mut current = self.current.lock().await;
        let kept = match (received, &self.dir) {
            (Received::Memory(bytes), _) => {
                let stored = encode_stored_snapshot(meta, &bytes, rules).map_err(|e| io_write(Some(meta), &e))?;
                batch.insert(KEY_SNAPSHOT, stored);
                None
            }
            (Received::File { path, checksum }, Some(dir)) => {
                let name = format!("{}{KEPT_SUFFIX}", current.take_number());
                let (from, to) = (path.path().to_path_buf(), dir.join(&name));
                blocking(move || file::rename_durably(&from, &to)).await.map_err(|e| io_write(Some(meta), &e))?;
                path.keep();
                self.name_file(&mut batch, meta, name.clone(), checksum)?;
                Some(name)
            }
            (Received::File { .. }, None) => {
                return Err(io_write(Some(meta), &std::io::Error::other("a snapshot file received on a memory disk")))
            }
        };
        self.tree.apply_batch(batch).map_err(|e| io_write(Some(meta), &e))?;
        // openraft runs the log purge behind an install without waiting for it; the log store
        // holds that purge until the state machine reports this install (`wait_until_applied`).
        self.db.flush().await.map_err(|e| io_write(Some(meta), &e))?;
        self.forget_replaced(&mut current, meta, kept).await;
        Ok(())
    }

    /// Name `file` (already durable in the snapshot dir) as the snapshot `meta`, in `batch`.
    fn name_file(
        &self,
        batch: &mut KvBatch,
        meta: &SnapshotMeta,
        file: String,
        checksum: Checksum,
    ) -> Result<(), StorageError> {
        let record = FileRecord { meta: meta.clone(), file, checksum };
        batch.insert(KEY_SNAPSHOT_FILE, encode(&record).map_err(|e| io_write(Some(meta), &e))?);
        Ok(())
    }

    /// After the tree durably names the snapshot `meta` (kept in file `kept`, or in the tree):
    /// remember it; the file of the one it replaced is removed (off the async workers).
    async fn forget_replaced(&self, current: &mut Current, meta: &SnapshotMeta, kept: Option<String>) {
        if let Some(replaced) = self.note_kept(current, meta, kept) {
            remove_quietly(replaced).await;
        }
    }

    /// [`SnapshotStore::forget_replaced`], blocking (at open).
    fn forget_replaced_now(&self, current: &mut Current, meta: &SnapshotMeta, kept: Option<String>) {
        if let Some(replaced) = self.note_kept(current, meta, kept) {
            remove_logged(&replaced);
        }
    }

    /// Remember the snapshot `meta` as the current one; the path of the file it replaced.
    fn note_kept(&self, current: &mut Current, meta: &SnapshotMeta, kept: Option<String>) -> Option<PathBuf> {
        current.last_log_id = meta.last_log_id;
        let (dir, kept) = (self.dir.as_ref()?, kept?);
        let replaced = current.file.replace(kept)?;
        (current.file.as_ref() != Some(&replaced)).then(|| dir.join(replaced))
    }
}

/// Remove a file no longer named, off the async workers. It is already unreferenced, so a
/// failure is logged, not a storage error: the next start removes it.
async fn remove_quietly(path: PathBuf) {
    let _ = blocking(move || {
        remove_logged(&path);
        Ok(())
    })
    .await;
}

fn remove_logged(path: &Path) {
    if let Err(error) = std::fs::remove_file(path) {
        tracing::warn!(file = %path.display(), %error, "could not remove a replaced snapshot file (it is removed at the next start)");
    }
}

#[cfg(test)]
#[path = "snapshot_store_tests.rs"]
mod tests;
