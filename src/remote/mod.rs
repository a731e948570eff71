//! Remote backup repositories: the same layout as a local root
//! (`<prefix>/<TIMESTAMP>/<artifact>` and `backup-manifest.json`) in an object
//! store — S3 and anything that speaks it (MinIO, Ceph, R2 …), Google Cloud
//! Storage, Azure Blob, WebDAV over HTTP(S), or a `file://` path.
//!
//! The rules are the local ones: the manifest is uploaded last, so a backup
//! without one is incomplete whatever else is there; every object is checked
//! against the manifest after upload (size, then its sha256 read back); and
//! nothing is restored from a remote copy before every requested artifact has
//! been downloaded and verified. Credentials come from the backends' standard
//! variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL`, `GOOGLE_*`, `AZURE_*`) and never from the command line.

use std::sync::Arc;

use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::Serialize;

use crate::artifact::{self, create_private_dir};
use crate::catalog::BackupEntry;
use crate::error::{io_error, Error, Result};
use crate::manifest::{is_safe_component, Manifest, MANIFEST_FILE};

mod errors;
mod objects;
mod reading;
mod resumable;
mod staging;
mod streaming;
pub mod throttle;
mod transfer;

use errors::{client_options, remote_error, retry_config};
pub use staging::{pull, staging_dir, PullOutcome, STAGING_PREFIX};
pub use streaming::StreamingBackup;

/// Size of the parts of a multipart upload, and how many are in flight.
const PART_SIZE: usize = 8 * 1024 * 1024;
const PARTS_IN_FLIGHT: usize = 4;
const READ_CHUNK: usize = 1024 * 1024;
/// Manifests read at once when listing a location.
const MANIFEST_READS: usize = 8;

/// A backup location in an object store.
#[derive(Debug, Clone)]
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    /// The store's multipart API (S3, GCS, Azure): a push resumes there.
    parts: Option<resumable::Parts>,
    prefix: ObjectPath,
    /// The URL as the user gave it (URLs carry no credentials here), for messages.
    pub url: String,
}

/// What `push` did.
#[derive(Debug, Serialize)]
pub struct PushOutcome {
    pub url: String,
    pub timestamp: String,
    pub objects: usize,
    /// Every object's bytes, the manifest's included.
    pub bytes: u64,
    /// What was sent this time: artifacts already in the repository, intact
    /// (an earlier, interrupted push), are checked and kept, not sent again.
    pub uploaded_bytes: u64,
    /// Artifacts found intact in the repository and kept.
    pub reused: usize,
    pub seconds: f64,
}

impl Remote {
    /// Open a location URL: `s3://bucket/prefix`, `gs://…`, `az://…`,
    /// `https://host/dav/…` (WebDAV) or `file:///path`.
    pub fn open(url: &str) -> Result<Remote> {
        let parsed = url::Url::parse(url).map_err(|e| {
            Error::usage(format!(
                "'{}' is not a repository URL ({e}); use s3://bucket/prefix, gs://, az://, https:// or file://",
                crate::process::mask_userinfo(url)
            ))
        })?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(Error::usage(
                "credentials do not belong in the repository URL; use the backend's environment variables (AWS_ACCESS_KEY_ID …)",
            ));
        }
        let mut parts = None;
        let (store, prefix): (Arc<dyn ObjectStore>, ObjectPath) = match parsed.scheme() {
            "s3" | "s3a" => {
                // AmazonS3Builder::from_env, over our timeouts: an AWS_*
                // variable (AWS_TIMEOUT, AWS_PROXY_URL …) still wins.
                let mut builder = object_store::aws::AmazonS3Builder::new()
                    .with_client_options(client_options())
                    .with_retry(retry_config());
                for (key, value) in std::env::vars() {
                    if key.starts_with("AWS_") {
                        if let Ok(key) = key.to_ascii_lowercase().parse() {
                            builder = builder.with_config(key, value);
                        }
                    }
                }
                builder = builder.with_url(url);
                let endpoint = std::env::var("AWS_ENDPOINT_URL")
                    .or_else(|_| std::env::var("AWS_ENDPOINT"))
                    .unwrap_or_default();
                if endpoint.starts_with("http://") {
                    builder = builder.with_allow_http(true);
                }
                if !endpoint.is_empty() {
                    // S3-compatible servers (MinIO, Ceph) address buckets by path.
                    builder = builder.with_endpoint(endpoint);
                }
                if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
                    builder = builder.with_region("us-east-1");
                }
                let store = Arc::new(builder.build().map_err(|e| {
                    Error::usage(format!("repository {url}: {e}"))
                })?);
                parts = Some(resumable::Parts(store.clone()));
                (store, path_of(&parsed)?)
            }
            "gs" => {
                let store = Arc::new(object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(url)
                    .with_client_options(client_options())
                    .with_retry(retry_config())
                    .build()
                    .map_err(|e| Error::usage(format!("repository {url}: {e}")))?);
                parts = Some(resumable::Parts(store.clone()));
                (store, path_of(&parsed)?)
            }
            "az" | "azure" | "abfs" | "abfss" => {
                let store = Arc::new(object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(url)
                    .with_client_options(client_options())
                    .with_retry(retry_config())
                    .build()
                    .map_err(|e| Error::usage(format!("repository {url}: {e}")))?);
                parts = Some(resumable::Parts(store.clone()));
                (store, path_of(&parsed)?)
            }
            "http" | "https" => {
                let store = object_store::http::HttpBuilder::new()
                    .with_url(&parsed[..url::Position::BeforePath])
                    .with_client_options(client_options())
                    .with_retry(retry_config())
                    .build()
                    .map_err(|e| Error::usage(format!("repository {url}: {e}")))?;
                (Arc::new(store), path_of(&parsed)?)
            }
            "file" => {
                let dir = parsed.to_file_path().map_err(|_| {
                    Error::usage(format!("'{url}' is not an absolute file:// URL"))
                })?;
                create_private_dir(&dir)
                    .map_err(|e| io_error(None, "open repository", dir.display(), e))?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| Error::usage(format!("repository {url}: {e}")))?;
                (Arc::new(store), ObjectPath::default())
            }
            other => {
                return Err(Error::usage(format!(
                    "repository scheme '{other}:' is not supported; use s3://, gs://, az://, https:// (WebDAV) or file://"
                )))
            }
        };
        Ok(Remote {
            store,
            parts,
            prefix,
            url: url.trim_end_matches('/').to_string(),
        })
    }

    fn key(&self, parts: &[&str]) -> ObjectPath {
        let mut path = self.prefix.clone();
        for part in parts {
            path = path.join(*part);
        }
        path
    }

    /// The location's parent and last segment: `s3://b/p/20250101_000000` is
    /// backup `20250101_000000` of location `s3://b/p`.
    fn split_last(&self) -> Option<(Remote, String)> {
        let parts: Vec<_> = self.prefix.parts().collect();
        let (last, parents) = parts.split_last()?;
        let parent_url = self.url.rsplit_once('/')?.0.to_string();
        Some((
            Remote {
                store: self.store.clone(),
                parts: self.parts.clone(),
                prefix: ObjectPath::from_iter(parents.iter().cloned()),
                url: parent_url,
            },
            last.as_ref().to_string(),
        ))
    }

    /// Resolve `URL` or `URL/<TS>`: the location and, when the URL names one
    /// backup (its manifest is there), that backup's name.
    pub async fn locate(url: &str) -> Result<(Remote, Option<String>)> {
        let remote = Remote::open(url)?;
        let manifest_key = remote.key(&[MANIFEST_FILE]);
        match remote.store.head(&manifest_key).await {
            Ok(_) => {
                if let Some((parent, name)) = remote.split_last() {
                    return Ok((parent, Some(name)));
                }
                Err(Error::usage(format!(
                    "{url} holds a manifest at its top; give the location that holds backup directories"
                )))
            }
            Err(object_store::Error::NotFound { .. }) => {
                // Files right under the URL (not in sub-directories) make it
                // a backup without a manifest: say so, rather than look for
                // backups inside it. One listing of this level only.
                let level = remote
                    .store
                    .list_with_delimiter(Some(&remote.prefix))
                    .await
                    .map_err(|e| remote_error("read repository", url, e))?;
                if !level.objects.is_empty() {
                    if let Some((parent, name)) = remote.split_last() {
                        return Err(Error::not_found(
                            "find backup",
                            format!("the backup {name} in {} is incomplete (no manifest)", parent.url),
                        )
                        .hint("an upload was interrupted or is still running: run `itbackup push` again, or use another backup (`itbackup list --from URL`)"));
                    }
                }
                Ok((remote, None))
            }
            Err(e) => Err(remote_error("read repository", url, e)),
        }
    }

    /// Every backup in the location, oldest first (by finish time, then name).
    pub async fn backups(&self) -> Result<Vec<BackupEntry>> {
        let step = "list remote backups";
        let mut by_name: std::collections::BTreeMap<String, BackupEntry> = Default::default();
        let mut listing = self.store.list(Some(&self.prefix));
        let depth = self.prefix.parts().count();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| remote_error(step, &self.url, e))?;
            let parts: Vec<_> = meta.location.parts().skip(depth).collect();
            if parts.len() != 2 || crate::catalog::is_reserved(parts[0].as_ref()) {
                continue;
            }
            let name = parts[0].as_ref().to_string();
            let entry = by_name.entry(name.clone()).or_insert_with(|| BackupEntry {
                timestamp: name.clone(),
                path: format!("{}/{name}", self.url).into(),
                name,
                complete: false,
                finished_at: None,
                services: Vec::new(),
                bytes: 0,
                modified: None,
                problem: Some("no manifest: interrupted or still uploading".into()),
                wal: None,
                kept_outside: Vec::new(),
                consistency: None,
                manifest: None,
                has_manifest: false,
                files: Default::default(),
            });
            entry.files.insert(parts[1].as_ref().to_string(), meta.size);
            entry.bytes += meta.size;
            let modified = meta.last_modified.to_rfc3339();
            if entry.modified.as_ref().is_none_or(|m| &modified > m) {
                entry.modified = Some(modified);
            }
            if parts[1].as_ref() == MANIFEST_FILE {
                entry.has_manifest = true;
            }
        }
        // One GET per manifest: a few at a time, so a long history lists in
        // round trips / MANIFEST_READS rather than one after the other.
        let mut backups: Vec<BackupEntry> = futures::stream::iter(by_name.into_values())
            .map(|mut entry| async move {
                if entry.has_manifest {
                    match self.read_manifest(&entry.name).await {
                        Ok(manifest) => entry.found_complete(manifest),
                        Err(e) => entry.problem = Some(e.message),
                    }
                }
                entry
            })
            .buffer_unordered(MANIFEST_READS)
            .collect()
            .await;
        backups.sort_by(|a, b| {
            (
                a.finished_at.as_deref().unwrap_or(""),
                &a.timestamp,
                &a.name,
            )
                .cmp(&(
                    b.finished_at.as_deref().unwrap_or(""),
                    &b.timestamp,
                    &b.name,
                ))
        });
        Ok(backups)
    }

    /// Whether anything, complete or not, is stored under backup `name`.
    pub async fn holds(&self, name: &str) -> Result<bool> {
        match self.store.list(Some(&self.key(&[name]))).next().await {
            None => Ok(false),
            Some(Ok(_)) => Ok(true),
            Some(Err(e)) => Err(remote_error("list remote backups", &self.url, e)),
        }
    }

    /// Read and validate one backup's manifest.
    pub async fn read_manifest(&self, name: &str) -> Result<Manifest> {
        let key = self.key(&[name, MANIFEST_FILE]);
        let origin = format!("{}/{name}/{MANIFEST_FILE}", self.url);
        let bytes = match self.store.get(&key).await {
            Ok(got) if got.meta.size > artifact::MAX_MANIFEST_BYTES => {
                return Err(Error::damaged(
                    "read manifest",
                    format!(
                        "{origin} has {} bytes, at most {} expected",
                        got.meta.size,
                        artifact::MAX_MANIFEST_BYTES
                    ),
                )
                .hint("the manifest is damaged or forged; use another backup"))
            }
            Ok(got) => got
                .bytes()
                .await
                .map_err(|e| remote_error("read manifest", &origin, e))?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::not_found(
                    "read manifest",
                    format!("{origin} does not exist"),
                )
                .hint("the remote backup is incomplete (interrupted upload) or the name is wrong; `itbackup list --from URL` shows complete backups"))
            }
            Err(e) => return Err(remote_error("read manifest", &origin, e)),
        };
        Manifest::parse(&bytes, &origin)
    }

    /// The newest complete backup's name.
    pub async fn newest_complete(&self) -> Result<String> {
        self.backups()
            .await?
            .into_iter()
            .rev()
            .find(|b| b.complete)
            .map(|b| b.name)
            .ok_or_else(|| {
                Error::not_found("find backup", format!("no complete backup in {}", self.url))
                    .hint("`itbackup list --from URL` shows what is there")
            })
    }

    /// Remove one backup: its manifest first (it stops counting as complete),
    /// then everything else under its name.
    pub async fn remove(&self, name: &str) -> Result<()> {
        let step = "remove remote backup";
        if !is_safe_component(name) {
            return Err(Error::failure(step, format!("refusing to remove '{name}'")));
        }
        match self.store.delete(&self.key(&[name, MANIFEST_FILE])).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(remote_error(step, &self.url, e)),
        }
        let prefix = self.key(&[name]);
        let mut listing = self.store.list(Some(&prefix));
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| remote_error(step, &self.url, e))?;
            match self.store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(remote_error(step, &self.url, e)),
            }
        }
        Ok(())
    }

    /// Write raw bytes to `name/file` (tests use it to damage a remote copy).
    pub async fn put_object(&self, name: &str, file: &str, data: Vec<u8>) -> Result<()> {
        self.store
            .put(&self.key(&[name, file]), PutPayload::from(data))
            .await
            .map(|_| ())
            .map_err(|e| remote_error("upload", &self.url, e))
    }

    /// Delete `name/file` (tests use it to fake an interrupted upload).
    pub async fn delete_object(&self, name: &str, file: &str) -> Result<()> {
        self.store
            .delete(&self.key(&[name, file]))
            .await
            .map_err(|e| remote_error("delete", &self.url, e))
    }
}

fn path_of(url: &url::Url) -> Result<ObjectPath> {
    let path = url.path().trim_matches('/');
    ObjectPath::parse(path).map_err(|e| Error::usage(format!("repository path '{path}': {e}")))
}

fn key_tail(key: &ObjectPath) -> String {
    let parts: Vec<_> = key.parts().collect();
    let n = parts.len();
    parts[n.saturating_sub(2)..]
        .iter()
        .map(|p| p.as_ref())
        .collect::<Vec<_>>()
        .join("/")
}
