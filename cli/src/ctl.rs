//! `fenceflake ctl`: inspect and administer a registry cluster through any of its nodes.
//! Human tables by default; `--json` prints one stable JSON document per command.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use fenceflake_proto::duration::parse_duration;
use fenceflake_proto::v1 as pb;
use fenceflake_proto::v1::registry_client::RegistryClient;
use serde_json::{json, Value};
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Args)]
#[command(after_help = crate::DURATION_HELP)]
pub struct CtlArgs {
    /// Registry client addresses, HOST:PORT[,HOST:PORT...]; tried in order until one answers.
    #[arg(long, env = "FENCEFLAKE_REGISTRY", value_delimiter = ',', required = true)]
    registry: Vec<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Per-node request timeout.
    #[arg(long, env = "FENCEFLAKE_CTL_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Leader, term, commit/applied index and members, as one node sees them.
    Status,
    /// Members with roles and addresses.
    Members,
    /// Worker-ID leases (only IDs with any history, unless --all).
    Leases {
        #[arg(long)]
        all: bool,
    },
    /// One worker ID's lease.
    Lease { worker_id: u32 },
    /// Stop every grant and renewal of a worker ID (its holder parks) until unquarantined.
    Quarantine {
        worker_id: u32,
        #[arg(long)]
        reason: String,
    },
    /// Clear a quarantine.
    Unquarantine { worker_id: u32 },
    /// Canary hits and operator quarantines.
    Audit,
    /// Add a node: as a learner, then (unless --learner) promote it to voter once it caught up.
    AddMember {
        node_id: u64,
        #[arg(long)]
        peer_addr: String,
        #[arg(long, default_value = "")]
        client_addr: String,
        /// Stop after adding it as a learner.
        #[arg(long)]
        learner: bool,
    },
    /// Promote a learner to voter.
    PromoteMember { node_id: u64 },
    /// Remove a member (voter or learner). Never reuse its node id afterwards.
    RemoveMember { node_id: u64 },
    /// Back up the lease table, or restore it into a new cluster.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

#[derive(Debug, Subcommand)]
enum SnapshotCommand {
    /// Write a linearizable backup of the lease table to FILE (atomically: temp file, fsync,
    /// rename). Safe while the cluster serves.
    Export { file: PathBuf },
    /// Restore FILE into a freshly bootstrapped cluster that has never granted a lease.
    /// Tokens move to a new generation and EVERY worker ID stays embargoed for max TTL +
    /// cool-down, since holders of the lost cluster may still be minting until then. Stop
    /// (or fence off) the old cluster first.
    Import { file: PathBuf },
}

/// Largest message ctl accepts or sends (a backup is the largest there is).
const MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The first node that answers (a node that is down or has no leader makes us try the next).
struct Cluster {
    addrs: Vec<String>,
    timeout: Duration,
}

impl Cluster {
    fn client(&self, addr: &str) -> anyhow::Result<RegistryClient<Channel>> {
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .with_context(|| format!("bad registry address {addr:?}"))?
            .connect_timeout(Duration::from_secs(1))
            .timeout(self.timeout)
            .connect_lazy();
        Ok(RegistryClient::new(channel)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX))
    }

    async fn call<T, F, Fut>(&self, f: F) -> anyhow::Result<T>
    where
        F: Fn(RegistryClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut errors = Vec::new();
        for addr in &self.addrs {
            match f(self.client(addr)?).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if retryable(&status) => errors.push(format!("{addr}: {}", status.message())),
                Err(status) => bail!("{addr}: {:?}: {}", status.code(), status.message()),
            }
        }
        Err(anyhow!("no registry node answered:\n  {}", errors.join("\n  ")))
    }
}

fn retryable(status: &tonic::Status) -> bool {
    matches!(status.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown)
}

pub async fn run(args: CtlArgs) -> anyhow::Result<()> {
    let cluster = Cluster { addrs: args.registry, timeout: args.timeout };
    let output = match args.command {
        CtlCommand::Status => {
            let s = cluster.call(|mut c| async move { c.cluster_status(pb::ClusterStatusRequest {}).await }).await?;
            Output::new(status_json(&s), status_table(&s))
        }
        CtlCommand::Members => {
            let s = cluster.call(|mut c| async move { c.cluster_status(pb::ClusterStatusRequest {}).await }).await?;
            Output::new(json!(s.members.iter().map(member_json).collect::<Vec<_>>()), members_table(&s))
        }
        CtlCommand::Leases { all } => {
            let r = cluster
                .call(|mut c| async move { c.list_leases(pb::ListLeasesRequest { include_free: all }).await })
                .await?;
            Output::new(json!(r.leases.iter().map(lease_json).collect::<Vec<_>>()), leases_table(&r.leases))
        }
        CtlCommand::Lease { worker_id } => {
            let l = cluster.call(|mut c| async move { c.get_lease(pb::GetLeaseRequest { worker_id }).await }).await?;
            Output::new(lease_json(&l), leases_table(std::slice::from_ref(&l)))
        }
        CtlCommand::Quarantine { worker_id, reason } => {
            let r = cluster
                .call(|mut c| {
                    let reason = reason.clone();
                    async move { c.quarantine(pb::QuarantineRequest { worker_id, reason }).await }
                })
                .await?;
            quarantine_output(r)
        }
        CtlCommand::Unquarantine { worker_id } => {
            let r = cluster
                .call(|mut c| async move { c.unquarantine(pb::UnquarantineRequest { worker_id }).await })
                .await?;
            quarantine_output(r)
        }
        CtlCommand::Audit => {
            let r = cluster.call(|mut c| async move { c.list_audit(pb::ListAuditRequest {}).await }).await?;
            Output::new(json!(r.entries.iter().map(audit_json).collect::<Vec<_>>()), audit_table(&r.entries))
        }
        CtlCommand::AddMember { node_id, peer_addr, client_addr, learner } => {
            add_member(&cluster, pb::AddMemberRequest { node_id, peer_addr, client_addr }, learner).await?
        }
        CtlCommand::PromoteMember { node_id } => {
            let s = cluster
                .call(|mut c| async move { c.promote_member(pb::PromoteMemberRequest { node_id }).await })
                .await?
                .status
                .unwrap_or_default();
            Output::new(status_json(&s), members_table(&s))
        }
        CtlCommand::RemoveMember { node_id } => {
            let s = cluster
                .call(|mut c| async move { c.remove_member(pb::RemoveMemberRequest { node_id }).await })
                .await?
                .status
                .unwrap_or_default();
            Output::new(status_json(&s), members_table(&s))
        }
        CtlCommand::Snapshot(SnapshotCommand::Export { file }) => export(&cluster, &file).await?,
        CtlCommand::Snapshot(SnapshotCommand::Import { file }) => import(&cluster, &file).await?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&output.json)?);
    } else {
        print!("{}", output.table);
    }
    Ok(())
}

/// `add-member`: add the node as a learner and, unless `learner`, promote it once caught up.
async fn add_member(cluster: &Cluster, request: pb::AddMemberRequest, learner: bool) -> anyhow::Result<Output> {
    let node_id = request.node_id;
    let mut s = cluster
        .call(|mut c| {
            let request = request.clone();
            async move { c.add_learner(request).await }
        })
        .await?
        .status
        .unwrap_or_default();
    if !learner {
        wait_caught_up(cluster, node_id).await?;
        s = cluster
            .call(|mut c| async move { c.promote_member(pb::PromoteMemberRequest { node_id }).await })
            .await?
            .status
            .unwrap_or_default();
    }
    Ok(Output::new(status_json(&s), members_table(&s)))
}

/// `snapshot export`: the backup, written atomically to `file`.
async fn export(cluster: &Cluster, file: &Path) -> anyhow::Result<Output> {
    let r = cluster.call(|mut c| async move { c.export_snapshot(pb::ExportSnapshotRequest {}).await }).await?;
    write_atomically(file, &r.data)?;
    let json = json!({"file": file, "bytes": r.data.len(), "applied_index": r.applied_index,
                      "records": r.records, "exported_at_ms": r.exported_at_ms});
    let table = format!(
        "exported {} worker-ID records as of applied index {} to {} ({} bytes)\n",
        r.records,
        r.applied_index,
        file.display(),
        r.data.len()
    );
    Ok(Output::new(json, table))
}

/// `snapshot import`: restore `file` into a cluster that never granted.
async fn import(cluster: &Cluster, file: &Path) -> anyhow::Result<Output> {
    let data = std::fs::read(file).with_context(|| format!("cannot read backup {}", file.display()))?;
    let r = cluster
        .call(|mut c| {
            let data = data.clone();
            async move { c.import_snapshot(pb::ImportSnapshotRequest { data }).await }
        })
        .await?;
    let json = json!({"file": file, "generation": r.generation, "worker_ids": r.worker_ids,
                      "records": r.records, "embargo_until_ms": r.embargo_until_ms});
    let table = format!(
        "restored {} records from {}; token generation {}; all {} worker IDs embargoed until {} (leader wall clock, ms)\n",
        r.records,
        file.display(),
        r.generation,
        r.worker_ids,
        r.embargo_until_ms
    );
    Ok(Output::new(json, table))
}

/// Write `data` to `path` so that a crash leaves either the old file or the whole new one.
fn write_atomically(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path.file_name().with_context(|| format!("{} is not a file path", path.display()))?;
    let temp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let mut file = std::fs::File::create(&temp).with_context(|| format!("cannot create {}", temp.display()))?;
    file.write_all(data).and_then(|()| file.sync_all()).with_context(|| format!("cannot write {}", temp.display()))?;
    std::fs::rename(&temp, path).with_context(|| format!("cannot rename {} to {}", temp.display(), path.display()))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("cannot sync {}", dir.display()))?;
    Ok(())
}

/// Wait until the leader reports the learner within a few entries of its commit index.
async fn wait_caught_up(cluster: &Cluster, node_id: u64) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s = cluster.call(|mut c| async move { c.cluster_status(pb::ClusterStatusRequest {}).await }).await?;
        let matched = s.members.iter().find(|m| m.node_id == node_id).map_or(0, |m| m.matched_index);
        if s.leader_id != 0 && matched + 10 >= s.commit_index && matched > 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("node {node_id} did not catch up within 60 s (matched {matched} of {}); is it running with --initial-cluster-state existing?", s.commit_index);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

struct Output {
    json: Value,
    table: String,
}

impl Output {
    fn new(json: Value, table: String) -> Output {
        Output { json, table }
    }
}

fn quarantine_output(r: pb::QuarantineResponse) -> Output {
    let lease = r.lease.unwrap_or_default();
    Output::new(lease_json(&lease), leases_table(std::slice::from_ref(&lease)))
}

fn member_json(m: &pb::Member) -> Value {
    json!({"node_id": m.node_id, "role": m.role, "voter": m.voter, "peer_addr": m.peer_addr,
           "client_addr": m.client_addr, "matched_index": m.matched_index})
}

fn status_json(s: &pb::ClusterStatusResponse) -> Value {
    json!({
        "cluster_id": s.cluster_id, "node_id": s.node_id, "leader_id": s.leader_id, "term": s.term,
        "commit_index": s.commit_index, "applied_index": s.applied_index, "last_log_index": s.last_log_index,
        "snapshot_index": s.snapshot_index, "epoch_ms": s.epoch_ms, "worker_id_bits": s.worker_id_bits,
        "max_ttl_ms": s.max_ttl_ms, "cool_down_ms": s.cool_down_ms, "served_node_ids": s.served_node_ids,
        "members": s.members.iter().map(member_json).collect::<Vec<_>>(),
    })
}

fn lease_json(l: &pb::LeaseInfo) -> Value {
    json!({"worker_id": l.worker_id, "state": l.state, "holder": l.holder, "token": l.token, "ttl_ms": l.ttl_ms,
           "high_water_ms": l.high_water_ms, "not_before_ms": l.not_before_ms, "quarantined": l.quarantined,
           "quarantine_reason": l.quarantine_reason, "since_renew_ms": l.since_renew_ms})
}

fn audit_json(a: &pb::AuditEntry) -> Value {
    json!({"worker_id": a.worker_id, "kind": a.kind, "stale_token": a.stale_token, "current_token": a.current_token,
           "current_holder": a.current_holder, "overlap_from_ms": a.overlap_from_ms, "overlap_to_ms": a.overlap_to_ms,
           "detected_at_ms": a.detected_at_ms})
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

fn status_table(s: &pb::ClusterStatusResponse) -> String {
    let leader = if s.leader_id == 0 { "none".to_string() } else { s.leader_id.to_string() };
    format!(
        "cluster {}  (answered by node {})\nleader {leader}  term {}  commit {}  applied {}  last log {}  snapshot {}\nworker-id bits {}  epoch_ms {}  max ttl {} ms  cool-down {} ms\n\n{}",
        s.cluster_id, s.node_id, s.term, s.commit_index, s.applied_index, s.last_log_index, s.snapshot_index,
        s.worker_id_bits, s.epoch_ms, s.max_ttl_ms, s.cool_down_ms, members_table(s)
    )
}

fn members_table(s: &pb::ClusterStatusResponse) -> String {
    let rows = s
        .members
        .iter()
        .map(|m| {
            vec![
                m.node_id.to_string(),
                m.role.clone(),
                if m.voter { "voter" } else { "learner" }.to_string(),
                m.peer_addr.clone(),
                m.client_addr.clone(),
                m.matched_index.to_string(),
            ]
        })
        .collect();
    table(&["NODE", "ROLE", "KIND", "PEER", "CLIENT", "MATCHED"], rows)
}

fn leases_table(leases: &[pb::LeaseInfo]) -> String {
    let rows = leases
        .iter()
        .map(|l| {
            vec![
                l.worker_id.to_string(),
                l.state.clone(),
                l.holder.clone(),
                l.token.to_string(),
                l.ttl_ms.to_string(),
                l.since_renew_ms.to_string(),
                l.not_before_ms.to_string(),
                l.quarantine_reason.clone(),
            ]
        })
        .collect();
    table(&["WORKER", "STATE", "HOLDER", "TOKEN", "TTL_MS", "SINCE_RENEW_MS", "NOT_BEFORE_MS", "QUARANTINE"], rows)
}

fn audit_table(entries: &[pb::AuditEntry]) -> String {
    let rows = entries
        .iter()
        .map(|a| {
            vec![
                a.worker_id.to_string(),
                a.kind.clone(),
                a.stale_token.to_string(),
                a.current_token.to_string(),
                a.current_holder.clone(),
                format!("{}..{}", a.overlap_from_ms, a.overlap_to_ms),
                a.detected_at_ms.to_string(),
            ]
        })
        .collect();
    table(&["WORKER", "KIND", "STALE_TOKEN", "CURRENT_TOKEN", "CURRENT_HOLDER", "OVERLAP_MS", "DETECTED_AT_MS"], rows)
}
