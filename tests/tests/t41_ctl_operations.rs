//! The operators' path through `ctl` with real processes: the health verdict and its exit
//! status, replication progress taken from the leader, add-member through followers,
//! transfer-leader, and the small things (a peer port, a closed pipe, the leader's removal).

use std::process::{Output, Stdio};
use std::time::Duration;

use fenceflake_proto::tls::Role;
use fenceflake_tests::cluster::Cluster;
use fenceflake_tests::eventually;

/// `fenceflake ctl --registry <registry> <args>` as `cluster`'s operator, run to completion.
fn ctl(cluster: &Cluster, registry: &str, args: &[&str]) -> Output {
    cluster.fenceflake(Role::Operator).args(["ctl", "--registry", registry]).args(args).output().expect("run ctl")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Goal: `ctl status` says whether the cluster can commit and exits 0 / 3 accordingly, and
/// shows replication progress as the leader reports it even when asked through followers
/// (a follower reports 0 for every member). With three of five nodes killed the leader
/// still "leads" and every member is still listed: only the verdict tells.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_verdict_and_exit_status_follow_the_quorum() {
    let mut cluster = Cluster::start(5, &[]).await;
    let leader = cluster.wait_all_know_the_leader(Duration::from_secs(10)).await;
    let followers: Vec<u64> = (1..=5).filter(|n| *n != leader).collect();
    // Only followers are named: ctl must find the leader through the membership.
    let via_follower = cluster.nodes[&followers[0]].client_addr.clone();
    let out = ctl(&cluster, &via_follower, &["status"]);
    let table = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{table}{}", text(&out.stderr));
    assert!(table.starts_with("health: serving"), "{table}");
    let json: serde_json::Value =
        serde_json::from_slice(&ctl(&cluster, &via_follower, &["status", "--json"]).stdout).unwrap();
    assert_eq!(json["health"]["verdict"], "serving");
    assert_eq!(json["reported_by_leader"], true);
    let commit = json["commit_index"].as_u64().unwrap();
    for member in json["members"].as_array().unwrap() {
        let matched = member["matched_index"].as_u64().unwrap_or(0);
        assert!(matched > 0 && matched <= commit + 1, "matched index from the leader: {member}");
    }

    for node_id in &followers[..3] {
        cluster.kill(*node_id);
    }
    let survivor = cluster.nodes[&followers[3]].client_addr.clone();
    // Both turn at the leader lease after the kill (the quorum-ack age and each dead member's
    // last ack): wait for the settled view, not one taken on the edge.
    let table = eventually(Duration::from_secs(10), "ctl status to see the lost quorum", || async {
        let out = ctl(&cluster, &survivor, &["status"]);
        let table = text(&out.stdout);
        (out.status.code() == Some(3) && table.matches("  NO").count() >= 3).then_some(table)
    })
    .await;
    assert!(table.starts_with("health: no quorum"), "{table}");
}

/// Goal: `add-member` completes (learner, caught up, voter) when the addresses given to ctl
/// are followers; `transfer-leader --to` moves leadership there; removing the leader is
/// refused with the command that helps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_member_through_followers_then_transfer_and_remove() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_all_know_the_leader(Duration::from_secs(10)).await;
    let followers: Vec<String> =
        (1..=3).filter(|n| *n != leader).map(|n| cluster.nodes[&n].client_addr.clone()).collect();
    let via = followers.join(",");
    let (peer_addr, client_addr) = {
        let fresh = cluster.add_node(4);
        (fresh.peer_addr.clone(), fresh.client_addr.clone())
    };
    cluster.spawn(4);
    let out = ctl(&cluster, &via, &["add-member", "4", "--peer-addr", &peer_addr, "--client-addr", &client_addr]);
    assert!(out.status.success(), "add-member: {}{}", text(&out.stdout), text(&out.stderr));
    let status = cluster.status(leader).await.expect("leader status");
    assert!(status.members.iter().any(|m| m.node_id == 4 && m.voter), "{status:?}");

    let out = ctl(&cluster, &via, &["transfer-leader", "--to", "4"]);
    assert!(out.status.success(), "transfer-leader: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("to node 4"), "{}", text(&out.stdout));
    assert_eq!(cluster.wait_all_know_the_leader(Duration::from_secs(10)).await, 4);

    let out = ctl(&cluster, &via, &["remove-member", "4"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("transfer-leader"), "{}", text(&out.stderr));
}

/// Goal: ctl pointed at a peer port says what it is talking to; `ctl leases | head` (a
/// reader that goes away) ends quietly, with no panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_port_and_a_closed_pipe_get_plain_answers() {
    let cluster = Cluster::start(3, &[]).await;
    let peer = cluster.nodes[&1].peer_addr.clone();
    let out = ctl(&cluster, &peer, &["leases"]);
    assert!(!out.status.success());
    // With a certificate ctl meets the peer port's gate (nodes only); without one, a port
    // that does not serve the Registry API.
    let says = text(&out.stderr);
    assert!(says.contains("peer port") || says.contains("peer or metrics port"), "{says}");

    let registry = cluster.client_addrs().join(",");
    let mut child = cluster
        .fenceflake(Role::Operator)
        .args(["ctl", "--registry", &registry, "leases", "--all"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ctl");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("ctl output");
    assert!(out.status.success(), "a closed pipe is not an error: {:?} {}", out.status, text(&out.stderr));
    assert!(!text(&out.stderr).contains("panicked"), "{}", text(&out.stderr));
}
