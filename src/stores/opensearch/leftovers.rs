//! What killed runs leave in the cluster: the temporary snapshot repositories
//! (`itbackup-<ts>-<pid>` of a backup, `itbackup-restore-<pid>` of a
//! restore), each registered and holding a full copy under `path.repo`.
//! A run that ends normally removes its own; a run killed with SIGKILL
//! cannot. Every OpenSearch backup and restore first removes those of dead
//! runs, and only those: a repository is registered with its holder (host,
//! pid, start time) in its settings, and it is removed when that holder is a
//! process no longer alive on this host, or — when the holder cannot be
//! checked (another host, or a repository of an itbackup that did not record
//! it) — when it is older than [`STALE_AFTER`]. A live run's repository is
//! never touched.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::{OpenSearch, SVC};
use crate::target::Target;

/// Past this age a repository whose holder cannot be checked is a leftover:
/// no backup or restore runs that long.
const STALE_AFTER: Duration = Duration::from_secs(24 * 3600);

/// The settings that name the holder of a temporary repository.
pub(super) fn holder_settings() -> Map<String, Value> {
    let mut settings = Map::new();
    settings.insert("itbackup_host".into(), json!(crate::status::hostname()));
    settings.insert("itbackup_pid".into(), json!(std::process::id().to_string()));
    settings.insert(
        "itbackup_started".into(),
        json!(jiff::Timestamp::now().to_string()),
    );
    settings
}

/// Whether a process `pid` is alive on this host. A pid reused by another
/// program keeps a dead run's repository until that program ends: removing
/// too little is the safe side.
fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Why a temporary repository is a dead run's leftover, or `None` to leave it.
/// `seen`: when its files last changed, if they can be read from here.
fn dead_because(
    name: &str,
    settings: &Value,
    seen: Option<jiff::Timestamp>,
    now: jiff::Timestamp,
) -> Option<String> {
    let host = settings["itbackup_host"].as_str();
    let pid = settings["itbackup_pid"]
        .as_str()
        .and_then(|p| p.parse::<u32>().ok());
    if let (Some(host), Some(pid)) = (host, pid) {
        if host == crate::status::hostname() && !host.is_empty() {
            return (pid != std::process::id() && !alive(pid))
                .then(|| format!("its run (pid {pid} on this host) is gone"));
        }
    }
    // The holder cannot be checked: only its age tells.
    let started = settings["itbackup_started"]
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .or_else(|| started_from_name(name))
        .or(seen);
    let age = now.duration_since(started?);
    (age > jiff::SignedDuration::try_from(STALE_AFTER).ok()?).then(|| {
        format!(
            "it is {} h old and its holder cannot be checked from here",
            age.as_secs() / 3600
        )
    })
}

/// `itbackup-20250101_030000-1234` (a backup's, before holders were
/// recorded): the timestamp in its name, in UTC as backups name themselves.
fn started_from_name(name: &str) -> Option<jiff::Timestamp> {
    let rest = name.strip_prefix("itbackup-")?;
    let stamp = rest.get(..15)?;
    jiff::civil::DateTime::strptime("%Y%m%d_%H%M%S", stamp)
        .ok()?
        .to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp())
}

impl OpenSearch {
    /// Remove the temporary repositories (registration and files) of dead
    /// runs. Never fails the run: what cannot be removed now is logged and
    /// tried again by the next one.
    pub(super) async fn remove_dead_runs_repositories(&self) {
        let step = "remove leftovers of killed runs";
        let all = match self.http.get_listing("_snapshot/_all", step).await {
            Ok(all) => all,
            Err(e) => {
                tracing::warn!(service = %SVC, "{e}");
                return;
            }
        };
        let repo_root = self.path_repo().await.ok().flatten();
        let now = jiff::Timestamp::now();
        for (name, repo) in all.as_object().into_iter().flatten() {
            if !name.starts_with("itbackup-") || repo["type"] != "fs" {
                continue;
            }
            let settings = &repo["settings"];
            let seen = settings["location"]
                .as_str()
                .and_then(|l| std::fs::metadata(l).ok())
                .and_then(|m| m.modified().ok())
                .and_then(|m| jiff::Timestamp::try_from(m).ok());
            let Some(reason) = dead_because(name, settings, seen, now) else {
                tracing::debug!(service = %SVC, repository = %name, "temporary repository of a live or recent run: left alone");
                continue;
            };
            // Its files go only when they are where itbackup puts them.
            let location = settings["location"].as_str().map(Path::new);
            let owned = location.filter(|l| {
                l.file_name().is_some_and(|f| f == name.as_str())
                    && repo_root.as_deref().is_some_and(|r| l.parent() == Some(r))
            });
            // A snapshot the killed run started may still be running: deleting
            // it aborts it, and a repository in use cannot be unregistered.
            if settings["readonly"] != "true" {
                let _ = self
                    .http
                    .delete_if_present(&format!("_snapshot/{name}/snapshot"), step)
                    .await;
            }
            if let Err(e) = self
                .http
                .delete_if_present(&format!("_snapshot/{name}"), step)
                .await
            {
                tracing::warn!(service = %SVC, repository = %name, "left for the next run: {e}");
                continue;
            }
            match owned {
                Some(location) => self.remove_repository(name, location).await,
                None => {
                    tracing::warn!(service = %SVC, repository = %name, location = ?location, "unregistered; its files are not directly under path.repo, so they were left")
                }
            }
            tracing::info!(service = %SVC, repository = %name, "removed the temporary repository of a killed run: {reason}");
        }
        if let (Target::Local, Some(root)) = (&self.target, &repo_root) {
            self.remove_unregistered_copies(root, &all, now);
        }
    }

    /// Copies under `path.repo` named like ours that no repository uses
    /// (a run killed between unregistering and deleting, or while a restore
    /// unpacked): removed at once when the pid their name ends with is not
    /// alive on this host (itbackup names them, from this host, since it
    /// reaches `path.repo` here), else once untouched for [`STALE_AFTER`].
    fn remove_unregistered_copies(&self, root: &Path, registered: &Value, now: jiff::Timestamp) {
        let Ok(entries) = std::fs::read_dir(root) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("itbackup-") || registered.get(&name).is_some() {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            let untouched = meta
                .modified()
                .ok()
                .and_then(|m| jiff::Timestamp::try_from(m).ok())
                .map(|m| now.duration_since(m));
            let stale = jiff::SignedDuration::try_from(STALE_AFTER).ok();
            let run_gone = name
                .rsplit('-')
                .next()
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| pid != std::process::id() && !alive(pid));
            if meta.is_dir() && (run_gone || untouched.zip(stale).is_some_and(|(u, s)| u > s)) {
                match std::fs::remove_dir_all(entry.path()) {
                    Ok(()) => {
                        tracing::info!(service = %SVC, path = %entry.path().display(), "removed an unregistered copy of a killed run")
                    }
                    Err(e) => {
                        tracing::warn!(service = %SVC, path = %entry.path().display(), "could not remove an unregistered copy of a killed run: {e}")
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_decide_and_age_decides_only_without_one() {
        let now = jiff::Timestamp::now();
        let here = crate::status::hostname();
        let ours = json!({"itbackup_host": here, "itbackup_pid": std::process::id().to_string()});
        assert_eq!(dead_because("itbackup-x-1", &ours, None, now), None);
        // A pid beyond pid_max is never alive.
        let dead = json!({"itbackup_host": here, "itbackup_pid": "4194305"});
        assert!(dead_because("itbackup-x-4194305", &dead, None, now).is_some());
        let elsewhere = json!({"itbackup_host": "another-host", "itbackup_pid": "4194305",
            "itbackup_started": now.to_string()});
        assert_eq!(dead_because("itbackup-x-1", &elsewhere, None, now), None);
        let old = json!({"itbackup_host": "another-host", "itbackup_pid": "1",
            "itbackup_started": (now - jiff::SignedDuration::from_hours(25)).to_string()});
        assert!(dead_because("itbackup-x-1", &old, None, now).is_some());
        // Older itbackups recorded no holder: the name's timestamp decides.
        assert!(dead_because("itbackup-20200101_000000-12", &json!({}), None, now).is_some());
        assert_eq!(
            dead_because("itbackup-restore-12", &json!({}), None, now),
            None
        );
        let long_ago = now - jiff::SignedDuration::from_hours(48);
        assert!(dead_because("itbackup-restore-12", &json!({}), Some(long_ago), now).is_some());
    }
}
