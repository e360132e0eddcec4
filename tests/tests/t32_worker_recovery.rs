//! Workers through the recovery procedures of docs/operations.md and docs/failure-modes.md
//! (issue 14), with real processes: a worker started during the embargo after a backup
//! restore waits and serves once it lifts instead of exiting; an `auto` worker whose
//! remembered worker ID was quarantined takes another one, while an explicit `--worker-id`
//! on a quarantined ID refuses to start naming the quarantine.

use std::time::{Duration, Instant};

use fenceflake_proto::v1 as pb;
use fenceflake_tests::cluster::{ctl_json, json_of, Cluster, TEST_COOL_DOWN_MS};
use fenceflake_tests::worker::{WorkerProcess, SHORT_LEASE};

/// A short maximum TTL keeps the restore embargo (max TTL + cool-down) at 4.5 s; the workers
/// 2 s leases fit under it.
const MAX_TTL_MS: u64 = 4_000;

/// Restore a backup of a cluster that had granted one lease into a fresh cluster; returns the
/// fresh cluster (every worker ID now under the embargo) and an instant just before the
/// import, so no earlier than the embargo's start.
async fn restored_cluster(args: &[&str]) -> (Cluster, Instant) {
    let lost = Cluster::start(3, args).await;
    let acquire =
        pb::AcquireRequest { holder: "lost-holder".into(), worker_id: Some(4), ttl_ms: MAX_TTL_MS, incarnation: 0 };
    lost.client(1).acquire(acquire).await.expect("a lease in the lost cluster");
    let backup = lost.dir.path().join("backup.json");
    json_of(&ctl_json(&lost, &["snapshot", "export"], &backup));
    let fresh = Cluster::start(3, args).await;
    let importing = Instant::now();
    let restored = json_of(&ctl_json(&fresh, &["snapshot", "import"], &backup));
    assert_eq!(restored["worker_ids"].as_u64(), Some(1024), "{restored}");
    (fresh, importing)
}

/// Goal: issue 14 — after `ctl snapshot import` every worker ID is embargoed for max TTL +
/// cool-down. A worker started during the embargo (auto, and one with an explicit
/// `--worker-id`) does not exit: it logs the embargo once at WARN, naming when it lifts, keeps
/// retrying, and serves once it lifts, logging the grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_started_during_the_restore_embargo_waits_and_serves() {
    let max_ttl = format!("{MAX_TTL_MS}ms");
    // A short renew window: a restore raises every high-water mark that far past the embargo
    // (a lost holder's `mint_until` may lie a window ahead), and the default 30 s would keep
    // the workers waiting past this test's bounds.
    let (cluster, importing) = restored_cluster(&["--max-ttl", &max_ttl, "--renew-window", "2s"]).await;
    let registry = cluster.client_addrs();
    let mut auto = WorkerProcess::spawn(&cluster, "auto", &registry, &SHORT_LEASE);
    let mut explicit_args = SHORT_LEASE.to_vec();
    explicit_args.extend(["--worker-id", "7"]);
    let mut explicit = WorkerProcess::spawn(&cluster, "explicit", &registry, &explicit_args);

    // Before this change both exited within milliseconds ("no free worker ID").
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let embargo = Duration::from_millis(MAX_TTL_MS + TEST_COOL_DOWN_MS);
    assert!(importing.elapsed() < embargo, "the embargo lifted before the check; the machine is too slow");
    for w in [&mut auto, &mut explicit] {
        assert_eq!(w.exited(), None, "worker {} exited during the embargo:\n{}", w.name, w.log());
        let log = w.log();
        let warned = log.matches("embargoed after a backup restore").count();
        assert_eq!(warned, 1, "worker {} must warn about the embargo once:\n{log}", w.name);
        assert!(log.contains("lifts_in_ms"), "worker {} must say when it lifts:\n{log}", w.name);
    }

    let served = auto.wait_serving(Duration::from_secs(20)).await;
    assert!(importing.elapsed() >= embargo, "served before the embargo lifted");
    let pinned = explicit.wait_serving(Duration::from_secs(20)).await;
    assert_eq!(pinned.worker_id, 7);
    assert_ne!(served.worker_id, 7);
    for (w, status) in [(&auto, &served), (&explicit, &pinned)] {
        assert_eq!(status.token >> 56, 1, "granted in the restore's token generation: {status:?}");
        assert!(w.log().contains("worker ID granted after waiting for one"), "{}:\n{}", w.name, w.log());
        w.client().generate(pb::GenerateRequest {}).await.expect("Generate after the embargo");
    }
}

/// Goal: issue 14 / the canary runbook — an `auto` worker whose worker ID was quarantined
/// while it was down restarts with its state dir and serves with another worker ID (given one
/// as a new incarnation, or finding its remembered holder's ID quarantined and saying why). An explicit `--worker-id` on the
/// quarantined ID exits non-zero naming the quarantine.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auto_leaves_a_quarantined_remembered_id_and_explicit_refuses_it() {
    let cluster = Cluster::start(3, &[]).await;
    let registry = cluster.client_addrs();
    let mut worker = WorkerProcess::spawn(&cluster, "w", &registry, &SHORT_LEASE);
    let before = worker.wait_serving(Duration::from_secs(15)).await;
    // Minting persists a ceiling, so the restart reuses the holder identity (and would get
    // its own lease back if nothing had happened).
    worker.batch(1_000).await.expect("mint before the crash");
    worker.kill();
    let quarantine = pb::QuarantineRequest { worker_id: before.worker_id, reason: "suspected duplicate".into() };
    cluster.operator(1).quarantine(quarantine).await.expect("quarantine the worker's ID");

    worker.start();
    let after = worker.wait_serving(Duration::from_secs(15)).await;
    assert_ne!(after.worker_id, before.worker_id, "served with the quarantined ID");
    // The restart is a new incarnation: the registry may give it a free ID at once (its held
    // ID's mint window is still open), or answer QUARANTINED, and the worker then takes another
    // ID under a new holder, saying why.
    let log = worker.log();
    if after.holder != before.holder {
        assert!(log.contains("is quarantined; with --worker-id auto, taking another worker ID"), "{log}");
    } else {
        assert!(after.token > before.token, "a new incarnation under the same holder gets a new token");
    }
    worker.client().generate(pb::GenerateRequest {}).await.expect("Generate with the new ID");

    let id = before.worker_id.to_string();
    let mut pinned = WorkerProcess::spawn(&cluster, "pinned", &registry, &["--worker-id", &id]);
    let status = pinned.wait_exit(Duration::from_secs(15)).await;
    assert!(!status.success(), "started on a quarantined worker ID");
    let log = pinned.log();
    assert!(log.contains(&format!("worker ID {id} is quarantined")), "{log}");
    assert!(log.contains("suspected duplicate") && log.contains("ctl unquarantine"), "{log}");
}
