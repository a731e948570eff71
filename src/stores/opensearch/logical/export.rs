//! The export: definitions and documents through point-in-time search (scroll
//! where PIT is missing) in parallel slices, streamed into the artifact.

use std::borrow::Cow;

use reqwest::Method;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::artifact::{self, ExportSender, PendingArtifact};
use crate::error::{Error, Result};
use crate::manifest::ArtifactRecord;
use crate::process::mask_userinfo;
use crate::stores::BackupContext;

use super::*;
use crate::stores::opensearch::http::{timed_out, HttpError};
use crate::stores::opensearch::{IndexInfo, OpenSearch, Selection, SVC};

/// Hits per search page; one page per slice is all we hold.
const PAGE_SIZE: usize = 2000;

const KEEP_ALIVE: &str = "5m";

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
                        crate::human::size((chunk.len() - start) as u64),
                        crate::human::size(MAX_LINE as u64)
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
}
