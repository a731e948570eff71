//! `itbackup schedule`: a long-running loop of backup → verify → prune
//! (optionally a drill), on an interval or a cron expression.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::backup::{self, BackupOutcome, BackupRequest};
use crate::cli::ScheduleArgs;
use crate::config::Settings;
use crate::drill::sandbox::SandboxDrillRequest;
use crate::drill::{self, DrillRequest};
use crate::error::{Error, Result};
use crate::hooks::{self, RunContext};
use crate::metrics;
use crate::prune;
use crate::repository::Repository;
use crate::service::ServiceList;

/// When runs happen.
#[derive(Debug)]
pub enum Timing {
    Every(Duration),
    Cron(Box<croner::Cron>),
}

impl Timing {
    pub fn from_args(args: &ScheduleArgs) -> Result<Self> {
        match (&args.every, &args.cron) {
            (Some(every), None) => Ok(Timing::Every(*every)),
            (None, Some(expr)) => croner::Cron::from_str(expr)
                .map(|cron| Timing::Cron(Box::new(cron)))
                .map_err(|e| {
                    Error::usage(format!(
                        "--cron '{expr}' is not a cron expression: {e} (five fields: minute hour day-of-month month day-of-week, e.g. \"0 3 * * *\")"
                    ))
                }),
            _ => Err(Error::usage("give either --every or --cron")),
        }
    }

    /// The next run after `now`. With an interval: `last_start + every`, or
    /// for the first run the newest backup's time + every, never earlier than now.
    pub fn next(&self, now: jiff::Timestamp, previous: Option<jiff::Timestamp>) -> jiff::Timestamp {
        match self {
            Timing::Every(every) => {
                let every =
                    jiff::SignedDuration::try_from(*every).unwrap_or(jiff::SignedDuration::MAX);
                previous
                    .and_then(|p| p.checked_add(every).ok())
                    .map_or(now, |due| due.max(now))
            }
            Timing::Cron(cron) => {
                let zoned = now.to_zoned(jiff::tz::TimeZone::system());
                cron.find_next_occurrence(&zoned, false)
                    .map(|z| z.timestamp())
                    // An expression that never matches again (Feb 30th): never run.
                    .unwrap_or(jiff::Timestamp::MAX)
            }
        }
    }
}

/// 0: running; 1: stop after the current step; 2: abandon the current step.
type StopLevel = watch::Receiver<u8>;

/// Count SIGTERM and SIGINT: the first asks for a clean stop, the second abandons.
fn watch_signals() -> Result<StopLevel> {
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| Error::failure("schedule", format!("cannot watch SIGTERM: {e}")))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| Error::failure("schedule", format!("cannot watch SIGINT: {e}")))?;
    let (send, receive) = watch::channel(0u8);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            let level = (*send.borrow() + 1).min(2);
            if level == 1 {
                tracing::warn!("stop requested: finishing the current step, then stopping (signal again to abandon it)");
            } else {
                tracing::warn!("second stop request: abandoning the current step");
            }
            if send.send(level).is_err() {
                return;
            }
        }
    });
    Ok(receive)
}

async fn stop_reaches(stop: &mut StopLevel, level: u8) {
    while *stop.borrow_and_update() < level {
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Run `work` unless a second signal abandons it first (`None`).
async fn abandonable<T>(
    stop: &mut StopLevel,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        result = work => Some(result),
        _ = stop_reaches(stop, 2) => None,
    }
}

fn step_json<T>(result: &Result<T>, extra: impl FnOnce(&T) -> Value) -> Value {
    match result {
        Ok(value) => {
            let mut v = extra(value);
            v["ok"] = json!(true);
            v
        }
        Err(e) => json!({"ok": false, "error": e.to_string()}),
    }
}

/// The loop: wait for the next time, run, log; until a signal says stop.
pub async fn run(settings: &Settings, args: &ScheduleArgs, json: bool) -> Result<()> {
    let timing = Timing::from_args(args)?;
    let retention = prune::request(&args.retention, false, &settings.stores);
    let mut stop = watch_signals()?;
    if retention.policy.is_empty() {
        tracing::warn!("no --keep-* rule given: backups are never pruned");
    }
    let mut previous = newest_backup_time(settings);
    let mut number = 0u64;
    loop {
        let now = jiff::Timestamp::now();
        let next = timing.next(now, previous);
        tracing::info!(at = %next.to_zoned(jiff::tz::TimeZone::system()).strftime("%Y-%m-%d %H:%M:%S %Z"), "next scheduled run");
        let wait = next.duration_since(now).unsigned_abs();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop_reaches(&mut stop, 1) => break,
        }
        number += 1;
        previous = Some(jiff::Timestamp::now());
        let report = one_run(settings, args, &retention, number, &mut stop).await;
        if json {
            println!("{report}");
        }
        if *stop.borrow() > 0 {
            break;
        }
    }
    tracing::info!(runs = number, "schedule stopped");
    Ok(())
}

/// When the newest complete backup was taken: the first interval counts from it.
fn newest_backup_time(settings: &Settings) -> Option<jiff::Timestamp> {
    crate::catalog::scan(&settings.root)
        .ok()?
        .iter()
        .filter_map(|e| e.manifest.as_ref()?.started_at.parse().ok())
        .max()
}

/// One run: backup → verify → prune (→ drill, → sandbox drill of the backup). Each step is logged, measured
/// and, on failure, sent to the webhook; a failed backup skips the rest.
async fn one_run(
    settings: &Settings,
    args: &ScheduleArgs,
    retention: &prune::PruneRequest,
    number: u64,
    stop: &mut StopLevel,
) -> Value {
    let started = Instant::now();
    let started_at = jiff::Timestamp::now();
    tracing::info!(run = number, "scheduled run starting");
    let mut report = json!({"run": number, "started_at": started_at.to_string()});
    let abandoned = |mut report: Value, step: &str| {
        tracing::warn!(
            run = number,
            step,
            "run abandoned: nothing of it is marked complete"
        );
        report["ok"] = json!(false);
        report["abandoned"] = json!(step);
        report
    };

    let request = BackupRequest {
        out: None,
        services: args.services.clone(),
        // A default name: two runs within one second get distinct names.
        timestamp: None,
        upload: args.upload.clone(),
        ..Default::default()
    };
    let target = match request.target(&settings.root) {
        Ok(target) => target,
        Err(e) => {
            tracing::error!(run = number, error = %e, "backup failed; the rest of this run is skipped");
            report["backup"] = json!({"ok": false, "error": e.to_string()});
            report["ok"] = json!(false);
            report["seconds"] = json!(started.elapsed().as_secs_f64());
            return report;
        }
    };
    let ctx = RunContext::backup(settings, &request, &target, &args.hooks, &args.monitor);
    let Some(backup) = abandonable(
        stop,
        hooks::around(
            &ctx,
            backup::run(settings, request, target),
            metrics::record_backup_outcome,
        ),
    )
    .await
    else {
        return abandoned(report, "backup");
    };
    report["backup"] = step_json(&backup, |o| match o {
        BackupOutcome::Done { dir, manifest, .. } => {
            json!({"dir": dir, "timestamp": manifest.timestamp})
        }
        BackupOutcome::Planned { dir, .. } => json!({"dir": dir}),
    });
    let (dir, manifest) = match backup {
        Ok(BackupOutcome::Done { dir, manifest, .. }) => {
            tracing::info!(run = number, dir = %dir.display(), "backup complete");
            (dir, manifest)
        }
        Ok(BackupOutcome::Planned { .. }) => unreachable!("not a dry run"),
        Err(e) => {
            tracing::error!(run = number, error = %e, "backup failed; the rest of this run is skipped");
            report["ok"] = json!(false);
            report["seconds"] = json!(started.elapsed().as_secs_f64());
            return report;
        }
    };
    let mut ok = true;

    if *stop.borrow() == 0 {
        let ctx = step_context("verify", settings, args, Some(dir.clone()));
        let services: Vec<_> = manifest.services.keys().copied().collect();
        let work = async {
            let stores = backup::open_stores(&services, settings)?;
            crate::verify::verify_artifacts(
                &dir,
                &manifest,
                &stores,
                settings.identity.as_deref(),
                false,
            )
            .await
            .map(|v| v.checks)
        };
        let Some(verified) = abandonable(stop, hooks::around(&ctx, work, |_, _| {})).await else {
            return abandoned(report, "verify");
        };
        match &verified {
            Ok(_) => tracing::info!(run = number, "backup verified"),
            Err(e) => tracing::error!(run = number, error = %e, "verification failed"),
        }
        ok &= verified.is_ok();
        report["verify"] = step_json(&verified, |checks| json!({"artifacts": checks.len()}));
    }

    if *stop.borrow() == 0 && !retention.policy.is_empty() {
        let ctx = step_context("prune", settings, args, None);
        let work = async {
            let local = Repository::Local(settings.root.clone());
            let mut outcome = prune::run(&local, retention).await?;
            // The same policy for the repository the backups go to.
            if let Some(url) = &args.upload {
                let remote =
                    prune::run(&Repository::at(&settings.root, Some(url))?, retention).await?;
                outcome.removed += remote.removed;
                outcome.freed_bytes += remote.freed_bytes;
            }
            Ok(outcome)
        };
        let pruned = hooks::around(&ctx, work, |_, _| {}).await;
        match &pruned {
            Ok(p) => tracing::info!(run = number, removed = p.removed, "pruned"),
            Err(e) => tracing::error!(run = number, error = %e, "prune failed"),
        }
        ok &= pruned.is_ok();
        report["prune"] = step_json(
            &pruned,
            |p| json!({"removed": p.removed, "freed_bytes": p.freed_bytes}),
        );
    }

    if *stop.borrow() == 0 && args.drill {
        let ctx = step_context("drill", settings, args, None);
        let request = DrillRequest {
            out: None,
            services: Some(ServiceList(ServiceList::or_all(args.services.as_ref()))),
            scale: args.drill_scale,
            keep: false,
            yes: args.yes,
            parallel: Default::default(),
            sabotage: None,
            // No progress display in a service's log.
            json: true,
            upload: None,
            cross_store: false,
            consistent: false,
        };
        let work = async {
            let outcome = drill::run(settings, request).await?;
            metrics::update(args.monitor.metrics_file.as_deref(), |m| {
                metrics::record_drill(m, outcome.validation.ok, outcome.validation.rto_seconds)
            });
            outcome.verdict().map(|()| outcome)
        };
        let Some(drilled) = abandonable(stop, hooks::around(&ctx, work, |_, _| {})).await else {
            return abandoned(report, "drill");
        };
        match &drilled {
            Ok(d) => tracing::info!(
                run = number,
                rto_seconds = d.validation.rto_seconds,
                "drill passed"
            ),
            Err(e) => tracing::error!(run = number, error = %e, "drill failed"),
        }
        ok &= drilled.is_ok();
        report["drill"] = step_json(
            &drilled,
            |d| json!({"rto_seconds": d.validation.rto_seconds, "file": d.file}),
        );
    }

    let stopped = *stop.borrow() > 0;
    if let (false, Some(target_config)) = (stopped, &args.drill_target_config) {
        let ctx = step_context("drill", settings, args, Some(dir.clone()));
        let request = SandboxDrillRequest {
            backup: dir.to_string_lossy().into_owned(),
            from: None,
            target_config: target_config.clone(),
            services: args.services.clone(),
            keep: false,
            parallel: Default::default(),
            out: None,
            json: true,
            // The target config's `[neo4j] load` decides.
            neo4j_load: None,
        };
        let work = async {
            let outcome = drill::sandbox::run(settings, request).await?;
            metrics::update(args.monitor.metrics_file.as_deref(), |m| {
                metrics::record_drill(m, outcome.validation.ok, outcome.validation.rto_seconds)
            });
            outcome.verdict().map(|()| outcome)
        };
        let Some(drilled) = abandonable(stop, hooks::around(&ctx, work, |_, _| {})).await else {
            return abandoned(report, "sandbox drill");
        };
        match &drilled {
            Ok(d) => tracing::info!(
                run = number,
                rto_seconds = d.validation.rto_seconds,
                "sandbox drill passed"
            ),
            Err(e) => tracing::error!(run = number, error = %e, "sandbox drill failed"),
        }
        ok &= drilled.is_ok();
        report["sandbox_drill"] = step_json(
            &drilled,
            |d| json!({"rto_seconds": d.validation.rto_seconds, "file": d.file}),
        );
    }

    let seconds = started.elapsed().as_secs_f64();
    if *stop.borrow() > 0 {
        // The steps after the one a stop request found running were skipped.
        report["stopped"] = json!(true);
    }
    tracing::info!(run = number, ok, seconds, "scheduled run finished");
    report["ok"] = json!(ok);
    report["seconds"] = json!(seconds);
    report
}

/// Verify, prune and drill get metrics and the webhook, but not the backup's hooks.
fn step_context<'a>(
    operation: &'static str,
    settings: &Settings,
    args: &'a ScheduleArgs,
    dir: Option<PathBuf>,
) -> RunContext<'a> {
    RunContext {
        operation,
        hooks: None,
        monitor: &args.monitor,
        root: settings.root.clone(),
        dir,
        services: ServiceList::or_all(args.services.as_ref()),
        dry_run: false,
    }
}
