//! The persisted timestamp ceiling (docs/design.md "Safety", mechanism 5): a restart never
//! replays a millisecond, even one it crashed in the middle of.
//!
//! Invariant kept with the caller: every timestamp in an ID returned to anyone is below the
//! *bound* on disk — the persisted ceiling, or the exact last timestamp + 1 after a clean
//! shutdown. The caller persists a new ceiling ([`CeilingPolicy::needs_flush`]) *before*
//! returning any ID at or past the old bound, and a booting worker waits until its wall
//! clock reaches the bound ([`boot_wait_until`]).
//!
//! File format, one line: `v1 <ms> <exact:0|1> <crc32 of "v1 <ms> <exact>" as 8 hex>`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use fenceflake_proto::switches::{self, Mechanism};

use crate::durable_file;
use crate::limits::{CEILING_FILE_MAX_BYTES, DEFAULT_FLUSH_INTERVAL_MS, MAX_FLUSH_INTERVAL_MS};

/// Name of the ceiling file in the state directory.
pub const CEILING_FILE_NAME: &str = "ceiling";
/// Name of the file a new ceiling is written to before it is renamed over the old one. A
/// leftover is never read: its rename did not complete, so nothing minted relied on it.
const CEILING_TMP_FILE_NAME: &str = "ceiling.tmp";
const FORMAT_VERSION: &str = "v1";

/// What the state directory said at open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Loaded {
    /// A ceiling (`exact == false`: nothing at or past `ceiling_ms` was minted) or, after a
    /// clean shutdown, the exact last minted millisecond (`exact == true`).
    Found { ceiling_ms: u64, exact: bool },
    /// No file: a first boot or a lost disk. Not fatal; the registry's `not_before` is the
    /// only floor left, and the caller logs that.
    Missing,
    /// The file is unreadable as a ceiling. Not fatal, treated like `Missing`, but the caller
    /// logs `why` loudly since a disk is misbehaving.
    Corrupt { why: String },
}

impl Loaded {
    /// First millisecond the local state allows minting in: every timestamp minted before
    /// the file was written is below it.
    pub fn bound_ms(&self) -> u64 {
        match self {
            Loaded::Found { ceiling_ms, exact: false } => *ceiling_ms,
            // That millisecond itself was used, possibly up to its last sequence number.
            Loaded::Found { ceiling_ms, exact: true } => ceiling_ms.saturating_add(1),
            Loaded::Missing | Loaded::Corrupt { .. } => 0,
        }
    }
}

/// Storage failures: fatal, since minting without a durable ceiling could replay a
/// millisecond after the next crash.
#[derive(Debug, thiserror::Error)]
pub enum CeilingError {
    #[error("cannot create state directory {dir}: {source}")]
    CreateDir { dir: PathBuf, source: io::Error },
    #[error("cannot read ceiling file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot persist ceiling to {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// The ceiling file in one state directory.
#[derive(Debug)]
pub struct CeilingStore {
    dir: PathBuf,
    /// The bound currently on disk (see the module docs); what `needs_flush` compares with.
    bound_ms: u64,
}

impl CeilingStore {
    /// Open (creating `dir` if needed) and read the ceiling. Missing or corrupt files are
    /// reported in [`Loaded`], not as errors; only IO failures are errors.
    pub fn open(dir: &Path) -> Result<(CeilingStore, Loaded), CeilingError> {
        fs::create_dir_all(dir).map_err(|source| CeilingError::CreateDir { dir: dir.to_path_buf(), source })?;
        let path = dir.join(CEILING_FILE_NAME);
        let bytes = durable_file::read_bounded(&path, CEILING_FILE_MAX_BYTES)
            .map_err(|source| CeilingError::Read { path: path.clone(), source })?;
        let loaded = match bytes {
            None => Loaded::Missing,
            Some(bytes) => match parse(&bytes) {
                Ok((ceiling_ms, exact)) => Loaded::Found { ceiling_ms, exact },
                Err(why) => Loaded::Corrupt { why },
            },
        };
        let store = CeilingStore { dir: dir.to_path_buf(), bound_ms: loaded.bound_ms() };
        Ok((store, loaded))
    }

    /// The bound on disk: no returned ID carries a timestamp at or past it.
    pub fn bound_ms(&self) -> u64 {
        self.bound_ms
    }

    /// Durably raise the ceiling to `ceiling_ms`; on `Ok`, IDs below it may be returned.
    /// Lowering it would void the promise made to a future boot, so that is a bug and
    /// panics.
    pub fn persist(&mut self, ceiling_ms: u64) -> Result<(), CeilingError> {
        assert!(ceiling_ms >= self.bound_ms, "ceiling lowered from {} to {ceiling_ms}", self.bound_ms);
        self.write(ceiling_ms, false)?;
        self.bound_ms = ceiling_ms;
        Ok(())
    }

    /// On clean shutdown, after the last ID is returned: record the exact last minted
    /// millisecond so the next boot waits only past it instead of past the ceiling.
    pub fn persist_exact(&mut self, last_ts_ms: u64) -> Result<(), CeilingError> {
        self.write(last_ts_ms, true)?;
        self.bound_ms = last_ts_ms.saturating_add(1);
        Ok(())
    }

    /// Durably replace the ceiling file ([`durable_file::replace`]): a crash leaves either
    /// the old or the new ceiling, never a torn one.
    fn write(&self, ms: u64, exact: bool) -> Result<(), CeilingError> {
        durable_file::replace(&self.dir, CEILING_FILE_NAME, CEILING_TMP_FILE_NAME, format_line(ms, exact).as_bytes())
            .map_err(|e| CeilingError::Write { path: e.path, source: e.source })
    }
}

fn payload(ms: u64, exact: bool) -> String {
    format!("{FORMAT_VERSION} {ms} {}", u8::from(exact))
}

fn format_line(ms: u64, exact: bool) -> String {
    let payload = payload(ms, exact);
    let crc = crc32fast::hash(payload.as_bytes());
    format!("{payload} {crc:08x}\n")
}

/// `(ms, exact)` from a ceiling file's bytes, or why they are not a ceiling.
fn parse(bytes: &[u8]) -> Result<(u64, bool), String> {
    if bytes.len() as u64 > CEILING_FILE_MAX_BYTES {
        return Err(format!("file larger than {CEILING_FILE_MAX_BYTES} bytes"));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
    let line = text.strip_suffix('\n').ok_or_else(|| "no trailing newline (torn write?)".to_string())?;
    let fields: Vec<&str> = line.split(' ').collect();
    let [version, ms, exact, crc] = fields[..] else {
        return Err(format!("expected 4 fields, found {}", fields.len()));
    };
    if version != FORMAT_VERSION {
        return Err(format!("unknown format version {version:?}"));
    }
    let ms: u64 = ms.parse().map_err(|_| format!("bad ceiling {ms:?}"))?;
    let exact = match exact {
        "0" => false,
        "1" => true,
        other => return Err(format!("bad exact flag {other:?}")),
    };
    let crc = u32::from_str_radix(crc, 16).map_err(|_| format!("bad checksum {crc:?}"))?;
    let want = crc32fast::hash(payload(ms, exact).as_bytes());
    if crc != want {
        return Err(format!("checksum {crc:08x} does not match {want:08x}"));
    }
    Ok((ms, exact))
}

/// When to raise the ceiling; fixed at startup from config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CeilingPolicy {
    /// How far each new ceiling runs ahead of the timestamp that triggered it: fewer fsyncs
    /// the larger it is, but a longer boot wait after a crash. Never 0, or the timestamp
    /// being minted would not be below the new ceiling.
    flush_interval_ms: u64,
}

/// Why a ceiling policy was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CeilingPolicyError {
    #[error("flush_interval_ms {flush_interval_ms} outside 1..={MAX_FLUSH_INTERVAL_MS}")]
    FlushInterval { flush_interval_ms: u64 },
}

impl Default for CeilingPolicy {
    fn default() -> CeilingPolicy {
        CeilingPolicy { flush_interval_ms: DEFAULT_FLUSH_INTERVAL_MS }
    }
}

impl CeilingPolicy {
    pub fn new(flush_interval_ms: u64) -> Result<CeilingPolicy, CeilingPolicyError> {
        if !(1..=MAX_FLUSH_INTERVAL_MS).contains(&flush_interval_ms) {
            return Err(CeilingPolicyError::FlushInterval { flush_interval_ms });
        }
        Ok(CeilingPolicy { flush_interval_ms })
    }

    pub fn flush_interval_ms(&self) -> u64 {
        self.flush_interval_ms
    }

    /// The new ceiling to persist before any ID at `ts_ms` is returned, or `None` when
    /// `ts_ms` is already below the persisted bound.
    pub fn needs_flush(&self, persisted_ceiling_ms: u64, ts_ms: u64) -> Option<u64> {
        (ts_ms >= persisted_ceiling_ms).then(|| ts_ms.saturating_add(self.flush_interval_ms))
    }
}

/// The first millisecond a booting worker may mint in: past both its own persisted bound and
/// the registry's `not_before` (the largest timestamp another holder of this worker ID may
/// have used, so that millisecond itself is off limits).
pub fn boot_wait_until(local: &Loaded, not_before_ms: u64) -> u64 {
    // The simulator's self-test of mechanism 5 boots as if nothing were persisted.
    let local_ms = if switches::is_off(Mechanism::LocalCeiling) { 0 } else { local.bound_ms() };
    local_ms.max(not_before_ms.saturating_add(1))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const T0: u64 = 1_700_000_000_000;

    /// Goal: a first boot finds nothing, and what is persisted reads back, exact or not.
    #[test]
    fn persist_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let (mut store, loaded) = CeilingStore::open(&state).unwrap();
        assert_eq!(loaded, Loaded::Missing);
        assert_eq!(store.bound_ms(), 0);

        store.persist(T0 + 1_000).unwrap();
        assert_eq!(store.bound_ms(), T0 + 1_000);
        let (_, loaded) = CeilingStore::open(&state).unwrap();
        assert_eq!(loaded, Loaded::Found { ceiling_ms: T0 + 1_000, exact: false });

        store.persist_exact(T0 + 17).unwrap();
        assert_eq!(store.bound_ms(), T0 + 18);
        let (reopened, loaded) = CeilingStore::open(&state).unwrap();
        assert_eq!(loaded, Loaded::Found { ceiling_ms: T0 + 17, exact: true });
        assert_eq!(reopened.bound_ms(), T0 + 18);
        assert!(!state.join(CEILING_TMP_FILE_NAME).exists(), "temp file left behind");
    }

    /// Goal: a worker that follows `needs_flush` and crashes mid-millisecond (no clean
    /// shutdown) reboots with a wait that is past every timestamp it ever returned.
    #[test]
    fn crash_mid_millisecond_then_reload_is_past_every_minted_ts() {
        let dir = tempfile::tempdir().unwrap();
        let policy = CeilingPolicy::new(100).unwrap();
        let (mut store, _) = CeilingStore::open(dir.path()).unwrap();
        let mut returned_max_ts = 0;
        // Minting at irregular times, several times in some milliseconds, across many
        // ceilings; the "crash" is simply dropping the store after the last mint.
        let mut ts = T0;
        for step in 0..500u64 {
            ts += step % 7;
            if let Some(ceiling_ms) = policy.needs_flush(store.bound_ms(), ts) {
                store.persist(ceiling_ms).unwrap();
            }
            assert!(ts < store.bound_ms(), "returned ts {ts} not under the bound");
            returned_max_ts = returned_max_ts.max(ts);
        }
        drop(store);
        let (_, loaded) = CeilingStore::open(dir.path()).unwrap();
        let first_ms = boot_wait_until(&loaded, 0);
        assert!(first_ms > returned_max_ts, "boot at {first_ms} may replay {returned_max_ts}");
    }

    /// Goal: after a clean shutdown the boot wait is exactly one past the last timestamp —
    /// past it (it may have been used to the last sequence) but no further.
    #[test]
    fn clean_shutdown_waits_just_past_the_last_ts() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = CeilingStore::open(dir.path()).unwrap();
        store.persist(T0 + 1_000).unwrap();
        store.persist_exact(T0 + 5).unwrap();
        let (_, loaded) = CeilingStore::open(dir.path()).unwrap();
        assert_eq!(boot_wait_until(&loaded, 0), T0 + 6);
    }

    /// Goal: the boot wait is past both floors whichever is larger, and with no local state
    /// the registry's `not_before` alone still keeps its millisecond off limits.
    #[test]
    fn boot_wait_takes_the_later_floor() {
        let found = |ceiling_ms, exact| Loaded::Found { ceiling_ms, exact };
        let cases: &[(Loaded, u64, u64)] = &[
            (found(T0 + 100, false), T0, T0 + 100),
            (found(T0 + 100, true), T0, T0 + 101),
            (found(T0, false), T0 + 50, T0 + 51),
            (Loaded::Missing, T0 + 50, T0 + 51),
            (Loaded::Corrupt { why: "x".into() }, T0 + 50, T0 + 51),
        ];
        for (loaded, not_before_ms, want) in cases {
            assert_eq!(boot_wait_until(loaded, *not_before_ms), *want, "{loaded:?}");
        }
    }

    /// Goal: every kind of damage is reported as `Corrupt` (with a reason), never as a
    /// ceiling and never as a fatal error.
    #[test]
    fn corrupt_files_are_detected() {
        let good = format_line(T0, false);
        let flipped = good.replace("1700", "1701");
        let cases: &[(&str, &[u8])] = &[
            ("empty", b""),
            ("torn", &good.as_bytes()[..good.len() - 4]),
            ("digit flipped", flipped.as_bytes()),
            ("wrong version", b"v9 1 0 00000000\n"),
            ("bad flag", b"v1 1 2 00000000\n"),
            ("garbage", &[0xff, 0x00, 0x13, b'\n']),
            ("oversized", &[b'1'; 4096]),
        ];
        for (name, bytes) in cases {
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.path().join(CEILING_FILE_NAME), bytes).unwrap();
            let (store, loaded) = CeilingStore::open(dir.path()).unwrap();
            assert!(matches!(loaded, Loaded::Corrupt { .. }), "{name}: {loaded:?}");
            assert_eq!(store.bound_ms(), 0, "{name}");
        }
    }

    /// Goal: a temp file left by a crash between write and rename is ignored — even one
    /// holding a larger value, since nothing was returned relying on it — and is simply
    /// overwritten by the next persist.
    #[test]
    fn temp_file_leftovers_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = CeilingStore::open(dir.path()).unwrap();
        store.persist(T0).unwrap();
        fs::write(dir.path().join(CEILING_TMP_FILE_NAME), format_line(T0 + 9_999, false)).unwrap();
        let (mut store, loaded) = CeilingStore::open(dir.path()).unwrap();
        assert_eq!(loaded, Loaded::Found { ceiling_ms: T0, exact: false });

        fs::write(dir.path().join(CEILING_TMP_FILE_NAME), b"half a li").unwrap();
        store.persist(T0 + 1).unwrap();
        let (_, loaded) = CeilingStore::open(dir.path()).unwrap();
        assert_eq!(loaded, Loaded::Found { ceiling_ms: T0 + 1, exact: false });
    }

    /// Goal: a flush is needed exactly at or past the persisted ceiling, and the new ceiling
    /// is strictly above the timestamp that needed it.
    #[test]
    fn needs_flush_edges() {
        let p = CeilingPolicy::new(1_000).unwrap();
        assert_eq!(p.needs_flush(T0, T0 - 1), None);
        assert_eq!(p.needs_flush(T0, T0), Some(T0 + 1_000));
        assert_eq!(p.needs_flush(T0, T0 + 5_000), Some(T0 + 6_000));
        assert_eq!(p.needs_flush(0, T0), Some(T0 + 1_000), "missing state must flush");
        assert_eq!(CeilingPolicy::default().flush_interval_ms(), DEFAULT_FLUSH_INTERVAL_MS);
        assert!(CeilingPolicy::new(0).is_err());
        assert!(CeilingPolicy::new(MAX_FLUSH_INTERVAL_MS + 1).is_err());
    }

    /// Goal: lowering the ceiling (which would let a restart replay) is caught loudly.
    #[test]
    #[should_panic(expected = "ceiling lowered")]
    fn lowering_the_ceiling_panics() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = CeilingStore::open(dir.path()).unwrap();
        store.persist(T0 + 10).unwrap();
        let _ = store.persist(T0 + 9);
    }
}
