//! Worker restarts with real processes: SIGKILL and an immediate restart on the same state
//! dir repeat no ID (the persisted ceiling), and SIGTERM releases the lease and exits 0.

use std::collections::BTreeSet;
use std::time::Duration;

use fenceflake_proto::v1 as pb;
use fenceflake_tests::cluster::Cluster;
use fenceflake_tests::worker::{WorkerProcess, SHORT_LEASE};

/// Goal: safety mechanism 5. A worker SIGKILLed while minting and restarted at once with
/// the same state dir gets its lease back (same holder, worker ID and token), waits past its
/// ceiling, and mints only IDs above every ID minted before the crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_and_immediate_restart_repeat_no_id() {
    let cluster = Cluster::start(5, &[]).await;
    let mut worker = WorkerProcess::spawn(&cluster, "w", &cluster.client_addrs(), &SHORT_LEASE);
    let before_status = worker.wait_serving(Duration::from_secs(15)).await;
    let mut before = Vec::new();
    for _ in 0..20 {
        before.extend(worker.batch(2_000).await.expect("mint before the crash"));
    }
    // Crash while a batch may be in flight.
    let client = worker.client();
    let in_flight = tokio::spawn(async move {
        let mut c = client;
        c.generate_batch(pb::GenerateBatchRequest { count: 50_000 }).await
    });
    worker.kill();
    if let Ok(Ok(batch)) = in_flight.await {
        before.extend(batch.into_inner().ranges.iter().flat_map(|r| r.first..r.first + u64::from(r.count)));
    }
    eprintln!("phase: SIGKILLed after {} IDs; restarting on the same state dir", before.len());
    worker.start();
    let after_status = worker.wait_serving(Duration::from_secs(15)).await;
    assert_eq!(
        (after_status.worker_id, after_status.token, &after_status.holder),
        (before_status.worker_id, before_status.token, &before_status.holder),
        "the restart did not get its lease back"
    );
    let mut after = Vec::new();
    for _ in 0..20 {
        after.extend(worker.batch(2_000).await.expect("mint after the restart"));
    }
    let max_before = *before.iter().max().expect("minted before");
    let min_after = *after.iter().min().expect("minted after");
    assert!(min_after > max_before, "restart minted {min_after} <= {max_before} from before the crash");
    let all: BTreeSet<u64> = before.iter().chain(&after).copied().collect();
    assert_eq!(all.len(), before.len() + after.len(), "an ID repeated");
}

/// Goal: SIGTERM stops serving, persists the exact last timestamp, releases the lease (the
/// registry shows the worker ID free) and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_releases_the_lease_and_exits_zero() {
    let cluster = Cluster::start(5, &[]).await;
    let mut worker = WorkerProcess::spawn(&cluster, "w", &cluster.client_addrs(), &SHORT_LEASE);
    let status = worker.wait_serving(Duration::from_secs(15)).await;
    worker.batch(1_000).await.expect("mint");
    worker.signal("TERM");
    let exit = worker.wait_exit(Duration::from_secs(10)).await;
    assert!(exit.success(), "exit status {exit:?}");
    let lease = cluster
        .client(2)
        .get_lease(pb::GetLeaseRequest { worker_id: status.worker_id })
        .await
        .expect("lease")
        .into_inner();
    assert_eq!(lease.state, "FREE", "{lease:?}");
    let ceiling = std::fs::read_to_string(worker.state_dir.join("ceiling")).expect("ceiling file");
    assert!(ceiling.split(' ').nth(2) == Some("1"), "the exact last timestamp was not persisted: {ceiling}");
    assert!(worker.log().contains("lease released"));
}
