//! `MemDisk`: an in-memory disk for the deterministic simulator, with the crash semantics of
//! the sled data dir it stands in for, chosen by the caller instead of by background threads.
//!
//! It holds a durable image (per-tree ordered maps) and, in write order, the batches written
//! since the last flush. Reads see both (read-your-writes, like sled's page cache). `flush`
//! makes every pending batch durable, unless a flush failure was injected. `crash(keep)` keeps
//! the first `keep` pending batches and loses the rest: a prefix, never a half batch, since
//! sled batches are atomic. What it does not model: torn pages inside a batch, a flush that
//! makes some of the pending batches durable and then fails, corruption of durable data.
//!
//! A handle belongs to one process incarnation. `crash`, `wipe` and `restart` end the
//! incarnation: every handle it holds (the `Db`, its trees, clones of them) then answers every
//! operation with `MemDiskError::Crashed`, so a dead process's leftover tasks can never write.
//! `restart` hands out the handle of the next incarnation.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::kv::{KvBatch, KvOp, KvPair};

type TreeImage = BTreeMap<Vec<u8>, Vec<u8>>;
type Image = BTreeMap<String, TreeImage>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemDiskError {
    #[error("this memory-disk handle belongs to a process that crashed or was restarted")]
    Crashed,
    #[error("fsync failed (injected): no pending write became durable")]
    FlushFailed,
}

/// One simulated node's disk. Cheap to clone; clones share the disk and the incarnation.
#[derive(Clone, Default)]
pub struct MemDisk {
    shared: Arc<Mutex<DiskState>>,
    /// The incarnation this handle belongs to; it may act only while it is the disk's.
    incarnation: u64,
}

#[derive(Default)]
struct DiskState {
    /// The incarnation whose handles may act (none, between a crash and the next restart).
    incarnation: u64,
    durable: Image,
    /// `durable` with every pending batch applied: what reads see.
    visible: Image,
    /// Batches written since the last successful flush, in write order.
    pending: Vec<PendingBatch>,
    /// How many of the next flushes fail.
    failing_flushes: usize,
}

struct PendingBatch {
    tree: String,
    batch: KvBatch,
}

impl std::fmt::Debug for MemDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the image: a store's Debug output would print the whole disk.
        f.debug_struct("MemDisk").field("incarnation", &self.incarnation).finish_non_exhaustive()
    }
}

/// One tree of a `MemDisk`, tied to the incarnation of the handle that opened it.
#[derive(Debug, Clone)]
pub struct MemTree {
    disk: MemDisk,
    name: Arc<str>,
}

fn apply(image: &mut Image, tree: &str, batch: &KvBatch) {
    let tree = image.entry(tree.to_owned()).or_default();
    for op in batch.ops() {
        match op {
            KvOp::Insert(key, value) => {
                tree.insert(key.clone(), value.clone());
            }
            KvOp::Remove(key) => {
                tree.remove(key);
            }
        }
    }
}

impl DiskState {
    /// Apply the first `count` pending batches to the durable image, drop the rest.
    fn settle(&mut self, count: usize) {
        let pending = std::mem::take(&mut self.pending);
        let dropped = count < pending.len();
        for write in pending.iter().take(count) {
            apply(&mut self.durable, &write.tree, &write.batch);
        }
        // `visible` is `durable` with every pending batch applied, so when none is dropped it
        // already equals the new durable image. Rebuilding it only when a crash drops batches
        // matters: every Raft append flushes, and a copy of the whole disk per flush was most
        // of the simulator's time.
        // (No debug_assert comparing the two: it would cost the same copy in the simulator,
        // which runs with debug assertions; the crash and flush tests check it.)
        if dropped {
            self.visible = self.durable.clone();
        }
    }

    /// End the current incarnation: its handles can do nothing any more.
    fn end_incarnation(&mut self) {
        self.incarnation += 1;
    }
}

impl MemDisk {
    /// An empty disk and the handle of its first incarnation.
    pub fn new() -> MemDisk {
        MemDisk::default()
    }

    fn lock(&self) -> MutexGuard<'_, DiskState> {
        // Every mutation completes under the lock without panicking paths, so a poisoned lock
        // (a panic elsewhere while holding it) still guards a consistent state.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state, if this handle's incarnation is alive.
    fn live(&self) -> Result<MutexGuard<'_, DiskState>, MemDiskError> {
        let state = self.lock();
        if state.incarnation == self.incarnation {
            Ok(state)
        } else {
            Err(MemDiskError::Crashed)
        }
    }

    pub fn open_tree(&self, name: &str) -> Result<MemTree, MemDiskError> {
        drop(self.live()?);
        Ok(MemTree { disk: self.clone(), name: name.into() })
    }

    /// Make every pending batch durable, or fail without making any durable if a failure was
    /// injected (they stay pending: readable, and lost on a crash unless a later flush works).
    pub fn flush(&self) -> Result<(), MemDiskError> {
        let mut state = self.live()?;
        if state.failing_flushes > 0 {
            state.failing_flushes -= 1;
            return Err(MemDiskError::FlushFailed);
        }
        let all = state.pending.len();
        state.settle(all);
        Ok(())
    }

    /// Bytes of keys and values in the durable image.
    pub fn size_on_disk(&self) -> Result<u64, MemDiskError> {
        let state = self.live()?;
        let bytes: usize = state.durable.values().flat_map(|tree| tree.iter()).map(|(k, v)| k.len() + v.len()).sum();
        Ok(u64::try_from(bytes).unwrap_or(u64::MAX))
    }

    /// How many batches were written since the last successful flush (what a crash may lose).
    pub fn pending_len(&self) -> usize {
        self.lock().pending.len()
    }

    /// Make the next `count` flushes fail (an fsync error), whichever handle flushes; replaces
    /// any count set before.
    pub fn fail_next_flushes(&self, count: usize) {
        self.lock().failing_flushes = count;
    }

    /// The machine crashes: the first `keep` pending batches reach the disk, the others are
    /// lost, and the running incarnation can do nothing more. `keep` beyond `pending_len()`
    /// keeps them all.
    pub fn crash(&self, keep: usize) {
        let mut state = self.lock();
        state.settle(keep);
        state.end_incarnation();
    }

    /// Start the next process on this disk and hand it its handle. Any earlier incarnation
    /// still running is stopped cleanly first (its pending batches reach the disk, as when a
    /// stopping process flushes), then can do nothing more.
    pub fn restart(&self) -> MemDisk {
        let mut state = self.lock();
        let all = state.pending.len();
        state.settle(all);
        state.end_incarnation();
        MemDisk { shared: self.shared.clone(), incarnation: state.incarnation }
    }

    /// The disk is lost: nothing of it survives, and the running incarnation can do nothing
    /// more. `restart` then starts a process on an empty disk.
    pub fn wipe(&self) {
        let mut state = self.lock();
        state.durable.clear();
        state.visible.clear();
        state.pending.clear();
        state.end_incarnation();
    }

    /// A copy of the disk as its files stand (the durable image; pending batches are not in
    /// the files yet), independent of this one from now on: a copied data dir.
    pub fn clone_image(&self) -> MemDisk {
        let durable = self.lock().durable.clone();
        let state = DiskState { visible: durable.clone(), durable, ..DiskState::default() };
        MemDisk { shared: Arc::new(Mutex::new(state)), incarnation: 0 }
    }
}

/// Whether no key can lie in the range (`BTreeMap::range` panics on an inverted one).
fn is_empty_range(start: Bound<&[u8]>, end: Bound<&[u8]>) -> bool {
    match (start, end) {
        (Bound::Included(s), Bound::Included(e)) => s > e,
        (Bound::Included(s) | Bound::Excluded(s), Bound::Excluded(e)) | (Bound::Excluded(s), Bound::Included(e)) => {
            s >= e
        }
        _ => false,
    }
}

fn owned((key, value): (&Vec<u8>, &Vec<u8>)) -> KvPair {
    (key.clone(), value.clone())
}

impl MemTree {
    fn read<T>(&self, read: impl FnOnce(&TreeImage) -> T) -> Result<T, MemDiskError> {
        let state = self.disk.live()?;
        let empty = TreeImage::new();
        Ok(read(state.visible.get(&*self.name).unwrap_or(&empty)))
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MemDiskError> {
        self.read(|tree| tree.get(key).cloned())
    }

    /// Write `batch` atomically; readable at once, durable after the next successful flush.
    pub fn apply_batch(&self, batch: KvBatch) -> Result<(), MemDiskError> {
        let mut state = self.disk.live()?;
        if batch.ops().is_empty() {
            return Ok(());
        }
        apply(&mut state.visible, &self.name, &batch);
        state.pending.push(PendingBatch { tree: self.name.to_string(), batch });
        Ok(())
    }

    pub fn range(&self, (start, end): (Bound<&[u8]>, Bound<&[u8]>)) -> Result<Vec<KvPair>, MemDiskError> {
        if is_empty_range(start, end) {
            return self.read(|_| Vec::new());
        }
        self.read(|tree| tree.range::<[u8], _>((start, end)).map(owned).collect())
    }

    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<KvPair>, MemDiskError> {
        self.read(|tree| {
            tree.range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
                .take_while(|(key, _)| key.starts_with(prefix))
                .map(owned)
                .collect()
        })
    }

    pub fn last(&self) -> Result<Option<KvPair>, MemDiskError> {
        self.read(|tree| tree.last_key_value().map(owned))
    }

    pub fn first_key(&self) -> Result<Option<Vec<u8>>, MemDiskError> {
        self.read(|tree| tree.first_key_value().map(|(key, _)| key.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn batch(ops: &[(&str, Option<&str>)]) -> KvBatch {
        let mut batch = KvBatch::default();
        for (key, value) in ops {
            match value {
                Some(value) => batch.insert(key.as_bytes(), value.as_bytes()),
                None => batch.remove(key.as_bytes()),
            }
        }
        batch
    }

    fn put(tree: &MemTree, key: &str, value: &str) {
        tree.apply_batch(batch(&[(key, Some(value))])).unwrap();
    }

    fn get(tree: &MemTree, key: &str) -> Option<String> {
        tree.get(key.as_bytes()).unwrap().map(|v| String::from_utf8(v).unwrap())
    }

    /// A disk with `a` flushed and `b` written but not yet flushed.
    fn a_flushed_b_pending() -> (MemDisk, MemTree) {
        let disk = MemDisk::new();
        let tree = disk.open_tree("t").unwrap();
        put(&tree, "a", "1");
        disk.flush().unwrap();
        put(&tree, "b", "2");
        (disk, tree)
    }

    #[test]
    fn unflushed_writes_are_readable_and_lost_by_a_crash() {
        let (disk, tree) = a_flushed_b_pending();
        assert_eq!(get(&tree, "b").as_deref(), Some("2"), "read your writes");
        assert_eq!(disk.pending_len(), 1);
        disk.crash(0);
        let tree = disk.restart().open_tree("t").unwrap();
        assert_eq!(get(&tree, "a").as_deref(), Some("1"), "flushed survives");
        assert_eq!(get(&tree, "b"), None, "unflushed is lost");
    }

    #[test]
    fn flushes_keep_reads_equal_to_what_survives_a_crash() {
        // A flush does not rebuild what reads see; this checks that what they see is still
        // exactly the durable image, through overwrites and removals, across a later crash.
        let (disk, tree) = a_flushed_b_pending();
        tree.apply_batch(batch(&[("a", None), ("c", Some("3"))])).unwrap();
        disk.flush().unwrap();
        put(&tree, "b", "4");
        disk.flush().unwrap();
        let before: Vec<_> = tree.scan_prefix(b"").unwrap();
        put(&tree, "d", "lost");
        disk.crash(0);
        let after = disk.restart().open_tree("t").unwrap().scan_prefix(b"").unwrap();
        assert_eq!(before, after);
        assert_eq!(after, vec![(b"b".to_vec(), b"4".to_vec()), (b"c".to_vec(), b"3".to_vec())]);
    }

    #[test]
    fn a_crash_keeps_exactly_the_first_k_pending_batches() {
        for keep in 0..=4 {
            let disk = MemDisk::new();
            let tree = disk.open_tree("t").unwrap();
            for i in 0..4 {
                put(&tree, &format!("k{i}"), "v");
            }
            disk.crash(keep);
            let tree = disk.restart().open_tree("t").unwrap();
            let kept: Vec<_> = tree.scan_prefix(b"k").unwrap().into_iter().map(|(k, _)| k).collect();
            let wanted: Vec<_> = (0..keep).map(|i| format!("k{i}").into_bytes()).collect();
            assert_eq!(kept, wanted, "keep={keep}");
        }
    }

    #[test]
    fn a_batch_is_never_half_applied_across_a_crash() {
        for keep in 0..=1 {
            let disk = MemDisk::new();
            let tree = disk.open_tree("t").unwrap();
            put(&tree, "x", "old");
            disk.flush().unwrap();
            tree.apply_batch(batch(&[("x", None), ("y", Some("1")), ("z", Some("2"))])).unwrap();
            disk.crash(keep);
            let tree = disk.restart().open_tree("t").unwrap();
            let all = tree.range((Bound::Unbounded, Bound::Unbounded)).unwrap();
            let keys: Vec<_> = all.into_iter().map(|(k, _)| String::from_utf8(k).unwrap()).collect();
            let wanted = if keep == 0 { vec!["x"] } else { vec!["y", "z"] };
            assert_eq!(keys, wanted, "keep={keep}");
        }
    }

    #[test]
    fn a_failed_flush_makes_nothing_durable_and_a_later_one_does() {
        let disk = MemDisk::new();
        let tree = disk.open_tree("t").unwrap();
        put(&tree, "a", "1");
        disk.fail_next_flushes(1);
        assert_eq!(disk.flush(), Err(MemDiskError::FlushFailed));
        assert_eq!(disk.pending_len(), 1, "still pending");
        disk.flush().unwrap();
        assert_eq!(disk.pending_len(), 0);
        disk.crash(0);
        assert_eq!(get(&disk.restart().open_tree("t").unwrap(), "a").as_deref(), Some("1"));
    }

    #[test]
    fn a_crashed_incarnation_can_neither_write_nor_read() {
        let disk = MemDisk::new();
        let tree = disk.open_tree("t").unwrap();
        disk.crash(0);
        assert_eq!(tree.apply_batch(batch(&[("a", Some("1"))])), Err(MemDiskError::Crashed));
        assert_eq!(tree.get(b"a"), Err(MemDiskError::Crashed));
        assert_eq!(disk.flush(), Err(MemDiskError::Crashed));
        let next = disk.restart();
        assert_eq!(tree.apply_batch(batch(&[("a", Some("1"))])), Err(MemDiskError::Crashed), "after the restart too");
        assert!(disk.open_tree("t").is_err(), "the old handle stays dead");
        assert_eq!(get(&next.open_tree("t").unwrap(), "a"), None);
        // A restart without a crash is a clean stop: nothing is lost, the old process is dead.
        put(&next.open_tree("t").unwrap(), "b", "2");
        let after = next.restart();
        assert_eq!(next.flush(), Err(MemDiskError::Crashed));
        assert_eq!(get(&after.open_tree("t").unwrap(), "b").as_deref(), Some("2"));
    }

    #[test]
    fn a_wiped_disk_is_empty_and_a_cloned_image_is_independent() {
        let (disk, tree) = a_flushed_b_pending();
        let copy = disk.clone_image();
        let copied = copy.open_tree("t").unwrap();
        assert_eq!(get(&copied, "a").as_deref(), Some("1"));
        assert_eq!(get(&copied, "b"), None, "unflushed writes are not in the files");
        put(&copied, "c", "3");
        assert_eq!(get(&tree, "c"), None, "the copy is independent");
        disk.wipe();
        assert!(tree.get(b"a").is_err(), "the process on a lost disk is stopped");
        let fresh = disk.restart();
        assert_eq!(fresh.open_tree("t").unwrap().range((Bound::Unbounded, Bound::Unbounded)).unwrap(), vec![]);
        assert_eq!(fresh.size_on_disk().unwrap(), 0);
        assert_eq!(get(&copied, "a").as_deref(), Some("1"), "the copy outlives the wipe");
    }

    #[test]
    fn ranges_follow_byte_order_and_tolerate_inverted_bounds() {
        let disk = MemDisk::new();
        let tree = disk.open_tree("t").unwrap();
        for key in ["b", "a", "ab", "c"] {
            put(&tree, key, "v");
        }
        let keys =
            |pairs: Vec<KvPair>| pairs.into_iter().map(|(k, _)| String::from_utf8(k).unwrap()).collect::<Vec<_>>();
        let from_ab = tree.range((Bound::Included(&b"ab"[..]), Bound::Excluded(&b"c"[..]))).unwrap();
        assert_eq!(keys(from_ab), ["ab", "b"]);
        assert_eq!(keys(tree.scan_prefix(b"a").unwrap()), ["a", "ab"]);
        assert_eq!(tree.last().unwrap().map(|(k, _)| k), Some(b"c".to_vec()));
        assert!(tree.range((Bound::Included(&b"c"[..]), Bound::Excluded(&b"a"[..]))).unwrap().is_empty());
        assert!(tree.range((Bound::Excluded(&b"a"[..]), Bound::Excluded(&b"a"[..]))).unwrap().is_empty());
    }
}
