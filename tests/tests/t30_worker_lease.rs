//! Worker lease keeping against a real 5-node registry: a leader kill costs nothing, and a
//! registry outage longer than the TTL parks the workers, which resume with the same worker
//! ID and token once the registry is back.

use std::time::Duration;

use fenceflake_proto::v1 as pb;
use fenceflake_tests::cluster::Cluster;
use fenceflake_tests::worker::{WorkerProcess, SHORT_LEASE};
use tonic::Code;

/// Goal: SIGKILL of the registry leader does not park a worker: every Generate during the
/// failover succeeds and Status never reports PARKED (the TTL outlasts an election).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_kill_does_not_park_a_worker() {
    let mut cluster = Cluster::start(5, &[]).await;
    let worker = WorkerProcess::spawn(
        cluster.dir.path(),
        "w",
        &cluster.client_addrs(),
        &["--lease-ttl", "6s", "--margin", "1s"],
    );
    let before = worker.wait_serving(Duration::from_secs(15)).await;
    eprintln!("phase: worker {} serving; killing the leader", before.worker_id);
    let leader = cluster.wait_leader(Duration::from_secs(5)).await;
    cluster.kill(leader);
    // Mint and watch for longer than a whole TTL, so several renewals go to the new leader.
    let mut client = worker.client();
    let watch_until = tokio::time::Instant::now() + Duration::from_secs(7);
    let mut minted = 0;
    while tokio::time::Instant::now() < watch_until {
        client.generate(pb::GenerateRequest {}).await.expect("Generate during the failover");
        let status = worker.status().await.expect("status");
        assert_eq!(status.state, "SERVING", "parked during the failover: {status:?}");
        minted += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = worker.status().await.expect("status");
    assert_eq!((after.worker_id, after.token), (before.worker_id, before.token));
    eprintln!("phase: {minted} IDs minted across the failover, never parked");
}

/// Goal: with every registry node down for longer than the TTL, workers park
/// (LEASE_EXPIRED, Generate is UNAVAILABLE with the reason); when the nodes come back they
/// resume with the same worker ID and token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quorum_loss_parks_workers_and_restart_resumes_them() {
    let mut cluster = Cluster::start(5, &[]).await;
    let registry = cluster.client_addrs();
    let a = WorkerProcess::spawn(cluster.dir.path(), "a", &registry, &SHORT_LEASE);
    let b = WorkerProcess::spawn(cluster.dir.path(), "b", &registry, &SHORT_LEASE);
    let before = [a.wait_serving(Duration::from_secs(15)).await, b.wait_serving(Duration::from_secs(15)).await];
    eprintln!("phase: both serving; stopping every registry node");
    for node_id in 1..=5 {
        cluster.kill(node_id);
    }
    for w in [&a, &b] {
        w.wait_parked("LEASE_EXPIRED", Duration::from_secs(10)).await;
        let err = w.client().generate(pb::GenerateRequest {}).await.expect_err("minted while parked");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert_eq!(err.metadata().get("fenceflake-park-reason").and_then(|v| v.to_str().ok()), Some("LEASE_EXPIRED"));
    }
    eprintln!("phase: both parked; restarting the registry");
    for node_id in 1..=5 {
        cluster.spawn(node_id);
    }
    cluster.wait_leader(Duration::from_secs(20)).await;
    for (w, before) in [&a, &b].into_iter().zip(before) {
        let after = w.wait_serving(Duration::from_secs(20)).await;
        assert_eq!((after.worker_id, after.token), (before.worker_id, before.token), "{}", w.name);
        w.client().generate(pb::GenerateRequest {}).await.expect("Generate after resuming");
    }
}
