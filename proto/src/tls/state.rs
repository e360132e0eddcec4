//! A process's TLS configuration that follows its files: certificate, key and CA are re-read
//! when they change (polled) and on SIGHUP, so a rotation needs no restart. New connections
//! get the new configs at once; established connections keep the session they have.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::{ClientConfig, ServerConfig};

use super::identity::PeerIdentity;
use super::material::{Material, Pems, TlsFiles};
use super::TlsError;

/// How often the files are checked for a change.
pub const RELOAD_POLL: Duration = Duration::from_secs(5);

/// The live TLS configs of one process.
pub struct TlsState {
    files: TlsFiles,
    current: RwLock<Arc<Material>>,
    /// `--tls-transitional`: also accept plaintext callers (unchecked) and speak plaintext to
    /// servers that do not speak TLS yet — only while moving a running cluster to TLS.
    transitional: AtomicBool,
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsState").field("files", &self.files).field("identity", &self.identity()).finish()
    }
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    Unchanged,
    /// The files changed and the new configs are in use; the leaf now expires at this time.
    Changed {
        not_after_unix: i64,
    },
}

impl TlsState {
    pub fn load(files: TlsFiles) -> Result<Arc<TlsState>, TlsError> {
        let material = Material::load(&files)?;
        Ok(Arc::new(TlsState { files, current: RwLock::new(Arc::new(material)), transitional: AtomicBool::new(false) }))
    }

    pub fn set_transitional(&self, on: bool) {
        self.transitional.store(on, Ordering::Relaxed);
    }

    pub fn transitional(&self) -> bool {
        self.transitional.load(Ordering::Relaxed)
    }

    fn current(&self) -> Arc<Material> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Re-read the files. A broken set (half-written, wrong key, a new identity) is refused and
    /// the old configs stay in use: a rotation must never take a working process down.
    pub fn reload(&self) -> Result<Reloaded, TlsError> {
        let old = self.current();
        let pems = Pems::read(&self.files)?;
        if pems.same_as(&old) {
            return Ok(Reloaded::Unchanged);
        }
        let new = Material::build(&self.files, pems)?;
        // A rotation renews a certificate; it does not turn node 3 into node 4, a worker into
        // an operator, or move it to another trust domain (leases and membership are bound to
        // the identity).
        if new.identity != old.identity {
            return Err(TlsError::IdentityChanged { from: old.identity.uri(), to: new.identity.uri() });
        }
        let not_after_unix = new.not_after_unix;
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(new);
        Ok(Reloaded::Changed { not_after_unix })
    }

    pub fn identity(&self) -> PeerIdentity {
        self.current().identity.clone()
    }

    /// When this process's certificate expires (seconds since the Unix epoch).
    pub fn cert_not_after_unix(&self) -> i64 {
        self.current().not_after_unix
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    pub(super) fn server_config(&self) -> Arc<ServerConfig> {
        self.current().server.clone()
    }

    pub(super) fn client_config(&self) -> Arc<ClientConfig> {
        self.current().client.clone()
    }

    /// Reload every [`RELOAD_POLL`] and on SIGHUP until `stopped`, logging what happened.
    pub async fn follow_files(self: Arc<Self>, stopped: impl std::future::Future<Output = ()>) {
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut poll = tokio::time::interval(RELOAD_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stopped);
        loop {
            let on_signal = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            let by_signal = tokio::select! {
                () = &mut stopped => return,
                _ = poll.tick() => false,
                _ = on_signal => true,
            };
            self.reload_and_log(by_signal);
        }
    }

    fn reload_and_log(&self, by_signal: bool) {
        let identity = self.identity();
        match self.reload() {
            Ok(Reloaded::Changed { not_after_unix }) => {
                tracing::info!(%identity, cert = %self.files.cert.display(), not_after_unix, by_signal, "TLS files changed: new connections use the new certificate and CA");
            }
            Ok(Reloaded::Unchanged) if by_signal => {
                tracing::info!(%identity, "SIGHUP: TLS files unchanged");
            }
            Ok(Reloaded::Unchanged) => {}
            Err(error) => {
                tracing::error!(%identity, %error, "TLS files could not be reloaded; still using the previous certificate (fix the files: they are checked every 5 s and on SIGHUP)");
            }
        }
    }
}
