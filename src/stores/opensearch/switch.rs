//! `restore --switch` for the snapshot-based methods: each selected index
//! is restored beside the live one, checked, and only then switched in.
//!
//! 1. FROM is restored from the snapshot as `itbackup-new-<hash of FROM>`
//!    (no aliases) while the live FROM keeps serving; its document count
//!    is compared with the manifest's. A restore that fails or a count that
//!    differs deletes the copies: the live indices are untouched.
//! 2. The switch, index after index: writes to the live FROM are blocked,
//!    FROM is cloned to `itbackup-old-<hash of FROM>` (a clone shares the
//!    segment files: quick and nearly free on disk), FROM is deleted and
//!    the restored copy cloned to FROM, with the live FROM's aliases. From
//!    the write block to the clone's primaries being active is the
//!    downtime for writers; readers miss FROM only between the delete and
//!    the clone. A failure here deletes what is under FROM and clones the
//!    old copy back, for every index already switched.
//! 3. The copies go; the old ones too, or, with `--keep-old`, each is kept
//!    as `FROM-before-<YYYYmmddHHMMSS>`.
//!
//! What the application sees: FROM with the backup's documents, mappings
//! and settings, and its own aliases as they were (the backup's aliases are
//! not applied: the live ones are what it uses).

use std::time::Instant;

use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{OpenSearch, SVC};
use crate::error::{Error, Result};
use crate::manifest::ArtifactRecord;

/// `itbackup-<kind>-<16 hex digits of FROM's SHA-256>`: a valid index name
/// whatever FROM is, found again by the next run after a kill.
fn side_name(kind: &str, index: &str) -> String {
    let hash = Sha256::digest(index.as_bytes());
    format!("itbackup-{kind}-{}", hex::encode(&hash[..8]))
}

/// The name `index` is restored under beside the live one.
pub(super) fn copy_name(index: &str) -> String {
    side_name("new", index)
}

impl OpenSearch {
    /// Restore `indices` from `repo`/`snapshot` beside the live ones, then
    /// check and switch them in ([`OpenSearch::switch_copies`]).
    pub(super) async fn restore_switching(
        &self,
        repo: &str,
        snapshot: &str,
        record: &ArtifactRecord,
        indices: &[String],
        keep_old: bool,
    ) -> Result<()> {
        let step = "restore beside the live index";
        let copies: Vec<String> = indices.iter().map(|i| copy_name(i)).collect();
        let beside = async {
            for (index, copy) in indices.iter().zip(&copies) {
                self.http.delete_if_present(copy, step).await?;
                self.http
                    .call(
                        Method::POST,
                        &format!("_snapshot/{repo}/{snapshot}/_restore"),
                        Some(&json!({
                            "indices": index,
                            "include_global_state": false,
                            "include_aliases": false,
                            "rename_pattern": format!("\\Q{index}\\E"),
                            "rename_replacement": copy,
                        })),
                        step,
                    )
                    .await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = beside {
            self.delete_all(&copies).await;
            return Err(e);
        }
        self.switch_copies(record, indices, keep_old).await
    }

    /// The copies restored beside `indices` ([`copy_name`]), however they
    /// were loaded: active, their document counts the manifest's — else
    /// deleted, the live indices untouched —, then switched in.
    pub(super) async fn switch_copies(
        &self,
        record: &ArtifactRecord,
        indices: &[String],
        keep_old: bool,
    ) -> Result<()> {
        let step = "check the restored copies";
        let copies: Vec<String> = indices.iter().map(|i| copy_name(i)).collect();
        let checked = async {
            self.wait_healthy(&copies, step).await?;
            let mut expected = std::collections::BTreeMap::new();
            let mut found = std::collections::BTreeMap::new();
            for (index, copy) in indices.iter().zip(&copies) {
                expected.insert(index.clone(), record.counts.get(index).copied().unwrap_or(0));
                found.insert(index.clone(), self.count_docs(copy).await?);
            }
            crate::stores::compare_counts(SVC, &expected, &found).map_err(|e| {
                e.hint("nothing was switched: the live indices are as they were, the restored copies are deleted")
            })
        }
        .await;
        if let Err(e) = checked {
            self.delete_all(&copies).await;
            return Err(e);
        }
        // (index, whether its old copy is complete: then the live one may be gone)
        let mut switched: Vec<(String, bool)> = Vec::new();
        let began = Instant::now();
        for (index, copy) in indices.iter().zip(&copies) {
            let mut kept = false;
            let outcome = self.switch_index(index, copy, &mut kept).await;
            switched.push((index.clone(), kept));
            if let Err(e) = outcome {
                return Err(self.switch_back(&switched, &copies, e).await);
            }
        }
        let downtime = began.elapsed();
        self.delete_all(&copies).await;
        let stamp = jiff::Zoned::now().strftime("%Y%m%d%H%M%S").to_string();
        // Only the old copies this run made: one an interrupted switch left
        // (its live index already deleted) holds that run's data from before
        // it, and stays for the operator.
        for (index, _) in switched.iter().filter(|(_, kept)| *kept) {
            let old = side_name("old", index);
            if keep_old {
                let kept = format!("{index}-before-{stamp}");
                match self
                    .clone_index(&old, &kept, json!({}), "keep the old index")
                    .await
                {
                    Ok(()) => {
                        tracing::info!(service = %SVC, index = %index, kept = %kept, "the index from before the switch is kept")
                    }
                    Err(e) => {
                        tracing::error!(service = %SVC, index = %index, "the index from before the switch could not be kept as {kept} ({e}); it is in {old}");
                        continue;
                    }
                }
            }
            let _ = self
                .http
                .delete_if_present(&old, "drop the old index")
                .await;
        }
        tracing::info!(service = %SVC, indices = %indices.join(", "), downtime_ms = downtime.as_millis() as u64, "switched to the restored indices");
        Ok(())
    }

    /// Block writes on the live `index`, keep it as its old copy (`kept`
    /// once that copy is complete), delete it, and clone `copy` to its name
    /// with its aliases.
    async fn switch_index(&self, index: &str, copy: &str, kept: &mut bool) -> Result<()> {
        let step = format!("switch index {index}");
        let old = side_name("old", index);
        let aliases = match self.http.get(&format!("{index}/_alias"), &step).await {
            Ok(found) => found[index]["aliases"].clone(),
            // The live index is gone: nothing to keep, the copy goes in.
            Err(e) if e.http_status == Some(404) => Value::Null,
            Err(e) => return Err(e),
        };
        if aliases.is_null() {
            // A run killed between deleting the live index and cloning the
            // copy in left the data from before it in its old copy: kept.
            if self.http.get(&old, &step).await.is_ok() {
                tracing::warn!(service = %SVC, index = %index, old = %old, "an interrupted switch left the index's data from before it in {old}; it is kept: delete it once it is no longer needed");
            }
        } else {
            // The live index is there: an old copy is a leftover of a run
            // killed before it deleted the live index.
            self.http.delete_if_present(&old, &step).await?;
            self.block_writes(index, &step).await?;
            self.clone_index(index, &old, json!({}), &step).await?;
            *kept = true;
            self.http.delete_if_present(index, &step).await?;
        }
        self.block_writes(copy, &step).await?;
        let aliases = if aliases.is_null() {
            json!({})
        } else {
            aliases
        };
        self.clone_index(copy, index, aliases, &step).await
    }

    /// After a failure during the switch: every index in `switched` gets its
    /// old copy back under its name, or, when that copy was never complete
    /// (the live index was not deleted), its writes unblocked.
    async fn switch_back(
        &self,
        switched: &[(String, bool)],
        copies: &[String],
        cause: Error,
    ) -> Error {
        let step = "switch back";
        let mut lost = Vec::new();
        for (index, kept) in switched {
            let old = side_name("old", index);
            let back = async {
                if !kept {
                    self.http.delete_if_present(&old, step).await?;
                    return self.unblock_writes(index, step).await;
                }
                let aliases = self.http.get(&format!("{old}/_alias"), step).await?;
                self.http.delete_if_present(index, step).await?;
                self.clone_index(&old, index, aliases[&old]["aliases"].clone(), step)
                    .await?;
                self.http.delete_if_present(&old, step).await
            }
            .await;
            if let Err(e) = back {
                tracing::error!(service = %SVC, index = %index, "could not put the index back: {e}");
                lost.push(format!("{index} (its data is in {old})"));
            }
        }
        self.delete_all(copies).await;
        let mut cause = cause;
        if lost.is_empty() {
            let names: Vec<&str> = switched.iter().map(|(i, _)| i.as_str()).collect();
            cause.message.push_str(&format!(
                "; every index switched so far was put back as it was ({})",
                names.join(", ")
            ));
        } else {
            cause.message.push_str(&format!(
                "; these indices could NOT be put back: {} — clone the copy back (POST <copy>/_clone/<index>)",
                lost.join(", ")
            ));
        }
        cause
    }

    /// Clone `from` (writes blocked) to `to`, writable, with `aliases`, and
    /// wait until its primaries are active.
    async fn clone_index(&self, from: &str, to: &str, aliases: Value, step: &str) -> Result<()> {
        self.block_writes(from, step).await?;
        self.http
            .call(
                Method::POST,
                &format!("{from}/_clone/{to}"),
                Some(&json!({
                    "settings": {"index.blocks.write": null},
                    "aliases": if aliases.is_null() { json!({}) } else { aliases },
                })),
                step,
            )
            .await?;
        self.wait_healthy(&[to.to_string()], step).await
    }

    async fn block_writes(&self, index: &str, step: &str) -> Result<()> {
        self.http
            .call(
                Method::PUT,
                &format!("{index}/_settings"),
                Some(&json!({"index.blocks.write": true})),
                step,
            )
            .await
            .map(|_| ())
    }

    /// Writes allowed again on `index` (gone already: nothing to do).
    async fn unblock_writes(&self, index: &str, step: &str) -> Result<()> {
        match self
            .http
            .call(
                Method::PUT,
                &format!("{index}/_settings"),
                Some(&json!({"index.blocks.write": null})),
                step,
            )
            .await
        {
            Err(e) if e.http_status == Some(404) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    pub(super) async fn delete_all(&self, indices: &[String]) {
        for index in indices {
            if let Err(e) = self
                .http
                .delete_if_present(index, "delete restored copies")
                .await
            {
                tracing::error!(service = %SVC, index = %index, "could not delete: {e}");
            }
        }
    }
}
