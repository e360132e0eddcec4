//! The worker's state directory: an exclusive lock, the persisted ceiling and the holder ID.
//!
//! Holder identity choice: the holder ID is persisted (file `holder`) and reused by the next
//! incarnation **only when the ceiling file was read intact**. A restart then gets its still
//! live lease back at once (same worker ID, same token) instead of waiting a TTL for it, and
//! reusing it is safe because:
//! - the previous incarnation persisted a ceiling above every timestamp it returned before
//!   returning it, and the new one waits past that ceiling before minting (mechanism 5); the
//!   registry's `not_before` of a re-acquired lease is the *original* grant's and would not
//!   be enough on its own;
//! - with the ceiling missing or corrupt, a new holder ID is generated, so the registry treats
//!   this process as a stranger: it gets the worker ID only after the old lease expired, with
//!   a `not_before` covering everything the old holder could have minted (mechanism 4);
//! - an exclusive lock on `lock` stops two live processes from sharing a directory (and so a
//!   holder ID and a lease); a SIGSTOPped process keeps its lock.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use fs2::FileExt;

use crate::ceiling::{CeilingError, CeilingStore, Loaded};
use crate::durable_file::{self, DurableWriteError};
use crate::holder::{HolderId, HOLDER_ID_MAX_BYTES};

const LOCK_FILE_NAME: &str = "lock";
const HOLDER_FILE_NAME: &str = "holder";
const HOLDER_TMP_FILE_NAME: &str = "holder.tmp";

/// Why the state directory cannot be used. All fatal: the worker must not mint without it.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error("cannot create state directory {dir}: {source}")]
    Create { dir: PathBuf, source: io::Error },
    #[error("cannot lock state directory {dir}: {source}")]
    Lock { dir: PathBuf, source: io::Error },
    #[error("state directory {dir} is in use by another worker process (each worker needs its own)")]
    InUse { dir: PathBuf },
    #[error(transparent)]
    Ceiling(#[from] CeilingError),
    #[error("cannot read holder file {path}: {source}")]
    ReadHolder { path: PathBuf, source: io::Error },
    #[error("cannot persist the holder ID: {0}")]
    WriteHolder(#[from] DurableWriteError),
}

/// An open, locked state directory.
#[derive(Debug)]
pub struct StateDir {
    dir: PathBuf,
    /// Held open for the life of the process: the lock goes with it.
    _lock: File,
    /// The ceiling file; the generator raises it before minting past it.
    pub ceiling: CeilingStore,
    /// What the ceiling file said at open, for the boot wait and the boot log.
    pub loaded: Loaded,
    holder: HolderId,
    /// Whether `holder` came from the previous incarnation (see the module docs).
    holder_reused: bool,
    /// Whether the directory was missing or empty before this open: a first boot (or a disk
    /// replaced by an empty one, which looks the same), so a missing ceiling is expected.
    fresh: bool,
}

/// Whether `dir` holds nothing yet: missing, or an empty directory.
fn is_missing_or_empty(dir: &Path) -> bool {
    match fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) => e.kind() == io::ErrorKind::NotFound,
    }
}

impl StateDir {
    /// Lock `dir` (creating it), read the ceiling, and pick the holder ID: the stored one if
    /// the ceiling is intact, else a fresh one for `hostname`, persisted before it is used.
    pub fn open(dir: &Path, hostname: &str) -> Result<StateDir, StateDirError> {
        let fresh = is_missing_or_empty(dir);
        fs::create_dir_all(dir).map_err(|source| StateDirError::Create { dir: dir.to_path_buf(), source })?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE_NAME))
            .map_err(|source| StateDirError::Lock { dir: dir.to_path_buf(), source })?;
        match lock.try_lock_exclusive() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(StateDirError::InUse { dir: dir.to_path_buf() })
            }
            Err(source) => return Err(StateDirError::Lock { dir: dir.to_path_buf(), source }),
        }
        let (ceiling, loaded) = CeilingStore::open(dir)?;
        let path = dir.join(HOLDER_FILE_NAME);
        let stored = durable_file::read_bounded(&path, HOLDER_ID_MAX_BYTES as u64 + 1)
            .map_err(|source| StateDirError::ReadHolder { path, source })?
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|text| text.strip_suffix('\n').and_then(HolderId::parse));
        let mut state = StateDir {
            dir: dir.to_path_buf(),
            _lock: lock,
            ceiling,
            holder: HolderId::generate(hostname),
            holder_reused: false,
            loaded,
            fresh,
        };
        match stored {
            Some(holder) if matches!(state.loaded, Loaded::Found { .. }) => {
                state.holder = holder;
                state.holder_reused = true;
            }
            _ => state.persist_holder()?,
        }
        Ok(state)
    }

    pub fn holder(&self) -> &HolderId {
        &self.holder
    }

    pub fn holder_reused(&self) -> bool {
        self.holder_reused
    }

    /// Whether the directory was missing or empty when opened (a first boot).
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Give up the stored identity (its lease is for another worker ID than the one now
    /// asked for) and persist a fresh one; that old lease simply expires.
    pub fn replace_holder(&mut self, hostname: &str) -> Result<&HolderId, StateDirError> {
        self.holder = HolderId::generate(hostname);
        self.holder_reused = false;
        self.persist_holder()?;
        Ok(&self.holder)
    }

    /// Persisted before the first Acquire: a crash right after the grant then still finds
    /// the holder that owns it.
    fn persist_holder(&self) -> Result<(), StateDirError> {
        let line = format!("{}\n", self.holder);
        durable_file::replace(&self.dir, HOLDER_FILE_NAME, HOLDER_TMP_FILE_NAME, line.as_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Goal: the holder ID is reused only next to an intact ceiling; a missing or corrupt
    /// ceiling gets a fresh holder (so the registry treats the process as a stranger).
    #[test]
    fn holder_is_reused_only_with_an_intact_ceiling() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateDir::open(dir.path(), "host").unwrap();
        assert!(!first.holder_reused());
        let h1 = first.holder().clone();
        drop(first);

        // No ceiling was written (nothing minted): a fresh holder.
        let mut second = StateDir::open(dir.path(), "host").unwrap();
        assert!(!second.holder_reused());
        assert_ne!(second.holder(), &h1);
        second.ceiling.persist(1_700_000_000_000).unwrap();
        let h2 = second.holder().clone();
        drop(second);

        let third = StateDir::open(dir.path(), "host").unwrap();
        assert!(third.holder_reused());
        assert_eq!(third.holder(), &h2);
        drop(third);

        fs::write(dir.path().join("ceiling"), b"garbage").unwrap();
        let fourth = StateDir::open(dir.path(), "host").unwrap();
        assert!(matches!(fourth.loaded, Loaded::Corrupt { .. }));
        assert!(!fourth.holder_reused());
        assert_ne!(fourth.holder(), &h2);
    }

    /// Goal: a missing or empty directory opens as fresh (a first boot, where no ceiling is
    /// expected); once a worker has used it, it is not fresh even without a ceiling.
    #[test]
    fn missing_or_empty_dirs_are_fresh_used_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("new");
        let first = StateDir::open(&missing, "host").unwrap();
        assert!(first.is_fresh() && matches!(first.loaded, Loaded::Missing));
        drop(first);
        let reopened = StateDir::open(&missing, "host").unwrap();
        assert!(!reopened.is_fresh() && matches!(reopened.loaded, Loaded::Missing));
        drop(reopened);
        let empty = dir.path().join("empty");
        fs::create_dir(&empty).unwrap();
        assert!(StateDir::open(&empty, "host").unwrap().is_fresh());
    }

    /// Goal: a second process (here: a second open) cannot use a locked directory, and
    /// replacing the holder persists the new one.
    #[test]
    fn lock_is_exclusive_and_replace_persists() {
        let dir = tempfile::tempdir().unwrap();
        let mut open = StateDir::open(dir.path(), "host").unwrap();
        let err = StateDir::open(dir.path(), "host").unwrap_err();
        assert!(matches!(err, StateDirError::InUse { .. }), "{err}");
        open.ceiling.persist(5).unwrap();
        let fresh = open.replace_holder("host").unwrap().clone();
        drop(open);
        let reopened = StateDir::open(dir.path(), "host").unwrap();
        assert_eq!(reopened.holder(), &fresh);
    }
}
