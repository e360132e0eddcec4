//! Storage tests: openraft's own conformance suite against our stores on both disks (sled and
//! the simulator's memory disk), the data-dir identity checks, and the memory disk's crash and
//! fsync-error semantics as the stores see them.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader};

use super::*;
use crate::clock::SystemClock;
use crate::raft::types::{Entry, StorageError, TypeConfig, Vote};

fn identity(node_id: NodeId) -> DataDirIdentity {
    DataDirIdentity { node_id, cluster_id: "test".into() }
}

fn tracker() -> ExpiryTracker {
    ExpiryTracker::new(Arc::new(SystemClock))
}

/// Fresh storage for each suite test, with what it lives on (`G`: a temp dir, a memory disk).
struct FreshStorage<G>(fn() -> (G, OpenedStorage));

impl<G: Send + Sync> StoreBuilder<TypeConfig, LogStore, StateMachine, G> for FreshStorage<G> {
    async fn build(&self) -> Result<(G, LogStore, StateMachine), StorageError> {
        let (guard, opened) = (self.0)();
        // The suite purges logs it never applies, which a linked store would wait for forever.
        Ok((guard, opened.log_store.unlinked_from_state_machine(), opened.state_machine))
    }
}

fn on_sled() -> (tempfile::TempDir, OpenedStorage) {
    let dir = tempfile::tempdir().unwrap();
    let opened = open(dir.path(), &identity(1), tracker(), crate::config::DEFAULT_CACHE_MIB).unwrap();
    (dir, opened)
}

fn on_memory() -> (MemDisk, OpenedStorage) {
    let disk = MemDisk::new();
    let opened = open_memory(&disk, &identity(1), tracker()).unwrap();
    (disk, opened)
}

/// openraft's storage conformance suite: log reads, truncate, purge, vote, apply, snapshots.
#[test]
fn passes_the_openraft_storage_suite() {
    Suite::test_all(FreshStorage(on_sled)).unwrap();
}

#[test]
fn passes_the_openraft_storage_suite_on_the_memory_disk() {
    Suite::test_all(FreshStorage(on_memory)).unwrap();
}

/// Opens the same data dir (or disk) each time, as the given node.
fn refuses_another_node_or_cluster(open: impl Fn(&DataDirIdentity) -> Result<OpenedStorage, OpenError>) {
    drop(open(&identity(1)).unwrap());
    let err = open(&identity(2)).unwrap_err();
    assert!(matches!(err, OpenError::WrongNode { found: 1, wanted: 2, .. }), "{err}");
    let other = DataDirIdentity { node_id: 1, cluster_id: "other".into() };
    let err = open(&other).unwrap_err();
    assert!(matches!(err, OpenError::WrongCluster { .. }), "{err}");
    assert!(open(&identity(1)).unwrap().had_state);
}

#[test]
fn a_data_dir_refuses_another_node_or_cluster() {
    let dir = tempfile::tempdir().unwrap();
    refuses_another_node_or_cluster(|identity| super::open_when_unlocked(dir.path(), identity, tracker()));
}

#[test]
fn a_memory_disk_refuses_another_node_or_cluster() {
    let disk = MemDisk::new();
    refuses_another_node_or_cluster(|identity| open_memory(&disk, identity, tracker()));
}

fn blank_entry(index: u64) -> Entry {
    Entry { log_id: openraft::LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Blank }
}

async fn log_indexes(opened: &mut OpenedStorage) -> Vec<u64> {
    let entries = opened.log_store.try_get_log_entries(0..).await.unwrap();
    entries.iter().map(|e| e.log_id.index).collect()
}

/// The next process on `disk` (after a crash or not), with its storage opened.
fn reopen(disk: &MemDisk) -> OpenedStorage {
    open_memory(&disk.restart(), &identity(1), tracker()).unwrap()
}

/// Goal (issue 11): a purge that spans several of its removal batches removes every entry
/// through the purged index and none after it, on both disks, also when it starts past the
/// log's first index (as after an earlier purge, or entries a crash left behind), and a
/// purge at the last index empties the log while `get_log_state` still names it.
#[tokio::test]
async fn a_purge_spanning_many_batches_removes_exactly_through_its_index() {
    async fn check(mut opened: OpenedStorage) {
        // What is purged here was never applied: see the next tests for that wait.
        opened.log_store = opened.log_store.unlinked_from_state_machine();
        let last = 3 * super::log_store::PURGE_BATCH + 17;
        let flushed = opened.log_store.write_entries((1..=last).map(blank_entry).collect::<Vec<_>>()).await.unwrap();
        assert!(flushed.is_ok(), "{flushed:?}");
        let first_cut = super::log_store::PURGE_BATCH + 3;
        opened.log_store.purge(blank_entry(first_cut).log_id).await.unwrap();
        assert_eq!(log_indexes(&mut opened).await, ((first_cut + 1)..=last).collect::<Vec<_>>());
        let second_cut = last - 5;
        opened.log_store.purge(blank_entry(second_cut).log_id).await.unwrap();
        assert_eq!(log_indexes(&mut opened).await, ((second_cut + 1)..=last).collect::<Vec<_>>());
        opened.log_store.purge(blank_entry(last).log_id).await.unwrap();
        assert_eq!(log_indexes(&mut opened).await, Vec::<u64>::new());
        let state = opened.log_store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|id| id.index), Some(last));
        assert_eq!(state.last_log_id.map(|id| id.index), Some(last));
        // Past the log's end (a snapshot installed far ahead): the next entry is kept.
        let flushed = opened.log_store.write_entries(vec![blank_entry(last + 1)]).await.unwrap();
        assert!(flushed.is_ok(), "{flushed:?}");
        opened.log_store.purge(blank_entry(last).log_id).await.unwrap();
        assert_eq!(log_indexes(&mut opened).await, [last + 1]);
        opened.log_store.purge(blank_entry(u64::MAX - 1).log_id).await.unwrap();
        assert_eq!(log_indexes(&mut opened).await, Vec::<u64>::new());
    }
    let (_dir, opened) = on_sled();
    check(opened).await;
    let (_disk, opened) = on_memory();
    check(opened).await;
}

/// A snapshot of a state machine that applied blank entries through `index`, and its bytes.
async fn snapshot_through(index: u64) -> (crate::raft::types::SnapshotMeta, Vec<u8>) {
    use openraft::RaftSnapshotBuilder;
    let (_disk, mut sender) = on_memory();
    sender.state_machine.apply(vec![blank_entry(index)]).await.unwrap();
    let mut built = sender.state_machine.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let mut data = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut built.snapshot, &mut data).await.unwrap();
    (built.meta, data)
}

/// Install the snapshot `meta` with bytes `data`, received as openraft receives it.
async fn install(state_machine: &mut StateMachine, meta: &crate::raft::types::SnapshotMeta, data: &[u8]) {
    let mut incoming = state_machine.begin_receiving_snapshot().await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut incoming, data).await.unwrap();
    state_machine.install_snapshot(meta, incoming).await.unwrap();
}

/// `disk` crashes, losing what was not flushed, and a node starts on it: its storage after
/// openraft's start-up (which may purge), the committed id and the snapshot openraft starts from.
async fn crash_and_start(
    disk: &MemDisk,
) -> (OpenedStorage, Option<crate::raft::types::LogId>, crate::raft::types::SnapshotMeta) {
    disk.crash(0);
    let mut reopened = reopen(disk);
    let mut helper = openraft::storage::StorageHelper::new(&mut reopened.log_store, &mut reopened.state_machine);
    // A start-up purge that waited for ever (a watch that does not know what is applied)
    // fails here rather than at nextest's limit.
    let initial = tokio::time::timeout(std::time::Duration::from_secs(30), helper.get_initial_state())
        .await
        .expect("openraft's start-up hung (in a log purge?)")
        .unwrap();
    (reopened, initial.committed, initial.snapshot_meta)
}

/// A follower behind a snapshot: entries 1..=4 in its log, 1..=2 applied, all durable; the
/// purge openraft runs behind the install of a snapshot through 10, started on its own task
/// and given every chance to run.
async fn purge_behind_an_install(
    disk: &MemDisk,
    mut opened: OpenedStorage,
) -> (StateMachine, tokio::task::JoinHandle<Result<(), StorageError>>) {
    let flushed = opened.log_store.write_entries((1..=4).map(blank_entry).collect::<Vec<_>>()).await.unwrap();
    assert!(flushed.is_ok(), "{flushed:?}");
    opened.state_machine.apply(vec![blank_entry(1), blank_entry(2)]).await.unwrap();
    disk.flush().unwrap();
    let mut log_store = opened.log_store;
    let purge = tokio::spawn(async move { log_store.purge(blank_entry(10).log_id).await });
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    (opened.state_machine, purge)
}

/// The purge marker and last applied id on the durable image of `disk` (what a crash now
/// would leave).
async fn durable_purge_and_applied(disk: &MemDisk) -> (Option<u64>, Option<u64>) {
    let mut image = open_memory(&disk.clone_image(), &identity(1), tracker()).unwrap();
    let purged = image.log_store.get_log_state().await.unwrap().last_purged_log_id;
    let (applied, _) = image.state_machine.applied_state().await.unwrap();
    (purged.map(|id| id.index), applied.map(|id| id.index))
}

/// Goal (issue 11, review of the purge): openraft 0.9 runs a follower's log purge behind a
/// snapshot install without waiting for it. The purge waits until the state machine holds the
/// snapshot, so no crash can leave a purge marker past the durable state machine (entries
/// 3..=10 held by no one on the node); then it purges, and a restart starts from the snapshot.
#[tokio::test]
async fn a_purge_waits_for_the_snapshot_install_it_follows() {
    let (meta, data) = snapshot_through(10).await;
    let (disk, opened) = on_memory();
    let (mut state_machine, purge) = purge_behind_an_install(&disk, opened).await;
    assert!(!purge.is_finished(), "the purge went ahead of the install");
    assert_eq!(durable_purge_and_applied(&disk).await, (None, Some(2)), "a crash now keeps the log");

    install(&mut state_machine, &meta, &data).await;
    purge.await.unwrap().unwrap();
    assert_eq!(durable_purge_and_applied(&disk).await, (Some(10), Some(10)));

    let (mut started, committed, snapshot) = crash_and_start(&disk).await;
    assert_eq!(committed, meta.last_log_id, "starts from the installed snapshot");
    assert_eq!(snapshot, meta, "the installed snapshot is the current one");
    assert_eq!(log_indexes(&mut started).await, Vec::<u64>::new());
}

/// Goal (issue 11, review of the purge): if the state machine stops before it reaches the
/// purged id (a failed install ends openraft's state-machine worker, dropping it), the purge
/// fails and writes no marker.
#[tokio::test]
async fn a_purge_fails_without_a_marker_when_the_state_machine_stops_first() {
    let (disk, opened) = on_memory();
    let (state_machine, purge) = purge_behind_an_install(&disk, opened).await;
    assert!(!purge.is_finished(), "the purge went ahead of the install");
    drop(state_machine);
    let error = purge.await.unwrap().unwrap_err().to_string();
    assert!(error.contains("state machine stopped before it reached log index 10"), "{error}");
    assert_eq!(durable_purge_and_applied(&disk).await, (None, Some(2)));
}

/// Goal (issue 11, review of the purge): a purge past the applied entries waits for their
/// apply, not only for an install, and its flush makes the applies before it durable: after
/// a crash the state machine is never behind the purge marker.
#[tokio::test]
async fn a_purge_waits_for_applies_and_makes_them_durable() {
    let (disk, mut opened) = on_memory();
    let flushed = opened.log_store.write_entries((1..=20).map(blank_entry).collect::<Vec<_>>()).await.unwrap();
    assert!(flushed.is_ok(), "{flushed:?}");
    opened.state_machine.apply((1..=10).map(blank_entry).collect::<Vec<_>>()).await.unwrap();
    let mut log_store = opened.log_store;
    let purge = tokio::spawn(async move { log_store.purge(blank_entry(12).log_id).await.map(|()| log_store) });
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(!purge.is_finished(), "the purge went ahead of the applies");
    assert_eq!(durable_purge_and_applied(&disk).await, (None, None), "the applies are not flushed by themselves");
    opened.state_machine.apply((11..=12).map(blank_entry).collect::<Vec<_>>()).await.unwrap();
    purge.await.unwrap().unwrap();
    disk.crash(0);
    assert_eq!(durable_purge_and_applied(&disk).await, (Some(12), Some(12)));
}

/// Goal (review of the purge): a node that installed a snapshot and stopped before purging
/// the log behind it starts: openraft purges at start (its log ends below what is applied),
/// which a linked store lets through at once.
#[tokio::test]
async fn a_start_after_an_install_without_its_purge_purges_at_once() {
    let (meta, data) = snapshot_through(10).await;
    let (disk, mut opened) = on_memory();
    let flushed = opened.log_store.write_entries((1..=4).map(blank_entry).collect::<Vec<_>>()).await.unwrap();
    assert!(flushed.is_ok(), "{flushed:?}");
    install(&mut opened.state_machine, &meta, &data).await;
    let (mut started, committed, _) = crash_and_start(&disk).await;
    assert_eq!(committed, meta.last_log_id);
    assert_eq!(log_indexes(&mut started).await, Vec::<u64>::new());
    assert_eq!(started.log_store.get_log_state().await.unwrap().last_purged_log_id, meta.last_log_id);
}

/// Goal (review of the purge): a data dir an earlier release left with its log purged past its
/// state machine (a crash during an install) is refused at open, saying so, instead of
/// failing at the first apply with missing entries.
#[tokio::test]
async fn a_log_purged_past_the_state_machine_is_refused_at_open() {
    let (disk, mut opened) = on_memory();
    let flushed = opened.log_store.write_entries((1..=4).map(blank_entry).collect::<Vec<_>>()).await.unwrap();
    assert!(flushed.is_ok(), "{flushed:?}");
    opened.state_machine.apply(vec![blank_entry(1), blank_entry(2)]).await.unwrap();
    // What a purge did before it waited for the state machine.
    let mut unlinked = opened.log_store.unlinked_from_state_machine();
    unlinked.purge(blank_entry(10).log_id).await.unwrap();
    disk.crash(0);
    let refused = open_memory(&disk.restart(), &identity(1), tracker()).unwrap_err();
    assert!(matches!(refused, OpenError::PurgedPastApplied { purged: 10, applied: Some(2), .. }), "{refused}");
    assert!(refused.to_string().contains("Treat this node as lost"), "{refused}");
}

/// Goal: the durable-ack property on the memory disk. An append flushes before it reports
/// done, so a crash right after it, losing every unflushed write, keeps the entries.
#[tokio::test]
async fn an_appended_entry_survives_a_crash() {
    let (disk, mut opened) = on_memory();
    opened.log_store.save_vote(&Vote::new(1, 1)).await.unwrap();
    let flushed = opened.log_store.write_entries(vec![blank_entry(1), blank_entry(2)]).await.unwrap();
    assert!(flushed.is_ok(), "{flushed:?}");
    disk.crash(0);
    let mut reopened = reopen(&disk);
    assert_eq!(log_indexes(&mut reopened).await, [1, 2]);
    assert_eq!(reopened.log_store.read_vote().await.unwrap(), Some(Vote::new(1, 1)));
}

/// Goal: an fsync error makes the append report an error to openraft's callback (so openraft
/// never acknowledges the entry), and the entry does not survive a crash.
#[tokio::test]
async fn a_failed_flush_fails_the_append_and_the_entry_is_not_durable() {
    let (disk, opened) = on_memory();
    disk.fail_next_flushes(1);
    let flushed = opened.log_store.write_entries(vec![blank_entry(1)]).await.unwrap();
    assert!(flushed.is_err(), "the callback would hear success");
    disk.crash(0);
    assert_eq!(log_indexes(&mut reopen(&disk)).await, Vec::<u64>::new());
}

/// Goal: an applied batch is not flushed by itself (its entries are durable in the log); a
/// crash that loses it leaves the position and the table of before, together.
#[tokio::test]
async fn an_unflushed_apply_is_lost_whole_by_a_crash() {
    let (disk, mut opened) = on_memory();
    opened.state_machine.apply(vec![blank_entry(1)]).await.unwrap();
    assert_eq!(disk.pending_len(), 1, "one atomic batch, not flushed");
    disk.crash(0);
    let (applied, _) = reopen(&disk).state_machine.applied_state().await.unwrap();
    assert_eq!(applied, None);
}

/// Goal: once its disk crashed, a process's stores can neither write nor read, even after the
/// next process started on the disk.
#[tokio::test]
async fn a_crashed_process_cannot_write_through_its_stores() {
    let (disk, mut opened) = on_memory();
    disk.crash(0);
    assert!(opened.log_store.save_vote(&Vote::new(1, 1)).await.is_err());
    let mut next = reopen(&disk);
    assert!(opened.log_store.save_vote(&Vote::new(2, 1)).await.is_err());
    assert!(opened.state_machine.apply(vec![blank_entry(1)]).await.is_err());
    assert_eq!(next.log_store.read_vote().await.unwrap(), None);
    assert!(next.had_state, "the identity was flushed before the crash");
}

/// Goal: an entry with more commands than the token slot space (only a forged entry has one)
/// is refused command by command, never a panic that every replica would repeat on replay.
#[tokio::test]
async fn an_oversized_entry_is_refused_not_a_panic() {
    use crate::lease::{Batch, ClusterConfig, Command, Outcome, Rejection, Rules};
    use crate::limits::TOKEN_SLOT_BITS;

    let dir = tempfile::tempdir().unwrap();
    let mut sm = open(dir.path(), &identity(1), tracker(), crate::config::DEFAULT_CACHE_MIB).unwrap().state_machine;
    let config = ClusterConfig { epoch_ms: 0, worker_id_bits: 2, sequence_bits: 12, ttl_ms_max: 1000, cool_down_ms: 0 };
    let commands = vec![Command::Configure(config); (1 << TOKEN_SLOT_BITS) + 1];
    let batch = Batch { leader_wall_ms: 1, commands, rules: Rules::CURRENT };
    let entry = crate::raft::types::Entry {
        log_id: openraft::LogId::new(CommittedLeaderId::new(1, 1), 1),
        payload: EntryPayload::Normal(batch),
    };
    let outcomes = sm.apply(vec![entry]).await.unwrap().pop().unwrap();
    assert_eq!(outcomes.len(), (1 << TOKEN_SLOT_BITS) + 1);
    assert!(matches!(outcomes[0], Outcome::Configured(_)));
    assert_eq!(
        outcomes[1 << TOKEN_SLOT_BITS],
        Outcome::Rejected(Rejection::BatchTooLarge { slot: 1 << TOKEN_SLOT_BITS })
    );
}

/// Goal: an entry written under apply rules newer than this release's stops the node with a
/// storage error before anything of it is applied (applying it under older rules could make
/// this replica diverge from the others).
#[tokio::test]
async fn an_entry_under_newer_rules_stops_the_node_before_applying() {
    use crate::lease::{Batch, ClusterConfig, Command, Rules};

    let dir = tempfile::tempdir().unwrap();
    let mut sm = open(dir.path(), &identity(1), tracker(), crate::config::DEFAULT_CACHE_MIB).unwrap().state_machine;
    let config = ClusterConfig { epoch_ms: 0, worker_id_bits: 2, sequence_bits: 12, ttl_ms_max: 1000, cool_down_ms: 0 };
    let entry = |index, rules| crate::raft::types::Entry {
        log_id: openraft::LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Batch {
            leader_wall_ms: 1,
            commands: vec![Command::Configure(config.clone())],
            rules,
        }),
    };
    let error = sm.apply(vec![entry(1, Rules(Rules::CURRENT.0 + 1))]).await.unwrap_err();
    assert!(error.to_string().contains("upgrade this node"), "{error}");
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied, None, "nothing of the entry was applied");
    sm.apply(vec![entry(1, Rules::CURRENT)]).await.unwrap();
}

/// Goal (review of incarnations): a grant that gives its holder's earlier ID up changes two
/// records; both are persisted, so a restarted node reloads exactly the table it applied
/// (before, the given-up ID reloaded still held and the holder index check failed on start).
#[tokio::test]
async fn a_given_up_id_is_persisted_with_the_grant() {
    use crate::lease::{
        Batch, ClusterConfig, Command, GrantExpectation, HolderId, Incarnation, Outcome, Rules, WorkerId,
    };

    let dir = tempfile::tempdir().unwrap();
    let applied = {
        let mut sm = open(dir.path(), &identity(1), tracker(), crate::config::DEFAULT_CACHE_MIB).unwrap().state_machine;
        let config =
            ClusterConfig { epoch_ms: 0, worker_id_bits: 2, sequence_bits: 12, ttl_ms_max: 60_000, cool_down_ms: 0 };
        let grant = |w, incarnation| Command::Grant {
            worker_id: WorkerId(w),
            holder: HolderId("h".into()),
            ttl_ms: 10_000,
            expect: GrantExpectation { token: Default::default(), last_renew: Default::default() },
            specific: false,
            owner: None,
            incarnation: Some(Incarnation(incarnation)),
            window_ms: 0,
        };
        let entry = |index, commands| crate::raft::types::Entry {
            log_id: openraft::LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Batch { leader_wall_ms: 1_000, commands, rules: Rules::CURRENT }),
        };
        sm.apply(vec![entry(1, vec![Command::Configure(config), Command::EnableRules(Rules::CURRENT)])]).await.unwrap();
        sm.apply(vec![entry(2, vec![grant(0, 1)])]).await.unwrap();
        let moved = sm.apply(vec![entry(3, vec![grant(1, 2)])]).await.unwrap();
        assert!(matches!(moved[0][0], Outcome::Granted(_)), "{moved:?}");
        let table = sm.shared().read().table.clone();
        assert!(table.record(WorkerId(0)).unwrap().holder.is_none(), "ID 0 was given up");
        table
    };
    let reopened = super::open_when_unlocked(dir.path(), &identity(1), tracker()).unwrap().state_machine;
    assert_eq!(reopened.shared().read().table, applied, "the reloaded table differs from the applied one");
}

/// Goal: every snapshot a process builds gets its own ID, even at the same applied position
/// (the count used to live in each new builder and so never moved past 1).
#[tokio::test]
async fn each_built_snapshot_has_its_own_id() {
    use openraft::RaftSnapshotBuilder;
    let (_disk, mut opened) = on_memory();
    opened.state_machine.apply(vec![blank_entry(1)]).await.unwrap();
    let first = opened.state_machine.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let second = opened.state_machine.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(first.meta.last_log_id, second.meta.last_log_id);
    assert_ne!(first.meta.snapshot_id, second.meta.snapshot_id);
    let current = opened.state_machine.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta.snapshot_id, second.meta.snapshot_id);
}

/// Goal: many concurrent flushes of one sled data dir all finish. With sled 0.34's
/// `flush_async` they could starve sled's IO pool for good (spacejam/sled#1308); `Db::flush`
/// keeps its flushes off that pool. A hang here is a failure by nextest's timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_flushes_of_a_data_dir_all_finish() {
    let (_dir, opened) = on_sled();
    let db = opened.log_store.db().clone();
    let tree = db.open_tree("flushes").unwrap();
    let flushes: Vec<_> = (0..200u32)
        .map(|i| {
            let (db, tree) = (db.clone(), tree.clone());
            tokio::spawn(async move {
                tree.insert(&i.to_be_bytes(), vec![7; 64]).unwrap();
                db.flush().await
            })
        })
        .collect();
    for flush in flushes {
        flush.await.unwrap().unwrap();
    }
}
