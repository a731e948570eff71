//! The sandbox drill (`itbackup drill --backup PATH|latest [--from URL]
//! --target-config FILE`): a real backup restored into other servers, the
//! sandbox, and checked there table by table and index by index against what
//! the backup recorded, with the recovery time measured. Production is never
//! touched: servers whose address is one of the backed-up servers', and
//! servers that hold data no drill put there, are refused before anything is
//! written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::{RPO_OBJECTIVE_HOURS, RTO_OBJECTIVE_SECONDS};
use crate::address::{same_server, shown_address};
use crate::artifact;
use crate::backup::open_stores;
use crate::config::Settings;
use crate::error::{io_error, Error, Kind, Result};
use crate::manifest::{ArtifactRecord, Manifest};
use crate::progress::Progress;
use crate::repository::{open_backup, BackupChoice};
use crate::restore::ServiceRestore;
use crate::service::{Service, ServiceList};
use crate::stores::sandbox::SandboxState;
use crate::stores::{self, Store};

/// The sandbox drill's results, beside the backup (or in `--out DIR`).
pub const DRILL_VALIDATION_FILE: &str = "drill-validation.json";

#[derive(Debug)]
pub struct SandboxDrillRequest {
    /// A backup directory, `latest`, or with `from` a backup's name.
    pub backup: String,
    /// A repository URL the backup is read from.
    pub from: Option<String>,
    pub target_config: PathBuf,
    pub services: Option<ServiceList>,
    pub keep: bool,
    pub parallel: crate::parallel::Parallel,
    /// Where `drill-validation.json` goes (default: the backup's directory,
    /// or the current directory for a repository's backup).
    pub out: Option<PathBuf>,
    pub json: bool,
    /// `--neo4j-load`: how the sandbox's Neo4j loads a logical backup.
    pub neo4j_load: Option<crate::stores::neo4j::settings::Neo4jLoad>,
}

/// One store's part of `drill-validation.json`.
#[derive(Debug, Serialize)]
pub struct SandboxServiceCheck {
    /// The sandbox server (host and port, no credentials).
    pub sandbox: String,
    pub artifact: String,
    pub method: String,
    /// Tables, indices, labels … whose counts the restore compared.
    pub counts_checked: usize,
    /// Of those, how many had a content digest recorded at backup time,
    /// each compared with the restored data's.
    pub digests_checked: usize,
    pub restore_seconds: Option<f64>,
    /// The time the content digests took (a full read of the restored data).
    pub content_check_seconds: Option<f64>,
    pub ok: bool,
    pub differences: Vec<String>,
}

/// `drill-validation.json`.
#[derive(Debug, Serialize)]
pub struct SandboxValidation {
    pub ok: bool,
    /// `sandbox`: a real backup restored into other servers.
    pub drill: &'static str,
    pub backup: PathBuf,
    /// The backup's timestamp.
    pub timestamp: String,
    pub backup_finished_at: String,
    pub drilled_at: String,
    pub services: BTreeMap<Service, SandboxServiceCheck>,
    /// Measured recovery time: the whole restore (verification of every
    /// artifact, each store restored and its counts checked).
    pub rto_seconds: Option<f64>,
    pub rto_objective_seconds: f64,
    pub rto_ok: bool,
    pub rpo_objective_hours: u64,
    /// Whether the sandbox was emptied afterwards (not with `--keep`).
    pub cleaned: bool,
    pub errors: Vec<String>,
}

pub struct SandboxOutcome {
    pub validation: SandboxValidation,
    pub file: PathBuf,
    /// The kind of the restore's failure, when it failed.
    failure_kind: Option<Kind>,
}

impl SandboxOutcome {
    /// The drill's verdict: data that differs from the backup's record is a
    /// verification mismatch; a failed restore or a missed RTO a failure.
    pub fn verdict(&self) -> Result<()> {
        let v = &self.validation;
        if v.ok {
            return Ok(());
        }
        let differs = v.services.values().any(|s| !s.differences.is_empty());
        let kind = match self.failure_kind {
            Some(kind) => kind,
            None if differs => Kind::VerificationMismatch,
            None => Kind::Failure,
        };
        let mut problems = v.errors.clone();
        for (service, s) in &v.services {
            problems.extend(s.differences.iter().map(|d| format!("{service}: {d}")));
        }
        if !v.rto_ok && v.rto_seconds.is_some() {
            problems.push(format!(
                "restore took {:.0} s, over the {:.0} s objective",
                v.rto_seconds.unwrap_or_default(),
                v.rto_objective_seconds
            ));
        }
        Err(Error::new(
            kind,
            "drill",
            format!(
                "the sandbox drill of {} failed:\n  {}",
                v.backup.display(),
                problems.join("\n  ")
            ),
        )
        .hint(format!("details in {}", self.file.display())))
    }
}

pub async fn run(source: &Settings, request: SandboxDrillRequest) -> Result<SandboxOutcome> {
    let mut sandbox = source.clone().with_target_config(&request.target_config)?;
    sandbox.stores.neo4j.with_load_flag(request.neo4j_load);
    let show = !request.json;

    let step = Progress::step(show, "reading the backup's manifest");
    let pinned = PinnedBackup::open(&source.root, &request).await?;
    let manifest = &pinned.manifest;
    let services =
        ServiceList::within(request.services.as_ref(), manifest.services.keys().copied()).map_err(
            |missing| {
                Error::usage(format!(
                    "the backup {} has no {missing} artifact",
                    pinned.shown.display()
                ))
            },
        )?;
    step.done(&format!(
        "backup {} ({})",
        manifest.timestamp,
        services
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));

    let step = Progress::step(show, "checking the sandbox");
    let sandbox_stores = open_stores(&services, &sandbox)?;
    refuse_source_servers(&open_stores(&services, source)?, &sandbox_stores).await?;
    let _servers = stores::lock_servers(&sandbox_stores, "drill").await?;
    refuse_data_not_from_drills(&sandbox_stores).await?;
    for store in &sandbox_stores {
        store.mark_sandbox().await?;
    }
    step.done("sandbox servers reachable, empty or marked as a sandbox");

    let step = Progress::step(show, "restoring into the sandbox (the normal restore path)");
    let restore = super::restore_everything(
        &sandbox,
        pinned.path.clone(),
        pinned.from.clone(),
        &services,
        request.parallel,
        step,
    )
    .await;
    let mut errors = Vec::new();
    if let Some(e) = &restore.failure {
        errors.push(format!("restore failed: {e}"));
    }
    let failure_kind = restore.failure.as_ref().map(|e| e.kind);
    let rto_seconds = restore.seconds;

    let step = Progress::step(show, "comparing content digests with the backup's");
    let mut checks = BTreeMap::new();
    for store in &sandbox_stores {
        let service = store.service();
        let record = &manifest.artifacts[&service];
        let restored = restore.stores.get(&service);
        let check = check_content(store.as_ref(), record, restored).await;
        checks.insert(service, check);
    }
    step.done(&format!(
        "{} digest(s) compared",
        checks.values().map(|c| c.digests_checked).sum::<usize>()
    ));
    // A restore replaces what it restores, marks included (Neo4j's graph).
    for store in &sandbox_stores {
        if let Err(e) = store.mark_sandbox().await {
            errors.push(format!(
                "{}: could not mark the sandbox: {e}",
                store.service()
            ));
        }
    }

    let rto_ok = rto_seconds.is_some_and(|s| s <= RTO_OBJECTIVE_SECONDS);
    let mut validation = SandboxValidation {
        ok: false,
        drill: "sandbox",
        backup: pinned.shown.clone(),
        timestamp: manifest.timestamp.clone(),
        backup_finished_at: manifest.finished_at.clone(),
        drilled_at: jiff::Timestamp::now().to_string(),
        services: checks,
        rto_seconds,
        rto_objective_seconds: RTO_OBJECTIVE_SECONDS,
        rto_ok,
        rpo_objective_hours: RPO_OBJECTIVE_HOURS,
        cleaned: false,
        errors,
    };
    if !request.keep {
        let step = Progress::step(show, "cleaning the sandbox");
        let mut cleaned = true;
        for store in &sandbox_stores {
            if let Err(e) = store.clean_sandbox().await {
                cleaned = false;
                validation.errors.push(format!(
                    "{}: could not clean the sandbox: {e}",
                    store.service()
                ));
            }
        }
        validation.cleaned = cleaned;
        step.done(if cleaned {
            "sandbox cleaned"
        } else {
            "sandbox NOT cleaned"
        });
    }
    validation.ok =
        validation.errors.is_empty() && rto_ok && validation.services.values().all(|s| s.ok);
    let dir = request
        .out
        .clone()
        .or_else(|| pinned.path.clone())
        .unwrap_or_else(|| PathBuf::from("."));
    let file = write_validation(&dir, &validation)?;
    Ok(SandboxOutcome {
        validation,
        file,
        failure_kind,
    })
}

/// The backup the drill restores, chosen once: `latest` is resolved here,
/// so a backup finished meanwhile does not change what is restored.
struct PinnedBackup {
    manifest: Manifest,
    shown: PathBuf,
    /// The local directory, or …
    path: Option<PathBuf>,
    /// … the repository's `URL/<name>`.
    from: Option<String>,
}

impl PinnedBackup {
    async fn open(root: &Path, request: &SandboxDrillRequest) -> Result<Self> {
        let latest = request.backup == "latest";
        let url = request.from.as_ref().map(|url| match latest {
            true => url.clone(),
            false => format!("{}/{}", url.trim_end_matches('/'), request.backup),
        });
        let path = (!latest && url.is_none()).then(|| PathBuf::from(&request.backup));
        let choice = BackupChoice {
            root,
            path: path.as_deref(),
            manifest: None,
            from: url.as_deref(),
        };
        let opened = open_backup(choice).await?;
        let remote = opened.repository.is_some();
        Ok(PinnedBackup {
            path: (!remote).then(|| opened.dir.clone()),
            from: remote.then(|| opened.shown.to_string_lossy().into_owned()),
            shown: opened.shown,
            manifest: opened.manifest,
        })
    }
}

/// Counts were compared by the restore; here every digest the backup
/// recorded is compared with the restored data's.
async fn check_content(
    store: &dyn Store,
    record: &ArtifactRecord,
    restored: Option<&ServiceRestore>,
) -> SandboxServiceCheck {
    let mut check = SandboxServiceCheck {
        sandbox: shown_address(&store.address()),
        artifact: record.file.clone(),
        method: record.method.clone(),
        counts_checked: restored.map_or(0, |r| r.counts_checked),
        digests_checked: 0,
        restore_seconds: restored.map(|r| r.seconds),
        content_check_seconds: None,
        ok: false,
        differences: Vec::new(),
    };
    if restored.is_none() {
        check.differences.push("not restored".into());
        return check;
    }
    let started = Instant::now();
    match store.content_digests(record).await {
        Ok(found) => {
            for (key, want) in &record.digests {
                match found.get(key) {
                    Some(got) if got == want => check.digests_checked += 1,
                    Some(got) => check.differences.push(format!(
                        "{key}: content digest differs (backup {want}, restored {got})"
                    )),
                    None => check
                        .differences
                        .push(format!("{key}: recorded in the backup, not found restored")),
                }
            }
        }
        Err(e) => check
            .differences
            .push(format!("content digests could not be computed: {e}")),
    }
    check.content_check_seconds = Some(started.elapsed().as_secs_f64());
    check.ok = check.differences.is_empty();
    check
}

/// Refuse a sandbox server that is one of the servers backed up (the
/// settings of the environment and `--config`): same port, and the same host
/// name, a shared address, or both on this machine.
async fn refuse_source_servers(
    source: &[Box<dyn Store>],
    sandbox: &[Box<dyn Store>],
) -> Result<()> {
    for (src, target) in source.iter().zip(sandbox) {
        let (a, b) = (src.address(), target.address());
        if same_server(&a, &b).await {
            return Err(Error::usage(format!(
                "the target config names {} {} for the sandbox, which is the server the backups come from: a sandbox drill never restores into it",
                target.service(),
                shown_address(&b)
            ))
            .service(target.service())
            .hint("give the sandbox servers of their own in --target-config; nothing was changed"));
        }
    }
    Ok(())
}

/// Refuse sandbox servers that hold data no drill put there.
async fn refuse_data_not_from_drills(sandbox: &[Box<dyn Store>]) -> Result<()> {
    let mut held = Vec::new();
    for store in sandbox {
        store.probe().await?;
        if let SandboxState::Holds(what) = store.sandbox_state().await? {
            held.push(format!(
                "{} {} holds {what}",
                store.service(),
                shown_address(&store.address())
            ));
        }
    }
    if held.is_empty() {
        return Ok(());
    }
    Err(Error::usage(format!(
        "the sandbox holds data that no drill put there, so it may not be a sandbox:\n  {}",
        held.join("\n  ")
    ))
    .hint("a sandbox must be empty or marked by an earlier drill (itbackup_sandbox); check --target-config, or empty those servers if they are yours to empty; nothing was changed"))
}

fn write_validation(dir: &Path, validation: &SandboxValidation) -> Result<PathBuf> {
    let mut json = serde_json::to_vec_pretty(validation).expect("serialisable");
    json.push(b'\n');
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        artifact::write_bytes(dir, DRILL_VALIDATION_FILE, &json)?.commit()?;
        artifact::sync_dir(dir)
    };
    write().map_err(|e| {
        io_error(
            None,
            "write drill-validation.json",
            dir.join(DRILL_VALIDATION_FILE).display(),
            e,
        )
    })?;
    Ok(dir.join(DRILL_VALIDATION_FILE))
}
