//! Small state files that must survive crashes: replaced atomically and durably, read with a
//! size bound. Shared by the ceiling and the holder identity in the state directory.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// A failed step of [`replace`], with the path it failed on.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct DurableWriteError {
    pub path: PathBuf,
    pub source: io::Error,
}

/// Write `bytes` to `dir/tmp_name`, fsync it, rename it over `dir/name`, fsync the directory:
/// a crash at any point leaves either the old or the new content, never a torn one, and a
/// returned `Ok` survives power loss. A leftover `tmp_name` is never read by anyone.
pub fn replace(dir: &Path, name: &str, tmp_name: &str, bytes: &[u8]) -> Result<(), DurableWriteError> {
    let tmp = dir.join(tmp_name);
    let path = dir.join(name);
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DurableWriteError { path, source }
    };
    let mut file = File::create(&tmp).map_err(err(&tmp))?;
    file.write_all(bytes).map_err(err(&tmp))?;
    file.sync_all().map_err(err(&tmp))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(err(&path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(err(dir))?;
    Ok(())
}

/// The content of `path`, at most `max_bytes + 1` bytes of it (so an oversized file is seen as
/// such without reading it all), or `None` if it does not exist.
pub fn read_bounded(path: &Path, max_bytes: u64) -> io::Result<Option<Vec<u8>>> {
    let file = match File::open(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
        Ok(file) => file,
    };
    let mut bytes = Vec::new();
    file.take(max_bytes + 1).read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Goal: a replace is read back whole, a missing file is `None`, and reads stop one byte
    /// past the bound.
    #[test]
    fn replace_then_read_bounded() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_bounded(&dir.path().join("f"), 10).unwrap(), None);
        replace(dir.path(), "f", "f.tmp", b"hello").unwrap();
        assert_eq!(read_bounded(&dir.path().join("f"), 10).unwrap().as_deref(), Some(&b"hello"[..]));
        assert_eq!(read_bounded(&dir.path().join("f"), 2).unwrap().map(|b| b.len()), Some(3));
        assert!(!dir.path().join("f.tmp").exists());
        let err = replace(&dir.path().join("missing"), "f", "f.tmp", b"x").unwrap_err();
        assert!(err.path.ends_with("missing/f.tmp"), "{err}");
    }
}
