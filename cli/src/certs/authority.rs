//! The certificate authority: make a self-signed CA, reload it from `ca.pem` + `ca.key`,
//! and issue leaf certificates that chain to it.
//!
//! Reloading needs no X.509 parser: `ca.pem`'s subject and key usages are a function of the
//! trust domain alone, so the issuer is rebuilt from the trust domain (read back from the
//! CA's `spiffe://<trust domain>` URI SAN with rustls-webpki) and the key in `ca.key`. Every
//! leaf is verified against `ca.pem` before it is written, so a key that does not belong to
//! the certificate, or a CA not made by `certs init`, is refused rather than producing
//! certificates that no peer would accept.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;

use super::names::{self, Role};

/// How far back `not_before` lies from the moment of issue, so that a process whose clock
/// runs behind (or is skewed on purpose, with libfaketime, in tests) still accepts it.
pub const BACKDATE: time::Duration = time::Duration::hours(1);

/// A certificate and its private key, PEM-encoded.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
}

/// The validity window of a new certificate: from `now - BACKDATE` to `now + valid_for`.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    pub fn starting(now: OffsetDateTime, valid_for: Duration) -> anyhow::Result<Self> {
        if valid_for.is_zero() {
            bail!("--valid-for must be longer than 0s");
        }
        let now = now.replace_nanosecond(0).expect("0 is a valid nanosecond");
        let not_after = time::Duration::try_from(valid_for)
            .ok()
            .and_then(|d| now.checked_add(d))
            .filter(|t| t.year() <= 9999)
            .ok_or_else(|| anyhow!("--valid-for {valid_for:?} ends after the year 9999"))?;
        let not_before = now.checked_sub(BACKDATE).expect("an hour before now is representable");
        Ok(Self { not_before, not_after })
    }

    pub fn from_now(valid_for: Duration) -> anyhow::Result<Self> {
        Self::starting(OffsetDateTime::now_utc(), valid_for)
    }
}

/// What a leaf certificate names: its holder and where it serves.
pub struct LeafSpec<'a> {
    pub role: Role,
    pub name: &'a str,
    pub dns_names: &'a [String],
    pub ips: &'a [IpAddr],
}

/// The CA's parameters, all derived from the trust domain (`Authority::from_pem` relies on
/// that to rebuild the issuer).
fn ca_params(trust_domain: &str) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("Fenceflake CA ({trust_domain})"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.subject_alt_names = vec![SanType::URI(names::trust_domain_id(trust_domain).try_into()?)];
    Ok(params)
}

fn new_key() -> anyhow::Result<KeyPair> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("cannot generate an ECDSA P-256 key")
}

/// A new self-signed CA for `trust_domain`.
pub fn new_ca(trust_domain: &str, validity: Validity) -> anyhow::Result<Issued> {
    names::validate_trust_domain(trust_domain).map_err(|e| anyhow!(e))?;
    let mut params = ca_params(trust_domain)?;
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    let key = new_key()?;
    let cert = params.self_signed(&key).context("cannot sign the CA certificate")?;
    Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem(), cert_der: cert.der().clone() })
}

/// A CA loaded from disk, ready to issue leaf certificates.
pub struct Authority {
    trust_domain: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Authority {
    /// Reloads a CA made by [`new_ca`] from its certificate and key (PEM).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> anyhow::Result<Self> {
        let cert_der =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| anyhow!("not a PEM certificate: {e}"))?;
        let trust_domain = {
            let cert = webpki::EndEntityCert::try_from(&cert_der)
                .map_err(|e| anyhow!("not a readable X.509 certificate: {e}"))?;
            names::trust_domain_from_uris(cert.valid_uri_names())
                .ok_or_else(|| {
                    anyhow!("it has no spiffe://<trust domain> URI SAN: not a CA made by `fenceflake certs init`")
                })?
                .to_owned()
        };
        let key = KeyPair::from_pem(key_pem).map_err(|e| anyhow!("not a PKCS#8 PEM private key: {e}"))?;
        let issuer = Issuer::new(ca_params(&trust_domain)?, key);
        Ok(Self { trust_domain, cert_der, issuer })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Issues a leaf certificate for `leaf`, checked to verify against this CA.
    pub fn issue(&self, leaf: &LeafSpec<'_>, validity: Validity) -> anyhow::Result<Issued> {
        names::validate_name(leaf.role, leaf.name).map_err(|e| anyhow!(e))?;
        let params = self.leaf_params(leaf, validity)?;
        let key = new_key()?;
        let cert = params.signed_by(&key, &self.issuer).context("cannot sign the certificate")?;
        let issued = Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem(), cert_der: cert.der().clone() };
        verify_leaf(&self.cert_der, &issued.cert_der, UnixTime::now()).map_err(|e| {
            anyhow!("the new certificate does not verify against the CA certificate ({e}): is the key not the CA's?")
        })?;
        let expected = names::identity(&self.trust_domain, leaf.role, leaf.name);
        let read_back = fenceflake_proto::tls::identity_of(&issued.cert_der).map_err(|e| anyhow!(e))?;
        assert_eq!(read_back, expected, "a peer reads the certificate's identity as it was written");
        Ok(issued)
    }

    fn leaf_params(&self, leaf: &LeafSpec<'_>, validity: Validity) -> anyhow::Result<CertificateParams> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{}/{}", leaf.role, leaf.name));
        params.distinguished_name = dn;
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Every Fenceflake process both serves and calls: one certificate for both ends.
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let spiffe_id = names::identity(&self.trust_domain, leaf.role, leaf.name).uri();
        let mut sans = vec![SanType::URI(spiffe_id.try_into()?)];
        for dns in leaf.dns_names {
            sans.push(SanType::DnsName(dns.as_str().try_into().with_context(|| format!("DNS name {dns:?}"))?));
        }
        sans.extend(leaf.ips.iter().copied().map(SanType::IpAddress));
        params.subject_alt_names = sans;
        Ok(params)
    }
}

/// Checks that `leaf` chains to the CA certificate `ca` at `now`, for both TLS server and
/// client authentication (as every peer will check it).
pub fn verify_leaf(ca: &CertificateDer<'_>, leaf: &CertificateDer<'_>, now: UnixTime) -> Result<(), webpki::Error> {
    let anchor = webpki::anchor_from_trusted_cert(ca)?;
    let cert = webpki::EndEntityCert::try_from(leaf)?;
    let algorithms = rustls::crypto::ring::default_provider().signature_verification_algorithms.all;
    for usage in [webpki::KeyUsage::server_auth(), webpki::KeyUsage::client_auth()] {
        cert.verify_for_usage(algorithms, std::slice::from_ref(&anchor), &[], now, usage, None, None)?;
    }
    Ok(())
}
