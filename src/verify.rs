//! Proving a backup restorable without touching any service (but where the
//! backup itself lives in one: an OpenSearch repository-method snapshot is
//! checked in its repository): every artifact is
//! re-hashed against the manifest and decoded end to end by its store.
//! `restore` runs exactly this before it changes anything. A sealed (age)
//! artifact is checked as stored, then decrypted into a private scratch
//! directory, its plaintext checked, and decoded from there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::artifact::{digest_reader, open_regular, ArtifactSource};
use crate::error::{io_error, Error, Kind, Result};
use crate::manifest::Manifest;
use crate::repository::{open_backup, BackupChoice, OpenBackup, RemoteBackup};
use crate::seal::{self, Identities, OpenedArtifact};
use crate::service::Service;
use crate::stores::Store;

/// The outcome of checking one artifact.
#[derive(Debug, Serialize)]
pub struct ArtifactCheck {
    pub service: Service,
    pub file: String,
    pub bytes: u64,
    pub seconds: f64,
}

/// Verified artifacts, ready for their stores to read.
pub struct Verified {
    pub checks: Vec<ArtifactCheck>,
    /// Per service, the file its store reads (the plaintext of a sealed one).
    pub opened: BTreeMap<Service, OpenedArtifact>,
    /// Holds decrypted plaintexts; removed when this is dropped.
    _scratch: Option<tempfile::TempDir>,
}

/// Check the artifacts of `stores` in the backup directory `dir`; sealed ones
/// are opened with the age identity file `identity`.
pub async fn verify_artifacts(
    dir: &Path,
    manifest: &Manifest,
    stores: &[Box<dyn Store>],
    identity: Option<&Path>,
    restoring: bool,
) -> Result<Verified> {
    let mut checks = Vec::new();
    let mut opened = BTreeMap::new();
    let mut scratch: Option<tempfile::TempDir> = None;
    let mut identities: Option<std::sync::Arc<Identities>> = None;
    for store in stores {
        let service = store.service();
        let record = manifest.artifacts.get(&service).ok_or_else(|| {
            Error::damaged(
                "verify",
                format!("the backup in {} has no {service} artifact", dir.display()),
            )
            .service(service)
        })?;
        let started = Instant::now();
        let path = dir.join(&record.file);
        let step = "verify checksum";
        let expected_sha = record.sha256.clone();
        let expected_bytes = record.bytes;
        let file = open_regular(&path).map_err(|e| {
            let err = io_error(Some(service), step, path.display(), e);
            if path.symlink_metadata().is_ok() {
                err
            } else {
                err.of_kind(Kind::DamagedBackup).hint("the artifact is missing from the backup directory; copy it back or use another backup")
            }
        })?;
        // The size first: a file of another size is refused before it is read.
        let found_bytes = file
            .metadata()
            .map_err(|e| io_error(Some(service), step, path.display(), e))?
            .len();
        if found_bytes != expected_bytes {
            return Err(Error::damaged(
                step,
                format!(
                    "{} has {found_bytes} bytes, the manifest says {expected_bytes}",
                    record.file
                ),
            )
            .service(service)
            .hint("the artifact is truncated or was replaced; use another backup"));
        }
        let digest = tokio::task::spawn_blocking(move || digest_reader(file))
            .await
            .map_err(|e| Error::failure(step, e.to_string()).service(service))?
            .map_err(|e| io_error(Some(service), step, path.display(), e))?;
        if digest.bytes != expected_bytes {
            return Err(Error::damaged(
                step,
                format!(
                    "{} changed while it was read ({} bytes, the manifest says {expected_bytes})",
                    record.file, digest.bytes
                ),
            )
            .service(service)
            .hint(
                "something is writing into the backup directory; stop it, or use another backup",
            ));
        }
        if digest.sha256 != expected_sha {
            return Err(Error::damaged(
                step,
                format!("{} does not match its sha256 in the manifest", record.file),
            )
            .service(service)
            .hint("the artifact is damaged or was altered; use another backup"));
        }
        let readable = if record.encryption.is_some() {
            if identities.is_none() {
                if let Some(file) = identity {
                    identities = Some(std::sync::Arc::new(Identities::load(file)?));
                }
            }
            if scratch.is_none() {
                scratch = Some(plaintext_scratch(dir)?);
            }
            let into = scratch
                .as_ref()
                .map(|s| s.path().to_path_buf())
                .unwrap_or_default();
            let ids = identities.clone();
            let (record, path) = (record.clone(), path.clone());
            tokio::task::spawn_blocking(move || {
                seal::open(service, &path, &record, ids.as_deref(), &into)
            })
            .await
            .map_err(|e| Error::failure("decrypt artifact", e.to_string()).service(service))??
        } else {
            OpenedArtifact {
                source: ArtifactSource::File(path.clone()),
                record: record.clone(),
            }
        };
        // A store whose restore decodes (and checks) the artifact end to end
        // before it changes anything is not made to read it twice.
        if !(restoring && store.decodes_before_restoring(&readable.record)) {
            store
                .check_artifact(&readable.source, &readable.record)
                .await?;
        }
        opened.insert(service, readable);
        checks.push(ArtifactCheck {
            service,
            file: record.file.clone(),
            bytes: digest.bytes,
            seconds: started.elapsed().as_secs_f64(),
        });
        tracing::info!(%service, file = %record.file, "artifact verified");
    }
    Ok(Verified {
        checks,
        opened,
        _scratch: scratch,
    })
}

/// Check the artifacts of the opened backup: in its directory, or streamed
/// from its repository ([`verify_remote_artifacts`]).
pub async fn verify_backup(
    backup: &OpenBackup,
    stores: &[Box<dyn Store>],
    identity: Option<&Path>,
    restoring: bool,
) -> Result<Verified> {
    match &backup.remote {
        None => verify_artifacts(&backup.dir, &backup.manifest, stores, identity, restoring).await,
        Some(remote) => {
            verify_remote_artifacts(remote, &backup.manifest, stores, identity, restoring).await
        }
    }
}

/// [`verify_artifacts`] for a backup in a repository, read as it streams:
/// each artifact's size is checked first (HEAD), then its store decodes it
/// end to end while its bytes (and a sealed one's plaintext) are hashed
/// and compared with the manifest; an artifact the check did not read to
/// its end is read through once more for its checksum. Nothing is written
/// to the local disk. A restore's loads read the same object versions again.
pub async fn verify_remote_artifacts(
    backup: &RemoteBackup,
    manifest: &Manifest,
    stores: &[Box<dyn Store>],
    identity: Option<&Path>,
    restoring: bool,
) -> Result<Verified> {
    let identities = match manifest.artifacts.values().any(|r| r.encryption.is_some()) {
        true => identity
            .map(Identities::load)
            .transpose()?
            .map(std::sync::Arc::new),
        false => None,
    };
    let mut checks = Vec::new();
    let mut opened = BTreeMap::new();
    for store in stores {
        let service = store.service();
        let record = manifest.artifacts.get(&service).ok_or_else(|| {
            Error::damaged(
                "verify",
                format!("the backup {} has no {service} artifact", backup.name),
            )
            .service(service)
        })?;
        let started = Instant::now();
        let (source, plain) = backup
            .remote
            .artifact_source(&backup.name, service, record, identities.clone())
            .await?;
        if !(restoring && store.decodes_before_restoring(&plain)) {
            store.check_artifact(&source, &plain).await?;
        }
        if !source.checked() {
            let through = source.clone();
            tokio::task::spawn_blocking(move || through.read_through())
                .await
                .map_err(|e| Error::failure("verify checksum", e.to_string()).service(service))?
                .map_err(|e| io_error(Some(service), "verify checksum", &source, e))?;
        }
        checks.push(ArtifactCheck {
            service,
            file: record.file.clone(),
            bytes: record.bytes,
            seconds: started.elapsed().as_secs_f64(),
        });
        tracing::info!(%service, file = %record.file, "artifact verified as it streamed from the repository");
        opened.insert(
            service,
            OpenedArtifact {
                source,
                record: plain,
            },
        );
    }
    Ok(Verified {
        checks,
        opened,
        _scratch: None,
    })
}

/// A private directory for decrypted plaintexts, beside the backup directory
/// (same file system, same permissions regime).
fn plaintext_scratch(dir: &Path) -> Result<tempfile::TempDir> {
    let parent: PathBuf = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    tempfile::Builder::new()
        .prefix(".itbackup-restore-plain-")
        .tempdir_in(&parent)
        .map_err(|e| io_error(None, "create scratch directory", parent.display(), e))
}

/// What `verify` proved.
pub struct VerifyOutcome {
    /// The backup, as shown to the user.
    pub dir: PathBuf,
    pub checks: Vec<ArtifactCheck>,
    /// For a PostgreSQL base backup: the archived WAL after it, every
    /// segment re-hashed (read back from a repository).
    pub wal: Option<crate::catalog::WalReach>,
}

/// `itbackup verify`: the backup at `path` (default: the newest complete one
/// under the root) or, with `from`, a remote backup downloaded and checked;
/// a base backup's WAL chain too, in the archive of the same location.
pub async fn run(
    settings: &crate::config::Settings,
    path: Option<&Path>,
    from: Option<&str>,
) -> Result<VerifyOutcome> {
    let choice = BackupChoice {
        root: &settings.root,
        path,
        manifest: None,
        from,
    };
    let backup = open_backup(choice).await?;
    let services: Vec<_> = backup.manifest.services.keys().copied().collect();
    let stores = crate::backup::open_stores(&services, settings)?;
    let identity = settings.identity.as_deref();
    let verified = verify_backup(&backup, &stores, identity, false).await?;
    let wal = match backup.manifest.artifacts.get(&Service::Postgres) {
        Some(record) => {
            use crate::stores::postgres::wal::chain::{Archive, Depth};
            let archive = Archive::at(&backup.lock_root, backup.repository.as_deref())?;
            let names = archive.names().await?;
            let identities = identity.map(Identities::load).transpose()?;
            let scratch = crate::stores::postgres::physical::wal_scratch()?;
            crate::stores::postgres::physical::wal_reach(
                record,
                &archive,
                &names,
                identities.as_ref(),
                scratch.path(),
                Depth::Hash,
            )
            .await?
        }
        None => None,
    };
    Ok(VerifyOutcome {
        dir: backup.shown.clone(),
        checks: verified.checks,
        wal,
    })
}
