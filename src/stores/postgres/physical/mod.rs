//! The **physical** method: a base backup of the whole cluster through the
//! replication protocol, `pg_basebackup -Ft -X fetch`, compressed by the
//! server or by itbackup ([`take`]) and checked file by file against
//! PostgreSQL's own manifest ([`basetar`]) into `postgres_<TS>.base.tar.zst`. With the WAL
//! archived by `itbackup wal push`, such a backup is the starting point of a
//! point-in-time restore ([`pitr`], `restore --until`).
//!
//! Why this shape:
//! * The server compresses (zstd level 3) where it can: the slowest part
//!   of a base backup then runs where the data is read, and only a
//!   twentieth of the bytes cross to pg_basebackup and itbackup. Its tar
//!   is staged compressed beside the artifact; the stream compressed here
//!   (`-D -`) stages nothing.
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

use std::path::Path;

use super::{blocking, Postgres, SVC};
use crate::artifact::{ArtifactSource, PendingArtifact};
use crate::catalog::WalReach;
use crate::consistency::{Position, PostgresPosition};
use crate::error::{Error, Result};
use crate::manifest::ArtifactRecord;
use crate::process::ToolCommand;
use crate::stores::postgres::wal::chain::{self, Archive, ChainEnd, ChainStart, Depth};
use crate::stores::BackupContext;

pub mod basetar;
mod datadir;
pub mod lsn;
mod pitr;
mod recovery;
mod take;

use basetar::{BaseSummary, FileChecksum};
use take::Compression;

/// The per-file checksum new base backups are taken with.
const FILE_CHECKSUM: FileChecksum = FileChecksum::Crc32c;
pub use datadir::{interrupted, remove_unfinished_copy};
pub use pitr::{PreparedPitr, RecoveryTarget, Until};

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

impl Postgres {
    fn basebackup_command(
        &self,
        label: &str,
        compression: Compression,
        work: &Path,
    ) -> ToolCommand {
        self.tool("pg_basebackup")
            .args(compression.arguments(work))
            .args([
                "--format=tar",
                "--wal-method=fetch",
                "--checkpoint=fast",
                "--no-password",
            ])
            .arg(format!("--manifest-checksums={}", FILE_CHECKSUM.name()))
            .arg(format!("--label={label}"))
    }

    /// Where the base backup is compressed: by the server when it can
    /// (PostgreSQL 15 and later) and its files reach this host (not in
    /// compose mode), unless the backup streams into a repository: the
    /// server's way needs the whole compressed backup on the local disk
    /// first (see [`take`]).
    fn compression(&self, server_version_num: i32, streamed: bool) -> Compression {
        match self.target {
            crate::target::Target::Local if server_version_num >= 150_000 && !streamed => {
                Compression::Server
            }
            _ => Compression::Client,
        }
    }

    /// The work directory of a base backup compressed by the server:
    /// beside the artifact, unique per process (a killed run's is never
    /// written into again, and prune removes it as debris).
    fn basebackup_work(ctx: &BackupContext<'_>) -> std::path::PathBuf {
        ctx.dir.join(format!(
            ".postgres_{}.{}.work",
            ctx.timestamp,
            std::process::id()
        ))
    }

    pub(super) fn plan_physical_backup(&self, ctx: &BackupContext<'_>) -> Vec<String> {
        let label = format!("itbackup {}", ctx.timestamp);
        let work = Self::basebackup_work(ctx);
        vec![
            format!(
                "PostgreSQL 15 and later, compressed by the server: {} (every file checked against its backup_manifest as it is copied into postgres_{}.base.tar.zst)",
                self.basebackup_command(&label, Compression::Server, &work),
                ctx.timestamp
            ),
            format!(
                "older servers and compose mode: {} | zstd > postgres_{}.base.tar.zst (checked as it passes)",
                self.basebackup_command(&label, Compression::Client, &work),
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
                "SELECT system_identifier::text, current_setting('wal_segment_size')::text, current_setting('server_version_num')::int FROM pg_control_system()",
                &[],
            )
            .await
            .map_err(|e| Self::query_error("read the cluster's identity", e))?;
        let system_identifier: String = row.get(0);
        let segment_setting: String = row.get(1);
        let server_version_num: i32 = row.get(2);
        drop(client);
        let wal_segment_bytes = parse_size(&segment_setting).ok_or_else(|| {
            Error::failure(
                "read the cluster's identity",
                format!("cannot read wal_segment_size '{segment_setting}'"),
            )
            .service(SVC)
        })?;
        let file = format!("postgres_{}.base.tar.zst", ctx.timestamp);
        let compression = self.compression(server_version_num, ctx.artifacts.is_streamed());
        let work = Self::basebackup_work(ctx);
        let cmd =
            self.basebackup_command(&format!("itbackup {}", ctx.timestamp), compression, &work);
        let artifacts = ctx.artifacts.clone();
        let (pending, summary) = blocking(move || match compression {
            Compression::Server => {
                take::compressed_by_server(&cmd, &artifacts, &file, &work, FILE_CHECKSUM)
            }
            Compression::Client => take::streamed(&cmd, &artifacts, &file, FILE_CHECKSUM),
        })
        .await?;
        let consistent_at = jiff::Timestamp::now();
        // A base backup restored alone is consistent at its stop point: that
        // is the moment its data stands for (later WAL can only move it on).
        let mut position = Position::point("base_backup_stop", consistent_at);
        position.postgres = Some(PostgresPosition {
            timeline: summary.timeline,
            lsn: summary.end_lsn.to_string(),
            lsn_until: None,
        });
        record.position = Some(position);
        let details = PhysicalDetails {
            system_identifier,
            timeline: summary.timeline,
            start_lsn: summary.start_lsn.to_string(),
            stop_lsn: summary.end_lsn.to_string(),
            consistent_at: consistent_at.to_string(),
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
    pub(super) async fn check_physical(
        &self,
        path: &ArtifactSource,
        record: &ArtifactRecord,
    ) -> Result<()> {
        let details = PhysicalDetails::of(record)?;
        let path = path.clone();
        let algorithm = details.file_checksums;
        let summary = blocking(move || read_artifact(&path, None, algorithm)).await?;
        check_summary(&summary, &details)
    }
}

/// Read (and with `extract`, write out) a base backup artifact.
pub fn read_artifact(
    path: &ArtifactSource,
    extract: Option<&basetar::Extract<'_>>,
    algorithm: FileChecksum,
) -> Result<BaseSummary> {
    let step = "check base backup";
    let reader = path
        .open_zstd()
        .map_err(|e| crate::error::io_error(Some(SVC), step, path, e))?;
    basetar::read(reader, extract, algorithm).map_err(|e| match crate::error::carried(e) {
        Ok(carried) => carried.service(SVC),
        Err(e) => Error::damaged(step, format!("{path}: {e}"))
            .service(SVC)
            .hint("the base backup is damaged or is not one itbackup took; use another backup"),
    })
}

impl PhysicalDetails {
    /// Where recovery from this backup starts reading the archive.
    pub fn chain_start(&self) -> ChainStart {
        ChainStart {
            timeline: self.timeline,
            end_lsn: lsn::Lsn::parse(&self.stop_lsn).unwrap_or_default(),
            segment_bytes: self.wal_segment_bytes,
        }
    }
}

/// Walk the archive from the base backup `record` to its newest segment, as
/// deep as `depth` says; `None` when `record` is not a base backup. A broken
/// chain is an error (`verify`); `list` shows it as the backup's problem.
/// Timeline histories are read through `scratch` ([`wal_scratch`]).
pub async fn wal_reach(
    record: &ArtifactRecord,
    archive: &Archive,
    names: &std::collections::BTreeSet<String>,
    identities: Option<&crate::seal::Identities>,
    scratch: &Path,
    depth: Depth<'_>,
) -> Result<Option<WalReach>> {
    let Ok(details) = PhysicalDetails::of(record) else {
        return Ok(None);
    };
    let chain = chain::walk(
        archive,
        names,
        &details.chain_start(),
        ChainEnd::Latest,
        identities,
        scratch,
        depth,
    )
    .await?;
    Ok(Some(WalReach {
        archive: archive.location(),
        timeline: chain.timeline,
        segments: chain.segments.len(),
        last_segment: chain.segments.last().cloned(),
        last_archived_at: chain.last_archived_at,
        problem: None,
    }))
}

/// A private scratch directory for the timeline histories a walk reads:
/// one for all the walks of a command.
pub fn wal_scratch() -> Result<tempfile::TempDir> {
    tempfile::tempdir()
        .map_err(|e| crate::error::io_error(Some(SVC), "check WAL chain", "a scratch directory", e))
}

/// Fill in the WAL reach of every complete base backup in `backups`, from
/// the archive of `repository` listed once (`list`). A location without
/// archived WAL shows none; a broken chain is shown, not an error.
pub async fn fill_wal_reach(
    repository: &crate::repository::Repository,
    backups: &mut [crate::catalog::BackupEntry],
    identity: Option<&Path>,
) -> Result<()> {
    let archive = Archive::of(repository)?;
    let names = archive.names().await?;
    if names.is_empty() {
        return Ok(());
    }
    // Only a sealed timeline history needs the key; without one, the
    // backups whose chain crosses a timeline say so in their line.
    let identities = identity.and_then(|file| crate::seal::Identities::load(file).ok());
    let scratch = wal_scratch()?;
    for entry in backups.iter_mut() {
        let Some(record) = entry.manifest.as_ref().and_then(|m| m.artifacts.get(&SVC)) else {
            continue;
        };
        entry.wal = match wal_reach(
            record,
            &archive,
            &names,
            identities.as_ref(),
            scratch.path(),
            Depth::Names,
        )
        .await
        {
            Ok(reach) => reach,
            Err(e) => Some(broken_reach(&archive, record, e.message)),
        };
    }
    Ok(())
}

/// The reach of a base backup whose chain is broken: `problem` says where.
fn broken_reach(archive: &Archive, record: &ArtifactRecord, problem: String) -> WalReach {
    WalReach {
        archive: archive.location(),
        timeline: PhysicalDetails::of(record)
            .map(|d| d.timeline)
            .unwrap_or_default(),
        segments: 0,
        last_segment: None,
        last_archived_at: None,
        problem: Some(problem),
    }
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
