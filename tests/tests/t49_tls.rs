//! Mutual TLS and roles with real binaries and real certificates (issue 8): a registry started
//! with TLS refuses a plaintext caller (saying it requires TLS), a certificate of another CA
//! and an expired certificate; each operator RPC refuses every other role with
//! PERMISSION_DENIED naming the RPC; only workers acquire; readers see leases without their
//! tokens, operators and the holder with them; a worker serves ID callers (client, worker,
//! operator) and no one else.

use std::process::{Command, Output};
use std::time::Duration;

use fenceflake_proto::tls::{Role, Security, TlsFiles, TlsState};
use fenceflake_proto::v1 as pb;
use fenceflake_proto::v1::registry_client::RegistryClient;
use fenceflake_tests::certs::{self, tls_env, Certs, ENV_CA, ENV_CERT, ENV_INSECURE, ENV_KEY};
use fenceflake_tests::cluster::Cluster;
use fenceflake_tests::fenceflake_bin;
use fenceflake_tests::worker::WorkerProcess;
use tonic::transport::Channel;
use tonic::Code;

/// `fenceflake ctl --registry <registry> ARGS` with exactly `env` for TLS (nothing inherited).
fn ctl(env: &[(String, String)], registry: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(fenceflake_bin());
    for var in [ENV_CA, ENV_CERT, ENV_KEY, ENV_INSECURE] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().cloned()).args(["ctl", "--registry", registry]).args(args).output().expect("run ctl")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A registry client of `addr` presenting `files` (whatever they are).
fn client_with(addr: &str, files: TlsFiles) -> RegistryClient<Channel> {
    let security = Security::Tls(TlsState::load(files).expect("load the TLS files"));
    RegistryClient::new(certs::channel(addr, &security, &[Role::Node], Duration::from_secs(5)))
}

/// Nothing in the call got through: it failed, and not with an answer of the service (a
/// server refusing a client certificate does so after the client's side of the TLS 1.3
/// handshake: the client sees its connection closed).
fn assert_refused<T: std::fmt::Debug>(what: &str, result: Result<T, tonic::Status>) {
    let err = result.expect_err(what);
    assert!(
        matches!(err.code(), Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Unauthenticated),
        "{what}: {err:?}"
    );
}

/// A one-node cluster whose node logs why it refuses TLS handshakes (at debug).
async fn cluster_logging_handshakes() -> Cluster {
    Cluster::start_with_env(1, &[], &[("RUST_LOG", "info,openraft=warn,fenceflake_proto::tls=debug")]).await
}

/// Node 1 logged that it refused a handshake, with `why` in the reason.
fn assert_node_refused(cluster: &Cluster, why: &str) {
    let log = cluster.log(1);
    let refusals: Vec<&str> =
        log.lines().filter(|l| l.contains("connection refused during the TLS handshake")).collect();
    assert!(refusals.iter().any(|l| l.contains(why)), "node 1 logged no handshake refused for {why:?}:\n{log}");
}

/// Goal: a client without a certificate (plaintext, `--insecure`) against a TLS registry is
/// refused, and is told the server requires TLS: `ctl --insecure` exits non-zero saying so,
/// an in-process plaintext call is UNAUTHENTICATED saying so. An operator with its
/// certificate is served (the refusals are not an outage).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_client_is_refused_and_told_the_server_requires_tls() {
    let cluster = Cluster::start(1, &[]).await;
    let addr = cluster.nodes[&1].client_addr.clone();
    let served = ctl(&cluster.env_for(Role::Operator, "test"), &addr, &["status"]);
    assert!(served.status.success(), "the operator is served: {}", text(&served));

    let insecure = [(ENV_INSECURE.to_string(), "true".to_string())];
    let out = ctl(&insecure, &addr, &["status"]);
    let said = text(&out);
    assert!(!out.status.success(), "ctl --insecure was served by a TLS registry: {said}");
    assert!(said.contains("requires mutual TLS") || said.contains("requires TLS"), "must say why: {said}");
    let out = ctl(&insecure, &addr, &["leases"]);
    assert!(!out.status.success() && text(&out).contains("TLS"), "{}", text(&out));

    let plain = certs::channel(&addr, &Security::Insecure, &[Role::Node], Duration::from_secs(5));
    let err = RegistryClient::new(plain)
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .expect_err("plaintext ClusterStatus served");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("requires mutual TLS"), "{err:?}");
}

/// Goal: certificates of another CA are refused: a client that trusts the cluster's CA but
/// presents a certificate of another CA (the server refuses it), and a client entirely of
/// another CA (neither side trusts the other), through ctl and in-process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_of_another_ca_is_refused() {
    let cluster = cluster_logging_handshakes().await;
    let addr = cluster.nodes[&1].client_addr.clone();
    let other = Certs::new();
    let foreign = other.files(Role::Operator, "test");
    let mixed = TlsFiles { ca: cluster.certs.ca(), ..foreign.clone() };

    for (what, files) in [("another CA's certificate", mixed), ("another CA entirely", foreign)] {
        let out = ctl(&tls_env(&files), &addr, &["status"]);
        assert!(!out.status.success(), "{what}: ctl was served: {}", text(&out));
        assert!(!text(&out).contains("NODE"), "{what}: a status table came back: {}", text(&out));
        let mut client = client_with(&addr, files);
        assert_refused(what, client.cluster_status(pb::ClusterStatusRequest {}).await);
        assert_refused(what, client.list_leases(pb::ListLeasesRequest { include_free: false }).await);
    }
    assert_node_refused(&cluster, "invalid peer certificate");
    let mut operator = cluster.operator(1);
    operator.cluster_status(pb::ClusterStatusRequest {}).await.expect("the cluster's own operator is served");
}

/// Goal: an expired certificate of the cluster's own CA is refused. `certs issue --valid-for
/// 1s` backdates the start an hour and ends it a second after issue; two seconds later it
/// has expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused() {
    let cluster = cluster_logging_handshakes().await;
    let addr = cluster.nodes[&1].client_addr.clone();
    let issued = cluster.certs.run(&["issue", "--role", "operator", "--name", "expired", "--valid-for", "1s"]);
    assert!(issued.status.success(), "certs issue --valid-for 1s: {}", text(&issued));
    let dir = cluster.certs.dir();
    let expired = TlsFiles {
        ca: cluster.certs.ca(),
        cert: dir.join("operator-expired.pem"),
        key: dir.join("operator-expired.key"),
    };
    tokio::time::sleep(Duration::from_millis(2_100)).await;

    let out = ctl(&tls_env(&expired), &addr, &["status"]);
    assert!(!out.status.success(), "ctl with an expired certificate was served: {}", text(&out));
    assert!(!text(&out).contains("NODE"), "a status table came back: {}", text(&out));
    let mut client = client_with(&addr, expired);
    assert_refused("an expired certificate", client.cluster_status(pb::ClusterStatusRequest {}).await);
    assert_node_refused(&cluster, "certificate expired");
    cluster.operator(1).cluster_status(pb::ClusterStatusRequest {}).await.expect("a valid operator is served");
}

/// Every operator-only RPC of the Registry service, called with harmless arguments by
/// `client`; each result with the RPC's name.
async fn call_every_operator_rpc(client: &mut RegistryClient<Channel>) -> Vec<(&'static str, Option<tonic::Status>)> {
    let member =
        pb::AddMemberRequest { node_id: 9, peer_addr: "127.0.0.1:1".into(), client_addr: "127.0.0.1:2".into() };
    vec![
        ("Quarantine", client.quarantine(pb::QuarantineRequest { worker_id: 1, reason: "forged".into() }).await.err()),
        ("Unquarantine", client.unquarantine(pb::UnquarantineRequest { worker_id: 1 }).await.err()),
        ("ListAudit", client.list_audit(pb::ListAuditRequest {}).await.err()),
        ("AddLearner", client.add_learner(member).await.err()),
        ("PromoteMember", client.promote_member(pb::PromoteMemberRequest { node_id: 9 }).await.err()),
        ("RemoveMember", client.remove_member(pb::RemoveMemberRequest { node_id: 1 }).await.err()),
        ("ExportSnapshot", client.export_snapshot(pb::ExportSnapshotRequest {}).await.err()),
        ("ImportSnapshot", client.import_snapshot(pb::ImportSnapshotRequest { data: b"{}".to_vec() }).await.err()),
        ("TransferLeader", client.transfer_leader(pb::TransferLeaderRequest { to_node_id: None }).await.err()),
    ]
}

/// Goal: a `worker` certificate (and a `reader`'s and a `client`'s) calling each operator RPC
/// gets PERMISSION_DENIED naming the RPC, and changes nothing: no quarantine, no audit entry,
/// the membership as it was; the operator lists the audit and exports a backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_rpcs_refuse_every_other_role_naming_the_rpc() {
    let cluster = Cluster::start(1, &[]).await;
    let mut failures = Vec::new();
    for role in [Role::Worker, Role::Reader, Role::Client] {
        for (rpc, err) in call_every_operator_rpc(&mut cluster.client_as(1, role)).await {
            match err {
                Some(s) if s.code() == Code::PermissionDenied && s.message().contains(rpc) => {}
                other => {
                    failures.push(format!("{rpc} as {role}: expected PERMISSION_DENIED naming {rpc}, got {other:?}"))
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let mut operator = cluster.operator(1);
    let lease = operator.get_lease(pb::GetLeaseRequest { worker_id: 1 }).await.expect("get lease 1").into_inner();
    assert!(!lease.quarantined, "a refused Quarantine quarantined: {lease:?}");
    let audit = operator.list_audit(pb::ListAuditRequest {}).await.expect("the operator lists the audit");
    assert!(audit.into_inner().entries.is_empty(), "a refused call left an audit entry");
    let status = cluster.status(1).await.expect("status");
    assert_eq!(status.members.len(), 1, "a refused membership call changed it: {status:?}");
    operator.export_snapshot(pb::ExportSnapshotRequest {}).await.expect("the operator exports a backup");
}

/// Goal: only `worker` certificates take, renew and give back leases: a `client` (an ID
/// consumer), a `reader` and an `operator` calling Acquire get PERMISSION_DENIED naming it,
/// and a `client` calling Renew or Release with a real token too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_workers_acquire_renew_and_release() {
    let cluster = Cluster::start(1, &[]).await;
    let acquire = || pb::AcquireRequest { holder: "forger".into(), worker_id: None, ttl_ms: 10_000, incarnation: 0 };
    for role in [Role::Client, Role::Reader, Role::Operator] {
        let err = cluster.client_as(1, role).acquire(acquire()).await.expect_err("a non-worker acquired");
        assert_eq!(err.code(), Code::PermissionDenied, "Acquire as {role}: {err:?}");
        assert!(err.message().contains("Acquire"), "Acquire as {role}: {err:?}");
    }
    let lease = cluster.client(1).acquire(acquire()).await.expect("a worker acquires").into_inner();
    let mut client = cluster.client_as(1, Role::Client);
    let renew = pb::RenewRequest { worker_id: lease.worker_id, token: lease.token, ..Default::default() };
    let err = client.renew(renew).await.expect_err("a client renewed");
    assert!(err.code() == Code::PermissionDenied && err.message().contains("Renew"), "{err:?}");
    let release = pb::ReleaseRequest { worker_id: lease.worker_id, token: lease.token, last_ts_ms: 0 };
    let err = client.release(release).await.expect_err("a client released");
    assert!(err.code() == Code::PermissionDenied && err.message().contains("Release"), "{err:?}");
    let held = cluster.operator(1).get_lease(pb::GetLeaseRequest { worker_id: lease.worker_id }).await;
    assert_eq!(held.expect("get lease").into_inner().state, "HELD", "the refused Release freed the lease");
}

/// Goal: tokens are shown only to their holder and to operators: a `reader` lists and gets
/// leases with token 0 (ctl too), another worker gets token 0, while the operator and the
/// holding worker see the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_see_leases_without_tokens_operators_with() {
    let cluster = Cluster::start(1, &[]).await;
    let acquire = pb::AcquireRequest { holder: "holder-a".into(), worker_id: Some(5), ttl_ms: 60_000, incarnation: 0 };
    let lease = cluster.client(1).acquire(acquire).await.expect("acquire 5").into_inner();
    assert_ne!(lease.token, 0);
    let listed_token = |mut client: RegistryClient<Channel>| async move {
        let listed = client.list_leases(pb::ListLeasesRequest { include_free: false }).await.expect("ListLeases");
        let five = listed.into_inner().leases.into_iter().find(|l| l.worker_id == 5).expect("lease 5 is listed");
        assert_eq!(five.state, "HELD");
        let got = client.get_lease(pb::GetLeaseRequest { worker_id: 5 }).await.expect("GetLease").into_inner();
        (five.token, got.token)
    };
    assert_eq!(listed_token(cluster.client_as(1, Role::Reader)).await, (0, 0), "a reader saw the token");
    let other = cluster.certs.security(Role::Worker, "other-worker");
    let addr = &cluster.nodes[&1].client_addr;
    let other = RegistryClient::new(certs::channel(addr, &other, &[Role::Node], Duration::from_secs(5)));
    assert_eq!(listed_token(other).await, (0, 0), "another worker saw the token");
    assert_eq!(listed_token(cluster.operator(1)).await, (lease.token, lease.token), "the operator sees it");
    assert_eq!(listed_token(cluster.client(1)).await, (lease.token, lease.token), "the holder sees it");

    let out = ctl(&cluster.env_for(Role::Reader, "test"), addr, &["leases", "--json"]);
    assert!(out.status.success(), "a reader runs ctl leases: {}", text(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ctl leases --json");
    let five = rows.as_array().and_then(|a| a.iter().find(|l| l["worker_id"] == 5)).cloned();
    assert_eq!(five.as_ref().map(|l| l["token"].clone()), Some(serde_json::json!(0)), "{rows}");
}

/// Goal: a worker serves ID callers with `client`, `worker` and `operator` certificates, and
/// refuses a `reader` (PERMISSION_DENIED naming the RPC) and a plaintext caller
/// (UNAUTHENTICATED, saying it requires TLS); `mint --insecure` fails saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_serves_its_callers_roles_only() {
    let cluster = Cluster::start(1, &[]).await;
    let worker = WorkerProcess::spawn(&cluster, "w", &cluster.client_addrs(), &[]);
    worker.wait_serving(Duration::from_secs(15)).await;
    for role in [Role::Client, Role::Worker, Role::Operator] {
        worker.client_as(role).generate(pb::GenerateRequest {}).await.unwrap_or_else(|e| panic!("{role}: {e:?}"));
    }
    let err = worker.client_as(Role::Reader).generate(pb::GenerateRequest {}).await.expect_err("a reader minted");
    assert!(err.code() == Code::PermissionDenied && err.message().contains("Generate"), "{err:?}");

    let plain = certs::channel(&worker.addr, &Security::Insecure, &[Role::Worker], Duration::from_secs(5));
    let mut plain = fenceflake_proto::v1::generator_client::GeneratorClient::new(plain);
    let err = plain.generate(pb::GenerateRequest {}).await.expect_err("a plaintext caller minted");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("requires mutual TLS"), "{err:?}");
    let mut mint = Command::new(fenceflake_bin());
    for var in [ENV_CA, ENV_CERT, ENV_KEY] {
        mint.env_remove(var);
    }
    let out = mint.env(ENV_INSECURE, "true").args(["mint", "--workers", &worker.addr, "-n", "1"]).output().unwrap();
    assert!(!out.status.success() && text(&out).contains("TLS"), "{}", text(&out));
}
