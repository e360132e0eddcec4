//! The few key-value operations the stores need, over either disk: sled (a real data dir) or
//! the simulator's in-memory disk (`MemDisk`, whose crash loss and fsync errors a test picks).
//! Static dispatch by `match`: openraft's types never see which disk is underneath.

use std::ops::{Bound, RangeBounds};

use super::memory::{MemDisk, MemDiskError, MemTree};

/// One key and its value, owned (sled's `IVec`s are copied out; the table is small).
pub type KvPair = (Vec<u8>, Vec<u8>);

#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error(transparent)]
    Sled(#[from] sled::Error),
    #[error(transparent)]
    Memory(#[from] MemDiskError),
}

/// The database of one data dir.
#[derive(Debug, Clone)]
pub enum Db {
    Sled(sled::Db),
    Memory(MemDisk),
}

/// One named tree (keyspace) of a `Db`; keys are ordered byte-lexicographically.
#[derive(Debug, Clone)]
pub enum Tree {
    Sled(sled::Tree),
    Memory(MemTree),
}

/// One write in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvOp {
    Insert(Vec<u8>, Vec<u8>),
    Remove(Vec<u8>),
}

/// Writes to one tree applied atomically: after a crash, all of them or none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvBatch {
    ops: Vec<KvOp>,
}

impl KvBatch {
    pub fn insert(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(KvOp::Insert(key.into(), value.into()));
    }

    pub fn remove(&mut self, key: impl Into<Vec<u8>>) {
        self.ops.push(KvOp::Remove(key.into()));
    }

    pub(super) fn ops(&self) -> &[KvOp] {
        &self.ops
    }

    fn into_sled(self) -> sled::Batch {
        let mut batch = sled::Batch::default();
        for op in self.ops {
            match op {
                KvOp::Insert(key, value) => batch.insert(key, value),
                KvOp::Remove(key) => batch.remove(key),
            }
        }
        batch
    }
}

impl Db {
    pub fn open_tree(&self, name: &str) -> Result<Tree, KvError> {
        match self {
            Db::Sled(db) => Ok(Tree::Sled(db.open_tree(name)?)),
            Db::Memory(disk) => Ok(Tree::Memory(disk.open_tree(name)?)),
        }
    }

    /// Make every write so far durable (fsync); no write is durable before.
    ///
    /// On sled, its blocking `flush` on tokio's blocking threads, never sled 0.34's
    /// `flush_async`: that runs the flush on sled's own small IO thread pool, where it blocks
    /// until log writes queued on the same pool are done, and concurrent flushes can starve
    /// that pool for good (spacejam/sled#1308; fixed by giving each kind of work its own
    /// threads, a change in no 0.34 release). A node whose flush hangs so stops answering its
    /// peers with nothing in its log.
    pub async fn flush(&self) -> Result<(), KvError> {
        match self {
            Db::Sled(db) => {
                let db = db.clone();
                match tokio::task::spawn_blocking(move || db.flush()).await {
                    Ok(flushed) => flushed.map(drop).map_err(KvError::from),
                    Err(ended) => Err(KvError::Sled(sled::Error::Io(std::io::Error::other(format!(
                        "the flush ended without an answer: {ended}"
                    ))))),
                }
            }
            Db::Memory(disk) => disk.flush().map_err(KvError::from),
        }
    }

    /// `flush`, blocking the thread (for the synchronous `storage::open`).
    pub fn flush_blocking(&self) -> Result<(), KvError> {
        match self {
            Db::Sled(db) => db.flush().map(drop).map_err(KvError::from),
            Db::Memory(disk) => disk.flush().map_err(KvError::from),
        }
    }

    pub fn size_on_disk(&self) -> Result<u64, KvError> {
        match self {
            Db::Sled(db) => db.size_on_disk().map_err(KvError::from),
            Db::Memory(disk) => disk.size_on_disk().map_err(KvError::from),
        }
    }
}

fn owned(item: sled::Result<(sled::IVec, sled::IVec)>) -> Result<KvPair, KvError> {
    let (key, value) = item?;
    Ok((key.to_vec(), value.to_vec()))
}

fn bound_slice<K: AsRef<[u8]>>(bound: Bound<&K>) -> Bound<&[u8]> {
    bound.map(AsRef::as_ref)
}

impl Tree {
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        match self {
            Tree::Sled(tree) => Ok(tree.get(key)?.map(|v| v.to_vec())),
            Tree::Memory(tree) => Ok(tree.get(key)?),
        }
    }

    pub fn insert(&self, key: &[u8], value: Vec<u8>) -> Result<(), KvError> {
        match self {
            Tree::Sled(tree) => tree.insert(key, value).map(drop).map_err(KvError::from),
            Tree::Memory(tree) => {
                let mut batch = KvBatch::default();
                batch.insert(key, value);
                tree.apply_batch(batch).map_err(KvError::from)
            }
        }
    }

    pub fn apply_batch(&self, batch: KvBatch) -> Result<(), KvError> {
        match self {
            Tree::Sled(tree) => tree.apply_batch(batch.into_sled()).map_err(KvError::from),
            Tree::Memory(tree) => tree.apply_batch(batch).map_err(KvError::from),
        }
    }

    /// The pairs whose keys fall in `range`, in key order.
    pub fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Result<Vec<KvPair>, KvError> {
        let bounds = (bound_slice(range.start_bound()), bound_slice(range.end_bound()));
        match self {
            Tree::Sled(tree) => tree.range::<&[u8], _>(bounds).map(owned).collect(),
            Tree::Memory(tree) => Ok(tree.range(bounds)?),
        }
    }

    /// The keys that fall in `range`, in key order, without copying their values (a purge of
    /// thousands of log entries would otherwise copy tens of MB of entries only to drop them).
    pub fn keys<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Result<Vec<Vec<u8>>, KvError> {
        let bounds = (bound_slice(range.start_bound()), bound_slice(range.end_bound()));
        match self {
            Tree::Sled(tree) => tree.range::<&[u8], _>(bounds).keys().map(|key| Ok(key?.to_vec())).collect(),
            Tree::Memory(tree) => Ok(tree.range(bounds)?.into_iter().map(|(key, _)| key).collect()),
        }
    }

    /// The pairs whose keys start with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<KvPair>, KvError> {
        match self {
            Tree::Sled(tree) => tree.scan_prefix(prefix).map(owned).collect(),
            Tree::Memory(tree) => Ok(tree.scan_prefix(prefix)?),
        }
    }

    /// The smallest key.
    pub fn first_key(&self) -> Result<Option<Vec<u8>>, KvError> {
        match self {
            Tree::Sled(tree) => Ok(tree.first()?.map(|(key, _)| key.to_vec())),
            Tree::Memory(tree) => Ok(tree.first_key()?),
        }
    }

    /// The pair with the greatest key.
    pub fn last(&self) -> Result<Option<KvPair>, KvError> {
        match self {
            Tree::Sled(tree) => Ok(tree.last()?.map(|(key, value)| (key.to_vec(), value.to_vec()))),
            Tree::Memory(tree) => Ok(tree.last()?),
        }
    }
}
