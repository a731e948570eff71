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

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::{BackupContext, RestoreContext, ServerInfo, Store, StoreBackup};
use crate::archive;
use crate::artifact::{self, ExportSender, PendingArtifact};
use crate::cli::OpenSearchMethod;
use crate::config::{ArchiveCompression, OpenSearchSettings};
use crate::error::{io_error, Error, Kind, Result};
use crate::manifest::ArtifactRecord;
use crate::process::{self, mask_userinfo, ToolCommand};
use crate::service::Service;
use crate::target::Target;
use crate::timeout::{Phase, Timeouts};

mod drill;
mod leftovers;

const SVC: Service = Service::Opensearch;
const LOGICAL_FORMAT: &str = "itbackup-opensearch-ndjson";
const LOGICAL_VERSION: u32 = 1;
/// Hits per search page; one page per slice is all we hold.
const PAGE_SIZE: usize = 2000;
/// A bulk request is sent once it holds this many bytes or documents.
const BULK_BYTES: usize = 8 << 20;
const BULK_DOCS: usize = 5000;
const KEEP_ALIVE: &str = "5m";
/// The longest line of the logical format: one record, which the export, the
/// verification and the restore each hold whole. The export refuses a
/// document that would make a longer line; the readers refuse such a line.
const MAX_LINE: usize = 256 << 20;
/// The restore's reader runs ahead of the loader by at most this many bytes
/// of lines (or one line, when a line is longer).
const READ_AHEAD_KIB: usize = 32 << 10;
/// OpenSearch's default `http.max_content_length`, when the node says none.
const DEFAULT_MAX_CONTENT_LENGTH: u64 = 100 << 20;
/// OpenSearch refuses longer document ids.
const MAX_ID_BYTES: usize = 512;
/// Manifest detail of a snapshot artifact: the size of its uncompressed tar.
const UNPACKED_BYTES: &str = "unpacked_bytes";
/// Index definitions tried at once under temporary names before a restore.
const DEFINITION_CHECKS: usize = 4;
/// Manifest detail: the data streams backed up ([`StreamInfo`]).
const DATA_STREAMS: &str = "data_streams";
/// Every `_bulk` answer is cut to what [`BulkAnswer`] reads: the server then
/// serialises a few bytes per document instead of its whole result.
const BULK_PATH: &str =
    "_bulk?pipeline=_none&filter_path=errors,items.*._id,items.*._index,items.*.status,items.*.error";
/// Index settings the cluster sets itself; an index is created without them.
const SERVER_SET: [&str; 7] = [
    "uuid",
    "creation_date",
    "version",
    "provided_name",
    "history",
    "resize",
    "verified_before_close",
];
/// Settings that are switched off while documents load and put back after.
const LOAD_TIME: [&str; 5] = [
    "number_of_replicas",
    "refresh_interval",
    "default_pipeline",
    "final_pipeline",
    "blocks",
];

/// Thin HTTP client for the REST API, cheap to clone into tasks.
#[derive(Clone)]
struct Http {
    base: String,
    client: reqwest::Client,
    username: Option<String>,
    password: Option<crate::config::Secret>,
    timeouts: Timeouts,
}

/// An HTTP failure: the status (if the server answered) and a readable message.
struct HttpError {
    status: Option<StatusCode>,
    message: String,
    unreachable: bool,
    /// Which bound ran out, when one did.
    timed_out: Option<Phase>,
}

/// The bound a reqwest error ran out of, if any.
fn timed_out(e: &reqwest::Error) -> Option<Phase> {
    match (e.is_timeout(), e.is_connect()) {
        (true, true) => Some(Phase::Connect),
        (true, false) => Some(Phase::Idle),
        _ => None,
    }
}

impl Http {
    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let url = format!("{}/{}", self.base, path.trim_start_matches('/'));
        let builder = self.client.request(method, url);
        match &self.username {
            Some(user) => builder.basic_auth(user, self.password.as_ref().map(|p| p.expose())),
            None => builder,
        }
    }

    async fn send_raw(
        &self,
        builder: reqwest::RequestBuilder,
    ) -> std::result::Result<Value, HttpError> {
        let bytes = self.send_bytes(builder).await?;
        Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// Send; the body of a successful answer as bytes, any other answer as an error.
    async fn send_bytes(
        &self,
        builder: reqwest::RequestBuilder,
    ) -> std::result::Result<bytes::Bytes, HttpError> {
        let response = builder.send().await.map_err(|e| HttpError {
            status: None,
            unreachable: e.is_connect() || e.is_timeout(),
            timed_out: timed_out(&e),
            message: mask_userinfo(&e.to_string()),
        })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| HttpError {
            status: Some(status),
            unreachable: false,
            timed_out: timed_out(&e),
            message: e.to_string(),
        })?;
        if status.is_success() {
            return Ok(bytes);
        }
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let reason = body
            .pointer("/error/reason")
            .or_else(|| body.pointer("/error"))
            .map(|r| r.to_string())
            .unwrap_or_else(|| {
                String::from_utf8_lossy(&bytes[..bytes.len().min(500)]).into_owned()
            });
        Err(HttpError {
            status: Some(status),
            unreachable: false,
            timed_out: None,
            message: format!("HTTP {status}: {reason}"),
        })
    }

    fn error(&self, step: &str, err: HttpError) -> Error {
        let base = mask_userinfo(&self.base);
        if let Some(phase) = err.timed_out {
            return self.timeouts.error(
                Some(SVC),
                step,
                phase,
                &format!("OpenSearch at {base}"),
                &format!("{base}: "),
            );
        }
        let mut e = Error::failure(step, err.message).service(SVC);
        e.http_status = err.status.map(|s| s.as_u16());
        if err.unreachable {
            e.of_kind(Kind::Unreachable).hint(format!("is OpenSearch running and reachable at {base}? check `docker compose ps` and OPENSEARCH_URL"))
        } else if err.status == Some(StatusCode::UNAUTHORIZED)
            || err.status == Some(StatusCode::FORBIDDEN)
        {
            e.of_kind(Kind::Authentication).hint("the cluster refused our credentials: check OPENSEARCH_USER and OPENSEARCH_PASSWORD")
        } else if err.status.is_some_and(|s| !s.is_success()) {
            e.of_kind(Kind::StoreRefused)
        } else {
            e
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        step: &str,
    ) -> Result<Value> {
        let mut builder = self.request(method, path);
        if let Some(body) = body {
            builder = builder.json(body);
        }
        self.send_raw(builder)
            .await
            .map_err(|e| self.error(step, e))
    }

    async fn get(&self, path: &str, step: &str) -> Result<Value> {
        self.call(Method::GET, path, None, step).await
    }

    /// GET of a listing endpoint; a 404 means the list is empty. OpenSearch answers
    /// `GET _ingest/pipeline` with `404 {}` when no pipeline exists.
    async fn get_listing(&self, path: &str, step: &str) -> Result<Value> {
        match self.send_raw(self.request(Method::GET, path)).await {
            Ok(body) => Ok(body),
            Err(HttpError {
                status: Some(StatusCode::NOT_FOUND),
                ..
            }) => Ok(json!({})),
            Err(e) => Err(self.error(step, e)),
        }
    }

    /// DELETE that treats "not there" as done.
    async fn delete_if_present(&self, path: &str, step: &str) -> Result<()> {
        match self.send_raw(self.request(Method::DELETE, path)).await {
            Ok(_) => Ok(()),
            Err(HttpError {
                status: Some(StatusCode::NOT_FOUND),
                ..
            }) => Ok(()),
            Err(e) => Err(self.error(step, e)),
        }
    }
}

pub struct OpenSearch {
    settings: OpenSearchSettings,
    target: Target,
    http: Http,
    /// What each verified logical export needs of the cluster, by path:
    /// found by the verification, compared with the cluster's limits before
    /// the restore changes anything.
    needs: std::sync::Mutex<BTreeMap<PathBuf, LoadNeeds>>,
}

/// The largest `_bulk` entry (action line and source) that loading an export
/// takes: no request can be smaller than the entry it carries.
#[derive(Debug, Clone, Default)]
struct LoadNeeds {
    largest_entry: u64,
    /// Where it is: line number, index and document id.
    line: usize,
    index: String,
    id: String,
}

/// One line of the logical format. Fields not used by a line's type are absent.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Line {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    index: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    routing: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    docs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<u32>,
}

impl Line {
    fn new(kind: &str) -> Self {
        Line {
            kind: kind.into(),
            ..Default::default()
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec(self).expect("line serialises");
        bytes.push(b'\n');
        bytes
    }
}

/// A `doc` line as the export writes it: `Line`'s document fields, borrowed
/// from the search page instead of copied into a `Line`.
#[derive(Serialize)]
struct DocLine<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    index: &'a str,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    routing: Option<&'a str>,
    source: &'a RawValue,
}

/// A search hit, borrowed from its page: `_source` stays the page's own bytes.
#[derive(Deserialize)]
struct Hit<'a> {
    #[serde(rename = "_id", borrow)]
    id: Cow<'a, str>,
    #[serde(rename = "_routing", default, borrow)]
    routing: Option<Cow<'a, str>>,
    #[serde(rename = "_source", default, borrow)]
    source: Option<&'a RawValue>,
    /// Only the last hit's is decoded (for `search_after`).
    #[serde(default, borrow)]
    sort: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct Hits<'a> {
    #[serde(borrow, default)]
    hits: Vec<Hit<'a>>,
}

#[derive(Deserialize)]
struct SearchPage<'a> {
    #[serde(default)]
    pit_id: Option<String>,
    #[serde(default, rename = "_scroll_id")]
    scroll_id: Option<String>,
    #[serde(borrow, default)]
    hits: Hits<'a>,
}

impl<'a> SearchPage<'a> {
    fn parse(bytes: &'a [u8], step: &str) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| {
            Error::failure(step, format!("unexpected search answer: {e}")).service(SVC)
        })
    }
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
            return Err(Error::refused(step, format!("cluster {} is red", health["cluster_name"]))
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

    /// What to back up, by the `--indices` patterns or everything: plain
    /// indices, and data streams whole (their backing indices in generation
    /// order). Whatever a pattern matches but the backup does not take
    /// (closed, hidden or dot-prefixed indices) is listed as left out, so that
    /// nothing is skipped silently.
    async fn select(&self) -> Result<Selection> {
        let step = "list indices";
        let named = self.settings.indices.as_deref();
        let pattern = named.unwrap_or("*");
        // `_resolve/index` tells indices, aliases and data streams apart,
        // hidden and closed ones included.
        let resolved = self
            .http
            .get(
                &format!("_resolve/index/{pattern}?expand_wildcards=all"),
                step,
            )
            .await?;
        let rows = self
            .http
            .get(
                &format!("_cat/indices/{pattern}?format=json&bytes=b&h=index,pri,pri.store.size&expand_wildcards=all"),
                step,
            )
            .await?;
        let sizes: BTreeMap<String, (usize, u64)> = rows
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|row| {
                let primaries = row["pri"]
                    .as_str()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(1);
                let bytes = row["pri.store.size"]
                    .as_str()
                    .and_then(|b| b.parse().ok())
                    .unwrap_or(0);
                Some((row["index"].as_str()?.to_string(), (primaries, bytes)))
            })
            .collect();
        let info = |name: &str| {
            let (primaries, primary_bytes) = sizes.get(name).copied().unwrap_or((1, 0));
            IndexInfo {
                name: name.to_string(),
                primaries,
                primary_bytes,
            }
        };
        // Names given literally (not through a wildcard) are taken even when
        // hidden or dot-prefixed; so are the indices of an alias named so.
        let mut literal: std::collections::BTreeSet<String> = named
            .into_iter()
            .flat_map(|n| n.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty() && !p.contains('*') && !p.starts_with('-'))
            .map(String::from)
            .collect();
        for alias in resolved["aliases"].as_array().into_iter().flatten() {
            if literal.contains(alias["name"].as_str().unwrap_or_default()) {
                for index in alias["indices"].as_array().into_iter().flatten() {
                    literal.extend(index.as_str().map(String::from));
                }
            }
        }
        let mut stream_names: std::collections::BTreeSet<String> = resolved["data_streams"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["name"].as_str().map(String::from))
            .collect();
        let mut selection = Selection::default();
        for index in resolved["indices"].as_array().into_iter().flatten() {
            let Some(name) = index["name"].as_str() else {
                continue;
            };
            let attributes: Vec<&str> = index["attributes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str())
                .collect();
            // A backing index goes with its data stream, whole.
            if let Some(stream) = index["data_stream"].as_str() {
                stream_names.insert(stream.to_string());
                continue;
            }
            let reason = if attributes.contains(&"closed") {
                Some("closed: its documents cannot be read; open it (POST <index>/_open) to back it up")
            } else if literal.contains(name) {
                None
            } else if attributes.contains(&"hidden") || attributes.contains(&"system") {
                Some("hidden or system index: name it in --indices to back it up")
            } else if named.is_none() && name.starts_with('.') {
                Some("dot-prefixed (system or plugin) index: name it in --indices to back it up")
            } else {
                None
            };
            match reason {
                Some(reason) => selection.left_out.push(LeftOut {
                    name: name.to_string(),
                    reason: reason.to_string(),
                }),
                None => selection.indices.push(info(name)),
            }
        }
        for name in stream_names {
            let answer = self
                .http
                .get(&format!("_data_stream/{name}"), "list data streams")
                .await?;
            let stream = &answer["data_streams"][0];
            let indices: Vec<IndexInfo> = stream["indices"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["index_name"].as_str())
                .map(info)
                .collect();
            selection.streams.push(StreamInfo {
                timestamp_field: stream["timestamp_field"]["name"]
                    .as_str()
                    .unwrap_or("@timestamp")
                    .to_string(),
                generation: stream["generation"]
                    .as_u64()
                    .unwrap_or(indices.len() as u64),
                template: stream["template"].as_str().map(String::from),
                indices,
                name,
            });
        }
        selection.indices.sort_by(|a, b| a.name.cmp(&b.name));
        if !selection.left_out.is_empty() {
            let names: Vec<&str> = selection.left_out.iter().map(|l| l.name.as_str()).collect();
            tracing::warn!(service = %SVC, left_out = %names.join(", "), "indices left out of the backup (named in the manifest's details.left_out)");
        }
        Ok(selection)
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

    /// Wait for the snapshot `repo`/snapshot to end, polling (a snapshot of
    /// a large cluster takes longer than any idle bound); its final state.
    async fn wait_for_snapshot(&self, repo: &str, step: &str) -> Result<Value> {
        let mut delay = Duration::from_millis(200);
        loop {
            let listed = self
                .http
                .get(&format!("_snapshot/{repo}/snapshot"), step)
                .await?;
            let snapshot = listed["snapshots"][0].clone();
            match snapshot["state"].as_str() {
                Some("IN_PROGRESS") | Some("STARTED") | Some("INIT") => {}
                _ => return Ok(snapshot),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    // ---- snapshot ---------------------------------------------------------

    async fn backup_snapshot(
        &self,
        ctx: &BackupContext<'_>,
        indices: &Selection,
        record: &mut ArtifactRecord,
    ) -> Result<PendingArtifact> {
        let repo_root = self.path_repo().await?.expect("chosen only with path.repo");
        if self.target.compose().is_none() {
            // A new repository holds a full copy: refuse now rather than let
            // OpenSearch fill the disk half-way through the snapshot.
            crate::error::require_free_space(
                Some(SVC),
                "snapshot",
                &repo_root,
                indices.concrete().map(|i| i.primary_bytes).sum(),
                "the snapshot (a full copy of the indices' primary shards under path.repo)",
            )?;
        }
        let repo = format!(
            "itbackup-{}-{}",
            ctx.timestamp.to_ascii_lowercase(),
            std::process::id()
        );
        let location = repo_root.join(&repo);
        let result = self
            .take_snapshot(ctx, &repo, &location, indices, record)
            .await;
        self.remove_repository(&repo, &location).await;
        result
    }

    async fn take_snapshot(
        &self,
        ctx: &BackupContext<'_>,
        repo: &str,
        location: &Path,
        selection: &Selection,
        record: &mut ArtifactRecord,
    ) -> Result<PendingArtifact> {
        let step = "snapshot";
        self.http
            .call(
                Method::PUT,
                &format!("_snapshot/{repo}"),
                Some(&repository_body(json!({"location": location, "compress": true}))),
                "register snapshot repository",
            )
            .await
            .map_err(|e| e.hint("verify disk space and that OpenSearch may create files under path.repo (the runbook's /usr/share/opensearch/data)"))?;
        // Data streams by name: the snapshot then holds them as data streams
        // (with their backing indices), which is how they are restored.
        let names: Vec<String> = selection
            .indices
            .iter()
            .map(|i| i.name.clone())
            .chain(selection.streams.iter().map(|s| s.name.clone()))
            .collect();
        let concrete = selection.concrete_names();
        let before = self.counts_of(&concrete).await?;
        let body = json!({
            "indices": if names.is_empty() { "-*".to_string() } else { names.join(",") },
            "include_global_state": true,
            "ignore_unavailable": false,
            "partial": false,
        });
        // Started, then polled: waiting for completion in one request would
        // be one long silence, which the idle bound would cut.
        self.http
            .call(
                Method::PUT,
                &format!("_snapshot/{repo}/snapshot"),
                Some(&body),
                step,
            )
            .await
            .map_err(|e| {
                e.hint("verify disk space and that OpenSearch may write under path.repo")
            })?;
        let answer = self.wait_for_snapshot(repo, step).await?;
        let state = answer["state"].as_str().unwrap_or("unknown");
        let failed = answer["shards"]["failed"].as_u64().unwrap_or(0);
        if state != "SUCCESS" || failed > 0 {
            return Err(Error::refused(step, format!("snapshot ended {state} with {failed} failed shard(s): {}", answer["failures"]))
                .service(SVC)
                .hint("verify disk space and that the opensearch container can create files under /usr/share/opensearch/data"));
        }
        let after = self.counts_of(&concrete).await?;
        record_stable_counts(record, &before, &after);
        let plain: Vec<&str> = selection.indices.iter().map(|i| i.name.as_str()).collect();
        record
            .details
            .insert("snapshot_indices".into(), json!(plain));
        record.details.insert(
            "snapshot".into(),
            json!({"repository": repo, "name": "snapshot", "include_global_state": true}),
        );

        let compression = self.settings.snapshot_compression;
        let file = format!("opensearch_{}.{}", ctx.timestamp, compression.extension());
        let dir = ctx.dir.to_path_buf();
        let source = location.to_path_buf();
        let step = "pack snapshot";
        let packed = if let Target::Compose(compose) = &self.target {
            // The repository is inside the container: stream it out with tar.
            let tar = compose.exec(
                SVC,
                ToolCommand::new("tar")
                    .arg("-C")
                    .arg(&source)
                    .args(["-cf", "-", "."]),
            );
            super::blocking(SVC, move || {
                let mut running = tar
                    .spawn(std::process::Stdio::null(), std::process::Stdio::piped())
                    .map_err(|e| process::spawn_failed(SVC, step, &tar.program, e))?;
                let mut stdout = running.child.stdout.take().expect("stdout is piped");
                let packed = archive::pack_stream(&mut stdout, &dir, &file, compression);
                drop(stdout);
                let finished = running
                    .wait()
                    .map_err(|e| Error::failure(step, e.to_string()).service(SVC))?;
                let packed =
                    packed.map_err(|e| io_error(Some(SVC), step, dir.join(&file).display(), e))?;
                if let Err(e) = finished.check(SVC, step) {
                    packed.pending.discard();
                    return Err(e);
                }
                Ok(packed)
            })
            .await?
        } else {
            super::blocking(SVC, move || {
                archive::pack_dir(&source, &dir, &file, compression)
                    .map_err(|e| io_error(Some(SVC), step, dir.join(&file).display(), e))
            })
            .await?
        };
        // What the restore will unpack under path.repo, for its free-space check.
        record
            .details
            .insert(UNPACKED_BYTES.into(), json!(packed.tar_bytes));
        Ok(packed.pending)
    }

    /// Whether this process can reach `path.repo`: through the container in
    /// compose mode, on this host's filesystem otherwise.
    fn reaches(&self, repo: &Path) -> bool {
        self.target.compose().is_some() || writable_dir(repo)
    }

    /// A temporary repository was only a vehicle: unregister it and remove
    /// its files, whatever happened while it was used (errors are ignored).
    async fn remove_repository(&self, repo: &str, location: &Path) {
        let _ = self
            .http
            .delete_if_present(&format!("_snapshot/{repo}"), "remove snapshot repository")
            .await;
        match &self.target {
            Target::Compose(compose) => {
                let rm = compose.exec(SVC, ToolCommand::new("rm").arg("-rf").arg(location));
                let _ = super::blocking(SVC, move || {
                    process::output(&rm, SVC, "remove snapshot files").map(|_| ())
                })
                .await;
            }
            Target::Local => {
                let _ = std::fs::remove_dir_all(location);
            }
        }
    }

    async fn counts_of(&self, names: &[String]) -> Result<BTreeMap<String, u64>> {
        let mut counts = BTreeMap::new();
        for name in names {
            counts.insert(name.clone(), self.count_docs(name).await?);
        }
        Ok(counts)
    }

    async fn restore_snapshot(
        &self,
        ctx: &RestoreContext<'_>,
        record: &ArtifactRecord,
    ) -> Result<()> {
        let repo_root = self.restore_repository_root().await?;
        let repo = format!("itbackup-restore-{}", std::process::id());
        let location = repo_root.join(&repo);
        let result = self
            .unpack_and_restore(ctx, record, &repo, &repo_root, &location)
            .await;
        self.remove_repository(&repo, &location).await;
        result
    }

    /// A logical export loads into other clusters and versions, which is
    /// what it is for; but a cluster of another version, or one without a
    /// plugin an index used (an analyzer, a field type), or with other
    /// analysis files, may refuse an index's settings or mappings — and the
    /// restore deletes each index just before it creates it. So every
    /// distinct index definition is first created once under a temporary
    /// name and removed, before anything is replaced, whatever the versions.
    async fn check_index_definitions(
        &self,
        ctx: &RestoreContext<'_>,
        record: &ArtifactRecord,
    ) -> Result<()> {
        let server_version = self.version().await?;
        let step = "check index definitions";
        let path = ctx.artifact.to_path_buf();
        let definitions = super::blocking(SVC, move || {
            let mut definitions = Vec::new();
            let mut failure = None;
            crate::ndjson::read_lines(&path, SVC, MAX_LINE, |line| match line {
                // Only index lines are decoded; documents are skipped unparsed.
                Ok((_, bytes)) if bytes.starts_with(br#"{"type":"index","#) => {
                    match serde_json::from_slice::<Line>(bytes) {
                        Ok(line) => {
                            definitions.push((
                                line.name.unwrap_or_default(),
                                line.body.unwrap_or(Value::Null),
                            ));
                            true
                        }
                        Err(e) => {
                            failure = Some(Error::failure(step, e.to_string()).service(SVC));
                            false
                        }
                    }
                }
                Ok(_) => true,
                Err(e) => {
                    failure = Some(e);
                    false
                }
            });
            failure.map_or(Ok(definitions), Err)
        })
        .await?;
        // Daily indices share one definition: each distinct body is tried once.
        let mut seen = HashSet::new();
        let distinct: Vec<(String, Value)> = definitions
            .into_iter()
            .filter_map(|(name, meta)| {
                let (body, _) = creation_body(&meta);
                seen.insert(body.to_string()).then_some((name, body))
            })
            .collect();
        tracing::info!(service = %SVC, definitions = distinct.len(), backup_version = %record.server_version, %server_version, "trying each index definition under a temporary name first");
        let tries: Vec<_> = distinct
            .into_iter()
            .enumerate()
            .map(|(number, (name, body))| {
                let http = self.http.clone();
                Box::pin(async move {
                    let probe = format!("itbackup-check-{}-{number}", std::process::id());
                    let created = http.call(Method::PUT, &probe, Some(&body), step).await;
                    let _ = http.delete_if_present(&probe, step).await;
                    created.map(|_| ()).map_err(|e| (name, e))
                })
            })
            .collect();
        // Every try runs to its end (a dropped one would leave its index).
        let refused = futures::stream::iter(tries)
            .buffer_unordered(DEFINITION_CHECKS)
            .filter_map(|tried| async move { tried.err() })
            .collect::<Vec<_>>()
            .await;
        match refused.into_iter().next() {
            None => Ok(()),
            Some((name, e)) => Err(Error::new(
                e.kind,
                step,
                format!(
                    "this cluster (OpenSearch {server_version}) refuses the settings or mappings of index {name} from OpenSearch {}: {}",
                    record.server_version, e.message
                ),
            )
            .service(SVC)
            .hint("restore into a cluster that accepts them (the same version, with the same plugins and analysis files), or adapt the index definition; nothing was changed")),
        }
    }

    /// `path.repo`, where a snapshot restore unpacks its artifact; an error
    /// when the cluster has none or this process cannot write there.
    async fn restore_repository_root(&self) -> Result<PathBuf> {
        let step = "restore snapshot";
        let repo_root = self.path_repo().await?.ok_or_else(|| {
            Error::failure(step, "the cluster has no path.repo, which a snapshot restore needs")
                .service(SVC)
                .hint("add path.repo to opensearch.yml and restart OpenSearch, or restore a logical backup")
        })?;
        if !self.reaches(&repo_root) {
            return Err(Error::failure(
                step,
                format!(
                    "path.repo {} is not reachable from here",
                    repo_root.display()
                ),
            )
            .service(SVC)
            .hint("run the restore where path.repo can be written, and verify its disk space"));
        }
        Ok(repo_root)
    }

    async fn unpack_and_restore(
        &self,
        ctx: &RestoreContext<'_>,
        record: &ArtifactRecord,
        repo: &str,
        repo_root: &Path,
        location: &Path,
    ) -> Result<()> {
        let step = "restore snapshot";
        let compression = snapshot_compression(record)?;
        let (source, dest, owner) = (
            ctx.artifact.to_path_buf(),
            location.to_path_buf(),
            repo_root.to_path_buf(),
        );
        if let Target::Compose(compose) = &self.target {
            // Into the container, as its own user, through tar on stdin. The
            // archive was checked entry by entry before the restore began.
            let untar = compose.exec(
                SVC,
                ToolCommand::new("sh")
                    .args([
                        "-c",
                        "rm -rf \"$0\" && mkdir -p \"$0\" && tar -C \"$0\" -xf -",
                    ])
                    .arg(&dest),
            );
            super::blocking(SVC, move || {
                let mut reader = archive::open(&source, compression)
                    .map_err(|e| io_error(Some(SVC), "unpack snapshot", source.display(), e))?;
                process::run_feeding(&untar, SVC, "unpack snapshot", |stdin| {
                    std::io::copy(&mut reader, stdin).map(|_| ())
                })
                .map(|_| ())
            })
            .await?;
        } else {
            super::blocking(SVC, move || {
                let _ = std::fs::remove_dir_all(&dest);
                let reader = archive::open(&source, compression)
                    .map_err(|e| io_error(Some(SVC), "unpack snapshot", source.display(), e))?;
                archive::unpack(reader, &dest)
                    .map_err(|e| io_error(Some(SVC), "unpack snapshot", dest.display(), e))?;
                archive::chown_tree_like(&dest, &owner)
                    .map_err(|e| io_error(Some(SVC), "unpack snapshot", dest.display(), e))
            })
            .await?;
        }
        self.http
            .call(
                Method::PUT,
                &format!("_snapshot/{repo}"),
                Some(&repository_body(
                    json!({"location": location, "readonly": true}),
                )),
                "register snapshot repository",
            )
            .await?;
        let listed = self
            .http
            .get(&format!("_snapshot/{repo}/_all"), step)
            .await?;
        let snapshot = listed["snapshots"][0]["snapshot"].as_str().ok_or_else(|| {
            Error::failure(step, "the unpacked repository holds no snapshot")
                .service(SVC)
                .hint("the artifact is not a snapshot backup; use another backup")
        })?;
        let strings = |value: &Value| -> Vec<String> {
            value
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        };
        let streams = strings(&listed["snapshots"][0]["data_streams"]);
        let in_snapshot = strings(&listed["snapshots"][0]["indices"]);
        // Indices named in --indices at backup time, dot-prefixed or not;
        // older backups did not record them and took no dot-prefixed ones.
        let selected = strings(
            &record
                .details
                .get("snapshot_indices")
                .cloned()
                .unwrap_or_default(),
        );
        let backing = |name: &str| {
            streams
                .iter()
                .any(|s| name.starts_with(&format!(".ds-{s}-")))
        };
        let (backing_indices, indices): (Vec<String>, Vec<String>) = in_snapshot
            .into_iter()
            .filter(|name| !name.starts_with('.') || backing(name) || selected.contains(name))
            .partition(|name| backing(name));
        // Replace, not merge: what is being restored goes first. A data
        // stream is deleted with its backing indices; plain indices under a
        // backing index's name (left by a restore that did not know data
        // streams) go too, or the stream could not be restored.
        for stream in &streams {
            self.http
                .delete_if_present(
                    &format!("_data_stream/{stream}"),
                    "delete data stream being replaced",
                )
                .await?;
        }
        for index in indices.iter().chain(&backing_indices).chain(&streams) {
            self.http
                .delete_if_present(index, "delete index being replaced")
                .await?;
        }
        let mut names = indices.clone();
        names.extend(streams.iter().cloned());
        let body = json!({
            "indices": if names.is_empty() { "-*".to_string() } else { names.join(",") },
            "include_global_state": true,
            "include_aliases": true,
        });
        // Started, then polled through the indices' health (see wait_healthy):
        // a restore copies whole shards, longer than any idle bound.
        self.http
            .call(
                Method::POST,
                &format!("_snapshot/{repo}/{snapshot}/_restore"),
                Some(&body),
                step,
            )
            .await?;
        let mut restored = indices;
        restored.extend(backing_indices);
        self.wait_healthy(&restored, step).await
    }

    // ---- logical ------------------------------------------------------------

    async fn backup_logical(
        &self,
        ctx: &BackupContext<'_>,
        indices: &Selection,
        record: &mut ArtifactRecord,
    ) -> Result<PendingArtifact> {
        let file = format!("opensearch_{}.ndjson.zst", ctx.timestamp);
        // A chunk is a page (PAGE_SIZE documents, ~2 MB of ~1 KB ones): 4
        // of them bound the queue to ~10 MB (16 held up to ~40 MB, no faster).
        artifact::export_zstd(ctx.dir, file, SVC, 4, |tx| async move {
            self.export_all(indices, &tx, record).await
        })
        .await
    }

    async fn export_all(
        &self,
        selection: &Selection,
        tx: &ExportSender,
        record: &mut ArtifactRecord,
    ) -> Result<()> {
        let mut header = Line::new("header");
        header.format = Some(LOGICAL_FORMAT.into());
        header.version = Some(LOGICAL_VERSION);
        header.body = Some(json!({"cluster_version": record.server_version}));
        tx.send(header.to_bytes()).await?;

        // Templates and pipelines first: restore puts them back before any index.
        for (kind, path, key) in [
            (
                "component_template",
                "_component_template",
                "component_templates",
            ),
            ("index_template", "_index_template", "index_templates"),
        ] {
            let all = self.http.get_listing(path, "export templates").await?;
            for item in all[key].as_array().into_iter().flatten() {
                let mut line = Line::new(kind);
                line.name = item["name"].as_str().map(String::from);
                line.body = Some(item[kind].clone());
                tx.send(line.to_bytes()).await?;
            }
        }
        let legacy = self
            .http
            .get_listing("_template", "export templates")
            .await?;
        for (name, body) in legacy.as_object().into_iter().flatten() {
            let mut line = Line::new("legacy_template");
            line.name = Some(name.clone());
            line.body = Some(body.clone());
            tx.send(line.to_bytes()).await?;
        }
        let pipelines = self
            .http
            .get_listing("_ingest/pipeline", "export pipelines")
            .await?;
        for (id, body) in pipelines.as_object().into_iter().flatten() {
            let mut line = Line::new("pipeline");
            line.name = Some(id.clone());
            line.body = Some(body.clone());
            tx.send(line.to_bytes()).await?;
        }

        let mut total = 0;
        for index in &selection.indices {
            total += self.export_index(index, tx, record).await?;
        }
        // A data stream: its line, then its backing indices oldest first, so
        // that the restore can recreate the stream and roll it over to each.
        for stream in &selection.streams {
            let mut line = Line::new("data_stream");
            line.name = Some(stream.name.clone());
            line.body = Some(json!({
                "timestamp_field": stream.timestamp_field,
                "generation": stream.generation,
                "template": stream.template,
                "indices": stream.indices.iter().map(|i| &i.name).collect::<Vec<_>>(),
            }));
            tx.send(line.to_bytes()).await?;
            for index in &stream.indices {
                total += self.export_index(index, tx, record).await?;
            }
        }
        let mut end = Line::new("end");
        end.docs = Some(total);
        tx.send(end.to_bytes()).await
    }

    /// One index: its definition, its documents, its end record; answers its
    /// document count.
    async fn export_index(
        &self,
        index: &IndexInfo,
        tx: &ExportSender,
        record: &mut ArtifactRecord,
    ) -> Result<u64> {
        let meta = self.http.get(&index.name, "export index settings").await?;
        let meta = &meta[&index.name];
        let mut line = Line::new("index");
        line.name = Some(index.name.clone());
        line.body = Some(json!({
            "settings": meta["settings"],
            "mappings": meta["mappings"],
            "aliases": meta["aliases"],
        }));
        tx.send(line.to_bytes()).await?;
        let docs = self.export_documents(index, tx).await?;
        let mut end = Line::new("index_end");
        end.name = Some(index.name.clone());
        end.docs = Some(docs);
        tx.send(end.to_bytes()).await?;
        record.counts.insert(index.name.clone(), docs);
        tracing::info!(index = %index.name, docs, "opensearch: exported index");
        Ok(docs)
    }

    /// Every document of one index, in parallel slices over one point in time.
    async fn export_documents(&self, index: &IndexInfo, tx: &ExportSender) -> Result<u64> {
        let step = format!("export documents of {}", index.name);
        self.http
            .call(
                Method::POST,
                &format!("{}/_refresh", index.name),
                None,
                &step,
            )
            .await?;
        let pit = self
            .http
            .send_raw(self.http.request(
                Method::POST,
                &format!(
                    "{}/_search/point_in_time?keep_alive={KEEP_ALIVE}",
                    index.name
                ),
            ))
            .await;
        match pit {
            Ok(answer) if answer["pit_id"].is_string() => {
                let pit_id = answer["pit_id"].as_str().unwrap_or_default().to_string();
                let counted = self.export_pit(index, &pit_id, tx, &step).await;
                let _ = self
                    .http
                    .call(
                        Method::DELETE,
                        "_search/point_in_time",
                        Some(&json!({"pit_id": [pit_id]})),
                        &step,
                    )
                    .await;
                counted
            }
            // Clusters without point-in-time search: sliced scroll, which reads a snapshot too.
            _ => {
                let slices = self.settings.slices.min(index.primaries.max(1));
                let jobs = (0..slices)
                    .map(|slice| self.export_slice_scroll(&index.name, slice, slices, tx, &step));
                Ok(futures::future::try_join_all(jobs).await?.into_iter().sum())
            }
        }
    }

    /// OpenSearch has no `_shard_doc` tie-breaker, and `_doc` is only unique within
    /// a shard: so there is one slice per primary shard (slicing splits by shard
    /// first), paged with `search_after` on `_doc`, `slices` of them at a time.
    /// The total is checked against the point in time's own count.
    async fn export_pit(
        &self,
        index: &IndexInfo,
        pit_id: &str,
        tx: &ExportSender,
        step: &str,
    ) -> Result<u64> {
        use futures::stream::{StreamExt, TryStreamExt};
        let slices = index.primaries.max(1);
        let exported: u64 = futures::stream::iter(0..slices)
            .map(|slice| self.export_slice_pit(&index.name, pit_id, slice, slices, tx, step))
            .buffer_unordered(self.settings.slices)
            .try_fold(0, |sum, n| async move { Ok(sum + n) })
            .await?;
        let body = json!({"size": 0, "track_total_hits": true, "pit": {"id": pit_id, "keep_alive": KEEP_ALIVE}});
        let total = self
            .http
            .call(Method::POST, "_search", Some(&body), step)
            .await?;
        let expected = total["hits"]["total"]["value"].as_u64().unwrap_or(exported);
        if expected != exported {
            return Err(Error::failure(step, format!("read {exported} documents of {} but its point in time holds {expected}", index.name))
                .service(SVC)
                .hint("use --opensearch-method snapshot, or report this: the cluster's paging did not return every document"));
        }
        Ok(exported)
    }

    async fn export_slice_pit(
        &self,
        index: &str,
        pit_id: &str,
        slice: usize,
        slices: usize,
        tx: &ExportSender,
        step: &str,
    ) -> Result<u64> {
        let mut pit_id = pit_id.to_string();
        let mut after: Option<Vec<Value>> = None;
        let mut count = 0;
        loop {
            let mut body = json!({
                "size": PAGE_SIZE,
                "pit": {"id": pit_id, "keep_alive": KEEP_ALIVE},
                "sort": [{"_doc": "asc"}],
                "track_total_hits": false,
            });
            if slices > 1 {
                body["slice"] = json!({"id": slice, "max": slices});
            }
            if let Some(after) = &after {
                body["search_after"] = json!(after);
            }
            let bytes = self.search_page("_search", &body, step).await?;
            let page = SearchPage::parse(&bytes, step)?;
            if let Some(id) = page.pit_id.clone() {
                pit_id = id;
            }
            let Some(last) = page.hits.hits.last() else {
                break;
            };
            let sort = last
                .sort
                .map(|raw| serde_json::from_str::<Vec<Value>>(raw.get()));
            after = match sort {
                Some(Ok(sort)) => Some(sort),
                _ => {
                    return Err(
                        Error::failure(step, "search hits came back without sort values")
                            .service(SVC),
                    )
                }
            };
            count += self.send_hits(index, &page.hits.hits, tx, step).await?;
        }
        Ok(count)
    }

    async fn export_slice_scroll(
        &self,
        index: &str,
        slice: usize,
        slices: usize,
        tx: &ExportSender,
        step: &str,
    ) -> Result<u64> {
        let mut body = json!({"size": PAGE_SIZE, "sort": ["_doc"]});
        if slices > 1 {
            body["slice"] = json!({"id": slice, "max": slices});
        }
        let mut bytes = self
            .search_page(&format!("{index}/_search?scroll={KEEP_ALIVE}"), &body, step)
            .await?;
        let mut count = 0;
        loop {
            let page = SearchPage::parse(&bytes, step)?;
            let scroll_id = page.scroll_id.clone();
            if page.hits.hits.is_empty() {
                if let Some(id) = scroll_id {
                    let _ = self
                        .http
                        .call(
                            Method::DELETE,
                            "_search/scroll",
                            Some(&json!({"scroll_id": [id]})),
                            step,
                        )
                        .await;
                }
                break;
            }
            count += self.send_hits(index, &page.hits.hits, tx, step).await?;
            let Some(id) = scroll_id else { break };
            bytes = self
                .search_page(
                    "_search/scroll",
                    &json!({"scroll": KEEP_ALIVE, "scroll_id": id}),
                    step,
                )
                .await?;
        }
        Ok(count)
    }

    /// One page of hits, as the server sent it (parsed by the caller, borrowing from it).
    async fn search_page(&self, path: &str, body: &Value, step: &str) -> Result<bytes::Bytes> {
        let response = self
            .http
            .request(Method::POST, path)
            .json(body)
            .send()
            .await
            .map_err(|e| {
                self.http.error(
                    step,
                    HttpError {
                        status: None,
                        unreachable: e.is_connect(),
                        timed_out: timed_out(&e),
                        message: mask_userinfo(&e.to_string()),
                    },
                )
            })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| {
            self.http.error(
                step,
                HttpError {
                    status: Some(status),
                    unreachable: false,
                    timed_out: timed_out(&e),
                    message: e.to_string(),
                },
            )
        })?;
        if !status.is_success() {
            let mut e = Error::refused(
                step,
                format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(500)])
                ),
            )
            .service(SVC);
            e.http_status = Some(status.as_u16());
            return Err(e);
        }
        Ok(bytes)
    }

    /// The hits as `doc` lines, each `_source` copied once, from the page to the line.
    async fn send_hits(
        &self,
        index: &str,
        hits: &[Hit<'_>],
        tx: &ExportSender,
        step: &str,
    ) -> Result<u64> {
        let mut chunk = Vec::with_capacity(
            hits.iter()
                .map(|h| h.source.map_or(0, |s| s.get().len()) + 64)
                .sum(),
        );
        for hit in hits {
            let source = hit.source.ok_or_else(|| {
                Error::failure(step, format!("document {} of index {index} has no _source", hit.id))
                    .service(SVC)
                    .hint("the index has _source disabled, so its documents cannot be exported: use --opensearch-method snapshot")
            })?;
            let line = DocLine {
                kind: "doc",
                index,
                id: &hit.id,
                routing: hit.routing.as_deref(),
                source,
            };
            let start = chunk.len();
            serde_json::to_writer(&mut chunk, &line).expect("line serialises");
            if chunk.len() - start > MAX_LINE {
                return Err(Error::failure(
                    step,
                    format!(
                        "document {} of index {index} is {} as a line of the export, more than the {} a logical restore loads as one record",
                        hit.id,
                        crate::report::size((chunk.len() - start) as u64),
                        crate::report::size(MAX_LINE as u64)
                    ),
                )
                .service(SVC)
                .hint("back this index up with --opensearch-method snapshot, which has no such bound"));
            }
            chunk.push(b'\n');
        }
        tx.send(chunk).await?;
        Ok(hits.len() as u64)
    }

    /// The largest request body the node we talk to accepts
    /// (`http.max_content_length`, a static node setting; 100mb by default).
    async fn max_content_length(&self) -> Result<u64> {
        let step = "read http.max_content_length";
        let key = "http.max_content_length";
        let node = self
            .http
            .get("_nodes/_local/settings?flat_settings=true", step)
            .await?;
        let set = node["nodes"]
            .as_object()
            .and_then(|n| n.values().next())
            .and_then(|n| n["settings"][key].as_str().map(String::from));
        let value = match set {
            Some(value) => Some(value),
            None => {
                let cluster = self
                    .http
                    .get(
                        "_cluster/settings?include_defaults=true&flat_settings=true",
                        step,
                    )
                    .await?;
                ["transient", "persistent", "defaults"]
                    .iter()
                    .find_map(|scope| cluster[scope][key].as_str().map(String::from))
            }
        };
        Ok(value
            .and_then(|v| parse_byte_size(&v))
            .unwrap_or(DEFAULT_MAX_CONTENT_LENGTH))
    }

    /// Refuse, before anything is changed, an export with a document the
    /// cluster could not take: its `_bulk` entry alone would be a request
    /// larger than `http.max_content_length` (HTTP 413, after the index had
    /// been deleted).
    async fn check_load_limits(
        &self,
        ctx: &RestoreContext<'_>,
        record: &ArtifactRecord,
    ) -> Result<()> {
        let known = self
            .needs
            .lock()
            .ok()
            .and_then(|needs| needs.get(ctx.artifact).cloned());
        let needs = match known {
            Some(needs) => needs,
            None => {
                let (path, record) = (ctx.artifact.to_path_buf(), record.clone());
                super::blocking(SVC, move || check_logical(&path, &record)).await?
            }
        };
        let limit = self.max_content_length().await?;
        if needs.largest_entry <= limit {
            return Ok(());
        }
        Err(Error::refused(
            "check load limits",
            format!(
                "line {} of {}: document \"{}\" of index {} makes a _bulk request of {} ({} bytes), more than this cluster's http.max_content_length of {} ({limit} bytes)",
                needs.line,
                record.file,
                needs.id,
                needs.index,
                crate::report::size(needs.largest_entry),
                needs.largest_entry,
                crate::report::size(limit),
            ),
        )
        .service(SVC)
        .hint(format!(
            "raise http.max_content_length in opensearch.yml of the node at {} above {} bytes (a static setting: restart the node), or restore into a cluster that accepts it; nothing was changed",
            self.settings.url, needs.largest_entry
        )))
    }

    async fn restore_logical(&self, ctx: &RestoreContext<'_>) -> Result<()> {
        let max_body = self.max_content_length().await?;
        // Lines queued for the loader hold permits, one per KiB: the queue
        // is bounded in bytes, whatever the size of the documents.
        let budget = std::sync::Arc::new(tokio::sync::Semaphore::new(READ_AHEAD_KIB));
        type Queued = (Result<Line>, Option<tokio::sync::OwnedSemaphorePermit>);
        let (tx, mut rx) = mpsc::channel::<Queued>(4096);
        let path = ctx.artifact.to_path_buf();
        let reader = tokio::task::spawn_blocking(move || {
            read_records(&path, |record| {
                let permits = record
                    .as_ref()
                    .map_or(1, |(_, bytes, _)| (bytes >> 10).clamp(1, READ_AHEAD_KIB));
                let permit =
                    futures::executor::block_on(budget.clone().acquire_many_owned(permits as u32))
                        .ok();
                tx.blocking_send((record.map(|(_, _, line)| line), permit))
                    .is_ok()
            })
        });
        let mut loader = Loader::new(self.http.clone(), self.settings.bulk_requests, max_body);
        let mut outcome = Ok(());
        while let Some((line, permit)) = rx.recv().await {
            let applied = match line {
                Ok(line) => loader.apply(line).await,
                Err(e) => Err(e),
            };
            drop(permit);
            if let Err(e) = applied {
                outcome = Err(e);
                break;
            }
        }
        drop(rx);
        let _ = reader.await;
        outcome?;
        loader.finish().await?;
        let restored: Vec<String> = loader.restored.clone();
        self.wait_healthy(&restored, "restore documents").await
    }
}

/// The body that creates an index from its exported definition (settings the
/// cluster sets itself removed; replicas 0 and refresh off for the load), and
/// the load-time settings to put back after it.
fn creation_body(meta: &Value) -> (Value, Map<String, Value>) {
    let mut settings = meta["settings"]["index"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    for key in SERVER_SET {
        settings.remove(key);
    }
    if let Some(Value::Object(routing)) = settings.get_mut("routing") {
        if let Some(Value::Object(allocation)) = routing.get_mut("allocation") {
            allocation.remove("initial_recovery");
        }
    }
    let mut after_load = Map::new();
    for key in LOAD_TIME {
        match settings.remove(key) {
            Some(value) => {
                after_load.insert(key.to_string(), value);
            }
            // `null` puts a plain setting back to its default; `blocks` is a group.
            None if key != "blocks" => {
                after_load.insert(key.to_string(), Value::Null);
            }
            None => {}
        }
    }
    settings.insert("number_of_replicas".into(), json!(0));
    settings.insert("refresh_interval".into(), json!("-1"));
    (
        json!({"settings": {"index": settings}, "mappings": meta["mappings"]}),
        after_load,
    )
}

/// The generation of the backing index `index` of data stream `stream`
/// (`.ds-<stream>-000002` → 2).
fn backing_generation(stream: &str, index: &str) -> Option<u64> {
    index
        .strip_prefix(&format!(".ds-{stream}-"))
        .filter(|n| n.len() >= 6 && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse().ok())
}

/// Counts that stayed the same across the snapshot go into the record; the rest
/// changed while it ran and are listed instead of being compared later.
fn record_stable_counts(
    record: &mut ArtifactRecord,
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) {
    let mut changed = Map::new();
    for (index, count) in before {
        if after.get(index) == Some(count) {
            record.counts.insert(index.clone(), *count);
        } else {
            changed.insert(index.clone(), json!([count, after.get(index)]));
        }
    }
    if !changed.is_empty() {
        record.details.insert(
            "counts_changed_during_backup".into(),
            Value::Object(changed),
        );
    }
}

fn snapshot_compression(record: &ArtifactRecord) -> Result<ArchiveCompression> {
    ArchiveCompression::from_file_name(&record.file).ok_or_else(|| {
        Error::failure(
            "restore snapshot",
            format!("{} is not a .tar.gz or .tar.zst archive", record.file),
        )
        .service(SVC)
    })
}

/// Can we create and remove a directory in `dir`? (path.repo as seen from here)
fn writable_dir(dir: &Path) -> bool {
    let probe = dir.join(format!(".itbackup-probe-{}", std::process::id()));
    let ok = std::fs::create_dir(&probe).is_ok();
    let _ = std::fs::remove_dir(&probe);
    ok
}

/// Each record of the export at `path` with its line number and its size
/// in bytes; a line longer than [`MAX_LINE`] or that does not decode ends
/// the reading with an error naming it.
fn read_records(path: &Path, mut sink: impl FnMut(Result<(usize, usize, Line)>) -> bool) {
    crate::ndjson::read_lines(path, SVC, MAX_LINE, |line| match line {
        Ok((number, bytes)) => match serde_json::from_slice::<Line>(bytes) {
            Ok(line) => sink(Ok((number, bytes.len(), line))),
            Err(e) => {
                sink(Err(crate::ndjson::damaged(
                    path,
                    SVC,
                    number,
                    e.to_string(),
                )));
                false
            }
        },
        Err(e) => sink(Err(e)),
    })
}

/// The action line of a document's `_bulk` entry: `action` (`index`, or
/// `create` into a data stream) into `target`. Built by the loader and
/// measured by the verification, so both see the same request sizes.
fn bulk_action(action: &str, target: &str, id: Option<&str>, routing: Option<&str>) -> Vec<u8> {
    let action = json!({action: {"_index": target, "_id": id, "routing": routing}});
    serde_json::to_vec(&action).expect("serialises")
}

/// The size of a document's whole `_bulk` entry: action, source, newlines.
fn bulk_entry_len(action: &[u8], source: &RawValue) -> u64 {
    (action.len() + 1 + source.get().len() + 1) as u64
}

/// A name OpenSearch takes for an index or data stream (lowercase, none of
/// `\ / * ? " < > | , # :` or spaces, not starting with `_ - +`, at most 255
/// bytes). The restore puts names into request paths (`DELETE <name>`): a
/// wildcard or a path there would reach other indices.
fn valid_index_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.starts_with(['_', '-', '+'])
        && !name.chars().any(|c| {
            c.is_uppercase() || c.is_whitespace() || c.is_control() || "\\/*?\"<>|,#:%".contains(c)
        })
}

/// A template or pipeline name that stays one path segment.
fn valid_object_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "\\/*?#%,".contains(c))
}

/// An OpenSearch byte size (`100mb`, `104857600b`, `1.5gb`, `512KB`).
fn parse_byte_size(text: &str) -> Option<u64> {
    let text = text.trim().to_ascii_lowercase();
    let digits = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: f64 = number.parse().ok()?;
    let scale: u64 = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        "t" | "tb" => 1 << 40,
        "p" | "pb" => 1 << 50,
        _ => return None,
    };
    Some((number * scale as f64) as u64)
}

/// Full decode of a logical export: every line parsed, the structure and the
/// per-index document counts checked against the trailer and the manifest,
/// and every record checked for what the load would be refused (names
/// OpenSearch does not take, ids longer than it takes, sources that are not
/// objects). Answers what the load needs of the cluster, which the restore
/// compares with the cluster's limits before it changes anything.
fn check_logical(path: &Path, record: &ArtifactRecord) -> Result<LoadNeeds> {
    let step = "verify export";
    let fail = |msg: String| {
        Error::damaged(step, format!("{}: {msg}", path.display()))
            .service(SVC)
            .hint("the artifact is truncated or damaged; use another backup")
    };
    let mut first = true;
    let mut ended = false;
    let mut current: Option<(String, u64)> = None;
    let mut total = 0u64;
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    // The data stream whose backing indices come next, and those still to come.
    let mut stream: Option<(String, std::collections::VecDeque<String>)> = None;
    // Where the current index's documents go: (`_bulk` action, target).
    let mut into: (&str, String) = ("index", String::new());
    let mut needs = LoadNeeds::default();
    let mut problem: Option<Error> = None;
    read_records(path, |line| {
        let (number, line) = match line {
            Ok((number, _, line)) => (number, line),
            Err(e) => {
                problem = Some(e);
                return false;
            }
        };
        // What the load would be refused: named with its line.
        let refuse = |msg: String| {
            Error::damaged(step, format!("{} line {number}: {msg}", path.display()))
                .service(SVC)
                .hint("the restore would fail on this record after replacing the index; the artifact is damaged or was not written by itbackup; nothing was changed: use another backup")
        };
        let result = (|| {
            if ended {
                return Err(fail("records after the end record".into()));
            }
            if first {
                first = false;
                if line.kind != "header" || line.format.as_deref() != Some(LOGICAL_FORMAT) {
                    return Err(fail(
                        "does not start with an itbackup OpenSearch header".into(),
                    ));
                }
                if line.version != Some(LOGICAL_VERSION) {
                    return Err(fail(format!(
                        "format version {:?} is not supported",
                        line.version
                    )));
                }
                return Ok(());
            }
            let waiting =
                |stream: &Option<(String, std::collections::VecDeque<String>)>| match stream {
                    Some((name, rest)) if !rest.is_empty() => Err(fail(format!(
                        "data stream {name}: backing index {} is missing",
                        rest[0]
                    ))),
                    _ => Ok(()),
                };
            match line.kind.as_str() {
                "data_stream" => {
                    waiting(&stream)?;
                    let name = line.name.clone().unwrap_or_default();
                    if !valid_index_name(&name) {
                        return Err(refuse(format!(
                            "\"{name}\" is not a valid data stream name"
                        )));
                    }
                    let body = line.body.clone().unwrap_or(Value::Null);
                    let backing: std::collections::VecDeque<String> = body["indices"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|i| i.as_str().map(String::from))
                        .collect();
                    // Rollover makes backing indices in generation order:
                    // the restore reaches each so, and only so.
                    let generations: Vec<Option<u64>> = backing
                        .iter()
                        .map(|i| backing_generation(&name, i))
                        .collect();
                    let ordered = generations.windows(2).all(|w| w[0] < w[1]);
                    let last = generations.last().copied().flatten();
                    if name.is_empty()
                        || backing.is_empty()
                        || generations.iter().any(Option::is_none)
                        || !ordered
                        || body["generation"].as_u64().is_some_and(|g| Some(g) != last)
                    {
                        return Err(fail(format!(
                            "data stream {name}: its backing indices {backing:?} are not .ds-{name}-<generation> in generation order up to generation {}",
                            body["generation"]
                        )));
                    }
                    stream = Some((name, backing));
                }
                "index" => {
                    let name = line.name.clone().unwrap_or_default();
                    if !valid_index_name(&name) {
                        return Err(refuse(format!("\"{name}\" is not a valid index name")));
                    }
                    if !line.body.as_ref().is_some_and(Value::is_object) {
                        return Err(refuse(format!("index {name} has no definition")));
                    }
                    into = ("index", name.clone());
                    match &mut stream {
                        Some((stream_name, rest)) if !rest.is_empty() => {
                            if rest.front() != Some(&name) {
                                return Err(fail(format!(
                                    "index {name} where backing index {} of its data stream was expected",
                                    rest[0]
                                )));
                            }
                            rest.pop_front();
                            into = ("create", stream_name.clone());
                        }
                        _ => stream = None,
                    }
                    current = Some((name, 0))
                }
                "doc" => match &mut current {
                    Some((name, n))
                        if line.index.as_deref() == Some(name.as_str())
                            && line.source.is_some() =>
                    {
                        *n += 1;
                        let id = line.id.as_deref().unwrap_or_default();
                        if id.is_empty() || id.len() > MAX_ID_BYTES {
                            return Err(refuse(format!(
                                "document id of {} bytes in index {name}: OpenSearch takes 1 to {MAX_ID_BYTES} bytes",
                                id.len()
                            )));
                        }
                        let source = line.source.as_deref().expect("checked above");
                        if !source.get().trim_start().starts_with('{') {
                            return Err(refuse(format!(
                                "the _source of document \"{id}\" of index {name} is not a JSON object"
                            )));
                        }
                        let action =
                            bulk_action(into.0, &into.1, Some(id), line.routing.as_deref());
                        let entry = bulk_entry_len(&action, source);
                        if entry > needs.largest_entry {
                            needs = LoadNeeds {
                                largest_entry: entry,
                                line: number,
                                index: name.clone(),
                                id: id.to_string(),
                            };
                        }
                    }
                    _ => return Err(fail("a document outside its index".into())),
                },
                "index_end" => {
                    let Some((name, n)) = current.take() else {
                        return Err(fail("an index end without its index".into()));
                    };
                    if line.docs != Some(n) || line.name.as_deref() != Some(name.as_str()) {
                        return Err(fail(format!(
                            "index {name}: {n} documents, the export says {:?}",
                            line.docs
                        )));
                    }
                    total += n;
                    seen.insert(name, n);
                }
                "end" => {
                    waiting(&stream)?;
                    if line.docs != Some(total) || current.is_some() {
                        return Err(fail(
                            "the end record does not match the documents read".into(),
                        ));
                    }
                    ended = true;
                }
                "component_template" | "index_template" | "legacy_template" | "pipeline" => {
                    let name = line.name.as_deref().unwrap_or_default();
                    if !valid_object_name(name) {
                        return Err(refuse(format!(
                            "\"{name}\" is not a valid {} name",
                            line.kind.replace('_', " ")
                        )));
                    }
                }
                other => return Err(fail(format!("unknown record type '{other}'"))),
            }
            Ok(())
        })();
        match result {
            Ok(()) => true,
            Err(e) => {
                problem = Some(e);
                false
            }
        }
    });
    if let Some(e) = problem {
        return Err(e);
    }
    if !ended {
        return Err(fail("the export ends before its end record".into()));
    }
    for (index, want) in &record.counts {
        if seen.get(index) != Some(want) {
            return Err(fail(format!(
                "index {index}: the manifest says {want} documents, the export holds {:?}",
                seen.get(index)
            )));
        }
    }
    Ok(needs)
}

/// Loads a logical export into a cluster: templates and pipelines as they come,
/// each index created bare, its documents through concurrent `_bulk` requests,
/// then its settings and aliases put back.
struct Loader {
    http: Http,
    in_flight: tokio::task::JoinSet<Result<()>>,
    max_in_flight: usize,
    /// The cluster's `http.max_content_length`: no request is built larger.
    max_body: u64,
    batch: Vec<u8>,
    batch_docs: usize,
    /// The index being loaded.
    current: Option<Loading>,
    /// The data stream whose backing indices are being loaded.
    stream: Option<StreamLoad>,
    restored: Vec<String>,
}

/// An index being loaded: where its documents go and what to put back after.
struct Loading {
    name: String,
    after_load: Value,
    aliases: Value,
    /// The `_bulk` action and its target: `index` into the index itself;
    /// `create` into its data stream (OpenSearch refuses writes into a
    /// backing index), which writes into the stream's write index.
    action: &'static str,
    target: String,
}

/// A data stream being recreated: its backing indices as exported, and the
/// write index it has now.
struct StreamLoad {
    name: String,
    backing: Vec<String>,
    write: String,
}

impl Loader {
    fn new(http: Http, max_in_flight: usize, max_body: u64) -> Self {
        Loader {
            http,
            in_flight: tokio::task::JoinSet::new(),
            max_in_flight,
            max_body,
            batch: Vec::with_capacity(BULK_BYTES + (1 << 20)),
            batch_docs: 0,
            current: None,
            stream: None,
            restored: Vec::new(),
        }
    }

    async fn apply(&mut self, line: Line) -> Result<()> {
        let name = line.name.clone().unwrap_or_default();
        match line.kind.as_str() {
            "header" | "end" => Ok(()),
            "component_template" => {
                self.put(
                    &format!("_component_template/{name}"),
                    line.body,
                    "restore component template",
                )
                .await
            }
            "index_template" => {
                self.put(
                    &format!("_index_template/{name}"),
                    line.body,
                    "restore index template",
                )
                .await
            }
            "legacy_template" => {
                self.put(
                    &format!("_template/{name}"),
                    line.body,
                    "restore legacy template",
                )
                .await
            }
            "pipeline" => {
                self.put(
                    &format!("_ingest/pipeline/{name}"),
                    line.body,
                    "restore ingest pipeline",
                )
                .await
            }
            "data_stream" => {
                self.create_stream(&name, line.body.unwrap_or(Value::Null))
                    .await
            }
            "index" => {
                let meta = line.body.unwrap_or(Value::Null);
                match &self.stream {
                    Some(stream) if stream.backing.contains(&name) => {
                        self.open_backing_index(&name, meta).await
                    }
                    _ => self.create_index(&name, meta).await,
                }
            }
            "doc" => self.add_doc(line).await,
            "index_end" => self.finish_index().await,
            other => Err(
                Error::failure("restore", format!("unknown record type '{other}'")).service(SVC),
            ),
        }
    }

    async fn put(&self, path: &str, body: Option<Value>, step: &str) -> Result<()> {
        self.http
            .call(Method::PUT, path, Some(&body.unwrap_or(Value::Null)), step)
            .await
            .map(|_| ())
    }

    async fn create_index(&mut self, name: &str, meta: Value) -> Result<()> {
        let step = format!("create index {name}");
        let (body, after_load) = creation_body(&meta);
        self.http.delete_if_present(name, &step).await?;
        self.http
            .call(Method::PUT, name, Some(&body), &step)
            .await?;
        self.stream = None;
        self.current = Some(Loading {
            name: name.to_string(),
            after_load: Value::Object(after_load),
            aliases: meta["aliases"].clone(),
            action: "index",
            target: name.to_string(),
        });
        Ok(())
    }

    /// Recreate a data stream, empty: whatever holds its name or its backing
    /// indices' names is deleted, and the stream created from its index
    /// template (restored before it), which makes its first backing index.
    /// Its backing indices are then reached one after the other by rollover
    /// ([`Loader::open_backing_index`]), so they get their exported names and
    /// the stream its generation.
    async fn create_stream(&mut self, name: &str, body: Value) -> Result<()> {
        let step = format!("create data stream {name}");
        self.current = None;
        let backing: Vec<String> = body["indices"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i.as_str().map(String::from))
            .collect();
        self.http
            .delete_if_present(&format!("_data_stream/{name}"), &step)
            .await?;
        for index in backing.iter().map(String::as_str).chain([name]) {
            self.http.delete_if_present(index, &step).await?;
        }
        self.http
            .call(Method::PUT, &format!("_data_stream/{name}"), None, &step)
            .await
            .map_err(|e| {
                e.hint(format!(
                    "the index template {} that makes {name} a data stream must be in the backup and accepted by this cluster",
                    body["template"]
                ))
            })?;
        let write = self.write_index(name, &step).await?;
        self.stream = Some(StreamLoad {
            name: name.to_string(),
            backing,
            write,
        });
        Ok(())
    }

    async fn write_index(&self, stream: &str, step: &str) -> Result<String> {
        let answer = self
            .http
            .get(&format!("_data_stream/{stream}"), step)
            .await?;
        answer["data_streams"][0]["indices"]
            .as_array()
            .and_then(|i| i.last())
            .and_then(|i| i["index_name"].as_str())
            .map(String::from)
            .ok_or_else(|| {
                Error::failure(
                    step,
                    format!("data stream {stream} has no write index: {answer}"),
                )
                .service(SVC)
            })
    }

    /// Make the backing index `name` of the stream being recreated its write
    /// index, rolling over as often as it takes (an intermediate generation
    /// the export does not hold was removed from the stream before the
    /// backup: it is deleted again, empty), then give it the exported
    /// mappings and the load-time settings. Its documents go in through the
    /// stream.
    async fn open_backing_index(&mut self, name: &str, meta: Value) -> Result<()> {
        let step = format!("create backing index {name}");
        let stream = self.stream.as_mut().expect("checked by the caller");
        let wanted = backing_generation(&stream.name, name);
        while stream.write != name {
            let current = backing_generation(&stream.name, &stream.write);
            if current.is_none() || current >= wanted {
                return Err(Error::failure(
                    &step,
                    format!(
                        "data stream {} writes into {}, and rolling over cannot reach {name}",
                        stream.name, stream.write
                    ),
                )
                .service(SVC)
                .hint("the export's backing indices are not in generation order; the artifact is damaged, use another backup"));
            }
            let answer = self
                .http
                .call(
                    Method::POST,
                    &format!("{}/_rollover", stream.name),
                    None,
                    &step,
                )
                .await?;
            let old = std::mem::replace(
                &mut stream.write,
                answer["new_index"].as_str().unwrap_or_default().to_string(),
            );
            if !stream.backing.contains(&old) {
                self.http.delete_if_present(&old, &step).await?;
            }
        }
        let (body, after_load) = creation_body(&meta);
        let mut mappings = meta["mappings"].clone();
        if let Some(mappings) = mappings.as_object_mut() {
            // Set by the stream's template; not a mapping one may put.
            mappings.remove("_data_stream_timestamp");
        }
        if mappings.as_object().is_some_and(|m| !m.is_empty()) {
            self.http
                .call(
                    Method::PUT,
                    &format!("{name}/_mapping"),
                    Some(&mappings),
                    &step,
                )
                .await?;
        }
        // What `creation_body` switches off for the load, on an index that
        // exists already; pipelines explicitly off (the template may set them).
        let mut load_time = Map::new();
        for key in ["number_of_replicas", "refresh_interval"] {
            load_time.insert(key.into(), body["settings"]["index"][key].clone());
        }
        load_time.insert("default_pipeline".into(), json!("_none"));
        load_time.insert("final_pipeline".into(), json!("_none"));
        self.http
            .call(
                Method::PUT,
                &format!("{name}/_settings"),
                Some(&json!({"index": load_time})),
                &step,
            )
            .await?;
        let target = stream.name.clone();
        self.current = Some(Loading {
            name: name.to_string(),
            after_load: Value::Object(after_load),
            aliases: meta["aliases"].clone(),
            action: "create",
            target,
        });
        Ok(())
    }

    async fn add_doc(&mut self, line: Line) -> Result<()> {
        let (action, target) = match &self.current {
            Some(loading) => (loading.action, loading.target.clone()),
            None => ("index", line.index.clone().unwrap_or_default()),
        };
        let action = bulk_action(action, &target, line.id.as_deref(), line.routing.as_deref());
        let source = line
            .source
            .unwrap_or_else(|| RawValue::from_string("{}".into()).expect("valid JSON"));
        let entry = bulk_entry_len(&action, &source);
        // A request never exceeds the cluster's limit: the batch goes first
        // when this document would take it over. One document over the limit
        // alone was refused before the restore began (check_load_limits).
        if !self.batch.is_empty() && self.batch.len() as u64 + entry > self.max_body {
            self.send_batch().await?;
        }
        if entry > self.max_body {
            return Err(Error::failure(
                "restore documents",
                format!(
                    "document \"{}\" of index {target} makes a _bulk request of {entry} bytes, more than http.max_content_length ({} bytes)",
                    line.id.as_deref().unwrap_or_default(),
                    self.max_body
                ),
            )
            .service(SVC)
            .hint("raise http.max_content_length on the node itbackup talks to (a static setting: restart it), then restore again"));
        }
        self.batch.extend_from_slice(&action);
        self.batch.push(b'\n');
        self.batch.extend_from_slice(source.get().as_bytes());
        self.batch.push(b'\n');
        self.batch_docs += 1;
        if self.batch.len() >= BULK_BYTES || self.batch_docs >= BULK_DOCS {
            self.send_batch().await?;
        }
        Ok(())
    }

    async fn send_batch(&mut self) -> Result<()> {
        if self.batch_docs == 0 {
            return Ok(());
        }
        while self.in_flight.len() >= self.max_in_flight {
            self.join_one().await?;
        }
        let body = std::mem::replace(&mut self.batch, Vec::with_capacity(BULK_BYTES + (1 << 20)));
        self.batch_docs = 0;
        let http = self.http.clone();
        self.in_flight.spawn(async move { bulk(&http, body).await });
        Ok(())
    }

    async fn join_one(&mut self) -> Result<()> {
        match self.in_flight.join_next().await {
            Some(Ok(result)) => result,
            Some(Err(e)) => Err(Error::failure("restore documents", e.to_string()).service(SVC)),
            None => Ok(()),
        }
    }

    async fn drain(&mut self) -> Result<()> {
        self.send_batch().await?;
        while !self.in_flight.is_empty() {
            self.join_one().await?;
        }
        Ok(())
    }

    async fn finish_index(&mut self) -> Result<()> {
        self.drain().await?;
        let Some(Loading {
            name,
            after_load,
            aliases,
            ..
        }) = self.current.take()
        else {
            return Ok(());
        };
        let step = format!("finish index {name}");
        self.http
            .call(
                Method::PUT,
                &format!("{name}/_settings"),
                Some(&json!({"index": after_load})),
                &step,
            )
            .await?;
        self.http
            .call(Method::POST, &format!("{name}/_refresh"), None, &step)
            .await?;
        let actions: Vec<Value> = aliases
            .as_object()
            .into_iter()
            .flatten()
            .map(|(alias, props)| {
                let mut add = props.as_object().cloned().unwrap_or_default();
                add.insert("index".into(), json!(name));
                add.insert("alias".into(), json!(alias));
                json!({"add": add})
            })
            .collect();
        if !actions.is_empty() {
            self.http
                .call(
                    Method::POST,
                    "_aliases",
                    Some(&json!({"actions": actions})),
                    &step,
                )
                .await?;
        }
        tracing::info!(index = %name, "opensearch: restored index");
        self.restored.push(name);
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        self.drain().await
    }
}

/// The part of a `_bulk` answer that matters. Read without building a JSON
/// tree: an answer carries one item per document, and most of it is ignored.
#[derive(Deserialize)]
struct BulkAnswer {
    errors: bool,
    #[serde(default)]
    items: Vec<BTreeMap<String, BulkItem>>,
}

#[derive(Deserialize)]
struct BulkItem {
    #[serde(rename = "_id", default)]
    id: Option<String>,
    #[serde(rename = "_index", default)]
    index: Option<String>,
    #[serde(default)]
    status: u16,
    #[serde(default)]
    error: Option<Value>,
}

/// The registration of a temporary fs repository: `settings` and its holder
/// (see `leftovers`), so that what a killed run leaves can be told apart
/// from what a live one uses.
fn repository_body(settings: Value) -> Value {
    let mut settings = match settings {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    settings.extend(leftovers::holder_settings());
    json!({"type": "fs", "settings": settings})
}

/// One `_bulk` request, retried with back-off while the cluster pushes back (429).
/// Every action carries its `_id`, so sending a batch twice is harmless. The
/// body is shared between attempts, never copied.
async fn bulk(http: &Http, body: Vec<u8>) -> Result<()> {
    let step = "restore documents (_bulk)";
    let body = bytes::Bytes::from(body);
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=10 {
        let request = http
            .request(Method::POST, BULK_PATH)
            .header("content-type", "application/x-ndjson")
            .body(body.clone());
        let answer = match http.send_bytes(request).await {
            Ok(answer) => answer,
            Err(HttpError {
                status: Some(StatusCode::TOO_MANY_REQUESTS),
                ..
            }) if attempt < 10 => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
                continue;
            }
            Err(e) => return Err(http.error(step, e)),
        };
        let answer: BulkAnswer = serde_json::from_slice(&answer).map_err(|e| {
            Error::failure(step, format!("unreadable _bulk answer: {e}")).service(SVC)
        })?;
        if !answer.errors {
            return Ok(());
        }
        let results = answer.items.iter().flat_map(|item| item.values());
        let rejected = results.clone().any(|item| item.status == 429);
        // A resent batch: a document of a data stream (`create`) that the
        // first attempt wrote answers 409 now, and is there.
        let failure = results.clone().find(|item| {
            !(200..300).contains(&item.status)
                && item.status != 429
                && !(attempt > 1 && item.status == 409)
        });
        if let Some(doc) = failure {
            return Err(Error::refused(
                step,
                format!(
                    "document \"{}\" of index {} was refused: {}",
                    doc.id.as_deref().unwrap_or("?"),
                    doc.index.as_deref().unwrap_or("?"),
                    doc.error.as_ref().map(|e| e.to_string()).unwrap_or_default()
                ),
            )
            .service(SVC)
            .hint("the target cluster's mappings or settings differ from the backup's; check the index template and mappings"));
        }
        if rejected && attempt < 10 {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
            continue;
        }
        return Err(
            Error::refused(step, "the cluster kept rejecting documents (429)")
                .service(SVC)
                .hint(
                    "the cluster is overloaded: retry later or lower bulk_requests in the config",
                ),
        );
    }
    Err(Error::refused(step, "the cluster kept rejecting documents (429)").service(SVC))
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
                let compression = snapshot_compression(record)?;
                super::blocking(SVC, move || {
                    let reader = archive::open(&path, compression).map_err(|e| io_error(Some(SVC), "verify snapshot", path.display(), e))?;
                    archive::check(reader).map(|_| ()).map_err(|e| {
                        Error::damaged("verify snapshot", format!("{} is not a sound archive: {e}", path.display()))
                            .service(SVC)
                            .hint("the artifact is truncated, damaged or unsafe (paths outside the archive); nothing was extracted; use another backup")
                    })
                })
                .await
            }
            "logical" => {
                let record = record.clone();
                let key = path.clone();
                let needs = super::blocking(SVC, move || check_logical(&path, &record)).await?;
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
                Err(e) if e.http_status == Some(404) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_read_as_opensearch_writes_them() {
        assert_eq!(parse_byte_size("100mb"), Some(100 << 20));
        assert_eq!(parse_byte_size("104857600b"), Some(104_857_600));
        assert_eq!(parse_byte_size("1.5GB"), Some(3 << 29));
        assert_eq!(parse_byte_size("512kb"), Some(512 << 10));
        assert_eq!(parse_byte_size("lots"), None);
    }

    #[test]
    fn names_that_would_reach_other_indices_are_not_valid() {
        for name in ["itb-b", ".ds-logs-000001", "a.b_c+d"] {
            assert!(valid_index_name(name), "{name}");
        }
        for name in ["", "*", "_all", "a/b", "A", "a,b", "a?x", "..", "a b", "-x"] {
            assert!(!valid_index_name(name), "{name}");
        }
        assert!(valid_object_name("logs-template"));
        assert!(!valid_object_name("../_all"));
    }

    #[test]
    fn backing_generations_are_read_from_their_names() {
        assert_eq!(backing_generation("logs", ".ds-logs-000002"), Some(2));
        assert_eq!(backing_generation("logs", ".ds-logs-x-000002"), None);
        assert_eq!(backing_generation("logs", ".ds-logs-12"), None);
    }
}
