//! The load of a logical export: templates and pipelines, each index created
//! bare, its documents through concurrent `_bulk` requests, then its settings
//! and aliases put back.

use reqwest::Method;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::error::{Error, Result};

use super::*;
use crate::stores::opensearch::http::Http;
use crate::stores::opensearch::{OpenSearch, SVC};

/// A bulk request is sent once it holds this many bytes or documents.
const BULK_BYTES: usize = 8 << 20;

const BULK_DOCS: usize = 5000;

/// The restore's reader runs ahead of the loader by at most this many bytes
/// of lines (or one line, when a line is longer).
const READ_AHEAD_KIB: usize = 32 << 10;

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

/// Which lines of the export a selective restore applies, and under which
/// index names (`restore --indices`, `--rename`, `--switch`): the selected
/// indices' definitions and documents, each under the name it is loaded as
/// (a renamed or switched copy without its aliases); templates and
/// pipelines only with the global state; data streams not at all.
pub(crate) struct Pick {
    /// FROM → the name it is loaded under.
    names: std::collections::BTreeMap<String, String>,
    globals: bool,
    /// The index whose lines are being read is not selected.
    skipping: bool,
}

impl Pick {
    pub(crate) fn new(names: std::collections::BTreeMap<String, String>, globals: bool) -> Self {
        Pick {
            names,
            globals,
            skipping: false,
        }
    }

    fn line(&mut self, mut line: Line) -> Option<Line> {
        match line.kind.as_str() {
            "component_template" | "index_template" | "legacy_template" | "pipeline" => {
                self.globals.then_some(line)
            }
            "data_stream" => None,
            "index" => {
                let name = line.name.clone().unwrap_or_default();
                let to = self.names.get(&name).filter(|_| !name.starts_with(".ds-"));
                self.skipping = to.is_none();
                let to = to?.clone();
                if to != name {
                    if let Some(body) = line.body.as_mut() {
                        body["aliases"] = json!({});
                    }
                    line.name = Some(to);
                }
                Some(line)
            }
            "doc" | "index_end" => {
                if self.skipping {
                    return None;
                }
                if let Some(index) = line.index.as_ref().and_then(|i| self.names.get(i)) {
                    line.index = Some(index.clone());
                }
                Some(line)
            }
            _ => Some(line),
        }
    }
}

impl OpenSearch {
    /// Load the export at `artifact`: every line, or those `pick` selects.
    pub(crate) async fn restore_logical(
        &self,
        artifact: &crate::artifact::ArtifactSource,
        mut pick: Option<Pick>,
    ) -> Result<()> {
        let max_body = self.max_content_length().await?;
        // Lines queued for the loader hold permits, one per KiB: the queue
        // is bounded in bytes, whatever the size of the documents.
        let budget = std::sync::Arc::new(tokio::sync::Semaphore::new(READ_AHEAD_KIB));
        type Queued = (Result<Line>, Option<tokio::sync::OwnedSemaphorePermit>);
        let (tx, mut rx) = mpsc::channel::<Queued>(4096);
        let path = artifact.clone();
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
            let line = match (line, pick.as_mut()) {
                (Ok(line), Some(pick)) => match pick.line(line) {
                    Some(line) => Ok(line),
                    None => continue,
                },
                (line, _) => line,
            };
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
pub(super) fn creation_body(meta: &Value) -> (Value, Map<String, Value>) {
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
