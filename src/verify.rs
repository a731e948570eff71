//! Proving a backup restorable without touching any service: every artifact is
//! re-hashed against the manifest and decoded end to end by its store.
//! `restore` runs exactly this before it changes anything.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::artifact::digest_file;
use crate::error::{io_error, Error, Result};
use crate::manifest::Manifest;
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

/// Check the artifacts of `stores` in the backup directory `dir`.
pub async fn verify_artifacts(
    dir: &Path,
    manifest: &Manifest,
    stores: &[Box<dyn Store>],
) -> Result<Vec<ArtifactCheck>> {
    let mut checks = Vec::new();
    for store in stores {
        let service = store.service();
        let record = manifest.artifacts.get(&service).ok_or_else(|| {
            Error::failure(
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
        let file_path = path.clone();
        let digest = tokio::task::spawn_blocking(move || digest_file(&file_path))
            .await
            .map_err(|e| Error::failure(step, e.to_string()).service(service))?
            .map_err(|e| {
                let err = io_error(Some(service), step, path.display(), e);
                if path.exists() {
                    err
                } else {
                    err.hint("the artifact is missing from the backup directory; copy it back or use another backup")
                }
            })?;
        if digest.bytes != expected_bytes {
            return Err(Error::failure(
                step,
                format!(
                    "{} has {} bytes, the manifest says {expected_bytes}",
                    record.file, digest.bytes
                ),
            )
            .service(service)
            .hint("the artifact is truncated or was replaced; use another backup"));
        }
        if digest.sha256 != expected_sha {
            return Err(Error::failure(
                step,
                format!("{} does not match its sha256 in the manifest", record.file),
            )
            .service(service)
            .hint("the artifact is damaged or was altered; use another backup"));
        }
        store
            .check_artifact(&dir.join(&record.file), record)
            .await?;
        checks.push(ArtifactCheck {
            service,
            file: record.file.clone(),
            bytes: digest.bytes,
            seconds: started.elapsed().as_secs_f64(),
        });
        tracing::info!(%service, file = %record.file, "artifact verified");
    }
    Ok(checks)
}
