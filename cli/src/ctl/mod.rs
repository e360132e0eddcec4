//! `fenceflake ctl`: inspect and administer a registry cluster through any of its nodes.
//! Human tables by default; `--json` prints one stable JSON document per command. Mutual TLS
//! with an `operator` certificate (a `reader` may run status, members, leases, lease); the
//! nodes must present `node` certificates of the same CA.

mod cluster;
mod health;
mod render;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use fenceflake_proto::duration::parse_duration;
use fenceflake_proto::tls::TlsArgs;
use fenceflake_proto::v1 as pb;
use serde_json::json;

use self::cluster::{Cluster, ClusterView};
use self::health::Verdict;
use self::render::{
    audit_json, audit_table, lease_json, leases_table, members_table, quarantine_output, status_json, status_table,
    Output,
};

/// Inspect and administer a registry cluster.
///
/// TLS: an `operator` certificate of the cluster CA (`fenceflake certs issue --role operator`)
/// for every command, or a `reader` one for status, members and leases (without tokens).
#[derive(Debug, Args)]
#[command(after_help = crate::DURATION_HELP)]
pub struct CtlArgs {
    #[command(flatten)]
    tls: TlsArgs,
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
    /// Whether the cluster can commit (a one-line verdict), then leader, term, indexes and
    /// members as the leader reports them (replication progress and last acknowledgement are
    /// known only to the leader). Exit status: 0 serving, 3 the cluster cannot commit (no
    /// quorum or no leader), 1 any other error (e.g. the named leader did not answer).
    Status,
    /// Members with roles, addresses and replication progress, as the leader reports them.
    Members,
    /// Worker-ID leases (only IDs with any history, unless --all).
    Leases {
        /// Also list worker IDs that were never held (every ID of the layout).
        #[arg(long)]
        all: bool,
    },
    /// One worker ID's lease.
    Lease {
        /// The worker ID (0..2^worker-id-bits).
        worker_id: u32,
    },
    /// Stop every grant and renewal of a worker ID (its holder parks) until unquarantined.
    Quarantine {
        /// The worker ID to quarantine.
        worker_id: u32,
        /// Why, for the audit log (required; up to 512 bytes).
        #[arg(long)]
        reason: String,
    },
    /// Clear a quarantine.
    Unquarantine {
        /// The worker ID to clear (audit it first: `ctl audit`).
        worker_id: u32,
    },
    /// Canary hits and operator quarantines.
    Audit,
    /// Add a node: as a learner, then (unless --learner) promote it to voter once it caught up.
    AddMember {
        /// A node id never used in this cluster before (never reuse a removed one).
        node_id: u64,
        /// The new node's peer address HOST:PORT (its --advertise-peer-addr / --peer-addr).
        #[arg(long)]
        peer_addr: String,
        /// The new node's client address HOST:PORT, shown to operators and used by ctl to
        /// reach it (optional).
        #[arg(long, default_value = "")]
        client_addr: String,
        /// Stop after adding it as a learner.
        #[arg(long)]
        learner: bool,
    },
    /// Promote a learner to voter (what `add-member` does by itself unless --learner).
    PromoteMember {
        /// The learner's node id.
        node_id: u64,
    },
    /// Remove a member (voter or learner). Never reuse its node id afterwards. The leader
    /// cannot remove itself: `transfer-leader` first.
    RemoveMember {
        /// The member's node id.
        node_id: u64,
    },
    /// Move leadership off the current leader, to node --to if given (a caught-up voter).
    /// openraft 0.9 has no transfer: the leader stops heartbeating and campaigning while the
    /// other voters hold their elections, so the target wins the next one. Requests during
    /// the hand-over (about one election) are refused and retried by clients.
    TransferLeader {
        /// The voter to hand leadership to (default: whichever voter wins the election).
        #[arg(long)]
        to: Option<u64>,
    },
    /// Back up the lease table, or restore it into a new cluster.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

#[derive(Debug, Subcommand)]
enum SnapshotCommand {
    /// Write a linearizable backup of the lease table to FILE (atomically: temp file, fsync,
    /// rename). Safe while the cluster serves.
    Export {
        /// Where to write the backup (created or replaced atomically).
        file: PathBuf,
    },
    /// Restore FILE into a freshly bootstrapped cluster that has never granted a lease.
    /// Tokens move to a new generation and EVERY worker ID stays embargoed for max TTL +
    /// cool-down, since holders of the lost cluster may still be minting until then. Stop
    /// (or fence off) the old cluster first.
    Import {
        /// A backup written by `ctl snapshot export`.
        file: PathBuf,
    },
}

/// Run one ctl command; returns the process exit status (see `Status` for its meanings).
pub async fn run(args: CtlArgs) -> anyhow::Result<u8> {
    let cluster = Cluster { addrs: args.registry, timeout: args.timeout, security: args.tls.security()? };
    let mut exit = 0;
    let output = match args.command {
        CtlCommand::Status => {
            let (output, code) = status(&cluster).await?;
            exit = code;
            output
        }
        CtlCommand::Members => {
            let view = cluster.view().await?;
            let s = view.best();
            Output::new(
                status_json(s, view.leader.is_some())["members"].clone(),
                members_table(s, view.leader.is_some()),
            )
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
            Output::new(status_json(&s, false), members_table(&s, false))
        }
        CtlCommand::RemoveMember { node_id } => {
            let s = cluster
                .call(|mut c| async move { c.remove_member(pb::RemoveMemberRequest { node_id }).await })
                .await?
                .status
                .unwrap_or_default();
            Output::new(status_json(&s, false), members_table(&s, false))
        }
        CtlCommand::TransferLeader { to } => transfer_leader(&cluster, to).await?,
        CtlCommand::Snapshot(SnapshotCommand::Export { file }) => export(&cluster, &file).await?,
        CtlCommand::Snapshot(SnapshotCommand::Import { file }) => import(&cluster, &file).await?,
    };
    let text = if args.json { format!("{}\n", serde_json::to_string_pretty(&output.json)?) } else { output.table };
    print_quietly(&text)?;
    Ok(exit)
}

/// `status`: the health verdict (and the exit status it implies) and the leader's report.
async fn status(cluster: &Cluster) -> anyhow::Result<(Output, u8)> {
    let view = cluster.view().await?;
    let verdict = Verdict::decide(view.leader.as_ref(), view.named_leader);
    let mut json = status_json(view.best(), view.leader.is_some());
    json["health"] = verdict.to_json();
    json["answered_by"] = json!(view.answered.iter().map(|s| s.node_id).collect::<Vec<_>>());
    Ok((Output::new(json, format!("{}\n{}", verdict.line(), status_table(&view))), verdict.exit_code()))
}

async fn transfer_leader(cluster: &Cluster, to: Option<u64>) -> anyhow::Result<Output> {
    let r = cluster
        .call(|mut c| async move { c.transfer_leader(pb::TransferLeaderRequest { to_node_id: to }).await })
        .await?;
    let json = json!({"from_node_id": r.from_node_id, "leader_id": r.leader_id, "term": r.term});
    let table = format!("leadership moved from node {} to node {} (term {})\n", r.from_node_id, r.leader_id, r.term);
    Ok(Output::new(json, table))
}

/// Print to stdout; a reader that went away (`ctl leases | head`) ends the output quietly.
fn print_quietly(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("cannot write to stdout"),
        _ => Ok(()),
    }
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
        wait_caught_up(cluster, node_id, LEARNER_CATCH_UP).await?;
        s = cluster
            .call(|mut c| async move { c.promote_member(pb::PromoteMemberRequest { node_id }).await })
            .await?
            .status
            .unwrap_or_default();
    }
    Ok(Output::new(status_json(&s, false), members_table(&s, false)))
}

/// How long `add-member` waits for a learner to catch up before it gives up.
const LEARNER_CATCH_UP: Duration = Duration::from_secs(60);

/// Wait until the *leader* reports the learner within a few entries of its commit index
/// (only the leader knows replication progress; a follower reports 0 for every member).
async fn wait_caught_up(cluster: &Cluster, node_id: u64, within: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let view: Option<ClusterView> = cluster.view().await.ok();
        let leader = view.as_ref().and_then(|v| v.leader.as_ref());
        let progress = leader.map(|s| {
            let matched = s.members.iter().find(|m| m.node_id == node_id).map_or(0, |m| m.matched_index);
            (s.node_id, matched, s.commit_index)
        });
        if let Some((_, matched, commit)) = progress {
            if matched > 0 && matched + 10 >= commit {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > deadline {
            let seen = match progress {
                Some((leader, matched, commit)) => {
                    format!("leader {leader} reports it at log index {matched} of {commit}")
                }
                None => "no leader answered".to_string(),
            };
            bail!("node {node_id} did not catch up within {within:?} ({seen}); is it running with --initial-cluster-state existing and reachable at its peer address? It stays a learner: `ctl promote-member {node_id}` once it has caught up");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
