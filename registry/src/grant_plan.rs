//! The leader's grant decision, pure: which worker ID an Acquire gets and what that ID must
//! still look like when the grant applies (the compare of the compare-and-set). Expiry is
//! decided only through the [`ExpiryTracker`] (mechanism 3). Pure, so that it can be driven
//! with manual clocks apart from Raft.

use std::collections::HashSet;

use crate::error::RegistryError;
use crate::expiry::{Expiry, ExpiryTracker};
use crate::lease::{ClusterConfig, GrantExpectation, HolderId, LeaseTable, Rejection, WorkerId};

/// Pick the worker ID for `holder` (`wanted`, or any), skipping `reserved` IDs that have a
/// grant in flight: the holder's own lease first (a retried Acquire), then a free ID, then one
/// the tracker says has expired.
pub fn plan_grant(
    table: &LeaseTable,
    tracker: &ExpiryTracker,
    reserved: &HashSet<WorkerId>,
    holder: &HolderId,
    wanted: Option<WorkerId>,
) -> Result<(WorkerId, GrantExpectation), RegistryError> {
    let config = table.config().ok_or(RegistryError::NotConfigured)?;
    if let Some(held) = table.held_by(holder) {
        // The apply returns (and renews) the lease the holder already has.
        return Ok((held, expectation(table, held)));
    }
    if let Some(worker_id) = wanted {
        return plan_specific(table, tracker, config, worker_id).map(|e| (worker_id, e));
    }
    if let Some(free) = table.free_ids().find(|w| !reserved.contains(w)) {
        return Ok((free, expectation(table, free)));
    }
    let expired = table.records().find(|(w, r)| {
        r.holder.is_some()
            && r.quarantine.is_none()
            && !reserved.contains(w)
            && tracker.expiry(*w, r.ttl_ms, config.cool_down_ms) == Some(Expiry::Expired)
    });
    match expired {
        Some((worker_id, record)) => Ok((worker_id, record.expectation())),
        None => Err(RegistryError::Exhausted { count: config.worker_id_count() }),
    }
}

fn plan_specific(
    table: &LeaseTable,
    tracker: &ExpiryTracker,
    config: &ClusterConfig,
    worker_id: WorkerId,
) -> Result<GrantExpectation, RegistryError> {
    if worker_id.0 >= config.worker_id_count() {
        return Err(RegistryError::Rejected(Rejection::OutOfRange { worker_id, count: config.worker_id_count() }));
    }
    let Some(record) = table.record(worker_id) else {
        return Ok(expectation(table, worker_id));
    };
    if let Some(reason) = &record.quarantine {
        return Err(RegistryError::Rejected(Rejection::Quarantined { reason: reason.clone() }));
    }
    let Some(current) = &record.holder else {
        return Ok(record.expectation());
    };
    match tracker.expiry(worker_id, record.ttl_ms, config.cool_down_ms) {
        Some(Expiry::Expired) => Ok(record.expectation()),
        _ => Err(RegistryError::Rejected(Rejection::AlreadyHeld { holder: Some(current.clone()), specific: true })),
    }
}

fn expectation(table: &LeaseTable, worker_id: WorkerId) -> GrantExpectation {
    table
        .record(worker_id)
        .map_or(GrantExpectation { token: Default::default(), last_renew: Default::default() }, |r| r.expectation())
}
