//! Restoring a backup set: validate everything, then destroy and rebuild.
//!
//! Order matters and is the point of this module: the manifest is read and
//! validated, the operator confirms, every server is probed, every requested
//! artifact is re-hashed and decoded — and only then is any store changed.
//! After each store is restored its counts are compared with the manifest.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::backup::open_stores;
use crate::config::Settings;
use crate::error::{io_error, Error, Result};
use crate::lock::RootLock;
use crate::manifest::Manifest;
use crate::parallel::{self, Parallel, Plan};
use crate::repository::{open_backup, BackupChoice, Repository};
use crate::service::{Service, ServiceList};
use crate::stores::{self, RestoreContext, RestoreRecovery, RestoreSelection};
use crate::verify::{verify_backup, ArtifactCheck, Verified};

#[derive(Debug, Default)]
pub struct RestoreRequest {
    pub path: Option<PathBuf>,
    /// A repository URL (`URL/<TS>` or `URL` for its newest complete backup).
    pub from: Option<String>,
    pub manifest: Option<PathBuf>,
    pub services: Option<ServiceList>,
    pub dry_run: bool,
    pub yes: bool,
    /// All stores at once, one after the other, or as [`parallel::plan`] decides.
    pub parallel: Parallel,
    /// Per store, what of its artifact to put back (default: everything).
    pub selections: BTreeMap<Service, RestoreSelection>,
    /// `--rename FROM=TO`, not yet given to a store: each goes to the
    /// selection of the store whose artifact holds FROM.
    pub renames: Vec<(String, String)>,
    /// `--until consistent`: PostgreSQL's target is the moment the set's
    /// other stores hold, read from its manifest ([`align_to_set`]).
    pub until_consistent: bool,
}

/// The selection of a store the request names none for.
static EVERYTHING: RestoreSelection = RestoreSelection::EVERYTHING;

impl RestoreRequest {
    fn selection(&self, service: Service) -> &RestoreSelection {
        self.selections.get(&service).unwrap_or(&EVERYTHING)
    }
}

#[derive(Debug, Serialize)]
pub struct ServiceRestore {
    pub service: Service,
    pub file: String,
    pub seconds: f64,
    pub counts_checked: usize,
    pub server_version: String,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum RestoreOutcome {
    Planned {
        dry_run: bool,
        dir: PathBuf,
        plan: BTreeMap<Service, Vec<String>>,
    },
    Done {
        dir: PathBuf,
        timestamp: String,
        verified: Vec<ArtifactCheck>,
        restored: Vec<ServiceRestore>,
        seconds: f64,
        /// Whether the stores were restored at once, and why.
        plan: Plan,
    },
}

pub async fn run(settings: &Settings, mut request: RestoreRequest) -> Result<RestoreOutcome> {
    // A repository's backup is downloaded and checked object by object into
    // a staging directory (removed at the end); from there on it is a local
    // restore. A dry run only reads its manifest.
    if request.until_consistent {
        align_to_set(settings, &mut request).await?;
    }
    let until = request
        .selections
        .get(&Service::Postgres)
        .and_then(|s| s.until);
    // --until without a named backup: the newest physical one before the target.
    let (chosen_path, chosen_from) = match until {
        Some(target) if request.path.is_none() && request.manifest.is_none() => {
            base_backup_for(settings, request.from.as_deref(), target).await?
        }
        _ => (None, None),
    };
    let choice = BackupChoice {
        root: &settings.root,
        path: chosen_path.as_deref().or(request.path.as_deref()),
        manifest: request.manifest.as_deref(),
        from: chosen_from.as_deref().or(request.from.as_deref()),
    };
    let backup = open_backup(choice).await?;
    let manifest = &backup.manifest;
    let held = manifest.services.keys().copied();
    let services = ServiceList::within(request.services.as_ref(), held).map_err(|missing| {
        Error::usage(format!(
            "the backup in {} has no {missing} artifact (it holds: {})",
            backup.shown.display(),
            manifest
                .services
                .keys()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    let stores = open_stores(&services, settings)?;
    assign_renames(&mut request, manifest, &stores)?;
    refuse_selections_not_restorable(&request, &stores)?;

    if request.dry_run {
        let mut plan = BTreeMap::new();
        for store in &stores {
            let record = &manifest.artifacts[&store.service()];
            let mut steps = vec![format!(
                "verify {} (sha256 {}…, then a full decode)",
                record.file,
                &record.sha256[..12]
            )];
            let selection = request.selection(store.service());
            steps.extend(store.restore_plan(record, selection));
            steps.push("compare the restored counts with the manifest and check health".into());
            plan.insert(store.service(), steps);
        }
        return Ok(RestoreOutcome::Planned {
            dry_run: true,
            dir: backup.shown.clone(),
            plan,
        });
    }

    confirm(&backup.shown, manifest, &services, request.yes)?;
    let _lock = RootLock::acquire(&backup.lock_root, "restore")?;
    // Whatever root or repository the backup comes from, one writer per server.
    let _servers = stores::lock_servers(&stores, "restore").await?;
    let started = Instant::now();

    for store in &stores {
        store
            .check_before_restore(&manifest.artifacts[&store.service()])
            .await?;
    }
    let verified = verify_backup(&backup, &stores, settings.identity.as_deref(), true).await?;

    let scratch = tempfile::Builder::new()
        .prefix(".itbackup-restore-")
        .tempdir_in(&backup.lock_root)
        .map_err(|e| {
            io_error(
                None,
                "create scratch directory",
                backup.lock_root.display(),
                e,
            )
        })?;
    let recovery = RestoreRecovery {
        archive_root: match backup.repository {
            Some(_) => settings.root.clone(),
            None => backup.lock_root.clone(),
        },
        archive_url: backup.repository.clone(),
        identity: settings.identity.clone(),
    };
    // Every store's local work first (extracting dumps, checking free space):
    // a full disk stops the restore here, while no store has been changed.
    for store in &stores {
        let opened = &verified.opened[&store.service()];
        let ctx = RestoreContext {
            artifact: &opened.source,
            scratch: scratch.path(),
            selection: request.selection(store.service()),
            recovery: &recovery,
        };
        store.prepare_restore(&ctx, &opened.record).await?;
    }
    // The stores are separate servers, so restoring them at once is safe and
    // the recovery takes as long as the slowest one.
    let restore = |store| {
        restore_one(
            store,
            manifest,
            &verified,
            scratch.path(),
            &request,
            &recovery,
        )
    };
    // A store's backup time stands for its restore time: both move its
    // data through its server, and the manifest has it for every store.
    let expected_seconds = |service| {
        manifest
            .artifacts
            .get(&service)
            .map_or(0.0, |r| r.backup_seconds())
    };
    let plan = parallel::plan(
        request.parallel,
        &stores,
        expected_seconds,
        &settings.stores.target,
    )
    .await;
    tracing::info!(plan = %plan.describe(), reason = %plan.reason, "restore schedule");
    let results = parallel::run_planned(
        &plan,
        &stores,
        |store| store.service(),
        |store| restore(store.as_ref()),
    )
    .await;
    // Every store has finished (or failed) by now: report the first failure,
    // and with it what became of every store of the set.
    let mut restored = Vec::new();
    let mut failed = Vec::new();
    for (store, result) in stores.iter().zip(results) {
        match result {
            Ok(done) => restored.push(done),
            Err(e) => failed.push((store.service(), e)),
        }
    }
    if !failed.is_empty() {
        let services: Vec<Service> = failed.iter().map(|(s, _)| *s).collect();
        let (_, mut first) = failed.remove(0);
        first.message.push_str(&set_outcome(&restored, &services));
        return Err(first);
    }
    Ok(RestoreOutcome::Done {
        // A remote backup is reported by its URL, not by the staging directory.
        dir: backup.shown.clone(),
        timestamp: manifest.timestamp.clone(),
        verified: verified.checks,
        restored,
        seconds: started.elapsed().as_secs_f64(),
        plan,
    })
}

/// `--until consistent`: PostgreSQL is to be replayed to the moment the
/// set's other stores hold (the latest of their positions), read from the
/// set's manifest. When the set's own base backup was consistent only
/// after that moment, a PostgreSQL-only restore takes the newest earlier
/// base backup of the same root or repository; a restore of several stores
/// is refused with the two commands that do it. Nothing is changed here.
async fn align_to_set(settings: &Settings, request: &mut RestoreRequest) -> Result<()> {
    use stores::postgres::physical::{PhysicalDetails, RecoveryTarget};
    let step = "--until consistent";
    let choice = BackupChoice {
        root: &settings.root,
        path: request.path.as_deref(),
        manifest: request.manifest.as_deref(),
        from: request.from.as_deref(),
    };
    let set = open_backup(choice).await?;
    let shown = set.shown.display().to_string();
    let record = set
        .manifest
        .artifacts
        .get(&Service::Postgres)
        .ok_or_else(|| {
            Error::usage(format!(
                "{step}: the backup {shown} holds no PostgreSQL artifact"
            ))
        })?;
    let details = PhysicalDetails::of(record).map_err(|_| {
        Error::usage(format!(
            "{step}: PostgreSQL in {shown} was backed up with the {} method; aligning it needs a physical backup and its archived WAL",
            record.method
        ))
        .hint("take backups with --postgres-method physical and archive WAL with `itbackup wal push` (docs/postgres-pitr.md)")
    })?;
    let Some((moment, holder)) = set
        .manifest
        .consistency
        .as_ref()
        .and_then(|c| c.moment_beside(Service::Postgres))
    else {
        return Err(Error::usage(format!(
            "{step}: the backup {shown} records no position of another store to align PostgreSQL to"
        ))
        .hint("the set needs OpenSearch or Neo4j beside PostgreSQL, backed up by an itbackup that records positions"));
    };
    tracing::info!(until = %moment, store = %holder, "--until consistent: PostgreSQL is replayed to the moment {holder} holds");
    let selection = request.selections.entry(Service::Postgres).or_default();
    selection.until = Some(RecoveryTarget::Time(moment));
    let consistent_at = details.consistent_at.parse::<jiff::Timestamp>().ok();
    if consistent_at.is_some_and(|at| at <= moment) {
        return Ok(());
    }
    let only_postgres = request
        .services
        .as_ref()
        .is_some_and(|s| s.0 == [Service::Postgres]);
    if !only_postgres {
        let set_arg = match (&request.from, &request.path) {
            (Some(url), _) => format!("--from {url}"),
            (None, Some(path)) => format!("--path {}", path.display()),
            (None, None) => format!("--path {shown}"),
        };
        let others: Vec<&str> = set
            .manifest
            .services
            .keys()
            .filter(|s| **s != Service::Postgres)
            .map(|s| s.as_str())
            .collect();
        return Err(Error::usage(format!(
            "{step}: PostgreSQL's base backup in {shown} was consistent at {}, after {moment}, the moment {holder} holds: it cannot be replayed back to it",
            details.consistent_at
        ))
        .hint(format!(
            "restore in two steps (nothing was changed): `itbackup restore {set_arg} --services {} --yes`, then `itbackup restore {set_arg} --services postgres --until consistent --yes`, which replays the WAL from an earlier base backup",
            others.join(",")
        )));
    }
    // The repository the set lives in, for an earlier base backup.
    let repository = match &request.from {
        Some(url) => {
            let (_, named) = Repository::locate(&settings.root, Some(url)).await?;
            match named {
                Some(name) => {
                    let url = url.trim_end_matches('/');
                    Some(
                        url.strip_suffix(name.as_str())
                            .unwrap_or(url)
                            .trim_end_matches('/')
                            .to_string(),
                    )
                }
                None => Some(url.clone()),
            }
        }
        None => None,
    };
    let (path, from) = base_backup_for(
        settings,
        repository.as_deref(),
        RecoveryTarget::Time(moment),
    )
    .await?;
    tracing::info!(set = %shown, "--until consistent: this set's base backup ends after the moment; an earlier base backup is replayed to it");
    request.path = path;
    request.from = from;
    request.manifest = None;
    Ok(())
}

/// The newest complete backup of the root or repository `from` whose
/// PostgreSQL artifact is a physical base backup consistent before
/// `target`: its path (local) or URL (repository). A repository URL that
/// names one backup is taken as it is.
async fn base_backup_for(
    settings: &Settings,
    from: Option<&str>,
    target: stores::postgres::physical::RecoveryTarget,
) -> Result<(Option<PathBuf>, Option<String>)> {
    use stores::postgres::physical::{PhysicalDetails, RecoveryTarget};
    let (repository, named) = Repository::locate(&settings.root, from).await?;
    if named.is_some() {
        return Ok((None, None));
    }
    let fits = |manifest: &Manifest| {
        let Some(record) = manifest.artifacts.get(&Service::Postgres) else {
            return false;
        };
        let Ok(details) = PhysicalDetails::of(record) else {
            return false;
        };
        match target {
            RecoveryTarget::Latest => true,
            RecoveryTarget::Time(t) => details
                .consistent_at
                .parse::<jiff::Timestamp>()
                .is_ok_and(|at| at <= t),
            RecoveryTarget::Lsn(lsn) => {
                stores::postgres::physical::lsn::Lsn::parse(&details.stop_lsn)
                    .is_some_and(|stop| stop <= lsn)
            }
        }
    };
    let backups = repository.backups().await?;
    let physical = backups
        .iter()
        .filter(|b| {
            b.complete
                && b.manifest.as_ref().is_some_and(|m| {
                    m.artifacts
                        .get(&Service::Postgres)
                        .is_some_and(|r| PhysicalDetails::of(r).is_ok())
                })
        })
        .count();
    let chosen = backups
        .iter()
        .rev()
        .find(|b| b.complete && b.manifest.as_ref().is_some_and(fits))
        .ok_or_else(|| {
            let why = if physical == 0 {
                "holds no complete physical PostgreSQL backup (take one with --postgres-method physical)".to_string()
            } else {
                format!("has no physical PostgreSQL backup before {target:?}: the target is before the oldest base backup ({physical} found)")
            };
            Error::not_found("choose base backup", format!("{} {why}", repository.describe()))
                .hint("choose a later --until, or name a backup with --path or --from URL/<TIMESTAMP>; nothing was changed")
        })?;
    tracing::info!(backup = %chosen.name, "postgres: base backup for --until chosen");
    Ok(match &repository {
        Repository::Local(root) => (Some(root.join(&chosen.name)), None),
        Repository::Remote(remote) => (
            None,
            Some(format!(
                "{}/{}",
                remote.url.trim_end_matches('/'),
                chosen.name
            )),
        ),
    })
}

/// What a restore that failed did to each store of the set, for its error.
fn set_outcome(restored: &[ServiceRestore], failed: &[Service]) -> String {
    let names = |services: &mut dyn Iterator<Item = Service>| {
        services.map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
    };
    let failed = names(&mut failed.iter().copied());
    if restored.is_empty() {
        format!("\n  backup set: no store was restored; failed: {failed} (see its own message for what it left)")
    } else {
        format!(
            "\n  backup set: PARTLY restored — restored from the backup and checked: {}; failed: {failed} (see its own message for what it left); run the restore again with --services {failed} once the cause is fixed",
            names(&mut restored.iter().map(|r| r.service))
        )
    }
}

/// Restore one store, compare its counts with the manifest, check its health.
async fn restore_one(
    store: &dyn stores::Store,
    manifest: &Manifest,
    verified: &Verified,
    scratch: &Path,
    request: &RestoreRequest,
    recovery: &RestoreRecovery,
) -> Result<ServiceRestore> {
    let service = store.service();
    let record = &manifest.artifacts[&service];
    let opened = &verified.opened[&service];
    let begun = Instant::now();
    tracing::info!(%service, file = %record.file, "restoring");
    let selection = request.selection(service);
    let ctx = RestoreContext {
        artifact: &opened.source,
        scratch,
        selection,
        recovery,
    };
    store.restore(&ctx, &opened.record).await?;
    // What this restore put back, under the names it put it back as.
    let mut expected = record.clone();
    expected.counts = store.expected_counts(record, selection);
    let counts = store.counts(&expected).await?;
    stores::compare_counts(service, &expected.counts, &counts)?;
    let info = store.probe().await?;
    let seconds = begun.elapsed().as_secs_f64();
    tracing::info!(%service, seconds, "restored and counts match");
    Ok(ServiceRestore {
        service,
        file: record.file.clone(),
        seconds,
        counts_checked: expected.counts.len(),
        server_version: info.version,
    })
}

/// Each `--rename FROM=TO` to the store whose artifact holds FROM (a
/// PostgreSQL database, an OpenSearch index); none or two is a usage error.
fn assign_renames(
    request: &mut RestoreRequest,
    manifest: &crate::manifest::Manifest,
    stores: &[Box<dyn stores::Store>],
) -> Result<()> {
    for (from, to) in std::mem::take(&mut request.renames) {
        let holders: Vec<Service> = stores
            .iter()
            .filter(|store| {
                manifest
                    .artifacts
                    .get(&store.service())
                    .is_some_and(|record| store.holds_part(record, &from))
            })
            .map(|store| store.service())
            .collect();
        match holders[..] {
            [service] => request
                .selections
                .entry(service)
                .or_default()
                .renames
                .push((from, to)),
            [] => {
                return Err(Error::usage(format!(
                    "--rename {from}={to}: the backup holds no database or index named '{from}' among the services restored"
                )))
            }
            _ => {
                return Err(Error::usage(format!(
                    "--rename {from}={to}: '{from}' is both a database and an index of the backup; restore one service at a time (--services)"
                )))
            }
        }
    }
    Ok(())
}

/// A selection for a store this restore does not include, or one that
/// cannot restore parts, is a usage error before anything happens.
fn refuse_selections_not_restorable(
    request: &RestoreRequest,
    stores: &[Box<dyn stores::Store>],
) -> Result<()> {
    for (service, selection) in &request.selections {
        if selection.is_everything() && !selection.globals {
            continue;
        }
        match stores.iter().find(|s| s.service() == *service) {
            None => {
                return Err(Error::usage(format!(
                    "the selection (--databases, --indices, --rename, --globals) is for {service}, which this restore does not include"
                )))
            }
            Some(store) if !store.restores_parts() => {
                return Err(Error::usage(format!(
                    "{service} restores its whole artifact; it cannot restore a selection"
                )))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Restore overwrites live data: ask on a terminal, demand `--yes` elsewhere.
fn confirm(dir: &Path, manifest: &Manifest, services: &[Service], yes: bool) -> Result<()> {
    if yes {
        return Ok(());
    }
    let names: Vec<_> = services.iter().map(|s| s.as_str()).collect();
    if !std::io::stdin().is_terminal() {
        return Err(Error::usage(format!(
            "restore overwrites the live data of {}; pass --yes to confirm when not running on a terminal",
            names.join(", ")
        )));
    }
    ask_yes(
        &format!(
            "Restore backup {} ({}) into {}?\nThis OVERWRITES their current data. Type 'yes' to continue: ",
            manifest.timestamp,
            dir.display(),
            names.join(", ")
        ),
        "restore",
    )
}

/// Ask on the terminal; anything but "yes" cancels `what` before any change.
pub fn ask_yes(prompt: &str, what: &str) -> Result<()> {
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).ok();
    if answer.trim() == "yes" {
        Ok(())
    } else {
        Err(Error::failure(
            "confirm",
            format!("{what} cancelled; nothing was changed"),
        ))
    }
}
