//! What the commands print: short human summaries, or JSON with `--json`.

use crate::human::size;
use std::path::Path;

use serde::Serialize;
use serde_json::json;

use crate::backup::BackupOutcome;
use crate::catalog::BackupEntry;
use crate::restore::RestoreOutcome;

fn print_json(value: &impl Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("serialisable")
    );
}

fn print_plan(
    dir: &Path,
    plan: &std::collections::BTreeMap<crate::service::Service, Vec<String>>,
    what: &str,
) {
    println!(
        "dry run: {what} {} — nothing will be changed",
        dir.display()
    );
    for (service, steps) in plan {
        println!("{service}:");
        for step in steps {
            println!("  {step}");
        }
    }
}

pub fn backup(outcome: &BackupOutcome, json: bool) {
    if json {
        return print_json(&json!({"ok": true, "result": outcome}));
    }
    match outcome {
        BackupOutcome::Planned { dir, plan, .. } => print_plan(dir, plan, "backup into"),
        BackupOutcome::Done {
            dir,
            manifest,
            uploaded,
            local,
        } => {
            if *local {
                println!("backup complete: {}", dir.display());
            }
            for (service, record) in &manifest.artifacts {
                let objects: u64 = record.counts.values().sum();
                println!(
                    "  {service:<10} {:<40} {:>10}  {} objects in {} groups  ({} {})",
                    record.file,
                    size(record.bytes),
                    objects,
                    record.counts.len(),
                    record.method,
                    record.server_version
                );
                // What the selection matched but did not take: never silent.
                for left in record
                    .details
                    .get("left_out")
                    .and_then(|l| l.as_array())
                    .into_iter()
                    .flatten()
                {
                    println!(
                        "  {:<10} left out: {} ({})",
                        "",
                        left["name"].as_str().unwrap_or("?"),
                        left["reason"].as_str().unwrap_or("?")
                    );
                }
            }
            if let Some(pushed) = uploaded {
                push(pushed, false);
            }
        }
    }
}

pub fn restore(outcome: &RestoreOutcome, json: bool) {
    if json {
        return print_json(&json!({"ok": true, "result": outcome}));
    }
    match outcome {
        RestoreOutcome::Planned { dir, plan, .. } => print_plan(dir, plan, "restore from"),
        RestoreOutcome::Done {
            dir,
            timestamp,
            restored,
            seconds,
            plan,
            ..
        } => {
            println!(
                "restore complete: backup {timestamp} from {} in {seconds:.1} s",
                dir.display()
            );
            println!("  stores {}: {}", plan.describe(), plan.reason);
            for r in restored {
                println!(
                    "  {:<10} {:<40} {:>6.1} s  {} counts match the manifest",
                    r.service.as_str(),
                    r.file,
                    r.seconds,
                    r.counts_checked
                );
            }
        }
    }
}

pub fn verify(outcome: &crate::verify::VerifyOutcome, json: bool) {
    if json {
        return print_json(&json!({
            "ok": true,
            "dir": outcome.dir,
            "artifacts": outcome.checks,
            "wal": outcome.wal,
        }));
    }
    println!("backup verified: {}", outcome.dir.display());
    for c in &outcome.checks {
        println!(
            "  {:<10} {:<40} {:>10}  checksum and full decode ok ({:.1} s)",
            c.service.as_str(),
            c.file,
            size(c.bytes),
            c.seconds
        );
    }
    if let Some(wal) = &outcome.wal {
        println!("  {}; every segment re-hashed", wal_line(wal));
    }
}

pub fn list(root: &Path, entries: &[BackupEntry], json: bool) {
    if json {
        return print_json(&json!({"root": root, "backups": entries}));
    }
    if entries.is_empty() {
        println!("no backups under {}", root.display());
        return;
    }
    print_backup_table(entries.iter().map(|e| BackupRow {
        name: &e.name,
        complete: e.complete,
        bytes: e.bytes,
        services: &e.services,
        problem: e.problem.as_deref(),
        wal: e.wal.as_ref(),
        kept_outside: &e.kept_outside,
        consistency: e.consistency.as_ref(),
    }));
}

/// `list --from URL`: the same table for a repository.
pub fn list_remote(url: &str, backups: &[BackupEntry], json: bool) {
    if json {
        return print_json(&json!({"url": url, "backups": backups}));
    }
    if backups.is_empty() {
        println!("no backups in {url}");
        return;
    }
    print_backup_table(backups.iter().map(|b| BackupRow {
        name: &b.name,
        complete: b.complete,
        bytes: b.bytes,
        services: &b.services,
        problem: b.problem.as_deref(),
        wal: b.wal.as_ref(),
        kept_outside: &b.kept_outside,
        consistency: b.consistency.as_ref(),
    }));
}

struct BackupRow<'a> {
    name: &'a str,
    complete: bool,
    bytes: u64,
    services: &'a [String],
    problem: Option<&'a str>,
    wal: Option<&'a crate::catalog::WalReach>,
    kept_outside: &'a [String],
    consistency: Option<&'a crate::consistency::Consistency>,
}

fn print_backup_table<'a>(rows: impl Iterator<Item = BackupRow<'a>>) {
    println!("{:<24} {:<10} {:>10}  SERVICES", "BACKUP", "STATE", "SIZE");
    for row in rows {
        let state = if row.complete {
            "complete"
        } else {
            "INCOMPLETE"
        };
        println!(
            "{:<24} {:<10} {:>10}  {}{}",
            row.name,
            state,
            size(row.bytes),
            row.services.join(","),
            row.problem.map(|p| format!("  ({p})")).unwrap_or_default()
        );
        if let Some(wal) = row.wal {
            println!("{:<24} {}", "", wal_line(wal));
        }
        for what in row.kept_outside {
            println!("{:<24} keeps {what}", "");
        }
        if let Some(consistency) = row.consistency {
            println!("{:<24} {}", "", consistency.describe());
        }
    }
}

/// How far a base backup reaches in the WAL archive, on one line.
fn wal_line(wal: &crate::catalog::WalReach) -> String {
    if let Some(problem) = &wal.problem {
        return format!("postgres WAL: BROKEN: {problem}");
    }
    match (&wal.last_segment, &wal.last_archived_at) {
        (Some(last), Some(at)) => format!(
            "postgres WAL: restorable up to {at} (through {last}, {} segments, timeline {})",
            wal.segments, wal.timeline
        ),
        _ => "postgres WAL: nothing archived after this base backup yet".into(),
    }
}

pub fn push(outcome: &crate::remote::PushOutcome, json: bool) {
    if json {
        return print_json(&json!({"ok": true, "result": outcome}));
    }
    println!(
        "backup uploaded: {} ({} objects, {} in {:.1} s, each checked after upload)",
        outcome.url,
        outcome.objects,
        size(outcome.bytes),
        outcome.seconds
    );
    if outcome.reused > 0 {
        println!(
            "  {} artifact(s) were in the repository already, intact: {} sent this time",
            outcome.reused,
            size(outcome.uploaded_bytes)
        );
    }
}

pub fn pull(outcome: &crate::remote::PullOutcome, json: bool) {
    if json {
        return print_json(&json!({"ok": true, "result": outcome}));
    }
    println!(
        "backup downloaded: {} ({} in {:.1} s, every object checked against the manifest)",
        outcome.dir.display(),
        size(outcome.bytes),
        outcome.seconds
    );
}

pub fn keygen(identity: &Path, recipient: &str, json: bool) {
    if json {
        return print_json(&json!({"identity": identity, "recipient": recipient}));
    }
    println!(
        "identity written to {} (keep it off the backup host's disks)",
        identity.display()
    );
    println!("recipient (public, for --encrypt-to / IT_AGE_RECIPIENTS):");
    println!("{recipient}");
}

pub fn drill(outcome: &crate::drill::DrillOutcome, json: bool) {
    let v = &outcome.validation;
    if json {
        return print_json(v);
    }
    println!(
        "recovery drill {} — backup {}",
        if v.ok { "PASSED" } else { "FAILED" },
        v.backup_dir.display()
    );
    for (service, s) in &v.services {
        let restored = s
            .restored
            .as_ref()
            .map(|r| r.count.to_string())
            .unwrap_or_else(|| "-".into());
        println!(
            "  {service:<10} {} ({}, {}): {} records backed up in {:.1} s, {} restored in {}, {}",
            s.artifact,
            s.method,
            size(s.artifact_bytes),
            s.expected.count,
            s.backup_seconds,
            restored,
            s.restore_seconds
                .map(|x| format!("{x:.1} s"))
                .unwrap_or_else(|| "-".into()),
            if s.ok {
                "content verified".to_string()
            } else {
                s.differences.join("; ")
            }
        );
    }
    match v.rto_seconds {
        Some(rto) => println!(
            "  RTO measured: {rto:.1} s for the whole restore ({}), objective {:.0} min: {}",
            match (&v.restore_plan, v.restore_parallel) {
                (Some(plan), true) => format!("stores at once: {}", plan.reason),
                (Some(plan), false) => format!("one store after the other: {}", plan.reason),
                (None, _) => "not scheduled".to_string(),
            },
            v.rto_objective_seconds / 60.0,
            if v.rto_ok { "met" } else { "MISSED" }
        ),
        None => println!("  RTO: not measured, the restore failed"),
    }
    if let Some(consistency) = &v.consistency {
        println!("  {}", consistency.describe());
    }
    if let Some(cross) = &v.cross_store {
        println!(
            "  cross-store: {} events written, {} back in every store, {} in some{}: {}",
            cross.written,
            cross.in_every_store,
            cross.in_any_store,
            if cross.consistent {
                " (consistent backup)"
            } else {
                ""
            },
            if cross.agree {
                "the stores agree".to_string()
            } else {
                cross.differences().join("; ")
            }
        );
    }
    for error in &v.errors {
        println!("  error: {error}");
    }
    println!("  details: {}", outcome.file.display());
}

pub fn sandbox_drill(outcome: &crate::drill::sandbox::SandboxOutcome, json: bool) {
    let v = &outcome.validation;
    if json {
        return print_json(v);
    }
    println!(
        "sandbox drill {} — backup {} restored into the sandbox",
        if v.ok { "PASSED" } else { "FAILED" },
        v.backup.display()
    );
    for (service, s) in &v.services {
        let seconds = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.1} s"));
        println!(
            "  {service:<10} {} ({}) into {}: restored in {}, {} counts and {} content digests equal (checked in {}){}",
            s.artifact,
            s.method,
            s.sandbox,
            seconds(s.restore_seconds),
            s.counts_checked,
            s.digests_checked,
            seconds(s.content_check_seconds),
            if s.ok {
                String::new()
            } else {
                format!("; {}", s.differences.join("; "))
            }
        );
    }
    match v.rto_seconds {
        Some(rto) => println!(
            "  RTO measured: {rto:.1} s, objective {:.0} min: {}",
            v.rto_objective_seconds / 60.0,
            if v.rto_ok { "met" } else { "MISSED" }
        ),
        None => println!("  RTO: not measured, the restore failed"),
    }
    println!(
        "  sandbox {}",
        if v.cleaned {
            "emptied (its mark stays)"
        } else {
            "left as restored (--keep or a failed clean)"
        }
    );
    for error in &v.errors {
        println!("  error: {error}");
    }
    println!("  details: {}", outcome.file.display());
}

pub fn prune(outcome: &crate::prune::PruneOutcome, json: bool) {
    use crate::prune::Action;
    if json {
        return print_json(outcome);
    }
    let verb = |action: Action| match (action, outcome.dry_run) {
        (Action::Keep, _) => "keep",
        (Action::Remove, true) => "would remove",
        (Action::Remove, false) => "removed",
        (Action::Leave, _) => "LEFT ALONE",
    };
    println!(
        "{}prune {}: {} entries",
        if outcome.dry_run { "dry run: " } else { "" },
        outcome.location,
        outcome.items.len()
    );
    for p in &outcome.items {
        println!(
            "  {:<13} {:<24} {:>10}  {}",
            verb(p.action),
            p.item.name,
            size(p.item.bytes),
            p.reasons.join(", ")
        );
    }
    if let Some(wal) = &outcome.wal {
        match &wal.note {
            Some(note) => println!("  WAL archive {}: {note}", wal.location),
            None => println!(
                "  WAL archive {}: {} {} files ({}) older than {}, the first segment of the oldest kept base backup; {} kept",
                wal.location,
                if outcome.dry_run { "would remove" } else { "removed" },
                wal.removed_files,
                size(wal.freed_bytes),
                wal.keep_from.as_deref().unwrap_or("?"),
                wal.kept_files
            ),
        }
    }
    if !outcome.dry_run {
        println!(
            "  {} removed, {} freed",
            outcome.removed,
            size(outcome.freed_bytes)
        );
    }
}

pub fn status(report: &crate::status::StatusReport, json: bool) {
    if json {
        return print_json(report);
    }
    println!(
        "status {}: {} (RPO {})",
        report.root.display(),
        if report.ok { "OK" } else { "ALARM" },
        crate::human::age(std::time::Duration::from_secs(report.rpo_seconds))
    );
    for s in &report.services {
        let newest = match &s.newest {
            Some(n) => format!(
                "newest {} taken {} ago{}{}",
                n.name,
                crate::human::age(std::time::Duration::from_secs_f64(
                    n.age_seconds.clamp(0.0, 1e12)
                )),
                if s.rpo_ok { "" } else { " (RPO BREACHED)" },
                n.kept_outside
                    .as_ref()
                    .map(|what| format!(", in {what}"))
                    .unwrap_or_default()
            ),
            None => "NO complete backup".into(),
        };
        let verified = match &s.verification {
            Some(v) if v.ok => format!("{} ok", v.checked),
            Some(v) => format!("{} FAILED", v.checked),
            None => "-".into(),
        };
        let server = match &s.server {
            None => "not probed".to_string(),
            Some(h) if h.up => format!("up ({})", h.version.as_deref().unwrap_or("?")),
            Some(_) => "DOWN".into(),
        };
        println!(
            "  {:<10} {newest}; verification: {verified}; server: {server}",
            s.service.as_str()
        );
    }
    match &report.last_drill {
        Some(d) => println!(
            "  last drill {}: {}, RTO {} (objective {:.0} min)",
            d.timestamp,
            if d.ok { "passed" } else { "FAILED" },
            d.rto_seconds
                .map(|s| format!("{s:.1} s"))
                .unwrap_or_else(|| "-".into()),
            d.rto_objective_seconds / 60.0
        ),
        None => println!("  last drill: none found"),
    }
    if let Some(disk) = &report.disk {
        println!(
            "  disk: {} free{}",
            size(disk.free_bytes),
            disk.newest_backup_bytes
                .map(|b| format!(", the newest complete backup takes {}", size(b)))
                .unwrap_or_default()
        );
    }
    if let Some(c) = &report.consistency {
        println!("  newest backup {}: {}", c.backup, c.window.describe());
    }
    if let Some(wal) = &report.wal {
        println!(
            "  WAL archive {}: newest {} archived {} ago ({}; objective {})",
            wal.location,
            wal.newest_segment,
            crate::human::age(std::time::Duration::from_secs_f64(
                wal.age_seconds.clamp(0.0, 1e12)
            )),
            if wal.rpo_ok { "ok" } else { "RPO BREACHED" },
            crate::human::age(std::time::Duration::from_secs(wal.rpo_seconds))
        );
    }
    for w in &report.warnings {
        println!("  warning: {w}");
    }
    for a in &report.alarms {
        println!("  ALARM: {a}");
    }
}
