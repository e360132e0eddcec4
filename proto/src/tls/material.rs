//! Reading a process's TLS files (cluster CA, own certificate and key) and turning them into
//! rustls configs: mandatory client certificates on the server side, and on the client side
//! chain verification without host names (peers are checked by chain and role, so an
//! address change never needs a new certificate).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use super::der;
use super::identity::PeerIdentity;
use super::TlsError;

/// Where a process finds its TLS files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA: every peer's certificate must chain to it.
    pub ca: PathBuf,
    /// This process's certificate (PEM; the leaf first, intermediates after it).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
}

/// Everything built from one reading of the files.
pub(super) struct Material {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
    pub identity: PeerIdentity,
    /// The leaf's notAfter, seconds since the Unix epoch.
    pub not_after_unix: i64,
    /// What the files held, to tell a real change from a touch.
    pub contents: Vec<u8>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem { path: path.to_path_buf(), why: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { path: path.to_path_buf(), why: "no CERTIFICATE block".into() });
    }
    Ok(certs)
}

/// The Fenceflake SPIFFE ID in a certificate's URI SANs.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<PeerIdentity, String> {
    let cert = webpki::EndEntityCert::try_from(cert).map_err(|e| format!("unparseable certificate: {e}"))?;
    let uris: Vec<&str> = cert.valid_uri_names().collect();
    let spiffe = uris.iter().find(|u| u.starts_with("spiffe://")).ok_or_else(|| {
        format!("certificate has no spiffe:// URI SAN (URIs: {uris:?}); issue it with `fenceflake certs issue`")
    })?;
    spiffe.parse()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The three files' bytes, as read together.
pub(super) struct Pems {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl Pems {
    pub fn read(files: &TlsFiles) -> Result<Pems, TlsError> {
        Ok(Pems { ca: read(&files.ca)?, cert: read(&files.cert)?, key: read(&files.key)? })
    }

    pub fn same_as(&self, material: &Material) -> bool {
        material.contents == [&self.ca[..], &self.cert, &self.key].concat()
    }
}

impl Material {
    pub fn load(files: &TlsFiles) -> Result<Material, TlsError> {
        Material::build(files, Pems::read(files)?)
    }

    pub fn build(files: &TlsFiles, pems: Pems) -> Result<Material, TlsError> {
        let Pems { ca: ca_pem, cert: cert_pem, key: key_pem } = pems;
        let cas = certificates(&files.ca, &ca_pem)?;
        let chain = certificates(&files.cert, &cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| TlsError::Pem { path: files.key.clone(), why: e.to_string() })?;
        let mut roots = RootCertStore::empty();
        for ca in cas {
            roots.add(ca).map_err(|e| TlsError::Pem { path: files.ca.clone(), why: e.to_string() })?;
        }
        let roots = Arc::new(roots);
        let identity = identity_of(&chain[0]).map_err(|why| TlsError::Identity { path: files.cert.clone(), why })?;
        let not_after_unix = der::not_after_unix(&chain[0])
            .ok_or_else(|| TlsError::Pem { path: files.cert.clone(), why: "no readable validity period".into() })?;
        let server = server_config(&roots, chain.clone(), key.clone_key())?;
        let client = client_config(roots, chain, key)?;
        let contents = [ca_pem, cert_pem, key_pem].concat();
        Ok(Material { server, client, identity, not_after_unix, contents })
    }
}

fn server_config(
    roots: &Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

fn client_config(
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Verifies the server's chain, validity and signatures like WebPKI, but not its host name:
/// the caller checks the role in its SPIFFE ID after the handshake instead. WebPKI checks the
/// name last, after the chain, so a name error means everything else passed.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
