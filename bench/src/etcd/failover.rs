//! etcd's leader-failover gap, measured by [`crate::failover::probe_loop`] exactly as ours:
//! every `interval` a claim txn (a fresh key, on a lease granted before the trial) goes
//! through one of the 4 members that are not the leader, round robin; after `pre` the leader
//! is SIGKILLed; the gap is the kill → the completion of the first successful claim that
//! started after it. A watcher polls the survivors' Status for a new leader. The killed member
//! is restarted on its data dir before the next trial.

use std::time::{Duration, Instant};

use serde_json::Value;
use tonic::transport::Channel;

use super::cluster::{self, EtcdCluster};
use super::load::{claim, claim_key, grant_within};
use super::pb::kv_client::KvClient;
use super::pb::lease_client::LeaseClient;
use crate::failover::{probe_loop, Done, FailCfg, Report};

async fn probe(channel: Channel, key: String, lease: i64, timeout: Duration, tx: Report) {
    let mut kv = KvClient::new(channel);
    let t0 = Instant::now();
    let result = match tokio::time::timeout(timeout, claim(&mut kv, &key, "failover-probe", lease)).await {
        Ok(r) => r,
        Err(_) => Err(format!("client timeout {timeout:?}")),
    };
    let _ = tx.send(Done::now(t0, result));
}

/// Poll the survivors until one names a leader other than `old_id`; returns when, and the
/// new leader's member number (0 if its ID is not among `ids`).
async fn watch_new_leader(
    survivors: Vec<Channel>,
    old_id: u64,
    ids: Vec<(usize, u64)>,
    give_up: Duration,
) -> Option<(Instant, u64)> {
    let deadline = Instant::now() + give_up;
    while Instant::now() < deadline {
        for c in &survivors {
            if let Some(s) = cluster::status(c).await {
                if s.leader != 0 && s.leader != old_id {
                    let number = ids.iter().find(|(_, id)| *id == s.leader).map_or(0, |(n, _)| *n);
                    return Some((Instant::now(), number as u64));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

/// One trial on a healthy cluster: kill its leader, measure, restart the member. Claim keys
/// go under `prefix`, on a lease of `ttl_s` seconds.
pub async fn trial(cluster: &mut EtcdCluster, cfg: FailCfg, prefix: &str, ttl_s: i64) -> anyhow::Result<Value> {
    let leader = cluster.wait_healthy(Duration::from_secs(60)).await?;
    tokio::time::sleep(cfg.rest).await;
    let before = cluster::view(&cluster.running_members()).await;
    anyhow::ensure!(before.agreed && before.leader == leader, "leader moved before the kill: {before:?}");
    let survivors: Vec<Channel> =
        cluster.running().into_iter().filter(|n| *n != leader).filter_map(|n| cluster.channel_of(n).ok()).collect();
    anyhow::ensure!(!survivors.is_empty(), "no survivors to probe");
    let lease = grant_within(&mut LeaseClient::new(survivors[0].clone()), ttl_s, Duration::from_secs(10))
        .await
        .map_err(|e| anyhow::anyhow!("granting the probes' lease: {e}"))?;

    let launch = |i: u64, tx: Report| {
        let channel = survivors[i as usize % survivors.len()].clone();
        tokio::spawn(probe(channel, claim_key(prefix, 0, 1, i), lease, cfg.probe_timeout, tx));
    };
    let (old_id, ids) = (before.leader_id, cluster.ids());
    let kill = || {
        cluster.kill(leader)?;
        Ok(tokio::spawn(watch_new_leader(survivors.clone(), old_id, ids, cfg.post_max)))
    };
    let outcome = probe_loop(cfg, launch, kill).await?;
    let after = cluster::view(&cluster.running_members()).await;
    cluster.spawn(leader)?;
    Ok(outcome.trial_row(leader as u64, before.term, after.term))
}
