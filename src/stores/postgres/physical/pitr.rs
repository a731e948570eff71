//! Restoring a base backup, and with `restore --until`, replaying the
//! archived WAL up to a moment, a position or the end (point-in-time
//! recovery). PostgreSQL does the replay; itbackup makes sure it can
//! succeed before anything is stopped, and that a failure leaves the
//! cluster as it was.
//!
//! Before the server is stopped ([`Postgres::prepare_physical_restore`]):
//! the target is after the base backup; the data directory (`IT_PG_DATA`)
//! is a cluster of this same system (its identifier, read by
//! `pg_controldata`) and major version, or empty; its parent can hold a
//! second copy beside it; the stop and start commands are set; every WAL
//! segment from the backup to the target is in the archive and intact
//! (see `wal::chain`), and, for a sealed or remote archive, staged as a
//! plain local one the server can read without keys or credentials.
//!
//! Then ([`Postgres::restore_physical`]): a marker beside the data
//! directory records the run; the server is stopped; the old data
//! directory is renamed aside (same file system: instant, and kept); the
//! base backup is written into a new one, every file checked against the
//! backup's own manifest; the recovery settings are added; the server is
//! started and waited for until it has promoted; the result is checked
//! (the server answers on a new timeline and, for `latest`, has replayed
//! every archived segment). Any failure on the way puts the old data
//! directory back (the attempt is kept beside it for inspection) and
//! starts the server again if it was running. A run killed in between is
//! undone the same way by the next run that takes the server's lock.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{read_artifact, PhysicalDetails};
use crate::error::{io_error, Error, Result};
use crate::manifest::ArtifactRecord;
use crate::process::ToolCommand;
use crate::stores::postgres::wal::chain::{self, Archive, Chain, ChainEnd, ChainStart};
use crate::stores::postgres::wal::{LocalArchive, RemoteArchive};
use crate::stores::postgres::{blocking, Postgres, SVC};
use crate::stores::{RestoreContext, RestoreSelection, Store};
use crate::target::Target;

/// Where a point-in-time restore stops replaying the archived WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// Every archived segment.
    Latest,
    /// Commits up to and including this moment.
    Time(jiff::Timestamp),
    /// WAL up to this position.
    Lsn(super::lsn::Lsn),
}

impl RecoveryTarget {
    /// `latest`, an RFC 3339 time, or a WAL position (`0/81000028`).
    pub fn parse(text: &str) -> std::result::Result<RecoveryTarget, String> {
        if text == "latest" {
            return Ok(RecoveryTarget::Latest);
        }
        if let Some(lsn) = super::lsn::Lsn::parse(text) {
            return Ok(RecoveryTarget::Lsn(lsn));
        }
        text.parse::<jiff::Timestamp>()
            .map(RecoveryTarget::Time)
            .map_err(|_| {
                format!("'{text}' is not latest, an RFC 3339 time (2026-12-01T10:41:59Z) or a WAL position (0/81000028)")
            })
    }

    fn describe(self) -> String {
        match self {
            RecoveryTarget::Latest => "the last archived WAL".into(),
            RecoveryTarget::Time(t) => format!("{t}"),
            RecoveryTarget::Lsn(lsn) => format!("WAL position {lsn}"),
        }
    }
}

/// The file beside the data directory that says a restore is replacing it.
fn marker_path(data: &Path) -> PathBuf {
    sibling(data, ".itbackup-restoring")
}

/// `<data><suffix>`, beside the data directory.
fn sibling(data: &Path, suffix: &str) -> PathBuf {
    let mut name = data.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    data.with_file_name(name)
}

/// What a running restore records in its marker.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Marker {
    /// Where the old data directory was put (none when there was none).
    old: Option<PathBuf>,
    /// Whether the server ran before: it is started again after a rollback.
    was_running: bool,
}

/// What the checks before the stop found, for the restore that follows.
#[derive(Debug)]
pub struct PreparedPitr {
    details: PhysicalDetails,
    target: Option<RecoveryTarget>,
    chain: Chain,
    /// The archive `restore_command` reads: the root's, or the staged copy.
    fetch_root: PathBuf,
    data: PathBuf,
    owner: (u32, u32),
}

impl Postgres {
    pub(in crate::stores::postgres) fn plan_physical_restore(
        &self,
        selection: &RestoreSelection,
    ) -> Vec<String> {
        let data = self
            .settings
            .data_dir
            .as_ref()
            .map_or("IT_PG_DATA (not set)".into(), |d| d.display().to_string());
        let until = selection
            .until
            .map_or("the base backup's own end (no --until)".into(), |t| {
                t.describe()
            });
        vec![
            format!("check that every archived WAL segment from the base backup to {until} is present and intact, and that {data} is this cluster's data directory (pg_controldata)"),
            format!("stop the server ({})", self.settings.stop_command.as_deref().unwrap_or("IT_PG_STOP_CMD, not set")),
            format!("rename {data} aside to {data}.itbackup-old-<time> (kept), write the base backup into a new {data}, every file checked against its backup_manifest"),
            format!("add recovery settings (restore_command = itbackup wal fetch, recovery target {until}, then promote) and recovery.signal"),
            format!("start the server ({}) and wait until it has replayed the WAL and promoted; on any failure put the old data directory back", self.settings.start_command.as_deref().unwrap_or("IT_PG_START_CMD, not set")),
        ]
    }

    fn data_dir(&self) -> Result<PathBuf> {
        self.settings.data_dir.clone().ok_or_else(|| {
            Error::usage("a physical restore replaces the server's data directory: set IT_PG_DATA (or data_dir under [postgres] in the config)")
        })
    }

    fn lifecycle(&self, which: &str) -> Result<ToolCommand> {
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

    async fn run_lifecycle(&self, which: &'static str) -> Result<()> {
        let cmd = self.lifecycle(which)?;
        let step = if which == "stop" {
            "stop server"
        } else {
            "start server"
        };
        blocking(move || crate::process::output(&cmd, SVC, step).map(|_| ())).await
    }

    /// Everything that can be checked before the server is stopped.
    pub(in crate::stores::postgres) async fn prepare_physical_restore(
        &self,
        ctx: &RestoreContext<'_>,
        record: &ArtifactRecord,
    ) -> Result<()> {
        let details = PhysicalDetails::of(record)?;
        let target = ctx.selection.until;
        if let Some(RecoveryTarget::Time(t)) = target {
            let consistent: jiff::Timestamp = details.consistent_at.parse().map_err(|_| {
                Error::damaged(
                    "read manifest",
                    "details.physical.consistent_at is not a time",
                )
                .service(SVC)
            })?;
            if t < consistent {
                return Err(Error::usage(format!(
                    "--until {t} is before this base backup was consistent ({consistent}); a restore can only go forward from a base backup"
                ))
                .hint("restore from an older physical backup (without --path, itbackup picks the newest one before the target); nothing was changed"));
            }
        }
        if let Some(RecoveryTarget::Lsn(lsn)) = target {
            if lsn.to_string() != details.stop_lsn
                && Some(lsn) < super::lsn::Lsn::parse(&details.stop_lsn)
            {
                return Err(Error::usage(format!(
                    "--until {lsn} is before this base backup's end ({})",
                    details.stop_lsn
                ))
                .hint("restore from an older physical backup; nothing was changed"));
            }
        }
        self.lifecycle("stop")?;
        self.lifecycle("start")?;
        let data = self.data_dir()?;
        let owner = self.check_data_dir(&data, &details, record).await?;
        let end = match target {
            None => ChainEnd::Backup,
            Some(RecoveryTarget::Latest) => ChainEnd::Latest,
            Some(RecoveryTarget::Time(t)) => ChainEnd::Time(t),
            Some(RecoveryTarget::Lsn(lsn)) => ChainEnd::Lsn(lsn),
        };
        let start = ChainStart {
            timeline: details.timeline,
            end_lsn: super::lsn::Lsn::parse(&details.stop_lsn).unwrap_or_default(),
            segment_bytes: details.wal_segment_bytes,
        };
        let identities = ctx
            .recovery
            .identity
            .as_deref()
            .map(crate::seal::Identities::load)
            .transpose()?;
        let archive = match &ctx.recovery.archive_url {
            Some(url) => Archive::Remote(RemoteArchive::open(url)?),
            None => Archive::Local(LocalArchive::new(&ctx.recovery.archive_root)),
        };
        // A sealed or remote archive is staged, plain, where the server can
        // read it; a plain local one is read in place.
        let sealed = identities.is_some();
        let staged = matches!(archive, Archive::Remote(_)) || sealed;
        let stage_root = ctx.scratch.join("pitr-wal");
        let stage = if staged {
            let stage = LocalArchive::new(&stage_root);
            crate::artifact::create_private_dir(&stage_root)
                .and_then(|_| crate::artifact::create_private_dir(&stage.dir))
                .map_err(|e| io_error(Some(SVC), "stage WAL", stage_root.display(), e))?;
            Some(stage)
        } else {
            None
        };
        let chain = chain::check(
            &archive,
            &start,
            end,
            identities.as_ref(),
            ctx.scratch,
            stage.as_ref(),
        )
        .await?;
        let fetch_root = if staged {
            // The server's user reads the staged archive through the scratch directory.
            reachable_by(ctx.scratch, &stage_root, owner)?;
            stage_root
        } else {
            ctx.recovery.archive_root.clone()
        };
        tracing::info!(
            segments = chain.segments.len(),
            timeline = chain.timeline,
            last = chain
                .segments
                .last()
                .map(String::as_str)
                .unwrap_or("(in the base backup)"),
            "postgres: the WAL chain to the target is complete and intact"
        );
        *self.prepared.lock().expect("not poisoned") = Some(PreparedPitr {
            details,
            target,
            chain,
            fetch_root,
            data,
            owner,
        });
        Ok(())
    }

    /// The data directory is this cluster's (or empty), its parent has room
    /// for the new one beside the old; returns the owner its files get.
    async fn check_data_dir(
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
            let version = std::fs::read_to_string(data.join("PG_VERSION")).unwrap_or_default();
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
    async fn system_identifier_of(&self, data: &Path) -> Result<String> {
        let cmd = self
            .tool("pg_controldata")
            .arg("-D")
            .arg(data.as_os_str().to_owned());
        let shown = data.display().to_string();
        let text = blocking(move || crate::process::output(&cmd, SVC, "read the data directory (pg_controldata)"))
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

    /// Stop, replace, recover, check; on failure put everything back.
    pub(in crate::stores::postgres) async fn restore_physical(
        &self,
        ctx: &RestoreContext<'_>,
    ) -> Result<()> {
        let prepared = self
            .prepared
            .lock()
            .expect("not poisoned")
            .take()
            .ok_or_else(|| {
                Error::failure("restore", "the physical restore was not prepared").service(SVC)
            })?;
        let data = prepared.data.clone();
        let was_running = server_running(&data);
        let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%S").to_string();
        let holds = std::fs::read_dir(&data).is_ok_and(|mut d| d.next().is_some());
        let old = holds.then(|| sibling(&data, &format!(".itbackup-old-{stamp}")));
        write_marker(
            &data,
            &Marker {
                old: old.clone(),
                was_running,
            },
        )?;
        let stopped = crate::lock::StoppedServer::of(SVC, &self.address());
        if was_running {
            stopped.record(SVC, "restore (physical)")?;
            if let Err(e) = self.stop_and_wait(&data).await {
                // Nothing was changed: the server may still be running.
                let _ = std::fs::remove_file(marker_path(&data));
                if server_running(&data) {
                    stopped.clear();
                }
                return Err(e.hint(
                    "the server was not stopped and nothing was changed; check IT_PG_STOP_CMD",
                ));
            }
        }
        let replaced = self
            .replace_and_recover(ctx, &prepared, old.as_deref())
            .await;
        match replaced {
            Ok(()) => {
                let _ = std::fs::remove_file(marker_path(&data));
                stopped.clear();
                if let Some(old) = &old {
                    tracing::warn!(
                        "postgres: the data directory from before the restore is kept in {}; remove it once the restored cluster is confirmed",
                        old.display()
                    );
                }
                Ok(())
            }
            Err(e) => {
                let put_back = self.roll_back_data_dir(&data).await;
                match put_back {
                    Ok(note) => {
                        stopped.clear();
                        Err(Error {
                            message: format!("{}; {note}", e.message),
                            ..e
                        })
                    }
                    Err(rollback) => Err(Error {
                        message: format!(
                            "{}; putting the old data directory back failed too: {}",
                            e.message, rollback.message
                        ),
                        ..e
                    }),
                }
            }
        }
    }

    /// Run the stop command and wait until the postmaster is gone.
    async fn stop_and_wait(&self, data: &Path) -> Result<()> {
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

    async fn replace_and_recover(
        &self,
        ctx: &RestoreContext<'_>,
        prepared: &PreparedPitr,
        old: Option<&Path>,
    ) -> Result<()> {
        let data = &prepared.data;
        let step = "replace data directory";
        if let Some(old) = old {
            std::fs::rename(data, old).map_err(|e| io_error(Some(SVC), step, data.display(), e))?;
        } else if data.exists() {
            std::fs::remove_dir(data).map_err(|e| io_error(Some(SVC), step, data.display(), e))?;
        }
        std::fs::create_dir(data).map_err(|e| io_error(Some(SVC), step, data.display(), e))?;
        let (uid, gid) = prepared.owner;
        std::os::unix::fs::chown(data, Some(uid), Some(gid))
            .and_then(|_| {
                std::fs::set_permissions(data, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            })
            .map_err(|e| io_error(Some(SVC), step, data.display(), e))?;
        let artifact = ctx.artifact.to_path_buf();
        let into = data.clone();
        let owner = prepared.owner;
        let summary = blocking(move || {
            let summary = read_artifact(
                &artifact,
                Some(&super::basetar::Extract {
                    into: &into,
                    owner: Some(owner),
                }),
            )?;
            super::basetar::sync_tree(&into)
                .map_err(|e| io_error(Some(SVC), "write data directory", into.display(), e))?;
            Ok(summary)
        })
        .await?;
        super::check_summary(&summary, &prepared.details)?;
        self.write_recovery_settings(prepared)?;
        self.run_lifecycle("start").await?;
        self.wait_for_promotion(data).await?;
        self.check_recovered(prepared).await
    }

    /// `recovery.signal` and the recovery settings, at the end of
    /// `postgresql.auto.conf` (where a later setting wins; PostgreSQL
    /// ignores them once promoted).
    fn write_recovery_settings(&self, prepared: &PreparedPitr) -> Result<()> {
        let data = &prepared.data;
        let step = "write recovery settings";
        let exe = std::env::current_exe()
            .map_err(|e| io_error(Some(SVC), step, "itbackup's own path", e))?;
        let fetch = format!(
            "{} wal fetch --root {} %f %p",
            shell_quote(&exe.to_string_lossy()),
            shell_quote(&prepared.fetch_root.to_string_lossy())
        );
        let mut settings = vec![
            format!("restore_command = {}", conf_quote(&fetch)),
            "recovery_target_timeline = 'latest'".to_string(),
            "recovery_target_action = 'promote'".to_string(),
        ];
        // One target at most: PostgreSQL refuses a second, even an empty one.
        match prepared.target {
            None => settings.push("recovery_target = 'immediate'".into()),
            Some(RecoveryTarget::Latest) => {}
            Some(RecoveryTarget::Time(t)) => settings.push(format!(
                "recovery_target_time = '{}'",
                t.strftime("%Y-%m-%d %H:%M:%S%.6f+00")
            )),
            Some(RecoveryTarget::Lsn(lsn)) => {
                settings.push(format!("recovery_target_lsn = '{lsn}'"))
            }
        }
        let auto = data.join("postgresql.auto.conf");
        // The base backup's own file may hold an earlier restore's settings
        // (a target time of then): they are dropped, so that only this
        // restore's apply.
        let kept: String = std::fs::read_to_string(&auto)
            .unwrap_or_default()
            .lines()
            .filter(|line| !is_recovery_setting(line))
            .map(|line| format!("{line}\n"))
            .collect();
        let text = format!(
            "{kept}# itbackup restore ({}): recovery settings, ignored once the server has promoted\n{}\n",
            jiff::Timestamp::now(),
            settings.join("\n")
        );
        let written = auto.with_extension("conf.itbackup");
        let write = || -> std::io::Result<()> {
            let mut file = crate::artifact::create_private_file(&written)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            let (uid, gid) = prepared.owner;
            std::os::unix::fs::chown(&written, Some(uid), Some(gid))?;
            std::fs::rename(&written, &auto)?;
            let signal = data.join("recovery.signal");
            std::fs::File::create(&signal)?.sync_all()?;
            std::os::unix::fs::chown(&signal, Some(uid), Some(gid))
        };
        write().map_err(|e| io_error(Some(SVC), step, auto.display(), e))
    }

    /// Wait until the server answers and has left recovery. Recovery takes as
    /// long as the WAL to replay: the bound is on the server dying, or on no
    /// answer at all for the connect timeout's worth of tries.
    async fn wait_for_promotion(&self, data: &Path) -> Result<()> {
        let step = "wait for recovery";
        let mut unanswered_since = Instant::now();
        loop {
            if !server_running(data) {
                return Err(Error::failure(
                    step,
                    "the server stopped during recovery (a WAL segment it needed could not be read, or the target was not reached)",
                )
                .service(SVC)
                .hint("read the server's log for the FATAL line"));
            }
            match self.connect("postgres", step).await {
                Ok(client) => {
                    unanswered_since = Instant::now();
                    let row = client
                        .query_one("SELECT pg_is_in_recovery()", &[])
                        .await
                        .map_err(|e| Self::query_error(step, e))?;
                    if !row.get::<_, bool>(0) {
                        return Ok(());
                    }
                }
                Err(e) if unanswered_since.elapsed() > Duration::from_secs(600) => {
                    return Err(e.hint("the server runs but has not answered for 10 minutes since it was started for recovery"))
                }
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// The server answers on a timeline after the backup's; for `latest`, it
    /// replayed every segment the chain check found.
    async fn check_recovered(&self, prepared: &PreparedPitr) -> Result<()> {
        let step = "check recovery";
        let client = self.connect("postgres", step).await?;
        let row = client
            .query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[])
            .await
            .map_err(|e| Self::query_error(step, e))?;
        let current: String = row.get(0);
        let timeline = u32::from_str_radix(current.get(..8).unwrap_or(""), 16).unwrap_or(0);
        if timeline <= prepared.chain.timeline.max(prepared.details.timeline) {
            return Err(Error::mismatch(
                step,
                format!("the server is on timeline {timeline} after recovery; a promotion starts a new one after {}", prepared.chain.timeline),
            )
            .service(SVC));
        }
        if let (Some(RecoveryTarget::Latest), Some(last)) =
            (prepared.target, prepared.chain.segments.last())
        {
            let history = format!("{timeline:08X}.history");
            let text = std::fs::read_to_string(prepared.data.join("pg_wal").join(&history))
                .map_err(|e| io_error(Some(SVC), step, history.clone(), e))?;
            let switch = text
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter_map(super::lsn::Lsn::parse)
                .next_back()
                .unwrap_or_default();
            let bytes = prepared.details.wal_segment_bytes;
            let reached =
                super::lsn::segment_name(prepared.chain.timeline, switch.segment(bytes), bytes);
            if reached[8..] < last[8..] {
                return Err(Error::mismatch(
                    step,
                    format!("recovery ended at {switch} (segment {reached}), before the last archived segment {last}: commits archived after it are missing"),
                )
                .service(SVC)
                .hint("a segment could not be read during recovery; verify the WAL archive"));
            }
        }
        tracing::info!(timeline, "postgres: recovered and promoted");
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
        if server_running(data) {
            self.stop_and_wait(data).await?;
        }
        let step = "put back data directory";
        let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%S").to_string();
        let failed = sibling(data, &format!(".itbackup-failed-{stamp}"));
        if data.exists() {
            std::fs::rename(data, &failed)
                .map_err(|e| io_error(Some(SVC), step, data.display(), e))?;
        }
        if let Some(old) = &marker.old {
            if old.exists() {
                std::fs::rename(old, data)
                    .map_err(|e| io_error(Some(SVC), step, old.display(), e))?;
            }
        }
        std::fs::remove_file(marker_path(data))
            .map_err(|e| io_error(Some(SVC), step, marker_path(data).display(), e))?;
        if marker.was_running {
            self.run_lifecycle("start").await?;
        }
        Ok(format!(
            "the data directory from before the restore is back in {} (the failed attempt is kept in {} for inspection){}",
            data.display(),
            failed.display(),
            if marker.was_running { " and the server was started again" } else { "" }
        ))
    }
}

fn write_marker(data: &Path, marker: &Marker) -> Result<()> {
    let path = marker_path(data);
    let write = || -> std::io::Result<()> {
        let mut file = crate::artifact::create_private_file(&path)?;
        file.write_all(&serde_json::to_vec(marker).expect("plain data"))?;
        file.sync_all()?;
        crate::artifact::sync_dir(path.parent().unwrap_or(Path::new(".")))
    };
    write().map_err(|e| {
        io_error(Some(SVC), "record the restore", path.display(), e).hint(
            "a previous restore may have been interrupted: run the restore again, which puts its data directory back first",
        )
    })
}

fn read_marker(data: &Path) -> Result<Option<Marker>> {
    let path = marker_path(data);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
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

/// Whether a killed restore left its marker beside `data`.
pub fn interrupted(data: &Path) -> bool {
    marker_path(data).exists()
}

/// Whether a postmaster runs on `data`: its pid file names a live process.
pub fn server_running(data: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(data.join("postmaster.pid")) else {
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
fn reachable_by(scratch: &Path, stage: &Path, (uid, gid): (u32, u32)) -> Result<()> {
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

/// A line of postgresql.auto.conf that sets a recovery setting (or is the
/// comment an earlier itbackup restore wrote above them).
fn is_recovery_setting(line: &str) -> bool {
    let line = line.trim_start();
    line.starts_with("# itbackup restore")
        || ["restore_command", "recovery_target"]
            .iter()
            .any(|key| line.starts_with(key))
}

/// A word for `sh`: single-quoted.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// A string value for postgresql.conf: single-quoted, quotes doubled.
fn conf_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_as_latest_a_time_or_a_position() {
        assert_eq!(RecoveryTarget::parse("latest"), Ok(RecoveryTarget::Latest));
        assert!(matches!(
            RecoveryTarget::parse("2026-12-01T10:41:59Z"),
            Ok(RecoveryTarget::Time(_))
        ));
        assert!(matches!(
            RecoveryTarget::parse("0/81000028"),
            Ok(RecoveryTarget::Lsn(_))
        ));
        assert!(RecoveryTarget::parse("yesterday").is_err());
    }

    #[test]
    fn restore_command_survives_quotes_in_paths() {
        let fetch = format!("{} wal fetch", shell_quote("/opt/it's/itbackup"));
        assert_eq!(fetch, "'/opt/it'\\''s/itbackup' wal fetch");
        assert_eq!(
            conf_quote(&fetch),
            "'''/opt/it''\\''''s/itbackup'' wal fetch'"
        );
    }
}
