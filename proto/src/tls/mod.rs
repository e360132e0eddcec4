//! Mutual TLS for every Fenceflake listener and client, with rustls (ring provider) and
//! SPIFFE-style identities: `spiffe://<trust-domain>/fenceflake/<role>/<name>` in each
//! certificate's URI SAN gives its holder a [`Role`]. Every connection presents a certificate
//! chained to the cluster CA; a process runs plaintext only when started `--insecure`, and says
//! so in its log and metrics.
//!
//! - [`material`]: files → rustls configs (client certificates required; peers verified by
//!   chain, not host name);
//! - [`state`]: the live configs, reloaded when the files change and on SIGHUP;
//! - [`accept`]: the server side (`incoming`), which records each connection's identity;
//! - [`connect`]: the client side (`connect_lazy`), which checks the server's role;
//! - [`authz`]: per-RPC `UNAUTHENTICATED` / `PERMISSION_DENIED`.

mod accept;
mod authz;
mod connect;
mod der;
mod gate;
mod identity;
mod io;
mod material;
mod state;

use std::path::PathBuf;
use std::sync::Arc;

pub use accept::{incoming, Conn, ConnInfo, Peer};
pub use authz::{authorize, caller, request_from, Caller};
pub use connect::{connect, connect_lazy, connect_lazy_to_node, endpoint_url};
pub use gate::{RefuseStrangers, RefuseStrangersLayer};
pub use identity::{valid_name, valid_trust_domain, PeerIdentity, Role, NAME_LEN_MAX};
pub use material::{identity_of, TlsFiles};
pub use state::{Reloaded, TlsState, RELOAD_POLL};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: {why}", path.display())]
    Pem { path: PathBuf, why: String },
    #[error("{}: {why}", path.display())]
    Identity { path: PathBuf, why: String },
    #[error("the new certificate names {to}, the running process is {from}: a rotation must keep the role and name (restart to change identity)")]
    IdentityChanged { from: String, to: String },
    #[error("TLS configuration refused: {0}")]
    Config(String),
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("TLS is required: pass --tls-ca, --tls-cert and --tls-key (or FENCEFLAKE_TLS_CA, FENCEFLAKE_TLS_CERT, FENCEFLAKE_TLS_KEY); `fenceflake certs init` and `certs issue` make them. --insecure runs plaintext instead")]
    Missing,
    #[error("--insecure (plaintext) was given together with {0}: choose one")]
    Conflict(&'static str),
    #[error("incomplete TLS flags: {0} is missing (the CA, certificate and key go together)")]
    Incomplete(&'static str),
    #[error("--tls-transitional needs the TLS flags (it accepts plaintext besides TLS, during a move to TLS)")]
    TransitionalWithoutTls,
}

/// How a process talks: mutual TLS with its live configs, or plaintext.
#[derive(Debug, Clone)]
pub enum Security {
    Tls(Arc<TlsState>),
    /// Plaintext, by an explicit `--insecure`.
    Insecure,
    /// The deterministic simulator's own transport, which authenticates every caller itself
    /// (it hands each request to the server with the calling machine's identity, as the TLS
    /// acceptor would): this process is `identity`, and every caller is authenticated. Never
    /// built into the product (feature `sim-transport`, enabled only by `sim/`); on a real
    /// socket it serves and connects like a TLS process without certificates, refusing all.
    #[cfg(feature = "sim-transport")]
    Transport(PeerIdentity),
}

impl Security {
    /// From the three optional paths and the `--insecure` switch, refusing every ambiguous mix.
    pub fn from_flags(
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        insecure: bool,
    ) -> Result<Security, TlsError> {
        if insecure {
            let given = [("--tls-ca", &ca), ("--tls-cert", &cert), ("--tls-key", &key)];
            return match given.into_iter().find(|(_, p)| p.is_some()) {
                Some((flag, _)) => Err(TlsError::Conflict(flag)),
                None => Ok(Security::Insecure),
            };
        }
        match (ca, cert, key) {
            (None, None, None) => Err(TlsError::Missing),
            (Some(ca), Some(cert), Some(key)) => Ok(Security::Tls(TlsState::load(TlsFiles { ca, cert, key })?)),
            (None, _, _) => Err(TlsError::Incomplete("--tls-ca")),
            (_, None, _) => Err(TlsError::Incomplete("--tls-cert")),
            (_, _, None) => Err(TlsError::Incomplete("--tls-key")),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Security::Tls(_))
    }

    /// This process's own identity (`None` when insecure).
    pub fn identity(&self) -> Option<PeerIdentity> {
        match self {
            Security::Tls(state) => Some(state.identity()),
            Security::Insecure => None,
            #[cfg(feature = "sim-transport")]
            Security::Transport(identity) => Some(identity.clone()),
        }
    }

    /// Whether callers may come in unauthenticated: `--insecure`, or `--tls-transitional`.
    pub fn accepts_plaintext(&self) -> bool {
        match self {
            Security::Tls(state) => state.transitional(),
            Security::Insecure => true,
            #[cfg(feature = "sim-transport")]
            Security::Transport(_) => false,
        }
    }

    /// Log once at start-up what the process runs with; plaintext is loud.
    pub fn announce(&self, process: &str) {
        match self {
            Security::Tls(state) if state.transitional() => tracing::warn!(
                identity = %state.identity(),
                "{process}: --tls-transitional: TLS, but plaintext callers are also accepted UNAUTHENTICATED and plaintext servers spoken to in plaintext. Only while moving a cluster to TLS (docs/security.md); restart without it when every process has certificates"
            ),
            Security::Tls(state) => {
                tracing::info!(identity = %state.identity(), cert = %state.files().cert.display(), not_after_unix = state.cert_not_after_unix(), "{process}: mutual TLS on every listener and client");
            }
            #[cfg(feature = "sim-transport")]
            Security::Transport(identity) => {
                tracing::info!(%identity, "{process}: the simulator's authenticated transport");
            }
            Security::Insecure => tracing::warn!(
                "{process}: running --insecure: PLAINTEXT, no authentication, any caller may do anything (read tokens, release leases, change membership). Only for a private test network."
            ),
        }
    }

    /// Follow the TLS files for rotations until `stopped` (nothing to follow when insecure).
    pub fn follow_files(&self, stopped: impl std::future::Future<Output = ()> + Send + 'static) {
        if let Security::Tls(state) = self {
            tokio::spawn(state.clone().follow_files(stopped));
        }
    }

    /// The `<prefix>_tls_insecure` and `<prefix>_tls_cert_expiry_timestamp_seconds` series.
    pub fn render_metrics(&self, out: &mut String, prefix: &str) {
        let insecure = if self.is_tls() { 0.0 } else { 1.0 };
        crate::metrics::single(
            out,
            &format!("{prefix}_tls_insecure"),
            "gauge",
            "1 when this process runs --insecure (plaintext, no authentication)",
            insecure,
        );
        if let Security::Tls(state) = self {
            crate::metrics::single(
                out,
                &format!("{prefix}_tls_cert_expiry_timestamp_seconds"),
                "gauge",
                "notAfter of this process's TLS certificate (Unix seconds); rotate before it passes",
                state.cert_not_after_unix() as f64,
            );
        }
    }
}

/// The TLS flags every Fenceflake binary takes, with their env vars.
#[cfg(feature = "cli")]
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// The cluster CA certificate (PEM): every peer must present a certificate chained to it.
    #[arg(long, env = "FENCEFLAKE_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// This process's certificate (PEM), with its SPIFFE ID spiffe://<domain>/fenceflake/<role>/<name>.
    #[arg(long, env = "FENCEFLAKE_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM). Files are re-read on change and on SIGHUP.
    #[arg(long, env = "FENCEFLAKE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Plaintext: no TLS, no authentication, every caller may do anything. Logged loudly.
    #[arg(long, env = "FENCEFLAKE_INSECURE")]
    pub insecure: bool,
    /// Only while moving a running plaintext cluster to TLS: serve TLS but also accept
    /// plaintext callers (unauthenticated), and speak plaintext to servers not moved yet.
    #[arg(long, env = "FENCEFLAKE_TLS_TRANSITIONAL")]
    pub tls_transitional: bool,
}

#[cfg(feature = "cli")]
impl TlsArgs {
    pub fn security(&self) -> Result<Security, TlsError> {
        let security =
            Security::from_flags(self.tls_ca.clone(), self.tls_cert.clone(), self.tls_key.clone(), self.insecure)?;
        match &security {
            Security::Tls(state) => state.set_transitional(self.tls_transitional),
            Security::Insecure if self.tls_transitional => return Err(TlsError::TransitionalWithoutTls),
            Security::Insecure => {}
        }
        Ok(security)
    }
}
