//! What `ctl` prints: one table for people and one stable JSON document per command.

use fenceflake_proto::v1 as pb;
use serde_json::{json, Value};

use super::cluster::ClusterView;

pub struct Output {
    pub json: Value,
    pub table: String,
}

impl Output {
    pub fn new(json: Value, table: String) -> Output {
        Output { json, table }
    }
}

pub fn quarantine_output(r: pb::QuarantineResponse) -> Output {
    let lease = r.lease.unwrap_or_default();
    Output::new(lease_json(&lease), leases_table(std::slice::from_ref(&lease)))
}

/// A member; replication progress only when `from_leader` (elsewhere it is unknown, not 0).
pub fn member_json(m: &pb::Member, from_leader: bool) -> Value {
    json!({"node_id": m.node_id, "role": m.role, "voter": m.voter, "peer_addr": m.peer_addr,
           "client_addr": m.client_addr,
           "matched_index": from_leader.then_some(m.matched_index),
           "last_ack_ms": m.last_ack_ms, "start_quiet_ms": m.start_quiet_ms})
}

/// `s` as JSON; `from_leader` says whether `s` is the leader's own report.
pub fn status_json(s: &pb::ClusterStatusResponse, from_leader: bool) -> Value {
    json!({
        "cluster_id": s.cluster_id, "node_id": s.node_id, "state": s.state, "leader_id": s.leader_id, "term": s.term,
        "commit_index": s.commit_index, "applied_index": s.applied_index, "last_log_index": s.last_log_index,
        "snapshot_index": s.snapshot_index, "epoch_ms": s.epoch_ms, "worker_id_bits": s.worker_id_bits,
        "max_ttl_ms": s.max_ttl_ms, "cool_down_ms": s.cool_down_ms, "served_node_ids": s.served_node_ids,
        "quorum_ack_age_ms": s.quorum_ack_age_ms, "leader_lease_ms": s.leader_lease_ms,
        "sequence_bits": s.sequence_bits, "apply_rules": s.apply_rules,
        "reported_by_leader": from_leader,
        "members": s.members.iter().map(|m| member_json(m, from_leader)).collect::<Vec<_>>(),
    })
}

pub fn lease_json(l: &pb::LeaseInfo) -> Value {
    json!({"worker_id": l.worker_id, "state": l.state, "holder": l.holder, "token": l.token, "ttl_ms": l.ttl_ms,
           "high_water_ms": l.high_water_ms, "not_before_ms": l.not_before_ms, "quarantined": l.quarantined,
           "quarantine_reason": l.quarantine_reason, "since_renew_ms": l.since_renew_ms})
}

pub fn audit_json(a: &pb::AuditEntry) -> Value {
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

pub fn status_table(view: &ClusterView) -> String {
    let s = view.best();
    let from_leader = view.leader.is_some();
    let leader = if s.leader_id == 0 { "none".to_string() } else { s.leader_id.to_string() };
    let answered: Vec<String> = view.answered.iter().map(|s| s.node_id.to_string()).collect();
    let source = if from_leader { "as the leader reports" } else { "as a follower reports: no leader answered" };
    format!(
        "cluster {}  (answered: nodes {}; indexes {source})\nleader {leader}  term {}  commit {}  applied {}  last log {}  snapshot {}\nworker-id bits {}  sequence bits {}  epoch_ms {}  max ttl {} ms  cool-down {} ms  apply rules {}\n\n{}",
        s.cluster_id, answered.join(","), s.term, s.commit_index, s.applied_index, s.last_log_index, s.snapshot_index,
        s.worker_id_bits, s.sequence_bits, s.epoch_ms, s.max_ttl_ms, s.cool_down_ms, s.apply_rules,
        members_table(s, from_leader)
    )
}

/// Members; MATCHED, LAST_ACK and QUIET_MS only from the leader's report (`-` where unknown),
/// REACHABLE = answered the leader within its lease, QUIET_MS = how much longer the member
/// stays out of elections after its start (0: it may campaign; `?`: the leader has not heard
/// it since a failed probe, e.g. while it restarts; no leadership transfer to it meanwhile).
pub fn members_table(s: &pb::ClusterStatusResponse, from_leader: bool) -> String {
    let dash = || "-".to_string();
    let rows = s
        .members
        .iter()
        .map(|m| {
            let is_self = m.node_id == s.node_id;
            let reachable = match (from_leader, m.last_ack_ms) {
                (false, _) => dash(),
                (true, _) if is_self => "self".to_string(),
                (true, Some(ms)) if ms <= s.leader_lease_ms => "yes".to_string(),
                (true, _) => "NO".to_string(),
            };
            vec![
                m.node_id.to_string(),
                m.role.clone(),
                if m.voter { "voter" } else { "learner" }.to_string(),
                m.peer_addr.clone(),
                m.client_addr.clone(),
                if from_leader { m.matched_index.to_string() } else { dash() },
                m.last_ack_ms.map_or_else(dash, |ms| ms.to_string()),
                reachable,
                match (from_leader && !is_self, m.start_quiet_ms) {
                    (true, Some(ms)) => ms.to_string(),
                    (true, None) => "?".to_string(),
                    (false, _) => dash(),
                },
            ]
        })
        .collect();
    table(&["NODE", "ROLE", "KIND", "PEER", "CLIENT", "MATCHED", "LAST_ACK_MS", "REACHABLE", "QUIET_MS"], rows)
}

pub fn leases_table(leases: &[pb::LeaseInfo]) -> String {
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

pub fn audit_table(entries: &[pb::AuditEntry]) -> String {
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
