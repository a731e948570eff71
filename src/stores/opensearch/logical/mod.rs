//! The logical method: settings, mappings, templates, pipelines and every
//! document as zstd-compressed NDJSON (format in `docs/opensearch-logical.md`).

use crate::artifact::ArtifactSource;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::error::Result;

use crate::manifest::ArtifactRecord;
use crate::process::mask_userinfo;
use crate::stores::opensearch::{OpenSearch, SVC};
use crate::stores::{BackupContext, RestoreContext};

mod bulk;
mod check;
mod definitions;
mod export;
mod limits;
mod load;
mod scan;

pub(crate) use bulk::bulk;
use check::check_logical;
pub(crate) use load::Pick;

const LOGICAL_FORMAT: &str = "itbackup-opensearch-ndjson";

const LOGICAL_VERSION: u32 = 1;

/// The longest line of the logical format: one record, which the export, the
/// verification and the restore each hold whole. The export refuses a
/// document that would make a longer line; the readers refuse such a line.
const MAX_LINE: usize = 256 << 20;

/// OpenSearch refuses longer document ids.
const MAX_ID_BYTES: usize = 512;

/// The largest `_bulk` entry (action line and source) that loading an export
/// takes: no request can be smaller than the entry it carries.
#[derive(Debug, Clone, Default)]
pub(crate) struct LoadNeeds {
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

/// The generation of the backing index `index` of data stream `stream`
/// (`.ds-<stream>-000002` → 2).
fn backing_generation(stream: &str, index: &str) -> Option<u64> {
    index
        .strip_prefix(&format!(".ds-{stream}-"))
        .filter(|n| n.len() >= 6 && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse().ok())
}

/// Each record of the export at `path` with its line number and its size
/// in bytes; a line longer than [`MAX_LINE`] or that does not decode ends
/// the reading with an error naming it.
fn read_records(path: &ArtifactSource, mut sink: impl FnMut(Result<(usize, usize, Line)>) -> bool) {
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

impl OpenSearch {
    /// The steps a logical backup runs, for `--dry-run`.
    pub(in crate::stores::opensearch) fn plan_logical_backup(
        &self,
        ctx: &BackupContext<'_>,
        indices: &str,
    ) -> Vec<String> {
        let url = mask_userinfo(&self.settings.url);
        vec![
            format!("GET {url}/_component_template, _index_template, _template, _ingest/pipeline"),
            format!("for each index ({indices}): GET settings, mappings, aliases; documents through point-in-time search in parallel slices"),
            format!("write {}/opensearch_{}.ndjson.zst", ctx.dir.display(), ctx.timestamp),
        ]
    }

    /// Offline check of a logical export ([`check_logical`]); what the load
    /// will need of the cluster is kept for [`Self::prepare_logical_restore`].
    pub(in crate::stores::opensearch) async fn check_logical_export(
        &self,
        artifact: &ArtifactSource,
        record: &ArtifactRecord,
    ) -> Result<()> {
        let path = artifact.clone();
        let record = record.clone();
        let key = path.to_string();
        let needs = crate::stores::blocking(SVC, move || check_logical(&path, &record)).await?;
        if let Ok(mut known) = self.needs.lock() {
            known.insert(key, needs);
        }
        Ok(())
    }

    /// The steps a logical restore runs, for `--dry-run`.
    pub(in crate::stores::opensearch) fn plan_logical_restore(
        &self,
        record: &ArtifactRecord,
    ) -> Vec<String> {
        let indices: Vec<String> = record.counts.keys().cloned().collect();
        vec![
            format!("before any change: create each pipeline, template, data stream and distinct index definition of the export (taken on OpenSearch {}) once under a temporary name and remove it", record.server_version),
            "PUT templates and ingest pipelines".into(),
            format!("for each index ({}): DELETE, create with its settings (replicas 0, refresh off), _bulk load, put settings back, refresh, aliases", indices.join(", ")),
            "a data stream: DELETE it, PUT _data_stream/<name>, roll over to each backing index and _bulk create its documents through the stream".into(),
            "wait until every restored index is at least yellow".into(),
        ]
    }

    /// Before any store changes: the cluster must take every document's
    /// `_bulk` request and every index definition.
    pub(in crate::stores::opensearch) async fn prepare_logical_restore(
        &self,
        ctx: &RestoreContext<'_>,
        record: &ArtifactRecord,
    ) -> Result<()> {
        self.check_load_limits(ctx, record).await?;
        self.check_index_definitions(ctx, record).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backing_generations_are_read_from_their_names() {
        assert_eq!(backing_generation("logs", ".ds-logs-000002"), Some(2));
        assert_eq!(backing_generation("logs", ".ds-logs-x-000002"), None);
        assert_eq!(backing_generation("logs", ".ds-logs-12"), None);
    }
}
