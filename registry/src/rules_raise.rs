//! Newer apply rules take effect only once every member runs a release that knows them.
//!
//! Entries carry the rules their leader wrote them under (`Batch::rules`), but a node of an
//! older release applies an entry under the rules it knows: during a rolling upgrade, a new
//! leader's entry could be applied two ways, and replicas would diverge. So a table applies
//! rules newer than [`Rules::UNGATED`] only after a replicated `EnableRules` raised it to them,
//! and a leader proposes that only when every member has answered a clock probe from a release
//! that knows them (`ClockWatch::members_know`). From then on, a node of an older release
//! cannot decode the log (the new command) and stops instead of diverging.

use std::time::Duration;

use fenceflake_proto::serving::Stopped;
use openraft::ServerState;

use crate::lease::Rules;
use crate::node::RegistryNode;

/// How often a leader checks whether it may raise the rules.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Until `stopped`: while this node leads and the table is below [`Rules::CURRENT`], raise it
/// as soon as every member knows the current rules.
pub async fn run(node: RegistryNode, stopped: Stopped) {
    let stop = stopped.wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(CHECK_EVERY) => {}
        }
        let leads = node.raft.metrics().borrow().state == ServerState::Leader;
        let in_force = node.state.read().table.rules_in_force(Rules::CURRENT);
        if !leads || in_force >= Rules::CURRENT || !node.clocks.members_know(Rules::CURRENT) {
            continue;
        }
        match node.leader.enable_rules(Rules::CURRENT).await {
            Ok(now) => tracing::info!(
                node_id = node.node_id,
                rules = now.0,
                "every member runs a release that knows the current apply rules: raised them (high-water windows in force on grants and renewals: renewals answered from memory)"
            ),
            Err(e) => tracing::warn!(node_id = node.node_id, error = %e, "could not raise the apply rules; retrying"),
        }
    }
}
