//! Writing certificate material: the directory (0700 when created), public PEM files (0644)
//! and private keys (0600), never over an existing file unless `--force` is given.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// Mode of certificates (public).
pub const CERT_MODE: u32 = 0o644;
/// Mode of private keys: readable by their owner only.
pub const KEY_MODE: u32 = 0o600;
/// Mode of a certificate directory that `certs init` creates.
pub const DIR_MODE: u32 = 0o700;

/// One file to write: where, what, and with which mode.
pub struct Output {
    pub path: PathBuf,
    pub contents: String,
    pub mode: u32,
}

/// Creates `dir` (and its parents) with mode 0700 if it does not exist; leaves an existing
/// directory as it is.
pub fn ensure_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .with_context(|| format!("cannot create the certificate directory {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
        .with_context(|| format!("cannot set mode 0700 on {}", dir.display()))
}

/// Fails, naming the first of `paths` that exists, unless `force`: run before anything is
/// generated, so a refusal leaves every file as it was.
pub fn refuse_existing(paths: &[&Path], force: bool) -> anyhow::Result<()> {
    if force {
        return Ok(());
    }
    if let Some(existing) = paths.iter().find(|p| p.symlink_metadata().is_ok()) {
        bail!("{} already exists: pass --force to overwrite it", existing.display());
    }
    Ok(())
}

/// Writes every output: each to a temporary file in its directory, given its mode, synced,
/// then renamed into place (without `force`, a file that appeared meanwhile is not replaced).
pub fn write_all(outputs: &[Output], force: bool) -> anyhow::Result<()> {
    for output in outputs {
        write_one(output, force)?;
    }
    Ok(())
}

fn write_one(output: &Output, force: bool) -> anyhow::Result<()> {
    let path = &output.path;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".fenceflake-certs-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    // Mode first, so a private key is never readable by others, even for a moment.
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(output.mode))
        .with_context(|| format!("cannot set the mode of a temporary file in {}", dir.display()))?;
    tmp.write_all(output.contents.as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    if force {
        tmp.persist(path).map_err(|e| e.error).with_context(|| format!("cannot write {}", path.display()))?;
    } else {
        tmp.persist_noclobber(path).map_err(|e| e.error).with_context(|| {
            format!("cannot write {} (if it already exists: pass --force to overwrite it)", path.display())
        })?;
    }
    Ok(())
}

/// Reads a PEM file, naming it (and what to run) if it is missing.
pub fn read_pem(path: &Path) -> anyhow::Result<String> {
    fs::read_to_string(path).with_context(|| {
        format!("cannot read {} (make a CA first with `fenceflake certs init --dir DIR`)", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// Goal: keys are written 0600, certificates 0644, a created directory 0700.
    #[test]
    fn files_get_their_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/certs");
        ensure_dir(&dir).unwrap();
        assert_eq!(mode_of(&dir), DIR_MODE);
        let key = Output { path: dir.join("x.key"), contents: "k".into(), mode: KEY_MODE };
        let cert = Output { path: dir.join("x.pem"), contents: "c".into(), mode: CERT_MODE };
        write_all(&[key, cert], false).unwrap();
        assert_eq!(mode_of(&dir.join("x.key")), 0o600);
        assert_eq!(mode_of(&dir.join("x.pem")), 0o644);
        assert_eq!(fs::read_to_string(dir.join("x.key")).unwrap(), "k");
        let leftovers = fs::read_dir(&dir).unwrap().count();
        assert_eq!(leftovers, 2, "no temporary file is left behind");
    }

    /// Goal: an existing file is refused, named, and left untouched without --force, and
    /// replaced (with its mode) with it.
    #[test]
    fn existing_files_need_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.key");
        fs::write(&path, "old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = refuse_existing(&[&dir.path().join("ca.pem"), &path], false).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()) && err.contains("--force"), "{err}");
        let output = Output { path: path.clone(), contents: "new".into(), mode: KEY_MODE };
        let err = write_all(std::slice::from_ref(&output), false).unwrap_err();
        assert!(format!("{err:#}").contains("--force"), "{err:#}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "old");
        refuse_existing(&[&path], true).unwrap();
        write_all(&[output], true).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(mode_of(&path), 0o600);
    }
}
