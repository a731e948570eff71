//! OpenSearch as a sandbox drill's server: marked by an index of its own;
//! cleaned by deleting every data stream and every index but the system's
//! (names starting with a dot) and the mark. Templates and pipelines a
//! restore put back stay: they hold no documents, and the next restore
//! replaces them.

use async_trait::async_trait;
use reqwest::Method;
use serde_json::json;

use super::drill::DRILL_PREFIX;
use super::OpenSearch;
use crate::error::Result;
use crate::stores::sandbox::{SandboxServer, SandboxState, SANDBOX_MARK};

/// Indices deleted per request: names go into the URL.
const DELETE_BATCH: usize = 20;

impl OpenSearch {
    /// The indices of the cluster that are not the system's (open or closed).
    async fn user_indices(&self, step: &str) -> Result<Vec<String>> {
        let rows = self
            .http
            .get(
                "_cat/indices?format=json&h=index&expand_wildcards=open,closed",
                step,
            )
            .await?;
        Ok(rows
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|row| row["index"].as_str())
            .filter(|name| !name.starts_with('.'))
            .map(String::from)
            .collect())
    }
}

#[async_trait]
impl SandboxServer for OpenSearch {
    async fn sandbox_state(&self) -> Result<SandboxState> {
        let indices = self.user_indices("inspect sandbox").await?;
        if indices.iter().any(|i| i == SANDBOX_MARK) {
            return Ok(SandboxState::Marked);
        }
        let held: Vec<&String> = indices
            .iter()
            .filter(|i| !i.starts_with(DRILL_PREFIX))
            .collect();
        Ok(match held.as_slice() {
            [] => SandboxState::Empty,
            some => SandboxState::Holds(format!(
                "{} index(es): {}",
                some.len(),
                some.iter()
                    .take(5)
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        })
    }

    async fn mark_sandbox(&self) -> Result<()> {
        let step = "mark sandbox";
        if self
            .user_indices(step)
            .await?
            .iter()
            .any(|i| i == SANDBOX_MARK)
        {
            return Ok(());
        }
        let body = json!({
            "settings": {"number_of_shards": 1, "number_of_replicas": 0},
            "mappings": {"_meta": {
                "itbackup": "sandbox: drills restore real backups into this cluster and remove them afterwards"
            }}
        });
        self.http
            .call(Method::PUT, SANDBOX_MARK, Some(&body), step)
            .await
            .map(|_| ())
    }

    async fn clean_sandbox(&self) -> Result<()> {
        let step = "clean sandbox";
        let streams = self.http.get_listing("_data_stream", step).await?;
        for stream in streams["data_streams"].as_array().into_iter().flatten() {
            if let Some(name) = stream["name"].as_str() {
                self.http
                    .delete_if_present(&format!("_data_stream/{name}"), step)
                    .await?;
            }
        }
        let doomed: Vec<String> = self
            .user_indices(step)
            .await?
            .into_iter()
            .filter(|i| i != SANDBOX_MARK)
            .collect();
        for batch in doomed.chunks(DELETE_BATCH) {
            self.http.delete_if_present(&batch.join(","), step).await?;
        }
        self.mark_sandbox().await
    }
}
