//! Before a logical restore changes anything: every distinct index definition
//! is created once under a temporary name and removed.

use std::collections::HashSet;

use futures::StreamExt;
use reqwest::Method;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::manifest::ArtifactRecord;
use crate::stores::RestoreContext;

use super::load::creation_body;
use super::*;
use crate::stores::opensearch::{OpenSearch, SVC};

/// Index definitions tried at once under temporary names before a restore.
const DEFINITION_CHECKS: usize = 4;

impl OpenSearch {
    /// A logical export loads into other clusters and versions, which is
    /// what it is for; but a cluster of another version, or one without a
    /// plugin an index used (an analyzer, a field type), or with other
    /// analysis files, may refuse an index's settings or mappings — and the
    /// restore deletes each index just before it creates it. So every
    /// distinct index definition is first created once under a temporary
    /// name and removed, before anything is replaced, whatever the versions.
    pub(crate) async fn check_index_definitions(
        &self,
        ctx: &RestoreContext<'_>,
        record: &ArtifactRecord,
    ) -> Result<()> {
        let server_version = self.version().await?;
        let step = "check index definitions";
        let path = ctx.artifact.to_path_buf();
        let definitions = crate::stores::blocking(SVC, move || {
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
                    let probe = crate::stores::opensearch::leftovers::probe_index(number);
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
}
