//! The balancing client against a gray failure: of three workers one is SIGSTOPped (it
//! accepts connections but never answers). `fenceflake mint` through all three still mints
//! every ID, sends the hung worker a single real request (hedged around, then suspect and
//! ejected; probes are not requests), and says so in its `--stats` counters.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use fenceflake_proto::tls::Role;
use fenceflake_tests::cluster::Cluster;
use fenceflake_tests::worker::WorkerProcess;

/// Goal: a hung worker costs its callers one hedge delay, not a call timeout per visit:
/// with the hung worker first in the list (so the very first call goes to it), 200 single
/// IDs are minted, the hung worker got exactly one attempt and no answer, at least one hedge
/// was sent, and the healthy workers answered every call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mint_routes_around_a_sigstopped_worker() {
    let cluster = Cluster::start(3, &[]).await;
    let registry = cluster.client_addrs();
    let workers: Vec<WorkerProcess> =
        ["hung", "b", "c"].iter().map(|name| WorkerProcess::spawn(&cluster, name, &registry, &[])).collect();
    for worker in &workers {
        worker.wait_serving(Duration::from_secs(20)).await;
    }
    let addrs: Vec<&str> = workers.iter().map(|w| w.addr.as_str()).collect();
    workers[0].signal("STOP");

    let started = Instant::now();
    let out = cluster
        .fenceflake(Role::Client)
        .args(["mint", "--workers", &addrs.join(","), "-n", "200", "--stats"])
        .env_remove("RUST_LOG")
        .output()
        .expect("run fenceflake mint");
    let elapsed = started.elapsed();
    workers[0].signal("CONT");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "mint failed: {stderr}");
    let ids: BTreeSet<u64> =
        String::from_utf8(out.stdout).expect("utf-8").lines().map(|l| l.parse().expect("an ID per line")).collect();
    assert_eq!(ids.len(), 200, "200 distinct IDs");

    let stats: serde_json::Value = serde_json::from_str(stderr.lines().last().expect("a stats line")).expect("JSON");
    eprintln!("mint with one hung worker took {elapsed:?}; stats {stats}");
    let per_worker = stats["workers"].as_array().expect("workers");
    let hung = &per_worker[0];
    assert_eq!(hung["addr"], addrs[0]);
    assert_eq!(hung["attempts"], 1, "the hung worker got one real request, then none: {stats}");
    assert_eq!(hung["answers"], 0, "{stats}");
    assert_eq!(hung["admitted"], false, "suspect or ejected at the end: {stats}");
    assert!(stats["hedges"].as_u64().expect("hedges") >= 1, "the first call was hedged: {stats}");
    let healthy: u64 = per_worker[1..].iter().map(|w| w["answers"].as_u64().expect("answers")).sum();
    assert!(healthy >= 200, "the healthy workers answered every call: {stats}");
}
