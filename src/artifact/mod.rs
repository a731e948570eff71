//! Artifact files: written as a stream through SHA-256 into `*.partial`, renamed only
//! when the whole backup set succeeded, and re-hashed before anything is restored.
//!
//! Nothing here holds an artifact in memory: data passes through in fixed-size
//! chunks, so memory does not grow with the size of a store.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{io_error, Error, Kind, NotRegular, Result, SizeMismatch};
use crate::service::Service;

mod source;
mod stream;

pub use source::{ArtifactSource, ObjectSource, SourceReader};
pub use stream::{Artifacts, StoredCopy, StreamTarget, StreamUpload};

/// Suffix of a file that is still being written; never taken for an artifact.
pub const PARTIAL_SUFFIX: &str = ".partial";

/// Size of the chunks data is copied in.
pub const CHUNK: usize = 256 * 1024;

/// Create `dir` and any missing parents, each readable by the owner only.
///
/// Only the components created here are made 0700: a directory that already
/// exists keeps its mode. The lock root is the parent of `--out`, often a
/// shared directory such as `/tmp` or a mount point; changing its mode would
/// lock every other user and service out of it.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_private_dir(parent)?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        // The umask may take bits away but never adds any; set the mode
        // exactly, on the directory made here and on nothing else.
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(0o700)),
        // Made by someone else in the meantime: theirs, left as it is.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether a directory that already existed lets others than its owner in;
/// created directories never do (see [`create_private_dir`]).
pub fn open_to_others(dir: &Path) -> bool {
    fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
}

/// Open a new file readable and writable by the owner only, replacing any old one.
pub fn create_private_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// Make a rename or a new file durable by syncing the directory that holds it.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Bytes an unprivileged writer may still use on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let stats = rustix::fs::statvfs(path)?;
    Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// What an artifact is, as far as bytes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest256 {
    pub sha256: String,
    pub bytes: u64,
}

/// A writer that hashes and counts what passes through it into a `*.partial`
/// file, or, for a backup streamed into a repository, into its upload
/// (see [`Artifacts`]): the digest is always of the bytes written here.
pub struct ArtifactWriter {
    out: Out,
    hasher: Sha256,
    bytes: u64,
    partial: PathBuf,
    target: PathBuf,
}

/// Where an artifact's bytes go.
enum Out {
    File(File),
    /// `None` once finished (or taken by `Drop`, which aborts it).
    Stream(Option<Box<dyn StreamUpload>>),
}

impl ArtifactWriter {
    /// Start writing `dir/name` (as `dir/name.partial`).
    pub fn create(dir: &Path, name: &str) -> io::Result<Self> {
        let target = dir.join(name);
        let partial = dir.join(format!("{name}{PARTIAL_SUFFIX}"));
        let file = create_private_file(&partial)?;
        Ok(ArtifactWriter {
            out: Out::File(file),
            hasher: Sha256::new(),
            bytes: 0,
            partial,
            target,
        })
    }

    /// Start an artifact that goes straight into `upload` (no local file).
    fn streamed(dir: &Path, name: &str, upload: Box<dyn StreamUpload>) -> Self {
        ArtifactWriter {
            out: Out::Stream(Some(upload)),
            hasher: Sha256::new(),
            bytes: 0,
            partial: PathBuf::new(),
            target: dir.join(name),
        }
    }

    /// Flush and fsync (or complete the upload); the artifact stays
    /// `*.partial` until [`PendingArtifact::commit`] (an uploaded one is under
    /// its name, and counts only once the manifest names it).
    pub fn finish(mut self) -> io::Result<PendingArtifact> {
        let stored = match &mut self.out {
            Out::File(file) => {
                file.flush()?;
                file.sync_all()?;
                None
            }
            Out::Stream(upload) => match upload.take() {
                Some(upload) => Some(upload.finish()?),
                None => return Err(io::Error::other("the upload was already finished")),
            },
        };
        // Taken out of the writer, the partial file outlives it (see Drop).
        Ok(PendingArtifact {
            partial: std::mem::take(&mut self.partial),
            target: std::mem::take(&mut self.target),
            digest: Digest256 {
                sha256: hex::encode(std::mem::take(&mut self.hasher).finalize()),
                bytes: self.bytes,
            },
            stored,
        })
    }
}

impl Drop for ArtifactWriter {
    /// A writer dropped before [`ArtifactWriter::finish`] failed half-way (a
    /// full disk, a failed producer): its partial file goes with it, rather
    /// than keep the space a retry needs; an upload is aborted (dropping it
    /// tells the uploader no end is coming).
    fn drop(&mut self) {
        if !self.partial.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.partial);
        }
    }
}

impl Write for ArtifactWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match &mut self.out {
            Out::File(file) => file.write(buf)?,
            Out::Stream(Some(upload)) => upload.write(buf)?,
            Out::Stream(None) => return Err(io::Error::other("the upload was finished")),
        };
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.out {
            Out::File(file) => file.flush(),
            // The upload sends whole parts: a flush has nothing to push early.
            Out::Stream(_) => Ok(()),
        }
    }
}

/// A small artifact written whole from memory (a JSON record): `dir/name`
/// as `*.partial`, synced, hashed; [`PendingArtifact::commit`] names it.
pub fn write_bytes(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<PendingArtifact> {
    let mut writer = ArtifactWriter::create(dir, name)?;
    writer.write_all(bytes)?;
    writer.finish()
}

/// A fully written, synced artifact that is not yet visible under its final
/// name; or one streamed into a repository (`stored`), which no manifest
/// names yet.
#[derive(Debug, Clone)]
pub struct PendingArtifact {
    pub partial: PathBuf,
    pub target: PathBuf,
    /// The bytes the store wrote (the plaintext of a sealed upload).
    pub digest: Digest256,
    /// Where a streamed artifact went, as stored (sealed or not).
    pub stored: Option<StoredCopy>,
}

impl PendingArtifact {
    pub fn file_name(&self) -> String {
        self.target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Give the artifact its final name (an uploaded one has it already).
    pub fn commit(&self) -> io::Result<()> {
        match self.stored {
            Some(_) => Ok(()),
            None => fs::rename(&self.partial, &self.target),
        }
    }

    /// Remove the unfinished file (best effort: it is debris either way). An
    /// uploaded artifact is removed from its repository by the backup.
    pub fn discard(&self) {
        if self.stored.is_none() {
            let _ = fs::remove_file(&self.partial);
        }
    }
}

/// Largest manifest read: a real one is a few KiB (a few MiB with thousands
/// of indices); anything larger is damaged or forged, and is refused before
/// it is read into memory.
pub const MAX_MANIFEST_BYTES: u64 = 16 * 1024 * 1024;

fn not_regular(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, NotRegular(message))
}

/// Open a file of a backup (an artifact, a manifest) for reading. It must be
/// a regular file under that very name: a symbolic link is refused (it may
/// lead anywhere, /dev/zero or a copy outside the backup), and so are FIFOs
/// and devices, which would block or never end. The open itself never
/// blocks: O_NONBLOCK keeps a FIFO without writer from hanging it (it has no
/// effect on the regular files that pass).
pub fn open_regular(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => not_regular("is a symbolic link, not a regular file".into()),
            _ => e,
        })?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "a special file"
        };
        return Err(not_regular(format!("is {what}, not a regular file")));
    }
    Ok(file)
}

/// Open a file of a backup like [`open_regular`], refusing it when its size
/// is not `expected` (or, with `at_most`, larger than that) before a byte is
/// read.
pub fn open_sized(path: &Path, expected: u64, at_most: bool) -> io::Result<File> {
    let file = open_regular(path)?;
    let len = file.metadata()?.len();
    if len == expected || (at_most && len <= expected) {
        return Ok(file);
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        SizeMismatch {
            found: len,
            expected,
            at_most,
        },
    ))
}

/// Read a small text file (a pid file, a label, a history file): a regular
/// file of at most `max` bytes, refused before it is read otherwise.
pub fn read_small_text(path: &Path, max: u64) -> io::Result<String> {
    let mut text = String::new();
    open_sized(path, max, true)?.read_to_string(&mut text)?;
    Ok(text)
}

/// Read a manifest's bytes: a regular file of at most [`MAX_MANIFEST_BYTES`].
pub fn read_manifest_bytes(path: &Path) -> io::Result<Vec<u8>> {
    let file = open_sized(path, MAX_MANIFEST_BYTES, true)?;
    let mut bytes = Vec::new();
    // Bounded again while reading: the file may grow after the check.
    file.take(MAX_MANIFEST_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            SizeMismatch {
                found: bytes.len() as u64,
                expected: MAX_MANIFEST_BYTES,
                at_most: true,
            },
        ));
    }
    Ok(bytes)
}

/// SHA-256 and length of a file of a backup, read in chunks (see [`open_regular`]).
pub fn digest_file(path: &Path) -> io::Result<Digest256> {
    digest_reader(open_regular(path)?)
}

/// SHA-256 and length of everything `file` holds.
pub fn digest_reader(file: File) -> io::Result<Digest256> {
    let mut reader = HashingReader::new(file);
    io::copy(&mut reader, &mut io::sink())?;
    Ok(reader.digest())
}

/// A reader that hashes and counts what is read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    pub fn digest(self) -> Digest256 {
        Digest256 {
            sha256: hex::encode(self.hasher.finalize()),
            bytes: self.bytes,
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Write chunks arriving on `rx` into `dir/name`, zstd-compressed and hashed.
/// Runs on a blocking thread; the producers stay async and never wait on disk.
pub fn write_zstd_stream(
    artifacts: &Artifacts,
    name: &str,
    mut rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
) -> io::Result<PendingArtifact> {
    let writer = artifacts.create(name)?;
    let mut encoder = zstd::Encoder::new(io::BufWriter::with_capacity(CHUNK, writer), 3)?;
    while let Some(chunk) = rx.blocking_recv() {
        if let Err(e) = encoder.write_all(&chunk) {
            rx.close();
            return Err(e);
        }
    }
    encoder
        .finish()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .finish()
}

/// The producer's end of [`export_zstd`]'s channel. A send fails only when
/// the writer has stopped; it says so, and marks the export so that the
/// writer's own error (a full disk, with its path and advice) is the one
/// answered, not this consequence of it.
pub struct ExportSender {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    service: crate::service::Service,
    writer_stopped: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl ExportSender {
    /// Queue `chunk` for the writer, waiting while the queue is full.
    pub async fn send(&self, chunk: Vec<u8>) -> crate::error::Result<()> {
        if self.tx.send(chunk).await.is_ok() {
            return Ok(());
        }
        self.writer_stopped
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Err(
            crate::error::Error::failure("write export", "the writer stopped")
                .service(self.service),
        )
    }
}

/// Stream what `produce` sends on its channel into `dir/name` through
/// [`write_zstd_stream`] (on a blocking thread). The artifact is kept only
/// when both the producer and the writer succeed; otherwise its partial file
/// is removed and the first failure answered: the writer's I/O error when
/// the producer failed because the writer had stopped, else the producer's.
/// At most `queue` chunks wait for the writer: the compression is usually
/// the slower side, so the queue runs full and its depth times the
/// producer's chunk size is memory held.
pub async fn export_zstd<F, Fut>(
    artifacts: &Artifacts,
    name: String,
    service: crate::service::Service,
    queue: usize,
    produce: F,
) -> crate::error::Result<PendingArtifact>
where
    F: FnOnce(ExportSender) -> Fut,
    Fut: std::future::Future<Output = crate::error::Result<()>>,
{
    use crate::error::{io_error, Error};
    let step = "write export";
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(queue);
    let writer_stopped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = ExportSender {
        tx,
        service,
        writer_stopped: writer_stopped.clone(),
    };
    let to = artifacts.clone();
    let dir = artifacts.dir();
    let file = dir.join(&name);
    let writer = tokio::task::spawn_blocking(move || write_zstd_stream(&to, &name, rx));
    // The producer owns the sender: when it is done, the writer sees the end.
    let exported = produce(sender).await;
    let written = writer
        .await
        .map_err(|e| Error::failure(step, e.to_string()).service(service))?;
    let disk_error = |e: io::Error| {
        let full = matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT));
        let mut err = io_error(Some(service), step, file.display(), e);
        // The partial file is gone by now: what is free is all the export
        // had to fit in, and it needs more.
        if let (true, Ok(free)) = (full, free_bytes(dir)) {
            err.message.push_str(&format!(
                "; the export needs more than the {} free there",
                crate::human::size(free)
            ));
        }
        err
    };
    match (exported, written) {
        (Ok(()), Ok(pending)) => Ok(pending),
        (Err(_), Err(e)) if writer_stopped.load(std::sync::atomic::Ordering::Relaxed) => {
            Err(disk_error(e))
        }
        (Err(e), written) => {
            if let Ok(pending) = written {
                pending.discard();
            }
            Err(e)
        }
        (Ok(()), Err(e)) => Err(disk_error(e)),
    }
}

/// Open a zstd-compressed artifact for buffered line reading.
pub fn open_zstd(path: &Path) -> io::Result<BufReader<zstd::Decoder<'static, BufReader<File>>>> {
    Ok(BufReader::with_capacity(
        CHUNK,
        zstd::Decoder::with_buffer(open_buffered(path)?)?,
    ))
}

/// Open a file of a backup (see [`open_regular`]) for buffered reading in large chunks.
pub fn open_buffered(path: &Path) -> io::Result<BufReader<File>> {
    Ok(BufReader::with_capacity(CHUNK, open_regular(path)?))
}

/// Fail with the full-disk advice unless the filesystem holding `dir` has
/// `needed` bytes free for `what` (checked before work that would otherwise
/// fill the disk half-way).
pub fn require_free_space(
    service: Option<Service>,
    step: &str,
    dir: &std::path::Path,
    needed: u64,
    what: &str,
) -> Result<()> {
    let free = free_bytes(dir).map_err(|e| io_error(service, step, dir.display(), e))?;
    if free >= needed {
        return Ok(());
    }
    let mut err = Error::new(
        Kind::NoSpace,
        step,
        format!(
            "{what} needs {} in {}, which has {} free",
            crate::human::size(needed),
            dir.display(),
            crate::human::size(free)
        ),
    )
    .hint("the disk is full: free space there, or use a bigger disk; nothing was changed");
    err.service = service;
    Err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_required_with_the_numbers_and_the_disk_advice() {
        let dir = tempfile::tempdir().unwrap();
        require_free_space(Some(Service::Postgres), "extract", dir.path(), 0, "nothing").unwrap();
        let err = require_free_space(
            Some(Service::Postgres),
            "extract",
            dir.path(),
            u64::MAX,
            "extracting the dumps",
        )
        .unwrap_err();
        assert!(
            err.message
                .starts_with("extracting the dumps needs 16777216.0 TiB in "),
            "{}",
            err.message
        );
        assert!(err.hint.unwrap().contains("the disk is full"));
        assert_eq!(err.service, Some(Service::Postgres));
        assert_eq!(err.kind, Kind::NoSpace);
    }

    #[test]
    fn writer_hashes_and_renames_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ArtifactWriter::create(dir.path(), "x_1.sql").unwrap();
        w.write_all(b"hello").unwrap();
        let pending = w.finish().unwrap();
        assert!(!dir.path().join("x_1.sql").exists());
        assert_eq!(
            pending.digest.sha256,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(pending.digest.bytes, 5);
        pending.commit().unwrap();
        let mode = fs::metadata(dir.path().join("x_1.sql"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            digest_file(&dir.path().join("x_1.sql")).unwrap(),
            pending.digest
        );
    }

    #[test]
    fn an_export_whose_writer_stops_answers_the_writers_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("gone");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        // The writer cannot even create its file; the producer keeps sending
        // until it finds the writer gone.
        let err = rt
            .block_on(export_zstd(
                &Artifacts::in_dir(&missing),
                "x_3.ndjson.zst".into(),
                crate::service::Service::Neo4j,
                1,
                |tx| async move {
                    loop {
                        tx.send(vec![b'x'; 1024]).await?;
                    }
                },
            ))
            .unwrap_err();
        assert_eq!(err.step, "write export");
        assert_eq!(err.service, Some(crate::service::Service::Neo4j));
        assert!(
            err.message.contains("x_3.ndjson.zst") && err.message.contains("No such file"),
            "{err}"
        );
        assert!(err.hint.is_some(), "{err}");
    }

    #[test]
    fn a_writer_dropped_unfinished_removes_its_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ArtifactWriter::create(dir.path(), "x_2.sql").unwrap();
        w.write_all(b"half").unwrap();
        let partial = dir.path().join("x_2.sql.partial");
        assert!(partial.exists());
        drop(w);
        assert!(
            !partial.exists(),
            "the partial file outlived a failed write"
        );
    }
}
