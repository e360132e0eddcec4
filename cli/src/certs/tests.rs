//! Tests of `certs init` and `certs issue` as the CLI runs them: leaves issued by a CA
//! reloaded from disk chain to its `ca.pem`, and to no other CA; files, modes and --force.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use clap::Parser;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, UnixTime};

use super::authority::verify_leaf;
use super::*;

#[derive(Debug, Parser)]
struct TestCli {
    #[command(subcommand)]
    command: CertsCommand,
}

fn parse(args: &[&str]) -> Result<CertsCommand, clap::Error> {
    TestCli::try_parse_from(std::iter::once("certs").chain(args.iter().copied())).map(|cli| cli.command)
}

/// Runs `fenceflake certs ARGS...` in-process with `--dir dir`.
fn certs(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let dir = dir.to_str().unwrap();
    let mut all = args.to_vec();
    all.extend(["--dir", dir]);
    execute(&parse(&all)?)
}

/// DER contents of id-kp-serverAuth (1.3.6.1.5.5.7.3.1) and id-kp-clientAuth (…3.2), for
/// `KeyUsage::required`: present, not just allowed.
const ID_KP_SERVER_AUTH: &[u8] = &[0x2b, 6, 1, 5, 5, 7, 3, 1];
const ID_KP_CLIENT_AUTH: &[u8] = &[0x2b, 6, 1, 5, 5, 7, 3, 2];

fn der(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn now_plus(offset_s: i64) -> UnixTime {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    UnixTime::since_unix_epoch(Duration::from_secs(now.checked_add_signed(offset_s).unwrap()))
}

/// Goal: a leaf signed by the CA reloaded from ca.pem + ca.key chains to ca.pem, for
/// server and client auth, carrying its SPIFFE ID, the default SANs and both EKUs.
#[test]
fn leaves_from_the_reloaded_ca_chain_to_ca_pem() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let out = certs(&dir, &["init", "--trust-domain", "prod.example"]).unwrap();
    assert!(out.contains("spiffe://prod.example"), "{out}");
    assert_eq!((mode_of(&dir), mode_of(&dir.join("ca.key")), mode_of(&dir.join("ca.pem"))), (0o700, 0o600, 0o644));
    let ca = der(&dir.join("ca.pem"));
    for (role, name) in [("node", "1"), ("worker", "w-1"), ("client", "app"), ("operator", "alice"), ("reader", "r")] {
        let out = certs(&dir, &["issue", "--role", role, "--name", name]).unwrap();
        let id = format!("spiffe://prod.example/fenceflake/{role}/{name}");
        assert!(out.contains(&id) && out.contains(&format!("{role}-{name}.pem")), "{out}");
        let (cert_path, key_path) = (dir.join(format!("{role}-{name}.pem")), dir.join(format!("{role}-{name}.key")));
        assert_eq!((mode_of(&cert_path), mode_of(&key_path)), (0o644, 0o600));
        assert!(fs::read_to_string(&key_path).unwrap().starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_eq!(CertificateDer::pem_file_iter(&cert_path).unwrap().count(), 1, "the leaf alone");
        let leaf = der(&cert_path);
        verify_leaf(&ca, &leaf, UnixTime::now()).unwrap();
        let cert = webpki::EndEntityCert::try_from(&leaf).unwrap();
        assert_eq!(cert.valid_uri_names().collect::<Vec<_>>(), [id.as_str()]);
        assert_eq!(cert.valid_dns_names().collect::<Vec<_>>(), ["localhost"]);
        let ip = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        cert.verify_is_valid_for_subject_name(&ip).unwrap();
        let algorithms = rustls::crypto::ring::default_provider().signature_verification_algorithms.all;
        for eku in [ID_KP_SERVER_AUTH, ID_KP_CLIENT_AUTH] {
            let anchor = webpki::anchor_from_trusted_cert(&ca).unwrap();
            let usage = webpki::KeyUsage::required(eku);
            cert.verify_for_usage(algorithms, &[anchor], &[], UnixTime::now(), usage, None, None).unwrap();
        }
    }
}

/// Goal: a leaf issued by another CA directory does not verify against this ca.pem, whether
/// that CA has the same trust domain (same subject, other key) or another one; and a CA key
/// that is not ca.pem's is refused instead of issuing unverifiable certificates.
#[test]
fn leaves_of_another_ca_do_not_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
    certs(&a, &["init"]).unwrap();
    certs(&b, &["init"]).unwrap();
    certs(&c, &["init", "--trust-domain", "other.example"]).unwrap();
    certs(&b, &["issue", "--role", "worker", "--name", "w1"]).unwrap();
    let leaf = der(&b.join("worker-w1.pem"));
    verify_leaf(&der(&b.join("ca.pem")), &leaf, UnixTime::now()).unwrap();
    let same_subject = verify_leaf(&der(&a.join("ca.pem")), &leaf, UnixTime::now());
    assert_eq!(same_subject, Err(webpki::Error::InvalidSignatureForPublicKey));
    let other_subject = verify_leaf(&der(&c.join("ca.pem")), &leaf, UnixTime::now());
    assert_eq!(other_subject, Err(webpki::Error::UnknownIssuer));

    fs::copy(a.join("ca.key"), b.join("ca.key")).unwrap();
    let err = certs(&b, &["issue", "--role", "worker", "--name", "w2"]).unwrap_err();
    assert!(format!("{err:#}").contains("does not verify against the CA"), "{err:#}");
    assert!(!b.join("worker-w2.pem").exists() && !b.join("worker-w2.key").exists());
}

/// Goal: not_before lies an hour back (clock-skew tests), not_after --valid-for ahead.
#[test]
fn validity_is_backdated_an_hour() {
    let tmp = tempfile::tempdir().unwrap();
    certs(tmp.path(), &["init"]).unwrap();
    certs(tmp.path(), &["issue", "--role", "reader", "--name", "r", "--valid-for", "48h"]).unwrap();
    let (ca, leaf) = (der(&tmp.path().join("ca.pem")), der(&tmp.path().join("reader-r.pem")));
    verify_leaf(&ca, &leaf, now_plus(-50 * 60)).unwrap();
    verify_leaf(&ca, &leaf, now_plus(47 * 3600)).unwrap();
    assert!(matches!(verify_leaf(&ca, &leaf, now_plus(-70 * 60)), Err(webpki::Error::CertNotValidYet { .. })));
    assert!(matches!(verify_leaf(&ca, &leaf, now_plus(49 * 3600)), Err(webpki::Error::CertExpired { .. })));
    let err = certs(tmp.path(), &["issue", "--role", "reader", "--name", "z", "--valid-for", "0s"]).unwrap_err();
    assert!(err.to_string().contains("--valid-for"), "{err}");
    let err = parse(&["issue", "--dir", "d", "--role", "reader", "--name", "z", "--valid-for", "90"]).unwrap_err();
    assert!(err.to_string().contains("\"90\" has no unit"), "{err}");
}

/// Goal: neither command overwrites a file without --force; the refusal names the file and
/// leaves it untouched; with --force the files are replaced (keys still 0600).
#[test]
fn existing_files_are_kept_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    certs(dir, &["init"]).unwrap();
    let ca_pem = fs::read(dir.join("ca.pem")).unwrap();
    let err = certs(dir, &["init"]).unwrap_err().to_string();
    assert!(err.contains(&dir.join("ca.pem").display().to_string()) && err.contains("--force"), "{err}");
    assert_eq!(fs::read(dir.join("ca.pem")).unwrap(), ca_pem);

    certs(dir, &["issue", "--role", "node", "--name", "3", "--dns", "n3.example", "--ip", "10.0.0.3"]).unwrap();
    let leaf = fs::read(dir.join("node-3.pem")).unwrap();
    let err = certs(dir, &["issue", "--role", "node", "--name", "3"]).unwrap_err().to_string();
    assert!(err.contains("node-3.pem") && err.contains("--force"), "{err}");
    assert_eq!(fs::read(dir.join("node-3.pem")).unwrap(), leaf);
    certs(dir, &["issue", "--role", "node", "--name", "3", "--force"]).unwrap();
    assert_ne!(fs::read(dir.join("node-3.pem")).unwrap(), leaf);
    assert_eq!(mode_of(&dir.join("node-3.key")), 0o600);

    certs(dir, &["init", "--force"]).unwrap();
    assert_ne!(fs::read(dir.join("ca.pem")).unwrap(), ca_pem);
}

/// Goal: bad roles, names, trust domains and SANs are refused naming the value (an unknown
/// role lists the five roles), before any file is written.
#[test]
fn bad_values_are_refused_naming_them() {
    let err = parse(&["issue", "--dir", "d", "--role", "admin", "--name", "x"]).unwrap_err().to_string();
    for word in ["admin", "node", "worker", "client", "operator", "reader"] {
        assert!(err.contains(word), "{err}");
    }
    let err = parse(&["init", "--dir", "d", "--trust-domain", "Prod"]).unwrap_err().to_string();
    assert!(err.contains("\"Prod\""), "{err}");
    let err = parse(&["issue", "--dir", "d", "--role", "worker", "--name", "x", "--ip", "1.2.3"]).unwrap_err();
    assert!(err.to_string().contains("1.2.3"), "{err}");

    let tmp = tempfile::tempdir().unwrap();
    certs(tmp.path(), &["init"]).unwrap();
    let err = certs(tmp.path(), &["issue", "--role", "node", "--name", "alpha"]).unwrap_err().to_string();
    assert!(err.contains("\"alpha\"") && err.contains("node id"), "{err}");
    let err = certs(tmp.path(), &["issue", "--role", "worker", "--name", "a/b"]).unwrap_err().to_string();
    assert!(err.contains("\"a/b\"") && err.contains("A-Z a-z 0-9 . _ -"), "{err}");
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 2, "only ca.pem and ca.key");

    let err = certs(&tmp.path().join("missing"), &["issue", "--role", "reader", "--name", "r"]).unwrap_err();
    assert!(format!("{err:#}").contains("ca.pem") && format!("{err:#}").contains("certs init"), "{err:#}");
}
