//! Snapshot files: [`SnapshotData`] (what openraft reads, sends and receives a snapshot as),
//! and writing, checking and decoding a snapshot file with the length and CRC32 the data dir
//! records for it. A sled value carries a checksum of its own; a plain file does not, so a
//! flipped bit or an edited file would otherwise be sent to followers and installed as state.
//!
//! Every function here that touches the disk blocks: [`blocking`] runs it off the async
//! workers (on two cores, an fsync there delays heartbeats).

use std::fs::File;
use std::io::{BufReader, BufWriter, Cursor, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

use super::codec::{self, CodecError};
use super::state_machine::SmState;
use crate::lease::Rules;

/// Write buffer of a snapshot file: few, large writes, not one per JSON token.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// A snapshot's bytes as openraft reads, sends and receives them.
#[derive(Debug)]
pub enum SnapshotData {
    /// On a memory disk.
    Memory(Cursor<Vec<u8>>),
    /// A kept snapshot's file, open from its start.
    File(tokio::fs::File),
    /// A snapshot being received into `path`, removed if openraft drops it before it is kept.
    Receiving { file: tokio::fs::File, path: Unkept },
}

impl SnapshotData {
    fn pinned(self: Pin<&mut Self>) -> Pin<&mut (dyn AsyncReadWriteSeek + Unpin + '_)> {
        let inner: &mut (dyn AsyncReadWriteSeek + Unpin) = match self.get_mut() {
            SnapshotData::Memory(cursor) => cursor,
            SnapshotData::File(file) | SnapshotData::Receiving { file, .. } => file,
        };
        Pin::new(inner)
    }
}

/// The three traits openraft needs of snapshot data, as one object type to delegate to.
trait AsyncReadWriteSeek: AsyncRead + AsyncWrite + AsyncSeek {}
impl<T: AsyncRead + AsyncWrite + AsyncSeek> AsyncReadWriteSeek for T {}

impl AsyncRead for SnapshotData {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        self.pinned().poll_read(cx, buf)
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.pinned().poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.pinned().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.pinned().poll_shutdown(cx)
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> std::io::Result<()> {
        self.pinned().start_seek(position)
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<u64>> {
        self.pinned().poll_complete(cx)
    }
}

/// A file that is removed when this is dropped, unless [`Unkept::keep`] took it: a receive
/// openraft abandoned (the leader moved on, the install failed) leaves nothing behind.
#[derive(Debug)]
pub struct Unkept(Option<PathBuf>);

impl Unkept {
    pub fn new(path: PathBuf) -> Unkept {
        Unkept(Some(path))
    }

    pub fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    /// The file stays; its path.
    pub fn keep(mut self) -> PathBuf {
        self.0.take().unwrap_or_default()
    }
}

impl Drop for Unkept {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            if let Err(error) = std::fs::remove_file(&path) {
                tracing::warn!(file = %path.display(), %error, "could not remove an abandoned snapshot receive (it is removed at the next start)");
            }
        }
    }
}

/// A snapshot file's length and CRC32, recorded when it is written and checked when it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checksum {
    pub bytes: u64,
    pub crc32: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot {op} snapshot file {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error("snapshot file {path} does not decode: {source}")]
    Decode { path: PathBuf, source: CodecError },
    #[error("snapshot file {path} is corrupt: {found_bytes} bytes with CRC32 {found_crc:08x}, but the data dir recorded {bytes} bytes with CRC32 {crc32:08x} (a disk fault, or the file was edited)", bytes = .recorded.bytes, crc32 = .recorded.crc32)]
    Corrupt { path: PathBuf, found_bytes: u64, found_crc: u32, recorded: Checksum },
    #[error("a blocking snapshot file task failed: {0}")]
    Task(String),
}

impl FileError {
    fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FileError + 'a {
        move |source| FileError::Io { op, path: path.to_path_buf(), source }
    }

    /// Whether the error is a file that is not there.
    pub fn is_not_found(&self) -> bool {
        matches!(self, FileError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// Run `work`, which blocks on the disk, off the async workers.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, FileError> + Send + 'static,
) -> Result<T, FileError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| FileError::Task(e.to_string()))?
}

/// Counts and checksums what passes through, in either direction.
struct Summing<T> {
    inner: T,
    hasher: crc32fast::Hasher,
    bytes: u64,
}

impl<T> Summing<T> {
    fn new(inner: T) -> Summing<T> {
        Summing { inner, hasher: crc32fast::Hasher::new(), bytes: 0 }
    }

    fn note(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.bytes += data.len() as u64;
    }

    fn checksum(self) -> (T, Checksum) {
        (self.inner, Checksum { bytes: self.bytes, crc32: self.hasher.finalize() })
    }
}

impl<W: Write> Write for Summing<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(data)?;
        self.note(&data[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Summing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.note(&buf[..read]);
        Ok(read)
    }
}

/// fsync a directory, so that a rename or removal in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<(), FileError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(FileError::io("fsync the directory of", dir))
}

/// Encode the applied state as a snapshot's data into `out`. Once raised apply rules are in
/// force, a node of an older release must not install it (it would ignore the raise and apply
/// later entries differently): the format byte says so.
pub fn write_state<W: Write>(out: W, state: &SmState) -> Result<(), CodecError> {
    codec::encode_into(out, state, state.table.rules_in_force(Rules::CURRENT) > Rules::UNGATED)
}

/// Write `state` into a new file `building`, fsync it, and rename it to `kept` (fsyncing the
/// directory): `kept` is whole or absent after a crash.
pub fn write_kept(state: &SmState, building: &Path, kept: &Path) -> Result<Checksum, FileError> {
    let file = File::create(building).map_err(FileError::io("create", building))?;
    let mut out = Summing::new(BufWriter::with_capacity(WRITE_BUFFER_BYTES, file));
    write_state(&mut out, state).map_err(|source| FileError::Decode { path: building.to_path_buf(), source })?;
    let (out, checksum) = out.checksum();
    let file = out.into_inner().map_err(|e| FileError::io("write", building)(e.into_error()))?;
    file.sync_all().map_err(FileError::io("fsync", building))?;
    rename_durably(building, kept)?;
    Ok(checksum)
}

/// Write `data` (a snapshot an older release kept in sled) as file `kept`, like [`write_kept`].
pub fn write_bytes_kept(data: &[u8], building: &Path, kept: &Path) -> Result<Checksum, FileError> {
    let mut out = Summing::new(File::create(building).map_err(FileError::io("create", building))?);
    out.write_all(data).map_err(FileError::io("write", building))?;
    let (file, checksum) = out.checksum();
    file.sync_all().map_err(FileError::io("fsync", building))?;
    rename_durably(building, kept)?;
    Ok(checksum)
}

/// Rename `from` to `to` and fsync their directory.
pub fn rename_durably(from: &Path, to: &Path) -> Result<(), FileError> {
    std::fs::rename(from, to).map_err(FileError::io("rename into place", from))?;
    sync_dir(to.parent().unwrap_or(Path::new(".")))
}

/// Open the kept file `path` and check it against `recorded`; the file, rewound to its start.
pub fn open_checked(path: &Path, recorded: Checksum) -> Result<File, FileError> {
    let file = File::open(path).map_err(FileError::io("open", path))?;
    let mut summing = Summing::new(BufReader::new(file));
    std::io::copy(&mut summing, &mut std::io::sink()).map_err(FileError::io("read", path))?;
    let (reader, found) = summing.checksum();
    if found != recorded {
        return Err(FileError::Corrupt {
            path: path.to_path_buf(),
            found_bytes: found.bytes,
            found_crc: found.crc32,
            recorded,
        });
    }
    let mut file = reader.into_inner();
    file.seek(SeekFrom::Start(0)).map_err(FileError::io("rewind", path))?;
    Ok(file)
}

/// All of `file`, from its start (a snapshot file handed to a store that keeps it in memory).
pub fn read_all(file: &mut File) -> Result<Vec<u8>, FileError> {
    let path = Path::new("<received snapshot>");
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0)).map_err(FileError::io("rewind", path))?;
    file.read_to_end(&mut bytes).map_err(FileError::io("read", path))?;
    Ok(bytes)
}

/// fsync a received snapshot file and decode the state it holds, with its checksum.
pub fn read_received(mut file: File, path: &Path) -> Result<(SmState, Checksum), FileError> {
    file.sync_all().map_err(FileError::io("fsync", path))?;
    file.seek(SeekFrom::Start(0)).map_err(FileError::io("rewind", path))?;
    let mut summing = Summing::new(file);
    let state = codec::decode_from(BufReader::new(&mut summing))
        .map_err(|source| FileError::Decode { path: path.to_path_buf(), source })?;
    // serde_json reads to the end to refuse trailing bytes; whatever its buffer left is summed
    // here, so the checksum covers the whole file.
    std::io::copy(&mut summing, &mut std::io::sink()).map_err(FileError::io("read", path))?;
    Ok((state, summing.checksum().1))
}
