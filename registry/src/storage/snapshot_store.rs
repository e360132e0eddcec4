//! Where a node keeps its latest snapshot, and [`SnapshotData`], what openraft moves it in.
//!
//! On a data dir the snapshot is a file in `<data dir>/snapshots/`: built by writing the table
//! straight into it, sent from it in chunks, received into a file of its own. The `sm` tree
//! keeps only its metadata and the file's name ([`KEY_SNAPSHOT_FILE`]). Kept as one sled value
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

use std::io::{BufReader, BufWriter, Cursor};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use openraft::StorageIOError;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

use super::codec::{self, decode, decode_framed, encode, encode_framed, is_framed, CodecError};
use super::kv::{Db, KvBatch, Tree};
use super::state_machine::SmState;
use crate::lease::Rules;
use crate::raft::types::{LogId, Snapshot, SnapshotMeta, StorageError};

/// The snapshot itself, in the tree (memory disk; data dirs written before snapshot files).
const KEY_SNAPSHOT: &[u8] = b"snapshot";
/// The snapshot's metadata and file name (data dir).
const KEY_SNAPSHOT_FILE: &[u8] = b"snapshot-file";
/// The snapshot directory, inside the data dir.
const SNAPSHOT_DIR: &str = "snapshots";
/// A snapshot file the tree may name: `<sequence number>.snap`.
const KEPT_SUFFIX: &str = ".snap";
/// Write buffer of a snapshot file: few, large writes, not one per JSON token.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// A snapshot's bytes as openraft reads, sends and receives them: in memory, or an open file.
#[derive(Debug)]
pub enum SnapshotData {
    Memory(Cursor<Vec<u8>>),
    /// `path`: where the file is, so that a received one can be renamed into place.
    File {
        file: tokio::fs::File,
        path: PathBuf,
    },
}

impl SnapshotData {
    fn pinned(self: Pin<&mut Self>) -> Pin<&mut (dyn AsyncReadWriteSeek + Unpin + '_)> {
        let inner: &mut (dyn AsyncReadWriteSeek + Unpin) = match self.get_mut() {
            SnapshotData::Memory(cursor) => cursor,
            SnapshotData::File { file, .. } => file,
        };
        Pin::new(inner)
    }
}

/// The three traits openraft needs of snapshot data, as one object type to delegate to.
trait AsyncReadWriteSeek: AsyncRead + AsyncWrite + AsyncSeek {}
impl<T: AsyncRead + AsyncWrite + AsyncSeek> AsyncReadWriteSeek for T {}

impl AsyncRead for SnapshotData {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        self.pinned().poll_read(cx, buf)
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.pinned().poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.pinned().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.pinned().poll_shutdown(cx)
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, position: std::io::SeekFrom) -> std::io::Result<()> {
        self.pinned().start_seek(position)
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<u64>> {
        self.pinned().poll_complete(cx)
    }
}

/// What the tree keeps of a snapshot file.
#[derive(Debug, Serialize, Deserialize)]
struct FileRecord {
    meta: SnapshotMeta,
    file: String,
}

/// The snapshot the store holds now, and the next free file number.
#[derive(Debug, Default)]
struct Current {
    last_log_id: Option<LogId>,
    file: Option<String>,
    next_file: u64,
}

/// A received snapshot, decoded and ready to be kept by [`SnapshotStore::keep_received`].
#[derive(Debug)]
pub enum Received {
    Memory(Vec<u8>),
    File(PathBuf),
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

/// Encode the applied state as a snapshot's data into `out`. Once raised apply rules are in
/// force, a node of an older release must not install it (it would ignore the raise and apply
/// later entries differently): the format byte says so.
fn write_state<W: std::io::Write>(out: W, state: &SmState) -> Result<(), CodecError> {
    codec::encode_into(out, state, state.table.rules_in_force(Rules::CURRENT) > Rules::UNGATED)
}

fn file_number(name: &str) -> Option<u64> {
    name.split_once('.').and_then(|(number, _)| number.parse().ok())
}

/// fsync a directory, so that a rename or removal in it survives a crash.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
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

    /// The store of data dir `data_dir`: snapshot files in its `snapshots/`. Removes what a
    /// crash left there, and moves a snapshot an older release kept in the tree into a file.
    pub fn in_dir(db: &Db, tree: &Tree, data_dir: &Path) -> Result<SnapshotStore, StorageError> {
        let dir = data_dir.join(SNAPSHOT_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| io_write(None, &e))?;
        let mut record: Option<FileRecord> = match tree.get(KEY_SNAPSHOT_FILE).map_err(|e| io_read(&e))? {
            Some(bytes) => Some(decode(&bytes).map_err(|e| io_read(&e))?),
            None => None,
        };
        if let Some(kept) = &record {
            if !dir.join(&kept.file).is_file() {
                // Someone removed it: openraft builds a new one at start if the log behind it
                // was purged, so this is repaired, not fatal.
                tracing::warn!(file = %dir.join(&kept.file).display(), snapshot = %kept.meta.snapshot_id, "the snapshot file the data dir names is missing; a new snapshot will be built");
                let mut batch = KvBatch::default();
                batch.remove(KEY_SNAPSHOT_FILE);
                tree.apply_batch(batch).map_err(|e| io_write(None, &e))?;
                record = None;
            }
        }
        let mut next_file = 0;
        for entry in std::fs::read_dir(&dir).map_err(|e| io_read(&e))? {
            let entry = entry.map_err(|e| io_read(&e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            next_file = next_file.max(file_number(&name).map_or(0, |n| n + 1));
            if record.as_ref().is_none_or(|kept| kept.file != name) {
                std::fs::remove_file(entry.path()).map_err(|e| io_write(None, &e))?;
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

    /// A data dir from before snapshot files keeps its snapshot in the tree: write it to a file
    /// (once, at the first start of this release) so that there is one place to read it from.
    fn move_tree_snapshot_to_file(&self) -> Result<(), StorageError> {
        let (Some(dir), Some(bytes)) = (&self.dir, self.tree.get(KEY_SNAPSHOT).map_err(|e| io_read(&e))?) else {
            return Ok(());
        };
        let (meta, data) = decode_stored_snapshot(&bytes).map_err(|e| io_read(&e))?;
        drop(bytes);
        let mut current = self.current.try_lock().map_err(|e| io_write(Some(&meta), &e))?;
        let name = format!("{}{KEPT_SUFFIX}", current.next_file);
        current.next_file += 1;
        let path = dir.join(&name);
        std::fs::write(&path, &data)
            .and_then(|()| std::fs::File::open(&path)?.sync_all())
            .and_then(|()| sync_dir(dir))
            .map_err(|e| io_write(Some(&meta), &e))?;
        let mut batch = KvBatch::default();
        batch.remove(KEY_SNAPSHOT);
        let record = FileRecord { meta, file: name.clone() };
        batch.insert(KEY_SNAPSHOT_FILE, encode(&record).map_err(|e| io_write(Some(&record.meta), &e))?);
        self.tree.apply_batch(batch).map_err(|e| io_write(Some(&record.meta), &e))?;
        self.db.flush_blocking().map_err(|e| io_write(Some(&record.meta), &e))?;
        tracing::info!(snapshot = %record.meta.snapshot_id, file = %path.display(), "moved the snapshot an older release kept in the database into its own file");
        self.forget_replaced(&mut current, &record.meta, Some(name))
    }

    /// The snapshot kept now, ready to be read from its start.
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
        let FileRecord { meta, file } = decode(&bytes).map_err(|e| io_read(&e))?;
        let path = dir.join(file);
        let file = tokio::fs::File::open(&path).await.map_err(|e| io_read(&e))?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(SnapshotData::File { file, path }) }))
    }

    /// Write `state` as the snapshot `meta` and keep it, unless a newer one was kept meanwhile.
    pub async fn store_built(&self, meta: SnapshotMeta, state: SmState) -> Result<Built, StorageError> {
        let Some(dir) = &self.dir else {
            let mut data = Vec::new();
            write_state(&mut data, &state).map_err(|e| io_write(Some(&meta), &e))?;
            let rules = state.table.rules_in_force(Rules::CURRENT);
            drop(state);
            let stored = encode_stored_snapshot(&meta, &data, rules).map_err(|e| io_write(Some(&meta), &e))?;
            let mut current = self.current.lock().await;
            if meta.last_log_id >= current.last_log_id {
                self.tree.insert(KEY_SNAPSHOT, stored).map_err(|e| io_write(Some(&meta), &e))?;
                // openraft purges the log behind this snapshot next: it must be on disk first.
                self.db.flush().await.map_err(|e| io_write(Some(&meta), &e))?;
                current.last_log_id = meta.last_log_id;
            }
            let bytes = u64::try_from(data.len()).unwrap_or(u64::MAX);
            return Ok(Built {
                snapshot: Snapshot { meta, snapshot: Box::new(SnapshotData::Memory(Cursor::new(data))) },
                bytes,
            });
        };
        let number = {
            let mut current = self.current.lock().await;
            current.next_file += 1;
            current.next_file - 1
        };
        let name = format!("{number}{KEPT_SUFFIX}");
        let (path, written) = (dir.join(&name), dir.join(format!("{number}.building")));
        let (from, to, dir_path) = (written.clone(), path.clone(), dir.clone());
        // Encoding a large table takes long (65,536 IDs: ~250 ms): off the async workers.
        let bytes = tokio::task::spawn_blocking(move || -> Result<u64, CodecError> {
            let file = std::fs::File::create(&from)?;
            let mut out = BufWriter::with_capacity(WRITE_BUFFER_BYTES, file);
            write_state(&mut out, &state)?;
            let file = out.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            let bytes = file.metadata()?.len();
            std::fs::rename(&from, &to)?;
            sync_dir(&dir_path)?;
            Ok(bytes)
        })
        .await
        .map_err(|e| io_write(Some(&meta), &e))?
        .map_err(|e| io_write(Some(&meta), &e))?;
        // Opened before it may be replaced: the returned snapshot reads this file either way.
        let file = tokio::fs::File::open(&path).await.map_err(|e| io_write(Some(&meta), &e))?;
        let mut current = self.current.lock().await;
        if meta.last_log_id >= current.last_log_id {
            let mut batch = KvBatch::default();
            self.name_file(&mut batch, &meta, name.clone())?;
            self.tree.apply_batch(batch).map_err(|e| io_write(Some(&meta), &e))?;
            // openraft purges the log behind this snapshot next: it must be on disk first.
            self.db.flush().await.map_err(|e| io_write(Some(&meta), &e))?;
            self.forget_replaced(&mut current, &meta, Some(name))?;
        } else {
            tracing::info!(snapshot = %meta.snapshot_id, "a newer snapshot was kept while this one was built; dropping its file");
            std::fs::remove_file(&path).map_err(|e| io_write(Some(&meta), &e))?;
        }
        Ok(Built { snapshot: Snapshot { meta, snapshot: Box::new(SnapshotData::File { file, path }) }, bytes })
    }

    /// A new, empty [`SnapshotData`] for a snapshot about to be received. In a data dir, a file
    /// left by a receive that never finished (the leader moved on) is removed first.
    pub async fn begin_receiving(&self) -> Result<SnapshotData, StorageError> {
        let Some(dir) = &self.dir else { return Ok(SnapshotData::Memory(Cursor::new(Vec::new()))) };
        let mut current = self.current.lock().await;
        for entry in std::fs::read_dir(dir).map_err(|e| io_read(&e))? {
            let entry = entry.map_err(|e| io_read(&e))?;
            if entry.file_name().to_string_lossy().ends_with(".receiving") {
                std::fs::remove_file(entry.path()).map_err(|e| io_write(None, &e))?;
            }
        }
        let path = dir.join(format!("{}.receiving", current.next_file));
        current.next_file += 1;
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|e| io_write(None, &e))?;
        Ok(SnapshotData::File { file, path })
    }

    /// The state a received snapshot holds.
    pub async fn read_received(
        &self,
        meta: &SnapshotMeta,
        data: SnapshotData,
    ) -> Result<(SmState, Received), StorageError> {
        match data {
            SnapshotData::Memory(cursor) => {
                let bytes = cursor.into_inner();
                let state = decode(&bytes).map_err(|e| io_read_of(meta, &e))?;
                Ok((state, Received::Memory(bytes)))
            }
            SnapshotData::File { file, path } => {
                file.sync_all().await.map_err(|e| io_write(Some(meta), &e))?;
                drop(file);
                let from = path.clone();
                let state = tokio::task::spawn_blocking(move || -> Result<SmState, CodecError> {
                    codec::decode_from(BufReader::new(std::fs::File::open(from)?))
                })
                .await
                .map_err(|e| io_read_of(meta, &e))?
                .map_err(|e| io_read_of(meta, &e))?;
                Ok((state, Received::File(path)))
            }
        }
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
            (Received::File(received), Some(dir)) => {
                let name = format!("{}{KEPT_SUFFIX}", current.next_file);
                current.next_file += 1;
                std::fs::rename(&received, dir.join(&name))
                    .and_then(|()| sync_dir(dir))
                    .map_err(|e| io_write(Some(meta), &e))?;
                self.name_file(&mut batch, meta, name.clone())?;
                Some(name)
            }
            (Received::File(_), None) => {
                return Err(io_write(Some(meta), &std::io::Error::other("a snapshot file received on a memory disk")))
            }
        };
        self.tree.apply_batch(batch).map_err(|e| io_write(Some(meta), &e))?;
        self.db.flush().await.map_err(|e| io_write(Some(meta), &e))?;
        self.forget_replaced(&mut current, meta, kept)
    }

    /// Name `file` (already durable in the snapshot dir) as the snapshot `meta`, in `batch`.
    fn name_file(&self, batch: &mut KvBatch, meta: &SnapshotMeta, file: String) -> Result<(), StorageError> {
        let record = FileRecord { meta: meta.clone(), file };
        batch.insert(KEY_SNAPSHOT_FILE, encode(&record).map_err(|e| io_write(Some(meta), &e))?);
        Ok(())
    }

    /// After the tree durably names the snapshot `meta` (kept in file `kept`, or in the tree):
    /// remember it, and remove the file of the one it replaced.
    fn forget_replaced(
        &self,
        current: &mut Current,
        meta: &SnapshotMeta,
        kept: Option<String>,
    ) -> Result<(), StorageError> {
        current.last_log_id = meta.last_log_id;
        let (Some(dir), Some(kept)) = (&self.dir, kept) else { return Ok(()) };
        match current.file.replace(kept) {
            Some(old) if Some(&old) != current.file.as_ref() => {
                std::fs::remove_file(dir.join(old)).map_err(|e| io_write(Some(meta), &e))
            }
            _ => Ok(()),
        }
    }
}

fn io_read_of(meta: &SnapshotMeta, e: &(impl std::error::Error + 'static)) -> StorageError {
    StorageIOError::read_snapshot(Some(meta.signature()), e).into()
}

#[cfg(test)]
#[path = "snapshot_store_tests.rs"]
mod tests;
