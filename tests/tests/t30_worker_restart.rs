//! Worker restarts with real processes: SIGKILL and an immediate restart on the same state
//! dir repeat no ID (the persisted ceiling; a new incarnation, so a new token), and SIGTERM
//! releases the lease and exits 0.

use std::collections::BTreeSet;
use std::time::Duration;

use fenceflake_proto::v1 as pb;
use fenceflake_tests::cluster::Cluster;
use fenceflake_tests::worker::{WorkerProcess, SHORT_LEASE};

/// Goal: safety mechanism 5 and incarnations. A worker SIGKILLed while minting and restarted
/// at once on the same state dir is the same holder but a new incarnation: it gets a new
/// token (the dead process's could never be renewed again), waits past its ceiling and the
/// previous token's mint window, and mints only IDs above every ID minted before the crash —
/// with `auto` (which may take a free worker ID rather than wait) and with an explicit ID
/// (which takes its own lease over). The wait is bounded by the TTL and the renew window.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_and_immediate_restart_repeat_no_id() {
    // A 2 s renew window: the next holder of an ID whose holder vanished waits up to a window
    // past the old mark (30 s by default), and this test waits for it within 15 s.
    let cluster = Cluster::start(5, &["--renew-window", "2s"]).await;
    for (name, id_args) in [("auto", &[][..]), ("explicit", &["--worker-id", "7"][..])] {
        let args: Vec<&str> = SHORT_LEASE.iter().copied().chain(id_args.iter().copied()).collect();
        let mut worker = WorkerProcess::spawn(&cluster, name, &cluster.client_addrs(), &args);
        let before_status = worker.wait_serving(Duration::from_secs(15)).await;
        let before = mint_then_crash(&mut worker).await;
        eprintln!("phase ({name}): SIGKILLed after {} IDs; restarting on the same state dir", before.len());
        let restarted = std::time::Instant::now();
        worker.start();
        let after_status = worker.wait_serving(Duration::from_secs(15)).await;
        eprintln!("phase ({name}): serving again {:?} after the restart", restarted.elapsed());
        assert_eq!(after_status.holder, before_status.holder, "{name}: the state dir names the same holder");
        assert!(after_status.token > before_status.token, "{name}: a restart is a new incarnation with a new token");
        if !id_args.is_empty() {
            assert_eq!(after_status.worker_id, before_status.worker_id, "{name}: the explicit ID was taken over");
        }
        let mut after = Vec::new();
        for _ in 0..20 {
            after.extend(worker.batch(2_000).await.expect("mint after the restart"));
        }
        let max_before = *before.iter().max().expect("minted before");
        let min_after = *after.iter().min().expect("minted after");
        assert!(min_after > max_before, "{name}: restart minted {min_after} <= {max_before} from before the crash");
        let all: BTreeSet<u64> = before.iter().chain(&after).copied().collect();
        assert_eq!(all.len(), before.len() + after.len(), "{name}: an ID repeated");
        worker.kill();
    }
}

/// Mint for a while, then SIGKILL the worker while a batch may be in flight; every ID seen.
async fn mint_then_crash(worker: &mut WorkerProcess) -> Vec<u64> {
    let mut before = Vec::new();
    for _ in 0..20 {
        before.extend(worker.batch(2_000).await.expect("mint before the crash"));
    }
    let client = worker.client();
    let in_flight = tokio::spawn(async move {
        let mut c = client;
        c.generate_batch(pb::GenerateBatchRequest { count: 50_000 }).await
    });
    worker.kill();
    if let Ok(Ok(batch)) = in_flight.await {
        before.extend(batch.into_inner().ranges.iter().flat_map(|r| r.first..r.first + u64::from(r.count)));
    }
    before
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
