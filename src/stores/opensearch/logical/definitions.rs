//! Before a logical restore changes anything: everything the load will put
//! into the cluster besides documents — ingest pipelines, component, index
//! and legacy templates, data streams, each distinct index definition — is
//! created once under a temporary name and removed.

use std::collections::{HashMap, HashSet};

use futures::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::manifest::ArtifactRecord;
use crate::stores::opensearch::http::Http;
use crate::stores::opensearch::leftovers::probe_name;
use crate::stores::RestoreContext;

use super::load::creation_body;
use super::*;
use crate::stores::opensearch::{OpenSearch, SVC};

/// Index definitions tried at once under temporary names before a restore.
const DEFINITION_CHECKS: usize = 4;

const STEP: &str = "check index definitions";

/// What a logical export puts into the cluster besides documents, in the
/// order of the export: (name, body) of each.
#[derive(Default)]
struct Definitions {
    pipelines: Vec<(String, Value)>,
    component_templates: Vec<(String, Value)>,
    index_templates: Vec<(String, Value)>,
    legacy_templates: Vec<(String, Value)>,
    streams: Vec<(String, Value)>,
    indices: Vec<(String, Value)>,
}

impl Definitions {
    fn add(&mut self, line: Line) -> bool {
        let entry = (
            line.name.unwrap_or_default(),
            line.body.unwrap_or(Value::Null),
        );
        let list = match line.kind.as_str() {
            "pipeline" => &mut self.pipelines,
            "component_template" => &mut self.component_templates,
            "index_template" => &mut self.index_templates,
            "legacy_template" => &mut self.legacy_templates,
            "data_stream" => &mut self.streams,
            "index" => &mut self.indices,
            _ => return false,
        };
        list.push(entry);
        true
    }
}

/// What the cluster refused: the kind and name of the definition, and why.
type Refusal = (String, Error);

/// The temporary objects of one check, removed in reverse order of creation
/// whatever happens (a data stream before its template, an index template
/// before its component templates).
#[derive(Default)]
struct Probes {
    created: Vec<String>,
}

impl Probes {
    /// PUT `body` at `path` (a probe's), remembering it for removal; a
    /// refusal names `what` the export calls it.
    async fn put(
        &mut self,
        http: &Http,
        path: String,
        body: Option<&Value>,
        what: String,
    ) -> Result<(), Refusal> {
        let created = http.call(Method::PUT, &path, body, STEP).await;
        self.created.push(path);
        created.map(|_| ()).map_err(|e| (what, e))
    }

    async fn remove(self, http: &Http) {
        for path in self.created.iter().rev() {
            if let Err(e) = http.delete_if_present(path, STEP).await {
                tracing::warn!(service = %SVC, %path, "temporary object left for the next run to remove: {e}");
            }
        }
    }
}

impl OpenSearch {
    /// A logical export loads into other clusters and versions, which is
    /// what it is for; but a cluster of another version, or one without a
    /// plugin a pipeline, template or index used (a processor, an analyzer,
    /// a field type), or with other analysis files, may refuse any of them —
    /// and the restore deletes each index and data stream just before it
    /// creates it. So each is first created once under a temporary name and
    /// removed, before anything is replaced, whatever the versions.
    pub(crate) async fn check_index_definitions(
        &self,
        ctx: &RestoreContext<'_>,
        record: &ArtifactRecord,
    ) -> Result<()> {
        let server_version = self.version().await?;
        let definitions = read_definitions(ctx).await?;
        tracing::info!(service = %SVC, pipelines = definitions.pipelines.len(),
            templates = definitions.component_templates.len() + definitions.index_templates.len() + definitions.legacy_templates.len(),
            data_streams = definitions.streams.len(), indices = definitions.indices.len(),
            backup_version = %record.server_version, %server_version,
            "trying each definition under a temporary name first");
        let mut probes = Probes::default();
        let tried = self.try_definitions(&definitions, &mut probes).await;
        probes.remove(&self.http).await;
        let refused = match tried {
            Ok(()) => self.try_index_definitions(&definitions.indices).await,
            Err(refused) => Some(refused),
        };
        match refused {
            None => Ok(()),
            Some((what, e)) => Err(Error::new(
                e.kind,
                STEP,
                format!(
                    "this cluster (OpenSearch {server_version}) refuses the {what} from OpenSearch {}: {}",
                    record.server_version, e.message
                ),
            )
            .service(SVC)
            .hint("restore into a cluster that accepts them (the same version, with the same plugins and analysis files), or adapt the definition; nothing was changed")),
        }
    }

    /// Pipelines, templates and data streams, one after the other (a data
    /// stream needs its template, an index template its component templates).
    async fn try_definitions(&self, d: &Definitions, probes: &mut Probes) -> Result<(), Refusal> {
        let http = &self.http;
        for (number, (name, body)) in d.pipelines.iter().enumerate() {
            let path = format!("_ingest/pipeline/{}", probe_name('p', number));
            probes
                .put(http, path, Some(body), format!("ingest pipeline {name}"))
                .await?;
        }
        // The export's component templates under their probe names, so that
        // the index templates are tried with them, not with the cluster's.
        let mut components = HashMap::new();
        for (number, (name, body)) in d.component_templates.iter().enumerate() {
            let probe = probe_name('c', number);
            let path = format!("_component_template/{probe}");
            probes
                .put(http, path, Some(body), format!("component template {name}"))
                .await?;
            components.insert(name.as_str(), probe);
        }
        // Each template matches only its own probe names: it cannot shape
        // anything else while it exists.
        let mut templates = HashMap::new();
        for (number, (name, body)) in d.index_templates.iter().enumerate() {
            let probe = probe_name('t', number);
            let mut body = body.clone();
            body["index_patterns"] = json!([format!("{probe}-*")]);
            if let Some(composed) = body["composed_of"].as_array_mut() {
                for part in composed.iter_mut() {
                    if let Some(renamed) = part.as_str().and_then(|p| components.get(p)) {
                        *part = json!(renamed);
                    }
                }
            }
            let path = format!("_index_template/{probe}");
            probes
                .put(http, path, Some(&body), format!("index template {name}"))
                .await?;
            templates.insert(name.as_str(), probe);
        }
        for (number, (name, body)) in d.legacy_templates.iter().enumerate() {
            let probe = probe_name('l', number);
            let mut body = body.clone();
            body["index_patterns"] = json!([format!("{probe}-*")]);
            let path = format!("_template/{probe}");
            probes
                .put(http, path, Some(&body), format!("legacy template {name}"))
                .await?;
        }
        // A data stream is created by its template: the one of the export,
        // tried above. One whose template the export lacks is made by the
        // cluster's own at restore, which cannot be tried under another name.
        for (name, body) in &d.streams {
            let Some(template) = body["template"].as_str().and_then(|t| templates.get(t)) else {
                tracing::debug!(service = %SVC, stream = %name, "its template is not in the export: not tried");
                continue;
            };
            let path = format!("_data_stream/{template}-stream");
            probes
                .put(http, path, None, format!("data stream {name}"))
                .await?;
        }
        Ok(())
    }

    /// Each distinct index definition (daily indices share one), several at
    /// once; each probe is removed as soon as it was made.
    async fn try_index_definitions(&self, indices: &[(String, Value)]) -> Option<Refusal> {
        let mut seen = HashSet::new();
        let tries: Vec<_> = indices
            .iter()
            .filter_map(|(name, meta)| {
                let (body, _) = creation_body(meta);
                seen.insert(body.to_string())
                    .then_some((name.clone(), body))
            })
            .enumerate()
            .map(|(number, (name, body))| {
                let http = self.http.clone();
                Box::pin(async move {
                    let mut probes = Probes::default();
                    let made = probes
                        .put(
                            &http,
                            probe_name('x', number),
                            Some(&body),
                            format!("settings or mappings of index {name}"),
                        )
                        .await;
                    probes.remove(&http).await;
                    made
                })
            })
            .collect();
        // Every try runs to its end (a dropped one would leave its index).
        futures::stream::iter(tries)
            .buffer_unordered(DEFINITION_CHECKS)
            .filter_map(|tried| async move { tried.err() })
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .next()
    }
}

/// Every line of the export but its documents, which are skipped unparsed.
async fn read_definitions(ctx: &RestoreContext<'_>) -> Result<Definitions> {
    let path = ctx.artifact.clone();
    crate::stores::blocking(SVC, move || {
        let mut definitions = Definitions::default();
        let mut failure = None;
        crate::ndjson::read_lines(&path, SVC, MAX_LINE, |line| match line {
            Ok((_, bytes)) if bytes.starts_with(br#"{"type":"doc","#) => true,
            Ok((_, bytes)) => match serde_json::from_slice::<Line>(bytes) {
                Ok(line) => {
                    definitions.add(line);
                    true
                }
                Err(e) => {
                    failure = Some(Error::failure(STEP, e.to_string()).service(SVC));
                    false
                }
            },
            Err(e) => {
                failure = Some(e);
                false
            }
        });
        failure.map_or(Ok(definitions), Err)
    })
    .await
}
