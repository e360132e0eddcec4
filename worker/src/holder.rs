//! `HolderId`: the registry's name for one worker process, unique per process incarnation
//! unless deliberately reused from the state directory (see [`crate::state_dir`]).

use std::fmt;
use std::num::NonZeroU64;

use fenceflake_proto::entropy;

/// Longest holder ID the worker creates or accepts from its state directory; the registry
/// refuses much longer ones, and a hostname is cut to fit.
pub const HOLDER_ID_MAX_BYTES: usize = 128;

/// Longest hostname part of a generated holder ID.
const HOSTNAME_PART_MAX_BYTES: usize = 64;

/// The holder of a lease: `hostname/pid/nonce`. Readable in `fenceflake ctl leases` (which
/// host, which process) and unique thanks to the random nonce even when pids repeat across
/// containers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HolderId(String);

impl HolderId {
    /// A fresh holder ID for this process on `hostname`.
    pub fn generate(hostname: &str) -> HolderId {
        let host: String = hostname
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' })
            .take(HOSTNAME_PART_MAX_BYTES)
            .collect();
        let host = if host.is_empty() { "unknown-host".to_string() } else { host };
        let nonce = entropy::random_u64();
        HolderId(format!("{host}/{}/{nonce:016x}", std::process::id()))
    }

    /// A holder ID read back from disk, if it is one this code could have written.
    pub fn parse(text: &str) -> Option<HolderId> {
        let valid = !text.is_empty() && text.len() <= HOLDER_ID_MAX_BYTES && text.chars().all(|c| c.is_ascii_graphic());
        valid.then(|| HolderId(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HolderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One start of a worker (a process, or a library-mode `Generator`): drawn at random when it
/// starts and never persisted, so a restart, or a second process on a copy of the state dir,
/// is a new incarnation even with the same holder ID. The registry gives a new incarnation
/// of a holder a new token (the old one is told SUPERSEDED) and a retried Acquire of the
/// same incarnation the lease it already has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Incarnation(NonZeroU64);

impl Incarnation {
    /// A fresh incarnation (never 0, which means "none" on the wire).
    pub fn draw() -> Incarnation {
        loop {
            if let Some(value) = NonZeroU64::new(entropy::random_u64()) {
                return Incarnation(value);
            }
        }
    }

    /// UNSAFE, harness self-test only: the one incarnation every process of `holder` states
    /// (a hash of the holder ID), so the registry takes a restart or a copy of the state dir
    /// for a retry of the process before it and gives it the same token, as before
    /// incarnations existed. Compiled only into unit tests and the separately built test
    /// binary (feature `unsafe-test-switches`).
    #[cfg(any(test, feature = "unsafe-test-switches"))]
    pub fn fixed_unsafe(holder: &HolderId) -> Incarnation {
        // FNV-1a: the same in every process and build, unlike the std hasher's promise.
        let hash =
            holder.0.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        Incarnation(NonZeroU64::new(hash | 1).expect("odd, so not zero"))
    }

    /// The wire value.
    pub fn get(self) -> u64 {
        self.0.get()
    }
}

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Goal: each start draws its own incarnation; the unsafe switch's is one per holder.
    #[test]
    fn incarnations_are_drawn_per_start_and_fixed_only_unsafely() {
        assert_ne!(Incarnation::draw(), Incarnation::draw());
        let (a, b) = (HolderId::generate("h"), HolderId::generate("h"));
        assert_eq!(Incarnation::fixed_unsafe(&a), Incarnation::fixed_unsafe(&a.clone()));
        assert_ne!(Incarnation::fixed_unsafe(&a), Incarnation::fixed_unsafe(&b));
    }

    /// Goal: generated IDs are unique, readable, parseable, and bounded whatever the hostname.
    #[test]
    fn generated_ids_are_unique_bounded_and_parse() {
        let a = HolderId::generate("gen-3.example");
        let b = HolderId::generate("gen-3.example");
        assert_ne!(a, b, "two processes' holder IDs collided");
        assert!(a.as_str().starts_with(&format!("gen-3.example/{}/", std::process::id())), "{a}");
        assert_eq!(HolderId::parse(a.as_str()), Some(a));
        let odd = HolderId::generate(&format!("héllo wörld{}", "x".repeat(500)));
        assert!(odd.as_str().len() <= HOLDER_ID_MAX_BYTES && HolderId::parse(odd.as_str()).is_some(), "{odd}");
        assert!(HolderId::generate("").as_str().starts_with("unknown-host/"));
        for bad in ["", "has space", &"x".repeat(HOLDER_ID_MAX_BYTES + 1)] {
            assert_eq!(HolderId::parse(bad), None, "{bad:?}");
        }
    }
}
