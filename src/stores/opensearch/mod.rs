//! OpenSearch, two ways.
//!
//! * **snapshot**: OpenSearch's own snapshot API into a fresh filesystem
//!   repository under `path.repo`; exactly that repository is packed into
//!   `opensearch_<TS>.tar.gz` and the repository is removed. Restore unpacks it
//!   under `path.repo`, registers it read-only, deletes the indices it replaces
//!   and restores them with the global state (templates, pipelines).
//! * **logical**: settings, mappings, aliases, templates, pipelines and every
//!   document (`_id`, `_routing`, `_source`) through point-in-time search with
//!   `search_after` in parallel slices (scroll where PIT is missing), streamed to
//!   zstd-compressed NDJSON (format in `docs/opensearch-logical.md`). Restore
//!   creates each index, loads it through `_bulk` with several requests in
//!   flight (replicas 0, refresh off, pipelines off), then puts settings and
//!   aliases back. Portable to any cluster and version; needs no file access.
//!
//! Memory is bounded by one page of hits per slice and the bulk requests in
//! flight, whatever the size of the index.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{BackupContext, RestoreContext, ServerInfo, Store, StoreBackup};
use crate::archive;
use crate::cli::OpenSearchMethod;
use crate::config::OpenSearchSettings;
use crate::error::{io_error, Error, Result};
use crate::manifest::ArtifactRecord;
use crate::process::mask_userinfo;
use crate::service::Service;
use crate::target::Target;

mod drill;
mod http;
mod leftovers;
mod logical;
mod selection;
mod snapshot;

use http::Http;
use logical::LoadNeeds;

const SVC: Service = Service::Opensearch;
/// Manifest detail of a snapshot artifact: the size of its uncompressed tar.
const UNPACKED_BYTES: &str = "unpacked_bytes";
/// Manifest detail: the data streams backed up ([`StreamInfo`]).
const DATA_STREAMS: &str = "data_streams";
pub struct OpenSearch {
    settings: OpenSearchSettings,
    target: Target,
    http: Http,
    /// What each verified logical export needs of the cluster, by path:
    /// found by the verification, compared with the cluster's limits before
    /// the restore changes anything.
    needs: std::sync::Mutex<BTreeMap<PathBuf, LoadNeeds>>,
}

/// An index as selected for backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct IndexInfo {
    name: String,
    primaries: usize,
    /// Size of its primary shards, which a snapshot into a new repository copies whole.
    primary_bytes: u64,
}

/// A data stream as selected for backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StreamInfo {
    name: String,
    timestamp_field: String,
    generation: u64,
    /// The index template the stream matches (restored with the templates).
    template: Option<String>,
    /// Its backing indices, oldest generation first; the last is the write index.
    indices: Vec<IndexInfo>,
}

/// An index the selection matched but the backup does not take, and why.
#[derive(Debug, Clone, Serialize)]
struct LeftOut {
    name: String,
    reason: String,
}

/// What a backup takes: plain indices and whole data streams; and what it
/// leaves out, which the manifest and the summary name.
#[derive(Debug, Default)]
struct Selection {
    indices: Vec<IndexInfo>,
    streams: Vec<StreamInfo>,
    left_out: Vec<LeftOut>,
}

impl Selection {
    /// Every index whose documents are backed up: plain and backing indices.
    fn concrete(&self) -> impl Iterator<Item = &IndexInfo> {
        self.indices
            .iter()
            .chain(self.streams.iter().flat_map(|s| s.indices.iter()))
    }

    fn concrete_names(&self) -> Vec<String> {
        self.concrete().map(|i| i.name.clone()).collect()
    }
}

impl OpenSearch {
    pub fn new(settings: OpenSearchSettings, target: Target) -> Self {
        // The idle bound is per read, never a total: a big `_bulk` or a long
        // export page may take long as long as the server answers; the
        // server-side waits (snapshot, restore, health) are polled below it.
        let client = reqwest::Client::builder()
            .connect_timeout(settings.timeouts.connect)
            .read_timeout(settings.timeouts.idle)
            .pool_max_idle_per_host(16)
            .build()
            .expect("http client");
        let http = Http {
            base: settings.url.clone(),
            client,
            username: settings.username.clone(),
            password: settings.password.clone(),
            timeouts: settings.timeouts,
        };
        OpenSearch {
            settings,
            target,
            http,
            needs: Default::default(),
        }
    }

    async fn health(&self, step: &str) -> Result<String> {
        let health = self.http.get("_cluster/health", step).await?;
        let status = health["status"].as_str().unwrap_or("unknown").to_string();
        if status == "red" {
            return Err(Error::failure(step, format!("cluster {} is red", health["cluster_name"]))
                .service(SVC)
                .hint("some primary shards are unassigned: fix the cluster first (GET _cluster/allocation/explain), then retry"));
        }
        Ok(status)
    }

    async fn version(&self) -> Result<String> {
        let step = "connect";
        let root = match self.http.send_raw(self.http.request(Method::GET, "")).await {
            Ok(root) => root,
            // OpenSearch answers its root path whenever it is up: a 404 there
            // comes from something else at that address, or from a path that
            // does not lead to the cluster.
            Err(e) if e.status == Some(StatusCode::NOT_FOUND) => {
                let url = mask_userinfo(&self.settings.url);
                return Err(Error::failure(step, format!("GET {url} answered {}", e.message))
                    .service(SVC)
                    .hint(format!(
                        "{url} does not seem to point at OpenSearch: check OPENSEARCH_URL — the port (9200 by default), a proxy's path prefix, or whether another service answers there"
                    )));
            }
            Err(e) => return Err(self.http.error(step, e)),
        };
        Ok(root["version"]["number"]
            .as_str()
            .unwrap_or("unknown")
            .to_string())
    }

    async fn count_docs(&self, index: &str) -> Result<u64> {
        let step = "count documents";
        self.http
            .call(Method::POST, &format!("{index}/_refresh"), None, step)
            .await?;
        let count = self.http.get(&format!("{index}/_count"), step).await?;
        count["count"]
            .as_u64()
            .ok_or_else(|| Error::failure(step, format!("no count for index {index}")).service(SVC))
    }

    /// The filesystem snapshot location the server allows (`path.repo`), if any.
    async fn path_repo(&self) -> Result<Option<PathBuf>> {
        let nodes = self
            .http
            .get("_nodes/_local/settings", "read path.repo")
            .await?;
        let Some(node) = nodes["nodes"].as_object().and_then(|n| n.values().next()) else {
            return Ok(None);
        };
        let repo = &node["settings"]["path"]["repo"];
        let first = match repo {
            Value::Array(items) => items.first().and_then(|v| v.as_str()),
            Value::String(s) => Some(s.as_str()),
            _ => None,
        };
        Ok(first.map(PathBuf::from))
    }

    /// The method to use and why.
    async fn choose_method(&self) -> Result<(OpenSearchMethod, String)> {
        let repo = self.path_repo().await?;
        if let Some(method) = self.settings.method {
            if method == OpenSearchMethod::Snapshot {
                let repo = repo.ok_or_else(|| {
                    Error::failure("choose method", "the snapshot method needs path.repo, and the cluster has none configured")
                        .service(SVC)
                        .hint("add path.repo to opensearch.yml (a directory this tool can read, e.g. under /usr/share/opensearch/data), or use --opensearch-method logical")
                })?;
                if !self.reaches(&repo) {
                    return Err(Error::failure("choose method", format!("path.repo {} is not reachable from here", repo.display()))
                        .service(SVC)
                        .hint("run itbackup where it can read and write path.repo (the same host or container), verify disk space and permissions, or use --opensearch-method logical"));
                }
            }
            return Ok((method, "chosen by the operator".into()));
        }
        Ok(match repo {
            Some(repo) if self.reaches(&repo) => (
                OpenSearchMethod::Snapshot,
                format!("path.repo {} is configured and reachable", repo.display()),
            ),
            Some(repo) => (
                OpenSearchMethod::Logical,
                format!(
                    "path.repo {} is configured but not reachable from here",
                    repo.display()
                ),
            ),
            None => (
                OpenSearchMethod::Logical,
                "the cluster has no path.repo".into(),
            ),
        })
    }

    /// Wait until every primary shard of `indices` (all, when empty) is
    /// started. Polled with quick requests, never one long server-side wait
    /// (which the idle bound would cut); and through the shards, not the
    /// health: OpenSearch reports an index whose primaries are still waiting
    /// to be restored from a snapshot as yellow. While primaries are
    /// initializing (a restore copying data) the wait goes on however long it
    /// takes; when nothing has moved for two minutes, it fails.
    async fn wait_healthy(&self, indices: &[String], step: &str) -> Result<()> {
        let path = format!(
            "_cat/shards/{}?format=json&h=index,shard,prirep,state,unassigned.reason",
            indices.join(",")
        );
        let mut delay = Duration::from_millis(200);
        let mut still = Duration::ZERO;
        loop {
            let shards = self.http.get(&path, step).await?;
            let primaries: Vec<&Value> = shards
                .as_array()
                .into_iter()
                .flatten()
                .filter(|s| s["prirep"] == "p")
                .collect();
            let started = primaries.iter().all(|s| s["state"] == "STARTED");
            if started && (indices.is_empty() || !primaries.is_empty()) {
                return Ok(());
            }
            let moving = primaries
                .iter()
                .any(|s| s["state"] == "INITIALIZING" || s["state"] == "RELOCATING");
            still = if moving {
                Duration::ZERO
            } else {
                still + delay
            };
            if still >= Duration::from_secs(120) {
                let waiting: Vec<String> = primaries
                    .iter()
                    .filter(|s| s["state"] != "STARTED")
                    .map(|s| {
                        format!(
                            "{}[{}] {} {}",
                            s["index"].as_str().unwrap_or("?"),
                            s["shard"].as_str().unwrap_or("?"),
                            s["state"].as_str().unwrap_or("?"),
                            s["unassigned.reason"].as_str().unwrap_or("")
                        )
                    })
                    .collect();
                return Err(Error::failure(
                    step,
                    format!(
                        "restored indices did not become active: {}",
                        waiting.join(", ")
                    ),
                )
                .service(SVC)
                .hint(
                    "look at GET _cluster/allocation/explain; verify disk space on the OpenSearch node",
                ));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    async fn counts_of(&self, names: &[String]) -> Result<BTreeMap<String, u64>> {
        let mut counts = BTreeMap::new();
        for name in names {
            counts.insert(name.clone(), self.count_docs(name).await?);
        }
        Ok(counts)
    }
}

#[async_trait]
impl Store for OpenSearch {
    fn address(&self) -> String {
        self.settings.url.clone()
    }

    fn service(&self) -> Service {
        SVC
    }

    async fn probe(&self) -> Result<ServerInfo> {
        let version = self.version().await?;
        self.health("cluster health").await?;
        Ok(ServerInfo {
            version,
            endpoint: mask_userinfo(&self.settings.url),
        })
    }

    fn backup_plan(&self, ctx: &BackupContext<'_>) -> Vec<String> {
        let indices = self
            .settings
            .indices
            .as_deref()
            .unwrap_or("every open index and data stream; closed, hidden and dot-prefixed indices are named in the manifest as left out");
        let url = mask_userinfo(&self.settings.url);
        let snapshot = vec![
            format!("PUT {url}/_snapshot/itbackup-<ts>  (fs repository under path.repo)"),
            format!("PUT {url}/_snapshot/itbackup-<ts>/snapshot  (indices: {indices}, with global state), polled until it ends"),
            format!("pack the repository into {}/opensearch_{}.{}", ctx.dir.display(), ctx.timestamp, self.settings.snapshot_compression.extension()),
            "unregister the repository and remove its files".into(),
        ];
        let logical = vec![
            format!("GET {url}/_component_template, _index_template, _template, _ingest/pipeline"),
            format!("for each index ({indices}): GET settings, mappings, aliases; documents through point-in-time search in parallel slices"),
            format!("write {}/opensearch_{}.ndjson.zst", ctx.dir.display(), ctx.timestamp),
        ];
        match self.settings.method {
            Some(OpenSearchMethod::Snapshot) => snapshot,
            Some(OpenSearchMethod::Logical) => logical,
            None => {
                let mut plan = vec!["method: snapshot when path.repo is configured and reachable from here, else logical".to_string()];
                plan.extend(snapshot.into_iter().map(|s| format!("snapshot: {s}")));
                plan.extend(logical.into_iter().map(|s| format!("logical: {s}")));
                plan
            }
        }
    }

    async fn backup(&self, ctx: &BackupContext<'_>) -> Result<StoreBackup> {
        let started_at = jiff::Timestamp::now().to_string();
        let server_version = self.version().await?;
        self.health("cluster health").await?;
        let (method, reason) = self.choose_method().await?;
        self.remove_dead_runs_repositories().await;
        let selection = self.select().await?;
        let mut record = ArtifactRecord::begun(server_version, started_at);
        record.details.insert("method_reason".into(), json!(reason));
        record
            .details
            .insert("indices".into(), json!(selection.indices));
        if !selection.streams.is_empty() {
            record
                .details
                .insert(DATA_STREAMS.into(), json!(selection.streams));
        }
        if !selection.left_out.is_empty() {
            record
                .details
                .insert("left_out".into(), json!(selection.left_out));
        }
        let indices = &selection;
        let artifact = match method {
            OpenSearchMethod::Snapshot => {
                record.method = "snapshot".into();
                record.format = self.settings.snapshot_compression.extension().into();
                self.backup_snapshot(ctx, indices, &mut record).await?
            }
            OpenSearchMethod::Logical => {
                record.method = "logical".into();
                record.format = "ndjson.zst".into();
                self.backup_logical(ctx, indices, &mut record).await?
            }
        };
        Ok(StoreBackup::finished(SVC, artifact, record))
    }

    async fn check_artifact(&self, artifact: &Path, record: &ArtifactRecord) -> Result<()> {
        let path = artifact.to_path_buf();
        match record.method.as_str() {
            "snapshot" => {
                let compression = snapshot::snapshot_compression(record)?;
                super::blocking(SVC, move || {
                    let reader = archive::open(&path, compression).map_err(|e| io_error(Some(SVC), "verify snapshot", path.display(), e))?;
                    archive::check(reader).map(|_| ()).map_err(|e| {
                        Error::failure("verify snapshot", format!("{} is not a sound archive: {e}", path.display()))
                            .service(SVC)
                            .hint("the artifact is truncated, damaged or unsafe (paths outside the archive); nothing was extracted; use another backup")
                    })
                })
                .await
            }
            "logical" => {
                let record = record.clone();
                let key = path.clone();
                let needs =
                    super::blocking(SVC, move || logical::check_logical(&path, &record)).await?;
                if let Ok(mut known) = self.needs.lock() {
                    known.insert(key, needs);
                }
                Ok(())
            }
            other => Err(
                Error::failure("verify", format!("unknown OpenSearch method '{other}'"))
                    .service(SVC),
            ),
        }
    }

    fn restore_plan(&self, record: &ArtifactRecord) -> Vec<String> {
        let url = mask_userinfo(&self.settings.url);
        let indices: Vec<String> = record.counts.keys().cloned().collect();
        match record.method.as_str() {
            "snapshot" => vec![
                format!(
                    "check cluster health, path.repo and its free space (needs {}) before any store is changed",
                    record.details.get(UNPACKED_BYTES).and_then(|v| v.as_u64()).map_or("the artifact's size".to_string(), crate::report::size)
                ),
                format!("unpack {} under path.repo and register it read-only", record.file),
                format!("DELETE {url}/<index> for each index being replaced: {}", indices.join(", ")),
                format!("POST {url}/_snapshot/<repo>/snapshot/_restore (with global state and aliases)"),
                "wait until every restored index is at least yellow; unregister and remove the repository".into(),
            ],
            _ => vec![
                format!("on a cluster of another major.minor than {}: create each index definition once under a temporary name and remove it, before any change", record.server_version),
                "PUT templates and ingest pipelines".into(),
                format!("for each index ({}): DELETE, create with its settings (replicas 0, refresh off), _bulk load, put settings back, refresh, aliases", indices.join(", ")),
                "a data stream: DELETE it, PUT _data_stream/<name>, roll over to each backing index and _bulk create its documents through the stream".into(),
                "wait until every restored index is at least yellow".into(),
            ],
        }
    }

    async fn prepare_restore(
        &self,
        ctx: &RestoreContext<'_>,
        record: &ArtifactRecord,
    ) -> Result<()> {
        self.health("cluster health").await?;
        if record.method != "snapshot" {
            self.check_load_limits(ctx, record).await?;
            return self.check_index_definitions(ctx, record).await;
        }
        super::refuse_newer_backup(
            SVC,
            2,
            &record.server_version,
            &self.version().await?,
            "restore the snapshot into a cluster of that version or newer, or take a logical backup (--opensearch-method logical) where it came from",
        )?;
        let repo_root = self.restore_repository_root().await?;
        if self.target.compose().is_some() {
            // path.repo is inside the container; its unpack reports a full disk itself.
            return Ok(());
        }
        // Backups made before the size was recorded: the artifact's own size,
        // which the unpacked snapshot (already compressed segments) is not below.
        let needed = match record.details.get(UNPACKED_BYTES).and_then(|v| v.as_u64()) {
            Some(bytes) => bytes,
            None => std::fs::metadata(ctx.artifact)
                .map_err(|e| io_error(Some(SVC), "restore snapshot", ctx.artifact.display(), e))?
                .len(),
        };
        crate::error::require_free_space(
            Some(SVC),
            "restore snapshot",
            &repo_root,
            needed,
            "unpacking the snapshot under path.repo",
        )
    }

    async fn restore(&self, ctx: &RestoreContext<'_>, record: &ArtifactRecord) -> Result<()> {
        self.health("cluster health").await?;
        self.remove_dead_runs_repositories().await;
        match record.method.as_str() {
            "snapshot" => self.restore_snapshot(ctx, record).await?,
            _ => self.restore_logical(ctx).await?,
        }
        // Again: a killed run's snapshot restore still running in the
        // cluster kept its repository in use at the start; replacing the
        // same indices has ended it.
        self.remove_dead_runs_repositories().await;
        self.health("cluster health after restore")
            .await
            .map(|_| ())
    }

    async fn counts(&self, record: &ArtifactRecord) -> Result<BTreeMap<String, u64>> {
        let names: Vec<String> = record.counts.keys().cloned().collect();
        let mut counts = BTreeMap::new();
        for name in names {
            match self.count_docs(&name).await {
                Ok(n) => {
                    counts.insert(name, n);
                }
                Err(e) if e.message.contains("404") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(counts)
    }
}
