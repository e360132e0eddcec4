//! The worker's configuration as a plain struct (the CLI and library users build it), and
//! `validate()`, which checks the relations between its fields. It carries the worker's
//! [`Security`] too: one identity (certificate) for its Generator port and its registry
//! client alike, and no default — plaintext only when the caller says `Security::Insecure`.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use fenceflake_proto::tls::{Role, Security};

use crate::ceiling::{CeilingPolicy, CeilingPolicyError};
use crate::clock_guard::{ClockGuardPolicy, ClockGuardPolicyError};
use crate::limits::{
    DEFAULT_FLUSH_INTERVAL_MS, DEFAULT_ID_WAIT_MS, DEFAULT_LEASE_TTL_MS, DEFAULT_MARGIN_MAX_MS,
    DEFAULT_MARGIN_TTL_DIVISOR, DEFAULT_MAX_SKEW_MS, DEFAULT_MAX_SPIN_MS, DEFAULT_REGISTRY_CONNECT_TIMEOUT_MS,
    MAX_ID_WAIT_MS, MAX_LEASE_TTL_MS, MAX_REGISTRY_ADDRS, MIN_LEASE_TTL_MS, MIN_REGISTRY_CONNECT_TIMEOUT_MS,
    REGISTRY_RPC_TIMEOUT_MAX_MS, REGISTRY_RPC_TIMEOUT_MIN_MS, SEQUENCE_BITS_MAX,
};
use crate::worker_id::WorkerId;

/// How the worker picks its worker ID; every choice is leased and fenced the same way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkerIdSpec {
    /// Any free worker ID. A restart with its state dir gets its own still-live lease back;
    /// if that worker ID was quarantined meanwhile, it takes another one.
    Auto,
    /// N from a StatefulSet-style hostname `name-N`.
    Ordinal,
    /// Exactly this one; refused (the worker exits) if another worker holds it or it is
    /// quarantined. Held by the registry's restore embargo, it is waited for (`id_wait`).
    Fixed(WorkerId),
}

impl FromStr for WorkerIdSpec {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<WorkerIdSpec, ConfigError> {
        match text {
            "auto" => Ok(WorkerIdSpec::Auto),
            "ordinal" => Ok(WorkerIdSpec::Ordinal),
            number => number
                .parse::<u16>()
                .map(|n| WorkerIdSpec::Fixed(WorkerId::new(n)))
                .map_err(|_| ConfigError::WorkerIdSpec { text: text.to_string() }),
        }
    }
}

impl WorkerIdSpec {
    /// The worker ID to ask the registry for (`None`: any), resolving `ordinal` from
    /// `hostname`.
    pub fn resolve(&self, hostname: &str) -> Result<Option<WorkerId>, ConfigError> {
        match self {
            WorkerIdSpec::Auto => Ok(None),
            WorkerIdSpec::Fixed(id) => Ok(Some(*id)),
            WorkerIdSpec::Ordinal => statefulset_ordinal(hostname)
                .and_then(|n| u16::try_from(n).ok())
                .map(|n| Some(WorkerId::new(n)))
                .ok_or_else(|| ConfigError::NoOrdinal { hostname: hostname.to_string() }),
        }
    }
}

/// N from a StatefulSet-style host name `name-N` (`None` if it has no such suffix). Shared by
/// `--worker-id ordinal` and the registry's `--node-id ordinal`.
pub fn statefulset_ordinal(hostname: &str) -> Option<u64> {
    hostname
        .rsplit_once('-')
        .and_then(|(name, n)| (!name.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then_some(n))
        .and_then(|n| n.parse::<u64>().ok())
}

/// The margin a worker uses when none is given: `min(1s, ttl/10)` — 1 s for the default
/// 10 s lease, 300 ms for a 3 s one. Always valid for a valid TTL (above 0, below `ttl/3`),
/// so a short `--lease-ttl` alone is enough.
pub fn default_margin(ttl: Duration) -> Duration {
    Duration::from_millis(DEFAULT_MARGIN_MAX_MS).min(ttl / DEFAULT_MARGIN_TTL_DIVISOR)
}

/// Everything a worker (process or embedded [`crate::Generator`]) needs.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Registry client addresses (`host:port`); any node will do, followers forward.
    pub registry: Vec<String>,
    /// Bound on connecting to one registry node, TCP and TLS handshakes together (two round
    /// trips): set it above twice the round trip to the registry. A whole attempt, connection
    /// included, is bounded by [`WorkerConfig::registry_rpc_timeout`] anyway (`ttl/3`, 200 ms..2 s).
    pub registry_connect_timeout: Duration,
    /// Holds the ceiling, the holder ID and a lock; one per worker process.
    pub state_dir: PathBuf,
    pub worker_id: WorkerIdSpec,
    /// Names this process in its holder ID and resolves `ordinal`.
    pub hostname: String,
    /// TTL asked of the registry.
    pub lease_ttl: Duration,
    /// Subtracted from the TTL: the deadline is `send time + ttl - margin`. `None`:
    /// [`default_margin`] of `lease_ttl` (see [`WorkerConfig::effective_margin`]).
    pub margin: Option<Duration>,
    /// Longest clock regression waited out instead of parking.
    pub max_spin: Duration,
    /// Whether a regression may be served from the rest of the frozen millisecond.
    pub grace: bool,
    /// Largest tolerated difference from the registry leader's wall clock.
    pub max_skew: Duration,
    /// How far each persisted ceiling runs ahead (also the boot wait after a crash).
    pub flush_interval: Duration,
    /// Width of the sequence field, if given: the whole layout (epoch, worker-ID width,
    /// sequence width) is the cluster's, stated in every grant. `None` (the default) mints
    /// with the cluster's; a width that disagrees with it makes start fail
    /// ([`crate::StartError::SequenceBits`]). Used only with a registry older than the field,
    /// which states no width (12 then if `None`).
    pub sequence_bits: Option<u8>,
    /// How long start waits while the registry says no worker ID can be had now: every ID
    /// held or quarantined (`RESOURCE_EXHAUSTED`), or the one asked for held by the registry's
    /// restore embargo. Zero: give up at the first such answer. See [`crate::Generator::start`]
    /// for the whole bound on start.
    pub id_wait: Duration,
    /// Whether mechanism 2 is enforced. Only the harness turns it off, to prove that its
    /// checkers catch the duplicates a worker without its deadline mints.
    pub deadline_check: DeadlineCheck,
    /// Whether each start is an incarnation of its own. Only the harness turns it off, to
    /// prove that its checkers catch what copies of one state dir mint under one token.
    pub incarnations: Incarnations,
    /// Mutual TLS (the worker's certificate, presented to the registry and to its own
    /// callers; registry nodes must present `node` certificates), or plaintext by an explicit
    /// `Security::Insecure`. Rotated files are picked up by `Security::follow_files`, which
    /// the embedding process runs (`fenceflake worker` does).
    pub security: Security,
}

/// Mechanism 2 on (always, in production) or off (harness self-test only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineCheck {
    Enforced,
    /// UNSAFE: mints past the lease deadline, past the lease's `mint_until`, and after the
    /// registry fenced or quarantined it (a worker that believes a lease it no longer has).
    /// Exists so a harness run can show that a broken worker is caught (the self-test does
    /// not then hang on whether the thawed worker's first renewal or its first call comes
    /// first); compiled only into unit tests and
    /// the separately built test binary (feature `unsafe-test-switches`).
    #[cfg(any(test, feature = "unsafe-test-switches"))]
    DisabledUnsafe,
}

/// Each start a new incarnation (always, in production) or not (harness self-test only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incarnations {
    PerStart,
    /// UNSAFE: every process of a holder states one fixed incarnation, so the registry gives
    /// a restart or a copy of the state dir (a cloned VM) the same token as the process
    /// before it, and copies mint duplicates under it; compiled only into unit tests and the
    /// separately built test binary (feature `unsafe-test-switches`).
    #[cfg(any(test, feature = "unsafe-test-switches"))]
    DisabledUnsafe,
}

impl WorkerConfig {
    /// A configuration with every documented default. `security` has none: TLS is the rule,
    /// plaintext an explicit choice.
    pub fn new(registry: Vec<String>, state_dir: PathBuf, hostname: String, security: Security) -> WorkerConfig {
        WorkerConfig {
            registry,
            registry_connect_timeout: Duration::from_millis(DEFAULT_REGISTRY_CONNECT_TIMEOUT_MS),
            state_dir,
            worker_id: WorkerIdSpec::Auto,
            hostname,
            lease_ttl: Duration::from_millis(DEFAULT_LEASE_TTL_MS),
            margin: None,
            max_spin: Duration::from_millis(DEFAULT_MAX_SPIN_MS),
            grace: false,
            max_skew: Duration::from_millis(DEFAULT_MAX_SKEW_MS),
            flush_interval: Duration::from_millis(DEFAULT_FLUSH_INTERVAL_MS),
            sequence_bits: None,
            id_wait: Duration::from_millis(DEFAULT_ID_WAIT_MS),
            deadline_check: DeadlineCheck::Enforced,
            incarnations: Incarnations::PerStart,
            security,
        }
    }

    /// Check every field and the relations between them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.registry.is_empty() || self.registry.len() > MAX_REGISTRY_ADDRS {
            return Err(ConfigError::RegistryCount { count: self.registry.len() });
        }
        let ttl_ms = self.lease_ttl.as_millis();
        if !(u128::from(MIN_LEASE_TTL_MS)..=u128::from(MAX_LEASE_TTL_MS)).contains(&ttl_ms) {
            return Err(ConfigError::LeaseTtl { ttl: self.lease_ttl });
        }
        // The lease must survive one missed renewal: after a renewal at ttl/3 fails, the
        // next try at 2·ttl/3 must still be before the deadline at ttl - margin.
        let margin = self.effective_margin();
        if margin.is_zero() || margin * 3 >= self.lease_ttl {
            return Err(ConfigError::Margin { margin, ttl: self.lease_ttl });
        }
        let connect_ms = self.registry_connect_timeout.as_millis();
        if !(u128::from(MIN_REGISTRY_CONNECT_TIMEOUT_MS)..=u128::from(REGISTRY_RPC_TIMEOUT_MAX_MS))
            .contains(&connect_ms)
        {
            return Err(ConfigError::ConnectTimeout { connect: self.registry_connect_timeout });
        }
        if let Some(bits) = self.sequence_bits.filter(|b| !(1..=SEQUENCE_BITS_MAX).contains(b)) {
            return Err(ConfigError::SequenceBits { bits });
        }
        if self.id_wait > Duration::from_millis(MAX_ID_WAIT_MS) {
            return Err(ConfigError::IdWait { id_wait_ms: self.id_wait.as_millis() });
        }
        self.guard_policy()?;
        self.ceiling_policy()?;
        self.worker_id.resolve(&self.hostname)?;
        if let Some(identity) = self.security.identity().filter(|i| i.role != Role::Worker) {
            return Err(ConfigError::NotAWorker { identity: identity.uri() });
        }
        Ok(())
    }

    pub fn guard_policy(&self) -> Result<ClockGuardPolicy, ConfigError> {
        Ok(ClockGuardPolicy::new(self.max_spin.as_millis() as u64, self.grace)?)
    }

    pub fn ceiling_policy(&self) -> Result<CeilingPolicy, ConfigError> {
        Ok(CeilingPolicy::new(self.flush_interval.as_millis() as u64)?)
    }

    /// The margin in force: the one given, else [`default_margin`] of the TTL.
    pub fn effective_margin(&self) -> Duration {
        self.margin.unwrap_or_else(|| default_margin(self.lease_ttl))
    }

    /// Timeout of one registry RPC, connection included: long enough for a round trip of a
    /// quarter of the TTL plus the commit, short enough to try another node before the
    /// deadline (a renewal starts with `ttl - margin - ttl/3 > ttl/3` left; see `keeper`).
    pub fn registry_rpc_timeout(&self) -> Duration {
        (self.lease_ttl / 3).clamp(
            Duration::from_millis(REGISTRY_RPC_TIMEOUT_MIN_MS),
            Duration::from_millis(REGISTRY_RPC_TIMEOUT_MAX_MS),
        )
    }

    /// How often the lease is renewed (before jitter).
    pub fn renew_interval(&self) -> Duration {
        self.lease_ttl / 3
    }
}

/// A configuration that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("--worker-id {text:?}: expected auto, ordinal or a number")]
    WorkerIdSpec { text: String },
    #[error("--worker-id ordinal: hostname {hostname:?} does not end in -N (StatefulSet style)")]
    NoOrdinal { hostname: String },
    #[error("--registry: {count} addresses given, expected 1..={MAX_REGISTRY_ADDRS}")]
    RegistryCount { count: usize },
    #[error("--lease-ttl {ttl:?} outside {MIN_LEASE_TTL_MS}ms..={MAX_LEASE_TTL_MS}ms")]
    LeaseTtl { ttl: Duration },
    #[error("--margin {margin:?} must be above 0 and below a third of --lease-ttl {ttl:?}, so one missed renewal does not park the worker (leave --margin out for the default, min(1s, TTL/10))")]
    Margin { margin: Duration, ttl: Duration },
    #[error("--registry-connect-timeout {connect:?} outside {MIN_REGISTRY_CONNECT_TIMEOUT_MS}ms..={REGISTRY_RPC_TIMEOUT_MAX_MS}ms (a whole registry attempt, connection included, has a third of --lease-ttl within 200ms..2s)")]
    ConnectTimeout { connect: Duration },
    #[error("--sequence-bits {bits} outside 1..={SEQUENCE_BITS_MAX} (leave it out to use the cluster's layout)")]
    SequenceBits { bits: u8 },
    #[error("--id-wait {id_wait_ms}ms exceeds the limit of {MAX_ID_WAIT_MS}ms (1h)")]
    IdWait { id_wait_ms: u128 },
    #[error("--max-spin: {0}")]
    Spin(#[from] ClockGuardPolicyError),
    #[error("--flush-interval: {0}")]
    Flush(#[from] CeilingPolicyError),
    #[error("--tls-cert names {identity}, but a worker needs a worker certificate, spiffe://<domain>/fenceflake/worker/<name> (`fenceflake certs issue --role worker --name NAME`): the registry grants leases to workers only")]
    NotAWorker { identity: String },
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn config() -> WorkerConfig {
        WorkerConfig::new(vec!["127.0.0.1:1".into()], "/tmp/x".into(), "gen-4".into(), Security::Insecure)
    }

    /// Goal: the three worker-ID forms parse, and `ordinal` takes N from `name-N` only.
    #[test]
    fn worker_id_specs_parse_and_resolve() {
        assert_eq!("auto".parse::<WorkerIdSpec>().unwrap().resolve("h").unwrap(), None);
        assert_eq!("17".parse::<WorkerIdSpec>().unwrap().resolve("h").unwrap(), Some(WorkerId::new(17)));
        let ordinal: WorkerIdSpec = "ordinal".parse().unwrap();
        assert_eq!(ordinal.resolve("fenceflake-worker-12").unwrap(), Some(WorkerId::new(12)));
        for bad in ["worker", "worker-", "-3", "worker-x", "w-99999"] {
            assert!(ordinal.resolve(bad).is_err(), "{bad}");
        }
        assert_eq!("seven".parse::<WorkerIdSpec>(), Err(ConfigError::WorkerIdSpec { text: "seven".into() }));
    }

    /// Goal: defaults validate; each broken relation is refused naming the flag.
    #[test]
    fn validate_checks_relations() {
        config().validate().unwrap();
        let cases: Vec<(WorkerConfig, &str)> = vec![
            (WorkerConfig { registry: vec![], ..config() }, "--registry"),
            (WorkerConfig { lease_ttl: Duration::from_millis(100), ..config() }, "--lease-ttl"),
            (WorkerConfig { lease_ttl: Duration::from_secs(61), ..config() }, "--lease-ttl"),
            (WorkerConfig { margin: Some(Duration::from_secs(4)), ..config() }, "--margin"),
            (WorkerConfig { margin: Some(Duration::ZERO), ..config() }, "--margin"),
            (WorkerConfig { max_spin: Duration::from_secs(5), ..config() }, "--max-spin"),
            (WorkerConfig { flush_interval: Duration::ZERO, ..config() }, "--flush-interval"),
            (
                WorkerConfig { registry_connect_timeout: Duration::from_millis(9), ..config() },
                "--registry-connect-timeout",
            ),
            (
                WorkerConfig { registry_connect_timeout: Duration::from_millis(2_001), ..config() },
                "--registry-connect-timeout",
            ),
            (WorkerConfig { id_wait: Duration::from_secs(3_601), ..config() }, "--id-wait"),
            (WorkerConfig { sequence_bits: Some(0), ..config() }, "--sequence-bits"),
            (WorkerConfig { sequence_bits: Some(23), ..config() }, "--sequence-bits"),
            (WorkerConfig { worker_id: WorkerIdSpec::Ordinal, hostname: "solo".into(), ..config() }, "ordinal"),
        ];
        for (cfg, flag) in cases {
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains(flag), "{flag}: {err}");
        }
        WorkerConfig { id_wait: Duration::ZERO, ..config() }.validate().unwrap();
        WorkerConfig { registry_connect_timeout: Duration::from_secs(2), ..config() }.validate().unwrap();
        WorkerConfig { sequence_bits: Some(22), ..config() }.validate().unwrap();
        assert_eq!(config().sequence_bits, None, "the cluster's layout unless given");
        assert_eq!(config().id_wait, Duration::from_secs(300));
        let short =
            WorkerConfig { lease_ttl: Duration::from_secs(2), margin: Some(Duration::from_millis(500)), ..config() };
        short.validate().unwrap();
        assert_eq!(short.renew_interval().as_millis(), 666);
        assert_eq!(short.effective_margin(), Duration::from_millis(500));
    }

    /// Goal: without --margin the margin follows the TTL, min(1s, ttl/10), so a short lease
    /// alone starts; an explicit margin is still checked against the TTL.
    #[test]
    fn default_margin_follows_the_ttl() {
        assert_eq!(default_margin(Duration::from_secs(3)), Duration::from_millis(300));
        assert_eq!(default_margin(Duration::from_secs(10)), Duration::from_secs(1));
        assert_eq!(default_margin(Duration::from_secs(60)), Duration::from_secs(1));
        assert_eq!(default_margin(Duration::from_millis(MIN_LEASE_TTL_MS)), Duration::from_millis(30));
        assert_eq!(config().effective_margin(), Duration::from_secs(1));

        let three = WorkerConfig { lease_ttl: Duration::from_secs(3), ..config() };
        three.validate().unwrap();
        assert_eq!(three.effective_margin(), Duration::from_millis(300));
        for ttl_ms in [MIN_LEASE_TTL_MS, 301, 999, 1_000, 2_999, 59_999, MAX_LEASE_TTL_MS] {
            WorkerConfig { lease_ttl: Duration::from_millis(ttl_ms), ..config() }.validate().unwrap();
        }

        let too_large = WorkerConfig { margin: Some(Duration::from_secs(1)), ..three };
        let err = too_large.validate().unwrap_err();
        assert_eq!(err, ConfigError::Margin { margin: Duration::from_secs(1), ttl: Duration::from_secs(3) });
        assert!(err.to_string().contains("--margin"), "{err}");
    }
}
