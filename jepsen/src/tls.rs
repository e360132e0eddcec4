//! How a run's processes talk: mutual TLS with one certificate per process (the default), or
//! plaintext when the harness was started `--insecure` (kept to compare the two).
//!
//! Each TLS run makes its own CA in `<run dir>/certs` with the binary under test
//! (`fenceflake certs init` / `certs issue`): a `node` certificate per registry node (named by
//! its node id), a `worker` certificate per worker process (named by its host name, so the
//! standby and a duplicate claimant are identities of their own), a `client` certificate for
//! the ID workload, a `worker` certificate for the registry workload (it calls
//! Acquire/Renew/Release itself) and an `operator` certificate for `ctl`. Processes get theirs
//! through `FENCEFLAKE_TLS_CA`, `FENCEFLAKE_TLS_CERT` and `FENCEFLAKE_TLS_KEY`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use fenceflake_proto::tls::{Security, TlsFiles, TlsState};

/// The trust domain of every run's CA.
pub const TRUST_DOMAIN: &str = "jepsen.fenceflake.test";
/// The ID workload's certificate (role `client`: the Generator API).
pub const WORKLOAD_CLIENT: (&str, &str) = ("client", "workload");
/// The registry workload's certificate (role `worker`: Acquire, Renew, Release, GetLease).
pub const WORKLOAD_REGISTRY: (&str, &str) = ("worker", "linearizability");
/// The harness's `ctl` certificate (role `operator`: status and leases with their holders).
pub const CONTROLLER: (&str, &str) = ("operator", "harness");

/// The environment variables that choose a process's transport; stripped from what a process
/// inherits so the harness's own environment cannot change a run.
pub const ENV_VARS: [&str; 4] =
    ["FENCEFLAKE_TLS_CA", "FENCEFLAKE_TLS_CERT", "FENCEFLAKE_TLS_KEY", "FENCEFLAKE_INSECURE"];

/// A run's transport: a certificate directory, or plaintext.
#[derive(Debug, Clone)]
pub enum Transport {
    Tls(CertDir),
    Insecure,
}

/// A run's CA and the certificates issued by it, made with `fenceflake certs`.
#[derive(Debug, Clone)]
pub struct CertDir {
    dir: PathBuf,
    fenceflake: PathBuf,
}

/// The three files of one identity.
pub fn files(dir: &Path, (role, name): (&str, &str)) -> TlsFiles {
    TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{role}-{name}.pem")),
        key: dir.join(format!("{role}-{name}.key")),
    }
}

/// A client-side [`Security`] for one identity of the run's cert dir, or plaintext.
pub fn security(dir: Option<&Path>, identity: (&str, &str)) -> anyhow::Result<Security> {
    match dir {
        None => Ok(Security::Insecure),
        Some(dir) => {
            let state = TlsState::load(files(dir, identity))
                .with_context(|| format!("cannot load the {}-{} certificate", identity.0, identity.1))?;
            Ok(Security::Tls(state))
        }
    }
}

impl CertDir {
    /// A new CA in `dir` (which must not hold one yet).
    pub fn init(fenceflake: &Path, dir: PathBuf) -> anyhow::Result<CertDir> {
        let certs = CertDir { dir, fenceflake: fenceflake.to_path_buf() };
        let dir = certs.dir.display().to_string();
        certs.certs(&["init", "--dir", &dir, "--trust-domain", TRUST_DOMAIN])?;
        Ok(certs)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Issue the certificate of `(role, name)` unless it exists (a restarted process keeps
    /// its identity).
    pub fn issue(&self, (role, name): (&str, &str)) -> anyhow::Result<TlsFiles> {
        let files = files(&self.dir, (role, name));
        if !files.cert.exists() {
            let dir = self.dir.display().to_string();
            self.certs(&["issue", "--dir", &dir, "--role", role, "--name", name])?;
        }
        Ok(files)
    }

    fn certs(&self, args: &[&str]) -> anyhow::Result<()> {
        let out = Command::new(&self.fenceflake)
            .arg("certs")
            .args(args)
            .env_remove("FENCEFLAKE_CERTS_DIR")
            .output()
            .with_context(|| format!("cannot run {} certs", self.fenceflake.display()))?;
        anyhow::ensure!(
            out.status.success(),
            "`fenceflake certs {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }
}

impl Transport {
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// The environment that gives a process `identity` (issued now if it is new), or runs it
    /// plaintext.
    pub fn env(&self, identity: (&str, &str)) -> anyhow::Result<Vec<(String, String)>> {
        match self {
            Transport::Insecure => Ok(vec![("FENCEFLAKE_INSECURE".into(), "true".into())]),
            Transport::Tls(certs) => {
                let files = certs.issue(identity)?;
                Ok(vec![
                    ("FENCEFLAKE_TLS_CA".into(), files.ca.display().to_string()),
                    ("FENCEFLAKE_TLS_CERT".into(), files.cert.display().to_string()),
                    ("FENCEFLAKE_TLS_KEY".into(), files.key.display().to_string()),
                ])
            }
        }
    }

    /// The workload's flags: `--certs DIR` or `--insecure`.
    pub fn workload_args(&self) -> Vec<String> {
        match self {
            Transport::Tls(certs) => vec!["--certs".into(), certs.dir().display().to_string()],
            Transport::Insecure => vec!["--insecure".into()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the harness finds each identity where `fenceflake certs issue` writes it
    /// (`<role>-<name>.pem` / `.key` beside `ca.pem`), and insecure runs say so explicitly.
    #[test]
    fn identities_map_to_the_files_certs_issue_writes() {
        let f = files(Path::new("/run/certs"), WORKLOAD_CLIENT);
        assert_eq!(f.ca, Path::new("/run/certs/ca.pem"));
        assert_eq!(f.cert, Path::new("/run/certs/client-workload.pem"));
        assert_eq!(f.key, Path::new("/run/certs/client-workload.key"));
        assert_eq!(
            Transport::Insecure.env(("node", "1")).unwrap(),
            vec![("FENCEFLAKE_INSECURE".into(), "true".into())]
        );
        assert_eq!(Transport::Insecure.workload_args(), vec!["--insecure".to_string()]);
        assert!(matches!(security(None, CONTROLLER).unwrap(), Security::Insecure));
    }
}
