//! The **physical** method: a base backup of the whole cluster through the
//! replication protocol, `pg_basebackup -D - -Ft -X fetch`, streamed through
//! itbackup (checked file by file against PostgreSQL's own manifest as it
//! flows, see [`basetar`]) into `postgres_<TS>.base.tar.zst`. With the WAL
//! archived by `itbackup wal push`, such a backup is the starting point of a
//! point-in-time restore ([`pitr`], `restore --until`).
//!
//! Why this shape:
//! * `-D -` streams one tar to our stdin; nothing is staged on disk, so a
//!   backup of a large cluster needs the artifact's space only.
//! * `-X fetch` puts the WAL written during the backup into the same stream,
//!   so the artifact alone is consistent (restorable without any archive).
//!   The server must keep that WAL until the end: on a busy cluster whose
//!   backup takes hours, set `wal_keep_size` (or archive, which keeps
//!   segments until archived) — pg_basebackup otherwise fails with
//!   "requested WAL segment … has already been removed", and says so.
//! * `--manifest-checksums=CRC32C`: every file's checksum, written by the
//!   server, checked here (CRC-32C, in hardware on both sides: SHA-256 of
//!   every file cost both processes a core's worth of time, and the
//!   artifact as a whole is SHA-256 anyway); the manifest records the
//!   SHA-256 of PostgreSQL's manifest.
//! * `--checkpoint=fast`: the backup starts now, not at the next checkpoint.

use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use super::{blocking, Postgres, SVC};
use crate::artifact::{self, ArtifactWriter, PendingArtifact};
use crate::error::{Error, Result};
use crate::manifest::ArtifactRecord;
use crate::stores::BackupContext;

pub mod basetar;
mod datadir;
pub mod lsn;
mod pitr;
mod recovery;

use basetar::{BaseSummary, FileChecksum};

/// The per-file checksum new base backups are taken with.
const FILE_CHECKSUM: FileChecksum = FileChecksum::Crc32c;
pub use datadir::{interrupted, remove_unfinished_copy};
pub use pitr::{PreparedPitr, RecoveryTarget};

/// What the manifest records of a base backup (`details.physical`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PhysicalDetails {
    pub system_identifier: String,
    pub timeline: u32,
    pub start_lsn: String,
    pub stop_lsn: String,
    /// When pg_basebackup ended: the backup is consistent at the latest then,
    /// so any recovery target from this moment on can start from it.
    pub consistent_at: String,
    pub start_time: String,
    pub wal_segment_bytes: u64,
    /// Regular files of the data directory, and their total size (the space a restore needs).
    pub files: u64,
    pub data_bytes: u64,
    /// SHA-256 of the `backup_manifest` in the stream, which lists every file's.
    pub backup_manifest_sha256: String,
    /// The checksum of every file in that manifest (`CRC32C`; the first
    /// physical backups, which name none, used `SHA256`).
    #[serde(default)]
    pub file_checksums: FileChecksum,
}

impl PhysicalDetails {
    pub fn of(record: &ArtifactRecord) -> Result<PhysicalDetails> {
        let value = record.details.get("physical").cloned().ok_or_else(|| {
            Error::damaged(
                "read manifest",
                "the physical backup's record has no details.physical",
            )
            .service(SVC)
        })?;
        serde_json::from_value(value).map_err(|e| {
            Error::damaged(
                "read manifest",
                format!("the physical backup's details.physical do not parse: {e}"),
            )
            .service(SVC)
        })
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

impl Postgres {
    fn basebackup_command(&self, label: &str) -> crate::process::ToolCommand {
        self.tool("pg_basebackup")
            .args([
                "--pgdata=-",
                "--format=tar",
                "--wal-method=fetch",
                "--checkpoint=fast",
                "--no-password",
            ])
            .arg(format!("--manifest-checksums={}", FILE_CHECKSUM.name()))
            .arg(format!("--label={label}"))
    }

    pub(super) fn plan_physical_backup(&self, ctx: &BackupContext<'_>) -> Vec<String> {
        vec![
            format!(
                "{} | zstd > postgres_{}.base.tar.zst (every file checked against the stream's backup_manifest as it passes)",
                self.basebackup_command(&format!("itbackup {}", ctx.timestamp)),
                ctx.timestamp
            ),
        ]
    }

    pub(super) async fn backup_physical(
        &self,
        ctx: &BackupContext<'_>,
        record: &mut ArtifactRecord,
    ) -> Result<PendingArtifact> {
        let client = self.connect("postgres", "connect").await?;
        let row = client
            .query_one(
                "SELECT system_identifier::text, current_setting('wal_segment_size')::text FROM pg_control_system()",
                &[],
            )
            .await
            .map_err(|e| Self::query_error("read the cluster's identity", e))?;
        let system_identifier: String = row.get(0);
        let segment_setting: String = row.get(1);
        drop(client);
        let wal_segment_bytes = parse_size(&segment_setting).ok_or_else(|| {
            Error::failure(
                "read the cluster's identity",
                format!("cannot read wal_segment_size '{segment_setting}'"),
            )
            .service(SVC)
        })?;
        let file = format!("postgres_{}.base.tar.zst", ctx.timestamp);
        let cmd = self.basebackup_command(&format!("itbackup {}", ctx.timestamp));
        let dir = ctx.dir.to_path_buf();
        let (pending, summary) = blocking(move || {
            let step = "backup (pg_basebackup)";
            let (_, written) = crate::process::run_reading_output(&cmd, SVC, step, |stdout| {
                let out = ArtifactWriter::create(&dir, &file)?;
                let mut encoder =
                    zstd::Encoder::new(BufWriter::with_capacity(artifact::CHUNK, out), 3)?;
                // Compression on a thread of its own, beside the reading and
                // hashing of the stream: a base backup is bound by one core
                // otherwise.
                encoder.multithread(1)?;
                // Buffered above the tee: the compressor gets whole pipe
                // reads, not the tar reader's small ones.
                let mut tee = io::BufReader::with_capacity(
                    artifact::CHUNK,
                    Tee {
                        inner: stdout,
                        copy: &mut encoder,
                    },
                );
                let summary = basetar::read(&mut tee, None, FILE_CHECKSUM)?;
                // The tar's end blocks, and anything after them.
                io::copy(&mut tee, &mut io::sink())?;
                let out = encoder.finish()?.into_inner().map_err(|e| e.into_error())?;
                Ok((out.finish()?, summary))
            })
            .map_err(|e| e.hint("pg_basebackup needs replication access (a `replication` line in pg_hba.conf for this user, max_wal_senders > 0); on a busy server whose backup takes long, raise wal_keep_size so the WAL written meanwhile is still there at the end"))?;
            Ok(written)
        })
        .await?;
        let details = PhysicalDetails {
            system_identifier,
            timeline: summary.timeline,
            start_lsn: summary.start_lsn.to_string(),
            stop_lsn: summary.end_lsn.to_string(),
            consistent_at: jiff::Timestamp::now().to_string(),
            start_time: summary.start_time.clone(),
            wal_segment_bytes,
            files: summary.files,
            data_bytes: summary.data_bytes,
            backup_manifest_sha256: summary.manifest_sha256.clone(),
            file_checksums: FILE_CHECKSUM,
        };
        record.details.insert(
            "physical".into(),
            serde_json::to_value(&details).expect("plain data"),
        );
        tracing::info!(
            files = summary.files,
            bytes = summary.data_bytes,
            start = %summary.start_lsn,
            stop = %summary.end_lsn,
            "postgres: base backup taken and checked against its backup_manifest"
        );
        Ok(pending)
    }

    /// Decode the artifact end to end: every file against the stream's
    /// backup_manifest, that manifest against the record.
    pub(super) async fn check_physical(&self, path: &Path, record: &ArtifactRecord) -> Result<()> {
        let details = PhysicalDetails::of(record)?;
        let path = path.to_path_buf();
        let algorithm = details.file_checksums;
        let summary = blocking(move || read_artifact(&path, None, algorithm)).await?;
        check_summary(&summary, &details)
    }
}

/// Read (and with `extract`, write out) a base backup artifact.
pub fn read_artifact(
    path: &Path,
    extract: Option<&basetar::Extract<'_>>,
    algorithm: FileChecksum,
) -> Result<BaseSummary> {
    let step = "check base backup";
    let reader = artifact::open_zstd(path)
        .map_err(|e| crate::error::io_error(Some(SVC), step, path.display(), e))?;
    basetar::read(reader, extract, algorithm).map_err(|e| {
        Error::damaged(step, format!("{}: {e}", path.display()))
            .service(SVC)
            .hint("the base backup is damaged or is not one itbackup took; use another backup")
    })
}

/// The stream is the one the manifest describes.
pub fn check_summary(summary: &BaseSummary, details: &PhysicalDetails) -> Result<()> {
    if summary.manifest_sha256 != details.backup_manifest_sha256
        || summary.start_lsn.to_string() != details.start_lsn
        || summary.end_lsn.to_string() != details.stop_lsn
        || summary.timeline != details.timeline
    {
        return Err(Error::mismatch(
            "check base backup",
            format!(
                "the base backup's own manifest (sha256 {}, WAL {}..{} on timeline {}) is not the one the backup's manifest records (sha256 {}, WAL {}..{} on timeline {})",
                summary.manifest_sha256, summary.start_lsn, summary.end_lsn, summary.timeline,
                details.backup_manifest_sha256, details.start_lsn, details.stop_lsn, details.timeline
            ),
        )
        .service(SVC));
    }
    Ok(())
}

/// `16MB` (SHOW wal_segment_size) in bytes.
fn parse_size(text: &str) -> Option<u64> {
    let digits: String = text.chars().take_while(|c| c.is_ascii_digit()).collect();
    let n: u64 = digits.parse().ok()?;
    let unit = match text[digits.len()..].trim() {
        "" | "B" => 1,
        "kB" => 1024,
        "MB" => 1024 * 1024,
        "GB" => 1024 * 1024 * 1024,
        _ => return None,
    };
    Some(n * unit)
}

#[cfg(test)]
mod tests {
    #[test]
    fn segment_sizes_are_read_as_postgresql_prints_them() {
        assert_eq!(super::parse_size("16MB"), Some(16 * 1024 * 1024));
        assert_eq!(super::parse_size("1GB"), Some(1024 * 1024 * 1024));
        assert_eq!(super::parse_size("16777216"), Some(16 * 1024 * 1024));
        assert_eq!(super::parse_size("lots"), None);
    }
}
