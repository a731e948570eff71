//! The WAL archive of a local backup root: `<root>/wal/<name>.zst[.age]` and
//! its record `<name>.json`, the record written last (see [`super::record`]).
//!
//! Every step is durable before the next: the stored file is fsynced, renamed
//! and its directory fsynced; then the record goes the same way. A push
//! killed at any instant leaves at worst a stored file without a record,
//! which counts as not archived and which the retry replaces.

use std::fs;
use std::path::{Path, PathBuf};

use super::name::WalName;
use super::record::{WalEncryption, WalRecord, MAX_RECORD_BYTES};
use super::{conflict, stream, Pushed};
use crate::artifact::{self, create_private_dir, sync_dir, ArtifactWriter, Digest256};
use crate::error::{io_error, Error, Result};
use crate::seal::{Identities, Recipients};
use crate::service::Service;

/// Directory name of the WAL archive under a root (and under a repository's prefix).
pub const WAL_DIR: &str = "wal";

const SVC: Service = Service::Postgres;

/// The WAL archive under a local root.
#[derive(Debug, Clone)]
pub struct LocalArchive {
    pub dir: PathBuf,
}

impl LocalArchive {
    pub fn new(root: &Path) -> LocalArchive {
        LocalArchive {
            dir: root.join(WAL_DIR),
        }
    }

    /// The record of `name`, or `None` when it is not archived here.
    pub fn record(&self, name: &WalName) -> Result<Option<WalRecord>> {
        let path = self.dir.join(WalRecord::file_name(name));
        let bytes = match artifact::open_sized(&path, MAX_RECORD_BYTES, true).and_then(|f| {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_RECORD_BYTES), &mut bytes)
                .map(|_| bytes)
        }) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(Some(SVC), "read WAL record", path.display(), e)),
        };
        WalRecord::parse(&bytes, name, &path.display().to_string()).map(Some)
    }

    /// Archive the file `source` as `name` (compressed, sealed to
    /// `recipients` when given). The same content archived already is
    /// accepted; different content under that name is refused and the
    /// archived file kept.
    pub fn push(
        &self,
        source: &Path,
        name: &WalName,
        recipients: Option<&Recipients>,
    ) -> Result<Pushed> {
        let step = "archive WAL";
        if let Some(record) = self.record(name)? {
            let offered = stream::digest_source(source)?;
            if offered != record.plaintext() {
                return Err(conflict(
                    name,
                    &self.dir.display().to_string(),
                    &record,
                    &offered,
                ));
            }
            // The record alone proves nothing: a stored file lost or cut
            // since is stored again (the same content), or PostgreSQL would
            // delete the only copy left once told it is archived.
            let stored = stream::digest_source(&self.stored_path(&record));
            if stored.as_ref().is_ok_and(|s| *s == record.stored()) {
                return Ok(Pushed::Already(record));
            }
            tracing::warn!(
                wal = %name,
                "the archived copy is missing or damaged; archiving it again"
            );
        }
        create_private_dir(&self.dir)
            .map_err(|e| io_error(Some(SVC), step, self.dir.display(), e))?;
        let sealed = recipients.is_some();
        // Debris of an interrupted push made with the other setting; the
        // same setting's is replaced by the rename below.
        let _ = fs::remove_file(self.dir.join(WalRecord::stored_name(name, !sealed)));
        let stored_name = WalRecord::stored_name(name, sealed);
        let (pending, plain) = stream::store(source, &self.dir, &stored_name, recipients)?;
        let durable = |r: std::io::Result<()>| {
            r.map_err(|e| io_error(Some(SVC), step, self.dir.join(&stored_name).display(), e))
        };
        durable(pending.commit())?;
        durable(sync_dir(&self.dir))?;
        let record = new_record(name, plain, stored_name.clone(), pending.digest, recipients);
        self.write_record(&record, name)?;
        Ok(Pushed::Archived(record))
    }

    /// Write `name`'s record: `*.partial`, fsync, rename, fsync the directory.
    fn write_record(&self, record: &WalRecord, name: &WalName) -> Result<()> {
        let file = WalRecord::file_name(name);
        let path = self.dir.join(&file);
        (|| -> std::io::Result<()> {
            let mut writer = ArtifactWriter::create(&self.dir, &file)?;
            std::io::Write::write_all(&mut writer, &record.to_json())?;
            writer.finish()?.commit()?;
            sync_dir(&self.dir)
        })()
        .map_err(|e| io_error(Some(SVC), "archive WAL", path.display(), e))
    }

    /// The path of the stored file a record names.
    pub fn stored_path(&self, record: &WalRecord) -> PathBuf {
        self.dir.join(&record.file)
    }

    /// Hand PostgreSQL the archived `name` at `dest`, once both its
    /// checksums are reproduced.
    pub fn fetch(
        &self,
        name: &WalName,
        dest: &Path,
        identities: Option<&Identities>,
    ) -> Result<WalRecord> {
        let record = self
            .record(name)?
            .ok_or_else(|| not_archived(name, &self.dir.display().to_string()))?;
        stream::unpack(&self.stored_path(&record), &record, identities, dest)?;
        Ok(record)
    }
}

/// The record of a file just stored.
pub fn new_record(
    name: &WalName,
    plain: Digest256,
    file: String,
    stored: Digest256,
    recipients: Option<&Recipients>,
) -> WalRecord {
    WalRecord {
        name: name.to_string(),
        bytes: plain.bytes,
        sha256: plain.sha256,
        file,
        file_bytes: stored.bytes,
        file_sha256: stored.sha256,
        compression: "zstd".into(),
        encryption: recipients.map(|r| WalEncryption {
            scheme: "age".into(),
            recipients: r.names.clone(),
        }),
        archived_at: jiff::Timestamp::now().to_string(),
        itbackup_version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// `name` is not in the archive at `location`: what PostgreSQL asks for
/// routinely (the next segment at the end of recovery, history files of
/// timelines that never existed), so the message is one short line.
pub fn not_archived(name: &WalName, location: &str) -> Error {
    Error::not_found(
        "fetch WAL",
        format!("{name} is not in the WAL archive {location}"),
    )
    .service(SVC)
}
