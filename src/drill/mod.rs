//! The recovery drill: populate → back up → wipe → restore → verify, with the
//! restore time measured against the recovery time objective.
//!
//! The drill goes through the same code as `itbackup backup` and `itbackup
//! restore`; only the synthetic data (each store's [`DrillData`]) is its own.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::artifact;
use crate::backup::{self, BackupOutcome, BackupRequest};
use crate::config::Settings;
use crate::error::{io_error, Error, Result};
use crate::moment::FreezeSettings;
use crate::parallel::{Parallel, Plan};
use crate::progress::Progress;
use crate::restore::{self, RestoreOutcome, RestoreRequest};
use crate::service::{Service, ServiceList};
use crate::stores::{self, DrillInventory, Store};

pub mod cross_store;
pub mod memory;
pub mod sandbox;

use cross_store::{CrossStoreReport, CrossStoreWriter};
use memory::{peak_mb, PeakMemory};

/// The file the runbook's `tests/backup_restore_synthetic.sh` leaves behind.
pub const VALIDATION_FILE: &str = "synthetic-validation.json";
/// The runbook's recovery objectives.
pub const RTO_OBJECTIVE_SECONDS: f64 = 30.0 * 60.0;
pub const RPO_OBJECTIVE_HOURS: u64 = 24;

#[derive(Debug, Default)]
pub struct DrillRequest {
    pub out: Option<PathBuf>,
    pub services: Option<ServiceList>,
    pub scale: u64,
    pub keep: bool,
    pub yes: bool,
    pub parallel: Parallel,
    /// Fault injection for tests: remove one record of this store after the
    /// restore, so that the drill must fail.
    pub sabotage: Option<Service>,
    pub json: bool,
    /// Repository the backup is also uploaded to and restored from.
    pub upload: Option<String>,
    /// Write events into every store during the backup and compare the
    /// restored id sets (`drill --cross-store`).
    pub cross_store: bool,
    /// Take the drill's backup with `--consistent` (with `cross_store`, its
    /// hooks pause the drill's writer).
    pub consistent: bool,
}

/// One store's part of `synthetic-validation.json`.
#[derive(Debug, Serialize)]
pub struct ServiceValidation {
    pub location: String,
    pub artifact: String,
    pub artifact_bytes: u64,
    pub method: String,
    pub expected: DrillInventory,
    pub restored: Option<DrillInventory>,
    pub backup_seconds: f64,
    pub restore_seconds: Option<f64>,
    pub ok: bool,
    pub differences: Vec<String>,
}

/// `synthetic-validation.json`: the runbook's keys first, then the details.
#[derive(Debug, Serialize)]
pub struct Validation {
    pub postgres_rows: Option<u64>,
    pub neo4j_nodes: Option<u64>,
    pub opensearch_doc: Option<u64>,
    pub ok: bool,
    pub timestamp: String,
    pub backup_dir: PathBuf,
    pub scale: u64,
    pub services: BTreeMap<Service, ServiceValidation>,
    pub backup_seconds: f64,
    pub restore_seconds: Option<f64>,
    pub restore_parallel: bool,
    /// How the restore scheduled the stores, and why.
    pub restore_plan: Option<Plan>,
    /// Measured recovery time: the whole restore (verification of every
    /// artifact, each store restored and checked).
    pub rto_seconds: Option<f64>,
    pub rto_objective_seconds: f64,
    pub rto_ok: bool,
    pub rpo_objective_hours: u64,
    /// How far apart the backup's stores are (its manifest's `consistency`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consistency: Option<crate::consistency::Consistency>,
    /// `drill --cross-store`: the events each store came back with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cross_store: Option<CrossStoreReport>,
    /// itbackup's own peak memory through the phases.
    pub peak_memory: PeakMemory,
    pub errors: Vec<String>,
}

impl Validation {
    /// A consistent backup whose stores came back with different events:
    /// what `--consistent` promised does not hold. (Without it, the
    /// difference is the measurement, not a failure.)
    fn cross_store_mismatch(&self) -> Vec<String> {
        match &self.cross_store {
            Some(report) if report.consistent => report.differences(),
            _ => Vec::new(),
        }
    }

    /// Every difference, one line each, for the error message.
    pub fn problems(&self) -> Vec<String> {
        let mut out = self.errors.clone();
        for (service, v) in &self.services {
            out.extend(v.differences.iter().map(|d| format!("{service}: {d}")));
        }
        out.extend(self.cross_store_mismatch());
        if !self.rto_ok && self.rto_seconds.is_some() {
            out.push(format!(
                "restore took {:.0} s, over the {:.0} s objective",
                self.rto_seconds.unwrap_or_default(),
                self.rto_objective_seconds
            ));
        }
        out
    }
}

pub struct DrillOutcome {
    pub validation: Validation,
    pub file: PathBuf,
}

impl DrillOutcome {
    /// The drill's verdict, for the exit status and the webhook, from the
    /// command line and the scheduler alike: restored, yet the data differs
    /// is a verification mismatch; a failed restore or a missed RTO is a
    /// failure.
    pub fn verdict(&self) -> Result<()> {
        let validation = &self.validation;
        if validation.ok {
            return Ok(());
        }
        let differs = validation.errors.is_empty()
            && (validation
                .services
                .values()
                .any(|v| !v.differences.is_empty())
                || !validation.cross_store_mismatch().is_empty());
        let kind = if differs {
            crate::error::Kind::VerificationMismatch
        } else {
            crate::error::Kind::Failure
        };
        Err(Error::new(
            kind,
            "drill",
            format!(
                "the recovery drill failed:\n  {}",
                validation.problems().join("\n  ")
            ),
        )
        .hint(format!("details in {}", self.file.display())))
    }
}

pub async fn run(settings: &Settings, request: DrillRequest) -> Result<DrillOutcome> {
    if request.scale == 0 {
        return Err(Error::usage("--scale must be at least 1"));
    }
    let services = ServiceList::or_all(request.services.as_ref());
    let stores = backup::open_stores(&services, settings)?;
    let show = !request.json;

    let step = Progress::step(show, "checking the servers");
    // Held from the first synthetic write to the last; the drill's own
    // backup and restore share it (same process). Taken before the probe:
    // it also starts a server a killed run left stopped.
    let _servers = stores::lock_servers(&stores, "drill").await?;
    for store in &stores {
        store.probe().await?;
    }
    confirm_rewind(&stores, request.yes).await?;
    step.done("servers reachable");

    // Populate, back up, wipe: a failure on the way removes the synthetic
    // data made so far (see `abandon`) before it is reported.
    let prepared = async {
        let step = Progress::step(
            show,
            &format!("populating synthetic data (scale {})", request.scale),
        );
        futures::future::try_join_all(stores.iter().map(|s| s.drill_populate(request.scale)))
            .await?;
        let expected = inventories(&stores).await?;
        let populated_mb = peak_mb();
        step.done(&format!(
            "populated: {}",
            summary(&expected, |i| i.count.to_string())
        ));

        let writer = match request.cross_store {
            true => {
                let step = Progress::step(show, "starting the cross-store writer");
                let writer = CrossStoreWriter::start(&stores).await?;
                step.done("writing events into every store");
                Some(writer)
            }
            false => None,
        };
        // The drill's data is its own: the operator's freeze hooks (which
        // pause the platform's writers) never run for it.
        let mut backup_settings = settings.clone();
        backup_settings.freeze = match &writer {
            Some(writer) if request.consistent => writer.freeze(settings.freeze.max_freeze),
            _ => FreezeSettings {
                consistent: request.consistent,
                freeze_hook: None,
                thaw_hook: None,
                ..settings.freeze.clone()
            },
        };

        let step = Progress::step(show, "backing up (the normal backup path)");
        let started = Instant::now();
        let backup_request = BackupRequest {
            out: request.out.clone(),
            services: Some(ServiceList(services.clone())),
            timestamp: None,
            dry_run: false,
            upload: request.upload.clone(),
            no_local: false,
        };
        let target = backup_request.target(&settings.root)?;
        let outcome = backup::run(&backup_settings, backup_request, target).await;
        let written = match writer {
            Some(writer) => Some(writer.finish().await?),
            None => None,
        };
        let outcome = outcome?;
        let backup_seconds = started.elapsed().as_secs_f64();
        let backed_up_mb = peak_mb();
        let BackupOutcome::Done { dir, manifest, .. } = outcome else {
            unreachable!("not a dry run");
        };
        step.done(&format!(
            "backed up in {backup_seconds:.1} s to {}",
            dir.display()
        ));

        let step = Progress::step(show, "removing the synthetic data");
        futures::future::try_join_all(stores.iter().map(|s| s.drill_wipe())).await?;
        step.done("synthetic data removed");
        let memory = PeakMemory {
            populated_mb,
            backed_up_mb,
            ..PeakMemory::default()
        };
        Ok::<_, Error>((expected, backup_seconds, dir, manifest, written, memory))
    };
    let (expected, backup_seconds, dir, manifest, written, mut peak_memory) = match prepared.await {
        Ok(prepared) => prepared,
        Err(e) => return Err(abandon(&stores, request.keep, e).await),
    };

    let step = Progress::step(show, "restoring (the normal restore path)");
    // From the repository when the drill rehearses a remote recovery.
    let (path, from) = match &request.upload {
        None => (Some(dir.clone()), None),
        Some(url) => (
            None,
            Some(format!(
                "{}/{}",
                url.trim_end_matches('/'),
                manifest.timestamp
            )),
        ),
    };
    let restore = restore_everything(settings, path, from, &services, request.parallel, step).await;
    let mut errors = Vec::new();
    if let Some(e) = &restore.failure {
        errors.push(format!("restore failed: {e}"));
    }
    let restore_seconds = restore.seconds;
    peak_memory.restored_mb = peak_mb();
    if let Some(service) = request.sabotage {
        if let Some(store) = stores.iter().find(|s| s.service() == service) {
            tracing::warn!(%service, "fault injection: removing one drill record after the restore");
            store.drill_remove_one().await?;
        }
    }

    let step = Progress::step(show, "verifying the restored data");
    let restored = if restore.failure.is_none() {
        Some(inventories(&stores).await?)
    } else {
        None
    };
    let consistent = manifest
        .consistency
        .as_ref()
        .and_then(|c| c.freeze.as_ref())
        .is_some_and(|f| f.held() && f.hooks);
    let cross_store = match (written, &restore.failure) {
        (Some(written), None) => Some(CrossStoreReport::of(&stores, consistent, written).await?),
        _ => None,
    };
    let mut per_service = BTreeMap::new();
    for store in &stores {
        let service = store.service();
        let record = &manifest.artifacts[&service];
        let want = expected[&service].clone();
        let got = restored.as_ref().map(|r| r[&service].clone());
        let mut differences = Vec::new();
        match &got {
            Some(got) if got.count != want.count => differences.push(format!(
                "{} records expected, {} restored",
                want.count, got.count
            )),
            Some(got) if got.digest != want.digest => differences.push(format!(
                "content digest differs (expected {}, restored {})",
                want.digest, got.digest
            )),
            Some(_) => {}
            None => differences.push("not restored".into()),
        }
        per_service.insert(
            service,
            ServiceValidation {
                location: store.drill_location(),
                artifact: record.file.clone(),
                artifact_bytes: record.bytes,
                method: record.method.clone(),
                expected: want,
                restored: got,
                backup_seconds: record.backup_seconds(),
                restore_seconds: restore.stores.get(&service).map(|s| s.seconds),
                ok: differences.is_empty(),
                differences,
            },
        );
    }
    let restored_count = |service: Service| {
        per_service
            .get(&service)
            .and_then(|v| v.restored.as_ref())
            .map(|i| i.count)
    };
    let rto_ok = restore_seconds.is_some_and(|s| s <= RTO_OBJECTIVE_SECONDS);
    peak_memory.verified_mb = peak_mb();
    let validation = Validation {
        postgres_rows: restored_count(Service::Postgres),
        neo4j_nodes: restored_count(Service::Neo4j),
        opensearch_doc: restored_count(Service::Opensearch),
        ok: errors.is_empty()
            && rto_ok
            && per_service.values().all(|v| v.ok)
            && cross_store
                .as_ref()
                .is_none_or(|r| r.agree || !r.consistent),
        timestamp: manifest.timestamp.clone(),
        backup_dir: dir.clone(),
        scale: request.scale,
        services: per_service,
        backup_seconds,
        restore_seconds,
        restore_parallel: restore.plan.as_ref().is_some_and(|p| p.parallel),
        restore_plan: restore.plan.clone(),
        consistency: manifest.consistency.clone(),
        cross_store,
        rto_seconds: restore_seconds,
        rto_objective_seconds: RTO_OBJECTIVE_SECONDS,
        rto_ok,
        rpo_objective_hours: RPO_OBJECTIVE_HOURS,
        peak_memory,
        errors,
    };
    let file = write_validation(&dir, &validation)?;
    step.done(if validation.ok {
        "restored data equals the original"
    } else {
        "restored data DIFFERS"
    });

    if !request.keep {
        let step = Progress::step(show, "removing the synthetic data");
        futures::future::try_join_all(stores.iter().map(|s| s.drill_wipe())).await?;
        step.done("synthetic data removed (the backup stays)");
    }
    Ok(DrillOutcome { validation, file })
}

/// What a drill's restore gave: its time and each store's, or its failure.
pub(crate) struct DrillRestore {
    /// How the stores were scheduled (when the restore got that far).
    pub plan: Option<Plan>,
    /// The whole restore (the RTO), when it succeeded.
    pub seconds: Option<f64>,
    pub stores: BTreeMap<Service, restore::ServiceRestore>,
    pub failure: Option<Error>,
}

/// Restore every one of `services` from the backup at `path` (or the
/// repository's `from`) through the normal restore path, as `itbackup
/// restore --yes` would; `step` is told how it went.
pub(crate) async fn restore_everything(
    settings: &Settings,
    path: Option<PathBuf>,
    from: Option<String>,
    services: &[Service],
    parallel: Parallel,
    step: Progress,
) -> DrillRestore {
    let request = RestoreRequest {
        path,
        from,
        manifest: None,
        services: Some(ServiceList(services.to_vec())),
        dry_run: false,
        yes: true,
        parallel,
        selections: Default::default(),
        renames: Vec::new(),
        until_consistent: false,
    };
    match restore::run(settings, request).await {
        Ok(RestoreOutcome::Done {
            seconds,
            restored,
            plan,
            ..
        }) => {
            step.done(&format!("restored in {seconds:.1} s"));
            DrillRestore {
                plan: Some(plan),
                seconds: Some(seconds),
                stores: restored.into_iter().map(|r| (r.service, r)).collect(),
                failure: None,
            }
        }
        Ok(RestoreOutcome::Planned { .. }) => unreachable!("not a dry run"),
        Err(e) => {
            step.done("restore FAILED");
            DrillRestore {
                plan: None,
                seconds: None,
                stores: BTreeMap::new(),
                failure: Some(e),
            }
        }
    }
}

/// A drill that fails before its restore removes the synthetic data it
/// populated (unless `--keep`), so that no half-made drill data stays in the
/// stores; answers the failure.
async fn abandon(stores: &[Box<dyn Store>], keep: bool, failure: Error) -> Error {
    if !keep {
        for store in stores {
            if let Err(e) = store.drill_wipe().await {
                tracing::warn!(service = %store.service(), error = %e, "could not remove the drill's synthetic data");
            }
        }
    }
    failure
}

/// A full restore rewinds each store to the backup: harmless when the stores
/// hold only drill data, otherwise the operator must agree.
async fn confirm_rewind(stores: &[Box<dyn Store>], yes: bool) -> Result<()> {
    let mut others = Vec::new();
    for store in stores {
        if !store.holds_only_drill_data().await? {
            others.push(store.service().as_str());
        }
    }
    if others.is_empty() || yes {
        return Ok(());
    }
    let warning = format!(
        "{} hold data besides the drill's. The drill restores a full backup, which rewinds \
         everything in them to the moment of the backup, seconds later: anything written in \
         between is lost.",
        others.join(", ")
    );
    if !std::io::stdin().is_terminal() {
        return Err(Error::usage(format!(
            "{warning} Pass --yes to run the drill anyway."
        )));
    }
    restore::ask_yes(
        &format!("{warning}\nType 'yes' to run the drill: "),
        "drill",
    )
}

async fn inventories(stores: &[Box<dyn Store>]) -> Result<BTreeMap<Service, DrillInventory>> {
    let found = futures::future::try_join_all(stores.iter().map(|s| s.drill_inventory())).await?;
    Ok(stores.iter().map(|s| s.service()).zip(found).collect())
}

fn summary(
    inventories: &BTreeMap<Service, DrillInventory>,
    show: impl Fn(&DrillInventory) -> String,
) -> String {
    inventories
        .iter()
        .map(|(service, i)| format!("{service} {}", show(i)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn write_validation(dir: &std::path::Path, validation: &Validation) -> Result<PathBuf> {
    let step = "write synthetic-validation.json";
    let mut json = serde_json::to_vec_pretty(validation).expect("serialisable");
    json.push(b'\n');
    let write = || -> std::io::Result<()> {
        artifact::write_bytes(dir, VALIDATION_FILE, &json)?.commit()?;
        artifact::sync_dir(dir)
    };
    write().map_err(|e| io_error(None, step, dir.join(VALIDATION_FILE).display(), e))?;
    Ok(dir.join(VALIDATION_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Kind;
    use crate::stores::DrillInventory;

    fn outcome(errors: Vec<String>, differences: Vec<String>) -> DrillOutcome {
        let ok = errors.is_empty() && differences.is_empty();
        let inventory = DrillInventory {
            count: 1,
            digest: String::new(),
        };
        let mut services = BTreeMap::new();
        services.insert(
            Service::Postgres,
            ServiceValidation {
                location: String::new(),
                artifact: String::new(),
                artifact_bytes: 0,
                method: String::new(),
                expected: inventory.clone(),
                restored: Some(inventory),
                backup_seconds: 0.0,
                restore_seconds: None,
                ok: differences.is_empty(),
                differences,
            },
        );
        DrillOutcome {
            validation: Validation {
                postgres_rows: None,
                neo4j_nodes: None,
                opensearch_doc: None,
                ok,
                timestamp: String::new(),
                backup_dir: PathBuf::new(),
                scale: 1,
                services,
                backup_seconds: 0.0,
                restore_seconds: None,
                restore_parallel: true,
                restore_plan: None,
                rto_seconds: None,
                rto_objective_seconds: RTO_OBJECTIVE_SECONDS,
                rto_ok: true,
                rpo_objective_hours: RPO_OBJECTIVE_HOURS,
                peak_memory: PeakMemory::default(),
                consistency: None,
                cross_store: None,
                errors,
            },
            file: PathBuf::from("synthetic-validation.json"),
        }
    }

    /// One verdict for the command line and the scheduler (the scheduler
    /// called a drill whose data differed a plain failure).
    #[test]
    fn a_drill_whose_data_differs_is_a_verification_mismatch_and_a_failed_one_a_failure() {
        outcome(vec![], vec![]).verdict().unwrap();
        let differs = outcome(vec![], vec!["1 row missing".into()])
            .verdict()
            .unwrap_err();
        assert_eq!(differs.kind, Kind::VerificationMismatch);
        assert!(
            differs.message.contains("postgres: 1 row missing"),
            "{differs}"
        );
        let failed = outcome(vec!["restore failed".into()], vec![])
            .verdict()
            .unwrap_err();
        assert_eq!(failed.kind, Kind::Failure);
        assert!(failed.hint.unwrap().contains("synthetic-validation.json"));
    }
}
