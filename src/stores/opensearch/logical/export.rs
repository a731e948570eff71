//! The export: definitions, then documents (read by [`super::scan`]) streamed
//! into the artifact, each index's count and content digest into the record.

use serde_json::json;

use crate::artifact::{self, ExportSender, PendingArtifact};
use crate::error::{Error, Result};
use crate::manifest::ArtifactRecord;
use crate::stores::BackupContext;

use super::scan::{Hit, PageSink, View};
use super::*;
use crate::consistency::OpenSearchPosition;
use crate::moment::Moment;
use crate::stores::opensearch::position::widen_position;
use crate::stores::opensearch::{IndexInfo, OpenSearch, Selection, SVC};
use std::collections::BTreeMap;

impl OpenSearch {
    pub(in crate::stores::opensearch) async fn backup_logical(
        &self,
        ctx: &BackupContext<'_>,
        indices: &Selection,
        record: &mut ArtifactRecord,
    ) -> Result<PendingArtifact> {
        let file = format!("opensearch_{}.ndjson.zst", ctx.timestamp);
        // A chunk is a page (PAGE_SIZE documents, ~2 MB of ~1 KB ones): 4
        // of them bound the queue to ~10 MB (16 held up to ~40 MB, no faster).
        artifact::export_zstd(ctx.artifacts, file, SVC, 4, |tx| async move {
            self.export_all(indices, &tx, record, ctx.moment).await
        })
        .await
    }

    async fn export_all(
        &self,
        selection: &Selection,
        tx: &ExportSender,
        record: &mut ArtifactRecord,
        moment: &Moment,
    ) -> Result<()> {
        // A coordinated backup fixes every index's view now, at the moment,
        // and reads them one by one afterwards (kept alive meanwhile).
        let mut ahead = BTreeMap::new();
        if moment.is_coordinated() {
            let mut scrolls = false;
            for index in selection.concrete() {
                let seq_nos = self.seq_nos(std::slice::from_ref(&index.name)).await;
                let view = self.open_view(index, "open points in time").await?;
                scrolls |= matches!(view, View::Scroll);
                ahead.insert(index.name.clone(), (seq_nos, view));
            }
            // A scroll's view is fixed only when it opens: without points
            // in time the freeze lasts until the export has read everything.
            if !scrolls {
                moment.reached(SVC);
            }
        }
        let waiting = std::sync::Mutex::new(
            ahead
                .values()
                .filter_map(|(_, v)| v.pit_id())
                .collect::<Vec<_>>(),
        );
        let exported = async {
            let result = self
                .export_definitions_and_documents(selection, tx, record, &mut ahead, &waiting)
                .await;
            // Views opened ahead that a failure left unread.
            let left: Vec<String> = ahead.values().filter_map(|(_, v)| v.pit_id()).collect();
            self.close_pits(&left, "close points in time").await;
            result
        };
        tokio::select! {
            result = exported => result,
            _ = self.keep_views_alive(&waiting) => unreachable!("keeps views alive until dropped"),
        }
    }

    async fn export_definitions_and_documents(
        &self,
        selection: &Selection,
        tx: &ExportSender,
        record: &mut ArtifactRecord,
        ahead: &mut BTreeMap<String, (Option<OpenSearchPosition>, View)>,
        waiting: &std::sync::Mutex<Vec<String>>,
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
        let mut take = |name: &str| {
            let taken = ahead.remove(name);
            if let Some(id) = taken.as_ref().and_then(|(_, v)| v.pit_id()) {
                waiting
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|w| *w != id);
            }
            taken
        };
        for index in &selection.indices {
            total += self
                .export_index(index, tx, record, take(&index.name))
                .await?;
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
                total += self
                    .export_index(index, tx, record, take(&index.name))
                    .await?;
            }
        }
        let mut end = Line::new("end");
        end.docs = Some(total);
        tx.send(end.to_bytes()).await
    }

    /// One index: its definition, its documents, its end record; records
    /// its document count and content digest, answers the count.
    async fn export_index(
        &self,
        index: &IndexInfo,
        tx: &ExportSender,
        record: &mut ArtifactRecord,
        ahead: Option<(Option<OpenSearchPosition>, View)>,
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
        let (seq_nos, view) = match ahead {
            Some(ahead) => ahead,
            None => (
                // Read before the point in time opens: it holds at least these operations.
                self.seq_nos(std::slice::from_ref(&index.name)).await,
                self.open_view(index, &format!("export documents of {}", index.name))
                    .await?,
            ),
        };
        let (digest, opened) = self.scan_view(index, view, PageSink::Export(tx)).await?;
        widen_position(&mut record.position, opened, seq_nos);
        let docs = digest.count();
        let mut end = Line::new("index_end");
        end.name = Some(index.name.clone());
        end.docs = Some(docs);
        tx.send(end.to_bytes()).await?;
        record.counts.insert(index.name.clone(), docs);
        record.digests.insert(index.name.clone(), digest.hex());
        tracing::info!(index = %index.name, docs, "opensearch: exported index");
        Ok(docs)
    }

    /// The hits as `doc` lines, each `_source` copied once, from the page to the line.
    pub(super) async fn send_hits(
        &self,
        index: &str,
        hits: &[Hit<'_>],
        tx: &ExportSender,
        step: &str,
    ) -> Result<()> {
        let mut chunk = Vec::with_capacity(
            hits.iter()
                .map(|h| h.source.map_or(0, |s| s.get().len()) + 64)
                .sum(),
        );
        for hit in hits {
            let source = hit.required_source(index, step)?;
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
                        crate::human::size((chunk.len() - start) as u64),
                        crate::human::size(MAX_LINE as u64)
                    ),
                )
                .service(SVC)
                .hint("back this index up with --opensearch-method snapshot, which has no such bound"));
            }
            chunk.push(b'\n');
        }
        tx.send(chunk).await
    }
}
