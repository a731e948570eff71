//! Prometheus metrics in the text exposition format, written as a file for
//! node_exporter's textfile collector.
//!
//! Several commands may share one file (backup, restore, drill and status from
//! cron, say): each run reads the file, replaces only its own series and
//! writes it back atomically (temporary file, fsync, rename), so the collector
//! never sees half a file and a failed backup keeps the previous success time.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use crate::manifest::Manifest;

/// The metrics file's mode: owner read-write, everyone read. The textfile
/// collector runs as another user and must read it; it holds no secret.
pub const METRICS_FILE_MODE: u32 = 0o644;

/// Every metric itbackup writes (all gauges), with its help text. Series of
/// other names found in an existing file are dropped.
pub const FAMILIES: &[(&str, &str)] = &[
    (
        "itbackup_last_run_timestamp_seconds",
        "When the last run of the operation ended (Unix time).",
    ),
    (
        "itbackup_last_run_success",
        "1 when the last run of the operation succeeded, 0 when it failed.",
    ),
    (
        "itbackup_last_run_duration_seconds",
        "Duration of the last run of the operation.",
    ),
    (
        "itbackup_last_success_timestamp_seconds",
        "When the operation last succeeded (Unix time).",
    ),
    (
        "itbackup_backup_last_success_timestamp_seconds",
        "When the store's newest backup written by this host finished (Unix time).",
    ),
    (
        "itbackup_backup_duration_seconds",
        "How long the store's last successful backup took.",
    ),
    (
        "itbackup_backup_bytes",
        "Size of the store's artifact in the last successful backup.",
    ),
    (
        "itbackup_backup_objects",
        "Objects (rows, documents, nodes and relationships) in the store's last successful backup.",
    ),
    (
        "itbackup_restore_duration_seconds",
        "How long the store's last successful restore took.",
    ),
    (
        "itbackup_restore_objects",
        "Objects the store's last successful restore brought back.",
    ),
    (
        "itbackup_drill_rto_seconds",
        "Restore time measured by the last recovery drill.",
    ),
    (
        "itbackup_drill_rto_objective_seconds",
        "The recovery time objective.",
    ),
    (
        "itbackup_drill_success",
        "1 when the last recovery drill passed, 0 when it failed.",
    ),
    (
        "itbackup_drill_timestamp_seconds",
        "When the last recovery drill ended (Unix time).",
    ),
    (
        "itbackup_status_ok",
        "1 when the last status check raised no alarm.",
    ),
    (
        "itbackup_rpo_seconds",
        "The recovery point objective status checks against.",
    ),
    (
        "itbackup_backup_root_free_bytes",
        "Free space on the backup root's disk at the last status check.",
    ),
    (
        "itbackup_newest_backup_age_seconds",
        "Age of the store's newest complete backup at the last status check.",
    ),
    (
        "itbackup_newest_backup_verified",
        "1 when the store's newest backup passed the last status check's verification.",
    ),
    (
        "itbackup_server_up",
        "1 when the store's server answered the last status check's probe.",
    ),
];

/// The series of one metrics file: name → rendered labels → value.
#[derive(Debug, Default)]
pub struct Metrics {
    series: BTreeMap<String, BTreeMap<String, f64>>,
}

impl Metrics {
    /// The series of the existing file at `path` (none when there is no file).
    pub fn load(path: &Path) -> Self {
        let mut metrics = Metrics::default();
        let Ok(text) = fs::read_to_string(path) else {
            return metrics;
        };
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.trim().rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if FAMILIES.iter().any(|(known, _)| *known == name) {
                metrics
                    .series
                    .entry(name.to_string())
                    .or_default()
                    .insert(labels.to_string(), value);
            }
        }
        metrics
    }

    /// Set one series. `name` must be one of [`FAMILIES`].
    pub fn set(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        debug_assert!(FAMILIES.iter().any(|(known, _)| *known == name), "{name}");
        let labels = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
            .collect::<Vec<_>>()
            .join(",");
        self.series
            .entry(name.to_string())
            .or_default()
            .insert(labels, value);
    }

    pub fn get(&self, name: &str, labels: &str) -> Option<f64> {
        self.series.get(name)?.get(labels).copied()
    }

    /// The text exposition format: HELP and TYPE, then the samples, per family.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, help) in FAMILIES {
            let Some(samples) = self.series.get(*name).filter(|s| !s.is_empty()) else {
                continue;
            };
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
            for (labels, value) in samples {
                let value = if value.is_finite() {
                    value.to_string()
                } else {
                    "NaN".to_string()
                };
                if labels.is_empty() {
                    out.push_str(&format!("{name} {value}\n"));
                } else {
                    out.push_str(&format!("{name}{{{labels}}} {value}\n"));
                }
            }
        }
        out
    }

    /// Replace the file at `path` in one step (temporary file beside it,
    /// fsync, rename), mode [`METRICS_FILE_MODE`].
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "metrics".into());
        // The textfile collector reads only *.prom files: a dot-file with
        // another suffix is never read half-written.
        let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let result = (|| {
            let mut file = fs::File::create(&temp)?;
            // Readable by node_exporter, which runs as its own user, whatever
            // our umask: the file holds numbers and service names, no secret.
            // (Everything else itbackup writes is 0600.)
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(fs::Permissions::from_mode(METRICS_FILE_MODE))?;
            file.write_all(self.render().as_bytes())?;
            file.sync_all()?;
            drop(file);
            fs::rename(&temp, path)?;
            crate::artifact::sync_dir(dir)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result
    }
}

/// Label values are quoted; backslash, quote and newline are escaped.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn unix_seconds(rfc3339: &str) -> Option<f64> {
    rfc3339
        .parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond() as f64 / 1000.0)
}

fn now_seconds() -> f64 {
    jiff::Timestamp::now().as_millisecond() as f64 / 1000.0
}

/// Load `path`, let `update` change it, write it back. A metrics file that
/// cannot be written does not fail the run it describes: it is logged, and
/// the stale success timestamp is what monitoring alarms on.
pub fn update(path: Option<&Path>, update: impl FnOnce(&mut Metrics)) {
    let Some(path) = path else { return };
    let mut metrics = Metrics::load(path);
    update(&mut metrics);
    if let Err(e) = metrics.write(path) {
        tracing::error!(file = %path.display(), error = %e, "cannot write the metrics file");
    }
}

/// The outcome of one run of `operation` (backup, restore, drill, status, verify, prune).
pub fn record_run(metrics: &mut Metrics, operation: &str, seconds: f64, ok: bool) {
    let labels = [("operation", operation)];
    let now = now_seconds();
    metrics.set("itbackup_last_run_timestamp_seconds", &labels, now);
    metrics.set(
        "itbackup_last_run_success",
        &labels,
        if ok { 1.0 } else { 0.0 },
    );
    metrics.set("itbackup_last_run_duration_seconds", &labels, seconds);
    if ok {
        metrics.set("itbackup_last_success_timestamp_seconds", &labels, now);
    }
}

/// Per store: when, how long, how big, how many objects.
pub fn record_backup(metrics: &mut Metrics, manifest: &Manifest) {
    for (service, record) in &manifest.artifacts {
        let labels = [("service", service.as_str())];
        if let Some(finished) = unix_seconds(&record.finished_at) {
            metrics.set(
                "itbackup_backup_last_success_timestamp_seconds",
                &labels,
                finished,
            );
        }
        if let (Some(start), Some(end)) = (
            unix_seconds(&record.started_at),
            unix_seconds(&record.finished_at),
        ) {
            metrics.set("itbackup_backup_duration_seconds", &labels, end - start);
        }
        metrics.set("itbackup_backup_bytes", &labels, record.bytes as f64);
        let objects: u64 = record.counts.values().sum();
        metrics.set("itbackup_backup_objects", &labels, objects as f64);
    }
}

/// Per restored store: how long, and how many objects (from the manifest's counts).
pub fn record_restore(metrics: &mut Metrics, outcome: &crate::restore::RestoreOutcome) {
    let crate::restore::RestoreOutcome::Done { dir, restored, .. } = outcome else {
        return;
    };
    let manifest = Manifest::read_dir(dir).ok();
    for r in restored {
        let labels = [("service", r.service.as_str())];
        metrics.set("itbackup_restore_duration_seconds", &labels, r.seconds);
        if let Some(record) = manifest.as_ref().and_then(|m| m.artifacts.get(&r.service)) {
            let objects: u64 = record.counts.values().sum();
            metrics.set("itbackup_restore_objects", &labels, objects as f64);
        }
    }
}

/// A drill's verdict and measured RTO (synthetic or sandbox).
pub fn record_drill(metrics: &mut Metrics, ok: bool, rto_seconds: Option<f64>) {
    if let Some(rto) = rto_seconds {
        metrics.set("itbackup_drill_rto_seconds", &[], rto);
    }
    metrics.set(
        "itbackup_drill_rto_objective_seconds",
        &[],
        crate::drill::RTO_OBJECTIVE_SECONDS,
    );
    metrics.set("itbackup_drill_success", &[], if ok { 1.0 } else { 0.0 });
    metrics.set("itbackup_drill_timestamp_seconds", &[], now_seconds());
}

/// [`record_backup`] for a finished backup; a dry run records nothing.
pub fn record_backup_outcome(metrics: &mut Metrics, outcome: &crate::backup::BackupOutcome) {
    if let crate::backup::BackupOutcome::Done { manifest, .. } = outcome {
        record_backup(metrics, manifest);
    }
}
