//! `fenceflake certs init` and `certs issue`, run as the built binary: the files and their
//! modes for every role, no overwrite without --force, bad values refused naming them, and
//! the README's "Certificates" commands run as written.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use fenceflake_tests::fenceflake_bin;
use fenceflake_tests::runbook::{extract, sh};

const ROLES: [(&str, &str); 5] =
    [("node", "1"), ("worker", "gen-1"), ("client", "app"), ("operator", "alice"), ("reader", "grafana")];

/// Runs `fenceflake certs ARGS... --dir dir` to completion (no FENCEFLAKE_CERTS_* inherited).
fn certs(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(fenceflake_bin());
    cmd.arg("certs").args(args).arg("--dir").arg(dir).stdin(Stdio::null());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("FENCEFLAKE_CERTS_") {
            cmd.env_remove(name);
        }
    }
    cmd.output().expect("run fenceflake certs")
}

fn ok(out: &Output) -> String {
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "status {:?}\nstdout: {stdout}\nstderr: {stderr}", out.status);
    stdout.into_owned()
}

/// The stderr of a command that must fail.
fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure, got {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

fn pem_blocks(path: &Path, label: &str) -> usize {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.matches(&format!("-----BEGIN {label}-----")).count()
}

/// Goal: init makes the directory 0700, ca.pem 0644 and ca.key 0600; issue for each role
/// writes `<role>-<name>.pem` (one certificate) 0644 and `.key` (PKCS#8) 0600, and prints
/// both paths and the SPIFFE ID.
#[test]
fn init_and_issue_every_role_write_files_with_their_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let out = ok(&certs(&dir, &["init", "--trust-domain", "test.example"]));
    assert!(out.contains("ca.pem") && out.contains("ca.key") && out.contains("spiffe://test.example"), "{out}");
    assert_eq!((mode_of(&dir), mode_of(&dir.join("ca.pem")), mode_of(&dir.join("ca.key"))), (0o700, 0o644, 0o600));
    assert_eq!(pem_blocks(&dir.join("ca.pem"), "CERTIFICATE"), 1);
    for (role, name) in ROLES {
        let out = ok(&certs(&dir, &["issue", "--role", role, "--name", name]));
        let (cert, key) = (dir.join(format!("{role}-{name}.pem")), dir.join(format!("{role}-{name}.key")));
        let id = format!("spiffe://test.example/fenceflake/{role}/{name}");
        for expected in [cert.display().to_string(), key.display().to_string(), id] {
            assert!(out.contains(&expected), "{role}: {expected} missing from: {out}");
        }
        assert_eq!((mode_of(&cert), mode_of(&key)), (0o644, 0o600), "{role}");
        assert_eq!((pem_blocks(&cert, "CERTIFICATE"), pem_blocks(&key, "PRIVATE KEY")), (1, 1), "{role}");
    }
    let ip_only = certs(&dir, &["issue", "--role", "node", "--name", "2", "--ip", "127.0.0.2", "--ip", "::1"]);
    ok(&ip_only);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2 + 2 * (ROLES.len() + 1), "no stray files");
}

/// Goal: a second init without --force fails naming ca.pem and leaves both CA files as
/// they were; so does re-issuing a certificate; --force replaces them.
#[test]
fn nothing_is_overwritten_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ok(&certs(dir, &["init"]));
    let (ca_pem, ca_key) = (std::fs::read(dir.join("ca.pem")).unwrap(), std::fs::read(dir.join("ca.key")).unwrap());
    let err = failed(&certs(dir, &["init"]));
    assert!(err.contains(&dir.join("ca.pem").display().to_string()) && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), ca_pem);
    assert_eq!(std::fs::read(dir.join("ca.key")).unwrap(), ca_key);

    ok(&certs(dir, &["issue", "--role", "worker", "--name", "w1"]));
    let leaf = std::fs::read(dir.join("worker-w1.pem")).unwrap();
    let err = failed(&certs(dir, &["issue", "--role", "worker", "--name", "w1"]));
    assert!(err.contains("worker-w1.pem") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(dir.join("worker-w1.pem")).unwrap(), leaf);

    ok(&certs(dir, &["init", "--force"]));
    assert_ne!(std::fs::read(dir.join("ca.pem")).unwrap(), ca_pem);
    assert_eq!(mode_of(&dir.join("ca.key")), 0o600);
}

/// Goal: a bad role, name, node id, trust domain or duration exits non-zero with a message
/// naming the value (an unknown role lists the five), and writes nothing.
#[test]
fn bad_values_exit_nonzero_naming_the_value() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let err = failed(&certs(dir, &["init", "--trust-domain", "Upper.Case"]));
    assert!(err.contains("Upper.Case") && err.contains("lowercase"), "{err}");
    assert_eq!(std::fs::read_dir(dir).unwrap().count(), 0);
    ok(&certs(dir, &["init"]));
    let err = failed(&certs(dir, &["issue", "--role", "admin", "--name", "x"]));
    for word in ["admin", "node", "worker", "client", "operator", "reader"] {
        assert!(err.contains(word), "{word} missing from: {err}");
    }
    let err = failed(&certs(dir, &["issue", "--role", "worker", "--name", "bad/name"]));
    assert!(err.contains("\"bad/name\"") && err.contains("A-Z a-z 0-9 . _ -"), "{err}");
    let err = failed(&certs(dir, &["issue", "--role", "node", "--name", "db-1"]));
    assert!(err.contains("\"db-1\"") && err.contains("node id"), "{err}");
    let err = failed(&certs(dir, &["issue", "--role", "reader", "--name", "r", "--valid-for", "90"]));
    assert!(err.contains("\"90\" has no unit"), "{err}");
    assert_eq!(std::fs::read_dir(dir).unwrap().count(), 2, "only ca.pem and ca.key");
}

/// Goal: the README's "Certificates" commands run as written and make what they say: a CA,
/// five node certificates, a worker's and an operator's.
#[test]
fn readme_certificates_section_runs_as_written() {
    let lines = extract("README.md", Some("Certificates and TLS"));
    assert!(lines.len() >= 3, "README.md has no `## Certificates and TLS` commands: {lines:?}");
    let tmp = tempfile::tempdir().unwrap();
    for line in &lines {
        let (code, stdout, stderr) = sh(&line.text, tmp.path(), &Default::default());
        assert_eq!(code, Some(0), "{}: {}\nstdout: {stdout}\nstderr: {stderr}", line.at(), line.text);
    }
    let pki = tmp.path().join("pki");
    let mut names: Vec<String> =
        std::fs::read_dir(&pki).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    let mut expected: Vec<String> =
        ["ca", "node-1", "node-2", "node-3", "node-4", "node-5", "operator-alice", "worker-gen-1"]
            .iter()
            .flat_map(|stem| [format!("{stem}.key"), format!("{stem}.pem")])
            .collect();
    expected.sort();
    assert_eq!(names, expected);
}
