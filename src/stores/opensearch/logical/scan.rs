//! Every document of an index, read through point-in-time search (scroll
//! where PIT is missing) in parallel slices, each page handed on as it comes:
//! into the export's `doc` lines, and into the index's content digest — the
//! backup's, or the one a check after a restore compares with it.
//!
//! A document's digest record is its `_id`, its `_routing` (empty when it has
//! none) and its `_source` exactly as the cluster returns it, joined by NUL
//! bytes ([`UnorderedDigest::add_fields`]). The bytes, not a re-serialised
//! parse: the export writes them and the restore loads them unchanged, and
//! the cluster returns a stored `_source` verbatim, so a restored document
//! digests the same; parsing each source to re-serialise it would cost about
//! five times the hashing on every backup.

use std::borrow::Cow;

use reqwest::Method;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::artifact::ExportSender;
use crate::error::{Error, Result};
use crate::process::mask_userinfo;
use crate::stores::opensearch::http::{timed_out, HttpError};
use crate::stores::opensearch::{IndexInfo, OpenSearch, SVC};
use crate::stores::UnorderedDigest;

/// Hits per search page; one page per slice is all we hold.
const PAGE_SIZE: usize = 2000;

const KEEP_ALIVE: &str = "5m";

/// What a scan reads: a point in time, or (clusters without them) a sliced
/// scroll, whose view is fixed only when it opens.
pub(super) enum View {
    Pit {
        id: String,
        created: jiff::Timestamp,
    },
    Scroll,
}

impl View {
    pub(super) fn pit_id(&self) -> Option<String> {
        match self {
            View::Pit { id, .. } => Some(id.clone()),
            View::Scroll => None,
        }
    }
}

fn scan_step(index: &IndexInfo, sink: PageSink<'_>) -> String {
    match sink {
        PageSink::Export(_) => format!("export documents of {}", index.name),
        PageSink::DigestOnly => format!("digest documents of {}", index.name),
    }
}

/// A search hit, borrowed from its page: `_source` stays the page's own bytes.
#[derive(Deserialize)]
pub(super) struct Hit<'a> {
    #[serde(rename = "_id", borrow)]
    pub(super) id: Cow<'a, str>,
    #[serde(rename = "_routing", default, borrow)]
    pub(super) routing: Option<Cow<'a, str>>,
    #[serde(rename = "_source", default, borrow)]
    pub(super) source: Option<&'a RawValue>,
    /// Only the last hit's is decoded (for `search_after`).
    #[serde(default, borrow)]
    sort: Option<&'a RawValue>,
}

impl<'a> Hit<'a> {
    /// The document's `_source`, which the logical method cannot do without.
    pub(super) fn required_source(&self, index: &str, step: &str) -> Result<&'a RawValue> {
        self.source.ok_or_else(|| {
            Error::failure(step, format!("document {} of index {index} has no _source", self.id))
                .service(SVC)
                .hint("the index has _source disabled, so its documents cannot be exported: use --opensearch-method snapshot")
        })
    }
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

/// Where the pages of a scan go besides the digest.
#[derive(Clone, Copy)]
pub(super) enum PageSink<'a> {
    /// Into the export, as `doc` lines.
    Export(&'a ExportSender),
    /// Nowhere: the digest is all that is wanted.
    DigestOnly,
}

impl OpenSearch {
    /// The digest of every document of `index` as it is now, computed as
    /// the export computes it (a full read of the index).
    pub(in crate::stores::opensearch) async fn digest_documents(
        &self,
        index: &IndexInfo,
    ) -> Result<UnorderedDigest> {
        self.scan_documents(index, PageSink::DigestOnly).await
    }

    /// Every document of one index, in parallel slices over one point in
    /// time, handed to `sink`: their number and digest.
    pub(super) async fn scan_documents(
        &self,
        index: &IndexInfo,
        sink: PageSink<'_>,
    ) -> Result<UnorderedDigest> {
        self.scan_documents_at(index, sink)
            .await
            .map(|(digest, _)| digest)
    }

    /// `scan_documents`, and the moment its view was fixed: the PIT's
    /// `creation_time` (the cluster's clock), or for a scroll the time just
    /// before it opened.
    pub(super) async fn scan_documents_at(
        &self,
        index: &IndexInfo,
        sink: PageSink<'_>,
    ) -> Result<(UnorderedDigest, jiff::Timestamp)> {
        let view = self.open_view(index, &scan_step(index, sink)).await?;
        self.scan_view(index, view, sink).await
    }

    /// Fix the view of `index` its scan will read: refreshed (a point in
    /// time sees only refreshed documents), then a point in time opened.
    pub(super) async fn open_view(&self, index: &IndexInfo, step: &str) -> Result<View> {
        self.http
            .call(
                Method::POST,
                &format!("{}/_refresh", index.name),
                None,
                step,
            )
            .await?;
        let opened = jiff::Timestamp::now();
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
        Ok(match pit {
            Ok(answer) if answer["pit_id"].is_string() => View::Pit {
                id: answer["pit_id"].as_str().unwrap_or_default().to_string(),
                created: answer["creation_time"]
                    .as_i64()
                    .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
                    .unwrap_or(opened),
            },
            // Clusters without point-in-time search: sliced scroll, which
            // reads a snapshot too, fixed when the scroll opens.
            _ => View::Scroll,
        })
    }

    /// Read every document of `view` (and close it); the moment it was fixed.
    pub(super) async fn scan_view(
        &self,
        index: &IndexInfo,
        view: View,
        sink: PageSink<'_>,
    ) -> Result<(UnorderedDigest, jiff::Timestamp)> {
        let step = scan_step(index, sink);
        match view {
            View::Pit { id, created } => {
                let scanned = self.scan_pit(index, &id, sink, &step).await;
                self.close_pits(&[id], &step).await;
                scanned.map(|digest| (digest, created))
            }
            View::Scroll => {
                let opened = jiff::Timestamp::now();
                let slices = self.settings.slices.min(index.primaries.max(1));
                let jobs = (0..slices)
                    .map(|slice| self.scan_slice_scroll(&index.name, slice, slices, sink, &step));
                let mut digest = UnorderedDigest::default();
                for slice in futures::future::try_join_all(jobs).await? {
                    digest.merge(&slice);
                }
                Ok((digest, opened))
            }
        }
    }

    /// Close points in time (a failure only leaves them to expire).
    pub(super) async fn close_pits(&self, ids: &[String], step: &str) {
        if ids.is_empty() {
            return;
        }
        let _ = self
            .http
            .call(
                Method::DELETE,
                "_search/point_in_time",
                Some(&json!({ "pit_id": ids })),
                step,
            )
            .await;
    }

    /// Keep points in time opened ahead of their scan alive: each is
    /// extended every minute (they expire after [`KEEP_ALIVE`] unused)
    /// until it is taken from `waiting`. Never ends; drop it when done.
    pub(super) async fn keep_views_alive(&self, waiting: &std::sync::Mutex<Vec<String>>) {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            let ids = waiting.lock().unwrap_or_else(|e| e.into_inner()).clone();
            for id in ids {
                let body = json!({"size": 0, "pit": {"id": id, "keep_alive": KEEP_ALIVE}});
                if let Err(e) = self
                    .http
                    .call(
                        Method::POST,
                        "_search",
                        Some(&body),
                        "keep points in time alive",
                    )
                    .await
                {
                    tracing::warn!(error = %e, "opensearch: could not extend a point in time opened ahead of its scan");
                }
            }
        }
    }

    async fn scan_pit(
        &self,
        index: &IndexInfo,
        pit_id: &str,
        sink: PageSink<'_>,
        step: &str,
    ) -> Result<UnorderedDigest> {
        use futures::stream::{StreamExt, TryStreamExt};
        let slices = index.primaries.max(1);
        let digest = futures::stream::iter(0..slices)
            .map(|slice| self.scan_slice_pit(&index.name, pit_id, slice, slices, sink, step))
            .buffer_unordered(self.settings.slices)
            .try_fold(UnorderedDigest::default(), |mut digest, slice| async move {
                digest.merge(&slice);
                Ok(digest)
            })
            .await?;
        let read = digest.count();
        let body = json!({"size": 0, "track_total_hits": true, "pit": {"id": pit_id, "keep_alive": KEEP_ALIVE}});
        let total = self
            .http
            .call(Method::POST, "_search", Some(&body), step)
            .await?;
        let expected = total["hits"]["total"]["value"].as_u64().unwrap_or(read);
        if expected != read {
            return Err(Error::failure(step, format!("read {read} documents of {} but its point in time holds {expected}", index.name))
                .service(SVC)
                .hint("use --opensearch-method snapshot, or report this: the cluster's paging did not return every document"));
        }
        Ok(digest)
    }

    async fn scan_slice_pit(
        &self,
        index: &str,
        pit_id: &str,
        slice: usize,
        slices: usize,
        sink: PageSink<'_>,
        step: &str,
    ) -> Result<UnorderedDigest> {
        let mut pit_id = pit_id.to_string();
        let mut after: Option<Vec<Value>> = None;
        let mut digest = UnorderedDigest::default();
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
            self.take_page(index, &page.hits.hits, sink, &mut digest, step)
                .await?;
        }
        Ok(digest)
    }

    async fn scan_slice_scroll(
        &self,
        index: &str,
        slice: usize,
        slices: usize,
        sink: PageSink<'_>,
        step: &str,
    ) -> Result<UnorderedDigest> {
        let mut body = json!({"size": PAGE_SIZE, "sort": ["_doc"]});
        if slices > 1 {
            body["slice"] = json!({"id": slice, "max": slices});
        }
        let mut bytes = self
            .search_page(&format!("{index}/_search?scroll={KEEP_ALIVE}"), &body, step)
            .await?;
        let mut digest = UnorderedDigest::default();
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
            self.take_page(index, &page.hits.hits, sink, &mut digest, step)
                .await?;
            let Some(id) = scroll_id else { break };
            bytes = self
                .search_page(
                    "_search/scroll",
                    &json!({"scroll": KEEP_ALIVE, "scroll_id": id}),
                    step,
                )
                .await?;
        }
        Ok(digest)
    }

    /// One page of hits: each document into `digest`, then the page to `sink`.
    async fn take_page(
        &self,
        index: &str,
        hits: &[Hit<'_>],
        sink: PageSink<'_>,
        digest: &mut UnorderedDigest,
        step: &str,
    ) -> Result<()> {
        for hit in hits {
            let source = hit.required_source(index, step)?;
            let routing = hit.routing.as_deref().unwrap_or_default();
            digest.add_fields(&[
                hit.id.as_bytes(),
                routing.as_bytes(),
                source.get().as_bytes(),
            ]);
        }
        match sink {
            PageSink::Export(tx) => self.send_hits(index, hits, tx, step).await,
            PageSink::DigestOnly => Ok(()),
        }
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
}
