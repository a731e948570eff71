//! One `_bulk` request and how its answer is read.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

use crate::stores::opensearch::http::{Http, HttpError};
use crate::stores::opensearch::SVC;

/// Every `_bulk` answer is cut to what [`BulkAnswer`] reads: the server then
/// serialises a few bytes per document instead of its whole result.
const BULK_PATH: &str =
    "_bulk?pipeline=_none&filter_path=errors,items.*._id,items.*._index,items.*.status,items.*.error";

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

/// One `_bulk` request, retried with back-off while the cluster pushes back (429).
/// Every action carries its `_id`, so sending a batch twice is harmless. The
/// body is shared between attempts, never copied.
pub(crate) async fn bulk(http: &Http, body: Vec<u8>) -> Result<()> {
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
