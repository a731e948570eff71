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

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::artifact::{self, create_private_dir, Digest256, PARTIAL_SUFFIX};
use crate::error::{io_error, Error, Kind, Result};
use crate::manifest::{is_safe_component, Manifest, MANIFEST_FILE};
use crate::timeout::{self, Phase};

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
    prefix: ObjectPath,
    /// The URL as the user gave it (URLs carry no credentials here), for messages.
    pub url: String,
}

/// One backup in a remote location.
#[derive(Debug, Serialize)]
pub struct RemoteBackup {
    pub name: String,
    pub complete: bool,
    pub timestamp: String,
    pub finished_at: Option<String>,
    pub services: Vec<String>,
    pub bytes: u64,
    /// Newest modification of any of its objects (RFC 3339).
    pub modified: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    #[serde(skip)]
    pub manifest: Option<Manifest>,
    /// Whether a manifest object exists (complete, or damaged when it does not validate).
    #[serde(skip)]
    pub has_manifest: bool,
    /// Its objects: name → size.
    #[serde(skip)]
    pub files: std::collections::BTreeMap<String, u64>,
}

/// What `push` did.
#[derive(Debug, Serialize)]
pub struct PushOutcome {
    pub url: String,
    pub timestamp: String,
    pub objects: usize,
    pub bytes: u64,
    pub seconds: f64,
}

/// The bound a repository request ran out of, if that is why it failed.
fn timed_out(err: &object_store::Error) -> Option<Phase> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut found = None;
    while let Some(e) = source {
        if let Some(e) = e.downcast_ref::<reqwest::Error>() {
            if e.is_timeout() {
                return Some(if e.is_connect() {
                    Phase::Connect
                } else {
                    Phase::Idle
                });
            }
        }
        if let Some(e) = e.downcast_ref::<object_store::client::HttpError>() {
            if e.kind() == object_store::client::HttpErrorKind::Timeout {
                found = Some(Phase::Idle);
            }
        }
        source = e.source();
    }
    found
}

fn remote_error(step: &str, url: &str, err: object_store::Error) -> Error {
    if let Some(phase) = timed_out(&err) {
        let timeouts = timeout::remote();
        return timeouts.error(
            None,
            step,
            phase,
            &format!("the repository {url}"),
            &format!("{url}: "),
        );
    }
    let (kind, hint) = match &err {
        object_store::Error::NotFound { .. } => (
            Kind::NotFound,
            "the bucket or object does not exist; check the URL (s3://bucket/prefix)",
        ),
        object_store::Error::Unauthenticated { .. }
        | object_store::Error::PermissionDenied { .. } => (
            Kind::Authentication,
            "the server refused the credentials: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the backend's own variables)",
        ),
        _ => (
            cause_kind(&err),
            "is the remote reachable? for S3-compatible servers set AWS_ENDPOINT_URL (and AWS_ALLOW_HTTP=true for plain http)",
        ),
    };
    Error::new(kind, step, format!("{url}: {err}")).hint(hint)
}

/// The kind of a repository error that object_store does not name: found
/// in its chain of causes (a connection that failed, a local disk that is
/// full), else a plain failure.
fn cause_kind(err: &object_store::Error) -> Kind {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if e.downcast_ref::<reqwest::Error>()
            .is_some_and(|e| e.is_connect())
            || e.downcast_ref::<object_store::client::HttpError>()
                .is_some_and(|e| e.kind() == object_store::client::HttpErrorKind::Connect)
        {
            return Kind::Unreachable;
        }
        if let Some(e) = e.downcast_ref::<std::io::Error>() {
            if crate::error::io_kind(e) == Kind::NoSpace {
                return Kind::NoSpace;
            }
        }
        source = e.source();
    }
    Kind::Failure
}

/// Connect and idle (per read) bounds; no total bound, which would cut the
/// download of a large artifact that is still flowing (object_store's
/// default is 30 s per request).
fn client_options() -> object_store::ClientOptions {
    let timeouts = timeout::remote();
    object_store::ClientOptions::new()
        .with_connect_timeout(timeouts.connect)
        .with_read_timeout(timeouts.idle)
        .with_timeout_disabled()
}

/// Retries (of timeouts too) stop once a request is older than the idle
/// bound: a silent repository fails within about twice that, instead of
/// object_store's default of three minutes of retries.
fn retry_config() -> object_store::RetryConfig {
    object_store::RetryConfig {
        retry_timeout: timeout::remote().idle,
        ..Default::default()
    }
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
                let store = builder.build().map_err(|e| {
                    Error::usage(format!("repository {url}: {e}"))
                })?;
                (Arc::new(store), path_of(&parsed)?)
            }
            "gs" => {
                let store = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(url)
                    .with_client_options(client_options())
                    .with_retry(retry_config())
                    .build()
                    .map_err(|e| Error::usage(format!("repository {url}: {e}")))?;
                (Arc::new(store), path_of(&parsed)?)
            }
            "az" | "azure" | "abfs" | "abfss" => {
                let store = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(url)
                    .with_client_options(client_options())
                    .with_retry(retry_config())
                    .build()
                    .map_err(|e| Error::usage(format!("repository {url}: {e}")))?;
                (Arc::new(store), path_of(&parsed)?)
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
    pub async fn backups(&self) -> Result<Vec<RemoteBackup>> {
        let step = "list remote backups";
        let mut by_name: std::collections::BTreeMap<String, RemoteBackup> = Default::default();
        let mut listing = self.store.list(Some(&self.prefix));
        let depth = self.prefix.parts().count();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| remote_error(step, &self.url, e))?;
            let parts: Vec<_> = meta.location.parts().skip(depth).collect();
            if parts.len() != 2 {
                continue;
            }
            let name = parts[0].as_ref().to_string();
            let entry = by_name.entry(name.clone()).or_insert_with(|| RemoteBackup {
                timestamp: name.clone(),
                name,
                complete: false,
                finished_at: None,
                services: Vec::new(),
                bytes: 0,
                modified: String::new(),
                problem: Some("no manifest: interrupted or still uploading".into()),
                manifest: None,
                has_manifest: false,
                files: Default::default(),
            });
            entry.files.insert(parts[1].as_ref().to_string(), meta.size);
            entry.bytes += meta.size;
            let modified = meta.last_modified.to_rfc3339();
            if modified > entry.modified {
                entry.modified = modified;
            }
            if parts[1].as_ref() == MANIFEST_FILE {
                entry.has_manifest = true;
            }
        }
        // One GET per manifest: a few at a time, so a long history lists in
        // round trips / MANIFEST_READS rather than one after the other.
        let mut backups: Vec<RemoteBackup> = futures::stream::iter(by_name.into_values())
            .map(|mut entry| async move {
                if entry.has_manifest {
                    match self.read_manifest(&entry.name).await {
                        Ok(manifest) => {
                            entry.complete = true;
                            entry.problem = None;
                            entry.timestamp = manifest.timestamp.clone();
                            entry.finished_at = Some(manifest.finished_at.clone());
                            entry.services =
                                manifest.services.keys().map(|s| s.to_string()).collect();
                            entry.manifest = Some(manifest);
                        }
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

    /// Upload one local file as a stream (multipart), hashing what was sent.
    async fn upload_file(&self, local: &Path, key: &ObjectPath) -> Result<Digest256> {
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
    async fn stream_object(
        &self,
        key: &ObjectPath,
        mut sink: Option<&mut tokio::fs::File>,
        expected: &Digest256,
    ) -> Result<()> {
        let step = "check remote object";
        let shown = format!("{}/{}", self.url, key_tail(key));
        let got = match self.store.get(key).await {
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
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| remote_error(step, &shown, e))?;
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

    /// Upload a complete local backup: artifacts (each checked after upload:
    /// size, then sha256 read back), then the manifest. Re-running it after an
    /// interruption completes the remote copy.
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
        let mut bytes = 0;
        for (service, record) in &manifest.artifacts {
            let key = self.key(&[&name, &record.file]);
            let local = dir.join(&record.file);
            let expected = Digest256 {
                sha256: record.sha256.clone(),
                bytes: record.bytes,
            };
            tracing::info!(%service, file = %record.file, bytes = record.bytes, "uploading");
            let sent = self.upload_file(&local, &key).await?;
            if sent != expected {
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
            bytes += record.bytes;
        }
        let manifest_bytes = artifact::read_manifest_bytes(&dir.join(MANIFEST_FILE))
            .map_err(|e| io_error(None, "upload", dir.join(MANIFEST_FILE).display(), e))?;
        bytes += manifest_bytes.len() as u64;
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
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Download backup `name` into `into` (a fresh private directory), every
    /// artifact streamed through sha256 and checked against the manifest; the
    /// manifest is written last, as in a local backup.
    pub async fn fetch(&self, name: &str, into: &Path) -> Result<Manifest> {
        if !is_safe_component(name) {
            return Err(Error::usage(format!("'{name}' is not a backup name")));
        }
        let manifest = self.read_manifest(name).await?;
        let created = !into.exists();
        create_private_dir(into).map_err(|e| io_error(None, "download", into.display(), e))?;
        let result = self.fetch_artifacts(name, &manifest, into).await;
        if result.is_err() {
            // Leave no half-downloaded copy taking the space a retry needs.
            if created {
                let _ = fs::remove_dir_all(into);
            } else {
                for record in manifest.artifacts.values() {
                    let _ = fs::remove_file(into.join(format!("{}{PARTIAL_SUFFIX}", record.file)));
                }
            }
        }
        result.map(|_| manifest)
    }

    async fn fetch_artifacts(&self, name: &str, manifest: &Manifest, into: &Path) -> Result<()> {
        let needed = manifest.artifacts.values().map(|r| r.bytes).sum();
        crate::error::require_free_space(None, "download", into, needed, "downloading the backup")?;
        for (service, record) in &manifest.artifacts {
            let key = self.key(&[name, &record.file]);
            let partial = into.join(format!("{}{PARTIAL_SUFFIX}", record.file));
            tracing::info!(%service, file = %record.file, bytes = record.bytes, "downloading");
            let mut file = tokio::fs::File::from_std(
                artifact::create_private_file(&partial)
                    .map_err(|e| io_error(None, "download", partial.display(), e))?,
            );
            let expected = Digest256 {
                sha256: record.sha256.clone(),
                bytes: record.bytes,
            };
            self.stream_object(&key, Some(&mut file), &expected)
                .await
                .map_err(|e| e.service(*service))?;
            file.sync_all()
                .await
                .map_err(|e| io_error(None, "download", partial.display(), e))?;
            fs::rename(&partial, into.join(&record.file))
                .map_err(|e| io_error(None, "download", partial.display(), e))?;
        }
        manifest.write(into)
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

/// Name prefix of staging directories under a root (hidden from `list`;
/// `prune` removes them when a crash left them behind).
pub const STAGING_PREFIX: &str = ".itbackup-staging-";

/// A private staging directory under `root` for a downloaded backup; removed
/// when dropped.
pub fn staging_dir(root: &Path, purpose: &str) -> Result<tempfile::TempDir> {
    create_private_dir(root).map_err(|e| io_error(None, "create staging", root.display(), e))?;
    tempfile::Builder::new()
        .prefix(&format!("{STAGING_PREFIX}{purpose}-"))
        .tempdir_in(root)
        .map_err(|e| io_error(None, "create staging", root.display(), e))
}

/// Where a remote backup was downloaded to, kept alive as long as it is used.
pub struct Staged {
    pub dir: PathBuf,
    pub name: String,
    _staging: tempfile::TempDir,
}

/// What `pull` did.
#[derive(Debug, Serialize)]
pub struct PullOutcome {
    pub dir: PathBuf,
    pub timestamp: String,
    pub bytes: u64,
    pub seconds: f64,
}

/// `itbackup pull`: download a backup into `parent/<name>`, never over a
/// complete local backup.
pub async fn pull(url: &str, parent: &Path) -> Result<PullOutcome> {
    let started = std::time::Instant::now();
    let (remote, name) = Remote::locate(url).await?;
    let name = match name {
        Some(name) => name,
        None => remote.newest_complete().await?,
    };
    let dir = parent.join(&name);
    if dir.join(MANIFEST_FILE).exists() {
        return Err(Error::failure(
            "download",
            format!("{} already holds a complete backup", dir.display()),
        )
        .hint("remove it first, or pull into another directory"));
    }
    let _lock = crate::lock::RootLock::acquire(parent, "pull")?;
    let manifest = remote.fetch(&name, &dir).await?;
    Ok(PullOutcome {
        dir,
        timestamp: manifest.timestamp.clone(),
        bytes: manifest.artifacts.values().map(|r| r.bytes).sum(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Download the backup named by `url` (`URL/<TS>`, or the newest complete one
/// under `URL`) into a staging directory under `root`.
pub async fn fetch_to_staging(url: &str, root: &Path) -> Result<Staged> {
    let (remote, name) = Remote::locate(url).await?;
    let name = match name {
        Some(name) => name,
        None => remote.newest_complete().await?,
    };
    let staging = staging_dir(root, "download")?;
    let dir = staging.path().join(&name);
    remote.fetch(&name, &dir).await?;
    Ok(Staged {
        dir,
        name,
        _staging: staging,
    })
}
