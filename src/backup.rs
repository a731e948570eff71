//! Taking a backup set: probe every store, back them up side by side, and make
//! the set visible only when all of it is on disk (artifacts renamed, manifest last).

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use serde::Serialize;

use crate::artifact::{self, create_private_dir, Artifacts};
use crate::config::Settings;
use crate::consistency::Consistency;
use crate::error::{io_error, Error, Result};
use crate::freeze;
use crate::lock::RootLock;
use crate::manifest::{Manifest, Status, ToolInfo, FORMAT_VERSION, MANIFEST_FILE};
use crate::moment::Moment;
use crate::process::run_variables;
use crate::remote::{PushOutcome, Remote};
use crate::seal::{self, Recipients};
use crate::service::{Service, ServiceList};
use crate::stores::{self, BackupContext, Store, StoreBackup};

pub use crate::backup_target::{default_timestamp, BackupTarget, TIMESTAMP_FORMAT};

#[derive(Debug, Default)]
pub struct BackupRequest {
    pub out: Option<PathBuf>,
    pub services: Option<ServiceList>,
    pub timestamp: Option<String>,
    pub dry_run: bool,
    /// Repository to upload the finished backup to.
    pub upload: Option<String>,
    /// With `upload`: stage the backup under the root and remove it once uploaded.
    pub no_local: bool,
}

impl BackupRequest {
    /// Where this backup goes under `root`: resolved once, before the hooks
    /// run, and given to them and to [`run`] alike.
    pub fn target(&self, root: &std::path::Path) -> Result<BackupTarget> {
        BackupTarget::resolve(
            root,
            self.out.as_deref(),
            self.timestamp.as_deref(),
            self.no_local,
        )
    }
}

/// What a backup did, or would do.
#[derive(Debug, Serialize)]
#[serde(untagged)]
// One value per run: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum BackupOutcome {
    Planned {
        dry_run: bool,
        dir: PathBuf,
        plan: BTreeMap<Service, Vec<String>>,
    },
    Done {
        dir: PathBuf,
        manifest: Manifest,
        /// Where the backup was uploaded, when it was.
        #[serde(skip_serializing_if = "Option::is_none")]
        uploaded: Option<Box<PushOutcome>>,
        /// False when the local copy was removed after the upload (`--no-local`).
        local: bool,
    },
}

/// The stores for `services`, or for every supported service.
pub fn open_stores(services: &[Service], settings: &Settings) -> Result<Vec<Box<dyn Store>>> {
    services
        .iter()
        .map(|svc| stores::open(*svc, &settings.stores))
        .collect()
}

pub async fn run(
    settings: &Settings,
    request: BackupRequest,
    target: BackupTarget,
) -> Result<BackupOutcome> {
    let services = ServiceList::or_all(request.services.as_ref());
    let stores = open_stores(&services, settings)?;
    // Bad keys or URLs fail the run before any server is asked anything.
    let recipients = Recipients::parse(&settings.encrypt_to)?.map(std::sync::Arc::new);
    let remote = request.upload.as_deref().map(Remote::open).transpose()?;
    let BackupTarget {
        dir,
        timestamp,
        staged,
        lock_root,
        named,
    } = target;
    // `--upload URL --no-local`: the artifacts stream into the repository
    // (remote/streaming.rs); the staging directory holds only the stores'
    // small records and work files.
    let artifacts = match (&remote, staged) {
        (Some(remote), true) => Artifacts::streamed(
            &dir,
            std::sync::Arc::new(remote.stream_backup(&timestamp, recipients.clone())),
        ),
        _ => Artifacts::in_dir(&dir),
    };
    let uncoordinated = Moment::none();
    let ctx = BackupContext {
        dir: &dir,
        timestamp: &timestamp,
        artifacts: &artifacts,
        moment: &uncoordinated,
    };

    if request.dry_run {
        let plan = stores
            .iter()
            .map(|s| (s.service(), s.backup_plan(&ctx)))
            .collect();
        return Ok(BackupOutcome::Planned {
            dry_run: true,
            dir,
            plan,
        });
    }

    let _lock = RootLock::acquire(&lock_root, "backup")?;
    if !named {
        refuse_to_replace(&dir, &timestamp, remote.as_ref()).await?;
    }
    // A backup beside a restore (or drill) of the same server would copy a
    // half-restored store.
    let _servers = stores::lock_servers(&stores, "backup").await?;

    // Probe everything first: an unreachable server fails the run before any file exists.
    for store in &stores {
        let info = store.probe().await?;
        tracing::info!(service = %store.service(), version = %info.version, endpoint = %info.endpoint, "server reachable");
    }

    let created_dir = !dir.exists();
    create_private_dir(&dir)
        .map_err(|e| io_error(None, "create backup directory", dir.display(), e))?;
    if !created_dir && artifact::open_to_others(&dir) {
        // Not ours to change (see create_private_dir); the files stay 0600.
        tracing::warn!(dir = %dir.display(), "the backup directory existed and others than its owner may enter it; consider chmod 700");
    }
    let started_at = jiff::Timestamp::now().to_string();

    let services: Vec<Service> = stores.iter().map(|s| s.service()).collect();
    let mut vars = run_variables("backup", &settings.root, Some(&dir), &services);
    vars.push(("IT_BACKUP_TIMESTAMP", timestamp.clone()));
    let coordinated = freeze::coordinate(&settings.freeze, &services, &vars, |moment| {
        let ctx = &ctx;
        async move {
            let ctx = BackupContext {
                moment: &moment,
                ..*ctx
            };
            let backups = stores.iter().map(|store| async {
                let result = store.backup(&ctx).await;
                // A store that never told (or failed first) is done with
                // the writers now.
                ctx.moment.reached(store.service());
                result
            });
            futures::future::join_all(backups).await
        }
    })
    .await;
    let (results, freeze) = match coordinated {
        Ok(coordinated) => coordinated,
        Err(e) => {
            // The freeze failed: the stores' work was dropped wherever it
            // was, its files with it. A directory this run made is its own.
            if created_dir {
                let _ = fs::remove_dir_all(&dir);
            } else {
                tracing::warn!(dir = %dir.display(), "the failed backup may have left partial files in a directory it did not create");
            }
            return Err(e);
        }
    };
    let mut done: Vec<StoreBackup> = Vec::new();
    let mut first_error = None;
    for result in results {
        match result {
            Ok(backup) => done.push(backup),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if first_error.is_none() {
        if let Some(recipients) = &recipients {
            if let Err(e) = seal_all(&mut done, recipients.clone()).await {
                first_error = Some(e);
            }
        }
    }
    if let Some(err) = first_error {
        discard(&dir, &done, created_dir, remote.as_ref(), &timestamp).await;
        return Err(err);
    }

    let manifest = Manifest {
        timestamp: timestamp.clone(),
        services: done
            .iter()
            .map(|b| (b.service, b.record.file.clone()))
            .collect(),
        format_version: FORMAT_VERSION,
        tool: ToolInfo {
            name: "itbackup".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        started_at,
        finished_at: jiff::Timestamp::now().to_string(),
        status: Status::Complete,
        host: hostname(),
        artifacts: done.iter().map(|b| (b.service, b.record.clone())).collect(),
        consistency: Consistency::of(done.iter().map(|b| (b.service, b.record.position.as_ref())))
            .map(|c| Consistency { freeze, ..c }),
        manifest_sha256: None,
    };
    if let Err(err) = commit(&dir, &done, &manifest) {
        discard(&dir, &done, created_dir, remote.as_ref(), &timestamp).await;
        return Err(err);
    }
    let uploaded = match &remote {
        Some(remote) => {
            // A streamed artifact is in the repository already: push reads it
            // back against the manifest (as it does any artifact it finds
            // there), sends what the stores wrote locally, the manifest last.
            let pushed = remote
                .push(&dir)
                .await
                .map(|outcome| streamed_count(outcome, &done));
            if pushed.is_err() && artifacts.is_streamed() {
                // A streamed backup is not pushed again later (its artifacts
                // are not here): the failed run leaves nothing of itself.
                discard_uploads(&done, remote, &timestamp).await;
                let _ = fs::remove_dir_all(&dir);
            }
            if staged && pushed.is_ok() {
                fs::remove_dir_all(&dir)
                    .map_err(|e| io_error(None, "remove staged backup", dir.display(), e))?;
            }
            Some(Box::new(pushed?))
        }
        None => None,
    };
    Ok(BackupOutcome::Done {
        local: !staged,
        dir,
        manifest,
        uploaded,
    })
}

/// A default name names a new backup: it never replaces one. The name was
/// chosen free before the hooks ran; a backup found under it now (with the
/// root locked) was taken in the same second by a run that finished in
/// between, or, in the repository, by a run of another root. An explicit
/// `--timestamp`/`--out` that names an existing backup takes it again, as
/// the runbook's deterministic names intend.
async fn refuse_to_replace(
    dir: &std::path::Path,
    name: &str,
    remote: Option<&Remote>,
) -> Result<()> {
    let step = "create backup directory";
    let hint = "run again: the next run takes a new name (or name the backup with --timestamp/--out to replace it on purpose)";
    if dir.join(MANIFEST_FILE).exists() {
        return Err(Error::failure(
            step,
            format!("{} already holds a complete backup", dir.display()),
        )
        .hint(hint));
    }
    if let Some(remote) = remote {
        match remote.holds(name).await {
            Ok(false) => {}
            Ok(true) => {
                return Err(Error::failure(
                    step,
                    format!("{} already holds a backup named {name}", remote.url),
                )
                .hint(hint))
            }
            // The upload will meet the same problem and say so; the local
            // copy (or the staged one, for `push`) is worth taking meanwhile.
            Err(e) => {
                tracing::warn!(error = %e, "cannot check the repository for a backup named {name}")
            }
        }
    }
    Ok(())
}

/// Streamed artifacts were sent by the stores, not by push, which found
/// them intact: they count as uploaded, not as reused.
fn streamed_count(mut outcome: PushOutcome, done: &[StoreBackup]) -> PushOutcome {
    for backup in done.iter().filter(|b| b.artifact.stored.is_some()) {
        outcome.reused = outcome.reused.saturating_sub(1);
        outcome.uploaded_bytes += backup.record.bytes;
    }
    outcome
}

/// Seal every artifact to the recipients (one blocking task per store). A
/// streamed artifact was sealed on its way: only its record is written.
async fn seal_all(done: &mut [StoreBackup], recipients: std::sync::Arc<Recipients>) -> Result<()> {
    for backup in done.iter_mut() {
        if let Some(stored) = &backup.artifact.stored {
            let plain = backup.artifact.digest.clone();
            seal::describe_sealed(
                &mut backup.record,
                &recipients,
                plain,
                stored.file.clone(),
                &stored.digest,
            );
        }
    }
    let local = |b: &&mut StoreBackup| b.artifact.stored.is_none();
    let mut done: Vec<&mut StoreBackup> = done.iter_mut().filter(local).collect();
    let tasks: Vec<_> = done
        .iter()
        .map(|backup| {
            let (pending, mut record, recipients) = (
                backup.artifact.clone(),
                backup.record.clone(),
                recipients.clone(),
            );
            tokio::task::spawn_blocking(move || {
                seal::seal(pending, &mut record, &recipients).map(|sealed| (sealed, record))
            })
        })
        .collect();
    let results = futures::future::join_all(tasks).await;
    let mut first_error = None;
    for (backup, result) in done.iter_mut().zip(results) {
        let service = backup.service;
        match result {
            Ok(Ok((sealed, record))) => {
                backup.artifact = sealed;
                backup.record = record;
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(io_error(
                    Some(service),
                    "encrypt artifact",
                    backup.artifact.partial.display(),
                    e,
                ));
            }
            Err(e) => {
                first_error.get_or_insert(
                    Error::failure("encrypt artifact", e.to_string()).service(service),
                );
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Make the set visible, the manifest last. The manifest is written first,
/// as `*.partial`: it is the last file that needs room, so a full disk fails
/// the run before anything has its final name. Then an older manifest at the
/// same place goes (so a crash in between leaves an incomplete set, never a
/// mixed one), the artifacts get their names and the manifest its own. A
/// failure on the way takes back every name given: the caller then removes
/// the partial files, and a failed run leaves nothing that looks complete.
fn commit(dir: &std::path::Path, done: &[StoreBackup], manifest: &Manifest) -> Result<()> {
    let step = "commit backup";
    let written = manifest.write_partial(dir)?;
    let mut renamed: Vec<&artifact::PendingArtifact> = Vec::new();
    let mut make_visible = || -> Result<()> {
        let old = dir.join(MANIFEST_FILE);
        if old.exists() {
            fs::remove_file(&old).map_err(|e| io_error(None, step, old.display(), e))?;
        }
        for backup in done {
            backup.artifact.commit().map_err(|e| {
                io_error(
                    Some(backup.service),
                    step,
                    backup.artifact.target.display(),
                    e,
                )
            })?;
            renamed.push(&backup.artifact);
        }
        artifact::sync_dir(dir).map_err(|e| io_error(None, step, dir.display(), e))?;
        written
            .commit()
            .map_err(|e| io_error(None, "write manifest", written.target.display(), e))?;
        renamed.push(&written);
        artifact::sync_dir(dir).map_err(|e| io_error(None, "write manifest", dir.display(), e))
    };
    let result = make_visible();
    if result.is_err() {
        // The manifest first: without it, nothing here counts as a backup.
        for pending in renamed.iter().rev() {
            let _ = fs::rename(&pending.target, &pending.partial);
        }
        written.discard();
    }
    result
}

/// Remove what a failed run wrote: its partial artifacts, those it streamed
/// into the repository, and the backup directory when the run made it.
async fn discard(
    dir: &std::path::Path,
    done: &[StoreBackup],
    created_dir: bool,
    remote: Option<&Remote>,
    name: &str,
) {
    for backup in done {
        backup.artifact.discard();
    }
    if let Some(remote) = remote {
        discard_uploads(done, remote, name).await;
    }
    if created_dir {
        let _ = fs::remove_dir(dir);
    }
}

/// Delete the artifacts a failed streaming backup uploaded (best effort: a
/// backup without a manifest is incomplete, and prune removes what is left).
async fn discard_uploads(done: &[StoreBackup], remote: &Remote, name: &str) {
    for stored in done.iter().filter_map(|b| b.artifact.stored.as_ref()) {
        if let Err(e) = remote.delete_object(name, &stored.file).await {
            tracing::warn!(error = %e, file = %stored.file, "cannot delete an uploaded artifact of the failed backup; prune removes it");
        }
    }
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}
