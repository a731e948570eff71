//! OpenSearch, three ways.
//!
//! * **repository**: a snapshot into a repository the cluster has registered
//!   (any type); the backup directory holds only where it is and what it
//!   holds, checked against the repository before a restore deletes anything.
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

use super::registry::Registered;
use super::{BackupContext, Method as _, RestoreContext, ServerInfo, Store, StoreBackup};
use crate::artifact::ArtifactSource;
use crate::error::{Error, Result};
use crate::manifest::ArtifactRecord;
use crate::process::mask_userinfo;
use crate::service::Service;
use crate::target::Target;
use settings::OpenSearchSettings;

/// The longest pause between two polls of a snapshot or a restore: a poll
/// is one light GET, and a longer pause is time the operator waits for
/// nothing (a 2 s cap added up to 1.6 s to a 1.7 s snapshot).
const POLL_AT_MOST_EVERY: Duration = Duration::from_millis(500);

mod content;
mod drill;
mod http;
pub(super) mod leftovers;
mod logical;
mod parts;
mod position;
mod repository;
mod sandbox;
mod selection;
pub mod settings;
mod snapshot;
mod switch;

use http::Http;
use logical::LoadNeeds;

const SVC: Service = Service::Opensearch;
/// Manifest detail of a snapshot artifact: the size of its uncompressed tar.
const UNPACKED_BYTES: &str = "unpacked_bytes";
/// Manifest detail: the data streams backed up ([`StreamInfo`]).
const DATA_STREAMS: &str = "data_streams";

/// How an OpenSearch backup is taken: the `method` of its manifest record,
/// and the `--opensearch-method` / `[opensearch] method` setting.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum OpenSearchMethod {
    /// [`repository`]: a snapshot into a repository the cluster has registered.
    Repository,
    /// [`snapshot`]: the snapshot API into `path.repo`, packed as a tar.
    Snapshot,
    /// [`logical`]: definitions and documents over HTTP, as NDJSON.
    Logical,
}

impl super::Method for OpenSearchMethod {
    const SERVICE: Service = SVC;

    fn manifest_method(self) -> &'static str {
        match self {
            OpenSearchMethod::Repository => "repository",
            OpenSearchMethod::Snapshot => "snapshot",
            OpenSearchMethod::Logical => "logical",
        }
    }
}

/// This store's line in the registry.
pub(crate) const REGISTERED: Registered = Registered {
    service: SVC,
    open: |settings| {
        Box::new(OpenSearch::new(
            settings.opensearch.clone(),
            settings.target.clone(),
        ))
    },
    #[cfg(test)]
    check_methods: crate::stores::method::check_methods::<OpenSearchMethod>,
};

pub struct OpenSearch {
    settings: OpenSearchSettings,
    target: Target,
    http: Http,
    /// What each verified logical export needs of the cluster, by path:
    /// found by the verification, compared with the cluster's limits before
    /// the restore changes anything.
    needs: std::sync::Mutex<BTreeMap<String, LoadNeeds>>,
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

    /// The cluster's status once it is not red. A red cluster is polled for
    /// `health_wait` (a primary initialising turns it red for a moment)
    /// before the run is refused with the red indices named.
    async fn health(&self, step: &str) -> Result<String> {
        let deadline = tokio::time::Instant::now() + self.settings.health_wait;
        loop {
            let health = self.http.get("_cluster/health", step).await?;
            let status = health["status"].as_str().unwrap_or("unknown").to_string();
            if status != "red" {
                return Ok(status);
            }
            if tokio::time::Instant::now() >= deadline {
                let red = self.red_indices(step).await?;
                return Err(Error::refused(
                    step,
                    format!(
                        "cluster {} is red{} and stayed red for {}",
                        health["cluster_name"],
                        if red.is_empty() {
                            String::new()
                        } else {
                            format!(" (primary shards unassigned in {})", red.join(", "))
                        },
                        crate::timeout::seconds(self.settings.health_wait)
                    ),
                )
                .service(SVC)
                .hint("fix the cluster first (GET _cluster/allocation/explain), then retry; a cluster that takes longer to recover can be waited for longer with IT_OPENSEARCH_HEALTH_WAIT (health_wait under [opensearch])"));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The indices whose status is red (at most ten named).
    async fn red_indices(&self, step: &str) -> Result<Vec<String>> {
        let health = self.http.get("_cluster/health?level=indices", step).await?;
        let mut red: Vec<String> = health["indices"]
            .as_object()
            .map(|indices| {
                indices
                    .iter()
                    .filter(|(_, index)| index["status"] == "red")
                    .map(|(name, _)| name.clone())
                    .collect()
            })
            .unwrap_or_default();
        red.sort();
        if red.len() > 10 {
            let more = red.len() - 10;
            red.truncate(10);
            red.push(format!("{more} more"));
        }
        Ok(red)
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
        if self.settings.method.is_none() {
            if let Some(name) = &self.settings.repository {
                return Ok((
                    OpenSearchMethod::Repository,
                    format!("the registered repository '{name}' is named"),
                ));
            }
        }
        if self.settings.method == Some(OpenSearchMethod::Repository) {
            return Ok((
                OpenSearchMethod::Repository,
                "chosen by the operator".into(),
            ));
        }
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
            delay = (delay * 2).min(POLL_AT_MOST_EVERY);
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
        match self.settings.method {
            Some(OpenSearchMethod::Repository) => self.plan_repository_backup(ctx, indices),
            None if self.settings.repository.is_some() => self.plan_repository_backup(ctx, indices),
            Some(OpenSearchMethod::Snapshot) => self.plan_snapshot_backup(ctx, indices),
            Some(OpenSearchMethod::Logical) => self.plan_logical_backup(ctx, indices),
            None => {
                let mut plan = vec!["method: snapshot when path.repo is configured and reachable from here, else logical".to_string()];
                plan.extend(
                    self.plan_snapshot_backup(ctx, indices)
                        .into_iter()
                        .map(|s| format!("snapshot: {s}")),
                );
                plan.extend(
                    self.plan_logical_backup(ctx, indices)
                        .into_iter()
                        .map(|s| format!("logical: {s}")),
                );
                plan
            }
        }
    }

    async fn backup(&self, ctx: &BackupContext<'_>) -> Result<StoreBackup> {
        let started_at = jiff::Timestamp::now().to_string();
        let server_version = self.version().await?;
        self.health("cluster health").await?;
        let (method, reason) = self.choose_method().await?;
        self.remove_dead_runs_leftovers().await;
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
        record.method = method.manifest_method().into();
        let indices = &selection;
        let artifact = match method {
            OpenSearchMethod::Repository => {
                record.format = "snapshot.json".into();
                self.backup_repository(ctx, indices, &mut record).await?
            }
            OpenSearchMethod::Snapshot => {
                record.format = self.settings.snapshot_compression.extension().into();
                self.backup_snapshot(ctx, indices, &mut record).await?
            }
            OpenSearchMethod::Logical => {
                record.format = "ndjson.zst".into();
                self.backup_logical(ctx, indices, &mut record).await?
            }
        };
        Ok(StoreBackup::finished(SVC, artifact, record))
    }

    fn kept_outside(&self, record: &ArtifactRecord) -> Option<String> {
        matches!(
            OpenSearchMethod::of(record),
            Ok(OpenSearchMethod::Repository)
        )
        .then(|| repository::describe_snapshot(record))
    }

    async fn remove_outside(&self, record: &ArtifactRecord) -> Result<Option<String>> {
        if self.kept_outside(record).is_none() {
            return Ok(None);
        }
        self.delete_repository_snapshot(record).await.map(Some)
    }

    async fn remove_claimed(&self, dir: &Path) -> Result<Vec<String>> {
        self.release_claims(dir).await
    }

    /// The repository method's restore checks its snapshot in the
    /// repository itself before it changes anything (and again before the
    /// deletes): not twice more beforehand.
    fn decodes_before_restoring(&self, record: &ArtifactRecord) -> bool {
        matches!(
            OpenSearchMethod::of(record),
            Ok(OpenSearchMethod::Repository)
        )
    }

    async fn check_artifact(
        &self,
        artifact: &ArtifactSource,
        record: &ArtifactRecord,
    ) -> Result<()> {
        match OpenSearchMethod::of(record)? {
            OpenSearchMethod::Repository => {
                self.check_repository_snapshot(artifact).await.map(|_| ())
            }
            OpenSearchMethod::Snapshot => snapshot::check_snapshot(artifact, record).await,
            OpenSearchMethod::Logical => self.check_logical_export(artifact, record).await,
        }
    }

    fn restore_plan(
        &self,
        record: &ArtifactRecord,
        selection: &super::RestoreSelection,
    ) -> Vec<String> {
        let mut plan = match OpenSearchMethod::of(record) {
            Ok(OpenSearchMethod::Repository) => self.plan_repository_restore(record),
            Ok(OpenSearchMethod::Snapshot) => self.plan_snapshot_restore(record),
            Ok(OpenSearchMethod::Logical) => self.plan_logical_restore(record),
            Err(e) => vec![e.message],
        };
        if !selection.is_everything() || selection.switch {
            // The whole snapshot's deletes and restore give way to the selection's.
            plan.retain(|line| !line.starts_with("DELETE ") && !line.starts_with("POST "));
            plan.extend(parts::plan(record, selection));
        }
        plan
    }

    async fn prepare_restore(
        &self,
        ctx: &RestoreContext<'_>,
        record: &ArtifactRecord,
    ) -> Result<()> {
        self.health("cluster health").await?;
        self.check_parts(record, ctx.selection).await?;
        // A killed run's probes would otherwise stay beside this run's.
        self.remove_dead_runs_leftovers().await;
        match OpenSearchMethod::of(record)? {
            OpenSearchMethod::Repository => self.prepare_repository_restore(ctx, record).await,
            OpenSearchMethod::Snapshot => self.prepare_snapshot_restore(ctx, record).await,
            OpenSearchMethod::Logical => self.prepare_logical_restore(ctx, record).await,
        }
    }

    async fn restore(&self, ctx: &RestoreContext<'_>, record: &ArtifactRecord) -> Result<()> {
        let method = OpenSearchMethod::of(record)?;
        self.health("cluster health").await?;
        // prepare_restore has just removed what killed runs left.
        match method {
            OpenSearchMethod::Repository => self.restore_repository(ctx, record).await?,
            OpenSearchMethod::Snapshot => self.restore_snapshot(ctx, record).await?,
            OpenSearchMethod::Logical => {
                self.restore_logical_selection(ctx.artifact, record, ctx.selection)
                    .await?
            }
        }
        // Again: a killed run's snapshot restore still running in the
        // cluster kept its repository in use at the start; replacing the
        // same indices has ended it.
        self.remove_dead_runs_leftovers().await;
        self.health("cluster health after restore")
            .await
            .map(|_| ())
    }

    /// `--indices` and `--rename` (see `parts`).
    fn restores_parts(&self) -> bool {
        true
    }

    fn holds_part(&self, record: &ArtifactRecord, name: &str) -> bool {
        record.counts.contains_key(name)
    }

    fn expected_counts(
        &self,
        record: &ArtifactRecord,
        selection: &super::RestoreSelection,
    ) -> BTreeMap<String, u64> {
        parts::expected_counts(record, selection)
    }

    async fn counts(&self, record: &ArtifactRecord) -> Result<BTreeMap<String, u64>> {
        let names: Vec<String> = record.counts.keys().cloned().collect();
        let mut counts = BTreeMap::new();
        for name in names {
            match self.count_docs(&name).await {
                Ok(n) => {
                    counts.insert(name, n);
                }
                Err(e) if e.http_status == Some(404) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(counts)
    }

    async fn content_digests(&self, record: &ArtifactRecord) -> Result<BTreeMap<String, String>> {
        self.index_digests(record).await
    }
}
