//! The lost-disk guard fails closed (issue 9): a registry node that starts without Raft state
//! never takes part in the cluster on silence, and a node that lost its disk never helps a
//! minority that missed a grant elect a leader that reports the granted worker ID free.

use std::time::Duration;

use fenceflake_proto::v1 as pb;
use fenceflake_tests::certs::Certs;
use fenceflake_tests::cluster::Cluster;
use fenceflake_tests::eventually;

/// What a node logs while its guard waits for answers.
const WAITING: &str = "not starting until the answers prove it safe";

/// Goal: empty nodes with too few peers answering do not start: node 1 (the bootstrapper) of
/// a new five-node cluster with no peer reachable, then with node 2, keeps asking and says
/// whom it waits for; neither bootstraps or serves; once the other three start, the cluster
/// forms (waiting is not a hang).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_nodes_without_enough_answers_keep_waiting_visibly() {
    let mut cluster = Cluster::unstarted(Certs::new(), 5, &[], &[]);
    cluster.spawn(1);
    eventually(Duration::from_secs(10), "node 1, alone, to log that nobody answers", || async {
        let log = cluster.log(1);
        (log.contains(WAITING) && log.contains("2: no answer, 3: no answer, 4: no answer, 5: no answer")).then_some(())
    })
    .await;
    cluster.spawn(2);
    eventually(Duration::from_secs(10), "node 1 to log what it waits for", || async {
        let log = cluster.log(1);
        (log.contains(WAITING) && log.contains("2: empty") && log.contains("3: no answer")).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for node_id in [1, 2] {
        assert!(cluster.wait_exit(node_id, Duration::ZERO).await.is_none(), "node {node_id} must keep waiting");
        let log = cluster.log(node_id);
        assert!(log.contains(WAITING) && log.contains("not yet: {3,4,5}"), "node {node_id}: {log}");
        for never in ["bootstrapped a new cluster", "registry node serving", "this node is the leader"] {
            assert!(!log.contains(never), "node {node_id} logged {never:?} without every member answering: {log}");
        }
    }
    for node_id in 3..=5 {
        cluster.spawn(node_id);
    }
    cluster.wait_all_know_the_leader(Duration::from_secs(20)).await;
}

/// Goal: the reproduced failure. A grant commits on three of five nodes while the other two
/// are SIGSTOPped; every node stops; one of the three loses its data dir and starts together
/// with the two that never saw the grant. The wiped node must refuse (the two remember it
/// serving) instead of giving them a quorum, so no node reports the granted ID free; when the
/// other two of the three return, the grant is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_node_never_gives_a_minority_that_missed_a_grant_a_quorum() {
    let mut cluster = Cluster::start(5, &[]).await;
    eventually(Duration::from_secs(15), "every node to have applied every node's record of serving", || async {
        for node_id in 1..=5 {
            cluster.status(node_id).await.filter(|s| s.served_node_ids.len() == 5)?;
        }
        Some(())
    })
    .await;
    let leader = cluster.wait_leader(Duration::from_secs(5)).await;
    let others: Vec<u64> = (1..=5).filter(|n| *n != leader).collect();
    let (missed, saw) = ([others[0], others[1]], [leader, others[2], others[3]]);
    for node_id in missed {
        cluster.signal(node_id, "STOP");
    }
    let request = pb::AcquireRequest { holder: "granted".into(), worker_id: Some(7), ttl_ms: 60_000, incarnation: 0 };
    let grant = cluster.client(leader).acquire(request).await.expect("a grant on three of five").into_inner();
    for node_id in 1..=5 {
        cluster.kill(node_id);
    }

    let wiped = saw[1];
    cluster.wipe(wiped);
    for node_id in [wiped, missed[0], missed[1]] {
        cluster.spawn(node_id);
    }
    let exit = cluster.wait_exit(wiped, Duration::from_secs(15)).await;
    assert!(exit.is_some_and(|e| !e.success()), "the wiped node must refuse: {exit:?}\n{}", cluster.log(wiped));
    assert!(cluster.log(wiped).contains("its disk was lost"), "{}", cluster.log(wiped));
    for node_id in missed {
        match cluster.client(node_id).get_lease(pb::GetLeaseRequest { worker_id: 7 }).await {
            Ok(info) => assert_ne!(info.into_inner().state, "FREE", "node {node_id} reports the granted ID free"),
            // Without a quorum it cannot answer at all, which is what must happen.
            Err(status) => eprintln!("node {node_id} without a quorum: {status:?}"),
        }
    }

    cluster.spawn(saw[0]);
    cluster.spawn(saw[2]);
    let info = eventually(Duration::from_secs(20), "the grant, read through a node that missed it", || async {
        let info = cluster.client(missed[0]).get_lease(pb::GetLeaseRequest { worker_id: 7 }).await.ok()?;
        Some(info.into_inner())
    })
    .await;
    assert_eq!((info.state.as_str(), info.holder.as_str(), info.token), ("HELD", "granted", grant.token));
}
