//! Mutual TLS end to end over real TCP on loopback: identities reach handlers, every wrong
//! combination is refused with a message that says what is wrong, rotation applies to new
//! connections.

use std::path::Path;
use std::time::Duration;

use fenceflake_proto::tls::{self, Role, Security, TlsFiles, TlsState};
use fenceflake_proto::v1::generator_client::GeneratorClient;
use fenceflake_proto::v1::generator_server::{Generator, GeneratorServer};
use fenceflake_proto::v1::{
    GenerateBatchRequest, GenerateBatchResponse, GenerateRequest, GenerateResponse, StatusRequest, StatusResponse,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use tonic::transport::Endpoint;
use tonic::{Request, Response, Status};

/// Answers Status with the caller's identity in `x-identity`; needs role worker or client.
struct Echo;

#[tonic::async_trait]
impl Generator for Echo {
    async fn generate(&self, _: Request<GenerateRequest>) -> Result<Response<GenerateResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn generate_batch(
        &self,
        _: Request<GenerateBatchRequest>,
    ) -> Result<Response<GenerateBatchResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn status(&self, request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let caller = tls::authorize(&request, "Status", &[Role::Worker, Role::Client])?;
        let mut response = Response::new(StatusResponse::default());
        response.metadata_mut().insert("x-identity", caller.describe().parse().expect("ascii"));
        Ok(response)
    }
}

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(domain: &str) -> Ca {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, format!("test CA {domain}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().expect("key");
    let pem = params.self_signed(&key).expect("self-signed").pem();
    Ca { issuer: Issuer::new(params, key), pem }
}

/// Writes ca.pem, <name>.pem, <name>.key under `dir` for `spiffe://td/fenceflake/<role>/<name>`.
fn issue(dir: &Path, ca: &Ca, role: &str, name: &str, file: &str) -> TlsFiles {
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("params");
    let uri = format!("spiffe://td/fenceflake/{role}/{name}");
    params.subject_alt_names.push(SanType::URI(uri.try_into().expect("uri")));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca.issuer).expect("signed");
    let files = TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{file}.pem")),
        key: dir.join(format!("{file}.key")),
    };
    std::fs::write(&files.ca, &ca.pem).expect("write");
    std::fs::write(&files.cert, cert.pem()).expect("write");
    std::fs::write(&files.key, key.serialize_pem()).expect("write");
    files
}

fn tls(files: TlsFiles) -> Security {
    Security::Tls(TlsState::load(files).expect("load"))
}

async fn serve(security: Security) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let incoming = tls::incoming(listener, security, "test");
    let (_, health) = tonic_health::server::health_reporter();
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(tls::RefuseStrangersLayer::default())
            .add_service(health)
            .add_service(GeneratorServer::new(Echo))
            .serve_with_incoming(incoming),
    );
    addr.to_string()
}

async fn status(addr: &str, security: &Security, expect: &'static [Role]) -> Result<String, Status> {
    let endpoint = Endpoint::from_shared(tls::endpoint_url(addr)).expect("url").timeout(Duration::from_secs(5));
    let mut client = GeneratorClient::new(tls::connect_lazy(endpoint, security, expect));
    let response = client.status(StatusRequest::default()).await?;
    Ok(response.metadata().get("x-identity").expect("echo").to_str().expect("ascii").to_string())
}

#[tokio::test]
async fn mutual_tls_carries_the_callers_identity_and_checks_roles_both_ways() {
    let dir = tempfile::tempdir().expect("tmp");
    let ca = ca("td");
    let server = serve(tls(issue(dir.path(), &ca, "worker", "w1", "server"))).await;
    let client = tls(issue(dir.path(), &ca, "client", "svc", "client"));
    assert_eq!(status(&server, &client, &[Role::Worker]).await.expect("served"), "spiffe://td/fenceflake/client/svc");

    let reader = tls(issue(dir.path(), &ca, "reader", "r", "reader"));
    let denied = status(&server, &reader, &[Role::Worker]).await.expect_err("reader denied");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("Status needs role worker or client"), "{denied:?}");

    // The client expects a registry node there, and a worker answers: refused before any call.
    let wrong_server = status(&server, &client, &[Role::Node]).await.expect_err("server role checked");
    assert!(format!("{wrong_server:?}").contains("but a node of trust domain td was expected"), "{wrong_server:?}");
}

#[tokio::test]
async fn strangers_and_plaintext_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().expect("tmp");
    let ours = ca("td");
    let server_files = issue(dir.path(), &ours, "worker", "w1", "server");
    let server = serve(tls(server_files.clone())).await;

    let other_dir = tempfile::tempdir().expect("tmp");
    let foreign = tls(issue(other_dir.path(), &ca("td"), "client", "svc", "client"));
    assert!(status(&server, &foreign, &[Role::Worker]).await.is_err(), "a certificate of another CA is refused");

    let plaintext = status(&server, &Security::Insecure, &[Role::Worker]).await.expect_err("plaintext refused");
    assert_eq!(plaintext.code(), tonic::Code::Unauthenticated, "{plaintext:?}");
    assert!(plaintext.message().contains("requires mutual TLS"), "{plaintext:?}");

    // Echo's Generate authorizes nothing (it answers UNIMPLEMENTED): a stranger is stopped by
    // the gate in front of the service, before its request is read.
    let endpoint = Endpoint::from_shared(tls::endpoint_url(&server)).expect("url");
    let mut plain = GeneratorClient::new(tls::connect_lazy(endpoint, &Security::Insecure, &[Role::Worker]));
    let gated = plain.generate(GenerateRequest::default()).await.expect_err("gated");
    assert_eq!(gated.code(), tonic::Code::Unauthenticated, "{gated:?}");
    // ...but a health probe without a certificate (a Kubernetes grpc probe) gets its answer.
    let endpoint = Endpoint::from_shared(tls::endpoint_url(&server)).expect("url");
    let mut probe = tonic_health::pb::health_client::HealthClient::new(endpoint.connect_lazy());
    let health = probe.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await;
    assert!(health.is_ok(), "{health:?}");

    let insecure_server = serve(Security::Insecure).await;
    let client = tls(issue(dir.path(), &ours, "client", "svc", "client"));
    let error = status(&insecure_server, &client, &[Role::Worker]).await.expect_err("TLS against plaintext");
    assert!(format!("{error:?}").contains("plaintext, started with --insecure"), "{error:?}");
    assert_eq!(
        status(&insecure_server, &Security::Insecure, &[Role::Worker]).await.expect("plaintext both"),
        "unchecked (--insecure)"
    );
}

#[tokio::test]
async fn a_rotated_certificate_is_presented_on_the_next_connection() {
    let dir = tempfile::tempdir().expect("tmp");
    let ca = ca("td");
    let server = serve(tls(issue(dir.path(), &ca, "worker", "w1", "server"))).await;
    let client_files = issue(dir.path(), &ca, "client", "svc", "client");
    let state = TlsState::load(client_files.clone()).expect("load");
    let before = state.cert_not_after_unix();
    assert_eq!(state.reload().expect("same files"), tls::Reloaded::Unchanged);
    issue(dir.path(), &ca, "client", "svc", "client");
    assert!(matches!(state.reload().expect("rotated"), tls::Reloaded::Changed { .. }));
    assert!(state.cert_not_after_unix() >= before);
    assert_eq!(
        status(&server, &Security::Tls(state.clone()), &[Role::Worker]).await.expect("served"),
        "spiffe://td/fenceflake/client/svc"
    );

    // A rotation to another identity is refused and the old configs stay.
    issue(dir.path(), &ca, "operator", "svc", "client");
    assert!(matches!(state.reload(), Err(tls::TlsError::IdentityChanged { .. })));
    assert_eq!(state.identity().role, Role::Client);
}

#[test]
fn flags_must_be_complete_and_unambiguous() {
    use std::path::PathBuf;
    let p = || Some(PathBuf::from("/nonexistent"));
    assert!(matches!(Security::from_flags(None, None, None, false), Err(tls::TlsError::Missing)));
    assert!(matches!(Security::from_flags(p(), None, None, true), Err(tls::TlsError::Conflict("--tls-ca"))));
    assert!(matches!(Security::from_flags(p(), p(), None, false), Err(tls::TlsError::Incomplete("--tls-key"))));
    assert!(matches!(Security::from_flags(None, None, None, true), Ok(Security::Insecure)));
    assert!(matches!(Security::from_flags(p(), p(), p(), false), Err(tls::TlsError::Read { .. })));
}

/// Goal (moving a running cluster to TLS): a `--tls-transitional` server lets plaintext
/// callers in unchecked beside TLS ones, and a transitional client speaks plaintext to a
/// server not moved yet; without the switch both are refused.
#[tokio::test]
async fn transitional_mode_bridges_plaintext_and_tls_both_ways() {
    let dir = tempfile::tempdir().expect("tmp");
    let ca = ca("td");
    let server_state = TlsState::load(issue(dir.path(), &ca, "worker", "w1", "server")).expect("load");
    server_state.set_transitional(true);
    let server = serve(Security::Tls(server_state)).await;
    assert_eq!(
        status(&server, &Security::Insecure, &[Role::Worker]).await.expect("plaintext let in"),
        "unchecked (--insecure)"
    );
    let client = tls(issue(dir.path(), &ca, "client", "svc", "client"));
    assert_eq!(
        status(&server, &client, &[Role::Worker]).await.expect("TLS checked"),
        "spiffe://td/fenceflake/client/svc"
    );

    let plaintext_server = serve(Security::Insecure).await;
    assert!(status(&plaintext_server, &client, &[Role::Worker]).await.is_err(), "no fallback without the switch");
    let Security::Tls(state) = &client else { unreachable!() };
    state.set_transitional(true);
    assert_eq!(status(&plaintext_server, &client, &[Role::Worker]).await.expect("fallback"), "unchecked (--insecure)");
}
