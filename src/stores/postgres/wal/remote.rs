//! The WAL archive of a repository: `<url>/wal/<name>.zst[.age]` and
//! `<url>/wal/<name>.json`, the same files as under a local root, uploaded
//! in the same order (the stored file, checked by reading it back, then the
//! record), so that a record in the repository always means a complete,
//! verified segment.

use std::path::Path;

use super::local::{not_archived, WAL_DIR};
use super::name::WalName;
use super::record::{WalRecord, MAX_RECORD_BYTES};
use super::{conflict, stream, Pushed};
use crate::error::{io_error, Result};
use crate::remote::Remote;
use crate::seal::Identities;
use crate::service::Service;

const SVC: Service = Service::Postgres;

/// The WAL archive in a repository.
#[derive(Debug, Clone)]
pub struct RemoteArchive {
    remote: Remote,
}

impl RemoteArchive {
    pub fn open(url: &str) -> Result<RemoteArchive> {
        Ok(RemoteArchive {
            remote: Remote::open(url)?,
        })
    }

    pub fn location(&self) -> String {
        format!("{}/{WAL_DIR}", self.remote.url)
    }

    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    /// The record of `name` in the repository, or `None`.
    pub async fn record(&self, name: &WalName) -> Result<Option<WalRecord>> {
        let file = WalRecord::file_name(name);
        let Some(bytes) = self
            .remote
            .read_small(&[WAL_DIR, &file], MAX_RECORD_BYTES)
            .await
            .map_err(|e| e.service(SVC))?
        else {
            return Ok(None);
        };
        let origin = format!("{}/{file}", self.location());
        WalRecord::parse(&bytes, name, &origin).map(Some)
    }

    /// Upload the stored file `stored` that `record` describes, then the
    /// record. The same content archived already is accepted; different
    /// content under that name is refused and the archived object kept.
    pub async fn push(&self, name: &WalName, stored: &Path, record: &WalRecord) -> Result<Pushed> {
        if let Some(existing) = self.record(name).await? {
            if let Some(pushed) = self
                .accept_existing(name, existing, &record.plaintext())
                .await?
            {
                return Ok(pushed);
            }
        }
        self.upload(name, stored, record).await
    }

    /// Upload `stored` and then `record`, whatever the repository holds
    /// (after [`RemoteArchive::record`] found nothing under `name`).
    pub async fn upload(
        &self,
        name: &WalName,
        stored: &Path,
        record: &WalRecord,
    ) -> Result<Pushed> {
        self.remote
            .upload_checked(&[WAL_DIR, &record.file], stored, &record.stored())
            .await
            .map_err(|e| e.service(SVC))?;
        self.remote
            .put_object(WAL_DIR, &WalRecord::file_name(name), record.to_json())
            .await
            .map_err(|e| e.service(SVC))?;
        Ok(Pushed::Archived(record.clone()))
    }

    /// `name` is archived in the repository already: fine when it holds the
    /// content `offered` (`Some`), a refusal otherwise. `None` when the
    /// record's stored object is gone or of another size: the caller stores
    /// the segment again, or PostgreSQL would delete the only copy left.
    pub async fn accept_existing(
        &self,
        name: &WalName,
        existing: WalRecord,
        offered: &crate::artifact::Digest256,
    ) -> Result<Option<Pushed>> {
        if offered != &existing.plaintext() {
            return Err(conflict(name, &self.location(), &existing, offered));
        }
        let size = self
            .remote
            .object_size(&[WAL_DIR, &existing.file])
            .await
            .map_err(|e| e.service(SVC))?;
        if size != Some(existing.file_bytes) {
            tracing::warn!(
                wal = %name,
                "the archived copy in the repository is missing or damaged; archiving it again"
            );
            return Ok(None);
        }
        Ok(Some(Pushed::Already(existing)))
    }

    /// Download the archived `name`, checked against its record, and hand
    /// PostgreSQL its plaintext at `dest`. The download goes to a hidden
    /// temporary file beside `dest` (removed in any case): the same disk, and
    /// no other directory that must exist on the host being recovered.
    pub async fn fetch(
        &self,
        name: &WalName,
        dest: &Path,
        identities: Option<&Identities>,
    ) -> Result<WalRecord> {
        let step = "fetch WAL";
        let record = self
            .record(name)
            .await?
            .ok_or_else(|| not_archived(name, &self.location()))?;
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let download = tempfile::Builder::new()
            .prefix(".itbackup-wal-")
            .tempfile_in(dir)
            .map_err(|e| io_error(Some(SVC), step, dir.display(), e))?;
        let file = download
            .reopen()
            .map_err(|e| io_error(Some(SVC), step, download.path().display(), e))?;
        let mut file = tokio::fs::File::from_std(file);
        self.remote
            .download_checked(&[WAL_DIR, &record.file], &mut file, &record.stored())
            .await
            .map_err(|e| e.service(SVC))?;
        // tokio writes in the background: wait for the last chunk before
        // the file is read again by its path.
        tokio::io::AsyncWriteExt::flush(&mut file)
            .await
            .map_err(|e| io_error(Some(SVC), step, download.path().display(), e))?;
        drop(file);
        stream::unpack(download.path(), &record, identities, dest)?;
        Ok(record)
    }
}
