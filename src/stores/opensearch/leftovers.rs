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
fn host_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(crate::environment::hostname().as_bytes());
        digest[..4].iter().map(|b| format!("{b:02x}")).collect()
    })
}

/// When this run named its first probe (Unix seconds): in every probe's
/// name, so that another host can judge its age without asking anyone.
static PROBES_STARTED: std::sync::OnceLock<i64> = std::sync::OnceLock::new();

/// The name of this run's `number`th probe of kind `kind` (`x` index, `p`
/// pipeline, `c` component template, `t` index template, `l` legacy
/// template): `itbackup-check-<host tag>-<pid>-<started>-<kind><number>`.
pub(super) fn probe_name(kind: char, number: usize) -> String {
    let started = PROBES_STARTED.get_or_init(|| jiff::Timestamp::now().as_second());
    format!(
        "{PROBE_PREFIX}{}-{}-{started}-{kind}{number}",
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

/// The holder a probe's name tells, or (for an index) its creation time.
/// Probes of itbackups that named neither host nor time
/// (`itbackup-check-<pid>-<n>`) are judged by their creation time alone.
fn probe_holder(name: &str, created_ms: Option<i64>) -> Holder {
    let created = created_ms.and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok());
    let parts: Vec<&str> = name
        .strip_prefix(PROBE_PREFIX)
        .unwrap_or_default()
        .split('-')
        .collect();
    match parts[..] {
        [tag, pid, started, ..] if tag.len() == 8 => Holder {
            here: Some(tag == host_tag()),
            pid: pid.parse().ok(),
            started: started
                .parse()
                .ok()
                .and_then(|s| jiff::Timestamp::from_second(s).ok())
                .or(created),
        },
        _ => Holder {
            started: created,
            ..Holder::default()
        },
    }
}

/// The settings that name the holder of a temporary repository.
pub(super) fn holder_settings() -> Map<String, Value> {
    let mut settings = Map::new();
    settings.insert(
        "itbackup_host".into(),
        json!(crate::environment::hostname()),
    );
    settings.insert("itbackup_pid".into(), json!(std::process::id().to_string()));
    settings.insert(
        "itbackup_started".into(),
        json!(jiff::Timestamp::now().to_string()),
    );
    settings
}

/// Whether a process `pid` is alive on this host. A pid reused by another
/// program keeps a dead run's leftovers until that program ends: removing
/// too little is the safe side.
fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The holder a temporary repository's settings tell. `seen`: when its
/// files last changed, if they can be read from here.
fn repository_holder(name: &str, settings: &Value, seen: Option<jiff::Timestamp>) -> Holder {
    let host = settings["itbackup_host"]
        .as_str()
        .filter(|h| !h.is_empty() && !crate::environment::hostname().is_empty());
    Holder {
        here: host.map(|h| h == crate::environment::hostname()),
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

/// The probes a listing names, with their creation time when it tells
/// (`_cat/indices`). `key`: the array of `{"name": …}` they are in; `{}`:
/// the listing's own keys; empty: a `_cat` array.
fn probe_names(listing: &Value, key: &str) -> Vec<(String, Option<i64>)> {
    let all: Vec<(String, Option<i64>)> = match key {
        "{}" => listing
            .as_object()
            .into_iter()
            .flatten()
            .map(|(name, _)| (name.clone(), None))
            .collect(),
        "" => listing
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|row| {
                let created = match &row["creation.date"] {
                    Value::String(ms) => ms.parse::<i64>().ok(),
                    other => other.as_i64(),
                };
                Some((row["index"].as_str()?.to_string(), created))
            })
            .collect(),
        key => listing[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| Some((item["name"].as_str()?.to_string(), None)))
            .collect(),
    };
    all.into_iter()
        .filter(|(name, _)| name.starts_with(PROBE_PREFIX))
        .collect()
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

    /// The probes of definition checks whose runs were killed: data
    /// streams first, then what they and the others stand on (a template
    /// in use cannot be removed).
    async fn remove_dead_runs_probes(&self) {
        let step = "remove leftovers of killed runs";
        let pattern = format!("{PROBE_PREFIX}*");
        // (listing, where its names are, the path to delete one)
        let kinds: [(String, &str, &str); 6] = [
            (
                format!("_data_stream/{pattern}"),
                "data_streams",
                "_data_stream/",
            ),
            (
                format!(
                    "_cat/indices/{pattern}?format=json&h=index,creation.date&expand_wildcards=all"
                ),
                "",
                "",
            ),
            (
                format!("_index_template/{pattern}"),
                "index_templates",
                "_index_template/",
            ),
            (format!("_template/{pattern}"), "{}", "_template/"),
            (
                format!("_component_template/{pattern}"),
                "component_templates",
                "_component_template/",
            ),
            (
                format!("_ingest/pipeline/{pattern}"),
                "{}",
                "_ingest/pipeline/",
            ),
        ];
        let now = jiff::Timestamp::now();
        for (listing, key, delete) in kinds {
            let found = match self.http.get_listing(&listing, step).await {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(service = %SVC, "{e}");
                    continue;
                }
            };
            for (name, created) in probe_names(&found, key) {
                let Some(reason) =
                    dead_because(&probe_holder(&name, created), PROBE_STALE_AFTER, now)
                else {
                    continue;
                };
                let path = format!("{delete}{name}");
                match self.http.delete_if_present(&path, step).await {
                    Ok(()) => {
                        tracing::info!(service = %SVC, probe = %path, "removed a probe of a killed run: {reason}")
                    }
                    Err(e) => {
                        tracing::warn!(service = %SVC, probe = %path, "left for the next run: {e}")
                    }
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
        let here = crate::environment::hostname();
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
        let judge = |name: &str, created: Option<jiff::Timestamp>| {
            let holder = probe_holder(name, created.map(|c| c.as_millisecond()));
            dead_because(&holder, PROBE_STALE_AFTER, now)
        };
        let ours = probe_name('x', 3);
        assert!(ours.starts_with(PROBE_PREFIX) && ours.ends_with("-x3"));
        assert_eq!(judge(&ours, None), None);
        let tag = host_tag();
        let secs = now.as_second();
        assert!(judge(&format!("{PROBE_PREFIX}{tag}-4194305-{secs}-t0"), None).is_some());
        // Another host's: by the age its name tells.
        let fresh = format!("{PROBE_PREFIX}0badc0de-4194305-{secs}-x0");
        let old = format!("{PROBE_PREFIX}0badc0de-4194305-{}-x0", secs - 7200);
        assert_eq!(judge(&fresh, None), None);
        assert!(judge(&old, None).is_some());
        // One of an itbackup that named no host: by its creation time.
        let unnamed = "itbackup-check-4194305-0";
        assert_eq!(judge(unnamed, Some(now)), None);
        assert!(judge(unnamed, Some(now - jiff::SignedDuration::from_hours(2))).is_some());
        assert_eq!(judge(unnamed, None), None);
        // Listings of each shape name only probes.
        let cat = json!([{"index": unnamed, "creation.date": "1000"}, {"index": "logs"}]);
        assert_eq!(
            probe_names(&cat, ""),
            vec![(unnamed.to_string(), Some(1000))]
        );
        let templates = json!({"index_templates": [{"name": ours}, {"name": "logs"}]});
        assert_eq!(
            probe_names(&templates, "index_templates"),
            vec![(ours.clone(), None)]
        );
        let pipelines = json!({ours.clone(): {}, "other": {}});
        assert_eq!(probe_names(&pipelines, "{}"), vec![(ours, None)]);
    }
}
