//! Two processes, one worker ID: a duplicate explicit claim is refused at start, and a
//! process paused (SIGSTOP) past its TTL mints nothing after SIGCONT — it is FENCED and
//! parks — while the new holder of the same worker ID serves.

use std::collections::BTreeSet;
use std::time::Duration;

use fenceflake_proto::v1 as pb;
use fenceflake_tests::cluster::Cluster;
use fenceflake_tests::eventually;
use fenceflake_tests::worker::{WorkerProcess, SHORT_LEASE};

/// Goal: a second worker started with the same explicit --worker-id exits non-zero with a
/// message naming the worker ID and the current holder; the first keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_explicit_worker_id_is_refused() {
    let cluster = Cluster::start(5, &[]).await;
    let registry = cluster.client_addrs();
    let first = WorkerProcess::spawn(&cluster, "first", &registry, &["--worker-id", "7"]);
    let holder = first.wait_serving(Duration::from_secs(15)).await.holder;
    let mut second = WorkerProcess::spawn(&cluster, "second", &registry, &["--worker-id", "7"]);
    let status = second.wait_exit(Duration::from_secs(15)).await;
    assert!(!status.success(), "the duplicate worker started");
    let log = second.log();
    assert!(log.contains("worker ID 7") && log.contains(&holder), "message must name ID and holder:\n{log}");
    assert_eq!(first.status().await.expect("first still answers").state, "SERVING");
}

/// Goal: safety mechanisms 1–3 with real processes. A worker SIGSTOPped past its TTL loses
/// the worker ID to a new holder; after SIGCONT it mints nothing (every call UNAVAILABLE),
/// its renewal is FENCED and it exits non-zero (issue 9: a worker that can never mint again
/// gets out of the way), while the new holder serves. No ID repeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paused_worker_is_fenced_and_the_new_holder_serves() {
    // A 2 s renew window: the next holder of an ID whose holder vanished waits up to a window
    // past the old mark (30 s by default), and this test waits for it within 15 s.
    let cluster = Cluster::start(5, &["--renew-window", "2s"]).await;
    let registry = cluster.client_addrs();
    let mut lease_args = SHORT_LEASE.to_vec();
    lease_args.extend(["--worker-id", "9"]);
    let mut old = WorkerProcess::spawn(&cluster, "old", &registry, &lease_args);
    old.wait_serving(Duration::from_secs(15)).await;
    let mut ids: Vec<u64> = old.batch(5_000).await.expect("old mints");
    let old_token = old.status().await.expect("status").token;

    eprintln!("phase: SIGSTOP the old holder; waiting for its lease to expire");
    old.signal("STOP");
    let mut registry_client = cluster.client(1);
    eventually(Duration::from_secs(15), "worker ID 9 to expire", || {
        let mut c = registry_client.clone();
        async move {
            let info = c.get_lease(pb::GetLeaseRequest { worker_id: 9 }).await.ok()?.into_inner();
            (info.state == "EXPIRED").then_some(())
        }
    })
    .await;
    let new = WorkerProcess::spawn(&cluster, "new", &registry, &lease_args);
    let new_status = new.wait_serving(Duration::from_secs(15)).await;
    assert_eq!(new_status.worker_id, 9);
    assert!(new_status.token > old_token, "the new grant has a larger token");
    ids.extend(new.batch(5_000).await.expect("new mints"));

    eprintln!("phase: SIGCONT the old holder: it must mint nothing, learn FENCED and exit non-zero");
    old.signal("CONT");
    let mut old_client = old.client();
    for _ in 0..20 {
        let err = old_client.generate(pb::GenerateRequest {}).await.expect_err("the old holder minted after SIGCONT");
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let exit = old.wait_exit(Duration::from_secs(15)).await;
    assert!(!exit.success(), "a fenced worker must exit non-zero (its supervisor restarts it): {exit:?}");
    let log = old.log();
    assert!(log.contains("lease lost for good") && log.contains("FENCED"), "FENCED must be logged:\n{log}");

    ids.extend(new.batch(5_000).await.expect("new still serves"));
    let unique: BTreeSet<u64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "an ID was minted twice");
    let lease = registry_client.get_lease(pb::GetLeaseRequest { worker_id: 9 }).await.expect("lease").into_inner();
    assert_eq!(lease.state, "HELD", "the canary quarantined the ID: {lease:?}");
}
