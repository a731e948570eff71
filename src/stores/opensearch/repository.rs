//! The **repository** method: a snapshot into a repository the cluster
//! already has registered (`fs`, `s3`, `gcs`, `azure`, `hdfs`, …), named by
//! `--opensearch-repository` or `[opensearch] repository`. The snapshot's
//! data goes from every data node straight into the repository, never
//! through itbackup's host; snapshots into one repository share the
//! segments they have in common, so a daily backup copies only what changed.
//!
//! The backup directory holds `opensearch_<TS>.snapshot.json`: where the
//! snapshot is (repository name and type, snapshot name and UUID, the
//! cluster's UUID) and what it must hold (every index with its shard and
//! document counts, the file count and size `_status` reported). `verify`
//! and a restore check all of it against the repository — snapshot there,
//! `SUCCESS`, same UUID, same shards and files, repository verified by every
//! node — before any index is deleted. Templates, pipelines and aliases come
//! back with the snapshot's global state, as with the snapshot method.
//!
//! What this method cannot do that the tarball can: a copy that does not
//! depend on the cluster's repository staying intact (air-gapped, another
//! site); take the tarball or logical method for that.

use std::collections::BTreeMap;
use std::path::Path;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{OpenSearch, Selection, SVC};
use crate::artifact::{ArtifactSource, PendingArtifact};
use crate::error::{io_error, Error, Result};
use crate::manifest::ArtifactRecord;
use crate::process::mask_userinfo;
use crate::stores::{BackupContext, RestoreContext};

/// The largest snapshot record read (a few KiB per thousand indices).
const MAX_RECORD_BYTES: u64 = 64 * 1024 * 1024;

/// The artifact: where the snapshot is and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SnapshotRecord {
    pub repository: String,
    /// The repository's type when the backup was taken (`fs`, `s3`, …).
    pub repository_type: String,
    pub snapshot: String,
    pub uuid: String,
    pub cluster_uuid: String,
    /// Every index in the snapshot: shards and documents.
    pub indices: BTreeMap<String, SnapshotIndex>,
    /// Data streams in the snapshot (restored with their backing indices).
    #[serde(default)]
    pub data_streams: Vec<String>,
    /// What `_snapshot/<repo>/<snap>/_status` reported: every file of the
    /// snapshot, shared with earlier snapshots or not.
    pub shards: u64,
    pub files: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SnapshotIndex {
    pub shards: u64,
    /// Documents when the snapshot was taken, when they held still.
    pub docs: Option<u64>,
}

impl OpenSearch {
    pub(super) fn plan_repository_backup(
        &self,
        ctx: &BackupContext<'_>,
        indices: &str,
    ) -> Vec<String> {
        let url = mask_userinfo(&self.settings.url);
        let repo = self
            .settings
            .repository
            .as_deref()
            .unwrap_or("<--opensearch-repository>");
        vec![
            format!("GET {url}/_snapshot/{repo}, POST {url}/_snapshot/{repo}/_verify (every node can write it)"),
            format!("PUT {url}/_snapshot/{repo}/itbackup-{}-<suffix>  (indices: {indices}, with global state), polled until it ends", ctx.timestamp.to_ascii_lowercase()),
            format!("GET …/_status: shards and files into {}/opensearch_{}.snapshot.json", ctx.dir.display(), ctx.timestamp),
        ]
    }

    pub(super) fn plan_repository_restore(&self, record: &ArtifactRecord) -> Vec<String> {
        let url = mask_userinfo(&self.settings.url);
        let at = record
            .details
            .get("repository")
            .map(|r| {
                format!(
                    "{}/{}",
                    r["repository"].as_str().unwrap_or("?"),
                    r["snapshot"].as_str().unwrap_or("?")
                )
            })
            .unwrap_or_else(|| "the recorded repository and snapshot".into());
        vec![
            format!("check {at}: there, SUCCESS, same UUID, shards and files; the repository verified — before any store is changed"),
            format!("DELETE {url}/<index> for each index being replaced: {}", record.counts.keys().cloned().collect::<Vec<_>>().join(", ")),
            format!("POST {url}/_snapshot/{at}/_restore (with global state and aliases), wait until every restored index is at least yellow"),
        ]
    }

    /// The repository to snapshot into: registered, and writable by every node.
    async fn registered_repository(&self, step: &str) -> Result<(String, String)> {
        let name = self.settings.repository.clone().ok_or_else(|| {
            Error::usage("the repository method needs a registered repository: --opensearch-repository NAME (or [opensearch] repository)")
                .service(SVC)
        })?;
        let listed = match self.http.get(&format!("_snapshot/{name}"), step).await {
            Ok(listed) => listed,
            Err(e) if e.http_status == Some(404) => {
                return Err(Error::not_found(step, format!("the cluster has no snapshot repository named '{name}'"))
                    .service(SVC)
                    .hint("register it first (PUT _snapshot/<name>, see GET _snapshot for those that exist), or name another with --opensearch-repository"))
            }
            Err(e) => return Err(e),
        };
        let kind = listed[&name]["type"]
            .as_str()
            .unwrap_or("unknown")
            .to_string();
        self.verify_repository(&name, step).await?;
        Ok((name, kind))
    }

    /// `_verify`: every node can write the repository (and see the others' files).
    async fn verify_repository(&self, name: &str, step: &str) -> Result<()> {
        self.http
            .call(Method::POST, &format!("_snapshot/{name}/_verify"), None, step)
            .await
            .map(|_| ())
            .map_err(|e| {
                Error::refused(step, format!("the repository '{name}' does not verify: {}", e.message))
                    .service(SVC)
                    .hint("every node must reach and write the repository (a shared filesystem mounted at the same path on all of them, or the same bucket and credentials); fix it, then retry")
            })
    }

    pub(super) async fn backup_repository(
        &self,
        ctx: &BackupContext<'_>,
        selection: &Selection,
        record: &mut ArtifactRecord,
    ) -> Result<PendingArtifact> {
        let step = "snapshot";
        let (repo, kind) = self.registered_repository(step).await?;
        self.remove_snapshots_of_killed_runs(ctx.dir).await;
        let snapshot = snapshot_name(ctx.timestamp);
        claim(ctx.dir, ctx.timestamp, &repo, &snapshot)?;
        let mut started = false;
        let taken = self
            .snapshot_into_repository(
                (&repo, &kind),
                &snapshot,
                selection,
                record,
                &mut started,
                ctx.moment,
            )
            .await
            .and_then(|taken| {
                let file = format!("opensearch_{}.snapshot.json", ctx.timestamp);
                write_record(ctx.dir, &file, &taken).map(|pending| (pending, taken))
            });
        match taken {
            Ok((pending, taken)) => {
                record.details.insert(
                    "repository".into(),
                    json!({"repository": taken.repository, "type": taken.repository_type, "snapshot": taken.snapshot, "uuid": taken.uuid}),
                );
                Ok(pending)
            }
            Err(e) => {
                // A snapshot no backup names is space nobody frees: gone
                // with the failed backup (a partial or failed one as well) —
                // only one this run started, never another's. The claim
                // goes once the snapshot has: else the next run deletes it.
                let gone = !started
                    || self
                        .http
                        .delete_if_present(
                            &format!("_snapshot/{repo}/{snapshot}"),
                            "remove failed snapshot",
                        )
                        .await
                        .is_ok();
                if gone {
                    let _ = self.release_claims(ctx.dir).await;
                }
                Err(e)
            }
        }
    }

    async fn snapshot_into_repository(
        &self,
        // The registered repository: its name and type.
        (repo, kind): (&str, &str),
        snapshot: &str,
        selection: &Selection,
        record: &mut ArtifactRecord,
        started: &mut bool,
        moment: &crate::moment::Moment,
    ) -> Result<SnapshotRecord> {
        let step = "snapshot";
        let answer = self
            .snapshot_selection(repo, snapshot, selection, record, started, moment)
            .await?;
        let status = self.snapshot_status(repo, snapshot, step).await?;
        let cluster = self.http.get("", step).await?;
        let strings = |value: &Value| -> Vec<String> {
            value
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        };
        let indices = strings(&answer["indices"])
            .into_iter()
            .map(|name| {
                let shards = status.indices.get(&name).copied().unwrap_or_default();
                let docs = record.counts.get(&name).copied();
                (name, SnapshotIndex { shards, docs })
            })
            .collect();
        Ok(SnapshotRecord {
            repository: repo.to_string(),
            repository_type: kind.to_string(),
            snapshot: snapshot.to_string(),
            uuid: answer["uuid"].as_str().unwrap_or_default().to_string(),
            cluster_uuid: cluster["cluster_uuid"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            indices,
            data_streams: strings(&answer["data_streams"]),
            shards: status.shards,
            files: status.files,
            bytes: status.bytes,
        })
    }

    /// What `_status` says of a snapshot: shards per index, files and bytes.
    async fn snapshot_status(
        &self,
        repo: &str,
        snapshot: &str,
        step: &str,
    ) -> Result<SnapshotStatus> {
        let answer = self
            .http
            .get(&format!("_snapshot/{repo}/{snapshot}/_status"), step)
            .await?;
        let snap = &answer["snapshots"][0];
        let indices = snap["indices"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(name, index)| {
                (
                    name.clone(),
                    index["shards_stats"]["total"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        Ok(SnapshotStatus {
            indices,
            shards: snap["shards_stats"]["total"].as_u64().unwrap_or(0),
            files: snap["stats"]["total"]["file_count"].as_u64().unwrap_or(0),
            bytes: snap["stats"]["total"]["size_in_bytes"]
                .as_u64()
                .unwrap_or(0),
        })
    }

    /// The snapshot the artifact names is in its repository, whole, as
    /// recorded; the repository verifies. Run by `verify` and before a
    /// restore changes anything.
    pub(super) async fn check_repository_snapshot(
        &self,
        artifact: &ArtifactSource,
    ) -> Result<SnapshotRecord> {
        let step = "verify snapshot";
        let source = artifact.clone();
        let recorded = crate::stores::blocking(SVC, move || read_record(&source)).await?;
        let repo = &recorded.repository;
        let snap = &recorded.snapshot;
        let listed = match self.http.get(&format!("_snapshot/{repo}/{snap}"), step).await {
            Ok(listed) => listed,
            Err(e) if e.http_status == Some(404) => {
                return Err(Error::damaged(step, format!("the snapshot {repo}/{snap} this backup names is not in the repository (or the repository is not registered): {}", e.message))
                    .service(SVC)
                    .hint("it was deleted behind itbackup's back, or the repository was unregistered: register it again under the same name, or use another backup; nothing was changed"))
            }
            Err(e) => return Err(e),
        };
        let found = &listed["snapshots"][0];
        let state = found["state"].as_str().unwrap_or("unknown");
        let uuid = found["uuid"].as_str().unwrap_or_default();
        if state != "SUCCESS" || uuid != recorded.uuid {
            return Err(Error::damaged(step, format!("the snapshot {repo}/{snap} is {state} with UUID {uuid}; the backup recorded SUCCESS with UUID {}", recorded.uuid))
                .service(SVC)
                .hint("the snapshot was replaced or damaged in the repository; use another backup; nothing was changed"));
        }
        let status = self.snapshot_status(repo, snap, step).await?;
        if status.shards != recorded.shards
            || status.files != recorded.files
            || status.bytes != recorded.bytes
        {
            return Err(Error::damaged(step, format!(
                "the snapshot {repo}/{snap} holds {} shards, {} files, {} bytes; the backup recorded {} shards, {} files, {} bytes",
                status.shards, status.files, status.bytes, recorded.shards, recorded.files, recorded.bytes
            ))
            .service(SVC)
            .hint("the repository lost or changed files of this snapshot; use another backup; nothing was changed"));
        }
        self.verify_repository(repo, step).await?;
        Ok(recorded)
    }

    /// Before any store changes: the snapshot and its repository, and the
    /// cluster's version.
    pub(super) async fn prepare_repository_restore(
        &self,
        ctx: &RestoreContext<'_>,
        record: &ArtifactRecord,
    ) -> Result<()> {
        self.refuse_newer_snapshot(record).await?;
        self.check_repository_snapshot(ctx.artifact)
            .await
            .map(|_| ())
    }

    pub(super) async fn restore_repository(
        &self,
        ctx: &RestoreContext<'_>,
        record: &ArtifactRecord,
    ) -> Result<()> {
        // Again, right before the deletes: the repository is the cluster's
        // and may have changed since the checks.
        let recorded = self.check_repository_snapshot(ctx.artifact).await?;
        self.restore_from_snapshot(
            &recorded.repository,
            &recorded.snapshot,
            record,
            ctx.selection,
        )
        .await
    }
}

impl OpenSearch {
    /// Prune: the snapshot of a backup being removed goes from its
    /// repository (OpenSearch frees only the files no other snapshot uses).
    pub(super) async fn delete_repository_snapshot(
        &self,
        record: &ArtifactRecord,
    ) -> Result<String> {
        let at = record
            .details
            .get("repository")
            .cloned()
            .unwrap_or_default();
        let (Some(repo), Some(snap)) = (at["repository"].as_str(), at["snapshot"].as_str()) else {
            return Err(Error::damaged("remove snapshot", "the backup's record names no repository and snapshot")
                .service(SVC)
                .hint("remove its snapshot by hand (GET _snapshot/<repo>/itbackup-*), then the backup directory"));
        };
        self.http
            .delete_if_present(&format!("_snapshot/{repo}/{snap}"), "remove snapshot")
            .await?;
        Ok(format!("snapshot {repo}/{snap}"))
    }
}

/// A killed backup's snapshot is named by no backup: nothing would ever
/// delete it, and it holds whatever segments it alone references. Before
/// the snapshot starts, the backup directory gets the record's unfinished
/// file (`opensearch_<TS>.snapshot.json.partial`) naming it — the claim —,
/// which the finished record later replaces. A run that fails deletes its
/// snapshot and its partial files; only a killed run leaves a claim in a
/// directory without a manifest, and the next repository-method backup
/// into the same root, or prune removing that directory, deletes the
/// snapshot it names.
fn claim(dir: &Path, timestamp: &str, repo: &str, snapshot: &str) -> Result<()> {
    let file = format!("opensearch_{timestamp}.snapshot.json");
    let claim =
        json!({"repository": repo, "snapshot": snapshot, "claimed_by_pid": std::process::id()});
    crate::artifact::write_bytes(dir, &file, format!("{claim}\n").as_bytes())
        .map(|_| ())
        .map_err(|e| io_error(Some(SVC), "claim snapshot", dir.display(), e))
}

/// The claims in `dir` (see [`claim`]): each file with the repository and
/// snapshot it names. Only names itbackup gives are taken: a claim is never
/// a way to delete another snapshot.
fn claims_in(dir: &Path) -> Vec<(std::path::PathBuf, String, String)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let plain = |name: &str| {
        !name.is_empty()
            && !name.starts_with('.')
            && !name.contains(['/', '\\', '?', '#', '%', ',', '*'])
    };
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("opensearch_") && name.ends_with(".snapshot.json.partial")
        })
        .filter_map(|e| {
            let path = e.path();
            let text = crate::artifact::read_small_text(&path, MAX_RECORD_BYTES).ok()?;
            let claim: Value = serde_json::from_str(&text).ok()?;
            let repo = claim["repository"].as_str()?.to_string();
            let snapshot = claim["snapshot"].as_str()?.to_string();
            (plain(&repo) && plain(&snapshot) && snapshot.starts_with("itbackup-"))
                .then_some((path, repo, snapshot))
        })
        .collect()
}

impl OpenSearch {
    /// Delete the snapshots the claims in `dir` name, and then the claims;
    /// says which snapshots went. The first failure stops it (the claims
    /// not yet acted on stay).
    pub(super) async fn release_claims(&self, dir: &Path) -> Result<Vec<String>> {
        let step = "remove the snapshot of a killed backup";
        let mut released = Vec::new();
        for (file, repo, snapshot) in claims_in(dir) {
            // Deleting a snapshot still running aborts it.
            self.http
                .delete_if_present(&format!("_snapshot/{repo}/{snapshot}"), step)
                .await?;
            std::fs::remove_file(&file)
                .map_err(|e| io_error(Some(SVC), step, file.display(), e))?;
            released.push(format!("snapshot {repo}/{snapshot}"));
        }
        Ok(released)
    }

    /// The snapshots of killed backups into the same root as `dir`: every
    /// other directory there without a manifest, holding a claim. The
    /// backup holds the root's lock, so no run that could still finish is
    /// among them. Never fails the backup: what cannot be removed now is
    /// logged and tried again by the next one.
    async fn remove_snapshots_of_killed_runs(&self, dir: &Path) {
        let Some(root) = dir.parent() else { return };
        let Ok(entries) = std::fs::read_dir(root) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let is_dir = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
            if !is_dir || path == dir || path.join(crate::manifest::MANIFEST_FILE).exists() {
                continue;
            }
            match self.release_claims(&path).await {
                Ok(released) => {
                    for what in released {
                        tracing::info!(service = %SVC, backup = %path.display(), "removed the {what} of a killed backup");
                    }
                }
                Err(e) => {
                    tracing::warn!(service = %SVC, backup = %path.display(), "the snapshot of a killed backup is left for the next run: {e}")
                }
            }
        }
    }
}

/// The snapshot a repository-method backup keeps, as its record names it:
/// `opensearch snapshot REPO/SNAPSHOT (TYPE repository)`.
pub(super) fn describe_snapshot(record: &ArtifactRecord) -> String {
    let at = record
        .details
        .get("repository")
        .cloned()
        .unwrap_or_default();
    let text = |key: &str| at[key].as_str().unwrap_or("?").to_string();
    format!(
        "{SVC} snapshot {}/{} ({} repository)",
        text("repository"),
        text("snapshot"),
        text("type")
    )
}

/// `itbackup-<timestamp>-<8 hex digits>`: the timestamp for people, the
/// suffix because one repository may serve several roots or hosts that back
/// up in the same second (a snapshot name is taken once per repository).
fn snapshot_name(timestamp: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "itbackup-{}-{:08x}",
        timestamp.to_ascii_lowercase(),
        nanos ^ std::process::id().rotate_left(16)
    )
}

struct SnapshotStatus {
    indices: BTreeMap<String, u64>,
    shards: u64,
    files: u64,
    bytes: u64,
}

fn write_record(dir: &Path, file: &str, record: &SnapshotRecord) -> Result<PendingArtifact> {
    let mut json = serde_json::to_vec_pretty(record).expect("plain data");
    json.push(b'\n');
    crate::artifact::write_bytes(dir, file, &json).map_err(|e| {
        io_error(
            Some(SVC),
            "write snapshot record",
            dir.join(file).display(),
            e,
        )
    })
}

/// The artifact, read and parsed: offline, what `check_artifact` proves
/// without the cluster.
/// Blocking (an object streams from its repository).
fn read_record(artifact: &ArtifactSource) -> Result<SnapshotRecord> {
    let step = "verify snapshot";
    let text = artifact
        .read_small(MAX_RECORD_BYTES)
        .map_err(|e| io_error(Some(SVC), step, artifact, e))?;
    serde_json::from_slice(&text).map_err(|e| {
        Error::damaged(step, format!("{artifact} is not a snapshot record: {e}"))
            .service(SVC)
            .hint("the artifact is damaged or is not one itbackup wrote; use another backup")
    })
}
