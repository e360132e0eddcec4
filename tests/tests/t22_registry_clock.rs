//! Registry clocks (issue 9, point 6): a registry node whose wall clock jumps ten minutes
//! ahead while it leads stops leading, never leads again while it is off, says so in its log
//! and metrics, and the cluster's time stays the quorum's: a worker started against every
//! node serves and never parks CLOCK_SKEW, and an Acquire through the fast node is stamped
//! with the cluster's time. Once its clock is back, the node may lead again.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fenceflake_proto::v1 as pb;
use fenceflake_tests::cluster::Cluster;
use fenceflake_tests::worker::{WorkerProcess, SHORT_LEASE};
use fenceflake_tests::{eventually, free_port};

const FAST: u64 = 5;

/// Node `FAST` restarted under libfaketime, its wall clock offset read from a file on every
/// read (the monotonic clock stays real), with a metrics endpoint.
struct FakeTimeNode {
    metrics_addr: String,
}

impl FakeTimeNode {
    /// Restart node `node_id` of `cluster` (stopped before) with its wall clock under
    /// `offset_file`.
    fn spawn(cluster: &mut Cluster, node_id: u64, lib: &Path, offset_file: &Path) -> FakeTimeNode {
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let env = [
            ("LD_PRELOAD", lib.as_os_str()),
            ("FAKETIME_TIMESTAMP_FILE", offset_file.as_os_str()),
            ("FAKETIME_NO_CACHE", OsStr::new("1")),
            ("DONT_FAKE_MONOTONIC", OsStr::new("1")),
        ];
        cluster.spawn_with(node_id, &["--metrics-addr", &metrics_addr], &env);
        FakeTimeNode { metrics_addr }
    }

    /// The value of the unlabelled gauge `name` on its metrics endpoint, if it answers.
    fn gauge(&self, name: &str) -> Option<f64> {
        let mut stream = TcpStream::connect(&self.metrics_addr).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").ok()?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply).ok()?;
        reply.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }
}

/// Hand leadership to `node_id` until every node agrees it leads.
async fn lead_with(cluster: &Cluster, node_id: u64, what: &str) {
    eventually(Duration::from_secs(20), what, || async {
        if agreed_leader(cluster).await == Some(node_id) {
            return Some(());
        }
        let request = pb::TransferLeaderRequest { to_node_id: Some(node_id) };
        let _ = cluster.operator(1).transfer_leader(request).await;
        None
    })
    .await;
}

/// The leader as every node that answers sees it, if they agree on one.
async fn agreed_leader(cluster: &Cluster) -> Option<u64> {
    let mut seen = None;
    for node_id in cluster.nodes.keys() {
        let leader = cluster.status(*node_id).await?.leader_id;
        if leader == 0 || seen.is_some_and(|s| s != leader) {
            return None;
        }
        seen = Some(leader);
    }
    seen
}

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_millis() as u64
}

/// Goal: issue 9 point 6 — one of five registry nodes leads, then its wall clock jumps ten
/// minutes ahead (libfaketime). It steps aside within seconds and does not lead again; its
/// log says why; a worker started against all five nodes serves and never parks CLOCK_SKEW;
/// an Acquire sent through the fast node carries the cluster's time, not the fast clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fast_leader_steps_aside_and_workers_serve() {
    let Some(lib) = fenceflake_tests::libfaketime() else {
        fenceflake_tests::skip_unless_required("the registry clock test", "libfaketime (Debian libfaketime)");
        return;
    };
    let mut cluster = Cluster::start(5, &[]).await;
    cluster.kill(FAST);
    let offset_file = cluster.dir.path().join("clock-offset");
    std::fs::write(&offset_file, "+0\n").expect("write offset");
    let fast = FakeTimeNode::spawn(&mut cluster, FAST, &lib, &offset_file);
    lead_with(&cluster, FAST, "node 5 back under libfaketime, leading").await;

    std::fs::write(&offset_file, "+600\n").expect("step node 5's clock ten minutes ahead");
    let stepped = std::time::Instant::now();
    let leader = eventually(Duration::from_secs(15), "another node to lead", || async {
        agreed_leader(&cluster).await.filter(|l| *l != FAST)
    })
    .await;
    eprintln!("node {FAST} stepped aside {:?} after its clock jumped; node {leader} leads", stepped.elapsed());
    let log = cluster.log(FAST);
    assert!(log.contains("clock check failed"), "node {FAST} must say why it does not lead:\n{log}");
    assert_eq!(fast.gauge("fenceflake_registry_clock_excluded"), Some(1.0));
    let offset = fast.gauge("fenceflake_registry_clock_offset_seconds").expect("offset gauge");
    assert!((offset - 600.0).abs() < 5.0, "node {FAST} reports an offset of {offset} s, not ten minutes");

    let worker = WorkerProcess::spawn(&cluster, "w1", &cluster.client_addrs(), &SHORT_LEASE);
    worker.wait_serving(Duration::from_secs(20)).await;
    // A few renewals (every ttl/3 ≈ 0.7 s), some of them through the fast node.
    for _ in 0..20 {
        let status = worker.status().await.expect("worker answers");
        assert_ne!(status.park_reason, "CLOCK_SKEW", "the worker parked on the registry's clock: {status:?}");
        assert!(!worker.batch(10).await.expect("worker mints").is_empty());
        for node_id in cluster.nodes.keys() {
            let leader = cluster.status(*node_id).await.map(|s| s.leader_id);
            assert_ne!(leader, Some(FAST), "node {FAST} leads again with its clock ten minutes ahead");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!worker.log().contains("CLOCK_SKEW"), "worker log:\n{}", worker.log());

    // The fast node forwards; the reply carries the leader's time, within a second of ours.
    let request =
        pb::AcquireRequest { holder: "through-the-fast-node".into(), worker_id: None, ttl_ms: 10_000, incarnation: 0 };
    let before = wall_ms();
    let lease = cluster.client(FAST).acquire(request).await.expect("acquire through node 5").into_inner();
    let after = wall_ms();
    assert!(
        lease.registry_time_ms + 1_000 >= before && lease.registry_time_ms <= after + 1_000,
        "registry_time_ms {} is not the cluster's time [{before}, {after}]",
        lease.registry_time_ms
    );

    // Its clock back in line, the node campaigns again: a transfer to it succeeds.
    std::fs::write(&offset_file, "+0\n").expect("put node 5's clock back");
    lead_with(&cluster, FAST, "node 5 to lead again once its clock is back").await;
    assert_eq!(fast.gauge("fenceflake_registry_clock_excluded"), Some(0.0));
    worker.wait_serving(Duration::from_secs(5)).await;
}
