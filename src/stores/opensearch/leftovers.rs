//! What killed runs leave in the cluster: the temporary snapshot repositories
//! (`itbackup-<ts>-<pid>` of a backup, `itbackup-restore-<pid>` of a
//! restore), each registered and holding a full copy under `path.repo`, and
//! the empty probe indices of a logical restore's definition check
//! (`itbackup-check-<host tag>-<pid>-<n>`).
//! A run that ends normally removes its own; a run killed with SIGKILL
//! cannot. Every OpenSearch backup and restore first removes those of dead
//! runs, and only those: a repository is registered with its holder (host,
//! pid, start time) in its settings, a probe names its holder's host and pid,
//! and either is removed when that holder is a process no longer alive on
//! this host, or — when the holder cannot be checked (another host, or a
//! leftover of an itbackup that did not record it) — when it is older than
//! its kind's [`STALE_AFTER`] or [`PROBE_STALE_AFTER`]. A live run's
//! leftovers are never touched.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::{OpenSearch, SVC};
use crate::target::Target;

/// Past this age a repository whose holder cannot be checked is a leftover:
/// no backup or restore runs that long.
const STALE_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Past this age a probe index whose holder cannot be checked is a leftover:
/// a probe lives for one create and one delete.
const PROBE_STALE_AFTER: Duration = Duration::from_secs(3600);

/// The prefix of the definition check's probe indices.
const PROBE_PREFIX: &str = "itbackup-check-";

/// This host in an index name (which must be lower-case and short): the
/// first 8 hex digits of its name's SHA-256.
fn host_tag() -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(crate::status::hostname().as_bytes());
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// The name of this run's `number`th probe index.
pub(super) fn probe_index(number: usize) -> String {
    format!(
        "{PROBE_PREFIX}{}-{}-{number}",
        host_tag(),
        std::process::id()
    )
}

/// Who left a temporary object, as far as it tells.
#[derive(Debug, Default)]
struct Holder {
    /// Whether the holder ran on this host; `None`: cannot tell.
    here: Option<bool>,
    pid: Option<u32>,
    started: Option<jiff::Timestamp>,
}

/// The holder a probe's name and creation time tell. Probes of itbackups
/// that named no host (`itbackup-check-<pid>-<n>`) are judged by age.
fn probe_holder(name: &str, created_ms: Option<i64>) -> Holder {
    let started = created_ms.and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok());
    let parts: Vec<&str> = name
        .strip_prefix(PROBE_PREFIX)
        .unwrap_or_default()
        .split('-')
        .collect();
    match parts[..] {
        [tag, pid, _] if tag.len() == 8 => Holder {
            here: Some(tag == host_tag()),
            pid: pid.parse().ok(),
            started,
        },
        _ => Holder {
            started,
            ..Holder::default()
        },
    }
}

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

/// The holder a temporary repository's settings tell. `seen`: when its
/// files last changed, if they can be read from here.
fn repository_holder(name: &str, settings: &Value, seen: Option<jiff::Timestamp>) -> Holder {
    let host = settings["itbackup_host"]
        .as_str()
        .filter(|h| !h.is_empty() && !crate::status::hostname().is_empty());
    Holder {
        here: host.map(|h| h == crate::status::hostname()),
        pid: settings["itbackup_pid"]
            .as_str()
            .and_then(|p| p.parse::<u32>().ok()),
        started: settings["itbackup_started"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .or_else(|| started_from_name(name))
            .or(seen),
    }
}

/// Why what `holder` left is a dead run's leftover, or `None` to leave it.
fn dead_because(holder: &Holder, stale_after: Duration, now: jiff::Timestamp) -> Option<String> {
    if let (Some(true), Some(pid)) = (holder.here, holder.pid) {
        return (pid != std::process::id() && !alive(pid))
            .then(|| format!("its run (pid {pid} on this host) is gone"));
    }
    // The holder cannot be checked: only its age tells.
    let age = now.duration_since(holder.started?);
    (age > jiff::SignedDuration::try_from(stale_after).ok()?).then(|| {
        format!(
            "it is {} min old and its holder cannot be checked from here",
            age.as_secs() / 60
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
    /// Remove what dead runs left: their probe indices and their temporary
    /// repositories (registration and files). Never fails the run: what
    /// cannot be removed now is logged and tried again by the next one.
    pub(super) async fn remove_dead_runs_leftovers(&self) {
        self.remove_dead_runs_probes().await;
        self.remove_dead_runs_repositories().await;
    }

    /// The probe indices of definition checks whose runs were killed.
    async fn remove_dead_runs_probes(&self) {
        let step = "remove leftovers of killed runs";
        let path = format!(
            "_cat/indices/{PROBE_PREFIX}*?format=json&h=index,creation.date&expand_wildcards=all"
        );
        let probes = match self.http.get_listing(&path, step).await {
            Ok(probes) => probes,
            Err(e) => {
                tracing::warn!(service = %SVC, "{e}");
                return;
            }
        };
        let now = jiff::Timestamp::now();
        for probe in probes.as_array().into_iter().flatten() {
            let Some(name) = probe["index"].as_str() else {
                continue;
            };
            let created = match &probe["creation.date"] {
                Value::String(ms) => ms.parse::<i64>().ok(),
                other => other.as_i64(),
            };
            let holder = probe_holder(name, created);
            let Some(reason) = dead_because(&holder, PROBE_STALE_AFTER, now) else {
                continue;
            };
            match self.http.delete_if_present(name, step).await {
                Ok(()) => {
                    tracing::info!(service = %SVC, index = %name, "removed the probe index of a killed run: {reason}")
                }
                Err(e) => {
                    tracing::warn!(service = %SVC, index = %name, "left for the next run: {e}")
                }
            }
        }
    }

    /// The temporary repositories of dead runs.
    async fn remove_dead_runs_repositories(&self) {
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
            let holder = repository_holder(name, settings, seen);
            let Some(reason) = dead_because(&holder, STALE_AFTER, now) else {
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
        let judge = |name: &str, settings: &Value, seen| {
            dead_because(&repository_holder(name, settings, seen), STALE_AFTER, now)
        };
        let ours = json!({"itbackup_host": here, "itbackup_pid": std::process::id().to_string()});
        assert_eq!(judge("itbackup-x-1", &ours, None), None);
        // A pid beyond pid_max is never alive.
        let dead = json!({"itbackup_host": here, "itbackup_pid": "4194305"});
        assert!(judge("itbackup-x-4194305", &dead, None).is_some());
        let elsewhere = json!({"itbackup_host": "another-host", "itbackup_pid": "4194305",
            "itbackup_started": now.to_string()});
        assert_eq!(judge("itbackup-x-1", &elsewhere, None), None);
        let old = json!({"itbackup_host": "another-host", "itbackup_pid": "1",
            "itbackup_started": (now - jiff::SignedDuration::from_hours(25)).to_string()});
        assert!(judge("itbackup-x-1", &old, None).is_some());
        // Older itbackups recorded no holder: the name's timestamp decides.
        assert!(judge("itbackup-20200101_000000-12", &json!({}), None).is_some());
        assert_eq!(judge("itbackup-restore-12", &json!({}), None), None);
        let long_ago = now - jiff::SignedDuration::from_hours(48);
        assert!(judge("itbackup-restore-12", &json!({}), Some(long_ago)).is_some());
    }

    #[test]
    fn probes_name_their_holder_and_age_decides_for_others() {
        let now = jiff::Timestamp::now();
        let judge = |name: &str, created: jiff::Timestamp| {
            let holder = probe_holder(name, Some(created.as_millisecond()));
            dead_because(&holder, PROBE_STALE_AFTER, now)
        };
        let ours = probe_index(3);
        assert!(ours.starts_with(PROBE_PREFIX) && ours.ends_with("-3"));
        assert_eq!(judge(&ours, now), None);
        let tag = host_tag();
        assert!(judge(&format!("{PROBE_PREFIX}{tag}-4194305-0"), now).is_some());
        // Another host's, or one of an itbackup that named no host: by age.
        let other = format!("{PROBE_PREFIX}0badc0de-4194305-0");
        let old = now - jiff::SignedDuration::from_hours(2);
        for name in [other.as_str(), "itbackup-check-4194305-0"] {
            assert_eq!(judge(name, now), None, "{name}");
            assert!(judge(name, old).is_some(), "{name}");
        }
    }
}
