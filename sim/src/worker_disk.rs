//! What can happen to a worker's state dir, on the real files the worker reads (the state
//! dirs are real directories: the worker's own file code runs, in `/dev/shm`):
//! - while the worker is dead: the dir is lost (a new VM, a wiped disk), its ceiling file is
//!   torn or garbage (a disk that lied about a write), a torn `ceiling.tmp` is left behind (a
//!   crash between write and rename), or the whole dir is rolled back to an earlier snapshot
//!   (a VM restored from a snapshot: an old ceiling and an old holder ID);
//! - while it runs: every ceiling write fails (a full or read-only disk) until healed.
//!
//! None of these may make a worker return an ID twice: with the ceiling gone or behind, the
//! registry's `not_before` (the high-water mark of everything the ID's holders were allowed
//! to mint) is the floor; with writes failing, the worker must stop minting past its ceiling.

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::Rng;

use crate::workers::copy_dir;

const CEILING: &str = "ceiling";
const CEILING_TMP: &str = "ceiling.tmp";

/// A fault done to a dead worker's state dir.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadDiskFault {
    Lost,
    TornCeiling,
    TornLeftover,
    RolledBack,
}

impl DeadDiskFault {
    /// Mostly nothing: a SIGKILL alone leaves the dir as it was.
    pub fn draw(rng: &mut StdRng) -> Option<DeadDiskFault> {
        match rng.gen_range(0..100) {
            0..=9 => Some(DeadDiskFault::Lost),
            10..=17 => Some(DeadDiskFault::TornCeiling),
            18..=24 => Some(DeadDiskFault::TornLeftover),
            25..=32 => Some(DeadDiskFault::RolledBack),
            _ => None,
        }
    }

    /// Whether the ceiling the next start reads is gone or behind: the worker's order across
    /// the restart is no longer promised (its uniqueness still is).
    pub fn loses_ceiling(self) -> bool {
        self != DeadDiskFault::TornLeftover
    }

    pub fn name(self) -> &'static str {
        match self {
            DeadDiskFault::Lost => "lost state dir",
            DeadDiskFault::TornCeiling => "torn ceiling",
            DeadDiskFault::TornLeftover => "torn ceiling.tmp left over",
            DeadDiskFault::RolledBack => "state dir rolled back to a snapshot",
        }
    }
}

/// Where a worker machine's snapshot is kept (beside the state dirs, never read by a worker).
fn snapshot_of(state_dir: &Path) -> PathBuf {
    state_dir.with_extension("snapshot")
}

/// Snapshot the dir (the VM's disk) to roll back to later.
pub fn snapshot(state_dir: &Path) -> std::io::Result<()> {
    let snapshot = snapshot_of(state_dir);
    if snapshot.exists() {
        std::fs::remove_dir_all(&snapshot)?;
    }
    if state_dir.exists() {
        copy_dir(state_dir, &snapshot)?;
    }
    Ok(())
}

/// Do `fault` to a dead worker's state dir. A rollback without a snapshot loses the dir.
pub fn apply(fault: DeadDiskFault, state_dir: &Path, rng: &mut StdRng) -> std::io::Result<()> {
    match fault {
        DeadDiskFault::Lost => remove_dir(state_dir),
        DeadDiskFault::TornCeiling => tear(&state_dir.join(CEILING), rng),
        DeadDiskFault::TornLeftover => {
            std::fs::create_dir_all(state_dir)?;
            std::fs::write(state_dir.join(CEILING_TMP), garbage(rng))
        }
        DeadDiskFault::RolledBack => {
            remove_dir(state_dir)?;
            let snapshot = snapshot_of(state_dir);
            if snapshot.exists() {
                copy_dir(&snapshot, state_dir)?;
            }
            Ok(())
        }
    }
}

fn remove_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// Keep a prefix of the file, or replace it with garbage.
fn tear(file: &Path, rng: &mut StdRng) -> std::io::Result<()> {
    let Ok(bytes) = std::fs::read(file) else { return Ok(()) };
    let torn = if rng.gen_bool(0.5) { bytes[..rng.gen_range(0..bytes.len().max(1))].to_vec() } else { garbage(rng) };
    std::fs::write(file, torn)
}

fn garbage(rng: &mut StdRng) -> Vec<u8> {
    (0..rng.gen_range(1..48)).map(|_| rng.gen()).collect()
}

/// Every ceiling write of the worker fails from now on (the temporary file it writes first
/// cannot be created: a directory stands in its place) until [`heal_writes`].
pub fn fail_writes(state_dir: &Path) -> std::io::Result<()> {
    let blocker = state_dir.join(CEILING_TMP);
    if blocker.is_file() {
        std::fs::remove_file(&blocker)?;
    }
    std::fs::create_dir_all(blocker)
}

pub fn heal_writes(state_dir: &Path) -> std::io::Result<()> {
    let blocker = state_dir.join(CEILING_TMP);
    if blocker.is_dir() {
        std::fs::remove_dir_all(blocker)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rand::SeedableRng;

    use super::*;

    /// Goal: each fault does to the files what it says: lost removes the dir, a rollback
    /// restores the snapshot's content, a torn ceiling differs from the original, failing
    /// writes make creating the temporary file fail until healed.
    #[test]
    fn faults_do_what_they_say_to_the_files() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("w1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(CEILING), b"v1 100 0 deadbeef\n").unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        snapshot(&dir).unwrap();
        std::fs::write(dir.join(CEILING), b"v1 200 0 deadbeef\n").unwrap();
        apply(DeadDiskFault::RolledBack, &dir, &mut rng).unwrap();
        assert_eq!(std::fs::read(dir.join(CEILING)).unwrap(), b"v1 100 0 deadbeef\n");
        apply(DeadDiskFault::TornCeiling, &dir, &mut rng).unwrap();
        assert_ne!(std::fs::read(dir.join(CEILING)).unwrap(), b"v1 100 0 deadbeef\n");
        fail_writes(&dir).unwrap();
        assert!(std::fs::File::create(dir.join(CEILING_TMP)).is_err());
        heal_writes(&dir).unwrap();
        assert!(std::fs::File::create(dir.join(CEILING_TMP)).is_ok());
        apply(DeadDiskFault::Lost, &dir, &mut rng).unwrap();
        assert!(!dir.exists());
    }
}
