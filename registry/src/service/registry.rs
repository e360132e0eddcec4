//! The public `fenceflake.v1.Registry` gRPC service on the client port: validates every field,
//! hands the proposal to the node (which forwards to the leader), and maps the answer.

use fenceflake_proto::serving::Stopped;
use fenceflake_proto::tls::{self, Caller, Role};
use fenceflake_proto::v1 as pb;
use tonic::{Request, Response, Status, Streaming};

use super::{renew_stream, validate};
use crate::backup::{self, Provenance};
use crate::error::RegistryError;
use crate::lease::{
    AuditEntry, AuditKind, ClusterConfig, Incarnation, Quarantine, Rejection, Release, Renew, Unquarantine,
};
use crate::metrics::inc;
use crate::node::{RegistryNode, StatusView};
use crate::proposal::{LeaseReply, LeaseView, Proposal, Reply};
use crate::raft::types::PeerNode;
use crate::rpc::Rpc;

/// Which listener a `RegistryService` answers on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The client port every worker reaches; operator RPCs too unless `admin_only`.
    Client { admin_only: bool },
    /// The admin port (`--admin-addr`): the same service, for operators behind a NetworkPolicy.
    Admin,
}

#[derive(Debug, Clone)]
pub struct RegistryService {
    node: RegistryNode,
    listener: Listener,
    /// The node's stop signal: a `RenewStream` ends with it (the server waits for open streams).
    stopped: Stopped,
}

impl RegistryService {
    pub fn new(node: RegistryNode, listener: Listener, stopped: Stopped) -> RegistryService {
        RegistryService { node, listener, stopped }
    }

    /// The caller of `request` if it may call `rpc` here (the table is [`Rpc::roles`]).
    fn authorize<T>(&self, request: &Request<T>, rpc: Rpc) -> Result<Caller, Status> {
        if rpc.is_operator_only() && self.listener == (Listener::Client { admin_only: true }) {
            return Err(Status::permission_denied(format!(
                "{} is served on this node's admin port only (--admin-only): call the --admin-addr listener",
                rpc.name()
            )));
        }
        let result = tls::authorize(request, rpc.name(), rpc.roles());
        if let Err(status) = &result {
            inc(&self.node.metrics.refused_calls);
            tracing::debug!(rpc = rpc.name(), code = ?status.code(), why = status.message(), "call refused");
        }
        result
    }

    fn config(&self) -> Option<ClusterConfig> {
        self.node.state.read().table.config().cloned()
    }

    /// Run one proposal, recording latency, outcome counters and errors.
    async fn run(&self, proposal: Proposal) -> Result<Reply, Status> {
        let rpc = proposal.rpc();
        let started = self.node.clock.mono();
        let result = self.node.execute(proposal).await;
        self.count(rpc, &result);
        self.node.metrics.observe(rpc, self.node.clock.mono().since(started), result.is_err());
        result.map_err(|e| e.to_status())
    }

    fn count(&self, rpc: Rpc, result: &Result<Reply, RegistryError>) {
        let m = &self.node.metrics;
        match (rpc, result) {
            (Rpc::Acquire, Ok(_)) => inc(&m.grants),
            (Rpc::Renew, Ok(_)) => inc(&m.renewals),
            (Rpc::Release, Ok(_)) => inc(&m.releases),
            (_, Err(RegistryError::Rejected(Rejection::Fenced { .. }))) => inc(&m.fenced_renewals),
            (_, Err(RegistryError::Rejected(Rejection::Superseded { .. }))) => inc(&m.superseded_renewals),
            (_, Err(RegistryError::Canary { .. })) => {
                inc(&m.fenced_renewals);
                inc(&m.canary_hits);
            }
            (Rpc::Acquire, Err(RegistryError::Rejected(Rejection::AlreadyHeld { specific: true, .. }))) => {
                inc(&m.duplicate_claims)
            }
            (_, Err(RegistryError::Exhausted { .. })) => inc(&m.exhausted),
            (_, Err(RegistryError::Rejected(Rejection::NotOwner { .. }))) => inc(&m.refused_calls),
            (_, Err(RegistryError::NoQuorum { .. } | RegistryError::NoLeader { .. })) => inc(&m.no_quorum),
            _ => {}
        }
    }

    async fn lease(&self, proposal: Proposal) -> Result<pb::Lease, Status> {
        match self.run(proposal).await? {
            Reply::Lease(reply) => Ok(lease_pb(&reply)),
            other => Err(wrong_reply(&other)),
        }
    }

    /// One renewal for `caller` (authorized already): validated, executed and logged alike
    /// whether it came as a unary `Renew` or on a `RenewStream`.
    async fn renew_lease(&self, caller: Option<String>, r: pb::RenewRequest) -> Result<pb::Lease, Status> {
        let config = self.config();
        let worker_id = validate::worker_id(r.worker_id, config.as_ref()).map_err(invalid)?;
        let token = validate::token(r.token).map_err(invalid)?;
        let proposal = Proposal::Renew(Renew {
            worker_id,
            token,
            wall_ms_at_send: r.wall_ms_at_send,
            max_minted_ts_ms: r.max_minted_ts_ms,
            caller,
            // The leader sets the window (`Leader::renew`): a caller never chooses it.
            window_ms: 0,
        });
        let result = self.lease(proposal).await;
        if let Err(status) = &result {
            if status.code() == tonic::Code::FailedPrecondition {
                tracing::warn!(worker_id = worker_id.0, token = token.0, reason = status.message(), "renewal refused");
            }
        }
        result
    }

    async fn lease_info(&self, proposal: Proposal) -> Result<LeaseView, Status> {
        match self.run(proposal).await? {
            Reply::LeaseInfo(view) => Ok(view),
            other => Err(wrong_reply(&other)),
        }
    }

    async fn membership(&self, proposal: Proposal) -> Result<Response<pb::MembershipResponse>, Status> {
        match self.run(proposal).await? {
            Reply::MembershipChanged => {
                let status = self.node.status().await;
                Ok(Response::new(pb::MembershipResponse {
                    status: Some(status_pb(&status, self.config(), &self.node.cluster_id)),
                }))
            }
            other => Err(wrong_reply(&other)),
        }
    }
}

fn invalid(e: RegistryError) -> Status {
    e.to_status()
}

fn wrong_reply(reply: &Reply) -> Status {
    Status::internal(format!("registry answered with the wrong reply kind: {reply:?}"))
}

fn lease_pb(reply: &LeaseReply) -> pb::Lease {
    pb::Lease {
        worker_id: reply.grant.worker_id.0,
        token: reply.grant.token.0,
        holder: reply.grant.holder.0.clone(),
        ttl_ms: reply.grant.ttl_ms,
        not_before_ms: reply.grant.not_before_ms,
        mint_until_ms: reply.grant.mint_until_ms,
        registry_time_ms: reply.registry_time_ms,
        epoch_ms: reply.config.epoch_ms,
        worker_id_bits: u32::from(reply.config.worker_id_bits),
        sequence_bits: u32::from(reply.config.sequence_bits),
    }
}

/// Whether `caller` may see the token of the lease in `view`: its owner and operators (and
/// anyone when the cluster runs plaintext, or for a lease granted before identities).
fn shows_token(caller: &Caller, view: &LeaseView) -> bool {
    match caller.identity() {
        None => true,
        Some(identity) if identity.role == Role::Operator => true,
        Some(identity) => view.record.as_ref().is_some_and(|r| r.owner.as_deref() == Some(identity.uri().as_str())),
    }
}

/// The lease as `caller` may see it: without its token unless [`shows_token`].
fn lease_info_for(caller: &Caller, view: &LeaseView) -> pb::LeaseInfo {
    let mut info = lease_info_pb(view);
    if !shows_token(caller, view) {
        info.token = 0;
    }
    info
}

pub fn lease_info_pb(view: &LeaseView) -> pb::LeaseInfo {
    let record = view.record.as_ref();
    pb::LeaseInfo {
        worker_id: view.worker_id.0,
        state: view.state.as_str().to_string(),
        holder: record.and_then(|r| r.holder.as_ref()).map(|h| h.0.clone()).unwrap_or_default(),
        token: record.map_or(0, |r| r.token.0),
        ttl_ms: record.map_or(0, |r| r.ttl_ms),
        high_water_ms: record.map_or(0, |r| r.high_water_ms),
        not_before_ms: record.map_or(0, |r| r.not_before_ms),
        quarantined: record.is_some_and(|r| r.quarantine.is_some()),
        quarantine_reason: record.and_then(|r| r.quarantine.clone()).unwrap_or_default(),
        since_renew_ms: view.since_renew_ms.unwrap_or(0),
    }
}

fn audit_pb(entry: &AuditEntry) -> pb::AuditEntry {
    pb::AuditEntry {
        worker_id: entry.worker_id.0,
        stale_token: entry.stale_token.0,
        current_token: entry.current_token.0,
        stale_holder: String::new(),
        current_holder: entry.current_holder.as_ref().map(|h| h.0.clone()).unwrap_or_default(),
        overlap_from_ms: entry.overlap_from_ms,
        overlap_to_ms: entry.overlap_to_ms,
        detected_at_ms: entry.detected_at_ms,
        kind: match entry.kind {
            AuditKind::Canary => "canary",
            AuditKind::Operator => "operator",
        }
        .to_string(),
    }
}

pub fn status_pb(status: &StatusView, config: Option<ClusterConfig>, cluster_id: &str) -> pb::ClusterStatusResponse {
    let config = config.unwrap_or(ClusterConfig {
        epoch_ms: 0,
        worker_id_bits: 0,
        sequence_bits: 0,
        ttl_ms_max: 0,
        cool_down_ms: 0,
    });
    pb::ClusterStatusResponse {
        leader_id: status.leader_id.unwrap_or(0),
        term: status.term,
        members: status
            .members
            .iter()
            .map(|m| pb::Member {
                node_id: m.node_id,
                role: m.role.to_string(),
                peer_addr: m.node.peer_addr.clone(),
                client_addr: m.node.client_addr.clone(),
                voter: m.voter,
                matched_index: m.matched_index.unwrap_or(0),
                last_ack_ms: m.last_ack.map(|d| d.as_millis() as u64),
                start_quiet_ms: m.start_quiet.map(|d| d.as_millis() as u64),
            })
            .collect(),
        commit_index: status.commit_index,
        applied_index: status.applied_index,
        node_id: status.node_id,
        cluster_id: cluster_id.to_string(),
        epoch_ms: config.epoch_ms,
        worker_id_bits: u32::from(config.worker_id_bits),
        max_ttl_ms: config.ttl_ms_max,
        cool_down_ms: config.cool_down_ms,
        last_log_index: status.last_log_index,
        snapshot_index: status.snapshot_index,
        served_node_ids: status.served_node_ids.clone(),
        state: status.state.to_string(),
        quorum_ack_age_ms: status.quorum_ack_age.map(|d| d.as_millis() as u64),
        leader_lease_ms: status.leader_lease.as_millis() as u64,
        sequence_bits: u32::from(config.sequence_bits),
        apply_rules: u32::from(status.apply_rules.0),
    }
}

#[tonic::async_trait]
impl pb::registry_server::Registry for RegistryService {
    async fn acquire(&self, request: Request<pb::AcquireRequest>) -> Result<Response<pb::Lease>, Status> {
        let owner = self.authorize(&request, Rpc::Acquire)?.identity().map(|i| i.uri());
        let r = request.into_inner();
        let config = self.config();
        let holder = validate::holder(&r.holder).map_err(invalid)?;
        let worker_id = r.worker_id.map(|w| validate::worker_id(w, config.as_ref())).transpose().map_err(invalid)?;
        let ttl_ms = validate::ttl_ms(r.ttl_ms, config.as_ref()).map_err(invalid)?;
        let incarnation = Incarnation::stated(r.incarnation);
        self.lease(Proposal::Acquire { holder, worker_id, ttl_ms, owner, incarnation }).await.map(Response::new)
    }

    async fn renew(&self, request: Request<pb::RenewRequest>) -> Result<Response<pb::Lease>, Status> {
        let caller = self.authorize(&request, Rpc::Renew)?.identity().map(|i| i.uri());
        self.renew_lease(caller, request.into_inner()).await.map(Response::new)
    }

    type RenewStreamStream = renew_stream::Answers;

    async fn renew_stream(
        &self,
        request: Request<Streaming<pb::RenewStreamRequest>>,
    ) -> Result<Response<Self::RenewStreamStream>, Status> {
        // Once for the stream: its every message comes from the certificate of this connection.
        let caller = self.authorize(&request, Rpc::Renew)?.identity().map(|i| i.uri());
        tracing::debug!(caller = caller.as_deref().unwrap_or("-"), "RenewStream opened");
        let service = self.clone();
        let renew = move |r: pb::RenewRequest| {
            let (service, caller) = (service.clone(), caller.clone());
            async move { service.renew_lease(caller, r).await }
        };
        Ok(Response::new(renew_stream::serve(request.into_inner(), renew, self.stopped.clone().wait())))
    }

    async fn release(&self, request: Request<pb::ReleaseRequest>) -> Result<Response<pb::ReleaseResponse>, Status> {
        let caller = self.authorize(&request, Rpc::Release)?.identity().map(|i| i.uri());
        let r = request.into_inner();
        let config = self.config();
        let worker_id = validate::worker_id(r.worker_id, config.as_ref()).map_err(invalid)?;
        let token = validate::token(r.token).map_err(invalid)?;
        match self.run(Proposal::Release(Release { worker_id, token, last_ts_ms: r.last_ts_ms, caller })).await? {
            Reply::Released => {
                tracing::info!(worker_id = worker_id.0, token = token.0, last_ts_ms = r.last_ts_ms, "lease released");
                Ok(Response::new(pb::ReleaseResponse {}))
            }
            other => Err(wrong_reply(&other)),
        }
    }

    async fn get_lease(&self, request: Request<pb::GetLeaseRequest>) -> Result<Response<pb::LeaseInfo>, Status> {
        let caller = self.authorize(&request, Rpc::GetLease)?;
        let worker_id = validate::worker_id(request.into_inner().worker_id, self.config().as_ref()).map_err(invalid)?;
        let view = self.lease_info(Proposal::GetLease { worker_id }).await?;
        Ok(Response::new(lease_info_for(&caller, &view)))
    }

    async fn list_leases(
        &self,
        request: Request<pb::ListLeasesRequest>,
    ) -> Result<Response<pb::ListLeasesResponse>, Status> {
        let caller = self.authorize(&request, Rpc::ListLeases)?;
        let include_free = request.into_inner().include_free;
        match self.run(Proposal::ListLeases { include_free }).await? {
            Reply::Leases(views) => Ok(Response::new(pb::ListLeasesResponse {
                leases: views.iter().map(|v| lease_info_for(&caller, v)).collect(),
            })),
            other => Err(wrong_reply(&other)),
        }
    }

    async fn cluster_status(
        &self,
        request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        self.authorize(&request, Rpc::ClusterStatus)?;
        let started = self.node.clock.mono();
        let status = self.node.status().await;
        self.node.metrics.observe(Rpc::ClusterStatus, self.node.clock.mono().since(started), false);
        Ok(Response::new(status_pb(&status, self.config(), &self.node.cluster_id)))
    }

    async fn quarantine(
        &self,
        request: Request<pb::QuarantineRequest>,
    ) -> Result<Response<pb::QuarantineResponse>, Status> {
        let caller = self.authorize(&request, Rpc::Quarantine)?;
        let r = request.into_inner();
        let worker_id = validate::worker_id(r.worker_id, self.config().as_ref()).map_err(invalid)?;
        let reason = validate::reason(&r.reason).map_err(invalid)?;
        let view = self.lease_info(Proposal::Quarantine(Quarantine { worker_id, reason: reason.clone() })).await?;
        tracing::warn!(worker_id = worker_id.0, reason, operator = %caller.describe(), "worker ID quarantined by an operator");
        Ok(Response::new(pb::QuarantineResponse { lease: Some(lease_info_pb(&view)) }))
    }

    async fn unquarantine(
        &self,
        request: Request<pb::UnquarantineRequest>,
    ) -> Result<Response<pb::QuarantineResponse>, Status> {
        let caller = self.authorize(&request, Rpc::Unquarantine)?;
        let worker_id = validate::worker_id(request.into_inner().worker_id, self.config().as_ref()).map_err(invalid)?;
        let view = self.lease_info(Proposal::Unquarantine(Unquarantine { worker_id })).await?;
        tracing::warn!(worker_id = worker_id.0, operator = %caller.describe(), "worker ID unquarantined by an operator");
        Ok(Response::new(pb::QuarantineResponse { lease: Some(lease_info_pb(&view)) }))
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        self.authorize(&request, Rpc::ListAudit)?;
        match self.run(Proposal::ListAudit).await? {
            Reply::Audit(entries) => {
                Ok(Response::new(pb::ListAuditResponse { entries: entries.iter().map(audit_pb).collect() }))
            }
            other => Err(wrong_reply(&other)),
        }
    }

    async fn export_snapshot(
        &self,
        request: Request<pb::ExportSnapshotRequest>,
    ) -> Result<Response<pb::ExportSnapshotResponse>, Status> {
        self.authorize(&request, Rpc::ExportSnapshot)?;
        match self.run(Proposal::ExportSnapshot).await? {
            Reply::Backup { backup, applied_index, wall_ms } => {
                let provenance =
                    Provenance { cluster_id: self.node.cluster_id.clone(), applied_index, exported_at_ms: wall_ms };
                let data = backup::encode(&backup, provenance)
                    .map_err(|e| Status::internal(format!("cannot encode the backup: {e}")))?;
                tracing::info!(applied_index, records = backup.records.len(), bytes = data.len(), "backup exported");
                Ok(Response::new(pb::ExportSnapshotResponse {
                    data,
                    applied_index,
                    records: backup.records.len() as u32,
                    exported_at_ms: wall_ms,
                }))
            }
            other => Err(wrong_reply(&other)),
        }
    }

    async fn import_snapshot(
        &self,
        request: Request<pb::ImportSnapshotRequest>,
    ) -> Result<Response<pb::ImportSnapshotResponse>, Status> {
        let caller = self.authorize(&request, Rpc::ImportSnapshot)?;
        let data = request.into_inner().data;
        let (table, provenance) =
            backup::decode(&data).map_err(|e| invalid(RegistryError::invalid("data", e.to_string())))?;
        tracing::warn!(
            from_cluster = provenance.cluster_id,
            from_applied_index = provenance.applied_index,
            exported_at_ms = provenance.exported_at_ms,
            operator = %caller.describe(),
            "restoring a backup"
        );
        match self.run(Proposal::ImportSnapshot { backup: Box::new(table) }).await? {
            Reply::Restored { generation, worker_ids, records, embargo_until_ms } => {
                Ok(Response::new(pb::ImportSnapshotResponse {
                    generation: u32::from(generation),
                    worker_ids,
                    records: records as u32,
                    embargo_until_ms,
                }))
            }
            other => Err(wrong_reply(&other)),
        }
    }

    async fn add_learner(
        &self,
        request: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let caller = self.authorize(&request, Rpc::AddLearner)?;
        tracing::info!(rpc = "AddLearner", operator = %caller.describe(), "membership or leadership change requested");
        let r = request.into_inner();
        let node_id = validate::node_id(r.node_id).map_err(invalid)?;
        let peer_addr = validate::address("peer_addr", &r.peer_addr, true).map_err(invalid)?;
        let client_addr = validate::address("client_addr", &r.client_addr, false).map_err(invalid)?;
        tracing::info!(node_id, peer_addr, client_addr, "adding learner");
        self.membership(Proposal::AddLearner { node_id, node: PeerNode { peer_addr, client_addr } }).await
    }

    async fn promote_member(
        &self,
        request: Request<pb::PromoteMemberRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let caller = self.authorize(&request, Rpc::PromoteMember)?;
        tracing::info!(rpc = "PromoteMember", operator = %caller.describe(), "membership or leadership change requested");
        let node_id = validate::node_id(request.into_inner().node_id).map_err(invalid)?;
        tracing::info!(node_id, "promoting learner to voter");
        self.membership(Proposal::PromoteMember { node_id }).await
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let caller = self.authorize(&request, Rpc::RemoveMember)?;
        tracing::info!(rpc = "RemoveMember", operator = %caller.describe(), "membership or leadership change requested");
        let node_id = validate::node_id(request.into_inner().node_id).map_err(invalid)?;
        tracing::info!(node_id, "removing member");
        self.membership(Proposal::RemoveMember { node_id }).await
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        let caller = self.authorize(&request, Rpc::TransferLeader)?;
        tracing::info!(rpc = "TransferLeader", operator = %caller.describe(), "membership or leadership change requested");
        let to = request.into_inner().to_node_id.map(validate::node_id).transpose().map_err(invalid)?;
        tracing::warn!(to = ?to, "leadership transfer requested");
        match self.run(Proposal::TransferLeader { to }).await? {
            Reply::LeaderMoved { from, leader, term } => {
                Ok(Response::new(pb::TransferLeaderResponse { from_node_id: from, leader_id: leader, term }))
            }
            other => Err(wrong_reply(&other)),
        }
    }
}
