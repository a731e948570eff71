//! The data directory a physical restore replaces, and the server on it:
//! the checks before anything is stopped (the cluster's identity, its
//! version, room beside it), the stop and start commands, and the marker
//! beside the directory that lets a failed or killed restore put the old
//! directory back ([`Postgres::roll_back_data_dir`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::PhysicalDetails;
use crate::error::{io_error, Error, Result};
use crate::manifest::ArtifactRecord;
use crate::process::ToolCommand;
use crate::stores::postgres::{blocking, Postgres, SVC};
use crate::target::Target;

/// The file beside the data directory that says a restore is replacing it.
pub(super) fn marker_path(data: &Path) -> PathBuf {
    sibling(data, ".itbackup-restoring")
}

/// The marker while it is written (renamed to [`marker_path`] once whole).
fn partial_marker_path(data: &Path) -> PathBuf {
    sibling(data, ".itbackup-restoring.partial")
}

/// `<data><suffix>`, beside the data directory.
pub(super) fn sibling(data: &Path, suffix: &str) -> PathBuf {
    let mut name = data.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    data.with_file_name(name)
}

/// What a running restore records in its marker.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Marker {
    /// Where the old data directory was put (none when there was none).
    pub(super) old: Option<PathBuf>,
    /// Whether the server ran before: it is started again after a rollback.
    pub(super) was_running: bool,
    /// The new data directory written beside the live one, until it takes
    /// the live one's name.
    #[serde(default)]
    pub(super) staged: Option<PathBuf>,
}

/// Written whole under a temporary name, then renamed: a run killed while
/// it writes leaves no marker (nothing else was changed yet), never an
/// empty one that would stop every later run of the server.
pub(super) fn write_marker(data: &Path, marker: &Marker) -> Result<()> {
    let path = marker_path(data);
    let partial = partial_marker_path(data);
    let write = || -> std::io::Result<()> {
        let mut file = crate::artifact::create_private_file(&partial)?;
        file.write_all(&serde_json::to_vec(marker).expect("plain data"))?;
        file.sync_all()?;
        std::fs::rename(&partial, &path)?;
        crate::artifact::sync_dir(path.parent().unwrap_or(Path::new(".")))
    };
    write().map_err(|e| {
        io_error(Some(SVC), "record the restore", path.display(), e).hint(
            "a previous restore may have been interrupted: run the restore again, which puts its data directory back first",
        )
    })
}

pub(super) fn read_marker(data: &Path) -> Result<Option<Marker>> {
    let path = marker_path(data);
    match crate::artifact::read_small_text(&path, 64 * 1024) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
            Error::damaged("read restore marker", format!("{}: {e}", path.display())).service(SVC)
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(
            Some(SVC),
            "read restore marker",
            path.display(),
            e,
        )),
    }
}

/// The new data directory a restore killed before it stopped the server was
/// writing beside `data` (no marker: nothing else was changed), removed.
pub fn remove_unfinished_copy(data: &Path) -> Result<()> {
    // A marker that was being written when the run was killed.
    let _ = std::fs::remove_file(partial_marker_path(data));
    let staged = sibling(data, ".itbackup-new");
    if !staged.exists() {
        return Ok(());
    }
    tracing::warn!(
        "postgres: removing {}, the unfinished copy of an interrupted physical restore (the live data directory was not touched)",
        staged.display()
    );
    std::fs::remove_dir_all(&staged)
        .map_err(|e| io_error(Some(SVC), "remove unfinished copy", staged.display(), e))
}

/// Whether a killed restore left its marker beside `data`.
pub fn interrupted(data: &Path) -> bool {
    marker_path(data).exists()
}

/// Whether a postmaster runs on `data`: its pid file names a live process.
pub fn server_running(data: &Path) -> bool {
    let Ok(text) = crate::artifact::read_small_text(&data.join("postmaster.pid"), 4096) else {
        return false;
    };
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
    else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks that the process exists.
    let alive = unsafe { libc::kill(pid, 0) };
    alive == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Let the data directory's owner reach `stage` inside `scratch`: the scratch
/// directory becomes traversable (not listable), the staged archive theirs.
pub(super) fn reachable_by(scratch: &Path, stage: &Path, (uid, gid): (u32, u32)) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let step = "stage WAL";
    std::fs::set_permissions(scratch, std::fs::Permissions::from_mode(0o711))
        .map_err(|e| io_error(Some(SVC), step, scratch.display(), e))?;
    let mut paths = vec![stage.to_path_buf()];
    while let Some(path) = paths.pop() {
        std::os::unix::fs::chown(&path, Some(uid), Some(gid))
            .map_err(|e| io_error(Some(SVC), step, path.display(), e))?;
        if path.is_dir() {
            for entry in std::fs::read_dir(&path)
                .map_err(|e| io_error(Some(SVC), step, path.display(), e))?
            {
                paths.push(
                    entry
                        .map_err(|e| io_error(Some(SVC), step, path.display(), e))?
                        .path(),
                );
            }
        }
    }
    Ok(())
}

impl Postgres {
    pub(super) fn data_dir(&self) -> Result<PathBuf> {
        self.settings.data_dir.clone().ok_or_else(|| {
            Error::usage("a physical restore replaces the server's data directory: set IT_PG_DATA (or data_dir under [postgres] in the config)")
        })
    }

    pub(super) fn lifecycle(&self, which: &str) -> Result<ToolCommand> {
        if let Target::Compose(_) = self.target {
            return Err(Error::usage(
                "a physical restore in compose mode is not supported yet: it needs the server's data directory on this host",
            )
            .hint("restore on the host with IT_PG_DATA, IT_PG_STOP_CMD and IT_PG_START_CMD set, or use the custom format"));
        }
        let command = match which {
            "stop" => &self.settings.stop_command,
            _ => &self.settings.start_command,
        };
        let command = command.as_ref().ok_or_else(|| {
            Error::usage(format!(
                "a physical restore stops and starts the server, and no {which} command is set"
            ))
            .hint("set IT_PG_STOP_CMD and IT_PG_START_CMD (or stop_command/start_command under [postgres]), e.g. 'systemctl stop postgresql' / 'systemctl start postgresql'")
        })?;
        Ok(ToolCommand::new("sh").args(["-c", command.as_str()]))
    }

    pub(super) async fn run_lifecycle(&self, which: &'static str) -> Result<()> {
        let cmd = self.lifecycle(which)?;
        let step = if which == "stop" {
            "stop server"
        } else {
            "start server"
        };
        blocking(move || crate::process::output(&cmd, SVC, step).map(|_| ())).await
    }

    /// The data directory is this cluster's (or empty), its parent has room
    /// for the new one beside the old; returns the owner its files get.
    pub(super) async fn check_data_dir(
        &self,
        data: &Path,
        details: &PhysicalDetails,
        record: &ArtifactRecord,
    ) -> Result<(u32, u32)> {
        use std::os::unix::fs::MetadataExt;
        let step = "check data directory";
        let parent = data
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .ok_or_else(|| {
                Error::usage(format!(
                    "IT_PG_DATA {} has no parent directory",
                    data.display()
                ))
            })?;
        let parent_meta = std::fs::metadata(parent)
            .map_err(|e| io_error(Some(SVC), step, parent.display(), e))?;
        let meta = match std::fs::symlink_metadata(data) {
            Ok(meta) => Some(meta),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_error(Some(SVC), step, data.display(), e)),
        };
        let holds_cluster = match &meta {
            Some(meta) if !meta.is_dir() => {
                return Err(Error::usage(format!(
                    "IT_PG_DATA {} is not a directory",
                    data.display()
                )))
            }
            Some(_) => std::fs::read_dir(data)
                .map_err(|e| io_error(Some(SVC), step, data.display(), e))?
                .next()
                .is_some(),
            None => false,
        };
        if holds_cluster {
            let meta = meta.as_ref().expect("a directory");
            if meta.dev() != parent_meta.dev() {
                return Err(Error::usage(format!(
                    "IT_PG_DATA {} is a mount point: it cannot be renamed aside and kept until the restore has succeeded",
                    data.display()
                ))
                .hint("point IT_PG_DATA at a directory inside the mounted file system (e.g. <mount>/data); nothing was changed"));
            }
            let found = self.system_identifier_of(data).await?;
            if found != details.system_identifier {
                return Err(Error::usage(format!(
                    "{} holds the cluster with system identifier {found}, but the base backup is of the cluster {}: restoring it there would replace another cluster",
                    data.display(),
                    details.system_identifier
                ))
                .hint("check IT_PG_DATA and the backup; to put this backup in place of another cluster, move that cluster's data directory away first (an empty or missing IT_PG_DATA is accepted); nothing was changed"));
            }
            let version = crate::artifact::read_small_text(&data.join("PG_VERSION"), 4096)
                .unwrap_or_default();
            let backup_major = crate::stores::release(&record.server_version, 1);
            if crate::stores::release(version.trim(), 1) != backup_major {
                return Err(Error::usage(format!(
                    "{} is a PostgreSQL {} cluster, the base backup is of PostgreSQL {}: a physical backup only starts on the same major version",
                    data.display(),
                    version.trim(),
                    record.server_version
                ))
                .hint("restore a logical (custom format) backup instead; nothing was changed"));
            }
        }
        let needed = details.data_bytes + details.data_bytes / 20;
        crate::artifact::require_free_space(
            Some(SVC),
            step,
            parent,
            needed,
            "the restored data directory, beside the old one, which is kept until the restore has succeeded",
        )?;
        let owner = match &meta {
            Some(meta) => (meta.uid(), meta.gid()),
            None => (parent_meta.uid(), parent_meta.gid()),
        };
        Ok(owner)
    }

    /// The system identifier of the cluster in `data`, by `pg_controldata`.
    pub(super) async fn system_identifier_of(&self, data: &Path) -> Result<String> {
        let cmd = self
            .tool("pg_controldata")
            .arg("-D")
            .arg(data.as_os_str().to_owned());
        let shown = data.display().to_string();
        let text = blocking(move || {
            crate::process::output_within(
                &cmd,
                SVC,
                "read the data directory (pg_controldata)",
                crate::process::SHORT_ANSWER_BOUND,
            )
        })
        .await
            .map_err(|e| {
                e.hint(format!("{shown} (IT_PG_DATA) is not a PostgreSQL data directory this pg_controldata can read; check IT_PG_DATA; nothing was changed"))
            })?;
        text.lines()
            .find_map(|l| l.strip_prefix("Database system identifier:"))
            .map(|id| id.trim().to_string())
            .ok_or_else(|| {
                Error::failure(
                    "read the data directory (pg_controldata)",
                    "no system identifier in its output",
                )
                .service(SVC)
            })
    }

    /// Run the stop command and wait until the postmaster is gone.
    pub(super) async fn stop_and_wait(&self, data: &Path) -> Result<()> {
        self.run_lifecycle("stop").await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while server_running(data) {
            if Instant::now() >= deadline {
                return Err(Error::failure(
                    "stop server",
                    format!(
                        "the stop command ended but the server of {} still runs after 2 minutes",
                        data.display()
                    ),
                )
                .service(SVC));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// Put the data directory from before the restore back: the failed
    /// attempt is moved aside, the server started again if it ran.
    pub(in crate::stores::postgres) async fn roll_back_data_dir(
        &self,
        data: &Path,
    ) -> Result<String> {
        let marker = read_marker(data)?;
        let Some(marker) = marker else {
            return Ok("nothing to put back".into());
        };
        let step = "put back data directory";
        // The data directory now is the restore's attempt, unless the run
        // ended before it renamed the old one aside (then it is the old one,
        // untouched, and stays).
        let renamed = match &marker.old {
            Some(old) => old.exists(),
            None => true,
        };
        let mut kept = None;
        if renamed {
            if server_running(data) {
                self.stop_and_wait(data).await?;
            }
            if data.exists() {
                let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%S").to_string();
                let failed = sibling(data, &format!(".itbackup-failed-{stamp}"));
                std::fs::rename(data, &failed)
                    .map_err(|e| io_error(Some(SVC), step, data.display(), e))?;
                kept = Some(failed);
            }
            if let Some(old) = &marker.old {
                std::fs::rename(old, data)
                    .map_err(|e| io_error(Some(SVC), step, old.display(), e))?;
            }
            crate::artifact::sync_dir(data.parent().unwrap_or(Path::new(".")))
                .map_err(|e| io_error(Some(SVC), step, data.display(), e))?;
        }
        // A staged directory that never took the live one's name is debris.
        if let Some(staged) = marker.staged.as_ref().filter(|s| s.exists()) {
            std::fs::remove_dir_all(staged)
                .map_err(|e| io_error(Some(SVC), step, staged.display(), e))?;
        }
        std::fs::remove_file(marker_path(data))
            .map_err(|e| io_error(Some(SVC), step, marker_path(data).display(), e))?;
        // A server that ran before runs again. The killed run's stop command
        // may still be going: a running server is stopped first (that waits
        // for a stop in progress), then started.
        let started = marker.was_running;
        if started {
            if server_running(data) {
                self.stop_and_wait(data).await?;
            }
            self.run_lifecycle("start").await?;
        }
        Ok(format!(
            "{}{}{}",
            match &marker.old {
                Some(_) if renamed => format!(
                    "the data directory from before the restore is back in {}",
                    data.display()
                ),
                Some(_) => format!("the data directory {} was never replaced", data.display()),
                None => format!(
                    "{} held no cluster before the restore, and holds none again",
                    data.display()
                ),
            },
            kept.map(|k| format!(
                " (the failed attempt is kept in {} for inspection)",
                k.display()
            ))
            .unwrap_or_default(),
            if started {
                "; the server was started again"
            } else {
                ""
            }
        ))
    }
}
