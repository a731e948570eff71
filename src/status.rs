//! `itbackup status`: is the newest backup of every store young enough (RPO),
//! intact, and restorable in time (the last drill's RTO), and are the servers
//! up? Built for cron, systemd and Kubernetes probes: any alarm exits 1.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backup::open_stores;
use crate::catalog::{self, BackupEntry};
use crate::config::Settings;
use crate::drill::sandbox::DRILL_VALIDATION_FILE;
use crate::drill::{RTO_OBJECTIVE_SECONDS, VALIDATION_FILE};
use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::metrics::Metrics;
use crate::repository::Repository;
use crate::service::Service;

/// A probe that takes longer than this counts as a server that is down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

pub struct StatusRequest {
    pub rpo: Duration,
    /// The objective of continuous WAL archiving, judged when the root or
    /// repository holds a WAL archive.
    pub wal_rpo: Duration,
    /// `None`: every service found in a complete backup (all when there is none).
    pub services: Option<Vec<Service>>,
    /// Re-hash and decode the newest backups instead of checking their sizes only.
    pub verify: bool,
    pub offline: bool,
    /// Judge the backups in this repository instead of the local root.
    pub from: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct NewestBackup {
    pub name: String,
    pub dir: PathBuf,
    pub timestamp: String,
    /// When the store's data was taken (the artifact's `started_at`).
    pub taken_at: String,
    pub age_seconds: f64,
    /// What it keeps outside its directory (an OpenSearch repository-method snapshot).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept_outside: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Verification {
    /// `sizes` (files present with the manifest's sizes) or `full` (checksums and a full decode).
    pub checked: &'static str,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ServerHealth {
    pub up: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ServiceStatus {
    pub service: Service,
    pub newest: Option<NewestBackup>,
    pub rpo_ok: bool,
    pub verification: Option<Verification>,
    /// `None` with `--offline`.
    pub server: Option<ServerHealth>,
}

/// The part of `synthetic-validation.json` status reports.
#[derive(Debug, Serialize, Deserialize)]
pub struct DrillStatus {
    #[serde(default)]
    pub file: PathBuf,
    pub ok: bool,
    pub timestamp: String,
    pub rto_seconds: Option<f64>,
    pub rto_objective_seconds: f64,
    pub rto_ok: bool,
}

/// Room on the backup root's disk for the next backup.
#[derive(Debug, Serialize)]
pub struct DiskStatus {
    pub free_bytes: u64,
    /// Size of the newest complete backup: about what the next one will need.
    pub newest_backup_bytes: Option<u64>,
}

impl DiskStatus {
    /// The local root's free space beside its newest complete backup; `None`
    /// when the root cannot be examined (it does not exist yet).
    fn of(root: &Path, entries: &[BackupEntry]) -> Option<DiskStatus> {
        let free_bytes = crate::artifact::free_bytes(root).ok()?;
        let newest_backup_bytes = catalog::newest_complete_entry(entries).map(|e| e.bytes);
        Some(DiskStatus {
            free_bytes,
            newest_backup_bytes,
        })
    }

    /// Why the next backup will probably fail for lack of space, if it will.
    fn problem(&self, root: &Path) -> Option<String> {
        let needed = self.newest_backup_bytes?;
        (self.free_bytes < needed).then(|| {
            format!(
                "the next backup will probably not fit: {} has {} free, the newest complete backup takes {}; run `itbackup prune` or free space",
                root.display(),
                crate::human::size(self.free_bytes),
                crate::human::size(needed)
            )
        })
    }
}

/// The WAL archive (`wal/` of the root or repository): its newest segment.
#[derive(Debug, Serialize)]
pub struct WalStatus {
    pub location: String,
    pub newest_segment: String,
    pub archived_at: String,
    pub age_seconds: f64,
    pub rpo_seconds: u64,
    pub rpo_ok: bool,
}

/// How far apart the stores of one backup are (`docs/consistency.md`).
#[derive(Debug, Serialize)]
pub struct BackupConsistency {
    pub backup: String,
    #[serde(flatten)]
    pub window: crate::consistency::Consistency,
}

#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub ok: bool,
    pub root: PathBuf,
    pub checked_at: String,
    pub rpo_seconds: u64,
    pub services: Vec<ServiceStatus>,
    pub last_drill: Option<DrillStatus>,
    /// The local root's disk (`None` for a repository, or a root not made yet).
    pub disk: Option<DiskStatus>,
    /// PostgreSQL's WAL archive, when the root or repository holds one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal: Option<WalStatus>,
    /// The newest complete backup's consistency window, when it records one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consistency: Option<BackupConsistency>,
    /// Each reason for exit status 1.
    pub alarms: Vec<String>,
    /// Worth a look, but no alarm: the drill, damaged backups.
    pub warnings: Vec<String>,
}

impl StatusReport {
    /// The alarms as one error, for the exit status and standard error.
    pub fn error(&self) -> Option<Error> {
        if self.alarms.is_empty() {
            return None;
        }
        Some(
            Error::failure("status", format!("{} alarm(s):\n  {}", self.alarms.len(), self.alarms.join("\n  ")))
                .hint("a missing or old backup: check the scheduled runs' logs and run `itbackup backup`; a failed verification: `itbackup verify --path DIR` shows why, take a new backup; a server down: start it or check the connection settings; no room for the next backup: `itbackup prune` or free space"),
        )
    }

    pub fn record(&self, metrics: &mut Metrics) {
        metrics.set("itbackup_status_ok", &[], if self.ok { 1.0 } else { 0.0 });
        metrics.set("itbackup_rpo_seconds", &[], self.rpo_seconds as f64);
        for s in &self.services {
            let labels = [("service", s.service.as_str())];
            if let Some(newest) = &s.newest {
                metrics.set(
                    "itbackup_newest_backup_age_seconds",
                    &labels,
                    newest.age_seconds,
                );
            }
            if let Some(v) = &s.verification {
                metrics.set(
                    "itbackup_newest_backup_verified",
                    &labels,
                    if v.ok { 1.0 } else { 0.0 },
                );
            }
            if let Some(server) = &s.server {
                metrics.set(
                    "itbackup_server_up",
                    &labels,
                    if server.up { 1.0 } else { 0.0 },
                );
            }
        }
        if let Some(wal) = &self.wal {
            metrics.set("itbackup_wal_newest_age_seconds", &[], wal.age_seconds);
            metrics.set("itbackup_wal_rpo_seconds", &[], wal.rpo_seconds as f64);
        }
        if let Some(disk) = &self.disk {
            metrics.set(
                "itbackup_backup_root_free_bytes",
                &[],
                disk.free_bytes as f64,
            );
        }
        if let Some(drill) = &self.last_drill {
            if let Some(rto) = drill.rto_seconds {
                metrics.set("itbackup_drill_rto_seconds", &[], rto);
            }
            metrics.set(
                "itbackup_drill_rto_objective_seconds",
                &[],
                drill.rto_objective_seconds,
            );
            metrics.set(
                "itbackup_drill_success",
                &[],
                if drill.ok { 1.0 } else { 0.0 },
            );
        }
    }
}

pub async fn run(settings: &Settings, request: &StatusRequest) -> Result<StatusReport> {
    let now = jiff::Timestamp::now();
    let (repository, _) = Repository::locate(&settings.root, request.from.as_deref()).await?;
    let entries = repository.backups().await?;
    let location = request
        .from
        .clone()
        .unwrap_or_else(|| settings.root.display().to_string());
    let services = match &request.services {
        Some(list) => list.clone(),
        None => {
            let mut found: Vec<Service> = entries
                .iter()
                .filter_map(|e| e.manifest.as_ref())
                .flat_map(|m| m.services.keys().copied())
                .collect();
            found.sort();
            found.dedup();
            if found.is_empty() {
                Service::ALL.to_vec()
            } else {
                found
            }
        }
    };
    let stores = open_stores(&services, settings)?;
    let servers = if request.offline {
        vec![None; stores.len()]
    } else {
        futures::future::join_all(stores.iter().map(|store| async move {
            Some(
                match tokio::time::timeout(PROBE_TIMEOUT, store.probe()).await {
                    Ok(Ok(info)) => (true, Some(info.version), None),
                    Ok(Err(e)) => (false, None, Some(e.to_string())),
                    Err(_) => (
                        false,
                        None,
                        Some(format!("no answer within {} s", PROBE_TIMEOUT.as_secs())),
                    ),
                },
            )
        }))
        .await
    };

    let mut alarms = Vec::new();
    let mut warnings = Vec::new();
    let mut statuses = Vec::new();
    for (store, server) in stores.iter().zip(servers) {
        let service = store.service();
        let newest = newest_with(&entries, service);
        let mut status = ServiceStatus {
            service,
            newest: None,
            rpo_ok: false,
            verification: None,
            server: server.map(|(up, version, problem)| ServerHealth {
                up,
                version,
                problem,
            }),
        };
        if let Some(server) = &status.server {
            if !server.up {
                alarms.push(format!(
                    "{service}: server down: {}",
                    server.problem.as_deref().unwrap_or("no answer")
                ));
            }
        }
        match newest {
            None => alarms.push(format!("{service}: no complete backup in {location}")),
            Some((entry, manifest)) => {
                let record = &manifest.artifacts[&service];
                let taken_at = record.started_at.clone();
                let age = taken_at
                    .parse::<jiff::Timestamp>()
                    .map(|t| now.duration_since(t).as_secs_f64())
                    .unwrap_or(f64::INFINITY);
                status.rpo_ok = age <= request.rpo.as_secs_f64();
                if !status.rpo_ok {
                    alarms.push(format!(
                        "{service}: RPO breached: the newest complete backup ({}) is {} old, the objective is {}",
                        entry.name,
                        crate::human::age(Duration::from_secs_f64(age.clamp(0.0, 1e12))),
                        crate::human::age(request.rpo)
                    ));
                }
                let verification = if request.verify {
                    // A repository's backup is checked as it streams from there.
                    verify_full(&repository, &entry.name, manifest, service, settings).await
                } else {
                    verify_sizes(entry, manifest, service)
                };
                if let Some(problem) = &verification.problem {
                    alarms.push(format!(
                        "{service}: the newest backup {} fails verification: {problem}",
                        entry.name
                    ));
                }
                status.verification = Some(verification);
                status.newest = Some(NewestBackup {
                    name: entry.name.clone(),
                    dir: entry.path.clone(),
                    timestamp: manifest.timestamp.clone(),
                    taken_at,
                    age_seconds: age,
                    kept_outside: store.kept_outside(record),
                });
            }
        }
        statuses.push(status);
    }

    for entry in entries.iter().filter(|e| !e.complete) {
        if entry.has_manifest {
            warnings.push(format!(
                "{}: damaged manifest ({}); `itbackup prune` leaves it for you to inspect and remove",
                entry.name,
                entry.problem.as_deref().unwrap_or("invalid")
            ));
        }
    }
    let disk = match request.from {
        Some(_) => None,
        None => DiskStatus::of(&settings.root, &entries),
    };
    if let Some(problem) = disk.as_ref().and_then(|d| d.problem(&settings.root)) {
        alarms.push(problem);
    }
    let wal = wal_status(settings, request, now).await?;
    if let Some(w) = wal.as_ref().filter(|w| !w.rpo_ok) {
        alarms.push(format!(
            "postgres: WAL archiving RPO breached: the newest archived segment ({}, archived {}) is {} old, the objective is {}; commits since are in no archive",
            w.newest_segment,
            w.archived_at,
            crate::human::age(Duration::from_secs_f64(w.age_seconds.clamp(0.0, 1e12))),
            crate::human::age(request.wal_rpo)
        ));
    }
    let last_drill = last_drill(&settings.root);
    match &last_drill {
        None => warnings.push(format!(
            "no recovery drill result (synthetic-validation.json) under {}: run `itbackup drill`",
            settings.root.display()
        )),
        Some(d) if !d.ok || !d.rto_ok => warnings.push(format!(
            "the last recovery drill ({}) {}: restore took {}, objective {:.0} min",
            d.timestamp,
            if d.ok { "passed" } else { "FAILED" },
            d.rto_seconds
                .map(|s| format!("{s:.0} s"))
                .unwrap_or_else(|| "-".into()),
            d.rto_objective_seconds / 60.0
        )),
        Some(_) => {}
    }
    Ok(StatusReport {
        ok: alarms.is_empty(),
        root: settings.root.clone(),
        checked_at: now.to_string(),
        rpo_seconds: request.rpo.as_secs(),
        services: statuses,
        last_drill,
        disk,
        wal,
        consistency: catalog::newest_complete_entry(&entries).and_then(|e| {
            let window = e.consistency.clone()?;
            Some(BackupConsistency {
                backup: e.name.clone(),
                window,
            })
        }),
        alarms,
        warnings,
    })
}

/// The age of the newest segment in the WAL archive of the root (or the
/// repository `--from`), when there is an archive.
async fn wal_status(
    settings: &Settings,
    request: &StatusRequest,
    now: jiff::Timestamp,
) -> Result<Option<WalStatus>> {
    let archive =
        crate::stores::postgres::wal::chain::Archive::at(&settings.root, request.from.as_deref())?;
    let Some(newest) = archive.newest().await? else {
        return Ok(None);
    };
    let age_seconds = newest
        .archived_at
        .parse::<jiff::Timestamp>()
        .map(|at| (now - at).total(jiff::Unit::Second).unwrap_or(f64::MAX))
        .unwrap_or(f64::MAX);
    Ok(Some(WalStatus {
        location: archive.location(),
        newest_segment: newest.name,
        archived_at: newest.archived_at,
        age_seconds,
        rpo_seconds: request.wal_rpo.as_secs(),
        rpo_ok: age_seconds <= request.wal_rpo.as_secs_f64(),
    }))
}

/// The newest complete backup that holds `service`.
fn newest_with(entries: &[BackupEntry], service: Service) -> Option<(&BackupEntry, &Manifest)> {
    entries
        .iter()
        .filter_map(|e| Some((e, e.manifest.as_ref()?)))
        .filter(|(_, m)| m.artifacts.contains_key(&service))
        .max_by(|(_, a), (_, b)| {
            (&a.artifacts[&service].started_at, &a.finished_at)
                .cmp(&(&b.artifacts[&service].started_at, &b.finished_at))
        })
}

/// The cheap check every status does: the artifact is there with its size.
/// The artifact's size where it lies (the root or the repository) against
/// the manifest's.
fn verify_sizes(entry: &BackupEntry, manifest: &Manifest, service: Service) -> Verification {
    let record = &manifest.artifacts[&service];
    let size = entry
        .files
        .get(&record.file)
        .copied()
        .ok_or_else(|| "missing (or not a regular file)".to_string());
    verify_size(&record.file, record.bytes, size)
}

fn verify_size(file: &str, expected: u64, found: std::result::Result<u64, String>) -> Verification {
    let problem = match found {
        Ok(len) if len == expected => None,
        Ok(len) => Some(format!(
            "{file} has {len} bytes, the manifest says {expected}"
        )),
        Err(e) => Some(format!("{file}: {e}")),
    };
    Verification {
        checked: "sizes",
        ok: problem.is_none(),
        problem,
    }
}

/// The same checks as `itbackup verify`: checksums and a full decode.
async fn verify_full(
    repository: &Repository,
    name: &str,
    manifest: &Manifest,
    service: Service,
    settings: &Settings,
) -> Verification {
    let identity = settings.identity.as_deref();
    let result = match (open_stores(&[service], settings), repository) {
        (Ok(stores), Repository::Local(root)) => {
            let dir = root.join(name);
            crate::verify::verify_artifacts(&dir, manifest, &stores, identity, false)
                .await
                .map(|_| ())
        }
        (Ok(stores), Repository::Remote(remote)) => {
            let backup = crate::repository::RemoteBackup {
                remote: remote.clone(),
                name: name.to_string(),
            };
            crate::verify::verify_remote_artifacts(&backup, manifest, &stores, identity, false)
                .await
                .map(|_| ())
        }
        (Err(e), _) => Err(e),
    };
    let problem = result.err().map(|e| e.to_string());
    Verification {
        checked: "full",
        ok: problem.is_none(),
        problem,
    }
}

/// The newest drill result in a backup directory under `root`: a
/// synthetic drill's `synthetic-validation.json` or a sandbox drill's
/// `drill-validation.json`.
pub fn last_drill(root: &Path) -> Option<DrillStatus> {
    let newest = fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok())
        .flat_map(|e| [VALIDATION_FILE, DRILL_VALIDATION_FILE].map(|name| e.path().join(name)))
        .filter_map(|file| {
            let modified = fs::metadata(&file).ok()?.modified().ok()?;
            Some((modified, file))
        })
        .max()?;
    let file = newest.1;
    let mut drill: DrillStatus = match fs::read(&file)
        .ok()
        .and_then(|text| serde_json::from_slice(&text).ok())
    {
        Some(drill) => drill,
        None => DrillStatus {
            file: PathBuf::new(),
            ok: false,
            timestamp: "unreadable".into(),
            rto_seconds: None,
            rto_objective_seconds: RTO_OBJECTIVE_SECONDS,
            rto_ok: false,
        },
    };
    drill.file = file;
    Some(drill)
}

/// The request for the command line's flags.
pub fn request(args: &crate::cli::StatusArgs) -> StatusRequest {
    StatusRequest {
        rpo: args.rpo,
        wal_rpo: args.wal_rpo,
        services: args.services.as_ref().map(|l| l.0.clone()),
        verify: args.verify,
        offline: args.offline,
        from: args.from.clone(),
    }
}

/// After the report is printed: metrics, the webhook on alarms, and the
/// alarms as the error that makes the exit status 1.
pub async fn finish(
    report: &StatusReport,
    settings: &Settings,
    monitor: &crate::cli::MonitorArgs,
) -> Result<()> {
    crate::metrics::update(monitor.metrics_file.as_deref(), |m| {
        crate::metrics::record_run(m, "status", 0.0, report.ok);
        report.record(m);
    });
    let Some(err) = report.error() else {
        return Ok(());
    };
    if let Some(url) = &monitor.notify_url {
        let ctx = crate::hooks::RunContext {
            operation: "status",
            hooks: None,
            monitor,
            root: settings.root.clone(),
            dir: None,
            services: report.services.iter().map(|s| s.service).collect(),
            dry_run: false,
        };
        crate::hooks::notify_failure(url, &ctx, &err).await;
    }
    Err(err)
}
