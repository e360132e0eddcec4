//! Tests of the snapshot store: files on a data dir (written, replaced, received, reopened,
//! cleaned after a crash, moved out of the tree of an older release) and the tree's forms.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder};
use tokio::io::AsyncReadExt;

use super::*;
use crate::clock::SystemClock;
use crate::expiry::ExpiryTracker;
use crate::lease::{Batch, ClusterConfig, Command, GrantExpectation, HolderId, LeaseTable};
use crate::storage::{open_when_unlocked, when_unlocked, DataDirIdentity, OpenedStorage};

fn open_dir(dir: &Path) -> OpenedStorage {
    let identity = DataDirIdentity { node_id: 1, cluster_id: "test".into() };
    // Several tests reopen a dir this process just dropped.
    open_when_unlocked(dir, &identity, ExpiryTracker::new(Arc::new(SystemClock))).unwrap()
}

/// The names in `<dir>/snapshots`, sorted.
fn snapshot_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join(SNAPSHOT_DIR))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Apply entries 1..=`last` to `opened`: a configuration, then one grant per entry.
async fn apply_grants(opened: &mut OpenedStorage, last: u64) {
    let config =
        ClusterConfig { epoch_ms: 0, worker_id_bits: 8, sequence_bits: 12, ttl_ms_max: 60_000, cool_down_ms: 0 };
    let entry = |index: u64, commands| crate::raft::types::Entry {
        log_id: openraft::LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Batch { leader_wall_ms: 1_000, commands, rules: Rules::CURRENT }),
    };
    let grant = |index: u64| Command::Grant {
        worker_id: crate::lease::WorkerId(u32::try_from(index).unwrap()),
        holder: HolderId(format!("holder-{index}")),
        ttl_ms: 10_000,
        expect: GrantExpectation { token: Default::default(), last_renew: Default::default() },
        specific: true,
        owner: None,
        incarnation: None,
        window_ms: 0,
    };
    let entries = (1..=last).map(|index| match index {
        1 => entry(1, vec![Command::Configure(config.clone())]),
        _ => entry(index, vec![grant(index)]),
    });
    opened.state_machine.apply(entries.collect::<Vec<_>>()).await.unwrap();
}

async fn read_all(snapshot: Snapshot) -> Vec<u8> {
    let mut data = Vec::new();
    let mut reader = snapshot.snapshot;
    reader.read_to_end(&mut data).await.unwrap();
    data
}

fn table_of(opened: &OpenedStorage) -> LeaseTable {
    opened.state_machine.shared().read().table.clone()
}

/// Goal (issue 11): on a data dir a snapshot is one file, not a value in sled; a newer one
/// replaces it (the old file is removed), and a reopened node serves the same snapshot.
#[tokio::test]
async fn a_built_snapshot_is_one_file_that_outlives_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let (first_id, second_id, data) = {
        let mut opened = open_dir(dir.path());
        apply_grants(&mut opened, 5).await;
        let first = opened.state_machine.get_snapshot_builder().await.build_snapshot().await.unwrap();
        assert!(matches!(*first.snapshot, SnapshotData::File { .. }), "a data dir keeps snapshots in files");
        let first_files = snapshot_files(dir.path());
        apply_grants(&mut opened, 9).await;
        let second = opened.state_machine.get_snapshot_builder().await.build_snapshot().await.unwrap();
        let files = snapshot_files(dir.path());
        assert_eq!(files.len(), 1, "{files:?}: the replaced snapshot's file is removed");
        assert_ne!(files, first_files, "a new snapshot is a new file");
        let current = opened.state_machine.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, second.meta);
        let data = read_all(current).await;
        let mut state: SmState = decode(&data).unwrap();
        state.table.reindex();
        assert_eq!(state.table, table_of(&opened), "the file holds the applied table");
        (first.meta.snapshot_id, second.meta.snapshot_id, data)
    };
    let mut reopened = open_dir(dir.path());
    let current = reopened.state_machine.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta.snapshot_id, second_id);
    assert_ne!(current.meta.snapshot_id, first_id);
    assert_eq!(read_all(current).await, data);
    assert_eq!(snapshot_files(dir.path()).len(), 1);
}

/// Goal (issue 11): a snapshot received from a leader is written into a file as it arrives,
/// installed from it (same table as the sender's), kept as the current one, and still there
/// after a restart; nothing of the receive is left behind.
#[tokio::test]
async fn a_received_snapshot_is_installed_from_its_file() {
    let (sender_dir, receiver_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut sender = open_dir(sender_dir.path());
    apply_grants(&mut sender, 7).await;
    let built = sender.state_machine.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let meta = built.meta.clone();
    let data = read_all(built).await;

    let mut receiver = open_dir(receiver_dir.path());
    let mut incoming = receiver.state_machine.begin_receiving_snapshot().await.unwrap();
    // Two chunks, as openraft sends them.
    let (head, tail) = data.split_at(data.len() / 2);
    for chunk in [head, tail] {
        tokio::io::AsyncWriteExt::write_all(&mut incoming, chunk).await.unwrap();
    }
    receiver.state_machine.install_snapshot(&meta, incoming).await.unwrap();
    assert_eq!(table_of(&receiver), table_of(&sender));
    let files = snapshot_files(receiver_dir.path());
    assert!(files.len() == 1 && files[0].ends_with(KEPT_SUFFIX), "{files:?}");
    drop(receiver);

    let mut reopened = open_dir(receiver_dir.path());
    assert_eq!(table_of(&reopened), table_of(&sender), "the installed table was persisted");
    let current = reopened.state_machine.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, meta);
    assert_eq!(read_all(current).await, data);
}

/// Goal (issue 11): what a crash leaves in the snapshot dir (a half-written build, an
/// unfinished receive, a file renamed into place but never named) is removed at open, the named
/// snapshot is kept, and later files never reuse a leftover's number.
#[tokio::test]
async fn leftovers_of_a_crash_are_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let kept = {
        let mut opened = open_dir(dir.path());
        apply_grants(&mut opened, 3).await;
        opened.state_machine.get_snapshot_builder().await.build_snapshot().await.unwrap().meta
    };
    let named = snapshot_files(dir.path());
    for stray in ["7.building", "8.receiving", "41.snap"] {
        std::fs::write(dir.path().join(SNAPSHOT_DIR).join(stray), b"partial").unwrap();
    }
    let mut opened = open_dir(dir.path());
    assert_eq!(snapshot_files(dir.path()), named, "only the named snapshot is left");
    assert_eq!(opened.state_machine.get_current_snapshot().await.unwrap().unwrap().meta, kept);
    opened.state_machine.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(snapshot_files(dir.path()), vec![format!("42{KEPT_SUFFIX}")]);
}

/// Goal (issue 11): a data dir written by a release that kept its snapshot in sled serves that
/// snapshot after the upgrade, moved into a file (once) and out of the tree.
#[tokio::test]
async fn a_snapshot_an_older_release_kept_in_the_tree_moves_into_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let (meta, data) = {
        let mut opened = open_dir(dir.path());
        apply_grants(&mut opened, 4).await;
        let state = opened.state_machine.shared().read().clone();
        let mut data = Vec::new();
        file::write_state(&mut data, &state).unwrap();
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership.clone(),
            snapshot_id: "1-1-4-1".into(),
        };
        (meta, data)
    };
    {
        // As the older release left it: the framed snapshot under `snapshot`, no file.
        let db = when_unlocked(|| sled::open(dir.path())).unwrap();
        let tree = db.open_tree("sm").unwrap();
        tree.insert(KEY_SNAPSHOT, encode_framed(&meta, &data).unwrap()).unwrap();
        db.flush().unwrap();
    }
    let mut opened = open_dir(dir.path());
    let current = opened.state_machine.get_current_snapshot().await.unwrap().unwrap();
    assert!(matches!(*current.snapshot, SnapshotData::File { .. }));
    assert_eq!(current.meta, meta);
    assert_eq!(read_all(current).await, data);
    assert_eq!(snapshot_files(dir.path()).len(), 1);
    drop(opened);
    let db = when_unlocked(|| sled::open(dir.path())).unwrap();
    assert!(db.open_tree("sm").unwrap().get(KEY_SNAPSHOT).unwrap().is_none(), "moved out of the tree");
}

/// Goal: a snapshot file someone removed is not an error that stops the node: the node starts
/// without a snapshot (openraft builds one at start when the log behind it was purged).
#[tokio::test]
async fn a_removed_snapshot_file_is_forgotten_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut opened = open_dir(dir.path());
        apply_grants(&mut opened, 2).await;
        opened.state_machine.get_snapshot_builder().await.build_snapshot().await.unwrap();
    }
    for name in snapshot_files(dir.path()) {
        std::fs::remove_file(dir.path().join(SNAPSHOT_DIR).join(name)).unwrap();
    }
    let mut opened = open_dir(dir.path());
    assert!(opened.state_machine.get_current_snapshot().await.unwrap().is_none());
}

/// Goal: a build that finishes after a newer snapshot was kept (a build running while a
/// snapshot is installed) does not turn the current snapshot back; its file is removed.
#[tokio::test]
async fn an_older_snapshot_finished_late_does_not_replace_a_newer_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut opened = open_dir(dir.path());
    apply_grants(&mut opened, 6).await;
    let state = opened.state_machine.shared().read().clone();
    let at = |index| SnapshotMeta {
        last_log_id: Some(openraft::LogId::new(CommittedLeaderId::new(1, 1), index)),
        last_membership: state.membership.clone(),
        snapshot_id: format!("at-{index}"),
    };
    let store = &opened.state_machine.snapshots;
    store.store_built(at(6), state.clone()).await.unwrap();
    let late = store.store_built(at(3), state.clone()).await.unwrap();
    assert_eq!(late.snapshot.meta.snapshot_id, "at-3", "openraft still gets what it asked for");
    assert_eq!(read_all(late.snapshot).await.len() as u64, late.bytes, "readable though its file is gone");
    assert_eq!(store.current().await.unwrap().unwrap().meta.snapshot_id, "at-6");
    assert_eq!(snapshot_files(dir.path()).len(), 1);
}

/// Goal (issue 11): a data dir written before snapshots were framed still serves its
/// snapshot (the JSON form: data as an array of numbers), a cluster not yet wholly on this
/// release still writes that form (a node rolled back can read it), and a framed one costs
/// its data plus the metadata, not 3.6 bytes per byte.
#[test]
fn a_snapshot_stored_before_the_frame_still_reads_and_a_framed_one_is_compact() {
    let meta = SnapshotMeta { snapshot_id: "3-41-2".into(), ..SnapshotMeta::default() };
    let data: Vec<u8> = encode(&serde_json::json!({"records": vec![[1_700_000_000_123u64, 42]; 500]})).unwrap();
    let legacy = encode(&serde_json::json!({ "meta": meta, "data": data })).unwrap();
    assert_eq!(decode_stored_snapshot(&legacy).unwrap(), (meta.clone(), data.clone()));
    let mid_upgrade = encode_stored_snapshot(&meta, &data, Rules::WINDOWS).unwrap();
    assert!(!is_framed(&mid_upgrade), "mid-upgrade: the form an older release reads");
    assert_eq!(decode_stored_snapshot(&mid_upgrade).unwrap(), (meta.clone(), data.clone()));

    let framed = encode_stored_snapshot(&meta, &data, Rules::CURRENT).unwrap();
    assert_eq!(decode_stored_snapshot(&framed).unwrap(), (meta, data.clone()));
    assert!(framed.len() < data.len() + 256, "{} bytes stored for {} bytes of data", framed.len(), data.len());
    assert!(legacy.len() > data.len() * 3, "the old form spelled each byte as a number");
}

/// Goal (review): a snapshot file whose bytes changed on disk (same length, one byte flipped:
/// the JSON might still parse) is never sent — reading it is an error naming it corrupt — and
/// the next start forgets and removes it (a new one is built from the state machine).
#[tokio::test]
async fn a_corrupt_snapshot_file_is_never_sent_and_is_forgotten_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut opened = open_dir(dir.path());
    apply_grants(&mut opened, 4).await;
    opened.state_machine.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let name = snapshot_files(dir.path()).pop().unwrap();
    let path = dir.path().join(SNAPSHOT_DIR).join(name);
    let mut bytes = std::fs::read(&path).unwrap();
    let digit = bytes.iter().position(u8::is_ascii_digit).unwrap();
    bytes[digit] = if bytes[digit] == b'9' { b'8' } else { bytes[digit] + 1 };
    std::fs::write(&path, bytes).unwrap();
    let refused = opened.state_machine.get_current_snapshot().await.unwrap_err().to_string();
    assert!(refused.contains("corrupt"), "{refused}");
    drop(opened);

    let mut reopened = open_dir(dir.path());
    assert!(reopened.state_machine.get_current_snapshot().await.unwrap().is_none());
    assert!(snapshot_files(dir.path()).is_empty(), "the corrupt file is removed");
}

/// Goal (review): a receive openraft drops before installing it (the leader moved on, or the
/// install failed) leaves no file behind, without a restart.
#[tokio::test]
async fn an_abandoned_receive_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut opened = open_dir(dir.path());
    let mut incoming = opened.state_machine.begin_receiving_snapshot().await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut incoming, b"\x01{\"partial\":").await.unwrap();
    assert_eq!(snapshot_files(dir.path()).len(), 1, "the receive is a file while it lasts");
    drop(incoming);
    assert!(snapshot_files(dir.path()).is_empty());
}
