//! Pre-vote (registry/src/pre_vote.rs) in the simulator: a follower cut off from the leader
//! alone — the others still hear it — must not raise the term and depose it; without
//! pre-vote the same cut does (the control, so that the first test can fail).

use std::sync::Arc;
use std::time::Duration;

use fenceflake_proto::entropy;
use fenceflake_proto::v1 as pb;
use fenceflake_proto::v1::registry_client::RegistryClient;
use fenceflake_sim::clock::World;
use fenceflake_sim::identity::Identities;
use fenceflake_sim::nemesis::CHAOS;
use fenceflake_sim::net::Net;
use fenceflake_sim::nodes::{client_addr, SimNode, CLUSTER_ID};
use fenceflake_sim::recorder::Recorder;

/// The leader and term as the nodes report them: the node that says it leads, and its term.
async fn leader_and_term(net: &Arc<Net>, nodes: &[SimNode]) -> Option<(u64, u64)> {
    for node in nodes {
        let mut client = RegistryClient::new(net.channel(CHAOS, &client_addr(node.id)));
        let asked = tokio::time::timeout(Duration::from_secs(1), client.cluster_status(pb::ClusterStatusRequest {}));
        if let Ok(Ok(status)) = asked.await {
            if status.get_ref().state == "LEADER" {
                return Some((node.id, status.get_ref().term));
            }
        }
    }
    None
}

/// [`leader_and_term`] once some node says it leads, polled in simulated time, at most
/// `within` (`None` if none did).
async fn until_a_leader(net: &Arc<Net>, nodes: &[SimNode], within: Duration) -> Option<(u64, u64)> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(found) = leader_and_term(net, nodes).await {
            return Some(found);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Five nodes (each with `pre_vote`) under `seed`; once a leader serves, one follower is cut
/// from it in both directions for `cut`, then healed. The leader and term before the cut and
/// after the heal.
fn cut_a_follower_from_the_leader(seed: u64, pre_vote: bool, cut: Duration) -> ((u64, u64), (u64, u64)) {
    entropy::seed_this_thread(seed);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()))
        .build()
        .expect("a runtime");
    let outcome = runtime.block_on(async {
        let recorder = Arc::new(Recorder::new(World::starting_now()));
        let net = Net::new(seed, Identities::new(recorder.clone()));
        net.set_running(CHAOS, true);
        let members: Vec<u64> = (1..=5).collect();
        let mut nodes: Vec<SimNode> = members.iter().map(|id| SimNode::founding(*id, &members, CLUSTER_ID)).collect();
        for node in &mut nodes {
            node.timing.pre_vote = pre_vote;
            node.start(&net, &recorder);
        }
        let before = until_a_leader(&net, &nodes, Duration::from_secs(30)).await.expect("a leader within 30 s");
        // Let the leader settle (its lease rounds, the apply rules) before the fault.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = leader_and_term(&net, &nodes).await.filter(|now| *now == before).expect("the first leader stays");
        let follower = nodes.iter().find(|n| n.id != before.0).expect("a follower").name.clone();
        let leader = format!("r{}", before.0);
        net.cut(&follower, &leader);
        net.cut(&leader, &follower);
        tokio::time::sleep(cut).await;
        net.heal();
        // An observation window, not a wait for a condition: without pre-vote the cut-off
        // follower's higher term reaches the leader with its first append after the heal and
        // deposes it within an election; 5 s (simulated) is many elections.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let after = until_a_leader(&net, &nodes, Duration::from_secs(30)).await.expect("a leader after the heal");
        for node in &mut nodes {
            let pending = node.disk.pending_len();
            node.crash(&net, pending);
        }
        net.unbind_all();
        (before, after)
    });
    drop(runtime);
    entropy::unseed_this_thread();
    outcome
}

/// Goal: with pre-vote, a follower cut from the leader alone for 10 s (more than ten
/// election timeouts) asks for votes, the three followers that still hear the leader refuse,
/// and after the heal the same leader leads in the same term. Several seeds.
#[test]
fn a_follower_cut_from_the_leader_alone_deposes_nobody() {
    for seed in 1..=3 {
        let (before, after) = cut_a_follower_from_the_leader(seed, true, Duration::from_secs(10));
        assert_eq!(before, after, "seed {seed}: (leader, term) before the cut and after the heal");
    }
}

/// Goal: the control — without pre-vote the cut-off follower campaigns on openraft's timer,
/// raises its term, and the leader is deposed once the cut heals.
#[test]
fn without_pre_vote_a_follower_cut_from_the_leader_deposes_it() {
    for seed in 1..=3 {
        let (before, after) = cut_a_follower_from_the_leader(seed, false, Duration::from_secs(10));
        assert!(after.1 > before.1, "seed {seed}: the term stayed at {} ({before:?} -> {after:?})", before.1);
    }
}
