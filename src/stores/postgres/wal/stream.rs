//! Bytes in and out of the archive, streamed in fixed-size chunks: a segment
//! is read once, hashed, compressed with zstd (with its frame checksum) and,
//! with recipients, sealed with age, straight into an owner-only `*.partial`
//! file that is hashed as it is written ([`ArtifactWriter`]). Fetching runs
//! the other way and hands PostgreSQL a file only when both checksums of the
//! record have been reproduced: a damaged stored file never reaches `pg_wal`.
//!
//! Memory stays a few chunks whatever the segment size (16 MiB by default,
//! up to 1 GiB with `initdb --wal-segsize`).

use std::io::{self, Read, Write};
use std::path::Path;

use super::record::WalRecord;
use crate::artifact::{self, ArtifactWriter, Digest256, HashingReader, PendingArtifact, CHUNK};
use crate::error::{io_error, io_kind, Error, Kind, Result};
use crate::seal::{self, Identities, OpenError, Recipients};
use crate::service::Service;

const SVC: Service = Service::Postgres;

/// zstd level of stored segments: the artifacts' level, which compresses
/// WAL several times faster than PostgreSQL writes it on this kind of host.
const ZSTD_LEVEL: i32 = 3;

/// Where a stored file is written: in the clear, or through age.
enum Sink {
    Plain(ArtifactWriter),
    Sealed(age::stream::StreamWriter<io::BufWriter<ArtifactWriter>>),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Plain(w) => w.write(buf),
            Sink::Sealed(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Plain(w) => w.flush(),
            Sink::Sealed(w) => w.flush(),
        }
    }
}

impl Sink {
    fn finish(self) -> io::Result<PendingArtifact> {
        match self {
            Sink::Plain(w) => w.finish(),
            Sink::Sealed(w) => w
                .finish()?
                .into_inner()
                .map_err(|e| e.into_error())?
                .finish(),
        }
    }
}

/// Which side of a copy failed: the reader (a damaged stored file, a source
/// that vanished) or the writer (a full disk).
enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Copy everything `from` holds into `to` in [`CHUNK`]s.
fn copy_chunked(from: &mut impl Read, to: &mut impl Write) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        to.write_all(&buf[..n]).map_err(CopyError::Write)?;
        total += n as u64;
    }
}

/// Compress (and seal) the file `source` into `dir/<stored_name>.partial`;
/// returns the pending stored file and the digest of what was read.
pub fn store(
    source: &Path,
    dir: &Path,
    stored_name: &str,
    recipients: Option<&Recipients>,
) -> Result<(PendingArtifact, Digest256)> {
    let step = "archive WAL";
    let input = artifact::open_regular(source).map_err(|e| source_error(source, e))?;
    let mut reader = HashingReader::new(input);
    let writer = ArtifactWriter::create(dir, stored_name)
        .map_err(|e| io_error(Some(SVC), step, dir.join(stored_name).display(), e))?;
    let written_to = dir.join(stored_name);
    let disk = |e: io::Error| io_error(Some(SVC), step, written_to.display(), e);
    let sink = match recipients {
        None => Sink::Plain(writer),
        Some(recipients) => Sink::Sealed(
            seal::encrypt_to(recipients, io::BufWriter::with_capacity(CHUNK, writer))
                .map_err(disk)?,
        ),
    };
    let mut encoder =
        zstd::Encoder::new(io::BufWriter::with_capacity(CHUNK, sink), ZSTD_LEVEL).map_err(disk)?;
    encoder.include_checksum(true).map_err(disk)?;
    match copy_chunked(&mut reader, &mut encoder) {
        Ok(_) => {}
        Err(CopyError::Read(e)) => return Err(source_error(source, e)),
        Err(CopyError::Write(e)) => return Err(disk(e)),
    }
    let pending = encoder
        .finish()
        .and_then(|buffered| buffered.into_inner().map_err(|e| e.into_error()))
        .and_then(Sink::finish)
        .map_err(disk)?;
    Ok((pending, reader.digest()))
}

/// The digest of the file PostgreSQL hands over (to compare with a record).
pub fn digest_source(source: &Path) -> Result<Digest256> {
    artifact::digest_file(source).map_err(|e| source_error(source, e))
}

fn source_error(source: &Path, e: io::Error) -> Error {
    let mut err = io_error(Some(SVC), "read WAL file", source.display(), e);
    if err.kind == Kind::DamagedBackup {
        // Refused for its type (a link, a FIFO): not a backup's damage.
        err.kind = Kind::Usage;
    }
    err.hint(
        "archive_command must pass %p (the path PostgreSQL gives, relative to its data directory)",
    )
}

/// Check the stored file `stored` against `record`, then decompress (and
/// open) it into `dest`, which appears only once the plaintext matched too.
pub fn unpack(
    stored: &Path,
    record: &WalRecord,
    identities: Option<&Identities>,
    dest: &Path,
) -> Result<()> {
    check_stored(stored, record)?;
    let step = "fetch WAL";
    let (dir, file_name) = split_dest(dest)?;
    let input = artifact::open_buffered(stored)
        .map_err(|e| io_error(Some(SVC), step, stored.display(), e))?;
    let mut writer = ArtifactWriter::create(dir, file_name)
        .map_err(|e| io_error(Some(SVC), step, dest.display(), e))?;
    let copied =
        match (&record.encryption, identities) {
            (None, _) => zstd::Decoder::with_buffer(input)
                .map_err(CopyError::Read)
                .and_then(|mut d| copy_chunked(&mut d, &mut writer)),
            (Some(_), None) => return Err(Error::new(
                Kind::Usage,
                step,
                format!("{} is encrypted (age)", record.file),
            )
            .service(SVC)
            .hint(
                "give the private key with --identity FILE or IT_AGE_IDENTITY (in restore_command)",
            )),
            (Some(encryption), Some(identities)) => {
                let opened = seal::decrypt_with(identities, input)
                    .map_err(|e| open_error(e, record, &encryption.recipients, identities))?;
                zstd::Decoder::new(opened)
                    .map_err(CopyError::Read)
                    .and_then(|mut d| copy_chunked(&mut d, &mut writer))
            }
        };
    match copied {
        Ok(_) => {}
        Err(CopyError::Read(e)) => return Err(damaged(record, &e.to_string())),
        Err(CopyError::Write(e)) => return Err(io_error(Some(SVC), step, dest.display(), e)),
    }
    let pending = writer
        .finish()
        .map_err(|e| io_error(Some(SVC), step, dest.display(), e))?;
    if pending.digest != record.plaintext() {
        pending.discard();
        return Err(damaged(
            record,
            "what it decompresses to does not match the checksum of the file PostgreSQL archived",
        ));
    }
    pending
        .commit()
        .map_err(|e| io_error(Some(SVC), step, dest.display(), e))
}

/// Re-hash the stored file: its size and SHA-256 must be the record's.
pub fn check_stored(stored: &Path, record: &WalRecord) -> Result<()> {
    let step = "check WAL";
    let found = artifact::open_sized(stored, record.file_bytes, false)
        .and_then(artifact::digest_reader)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::damaged(
                step,
                format!(
                    "{} is missing though its record says it was archived",
                    stored.display()
                ),
            )
            .service(SVC)
            .hint("the archive lost this file: take a new base backup (the WAL chain has a gap)"),
            _ if io_kind(&e) == Kind::DamagedBackup => damaged(record, &e.to_string()),
            _ => io_error(Some(SVC), step, stored.display(), e),
        })?;
    if found != record.stored() {
        return Err(damaged(record, "its SHA-256 does not match its record"));
    }
    Ok(())
}

fn damaged(record: &WalRecord, why: &str) -> Error {
    Error::damaged("check WAL", format!("the archived {} is damaged: {why}", record.file))
        .service(SVC)
        .hint("it was not handed to PostgreSQL; the WAL chain is broken at this segment: recover to a point before it, or take a new base backup")
}

/// A sealed file that does not open: not an age file (damaged), or sealed
/// to other keys than the identity's.
fn open_error(e: OpenError, record: &WalRecord, recipients: &[String], ids: &Identities) -> Error {
    match e {
        OpenError::NotAge(e) => damaged(record, &format!("not a readable age file: {e}")),
        OpenError::WrongKey(e) => {
            Error::authentication("fetch WAL", format!("cannot open {}: {e}", record.file))
                .service(SVC)
                .hint(format!(
                    "{} is not one of the keys it was sealed to ({})",
                    ids.source().display(),
                    recipients.join(", ")
                ))
        }
    }
}

/// The directory and file name of `dest` (PostgreSQL's `%p`, such as
/// `pg_wal/RECOVERYXLOG`, relative to its data directory).
fn split_dest(dest: &Path) -> Result<(&Path, &str)> {
    let name = dest.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        Error::usage(format!(
            "'{}' is not a file path to fetch into",
            dest.display()
        ))
        .hint("give restore_command '… wal fetch --root DIR %f %p'")
    })?;
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((dir, name))
}
