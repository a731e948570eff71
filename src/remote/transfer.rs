//! Moving a backup: its files uploaded as streams and read back for their
//! checksums (push), downloaded and verified before use (fetch).

use std::fs;
use std::path::Path;

use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::errors::remote_error;
use super::throttle::{Direction, Throttle};
use super::*;
use crate::artifact::{self, create_private_dir, Digest256, PARTIAL_SUFFIX};
use crate::error::io_error;
use crate::progress::Transfer;

impl Remote {
    /// Upload one local file as a stream (multipart), hashing what was sent.
    pub(super) async fn upload_file(&self, local: &Path, key: &ObjectPath) -> Result<Digest256> {
        let step = "upload";
        let shown = format!("{}/{}", self.url, key_tail(key));
        let mut file = artifact::open_regular(local)
            .map(tokio::fs::File::from_std)
            .map_err(|e| io_error(None, step, local.display(), e))?;
        let upload = self
            .store
            .put_multipart(key)
            .await
            .map_err(|e| remote_error(step, &shown, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        let mut buf = vec![0u8; READ_CHUNK];
        let mut throttle = Throttle::new(Direction::Upload);
        let size = file.metadata().await.map(|m| m.len()).unwrap_or(0);
        let progress = Transfer::start(&format!("upload {}", key_tail(key)), size);
        loop {
            let n = match file.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(io_error(None, step, local.display(), e));
                }
            };
            if n == 0 {
                break;
            }
            if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                return Err(remote_error(step, &shown, e));
            }
            writer.write(&buf[..n]);
            hasher.update(&buf[..n]);
            bytes += n as u64;
            progress.advance(n as u64);
            throttle.pass(n).await;
        }
        writer
            .finish()
            .await
            .map_err(|e| remote_error(step, &shown, e))?;
        Ok(Digest256 {
            sha256: hex::encode(hasher.finalize()),
            bytes,
        })
    }

    /// Stream an object through sha256 into `sink` (a file, or nothing).
    pub(super) async fn stream_object(
        &self,
        key: &ObjectPath,
        sink: Option<&mut tokio::fs::File>,
        expected: &Digest256,
    ) -> Result<()> {
        self.stream_object_from(key, sink, expected, Resume::default())
            .await
    }

    /// [`Self::stream_object`] from `resume.offset` on, the bytes before it
    /// (already in the sink) hashed into `resume.hasher`: the whole object
    /// is checked against the manifest all the same.
    async fn stream_object_from(
        &self,
        key: &ObjectPath,
        mut sink: Option<&mut tokio::fs::File>,
        expected: &Digest256,
        resume: Resume,
    ) -> Result<()> {
        let step = "check remote object";
        let shown = format!("{}/{}", self.url, key_tail(key));
        let Resume { offset, mut hasher } = resume;
        let options = object_store::GetOptions::default()
            .with_range((offset > 0).then_some(object_store::GetRange::Offset(offset)));
        let got = match self.store.get_opts(key, options).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::damaged(step, format!("{shown} is missing"))
                    .hint("the remote backup is incomplete; push it again or use another backup"))
            }
            Err(e) => return Err(remote_error(step, &shown, e)),
        };
        if got.meta.size != expected.bytes {
            return Err(Error::damaged(
                step,
                format!(
                    "{shown} has {} bytes, the manifest says {}",
                    got.meta.size, expected.bytes
                ),
            )
            .hint("the remote object is truncated or was replaced; use another backup"));
        }
        let mut stream = got.into_stream();
        let mut bytes = offset;
        let mut throttle = Throttle::new(Direction::Download);
        let progress = Transfer::start(
            &format!(
                "{} {}",
                if sink.is_some() { "download" } else { "check" },
                key_tail(key)
            ),
            expected.bytes,
        );
        progress.advance(offset);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| remote_error(step, &shown, e))?;
            progress.advance(chunk.len() as u64);
            throttle.pass(chunk.len()).await;
            hasher.update(&chunk);
            bytes += chunk.len() as u64;
            if let Some(file) = sink.as_deref_mut() {
                file.write_all(&chunk)
                    .await
                    .map_err(|e| io_error(None, "download", shown.as_str(), e))?;
            }
        }
        if bytes != expected.bytes || hex::encode(hasher.finalize()) != expected.sha256 {
            return Err(Error::damaged(
                step,
                format!("{shown} does not match its sha256 in the manifest"),
            )
            .hint("the remote object was altered or damaged; use another backup"));
        }
        Ok(())
    }

    /// Whether the object `key` is already what the manifest says (an
    /// earlier push that was interrupted sent it): its size, then its
    /// content read back through SHA-256. Reading it costs a download
    /// instead of an upload; anything that differs is sent again.
    async fn holds_intact(&self, key: &ObjectPath, expected: &Digest256) -> Result<bool> {
        match self.store.head(key).await {
            Ok(meta) if meta.size == expected.bytes => {
                Ok(self.stream_object(key, None, expected).await.is_ok())
            }
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(remote_error(
                "upload",
                &format!("{}/{}", self.url, key_tail(key)),
                e,
            )),
        }
    }

    /// Upload a complete local backup: artifacts (each checked after upload:
    /// size, then sha256 read back), then the manifest. Re-running it after an
    /// interruption completes the remote copy, sending only the artifacts
    /// that are not there intact.
    pub async fn push(&self, dir: &Path) -> Result<PushOutcome> {
        let started = std::time::Instant::now();
        let manifest = Manifest::read_dir(dir)?;
        let name = manifest.timestamp.clone();
        // An older manifest under the same name goes first, so that a crash
        // in between leaves an incomplete backup, never a mixed one.
        match self.store.delete(&self.key(&[&name, MANIFEST_FILE])).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(remote_error("upload", &self.url, e)),
        }
        let (mut bytes, mut uploaded_bytes, mut reused) = (0, 0, 0);
        for (service, record) in &manifest.artifacts {
            let key = self.key(&[&name, &record.file]);
            let local = dir.join(&record.file);
            let expected = Digest256 {
                sha256: record.sha256.clone(),
                bytes: record.bytes,
            };
            bytes += record.bytes;
            if self.holds_intact(&key, &expected).await? {
                tracing::info!(%service, file = %record.file, "in the repository and intact (streamed there, or by an earlier push): not sent again");
                reused += 1;
                continue;
            }
            tracing::info!(%service, file = %record.file, bytes = record.bytes, "uploading");
            let sent = match &self.parts {
                Some(parts) => self.upload_resumable(parts, &local, &key).await?,
                None => {
                    let digest = self.upload_file(&local, &key).await?;
                    let bytes = digest.bytes;
                    resumable::Sent { digest, bytes }
                }
            };
            if sent.digest != expected {
                return Err(Error::damaged(
                    "upload",
                    format!(
                        "{} does not match its sha256 in the manifest; the local backup is damaged",
                        local.display()
                    ),
                )
                .service(*service)
                .hint("run `itbackup verify --path DIR`; push another backup"));
            }
            self.stream_object(&key, None, &expected).await?;
            uploaded_bytes += sent.bytes;
        }
        let manifest_bytes = artifact::read_manifest_bytes(&dir.join(MANIFEST_FILE))
            .map_err(|e| io_error(None, "upload", dir.join(MANIFEST_FILE).display(), e))?;
        bytes += manifest_bytes.len() as u64;
        uploaded_bytes += manifest_bytes.len() as u64;
        let key = self.key(&[&name, MANIFEST_FILE]);
        self.store
            .put(&key, PutPayload::from(manifest_bytes))
            .await
            .map_err(|e| remote_error("upload manifest", &self.url, e))?;
        Ok(PushOutcome {
            url: format!("{}/{name}", self.url),
            timestamp: name,
            objects: manifest.artifacts.len() + 1,
            bytes,
            uploaded_bytes,
            reused,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Download backup `name` into `into` (a private directory), every
    /// artifact streamed through sha256 and checked against the manifest; the
    /// manifest is written last, as in a local backup. A failed download
    /// keeps what it has in `into` (each artifact's `.partial`), and the
    /// next one into the same directory goes on from there. Answers the
    /// manifest and the bytes downloaded this time.
    pub async fn fetch(&self, name: &str, into: &Path) -> Result<(Manifest, u64)> {
        if !is_safe_component(name) {
            return Err(Error::usage(format!("'{name}' is not a backup name")));
        }
        let manifest = self.read_manifest(name).await?;
        let created = !into.exists();
        create_private_dir(into).map_err(|e| io_error(None, "download", into.display(), e))?;
        let result = self.fetch_artifacts(name, &manifest, into).await;
        if result.is_err() {
            // What came is kept for the next pull; nothing at all when
            // nothing came (refused before it started: no room, say).
            for record in manifest.artifacts.values() {
                let partial = into.join(format!("{}{PARTIAL_SUFFIX}", record.file));
                if fs::metadata(&partial).is_ok_and(|m| m.len() == 0) {
                    let _ = fs::remove_file(partial);
                }
            }
            if created {
                // Only when empty.
                let _ = fs::remove_dir(into);
            }
        }
        result.map(|downloaded| (manifest, downloaded))
    }

    async fn fetch_artifacts(&self, name: &str, manifest: &Manifest, into: &Path) -> Result<u64> {
        let have: u64 = manifest
            .artifacts
            .values()
            .map(|r| {
                fs::metadata(into.join(format!("{}{PARTIAL_SUFFIX}", r.file)))
                    .map_or(0, |m| m.len().min(r.bytes))
            })
            .sum();
        let needed = manifest.artifacts.values().map(|r| r.bytes).sum::<u64>() - have;
        crate::artifact::require_free_space(
            None,
            "download",
            into,
            needed,
            "downloading the backup",
        )?;
        let mut downloaded = 0;
        for (service, record) in &manifest.artifacts {
            let key = self.key(&[name, &record.file]);
            let done = into.join(&record.file);
            let expected = Digest256 {
                sha256: record.sha256.clone(),
                bytes: record.bytes,
            };
            if off_the_runtime({
                let (done, expected) = (done.clone(), expected.clone());
                move || local_copy_is(&done, &expected)
            })
            .await
            {
                tracing::info!(%service, file = %record.file, "downloaded already, checked");
                continue;
            }
            let partial = into.join(format!("{}{PARTIAL_SUFFIX}", record.file));
            let resume = off_the_runtime({
                let (partial, expected) = (partial.clone(), expected.clone());
                move || Resume::of_partial(&partial, &expected)
            })
            .await;
            if resume.offset > 0 {
                tracing::info!(%service, file = %record.file, from = resume.offset, bytes = record.bytes, "resuming the download");
            } else {
                tracing::info!(%service, file = %record.file, bytes = record.bytes, "downloading");
            }
            let offset = resume.offset;
            let fetched = self.fetch_one(&key, &partial, &expected, resume).await;
            let fetched = match fetched {
                // What an interrupted download left may not be this object's
                // beginning (another backup of that name): once from scratch.
                Err(e) if offset > 0 && e.kind == crate::error::Kind::DamagedBackup => {
                    tracing::warn!(%service, file = %record.file, "the kept part did not match: downloading it whole");
                    self.fetch_one(&key, &partial, &expected, Resume::default())
                        .await
                        .map(|()| record.bytes)
                }
                other => other.map(|()| record.bytes - offset),
            };
            downloaded += fetched.map_err(|e| e.service(*service))?;
            fs::rename(&partial, &done)
                .map_err(|e| io_error(None, "download", partial.display(), e))?;
        }
        manifest.write(into)?;
        Ok(downloaded)
    }

    /// Download `key` into `partial`, appending from `resume.offset`.
    async fn fetch_one(
        &self,
        key: &ObjectPath,
        partial: &Path,
        expected: &Digest256,
        resume: Resume,
    ) -> Result<()> {
        let opened = if resume.offset > 0 {
            fs::OpenOptions::new().append(true).open(partial)
        } else {
            artifact::create_private_file(partial)
        };
        let mut file = tokio::fs::File::from_std(
            opened.map_err(|e| io_error(None, "download", partial.display(), e))?,
        );
        self.stream_object_from(key, Some(&mut file), expected, resume)
            .await?;
        file.sync_all()
            .await
            .map_err(|e| io_error(None, "download", partial.display(), e))
    }
}

/// Where a download starts: past the bytes a partial file already holds
/// (hashed), or at the beginning.
#[derive(Default)]
struct Resume {
    offset: u64,
    hasher: Sha256,
}

impl Resume {
    /// The part of the object a killed download left in `partial`: any
    /// regular file shorter than the object; anything else starts over.
    fn of_partial(partial: &Path, expected: &Digest256) -> Resume {
        let Ok(mut file) = artifact::open_regular(partial) else {
            return Resume::default();
        };
        let len = file.metadata().map_or(0, |m| m.len());
        if len == 0 || len >= expected.bytes {
            return Resume::default();
        }
        let mut hasher = Sha256::new();
        match std::io::copy(&mut std::io::Read::take(&mut file, len), &mut hasher) {
            Ok(n) if n == len => Resume {
                offset: len,
                hasher,
            },
            _ => Resume::default(),
        }
    }
}

/// Whether `path` is a regular file with exactly the expected content.
fn local_copy_is(path: &Path, expected: &Digest256) -> bool {
    artifact::digest_file(path).is_ok_and(|got| got == *expected)
}

/// Run blocking file work (hashing a local copy) off the async threads.
async fn off_the_runtime<T: Send + Default + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    tokio::task::spawn_blocking(work).await.unwrap_or_default()
}
