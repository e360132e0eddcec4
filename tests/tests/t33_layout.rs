//! The registry owns the whole ID layout (issue 9, point 2), with real processes: the epoch,
//! the worker-ID width and the sequence width are fixed when the cluster bootstraps and
//! stated in every grant and in `ClusterStatus`. A worker without `--sequence-bits` mints with
//! the cluster's layout; one given a width that disagrees exits non-zero naming both values
//! and mints nothing; a registry node restarted with a layout flag that disagrees with its data
//! dir refuses to start, naming the flag and both values.

use std::time::Duration;

use fenceflake_tests::cluster::Cluster;
use fenceflake_tests::eventually;
use fenceflake_tests::worker::{WorkerProcess, SHORT_LEASE};

/// The worker ID and sequence of `id` in a layout with `worker_id_bits` and `sequence_bits`.
fn fields(id: u64, worker_id_bits: u32, sequence_bits: u32) -> (u64, u64) {
    ((id >> sequence_bits) & ((1 << worker_id_bits) - 1), id & ((1 << sequence_bits) - 1))
}

/// Start a worker with `flags` (plus a short lease) that must refuse to start; assert that it
/// exits non-zero naming `flag` and `cluster` and never served.
async fn refused(cluster: &Cluster, name: &str, flags: &[&str], flag: u8, cluster_bits: u8) {
    let mut args = SHORT_LEASE.to_vec();
    args.extend_from_slice(flags);
    let mut worker = WorkerProcess::spawn(cluster, name, &cluster.client_addrs(), &args);
    let status = worker.wait_exit(Duration::from_secs(30)).await;
    let log = worker.log();
    assert!(!status.success(), "a worker with a disagreeing --sequence-bits started:\n{log}");
    assert!(
        log.contains(&format!("--sequence-bits {flag} disagrees"))
            && log.contains(&format!("{cluster_bits} sequence bits")),
        "the refusal must name both values:\n{log}"
    );
    assert!(!log.contains("worker serving"), "it served before refusing:\n{log}");
}

/// Goal: issue 9 — restarting a worker ID with 11 instead of 12 sequence bits reproduced
/// hundreds of thousands of IDs. Against a cluster with 12, a worker given `--sequence-bits 11`
/// exits non-zero naming 11 and 12 and mints nothing; a worker without the flag mints with the
/// cluster's 12, as the cluster's status says.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disagreeing_sequence_width_is_refused_and_no_flag_mints_with_the_clusters() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_leader(Duration::from_secs(15)).await;
    let status = cluster.status(leader).await.expect("cluster status");
    assert_eq!((status.worker_id_bits, status.sequence_bits), (10, 12), "the layout is stated: {status:?}");

    refused(&cluster, "eleven", &["--sequence-bits", "11"], 11, 12).await;

    let worker = WorkerProcess::spawn(&cluster, "plain", &cluster.client_addrs(), &SHORT_LEASE);
    let serving = worker.wait_serving(Duration::from_secs(20)).await;
    assert_eq!((serving.worker_id_bits, serving.sequence_bits), (10, 12), "{serving:?}");
    for id in worker.batch(5_000).await.expect("mint with the cluster's layout") {
        assert_eq!(fields(id, 10, 12).0, u64::from(serving.worker_id), "ID {id} is not in the cluster's layout");
    }
}

/// Goal: issue 9 — the layout a worker mints with is the cluster's, not a default: in a
/// cluster bootstrapped with `--sequence-bits 14`, a worker without the flag mints 14-bit
/// sequences (one millisecond holds more than 4096 IDs), and one given the old default, 12,
/// refuses naming 12 and 14.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_without_the_flag_takes_a_non_default_width_from_the_cluster() {
    let cluster = Cluster::start(3, &["--sequence-bits", "14"]).await;
    let leader = cluster.wait_leader(Duration::from_secs(15)).await;
    let status = cluster.status(leader).await.expect("cluster status");
    assert_eq!(status.sequence_bits, 14, "{status:?}");

    let worker = WorkerProcess::spawn(&cluster, "wide", &cluster.client_addrs(), &SHORT_LEASE);
    let serving = worker.wait_serving(Duration::from_secs(20)).await;
    assert_eq!(serving.sequence_bits, 14, "{serving:?}");
    let ids = worker.batch(20_000).await.expect("mint with the cluster's layout");
    assert!(ids.iter().all(|id| fields(*id, 10, 14).0 == u64::from(serving.worker_id)), "IDs outside the layout");
    let largest_sequence = ids.iter().map(|id| fields(*id, 10, 14).1).max().unwrap_or(0);
    assert!(largest_sequence >= 4_096, "20000 IDs in few ms must use sequences past 12 bits: {largest_sequence}");

    refused(&cluster, "twelve", &["--sequence-bits", "12"], 12, 14).await;
}

/// Goal: issue 9 — a registry node restarted with `--worker-id-bits 11` on a data dir whose
/// cluster has 10 refuses to start, naming the flag, both values and where to read on; with
/// the flags left out, or given the cluster's values, it rejoins.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_registry_node_with_a_disagreeing_layout_flag_refuses_to_start() {
    let mut cluster = Cluster::start(3, &[]).await;
    // Node 3 must have applied the cluster config, and sled (which flushes applied state
    // every 500 ms, the log being durable already) written it, before it is killed.
    eventually(Duration::from_secs(15), "node 3 to apply the cluster config", || async {
        cluster.status(3).await.filter(|s| s.worker_id_bits == 10 && s.sequence_bits == 12)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    cluster.kill(3);
    cluster.nodes.get_mut(&3).expect("node 3").extra_args = vec!["--worker-id-bits".into(), "11".into()];
    cluster.spawn(3);
    let exit = cluster.wait_exit(3, Duration::from_secs(20)).await.expect("node 3 must refuse to start");
    let log = cluster.log(3);
    assert!(!exit.success(), "node 3 started with a disagreeing --worker-id-bits:\n{log}");
    assert!(log.contains("--worker-id-bits 11 was given, but the cluster's is 10"), "{log}");
    assert!(log.contains("Change the ID layout"), "the refusal must say what to do:\n{log}");

    let agreeing = ["--worker-id-bits", "10", "--sequence-bits", "12", "--epoch-ms", "1704067200000"];
    cluster.nodes.get_mut(&3).expect("node 3").extra_args = agreeing.iter().map(|s| s.to_string()).collect();
    cluster.spawn(3);
    cluster.wait_all_know_the_leader(Duration::from_secs(20)).await;
    assert_eq!(cluster.status(3).await.expect("node 3 answers").worker_id_bits, 10);
}
