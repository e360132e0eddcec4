//! Backup and restore with `fenceflake ctl snapshot export/import` between two real clusters:
//! what a restore keeps, and the fences it puts up against the lost cluster's holders.

use std::time::{Duration, Instant};

use fenceflake_proto::v1 as pb;
use fenceflake_tests::cluster::{ctl_json, json_of, Cluster, TEST_COOL_DOWN_MS};
use fenceflake_tests::eventually;
use tonic::Code;

/// A short maximum TTL keeps the restore embargo (max TTL + cool-down) short.
const MAX_TTL_MS: u64 = 2000;

fn acquire(holder: &str, worker_id: Option<u32>) -> pb::AcquireRequest {
    pb::AcquireRequest { holder: holder.into(), worker_id, ttl_ms: MAX_TTL_MS, incarnation: 0 }
}

/// Goal: a backup restored into a fresh cluster keeps quarantines and the audit, grants no
/// worker ID before max TTL + cool-down has passed, fences the lost cluster's holders
/// (including one granted after the backup), issues tokens above all of theirs, and refuses
/// damaged files and a second restore. The same backup restored into a second cluster (issue
/// 9: restore generations never repeat) grants the same worker ID under another token value,
/// so a holder of either cannot renew against the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restore_keeps_state_and_embargoes_every_worker_id() {
    let max_ttl = format!("{MAX_TTL_MS}ms");
    let args = ["--max-ttl", max_ttl.as_str()];
    let dir = tempfile::tempdir().expect("temp dir");
    let backup = dir.path().join("backup.json");

    let lost = Cluster::start(3, &args).await;
    let mut c = lost.client(1);
    c.acquire(acquire("holder-a", Some(5))).await.expect("acquire 5");
    let reason = "suspected overlap".to_string();
    let quarantine = pb::QuarantineRequest { worker_id: 9, reason: reason.clone() };
    lost.operator(1).quarantine(quarantine).await.expect("quarantine 9");
    let exported = json_of(&ctl_json(&lost, &["snapshot", "export"], &backup));
    assert_eq!(exported["records"], 2, "{exported}");
    // Granted after the backup: the restored cluster cannot know this holder or its token.
    let after_backup = c.acquire(acquire("holder-late", Some(6))).await.expect("acquire 6").into_inner();
    drop(lost);

    let fresh = Cluster::start(3, &args).await;
    let damaged = dir.path().join("damaged.json");
    let text = std::fs::read_to_string(&backup).expect("read backup");
    std::fs::write(&damaged, text.replacen(&reason, "edited", 1)).expect("write damaged copy");
    let refused = ctl_json(&fresh, &["snapshot", "import"], &damaged);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("checksum mismatch"), "{refused:?}");

    let started = Instant::now();
    let restored = json_of(&ctl_json(&fresh, &["snapshot", "import"], &backup));
    assert_eq!((restored["generation"].as_u64(), restored["worker_ids"].as_u64()), (Some(1), Some(1024)));
    assert_eq!(restored["records"], 2, "{restored}");

    let mut c = fresh.client(2);
    let err = c.acquire(acquire("holder-new", None)).await.expect_err("embargo");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let stale = pb::RenewRequest { worker_id: 6, token: after_backup.token, wall_ms_at_send: 0, max_minted_ts_ms: 1 };
    let err = c.renew(stale).await.expect_err("lost holder renews");
    assert!(err.message().starts_with("FENCED:"), "{err:?}");
    let nine = c.get_lease(pb::GetLeaseRequest { worker_id: 9 }).await.expect("get 9").into_inner();
    assert_eq!((nine.state.as_str(), nine.quarantine_reason.as_str()), ("QUARANTINED", reason.as_str()));
    let audit = fresh.operator(2).list_audit(pb::ListAuditRequest {}).await.expect("audit").into_inner();
    assert_eq!(audit.entries.len(), 1, "the operator quarantine is audited");
    let again = ctl_json(&fresh, &["snapshot", "import"], &backup);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already granted"), "{again:?}");

    // The twin's embargo runs while the first cluster's does.
    let twin = Cluster::start(1, &args).await;
    let twin_restored = json_of(&ctl_json(&twin, &["snapshot", "import"], &backup));
    assert_eq!(twin_restored["generation"].as_u64(), Some(1), "{twin_restored}");

    let lease = eventually(Duration::from_secs(15), "a grant after the embargo", || {
        let mut c = c.clone();
        async move { c.acquire(acquire("holder-new", Some(6))).await.ok().map(|r| r.into_inner()) }
    })
    .await;
    let embargo = Duration::from_millis(MAX_TTL_MS + TEST_COOL_DOWN_MS);
    assert!(started.elapsed() >= embargo, "granted after {:?}, before the {embargo:?} embargo", started.elapsed());
    assert!(lease.token > after_backup.token, "restored tokens must beat the lost cluster's");
    assert_eq!(lease.token >> 56, 1, "first restore generation");
    assert!(lease.not_before_ms >= restored["embargo_until_ms"].as_u64().expect("number"));

    let twin_client = twin.client(1);
    let twin_lease = eventually(Duration::from_secs(15), "the twin's grant after its embargo", || {
        let mut c = twin_client.clone();
        async move { c.acquire(acquire("holder-new", Some(6))).await.ok().map(|r| r.into_inner()) }
    })
    .await;
    assert_eq!(twin_lease.token >> 56, 1, "the same generation as the first restore");
    assert!(twin_lease.token > after_backup.token, "the twin's tokens beat the lost cluster's too");
    assert_ne!(twin_lease.token, lease.token, "two restores of one backup grant worker ID 6 under equal tokens");
}
