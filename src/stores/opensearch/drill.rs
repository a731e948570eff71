//! The drill's synthetic data in OpenSearch: indices under a prefix of their own.

use async_trait::async_trait;
use reqwest::Method;
use serde_json::{json, Value};

use super::logical::bulk;
use super::OpenSearch;
use crate::error::{Error, Result};
use crate::stores::{DrillData, DrillEvents, DrillInventory, UnorderedDigest};

/// Every index the drill creates starts with this; nothing else is touched.
pub const DRILL_PREFIX: &str = "itbackup-drill-";
const DRILL_INDEX: &str = "itbackup-drill-docs";
/// `drill --cross-store`'s events: a drill index, left out of the inventory.
const EVENTS_INDEX: &str = "itbackup-drill-events";
/// The indices the inventory counts.
const INVENTORIED: &str = "itbackup-drill-*,-itbackup-drill-events*";
const BULK_DOCS: u64 = 5_000;
const SCROLL_PAGE: usize = 5_000;

/// One synthetic document: a few field types a real index has.
fn document(i: u64) -> Value {
    json!({
        "n": i,
        "title": format!("synthetic document {i} ünïcödé"),
        "tag": format!("t{}", i % 10),
        "at": format!("2024-01-01T00:00:{:02}Z", i % 60),
        "score": (i % 1000) as f64 / 7.0,
        "where": {"lat": (i % 180) as f64 - 90.0, "lon": (i % 360) as f64 - 180.0},
        "parts": [{"k": "a", "v": i}, {"k": "b", "v": i * 2}],
    })
}

#[async_trait]
impl DrillData for OpenSearch {
    fn drill_location(&self) -> String {
        format!("indices {DRILL_PREFIX}*")
    }

    async fn holds_only_drill_data(&self) -> Result<bool> {
        let rows = self
            .http
            .get(
                "_cat/indices?format=json&h=index&expand_wildcards=open",
                "drill: inspect",
            )
            .await?;
        Ok(rows.as_array().into_iter().flatten().all(|row| {
            let name = row["index"].as_str().unwrap_or_default();
            name.starts_with('.') || name.starts_with(DRILL_PREFIX)
        }))
    }

    async fn drill_populate(&self, scale: u64) -> Result<()> {
        let step = "drill: populate";
        self.drill_wipe().await?;
        let mapping = json!({
            "settings": {"number_of_shards": 2, "number_of_replicas": 0, "refresh_interval": "-1"},
            "mappings": {"properties": {
                "n": {"type": "long"},
                "title": {"type": "text", "fields": {"raw": {"type": "keyword"}}},
                "tag": {"type": "keyword"},
                "at": {"type": "date"},
                "score": {"type": "double"},
                "where": {"type": "geo_point"},
                "parts": {"type": "nested"}
            }}
        });
        self.http
            .call(Method::PUT, DRILL_INDEX, Some(&mapping), step)
            .await?;
        let mut next = 1;
        while next <= scale {
            let last = (next + BULK_DOCS - 1).min(scale);
            let mut body = Vec::new();
            for i in next..=last {
                serde_json::to_writer(
                    &mut body,
                    &json!({"index": {"_index": DRILL_INDEX, "_id": format!("doc-{i}")}}),
                )
                .expect("serialises");
                body.push(b'\n');
                serde_json::to_writer(&mut body, &document(i)).expect("serialises");
                body.push(b'\n');
            }
            bulk(&self.http, body).await?;
            next = last + 1;
        }
        let settings = json!({"index": {"refresh_interval": null}});
        self.http
            .call(
                Method::PUT,
                &format!("{DRILL_INDEX}/_settings"),
                Some(&settings),
                step,
            )
            .await?;
        self.http
            .call(Method::POST, &format!("{DRILL_INDEX}/_refresh"), None, step)
            .await?;
        Ok(())
    }

    async fn drill_inventory(&self) -> Result<DrillInventory> {
        let step = "drill: inventory";
        let mut digest = UnorderedDigest::default();
        let exists = self
            .http
            .get(
                &format!("_cat/indices/{INVENTORIED}?format=json&h=index"),
                step,
            )
            .await?;
        if exists.as_array().is_none_or(|a| a.is_empty()) {
            return Ok(digest.finish());
        }
        self.http
            .call(Method::POST, &format!("{INVENTORIED}/_refresh"), None, step)
            .await?;
        let body = json!({"size": SCROLL_PAGE, "sort": ["_doc"]});
        self.scroll_hits(INVENTORIED, &body, step, |hit| {
            // Index, id and source: a document in the wrong index or with
            // changed content does not count as restored.
            let record = format!(
                "{}\u{0}{}\u{0}{}",
                hit["_index"], hit["_id"], hit["_source"]
            );
            digest.add(record.as_bytes());
        })
        .await?;
        Ok(digest.finish())
    }

    async fn drill_wipe(&self) -> Result<()> {
        let step = "drill: remove data";
        let rows = self
            .http
            .get(
                &format!("_cat/indices/{DRILL_PREFIX}*?format=json&h=index&expand_wildcards=all"),
                step,
            )
            .await?;
        for row in rows.as_array().into_iter().flatten() {
            if let Some(name) = row["index"].as_str() {
                if !name.starts_with(DRILL_PREFIX) {
                    return Err(Error::failure(step, format!("refusing to delete {name}"))
                        .service(super::SVC));
                }
                self.http.delete_if_present(name, step).await?;
            }
        }
        Ok(())
    }

    async fn drill_events_create(&self) -> Result<()> {
        let step = "drill: create the event index";
        self.http.delete_if_present(EVENTS_INDEX, step).await?;
        let settings = json!({"settings": {"number_of_shards": 1, "number_of_replicas": 0}});
        self.http
            .call(Method::PUT, EVENTS_INDEX, Some(&settings), step)
            .await
            .map(|_| ())
    }

    async fn drill_events_writer(&self) -> Result<Box<dyn DrillEvents>> {
        Ok(Box::new(EventWriter {
            http: self.http.clone(),
        }))
    }

    async fn drill_event_ids(&self) -> Result<std::collections::BTreeSet<u64>> {
        let step = "drill: read events";
        let exists = self
            .http
            .get(
                &format!("_cat/indices/{EVENTS_INDEX}*?format=json&h=index"),
                step,
            )
            .await?;
        let mut ids = std::collections::BTreeSet::new();
        if exists.as_array().is_none_or(|a| a.is_empty()) {
            return Ok(ids);
        }
        self.http
            .call(
                Method::POST,
                &format!("{EVENTS_INDEX}/_refresh"),
                None,
                step,
            )
            .await?;
        let body = json!({"size": SCROLL_PAGE, "sort": ["_doc"], "_source": false});
        self.scroll_hits(EVENTS_INDEX, &body, step, |hit| {
            if let Some(id) = hit["_id"].as_str().and_then(|id| id.parse().ok()) {
                ids.insert(id);
            }
        })
        .await?;
        Ok(ids)
    }

    async fn drill_remove_one(&self) -> Result<()> {
        let step = "drill: remove one document";
        self.http
            .delete_if_present(&format!("{DRILL_INDEX}/_doc/doc-1?refresh=true"), step)
            .await
    }
}

impl OpenSearch {
    /// Every hit of `body` over `target`, page by page through a scroll.
    async fn scroll_hits(
        &self,
        target: &str,
        body: &Value,
        step: &str,
        mut each: impl FnMut(&Value),
    ) -> Result<()> {
        let mut page = self
            .http
            .call(
                Method::POST,
                &format!("{target}/_search?scroll=2m"),
                Some(body),
                step,
            )
            .await?;
        loop {
            let hits = page["hits"]["hits"].as_array().cloned().unwrap_or_default();
            if hits.is_empty() {
                break;
            }
            hits.iter().for_each(&mut each);
            let scroll_id = page["_scroll_id"].as_str().unwrap_or_default().to_string();
            let next = json!({"scroll": "2m", "scroll_id": scroll_id});
            page = self
                .http
                .call(Method::POST, "_search/scroll", Some(&next), step)
                .await?;
        }
        if let Some(scroll_id) = page["_scroll_id"].as_str() {
            let _ = self
                .http
                .call(
                    Method::DELETE,
                    "_search/scroll",
                    Some(&json!({"scroll_id": scroll_id})),
                    step,
                )
                .await;
        }
        Ok(())
    }
}

struct EventWriter {
    http: super::http::Http,
}

#[async_trait]
impl DrillEvents for EventWriter {
    async fn write(&mut self, id: u64) -> Result<()> {
        self.http
            .call(
                Method::PUT,
                &format!("{EVENTS_INDEX}/_doc/{id}"),
                Some(&json!({"id": id})),
                "drill: write an event",
            )
            .await
            .map(|_| ())
    }
}
