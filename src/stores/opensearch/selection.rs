//! What a backup takes of the cluster: indices and data streams by the
//! `--indices` patterns, and what it leaves out.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::error::Result;

use super::{IndexInfo, LeftOut, OpenSearch, Selection, StreamInfo, SVC};

impl OpenSearch {
    /// What to back up, by the `--indices` patterns or everything: plain
    /// indices, and data streams whole (their backing indices in generation
    /// order). Whatever a pattern matches but the backup does not take
    /// (closed, hidden or dot-prefixed indices) is listed as left out, so that
    /// nothing is skipped silently.
    pub(super) async fn select(&self) -> Result<Selection> {
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
        let info = self.index_sizes(pattern, step).await?;
        let literal = literal_names(named, &resolved);
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
            let reason = left_out_reason(name, &attributes, &literal, named.is_none());
            match reason {
                Some(reason) => selection.left_out.push(LeftOut {
                    name: name.to_string(),
                    reason: reason.to_string(),
                }),
                None => selection.indices.push(info.of(name)),
            }
        }
        for name in stream_names {
            let stream = self.select_stream(name, &info).await?;
            selection.streams.push(stream);
        }
        selection.indices.sort_by(|a, b| a.name.cmp(&b.name));
        if !selection.left_out.is_empty() {
            let names: Vec<&str> = selection.left_out.iter().map(|l| l.name.as_str()).collect();
            tracing::warn!(service = %SVC, left_out = %names.join(", "), "indices left out of the backup (named in the manifest's details.left_out)");
        }
        Ok(selection)
    }

    /// The primary shard count and size of every index `pattern` matches.
    pub(super) async fn index_sizes(&self, pattern: &str, step: &str) -> Result<IndexSizes> {
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
        Ok(IndexSizes(sizes))
    }

    /// A data stream, with its backing indices in generation order.
    async fn select_stream(&self, name: String, info: &IndexSizes) -> Result<StreamInfo> {
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
            .map(|index| info.of(index))
            .collect();
        Ok(StreamInfo {
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
        })
    }
}

/// Primary shards and their bytes, by index name.
pub(super) struct IndexSizes(BTreeMap<String, (usize, u64)>);

impl IndexSizes {
    /// The index `name`, if the cluster has it.
    pub(super) fn find(&self, name: &str) -> Option<IndexInfo> {
        self.0.contains_key(name).then(|| self.of(name))
    }

    fn of(&self, name: &str) -> IndexInfo {
        let (primaries, primary_bytes) = self.0.get(name).copied().unwrap_or((1, 0));
        IndexInfo {
            name: name.to_string(),
            primaries,
            primary_bytes,
        }
    }
}

/// The names given literally (not through a wildcard) in `--indices`, and
/// the indices of an alias named so: taken even when hidden or dot-prefixed.
fn literal_names(named: Option<&str>, resolved: &Value) -> BTreeSet<String> {
    let mut literal: BTreeSet<String> = named
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
    literal
}

/// Why an index the pattern matched is not backed up, if it is not.
/// `everything`: no `--indices` was given.
fn left_out_reason(
    name: &str,
    attributes: &[&str],
    literal: &BTreeSet<String>,
    everything: bool,
) -> Option<&'static str> {
    if attributes.contains(&"closed") {
        Some("closed: its documents cannot be read; open it (POST <index>/_open) to back it up")
    } else if literal.contains(name) {
        None
    } else if attributes.contains(&"hidden") || attributes.contains(&"system") {
        Some("hidden or system index: name it in --indices to back it up")
    } else if everything && name.starts_with('.') {
        Some("dot-prefixed (system or plugin) index: name it in --indices to back it up")
    } else {
        None
    }
}
