//! The snapshot method: OpenSearch's own snapshot API into a fresh
//! filesystem repository under `path.repo`, packed into
//! `opensearch_<TS>.tar.gz`; restored by unpacking it under `path.repo`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::archive;
use crate::archive::ArchiveCompression;
use crate::artifact::{ArtifactSource, PendingArtifact};
use crate::error::{io_error, Error, Result};
use crate::manifest::ArtifactRecord;
use crate::moment::Moment;
use crate::process::{self, mask_userinfo, ToolCommand};
use crate::stores::{BackupContext, RestoreContext};
use crate::target::Target;

use super::leftovers;
use super::{OpenSearch, Selection, SVC, UNPACKED_BYTES};

impl OpenSearch {
    /// The steps a snapshot backup runs, for `--dry-run`.
    pub(super) fn plan_snapshot_backup(
        &self,
        ctx: &BackupContext<'_>,
        indices: &str,
    ) -> Vec<String> {
        let url = mask_userinfo(&self.settings.url);
        vec![
            format!("PUT {url}/_snapshot/itbackup-<ts>  (fs repository under path.repo)"),
            format!("PUT {url}/_snapshot/itbackup-<ts>/snapshot  (indices: {indices}, with global state), polled until it ends"),
            format!("pack the repository into {}/opensearch_{}.{}", ctx.dir.display(), ctx.timestamp, self.settings.snapshot_compression.extension()),
            "unregister the repository and remove its files".into(),
        ]
    }

    /// The steps a snapshot restore runs, for `--dry-run`.
    pub(super) fn plan_snapshot_restore(&self, record: &ArtifactRecord) -> Vec<String> {
        let url = mask_userinfo(&self.settings.url);
        let indices: Vec<String> = record.counts.keys().cloned().collect();
        vec![
            format!(
                "check cluster health, path.repo and its free space (needs {}) before any store is changed",
                record.details.get(UNPACKED_BYTES).and_then(|v| v.as_u64()).map_or("the artifact's size".to_string(), crate::human::size)
            ),
            format!("unpack {} under path.repo and register it read-only", record.file),
            format!("DELETE {url}/<index> for each index being replaced: {}", indices.join(", ")),
            format!("POST {url}/_snapshot/<repo>/snapshot/_restore (with global state and aliases)"),
            "wait until every restored index is at least yellow; unregister and remove the repository".into(),
        ]
    }

    /// A snapshot taken by a newer major version does not restore here
    /// (OpenSearch refuses it half-way): refused before anything changes.
    pub(super) async fn refuse_newer_snapshot(&self, record: &ArtifactRecord) -> Result<()> {
        crate::stores::refuse_newer_backup(
            SVC,
            2,
            &record.server_version,
            &self.version().await?,
            "restore the snapshot into a cluster of that version or newer, or take a logical backup (--opensearch-method logical) where it came from",
        )
    }

    /// Before any store changes: the server's version, `path.repo` and its
    /// free space for the unpacked snapshot.
    pub(super) async fn prepare_snapshot_restore(
        &self,
        ctx: &RestoreContext<'_>,
        record: &ArtifactRecord,
    ) -> Result<()> {
        self.refuse_newer_snapshot(record).await?;
        let repo_root = self.restore_repository_root().await?;
        if self.target.compose().is_some() {
            // path.repo is inside the container; its unpack reports a full disk itself.
            return Ok(());
        }
        // Backups made before the size was recorded: the artifact's own size,
        // which the unpacked snapshot (already compressed segments) is not below.
        let needed = match record.details.get(UNPACKED_BYTES).and_then(|v| v.as_u64()) {
            Some(bytes) => bytes,
            None => ctx
                .artifact
                .size()
                .map_err(|e| io_error(Some(SVC), "restore snapshot", ctx.artifact, e))?,
        };
        crate::artifact::require_free_space(
            Some(SVC),
            "restore snapshot",
            &repo_root,
            needed,
            "unpacking the snapshot under path.repo",
        )
    }
}

/// Offline check of a snapshot artifact: the archive read end to end, every
/// entry safe to unpack; touches no server.
pub(super) async fn check_snapshot(
    artifact: &ArtifactSource,
    record: &ArtifactRecord,
) -> Result<()> {
    let path = artifact.clone();
    let compression = snapshot_compression(record)?;
    crate::stores::blocking(SVC, move || {
        let reader = archive::open(&path, compression).map_err(|e| io_error(Some(SVC), "verify snapshot", &path, e))?;
        archive::check(reader).map(|_| ()).map_err(|e| match crate::error::carried(e) {
            Ok(carried) => carried.service(SVC),
            Err(e) => Error::damaged("verify snapshot", format!("{path} is not a sound archive: {e}"))
                .service(SVC)
                .hint("the artifact is truncated, damaged or unsafe (paths outside the archive); nothing was extracted; use another backup")
        })
    })
    .await
}

impl OpenSearch {
    /// Wait for the snapshot `repo`/`snapshot` to end, polling (a snapshot of
    /// a large cluster takes longer than any idle bound); its final state.
    pub(super) async fn wait_for_snapshot(
        &self,
        repo: &str,
        snapshot: &str,
        step: &str,
    ) -> Result<Value> {
        let mut delay = Duration::from_millis(200);
        loop {
            let listed = self
                .http
                .get(&format!("_snapshot/{repo}/{snapshot}"), step)
                .await?;
            let snapshot = listed["snapshots"][0].clone();
            match snapshot["state"].as_str() {
                Some("IN_PROGRESS") | Some("STARTED") | Some("INIT") => {}
                _ => return Ok(snapshot),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(super::POLL_AT_MOST_EVERY);
        }
    }

    pub(super) async fn backup_snapshot(
        &self,
        ctx: &BackupContext<'_>,
        indices: &Selection,
        record: &mut ArtifactRecord,
    ) -> Result<PendingArtifact> {
        let repo_root = self.path_repo().await?.expect("chosen only with path.repo");
        if self.target.compose().is_none() {
            // A new repository holds a full copy: refuse now rather than let
            // OpenSearch fill the disk half-way through the snapshot.
            crate::artifact::require_free_space(
                Some(SVC),
                "snapshot",
                &repo_root,
                indices.concrete().map(|i| i.primary_bytes).sum(),
                "the snapshot (a full copy of the indices' primary shards under path.repo)",
            )?;
        }
        let repo = format!(
            "itbackup-{}-{}",
            ctx.timestamp.to_ascii_lowercase(),
            std::process::id()
        );
        let location = repo_root.join(&repo);
        let result = self
            .take_snapshot(ctx, &repo, &location, indices, record)
            .await;
        self.remove_repository(&repo, &location).await;
        result
    }

    /// Snapshot the selection into the new repository `repo` at `location`,
    /// then pack the repository into the artifact.
    async fn take_snapshot(
        &self,
        ctx: &BackupContext<'_>,
        repo: &str,
        location: &Path,
        selection: &Selection,
        record: &mut ArtifactRecord,
    ) -> Result<PendingArtifact> {
        self.snapshot_into(repo, location, selection, record, ctx.moment)
            .await?;
        let packed = self.pack_repository(ctx, location).await?;
        // What the restore will unpack under path.repo, for its free-space check.
        record
            .details
            .insert(UNPACKED_BYTES.into(), json!(packed.tar_bytes));
        Ok(packed.pending)
    }

    /// Register `repo` at `location` and snapshot the selection into it,
    /// polled until it ends; the counts that held still go into the record.
    async fn snapshot_into(
        &self,
        repo: &str,
        location: &Path,
        selection: &Selection,
        record: &mut ArtifactRecord,
        moment: &Moment,
    ) -> Result<()> {
        self.http
            .call(
                Method::PUT,
                &format!("_snapshot/{repo}"),
                Some(&repository_body(json!({"location": location, "compress": true}))),
                "register snapshot repository",
            )
            .await
            .map_err(|e| e.hint("verify disk space and that OpenSearch may create files under path.repo (the runbook's /usr/share/opensearch/data)"))?;
        let mut started = false;
        self.snapshot_selection(repo, "snapshot", selection, record, &mut started, moment)
            .await
            .map_err(|e| e.hint("verify disk space and that OpenSearch may write under path.repo (the runbook's /usr/share/opensearch/data)"))?;
        record.details.insert(
            "snapshot".into(),
            json!({"repository": repo, "name": "snapshot", "include_global_state": true}),
        );
        Ok(())
    }

    /// Wait until every shard of the snapshot has fixed the commit it copies
    /// (stage past INIT: OpenSearch flushes and takes the commit before it
    /// starts copying), which is the snapshot's moment. A status the cluster
    /// does not answer ends the wait at the snapshot's end instead.
    async fn wait_for_shards_started(&self, repo: &str, snapshot: &str, step: &str) {
        loop {
            let status = match self
                .http
                .get(&format!("_snapshot/{repo}/{snapshot}/_status"), step)
                .await
            {
                Ok(status) => status,
                Err(e) => {
                    tracing::warn!(error = %e, "opensearch: cannot read the snapshot's shard stages; the freeze lasts until it ends");
                    let _ = self.wait_for_snapshot(repo, snapshot, step).await;
                    return;
                }
            };
            let snap = &status["snapshots"][0];
            let running = matches!(
                snap["state"].as_str(),
                Some("STARTED" | "INIT" | "IN_PROGRESS")
            );
            if !running || snap["shards_stats"]["initializing"].as_u64() == Some(0) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Snapshot the selection into `repo`/`snapshot` with the global state,
    /// never partial, and poll until it ends; the counts that held still go
    /// into the record. `started` is set once the cluster has accepted the
    /// snapshot (from then on a failure leaves one to delete). Shared by the
    /// tarball and the repository methods; the answer is the snapshot's.
    pub(super) async fn snapshot_selection(
        &self,
        repo: &str,
        snapshot: &str,
        selection: &Selection,
        record: &mut ArtifactRecord,
        started: &mut bool,
        moment: &Moment,
    ) -> Result<Value> {
        let step = "snapshot";
        // Data streams by name: the snapshot then holds them as data streams
        // (with their backing indices), which is how they are restored.
        let names: Vec<String> = selection
            .indices
            .iter()
            .map(|i| i.name.clone())
            .chain(selection.streams.iter().map(|s| s.name.clone()))
            .collect();
        let concrete = selection.concrete_names();
        let before = self.counts_of(&concrete).await?;
        // Read right before the snapshot starts: each shard's snapshot holds
        // at least these operations (see docs/consistency.md).
        let seq_nos = self.seq_nos(&concrete).await;
        let body = json!({
            "indices": if names.is_empty() { "-*".to_string() } else { names.join(",") },
            "include_global_state": true,
            "ignore_unavailable": false,
            "partial": false,
        });
        // Started, then polled: waiting for completion in one request would
        // be one long silence, which the idle bound would cut.
        self.http
            .call(
                Method::PUT,
                &format!("_snapshot/{repo}/{snapshot}"),
                Some(&body),
                step,
            )
            .await?;
        *started = true;
        if moment.is_coordinated() {
            self.wait_for_shards_started(repo, snapshot, step).await;
            moment.reached(SVC);
        }
        let answer = self.wait_for_snapshot(repo, snapshot, step).await?;
        let state = answer["state"].as_str().unwrap_or("unknown");
        let failed = answer["shards"]["failed"].as_u64().unwrap_or(0);
        if state != "SUCCESS" || failed > 0 {
            return Err(Error::refused(
                step,
                format!(
                    "snapshot {repo}/{snapshot} ended {state} with {failed} failed shard(s): {}",
                    answer["failures"]
                ),
            )
            .service(SVC)
            .hint("a node left, or the repository failed or filled up during the snapshot (see the failures above); nothing was kept, the next backup starts afresh"));
        }
        let after = self.counts_of(&concrete).await?;
        record_stable_counts(record, &before, &after);
        let start = answer["start_time_in_millis"]
            .as_i64()
            .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok());
        record.position = Some(Self::position_at("snapshot_start", start, seq_nos));
        let plain: Vec<&str> = selection.indices.iter().map(|i| i.name.as_str()).collect();
        record
            .details
            .insert("snapshot_indices".into(), json!(plain));
        Ok(answer)
    }

    /// Pack the repository at `location` into the artifact: streamed out of
    /// the container with tar in compose mode, read from disk otherwise.
    async fn pack_repository(
        &self,
        ctx: &BackupContext<'_>,
        location: &Path,
    ) -> Result<archive::PackedArchive> {
        let compression = self.settings.snapshot_compression;
        let file = format!("opensearch_{}.{}", ctx.timestamp, compression.extension());
        let (dir, artifacts) = (ctx.dir.to_path_buf(), ctx.artifacts.clone());
        let source = location.to_path_buf();
        let step = "pack snapshot";
        let packed = if let Target::Compose(compose) = &self.target {
            // The repository is inside the container: stream it out with tar.
            let tar = compose.exec(
                SVC,
                ToolCommand::new("tar")
                    .arg("-C")
                    .arg(&source)
                    .args(["-cf", "-", "."]),
            );
            crate::stores::blocking(SVC, move || {
                let mut running = tar
                    .spawn(std::process::Stdio::null(), std::process::Stdio::piped())
                    .map_err(|e| process::spawn_failed(SVC, step, &tar.program, e))?;
                let mut stdout = running.child.stdout.take().expect("stdout is piped");
                let packed = archive::pack_stream(&mut stdout, &artifacts, &file, compression);
                drop(stdout);
                let finished = running
                    .wait()
                    .map_err(|e| Error::failure(step, e.to_string()).service(SVC))?;
                let packed =
                    packed.map_err(|e| io_error(Some(SVC), step, dir.join(&file).display(), e))?;
                if let Err(e) = finished.check(SVC, step) {
                    packed.pending.discard();
                    return Err(e);
                }
                Ok(packed)
            })
            .await?
        } else {
            crate::stores::blocking(SVC, move || {
                archive::pack_dir(&source, &artifacts, &file, compression)
                    .map_err(|e| io_error(Some(SVC), step, dir.join(&file).display(), e))
            })
            .await?
        };
        Ok(packed)
    }

    /// Whether this process can reach `path.repo`: through the container in
    /// compose mode, on this host's filesystem otherwise.
    pub(super) fn reaches(&self, repo: &Path) -> bool {
        self.target.compose().is_some() || writable_dir(repo)
    }

    /// A temporary repository was only a vehicle: unregister it and remove
    /// its files, whatever happened while it was used (errors are ignored).
    pub(super) async fn remove_repository(&self, repo: &str, location: &Path) {
        let _ = self
            .http
            .delete_if_present(&format!("_snapshot/{repo}"), "remove snapshot repository")
            .await;
        match &self.target {
            Target::Compose(compose) => {
                let rm = compose.exec(SVC, ToolCommand::new("rm").arg("-rf").arg(location));
                let _ = crate::stores::blocking(SVC, move || {
                    process::output(&rm, SVC, "remove snapshot files").map(|_| ())
                })
                .await;
            }
            Target::Local => {
                let _ = std::fs::remove_dir_all(location);
            }
        }
    }

    pub(super) async fn restore_snapshot(
        &self,
        ctx: &RestoreContext<'_>,
        record: &ArtifactRecord,
    ) -> Result<()> {
        let repo_root = self.restore_repository_root().await?;
        let repo = format!("itbackup-restore-{}", std::process::id());
        let location = repo_root.join(&repo);
        let result = self
            .unpack_and_restore(ctx, record, &repo, &repo_root, &location)
            .await;
        self.remove_repository(&repo, &location).await;
        result
    }

    /// `path.repo`, where a snapshot restore unpacks its artifact; an error
    /// when the cluster has none or this process cannot write there.
    pub(super) async fn restore_repository_root(&self) -> Result<PathBuf> {
        let step = "restore snapshot";
        let repo_root = self.path_repo().await?.ok_or_else(|| {
            Error::failure(step, "the cluster has no path.repo, which a snapshot restore needs")
                .service(SVC)
                .hint("add path.repo to opensearch.yml and restart OpenSearch, or restore a logical backup")
        })?;
        if !self.reaches(&repo_root) {
            return Err(Error::failure(
                step,
                format!(
                    "path.repo {} is not reachable from here",
                    repo_root.display()
                ),
            )
            .service(SVC)
            .hint("run the restore where path.repo can be written, and verify its disk space"));
        }
        Ok(repo_root)
    }

    /// Unpack the artifact as the repository `repo` under `path.repo`,
    /// delete what it replaces and restore from it.
    async fn unpack_and_restore(
        &self,
        ctx: &RestoreContext<'_>,
        record: &ArtifactRecord,
        repo: &str,
        repo_root: &Path,
        location: &Path,
    ) -> Result<()> {
        let step = "restore snapshot";
        self.unpack_repository(ctx, record, repo_root, location)
            .await?;
        self.http
            .call(
                Method::PUT,
                &format!("_snapshot/{repo}"),
                Some(&repository_body(
                    json!({"location": location, "readonly": true}),
                )),
                "register snapshot repository",
            )
            .await?;
        let listed = self
            .http
            .get(&format!("_snapshot/{repo}/_all"), step)
            .await?;
        let snapshot = listed["snapshots"][0]["snapshot"].as_str().ok_or_else(|| {
            Error::failure(step, "the unpacked repository holds no snapshot")
                .service(SVC)
                .hint("the artifact is not a snapshot backup; use another backup")
        })?;
        self.restore_from_snapshot(repo, snapshot, record, ctx.selection)
            .await
    }

    /// Delete what the snapshot `repo`/`snapshot` replaces and restore it
    /// (with the global state and aliases), then wait until every restored
    /// index is active. Shared by the tarball and the repository methods.
    pub(super) async fn restore_from_snapshot(
        &self,
        repo: &str,
        snapshot: &str,
        record: &ArtifactRecord,
        selection: &crate::stores::RestoreSelection,
    ) -> Result<()> {
        if !selection.is_everything() || selection.switch {
            return self.restore_parts(repo, snapshot, record, selection).await;
        }
        let step = "restore snapshot";
        let listed = self
            .http
            .get(&format!("_snapshot/{repo}/{snapshot}"), step)
            .await?;
        let strings = |value: &Value| -> Vec<String> {
            value
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        };
        let streams = strings(&listed["snapshots"][0]["data_streams"]);
        let in_snapshot = strings(&listed["snapshots"][0]["indices"]);
        // Indices named in --indices at backup time, dot-prefixed or not;
        // older backups did not record them and took no dot-prefixed ones.
        let selected = strings(
            &record
                .details
                .get("snapshot_indices")
                .cloned()
                .unwrap_or_default(),
        );
        let backing = |name: &str| {
            streams
                .iter()
                .any(|s| name.starts_with(&format!(".ds-{s}-")))
        };
        let (backing_indices, indices): (Vec<String>, Vec<String>) = in_snapshot
            .into_iter()
            .filter(|name| !name.starts_with('.') || backing(name) || selected.contains(name))
            .partition(|name| backing(name));
        self.delete_replaced(&streams, &indices, &backing_indices)
            .await?;
        let mut names = indices.clone();
        names.extend(streams.iter().cloned());
        let body = json!({
            "indices": if names.is_empty() { "-*".to_string() } else { names.join(",") },
            "include_global_state": true,
            "include_aliases": true,
        });
        // Started, then polled through the indices' health (see wait_healthy):
        // a restore copies whole shards, longer than any idle bound.
        self.http
            .call(
                Method::POST,
                &format!("_snapshot/{repo}/{snapshot}/_restore"),
                Some(&body),
                step,
            )
            .await?;
        let mut restored = indices;
        restored.extend(backing_indices);
        self.wait_healthy(&restored, step).await
    }

    /// Replace, not merge: what is being restored goes first. A data
    /// stream is deleted with its backing indices; plain indices under a
    /// backing index's name (left by a restore that did not know data
    /// streams) go too, or the stream could not be restored.
    pub(super) async fn delete_replaced(
        &self,
        streams: &[String],
        indices: &[String],
        backing_indices: &[String],
    ) -> Result<()> {
        for stream in streams {
            self.http
                .delete_if_present(
                    &format!("_data_stream/{stream}"),
                    "delete data stream being replaced",
                )
                .await?;
        }
        for index in indices.iter().chain(backing_indices).chain(streams) {
            self.http
                .delete_if_present(index, "delete index being replaced")
                .await?;
        }
        Ok(())
    }

    /// Unpack the artifact into `location` under `path.repo`: into the
    /// container as its own user in compose mode, owned like `path.repo`
    /// otherwise.
    async fn unpack_repository(
        &self,
        ctx: &RestoreContext<'_>,
        record: &ArtifactRecord,
        repo_root: &Path,
        location: &Path,
    ) -> Result<()> {
        let compression = snapshot_compression(record)?;
        let (source, dest, owner) = (
            ctx.artifact.clone(),
            location.to_path_buf(),
            repo_root.to_path_buf(),
        );
        if let Target::Compose(compose) = &self.target {
            // Into the container, as its own user, through tar on stdin. The
            // archive was checked entry by entry before the restore began.
            let untar = compose.exec(
                SVC,
                ToolCommand::new("sh")
                    .args([
                        "-c",
                        "rm -rf \"$0\" && mkdir -p \"$0\" && tar -C \"$0\" -xf -",
                    ])
                    .arg(&dest),
            );
            crate::stores::blocking(SVC, move || {
                let mut reader = archive::open(&source, compression)
                    .map_err(|e| io_error(Some(SVC), "unpack snapshot", &source, e))?;
                process::run_feeding(&untar, SVC, "unpack snapshot", |stdin| {
                    std::io::copy(&mut reader, stdin).map(|_| ())
                })
                .map(|_| ())
            })
            .await?;
        } else {
            crate::stores::blocking(SVC, move || {
                let _ = std::fs::remove_dir_all(&dest);
                let reader = archive::open(&source, compression)
                    .map_err(|e| io_error(Some(SVC), "unpack snapshot", &source, e))?;
                archive::unpack(reader, &dest)
                    .map_err(|e| io_error(Some(SVC), "unpack snapshot", dest.display(), e))?;
                archive::chown_tree_like(&dest, &owner)
                    .map_err(|e| io_error(Some(SVC), "unpack snapshot", dest.display(), e))
            })
            .await?;
        }
        Ok(())
    }
}

/// Counts that stayed the same across the snapshot go into the record; the rest
/// changed while it ran and are listed instead of being compared later.
fn record_stable_counts(
    record: &mut ArtifactRecord,
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) {
    let mut changed = Map::new();
    for (index, count) in before {
        if after.get(index) == Some(count) {
            record.counts.insert(index.clone(), *count);
        } else {
            changed.insert(index.clone(), json!([count, after.get(index)]));
        }
    }
    if !changed.is_empty() {
        record.details.insert(
            "counts_changed_during_backup".into(),
            Value::Object(changed),
        );
    }
}

fn snapshot_compression(record: &ArtifactRecord) -> Result<ArchiveCompression> {
    ArchiveCompression::from_file_name(&record.file).ok_or_else(|| {
        Error::failure(
            "restore snapshot",
            format!("{} is not a .tar.gz or .tar.zst archive", record.file),
        )
        .service(SVC)
    })
}

/// Can we create and remove a directory in `dir`? (path.repo as seen from here)
fn writable_dir(dir: &Path) -> bool {
    let probe = dir.join(format!(".itbackup-probe-{}", std::process::id()));
    let ok = std::fs::create_dir(&probe).is_ok();
    let _ = std::fs::remove_dir(&probe);
    ok
}

/// The registration of a temporary fs repository: `settings` and its holder
/// (see `leftovers`), so that what a killed run leaves can be told apart
/// from what a live one uses.
fn repository_body(settings: Value) -> Value {
    let mut settings = match settings {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    settings.extend(leftovers::holder_settings());
    json!({"type": "fs", "settings": settings})
}
