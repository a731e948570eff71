//! Taking a base backup into `postgres_<TS>.base.tar.zst`, one of two ways;
//! both give the same artifact (a plain tar, zstd level 3, holding the data
//! directory, the WAL that makes it consistent and PostgreSQL's
//! `backup_manifest`) and check every file against that manifest before the
//! artifact is kept.
//!
//! * **Compressed by the server** (PostgreSQL 15 and later, itbackup on the
//!   server's host): `pg_basebackup -D <work> --compress=server-zstd:level=3`.
//!   The server compresses as it reads, as pgBackRest does on the database
//!   host, so the network and pg_basebackup carry a twentieth of the bytes
//!   and itbackup only decompresses to check. pg_basebackup cannot put its
//!   manifest into a tar the server compressed when writing to standard
//!   output, so it writes `base.tar.zst` and `backup_manifest` into a work
//!   directory beside the artifact; the artifact is then the manifest (a
//!   zstd frame of its own, first, so that the tar keeps one end marker) and
//!   the server's frames as they are. The compressed backup is on disk twice
//!   while it is copied.
//! * **Compressed here** (older servers, compose mode, where the work
//!   directory would be inside the container): `pg_basebackup -D -` streams
//!   the tar, with the manifest injected at its end, through itbackup, which
//!   compresses it on a thread of its own beside the reading and checking.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use super::basetar::{self, BaseSummary, FileChecksum};
use super::SVC;
use crate::artifact::{self, Artifacts, PendingArtifact};
use crate::error::{io_error, Error, Result};
use crate::process::ToolCommand;

/// The zstd level of every base backup (pgBackRest's default is 3 too).
pub(super) const ZSTD_LEVEL: i32 = 3;
/// The file pg_basebackup writes the server's compressed tar to.
const SERVER_TAR: &str = "base.tar.zst";
const MANIFEST: &str = "backup_manifest";
/// The largest `backup_manifest` read into memory (see basetar).
const MAX_MANIFEST_BYTES: u64 = 1 << 30;

/// Where the tar is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Compression {
    Server,
    Client,
}

impl Compression {
    /// pg_basebackup's `--pgdata` and `--compress` for this way.
    pub(super) fn arguments(self, work: &Path) -> Vec<String> {
        match self {
            Compression::Server => vec![
                format!("--pgdata={}", work.display()),
                format!("--compress=server-zstd:level={ZSTD_LEVEL}"),
            ],
            Compression::Client => vec!["--pgdata=-".into()],
        }
    }
}

/// Copies what is read through it into `copy` (the artifact), so that one
/// pass both stores the stream and parses it.
struct Tee<'a, R, W> {
    inner: R,
    copy: &'a mut W,
}

impl<R: Read, W: Write> Read for Tee<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// `pg_basebackup -D -`: the tar through a tee into zstd, parsed as it passes.
pub(super) fn streamed(
    cmd: &ToolCommand,
    artifacts: &Artifacts,
    file: &str,
    algorithm: FileChecksum,
) -> Result<(PendingArtifact, BaseSummary)> {
    let step = "backup (pg_basebackup)";
    let (_, taken) = crate::process::run_reading_output(cmd, SVC, step, |stdout| {
        let out = artifacts.create(file)?;
        let mut encoder =
            zstd::Encoder::new(BufWriter::with_capacity(artifact::CHUNK, out), ZSTD_LEVEL)?;
        // Compression on a thread of its own, beside the reading and
        // hashing of the stream: a base backup is bound by one core
        // otherwise.
        encoder.multithread(1)?;
        // Buffered above the tee: the compressor gets whole pipe reads,
        // not the tar reader's small ones.
        let mut tee = io::BufReader::with_capacity(
            artifact::CHUNK,
            Tee {
                inner: stdout,
                copy: &mut encoder,
            },
        );
        let summary = basetar::read(&mut tee, None, algorithm)?;
        // The tar's end blocks, and anything after them.
        io::copy(&mut tee, &mut io::sink())?;
        let out = encoder.finish()?.into_inner().map_err(|e| e.into_error())?;
        Ok((out.finish()?, summary))
    })
    .map_err(|e| e.hint(HINT))?;
    Ok(taken)
}

/// `pg_basebackup -D <work> --compress=server-zstd`, then the artifact from
/// what it wrote (see the module doc), checked as it is copied. `work` is
/// created here and always removed.
pub(super) fn compressed_by_server(
    cmd: &ToolCommand,
    artifacts: &Artifacts,
    file: &str,
    work: &Path,
    algorithm: FileChecksum,
) -> Result<(PendingArtifact, BaseSummary)> {
    let step = "backup (pg_basebackup)";
    artifact::create_private_dir(work).map_err(|e| io_error(Some(SVC), step, work.display(), e))?;
    let taken = crate::process::output(cmd, SVC, step)
        .map_err(|e| e.hint(HINT))
        .and_then(|_| assemble(artifacts, file, work, algorithm));
    let _ = fs::remove_dir_all(work);
    taken
}

/// The artifact from the work directory: the manifest's frame, then the
/// server's, read once to be both copied and checked.
fn assemble(
    artifacts: &Artifacts,
    file: &str,
    work: &Path,
    algorithm: FileChecksum,
) -> Result<(PendingArtifact, BaseSummary)> {
    let step = "check base backup";
    let fail = |e: io::Error| io_error(Some(SVC), step, work.display(), e);
    let mut names: Vec<String> = fs::read_dir(work)
        .map_err(fail)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    if names != [MANIFEST, SERVER_TAR] {
        return Err(Error::failure(
            step,
            format!(
                "pg_basebackup wrote {} into {}; itbackup expects {MANIFEST} and {SERVER_TAR} only (a cluster with tablespaces writes one tar for each, which a base backup of itbackup cannot hold yet)",
                names.join(", "),
                work.display()
            ),
        )
        .service(SVC));
    }
    let manifest_frame = manifest_frame(&work.join(MANIFEST)).map_err(fail)?;
    let server_tar = File::open(work.join(SERVER_TAR)).map_err(fail)?;
    let copy = || -> io::Result<(PendingArtifact, BaseSummary)> {
        let mut out = BufWriter::with_capacity(artifact::CHUNK, artifacts.create(file)?);
        out.write_all(&manifest_frame)?;
        let tee = Tee {
            inner: server_tar,
            copy: &mut out,
        };
        // Both frames decoded as one stream: the manifest entry, then the
        // server's tar up to its end marker.
        let mut decoder = zstd::Decoder::new(io::Cursor::new(&manifest_frame).chain(tee))?;
        let summary = basetar::read(&mut decoder, None, algorithm)?;
        io::copy(&mut decoder, &mut io::sink())?;
        // Whatever the decoder read ahead and did not decode went through
        // the tee already; anything after it is copied too, so that the
        // artifact holds the server's file whole.
        let mut rest = decoder.finish();
        io::copy(&mut rest, &mut io::sink())?;
        drop(rest);
        let out = out.into_inner().map_err(|e| e.into_error())?;
        Ok((out.finish()?, summary))
    };
    copy().map_err(|e| {
        Error::damaged(step, format!("{}: {e}", work.join(SERVER_TAR).display()))
            .service(SVC)
            .hint("the base backup pg_basebackup wrote does not match its own manifest; nothing was kept")
    })
}

/// `backup_manifest` as the first entry of the tar, in a zstd frame of its
/// own: a tar header, the file, padding to the next 512-byte block (no end
/// marker: the server's tar ends the archive).
fn manifest_frame(path: &Path) -> io::Result<Vec<u8>> {
    let mut manifest = Vec::new();
    artifact::open_regular(path)?
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut manifest)?;
    if manifest.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "backup_manifest is larger than 1 GiB",
        ));
    }
    let mut header = tar::Header::new_ustar();
    header.set_path(MANIFEST)?;
    header.set_size(manifest.len() as u64);
    header.set_mode(0o600);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mtime(jiff::Timestamp::now().as_second().max(0) as u64);
    header.set_cksum();
    let padding = (512 - manifest.len() % 512) % 512;
    let mut frame = zstd::Encoder::new(Vec::new(), ZSTD_LEVEL)?;
    frame.write_all(header.as_bytes())?;
    frame.write_all(&manifest)?;
    frame.write_all(&vec![0; padding])?;
    frame.finish()
}

const HINT: &str = "pg_basebackup needs replication access (a `replication` line in pg_hba.conf for this user, max_wal_senders > 0); on a busy server whose backup takes long, raise wal_keep_size so the WAL written meanwhile is still there at the end";
