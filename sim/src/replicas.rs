//! What the history cannot show, read from the nodes' disks at the end of a run: every
//! node's lease table keeps its invariants (`LeaseTable::check_invariants`), replicas that
//! applied the log to the same position hold the same table (the state machine is a pure
//! function of the log), and no table records a canary hit. The canary (a stale holder's
//! renewal reporting mints at or past the current holder's `not_before`) is the registry's
//! own detector of two holders minting with one worker ID at overlapping times; it
//! quarantines the ID. With every mechanism in force it must never fire: a hit is either a
//! real overlap (which the history's checkers should also see) or a spurious quarantine that
//! takes a worker ID out of service, and the simulation reports both.
//!
//! Every machine that ever ran a node is read, replaced ones too: a removed node's table
//! stops at the position it reached, a replacement's begins with the snapshot it installed,
//! and either is still the log applied to its position, as a learner's is. After a restore
//! the machines of the lost cluster and of the fresh one share names and node ids: each table
//! is named by its node and cluster, and only tables of one cluster are compared.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use fenceflake_jepsen::checker::{CheckResult, Valid};
use fenceflake_registry::clock::ManualClock;
use fenceflake_registry::expiry::ExpiryTracker;
use fenceflake_registry::lease::{AuditKind, LeaseTable};
use fenceflake_registry::storage::{self, DataDirIdentity};
use serde_json::json;

use crate::nodes::SimNode;

/// The applied table of each node, by node and cluster (`r1@sim`), with the cluster and the
/// log position it reflects.
fn tables(nodes: &[SimNode]) -> BTreeMap<String, Result<(String, LeaseTable), String>> {
    nodes
        .iter()
        .map(|node| {
            let identity = DataDirIdentity { node_id: node.id, cluster_id: node.cluster_id.to_string() };
            let tracker = ExpiryTracker::new(Arc::new(ManualClock::new(0)));
            let opened = storage::open_memory(&node.disk, &identity, tracker).map_err(|e| e.to_string()).map(|o| {
                let state = o.state_machine.shared();
                let state = state.read();
                let position = state.last_applied.map(|id| id.to_string()).unwrap_or_default();
                (format!("{position}@{}", node.cluster_id), state.table.clone())
            });
            (format!("{}@{}", node.name, node.cluster_id), opened)
        })
        .collect()
}

/// The `replicas` check: invariants on every node, agreement between nodes at one position.
pub fn check(nodes: &[SimNode]) -> CheckResult {
    let mut evidence = Vec::new();
    let mut by_position: BTreeMap<String, (String, LeaseTable)> = BTreeMap::new();
    // Each hit once, whichever nodes recorded it (the audit log is replicated).
    let mut canary_hits = BTreeMap::new();
    for (name, table) in tables(nodes) {
        let (position, table) = match table {
            Ok(found) => found,
            Err(why) => {
                evidence.push(json!({"node": name, "unreadable": why}));
                continue;
            }
        };
        for hit in table.audit().filter(|entry| entry.kind == AuditKind::Canary) {
            canary_hits.entry((hit.worker_id.0, hit.stale_token.0, hit.current_token.0)).or_insert_with(|| hit.clone());
        }
        let checked = std::panic::catch_unwind(AssertUnwindSafe(|| table.check_invariants()));
        if let Err(panic) = checked {
            let why =
                panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
            evidence.push(json!({"node": name, "invariant": why}));
        }
        match by_position.get(&position) {
            Some((other, theirs)) if *theirs != table => {
                evidence.push(json!({"diverged": [other, name], "at": position}));
            }
            Some(_) => {}
            None => {
                by_position.insert(position, (name, table));
            }
        }
    }
    evidence.extend(canary_hits.into_values().map(|hit| json!({"canary_hit": hit})));
    let valid = if evidence.is_empty() { Valid::True } else { Valid::False };
    let summary = if evidence.is_empty() {
        format!("{} nodes keep the table's invariants; nodes at one log position agree; no canary hit", nodes.len())
    } else {
        format!("{} problems in the nodes' tables (invariants, divergence, canary hits)", evidence.len())
    };
    CheckResult { name: "replicas".into(), valid, summary, evidence }
}
