//! Mutual TLS for the process tests: one certificate directory per test cluster, made by the
//! binary under test (`fenceflake certs init` and `certs issue`), and from it the TLS env vars
//! of a process of a role and name, or a [`Security`] for an in-process gRPC client.
//!
//! Certificates are issued on first use and kept for the life of the [`Certs`] (a restarted
//! process gets the same identity back). The directory is deleted with the last handle, or
//! kept (and its path printed) when a test failed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fenceflake_proto::tls::{self, Role, Security, TlsFiles, TlsState};
use tonic::transport::{Channel, Endpoint};

use crate::fenceflake_bin;

/// The env vars every binary reads its TLS files from.
pub const ENV_CA: &str = "FENCEFLAKE_TLS_CA";
pub const ENV_CERT: &str = "FENCEFLAKE_TLS_CERT";
pub const ENV_KEY: &str = "FENCEFLAKE_TLS_KEY";
/// The plaintext switch; removed from every process these helpers start with TLS.
pub const ENV_INSECURE: &str = "FENCEFLAKE_INSECURE";

/// The name in-process clients and one-shot commands of a role use (`operator-test.pem`, …).
pub const TEST_NAME: &str = "test";

/// A CA and the certificates issued by it, in a directory of their own.
#[derive(Debug, Clone)]
pub struct Certs {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `None` only while being dropped.
    tmp: Option<tempfile::TempDir>,
    dir: PathBuf,
    /// In-process client configs, loaded once per identity.
    loaded: Mutex<HashMap<(Role, String), Security>>,
}

impl Default for Certs {
    fn default() -> Self {
        Self::new()
    }
}

impl Certs {
    /// A fresh CA (`fenceflake certs init`) in a new temp dir.
    pub fn new() -> Certs {
        let tmp = tempfile::Builder::new().prefix("fenceflake-certs-").tempdir().expect("create a temp dir");
        let dir = tmp.path().join("pki");
        let out = certs_command(&["init"], &dir).output().expect("run fenceflake certs init");
        assert_ran(&out, "fenceflake certs init");
        Certs { inner: Arc::new(Inner { tmp: Some(tmp), dir, loaded: Mutex::new(HashMap::new()) }) }
    }

    /// The directory holding `ca.pem`, `ca.key` and `<role>-<name>.pem`/`.key`.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn ca(&self) -> PathBuf {
        self.dir().join("ca.pem")
    }

    /// `fenceflake certs ARGS --dir <this dir>`, run to completion, whatever its outcome
    /// (for certificates the helpers do not make: short-lived, other names).
    pub fn run(&self, args: &[&str]) -> Output {
        certs_command(args, self.dir()).output().expect("run fenceflake certs")
    }

    /// The files of `role`/`name`, issued now if they are not there yet.
    pub fn files(&self, role: Role, name: &str) -> TlsFiles {
        let stem = format!("{role}-{name}");
        let files = TlsFiles {
            ca: self.ca(),
            cert: self.dir().join(format!("{stem}.pem")),
            key: self.dir().join(format!("{stem}.key")),
        };
        // One issuer at a time: two threads must not both find the files missing.
        let _issuing = self.inner.loaded.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !files.cert.exists() {
            let out = self.run(&["issue", "--role", role.as_str(), "--name", name]);
            assert_ran(&out, &format!("fenceflake certs issue --role {role} --name {name}"));
        }
        files
    }

    /// The env vars that give a `fenceflake` process the identity `role`/`name`.
    pub fn env(&self, role: Role, name: &str) -> Vec<(String, String)> {
        tls_env(&self.files(role, name))
    }

    /// `cmd` with the identity `role`/`name` (and no inherited `--insecure`).
    pub fn apply<'c>(&self, cmd: &'c mut Command, role: Role, name: &str) -> &'c mut Command {
        cmd.env_remove(ENV_INSECURE).envs(self.env(role, name))
    }

    /// The `fenceflake` binary with the identity `role`/`name`, ready for its arguments.
    pub fn command(&self, role: Role, name: &str) -> Command {
        let mut cmd = Command::new(fenceflake_bin());
        self.apply(&mut cmd, role, name);
        cmd
    }

    /// TLS for an in-process client with the identity `role`/`name`.
    pub fn security(&self, role: Role, name: &str) -> Security {
        let files = self.files(role, name);
        let mut loaded = self.inner.loaded.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        loaded
            .entry((role, name.to_string()))
            .or_insert_with(|| {
                let state = TlsState::load(files).unwrap_or_else(|e| panic!("load the {role} {name} certificate: {e}"));
                Security::Tls(state)
            })
            .clone()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            if std::thread::panicking() {
                eprintln!("TLS certificates kept in {}", tmp.keep().display());
            }
        }
    }
}

/// `FENCEFLAKE_TLS_CA`, `_CERT` and `_KEY` for `files`.
pub fn tls_env(files: &TlsFiles) -> Vec<(String, String)> {
    [(ENV_CA, &files.ca), (ENV_CERT, &files.cert), (ENV_KEY, &files.key)]
        .into_iter()
        .map(|(name, path)| (name.to_string(), path.display().to_string()))
        .collect()
}

/// A lazily connecting channel to `addr` through `security`, whose server must hold one of
/// `expect` (`Role::Node` for a registry, `Role::Worker` for a worker); `timeout` per call.
pub fn channel(addr: &str, security: &Security, expect: &'static [Role], timeout: Duration) -> Channel {
    let endpoint = Endpoint::from_shared(tls::endpoint_url(addr))
        .expect("valid address")
        .connect_timeout(Duration::from_millis(500))
        .timeout(timeout);
    tls::connect_lazy(endpoint, security, expect)
}

/// `fenceflake certs ARGS --dir dir`, with no `FENCEFLAKE_CERTS_*` of the caller's.
fn certs_command(args: &[&str], dir: &Path) -> Command {
    let mut cmd = Command::new(fenceflake_bin());
    cmd.arg("certs").args(args).arg("--dir").arg(dir).stdin(Stdio::null());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("FENCEFLAKE_CERTS_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

fn assert_ran(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
