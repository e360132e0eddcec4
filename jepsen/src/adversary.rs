//! The adversary's client, run by the harness's workload inside the client namespace (the
//! `adversary` scenario) and by the simulator's `adversary` machine while the workers mint: a
//! caller holding a valid `worker` identity of the cluster (its own, `worker/adversary`)
//! forges, round after round, every call of [`Forged`] against the other workers' leases and
//! the cluster, and records each attempt with the node it went to and how it ended
//! ([`ForgedOutcome`]); `checker::adversary` judges them.
//!
//! It uses only what it can learn itself: `ListLeases`/`GetLease` (which must show it no
//! token), and the workers' leases from a [`Scout`] — in the harness each worker's `Status` on
//! the Generator API (which any `worker` may call and which states the worker's ID, token and
//! holder ID): so the forged `Release`/`Renew` carry the true current token, and a refusal
//! proves the identity check, not only token secrecy.
//!
//! Operator RPCs are sent with arguments that would change little if one got through (node 99
//! is no member; the junk snapshot does not decode): authorization runs before anything else,
//! so any answer but `PERMISSION_DENIED` already shows it let the call through.
//!
//! What differs between the harness and the simulator is only the transport (a
//! [`BoxChannel`] per registry node and caller: [`Callers`]), the [`Scout`] and the
//! [`Timeline`], as for the registry workload.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::path::Path;
use std::time::Duration;

use fenceflake_proto::channel::{boxed, BoxChannel};
use fenceflake_proto::tls::{Role, Security, TlsFiles, TlsState};
use fenceflake_proto::v1 as pb;
use fenceflake_proto::v1::generator_client::GeneratorClient;
use fenceflake_proto::v1::registry_client::RegistryClient;
use fenceflake_proto::wire::Reason;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::history::{Event, Forged, ForgedCall, ForgedOutcome};
use crate::registry_workload::Timeline;
use crate::workload::{channel, status_text, HarnessTimeline, Plan, Shared};

/// The adversary's own identity: a `worker` certificate of the run's CA.
pub const IDENTITY: (&str, &str) = ("worker", "adversary");
/// Where, inside the run's cert dir, another CA (same trust domain) keeps a `worker/adversary`
/// certificate of its own.
pub const FOREIGN_CA_DIR: &str = "foreign-ca";
/// A node that is no member of the cluster, for the membership RPCs.
const NO_MEMBER: u64 = 99;
/// Each forged call's own bound: past it, the call counts as never connected.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Between the harness's rounds.
pub const HARNESS_ROUND_PAUSE: Duration = Duration::from_millis(200);
/// Near `u64::MAX`, for the claims a renewal makes.
const HUGE: u64 = u64::MAX - 1;

/// How a forged call reaches the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// With the adversary's own valid `worker` certificate.
    Certificate,
    /// Plaintext, no certificate.
    Plaintext,
    /// With a `worker` certificate of another CA.
    ForeignCa,
}

/// A worker's lease, as the adversary learnt it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Victim {
    pub worker_id: u32,
    pub token: u64,
    pub holder: String,
}

/// Where the adversary learns the serving workers' leases.
pub trait Scout: Send {
    fn victims(&mut self) -> impl Future<Output = Vec<Victim>> + Send;

    /// Whether `victim`'s worker still holds that lease, asked just before the forged calls
    /// against it: under other faults (the simulator's) a worker killed since the round
    /// began gives its ID back, and the adversary taking a free ID proves nothing. The
    /// harness's scenario injects no other fault and asks once per round.
    fn still_holds(&mut self, _victim: &Victim) -> impl Future<Output = bool> + Send {
        std::future::ready(true)
    }
}

/// The registry nodes as the adversary reaches them: one client per node, in the order of
/// `names`, for each way of calling.
pub struct Callers {
    /// Registry node names, as the history names them.
    pub names: Vec<String>,
    /// With the adversary's own identity.
    pub own: Vec<RegistryClient<BoxChannel>>,
    /// Without a certificate; `None` when the run itself is plaintext (nothing to forge there).
    pub plaintext: Option<Vec<RegistryClient<BoxChannel>>>,
    /// With a certificate of another CA; `None` when the run is plaintext.
    pub foreign: Option<Vec<RegistryClient<BoxChannel>>>,
}

pub struct Adversary<S, T> {
    callers: Callers,
    scout: S,
    timeline: T,
    rng: StdRng,
    round_pause: Duration,
    /// Round-robin position over the registry nodes.
    next: usize,
    /// Tokens granted to the adversary itself: the only non-zero tokens it may be shown.
    own_tokens: HashSet<u64>,
    /// Holder IDs it asked for under its own identity without learning the outcome yet (with
    /// the worker ID of the victim whose holder ID it borrowed): the registry may have granted
    /// it a lease (its own) whose token it does not know, so a read showing an unknown token
    /// proves nothing until these are recovered.
    unrecovered: BTreeMap<String, u32>,
    /// Every token the scout has seen a victim hold: tokens are never granted twice, so one of
    /// these is never the adversary's own, recovered or not.
    victim_tokens: HashSet<u64>,
}

/// The harness's scout: each worker's `Status`, asked as `worker/adversary`.
pub struct WorkerStatuses(Vec<GeneratorClient<Channel>>);

impl Scout for WorkerStatuses {
    async fn victims(&mut self) -> Vec<Victim> {
        let mut victims = Vec::new();
        for client in &self.0 {
            let mut client = client.clone();
            let Ok(Ok(status)) = tokio::time::timeout(CALL_TIMEOUT, client.status(pb::StatusRequest {})).await else {
                continue;
            };
            let s = status.into_inner();
            if s.state == "SERVING" && s.token != 0 {
                victims.push(Victim { worker_id: s.worker_id, token: s.token, holder: s.holder });
            }
        }
        victims
    }
}

fn registry_clients(addrs: &[String], security: &Security) -> anyhow::Result<Vec<RegistryClient<BoxChannel>>> {
    addrs.iter().map(|addr| channel(addr, security, &[Role::Node]).map(|c| RegistryClient::new(boxed(c)))).collect()
}

/// The adversary of `plan`'s run: its own certificate, and under TLS a plaintext caller and a
/// caller with a certificate of another CA (made by the controller in the cert dir).
pub(crate) fn for_harness(plan: &Plan, history: Shared) -> anyhow::Result<Adversary<WorkerStatuses, HarnessTimeline>> {
    let certs = plan.certs.as_deref();
    let security = crate::tls::security(certs, IDENTITY)?;
    let (plaintext, foreign) = match certs {
        None => (None, None),
        Some(dir) => (
            Some(registry_clients(&plan.registry, &Security::Insecure)?),
            Some(registry_clients(&plan.registry, &foreign_security(dir)?)?),
        ),
    };
    let workers = plan
        .workers
        .iter()
        .map(|(_, addr)| channel(addr, &security, &[Role::Worker]).map(GeneratorClient::new))
        .collect::<anyhow::Result<_>>()?;
    let callers = Callers {
        names: (1..=plan.registry.len()).map(|i| format!("n{i}")).collect(),
        own: registry_clients(&plan.registry, &security)?,
        plaintext,
        foreign,
    };
    let timeline = HarnessTimeline { clock: plan.clock, history };
    Ok(Adversary::new(callers, WorkerStatuses(workers), timeline, plan.seed ^ 0xad5e, HARNESS_ROUND_PAUSE))
}

impl<S: Scout, T: Timeline> Adversary<S, T> {
    /// An adversary calling through `callers`, learning its victims from `scout`, its random
    /// choices (made-up tokens) from `seed`, pausing `round_pause` between rounds.
    pub fn new(callers: Callers, scout: S, timeline: T, seed: u64, round_pause: Duration) -> Adversary<S, T> {
        Adversary {
            callers,
            scout,
            timeline,
            rng: StdRng::seed_from_u64(seed),
            round_pause,
            next: 0,
            own_tokens: HashSet::new(),
            unrecovered: BTreeMap::new(),
            victim_tokens: HashSet::new(),
        }
    }

    /// Forge round after round from `start` to `stop` (ns on the timeline's clock). Each round
    /// sends the node-local refusals (reads, operator RPCs, no valid certificate) to every
    /// node, then the lease calls against every worker's lease to the nodes in turn.
    pub async fn run(mut self, start_ns: u64, stop_ns: u64) {
        while self.timeline.now_ns() < start_ns {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut round = 0usize;
        while self.timeline.now_ns() < stop_ns {
            let victims = self.scout.victims().await;
            self.victim_tokens.extend(victims.iter().map(|v| v.token).filter(|t| *t != 0));
            for (holder, victim_id) in std::mem::take(&mut self.unrecovered) {
                self.recover_own(&holder, victim_id).await;
            }
            let target = (!victims.is_empty()).then(|| &victims[round % victims.len()]);
            for at in 0..self.callers.names.len() {
                self.list_leases(at).await;
                self.forge_operator_calls(at, target.map_or(0, |v| v.worker_id)).await;
                if let Some(victim) = target {
                    self.forge_without_certificate(at, victim).await;
                }
            }
            for victim in &victims {
                if self.timeline.now_ns() >= stop_ns {
                    break;
                }
                if self.scout.still_holds(victim).await {
                    self.forge_lease_calls(victim).await;
                }
                if self.scout.still_holds(victim).await {
                    self.forge_acquires(victim).await;
                }
            }
            round += 1;
            tokio::time::sleep(self.round_pause).await;
        }
        tracing::info!(rounds = round, "adversary done");
    }

    /// One call to the next registry node (round-robin) over `via`.
    async fn call<R, F, Fut>(&mut self, via: Via, f: F) -> (String, Result<R, Status>)
    where
        F: FnOnce(RegistryClient<BoxChannel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let at = self.next % self.callers.names.len();
        self.next += 1;
        self.call_to(at, via, f).await
    }

    /// One call to registry node number `at` (0-based) over `via`, bounded by [`CALL_TIMEOUT`].
    async fn call_to<R, F, Fut>(&self, at: usize, via: Via, f: F) -> (String, Result<R, Status>)
    where
        F: FnOnce(RegistryClient<BoxChannel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let name = self.callers.names[at].clone();
        let clients = match via {
            Via::Certificate => Some(&self.callers.own),
            Via::Plaintext => self.callers.plaintext.as_ref(),
            Via::ForeignCa => self.callers.foreign.as_ref(),
        };
        let Some(client) = clients.map(|c| c[at].clone()) else {
            return (name, Err(Status::failed_precondition("no such caller in a plaintext run")));
        };
        let result = match tokio::time::timeout(CALL_TIMEOUT, f(client)).await {
            Ok(r) => r.map(tonic::Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded("adversary timeout")),
        };
        (name, result)
    }

    fn note(
        &self,
        call: Forged,
        node: String,
        outcome: ForgedOutcome,
        target: (Option<u32>, Option<u64>),
        request: String,
        answer: String,
    ) {
        let (worker_id, token) = target;
        let forged =
            ForgedCall { call, node, outcome, worker_id, token, request, answer, time_ns: self.timeline.now_ns() };
        self.timeline.record(Event::Adversary(forged));
    }

    /// `ListLeases` on node `at`: no token but the adversary's own may show.
    async fn list_leases(&self, at: usize) {
        let (node, result) = self
            .call_to(at, Via::Certificate, |mut c| async move {
                c.list_leases(pb::ListLeasesRequest { include_free: false }).await
            })
            .await;
        let result = result.map(|r| r.leases);
        let (outcome, answer) =
            (judge_read(&result, &self.known_tokens()), describe_read(&result, &self.known_tokens()));
        self.note(Forged::ListLeases, node, outcome, (None, None), String::new(), answer);
    }

    /// `GetLease` of a worker's ID: no token may show.
    async fn get_lease(&mut self, worker_id: u32) {
        let (node, result) = self
            .call(Via::Certificate, |mut c| async move { c.get_lease(pb::GetLeaseRequest { worker_id }).await })
            .await;
        let result = result.map(|l| vec![l]);
        let (outcome, answer) =
            (judge_read(&result, &self.known_tokens()), describe_read(&result, &self.known_tokens()));
        self.note(Forged::GetLease, node, outcome, (Some(worker_id), None), String::new(), answer);
    }

    /// Renew and Release of the victim's lease with its true token, and Renew with made-up
    /// stale tokens that try to trip the canary. (In this order, so that with authorization
    /// off each of them can show what it gets through before the Release ends the lease.)
    async fn forge_lease_calls(&mut self, v: &Victim) {
        let (worker_id, token) = (v.worker_id, v.token);
        self.get_lease(worker_id).await;
        for (call, wall_ms_at_send, max_minted_ts_ms) in
            [(Forged::RenewMintedMax, self.timeline.wall_ms(), HUGE), (Forged::RenewWallMax, HUGE, 0)]
        {
            let req = pb::RenewRequest { worker_id, token, wall_ms_at_send, max_minted_ts_ms };
            let request = format!("wall_ms_at_send={wall_ms_at_send} max_minted_ts_ms={max_minted_ts_ms}");
            let (node, result) = self.call(Via::Certificate, |mut c| async move { c.renew(req).await }).await;
            let answer = describe(&result, describe_lease);
            self.note(call, node, judge_foreign_lease(&result), (Some(worker_id), Some(token)), request, answer);
        }
        let made_up = if token > 2 { self.rng.gen_range(2..token) } else { self.rng.gen_range(2..u64::MAX) };
        for stale in [1, made_up] {
            self.forge_stale_renewal(worker_id, stale).await;
        }
        let (node, result) = self
            .call(Via::Certificate, |mut c| async move {
                c.release(pb::ReleaseRequest { worker_id, token, last_ts_ms: 0 }).await
            })
            .await;
        let answer = describe(&result, |_| "released".into());
        let target = (Some(worker_id), Some(token));
        self.note(Forged::Release, node, judge_foreign_lease(&result), target, "last_ts_ms=0".into(), answer);
    }

    /// Renew with `stale` and a huge `max_minted_ts_ms`, then read the lease: it must be FENCED
    /// and the worker ID must not be quarantined.
    async fn forge_stale_renewal(&mut self, worker_id: u32, stale: u64) {
        let req = pb::RenewRequest {
            worker_id,
            token: stale,
            wall_ms_at_send: self.timeline.wall_ms(),
            max_minted_ts_ms: HUGE,
        };
        let (node, result) = self.call(Via::Certificate, |mut c| async move { c.renew(req).await }).await;
        let (_, after) = self
            .call(Via::Certificate, |mut c| async move { c.get_lease(pb::GetLeaseRequest { worker_id }).await })
            .await;
        let outcome = judge_stale_renewal(&result, &after);
        let mut answer = describe(&result, describe_lease);
        match &after {
            Ok(info) if info.quarantined => answer.push_str(&format!("; then QUARANTINED: {}", info.quarantine_reason)),
            Ok(_) => answer.push_str("; then not quarantined"),
            Err(status) => answer.push_str(&format!("; then GetLease failed: {}", status_text(status))),
        }
        self.note(
            Forged::RenewStale,
            node,
            outcome,
            (Some(worker_id), Some(stale)),
            format!("max_minted_ts_ms={HUGE}"),
            answer,
        );
    }

    /// Acquire naming the victim's holder ID, for any worker ID and for the victim's: it must
    /// not get the victim's lease. A lease of its own on another ID is released at once.
    async fn forge_acquires(&mut self, v: &Victim) {
        for wanted in [None, Some(v.worker_id)] {
            let req = pb::AcquireRequest { holder: v.holder.clone(), worker_id: wanted, ttl_ms: 3000, incarnation: 0 };
            let request = format!("holder={:?} worker_id={wanted:?}", v.holder);
            let (node, result) = self.call(Via::Certificate, |mut c| async move { c.acquire(req).await }).await;
            let outcome = judge_acquire(&result, v, &self.victim_tokens);
            let answer = describe(&result, describe_lease);
            self.note(Forged::AcquireHolder, node, outcome, (Some(v.worker_id), None), request, answer);
            match result {
                // Only a lease of its own: a victim's is evidence, not the adversary's to give back.
                Ok(lease) if outcome == ForgedOutcome::Refused => self.release_own(lease).await,
                Err(status) if may_have_applied(&status) => self.recover_own(&v.holder, v.worker_id).await,
                _ => {}
            }
        }
    }

    /// After an Acquire whose outcome is unknown: ask again under the same holder ID (an
    /// Acquire is idempotent per identity and holder) and release what it returns, so that
    /// every token the adversary owns is known and none of its own leases lingers. Still
    /// unknown after a few tries: tried again each round, and reads showing an unknown token
    /// are inconclusive meanwhile. What comes back is judged before it counts as its own: a
    /// lease whose token a victim was seen holding is a violation (a leader that handed the
    /// victim's lease to the retry would otherwise go unreported). Not the worker ID alone: a
    /// retry the first Acquire did not precede is a new Acquire, which may rightly get the ID
    /// the victim has since given up.
    async fn recover_own(&mut self, holder: &str, victim_id: u32) {
        for _ in 0..3 {
            let req = pb::AcquireRequest { holder: holder.to_string(), worker_id: None, ttl_ms: 3000, incarnation: 0 };
            let (node, result) = self.call(Via::Certificate, |mut c| async move { c.acquire(req).await }).await;
            match result {
                Ok(lease) => {
                    let outcome = judge_recovered(&lease, &self.victim_tokens);
                    let request = format!("recovery: holder={holder:?} worker_id=None");
                    self.note(
                        Forged::AcquireHolder,
                        node,
                        outcome,
                        (Some(victim_id), None),
                        request,
                        describe_lease(&lease),
                    );
                    if outcome == ForgedOutcome::Refused {
                        self.release_own(lease).await;
                    }
                    return;
                }
                Err(status) if never_connected(&status) || unserved(&status) => {}
                Err(_) => return,
            }
        }
        self.unrecovered.insert(holder.to_string(), victim_id);
    }

    /// What a read may show without a leak: the adversary's own tokens, and whether it may
    /// own leases it has not learned (any unknown token but a victim's is then inconclusive).
    fn known_tokens(&self) -> KnownTokens<'_> {
        KnownTokens {
            own: &self.own_tokens,
            may_own_unknown: !self.unrecovered.is_empty(),
            victims: &self.victim_tokens,
        }
    }

    /// Give back a lease the adversary was granted under its own identity (allowed: it is its own).
    async fn release_own(&mut self, lease: pb::Lease) {
        self.own_tokens.insert(lease.token);
        let (worker_id, token) = (lease.worker_id, lease.token);
        let (_, result) = self
            .call(Via::Certificate, |mut c| async move {
                c.release(pb::ReleaseRequest { worker_id, token, last_ts_ms: 0 }).await
            })
            .await;
        if let Err(status) = result {
            tracing::warn!(worker_id, error = %status_text(&status), "the adversary could not release its own lease (it expires)");
        }
    }

    /// Every operator RPC, once, to node `at`.
    async fn forge_operator_calls(&self, at: usize, worker_id: u32) {
        let reason = "adversary: forged quarantine".to_string();
        let (node, r) = self
            .call_to(at, Via::Certificate, |mut c| async move {
                c.quarantine(pb::QuarantineRequest { worker_id, reason }).await
            })
            .await;
        self.note_operator(Forged::Quarantine, node, &r, Some(worker_id), String::new());
        let (node, r) = self
            .call_to(at, Via::Certificate, |mut c| async move {
                c.unquarantine(pb::UnquarantineRequest { worker_id }).await
            })
            .await;
        self.note_operator(Forged::Unquarantine, node, &r, Some(worker_id), String::new());
        let (node, r) = self
            .call_to(at, Via::Certificate, |mut c| async move { c.list_audit(pb::ListAuditRequest {}).await })
            .await;
        self.note_operator(Forged::ListAudit, node, &r, None, String::new());
        let (node, r) = self
            .call_to(at, Via::Certificate, |mut c| async move { c.export_snapshot(pb::ExportSnapshotRequest {}).await })
            .await;
        self.note_operator(Forged::ExportSnapshot, node, &r, None, String::new());
        let data = b"not a backup".to_vec();
        let (node, r) = self
            .call_to(at, Via::Certificate, |mut c| async move {
                c.import_snapshot(pb::ImportSnapshotRequest { data }).await
            })
            .await;
        self.note_operator(Forged::ImportSnapshot, node, &r, None, "data=\"not a backup\"".into());
        self.forge_membership_calls(at).await;
    }

    /// TransferLeader, PromoteMember, AddLearner and RemoveMember naming a node that is no member.
    async fn forge_membership_calls(&self, at: usize) {
        let request = format!("node_id={NO_MEMBER}");
        let to_node_id = Some(NO_MEMBER);
        let (node, r) = self
            .call_to(at, Via::Certificate, |mut c| async move {
                c.transfer_leader(pb::TransferLeaderRequest { to_node_id }).await
            })
            .await;
        self.note_operator(Forged::TransferLeader, node, &r, None, request.clone());
        let (node, r) = self
            .call_to(at, Via::Certificate, |mut c| async move {
                c.promote_member(pb::PromoteMemberRequest { node_id: NO_MEMBER }).await
            })
            .await;
        self.note_operator(Forged::PromoteMember, node, &r, None, request.clone());
        let add = pb::AddMemberRequest {
            node_id: NO_MEMBER,
            peer_addr: "192.0.2.1:2380".into(),
            client_addr: "192.0.2.1:2379".into(),
        };
        let (node, r) = self.call_to(at, Via::Certificate, |mut c| async move { c.add_learner(add).await }).await;
        self.note_operator(Forged::AddLearner, node, &r, None, format!("{request} peer_addr=192.0.2.1:2380"));
        let (node, r) = self
            .call_to(at, Via::Certificate, |mut c| async move {
                c.remove_member(pb::RemoveMemberRequest { node_id: NO_MEMBER }).await
            })
            .await;
        self.note_operator(Forged::RemoveMember, node, &r, None, request);
    }

    fn note_operator<R>(
        &self,
        call: Forged,
        node: String,
        result: &Result<R, Status>,
        worker_id: Option<u32>,
        request: String,
    ) {
        let answer = describe(result, |_| "done".into());
        self.note(call, node, judge_operator(result), (worker_id, None), request, answer);
    }

    /// Release of the victim's lease with its true token to node `at`, plaintext and with a
    /// certificate of another CA (skipped when the run itself is plaintext).
    async fn forge_without_certificate(&self, at: usize, v: &Victim) {
        let (worker_id, token) = (v.worker_id, v.token);
        for (call, via) in [(Forged::Plaintext, Via::Plaintext), (Forged::ForeignCa, Via::ForeignCa)] {
            if via == Via::Plaintext && self.callers.plaintext.is_none()
                || via == Via::ForeignCa && self.callers.foreign.is_none()
            {
                continue;
            }
            let (node, result) = self
                .call_to(at, via, |mut c| async move {
                    c.release(pb::ReleaseRequest { worker_id, token, last_ts_ms: 0 }).await
                })
                .await;
            let answer = describe(&result, |_| "released".into());
            self.note(
                call,
                node,
                judge_without_certificate(&result),
                (Some(worker_id), Some(token)),
                "last_ts_ms=0".into(),
                answer,
            );
        }
    }
}

/// A caller that trusts the run's CA (so it reaches the real nodes) but presents a `worker`
/// certificate of another CA of the same trust domain.
fn foreign_security(certs: &Path) -> anyhow::Result<Security> {
    let foreign = crate::tls::files(&certs.join(FOREIGN_CA_DIR), IDENTITY);
    let files = TlsFiles { ca: certs.join("ca.pem"), cert: foreign.cert, key: foreign.key };
    Ok(Security::Tls(TlsState::load(files)?))
}

/// Whether a failed call may never have reached a server's verdict: a status without the
/// registry's reason that a transport error or a timeout produces.
fn never_connected(status: &Status) -> bool {
    Reason::of(status).is_none()
        && matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded)
}

/// Whether a call that failed may still have taken effect: it never reached a server as far as
/// the caller knows, or the registry said the outcome is unknown. A definite refusal (not the
/// leader, no quorum, overloaded) applied nothing: nothing of the adversary's own is left to
/// recover, and counting it as unknown would excuse the reads after it (`judge_read`).
fn may_have_applied(status: &Status) -> bool {
    never_connected(status) || Reason::of(status).is_some_and(Reason::is_indeterminate)
}

/// Whether the registry could not serve the call at all (no leader, overloaded, unknown outcome).
fn unserved(status: &Status) -> bool {
    Reason::of(status).is_some_and(|r| r.code() == Code::Unavailable || r == Reason::Fatal)
}

/// Release or Renew of another identity's lease with its true token: the identity check must
/// refuse it (`PERMISSION_DENIED`, `NOT_OWNER`). The claim checks (`CLOCK_SKEW`, `INVALID`) run
/// after it, so reaching them is getting past it; FENCED/EXPIRED/QUARANTINED mean the lease
/// changed before the call and prove nothing.
fn judge_foreign_lease<T>(result: &Result<T, Status>) -> ForgedOutcome {
    match result {
        Ok(_) => ForgedOutcome::Accepted,
        Err(s) if s.code() == Code::PermissionDenied => ForgedOutcome::Refused,
        Err(s) if never_connected(s) => ForgedOutcome::NeverConnected,
        Err(s) => match Reason::of(s) {
            Some(Reason::ClockSkew | Reason::Invalid) => ForgedOutcome::Accepted,
            _ => ForgedOutcome::Inconclusive,
        },
    }
}

/// A made-up stale token with a huge claim: FENCED, and the lease read afterwards not
/// quarantined. A quarantine after it, or any success, is the canary believing a stranger.
fn judge_stale_renewal(result: &Result<pb::Lease, Status>, after: &Result<pb::LeaseInfo, Status>) -> ForgedOutcome {
    match (result, after) {
        (_, Ok(info)) if info.quarantined => ForgedOutcome::Accepted,
        (Ok(_), _) => ForgedOutcome::Accepted,
        (Err(s), _) if never_connected(s) => ForgedOutcome::NeverConnected,
        (Err(s), Ok(_)) if Reason::of(s) == Some(Reason::Fenced) => ForgedOutcome::Refused,
        (Err(_), _) => ForgedOutcome::Inconclusive,
    }
}

/// Acquire with another worker's holder ID: getting that worker's ID, or any lease a victim
/// was seen holding, is the violation; a refusal, or a lease of its own on another ID, is
/// what must happen.
/// The victim's lease is its worker ID under a token no newer than the victim's: a token
/// above it is a fresh grant of an ID the victim no longer held (its holder's new process gave
/// it up for a free one, or it expired), which any caller could have had under any holder ID.
fn judge_acquire(result: &Result<pb::Lease, Status>, victim: &Victim, victim_tokens: &HashSet<u64>) -> ForgedOutcome {
    match result {
        Ok(lease)
            if (lease.worker_id == victim.worker_id && lease.token <= victim.token)
                || victims_token(lease.token, victim_tokens) =>
        {
            ForgedOutcome::Accepted
        }
        Ok(_) => ForgedOutcome::Refused,
        Err(s) if never_connected(s) => ForgedOutcome::NeverConnected,
        Err(s) if unserved(s) => ForgedOutcome::Inconclusive,
        Err(_) => ForgedOutcome::Refused,
    }
}

/// An operator RPC from a `worker`: `PERMISSION_DENIED`, and nothing else. Authorization runs
/// first, so any other answer (even a refusal of the arguments) means it let the call through.
fn judge_operator<T>(result: &Result<T, Status>) -> ForgedOutcome {
    match result {
        Err(s) if s.code() == Code::PermissionDenied => ForgedOutcome::Refused,
        Err(s) if never_connected(s) => ForgedOutcome::NeverConnected,
        _ => ForgedOutcome::Accepted,
    }
}

/// A call without a valid certificate: `UNAUTHENTICATED`, or the server ending the handshake
/// with an alert. Any other answer came from past authentication.
fn judge_without_certificate<T>(result: &Result<T, Status>) -> ForgedOutcome {
    match result {
        Err(s) if s.code() == Code::Unauthenticated || handshake_refused(s) => ForgedOutcome::Refused,
        Err(s) if never_connected(s) => ForgedOutcome::NeverConnected,
        _ => ForgedOutcome::Accepted,
    }
}

/// Whether the server refused the TLS handshake (it sent a fatal alert): the call reached it
/// and was refused before any RPC.
fn handshake_refused(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(status);
    while let Some(error) = source {
        if error.to_string().contains("received fatal alert") {
            return true;
        }
        source = error.source();
    }
    false
}

/// The lease an idempotent retry of its own Acquire returned: a token a victim held is a
/// violation; any other is the adversary's own.
fn judge_recovered(lease: &pb::Lease, victim_tokens: &HashSet<u64>) -> ForgedOutcome {
    if victims_token(lease.token, victim_tokens) {
        ForgedOutcome::Accepted
    } else {
        ForgedOutcome::Refused
    }
}

/// Whether a victim was seen holding `token` (0 is no token: hidden, or none).
fn victims_token(token: u64, victim_tokens: &HashSet<u64>) -> bool {
    token != 0 && victim_tokens.contains(&token)
}

/// The tokens a read is judged against.
#[derive(Clone, Copy)]
struct KnownTokens<'a> {
    own: &'a HashSet<u64>,
    /// An Acquire of its own has an outcome it has not learned: an unknown token may be its own.
    may_own_unknown: bool,
    /// Tokens victims held: never the adversary's, whatever it has not learned.
    victims: &'a HashSet<u64>,
}

/// A read must show no token but the adversary's own. While it may own leases it has not
/// learned, an unknown token may be one of them, unless a victim was seen holding it.
fn judge_read(result: &Result<Vec<pb::LeaseInfo>, Status>, known: &KnownTokens<'_>) -> ForgedOutcome {
    let shown = |leases: &[pb::LeaseInfo]| leases.iter().any(|l| shown_token(l, known.own));
    let victims_shown = |leases: &[pb::LeaseInfo]| leases.iter().any(|l| victims_token(l.token, known.victims));
    match result {
        Ok(leases) if victims_shown(leases) => ForgedOutcome::Accepted,
        Ok(leases) if shown(leases) && known.may_own_unknown => ForgedOutcome::Inconclusive,
        Ok(leases) if shown(leases) => ForgedOutcome::Accepted,
        Ok(_) => ForgedOutcome::Refused,
        Err(s) if s.code() == Code::PermissionDenied => ForgedOutcome::Refused,
        Err(s) if never_connected(s) => ForgedOutcome::NeverConnected,
        Err(_) => ForgedOutcome::Inconclusive,
    }
}

fn shown_token(lease: &pb::LeaseInfo, own: &HashSet<u64>) -> bool {
    lease.token != 0 && !own.contains(&lease.token)
}

/// Names the token that decided the judgement: a victim's before one that may be its own.
fn describe_read(result: &Result<Vec<pb::LeaseInfo>, Status>, known: &KnownTokens<'_>) -> String {
    let victims = |leases: &[pb::LeaseInfo]| leases.iter().find(|l| victims_token(l.token, known.victims)).cloned();
    describe(result, |leases| {
        match victims(leases).or_else(|| leases.iter().find(|l| shown_token(l, known.own)).cloned()) {
            Some(l) => format!("token {} of worker ID {} (holder {:?}) shown", l.token, l.worker_id, l.holder),
            None => format!("{} leases, no foreign token shown", leases.len()),
        }
    })
}

fn describe_lease(lease: &pb::Lease) -> String {
    format!("lease of worker ID {} token {} mint_until_ms {}", lease.worker_id, lease.token, lease.mint_until_ms)
}

/// `OK: ...` or the status as the history records statuses.
fn describe<T>(result: &Result<T, Status>, ok: impl FnOnce(&T) -> String) -> String {
    match result {
        Ok(value) => format!("OK: {}", ok(value)),
        Err(status) if handshake_refused(status) || never_connected(status) => {
            format!("{} ({})", status_text(status), error_chain(status))
        }
        Err(status) => status_text(status),
    }
}

/// The status's sources, for transport errors (whose message alone says little).
fn error_chain(status: &Status) -> String {
    let mut parts = Vec::new();
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        parts.push(error.to_string());
        source = error.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(worker_id: u32, token: u64) -> pb::Lease {
        pb::Lease { worker_id, token, ..pb::Lease::default() }
    }

    fn info(token: u64, quarantined: bool) -> pb::LeaseInfo {
        pb::LeaseInfo { worker_id: 1, token, quarantined, ..pb::LeaseInfo::default() }
    }

    /// Goal: a foreign lease call is refused only by the identity check; reaching the claim
    /// checks after it counts as getting through; a changed lease or a transport error proves
    /// nothing.
    #[test]
    fn foreign_lease_calls_are_judged_by_the_identity_check() {
        let judge = |r: Result<(), Status>| judge_foreign_lease(&r);
        assert_eq!(judge(Err(Reason::NotOwner.status("not yours"))), ForgedOutcome::Refused);
        assert_eq!(judge(Err(Status::permission_denied("Renew needs role worker"))), ForgedOutcome::Refused);
        assert_eq!(judge(Ok(())), ForgedOutcome::Accepted);
        assert_eq!(judge(Err(Reason::ClockSkew.status("ahead"))), ForgedOutcome::Accepted);
        assert_eq!(judge(Err(Reason::Invalid.status("beyond mint_until"))), ForgedOutcome::Accepted);
        assert_eq!(judge(Err(Reason::Fenced.status("stale"))), ForgedOutcome::Inconclusive);
        assert_eq!(judge(Err(Reason::NoLeader.status("election"))), ForgedOutcome::Inconclusive);
        assert_eq!(judge(Err(Status::unavailable("tcp connect error"))), ForgedOutcome::NeverConnected);
        assert_eq!(judge(Err(Status::deadline_exceeded("adversary timeout"))), ForgedOutcome::NeverConnected);
    }

    /// Goal: the canary attempt is refused only when FENCED and the lease is not quarantined
    /// afterwards; a quarantine after it is a violation whatever the renewal answered.
    #[test]
    fn a_stale_renewal_must_be_fenced_without_quarantine() {
        let fenced = || Err(Reason::Fenced.status("stale"));
        assert_eq!(judge_stale_renewal(&fenced(), &Ok(info(0, false))), ForgedOutcome::Refused);
        assert_eq!(judge_stale_renewal(&fenced(), &Ok(info(0, true))), ForgedOutcome::Accepted);
        assert_eq!(
            judge_stale_renewal(&Err(Status::unavailable("reset")), &Ok(info(0, true))),
            ForgedOutcome::Accepted
        );
        assert_eq!(judge_stale_renewal(&Ok(lease(1, 5)), &Ok(info(0, false))), ForgedOutcome::Accepted);
        assert_eq!(judge_stale_renewal(&fenced(), &Err(Status::unavailable("reset"))), ForgedOutcome::Inconclusive);
        assert_eq!(
            judge_stale_renewal(&Err(Status::unavailable("reset")), &Ok(info(0, false))),
            ForgedOutcome::NeverConnected
        );
    }

    /// Goal: an Acquire naming another worker's holder may get a refusal or an ID of its own,
    /// never the victim's lease.
    #[test]
    fn an_acquire_with_a_foreign_holder_must_not_get_the_victims_lease() {
        let victims: HashSet<u64> = [12].into();
        let v = Victim { worker_id: 3, token: 10, holder: "w1".into() };
        assert_eq!(judge_acquire(&Ok(lease(3, 10)), &v, &victims), ForgedOutcome::Accepted);
        assert_eq!(judge_acquire(&Ok(lease(3, 9)), &v, &victims), ForgedOutcome::Accepted, "an older lease of it");
        assert_eq!(judge_acquire(&Ok(lease(7, 9)), &v, &victims), ForgedOutcome::Refused);
        // The victim's ID granted afresh (its holder's new process gave it up): not its lease.
        assert_eq!(judge_acquire(&Ok(lease(3, 11)), &v, &victims), ForgedOutcome::Refused);
        // Another victim's lease (its token) is as much a violation as this victim's.
        assert_eq!(judge_acquire(&Ok(lease(7, 12)), &v, &victims), ForgedOutcome::Accepted);
        assert_eq!(judge_acquire(&Err(Reason::AlreadyHeld.status("held")), &v, &victims), ForgedOutcome::Refused);
        assert_eq!(judge_acquire(&Err(Reason::OutcomeUnknown.status("?")), &v, &victims), ForgedOutcome::Inconclusive);
    }

    /// Goal: operator RPCs are refused only by PERMISSION_DENIED; an argument error means the
    /// authorization let the call through.
    #[test]
    fn operator_calls_must_be_denied() {
        let judge = |r: Result<(), Status>| judge_operator(&r);
        assert_eq!(judge(Err(Status::permission_denied("needs role operator"))), ForgedOutcome::Refused);
        assert_eq!(judge(Err(Reason::Invalid.status("junk"))), ForgedOutcome::Accepted);
        assert_eq!(judge(Err(Reason::Membership.status("no member 99"))), ForgedOutcome::Accepted);
        assert_eq!(judge(Ok(())), ForgedOutcome::Accepted);
        assert_eq!(judge(Err(Status::cancelled("h2"))), ForgedOutcome::NeverConnected);
    }

    /// Goal: without a valid certificate, UNAUTHENTICATED is the refusal; a registry answer
    /// (even a refusal) came from past authentication.
    #[test]
    fn calls_without_a_certificate_must_be_unauthenticated() {
        let judge = |r: Result<(), Status>| judge_without_certificate(&r);
        assert_eq!(judge(Err(Status::unauthenticated("requires mutual TLS"))), ForgedOutcome::Refused);
        assert_eq!(judge(Err(Reason::NotOwner.status("not yours"))), ForgedOutcome::Accepted);
        assert_eq!(judge(Ok(())), ForgedOutcome::Accepted);
        assert_eq!(judge(Err(Status::unavailable("tcp connect error"))), ForgedOutcome::NeverConnected);
    }

    /// Goal: a read showing a token is a violation unless the token is the adversary's own.
    #[test]
    fn reads_must_show_no_foreign_token() {
        let own: HashSet<u64> = [77].into();
        let victims: HashSet<u64> = [90].into();
        let settled = KnownTokens { own: &own, may_own_unknown: false, victims: &victims };
        let unsettled = KnownTokens { may_own_unknown: true, ..settled };
        assert_eq!(judge_read(&Ok(vec![info(0, false), info(77, false)]), &settled), ForgedOutcome::Refused);
        assert_eq!(judge_read(&Ok(vec![info(0, false), info(78, false)]), &settled), ForgedOutcome::Accepted);
        // An Acquire of its own with an unknown outcome may have been granted token 78.
        assert_eq!(judge_read(&Ok(vec![info(78, false)]), &unsettled), ForgedOutcome::Inconclusive);
        assert_eq!(judge_read(&Ok(vec![info(77, false)]), &unsettled), ForgedOutcome::Refused);
        // But never a token a victim was seen holding: that is a leak whatever it has not learned.
        assert_eq!(judge_read(&Ok(vec![info(78, false), info(90, false)]), &unsettled), ForgedOutcome::Accepted);
        // A retry of its own Acquire must not return a victim's lease.
        assert_eq!(judge_recovered(&lease(1, 90), &victims), ForgedOutcome::Accepted);
        assert_eq!(judge_recovered(&lease(1, 91), &victims), ForgedOutcome::Refused);
        // Only an Acquire that may have applied leaves a lease of its own to recover.
        assert!(may_have_applied(&Status::unavailable("connection reset")));
        assert!(may_have_applied(&Reason::OutcomeUnknown.status("?")));
        assert!(!may_have_applied(&Reason::NotLeader.status("clock unproven")));
        assert!(!may_have_applied(&Reason::NoQuorum.status("cut off")));
        assert!(describe_read(&Ok(vec![info(78, false)]), &settled).contains("token 78 of worker ID 1"));
        // The victim's token decided an unsettled read: the answer names it, not 78.
        assert!(describe_read(&Ok(vec![info(78, false), info(90, false)]), &unsettled).contains("token 90"));
        // Token 0 (hidden) is never a victim's, even if the scout reported a 0.
        let zero: HashSet<u64> = [0].into();
        let zeroed = KnownTokens { victims: &zero, ..unsettled };
        assert_eq!(judge_read(&Ok(vec![info(0, false)]), &zeroed), ForgedOutcome::Refused);
    }
}
