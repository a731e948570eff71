//! A push's upload of one artifact, resumable where it stopped: on S3, GCS
//! and Azure the artifact goes up as the parts of a multipart upload whose
//! id, and the parts already stored, are kept in a small state file beside
//! the artifact (`.itbackup-upload-<file>.json`, rewritten atomically as
//! each part lands). A push killed half-way through a large artifact and
//! run again finds the state, hashes the parts it sent (a local read) and
//! sends only the others, then completes the upload; the whole object is
//! read back and checked against the manifest as always.
//!
//! A state that names another object, size or part size, or an upload the
//! store no longer knows (aborted, or expired by the bucket's rule), is
//! dropped and the artifact sent whole again: resuming is an optimisation,
//! never a way to complete an object from parts of another.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjectPath;
use object_store::PutPayload;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::errors::remote_error;
use super::throttle::{Direction, Throttle};
use super::{key_tail, Remote, PARTS_IN_FLIGHT, PART_SIZE};
use crate::artifact::{self, Digest256};
use crate::error::{io_error, Result};
use crate::progress::Transfer;

/// Prefix of the state files; hidden, and never an artifact's name.
pub const STATE_PREFIX: &str = ".itbackup-upload-";

/// How far the multipart upload of one artifact got.
#[derive(Debug, Serialize, Deserialize)]
struct UploadState {
    key: String,
    upload_id: String,
    size: u64,
    part_size: u64,
    /// Part index → the store's id of the stored part.
    parts: BTreeMap<usize, String>,
}

/// The store's multipart API, where it has one.
#[derive(Clone)]
pub(super) struct Parts(pub(super) Arc<dyn MultipartStore>);

impl std::fmt::Debug for Parts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MultipartStore")
    }
}

/// What one upload did.
pub(super) struct Sent {
    /// The whole file as read (every part, sent or resumed).
    pub digest: Digest256,
    /// Sent this time.
    pub bytes: u64,
}

impl Remote {
    /// Upload `local` as `key`, resuming a multipart upload an earlier run
    /// began (see the module doc).
    pub(super) async fn upload_resumable(
        &self,
        parts: &Parts,
        local: &Path,
        key: &ObjectPath,
    ) -> Result<Sent> {
        let state_file = state_file(local);
        match self.upload_parts(parts, local, key, &state_file).await {
            Err(e) if e.kind == crate::error::Kind::NotFound => {
                // The upload the state named is gone: start a new one.
                tracing::info!(file = %local.display(), "the interrupted upload is gone from the repository; sending the artifact whole");
                let _ = std::fs::remove_file(&state_file);
                self.upload_parts(parts, local, key, &state_file).await
            }
            other => other,
        }
    }

    async fn upload_parts(
        &self,
        parts: &Parts,
        local: &Path,
        key: &ObjectPath,
        state_file: &Path,
    ) -> Result<Sent> {
        let step = "upload";
        let shown = format!("{}/{}", self.url, key_tail(key));
        let io = |e: std::io::Error| io_error(None, step, local.display(), e);
        let mut file = artifact::open_regular(local)
            .map(tokio::fs::File::from_std)
            .map_err(io)?;
        let size = file.metadata().await.map_err(io)?.len();
        let state = match read_state(state_file, key, size) {
            Some(state) => state,
            None => {
                let upload_id = parts
                    .0
                    .create_multipart(key)
                    .await
                    .map_err(|e| remote_error(step, &shown, e))?;
                UploadState {
                    key: key.to_string(),
                    upload_id,
                    size,
                    part_size: PART_SIZE as u64,
                    parts: BTreeMap::new(),
                }
            }
        };
        write_state(state_file, &state).map_err(io)?;
        let resumed = state.parts.len();
        let mut kept = Kept {
            state,
            file: state_file,
            shown: &shown,
        };
        if resumed > 0 {
            tracing::info!(file = %local.display(), parts = resumed, "resuming the interrupted upload");
        }
        let progress = Transfer::start(&format!("upload {}", key_tail(key)), size);
        let mut throttle = Throttle::new(Direction::Upload);
        let (mut hasher, mut read, mut sent) = (Sha256::new(), 0u64, 0u64);
        let mut in_flight = FuturesUnordered::new();
        let count = size.div_ceil(PART_SIZE as u64).max(1) as usize;
        for index in 0..count {
            let mut part = vec![0u8; (size - read).min(PART_SIZE as u64) as usize];
            file.read_exact(&mut part).await.map_err(io)?;
            hasher.update(&part);
            read += part.len() as u64;
            progress.advance(part.len() as u64);
            if kept.state.parts.contains_key(&index) {
                continue;
            }
            // Every part that landed is kept at once (a run that stops
            // keeps them all for the next); waiting only while the parts in
            // flight are at their bound.
            loop {
                let landed = match in_flight.len() >= PARTS_IN_FLIGHT {
                    true => in_flight.next().await,
                    false => in_flight.next().now_or_never().flatten(),
                };
                let Some((index, stored)) = landed else {
                    break;
                };
                kept.land(index, stored, &mut in_flight)
                    .await
                    .map_err(io)??;
            }
            throttle.pass(part.len()).await;
            sent += part.len() as u64;
            let (store, key) = (parts.0.clone(), key.clone());
            let id = kept.state.upload_id.clone();
            in_flight.push(async move {
                let stored = store
                    .put_part(&key, &id, index, PutPayload::from(part))
                    .await;
                (index, stored)
            });
        }
        while let Some((index, stored)) = in_flight.next().await {
            kept.land(index, stored, &mut in_flight)
                .await
                .map_err(io)??;
        }
        let ids = (0..count)
            .map(|i| PartId {
                content_id: kept.state.parts[&i].clone(),
            })
            .collect();
        parts
            .0
            .complete_multipart(key, &kept.state.upload_id, ids)
            .await
            .map_err(|e| remote_error(step, &shown, e))?;
        let _ = std::fs::remove_file(state_file);
        Ok(Sent {
            digest: Digest256 {
                sha256: hex::encode(hasher.finalize()),
                bytes: read,
            },
            bytes: sent,
        })
    }
}

/// The upload's state as parts land: kept on disk before the next part goes.
struct Kept<'a> {
    state: UploadState,
    file: &'a Path,
    shown: &'a str,
}

impl Kept<'_> {
    /// Keep part `index` if it landed; after a failed part, the parts still
    /// in flight are waited for and those that land kept too, before the
    /// failure is answered.
    async fn land<F>(
        &mut self,
        index: usize,
        stored: object_store::Result<PartId>,
        in_flight: &mut FuturesUnordered<F>,
    ) -> std::io::Result<Result<()>>
    where
        F: std::future::Future<Output = (usize, object_store::Result<PartId>)>,
    {
        let failed = match stored {
            Ok(part) => {
                self.record(index, part)?;
                return Ok(Ok(()));
            }
            Err(e) => remote_error("upload", self.shown, e),
        };
        while let Some((index, stored)) = in_flight.next().await {
            if let Ok(part) = stored {
                self.record(index, part)?;
            }
        }
        Ok(Err(failed))
    }

    fn record(&mut self, index: usize, part: PartId) -> std::io::Result<()> {
        self.state.parts.insert(index, part.content_id);
        write_state(self.file, &self.state)
    }
}

/// The state file of the artifact at `local`.
fn state_file(local: &Path) -> PathBuf {
    let name = local
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    local.with_file_name(format!("{STATE_PREFIX}{name}.json"))
}

/// The state of an earlier run's upload of the same object, size and part size.
fn read_state(path: &Path, key: &ObjectPath, size: u64) -> Option<UploadState> {
    let text = artifact::read_small_text(path, 1 << 20).ok()?;
    let state: UploadState = serde_json::from_str(&text).ok()?;
    (state.key == key.as_ref() && state.size == size && state.part_size == PART_SIZE as u64)
        .then_some(state)
}

/// Replace the state file atomically (written aside, renamed over).
fn write_state(path: &Path, state: &UploadState) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let pending =
        artifact::write_bytes(dir, &name, &serde_json::to_vec(state).expect("plain data"))?;
    pending.commit()
}
