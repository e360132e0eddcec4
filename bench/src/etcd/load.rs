//! Closed-loop load on etcd, with the rules of `crate::load` (the registry side): each client
//! issues its next request when the previous one ended; client `i` uses member `i % 5` over
//! one gRPC connection per member (followers forward to the leader); only requests that
//! *start* inside the measured window are recorded, into the same HDR histograms
//! ([`crate::stats::Lat`]); ops/s = recorded / window; a failed request is followed by
//! [`crate::load::ERROR_BACKOFF`].
//!
//! * `keepalive`: each client grants one lease before the run and opens one LeaseKeepAlive
//!   stream on it; one op = one keepalive request and its answer on that stream (the
//!   counterpart of our Renew). A stream that failed or timed out is reopened by the next op.
//! * `claim`: each client grants one lease before the run; one op = the txn
//!   `If create_revision(/ids/n) == 0 Then Put(/ids/n, owner, lease) Else Get(/ids/n)` on a
//!   key never claimed before ([`claim_key`]), so every op takes the success path (the
//!   counterpart of our Acquire; one Raft write).
//! * `grant`: one op = one LeaseGrant (a Raft write that creates a lease).
//!
//! These are the operations, keys and client layout of the external load generator that
//! measured etcd before (its figures are quoted in BENCHMARKS.md as history).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::ValueEnum;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::cluster::{self, View};
use super::pb;
use super::pb::kv_client::KvClient;
use super::pb::lease_client::LeaseClient;
use crate::load::{status_msg, CpuWindow, LoadCfg, Target, ERROR_BACKOFF};
use crate::stats::Lat;

/// Size of the worker-ID space a claim picks from (Fenceflake's 10-bit worker field).
pub const ID_SPACE: u64 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EtcdOp {
    Keepalive,
    Claim,
    Grant,
    /// keepalive and claim: the two compared with our renew and acquire.
    Both,
}

impl EtcdOp {
    pub fn expand(self) -> Vec<EtcdOp> {
        match self {
            EtcdOp::Both => vec![EtcdOp::Keepalive, EtcdOp::Claim],
            one => vec![one],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            EtcdOp::Keepalive => "keepalive",
            EtcdOp::Claim => "claim",
            EtcdOp::Grant => "grant",
            EtcdOp::Both => "both",
        }
    }
}

/// The key of claim number `i` of client `client` out of `clients`, under `prefix`. Client
/// `c` takes slots `c, c + clients, c + 2·clients, …` (disjoint across clients); slot `s` is
/// worker ID `s mod 1024` in round `s / 1024`, so a run never claims a key twice and every
/// round spans the whole ID space.
pub fn claim_key(prefix: &str, client: u64, clients: u64, i: u64) -> String {
    let slot = client + i * clients;
    format!("{prefix}/r{}/ids/{}", slot / ID_SPACE, slot % ID_SPACE)
}

/// `If create_revision(key) == 0 Then Put(key, owner, lease) Else Get(key)`: the etcd-native
/// claim of a worker ID, bound to `lease`.
pub fn claim_txn(key: &str, owner: &str, lease: i64) -> pb::TxnRequest {
    let key = key.as_bytes().to_vec();
    pb::TxnRequest {
        compare: vec![pb::Compare {
            result: pb::compare::CompareResult::Equal as i32,
            target: pb::compare::CompareTarget::Create as i32,
            key: key.clone(),
            target_union: Some(pb::compare::TargetUnion::CreateRevision(0)),
        }],
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: key.clone(),
                value: owner.as_bytes().to_vec(),
                lease,
            })),
        }],
        failure: vec![pb::RequestOp { request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest { key })) }],
    }
}

/// The claim txn of `key` through `kv`; an error unless it took the success path.
pub async fn claim(kv: &mut KvClient<Channel>, key: &str, owner: &str, lease: i64) -> Result<(), String> {
    let r = kv.txn(claim_txn(key, owner, lease)).await.map_err(|s| status_msg(&s))?.into_inner();
    if !r.succeeded {
        return Err(format!("claim of {key} lost: the key already existed"));
    }
    Ok(())
}

/// A new lease of `ttl_s` seconds; its ID.
pub async fn grant(lease: &mut LeaseClient<Channel>, ttl_s: i64) -> Result<i64, String> {
    let r = lease.lease_grant(pb::LeaseGrantRequest { ttl: ttl_s, id: 0 }).await.map_err(|s| status_msg(&s))?;
    let r = r.into_inner();
    if r.id == 0 || !r.error.is_empty() {
        return Err(format!("lease grant returned id {}: {}", r.id, r.error));
    }
    Ok(r.id)
}

/// [`grant`] with a client deadline.
pub async fn grant_within(lease: &mut LeaseClient<Channel>, ttl_s: i64, timeout: Duration) -> Result<i64, String> {
    tokio::time::timeout(timeout, grant(lease, ttl_s))
        .await
        .map_err(|_| format!("client timeout {timeout:?} granting a lease"))?
}

/// A unique prefix of this process's keys: `/fenceflake-bench/<unix ms>-<pid>`.
pub fn run_prefix() -> String {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    format!("/fenceflake-bench/{ms}-{}", std::process::id())
}

/// An open LeaseKeepAlive stream of one lease.
struct KeepAlive {
    tx: mpsc::Sender<pb::LeaseKeepAliveRequest>,
    rx: tonic::Streaming<pb::LeaseKeepAliveResponse>,
}

impl KeepAlive {
    /// Opens the stream with a first keepalive already queued (etcd answers the stream's
    /// headers with its first response) and reads that response.
    async fn open(lease: &mut LeaseClient<Channel>, id: i64) -> Result<KeepAlive, String> {
        let (tx, rx) = mpsc::channel(4);
        tx.send(pb::LeaseKeepAliveRequest { id }).await.map_err(|_| "keepalive stream closed".to_string())?;
        let rx = lease.lease_keep_alive(ReceiverStream::new(rx)).await.map_err(|s| status_msg(&s))?.into_inner();
        let mut ka = KeepAlive { tx, rx };
        ka.answer(id).await?;
        Ok(ka)
    }

    /// One keepalive round trip.
    async fn renew(&mut self, id: i64) -> Result<(), String> {
        self.tx.send(pb::LeaseKeepAliveRequest { id }).await.map_err(|_| "keepalive stream closed".to_string())?;
        self.answer(id).await
    }

    async fn answer(&mut self, id: i64) -> Result<(), String> {
        match self.rx.message().await {
            Ok(Some(r)) if r.ttl > 0 => Ok(()),
            Ok(Some(r)) => Err(format!("lease {id:x} not found on keepalive (ttl {})", r.ttl)),
            Ok(None) => Err("keepalive stream closed by the server".into()),
            Err(s) => Err(status_msg(&s)),
        }
    }
}

enum Worker {
    KeepAlive { lease: LeaseClient<Channel>, id: i64, stream: Option<KeepAlive> },
    Claim { kv: KvClient<Channel>, lease: i64, prefix: String, client: u64, clients: u64, owner: String },
    Grant { lease: LeaseClient<Channel>, ttl_s: i64 },
}

impl Worker {
    /// Op number `i` of this client.
    async fn op(&mut self, i: u64) -> Result<(), String> {
        match self {
            Worker::KeepAlive { lease, id, stream } => {
                // Taken out first: a failed or timed-out op leaves no stream, the next reopens it.
                match stream.take() {
                    Some(mut s) => {
                        s.renew(*id).await?;
                        *stream = Some(s);
                    }
                    None => *stream = Some(KeepAlive::open(lease, *id).await?),
                }
                Ok(())
            }
            Worker::Claim { kv, lease, prefix, client, clients, owner } => {
                claim(kv, &claim_key(prefix, *client, *clients, i), owner, *lease).await
            }
            Worker::Grant { lease, ttl_s } => grant(lease, *ttl_s).await.map(|_| ()),
        }
    }
}

struct Rec {
    lat: Lat,
    via_leader: bool,
}

async fn drive(mut w: Worker, via_leader: bool, timeout: Duration, t_measure: Instant, t_end: Instant) -> Rec {
    let mut rec = Rec { lat: Lat::new(), via_leader };
    let mut i = 0u64;
    loop {
        let t0 = Instant::now();
        if t0 >= t_end {
            break;
        }
        let r = match tokio::time::timeout(timeout, w.op(i)).await {
            Ok(r) => r,
            Err(_) => Err(format!("client timeout {timeout:?}")),
        };
        let t1 = Instant::now();
        i += 1;
        let ok = r.is_ok();
        if t0 >= t_measure {
            match r {
                Ok(()) => rec.lat.record(t1 - t0),
                Err(e) => rec.lat.error(e),
            }
        }
        if !ok {
            tokio::time::sleep(ERROR_BACKOFF).await;
        }
    }
    rec
}

/// TTL of the leases, in etcd's whole seconds (at least 1).
pub fn ttl_seconds(ttl_ms: u64) -> i64 {
    i64::try_from(ttl_ms.div_ceil(1000)).unwrap_or(i64::MAX).max(1)
}

/// The clients of a run, client `i` on member `i % members`, each with its lease (and
/// keepalive stream) set up.
async fn workers(op: EtcdOp, target: &Target, cfg: LoadCfg) -> anyhow::Result<Vec<Worker>> {
    let ttl_s = ttl_seconds(cfg.ttl_ms);
    let prefix = run_prefix();
    let mut workers = Vec::with_capacity(cfg.clients);
    for i in 0..cfg.clients {
        let channel = target.channels[i % target.channels.len()].clone();
        let mut lease = LeaseClient::new(channel.clone());
        let setup = |e: String| anyhow::anyhow!("setting up {} client {i}: {e}", op.name());
        workers.push(match op {
            EtcdOp::Keepalive => {
                let id = grant_within(&mut lease, ttl_s, cfg.op_timeout).await.map_err(setup)?;
                let stream = tokio::time::timeout(cfg.op_timeout, KeepAlive::open(&mut lease, id))
                    .await
                    .map_err(|_| setup("client timeout opening the keepalive stream".into()))?
                    .map_err(setup)?;
                Worker::KeepAlive { lease, id, stream: Some(stream) }
            }
            EtcdOp::Claim => Worker::Claim {
                lease: grant_within(&mut lease, ttl_s, cfg.op_timeout).await.map_err(setup)?,
                kv: KvClient::new(channel),
                prefix: prefix.clone(),
                client: i as u64,
                clients: cfg.clients as u64,
                owner: format!("client-{i}"),
            },
            _ => Worker::Grant { lease, ttl_s },
        });
    }
    Ok(workers)
}

/// One closed-loop run of `op` with `cfg.clients` clients; returns the JSON result row
/// (without the identifying fields the caller adds).
pub async fn run(op: EtcdOp, target: &Target, cfg: LoadCfg) -> anyhow::Result<Value> {
    anyhow::ensure!(!target.channels.is_empty(), "no endpoints");
    anyhow::ensure!(op != EtcdOp::Both, "run one op at a time");
    let members = cluster::numbered(&target.channels);
    let before = cluster::view(&members).await;
    let workers = workers(op, target, cfg).await?;

    let start = Instant::now();
    let (t_measure, t_end) = (start + cfg.warmup, start + cfg.warmup + cfg.duration);
    let handles: Vec<_> = workers
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            let via_leader = i % members.len() + 1 == before.leader;
            tokio::spawn(drive(w, via_leader, cfg.op_timeout, t_measure, t_end))
        })
        .collect();

    tokio::time::sleep_until(t_measure.into()).await;
    let at_measure = cluster::view(&members).await;
    let cpu = CpuWindow::start(&target.server_pids);
    tokio::time::sleep_until(t_end.into()).await;
    let at_end = cluster::view(&members).await;
    let cpu = cpu.finish();

    let (mut main, mut via_leader, mut via_follower) = (Lat::new(), Lat::new(), Lat::new());
    for h in handles {
        let rec = h.await?;
        main.merge(&rec.lat);
        if rec.via_leader {
            via_leader.merge(&rec.lat);
        } else {
            via_follower.merge(&rec.lat);
        }
    }
    let after = cluster::view(&members).await;
    let window = cfg.duration.as_secs_f64();
    Ok(json!({
        "result": main.summary(window),
        "raft": {
            // Every claim or grant is one entry; keepalives are answered by the leader's
            // lessor and replicate nothing.
            "entries_in_window": at_end.raft_index.saturating_sub(at_measure.raft_index),
            "before": view_json(&before),
            "after": view_json(&after),
            "term_changes": after.term.saturating_sub(before.term),
            "leader_changed": before.leader != after.leader,
        },
        "via_leader": via_leader.summary(window),
        "via_follower": via_follower.summary(window),
        "cpu": cpu,
        "server_version": before.version,
    }))
}

pub fn view_json(v: &View) -> Value {
    json!({"leader": v.leader, "term": v.term, "raft_index": v.raft_index, "answered": v.answered})
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: no two claims of a run share a key (every claim is a first claim), and each round
    /// of 1024 slots spans every worker ID once.
    #[test]
    fn claim_keys_are_disjoint_and_span_the_id_space() {
        let mut seen = std::collections::HashSet::new();
        for client in 0..64 {
            for i in 0..100 {
                assert!(seen.insert(claim_key("/p", client, 64, i)), "client {client} op {i} repeats a key");
            }
        }
        assert_eq!(claim_key("/p", 0, 16, 0), "/p/r0/ids/0");
        assert_eq!(claim_key("/p", 3, 16, 2), "/p/r0/ids/35");
        assert_eq!(claim_key("/p", 15, 16, 63), "/p/r0/ids/1023");
        assert_eq!(claim_key("/p", 0, 16, 64), "/p/r1/ids/0");
        let round0: std::collections::HashSet<String> =
            (0..16).flat_map(|c| (0..64).map(move |i| claim_key("/p", c, 16, i))).collect();
        assert_eq!(round0.len(), 1024);
        assert!(round0.iter().all(|k| k.starts_with("/p/r0/ids/")));
    }

    #[test]
    fn claim_txn_compares_create_revision_zero_and_puts_with_the_lease() {
        let t = claim_txn("/p/r0/ids/7", "client-3", 42);
        assert_eq!(t.compare.len(), 1);
        let c = &t.compare[0];
        assert_eq!(c.key, b"/p/r0/ids/7");
        assert_eq!(c.result, pb::compare::CompareResult::Equal as i32);
        assert_eq!(c.target, pb::compare::CompareTarget::Create as i32);
        assert_eq!(c.target_union, Some(pb::compare::TargetUnion::CreateRevision(0)));
        match &t.success[..] {
            [pb::RequestOp { request: Some(pb::request_op::Request::RequestPut(p)) }] => {
                assert_eq!(
                    (p.key.as_slice(), p.value.as_slice(), p.lease),
                    (&b"/p/r0/ids/7"[..], &b"client-3"[..], 42)
                );
            }
            other => panic!("success ops {other:?}"),
        }
        match &t.failure[..] {
            [pb::RequestOp { request: Some(pb::request_op::Request::RequestRange(r)) }] => {
                assert_eq!(r.key, b"/p/r0/ids/7")
            }
            other => panic!("failure ops {other:?}"),
        }
    }

    /// The claim's wire bytes, field by field, against etcd's rpc.proto numbering: a change of
    /// a field number in our minimal proto shows here.
    #[test]
    fn claim_txn_wire_format_matches_etcd_numbering() {
        use prost::Message;
        let bytes = claim_txn("k", "o", 5).encode_to_vec();
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            0x0a, 7, // compare = 1 (7 bytes)
                0x10, 1, // target = 2: CREATE
                0x1a, 1, b'k', // key = 3
                0x28, 0, // create_revision = 5: 0
            0x12, 10, // success = 2
                0x12, 8, // request_put = 2
                    0x0a, 1, b'k', // key = 1
                    0x12, 1, b'o', // value = 2
                    0x18, 5, // lease = 3
            0x1a, 5, // failure = 3
                0x0a, 3, // request_range = 1
                    0x0a, 1, b'k', // key = 1
        ];
        assert_eq!(bytes, want);
    }

    #[test]
    fn ttl_rounds_up_to_whole_seconds() {
        assert_eq!(ttl_seconds(600_000), 600);
        assert_eq!(ttl_seconds(1_500), 2);
        assert_eq!(ttl_seconds(0), 1);
    }
}
