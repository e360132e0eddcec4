//! TLS for the benchmark, as production runs: by default every process this tool starts (the
//! registry nodes, etcd members) and every client it runs use mutual TLS with certificates it
//! makes itself with the `fenceflake` binary (`certs init`, `certs issue`) in the cluster's
//! temp dir. `--insecure` runs both sides plaintext, for the TLS-cost comparison: every
//! comparison (ours against etcd, the worker against the no-op server) has the same setting on
//! both sides, and every row says which (`"tls": true|false`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use fenceflake_proto::tls::{self, Role, Security, TlsFiles, TlsState};
use tonic::transport::{Channel, Endpoint};

/// The env vars of the `fenceflake` binaries' TLS flags.
const ENV_CA: &str = "FENCEFLAKE_TLS_CA";
const ENV_CERT: &str = "FENCEFLAKE_TLS_CERT";
const ENV_KEY: &str = "FENCEFLAKE_TLS_KEY";
const ENV_INSECURE: &str = "FENCEFLAKE_INSECURE";

/// The name of the benchmark's own client certificates (`worker-bench.pem`, `client-bench.pem`).
pub const CLIENT_NAME: &str = "bench";

/// The TLS flags, global to every subcommand.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsOpts {
    /// Plaintext on both sides: every server started and every client run by this tool goes
    /// without TLS (`--insecure`), for the TLS-cost comparison. `compare` then compares the
    /// plaintext rows.
    #[arg(long, global = true, env = "FFBENCH_INSECURE")]
    pub insecure: bool,
    /// With `--endpoints` (a cluster this tool did not start): its CA certificate (PEM).
    #[arg(long, global = true, value_name = "FILE", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
    /// With `--endpoints`: a certificate of that CA for the load clients (a `worker`
    /// certificate for the registry, which grants leases to workers only).
    #[arg(long, global = true, value_name = "FILE", requires_all = ["tls_ca", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// With `--endpoints`: the key of `--tls-cert`.
    #[arg(long, global = true, value_name = "FILE", requires_all = ["tls_ca", "tls_cert"])]
    pub tls_key: Option<PathBuf>,
}

impl TlsOpts {
    pub fn is_tls(&self) -> bool {
        !self.insecure
    }

    /// How the clients of a cluster this tool did not start connect: the given files, or
    /// plaintext with `--insecure`; anything else is refused (never silently plaintext).
    pub fn external(&self) -> anyhow::Result<Security> {
        match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            (Some(_), Some(_), Some(_)) if self.insecure => bail!("--insecure and --tls-* together: choose one"),
            (Some(ca), Some(cert), Some(key)) => {
                let files = TlsFiles { ca: ca.clone(), cert: cert.clone(), key: key.clone() };
                Ok(Security::Tls(TlsState::load(files).context("loading --tls-ca, --tls-cert and --tls-key")?))
            }
            _ if self.insecure => Ok(Security::Insecure),
            _ => bail!(
                "--endpoints names a cluster this tool did not start: give its CA and a worker certificate of it (--tls-ca, --tls-cert, --tls-key), or --insecure if it runs plaintext"
            ),
        }
    }
}

/// The `fenceflake` binary: `configured`, else next to this executable (target/<profile>/).
pub fn fenceflake_binary(configured: Option<&Path>) -> anyhow::Result<PathBuf> {
    let bin = match configured {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .context("locating this executable")?
            .parent()
            .context("this executable has no parent dir")?
            .join("fenceflake"),
    };
    if !bin.exists() {
        bail!("{} not found: `cargo build --release -p fenceflake-cli` first, or pass --fenceflake-bin", bin.display());
    }
    Ok(bin)
}

/// One side's TLS: a CA of its own (made in a cluster's dir) or plaintext.
#[derive(Debug, Clone)]
pub enum Side {
    Tls(Arc<CertDir>),
    Insecure,
}

impl Side {
    /// A new CA in `dir` made by `bin` (TLS), or plaintext if `opts.insecure`.
    pub fn new(opts: &TlsOpts, bin: &Path, dir: &Path) -> anyhow::Result<Side> {
        if opts.insecure {
            return Ok(Side::Insecure);
        }
        Ok(Side::Tls(Arc::new(CertDir::init(bin, dir)?)))
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Side::Tls(_))
    }

    /// The files of `role`/`name` (issued now if missing); `None` when plaintext.
    pub fn files(&self, role: Role, name: &str) -> anyhow::Result<Option<TlsFiles>> {
        match self {
            Side::Tls(dir) => dir.files(role, name).map(Some),
            Side::Insecure => Ok(None),
        }
    }

    /// The env vars that start a `fenceflake` server as `role`/`name` (or `--insecure`).
    pub fn env(&self, role: Role, name: &str) -> anyhow::Result<BTreeMap<String, String>> {
        let mut env = BTreeMap::new();
        match self.files(role, name)? {
            Some(f) => {
                for (var, path) in [(ENV_CA, &f.ca), (ENV_CERT, &f.cert), (ENV_KEY, &f.key)] {
                    env.insert(var.to_string(), path.display().to_string());
                }
            }
            None => {
                env.insert(ENV_INSECURE.to_string(), "true".to_string());
            }
        }
        Ok(env)
    }

    /// `cmd` as `role`/`name`: this side's TLS env, nothing of the caller's.
    pub fn apply(&self, cmd: &mut Command, role: Role, name: &str) -> anyhow::Result<()> {
        for var in [ENV_CA, ENV_CERT, ENV_KEY, ENV_INSECURE] {
            cmd.env_remove(var);
        }
        cmd.envs(self.env(role, name)?);
        Ok(())
    }

    /// TLS of an in-process client or server with the identity `role`/`name`.
    pub fn security(&self, role: Role, name: &str) -> anyhow::Result<Security> {
        match self {
            Side::Tls(dir) => dir.security(role, name),
            Side::Insecure => Ok(Security::Insecure),
        }
    }
}

/// A CA and the certificates issued by it (`fenceflake certs`), in one directory.
#[derive(Debug)]
pub struct CertDir {
    bin: PathBuf,
    dir: PathBuf,
    /// In-process configs, loaded once per identity (also serialises issuing).
    loaded: Mutex<BTreeMap<(Role, String), Security>>,
}

impl CertDir {
    /// `fenceflake certs init --dir dir`.
    pub fn init(bin: &Path, dir: &Path) -> anyhow::Result<CertDir> {
        let certs = CertDir { bin: bin.to_path_buf(), dir: dir.to_path_buf(), loaded: Mutex::new(BTreeMap::new()) };
        certs.certs(&["init"])?;
        Ok(certs)
    }

    fn certs(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("certs").args(args).arg("--dir").arg(&self.dir).stdin(Stdio::null());
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("FENCEFLAKE_CERTS_") {
                cmd.env_remove(var);
            }
        }
        let out = cmd.output().with_context(|| format!("running {} certs", self.bin.display()))?;
        if !out.status.success() {
            bail!("`fenceflake certs {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    /// The files of `role`/`name`, issued now if missing.
    pub fn files(&self, role: Role, name: &str) -> anyhow::Result<TlsFiles> {
        let stem = format!("{role}-{name}");
        let files = TlsFiles {
            ca: self.dir.join("ca.pem"),
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}.key")),
        };
        let _issuing = self.loaded.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !files.cert.exists() {
            self.certs(&["issue", "--role", role.as_str(), "--name", name])?;
        }
        Ok(files)
    }

    pub fn security(&self, role: Role, name: &str) -> anyhow::Result<Security> {
        let files = self.files(role, name)?;
        let mut loaded = self.loaded.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(security) = loaded.get(&(role, name.to_string())) {
            return Ok(security.clone());
        }
        let security =
            Security::Tls(TlsState::load(files).with_context(|| format!("loading the {role} {name} certificate"))?);
        loaded.insert((role, name.to_string()), security.clone());
        Ok(security)
    }
}

/// A lazily connecting channel to `addr` (`HOST:PORT` or a URL) through `security`; under TLS
/// the server must hold one of `expect` (`Role::Node` for a registry node or etcd member,
/// `Role::Worker` for a worker).
pub fn channel(addr: &str, security: &Security, expect: &'static [Role]) -> anyhow::Result<Channel> {
    let url = tls::endpoint_url(addr);
    let endpoint = Endpoint::from_shared(url.clone())
        .with_context(|| format!("bad endpoint {url}"))?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true);
    Ok(tls::connect_lazy(endpoint, security, expect))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: an external cluster is never reached silently in plaintext: without the files
    /// or `--insecure` it is refused, naming both ways out.
    #[test]
    fn an_external_cluster_needs_its_files_or_insecure() {
        let err = TlsOpts::default().external().expect_err("no TLS files, no --insecure");
        assert!(err.to_string().contains("--tls-ca") && err.to_string().contains("--insecure"), "{err}");
        let insecure = TlsOpts { insecure: true, ..TlsOpts::default() };
        assert!(matches!(insecure.external(), Ok(Security::Insecure)));
        assert!(TlsOpts::default().is_tls() && !insecure.is_tls());
    }
}
